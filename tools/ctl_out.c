/*
 * tools/ctl_out.c - relayctl's output helpers (ctl.h): an in-memory output
 * buffer with a sticky error, peer text made safe for terminals, JSON
 * string literals that are always valid UTF-8, and the age and timestamp
 * formats of the human-readable tables.
 */
#include "ctl.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

/* Output buffers are bounded only by memory; a listing spills to stdout
 * well before this (ctl_queue.c). */
#define CTL_OUT_LIMIT ((size_t)1 << 40)

static const char ctl_hex[] = "0123456789abcdef";

void ctl_err(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, CTL_PROG ": %s\n", msg);
}

void ctl_out_init(struct ctl_out *o)
{
	buf_init(&o->b, CTL_OUT_LIMIT);
	o->err = 0;
}

void ctl_out_free(struct ctl_out *o)
{
	if (!o)
		return;
	buf_free(&o->b);
}

void ctl_out_mem(struct ctl_out *o, const void *p, size_t n)
{
	if (o->err)
		return;
	int r = buf_append(&o->b, p, n);
	if (r < 0)
		o->err = r;
}

void ctl_out_str(struct ctl_out *o, const char *s)
{
	ctl_out_mem(o, s, strlen(s));
}

void ctl_out_printf(struct ctl_out *o, const char *fmt, ...)
{
	if (o->err)
		return;
	va_list ap;
	va_start(ap, fmt);
	int r = buf_vprintf(&o->b, fmt, ap);
	va_end(ap);
	if (r < 0)
		o->err = r;
}

void ctl_out_spaces(struct ctl_out *o, size_t n)
{
	static const char sp[] = "                                ";
	while (n > 0) {
		size_t k = n < sizeof sp - 1 ? n : sizeof sp - 1;
		ctl_out_mem(o, sp, k);
		n -= k;
	}
}

int ctl_out_flush(struct ctl_out *o, FILE *f)
{
	if (o->err)
		return o->err;
	errno = 0;
	if (o->b.len > 0 && fwrite(o->b.data, 1, o->b.len, f) != o->b.len)
		return errno ? -errno : -EIO;
	buf_reset(&o->b);
	return 0;
}

size_t ctl_utf8_len(const unsigned char *p, size_t n)
{
	if (n == 0)
		return 0;
	unsigned char c = p[0];
	if (c < 0x80)
		return 1;
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;   /* bounds of the second byte */
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;                /* overlong */
		else if (c == 0xed)
			hi = 0x9f;                /* UTF-16 surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;                /* overlong */
		else if (c == 0xf4)
			hi = 0x8f;                /* > U+10FFFF */
	} else {
		return 0;
	}
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return len;
}

static void ctl_out_hexbyte(struct ctl_out *o, unsigned char c)
{
	char e[4] = {'\\', 'x', ctl_hex[c >> 4], ctl_hex[c & 15]};
	ctl_out_mem(o, e, sizeof e);
}

/* Unicode's bidirectional controls (U+061C, U+200E-200F, U+202A-202E,
 * U+2066-2069): valid UTF-8 that would let a peer's text (a TXT record,
 * a reply) reorder how the rest of the line looks. Escaped like controls. */
static bool ctl_bidi(const unsigned char *p, size_t k)
{
	if (k == 2)
		return p[0] == 0xd8 && p[1] == 0x9c;
	if (k != 3 || p[0] != 0xe2)
		return false;
	return (p[1] == 0x80 && (p[2] == 0x8e || p[2] == 0x8f ||
	                         (p[2] >= 0xaa && p[2] <= 0xae))) ||
	       (p[1] == 0x81 && p[2] >= 0xa6 && p[2] <= 0xa9);
}

size_t ctl_out_text(struct ctl_out *o, const void *src, size_t n,
                    unsigned flags)
{
	const unsigned char *p = src;
	size_t cols = 0, i = 0, run = 0;   /* run: safe bytes not yet copied */
	while (i < n) {
		unsigned char c = p[i];
		size_t k = ctl_utf8_len(p + i, n - i);
		/* C1 controls (U+0080..U+009F, encoded C2 80..C2 9F) include
		 * CSI, which terminals act on just like ESC [. */
		bool safe = k > 1 ? !(c == 0xc2 && p[i + 1] < 0xa0) &&
		                    !ctl_bidi(p + i, k)
		          : k == 1 && ((c >= 0x20 && c != 0x7f) ||
		                       (c == '\t' && (flags & CTL_TEXT_TAB)));
		if (safe) {
			run += k;
			i += k;
			cols++;
			continue;
		}
		ctl_out_mem(o, p + i - run, run);
		run = 0;
		if (k == 0)
			k = 1;
		for (size_t j = 0; j < k; j++)
			ctl_out_hexbyte(o, p[i + j]);
		cols += 4 * k;
		i += k;
	}
	ctl_out_mem(o, p + n - run, run);
	return cols;
}

/* p[0..n) may be the start of a UTF-8 sequence that goes on past n. */
static bool ctl_utf8_prefix(const unsigned char *p, size_t n)
{
	size_t need = p[0] >= 0xc2 && p[0] <= 0xdf ? 2
	            : p[0] >= 0xe0 && p[0] <= 0xef ? 3
	            : p[0] >= 0xf0 && p[0] <= 0xf4 ? 4 : 0;
	if (need <= n)
		return false;
	for (size_t i = 1; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return false;
	return true;
}

size_t ctl_out_text_lines(struct ctl_out *o, const void *src, size_t n,
                          bool more)
{
	const unsigned char *p = src;
	size_t i = 0, run = 0;   /* run: safe bytes not yet copied */
	while (i < n) {
		unsigned char c = p[i];
		size_t k = ctl_utf8_len(p + i, n - i);
		/* Held back for the next call: a character cut by the end of
		 * this piece, and a CR whose LF may come next. */
		if (more && ((k == 0 && ctl_utf8_prefix(p + i, n - i)) ||
		             (c == '\r' && i + 1 == n)))
			break;
		/* As ctl_out_text, plus line ends: LF, and CR only before LF
		 * (a lone CR would let text overwrite the line shown). */
		bool safe = k > 1 ? !(c == 0xc2 && p[i + 1] < 0xa0) &&
		                    !ctl_bidi(p + i, k)
		          : k == 1 && ((c >= 0x20 && c != 0x7f) || c == '\t' ||
		                       c == '\n' ||
		                       (c == '\r' && i + 1 < n && p[i + 1] == '\n'));
		if (safe) {
			run += k;
			i += k;
			continue;
		}
		ctl_out_mem(o, p + i - run, run);
		run = 0;
		if (k == 0)
			k = 1;
		for (size_t j = 0; j < k; j++)
			ctl_out_hexbyte(o, p[i + j]);
		i += k;
	}
	ctl_out_mem(o, p + i - run, run);
	return i;
}

size_t ctl_out_text_max(struct ctl_out *o, const void *src, size_t n,
                        size_t max)
{
	const unsigned char *p = src;
	size_t i = 0, chars = 0;
	while (i < n && chars < max) {
		size_t k = ctl_utf8_len(p + i, n - i);
		i += k ? k : 1;
		chars++;
	}
	size_t cols = ctl_out_text(o, p, i, 0);
	if (i < n) {
		ctl_out_str(o, "...");
		cols += 3;
	}
	return cols;
}

void ctl_out_text_pad(struct ctl_out *o, const char *s, size_t width)
{
	size_t cols = ctl_out_text(o, s, strlen(s), 0);
	if (cols < width)
		ctl_out_spaces(o, width - cols);
}

void ctl_out_json_str(struct ctl_out *o, const void *src, size_t n)
{
	const unsigned char *p = src;
	size_t i = 0, run = 0;
	ctl_out_mem(o, "\"", 1);
	while (i < n) {
		unsigned char c = p[i];
		size_t k = ctl_utf8_len(p + i, n - i);
		if (k > 1 || (k == 1 && c >= 0x20 && c != '"' && c != '\\' &&
		              c != 0x7f)) {
			run += k;
			i += k;
			continue;
		}
		ctl_out_mem(o, p + i - run, run);
		run = 0;
		i++;
		switch (c) {
		case '"':  ctl_out_mem(o, "\\\"", 2); break;
		case '\\': ctl_out_mem(o, "\\\\", 2); break;
		case '\n': ctl_out_mem(o, "\\n", 2); break;
		case '\r': ctl_out_mem(o, "\\r", 2); break;
		case '\t': ctl_out_mem(o, "\\t", 2); break;
		case '\b': ctl_out_mem(o, "\\b", 2); break;
		case '\f': ctl_out_mem(o, "\\f", 2); break;
		default: {
			/* Controls, DEL, and bytes outside valid UTF-8, read
			 * as the Latin-1 code point of the same value. */
			char e[6] = {'\\', 'u', '0', '0', ctl_hex[c >> 4],
			             ctl_hex[c & 15]};
			ctl_out_mem(o, e, sizeof e);
		}
		}
	}
	ctl_out_mem(o, p + n - run, run);
	ctl_out_mem(o, "\"", 1);
}

void ctl_out_json_strz(struct ctl_out *o, const char *s)
{
	if (!s)
		ctl_out_mem(o, "null", 4);
	else
		ctl_out_json_str(o, s, strlen(s));
}

void ctl_fmt_age(char *dst, size_t n, int64_t secs)
{
	if (secs < 0)
		secs = 0;
	if (secs < 60)
		snprintf(dst, n, "%llds", (long long)secs);
	else if (secs < 3600)
		snprintf(dst, n, "%lldm", (long long)(secs / 60));
	else if (secs < 86400)
		snprintf(dst, n, "%lldh", (long long)(secs / 3600));
	else
		snprintf(dst, n, "%lldd", (long long)(secs / 86400));
}

void ctl_fmt_time(char *dst, size_t n, int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm) ||
	    strftime(dst, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(dst, n, "@%lld", (long long)t);
}

bool ctl_qid_norm(const char *arg, char out[QUEUE_ID_SIZE])
{
	size_t n = strlen(arg);
	if (n != QUEUE_ID_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)toupper((unsigned char)arg[i]);
	out[n] = '\0';
	return queue_id_valid(out);
}
