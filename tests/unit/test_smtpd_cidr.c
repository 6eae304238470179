/*
 * tests/unit/test_smtpd_cidr.c - The CIDR lists of trusted_networks,
 * auth_plaintext_networks and deny_networks: parsing (a table of good
 * and bad texts, with the messages they give), the bound on the list,
 * and matching IPv4, IPv6 and IPv4-mapped addresses (as client and as
 * entry) at prefix edges, with the entry that matched as the log line
 * shows it.
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
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "smtpd/smtpd_cidr.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct parse_case {
	const char *text;
	int rc;
	size_t n;             /* networks when rc == 0 */
	const char *err;      /* substring of the message when rc < 0 */
};

static const struct parse_case parse_cases[] = {
	{"", 0, 0, NULL},
	{"   ", 0, 0, NULL},
	{NULL, 0, 0, NULL},
	{"127.0.0.0/8, ::1/128", 0, 2, NULL},
	{"127.0.0.1", 0, 1, NULL},
	{"::1", 0, 1, NULL},
	{"0.0.0.0/0", 0, 1, NULL},
	{"::/0", 0, 1, NULL},
	{" 10.0.0.0/8 ,192.168.0.0/16,\t2001:db8::/32 ", 0, 3, NULL},
	{"1.2.3.4, ::1, 10.0.0.0/8", 0, 3, NULL},
	{"0000:0000:0000:0000:0000:ffff:255.255.255.255/128", 0, 1, NULL},
	/* host bits: the message names the network the prefix gives */
	{"10.1.2.3/8", -EINVAL, 0, "'10.1.2.3/8': host bits set"},
	{"10.0.0.1/8", -EINVAL, 0, "the network is 10.0.0.0/8"},
	{"192.0.2.1/24", -EINVAL, 0, "the network is 192.0.2.0/24"},
	{"2001:db8::1/32", -EINVAL, 0, "the network is 2001:db8::/32"},
	/* prefix lengths: the e2e tests expect both wordings of /33 */
	{"10.0.0.0/33", -EINVAL, 0, "prefix longer than 32"},
	{"10.0.0.0/33", -EINVAL, 0, "bad prefix length (expected 0-32)"},
	{"::/129", -EINVAL, 0, "'::/129': prefix longer than 128"},
	{"::/129", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/x", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/-1", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/+8", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/08", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/8/8", -EINVAL, 0, "bad prefix length"},
	{"10.0.0.0/ 8", -EINVAL, 0, "bad prefix length"},
	{"::/1000", -EINVAL, 0, "bad prefix length (expected 0-128)"},
	/* not addresses */
	{"example.com", -EINVAL, 0, "'example.com': not an address"},
	{"10.0.0", -EINVAL, 0, "not an address"},
	{"10.0.0.256", -EINVAL, 0, "not an address"},
	{"010.0.0.1", -EINVAL, 0, "not an address"},
	{"*", -EINVAL, 0, "not an address"},
	{"10.0.0.0 /8", -EINVAL, 0, "not an address"},
	{"fe80::1%eth0", -EINVAL, 0, "not an address"},
	{"2001:db8:::1", -EINVAL, 0, "not an address"},
	{"[::1]", -EINVAL, 0, "not an address"},
	{"1.2.3.4\x01", -EINVAL, 0, "not an address"},
	{"10.0.0.0\x01/8", -EINVAL, 0, "\\x01"},   /* escaped */
	{"1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd:e",
	 -EINVAL, 0, "not an address or network"},
	/* empty items */
	{"10.0.0.0/8,", -EINVAL, 0, "empty item"},
	{",10.0.0.0/8", -EINVAL, 0, "empty item"},
	{"10.0.0.0/8,,::1", -EINVAL, 0, "empty item"},
	{"10.0.0.0/8, ,::1", -EINVAL, 0, "empty item"},
};

static void test_parse(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct smtpd_cidr_list l;
		char err[256] = "";
		int rc = smtpd_cidr_parse(c->text, &l, err, sizeof err);
		if (rc != c->rc)
			fail_msg("case %zu '%s': rc %d, want %d (%s)", i, c->text, rc,
			         c->rc, err);
		if (rc == 0 && l.n != c->n)
			fail_msg("'%s': %zu networks, want %zu", c->text, l.n, c->n);
		/* on error: the empty list, holding no memory */
		if (rc < 0 && (!strstr(err, c->err) || l.n != 0 || l.net))
			fail_msg("'%s': message '%s', want '%s'", c->text, err, c->err);
		smtpd_cidr_list_free(&l);
	}
}

/* "10.x.y.0/24" items, count of them, in a new string. */
static char *many(int count)
{
	char *text = malloc((size_t)count * 16 + 1);
	assert_non_null(text);
	size_t len = 0;
	for (int i = 0; i < count; i++)
		len += (size_t)sprintf(text + len, "%s10.%d.%d.0/24", i ? "," : "",
		                       i / 256, i % 256);
	text[len] = '\0';
	return text;
}

static void test_bound(void **state)
{
	(void)state;
	struct smtpd_cidr_list l;
	char err[200];
	/* past the old fixed 64, up to the bound: the list grows */
	int ok[] = {65, 1000, SMTPD_CIDR_MAX};
	for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
		char *text = many(ok[i]);
		assert_int_equal(smtpd_cidr_parse(text, &l, err, sizeof err), 0);
		assert_int_equal(l.n, ok[i]);
		assert_true(smtpd_cidr_match_text(&l, "10.0.64.1"));
		char last[32];
		snprintf(last, sizeof last, "10.%d.%d.9", (ok[i] - 1) / 256,
		         (ok[i] - 1) % 256);
		assert_true(smtpd_cidr_match_text(&l, last));
		assert_false(smtpd_cidr_match_text(&l, "11.0.0.1"));
		smtpd_cidr_list_free(&l);
		free(text);
	}
	char *text = many(SMTPD_CIDR_MAX + 1);
	assert_int_equal(smtpd_cidr_parse(text, &l, err, sizeof err), -EINVAL);
	assert_string_equal(err, "more than 4096 networks");
	assert_int_equal(l.n, 0);
	assert_null(l.net);
	free(text);
}

struct match_case {
	const char *list, *ip;
	bool match;
	const char *which;    /* the entry found, when match; NULL: unchecked */
};

static const struct match_case match_cases[] = {
	{"127.0.0.0/8, ::1/128", "127.0.0.1", true, "127.0.0.0/8"},
	{"127.0.0.0/8, ::1/128", "127.255.255.255", true, "127.0.0.0/8"},
	{"127.0.0.0/8, ::1/128", "128.0.0.1", false, NULL},
	{"127.0.0.0/8, ::1/128", "::1", true, "::1/128"},
	{"127.0.0.0/8, ::1/128", "::2", false, NULL},
	{"127.0.0.0/8, ::1/128", "::ffff:127.0.0.9", true, "127.0.0.0/8"},
	{"127.0.0.1/32", "127.0.0.1", true, "127.0.0.1/32"},
	{"127.0.0.1/32", "127.0.0.2", false, NULL},
	{"127.0.0.1", "127.0.0.2", false, NULL},
	{"127.0.0.2", "127.0.0.2", true, "127.0.0.2/32"},   /* bare host */
	{"192.168.0.0/23", "192.168.1.255", true, "192.168.0.0/23"},
	{"192.168.0.0/23", "192.168.2.0", false, NULL},
	{"192.0.2.0/24", "192.0.2.0", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "192.0.2.255", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "192.0.3.0", false, NULL},
	{"192.0.2.0/24", "192.0.1.255", false, NULL},
	{"10.0.0.0/8", "10.255.1.2", true, "10.0.0.0/8"},
	{"10.0.0.0/9", "10.127.0.1", true, "10.0.0.0/9"},
	{"10.0.0.0/9", "10.128.0.1", false, NULL},
	{"10.128.0.0/9", "10.128.0.1", true, "10.128.0.0/9"},
	{"2001:db8::/33", "2001:db8:7fff::1", true, "2001:db8::/33"},
	{"2001:DB8::/33", "2001:db8:7fff::1", true, "2001:db8::/33"},
	{"2001:db8::/33", "2001:db8:8000::1", false, NULL},
	{"2001:db8::/32", "2001:db8:ffff::1", true, "2001:db8::/32"},
	{"2001:db8::/32", "2001:db9::1", false, NULL},
	{"2001:db8:0:1::/64", "2001:db8:0:1:ffff::1", true, "2001:db8:0:1::/64"},
	{"::1", "::1", true, "::1/128"},
	{"0.0.0.0/0", "203.0.113.9", true, "0.0.0.0/0"},
	{"0.0.0.0/0", "::1", false, NULL},           /* families never mix */
	{"0.0.0.0/0", "2001:db8::1", false, NULL},
	{"::/0", "2001:db8::1", true, "::/0"},
	{"::/0", "127.0.0.1", false, NULL},
	{"::/0", "::ffff:127.0.0.1", false, NULL},   /* mapped is IPv4 */
	/* a client on a dual-stack socket: IPv4-mapped counts as IPv4 */
	{"192.0.2.0/24", "::ffff:192.0.2.7", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "::ffff:192.0.3.7", false, NULL},
	/* an IPv4-mapped entry names IPv4 addresses */
	{"::ffff:192.0.2.0/120", "192.0.2.7", true, "192.0.2.0/24"},
	{"::ffff:192.0.2.0/120", "::ffff:192.0.2.7", true, "192.0.2.0/24"},
	{"::ffff:192.0.2.0/120", "192.0.3.7", false, NULL},
	{"::ffff:10.0.0.0/104", "10.9.8.7", true, "10.0.0.0/8"},
	{"::ffff:0.0.0.0/96", "198.51.100.1", true, "0.0.0.0/0"},
	{"::ffff:192.0.2.9", "192.0.2.9", true, "192.0.2.9/32"},
	/* lists: the first match is the one found; blanks around items */
	{" 10.0.0.0/8 ,\t192.0.2.0/24 , ::1 ", "192.0.2.1", true, "192.0.2.0/24"},
	{"10.0.0.0/8, 10.1.0.0/16", "10.1.2.3", true, "10.0.0.0/8"},
	{"10.0.0.0/8, ::1", "::1", true, "::1/128"},
	{"", "127.0.0.1", false, NULL},
	{"", "::1", false, NULL},
	{"   ", "::1", false, NULL},
	{"127.0.0.0/8", "not an ip", false, NULL},
};

static void test_match(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(match_cases); i++) {
		const struct match_case *c = &match_cases[i];
		struct smtpd_cidr_list l;
		char err[200];
		if (smtpd_cidr_parse(c->list, &l, err, sizeof err) != 0)
			fail_msg("'%s': %s", c->list, err);
		if (smtpd_cidr_match_text(&l, c->ip) != c->match)
			fail_msg("'%s' in '%s': want %d", c->ip, c->list, c->match);
		/* the same through a sockaddr, and the entry found */
		struct sockaddr_storage ss = {0};
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		if (inet_pton(AF_INET, c->ip, &in->sin_addr) == 1)
			in->sin_family = AF_INET;
		else if (inet_pton(AF_INET6, c->ip, &in6->sin6_addr) == 1)
			in6->sin6_family = AF_INET6;
		const struct smtpd_cidr *e =
			smtpd_cidr_find(&l, (struct sockaddr *)&ss);
		if ((e != NULL) != c->match)
			fail_msg("find '%s' in '%s': want %d", c->ip, c->list,
			         c->match);
		if (e && c->which) {
			char which[SMTPD_CIDR_TEXT_MAX];
			smtpd_cidr_text(e, which, sizeof which);
			if (strcmp(which, c->which) != 0)
				fail_msg("'%s' in '%s': found %s, want %s", c->ip, c->list,
				         which, c->which);
		}
		smtpd_cidr_list_free(&l);
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
	assert_ptr_equal(smtpd_cidr_find(&l, (struct sockaddr *)&in), &l.net[0]);
	inet_pton(AF_INET, "127.0.0.2", &in.sin_addr);
	assert_false(smtpd_cidr_match(&l, (struct sockaddr *)&in));
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
	inet_pton(AF_INET6, "::1", &in6.sin6_addr);
	assert_true(smtpd_cidr_match(&l, (struct sockaddr *)&in6));
	assert_ptr_equal(smtpd_cidr_find(&l, (struct sockaddr *)&in6),
	                 &l.net[1]);
	/* an address family it does not know never matches */
	struct sockaddr un = {.sa_family = AF_UNIX};
	assert_false(smtpd_cidr_match(&l, &un));
	struct sockaddr_storage ss = {.ss_family = AF_UNIX};
	assert_null(smtpd_cidr_find(&l, (struct sockaddr *)&ss));
	assert_false(smtpd_cidr_match(&l, NULL));
	assert_null(smtpd_cidr_find(&l, NULL));
	/* no list: nothing matches */
	assert_false(smtpd_cidr_match(NULL, (struct sockaddr *)&in6));
	smtpd_cidr_list_free(&l);
	assert_int_equal(l.n, 0);
	assert_null(l.net);
	smtpd_cidr_list_free(&l);   /* again: a no-op */
	struct smtpd_cidr_list zero = {0};
	assert_false(smtpd_cidr_match(&zero, (struct sockaddr *)&in6));
	smtpd_cidr_list_free(&zero);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_bound),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_match_sockaddr),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
