/*
 * tests/unit/test_dkim.c - dkim/'s pure parts, table-driven: the From:
 * domain (dkim_from_domain) and the key chosen for it (dkim_select_keys:
 * last line per algorithm, dual keys, parent domains with
 * dkim_subdomains); and the signing job's outcomes with a generated key:
 * the same body hash and header list however the message is cut into
 * pieces, no From:, no key, a forced domain, an oversized header section;
 * jobs of one signer on four threads at once give the same signature.
 * That signatures verify is checked end to end against dkimpy
 * (tests/e2e/test_dkim.py).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
	/* Internationalized (SMTPUTF8): the A-labels name the key. */
	{" ann@b\xc3\xbc" "cher.example", 0, "xn--bcher-kva.example"},
	{" J\xc3\xbcrgen <j@B\xc3\x9c" "CHER.Example>", 0,
	 "xn--bcher-kva.example"},
	{" ann@\xd0\xbf\xd1\x80\xd0\xb8\xd0\xbc\xd0\xb5\xd1\x80.example", 0,
	 "xn--e1afmkfd.example"},
	{" ann@b\xc3" "cher.example", -EINVAL, NULL},      /* not UTF-8 */
	{" ann@b\xc3\xbc" "ch er.example", -EINVAL, NULL},
	{" ann@[b\xc3\xbc" "cher]", -EINVAL, NULL},
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

/* A signer with one generated RSA-2048 key for example.com (selector
 * "sel"), its file in a temporary directory: relayd's own path (compared
 * byte for byte with libopendkim's in tests/unit/test_dkim_canon.c). */
static struct dkim_signer *test_signer(char *path, size_t pathlen)
{
	char *pem = NULL, err[256];
	size_t len = 0;
	assert_int_equal(dkim_key_generate(DKIM_ALG_RSA, 2048, &pem, &len, err,
	                                   sizeof err), 0);
	char dir[] = "/tmp/test_dkim_XXXXXX";
	assert_non_null(mkdtemp(dir));
	snprintf(path, pathlen, "%s/k.pem", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(pem, 1, len, f), len);
	fclose(f);
	assert_int_equal(chmod(path, 0600), 0);
	free(pem);
	char line[600];
	snprintf(line, sizeof line, "example.com sel %s", path);
	char *lines[] = {line};
	struct dkim_signer *s = NULL;
	if (dkim_signer_new(lines, 1, false, NULL, &s, err, sizeof err) < 0)
		fail_msg("%s", err);
	return s;
}

static void test_signer_cleanup(const char *path)
{
	char dir[600];
	snprintf(dir, sizeof dir, "%s", path);
	unlink(path);
	*strrchr(dir, '/') = '\0';
	rmdir(dir);
}

/* The value of tag `name` in a DKIM-Signature block, blanks removed. */
static void tag(const char *sig, const char *name, char *out, size_t n)
{
	char flat[4096];
	size_t o = 0;
	for (const char *p = strchr(sig, ':') + 1; *p && o + 1 < sizeof flat; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			flat[o++] = *p;
	flat[o] = '\0';
	out[0] = '\0';
	for (char *save, *it = strtok_r(flat, ";", &save); it;
	     it = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(it, '=');
		if (eq && (size_t)(eq - it) == strlen(name) &&
		    strncmp(it, name, strlen(name)) == 0)
			snprintf(out, n, "%s", eq + 1);
	}
}

static const char msg[] =
    "Received: by relay.test (relayd)\r\n"
    "From: Ann <ann@Example.com>\r\n"
    "To: b@x.test\r\n"
    "Subject: pieces\r\n"
    "\tfolded\r\n"
    "\r\n"
    "line one\r\n"
    ".dot line\r\n"
    "\r\n"
    "\r\n";

static void test_job_pieces(void **state)
{
	(void)state;
	char path[600], dom[256], why[512];
	struct dkim_signer *s = test_signer(path, sizeof path);
	char *whole = NULL;
	assert_int_equal(dkim_sign_buf(s, "q", (const uint8_t *)msg,
	                               sizeof msg - 1, &whole, dom, sizeof dom,
	                               why, sizeof why), DKIM_SIGNED);
	assert_string_equal(dom, "example.com");
	assert_true(strncmp(whole, "DKIM-Signature: ", 16) == 0);
	char bh[128], h[512], want_bh[128], want_h[512], v[64];
	tag(whole, "bh", want_bh, sizeof want_bh);
	tag(whole, "h", want_h, sizeof want_h);
	assert_string_equal(want_h, "From:To:Subject:from");
	tag(whole, "a", v, sizeof v);
	assert_string_equal(v, "rsa-sha256");
	tag(whole, "c", v, sizeof v);
	assert_string_equal(v, "relaxed/relaxed");
	tag(whole, "l", v, sizeof v);
	assert_string_equal(v, "");
	/* Every cut into two pieces, and byte by byte. */
	for (size_t cut = 0; cut <= sizeof msg - 1; cut++) {
		struct dkim_job *j;
		assert_int_equal(dkim_job_new(s, "q", &j), 0);
		if (cut < sizeof msg - 1 && cut % 7 == 3) {
			for (size_t i = 0; i < sizeof msg - 1; i++)
				assert_int_equal(dkim_job_feed(j, (const uint8_t *)msg + i,
				                               1), 0);
		} else {
			assert_int_equal(dkim_job_feed(j, (const uint8_t *)msg, cut), 0);
			assert_int_equal(dkim_job_feed(j, (const uint8_t *)msg + cut,
			                               sizeof msg - 1 - cut), 0);
		}
		char *sig = NULL;
		assert_int_equal(dkim_job_finish(j, &sig, dom, sizeof dom, why,
		                                 sizeof why), DKIM_SIGNED);
		tag(sig, "bh", bh, sizeof bh);
		tag(sig, "h", h, sizeof h);
		if (strcmp(bh, want_bh) != 0 || strcmp(h, want_h) != 0)
			fail_msg("cut %zu: bh=%s h=%s", cut, bh, h);
		free(sig);
		dkim_job_free(j);
	}
	free(whole);
	dkim_signer_unref(s);
	test_signer_cleanup(path);
}

struct out_case {
	const char *name, *msg, *force;
	enum dkim_job_result res;
	const char *dom;
};

static void test_job_outcomes(void **state)
{
	(void)state;
	char path[600];
	struct dkim_signer *s = test_signer(path, sizeof path);
	static const struct out_case cases[] = {
		{"signed, header only", "From: a@example.com\r\n", NULL,
		 DKIM_SIGNED, "example.com"},
		{"no From", "Subject: x\r\n\r\nbody\r\n", NULL, DKIM_NO_FROM, ""},
		{"empty header section", "\r\nFrom: a@example.com\r\n", NULL,
		 DKIM_NO_FROM, ""},
		{"From without domain", "From: undisclosed\r\n\r\n", NULL,
		 DKIM_NO_FROM, ""},
		{"no key", "From: a@other.test\r\n\r\nx\r\n", NULL, DKIM_NO_KEY,
		 "other.test"},
		/* RFC 5322 §3.6: From: exactly once. Two (one ours, one not)
		 * must not get our signature: a verifier may align with one,
		 * the reader's MUA show the other. */
		{"two From fields, ours first", "From: a@example.com\r\nFrom: "
		 "ceo@bank.test\r\n\r\n", NULL, DKIM_NO_FROM, ""},
		{"two From fields, ours last", "From: a@other.test\r\nfrom: "
		 "b@example.com\r\n\r\nx\r\n", NULL, DKIM_NO_FROM, ""},
		{"From-like names are not From", "From: a@example.com\r\n"
		 "From-X: b@bank.test\r\nX-From: c@bank.test\r\n\r\n", NULL,
		 DKIM_SIGNED, "example.com"},
		{"subdomain needs dkim_subdomains",
		 "From: a@news.example.com\r\n\r\n", NULL, DKIM_NO_KEY,
		 "news.example.com"},
		{"forced: hostname's parent", "From: MAILER-DAEMON@mx.example.com"
		 "\r\n\r\n", "mx.example.com", DKIM_SIGNED, "mx.example.com"},
		{"forced: no key", "From: a@example.com\r\n\r\n", "relay.test",
		 DKIM_NO_KEY, "relay.test"},
		{"no CRLF at the end", "From: a@example.com", NULL, DKIM_FAILED,
		 ""},
		{"empty message", "", NULL, DKIM_NO_FROM, ""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const struct out_case *c = &cases[i];
		struct dkim_job *j;
		char *sig = NULL, dom[256], why[512];
		assert_int_equal(dkim_job_new(s, "q", &j), 0);
		if (c->force)
			dkim_job_set_domain(j, c->force);
		dkim_job_feed(j, (const uint8_t *)c->msg, strlen(c->msg));
		enum dkim_job_result r = dkim_job_finish(j, &sig, dom, sizeof dom,
		                                         why, sizeof why);
		if (r != c->res || strcmp(dom, c->dom) != 0)
			fail_msg("%s: result %d (%s), domain '%s'", c->name, (int)r,
			         why, dom);
		if ((r == DKIM_SIGNED) != (sig != NULL))
			fail_msg("%s: signature %p", c->name, (void *)sig);
		if (sig && c->force) {
			char d[64];
			tag(sig, "d", d, sizeof d);
			assert_string_equal(d, "example.com");   /* the parent's key */
		}
		free(sig);
		dkim_job_free(j);
	}
	/* A header section over DKIM_HEADER_MAX: a failure, not a crash. */
	struct dkim_job *j;
	assert_int_equal(dkim_job_new(s, "q", &j), 0);
	char *big = malloc(DKIM_HEADER_MAX + 64);
	assert_non_null(big);
	memcpy(big, "From: a@example.com\r\nX: ", 24);
	memset(big + 24, 'x', DKIM_HEADER_MAX + 64 - 24);
	assert_int_equal(dkim_job_feed(j, (const uint8_t *)big,
	                               DKIM_HEADER_MAX + 64), -EMSGSIZE);
	assert_int_equal(dkim_job_feed(j, (const uint8_t *)"\r\n\r\n", 4),
	                 -EINVAL);
	char *sig = NULL, dom[256], why[512];
	assert_int_equal(dkim_job_finish(j, &sig, dom, sizeof dom, why,
	                                 sizeof why), DKIM_FAILED);
	assert_null(sig);
	assert_non_null(strstr(why, "header section over"));
	dkim_job_free(j);
	free(big);
	dkim_signer_unref(s);
	test_signer_cleanup(path);
}

/* One signer, its jobs on four threads at once (as on libuv's pool):
 * every signature equals the one made alone (RSA PKCS#1 v1.5 and the
 * fixed t= are deterministic), so the shared EVP_PKEY is only read. */
struct thr {
	const struct dkim_signer *s;
	const char *want;
	int bad;
};

static void *sign_thread(void *arg)
{
	struct thr *t = arg;
	for (int i = 0; i < 25; i++) {
		char *sig = NULL, dom[256], why[512];
		if (dkim_sign_buf(t->s, "q", (const uint8_t *)msg, sizeof msg - 1,
		                  &sig, dom, sizeof dom, why, sizeof why) !=
		    DKIM_SIGNED || strcmp(sig, t->want) != 0)
			t->bad++;
		free(sig);
	}
	return NULL;
}

static void test_job_threads(void **state)
{
	(void)state;
	char path[600], dom[256], why[512], *want = NULL;
	struct dkim_signer *s = test_signer(path, sizeof path);
	assert_int_equal(dkim_signer_fixed_time(s, 1796515983), 0);
	assert_int_equal(dkim_sign_buf(s, "q", (const uint8_t *)msg,
	                               sizeof msg - 1, &want, dom, sizeof dom,
	                               why, sizeof why), DKIM_SIGNED);
	pthread_t th[4];
	struct thr t[4];
	for (int i = 0; i < 4; i++) {
		t[i] = (struct thr){s, want, 0};
		assert_int_equal(pthread_create(&th[i], NULL, sign_thread, &t[i]),
		                 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(t[i].bad, 0);
	}
	free(want);
	dkim_signer_unref(s);
	test_signer_cleanup(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_from_domain),
		cmocka_unit_test(test_from_domain_bounds),
		cmocka_unit_test(test_select),
		cmocka_unit_test(test_job_pieces),
		cmocka_unit_test(test_job_outcomes),
		cmocka_unit_test(test_job_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
