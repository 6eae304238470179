/*
 * tests/fuzz/fuzz_dkim_canon.c - libFuzzer harness for dkim/dkim_canon.c:
 * the relaxed body canonicalizer fed in one piece and in pieces of the
 * size the first byte says must give the same bytes, equal to a
 * whole-buffer reference written from dkimpy's rules (strip blanks
 * before CRLF, runs of blanks as one SP, trailing CRLFs cut to one, a
 * CRLF added, "\r\n" alone is empty); the header canonicalizer on the
 * input as one field (bounded output, CRLF at the end, lower-case name,
 * no HTAB, no two SPs); header selection over the input as a header
 * section (h= names only from the lists); the DKIM-Signature field built
 * from that h= list and input-made d=, s= and b= (folded only with CRLF
 * TAB, lines over 76 columns only for one long word, the tags intact
 * once unfolded). Any input: no crash, no leak.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/b64.h"
#include "dkim/dkim.h"
#include "dkim/dkim_canon.h"

struct sink {
	uint8_t *p;
	size_t len, cap;
};

static void emit(void *arg, const uint8_t *p, size_t n)
{
	struct sink *s = arg;
	if (n > s->cap - s->len)
		abort();   /* the output is never longer than the input + 2 */
	memcpy(s->p + s->len, p, n);
	s->len += n;
}

static bool blank(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* dkimpy's relaxed body canonicalization on the whole buffer. */
static size_t reference(const uint8_t *in, size_t n, uint8_t *out)
{
	/* 1: [\t ]+\r\n -> \r\n, 2: [\t ]+ -> SP (one pass each, as re.sub). */
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		if (blank(in[i])) {
			size_t k = i;
			while (k < n && blank(in[k]))
				k++;
			if (!(k + 1 < n && in[k] == '\r' && in[k + 1] == '\n'))
				out[o++] = ' ';
			i = k;
			continue;
		}
		out[o++] = in[i++];
	}
	/* 3: trailing CRLFs cut to one, or one added. */
	size_t end = o;
	bool any = false;
	while (end >= 2 && out[end - 2] == '\r' && out[end - 1] == '\n') {
		end -= 2;
		any = true;
	}
	if (!any) {
		out[o++] = '\r';
		out[o++] = '\n';
	} else {
		o = end + 2;
	}
	/* 4: "\r\n" alone is the empty body. */
	if (o == 2 && out[0] == '\r' && out[1] == '\n')
		o = 0;
	return o;
}

/* The DKIM-Signature field (dkim_sig_field + dkim_sig_append_b) with
 * h= from the selection, d= and s= made of the input's bytes mapped to
 * [a-z0-9.-] (any length up to a DNS name's), b= of 64 to 512 bytes:
 * only CRLF TAB folds, the last line ending in CRLF; a line over 76
 * columns holds one unbreakable word; the words, folds removed, are
 * exactly the tags in order. */
static void check_field(const uint8_t *in, size_t n, const char *hlist)
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz0123456789.-";
	char d[254], sel[64], flat[8192], want[8192];
	size_t dl = n % 254, sl = (n / 7) % 64;
	for (size_t i = 0; i < dl; i++)
		d[i] = set[(n ? in[i % n] : 0) % (sizeof set - 1)];
	d[dl] = '\0';
	for (size_t i = 0; i < sl; i++)
		sel[i] = set[(n ? in[(i * 3) % n] : 0) % (sizeof set - 1)];
	sel[sl] = '\0';
	uint8_t sig[512];
	size_t sn = n && (in[0] & 1) ? 64 : 64 + (n * 13) % 449;
	for (size_t i = 0; i < sn; i++)
		sig[i] = n ? in[i % n] : 0;
	const char *bh = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
	struct buf f = BUF_INIT(1 << 20);
	if (strlen(hlist) > 4000)
		return;   /* flat[] below; dkim_select_headers caps h= anyway */
	if (dkim_sig_field(n & 2 ? "rsa-sha256" : "ed25519-sha256", d, sel,
	                   n & 4 ? -1 : (long long)n * 1000003, bh, hlist,
	                   &f) < 0 ||
	    dkim_sig_append_b(&f, sig, sn) < 0)
		abort();
	const char *p = (const char *)f.data;
	size_t len = f.len, o = 0, col = 0, words = 0;
	if (len < 22 || memcmp(p, "DKIM-Signature: v=1;", 20) != 0 ||
	    memcmp(p + len - 2, "\r\n", 2) != 0)
		abort();
	for (size_t i = 0; i < len; i++) {
		char ch = p[i];
		if (ch == '\r') {
			if (i + 1 >= len || p[i + 1] != '\n')
				abort();
			if (col > 76 && words > 1)
				abort();
			i++;
			if (i + 1 < len && p[i + 1] != '\t')
				abort();
			col = 0;
			words = 0;
			continue;
		}
		if (ch == '\n')
			abort();
		if (ch != ' ' && ch != '\t' && (i == 0 || p[i - 1] == ' ' ||
		                               p[i - 1] == '\t'))
			words++;
		col += ch == '\t' ? 8 - col % 8 : 1;
		if (ch != ' ' && ch != '\t' && o + 1 < sizeof flat)
			flat[o++] = ch;
	}
	flat[o] = '\0';
	char b64[700];
	b64_encode(sig, sn, B64_PAD, b64);
	char t[48] = "";
	if (!(n & 4))
		snprintf(t, sizeof t, "t=%lld;", (long long)n * 1000003);
	snprintf(want, sizeof want, "DKIM-Signature:v=1;a=%s;c=relaxed/"
	         "relaxed;d=%s;s=%s;%sbh=%s;h=%s;b=%s", n & 2 ? "rsa-sha256" :
	         "ed25519-sha256", d, sel, t, bh, hlist, b64);
	if (strcmp(flat, want) != 0)
		abort();
	buf_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	size_t step = (size_t)data[0] % 19 + 1;
	const uint8_t *in = data + 1;
	size_t n = size - 1;
	uint8_t *a = malloc(n + 3), *b = malloc(n + 3), *r = malloc(n + 3);
	/* a: n + 3 bytes, what dkim_canon_header needs (below) */
	if (!a || !b || !r)
		abort();
	struct sink sa = {a, 0, n + 2}, sb = {b, 0, n + 2};
	struct dkim_body_canon c;
	dkim_body_canon_init(&c);
	dkim_body_canon_feed(&c, in, n, emit, &sa);
	dkim_body_canon_end(&c, emit, &sa);
	dkim_body_canon_init(&c);
	for (size_t i = 0; i < n; i += step)
		dkim_body_canon_feed(&c, in + i, n - i < step ? n - i : step, emit,
		                     &sb);
	dkim_body_canon_end(&c, emit, &sb);
	size_t rl = reference(in, n, r);
	if (sa.len != sb.len || memcmp(a, b, sa.len) != 0 || rl != sa.len ||
	    memcmp(a, r, rl) != 0)
		abort();

	/* The input as one header field. */
	size_t hl = dkim_canon_header(in, n, a);
	if (hl < 3 || hl > n + (memchr(in, ':', n) ? 2 : 3) || a[hl - 2] != '\r' || a[hl - 1] != '\n')
		abort();
	const uint8_t *colon = memchr(a, ':', hl);
	if (!colon)
		abort();
	for (const uint8_t *p = a; p < colon; p++)
		if (*p >= 'A' && *p <= 'Z')
			abort();
	for (size_t i = (size_t)(colon - a); i + 2 < hl; i++)
		if (a[i] == '\t' || (a[i] == ' ' && a[i + 1] == ' '))
			abort();

	/* The input as a header section. */
	static const char *const over[] = {"from", NULL};
	struct buf hlist = BUF_INIT(1 << 20), canon = BUF_INIT(4 << 20);
	if (dkim_select_headers(in, n, dkim_signed_headers, over, &hlist,
	                        &canon) == 0) {
		char *save, *t = strdup((const char *)hlist.data);
		if (!t)
			abort();
		for (char *w = strtok_r(t, ":", &save); w;
		     w = strtok_r(NULL, ":", &save)) {
			bool ok = false;
			for (size_t i = 0; dkim_signed_headers[i]; i++)
				ok |= strcasecmp(w, dkim_signed_headers[i]) == 0;
			if (!ok)
				abort();
		}
		free(t);
		if (canon.len > 2 * n + 2)
			abort();
		check_field(in, n, (const char *)hlist.data);
	}
	buf_free(&hlist);
	buf_free(&canon);
	free(a);
	free(b);
	free(r);
	return 0;
}
