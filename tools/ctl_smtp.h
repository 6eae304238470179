/*
 * tools/ctl_smtp.h - relayctl's blocking SMTP client session, built on the
 * daemon's pure client core (deliver/deliver_client.h) and TLS stream
 * (common/tls_stream.h): connect, [implicit TLS], greeting, EHLO,
 * [STARTTLS, EHLO], [AUTH], then optionally one message, and QUIT. Every
 * wait is bounded by timeout_ms; every failure is one sentence in err.
 * Used by `relayctl setup smarthost` (the login check) and `relayctl
 * send-test` (the submission to relayd). Not a public header.
 */
#ifndef RELAY_CTL_SMTP_H
#define RELAY_CTL_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"
#include "common/tls_stream.h"
#include "deliver/deliver_client.h"

struct ctl_smtp_opts {
	const char *host;       /* a name or a literal address */
	uint16_t port;
	enum conf_tls tls;      /* IMPLICIT, STARTTLS or NONE (not AUTO) */
	SSL_CTX *ssl;           /* for TLS; its verify mode decides checks */
	const char *tls_name;   /* the name the certificate must carry */
	const char *helo;
	const char *user;       /* AUTH when non-NULL (required then) */
	const char *password;
	int timeout_ms;         /* each connect, handshake round and reply */
};

struct ctl_smtp;

/* Connects and runs the session up to the point where a message could
 * be sent (TLS and AUTH done). 0, or -errno with err saying what failed:
 * -ECONNREFUSED/-ETIMEDOUT/... (connect), -EPROTO (TLS, protocol),
 * -EACCES (AUTH refused or not offered). */
int ctl_smtp_open(struct ctl_smtp **out, const struct ctl_smtp_opts *o,
                  char *err, size_t errlen);
/* "host[ip]:port" of the connected peer. */
const char *ctl_smtp_peer(const struct ctl_smtp *s);
/* True when TLS is on; desc gets "TLSv1.3 TLS_AES_256_GCM_SHA384". */
bool ctl_smtp_tls(const struct ctl_smtp *s, char *desc, size_t n);
/* One message to one recipient (body: CRLF lines, 7-bit); reply gets the
 * server's answer to it (the RCPT, MAIL or final reply that decided it).
 * 0 when the server answered (whatever the code), -errno when the session
 * failed (err, as given to ctl_smtp_open, says why). */
int ctl_smtp_send(struct ctl_smtp *s, const char *from, const char *rcpt,
                  const uint8_t *body, size_t n, struct deliver_reply *reply);
/* QUIT (when the session is idle; bounded) and free. NULL: no-op. */
void ctl_smtp_close(struct ctl_smtp *s);

#endif
