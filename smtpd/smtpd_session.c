/*
 * smtpd/smtpd_session.c - The I/O shell around smtpd_proto: listeners,
 * one session per TCP connection (libuv), timeouts, flow control, and the
 * sink that streams the body into the spool and asks the queue to commit.
 * Owns each session's uv_tcp_t and uv_timer_t; a session is freed only
 * when both handles are closed and no commit is in flight.
 */
#include "smtpd/smtpd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_proto.h"

#define READ_CHUNK   (64 * 1024)
/* Unconsumed input kept while a commit is pending or a line is partial. */
#define IN_HIGH      (256 * 1024)
/* Stop reading while this much output waits for a slow reader. */
#define OUT_HIGH     (256 * 1024)
#define BACKLOG      511
/* A graceful close waits this long for queued replies to drain; a peer
 * that stopped reading must not hold its session slot forever. */
#define LINGER_MS    10000

struct smtpd_listener {
	struct smtpd *srv;
	uv_tcp_t tcp;
	struct conf_listen cl;     /* a copy: configurations come and go */
};

/* A configuration shared by the server and the sessions that started
 * under it. SIGHUP installs a new one for new sessions; a session keeps
 * the one it started with until it ends, so nothing changes under it. */
struct smtpd_conf {
	struct conf conf;
	unsigned refs;
};

static struct smtpd_conf *conf_hold(struct smtpd_conf *c)
{
	c->refs++;
	return c;
}

static void conf_drop(struct smtpd_conf *c)
{
	if (c && --c->refs == 0) {
		conf_free(&c->conf);
		free(c);
	}
}

struct smtpd_session;

struct smtpd {
	uv_loop_t *loop;
	struct smtpd_conf *conf;     /* for new sessions */
	struct queue *q;
	struct smtpd_listener lst[CONF_LISTEN_MAX];
	size_t nlst;
	size_t open_listeners;
	struct smtpd_session *sessions;   /* doubly linked */
	unsigned nsessions;
	uint64_t next_sid;
	bool stopping;
	void (*stop_cb)(void *arg);
	void *stop_arg;
};

struct smtpd_session {
	struct smtpd *srv;
	struct smtpd_conf *cf;     /* the configuration this session runs on */
	uv_tcp_t tcp;
	uv_timer_t timer;
	int open_handles;
	bool closing;          /* close started: no more input or output */
	bool commit_pending;   /* the queue holds a callback to us */
	bool stop_after_commit;
	bool reading;
	bool eof;              /* the client shut down its side */
	struct smtpd_proto *proto;
	struct buf in, out;
	struct queue_body *body;
	uint64_t commit_size;  /* body size of the message being committed */
	char sid[20];
	char ip[64];           /* "127.0.0.1" / "::1" */
	int port;
	struct smtpd_session *prev, *next;
};

struct write_req {
	uv_write_t req;
	struct smtpd_session *s;
	size_t len;
	uint8_t data[];
};

static void session_process(struct smtpd_session *s);
static void session_close(struct smtpd_session *s, bool graceful);

/* ---- sink: body into the spool -------------------------------------------- */

static void format_date(char *out, size_t n, time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, n, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* HELO text goes into a header only with received_client; keep it inert. */
static void header_safe(char *dst, size_t n, const char *src)
{
	size_t o = 0;
	for (; *src && o + 1 < n; src++) {
		unsigned char c = (unsigned char)*src;
		dst[o++] = (c > 32 && c < 127 && c != '(' && c != ')') ? (char)c : '?';
	}
	dst[o] = '\0';
}

static int sink_begin(void *ctx, struct smtpd_txn *t)
{
	struct smtpd_session *s = ctx;
	const struct conf *cf = &s->cf->conf;
	queue_new_id(s->srv->q, t->qid);
	format_date(t->date, sizeof t->date, time(NULL));
	int r = queue_body_open(s->srv->q, t->qid, &s->body);
	if (r < 0) {
		log_err("%s: cannot create spool file: %s", t->qid, strerror(-r));
		return r;
	}
	/* Our trace header names no client address or host unless asked to
	 * (received_client): hiding where mail came from is the point. */
	struct buf h = BUF_INIT(4096);
	if (cf->received_client) {
		char helo[256];
		header_safe(helo, sizeof helo, smtpd_proto_helo(s->proto));
		buf_printf(&h, "Received: from %s ([%s])\r\n\tby %s (relayd)",
		           helo, s->ip, cf->hostname);
	} else {
		buf_printf(&h, "Received: by %s (relayd)", cf->hostname);
	}
	buf_printf(&h, " with %s id %s", smtpd_proto_with(s->proto), t->qid);
	if (t->nrcpt == 1)
		buf_printf(&h, "\r\n\tfor <%s>", t->rcpt[0].addr);
	r = buf_printf(&h, "; %s\r\n", t->date);
	if (r == 0)
		r = queue_body_write(s->body, h.data, h.len);
	buf_free(&h);
	if (r < 0) {
		queue_body_abort(s->body);
		s->body = NULL;
	}
	return r;
}

static int sink_write(void *ctx, const uint8_t *p, size_t n)
{
	struct smtpd_session *s = ctx;
	return queue_body_write(s->body, p, n);
}

static void sink_abort(void *ctx)
{
	struct smtpd_session *s = ctx;
	queue_body_abort(s->body);
	s->body = NULL;
}

static const struct smtpd_sink_ops sink_ops = {
	.begin = sink_begin,
	.write = sink_write,
	.abort = sink_abort,
};

/* ---- output and flow control ----------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct smtpd_session *s = w->s;
	free(w);
	if (status < 0 && status != UV_ECANCELED && !s->closing) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(status));
		session_close(s, false);
		return;
	}
	if (!s->closing)
		session_process(s);
}

static void flush(struct smtpd_session *s)
{
	if (s->out.len == 0 || s->closing)
		return;
	/* Most replies fit the socket buffer: write them now, with no request
	 * to allocate and no write callback (which costs libuv an epoll_ctl
	 * per write). Only what the kernel did not take is queued. */
	uv_buf_t now = uv_buf_init((char *)s->out.data, (unsigned)s->out.len);
	int n = uv_try_write((uv_stream_t *)&s->tcp, &now, 1);
	if (n == (int)s->out.len) {
		buf_reset(&s->out);
		return;
	}
	if (n < 0 && n != UV_EAGAIN) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(n));
		session_close(s, false);
		return;
	}
	if (n > 0)
		buf_consume(&s->out, (size_t)n);
	struct write_req *w = malloc(sizeof *w + s->out.len);
	if (!w) {
		session_close(s, false);
		return;
	}
	w->s = s;
	w->len = s->out.len;
	memcpy(w->data, s->out.data, s->out.len);
	buf_reset(&s->out);
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int r = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
	if (r < 0) {
		free(w);
		log_info("s=%s: write error: %s", s->sid, uv_strerror(r));
		session_close(s, false);
	}
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct smtpd_session *s = h->data;
	(void)hint;
	if (buf_reserve(&s->in, READ_CHUNK) < 0) {
		*b = uv_buf_init(NULL, 0);
		return;
	}
	*b = uv_buf_init((char *)s->in.data + s->in.len,
	                 (unsigned)(s->in.cap - s->in.len));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static uint64_t current_timeout(const struct smtpd_session *s)
{
	const struct conf *cf = &s->cf->conf;
	switch (smtpd_proto_state(s->proto)) {
	case SMTPD_ST_INIT:
		return cf->timeout_greeting;
	case SMTPD_ST_DATA:
	case SMTPD_ST_BDAT:
		return cf->timeout_data;
	default:
		return cf->timeout_command;
	}
}

static void timer_cb(uv_timer_t *t);

/* Reads only when the protocol can take input and the peer reads ours. */
static void update_reading(struct smtpd_session *s)
{
	/* Reading goes on during a commit: pipelined commands wait in s->in
	 * (bounded by IN_HIGH), and no epoll change is paid per message. */
	bool want = !s->closing && !s->eof && s->in.len < IN_HIGH &&
	            uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) < OUT_HIGH;
	if (want && !s->reading) {
		int r = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
		if (r < 0) {
			log_warn("s=%s: read start: %s", s->sid, uv_strerror(r));
			session_close(s, false);
			return;
		}
		s->reading = true;
	} else if (!want && s->reading) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->reading = false;
	}
	if (!s->closing && !s->commit_pending)
		uv_timer_start(&s->timer, timer_cb, current_timeout(s), 0);
	else if (!s->closing)
		uv_timer_stop(&s->timer);
}

/* ---- commit ------------------------------------------------------------- */

static void session_maybe_free(struct smtpd_session *s);

static void commit_cb(void *arg, int status)
{
	struct smtpd_session *s = arg;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	s->commit_pending = false;
	if (status == 0) {
		char client[80], from[SMTP_PATH_MAX * 4 + 8];
		if (s->cf->conf.received_client)
			snprintf(client, sizeof client, "[%s]:%d", s->ip, s->port);
		else
			snprintf(client, sizeof client, "hidden");
		log_escape(from, sizeof from, t->sender, strlen(t->sender));
		log_info("%s: from=<%s>, size=%" PRIu64 ", nrcpt=%zu, client=%s, "
		         "scrubbed=%u (s=%s)", t->qid, from, s->commit_size,
		         t->nrcpt, client, t->scrubbed, s->sid);
	} else {
		log_warn("%s: not queued: %s (s=%s)", t->qid, strerror(-status),
		         s->sid);
	}
	/* A client that left before its 250 may send the message again: a
	 * duplicate, never a loss (DESIGN.md). */
	smtpd_proto_done(s->proto, status, &s->out);
	if (s->closing) {
		session_maybe_free(s);
		return;
	}
	if (s->stop_after_commit) {
		smtpd_proto_shutdown(s->proto, &s->out);
		flush(s);
		session_close(s, true);
		return;
	}
	session_process(s);
}

static void start_commit(struct smtpd_session *s)
{
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	struct queue_msg m = {0};
	memcpy(m.qid, t->qid, sizeof m.qid);
	m.arrival = time(NULL);
	/* Always ACTIVE: with delivery = hold the scheduler just does not run,
	 * and mail queued then is delivered once delivery is turned on. */
	m.state = QUEUE_MSG_ACTIVE;
	m.flags = t->flags;
	m.sender = t->sender;
	m.envid = t->envid;
	m.nrcpt = t->nrcpt;
	m.rcpt = calloc(t->nrcpt, sizeof *m.rcpt);
	int r = -ENOMEM;
	if (m.rcpt) {
		for (size_t i = 0; i < t->nrcpt; i++) {
			m.rcpt[i].addr = t->rcpt[i].addr;
			m.rcpt[i].orcpt = t->rcpt[i].orcpt;
			m.rcpt[i].notify = t->rcpt[i].notify;
			m.rcpt[i].state = QUEUE_RCPT_PENDING;
		}
		s->commit_size = queue_body_size(s->body);
		r = queue_commit(s->srv->q, s->body, &m, commit_cb, s);
		s->body = NULL;   /* the queue owns it now, whatever r is */
	} else {
		queue_body_abort(s->body);
		s->body = NULL;
	}
	free(m.rcpt);
	if (r < 0) {
		log_warn("%s: commit failed: %s (s=%s)", t->qid, strerror(-r), s->sid);
		smtpd_proto_done(s->proto, r, &s->out);
		return;
	}
	s->commit_pending = true;
}

/* ---- input ----------------------------------------------------------------- */

/* Runs the protocol over buffered input until it needs more, raises a
 * request, or closes; then sends the replies (batched: RFC 2920). */
static void session_process(struct smtpd_session *s)
{
	while (!s->closing && !s->commit_pending && s->in.len > 0) {
		enum smtpd_req req;
		size_t k = smtpd_proto_feed(s->proto, s->in.data, s->in.len,
		                            &s->out, &req);
		buf_consume(&s->in, k);
		if (req == SMTPD_REQ_COMMIT) {
			start_commit(s);
			continue;
		}
		if (req == SMTPD_REQ_CLOSE) {
			flush(s);
			session_close(s, true);
			return;
		}
		if (k == 0)
			break;
	}
	flush(s);
	if (s->closing)
		return;
	if (s->eof && !s->commit_pending) {
		session_close(s, true);
		return;
	}
	update_reading(s);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct smtpd_session *s = st->data;
	(void)b;
	if (nread == 0)
		return;
	if (nread == UV_EOF) {
		/* A half-close: what the client sent before it still gets
		 * processed and answered (pipelined input, a commit running). */
		s->eof = true;
		session_process(s);
		return;
	}
	if (nread < 0) {
		log_info("s=%s: read error: %s", s->sid, uv_strerror((int)nread));
		session_close(s, false);
		return;
	}
	s->in.len += (size_t)nread;
	session_process(s);
}

static void timer_cb(uv_timer_t *t)
{
	struct smtpd_session *s = t->data;
	log_info("s=%s: timeout in state %s from [%s]:%d", s->sid,
	         smtpd_state_names[smtpd_proto_state(s->proto)], s->ip, s->port);
	smtpd_proto_timeout(s->proto, &s->out);
	flush(s);
	session_close(s, true);
}

/* ---- life cycle ------------------------------------------------------------ */

static void server_maybe_done(struct smtpd *srv);

/* Frees the session once both handles are closed and the queue holds no
 * callback to it. The body in progress, if any, is aborted here. */
static void session_maybe_free(struct smtpd_session *s)
{
	if (s->open_handles > 0 || s->commit_pending)
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
	conf_drop(s->cf);
	buf_free(&s->in);
	buf_free(&s->out);
	free(s);
	server_maybe_done(srv);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct smtpd_session *s = h->data;
	s->open_handles--;
	session_maybe_free(s);
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
static void session_close(struct smtpd_session *s, bool graceful)
{
	if (s->closing)
		return;
	s->closing = true;
	if (s->proto)
		log_info("s=%s: disconnect from [%s]:%d in state %s", s->sid, s->ip,
		         s->port, smtpd_state_names[smtpd_proto_state(s->proto)]);
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

static unsigned count_ip(const struct smtpd *srv, const char *ip)
{
	unsigned n = 0;
	for (const struct smtpd_session *s = srv->sessions; s; s = s->next)
		if (strcmp(s->ip, ip) == 0)
			n++;
	return n;
}

static void peer_name(uv_tcp_t *t, char *ip, size_t n, int *port)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	snprintf(ip, n, "unknown");
	*port = 0;
	if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) < 0)
		return;
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

static void connection_cb(uv_stream_t *server, int status)
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
	s->cf = conf_hold(srv->conf);
	buf_init(&s->in, IN_HIGH + READ_CHUNK);
	buf_init(&s->out, SIZE_MAX);
	snprintf(s->sid, sizeof s->sid, "%" PRIx64, ++srv->next_sid);
	uv_tcp_init(srv->loop, &s->tcp);
	uv_timer_init(srv->loop, &s->timer);
	s->tcp.data = s->timer.data = s;
	s->open_handles = 2;
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
	peer_name(&s->tcp, s->ip, sizeof s->ip, &s->port);

	struct smtpd_proto_cfg pc = {
		.hostname = cf->hostname,
		.sid = s->sid,
		.max_message_size = cf->max_message_size,
		.max_recipients = cf->max_recipients,
		.max_bad_commands = cf->max_bad_commands,
		.bare_normalize = cf->bare_newline == CONF_BARE_NORMALIZE,
		.scrub = (const char *const *)cf->scrub_headers,
		.nscrub = cf->nscrub_headers,
	};
	s->proto = smtpd_proto_new(&pc, &sink_ops, s);
	if (!s->proto) {
		log_err("s=%s: out of memory", s->sid);
		s->closing = true;
		close_handles(s);
		return;
	}

	enum smtp_reply_id refuse = SMTP_R__COUNT;
	if (srv->nsessions > cf->max_connections)
		refuse = SMTP_R_TOO_MANY_CONN;
	else if (count_ip(srv, s->ip) > cf->max_connections_per_ip)
		refuse = SMTP_R_TOO_MANY_CONN_IP;
	if (refuse != SMTP_R__COUNT) {
		const struct smtp_reply_def *d = &smtp_replies[refuse];
		log_info("s=%s: refused [%s]:%d: %u %s %s", s->sid, s->ip, s->port,
		         d->code, d->enh, d->text);
		buf_printf(&s->out, "%u %s %s\r\n", d->code, d->enh, d->text);
		flush(s);
		session_close(s, true);
		return;
	}
	log_info("s=%s: connect from [%s]:%d", s->sid, s->ip, s->port);
	smtpd_proto_greet(s->proto, &s->out);
	flush(s);
	update_reading(s);
}

/* ---- server ------------------------------------------------------------- */

int smtpd_new(uv_loop_t *loop, struct conf *conf, struct queue *q,
              struct smtpd **out)
{
	struct smtpd *srv = calloc(1, sizeof *srv);
	struct smtpd_conf *c = calloc(1, sizeof *c);
	if (!srv || !c) {
		free(srv);
		free(c);
		return -ENOMEM;
	}
	c->conf = *conf;            /* moved: the server owns it now */
	memset(conf, 0, sizeof *conf);
	c->refs = 1;
	srv->loop = loop;
	srv->conf = c;
	srv->q = q;
	conf = &c->conf;
	int r = 0;
	for (size_t i = 0; i < conf->nlisten; i++) {
		const struct conf_listen *cl = &conf->listen[i];
		struct smtpd_listener *l = &srv->lst[i];
		struct sockaddr_storage ss;
		l->srv = srv;
		l->cl = *cl;
		if (cl->ipv6)
			r = uv_ip6_addr(cl->host, cl->port, (struct sockaddr_in6 *)&ss);
		else
			r = uv_ip4_addr(cl->host, cl->port, (struct sockaddr_in *)&ss);
		if (r == 0)
			r = uv_tcp_init(loop, &l->tcp);
		if (r < 0) {
			log_err("listen %s:%u: %s", cl->host, cl->port, uv_strerror(r));
			break;
		}
		l->tcp.data = l;
		srv->nlst++;
		srv->open_listeners++;
		r = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss,
		                cl->ipv6 ? UV_TCP_IPV6ONLY : 0);
		if (r < 0) {
			log_err("cannot bind %s%s%s:%u: %s", cl->ipv6 ? "[" : "",
			        cl->host, cl->ipv6 ? "]" : "", cl->port, uv_strerror(r));
			break;
		}
	}
	if (r < 0) {
		/* The caller closes the loop's handles via smtpd_stop. */
		*out = srv;
		return r == UV_EADDRINUSE ? -EADDRINUSE : (r < 0 ? r : -EINVAL);
	}
	*out = srv;
	return 0;
}

void smtpd_set_queue(struct smtpd *srv, struct queue *q)
{
	srv->q = q;
}

const struct conf *smtpd_conf(const struct smtpd *srv)
{
	return &srv->conf->conf;
}

void smtpd_set_conf(struct smtpd *srv, struct conf *conf)
{
	struct smtpd_conf *c = calloc(1, sizeof *c);
	if (!c) {
		log_err("reload: out of memory; keeping the running configuration");
		conf_free(conf);
		return;
	}
	c->conf = *conf;
	memset(conf, 0, sizeof *conf);
	c->refs = 1;
	conf_drop(srv->conf);
	srv->conf = c;
}

int smtpd_start(struct smtpd *srv)
{
	for (size_t i = 0; i < srv->nlst; i++) {
		struct smtpd_listener *l = &srv->lst[i];
		int r = uv_listen((uv_stream_t *)&l->tcp, BACKLOG, connection_cb);
		if (r < 0) {
			log_err("cannot listen on %s:%u: %s", l->cl.host, l->cl.port,
			        uv_strerror(r));
			return r;
		}
		log_info("listening on %s%s%s:%u", l->cl.ipv6 ? "[" : "",
		         l->cl.host, l->cl.ipv6 ? "]" : "", l->cl.port);
	}
	return 0;
}

static void server_maybe_done(struct smtpd *srv)
{
	if (!srv->stopping || srv->nsessions > 0 || srv->open_listeners > 0)
		return;
	void (*cb)(void *) = srv->stop_cb;
	void *arg = srv->stop_arg;
	conf_drop(srv->conf);
	free(srv);
	if (cb)
		cb(arg);
}

static void listener_closed_cb(uv_handle_t *h)
{
	struct smtpd_listener *l = h->data;
	struct smtpd *srv = l->srv;
	srv->open_listeners--;
	server_maybe_done(srv);
}

void smtpd_stop(struct smtpd *srv, void (*done_cb)(void *arg), void *arg)
{
	srv->stopping = true;
	srv->stop_cb = done_cb;
	srv->stop_arg = arg;
	for (size_t i = 0; i < srv->nlst; i++)
		if (!uv_is_closing((uv_handle_t *)&srv->lst[i].tcp))
			uv_close((uv_handle_t *)&srv->lst[i].tcp, listener_closed_cb);
	for (struct smtpd_session *s = srv->sessions, *n; s; s = n) {
		n = s->next;
		if (s->closing)
			continue;
		if (s->commit_pending) {
			s->stop_after_commit = true;
			continue;
		}
		smtpd_proto_shutdown(s->proto, &s->out);
		flush(s);
		session_close(s, true);
	}
	if (srv->nlst == 0)
		server_maybe_done(srv);
}
