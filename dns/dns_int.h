/*
 * dns/dns_int.h - the pure parts of dns/, for dns.c and the tests: the
 * raw-answer parser (dns_parse.c) and the TTL cache (dns_cache.c). No
 * c-ares types, no libuv.
 */
#ifndef RELAY_DNS_INT_H
#define RELAY_DNS_INT_H

#include "dns/dns.h"

/* Negative TTL when an NXDOMAIN/NODATA answer carries no SOA (RFC 2308
 * §5 leaves it to the resolver; BIND uses the SOA only, we pick 300). */
#define DNS_NEG_TTL_DEFAULT 300
/* Compression pointers followed in one name (they must also point
 * backwards, so this only bounds the work). */
#define DNS_PTR_HOPS_MAX 64

/* Checks and normalises a name to ask about: lower case, no trailing
 * dot, LDH and '_' labels of 1..63 characters, at most DNS_NAME_MAX.
 * Returns 0 or -EINVAL. */
int dns_name_norm(const char *name, char *out, size_t outlen);

/* Parses the raw answer `msg` to the question (qname normalised, qtype).
 * Returns the status; for DNS_OK, DNS_NODATA and DNS_NXDOMAIN *out is a
 * new result (refs 1); otherwise *out is NULL and *why says what was
 * wrong ("SERVFAIL", "truncated", "CNAME loop", ...). */
enum dns_status dns_parse(const uint8_t *msg, size_t len, const char *qname,
                          uint16_t qtype, struct dns_result **out,
                          const char **why);

/* A result with no records (for TEMPFAIL and friends). */
struct dns_result *dns_result_new_status(enum dns_status st,
                                         const char *qname, uint16_t qtype);
struct dns_result *dns_result_ref(struct dns_result *r);
void dns_result_unref(struct dns_result *r);

struct dns_cache;
struct dns_cache_opts {
	size_t max_entries, max_bytes;
	uint32_t ttl_min, ttl_max, neg_ttl_max;   /* seconds */
};
struct dns_cache *dns_cache_new(const struct dns_cache_opts *o);
void dns_cache_free(struct dns_cache *c);
/* Stores (a reference to) r, keyed by (r->qtype, r->qname), until
 * now_ms + its clamped TTL. Only OK, NODATA and NXDOMAIN are kept.
 * Evicts the least recently used entries to stay within both caps.
 * Returns 0, 1 when not stored, or -ENOMEM. */
int dns_cache_put(struct dns_cache *c, struct dns_result *r, uint64_t now_ms);
/* A borrowed result (take a ref to keep it), or NULL; an expired entry
 * is dropped. A hit moves the entry to the front. */
struct dns_result *dns_cache_get(struct dns_cache *c, uint16_t qtype,
                                 const char *qname, uint64_t now_ms);
size_t dns_cache_count(const struct dns_cache *c);
size_t dns_cache_bytes(const struct dns_cache *c);
/* Seconds an entry of r would live (the clamp), for tests and logs. */
uint32_t dns_cache_ttl(const struct dns_cache *c, const struct dns_result *r);

#endif
