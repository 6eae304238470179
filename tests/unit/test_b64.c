/*
 * tests/unit/test_b64.c - Base64 (common/b64.c): the RFC 4648 §10 test
 * vectors padded and unpadded, the URL alphabet, and strict decoding
 * (misplaced or extra padding, foreign characters, non-canonical bits,
 * the output bound).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/b64.h"

static const struct { const char *raw, *padded, *bare; } vec[] = {
	{"", "", ""},
	{"f", "Zg==", "Zg"},
	{"fo", "Zm8=", "Zm8"},
	{"foo", "Zm9v", "Zm9v"},
	{"foob", "Zm9vYg==", "Zm9vYg"},
	{"fooba", "Zm9vYmE=", "Zm9vYmE"},
	{"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

static void test_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof vec / sizeof *vec; i++) {
		size_t n = strlen(vec[i].raw);
		char enc[32];
		uint8_t dec[32];
		assert_int_equal(b64_encode((const uint8_t *)vec[i].raw, n, B64_PAD,
		                            enc), strlen(vec[i].padded));
		assert_string_equal(enc, vec[i].padded);
		assert_int_equal(strlen(enc), B64_ENCODED_LEN(n, 1));
		assert_int_equal(b64_encode((const uint8_t *)vec[i].raw, n, 0, enc),
		                 strlen(vec[i].bare));
		assert_string_equal(enc, vec[i].bare);
		assert_int_equal(strlen(enc), B64_ENCODED_LEN(n, 0));
		assert_int_equal(b64_decode(vec[i].padded, strlen(vec[i].padded),
		                            B64_PAD, dec, sizeof dec), (long)n);
		assert_memory_equal(dec, vec[i].raw, n);
		assert_int_equal(b64_decode(vec[i].bare, strlen(vec[i].bare), 0,
		                            dec, sizeof dec), (long)n);
		assert_memory_equal(dec, vec[i].raw, n);
	}
}

static void test_url_alphabet(void **state)
{
	(void)state;
	const uint8_t raw[] = {0xfb, 0xff, 0xbf};
	char enc[8];
	uint8_t dec[8];
	b64_encode(raw, 3, 0, enc);
	assert_string_equal(enc, "+/+/");
	b64_encode(raw, 3, B64_URL, enc);
	assert_string_equal(enc, "-_-_");
	assert_int_equal(b64_decode("-_-_", 4, B64_URL, dec, sizeof dec), 3);
	assert_memory_equal(dec, raw, 3);
	assert_int_equal(b64_decode("-_-_", 4, 0, dec, sizeof dec), -1);
	assert_int_equal(b64_decode("+/+/", 4, B64_URL, dec, sizeof dec), -1);
}

static void test_strict(void **state)
{
	(void)state;
	static const struct { const char *s; unsigned flags; } bad[] = {
		{"Zg=", B64_PAD},       /* not a multiple of 4 */
		{"Zg", B64_PAD},
		{"Z===", B64_PAD},      /* three '=' */
		{"Zg=a", B64_PAD},      /* '=' not at the end */
		{"=Zg=", B64_PAD},
		{"Zm9v\r\n", B64_PAD},  /* white space */
		{"Zm 9", B64_PAD},
		{"Zg==", 0},            /* '=' in unpadded text */
		{"Z", 0},               /* 4k+1 characters */
		{"Zh", 0},              /* unused bits set: not canonical */
		{"Zm9", 0},
		{"Zm*v", 0},
	};
	uint8_t dec[16];
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		if (b64_decode(bad[i].s, strlen(bad[i].s), bad[i].flags, dec,
		               sizeof dec) != -1)
			fail_msg("'%s' (flags %u) was accepted", bad[i].s,
			         bad[i].flags);
	/* The output bound. */
	assert_int_equal(b64_decode("Zm9vYmFy", 8, B64_PAD, dec, 5), -1);
	assert_int_equal(b64_decode("Zm9vYmFy", 8, B64_PAD, dec, 6), 6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_url_alphabet),
		cmocka_unit_test(test_strict),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
