/*
 * tests/unit/test_deliver_dsn.c - RFC 3464 DSN composition: a failure
 * report and a delayed warning checked line by line after splitting the
 * output at its boundaries; the copy of the original (whole and headers
 * only), table-driven and fed split at every point, byte by byte and at
 * random; long lines; hostile network text; xtext; boundaries; dates;
 * status codes; errors. Every composed DSN is checked for CRLF-only lines
 * of at most 998 octets.
 *
 * DSN_SAMPLE_OUT=FILE writes the failure report to FILE, to check by hand
 * with Python's email package (policy=email.policy.default).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "deliver/deliver_dsn.h"

#define S(x) x, (sizeof(x) - 1)
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- checks on any output ---------------------------------------------- */

/* RFC 5322 §2.1.1 and §2.3: CRLF line ends only, lines of at most 998
 * octets, and the output ends with a CRLF. */
static void check_lines(const uint8_t *p, size_t n)
{
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\r') {
			if (i + 1 >= n || p[i + 1] != '\n')
				fail_msg("bare CR at %zu", i);
			i++;
			col = 0;
			continue;
		}
		if (p[i] == '\n')
			fail_msg("bare LF at %zu", i);
		if (++col > DELIVER_DSN_LINE_MAX)
			fail_msg("line longer than 998 at %zu", i);
	}
	if (n > 0 && (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n'))
		fail_msg("output does not end with CRLF");
}

/* Well-formed UTF-8 (RFC 3629), for what we generate with utf8 on. */
static size_t utf8_seq_ok(const uint8_t *p, size_t n)
{
	uint32_t cp, min;
	size_t need;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		need = 1, cp = p[0] & 0x1f, min = 0x80;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		need = 2, cp = p[0] & 0x0f, min = 0x800;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		need = 3, cp = p[0] & 0x07, min = 0x10000;
	else
		return 0;
	if (n < need + 1)
		return 0;
	for (size_t k = 1; k <= need; k++) {
		if (p[k] < 0x80 || p[k] > 0xbf)
			return 0;
		cp = cp << 6 | (p[k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return need + 1;
}

/* What we generate (not the copied original): printable ASCII, HT only
 * where a field is folded, no DEL; 8-bit only with utf8 and then only
 * well-formed UTF-8. */
static void check_generated(const uint8_t *p, size_t n, bool utf8)
{
	check_lines(p, n);
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		if (c == '\r' || c == '\n')
			continue;
		if (c == '\t' && i > 0 && p[i - 1] == '\n')
			continue;
		if (c < 0x20 || c == 0x7f)
			fail_msg("control 0x%02x at %zu", c, i);
		if (c >= 0x80) {
			if (!utf8)
				fail_msg("8-bit byte at %zu without utf8", i);
			size_t k = utf8_seq_ok(p + i, n - i);
			if (!k)
				fail_msg("bad UTF-8 at %zu", i);
			i += k - 1;
		}
	}
}

/* ---- splitting a DSN ---------------------------------------------------- */

struct span {
	const char *p;
	size_t n;
};

struct parsed {
	struct span hdr;       /* top-level header, each line with its CRLF */
	struct span preamble;
	struct span part_hdr[3];
	struct span part_body[3];
};

static const char *find(const char *p, size_t n, const char *s)
{
	size_t k = strlen(s);
	for (size_t i = 0; k <= n && i <= n - k; i++)
		if (memcmp(p + i, s, k) == 0)
			return p + i;
	return NULL;
}

static size_t count(const char *p, size_t n, const char *s)
{
	size_t c = 0;
	const char *q;
	while ((q = find(p, n, s))) {
		c++;
		n -= (size_t)(q - p) + 1;
		p = q + 1;
	}
	return c;
}

/* Finds the top-level header, the preamble and three parts by the
 * boundary (RFC 2046 §5.1.1: the CRLF before "--" is the delimiter's),
 * and checks there is nothing after the closing delimiter. */
static void parse_dsn(const struct buf *b, const char *bnd, struct parsed *ps)
{
	const char *s = (const char *)b->data;
	size_t n = b->len;
	char delim[128], close[128];
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", bnd);
	snprintf(close, sizeof(close), "\r\n--%s--\r\n", bnd);
	size_t dl = strlen(delim), cl = strlen(close);

	const char *e = find(s, n, "\r\n\r\n");
	assert_non_null(e);
	ps->hdr = (struct span){s, (size_t)(e + 2 - s)};
	assert_true(n >= cl);
	assert_memory_equal(s + n - cl, close, cl);
	const char *end = s + n - cl;

	const char *at = e + 2, *d[4];
	for (int i = 0; i < 3; i++) {
		d[i] = find(at, (size_t)(end - at), delim);
		assert_non_null(d[i]);
		at = d[i] + dl;
	}
	assert_null(find(at, (size_t)(end - at), delim));
	d[3] = end;
	ps->preamble = (struct span){e + 4, (size_t)(d[0] - (e + 4))};
	for (int i = 0; i < 3; i++) {
		const char *ps0 = d[i] + dl;
		size_t pn = (size_t)(d[i + 1] - ps0);
		const char *h = find(ps0, pn, "\r\n\r\n");
		if (!h) {
			/* An empty body right before the next delimiter. */
			assert_true(pn >= 2 && memcmp(ps0 + pn - 2, "\r\n", 2) == 0);
			ps->part_hdr[i] = (struct span){ps0, pn};
			ps->part_body[i] = (struct span){ps0 + pn, 0};
			continue;
		}
		ps->part_hdr[i] = (struct span){ps0, (size_t)(h + 2 - ps0)};
		ps->part_body[i] = (struct span){h + 4,
		                                 (size_t)(d[i + 1] - (h + 4))};
	}
}

/* The span must be exactly these lines, each ended by CRLF. */
static void expect_lines(const char *what, struct span sp,
                         const char *const *lines)
{
	struct buf want = BUF_INIT(1 << 20);
	for (size_t i = 0; lines[i]; i++) {
		assert_int_equal(buf_appends(&want, lines[i]), 0);
		assert_int_equal(buf_appends(&want, "\r\n"), 0);
	}
	if (sp.n != want.len || (sp.n && memcmp(sp.p, want.data, sp.n))) {
		fprintf(stderr, "%s: got:\n%.*s--\nwant:\n%.*s--\n", what,
		        (int)sp.n, sp.p, (int)want.len, (const char *)want.data);
		fail();
	}
	buf_free(&want);
}

/* A block of the delivery-status body, by index (blocks are separated by
 * one empty line, RFC 3464 §2.1). */
static struct span ds_block(struct span body, size_t idx)
{
	const char *p = body.p, *end = body.p + body.n;
	for (size_t i = 0; i < idx; i++) {
		const char *q = find(p, (size_t)(end - p), "\r\n\r\n");
		assert_non_null(q);
		p = q + 4;
	}
	const char *q = find(p, (size_t)(end - p), "\r\n\r\n");
	return (struct span){p, q ? (size_t)(q + 2 - p) : (size_t)(end - p)};
}

/* A header field of a block, unfolded per RFC 5322 §2.2.3 (CRLF removed),
 * copied into out; false when absent. */
static bool get_field(struct span sp, const char *name, char *out,
                      size_t outsz)
{
	size_t nl = strlen(name);
	const char *p = sp.p, *end = sp.p + sp.n;
	while (p < end) {
		const char *eol = find(p, (size_t)(end - p), "\r\n");
		assert_non_null(eol);
		if ((size_t)(eol - p) > nl + 1 && strncmp(p, name, nl) == 0 &&
		    p[nl] == ':') {
			const char *v = p + nl + 1;
			while (*v == ' ')
				v++;
			size_t o = 0;
			for (;;) {
				while (v < eol) {
					assert_true(o + 1 < outsz);
					out[o++] = *v++;
				}
				v = eol + 2;
				if (v >= end || (*v != ' ' && *v != '\t'))
					break;
				eol = find(v, (size_t)(end - v), "\r\n");
				assert_non_null(eol);
			}
			out[o] = '\0';
			return true;
		}
		p = eol + 2;
	}
	return false;
}

/* ---- composing ---------------------------------------------------------- */

/* Feeds the original in pieces ending at cuts, stopping when the feed
 * wants no more. Returns whether it did. */
static bool feed_pieces(struct deliver_dsn_orig *o, const char *in,
                        size_t inlen, const size_t *cuts, size_t ncuts,
                        struct buf *out)
{
	size_t pos = 0;
	for (size_t i = 0; i <= ncuts; i++) {
		size_t stop = i < ncuts ? cuts[i] : inlen;
		int r = deliver_dsn_orig_feed(o, (const uint8_t *)in + pos,
		                              stop - pos, out);
		assert_true(r == 0 || r == 1);
		pos = stop;
		if (r == 1) {
			/* Done for good: more input adds nothing. */
			size_t len = out->len;
			assert_int_equal(deliver_dsn_orig_feed(
				o, (const uint8_t *)"X: y\r\n", 6, out), 1);
			assert_int_equal(out->len, len);
			return true;
		}
	}
	return false;
}

/* Head, original, tail; every line checked. */
static void compose(const struct deliver_dsn *d, const char *orig,
                    size_t origlen, struct buf *out)
{
	assert_int_equal(deliver_dsn_head(d, out), 0);
	check_generated(out->data, out->len, d->utf8);
	struct deliver_dsn_orig o;
	deliver_dsn_orig_init(&o, d->headers_only);
	feed_pieces(&o, orig, origlen, NULL, 0, out);
	assert_int_equal(deliver_dsn_tail(d, &o, out), 0);
	check_lines(out->data, out->len);
}

#define T0 1700000000   /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define BND "0123456789ABCDEF.1700000400/relay.example.org"
#define ORIG "Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody\r\n"

static const struct deliver_dsn_rcpt two_rcpts[] = {
	{"bob@example.com", "rfc822;bob+2Bx@example.com", DELIVER_DSN_FAILED,
	 "5.1.1", "mx.example.com",
	 "550 5.1.1 <bob@example.com>: Recipient address rejected: User "
	 "unknown in virtual mailbox table", NULL, T0 + 300},
	{"carol@example.net", NULL, DELIVER_DSN_FAILED, "4.4.7", NULL, NULL,
	 "message expired after 5 days in the queue", 0},
};

static struct deliver_dsn base_dsn(void)
{
	return (struct deliver_dsn){
		.reporting_mta = "relay.example.org",
		.qid = "0123456789ABCDEF",
		.envid = "ENV+2B1",
		.sender = "alice@example.org",
		.message_id = "<0123456789ABCDEF.dsn@relay.example.org>",
		.boundary = BND,
		.arrival = T0,
		.now = T0 + 400,
		.nrcpt = 2,
		.rcpt = two_rcpts,
	};
}

/* ---- a failure report, line by line -------------------------------------- */

static const char *const fail_hdr[] = {
	"From: \"Mail Delivery System\" <MAILER-DAEMON@relay.example.org>",
	"To: <alice@example.org>",
	"Subject: Undelivered Mail Returned to Sender",
	"Date: Tue, 14 Nov 2023 22:20:00 +0000",
	"Message-ID: <0123456789ABCDEF.dsn@relay.example.org>",
	"MIME-Version: 1.0",
	"Content-Type: multipart/report; report-type=delivery-status;",
	"\tboundary=\"" BND "\"",
	"Auto-Submitted: auto-replied",
	NULL,
};
/* The empty line after it is the first delimiter's CRLF. */
static const char *const preamble[] = {
	"This is a MIME-encapsulated message.", NULL,
};
static const char *const part1_hdr[] = {
	"Content-Description: Notification",
	"Content-Type: text/plain; charset=us-ascii", NULL,
};
static const char *const fail_text[] = {
	"This is the mail delivery system at relay.example.org.",
	"",
	"Your message could not be delivered to one or more recipients. "
	"Delivery to the",
	"recipients marked failed below has been given up; they will not be "
	"retried.",
	"",
	"Your message is attached.",
	"",
	"<bob@example.com>: failed (status 5.1.1)",
	"    host mx.example.com said: 550 5.1.1 <bob@example.com>: Recipient "
	"address",
	"    rejected: User unknown in virtual mailbox table",
	"",
	"<carol@example.net>: failed (status 4.4.7)",
	"    message expired after 5 days in the queue",
	NULL,
};
static const char *const part2_hdr[] = {
	"Content-Description: Delivery report",
	"Content-Type: message/delivery-status", NULL,
};
static const char *const fail_ds_msg[] = {
	"Original-Envelope-Id: ENV+1",
	"Reporting-MTA: dns;relay.example.org",
	"Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
	"X-Relayd-Queue-ID: 0123456789ABCDEF",
	NULL,
};
static const char *const fail_ds_rcpt1[] = {
	"Original-Recipient: rfc822;bob+x@example.com",
	"Final-Recipient: rfc822;bob@example.com",
	"Action: failed",
	"Status: 5.1.1",
	"Remote-MTA: dns;mx.example.com",
	"Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: Recipient address",
	" rejected: User unknown in virtual mailbox table",
	"Last-Attempt-Date: Tue, 14 Nov 2023 22:18:20 +0000",
	NULL,
};
static const char *const fail_ds_rcpt2[] = {
	"Final-Recipient: rfc822;carol@example.net",
	"Action: failed",
	"Status: 4.4.7",
	NULL,
};
static const char *const part3_full_hdr[] = {
	"Content-Description: Undelivered Message",
	"Content-Type: message/rfc822", NULL,
};
static const char *const orig_lines[] = {
	"Subject: hi", "From: alice@example.org", "", NULL,
};

static void write_sample(const struct buf *b)
{
	const char *path = getenv("DSN_SAMPLE_OUT");
	if (!path || !*path)
		return;
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
	assert_int_equal(fclose(f), 0);
}

static void test_failure_report(void **state)
{
	(void)state;
	struct deliver_dsn d = base_dsn();
	struct buf b = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b);
	write_sample(&b);

	struct parsed ps;
	parse_dsn(&b, BND, &ps);
	expect_lines("header", ps.hdr, fail_hdr);
	expect_lines("preamble", ps.preamble, preamble);
	expect_lines("part 1 header", ps.part_hdr[0], part1_hdr);
	expect_lines("part 1", ps.part_body[0], fail_text);
	expect_lines("part 2 header", ps.part_hdr[1], part2_hdr);
	expect_lines("per-message", ds_block(ps.part_body[1], 0), fail_ds_msg);
	expect_lines("recipient 1", ds_block(ps.part_body[1], 1),
	             fail_ds_rcpt1);
	expect_lines("recipient 2", ds_block(ps.part_body[1], 2),
	             fail_ds_rcpt2);
	assert_int_equal(count(ps.part_body[1].p, ps.part_body[1].n,
	                       "\r\n\r\n"), 2);
	expect_lines("part 3 header", ps.part_hdr[2], part3_full_hdr);
	/* The original arrives whole: the delimiter has a CRLF of its own. */
	assert_int_equal(ps.part_body[2].n, sizeof(ORIG) - 1);
	assert_memory_equal(ps.part_body[2].p, ORIG, ps.part_body[2].n);
	expect_lines("original header", (struct span){ps.part_body[2].p, 40},
	             orig_lines);

	/* Folded fields unfold to the value given. */
	char v[512];
	assert_true(get_field(ds_block(ps.part_body[1], 1), "Diagnostic-Code",
	                      v, sizeof(v)));
	assert_string_equal(v, "smtp; 550 5.1.1 <bob@example.com>: Recipient "
	                       "address rejected: User unknown in virtual "
	                       "mailbox table");

	/* Deterministic: the same input gives the same bytes. */
	struct buf b2 = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b2);
	assert_int_equal(b.len, b2.len);
	assert_memory_equal(b.data, b2.data, b.len);
	buf_free(&b2);
	buf_free(&b);
}

/* ---- a delayed warning --------------------------------------------------- */

static const char *const delayed_text[] = {
	"This is the mail delivery system at relay.example.org.",
	"",
	"This is a warning only: no action is required on your part, and you "
	"do not",
	"need to send your message again.",
	"",
	"Your message has not yet been delivered to the recipients marked "
	"delayed",
	"below. The mail system will keep trying until Sun, 19 Nov 2023 "
	"13:20:00 +0000.",
	"",
	"The header section of your message is attached.",
	"",
	"<dave@example.org>: delayed, still being retried (status 4.4.1)",
	"    connection refused",
	NULL,
};
static const char *const delayed_ds_rcpt[] = {
	"Final-Recipient: rfc822;dave@example.org",
	"Action: delayed",
	"Status: 4.4.1",
	"Remote-MTA: dns;mx.example.org",
	"Last-Attempt-Date: Tue, 14 Nov 2023 22:18:20 +0000",
	"Will-Retry-Until: Sun, 19 Nov 2023 13:20:00 +0000",
	NULL,
};
static const char *const delayed_ds_msg[] = {
	"Reporting-MTA: dns;relay.example.org",
	"Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
	NULL,
};
static const char *const part3_hdrs_hdr[] = {
	"Content-Description: Delayed Message Headers",
	"Content-Type: text/rfc822-headers", NULL,
};

static void test_delayed_warning(void **state)
{
	(void)state;
	static const struct deliver_dsn_rcpt r = {
		"dave@example.org", NULL, DELIVER_DSN_DELAYED, "4.4.1",
		"mx.example.org", NULL, "connection refused", T0 + 300,
	};
	struct deliver_dsn d = base_dsn();
	d.delayed = true;
	d.headers_only = true;
	d.retry_until = T0 + 400000;
	d.envid = NULL;
	d.qid = NULL;
	d.nrcpt = 1;
	d.rcpt = &r;
	struct buf b = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b);

	struct parsed ps;
	parse_dsn(&b, BND, &ps);
	char v[256];
	assert_true(get_field(ps.hdr, "Subject", v, sizeof(v)));
	assert_string_equal(v, "Delayed Mail (still being retried)");
	assert_true(get_field(ps.hdr, "Auto-Submitted", v, sizeof(v)));
	assert_string_equal(v, "auto-replied");
	expect_lines("part 1", ps.part_body[0], delayed_text);
	expect_lines("per-message", ds_block(ps.part_body[1], 0),
	             delayed_ds_msg);
	expect_lines("recipient", ds_block(ps.part_body[1], 1),
	             delayed_ds_rcpt);
	expect_lines("part 3 header", ps.part_hdr[2], part3_hdrs_hdr);
	/* Only the header section (its last CRLF kept), without the empty
	 * line. */
	assert_int_equal(ps.part_body[2].n, strlen("Subject: hi\r\nFrom: "
	                                           "alice@example.org\r\n"));
	assert_memory_equal(ps.part_body[2].p,
	                    "Subject: hi\r\nFrom: alice@example.org\r\n",
	                    ps.part_body[2].n);
	buf_free(&b);
}

/* A failure report that also lists a recipient still being retried, and
 * a warning without a retry limit. */
static void test_mixed_actions(void **state)
{
	(void)state;
	struct deliver_dsn_rcpt r[2] = {
		{"a@x.example", NULL, DELIVER_DSN_FAILED, "5.0.0", NULL, NULL,
		 NULL, 0},
		{"b@y.example", NULL, DELIVER_DSN_DELAYED, "4.4.1", NULL, NULL,
		 NULL, 0},
	};
	struct deliver_dsn d = base_dsn();
	d.rcpt = r;
	d.retry_until = T0 + 400000;
	struct buf b = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b);
	struct parsed ps;
	parse_dsn(&b, BND, &ps);
	/* A date is never wrapped inside. */
	assert_non_null(find(ps.part_body[0].p, ps.part_body[0].n,
	                     "\r\nDelivery to the recipients marked delayed "
	                     "is still being retried until\r\nSun, 19 Nov 2023 "
	                     "13:20:00 +0000.\r\n"));
	struct span r1 = ds_block(ps.part_body[1], 1);
	struct span r2 = ds_block(ps.part_body[1], 2);
	char v[128];
	assert_false(get_field(r1, "Will-Retry-Until", v, sizeof(v)));
	assert_true(get_field(r2, "Will-Retry-Until", v, sizeof(v)));
	assert_true(get_field(r2, "Action", v, sizeof(v)));
	assert_string_equal(v, "delayed");
	buf_free(&b);

	d.delayed = true;
	d.retry_until = 0;
	struct buf b2 = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b2);
	parse_dsn(&b2, BND, &ps);
	assert_non_null(find(ps.part_body[0].p, ps.part_body[0].n,
	                     "The mail system will keep trying.\r\n"));
	assert_non_null(find(ps.part_body[0].p, ps.part_body[0].n,
	                     "\r\nDelivery to the recipients marked failed "));
	assert_null(find(b2.data ? (const char *)b2.data : "", b2.len,
	                 "Will-Retry-Until"));
	buf_free(&b2);
}

/* ---- the original, table-driven, at every split ------------------------- */

struct ocase {
	const char *name;
	const char *in;
	size_t inlen;
	const char *hdrs;   /* headers_only: copy + tail (boundary "B") */
	size_t hdrslen;
	bool ends;          /* headers_only: the feed returns 1 */
	const char *full;   /* whole copy + tail */
	size_t fulllen;
};

#define NAME80 "X-0123456789012345678901234567890123456789012345678901234" \
               "5678901234567890123456"

/* clang-format off */
static const struct ocase ocases[] = {
	{"header and body",
	 S("Subject: s\r\nFrom: a@b\r\n\r\nbody\r\nline2\r\n"),
	 S("Subject: s\r\nFrom: a@b\r\n--B--\r\n"), true,
	 S("Subject: s\r\nFrom: a@b\r\n\r\nbody\r\nline2\r\n--B--\r\n")},
	{"folded fields",
	 S("Subject: a\r\n b\r\n\tc\r\nTo: t\r\n\r\nbody"),
	 S("Subject: a\r\n b\r\n\tc\r\nTo: t\r\n--B--\r\n"), true,
	 S("Subject: a\r\n b\r\n\tc\r\nTo: t\r\n\r\nbody\r\n--B--\r\n")},
	{"no blank line, no body", S("Subject: s\r\nTo: t\r\n"),
	 S("Subject: s\r\nTo: t\r\n--B--\r\n"), false,
	 S("Subject: s\r\nTo: t\r\n--B--\r\n")},
	{"no final CRLF", S("Subject: s"),
	 S("Subject: s\r\n--B--\r\n"), false,
	 S("Subject: s\r\n--B--\r\n")},
	{"blank line, empty body", S("Subject: s\r\n\r\n"),
	 S("Subject: s\r\n--B--\r\n"), true,
	 S("Subject: s\r\n\r\n--B--\r\n")},
	{"empty message", S(""),
	 S("\r\n--B--\r\n"), false,
	 S("\r\n--B--\r\n")},
	{"empty header section", S("\r\nbody\r\n"),
	 S("\r\n--B--\r\n"), true,
	 S("\r\nbody\r\n--B--\r\n")},
	{"body without final CRLF", S("A: 1\r\n\r\nbody"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n\r\nbody\r\n--B--\r\n")},
	{"blank lines in the body", S("A: 1\r\n\r\n\r\nx\r\n\r\n"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n\r\n\r\nx\r\n\r\n--B--\r\n")},
	{"CR at the very end", S("A: 1\r\n\r"),
	 S("A: 1\r\n--B--\r\n"), false,
	 S("A: 1\r\n\r\n--B--\r\n")},
	{"CR at the end of a field", S("Subject: s\r"),
	 S("Subject: s\r\n--B--\r\n"), false,
	 S("Subject: s\r\n--B--\r\n")},
	{"bare LF and bare CR become CRLF",
	 S("A: 1\nB: 2\rC: 3\r\n\r\nbody\nx\ry\r\n"),
	 S("A: 1\r\nB: 2\r\nC: 3\r\n--B--\r\n"), true,
	 S("A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\nx\r\ny\r\n--B--\r\n")},
	{"bare LF empty line", S("A: 1\n\nbody"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n\r\nbody\r\n--B--\r\n")},
	{"bare CR at a line start", S("A: 1\r\n\rB: 2\r\n"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n\r\nB: 2\r\n--B--\r\n")},
	{"non-header line ends the header section",
	 S("Subject: s\r\nnot a header\r\nReceived: b\r\n"),
	 S("Subject: s\r\n--B--\r\n"), true,
	 S("Subject: s\r\nnot a header\r\nReceived: b\r\n--B--\r\n")},
	{"mbox From_ line", S("From a@b Mon\r\nSubject: s\r\n\r\n"),
	 S("\r\n--B--\r\n"), true,
	 S("From a@b Mon\r\nSubject: s\r\n\r\n--B--\r\n")},
	{"leading blank on the first line", S(" Received: x\r\n\r\n"),
	 S("\r\n--B--\r\n"), true,
	 S(" Received: x\r\n\r\n--B--\r\n")},
	{"blanks before the colon", S("Subject : s\r\nX\t: y\r\n\r\nb"),
	 S("Subject : s\r\nX\t: y\r\n--B--\r\n"), true,
	 S("Subject : s\r\nX\t: y\r\n\r\nb\r\n--B--\r\n")},
	{"colon at a line start", S("A: 1\r\n: x\r\n"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n: x\r\n--B--\r\n")},
	{"8-bit in a field name", S("A: 1\r\nSubj\xe9" "ct: s\r\n"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\nSubj\xe9" "ct: s\r\n--B--\r\n")},
	{"8-bit field body and body",
	 S("Subject: caf\xc3\xa9\r\n\r\n\xe9\xff\r\n"),
	 S("Subject: caf\xc3\xa9\r\n--B--\r\n"), true,
	 S("Subject: caf\xc3\xa9\r\n\r\n\xe9\xff\r\n--B--\r\n")},
	{"name without colon at the end", S("A: 1\r\nSubject"),
	 S("A: 1\r\n--B--\r\n"), false,
	 S("A: 1\r\nSubject\r\n--B--\r\n")},
	{"name then CR at the end", S("A: 1\r\nSubject\r"),
	 S("A: 1\r\n--B--\r\n"), false,
	 S("A: 1\r\nSubject\r\n--B--\r\n")},
	{"field name of 80 characters",
	 S(NAME80 ": v\r\nB: 2\r\n\r\nb\r\n"),
	 S(NAME80 ": v\r\nB: 2\r\n--B--\r\n"), true,
	 S(NAME80 ": v\r\nB: 2\r\n\r\nb\r\n--B--\r\n")},
	{"dots and signature lines pass",
	 S("A: 1\r\n\r\n.\r\n..\r\n-- \r\nsig\r\n"),
	 S("A: 1\r\n--B--\r\n"), true,
	 S("A: 1\r\n\r\n.\r\n..\r\n-- \r\nsig\r\n--B--\r\n")},
};
/* clang-format on */

static const struct deliver_dsn tiny = {.boundary = "B"};

/* One run: pieces ending at cuts, then the tail; the output must be the
 * expected bytes. */
static void orig_run(const struct ocase *c, bool hdrs, const size_t *cuts,
                     size_t ncuts, const char *how)
{
	struct deliver_dsn_orig o;
	struct buf b = BUF_INIT(1 << 20);
	deliver_dsn_orig_init(&o, hdrs);
	bool ended = feed_pieces(&o, c->in, c->inlen, cuts, ncuts, &b);
	assert_int_equal(deliver_dsn_tail(&tiny, &o, &b), 0);
	const char *want0 = hdrs ? c->hdrs : c->full;
	size_t wantlen = hdrs ? c->hdrslen : c->fulllen;
	/* The tables show the copy, a CRLF ending an unfinished last line,
	 * and "--B--\r\n". RFC 2046 §5.1.1: the CRLF before "--B--" is the
	 * delimiter's, so a copy that ended with its own CRLF is followed by
	 * one more; one that did not needs none but the delimiter's. */
	char want[4096];
	assert_true(wantlen + 2 < sizeof want);
	size_t plen = wantlen - 7;
	memcpy(want, want0, plen);
	/* (A CR left pending at the end is such a line end too.) */
	if ((o.copied == plen || (o.pending_cr && o.copied + 2 == plen)) &&
	    plen >= 2 && want0[plen - 2] == '\r' &&
	    want0[plen - 1] == '\n') {
		memcpy(want + plen, "\r\n", 2);
		plen += 2;
	}
	memcpy(want + plen, "--B--\r\n", 7);
	wantlen = plen + 7;
	if (b.len != wantlen || memcmp(b.data, want, wantlen) ||
	    (hdrs && ended != c->ends)) {
		fprintf(stderr, "case '%s' (%s, %s): ended %d, got:\n%.*s--\n"
		        "want:\n%.*s--\n", c->name,
		        hdrs ? "headers only" : "full", how, ended,
		        (int)b.len, (const char *)b.data, (int)wantlen, want);
		fail();
	}
	check_lines(b.data, b.len);
	buf_free(&b);
}

/* A small deterministic generator for the random splits. */
static uint32_t lcg(uint32_t *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 16;
}

static void test_orig_table(void **state)
{
	(void)state;
	uint32_t seed = 1;
	for (size_t t = 0; t < NELEM(ocases); t++) {
		const struct ocase *c = &ocases[t];
		assert_true(c->inlen < 256);
		for (int hdrs = 0; hdrs <= 1; hdrs++) {
			size_t cuts[256];
			char how[64];
			orig_run(c, hdrs, NULL, 0, "whole");
			for (size_t i = 0; i <= c->inlen; i++) {
				for (size_t j = i; j <= c->inlen; j++) {
					cuts[0] = i;
					cuts[1] = j;
					snprintf(how, sizeof(how), "split %zu,%zu",
					         i, j);
					orig_run(c, hdrs, cuts, 2, how);
				}
			}
			for (size_t i = 0; i < c->inlen; i++)
				cuts[i] = i + 1;
			orig_run(c, hdrs, cuts, c->inlen, "byte by byte");
			for (int r = 0; r < 50; r++) {
				size_t n = 0, pos = 0;
				while (c->inlen && pos < c->inlen) {
					pos += 1 + lcg(&seed) % 7;
					if (pos > c->inlen)
						pos = c->inlen;
					cuts[n++] = pos;
				}
				snprintf(how, sizeof(how), "random %d", r);
				orig_run(c, hdrs, cuts, n, how);
			}
		}
	}
}

/* Removes every CRLF SP the copy inserted. */
static size_t unbreak(const uint8_t *p, size_t n, uint8_t *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (i + 2 < n && p[i] == '\r' && p[i + 1] == '\n' &&
		    p[i + 2] == ' ') {
			i += 2;
			continue;
		}
		out[o++] = p[i];
	}
	return o;
}

/* Lines over 998 octets in the original are broken with CRLF SP, never
 * inside a UTF-8 sequence; a line of exactly 998 stays whole. */
static void test_orig_long_lines(void **state)
{
	(void)state;
	static char in[16384];
	size_t n = 0;
	n += (size_t)sprintf(in + n, "X-Long: ");
	memset(in + n, 'a', 2500), n += 2500;
	n += (size_t)sprintf(in + n, "\r\nSubject: s\r\n\r\n");
	size_t body = n;
	memset(in + n, 'b', 998), n += 998;
	n += (size_t)sprintf(in + n, "\r\n");
	memset(in + n, 'c', 999), n += 999;
	n += (size_t)sprintf(in + n, "\r\n");
	for (int i = 0; i < 700; i++)
		n += (size_t)sprintf(in + n, "\xc3\xa9");
	n += (size_t)sprintf(in + n, "x");
	for (int i = 0; i < 400; i++)
		n += (size_t)sprintf(in + n, "\xf0\x9f\x93\xa8");
	n += (size_t)sprintf(in + n, "\r\n");

	static uint8_t flat[16384];
	for (int hdrs = 0; hdrs <= 1; hdrs++) {
		struct buf whole = BUF_INIT(1 << 20);
		for (int mode = 0; mode < 3; mode++) {
			struct deliver_dsn_orig o;
			struct buf b = BUF_INIT(1 << 20);
			size_t cuts[16384], nc = 0;
			if (mode == 1)
				for (size_t i = 1; i < n; i++)
					cuts[nc++] = i;
			if (mode == 2)
				for (size_t i = 997; i < n; i += 997)
					cuts[nc++] = i;
			deliver_dsn_orig_init(&o, hdrs);
			bool ended = feed_pieces(&o, in, n, cuts, nc, &b);
			assert_int_equal(ended, hdrs);
			assert_int_equal(deliver_dsn_tail(&tiny, &o, &b), 0);
			check_lines(b.data, b.len);
			/* Every line is well-formed UTF-8: nothing was cut
			 * inside a sequence. */
			for (size_t i = 0; i < b.len; i++) {
				if (b.data[i] >= 0x80) {
					size_t k = utf8_seq_ok(b.data + i, b.len - i);
					assert_true(k > 0);
					i += k - 1;
				}
			}
			size_t fl = unbreak(b.data, b.len, flat);
			size_t want = hdrs ? body - 2 : n;
			assert_true(fl >= want);
			assert_memory_equal(flat, in, want);
			if (mode == 0) {
				assert_int_equal(buf_append(&whole, b.data,
				                            b.len), 0);
			} else {
				assert_int_equal(b.len, whole.len);
				assert_memory_equal(b.data, whole.data, b.len);
			}
			buf_free(&b);
		}
		/* The 998-octet line is whole, the 999 one broken once. */
		if (!hdrs) {
			char line[1000];
			memset(line, 'b', 998);
			memcpy(line + 998, "\r\n", 2);
			assert_non_null(find((const char *)whole.data,
			                     whole.len, "\n"));
			const char *p = find((const char *)whole.data,
			                     whole.len, "\r\nbbb");
			assert_non_null(p);
			assert_memory_equal(p + 2, line, 1000);
			p = find((const char *)whole.data, whole.len, "\r\nccc");
			assert_non_null(p);
			assert_int_equal(p[2 + 998], '\r');
			assert_memory_equal(p + 2 + 998, "\r\n c\r\n", 6);
		}
		buf_free(&whole);
	}
}

/* ---- hostile text ----------------------------------------------------- */

/* Builds a remote reply with line breaks, controls, a would-be boundary
 * and header, 8-bit (valid and not), a C1 control, and a 2000-octet word. */
static size_t hostile(char *out, size_t cap)
{
	size_t n = (size_t)snprintf(out, cap, "%s",
		"550 5.1.1 <x@y>:\r\nInjected: yes\r\n\r\n--" BND "--\r\n"
		"bare\rcr bare\nlf tab\there ctl\x01\x1b\x7f end caf\xc3\xa9 "
		"bad\xff\xfe c1\xc2\x85 trunc\xe2\x82 ");
	memset(out + n, 'A', 2000);
	n += 2000;
	n += (size_t)snprintf(out + n, cap - n, " tail");
	return n;
}

static void test_hostile_text(void **state)
{
	(void)state;
	static char diag[4096];
	hostile(diag, sizeof(diag));
	for (int utf8 = 0; utf8 <= 1; utf8++) {
		const struct deliver_dsn_rcpt r = {
			"eve\r\nBcc: victim@example.com", "rfc822;a+00b+0D+0AX-Inj:+20y@z",
			DELIVER_DSN_FAILED, "5.1.1\r\nX: y", "mx\r\nX-Evil: 1",
			diag, "reason\r\n--" BND "\r\nwith\x01" "ctl", T0,
		};
		struct deliver_dsn d = base_dsn();
		d.sender = "alice@example.org>\r\nBcc: victim@example.com";
		d.envid = "E+0D+0AX-Env:+201";
		d.utf8 = utf8;
		d.nrcpt = 1;
		d.rcpt = &r;
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);

		/* Nothing injected: the only lines starting with "--" are
		 * the delimiters, and no injected field starts a line. */
		const char *s = (const char *)b.data;
		assert_int_equal(count(s, b.len, "\n--"), 4);
		assert_null(find(s, b.len, "\nInjected:"));
		assert_null(find(s, b.len, "\nBcc:"));
		assert_null(find(s, b.len, "\nX-Inj:"));
		assert_null(find(s, b.len, "\nX-Env:"));
		assert_null(find(s, b.len, "\nX-Evil:"));
		assert_null(find(s, b.len, "\nX: y"));

		struct parsed ps;
		parse_dsn(&b, BND, &ps);
		struct span rb = ds_block(ps.part_body[1], 1);
		char v[4096];
		assert_true(get_field(ps.hdr, "To", v, sizeof(v)));
		assert_string_equal(v, "<alice@example.org> Bcc: "
		                       "victim@example.com>");
		assert_true(get_field(rb, "Final-Recipient", v, sizeof(v)));
		assert_string_equal(v, "rfc822;eve Bcc: victim@example.com");
		/* NUL (decoded from xtext) becomes '?', CR LF a space. */
		assert_true(get_field(rb, "Original-Recipient", v, sizeof(v)));
		assert_string_equal(v, "rfc822;a?b X-Inj: y@z");
		assert_true(get_field(ds_block(ps.part_body[1], 0),
		                      "Original-Envelope-Id", v, sizeof(v)));
		assert_string_equal(v, "E X-Env: 1");
		/* A malformed status is replaced. */
		assert_true(get_field(rb, "Status", v, sizeof(v)));
		assert_string_equal(v, "5.0.0");
		assert_true(get_field(rb, "Remote-MTA", v, sizeof(v)));
		assert_string_equal(v, "dns;mx X-Evil: 1");

		/* The reply: a space for each line break, '?' for the rest;
		 * the long word is cut at 998 with CRLF SP, so unfolding
		 * (RFC 5322: CRLF removed) shows one space per cut. */
		assert_true(get_field(rb, "Diagnostic-Code", v, sizeof(v)));
		const char *want = utf8
			? "smtp; 550 5.1.1 <x@y>: Injected: yes --" BND "-- "
			  "bare cr bare lf tab here ctl??? end caf\xc3\xa9 bad?? "
			  "c1? trunc? "
			: "smtp; 550 5.1.1 <x@y>: Injected: yes --" BND "-- "
			  "bare cr bare lf tab here ctl??? end caf? bad?? "
			  "c1? trunc? ";
		size_t wl = strlen(want);
		assert_memory_equal(v, want, wl);
		size_t na = 0, nsp = 0;
		const char *q = v + wl;
		for (; *q == 'A' || *q == ' '; q++)
			*q == 'A' ? na++ : nsp++;
		assert_int_equal(na, 2000);
		assert_int_equal(nsp, 3);  /* 2 cuts, then the separator */
		assert_string_equal(q, "tail");
		/* The same text is in the human part, wrapped and indented. */
		struct span t = ps.part_body[0];
		assert_non_null(find(t.p, t.n, "\r\n    reason --" BND
		                     " with?ctl\r\n"));
		assert_non_null(find(t.p, t.n, "\r\n    host mx X-Evil: 1 "
		                     "said: 550 5.1.1 <x@y>: Injected: yes\r\n"));
		buf_free(&b);
	}
}

/* A long reply with spaces folds at 78 and unfolds to itself. */
static void test_fold(void **state)
{
	(void)state;
	char diag[2048];
	size_t n = (size_t)sprintf(diag, "550");
	for (int i = 0; i < 150; i++)
		n += (size_t)sprintf(diag + n, " word%03d", i);
	const struct deliver_dsn_rcpt r = {
		"a@b.example", NULL, DELIVER_DSN_FAILED, "5.7.1", NULL, diag,
		NULL, 0,
	};
	struct deliver_dsn d = base_dsn();
	d.nrcpt = 1;
	d.rcpt = &r;
	struct buf b = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &b);
	/* Every generated line fits in 78 (no word is longer). */
	struct parsed ps;
	parse_dsn(&b, BND, &ps);
	const char *s = (const char *)b.data;
	const char *end = ps.part_body[2].p;
	size_t col = 0;
	for (const char *p = s; p < end; p++) {
		if (*p == '\r') {
			p++;
			col = 0;
		} else {
			assert_true(++col <= DELIVER_DSN_FOLD);
		}
	}
	char v[4096];
	assert_true(get_field(ds_block(ps.part_body[1], 1), "Diagnostic-Code",
	                      v, sizeof(v)));
	assert_true(strncmp(v, "smtp; ", 6) == 0);
	assert_string_equal(v + 6, diag);
	assert_true(count(ds_block(ps.part_body[1], 1).p,
	                  ds_block(ps.part_body[1], 1).n, "\r\n ") >= 10);
	buf_free(&b);
}

/* With utf8, UTF-8 in addresses and replies passes and the parts say
 * 8bit; without, each non-ASCII character is one '?'. */
static void test_utf8(void **state)
{
	(void)state;
	const struct deliver_dsn_rcpt r = {
		"j\xc3\xb6rg@b\xc3\xbc" "cher.example", NULL, DELIVER_DSN_FAILED,
		"5.1.1", NULL, "550 5.1.1 unbekannt: j\xc3\xb6rg", NULL, 0,
	};
	for (int utf8 = 0; utf8 <= 1; utf8++) {
		struct deliver_dsn d = base_dsn();
		d.utf8 = utf8;
		d.nrcpt = 1;
		d.rcpt = &r;
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);
		struct parsed ps;
		parse_dsn(&b, BND, &ps);
		char v[256];
		struct span rb = ds_block(ps.part_body[1], 1);
		assert_true(get_field(rb, "Final-Recipient", v, sizeof(v)));
		assert_string_equal(v, utf8 ? "rfc822;j\xc3\xb6rg@b\xc3\xbc"
		                              "cher.example"
		                            : "rfc822;j?rg@b?cher.example");
		assert_true(get_field(rb, "Diagnostic-Code", v, sizeof(v)));
		assert_string_equal(v, utf8 ? "smtp; 550 5.1.1 unbekannt: "
		                              "j\xc3\xb6rg"
		                            : "smtp; 550 5.1.1 unbekannt: j?rg");
		bool has = get_field(ps.hdr, "Content-Transfer-Encoding", v,
		                     sizeof(v));
		assert_int_equal(has, utf8);
		for (int i = 0; i < 3; i++) {
			has = get_field(ps.part_hdr[i],
			                "Content-Transfer-Encoding", v,
			                sizeof(v));
			assert_int_equal(has, utf8);
			if (has)
				assert_string_equal(v, "8bit");
		}
		assert_true(get_field(ps.part_hdr[0], "Content-Type", v,
		                      sizeof(v)));
		assert_string_equal(v, utf8 ? "text/plain; charset=utf-8"
		                            : "text/plain; charset=us-ascii");
		buf_free(&b);
	}
}

/* RFC 6533 (global): the part types, and a UTF-8 recipient as
 * utf-8-addr-unitext; an ASCII one stays rfc822. */
static const struct {
	const char *addr, *want;
} global_rcpts[] = {
	{"j\xc3\xb6rg@b\xc3\xbc" "cher.example",
	 "utf-8;j\xc3\xb6rg@b\xc3\xbc" "cher.example"},
	{"j\xc3\xb6rg+tag=x\\y@b.example",
	 "utf-8;j\xc3\xb6rg\\x{2B}tag\\x{3D}x\\x{5C}y@b.example"},
	{"ascii+tag@b.example", "rfc822;ascii+tag@b.example"},
	{"\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac"
	 "\xe5\x8f\xb8", "utf-8;\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5"
	 "\xad\x90.\xe5\x85\xac\xe5\x8f\xb8"},
};

static void test_global(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof global_rcpts / sizeof *global_rcpts; i++)
	for (int global = 0; global <= 1; global++)
	for (int hdrs = 0; hdrs <= 1; hdrs++) {
		const struct deliver_dsn_rcpt r = {
			global_rcpts[i].addr, NULL, DELIVER_DSN_FAILED, "5.6.7",
			NULL, NULL, "the server does not offer SMTPUTF8", 0,
		};
		struct deliver_dsn d = base_dsn();
		d.utf8 = true;
		d.global = global;
		d.headers_only = hdrs;
		d.nrcpt = 1;
		d.rcpt = &r;
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);
		struct parsed ps;
		parse_dsn(&b, BND, &ps);
		char v[256];
		assert_true(get_field(ps.part_hdr[1], "Content-Type", v,
		                      sizeof(v)));
		assert_string_equal(v, global ? "message/global-delivery-status"
		                              : "message/delivery-status");
		assert_true(get_field(ps.part_hdr[2], "Content-Type", v,
		                      sizeof(v)));
		assert_string_equal(v, global ? (hdrs ? "message/global-headers"
		                                      : "message/global")
		                              : (hdrs ? "text/rfc822-headers"
		                                      : "message/rfc822"));
		struct span rb = ds_block(ps.part_body[1], 1);
		assert_true(get_field(rb, "Final-Recipient", v, sizeof(v)));
		if (global) {
			assert_string_equal(v, global_rcpts[i].want);
		} else {
			char want[256];
			snprintf(want, sizeof want, "rfc822;%s",
			         global_rcpts[i].addr);
			assert_string_equal(v, want);
		}
		/* The report's own header section stays ASCII. */
		for (size_t k = 0; k < ps.hdr.n; k++)
			assert_true((unsigned char)ps.hdr.p[k] < 0x80);
		buf_free(&b);
	}
}

/* ---- xtext ------------------------------------------------------------ */

struct xcase {
	const char *stored;
	const char *shown;  /* NULL: the field is left out */
};

static const struct xcase xcases[] = {
	{"rfc822;bob@example.com", "rfc822;bob@example.com"},
	{"rfc822;a+2Bb@x.example", "rfc822;a+b@x.example"},
	{"rfc822;+41+42+43@x", "rfc822;ABC@x"},
	{"RFC822;a+3Db@x", "RFC822;a=b@x"},
	{"rfc822;a+20b@x", "rfc822;a b@x"},
	{"rfc822;j+C3+B6rg@x", "rfc822;j?rg@x"},       /* utf8 off */
	{"rfc822;a+2bb@x", "rfc822;a+2bb@x"},           /* lower-case hex */
	{"rfc822;a+2", "rfc822;a+2"},                   /* cut short */
	{"rfc822;a+", "rfc822;a+"},
	{"rfc822;a+GGb", "rfc822;a+GGb"},
	{"rfc822;a b@x", "rfc822;a b@x"},               /* raw space */
	{"rfc822;a=b@x", "rfc822;a=b@x"},               /* raw '=' */
	{"rfc822;\xc3\xa9@x", "rfc822;?@x"},            /* raw 8-bit */
	{"+0D+0A", NULL},                               /* nothing left */
	{"", NULL},
	{NULL, NULL},
};

static void test_xtext(void **state)
{
	(void)state;
	for (size_t t = 0; t < NELEM(xcases); t++) {
		const struct xcase *c = &xcases[t];
		struct deliver_dsn_rcpt r = two_rcpts[1];
		r.orcpt = c->stored;
		struct deliver_dsn d = base_dsn();
		d.nrcpt = 1;
		d.rcpt = &r;
		d.envid = c->stored;
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);
		struct parsed ps;
		parse_dsn(&b, BND, &ps);
		char v[256];
		bool has = get_field(ds_block(ps.part_body[1], 1),
		                     "Original-Recipient", v, sizeof(v));
		if (has != (c->shown != NULL) ||
		    (has && strcmp(v, c->shown) != 0))
			fail_msg("xtext '%s': got '%s'",
			         c->stored ? c->stored : "(null)",
			         has ? v : "(none)");
		has = get_field(ds_block(ps.part_body[1], 0),
		                "Original-Envelope-Id", v, sizeof(v));
		assert_int_equal(has, c->shown != NULL);
		if (has)
			assert_string_equal(v, c->shown);
		buf_free(&b);
	}
}

/* ---- boundary, dates, status --------------------------------------------- */

struct bcase {
	const char *given;
	const char *used;
};

static const struct bcase bcases[] = {
	{BND, BND},
	{"Q.1/h", "Q.1/h"},
	{"a'()+_,-./:=?z", "a'()+_,-./:=?z"},
	{"has space", "has.space"},
	{"quo\"te;x\r\n", "quo.te.x.."},
	{"caf\xc3\xa9", "caf.."},
	{"", "relayd-dsn"},
	{"0123456789012345678901234567890123456789012345678901234567890123456789"
	 "TOOLONG",
	 "0123456789012345678901234567890123456789012345678901234567890123456789"},
};

static void test_boundary(void **state)
{
	(void)state;
	for (size_t t = 0; t < NELEM(bcases); t++) {
		struct deliver_dsn d = base_dsn();
		d.boundary = bcases[t].given;
		char bnd[DELIVER_DSN_BOUNDARY_MAX + 1];
		assert_int_equal(deliver_dsn_boundary(&d, bnd),
		                 strlen(bcases[t].used));
		assert_string_equal(bnd, bcases[t].used);
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);
		struct parsed ps;
		parse_dsn(&b, bcases[t].used, &ps);
		char v[256], want[256];
		assert_true(get_field(ps.hdr, "Content-Type", v, sizeof(v)));
		snprintf(want, sizeof(want), "multipart/report; "
		         "report-type=delivery-status;\tboundary=\"%s\"",
		         bcases[t].used);
		assert_string_equal(v, want);
		buf_free(&b);
	}
}

struct dcase {
	int64_t t;
	const char *date;  /* NULL: -EINVAL */
};

static const struct dcase dcases[] = {
	{0, "Thu, 1 Jan 1970 00:00:00 +0000"},
	{-1, "Wed, 31 Dec 1969 23:59:59 +0000"},
	{951782400, "Tue, 29 Feb 2000 00:00:00 +0000"},
	{1795255200, "Sat, 21 Nov 2026 10:00:00 +0000"},
	{1779364800, "Thu, 21 May 2026 12:00:00 +0000"},
	{253402300799, "Fri, 31 Dec 9999 23:59:59 +0000"},
	{-2208988800, "Mon, 1 Jan 1900 00:00:00 +0000"},
	{253402300800, NULL},
	{-2208988801, NULL},
	{INT64_MAX, NULL},
	{INT64_MIN, NULL},
};

static void test_dates(void **state)
{
	(void)state;
	for (size_t t = 0; t < NELEM(dcases); t++) {
		for (int which = 0; which < 4; which++) {
			struct deliver_dsn_rcpt r = two_rcpts[0];
			struct deliver_dsn d = base_dsn();
			d.nrcpt = 1;
			d.rcpt = &r;
			r.action = DELIVER_DSN_DELAYED;
			const char *name;
			if (which == 0)
				d.now = dcases[t].t, name = "Date";
			else if (which == 1)
				d.arrival = dcases[t].t, name = "Arrival-Date";
			else if (which == 2)
				r.last_attempt = dcases[t].t,
				name = "Last-Attempt-Date";
			else
				d.retry_until = dcases[t].t,
				name = "Will-Retry-Until";
			if (dcases[t].t == 0 && which > 0)
				continue;  /* 0 there means "not set" */
			struct buf b = BUF_INIT(1 << 20);
			assert_int_equal(buf_appends(&b, "keep"), 0);
			if (!dcases[t].date) {
				assert_int_equal(deliver_dsn_head(&d, &b),
				                 -EINVAL);
				assert_int_equal(b.len, 4);
				buf_free(&b);
				continue;
			}
			buf_reset(&b);
			compose(&d, S(ORIG), &b);
			struct parsed ps;
			parse_dsn(&b, BND, &ps);
			struct span sp = which == 0 ? ps.hdr
				: which == 1 ? ds_block(ps.part_body[1], 0)
				: ds_block(ps.part_body[1], 1);
			char v[128];
			assert_true(get_field(sp, name, v, sizeof(v)));
			assert_string_equal(v, dcases[t].date);
			buf_free(&b);
		}
	}
}

struct stcase {
	const char *given;
	enum deliver_dsn_action action;
	const char *shown;
};

static const struct stcase stcases[] = {
	{"5.1.1", DELIVER_DSN_FAILED, "5.1.1"},
	{"4.4.7", DELIVER_DSN_FAILED, "4.4.7"},
	{"5.123.456", DELIVER_DSN_FAILED, "5.123.456"},
	{"2.0.0", DELIVER_DSN_FAILED, "2.0.0"},
	{"4.4.1", DELIVER_DSN_DELAYED, "4.4.1"},
	{NULL, DELIVER_DSN_FAILED, "5.0.0"},
	{NULL, DELIVER_DSN_DELAYED, "4.0.0"},
	{"", DELIVER_DSN_FAILED, "5.0.0"},
	{"5.1", DELIVER_DSN_FAILED, "5.0.0"},
	{"5.1.", DELIVER_DSN_FAILED, "5.0.0"},
	{"6.0.0", DELIVER_DSN_FAILED, "5.0.0"},
	{"5.1.1000", DELIVER_DSN_FAILED, "5.0.0"},
	{"5.1.1 ", DELIVER_DSN_DELAYED, "4.0.0"},
	{"550", DELIVER_DSN_FAILED, "5.0.0"},
	{"5..1", DELIVER_DSN_FAILED, "5.0.0"},
};

static void test_status(void **state)
{
	(void)state;
	for (size_t t = 0; t < NELEM(stcases); t++) {
		struct deliver_dsn_rcpt r = two_rcpts[1];
		r.status = stcases[t].given;
		r.action = stcases[t].action;
		struct deliver_dsn d = base_dsn();
		d.nrcpt = 1;
		d.rcpt = &r;
		struct buf b = BUF_INIT(1 << 20);
		compose(&d, S(ORIG), &b);
		struct parsed ps;
		parse_dsn(&b, BND, &ps);
		char v[64];
		assert_true(get_field(ds_block(ps.part_body[1], 1), "Status", v,
		                      sizeof(v)));
		assert_string_equal(v, stcases[t].shown);
		buf_free(&b);
	}
}

/* ---- errors ----------------------------------------------------------- */

static void test_invalid(void **state)
{
	(void)state;
	struct deliver_dsn_rcpt noaddr = two_rcpts[0];
	noaddr.addr = NULL;
	for (int t = 0; t < 9; t++) {
		struct deliver_dsn d = base_dsn();
		switch (t) {
		case 0: d.reporting_mta = NULL; break;
		case 1: d.sender = NULL; break;
		case 2: d.sender = ""; break;
		case 3: d.message_id = NULL; break;
		case 4: d.boundary = NULL; break;
		case 5: d.nrcpt = 0; break;
		case 6: d.rcpt = NULL; break;
		case 7: d.nrcpt = 1, d.rcpt = &noaddr; break;
		case 8: d.arrival = INT64_MAX; break;
		}
		struct buf b = BUF_INIT(1 << 20);
		assert_int_equal(deliver_dsn_head(&d, &b), -EINVAL);
		assert_int_equal(b.len, 0);
		buf_free(&b);
	}
}

/* A buffer that is too small: -ENOBUFS, and out is as it was. */
static void test_nobufs(void **state)
{
	(void)state;
	struct deliver_dsn d = base_dsn();
	struct buf full = BUF_INIT(1 << 20);
	compose(&d, S(ORIG), &full);
	for (size_t lim = 5; lim < full.len; lim += 97) {
		struct buf b = BUF_INIT(lim);
		assert_int_equal(buf_appends(&b, "keep"), 0);
		int r = deliver_dsn_head(&d, &b);
		if (r == 0) {
			struct deliver_dsn_orig o;
			deliver_dsn_orig_init(&o, false);
			size_t before = b.len;
			r = deliver_dsn_orig_feed(&o, (const uint8_t *)ORIG,
			                          sizeof(ORIG) - 1, &b);
			if (r < 0) {
				assert_int_equal(r, -ENOBUFS);
				assert_int_equal(b.len, before);
				/* Sticky, and the tail reports it. */
				assert_int_equal(deliver_dsn_orig_feed(
					&o, (const uint8_t *)"x", 1, &b),
					-ENOBUFS);
				assert_int_equal(deliver_dsn_tail(&d, &o, &b),
				                 -ENOBUFS);
				assert_int_equal(b.len, before);
			} else {
				before = b.len;
				r = deliver_dsn_tail(&d, &o, &b);
				if (r < 0)
					assert_int_equal(b.len, before);
				else
					assert_int_equal(b.len, 4 + full.len);
			}
		} else {
			assert_int_equal(r, -ENOBUFS);
			assert_int_equal(b.len, 4);
			assert_memory_equal(b.data, "keep", 4);
		}
		buf_free(&b);
	}
	buf_free(&full);
}

static void test_state_names(void **state)
{
	(void)state;
	struct deliver_dsn_orig o;
	deliver_dsn_orig_init(&o, true);
	assert_string_equal(deliver_dsn_orig_state_name(&o), "BOL");
	struct buf b = BUF_INIT(1024);
	assert_int_equal(deliver_dsn_orig_feed(&o, (const uint8_t *)"Sub", 3,
	                                       &b), 0);
	assert_string_equal(deliver_dsn_orig_state_name(&o), "NAME");
	assert_int_equal(b.len, 0);
	assert_int_equal(deliver_dsn_orig_feed(&o, (const uint8_t *)": x", 3,
	                                       &b), 0);
	assert_string_equal(deliver_dsn_orig_state_name(&o), "FIELD");
	assert_int_equal(deliver_dsn_orig_feed(&o,
	                 (const uint8_t *)"\r\n\r\nbody", 8, &b), 1);
	assert_string_equal(deliver_dsn_orig_state_name(&o), "DONE");
	assert_int_equal(o.copied, 8);
	deliver_dsn_orig_init(&o, false);
	assert_string_equal(deliver_dsn_orig_state_name(&o), "BODY");
	o.state = 99;
	assert_string_equal(deliver_dsn_orig_state_name(&o), "?");
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_failure_report),
		cmocka_unit_test(test_delayed_warning),
		cmocka_unit_test(test_mixed_actions),
		cmocka_unit_test(test_orig_table),
		cmocka_unit_test(test_orig_long_lines),
		cmocka_unit_test(test_hostile_text),
		cmocka_unit_test(test_fold),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_global),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_boundary),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_nobufs),
		cmocka_unit_test(test_state_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
