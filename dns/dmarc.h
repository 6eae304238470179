/*
 * dns/dmarc.h - DMARC records (RFC 7489, and RFC 9989 which obsoletes it)
 * without DNS: the record parser, the names the DNS tree walk asks
 * (RFC 9989 §4.10), the organizational domain chosen from what the walk
 * found, and identifier alignment. Pure functions, no libuv; relayctl
 * check-dns does the queries. Organizational domains come from the tree
 * walk, not from a public suffix list: no data file to keep current.
 */
#ifndef RELAY_DMARC_H
#define RELAY_DMARC_H

#include <stdbool.h>
#include <stddef.h>

#include "dns/dns.h"

/* RFC 9989 §4.10: at most 8 names are asked in one walk. */
#define DMARC_WALK_MAX 8
#define DMARC_NAME_BUF (DNS_NAME_MAX + 1)

enum dmarc_policy {
	DMARC_P_UNSET = 0, DMARC_P_NONE, DMARC_P_QUARANTINE, DMARC_P_REJECT,
};
/* "", "none", "quarantine", "reject". */
extern const char *const dmarc_policy_names[4];

/* Warnings: the record is valid, but something in it deserves a word. */
#define DMARC_W_UNKNOWN_TAG 0x01  /* ignored (RFC 9989 §4.7) */
#define DMARC_W_REMOVED_TAG 0x02  /* pct, rf or ri: removed in RFC 9989 */
#define DMARC_W_P_NOT_SECOND 0x04 /* RFC 7489 readers want p right after v */
#define DMARC_W_PCT_RANGE 0x08    /* pct outside 0..100 (ignored) */

struct dmarc_record {
	enum dmarc_policy p;          /* never UNSET in a valid record */
	enum dmarc_policy sp, np;     /* UNSET when absent */
	bool adkim_strict, aspf_strict;   /* default relaxed */
	char psd;                     /* 'y', 'n', or 0 (absent or 'u') */
	bool testing;                 /* t=y (RFC 9989) */
	bool rua, ruf;                /* the tag is present */
	unsigned pct;                 /* 100 unless given (RFC 7489 only) */
	unsigned warnings;            /* DMARC_W_* */
};

/* Parses one TXT record (the strings joined; n bytes, NULs allowed).
 *   0        a valid DMARC record, in *out;
 *   -ENOENT  not a DMARC record (does not start with "v=DMARC1"): a
 *            receiver discards it (RFC 7489 §6.6.3);
 *   -EINVAL  a DMARC record that is not valid; why says which tag and
 *            what is wrong (printable ASCII, at most whylen - 1 bytes). */
int dmarc_parse(const char *txt, size_t n, struct dmarc_record *out,
                char *why, size_t whylen);

/* The names (without "_dmarc.") the tree walk asks for `domain`, in
 * order: the domain itself, then, if it has more than 8 labels, its last
 * 7, then one label fewer each time down to the top-level domain. Writes
 * at most DMARC_WALK_MAX names; returns how many (0: not a domain name:
 * empty, longer than DNS_NAME_MAX, or an empty label). Lower-cased, no
 * trailing dot. */
size_t dmarc_walk_names(const char *domain,
                        char out[DMARC_WALK_MAX][DMARC_NAME_BUF]);

/* What the walk found at names[i]: one valid record (with its psd tag),
 * or none (no record, not DMARC, two or more, or invalid). */
struct dmarc_found {
	bool found;
	char psd;                     /* 'y', 'n' or 0 */
};

/* The organizational domain (RFC 9989 §4.10.2) of names[0] from the walk
 * of n names: stop at the first record with psd=n (that name) or psd=y
 * (the name one label below it, names[0] itself when it is names[0]);
 * without a psd tag anywhere, the found name with the fewest labels;
 * nothing found: names[0]. Writes it into out (DMARC_NAME_BUF). */
void dmarc_org_domain(const char names[][DMARC_NAME_BUF],
                      const struct dmarc_found *found, size_t n,
                      char out[DMARC_NAME_BUF]);

/* Identifier alignment (RFC 7489 §3.1): strict, the two domains are
 * equal; relaxed, their organizational domains are. Case-insensitive. */
bool dmarc_aligned(const char *a, const char *org_a, const char *b,
                   const char *org_b, bool strict);

#endif
