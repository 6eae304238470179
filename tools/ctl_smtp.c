/*
 * tools/ctl_smtp.c - A blocking driver for relayd's SMTP client core
 * (deliver/deliver_client.h) and TLS stream (common/tls_stream.h), for
 * relayctl: `setup smarthost` checks a login with it (EHLO, TLS, AUTH,
 * QUIT; no mail) and `send-test` submits its message to relayd with it.
 * No second SMTP client: the protocol, reply parsing and bounds are the
 * daemon's; this file only connects, polls with a deadline per step, and
 * turns failures into one sentence ("connect to H:P: Connection refused",
 * "TLS: certificate verify failed for NAME: ...", "AUTH refused: 535 ...").
 */
#include "tools/ctl_smtp.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/buf.h"
#include "common/log.h"

/* Server bytes per read; the client core bounds what it keeps. */
#define CTL_SMTP_RBUF 16384
/* The outgoing command buffer (commands and dot-stuffed body pieces). */
#define CTL_SMTP_OUT_MAX (1u << 20)

struct ctl_smtp {
	int fd;
	struct deliver_client *cl;
	struct tls_stream tls;
	bool tls_on;
	int timeout_ms;
	const char *what;      /* "relayd at 127.0.0.1:2525", for errors */
	char peer[160];
	struct buf out;
	char *err;
	size_t errlen;
};

static int64_t ctl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ctl_smtp_fail(struct ctl_smtp *s, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int ctl_smtp_fail(struct ctl_smtp *s, int r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->err, s->errlen, fmt, ap);
	va_end(ap);
	return r;
}

/* Waits for ev on the socket until the step's deadline. */
static int ctl_smtp_wait(struct ctl_smtp *s, short ev, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - ctl_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = s->fd, .events = ev};
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r > 0)
			return 0;
	}
}

static int ctl_smtp_write_raw(struct ctl_smtp *s, const uint8_t *p, size_t n)
{
	int64_t deadline = ctl_now_ms() + s->timeout_ms;
	while (n > 0) {
		ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			int r = ctl_smtp_wait(s, POLLOUT, deadline);
			if (r < 0)
				return ctl_smtp_fail(s, r, "writing to %s: %s", s->peer,
				                     strerror(-r));
			continue;
		}
		if (w < 0)
			return ctl_smtp_fail(s, -errno, "writing to %s: %s", s->peer,
			                     strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int ctl_smtp_drain_cb(void *arg, const uint8_t *p, size_t n)
{
	return ctl_smtp_write_raw(arg, p, n) < 0 ? 1 : 0;
}

static int ctl_smtp_drain(struct ctl_smtp *s)
{
	s->err[0] = '\0';
	tls_stream_drain(&s->tls, ctl_smtp_drain_cb, s);
	return s->err[0] ? -EIO : 0;
}

/* Sends what the client core queued in s->out. */
static int ctl_smtp_flush(struct ctl_smtp *s)
{
	if (s->out.len == 0)
		return 0;
	int r;
	if (s->tls_on) {
		if (tls_stream_write(&s->tls, s->out.data, s->out.len) < 0)
			r = ctl_smtp_fail(s, -EPROTO, "TLS write to %s failed",
			                  s->peer);
		else
			r = ctl_smtp_drain(s);
	} else {
		r = ctl_smtp_write_raw(s, s->out.data, s->out.len);
	}
	buf_reset(&s->out);
	return r;
}

/* One read from the socket into p: > 0 bytes, or an error set. */
static ssize_t ctl_smtp_read_raw(struct ctl_smtp *s, uint8_t *p, size_t n,
                                 const char *doing)
{
	int64_t deadline = ctl_now_ms() + s->timeout_ms;
	for (;;) {
		ssize_t r = recv(s->fd, p, n, 0);
		if (r > 0)
			return r;
		if (r == 0)
			return ctl_smtp_fail(s, -ECONNRESET, "%s closed the connection "
			                     "%s", s->peer, doing);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return ctl_smtp_fail(s, -errno, "reading from %s %s: %s",
			                     s->peer, doing, strerror(errno));
		int w = ctl_smtp_wait(s, POLLIN, deadline);
		if (w == -ETIMEDOUT)
			return ctl_smtp_fail(s, w, "no answer from %s within %d s %s",
			                     s->peer, s->timeout_ms / 1000, doing);
		if (w < 0)
			return ctl_smtp_fail(s, w, "waiting for %s: %s", s->peer,
			                     strerror(-w));
	}
}

/* Why the handshake failed, naming the certificate problem when it was
 * one (the verify result says which: expired, unknown CA, wrong name). */
static int ctl_smtp_tls_error(struct ctl_smtp *s, const char *name)
{
	long v = SSL_get_verify_result(s->tls.ssl);
	if (v != X509_V_OK) {
		ERR_clear_error();
		return ctl_smtp_fail(s, -EPROTO, "TLS: the certificate of %s does "
		                     "not verify for the name %s: %s", s->peer, name,
		                     X509_verify_cert_error_string(v));
	}
	char e[200] = "";
	unsigned long code = ERR_get_error();
	if (code)
		ERR_error_string_n(code, e, sizeof e);
	ERR_clear_error();
	return ctl_smtp_fail(s, -EPROTO, "TLS handshake with %s failed: %s",
	                     s->peer, e[0] ? e : "connection closed");
}

static int ctl_smtp_handshake(struct ctl_smtp *s, SSL_CTX *ctx,
                              const char *name)
{
	if (tls_stream_init(&s->tls, ctx, false) < 0)
		return ctl_smtp_fail(s, -ENOMEM, "TLS: out of memory");
	/* As deliver/: the certificate must name the host we meant. */
	if (tls_stream_peer_name(&s->tls, name) < 0)
		return ctl_smtp_fail(s, -EINVAL, "TLS: cannot check the name %s",
		                     name);
	uint8_t rb[CTL_SMTP_RBUF];
	/* Bounded: each round either completes, fails, or waits at most
	 * timeout_ms for the peer's next flight. */
	for (int round = 0; round < 64; round++) {
		int r = tls_stream_handshake(&s->tls);
		if (ctl_smtp_drain(s) < 0)
			return -EIO;
		if (r == 1) {
			s->tls_on = true;
			return 0;
		}
		if (r < 0)
			return ctl_smtp_tls_error(s, name);
		ssize_t n = ctl_smtp_read_raw(s, rb, sizeof rb,
		                              "during the TLS handshake");
		if (n < 0) {
			if (SSL_get_verify_result(s->tls.ssl) != X509_V_OK)
				return ctl_smtp_tls_error(s, name);
			return (int)n;
		}
		if (tls_stream_put(&s->tls, rb, (size_t)n) < 0)
			return ctl_smtp_fail(s, -ENOMEM, "TLS: out of memory");
	}
	return ctl_smtp_fail(s, -EPROTO, "TLS handshake with %s did not finish",
	                     s->peer);
}

/* Reads once and hands the plaintext to the client core. */
static int ctl_smtp_read(struct ctl_smtp *s)
{
	uint8_t rb[CTL_SMTP_RBUF];
	char doing[96];
	snprintf(doing, sizeof doing, "%s",
	         deliver_client_state_desc(s->cl));
	ssize_t n = ctl_smtp_read_raw(s, rb, sizeof rb, doing);
	if (n < 0)
		return (int)n;
	if (!s->tls_on)
		return deliver_client_input(s->cl, rb, (size_t)n) < 0
		       ? ctl_smtp_fail(s, -EPROTO, "reply from %s too long",
		                       s->peer) : 0;
	if (tls_stream_put(&s->tls, rb, (size_t)n) < 0)
		return ctl_smtp_fail(s, -ENOMEM, "TLS: out of memory");
	for (;;) {
		ssize_t m = tls_stream_read(&s->tls, rb, sizeof rb);
		if (m == 0)
			break;
		if (m == TLS_STREAM_EOF)
			return ctl_smtp_fail(s, -ECONNRESET, "%s closed TLS %s",
			                     s->peer, doing);
		if (m < 0)
			return ctl_smtp_fail(s, -EPROTO, "TLS error from %s %s",
			                     s->peer, doing);
		if (deliver_client_input(s->cl, rb, (size_t)m) < 0)
			return ctl_smtp_fail(s, -EPROTO, "reply from %s too long",
			                     s->peer);
	}
	return ctl_smtp_drain(s);
}

/* The session's failure as a sentence, by its kind. */
static int ctl_smtp_failed(struct ctl_smtp *s)
{
	const struct deliver_reply *r = NULL;
	enum deliver_client_fail k = deliver_client_error(s->cl, &r);
	const char *t = r ? r->text : "";
	switch (k) {
	case DELIVER_FAIL_AUTH:
		return ctl_smtp_fail(s, -EACCES, "AUTH refused by %s: %s",
		                     s->peer, t);
	case DELIVER_FAIL_NO_AUTH:
		return ctl_smtp_fail(s, -EACCES, "%s offers no AUTH mechanism "
		                     "relayd can use (PLAIN or LOGIN)%s%s", s->peer,
		                     t[0] ? ": " : "", t);
	case DELIVER_FAIL_NO_TLS:
		return ctl_smtp_fail(s, -EPROTO, "%s does not offer STARTTLS%s%s",
		                     s->peer, t[0] ? ": " : "", t);
	case DELIVER_FAIL_GREETING:
		return ctl_smtp_fail(s, -ECONNREFUSED, "%s refused the session: %s",
		                     s->peer, t);
	case DELIVER_FAIL_CLOSED:
		return ctl_smtp_fail(s, -ECONNRESET, "%s is closing: %s", s->peer,
		                     t);
	default:
		return ctl_smtp_fail(s, -EPROTO, "unexpected reply from %s: %s",
		                     s->peer, t);
	}
}

/* Steps the core until it needs the caller (READY, BODY, DONE, CLOSED);
 * STARTTLS is handled here. */
static int ctl_smtp_run(struct ctl_smtp *s, SSL_CTX *ctx, const char *name,
                        enum deliver_client_ev *ev)
{
	/* Each WAIT costs a read (bounded by timeout_ms), and the core ends
	 * a session after DELIVER_REPLY_LINES_MAX lines of one reply: a
	 * server cannot keep this loop going without progress for long. */
	for (int i = 0; i < 10000; i++) {
		enum deliver_client_ev e = deliver_client_step(s->cl, &s->out);
		int r = ctl_smtp_flush(s);
		if (r < 0)
			return r;
		switch (e) {
		case DELIVER_CL_WAIT:
			if ((r = ctl_smtp_read(s)) < 0)
				return r;
			break;
		case DELIVER_CL_STARTTLS:
			if (!ctx)
				return ctl_smtp_fail(s, -EPROTO, "no TLS context");
			if ((r = ctl_smtp_handshake(s, ctx, name)) < 0)
				return r;
			deliver_client_tls_ready(s->cl, &s->out);
			break;
		case DELIVER_CL_FAILED:
			return ctl_smtp_failed(s);
		default:
			*ev = e;
			return 0;
		}
	}
	return ctl_smtp_fail(s, -EPROTO, "%s: too many replies", s->peer);
}

static int ctl_smtp_connect(struct ctl_smtp *s, const char *host,
                            uint16_t port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_NUMERICSERV}, *res = NULL;
	char ps[8];
	snprintf(ps, sizeof ps, "%u", port);
	int g = getaddrinfo(host, ps, &hints, &res);
	if (g != 0)
		return ctl_smtp_fail(s, -EHOSTUNREACH, "cannot resolve %s: %s",
		                     host, gai_strerror(g));
	int last = -EHOSTUNREACH;
	char tried[160] = "";
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		char ip[INET6_ADDRSTRLEN] = "?";
		void *ap = a->ai_family == AF_INET6
		           ? (void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr
		           : (void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr;
		inet_ntop(a->ai_family, ap, ip, sizeof ip);
		if (strcmp(host, ip) == 0)
			snprintf(tried, sizeof tried, a->ai_family == AF_INET6
			         ? "[%s]:%u" : "%s:%u", ip, port);
		else
			snprintf(tried, sizeof tried, "%s[%s]:%u", host, ip, port);
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK |
		                SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0) {
			last = -errno;
			continue;
		}
		s->fd = fd;
		int r = connect(fd, a->ai_addr, a->ai_addrlen) < 0 ? -errno : 0;
		if (r == -EINPROGRESS) {
			r = ctl_smtp_wait(s, POLLOUT, ctl_now_ms() + s->timeout_ms);
			if (r == 0) {
				int e = 0;
				socklen_t el = sizeof e;
				getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
				r = -e;
			}
		}
		if (r == 0) {
			snprintf(s->peer, sizeof s->peer, "%s", tried);
			freeaddrinfo(res);
			return 0;
		}
		close(fd);
		s->fd = -1;
		last = r;
	}
	freeaddrinfo(res);
	return ctl_smtp_fail(s, last, "connect to %s: %s",
	                     tried[0] ? tried : host,
	                     last == -ETIMEDOUT ? "no answer (timed out; "
	                     "a firewall may drop the port)" : strerror(-last));
}

int ctl_smtp_open(struct ctl_smtp **out, const struct ctl_smtp_opts *o,
                  char *err, size_t errlen)
{
	*out = NULL;
	struct ctl_smtp *s = calloc(1, sizeof *s);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->fd = -1;
	s->err = err;
	s->errlen = errlen;
	s->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
	buf_init(&s->out, CTL_SMTP_OUT_MAX);
	struct deliver_client_opts co = {
		.helo = o->helo,
		.starttls = o->tls == CONF_TLS_STARTTLS,
		.user = o->user,
		.password = o->password,
	};
	s->cl = deliver_client_new(&co);
	if (!s->cl) {
		ctl_smtp_close(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int r = ctl_smtp_connect(s, o->host, o->port);
	if (r == 0 && o->tls == CONF_TLS_IMPLICIT)
		r = ctl_smtp_handshake(s, o->ssl, o->tls_name);
	enum deliver_client_ev ev = DELIVER_CL_WAIT;
	if (r == 0)
		r = ctl_smtp_run(s, o->ssl, o->tls_name, &ev);
	if (r == 0 && ev != DELIVER_CL_READY)
		r = ctl_smtp_fail(s, -EPROTO, "%s ended the session early",
		                  s->peer);
	if (r < 0) {
		ctl_smtp_close(s);
		return r;
	}
	*out = s;
	return 0;
}

const char *ctl_smtp_peer(const struct ctl_smtp *s)
{
	return s->peer;
}

bool ctl_smtp_tls(const struct ctl_smtp *s, char *desc, size_t n)
{
	if (!s->tls_on)
		return false;
	snprintf(desc, n, "%s %s", tls_stream_version(&s->tls),
	         tls_stream_cipher(&s->tls));
	return true;
}

int ctl_smtp_send(struct ctl_smtp *s, const char *from, const char *rcpt,
                  const uint8_t *body, size_t n, struct deliver_reply *reply)
{
	const char *rcpts[1] = {rcpt};
	struct deliver_client_msg m = {
		.sender = from,
		.size = n,
		.body_7bit = true,
		.nrcpt = 1,
		.rcpt = rcpts,
	};
	deliver_client_send(s->cl, &m, &s->out);
	enum deliver_client_ev ev = DELIVER_CL_WAIT;
	int r = ctl_smtp_run(s, NULL, NULL, &ev);
	if (r < 0)
		return r;
	if (ev == DELIVER_CL_BODY) {
		deliver_client_body(s->cl, body, n, &s->out);
		deliver_client_body_end(s->cl, &s->out);
		if ((r = ctl_smtp_run(s, NULL, NULL, &ev)) < 0)
			return r;
	}
	if (ev != DELIVER_CL_DONE)
		return ctl_smtp_fail(s, -EPROTO, "%s ended the session early",
		                     s->peer);
	*reply = *deliver_client_result(s->cl, 0);
	return 0;
}

void ctl_smtp_close(struct ctl_smtp *s)
{
	if (!s)
		return;
	if (s->fd >= 0 && s->cl && !deliver_client_waiting(s->cl)) {
		/* A polite QUIT; its failure changes nothing (the login or
		 * the message is already decided). */
		char e[8];
		char *saved = s->err;
		size_t savedlen = s->errlen;
		s->err = e;
		s->errlen = sizeof e;
		enum deliver_client_ev ev;
		deliver_client_quit(s->cl, &s->out);
		int saved_to = s->timeout_ms;
		s->timeout_ms = saved_to < 5000 ? saved_to : 5000;
		if (ctl_smtp_flush(s) == 0)
			ctl_smtp_run(s, NULL, NULL, &ev);
		if (s->tls_on) {
			tls_stream_shutdown(&s->tls);
			ctl_smtp_drain(s);
		}
		s->err = saved;
		s->errlen = savedlen;
	}
	if (s->fd >= 0)
		close(s->fd);
	tls_stream_free(&s->tls);
	deliver_client_free(s->cl);
	buf_free(&s->out);
	free(s);
}
