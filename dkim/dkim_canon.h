/*
 * dkim/dkim_canon.h - relaxed/relaxed DKIM canonicalization (RFC 6376
 * §3.4.2, §3.4.4), the signed header selection, and the DKIM-Signature
 * field for rsa-sha256 and ed25519-sha256 (RFC 8463), which relayd signs
 * itself with OpenSSL, the key parsed once (libopendkim re-parses the
 * PEM key for every message and leaks ~550 bytes per Ed25519 signature;
 * it stays linked as the tests' oracle: dkim_sign.c). Pure functions;
 * unit-tested (tests/unit/test_dkim_canon.c) and fuzzed
 * (tests/fuzz/fuzz_dkim_canon.c).
 */
#ifndef RELAY_DKIM_CANON_H
#define RELAY_DKIM_CANON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* One header field (name, ':', value, folds; with or without its final
 * CRLF) in relaxed form: the name lower-cased without trailing blanks,
 * CRLFs removed (unfolding), runs of SP/HTAB as one SP, blanks around
 * the value cut, then CRLF. out holds n + 3 bytes (a field without ':'
 * comes out as "name:" CRLF, one byte longer; callers never sign such a
 * field); returns the length written. */
size_t dkim_canon_header(const uint8_t *f, size_t n, uint8_t *out);

/* Relaxed body canonicalization, streaming in pieces of any size with
 * constant memory: blanks before a CRLF dropped, other runs of SP/HTAB
 * as one SP, empty lines at the end dropped, a CRLF added to a last line
 * without one, an empty body stays empty. A bare CR or LF is an ordinary
 * character (as in dkimpy). emit gets the output in pieces. */
typedef void (*dkim_emit_fn)(void *arg, const uint8_t *p, size_t n);
struct dkim_body_canon {
	uint64_t crlfs;   /* empty lines held back (trailing ones vanish) */
	bool wsp;         /* blanks held back */
	bool cr;          /* a CR held back (a CRLF if LF comes next) */
	bool line;        /* the current line has output */
	uint8_t out[512];
	size_t olen;
};
void dkim_body_canon_init(struct dkim_body_canon *c);
void dkim_body_canon_feed(struct dkim_body_canon *c, const uint8_t *p,
                          size_t n, dkim_emit_fn emit, void *arg);
void dkim_body_canon_end(struct dkim_body_canon *c, dkim_emit_fn emit,
                         void *arg);

/* The length of the header field at p (n bytes left): up to and
 * including the first LF not followed by SP or HTAB (a folded field is
 * one field), or n. */
size_t dkim_field_len(const uint8_t *p, size_t n);

/* The fields of header section h (hlen bytes, CRLF lines, no empty line)
 * to sign, as libopendkim does: every field whose name is in names (a
 * NULL-terminated list, lower case) in message order, its name as
 * written, then each name of over (oversigned) once more. hlist gets
 * "To:From:Subject:from" (NUL-terminated); canon gets the selected
 * fields relaxed-canonicalized in the verifier's order (RFC 6376 §5.4.2:
 * each h= name takes the last instance not yet used; a name with no
 * instance left adds nothing). 0, or -ENOBUFS / -ENOMEM. */
int dkim_select_headers(const uint8_t *h, size_t hlen,
                        const char *const *names, const char *const *over,
                        struct buf *hlist, struct buf *canon);

/* The DKIM-Signature field up to an empty "b=" (no CRLF after it):
 * "DKIM-Signature: v=1; a=ALG; c=relaxed/relaxed; d=D; s=S; t=T; bh=BH;
 * h=H; b=" (ALG: "rsa-sha256" or "ed25519-sha256"), folded exactly as
 * libopendkim 2.11 folds its own (CRLF TAB between tags, CRLF TAB SP
 * inside a long h= after a colon; lines of at most 76 columns when the
 * words fit), so relayd's field is byte-identical to libopendkim's;
 * "b=" starts a line of its own. t < 0 leaves t= out. 0 or -errno. */
int dkim_sig_field(const char *alg, const char *d, const char *s,
                   long long t, const char *bh, const char *hlist,
                   struct buf *out);

/* Appends the b= value (base64 of sig, n bytes: any size, RSA-4096's
 * 512 included) folded as libopendkim does (CRLF TAB SP lines of 75
 * columns), then CRLF, to a field made by dkim_sig_field. 0 or
 * -ENOMEM / -ENOBUFS. */
int dkim_sig_append_b(struct buf *field, const uint8_t *sig, size_t n);

/* The relaxed form of the DKIM-Signature field f (its b= empty) without
 * the final CRLF, appended to canon: what b= signs after the fields. */
int dkim_sig_canon(const uint8_t *f, size_t n, struct buf *canon);

#endif
