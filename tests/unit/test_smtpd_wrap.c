/*
 * tests/unit/test_smtpd_wrap.c - The line-length limiter (issue 8 §2),
 * table-driven: (name, mode, input) -> (output, breaks, too_long). Inputs
 * and outputs are written with "<N:c>" for N copies of the character c,
 * so a 998-octet line reads as "<998:x>". Every case also runs split at
 * every point and byte by byte: a CR at the limit is decided by the byte
 * after it, wherever the input was cut.
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
#include "smtpd/smtpd_wrap.h"

enum { FOLD = SMTPD_WRAP_FOLD, CHECK = SMTPD_WRAP_CHECK };

struct wcase {
	const char *name;
	int mode;
	const char *in;
	const char *out;
	unsigned breaks;
	bool too_long;
};

/* clang-format off */
static const struct wcase cases[] = {
	/* ---- nothing to do ---- */
	{"short lines", FOLD, "A: b\r\n c\r\n\r\nbody\r\n\r\n", 
	 "A: b\r\n c\r\n\r\nbody\r\n\r\n", 0, false},
	{"empty", FOLD, "", "", 0, false},
	{"header line of 998", FOLD, "S: <995:a>\r\n\r\n", "S: <995:a>\r\n\r\n",
	 0, false},
	{"body line of 998", FOLD, "\r\n<998:x>\r\n", "\r\n<998:x>\r\n", 0,
	 false},
	{"body: 997 octets, a lone CR, CR LF", FOLD, "\r\n<997:x>\r\r\n",
	 "\r\n<997:x>\r\r\n", 0, false},
	{"body: 998 octets, CR LF, twice", FOLD, "\r\n<998:x>\r\n<998:y>\r\n",
	 "\r\n<998:x>\r\n<998:y>\r\n", 0, false},
	{"header: 998 octets ending in a lone CR", FOLD, "S: <994:a>\r\r\n",
	 "S: <994:a>\r\r\n", 0, false},

	/* ---- body lines: CRLF after every 998 octets ---- */
	{"body line of 999", FOLD, "\r\n<999:x>\r\n", "\r\n<998:x>\r\nx\r\n", 1,
	 false},
	{"body line of 2500", FOLD, "A: b\r\n\r\n<2500:x>\r\nend\r\n",
	 "A: b\r\n\r\n<998:x>\r\n<998:x>\r\n<504:x>\r\nend\r\n", 2, false},
	{"body line of 1996", FOLD, "\r\n<1996:x>\r\n",
	 "\r\n<998:x>\r\n<998:x>\r\n", 1, false},
	{"body: a lone CR as the 999th octet", FOLD, "\r\n<998:x>\rz\r\n",
	 "\r\n<998:x>\r\n\rz\r\n", 1, false},
	{"body: a lone LF as the 999th octet", FOLD, "\r\n<998:x>\nz\r\n",
	 "\r\n<998:x>\r\n\nz\r\n", 1, false},
	{"body: CR at the limit, then CR LF", FOLD, "\r\n<998:x>\r\r\n",
	 "\r\n<998:x>\r\n\r\r\n", 1, false},
	{"body: unterminated last line", FOLD, "\r\n<1000:y>",
	 "\r\n<998:y>\r\nyy", 1, false},
	{"body: CR held at the very end", FOLD, "\r\n<998:x>\r",
	 "\r\n<998:x>\r\n\r", 1, false},
	{"body: a dot after the break starts a line", FOLD, "\r\n<998:x>.\r\n",
	 "\r\n<998:x>\r\n.\r\n", 1, false},
	{"body: blanks are not fold points", FOLD, "\r\n<990:x> <20:y>\r\n",
	 "\r\n<990:x> <7:y>\r\n<13:y>\r\n", 1, false},
	{"first body line, right after the empty line", FOLD, "\r\n<999: >\r\n",
	 "\r\n<998: >\r\n \r\n", 1, false},

	/* ---- header lines: folded at a blank ---- */
	{"fold at the blank", FOLD, "Subject: <500:a> <600:b>\r\n\r\nbody\r\n",
	 "Subject: <500:a>\r\n <600:b>\r\n\r\nbody\r\n", 1, false},
	{"fold at the last blank that fits", FOLD,
	 "X: <400:a> <400:b> <400:c>\r\n",
	 "X: <400:a> <400:b>\r\n <400:c>\r\n", 1, false},
	{"fold before a tab", FOLD, "X: <600:a>\t<600:b>\r\n",
	 "X: <600:a>\r\n\t<600:b>\r\n", 1, false},
	{"fold before a run of blanks keeps them", FOLD,
	 "X: <600:a>   <600:b>\r\n", "X: <600:a>  \r\n <600:b>\r\n", 1, false},
	{"fold a continuation line", FOLD, "X: a\r\n <500:b> <600:c>\r\n\r\n",
	 "X: a\r\n <500:b>\r\n <600:c>\r\n\r\n", 1, false},
	{"fold twice", FOLD, "X: <900:a> <900:b> <900:c>\r\n",
	 "X: <900:a>\r\n <900:b>\r\n <900:c>\r\n", 2, false},
	{"only the blank after the colon", FOLD, "X: <2000:a>\r\n\r\nb\r\n",
	 "X:\r\n <997:a>\r\n <997:a>\r\n <6:a>\r\n\r\nb\r\n", 3, false},
	{"a lone CR as the 999th octet", FOLD, "S: <995:a>\rb\r\n",
	 "S:\r\n <995:a>\rb\r\n", 1, false},

	/* ---- header lines: no fold point, CRLF SP inserted ---- */
	{"no blank at all", FOLD, "X:<2000:a>\r\n",
	 "X:<996:a>\r\n <997:a>\r\n <7:a>\r\n", 2, false},
	{"blanks only before the colon", FOLD, "Subject<1000: >: x\r\n",
	 "Subject<991: >\r\n <9: >: x\r\n", 1, false},
	{"no colon on the line", FOLD, "<500:a> <500:b>\r\n",
	 "<500:a> <497:b>\r\n <3:b>\r\n", 1, false},
	{"no visible octet after a blank", FOLD, "X: a<1500: >\r\n",
	 /* The one blank that can start a line is before the "a"; the rest
	  * is blanks, which no fold may leave alone on a line, so they are
	  * cut, and the last continuation line, blanks only, is dropped (the
	  * field's trailing blanks: a blank-only line ends the header
	  * section for some readers). */
	 "X:\r\n a<996: >\r\n", 2, false},
	{"forced break before a last blank", FOLD, "X:<996:a>\t\r\nY: b\r\n",
	 /* 998 octets, then a blank and the line end: CRLF SP goes in, and
	  * the continuation would hold SP HT only: dropped, Y: follows. */
	 "X:<996:a>\r\nY: b\r\n", 1, false},
	{"a blank-only continuation of the input is kept", FOLD,
	 "X: a\r\n \t\r\nY: b\r\n", "X: a\r\n \t\r\nY: b\r\n", 0, false},
	{"continuation of blanks only", FOLD, "X: a\r\n<1: ><1200: >b\r\n",
	 "X: a\r\n<998: >\r\n <203: >b\r\n", 1, false},
	{"long header then long body", FOLD, "S: <1000:a>\r\n\r\n<1000:b>\r\n",
	 "S:\r\n <997:a>\r\n <3:a>\r\n\r\n<998:b>\r\nbb\r\n", 3, false},
	{"unterminated header line", FOLD, "X:<1000:a>",
	 "X:<996:a>\r\n <4:a>", 1, false},
	{"unterminated header line ending in CR at the limit", FOLD,
	 "X:<996:a>\r", "X:<996:a>\r\n \r", 1, false},

	/* ---- reject: nothing changed, output stops at the long line ---- */
	{"check: fine", CHECK, "A: b\r\n\r\n<998:x>\r\n<997:x>\r\r\n",
	 "A: b\r\n\r\n<998:x>\r\n<997:x>\r\r\n", 0, false},
	{"check: body line of 999", CHECK, "A: b\r\n\r\n<999:x>\r\nmore\r\n",
	 "A: b\r\n\r\n<998:x>", 0, true},
	{"check: header line of 999", CHECK, "S: <996:a>\r\n\r\nb\r\n",
	 "S: <995:a>", 0, true},
	{"check: CR at the limit, then not LF", CHECK, "<998:x>\r\r\n",
	 "<998:x>", 0, true},
	{"check: CR at the limit at the very end", CHECK, "<998:x>\r",
	 "<998:x>", 0, true},
	{"check: CR at the limit, then LF", CHECK, "<998:x>\r\n<998:x>",
	 "<998:x>\r\n<998:x>", 0, false},
};
/* clang-format on */

/* "<N:c>" -> N copies of c; everything else as it is. */
static void expand(const char *s, struct buf *b)
{
	buf_reset(b);
	while (*s) {
		char c;
		unsigned n;
		int used;
		if (*s == '<' && sscanf(s, "<%u:%c>%n", &n, &c, &used) == 2 &&
		    used > 0) {
			for (unsigned i = 0; i < n; i++)
				assert_int_equal(buf_append(b, &c, 1), 0);
			s += used;
		} else {
			assert_int_equal(buf_append(b, s, 1), 0);
			s++;
		}
	}
}

struct sink {
	struct buf out;
	unsigned calls, fail_after;
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

static void run(const struct wcase *c, const struct buf *in,
                const struct buf *want, size_t cut, bool bytewise)
{
	struct smtpd_wrap w;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_wrap_init(&w, (enum smtpd_wrap_mode)c->mode, sink_emit, &k);
	if (bytewise) {
		for (size_t i = 0; i < in->len; i++)
			assert_int_equal(smtpd_wrap_feed(&w, in->data + i, 1), 0);
	} else {
		assert_int_equal(smtpd_wrap_feed(&w, in->data, cut), 0);
		assert_int_equal(smtpd_wrap_feed(&w, in->data + cut,
		                                 in->len - cut), 0);
	}
	assert_int_equal(smtpd_wrap_finish(&w), 0);
	if (k.out.len != want->len ||
	    (want->len && memcmp(k.out.data, want->data, want->len)) ||
	    w.breaks != c->breaks || w.too_long != c->too_long) {
		size_t d = 0;
		while (d < k.out.len && d < want->len &&
		       k.out.data[d] == want->data[d])
			d++;
		fail_msg("case '%s' (%s %zu): %zu bytes (want %zu), first "
		         "difference at %zu; breaks %llu (want %u), too_long %d",
		         c->name, bytewise ? "bytewise" : "cut", cut, k.out.len,
		         want->len, d, w.breaks, c->breaks, w.too_long);
	}
	buf_free(&k.out);
}

static void test_table(void **state)
{
	(void)state;
	struct buf in = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20);
	for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
		const struct wcase *c = &cases[t];
		expand(c->in, &in);
		expand(c->out, &want);
		for (size_t cut = 0; cut <= in.len; cut++)
			run(c, &in, &want, cut, false);
		run(c, &in, &want, 0, true);
	}
	buf_free(&in);
	buf_free(&want);
}

/* In the body each feed goes out in one emit call, without copying; a
 * break costs two more. */
static void test_body_zero_copy(void **state)
{
	(void)state;
	struct smtpd_wrap w;
	struct sink k = {BUF_INIT(1 << 20), 0, 0};
	smtpd_wrap_init(&w, SMTPD_WRAP_FOLD, sink_emit, &k);
	assert_int_equal(smtpd_wrap_feed(&w, (const uint8_t *)"A: b\r\n\r\n", 8),
	                 0);
	assert_int_equal(k.calls, 2);   /* the header line, the empty line */
	k.calls = 0;
	static uint8_t body[64 * 1024];
	for (size_t i = 0; i < sizeof body; i++)
		body[i] = i % 80 == 78 ? '\r' : i % 80 == 79 ? '\n' : 'b';
	assert_int_equal(smtpd_wrap_feed(&w, body, sizeof body), 0);
	assert_int_equal(k.calls, 1);
	memset(body, 'x', 1000);
	k.calls = 0;
	assert_int_equal(smtpd_wrap_feed(&w, body, 1000), 0);
	assert_int_equal(k.calls, 3);   /* up to the limit, CRLF, the rest */
	assert_int_equal(smtpd_wrap_finish(&w), 0);
	assert_int_equal(w.breaks, 1);
	buf_free(&k.out);
}

/* The first emit error sticks: returned by every later call, nothing
 * more is emitted. */
static void test_write_error(void **state)
{
	(void)state;
	for (int mode = 0; mode < 2; mode++) {
		struct smtpd_wrap w;
		struct sink k = {BUF_INIT(1 << 20), 0, 1};
		smtpd_wrap_init(&w, mode ? SMTPD_WRAP_CHECK : SMTPD_WRAP_FOLD,
		                sink_emit, &k);
		/* FOLD emits header lines one by one: the second fails. CHECK
		 * emits the feed in one run: the next feed's fails. */
		const char *in = "A: b\r\nC: d\r\n\r\nbody\r\n";
		assert_int_equal(smtpd_wrap_feed(&w, (const uint8_t *)in,
		                                 strlen(in)), mode ? 0 : -EIO);
		assert_int_equal(smtpd_wrap_feed(&w, (const uint8_t *)"x\r\n", 3),
		                 -EIO);
		assert_int_equal(smtpd_wrap_feed(&w, (const uint8_t *)"y\r\n", 3),
		                 -EIO);
		assert_int_equal(smtpd_wrap_finish(&w), -EIO);
		assert_int_equal(k.calls, 1);
		assert_string_equal(smtpd_wrap_state_name(&w), "STOP");
		buf_free(&k.out);
	}
}

/* The limit itself: a header line of 998 octets whatever its shape stays,
 * one of 999 never does, and no output line is over 998 octets. */
static void test_limit_sweep(void **state)
{
	(void)state;
	struct buf in = BUF_INIT(1 << 20);
	for (size_t len = 990; len <= 1010; len++) {
		for (int shape = 0; shape < 3; shape++) {
			buf_reset(&in);
			buf_appends(&in, "X:");
			for (size_t i = 2; i < len; i++) {
				char c = shape == 0 ? 'a' : shape == 1 ?
				         (i % 7 ? 'a' : ' ') : (i % 2 ? ' ' : 'b');
				buf_append(&in, &c, 1);
			}
			buf_appends(&in, "\r\n\r\n");
			struct smtpd_wrap w;
			struct sink k = {BUF_INIT(1 << 20), 0, 0};
			smtpd_wrap_init(&w, SMTPD_WRAP_FOLD, sink_emit, &k);
			assert_int_equal(smtpd_wrap_feed(&w, in.data, in.len), 0);
			assert_int_equal(smtpd_wrap_finish(&w), 0);
			assert_int_equal(w.breaks > 0, len > 998);
			size_t col = 0;
			for (size_t i = 0; i < k.out.len; i++) {
				if (k.out.data[i] == '\n') {
					assert_true(col <= 999);   /* + its CR */
					col = 0;
				} else {
					col++;
				}
			}
			buf_free(&k.out);
		}
	}
	buf_free(&in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_body_zero_copy),
		cmocka_unit_test(test_write_error),
		cmocka_unit_test(test_limit_sweep),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
