/*
 * smtpd/smtpd_cidr.h - A small CIDR matcher for the access lists
 * (trusted_networks, auth_plaintext_networks): a comma-separated list of
 * IPv4 and IPv6 networks parsed into a fixed-size struct, and a match of
 * a client address against it. Pure: no sockets opened, no allocation,
 * no logging.
 *
 * Syntax: items separated by ',' (blanks around items ignored), each
 * "ADDRESS" (a single host: /32 or /128) or "ADDRESS/BITS". An empty or
 * blank text is the empty list (matches nothing). Bits set past the
 * prefix ("10.1.2.3/8") are an error, so a typo cannot quietly widen or
 * narrow a network. An IPv4-mapped IPv6 client (::ffff:a.b.c.d) is
 * matched as the IPv4 address it carries.
 */
#ifndef RELAY_SMTPD_CIDR_H
#define RELAY_SMTPD_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#define SMTPD_CIDR_MAX 64   /* networks in one list */

struct smtpd_cidr {
	uint8_t family;        /* 4 or 6 */
	uint8_t bits;          /* prefix length */
	uint8_t addr[16];      /* network, in network byte order */
};

struct smtpd_cidr_list {
	struct smtpd_cidr net[SMTPD_CIDR_MAX];
	size_t n;
};

/* Parses text into *out (replaced, even on error: then empty). Returns 0
 * or -EINVAL with one line in err naming the item: "'10.1.2.3/8': host
 * bits set past the prefix". */
int smtpd_cidr_parse(const char *text, struct smtpd_cidr_list *out,
                     char *err, size_t errlen);

/* Is the address (AF_INET or AF_INET6 sockaddr; any other family: no) in
 * one of the list's networks? */
bool smtpd_cidr_match(const struct smtpd_cidr_list *l,
                      const struct sockaddr *sa);

/* The same for an address in text ("127.0.0.1", "::1"); false when it is
 * not an address. */
bool smtpd_cidr_match_text(const struct smtpd_cidr_list *l, const char *ip);

#endif
