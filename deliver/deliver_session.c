/*
 * deliver/deliver_session.c - One SMTP client session to the smarthost:
 * the I/O shell around deliver_client.c. Owns a TCP handle, a timer, TLS
 * (OpenSSL over memory BIOs, so libuv does all socket I/O), and the body
 * file being sent (read with uv_fs on the thread pool). Takes jobs from
 * the scheduler until max_messages_per_connection, or until it has been
 * idle for SESSION_IDLE_MS, then QUITs.
 *
 * Lifetime: the session is freed when its handles are closed and no
 * write, fs or connect request is outstanding (each holds a count). Names
 * are resolved through dns/ by the destination, never here.
 */
#include "deliver/deliver_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "common/tls_stream.h"

/* No session idles open longer than this (the issue: a few seconds). */
#define SESSION_IDLE_MS 2000
/* Body read size; also bounds what one session buffers for the socket. */
#define BODY_CHUNK (64 * 1024)
/* Plaintext waiting to be written is bounded: commands are small, and the
 * body goes one chunk at a time. */
/* Bounded by what we append ourselves: a pipelined batch of RCPTs, one
 * body chunk doubled by dot-stuffing, or the stored DKIM-Signature block
 * (QUEUE_DKIM_SIG_MAX) doubled. The same 4 MiB as when rewrite_from_header
 * ran here (it runs at acceptance now: smtpd_commit.c). */
#define OUT_LIMIT (4 * 1024 * 1024 + 4 * BODY_CHUNK)

struct wreq {
	uv_write_t req;
	struct deliver_session *s;
	size_t len;
	char data[];
};

struct deliver_session {
	struct deliver *d;
	struct deliver_dest *dst;   /* where it goes; outlives it */
	struct deliver_cfg *cfg;
	uv_loop_t *loop;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_connect_t conn;
	uv_fs_t fs;
	int handles;            /* open handles (tcp, timer) */
	int reqs;               /* writes, fs, connect in flight */
	bool closing, gone, tcp_inited;

	struct deliver_client *cl;
	struct buf out;         /* commands/body not yet written (plaintext) */
	struct tls_stream tls;  /* TLS over memory BIOs; tls.ssl NULL: none */
	bool tls_handshake, tls_on;
	bool starttls;          /* the handshake answers a STARTTLS */

	char ip[64];
	char relay[340];        /* "host[ip]:port" */
	bool direct;            /* to an MX host (delivery = direct) */
	char mx[SMTP_DOMAIN_MAX + 1];   /* that host's name */
	char tls_desc[64];      /* "TLSv1.3/unverified", "none" (direct) */
	bool verify;            /* direct, verify: chain and MX name */
	bool tls_failed;        /* STARTTLS refused or handshake failed */
	struct deliver_job *job;
	int body_fd;
	uint64_t body_off;
	bool body_wait;         /* body: waiting for the socket to drain */
	bool in_body;
	unsigned sent;          /* transactions on this session */
	bool up;                /* reached READY once */
	bool greeted;           /* the server said something: a session
	                           (DELIVER_MX_SESSION_LIMIT counts these) */
	bool connected;         /* TCP is up: the client's timeouts apply */
	bool idle;
	uint64_t t_start, t_up, t_job;

	/* Why it ended. */
	bool failed, route_fail, auth_fail;
	struct deliver_reply why;
	char rbuf[BODY_CHUNK];
};

static void session_fail(struct deliver_session *s, bool route_fail,
                         const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void read_body(struct deliver_session *s);
static void drive(struct deliver_session *s);
static void flush_out(struct deliver_session *s);

/* ---- lifetime ----------------------------------------------------------- */

static void maybe_free(struct deliver_session *s)
{
	if (!s->closing || s->handles > 0 || s->reqs > 0 || s->gone)
		return;
	s->gone = true;
	if (s->job) {
		/* Never sent, or cut off: the recipients are retried. */
		struct deliver_reply r = s->why;
		if (!s->failed)
			deliver_reply_make(&r, 0, "delivery stopped");
		deliver_job_failed(s->d, s->job, &r, s->relay);
		s->job = NULL;
	}
	if (s->body_fd >= 0)
		close(s->body_fd);
	deliver_session_gone(s->dst, s, s->route_fail, s->auth_fail,
	                     s->failed ? &s->why : NULL);
	deliver_client_free(s->cl);
	tls_stream_free(&s->tls);
	buf_free(&s->out);
	deliver_cfg_unref(s->cfg);
	free(s);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct deliver_session *s = h->data;
	s->handles--;
	maybe_free(s);
}

static void session_close(struct deliver_session *s)
{
	if (s->closing)
		return;
	s->closing = true;
	uv_timer_stop(&s->timer);
	if (!uv_is_closing((uv_handle_t *)&s->timer))
		uv_close((uv_handle_t *)&s->timer, handle_closed_cb);
	if (s->tcp_inited && !uv_is_closing((uv_handle_t *)&s->tcp)) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		uv_close((uv_handle_t *)&s->tcp, handle_closed_cb);
	}
	maybe_free(s);
}

static void session_fail(struct deliver_session *s, bool route_fail,
                         const char *fmt, ...)
{
	if (s->failed || s->closing)
		return;
	char t[DELIVER_REPLY_TEXT_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t, sizeof t, fmt, ap);
	va_end(ap);
	deliver_reply_make(&s->why, 0, t);
	s->failed = true;
	s->route_fail = route_fail;
	session_close(s);
}

void deliver_session_close(struct deliver_session *s)
{
	session_close(s);
}

/* ---- timer -------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t)
{
	struct deliver_session *s = t->data;
	if (s->idle && deliver_client_waiting(s->cl) == false && !s->job) {
		/* Idle long enough: say goodbye. */
		s->idle = false;
		deliver_client_quit(s->cl, &s->out);
		flush_out(s);
		uv_timer_start(&s->timer, timer_cb, s->cfg->timeout, 0);
		return;
	}
	/* The state table says what we waited for (RFC 5321 §4.5.3.2). */
	uint64_t ms = s->connected ? deliver_client_timeout(s->cl, s->cfg->timeout)
	                           : s->cfg->timeout;
	session_fail(s, !s->up, "timeout after %.1f s %s", ms / 1000.0,
	             s->connected ? deliver_client_state_desc(s->cl)
	                          : "while connecting");
}

static void arm_timer(struct deliver_session *s, uint64_t ms)
{
	uv_timer_start(&s->timer, timer_cb, ms, 0);
}

/* The server's turn (or, in BODY, the socket's): the client's state
 * table says how long it may take, scaled by delivery_timeout. */
static void arm_wait(struct deliver_session *s)
{
	uint64_t ms = deliver_client_timeout(s->cl, s->cfg->timeout);
	arm_timer(s, ms ? ms : s->cfg->timeout);
}

/* ---- writing ------------------------------------------------------------ */

static void write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct deliver_session *s = w->s;
	free(w);
	s->reqs--;
	if (status < 0 && !s->closing)
		session_fail(s, !s->up, "write to %s: %s", s->relay,
		             uv_strerror(status));
	if (s->closing) {
		maybe_free(s);
		return;
	}
	if (s->body_wait && s->tcp.write_queue_size < BODY_CHUNK) {
		s->body_wait = false;
		read_body(s);
	}
}

static void raw_write(struct deliver_session *s, const void *p, size_t n)
{
	if (n == 0 || s->closing)
		return;
	struct wreq *w = malloc(sizeof *w + n);
	if (!w) {
		session_fail(s, false, "out of memory");
		return;
	}
	w->s = s;
	w->len = n;
	memcpy(w->data, p, n);
	uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
	int r = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
	if (r < 0) {
		free(w);
		session_fail(s, !s->up, "write to %s: %s", s->relay, uv_strerror(r));
		return;
	}
	s->reqs++;
}

/* Whatever TLS produced for the wire. */
static int drain_out(void *arg, const uint8_t *p, size_t n)
{
	struct deliver_session *s = arg;
	raw_write(s, p, n);
	return s->closing;
}

static void drain_wbio(struct deliver_session *s)
{
	tls_stream_drain(&s->tls, drain_out, s);
}

static void flush_out(struct deliver_session *s)
{
	if (s->closing || s->out.len == 0)
		return;
	if (s->tls_handshake)
		return;   /* after the handshake */
	if (s->tls_on) {
		if (tls_stream_write(&s->tls, s->out.data, s->out.len) < 0) {
			session_fail(s, false, "TLS write failed");
			return;
		}
		drain_wbio(s);
	} else {
		raw_write(s, s->out.data, s->out.len);
	}
	buf_reset(&s->out);
}

/* ---- TLS ---------------------------------------------------------------- */

static void tls_error(struct deliver_session *s, const char *what)
{
	char e[200] = "";
	unsigned long code = ERR_get_error();
	if (code)
		ERR_error_string_n(code, e, sizeof e);
	long v = SSL_get_verify_result(s->tls.ssl);
	ERR_clear_error();
	s->tls_failed = true;
	/* A TLS failure is the route's problem, never plaintext instead. */
	if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
		/* Say which name the certificate had to carry: the fix is
		 * smarthost_tls_name, or a certificate with that name. */
		session_fail(s, true, "TLS %s with %s failed: certificate: %s "
		             "(expected %s%s)", what, s->relay,
		             X509_verify_cert_error_string(v),
		             s->direct ? s->mx : s->cfg->tls_name,
		             s->direct ? "" : "; see smarthost_tls_name");
	else if (v != X509_V_OK)
		session_fail(s, true, "TLS %s with %s failed: certificate: %s",
		             what, s->relay, X509_verify_cert_error_string(v));
	else
		session_fail(s, true, "TLS %s with %s failed: %s", what, s->relay,
		             e[0] ? e : "connection closed");
}

static void tls_handshake(struct deliver_session *s)
{
	int r = tls_stream_handshake(&s->tls);
	drain_wbio(s);
	if (s->closing)
		return;
	if (r == 1) {
		s->tls_handshake = false;
		s->tls_on = true;
		log_debug("smarthost %s: %s %s", s->relay,
		          tls_stream_version(&s->tls), tls_stream_cipher(&s->tls));
		if (s->starttls)
			deliver_client_tls_ready(s->cl, &s->out);
		arm_wait(s);
		flush_out(s);
		return;
	}
	if (r == 0)
		return;
	tls_error(s, "handshake");
}

static int tls_start(struct deliver_session *s)
{
	SSL_CTX *ctx = s->verify ? s->cfg->ssl_verify : s->cfg->ssl;
	if (tls_stream_init(&s->tls, ctx, false) < 0) {
		session_fail(s, false, "TLS: out of memory");
		return -ENOMEM;
	}
	/* SNI, and with verify the certificate must name the host we meant
	 * (the MX host, or the smarthost's tls_name). */
	const char *name = s->direct ? s->mx : s->cfg->tls_name;
	if (tls_stream_peer_name(&s->tls, name) < 0) {
		session_fail(s, true, "TLS: cannot check the name %s", name);
		return -EINVAL;
	}
	s->tls_handshake = true;
	tls_handshake(s);
	return 0;
}

/* ---- reading ------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	(void)h;
	(void)hint;
	static char rb[65536];   /* the loop thread's; consumed in read_cb */
	*b = uv_buf_init(rb, sizeof rb);
}

static void feed_plain(struct deliver_session *s, const char *p, size_t n)
{
	s->greeted = true;
	if (deliver_client_input(s->cl, p, n) < 0) {
		session_fail(s, !s->up, "reply from %s too long", s->relay);
		return;
	}
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct deliver_session *s = st->data;
	if (s->closing)
		return;
	if (nread < 0 && s->tls_handshake) {
		/* Closed or reset in the middle of the handshake (after the
		 * 220 to STARTTLS): a failed handshake like any other, so
		 * "may" retries in plaintext on the same host and
		 * encrypt/verify defer with this reason. */
		ERR_clear_error();
		s->tls_failed = true;
		session_fail(s, true, "TLS handshake with %s failed: %s",
		             s->relay, nread == UV_EOF ? "connection closed" :
		             uv_strerror((int)nread));
		return;
	}
	if (nread < 0) {
		session_fail(s, !s->up, "%s from %s%s",
		             nread == UV_EOF ? "connection closed" :
		             uv_strerror((int)nread), s->relay,
		             s->in_body ? " while sending the message" : "");
		return;
	}
	if (nread == 0)
		return;
	if (!s->tls.ssl) {
		feed_plain(s, b->base, (size_t)nread);
	} else {
		if (tls_stream_put(&s->tls, b->base, (size_t)nread) < 0) {
			session_fail(s, false, "TLS: out of memory");
			return;
		}
		if (s->tls_handshake) {
			tls_handshake(s);
			if (s->closing || s->tls_handshake)
				return;
		}
		char tmp[16384];
		int end = 0;   /* 1: close_notify, 2: TLS error */
		for (;;) {
			ssize_t n = tls_stream_read(&s->tls, tmp, sizeof tmp);
			if (n > 0) {
				feed_plain(s, tmp, (size_t)n);
				if (s->closing)
					return;
				continue;
			}
			if (n < 0)
				end = n == TLS_STREAM_EOF ? 1 : 2;
			break;
		}
		drain_wbio(s);
		if (end) {
			/* Replies that came with the close count first (a 250
			 * for the message must not be lost to the close). */
			drive(s);
			if (s->closing)
				return;
			if (end == 1)
				session_fail(s, !s->up, "TLS closed by %s", s->relay);
			else
				tls_error(s, "read");
			return;
		}
	}
	drive(s);
}

/* ---- the body ----------------------------------------------------------- */

/* Hands stored bytes to the client core (dot-stuffing). rewrite_from_header
 * no longer applies here: the stored message has its From: rewritten
 * (and signed) at acceptance. */
static void body_bytes(struct deliver_session *s, const uint8_t *p, size_t n)
{
	deliver_client_body(s->cl, p, n, &s->out);
}

static void body_read_cb(uv_fs_t *req)
{
	struct deliver_session *s = req->data;
	ssize_t n = req->result;
	uv_fs_req_cleanup(req);
	s->reqs--;
	if (s->closing) {
		maybe_free(s);
		return;
	}
	if (n < 0) {
		log_err("%s: cannot read %s: %s", s->job->m->qid, s->job->path,
		        uv_strerror((int)n));
		session_fail(s, false, "cannot read the message file");
		return;
	}
	if (n == 0) {
		close(s->body_fd);
		s->body_fd = -1;
		s->in_body = false;
		deliver_client_body_end(s->cl, &s->out);
		flush_out(s);
		arm_wait(s);   /* the final dot: RFC 5321 §4.5.3.2.6 */
		return;
	}
	s->body_off += (uint64_t)n;
	body_bytes(s, (const uint8_t *)s->rbuf, (size_t)n);
	flush_out(s);
	arm_wait(s);   /* a data block: RFC 5321 §4.5.3.2.5 */
	if (s->tcp.write_queue_size >= BODY_CHUNK)
		s->body_wait = true;   /* write_cb resumes */
	else
		read_body(s);
}

static void read_body(struct deliver_session *s)
{
	if (s->closing)
		return;
	uv_buf_t b = uv_buf_init(s->rbuf, sizeof s->rbuf);
	s->fs.data = s;
	int r = uv_fs_read(s->loop, &s->fs, s->body_fd, &b, 1,
	                   (int64_t)s->body_off, body_read_cb);
	if (r < 0) {
		session_fail(s, false, "cannot read the message: %s", uv_strerror(r));
		return;
	}
	s->reqs++;
}

/* ---- jobs --------------------------------------------------------------- */

static void open_cb(uv_fs_t *req)
{
	struct deliver_session *s = req->data;
	ssize_t fd = req->result;
	uv_fs_req_cleanup(req);
	s->reqs--;
	if (s->closing) {
		if (fd >= 0)
			close((int)fd);
		maybe_free(s);
		return;
	}
	if (fd < 0) {
		/* Gone (deleted meanwhile) or unreadable: not this session's
		 * fault; the scheduler hears of it and the session goes on. */
		struct deliver_reply r;
		char t[DELIVER_REPLY_TEXT_MAX];
		snprintf(t, sizeof t, "cannot open the message file: %s",
		         uv_strerror((int)fd));
		deliver_reply_make(&r, 0, t);
		log_err("%s: %s", s->job->m->qid, r.text);
		deliver_job_failed(s->d, s->job, &r, s->relay);
		s->job = NULL;
		drive(s);
		return;
	}
	s->body_fd = (int)fd;
	s->body_off = 0;
	s->t_job = uv_now(s->loop);
	deliver_client_send(s->cl, &s->job->cm, &s->out);
	drive(s);
}

static bool start_job(struct deliver_session *s)
{
	struct deliver_job *j = deliver_take_job(s->dst);
	if (!j)
		return false;
	s->job = j;
	s->sent++;
	s->fs.data = s;
	int r = uv_fs_open(s->loop, &s->fs, j->path, O_RDONLY | O_CLOEXEC, 0,
	                   open_cb);
	if (r < 0) {
		session_fail(s, false, "cannot open the message: %s", uv_strerror(r));
		return true;
	}
	s->reqs++;
	return true;
}

/* A "slow down" reply, by the one reply table (deliver_policy.h:
 * provider tags on enhanced codes and whole words; greylisting is not
 * one), for an MX host and the smarthost alike. A working session's
 * destination is throttled here (deliver_dest_throttle); one that failed
 * before it was up is the route's failure (next address, or a pause). */
static bool is_throttle(struct deliver_session *s, const struct deliver_reply *r)
{
	const char *rule = NULL;
	unsigned secs = 0;
	if (!r->code || !deliver_tlspol_throttle(r->text, strlen(r->text), &rule,
	                                         &secs))
		return false;
	char esc[DELIVER_REPLY_TEXT_MAX * 4];
	log_escape(esc, sizeof esc, r->text, strlen(r->text));
	log_info("%s: throttled (%s): %s", s->relay, rule ? rule : "?", esc);
	if (s->up)
		deliver_dest_throttle(s->dst, rule, secs, r->text);
	return true;
}

static void job_done(struct deliver_session *s)
{
	struct deliver_job *j = s->job;
	const struct deliver_reply **res = calloc(j->n ? j->n : 1, sizeof *res);
	if (!res) {
		session_fail(s, false, "out of memory");
		return;
	}
	for (size_t k = 0; k < j->n; k++)
		res[k] = deliver_client_result(s->cl, k);
	uint64_t now = uv_now(s->loop);
	struct deliver_times t = {
		.conn_ms = s->sent == 1 && s->t_up > s->t_start ? s->t_up - s->t_start : 0,
		.xfer_ms = now - s->t_job,
	};
	if (s->direct) {
		if (s->tls_on)
			snprintf(s->tls_desc, sizeof s->tls_desc, "%s/%s",
			         tls_stream_version(&s->tls),
			         s->verify ? "verified" : "unverified");
		else
			snprintf(s->tls_desc, sizeof s->tls_desc, "none");
		t.tls = s->tls_desc;
	}
	s->job = NULL;
	if (s->body_fd >= 0) {
		close(s->body_fd);
		s->body_fd = -1;
	}
	/* A provider's "slow down" ends this session and throttles its
	 * destination (one session, one transaction at a time, spaced). */
	bool throttled = false;
	for (size_t k = 0; k < j->n && !throttled; k++)
		if (is_throttle(s, res[k])) {
			throttled = true;
			s->why = *res[k];
		}
	deliver_job_done(s->d, j, res, s->relay, &t);
	free(res);
	if (throttled) {
		s->failed = true;
		session_close(s);
	}
}

/* ---- the protocol driver ----------------------------------------------- */

static void drive(struct deliver_session *s)
{
	while (!s->closing) {
		enum deliver_client_ev ev = deliver_client_step(s->cl, &s->out);
		log_debug("smarthost %s: event %d, state %s", s->relay, (int)ev,
		          deliver_client_state_name(s->cl));
		switch (ev) {
		case DELIVER_CL_WAIT:
			if (s->job && s->in_body) {
				/* streaming: read_body drives */
			}
			flush_out(s);
			if (deliver_client_waiting(s->cl))
				arm_wait(s);
			return;
		case DELIVER_CL_STARTTLS:
			flush_out(s);
			s->starttls = true;
			tls_start(s);
			return;
		case DELIVER_CL_READY:
			if (!s->up) {
				s->up = true;
				s->t_up = uv_now(s->loop);
				deliver_session_up(s->dst, s,
				                   deliver_client_size_max(s->cl));
				if (s->closing)
					return;
			}
			if (s->job)
				return;   /* opening its body */
			if (s->sent < s->cfg->per_conn && start_job(s)) {
				s->idle = false;
				if (s->job)
					return;   /* open_cb continues */
				continue;
			}
			if (s->sent >= s->cfg->per_conn) {
				deliver_client_quit(s->cl, &s->out);
				continue;
			}
			/* Nothing to do: wait a little for more work. */
			flush_out(s);
			s->idle = true;
			arm_timer(s, SESSION_IDLE_MS);
			return;
		case DELIVER_CL_BODY:
			/* The DKIM-Signature fields made at acceptance go first,
			 * the same bytes on every attempt (issue 10 §1). */
			if (s->job->m->dkim_sig && s->job->m->dkim_sig[0])
				deliver_client_body(s->cl,
				                    (const uint8_t *)s->job->m->dkim_sig,
				                    strlen(s->job->m->dkim_sig), &s->out);
			flush_out(s);
			s->in_body = true;
			read_body(s);
			return;
		case DELIVER_CL_DONE:
			job_done(s);
			continue;
		case DELIVER_CL_FAILED: {
			const struct deliver_reply *r;
			enum deliver_client_fail f = deliver_client_error(s->cl, &r);
			flush_out(s);
			s->why = *r;
			s->failed = true;
			s->auth_fail = f == DELIVER_FAIL_AUTH;
			if (f == DELIVER_FAIL_NO_TLS && s->direct)
				s->tls_failed = true;
			/* Everything before a working session is the route's
			 * problem; so are AUTH and a provider that hangs up. */
			/* A throttling reply that closed a working session
			 * throttles its destination (is_throttle), not a
			 * pause: the route works, it asks us to slow down. */
			if (f == DELIVER_FAIL_CLOSED)
				(void)is_throttle(s, r);
			s->route_fail = !s->up || f == DELIVER_FAIL_AUTH ||
			                f == DELIVER_FAIL_NO_AUTH ||
			                f == DELIVER_FAIL_NO_TLS;
			session_close(s);
			return;
		}
		case DELIVER_CL_CLOSED:
			session_close(s);
			return;
		}
	}
}

bool deliver_session_greeted(const struct deliver_session *s)
{
	return s->greeted;
}

bool deliver_session_was_up(const struct deliver_session *s)
{
	return s->up;
}

bool deliver_session_tls_failed(const struct deliver_session *s)
{
	return s->tls_failed;
}

void deliver_session_kick(struct deliver_session *s)
{
	if (s->closing || !s->idle || s->job)
		return;
	s->idle = false;
	uv_timer_stop(&s->timer);
	drive(s);
}

/* ---- connecting --------------------------------------------------------- */

static void connect_cb(uv_connect_t *req, int status)
{
	struct deliver_session *s = req->data;
	s->reqs--;
	if (s->closing) {
		maybe_free(s);
		return;
	}
	if (status < 0) {
		session_fail(s, true, "connect to %s: %s", s->relay,
		             uv_strerror(status));
		return;
	}
	int r = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
	if (r < 0) {
		session_fail(s, true, "read from %s: %s", s->relay, uv_strerror(r));
		return;
	}
	s->connected = true;
	arm_wait(s);
	if (s->cfg->tls == CONF_TLS_IMPLICIT)
		tls_start(s);
}

static void connect_to(struct deliver_session *s, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		uv_ip4_name((const struct sockaddr_in *)sa, s->ip, sizeof s->ip);
	else
		uv_ip6_name((const struct sockaddr_in6 *)sa, s->ip, sizeof s->ip);
	uint16_t port = s->direct ? s->cfg->mx_port : s->cfg->port;
	snprintf(s->relay, sizeof s->relay, "%s[%s]:%u",
	         s->direct ? s->mx : s->cfg->host, s->ip, port);
	int r = uv_tcp_init(s->loop, &s->tcp);
	if (r < 0) {
		session_fail(s, false, "uv_tcp_init: %s", uv_strerror(r));
		return;
	}
	s->tcp.data = s;
	s->tcp_inited = true;
	s->handles++;
	uv_tcp_nodelay(&s->tcp, 1);
	/* smtp_bind_address(6): the source address toward MX hosts. */
	const char *bind = !s->direct ? NULL
	                   : sa->sa_family == AF_INET ? s->cfg->bind4
	                                              : s->cfg->bind6;
	if (bind) {
		struct sockaddr_storage src;
		r = sa->sa_family == AF_INET
		    ? uv_ip4_addr(bind, 0, (struct sockaddr_in *)&src)
		    : uv_ip6_addr(bind, 0, (struct sockaddr_in6 *)&src);
		if (r == 0)
			r = uv_tcp_bind(&s->tcp, (struct sockaddr *)&src, 0);
		if (r < 0) {
			session_fail(s, true, "bind to %s: %s", bind, uv_strerror(r));
			return;
		}
	}
	s->conn.data = s;
	r = uv_tcp_connect(&s->conn, &s->tcp, sa, connect_cb);
	if (r < 0) {
		session_fail(s, true, "connect to %s: %s", s->relay, uv_strerror(r));
		return;
	}
	s->reqs++;
}

int deliver_session_new(struct deliver_dest *dst, struct deliver_cfg *cfg,
                        uv_loop_t *loop, struct deliver_session **out)
{
	struct deliver_session *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->d = deliver_dest_owner(dst);
	s->dst = dst;
	s->cfg = cfg;
	deliver_cfg_ref(cfg);
	s->loop = loop;
	s->body_fd = -1;
	s->t_start = uv_now(loop);
	buf_init(&s->out, OUT_LIMIT);
	snprintf(s->relay, sizeof s->relay, "%s:%u", cfg->host, cfg->port);
	s->direct = dst->direct;
	const struct deliver_dest_addr *da = NULL;
	if (s->direct && dst->addr_pos < dst->naddrs) {
		da = &dst->addrs[dst->addr_pos];
		snprintf(s->mx, sizeof s->mx, "%s", da->host);
		snprintf(s->relay, sizeof s->relay, "%s:%u", s->mx, cfg->mx_port);
	}
	/* Direct: EHLO with hostname, never AUTH toward an MX host;
	 * STARTTLS as the TLS level says (tls_policy_file): may - when
	 * offered (RFC 7435), unless the destination remembers a failed
	 * handshake; encrypt, verify - required, never plaintext. */
	bool broken = dst->tls_broken_until > uv_now(loop);
	s->verify = s->direct && dst->tls_level >= DELIVER_TLSPOL_VERIFY;
	struct deliver_client_opts o = {
		.helo = cfg->hostname,
		.starttls = s->direct ? dst->tls_level >= DELIVER_TLSPOL_ENCRYPT
		                      : cfg->tls == CONF_TLS_STARTTLS,
		.starttls_may = s->direct && dst->tls_level == DELIVER_TLSPOL_MAY &&
		                !broken,
		.user = s->direct ? NULL : cfg->user,
		.password = s->direct ? NULL : cfg->password,
	};
	s->cl = deliver_client_new(&o);
	int r = s->cl ? uv_timer_init(loop, &s->timer) : -ENOMEM;
	if (r < 0) {
		deliver_client_free(s->cl);
		buf_free(&s->out);
		deliver_cfg_unref(cfg);
		free(s);
		return r;
	}
	s->timer.data = s;
	s->handles++;
	*out = s;

	arm_timer(s, cfg->timeout);
	struct sockaddr_storage ss;
	if (s->direct) {
		if (!da) {
			session_fail(s, true, "no address to try for %s", dst->name);
			return 0;
		}
		memset(&ss, 0, sizeof ss);
		if (da->addr.family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			a->sin_family = AF_INET;
			a->sin_port = htons(cfg->mx_port);
			memcpy(&a->sin_addr, da->addr.a, 4);
		} else {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			a->sin6_family = AF_INET6;
			a->sin6_port = htons(cfg->mx_port);
			memcpy(&a->sin6_addr, da->addr.a, 16);
		}
		connect_to(s, (struct sockaddr *)&ss);
		return 0;
	}
	if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&ss) == 0 ||
	    uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&ss) == 0) {
		connect_to(s, (struct sockaddr *)&ss);
		return 0;
	}
	/* A name: resolved through dns/ by the destination
	 * (deliver_direct_host_ready), its addresses tried in turn. */
	if (dst->addr_pos >= dst->naddrs) {
		session_fail(s, true, "%s is not resolved", cfg->host);
		return 0;
	}
	da = &dst->addrs[dst->addr_pos];
	memset(&ss, 0, sizeof ss);
	if (da->addr.family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(cfg->port);
		memcpy(&a->sin_addr, da->addr.a, 4);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(cfg->port);
		memcpy(&a->sin6_addr, da->addr.a, 16);
	}
	connect_to(s, (struct sockaddr *)&ss);
	return 0;
}
