/*
 * tests/unit/test_dkim.c - dkim/'s pure parts, table-driven: the From:
 * domain (dkim_from_domain) and the key chosen for it (dkim_select_keys:
 * last line per algorithm, dual keys, parent domains with
 * dkim_subdomains). Signing itself is checked end to end against dkimpy
 * (tests/e2e/test_dkim.py).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dkim/dkim.h"

struct from_case {
	const char *value;
	int rc;
	const char *dom;
};

static const struct from_case from_cases[] = {
	{" ann@example.com", 0, "example.com"},
	{" Ann <ann@Example.COM>", 0, "example.com"},
	{" \"Ann, the <boss>\" <ann@example.org>", 0, "example.org"},
	{" (comment <x@evil.test>) ann@example.net", 0, "example.net"},
	{" ann@example.com (Ann (nested) x@evil.test)", 0, "example.com"},
	{" a@one.example, b@two.example", 0, "one.example"},
	{" Team: a@grp.example, b@other.example;", 0, "grp.example"},
	{" Empty: ;, c@after.example", 0, "after.example"},
	{"\r\n\tAnn\r\n <ann@folded.example>", 0, "folded.example"},
	{" <ann@example.com.>", 0, "example.com"},
	{" <@route.example:ann@real.example>", 0, "real.example"},
	{" \"a@quoted.example\" <b@true.example>", 0, "true.example"},
	{" ann@[192.0.2.1]", -EINVAL, NULL},
	{" ann", -EINVAL, NULL},
	{" <>", -EINVAL, NULL},
	{"", -EINVAL, NULL},
	{" ann@", -EINVAL, NULL},
	{" ann@exa mple.com", -EINVAL, NULL},
	{" ann@ex..com", -EINVAL, NULL},
	{" ann@.com", -EINVAL, NULL},
	{" ann@b\xc3\xbc" "cher.example", -EINVAL, NULL},
	{" \"unterminated@x.example", -EINVAL, NULL},
	{" (unterminated ann@x.example", -EINVAL, NULL},
};

static void test_from_domain(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof from_cases / sizeof *from_cases; i++) {
		const struct from_case *c = &from_cases[i];
		char dom[256] = "";
		int rc = dkim_from_domain(c->value, strlen(c->value), dom,
		                          sizeof dom);
		if (rc != c->rc)
			fail_msg("case %zu '%s': rc %d, want %d", i, c->value, rc,
			         c->rc);
		if (rc == 0 && strcmp(dom, c->dom) != 0)
			fail_msg("case %zu: '%s', want '%s'", i, dom, c->dom);
	}
}

/* A domain longer than the caller's buffer, and one over 253 octets. */
static void test_from_domain_bounds(void **state)
{
	(void)state;
	char dom[8];
	assert_int_equal(dkim_from_domain("a@abc.de", 8, dom, sizeof dom), 0);
	assert_string_equal(dom, "abc.de");
	assert_int_equal(dkim_from_domain("a@abcdefgh.de", 13, dom, sizeof dom),
	                 -EINVAL);
	char v[2100], big[300];
	memset(v, 'a', sizeof v);
	v[0] = '@';
	assert_int_equal(dkim_from_domain(v, sizeof v, big, sizeof big),
	                 -EINVAL);
	memcpy(v, "x@", 2);
	memset(v + 2, 'b', 254);
	assert_int_equal(dkim_from_domain(v, 256, big, sizeof big), -EINVAL);
}

static struct dkim_key K(const char *domain, const char *sel, enum dkim_alg a)
{
	struct dkim_key k;
	memset(&k, 0, sizeof k);
	strcpy(k.spec.domain, domain);
	strcpy(k.spec.selector, sel);
	k.alg = a;
	return k;
}

struct sel_case {
	const char *domain;
	bool subdomains;
	const char *want[2];   /* selectors, RSA first */
};

static void test_select(void **state)
{
	(void)state;
	struct dkim_key keys[] = {
		K("example.com", "old", DKIM_ALG_RSA),
		K("example.com", "ed1", DKIM_ALG_ED25519),
		K("example.com", "new", DKIM_ALG_RSA),   /* last RSA wins */
		K("b.example.com", "sub", DKIM_ALG_ED25519),
		K("com", "tld", DKIM_ALG_RSA),
		K("other.org", "o1", DKIM_ALG_RSA),
	};
	const struct dkim_key *kp[6];
	for (size_t i = 0; i < 6; i++)
		kp[i] = &keys[i];
	static const struct sel_case cases[] = {
		{"example.com", false, {"new", "ed1"}},
		{"example.com", true, {"new", "ed1"}},
		{"other.org", false, {"o1", NULL}},
		{"b.example.com", false, {"sub", NULL}},   /* its own only */
		{"a.b.example.com", false, {NULL, NULL}},
		{"a.b.example.com", true, {"sub", NULL}},  /* nearest parent */
		{"x.example.com", true, {"new", "ed1"}},
		{"x.y.other.org", true, {"o1", NULL}},
		{"nothing.net", true, {NULL, NULL}},
		{"net", true, {NULL, NULL}},
		{"example.com.evil", true, {NULL, NULL}},
		{"xexample.com", true, {NULL, NULL}},   /* "com" never used */
		{"", true, {NULL, NULL}},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const struct sel_case *c = &cases[i];
		const struct dkim_key *out[2] = {NULL, NULL};
		size_t n = dkim_select_keys(kp, 6, c->subdomains, c->domain, out);
		size_t want = (c->want[0] != NULL) + (c->want[1] != NULL);
		if (n != want)
			fail_msg("case %zu %s: %zu keys, want %zu", i, c->domain, n,
			         want);
		for (size_t k = 0; k < n; k++)
			if (strcmp(out[k]->spec.selector, c->want[k]) != 0)
				fail_msg("case %zu %s: key %zu is %s, want %s", i,
				         c->domain, k, out[k]->spec.selector, c->want[k]);
	}
	assert_int_equal(dkim_select_keys(kp, 6, true, NULL, (const struct
	                 dkim_key *[2]){NULL, NULL}), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_from_domain),
		cmocka_unit_test(test_from_domain_bounds),
		cmocka_unit_test(test_select),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
