/*
 * dns/spf.h - an RFC 7208 SPF evaluator on dns/ (Debian 12's libspf2 is
 * unmaintained, CVE-2023-42118): a pure record parser (spf_parse), the
 * pure macro expander (spf_expand, RFC 7208 §7) and check_host()
 * (spf_check) run asynchronously on the loop through dns/ and its cache.
 *
 * Contract, as for dns/: spf_check never calls its callback before
 * returning; the result passed to the callback is valid only during the
 * callback (copy what you keep); spf_cancel(req) detaches the caller and
 * the callback is never called for that request. A request handle is
 * valid until its callback runs or it is cancelled. Cancel every request
 * (or let it finish) before dns_close(); a check whose resolver is
 * closing ends with temperror.
 *
 * Bounds: a record is at most DNS_TXT_MAX bytes and SPF_TERMS_MAX terms;
 * RFC 7208 §4.6.4: at most SPF_LOOKUP_MAX terms that cause DNS lookups
 * (include, a, mx, ptr, exists, redirect), at most SPF_NAMES_MAX MX
 * targets or PTR names per lookup, at most SPF_VOID_MAX void lookups;
 * a whole check ends after spf_query.deadline_ms (temperror). Deviations
 * and choices, documented:
 *   - exp= is parsed (syntax, at most one) but never fetched: relayd only
 *     reports verdicts, it never writes an explanation into a 5xx reply.
 *   - %{p} expands to "unknown" (no validated-name lookup for macros;
 *     RFC 7208 §7.3 says p SHOULD NOT be used anyway). The ptr mechanism
 *     itself does validate names (§5.5).
 *   - Void lookups are counted for the query a term makes itself (a, mx's
 *     MX query, ptr's PTR query, exists); the address lookups of MX and
 *     PTR targets are not counted (an MX host without AAAA is normal).
 *   - A target that is not a name we would ask about after expansion
 *     (DNS_BADNAME) does not match (a, mx, ptr, exists); for include and
 *     redirect it is a permerror (no record there).
 */
#ifndef RELAY_SPF_H
#define RELAY_SPF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns/dns.h"

#define SPF_LOOKUP_MAX 10      /* RFC 7208 §4.6.4 */
#define SPF_VOID_MAX 2         /* RFC 7208 §4.6.4 */
#define SPF_NAMES_MAX 10       /* MX targets / PTR names, §4.6.4 */
#define SPF_TERMS_MAX 256      /* ours: terms in one record */
#define SPF_EXPAND_MAX 253     /* RFC 7208 §4.8: an expanded name */
#define SPF_DEADLINE_MS 20000  /* RFC 7208 §4.6.4: at least 20 s */

enum spf_verdict {
	SPF_NONE, SPF_NEUTRAL, SPF_PASS, SPF_FAIL, SPF_SOFTFAIL,
	SPF_TEMPERROR, SPF_PERMERROR,
	SPF__VERDICT_COUNT
};
/* "none", "neutral", "pass", "fail", "softfail", "temperror",
 * "permerror". */
extern const char *const spf_verdict_names[SPF__VERDICT_COUNT];

/* ---- the parser (pure) ---------------------------------------------- */

enum spf_term_kind {
	SPF_T_ALL, SPF_T_INCLUDE, SPF_T_A, SPF_T_MX, SPF_T_PTR, SPF_T_IP4,
	SPF_T_IP6, SPF_T_EXISTS,
	SPF_T_REDIRECT, SPF_T_EXP, SPF_T_UNKNOWN_MOD,
	SPF__T_COUNT
};
/* "all", "include", ..., "redirect", "exp", "unknown-modifier". */
extern const char *const spf_term_names[SPF__T_COUNT];

struct spf_term {
	enum spf_term_kind kind;
	char qual;              /* '+', '-', '~' or '?' (mechanisms; '+' if none) */
	uint8_t cidr4, cidr6;   /* a, mx, ip4, ip6: prefix lengths (32, 128) */
	struct dns_addr net;    /* ip4, ip6 */
	const char *text;       /* the term as written, e.g. "-ip4:192.0.2.0/24" */
	const char *spec;       /* include, exists, redirect, exp, a, mx, ptr:
	                           the domain-spec (macro-string) or NULL when
	                           absent (a, mx, ptr default to <domain>);
	                           unknown modifiers: the value */
};

struct spf_record {
	size_t nterms;
	struct spf_term terms[SPF_TERMS_MAX];
	const struct spf_term *redirect, *exp;   /* or NULL */
	bool has_all;
	char arena[2 * (DNS_TXT_MAX + 1)];       /* the strings above */
};

/* Parses one record (the TXT strings joined), "v=spf1" and its terms
 * (RFC 7208 §4.5, §12). Returns 0 and *out (free with spf_record_free),
 * -EINVAL with err naming the offending term (a syntax error: permerror),
 * -E2BIG (longer than DNS_TXT_MAX or more than SPF_TERMS_MAX terms) or
 * -ENOMEM. */
int spf_parse(const char *txt, size_t len, struct spf_record **out,
              char *err, size_t errlen);
void spf_record_free(struct spf_record *r);
/* True when the TXT text is an SPF record: "v=spf1" (any case) followed
 * by a space or the end (RFC 7208 §4.5). */
bool spf_is_record(const char *txt, size_t len);

/* ---- macros (pure) --------------------------------------------------- */

struct spf_macro_ctx {
	const char *sender;     /* s: local-part@domain (postmaster@ already
	                           substituted for an empty local-part) */
	const char *domain;     /* d: the <domain> being checked */
	struct dns_addr ip;     /* i, v (and c) */
	const char *helo;       /* h */
	const char *ptr_name;   /* p: NULL -> "unknown" */
	bool exp;               /* expanding exp= text: c, r, t allowed */
	const char *receiver;   /* r (exp only): NULL -> "unknown" */
	uint64_t now;           /* t (exp only): seconds since the epoch */
};

/* Expands a macro-string (RFC 7208 §7): %{s l o d i p h v} (and c r t
 * when ctx->exp) with a digit count and 'r', delimiters . - + , / _ =,
 * and %% %_ %-; an upper-case letter URL-escapes the value (§7.3).
 * For IPv6 "i" is dot-separated nibbles. Writes a NUL-terminated string.
 * Returns the length, -EINVAL (bad macro; err says which) or -ENOBUFS
 * (longer than outlen - 1). The §4.8 truncation of a name to 253
 * characters is the caller's (spf_expand_name). */
int spf_expand(const char *spec, const struct spf_macro_ctx *ctx, char *out,
               size_t outlen, char *err, size_t errlen);
/* spf_expand, then RFC 7208 §4.8: labels removed from the left until the
 * name fits in SPF_EXPAND_MAX characters; a trailing dot dropped. out
 * must hold SPF_EXPAND_MAX + 1 bytes. Same returns. */
int spf_expand_name(const char *spec, const struct spf_macro_ctx *ctx,
                    char *out, size_t outlen, char *err, size_t errlen);

/* ---- check_host() on dns/ -------------------------------------------- */

struct spf_query {
	struct dns_addr ip;     /* the client's address */
	const char *domain;     /* the domain to check (MAIL FROM's or HELO's) */
	const char *sender;     /* local@domain; NULL or "" -> postmaster@helo,
	                           "@d" or "d" -> postmaster@d (§4.3) */
	const char *helo;       /* the HELO/EHLO name (NULL -> "unknown") */
	unsigned deadline_ms;   /* the whole check; 0: SPF_DEADLINE_MS */
};

struct spf_result {
	enum spf_verdict verdict;
	unsigned dns_lookups;   /* terms that caused DNS lookups (§4.6.4) */
	unsigned void_lookups;
	unsigned queries;       /* DNS queries made (all of them) */
	/* The term of the top record that decided, as written, e.g.
	 * "ip4:192.0.2.0/24", "include:_spf.google.com", "-all",
	 * "redirect=_spf.example.org"; "" when nothing matched. */
	char mechanism[256];
	/* The path to the term that matched, e.g.
	 * "include:_spf.example.org > ip4:192.0.2.0/24"; "" if none. */
	char path[512];
	/* For none, temperror and permerror: why, e.g. "two SPF records at
	 * example.org", "more than 10 DNS lookups (include:a, ...)",
	 * "more than 2 void lookups at a:x.example", "include loop at
	 * include:a.example (a.example > b.example > a.example)", "syntax
	 * error at b.example: unknown mechanism 'foo'". */
	char why[512];
	char domain[DNS_NAME_MAX + 1];   /* the domain checked (normalised) */
	char record[DNS_TXT_MAX + 1];    /* its SPF record, "" if none */
};

struct spf_req;
typedef void (*spf_cb)(void *arg, const struct spf_result *res);

/* Starts check_host(q->ip, q->domain, sender) (RFC 7208 §4). q's strings
 * are copied. Returns a handle, or NULL on -ENOMEM (cb not called). */
struct spf_req *spf_check(struct dns *d, const struct spf_query *q,
                          spf_cb cb, void *arg);
void spf_cancel(struct spf_req *req);

#endif
