/*
 * smtpd/smtpd_cidr.h - The one CIDR matcher of the access lists
 * (trusted_networks, auth_plaintext_networks, deny_networks): a comma-
 * separated list of IPv4 and IPv6 networks parsed into a struct
 * smtpd_cidr_list, and a match of a client address against it, which
 * can name the entry that matched (for log lines). Pure: no sockets, no
 * logging; the list's networks are the one allocation.
 *
 * Syntax: items separated by ',' (blanks around items ignored), each
 * "ADDRESS" (a single host: /32 or /128) or "ADDRESS/BITS", BITS decimal
 * without sign or leading zero, 0..32 for IPv4 and 0..128 for IPv6. An
 * empty or blank text is the empty list (matches nothing). Bits set past
 * the prefix ("10.1.2.3/8") are an error naming the network meant, so a
 * typo cannot quietly widen or narrow a network. IPv4-mapped IPv6 counts
 * as IPv4 both ways: a client ::ffff:a.b.c.d is matched as a.b.c.d, and
 * an entry ::ffff:a.b.c.d/96+ is stored as the IPv4 network it names.
 * IPv4 entries never match IPv6 clients and the reverse ("::/0" does not
 * match 127.0.0.1).
 */
#ifndef RELAY_SMTPD_CIDR_H
#define RELAY_SMTPD_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* Networks in one list. A configuration line (CONF_LINE_MAX) holds fewer;
 * past it the parse fails with "more than 4096 networks". */
#define SMTPD_CIDR_MAX 4096

/* Room for one entry as text ("ffff:...:ffff/128"), NUL included. */
#define SMTPD_CIDR_TEXT_MAX 52

struct smtpd_cidr {
	uint8_t family;        /* 4 or 6 */
	uint8_t bits;          /* prefix length */
	uint8_t addr[16];      /* network, host bits zero; IPv4 in [0..3] */
};

/* A zeroed list is the empty list. */
struct smtpd_cidr_list {
	struct smtpd_cidr *net;   /* n networks, in the order written */
	size_t n, cap;
};

/* Parses text (NULL: "") into *out, which is written, not freed first.
 * Returns 0 (then free *out with smtpd_cidr_list_free), -EINVAL with one
 * line in err naming the item (escaped): "'10.1.2.3/8': host bits set
 * past the prefix (the network is 10.0.0.0/8)", or -ENOMEM. On error
 * *out is the empty list and holds no memory. */
int smtpd_cidr_parse(const char *text, struct smtpd_cidr_list *out,
                     char *err, size_t errlen);

/* Frees the networks; l is then the empty list. A zeroed list: no-op. */
void smtpd_cidr_list_free(struct smtpd_cidr_list *l);

/* The first of the list's networks that holds the address (AF_INET or
 * AF_INET6 sockaddr), or NULL: none, or another family, or sa NULL. */
const struct smtpd_cidr *smtpd_cidr_find(const struct smtpd_cidr_list *l,
                                         const struct sockaddr *sa);

/* smtpd_cidr_find(l, sa) != NULL. */
bool smtpd_cidr_match(const struct smtpd_cidr_list *l,
                      const struct sockaddr *sa);

/* The same for an address in text ("127.0.0.1", "::1"); false when it is
 * not an address. */
bool smtpd_cidr_match_text(const struct smtpd_cidr_list *l, const char *ip);

/* An entry in canonical form, "192.0.2.0/24" or "2001:db8::/32". */
void smtpd_cidr_text(const struct smtpd_cidr *c, char *out, size_t outlen);

#endif
