/*
 * tests/unit/test_conf.c - Tests of common/conf.c: defaults, each value
 * type good and bad, the file syntax and its one-line error messages,
 * RELAYD_* environment overrides, conf_load, and that etc/relayd.conf
 * parses and documents every key. Mostly tables: (input, rc, expected).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/conf.h"
#include "common/log.h"

#define ERRLEN 512

static int setup(void **state)
{
	struct conf *c = calloc(1, sizeof *c);
	if (!c || conf_init(c) != 0)
		return -1;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	conf_free(*state);
	free(*state);
	return 0;
}

/* ---- defaults ---------------------------------------------------------- */

static void test_defaults(void **state)
{
	struct conf *c = *state;
	static const char *const scrub[] = {
		"Received", "X-Originating-IP", "X-Remote-IP", "X-Real-IP",
		"X-Forwarded-For", "X-Sender-IP", "X-Source-IP"};
	char host[256] = "";

	assert_non_null(c->hostname);
	assert_true(c->hostname[0] != '\0');
	if (gethostname(host, sizeof host - 1) == 0 && host[0])
		assert_string_equal(c->hostname, host);
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0].host, "127.0.0.1");
	assert_int_equal(c->listen[0].port, 2525);
	assert_false(c->listen[0].ipv6);
	assert_int_equal(c->listen[0].mode, CONF_LISTEN_SMTP);
	assert_string_equal(c->spool_dir, "/var/spool/relayd");
	assert_string_equal(c->log_file, "");
	assert_true(c->log_stderr);
	assert_int_equal(c->log_level, LOG_INFO);
	assert_int_equal(c->delivery, CONF_DELIVERY_HOLD);
	assert_int_equal(c->max_message_size, 50ull * 1024 * 1024);
	assert_int_equal(c->max_recipients, 1000);
	assert_int_equal(c->max_connections, 1000);
	assert_int_equal(c->max_connections_per_ip, 50);
	assert_int_equal(c->max_bad_commands, 20);
	assert_int_equal(c->nscrub_headers, 7);
	for (size_t i = 0; i < 7; i++)
		assert_string_equal(c->scrub_headers[i], scrub[i]);
	assert_false(c->received_client);
	assert_int_equal(c->hop_limit, 50);
	assert_int_equal(c->bare_newline, CONF_BARE_REJECT);
	assert_int_equal(c->long_lines, CONF_LONG_LINES_WRAP);
	assert_int_equal(c->timeout_greeting, 300000);
	assert_int_equal(c->timeout_command, 300000);
	assert_int_equal(c->timeout_data, 180000);
	assert_int_equal(c->data_min_rate, 500);
	assert_int_equal(c->session_max_lifetime, 3600000);
	assert_int_equal(c->queue_map_size, 1024ull * 1024 * 1024);
	assert_int_equal(c->queue_min_free, 100ull * 1024 * 1024);
	assert_int_equal(c->spool_sync, CONF_SYNC_SYNCFS);
	assert_string_equal(c->user, "relayd");
	/* direct delivery (issue 9 §3) */
	assert_false(c->mx_allow_private);
	assert_int_equal(c->mx_port, 25);
	assert_int_equal(c->ip_preference, CONF_IP_AUTO);
	assert_string_equal(c->smtp_bind_address, "");
	assert_string_equal(c->smtp_bind_address6, "");
	assert_string_equal(c->tls_policy_file, "");
	assert_string_equal(c->destination_policy_file, "");
	assert_int_equal(c->max_recipients_per_transaction, 50);
	assert_int_equal(c->destination_concurrency, 5);
	assert_int_equal(c->max_delivery_sessions, 100);
}

/* Every key's default text is accepted by its own parser, and the table
 * is reachable through conf_key(). */
static void test_key_table(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	const char *def, *help;
	size_t n = 0;
	for (const char *k; (k = conf_key(n, &def, &help)); n++) {
		assert_non_null(help);
		if (def && conf_set(c, k, def, err, sizeof err) != 0)
			fail_msg("default of %s: %s", k, err);
	}
	/* + queue_min_free, long_lines, data_min_rate, session_max_lifetime,
	 * auth_slow_delay, auth_slow_delay_max, auth_lockout_table (issue 8)
	 * + hop_limit (issue 9 §3)
	 * + mx_allow_private, mx_port, ip_preference, smtp_bind_address,
	 * smtp_bind_address6, tls_policy_file, destination_policy_file,
	 * max_recipients_per_transaction, destination_concurrency,
	 * max_delivery_sessions, dns_servers (issue 9)
	 * + pid_file, log_syslog, shutdown_timeout (operations)
	 * + dkim_key, dkim_subdomains, dkim_required (issue 10)
	 * + dnsbl_zones (issue 10 §3)
	 * + log_syslog, pid_file, shutdown_timeout (issue 11) */
	assert_int_equal(n, 80);
	assert_null(conf_key(n, NULL, NULL));
}

/* ---- conf_set, one table per type -------------------------------------- */

struct set_case {
	const char *key, *value;
	int rc;
	const char *err;       /* exact message when rc < 0 */
	uint64_t want;         /* numeric result when rc == 0 */
};

/* The numeric view of a field, for the table. */
static uint64_t field_value(const struct conf *c, const char *key)
{
	static const struct {
		const char *key;
		size_t off;
		char kind;   /* b bool, u unsigned, q uint64, i int/enum */
	} fields[] = {
		{"log_stderr", offsetof(struct conf, log_stderr), 'b'},
		{"received_client", offsetof(struct conf, received_client), 'b'},
		{"log_level", offsetof(struct conf, log_level), 'i'},
		{"delivery", offsetof(struct conf, delivery), 'i'},
		{"smarthost_tls", offsetof(struct conf, smarthost_tls), 'i'},
		{"retry_min", offsetof(struct conf, retry_min), 'q'},
		{"delay_warning_after", offsetof(struct conf, delay_warning_after),
		 'q'},
		{"bare_newline", offsetof(struct conf, bare_newline), 'i'},
		{"long_lines", offsetof(struct conf, long_lines), 'i'},
		{"spool_sync", offsetof(struct conf, spool_sync), 'i'},
		{"max_recipients", offsetof(struct conf, max_recipients), 'u'},
		{"max_connections", offsetof(struct conf, max_connections), 'u'},
		{"max_connections_per_ip",
		 offsetof(struct conf, max_connections_per_ip), 'u'},
		{"max_bad_commands", offsetof(struct conf, max_bad_commands), 'u'},
		{"hop_limit", offsetof(struct conf, hop_limit), 'u'},
		{"max_message_size", offsetof(struct conf, max_message_size), 'q'},
		{"queue_map_size", offsetof(struct conf, queue_map_size), 'q'},
		{"queue_min_free", offsetof(struct conf, queue_min_free), 'q'},
		{"timeout_greeting", offsetof(struct conf, timeout_greeting), 'q'},
		{"timeout_command", offsetof(struct conf, timeout_command), 'q'},
		{"timeout_data", offsetof(struct conf, timeout_data), 'q'},
		{"data_min_rate", offsetof(struct conf, data_min_rate), 'u'},
		{"session_max_lifetime",
		 offsetof(struct conf, session_max_lifetime), 'q'},
		{"mx_allow_private", offsetof(struct conf, mx_allow_private), 'b'},
		{"mx_port", offsetof(struct conf, mx_port), 'u'},
		{"ip_preference", offsetof(struct conf, ip_preference), 'i'},
		{"max_recipients_per_transaction",
		 offsetof(struct conf, max_recipients_per_transaction), 'u'},
		{"destination_concurrency",
		 offsetof(struct conf, destination_concurrency), 'u'},
		{"max_delivery_sessions",
		 offsetof(struct conf, max_delivery_sessions), 'u'},
		/* strings: their length */
		{"smtp_bind_address", offsetof(struct conf, smtp_bind_address), 's'},
		{"smtp_bind_address6", offsetof(struct conf, smtp_bind_address6),
		 's'},
		{"tls_policy_file", offsetof(struct conf, tls_policy_file), 's'},
		{"destination_policy_file",
		 offsetof(struct conf, destination_policy_file), 's'},
		{"smarthost", offsetof(struct conf, smarthost), 's'},
		{"smarthost_rate", offsetof(struct conf, smarthost_rate), 's'},
	};
	const char *base = (const char *)c;
	for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
		if (strcmp(fields[i].key, key) != 0)
			continue;
		const void *f = base + fields[i].off;
		switch (fields[i].kind) {
		case 'b': return *(const bool *)f;
		case 'u': return *(const unsigned *)f;
		case 'q': return *(const uint64_t *)f;
		case 's': return strlen(*(char *const *)f);
		default: {
			int v;
			memcpy(&v, f, sizeof v);
			return (uint64_t)v;
		}
		}
	}
	fail_msg("no field for %s", key);
	return 0;
}

#define K 1024ull
#define M (1024ull * K)
#define G (1024ull * M)

static const struct set_case set_cases[] = {
	/* bool */
	{"log_stderr", "no", 0, NULL, 0},
	{"log_stderr", "YES", 0, NULL, 1},
	{"log_stderr", "false", 0, NULL, 0},
	{"log_stderr", "true", 0, NULL, 1},
	{"log_stderr", "off", 0, NULL, 0},
	{"log_stderr", "On", 0, NULL, 1},
	{"log_stderr", "0", 0, NULL, 0},
	{"log_stderr", "1", 0, NULL, 1},
	{"received_client", "yes", 0, NULL, 1},
	{"log_stderr", "maybe", -EINVAL,
	 "log_stderr: not a boolean: 'maybe' (expected yes or no)", 0},
	{"log_stderr", "", -EINVAL,
	 "log_stderr: not a boolean: '' (expected yes or no)", 0},
	{"log_stderr", "2", -EINVAL,
	 "log_stderr: not a boolean: '2' (expected yes or no)", 0},

	/* unsigned */
	{"max_recipients", "100", 0, NULL, 100},
	{"max_recipients", "1", 0, NULL, 1},
	{"max_recipients", "1000000", 0, NULL, 1000000},
	{"max_connections", "5", 0, NULL, 5},
	{"max_connections_per_ip", "2", 0, NULL, 2},
	{"max_bad_commands", "3", 0, NULL, 3},
	{"hop_limit", "1", 0, NULL, 1},
	{"hop_limit", "1000", 0, NULL, 1000},
	{"max_recipients", "abc", -EINVAL,
	 "max_recipients: not a number: 'abc'", 0},
	{"max_recipients", "", -EINVAL, "max_recipients: not a number: ''", 0},
	{"max_recipients", "-1", -EINVAL, "max_recipients: not a number: '-1'",
	 0},
	{"max_recipients", "+5", -EINVAL, "max_recipients: not a number: '+5'",
	 0},
	{"max_recipients", "12x", -EINVAL, "max_recipients: not a number: '12x'",
	 0},
	{"max_recipients", "0x10", -EINVAL,
	 "max_recipients: not a number: '0x10'", 0},
	{"max_recipients", "0", -EINVAL,
	 "max_recipients: out of range: '0' (expected 1-1000000)", 0},
	{"max_recipients", "1000001", -EINVAL,
	 "max_recipients: out of range: '1000001' (expected 1-1000000)", 0},
	{"hop_limit", "0", -EINVAL,
	 "hop_limit: out of range: '0' (expected 1-1000)", 0},
	{"hop_limit", "1001", -EINVAL,
	 "hop_limit: out of range: '1001' (expected 1-1000)", 0},
	{"max_recipients", "99999999999999999999999", -EINVAL,
	 "max_recipients: out of range: '99999999999999999999999' "
	 "(expected 1-1000000)", 0},

	/* size */
	{"max_message_size", "10M", 0, NULL, 10 * M},
	{"max_message_size", "512k", 0, NULL, 512 * K},
	{"max_message_size", "512K", 0, NULL, 512 * K},
	{"max_message_size", "2G", 0, NULL, 2 * G},
	{"max_message_size", "1000", 0, NULL, 1000},
	{"queue_map_size", "1M", 0, NULL, M},
	{"queue_map_size", "16G", 0, NULL, 16 * G},
	{"queue_min_free", "0", 0, NULL, 0},
	{"queue_min_free", "100M", 0, NULL, 100 * M},
	{"queue_min_free", "2G", 0, NULL, 2 * G},
	{"queue_min_free", "-1", -EINVAL,
	 "queue_min_free: not a size: '-1' (expected e.g. 512k, 50M, 1G)", 0},
	{"max_message_size", "10 M", -EINVAL,
	 "max_message_size: not a size: '10 M' (expected e.g. 512k, 50M, 1G)",
	 0},
	{"max_message_size", "M", -EINVAL,
	 "max_message_size: not a size: 'M' (expected e.g. 512k, 50M, 1G)", 0},
	{"max_message_size", "10MB", -EINVAL,
	 "max_message_size: not a size: '10MB' (expected e.g. 512k, 50M, 1G)",
	 0},
	{"max_message_size", "0", -EINVAL,
	 "max_message_size: out of range: '0' (expected 1-1024G)", 0},
	{"max_message_size", "99999999999G", -EINVAL,
	 "max_message_size: out of range: '99999999999G' (expected 1-1024G)", 0},
	{"queue_map_size", "1023k", -EINVAL,
	 "queue_map_size: out of range: '1023k' (expected 1M-16384G)", 0},

	/* duration */
	{"timeout_command", "300", 0, NULL, 300000},
	{"timeout_command", "30s", 0, NULL, 30000},
	{"timeout_command", "5m", 0, NULL, 300000},
	{"timeout_command", "2h", 0, NULL, 7200000},
	{"timeout_command", "1d", 0, NULL, 86400000},
	{"timeout_data", "500ms", 0, NULL, 500},
	{"timeout_greeting", "1ms", 0, NULL, 1},
	{"session_max_lifetime", "2h", 0, NULL, 7200000},
	{"session_max_lifetime", "31d", -EINVAL,
	 "session_max_lifetime: out of range: '31d' (expected 1ms-30d)", 0},
	{"data_min_rate", "0", 0, NULL, 0},
	{"data_min_rate", "500", 0, NULL, 500},
	{"timeout_command", "5 m", -EINVAL,
	 "timeout_command: not a duration: '5 m' (expected e.g. 30s, 5m, 2h, "
	 "1d)", 0},
	{"timeout_command", "5w", -EINVAL,
	 "timeout_command: not a duration: '5w' (expected e.g. 30s, 5m, 2h, "
	 "1d)", 0},
	{"timeout_command", "1.5s", -EINVAL,
	 "timeout_command: not a duration: '1.5s' (expected e.g. 30s, 5m, 2h, "
	 "1d)", 0},
	{"timeout_command", "0", -EINVAL,
	 "timeout_command: out of range: '0' (expected 1ms-1d)", 0},
	{"timeout_command", "2d", -EINVAL,
	 "timeout_command: out of range: '2d' (expected 1ms-1d)", 0},

	/* enums */
	{"log_level", "debug", 0, NULL, LOG_DEBUG},
	{"log_level", "error", 0, NULL, LOG_ERR},
	{"log_level", "warning", 0, NULL, LOG_WARN},
	{"log_level", "INFO", 0, NULL, LOG_INFO},
	{"bare_newline", "normalize", 0, NULL, CONF_BARE_NORMALIZE},
	{"bare_newline", "reject", 0, NULL, CONF_BARE_REJECT},
	{"long_lines", "reject", 0, NULL, CONF_LONG_LINES_REJECT},
	{"long_lines", "WRAP", 0, NULL, CONF_LONG_LINES_WRAP},
	{"long_lines", "truncate", -EINVAL,
	 "long_lines: unsupported value 'truncate' (expected: wrap, reject)", 0},
	{"spool_sync", "fsync", 0, NULL, CONF_SYNC_FSYNC},
	{"spool_sync", "syncfs", 0, NULL, CONF_SYNC_SYNCFS},
	{"delivery", "hold", 0, NULL, CONF_DELIVERY_HOLD},
	{"delivery", "x", -EINVAL,
	 "delivery: unsupported value 'x' (expected: hold, smarthost, direct)", 0},
	{"delivery", "smarthost", 0, NULL, CONF_DELIVERY_SMARTHOST},
	{"delivery", "direct", 0, NULL, CONF_DELIVERY_DIRECT},
	{"smarthost_tls", "starttls", 0, NULL, CONF_TLS_STARTTLS},
	{"smarthost_tls", "tls", -EINVAL, "smarthost_tls: unsupported value "
	 "'tls' (expected: auto, implicit, starttls, none)", 0},
	{"smarthost", "mail.example.com:465", 0, NULL, 20},
	{"smarthost", "[::1]:587", 0, NULL, 9},
	{"smarthost", "mail.example.com", -EINVAL,
	 "smarthost: not HOST:PORT: 'mail.example.com'", 0},
	{"smarthost", "mail.example.com:0", -EINVAL,
	 "smarthost: not HOST:PORT: 'mail.example.com:0'", 0},
	{"smarthost", "::1:25", -EINVAL, "smarthost: not HOST:PORT: '::1:25'", 0},
	{"smarthost_rate", "30/minute, 500/hour", 0, NULL, 19},
	{"smarthost_rate", "30/minute, 5/minute", -EINVAL, "smarthost_rate: "
	 "not N/minute, N/hour or both: '30/minute, 5/minute'", 0},
	{"smarthost_rate", "30/day", -EINVAL,
	 "smarthost_rate: not N/minute, N/hour or both: '30/day'", 0},
	{"rewrite_sender", "<a@b>", -EINVAL, "rewrite_sender: not a mail "
	 "address (local@domain, no <>): '<a@b>'", 0},
	{"retry_min", "2s", 0, NULL, 2000},
	{"retry_min", "0", -EINVAL,
	 "retry_min: out of range: '0' (expected 1s-30d)", 0},
	{"delay_warning_after", "0", 0, NULL, 0},
	{"bare_newline", "keep", -EINVAL,
	 "bare_newline: unsupported value 'keep' (expected: reject, normalize)",
	 0},
	{"log_level", "trace", -EINVAL,
	 "log_level: unsupported value 'trace' (expected: error, warning, info, "
	 "debug)", 0},
	{"spool_sync", "", -EINVAL,
	 "spool_sync: unsupported value '' (expected: syncfs, fsync)", 0},

	/* direct delivery (issue 9 §3) */
	{"mx_allow_private", "yes", 0, NULL, 1},
	{"mx_allow_private", "sometimes", -EINVAL,
	 "mx_allow_private: not a boolean: 'sometimes' (expected yes or no)", 0},
	{"mx_port", "2525", 0, NULL, 2525},
	{"mx_port", "65535", 0, NULL, 65535},
	{"mx_port", "0", -EINVAL, "mx_port: out of range: '0' (expected 1-65535)",
	 0},
	{"mx_port", "65536", -EINVAL,
	 "mx_port: out of range: '65536' (expected 1-65535)", 0},
	{"ip_preference", "ipv4", 0, NULL, CONF_IP_IPV4},
	{"ip_preference", "IPv6", 0, NULL, CONF_IP_IPV6},
	{"ip_preference", "any", 0, NULL, CONF_IP_ANY},
	{"ip_preference", "auto", 0, NULL, CONF_IP_AUTO},
	{"ip_preference", "ipv6first", -EINVAL, "ip_preference: unsupported "
	 "value 'ipv6first' (expected: auto, ipv4, ipv6, any)", 0},
	{"smtp_bind_address", "192.0.2.10", 0, NULL, 10},
	{"smtp_bind_address", "", 0, NULL, 0},
	{"smtp_bind_address", "2001:db8::1", -EINVAL,
	 "smtp_bind_address: not an IPv4 address: '2001:db8::1'", 0},
	{"smtp_bind_address", "192.0.2", -EINVAL,
	 "smtp_bind_address: not an IPv4 address: '192.0.2'", 0},
	{"smtp_bind_address", "mail.example.com", -EINVAL,
	 "smtp_bind_address: not an IPv4 address: 'mail.example.com'", 0},
	{"smtp_bind_address", "224.0.0.1", -EINVAL,
	 "smtp_bind_address: not a unicast source address: '224.0.0.1'", 0},
	{"smtp_bind_address", "0.0.0.0", -EINVAL,
	 "smtp_bind_address: not a unicast source address: '0.0.0.0'", 0},
	{"smtp_bind_address6", "2001:db8::25", 0, NULL, 12},
	{"smtp_bind_address6", "192.0.2.10", -EINVAL,
	 "smtp_bind_address6: not an IPv6 address: '192.0.2.10'", 0},
	{"smtp_bind_address6", "[2001:db8::25]", -EINVAL,
	 "smtp_bind_address6: not an IPv6 address: '[2001:db8::25]'", 0},
	{"smtp_bind_address6", "::ffff:192.0.2.10", -EINVAL, "smtp_bind_address6: "
	 "not a unicast source address: '::ffff:192.0.2.10'", 0},
	{"smtp_bind_address6", "ff02::1", -EINVAL,
	 "smtp_bind_address6: not a unicast source address: 'ff02::1'", 0},
	{"smtp_bind_address6", "::", -EINVAL,
	 "smtp_bind_address6: not a unicast source address: '::'", 0},
	{"tls_policy_file", "/etc/relayd/tls_policy", 0, NULL, 22},
	{"destination_policy_file", "/etc/relayd/destinations", 0, NULL, 24},
	{"max_recipients_per_transaction", "1", 0, NULL, 1},
	{"max_recipients_per_transaction", "0", -EINVAL,
	 "max_recipients_per_transaction: out of range: '0' (expected 1-100000)",
	 0},
	{"destination_concurrency", "1", 0, NULL, 1},
	{"destination_concurrency", "1001", -EINVAL,
	 "destination_concurrency: out of range: '1001' (expected 1-1000)", 0},
	{"max_delivery_sessions", "2000", 0, NULL, 2000},
	{"max_delivery_sessions", "0", -EINVAL,
	 "max_delivery_sessions: out of range: '0' (expected 1-100000)", 0},
	{"max_delivery_sessions", "-1", -EINVAL,
	 "max_delivery_sessions: not a number: '-1'", 0},

	/* control characters are refused in every value */
	{"max_recipients", "1\x01", -EINVAL,
	 "max_recipients: control character in value '1\\x01'", 0},

	/* unknown key */
	{"foo", "1", -EINVAL, "unknown key 'foo'", 0},
	{"Max_Recipients", "1", -EINVAL, "unknown key 'Max_Recipients'", 0},
	{"", "1", -EINVAL, "unknown key ''", 0},
};

static void test_set_table(void **state)
{
	struct conf *c = *state;
	for (size_t i = 0; i < sizeof set_cases / sizeof *set_cases; i++) {
		const struct set_case *t = &set_cases[i];
		char err[ERRLEN] = "";
		int rc = conf_set(c, t->key, t->value, err, sizeof err);
		if (rc != t->rc)
			fail_msg("%s = '%s': rc %d, want %d (%s)", t->key, t->value,
			         rc, t->rc, err);
		if (rc < 0) {
			if (strcmp(err, t->err) != 0)
				fail_msg("%s = '%s':\n got  '%s'\n want '%s'", t->key,
				         t->value, err, t->err);
			continue;
		}
		uint64_t v = field_value(c, t->key);
		if (v != t->want)
			fail_msg("%s = '%s': got %llu, want %llu", t->key, t->value,
			         (unsigned long long)v, (unsigned long long)t->want);
	}
}

/* A failed set keeps the old value. */
static void test_set_failure_keeps_value(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	assert_int_equal(conf_set(c, "max_recipients", "77", err, sizeof err), 0);
	assert_int_equal(conf_set(c, "max_recipients", "x", err, sizeof err),
	                 -EINVAL);
	assert_int_equal(c->max_recipients, 77);
	assert_int_equal(conf_set(c, "listen", "1.2.3.4:1, bad", err,
	                          sizeof err), -EINVAL);
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0].host, "127.0.0.1");
	assert_int_equal(conf_set(c, "scrub_headers", "A, B:C", err, sizeof err),
	                 -EINVAL);
	assert_int_equal(c->nscrub_headers, 7);
	/* NULL err and NULL value are fine */
	assert_int_equal(conf_set(c, "max_recipients", "x", NULL, 0), -EINVAL);
	assert_int_equal(conf_set(c, "max_recipients", NULL, err, sizeof err),
	                 -EINVAL);
	assert_int_equal(conf_set(c, NULL, "1", err, sizeof err), -EINVAL);
}

struct string_case {
	const char *key, *value;
	int rc;
	const char *err;
};

static const struct string_case string_cases[] = {
	{"hostname", "mx1.example.org", 0, NULL},
	{"hostname", "relay_1", 0, NULL},
	{"hostname", "", -EINVAL, "hostname: must be 1 to 255 characters"},
	{"hostname", "a b", -EINVAL, "hostname: not a host name: 'a b'"},
	{"hostname", "a..b", -EINVAL, "hostname: not a host name: 'a..b'"},
	{"hostname", "x<y>", -EINVAL, "hostname: not a host name: 'x<y>'"},
	{"spool_dir", "./var/spool", 0, NULL},
	{"spool_dir", "", -EINVAL, "spool_dir: must not be empty"},
	{"log_file", "", 0, NULL},
	{"log_file", "/var/log/relayd.log", 0, NULL},
	{"user", "relayd", 0, NULL},
	{"user", "", 0, NULL},
};

static void test_strings(void **state)
{
	struct conf *c = *state;
	for (size_t i = 0; i < sizeof string_cases / sizeof *string_cases; i++) {
		const struct string_case *t = &string_cases[i];
		char err[ERRLEN] = "";
		int rc = conf_set(c, t->key, t->value, err, sizeof err);
		if (rc != t->rc)
			fail_msg("%s = '%s': rc %d (%s)", t->key, t->value, rc, err);
		if (rc < 0) {
			assert_string_equal(err, t->err);
			continue;
		}
		/* strings are copied, and setting twice frees the old one */
		const char *got = t->key[0] == 'h' ? c->hostname
		                : t->key[0] == 's' ? c->spool_dir
		                : t->key[0] == 'l' ? c->log_file : c->user;
		assert_string_equal(got, t->value);
		assert_ptr_not_equal(got, t->value);
	}
}

/* ---- listen ------------------------------------------------------------ */

struct listen_case {
	const char *value;
	int rc;
	const char *err;
	size_t n;
	struct { const char *host; uint16_t port; bool v6; } l[3];
};

static const struct listen_case listen_cases[] = {
	{"127.0.0.1:2525", 0, NULL, 1, {{"127.0.0.1", 2525, false}}},
	{"[::1]:2525", 0, NULL, 1, {{"::1", 2525, true}}},
	{"0.0.0.0:25, [::]:25", 0, NULL, 2,
	 {{"0.0.0.0", 25, false}, {"::", 25, true}}},
	{" 127.0.0.2:1 ,127.0.0.3:65535,[2001:db8:0::1]:587", 0, NULL, 3,
	 {{"127.0.0.2", 1, false}, {"127.0.0.3", 65535, false},
	  {"2001:db8::1", 587, true}}},
	{"", -EINVAL, "listen: no address given", 0, {{0}}},
	{"127.0.0.1", -EINVAL, "listen: expected ADDR:PORT: '127.0.0.1'", 0,
	 {{0}}},
	{"127.0.0.1:", -EINVAL,
	 "listen: bad port in '127.0.0.1:' (expected 1-65535)", 0, {{0}}},
	{"127.0.0.1:0", -EINVAL,
	 "listen: bad port in '127.0.0.1:0' (expected 1-65535)", 0, {{0}}},
	{"127.0.0.1:65536", -EINVAL,
	 "listen: bad port in '127.0.0.1:65536' (expected 1-65535)", 0, {{0}}},
	{"127.0.0.1:100000", -EINVAL,
	 "listen: bad port in '127.0.0.1:100000' (expected 1-65535)", 0, {{0}}},
	{"127.0.0.1:-1", -EINVAL,
	 "listen: bad port in '127.0.0.1:-1' (expected 1-65535)", 0, {{0}}},
	{"127.0.0.1:25x", -EINVAL,
	 "listen: bad port in '127.0.0.1:25x' (expected 1-65535)", 0, {{0}}},
	{"localhost:25", -EINVAL, "listen: not an IPv4 address: 'localhost:25'",
	 0, {{0}}},
	{"256.0.0.1:25", -EINVAL, "listen: not an IPv4 address: '256.0.0.1:25'",
	 0, {{0}}},
	{":25", -EINVAL, "listen: not an IPv4 address: ':25'", 0, {{0}}},
	{"::1:2525", -EINVAL,
	 "listen: IPv6 address needs brackets, as in [::1]:2525: '::1:2525'", 0,
	 {{0}}},
	{"[::1]", -EINVAL, "listen: expected ADDR:PORT: '[::1]'", 0, {{0}}},
	{"[::1:25", -EINVAL, "listen: missing ']' in '[::1:25'", 0, {{0}}},
	{"[1.2.3.4]:25", -EINVAL, "listen: not an IPv6 address: '[1.2.3.4]:25'",
	 0, {{0}}},
	{"[]:25", -EINVAL, "listen: not an IPv6 address: '[]:25'", 0, {{0}}},
	{"127.0.0.1:25,", -EINVAL, "listen: empty address in list", 0, {{0}}},
	{"127.0.0.1:25, 127.0.0.1:25", -EINVAL,
	 "listen: duplicate address '127.0.0.1:25'", 0, {{0}}},
	{"[::1]:25,[0::1]:25", -EINVAL, "listen: duplicate address '[0::1]:25'",
	 0, {{0}}},
	/* Listener modes (test_listen_modes has the good ones). */
	{"127.0.0.1:25/imap", -EINVAL, "listen: unknown listener mode 'imap' in "
	 "'127.0.0.1:25/imap' (expected smtp, submission or smtps)", 0, {{0}}},
	{"127.0.0.1:25/", -EINVAL, "listen: unknown listener mode '' in "
	 "'127.0.0.1:25/' (expected smtp, submission or smtps)", 0, {{0}}},
	{"127.0.0.1:25/smtps/smtp", -EINVAL, "listen: unknown listener mode "
	 "'smtps/smtp' in '127.0.0.1:25/smtps/smtp' (expected smtp, submission "
	 "or smtps)", 0, {{0}}},
	{"127.0.0.1/smtps", -EINVAL, "listen: expected ADDR:PORT: "
	 "'127.0.0.1/smtps'", 0, {{0}}},
	{"[::1]/smtps", -EINVAL, "listen: expected ADDR:PORT: '[::1]/smtps'", 0,
	 {{0}}},
	{"127.0.0.1:25/smtp, 127.0.0.1:25/smtps", -EINVAL,
	 "listen: duplicate address '127.0.0.1:25/smtps'", 0, {{0}}},
};

static void test_listen(void **state)
{
	struct conf *c = *state;
	for (size_t i = 0; i < sizeof listen_cases / sizeof *listen_cases; i++) {
		const struct listen_case *t = &listen_cases[i];
		char err[ERRLEN] = "";
		int rc = conf_set(c, "listen", t->value, err, sizeof err);
		if (rc != t->rc)
			fail_msg("listen = '%s': rc %d (%s)", t->value, rc, err);
		if (rc < 0) {
			if (strcmp(err, t->err) != 0)
				fail_msg("listen = '%s':\n got  '%s'\n want '%s'",
				         t->value, err, t->err);
			continue;
		}
		assert_int_equal(c->nlisten, t->n);
		for (size_t k = 0; k < t->n; k++) {
			assert_string_equal(c->listen[k].host, t->l[k].host);
			assert_int_equal(c->listen[k].port, t->l[k].port);
			assert_int_equal(c->listen[k].ipv6, t->l[k].v6);
			assert_int_equal(c->listen[k].mode, CONF_LISTEN_SMTP);
		}
	}
}

/* ADDR:PORT/MODE; no suffix is smtp, so older files keep working. */
static void test_listen_modes(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	static const struct {
		const char *value;
		size_t n;
		struct { uint16_t port; bool v6; enum conf_listen_mode mode; } l[3];
	} cases[] = {
		{"0.0.0.0:25/smtp, 0.0.0.0:587/submission, 0.0.0.0:465/smtps", 3,
		 {{25, false, CONF_LISTEN_SMTP}, {587, false, CONF_LISTEN_SUBMISSION},
		  {465, false, CONF_LISTEN_SMTPS}}},
		{"[::1]:465/smtps,127.0.0.1:587/Submission, 127.0.0.1:25", 3,
		 {{465, true, CONF_LISTEN_SMTPS}, {587, false, CONF_LISTEN_SUBMISSION},
		  {25, false, CONF_LISTEN_SMTP}}},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		if (conf_set(c, "listen", cases[i].value, err, sizeof err) != 0)
			fail_msg("listen = '%s': %s", cases[i].value, err);
		assert_int_equal(c->nlisten, cases[i].n);
		for (size_t k = 0; k < cases[i].n; k++) {
			assert_int_equal(c->listen[k].port, cases[i].l[k].port);
			assert_int_equal(c->listen[k].ipv6, cases[i].l[k].v6);
			assert_int_equal(c->listen[k].mode, cases[i].l[k].mode);
		}
	}
	assert_string_equal(conf_listen_mode_names[CONF_LISTEN_SUBMISSION],
	                    "submission");
}

static void test_listen_max(void **state)
{
	struct conf *c = *state;
	char v[1024] = "", err[ERRLEN];
	size_t o = 0;
	for (int i = 0; i < CONF_LISTEN_MAX; i++)
		o += (size_t)snprintf(v + o, sizeof v - o, "%s127.0.0.1:%d",
		                      i ? "," : "", 1000 + i);
	assert_int_equal(conf_set(c, "listen", v, err, sizeof err), 0);
	assert_int_equal(c->nlisten, CONF_LISTEN_MAX);
	snprintf(v + o, sizeof v - o, ",127.0.0.1:9999");
	assert_int_equal(conf_set(c, "listen", v, err, sizeof err), -EINVAL);
	assert_string_equal(err, "listen: more than 16 addresses");
	assert_int_equal(c->nlisten, CONF_LISTEN_MAX);
}

/* ---- scrub_headers ----------------------------------------------------- */

static void test_headers(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];

	/* a list key replaces the whole list */
	assert_int_equal(conf_set(c, "scrub_headers", " X-A ,X-B", err,
	                          sizeof err), 0);
	assert_int_equal(c->nscrub_headers, 2);
	assert_string_equal(c->scrub_headers[0], "X-A");
	assert_string_equal(c->scrub_headers[1], "X-B");
	assert_int_equal(conf_set(c, "scrub_headers", "Received", err,
	                          sizeof err), 0);
	assert_int_equal(c->nscrub_headers, 1);
	assert_string_equal(c->scrub_headers[0], "Received");
	assert_null(c->scrub_headers[1]);

	/* empty: scrub nothing */
	assert_int_equal(conf_set(c, "scrub_headers", "", err, sizeof err), 0);
	assert_int_equal(c->nscrub_headers, 0);
	assert_int_equal(conf_set(c, "scrub_headers", "  ", err, sizeof err), 0);
	assert_int_equal(c->nscrub_headers, 0);

	static const struct {
		const char *v, *err;
	} bad[] = {
		{"A:B", "scrub_headers: bad header name 'A:B'"},
		{"A B", "scrub_headers: bad header name 'A B'"},
		{"A,,B", "scrub_headers: empty header name in list"},
		{"A,", "scrub_headers: empty header name in list"},
		{"X-\xc3\xa9", "scrub_headers: bad header name 'X-\xc3\xa9'"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		assert_int_equal(conf_set(c, "scrub_headers", bad[i].v, err,
		                          sizeof err), -EINVAL);
		assert_string_equal(err, bad[i].err);
	}

	/* 76 characters at most; the message quotes a cut name */
	char name[CONF_HEADER_NAME_MAX + 2], want[ERRLEN];
	memset(name, 'h', sizeof name - 1);
	name[sizeof name - 1] = '\0';
	assert_int_equal(conf_set(c, "scrub_headers", name, err, sizeof err),
	                 -EINVAL);
	snprintf(want, sizeof want, "scrub_headers: header name longer than "
	         "76: '%.76s...'", name);
	assert_string_equal(err, want);
	name[CONF_HEADER_NAME_MAX] = '\0';
	assert_int_equal(conf_set(c, "scrub_headers", name, err, sizeof err), 0);

	/* ftext: every printable but ':' */
	assert_int_equal(conf_set(c, "scrub_headers", "!#$%&'*+-./09;<=>?@[\\]^_`{|}~",
	                          err, sizeof err), 0);

	/* at most CONF_LIST_MAX */
	char v[CONF_LIST_MAX * 8 + 16] = "";
	size_t o = 0;
	for (int i = 0; i < CONF_LIST_MAX; i++)
		o += (size_t)snprintf(v + o, sizeof v - o, "%sH%d", i ? "," : "", i);
	assert_int_equal(conf_set(c, "scrub_headers", v, err, sizeof err), 0);
	assert_int_equal(c->nscrub_headers, CONF_LIST_MAX);
	snprintf(v + o, sizeof v - o, ",Z");
	assert_int_equal(conf_set(c, "scrub_headers", v, err, sizeof err),
	                 -EINVAL);
	assert_string_equal(err, "scrub_headers: more than 64 header names");
	assert_int_equal(c->nscrub_headers, CONF_LIST_MAX);
}

/* ---- the shared parsers ------------------------------------------------ */

static void test_parse_units(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		int rc;
		uint64_t v;
	} dur[] = {
		{"300", 0, 300000}, {"30s", 0, 30000}, {"5m", 0, 300000},
		{"2h", 0, 7200000}, {"1d", 0, 86400000}, {"500ms", 0, 500},
		{"0", 0, 0}, {"", -EINVAL, 0}, {"s", -EINVAL, 0},
		{"5M", -EINVAL, 0}, {" 5m", -EINVAL, 0}, {"5m ", -EINVAL, 0},
		{"-5", -EINVAL, 0}, {"18446744073709551615ms", 0, UINT64_MAX},
		{"18446744073709551616ms", -ERANGE, 0},
		{"18446744073709551615s", -ERANGE, 0},
	}, size[] = {
		{"10M", 0, 10 * M}, {"1k", 0, K}, {"1K", 0, K}, {"3G", 0, 3 * G},
		{"7", 0, 7}, {"1g", 0, G}, {"1m", 0, M}, {"", -EINVAL, 0},
		{"1T", -EINVAL, 0}, {"1.5M", -EINVAL, 0},
		{"18446744073709551615", 0, UINT64_MAX},
		{"18446744073709551615k", -ERANGE, 0},
	};
	for (size_t i = 0; i < sizeof dur / sizeof *dur; i++) {
		uint64_t v = 0;
		int rc = conf_parse_duration(dur[i].s, &v);
		if (rc != dur[i].rc || (rc == 0 && v != dur[i].v))
			fail_msg("duration '%s': rc %d v %llu", dur[i].s, rc,
			         (unsigned long long)v);
	}
	for (size_t i = 0; i < sizeof size / sizeof *size; i++) {
		uint64_t v = 0;
		int rc = conf_parse_size(size[i].s, &v);
		if (rc != size[i].rc || (rc == 0 && v != size[i].v))
			fail_msg("size '%s': rc %d v %llu", size[i].s, rc,
			         (unsigned long long)v);
	}
	uint64_t v;
	assert_int_equal(conf_parse_size(NULL, &v), -EINVAL);
	assert_int_equal(conf_parse_duration(NULL, &v), -EINVAL);
}

/* ---- files ------------------------------------------------------------- */

struct file_case {
	const char *name;
	const char *text;
	size_t len;          /* 0: strlen */
	int rc;
	const char *err;     /* exact, when rc < 0 */
};

static const struct file_case file_cases[] = {
	{"empty", "", 0, 0, NULL},
	{"blank and comments",
	 "\n   \n# a comment\n   # indented comment\n\t\n", 0, 0, NULL},
	{"basic",
	 "max_recipients = 200\nhostname=mx.example.org\n", 0, 0, NULL},
	{"trailing comment", "max_recipients = 300   # three hundred\n", 0, 0,
	 NULL},
	{"hash in value", "hostname = a#b\n", 0, -EINVAL,
	 "x.conf:1: hostname: not a host name: 'a#b'"},
	{"no final newline", "max_recipients = 400", 0, 0, NULL},
	{"crlf", "max_recipients = 500\r\nlog_level = debug\r\n", 0, 0, NULL},
	{"empty string value", "user =\nlog_file = # none\n", 0, 0, NULL},
	{"duplicate, last wins", "max_recipients = 1\nmax_recipients = 600\n", 0,
	 0, NULL},
	{"unknown key", "# c\n\nfoo = 1\n", 0, -EINVAL,
	 "x.conf:3: unknown key 'foo'"},
	{"bad number", "\n\n\n\n\n\n\n\n\n\n\nmax_recipients = abc\n", 0,
	 -EINVAL, "x.conf:12: max_recipients: not a number: 'abc'"},
	{"no equals", "max_recipients 5\n", 0, -EINVAL,
	 "x.conf:1: expected 'key = value': 'max_recipients 5'"},
	{"no key", " = 5\n", 0, -EINVAL, "x.conf:1: missing key before '='"},
	{"value with equals", "hostname = a=b\n", 0, -EINVAL,
	 "x.conf:1: hostname: not a host name: 'a=b'"},
	{"stops at first error", "max_recipients = 7\nfoo=1\nbar=2\n", 0,
	 -EINVAL, "x.conf:2: unknown key 'foo'"},
	{"nul byte", "max_recipients = 7\nfoo\0 = 1\n", 28, -EINVAL,
	 "x.conf:2: NUL byte in line"},
	{"ctl in value", "user = a\x1b[31m\n", 0, -EINVAL,
	 "x.conf:1: user: control character in value 'a\\x1b[31m'"},
	{"ctl in key", "fo\x01o = 1\n", 0, -EINVAL,
	 "x.conf:1: unknown key 'fo\\x01o'"},
	{"bad enum", "delivery = x\n", 0, -EINVAL,
	 "x.conf:1: delivery: unsupported value 'x' (expected: hold, smarthost, direct)"},
};

static void test_file_table(void **state)
{
	for (size_t i = 0; i < sizeof file_cases / sizeof *file_cases; i++) {
		const struct file_case *t = &file_cases[i];
		struct conf c;
		char err[ERRLEN] = "";
		size_t len = t->len ? t->len : strlen(t->text);
		char *text = malloc(len ? len : 1);
		assert_non_null(text);
		memcpy(text, t->text, len);
		assert_int_equal(conf_init(&c), 0);
		int rc = conf_parse(&c, "x.conf", text, len, err, sizeof err);
		free(text);
		if (rc != t->rc)
			fail_msg("%s: rc %d, want %d (%s)", t->name, rc, t->rc, err);
		if (rc < 0 && strcmp(err, t->err) != 0)
			fail_msg("%s:\n got  '%s'\n want '%s'", t->name, err, t->err);
		conf_free(&c);
	}
	(void)state;
}

static void test_file_values(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	static const char text[] =
		"# relayd test config\n"
		"listen = [::1]:2525, 127.0.0.1:2526   # two\n"
		"  spool_dir =  /tmp/spool dir  \n"
		"hostname = mx.example.org\n"
		"max_message_size = 10M\n"
		"max_recipients = 5\n"
		"max_recipients = 6\n"
		"scrub_headers = X-A\n"
		"timeout_data = 500ms\n"
		"log_stderr = no\n"
		"log_file =\n"
		"bare_newline = normalize\n";
	assert_int_equal(conf_parse(c, "t.conf", text, sizeof text - 1, err,
	                            sizeof err), 0);
	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[0].host, "::1");
	assert_true(c->listen[0].ipv6);
	assert_int_equal(c->listen[1].port, 2526);
	assert_string_equal(c->spool_dir, "/tmp/spool dir");
	assert_string_equal(c->hostname, "mx.example.org");
	assert_int_equal(c->max_message_size, 10 * M);
	assert_int_equal(c->max_recipients, 6);
	assert_int_equal(c->nscrub_headers, 1);
	assert_int_equal(c->timeout_data, 500);
	assert_false(c->log_stderr);
	assert_string_equal(c->log_file, "");
	assert_int_equal(c->bare_newline, CONF_BARE_NORMALIZE);
}

static void test_file_long_line(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	size_t n = CONF_LINE_MAX + 1;
	char *text = malloc(n + 32);
	assert_non_null(text);

	/* exactly CONF_LINE_MAX is fine: a comment of that length */
	memset(text, ' ', CONF_LINE_MAX);
	text[0] = '#';
	text[CONF_LINE_MAX] = '\n';
	assert_int_equal(conf_parse(c, "x.conf", text, CONF_LINE_MAX + 1, err,
	                            sizeof err), 0);
	/* one more is an error, on line 2 */
	memcpy(text, "\n#", 2);
	memset(text + 2, ' ', n - 1);
	assert_int_equal(conf_parse(c, "x.conf", text, n + 1, err, sizeof err),
	                 -EINVAL);
	assert_string_equal(err, "x.conf:2: line longer than 4096 characters");
	free(text);
}

/* Arbitrary bytes never crash the parser (the fuzzer does more). */
static void test_file_garbage(void **state)
{
	(void)state;
	static const char alphabet[] = "=# \t\r\n,:[]\x01\x80\xff\0"
	                               "max_recipients listen 1.2.3.4:25 yes 5m";
	uint32_t seed = 12345;
	for (int round = 0; round < 2000; round++) {
		struct conf c;
		char err[64];
		size_t len = (size_t)(round % 200);
		char *text = malloc(len ? len : 1);
		assert_non_null(text);
		for (size_t i = 0; i < len; i++) {
			seed = seed * 1103515245u + 12345u;
			text[i] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
		}
		assert_int_equal(conf_init(&c), 0);
		int rc = conf_parse(&c, "g", text, len, err, sizeof err);
		assert_true(rc == 0 || rc == -EINVAL);
		if (rc < 0)
			assert_true(strlen(err) < sizeof err);
		conf_free(&c);
		free(text);
	}
}

/* ---- environment ------------------------------------------------------- */

static void test_env(void **state)
{
	struct conf *c = *state;
	char err[ERRLEN];
	char *const env[] = {
		"PATH=/bin",
		"RELAYD_MAX_MESSAGE_SIZE=10M",
		"RELAYD_LISTEN= [::1]:2525 ",
		"RELAYD_LOG_LEVEL=debug",
		"RELAYD_CONFIG=/not/a/key",      /* not a key: someone else's */
		"relayd_max_recipients=5",       /* lower case: not ours */
		"RELAYD_max_recipients=5",
		"RELAYD_MAX_RECIPIENTS=",        /* empty number is an error below */
		NULL,
	};
	char *const good[] = {
		env[0], env[1], env[2], env[3], env[4], env[5], env[6], NULL};
	assert_int_equal(conf_apply_env(c, good, err, sizeof err), 0);
	assert_int_equal(c->max_message_size, 10 * M);
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0].host, "::1");
	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_int_equal(c->max_recipients, 1000);

	assert_int_equal(conf_apply_env(c, env, err, sizeof err), -EINVAL);
	assert_string_equal(err, "environment RELAYD_MAX_RECIPIENTS: not a "
	                         "number: ''");

	char *const bad_listen[] = {"RELAYD_LISTEN=127.0.0.1:0", NULL};
	assert_int_equal(conf_apply_env(c, bad_listen, err, sizeof err),
	                 -EINVAL);
	assert_string_equal(err, "environment RELAYD_LISTEN: bad port in "
	                         "'127.0.0.1:0' (expected 1-65535)");
	assert_int_equal(conf_apply_env(c, NULL, err, sizeof err), 0);
}

/* ---- conf_load --------------------------------------------------------- */

static void test_load(void **state)
{
	(void)state;
	struct conf c;
	char err[ERRLEN], path[] = "/tmp/test_conf_XXXXXX";

	assert_int_equal(conf_load(&c, "/x/y.conf", err, sizeof err), -ENOENT);
	assert_string_equal(err,
	                    "cannot read /x/y.conf: No such file or directory");
	conf_free(&c);   /* harmless after a failed load */
	assert_int_equal(conf_load(&c, "/", err, sizeof err), -EISDIR);
	assert_string_equal(err, "cannot read /: Is a directory");

	int fd = mkstemp(path);
	assert_true(fd >= 0);
	static const char text[] = "max_recipients = 123\nmax_bad_commands = 4\n";
	assert_int_equal(write(fd, text, sizeof text - 1), sizeof text - 1);
	close(fd);

	/* the environment wins over the file */
	assert_int_equal(setenv("RELAYD_MAX_BAD_COMMANDS", "9", 1), 0);
	assert_int_equal(conf_load(&c, path, err, sizeof err), 0);
	assert_int_equal(c.max_recipients, 123);
	assert_int_equal(c.max_bad_commands, 9);
	conf_free(&c);

	assert_int_equal(setenv("RELAYD_MAX_BAD_COMMANDS", "x", 1), 0);
	assert_int_equal(conf_load(&c, path, err, sizeof err), -EINVAL);
	assert_string_equal(err,
	                    "environment RELAYD_MAX_BAD_COMMANDS: not a number: 'x'");
	unsetenv("RELAYD_MAX_BAD_COMMANDS");

	/* errors name the file as given */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\nfoo = 1\n", 9), 9);
	close(fd);
	assert_int_equal(conf_load(&c, path, err, sizeof err), -EINVAL);
	char want[ERRLEN];
	snprintf(want, sizeof want, "%s:2: unknown key 'foo'", path);
	assert_string_equal(err, want);
	unlink(path);

	/* NULL path: defaults and environment */
	assert_int_equal(conf_load(&c, NULL, err, sizeof err), 0);
	assert_int_equal(c.max_recipients, 1000);
	conf_free(&c);
	conf_free(&c);
}


/* ---- conf_check: keys that go together ---------------------------------- */

struct check_case {
	const char *name, *text;
	const char *err;       /* NULL: valid */
};

static const struct check_case check_cases[] = {
	{"smtps without a certificate", "listen = 127.0.0.1:465/smtps\n",
	 "x.conf:1: listen: 127.0.0.1:465/smtps is implicit TLS: it needs "
	 "tls_cert_file and tls_key_file"},
	{"names the line and the listener",
	 "# relayd\nhostname = mx.test\nlisten = 127.0.0.1:25, [::1]:465/smtps\n",
	 "x.conf:3: listen: [::1]:465/smtps is implicit TLS: it needs "
	 "tls_cert_file and tls_key_file"},
	{"the last listen counts",
	 "listen = 127.0.0.1:465/smtps\nlisten = 127.0.0.1:25\n", NULL},
	{"smtps with a certificate",
	 "listen = 127.0.0.1:465/smtps\ntls_cert_file = /c.pem\n"
	 "tls_key_file = /k.pem\n", NULL},
	{"certificate before listen",
	 "tls_cert_file = /c.pem\ntls_key_file = /k.pem\n"
	 "listen = 0.0.0.0:25/smtp, 0.0.0.0:587/submission, 0.0.0.0:465/smtps\n",
	 NULL},
	{"submission without a certificate",
	 "listen = 127.0.0.1:587/submission\n", NULL},
	{"certificate without key", "tls_cert_file = /c.pem\n",
	 "x.conf:1: tls_cert_file: needs tls_key_file as well"},
	{"key without certificate", "\ntls_key_file = /k.pem\n",
	 "x.conf:2: tls_key_file: needs tls_cert_file as well"},
	{"certificate emptied again",
	 "tls_cert_file = /c.pem\ntls_cert_file =\n", NULL},
};

static void test_check(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof check_cases / sizeof *check_cases; i++) {
		const struct check_case *t = &check_cases[i];
		struct conf c;
		char err[ERRLEN] = "";
		assert_int_equal(conf_init(&c), 0);
		if (conf_parse(&c, "x.conf", t->text, strlen(t->text), err,
		               sizeof err) != 0)
			fail_msg("%s: %s", t->name, err);
		int rc = conf_check(&c, "x.conf", err, sizeof err);
		if (t->err && (rc != -EINVAL || strcmp(err, t->err) != 0))
			fail_msg("%s: rc %d\n got  '%s'\n want '%s'", t->name, rc, err,
			         t->err);
		if (!t->err && rc != 0)
			fail_msg("%s: rc %d (%s)", t->name, rc, err);
		conf_free(&c);
	}

	/* Set from the environment: the variable is named. */
	struct conf c;
	char err[ERRLEN];
	assert_int_equal(conf_init(&c), 0);
	char *const env[] = {"RELAYD_LISTEN=127.0.0.1:465/smtps", NULL};
	if (conf_apply_env(&c, env, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_int_equal(conf_check(&c, "x.conf", err, sizeof err), -EINVAL);
	assert_string_equal(err, "environment RELAYD_LISTEN: 127.0.0.1:465/smtps "
	                         "is implicit TLS: it needs tls_cert_file and "
	                         "tls_key_file");
	char *const env2[] = {"RELAYD_TLS_CERT_FILE=/c.pem",
	                      "RELAYD_TLS_KEY_FILE=/k.pem", NULL};
	assert_int_equal(conf_apply_env(&c, env2, err, sizeof err), 0);
	assert_int_equal(conf_check(&c, "x.conf", err, sizeof err), 0);
	conf_free(&c);
}

/* conf_load runs conf_check: relayd (and relayd -t) refuse such a file. */
static void test_load_checks(void **state)
{
	(void)state;
	struct conf c;
	char err[ERRLEN], path[] = "/tmp/test_conf_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	static const char text[] = "max_recipients = 5\n"
	                           "listen = 127.0.0.1:2525, 127.0.0.1:4650/smtps\n";
	assert_int_equal(write(fd, text, sizeof text - 1), sizeof text - 1);
	close(fd);
	assert_int_equal(conf_load(&c, path, err, sizeof err), -EINVAL);
	char want[ERRLEN];
	snprintf(want, sizeof want, "%s:2: listen: 127.0.0.1:4650/smtps is "
	         "implicit TLS: it needs tls_cert_file and tls_key_file", path);
	assert_string_equal(err, want);
	/* The environment may supply what the file lacks. */
	assert_int_equal(setenv("RELAYD_TLS_CERT_FILE", "/c.pem", 1), 0);
	assert_int_equal(setenv("RELAYD_TLS_KEY_FILE", "/k.pem", 1), 0);
	assert_int_equal(conf_load(&c, path, err, sizeof err), 0);
	assert_int_equal(c.listen[1].mode, CONF_LISTEN_SMTPS);
	assert_string_equal(c.tls_cert_file, "/c.pem");
	conf_free(&c);
	unsetenv("RELAYD_TLS_CERT_FILE");
	unsetenv("RELAYD_TLS_KEY_FILE");
	unlink(path);
}

/* ---- etc/relayd.conf --------------------------------------------------- */

/* The repository's default file parses, sets what `make run` needs, and
 * mentions every key ("key =" or "#key ="), so operators see them all. */
static void test_default_file(void **state)
{
	(void)state;
	char path[1024], err[ERRLEN];
	const char *f = __FILE__, *tail = strstr(f, "tests/unit/test_conf.c");
	snprintf(path, sizeof path, "%.*setc/relayd.conf",
	         (int)(tail ? tail - f : 0), f);

	struct conf c;
	assert_int_equal(unsetenv("RELAYD_SPOOL_DIR"), 0);
	if (conf_load(&c, path, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_string_equal(c.spool_dir, "./var/spool");
	assert_int_equal(c.nlisten, 1);
	assert_string_equal(c.listen[0].host, "127.0.0.1");
	assert_int_equal(c.listen[0].port, 2525);
	assert_true(c.log_stderr);
	assert_int_equal(c.delivery, CONF_DELIVERY_HOLD);
	conf_free(&c);

	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	static char text[65536];
	size_t n = fread(text, 1, sizeof text - 1, fp);
	fclose(fp);
	text[n] = '\0';
	const char *def;
	for (size_t i = 0; conf_key(i, &def, NULL); i++) {
		char a[128], b[128];
		const char *k = conf_key(i, NULL, NULL);
		snprintf(a, sizeof a, "\n%s = ", k);
		snprintf(b, sizeof b, "\n#%s =", k);
		if (!strstr(text, a) && !strstr(text, b))
			fail_msg("etc/relayd.conf does not mention %s", k);
		/* a commented-out default shows the real default */
		snprintf(b, sizeof b, "\n#%s = ", k);
		const char *p = strstr(text, b);
		if (p && def) {
			p += strlen(b);
			size_t dl = strlen(def);
			if (strncmp(p, def, dl) != 0 || p[dl] != '\n')
				fail_msg("etc/relayd.conf: %s default is not '%s'", k, def);
		}
	}

	/* relayd.conf(5), made from etc/relayd.conf by contrib/man/mkconf5,
	 * names every key too (test_packaging.py checks it is up to date). */
	snprintf(path, sizeof path, "%.*scontrib/man/relayd.conf.5",
	         (int)(tail ? tail - f : 0), f);
	fp = fopen(path, "r");
	assert_non_null(fp);
	n = fread(text, 1, sizeof text - 1, fp);
	assert_true(n < sizeof text - 1);
	fclose(fp);
	text[n] = '\0';
	for (size_t i = 0; conf_key(i, NULL, NULL); i++) {
		char a[128];
		snprintf(a, sizeof a, "\n.TP\n\\fB%s\\fR", conf_key(i, NULL, NULL));
		if (!strstr(text, a))
			fail_msg("contrib/man/relayd.conf.5 does not describe %s "
			         "(run make man)", conf_key(i, NULL, NULL));
	}
}

/* dns_servers: numeric addresses, optional ports, IPv6 in brackets when a
 * port follows; anything else names the bad item. */
static void test_dns_servers(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int n;
		const char *host0;
		unsigned port0;
		bool v6_last;
	} ok[] = {
		{"", 0, "", 0, false},
		{"127.0.0.1:5353, [::1]:53", 2, "127.0.0.1", 5353, true},
		{"192.0.2.1", 1, "192.0.2.1", 53, false},
		{"::1", 1, "::1", 53, true},
		{"[2001:db8::1]", 1, "2001:db8::1", 53, true},
		{"10.0.0.1:53,10.0.0.2 10.0.0.3", 3, "10.0.0.1", 53, false},
	};
	static const char *const bad[] = {
		"localhost", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x",
		"[127.0.0.1]:53", "[::1", "[::1]x", "1.2.3", "127.0.0.1:",
		"1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.5,6.6.6.6,7.7.7.7,8.8.8.8,"
		"9.9.9.9",
	};
	struct conf_dns_server s[CONF_DNS_SERVERS_MAX];
	char msg[256];
	for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
		int n = conf_parse_dns_servers(ok[i].in, s, CONF_DNS_SERVERS_MAX,
		                               msg, sizeof msg);
		if (n != ok[i].n)
			fail_msg("'%s': %d (%s)", ok[i].in, n, msg);
		if (n > 0) {
			assert_string_equal(s[0].host, ok[i].host0);
			assert_int_equal(s[0].port, ok[i].port0);
			assert_int_equal(s[n - 1].ipv6, ok[i].v6_last);
		}
	}
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		if (conf_parse_dns_servers(bad[i], s, CONF_DNS_SERVERS_MAX, msg,
		                           sizeof msg) >= 0)
			fail_msg("accepted '%s'", bad[i]);
	struct conf c;
	assert_int_equal(conf_init(&c), 0);
	assert_int_not_equal(conf_set(&c, "dns_servers", "ns.example", msg,
	                              sizeof msg), 0);
	assert_non_null(strstr(msg, "dns_servers"));
	assert_non_null(strstr(msg, "'ns.example'"));
	assert_int_equal(conf_set(&c, "dns_servers", "127.0.0.1:5353", msg,
	                          sizeof msg), 0);
	assert_string_equal(c.dns_servers, "127.0.0.1:5353");
	conf_free(&c);
}

/* dnsbl_zones: host names separated by commas or blanks; empty is none. */
static void test_dnsbl_zones(void **state)
{
	(void)state;
	char msg[ERRLEN];
	static const char *const ok[] = {
		"", "zen.spamhaus.org", "bl.test, b.barracudacentral.org",
		" a.test ,b.test  c.test ",
	};
	static const char *const bad[] = {
		"bl test!", "a..b", ".bl.test", "bl.test;rm",
		/* 33 zones */
		"a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a",
	};
	struct conf c;
	assert_int_equal(conf_init(&c), 0);
	assert_non_null(strstr(c.dnsbl_zones, "zen.spamhaus.org"));
	for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
		if (conf_set(&c, "dnsbl_zones", ok[i], msg, sizeof msg) != 0)
			fail_msg("refused '%s': %s", ok[i], msg);
		assert_string_equal(c.dnsbl_zones, ok[i]);
	}
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		msg[0] = '\0';
		if (conf_set(&c, "dnsbl_zones", bad[i], msg, sizeof msg) == 0)
			fail_msg("accepted '%s'", bad[i]);
		assert_non_null(strstr(msg, "dnsbl_zones"));
	}
	conf_free(&c);
}

/* dkim_key: each line adds one (raw text kept for dkim/), an empty value
 * empties the list, bad lines name the line; RELAYD_DKIM_KEY replaces the
 * file's list with its ';'-separated values. */
static void test_dkim_keys(void **state)
{
	(void)state;
	struct conf c;
	char err[ERRLEN];
	static const char text[] =
	    "dkim_key = example.com s1 /k/a.pem\n"
	    "dkim_key = example.com  s2  /k/b c.pem  \n"
	    "dkim_subdomains = yes\n";
	assert_int_equal(conf_init(&c), 0);
	assert_int_equal(c.ndkim_keys, 0);
	assert_false(c.dkim_subdomains);
	assert_false(c.dkim_required);
	if (conf_parse(&c, "f", text, sizeof text - 1, err, sizeof err)) fail_msg("%s", err);
	assert_int_equal(c.ndkim_keys, 2);
	assert_string_equal(c.dkim_keys[0], "example.com s1 /k/a.pem");
	assert_string_equal(c.dkim_keys[1], "example.com  s2  /k/b c.pem");
	assert_true(c.dkim_subdomains);

	static const char bad[] = "\ndkim_key = example.com /k/a.pem\n";
	assert_int_equal(conf_parse(&c, "f", bad, sizeof bad - 1, err,
	                            sizeof err), -EINVAL);
	assert_string_equal(err, "f:2: dkim_key: expected 'DOMAIN SELECTOR "
	                         "/path/to/key.pem': 'example.com /k/a.pem'");
	assert_int_equal(c.ndkim_keys, 2);   /* a bad line adds nothing */

	char *const env[] = {"RELAYD_DKIM_KEY=a.example s /k/1.pem; "
	                     "b.example s /k/2.pem;", "RELAYD_DKIM_REQUIRED=yes",
	                     NULL};
	if (conf_apply_env(&c, env, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_int_equal(c.ndkim_keys, 2);
	assert_string_equal(c.dkim_keys[0], "a.example s /k/1.pem");
	assert_string_equal(c.dkim_keys[1], "b.example s /k/2.pem");
	assert_true(c.dkim_required);
	char *const env_bad[] = {"RELAYD_DKIM_KEY=a.example s", NULL};
	assert_int_equal(conf_apply_env(&c, env_bad, err, sizeof err), -EINVAL);
	assert_string_equal(err, "environment RELAYD_DKIM_KEY: expected "
	                         "'DOMAIN SELECTOR /path/to/key.pem': "
	                         "'a.example s'");

	static const char empty[] = "dkim_key =\n";
	assert_int_equal(conf_parse(&c, "f", empty, sizeof empty - 1, err,
	                            sizeof err), 0);
	assert_int_equal(c.ndkim_keys, 0);

	/* At most CONF_LIST_MAX keys. */
	for (int i = 0; i < CONF_LIST_MAX; i++)
		assert_int_equal(conf_set(&c, "dkim_key", "d s /p", err,
		                          sizeof err), 0);
	assert_int_equal(conf_set(&c, "dkim_key", "d s /p", err, sizeof err),
	                 -EINVAL);
	assert_string_equal(err, "dkim_key: more than 64 keys");
	conf_free(&c);
	assert_int_equal(c.ndkim_keys, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_table, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_table, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_failure_keeps_value, setup,
		                                teardown),
		cmocka_unit_test_setup_teardown(test_strings, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_max, setup, teardown),
		cmocka_unit_test_setup_teardown(test_headers, setup, teardown),
		cmocka_unit_test(test_parse_units),
		cmocka_unit_test(test_file_table),
		cmocka_unit_test_setup_teardown(test_file_values, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_long_line, setup,
		                                teardown),
		cmocka_unit_test(test_file_garbage),
		cmocka_unit_test_setup_teardown(test_env, setup, teardown),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_check),
		cmocka_unit_test(test_load_checks),
		cmocka_unit_test(test_default_file),
		cmocka_unit_test(test_dns_servers),
		cmocka_unit_test(test_dnsbl_zones),
		cmocka_unit_test(test_dkim_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
