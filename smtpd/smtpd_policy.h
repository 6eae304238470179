/*
 * smtpd/smtpd_policy.h - Pure building blocks of the relay policy (issue
 * 4 §3): the global sender and recipient domain allowlists and a
 * bounded sliding-window rate limiter (failed-AUTH lockouts live in
 * smtpd_lockout.h). No sockets, no libuv, no clock, no logging: every call takes
 * the time (milliseconds, any monotonic origin, e.g. uv_now()) from the
 * caller, and callers log refusals themselves. Not thread-safe: one table
 * belongs to the loop thread.
 *
 * ---- Domain allowlists ------------------------------------------------
 *
 * `sender_domains` and `recipient_domains` are comma-separated domain
 * lists, parsed once (startup, SIGHUP) into a struct smtpd_domains. The
 * match is exact on the whole domain of the address (after its last '@'
 * outside quotes, as addr_domain()), ASCII case-insensitive; bytes >= 0x80
 * (UTF-8 U-labels under SMTPUTF8) are compared as they are, so an IDN must
 * be listed in the form clients send it (list both the U-label and the
 * A-label "xn--" form to accept either). Subdomains are NOT allowed by
 * their parent: "example.com" passes "a@example.com" and "a@EXAMPLE.COM",
 * never "a@sub.example.com", "a@example.com.evil.org" or
 * "a@evil-example.com"; list every domain you want. A list entry starting
 * with '.' or '*' (a would-be wildcard) is a parse error, so nobody
 * believes a wildcard works. An empty list allows everything.
 *
 * ---- Rate limiter -----------------------------------------------------
 *
 * A table of at most max_keys keys (client IP text, "c:" + credential
 * name, ...: any string; only the first SMTPD_RATE_KEY_MAX bytes count),
 * each with a sliding-window counter: two fixed windows aligned on
 * multiples of window_ms, the previous one weighted by how much of it
 * still overlaps the sliding window (the approximation Cloudflare and
 * nginx-style limiters use: O(1) memory per key, no timestamp list).
 * A hit is allowed when the estimate, counting this hit, stays within the
 * limit; an allowed hit counts, a refused one does not (a client that
 * keeps knocking is not locked out forever by its own refusals; the AUTH
 * lockout is smtpd_lockout.h). Lookup is a seeded hash (O(1) expected).
 * When the table is full the least recently hit key is forgotten: a key
 * being hammered is always recent and so never the one evicted, but an
 * attacker with many addresses can churn the table, so size max_keys well
 * above the number of clients active within a window, and key IPv6
 * clients by their /64 (smtpd_policy_ip_key).
 *
 * Intended uses (the wiring picks the keys and replies):
 *   new connections per IP            smtpd_rate_hit at accept; over: 421
 *   messages per client IP per window smtpd_rate_hit at MAIL;
 *                                     over: 450 4.7.1
 *   failed AUTH per IP / credential   smtpd/smtpd_lockout.h
 */
#ifndef RELAY_SMTPD_POLICY_H
#define RELAY_SMTPD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* ---- domain allowlists ------------------------------------------------ */

#define SMTPD_DOMAIN_MAX 255   /* RFC 5321 §4.5.3.1.2 */

struct smtpd_domains;

/* Parses "example.com, example.org" (items trimmed of blanks; ASCII
 * lowercased; duplicates merged). "" or only blanks: the empty list
 * (allows everything). Errors (-EINVAL, one line in err naming the item,
 * escaped): an empty item ("a.com,,b.com", "a.com,"), an item with '@',
 * blanks or control characters inside, an ASCII character other than
 * letters, digits, '-' and '.', a leading '.' or '*', an empty label
 * ("a..com", trailing '.'), longer than SMTPD_DOMAIN_MAX. An address
 * literal "[192.0.2.1]" is accepted as one item and matched as text.
 * -ENOMEM. On success *out is the caller's (smtpd_domains_free). */
int smtpd_domains_parse(const char *list, struct smtpd_domains **out,
                        char *err, size_t errlen);
void smtpd_domains_free(struct smtpd_domains *d);   /* NULL: no-op */
size_t smtpd_domains_count(const struct smtpd_domains *d);

/* Is addr (a path as addr_parse_path gives it, no angle brackets) allowed
 * as a recipient? d NULL or empty: yes. Otherwise its domain must equal an
 * entry; an address without a domain ("postmaster") or "" never matches. */
bool smtpd_policy_domain_ok(const struct smtpd_domains *d, const char *addr);

/* The same for an envelope sender, except that the null reverse-path ""
 * ("<>", bounces) always passes (RFC 5321 §4.5.5: DSNs must get through). */
bool smtpd_policy_sender_ok(const struct smtpd_domains *d, const char *addr);

/* A rate/lockout key for a client address: the IPv4 address as text, or
 * the IPv6 address masked to its first v6_prefix bits (0..128; 64 is the
 * usual choice, one customer's subnet) followed by "/N", e.g.
 * "2001:db8:1:2::/64". An IPv4-mapped IPv6 address counts as IPv4.
 * Returns 0, -EAFNOSUPPORT or -ENOBUFS (64 bytes are enough). */
int smtpd_policy_ip_key(const struct sockaddr *sa, unsigned v6_prefix,
                        char *out, size_t outlen);

/* ---- rate specs ---------------------------------------------------------- */

/* The longest window a spec may give, and the largest count: they keep the
 * limiter's arithmetic within 64 bits. */
#define SMTPD_RATE_WINDOW_MAX (UINT64_C(7) * 24 * 3600 * 1000)
#define SMTPD_RATE_LIMIT_MAX 1000000000u

struct smtpd_rate_spec {
	uint32_t limit;       /* hits per window; 0: no limit */
	uint64_t window_ms;   /* 0 when limit is 0 */
};

/* Parses "N/DURATION": N in 1..SMTPD_RATE_LIMIT_MAX, DURATION a positive
 * number with a unit s, m, h or d, or a unit alone meaning 1 of it:
 * "30/60s", "100/10m", "500/1h", "20/m", "1000/d". Blanks around the
 * parts are allowed. "" and "0" mean no limit. Windows from 1 s to
 * SMTPD_RATE_WINDOW_MAX. Returns 0 or -EINVAL. */
int smtpd_rate_parse(const char *spec, struct smtpd_rate_spec *out);

/* ---- rate limiter ------------------------------------------------------- */

#define SMTPD_RATE_KEY_MAX 95   /* bytes of a key that count */

struct smtpd_rate;

/* A table for at most max_keys keys (1..2^24), allocated up front
 * (about 160 bytes a key). NULL when out of memory or max_keys is out of
 * range. */
struct smtpd_rate *smtpd_rate_new(size_t max_keys);
void smtpd_rate_free(struct smtpd_rate *t);   /* NULL: no-op */

/* One event for key at now_ms against limit hits per window_ms. Returns
 * true (allowed; counted) or false (over the limit; not counted). When
 * next_ms is not NULL it gets the earliest time at which a hit would be
 * allowed, assuming no other hit meanwhile: now_ms when this one was
 * allowed. limit 0 or window_ms 0: always allowed, nothing tracked. A key
 * hit with a different window than before starts afresh. Time going
 * backwards (before the key's current window) counts as that window's
 * start. */
bool smtpd_rate_hit(struct smtpd_rate *t, const char *key, uint64_t now_ms,
                    uint32_t limit, uint64_t window_ms, uint64_t *next_ms);

/* The same test without counting (and without adding an unknown key):
 * would a hit be allowed now? A known key becomes the most recent. */
bool smtpd_rate_peek(struct smtpd_rate *t, const char *key, uint64_t now_ms,
                     uint32_t limit, uint64_t window_ms, uint64_t *next_ms);

/* Keys in the table, and keys evicted so far (metrics, tests). */
size_t smtpd_rate_count(const struct smtpd_rate *t);
uint64_t smtpd_rate_evicted(const struct smtpd_rate *t);

/* ---- credential quotas ------------------------------------------------- */

/* Which of a credential's quotas (issue 4 §3; counters and the charge are
 * queue/queue_quota.h's) n more messages would exceed, given the counts
 * of the current hour and day: "hourly" (looked at first) or "daily",
 * with *used and *limit set to that period's count and limit for the log
 * line; NULL when neither would (a limit of 0 is no limit). The same rule
 * as queue_quota_exceeded. */
const char *smtpd_policy_quota_over(uint32_t hour, uint32_t day,
                                    uint32_t hourly, uint32_t daily,
                                    uint32_t n, uint32_t *used,
                                    uint32_t *limit);

#endif
