/*
 * common/conf.h - relayd's configuration: every key, its type, default and
 * check in one table (conf.c). One file of `key = value` lines with `#`
 * comments; then RELAYD_<UPPERCASE_KEY> environment variables override.
 * Errors name the file, the line and the key.
 */
#ifndef RELAY_CONF_H
#define RELAY_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONF_LISTEN_MAX 16
#define CONF_LIST_MAX 64
/* Longest line in a config file, without the newline. */
#define CONF_LINE_MAX 4096
/* Longest header name in scrub_headers (RFC 5322 §2.1.1: a field fits in
 * 78 characters). */
#define CONF_HEADER_NAME_MAX 76

enum conf_delivery { CONF_DELIVERY_HOLD, CONF_DELIVERY_SMARTHOST,
                     CONF_DELIVERY_DIRECT };
enum conf_tls { CONF_TLS_AUTO, CONF_TLS_IMPLICIT, CONF_TLS_STARTTLS,
                CONF_TLS_NONE };
enum conf_bare_newline { CONF_BARE_REJECT, CONF_BARE_NORMALIZE };
/* A message line over 998 octets (RFC 5322 §2.1.1): wrap it, or refuse
 * the message. */
enum conf_long_lines { CONF_LONG_LINES_WRAP, CONF_LONG_LINES_REJECT };
enum conf_spool_sync { CONF_SYNC_SYNCFS, CONF_SYNC_FSYNC };
/* ip_preference (direct delivery, issue 9 §3): which address families of
 * an MX host are tried and in what order (deliver/deliver_mx.h). */
enum conf_ip_pref { CONF_IP_AUTO, CONF_IP_IPV4, CONF_IP_IPV6, CONF_IP_ANY };
/* What a listener is for (`listen = ADDR:PORT/MODE`): smtp (relay and
 * MX, STARTTLS offered when a certificate is set; the default), submission
 * (RFC 6409: clients submitting mail, STARTTLS offered), smtps (implicit
 * TLS from the first byte, RFC 8314; needs a certificate). */
enum conf_listen_mode { CONF_LISTEN_SMTP, CONF_LISTEN_SUBMISSION,
                        CONF_LISTEN_SMTPS, CONF_LISTEN__COUNT };
/* "smtp", "submission", "smtps": the suffixes, also for log lines. */
extern const char *const conf_listen_mode_names[CONF_LISTEN__COUNT];

struct conf_listen {
	char host[64];   /* "127.0.0.1", "::1", "0.0.0.0" (no brackets) */
	uint16_t port;
	bool ipv6;
	enum conf_listen_mode mode;
};

/* Room for every key of the table (conf.c checks the count). */
#define CONF_KEYS_MAX 128
/* dnsbl_zones: at most this many zones. */
#define CONF_DNSBL_ZONES_MAX 32
/* conf.set_at[]: the key came from the environment. */
#define CONF_SET_ENV UINT32_MAX

struct conf {
	char *hostname;                    /* default: gethostname() */
	struct conf_listen listen[CONF_LISTEN_MAX];
	size_t nlisten;                    /* default: 127.0.0.1:2525 */
	char *spool_dir;                   /* default: /var/spool/relayd */
	char *log_file;                    /* default: "" (none) */
	bool log_stderr;                   /* default: yes */
	int log_level;                     /* enum log_level; default info */
	bool log_syslog;                   /* also syslog(3), mail; default no */
	char *pid_file;                    /* default "" (none) */
	enum conf_delivery delivery;       /* default hold */
	uint64_t max_message_size;         /* bytes; default 50 MiB */
	unsigned max_recipients;           /* default 1000 */
	unsigned max_connections;          /* default 1000 */
	unsigned max_connections_per_ip;   /* default 50 */
	unsigned max_bad_commands;         /* default 20 */
	char *scrub_headers[CONF_LIST_MAX];/* default: Received, X-Originating-IP,
	                                      X-Remote-IP, X-Real-IP,
	                                      X-Forwarded-For, X-Sender-IP,
	                                      X-Source-IP */
	size_t nscrub_headers;
	bool received_client;              /* name client IP/host in Received */
	unsigned hop_limit;                /* Received: fields refused; 50 */
	enum conf_bare_newline bare_newline; /* default reject */
	enum conf_long_lines long_lines;   /* default wrap */
	uint64_t timeout_greeting;         /* ms; idle before first command: 5m */
	uint64_t timeout_command;          /* ms; RFC 5321 §4.5.3.2.7: 5m */
	uint64_t timeout_data;             /* ms; §4.5.3.2.5-6: 3m per block */
	unsigned data_min_rate;            /* bytes/s in DATA/BDAT; 500; 0: off */
	uint64_t session_max_lifetime;     /* ms; default 1h */
	uint64_t shutdown_timeout;         /* ms; SIGTERM's grace: 30s */
	uint64_t queue_map_size;           /* bytes; LMDB map; default 1 GiB */
	uint64_t queue_min_free;           /* bytes; MAIL gets 452 4.3.1 below
	                                      it; default 100 MiB, 0: off */
	enum conf_spool_sync spool_sync;   /* default syncfs */
	uint64_t commit_delay;             /* ms; group-commit gathering: 1ms */
	char *user;                        /* drop root for; default "relayd" */
	char *metrics_listen;              /* "ADDR:PORT" for GET /metrics;
	                                      default "" (off) */
	/* Smarthost delivery. */
	char *smarthost;                   /* "HOST:PORT"; default "" */
	enum conf_tls smarthost_tls;       /* default auto (465: implicit) */
	bool smarthost_tls_verify;         /* default yes */
	char *smarthost_tls_ca;            /* CA file; default "" (system) */
	char *smarthost_tls_name;          /* default "" (the host) */
	char *smarthost_user;              /* default "" (no AUTH) */
	char *smarthost_password_file;     /* default "" */
	char *rewrite_sender;              /* default "" */
	bool rewrite_from_header;          /* default no */
	unsigned smarthost_concurrency;    /* default 4 */
	unsigned max_messages_per_connection; /* default 100 */
	char *smarthost_rate;              /* "N/minute, M/hour"; default "" */
	uint64_t retry_min;                /* ms; default 5m */
	uint64_t retry_max;                /* ms; default 1h */
	uint64_t max_queue_lifetime;       /* ms; default 5d */
	uint64_t delay_warning_after;      /* ms; default 4h, 0: never */
	uint64_t delivery_timeout;         /* ms; default 5m */
	char *postmaster;                  /* default "" */
	char *credentials_file;            /* SMTP AUTH credentials (see
	                                      common/cred.h); default
	                                      /etc/relayd/credentials */
	/* TLS for the listeners (smtpd/smtpd_tls.c). Both empty: no TLS. */
	char *tls_cert_file;               /* PEM: certificate, then chain */
	char *tls_key_file;                /* PEM private key */
	/* Relay policy (smtpd/smtpd_policy_net.h parses these). */
	char *deny_networks;               /* CIDR list; default "" */
	char *sender_domains;              /* default "" (any) */
	char *recipient_domains;           /* default "" (any) */
	char *rate_connections;            /* "N/DURATION"; default "0" */
	char *rate_messages;               /* "N/DURATION"; default "0" */
	/* Relay access and AUTH (smtpd/). The CIDR lists are checked by
	 * smtpd_check_conf (smtpd/smtpd_cidr.c is their one parser). */
	char *trusted_networks;            /* relay without AUTH; default
	                                      "127.0.0.0/8, ::1/128" */
	char *auth_plaintext_networks;     /* AUTH allowed outside TLS;
	                                      default "" (nowhere) */
	unsigned auth_fail_limit;          /* failures per window: 5 */
	uint64_t auth_fail_window;         /* ms; default 10m */
	uint64_t auth_lockout;             /* ms; first lockout: 15m */
	uint64_t auth_slow_delay;          /* ms; a name's lane, 1st: 1s */
	uint64_t auth_slow_delay_max;      /* ms; its cap: 1m */
	unsigned auth_lockout_table;       /* entries per table: 4096 */
	/* Direct delivery to MX hosts (issue 9 §3; deliver/deliver_mx.h and
	 * deliver/deliver_policy.h read these). */
	bool mx_allow_private;             /* loopback/private MX; default no */
	unsigned mx_port;                  /* default 25 (tests change it) */
	enum conf_ip_pref ip_preference;   /* default auto */
	char *smtp_bind_address;           /* IPv4 literal; default "" */
	char *smtp_bind_address6;          /* IPv6 literal; default "" */
	char *tls_policy_file;             /* default "" (every domain: may) */
	char *destination_policy_file;     /* default "" (no overrides) */
	unsigned max_recipients_per_transaction; /* default 50 */
	unsigned destination_concurrency;  /* sessions per destination: 5 */
	unsigned max_delivery_sessions;    /* outbound sessions in all: 100 */
	/* The resolver (dns/). */
	char *dns_servers;                 /* "IP[:PORT], [V6]:PORT"; default ""
	                                      (/etc/resolv.conf) */
	/* DKIM signing (issue 10 §1; dkim/dkim.h reads these). Each
	 * `dkim_key = DOMAIN SELECTOR PATH` line adds one raw value (its
	 * three fields checked here, the key itself by dkim/ at start and
	 * on SIGHUP); an empty value clears the list. RELAYD_DKIM_KEY
	 * replaces the file's list with its values, separated by ';'. */
	char *dkim_keys[CONF_LIST_MAX];
	size_t ndkim_keys;
	bool dkim_subdomains;              /* parent domain's key; default no */
	bool dkim_required;                /* refuse unsigned mail; default no */
	/* relayctl check-dns. */
	char *dnsbl_zones;                 /* zone names, comma separated;
	                                      default: a list (conf.c) */

	/* Where each key (by table index) was last set: its line in the
	 * file, CONF_SET_ENV, or 0 for the default. For conf_check's
	 * messages, which involve more than one key. */
	uint32_t set_at[CONF_KEYS_MAX];
};

/* Fills defaults. Returns 0 or -ENOMEM. */
int conf_init(struct conf *c);
void conf_free(struct conf *c);

/* Sets one key from its text value. On error returns -EINVAL (unknown key
 * or bad value) and writes a message naming the key into err. */
int conf_set(struct conf *c, const char *key, const char *value,
             char *err, size_t errlen);

/* Parses a whole file's text; `name` is used in messages:
 * "relayd.conf:12: max_recipients: not a number: 'abc'". */
int conf_parse(struct conf *c, const char *name, const char *text, size_t len,
               char *err, size_t errlen);

/* Applies RELAYD_<KEY> variables from envp (NULL-terminated "K=V" list). */
int conf_apply_env(struct conf *c, char *const *envp, char *err, size_t errlen);

/* Checks that need several keys at once, after the file and the
 * environment: an smtps listener needs a certificate; tls_cert_file and
 * tls_key_file go together. Errors name where the offending key was set:
 * "relayd.conf:3: listen: 0.0.0.0:465/smtps needs ..." (`name` is the
 * file's name, as for conf_parse). 0 or -EINVAL. */
int conf_check(const struct conf *c, const char *name, char *err,
               size_t errlen);

/* An error about key, prefixed with where it was set, in conf_check's
 * forms ("file:line: key: why", "environment RELAYD_KEY: why", or "key:
 * why" for a default): for checks made outside conf (the relay policy's
 * parsers live in smtpd/). */
void conf_where(const struct conf *c, const char *name, const char *key,
                const char *why, char *err, size_t errlen);

/* conf_init + the file (unreadable: error naming it) + environ +
 * conf_check. path NULL: defaults and environment only. On error c is
 * freed (conf_free again is harmless). Unknown RELAYD_* variables are
 * ignored. */
int conf_load(struct conf *c, const char *path, char *err, size_t errlen);

/* The i-th key of the table (0-based) with its default text (NULL when
 * computed, i.e. hostname) and one-line help; NULL past the end. For
 * relayctl and the test that checks etc/relayd.conf documents every key. */
const char *conf_key(size_t i, const char **def, const char **help);

/* "host:port" or "[v6]:port" -> host (no brackets) and port. 0/-EINVAL. */
int conf_parse_hostport(const char *v, char *host, size_t hostlen,
                        uint16_t *port);
/* dns_servers: "127.0.0.1:5353, [::1]:53, 192.0.2.1" (numeric
 * addresses; port 53 when left out; commas and/or spaces between). */
#define CONF_DNS_SERVERS_MAX 8
struct conf_dns_server {
	char host[46];   /* INET6_ADDRSTRLEN; no brackets */
	uint16_t port;
	bool ipv6;
};
/* Returns the count (0 for an empty list) or -EINVAL with the reason in
 * msg. */
int conf_parse_dns_servers(const char *v, struct conf_dns_server *out,
                           size_t max, char *msg, size_t msglen);
/* smarthost_rate: "30/minute", "500/hour", "30/minute, 500/hour"; 0 for
 * an absent limit. 0/-EINVAL. */
int conf_parse_rate(const char *v, unsigned *per_minute, unsigned *per_hour);

/* Parsers shared with tools: "30s", "5m", "2h", "1d" -> ms; "10M" -> bytes. */
int conf_parse_duration(const char *s, uint64_t *ms);
int conf_parse_size(const char *s, uint64_t *bytes);

#endif
