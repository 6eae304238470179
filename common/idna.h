/*
 * common/idna.h - Internationalized domain names to their ASCII form
 * (RFC 5890's A-labels: "xn--" + RFC 3492 Punycode), for the places that
 * must ask DNS or match a configured name for a domain an SMTPUTF8 peer
 * gave in UTF-8: the recipient domain of direct delivery (MX lookup) and
 * the From: domain DKIM signs for. Pure, bounded, no allocation.
 *
 * What it does not do: Unicode normalization (NFC is assumed, as mail
 * clients send it) and the full UTS #46 mapping; upper case is folded
 * for ASCII and for the Latin-1, Latin Extended-A, Greek and Cyrillic
 * capitals, the rest is encoded as given (a name in another case then
 * finds no MX or no key: it fails closed).
 */
#ifndef RELAY_IDNA_H
#define RELAY_IDNA_H

#include <stdbool.h>
#include <stddef.h>

/* Longest domain name in presentation form without the final dot. */
#define IDNA_NAME_MAX 253
/* Longest label (RFC 1035 §2.3.4), A-labels included. */
#define IDNA_LABEL_MAX 63

/* Whether name[0..n) has a byte >= 0x80 (a U-label somewhere). */
bool idna_is_8bit(const char *name, size_t n);

/*
 * name[0..n) (UTF-8, dot-separated labels, one final dot allowed) in
 * ASCII, lower case, into out (outlen bytes, NUL-terminated): ASCII
 * labels as they are (lower-cased; letters, digits and hyphens only),
 * the others as "xn--" + Punycode. 0; -EILSEQ: not UTF-8, or a code
 * point no host name has (controls, blanks and symbols up to U+00A0,
 * the soft hyphen); -EINVAL: an empty label, a label starting or ending with
 * '-', a U-label with "--" in positions 3-4 or that is an A-label
 * already; -ENAMETOOLONG: a label over 63 or a name over 253 octets once
 * encoded, or out too small.
 */
int idna_to_ascii(const char *name, size_t n, char *out, size_t outlen);

/* Punycode (RFC 3492 §6.3) of the n code points cp[], into out (outlen
 * bytes, NUL-terminated; no "xn--"). 0, -ERANGE (overflow: not for any
 * input idna_to_ascii passes), -ENAMETOOLONG (out too small). */
int idna_punycode(const unsigned *cp, size_t n, char *out, size_t outlen);

#endif
