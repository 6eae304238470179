/*
 * common/tls_stream.h - TLS over memory BIOs, for the SMTP server
 * (smtpd/smtpd_session.c) and the SMTP client (deliver/deliver_session.c):
 * libuv does every socket read and write, OpenSSL only turns ciphertext
 * into plaintext and back, so nothing blocks and no socket is handed to
 * OpenSSL. The caller owns the loop side: it puts what it read with
 * tls_stream_put, drives the handshake, reads plaintext out, writes
 * plaintext in, and sends what tls_stream_drain hands it.
 *
 * Memory: the inbound BIO holds what was put and not yet read; the caller
 * bounds it by reading from the socket only while it has room for the
 * plaintext (flow control). The outbound BIO is emptied by every drain.
 *
 * This is the one file besides the contexts' owners that includes
 * OpenSSL for the sessions (STYLE.md: the TLS stream helper).
 */
#ifndef RELAY_TLS_STREAM_H
#define RELAY_TLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

/* Ciphertext moves in pieces this big (a TLS record is at most 16 KiB
 * plus overhead). */
#define TLS_STREAM_CHUNK (16 * 1024 + 512)

/* tls_stream_read: the peer sent close_notify. */
#define TLS_STREAM_EOF (-1000)

struct tls_stream {
	SSL *ssl;          /* owns rbio (ciphertext in) and wbio (out) */
	BIO *rbio, *wbio;
	bool done;         /* the handshake completed */
};

/* A stream on ctx, as a server (accepts) or a client (connects). 0, or
 * -ENOMEM with t left empty. */
int tls_stream_init(struct tls_stream *t, SSL_CTX *ctx, bool server);

/* Frees the SSL and both BIOs; an empty or freed stream is a no-op. */
void tls_stream_free(struct tls_stream *t);

/* A client stream's peer is name (a host name or an IP address): SNI
 * for a host name, and when the stream's context verifies the peer, the
 * certificate must name it (RFC 6125; no partial wildcards; an address
 * must be in an IP SAN). 0, or -EINVAL when OpenSSL cannot take the name.
 * Before the handshake. Used by deliver/ and relayctl's SMTP probe. */
int tls_stream_peer_name(struct tls_stream *t, const char *name);

/* Ciphertext read from the socket. 0, or -ENOMEM. */
int tls_stream_put(struct tls_stream *t, const void *p, size_t n);

/* One step of the handshake: 1 done, 0 more input needed, -EPROTO failed
 * (OpenSSL's error queue says why; drain first: an alert may wait). */
int tls_stream_handshake(struct tls_stream *t);

/* Plaintext from what was put: > 0 bytes, 0 more input needed,
 * TLS_STREAM_EOF on close_notify, -EPROTO on a TLS error. */
ssize_t tls_stream_read(struct tls_stream *t, void *p, size_t n);

/* Encrypts all of p (a memory BIO never pushes back); drain afterwards.
 * 0, or -EPROTO. */
int tls_stream_write(struct tls_stream *t, const void *p, size_t n);

/* Queues close_notify (drain afterwards). */
void tls_stream_shutdown(struct tls_stream *t);

/* Ciphertext waiting for the socket. */
size_t tls_stream_pending(const struct tls_stream *t);

/* Input from the peer not yet read: ciphertext put and not yet taken by
 * OpenSSL, and the plaintext left of the record it decrypted last. A
 * reader that stops reading the socket while this is a
 * whole record or more holds at most about one record per stream. */
size_t tls_stream_buffered(const struct tls_stream *t);

/* Gives back the memory of a BIO whose buffer grew past TLS_STREAM_TRIM
 * and is now at most a quarter used, keeping what it holds (a memory BIO
 * never shrinks by itself: a burst of input or replies would otherwise
 * stay allocated for the life of the connection). Cheap when there is
 * nothing to do; call it when the session goes idle or stops reading. */
#define TLS_STREAM_TRIM 4096
void tls_stream_trim(struct tls_stream *t);

/* Hands every byte OpenSSL wrote for the peer to out(arg, p, n), in
 * order, in pieces of at most TLS_STREAM_CHUNK; stops early when out
 * returns non-zero (the caller closed). */
void tls_stream_drain(struct tls_stream *t,
                      int (*out)(void *arg, const uint8_t *p, size_t n),
                      void *arg);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" parts, for logs and Received:. */
const char *tls_stream_version(const struct tls_stream *t);
/* OpenSSL's version, as linked ("OpenSSL 3.0.x ..."), for --version. */
const char *tls_library_version(void);
const char *tls_stream_cipher(const struct tls_stream *t);

#endif
