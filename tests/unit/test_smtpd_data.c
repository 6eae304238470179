/*
 * tests/unit/test_smtpd_data.c - The DATA reader, table-driven: (name,
 * input bytes, mode, policy, limit) -> (content, errors, end position).
 * Every case also runs split at every pair of points and byte by byte,
 * which must not change anything: SMTP smuggling lives at such seams.
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
#include "smtpd/smtpd_data.h"

#define S(x) x, (sizeof(x) - 1)
#define NOLIMIT UINT64_MAX

enum { DOT = SMTPD_DATA_DOT, RAW = SMTPD_DATA_RAW };
enum { REJECT = 0, NORMALIZE = 1 };
#define E_BARE SMTPD_DATA_E_BARE
#define E_NUL SMTPD_DATA_E_NUL
#define E_BIG SMTPD_DATA_E_TOO_BIG

struct dcase {
	const char *name;
	const char *in;
	size_t inlen;
	int mode;
	int normalize;
	uint64_t limit;
	const char *out;
	size_t outlen;
	unsigned errors;
	/* DOT: where the end marker ends (0 = no end in the input) */
	size_t end;
};

/* clang-format off */
static const struct dcase cases[] = {
	/* ---- plain messages and dot-stuffing ---- */
	{"simple", S("Subject: x\r\n\r\nbody\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("Subject: x\r\n\r\nbody\r\n"), 0, 23},
	{"empty message", S(".\r\n"), DOT, REJECT, NOLIMIT, S(""), 0, 3},
	{"empty message, commands after", S(".\r\nQUIT\r\n"), DOT, REJECT,
	 NOLIMIT, S(""), 0, 3},
	{"commands after the end", S("x\r\n.\r\nMAIL FROM:<a@b>\r\n"), DOT,
	 REJECT, NOLIMIT, S("x\r\n"), 0, 6},
	{"only an empty line", S("\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("\r\n"),
	 0, 5},
	{"empty line before the end", S("a\r\n\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("a\r\n\r\n"), 0, 8},
	{"two empty lines first", S("\r\n\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("\r\n\r\n"), 0, 7},
	{"stuffed dot line", S("..\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S(".\r\n"), 0, 7},
	{"stuffed lines", S("a\r\n..foo\r\n...\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("a\r\n.foo\r\n..\r\n"), 0, 18},
	{"unstuffed dot line loses its dot", S(".foo\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("foo\r\n"), 0, 9},
	{"dot then space", S("a\r\n. \r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a\r\n \r\n"), 0, 10},
	{"dot inside a line stays", S("a.b\r\nc.\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("a.b\r\nc.\r\n"), 0, 12},
	{"only the first end counts", S("a\r\n.\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("a\r\n"), 0, 6},
	{"no end yet", S("a\r\nb"), DOT, REJECT, NOLIMIT, S("a\r\nb"), 0, 0},
	{"end marker cut after CR", S("a\r\n.\r"), DOT, REJECT, NOLIMIT,
	 S("a\r\n"), 0, 0},
	{"CR held at the end of the input", S("a\r"), DOT, REJECT, NOLIMIT,
	 S("a"), 0, 0},
	{"8-bit and controls pass", S("\x01\x7f\xff\xc3\xa9\t\r\n.\r\n"), DOT,
	 REJECT, NOLIMIT, S("\x01\x7f\xff\xc3\xa9\t\r\n"), 0, 11},

	/* ---- smuggling: reject policy ---- */
	{"R \\n.\\n", S("a\n.\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 10},
	{"R \\n.\\n, no real end", S("a\n.\nb"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 0},
	{"R \\r.\\n", S("a\r.\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 10},
	{"R \\n.\\r\\n", S("a\n.\r\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 11},
	{"R \\r.\\r\\n", S("a\r.\r\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 11},
	{"R \\r.\\r\\n then real end", S("a\r.\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a"), E_BARE, 8},
	{"R \\r\\n.\\r + x", S("a\r\n.\rb\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a\r\n"), E_BARE, 11},
	{"R \\r\\n.\\r\\r\\n", S("a\r\n.\r\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a\r\n"), E_BARE, 10},
	{"R \\r\\n.\\n", S("a\r\n.\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a\r\n"), E_BARE, 11},
	{"R .\\n at the start", S(".\n.\r\n.\r\n"), DOT, REJECT, NOLIMIT, S(""),
	 E_BARE, 8},
	{"R \\r\\r\\n", S("a\r\r\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_BARE, 10},
	{"R \\r\\r\\n.\\r\\n ends", S("a\r\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a"), E_BARE, 7},
	{"R \\n\\r\\n.\\r\\n ends", S("a\n\r\n.\r\n"), DOT, REJECT, NOLIMIT,
	 S("a"), E_BARE, 7},
	{"R bare LF first", S("\n.\r\n.\r\n"), DOT, REJECT, NOLIMIT, S(""),
	 E_BARE, 7},
	{"R bare CR first", S("\r.\r\n.\r\n"), DOT, REJECT, NOLIMIT, S(""),
	 E_BARE, 7},
	{"R \\n..\\r\\n keeps both dots", S("a\n..\r\n.\r\n"), DOT, REJECT,
	 NOLIMIT, S("a"), E_BARE, 9},
	{"R \\r\\n.\\r at the end", S("a\r\n.\r\r"), DOT, REJECT, NOLIMIT,
	 S("a\r\n"), E_BARE, 0},

	/* ---- smuggling: normalize policy ---- */
	{"N \\n.\\n", S("a\n.\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n.\r\nb\r\n"), 0, 10},
	{"N \\n.\\n, no real end", S("a\n.\nb"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n.\r\nb"), 0, 0},
	{"N \\r.\\n", S("a\r.\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n.\r\nb\r\n"), 0, 10},
	{"N \\n.\\r\\n", S("a\n.\r\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n.\r\nb\r\n"), 0, 11},
	{"N \\r.\\r\\n", S("a\r.\r\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n.\r\nb\r\n"), 0, 11},
	{"N \\r.\\r\\n then real end", S("a\r.\r\n.\r\n"), DOT, NORMALIZE,
	 NOLIMIT, S("a\r\n.\r\n"), 0, 8},
	{"N \\r\\n.\\r + x", S("a\r\n.\rb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\nb\r\n"), 0, 11},
	{"N \\r\\n.\\r\\r\\n", S("a\r\n.\r\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\n\r\n"), 0, 10},
	{"N \\r\\n.\\n", S("a\r\n.\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\nb\r\n"), 0, 11},
	{"N .\\n at the start", S(".\n.\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("\r\n.\r\n"), 0, 8},
	{"N \\r\\r\\n", S("a\r\r\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\nb\r\n"), 0, 10},
	{"N \\r\\r\\n.\\r\\n ends", S("a\r\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\n"), 0, 7},
	{"N \\n\\r\\n.\\r\\n ends", S("a\n\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\n"), 0, 7},
	{"N bare LF first", S("\n.\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("\r\n.\r\n"), 0, 7},
	{"N bare CR first", S("\r.\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("\r\n.\r\n"), 0, 7},
	{"N \\n..\\r\\n keeps both dots", S("a\n..\r\n.\r\n"), DOT, NORMALIZE,
	 NOLIMIT, S("a\r\n..\r\n"), 0, 9},
	{"N \\n\\n", S("a\n\nb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\nb\r\n"), 0, 9},
	{"N \\r\\r", S("a\r\rb\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\nb\r\n"), 0, 9},
	{"N \\r\\n.\\r at the end", S("a\r\n.\r\r"), DOT, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\n"), 0, 0},

	/* ---- NUL ---- */
	{"NUL", S("a\0b\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"), E_NUL, 8},
	{"NUL, normalize", S("a\0b\r\n.\r\n"), DOT, NORMALIZE, NOLIMIT, S("a"),
	 E_NUL, 8},
	{"NUL after a dot", S(".\0\r\n.\r\n"), DOT, REJECT, NOLIMIT, S(""),
	 E_NUL, 7},
	{"NUL and bare LF", S("a\0\nb\r\n.\r\n"), DOT, REJECT, NOLIMIT, S("a"),
	 E_NUL | E_BARE, 9},

	/* ---- size ---- */
	{"size exactly at the limit", S("abc\r\n.\r\n"), DOT, REJECT, 5,
	 S("abc\r\n"), 0, 8},
	{"size one over the limit", S("abc\r\n.\r\n"), DOT, REJECT, 4,
	 S("abc\r"), E_BIG, 8},
	{"size far over the limit", S("abcdefgh\r\nij\r\n.\r\n"), DOT, REJECT,
	 3, S("abc"), E_BIG, 17},
	{"limit 0, empty message", S(".\r\n"), DOT, REJECT, 0, S(""), 0, 3},
	{"limit 0, one line", S("a\r\n.\r\n"), DOT, REJECT, 0, S(""), E_BIG, 6},
	{"stuffing dots do not count", S("..\r\n.\r\n"), DOT, REJECT, 3,
	 S(".\r\n"), 0, 7},
	{"normalized bytes count", S("a\nb\r\n.\r\n"), DOT, NORMALIZE, 6,
	 S("a\r\nb\r\n"), 0, 8},
	{"normalized bytes count, over", S("a\nb\r\n.\r\n"), DOT, NORMALIZE, 5,
	 S("a\r\nb\r"), E_BIG, 8},
	{"limit inside a normalized CRLF", S("a\nb\r\n.\r\n"), DOT, NORMALIZE,
	 2, S("a\r"), E_BIG, 8},
	{"too big and bare", S("abcdef\nb\r\n.\r\n"), DOT, REJECT, 3,
	 S("abc"), E_BIG | E_BARE, 13},

	/* ---- RAW (BDAT) ---- */
	{"RAW plain", S("abc\r\ndef\r\n"), RAW, REJECT, NOLIMIT,
	 S("abc\r\ndef\r\n"), 0, 0},
	{"RAW no end marker, no unstuffing", S("a\r\n.\r\n..\r\nb"), RAW,
	 REJECT, NOLIMIT, S("a\r\n.\r\n..\r\nb"), 0, 0},
	{"RAW empty", S(""), RAW, REJECT, NOLIMIT, S(""), 0, 0},
	{"RAW trailing CR, reject", S("a\r"), RAW, REJECT, NOLIMIT, S("a"),
	 E_BARE, 0},
	{"RAW trailing CR, normalize", S("a\r"), RAW, NORMALIZE, NOLIMIT,
	 S("a\r\n"), 0, 0},
	{"RAW only a CR", S("\r"), RAW, NORMALIZE, NOLIMIT, S("\r\n"), 0, 0},
	{"RAW bare LF, reject", S("a\nb"), RAW, REJECT, NOLIMIT, S("a"),
	 E_BARE, 0},
	{"RAW bare LF, normalize", S("a\nb"), RAW, NORMALIZE, NOLIMIT,
	 S("a\r\nb"), 0, 0},
	{"RAW \\r\\r\\n, normalize", S("a\r\r\n"), RAW, NORMALIZE, NOLIMIT,
	 S("a\r\n\r\n"), 0, 0},
	{"RAW \\r\\r\\n, reject", S("a\r\r\n"), RAW, REJECT, NOLIMIT, S("a"),
	 E_BARE, 0},
	{"RAW NUL", S("ab\0c"), RAW, NORMALIZE, NOLIMIT, S("ab"), E_NUL, 0},
	{"RAW limit", S("abc\r\n"), RAW, REJECT, 5, S("abc\r\n"), 0, 0},
	{"RAW over the limit", S("abc\r\n"), RAW, REJECT, 4, S("abc\r"), E_BIG,
	 0},
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
	assert_true(n > 0);  /* no empty emits */
	if (k->fail_after && k->calls >= k->fail_after)
		return -EIO;
	k->calls++;
	return buf_append(&k->out, p, n);
}

struct result {
	struct sink sink;
	unsigned errors;
	uint64_t size;
	size_t end;  /* 0 if not done */
};

/* Feeds in[0..n) in pieces ending at the given cut points (ascending). */
static void run(const struct dcase *c, const size_t *cuts, size_t ncuts,
                struct result *r)
{
	struct smtpd_data d;
	smtpd_data_init(&d, (enum smtpd_data_mode)c->mode, c->limit,
	                c->normalize);
	memset(r, 0, sizeof(*r));
	buf_init(&r->sink.out, 1 << 20);
	const uint8_t *in = (const uint8_t *)c->in;
	size_t pos = 0;
	bool done = false;
	for (size_t k = 0; k <= ncuts && !done; k++) {
		size_t stop = k < ncuts ? cuts[k] : c->inlen;
		size_t len = stop - pos;
		size_t used = smtpd_data_feed(&d, in + pos, len, &done,
		                              sink_emit, &r->sink);
		if (done) {
			assert_true(used <= len);
			r->end = pos + used;
		} else {
			assert_int_equal(used, len);
		}
		pos = stop;
	}
	if (c->mode == RAW)
		smtpd_data_finish(&d, sink_emit, &r->sink);
	r->errors = d.errors;
	r->size = d.size;
}

static void check(const struct dcase *c, struct result *r, const char *how)
{
	if (r->sink.out.len != c->outlen ||
	    (c->outlen && memcmp(r->sink.out.data, c->out, c->outlen)) ||
	    r->errors != c->errors || r->end != c->end) {
		fprintf(stderr,
		        "case '%s' (%s): out %zu bytes (want %zu), errors %#x "
		        "(want %#x), end %zu (want %zu)\n",
		        c->name, how, r->sink.out.len, c->outlen, r->errors,
		        c->errors, r->end, c->end);
		fail();
	}
	/* E_TOO_BIG is set exactly when size passes the limit. */
	assert_int_equal(!!(r->errors & E_BIG), r->size > c->limit);
	if (!r->errors && (c->mode == RAW || c->end))
		assert_int_equal(r->size, c->outlen);
	buf_free(&r->sink.out);
}

static void test_table(void **state)
{
	(void)state;
	for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
		const struct dcase *c = &cases[t];
		struct result r;
		size_t cuts[2];

		run(c, NULL, 0, &r);
		check(c, &r, "whole");

		for (size_t i = 0; i <= c->inlen; i++) {
			for (size_t j = i; j <= c->inlen; j++) {
				cuts[0] = i;
				cuts[1] = j;
				run(c, cuts, 2, &r);
				char how[64];
				snprintf(how, sizeof(how), "split %zu,%zu", i, j);
				check(c, &r, how);
			}
		}

		size_t bytes[256];
		assert_true(c->inlen < 256);
		for (size_t i = 0; i < c->inlen; i++)
			bytes[i] = i + 1;
		run(c, bytes, c->inlen, &r);
		check(c, &r, "byte by byte");
	}
}

/* Runs of plain content go out in one call, not per byte or per line. */
static void test_batched(void **state)
{
	(void)state;
	static const struct dcase c1 = {
		"batched", S("Subject: x\r\n\r\nline one\r\nline two\r\n.\r\n"),
		DOT, REJECT, NOLIMIT, S(""), 0, 0};
	struct result r;
	run(&c1, NULL, 0, &r);
	assert_int_equal(r.sink.calls, 1);
	assert_int_equal(r.sink.out.len, 34);
	buf_free(&r.sink.out);

	static const struct dcase c2 = {
		"stuffed", S("a\r\n..b\r\nc\r\n.\r\n"), DOT, REJECT, NOLIMIT,
		S(""), 0, 0};
	run(&c2, NULL, 0, &r);
	assert_int_equal(r.sink.calls, 2);  /* "a\r\n", ".b\r\nc\r\n" */
	assert_int_equal(r.sink.out.len, 10);
	buf_free(&r.sink.out);
}

/* After the end marker the reader consumes nothing more. */
static void test_after_done(void **state)
{
	(void)state;
	struct smtpd_data d;
	struct sink k = {BUF_INIT(1024), 0, 0};
	bool done = false;
	smtpd_data_init(&d, SMTPD_DATA_DOT, NOLIMIT, false);
	size_t n = smtpd_data_feed(&d, (const uint8_t *)"x\r\n.\r\nRSET\r\n",
	                           12, &done, sink_emit, &k);
	assert_true(done);
	assert_int_equal(n, 6);
	done = false;
	n = smtpd_data_feed(&d, (const uint8_t *)"RSET\r\n", 6, &done,
	                    sink_emit, &k);
	assert_true(done);
	assert_int_equal(n, 0);
	assert_int_equal(k.out.len, 3);
	assert_int_equal(smtpd_data_finish(&d, sink_emit, &k), 0);
	buf_free(&k.out);
}

/* An emit error stops the output, keeps the first error, and the reader
 * still finds the end of data. */
static void test_write_error(void **state)
{
	(void)state;
	struct smtpd_data d;
	struct sink k = {BUF_INIT(1024), 0, 1};
	bool done = false;
	smtpd_data_init(&d, SMTPD_DATA_DOT, NOLIMIT, false);
	const char *in1 = "a\r\n..b\r\n";
	const char *in2 = "c\r\n.\r\nQUIT\r\n";
	size_t n = smtpd_data_feed(&d, (const uint8_t *)in1, strlen(in1),
	                           &done, sink_emit, &k);
	assert_int_equal(n, strlen(in1));
	assert_false(done);
	assert_int_equal(d.errors, SMTPD_DATA_E_WRITE);
	assert_int_equal(d.werr, -EIO);
	n = smtpd_data_feed(&d, (const uint8_t *)in2, strlen(in2), &done,
	                    sink_emit, &k);
	assert_true(done);
	assert_int_equal(n, 6);
	assert_int_equal(d.errors, SMTPD_DATA_E_WRITE);
	assert_int_equal(d.size, 10);
	assert_int_equal(k.calls, 1);
	assert_memory_equal(k.out.data, "a\r\n", 3);
	buf_free(&k.out);
}

/* BDAT: chunks that end in CR, and a CR LF split across chunks. */
static void test_raw_chunks(void **state)
{
	(void)state;
	static const char *chunks[] = {"Subject: x\r", "\n\r", "\nbody\r",
	                               "\n", "last\r"};
	for (int norm = 0; norm <= 1; norm++) {
		struct smtpd_data d;
		struct sink k = {BUF_INIT(1024), 0, 0};
		smtpd_data_init(&d, SMTPD_DATA_RAW, NOLIMIT, norm);
		for (size_t i = 0; i < 5; i++) {
			bool done = true;
			size_t n = smtpd_data_feed(&d,
			                           (const uint8_t *)chunks[i],
			                           strlen(chunks[i]), &done,
			                           sink_emit, &k);
			assert_false(done);
			assert_int_equal(n, strlen(chunks[i]));
			assert_int_equal(d.errors, 0);
		}
		unsigned e = smtpd_data_finish(&d, sink_emit, &k);
		const char *want = norm ? "Subject: x\r\n\r\nbody\r\nlast\r\n"
		                        : "Subject: x\r\n\r\nbody\r\nlast";
		assert_int_equal(e, norm ? 0 : SMTPD_DATA_E_BARE);
		assert_int_equal(k.out.len, strlen(want));
		assert_memory_equal(k.out.data, want, strlen(want));
		buf_free(&k.out);
	}
}

static void test_state_names(void **state)
{
	(void)state;
	struct smtpd_data d;
	smtpd_data_init(&d, SMTPD_DATA_DOT, NOLIMIT, false);
	assert_string_equal(smtpd_data_state_name(&d), "BOL");
	smtpd_data_init(&d, SMTPD_DATA_RAW, NOLIMIT, false);
	assert_string_equal(smtpd_data_state_name(&d), "TEXT");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_batched),
		cmocka_unit_test(test_after_done),
		cmocka_unit_test(test_write_error),
		cmocka_unit_test(test_raw_chunks),
		cmocka_unit_test(test_state_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
