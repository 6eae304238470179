/*
 * tests/unit/test_smtpd_policy_net.c - The wired relay policy
 * (smtpd/smtpd_policy_net.h): the policy parsed from configuration keys
 * (errors naming file:line), the connect / MAIL / RCPT / commit decisions
 * with an explicit clock (deny_networks naming the entry that matched),
 * and the hooks as the protocol core calls them. The CIDR lists
 * themselves: test_smtpd_cidr.c.
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
#include <unistd.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/conf.h"
#include "common/log.h"
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
	{"\ndeny_networks = 10.0.0.1/8\n",
	 "t.conf:2: deny_networks: '10.0.0.1/8': host bits set past the prefix "
	 "(the network is 10.0.0.0/8)"},
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

/* max_connections_per_ip counts clients as the rates do: IPv6 by /64. */
static void test_same_client(void **state)
{
	(void)state;
	struct fixture f;
	fixture_init(&f, "");
	static const struct {
		const char *a, *b;
		bool same;
	} cases[] = {
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"2001:db8:1:2::1", "2001:db8:1:2::1", true},
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", true},
		{"2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{"2001:db8:1:2::1", "2001:db9:1:2::1", false},
		{"::1", "::2", true},
		{"::ffff:127.0.0.1", "127.0.0.1", true},
		{"::ffff:127.0.0.1", "::ffff:127.0.0.2", false},
		{"::ffff:127.0.0.1", "::1", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct smtpd_relay_sess a, b;
		sess(&f, &a, cases[i].a);
		sess(&f, &b, cases[i].b);
		if (smtpd_relay_same_client(&a, &b) != cases[i].same ||
		    smtpd_relay_same_client(&b, &a) != cases[i].same)
			fail_msg("%s vs %s: expected %s", cases[i].a, cases[i].b,
			         cases[i].same ? "same" : "different");
	}
	/* No address known (no key): the text decides. */
	struct smtpd_relay_sess a, b;
	smtpd_relay_sess_init(&a, NULL, f.lim, NULL, "unknown", "t");
	smtpd_relay_sess_init(&b, NULL, f.lim, NULL, "unknown", "t");
	assert_true(smtpd_relay_same_client(&a, &b));
	sess(&f, &b, "127.0.0.1");
	assert_false(smtpd_relay_same_client(&a, &b));
	fixture_free(&f);
}

/* deny_networks refusals name the entry that matched, in canonical form,
 * also for an IPv4-mapped entry or client. */
static void test_connect_log(void **state)
{
	(void)state;
	char path[] = "/tmp/test_policy_net.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	struct fixture f;
	fixture_init(&f, "deny_networks = 10.0.0.0/8, 192.0.2.0/24, "
	                 "::ffff:198.51.100.0/120, 2001:DB8::/32\n");
	assert_int_equal(log_open(path, false, LOG_INFO), 0);
	struct smtpd_relay_sess rs;
	const char *ips[] = {"192.0.2.7", "::ffff:192.0.2.8", "198.51.100.9",
	                     "2001:db8::1", "127.0.0.1"};
	for (size_t i = 0; i < ARRAY_LEN(ips); i++) {
		sess(&f, &rs, ips[i]);
		assert_int_equal(smtpd_relay_connect(&rs, 0),
		                 i < 4 ? SMTP_R_ACCESS_DENIED : SMTP_R__COUNT);
	}
	log_close();
	assert_int_equal(log_open(NULL, false, LOG_ERR), 0);
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	char text[4096];
	size_t n = fread(text, 1, sizeof text - 1, fp);
	text[n] = '\0';
	fclose(fp);
	unlink(path);
	const char *want[] = {
		"s=t: refused: client=192.0.2.7 in deny_networks (192.0.2.0/24): "
		"554 5.7.1",
		"client=::ffff:192.0.2.8 in deny_networks (192.0.2.0/24)",
		"client=198.51.100.9 in deny_networks (198.51.100.0/24)",
		"client=2001:db8::1 in deny_networks (2001:db8::/32)",
	};
	for (size_t i = 0; i < ARRAY_LEN(want); i++)
		if (!strstr(text, want[i]))
			fail_msg("log lacks '%s':\n%s", want[i], text);
	assert_null(strstr(text, "127.0.0.1"));
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
		cmocka_unit_test_setup_teardown(test_relay_conf, setup, teardown),
		cmocka_unit_test(test_connect),
		cmocka_unit_test(test_same_client),
		cmocka_unit_test(test_connect_log),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_message_rate),
		cmocka_unit_test(test_limits_bounds),
		cmocka_unit_test(test_proto_hooks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
