/*
 * dns/spf_parse.c - the pure parts of the SPF evaluator: the record
 * parser (RFC 7208 §4.5, §4.6, §5, §6, ABNF in §12) and the macro
 * expander (§7). No DNS, no libuv; fed bytes by dns/spf.c, the unit tests
 * and tests/fuzz/fuzz_spf.c. Every output is bounded by the caller's
 * buffer or SPF_TERMS_MAX / DNS_TXT_MAX.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "dns/spf.h"

const char *const spf_verdict_names[SPF__VERDICT_COUNT] = {
	"none", "neutral", "pass", "fail", "softfail", "temperror",
	"permerror",
};

const char *const spf_term_names[SPF__T_COUNT] = {
	"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists",
	"redirect", "exp", "unknown-modifier",
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

bool spf_is_record(const char *txt, size_t len)
{
	static const char v[] = "v=spf1";
	if (len < 6)
		return false;
	for (size_t i = 0; i < 6; i++)
		if (lower(txt[i]) != v[i])
			return false;
	return len == 6 || txt[6] == ' ';
}

/* §7.1 delimiter = "." / "-" / "+" / "," / "/" / "_" / "=" */
static bool is_delim(char c)
{
	return c && strchr(".-+,/_=", c) != NULL;
}

/* Letters allowed in a domain-spec (§7.2); c, r and t only in exp=. */
static bool macro_letter(char c, bool exp)
{
	c = lower(c);
	if (strchr("slodiphv", c) && c)
		return true;
	return exp && c && strchr("crt", c);
}

/* Checks one macro-string s[0..n) (§7.1): %{...} well formed, a bare
 * '%' only in %%, %_ and %-, every other byte a macro-literal (0x21..0x7e
 * but '%'). *ends_macro tells whether it ends with a macro-expand (the
 * domain-end alternative). Returns 0 or -EINVAL with err. */
static int check_macro_string(const char *s, size_t n, bool exp,
                              bool *ends_macro, const char *term, char *err,
                              size_t errlen)
{
	bool last_macro = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c != '%') {
			if (c < 0x21 || c > 0x7e) {
				seterr(err, errlen, "bad character 0x%02x in '%s'", c,
				       term);
				return -EINVAL;
			}
			last_macro = false;
			continue;
		}
		if (i + 1 >= n) {
			seterr(err, errlen, "lone '%%' at the end of '%s'", term);
			return -EINVAL;
		}
		char t = s[++i];
		if (t == '%' || t == '_' || t == '-') {
			last_macro = true;
			continue;
		}
		if (t != '{') {
			seterr(err, errlen, "bad macro '%%%c' in '%s'", t, term);
			return -EINVAL;
		}
		if (++i >= n || !macro_letter(s[i], exp)) {
			seterr(err, errlen, "bad macro letter in '%s'", term);
			return -EINVAL;
		}
		i++;
		/* transformers = *DIGIT [ "r" ]; a DIGIT value must be nonzero
		 * (§7.3). */
		size_t d0 = i;
		unsigned long v = 0;
		while (i < n && is_digit((unsigned char)s[i])) {
			if (v < 100000)
				v = v * 10 + (unsigned long)(s[i] - '0');
			i++;
		}
		if (i > d0 && v == 0) {
			seterr(err, errlen, "zero digit transformer in '%s'", term);
			return -EINVAL;
		}
		if (i < n && lower(s[i]) == 'r')
			i++;
		while (i < n && is_delim(s[i]))
			i++;
		if (i >= n || s[i] != '}') {
			seterr(err, errlen, "unterminated or bad macro in '%s'", term);
			return -EINVAL;
		}
		last_macro = true;
	}
	if (ends_macro)
		*ends_macro = last_macro;
	return 0;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )  (§12)
 * i.e. LDH, not starting or ending with '-', not all digits. */
static bool toplabel_ok(const char *s, size_t n)
{
	if (n == 0 || s[0] == '-' || s[n - 1] == '-')
		return false;
	bool alpha = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (is_alpha(c))
			alpha = true;
		else if (c == '-')
			alpha = true;   /* the second alternative */
		else if (!is_digit(c))
			return false;
	}
	return alpha;
}

/* domain-spec = macro-string domain-end;
 * domain-end = ( "." toplabel [ "." ] ) / macro-expand   (§7.1) */
static int check_domain_spec(const char *s, size_t n, const char *term,
                             char *err, size_t errlen)
{
	if (n == 0) {
		seterr(err, errlen, "empty domain in '%s'", term);
		return -EINVAL;
	}
	bool ends_macro;
	if (check_macro_string(s, n, false, &ends_macro, term, err, errlen) < 0)
		return -EINVAL;
	if (ends_macro)
		return 0;
	size_t end = n;
	if (s[end - 1] == '.')
		end--;
	size_t dot = end;
	while (dot > 0 && s[dot - 1] != '.')
		dot--;
	/* A '%' before the last label ("%{d}.com" style) is fine; the last
	 * label itself is literal here (the macro case returned above). */
	if (dot == 0 || !toplabel_ok(s + dot, end - dot) ||
	    memchr(s + dot, '%', end - dot)) {
		seterr(err, errlen, "bad domain '%.*s' in '%s'", (int)n, s, term);
		return -EINVAL;
	}
	return 0;
}

/* "/" ("0" / %x31-39 0*2DIGIT), at most max. Returns the value or -1. */
static int parse_cidr(const char *s, size_t n, int max)
{
	if (n == 0 || n > 3 || (s[0] == '0' && n > 1))
		return -1;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= max ? v : -1;
}

/* a / mx: [ ":" domain-spec ] [ dual-cidr-length ] where
 * dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ].
 * The CIDR part starts at the first '/' outside a %{...} macro. */
static int parse_dual(struct spf_term *t, char *arg, size_t n,
                      const char *text, char *err, size_t errlen)
{
	size_t slash = n;
	int depth = 0;
	for (size_t i = 0; i < n; i++) {
		if (arg[i] == '%' && i + 1 < n && arg[i + 1] == '{')
			depth = 1;
		else if (arg[i] == '}')
			depth = 0;
		else if (arg[i] == '/' && !depth) {
			slash = i;
			break;
		}
	}
	if (slash < n) {
		const char *c = arg + slash + 1;
		size_t cn = n - slash - 1;
		const char *c6 = NULL;
		size_t c6n = 0, c4n = cn;
		const char *s2 = memchr(c, '/', cn);
		if (s2) {
			/* "/24//64": after an ip4 length the ip6 one is
			 * introduced by "//"; "//64" alone by the second '/'. */
			c4n = (size_t)(s2 - c);
			c6 = s2 + 1;
			c6n = cn - c4n - 1;
			if (c4n > 0) {
				if (c6n == 0 || c6[0] != '/')
					goto bad;
				c6++;
				c6n--;
			}
		}
		if (c4n > 0) {
			int v = parse_cidr(c, c4n, 32);
			if (v < 0)
				goto bad;
			t->cidr4 = (uint8_t)v;
		} else if (!s2) {
			goto bad;       /* "a/" */
		}
		if (s2) {
			/* "//N" for the IPv6 length: the second '/' must follow
			 * the first at once or after an ip4 length. */
			int v = parse_cidr(c6, c6n, 128);
			if (v < 0)
				goto bad;
			t->cidr6 = (uint8_t)v;
		}
	}
	if (arg[0] == ':') {
		if (check_domain_spec(arg + 1, slash - 1, text, err, errlen) < 0)
			return -EINVAL;
		arg[slash] = '\0';
		t->spec = arg + 1;
	} else if (slash != 0) {
		goto bad;
	}
	return 0;
bad:
	seterr(err, errlen, "bad CIDR length in '%s'", text);
	return -EINVAL;
}

static int parse_ip(struct spf_term *t, char *arg, size_t n, int family,
                    const char *text, char *err, size_t errlen)
{
	if (n < 2 || arg[0] != ':')
		goto bad;
	arg++;
	n--;
	char *slash = memchr(arg, '/', n);
	int max = family == AF_INET ? 32 : 128;
	int len = max;
	if (slash) {
		len = parse_cidr(slash + 1, n - (size_t)(slash - arg) - 1, max);
		if (len < 0) {
			seterr(err, errlen, "bad CIDR length in '%s'", text);
			return -EINVAL;
		}
		*slash = '\0';
	}
	if (inet_pton(family, arg, t->net.a) != 1)
		goto bad;
	t->net.family = family;
	if (family == AF_INET)
		t->cidr4 = (uint8_t)len;
	else
		t->cidr6 = (uint8_t)len;
	return 0;
bad:
	seterr(err, errlen, "bad address in '%s'", text);
	return -EINVAL;
}

/* name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )  (§6) */
static bool modname_ok(const char *s, size_t n)
{
	if (n == 0 || !is_alpha((unsigned char)s[0]))
		return false;
	for (size_t i = 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_' && c != '.')
			return false;
	}
	return true;
}

/* Does the term start with mechanism name m (any case), followed by the
 * end, ':' or '/'? */
static bool mech_is(const char *s, size_t n, const char *m)
{
	size_t k = strlen(m);
	if (n < k || strncasecmp(s, m, k) != 0)
		return false;
	return n == k || s[k] == ':' || s[k] == '/';
}

/* Parses one term, NUL-terminated in the arena (`text`: its copy as
 * written, for messages; `w`: a writable copy we cut up). */
static int parse_term(struct spf_record *r, struct spf_term *t,
                      const char *text, char *w, size_t n, char *err,
                      size_t errlen)
{
	t->text = text;
	t->qual = '+';
	t->cidr4 = 32;
	t->cidr6 = 128;
	/* A modifier is name "=" ...; a mechanism name is never followed by
	 * '=' before a ':' or '/' (§4.6.1). */
	size_t nl = 0;
	while (nl < n && w[nl] != '=' && w[nl] != ':' && w[nl] != '/')
		nl++;
	if (nl < n && w[nl] == '=') {
		if (!modname_ok(w, nl)) {
			seterr(err, errlen, "bad modifier name in '%s'", text);
			return -EINVAL;
		}
		char *val = w + nl + 1;
		size_t vn = n - nl - 1;
		if (nl == 8 && strncasecmp(w, "redirect", 8) == 0) {
			if (r->redirect) {
				seterr(err, errlen, "second redirect= at '%s'", text);
				return -EINVAL;
			}
			if (check_domain_spec(val, vn, text, err, errlen) < 0)
				return -EINVAL;
			t->kind = SPF_T_REDIRECT;
			r->redirect = t;
		} else if (nl == 3 && strncasecmp(w, "exp", 3) == 0) {
			if (r->exp) {
				seterr(err, errlen, "second exp= at '%s'", text);
				return -EINVAL;
			}
			if (check_domain_spec(val, vn, text, err, errlen) < 0)
				return -EINVAL;
			t->kind = SPF_T_EXP;
			r->exp = t;
		} else {
			/* §6: unknown modifiers are ignored, but their value
			 * must still be a macro-string. */
			if (check_macro_string(val, vn, true, NULL, text, err,
			                       errlen) < 0)
				return -EINVAL;
			t->kind = SPF_T_UNKNOWN_MOD;
		}
		t->spec = val;
		return 0;
	}
	if (n > 0 && strchr("+-~?", w[0])) {
		t->qual = w[0];
		w++;
		n--;
	}
	if (mech_is(w, n, "all")) {
		if (n != 3)
			goto bad_args;
		t->kind = SPF_T_ALL;
		r->has_all = true;
		return 0;
	}
	if (mech_is(w, n, "include") || mech_is(w, n, "exists")) {
		size_t k = (w[0] == 'i' || w[0] == 'I') ? 7 : 6;
		t->kind = k == 7 ? SPF_T_INCLUDE : SPF_T_EXISTS;
		if (n < k + 2 || w[k] != ':')
			goto bad_args;
		if (check_domain_spec(w + k + 1, n - k - 1, text, err, errlen) < 0)
			return -EINVAL;
		t->spec = w + k + 1;
		return 0;
	}
	if (mech_is(w, n, "a") || mech_is(w, n, "mx")) {
		size_t k = (n >= 2 && (w[1] == 'x' || w[1] == 'X') &&
		            (n == 2 || w[2] == ':' || w[2] == '/')) ? 2 : 1;
		t->kind = k == 2 ? SPF_T_MX : SPF_T_A;
		return parse_dual(t, w + k, n - k, text, err, errlen);
	}
	if (mech_is(w, n, "ptr")) {
		t->kind = SPF_T_PTR;
		if (n == 3)
			return 0;
		if (w[3] != ':')
			goto bad_args;
		if (check_domain_spec(w + 4, n - 4, text, err, errlen) < 0)
			return -EINVAL;
		t->spec = w + 4;
		return 0;
	}
	if (mech_is(w, n, "ip4")) {
		t->kind = SPF_T_IP4;
		return parse_ip(t, w + 3, n - 3, AF_INET, text, err, errlen);
	}
	if (mech_is(w, n, "ip6")) {
		t->kind = SPF_T_IP6;
		return parse_ip(t, w + 3, n - 3, AF_INET6, text, err, errlen);
	}
	seterr(err, errlen, "unknown mechanism '%s'", text);
	return -EINVAL;
bad_args:
	seterr(err, errlen, "bad arguments in '%s'", text);
	return -EINVAL;
}

int spf_parse(const char *txt, size_t len, struct spf_record **out,
              char *err, size_t errlen)
{
	*out = NULL;
	if (len > DNS_TXT_MAX) {
		seterr(err, errlen, "record longer than %d bytes", DNS_TXT_MAX);
		return -E2BIG;
	}
	if (!spf_is_record(txt, len)) {
		seterr(err, errlen, "not an SPF record (no \"v=spf1\")");
		return -EINVAL;
	}
	struct spf_record *r = calloc(1, sizeof *r);
	if (!r) {
		seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* arena: [0, len] the terms as written (NUL-separated), then
	 * [len + 1, 2 len + 1] the writable copies. */
	char *a = r->arena, *w = r->arena + len + 1;
	memcpy(a, txt, len);
	a[len] = '\0';
	memcpy(w, txt, len);
	w[len] = '\0';
	size_t i = 6;
	int rc;
	while (i < len) {
		if (txt[i] == ' ') {
			i++;
			continue;
		}
		size_t s = i;
		while (i < len && txt[i] != ' ')
			i++;
		a[i] = '\0';
		w[i] = '\0';
		if (memchr(txt + s, '\0', i - s)) {
			seterr(err, errlen, "NUL byte in a term");
			rc = -EINVAL;
			goto fail;
		}
		if (r->nterms == SPF_TERMS_MAX) {
			seterr(err, errlen, "more than %d terms", SPF_TERMS_MAX);
			rc = -E2BIG;
			goto fail;
		}
		struct spf_term *t = &r->terms[r->nterms++];
		rc = parse_term(r, t, a + s, w + s, i - s, err, errlen);
		if (rc < 0)
			goto fail;
	}
	*out = r;
	return 0;
fail:
	free(r);
	return rc;
}

void spf_record_free(struct spf_record *r)
{
	free(r);
}

/* ---- macro expansion (§7) -------------------------------------------- */

struct out {
	char *p;
	size_t len, cap;   /* cap excludes the NUL */
	bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->full || n > o->cap - o->len) {
		o->full = true;
		return;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

/* §7.3: an upper-case macro letter URL-escapes the value: every byte but
 * the RFC 3986 unreserved ones as %XX. */
static void put_escaped(struct out *o, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (is_alpha(c) || is_digit(c) || strchr("-._~", c)) {
			put(o, (const char *)&s[i], 1);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};
			put(o, e, 3);
		}
	}
}

/* The value of a macro letter into buf (spf_check bounds every input
 * well below its 1024 bytes). */
static int letter_value(char l, const struct spf_macro_ctx *c, char *buf,
                        size_t buflen)
{
	const char *s = c->sender ? c->sender : "";
	const char *at = strrchr(s, '@');
	switch (l) {
	case 's':
		snprintf(buf, buflen, "%s", s);
		break;
	case 'l':
		if (at && at != s)
			snprintf(buf, buflen, "%.*s", (int)(at - s), s);
		else
			snprintf(buf, buflen, "postmaster");
		break;
	case 'o':
		snprintf(buf, buflen, "%s", at ? at + 1 : s);
		break;
	case 'd':
		snprintf(buf, buflen, "%s", c->domain ? c->domain : "");
		break;
	case 'h':
		snprintf(buf, buflen, "%s", c->helo ? c->helo : "unknown");
		break;
	case 'p':
		snprintf(buf, buflen, "%s", c->ptr_name ? c->ptr_name : "unknown");
		break;
	case 'r':
		snprintf(buf, buflen, "%s", c->receiver ? c->receiver : "unknown");
		break;
	case 't':
		snprintf(buf, buflen, "%llu", (unsigned long long)c->now);
		break;
	case 'v':
		snprintf(buf, buflen, "%s",
		         c->ip.family == AF_INET6 ? "ip6" : "in-addr");
		break;
	case 'c':
		if (!inet_ntop(c->ip.family == AF_INET6 ? AF_INET6 : AF_INET,
		               c->ip.a, buf, (socklen_t)buflen))
			return -EINVAL;
		break;
	case 'i':
		if (c->ip.family == AF_INET6) {
			/* §7.3: dot-separated nibbles, most significant first. */
			static const char hex[] = "0123456789abcdef";
			size_t o = 0;
			for (int k = 0; k < 16 && o + 4 < buflen; k++) {
				buf[o++] = hex[c->ip.a[k] >> 4];
				buf[o++] = '.';
				buf[o++] = hex[c->ip.a[k] & 15];
				buf[o++] = '.';
			}
			buf[o ? o - 1 : 0] = '\0';
		} else {
			snprintf(buf, buflen, "%u.%u.%u.%u", c->ip.a[0], c->ip.a[1],
			         c->ip.a[2], c->ip.a[3]);
		}
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

/* %{letter digits r delims}: split the value on the delimiters (default
 * '.'), reverse if r, keep the rightmost `digits` parts, join with '.'
 * (§7.3). */
static void expand_one(struct out *o, const char *val, unsigned long keep,
                       bool rev, const char *delims, bool escape)
{
	enum { PARTS_MAX = 1025 };
	size_t start[PARTS_MAX], plen[PARTS_MAX], np = 0, s = 0;
	size_t n = strlen(val);
	for (size_t i = 0; i <= n && np < PARTS_MAX; i++) {
		if (i == n || strchr(delims, val[i])) {
			start[np] = s;
			plen[np++] = i - s;
			s = i + 1;
		}
	}
	size_t first = 0;
	if (keep > 0 && keep < np)
		first = np - keep;
	bool sep = false;
	/* Build the (possibly reversed) order, then take the rightmost. */
	size_t order[PARTS_MAX];
	for (size_t k = 0; k < np; k++)
		order[k] = rev ? np - 1 - k : k;
	for (size_t k = first; k < np; k++) {
		if (sep)
			put(o, ".", 1);
		sep = true;
		if (escape)
			put_escaped(o, val + start[order[k]], plen[order[k]]);
		else
			put(o, val + start[order[k]], plen[order[k]]);
	}
}

int spf_expand(const char *spec, const struct spf_macro_ctx *ctx, char *out,
               size_t outlen, char *err, size_t errlen)
{
	if (outlen == 0)
		return -ENOBUFS;
	struct out o = {out, 0, outlen - 1, false};
	size_t n = strlen(spec);
	for (size_t i = 0; i < n; i++) {
		char ch = spec[i];
		if (ch != '%') {
			put(&o, &spec[i], 1);
			continue;
		}
		if (i + 1 >= n)
			goto bad;
		char t = spec[++i];
		if (t == '%') {
			put(&o, "%", 1);
			continue;
		}
		if (t == '_') {
			put(&o, " ", 1);
			continue;
		}
		if (t == '-') {
			put(&o, "%20", 3);
			continue;
		}
		if (t != '{' || ++i >= n || !macro_letter(spec[i], ctx->exp))
			goto bad;
		char l = spec[i++];
		bool escape = l >= 'A' && l <= 'Z';
		unsigned long keep = 0;
		size_t d0 = i;
		while (i < n && is_digit((unsigned char)spec[i])) {
			if (keep < 100000)
				keep = keep * 10 + (unsigned long)(spec[i] - '0');
			i++;
		}
		if (i > d0 && keep == 0)
			goto bad;
		bool rev = false;
		if (i < n && lower(spec[i]) == 'r') {
			rev = true;
			i++;
		}
		char delims[8];
		size_t nd = 0;
		while (i < n && is_delim(spec[i])) {
			if (nd < sizeof delims - 1 && !memchr(delims, spec[i], nd))
				delims[nd++] = spec[i];
			i++;
		}
		if (nd == 0)
			delims[nd++] = '.';
		delims[nd] = '\0';
		if (i >= n || spec[i] != '}')
			goto bad;
		char val[1024];
		if (letter_value(lower(l), ctx, val, sizeof val) < 0)
			goto bad;
		expand_one(&o, val, keep, rev, delims, escape);
	}
	if (o.full) {
		seterr(err, errlen, "expansion of '%s' longer than %zu", spec,
		       outlen - 1);
		return -ENOBUFS;
	}
	out[o.len] = '\0';
	return (int)o.len;
bad:
	seterr(err, errlen, "bad macro in '%s'", spec);
	return -EINVAL;
}

int spf_expand_name(const char *spec, const struct spf_macro_ctx *ctx,
                    char *out, size_t outlen, char *err, size_t errlen)
{
	/* Expanded in full first: the §4.8 truncation keeps the rightmost
	 * labels, so it needs the whole name. The bound only stops an
	 * abusive record (every part is at most a few hundred bytes). */
	char raw[2048];
	if (outlen < SPF_EXPAND_MAX + 1)
		return -ENOBUFS;
	int n = spf_expand(spec, ctx, raw, sizeof raw, err, errlen);
	if (n < 0)
		return n;
	size_t len = (size_t)n;
	if (len > 0 && raw[len - 1] == '.')
		raw[--len] = '\0';
	const char *p = raw;
	while (len > SPF_EXPAND_MAX) {
		const char *dot = memchr(p, '.', len);
		if (!dot) {
			seterr(err, errlen, "expanded name of '%s' has a label "
			       "longer than %d", spec, SPF_EXPAND_MAX);
			return -EINVAL;
		}
		len -= (size_t)(dot + 1 - p);
		p = dot + 1;
	}
	memcpy(out, p, len);
	out[len] = '\0';
	return (int)len;
}
