/*
 * dkim/dkim_key.c - DKIM private keys (OpenSSL only, no libopendkim):
 * the dkim_key line, loading and checking a key file, generating keys for
 * relayctl, the public key record, and matching a served TXT record.
 * Contracts: dkim_key.h.
 */
#include "dkim/dkim_key.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/b64.h"

#define ED25519_RAW_LEN 32

void dkim_errf(char *err, size_t n, const char *fmt, ...)
{
	if (!err || n == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

/* OpenSSL's first queued error as text (queue emptied), or "unknown". */
static const char *ssl_reason(char *buf, size_t n)
{
	unsigned long e = ERR_get_error();
	ERR_clear_error();
	if (e == 0) {
		snprintf(buf, n, "unknown error");
		return buf;
	}
	const char *r = ERR_reason_error_string(e);
	snprintf(buf, n, "%s", r ? r : "unknown error");
	return buf;
}

const char *dkim_alg_name(enum dkim_alg alg)
{
	return alg == DKIM_ALG_ED25519 ? "ed25519" : "rsa";
}

/* ---- the dkim_key line ------------------------------------------------ */

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* One word of the line: [*p, end of word); *p moved past it and the
 * blanks after it. */
static size_t next_word(const char **p, const char **word)
{
	const char *s = *p;
	while (is_blank(*s))
		s++;
	*word = s;
	while (*s && !is_blank(*s))
		s++;
	size_t n = (size_t)(s - *word);
	while (is_blank(*s))
		s++;
	*p = s;
	return n;
}

/* Dot-separated labels of 1..63 letters, digits and '-' (not first or
 * last in a label): RFC 1035 §2.3.1 / RFC 6376 §3.1 sub-domain. Returns
 * NULL or what is wrong. */
static const char *check_labels(const char *s, size_t n)
{
	size_t lab = 0;
	if (n == 0)
		return "is empty";
	for (size_t i = 0; i <= n; i++) {
		if (i == n || s[i] == '.') {
			if (lab == 0)
				return "has an empty label";
			if (lab > 63)
				return "has a label longer than 63 characters";
			if (s[i - 1] == '-' || s[i - lab] == '-')
				return "has a label that starts or ends with '-'";
			lab = 0;
			continue;
		}
		unsigned char ch = (unsigned char)s[i];
		if (!isalnum(ch) && ch != '-')
			return "may hold only letters, digits, '-' and '.'";
		lab++;
	}
	return NULL;
}

int dkim_key_parse_line(const char *value, struct dkim_key_spec *out,
                        char *err, size_t errlen)
{
	const char *p = value, *dom, *sel, *why;
	size_t dn, sn;
	memset(out, 0, sizeof *out);
	if (!value)
		value = p = "";
	dn = next_word(&p, &dom);
	sn = next_word(&p, &sel);
	if (dn == 0 || sn == 0 || *p == '\0') {
		dkim_errf(err, errlen, "dkim_key needs three words: DOMAIN SELECTOR "
		          "/path/to/key.pem");
		return -EINVAL;
	}
	/* DOMAIN: a trailing root dot is allowed and dropped. */
	if (dn > 1 && dom[dn - 1] == '.')
		dn--;
	if (dn > sizeof out->domain - 1) {
		dkim_errf(err, errlen, "dkim_key: the domain is longer than 253 "
		          "characters");
		return -EINVAL;
	}
	if ((why = check_labels(dom, dn)) != NULL) {
		dkim_errf(err, errlen, "dkim_key: the domain '%.*s' %s", (int)dn, dom,
		          why);
		return -EINVAL;
	}
	if (sn > sizeof out->selector - 1) {
		dkim_errf(err, errlen, "dkim_key: the selector is longer than %zu "
		          "characters", sizeof out->selector - 1);
		return -EINVAL;
	}
	if ((why = check_labels(sel, sn)) != NULL) {
		dkim_errf(err, errlen, "dkim_key: the selector '%.*s' %s", (int)sn,
		          sel, why);
		return -EINVAL;
	}
	/* SELECTOR._domainkey.DOMAIN must itself be a DNS name (253). */
	if (sn + strlen("._domainkey.") + dn > 253) {
		dkim_errf(err, errlen, "dkim_key: %.*s._domainkey.%.*s is longer "
		          "than a DNS name may be (253)", (int)sn, sel, (int)dn, dom);
		return -EINVAL;
	}
	/* PATH: the rest, trailing blanks cut. */
	size_t pn = strlen(p);
	while (pn > 0 && is_blank(p[pn - 1]))
		pn--;
	if (p[0] != '/') {
		dkim_errf(err, errlen, "dkim_key: the key file must be an absolute "
		          "path (starting with '/')");
		return -EINVAL;
	}
	if (pn > sizeof out->path - 1) {
		dkim_errf(err, errlen, "dkim_key: the key file's path is longer than "
		          "%zu characters", sizeof out->path - 1);
		return -EINVAL;
	}
	for (size_t i = 0; i < pn; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
			dkim_errf(err, errlen, "dkim_key: the key file's path holds a "
			          "control character");
			return -EINVAL;
		}
	for (size_t i = 0; i < dn; i++)
		out->domain[i] = (char)tolower((unsigned char)dom[i]);
	memcpy(out->selector, sel, sn);
	memcpy(out->path, p, pn);
	return 0;
}

/* ---- loading ------------------------------------------------------------ */

void dkim_key_free(struct dkim_key *k)
{
	if (!k)
		return;
	if (k->pem) {
		OPENSSL_cleanse(k->pem, strlen(k->pem));
		free(k->pem);
	}
	free(k->pub_b64);
	free(k->pub_raw);
	free(k->pub_alt);
	free(k);
}

/* i2d_* output into malloc'd memory. */
static int der_of(EVP_PKEY *pk, bool pkcs1, unsigned char **out, size_t *len)
{
	int n = pkcs1 ? i2d_PublicKey(pk, NULL) : i2d_PUBKEY(pk, NULL);
	if (n <= 0)
		return -EIO;
	unsigned char *b = malloc((size_t)n), *w = b;
	if (!b)
		return -ENOMEM;
	if ((pkcs1 ? i2d_PublicKey(pk, &w) : i2d_PUBKEY(pk, &w)) != n) {
		free(b);
		return -EIO;
	}
	*out = b;
	*len = (size_t)n;
	return 0;
}

/* Fills k from a parsed private key: checks type and size, the PKCS#8
 * PEM text and the public forms. */
static int key_fill(struct dkim_key *k, EVP_PKEY *pk, const char *name,
                    char *err, size_t errlen)
{
	char ebuf[160];
	int id = EVP_PKEY_get_base_id(pk);
	if (id == EVP_PKEY_RSA) {
		k->alg = DKIM_ALG_RSA;
		k->bits = (unsigned)EVP_PKEY_get_bits(pk);
		if (k->bits < DKIM_RSA_BITS_MIN) {
			dkim_errf(err, errlen, "%s: an RSA key of %u bits is too weak "
			          "(at least %d; 2048 recommended)", name, k->bits,
			          DKIM_RSA_BITS_MIN);
			return -EINVAL;
		}
		if (k->bits > DKIM_RSA_BITS_MAX) {
			dkim_errf(err, errlen, "%s: an RSA key of %u bits is larger than "
			          "verifiers accept (at most %d)", name, k->bits,
			          DKIM_RSA_BITS_MAX);
			return -EINVAL;
		}
		k->weak = k->bits < DKIM_RSA_BITS_WEAK;
	} else if (id == EVP_PKEY_ED25519) {
		k->alg = DKIM_ALG_ED25519;
		k->bits = 256;
	} else {
		dkim_errf(err, errlen, "%s: a %s key; DKIM keys are RSA or Ed25519",
		          name, OBJ_nid2sn(id) ? OBJ_nid2sn(id) : "unknown");
		return -EINVAL;
	}

	/* The private key, re-encoded: one key, PKCS#8, nothing else. */
	BIO *mem = BIO_new(BIO_s_mem());
	if (!mem)
		return -ENOMEM;
	if (!PEM_write_bio_PrivateKey(mem, pk, NULL, NULL, 0, NULL, NULL)) {
		BIO_free(mem);
		dkim_errf(err, errlen, "%s: %s", name, ssl_reason(ebuf, sizeof ebuf));
		return -EIO;
	}
	char *data;
	long dl = BIO_get_mem_data(mem, &data);
	k->pem = dl > 0 ? malloc((size_t)dl + 1) : NULL;
	if (k->pem) {
		memcpy(k->pem, data, (size_t)dl);
		k->pem[dl] = '\0';
		OPENSSL_cleanse(data, (size_t)dl);
	}
	BIO_free(mem);
	if (!k->pem)
		return -ENOMEM;

	int r;
	if (k->alg == DKIM_ALG_RSA) {
		if ((r = der_of(pk, false, &k->pub_raw, &k->pub_raw_len)) < 0 ||
		    (r = der_of(pk, true, &k->pub_alt, &k->pub_alt_len)) < 0) {
			dkim_errf(err, errlen, "%s: cannot encode the public key", name);
			return r;
		}
	} else {
		size_t n = ED25519_RAW_LEN;
		k->pub_raw = malloc(n);
		if (!k->pub_raw)
			return -ENOMEM;
		if (!EVP_PKEY_get_raw_public_key(pk, k->pub_raw, &n) ||
		    n != ED25519_RAW_LEN) {
			dkim_errf(err, errlen, "%s: cannot read the Ed25519 public key",
			          name);
			return -EIO;
		}
		k->pub_raw_len = n;
	}
	k->pub_b64 = malloc(B64_ENCODED_LEN(k->pub_raw_len, 1) + 1);
	if (!k->pub_b64)
		return -ENOMEM;
	b64_encode(k->pub_raw, k->pub_raw_len, B64_PAD, k->pub_b64);
	return 0;
}

/* A passphrase callback that gives none: an encrypted key fails to load
 * instead of prompting on a terminal. */
static int no_pass_cb(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

int dkim_key_from_pem(const struct dkim_key_spec *spec, const char *pem,
                      size_t len, struct dkim_key **out, char *err,
                      size_t errlen)
{
	char ebuf[160];
	const char *name = spec->path[0] ? spec->path : "key";
	*out = NULL;
	if (len > DKIM_KEY_FILE_MAX) {
		dkim_errf(err, errlen, "%s: larger than %d bytes; not a DKIM key",
		          name, DKIM_KEY_FILE_MAX);
		return -EFBIG;
	}
	ERR_clear_error();
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	if (!b)
		return -ENOMEM;
	EVP_PKEY *pk = PEM_read_bio_PrivateKey(b, NULL, no_pass_cb, NULL);
	BIO_free(b);
	if (!pk) {
		if (memmem(pem, len, "ENCRYPTED", 9))
			dkim_errf(err, errlen, "%s: the private key is encrypted; relayd "
			          "needs it unencrypted (openssl pkey -in FILE -out NEW)",
			          name);
		else
			dkim_errf(err, errlen, "%s: not a PEM private key (%s)", name,
			          ssl_reason(ebuf, sizeof ebuf));
		ERR_clear_error();
		return -EINVAL;
	}
	struct dkim_key *k = calloc(1, sizeof *k);
	if (!k) {
		EVP_PKEY_free(pk);
		return -ENOMEM;
	}
	k->spec = *spec;
	int r = key_fill(k, pk, name, err, errlen);
	EVP_PKEY_free(pk);
	ERR_clear_error();
	if (r < 0) {
		if (r == -ENOMEM)
			dkim_errf(err, errlen, "%s: out of memory", name);
		dkim_key_free(k);
		return r;
	}
	*out = k;
	return 0;
}

int dkim_key_load(const struct dkim_key_spec *spec, struct dkim_key **out,
                  char *err, size_t errlen)
{
	const char *path = spec->path;
	struct stat st;
	*out = NULL;
	/* O_NOFOLLOW: a link planted where the key should be is refused
	 * rather than followed; O_NONBLOCK: a FIFO does not hang start-up
	 * (it is refused below as not a regular file). */
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY |
	              O_NONBLOCK);
	if (fd < 0) {
		int e = errno;
		if (e == ELOOP)
			dkim_errf(err, errlen, "%s: is a symbolic link; name the key "
			          "file itself", path);
		else
			dkim_errf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0) {
		int e = errno;
		dkim_errf(err, errlen, "%s: %s", path, strerror(e));
		close(fd);
		return -e;
	}
	if (!S_ISREG(st.st_mode)) {
		dkim_errf(err, errlen, "%s: not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	/* Loaded as root at start: a second name planted in a directory
	 * relayd's user may write must not make root read another root-only
	 * key (the TLS key) as this one. */
	if (st.st_nlink != 1) {
		dkim_errf(err, errlen, "%s: has %lu names (hard links); a key file "
		          "must have one", path, (unsigned long)st.st_nlink);
		close(fd);
		return -EPERM;
	}
	if (st.st_mode & (S_IROTH | S_IWOTH)) {
		dkim_errf(err, errlen, "%s: readable or writable by every user "
		          "(mode %04o); run chmod 0600 (or 0640 with relayd's group)",
		          path, (unsigned)(st.st_mode & 07777));
		close(fd);
		return -EPERM;
	}
	if (st.st_size > DKIM_KEY_FILE_MAX) {
		dkim_errf(err, errlen, "%s: larger than %d bytes; not a DKIM key",
		          path, DKIM_KEY_FILE_MAX);
		close(fd);
		return -EFBIG;
	}
	/* Read at most the limit + 1: a file that grew since fstat is
	 * caught, never read without bound. */
	size_t cap = (size_t)DKIM_KEY_FILE_MAX + 1, n = 0;
	char *buf = malloc(cap);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			int e = errno;
			dkim_errf(err, errlen, "%s: %s", path, strerror(e));
			OPENSSL_cleanse(buf, n);
			free(buf);
			close(fd);
			return -e;
		}
		if (got == 0 || (n += (size_t)got) == cap)
			break;
	}
	close(fd);
	int r;
	if (n > DKIM_KEY_FILE_MAX) {
		dkim_errf(err, errlen, "%s: larger than %d bytes; not a DKIM key",
		          path, DKIM_KEY_FILE_MAX);
		r = -EFBIG;
	} else {
		r = dkim_key_from_pem(spec, buf, n, out, err, errlen);
	}
	OPENSSL_cleanse(buf, n);
	free(buf);
	return r;
}

int dkim_key_generate(enum dkim_alg alg, unsigned bits, char **pem,
                      size_t *len, char *err, size_t errlen)
{
	char ebuf[160];
	EVP_PKEY *pk;
	*pem = NULL;
	*len = 0;
	ERR_clear_error();
	if (alg == DKIM_ALG_RSA) {
		if (bits < DKIM_RSA_BITS_MIN || bits > DKIM_RSA_BITS_MAX) {
			dkim_errf(err, errlen, "RSA keys are %d to %d bits (2048 is the "
			          "usual size)", DKIM_RSA_BITS_MIN, DKIM_RSA_BITS_MAX);
			return -EINVAL;
		}
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
	} else {
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	}
	if (!pk) {
		dkim_errf(err, errlen, "key generation failed: %s",
		          ssl_reason(ebuf, sizeof ebuf));
		return -EIO;
	}
	BIO *mem = BIO_new(BIO_s_mem());
	int r = -EIO;
	if (mem && PEM_write_bio_PrivateKey(mem, pk, NULL, NULL, 0, NULL, NULL)) {
		char *data;
		long dl = BIO_get_mem_data(mem, &data);
		if (dl > 0 && (*pem = malloc((size_t)dl + 1)) != NULL) {
			memcpy(*pem, data, (size_t)dl);
			(*pem)[dl] = '\0';
			*len = (size_t)dl;
			r = 0;
		} else {
			r = -ENOMEM;
		}
		OPENSSL_cleanse(data, dl > 0 ? (size_t)dl : 0);
	}
	if (r < 0)
		dkim_errf(err, errlen, "encoding the new key failed: %s",
		          r == -ENOMEM ? "out of memory" : ssl_reason(ebuf, sizeof ebuf));
	BIO_free(mem);
	EVP_PKEY_free(pk);
	ERR_clear_error();
	return r;
}

char *dkim_key_record(const struct dkim_key *k)
{
	const char *alg = dkim_alg_name(k->alg);
	size_t n = strlen("v=DKIM1; k=; p=") + strlen(alg) + strlen(k->pub_b64) + 1;
	char *s = malloc(n);
	if (s)
		snprintf(s, n, "v=DKIM1; k=%s; p=%s", alg, k->pub_b64);
	return s;
}

/* ---- matching a served record -------------------------------------------- */

/* RFC 6376 §3.2 white space: WSP and the CRLF of FWS (a TXT record has
 * none, but an operator's paste may). */
static bool is_fws(unsigned char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

#define TAGS_MAX 64

struct tag {
	const char *name, *val;
	size_t nlen, vlen;
};

/* Splits txt into tags. 0, or -EINVAL with why. */
static int tags_parse(const char *txt, size_t len, struct tag *tags,
                      size_t *ntags, char *why, size_t whylen)
{
	size_t i = 0, nt = 0;
	const unsigned char *s = (const unsigned char *)txt;
	for (;;) {
		while (i < len && is_fws(s[i]))
			i++;
		if (i == len)
			break;   /* end, after a final ';' or an empty record */
		size_t ns = i;
		if (!isalpha(s[i])) {
			dkim_errf(why, whylen, "not a tag name at offset %zu (a tag is "
			          "NAME=VALUE, separated by ';')", i);
			return -EINVAL;
		}
		while (i < len && (isalnum(s[i]) || s[i] == '_'))
			i++;
		size_t nn = i - ns;
		while (i < len && is_fws(s[i]))
			i++;
		if (i == len || s[i] != '=') {
			dkim_errf(why, whylen, "tag '%.*s' has no '='", (int)(nn > 32 ?
			          32 : nn), txt + ns);
			return -EINVAL;
		}
		i++;
		while (i < len && is_fws(s[i]))
			i++;
		size_t vs = i;
		while (i < len && s[i] != ';') {
			/* VALCHAR = %x21-3A / %x3C-7E, and FWS inside. */
			if (!is_fws(s[i]) && (s[i] < 0x21 || s[i] > 0x7e)) {
				dkim_errf(why, whylen, "tag '%.*s': byte 0x%02x is not "
				          "allowed in a value", (int)(nn > 32 ? 32 : nn),
				          txt + ns, s[i]);
				return -EINVAL;
			}
			i++;
		}
		size_t ve = i;
		while (ve > vs && is_fws(s[ve - 1]))
			ve--;
		for (size_t t = 0; t < nt; t++)
			if (tags[t].nlen == nn && memcmp(tags[t].name, txt + ns, nn) == 0) {
				/* §3.2: duplicate names make the whole list invalid. */
				dkim_errf(why, whylen, "tag '%.*s' appears twice",
				          (int)(nn > 32 ? 32 : nn), txt + ns);
				return -EINVAL;
			}
		if (nt == TAGS_MAX) {
			dkim_errf(why, whylen, "more than %d tags", TAGS_MAX);
			return -EINVAL;
		}
		tags[nt++] = (struct tag){txt + ns, txt + vs, nn, ve - vs};
		if (i == len)
			break;
		i++;   /* ';' */
	}
	*ntags = nt;
	return 0;
}

static const struct tag *tag_find(const struct tag *tags, size_t nt,
                                  const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < nt; i++)
		if (tags[i].nlen == n && memcmp(tags[i].name, name, n) == 0)
			return &tags[i];
	return NULL;
}

static bool val_is(const struct tag *t, const char *s)
{
	return t->vlen == strlen(s) && memcmp(t->val, s, t->vlen) == 0;
}

/* Whether a ':'-separated list (FWS around items) holds item. */
static bool list_has(const struct tag *t, const char *item)
{
	size_t n = strlen(item), i = 0;
	const unsigned char *s = (const unsigned char *)t->val;
	while (i <= t->vlen) {
		size_t b = i;
		while (i < t->vlen && s[i] != ':')
			i++;
		size_t e = i;
		while (b < e && is_fws(s[b]))
			b++;
		while (e > b && is_fws(s[e - 1]))
			e--;
		if (e - b == n && memcmp(s + b, item, n) == 0)
			return true;
		i++;
	}
	return false;
}

int dkim_key_match(const struct dkim_key *k, const char *txt, size_t len,
                   char *why, size_t whylen)
{
	struct tag tags[TAGS_MAX];
	size_t nt = 0;
	int r;
	dkim_errf(why, whylen, "%s", "");
	if ((r = tags_parse(txt, len, tags, &nt, why, whylen)) < 0)
		return r;
	if (nt == 0) {
		dkim_errf(why, whylen, "an empty record");
		return -EINVAL;
	}
	/* §3.6.1 v=: optional, but when present the first tag and DKIM1. */
	const struct tag *v = tag_find(tags, nt, "v");
	if (v && (v != &tags[0] || !val_is(v, "DKIM1"))) {
		dkim_errf(why, whylen, v != &tags[0] ? "v= is not the first tag" :
		          "v= is not DKIM1");
		return -EINVAL;
	}
	const struct tag *p = tag_find(tags, nt, "p");
	if (!p) {
		dkim_errf(why, whylen, "no p= tag (the public key is required)");
		return -EINVAL;
	}
	/* p= without its white space (§3.6.1: FWS may appear in base64). */
	char *b64 = malloc(p->vlen + 1);
	if (!b64) {
		dkim_errf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	size_t bn = 0;
	for (size_t i = 0; i < p->vlen; i++)
		if (!is_fws((unsigned char)p->val[i]))
			b64[bn++] = p->val[i];
	uint8_t *der = malloc(bn / 4 * 3 + 3);
	long dn = 0;
	if (!der) {
		free(b64);
		dkim_errf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	if (bn > 0 && (dn = b64_decode(b64, bn, B64_PAD, der, bn / 4 * 3 + 3)) < 0) {
		free(b64);
		free(der);
		dkim_errf(why, whylen, "p= is not valid base64");
		return -EINVAL;
	}
	free(b64);

	const struct tag *kt = tag_find(tags, nt, "k");
	const struct tag *h = tag_find(tags, nt, "h");
	const struct tag *st = tag_find(tags, nt, "s");
	const struct tag *t = tag_find(tags, nt, "t");
	const char *mine = dkim_alg_name(k->alg);
	r = 1;
	if (kt && !val_is(kt, "rsa") && !val_is(kt, "ed25519"))
		dkim_errf(why, whylen, "k=%.*s: a key type other than rsa and "
		          "ed25519", (int)(kt->vlen > 32 ? 32 : kt->vlen), kt->val);
	else if (kt ? !val_is(kt, mine) : k->alg != DKIM_ALG_RSA)
		dkim_errf(why, whylen, "the record is k=%s, the key is %s",
		          kt ? (val_is(kt, "rsa") ? "rsa" : "ed25519") : "rsa "
		          "(k= absent)", mine);
	else if (h && !list_has(h, "sha256"))
		dkim_errf(why, whylen, "h= does not allow sha256, the only hash "
		          "relayd signs with");
	else if (st && !list_has(st, "*") && !list_has(st, "email"))
		dkim_errf(why, whylen, "s= does not allow email");
	else if (dn == 0)
		dkim_errf(why, whylen, "the key is revoked (empty p=)");
	else if (((size_t)dn == k->pub_raw_len &&
	          memcmp(der, k->pub_raw, k->pub_raw_len) == 0) ||
	         (k->pub_alt && (size_t)dn == k->pub_alt_len &&
	          memcmp(der, k->pub_alt, k->pub_alt_len) == 0))
		r = 0;
	else if (k->alg == DKIM_ALG_ED25519 && dn != ED25519_RAW_LEN)
		dkim_errf(why, whylen, "p= is %ld bytes; an Ed25519 key is the %d "
		          "raw bytes (RFC 8463)", dn, ED25519_RAW_LEN);
	else if (k->alg == DKIM_ALG_ED25519)
		dkim_errf(why, whylen, "p= is another Ed25519 key");
	else {
		const unsigned char *q = der;
		EVP_PKEY *other = d2i_PUBKEY(NULL, &q, dn);
		if (other && EVP_PKEY_get_base_id(other) == EVP_PKEY_RSA)
			dkim_errf(why, whylen, "p= is another RSA key (%d bits)",
			          EVP_PKEY_get_bits(other));
		else
			dkim_errf(why, whylen, "p= is not this RSA public key (nor "
			          "any DER RSA public key)");
		EVP_PKEY_free(other);
		ERR_clear_error();
	}
	free(der);
	if (r == 0 && t && list_has(t, "y"))
		dkim_errf(why, whylen, "t=y: the domain is testing DKIM (verifiers "
		          "may ignore failures)");
	return r;
}
