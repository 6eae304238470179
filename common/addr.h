/*
 * common/addr.h - RFC 5321 mailbox and path parsing (MAIL FROM / RCPT TO
 * arguments), ESMTP parameter splitting, RFC 3461 xtext checks and RFC 5322
 * address-list parsing (the From: header). Pure.
 */
#ifndef RELAY_ADDR_H
#define RELAY_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp.h"

#define ADDR_ALLOW_NULL  0x1 /* "<>" is accepted (MAIL FROM) */
#define ADDR_ALLOW_UTF8  0x2 /* SMTPUTF8 was given: UTF-8 in local/domain */
#define ADDR_ALLOW_BARE  0x4 /* tolerate a path without <> (Postfix-like) */

/*
 * Parses a reverse- or forward-path at the start of `in` (after "FROM:" /
 * "TO:" and optional spaces have been skipped by the caller):
 *   "<>"  "<user@example.com>"  "<\"quoted local\"@example.com>"
 *   "<@relay1,@relay2:user@example.com>" (source route, dropped)
 *   "<user@[192.0.2.1]>"  "<user@[IPv6:2001:db8::1]>"  "<postmaster>"
 * On success writes the address without brackets or route into out
 * ("" for the null path), sets *used to the bytes consumed (through '>'),
 * and returns 0. Errors:
 *   -EINVAL       syntax error (missing <>, bad local part or domain, ...)
 *   -ENAMETOOLONG local part > 64, domain > 255 or path > 256 octets
 *   -EILSEQ       8-bit bytes without ADDR_ALLOW_UTF8 (-> 553 5.6.7), or
 *                 invalid UTF-8 with it, or control characters/NUL
 * outsz must be at least SMTP_PATH_MAX + 1.
 */
int addr_parse_path(const char *in, size_t inlen, unsigned flags,
                    char *out, size_t outsz, size_t *used);

/* Pointer to the domain part (after the last '@' outside quotes), or NULL
 * when the address has no domain (e.g. "postmaster"). */
const char *addr_domain(const char *addr);

/* A domain that is an address literal, as addr_parse_path writes it:
 * "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3). Returns 0 with
 * *family (AF_INET/AF_INET6) and the address in network order in bin
 * (4 or 16 bytes), -ENOENT when domain is not a literal (no '['), or
 * -EINVAL for a malformed or General-address-literal one. */
int addr_domain_literal(const char *domain, int *family, unsigned char bin[16]);

/* One ESMTP parameter "KEYWORD[=VALUE]" (RFC 5321 §4.1.2 esmtp-param). */
struct addr_param {
	const char *key;  size_t keylen;
	const char *val;  size_t vallen;   /* val NULL when no '=' */
};

/* Splits `s` (the rest of a MAIL/RCPT line after the path) into params on
 * runs of spaces. Returns the count, or -EINVAL on a syntax error (empty
 * keyword, bad keyword characters, bad value characters: RFC 5321
 * esmtp-value is %d33-60 / %d62-126, plus UTF-8 when `utf8`), or -E2BIG
 * when more than max. */
int addr_parse_params(const char *s, size_t n, bool utf8,
                      struct addr_param *out, size_t max);

/* RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = %d33-42 / %d44-60 /
 * %d62-126, hexchar = "+" 2HEXDIG (uppercase). True when valid. */
bool addr_xtext_valid(const char *s, size_t n);

/*
 * RFC 5322 §3.4 address-list, as in a From: field's value (everything after
 * the colon, folded lines and their CR LF included): "a@b", "Name <a@b>",
 * "\"Doe, J. <x>\" <a@b>", comments, several mailboxes separated by ',',
 * groups "team: a@b, c@d;". Calls cb (when not NULL) with each mailbox's
 * addr-spec as addr_parse_path writes it ("local@domain", a quoted local
 * part kept with its quotes, a domain literal with its brackets), in order;
 * a negative return from cb stops the walk and is returned. Returns the
 * number of mailboxes (0 for an empty field or an empty group such as
 * "undisclosed-recipients:;"), or
 *   -EINVAL        a syntax error (an unquoted '@' or '<' in a display
 *                  name, unbalanced quotes, comments or brackets, an
 *                  obs-route, a NUL, ...): nothing reliable can be said
 *   -ENAMETOOLONG  a local part > 64, domain > 255 or address > 256 octets
 * cb may have been called for earlier mailboxes before an error. 8-bit
 * bytes are taken as UTF-8 text (RFC 6532) and not checked here. Linear
 * in n; uses no memory beyond one address on the stack.
 */
typedef int (*addr_mailbox_cb)(void *ctx, const char *addr);
int addr_parse_mailbox_list(const char *in, size_t n, addr_mailbox_cb cb,
                            void *ctx);

#endif
