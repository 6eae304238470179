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

#include "dns/spf_int.h"

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

/* ---- check_host() core, fed canned answers ------------------------------ */

/* A zone: (name, type, value) rows. TXT: the record text; A/AAAA: an
 * address; MX and PTR: a name; value "TEMPFAIL": that answer. A name with
 * rows of other types only answers NODATA, an unknown one NXDOMAIN. */
struct zrow {
	const char *name;
	uint16_t type;
	const char *val;
};

#define ZEND {NULL, 0, NULL}

struct eval_case {
	const char *what;
	const struct zrow *zone;
	const char *ip;
	const char *domain;
	const char *sender;
	enum spf_verdict want;
	int lookups, voids;     /* -1: not checked */
	const char *mechanism;  /* exact, or NULL */
	const char *why;        /* substring, or NULL */
	const char *path;       /* exact, or NULL */
};

static unsigned answer_from(const struct zrow *z, const struct spf_ask *a,
                            struct dns_result *r, struct dns_rr *rr,
                            size_t rrmax)
{
	bool exists = false;
	size_t n = 0;
	memset(r, 0, sizeof *r);
	r->qtype = a->type;
	r->qname = r->canon = a->name;
	for (; z->name; z++) {
		if (strcmp(z->name, a->name) != 0)
			continue;
		exists = true;
		if (z->type != a->type)
			continue;
		if (strcmp(z->val, "TEMPFAIL") == 0) {
			r->status = DNS_TEMPFAIL;
			return 0;
		}
		assert_true(n < rrmax);
		struct dns_rr *x = &rr[n++];
		memset(x, 0, sizeof *x);
		x->type = a->type;
		x->pref = (uint16_t)(10 * n);
		if (a->type == DNS_T_TXT) {
			x->txt = z->val;
			x->txtlen = strlen(z->val);
		} else if (a->type == DNS_T_A || a->type == DNS_T_AAAA) {
			x->addr.family = a->type == DNS_T_A ? AF_INET : AF_INET6;
			assert_int_equal(inet_pton(x->addr.family, z->val, x->addr.a), 1);
		} else {
			x->name = z->val;
		}
	}
	r->status = n ? DNS_OK : exists ? DNS_NODATA : DNS_NXDOMAIN;
	r->nrr = n;
	r->rr = rr;
	return (unsigned)n;
}

static void run_eval(const struct eval_case *c)
{
	struct spf_query q = {.domain = c->domain, .sender = c->sender,
	                      .helo = "helo.example"};
	q.ip.family = strchr(c->ip, ':') ? AF_INET6 : AF_INET;
	assert_int_equal(inet_pton(q.ip.family, c->ip, q.ip.a), 1);
	struct spf_eval *e;
	assert_int_equal(spf_eval_new(&q, &e), 0);
	struct spf_ask a;
	unsigned asks = 0;
	static struct dns_rr rr[DNS_RR_MAX];
	while (spf_eval_next(e, &a)) {
		if (++asks > 200)
			fail_msg("%s: more than 200 questions", c->what);
		struct dns_result r;
		answer_from(c->zone, &a, &r, rr, DNS_RR_MAX);
		spf_eval_answer(e, &r);
	}
	const struct spf_result *res = spf_eval_result(e);
	if (res->verdict != c->want)
		fail_msg("%s: %s, want %s (why: %s; mech %s)", c->what,
		         spf_verdict_names[res->verdict], spf_verdict_names[c->want],
		         res->why, res->mechanism);
	if (c->lookups >= 0 && res->dns_lookups != (unsigned)c->lookups)
		fail_msg("%s: %u lookups, want %d", c->what, res->dns_lookups,
		         c->lookups);
	if (c->voids >= 0 && res->void_lookups != (unsigned)c->voids)
		fail_msg("%s: %u void lookups, want %d", c->what, res->void_lookups,
		         c->voids);
	if (c->mechanism && strcmp(res->mechanism, c->mechanism) != 0)
		fail_msg("%s: mechanism '%s', want '%s'", c->what, res->mechanism,
		         c->mechanism);
	if (c->why && !strstr(res->why, c->why))
		fail_msg("%s: why '%s', want '%s'", c->what, res->why, c->why);
	if (c->path && strcmp(res->path, c->path) != 0)
		fail_msg("%s: path '%s', want '%s'", c->what, res->path, c->path);
	spf_eval_free(e);
}

static const struct zrow z_basic[] = {
	{"ex.test", DNS_T_TXT, "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 "
	                       "a:web.ex.test mx include:inc.ex.test ~all"},
	{"ex.test", DNS_T_TXT, "google-site-verification=xyz"},
	{"ex.test", DNS_T_MX, "mx1.ex.test"},
	{"ex.test", DNS_T_MX, "mx2.ex.test"},
	{"web.ex.test", DNS_T_A, "198.51.100.7"},
	{"mx1.ex.test", DNS_T_A, "198.51.100.20"},
	{"mx2.ex.test", DNS_T_AAAA, "2001:db9::25"},
	{"inc.ex.test", DNS_T_TXT, "v=spf1 ip4:203.0.113.0/25 -ip4:203.0.113.128/25 ?all"},
	{"red.test", DNS_T_TXT, "v=spf1 -ip4:10.0.0.1 redirect=ex.test"},
	{"all.test", DNS_T_TXT, "v=spf1 redirect=ex.test -all"},
	{"fail.test", DNS_T_TXT, "v=spf1 -all"},
	{"neutral.test", DNS_T_TXT, "v=spf1 ip4:10.0.0.0/8"},
	{"two.test", DNS_T_TXT, "v=spf1 -all"},
	{"two.test", DNS_T_TXT, "V=SPF1 ~all"},
	{"none.test", DNS_T_TXT, "v=spf10 ip4:192.0.2.1"},
	{"syntax.test", DNS_T_TXT, "v=spf1 ip4:192.0.2.1 moo -all"},
	{"temp.test", DNS_T_TXT, "TEMPFAIL"},
	{"atemp.test", DNS_T_TXT, "v=spf1 a:x.temp.test -all"},
	{"x.temp.test", DNS_T_A, "TEMPFAIL"},
	{"incnone.test", DNS_T_TXT, "v=spf1 include:nope.test -all"},
	{"incnone2.test", DNS_T_TXT, "v=spf1 include:web.ex.test -all"},
	{"redirnone.test", DNS_T_TXT, "v=spf1 redirect=nope.test"},
	{"incperm.test", DNS_T_TXT, "v=spf1 include:syntax.test -all"},
	{"inctemp.test", DNS_T_TXT, "v=spf1 include:temp.test -all"},
	{"loop1.test", DNS_T_TXT, "v=spf1 include:loop2.test -all"},
	{"loop2.test", DNS_T_TXT, "v=spf1 ip4:10.9.9.9 include:loop1.test"},
	{"rloop.test", DNS_T_TXT, "v=spf1 redirect=rloop2.test"},
	{"rloop2.test", DNS_T_TXT, "v=spf1 redirect=rloop.test"},
	{"twice.test", DNS_T_TXT, "v=spf1 include:fail.test include:fail.test "
	                          "include:ex.test -all"},
	{"many.test", DNS_T_TXT, "v=spf1 a:h1.many.test a:h2.many.test "
	 "a:h3.many.test a:h4.many.test a:h5.many.test a:h6.many.test "
	 "a:h7.many.test a:h8.many.test a:h9.many.test a:h10.many.test "
	 "a:h11.many.test ip4:192.0.2.1 -all"},
	{"ten.test", DNS_T_TXT, "v=spf1 a:h1.many.test a:h2.many.test "
	 "a:h3.many.test a:h4.many.test a:h5.many.test a:h6.many.test "
	 "a:h7.many.test a:h8.many.test a:h9.many.test a:h10.many.test "
	 "ip4:192.0.2.1 -all"},
	{"h1.many.test", DNS_T_A, "10.0.0.1"}, {"h2.many.test", DNS_T_A, "10.0.0.2"},
	{"h3.many.test", DNS_T_A, "10.0.0.3"}, {"h4.many.test", DNS_T_A, "10.0.0.4"},
	{"h5.many.test", DNS_T_A, "10.0.0.5"}, {"h6.many.test", DNS_T_A, "10.0.0.6"},
	{"h7.many.test", DNS_T_A, "10.0.0.7"}, {"h8.many.test", DNS_T_A, "10.0.0.8"},
	{"h9.many.test", DNS_T_A, "10.0.0.9"}, {"h10.many.test", DNS_T_A, "10.0.0.10"},
	{"h11.many.test", DNS_T_A, "10.0.0.11"},
	{"void.test", DNS_T_TXT, "v=spf1 a:v1.test mx:v2.test exists:v3.test ip4:192.0.2.1 -all"},
	{"void2.test", DNS_T_TXT, "v=spf1 a:v1.test mx:v2.test ip4:192.0.2.1 -all"},
	{"mac.test", DNS_T_TXT, "v=spf1 exists:%{ir}.%{l1r-}.ok.mac.test -all"},
	{"1.2.0.192.strong.ok.mac.test", DNS_T_A, "127.0.0.2"},
	{"ptr.test", DNS_T_TXT, "v=spf1 ptr:good.test -all"},
	{"1.2.0.192.in-addr.arpa", DNS_T_PTR, "liar.good.test"},
	{"1.2.0.192.in-addr.arpa", DNS_T_PTR, "host.good.test"},
	{"1.2.0.192.in-addr.arpa", DNS_T_PTR, "host.other.test"},
	{"liar.good.test", DNS_T_A, "192.0.2.99"},
	{"host.good.test", DNS_T_A, "192.0.2.1"},
	{"ptrbad.test", DNS_T_TXT, "v=spf1 ptr:other2.test -all"},
	{"mx11.test", DNS_T_TXT, "v=spf1 mx -all"},
	{"mx11.test", DNS_T_MX, "m1.test"}, {"mx11.test", DNS_T_MX, "m2.test"},
	{"mx11.test", DNS_T_MX, "m3.test"}, {"mx11.test", DNS_T_MX, "m4.test"},
	{"mx11.test", DNS_T_MX, "m5.test"}, {"mx11.test", DNS_T_MX, "m6.test"},
	{"mx11.test", DNS_T_MX, "m7.test"}, {"mx11.test", DNS_T_MX, "m8.test"},
	{"mx11.test", DNS_T_MX, "m9.test"}, {"mx11.test", DNS_T_MX, "m10.test"},
	{"mx11.test", DNS_T_MX, "m11.test"},
	{"cidr.test", DNS_T_TXT, "v=spf1 a:web.ex.test/24 mx:ex.test//16 -all"},
	{"rm.test", DNS_T_TXT, "v=spf1 redirect=%{d1}.red.%{d}"},
	{"badname.test", DNS_T_TXT, "v=spf1 exists:%{l}.x.test a:%{S}.x.test ip4:192.0.2.1 -all"},
	{"incbad.test", DNS_T_TXT, "v=spf1 include:%{l}.x.test -all"},
	{"nullmx.test", DNS_T_TXT, "v=spf1 mx ?all"},
	{"nullmx.test", DNS_T_MX, ""},
	{"helo.example", DNS_T_TXT, "v=spf1 exists:%{l}.%{o}.hl.test -all"},
	{"postmaster.helo.example.hl.test", DNS_T_A, "127.0.0.2"},
	ZEND
};

static const struct eval_case eval_cases[] = {
	{"ip4", z_basic, "192.0.2.77", "ex.test", "a@ex.test", SPF_PASS, 0, 0,
	 "ip4:192.0.2.0/24", NULL, "ip4:192.0.2.0/24"},
	{"ip6", z_basic, "2001:db8::1", "ex.test", "a@ex.test", SPF_PASS, 0, 0,
	 "ip6:2001:db8::/32", NULL, NULL},
	{"v4-mapped is v4", z_basic, "::ffff:192.0.2.9", "ex.test", "",
	 SPF_PASS, 0, 0, "ip4:192.0.2.0/24", NULL, NULL},
	{"a", z_basic, "198.51.100.7", "ex.test", "a@ex.test", SPF_PASS, 1, 0,
	 "a:web.ex.test", NULL, NULL},
	{"mx v4", z_basic, "198.51.100.20", "ex.test", "a@ex.test", SPF_PASS, 2,
	 0, "mx", NULL, NULL},
	{"mx v6 (mx1 has no AAAA: not a void lookup)", z_basic, "2001:db9::25",
	 "ex.test", "a@ex.test", SPF_PASS, 2, 1, "mx", NULL, NULL},
	{"include pass", z_basic, "203.0.113.5", "ex.test", "a@ex.test",
	 SPF_PASS, 3, 0, "include:inc.ex.test", NULL,
	 "include:inc.ex.test > ip4:203.0.113.0/25"},
	{"include fail is no match, then ~all", z_basic, "203.0.113.200",
	 "ex.test", "a@ex.test", SPF_SOFTFAIL, 3, 0, "~all", NULL, "~all"},
	{"softfail", z_basic, "10.1.1.1", "ex.test", "a@ex.test", SPF_SOFTFAIL,
	 3, 0, "~all", NULL, NULL},
	{"redirect", z_basic, "192.0.2.77", "red.test", "a@red.test", SPF_PASS,
	 1, 0, "redirect=ex.test", NULL, "redirect=ex.test > ip4:192.0.2.0/24"},
	{"redirect: the record's own match first", z_basic, "10.0.0.1",
	 "red.test", "", SPF_FAIL, 0, 0, "-ip4:10.0.0.1", NULL, NULL},
	{"redirect ignored with all", z_basic, "192.0.2.77", "all.test", "",
	 SPF_FAIL, 0, 0, "-all", NULL, NULL},
	{"fail", z_basic, "192.0.2.1", "fail.test", "", SPF_FAIL, 0, 0, "-all",
	 NULL, NULL},
	{"neutral: no match", z_basic, "192.0.2.1", "neutral.test", "",
	 SPF_NEUTRAL, 0, 0, "", NULL, ""},
	{"two records", z_basic, "192.0.2.1", "two.test", "", SPF_PERMERROR, 0,
	 0, "", "two SPF records at two.test", NULL},
	{"no record", z_basic, "192.0.2.1", "none.test", "", SPF_NONE, 0, 0,
	 "", "no SPF record at none.test", NULL},
	{"nxdomain", z_basic, "192.0.2.1", "nx.test", "", SPF_NONE, 0, 0, "",
	 "no SPF record at nx.test", NULL},
	{"bad domain", z_basic, "192.0.2.1", "bad..test", "", SPF_NONE, 0, 0,
	 "", "not a domain name", NULL},
	{"single label", z_basic, "192.0.2.1", "localhost", "", SPF_NONE, 0, 0,
	 "", "not a domain name", NULL},
	{"syntax", z_basic, "192.0.2.1", "syntax.test", "", SPF_PERMERROR, 0, 0,
	 "", "syntax error at syntax.test: unknown mechanism 'moo'", NULL},
	{"tempfail TXT", z_basic, "192.0.2.1", "temp.test", "", SPF_TEMPERROR,
	 0, 0, "", "DNS tempfail for TXT temp.test", NULL},
	{"tempfail A", z_basic, "192.0.2.1", "atemp.test", "", SPF_TEMPERROR, 1,
	 0, "", "DNS tempfail for A x.temp.test", NULL},
	{"include of nxdomain", z_basic, "192.0.2.1", "incnone.test", "",
	 SPF_PERMERROR, 1, 0, "", "include:nope.test: no SPF record at nope.test",
	 NULL},
	{"include of a name without a record", z_basic, "192.0.2.1",
	 "incnone2.test", "", SPF_PERMERROR, 1, 0, "",
	 "include:web.ex.test: no SPF record at web.ex.test", NULL},
	{"redirect to nxdomain", z_basic, "192.0.2.1", "redirnone.test", "",
	 SPF_PERMERROR, 1, 0, "", "no SPF record at nope.test (redirect)", NULL},
	{"include permerror", z_basic, "192.0.2.1", "incperm.test", "",
	 SPF_PERMERROR, 1, 0, "", "syntax error at syntax.test", NULL},
	{"include temperror", z_basic, "192.0.2.1", "inctemp.test", "",
	 SPF_TEMPERROR, 1, 0, "", "DNS tempfail for TXT temp.test", NULL},
	{"include loop", z_basic, "192.0.2.1", "loop1.test", "", SPF_PERMERROR,
	 2, 0, "", "include loop at include:loop1.test "
	 "(loop1.test > loop2.test > loop1.test)", NULL},
	{"redirect loop", z_basic, "192.0.2.1", "rloop.test", "", SPF_PERMERROR,
	 2, 0, "", "include loop at redirect=rloop.test", NULL},
	{"same include twice is no loop", z_basic, "192.0.2.77", "twice.test",
	 "", SPF_PASS, 3, 0, "include:ex.test", NULL,
	 "include:ex.test > ip4:192.0.2.0/24"},
	{"10 lookups are fine", z_basic, "192.0.2.1", "ten.test", "", SPF_PASS,
	 10, 0, "ip4:192.0.2.1", NULL, NULL},
	{"11 lookups", z_basic, "192.0.2.1", "many.test", "", SPF_PERMERROR, 10,
	 0, "", "more than 10 DNS lookups (a:h1.many.test, a:h2.many.test, ",
	 NULL},
	{"11 lookups: the 11th named", z_basic, "192.0.2.1", "many.test", "",
	 SPF_PERMERROR, 10, 0, "", "a:h10.many.test, then a:h11.many.test)",
	 NULL},
	{"3 void lookups", z_basic, "192.0.2.1", "void.test", "",
	 SPF_PERMERROR, 3, 3, "",
	 "more than 2 void lookups at exists:v3.test (in void.test)", NULL},
	{"2 void lookups are fine", z_basic, "192.0.2.1", "void2.test", "",
	 SPF_PASS, 2, 2, "ip4:192.0.2.1", NULL, NULL},
	{"macros in exists", z_basic, "192.0.2.1", "mac.test",
	 "strong-bad@mac.test", SPF_PASS, 1, 0,
	 "exists:%{ir}.%{l1r-}.ok.mac.test", NULL, NULL},
	{"macros in exists: no match", z_basic, "192.0.2.2", "mac.test",
	 "strong-bad@mac.test", SPF_FAIL, 1, 1, "-all", NULL, NULL},
	{"ptr validated", z_basic, "192.0.2.1", "ptr.test", "", SPF_PASS, 1, 0,
	 "ptr:good.test", NULL, NULL},
	{"ptr: names not under the target", z_basic, "192.0.2.1",
	 "ptrbad.test", "", SPF_FAIL, 1, 0, "-all", NULL, NULL},
	{"ptr: unvalidated name", z_basic, "192.0.2.99", "ptr.test", "",
	 SPF_FAIL, 1, 1, "-all", NULL, NULL},
	{"more than 10 MX", z_basic, "192.0.2.1", "mx11.test", "",
	 SPF_PERMERROR, 1, 0, "", "more than 10 MX records for mx at mx11.test",
	 NULL},
	{"a with cidr", z_basic, "198.51.100.200", "cidr.test", "", SPF_PASS, 1,
	 0, "a:web.ex.test/24", NULL, NULL},
	{"mx with ip6 cidr", z_basic, "2001:db9:ffff::1", "cidr.test", "",
	 SPF_PASS, 2, 1, "mx:ex.test//16", NULL, NULL},
	{"redirect with macros", z_basic, "192.0.2.1", "rm.test", "",
	 SPF_PERMERROR, 1, 0, "", "no SPF record at test.red.rm.test (redirect)",
	 NULL},
	{"expanded names we would not ask about do not match", z_basic,
	 "192.0.2.1", "badname.test", "a b@badname.test", SPF_PASS, 2, 0,
	 "ip4:192.0.2.1", NULL, NULL},
	{"include of a name we would not ask about", z_basic, "192.0.2.1",
	 "incbad.test", "a b@incbad.test", SPF_PERMERROR, 1, 0, "",
	 "include:%{l}.x.test: not a domain name to ask about", NULL},
	{"an MX without a name matches nothing", z_basic, "192.0.2.1",
	 "nullmx.test", "", SPF_NEUTRAL, 1, 0, "?all", NULL, NULL},
	{"sender too long", z_basic, "192.0.2.1", "ex.test",
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	 "@ex.test", SPF_NONE, 0, 0, "", "sender longer than", NULL},
	{"empty sender: postmaster@helo", z_basic, "192.0.2.1", "helo.example",
	 "", SPF_PASS, 1, 0, "exists:%{l}.%{o}.hl.test", NULL, NULL},
	{"sender without local-part", z_basic, "192.0.2.1", "helo.example",
	 "@helo.example", SPF_PASS, 1, 0, NULL, NULL, NULL},
	{"other sender does not match", z_basic, "192.0.2.1", "helo.example",
	 "bob@helo.example", SPF_FAIL, 1, 1, "-all", NULL, NULL},
};

static void test_eval_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof eval_cases / sizeof *eval_cases; i++)
		run_eval(&eval_cases[i]);
}

/* The questions, in order, for a record with a, mx and include. */
static void test_eval_question_order(void **state)
{
	(void)state;
	struct spf_query q = {.domain = "ex.test", .sender = "a@ex.test"};
	q.ip.family = AF_INET;
	inet_pton(AF_INET, "10.1.1.1", q.ip.a);
	struct spf_eval *e;
	assert_int_equal(spf_eval_new(&q, &e), 0);
	static const char *const want[] = {
		"TXT ex.test", "A web.ex.test", "MX ex.test", "A mx1.ex.test",
		"A mx2.ex.test", "TXT inc.ex.test",
	};
	struct spf_ask a;
	size_t n = 0;
	static struct dns_rr rr[DNS_RR_MAX];
	while (spf_eval_next(e, &a)) {
		char got[300];
		snprintf(got, sizeof got, "%s %s", dns_type_name(a.type), a.name);
		assert_true(n < sizeof want / sizeof *want);
		assert_string_equal(got, want[n++]);
		struct dns_result r;
		answer_from(z_basic, &a, &r, rr, DNS_RR_MAX);
		spf_eval_answer(e, &r);
	}
	assert_int_equal(n, sizeof want / sizeof *want);
	assert_int_equal(spf_eval_result(e)->verdict, SPF_SOFTFAIL);
	assert_int_equal(spf_eval_result(e)->queries, 6);
	assert_string_equal(spf_eval_result(e)->record, z_basic[0].val);
	/* A timeout after the end changes nothing. */
	spf_eval_timeout(e, 5);
	assert_int_equal(spf_eval_result(e)->verdict, SPF_SOFTFAIL);
	spf_eval_free(e);

	/* A timeout while a question is out: temperror, no more questions. */
	assert_int_equal(spf_eval_new(&q, &e), 0);
	assert_true(spf_eval_next(e, &a));
	spf_eval_timeout(e, 1234);
	assert_false(spf_eval_next(e, &a));
	assert_int_equal(spf_eval_result(e)->verdict, SPF_TEMPERROR);
	assert_string_equal(spf_eval_result(e)->why, "no result within 1234 ms");
	spf_eval_free(e);
	spf_eval_free(NULL);
}

static void test_addr_in(void **state)
{
	(void)state;
	struct dns_addr a = {AF_INET, {192, 0, 2, 130}}, n = {AF_INET, {192, 0, 2, 128}};
	assert_true(spf_addr_in(&a, &n, 25));
	assert_true(spf_addr_in(&a, &n, 0));
	assert_false(spf_addr_in(&a, &n, 31));
	assert_false(spf_addr_in(&a, &n, 33));
	struct dns_addr b = {AF_INET6, {0}};
	assert_false(spf_addr_in(&b, &n, 0));
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
		cmocka_unit_test(test_eval_table),
		cmocka_unit_test(test_eval_question_order),
		cmocka_unit_test(test_addr_in),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
