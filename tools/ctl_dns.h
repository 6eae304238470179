/*
 * tools/ctl_dns.h - relayctl's synchronous use of dns/: one libuv loop
 * and one resolver (dns_servers from the configuration, else
 * resolv.conf), and a lookup that runs the loop until its answer came.
 * For relayctl commands that ask DNS (check-dns, dkim show, setup). An
 * asynchronous user (the SPF evaluator) takes ctl_dns_dns() and
 * ctl_dns_loop() and runs the loop itself until its callback ran.
 *
 * Also the host's egress source addresses (ctl_dns_source_addr), which
 * check-dns needs when no address is configured or given.
 */
#ifndef RELAY_CTL_DNS_H
#define RELAY_CTL_DNS_H

#include <stddef.h>

#include <uv.h>

#include "common/conf.h"
#include "dns/dns.h"

struct ctl_dns;

/* A loop and a resolver on c->dns_servers (NULL c, or "": resolv.conf).
 * 0, or a negative errno with err saying why (a bad dns_servers text). */
int ctl_dns_open(const struct conf *c, struct ctl_dns **out, char *err,
                 size_t errlen);
/* Asks `name` (type t: DNS_T_MX, A, AAAA, TXT or PTR) and runs the loop
 * until the answer; cb is called exactly once, before this returns, with
 * a result valid only during cb (as in dns.h). A name dns/ refuses to ask
 * about gets a result with status DNS_BADNAME (or DNS_NOMEM). Returns 0,
 * or a negative errno when the loop failed (cb was then called with
 * DNS_TEMPFAIL). */
int ctl_dns_lookup(struct ctl_dns *cd, const char *name, enum dns_type t,
                   dns_cb cb, void *arg);
uv_loop_t *ctl_dns_loop(struct ctl_dns *cd);
struct dns *ctl_dns_dns(struct ctl_dns *cd);
/* Closes the resolver, runs the loop until every handle is closed, and
 * frees everything. NULL: nothing. */
void ctl_dns_close(struct ctl_dns *cd);

/* The source address the kernel would use toward a global destination of
 * `family` (AF_INET or AF_INET6): a UDP socket connect()ed to a public
 * address, then getsockname(); no packet is sent. 0, or -errno (e.g.
 * -ENETUNREACH: no route of that family). */
int ctl_dns_source_addr(int family, struct dns_addr *out);

#endif
