/*
 * tests/fuzz/fuzz_wrap.c - libFuzzer harness for the line-length limiter
 * (smtpd/smtpd_wrap.c, issue 8 §2). Input: byte 0 = flags (bit 0: CHECK
 * mode, long_lines = reject); the rest = the scrubbed message, run-length
 * expanded (0xFF N C = (N + 1) * 8 copies of C, see expand()) so that
 * short inputs make lines around the 998-octet limit.
 *
 * Checks, on every input:
 *   - a reference model (whole input, line by line, written apart from
 *     the streaming code) gives the same output, breaks and too_long;
 *   - fed whole, byte by byte, and split at every point (16 points for
 *     long inputs), the output is the same;
 *   - FOLD: no output line holds more than 998 octets before its CRLF,
 *     no line a fold started is blank-only, and wrapping the output again
 *     changes nothing; CHECK on the output finds no long line;
 *   - CHECK: too_long iff some input line is longer than 998 octets, and
 *     the output is a prefix of the input.
 * Any mismatch aborts.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "smtpd/smtpd_wrap.h"

#define CHECK(c)                                                            \
	do {                                                                \
		if (!(c)) {                                                 \
			fprintf(stderr, "fuzz_wrap: %s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #c);                    \
			abort();                                            \
		}                                                           \
	} while (0)

#define LIMIT SMTP_TEXT_LINE_MAX

static void vec_add(struct buf *v, const void *p, size_t n)
{
	if (v->limit == 0)
		v->limit = SIZE_MAX;
	CHECK(buf_append(v, p, n) == 0);
}

struct result {
	struct buf out;
	unsigned long long breaks;
	bool too_long;
};

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

/* ---- the model -------------------------------------------------------- */

/* One header line (content L of m octets, CRLF after it if term). */
static void fold_model(const uint8_t *L, size_t m, bool term, struct result *r)
{
	struct buf line = {0};
	vec_add(&line, L, m);
	bool cont = m > 0 && is_wsp(L[0]), folded = false;
	size_t colon = SIZE_MAX;
	if (!cont) {
		const uint8_t *c = memchr(L, ':', m);
		if (c)
			colon = (size_t)(c - L);
	}
	while (line.len > LIMIT) {
		const uint8_t *b = line.data;
		size_t lo = SIZE_MAX;
		if (!cont) {
			lo = colon;
		} else {
			for (size_t i = 0; i < line.len; i++)
				if (!is_wsp(b[i])) {
					lo = i;
					break;
				}
		}
		/* The largest k with a blank at k, a visible octet after it,
		 * past lo, at most LIMIT - 2 (the next line starts at k, and
		 * what is decided on is the first LIMIT octets). */
		size_t k = 0;
		if (lo != SIZE_MAX)
			for (size_t j = LIMIT - 2; j > lo; j--)
				if (is_wsp(b[j]) && b[j + 1] > ' ') {
					k = j;
					break;
				}
		struct buf rest = {0};
		if (k) {
			vec_add(&r->out, b, k);
			vec_add(&rest, b + k, line.len - k);
		} else {
			vec_add(&r->out, b, LIMIT);
			vec_add(&rest, " ", 1);
			if (line.len > LIMIT)
				vec_add(&rest, b + LIMIT, line.len - LIMIT);
		}
		vec_add(&r->out, "\r\n", 2);
		r->breaks++;
		free(line.data);
		line = rest;
		cont = true;
		folded = true;
	}
	/* A continuation a fold started that ends (CRLF) holding only
	 * blanks is dropped: the field's trailing blanks. */
	bool blank = folded && term;
	for (size_t i = 0; blank && i < line.len; i++)
		blank = is_wsp(line.data[i]);
	if (!blank) {
		if (line.len)
			vec_add(&r->out, line.data, line.len);
		if (term)
			vec_add(&r->out, "\r\n", 2);
	}
	free(line.data);
}

static void model(const uint8_t *in, size_t n, bool check, struct result *r)
{
	memset(r, 0, sizeof *r);
	bool head = !check;
	size_t i = 0;
	while (i < n) {
		size_t e = i;
		while (e < n && !(in[e] == '\r' && e + 1 < n && in[e + 1] == '\n'))
			e++;
		bool term = e < n;
		size_t m = e - i, next = term ? e + 2 : n;
		if (check) {
			if (m > LIMIT) {
				r->out.len = 0;
				vec_add(&r->out, in, i + LIMIT);
				r->too_long = true;
				return;
			}
			vec_add(&r->out, in + i, next - i);
		} else if (head && term && m == 0) {
			vec_add(&r->out, "\r\n", 2);
			head = false;
		} else if (head) {
			fold_model(in + i, m, term, r);
		} else {
			const uint8_t *L = in + i;
			while (m > LIMIT) {
				vec_add(&r->out, L, LIMIT);
				vec_add(&r->out, "\r\n", 2);
				r->breaks++;
				L += LIMIT;
				m -= LIMIT;
			}
			vec_add(&r->out, L, m);
			if (term)
				vec_add(&r->out, "\r\n", 2);
		}
		i = next;
	}
}

/* ---- the streaming limiter ---------------------------------------------- */

static void run(const uint8_t *in, size_t n, bool check, const size_t *cuts,
                size_t ncuts, struct result *r)
{
	struct smtpd_wrap w;
	memset(r, 0, sizeof *r);
	smtpd_wrap_init(&w, check ? SMTPD_WRAP_CHECK : SMTPD_WRAP_FOLD, emit_cb,
	                &r->out);
	static const uint8_t none[1];
	if (!in)
		in = none;
	size_t pos = 0;
	for (size_t k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		CHECK(smtpd_wrap_feed(&w, in + pos, to - pos) == 0);
		pos = to;
	}
	CHECK(smtpd_wrap_finish(&w) == 0);
	r->breaks = w.breaks;
	r->too_long = w.too_long;
}

static void same(const struct result *a, const struct result *b)
{
	CHECK(a->out.len == b->out.len);
	CHECK(a->out.len == 0 || !memcmp(a->out.data, b->out.data, a->out.len));
	CHECK(a->breaks == b->breaks);
	CHECK(a->too_long == b->too_long);
}

/* Longest line (octets before CR LF) in p. */
static size_t longest(const uint8_t *p, size_t n)
{
	size_t best = 0, i = 0;
	while (i < n) {
		size_t e = i;
		while (e < n && !(p[e] == '\r' && e + 1 < n && p[e + 1] == '\n'))
			e++;
		if (e - i > best)
			best = e - i;
		i = e + 2;
	}
	return best;
}

/* Byte 1 and on, run-length expanded: 0xFF N C -> (N + 1) * 8 copies of
 * C (up to 2048), so a short input can hold lines around 998 octets.
 * At most EXPAND_MAX bytes (a few long lines; more only slows the
 * fuzzer down). */
#define EXPAND_MAX 8192
static void expand(const uint8_t *d, size_t n, struct buf *o)
{
	for (size_t i = 0; i < n && o->len < EXPAND_MAX; i++) {
		if (d[i] == 0xFF && i + 2 < n) {
			size_t k = ((size_t)d[i + 1] + 1) * 8;
			if (k > EXPAND_MAX - o->len)
				k = EXPAND_MAX - o->len;
			for (size_t j = 0; j < k; j++)
				vec_add(o, &d[i + 2], 1);
			i += 2;
		} else {
			vec_add(o, &d[i], 1);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool check = size > 0 && (data[0] & 1);
	struct buf inb = {0};
	if (size > 1)
		expand(data + 1, size - 1, &inb);
	const uint8_t *in = inb.data;
	size_t n = inb.len;

	struct result want, got;
	model(in, n, check, &want);

	run(in, n, check, NULL, 0, &got);
	same(&want, &got);
	free(got.out.data);

	size_t *cuts = calloc(n + 1, sizeof *cuts);
	CHECK(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	run(in, n, check, cuts, n ? n - 1 : 0, &got);
	same(&want, &got);
	free(got.out.data);

	size_t step = n <= 256 ? 1 : n / 16;
	for (size_t i = 0; i <= n; i += step) {
		cuts[0] = i;
		run(in, n, check, cuts, 1, &got);
		same(&want, &got);
		free(got.out.data);
	}
	free(cuts);

	if (check) {
		CHECK(want.too_long == (longest(in, n) > LIMIT));
		CHECK(want.out.len <= n);
		CHECK(want.out.len == 0 || !memcmp(want.out.data, in, want.out.len));
		CHECK(want.breaks == 0);
	} else {
		CHECK(!want.too_long);
		CHECK(longest(want.out.data, want.out.len) <= LIMIT);
		CHECK((want.breaks == 0) == (longest(in, n) <= LIMIT));
		/* Wrapped once is wrapped for good. */
		struct result again;
		run(want.out.data, want.out.len, false, NULL, 0, &again);
		CHECK(again.breaks == 0);
		CHECK(again.out.len == want.out.len &&
		      (!want.out.len ||
		       !memcmp(again.out.data, want.out.data, want.out.len)));
		free(again.out.data);
		run(want.out.data, want.out.len, true, NULL, 0, &again);
		CHECK(!again.too_long);
		free(again.out.data);
	}
	free(want.out.data);
	free(inb.data);
	return 0;
}
