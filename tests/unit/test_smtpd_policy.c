/*
 * tests/unit/test_smtpd_policy.c - The relay policy building blocks
 * (smtpd/smtpd_policy.h): a table of domain allowlist matches (exact,
 * case-insensitive, the evil look-alikes, <>, UTF-8), list parse errors,
 * rate spec parsing, the sliding-window limiter (windows, weighting, the
 * "next allowed" time, peek, eviction of the least recent key), the
 * lockout tracker (growth, cap, release, decay), and client IP keys.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "smtpd/smtpd_policy.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- domain allowlists ------------------------------------------------ */

static const struct {
	const char *list;
	const char *addr;
	bool rcpt_ok;     /* smtpd_policy_domain_ok */
	bool sender_ok;   /* smtpd_policy_sender_ok */
} domain_cases[] = {
	{"example.com", "a@example.com", true, true},
	{"example.com", "a@EXAMPLE.COM", true, true},
	{"EXAMPLE.com", "a@example.Com", true, true},
	{"example.com", "A.B+tag@example.com", true, true},
	/* the look-alikes: never */
	{"example.com", "a@example.com.evil.org", false, false},
	{"example.com", "a@evil-example.com", false, false},
	{"example.com", "a@evilexample.com", false, false},
	{"example.com", "a@sub.example.com", false, false},   /* no subdomains */
	{"example.com", "a@example.co", false, false},
	{"example.com", "a@example.comm", false, false},
	{"example.com", "a@xample.com", false, false},
	{"sub.example.com", "a@example.com", false, false},
	/* the domain is after the last '@' outside quotes */
	{"example.com", "\"x@example.com\"@evil.org", false, false},
	{"evil.org", "\"x@example.com\"@evil.org", true, true},
	/* null sender, no domain */
	{"example.com", "", false, true},
	{"example.com", "postmaster", false, false},
	{"example.com", "a@", false, false},
	/* empty list: everything */
	{"", "a@anything.example", true, true},
	{"  ", "a@anything.example", true, true},
	{"", "", true, true},
	{"", "postmaster", true, true},
	/* several entries, blanks */
	{" a.org , example.com,b.net ", "x@b.net", true, true},
	{" a.org , example.com,b.net ", "x@example.com", true, true},
	{" a.org , example.com,b.net ", "x@c.net", false, false},
	{"a.org,a.org,A.ORG", "x@a.org", true, true},
	/* UTF-8: bytewise after ASCII lowercasing */
	{"b\xc3\xbc" "cher.example", "x@B\xc3\xbc" "CHER.example", true, true},
	{"b\xc3\xbc" "cher.example", "x@B\xc3\x9c" "CHER.example", false, false},
	{"b\xc3\xbc" "cher.example", "x@xn--bcher-kva.example", false, false},
	{"xn--bcher-kva.example", "x@XN--BCHER-KVA.example", true, true},
	/* address literals match as text */
	{"[192.0.2.1]", "x@[192.0.2.1]", true, true},
	{"[192.0.2.1]", "x@[192.0.2.10]", false, false},
};

static void test_domains_match(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(domain_cases); i++) {
		char err[256];
		struct smtpd_domains *d = NULL;
		int r = smtpd_domains_parse(domain_cases[i].list, &d, err, sizeof err);
		if (r)
			fail_msg("case %zu: parse \"%s\": %s", i, domain_cases[i].list,
			         err);
		if (smtpd_policy_domain_ok(d, domain_cases[i].addr) !=
		    domain_cases[i].rcpt_ok)
			fail_msg("case %zu: rcpt \"%s\" against \"%s\": want %d", i,
			         domain_cases[i].addr, domain_cases[i].list,
			         domain_cases[i].rcpt_ok);
		if (smtpd_policy_sender_ok(d, domain_cases[i].addr) !=
		    domain_cases[i].sender_ok)
			fail_msg("case %zu: sender \"%s\" against \"%s\": want %d", i,
			         domain_cases[i].addr, domain_cases[i].list,
			         domain_cases[i].sender_ok);
		smtpd_domains_free(d);
	}
	/* NULL list: allows all. */
	assert_true(smtpd_policy_domain_ok(NULL, "a@b.c"));
	assert_true(smtpd_policy_sender_ok(NULL, ""));
	smtpd_domains_free(NULL);
}

static void test_domains_parse(void **state)
{
	(void)state;
	struct smtpd_domains *d = NULL;
	char err[256];
	assert_int_equal(smtpd_domains_parse("b.org, A.org ,a.ORG", &d, err,
	                                     sizeof err), 0);
	assert_int_equal(smtpd_domains_count(d), 2);
	smtpd_domains_free(d);
	assert_int_equal(smtpd_domains_parse(NULL, &d, err, sizeof err), 0);
	assert_int_equal(smtpd_domains_count(d), 0);
	smtpd_domains_free(d);

	static const char *const bad[] = {
		",", "a.com,", ",a.com", "a.com,,b.com", "a.com, ,b.com",
		"*.example.com", ".example.com", "a@example.com", "exa mple.com",
		"a..com", "a.com.", "a_b.com", "a.com;b.com", "a\tb.com", "[1.2.3.4",
		"[]", "exa\x01mple.com",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		d = (struct smtpd_domains *)1;
		err[0] = '\0';
		int r = smtpd_domains_parse(bad[i], &d, err, sizeof err);
		if (r != -EINVAL)
			fail_msg("\"%s\": want -EINVAL, got %d", bad[i], r);
		if (!err[0])
			fail_msg("\"%s\": no message", bad[i]);
		/* Control characters never reach the message raw. */
		assert_null(strchr(err, '\x01'));
	}
	/* The wildcard message says why. */
	assert_int_equal(smtpd_domains_parse("*.example.com", &d, err, sizeof err),
	                 -EINVAL);
	assert_non_null(strstr(err, "subdomains"));
	/* 255 characters pass, 256 do not. */
	char longd[300];
	memset(longd, 'a', sizeof longd);
	for (size_t i = 63; i < 255; i += 64)
		longd[i] = '.';
	longd[255] = '\0';
	assert_int_equal(smtpd_domains_parse(longd, &d, err, sizeof err), 0);
	smtpd_domains_free(d);
	longd[255] = 'a';
	longd[256] = '\0';
	assert_int_equal(smtpd_domains_parse(longd, &d, err, sizeof err), -EINVAL);
}

/* ---- rate specs ---------------------------------------------------------- */

static const struct {
	const char *spec;
	int rc;
	uint32_t limit;
	uint64_t window_ms;
} spec_cases[] = {
	{"30/60s", 0, 30, 60000},
	{"100/10m", 0, 100, 600000},
	{"500/1h", 0, 500, 3600000},
	{"20/m", 0, 20, 60000},
	{"1000/d", 0, 1000, 86400000},
	{"7/1d", 0, 7, 86400000},
	{" 5 / 30s ", 0, 5, 30000},
	{"1/1s", 0, 1, 1000},
	{"1000000000/7d", 0, 1000000000, 604800000},
	{"", 0, 0, 0},
	{"0", 0, 0, 0},
	{"  ", 0, 0, 0},
	{"0/60s", -EINVAL, 0, 0},
	{"1000000001/60s", -EINVAL, 0, 0},
	{"10", -EINVAL, 0, 0},
	{"10/", -EINVAL, 0, 0},
	{"10/60", -EINVAL, 0, 0},
	{"10/0s", -EINVAL, 0, 0},
	{"10/8d", -EINVAL, 0, 0},
	{"10/169h", -EINVAL, 0, 0},
	{"10/60x", -EINVAL, 0, 0},
	{"10/60sec", -EINVAL, 0, 0},
	{"10/minute", -EINVAL, 0, 0},
	{"-1/60s", -EINVAL, 0, 0},
	{"/60s", -EINVAL, 0, 0},
	{"10/60 s", -EINVAL, 0, 0},
	{"10/99999999999999999999s", -EINVAL, 0, 0},
	{"99999999999999999999/1s", -EINVAL, 0, 0},
};

static void test_rate_parse(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(spec_cases); i++) {
		struct smtpd_rate_spec s = {123, 456};
		int r = smtpd_rate_parse(spec_cases[i].spec, &s);
		if (r != spec_cases[i].rc)
			fail_msg("\"%s\": rc %d, want %d", spec_cases[i].spec, r,
			         spec_cases[i].rc);
		if (r == 0 && (s.limit != spec_cases[i].limit ||
		               s.window_ms != spec_cases[i].window_ms))
			fail_msg("\"%s\": %u/%llu", spec_cases[i].spec, s.limit,
			         (unsigned long long)s.window_ms);
	}
}

/* ---- rate limiter ------------------------------------------------------- */

#define MIN 60000u
/* Aligned on a window, far from 0. */
#define T (UINT64_C(1700000000) * 1000 / MIN * MIN)

static void test_rate_window(void **state)
{
	(void)state;
	struct smtpd_rate *r = smtpd_rate_new(16);
	assert_non_null(r);
	uint64_t next = 0;
	/* 10 per minute: the first 10 in a window pass. */
	for (int i = 0; i < 10; i++) {
		assert_true(smtpd_rate_hit(r, "192.0.2.1", T + (uint64_t)i, 10, MIN,
		                           &next));
		assert_int_equal(next, T + (uint64_t)i);
	}
	assert_false(smtpd_rate_hit(r, "192.0.2.1", T + 10, 10, MIN, &next));
	/* The full window weighted (1 - x/60000): 10*(60000-x) + 60000 <=
	 * 600000 first at x = 6000 into the next window. */
	assert_int_equal(next, T + MIN + 6000);
	/* Refused hits do not count: still the same answer later on. */
	assert_false(smtpd_rate_hit(r, "192.0.2.1", T + 30000, 10, MIN, &next));
	assert_int_equal(next, T + MIN + 6000);
	assert_false(smtpd_rate_peek(r, "192.0.2.1", T + MIN + 5999, 10, MIN,
	                             &next));
	assert_int_equal(next, T + MIN + 6000);
	assert_false(smtpd_rate_hit(r, "192.0.2.1", T + MIN + 5999, 10, MIN,
	                            &next));
	assert_int_equal(next, T + MIN + 6000);
	assert_true(smtpd_rate_hit(r, "192.0.2.1", T + MIN + 6000, 10, MIN,
	                           &next));
	/* Now prev = 10, cur = 1: the next needs 10*(60000-x) + 2*60000 <=
	 * 600000, x >= 12000. */
	assert_false(smtpd_rate_hit(r, "192.0.2.1", T + MIN + 6001, 10, MIN,
	                            &next));
	assert_int_equal(next, T + MIN + 12000);
	/* Other keys are independent. */
	assert_true(smtpd_rate_hit(r, "192.0.2.2", T + 10, 10, MIN, NULL));
	/* Two windows later everything is forgotten. */
	for (int i = 0; i < 10; i++)
		assert_true(smtpd_rate_hit(r, "192.0.2.1", T + 3 * MIN + 1, 10, MIN,
		                           NULL));
	assert_false(smtpd_rate_hit(r, "192.0.2.1", T + 3 * MIN + 1, 10, MIN,
	                            &next));
	/* cur = 10 = limit, no room in this window: next window, at x =
	 * 60000 - 9*60000/10. */
	assert_int_equal(next, T + 4 * MIN + 6000);
	/* limit 1: the next allowed is two windows on, when prev is gone. */
	assert_true(smtpd_rate_hit(r, "one", T + 5, 1, MIN, NULL));
	assert_false(smtpd_rate_hit(r, "one", T + 6, 1, MIN, &next));
	assert_int_equal(next, T + 2 * MIN);
	assert_false(smtpd_rate_hit(r, "one", T + 2 * MIN - 1, 1, MIN, NULL));
	assert_true(smtpd_rate_hit(r, "one", T + 2 * MIN, 1, MIN, NULL));
	/* No limit: always, nothing stored. */
	size_t n = smtpd_rate_count(r);
	for (int i = 0; i < 100; i++)
		assert_true(smtpd_rate_hit(r, "free", T, 0, MIN, NULL));
	assert_true(smtpd_rate_hit(r, "free", T, 5, 0, NULL));
	assert_int_equal(smtpd_rate_count(r), n);
	smtpd_rate_free(r);
	smtpd_rate_free(NULL);
}

/* Whatever the pattern of hits, the "next allowed" time is exact: a hit
 * just before it is refused, one at it is allowed. */
static void test_rate_next_exact(void **state)
{
	(void)state;
	static const uint32_t limits[] = {1, 2, 3, 7, 10, 100};
	static const uint64_t windows[] = {1000, 60000, 3600000};
	uint32_t seed = 12345;
	for (size_t li = 0; li < ARRAY_LEN(limits); li++)
		for (size_t wi = 0; wi < ARRAY_LEN(windows); wi++) {
			struct smtpd_rate *a = smtpd_rate_new(4);
			uint64_t w = windows[wi], now = T;
			for (int step = 0; step < 300; step++) {
				seed = seed * 1103515245 + 12345;
				now += (seed >> 8) % (w / 4 + 1);
				uint64_t next;
				if (smtpd_rate_hit(a, "k", now, limits[li], w, &next)) {
					assert_int_equal(next, now);
					continue;
				}
				assert_true(next > now);
				if (next - 1 > now)
					assert_false(smtpd_rate_peek(a, "k", next - 1, limits[li],
					                             w, NULL));
				assert_true(smtpd_rate_peek(a, "k", next, limits[li], w,
				                            NULL));
			}
			smtpd_rate_free(a);
		}
}

static void test_rate_evict(void **state)
{
	(void)state;
	struct smtpd_rate *r = smtpd_rate_new(3);
	/* a, b, c full: each at its limit of 1. */
	assert_true(smtpd_rate_hit(r, "a", T, 1, MIN, NULL));
	assert_true(smtpd_rate_hit(r, "b", T + 1, 1, MIN, NULL));
	assert_true(smtpd_rate_hit(r, "c", T + 2, 1, MIN, NULL));
	assert_int_equal(smtpd_rate_count(r), 3);
	/* a is hit again (refused), so b is now the least recent. */
	assert_false(smtpd_rate_hit(r, "a", T + 3, 1, MIN, NULL));
	assert_true(smtpd_rate_hit(r, "d", T + 4, 1, MIN, NULL));
	assert_int_equal(smtpd_rate_count(r), 3);
	assert_int_equal(smtpd_rate_evicted(r), 1);
	/* b was forgotten: allowed again. a and c were kept. */
	assert_false(smtpd_rate_peek(r, "a", T + 5, 1, MIN, NULL));
	assert_false(smtpd_rate_peek(r, "c", T + 5, 1, MIN, NULL));
	assert_false(smtpd_rate_peek(r, "d", T + 5, 1, MIN, NULL));
	assert_true(smtpd_rate_peek(r, "b", T + 5, 1, MIN, NULL));
	/* Peeking an unknown key adds nothing. */
	assert_int_equal(smtpd_rate_count(r), 3);
	assert_int_equal(smtpd_rate_evicted(r), 1);
	smtpd_rate_free(r);

	/* Many keys through a small table: bounded, and a hammered key is
	 * never the one evicted. */
	r = smtpd_rate_new(64);
	char key[32];
	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
		smtpd_rate_hit(r, key, T + (uint64_t)i, 5, MIN, NULL);
		smtpd_rate_hit(r, "attacker", T + (uint64_t)i, 5, MIN, NULL);
		assert_true(smtpd_rate_count(r) <= 64);
	}
	assert_false(smtpd_rate_peek(r, "attacker", T + 10000, 5, MIN, NULL));
	assert_int_equal(smtpd_rate_evicted(r), 10000 + 1 - 64);
	smtpd_rate_free(r);

	/* Keys count only up to SMTPD_RATE_KEY_MAX bytes. */
	r = smtpd_rate_new(8);
	char k1[200], k2[200];
	memset(k1, 'x', sizeof k1);
	memcpy(k2, k1, sizeof k2);
	k1[199] = k2[199] = '\0';
	k2[150] = 'y';
	assert_true(smtpd_rate_hit(r, k1, T, 1, MIN, NULL));
	assert_false(smtpd_rate_hit(r, k2, T, 1, MIN, NULL));
	smtpd_rate_free(r);

	assert_null(smtpd_rate_new(0));
}

static void test_rate_window_change_and_clock(void **state)
{
	(void)state;
	struct smtpd_rate *r = smtpd_rate_new(4);
	assert_true(smtpd_rate_hit(r, "k", T, 1, MIN, NULL));
	assert_false(smtpd_rate_hit(r, "k", T + 1, 1, MIN, NULL));
	/* A new window (SIGHUP changed the spec): afresh. */
	assert_true(smtpd_rate_hit(r, "k", T + 2, 1, 10 * MIN, NULL));
	assert_false(smtpd_rate_hit(r, "k", T + 3, 1, 10 * MIN, NULL));
	/* The clock goes back before the window: treated as its start, still
	 * refused, never an underflow. */
	uint64_t next;
	assert_false(smtpd_rate_hit(r, "k", T - 5 * MIN, 1, 10 * MIN, &next));
	/* limit 1: two windows of 10 minutes after the aligned start. */
	uint64_t start = (T + 2) - (T + 2) % (10 * MIN);
	assert_int_equal(next, start + 20 * MIN);
	smtpd_rate_free(r);
}

/* ---- client IP keys ----------------------------------------------------- */

static void test_ip_key(void **state)
{
	(void)state;
	struct sockaddr_in s4 = {.sin_family = AF_INET};
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	char out[64];
	inet_pton(AF_INET, "192.0.2.33", &s4.sin_addr);
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s4, 64, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "192.0.2.33");

	inet_pton(AF_INET6, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", &s6.sin6_addr);
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 64, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "2001:db8:1:2::/64");
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 56, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "2001:db8:1::/56");
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 60, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "2001:db8:1::/60");
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 128, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "2001:db8:1:2:aaaa:bbbb:cccc:dddd/128");
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 129, out,
	                                     sizeof out), -EINVAL);

	inet_pton(AF_INET6, "::ffff:198.51.100.7", &s6.sin6_addr);
	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s6, 64, out,
	                                     sizeof out), 0);
	assert_string_equal(out, "198.51.100.7");

	assert_int_equal(smtpd_policy_ip_key((struct sockaddr *)&s4, 64, out, 5),
	                 -ENOBUFS);
	struct sockaddr un = {.sa_family = AF_UNIX};
	assert_int_equal(smtpd_policy_ip_key(&un, 64, out, sizeof out),
	                 -EAFNOSUPPORT);
}

static void test_quota_over(void **state)
{
	(void)state;
	static const struct {
		uint32_t hour, day, hourly, daily, n;
		const char *which;
		uint32_t used, limit;
	} cases[] = {
		{0, 0, 0, 0, 1, NULL, 0, 0},            /* no limits */
		{1000, 5000, 0, 0, 1, NULL, 0, 0},
		{1, 1, 2, 0, 1, NULL, 0, 0},            /* the last unit */
		{2, 2, 2, 0, 1, "hourly", 2, 2},
		{2, 2, 2, 3, 1, "hourly", 2, 2},        /* hourly looked at first */
		{0, 3, 2, 3, 1, "daily", 3, 3},
		{1, 2, 2, 3, 1, NULL, 0, 0},
		{1, 2, 2, 3, 2, "hourly", 1, 2},        /* n counts */
		{0, 2, 0, 3, 2, "daily", 2, 3},
		{UINT32_MAX, 0, UINT32_MAX, 0, 1, "hourly", UINT32_MAX,
		 UINT32_MAX},                           /* no wrap */
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		uint32_t used = 0, limit = 0;
		const char *w = smtpd_policy_quota_over(
			cases[i].hour, cases[i].day, cases[i].hourly, cases[i].daily,
			cases[i].n, &used, &limit);
		if (!cases[i].which) {
			if (w)
				fail_msg("case %zu: got %s", i, w);
			continue;
		}
		if (!w || strcmp(w, cases[i].which) != 0)
			fail_msg("case %zu: got %s, want %s", i, w ? w : "NULL",
			         cases[i].which);
		assert_int_equal(used, cases[i].used);
		assert_int_equal(limit, cases[i].limit);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_domains_match),
		cmocka_unit_test(test_domains_parse),
		cmocka_unit_test(test_rate_parse),
		cmocka_unit_test(test_rate_window),
		cmocka_unit_test(test_rate_next_exact),
		cmocka_unit_test(test_rate_evict),
		cmocka_unit_test(test_rate_window_change_and_clock),
		cmocka_unit_test(test_ip_key),
		cmocka_unit_test(test_quota_over),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
