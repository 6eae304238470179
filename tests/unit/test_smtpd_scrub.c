/*
 * tests/unit/test_smtpd_scrub.c - The header scrubber, table-driven:
 * (name, input, scrub list, lines to add) -> (output, fields dropped).
 * Every case also runs split at every pair of points and byte by byte;
 * the output must not depend on where a field name was cut.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "smtpd/smtpd_scrub.h"

#define S(x) x, (sizeof(x) - 1)

/* The default scrub list (conf.c's default). */
static const char *const dflt[] = {
	"Received", "X-Originating-IP", "X-Remote-IP", "X-Real-IP",
	"X-Forwarded-For", "X-Sender-IP", "X-Source-IP",
};
static const char *const with_msgid[] = {"Received", "message-id"};

#define MID "Message-ID: <q1@relay.example>\r\n"
#define DATE "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"

enum { BOTH, NONE, ONLY_MID, ALT_LIST };

struct scase {
	const char *name;
	const char *in;
	size_t inlen;
	int opt;  /* BOTH: dflt list + MID + DATE; NONE: dflt, no lines;
	           * ONLY_MID: dflt + MID; ALT_LIST: with_msgid + both */
	const char *out;
	size_t outlen;
	unsigned dropped;
};

/* clang-format off */
static const struct scase cases[] = {
	{"nothing to do",
	 S("From: a@b\r\nMessage-ID: <x@y>\r\nDate: d\r\n\r\nbody\r\n"), BOTH,
	 S("From: a@b\r\nMessage-ID: <x@y>\r\nDate: d\r\n\r\nbody\r\n"), 0},
	{"the default list",
	 S("Received: from a\r\nX-Originating-IP: 1\r\nX-Remote-IP: 2\r\n"
	   "X-Real-IP: 3\r\nX-Forwarded-For: 4\r\nX-Sender-IP: 5\r\n"
	   "X-Source-IP: 6\r\nSubject: s\r\n\r\nb\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\nb\r\n"), 7},
	{"mixed case names",
	 S("RECEIVED: x\r\nx-originating-ip: 1\r\nrEcEiVeD: y\r\n"
	   "X-FORWARDED-FOR: 2\r\nSubject: s\r\n\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\n"), 4},
	{"folded Received",
	 S("From: a\r\nReceived: from a\r\n\tby b\r\n  with c\r\n\tid d;\r\n"
	   " Mon, 1 Jan\r\nSubject: s\r\n\r\nbody\r\n"), BOTH,
	 S("From: a\r\nSubject: s\r\n" MID DATE "\r\nbody\r\n"), 1},
	{"folded kept field",
	 S("Subject: a\r\n b\r\n\tc\r\nReceived: x\r\n y\r\nTo: t\r\n u\r\n\r\n"),
	 NONE, S("Subject: a\r\n b\r\n\tc\r\nTo: t\r\n u\r\n\r\n"), 1},
	{"scrubbed field last before the body",
	 S("Subject: s\r\nReceived: x\r\n y\r\n\r\nbody\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\nbody\r\n"), 1},
	{"Received in the body is kept",
	 S("Subject: s\r\n\r\nReceived: x\r\nX-Real-IP: 1\r\n"), NONE,
	 S("Subject: s\r\n\r\nReceived: x\r\nX-Real-IP: 1\r\n"), 0},
	{"names that only start with a scrubbed name",
	 S("Received-SPF: pass\r\nX-Real-IPv6: ::1\r\nX-Received: x\r\n"
	   "Receive: y\r\n\r\n"), NONE,
	 S("Received-SPF: pass\r\nX-Real-IPv6: ::1\r\nX-Received: x\r\n"
	   "Receive: y\r\n\r\n"), 0},
	{"blanks before the colon",
	 S("Received : x\r\nReceived\t: y\r\nX-Real-IP \t : z\r\n"
	   "Subject : s\r\n\r\n"), NONE, S("Subject : s\r\n\r\n"), 3},
	{"empty field value", S("Received:\r\nSubject:\r\n\r\n"), NONE,
	 S("Subject:\r\n\r\n"), 1},
	{"8-bit field bodies",
	 S("Subject: caf\xc3\xa9 \xff\r\nReceived: \xff\xfe\r\n\r\n\xe9\r\n"),
	 NONE, S("Subject: caf\xc3\xa9 \xff\r\n\r\n\xe9\r\n"), 1},
	{"no body",
	 S("Subject: s\r\nMessage-ID: <x>\r\nDate: d\r\n"), BOTH,
	 S("Subject: s\r\nMessage-ID: <x>\r\nDate: d\r\n"), 0},
	{"no blank line, fields missing", S("Subject: s\r\nReceived: r\r\n"),
	 BOTH, S("Subject: s\r\n" MID DATE), 1},
	{"empty message", S(""), BOTH, S(MID DATE), 0},
	{"empty message, nothing to add", S(""), NONE, S(""), 0},
	{"only a blank line", S("\r\nbody\r\n"), BOTH,
	 S(MID DATE "\r\nbody\r\n"), 0},
	{"message-id lower case present",
	 S("message-id: <x>\r\nSubject: s\r\n\r\nb"), BOTH,
	 S("message-id: <x>\r\nSubject: s\r\n" DATE "\r\nb"), 0},
	{"DATE upper case present", S("DATE: d\r\n\r\n"), BOTH,
	 S("DATE: d\r\n" MID "\r\n"), 0},
	{"both present, odd spacing",
	 S("Message-Id : <x>\r\nDate\t:d\r\n\r\n"), BOTH,
	 S("Message-Id : <x>\r\nDate\t:d\r\n\r\n"), 0},
	{"Message-ID in the body does not count",
	 S("Subject: s\r\n\r\nMessage-ID: <x>\r\nDate: d\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\nMessage-ID: <x>\r\nDate: d\r\n"), 0},
	{"only Message-ID to add", S("Subject: s\r\n\r\n"), ONLY_MID,
	 S("Subject: s\r\n" MID "\r\n"), 0},
	{"no lines to add", S("Subject: s\r\nReceived: x\r\n\r\nb"), NONE,
	 S("Subject: s\r\n\r\nb"), 1},
	{"scrubbed Message-ID is replaced",
	 S("Message-ID: <leak@host>\r\nReceived: r\r\nSubject: s\r\n\r\n"),
	 ALT_LIST, S("Subject: s\r\n" MID DATE "\r\n"), 2},
	{"non-header first line",
	 S("hello world\r\nReceived: x\r\n\r\nb\r\n"), BOTH,
	 S(MID DATE "\r\nhello world\r\nReceived: x\r\n\r\nb\r\n"), 0},
	{"mbox From_ line", S("From a@b Mon Jan 1\r\nSubject: s\r\n\r\n"), BOTH,
	 S(MID DATE "\r\nFrom a@b Mon Jan 1\r\nSubject: s\r\n\r\n"), 0},
	{"non-header line ends the headers",
	 S("Subject: s\r\nReceived: a\r\nnot a header\r\nReceived: b\r\n"),
	 BOTH, S("Subject: s\r\n" MID DATE "\r\nnot a header\r\nReceived: b\r\n"),
	 1},
	{"colon at the line start", S("Subject: s\r\n: x\r\nReceived: b\r\n"),
	 NONE, S("Subject: s\r\n\r\n: x\r\nReceived: b\r\n"), 0},
	{"8-bit in a field name", S("Subj\xe9" "ct: s\r\nReceived: b\r\n"), NONE,
	 S("\r\nSubj\xe9" "ct: s\r\nReceived: b\r\n"), 0},
	{"control in a field name", S("A: 1\r\nSub\x01: s\r\nReceived: b\r\n"),
	 NONE, S("A: 1\r\n\r\nSub\x01: s\r\nReceived: b\r\n"), 0},
	{"blank inside a field name", S("Rec eived: x\r\nReceived: b\r\n"),
	 NONE, S("\r\nRec eived: x\r\nReceived: b\r\n"), 0},
	{"leading blank on the first line", S(" Received: x\r\n\r\n"), BOTH,
	 S(MID DATE "\r\n Received: x\r\n\r\n"), 0},
	{"leading blank on the first line, nothing added",
	 S(" Received: x\r\n\r\n"), NONE, S("\r\n Received: x\r\n\r\n"), 0},
	{"leading blank on the first line, Message-ID added",
	 S("\tx\r\n"), ONLY_MID, S(MID "\r\n\tx\r\n"), 0},
	{"field name of 76 characters",
	 S("X-0123456789012345678901234567890123456789012345678901234567890123456"
	   "789abcd: v\r\nReceived: r\r\n\r\n"), NONE,
	 S("X-0123456789012345678901234567890123456789012345678901234567890123456"
	   "789abcd: v\r\n\r\n"), 1},
	{"field name of 77 characters",
	 S("X-0123456789012345678901234567890123456789012345678901234567890123456"
	   "789abcde: v\r\nReceived: r\r\n\r\n"), BOTH,
	 S("X-0123456789012345678901234567890123456789012345678901234"
	   "567890123456789abcde: v\r\n" MID DATE "\r\n"), 1},
	{"received after many blanks before the colon",
	 S("Received" "                                                  "
	   "                              : x\r\nSubject: s\r\n\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\n"), 1},
	{"partial field at the end", S("Subject: s"), BOTH,
	 S("Subject: s\r\n" MID DATE), 0},
	{"partial field at the end after CR", S("Subject: s\r"), BOTH,
	 S("Subject: s\r\n" MID DATE), 0},
	{"partial scrubbed field at the end", S("A: 1\r\nReceived: s"), BOTH,
	 S("A: 1\r\n" MID DATE), 1},
	{"partial scrubbed field at the end after CR", S("Received: s\r"),
	 NONE, S(""), 1},
	{"name without colon at the end", S("A: 1\r\nSubject"), BOTH,
	 S("A: 1\r\n" MID DATE "\r\nSubject"), 0},
	{"name and blank without colon at the end", S("A: 1\r\nReceived "),
	 NONE, S("A: 1\r\n\r\nReceived "), 0},
	{"CR alone at a line start at the end", S("A: 1\r\n\r"), NONE,
	 S("A: 1\r\n\r\n\r"), 0},
	{"bare CR at a line start", S("A: 1\r\n\rReceived: x\r\n"), BOTH,
	 S("A: 1\r\n" MID DATE "\r\n\rReceived: x\r\n"), 0},
	{"CR inside a field", S("Subject: a\rb\r\nReceived: x\rReceived: y\r\n"
	   "\r\n"), NONE, S("Subject: a\rb\r\n\r\n"), 1},
	/* issue 8 §7: the empty line goes where the body was decided to
	 * start, so the fields after a malformed line are body for every
	 * reader, and never scrubbed or counted as header fields. */
	{"malformed line, trace fields after it",
	 S("Subject: s\r\nthis line has no colon\r\n"
	   "X-Originating-IP: [10.1.2.3]\r\nReceived: from x ([10.1.2.4])\r\n"
	   "\r\nbody\r\n"), BOTH,
	 S("Subject: s\r\n" MID DATE "\r\nthis line has no colon\r\n"
	   "X-Originating-IP: [10.1.2.3]\r\nReceived: from x ([10.1.2.4])\r\n"
	   "\r\nbody\r\n"), 0},
	{"malformed line after a dropped folded field",
	 S("Received: a\r\n b\r\n<no colon>\r\n\tX-Real-IP: 1\r\n"), NONE,
	 S("\r\n<no colon>\r\n\tX-Real-IP: 1\r\n"), 1},
	{"malformed line, nothing added, Message-ID after it",
	 S("Date: d\r\nMessage-ID: <a>\r\n--\r\nMessage-ID: <b>\r\n"), BOTH,
	 S("Date: d\r\nMessage-ID: <a>\r\n\r\n--\r\nMessage-ID: <b>\r\n"), 0},
	{"no header section at all", S("just a body line\r\n"), NONE,
	 S("\r\njust a body line\r\n"), 0},
	{"continuation right after the blank line is body",
	 S("A: 1\r\n\r\n Received: x\r\n"), NONE,
	 S("A: 1\r\n\r\n Received: x\r\n"), 0},
	{"alternating kept and dropped",
	 S("A: 1\r\n 2\r\nReceived: 3\r\n 4\r\nB: 5\r\n 6\r\nX-Sender-IP: 7\r\n"
	   "\t8\r\n\r\n"), BOTH,
	 S("A: 1\r\n 2\r\nB: 5\r\n 6\r\n" MID DATE "\r\n"), 2},
	{"body untouched", S("A: 1\r\n\r\n\r\n.\r\n..\r\n\n\r\0\xff"), NONE,
	 S("A: 1\r\n\r\n\r\n.\r\n..\r\n\n\r\0\xff"), 0},
};
/* clang-format on */

struct sink {
	struct buf out;
	unsigned calls;
	unsigned fail_after;  /* fail the call after this many; 0 = never */
};

static int sink_emit(void *ctx, const uint8_t *p, size_t n)
{
	struct sink *k = ctx;
	assert_true(n > 0);
	if (k->fail_after && k->calls >= k->fail_after)
		return -EIO;
	k->calls++;
	return buf_append(&k->out, p, n);
}

static void init_case(struct smtpd_scrub *s, const struct scase *c,
                      struct sink *k)
{
	const char *const *names = c->opt == ALT_LIST ? with_msgid : dflt;
	size_t nnames = c->opt == ALT_LIST ? 2 : sizeof(dflt) / sizeof(dflt[0]);
	const char *mid = c->opt == NONE ? NULL : MID;
	const char *date = c->opt == NONE || c->opt == ONLY_MID ? NULL : DATE;
	smtpd_scrub_init(s, names, nnames, mid, date, sink_emit, k);
}

/* Feeds the input in pieces ending at the cut points, then finishes. */
static void run(const struct scase *c, const size_t *cuts, size_t ncuts,
                const char *how)
{
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	init_case(&s, c, &k);
	const uint8_t *in = (const uint8_t *)c->in;
	size_t pos = 0;
	for (size_t i = 0; i <= ncuts; i++) {
		size_t stop = i < ncuts ? cuts[i] : c->inlen;
		assert_int_equal(smtpd_scrub_feed(&s, in + pos, stop - pos), 0);
		pos = stop;
	}
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	if (k.out.len != c->outlen ||
	    (c->outlen && memcmp(k.out.data, c->out, c->outlen)) ||
	    s.dropped != c->dropped) {
		fprintf(stderr, "case '%s' (%s): dropped %u (want %u), got:\n",
		        c->name, how, s.dropped, c->dropped);
		fwrite(k.out.data, 1, k.out.len, stderr);
		fprintf(stderr, "\n-- want:\n");
		fwrite(c->out, 1, c->outlen, stderr);
		fprintf(stderr, "\n--\n");
		fail();
	}
	buf_free(&k.out);
}

static void test_table(void **state)
{
	(void)state;
	for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
		const struct scase *c = &cases[t];
		size_t cuts[256];
		char how[64];

		run(c, NULL, 0, "whole");
		for (size_t i = 0; i <= c->inlen; i++) {
			for (size_t j = i; j <= c->inlen; j++) {
				cuts[0] = i;
				cuts[1] = j;
				snprintf(how, sizeof(how), "split %zu,%zu", i, j);
				run(c, cuts, 2, how);
			}
		}
		assert_true(c->inlen < 256);
		for (size_t i = 0; i < c->inlen; i++)
			cuts[i] = i + 1;
		run(c, cuts, c->inlen, "byte by byte");
	}
}

/* In the body every feed is passed on in one call, without copying. */
static void test_body_zero_copy(void **state)
{
	(void)state;
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_scrub_init(&s, dflt, 7, NULL, NULL, sink_emit, &k);
	const char *hdr = "Subject: s\r\nReceived: x\r\nTo: t\r\n\r\nbody";
	assert_int_equal(smtpd_scrub_feed(&s, (const uint8_t *)hdr,
	                                  strlen(hdr)), 0);
	/* "Subject", ": s\r\n", "To", ": t\r\n", "\r\n", "body" */
	assert_int_equal(k.calls, 6);
	k.calls = 0;
	static const uint8_t body[] = "more body\r\nReceived: no\r\n";
	assert_int_equal(smtpd_scrub_feed(&s, body, sizeof(body) - 1), 0);
	assert_int_equal(k.calls, 1);
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	assert_int_equal(k.calls, 1);
	assert_int_equal(s.dropped, 1);
	buf_free(&k.out);
}

/* The first emit error sticks and is returned by every later call. */
static void test_write_error(void **state)
{
	(void)state;
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 1};
	smtpd_scrub_init(&s, dflt, 7, MID, DATE, sink_emit, &k);
	const char *in = "Subject: s\r\nTo: t\r\n";
	assert_int_equal(smtpd_scrub_feed(&s, (const uint8_t *)in,
	                                  strlen(in)), -EIO);
	assert_int_equal(smtpd_scrub_feed(&s, (const uint8_t *)"\r\nb", 3),
	                 -EIO);
	assert_int_equal(smtpd_scrub_finish(&s), -EIO);
	assert_int_equal(k.calls, 1);
	buf_free(&k.out);
}

/* finish() twice adds nothing twice. */
static void test_finish_twice(void **state)
{
	(void)state;
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_scrub_init(&s, dflt, 7, MID, DATE, sink_emit, &k);
	assert_int_equal(smtpd_scrub_feed(&s, (const uint8_t *)"A: b", 4), 0);
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	const char *want = "A: b\r\n" MID DATE;
	assert_int_equal(k.out.len, strlen(want));
	assert_memory_equal(k.out.data, want, strlen(want));
	assert_string_equal(smtpd_scrub_state_name(&s), "BODY");
	buf_free(&k.out);
}

/* A header field's colon is one of the first 998 octets of its line
 * (RFC 5322 §2.1.1): a name of 997 octets is a field, one of 998 is not,
 * and then the body starts behind an inserted empty line (issue 8 §7).
 * The same for blanks between the name and the colon. */
static void test_colon_limit(void **state)
{
	(void)state;
	struct buf in = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20);
	for (size_t len = 990; len <= 1000; len++) {
		for (int blanks = 0; blanks < 2; blanks++) {
			/* "XXX...: v" or "Received      : v", the colon at
			 * index len */
			buf_reset(&in);
			buf_appends(&in, blanks ? "Received" : "X");
			while (in.len < len)
				buf_append(&in, blanks ? " " : "X", 1);
			buf_appends(&in, ": v\r\nReceived: r\r\n\r\nb\r\n");
			bool field = len <= 997;
			buf_reset(&want);
			if (field && blanks) {
				buf_appends(&want, "\r\nb\r\n");
			} else if (field) {
				buf_append(&want, in.data, len + 5);
				buf_appends(&want, "\r\nb\r\n");
			} else {
				buf_appends(&want, "\r\n");
				buf_append(&want, in.data, in.len);
			}
			for (int bytewise = 0; bytewise < 2; bytewise++) {
				struct smtpd_scrub s;
				struct sink k = {BUF_INIT(1 << 20), 0, 0};
				smtpd_scrub_init(&s, dflt, 7, NULL, NULL, sink_emit, &k);
				for (size_t i = 0; i < in.len; i += bytewise ? 1 : in.len)
					smtpd_scrub_feed(&s, in.data + i,
					                 bytewise ? 1 : in.len);
				assert_int_equal(smtpd_scrub_finish(&s), 0);
				if (k.out.len != want.len ||
				    memcmp(k.out.data, want.data, want.len))
					fail_msg("colon at %zu, blanks %d, bytewise %d: "
					         "%zu bytes, want %zu", len, blanks,
					         bytewise, k.out.len, want.len);
				assert_int_equal(s.dropped, field ? 1 + blanks : 0);
				assert_int_equal(s.inserted, !field);
				buf_free(&k.out);
			}
		}
	}
	buf_free(&in);
	buf_free(&want);
}

/* ---- From: capture --------------------------------------------------------- */

static int null_emit(void *ctx, const uint8_t *p, size_t n)
{
	(void)ctx; (void)p; (void)n;
	return 0;
}

struct cap_case {
	const char *name;
	const char *in;
	size_t max;
	const char *value;   /* expected capture */
	unsigned nfrom;
	bool over;
};

static const struct cap_case cap_cases[] = {
	{"plain", "Subject: s\r\nFrom: a@b\r\nTo: c@d\r\n\r\nFrom: x@y\r\n", 64,
	 " a@b\r\n", 1, false},
	{"folded", "from : A\r\n <a@b>\r\n\t(c)\r\nTo: c\r\n\r\n", 64,
	 " A\r\n <a@b>\r\n\t(c)\r\n", 1, false},
	{"two From fields", "From: a@b\r\nFrom: x@y\r\n\r\n", 64, " a@b\r\n", 2,
	 false},
	{"From-X is not From", "From-X: x@y\r\nX-From: z\r\n\r\n", 64, "", 0,
	 false},
	{"dropped From not seen", "Received: a\r\nFrom: a@b\r\n\r\n", 64,
	 " a@b\r\n", 1, false},
	{"over the bound", "From: 0123456789\r\n\r\n", 8, " 0123456", 1, true},
	{"in the body only", "Subject: s\r\n\r\nFrom: a@b\r\n", 64, "", 0, false},
	{"no colon ends headers", "Subject: s\r\nxx\r\nFrom: a@b\r\n", 64, "", 0,
	 false},
	{"bare CR inside", "From: a\rb\r\n\r\n", 64, " a\rb\r\n", 1, false},
	{"cut at the end", "From: a@b", 64, " a@b", 1, false},
};

static void test_capture_from(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cap_cases / sizeof *cap_cases; i++) {
		const struct cap_case *c = &cap_cases[i];
		size_t n = strlen(c->in);
		/* whole, and byte by byte */
		for (int split = 0; split < 2; split++) {
			struct smtpd_scrub s;
			char buf[64];
			smtpd_scrub_init(&s, dflt, 7, NULL, NULL, null_emit, NULL);
			smtpd_scrub_capture_from(&s, buf, c->max);
			if (split) {
				for (size_t k = 0; k < n; k++)
					smtpd_scrub_feed(&s, (const uint8_t *)c->in + k, 1);
			} else {
				smtpd_scrub_feed(&s, (const uint8_t *)c->in, n);
			}
			assert_int_equal(smtpd_scrub_finish(&s), 0);
			if (s.caplen != strlen(c->value) ||
			    memcmp(buf, c->value, s.caplen) != 0)
				fail_msg("case '%s' (split %d): got '%.*s'", c->name,
				         split, (int)s.caplen, buf);
			if (s.nfrom != c->nfrom || s.cap_over != c->over)
				fail_msg("case '%s': nfrom %u over %d", c->name, s.nfrom,
				         s.cap_over);
		}
	}
}

/* ---- hops (issue 9 §3) ----------------------------------------------------- */

#define HOP "Received: by relay.test (relayd: earlier hop, details removed); " \
	"Mon, 1 Jan 2024 00:00:00 +0000\r\n"

/* The default list without Received: those are kept, and still count. */
static const char *const keep_rcvd[] = {"X-Originating-IP", "X-Real-IP"};

struct hcase {
	const char *name;
	const char *in;
	size_t inlen;
	bool keep;          /* keep_rcvd list instead of dflt */
	unsigned hop_max;
	const char *out;
	size_t outlen;
	unsigned received;  /* Received: fields counted */
	unsigned hop_lines; /* replaced */
};

/* clang-format off */
static const struct hcase hcases[] = {
	{"replaced in place, order kept",
	 S("A: 1\r\nReceived: from x ([10.0.0.1])\r\nB: 2\r\nreceived: y\r\n"
	   "\r\nb\r\n"), false, 50,
	 S("A: 1\r\n" HOP "B: 2\r\n" HOP "\r\nb\r\n"), 2, 2},
	{"folded Received is one hop",
	 S("Received: from a.example ([10.0.0.1])\r\n\tby b.example\r\n"
	   "  with ESMTP id X1;\r\n Mon, 1 Jan\r\nS: s\r\n\r\n"), false, 50,
	 S(HOP "S: s\r\n\r\n"), 1, 1},
	{"case-insensitive names, blanks before the colon",
	 S("RECEIVED: a\r\nrEcEiVeD : b\r\nReceived\t: c\r\n\r\n"), false, 50,
	 S(HOP HOP HOP "\r\n"), 3, 3},
	{"names that only start with Received do not count",
	 S("Received-SPF: pass\r\nX-Received: x\r\nReceivedX: y\r\n"
	   "Receive: z\r\n\r\n"), false, 50,
	 S("Received-SPF: pass\r\nX-Received: x\r\nReceivedX: y\r\n"
	   "Receive: z\r\n\r\n"), 0, 0},
	{"kept Received fields count, unchanged",
	 S("Received: from a\r\n b\r\nX-Real-IP: 1\r\nReceived: c\r\n\r\n"),
	 true, 50, S("Received: from a\r\n b\r\nReceived: c\r\n\r\n"), 2, 0},
	{"no more lines than hop_max, all counted",
	 S("Received: 1\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n\r\n"),
	 false, 2, S(HOP HOP "\r\n"), 4, 2},
	{"hop_max 0: dropped only",
	 S("Received: 1\r\nS: s\r\n\r\n"), false, 0, S("S: s\r\n\r\n"), 1, 0},
	{"empty value", S("Received:\r\n\r\n"), false, 50, S(HOP "\r\n"), 1, 1},
	{"in the body: not counted",
	 S("S: s\r\n\r\nReceived: a\r\nReceived: b\r\n"), false, 50,
	 S("S: s\r\n\r\nReceived: a\r\nReceived: b\r\n"), 0, 0},
	{"after a line without colon: body, not counted",
	 S("Received: a\r\nno colon here\r\nReceived: b\r\n\r\n"), false, 50,
	 S(HOP "\r\nno colon here\r\nReceived: b\r\n\r\n"), 1, 1},
	{"first line starts with a blank: all body",
	 S(" x\r\nReceived: a\r\n\r\n"), false, 50,
	 S("\r\n x\r\nReceived: a\r\n\r\n"), 0, 0},
	{"bare CR at a line start ends the header section",
	 S("Received: a\r\n\rReceived: b\r\n"), false, 50,
	 S(HOP "\r\n\rReceived: b\r\n"), 1, 1},
	{"CR inside a Received field: still one",
	 S("Received: a\rReceived: b\r\n\r\n"), false, 50, S(HOP "\r\n"), 1, 1},
	{"cut short after the colon", S("S: s\r\nReceived: x"), false, 50,
	 S("S: s\r\n" HOP), 1, 1},
	{"name without colon at the end: body",
	 S("S: s\r\nReceived"), false, 50, S("S: s\r\n\r\nReceived"), 0, 0},
	{"bad character in the name: body",
	 S("Recei ved: x\r\n\r\n"), false, 50, S("\r\nRecei ved: x\r\n\r\n"),
	 0, 0},
	{"replaced lines are counted again on the next pass",
	 S(HOP HOP "S: s\r\n\r\n"), false, 50, S(HOP HOP "S: s\r\n\r\n"), 2, 2},
};
/* clang-format on */

static void run_hop(const struct hcase *c, const size_t *cuts, size_t ncuts,
                    const char *how)
{
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_scrub_init(&s, c->keep ? keep_rcvd : dflt, c->keep ? 2 : 7, NULL,
	                 NULL, sink_emit, &k);
	smtpd_scrub_hops(&s, HOP, c->hop_max);
	const uint8_t *in = (const uint8_t *)c->in;
	size_t pos = 0;
	for (size_t i = 0; i <= ncuts; i++) {
		size_t stop = i < ncuts ? cuts[i] : c->inlen;
		assert_int_equal(smtpd_scrub_feed(&s, in + pos, stop - pos), 0);
		pos = stop;
	}
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	if (k.out.len != c->outlen ||
	    (c->outlen && memcmp(k.out.data, c->out, c->outlen)) ||
	    s.received != c->received || s.hop_lines != c->hop_lines)
		fail_msg("case '%s' (%s): received %u (want %u), lines %u (want "
		         "%u), got '%.*s'", c->name, how, s.received, c->received,
		         s.hop_lines, c->hop_lines, (int)k.out.len,
		         (const char *)k.out.data);
	buf_free(&k.out);
}

static void test_hops_table(void **state)
{
	(void)state;
	for (size_t t = 0; t < sizeof hcases / sizeof hcases[0]; t++) {
		const struct hcase *c = &hcases[t];
		size_t cuts[512];
		char how[64];
		run_hop(c, NULL, 0, "whole");
		for (size_t i = 0; i <= c->inlen; i++) {
			for (size_t j = i; j <= c->inlen; j++) {
				cuts[0] = i;
				cuts[1] = j;
				snprintf(how, sizeof how, "split %zu,%zu", i, j);
				run_hop(c, cuts, 2, how);
			}
		}
		assert_true(c->inlen < 512);
		for (size_t i = 0; i < c->inlen; i++)
			cuts[i] = i + 1;
		run_hop(c, cuts, c->inlen, "byte by byte");
	}
}

/* The limit's boundary as the core uses it (hop_max = hop_limit = 50):
 * 49, 50 and 51 Received: fields, folded and in mixed case, are all
 * counted; no more than 50 lines replace them. Whole and byte by byte. */
static void test_hops_boundary(void **state)
{
	(void)state;
	static const unsigned counts[] = {0, 1, 49, 50, 51, 1000};
	for (size_t t = 0; t < sizeof counts / sizeof *counts; t++) {
		unsigned n = counts[t];
		struct buf in = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20);
		buf_appends(&in, "From: a@b\r\n");
		buf_appends(&want, "From: a@b\r\n");
		for (unsigned i = 0; i < n; i++) {
			buf_printf(&in, "%s: from h%u ([192.0.2.%u])\r\n\tby mx%u; "
			           "Mon, 1 Jan 2024 00:00:00 +0000\r\n",
			           i % 3 == 0 ? "Received" : i % 3 == 1 ? "RECEIVED"
			                                              : "received",
			           i, i % 250, i);
			if (i < 50)
				buf_appends(&want, HOP);
		}
		buf_appends(&in, "Subject: s\r\n\r\nbody\r\n");
		buf_appends(&want, "Subject: s\r\n\r\nbody\r\n");
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct smtpd_scrub s;
			struct sink k = {BUF_INIT(1 << 22), 0, 0};
			smtpd_scrub_init(&s, dflt, 7, NULL, NULL, sink_emit, &k);
			smtpd_scrub_hops(&s, HOP, 50);
			size_t step = bytewise ? 1 : in.len;
			for (size_t i = 0; i < in.len; i += step)
				assert_int_equal(smtpd_scrub_feed(&s, in.data + i,
				                                  step), 0);
			assert_int_equal(smtpd_scrub_finish(&s), 0);
			assert_int_equal(s.received, n);
			assert_int_equal(s.dropped, n);
			assert_int_equal(s.hop_lines, n < 50 ? n : 50);
			if (k.out.len != want.len ||
			    memcmp(k.out.data, want.data, want.len))
				fail_msg("%u Received (bytewise %d): %zu bytes, want "
				         "%zu", n, bytewise, k.out.len, want.len);
			buf_free(&k.out);
		}
		buf_free(&in);
		buf_free(&want);
	}
}

/* Without smtpd_scrub_hops dropped Received: fields vanish, but are
 * counted all the same. */
static void test_hops_count_without_lines(void **state)
{
	(void)state;
	struct smtpd_scrub s;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_scrub_init(&s, dflt, 7, NULL, NULL, sink_emit, &k);
	const char *in = "Received: a\r\nS: s\r\nReceived: b\r\n c\r\n\r\nx\r\n";
	assert_int_equal(smtpd_scrub_feed(&s, (const uint8_t *)in, strlen(in)),
	                 0);
	assert_int_equal(smtpd_scrub_finish(&s), 0);
	assert_int_equal(s.received, 2);
	assert_int_equal(s.hop_lines, 0);
	assert_int_equal(k.out.len, strlen("S: s\r\n\r\nx\r\n"));
	assert_memory_equal(k.out.data, "S: s\r\n\r\nx\r\n", k.out.len);
	buf_free(&k.out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_body_zero_copy),
		cmocka_unit_test(test_write_error),
		cmocka_unit_test(test_finish_twice),
		cmocka_unit_test(test_colon_limit),
		cmocka_unit_test(test_capture_from),
		cmocka_unit_test(test_hops_table),
		cmocka_unit_test(test_hops_boundary),
		cmocka_unit_test(test_hops_count_without_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
