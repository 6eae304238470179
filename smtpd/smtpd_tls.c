/*
 * smtpd/smtpd_tls.c - The listeners' TLS context (see smtpd_tls.h): one
 * SSL_CTX with the certificate chain and key, and relayd's server
 * settings. Sessions hold references to it (SSL_new), so a context
 * replaced at SIGHUP lives on until the last session using it ends.
 */
#include "smtpd/smtpd_tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/*
 * TLS 1.2 cipher suites, in the server's order: forward secrecy always,
 * AEAD first, then AES-CBC for older MTAs. Port 25 is opportunistic TLS
 * (RFC 7435): a peer refused here sends in plaintext instead, so the list
 * is wider than a web server's would be; RC4, 3DES, static RSA key
 * exchange, anonymous, export and CCM8 (short tag) suites are never
 * offered. TLS 1.3 uses OpenSSL's default suites, all AEAD.
 */
#define TLS12_CIPHERS \
	"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES:" \
	"!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP:!RC4:!3DES:!CAMELLIA:!ARIA:!SEED:" \
	"!AESCCM8"

/* Sessions cached for TLS 1.2 resumption by id. OpenSSL's default
 * (20480) would let a connection flood pin tens of megabytes. */
#define SESSION_CACHE_MAX 1024

const char *smtpd_tls_reason(char *buf, size_t n, const char *fallback)
{
	unsigned long e = ERR_get_error();
	if (!e) {
		snprintf(buf, n, "%s", fallback);
		return buf;
	}
	const char *r = NULL;
#ifdef ERR_SYSTEM_ERROR
	/* fopen() failures: the errno, as "No such file or directory". */
	if (ERR_SYSTEM_ERROR(e))
		r = strerror(ERR_GET_REASON(e));
#endif
	if (!r)
		r = ERR_reason_error_string(e);
	if (r)
		snprintf(buf, n, "%s", r);
	else
		ERR_error_string_n(e, buf, n);
	ERR_clear_error();
	return buf;
}

SSL_CTX *smtpd_tls_ctx_new(const char *cert_file, const char *key_file,
                           char *err, size_t errlen)
{
	char why[256];
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errlen, "TLS: %s",
		         smtpd_tls_reason(why, sizeof why, "out of memory"));
		return NULL;
	}
	/* RFC 8996 retired TLS 1.0 and 1.1; RFC 8314 §4.1 asks for 1.2. */
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS)) {
		snprintf(err, errlen, "TLS settings: %s",
		         smtpd_tls_reason(why, sizeof why, "rejected"));
		goto fail;
	}
	/* Our order, not the client's; no client-initiated renegotiation (a
	 * cheap way to make the server do expensive work); no compression
	 * (CRIME). Idle sessions give their read and write buffers back. */
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE |
	                         SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_dh_auto(ctx, 1);
	SSL_CTX_sess_set_cache_size(ctx, SESSION_CACHE_MAX);
	/* SNI: one certificate for every name for now; OpenSSL accepts the
	 * extension without a servername callback and the session logs it. */

	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		snprintf(err, errlen, "tls_cert_file %s: %s", cert_file,
		         smtpd_tls_reason(why, sizeof why, "cannot load"));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		unsigned long e = ERR_peek_error();
		smtpd_tls_reason(why, sizeof why, "cannot load");
		if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
		    ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
			snprintf(err, errlen, "tls_key_file %s does not match the "
			         "certificate in %s", key_file, cert_file);
		else
			snprintf(err, errlen, "tls_key_file %s: %s", key_file, why);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ERR_clear_error();
		snprintf(err, errlen, "tls_key_file %s does not match the "
		         "certificate in %s", key_file, cert_file);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

bool smtpd_tls_ctx_describe(SSL_CTX *ctx, char *out, size_t n)
{
	X509 *crt = SSL_CTX_get0_certificate(ctx);
	snprintf(out, n, "no certificate");
	if (!crt)
		return false;
	char subject[256] = "?", expires[64] = "?", fp[2 * EVP_MAX_MD_SIZE + 1];
	BIO *b = BIO_new(BIO_s_mem());
	if (b) {
		if (X509_NAME_print_ex(b, X509_get_subject_name(crt), 0,
		                       XN_FLAG_RFC2253) >= 0) {
			int k = BIO_read(b, subject, sizeof subject - 1);
			subject[k > 0 ? k : 0] = '\0';
		}
		(void)BIO_reset(b);
		if (ASN1_TIME_print(b, X509_get0_notAfter(crt))) {
			int k = BIO_read(b, expires, sizeof expires - 1);
			expires[k > 0 ? k : 0] = '\0';
		}
		BIO_free(b);
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	fp[0] = '\0';
	if (X509_digest(crt, EVP_sha256(), md, &mdlen))
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(fp + 2 * i, 3, "%02X", md[i]);
	bool expired = X509_cmp_current_time(X509_get0_notAfter(crt)) < 0;
	ERR_clear_error();
	snprintf(out, n, "subject=%s, expires=%s%s, sha256=%s", subject, expires,
	         expired ? " (EXPIRED)" : "", fp);
	return expired;
}
