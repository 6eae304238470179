/*
 * common/idna.c - UTF-8 domain names to A-labels (RFC 5890, RFC 3492
 * Punycode). See idna.h for what is and is not done.
 */
#include "common/idna.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

/* RFC 3492 §5's parameters for Punycode. */
enum { BASE = 36, TMIN = 1, TMAX = 26, SKEW = 38, DAMP = 700,
       INITIAL_BIAS = 72, INITIAL_N = 128 };

bool idna_is_8bit(const char *name, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] >= 0x80)
			return true;
	return false;
}

/* RFC 3492 §6.1. */
static unsigned adapt(unsigned delta, unsigned npoints, bool first)
{
	delta = first ? delta / DAMP : delta / 2;
	delta += delta / npoints;
	unsigned k = 0;
	while (delta > ((BASE - TMIN) * TMAX) / 2) {
		delta /= BASE - TMIN;
		k += BASE;
	}
	return k + (BASE - TMIN + 1) * delta / (delta + SKEW);
}

static char digit(unsigned d)
{
	return (char)(d < 26 ? 'a' + d : '0' + (d - 26));
}

int idna_punycode(const unsigned *cp, size_t n, char *out, size_t outlen)
{
	size_t o = 0, h, b = 0;
#define PUT(c) do { if (o + 1 >= outlen) return -ENAMETOOLONG; \
                    out[o++] = (c); } while (0)
	if (outlen == 0)
		return -ENAMETOOLONG;
	for (size_t i = 0; i < n; i++)
		if (cp[i] < 0x80) {
			PUT((char)cp[i]);
			b++;
		}
	h = b;
	if (b > 0)
		PUT('-');
	unsigned cur = INITIAL_N, bias = INITIAL_BIAS;
	uint64_t delta = 0;
	while (h < n) {
		unsigned m = UINT32_MAX;
		for (size_t i = 0; i < n; i++)
			if (cp[i] >= cur && cp[i] < m)
				m = cp[i];
		delta += (uint64_t)(m - cur) * (h + 1);
		if (delta > UINT32_MAX)
			return -ERANGE;
		cur = m;
		for (size_t i = 0; i < n; i++) {
			if (cp[i] < cur && ++delta > UINT32_MAX)
				return -ERANGE;
			if (cp[i] != cur)
				continue;
			unsigned q = (unsigned)delta;
			for (unsigned k = BASE;; k += BASE) {
				unsigned t = k <= bias ? TMIN :
				             k >= bias + TMAX ? TMAX : k - bias;
				if (q < t)
					break;
				PUT(digit(t + (q - t) % (BASE - t)));
				q = (q - t) / (BASE - t);
			}
			PUT(digit(q));
			bias = adapt((unsigned)delta, (unsigned)h + 1, h == b);
			delta = 0;
			h++;
		}
		delta++;
		cur++;
	}
#undef PUT
	out[o] = '\0';
	return 0;
}

/* The next code point of p[0..n) at *i (strict UTF-8: no overlong forms,
 * no surrogates, at most U+10FFFF). -1: not UTF-8. */
static long utf8_next(const unsigned char *p, size_t n, size_t *i)
{
	unsigned c = p[*i];
	size_t len;
	unsigned min, v;
	if (c < 0x80) {
		(*i)++;
		return c;
	} else if (c >= 0xc2 && c <= 0xdf) {
		len = 2, min = 0x80, v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, min = 0x800, v = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, min = 0x10000, v = c & 0x07;
	} else {
		return -1;
	}
	if (n - *i < len)
		return -1;
	for (size_t k = 1; k < len; k++) {
		unsigned cc = p[*i + k];
		if ((cc & 0xc0) != 0x80)
			return -1;
		v = v << 6 | (cc & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return -1;
	*i += len;
	return (long)v;
}

/* Lower case for the capitals of the scripts most mail domains use. */
static unsigned fold(unsigned c)
{
	if (c >= 'A' && c <= 'Z')
		return c + 32;
	if (c >= 0xc0 && c <= 0xde && c != 0xd7)          /* Latin-1 */
		return c + 32;
	if (c >= 0x100 && c <= 0x137 && !(c & 1))          /* Latin Ext-A */
		return c + 1;
	if (c >= 0x139 && c <= 0x148 && (c & 1))
		return c + 1;
	if (c >= 0x14a && c <= 0x177 && !(c & 1))
		return c + 1;
	if (c == 0x178)
		return 0xff;
	if ((c == 0x179 || c == 0x17b || c == 0x17d))
		return c + 1;
	if (c >= 0x391 && c <= 0x3ab && c != 0x3a2)        /* Greek */
		return c + 32;
	if (c >= 0x410 && c <= 0x42f)                      /* Cyrillic */
		return c + 32;
	if (c >= 0x400 && c <= 0x40f)
		return c + 80;
	return c;
}

/* Whether an ASCII character may stand in a host name's label:
 * letters, digits, '-' (RFC 952, RFC 1123 §2.1). */
static bool ldh(unsigned c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* One label p[0..n) appended to out at *o. */
static int label(const unsigned char *p, size_t n, char *out, size_t outlen,
                 size_t *o)
{
	unsigned cp[IDNA_LABEL_MAX];
	size_t ncp = 0;
	bool wide = false;
	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n;) {
		long c = utf8_next(p, n, &i);
		if (c < 0)
			return -EILSEQ;
		unsigned u = fold((unsigned)c);
		if (u < 0x80 ? !ldh(u) : u <= 0xa0 || u == 0xad)
			return -EILSEQ;   /* blanks, symbols, C1 controls, NBSP,
			                     SHY */
		if (u >= 0x80)
			wide = true;
		/* An A-label is at least "xn--" + one character per code
		 * point over ASCII: more than 63 code points never fits. */
		if (ncp == IDNA_LABEL_MAX)
			return -ENAMETOOLONG;
		cp[ncp++] = u;
	}
	if (cp[0] == '-' || cp[ncp - 1] == '-')
		return -EINVAL;
	char lab[IDNA_LABEL_MAX + 1];
	size_t ll;
	if (!wide) {
		for (ll = 0; ll < ncp; ll++)
			lab[ll] = (char)cp[ll];
	} else {
		/* RFC 5891 §4.2.3.1: no "--" in positions 3 and 4 (that is
		 * where "xn--" and future prefixes sit). */
		if (ncp >= 4 && cp[2] == '-' && cp[3] == '-')
			return -EINVAL;
		memcpy(lab, "xn--", 4);
		int r = idna_punycode(cp, ncp, lab + 4, sizeof lab - 4);
		if (r)
			return r;
		ll = 4 + strlen(lab + 4);
	}
	if (ll > IDNA_LABEL_MAX)
		return -ENAMETOOLONG;
	if (*o + ll + 1 > outlen)
		return -ENAMETOOLONG;
	memcpy(out + *o, lab, ll);
	*o += ll;
	return 0;
}

int idna_to_ascii(const char *name, size_t n, char *out, size_t outlen)
{
	const unsigned char *p = (const unsigned char *)name;
	size_t o = 0;
	if (outlen == 0)
		return -ENAMETOOLONG;
	if (n && p[n - 1] == '.')
		n--;   /* the root's dot */
	if (n == 0)
		return -EINVAL;
	size_t start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && p[i] != '.')
			continue;
		if (start && o + 1 < outlen)
			out[o++] = '.';
		else if (start)
			return -ENAMETOOLONG;
		int r = label(p + start, i - start, out, outlen, &o);
		if (r)
			return r;
		start = i + 1;
	}
	if (o > IDNA_NAME_MAX)
		return -ENAMETOOLONG;
	out[o] = '\0';
	return 0;
}
