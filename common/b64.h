/*
 * common/b64.h - Base64 (RFC 4648), one strict implementation for relayd:
 * AUTH exchanges in both directions (RFC 4954: padded, standard alphabet)
 * and the credentials file's salts and hashes (unpadded; generated
 * passwords in the URL alphabet).
 */
#ifndef RELAY_B64_H
#define RELAY_B64_H

#include <stddef.h>
#include <stdint.h>

#define B64_PAD 0x1   /* '=' padding to a multiple of 4 characters */
#define B64_URL 0x2   /* "-_" instead of "+/" (RFC 4648 §5) */

/* Characters b64_encode() writes for n bytes, without the NUL. */
#define B64_ENCODED_LEN(n, padded) \
	((padded) ? ((n) + 2) / 3 * 4 : ((n) * 4 + 2) / 3)

/* Encodes n bytes into out (B64_ENCODED_LEN + 1 bytes, NUL-terminated);
 * returns the length written. */
size_t b64_encode(const uint8_t *in, size_t n, unsigned flags, char *out);

/* Strict decoding, no white space. With B64_PAD: a multiple of 4
 * characters, at most two '=' and only at the end. Without: no '=', and
 * the unused bits of the last character must be zero (one text per
 * value). Returns the decoded length, or -1 (malformed, or more than cap
 * bytes). */
long b64_decode(const char *s, size_t n, unsigned flags, uint8_t *out,
                size_t cap);

#endif
