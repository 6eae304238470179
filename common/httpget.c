/*
 * common/httpget.c - bounded HTTP/1.x request-head reader (see
 * httpget.h). RFC 9112 §2.2/§3: the request line is
 * method SP request-target SP HTTP-version CRLF; a bare LF ending a line
 * is accepted (§2.2 allows it), a bare CR or NUL anywhere is not, and
 * obsolete line folding is rejected (§5.2 lets a server do so).
 */
#include "common/httpget.h"

#include <string.h>

static int tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return 1;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Finds the end of the line starting at p[i]; returns the index of the
 * LF, or n if none yet; *bad set on a NUL or a CR not before LF. */
static size_t line_end(const char *p, size_t i, size_t n, int *bad)
{
	for (; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\n')
			return i;
		if (c == '\0' || (c == '\r' && i + 1 < n && p[i + 1] != '\n')) {
			*bad = 1;
			return i;
		}
	}
	return n;
}

static enum httpget_result request_line(const char *p, size_t len,
                                        struct httpget *r)
{
	if (len && p[len - 1] == '\r')
		len--;
	size_t i = 0;
	while (i < len && tchar((unsigned char)p[i]))
		i++;
	size_t mlen = i;
	if (!mlen || i >= len || p[i] != ' ')
		return HTTPGET_BAD;
	size_t t0 = ++i;
	while (i < len && p[i] != ' ') {
		unsigned char c = (unsigned char)p[i];
		if (c <= 0x20 || c >= 0x7f)
			return HTTPGET_BAD;
		i++;
	}
	size_t tlen = i - t0;
	if (!tlen || i >= len || p[i] != ' ')
		return HTTPGET_BAD;
	i++;
	const char *v = p + i;
	size_t vlen = len - i;
	if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' ||
	    v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9')
		return HTTPGET_BAD;
	if (v[5] != '1')
		return HTTPGET_VERSION;
	const char *t = p + t0;
	/* The path ends at '?' (a query is ignored); "#" never comes on the
	 * wire (RFC 3986 §3.5), so it is just a byte of a path we don't have. */
	size_t plen = 0;
	while (plen < tlen && t[plen] != '?')
		plen++;
	int is_metrics = plen == 8 && memcmp(t, "/metrics", 8) == 0;
	int get = mlen == 3 && memcmp(p, "GET", 3) == 0;
	int head = mlen == 4 && memcmp(p, "HEAD", 4) == 0;
	r->head = head;
	if (is_metrics)
		return get || head ? HTTPGET_METRICS : HTTPGET_BAD_METHOD;
	return HTTPGET_NOT_FOUND;
}

enum httpget_result httpget_parse(const char *p, size_t n, struct httpget *r)
{
	memset(r, 0, sizeof *r);
	r->result = HTTPGET_MORE;
	size_t lim = n < HTTPGET_HEAD_MAX ? n : HTTPGET_HEAD_MAX;
	int bad = 0;
	size_t e = line_end(p, 0, lim, &bad);
	if (bad)
		return r->result = HTTPGET_BAD;
	if (e == lim)
		return r->result = n >= HTTPGET_HEAD_MAX ? HTTPGET_TOO_LARGE
		                                         : HTTPGET_MORE;
	enum httpget_result res = request_line(p, e, r);
	/* The header lines: each "name: value"; an empty one ends the head. */
	size_t i = e + 1;
	for (;;) {
		size_t s = i;
		e = line_end(p, s, lim, &bad);
		if (bad || e == lim) {
			r->head = 0;
			return r->result = bad ? HTTPGET_BAD :
			       n >= HTTPGET_HEAD_MAX ? HTTPGET_TOO_LARGE : HTTPGET_MORE;
		}
		size_t len = e - s;
		if (len && p[e - 1] == '\r')
			len--;
		i = e + 1;
		if (!len)
			break;
		if (p[s] == ' ' || p[s] == '\t')
			res = HTTPGET_BAD; /* obs-fold */
		size_t k = s;
		while (k < s + len && tchar((unsigned char)p[k]))
			k++;
		if (k == s || k >= s + len || p[k] != ':')
			res = HTTPGET_BAD;
	}
	r->used = i;
	/* HEAD is reported with the verdicts that answer it, only once the
	 * head is complete (a partial or refused one has no method yet). */
	r->head = r->head && (res == HTTPGET_METRICS || res == HTTPGET_NOT_FOUND);
	return r->result = res;
}

const char *httpget_status(enum httpget_result res)
{
	switch (res) {
	case HTTPGET_METRICS:    return "200 OK";
	case HTTPGET_NOT_FOUND:  return "404 Not Found";
	case HTTPGET_BAD_METHOD: return "405 Method Not Allowed";
	case HTTPGET_TOO_LARGE:  return "431 Request Header Fields Too Large";
	case HTTPGET_BAD:        return "400 Bad Request";
	case HTTPGET_VERSION:    return "505 HTTP Version Not Supported";
	case HTTPGET_MORE:       break;
	}
	return "";
}
