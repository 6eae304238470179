/*
 * tests/unit/test_smtpd_cidr.c - The CIDR lists of trusted_networks and
 * auth_plaintext_networks: parsing (a table of good and bad texts) and
 * matching IPv4, IPv6 and IPv4-mapped addresses at prefix edges.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "smtpd/smtpd_cidr.h"

struct parse_case {
	const char *text;
	int rc;
	size_t n;             /* networks when rc == 0 */
	const char *err;      /* substring of the message when rc < 0 */
};

static const struct parse_case parse_cases[] = {
	{"", 0, 0, NULL},
	{"   ", 0, 0, NULL},
	{"127.0.0.0/8, ::1/128", 0, 2, NULL},
	{"127.0.0.1", 0, 1, NULL},
	{"::1", 0, 1, NULL},
	{"0.0.0.0/0", 0, 1, NULL},
	{"::/0", 0, 1, NULL},
	{" 10.0.0.0/8 ,192.168.0.0/16,\t2001:db8::/32 ", 0, 3, NULL},
	{"10.1.2.3/8", -EINVAL, 0, "host bits set"},
	{"2001:db8::1/32", -EINVAL, 0, "host bits set"},
	{"10.0.0.0/33", -EINVAL, 0, "prefix longer than 32"},
	{"::/129", -EINVAL, 0, "prefix longer than 128"},
	{"10.0.0.0/", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/x", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/-1", -EINVAL, 0, "bad prefix length"},
	{"example.com", -EINVAL, 0, "not an address"},
	{"10.0.0", -EINVAL, 0, "not an address"},
	{"10.0.0.0/8,", -EINVAL, 0, "empty item"},
	{",10.0.0.0/8", -EINVAL, 0, "empty item"},
	{"10.0.0.0/8,,::1", -EINVAL, 0, "empty item"},
	{"[::1]", -EINVAL, 0, "not an address"},
	{"1.2.3.4\x01", -EINVAL, 0, "not an address"},
};

static void test_parse(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof parse_cases / sizeof *parse_cases; i++) {
		const struct parse_case *c = &parse_cases[i];
		struct smtpd_cidr_list l;
		char err[200] = "";
		int rc = smtpd_cidr_parse(c->text, &l, err, sizeof err);
		if (rc != c->rc)
			fail_msg("'%s': rc %d, want %d (%s)", c->text, rc, c->rc, err);
		if (rc == 0 && l.n != c->n)
			fail_msg("'%s': %zu networks, want %zu", c->text, l.n, c->n);
		if (rc < 0 && (!strstr(err, c->err) || l.n != 0))
			fail_msg("'%s': message '%s', want '%s'", c->text, err, c->err);
	}
}

static void test_too_many(void **state)
{
	(void)state;
	char text[4096] = "";
	for (int i = 0; i < SMTPD_CIDR_MAX + 1; i++) {
		char item[32];
		snprintf(item, sizeof item, "%s10.0.%d.0/24", i ? "," : "", i);
		strcat(text, item);
	}
	struct smtpd_cidr_list l;
	char err[200];
	assert_int_equal(smtpd_cidr_parse(text, &l, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "more than"));
}

struct match_case {
	const char *list, *ip;
	bool match;
};

static const struct match_case match_cases[] = {
	{"127.0.0.0/8, ::1/128", "127.0.0.1", true},
	{"127.0.0.0/8, ::1/128", "127.255.255.255", true},
	{"127.0.0.0/8, ::1/128", "128.0.0.1", false},
	{"127.0.0.0/8, ::1/128", "::1", true},
	{"127.0.0.0/8, ::1/128", "::2", false},
	{"127.0.0.0/8, ::1/128", "::ffff:127.0.0.9", true},   /* mapped */
	{"127.0.0.1/32", "127.0.0.1", true},
	{"127.0.0.1/32", "127.0.0.2", false},
	{"127.0.0.1", "127.0.0.2", false},
	{"192.168.0.0/23", "192.168.1.255", true},
	{"192.168.0.0/23", "192.168.2.0", false},
	{"10.0.0.0/9", "10.127.0.1", true},
	{"10.0.0.0/9", "10.128.0.1", false},
	{"2001:db8::/33", "2001:db8:7fff::1", true},
	{"2001:db8::/33", "2001:db8:8000::1", false},
	{"0.0.0.0/0", "203.0.113.9", true},
	{"0.0.0.0/0", "::1", false},           /* families never mix */
	{"::/0", "2001:db8::1", true},
	{"::/0", "127.0.0.1", false},
	{"", "127.0.0.1", false},
	{"", "::1", false},
	{"127.0.0.0/8", "not an ip", false},
};

static void test_match(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof match_cases / sizeof *match_cases; i++) {
		const struct match_case *c = &match_cases[i];
		struct smtpd_cidr_list l;
		char err[200];
		if (smtpd_cidr_parse(c->list, &l, err, sizeof err) != 0)
			fail_msg("'%s': %s", c->list, err);
		if (smtpd_cidr_match_text(&l, c->ip) != c->match)
			fail_msg("'%s' in '%s': want %d", c->ip, c->list, c->match);
	}
}

static void test_match_sockaddr(void **state)
{
	(void)state;
	struct smtpd_cidr_list l;
	char err[200];
	assert_int_equal(smtpd_cidr_parse("127.0.0.1/32, ::1", &l, err,
	                                  sizeof err), 0);
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(25)};
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	assert_true(smtpd_cidr_match(&l, (struct sockaddr *)&in));
	inet_pton(AF_INET, "127.0.0.2", &in.sin_addr);
	assert_false(smtpd_cidr_match(&l, (struct sockaddr *)&in));
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
	inet_pton(AF_INET6, "::1", &in6.sin6_addr);
	assert_true(smtpd_cidr_match(&l, (struct sockaddr *)&in6));
	struct sockaddr un = {.sa_family = AF_UNIX};
	assert_false(smtpd_cidr_match(&l, &un));
	assert_false(smtpd_cidr_match(&l, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_too_many),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_match_sockaddr),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
