/*
 * deliver/deliver_policy.h - The pure policy pieces of direct delivery
 * (issue 9 §3): the TLS policy file and the one decision of a
 * destination's TLS level, the table that classifies a server's reply into
 * the engine's reaction (throttling, greylisting, too many recipients,
 * bounce), and the per-destination limits file. No libuv, no sockets, no
 * OpenSSL: bytes in, decisions out. The direct-delivery engine calls them;
 * relayd -t checks the two files (deliver_policy_check_conf).
 */
#ifndef RELAY_DELIVER_POLICY_H
#define RELAY_DELIVER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"

/* Both files: at most this many entries, each line at most this long
 * (without its newline), the whole file at most this large. */
#define DELIVER_POLICY_ENTRIES_MAX 10000
#define DELIVER_POLICY_LINE_MAX 1024
#define DELIVER_POLICY_FILE_MAX (1024 * 1024)

/* ---- the names both files match -------------------------------------- */

/*
 * A file entry names a domain or a host: "example.com" matches exactly
 * that name; ".example.com" matches every name below example.com
 * ("mx1.example.com", "a.b.example.com") but not example.com itself (as
 * Postfix's tables do). Matching is ASCII case-insensitive and ignores one
 * trailing dot. A lookup picks the exact entry, else the longest parent
 * (".b.example.com" before ".example.com").
 */
struct deliver_names;

/* ---- TLS policy (tls_policy_file) ------------------------------------ */

/*
 * The levels, weakest first (RFC 7435 opportunistic security for "may"):
 *   none     never STARTTLS (a server known to break it).
 *   may      STARTTLS when offered, certificate not checked; when the
 *            handshake fails the engine retries ONCE in plaintext on the
 *            same host and the destination remembers "TLS broken" for a
 *            while (then "may" means plaintext until that expires). The
 *            default for every domain.
 *   encrypt  STARTTLS required, certificate not checked; not offered or a
 *            failed handshake defers (4.7.4 / 4.7.5), never plaintext.
 *   verify   as encrypt, and the certificate must chain to a trusted CA
 *            and name the MX host (RFC 6125 DNS-ID): failure defers.
 */
enum deliver_tls_level {
	DELIVER_TLS_NONE, DELIVER_TLS_MAY, DELIVER_TLS_ENCRYPT,
	DELIVER_TLS_VERIFY, DELIVER_TLS__COUNT
};
/* "none", "may", "encrypt", "verify": the file's words, for log lines. */
extern const char *const deliver_tls_level_names[DELIVER_TLS__COUNT];

/* Where a level came from. MTA-STS (RFC 8461) and DANE (RFC 7672) are not
 * implemented: they are named here so that they slot into
 * deliver_tls_decide without changing its callers. */
enum deliver_tls_source {
	DELIVER_TLS_SRC_DEFAULT,   /* no entry: may */
	DELIVER_TLS_SRC_FILE,      /* tls_policy_file */
	DELIVER_TLS_SRC_MTA_STS,   /* not implemented */
	DELIVER_TLS_SRC_DANE,      /* not implemented */
	DELIVER_TLS_SRC__COUNT
};
extern const char *const deliver_tls_source_names[DELIVER_TLS_SRC__COUNT];

struct deliver_tls_policy;

/* Parses a tls_policy_file's text: lines "DOMAIN LEVEL", blank lines and
 * '#' comments (a '#' starts a comment anywhere). `name` is used in
 * errors: "tls_policy:3: unknown level 'must' (none, may, encrypt,
 * verify)". Returns 0 and *out (owned), or -EINVAL (err says why),
 * -E2BIG (too many entries), -ENOMEM. An empty text is a valid empty
 * policy. */
int deliver_tls_policy_parse(const char *name, const char *text, size_t len,
                             struct deliver_tls_policy **out, char *err,
                             size_t errlen);
/* Reads and parses a file (errors name it). */
int deliver_tls_policy_load(const char *path, struct deliver_tls_policy **out,
                            char *err, size_t errlen);
void deliver_tls_policy_free(struct deliver_tls_policy *p);
size_t deliver_tls_policy_count(const struct deliver_tls_policy *p);

/* The level for a recipient domain: exact entry, else the longest
 * ".parent" entry, else may (*src = DELIVER_TLS_SRC_DEFAULT). p may be
 * NULL (no file). */
enum deliver_tls_level deliver_tls_policy_lookup(
	const struct deliver_tls_policy *p, const char *domain,
	enum deliver_tls_source *src);

/* What the engine is told for one connection to one MX host. */
struct deliver_tls_input {
	enum deliver_tls_level level;    /* from deliver_tls_policy_lookup */
	enum deliver_tls_source source;
	const char *mx_host;             /* the name verify matches */
	bool tls_broken;                 /* the destination remembers a failed
	                                    handshake (only "may" heeds it) */
};

/* The decision: the one place that says what TLS a connection gets. */
struct deliver_tls_decision {
	enum deliver_tls_level level;    /* effective level (for the log and
	                                    for the destination's key: a
	                                    domain at encrypt never shares a
	                                    destination with one at may) */
	enum deliver_tls_source source;
	bool starttls;          /* send STARTTLS when the server offers it */
	bool required;          /* not offered or handshake failed: defer,
	                           never send in plaintext */
	bool verify;            /* check the chain and the name below */
	const char *verify_name;/* the MX host name (verify only) */
	bool plain_retry;       /* after a failed handshake, retry once in
	                           plaintext on the same host (may only) */
};

/* 0, or -EINVAL for an out-of-range level, or -ENOTSUP for an MTA-STS or
 * DANE source (not implemented). */
int deliver_tls_decide(const struct deliver_tls_input *in,
                       struct deliver_tls_decision *out);

/* What happens at a TLS event, given the decision. */
enum deliver_tls_event {
	DELIVER_TLS_EV_NOT_OFFERED,    /* EHLO without STARTTLS */
	DELIVER_TLS_EV_HANDSHAKE_FAIL, /* STARTTLS refused, or handshake error */
	DELIVER_TLS_EV_VERIFY_FAIL,    /* chain or name did not verify */
};
enum deliver_tls_action {
	DELIVER_TLS_ACT_PLAIN,        /* go on in plaintext on this session */
	DELIVER_TLS_ACT_RETRY_PLAIN,  /* close, reconnect to the same address
	                                 without STARTTLS, remember TLS broken */
	DELIVER_TLS_ACT_CONTINUE,     /* go on over TLS (unverified is fine) */
	DELIVER_TLS_ACT_DEFER,        /* close; recipients deferred with
	                                 *reply (common/smtp.h), next MX */
};
enum deliver_tls_action deliver_tls_on_event(
	const struct deliver_tls_decision *d, enum deliver_tls_event ev,
	bool already_retried_plain, int *reply);

/* ---- reply classification (the throttling table) --------------------- */

/* What the engine does with a 4xx/5xx reply (README "Throttling"). */
enum deliver_reaction {
	DELIVER_REACT_NONE,          /* not a failure (2xx/3xx) or not a reply */
	DELIVER_REACT_RCPT_DEFER,    /* defer only this recipient (or, at the
	                                end of data, this transaction) */
	DELIVER_REACT_SPLIT_TXN,     /* too many recipients: send this and the
	                                remaining ones in a new transaction */
	DELIVER_REACT_DEST_THROTTLE, /* the sender is rate limited: defer, and
	                                the destination drops to one session
	                                and one transaction a minute for the
	                                row's time (deliver_reply_throttle_secs) */
	DELIVER_REACT_DEST_DEFER,    /* the server is unavailable (421): end
	                                the session, try the next MX / later */
	DELIVER_REACT_BOUNCE,        /* permanent: bounce this recipient (or
	                                this transaction's) */
	DELIVER_REACT__COUNT
};
extern const char *const deliver_reaction_names[DELIVER_REACT__COUNT];

/* A reply as the client core parsed it. enh_class 0: no enhanced code
 * (RFC 3463: class 2/4/5, subject and detail 0-999). text: the reply's
 * text, every line joined, without codes (NUL-terminated not needed). */
struct deliver_reply {
	int code;
	int enh_class, enh_subject, enh_detail;
	const char *text;
	size_t textlen;
};

/* Looks at most this many bytes of the text. */
#define DELIVER_REPLY_TEXT_MAX 4096

/* The first matching row of the table decides; *rule (may be NULL) gets
 * the row's name for the log line ("gmail-4.7.28", "greylist", ...). */
enum deliver_reaction deliver_reply_classify(const struct deliver_reply *r,
                                             const char **rule);

/* How long a throttle by the row named rule lasts (seconds; doubled on
 * a repeat while it lasts); 0 for a row that does not throttle. */
unsigned deliver_reply_throttle_secs(const char *rule);

/* While a destination is throttled: one session, and at most one
 * transaction per DELIVER_THROTTLE_GAP_MS (or per retry_min if that is
 * shorter), as KumoMTA's 1 message a minute. A repeat doubles the length
 * up to DELIVER_THROTTLE_MAX_DOUBLINGS times. */
#define DELIVER_THROTTLE_GAP_MS 60000
#define DELIVER_THROTTLE_MAX_DOUBLINGS 3

/* Parses one reply as read from the wire: "421-4.7.28 text\r\n421 4.7.28
 * more\r\n" (or a single line, CRLF optional). The code comes from the
 * first line, the enhanced code from the first line that carries one
 * right after its reply code; text is the first line's text (the others
 * are looked at by deliver_reply_classify_raw). 0 or -EINVAL. */
int deliver_reply_parse(const char *s, size_t n, struct deliver_reply *out);

/* deliver_reply_parse, then the table, matching words across all lines
 * (each line's text without its code). DELIVER_REACT_NONE when s does
 * not parse. */
enum deliver_reaction deliver_reply_classify_raw(const char *s, size_t n,
                                                 const char **rule);

/* True when the text holds the phrase (words separated by one space in
 * `phrase`) as whole words: ASCII letters and digits make words, anything
 * else separates them; case-insensitive. "rate" is found in "rate-limited"
 * and "Rate limit", not in "separate" or "generated". */
bool deliver_text_has_words(const char *text, size_t n, const char *phrase);

/* ---- per-destination limits (destination_policy_file) ---------------- */

/*
 * Lines "DESTINATION concurrency=N rate=R" with at least one of the two
 * settings; R as smarthost_rate: "30/min", "500/hour", "30/min,500/hour".
 * DESTINATION is a recipient domain or an MX host name, or a ".parent"
 * form of either. A destination (one MX set) is matched by each of its MX
 * host names and each recipient domain routed to it; every name's best
 * entry applies, and where several apply the smallest concurrency and the
 * smallest rate of each kind win (sharing never loosens a limit). Without
 * any match, destination_concurrency and no rate cap.
 */
struct deliver_dest_limits {
	unsigned concurrency;    /* 0: not set by the file */
	unsigned per_minute;     /* 0: no cap */
	unsigned per_hour;       /* 0: no cap */
	bool matched;            /* some entry applied */
};

struct deliver_dest_policy;

int deliver_dest_policy_parse(const char *name, const char *text, size_t len,
                              struct deliver_dest_policy **out, char *err,
                              size_t errlen);
int deliver_dest_policy_load(const char *path,
                             struct deliver_dest_policy **out, char *err,
                             size_t errlen);
void deliver_dest_policy_free(struct deliver_dest_policy *p);
size_t deliver_dest_policy_count(const struct deliver_dest_policy *p);

/* Folds the best entry for `name` (a domain or an MX host) into *lim (to
 * be zeroed first). Call it for each MX host and each domain of the
 * destination. p may be NULL. */
void deliver_dest_policy_match(const struct deliver_dest_policy *p,
                               const char *name,
                               struct deliver_dest_limits *lim);

/* The destination's effective concurrency: the file's, else dflt
 * (destination_concurrency). */
unsigned deliver_dest_concurrency(const struct deliver_dest_limits *lim,
                                  unsigned dflt);

/* ---- relayd -t / SIGHUP ---------------------------------------------- */

/* Loads tls_policy_file and destination_policy_file when set, so a bad
 * line stops relayd -t and a reload: "tls_policy_file: /etc/x:3: ...".
 * 0 or -EINVAL/-ENOMEM with err. */
int deliver_policy_check_conf(const struct conf *conf, char *err,
                              size_t errlen);

#endif
