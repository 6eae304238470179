/*
 * dkim/dkim_sign.c - DKIM signing (issue 10 §1): the signer (the loaded
 * keys, each parsed once into an OpenSSL EVP_PKEY at start or SIGHUP,
 * the active one per domain and algorithm, key selection by the From:
 * domain) and the job that streams one message: relaxed/relaxed,
 * rsa-sha256 and/or ed25519-sha256 (a domain with both keys is
 * dual-signed, RSA first), the signed header list of the issue with
 * From: oversigned, no l=. No libuv: relayd runs jobs on the thread pool.
 *
 * relayd signs itself: dkim/dkim_canon.c canonicalizes the body and the
 * signed fields (one body hash and one header selection serve both
 * keys) and builds the field; OpenSSL hashes them (SHA-256) and signs
 * the 32-byte digest with the signer's EVP_PKEY: RSA PKCS#1 v1.5 with
 * the SHA-256 DigestInfo (RFC 6376 §3.3.1, what libopendkim's RSA_sign
 * makes), Ed25519 over the digest (RFC 8463 §3). libopendkim 2.11 parses
 * the PEM key again for every message (1.2-1.8 ms per RSA-2048 message,
 * where the signature itself costs about 0.27 ms) and leaks about 550
 * bytes per Ed25519 signature; it stays linked as the oracle:
 * dkim_signer_use_libopendkim() switches a signer to it (the unit tests
 * compare the two fields byte for byte, the bench measures both). This
 * is the only file that includes <opendkim/dkim.h>.
 */
#include "dkim/dkim.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <time.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <opendkim/dkim.h>

#include "common/b64.h"
#include "common/buf.h"
#include "common/idna.h"
#include "common/log.h"
#include "dkim/dkim_canon.h"

const char *const dkim_signed_headers[] = {
	"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"in-reply-to", "references", "mime-version", "content-type",
	"content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
	NULL,
};
static const char *const oversigned_headers[] = {"from", NULL};

struct dkim_signer {
	DKIM_LIB *lib;
	struct dkim_key **keys;   /* in line order */
	size_t nkeys;
	bool subdomains;
	unsigned refs;
	struct dkim_counts counts;
	EVP_PKEY **pkeys;         /* keys[i] parsed once (read-only after:
	                             OpenSSL allows concurrent signing) */
	bool use_lib;             /* sign with libopendkim (tests, bench) */
	long long fixed_time;     /* t= (-1: now); tests */
};

/* ---- the signer --------------------------------------------------------- */

static void signer_free(struct dkim_signer *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nkeys; i++) {
		dkim_key_free(s->keys[i]);
		if (s->pkeys)
			EVP_PKEY_free(s->pkeys[i]);
	}
	free(s->keys);
	free(s->pkeys);
	if (s->lib)
		dkim_close(s->lib);
	free(s);
}

static int lib_new(DKIM_LIB **out, char *err, size_t errlen)
{
	DKIM_LIB *lib = dkim_init(NULL, NULL);
	if (!lib) {
		dkim_errf(err, errlen, "libopendkim: cannot initialise");
		return -ENOMEM;
	}
	/* The header list is a NULL-terminated array; the option takes a
	 * pointer to it (what opendkim itself passes). */
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS,
	                 (void *)dkim_signed_headers,
	                 sizeof(char **)) != DKIM_STAT_OK ||
	    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS,
	                 (void *)oversigned_headers,
	                 sizeof(char **)) != DKIM_STAT_OK) {
		dkim_close(lib);
		dkim_errf(err, errlen, "libopendkim: cannot set the signed headers");
		return -EINVAL;
	}
	*out = lib;
	return 0;
}

/* The key of old loaded from the same line (domain, selector, path). */
static const struct dkim_key *old_key(const struct dkim_signer *old,
                                      const struct dkim_key_spec *sp)
{
	for (size_t i = 0; old && i < old->nkeys; i++) {
		const struct dkim_key_spec *o = &old->keys[i]->spec;
		if (strcmp(o->domain, sp->domain) == 0 &&
		    strcmp(o->selector, sp->selector) == 0 &&
		    strcmp(o->path, sp->path) == 0)
			return old->keys[i];
	}
	return NULL;
}

/* A copy of a loaded key (a SIGHUP that keeps it: the old signer is
 * freed when its last job ends). */
static struct dkim_key *key_dup(const struct dkim_key *k, char *err,
                                size_t errlen)
{
	struct dkim_key *d = NULL;
	int r = dkim_key_from_pem(&k->spec, k->pem, strlen(k->pem), &d, err,
	                          errlen);
	return r < 0 ? NULL : d;
}

/* k's private key as an EVP_PKEY of k's algorithm, parsed once for all
 * the signer's jobs (dkim_key_load checked it already; this cannot fail
 * but on memory). 0 or -errno with why. */
static int pkey_load(const struct dkim_key *k, EVP_PKEY **out, char *why,
                     size_t whylen)
{
	int want = k->alg == DKIM_ALG_RSA ? EVP_PKEY_RSA : EVP_PKEY_ED25519;
	BIO *b = BIO_new_mem_buf(k->pem, -1);
	EVP_PKEY *pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	if (!pk || EVP_PKEY_get_id(pk) != want) {
		EVP_PKEY_free(pk);
		dkim_errf(why, whylen, "the %s key does not load into OpenSSL",
		          dkim_alg_name(k->alg));
		return -EINVAL;
	}
	*out = pk;
	return 0;
}

int dkim_signer_new(char *const *lines, size_t n, bool subdomains,
                    const struct dkim_signer *old,
                    struct dkim_signer **out, char *err, size_t errlen)
{
	char why[512];
	int r = -ENOMEM;
	struct dkim_signer *s = calloc(1, sizeof *s);
	if (!s) {
		dkim_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->refs = 1;
	s->subdomains = subdomains;
	s->fixed_time = -1;
	if (old)
		s->counts = old->counts;
	if (n && (!(s->keys = calloc(n, sizeof *s->keys)) ||
	          !(s->pkeys = calloc(n, sizeof *s->pkeys)))) {
		dkim_errf(err, errlen, "out of memory");
		goto fail;
	}
	if ((r = lib_new(&s->lib, err, errlen)) < 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		struct dkim_key_spec sp;
		struct dkim_key *k = NULL;
		r = dkim_key_parse_line(lines[i], &sp, why, sizeof why);
		bool parsed = r == 0;
		if (parsed)
			r = dkim_key_load(&sp, &k, why, sizeof why);
		if (r < 0) {
			const struct dkim_key *ok = parsed ? old_key(old, &sp) : NULL;
			if (!old) {
				dkim_errf(err, errlen, "dkim_key '%s': %s", lines[i], why);
				goto fail;
			}
			if (ok && (k = key_dup(ok, err, errlen))) {
				log_err("dkim: key %s (selector %s) not reloaded, the "
				        "old one is kept: %s", sp.domain, sp.selector,
				        why);
			} else {
				log_err("dkim: dkim_key '%s' left out: %s", lines[i],
				        why);
				continue;
			}
		}
		if (k->weak)
			log_warn("dkim: key %s (selector %s) is RSA of %u bits: use "
			         "2048 or more", k->spec.domain, k->spec.selector,
			         k->bits);
		EVP_PKEY *pk = NULL;
		if ((r = pkey_load(k, &pk, why, sizeof why)) < 0) {
			dkim_key_free(k);
			if (old) {
				log_err("dkim: dkim_key '%s' left out: %s", lines[i], why);
				continue;
			}
			dkim_errf(err, errlen, "dkim_key '%s': %s", lines[i], why);
			goto fail;
		}
		s->pkeys[s->nkeys] = pk;
		s->keys[s->nkeys++] = k;
	}
	*out = s;
	return 0;
fail:
	signer_free(s);
	return r < 0 ? r : -EINVAL;
}

void dkim_signer_use_libopendkim(struct dkim_signer *s, bool on)
{
	s->use_lib = on;
}

int dkim_signer_fixed_time(struct dkim_signer *s, long long t)
{
	uint64_t ft = (uint64_t)t;
	if (t < 0 || dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME,
	                          &ft, sizeof ft) != DKIM_STAT_OK)
		return -EINVAL;
	s->fixed_time = t;
	return 0;
}

static EVP_PKEY *signer_pkey(const struct dkim_signer *s,
                             const struct dkim_key *k)
{
	for (size_t i = 0; i < s->nkeys; i++)
		if (s->keys[i] == k)
			return s->pkeys[i];
	return NULL;
}

void dkim_signer_ref(struct dkim_signer *s)
{
	s->refs++;
}

void dkim_signer_unref(struct dkim_signer *s)
{
	if (s && --s->refs == 0)
		signer_free(s);
}

void dkim_signer_count(struct dkim_signer *s, enum dkim_job_result r)
{
	if (!s)
		return;
	if (r == DKIM_SIGNED)
		s->counts.signed_msgs++;
	else if (r == DKIM_FAILED)
		s->counts.failed++;
	else
		s->counts.unsigned_msgs++;
}

struct dkim_counts dkim_signer_counts(const struct dkim_signer *s)
{
	struct dkim_counts c = {0, 0, 0};
	return s ? s->counts : c;
}

const struct dkim_key *dkim_signer_key(const struct dkim_signer *s, size_t i)
{
	return s && i < s->nkeys ? s->keys[i] : NULL;
}

/* The last line of the domain and algorithm wins. */
static size_t select_exact(const struct dkim_key *const *keys, size_t nkeys,
                           const char *domain, const struct dkim_key *out[2])
{
	const struct dkim_key *rsa = NULL, *ed = NULL;
	for (size_t i = 0; i < nkeys; i++) {
		const struct dkim_key *k = keys[i];
		if (strcmp(k->spec.domain, domain) != 0)
			continue;
		if (k->alg == DKIM_ALG_RSA)
			rsa = k;
		else
			ed = k;
	}
	size_t n = 0;
	if (rsa)
		out[n++] = rsa;
	if (ed)
		out[n++] = ed;
	return n;
}

size_t dkim_select_keys(const struct dkim_key *const *keys, size_t nkeys,
                        bool subdomains, const char *domain,
                        const struct dkim_key *out[2])
{
	if (!domain || !*domain)
		return 0;
	size_t n = select_exact(keys, nkeys, domain, out);
	if (n || !subdomains)
		return n;
	/* Parents, nearest first, never a bare top-level label. */
	for (const char *p = strchr(domain, '.'); p && strchr(p + 1, '.');
	     p = strchr(p + 1, '.')) {
		if ((n = select_exact(keys, nkeys, p + 1, out)))
			return n;
	}
	return 0;
}

size_t dkim_signer_select(const struct dkim_signer *s, const char *domain,
                          const struct dkim_key *out[2])
{
	if (!s)
		return 0;
	return dkim_select_keys((const struct dkim_key *const *)s->keys,
	                        s->nkeys, s->subdomains, domain, out);
}

/* ---- From: ------------------------------------------------------------ */

int dkim_from_domain(const char *v, size_t n, char *dom, size_t domlen)
{
	/* The value without comments and quoted strings (a quoted local
	 * part becomes "q"), folding as blanks, up to the first mailbox's
	 * end: a ',' (or ';' closing a group) outside angle brackets. */
	char clean[1024];
	size_t o = 0;
	int depth = 0;
	bool quoted = false, angle = false;
	for (size_t i = 0; i < n; i++) {
		char c = v[i];
		if (quoted) {
			if (c == '\\' && i + 1 < n)
				i++;
			else if (c == '"')
				quoted = false;
			continue;
		}
		if (depth > 0) {
			if (c == '\\' && i + 1 < n)
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			continue;
		}
		if (c == '(') {
			depth = 1;
			continue;
		}
		if (c == '"') {
			quoted = true;
			c = 'q';
		}
		if (c == '\r' || c == '\n' || c == '\t')
			c = ' ';
		if (c == '<')
			angle = true;
		else if (c == '>')
			angle = false;
		else if (!angle && (c == ',' || c == ';')) {
			/* A group "name: ;" has no first member yet: go on. */
			bool any = false;
			for (size_t k = 0; k < o; k++)
				if (clean[k] == '@')
					any = true;
			if (any)
				break;
			o = 0;
			continue;
		}
		if (o + 1 >= sizeof clean)
			return -EINVAL;
		clean[o++] = c;
	}
	clean[o] = '\0';
	/* The address: inside <...> when there is one, else after a group's
	 * "name:", else the whole text. */
	char *a = clean, *lt = strchr(clean, '<');
	if (lt) {
		a = lt + 1;
		char *gt = strchr(a, '>');
		if (gt)
			*gt = '\0';
		/* A route "<@a,@b:x@y>" (RFC 5322 obs-route). */
		char *colon = strrchr(a, ':');
		if (colon)
			a = colon + 1;
	} else {
		char *colon = strrchr(clean, ':');
		if (colon)
			a = colon + 1;
	}
	char *at = strrchr(a, '@');
	if (!at)
		return -EINVAL;
	char *d = at + 1;
	while (*d == ' ')
		d++;
	size_t dl = strlen(d);
	while (dl && d[dl - 1] == ' ')
		dl--;
	if (dl && d[dl - 1] == '.')
		dl--;
	if (dl == 0 || dl >= domlen || dl > 253)
		return -EINVAL;
	if (idna_is_8bit(d, dl)) {
		/* An internationalized From: domain (SMTPUTF8): the key is
		 * named by its A-labels, and d= carries them (RFC 8616 §4). */
		char a[IDNA_NAME_MAX + 1];
		int r = idna_to_ascii(d, dl, a, sizeof a);
		if (r < 0 || strlen(a) >= domlen)
			return -EINVAL;
		memcpy(dom, a, strlen(a) + 1);
		return 0;
	}
	for (size_t i = 0; i < dl; i++) {
		unsigned char c = (unsigned char)d[i];
		if (!isalnum(c) && c != '-' && c != '.')
			return -EINVAL;   /* a literal, blanks, 8-bit: no key */
		if (c == '.' && (i == 0 || d[i - 1] == '.'))
			return -EINVAL;
		dom[i] = (char)tolower(c);
	}
	dom[dl] = '\0';
	return 0;
}

/* ---- one message -------------------------------------------------------- */

enum job_state { JOB_HEAD, JOB_BODY, JOB_SKIP, JOB_FAILED };

struct dkim_job {
	const struct dkim_signer *s;
	char qid[64];
	enum job_state st;
	enum dkim_job_result res;   /* JOB_SKIP / JOB_FAILED: why */
	struct buf hdr;             /* the header section (JOB_HEAD) */
	size_t scan;                /* where the search for its end goes on */
	DKIM *h[2];                 /* libopendkim's handle, or NULL: ours */
	const struct dkim_key *key[2];
	size_t nh;
	/* Signed here (h[k] == NULL): both keys of a dual-signed message
	 * share the body hash and the header selection (both relaxed,
	 * SHA-256, the same h= list). */
	bool own;                   /* own_start done */
	struct dkim_body_canon bc;
	EVP_MD_CTX *bmd;            /* the body hash */
	struct buf hcanon;          /* the signed fields, relaxed; then the
	                               field being signed */
	size_t hbase;               /* hcanon's length without the field */
	uint8_t bh[32];             /* the body hash, once final */
	bool bh_done;
	long long t;                /* t=, the same for both keys */
	struct buf hlist;           /* h= */
	char dom[256];
	bool forced;                /* dom given: dkim_job_set_domain */
	char why[512];
};

int dkim_job_new(const struct dkim_signer *s, const char *qid,
                 struct dkim_job **out)
{
	struct dkim_job *j = calloc(1, sizeof *j);
	if (!j)
		return -ENOMEM;
	j->s = s;
	snprintf(j->qid, sizeof j->qid, "%s", qid && *qid ? qid : "-");
	buf_init(&j->hdr, DKIM_HEADER_MAX);
	buf_init(&j->hcanon, 2 * DKIM_HEADER_MAX + 4096);
	buf_init(&j->hlist, 64 * 1024);
	*out = j;
	return 0;
}

void dkim_job_free(struct dkim_job *j)
{
	if (!j)
		return;
	for (size_t i = 0; i < j->nh; i++)
		if (j->h[i])
			dkim_free(j->h[i]);
	buf_free(&j->hdr);
	buf_free(&j->hcanon);
	buf_free(&j->hlist);
	EVP_MD_CTX_free(j->bmd);
	free(j);
}

static int job_fail(struct dkim_job *j, int err, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
static int job_fail(struct dkim_job *j, int err, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	vsnprintf(j->why, sizeof j->why, f, ap);
	va_end(ap);
	j->st = JOB_FAILED;
	j->res = DKIM_FAILED;
	return err;
}

static bool name_is(const uint8_t *f, size_t n, const char *name)
{
	size_t l = strlen(name);
	if (n <= l || strncasecmp((const char *)f, name, l) != 0)
		return false;
	size_t i = l;
	while (i < n && (f[i] == ' ' || f[i] == '\t'))
		i++;
	return i < n && f[i] == ':';
}

/* The header section (hlen bytes, without the empty line) is complete:
 * choose the keys, start the handles, feed them the fields. */
void dkim_job_set_domain(struct dkim_job *j, const char *domain)
{
	snprintf(j->dom, sizeof j->dom, "%s", domain ? domain : "");
	j->forced = domain && *domain;
}

static int own_start(struct dkim_job *j, const uint8_t *h, size_t hlen);

static int start_signing(struct dkim_job *j, const uint8_t *h, size_t hlen)
{
	/* The From: field names the signing domain. RFC 5322 §3.6: it
	 * occurs exactly once; a message with two is not signed (a
	 * verifier may align with one while the reader is shown the other:
	 * our signature must not vouch for a From: it did not choose). */
	bool from = j->forced;
	size_t nfrom = 0;
	for (size_t i = 0; i < hlen && !j->forced;) {
		size_t fl = dkim_field_len(h + i, hlen - i);
		if (name_is(h + i, fl, "from") && ++nfrom == 1) {
			const uint8_t *colon = memchr(h + i, ':', fl);
			size_t vl = fl - (size_t)(colon + 1 - (h + i));
			from = dkim_from_domain((const char *)colon + 1, vl, j->dom,
			                        sizeof j->dom) == 0;
			if (!from) {
				j->dom[0] = '\0';
				break;
			}
		}
		i += fl;
	}
	if (nfrom > 1) {
		j->dom[0] = '\0';
		j->st = JOB_SKIP;
		j->res = DKIM_NO_FROM;
		snprintf(j->why, sizeof j->why, "%zu From: fields (RFC 5322 "
		         "allows one)", nfrom);
		return 0;
	}
	if (!from) {
		j->st = JOB_SKIP;
		j->res = DKIM_NO_FROM;
		snprintf(j->why, sizeof j->why, "no From: domain to sign for");
		return 0;
	}
	j->nh = j->forced ?
	    dkim_select_keys((const struct dkim_key *const *)j->s->keys,
	                     j->s->nkeys, true, j->dom, j->key) :
	    dkim_signer_select(j->s, j->dom, j->key);
	if (j->nh == 0) {
		j->st = JOB_SKIP;
		j->res = DKIM_NO_KEY;
		snprintf(j->why, sizeof j->why, "no DKIM key for %s", j->dom);
		return 0;
	}
	for (size_t k = 0; k < j->nh; k++) {
		const struct dkim_key *key = j->key[k];
		DKIM_STAT st = DKIM_STAT_OK;
		if (!j->s->use_lib) {
			int r = own_start(j, h, hlen);
			if (r < 0)
				return r;
			continue;
		}
		j->h[k] = dkim_sign(j->s->lib, (const unsigned char *)j->qid, NULL,
		                    (dkim_sigkey_t)key->pem,
		                    (const unsigned char *)key->spec.selector,
		                    (const unsigned char *)key->spec.domain,
		                    DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
		                    key->alg == DKIM_ALG_RSA ? DKIM_SIGN_RSASHA256
		                                             : DKIM_SIGN_ED25519SHA256,
		                    -1, &st);
		if (!j->h[k])
			return job_fail(j, -EINVAL, "libopendkim: cannot sign with "
			                "%s/%s: %s", key->spec.domain,
			                key->spec.selector, dkim_getresultstr(st));
	}
	for (size_t i = 0; i < hlen;) {
		size_t fl = dkim_field_len(h + i, hlen - i);
		/* Without the CRLF that ends the field (dkim_header's format). */
		size_t l = fl;
		if (l >= 2 && h[i + l - 2] == '\r' && h[i + l - 1] == '\n')
			l -= 2;
		for (size_t k = 0; k < j->nh; k++) {
			if (!j->h[k])
				continue;
			DKIM_STAT st = dkim_header(j->h[k], (u_char *)(h + i), l);
			if (st != DKIM_STAT_OK)
				return job_fail(j, -EINVAL, "libopendkim: header field "
				                "refused: %s", dkim_geterror(j->h[k]));
		}
		i += fl;
	}
	for (size_t k = 0; k < j->nh; k++) {
		if (!j->h[k])
			continue;
		DKIM_STAT st = dkim_eoh(j->h[k]);
		if (st != DKIM_STAT_OK)
			return job_fail(j, -EINVAL, "libopendkim: end of header: %s",
			                dkim_geterror(j->h[k]));
	}
	j->st = JOB_BODY;
	return 0;
}

/* ---- signed here: RSA and Ed25519 ---------------------------------------- */

static void body_emit(void *arg, const uint8_t *p, size_t n)
{
	/* A failure shows at EVP_DigestFinal_ex (the context is unusable). */
	(void)EVP_DigestUpdate((EVP_MD_CTX *)arg, p, n);
}

/* The header section is complete: the signed fields canonicalized now
 * (the section is freed after), the body hash started. Once per job,
 * whatever the number of keys. */
static int own_start(struct dkim_job *j, const uint8_t *h, size_t hlen)
{
	if (j->own)
		return 0;
	j->own = true;
	int r = dkim_select_headers(h, hlen, dkim_signed_headers,
	                            oversigned_headers, &j->hlist, &j->hcanon);
	if (r < 0)
		return job_fail(j, r, "selecting the header fields to sign: %s",
		                strerror(-r));
	j->hbase = j->hcanon.len;
	if (!(j->bmd = EVP_MD_CTX_new()) ||
	    EVP_DigestInit_ex(j->bmd, EVP_sha256(), NULL) != 1)
		return job_fail(j, -ENOMEM, "cannot start SHA-256");
	dkim_body_canon_init(&j->bc);
	return 0;
}

/* Signs the 32-byte SHA-256 digest hh with pk into sig (cap bytes: at
 * least EVP_PKEY_get_size), its length in *sl. RSA: PKCS#1 v1.5 over
 * the DigestInfo of SHA-256 (RFC 6376 §3.3.1; RFC 8017 §8.2), what
 * libopendkim's RSA_sign(NID_sha256) gives, deterministic. Ed25519:
 * over the 32 bytes (RFC 8463 §3). 0 or -EINVAL. */
static int pkey_sign(EVP_PKEY *pk, enum dkim_alg alg, const uint8_t *hh,
                     size_t hl, uint8_t *sig, size_t cap, size_t *sl)
{
	int ok = 0;
	*sl = cap;
	if (alg == DKIM_ALG_ED25519) {
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, pk) == 1 &&
		     EVP_DigestSign(md, sig, sl, hh, hl) == 1 && *sl == 64;
		EVP_MD_CTX_free(md);
	} else {
		EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(pk, NULL);
		ok = pc && EVP_PKEY_sign_init(pc) == 1 &&
		     EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
		     EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		     EVP_PKEY_sign(pc, sig, sl, hh, hl) == 1 && *sl == cap;
		EVP_PKEY_CTX_free(pc);
	}
	return ok ? 0 : -EINVAL;
}

/* The body's end (once): bh=. Then for key k: the field with an empty
 * b=, its relaxed form after the signed fields, SHA-256 of that, the
 * signature (pkey_sign), b= appended. The field goes into out. */
static int own_finish(struct dkim_job *j, size_t k, struct buf *out)
{
	const struct dkim_key *key = j->key[k];
	EVP_PKEY *pk = signer_pkey(j->s, key);
	uint8_t hh[EVP_MAX_MD_SIZE], *sig = NULL;
	unsigned hl = 0;
	size_t sl = 0;
	char bh64[B64_ENCODED_LEN(32, 1) + 1];
	struct buf field = BUF_INIT(DKIM_HEADER_MAX);
	int r = -EINVAL;
	const char *what = "hashing the body";
	if (!j->bh_done) {
		unsigned bl = 0;
		dkim_body_canon_end(&j->bc, body_emit, j->bmd);
		if (EVP_DigestFinal_ex(j->bmd, j->bh, &bl) != 1 || bl != 32)
			goto fail;
		j->bh_done = true;
		j->t = j->s->fixed_time >= 0 ? j->s->fixed_time
		                             : (long long)time(NULL);
	}
	what = "no OpenSSL key";
	int size = pk ? EVP_PKEY_get_size(pk) : 0;
	if (size <= 0)
		goto fail;
	/* The signature's size from the key: 64 (Ed25519), the modulus
	 * bytes for RSA (512 for the 4096 bits dkim_key.c allows). */
	what = "out of memory";
	r = -ENOMEM;
	if (!(sig = malloc((size_t)size)))
		goto fail;
	b64_encode(j->bh, sizeof j->bh, B64_PAD, bh64);
	j->hcanon.len = j->hbase;   /* the other key's field out */
	what = "building the field";
	if ((r = dkim_sig_field(key->alg == DKIM_ALG_RSA ? "rsa-sha256"
	                                                 : "ed25519-sha256",
	                        key->spec.domain, key->spec.selector, j->t, bh64,
	                        (const char *)j->hlist.data, &field)) < 0 ||
	    (r = dkim_sig_canon(field.data, field.len, &j->hcanon)) < 0)
		goto fail;
	r = -EINVAL;
	what = "hashing the header";
	if (EVP_Digest(j->hcanon.data, j->hcanon.len, hh, &hl, EVP_sha256(),
	               NULL) != 1)
		goto fail;
	what = "OpenSSL refused to sign";
	if ((r = pkey_sign(pk, key->alg, hh, hl, sig, (size_t)size, &sl)) < 0)
		goto fail;
	what = "out of memory";
	if ((r = dkim_sig_append_b(&field, sig, sl)) < 0 ||
	    (r = buf_append(out, field.data, field.len)) < 0)
		goto fail;
	free(sig);
	buf_free(&field);
	return 0;
fail:
	free(sig);
	buf_free(&field);
	return job_fail(j, r < 0 ? r : -EINVAL, "%s: signing with %s/%s "
	                "failed: %s", dkim_alg_name(key->alg), key->spec.domain,
	                key->spec.selector, what);
}

static int feed_body(struct dkim_job *j, const uint8_t *p, size_t n)
{
	if (j->own && n)
		dkim_body_canon_feed(&j->bc, p, n, body_emit, j->bmd);
	for (size_t k = 0; k < j->nh && n; k++) {
		if (!j->h[k])
			continue;
		DKIM_STAT st = dkim_body(j->h[k], (u_char *)p, n);
		if (st != DKIM_STAT_OK)
			return job_fail(j, -EINVAL, "libopendkim: body: %s",
			                dkim_geterror(j->h[k]));
	}
	return 0;
}

int dkim_job_feed(struct dkim_job *j, const uint8_t *p, size_t n)
{
	switch (j->st) {
	case JOB_FAILED:
		return -EINVAL;
	case JOB_SKIP:
		return 0;
	case JOB_BODY:
		return feed_body(j, p, n);
	case JOB_HEAD:
		break;
	}
	if (buf_append(&j->hdr, p, n) < 0)
		return job_fail(j, -EMSGSIZE, "header section over %d bytes",
		                DKIM_HEADER_MAX);
	/* The header section ends at the first empty line: CRLF CRLF, or
	 * CRLF at the very start. */
	const uint8_t *d = j->hdr.data;
	size_t len = j->hdr.len, hlen = 0, body = 0;
	bool end = false;
	if (len >= 2 && d[0] == '\r' && d[1] == '\n') {
		end = true;
		body = 2;
	} else {
		size_t from = j->scan > 3 ? j->scan - 3 : 0;
		const uint8_t *e = len > from ?
		    memmem(d + from, len - from, "\r\n\r\n", 4) : NULL;
		if (e) {
			end = true;
			hlen = (size_t)(e - d) + 2;
			body = hlen + 2;
		}
		j->scan = len;
	}
	if (!end)
		return 0;
	int r = start_signing(j, d, hlen);
	if (r == 0 && j->st == JOB_BODY)
		r = feed_body(j, d + body, len - body);
	buf_free(&j->hdr);
	return r;
}

/* "DKIM-Signature: " + libopendkim's folded value, each line ending in
 * CRLF (its folds may be bare LF). */
static int append_sig(struct buf *out, const u_char *v, size_t n)
{
	int r = buf_appends(out, DKIM_SIGNHEADER ": ");
	for (size_t i = 0; i < n && r == 0; i++) {
		if (v[i] == '\r')
			continue;
		if (v[i] == '\n')
			r = buf_append(out, "\r\n", 2);
		else
			r = buf_append(out, v + i, 1);
	}
	if (r == 0)
		r = buf_append(out, "\r\n", 2);
	return r;
}

enum dkim_job_result dkim_job_finish(struct dkim_job *j, char **sig,
                                     char *dom, size_t domlen,
                                     char *why, size_t whylen)
{
	*sig = NULL;
	if (j->st == JOB_HEAD) {
		/* No empty line: the message is all header section. */
		size_t hlen = j->hdr.len;
		const uint8_t *d = j->hdr.data;
		if (hlen && !(hlen >= 2 && d[hlen - 2] == '\r' && d[hlen - 1] == '\n'))
			job_fail(j, -EINVAL, "the message does not end in CRLF");
		else
			start_signing(j, d ? d : (const uint8_t *)"", hlen);
		buf_free(&j->hdr);
	}
	dkim_errf(dom, domlen, "%s", j->dom);
	if (j->st == JOB_BODY) {
		struct buf out = BUF_INIT(DKIM_HEADER_MAX);
		for (size_t k = 0; k < j->nh && j->st == JOB_BODY; k++) {
			if (!j->h[k]) {
				if (own_finish(j, k, &out) < 0)
					break;
				continue;
			}
			DKIM_STAT st = dkim_eom(j->h[k], NULL);
			u_char *v = NULL;
			size_t vl = 0;
			if (st == DKIM_STAT_OK)
				st = dkim_getsighdr_d(j->h[k], strlen(DKIM_SIGNHEADER) + 2,
				                      &v, &vl);
			if (st != DKIM_STAT_OK) {
				const char *e = dkim_geterror(j->h[k]);
				job_fail(j, -EINVAL, "libopendkim: signing with %s/%s: %s",
				         j->key[k]->spec.domain, j->key[k]->spec.selector,
				         e && *e ? e : dkim_getresultstr(st));
			} else if (append_sig(&out, v, vl) < 0) {
				job_fail(j, -ENOMEM, "out of memory");
			}
		}
		if (j->st == JOB_BODY && buf_append(&out, "", 1) == 0) {
			*sig = (char *)out.data;   /* NUL-terminated */
			dkim_errf(why, whylen, "signed");
			return DKIM_SIGNED;
		}
		buf_free(&out);
		if (j->st == JOB_BODY)
			job_fail(j, -ENOMEM, "out of memory");
	}
	dkim_errf(why, whylen, "%s", j->why);
	return j->res;
}

enum dkim_job_result dkim_sign_buf(const struct dkim_signer *s,
                                   const char *qid, const uint8_t *p,
                                   size_t n, char **sig, char *dom,
                                   size_t domlen, char *why, size_t whylen)
{
	struct dkim_job *j;
	*sig = NULL;
	if (dkim_job_new(s, qid, &j) < 0) {
		dkim_errf(why, whylen, "out of memory");
		dkim_errf(dom, domlen, "%s", "");
		return DKIM_FAILED;
	}
	dkim_job_feed(j, p, n);
	enum dkim_job_result r = dkim_job_finish(j, sig, dom, domlen, why, whylen);
	dkim_job_free(j);
	return r;
}

enum dkim_job_result dkim_sign_fd_for(const struct dkim_signer *s,
                                      const char *qid, const char *domain,
                                      int fd, uint64_t max, char **sig,
                                      char *dom, size_t domlen, char *why,
                                      size_t whylen)
{
	struct dkim_job *j;
	*sig = NULL;
	dkim_errf(dom, domlen, "%s", "");
	if (dkim_job_new(s, qid, &j) < 0) {
		dkim_errf(why, whylen, "out of memory");
		return DKIM_FAILED;
	}
	if (domain)
		dkim_job_set_domain(j, domain);
	uint8_t chunk[64 * 1024];
	uint64_t off = 0;
	for (;;) {
		ssize_t r = pread(fd, chunk, sizeof chunk, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			job_fail(j, -errno, "cannot read the message: %s",
			         strerror(errno));
			break;
		}
		if (r == 0)
			break;
		off += (uint64_t)r;
		if (off > max) {
			job_fail(j, -EFBIG, "the message grew past %llu bytes",
			         (unsigned long long)max);
			break;
		}
		if (dkim_job_feed(j, chunk, (size_t)r) < 0)
			break;
	}
	enum dkim_job_result res = dkim_job_finish(j, sig, dom, domlen, why,
	                                           whylen);
	dkim_job_free(j);
	return res;
}

enum dkim_job_result dkim_sign_fd(const struct dkim_signer *s,
                                  const char *qid, int fd, uint64_t max,
                                  char **sig, char *dom, size_t domlen,
                                  char *why, size_t whylen)
{
	return dkim_sign_fd_for(s, qid, NULL, fd, max, sig, dom, domlen, why,
	                        whylen);
}
