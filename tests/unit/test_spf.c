/*
 * tests/unit/test_spf.c - dns/spf_parse.c and the pure evaluation core of
 * dns/spf.c: records parsed (every mechanism, qualifiers, CIDR lengths,
 * modifiers, macros; syntax errors naming the term), macro expansion
 * (RFC 7208 §7.4's examples, IPv4 and IPv6, URL escaping, §4.8
 * truncation), and check_host() decisions fed canned dns_result answers
 * (no network, no dns/ shell).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "dns/spf.h"

/* ---- parser ----------------------------------------------------------- */

struct parse_case {
	const char *rec;
	int rc;                 /* 0, -EINVAL, -E2BIG */
	const char *kinds;      /* ok: one letter per term (see kind_letter) */
	const char *err;        /* error: a substring of the message */
};

/* all include a mx ptr ip4 ip6 exists redirect exp unknown */
static char kind_letter(enum spf_term_kind k)
{
	return "LIAMP46ERXU"[k];
}

static const struct parse_case parse_cases[] = {
	{"v=spf1", 0, "", NULL},
	{"V=SPF1 -ALL", 0, "L", NULL},
	{"v=spf1   ip4:192.0.2.0/24  -all  ", 0, "4L", NULL},
	{"v=spf1 include:_spf.google.com ~all", 0, "IL", NULL},
	{"v=spf1 a mx ptr a:x.example mx:x.example/24 a/24//64 mx//64 "
	 "ptr:x.example exists:%{i}.x.example ?all", 0, "AMPAMAMPEL", NULL},
	{"v=spf1 ip6:2001:db8::/32 ip6:::1 ip4:10.0.0.1 redirect=_spf.x.example",
	 0, "664R", NULL},
	{"v=spf1 exp=explain.%{d} foo-bar=%{c}anything", 0, "XU", NULL},
	{"v=spf1 foo-bar=%{x}", -EINVAL, NULL, "bad macro letter in 'foo-bar=%{x}'"},
	{"v=spf1 %{ir}.%{v}._spf.%{d2}", -EINVAL, NULL, "unknown mechanism"},
	{"v=spf1 include:%{ir}.%{v}._spf.%{d2} -all", 0, "IL", NULL},
	{"v=spf1 exists:%{l1r-}.lp._spf.%{d2}", 0, "E", NULL},
	{"v=spf1 exists:%{d}", 0, "E", NULL},
	{"v=spf1 a:%%.%_.%-.x.example", 0, "A", NULL},
	/* errors, each naming the term */
	{"v=spf10 -all", -EINVAL, NULL, "not an SPF record"},
	{"spf1 -all", -EINVAL, NULL, "not an SPF record"},
	{"v=spf1 foo", -EINVAL, NULL, "unknown mechanism 'foo'"},
	{"v=spf1 -alll", -EINVAL, NULL, "unknown mechanism '-alll'"},
	{"v=spf1 all:x.example", -EINVAL, NULL, "bad arguments in 'all:x.example'"},
	{"v=spf1 include", -EINVAL, NULL, "bad arguments in 'include'"},
	{"v=spf1 include:", -EINVAL, NULL, "bad arguments in 'include:'"},
	{"v=spf1 ip4:192.0.2.0/33", -EINVAL, NULL, "bad CIDR length in 'ip4:192.0.2.0/33'"},
	{"v=spf1 ip4:192.0.2.0/024", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 ip4:192.0.2", -EINVAL, NULL, "bad address in 'ip4:192.0.2'"},
	{"v=spf1 ip4:2001:db8::1", -EINVAL, NULL, "bad address"},
	{"v=spf1 ip6:192.0.2.1", -EINVAL, NULL, "bad address"},
	{"v=spf1 ip6:2001:db8::/129", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 a/", -EINVAL, NULL, "bad CIDR length in 'a/'"},
	{"v=spf1 a//129", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 a:x.example/24/64", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 a:x.example/24/", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 mx/24//", -EINVAL, NULL, "bad CIDR length"},
	{"v=spf1 a:1.2.3.4", -EINVAL, NULL, "bad domain '1.2.3.4' in 'a:1.2.3.4'"},
	{"v=spf1 a:example", -EINVAL, NULL, "bad domain"},
	{"v=spf1 a:x.-example", -EINVAL, NULL, "bad domain"},
	{"v=spf1 exists:%{x}.x.example", -EINVAL, NULL, "bad macro letter in"},
	{"v=spf1 exists:%{c}.x.example", -EINVAL, NULL, "bad macro letter"},
	{"v=spf1 exists:%{d0}.x.example", -EINVAL, NULL, "zero digit"},
	{"v=spf1 exists:%{d.x.example", -EINVAL, NULL, "unterminated"},
	{"v=spf1 exists:%d.x.example", -EINVAL, NULL, "bad macro '%d'"},
	{"v=spf1 exists:x.example%", -EINVAL, NULL, "lone '%'"},
	{"v=spf1 redirect=a.example redirect=b.example", -EINVAL, NULL,
	 "second redirect= at 'redirect=b.example'"},
	{"v=spf1 exp=a.example exp=b.example", -EINVAL, NULL, "second exp="},
	{"v=spf1 -redirect=a.example", -EINVAL, NULL, "bad modifier name"},
	{"v=spf1 1x=y", -EINVAL, NULL, "bad modifier name"},
	{"v=spf1 x=%", -EINVAL, NULL, "lone '%'"},
	{"v=spf1 ip4:192.0.2.1\t-all", -EINVAL, NULL, "bad"},
};

static void test_parse_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof parse_cases / sizeof *parse_cases; i++) {
		const struct parse_case *c = &parse_cases[i];
		struct spf_record *r = NULL;
		char err[256] = "";
		int rc = spf_parse(c->rec, strlen(c->rec), &r, err, sizeof err);
		if (rc != c->rc)
			fail_msg("%s: rc %d, want %d (%s)", c->rec, rc, c->rc, err);
		if (rc == 0) {
			char k[SPF_TERMS_MAX + 1];
			for (size_t j = 0; j < r->nterms; j++)
				k[j] = kind_letter(r->terms[j].kind);
			k[r->nterms] = '\0';
			if (strcmp(k, c->kinds) != 0)
				fail_msg("%s: kinds %s, want %s", c->rec, k, c->kinds);
			spf_record_free(r);
		} else {
			assert_null(r);
			if (!strstr(err, c->err))
				fail_msg("%s: error '%s', want '%s'", c->rec, err, c->err);
		}
	}
}

static void test_parse_fields(void **state)
{
	(void)state;
	const char *rec = "v=spf1 -a:x.example/24//64 ~mx//48 ?ip4:192.0.2.0/24 "
	                  "+ip6:2001:db8::/32 ptr exists:%{i}.x.example "
	                  "redirect=r.example";
	struct spf_record *r;
	char err[256];
	assert_int_equal(spf_parse(rec, strlen(rec), &r, err, sizeof err), 0);
	assert_int_equal(r->nterms, 7);
	const struct spf_term *t = r->terms;
	assert_int_equal(t[0].qual, '-');
	assert_string_equal(t[0].spec, "x.example");
	assert_int_equal(t[0].cidr4, 24);
	assert_int_equal(t[0].cidr6, 64);
	assert_string_equal(t[0].text, "-a:x.example/24//64");
	assert_int_equal(t[1].qual, '~');
	assert_null(t[1].spec);
	assert_int_equal(t[1].cidr4, 32);
	assert_int_equal(t[1].cidr6, 48);
	assert_int_equal(t[2].qual, '?');
	assert_int_equal(t[2].net.family, AF_INET);
	assert_int_equal(t[2].cidr4, 24);
	assert_memory_equal(t[2].net.a, "\xc0\x00\x02\x00", 4);
	assert_int_equal(t[3].qual, '+');
	assert_int_equal(t[3].net.family, AF_INET6);
	assert_int_equal(t[3].cidr6, 32);
	assert_null(t[4].spec);
	assert_string_equal(t[5].spec, "%{i}.x.example");
	assert_ptr_equal(r->redirect, &t[6]);
	assert_string_equal(r->redirect->spec, "r.example");
	assert_false(r->has_all);
	spf_record_free(r);
}

static void test_parse_bounds(void **state)
{
	(void)state;
	char big[DNS_TXT_MAX + 2];
	memset(big, 'a', sizeof big);
	memcpy(big, "v=spf1 ", 7);
	struct spf_record *r;
	char err[256];
	assert_int_equal(spf_parse(big, DNS_TXT_MAX + 1, &r, err, sizeof err),
	                 -E2BIG);
	/* SPF_TERMS_MAX + 1 "a" terms fit in DNS_TXT_MAX bytes. */
	size_t n = 6;
	memcpy(big, "v=spf1", 6);
	for (int i = 0; i <= SPF_TERMS_MAX; i++) {
		memcpy(big + n, " a", 2);
		n += 2;
	}
	assert_int_equal(spf_parse(big, n, &r, err, sizeof err), -E2BIG);
	assert_non_null(strstr(err, "more than 256 terms"));
	assert_int_equal(spf_parse(big, n - 2, &r, err, sizeof err), 0);
	assert_int_equal(r->nterms, SPF_TERMS_MAX);
	spf_record_free(r);
	/* A NUL inside (TXT strings may hold one). */
	assert_int_equal(spf_parse("v=spf1 a\0b -all", 15, &r, err, sizeof err),
	                 -EINVAL);
	assert_true(spf_is_record("v=spf1", 6));
	assert_true(spf_is_record("V=Spf1 a", 8));
	assert_false(spf_is_record("v=spf1a", 7));
	assert_false(spf_is_record("v=spf", 5));
}

/* ---- macros ------------------------------------------------------------ */

struct expand_case {
	const char *spec;
	const char *want;       /* NULL: -EINVAL */
};

/* RFC 7208 §7.4 (IPv4 192.0.2.3, strong-bad@email.example.com). */
static const struct expand_case expand4[] = {
	{"%{s}", "strong-bad@email.example.com"},
	{"%{o}", "email.example.com"},
	{"%{d}", "email.example.com"},
	{"%{d4}", "email.example.com"},
	{"%{d3}", "email.example.com"},
	{"%{d2}", "example.com"},
	{"%{d1}", "com"},
	{"%{dr}", "com.example.email"},
	{"%{d2r}", "example.email"},
	{"%{l}", "strong-bad"},
	{"%{l-}", "strong.bad"},
	{"%{lr}", "strong-bad"},
	{"%{lr-}", "bad.strong"},
	{"%{l1r-}", "strong"},
	{"%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"},
	{"%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"},
	{"%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
	 "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
	{"%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
	 "3.2.0.192.in-addr.strong.lp._spf.example.com"},
	{"%{d2}.trusted-domains.example.net",
	 "example.com.trusted-domains.example.net"},
	{"%{i}", "192.0.2.3"},
	{"%{h}", "mx.example.org"},
	{"%{p}", "unknown"},
	{"%%%_%-", "% %20"},
	{"%{S}", "strong-bad%40email.example.com"},
	{"%{l+-}", "strong.bad"},
	{"%{d999}", "email.example.com"},
	{"x.%{x}", NULL},
	{"%{c}", NULL},         /* exp only */
	{"%{d0}", NULL},
	{"%{d", NULL},
	{"%", NULL},
	{"%x", NULL},
};

static void run_expand(const struct spf_macro_ctx *ctx,
                       const struct expand_case *cs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char out[600], err[256] = "";
		int rc = spf_expand(cs[i].spec, ctx, out, sizeof out, err, sizeof err);
		if (!cs[i].want) {
			if (rc != -EINVAL)
				fail_msg("%s: rc %d, want -EINVAL", cs[i].spec, rc);
			if (!strstr(err, cs[i].spec))
				fail_msg("%s: error '%s' does not name it", cs[i].spec,
				         err);
			continue;
		}
		if (rc < 0)
			fail_msg("%s: rc %d (%s)", cs[i].spec, rc, err);
		if (strcmp(out, cs[i].want) != 0 || (size_t)rc != strlen(out))
			fail_msg("%s: '%s', want '%s'", cs[i].spec, out, cs[i].want);
	}
}

static struct spf_macro_ctx ctx_rfc(int family)
{
	struct spf_macro_ctx c = {
		.sender = "strong-bad@email.example.com",
		.domain = "email.example.com",
		.helo = "mx.example.org",
	};
	c.ip.family = family;
	inet_pton(family, family == AF_INET ? "192.0.2.3" : "2001:db8::cb01",
	          c.ip.a);
	return c;
}

static void test_expand_rfc_ipv4(void **state)
{
	(void)state;
	struct spf_macro_ctx c = ctx_rfc(AF_INET);
	run_expand(&c, expand4, sizeof expand4 / sizeof *expand4);
}

static void test_expand_rfc_ipv6(void **state)
{
	(void)state;
	struct spf_macro_ctx c = ctx_rfc(AF_INET6);
	static const struct expand_case cs[] = {
		{"%{ir}.%{v}._spf.%{d2}",
		 "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
		 ".ip6._spf.example.com"},
		{"%{i}", "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"
		 ".c.b.0.1"},
		{"%{v}", "ip6"},
		{"%{i4}", "c.b.0.1"},
	};
	run_expand(&c, cs, sizeof cs / sizeof *cs);
}

static void test_expand_exp_letters(void **state)
{
	(void)state;
	struct spf_macro_ctx c = ctx_rfc(AF_INET6);
	c.exp = true;
	c.receiver = "relay.example.net";
	c.now = 1700000000;
	static const struct expand_case cs[] = {
		{"%{c} %{r} %{t}", "2001:db8::cb01 relay.example.net 1700000000"},
		{"%{C}", "2001%3Adb8%3A%3Acb01"},
	};
	run_expand(&c, cs, sizeof cs / sizeof *cs);
}

static void test_expand_bounds(void **state)
{
	(void)state;
	struct spf_macro_ctx c = ctx_rfc(AF_INET);
	char out[16], err[256];
	assert_int_equal(spf_expand("%{s}", &c, out, sizeof out, err, sizeof err),
	                 -ENOBUFS);
	assert_int_equal(spf_expand("abc", &c, out, 4, err, sizeof err), 3);
	assert_int_equal(spf_expand("abcd", &c, out, 4, err, sizeof err),
	                 -ENOBUFS);
	/* §4.8: a name longer than 253 loses labels from the left. */
	char spec[400] = "";
	for (int i = 0; i < 12; i++)
		strcat(spec, "%{d}.");     /* 12 x 18 = 216 */
	strcat(spec, "%{s}.example");  /* + 28 + 8 */
	char name[SPF_EXPAND_MAX + 1];
	int n = spf_expand_name(spec, &c, name, sizeof name, err, sizeof err);
	assert_true(n > 0 && n <= SPF_EXPAND_MAX);
	assert_int_equal((size_t)n, strlen(name));
	/* 12*18 + 28 + 8 = 252 fits, so nothing is cut: one more label does. */
	assert_int_equal(n, 252);
	strcat(spec, ".tail.x");
	char full[600];
	int fn = spf_expand(spec, &c, full, sizeof full, err, sizeof err);
	assert_int_equal(fn, 259);
	n = spf_expand_name(spec, &c, name, sizeof name, err, sizeof err);
	/* The leftmost label "email" (and its dot) went: 259 - 6. */
	assert_int_equal(n, 253);
	assert_string_equal(name, full + 6);
	assert_int_equal(strncmp(name, "example.com.email", 17), 0);
	/* One label longer than 253 cannot be cut. */
	char one[300];
	memset(one, 'x', 260);
	one[260] = '\0';
	assert_int_equal(spf_expand_name(one, &c, name, sizeof name, err,
	                                 sizeof err), -EINVAL);
	assert_int_equal(spf_expand_name("%{d}.", &c, name, sizeof name, err,
	                                 sizeof err), 17);
	assert_string_equal(name, "email.example.com");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_parse_fields),
		cmocka_unit_test(test_parse_bounds),
		cmocka_unit_test(test_expand_rfc_ipv4),
		cmocka_unit_test(test_expand_rfc_ipv6),
		cmocka_unit_test(test_expand_exp_letters),
		cmocka_unit_test(test_expand_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
