/*
 * smtpd/smtpd_session.c - One session per TCP connection around the protocol core
 * smtpd_proto (libuv): reads and writes, TLS (STARTTLS and smtps;
 * OpenSSL over memory BIOs, so libuv does all socket I/O and nothing
 * blocks), timeouts, flow control, the connection limits at accept.
 * Owns each session's uv_tcp_t, uv_timer_t and SSL; a session is freed
 * only when both handles are closed and no commit or password check is
 * in flight (smtpd_commit.c, smtpd_auth.c).
 */
#include "smtpd/smtpd_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_policy.h"
#include "common/tls_stream.h"
#include "smtpd/smtpd_tls.h"

struct write_req {
	uv_write_t req;
	struct smtpd_session *s;
	size_t len;
	uint8_t data[];
};

/* ---- output and flow control ----------------------------------------------- */

/* smtpd_proto's reply hook: the statistics history (queue_stats.h). */
static void stats_reply_cb(void *ctx, enum smtp_reply_id id,
                           const char *auth_name)
{
	smtpd_stats_reply(ctx, id, auth_name);
}

static void write_cb(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct smtpd_session *s = w->s;
	free(w);
	if (status < 0 && status != UV_ECANCELED && !s->closing) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(status));
		smtpd_session_close(s, false);
		return;
	}
	if (!s->closing)
		smtpd_session_process(s);
}

/* Bytes for the wire, in order after everything sent before. */
static void send_raw(struct smtpd_session *s, const uint8_t *p, size_t n)
{
	if (n == 0 || s->closing)
		return;
	/* Most replies fit the socket buffer: write them now, with no request
	 * to allocate and no write callback (which costs libuv an epoll_ctl
	 * per write). Only what the kernel did not take is queued. (libuv
	 * refuses a try_write while writes are queued, keeping the order.) */
	uv_buf_t now = uv_buf_init((char *)p, (unsigned)n);
	int k = uv_try_write((uv_stream_t *)&s->tcp, &now, 1);
	if (k == (int)n)
		return;
	if (k < 0 && k != UV_EAGAIN) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(k));
		smtpd_session_close(s, false);
		return;
	}
	if (k > 0) {
		p += k;
		n -= (size_t)k;
	}
	struct write_req *w = malloc(sizeof *w + n);
	if (!w) {
		smtpd_session_close(s, false);
		return;
	}
	w->s = s;
	w->len = n;
	memcpy(w->data, p, n);
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int r = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
	if (r < 0) {
		free(w);
		log_info("s=%s: write error: %s", s->sid, uv_strerror(r));
		smtpd_session_close(s, false);
	}
}

/* What OpenSSL wrote for the peer (handshake, records, alerts). */
static int drain_out(void *arg, const uint8_t *p, size_t n)
{
	struct smtpd_session *s = arg;
	send_raw(s, p, n);
	return s->closing;
}

static void tls_drain(struct smtpd_session *s)
{
	tls_stream_drain(&s->tls_s, drain_out, s);
}

static void tls_fail(struct smtpd_session *s, const char *what);

void smtpd_session_flush(struct smtpd_session *s)
{
	if (s->out.len == 0 || s->closing)
		return;
	switch (s->tls) {
	case SESS_TLS_OFF:
		send_raw(s, s->out.data, s->out.len);
		break;
	case SESS_TLS_ON:
		if (tls_stream_write(&s->tls_s, s->out.data, s->out.len) < 0) {
			buf_reset(&s->out);
			tls_fail(s, "write");
			return;
		}
		tls_drain(s);
		break;
	case SESS_TLS_HANDSHAKE:
	case SESS_TLS_FAILED:
		/* Nothing can be said: a plaintext reply in the middle of a
		 * handshake would only be garbage to the peer's TLS. */
		break;
	}
	buf_reset(&s->out);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct smtpd_session *s = h->data;
	(void)hint;
	if (s->tls != SESS_TLS_OFF) {
		/* Ciphertext: read_cb hands it to OpenSSL at once, so one
		 * buffer serves every session on the loop thread. One record
		 * at a time (not READ_CHUNK), and no more than makes what
		 * OpenSSL holds undecrypted one record: reading stops at that
		 * (update_reading). */
		static uint8_t raw[TLS_STREAM_CHUNK];
		size_t held = tls_stream_buffered(&s->tls_s);
		size_t room = held < sizeof raw ? sizeof raw - held : 0;
		*b = uv_buf_init((char *)raw, (unsigned)room);
		return;
	}
	/* Plaintext is read into s->in, allocated now (an idle session
	 * holds no buffer: release_idle) and never past IN_HIGH. Reading
	 * runs only while s->in is below it (update_reading). */
	size_t room = s->in.len < IN_HIGH ? IN_HIGH - s->in.len : 0;
	if (room > READ_CHUNK)
		room = READ_CHUNK;
	if (room == 0 || buf_reserve(&s->in, room) < 0) {
		*b = uv_buf_init(NULL, 0);
		return;
	}
	*b = uv_buf_init((char *)s->in.data + s->in.len, (unsigned)room);
}

static bool data_state(enum smtpd_state st)
{
	return st == SMTPD_ST_DATA || st == SMTPD_ST_BDAT;
}

/* Buffers an idle session does not need go back to malloc: thousands of
 * idle connections cost their structs, not their buffers (issue 8 §4).
 * Message data keeps its input buffer to the end (one allocation per
 * message, not per read). */
static void release_idle(struct smtpd_session *s)
{
	if (s->tls == SESS_TLS_ON)
		tls_stream_trim(&s->tls_s);
	if (s->in.len == 0 && s->in.data &&
	    !data_state(smtpd_proto_state(s->proto)))
		buf_free(&s->in);
	if (s->out.len == 0 && s->out.data)
		buf_free(&s->out);
}

/* Decrypted or plaintext input held before it is processed: less for
 * TLS, whose ciphertext waits in OpenSSL too. */
static size_t in_high(const struct smtpd_session *s)
{
	return s->tls == SESS_TLS_OFF ? IN_HIGH : TLS_IN_HIGH;
}

/* Replies not yet taken by the kernel: the core's, libuv's write queue
 * and what OpenSSL wrote and tls_drain has not passed on. */
static size_t pending_output(struct smtpd_session *s)
{
	return s->out.len +
	       uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) +
	       tls_stream_pending(&s->tls_s);
}

/* The client is not reading its replies: stop taking its commands. */
static bool out_blocked(struct smtpd_session *s)
{
	return pending_output(s) >=
	       (s->tls == SESS_TLS_OFF ? OUT_HIGH : TLS_OUT_HIGH);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static void timer_cb(uv_timer_t *t);

/* No mail transaction is open: a session past its lifetime can be
 * closed here without cutting a message short. */
static bool between_messages(enum smtpd_state st)
{
	return st == SMTPD_ST_INIT || st == SMTPD_ST_READY ||
	       st == SMTPD_ST_AUTH_PLAIN || st == SMTPD_ST_AUTH_USER ||
	       st == SMTPD_ST_AUTH_PASS;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* When the session is too old: at session_max_lifetime between
 * messages, at twice that inside one. relayd stopping: now between
 * messages, and inside one at most shutdown_timeout after the stop. */
static uint64_t lifetime_due(const struct smtpd_session *s)
{
	uint64_t l = s->cf->conf.session_max_lifetime;
	bool between = between_messages(smtpd_proto_state(s->proto));
	uint64_t due = add_sat(s->born, between ? l : add_sat(l, l));
	if (s->srv->stopping) {
		uint64_t stop = between ? s->srv->stop_at
		                        : add_sat(s->srv->stop_at,
		                                  s->srv->stop_grace);
		if (stop < due)
			due = stop;
	}
	return due;
}

static void update_timer(struct smtpd_session *s);

bool smtpd_session_drain(struct smtpd_session *s)
{
	switch (smtpd_proto_state(s->proto)) {
	case SMTPD_ST_MAIL: case SMTPD_ST_RCPT: case SMTPD_ST_DATA:
	case SMTPD_ST_BDAT: case SMTPD_ST_BDAT_NEXT:
		update_timer(s);
		return true;
	default:
		return false;
	}
}

/*
 * Sets the deadline of what the session waits for, and the timer to it or
 * to the session's lifetime, whichever is first. Deadlines move only
 * when the client makes progress, never because time passes or a write
 * completes:
 * - a command: timeout_greeting/timeout_command from the previous command
 *   (or the start) to the first byte of the next, and timeout_command from
 *   that first byte to its end: a line trickled a byte at a time ends at
 *   its deadline (issue 8 §4);
 * - message data (DATA, a BDAT chunk): timeout_data at first; each byte
 *   then buys 1000/data_min_rate ms, never beyond timeout_data from now
 *   (Postfix's smtpd_min_data_rate), so data slower than the rate runs
 *   out, and idle data runs out after timeout_data.
 * A commit or password check in flight has no deadline; the TLS
 * handshake keeps the one tls_begin set.
 */
static void update_timer(struct smtpd_session *s)
{
	if (s->closing || s->tls == SESS_TLS_HANDSHAKE)
		return;
	if (s->commit_pending || s->auth_pending) {
		s->phase = SESS_PH_NONE;
		uv_timer_stop(&s->timer);
		return;
	}
	const struct conf *cf = &s->cf->conf;
	uint64_t now = uv_now(s->srv->loop);
	enum smtpd_state st = smtpd_proto_state(s->proto);
	if (data_state(st)) {
		if (s->phase != SESS_PH_DATA) {
			s->phase = SESS_PH_DATA;
			s->deadline = now + cf->timeout_data;
			s->data_start = s->data_last = now;
			s->data_total = 0;
		} else if (s->data_new > 0) {
			s->data_last = now;
			uint64_t d = cf->data_min_rate == 0
			           ? UINT64_MAX
			           : add_sat(s->deadline, s->data_new * 1000 /
			                                      cf->data_min_rate);
			if (d > now + cf->timeout_data)
				d = now + cf->timeout_data;
			if (d > s->deadline)
				s->deadline = d;
		}
		s->data_total += s->data_new;
	} else {
		bool mid = s->in.len > 0 || smtpd_proto_in_line(s->proto);
		uint64_t idle = st == SMTPD_ST_INIT ? cf->timeout_greeting
		                                    : cf->timeout_command;
		if (s->phase != SESS_PH_CMD || s->cmd_done) {
			s->phase = SESS_PH_CMD;
			s->deadline = now + (mid ? cf->timeout_command : idle);
			s->line_started = mid;
		} else if (mid && !s->line_started) {
			s->line_started = true;
			s->deadline = now + cf->timeout_command;
		}
	}
	s->data_new = 0;
	s->cmd_done = false;
	uint64_t due = s->deadline;
	uint64_t life = lifetime_due(s);
	if (life < due)
		due = life;
	uv_timer_start(&s->timer, timer_cb, due > now ? due - now : 0, 0);
}

/* Reads only when the protocol can take input and the peer reads ours. */
static void update_reading(struct smtpd_session *s)
{
	/* Reading goes on during a commit: pipelined commands wait in s->in
	 * (bounded by IN_HIGH), and no epoll change is paid per message. A
	 * client that does not read its replies is not read either. */
	bool want = !s->closing && !s->eof && s->in.len < in_high(s) &&
	            !out_blocked(s) &&
	            tls_stream_buffered(&s->tls_s) < TLS_STREAM_CHUNK;
	if (want && !s->reading) {
		int r = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
		if (r < 0) {
			log_warn("s=%s: read start: %s", s->sid, uv_strerror(r));
			smtpd_session_close(s, false);
			return;
		}
		s->reading = true;
	} else if (!want && s->reading) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->reading = false;
	}
	/* The handshake has one deadline, set when it starts: a peer that
	 * trickles bytes does not push it back. */
	update_timer(s);
}

/* ---- TLS -------------------------------------------------------------------- */

/* A handshake or TLS read/write went wrong: logged with the peer and
 * OpenSSL's reason; the alert OpenSSL wrote, if any, goes out; closed.
 * Nothing reaches the core any more. */
static void tls_fail(struct smtpd_session *s, const char *what)
{
	char why[256];
	smtpd_tls_reason(why, sizeof why, "protocol error");
	log_info("s=%s: TLS %s failed with [%s]:%d: %s", s->sid, what, s->ip,
	         s->port, why);
	bool handshake = s->tls == SESS_TLS_HANDSHAKE;
	if (handshake)
		s->srv->tls_failed++;
	tls_drain(s);
	s->tls = SESS_TLS_FAILED;
	if (handshake && smtpd_proto_state(s->proto) == SMTPD_ST_STARTTLS)
		smtpd_proto_done(s->proto, -EPROTO, &s->out);
	smtpd_session_close(s, true);
}

/* The context a handshake uses: the server's newest (a certificate
 * renewed since the client connected is the better one), else the one
 * the session began with (TLS was turned off by a reload since). */
static SSL_CTX *tls_ctx_for(const struct smtpd_session *s)
{
	return s->srv->tls ? s->srv->tls : s->tls_ctx;
}

/* Starts a server-side handshake: the client speaks first (ClientHello).
 * The whole handshake must end within timeout_command. */
static int tls_begin(struct smtpd_session *s)
{
	SSL_CTX *ctx = tls_ctx_for(s);
	if (!ctx)
		return -EINVAL;
	int r = tls_stream_init(&s->tls_s, ctx, true);
	if (r < 0)
		return r;
	s->tls = SESS_TLS_HANDSHAKE;
	uv_timer_start(&s->timer, timer_cb, s->cf->conf.timeout_command, 0);
	return 0;
}

/* Moves decrypted input into s->in, as far as it has room (in_high);
 * the rest waits in OpenSSL and the socket stops being read (flow
 * control as in plaintext). Returns 0, or -1 when the session closed. */
static int tls_pull(struct smtpd_session *s)
{
	while (s->in.len < in_high(s)) {
		size_t room = in_high(s) - s->in.len;
		if (room > READ_CHUNK)
			room = READ_CHUNK;
		if (buf_reserve(&s->in, room) < 0)
			break;
		ssize_t n = tls_stream_read(&s->tls_s, s->in.data + s->in.len,
		                            room);
		if (n > 0) {
			s->in.len += (size_t)n;
			continue;
		}
		if (n == 0)
			break;
		if (n == TLS_STREAM_EOF) {
			s->eof = true;   /* close_notify: as a TCP half-close */
			break;
		}
		tls_fail(s, "read");
		return -1;
	}
	tls_drain(s);   /* TLS 1.3 key updates, alerts */
	return s->closing ? -1 : 0;
}

static void tls_handshake(struct smtpd_session *s)
{
	int r = tls_stream_handshake(&s->tls_s);
	if (r == 0) {
		tls_drain(s);
		return;
	}
	if (r < 0) {
		tls_fail(s, "handshake");
		return;
	}
	tls_drain(s);
	if (s->closing)
		return;
	s->tls = SESS_TLS_ON;
	const char *sni = SSL_get_servername(s->tls_s.ssl,
	                                     TLSEXT_NAMETYPE_host_name);
	char name[128] = "";
	if (sni)
		log_escape(name, sizeof name, sni, strlen(sni));
	log_info("s=%s: TLS established: %s %s%s%s", s->sid,
	         tls_stream_version(&s->tls_s), tls_stream_cipher(&s->tls_s),
	         sni ? ", sni=" : "", name);
	if (s->mode == CONF_LISTEN_SMTPS)
		smtpd_proto_greet(s->proto, &s->out);   /* RFC 8314 §3.3 */
	else
		smtpd_proto_done(s->proto, 0, &s->out);   /* back to no EHLO */
	/* Application data may have come with the client's Finished. */
	smtpd_session_process(s);
}

/* STARTTLS accepted by the core: its 220 goes out in plaintext, then
 * every byte read is the handshake's. */
static void starttls(struct smtpd_session *s)
{
	smtpd_session_flush(s);
	if (s->closing)
		return;
	/* CVE-2011-0411: the core consumed (and threw away) what followed
	 * the STARTTLS line; from here on, s->in only ever receives
	 * decrypted bytes, so nothing read before the handshake can reach
	 * the core after it. */
	buf_reset(&s->in);
	int r = tls_begin(s);
	if (r < 0) {
		log_err("s=%s: cannot start TLS: %s", s->sid, strerror(-r));
		smtpd_proto_done(s->proto, r, &s->out);
		smtpd_session_close(s, false);
		return;
	}
	update_reading(s);
}

/* ---- input ----------------------------------------------------------------- */

/* Runs the protocol over buffered input until it needs more, raises a
 * request, or closes; then sends the replies (batched: RFC 2920). */
void smtpd_session_process(struct smtpd_session *s)
{
	if (s->closing)
		return;
	if (s->tls == SESS_TLS_HANDSHAKE) {
		/* The handshake drives the session until it ends; but a write
		 * that drained (write_cb) may let reading start again, or the
		 * ClientHello would wait unread until the handshake times out
		 * (a pipelined burst ending in STARTTLS). Its deadline is not
		 * moved (update_timer). */
		update_reading(s);
		return;
	}
again:
	for (;;) {
		/* In TLS, decrypt even while a commit runs: input waits in
		 * s->in, bounded, as plaintext would. */
		if (s->tls == SESS_TLS_ON && tls_pull(s) < 0)
			return;
		if (s->closing || s->commit_pending || s->auth_pending ||
		    s->in.len == 0)
			break;
		/* Past its lifetime between messages: no next command. */
		if (lifetime_due(s) <= uv_now(s->srv->loop)) {
			uv_timer_start(&s->timer, timer_cb, 0, 0);
			break;
		}
		/* The client does not read: its commands wait (and so does
		 * it: reading stops too) until the replies drain. */
		if (out_blocked(s))
			break;
		enum smtpd_state st = smtpd_proto_state(s->proto);
		enum smtpd_req req;
		size_t k = smtpd_proto_feed(s->proto, s->in.data, s->in.len,
		                            &s->out, &req);
		buf_consume(&s->in, k);
		if (k > 0 && data_state(st))
			s->data_new += k;
		else if (k > 0 && !smtpd_proto_in_line(s->proto))
			s->cmd_done = true;
		/* A batch of replies goes out now (the core stopped there). */
		if (s->out.len >= SMTPD_OUT_BATCH) {
			smtpd_session_flush(s);
			if (s->closing)
				return;
		}
		if (req == SMTPD_REQ_COMMIT) {
			smtpd_commit_start(s);
			continue;
		}
		if (req == SMTPD_REQ_CLOSE) {
			smtpd_session_flush(s);
			smtpd_session_close(s, true);
			return;
		}
		if (req == SMTPD_REQ_STARTTLS) {
			starttls(s);
			return;
		}
		if (req == SMTPD_REQ_AUTH) {
			smtpd_auth_start(s);
			if (smtpd_proto_state(s->proto) == SMTPD_ST_CLOSED) {
				smtpd_session_flush(s);   /* 421: locked out */
				smtpd_session_close(s, true);
				return;
			}
			continue;
		}
		if (k == 0)
			break;
	}
	/* A client that left while its AUTH waits in the slow lane frees
	 * its place there now (454); what it sent after still gets its
	 * answers, as for any half-close. */
	if (!s->closing && s->eof && s->auth_pending && smtpd_auth_cancel(s))
		goto again;
	smtpd_session_flush(s);
	if (s->closing)
		return;
	/* After a half-close, commands waiting for their replies to drain
	 * are still answered (write_cb comes back here). */
	if (s->eof && !s->commit_pending && !s->auth_pending &&
	    !(s->in.len > 0 && out_blocked(s))) {
		smtpd_session_close(s, true);
		return;
	}
	update_reading(s);
	release_idle(s);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct smtpd_session *s = st->data;
	if (nread == 0 || s->closing) {
		/* libuv ends each batch of reads with one that found nothing
		 * (EAGAIN): the buffer alloc_cb made for it goes back. */
		if (!s->closing)
			release_idle(s);
		return;
	}
	if (nread == UV_EOF) {
		if (s->tls == SESS_TLS_HANDSHAKE) {
			log_info("s=%s: TLS handshake failed with [%s]:%d: connection "
			         "closed by the client", s->sid, s->ip, s->port);
			s->srv->tls_failed++;
			s->tls = SESS_TLS_FAILED;
			smtpd_session_close(s, false);
			return;
		}
		/* A half-close: what the client sent before it still gets
		 * processed and answered (pipelined input, a commit running). */
		s->eof = true;
		smtpd_session_process(s);
		return;
	}
	if (nread == UV_ENOBUFS) {
		/* alloc_cb had no room: s->in or OpenSSL's input is full
		 * (reading pauses until there is), or no memory (reading
		 * would go on failing: close). */
		update_reading(s);
		if (s->reading) {
			log_err("s=%s: out of memory for input", s->sid);
			smtpd_session_close(s, false);
		}
		return;
	}
	if (nread < 0) {
		log_info("s=%s: read error: %s", s->sid, uv_strerror((int)nread));
		smtpd_session_close(s, false);
		return;
	}
	switch (s->tls) {
	case SESS_TLS_OFF:
		s->in.len += (size_t)nread;   /* read into s->in by alloc_cb */
		smtpd_session_process(s);
		return;
	case SESS_TLS_FAILED:
		return;
	case SESS_TLS_HANDSHAKE:
	case SESS_TLS_ON:
		/* A memory BIO takes everything (it only grows); what it holds
		 * is bounded because reading stops while s->in is full. */
		if (tls_stream_put(&s->tls_s, b->base, (size_t)nread) < 0) {
			log_err("s=%s: TLS: out of memory", s->sid);
			smtpd_session_close(s, false);
			return;
		}
		if (s->tls == SESS_TLS_HANDSHAKE)
			tls_handshake(s);
		else
			smtpd_session_process(s);
		return;
	}
}

static void timer_cb(uv_timer_t *t)
{
	struct smtpd_session *s = t->data;
	if (s->closing)
		return;
	if (s->tls == SESS_TLS_HANDSHAKE) {
		log_info("s=%s: TLS handshake timed out with [%s]:%d", s->sid, s->ip,
		         s->port);
		s->srv->tls_failed++;
		s->tls = SESS_TLS_FAILED;
		if (smtpd_proto_state(s->proto) == SMTPD_ST_STARTTLS)
			smtpd_proto_done(s->proto, -ETIMEDOUT, &s->out);
		smtpd_session_close(s, false);
		return;
	}
	const struct conf *cf = &s->cf->conf;
	uint64_t now = uv_now(s->srv->loop);
	const char *state = smtpd_state_names[smtpd_proto_state(s->proto)];
	enum smtp_reply_id why;
	if (s->srv->stopping && lifetime_due(s) <= now) {
		why = SMTP_R_SHUTDOWN;
		log_info("s=%s: relayd stopping: closing the session in state %s "
		         "from [%s]:%d", s->sid, state, s->ip, s->port);
	} else if (lifetime_due(s) <= now) {
		why = SMTP_R_LIFETIME;
		log_info("s=%s: session lifetime exceeded in state %s from "
		         "[%s]:%d: %" PRIu64 " s old (session_max_lifetime %" PRIu64
		         " s)", s->sid, state, s->ip, s->port,
		         (now - s->born) / 1000, cf->session_max_lifetime / 1000);
	} else if (s->deadline > now) {
		update_timer(s);   /* the soft lifetime passed inside a message */
		return;
	} else if (s->phase == SESS_PH_DATA && cf->data_min_rate > 0 &&
	           s->data_total > 0 && now - s->data_last < cf->timeout_data) {
		/* Data kept coming, too slowly (idle data is a timeout). */
		why = SMTP_R_DATA_SLOW;
		log_info("s=%s: data too slow in state %s from [%s]:%d: %" PRIu64
		         " bytes in %" PRIu64 " ms (data_min_rate %u bytes/s)",
		         s->sid, state, s->ip, s->port, s->data_total,
		         now - s->data_start, cf->data_min_rate);
	} else {
		why = SMTP_R_TIMEOUT;
		log_info("s=%s: timeout in state %s from [%s]:%d%s", s->sid, state,
		         s->ip, s->port,
		         s->phase == SESS_PH_CMD && s->line_started
		             ? " (command line not completed)" : "");
	}
	smtpd_proto_close(s->proto, why, &s->out);
	smtpd_session_flush(s);
	smtpd_session_close(s, true);
}

/* ---- life cycle ------------------------------------------------------------ */


/* Frees the session once both handles are closed and the queue holds no
 * callback to it. The body in progress, if any, is aborted here. */
void smtpd_session_maybe_free(struct smtpd_session *s)
{
	if (s->open_handles > 0 || s->commit_pending || s->auth_pending)
		return;
	struct smtpd *srv = s->srv;
	if (s->prev)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	srv->nsessions--;
	smtpd_proto_free(s->proto);
	tls_stream_free(&s->tls_s);
	SSL_CTX_free(s->tls_ctx);
	cred_store_free(s->auth_creds);
	smtpd_conf_drop(s->cf);
	buf_free(&s->in);
	buf_free(&s->out);
	free(s->dkim_sig);
	buf_free(&s->rw);
	free(s);
	smtpd_server_maybe_done(srv);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct smtpd_session *s = h->data;
	s->open_handles--;
	smtpd_session_maybe_free(s);
}

static void close_handles(struct smtpd_session *s)
{
	if (!uv_is_closing((uv_handle_t *)&s->timer))
		uv_close((uv_handle_t *)&s->timer, handle_closed_cb);
	if (!uv_is_closing((uv_handle_t *)&s->tcp))
		uv_close((uv_handle_t *)&s->tcp, handle_closed_cb);
}

static void linger_cb(uv_timer_t *t)
{
	struct smtpd_session *s = t->data;
	log_info("s=%s: peer not reading; closing [%s]:%d", s->sid, s->ip,
	         s->port);
	close_handles(s);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	struct smtpd_session *s = req->data;
	(void)status;
	free(req);
	close_handles(s);
}

/* graceful: the replies already queued are sent before the close. */
void smtpd_session_close(struct smtpd_session *s, bool graceful)
{
	if (s->closing)
		return;
	if (graceful && s->tls == SESS_TLS_ON) {
		/* close_notify: the client can tell our close from a cut. */
		tls_stream_shutdown(&s->tls_s);
		tls_drain(s);
		if (s->closing)
			return;
	}
	s->closing = true;
	/* An AUTH waiting in the slow lane goes with the session (one on
	 * the thread pool finishes there, then frees it). */
	if (s->auth_pending)
		smtpd_auth_cancel(s);
	if (s->proto)
		log_info("s=%s: disconnect from [%s]:%d in state %s%s", s->sid, s->ip,
		         s->port, smtpd_state_names[smtpd_proto_state(s->proto)],
		         s->tls == SESS_TLS_HANDSHAKE ? " (TLS handshake)" : "");
	uv_timer_stop(&s->timer);
	if (s->reading)
		uv_read_stop((uv_stream_t *)&s->tcp);
	s->reading = false;
	/* Graceful only while the peer is reading: a full write queue would
	 * never drain. The shutdown itself is bounded by LINGER_MS. */
	if (graceful &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) < OUT_HIGH) {
		uv_shutdown_t *req = malloc(sizeof *req);
		if (req) {
			req->data = s;
			if (uv_shutdown(req, (uv_stream_t *)&s->tcp, shutdown_cb) == 0) {
				uv_timer_start(&s->timer, linger_cb, LINGER_MS, 0);
				return;
			}
			free(req);
		}
	}
	close_handles(s);
}

/* Sessions from the client of `c` (itself included), counted as the rate
 * limits count clients: IPv4 by address, IPv6 by /64, so one host cannot
 * take max_connections_per_ip once for each of its 2^64 addresses. */
static unsigned count_ip(const struct smtpd *srv, const struct smtpd_session *c)
{
	unsigned n = 0;
	for (const struct smtpd_session *s = srv->sessions; s; s = s->next)
		if (smtpd_relay_same_client(&s->relay, &c->relay))
			n++;
	return n;
}

static void peer_name(uv_tcp_t *t, struct sockaddr_storage *peer, char *ip,
                      size_t n, int *port)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	snprintf(ip, n, "unknown");
	*port = 0;
	memset(peer, 0, sizeof *peer);
	if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) < 0)
		return;
	*peer = ss;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		uv_ip4_name(a, ip, n);
		*port = ntohs(a->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		uv_ip6_name(a, ip, n);
		*port = ntohs(a->sin6_port);
	}
}

void smtpd_session_accept_cb(uv_stream_t *server, int status)
{
	struct smtpd_listener *l = server->data;
	struct smtpd *srv = l->srv;
	const struct conf *cf = &srv->conf->conf;
	if (status < 0) {
		log_warn("accept on %s:%u: %s", l->cl.host, l->cl.port,
		         uv_strerror(status));
		return;
	}
	struct smtpd_session *s = calloc(1, sizeof *s);
	if (!s) {
		log_err("accept: out of memory");
		return;
	}
	s->srv = srv;
	s->cf = smtpd_conf_hold(srv->conf);
	s->mode = l->cl.mode;
	if (srv->tls && SSL_CTX_up_ref(srv->tls))
		s->tls_ctx = srv->tls;
	buf_init(&s->in, IN_HIGH + READ_CHUNK);
	buf_init(&s->out, SIZE_MAX);
	snprintf(s->sid, sizeof s->sid, "%" PRIx64, ++srv->next_sid);
	uv_tcp_init(srv->loop, &s->tcp);
	uv_timer_init(srv->loop, &s->timer);
	s->tcp.data = s->timer.data = s;
	s->open_handles = 2;
	s->born = uv_now(srv->loop);
	s->next = srv->sessions;
	if (s->next)
		s->next->prev = s;
	srv->sessions = s;
	srv->nsessions++;

	int r = uv_accept(server, (uv_stream_t *)&s->tcp);
	if (r < 0) {
		log_warn("accept: %s", uv_strerror(r));
		s->closing = true;
		close_handles(s);
		return;
	}
	uv_tcp_nodelay(&s->tcp, 1);
	int sndbuf = SESS_SNDBUF;
	r = uv_send_buffer_size((uv_handle_t *)&s->tcp, &sndbuf);
	if (r < 0)
		log_warn("s=%s: SO_SNDBUF: %s", s->sid, uv_strerror(r));
	peer_name(&s->tcp, &s->peer, s->ip, sizeof s->ip, &s->port);
	const struct sockaddr *peer = (const struct sockaddr *)&s->peer;
	bool trusted = smtpd_cidr_match(&srv->conf->trusted, peer);
	smtpd_relay_sess_init(&s->relay, s->cf->relay, srv->limits, peer,
	                      s->ip, s->sid);

	struct smtpd_proto_cfg pc = {
		.hostname = cf->hostname,
		.sid = s->sid,
		.reply_counts = srv->replies,
		.reply_hook = stats_reply_cb,
		.reply_hook_ctx = srv,
		.max_message_size = srv->size_cap &&
		                    srv->size_cap < cf->max_message_size
		                    ? srv->size_cap : cf->max_message_size,
		.max_recipients = cf->max_recipients,
		.max_bad_commands = cf->max_bad_commands,
		.bare_normalize = cf->bare_newline == CONF_BARE_NORMALIZE,
		.long_lines_reject = cf->long_lines == CONF_LONG_LINES_REJECT,
		.scrub = (const char *const *)cf->scrub_headers,
		.nscrub = cf->nscrub_headers,
		.hop_limit = cf->hop_limit,
		.mode = s->mode,
		.tls_available = s->tls_ctx != NULL,
		.policy = &smtpd_relay_policy_ops,
		.policy_ctx = &s->relay,
		.trusted = trusted,
		.auth_plaintext = smtpd_cidr_match(&srv->conf->plaintext, peer),
		.auth_available = srv->creds != NULL,
		.quota = smtpd_quota_mail,
		.quota_ctx = s,
		.spool = smtpd_spool_mail,
		.spool_ctx = s,
	};
	s->proto = smtpd_proto_new(&pc, &smtpd_sink_ops, s);
	if (!s->proto) {
		log_err("s=%s: out of memory", s->sid);
		s->closing = true;
		close_handles(s);
		return;
	}

	/* deny_networks, rate_connections: logged there, with the reason. */
	enum smtp_reply_id refuse = smtpd_relay_connect(&s->relay,
	                                                smtpd_relay_now());
	bool logged = refuse != SMTP_R__COUNT;
	if (logged)
		(void)0;
	else if (srv->nsessions > cf->max_connections)
		refuse = SMTP_R_TOO_MANY_CONN;
	else if (count_ip(srv, s) > cf->max_connections_per_ip)
		refuse = SMTP_R_TOO_MANY_CONN_IP;
	if (refuse != SMTP_R__COUNT) {
		const struct smtp_reply_def *d = &smtp_replies[refuse];
		srv->replies[refuse]++;
		smtpd_stats_reply(srv, refuse, NULL);
		if (!logged)
			log_info("s=%s: refused [%s]:%d: %u %s %s", s->sid, s->ip,
			         s->port, d->code, d->enh, d->text);
		/* On smtps a plaintext reply would be garbage to the client's
		 * TLS, and a handshake just to refuse costs what the limit is
		 * there to save: the connection is closed without a word. */
		if (s->mode != CONF_LISTEN_SMTPS)
			buf_printf(&s->out, "%u %s %s\r\n", d->code, d->enh, d->text);
		smtpd_session_flush(s);
		smtpd_session_close(s, true);
		return;
	}
	log_info("s=%s: connect from [%s]:%d to %s%s", s->sid, s->ip, s->port,
	         conf_listen_mode_names[s->mode], trusted ? " (trusted)" : "");
	if (s->mode == CONF_LISTEN_SMTPS) {
		/* RFC 8314: TLS from the first byte; the greeting comes after
		 * the handshake, inside it. */
		r = tls_begin(s);
		if (r < 0) {
			log_err("s=%s: cannot start TLS: %s", s->sid,
			        r == -EINVAL ? "no certificate loaded" : strerror(-r));
			smtpd_session_close(s, false);
			return;
		}
	} else {
		smtpd_proto_greet(s->proto, &s->out);
		smtpd_session_flush(s);
	}
	update_reading(s);
}

