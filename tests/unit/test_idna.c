/*
 * tests/unit/test_idna.c - common/idna.{c,h}: Punycode against RFC
 * 3492 §7.1's samples, and whole names to A-labels (the IANA test
 * domains, case folding, trailing dot) with every refusal: bad UTF-8,
 * overlong forms, surrogates, symbols and controls, empty labels, hyphens
 * at the ends or in positions 3-4, labels and names too long, a small
 * output buffer. Expected values cross-checked with Python's codecs.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/idna.h"

static void punycode_rfc3492_samples(void **state)
{
	(void)state;
	static const unsigned arabic[] = {
		0x0644, 0x064A, 0x0647, 0x0645, 0x0627, 0x0628, 0x062A, 0x0643,
		0x0644, 0x0645, 0x0648, 0x0634, 0x0639, 0x0631, 0x0628, 0x064A,
		0x061F};
	static const unsigned chinese[] = {
		0x4ED6, 0x4EEC, 0x4E3A, 0x4EC0, 0x4E48, 0x4E0D, 0x8BF4, 0x4E2D,
		0x6587};
	static const unsigned mixed[] = {
		0x33, 0x5E74, 0x42, 0x7D44, 0x91D1, 0x516B, 0x5148, 0x751F};
	char out[64];
	assert_int_equal(idna_punycode(arabic, 17, out, sizeof out), 0);
	assert_string_equal(out, "egbpdaj6bu4bxfgehfvwxn");
	assert_int_equal(idna_punycode(chinese, 9, out, sizeof out), 0);
	assert_string_equal(out, "ihqwcrb4cv8a8dqg056pqjye");
	assert_int_equal(idna_punycode(mixed, 8, out, sizeof out), 0);
	assert_string_equal(out, "3B-ww4c5e180e575a65lsy2b");
	/* The output bound: one byte short of the 24 + NUL needed. */
	assert_int_equal(idna_punycode(chinese, 9, out, 24), -ENAMETOOLONG);
	assert_int_equal(idna_punycode(chinese, 9, out, 25), 0);
}

struct name_case {
	const char *name;
	const char *in;
	int rc;
	const char *want;
};

static const struct name_case names[] = {
	{"plain ASCII", "example.com", 0, "example.com"},
	{"ASCII lower-cased", "MiXeD.Example.COM", 0, "mixed.example.com"},
	{"trailing dot dropped", "example.com.", 0, "example.com"},
	{"underscore", "_dmarc.example.com", -EILSEQ, NULL},
	{"an A-label passes", "xn--bcher-kva.example", 0,
	 "xn--bcher-kva.example"},
	{"latin", "b\xc3\xbc" "cher.example", 0, "xn--bcher-kva.example"},
	{"latin capitals folded", "B\xc3\x9c" "CHER.Example", 0,
	 "xn--bcher-kva.example"},
	{"latin-1 capitals", "\xc3\x80\xc3\x89\xc3\x8e\xc3\x95\xc3\x9c.fr", 0,
	 "xn--0casp2a9a.fr"},
	{"latin extended-A capitals", "\xc5\x81\xc3\x93" "D\xc5\xb9.pl", 0,
	 "xn--d-uga0v4h.pl"},
	{"cyrillic", "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xbc\xd0\xb5\xd1\x80."
	 "\xd0\xb8\xd1\x81\xd0\xbf\xd1\x8b\xd1\x82\xd0\xb0\xd0\xbd\xd0\xb8"
	 "\xd0\xb5", 0, "xn--e1afmkfd.xn--80akhbyknj4f"},
	{"greek", "\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae", 0,
	 "xn--jxalpdlp"},
	{"japanese", "\xe4\xbe\x8b\xe3\x81\x88.\xe3\x83\x86\xe3\x82\xb9"
	 "\xe3\x83\x88", 0, "xn--r8jz45g.xn--zckzah"},
	{"four-byte code point", "\xf0\x9f\x98\x80.example", 0,
	 "xn--e28h.example"},
	{"empty", "", -EINVAL, NULL},
	{"only a dot", ".", -EINVAL, NULL},
	{"empty label", "a..b", -EINVAL, NULL},
	{"leading dot", ".a", -EINVAL, NULL},
	{"hyphen first", "-a.example", -EINVAL, NULL},
	{"hyphen last", "a-.example", -EINVAL, NULL},
	{"U-label with -- at 3-4", "ab--\xc3\xbc.example", -EINVAL, NULL},
	{"U-label posing as an A-label", "xn--\xc3\xbc.example", -EINVAL, NULL},
	{"space", "a b.example", -EILSEQ, NULL},
	{"symbol", "a$b.example", -EILSEQ, NULL},
	{"NUL", "a\0b", -EILSEQ, NULL},
	{"C1 control", "a\xc2\x85" "b", -EILSEQ, NULL},
	{"no-break space", "a\xc2\xa0" "b", -EILSEQ, NULL},
	{"soft hyphen", "a\xc2\xad" "b", -EILSEQ, NULL},
	{"bare continuation byte", "a\x80", -EILSEQ, NULL},
	{"truncated sequence", "a\xc3", -EILSEQ, NULL},
	{"overlong slash", "a\xc0\xaf", -EILSEQ, NULL},
	{"overlong 3-byte", "a\xe0\x80\xaf", -EILSEQ, NULL},
	{"surrogate", "a\xed\xa0\x80", -EILSEQ, NULL},
	{"above U+10FFFF", "a\xf4\x90\x80\x80", -EILSEQ, NULL},
	{"label of 63", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	 0, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
	{"label of 64", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	 -ENAMETOOLONG, NULL},
	/* 58 ASCII + one U-label character: 4 + 58 + 1 + 3 > 63. */
	{"A-label over 63", "\xc3\xbc" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	 -ENAMETOOLONG, NULL},
};

static void names_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		const struct name_case *c = &names[i];
		char out[IDNA_NAME_MAX + 1];
		size_t n = strcmp(c->name, "NUL") == 0 ? 3 : strlen(c->in);
		int r = idna_to_ascii(c->in, n, out, sizeof out);
		if (r != c->rc)
			fail_msg("%s: got %d (%s), want %d", c->name, r,
			         r == 0 ? out : "", c->rc);
		if (c->want && strcmp(out, c->want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", c->name, out,
			         c->want);
	}
}

static void name_length(void **state)
{
	(void)state;
	/* 4 labels of 62 + 3 dots = 251; one more "a." makes 253: fits;
	 * another makes 255: too long. */
	char in[300], out[300];
	size_t o = 0;
	for (int l = 0; l < 4; l++) {
		memset(in + o, 'a', 62);
		o += 62;
		in[o++] = '.';
	}
	o--;                       /* 251 */
	memcpy(in + o, ".a", 2);   /* 253 */
	o += 2;
	assert_int_equal(idna_to_ascii(in, o, out, sizeof out), 0);
	assert_int_equal(strlen(out), 253);
	memcpy(in + o, ".a", 2);   /* 255 */
	assert_int_equal(idna_to_ascii(in, o + 2, out, sizeof out),
	                 -ENAMETOOLONG);
	/* The buffer bounds the output too. */
	assert_int_equal(idna_to_ascii("b\xc3\xbc" "cher.example", 15, out, 21),
	                 -ENAMETOOLONG);
	assert_int_equal(idna_to_ascii("b\xc3\xbc" "cher.example", 15, out, 22),
	                 0);
	assert_string_equal(out, "xn--bcher-kva.example");
	assert_true(idna_is_8bit("b\xc3\xbc", 3));
	assert_false(idna_is_8bit("example.com", 11));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(punycode_rfc3492_samples),
		cmocka_unit_test(names_table),
		cmocka_unit_test(name_length),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
