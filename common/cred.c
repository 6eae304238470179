/*
 * common/cred.c - The credentials store (common/cred.h): the file's
 * parser and writer, the table (credentials sorted by name for lookup,
 * plus the file's lines in order so comments survive a rewrite), password
 * hashing and constant-time verification with scrypt or PBKDF2-SHA256
 * from OpenSSL, and the sender/recipient domain checks. Owns the file
 * format and the bounds on KDF parameters read from it. Logs nothing.
 */
#include "common/cred.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/addr.h"
#include "common/b64.h"
#include "common/buf.h"
#include "common/lines.h"
#include "common/log.h"

#define CRED_SALT_LEN 16          /* new hashes */
#define CRED_DK_LEN 32
#define CRED_SALT_MIN 8           /* accepted from the file */
#define CRED_SALT_MAX 64
#define CRED_DK_MIN 16
#define CRED_DK_MAX 64
/* scrypt bounds: a hostile file must not make one verification slow or
 * huge. The default (ln=15, r=8, p=1) needs 128*r*N = 32 MiB and 2^18
 * units of work; allowed are twice the memory and four times the work. */
#define CRED_SCRYPT_LN_MIN 10
#define CRED_SCRYPT_LN_MAX 20
#define CRED_SCRYPT_R_MAX 32
#define CRED_SCRYPT_P_MAX 16
#define CRED_SCRYPT_MEM_MAX (64ull << 20)
#define CRED_SCRYPT_WORK_MAX (1ull << 20)
#define CRED_PBKDF2_ITER_MIN 1000
#define CRED_PBKDF2_ITER_MAX 2000000
#define CRED_DOMAIN_MAX 253
#define CRED_LABEL_MAX 63
#define CRED_LOCAL_MAX 64
#define QUOTE_MAX 72
/* A valid hash of the longest kind relayd writes, for dry runs. */
#define H_STANDIN "$pbkdf2-sha256$i=1000000$AAAAAAAAAAAAAAAAAAAAAA$" \
                  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

const struct cred_kdf cred_kdf_scrypt = {
	.alg = CRED_SCRYPT, .ln = 15, .r = 8, .p = 1};
const struct cred_kdf cred_kdf_pbkdf2 = {
	.alg = CRED_PBKDF2_SHA256, .iter = 600000};

const char *const cred_result_names[] = {
	[CRED_OK] = "ok",
	[CRED_BAD_PASSWORD] = "bad password",
	[CRED_UNKNOWN] = "unknown",
	[CRED_DISABLED] = "disabled",
	[CRED_ERROR] = "error",
};

/* A hash decoded once, at load. */
struct cred_hash {
	struct cred_kdf kdf;
	uint8_t salt[CRED_SALT_MAX];
	size_t saltlen;
	uint8_t dk[CRED_DK_MAX];
	size_t dklen;
};

struct cred {
	char name[CRED_NAME_MAX + 1];
	char owner[CRED_NAME_MAX + 1];
	char *hash;                 /* the text, written back as read */
	struct cred_hash h;
	char **from, **to;
	size_t nfrom, nto;
	uint32_t hourly, daily;
	bool disabled;
	size_t line;                /* in the file; 0: added */
};

/* One line of the file: a comment or blank line (text), or a credential. */
struct cred_line {
	char *text;
	struct cred *cred;
};

struct cred_store {
	int refs;                   /* atomic */
	struct cred_line *lines;    /* file order */
	size_t nlines, caplines;
	struct cred **byname; /* sorted, case-insensitive */
	size_t n;
	struct cred_hash dummy;     /* for unknown names */
	uint64_t kdf_runs;          /* atomic */
	uint64_t kdf_work;          /* atomic: hash_cost() of those runs */
};

/* ---- small helpers ------------------------------------------------------ */

static void fmt(char *dst, size_t len, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
static void fmt(char *dst, size_t len, const char *f, ...)
{
	if (!dst || len == 0)
		return;
	va_list ap;
	va_start(ap, f);
	vsnprintf(dst, len, f, ap);
	va_end(ap);
}

static const char *quote(char dst[QUOTE_MAX], const char *s, size_t n)
{
	return log_escape(dst, QUOTE_MAX, s, n);
}

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9');
}

static bool is_name_char(char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '@' || c == '+' ||
	       c == '-';
}

/* NAME and OWNER: [A-Za-z0-9._@+-], min..64 characters. */
static bool name_ok(const char *s, size_t n, size_t min)
{
	if (n < min || n > CRED_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_name_char(s[i]))
			return false;
	return true;
}

/* LDH labels, 1-63 each, no '-' first or last, 253 in all. */
static bool domain_ok(const char *s, size_t n)
{
	if (n == 0 || n > CRED_DOMAIN_MAX)
		return false;
	size_t label = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || s[i] == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!is_alnum(s[i]) && s[i] != '-')
			return false;
		if (label == 0 && s[i] == '-')
			return false;
		if (++label > CRED_LABEL_MAX)
			return false;
	}
	return true;
}

/* RFC 5322 dot-atom of atext, without '|' (the list separator). */
static bool local_ok(const char *s, size_t n)
{
	static const char special[] = "!#$%&'*+/=?^_`{}~-";
	if (n == 0 || n > CRED_LOCAL_MAX || s[0] == '.' || s[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i - 1] == '.')
				return false;
		} else if (!is_alnum(s[i]) && !strchr(special, s[i])) {
			return false;
		}
	}
	return true;
}

/* A from= item: a domain, or local@domain. */
static bool sender_item_ok(const char *s, size_t n)
{
	const char *at = memchr(s, '@', n);
	if (!at)
		return domain_ok(s, n);
	size_t ll = (size_t)(at - s);
	return local_ok(s, ll) && domain_ok(at + 1, n - ll - 1);
}

static char *dupn(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* Decimal, no sign, at most 10 digits (fits in 64 bits with room). */
static bool parse_num(const char **pp, const char *end, uint64_t *v)
{
	const char *p = *pp;
	uint64_t x = 0;
	size_t nd = 0;
	for (; p < end && *p >= '0' && *p <= '9'; p++, nd++) {
		if (nd == 10)
			return false;
		x = x * 10 + (uint64_t)(*p - '0');
	}
	if (nd == 0)
		return false;
	*pp = p;
	*v = x;
	return true;
}

/* ---- KDF ----------------------------------------------------------------- */

/* Within the bounds of cred.h? why says what is not. */
static bool kdf_ok(const struct cred_kdf *k, const char **why)
{
	if (k->alg == CRED_SCRYPT) {
		if (k->ln < CRED_SCRYPT_LN_MIN || k->ln > CRED_SCRYPT_LN_MAX) {
			*why = "scrypt ln out of range (10-20)";
			return false;
		}
		if (k->r < 1 || k->r > CRED_SCRYPT_R_MAX) {
			*why = "scrypt r out of range (1-32)";
			return false;
		}
		if (k->p < 1 || k->p > CRED_SCRYPT_P_MAX) {
			*why = "scrypt p out of range (1-16)";
			return false;
		}
		uint64_t n = 1ull << k->ln;
		if (128ull * k->r * n > CRED_SCRYPT_MEM_MAX) {
			*why = "scrypt parameters need more than 64 MiB";
			return false;
		}
		if (n * k->r * k->p > CRED_SCRYPT_WORK_MAX) {
			*why = "scrypt parameters too costly (2^ln*r*p > 2^20)";
			return false;
		}
		return true;
	}
	if (k->alg == CRED_PBKDF2_SHA256) {
		if (k->iter < CRED_PBKDF2_ITER_MIN ||
		    k->iter > CRED_PBKDF2_ITER_MAX) {
			*why = "pbkdf2 iterations out of range (1000-2000000)";
			return false;
		}
		return true;
	}
	*why = "unknown hash scheme";
	return false;
}

/* Derives outlen bytes. The parameters were checked by kdf_ok(). */
static int kdf_run(const struct cred_kdf *k, const void *pw,
                   size_t pwlen, const uint8_t *salt, size_t saltlen,
                   uint8_t *out, size_t outlen)
{
	if (k->alg == CRED_SCRYPT) {
		uint64_t n = 1ull << k->ln;
		/* What OpenSSL allocates (B and V, RFC 7914 §6), with room;
		 * its default limit (32 MiB) is just below the default's need. */
		uint64_t maxmem = 128ull * k->r * (n + 2) + 128ull * k->r * k->p +
		                  4096;
		return EVP_PBE_scrypt(pwlen ? pw : "", pwlen, salt, saltlen, n, k->r,
		                      k->p, maxmem, out, outlen) == 1 ? 0 : -EIO;
	}
	return PKCS5_PBKDF2_HMAC(pwlen ? pw : "", (int)pwlen, salt, (int)saltlen,
	                         (int)k->iter, EVP_sha256(), (int)outlen,
	                         out) == 1 ? 0 : -EIO;
}

/* What one KDF run with h's parameters costs, in PBKDF2-SHA256 iterations
 * (cred.h: cred_kdf_cost). PBKDF2 derives its output in 32-byte blocks,
 * each block a full run of the iterations. scrypt does 2^ln*r*p units of
 * BlockMix work (RFC 7914 §5-6: 2N BlockMix calls of 2r Salsa20/8 cores,
 * p times); one unit measured at about two PBKDF2-SHA256 iterations with
 * OpenSSL 3 on x86-64 (SHA-NI or not), hence the weight 2. Within one
 * algorithm the order is exact; across the two only the weight decides,
 * and it only has to pick the costlier of two hashes for the dummy. */
static uint64_t hash_cost(const struct cred_kdf *k, size_t dklen)
{
	if (k->alg == CRED_SCRYPT)
		return (1ull << k->ln) * k->r * k->p * 2;
	uint64_t blocks = (dklen + 31) / 32;
	return (uint64_t)k->iter * (blocks ? blocks : 1);
}

uint64_t cred_kdf_cost(const struct cred_kdf *k, size_t dklen)
{
	return hash_cost(k, dklen);
}

/* "$scrypt$ln=15,r=8,p=1$SALT$HASH" or "$pbkdf2-sha256$i=N$SALT$HASH". */
static bool hash_parse(const char *s, size_t n, struct cred_hash *h,
                       const char **why)
{
	static const char scrypt_pfx[] = "$scrypt$ln=";
	static const char pbkdf2_pfx[] = "$pbkdf2-sha256$i=";
	const char *p = s, *end = s + n;
	uint64_t a, b, c;

	memset(h, 0, sizeof *h);
	*why = "not a password hash ($scrypt$... or $pbkdf2-sha256$...)";
	if (n >= CRED_HASH_MAX)
		return false;
	if ((size_t)(end - p) > sizeof scrypt_pfx - 1 &&
	    memcmp(p, scrypt_pfx, sizeof scrypt_pfx - 1) == 0) {
		p += sizeof scrypt_pfx - 1;
		*why = "bad scrypt parameters (expected ln=N,r=N,p=N)";
		if (!parse_num(&p, end, &a) || end - p < 3 ||
		    memcmp(p, ",r=", 3) != 0)
			return false;
		p += 3;
		if (!parse_num(&p, end, &b) || end - p < 3 ||
		    memcmp(p, ",p=", 3) != 0)
			return false;
		p += 3;
		if (!parse_num(&p, end, &c))
			return false;
		/* Bounded again by kdf_ok(); this only keeps the casts exact. */
		if (a > 64 || b > UINT32_MAX || c > UINT32_MAX) {
			*why = "scrypt parameters out of range";
			return false;
		}
		h->kdf.alg = CRED_SCRYPT;
		h->kdf.ln = (unsigned)a;
		h->kdf.r = (unsigned)b;
		h->kdf.p = (unsigned)c;
	} else if ((size_t)(end - p) > sizeof pbkdf2_pfx - 1 &&
	           memcmp(p, pbkdf2_pfx, sizeof pbkdf2_pfx - 1) == 0) {
		p += sizeof pbkdf2_pfx - 1;
		*why = "bad pbkdf2 parameters (expected i=N)";
		if (!parse_num(&p, end, &a))
			return false;
		if (a > UINT32_MAX) {
			*why = "pbkdf2 iterations out of range";
			return false;
		}
		h->kdf.alg = CRED_PBKDF2_SHA256;
		h->kdf.iter = (unsigned)a;
	} else {
		return false;
	}
	if (!kdf_ok(&h->kdf, why))
		return false;

	*why = "bad salt or hash (expected $SALT$HASH in base64)";
	if (p == end || *p != '$')
		return false;
	p++;
	const char *d = memchr(p, '$', (size_t)(end - p));
	if (!d)
		return false;
	int sl = (int)b64_decode(p, (size_t)(d - p), 0, h->salt, sizeof h->salt);
	int dl = (int)b64_decode(d + 1, (size_t)(end - d - 1), 0, h->dk,
	                         sizeof h->dk);
	if (sl < 0 || dl < 0)
		return false;
	if (sl < CRED_SALT_MIN || dl < CRED_DK_MIN) {
		*why = "salt (8-64 bytes) or hash (16-64 bytes) of a bad length";
		return false;
	}
	h->saltlen = (size_t)sl;
	h->dklen = (size_t)dl;
	return true;
}

int cred_hash(const void *pw, size_t pwlen,
                    const struct cred_kdf *kdf, char *out,
                    size_t outlen)
{
	uint8_t salt[CRED_SALT_LEN], dk[CRED_DK_LEN];
	char s64[CRED_SALT_LEN * 2], d64[CRED_DK_LEN * 2];
	const char *why;
	int rc, w;

	if (!kdf)
		kdf = &cred_kdf_scrypt;
	if (!pw || pwlen == 0 || pwlen > CRED_PASSWORD_MAX ||
	    memchr(pw, '\0', pwlen) || !kdf_ok(kdf, &why))
		return -EINVAL;
	if (RAND_bytes(salt, sizeof salt) != 1)
		return -EIO;
	rc = kdf_run(kdf, pw, pwlen, salt, sizeof salt, dk, sizeof dk);
	if (rc < 0)
		goto done;
	b64_encode(salt, sizeof salt, 0, s64);
	b64_encode(dk, sizeof dk, 0, d64);
	if (kdf->alg == CRED_SCRYPT)
		w = snprintf(out, outlen, "$scrypt$ln=%u,r=%u,p=%u$%s$%s", kdf->ln,
		             kdf->r, kdf->p, s64, d64);
	else
		w = snprintf(out, outlen, "$pbkdf2-sha256$i=%u$%s$%s", kdf->iter,
		             s64, d64);
	rc = w < 0 || (size_t)w >= outlen ? -ENOBUFS : 0;
done:
	OPENSSL_cleanse(dk, sizeof dk);
	OPENSSL_cleanse(d64, sizeof d64);
	if (rc < 0 && outlen)
		out[0] = '\0';
	return rc;
}

int cred_generate(char *out, size_t outlen)
{
	uint8_t r[CRED_GEN_LEN / 4 * 3];
	if (outlen < CRED_GEN_LEN + 1)
		return -ENOBUFS;
	if (RAND_bytes(r, sizeof r) != 1)
		return -EIO;
	b64_encode(r, sizeof r, B64_URL, out);
	OPENSSL_cleanse(r, sizeof r);
	return 0;
}

/* ---- credentials --------------------------------------------------------- */

static void cred_free(struct cred *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->nfrom; i++)
		free(c->from[i]);
	for (size_t i = 0; i < c->nto; i++)
		free(c->to[i]);
	free(c->from);
	free(c->to);
	free(c->hash);
	free(c);
}

/* Splits [s, s+n) on any of seps into *out (appended); each item is
 * checked by ok(). what names the list in messages. */
static int list_parse(const char *s, size_t n, const char *seps,
                      bool (*ok)(const char *, size_t), const char *what,
                      char ***out, size_t *nout, char *msg, size_t msglen)
{
	char q[QUOTE_MAX];
	if (n == 0) {
		fmt(msg, msglen, "empty %s list", what);
		return -EINVAL;
	}
	const char *p = s, *end = s + n;
	for (;;) {
		const char *e = p;
		while (e < end && !strchr(seps, *e))
			e++;
		size_t len = (size_t)(e - p);
		if (len == 0) {
			fmt(msg, msglen, "empty item in %s list", what);
			return -EINVAL;
		}
		if (!ok(p, len)) {
			fmt(msg, msglen, "bad %s item '%s'", what, quote(q, p, len));
			return -EINVAL;
		}
		char **nv = realloc(*out, (*nout + 1) * sizeof **out);
		if (!nv)
			goto nomem;
		*out = nv;
		if (!(nv[*nout] = dupn(p, len)))
			goto nomem;
		(*nout)++;
		if (e == end)
			return 0;
		p = e + 1;
	}
nomem:
	fmt(msg, msglen, "out of memory");
	return -ENOMEM;
}

static bool quota_parse(const char *s, size_t n, uint32_t *v)
{
	const char *p = s;
	uint64_t x;
	if (!parse_num(&p, s + n, &x) || p != s + n || x < 1 ||
	    x > CRED_QUOTA_MAX)
		return false;
	*v = (uint32_t)x;
	return true;
}

/* OPTIONS: comma-separated key=value, each key once. */
static int options_parse(struct cred *c, const char *s, size_t n,
                         char *msg, size_t msglen)
{
	static const char *const keys[] = {"from", "to", "hourly", "daily",
	                                   "disabled"};
	unsigned seen = 0;
	char q[QUOTE_MAX];
	const char *p = s, *end = s + n;
	if (n == 0)
		return 0;
	for (;;) {
		const char *e = memchr(p, ',', (size_t)(end - p));
		if (!e)
			e = end;
		const char *eq = memchr(p, '=', (size_t)(e - p));
		if (!eq) {
			fmt(msg, msglen, "option '%s' is not KEY=VALUE",
			    quote(q, p, (size_t)(e - p)));
			return -EINVAL;
		}
		size_t kl = (size_t)(eq - p), vl = (size_t)(e - eq - 1);
		const char *v = eq + 1;
		size_t k = 0;
		for (; k < sizeof keys / sizeof *keys; k++)
			if (strlen(keys[k]) == kl && memcmp(keys[k], p, kl) == 0)
				break;
		if (k == sizeof keys / sizeof *keys) {
			fmt(msg, msglen, "unknown option '%s' (expected from, to, "
			    "hourly, daily or disabled)", quote(q, p, kl));
			return -EINVAL;
		}
		if (seen & (1u << k)) {
			fmt(msg, msglen, "option %s given twice", keys[k]);
			return -EINVAL;
		}
		seen |= 1u << k;
		int rc = 0;
		switch (k) {
		case 0:
			rc = list_parse(v, vl, "|", sender_item_ok, "from", &c->from,
			                &c->nfrom, msg, msglen);
			break;
		case 1:
			rc = list_parse(v, vl, "|", domain_ok, "to", &c->to, &c->nto,
			                msg, msglen);
			break;
		case 2:
		case 3:
			if (!quota_parse(v, vl, k == 2 ? &c->hourly : &c->daily)) {
				fmt(msg, msglen, "%s: not a number from 1 to %u: '%s'",
				    keys[k], CRED_QUOTA_MAX, quote(q, v, vl));
				rc = -EINVAL;
			}
			break;
		default:
			if (vl != 1 || (v[0] != '0' && v[0] != '1')) {
				fmt(msg, msglen, "disabled: expected 0 or 1: '%s'",
				    quote(q, v, vl));
				rc = -EINVAL;
			}
			c->disabled = v[0] == '1';
			break;
		}
		if (rc < 0)
			return rc;
		if (e == end)
			return 0;
		p = e + 1;
	}
}

static int set_name(char *dst, const char *s, size_t n, size_t min,
                    const char *what, char *msg, size_t msglen)
{
	char q[QUOTE_MAX];
	if (!name_ok(s, n, min)) {
		fmt(msg, msglen, "bad %s '%s' (%zu-64 of A-Z a-z 0-9 . _ @ + -)",
		    what, quote(q, s, n), min);
		return -EINVAL;
	}
	memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

static int set_hash(struct cred *c, const char *s, size_t n,
                    char *msg, size_t msglen)
{
	struct cred_hash h;
	const char *why;
	if (!hash_parse(s, n, &h, &why)) {
		fmt(msg, msglen, "password hash: %s", why);
		return -EINVAL;
	}
	char *d = dupn(s, n);
	if (!d) {
		fmt(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	free(c->hash);
	c->hash = d;
	c->h = h;
	return 0;
}

/* One credential line (no white space; checked by the caller). */
static int cred_parse(const char *s, size_t n, struct cred **out,
                      char *msg, size_t msglen)
{
	const char *f[4];
	size_t fl[4], nf = 0;
	const char *p = s, *end = s + n;
	for (;;) {
		const char *c = memchr(p, ':', (size_t)(end - p));
		if (nf == 4) {
			fmt(msg, msglen, "too many ':' fields (expected "
			    "NAME:HASH:OWNER:OPTIONS)");
			return -EINVAL;
		}
		f[nf] = p;
		fl[nf++] = (size_t)((c ? c : end) - p);
		if (!c)
			break;
		p = c + 1;
	}
	struct cred *cr = calloc(1, sizeof *cr);
	if (!cr) {
		fmt(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	int rc = set_name(cr->name, f[0], fl[0], 1, "name", msg, msglen);
	if (rc == 0 && nf < 2) {
		fmt(msg, msglen, "no password hash (expected "
		    "NAME:HASH:OWNER:OPTIONS)");
		rc = -EINVAL;
	}
	if (rc == 0)
		rc = set_hash(cr, f[1], fl[1], msg, msglen);
	if (rc == 0 && nf > 2)
		rc = set_name(cr->owner, f[2], fl[2], 0, "owner", msg, msglen);
	if (rc == 0 && nf > 3)
		rc = options_parse(cr, f[3], fl[3], msg, msglen);
	if (rc < 0) {
		cred_free(cr);
		return rc;
	}
	*out = cr;
	return 0;
}

/* NAME:HASH:OWNER:OPTIONS, canonical option order. */
static int cred_format(const struct cred *c, struct buf *b)
{
	int rc = buf_printf(b, "%s:%s:%s:", c->name, c->hash, c->owner);
	const char *sep = "";
	if (rc == 0 && c->nfrom) {
		rc = buf_appends(b, "from=");
		for (size_t i = 0; rc == 0 && i < c->nfrom; i++)
			rc = buf_printf(b, "%s%s", i ? "|" : "", c->from[i]);
		sep = ",";
	}
	if (rc == 0 && c->nto) {
		rc = buf_printf(b, "%sto=", sep);
		for (size_t i = 0; rc == 0 && i < c->nto; i++)
			rc = buf_printf(b, "%s%s", i ? "|" : "", c->to[i]);
		sep = ",";
	}
	if (rc == 0 && c->hourly) {
		rc = buf_printf(b, "%shourly=%u", sep, (unsigned)c->hourly);
		sep = ",";
	}
	if (rc == 0 && c->daily) {
		rc = buf_printf(b, "%sdaily=%u", sep, (unsigned)c->daily);
		sep = ",";
	}
	if (rc == 0 && c->disabled)
		rc = buf_printf(b, "%sdisabled=1", sep);
	if (rc == 0)
		rc = buf_appends(b, "\n");
	return rc;
}

/* ---- the table ----------------------------------------------------------- */

struct cred_store *cred_store_new(void)
{
	struct cred_store *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->refs = 1;
	/* The dummy for an empty table: default parameters, zero salt. */
	t->dummy.kdf = cred_kdf_scrypt;
	t->dummy.saltlen = CRED_SALT_LEN;
	t->dummy.dklen = CRED_DK_LEN;
	return t;
}

struct cred_store *cred_store_ref(struct cred_store *t)
{
	__atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
	return t;
}

void cred_store_free(struct cred_store *t)
{
	if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (size_t i = 0; i < t->nlines; i++) {
		free(t->lines[i].text);
		cred_free(t->lines[i].cred);
	}
	free(t->lines);
	free(t->byname);
	free(t);
}

static int line_append(struct cred_store *t, char *text,
                       struct cred *cred)
{
	if (t->nlines == t->caplines) {
		size_t cap = t->caplines ? t->caplines * 2 : 16;
		struct cred_line *nl = realloc(t->lines, cap * sizeof *nl);
		if (!nl)
			return -ENOMEM;
		t->lines = nl;
		t->caplines = cap;
	}
	t->lines[t->nlines].text = text;
	t->lines[t->nlines].cred = cred;
	t->nlines++;
	return 0;
}

static int cred_cmp(const void *a, const void *b)
{
	const struct cred *x = *(const struct cred *const *)a;
	const struct cred *y = *(const struct cred *const *)b;
	return strcasecmp(x->name, y->name);
}

/* The hash unknown names are checked against: the parameters of the
 * costliest hash in the table (hash_cost; the first by name on a tie), a
 * zero salt of that hash's length and an expected value nothing derives.
 * With PBKDF2 hashes imported beside scrypt ones, the first credential's
 * parameters could be the cheap ones: an unknown name would then answer
 * in a fraction of the time a known one takes, and tell a guesser which
 * names exist. An empty table uses the default (scrypt). */
static void dummy_update(struct cred_store *t)
{
	const struct cred_hash *best = NULL;
	uint64_t max = 0;
	for (size_t i = 0; i < t->n; i++) {
		const struct cred_hash *h = &t->byname[i]->h;
		uint64_t c = hash_cost(&h->kdf, h->dklen);
		if (!best || c > max) {
			best = h;
			max = c;
		}
	}
	memset(&t->dummy, 0, sizeof t->dummy);
	t->dummy.kdf = best ? best->kdf : cred_kdf_scrypt;
	t->dummy.saltlen = best ? best->saltlen : CRED_SALT_LEN;
	t->dummy.dklen = best ? best->dklen : CRED_DK_LEN;
}

/* Rebuilds the sorted index and the dummy hash after a change. When two
 * credentials share a name, *dup1 and *dup2 point at them (file order) and
 * -EEXIST is returned. */
static int index_build(struct cred_store *t, const struct cred **dup1,
                       const struct cred **dup2)
{
	size_t n = 0;
	for (size_t i = 0; i < t->nlines; i++)
		n += t->lines[i].cred != NULL;
	struct cred **v = malloc((n ? n : 1) * sizeof *v);
	if (!v)
		return -ENOMEM;
	n = 0;
	for (size_t i = 0; i < t->nlines; i++)
		if (t->lines[i].cred)
			v[n++] = t->lines[i].cred;
	/* qsort is not stable; the line numbers order the duplicates. */
	qsort(v, n, sizeof *v, cred_cmp);
	for (size_t i = 1; i < n; i++)
		if (strcasecmp(v[i - 1]->name, v[i]->name) == 0) {
			bool first = v[i - 1]->line <= v[i]->line;
			*dup1 = first ? v[i - 1] : v[i];
			*dup2 = first ? v[i] : v[i - 1];
			free(v);
			return -EEXIST;
		}
	free(t->byname);
	t->byname = v;
	t->n = n;
	dummy_update(t);
	return 0;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int parse_line(struct cred_store *t, const char *name, size_t lineno,
                      const char *s, size_t n, char *err, size_t errlen)
{
	char msg[256];
	int rc;
	/* cred_store_parse's lines_next: at most CRED_LINE_MAX, no NUL. */
	RELAY_ASSERT(n <= CRED_LINE_MAX);
	if (n > 0 && s[n - 1] == '\r')
		n--;
	const char *p = s;
	size_t m = n;
	while (m > 0 && is_blank(*p)) {
		p++;
		m--;
	}
	while (m > 0 && is_blank(p[m - 1]))
		m--;
	if (m == 0 || *p == '#') {
		char *text = dupn(s, n);
		if (!text || line_append(t, text, NULL) < 0) {
			free(text);
			fmt(err, errlen, "out of memory");
			return -ENOMEM;
		}
		return 0;
	}
	for (size_t i = 0; i < m; i++)
		if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f) {
			fmt(err, errlen, "%s:%zu: white space or control character "
			    "in a credential line", name, lineno);
			return -EINVAL;
		}
	struct cred *c = NULL;
	if ((rc = cred_parse(p, m, &c, msg, sizeof msg)) < 0) {
		fmt(err, errlen, "%s:%zu: %s", name, lineno, msg);
		return rc;
	}
	c->line = lineno;
	if (line_append(t, NULL, c) < 0) {
		cred_free(c);
		fmt(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

int cred_store_parse(const char *name, const char *text, size_t len,
                      struct cred_store **out, char *err, size_t errlen)
{
	struct cred_store *t = cred_store_new();
	struct lines it;
	const char *s;
	size_t n;
	int rc = 0;
	*out = NULL;
	if (!t) {
		fmt(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (!name)
		name = "(credentials)";
	lines_init(&it, text, len, CRED_LINE_MAX, LINES_NO_NUL);
	while ((rc = lines_next(&it, &s, &n)) != 0) {
		if (rc < 0) {
			lines_error(&it, rc, name, err, errlen);
			rc = -EINVAL;
			goto fail;
		}
		if ((rc = parse_line(t, name, it.lineno, s, n, err, errlen)) < 0)
			goto fail;
	}
	const struct cred *d1, *d2;
	rc = index_build(t, &d1, &d2);
	if (rc == -EEXIST) {
		fmt(err, errlen, "%s:%zu: duplicate name '%s' (also on line %zu)",
		    name, d2->line, d2->name, d1->line);
		rc = -EINVAL;
	} else if (rc < 0) {
		fmt(err, errlen, "out of memory");
	}
	if (rc < 0)
		goto fail;
	*out = t;
	return 0;
fail:
	cred_store_free(t);
	return rc;
}

int cred_store_load(const char *path, struct cred_store **out, char *err,
                     size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	*out = NULL;
	/* A snapshot: a file that grows while read is tried again later. */
	int rc = lines_read_file(path, CRED_FILE_MAX,
	                         LINES_REGULAR | LINES_SNAPSHOT, &text, &len);
	if (rc < 0) {
		fmt(err, errlen, "cannot read %s: %s", path,
		    rc == -EINVAL ? "not a regular file" :
		    rc == -EAGAIN ? "file changed while read" : strerror(-rc));
		return rc;
	}
	rc = cred_store_parse(path, text, len, out, err, errlen);
	free(text);
	return rc;
}

size_t cred_store_count(const struct cred_store *t)
{
	return t->n;
}

const struct cred *cred_store_at(const struct cred_store *t,
                                        size_t i)
{
	return i < t->n ? t->byname[i] : NULL;
}

static struct cred *creds_find(const struct cred_store *t,
                                     const char *name)
{
	if (!name || !name_ok(name, strlen(name), 1))
		return NULL;
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcasecmp(name, t->byname[mid]->name);
		if (c == 0)
			return t->byname[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct cred *cred_store_find(const struct cred_store *t,
                                          const char *name)
{
	return creds_find(t, name);
}

enum cred_result cred_store_verify(const struct cred_store *t,
                                          const char *name, const void *pw,
                                          size_t pwlen,
                                          const struct cred **cred)
{
	const struct cred *c = creds_find(t, name);
	const struct cred_hash *h = c ? &c->h : &t->dummy;
	uint8_t dk[CRED_DK_MAX];
	/* A password that can never be right (empty, too long, NUL inside:
	 * cred_hash refuses them) still costs one KDF run. */
	bool pw_ok = pw && pwlen > 0 && pwlen <= CRED_PASSWORD_MAX &&
	             !memchr(pw, '\0', pwlen);
	int rc = kdf_run(&h->kdf, pw_ok ? pw : "", pw_ok ? pwlen : 0, h->salt,
	                 h->saltlen, dk, h->dklen);
	__atomic_add_fetch(&((struct cred_store *)t)->kdf_runs, 1,
	                   __ATOMIC_RELAXED);
	__atomic_add_fetch(&((struct cred_store *)t)->kdf_work,
	                   hash_cost(&h->kdf, h->dklen), __ATOMIC_RELAXED);
	bool match = rc == 0 && CRYPTO_memcmp(dk, h->dk, h->dklen) == 0;
	OPENSSL_cleanse(dk, sizeof dk);
	if (cred)
		*cred = c;
	if (rc < 0)
		return CRED_ERROR;
	if (!c)
		return CRED_UNKNOWN;
	if (!match || !pw_ok)
		return CRED_BAD_PASSWORD;
	return c->disabled ? CRED_DISABLED : CRED_OK;
}

uint64_t cred_store_kdf_count(const struct cred_store *t)
{
	return __atomic_load_n(&t->kdf_runs, __ATOMIC_RELAXED);
}

uint64_t cred_store_kdf_work(const struct cred_store *t)
{
	return __atomic_load_n(&t->kdf_work, __ATOMIC_RELAXED);
}

/* ---- one credential ------------------------------------------------------ */

const char *cred_name(const struct cred *c)
{
	return c->name;
}

const char *cred_owner(const struct cred *c)
{
	return c->owner;
}

bool cred_disabled(const struct cred *c)
{
	return c->disabled;
}

uint32_t cred_hourly(const struct cred *c)
{
	return c->hourly;
}

uint32_t cred_daily(const struct cred *c)
{
	return c->daily;
}

size_t cred_nfrom(const struct cred *c)
{
	return c->nfrom;
}

const char *cred_from(const struct cred *c, size_t i)
{
	return i < c->nfrom ? c->from[i] : NULL;
}

size_t cred_nto(const struct cred *c)
{
	return c->nto;
}

const char *cred_to(const struct cred *c, size_t i)
{
	return i < c->nto ? c->to[i] : NULL;
}

bool cred_sender_ok(const struct cred *c, const char *addr)
{
	if (c->nfrom == 0)
		return true;
	const char *dom = addr ? addr_domain(addr) : NULL;
	if (!dom || !*dom)
		return false;
	for (size_t i = 0; i < c->nfrom; i++) {
		const char *e = c->from[i];
		/* Whole strings compared: no suffix or prefix ever matches. */
		if (strchr(e, '@') ? strcasecmp(e, addr) == 0
		                   : strcasecmp(e, dom) == 0)
			return true;
	}
	return false;
}

bool cred_rcpt_ok(const struct cred *c, const char *addr)
{
	if (c->nto == 0)
		return true;
	const char *dom = addr ? addr_domain(addr) : NULL;
	if (!dom || !*dom)
		return false;
	for (size_t i = 0; i < c->nto; i++)
		if (strcasecmp(c->to[i], dom) == 0)
			return true;
	return false;
}

/* ---- editing ------------------------------------------------------------- */

/* A credential from a spec, every field checked (the hash only when
 * given), the name not in t, its line short enough to load again. */
static int cred_build(const struct cred_store *t,
                      const struct cred_spec *s,
                      struct cred **out, char *err, size_t errlen)
{
	char q[QUOTE_MAX];
	int rc;
	*out = NULL;
	if (!s->name) {
		fmt(err, errlen, "no name given");
		return -EINVAL;
	}
	struct cred *c = calloc(1, sizeof *c);
	if (!c) {
		fmt(err, errlen, "out of memory");
		return -ENOMEM;
	}
	const char *owner = s->owner ? s->owner : "";
	if ((rc = set_name(c->name, s->name, strlen(s->name), 1, "name", err,
	                   errlen)) < 0 ||
	    (rc = set_name(c->owner, owner, strlen(owner), 0, "owner", err,
	                   errlen)) < 0)
		goto fail;
	if (s->from && *s->from &&
	    (rc = list_parse(s->from, strlen(s->from), ",|", sender_item_ok,
	                     "from", &c->from, &c->nfrom, err, errlen)) < 0)
		goto fail;
	if (s->to && *s->to &&
	    (rc = list_parse(s->to, strlen(s->to), ",|", domain_ok, "to",
	                     &c->to, &c->nto, err, errlen)) < 0)
		goto fail;
	if (s->hourly > CRED_QUOTA_MAX || s->daily > CRED_QUOTA_MAX) {
		fmt(err, errlen, "quota above %u", CRED_QUOTA_MAX);
		rc = -EINVAL;
		goto fail;
	}
	c->hourly = s->hourly;
	c->daily = s->daily;
	c->disabled = s->disabled;
	if (creds_find(t, c->name)) {
		fmt(err, errlen, "user '%s' exists", quote(q, c->name,
		                                           strlen(c->name)));
		rc = -EEXIST;
		goto fail;
	}
	/* Checked after the rest, so a dry run (no hash) sees the same
	 * errors first. A stand-in keeps the length check below exact
	 * enough: no hash is longer than CRED_HASH_MAX. */
	if ((rc = set_hash(c, s->hash ? s->hash : H_STANDIN,
	                   strlen(s->hash ? s->hash : H_STANDIN), err,
	                   errlen)) < 0)
		goto fail;
	/* The line must load again. */
	struct buf b = BUF_INIT(1u << 20);
	rc = cred_format(c, &b);
	size_t linelen = b.len;
	buf_free(&b);
	if (rc < 0) {
		fmt(err, errlen, "out of memory");
		goto fail;
	}
	if (linelen > CRED_LINE_MAX + 1) {
		fmt(err, errlen, "the credential's line would be longer than %d "
		    "characters", CRED_LINE_MAX);
		rc = -EINVAL;
		goto fail;
	}
	*out = c;
	return 0;
fail:
	cred_free(c);
	return rc;
}

int cred_store_check(const struct cred_store *t,
                      const struct cred_spec *s, char *err,
                      size_t errlen)
{
	struct cred *c;
	int rc = cred_build(t, s, &c, err, errlen);
	cred_free(c);
	return rc;
}

int cred_store_add(struct cred_store *t, const struct cred_spec *s,
                    char *err, size_t errlen)
{
	struct cred *c;
	const struct cred *d1, *d2;
	RELAY_ASSERT(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) == 1);
	if (!s->hash) {
		fmt(err, errlen, "no password hash given");
		return -EINVAL;
	}
	int rc = cred_build(t, s, &c, err, errlen);
	if (rc < 0)
		return rc;
	if ((rc = line_append(t, NULL, c)) < 0) {
		fmt(err, errlen, "out of memory");
		cred_free(c);
		return rc;
	}
	if ((rc = index_build(t, &d1, &d2)) < 0) {
		/* Only -ENOMEM: cred_build checked the name. */
		t->nlines--;
		fmt(err, errlen, "out of memory");
		cred_free(c);
		return rc;
	}
	return 0;
}

int cred_store_del(struct cred_store *t, const char *name)
{
	RELAY_ASSERT(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) == 1);
	struct cred *c = creds_find(t, name);
	if (!c)
		return -ENOENT;
	size_t i = 0;
	while (t->lines[i].cred != c)
		i++;
	memmove(&t->lines[i], &t->lines[i + 1],
	        (t->nlines - i - 1) * sizeof *t->lines);
	t->nlines--;
	/* The index shrinks in place: no allocation, so no failure. */
	size_t j = 0;
	while (t->byname[j] != c)
		j++;
	memmove(&t->byname[j], &t->byname[j + 1],
	        (t->n - j - 1) * sizeof *t->byname);
	t->n--;
	cred_free(c);
	dummy_update(t);
	return 0;
}

int cred_store_set_hash(struct cred_store *t, const char *name,
                         const char *hash)
{
	char msg[128];
	RELAY_ASSERT(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) == 1);
	struct cred *c = creds_find(t, name);
	if (!c)
		return -ENOENT;
	int rc = set_hash(c, hash, strlen(hash), msg, sizeof msg);
	if (rc == 0)
		dummy_update(t);
	return rc;
}

int cred_store_set_disabled(struct cred_store *t, const char *name,
                             bool disabled)
{
	RELAY_ASSERT(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) == 1);
	struct cred *c = creds_find(t, name);
	if (!c)
		return -ENOENT;
	c->disabled = disabled;
	return 0;
}

/* ---- writing --------------------------------------------------------------- */

int cred_store_format(const struct cred_store *t, struct buf *out)
{
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < t->nlines; i++) {
		if (t->lines[i].cred)
			rc = cred_format(t->lines[i].cred, out);
		else if ((rc = buf_appends(out, t->lines[i].text)) == 0)
			rc = buf_appends(out, "\n");
	}
	return rc;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int cred_store_save(const struct cred_store *t, const char *path,
                     char *err, size_t errlen)
{
	struct buf b = BUF_INIT(SIZE_MAX);
	char *dir = NULL, *tmp = NULL;
	int fd = -1, dfd = -1, rc;
	bool created = false;
	struct stat st;
	mode_t mode = 0600;

	if ((rc = cred_store_format(t, &b)) < 0) {
		fmt(err, errlen, "out of memory");
		goto done;
	}
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	dir = slash ? dupn(path, slash == path ? 1 : (size_t)(slash - path))
	            : strdup(".");
	size_t tl = strlen(path) + 16;
	tmp = malloc(tl);
	if (!dir || !tmp) {
		rc = -ENOMEM;
		fmt(err, errlen, "out of memory");
		goto done;
	}
	snprintf(tmp, tl, "%.*s.%s.XXXXXX", (int)(base - path), path, base);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		fmt(err, errlen, "cannot create a temporary file in %s: %s", dir,
		    strerror(-rc));
		goto done;
	}
	created = true;
	/* Keep who may read an existing file (relayd may run as another
	 * user, reading through the group), never "other". */
	bool keep = stat(path, &st) == 0;
	if (keep)
		mode |= st.st_mode & 0060;
	if (fchmod(fd, mode) < 0) {
		rc = -errno;
		fmt(err, errlen, "cannot set the mode of %s: %s", tmp,
		    strerror(-rc));
		goto done;
	}
	/* Only root can give the file away; others keep their own. */
	if (keep && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
	    fchown(fd, st.st_uid, st.st_gid) < 0 && errno != EPERM) {
		rc = -errno;
		fmt(err, errlen, "cannot set the owner of %s: %s", tmp,
		    strerror(-rc));
		goto done;
	}
	rc = write_all(fd, b.data, b.len);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	fd = -1;
	if (rc < 0) {
		fmt(err, errlen, "cannot write %s: %s", tmp, strerror(-rc));
		goto done;
	}
	/* The new file is durable before its name replaces the old one, and
	 * the directory is synced so the rename survives a crash. */
	if (rename(tmp, path) < 0) {
		rc = -errno;
		fmt(err, errlen, "cannot rename %s to %s: %s", tmp, path,
		    strerror(-rc));
		goto done;
	}
	created = false;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		rc = -errno;
		fmt(err, errlen, "cannot sync directory %s: %s", dir,
		    strerror(-rc));
		goto done;
	}
	rc = 0;
done:
	if (fd >= 0)
		close(fd);
	if (created)
		unlink(tmp);
	if (dfd >= 0)
		close(dfd);
	free(tmp);
	free(dir);
	buf_free(&b);
	return rc;
}
