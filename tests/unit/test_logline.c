/*
 * tests/unit/test_logline.c - relayd's log lines read back
 * (common/logline.c, for `relayctl log`): the lines relayd writes for a
 * message's life, timestamps, and lines that are not relayd's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/logline.h"

#define P "2026-12-05T22:55:49.123Z relayd[812]: info: "
#define ID "0MGL3HZ4A1B2C3D4"

struct lcase {
	const char *line;
	enum logline_event ev;
	const char *id;         /* "" for none */
	int64_t ms;             /* -1: not one of relayd's */
	const char *key, *val;  /* a field to look up (NULL: none) */
	const char *reply;      /* NULL: none */
	const char *text;
};

/* 2026-12-05T22:55:49.123Z */
#define T 1796511349123LL

static const struct lcase cases[] = {
	{P ID ": from=<a@b.test>, size=4213, nrcpt=2, client=127.0.0.1",
	 LOGEV_ACCEPTED, ID, T, "size", "4213", NULL,
	 "from=<a@b.test>, size=4213, nrcpt=2, client=127.0.0.1"},
	{P ID ": from=<>, size=1, nrcpt=1, client=127.0.0.1", LOGEV_ACCEPTED, ID,
	 T, "from", "", NULL, NULL},
	{P ID ": to=<c@d.test>, relay=mx.d.test[127.0.0.2]:25, delay=0.12, "
	 "delays=0.01/0/0.05/0.06, dsn=2.0.0, tls=TLSv1.3/unverified, "
	 "status=sent (250 2.0.0 Ok: queued as X)", LOGEV_SENT, ID, T,
	 "relay", "mx.d.test[127.0.0.2]:25", "250 2.0.0 Ok: queued as X", NULL},
	{P ID ": to=<c@d.test>, relay=none, delay=1, delays=1/0/0/0, "
	 "dsn=4.4.3, status=deferred (lookup of d.test: SERVFAIL)",
	 LOGEV_DEFERRED, ID, T, "dsn", "4.4.3", "lookup of d.test: SERVFAIL",
	 NULL},
	{P ID ": to=<x, y@d.test>, relay=none, delay=1, delays=1/0/0/0, "
	 "dsn=5.1.2, status=bounced (no such domain)", LOGEV_BOUNCED, ID, T,
	 "to", "x, y@d.test", "no such domain", NULL},
	/* Not a status the reader knows: stays "other". */
	{P ID ": to=<c@d.test>, status=expired (x)", LOGEV_OTHER, ID, T,
	 "status", "expired", "x", NULL},
	{P ID ": removed", LOGEV_REMOVED, ID, T, NULL, NULL, NULL, "removed"},
	{P ID ": sender non-delivery notification: 0MGL3HZ4A1B2C3D5", LOGEV_DSN,
	 ID, T, NULL, NULL, NULL, NULL},
	{P ID ": to=<c@d.test>: 452 4.5.3: in another transaction", LOGEV_OTHER,
	 ID, T, "to", "c@d.test", NULL, NULL},
	{P "s=12: connect from 127.0.0.1", LOGEV_OTHER, "", T, NULL, NULL, NULL,
	 "s=12: connect from 127.0.0.1"},
	{"2026-12-05T22:55:49.123Z relayd[812]: warning: SIGHUP: x",
	 LOGEV_OTHER, "", T, NULL, NULL, NULL, "SIGHUP: x"},
	/* An id-like word that is not followed by ": ". */
	{P ID " removed", LOGEV_OTHER, "", T, NULL, NULL, NULL, NULL},
	/* Not relayd's. */
	{"hello world", LOGEV_OTHER, "", -1, NULL, NULL, NULL, "hello world"},
	{"", LOGEV_OTHER, "", -1, NULL, NULL, NULL, ""},
	{"2026-12-05T22:55:49.123Z", LOGEV_OTHER, "", -1, NULL, NULL, NULL, NULL},
	{"2026-12-05T22:55:49.123Z relayd[x]: info: " ID ": removed",
	 LOGEV_OTHER, "", -1, NULL, NULL, NULL, NULL},
	{"2026-13-05T22:55:49.123Z relayd[1]: info: " ID ": removed",
	 LOGEV_OTHER, "", -1, NULL, NULL, NULL, NULL},
	/* An address field that never closes: no fields, still accepted. */
	{P ID ": from=<a@b.test, size=1", LOGEV_ACCEPTED, ID, T, "from", NULL,
	 NULL, NULL},
};

static void test_lines(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const struct lcase *c = &cases[i];
		/* An exact-size copy, no NUL: ASan sees any overread. */
		size_t n = strlen(c->line);
		char *copy = malloc(n ? n : 1);
		assert_non_null(copy);
		memcpy(copy, c->line, n);
		struct logline l;
		logline_parse(copy, n, &l);
		if (l.ev != c->ev || strcmp(l.id, c->id) != 0 || l.ms != c->ms)
			fail_msg("case %zu: ev %s id '%s' ms %lld, want %s '%s' "
			         "%lld", i, logline_event_names[l.ev], l.id,
			         (long long)l.ms, logline_event_names[c->ev],
			         c->id, (long long)c->ms);
		if (c->key) {
			const struct logline_field *f = logline_get(&l, c->key);
			if (!c->val) {
				assert_null(f);
			} else {
				assert_non_null(f);
				if (f->vallen != strlen(c->val) ||
				    memcmp(f->val, c->val, f->vallen) != 0)
					fail_msg("case %zu: %s='%.*s', want '%s'", i,
					         c->key, (int)f->vallen, f->val,
					         c->val);
			}
		}
		if (c->reply) {
			assert_non_null(l.reply);
			if (l.replylen != strlen(c->reply) ||
			    memcmp(l.reply, c->reply, l.replylen) != 0)
				fail_msg("case %zu: reply '%.*s'", i,
				         (int)l.replylen, l.reply);
		} else if (c->ev != LOGEV_OTHER || !c->key) {
			assert_null(l.reply);
		}
		if (c->text && (l.textlen != strlen(c->text) ||
		                memcmp(l.text, c->text, l.textlen) != 0))
			fail_msg("case %zu: text '%.*s'", i, (int)l.textlen,
			         l.text);
		if (c->ev == LOGEV_DSN)
			assert_string_equal(l.dsn_id, "0MGL3HZ4A1B2C3D5");
		free(copy);
	}
}

static void test_time(void **state)
{
	(void)state;
	static const struct { const char *s; int64_t ms; } t[] = {
		{"1970-01-01T00:00:00Z", 0},
		{"1970-01-01T00:00:01.500Z", 1500},
		{"2000-03-01T00:00:00", 951868800000LL},
		{"2024-02-29T23:59:59.999Z", 1709251199999LL},
		{"2026-12-05T22:55:49.123Z", T},
		{"2026-12-05T22:55", -1},
		{"2026-12-05 22:55:49", -1},
		{"1969-12-31T23:59:59", -1},
		{"2026-12-05T24:00:00", -1},
		{"2026-12-05T22:55:4x", -1},
		{"2026-12-05T22:55:49.1x3Z", -1},
	};
	for (size_t i = 0; i < sizeof t / sizeof *t; i++)
		if (logline_time(t[i].s, strlen(t[i].s)) != t[i].ms)
			fail_msg("%s: %lld, want %lld", t[i].s,
			         (long long)logline_time(t[i].s, strlen(t[i].s)),
			         (long long)t[i].ms);
}

/* More fields than kept: the first ones are there, nothing overflows. */
static void test_field_bound(void **state)
{
	(void)state;
	char line[2048];
	size_t o = (size_t)snprintf(line, sizeof line, "%sto=<a@b>", P ID ": ");
	for (int i = 0; i < 40; i++)
		o += (size_t)snprintf(line + o, sizeof line - o, ", k%c=%d",
		                      'a' + i % 26, i);
	o += (size_t)snprintf(line + o, sizeof line - o, ", status=sent (ok)");
	struct logline l;
	logline_parse(line, o, &l);
	assert_int_equal(l.nf, LOGLINE_FIELDS_MAX);
	assert_int_equal(l.ev, LOGEV_OTHER);    /* status= was not reached */
	assert_non_null(logline_get(&l, "to"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_time),
		cmocka_unit_test(test_field_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
