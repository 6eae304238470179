/*
 * smtpd/smtpd_tls.h - The listeners' TLS context: tls_cert_file and
 * tls_key_file loaded into an OpenSSL SSL_CTX with relayd's server
 * settings (TLS 1.2 at least, the server's cipher order, no
 * renegotiation). smtpd_session.c makes one SSL per session from it and
 * runs it over memory BIOs; relayd -t uses it to check the files. No
 * libuv, no global state: safe to call on a thread-pool thread (SIGHUP
 * reloads load there).
 */
#ifndef RELAY_SMTPD_TLS_H
#define RELAY_SMTPD_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

/* A server context holding the certificate (with the chain that follows
 * it in cert_file) and its key. NULL on failure, with a message naming
 * the file and OpenSSL's reason in err ("tls_key_file /x: No such file or
 * directory", "tls_key_file /k does not match the certificate in /c").
 * Reads files: blocking I/O. */
SSL_CTX *smtpd_tls_ctx_new(const char *cert_file, const char *key_file,
                           char *err, size_t errlen);

/* "subject=CN=mx.example.org, expires=Nov 21 06:00:00 2026 GMT,
 * sha256=AB12..." for log lines. Returns true when the certificate has
 * expired already (worth a warning: clients that check will refuse it). */
bool smtpd_tls_ctx_describe(SSL_CTX *ctx, char *out, size_t n);

/* The reason for the first error in this thread's OpenSSL error queue,
 * or `fallback` when it is empty; the queue is emptied. */
const char *smtpd_tls_reason(char *buf, size_t n, const char *fallback);

#endif
