/*
 * common/addr.c - RFC 5321 §4.1.2 path parsing for MAIL FROM / RCPT TO,
 * with RFC 6531 UTF-8 when SMTPUTF8 was given, ESMTP parameter splitting
 * and RFC 3461 xtext checks. Pure: no allocation, no I/O, never reads past
 * the length it is given (fuzzed as tests/fuzz/fuzz_addr.c).
 *
 * Choices the RFCs leave open:
 *  - Control characters (including NUL, TAB, CR, LF) inside a path are
 *    -EILSEQ, like 8-bit bytes without ADDR_ALLOW_UTF8: both are "bytes
 *    that cannot be in an address", not a misplaced '<'.
 *  - After the path only the end of input or a space may follow; anything
 *    else ("<a@b>x") is -EINVAL. The caller strips CRLF.
 *  - The 256-octet path limit counts the brackets and any source route
 *    (RFC 5321 §4.5.3.1.3), so an address is at most 254 octets. A bare
 *    path (ADDR_ALLOW_BARE) is measured as if it had brackets.
 *  - "<postmaster>" (any case, no domain, no route) is accepted whatever
 *    the flags; it is meant for RCPT (§4.1.1.3), and addr_domain() returns
 *    NULL for it, which a MAIL FROM handler can use to refuse it.
 *  - Address literals: [IPv4] and [IPv6:...] checked with inet_pton; other
 *    tagged literals (General-address-literal) are -EINVAL, nothing can
 *    deliver to them.
 *  - ASCII domain labels are limited to 63 octets (RFC 1035 §2.3.4); labels
 *    with UTF-8 are not, their limit applies to the A-label form.
 */
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#define LABEL_MAX 63
#define LITERAL_MAX 63  /* "IPv6:" + the longest IPv6 text form fits */

/* Character classes (ASCII only; bytes >= 0x80 are never in a class). */
static bool is_alnum(unsigned char b)   /* Let-dig */
{
	return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ||
	       (b >= '0' && b <= '9');
}

static bool is_atext(unsigned char b)   /* RFC 5322 §3.2.3 */
{
	return is_alnum(b) || (b != 0 && strchr("!#$%&'*+-/=?^_`{|}~", b));
}

static bool is_qtext(unsigned char b)   /* qtextSMTP: %d32-33/35-91/93-126 */
{
	return b >= 32 && b <= 126 && b != '"' && b != '\\';
}

static bool is_dcontent(unsigned char b)  /* %d33-90 / %d94-126 */
{
	return b >= 33 && b <= 126 && b != '[' && b != '\\' && b != ']';
}

static bool is_uhex(unsigned char b)    /* RFC 3461 hexchar: uppercase */
{
	return (b >= '0' && b <= '9') || (b >= 'A' && b <= 'F');
}

/* Length of the well-formed UTF-8 sequence (RFC 3629 §4) at s, for a
 * non-ASCII lead byte; 0 when invalid (overlong, surrogate, > U+10FFFF,
 * truncated). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char b = s[0];
	size_t len;
	unsigned char lo = 0x80, hi = 0xBF;  /* range of the second byte */
	if (b >= 0xC2 && b <= 0xDF)
		len = 2;
	else if (b >= 0xE0 && b <= 0xEF) {
		len = 3;
		if (b == 0xE0)
			lo = 0xA0;          /* overlong */
		else if (b == 0xED)
			hi = 0x9F;          /* surrogates */
	} else if (b >= 0xF0 && b <= 0xF4) {
		len = 4;
		if (b == 0xF0)
			lo = 0x90;          /* overlong */
		else if (b == 0xF4)
			hi = 0x8F;          /* > U+10FFFF */
	} else
		return 0;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

/* ---- the path parser --------------------------------------------------- */

struct cur {
	const unsigned char *s;
	size_t n, p;
	bool utf8;
};

/* The error for an unexpected byte at the cursor (or the end). */
static int fail_at(const struct cur *c)
{
	if (c->p >= c->n)
		return -EINVAL;
	unsigned char b = c->s[c->p];
	if (b < 0x20 || b == 0x7f)
		return -EILSEQ;
	if (b >= 0x80 && !c->utf8)
		return -EILSEQ;
	return -EINVAL;
}

/* At a byte >= 0x80: consumes one UTF-8 character when allowed. */
static int take_utf8(struct cur *c)
{
	if (!c->utf8)
		return -EILSEQ;
	size_t k = utf8_seq(c->s + c->p, c->n - c->p);
	if (k == 0)
		return -EILSEQ;
	c->p += k;
	return 0;
}

/* Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str],
 * and with UTF-8 (RFC 6531 §3.3) U-labels: UTF-8 counts as a letter. */
static int parse_domain(struct cur *c)
{
	size_t start = c->p;
	for (;;) {
		size_t ls = c->p;
		bool ascii = true, hyphen = false;
		while (c->p < c->n) {
			unsigned char b = c->s[c->p];
			int rc;
			if (is_alnum(b)) {
				c->p++;
				hyphen = false;
			} else if (b == '-' && c->p > ls) {
				c->p++;
				hyphen = true;
			} else if (b >= 0x80) {
				if ((rc = take_utf8(c)) < 0)
					return rc;
				ascii = hyphen = false;
			} else
				break;
		}
		if (c->p == ls)
			return fail_at(c);
		if (hyphen)             /* Ldh-str ends in Let-dig */
			return -EINVAL;
		if (ascii && c->p - ls > LABEL_MAX)
			return -ENAMETOOLONG;
		if (c->p - start > SMTP_DOMAIN_MAX)
			return -ENAMETOOLONG;
		if (c->p < c->n && c->s[c->p] == '.') {
			c->p++;
			continue;
		}
		return 0;
	}
}

/* The text between the brackets: "192.0.2.1" or "IPv6:2001:db8::1" (tag
 * case-insensitive); inet_pton's syntax. */
static int literal_value(const char *lit, size_t len, int *family,
                         unsigned char bin[16])
{
	if (len > 5 && strncasecmp(lit, "IPv6:", 5) == 0) {
		*family = AF_INET6;
		return inet_pton(AF_INET6, lit + 5, bin) == 1 ? 0 : -EINVAL;
	}
	*family = AF_INET;
	return inet_pton(AF_INET, lit, bin) == 1 ? 0 : -EINVAL;
}

/* address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
 * General-address-literal ) "]"; only the first two are accepted. */
static int parse_literal(struct cur *c)
{
	char lit[LITERAL_MAX + 1];
	size_t ls = ++c->p;   /* past '[' */
	while (c->p < c->n && is_dcontent(c->s[c->p])) {
		if (c->p - ls >= LITERAL_MAX)
			return -EINVAL;
		c->p++;
	}
	if (c->p >= c->n || c->s[c->p] != ']')
		return fail_at(c);
	size_t len = c->p - ls;
	memcpy(lit, c->s + ls, len);
	lit[len] = '\0';
	c->p++;

	unsigned char bin[16];
	int family;
	return literal_value(lit, len, &family, bin);
}

int addr_domain_literal(const char *domain, int *family, unsigned char bin[16])
{
	char lit[LITERAL_MAX + 1];
	if (!domain || domain[0] != '[')
		return -ENOENT;
	size_t n = strlen(domain);
	if (n < 3 || domain[n - 1] != ']' || n - 2 > LITERAL_MAX)
		return -EINVAL;
	for (size_t i = 1; i < n - 1; i++)
		if (!is_dcontent(domain[i]))
			return -EINVAL;
	memcpy(lit, domain + 1, n - 2);
	lit[n - 2] = '\0';
	return literal_value(lit, n - 2, family, bin);
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; QcontentSMTP = qtextSMTP /
 * quoted-pairSMTP; quoted-pairSMTP = %d92 %d32-126. RFC 6531 adds UTF-8
 * to qtextSMTP. */
static int parse_quoted(struct cur *c)
{
	c->p++;   /* past '"' */
	while (c->p < c->n) {
		unsigned char b = c->s[c->p];
		int rc;
		if (b == '"') {
			c->p++;
			return 0;
		} else if (b == '\\') {
			c->p++;
			if (c->p >= c->n || c->s[c->p] < 32 || c->s[c->p] > 126)
				return fail_at(c);
			c->p++;
		} else if (is_qtext(b)) {
			c->p++;
		} else if (b >= 0x80) {
			if ((rc = take_utf8(c)) < 0)
				return rc;
		} else
			return fail_at(c);
	}
	return -EINVAL;   /* no closing quote */
}

/* Dot-string = Atom *("." Atom); Atom = 1*atext (+ UTF-8, RFC 6531). */
static int parse_dot_string(struct cur *c)
{
	for (;;) {
		size_t as = c->p;
		while (c->p < c->n) {
			unsigned char b = c->s[c->p];
			int rc;
			if (is_atext(b))
				c->p++;
			else if (b >= 0x80) {
				if ((rc = take_utf8(c)) < 0)
					return rc;
			} else
				break;
		}
		if (c->p == as)
			return fail_at(c);
		if (c->p < c->n && c->s[c->p] == '.') {
			c->p++;
			continue;
		}
		return 0;
	}
}

/* A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain. The route
 * is checked and dropped (RFC 5321 §4.1.1.3, Appendix C). */
static int parse_route(struct cur *c)
{
	for (;;) {
		int rc;
		if (c->p >= c->n || c->s[c->p] != '@')
			return fail_at(c);
		c->p++;
		if ((rc = parse_domain(c)) < 0)
			return rc;
		if (c->p < c->n && c->s[c->p] == ',') {
			c->p++;
			continue;
		}
		if (c->p < c->n && c->s[c->p] == ':') {
			c->p++;
			return 0;
		}
		return fail_at(c);
	}
}

int addr_parse_path(const char *in, size_t inlen, unsigned flags, char *out,
                    size_t outsz, size_t *used)
{
	struct cur c = {(const unsigned char *)in, in ? inlen : 0, 0,
	                (flags & ADDR_ALLOW_UTF8) != 0};
	bool bracket, route = false;
	int rc;

	if (!out || outsz == 0)
		return -EINVAL;
	out[0] = '\0';

	if (c.n > 0 && c.s[0] == '<') {
		bracket = true;
		c.p = 1;
	} else if ((flags & ADDR_ALLOW_BARE) && c.n > 0 && c.s[0] != ' ') {
		bracket = false;
	} else
		return -EINVAL;

	if (bracket && c.p < c.n && c.s[c.p] == '>') {
		if (!(flags & ADDR_ALLOW_NULL))
			return -EINVAL;
		c.p++;
		goto done;
	}

	if (c.p < c.n && c.s[c.p] == '@') {
		if ((rc = parse_route(&c)) < 0)
			return rc;
		route = true;
	}

	size_t ls = c.p;
	rc = c.p < c.n && c.s[c.p] == '"' ? parse_quoted(&c)
	                                   : parse_dot_string(&c);
	if (rc < 0)
		return rc;
	size_t llen = c.p - ls;
	if (llen > SMTP_LOCAL_MAX)
		return -ENAMETOOLONG;

	size_t ds = 0, dlen = 0;
	if (c.p < c.n && c.s[c.p] == '@') {
		ds = ++c.p;
		rc = c.p < c.n && c.s[c.p] == '[' ? parse_literal(&c)
		                                   : parse_domain(&c);
		if (rc < 0)
			return rc;
		dlen = c.p - ds;
		if (dlen > SMTP_DOMAIN_MAX)
			return -ENAMETOOLONG;
	} else if (route || llen != 10 ||
	           strncasecmp((const char *)c.s + ls, "postmaster", 10) != 0) {
		return fail_at(&c);
	}

	if (bracket) {
		if (c.p >= c.n || c.s[c.p] != '>')
			return fail_at(&c);
		c.p++;
	}
	if (c.p + (bracket ? 0 : 2) > SMTP_PATH_MAX)
		return -ENAMETOOLONG;

	/* Output: local part and domain exactly as received. */
	size_t olen = llen + (dlen ? 1 + dlen : 0);
	if (olen >= outsz)
		return -ENAMETOOLONG;
	memcpy(out, c.s + ls, llen);
	if (dlen) {
		out[llen] = '@';
		memcpy(out + llen + 1, c.s + ds, dlen);
	}
	out[olen] = '\0';

done:
	/* Mail-parameters follow after SP (RFC 5321 §4.1.1.2). */
	if (c.p < c.n && c.s[c.p] != ' ') {
		out[0] = '\0';
		return fail_at(&c);
	}
	if (used)
		*used = c.p;
	return 0;
}

const char *addr_domain(const char *addr)
{
	const char *at = NULL;
	bool quoted = false;
	if (!addr)
		return NULL;
	for (const char *p = addr; *p; p++) {
		if (quoted && *p == '\\' && p[1])
			p++;
		else if (*p == '"')
			quoted = !quoted;
		else if (*p == '@' && !quoted)
			at = p;
	}
	return at ? at + 1 : NULL;
}

/* ---- ESMTP parameters -------------------------------------------------- */

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
 * esmtp-value = 1*(%d33-60 / %d62-126), RFC 6531 adds UTF-8. */
int addr_parse_params(const char *s, size_t n, bool utf8,
                      struct addr_param *out, size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t p = 0;
	int cnt = 0;

	if (!s)
		return n ? -EINVAL : 0;
	for (;;) {
		while (p < n && u[p] == ' ')
			p++;
		if (p >= n)
			return cnt;

		size_t ks = p;
		if (!is_alnum(u[p]))
			return -EINVAL;
		while (p < n && (is_alnum(u[p]) || u[p] == '-'))
			p++;
		size_t klen = p - ks;

		const char *val = NULL;
		size_t vlen = 0;
		if (p < n && u[p] == '=') {
			size_t vs = ++p;
			while (p < n && u[p] != ' ') {
				size_t k;
				if (u[p] >= 33 && u[p] <= 126 && u[p] != '=')
					p++;
				else if (u[p] >= 0x80 && utf8 &&
				         (k = utf8_seq(u + p, n - p)) > 0)
					p += k;
				else
					return -EINVAL;
			}
			if (p == vs)
				return -EINVAL;
			val = s + vs;
			vlen = p - vs;
		}
		if (p < n && u[p] != ' ')
			return -EINVAL;
		if ((size_t)cnt >= max || cnt == INT_MAX)
			return -E2BIG;
		out[cnt].key = s + ks;
		out[cnt].keylen = klen;
		out[cnt].val = val;
		out[cnt].vallen = vlen;
		cnt++;
	}
}

bool addr_xtext_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	if (!s)
		return n == 0;
	for (size_t i = 0; i < n; i++) {
		if (u[i] == '+') {
			if (n - i < 3 || !is_uhex(u[i + 1]) || !is_uhex(u[i + 2]))
				return false;
			i += 2;
		} else if (u[i] < 33 || u[i] > 126 || u[i] == '=')
			return false;
	}
	return true;
}

/* ---- RFC 5322 §3.4 address-list (a From: field's value) ------------------ */

struct mbl {
	const unsigned char *p, *end;
};

/* RFC 5322 §3.2.3 atext; 8-bit bytes as UTF-8 (RFC 6532 §3.2). */
static bool mbl_atext(unsigned char c)
{
	if (c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* CFWS: blanks, the CR LF of folded lines, and comments (nested, with
 * quoted-pairs). False on an unterminated comment or a NUL in one. */
static bool mbl_cfws(struct mbl *m)
{
	unsigned depth = 0;
	while (m->p < m->end) {
		unsigned char c = *m->p;
		if (depth == 0) {
			if (c != ' ' && c != '\t' && c != '\r' && c != '\n' &&
			    c != '(')
				return true;
			if (c == '(')
				depth = 1;
			m->p++;
			continue;
		}
		if (c == '\\') {
			if (m->end - m->p < 2)
				return false;
			m->p++;
		} else if (c == '(') {
			depth++;
		} else if (c == ')') {
			depth--;
		} else if (c == 0) {
			return false;
		}
		m->p++;
	}
	return depth == 0;
}

/* A quoted-string at m->p (on the opening '"'), through the closing '"'.
 * fold: CR and LF (folding white space) may appear inside. */
static bool mbl_quoted(struct mbl *m, bool fold)
{
	m->p++;
	while (m->p < m->end) {
		unsigned char c = *m->p++;
		if (c == '"')
			return true;
		if (c == '\\') {
			if (m->p == m->end || *m->p == 0)
				return false;
			m->p++;
		} else if (c == 0 || (!fold && (c == '\r' || c == '\n'))) {
			return false;
		}
	}
	return false;
}

/* dot-atom-text: 1*atext *("." 1*atext). */
static bool mbl_dot_atom(struct mbl *m)
{
	for (;;) {
		const unsigned char *s = m->p;
		while (m->p < m->end && mbl_atext(*m->p))
			m->p++;
		if (m->p == s)
			return false;
		if (m->p == m->end || *m->p != '.')
			return true;
		m->p++;
	}
}

/* addr-spec with the CFWS around it; out gets "local@domain" with the
 * local part as written (quotes kept, as addr_parse_path does). */
static int mbl_addr_spec(struct mbl *m, char *out, size_t outsz)
{
	if (!mbl_cfws(m) || m->p == m->end)
		return -EINVAL;
	const unsigned char *ls = m->p;
	if (*m->p == '"' ? !mbl_quoted(m, false) : !mbl_dot_atom(m))
		return -EINVAL;
	size_t llen = (size_t)(m->p - ls);
	if (!mbl_cfws(m) || m->p == m->end || *m->p != '@')
		return -EINVAL;
	m->p++;
	if (!mbl_cfws(m) || m->p == m->end)
		return -EINVAL;
	const unsigned char *ds = m->p;
	if (*m->p == '[') {
		/* domain-literal: dtext is %d33-90 / %d94-126. */
		m->p++;
		while (m->p < m->end && *m->p >= 33 && *m->p <= 126 &&
		       *m->p != '[' && *m->p != ']' && *m->p != '\\')
			m->p++;
		if (m->p == m->end || *m->p != ']')
			return -EINVAL;
		m->p++;
	} else if (!mbl_dot_atom(m)) {
		return -EINVAL;
	}
	size_t dlen = (size_t)(m->p - ds);
	if (!mbl_cfws(m))
		return -EINVAL;
	if (llen > SMTP_LOCAL_MAX || dlen > SMTP_DOMAIN_MAX ||
	    llen + 1 + dlen > SMTP_PATH_MAX || llen + 1 + dlen >= outsz)
		return -ENAMETOOLONG;
	memcpy(out, ls, llen);
	out[llen] = '@';
	memcpy(out + llen + 1, ds, dlen);
	out[llen + 1 + dlen] = '\0';
	return 0;
}

/* The end of one mailbox: the end of the list, ',' or, in a group, ';'. */
static bool mbl_at_sep(const struct mbl *m, bool in_group)
{
	return m->p == m->end || *m->p == ',' || (in_group && *m->p == ';');
}

/* display-name: obs-phrase, 0 or more words (atoms, quoted strings) and
 * dots with CFWS between. Returns the number of words. */
static int mbl_phrase(struct mbl *m)
{
	int words = 0;
	for (;;) {
		if (!mbl_cfws(m))
			return -EINVAL;
		if (m->p == m->end)
			return words;
		if (*m->p == '"') {
			if (!mbl_quoted(m, true))
				return -EINVAL;
		} else if (mbl_atext(*m->p) || *m->p == '.') {
			while (m->p < m->end && (mbl_atext(*m->p) || *m->p == '.'))
				m->p++;
		} else {
			return words;
		}
		words++;
	}
}

static int mbl_emit(const char *addr, addr_mailbox_cb cb, void *ctx,
                    int *count)
{
	if (*count == INT_MAX)
		return -E2BIG;
	(*count)++;
	return cb ? cb(ctx, addr) : 0;
}

/* One address: a mailbox (addr-spec or [display-name] angle-addr) or, at
 * the top level, a group "display-name : [mailbox-list] ;". */
static int mbl_address(struct mbl *m, bool in_group, addr_mailbox_cb cb,
                       void *ctx, int *count)
{
	char addr[SMTP_PATH_MAX + 1];
	const unsigned char *start = m->p;
	/* A bare addr-spec, if it is followed by the end of the mailbox;
	 * else the same bytes are read again as a display name. */
	int r = mbl_addr_spec(m, addr, sizeof addr);
	if (r == -ENAMETOOLONG)
		return r;
	if (r == 0 && mbl_at_sep(m, in_group))
		return mbl_emit(addr, cb, ctx, count);
	m->p = start;
	int words = mbl_phrase(m);
	if (words < 0 || m->p == m->end)
		return -EINVAL;
	if (*m->p == '<') {
		/* angle-addr; no obs-route: a restricted credential's
		 * author has no business with source routes. */
		m->p++;
		r = mbl_addr_spec(m, addr, sizeof addr);
		if (r < 0)
			return r;
		if (m->p == m->end || *m->p != '>')
			return -EINVAL;
		m->p++;
		if (!mbl_cfws(m) || !mbl_at_sep(m, in_group))
			return -EINVAL;
		return mbl_emit(addr, cb, ctx, count);
	}
	if (*m->p != ':' || in_group || words == 0)
		return -EINVAL;
	/* group: its mailboxes, possibly none ("undisclosed-recipients:;"). */
	m->p++;
	for (;;) {
		if (!mbl_cfws(m) || m->p == m->end)
			return -EINVAL;
		if (*m->p == ';')
			break;
		if (*m->p == ',') {   /* obs-mbox-list: empty elements */
			m->p++;
			continue;
		}
		r = mbl_address(m, true, cb, ctx, count);
		if (r < 0)
			return r;
		if (m->p < m->end && *m->p == ',')
			m->p++;
	}
	m->p++;
	if (!mbl_cfws(m) || !mbl_at_sep(m, false))
		return -EINVAL;
	return 0;
}

int addr_parse_mailbox_list(const char *in, size_t n, addr_mailbox_cb cb,
                            void *ctx)
{
	struct mbl m = {(const unsigned char *)in,
	                (const unsigned char *)in + n};
	int count = 0;
	for (;;) {
		if (!mbl_cfws(&m))
			return -EINVAL;
		if (m.p == m.end)
			return count;
		if (*m.p == ',') {    /* obs-addr-list: empty elements */
			m.p++;
			continue;
		}
		int r = mbl_address(&m, false, cb, ctx, &count);
		if (r < 0)
			return r;
		if (m.p < m.end)
			m.p++;    /* the ',' mbl_address stopped at */
	}
}
