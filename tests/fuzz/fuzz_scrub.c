/*
 * tests/fuzz/fuzz_scrub.c - libFuzzer harness for the header scrubber
 * (smtpd/smtpd_scrub.c). Input: byte 0 = flags (bit 0 add Message-ID,
 * bit 1 add Date, bit 2 scrub list that also names Message-ID and Date,
 * bit 3 hop lines on (smtpd_scrub_hops) with hop_max = bits 4-5, so that
 * small inputs reach the cap), the rest = the message.
 *
 * Checks, on every input:
 *   - a reference model (whole message, line by line) gives the same
 *     output, count of dropped fields, count of Received: fields (issue 9
 *     §3: dropped or kept, header section only) and of hop lines put in
 *     their place (the first hop_max dropped ones);
 *   - fed whole, byte by byte, and split at every point (or at 64 points
 *     for long inputs), the output is the same;
 *   - in the output's header section no field has a scrubbed name, and
 *     Message-ID / Date are there when the caller gave lines for them;
 *   - the output's header section holds only header fields and their
 *     continuation lines and ends at an empty line or the end (issue 8
 *     §7: the empty line is inserted where the body was decided to
 *     start), so a lenient reader (Python's email: any line matching
 *     ^(From |[!-9;-~]*:|[ \t]) is a header line until the first that
 *     does not) sees no scrubbed field either;
 *   - the body of the input is the tail of the output, untouched;
 *   - scrubbing the output again changes nothing;
 *   - with nothing to drop or add, the output is the input (plus the CRLF
 *     that terminates a header line cut short, or the empty line inserted
 *     before a body that starts at a line that is not a header field).
 * Any mismatch aborts.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "smtpd/smtpd_scrub.h"

#define CHECK(c)                                                            \
	do {                                                                \
		if (!(c)) {                                                 \
			fprintf(stderr, "fuzz_scrub: %s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #c);                    \
			abort();                                            \
		}                                                           \
	} while (0)

static const char *const list_dflt[] = {
	"Received", "X-Originating-IP", "X-Remote-IP", "X-Real-IP",
	"X-Forwarded-For", "X-Sender-IP", "X-Source-IP",
};
static const char *const list_alt[] = {"received", "MESSAGE-ID", "Date",
                                       "x-real-ip"};
#define MID "Message-ID: <fuzz@relay>\r\n"
#define DATE "Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"
#define HOP "Received: by relay (relayd: earlier hop, details removed); " \
	"Thu, 1 Jan 1970 00:00:00 +0000\r\n"

struct cfg {
	const char *const *names;
	size_t nnames;
	const char *mid, *date;
	const char *hop;    /* NULL: hop lines off */
	unsigned hop_max;
};

/* What a run counted. */
struct counts {
	unsigned dropped, received, hop_lines;
	unsigned kept_rcvd;   /* the model's only: Received: fields kept */
};

/* Output collected in the project's buffer (common/buf.h), unlimited: a
 * zeroed one gets its limit on first use. */
static void vec_add(struct buf *v, const void *p, size_t n)
{
	if (v->limit == 0)
		v->limit = SIZE_MAX;
	CHECK(buf_append(v, p, n) == 0);
}

static int emit_cb(void *ctx, const uint8_t *p, size_t n)
{
	CHECK(n > 0);
	vec_add(ctx, p, n);
	return 0;
}

static bool is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

static bool in_list(const struct cfg *c, const uint8_t *name, size_t len)
{
	for (size_t k = 0; k < c->nnames; k++)
		if (strlen(c->names[k]) == len &&
		    !strncasecmp(c->names[k], (const char *)name, len))
			return true;
	return false;
}

/* If a header field starts at in[i], returns the length of its name and
 * sets *colon to the colon's index; else returns 0. A field is a name of
 * ftext, optional blanks, and a colon among the first 998 octets of the
 * line (at most SMTPD_SCRUB_HOLD_MAX octets before it). */
static size_t field_at(const uint8_t *in, size_t n, size_t i, size_t *colon)
{
	size_t j = i;
	while (j < n && in[j] >= 33 && in[j] <= 126 && in[j] != ':')
		j++;
	size_t namelen = j - i;
	if (namelen == 0)
		return 0;
	size_t k = j;
	while (k < n && is_wsp(in[k]))
		k++;
	if (k == n || in[k] != ':' || k - i > SMTPD_SCRUB_HOLD_MAX)
		return 0;
	*colon = k;
	return namelen;
}

/* End of the line that starts at i: index after its CR LF, or n. */
static size_t line_end(const uint8_t *in, size_t n, size_t i)
{
	for (; i + 1 < n; i++)
		if (in[i] == '\r' && in[i + 1] == '\n')
			return i + 2;
	return n;
}

/* The reference scrubber. *body_at: where the input's body begins (n if
 * it has none). */
static void model(const struct cfg *c, const uint8_t *in, size_t n,
                  struct buf *out, struct counts *ct, size_t *body_at,
                  bool *inserted)
{
	bool first = true, drop = false, mid = false, date = false;
	size_t i = 0;
	memset(ct, 0, sizeof *ct);
	*body_at = n;
	*inserted = false;
	for (;;) {
		size_t colon, namelen;
		bool blank = i + 1 < n && in[i] == '\r' && in[i + 1] == '\n';
		bool cont = !first && i < n && is_wsp(in[i]);
		if (i == n || blank ||
		    (!cont && !(namelen = field_at(in, n, i, &colon)))) {
			/* End of the header section. */
			bool added = false;
			if (c->mid && !mid) {
				vec_add(out, c->mid, strlen(c->mid));
				added = true;
			}
			if (c->date && !date) {
				vec_add(out, c->date, strlen(c->date));
				added = true;
			}
			(void)added;
			if (!blank && i < n) {
				/* §7: the body starts at a line that is not a
				 * header field; an empty line goes before it. */
				vec_add(out, "\r\n", 2);
				*inserted = true;
			}
			vec_add(out, in + i, n - i);
			*body_at = i + (blank ? 2 : 0);
			return;
		}
		if (!cont) {
			drop = in_list(c, in + i, namelen);
			bool rcvd = namelen == 8 &&
			            !strncasecmp((const char *)in + i, "Received", 8);
			if (rcvd)
				ct->received++;
			if (drop) {
				ct->dropped++;
				if (rcvd && c->hop && ct->received <= c->hop_max) {
					vec_add(out, c->hop, strlen(c->hop));
					ct->hop_lines++;
				}
			} else if (rcvd) {
				ct->kept_rcvd++;
			} else if (namelen == 10 &&
			           !strncasecmp((const char *)in + i,
			                        "Message-ID", 10)) {
				mid = true;
			} else if (namelen == 4 &&
			           !strncasecmp((const char *)in + i, "Date", 4)) {
				date = true;
			}
		}
		size_t e = line_end(in, n, cont ? i : colon);
		if (!drop) {
			vec_add(out, in + i, e - i);
			if (e == n && !(e - i >= 2 && in[e - 2] == '\r' &&
			                in[e - 1] == '\n'))
				/* a line cut short is terminated */
				vec_add(out, in[e - 1] == '\r' ? "\n" : "\r\n",
				        in[e - 1] == '\r' ? 1 : 2);
		}
		i = e;
		first = false;
	}
}

static struct counts scrub(const struct cfg *c, const uint8_t *in, size_t n,
                           const size_t *cuts, size_t ncuts, struct buf *out)
{
	struct smtpd_scrub s;
	memset(out, 0, sizeof(*out));
	smtpd_scrub_init(&s, c->names, c->nnames, c->mid, c->date, emit_cb,
	                 out);
	if (c->hop)
		smtpd_scrub_hops(&s, c->hop, c->hop_max);
	static const uint8_t none[1];
	size_t pos = 0;
	if (!in)
		in = none;  /* an empty vec; NULL + 0 is undefined */
	for (size_t k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		CHECK(smtpd_scrub_feed(&s, in + pos, to - pos) == 0);
		pos = to;
	}
	CHECK(smtpd_scrub_finish(&s) == 0);
	CHECK(s.hop_lines <= s.received);
	return (struct counts){s.dropped, s.received, s.hop_lines, 0};
}

static bool same_counts(struct counts a, struct counts b)
{
	return a.dropped == b.dropped && a.received == b.received &&
	       a.hop_lines == b.hop_lines;
}

/* A field with a scrubbed name in the output: only one of the lines the
 * caller gave (Message-ID, Date, the hop line), whole. */
static bool added_line(const struct cfg *c, const uint8_t *p, size_t len)
{
	const char *const lines[] = {c->mid, c->date, c->hop};
	for (size_t k = 0; k < 3; k++)
		if (lines[k] && strlen(lines[k]) == len &&
		    !memcmp(lines[k], p, len))
			return true;
	return false;
}

static void same(const struct buf *a, const struct buf *b)
{
	CHECK(a->len == b->len);
	CHECK(a->len == 0 || !memcmp(a->data, b->data, a->len));
}

/* The output's header section: no scrubbed field, the added ones there. */
static void check_headers(const struct cfg *c, const struct buf *o)
{
	bool first = true, mid = false, date = false;
	size_t i = 0, n = o->len;
	const uint8_t *p = o->data;
	for (;;) {
		size_t colon, namelen;
		if (i == n || (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n'))
			break;
		if (!first && is_wsp(p[i])) {
			i = line_end(p, n, i);
			continue;
		}
		/* §7: nothing but fields and continuations before the
		 * empty line. */
		namelen = field_at(p, n, i, &colon);
		CHECK(namelen > 0);
		size_t e = line_end(p, n, colon);
		if (in_list(c, p + i, namelen))
			/* only as a line the caller asked us to add */
			CHECK(added_line(c, p + i, e - i));
		if (namelen == 10 && !strncasecmp((const char *)p + i,
		                                  "Message-ID", 10))
			mid = true;
		if (namelen == 4 && !strncasecmp((const char *)p + i, "Date", 4))
			date = true;
		i = e;
		first = false;
	}
	CHECK(!c->mid || mid);
	CHECK(!c->date || date);
}

/* A lenient reader, as Python's email.feedparser: header lines are those
 * matching ^(From |[\041-\071\073-\176]*:|[ \t]) up to the first that does
 * not (an empty line or not). None it takes for a field may have a
 * scrubbed name, but for the lines the caller asked us to add. */
static void check_lenient(const struct cfg *c, const struct buf *o)
{
	size_t i = 0, n = o->len;
	const uint8_t *p = o->data;
	while (i < n) {
		size_t e = line_end(p, n, i);
		if (e - i >= 5 && !memcmp(p + i, "From ", 5)) {
			i = e;
			continue;
		}
		if (is_wsp(p[i])) {
			i = e;
			continue;
		}
		size_t j = i;
		while (j < e && p[j] >= 33 && p[j] <= 126 && p[j] != ':')
			j++;
		if (j == e || p[j] != ':')
			break;  /* the lenient reader's body starts here */
		if (in_list(c, p + i, j - i))
			CHECK(added_line(c, p + i, e - i));
		i = e;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t flags = size > 0 ? data[0] : 0;
	const uint8_t *in = size > 1 ? data + 1 : data + size;
	size_t n = size > 1 ? size - 1 : 0;
	struct cfg c = {
		.names = flags & 4 ? list_alt : list_dflt,
		.nnames = flags & 4 ? 4 : 7,
		.mid = flags & 1 ? MID : NULL,
		.date = flags & 2 ? DATE : NULL,
		.hop = flags & 8 ? HOP : NULL,
		.hop_max = (flags >> 4) & 3,
	};

	struct buf want = {0}, got, again;
	struct counts want_ct;
	size_t body_at;
	bool inserted;
	model(&c, in, n, &want, &want_ct, &body_at, &inserted);

	CHECK(same_counts(scrub(&c, in, n, NULL, 0, &got), want_ct));
	same(&want, &got);
	free(got.data);

	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	CHECK(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	CHECK(same_counts(scrub(&c, in, n, cuts, n ? n - 1 : 0, &got), want_ct));
	same(&want, &got);
	free(got.data);

	size_t step = n <= 256 ? 1 : n / 64;
	for (size_t i = 0; i <= n; i += step) {
		cuts[0] = i;
		CHECK(same_counts(scrub(&c, in, n, cuts, 1, &got), want_ct));
		same(&want, &got);
		free(got.data);
	}
	free(cuts);

	check_headers(&c, &want);
	check_lenient(&c, &want);

	/* The body is passed untouched. */
	size_t blen = n - body_at;
	CHECK(want.len >= blen);
	CHECK(blen == 0 || !memcmp(want.data + want.len - blen, in + body_at, blen));

	/* Idempotent: a hop line put in is counted again and replaced by
	 * itself, so the count a next relayd makes is the same. */
	struct counts ct2 = scrub(&c, want.data, want.len, NULL, 0, &again);
	same(&want, &again);
	free(again.data);
	if (c.hop)
		CHECK(ct2.received == want_ct.hop_lines + want_ct.kept_rcvd);

	/* Nothing to drop or add: the input comes back, with the empty line
	 * inserted before a body that starts at a non-header line. */
	struct cfg none = {NULL, 0, NULL, NULL, NULL, 0};
	struct counts nct = scrub(&none, in, n, NULL, 0, &got);
	CHECK(nct.dropped == 0 && nct.hop_lines == 0);
	CHECK(nct.received == want_ct.received);
	if (inserted) {
		CHECK(got.len == n + 2);
		CHECK(!memcmp(got.data, in, body_at));
		CHECK(!memcmp(got.data + body_at, "\r\n", 2));
		CHECK(!memcmp(got.data + body_at + 2, in + body_at, n - body_at));
	} else {
		CHECK(got.len >= n && got.len <= n + 2);
		CHECK(n == 0 || !memcmp(got.data, in, n));
		if (got.len == n + 2)
			CHECK(!memcmp(got.data + n, "\r\n", 2));
		else if (got.len == n + 1)
			CHECK(got.data[n] == '\n' && in[n - 1] == '\r');
	}
	free(got.data);

	free(want.data);
	return 0;
}
