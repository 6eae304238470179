/*
 * tests/fuzz/fuzz_data.c - libFuzzer harness for the DATA reader
 * (smtpd/smtpd_data.c). Input: byte 0 = flags (bit 0 RAW mode, bit 1
 * normalize), byte 1 = limit (bit 7 set: none; else 0..127 bytes), the
 * rest = the client's bytes.
 *
 * Checks, on every input:
 *   - a reference model (whole-input, line-based, written differently from
 *     the streaming machine) gives the same content, errors, size and end
 *     position;
 *   - fed whole, byte by byte, and split at every point (or at 64 points
 *     for long inputs), the reader gives the same result;
 *   - the content never holds a NUL, a bare LF, or a CR not followed by LF
 *     (but for the last byte when the size limit cut it), and never more
 *     than `limit` bytes;
 *   - DOT mode, ended without error: the content is empty or ends in CRLF,
 *     and dot-stuffed again and read again it comes back the same;
 *   - an emit that fails leaves a prefix of the content and the same end.
 * Any mismatch aborts.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "smtpd/smtpd_data.h"

#define CHECK(c)                                                            \
	do {                                                                \
		if (!(c)) {                                                 \
			fprintf(stderr, "fuzz_data: %s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #c);                    \
			abort();                                            \
		}                                                           \
	} while (0)

/* Output collected in the project's buffer (common/buf.h), unlimited: a
 * zeroed one gets its limit on first use. */
static void vec_add(struct buf *v, const void *p, size_t n)
{
	if (v->limit == 0)
		v->limit = SIZE_MAX;
	CHECK(buf_append(v, p, n) == 0);
}

struct result {
	struct buf out;
	unsigned errors;
	uint64_t size;
	bool done;
	size_t end;
	unsigned calls, fail_after;
};

static int emit_cb(void *ctx, const uint8_t *p, size_t n)
{
	struct result *r = ctx;
	CHECK(n > 0);
	if (r->fail_after && r->calls >= r->fail_after)
		return -5;
	r->calls++;
	vec_add(&r->out, p, n);
	return 0;
}

/* The reference: whole input, explicit lines. A line start is genuine only
 * at the start and after CR LF; a CR LF is always a line end; the data
 * ends at the first "." CR LF on a genuine line start. */
static void model(const uint8_t *in, size_t n, bool raw, bool norm,
                  uint64_t limit, struct result *r)
{
	memset(r, 0, sizeof(*r));
	size_t region = n;
	if (!raw) {
		for (size_t p = 0; p + 3 <= n; p++) {
			if (in[p] == '.' && in[p + 1] == '\r' &&
			    in[p + 2] == '\n' &&
			    (p == 0 || (p >= 2 && in[p - 2] == '\r' &&
			                in[p - 1] == '\n'))) {
				r->done = true;
				r->end = p + 3;
				region = p;
				break;
			}
		}
	}
	struct buf all = {0};
	size_t stop = SIZE_MAX;  /* content position of the first error */
	bool genuine = !raw;
	for (size_t i = 0; i < region;) {
		uint8_t c = in[i];
		if (genuine && c == '.') {
			i++;  /* unstuffed (an end marker is not in region) */
			genuine = false;
			continue;
		}
		genuine = false;
		if (c == '\r' && i + 1 < region && in[i + 1] == '\n') {
			vec_add(&all, "\r\n", 2);
			i += 2;
			genuine = !raw;
			continue;
		}
		if (c == '\r' && i + 1 == region && !raw && !r->done)
			break;  /* undecided CR at the end of DOT input */
		if (c == '\r' || c == '\n') {
			if (!norm) {
				r->errors |= SMTPD_DATA_E_BARE;
				if (stop == SIZE_MAX)
					stop = all.len;
			}
			vec_add(&all, "\r\n", 2);
			i++;
			continue;
		}
		if (c == 0) {
			r->errors |= SMTPD_DATA_E_NUL;
			if (stop == SIZE_MAX)
				stop = all.len;
		}
		vec_add(&all, &c, 1);
		i++;
	}
	r->size = all.len;
	if (all.len > limit) {
		r->errors |= SMTPD_DATA_E_TOO_BIG;
		if (limit < stop)
			stop = (size_t)limit;
	}
	if (stop > all.len)
		stop = all.len;
	if (stop)
		vec_add(&r->out, all.data, stop);
	free(all.data);
}

/* Feeds in pieces ending at cuts[] (ascending), then the rest. */
static void run(const uint8_t *in, size_t n, bool raw, bool norm,
                uint64_t limit, const size_t *cuts, size_t ncuts,
                unsigned fail_after, struct result *r)
{
	struct smtpd_data d;
	memset(r, 0, sizeof(*r));
	r->fail_after = fail_after;
	smtpd_data_init(&d, raw ? SMTPD_DATA_RAW : SMTPD_DATA_DOT, limit, norm);
	size_t pos = 0;
	for (size_t k = 0; k <= ncuts && !r->done; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t used = smtpd_data_feed(&d, in + pos, to - pos, &r->done,
		                              emit_cb, r);
		CHECK(used <= to - pos);
		if (r->done)
			r->end = pos + used;
		else
			CHECK(used == to - pos);
		pos = to;
	}
	CHECK(!(raw && r->done));
	if (raw)
		smtpd_data_finish(&d, emit_cb, r);
	r->errors = d.errors;
	r->size = d.size;
	if (d.errors & SMTPD_DATA_E_WRITE)
		CHECK(d.werr == -5);
}

static void same(const struct result *a, const struct result *b)
{
	CHECK(a->out.len == b->out.len);
	CHECK(a->out.len == 0 || !memcmp(a->out.data, b->out.data, a->out.len));
	CHECK(a->errors == b->errors);
	CHECK(a->size == b->size);
	CHECK(a->done == b->done);
	CHECK(a->end == b->end);
}

static void check_content(const struct result *r, uint64_t limit)
{
	const uint8_t *p = r->out.data;
	size_t len = r->out.len;
	CHECK(len <= limit);
	CHECK(r->size >= len);
	for (size_t i = 0; i < len; i++) {
		CHECK(p[i] != 0);
		if (p[i] == '\n')
			CHECK(i > 0 && p[i - 1] == '\r');
		if (p[i] == '\r' && !(i + 1 < len && p[i + 1] == '\n'))
			CHECK(i + 1 == len &&
			      (r->errors & SMTPD_DATA_E_TOO_BIG));
	}
}

/* DOT mode: stuff the content again and read it back. */
static void check_roundtrip(const struct result *r)
{
	const uint8_t *p = r->out.data;
	size_t len = r->out.len;
	CHECK(len == 0 || (len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n'));
	struct buf wire = {0};
	bool bol = true;
	for (size_t i = 0; i < len; i++) {
		if (bol && p[i] == '.')
			vec_add(&wire, ".", 1);
		vec_add(&wire, &p[i], 1);
		bol = p[i] == '\n';
	}
	vec_add(&wire, ".\r\n", 3);
	struct result back;
	run(wire.data, wire.len, false, false, UINT64_MAX, NULL, 0, 0, &back);
	CHECK(back.done && back.end == wire.len && back.errors == 0);
	CHECK(back.out.len == len && (len == 0 || !memcmp(back.out.data, p, len)));
	free(back.out.data);
	free(wire.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool raw = size > 0 && (data[0] & 1);
	bool norm = size > 0 && (data[0] & 2);
	uint64_t limit = UINT64_MAX;
	if (size > 1 && !(data[1] & 0x80))
		limit = data[1];
	const uint8_t *in = size > 2 ? data + 2 : data + size;
	size_t n = size > 2 ? size - 2 : 0;

	struct result want, got;
	model(in, n, raw, norm, limit, &want);

	run(in, n, raw, norm, limit, NULL, 0, 0, &got);
	same(&want, &got);
	check_content(&got, limit);
	if (!raw && got.done && got.errors == 0)
		check_roundtrip(&got);
	free(got.out.data);

	/* Byte by byte. */
	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	CHECK(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	run(in, n, raw, norm, limit, cuts, n ? n - 1 : 0, 0, &got);
	same(&want, &got);
	free(got.out.data);

	/* Split in two at every point (64 spread points if long), and in
	 * three around each. */
	size_t step = n <= 256 ? 1 : n / 64;
	for (size_t i = 0; i <= n; i += step) {
		cuts[0] = i;
		run(in, n, raw, norm, limit, cuts, 1, 0, &got);
		same(&want, &got);
		free(got.out.data);
		if (i + 1 <= n) {
			cuts[1] = i + 1;
			run(in, n, raw, norm, limit, cuts, 2, 0, &got);
			same(&want, &got);
			free(got.out.data);
		}
	}
	free(cuts);

	/* A failing emit: a prefix of the content, the same end. */
	run(in, n, raw, norm, limit, NULL, 0, 1, &got);
	CHECK(got.done == want.done && got.end == want.end);
	CHECK(got.size == want.size);
	CHECK(got.out.len <= want.out.len);
	CHECK(got.out.len == 0 || !memcmp(got.out.data, want.out.data, got.out.len));
	CHECK((got.errors & ~SMTPD_DATA_E_WRITE) == want.errors);
	free(got.out.data);

	free(want.out.data);
	return 0;
}
