/*
 * dkim/dkim_canon.c - relaxed/relaxed canonicalization, header selection
 * and the DKIM-Signature field (laid out as libopendkim lays out its
 * own) for relayd's own rsa-sha256 and ed25519-sha256 signing
 * (dkim/dkim_canon.h). Pure: no I/O, no OpenSSL. The byte-level rules
 * follow RFC 6376 §3.4.2/§3.4.4 as dkimpy (the tests' independent
 * verifier) applies them: only SP and HTAB are blanks inside a line, a
 * bare CR or LF is an ordinary character.
 */
#include "dkim/dkim_canon.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/b64.h"

static bool blank(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* Python's bytes.strip() set (dkimpy strips header values with it). */
static bool pyspace(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
	       c == '\f';
}

size_t dkim_canon_header(const uint8_t *f, size_t n, uint8_t *out)
{
	const uint8_t *colon = memchr(f, ':', n);
	size_t nl = colon ? (size_t)(colon - f) : n, o = 0;
	for (size_t i = 0; i < nl; i++)
		out[o++] = (uint8_t)tolower(f[i]);
	while (o && pyspace(out[o - 1]))
		o--;
	out[o++] = ':';
	size_t v = o;
	/* Unfold (every CRLF removed, one pass), blanks as one SP. */
	for (size_t i = nl + 1; colon && i < n; i++) {
		uint8_t c = f[i];
		if (c == '\r' && i + 1 < n && f[i + 1] == '\n') {
			i++;
			continue;
		}
		if (blank(c)) {
			if (o > v && out[o - 1] == ' ')
				continue;
			c = ' ';
		}
		out[o++] = c;
	}
	/* Strip the value at both ends. */
	size_t s = v;
	while (s < o && pyspace(out[s]))
		s++;
	while (o > s && pyspace(out[o - 1]))
		o--;
	if (s > v) {
		memmove(out + v, out + s, o - s);
		o -= s - v;
	}
	out[o++] = '\r';
	out[o++] = '\n';
	return o;
}

/* ---- the body ----------------------------------------------------------- */

void dkim_body_canon_init(struct dkim_body_canon *c)
{
	memset(c, 0, sizeof *c);
}

static void put(struct dkim_body_canon *c, const uint8_t *p, size_t n,
                dkim_emit_fn emit, void *arg)
{
	while (n) {
		if (c->olen == sizeof c->out) {
			emit(arg, c->out, c->olen);
			c->olen = 0;
		}
		size_t k = sizeof c->out - c->olen;
		if (k > n)
			k = n;
		memcpy(c->out + c->olen, p, k);
		c->olen += k;
		p += k;
		n -= k;
	}
}

/* A character of a line that has one: the held-back empty lines and
 * blanks come first. */
static void put_char(struct dkim_body_canon *c, uint8_t ch,
                     dkim_emit_fn emit, void *arg)
{
	for (; c->crlfs; c->crlfs--)
		put(c, (const uint8_t *)"\r\n", 2, emit, arg);
	if (c->wsp) {
		put(c, (const uint8_t *)" ", 1, emit, arg);
		c->wsp = false;
	}
	put(c, &ch, 1, emit, arg);
	c->line = true;
}

void dkim_body_canon_feed(struct dkim_body_canon *c, const uint8_t *p,
                          size_t n, dkim_emit_fn emit, void *arg)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t ch = p[i];
		if (c->cr) {
			c->cr = false;
			if (ch == '\n') {
				c->wsp = false;   /* blanks at the end of a line */
				if (c->line)
					put(c, (const uint8_t *)"\r\n", 2, emit, arg);
				else
					c->crlfs++;
				c->line = false;
				continue;
			}
			put_char(c, '\r', emit, arg);   /* a bare CR */
		}
		if (ch == '\r')
			c->cr = true;
		else if (blank(ch))
			c->wsp = true;
		else
			put_char(c, ch, emit, arg);
	}
}

void dkim_body_canon_end(struct dkim_body_canon *c, dkim_emit_fn emit,
                         void *arg)
{
	if (c->cr) {
		c->cr = false;
		put_char(c, '\r', emit, arg);
	}
	if (c->wsp) {
		/* Blanks after the last CRLF: dkimpy keeps one SP and ends the
		 * line (what the stored message, which ends in CRLF, never
		 * has). */
		for (; c->crlfs; c->crlfs--)
			put(c, (const uint8_t *)"\r\n", 2, emit, arg);
		put(c, (const uint8_t *)" ", 1, emit, arg);
		c->wsp = false;
		c->line = true;
	}
	if (c->line)
		put(c, (const uint8_t *)"\r\n", 2, emit, arg);
	c->line = false;
	c->crlfs = 0;
	if (c->olen)
		emit(arg, c->out, c->olen);
	c->olen = 0;
}

/* ---- the header fields -------------------------------------------------- */

size_t dkim_field_len(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		const uint8_t *lf = memchr(p + i, '\n', n - i);
		if (!lf)
			return n;
		i = (size_t)(lf - p) + 1;
		if (i >= n || !blank(p[i]))
			return i;
	}
	return n;
}

/* The name of field f (fl bytes): up to ':' without trailing blanks. 0
 * when there is no ':'. */
static size_t name_len(const uint8_t *f, size_t fl)
{
	const uint8_t *colon = memchr(f, ':', fl);
	if (!colon)
		return 0;
	size_t l = (size_t)(colon - f);
	while (l && pyspace(f[l - 1]))
		l--;
	return l;
}

static bool listed(const char *const *names, const uint8_t *nm, size_t l)
{
	for (size_t i = 0; names && names[i]; i++)
		if (strlen(names[i]) == l &&
		    strncasecmp(names[i], (const char *)nm, l) == 0)
			return true;
	return false;
}

/* The index (into offs) of the last field before `before` named nm. */
static size_t last_named(const uint8_t *h, const size_t *offs,
                         const size_t *lens, size_t before, const uint8_t *nm,
                         size_t l)
{
	while (before > 0) {
		before--;
		const uint8_t *f = h + offs[before];
		if (name_len(f, lens[before]) == l &&
		    strncasecmp((const char *)f, (const char *)nm, l) == 0)
			return before;
	}
	return SIZE_MAX;
}

#define SEL_MAX 1000   /* signed fields at most (more: -E2BIG) */

int dkim_select_headers(const uint8_t *h, size_t hlen,
                        const char *const *names, const char *const *over,
                        struct buf *hlist, struct buf *canon)
{
	/* All fields, then the h= entries (field indexes; SIZE_MAX for an
	 * oversigned name, resolved by name). */
	static const size_t cap = SEL_MAX;
	size_t nf = 0, ns = 0, *offs = NULL, *lens = NULL, *sel = NULL;
	size_t nfields = 0;
	for (size_t i = 0; i < hlen; i += dkim_field_len(h + i, hlen - i))
		nfields++;
	int r = -ENOMEM;
	offs = calloc(nfields + 1, sizeof *offs);
	lens = calloc(nfields + 1, sizeof *lens);
	sel = calloc(cap, sizeof *sel);
	uint8_t *tmp = NULL;
	if (!offs || !lens || !sel)
		goto out;
	for (size_t i = 0; i < hlen;) {
		size_t fl = dkim_field_len(h + i, hlen - i);
		offs[nf] = i;
		lens[nf++] = fl;
		i += fl;
	}
	r = 0;
	for (size_t k = 0; k < nf && r == 0; k++) {
		size_t l = name_len(h + offs[k], lens[k]);
		if (!l || !listed(names, h + offs[k], l))
			continue;
		if (ns == cap) {
			r = -E2BIG;
			break;
		}
		sel[ns++] = k;
		if ((hlist->len && buf_append(hlist, ":", 1) < 0) ||
		    buf_append(hlist, h + offs[k], l) < 0)
			r = -ENOBUFS;
	}
	for (size_t i = 0; over && over[i] && r == 0; i++) {
		if ((hlist->len && buf_append(hlist, ":", 1) < 0) ||
		    buf_appends(hlist, over[i]) < 0)
			r = -ENOBUFS;
	}
	if (r == 0 && buf_append(hlist, "", 1) < 0)
		r = -ENOBUFS;
	if (r < 0)
		goto out;
	hlist->len--;   /* the NUL stays after the text */
	/* The verifier's order: each h= name takes the last instance not
	 * yet taken, going up. The names of sel[] and over[] in order. */
	size_t nover = 0;
	while (over && over[nover])
		nover++;
	size_t *used = calloc(nf + 1, sizeof *used);   /* per field: taken */
	if (!used) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t e = 0; e < ns + nover && r == 0; e++) {
		const uint8_t *nm;
		size_t l;
		if (e < ns) {
			nm = h + offs[sel[e]];
			l = name_len(nm, lens[sel[e]]);
		} else {
			nm = (const uint8_t *)over[e - ns];
			l = strlen(over[e - ns]);
		}
		/* The last unused instance of nm. */
		size_t k = nf;
		for (;;) {
			k = last_named(h, offs, lens, k, nm, l);
			if (k == SIZE_MAX || !used[k])
				break;
		}
		if (k == SIZE_MAX)
			continue;   /* none left: nothing (oversigning) */
		used[k] = 1;
		uint8_t *t = realloc(tmp, lens[k] + 3);
		if (!t) {
			r = -ENOMEM;
			break;
		}
		tmp = t;
		size_t cl = dkim_canon_header(h + offs[k], lens[k], tmp);
		if (buf_append(canon, tmp, cl) < 0)
			r = -ENOBUFS;
	}
	free(used);
out:
	free(tmp);
	free(offs);
	free(lens);
	free(sel);
	return r;
}

/* ---- the DKIM-Signature field ------------------------------------------- */

/* The field is laid out exactly as libopendkim 2.11 lays out its own
 * (dkim_getsighdr_d with the default margin), so that relayd's fields
 * are byte-identical to the oracle's (tests/unit/test_dkim_canon.c):
 * the tags in its order, each "tag=value;" after a SP when it fits in
 * SIG_MARGIN columns (the SP not counted), else on a new line
 * (CRLF TAB, 8 columns); h= that does not fit goes on a new line and is
 * broken after a colon (CRLF TAB SP) when the next name does not fit;
 * bh= and b= are broken at the margin (CRLF TAB SP); b= always starts
 * a line (an RSA or Ed25519 b= never fits after another tag). */
#define SIG_MARGIN 75   /* libopendkim's DKIM_HDRMARGIN */
#define SIG_START 16    /* "DKIM-Signature: " */

struct fold {
	struct buf *o;
	size_t col;    /* the current line's width (a TAB counts 8) */
	bool first;    /* no tag yet */
	int r;         /* sticky: -ENOBUFS */
};

static void fold_put(struct fold *f, const char *p, size_t n)
{
	if (f->r == 0 && buf_append(f->o, p, n) < 0)
		f->r = -ENOBUFS;
}

/* The value v (n bytes) of a tag whose "tag=" is written, from column
 * f->col on, broken at the margin: its first character always goes on
 * the current line. */
static void fold_margin(struct fold *f, const char *v, size_t n)
{
	if (n == 0)
		return;
	fold_put(f, v, 1);
	f->col++;
	for (size_t i = 1; i < n;) {
		if (f->col == SIG_MARGIN) {
			fold_put(f, "\r\n\t ", 4);
			f->col = 9;
		}
		size_t k = f->col < SIG_MARGIN ? SIG_MARGIN - f->col : n - i;
		if (k > n - i)
			k = n - i;
		fold_put(f, v + i, k);
		f->col += k;
		i += k;
	}
}

/* One "tag=value;" token. */
static void fold_tag(struct fold *f, const char *pv)
{
	size_t pl = strlen(pv);
	if (f->first) {
		fold_put(f, pv, pl);
		f->col += pl;
		f->first = false;
		return;
	}
	if (f->col + pl <= SIG_MARGIN) {
		fold_put(f, " ", 1);
		fold_put(f, pv, pl);
		f->col += 1 + pl;
		return;
	}
	fold_put(f, "\r\n\t", 3);
	f->col = 8;
	if (strncmp(pv, "h=", 2) == 0) {
		/* The names, a new line after a colon when the next one (with
		 * its colon) does not fit. */
		bool firstname = true;
		for (const char *p = pv; *p;) {
			const char *c = strchr(p, ':');
			size_t l = c ? (size_t)(c - p) : strlen(p);
			if (l == 0) {
				p += c ? 1 : 0;
				continue;
			}
			if (!firstname) {
				fold_put(f, ":", 1);
				f->col++;
				if (f->col + l > SIG_MARGIN) {
					fold_put(f, "\r\n\t ", 4);
					f->col = 9;
				}
			}
			fold_put(f, p, l);
			f->col += l;
			firstname = false;
			p += l + (c ? 1 : 0);
		}
	} else if (strncmp(pv, "bh=", 3) == 0) {
		fold_put(f, "bh=", 3);
		f->col += 3;
		fold_margin(f, pv + 3, pl - 3);
	} else {
		fold_put(f, pv, pl);
		f->col += pl;
	}
}

static void fold_tagf(struct fold *f, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fold_tagf(struct fold *f, const char *fmt, ...)
{
	char *w = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&w, fmt, ap);
	va_end(ap);
	if (n < 0) {
		if (f->r == 0)
			f->r = -ENOMEM;
		return;
	}
	fold_tag(f, w);
	free(w);
}

int dkim_sig_field(const char *alg, const char *d, const char *s,
                   long long t, const char *bh, const char *hlist,
                   struct buf *out)
{
	struct fold f = {out, SIG_START, true, 0};
	fold_put(&f, "DKIM-Signature: ", SIG_START);
	fold_tag(&f, "v=1;");
	fold_tagf(&f, "a=%s;", alg);
	fold_tag(&f, "c=relaxed/relaxed;");
	fold_tagf(&f, "d=%s;", d);
	fold_tagf(&f, "s=%s;", s);
	if (t >= 0)
		fold_tagf(&f, "t=%lld;", t);
	fold_tagf(&f, "bh=%s;", bh);
	fold_tagf(&f, "h=%s;", hlist);
	fold_put(&f, "\r\n\tb=", 5);
	return f.r;
}

int dkim_sig_append_b(struct buf *field, const uint8_t *sig, size_t n)
{
	char *b64 = malloc(B64_ENCODED_LEN(n, 1) + 1);
	if (!b64)
		return -ENOMEM;
	size_t l = b64_encode(sig, n, B64_PAD, b64);
	struct fold f = {field, 10, false, 0};   /* after "\tb=" */
	fold_margin(&f, b64, l);
	fold_put(&f, "\r\n", 2);
	free(b64);
	return f.r;
}

int dkim_sig_canon(const uint8_t *f, size_t n, struct buf *canon)
{
	if (buf_reserve(canon, n + 3) < 0)
		return -ENOBUFS;
	size_t cl = dkim_canon_header(f, n, canon->data + canon->len);
	canon->len += cl - 2;   /* no CRLF after it */
	return 0;
}
