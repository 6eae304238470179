/*
 * dkim/dkim_key.h - DKIM private keys: the `dkim_key = DOMAIN SELECTOR
 * PATH` configuration line, loading a key file safely (no links, a
 * regular file, not world-readable, bounded size, RSA >= 1024 bits or
 * Ed25519), the public key record to publish (RFC 6376 §3.6.1, RFC 8463),
 * and checking a served TXT record against a loaded key; dkim_errf, the
 * error-text helper of dkim/ and relayctl's dkim commands. OpenSSL only;
 * signing is dkim_sign.c's. Used by relayd (config, start, SIGHUP) and
 * relayctl (dkim keygen|show|rotate, check-dns).
 */
#ifndef RELAY_DKIM_KEY_H
#define RELAY_DKIM_KEY_H

#include <stdbool.h>
#include <stddef.h>

/* Largest key file read (an RSA-4096 PEM is about 3.3 KiB). */
#define DKIM_KEY_FILE_MAX (64 * 1024)
/* RSA sizes: below MIN refused, below WEAK loaded with weak = true (the
 * caller warns). Issue 10 §1. */
#define DKIM_RSA_BITS_MIN 1024
#define DKIM_RSA_BITS_WEAK 2048

/* One `dkim_key` line. domain: lower-cased, no trailing dot; selector:
 * one or more dot-separated labels of letters, digits and '-' (RFC 6376
 * §3.1), as typed; path: absolute. */
struct dkim_key_spec {
	char domain[254];
	char selector[64];
	char path[4096];
};

/* Formats an error or result text into err (n bytes, truncated; err
 * NULL or n 0: nothing), as snprintf: dkim/'s and relayctl's dkim
 * commands' `err`/`why` buffers. */
void dkim_errf(char *err, size_t n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Parses "DOMAIN SELECTOR PATH" (words separated by spaces or tabs; PATH
 * is the rest of the value, trailing blanks cut, so it may hold spaces).
 * 0, or -EINVAL with a precise reason in err. */
int dkim_key_parse_line(const char *value, struct dkim_key_spec *out,
                        char *err, size_t errlen);

enum dkim_alg { DKIM_ALG_RSA, DKIM_ALG_ED25519 };

/* "rsa" / "ed25519": the k= tag's value, also for log lines. */
const char *dkim_alg_name(enum dkim_alg alg);

struct dkim_key {
	struct dkim_key_spec spec;
	enum dkim_alg alg;
	unsigned bits;          /* RSA modulus bits; 256 for Ed25519 */
	char *pem;              /* the private key, unencrypted PKCS#8 PEM,
	                           NUL-terminated (for dkim_sign.c) */
	char *pub_b64;          /* the p= value: base64 of the DER
	                           SubjectPublicKeyInfo (RSA), of the 32 raw
	                           bytes (Ed25519, RFC 8463 §4.2) */
	bool weak;              /* RSA under DKIM_RSA_BITS_WEAK bits */
	/* Private to dkim_key.c: the public key bytes p= may carry. */
	unsigned char *pub_raw; /* what pub_b64 encodes */
	size_t pub_raw_len;
	unsigned char *pub_alt; /* RSA: the PKCS#1 RSAPublicKey DER (RFC
	                           6376 §3.6.1's wording; some publish it) */
	size_t pub_alt_len;
};

/* Loads spec->path: opened with O_NOFOLLOW (a symbolic link is refused),
 * must be a regular file, not readable or writable by others, at most
 * DKIM_KEY_FILE_MAX bytes, one unencrypted PEM private key, RSA (>= 1024
 * bits) or Ed25519. 0 and *out (free with dkim_key_free), or -errno with
 * a reason naming the file in err: -ELOOP (link), -EPERM (mode), -EFBIG,
 * -EINVAL (not a usable key), or open()'s error. */
int dkim_key_load(const struct dkim_key_spec *spec, struct dkim_key **out,
                  char *err, size_t errlen);

/* Builds a key from PEM text already in memory (what dkim_key_load does
 * after reading the file; relayctl keygen uses it on the key it wrote).
 * Same checks on the key, same errors. */
int dkim_key_from_pem(const struct dkim_key_spec *spec, const char *pem,
                      size_t len, struct dkim_key **out, char *err,
                      size_t errlen);

/* Generates a new private key (RSA of `bits` bits, DKIM_RSA_BITS_MIN..
 * 4096; Ed25519 ignores bits) as unencrypted PKCS#8 PEM text in *pem
 * (malloc'd, NUL-terminated; wipe and free it), its length in *len.
 * 0, -EINVAL (bits out of range), -ENOMEM or -EIO with err. */
int dkim_key_generate(enum dkim_alg alg, unsigned bits, char **pem,
                      size_t *len, char *err, size_t errlen);
#define DKIM_RSA_BITS_MAX 4096

/* NULL is a no-op. The private key text is wiped first. */
void dkim_key_free(struct dkim_key *k);

/* "v=DKIM1; k=rsa; p=..." or "v=DKIM1; k=ed25519; p=...", malloc'd;
 * NULL on allocation failure. */
char *dkim_key_record(const struct dkim_key *k);

/* Parses a served DKIM key record (the TXT strings joined), a tag=value
 * list (RFC 6376 §3.2: FWS around tags and values, duplicate tags
 * invalid, a final ';' allowed) with the tags of §3.6.1: v (DKIM1, and
 * first), k (rsa by default), h, p (required; white space inside
 * ignored; empty = revoked), s, t; unknown tags ignored. Returns:
 *   0        p= is exactly k's public key, usable for mail (why: "" or a
 *            note such as "t=y: the domain is testing DKIM")
 *   1        not k's key, with the reason in why: revoked (empty p=),
 *            another key type (k=), another key, h= without sha256,
 *            s= without email
 *   -EINVAL  not a valid key record, with the reason in why
 * len is bounded by the caller (a DNS answer); nothing is read past it. */
int dkim_key_match(const struct dkim_key *k, const char *txt, size_t len,
                   char *why, size_t whylen);

#endif
