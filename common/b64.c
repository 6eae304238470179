/*
 * common/b64.c - Base64 (RFC 4648) encoding and strict decoding; see
 * b64.h.
 */
#include "b64.h"

static const char b64_std[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t b64_encode(const uint8_t *in, size_t n, unsigned flags, char *out)
{
	const char *alpha = (flags & B64_URL) ? b64_url : b64_std;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = alpha[(v >> 18) & 63];
		out[o++] = alpha[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = alpha[(v >> 6) & 63];
		else if (flags & B64_PAD)
			out[o++] = '=';
		if (i + 2 < n)
			out[o++] = alpha[v & 63];
		else if (flags & B64_PAD)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

static int b64_val(char c, unsigned flags)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == ((flags & B64_URL) ? '-' : '+'))
		return 62;
	if (c == ((flags & B64_URL) ? '_' : '/'))
		return 63;
	return -1;
}

long b64_decode(const char *s, size_t n, unsigned flags, uint8_t *out,
                size_t cap)
{
	if (flags & B64_PAD) {
		if (n % 4)
			return -1;
		size_t pads = 0;
		while (pads < 2 && pads < n && s[n - 1 - pads] == '=')
			pads++;
		n -= pads;   /* what is left is 4k, 4k+3 or 4k+2 characters */
	}
	if (n % 4 == 1)
		return -1;
	size_t o = 0;
	uint32_t acc = 0;
	unsigned bits = 0;
	for (size_t i = 0; i < n; i++) {
		int v = b64_val(s[i], flags);
		if (v < 0)
			return -1;   /* also a '=' anywhere but at the end */
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o == cap)
				return -1;
			out[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Unpadded values are canonical (unused bits zero); padded AUTH
	 * responses are taken as clients send them. */
	if (!(flags & B64_PAD) && acc != 0)
		return -1;
	return (long)o;
}
