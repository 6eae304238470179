/*
 * deliver/deliver_mx.h - Direct delivery's routing decisions, pure (issue
 * 9 §3): the order of an MX answer (preference, shuffle, dedup, null MX,
 * bound), the implicit MX, which addresses one attempt tries and in what
 * order (ip_preference, at most 5, the other family as fallback), which
 * addresses are refused (loopback, private, link-local, ...; mx_allow_private),
 * address literals in recipients, and mail that would loop back to
 * relayd. No DNS, no sockets: dns/ answers and the engine connects.
 */
#ifndef RELAY_DELIVER_MX_H
#define RELAY_DELIVER_MX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"
#include "common/smtp.h"

/* MX hosts kept from one answer, after ordering (chasquid keeps 5 MXs;
 * Postfix bounds addresses, not hosts; 16 is room for every real setup). */
#define DELIVER_MX_HOSTS_MAX 16
/* Records of one answer looked at; the rest are ignored. */
#define DELIVER_MX_INPUT_MAX 128
/* Addresses tried in one attempt and sessions per attempt: Postfix's
 * smtp_mx_address_limit and smtp_mx_session_limit defaults. */
#define DELIVER_MX_ADDR_LIMIT 5
#define DELIVER_MX_SESSION_LIMIT 2
/* Candidate addresses gathered before the limit is applied. */
#define DELIVER_MX_CAND_MAX 64

/* An IPv4 (a[0..3]) or IPv6 address, network order. */
struct deliver_addr {
	int family;              /* AF_INET or AF_INET6 */
	unsigned char a[16];
};

/* ---- the MX answer ----------------------------------------------------- */

struct deliver_mx {
	uint16_t pref;
	char host[SMTP_DOMAIN_MAX + 1];  /* normalised: lowercase, no final dot */
};

/* A random source: returns a uniformly random 32-bit value. Tests pass a
 * fixed sequence, the engine a real one. */
typedef uint32_t (*deliver_rand_fn)(void *ctx);

enum deliver_mx_verdict {
	DELIVER_MX_HOSTS,   /* *n hosts to try, in order */
	DELIVER_MX_NULL,    /* null MX (RFC 7505): bounce 556 5.1.10 at once */
	DELIVER_MX_NONE,    /* no usable host (every name malformed): defer;
	                       NOT a reason for the implicit MX */
};

/*
 * Orders an MX answer in place (mx[0..*n)), as RFC 5321 §5.1 says:
 *  1. names are normalised (lowercase, one trailing dot dropped); a name
 *     that is not a host name is dropped;
 *  2. null MX (RFC 7505 §3): an answer whose only record(s) have the
 *     root "." (or empty) as host - any preference - is DELIVER_MX_NULL.
 *     RFC 7505 says a null MX must be the only record; when others come
 *     with it, the "." records are dropped and the others used (as
 *     Postfix, which skips a malformed host);
 *  3. sorted by preference, lowest first; a host named twice keeps its
 *     best preference only;
 *  4. shuffled within each preference (Fisher-Yates with rnd);
 *  5. cut to DELIVER_MX_HOSTS_MAX.
 * Only the first DELIVER_MX_INPUT_MAX records are looked at.
 */
enum deliver_mx_verdict deliver_mx_order(struct deliver_mx *mx, size_t *n,
                                         deliver_rand_fn rnd, void *ctx);

/*
 * The implicit MX (RFC 5321 §5.1): the domain itself at preference 0.
 * The caller uses it ONLY when the MX lookup answered NODATA (the name
 * exists, without MX records): never on NXDOMAIN (bounce 5.1.2), never
 * on SERVFAIL or a timeout (defer), never when deliver_mx_order said
 * DELIVER_MX_NONE. 0, or -EINVAL when domain is not a host name (an
 * address literal has its own path: deliver_mx_literal).
 */
int deliver_mx_implicit(const char *domain, struct deliver_mx *out);

/* ---- address classes --------------------------------------------------- */

enum deliver_addr_class {
	DELIVER_ADDR_PUBLIC,
	DELIVER_ADDR_LOOPBACK,      /* 127/8, ::1 */
	DELIVER_ADDR_PRIVATE,       /* 10/8, 172.16/12, 192.168/16, 100.64/10
	                               (CGNAT, RFC 6598), fc00::/7 (RFC 4193),
	                               fec0::/10 (old site-local) */
	DELIVER_ADDR_DOCUMENTATION, /* 192.0.2/24, 198.51.100/24,
	                               203.0.113/24 (RFC 5737), 2001:db8::/32
	                               (RFC 3849) */
	DELIVER_ADDR_LINK_LOCAL,    /* 169.254/16, fe80::/10 */
	DELIVER_ADDR_UNSPECIFIED,   /* 0.0.0.0, :: */
	DELIVER_ADDR_MULTICAST,     /* 224/4, ff00::/8 */
	DELIVER_ADDR_RESERVED,      /* 0/8, 240/4 (and 255.255.255.255),
	                               ::/96 IPv4-compatible (deprecated) */
	DELIVER_ADDR__COUNT
};
extern const char *const deliver_addr_class_names[DELIVER_ADDR__COUNT];

/* The class; a v4-mapped IPv6 address (::ffff:a.b.c.d) is classified by
 * its IPv4 address. */
enum deliver_addr_class deliver_addr_classify(const struct deliver_addr *a);

/* NULL when relayd may connect to a, else the reason ("loopback address",
 * "private address", ...). allow_private (mx_allow_private) allows
 * loopback, private and documentation addresses; link-local,
 * unspecified, multicast and reserved ones are always refused. */
const char *deliver_mx_addr_refused(const struct deliver_addr *a,
                                    bool allow_private);

/* ---- relayd's own addresses (loops) ------------------------------------ */

struct deliver_endpoint {
	struct deliver_addr addr;   /* unspecified: a wildcard listener */
	uint16_t port;
};

struct deliver_self {
	const struct deliver_endpoint *listen;  /* relayd's listeners */
	size_t nlisten;
	const struct deliver_addr *local;       /* the host's interface
	                                           addresses (for wildcards) */
	size_t nlocal;
};

/* True when a connection to a:port would reach relayd itself: a
 * listener on exactly that address and port, or a wildcard listener on
 * that port when a is loopback or one of the local addresses (a wildcard
 * of either family counts for both: Linux's [::] takes IPv4 too). */
bool deliver_mx_is_self(const struct deliver_self *self,
                        const struct deliver_addr *a, uint16_t port);

/* ---- the try list of one attempt --------------------------------------- */

/* One MX host as the engine resolved it: addresses in the order dns/
 * gave them (both families, A and AAAA answers as they came). */
struct deliver_mx_target {
	const char *host;
	uint16_t pref;
	const struct deliver_addr *addrs;
	size_t naddrs;
};

struct deliver_try {
	struct deliver_addr addr;
	size_t target;              /* index into the targets */
};

struct deliver_try_opts {
	enum conf_ip_pref ip_pref;
	bool v6_first;              /* auto: IPv6 source has FCrDNS (computed
	                               elsewhere, at start and SIGHUP) */
	bool allow_private;         /* mx_allow_private */
	uint16_t port;              /* mx_port */
	const struct deliver_self *self;  /* NULL: no loop check */
	size_t limit;               /* 0: DELIVER_MX_ADDR_LIMIT */
};

enum deliver_try_verdict {
	DELIVER_TRY_OK,       /* *n >= 1 addresses to try, in order */
	DELIVER_TRY_LOOP,     /* the best MX is relayd: bounce 554 5.4.6 */
	DELIVER_TRY_REFUSED,  /* every address refused: defer 451 4.4.4 with
	                         report.reason */
	DELIVER_TRY_EMPTY,    /* no address of an allowed family: defer */
};

struct deliver_try_report {
	size_t nrefused;            /* addresses refused */
	const char *reason;         /* the first refusal's reason, or NULL */
	size_t reason_target;       /* its target */
	struct deliver_addr reason_addr;
	size_t npruned;             /* MX hosts dropped by the loop rule */
};

/*
 * The addresses one attempt tries, best first, into out[0..limit):
 *  1. Loops (Postfix's smtp_truncate_self): the lowest preference among
 *     hosts with an address that is relayd (deliver_mx_is_self on
 *     opts->port) cuts the list: only hosts with a strictly lower
 *     preference stay; none left is DELIVER_TRY_LOOP.
 *  2. Hosts in the given (MX) order; for each, its addresses by
 *     ip_preference:
 *       ipv4 / ipv6  that family only, in DNS order;
 *       any          both, in DNS order;
 *       auto         v6_first ? IPv6 then IPv4 : IPv4 then IPv6, each in
 *                    DNS order: the other family is the fallback within
 *                    the same attempt, and a host with addresses of only
 *                    the other family is still tried.
 *     A v4-mapped IPv6 address counts as IPv4. Refused addresses
 *     (deliver_mx_addr_refused) and repeats are skipped.
 *  3. The first `limit` (5) are kept; with auto or any, when the
 *     candidates hold both families but those 5 only one, the last of
 *     them gives way to the first of the other family (Postfix's
 *     smtp_balance_inet_protocols), so the fallback family is reached.
 * Example, auto, v6_first false: MX 10 a {A1, B1(v6), A2}, MX 20 b {B2(v6)}
 * gives A1 A2 B1 B2; with v6_first: B1 A1 A2 B2; ipv4: A1 A2; ipv6: B1 B2;
 * any: A1 B1 A2 B2.
 * out must hold limit entries; *n gets the count.
 */
enum deliver_try_verdict deliver_mx_try_list(
	const struct deliver_mx_target *t, size_t nt,
	const struct deliver_try_opts *opts, struct deliver_try *out,
	size_t *n, struct deliver_try_report *rep);

/* ---- address literals -------------------------------------------------- */

enum deliver_literal_verdict {
	DELIVER_LIT_NONE,     /* not a literal: look up MX records */
	DELIVER_LIT_OK,       /* deliver to *out at mx_port, no MX lookup */
	DELIVER_LIT_REFUSED,  /* bounce SMTP_R_DLV_LITERAL_REFUSED with
	                         *reason (550 5.4.4) */
	DELIVER_LIT_LOOP,     /* bounce SMTP_R_DLV_LOOP (554 5.4.6) */
};

/* A recipient domain "[192.0.2.1]" or "[IPv6:2001:db8::1]" (through
 * common/addr.c's parser): the same refusal rule as MX addresses (a
 * literal cannot change, so a refusal bounces), and relayd's own address
 * is a loop. ip_preference does not apply: the sender named the address. */
enum deliver_literal_verdict deliver_mx_literal(
	const char *domain, bool allow_private, const struct deliver_self *self,
	uint16_t port, struct deliver_addr *out, const char **reason);

/* "192.0.2.1" or "2001:db8::1" into buf (at least 46 bytes), for logs. */
const char *deliver_addr_str(const struct deliver_addr *a, char *buf,
                             size_t len);

#endif
