/*
 * tests/unit/test_addr.c - Table-driven tests of common/addr.c: path
 * parsing (RFC 5321 §4.1.2, RFC 6531 UTF-8), addr_domain, ESMTP parameter
 * splitting and RFC 3461 xtext. Every input is copied into a buffer of
 * exactly its length, so a read past inlen shows up under ASan.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include <cmocka.h>

#include "common/addr.h"

#define NUL_OK ADDR_ALLOW_NULL
#define UTF8 ADDR_ALLOW_UTF8
#define BARE ADDR_ALLOW_BARE
#define ALL (-1)            /* used: the whole input */
#define BYTES(s) s, sizeof(s) - 1

/* ---- addr_parse_path --------------------------------------------------- */

struct path_case {
	const char *name;
	const char *in;
	size_t len;        /* 0: strlen(in) */
	unsigned flags;
	int rc;
	const char *out;   /* expected output when rc == 0 */
	long used;         /* expected *used when rc == 0; ALL: strlen */
};

static const struct path_case path_cases[] = {
	/* plain forms */
	{"simple", "<user@example.com>", 0, 0, 0, "user@example.com", ALL},
	{"case kept", "<User.Name+tag@Sub.Example.COM>", 0, 0, 0,
	 "User.Name+tag@Sub.Example.COM", ALL},
	{"all atext", "<a!#$%&'*+-/=?^_`{|}~z@x>", 0, 0, 0,
	 "a!#$%&'*+-/=?^_`{|}~z@x", ALL},
	{"hyphen and digits", "<a@b-c.d1.9z>", 0, 0, 0, "a@b-c.d1.9z", ALL},
	{"numeric labels", "<a@1.2.3.4>", 0, 0, 0, "a@1.2.3.4", ALL},
	{"single label", "<a@localhost>", 0, 0, 0, "a@localhost", ALL},
	{"params follow", "<user@example.com> SIZE=100", 0, 0, 0,
	 "user@example.com", 18},
	{"spaces follow", "<a@b>   ", 0, 0, 0, "a@b", 5},
	{"inlen cuts", "<a@b>xyz", 5, 0, 0, "a@b", 5},

	/* null path */
	{"null allowed", "<>", 0, NUL_OK, 0, "", 2},
	{"null with params", "<> BODY=8BITMIME", 0, NUL_OK, 0, "", 2},
	{"null refused", "<>", 0, 0, -EINVAL, NULL, 0},
	{"null trailing", "<>x", 0, NUL_OK, -EINVAL, NULL, 0},

	/* quoted local parts: kept as received */
	{"quoted", "<\"quoted local\"@example.com>", 0, 0, 0,
	 "\"quoted local\"@example.com", ALL},
	{"quoted escapes", "<\"a\\\"b\\\\c\"@x.org>", 0, 0, 0,
	 "\"a\\\"b\\\\c\"@x.org", ALL},
	{"quoted specials", "<\"a@b,c:d<e>\"@x>", 0, 0, 0, "\"a@b,c:d<e>\"@x",
	 ALL},
	{"quoted empty", "<\"\"@x.org>", 0, 0, 0, "\"\"@x.org", ALL},
	{"quoted unterminated", "<\"abc@x>", 0, 0, -EINVAL, NULL, 0},
	{"quoted then junk", "<\"a\"b@x>", 0, 0, -EINVAL, NULL, 0},
	{"quoted escaped ctl", "<\"a\\\x01\"@x>", 0, 0, -EILSEQ, NULL, 0},
	{"quoted raw ctl", "<\"a\tb\"@x>", 0, 0, -EILSEQ, NULL, 0},
	{"quoted backslash at end", "<\"a\\", 0, 0, -EINVAL, NULL, 0},

	/* source routes: checked, dropped */
	{"route one", "<@relay1:user@example.com>", 0, 0, 0, "user@example.com",
	 ALL},
	{"route two", "<@relay1,@relay2.example:user@example.com>", 0, 0, 0,
	 "user@example.com", ALL},
	{"route empty domain", "<@:a@b>", 0, 0, -EINVAL, NULL, 0},
	{"route no at", "<@a,b:c@d>", 0, 0, -EINVAL, NULL, 0},
	{"route no mailbox", "<@a:>", 0, 0, -EINVAL, NULL, 0},
	{"route no colon", "<@a a@b>", 0, 0, -EINVAL, NULL, 0},
	{"route postmaster", "<@a:postmaster>", 0, 0, -EINVAL, NULL, 0},

	/* address literals */
	{"ipv4 literal", "<user@[192.0.2.1]>", 0, 0, 0, "user@[192.0.2.1]", ALL},
	{"ipv6 literal", "<user@[IPv6:2001:db8::1]>", 0, 0, 0,
	 "user@[IPv6:2001:db8::1]", ALL},
	{"ipv6 tag case", "<u@[ipv6:::1]>", 0, 0, 0, "u@[ipv6:::1]", ALL},
	{"ipv4 short", "<a@[1.2.3]>", 0, 0, -EINVAL, NULL, 0},
	{"ipv4 big", "<a@[300.1.1.1]>", 0, 0, -EINVAL, NULL, 0},
	{"literal open", "<a@[1.2.3.4>", 0, 0, -EINVAL, NULL, 0},
	{"literal empty", "<a@[]>", 0, 0, -EINVAL, NULL, 0},
	{"ipv6 bad", "<a@[IPv6:zz::1]>", 0, 0, -EINVAL, NULL, 0},
	{"ipv6 v4 inside", "<a@[IPv6:1.2.3.4]>", 0, 0, -EINVAL, NULL, 0},
	{"ipv6 untagged", "<a@[::1]>", 0, 0, -EINVAL, NULL, 0},
	{"general literal", "<a@[x400:foo]>", 0, 0, -EINVAL, NULL, 0},
	{"literal utf8", "<a@[\xc3\xa4]>", 0, UTF8, -EINVAL, NULL, 0},
	{"literal too long",
	 "<a@[IPv6:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]>", 0,
	 0, -EINVAL, NULL, 0},

	/* postmaster */
	{"postmaster", "<postmaster>", 0, 0, 0, "postmaster", ALL},
	{"postmaster case", "<PostMaster>", 0, 0, 0, "PostMaster", ALL},
	{"postmaster domain", "<postmaster@x.org>", 0, 0, 0, "postmaster@x.org",
	 ALL},
	{"other no domain", "<user>", 0, 0, -EINVAL, NULL, 0},
	{"postmasters", "<postmasters>", 0, 0, -EINVAL, NULL, 0},
	{"quoted postmaster", "<\"postmaster\">", 0, 0, -EINVAL, NULL, 0},

	/* bare paths */
	{"bare refused", "user@example.com", 0, 0, -EINVAL, NULL, 0},
	{"bare", "user@example.com", 0, BARE, 0, "user@example.com", ALL},
	{"bare params", "user@example.com SIZE=1", 0, BARE, 0,
	 "user@example.com", 16},
	{"bare postmaster", "postmaster", 0, BARE, 0, "postmaster", ALL},
	{"bare junk", "a@b>", 0, BARE, -EINVAL, NULL, 0},
	{"bare empty", "", 0, BARE, -EINVAL, NULL, 0},
	{"bare space", " a@b", 0, BARE, -EINVAL, NULL, 0},
	{"bare bracket still", "<a@b>", 0, BARE, 0, "a@b", ALL},
	{"bare unclosed", "<a@b", 0, BARE, -EINVAL, NULL, 0},

	/* syntax errors */
	{"empty", "", 0, 0, -EINVAL, NULL, 0},
	{"only open", "<", 0, NUL_OK, -EINVAL, NULL, 0},
	{"missing close", "<user@example.com", 0, 0, -EINVAL, NULL, 0},
	{"inlen before close", "<a@b>", 4, 0, -EINVAL, NULL, 0},
	{"no local", "<@example.com>", 0, 0, -EINVAL, NULL, 0},
	{"double dot", "<a..b@x>", 0, 0, -EINVAL, NULL, 0},
	{"leading dot", "<.a@x>", 0, 0, -EINVAL, NULL, 0},
	{"trailing dot", "<a.@x>", 0, 0, -EINVAL, NULL, 0},
	{"empty domain", "<a@>", 0, 0, -EINVAL, NULL, 0},
	{"domain trailing dot", "<a@b.>", 0, 0, -EINVAL, NULL, 0},
	{"domain leading dot", "<a@.b>", 0, 0, -EINVAL, NULL, 0},
	{"domain leading hyphen", "<a@-b>", 0, 0, -EINVAL, NULL, 0},
	{"domain trailing hyphen", "<a@b->", 0, 0, -EINVAL, NULL, 0},
	{"domain underscore", "<a@b_c>", 0, 0, -EINVAL, NULL, 0},
	{"two at", "<a@b@c>", 0, 0, -EINVAL, NULL, 0},
	{"space in local", "<a b@c>", 0, 0, -EINVAL, NULL, 0},
	{"space before close", "<a@b >", 0, 0, -EINVAL, NULL, 0},
	{"trailing garbage", "<a@b>x", 0, 0, -EINVAL, NULL, 0},
	{"double close", "<a@b>>", 0, 0, -EINVAL, NULL, 0},
	{"nested", "<<a@b>>", 0, 0, -EINVAL, NULL, 0},
	{"comment", "<a(c)@b>", 0, 0, -EINVAL, NULL, 0},

	/* control characters and NUL */
	{"ctl in local", "<a\x01@x>", 0, 0, -EILSEQ, NULL, 0},
	{"nul in local", BYTES("<a\0b@x>"), 0, -EILSEQ, NULL, 0},
	{"nul in domain", BYTES("<a@b\0c>"), 0, -EILSEQ, NULL, 0},
	{"tab in domain", "<a@b\tc>", 0, 0, -EILSEQ, NULL, 0},
	{"del in local", "<a\x7f@x>", 0, 0, -EILSEQ, NULL, 0},
	{"cr after path", "<a@b>\r", 0, 0, -EILSEQ, NULL, 0},

	/* 8-bit: RFC 6531 */
	{"utf8 local refused", "<j\xc3\xb6rg@example.com>", 0, 0, -EILSEQ, NULL,
	 0},
	{"utf8 local", "<j\xc3\xb6rg@example.com>", 0, UTF8, 0,
	 "j\xc3\xb6rg@example.com", ALL},
	{"utf8 domain refused", "<u@b\xc3\xbc" "cher.de>", 0, 0, -EILSEQ, NULL,
	 0},
	{"utf8 domain", "<u@b\xc3\xbc" "cher.de>", 0, UTF8, 0,
	 "u@b\xc3\xbc" "cher.de", ALL},
	{"utf8 label start", "<u@\xc3\xbc.de>", 0, UTF8, 0, "u@\xc3\xbc.de",
	 ALL},
	{"utf8 quoted", "<\"j\xc3\xb6 rg\"@x>", 0, UTF8, 0, "\"j\xc3\xb6 rg\"@x",
	 ALL},
	{"utf8 4 byte", "<\xf0\x9f\x98\x80@x>", 0, UTF8, 0, "\xf0\x9f\x98\x80@x",
	 ALL},
	{"utf8 max", "<\xf4\x8f\xbf\xbf@x>", 0, UTF8, 0, "\xf4\x8f\xbf\xbf@x",
	 ALL},
	{"utf8 truncated", "<\xc3@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 truncated end", "<\xe2\x82", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 lone cont", "<\x80@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 overlong 2", "<\xc0\xaf@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 overlong 3", "<\xe0\x80\xaf@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 overlong 4", "<\xf0\x80\x80\x80@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 surrogate", "<\xed\xa0\x80@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 too big", "<\xf4\x90\x80\x80@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 f5", "<\xf5\x80\x80\x80@x>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 bad in domain", "<a@\xc3(>", 0, UTF8, -EILSEQ, NULL, 0},
	{"utf8 in escape", "<\"\\\xc3\xa4\"@x>", 0, UTF8, -EINVAL, NULL, 0},
	{"8bit in literal", "<a@[\xc3\xa4]>", 0, 0, -EILSEQ, NULL, 0},
};

static void run_path_case(const struct path_case *t)
{
	size_t len = t->len ? t->len : strlen(t->in);
	/* An exact-size heap copy: ASan catches any read past inlen. */
	char *in = malloc(len ? len : 1);
	char out[SMTP_PATH_MAX + 1];
	size_t used = 12345;
	assert_non_null(in);
	memcpy(in, t->in, len);
	memset(out, 'Z', sizeof out);

	int rc = addr_parse_path(in, len, t->flags, out, sizeof out, &used);
	free(in);
	if (rc != t->rc)
		fail_msg("%s: rc %d, want %d", t->name, rc, t->rc);
	if (rc != 0)
		return;
	if (strcmp(out, t->out) != 0)
		fail_msg("%s: out '%s', want '%s'", t->name, out, t->out);
	size_t want = t->used == ALL ? len : (size_t)t->used;
	if (used != want)
		fail_msg("%s: used %zu, want %zu", t->name, used, want);
}

static void test_path_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof path_cases / sizeof *path_cases; i++)
		run_path_case(&path_cases[i]);
}

/* "<" local "@" domain ">" with the given lengths; labels of at most
 * label_max octets. */
static char *make_path(size_t local, size_t domain, size_t label_max,
                       bool bracket)
{
	char *s = malloc(local + domain + 4);
	size_t o = 0;
	assert_non_null(s);
	if (bracket)
		s[o++] = '<';
	memset(s + o, 'l', local);
	o += local;
	s[o++] = '@';
	for (size_t i = 0, lab = 0; i < domain; i++) {
		/* a dot every label_max+1, never first or last */
		if (lab == label_max && i + 1 < domain) {
			s[o++] = '.';
			lab = 0;
		} else {
			s[o++] = 'd';
			lab++;
		}
	}
	if (bracket)
		s[o++] = '>';
	s[o] = '\0';
	return s;
}

struct len_case {
	const char *name;
	size_t local, domain, label_max;
	bool bracket;
	int rc;
};

static const struct len_case len_cases[] = {
	{"local 64", 64, 5, 63, true, 0},
	{"local 65", 65, 5, 63, true, -ENAMETOOLONG},
	{"local 300", 300, 5, 63, true, -ENAMETOOLONG},
	{"label 63", 5, 63, 63, true, 0},
	{"label 64", 5, 64, 64, true, -ENAMETOOLONG},
	{"path 256", 64, 189, 63, true, 0},          /* 1+64+1+189+1 */
	{"path 257", 64, 190, 63, true, -ENAMETOOLONG},
	{"domain 255", 1, 255, 63, true, -ENAMETOOLONG}, /* path 259 */
	{"domain 300", 1, 300, 63, true, -ENAMETOOLONG},
	{"bare 254", 64, 189, 63, false, 0},
	{"bare 255", 64, 190, 63, false, -ENAMETOOLONG},
};

static void test_path_lengths(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof len_cases / sizeof *len_cases; i++) {
		const struct len_case *t = &len_cases[i];
		char *s = make_path(t->local, t->domain, t->label_max, t->bracket);
		char out[SMTP_PATH_MAX + 1];
		size_t used = 0;
		int rc = addr_parse_path(s, strlen(s), BARE, out, sizeof out,
		                         &used);
		if (rc != t->rc)
			fail_msg("%s: rc %d, want %d", t->name, rc, t->rc);
		if (rc == 0) {
			assert_int_equal(used, strlen(s));
			assert_int_equal(strlen(out),
			                 strlen(s) - (t->bracket ? 2 : 0));
		}
		free(s);
	}
}

static void test_path_small_out(void **state)
{
	(void)state;
	char out[8];
	size_t used = 0;
	assert_int_equal(addr_parse_path("<user@example.com>", 18, 0, out,
	                                 sizeof out, &used), -ENAMETOOLONG);
	assert_int_equal(addr_parse_path("<a@b.c>", 7, 0, out, sizeof out,
	                                 &used), 0);
	assert_string_equal(out, "a@b.c");
	/* used may be NULL; NULL input with length 0 is just empty */
	assert_int_equal(addr_parse_path("<a@b>", 5, 0, out, sizeof out, NULL),
	                 0);
	assert_int_equal(addr_parse_path(NULL, 0, BARE, out, sizeof out, &used),
	                 -EINVAL);
	assert_int_equal(addr_parse_path("<a@b>", 5, 0, NULL, 0, &used),
	                 -EINVAL);
}

/* Every prefix and every single-byte mutation of some valid paths, in
 * exact-size buffers: no crash, no read past inlen, rc always known. */
static void test_path_mutations(void **state)
{
	(void)state;
	static const char *const seeds[] = {
		"<@r1,@r2:\"q\\\"x\"@[IPv6:2001:db8::1]> SIZE=1",
		"<j\xc3\xb6rg@b\xc3\xbc" "cher.de>",
		"<user@[192.0.2.1]>",
		"postmaster x",
	};
	static const unsigned char bytes[] = {0, 1, ' ', '"', '\\', '<', '>',
	                                      '@', '.', ',', ':', '[', ']',
	                                      '-', 0x80, 0xc3, 0xff};
	char out[SMTP_PATH_MAX + 1];
	for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++) {
		size_t n = strlen(seeds[s]);
		for (size_t cut = 0; cut <= n; cut++)
			for (size_t pos = 0; pos <= cut; pos++)
				for (size_t b = 0; b < sizeof bytes; b++) {
					char *in = malloc(cut ? cut : 1);
					size_t used = 0;
					assert_non_null(in);
					memcpy(in, seeds[s], cut);
					if (pos < cut)
						in[pos] = (char)bytes[b];
					int rc = addr_parse_path(in, cut, 7, out, sizeof out,
					                         &used);
					assert_true(rc == 0 || rc == -EINVAL ||
					            rc == -EILSEQ || rc == -ENAMETOOLONG);
					if (rc == 0)
						assert_true(used <= cut &&
						            strlen(out) <= SMTP_PATH_MAX);
					free(in);
				}
	}
}

/* ---- addr_domain ------------------------------------------------------- */

static void test_domain(void **state)
{
	(void)state;
	static const struct {
		const char *in, *want;
	} cases[] = {
		{"user@example.com", "example.com"},
		{"postmaster", NULL},
		{"", NULL},
		{"\"a@b\"@c.d", "c.d"},
		{"\"a\\\"@b\"@c", "c"},
		{"a@[IPv6:::1]", "[IPv6:::1]"},
		{"\"unterminated@x", NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const char *d = addr_domain(cases[i].in);
		if (!cases[i].want)
			assert_null(d);
		else
			assert_string_equal(d, cases[i].want);
	}
	assert_null(addr_domain(NULL));
}

/* ---- addr_parse_params ------------------------------------------------- */

struct param_case {
	const char *name;
	const char *in;
	bool utf8;
	size_t max;
	int rc;
	const char *keys[4], *vals[4];  /* vals NULL: no '=' */
};

static const struct param_case param_cases[] = {
	{"empty", "", false, 4, 0, {NULL}, {NULL}},
	{"only spaces", "    ", false, 4, 0, {NULL}, {NULL}},
	{"one", "SIZE=100", false, 4, 1, {"SIZE"}, {"100"}},
	{"keyword alone", "SMTPUTF8", false, 4, 1, {"SMTPUTF8"}, {NULL}},
	{"several, runs of spaces", "  SIZE=100   BODY=8BITMIME  SMTPUTF8 ",
	 false, 4, 3, {"SIZE", "BODY", "SMTPUTF8"}, {"100", "8BITMIME", NULL}},
	{"dsn", "ENVID=abc+2Bdef ORCPT=rfc822;a+40b", false, 4, 2,
	 {"ENVID", "ORCPT"}, {"abc+2Bdef", "rfc822;a+40b"}},
	{"hyphen keyword", "X-FOO-1=a", false, 4, 1, {"X-FOO-1"}, {"a"}},
	{"empty keyword", "=x", false, 4, -EINVAL, {NULL}, {NULL}},
	{"keyword starts with hyphen", "-A=1", false, 4, -EINVAL, {NULL},
	 {NULL}},
	{"underscore", "A_B=1", false, 4, -EINVAL, {NULL}, {NULL}},
	{"empty value", "A=", false, 4, -EINVAL, {NULL}, {NULL}},
	{"equals in value", "A=b=c", false, 4, -EINVAL, {NULL}, {NULL}},
	{"ctl in value", "A=\x01", false, 4, -EINVAL, {NULL}, {NULL}},
	{"tab separator", "A=1\tB=2", false, 4, -EINVAL, {NULL}, {NULL}},
	{"cr at end", "A=1\r", false, 4, -EINVAL, {NULL}, {NULL}},
	{"utf8 refused", "A=\xc3\xa9", false, 4, -EINVAL, {NULL}, {NULL}},
	{"utf8", "A=\xc3\xa9", true, 4, 1, {"A"}, {"\xc3\xa9"}},
	{"utf8 invalid", "A=\xc3", true, 4, -EINVAL, {NULL}, {NULL}},
	{"utf8 not in keyword", "\xc3\xa9=1", true, 4, -EINVAL, {NULL}, {NULL}},
	{"too many", "A B C", false, 2, -E2BIG, {NULL}, {NULL}},
	{"exactly max", "A B", false, 2, 2, {"A", "B"}, {NULL, NULL}},
	{"max 0 empty", "  ", false, 0, 0, {NULL}, {NULL}},
};

/* addr_domain_literal: what addr_parse_path accepts as a literal, and
 * the address it names (deliver/deliver_mx.c routes on it). */
static void test_domain_literal(void **state)
{
	(void)state;
	static const struct {
		const char *domain;
		int rc, family;
		unsigned char bin[16];
	} cases[] = {
		{"[192.0.2.1]", 0, AF_INET, {192, 0, 2, 1}},
		{"[IPv6:2001:db8::1]", 0, AF_INET6,
		 {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"[ipv6:::1]", 0, AF_INET6,
		 {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"example.com", -ENOENT, 0, {0}},
		{"", -ENOENT, 0, {0}},
		{"[]", -EINVAL, 0, {0}},
		{"[192.0.2.1", -EINVAL, 0, {0}},
		{"[192.0.2]", -EINVAL, 0, {0}},
		{"[192.0.2.256]", -EINVAL, 0, {0}},
		{"[2001:db8::1]", -EINVAL, 0, {0}},   /* IPv6 needs its tag */
		{"[IPv6:192.0.2.1]", -EINVAL, 0, {0}},
		{"[x-tag:anything]", -EINVAL, 0, {0}},
		{"[192.0.2.1] ", -EINVAL, 0, {0}},
		{"[192.0.[2].1]", -EINVAL, 0, {0}},
		{"[IPv6:1111:2222:3333:4444:5555:6666:7777:8888:9999:0000:1111]",
		 -EINVAL, 0, {0}},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int family = -1;
		unsigned char bin[16] = {0};
		int rc = addr_domain_literal(cases[i].domain, &family, bin);
		if (rc != cases[i].rc)
			fail_msg("%s: %d, want %d", cases[i].domain, rc, cases[i].rc);
		if (rc == 0) {
			assert_int_equal(family, cases[i].family);
			assert_memory_equal(bin, cases[i].bin,
			                    family == AF_INET ? 4 : 16);
		}
	}
	assert_int_equal(addr_domain_literal(NULL, NULL, NULL), -ENOENT);
}

static void test_params(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof param_cases / sizeof *param_cases; i++) {
		const struct param_case *t = &param_cases[i];
		size_t n = strlen(t->in);
		char *in = malloc(n ? n : 1);
		struct addr_param p[4];
		assert_non_null(in);
		memcpy(in, t->in, n);
		int rc = addr_parse_params(in, n, t->utf8, p, t->max);
		if (rc != t->rc)
			fail_msg("%s: rc %d, want %d", t->name, rc, t->rc);
		for (int k = 0; k < rc; k++) {
			if (p[k].keylen != strlen(t->keys[k]) ||
			    memcmp(p[k].key, t->keys[k], p[k].keylen) != 0)
				fail_msg("%s: key %d '%.*s'", t->name, k,
				         (int)p[k].keylen, p[k].key);
			if (!t->vals[k]) {
				if (p[k].val)
					fail_msg("%s: param %d has a value", t->name, k);
			} else if (!p[k].val || p[k].vallen != strlen(t->vals[k]) ||
			           memcmp(p[k].val, t->vals[k], p[k].vallen) != 0) {
				fail_msg("%s: value %d", t->name, k);
			}
		}
		free(in);
	}
	assert_int_equal(addr_parse_params(NULL, 0, false, NULL, 0), 0);
}

/* ---- addr_xtext_valid -------------------------------------------------- */

static void test_xtext(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		bool ok;
	} cases[] = {
		{"", true},
		{"abc", true},
		{"a+2Bb", true},
		{"+41+42", true},
		{"!\"#$%&'()*,-./09:;<>?@AZ[\\]^_`az{|}~", true},
		{"a+2bb", false},   /* lowercase hex */
		{"+", false},
		{"+2", false},
		{"a+G0", false},
		{"a=b", false},
		{"a b", false},
		{"\x7f", false},
		{"\xc3\xa9", false},
		{"a\tb", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		size_t n = strlen(cases[i].in);
		char *in = malloc(n ? n : 1);
		assert_non_null(in);
		memcpy(in, cases[i].in, n);
		if (addr_xtext_valid(in, n) != cases[i].ok)
			fail_msg("xtext '%s': want %d", cases[i].in, cases[i].ok);
		free(in);
	}
	/* the length is honoured: "+2B" cut to "+2" is invalid */
	assert_false(addr_xtext_valid("+2B", 2));
}

/* ---- addr_parse_mailbox_list --------------------------------------------- */

struct mbl_case {
	const char *name;
	const char *in;
	int rc;              /* count, or -errno */
	const char *out;     /* the addresses joined by " " (rc > 0) */
};

static const struct mbl_case mbl_cases[] = {
	{"plain", " a@example.com\r\n", 1, "a@example.com"},
	{"no blanks", "a@example.com", 1, "a@example.com"},
	{"display name", " Alice Smith <alice@example.com>\r\n", 1,
	 "alice@example.com"},
	{"no display name", " <alice@example.com>", 1, "alice@example.com"},
	{"obs-phrase dot", " John Q. Public <jqp@example.com>", 1,
	 "jqp@example.com"},
	{"quoted name with < and ,", " \"Evil <x@evil.org>, Inc.\" <a@example.com>",
	 1, "a@example.com"},
	{"quoted name with escaped quote", " \"a \\\" <b@evil.org>\" <a@example.com>",
	 1, "a@example.com"},
	{"quoted name with @", " \"x@evil.org\" <a@example.com>", 1,
	 "a@example.com"},
	{"encoded word", " =?UTF-8?B?w6lsw6g=?= <a@example.com>", 1,
	 "a@example.com"},
	{"utf-8 name", " \xc3\xa9l\xc3\xa8ve <a@example.com>", 1, "a@example.com"},
	{"two mailboxes", " a@example.com, Bob <b@example.org>", 2,
	 "a@example.com b@example.org"},
	{"three, empty elements", " a@x, , b@y,c@z", 3, "a@x b@y c@z"},
	{"comment after", " a@example.com (Alice)", 1, "a@example.com"},
	{"comment with < and @", " a@example.com (x <y@evil.org>)", 1,
	 "a@example.com"},
	{"nested comment", " (a (b) c) a@example.com", 1, "a@example.com"},
	{"comments around @", " a (x) @ (y) example.com", 1, "a@example.com"},
	{"comment in angle", " Al <(c) a@example.com (d)>", 1, "a@example.com"},
	{"folded", " Alice\r\n Smith\r\n\t<alice@example.com>\r\n", 1,
	 "alice@example.com"},
	{"folded between mailboxes", " a@x,\r\n b@y\r\n", 2, "a@x b@y"},
	{"quoted local part", " \"a b\"@example.com", 1, "\"a b\"@example.com"},
	{"domain literal", " <a@[192.0.2.1]>", 1, "a@[192.0.2.1]"},
	{"dotted local", " first.last@example.com", 1, "first.last@example.com"},
	{"group", " team: a@x, B <b@y>;", 2, "a@x b@y"},
	{"group and mailbox", " team: a@x;, c@z", 2, "a@x c@z"},
	{"empty group", " undisclosed-recipients:;", 0, NULL},
	{"empty group blanks", " undisclosed recipients: ; \r\n", 0, NULL},
	{"empty", "", 0, NULL},
	{"blank", " \r\n", 0, NULL},
	{"only comment", " (nobody)", 0, NULL},

	/* refused: nothing reliable can be said */
	{"bare name", " Alice", -EINVAL, NULL},
	{"unquoted @ in name", " a@evil.org <a@example.com>", -EINVAL, NULL},
	{"two angle addrs", " <a@x> <b@y>", -EINVAL, NULL},
	{"missing comma", " a@x b@y", -EINVAL, NULL},
	{"unclosed angle", " Al <a@example.com", -EINVAL, NULL},
	{"unclosed quote", " \"Al <a@example.com>", -EINVAL, NULL},
	{"unclosed comment", " a@example.com (x", -EINVAL, NULL},
	{"unbalanced comment", " a@example.com x)", -EINVAL, NULL},
	{"no domain", " <alice>", -EINVAL, NULL},
	{"empty angle", " <>", -EINVAL, NULL},
	{"empty domain", " a@", -EINVAL, NULL},
	{"double dot", " a..b@x", -EINVAL, NULL},
	{"trailing dot domain", " a@x.", -EINVAL, NULL},
	{"obs-route", " <@relay:a@x>", -EINVAL, NULL},
	{"nested group", " g: h: a@x;;", -EINVAL, NULL},
	{"unterminated group", " g: a@x", -EINVAL, NULL},
	{"semicolon at top", " a@x;", -EINVAL, NULL},
	{"group without name", " : a@x;", -EINVAL, NULL},
	{"garbage", " <<>>@@", -EINVAL, NULL},
	{"stray >", " a@x>", -EINVAL, NULL},
	{"text after angle", " <a@x> y", -EINVAL, NULL},
	{"NUL in comment", " a@x (\0)", -EINVAL, NULL},
	{"CR in quoted local", " \"a\r\n b\"@x", -EINVAL, NULL},
};

struct mbl_out {
	char s[1024];
};

static int mbl_collect_cb(void *ctx, const char *addr)
{
	struct mbl_out *o = ctx;
	size_t n = strlen(o->s);
	snprintf(o->s + n, sizeof o->s - n, "%s%s", n ? " " : "", addr);
	return 0;
}

static int mbl_stop_cb(void *ctx, const char *addr)
{
	(void)addr;
	return ++*(int *)ctx == 2 ? -ECANCELED : 0;
}

static void test_mailbox_list(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof mbl_cases / sizeof *mbl_cases; i++) {
		const struct mbl_case *c = &mbl_cases[i];
		/* "NUL in comment" has a NUL inside: its length is fixed. */
		size_t n = strcmp(c->name, "NUL in comment") ? strlen(c->in) : 8;
		char *in = malloc(n ? n : 1);
		assert_non_null(in);
		memcpy(in, c->in, n);
		struct mbl_out o = {""};
		int rc = addr_parse_mailbox_list(in, n, mbl_collect_cb, &o);
		if (rc != c->rc)
			fail_msg("case '%s': rc %d, want %d", c->name, rc, c->rc);
		if (rc > 0 && strcmp(o.s, c->out) != 0)
			fail_msg("case '%s': got '%s', want '%s'", c->name, o.s,
			         c->out);
		free(in);
	}
}

static void test_mailbox_list_limits(void **state)
{
	(void)state;
	char in[600];
	/* a local part of 64 passes, 65 does not */
	memset(in, 'a', 65);
	strcpy(in + 64, "@x");
	assert_int_equal(addr_parse_mailbox_list(in, strlen(in), NULL, NULL), 1);
	memset(in, 'a', 65);
	strcpy(in + 65, "@x");
	assert_int_equal(addr_parse_mailbox_list(in, strlen(in), NULL, NULL),
	                 -ENAMETOOLONG);
	/* an address over 256 octets */
	strcpy(in, "a@");
	memset(in + 2, 'b', 300);
	in[302] = '\0';
	assert_int_equal(addr_parse_mailbox_list(in, strlen(in), NULL, NULL),
	                 -ENAMETOOLONG);
	/* the length is honoured: "a@x, b" cut after "a@x" */
	assert_int_equal(addr_parse_mailbox_list("a@x, b", 3, NULL, NULL), 1);
	/* the callback stops the walk */
	int seen = 0;
	assert_int_equal(addr_parse_mailbox_list("a@x, b@y, c@z", 13,
	                                         mbl_stop_cb, &seen),
	                 -ECANCELED);
	assert_int_equal(seen, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_table),
		cmocka_unit_test(test_path_lengths),
		cmocka_unit_test(test_path_small_out),
		cmocka_unit_test(test_path_mutations),
		cmocka_unit_test(test_domain),
		cmocka_unit_test(test_domain_literal),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_mailbox_list),
		cmocka_unit_test(test_mailbox_list_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
