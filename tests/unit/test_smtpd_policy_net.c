/*
 * tests/unit/test_smtpd_policy_net.c - The wired relay policy
 * (smtpd/smtpd_policy_net.h): a table of CIDR matches (IPv4, IPv6,
 * IPv4-mapped IPv6 both as entry and as client, /0, /32, /128), a table
 * of bad lists, the policy parsed from configuration keys (errors naming
 * file:line), the connect / MAIL / RCPT / commit decisions with an
 * explicit clock, and the hooks as the protocol core calls them.
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

#include "common/buf.h"
#include "common/conf.h"
#include "smtpd/smtpd_policy_net.h"
#include "smtpd/smtpd_proto.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* "1.2.3.4" -> sockaddr_in, "::1" -> sockaddr_in6. */
static void sa_of(const char *ip, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
	}
}

/* ---- CIDR matching ------------------------------------------------------ */

static const struct {
	const char *list;
	const char *client;
	bool match;
	const char *which;   /* the entry reported, when match */
} net_cases[] = {
	{"192.0.2.0/24", "192.0.2.0", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "192.0.2.255", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "192.0.3.0", false, NULL},
	{"192.0.2.0/24", "192.0.1.255", false, NULL},
	{"10.0.0.0/8", "10.255.1.2", true, "10.0.0.0/8"},
	{"10.0.0.0/9", "10.128.0.1", false, NULL},
	{"10.128.0.0/9", "10.128.0.1", true, "10.128.0.0/9"},
	{"127.0.0.2/32", "127.0.0.2", true, "127.0.0.2/32"},
	{"127.0.0.2/32", "127.0.0.1", false, NULL},
	{"127.0.0.2", "127.0.0.2", true, "127.0.0.2/32"},   /* bare host */
	{"0.0.0.0/0", "203.0.113.9", true, "0.0.0.0/0"},
	{"0.0.0.0/0", "2001:db8::1", false, NULL},           /* v4 only */
	{"::/0", "2001:db8::1", true, "::/0"},
	{"::/0", "192.0.2.1", false, NULL},                  /* v6 only */
	{"2001:db8::/32", "2001:db8:ffff::1", true, "2001:db8::/32"},
	{"2001:db8::/32", "2001:db9::1", false, NULL},
	{"2001:db8:0:1::/64", "2001:db8:0:1:ffff::1", true, "2001:db8:0:1::/64"},
	{"::1/128", "::1", true, "::1/128"},
	{"::1", "::1", true, "::1/128"},
	{"::1/128", "::2", false, NULL},
	{"2001:DB8::/33", "2001:db8:7fff::1", true, "2001:db8::/33"},
	{"2001:db8::/33", "2001:db8:8000::1", false, NULL},
	/* a client on a dual-stack socket: IPv4-mapped counts as IPv4 */
	{"192.0.2.0/24", "::ffff:192.0.2.7", true, "192.0.2.0/24"},
	{"192.0.2.0/24", "::ffff:192.0.3.7", false, NULL},
	/* an IPv4-mapped entry names IPv4 addresses */
	{"::ffff:192.0.2.0/120", "192.0.2.7", true, "192.0.2.0/24"},
	{"::ffff:192.0.2.0/120", "::ffff:192.0.2.7", true, "192.0.2.0/24"},
	{"::ffff:0.0.0.0/96", "198.51.100.1", true, "0.0.0.0/0"},
	/* lists: first match reported; blanks around items */
	{" 10.0.0.0/8 ,\t192.0.2.0/24 , ::1 ", "192.0.2.1", true, "192.0.2.0/24"},
	{"10.0.0.0/8, 10.1.0.0/16", "10.1.2.3", true, "10.0.0.0/8"},
	{"10.0.0.0/8, ::1", "::1", true, "::1/128"},
	{"", "127.0.0.1", false, NULL},
	{"   ", "::1", false, NULL},
};

static void test_nets_match(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(net_cases); i++) {
		struct smtpd_nets *n = NULL;
		char err[256] = "", which[SMTPD_NET_TEXT_MAX] = "";
		struct sockaddr_storage ss;
		if (smtpd_nets_parse(net_cases[i].list, &n, err, sizeof err) != 0)
			fail_msg("case %zu '%s': %s", i, net_cases[i].list, err);
		sa_of(net_cases[i].client, &ss);
		bool m = smtpd_nets_match(n, (struct sockaddr *)&ss, which,
		                          sizeof which);
		if (m != net_cases[i].match)
			fail_msg("case %zu: '%s' vs %s: got %d", i, net_cases[i].list,
			         net_cases[i].client, m);
		if (m)
			assert_string_equal(which, net_cases[i].which);
		smtpd_nets_free(n);
	}
}

static const struct {
	const char *list;
	const char *err_has;
} bad_nets[] = {
	{"10.0.0.0/8,", "empty network"},
	{",10.0.0.0/8", "empty network"},
	{"10.0.0.0/8,,::1", "empty network"},
	{"10.0.0.0/33", "bad prefix length"},
	{"::/129", "bad prefix length"},
	{"10.0.0.0/", "bad prefix length"},
	{"10.0.0.0/-1", "bad prefix length"},
	{"10.0.0.0/+8", "bad prefix length"},
	{"10.0.0.0/08", "bad prefix length"},
	{"10.0.0.0/8/8", "bad prefix length"},
	{"10.0.0.0/ 8", "bad prefix length"},
	{"10.0.0.1/8", "host bits set"},
	{"192.0.2.1/24", "the network is 192.0.2.0/24"},
	{"2001:db8::1/32", "host bits set"},
	{"10.0.0", "not an IPv4 address"},
	{"10.0.0.256", "not an IPv4 address"},
	{"010.0.0.1", "not an IPv4 address"},
	{"example.com", "not an IPv4 address"},
	{"*", "not an IPv4 address"},
	{"10.0.0.0 /8", "not an IPv4 address"},
	{"fe80::1%eth0", "not an IPv6 address"},
	{"2001:db8:::1", "not an IPv6 address"},
	{"[::1]", "not an IPv6 address"},
	{"10.0.0.0\x01/8", "\\x01"},
	{"1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd:e",
	 "not a network"},
};

static void test_nets_bad(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(bad_nets); i++) {
		struct smtpd_nets *n = (struct smtpd_nets *)1;
		char err[256] = "";
		int r = smtpd_nets_parse(bad_nets[i].list, &n, err, sizeof err);
		if (r != -EINVAL)
			fail_msg("case %zu '%s': accepted", i, bad_nets[i].list);
		assert_ptr_equal(n, (struct smtpd_nets *)1);   /* untouched */
		if (!strstr(err, bad_nets[i].err_has))
			fail_msg("case %zu: '%s' lacks '%s'", i, err,
			         bad_nets[i].err_has);
	}
}

static void test_nets_misc(void **state)
{
	(void)state;
	struct smtpd_nets *n;
	char err[128];
	assert_int_equal(smtpd_nets_parse(NULL, &n, err, sizeof err), 0);
	assert_int_equal(smtpd_nets_count(n), 0);
	smtpd_nets_free(n);
	assert_int_equal(smtpd_nets_parse("1.2.3.4, ::1, 10.0.0.0/8", &n, err,
	                                  sizeof err), 0);
	assert_int_equal(smtpd_nets_count(n), 3);
	/* an address family it does not know never matches */
	struct sockaddr_storage ss = {.ss_family = AF_UNIX};
	assert_false(smtpd_nets_match(n, (struct sockaddr *)&ss, NULL, 0));
	assert_false(smtpd_nets_match(n, NULL, NULL, 0));
	smtpd_nets_free(n);
	smtpd_nets_free(NULL);
	assert_false(smtpd_nets_match(NULL, (struct sockaddr *)&ss, NULL, 0));
}

/* ---- the policy from configuration keys ------------------------------------ */

static int setup(void **state)
{
	struct conf *c = calloc(1, sizeof *c);
	assert_non_null(c);
	assert_int_equal(conf_init(c), 0);
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	conf_free(*state);
	free(*state);
	return 0;
}

static const struct {
	const char *text;
	const char *err;   /* NULL: valid */
} relay_confs[] = {
	{"", NULL},
	{"deny_networks = 10.0.0.0/8, ::1\nsender_domains = example.com\n"
	 "recipient_domains = a.test, b.test\nrate_connections = 60/1m\n"
	 "rate_messages = 100/1h\n", NULL},
	{"rate_connections = 0\nrate_messages = 0\n", NULL},
	{"\ndeny_networks = 10.0.0.1/8\n", "t.conf:2: deny_networks: host bits"},
	{"sender_domains = *.example.com\n", "t.conf:1: sender_domains: "},
	{"recipient_domains = a.com,,b.com\n", "t.conf:1: recipient_domains: "},
	{"rate_connections = 60\n", "t.conf:1: rate_connections: not N/DURATION"},
	{"rate_messages = 10/0s\n", "t.conf:1: rate_messages: not N/DURATION"},
	{"rate_messages = -1/1h\n", "t.conf:1: rate_messages: "},
};

static void test_relay_conf(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(relay_confs); i++) {
		struct conf c;
		char err[512] = "";
		assert_int_equal(conf_init(&c), 0);
		const char *t = relay_confs[i].text;
		if (conf_parse(&c, "t.conf", t, strlen(t), err, sizeof err) != 0)
			fail_msg("case %zu: conf_parse: %s", i, err);
		struct smtpd_relay *r = NULL;
		int rc = smtpd_relay_new(&c, "t.conf", &r, err, sizeof err);
		if (!relay_confs[i].err) {
			if (rc != 0)
				fail_msg("case %zu: %s", i, err);
			smtpd_relay_free(r);
		} else {
			assert_int_equal(rc, -EINVAL);
			assert_null(r);
			if (strncmp(err, relay_confs[i].err,
			            strlen(relay_confs[i].err)) != 0)
				fail_msg("case %zu: '%s' does not start with '%s'", i, err,
				         relay_confs[i].err);
		}
		assert_int_equal(smtpd_relay_check_conf(&c, "t.conf", err,
		                                        sizeof err),
		                 relay_confs[i].err ? -EINVAL : 0);
		conf_free(&c);
	}
}

/* ---- decisions ----------------------------------------------------------- */

struct fixture {
	struct conf c;
	struct smtpd_relay *pol;
	struct smtpd_relay_limits *lim;
};

static void fixture_init(struct fixture *f, const char *text)
{
	char err[512];
	assert_int_equal(conf_init(&f->c), 0);
	if (conf_parse(&f->c, "t.conf", text, strlen(text), err, sizeof err))
		fail_msg("%s", err);
	if (smtpd_relay_new(&f->c, "t.conf", &f->pol, err, sizeof err))
		fail_msg("%s", err);
	f->lim = smtpd_relay_limits_new(16);
	assert_non_null(f->lim);
}

static void fixture_free(struct fixture *f)
{
	smtpd_relay_free(f->pol);
	smtpd_relay_limits_free(f->lim);
	conf_free(&f->c);
}

static void sess(struct fixture *f, struct smtpd_relay_sess *rs,
                 const char *ip)
{
	struct sockaddr_storage ss;
	sa_of(ip, &ss);
	smtpd_relay_sess_init(rs, f->pol, f->lim, (struct sockaddr *)&ss, ip,
	                      "t");
}

static void test_connect(void **state)
{
	(void)state;
	struct fixture f;
	fixture_init(&f, "deny_networks = 127.0.0.2/32, 2001:db8::/32\n"
	                 "rate_connections = 3/1m\n");
	struct smtpd_relay_sess rs;
	sess(&f, &rs, "127.0.0.2");
	assert_int_equal(smtpd_relay_connect(&rs, 1000), SMTP_R_ACCESS_DENIED);
	sess(&f, &rs, "2001:db8:1::5");
	assert_int_equal(smtpd_relay_connect(&rs, 1000), SMTP_R_ACCESS_DENIED);
	/* 127.0.0.1: three per minute, the fourth refused, then released */
	for (int i = 0; i < 3; i++) {
		sess(&f, &rs, "127.0.0.1");
		assert_int_equal(smtpd_relay_connect(&rs, 1000), SMTP_R__COUNT);
	}
	sess(&f, &rs, "127.0.0.1");
	assert_int_equal(smtpd_relay_connect(&rs, 2000), SMTP_R_CONN_RATE);
	/* another client is not affected */
	sess(&f, &rs, "127.0.0.3");
	assert_int_equal(smtpd_relay_connect(&rs, 2000), SMTP_R__COUNT);
	/* two minutes later the window has slid past */
	sess(&f, &rs, "127.0.0.1");
	assert_int_equal(smtpd_relay_connect(&rs, 121000), SMTP_R__COUNT);
	/* IPv6 clients count by /64 */
	for (int i = 0; i < 3; i++) {
		char ip[64];
		snprintf(ip, sizeof ip, "2001:db9:0:1::%d", i + 1);
		sess(&f, &rs, ip);
		assert_int_equal(smtpd_relay_connect(&rs, 5000), SMTP_R__COUNT);
	}
	sess(&f, &rs, "2001:db9:0:1:ffff::9");
	assert_int_equal(smtpd_relay_connect(&rs, 5000), SMTP_R_CONN_RATE);
	sess(&f, &rs, "2001:db9:0:2::1");
	assert_int_equal(smtpd_relay_connect(&rs, 5000), SMTP_R__COUNT);
	/* no policy: nothing refused */
	smtpd_relay_sess_init(&rs, NULL, f.lim, NULL, "127.0.0.2", "t");
	assert_int_equal(smtpd_relay_connect(&rs, 5000), SMTP_R__COUNT);
	fixture_free(&f);
}

static void test_domains(void **state)
{
	(void)state;
	struct fixture f;
	fixture_init(&f, "sender_domains = example.com\n"
	                 "recipient_domains = dest.test\n");
	struct smtpd_relay_sess rs;
	sess(&f, &rs, "127.0.0.1");
	assert_int_equal(smtpd_relay_connect(&rs, 0), SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@example.com"), SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@EXAMPLE.com"), SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_mail(&rs, 0, ""), SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@example.com.evil.org"),
	                 SMTP_R_SENDER_DOMAIN);
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@evil-example.com"),
	                 SMTP_R_SENDER_DOMAIN);
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@sub.example.com"),
	                 SMTP_R_SENDER_DOMAIN);
	assert_int_equal(smtpd_relay_rcpt(&rs, "b@dest.test"), SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_rcpt(&rs, "b@other.test"),
	                 SMTP_R_RCPT_DOMAIN);
	assert_int_equal(smtpd_relay_rcpt(&rs, "postmaster"), SMTP_R_RCPT_DOMAIN);
	fixture_free(&f);

	/* empty lists: anything */
	fixture_init(&f, "");
	sess(&f, &rs, "127.0.0.1");
	assert_int_equal(smtpd_relay_mail(&rs, 0, "a@anything.test"),
	                 SMTP_R__COUNT);
	assert_int_equal(smtpd_relay_rcpt(&rs, "b@anywhere.test"), SMTP_R__COUNT);
	fixture_free(&f);
}

static void test_message_rate(void **state)
{
	(void)state;
	struct fixture f;
	fixture_init(&f, "rate_messages = 2/1h\n");
	struct smtpd_relay_sess rs, other;
	sess(&f, &rs, "127.0.0.1");
	sess(&f, &other, "127.0.0.9");
	uint64_t t = 10000;
	/* checked at MAIL, counted only on commit: MAILs alone never count */
	for (int i = 0; i < 5; i++)
		assert_int_equal(smtpd_relay_mail(&rs, t, "a@x.test"), SMTP_R__COUNT);
	smtpd_relay_committed(&rs, t);
	assert_int_equal(smtpd_relay_mail(&rs, t, "a@x.test"), SMTP_R__COUNT);
	smtpd_relay_committed(&rs, t);
	assert_int_equal(smtpd_relay_mail(&rs, t, "a@x.test"), SMTP_R_MSG_RATE);
	assert_int_equal(smtpd_relay_mail(&rs, t, ""), SMTP_R_MSG_RATE);
	assert_int_equal(smtpd_relay_mail(&other, t, "a@x.test"), SMTP_R__COUNT);
	/* two hours later it is free again */
	t += 2 * 3600 * 1000;
	assert_int_equal(smtpd_relay_mail(&rs, t, "a@x.test"), SMTP_R__COUNT);
	fixture_free(&f);

	/* off: commits are not even tracked */
	fixture_init(&f, "");
	sess(&f, &rs, "127.0.0.1");
	for (int i = 0; i < 100; i++)
		smtpd_relay_committed(&rs, t);
	assert_int_equal(smtpd_relay_mail(&rs, t, "a@x.test"), SMTP_R__COUNT);
	fixture_free(&f);
}

static void test_limits_bounds(void **state)
{
	(void)state;
	assert_null(smtpd_relay_limits_new(0));
	assert_null(smtpd_relay_limits_new((1u << 24) + 1));
	smtpd_relay_limits_free(NULL);
	smtpd_relay_free(NULL);
	/* a table of 16 keys holds up under many clients */
	struct fixture f;
	fixture_init(&f, "rate_connections = 1/1m\n");
	struct smtpd_relay_sess rs;
	for (int i = 0; i < 1000; i++) {
		char ip[32];
		snprintf(ip, sizeof ip, "10.0.%d.%d", i / 250, i % 250 + 1);
		sess(&f, &rs, ip);
		assert_int_equal(smtpd_relay_connect(&rs, 1000), SMTP_R__COUNT);
	}
	/* the one hammering stays recent, so it stays counted */
	sess(&f, &rs, "10.0.3.250");
	assert_int_equal(smtpd_relay_connect(&rs, 1000), SMTP_R_CONN_RATE);
	fixture_free(&f);
}

/* ---- the hooks in the protocol core --------------------------------------- */

static int nop_begin(void *ctx, struct smtpd_txn *t)
{
	(void)ctx;
	snprintf(t->qid, sizeof t->qid, "0000000000000001");
	return 0;
}

static int nop_write(void *ctx, const uint8_t *p, size_t n)
{
	(void)ctx, (void)p, (void)n;
	return 0;
}

static void nop_abort(void *ctx)
{
	(void)ctx;
}

static const struct smtpd_sink_ops nop_sink = {nop_begin, nop_write,
                                               nop_abort};

/* Feeds the lines; out gets the replies. */
static void feed(struct smtpd_proto *p, struct buf *out, const char *s)
{
	enum smtpd_req req;
	buf_reset(out);
	size_t n = smtpd_proto_feed(p, (const uint8_t *)s, strlen(s), out, &req);
	assert_int_equal(n, strlen(s));
	assert_int_equal(req, SMTPD_REQ_NONE);
	buf_append(out, (const uint8_t *)"", 1);   /* NUL-terminated */
}

static void test_proto_hooks(void **state)
{
	(void)state;
	struct fixture f;
	fixture_init(&f, "sender_domains = example.com\n"
	                 "recipient_domains = dest.test\n");
	struct smtpd_relay_sess rs;
	sess(&f, &rs, "127.0.0.1");
	struct smtpd_proto_cfg cfg = {
		.hostname = "relay.test", .sid = "t", .max_message_size = 1000,
		.max_recipients = 10, .max_bad_commands = 2,
		.policy = &smtpd_relay_policy_ops, .policy_ctx = &rs,
		/* a client that may relay: only the domain policy decides */
		.trusted = true,
	};
	struct smtpd_proto *p = smtpd_proto_new(&cfg, &nop_sink, NULL);
	assert_non_null(p);
	struct buf out;
	buf_init(&out, SIZE_MAX);
	feed(p, &out, "EHLO c\r\n");
	/* three refusals in a row: not protocol errors (max_bad_commands 2) */
	feed(p, &out, "MAIL FROM:<a@evil.test>\r\nMAIL FROM:<a@evil.test>\r\n"
	              "MAIL FROM:<a@example.com.evil.org> SIZE=10\r\n");
	assert_string_equal((char *)out.data,
	                    "553 5.7.1 Sender domain not allowed\r\n"
	                    "553 5.7.1 Sender domain not allowed\r\n"
	                    "553 5.7.1 Sender domain not allowed\r\n");
	assert_int_equal(smtpd_proto_state(p), SMTPD_ST_READY);
	feed(p, &out, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@other.test>\r\n"
	              "RCPT TO:<b@dest.test>\r\nRCPT TO:<c@other.test>\r\n");
	assert_string_equal((char *)out.data,
	                    "250 2.1.0 Sender ok\r\n"
	                    "550 5.7.1 Recipient domain not allowed\r\n"
	                    "250 2.1.5 Recipient ok\r\n"
	                    "550 5.7.1 Recipient domain not allowed\r\n");
	assert_int_equal(smtpd_proto_txn(p)->nrcpt, 1);
	feed(p, &out, "RSET\r\nMAIL FROM:<>\r\n");
	assert_string_equal((char *)out.data, "250 2.0.0 Ok\r\n"
	                                      "250 2.1.0 Sender ok\r\n");
	smtpd_proto_free(p);
	buf_free(&out);
	fixture_free(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nets_match),
		cmocka_unit_test(test_nets_bad),
		cmocka_unit_test(test_nets_misc),
		cmocka_unit_test_setup_teardown(test_relay_conf, setup, teardown),
		cmocka_unit_test(test_connect),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_message_rate),
		cmocka_unit_test(test_limits_bounds),
		cmocka_unit_test(test_proto_hooks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
