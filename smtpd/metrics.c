/*
 * smtpd/metrics.c - the metrics endpoint's server (metrics.h) and smtpd's
 * own metrics (smtpd_metrics: sessions, replies by reason class, TLS
 * handshake and AUTH failures), and the same reply classes counted into
 * the statistics history (smtpd_stats_reply, queue_stats.h). One request
 * per connection: the head is read (at most HTTPGET_HEAD_MAX bytes,
 * METRICS_TIMEOUT_MS), answered with Connection: close, and the
 * connection closed.
 */
#include "smtpd/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/conf.h"
#include "common/httpget.h"
#include "common/log.h"
#include "common/smtp.h"
#include "common/version.h"
#include "smtpd/smtpd_int.h"

struct metrics_conn {
	struct metrics *m;
	struct metrics_conn *prev, *next;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t wr;
	int open_handles;
	bool closing, answered;
	size_t len;
	char in[HTTPGET_HEAD_MAX];
	struct buf out;
};

struct metrics {
	uv_loop_t *loop;
	uv_tcp_t listener;
	int open_handles;             /* the listener's */
	struct metrics_conn *conns;
	unsigned nconns;
	metrics_collect_fn collect;
	void *arg;
	bool stopping;
	void (*done_cb)(void *arg);
	void *done_arg;
};

static void maybe_done(struct metrics *m)
{
	if (!m->stopping || m->open_handles || m->conns)
		return;
	void (*cb)(void *) = m->done_cb;
	void *arg = m->done_arg;
	free(m);
	if (cb)
		cb(arg);
}

static void conn_closed_cb(uv_handle_t *h)
{
	struct metrics_conn *c = h->data;
	if (--c->open_handles)
		return;
	struct metrics *m = c->m;
	if (c->prev)
		c->prev->next = c->next;
	else
		m->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	m->nconns--;
	buf_free(&c->out);
	free(c);
	maybe_done(m);
}

static void conn_close(struct metrics_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
	uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void write_cb(uv_write_t *w, int status)
{
	(void)status;
	conn_close(w->data);
}

/* Sends the answer for res and closes once it is written (the timer,
 * restarted, bounds a client that does not read it). */
static void answer(struct metrics_conn *c, enum httpget_result res, bool head)
{
	struct metrics *m = c->m;
	c->answered = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	struct buf body = BUF_INIT(METRICS_BODY_MAX);
	const char *ctype = "text/plain; charset=utf-8";
	if (res == HTTPGET_METRICS) {
		m->collect(m->arg, &body);
		ctype = "text/plain; version=0.0.4; charset=utf-8";
	} else {
		buf_printf(&body, "%s\n", httpget_status(res));
	}
	buf_printf(&c->out, "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
	           "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
	           httpget_status(res), ctype, body.len,
	           res == HTTPGET_BAD_METHOD ? "Allow: GET, HEAD\r\n" : "");
	if (!head)
		buf_append(&c->out, body.data, body.len);
	buf_free(&body);
	uv_timer_again(&c->timer);
	uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
	c->wr.data = c;
	if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, write_cb) < 0)
		conn_close(c);
}

static void timer_cb(uv_timer_t *t)
{
	struct metrics_conn *c = t->data;
	if (c->closing)
		return;
	if (c->answered) {
		/* The answer did not go out in time: the client is not reading. */
		conn_close(c);
		return;
	}
	log_info("metrics: request timed out");
	/* A 408 (RFC 9110 §15.5.9), then close. */
	c->answered = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	buf_appends(&c->out, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0"
	            "\r\nConnection: close\r\n\r\n");
	uv_timer_start(&c->timer, timer_cb, METRICS_TIMEOUT_MS, 0);
	uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
	c->wr.data = c;
	if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, write_cb) < 0)
		conn_close(c);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	(void)hint;
	struct metrics_conn *c = h->data;
	*b = uv_buf_init(c->in + c->len, (unsigned)(sizeof c->in - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
	(void)b;
	struct metrics_conn *c = s->data;
	if (c->closing || c->answered)
		return;
	if (nread < 0) {
		conn_close(c);
		return;
	}
	c->len += (size_t)nread;
	struct httpget r;
	if (httpget_parse(c->in, c->len, &r) == HTTPGET_MORE)
		return;
	if (r.result != HTTPGET_METRICS)
		log_info("metrics: %s", httpget_status(r.result));
	answer(c, r.result, r.head);
}

static void listener_closed_cb(uv_handle_t *h)
{
	struct metrics *m = h->data;
	m->open_handles--;
	maybe_done(m);
}

static void connection_cb(uv_stream_t *srv, int status)
{
	struct metrics *m = srv->data;
	if (status < 0 || m->stopping)
		return;
	struct metrics_conn *c = calloc(1, sizeof *c);
	if (!c)
		return;
	c->m = m;
	buf_init(&c->out, METRICS_BODY_MAX + 4096);
	uv_tcp_init(m->loop, &c->tcp);
	uv_timer_init(m->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->open_handles = 2;
	c->next = m->conns;
	if (m->conns)
		m->conns->prev = c;
	m->conns = c;
	m->nconns++;
	if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0) {
		conn_close(c);
		return;
	}
	/* Over the limit: accepted (the backlog drains) and closed at once. */
	if (m->nconns > METRICS_CONN_MAX) {
		log_info("metrics: more than %d connections, one closed",
		         METRICS_CONN_MAX);
		conn_close(c);
		return;
	}
	uv_timer_start(&c->timer, timer_cb, METRICS_TIMEOUT_MS,
	               METRICS_TIMEOUT_MS);
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
		conn_close(c);
}

static bool loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
	}
	const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
	return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
	       (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) &&
	        a->sin6_addr.s6_addr[12] == 127);
}

int metrics_start(uv_loop_t *loop, const char *hostport,
                  metrics_collect_fn collect, void *arg, struct metrics **out)
{
	char host[256];
	uint16_t port;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	if (conf_parse_hostport(hostport, host, sizeof host, &port) < 0 ||
	    (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
	     uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)) {
		log_err("metrics_listen: not ADDR:PORT: %s", hostport);
		return -EINVAL;
	}
	struct metrics *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	m->loop = loop;
	m->collect = collect;
	m->arg = arg;
	uv_tcp_init(loop, &m->listener);
	m->listener.data = m;
	m->open_handles = 1;
	int r = uv_tcp_bind(&m->listener, (const struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&m->listener, 64, connection_cb);
	if (r < 0) {
		log_err("metrics_listen %s: %s", hostport, uv_strerror(r));
		m->stopping = true;
		uv_close((uv_handle_t *)&m->listener, listener_closed_cb);
		return r;
	}
	if (!loopback(&ss))
		log_warn("metrics_listen %s is not a loopback address: anyone who "
		         "can reach it can read relayd's metrics", hostport);
	log_info("metrics: listening on %s", hostport);
	*out = m;
	return 0;
}

void metrics_stop(struct metrics *m, void (*done_cb)(void *arg), void *arg)
{
	m->stopping = true;
	m->done_cb = done_cb;
	m->done_arg = arg;
	uv_close((uv_handle_t *)&m->listener, listener_closed_cb);
	for (struct metrics_conn *c = m->conns; c; c = c->next)
		conn_close(c);
}

void metrics_common(struct buf *out, int64_t start_time)
{
	buf_printf(out, "# HELP relayd_build_info relayd's version.\n"
	           "# TYPE relayd_build_info gauge\n"
	           "relayd_build_info{version=\"%s\"} 1\n"
	           "# HELP relayd_start_time_seconds Start time of the process "
	           "since the Unix epoch.\n"
	           "# TYPE relayd_start_time_seconds gauge\n"
	           "relayd_start_time_seconds %" PRId64 "\n",
	           RELAY_VERSION, start_time);
}

/* ---- smtpd's metrics ------------------------------------------------------ */

/* The reason class of a refusal (a bounded label set), NULL for replies
 * that refuse nothing (2xx/3xx, the shutdown's 421). */
static const char *reject_class(enum smtp_reply_id id)
{
	switch (id) {
	case SMTP_R_ACCESS_DENIED: case SMTP_R_SENDER_DOMAIN:
	case SMTP_R_RCPT_DOMAIN: case SMTP_R_RELAY_DENIED:
	case SMTP_R_CRED_SENDER: case SMTP_R_CRED_RCPT: case SMTP_R_CRED_FROM:
	case SMTP_R_TOO_MANY_HOPS: case SMTP_R_DKIM_NO_KEY:
		return "policy";
	case SMTP_R_AUTH_FAILED: case SMTP_R_AUTH_LOCKED:
	case SMTP_R_AUTH_LOCKED_IP: case SMTP_R_AUTH_UNTRACKED:
	case SMTP_R_AUTH_REQUIRED: case SMTP_R_AUTH_ENCRYPT:
		return "auth";
	case SMTP_R_QUOTA:
		return "quota";
	case SMTP_R_CONN_RATE: case SMTP_R_MSG_RATE: case SMTP_R_TOO_MANY_CONN:
	case SMTP_R_TOO_MANY_CONN_IP:
		return "rate";
	case SMTP_R_SIZE_TOO_BIG: case SMTP_R_MSG_TOO_BIG:
	case SMTP_R_TOO_MANY_RCPT:
		return "size";
	case SMTP_R_TIMEOUT: case SMTP_R_DATA_SLOW: case SMTP_R_LIFETIME:
		return "timeout";
	case SMTP_R_STORAGE_ERR: case SMTP_R_STORAGE_FULL:
	case SMTP_R_DKIM_FAILED: case SMTP_R_AUTH_TEMP:
	case SMTP_R_TLS_UNAVAILABLE:
		return "temporary";
	case SMTP_R_SHUTDOWN:
		return NULL;
	default:
		return smtp_replies[id].code >= 400 ? "protocol" : NULL;
	}
}

/* The classes, in the order of their QUEUE_STATS_REJ_* counters. */
static const char *const classes[] = {"policy", "auth", "quota", "rate",
	"size", "timeout", "temporary", "protocol"};

void smtpd_stats_reply(struct smtpd *s, enum smtp_reply_id id,
                       const char *cred)
{
	if (!s->q)
		return;
	int64_t now = (int64_t)time(NULL);
	if (id == SMTP_R_QUEUED) {
		queue_stats_count(s->q, now, QUEUE_STATS_ACCEPTED, cred, NULL, 1);
		return;
	}
	const char *k = reject_class(id);
	for (unsigned i = 0; k && i < sizeof classes / sizeof *classes; i++)
		if (strcmp(k, classes[i]) == 0) {
			queue_stats_count(s->q, now, QUEUE_STATS_REJECTED, cred, NULL,
			                  1);
			queue_stats_count(s->q, now, QUEUE_STATS_REJ_FIRST + i, cred,
			                  NULL, 1);
		}
}

void smtpd_metrics(const struct smtpd *s, struct buf *out)
{
	uint64_t n[sizeof classes / sizeof *classes] = {0};
	for (int id = 0; id < SMTP_R__COUNT; id++) {
		const char *k = reject_class((enum smtp_reply_id)id);
		for (size_t i = 0; k && i < sizeof classes / sizeof *classes; i++)
			if (strcmp(k, classes[i]) == 0)
				n[i] += s->replies[id];
	}
	buf_printf(out, "# HELP relayd_smtp_sessions Open SMTP sessions.\n"
	           "# TYPE relayd_smtp_sessions gauge\n"
	           "relayd_smtp_sessions %u\n"
	           "# HELP relayd_accepted_total Messages accepted (queued) "
	           "since start.\n"
	           "# TYPE relayd_accepted_total counter\n"
	           "relayd_accepted_total %" PRIu64 "\n"
	           "# HELP relayd_rejected_total SMTP refusals (4xx/5xx replies) "
	           "since start, by reason class.\n"
	           "# TYPE relayd_rejected_total counter\n",
	           s->nsessions, s->replies[SMTP_R_QUEUED]);
	for (size_t i = 0; i < sizeof classes / sizeof *classes; i++)
		buf_printf(out, "relayd_rejected_total{reason=\"%s\"} %" PRIu64 "\n",
		           classes[i], n[i]);
	buf_printf(out, "# HELP relayd_tls_handshake_failures_total Failed "
	           "inbound TLS handshakes since start.\n"
	           "# TYPE relayd_tls_handshake_failures_total counter\n"
	           "relayd_tls_handshake_failures_total %" PRIu64 "\n"
	           "# HELP relayd_auth_failures_total Failed AUTH attempts "
	           "(535 5.7.8) since start.\n"
	           "# TYPE relayd_auth_failures_total counter\n"
	           "relayd_auth_failures_total %" PRIu64 "\n"
	           "# HELP relayd_quota_refusals_total Messages refused for a "
	           "credential's quota since start.\n"
	           "# TYPE relayd_quota_refusals_total counter\n"
	           "relayd_quota_refusals_total %" PRIu64 "\n"
	           "# HELP relayd_rate_refusals_total Connections and messages "
	           "refused by rate_connections and rate_messages since start.\n"
	           "# TYPE relayd_rate_refusals_total counter\n"
	           "relayd_rate_refusals_total %" PRIu64 "\n",
	           s->tls_failed, s->replies[SMTP_R_AUTH_FAILED],
	           s->replies[SMTP_R_QUOTA],
	           s->replies[SMTP_R_CONN_RATE] + s->replies[SMTP_R_MSG_RATE]);
}
