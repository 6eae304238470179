/*
 * tests/unit/test_tls_stream.c - common/tls_stream: a client stream and a
 * server stream talk through memory only (each one's drained ciphertext is
 * put into the other): the handshake completes, application data crosses
 * both ways byte for byte, close_notify reads as TLS_STREAM_EOF, and
 * garbage instead of a ClientHello fails the handshake with -EPROTO.
 * The server's certificate is made here (EC P-256, self-signed).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/buffer.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/buf.h"
#include "common/tls_stream.h"

static SSL_CTX *server_ctx(void)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	assert_non_null(key);
	X509 *x = X509_new();
	assert_non_null(x);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509_NAME *n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
	                           (const unsigned char *)"relay.test", -1, -1, 0);
	X509_set_issuer_name(x, n);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_use_certificate(ctx, x), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
	X509_free(x);
	EVP_PKEY_free(key);
	return ctx;
}

static int collect(void *arg, const uint8_t *p, size_t n)
{
	return buf_append(arg, p, n) < 0;
}

/* Moves what a wrote for the wire into b; returns how many bytes. */
static size_t pump(struct tls_stream *a, struct tls_stream *b)
{
	struct buf w = BUF_INIT(1 << 20);
	tls_stream_drain(a, collect, &w);
	size_t n = w.len;
	assert_int_equal(tls_stream_pending(a), 0);
	if (n)
		assert_int_equal(tls_stream_put(b, w.data, w.len), 0);
	buf_free(&w);
	return n;
}

struct pair {
	SSL_CTX *sctx, *cctx;
	struct tls_stream s, c;
};

static void pair_up(struct pair *p)
{
	p->sctx = server_ctx();
	p->cctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(p->cctx);
	assert_int_equal(tls_stream_init(&p->s, p->sctx, true), 0);
	assert_int_equal(tls_stream_init(&p->c, p->cctx, false), 0);
	int cr = 0, sr = 0;
	/* A TLS 1.3 handshake takes a few flights; bounded. */
	for (int i = 0; i < 10 && (cr != 1 || sr != 1); i++) {
		if (cr != 1)
			cr = tls_stream_handshake(&p->c);
		assert_true(cr >= 0);
		pump(&p->c, &p->s);
		if (sr != 1)
			sr = tls_stream_handshake(&p->s);
		assert_true(sr >= 0);
		pump(&p->s, &p->c);
	}
	assert_int_equal(cr, 1);
	assert_int_equal(sr, 1);
	assert_true(p->c.done && p->s.done);
	assert_string_equal(tls_stream_version(&p->c), tls_stream_version(&p->s));
}

static void pair_free(struct pair *p)
{
	tls_stream_free(&p->s);
	tls_stream_free(&p->c);
	tls_stream_free(&p->c);   /* a freed stream is a no-op */
	assert_null(p->c.ssl);
	SSL_CTX_free(p->sctx);
	SSL_CTX_free(p->cctx);
}

/* Reads everything readable from t into out. */
static ssize_t read_all(struct tls_stream *t, struct buf *out)
{
	uint8_t tmp[1000];   /* smaller than a record: several reads */
	ssize_t n;
	while ((n = tls_stream_read(t, tmp, sizeof tmp)) > 0)
		assert_int_equal(buf_append(out, tmp, (size_t)n), 0);
	return n;
}

static void test_data_both_ways(void **state)
{
	(void)state;
	struct pair p;
	pair_up(&p);
	/* 200 KB: more than one record and more than one write chunk. */
	static uint8_t big[200000];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7 + 3);
	assert_int_equal(tls_stream_write(&p.c, big, sizeof big), 0);
	assert_true(tls_stream_pending(&p.c) > sizeof big);
	pump(&p.c, &p.s);
	struct buf got = BUF_INIT(1 << 20);
	assert_int_equal(read_all(&p.s, &got), 0);
	assert_int_equal(got.len, sizeof big);
	assert_memory_equal(got.data, big, sizeof big);
	buf_reset(&got);
	assert_int_equal(tls_stream_write(&p.s, "250 ok\r\n", 8), 0);
	pump(&p.s, &p.c);
	assert_int_equal(read_all(&p.c, &got), 0);
	assert_int_equal(got.len, 8);
	assert_memory_equal(got.data, "250 ok\r\n", 8);
	/* close_notify from the client reads as EOF on the server. */
	tls_stream_shutdown(&p.c);
	assert_true(pump(&p.c, &p.s) > 0);
	buf_reset(&got);
	assert_int_equal(read_all(&p.s, &got), TLS_STREAM_EOF);
	assert_int_equal(got.len, 0);
	buf_free(&got);
	pair_free(&p);
}

static size_t bio_cap(BIO *b)
{
	BUF_MEM *bm = NULL;
	BIO_get_mem_ptr(b, &bm);
	return bm ? bm->max : 0;
}

/* A burst grows the memory BIOs; tls_stream_trim gives the memory back
 * once they are mostly unused, and never loses or reorders what they
 * hold (here: half a record left undecrypted in the server's rbio). */
static void test_trim_keeps_bytes(void **state)
{
	(void)state;
	struct pair p;
	pair_up(&p);
	static uint8_t big[100000];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 13 + 1);
	assert_int_equal(tls_stream_buffered(&p.s), 0);
	assert_int_equal(tls_stream_write(&p.c, big, sizeof big), 0);
	struct buf w = BUF_INIT(1 << 20);
	tls_stream_drain(&p.c, collect, &w);
	assert_true(bio_cap(p.c.wbio) > TLS_STREAM_TRIM);
	tls_stream_trim(&p.c);   /* wbio empty: back to nothing */
	assert_true(bio_cap(p.c.wbio) <= TLS_STREAM_TRIM);
	/* All but the last 300 bytes of ciphertext reach the server. */
	size_t first = w.len - 300;
	assert_int_equal(tls_stream_put(&p.s, w.data, first), 0);
	assert_int_equal(tls_stream_buffered(&p.s), first);
	struct buf got = BUF_INIT(1 << 20);
	assert_int_equal(read_all(&p.s, &got), 0);
	size_t held = tls_stream_buffered(&p.s);
	assert_true(held < TLS_STREAM_CHUNK);   /* the last record's part */
	tls_stream_trim(&p.s);
	assert_int_equal(tls_stream_buffered(&p.s), held);
	assert_true(bio_cap(p.s.rbio) <= TLS_STREAM_TRIM + held);
	assert_int_equal(tls_stream_put(&p.s, w.data + first, 300), 0);
	assert_int_equal(read_all(&p.s, &got), 0);
	assert_int_equal(got.len, sizeof big);
	assert_memory_equal(got.data, big, sizeof big);
	assert_int_equal(tls_stream_buffered(&p.s), 0);
	buf_free(&got);
	buf_free(&w);
	pair_free(&p);
}

static void test_garbage_fails_handshake(void **state)
{
	(void)state;
	SSL_CTX *ctx = server_ctx();
	struct tls_stream s;
	assert_int_equal(tls_stream_init(&s, ctx, true), 0);
	assert_int_equal(tls_stream_handshake(&s), 0);   /* wants a hello */
	const char junk[] = "EHLO not-a-client-hello\r\n";
	assert_int_equal(tls_stream_put(&s, junk, sizeof junk - 1), 0);
	assert_int_equal(tls_stream_handshake(&s), -EPROTO);
	assert_false(s.done);
	tls_stream_free(&s);
	SSL_CTX_free(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_data_both_ways),
		cmocka_unit_test(test_trim_keeps_bytes),
		cmocka_unit_test(test_garbage_fails_handshake),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
