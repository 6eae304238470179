/*
 * tests/unit/test_deliver_util.c - The scheduler's pure helpers: the retry
 * backoff (doubling, cap, jitter bounds) and the From: rewrite of
 * rewrite_from_header, table-driven.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "deliver/deliver_int.h"

#define S(x) x, (sizeof(x) - 1)
#define SEC 1000ull
#define MINUTE (60 * SEC)
#define HOUR (60 * MINUTE)

struct bcase {
	uint64_t min, max;
	uint32_t attempts;
	uint64_t want;   /* without jitter */
};

static const struct bcase bcases[] = {
	{5 * MINUTE, HOUR, 1, 5 * MINUTE},
	{5 * MINUTE, HOUR, 2, 10 * MINUTE},
	{5 * MINUTE, HOUR, 3, 20 * MINUTE},
	{5 * MINUTE, HOUR, 4, 40 * MINUTE},
	{5 * MINUTE, HOUR, 5, HOUR},           /* capped */
	{5 * MINUTE, HOUR, 50, HOUR},
	{5 * MINUTE, HOUR, UINT32_MAX, HOUR},  /* no overflow, no long loop */
	{5 * MINUTE, HOUR, 0, 5 * MINUTE},        /* never below retry_min */
	{SEC, 2 * SEC, 1, SEC},
	{SEC, 2 * SEC, 2, 2 * SEC},
	{SEC, 2 * SEC, 3, 2 * SEC},
	{HOUR, 5 * MINUTE, 3, HOUR},           /* max < min: min wins */
};

static void test_backoff(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bcases / sizeof *bcases; i++) {
		const struct bcase *c = &bcases[i];
		uint64_t lo = deliver_backoff(c->min, c->max, c->attempts, 0);
		uint64_t hi = deliver_backoff(c->min, c->max, c->attempts, 0.999999);
		if (lo != c->want)
			fail_msg("case %zu: %llu, want %llu", i,
			         (unsigned long long)lo, (unsigned long long)c->want);
		/* Jitter adds up to a quarter, never takes away. */
		assert_true(hi >= lo);
		assert_true(hi <= lo + lo / 4);
		if (lo >= 1000)
			assert_true(hi > lo);
		/* Out-of-range randomness is treated as none. */
		assert_int_equal(deliver_backoff(c->min, c->max, c->attempts, 1.5),
		                 lo);
		assert_int_equal(deliver_backoff(c->min, c->max, c->attempts, -1),
		                 lo);
	}
}

struct rcase {
	const char *name;
	const char *in;
	size_t inlen;
	const char *out;
	size_t outlen;
};

#define NEWF "From: <support@example.com>\r\n"

/* clang-format off */
static const struct rcase rcases[] = {
	{"From moves to Reply-To",
	 S("Subject: s\r\nFrom: Ann <ann@client.test>\r\nTo: b@x\r\n"),
	 S("Subject: s\r\nReply-To: Ann <ann@client.test>\r\n" NEWF
	   "To: b@x\r\n")},
	{"existing Reply-To is kept",
	 S("Reply-To: list@client.test\r\nFrom: ann@client.test\r\n"),
	 S("Reply-To: list@client.test\r\n" NEWF)},
	{"Reply-To after From counts too",
	 S("From: ann@client.test\r\nreply-to: r@client.test\r\n"),
	 S(NEWF "reply-to: r@client.test\r\n")},
	{"folded From keeps its continuation in Reply-To",
	 S("From: Ann\r\n <ann@client.test>\r\nSubject: s\r\n"),
	 S("Reply-To: Ann\r\n <ann@client.test>\r\n" NEWF "Subject: s\r\n")},
	{"no From at all: one is added",
	 S("Subject: s\r\n"),
	 S("Subject: s\r\n" NEWF)},
	{"two From fields: one From, first one to Reply-To",
	 S("From: a@x\r\nFrom: b@x\r\n"),
	 S("Reply-To: a@x\r\n" NEWF)},
	{"From-like names are not From",
	 S("From-Address: a@x\r\nX-From: b@x\r\nFrom : c@x\r\n"),
	 S("From-Address: a@x\r\nX-From: b@x\r\nReply-To: c@x\r\n" NEWF)},
	{"case-insensitive name",
	 S("FROM: a@x\r\n"),
	 S("Reply-To: a@x\r\n" NEWF)},
	{"empty section",
	 S(""),
	 S(NEWF)},
};
/* clang-format on */

static void test_rewrite_from(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof rcases / sizeof *rcases; i++) {
		const struct rcase *c = &rcases[i];
		struct buf out;
		buf_init(&out, 1 << 16);
		assert_int_equal(deliver_rewrite_from((const uint8_t *)c->in,
		                                      c->inlen, "support@example.com",
		                                      &out), 0);
		if (out.len != c->outlen || memcmp(out.data, c->out, out.len) != 0)
			fail_msg("%s:\n got  '%.*s'\n want '%s'", c->name,
			         (int)out.len, (const char *)out.data, c->out);
		buf_free(&out);
	}
}

static void test_rewrite_from_limit(void **state)
{
	(void)state;
	struct buf out;
	buf_init(&out, 16);
	assert_int_equal(deliver_rewrite_from((const uint8_t *)S("From: a@x\r\n"),
	                                      "support@example.com", &out),
	                 -ENOBUFS);
	buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_rewrite_from),
		cmocka_unit_test(test_rewrite_from_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
