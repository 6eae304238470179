/*
 * tests/unit/test_hdr.c - common/hdr.c: the From: rewrite of
 * rewrite_from_header (moved here from test_deliver_util.c with the
 * function, which now runs at acceptance time), table-driven.
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
#include "common/hdr.h"

#define S(x) x, (sizeof(x) - 1)

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
		assert_int_equal(hdr_rewrite_from((const uint8_t *)c->in, c->inlen,
		                                  "support@example.com", &out), 0);
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
	assert_int_equal(hdr_rewrite_from((const uint8_t *)S("From: a@x\r\n"),
	                                      "support@example.com", &out),
	                 -ENOBUFS);
	buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rewrite_from),
		cmocka_unit_test(test_rewrite_from_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
