/*
 * common/tls_stream.c - TLS over memory BIOs (tls_stream.h): one SSL with
 * a memory BIO each way, shared by the SMTP server and client sessions.
 * Owns the SSL and its BIOs; knows nothing of sockets, libuv or SMTP.
 */
#include "common/tls_stream.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <arpa/inet.h>

#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

int tls_stream_peer_name(struct tls_stream *t, const char *name)
{
	struct in6_addr a6;
	struct in_addr a4;
	bool is_ip = inet_pton(AF_INET, name, &a4) == 1 ||
	             inet_pton(AF_INET6, name, &a6) == 1;
	/* RFC 6066 §3: SNI carries host names, never literal addresses. */
	if (!is_ip && SSL_set_tlsext_host_name(t->ssl, name) != 1)
		return -EINVAL;
	if (!(SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER))
		return 0;
	X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
	X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
	               : X509_VERIFY_PARAM_set1_host(vp, name, 0);
	return ok ? 0 : -EINVAL;
}

int tls_stream_init(struct tls_stream *t, SSL_CTX *ctx, bool server)
{
	memset(t, 0, sizeof *t);
	SSL *ssl = SSL_new(ctx);
	BIO *rbio = BIO_new(BIO_s_mem());
	BIO *wbio = BIO_new(BIO_s_mem());
	if (!ssl || !rbio || !wbio) {
		BIO_free(rbio);
		BIO_free(wbio);
		SSL_free(ssl);
		ERR_clear_error();
		return -ENOMEM;
	}
	SSL_set_bio(ssl, rbio, wbio);   /* ssl owns both now */
	if (server)
		SSL_set_accept_state(ssl);
	else
		SSL_set_connect_state(ssl);
	t->ssl = ssl;
	t->rbio = rbio;
	t->wbio = wbio;
	return 0;
}

void tls_stream_free(struct tls_stream *t)
{
	SSL_free(t->ssl);   /* and its BIOs; NULL: no-op */
	memset(t, 0, sizeof *t);
}

int tls_stream_put(struct tls_stream *t, const void *p, size_t n)
{
	while (n > 0) {
		int k = n > INT_MAX ? INT_MAX : (int)n;
		/* A memory BIO takes everything or fails for lack of memory. */
		if (BIO_write(t->rbio, p, k) != k)
			return -ENOMEM;
		p = (const uint8_t *)p + k;
		n -= (size_t)k;
	}
	return 0;
}

int tls_stream_handshake(struct tls_stream *t)
{
	ERR_clear_error();
	int r = SSL_do_handshake(t->ssl);
	if (r == 1) {
		t->done = true;
		return 1;
	}
	int e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	return -EPROTO;
}

ssize_t tls_stream_read(struct tls_stream *t, void *p, size_t n)
{
	if (n > INT_MAX)
		n = INT_MAX;
	ERR_clear_error();
	int k = SSL_read(t->ssl, p, (int)n);
	if (k > 0)
		return k;
	int e = SSL_get_error(t->ssl, k);
	if (e == SSL_ERROR_WANT_READ)
		return 0;
	if (e == SSL_ERROR_ZERO_RETURN)
		return TLS_STREAM_EOF;
	return -EPROTO;
}

int tls_stream_write(struct tls_stream *t, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n > 0) {
		/* Records are at most 16 KiB; bigger calls only make OpenSSL
		 * loop, smaller ones keep each BIO_write small. */
		size_t k = n > 4 * TLS_STREAM_CHUNK ? 4 * TLS_STREAM_CHUNK : n;
		ERR_clear_error();
		int w = SSL_write(t->ssl, b, (int)k);
		if (w <= 0)
			return -EPROTO;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

void tls_stream_shutdown(struct tls_stream *t)
{
	ERR_clear_error();
	SSL_shutdown(t->ssl);
	ERR_clear_error();
}

size_t tls_stream_pending(const struct tls_stream *t)
{
	return t->wbio ? BIO_ctrl_pending(t->wbio) : 0;
}

size_t tls_stream_buffered(const struct tls_stream *t)
{
	if (!t->ssl)
		return 0;
	int p = SSL_pending(t->ssl);   /* decrypted, not yet read */
	return BIO_ctrl_pending(t->rbio) + (p > 0 ? (size_t)p : 0);
}

/* A fresh BIO holding what b holds when b's buffer grew past
 * TLS_STREAM_TRIM and is mostly unused, or NULL (keep b). */
static BIO *trimmed(BIO *b)
{
	BUF_MEM *bm = NULL;
	if (!b)
		return NULL;
	size_t held = BIO_ctrl_pending(b);
	BIO_get_mem_ptr(b, &bm);
	if (!bm || bm->max <= TLS_STREAM_TRIM || held > bm->max / 4)
		return NULL;
	BIO *n = BIO_new(BIO_s_mem());
	if (n && held > 0 &&
	    BIO_write(n, bm->data, (int)held) != (int)held) {
		BIO_free(n);
		n = NULL;
	}
	if (!n)
		ERR_clear_error();   /* keep the big one; try again later */
	return n;
}

void tls_stream_trim(struct tls_stream *t)
{
	if (!t->ssl)
		return;
	BIO *n = trimmed(t->rbio);
	if (n) {
		SSL_set0_rbio(t->ssl, n);   /* frees the old one */
		t->rbio = n;
	}
	n = trimmed(t->wbio);
	if (n) {
		SSL_set0_wbio(t->ssl, n);
		t->wbio = n;
	}
}

void tls_stream_drain(struct tls_stream *t,
                      int (*out)(void *arg, const uint8_t *p, size_t n),
                      void *arg)
{
	uint8_t tmp[TLS_STREAM_CHUNK];
	int n;
	while (t->wbio && (n = BIO_read(t->wbio, tmp, sizeof tmp)) > 0)
		if (out(arg, tmp, (size_t)n) != 0)
			return;
}

const char *tls_stream_version(const struct tls_stream *t)
{
	return SSL_get_version(t->ssl);
}

const char *tls_stream_cipher(const struct tls_stream *t)
{
	return SSL_get_cipher_name(t->ssl);
}

const char *tls_library_version(void)
{
	return OpenSSL_version(OPENSSL_VERSION);
}
