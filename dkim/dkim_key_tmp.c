/*
 * dkim/dkim_key_tmp.c - TEMPORARY minimal key loader, the API of
 * dkim/dkim_key.h (owned by wip-keys), only until that branch is merged;
 * then this file is deleted. No mode checks, no p= record.
 */
#include "dkim/dkim_key.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

int dkim_key_parse_line(const char *value, struct dkim_key_spec *out,
                        char *err, size_t errlen)
{
	char d[256], s[128], p[4096];
	if (sscanf(value, "%255s %127s %4095s", d, s, p) != 3 ||
	    strlen(d) >= sizeof out->domain || strlen(s) >= sizeof out->selector) {
		snprintf(err, errlen, "expected DOMAIN SELECTOR PATH");
		return -EINVAL;
	}
	for (char *c = d; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c + 32);
	snprintf(out->domain, sizeof out->domain, "%s", d);
	snprintf(out->selector, sizeof out->selector, "%s", s);
	snprintf(out->path, sizeof out->path, "%s", p);
	return 0;
}

const char *dkim_alg_name(enum dkim_alg alg)
{
	return alg == DKIM_ALG_RSA ? "rsa" : "ed25519";
}

int dkim_key_from_pem(const struct dkim_key_spec *spec, const char *pem,
                      size_t len, struct dkim_key **out, char *err,
                      size_t errlen)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	if (!pk) {
		snprintf(err, errlen, "%s: not a PEM private key", spec->path);
		return -EINVAL;
	}
	struct dkim_key *k = calloc(1, sizeof *k);
	if (!k || !(k->pem = strndup(pem, len))) {
		free(k);
		EVP_PKEY_free(pk);
		return -ENOMEM;
	}
	k->spec = *spec;
	int id = EVP_PKEY_get_base_id(pk);
	k->alg = id == EVP_PKEY_ED25519 ? DKIM_ALG_ED25519 : DKIM_ALG_RSA;
	k->bits = (unsigned)EVP_PKEY_get_bits(pk);
	EVP_PKEY_free(pk);
	if (id != EVP_PKEY_ED25519 && (id != EVP_PKEY_RSA || k->bits < 1024)) {
		snprintf(err, errlen, "%s: not RSA >= 1024 bits or Ed25519",
		         spec->path);
		dkim_key_free(k);
		return -EINVAL;
	}
	k->weak = k->alg == DKIM_ALG_RSA && k->bits < DKIM_RSA_BITS_WEAK;
	*out = k;
	return 0;
}

int dkim_key_load(const struct dkim_key_spec *spec, struct dkim_key **out,
                  char *err, size_t errlen)
{
	FILE *f = fopen(spec->path, "r");
	if (!f) {
		int e = errno;
		snprintf(err, errlen, "%s: %s", spec->path, strerror(e));
		return -e;
	}
	char buf[DKIM_KEY_FILE_MAX];
	size_t n = fread(buf, 1, sizeof buf, f);
	fclose(f);
	return dkim_key_from_pem(spec, buf, n, out, err, errlen);
}

void dkim_key_free(struct dkim_key *k)
{
	if (!k)
		return;
	free(k->pem);
	free(k->pub_b64);
	free(k);
}
