/*
 * dns/dns.h - relayd's resolver: c-ares 1.18 driven from the libuv loop
 * (one uv_poll_t per c-ares socket, one uv_timer_t), our own parser for
 * the raw answers (dns_parse.c: TTLs, CNAME chains, RFC 2308 negative
 * TTLs) and a bounded TTL cache (dns_cache.c). MX, A, AAAA, TXT, PTR.
 *
 * Contract: dns_query never calls its callback before returning (cache
 * hits are delivered from the loop too). The result passed to the
 * callback is valid only during the callback; copy what you keep.
 * dns_cancel(req) detaches the caller: the callback is never called for
 * that request. A request handle is valid until its callback runs or it
 * is cancelled, whichever comes first.
 */
#ifndef RELAY_DNS_H
#define RELAY_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* RFC 1035 §2.3.4: a name is at most 255 octets on the wire, 253
 * characters in presentation form without the trailing dot. */
#define DNS_NAME_MAX 253
/* Records kept from one answer, hops followed in a CNAME chain, bytes of
 * one TXT record's strings joined: beyond these an answer is refused. */
#define DNS_RR_MAX 64
#define DNS_CNAME_MAX 8
#define DNS_TXT_MAX 4096

enum dns_type {
	DNS_T_A = 1, DNS_T_CNAME = 5, DNS_T_SOA = 6, DNS_T_PTR = 12,
	DNS_T_MX = 15, DNS_T_TXT = 16, DNS_T_AAAA = 28,
};

enum dns_status {
	DNS_OK,        /* records in rr[] */
	DNS_NODATA,    /* the name exists, no record of the type (RFC 2308 §2.2) */
	DNS_NXDOMAIN,  /* the name does not exist: permanent */
	DNS_TEMPFAIL,  /* SERVFAIL, REFUSED, timeout, truncated, bad answer */
	DNS_BADNAME,   /* not a name we would ask about */
	DNS_NOMEM,
	DNS__STATUS_COUNT
};
/* "ok", "nodata", "nxdomain", "tempfail", "badname", "nomem". */
extern const char *const dns_status_names[DNS__STATUS_COUNT];

struct dns_addr {
	int family;             /* AF_INET or AF_INET6 */
	uint8_t a[16];          /* network order; 4 bytes for AF_INET */
};

struct dns_rr {
	uint16_t type;
	uint32_t ttl;
	uint16_t pref;          /* MX */
	struct dns_addr addr;   /* A, AAAA */
	const char *name;       /* MX exchange, PTR target: no trailing dot */
	const char *txt;        /* TXT: the strings joined, NUL-terminated */
	size_t txtlen;          /* (may hold NULs: use txtlen) */
};

/* Immutable once built; shared by the cache and the callbacks. */
struct dns_result {
	enum dns_status status;
	uint16_t qtype;
	uint32_t ttl;           /* OK: least TTL of the records and CNAMEs used;
	                           NODATA/NXDOMAIN: RFC 2308 negative TTL */
	bool neg_soa;           /* the negative TTL came from an SOA */
	bool nullmx;            /* MX: the single record "0 ." (RFC 7505) */
	const char *qname;      /* as asked, lower case, no trailing dot */
	const char *canon;      /* the end of the CNAME chain (== qname if none) */
	size_t nrr;
	const struct dns_rr *rr;
	/* Internal. */
	size_t size;            /* bytes, for the cache's cap */
	unsigned refs;
};

struct dns;
struct dns_req;

/* `res` is never NULL; res->status says what happened. */
typedef void (*dns_cb)(void *arg, const struct dns_result *res);

struct dns_opts {
	const char *servers;     /* conf dns_servers text; NULL/"": resolv.conf */
	unsigned timeout_ms;     /* c-ares per-try timeout; 0: 2000 */
	unsigned tries;          /* c-ares tries per server; 0: 2 */
	unsigned deadline_ms;    /* whole query, ours; 0: 15000 */
	size_t cache_entries;    /* 0: 10000 */
	size_t cache_bytes;      /* 0: 8 MiB */
	uint32_t ttl_min, ttl_max;   /* seconds; 0: 5, 86400 */
	uint32_t neg_ttl_max;        /* seconds; 0: 3600 */
};

struct dns_stats {
	uint64_t queries;        /* calls to dns_query */
	uint64_t sent;           /* queries sent to c-ares */
	uint64_t hits;           /* answered from the cache (incl. negative) */
	uint64_t neg_hits;       /* of which negative */
	uint64_t misses;
	uint64_t coalesced;      /* joined a query already in flight */
	uint64_t timeouts;
	uint64_t tempfails;
};

/* c-ares's version, as linked ("1.18.1"), for --version. */
const char *dns_library_version(void);

/* Returns 0, -EINVAL (bad servers text; err says why) or -ENOMEM. */
int dns_new(uv_loop_t *loop, const struct dns_opts *o, struct dns **out,
            char *err, size_t errlen);
/* Re-reads resolv.conf (or re-applies `servers`, if not NULL; "" means
 * resolv.conf): a new c-ares channel; queries in flight are re-sent on
 * it, keeping their deadlines. Returns 0 or a negative errno. */
int dns_reload(struct dns *d, const char *servers, char *err, size_t errlen);
/* Fails every query in flight (callbacks run with DNS_TEMPFAIL, from the
 * loop), closes the handles, then calls done_cb from the loop; `d` is
 * freed then. */
void dns_close(struct dns *d, void (*done_cb)(void *), void *arg);

/* type: DNS_T_MX, A, AAAA, TXT or PTR. Returns a handle, or NULL with
 * *err = DNS_BADNAME or DNS_NOMEM (then cb is not called). */
struct dns_req *dns_query(struct dns *d, const char *name, uint16_t type,
                          dns_cb cb, void *arg, enum dns_status *err);
void dns_cancel(struct dns_req *req);

void dns_get_stats(const struct dns *d, struct dns_stats *st);

/* "4.3.2.1.in-addr.arpa" or the ip6.arpa nibble form (RFC 3596 §2.5). */
int dns_reverse_name(const struct dns_addr *a, char *out, size_t outlen);
/* Text form of an address ("192.0.2.1", "2001:db8::1"). */
const char *dns_addr_str(const struct dns_addr *a, char *out, size_t outlen);
/* "MX", "A", ... or NULL. */
const char *dns_type_name(uint16_t type);

#endif
