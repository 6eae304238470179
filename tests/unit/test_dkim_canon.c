/*
 * tests/unit/test_dkim_canon.c - relayd's own DKIM signing, rsa-sha256
 * and ed25519-sha256 (dkim/dkim_canon.c, dkim_sign.c), table-driven:
 * relaxed header and body canonicalization (RFC 6376 §3.4.2, §3.4.4:
 * blanks, folds, trailing empty lines, the empty body; the body fed
 * whole, in every two-piece cut and byte by byte), the header selection
 * (message order, names as written, duplicates bottom-up, From:
 * oversigned), the field's folding (every line under 78 columns), and
 * the oracle: the same messages (folded fields, dot lines, 8-bit text,
 * long lines, the empty body, missing fields, oversigned From:) signed
 * by libopendkim (still linked as the oracle) and by relayd at the same
 * t=, with Ed25519, RSA-1024, -2048 and -4096 keys and dual-signed (RSA
 * and Ed25519), must give byte-identical DKIM-Signature fields (PKCS#1
 * v1.5 and Ed25519 are deterministic); every b= of ours is also checked
 * with OpenSSL against the public key over the data RFC 6376 §3.7 says.
 * dkimpy checks them end to end (tests/e2e/test_dkim.py).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "common/b64.h"
#include "dkim/dkim.h"
#include "dkim/dkim_canon.h"

/* Only the oracle signs with libopendkim's Ed25519, which leaks ~550
 * bytes per signature (one reason this code exists): LeakSanitizer is
 * told to ignore leaks from libopendkim's frames in this binary only
 * (relayd's own path, hundreds of signatures here, is still checked:
 * its allocations have no libopendkim frame; tests/unit/test_dkim.c and
 * tests/e2e/test_dkim.py sign with it under no suppression). */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:libopendkim.so\n";
}
/* libcrypto has no frame pointers: the slow unwinder reaches the
 * libopendkim frame the suppression names. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}

/* ---- header canonicalization -------------------------------------------- */

struct hcase {
	const char *in, *want;
};

static const struct hcase hcases[] = {
	{"Subject: hi\r\n", "subject:hi\r\n"},
	{"SUBJECT:hi", "subject:hi\r\n"},
	{"Subject :  a  \t b \t\r\n", "subject:a b\r\n"},
	{"Subject \t: x\r\n", "subject:x\r\n"},
	{"To: a,\r\n\tb,\r\n  c\r\n", "to:a, b, c\r\n"},
	{"X:\r\n\tfolded-at-once\r\n", "x:folded-at-once\r\n"},
	{"X:   \r\n", "x:\r\n"},
	{"X:", "x:\r\n"},
	{"X: a\r\n b\r\n", "x:a b\r\n"},
	{"X: a:b: c\r\n", "x:a:b: c\r\n"},        /* only the first colon */
	{"X: a\tb\r\n", "x:a b\r\n"},
	{"X: caf\xc3\xa9  \xff\r\n", "x:caf\xc3\xa9 \xff\r\n"},
	{"Mixed-Case-NAME: Keep Case\r\n", "mixed-case-name:Keep Case\r\n"},
	{"", ":\r\n"},                          /* no ':': n + 3 bytes */
	{"NoColon", "nocolon:\r\n"},
};

static void test_canon_header(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof hcases / sizeof *hcases; i++) {
		const struct hcase *c = &hcases[i];
		size_t n = strlen(c->in);
		uint8_t out[256];
		size_t l = dkim_canon_header((const uint8_t *)c->in, n, out);
		if (l != strlen(c->want) || memcmp(out, c->want, l) != 0)
			fail_msg("case %zu: got '%.*s' want '%s'", i, (int)l,
			         (const char *)out, c->want);
		assert_true(l <= n + (strchr(c->in, ':') ? 2 : 3));
	}
}

/* ---- body canonicalization ---------------------------------------------- */

struct sink {
	char p[1024];
	size_t len;
};

static void emit(void *arg, const uint8_t *p, size_t n)
{
	struct sink *s = arg;
	assert_true(n <= sizeof s->p - s->len);
	memcpy(s->p + s->len, p, n);
	s->len += n;
}

struct bcase {
	const char *in, *want;
};

static const struct bcase bcases[] = {
	{"", ""},                                     /* empty body */
	{"\r\n", ""},                                 /* only empty lines */
	{"\r\n\r\n\r\n", ""},
	{" \t \r\n\r\n", ""},                         /* blank lines too */
	{"a\r\n", "a\r\n"},
	{"a", "a\r\n"},                               /* CRLF added */
	{"a\r\n\r\n\r\n", "a\r\n"},                   /* trailing lines cut */
	{"a\r\n\r\nb\r\n\r\n", "a\r\n\r\nb\r\n"},     /* inner ones kept */
	{"a  b\t\tc \t\r\n", "a b c\r\n"},
	{"  lead\r\n", " lead\r\n"},
	{"a \r\n \r\nb\r\n", "a\r\n\r\nb\r\n"},
	{"a\rb\r\n", "a\rb\r\n"},                     /* bare CR */
	{"a\nb\r\n", "a\nb\r\n"},                     /* bare LF */
	{"a \r\r\n", "a \r\r\n"},
	{"a\r", "a\r\r\n"},
	{"x\r\n\r", "x\r\n\r\r\n"},
	{"a  ", "a \r\n"},                            /* as dkimpy */
	{"\r\n\r\n ", "\r\n\r\n \r\n"},
	{".dot\r\n..two\r\n", ".dot\r\n..two\r\n"},
};

static void body_run(const char *in, size_t n, size_t step, struct sink *s)
{
	struct dkim_body_canon c;
	dkim_body_canon_init(&c);
	s->len = 0;
	for (size_t i = 0; i < n; i += step)
		dkim_body_canon_feed(&c, (const uint8_t *)in + i,
		                     n - i < step ? n - i : step, emit, s);
	dkim_body_canon_end(&c, emit, s);
}

static void test_canon_body(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bcases / sizeof *bcases; i++) {
		const struct bcase *c = &bcases[i];
		size_t n = strlen(c->in);
		for (size_t step = 1; step <= n + 1; step++) {
			struct sink s;
			body_run(c->in, n, step, &s);
			if (s.len != strlen(c->want) || memcmp(s.p, c->want, s.len))
				fail_msg("case %zu step %zu: got '%.*s'", i, step,
				         (int)s.len, s.p);
		}
	}
	/* More output than the internal buffer, and many held lines. */
	static char big[900];
	memset(big, 'x', 600);
	for (size_t i = 600; i < 900; i += 2)
		memcpy(big + i, "\r\n", 2);
	struct sink s;
	body_run(big, sizeof big, 7, &s);
	assert_int_equal(s.len, 602);
	assert_memory_equal(s.p + 600, "\r\n", 2);
}

/* ---- header selection --------------------------------------------------- */

struct scase {
	const char *hdr, *hlist, *canon;
};

static const char *const over[] = {"from", NULL};

static const struct scase scases[] = {
	{"Received: x\r\nFrom: a@b\r\nTo: c\r\n", "From:To:from",
	 "from:a@b\r\nto:c\r\n"},
	/* message order, names as written; duplicates bottom-up */
	{"To: 1\r\nFROM: f\r\nSubject: s\r\nto: 2\r\nX: y\r\n",
	 "To:FROM:Subject:to:from", "to:2\r\nfrom:f\r\nsubject:s\r\nto:1\r\n"},
	/* two From: the oversigned name finds none left */
	{"From: 1\r\nFrom: 2\r\n", "From:From:from", "from:2\r\nfrom:1\r\n"},
	{"Subject: x\r\n", "Subject:from", "subject:x\r\n"},
	{"", "from", ""},
	{"From : a\r\n\tb\r\nNoColon\r\nDate:d\r\n", "From:Date:from",
	 "from:a b\r\ndate:d\r\n"},
	{"Message-ID: <m>\r\nList-Unsubscribe-Post: One-Click\r\n",
	 "Message-ID:List-Unsubscribe-Post:from",
	 "message-id:<m>\r\nlist-unsubscribe-post:One-Click\r\n"},
};

static void test_select_headers(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof scases / sizeof *scases; i++) {
		const struct scase *c = &scases[i];
		struct buf hl = BUF_INIT(4096), cn = BUF_INIT(4096);
		assert_int_equal(dkim_select_headers((const uint8_t *)c->hdr,
		                                     strlen(c->hdr),
		                                     dkim_signed_headers, over, &hl,
		                                     &cn), 0);
		if (strcmp((const char *)hl.data, c->hlist) != 0)
			fail_msg("case %zu: h=%s want %s", i, (char *)hl.data,
			         c->hlist);
		if (cn.len != strlen(c->canon) ||
		    (cn.len && memcmp(cn.data, c->canon, cn.len)))
			fail_msg("case %zu: canon '%.*s'", i, (int)cn.len,
			         (char *)cn.data);
		buf_free(&hl);
		buf_free(&cn);
	}
}

/* ---- the field ---------------------------------------------------------- */

static void check_lines(const char *f, size_t n)
{
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		if (f[i] == '\r') {
			assert_true(i + 1 < n && f[i + 1] == '\n');
			assert_true(col < 78);
			col = 0;
			i++;
			if (i + 1 < n)
				assert_true(f[i + 1] == '\t');   /* a fold */
			continue;
		}
		col += f[i] == '\t' ? 8 - col % 8 : 1;
	}
	assert_true(col < 78);
}

static void test_sig_field(void **state)
{
	(void)state;
	static const char *const hls[] = {
		"From:from",
		"From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:"
		"Content-Transfer-Encoding:List-Unsubscribe:List-Unsubscribe-Post:"
		"Reply-To:In-Reply-To:References:Cc:from",
	};
	/* An Ed25519 signature; an RSA-4096 one (512 bytes, 684 in base64). */
	uint8_t sig[512];
	memset(sig, 0xa5, sizeof sig);
	for (size_t i = 0; i < 2; i++) {
		size_t sn = i ? 512 : 64;
		struct buf f = BUF_INIT(8192);
		assert_int_equal(dkim_sig_field(i ? "rsa-sha256" : "ed25519-sha256",
		                                "a-rather-long-domain-name.example."
		                                "com", "selector2026", 1796515983,
		                                "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJW"
		                                "ZG3hSuFU=", hls[i], &f), 0);
		assert_true(f.len > 5 && memcmp(f.data + f.len - 5, "\r\n\tb=", 5)
		            == 0);
		check_lines((const char *)f.data, f.len);
		assert_int_equal(dkim_sig_append_b(&f, sig, sn), 0);
		check_lines((const char *)f.data, f.len - 2);
		assert_memory_equal(f.data + f.len - 2, "\r\n", 2);
		/* The names and b= survive the folding (unfold: drop CRLF+WSP). */
		char flat[4096];
		size_t o = 0;
		for (size_t k = 0; k < f.len; k++) {
			char ch = (char)f.data[k];
			if (ch == '\r' || ch == '\n' || ch == '\t' || ch == ' ')
				continue;
			flat[o++] = ch;
		}
		flat[o] = '\0';
		char want[600];
		snprintf(want, sizeof want, "h=%s;b=", hls[i]);
		assert_non_null(strstr(flat, want));
		char b64[700];
		b64_encode(sig, sn, B64_PAD, b64);
		assert_string_equal(strstr(flat, ";b=") + 3, b64);
		assert_non_null(strstr(flat, "t=1796515983;"));
		buf_free(&f);
	}
	struct buf f = BUF_INIT(8192);
	assert_int_equal(dkim_sig_field("ed25519-sha256", "d.example", "s", -1,
	                                "x", "from", &f), 0);
	assert_null(memmem(f.data, f.len, "t=", 2));
	buf_free(&f);
}

/* ---- the oracle ----------------------------------------------------------- */

#define X10 "0123456789"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10
#define X1000 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100

static const char *const msgs[] = {
	/* folded header, dot line, trailing empty lines */
	"Received: by relay.test\r\nFrom: Ann <ann@example.com>\r\nTo: b@x.test"
	"\r\nSubject: pieces\r\n\tfolded\r\n\r\nline one\r\n.dot line\r\n\r\n\r\n",
	/* empty body; no body at all */
	"From: ann@example.com\r\n\r\n",
	"From: ann@example.com\r\n",
	"To: a@b\r\nFrom: A <a@example.com>\r\nSubject:  hi  there \r\nTo: c@d"
	"\r\nX-Other: y\r\nDate: now\r\n\r\nbody  \t\r\n\r\n \r\n",
	/* (two From: fields are not signed at all: two Cc: in two cases) */
	"From: a@example.com\r\nCc: b@example.com\r\nCC: c@d\r\nReply-To: r@e"
	"\r\nIn-Reply-To: <1@x>\r\nReferences: <0@x>\r\n <1@x>\r\n\r\na\tb\r\n",
	/* a long h=: folded after colons */
	"From: a@example.com\r\nTo: b@c\r\nCc: d@e\r\nSubject: s\r\nDate: d\r\n"
	"Message-ID: <m@x>\r\nReply-To: r@x\r\nIn-Reply-To: <i@x>\r\n"
	"References: <i@x>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
	"Content-Transfer-Encoding: 7bit\r\nList-Unsubscribe: <mailto:u@x>\r\n"
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nhello\r\n",
	"From: a@example.com\r\nSubject: body without trailing empty lines\r\n"
	"\r\n\r\n\r\nmiddle\r\n\r\nend\r\n",
	/* 8-bit text in header fields and body (and bytes that are not
	 * UTF-8) */
	"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.com>\r\nSubject: caf\xc3\xa9 "
	"\xe2\x82\xac 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9f" "e, caf\xc3"
	"\xa9\r\n\xff\xfe\x80 raw  \r\n",
	/* dot lines: lone dots, doubled dots (stored unstuffed) */
	"From: a@example.com\r\nTo: b@c\r\n\r\n.\r\n..\r\n...x\r\n. \r\n",
	/* long lines: a 2000-octet body line, a long folded Subject */
	"From: a@example.com\r\nSubject: " X100 "\r\n " X100 "\r\n\t" X100
	"\r\n\r\n" X1000 X1000 "\r\nshort\r\n" X1000 " \t \r\n",
	/* many instances of signed fields (h= longer still); all oversigned
	 * From: (none left) */
	"From: a@example.com\r\nTo: 1\r\nTo: 2\r\nTo: 3\r\nCc: 4\r\nCc: 5\r\n"
	"Cc: 6\r\nReferences: <1@x>\r\nReferences: <2@x>\r\nSubject: a\r\n"
	"Subject: b\r\nDate: d\r\nMessage-ID: <m@x>\r\nMIME-Version: 1.0\r\n"
	"\r\nx\r\n",
};

/* The keys, in a temporary directory: line (for dkim_signer_new), the
 * public key. */
struct okey {
	const char *domain, *selector;
	enum dkim_alg alg;
	unsigned bits;
	char line[700];
	EVP_PKEY *pub;
};

static struct okey okeys[] = {
	{"example.com", "ed1", DKIM_ALG_ED25519, 0, "", NULL},
	{"example.com", "rsa2048", DKIM_ALG_RSA, 2048, "", NULL},
	/* a long selector: d=, s=, t= folded on other columns */
	{"example.com", "a-long-selector-name-to-move-the-folds-202612",
	 DKIM_ALG_RSA, 1024, "", NULL},
	{"example.com", "rsa4096", DKIM_ALG_RSA, 4096, "", NULL},
};
#define NOKEYS (sizeof okeys / sizeof *okeys)
static char keydir[64];

static void okeys_make(void)
{
	snprintf(keydir, sizeof keydir, "/tmp/test_dkim_canon_XXXXXX");
	assert_non_null(mkdtemp(keydir));
	for (size_t i = 0; i < NOKEYS; i++) {
		struct okey *k = &okeys[i];
		char *pem = NULL, err[256], path[600];
		size_t len = 0;
		if (dkim_key_generate(k->alg, k->bits, &pem, &len, err,
		                      sizeof err) < 0)
			fail_msg("%s", err);
		snprintf(path, sizeof path, "%s/%zu.pem", keydir, i);
		FILE *fp = fopen(path, "w");
		assert_non_null(fp);
		assert_int_equal(fwrite(pem, 1, len, fp), len);
		fclose(fp);
		assert_int_equal(chmod(path, 0600), 0);
		snprintf(k->line, sizeof k->line, "%s %s %s", k->domain,
		         k->selector, path);
		BIO *bio = BIO_new_mem_buf(pem, (int)len);
		k->pub = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
		assert_non_null(k->pub);
		BIO_free(bio);
		free(pem);
	}
}

static void okeys_free(void)
{
	for (size_t i = 0; i < NOKEYS; i++) {
		char path[600];
		snprintf(path, sizeof path, "%s/%zu.pem", keydir, i);
		unlink(path);
		EVP_PKEY_free(okeys[i].pub);
		okeys[i].pub = NULL;
	}
	rmdir(keydir);
}

/* A signer of the keys okeys[idx[0..n)], through libopendkim or not,
 * t= fixed. */
static struct dkim_signer *oracle_signer(const size_t *idx, size_t n,
                                         bool lib)
{
	char err[256], *lines[2];
	assert_true(n <= 2);
	for (size_t i = 0; i < n; i++)
		lines[i] = okeys[idx[i]].line;
	struct dkim_signer *s = NULL;
	if (dkim_signer_new(lines, n, false, NULL, &s, err, sizeof err) < 0)
		fail_msg("%s", err);
	dkim_signer_use_libopendkim(s, lib);
	assert_int_equal(dkim_signer_fixed_time(s, 1796515983), 0);
	return s;
}

/* The field's value: everything after "DKIM-Signature:". */
static void tag(const char *sig, const char *name, char *out, size_t n)
{
	char flat[4096];
	size_t o = 0;
	for (const char *p = strchr(sig, ':') + 1; *p && o + 1 < sizeof flat; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			flat[o++] = *p;
	flat[o] = '\0';
	out[0] = '\0';
	for (char *save, *it = strtok_r(flat, ";", &save); it;
	     it = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(it, '=');
		if (eq && (size_t)(eq - it) == strlen(name) &&
		    strncmp(it, name, strlen(name)) == 0)
			snprintf(out, n, "%s", eq + 1);
	}
}

/* The relaxed form of a whole DKIM-Signature field with b= emptied,
 * into out. */
static size_t sig_relaxed_noB(const char *sig, char *out, size_t cap)
{
	char f[4096];
	snprintf(f, sizeof f, "%s", sig);
	char *b = strstr(f, "b=");
	while (b && b > f && b[-1] != ' ' && b[-1] != '\t' && b[-1] != ';')
		b = strstr(b + 1, "b=");
	assert_non_null(b);
	size_t keep = (size_t)(b - f) + 2;   /* b= is the last tag */
	assert_true(keep + 2 <= cap);
	size_t l = dkim_canon_header((const uint8_t *)f, keep, (uint8_t *)out);
	return l - 2;
}

/* A field of ours checked with OpenSSL against the public key over the
 * data RFC 6376 §3.7 says: the selected fields, then the field with b=
 * empty, SHA-256; RSA PKCS#1 v1.5 (RFC 6376 §3.3.1) or Ed25519 over the
 * digest (RFC 8463 §3). One bit off: no longer valid. */
static void verify_b(const char *msg, const char *sig, const struct okey *k)
{
	const char *end = strstr(msg, "\r\n\r\n");
	size_t hlen = end ? (size_t)(end - msg) + 2 : strlen(msg);
	struct buf hl = BUF_INIT(4096), cn = BUF_INIT(1 << 16);
	assert_int_equal(dkim_select_headers((const uint8_t *)msg, hlen,
	                                     dkim_signed_headers, over, &hl,
	                                     &cn), 0);
	char rel[4096];
	size_t rl = sig_relaxed_noB(sig, rel, sizeof rel);
	assert_int_equal(buf_append(&cn, rel, rl), 0);
	uint8_t hh[32];
	unsigned hn = 0;
	assert_int_equal(EVP_Digest(cn.data, cn.len, hh, &hn, EVP_sha256(),
	                            NULL), 1);
	char b[1024], a[64];
	uint8_t raw[600];
	tag(sig, "b", b, sizeof b);
	tag(sig, "a", a, sizeof a);
	long bl = b64_decode(b, strlen(b), B64_PAD, raw, sizeof raw);
	assert_int_equal(bl, EVP_PKEY_get_size(k->pub));
	for (int flip = 0; flip < 2; flip++) {
		int ok;
		if (k->alg == DKIM_ALG_ED25519) {
			assert_string_equal(a, "ed25519-sha256");
			EVP_MD_CTX *md = EVP_MD_CTX_new();
			assert_int_equal(EVP_DigestVerifyInit(md, NULL, NULL, NULL,
			                                      k->pub), 1);
			ok = EVP_DigestVerify(md, raw, (size_t)bl, hh, hn);
			EVP_MD_CTX_free(md);
		} else {
			assert_string_equal(a, "rsa-sha256");
			EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(k->pub, NULL);
			assert_non_null(pc);
			assert_int_equal(EVP_PKEY_verify_init(pc), 1);
			assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc,
			                 RSA_PKCS1_PADDING), 1);
			assert_int_equal(EVP_PKEY_CTX_set_signature_md(pc,
			                 EVP_sha256()), 1);
			ok = EVP_PKEY_verify(pc, raw, (size_t)bl, hh, hn);
			EVP_PKEY_CTX_free(pc);
		}
		if (flip == 0)
			assert_int_equal(ok, 1);
		else
			assert_int_not_equal(ok, 1);
		hh[0] ^= 1;
	}
	buf_free(&hl);
	buf_free(&cn);
}

/* The fields of a block ("DKIM-Signature: ..." CRLF lines), split in
 * place: each without its final CRLF. */
static size_t split_fields(char *block, char *f[], size_t max)
{
	size_t n = 0;
	for (char *p = block; p && *p && n < max;) {
		f[n++] = p;
		char *next = strstr(p, "\r\nDKIM-Signature:");
		if (!next) {
			size_t l = strlen(p);
			assert_true(l >= 2 && strcmp(p + l - 2, "\r\n") == 0);
			p[l - 2] = '\0';
			break;
		}
		*next = '\0';
		p = next + 2;
	}
	return n;
}

/* Every message of the table, with each key alone and with RSA and
 * Ed25519 together (dual-signed): relayd's block is byte-identical to
 * libopendkim's (PKCS#1 v1.5 and Ed25519 are deterministic; t= fixed),
 * and each of its signatures verifies with OpenSSL. */
static void test_oracle(void **state)
{
	(void)state;
	okeys_make();
	static const size_t sets[][2] = {{0, SIZE_MAX}, {1, SIZE_MAX},
	                                 {2, SIZE_MAX}, {3, SIZE_MAX}, {1, 0},
	                                 {2, 0}};
	size_t nmsgs = sizeof msgs / sizeof *msgs, compared = 0;
	for (size_t si = 0; si < sizeof sets / sizeof *sets; si++) {
		size_t nk = sets[si][1] == SIZE_MAX ? 1 : 2;
		struct dkim_signer *lib = oracle_signer(sets[si], nk, true);
		struct dkim_signer *own = oracle_signer(sets[si], nk, false);
		for (size_t i = 0; i < nmsgs; i++) {
			char *a = NULL, *b = NULL, dom[256], why[512];
			const uint8_t *m = (const uint8_t *)msgs[i];
			size_t n = strlen(msgs[i]);
			assert_int_equal(dkim_sign_buf(lib, "q", m, n, &a, dom,
			                               sizeof dom, why, sizeof why),
			                 DKIM_SIGNED);
			assert_int_equal(dkim_sign_buf(own, "q", m, n, &b, dom,
			                               sizeof dom, why, sizeof why),
			                 DKIM_SIGNED);
			if (strcmp(a, b) != 0)
				fail_msg("key set %zu msg %zu: libopendkim\n%s\nours\n%s",
				         si, i, a, b);
			compared++;
			char *f[3];
			size_t nf = split_fields(b, f, 3);
			assert_int_equal(nf, nk);
			for (size_t k = 0; k < nf; k++) {
				check_lines(f[k], strlen(f[k]));
				/* RSA first, then Ed25519 (the signer's order). */
				const struct okey *key = &okeys[sets[si][k]];
				char sel[128];
				tag(f[k], "s", sel, sizeof sel);
				assert_string_equal(sel, key->selector);
				verify_b(msgs[i], f[k], key);
			}
			free(a);
			free(b);
		}
		dkim_signer_unref(lib);
		dkim_signer_unref(own);
	}
	assert_int_equal(compared, nmsgs * (sizeof sets / sizeof *sets));
	okeys_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_canon_header),
		cmocka_unit_test(test_canon_body),
		cmocka_unit_test(test_select_headers),
		cmocka_unit_test(test_sig_field),
		cmocka_unit_test(test_oracle),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
