/*
 * dns/dmarc.c - DMARC without DNS (dmarc.h): the record grammar of RFC
 * 7489 §6.4 with RFC 9989's tags (np, psd, t) and removals (pct, rf, ri),
 * the tree walk's names and the organizational domain (RFC 9989 §4.10),
 * alignment. Pure; every loop is bounded by the input's length.
 */
#include "dns/dmarc.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

const char *const dmarc_policy_names[4] = {
	"", "none", "quarantine", "reject",
};

static void why_set(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t whylen, const char *fmt, ...)
{
	if (!why || whylen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* A value for a message: printable already (checked first), cut. */
static const char *q(char *dst, size_t dn, const char *v, size_t n)
{
	if (n > 40)
		snprintf(dst, dn, "%.37s...", v);
	else
		snprintf(dst, dn, "%.*s", (int)n, v);
	return dst;
}

static bool val_is(const char *v, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(v, word, n) == 0;
}

static enum dmarc_policy policy_of(const char *v, size_t n)
{
	if (val_is(v, n, "none"))
		return DMARC_P_NONE;
	if (val_is(v, n, "quarantine"))
		return DMARC_P_QUARANTINE;
	if (val_is(v, n, "reject"))
		return DMARC_P_REJECT;
	return DMARC_P_UNSET;
}

/* "mailto:a@b.example, https://x!10m": each URI has a scheme (RFC 3986
 * §3.1) and something after it. */
static bool uri_list_ok(const char *v, size_t n)
{
	size_t i = 0;
	for (;;) {
		while (i < n && is_wsp(v[i]))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && is_wsp(v[e - 1]))
			e--;
		if (e == s || !isalpha((unsigned char)v[s]))
			return false;
		size_t k = s + 1;
		while (k < e && (isalnum((unsigned char)v[k]) || v[k] == '+' ||
		                 v[k] == '-' || v[k] == '.'))
			k++;
		if (k >= e || v[k] != ':' || k + 1 >= e)
			return false;
		if (i >= n)
			return true;
		i++;                    /* ',' */
	}
}

/* fo: "0", "1", "d", "s", separated by ':' (RFC 7489 §6.3). */
static bool fo_ok(const char *v, size_t n)
{
	size_t i = 0;
	for (;;) {
		while (i < n && is_wsp(v[i]))
			i++;
		if (i >= n || !strchr("01dsDS", v[i]) || v[i] == '\0')
			return false;
		i++;
		while (i < n && is_wsp(v[i]))
			i++;
		if (i >= n)
			return true;
		if (v[i] != ':')
			return false;
		i++;
	}
}

static bool digits(const char *v, size_t n, unsigned max, unsigned *out)
{
	if (n == 0 || n > 9)
		return false;
	unsigned x = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)v[i]))
			return false;
		x = x * 10 + (unsigned)(v[i] - '0');
	}
	if (x > max)
		return false;
	*out = x;
	return true;
}

enum { T_P, T_SP, T_NP, T_ADKIM, T_ASPF, T_PCT, T_RUA, T_RUF, T_FO, T_RF,
       T_RI, T_PSD, T_T, T__COUNT };
static const char *const tag_names[T__COUNT] = {
	"p", "sp", "np", "adkim", "aspf", "pct", "rua", "ruf", "fo", "rf",
	"ri", "psd", "t",
};

int dmarc_parse(const char *txt, size_t n, struct dmarc_record *out,
                char *why, size_t whylen)
{
	char vb[48];
	memset(out, 0, sizeof *out);
	out->pct = 100;
	why_set(why, whylen, "%s", "");

	/* dmarc-version = "v" *WSP "=" *WSP %x44.4d.41.52.43.31: "DMARC1"
	 * is case-sensitive, "v" is not (RFC 5234 §2.3). */
	size_t i = 0;
	if (n == 0 || (txt[0] != 'v' && txt[0] != 'V'))
		return -ENOENT;
	i = 1;
	while (i < n && is_wsp(txt[i]))
		i++;
	if (i >= n || txt[i] != '=')
		return -ENOENT;
	i++;
	while (i < n && is_wsp(txt[i]))
		i++;
	if (n - i < 6 || memcmp(txt + i, "DMARC1", 6) != 0)
		return -ENOENT;
	i += 6;
	if (i < n && !is_wsp(txt[i]) && txt[i] != ';')
		return -ENOENT;

	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)txt[k];
		if ((c < 0x20 && c != '\t') || c > 0x7e) {
			why_set(why, whylen, "byte 0x%02x at offset %zu: only "
			        "printable ASCII belongs in a DMARC record", c, k);
			return -EINVAL;
		}
	}

	unsigned seen = 0;
	bool first = true;
	for (;;) {
		while (i < n && is_wsp(txt[i]))
			i++;
		if (i >= n)
			break;
		if (txt[i] != ';') {
			why_set(why, whylen, "expected ';' at offset %zu", i);
			return -EINVAL;
		}
		i++;
		while (i < n && (is_wsp(txt[i]) || txt[i] == ';'))
			i++;
		if (i >= n)
			break;
		/* tag-name = ALPHA *(ALPHA / DIGIT / "_") (RFC 6376 §3.2) */
		size_t ns = i;
		if (!isalpha((unsigned char)txt[i])) {
			why_set(why, whylen, "expected a tag name at offset %zu", i);
			return -EINVAL;
		}
		while (i < n && (isalnum((unsigned char)txt[i]) || txt[i] == '_'))
			i++;
		size_t nlen = i - ns;
		while (i < n && is_wsp(txt[i]))
			i++;
		if (i >= n || txt[i] != '=') {
			why_set(why, whylen, "tag '%s' has no '='",
			        q(vb, sizeof vb, txt + ns, nlen));
			return -EINVAL;
		}
		i++;
		while (i < n && is_wsp(txt[i]))
			i++;
		size_t vs = i;
		while (i < n && txt[i] != ';')
			i++;
		size_t ve = i;
		while (ve > vs && is_wsp(txt[ve - 1]))
			ve--;
		const char *v = txt + vs;
		size_t vn = ve - vs;

		int t = -1;
		for (int k = 0; k < T__COUNT; k++)
			if (val_is(txt + ns, nlen, tag_names[k]))
				t = k;
		if (val_is(txt + ns, nlen, "v")) {
			why_set(why, whylen, "v= given twice");
			return -EINVAL;
		}
		if (t < 0) {
			out->warnings |= DMARC_W_UNKNOWN_TAG;
			first = false;
			continue;
		}
		if (first && t != T_P)
			out->warnings |= DMARC_W_P_NOT_SECOND;
		first = false;
		if (seen & (1u << t)) {
			why_set(why, whylen, "%s= given twice", tag_names[t]);
			return -EINVAL;
		}
		seen |= 1u << t;

		bool ok = true;
		const char *want = "";
		unsigned u;
		switch (t) {
		case T_P:
		case T_SP:
		case T_NP: {
			enum dmarc_policy p = policy_of(v, vn);
			ok = p != DMARC_P_UNSET;
			want = "none, quarantine or reject";
			if (t == T_P)
				out->p = p;
			else if (t == T_SP)
				out->sp = p;
			else
				out->np = p;
			break;
		}
		case T_ADKIM:
		case T_ASPF: {
			bool s = val_is(v, vn, "s");
			ok = s || val_is(v, vn, "r");
			want = "r or s";
			if (t == T_ADKIM)
				out->adkim_strict = s;
			else
				out->aspf_strict = s;
			break;
		}
		case T_PCT:
			out->warnings |= DMARC_W_REMOVED_TAG;
			if (!digits(v, vn, 100, &u))
				out->warnings |= DMARC_W_PCT_RANGE;
			else
				out->pct = u;
			break;
		case T_RF:
		case T_RI:
			out->warnings |= DMARC_W_REMOVED_TAG;
			break;
		case T_RUA:
		case T_RUF:
			ok = uri_list_ok(v, vn);
			want = "URIs such as mailto:dmarc@example.com, separated by "
			       "commas";
			if (t == T_RUA)
				out->rua = true;
			else
				out->ruf = true;
			break;
		case T_FO:
			ok = fo_ok(v, vn);
			want = "0, 1, d or s, separated by ':'";
			break;
		case T_PSD:
			ok = vn == 1 && strchr("ynuYNU", v[0]);
			want = "y, n or u";
			if (ok && tolower((unsigned char)v[0]) != 'u')
				out->psd = (char)tolower((unsigned char)v[0]);
			break;
		case T_T:
			ok = vn == 1 && strchr("ynYN", v[0]);
			want = "y or n";
			out->testing = ok && tolower((unsigned char)v[0]) == 'y';
			break;
		}
		if (!ok) {
			why_set(why, whylen, "%s=%s: want %s", tag_names[t],
			        q(vb, sizeof vb, v, vn), want);
			return -EINVAL;
		}
	}
	if (!(seen & (1u << T_P))) {
		why_set(why, whylen, "no p= tag (RFC 7489 requires it; RFC 9989 "
		        "readers assume p=none)");
		return -EINVAL;
	}
	return 0;
}

static size_t count_labels(const char *s)
{
	size_t n = 1;
	for (; *s; s++)
		if (*s == '.')
			n++;
	return n;
}

/* The last `keep` labels of s (s has at least that many). */
static const char *last_labels(const char *s, size_t keep)
{
	size_t total = count_labels(s);
	while (total > keep) {
		s = strchr(s, '.') + 1;
		total--;
	}
	return s;
}

size_t dmarc_walk_names(const char *domain,
                        char out[DMARC_WALK_MAX][DMARC_NAME_BUF])
{
	char d[DMARC_NAME_BUF];
	size_t len = strlen(domain);
	if (len > 0 && domain[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		d[i] = (char)tolower((unsigned char)domain[i]);
		if (d[i] == '.' && (i == 0 || i + 1 == len || d[i - 1] == '.'))
			return 0;
	}
	d[len] = '\0';
	size_t labels = count_labels(d);
	size_t n = 0;
	memcpy(out[n++], d, len + 1);
	/* More than 8 labels: jump to the last 7, then one at a time. */
	size_t next = labels > 8 ? 7 : labels - 1;
	for (; next >= 1 && n < DMARC_WALK_MAX; next--) {
		const char *s = last_labels(d, next);
		memcpy(out[n++], s, strlen(s) + 1);
	}
	return n;
}

void dmarc_org_domain(const char names[][DMARC_NAME_BUF],
                      const struct dmarc_found *found, size_t n,
                      char out[DMARC_NAME_BUF])
{
	size_t fewest = 0;
	bool any = false;
	for (size_t i = 0; i < n; i++) {
		if (!found[i].found)
			continue;
		if (found[i].psd == 'n') {
			memcpy(out, names[i], strlen(names[i]) + 1);
			return;
		}
		if (found[i].psd == 'y') {
			const char *s = i == 0 ? names[0] :
			        last_labels(names[0], count_labels(names[i]) + 1);
			memcpy(out, s, strlen(s) + 1);
			return;
		}
		fewest = i;
		any = true;
	}
	const char *s = n == 0 ? "" : names[any ? fewest : 0];
	memcpy(out, s, strlen(s) + 1);
}

bool dmarc_aligned(const char *a, const char *org_a, const char *b,
                   const char *org_b, bool strict)
{
	if (strict)
		return strcasecmp(a, b) == 0;
	return strcasecmp(org_a, org_b) == 0;
}
