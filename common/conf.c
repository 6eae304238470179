/*
 * common/conf.c - relayd's configuration. One table (conf_keys[]) holds
 * every key with its type, where it lands in struct conf, its range, its
 * default text and its help; conf_init() runs each default through the same
 * parser as the file, so a default cannot disagree with the checks.
 * Owns the file syntax (`key = value`, `#` comments), the RELAYD_<KEY>
 * environment overrides and the error texts ("file:line: key: why").
 * Input is never trusted: arbitrary bytes (NUL included) give an error,
 * never a crash.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lines.h"
#include "log.h"

extern char **environ;

#define CONF_FILE_MAX (1u << 20)   /* a config file is small text */
#define CONF_ENV_PREFIX "RELAYD_"
#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define SEC 1000ull
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

enum conf_type {
	CT_STRING,    /* char *, strdup'd */
	CT_BOOL,      /* bool */
	CT_UNSIGNED,  /* unsigned, [min, max] */
	CT_SIZE,      /* uint64_t bytes, [min, max] */
	CT_DURATION,  /* uint64_t ms, [min, max] */
	CT_ENUM,      /* int-sized enum, names in vals[] */
	CT_LISTEN,    /* listen[] + nlisten */
	CT_HEADERS,   /* scrub_headers[] + nscrub_headers */
	CT_DKIM_KEYS, /* dkim_keys[] + ndkim_keys: each value adds one */
};

struct conf_enum {
	const char *name;
	int val;
};

/* Extra check for a string value; writes the reason into msg. */
typedef int (*conf_check_fn)(const char *v, char *msg, size_t msglen);

struct conf_keydef {
	const char *name;
	enum conf_type type;
	size_t off;                  /* offset of the field in struct conf */
	const char *def;             /* default text; NULL: computed */
	uint64_t min, max;           /* numeric types */
	const struct conf_enum *vals;/* CT_ENUM, NULL-terminated */
	conf_check_fn check;         /* CT_STRING, optional */
	const char *help;
};

/* The enum fields are written through an int. */
_Static_assert(sizeof(enum conf_delivery) == sizeof(int), "enum size");
_Static_assert(sizeof(enum conf_bare_newline) == sizeof(int), "enum size");
_Static_assert(sizeof(enum conf_long_lines) == sizeof(int), "enum size");
_Static_assert(sizeof(enum conf_spool_sync) == sizeof(int), "enum size");
_Static_assert(sizeof(enum conf_tls) == sizeof(int), "enum size");
_Static_assert(sizeof(enum conf_ip_pref) == sizeof(int), "enum size");

static const struct conf_enum delivery_vals[] = {
	{"hold", CONF_DELIVERY_HOLD}, {"smarthost", CONF_DELIVERY_SMARTHOST},
	{"direct", CONF_DELIVERY_DIRECT}, {NULL, 0}};
static const struct conf_enum smarthost_tls_vals[] = {
	{"auto", CONF_TLS_AUTO}, {"implicit", CONF_TLS_IMPLICIT},
	{"starttls", CONF_TLS_STARTTLS}, {"none", CONF_TLS_NONE}, {NULL, 0}};
static const struct conf_enum bare_newline_vals[] = {
	{"reject", CONF_BARE_REJECT}, {"normalize", CONF_BARE_NORMALIZE},
	{NULL, 0}};
static const struct conf_enum long_lines_vals[] = {
	{"wrap", CONF_LONG_LINES_WRAP}, {"reject", CONF_LONG_LINES_REJECT},
	{NULL, 0}};
static const struct conf_enum ip_preference_vals[] = {
	{"auto", CONF_IP_AUTO}, {"ipv4", CONF_IP_IPV4}, {"ipv6", CONF_IP_IPV6},
	{"any", CONF_IP_ANY}, {NULL, 0}};
static const struct conf_enum spool_sync_vals[] = {
	{"syncfs", CONF_SYNC_SYNCFS}, {"fsync", CONF_SYNC_FSYNC}, {NULL, 0}};
const char *const conf_listen_mode_names[CONF_LISTEN__COUNT] = {
	[CONF_LISTEN_SMTP] = "smtp",
	[CONF_LISTEN_SUBMISSION] = "submission",
	[CONF_LISTEN_SMTPS] = "smtps",
};

static const struct conf_enum log_level_vals[] = {
	{"error", LOG_ERR}, {"warning", LOG_WARN}, {"info", LOG_INFO},
	{"debug", LOG_DEBUG}, {NULL, 0}};

static int check_hostname(const char *v, char *msg, size_t msglen);
static int check_nonempty(const char *v, char *msg, size_t msglen);
static int check_hostport(const char *v, char *msg, size_t msglen);
static int check_dns_servers(const char *v, char *msg, size_t msglen);
static int check_dnsbl_zones(const char *v, char *msg, size_t msglen);
static int check_rate(const char *v, char *msg, size_t msglen);
static int check_address(const char *v, char *msg, size_t msglen);
static int check_bind4(const char *v, char *msg, size_t msglen);
static int check_bind6(const char *v, char *msg, size_t msglen);
static int check_metrics_listen(const char *v, char *msg, size_t msglen);

#define OFF(f) offsetof(struct conf, f)

static const struct conf_keydef conf_keys[] = {
	{"hostname", CT_STRING, OFF(hostname), NULL, 0, 0, NULL, check_hostname,
	 "name in the greeting, EHLO reply and Received: (default: gethostname())"},
	{"listen", CT_LISTEN, OFF(listen), "127.0.0.1:2525", 0, 0, NULL, NULL,
	 "comma-separated ADDR:PORT[/smtp|/submission|/smtps] to accept SMTP "
	 "on; IPv6 as [::1]:2525"},
	{"spool_dir", CT_STRING, OFF(spool_dir), "/var/spool/relayd", 0, 0, NULL,
	 check_nonempty, "directory holding message bodies and the queue index"},
	{"log_file", CT_STRING, OFF(log_file), "", 0, 0, NULL, NULL,
	 "file to append log lines to; empty: no file"},
	{"log_stderr", CT_BOOL, OFF(log_stderr), "yes", 0, 0, NULL, NULL,
	 "also write log lines to standard error"},
	{"log_level", CT_ENUM, OFF(log_level), "info", 0, 0, log_level_vals, NULL,
	 "least severe level logged: error, warning, info or debug"},
	{"pid_file", CT_STRING, OFF(pid_file), "", 0, 0, NULL, NULL,
	 "file relayd writes its process id to, locked while it runs (for "
	 "init scripts without systemd); empty: none"},
	{"log_syslog", CT_BOOL, OFF(log_syslog), "no", 0, 0, NULL, NULL,
	 "also send log lines to syslog (facility mail) for journald/rsyslog"},
	{"delivery", CT_ENUM, OFF(delivery), "hold", 0, 0, delivery_vals, NULL,
	 "what to do with queued mail: hold (keep it), smarthost, or direct "
	 "(to each recipient domain's MX hosts)"},
	{"max_message_size", CT_SIZE, OFF(max_message_size), "50M", 1, 1ull << 40,
	 NULL, NULL, "largest message accepted, advertised as SIZE"},
	/* RFC 5321 §4.5.3.1.8 wants at least 100 (SMTP_RCPT_MIN); a smaller
	 * value is allowed for testing and for operators who mean it. */
	{"max_recipients", CT_UNSIGNED, OFF(max_recipients), "1000", 1, 1000000,
	 NULL, NULL, "recipients per message (RFC 5321 asks for at least 100)"},
	{"max_connections", CT_UNSIGNED, OFF(max_connections), "1000", 1, 1000000,
	 NULL, NULL, "simultaneous SMTP connections in total"},
	{"max_connections_per_ip", CT_UNSIGNED, OFF(max_connections_per_ip), "50",
	 1, 1000000, NULL, NULL, "simultaneous SMTP connections per client address"},
	{"max_bad_commands", CT_UNSIGNED, OFF(max_bad_commands), "20", 1, 1000000,
	 NULL, NULL, "errors in one session before it is closed"},
	{"scrub_headers", CT_HEADERS, OFF(scrub_headers),
	 "Received, X-Originating-IP, X-Remote-IP, X-Real-IP, X-Forwarded-For, "
	 "X-Sender-IP, X-Source-IP", 0, 0, NULL, NULL,
	 "header fields removed from submitted mail; empty: none"},
	{"received_client", CT_BOOL, OFF(received_client), "no", 0, 0, NULL, NULL,
	 "name the client's address and HELO in the Received: line"},
	/* Issue 9 §3: Postfix's hopcount_limit default; scrubbed Received:
	 * fields still count (smtpd/smtpd_scrub.h). */
	{"hop_limit", CT_UNSIGNED, OFF(hop_limit), "50", 1, 1000, NULL, NULL,
	 "a message arriving with this many Received: header fields or more "
	 "is refused (554 5.4.6, a mail loop)"},
	{"bare_newline", CT_ENUM, OFF(bare_newline), "reject", 0, 0,
	 bare_newline_vals, NULL,
	 "bare CR or LF in DATA: reject (554) or normalize to CRLF"},
	{"long_lines", CT_ENUM, OFF(long_lines), "wrap", 0, 0, long_lines_vals,
	 NULL, "lines over 998 octets (RFC 5322 2.1.1): wrap (fold headers, "
	 "break body lines) or reject (554 5.6.0)"},
	{"timeout_greeting", CT_DURATION, OFF(timeout_greeting), "5m", 1, DAY,
	 NULL, NULL, "idle time allowed before the first command"},
	{"timeout_command", CT_DURATION, OFF(timeout_command), "5m", 1, DAY, NULL,
	 NULL, "idle time allowed between commands (RFC 5321 §4.5.3.2.7)"},
	{"timeout_data", CT_DURATION, OFF(timeout_data), "3m", 1, DAY, NULL, NULL,
	 "idle time allowed inside DATA/BDAT (RFC 5321 §4.5.3.2.5-6)"},
	/* Like Postfix's smtpd_min_data_rate with smtpd_per_record_deadline:
	 * each byte of message data buys 1/rate s more time, never more than
	 * timeout_data ahead, so a trickle slower than this runs out. */
	{"data_min_rate", CT_UNSIGNED, OFF(data_min_rate), "500", 0, 1000000000,
	 NULL, NULL, "message data must arrive at this many bytes/s on average "
	 "(timeout_data is the grace); 0: only the idle timeout_data"},
	{"shutdown_timeout", CT_DURATION, OFF(shutdown_timeout), "30s", 0, DAY,
	 NULL, NULL, "on SIGTERM, how long a client inside a message may take "
	 "to finish it before it gets 421 (idle sessions get 421 at once); "
	 "a second SIGTERM exits at once"},
	{"session_max_lifetime", CT_DURATION, OFF(session_max_lifetime), "1h", 1,
	 30 * DAY, NULL, NULL, "a session this old is closed (421) between "
	 "messages; one still in a message at twice this age is cut off"},
	{"queue_map_size", CT_SIZE, OFF(queue_map_size), "1G", MIB, 1ull << 44,
	 NULL, NULL, "largest size of the LMDB queue index"},
	/* Like Postfix's queue_minfree. 100M: room, above the reserve, for
	 * one message of the default max_message_size (50M) in flight and
	 * its index pages, and for what relayd itself must still write when
	 * clients are refused - delivery state, bounces (DSNs bypass MAIL),
	 * the LMDB free-page churn of removals - plus log files that often
	 * share the file system. 0 turns the check off. */
	{"queue_min_free", CT_SIZE, OFF(queue_min_free), "100M", 0, 1ull << 50,
	 NULL, NULL, "free space the spool's file system must keep; less: MAIL "
	 "gets 452 4.3.1; 0: no check"},
	{"spool_sync", CT_ENUM, OFF(spool_sync), "syncfs", 0, 0, spool_sync_vals,
	 NULL, "how a batch of bodies is made durable: syncfs or fsync each"},
	{"commit_delay", CT_DURATION, OFF(commit_delay), "1ms", 0, 100, NULL,
	 NULL, "longest a batch waits for concurrent commits; 0: never"},
	{"user", CT_STRING, OFF(user), "relayd", 0, 0, NULL, NULL,
	 "account relayd started as root runs as after binding; root: stay"},
	{"metrics_listen", CT_STRING, OFF(metrics_listen), "", 0, 0, NULL,
	 check_metrics_listen, "ADDR:PORT ([v6addr]:PORT) serving Prometheus "
	 "metrics at GET /metrics; empty: off"},
	/* Delivery through a smarthost (deliver/). */
	{"smarthost", CT_STRING, OFF(smarthost), "", 0, 0, NULL, check_hostport,
	 "HOST:PORT of the provider's submission server ([v6addr]:PORT)"},
	{"smarthost_tls", CT_ENUM, OFF(smarthost_tls), "auto", 0, 0,
	 smarthost_tls_vals, NULL,
	 "implicit, starttls or none; auto: implicit on port 465, else starttls"},
	{"smarthost_tls_verify", CT_BOOL, OFF(smarthost_tls_verify), "yes", 0, 0,
	 NULL, NULL, "require a valid certificate matching the smarthost's name"},
	{"smarthost_tls_ca", CT_STRING, OFF(smarthost_tls_ca), "", 0, 0, NULL,
	 NULL, "CA file to verify the smarthost with; empty: the system's CAs"},
	{"smarthost_tls_name", CT_STRING, OFF(smarthost_tls_name), "", 0, 0, NULL,
	 NULL, "name the certificate must match; empty: the smarthost's host"},
	{"smarthost_user", CT_STRING, OFF(smarthost_user), "", 0, 0, NULL, NULL,
	 "AUTH user name; empty: no AUTH"},
	{"smarthost_password_file", CT_STRING, OFF(smarthost_password_file), "",
	 0, 0, NULL, NULL,
	 "file whose first line is the AUTH password (or RELAYD_SMARTHOST_PASSWORD)"},
	{"rewrite_sender", CT_STRING, OFF(rewrite_sender), "", 0, 0, NULL,
	 check_address, "envelope sender used for every message; empty: keep"},
	{"rewrite_from_header", CT_BOOL, OFF(rewrite_from_header), "no", 0, 0,
	 NULL, NULL, "also set From: to rewrite_sender (original to Reply-To:)"},
	{"smarthost_concurrency", CT_UNSIGNED, OFF(smarthost_concurrency), "4", 1,
	 1000, NULL, NULL, "parallel SMTP sessions to the smarthost"},
	{"max_messages_per_connection", CT_UNSIGNED,
	 OFF(max_messages_per_connection), "100", 1, 1000000, NULL, NULL,
	 "messages sent over one SMTP session before it is closed"},
	{"smarthost_rate", CT_STRING, OFF(smarthost_rate), "", 0, 0, NULL,
	 check_rate, "sending cap: N/minute and/or N/hour; empty: none"},
	{"retry_min", CT_DURATION, OFF(retry_min), "5m", SEC, 30 * DAY, NULL,
	 NULL, "first retry interval; it doubles up to retry_max"},
	{"retry_max", CT_DURATION, OFF(retry_max), "1h", SEC, 30 * DAY, NULL,
	 NULL, "longest retry interval"},
	{"max_queue_lifetime", CT_DURATION, OFF(max_queue_lifetime), "5d", SEC,
	 365 * DAY, NULL, NULL, "time after which undelivered mail bounces"},
	{"delay_warning_after", CT_DURATION, OFF(delay_warning_after), "4h", 0,
	 365 * DAY, NULL, NULL, "send one 'delayed' DSN after this; 0: never"},
	{"delivery_timeout", CT_DURATION, OFF(delivery_timeout), "5m", SEC, DAY,
	 NULL, NULL, "limit for connect, TLS handshake and each reply"},
	{"postmaster", CT_STRING, OFF(postmaster), "", 0, 0, NULL, check_address,
	 "where bounces that fail go; empty: dropped with a log line"},
	{"credentials_file", CT_STRING, OFF(credentials_file),
	 "/etc/relayd/credentials", 0, 0, NULL, check_nonempty,
	 "SMTP AUTH credentials, managed with 'relayctl user'"},
	/* TLS for the listeners (smtpd/smtpd_tls.c); checked by conf_check. */
	{"tls_cert_file", CT_STRING, OFF(tls_cert_file), "", 0, 0, NULL, NULL,
	 "PEM certificate (with its chain) for STARTTLS and smtps; empty: no TLS"},
	{"tls_key_file", CT_STRING, OFF(tls_key_file), "", 0, 0, NULL, NULL,
	 "PEM private key of tls_cert_file"},
	/* Relay policy (issue 4 §3). Parsed and checked by smtpd/
	 * (smtpd_policy_net.h), which owns the list and rate parsers; errors
	 * still name file:line (conf_where). */
	{"deny_networks", CT_STRING, OFF(deny_networks), "", 0, 0, NULL, NULL,
	 "CIDR list (IPv4, IPv6) refused at connect with 554 5.7.1; empty: none"},
	{"sender_domains", CT_STRING, OFF(sender_domains), "", 0, 0, NULL, NULL,
	 "MAIL FROM domains allowed (exact match, <> always); empty: any"},
	{"recipient_domains", CT_STRING, OFF(recipient_domains), "", 0, 0, NULL,
	 NULL, "RCPT TO domains allowed (exact match); empty: any"},
	{"rate_connections", CT_STRING, OFF(rate_connections), "0", 0, 0, NULL,
	 NULL, "new connections per client IP (IPv6 /64), e.g. 60/1m; 0: no limit"},
	{"rate_messages", CT_STRING, OFF(rate_messages), "0", 0, 0, NULL, NULL,
	 "messages accepted per client IP (IPv6 /64), e.g. 100/1h; 0: no limit"},
	/* Relay access and AUTH (smtpd/); CIDR lists checked by smtpd. */
	{"trusted_networks", CT_STRING, OFF(trusted_networks),
	 "127.0.0.0/8, ::1/128", 0, 0, NULL, NULL,
	 "CIDR list of clients that may relay without AUTH; others must AUTH"},
	{"auth_plaintext_networks", CT_STRING, OFF(auth_plaintext_networks), "",
	 0, 0, NULL, NULL,
	 "CIDR list of clients offered AUTH outside TLS; empty: none"},
	{"auth_fail_limit", CT_UNSIGNED, OFF(auth_fail_limit), "5", 1, 1000000,
	 NULL, NULL, "failed AUTHs per client IP (IPv6 /64) before a lockout"},
	{"auth_fail_window", CT_DURATION, OFF(auth_fail_window), "10m", SEC, DAY,
	 NULL, NULL, "the window in which auth_fail_limit failures count"},
	{"auth_lockout", CT_DURATION, OFF(auth_lockout), "15m", SEC, DAY, NULL,
	 NULL, "first lockout; doubles on each repeat, up to 24h"},
	{"auth_slow_delay", CT_DURATION, OFF(auth_slow_delay), "1s", 0, HOUR,
	 NULL, NULL, "per name: wait after its first failure before a client "
	 "that failed before may try it; doubles per failure"},
	{"auth_slow_delay_max", CT_DURATION, OFF(auth_slow_delay_max), "1m", 0,
	 DAY, NULL, NULL, "longest auth_slow_delay doubling reaches"},
	{"auth_lockout_table", CT_UNSIGNED, OFF(auth_lockout_table), "4096", 1,
	 1048576, NULL, NULL, "entries in each failed-AUTH table (clients, "
	 "names tried); restart to change"},
	/* Direct delivery to MX hosts (issue 9 §3). The files are parsed by
	 * deliver/deliver_policy.c (relayd -t and SIGHUP check them). */
	{"mx_allow_private", CT_BOOL, OFF(mx_allow_private), "no", 0, 0, NULL,
	 NULL, "allow MX hosts and address literals in loopback or private "
	 "ranges (tests on 127.0.0.x); no: refused with a reason"},
	{"mx_port", CT_UNSIGNED, OFF(mx_port), "25", 1, 65535, NULL, NULL,
	 "TCP port of MX hosts (25; other values are for tests)"},
	{"ip_preference", CT_ENUM, OFF(ip_preference), "auto", 0, 0,
	 ip_preference_vals, NULL, "address families tried at MX hosts: auto "
	 "(IPv6 first only with forward-confirmed reverse DNS), ipv4, ipv6, any"},
	{"smtp_bind_address", CT_STRING, OFF(smtp_bind_address), "", 0, 0, NULL,
	 check_bind4, "IPv4 source address for direct delivery; empty: the "
	 "kernel's choice"},
	{"smtp_bind_address6", CT_STRING, OFF(smtp_bind_address6), "", 0, 0,
	 NULL, check_bind6, "IPv6 source address for direct delivery; empty: "
	 "the kernel's choice"},
	{"tls_policy_file", CT_STRING, OFF(tls_policy_file), "", 0, 0, NULL,
	 NULL, "file of 'DOMAIN none|may|encrypt|verify' lines; empty: every "
	 "domain may (opportunistic STARTTLS)"},
	{"destination_policy_file", CT_STRING, OFF(destination_policy_file), "",
	 0, 0, NULL, NULL, "file of 'DESTINATION concurrency=N rate=N/min' "
	 "lines overriding limits per destination; empty: none"},
	/* Postfix's default_destination_recipient_limit is 50 too. */
	{"max_recipients_per_transaction", CT_UNSIGNED,
	 OFF(max_recipients_per_transaction), "50", 1, 100000, NULL, NULL,
	 "recipients per SMTP transaction to an MX host; more: another one"},
	/* Postfix's initial_destination_concurrency is 5: a small VPS must
	 * not look like a spam cannon. */
	{"destination_concurrency", CT_UNSIGNED, OFF(destination_concurrency),
	 "5", 1, 1000, NULL, NULL,
	 "parallel SMTP sessions to one destination (MX set)"},
	{"max_delivery_sessions", CT_UNSIGNED, OFF(max_delivery_sessions), "100",
	 1, 100000, NULL, NULL,
	 "outbound SMTP sessions to all destinations together"},
	/* The resolver (dns/). */
	{"dns_servers", CT_STRING, OFF(dns_servers), "", 0, 0, NULL,
	 check_dns_servers, "DNS servers to ask, IP[:PORT] separated by commas "
	 "([v6]:PORT); empty: those of /etc/resolv.conf"},
	{"dkim_key", CT_DKIM_KEYS, OFF(dkim_keys), "", 0, 0, NULL, NULL,
	 "DOMAIN SELECTOR /path/to/key.pem: sign mail whose From: is in DOMAIN "
	 "(repeatable: one line per key; empty: no keys)"},
	{"dkim_subdomains", CT_BOOL, OFF(dkim_subdomains), "no", 0, 0, NULL, NULL,
	 "a From: domain without a key of its own is signed with a parent "
	 "domain's key"},
	{"dkim_required", CT_BOOL, OFF(dkim_required), "no", 0, 0, NULL, NULL,
	 "refuse at the end of DATA what cannot be signed (451 4.7.0 on a "
	 "failure, 550 5.7.1 without a key for the From: domain)"},
	/* relayctl check-dns (issue 10 §3). */
	{"dnsbl_zones", CT_STRING, OFF(dnsbl_zones),
	 "zen.spamhaus.org, bl.spamcop.net, b.barracudacentral.org, "
	 "psbl.surriel.com", 0, 0, NULL, check_dnsbl_zones,
	 "DNS blocklist zones relayctl check-dns looks the egress addresses "
	 "up in, separated by commas; empty: none"},
};

#define NKEYS (sizeof conf_keys / sizeof *conf_keys)
_Static_assert(NKEYS <= CONF_KEYS_MAX, "raise CONF_KEYS_MAX");

/* ---- small helpers ----------------------------------------------------- */

static void fmt(char *dst, size_t len, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
static void fmt(char *dst, size_t len, const char *f, ...)
{
	if (!dst || len == 0)
		return;
	va_list ap;
	va_start(ap, f);
	vsnprintf(dst, len, f, ap);
	va_end(ap);
}

/* Quoted form of untrusted text for messages: escaped and cut. */
#define QUOTE_MAX 80
static const char *quote(char dst[QUOTE_MAX], const char *s, size_t n)
{
	return log_escape(dst, QUOTE_MAX, s, n);
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Trims [*s, *s + *n) in place. */
static void trim(const char **s, size_t *n)
{
	while (*n > 0 && is_ws(**s)) {
		(*s)++;
		(*n)--;
	}
	while (*n > 0 && is_ws((*s)[*n - 1]))
		(*n)--;
}

static char *dupn(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* Decimal digits only: no sign, no spaces, no hex. */
static int parse_u64(const char *s, const char **end, uint64_t *v)
{
	uint64_t x = 0;
	const char *p = s;
	if (!is_digit(*p))
		return -EINVAL;
	for (; is_digit(*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (x > (UINT64_MAX - d) / 10)
			return -ERANGE;
		x = x * 10 + d;
	}
	*end = p;
	*v = x;
	return 0;
}

struct unit {
	const char *suffix;
	uint64_t mult;
};

static int parse_with_units(const char *s, const struct unit *units,
                            uint64_t *out)
{
	const char *end;
	uint64_t v;
	if (!s)
		return -EINVAL;
	int rc = parse_u64(s, &end, &v);
	if (rc < 0)
		return rc;
	for (const struct unit *u = units; u->suffix; u++) {
		if (strcmp(end, u->suffix) != 0)
			continue;
		if (u->mult && v > UINT64_MAX / u->mult)
			return -ERANGE;
		*out = v * u->mult;
		return 0;
	}
	return -EINVAL;
}

/* A bare number is seconds (like Postfix's time parameters). */
static const struct unit duration_units[] = {
	{"ms", 1}, {"s", SEC}, {"", SEC}, {"m", MIN}, {"h", HOUR}, {"d", DAY},
	{NULL, 0}};

/* Binary multiples, either case (1k = 1K = 1024). */
static const struct unit size_units[] = {
	{"", 1}, {"K", KIB}, {"k", KIB}, {"M", MIB}, {"m", MIB}, {"G", GIB},
	{"g", GIB}, {NULL, 0}};

int conf_parse_duration(const char *s, uint64_t *ms)
{
	return parse_with_units(s, duration_units, ms);
}

int conf_parse_size(const char *s, uint64_t *bytes)
{
	return parse_with_units(s, size_units, bytes);
}

/* Human text for a range bound, in the largest unit that divides it. */
static void unit_text(char *dst, size_t len, uint64_t v,
                      const struct unit *units)
{
	const char *best = "";
	uint64_t bm = 1;
	for (const struct unit *u = units; u->suffix; u++)
		if (u->mult > bm && v % u->mult == 0) {
			best = u->suffix;
			bm = u->mult;
		}
	if (units == duration_units && bm == 1)
		best = "ms";
	fmt(dst, len, "%llu%s", (unsigned long long)(v / bm), best);
}

/* ---- string checks ----------------------------------------------------- */

/* The hostname goes into the greeting and Received:, so only characters of
 * a host name (and '_', seen in the wild) are allowed. */
static int check_hostname(const char *v, char *msg, size_t msglen)
{
	char q[QUOTE_MAX];
	size_t n = strlen(v);
	if (n == 0 || n > 255) {
		fmt(msg, msglen, "must be 1 to 255 characters");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		char c = v[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          is_digit(c) || c == '-' || c == '.' || c == '_';
		if (!ok || (c == '.' && (i == 0 || v[i - 1] == '.'))) {
			fmt(msg, msglen, "not a host name: '%s'", quote(q, v, n));
			return -EINVAL;
		}
	}
	return 0;
}

static int check_nonempty(const char *v, char *msg, size_t msglen)
{
	if (*v == '\0') {
		fmt(msg, msglen, "must not be empty");
		return -EINVAL;
	}
	return 0;
}

int conf_parse_hostport(const char *v, char *host, size_t hostlen,
                        uint16_t *port)
{
	const char *colon;
	size_t n;
	if (v[0] == '[') {
		const char *end = strchr(v, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		n = (size_t)(end - v - 1);
		v++;
		colon = end + 1;
	} else {
		colon = strrchr(v, ':');
		if (!colon || memchr(v, ':', (size_t)(colon - v)))
			return -EINVAL;
		n = (size_t)(colon - v);
	}
	if (n == 0 || n >= hostlen)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)v[i]) && !strchr(".-:_", v[i]))
			return -EINVAL;
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || p == 0 || p > 65535 ||
	    !isdigit((unsigned char)colon[1]))
		return -EINVAL;
	memcpy(host, v, n);
	host[n] = '\0';
	*port = (uint16_t)p;
	return 0;
}

static int check_hostport(const char *v, char *msg, size_t msglen)
{
	char host[256];
	uint16_t port;
	if (*v && conf_parse_hostport(v, host, sizeof host, &port)) {
		char q[QUOTE_MAX];
		fmt(msg, msglen, "not HOST:PORT: '%s'", quote(q, v, strlen(v)));
		return -EINVAL;
	}
	return 0;
}

/* metrics_listen: empty, or a numeric address and port (no DNS: the
 * daemon binds it at start). */
static int check_metrics_listen(const char *v, char *msg, size_t msglen)
{
	char host[256], q[QUOTE_MAX];
	unsigned char b[16];
	uint16_t port;
	if (*v == '\0')
		return 0;
	if (conf_parse_hostport(v, host, sizeof host, &port) < 0 ||
	    (inet_pton(AF_INET, host, b) != 1 &&
	     inet_pton(AF_INET6, host, b) != 1)) {
		fmt(msg, msglen, "not ADDR:PORT with a numeric address: '%s'",
		    quote(q, v, strlen(v)));
		return -EINVAL;
	}
	return 0;
}

/* smtp_bind_address(6): a literal address of the right family that a
 * socket can be bound to as a source (not multicast, not broadcast, not a
 * v4-mapped IPv6 address, which is IPv4 really); empty: the kernel's. */
static int check_bind(const char *v, int family, char *msg, size_t msglen)
{
	unsigned char b[16];
	char q[QUOTE_MAX];
	if (*v == '\0')
		return 0;
	if (inet_pton(family, v, b) != 1) {
		fmt(msg, msglen, "not an %s address: '%s'",
		    family == AF_INET ? "IPv4" : "IPv6", quote(q, v, strlen(v)));
		return -EINVAL;
	}
	bool bad = family == AF_INET
	         ? (b[0] >= 224 || (b[0] | b[1] | b[2] | b[3]) == 0)
	         : (b[0] == 0xff || (memcmp(b, "\0\0\0\0\0\0\0\0\0\0\xff\xff",
	                                    12) == 0));
	if (family == AF_INET6 && !bad) {
		static const unsigned char zero[16];
		bad = memcmp(b, zero, 16) == 0;
	}
	if (bad) {
		fmt(msg, msglen, "not a unicast source address: '%s'",
		    quote(q, v, strlen(v)));
		return -EINVAL;
	}
	return 0;
}

static int check_bind4(const char *v, char *msg, size_t msglen)
{
	return check_bind(v, AF_INET, msg, msglen);
}

static int check_bind6(const char *v, char *msg, size_t msglen)
{
	return check_bind(v, AF_INET6, msg, msglen);
}

int conf_parse_dns_servers(const char *v, struct conf_dns_server *out,
                           size_t max, char *msg, size_t msglen)
{
	size_t n = 0;
	char q[QUOTE_MAX];
	while (*v) {
		size_t len = strcspn(v, ", \t");
		if (len == 0) {
			v++;
			continue;
		}
		char item[80];
		if (len >= sizeof item) {
			fmt(msg, msglen, "not IP[:PORT]: '%s'", quote(q, v, len));
			return -EINVAL;
		}
		memcpy(item, v, len);
		item[len] = '\0';
		v += len;
		struct conf_dns_server s = {.port = 53};
		const char *host = item, *port = NULL;
		if (item[0] == '[') {
			char *end = strchr(item, ']');
			if (!end || (end[1] && end[1] != ':'))
				goto bad;
			*end = '\0';
			host = item + 1;
			port = end[1] ? end + 2 : NULL;
		} else if (strchr(item, ':') != strrchr(item, ':')) {
			host = item;    /* a bare IPv6 address: port 53 */
		} else if ((port = strchr(item, ':'))) {
			item[port - item] = '\0';
			port++;
		}
		unsigned char bin[16];
		if (inet_pton(AF_INET, host, bin) == 1)
			s.ipv6 = false;
		else if (inet_pton(AF_INET6, host, bin) == 1)
			s.ipv6 = true;
		else
			goto bad;
		if (item[0] == '[' && !s.ipv6)
			goto bad;
		if (port) {
			char *end;
			errno = 0;
			unsigned long p = strtoul(port, &end, 10);
			if (errno || *end || !isdigit((unsigned char)*port) ||
			    p == 0 || p > 65535)
				goto bad;
			s.port = (uint16_t)p;
		}
		size_t hl = strlen(host);
		if (hl >= sizeof s.host)
			goto bad;
		memcpy(s.host, host, hl + 1);
		if (n == max) {
			fmt(msg, msglen, "more than %zu servers", max);
			return -EINVAL;
		}
		out[n++] = s;
		continue;
	bad:
		fmt(msg, msglen, "not IP[:PORT] or [IPv6]:PORT: '%s'",
		    quote(q, v - len, len));
		return -EINVAL;
	}
	return (int)n;
}

static int check_dns_servers(const char *v, char *msg, size_t msglen)
{
	struct conf_dns_server s[CONF_DNS_SERVERS_MAX];
	return conf_parse_dns_servers(v, s, CONF_DNS_SERVERS_MAX, msg, msglen) < 0
	       ? -EINVAL : 0;
}

/* dnsbl_zones: host names separated by commas or spaces. */
static int check_dnsbl_zones(const char *v, char *msg, size_t msglen)
{
	size_t n = 0;
	while (*v) {
		size_t len = strcspn(v, ", \t");
		if (len == 0) {
			v++;
			continue;
		}
		char item[256];
		if (len >= sizeof item) {
			fmt(msg, msglen, "a zone name is longer than 255 characters");
			return -EINVAL;
		}
		memcpy(item, v, len);
		item[len] = '\0';
		if (check_hostname(item, msg, msglen) < 0)
			return -EINVAL;
		if (++n > CONF_DNSBL_ZONES_MAX) {
			fmt(msg, msglen, "more than %d zones", CONF_DNSBL_ZONES_MAX);
			return -EINVAL;
		}
		v += len;
	}
	return 0;
}

int conf_parse_rate(const char *v, unsigned *per_minute, unsigned *per_hour)
{
	*per_minute = *per_hour = 0;
	while (*v) {
		while (*v == ' ' || *v == ',')
			v++;
		if (!*v)
			break;
		char *end;
		if (!isdigit((unsigned char)*v))
			return -EINVAL;
		errno = 0;
		unsigned long n = strtoul(v, &end, 10);
		if (errno || n == 0 || n > 10000000 || *end != '/')
			return -EINVAL;
		v = end + 1;
		size_t w = strcspn(v, " ,");
		unsigned *slot;
		if ((w == 6 && strncmp(v, "minute", 6) == 0) ||
		    (w == 3 && strncmp(v, "min", 3) == 0) ||
		    (w == 1 && *v == 'm'))
			slot = per_minute;
		else if ((w == 4 && strncmp(v, "hour", 4) == 0) ||
		         (w == 1 && *v == 'h'))
			slot = per_hour;
		else
			return -EINVAL;
		if (*slot)
			return -EINVAL;
		*slot = (unsigned)n;
		v += w;
	}
	return 0;
}

static int check_rate(const char *v, char *msg, size_t msglen)
{
	unsigned m, h;
	if (conf_parse_rate(v, &m, &h)) {
		char q[QUOTE_MAX];
		fmt(msg, msglen, "not N/minute, N/hour or both: '%s'",
		    quote(q, v, strlen(v)));
		return -EINVAL;
	}
	return 0;
}

/* A bare mail address (local@domain), as rewrite_sender and postmaster. */
static int check_address(const char *v, char *msg, size_t msglen)
{
	if (!*v)
		return 0;
	const char *at = strrchr(v, '@');
	bool ok = at && at != v && at[1] && strlen(v) <= 254;
	for (const char *p = v; ok && *p; p++)
		ok = (unsigned char)*p > ' ' && *p != '<' && *p != '>' &&
		     (unsigned char)*p < 0x7f;
	if (!ok) {
		char q[QUOTE_MAX];
		fmt(msg, msglen, "not a mail address (local@domain, no <>): '%s'",
		    quote(q, v, strlen(v)));
		return -EINVAL;
	}
	return 0;
}

/* ---- list parsers ------------------------------------------------------ */

/* Calls fn on each comma-separated, trimmed item of v. */
typedef int (*item_fn)(void *ctx, const char *s, size_t n, char *msg,
                       size_t msglen);

static int for_each_item(const char *v, item_fn fn, void *ctx, char *msg,
                         size_t msglen)
{
	const char *p = v;
	for (;;) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		const char *s = p;
		trim(&s, &n);
		int rc = fn(ctx, s, n, msg, msglen);
		if (rc < 0)
			return rc;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

struct listen_list {
	struct conf_listen l[CONF_LISTEN_MAX];
	size_t n;
};

static int listen_item(void *ctx, const char *s, size_t n, char *msg,
                       size_t msglen)
{
	struct listen_list *ll = ctx;
	char q[QUOTE_MAX], host[64];
	const char *h, *port;
	size_t hlen;
	bool v6;

	quote(q, s, n);
	if (n == 0) {
		fmt(msg, msglen, "empty address in list");
		return -EINVAL;
	}
	/* ADDR:PORT/MODE; no suffix is smtp, so older files keep working. */
	enum conf_listen_mode mode = CONF_LISTEN_SMTP;
	const char *slash = memchr(s, '/', n);
	if (slash) {
		const char *m = slash + 1;
		size_t ml = n - (size_t)(m - s);
		int found = -1;
		for (int i = 0; i < CONF_LISTEN__COUNT; i++)
			if (strlen(conf_listen_mode_names[i]) == ml &&
			    strncasecmp(m, conf_listen_mode_names[i], ml) == 0)
				found = i;
		if (found < 0) {
			char qm[QUOTE_MAX];
			fmt(msg, msglen, "unknown listener mode '%s' in '%s' (expected "
			    "smtp, submission or smtps)", quote(qm, m, ml), q);
			return -EINVAL;
		}
		mode = (enum conf_listen_mode)found;
		n = (size_t)(slash - s);
	}
	if (s[0] == '[') {
		const char *rb = memchr(s, ']', n);
		if (!rb) {
			fmt(msg, msglen, "missing ']' in '%s'", q);
			return -EINVAL;
		}
		h = s + 1;
		hlen = (size_t)(rb - h);
		port = rb + 1;
		v6 = true;
	} else {
		const char *colon = memchr(s, ':', n);
		if (colon && memchr(colon + 1, ':', n - (size_t)(colon + 1 - s))) {
			fmt(msg, msglen, "IPv6 address needs brackets, as in "
			    "[::1]:2525: '%s'", q);
			return -EINVAL;
		}
		h = s;
		hlen = colon ? (size_t)(colon - s) : n;
		port = colon ? colon : s + n;
		v6 = false;
	}
	if (port >= s + n || *port != ':') {
		fmt(msg, msglen, "expected ADDR:PORT: '%s'", q);
		return -EINVAL;
	}
	port++;

	/* port: 1-65535, decimal digits only */
	size_t plen = (size_t)(s + n - port);
	unsigned long pv = 0;
	bool pok = plen > 0 && plen <= 5;
	for (size_t i = 0; pok && i < plen; i++) {
		pok = is_digit(port[i]);
		pv = pv * 10 + (unsigned long)(port[i] - '0');
	}
	if (!pok || pv < 1 || pv > 65535) {
		fmt(msg, msglen, "bad port in '%s' (expected 1-65535)", q);
		return -EINVAL;
	}

	unsigned char bin[16];
	bool aok = hlen > 0 && hlen < sizeof host;
	if (aok) {
		memcpy(host, h, hlen);
		host[hlen] = '\0';
		aok = inet_pton(v6 ? AF_INET6 : AF_INET, host, bin) == 1;
	}
	if (!aok) {
		fmt(msg, msglen, "not an IP%s address: '%s'", v6 ? "v6" : "v4", q);
		return -EINVAL;
	}
	if (ll->n == CONF_LISTEN_MAX) {
		fmt(msg, msglen, "more than %d addresses", CONF_LISTEN_MAX);
		return -EINVAL;
	}

	struct conf_listen *l = &ll->l[ll->n];
	memset(l, 0, sizeof *l);
	/* Stored in canonical form, so duplicates are found and logs agree. */
	if (!inet_ntop(v6 ? AF_INET6 : AF_INET, bin, l->host, sizeof l->host)) {
		fmt(msg, msglen, "not an IP address: '%s'", q);
		return -EINVAL;
	}
	l->port = (uint16_t)pv;
	l->ipv6 = v6;
	l->mode = mode;
	for (size_t i = 0; i < ll->n; i++)
		if (ll->l[i].port == l->port && strcmp(ll->l[i].host, l->host) == 0) {
			fmt(msg, msglen, "duplicate address '%s'", q);
			return -EINVAL;
		}
	ll->n++;
	return 0;
}

struct header_list {
	char *h[CONF_LIST_MAX];
	size_t n;
};

static void header_list_free(struct header_list *hl)
{
	for (size_t i = 0; i < hl->n; i++)
		free(hl->h[i]);
	hl->n = 0;
}

/* RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126. */
static int header_item(void *ctx, const char *s, size_t n, char *msg,
                       size_t msglen)
{
	struct header_list *hl = ctx;
	char q[QUOTE_MAX];
	if (n == 0) {
		fmt(msg, msglen, "empty header name in list");
		return -EINVAL;
	}
	if (n > CONF_HEADER_NAME_MAX) {
		fmt(msg, msglen, "header name longer than %d: '%s'",
		    CONF_HEADER_NAME_MAX, quote(q, s, n));
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 33 || c > 126 || c == ':') {
			fmt(msg, msglen, "bad header name '%s'", quote(q, s, n));
			return -EINVAL;
		}
	}
	if (hl->n == CONF_LIST_MAX) {
		fmt(msg, msglen, "more than %d header names", CONF_LIST_MAX);
		return -EINVAL;
	}
	if (!(hl->h[hl->n] = dupn(s, n))) {
		fmt(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	hl->n++;
	return 0;
}

/* ---- setting one key --------------------------------------------------- */

/* Sets k from v; on error writes the reason (without the key) into msg.
 * A failed set leaves the old value in place. */
/* dkim_key: "DOMAIN SELECTOR PATH", three fields separated by blanks
 * (dkim/ checks the domain, the selector and the key file when it loads
 * it). Adds one entry; an empty value empties the list. */
static void dkim_keys_clear(struct conf *c)
{
	for (size_t i = 0; i < c->ndkim_keys; i++) {
		free(c->dkim_keys[i]);
		c->dkim_keys[i] = NULL;
	}
	c->ndkim_keys = 0;
}

static int dkim_key_add(struct conf *c, const char *v, char *msg,
                        size_t msglen)
{
	char q[QUOTE_MAX];
	const char *s = v;
	size_t n = strlen(v);
	trim(&s, &n);
	if (n == 0) {
		dkim_keys_clear(c);
		return 0;
	}
	unsigned fields = 0;
	for (size_t i = 0; i < n;) {
		if (is_ws(s[i])) {
			i++;
			continue;
		}
		fields++;
		while (i < n && !is_ws(s[i]))
			i++;
	}
	if (fields < 3) {
		fmt(msg, msglen, "expected 'DOMAIN SELECTOR /path/to/key.pem': "
		    "'%s'", quote(q, s, n));
		return -EINVAL;
	}
	if (c->ndkim_keys >= CONF_LIST_MAX) {
		fmt(msg, msglen, "more than %d keys", CONF_LIST_MAX);
		return -EINVAL;
	}
	char *d = dupn(s, n);
	if (!d) {
		fmt(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	c->dkim_keys[c->ndkim_keys++] = d;
	return 0;
}

static int set_value(struct conf *c, const struct conf_keydef *k,
                     const char *v, char *msg, size_t msglen)
{
	void *field = (char *)c + k->off;
	char q[QUOTE_MAX], lo[32], hi[32];
	uint64_t u;
	int rc;

	quote(q, v, strlen(v));
	for (const char *p = v; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			fmt(msg, msglen, "control character in value '%s'", q);
			return -EINVAL;
		}

	switch (k->type) {
	case CT_STRING: {
		if (k->check && (rc = k->check(v, msg, msglen)) < 0)
			return rc;
		char *d = strdup(v);
		if (!d) {
			fmt(msg, msglen, "out of memory");
			return -ENOMEM;
		}
		char **sp = field;
		free(*sp);
		*sp = d;
		return 0;
	}
	case CT_BOOL: {
		static const struct conf_enum bools[] = {
			{"yes", 1}, {"no", 0}, {"true", 1}, {"false", 0},
			{"on", 1}, {"off", 0}, {"1", 1}, {"0", 0}, {NULL, 0}};
		for (const struct conf_enum *e = bools; e->name; e++)
			if (strcasecmp(v, e->name) == 0) {
				*(bool *)field = e->val;
				return 0;
			}
		fmt(msg, msglen, "not a boolean: '%s' (expected yes or no)", q);
		return -EINVAL;
	}
	case CT_UNSIGNED: {
		const char *end;
		rc = parse_u64(v, &end, &u);
		if (rc == -EINVAL || (rc == 0 && *end)) {
			fmt(msg, msglen, "not a number: '%s'", q);
			return -EINVAL;
		}
		if (rc < 0 || u < k->min || u > k->max) {
			fmt(msg, msglen, "out of range: '%s' (expected %llu-%llu)", q,
			    (unsigned long long)k->min, (unsigned long long)k->max);
			return -EINVAL;
		}
		*(unsigned *)field = (unsigned)u;
		return 0;
	}
	case CT_SIZE:
	case CT_DURATION: {
		bool dur = k->type == CT_DURATION;
		const struct unit *units = dur ? duration_units : size_units;
		rc = parse_with_units(v, units, &u);
		if (rc == -EINVAL) {
			fmt(msg, msglen, dur ?
			    "not a duration: '%s' (expected e.g. 30s, 5m, 2h, 1d)" :
			    "not a size: '%s' (expected e.g. 512k, 50M, 1G)", q);
			return -EINVAL;
		}
		if (rc < 0 || u < k->min || u > k->max) {
			unit_text(lo, sizeof lo, k->min, units);
			unit_text(hi, sizeof hi, k->max, units);
			fmt(msg, msglen, "out of range: '%s' (expected %s-%s)", q, lo,
			    hi);
			return -EINVAL;
		}
		*(uint64_t *)field = u;
		return 0;
	}
	case CT_ENUM: {
		char expected[128] = "";
		size_t o = 0;
		for (const struct conf_enum *e = k->vals; e->name; e++) {
			if (strcasecmp(v, e->name) == 0) {
				memcpy(field, &e->val, sizeof e->val);
				return 0;
			}
			int w = snprintf(expected + o, sizeof expected - o, "%s%s",
			                 o ? ", " : "", e->name);
			if (w > 0 && (size_t)w < sizeof expected - o)
				o += (size_t)w;
		}
		fmt(msg, msglen, "unsupported value '%s' (expected: %s)", q,
		    expected);
		return -EINVAL;
	}
	case CT_LISTEN: {
		struct listen_list ll = {.n = 0};
		if (*v == '\0') {
			fmt(msg, msglen, "no address given");
			return -EINVAL;
		}
		if ((rc = for_each_item(v, listen_item, &ll, msg, msglen)) < 0)
			return rc;
		memcpy(c->listen, ll.l, sizeof ll.l);
		c->nlisten = ll.n;
		return 0;
	}
	case CT_HEADERS: {
		struct header_list hl = {.n = 0};
		const char *s = v;
		size_t n = strlen(v);
		trim(&s, &n);
		/* An empty value means an empty list: scrub nothing. */
		if (n > 0 && (rc = for_each_item(v, header_item, &hl, msg,
		                                 msglen)) < 0) {
			header_list_free(&hl);
			return rc;
		}
		/* A list key replaces the whole list. */
		for (size_t i = 0; i < c->nscrub_headers; i++)
			free(c->scrub_headers[i]);
		memset(c->scrub_headers, 0, sizeof c->scrub_headers);
		memcpy(c->scrub_headers, hl.h, hl.n * sizeof *hl.h);
		c->nscrub_headers = hl.n;
		return 0;
	}
	case CT_DKIM_KEYS:
		return dkim_key_add(c, v, msg, msglen);
	}
	fmt(msg, msglen, "bad key type");
	return -EINVAL;
}

static const struct conf_keydef *find_key(const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(conf_keys[i].name, name) == 0)
			return &conf_keys[i];
	return NULL;
}

int conf_set(struct conf *c, const char *key, const char *value, char *err,
             size_t errlen)
{
	char q[QUOTE_MAX], msg[512];
	if (!key) {
		fmt(err, errlen, "no key given");
		return -EINVAL;
	}
	const struct conf_keydef *k = find_key(key);
	if (!k) {
		fmt(err, errlen, "unknown key '%s'", quote(q, key, strlen(key)));
		return -EINVAL;
	}
	if (!value) {
		fmt(err, errlen, "%s: no value given", k->name);
		return -EINVAL;
	}
	int rc = set_value(c, k, value, msg, sizeof msg);
	if (rc < 0)
		fmt(err, errlen, "%s: %s", k->name, msg);
	return rc;
}

const char *conf_key(size_t i, const char **def, const char **help)
{
	if (i >= NKEYS)
		return NULL;
	if (def)
		*def = conf_keys[i].def;
	if (help)
		*help = conf_keys[i].help;
	return conf_keys[i].name;
}

/* ---- init / free ------------------------------------------------------- */

/* gethostname(), or "localhost" when that fails or is not a host name. */
static int default_hostname(struct conf *c)
{
	char h[256] = "", msg[64];
	if (gethostname(h, sizeof h - 1) < 0 ||
	    check_hostname(h, msg, sizeof msg) < 0)
		strcpy(h, "localhost");
	if (!(c->hostname = strdup(h)))
		return -ENOMEM;
	return 0;
}

int conf_init(struct conf *c)
{
	char msg[512];
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NKEYS; i++) {
		const struct conf_keydef *k = &conf_keys[i];
		int rc = k->def ? set_value(c, k, k->def, msg, sizeof msg)
		                : default_hostname(c);
		if (rc == -ENOMEM) {
			conf_free(c);
			return rc;
		}
		/* The defaults are checked by the unit tests. */
		RELAY_ASSERT(rc == 0);
	}
	return 0;
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < NKEYS; i++) {
		const struct conf_keydef *k = &conf_keys[i];
		if (k->type == CT_STRING) {
			char **sp = (char **)((char *)c + k->off);
			free(*sp);
			*sp = NULL;
		}
	}
	for (size_t i = 0; i < c->nscrub_headers; i++) {
		free(c->scrub_headers[i]);
		c->scrub_headers[i] = NULL;
	}
	c->nscrub_headers = 0;
	dkim_keys_clear(c);
}

/* ---- the file ---------------------------------------------------------- */

/* One line (without its '\n'): comments, `key = value`. */
static int parse_line(struct conf *c, const char *name, size_t lineno,
                      const char *s, size_t n, char *err, size_t errlen)
{
	char line[CONF_LINE_MAX + 1], q[QUOTE_MAX], msg[600];

	/* conf_parse's lines_next: at most CONF_LINE_MAX, no NUL byte. */
	RELAY_ASSERT(n <= CONF_LINE_MAX);
	memcpy(line, s, n);
	line[n] = '\0';

	/* '#' starts a comment at the start of the line or after white space,
	 * so "a#b" stays a value. */
	for (size_t i = 0; i < n; i++)
		if (line[i] == '#' && (i == 0 || is_ws(line[i - 1]))) {
			n = i;
			break;
		}
	const char *p = line;
	trim(&p, &n);
	if (n == 0)
		return 0;

	const char *eq = memchr(p, '=', n);
	if (!eq) {
		fmt(err, errlen, "%s:%zu: expected 'key = value': '%s'", name,
		    lineno, quote(q, p, n));
		return -EINVAL;
	}
	const char *key = p, *val = eq + 1;
	size_t klen = (size_t)(eq - p), vlen = n - klen - 1;
	trim(&key, &klen);
	trim(&val, &vlen);
	if (klen == 0) {
		fmt(err, errlen, "%s:%zu: missing key before '='", name, lineno);
		return -EINVAL;
	}
	/* Terminate both in the local copy (the '=' and the end of value). */
	((char *)key)[klen] = '\0';
	((char *)val)[vlen] = '\0';

	int rc = conf_set(c, key, val, msg, sizeof msg);
	if (rc < 0) {
		fmt(err, errlen, "%s:%zu: %s", name, lineno, msg);
		return rc;
	}
	const struct conf_keydef *k = find_key(key);
	c->set_at[k - conf_keys] = lineno < CONF_SET_ENV ? (uint32_t)lineno
	                                                 : CONF_SET_ENV - 1;
	return 0;
}

int conf_parse(struct conf *c, const char *name, const char *text, size_t len,
               char *err, size_t errlen)
{
	struct lines it;
	const char *s;
	size_t n;
	int rc;
	if (!name)
		name = "(config)";
	lines_init(&it, text, len, CONF_LINE_MAX, LINES_NO_NUL);
	while ((rc = lines_next(&it, &s, &n)) != 0) {
		if (rc < 0) {
			lines_error(&it, rc, name, err, errlen);
			return -EINVAL;
		}
		rc = parse_line(c, name, it.lineno, s, n, err, errlen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* ---- the environment --------------------------------------------------- */

/* "RELAYD_MAX_MESSAGE_SIZE" names max_message_size: upper case only. */
static const struct conf_keydef *env_key(const char *name, size_t n)
{
	for (size_t i = 0; i < NKEYS; i++) {
		const char *k = conf_keys[i].name;
		size_t j = 0;
		for (; j < n && k[j]; j++) {
			char u = k[j] >= 'a' && k[j] <= 'z' ? (char)(k[j] - 32) : k[j];
			if (name[j] != u)
				break;
		}
		if (j == n && k[j] == '\0')
			return &conf_keys[i];
	}
	return NULL;
}

int conf_apply_env(struct conf *c, char *const *envp, char *err, size_t errlen)
{
	static const size_t plen = sizeof CONF_ENV_PREFIX - 1;
	char msg[512];
	if (!envp)
		return 0;
	for (; *envp; envp++) {
		const char *e = *envp;
		if (strncmp(e, CONF_ENV_PREFIX, plen) != 0)
			continue;
		const char *eq = strchr(e, '=');
		if (!eq)
			continue;
		/* Other RELAYD_* variables (not keys) belong to someone else. */
		const struct conf_keydef *k = env_key(e + plen,
		                                      (size_t)(eq - e) - plen);
		if (!k)
			continue;
		const char *v = eq + 1;
		size_t vlen = strlen(v);
		trim(&v, &vlen);
		char *val = dupn(v, vlen);
		if (!val) {
			fmt(err, errlen, "out of memory");
			return -ENOMEM;
		}
		int rc;
		if (k->type == CT_DKIM_KEYS) {
			/* One variable holds every key ("D S P; D S P"): it
			 * replaces the file's list. */
			dkim_keys_clear(c);
			rc = 0;
			char *save = NULL;
			for (char *it = strtok_r(val, ";", &save); it && rc == 0;
			     it = strtok_r(NULL, ";", &save)) {
				const char *t = it;
				size_t tn = strlen(it);
				trim(&t, &tn);
				if (tn)
					rc = set_value(c, k, it, msg, sizeof msg);
			}
		} else {
			rc = set_value(c, k, val, msg, sizeof msg);
		}
		free(val);
		if (rc < 0) {
			fmt(err, errlen, "environment %.*s: %s", (int)(eq - e), e, msg);
			return rc;
		}
		c->set_at[k - conf_keys] = CONF_SET_ENV;
	}
	return 0;
}

/* ---- checks across keys ------------------------------------------------ */

/* An error about key `ki`, prefixed with where it was set, in the forms of
 * conf_parse ("file:line: key: why") and conf_apply_env. */
static void where_fmt(const struct conf *c, const char *name, size_t ki,
                      char *err, size_t errlen, const char *why)
{
	const char *key = conf_keys[ki].name;
	uint32_t at = c->set_at[ki];
	if (at == CONF_SET_ENV) {
		char env[64];
		size_t o = 0;
		for (const char *p = key; *p && o + 1 < sizeof env; p++)
			env[o++] = *p >= 'a' && *p <= 'z' ? (char)(*p - 32) : *p;
		env[o] = '\0';
		fmt(err, errlen, "environment " CONF_ENV_PREFIX "%s: %s", env, why);
	} else if (at > 0) {
		fmt(err, errlen, "%s:%u: %s: %s", name ? name : "(config)",
		    (unsigned)at, key, why);
	} else {
		fmt(err, errlen, "%s: %s", key, why);
	}
}

void conf_where(const struct conf *c, const char *name, const char *key,
                const char *why, char *err, size_t errlen)
{
	const struct conf_keydef *k = find_key(key);
	if (!k) {
		fmt(err, errlen, "%s: %s", key, why);
		return;
	}
	where_fmt(c, name, (size_t)(k - conf_keys), err, errlen, why);
}

int conf_check(const struct conf *c, const char *name, char *err,
               size_t errlen)
{
	char why[256];
	size_t k_listen = (size_t)(find_key("listen") - conf_keys);
	size_t k_cert = (size_t)(find_key("tls_cert_file") - conf_keys);
	size_t k_key = (size_t)(find_key("tls_key_file") - conf_keys);
	bool cert = c->tls_cert_file && *c->tls_cert_file;
	bool key = c->tls_key_file && *c->tls_key_file;
	if (cert && !key) {
		where_fmt(c, name, k_cert, err, errlen, "needs tls_key_file as well");
		return -EINVAL;
	}
	if (key && !cert) {
		where_fmt(c, name, k_key, err, errlen, "needs tls_cert_file as well");
		return -EINVAL;
	}
	for (size_t i = 0; i < c->nlisten && !cert; i++) {
		const struct conf_listen *l = &c->listen[i];
		if (l->mode != CONF_LISTEN_SMTPS)
			continue;
		/* RFC 8314 §3: TLS from the first byte; without a certificate
		 * the port would accept connections and fail every one. */
		fmt(why, sizeof why, "%s%s%s:%u/smtps is implicit TLS: it needs "
		    "tls_cert_file and tls_key_file", l->ipv6 ? "[" : "", l->host,
		    l->ipv6 ? "]" : "", l->port);
		where_fmt(c, name, k_listen, err, errlen, why);
		return -EINVAL;
	}
	return 0;
}

/* ---- loading ----------------------------------------------------------- */

int conf_load(struct conf *c, const char *path, char *err, size_t errlen)
{
	int rc = conf_init(c);
	if (rc < 0) {
		fmt(err, errlen, "out of memory");
		return rc;
	}
	if (path) {
		char *text = NULL;
		size_t len = 0;
		if ((rc = lines_read_file(path, CONF_FILE_MAX, 0, &text,
		                          &len)) < 0) {
			fmt(err, errlen, "cannot read %s: %s", path, strerror(-rc));
			goto fail;
		}
		rc = conf_parse(c, path, text, len, err, errlen);
		free(text);
		if (rc < 0)
			goto fail;
	}
	if ((rc = conf_apply_env(c, environ, err, errlen)) < 0)
		goto fail;
	if ((rc = conf_check(c, path, err, errlen)) < 0)
		goto fail;
	return 0;
fail:
	conf_free(c);
	return rc;
}
