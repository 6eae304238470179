/*
 * deliver/deliver.c - The delivery scheduler. Finds due messages in the
 * queue's schedule, loads them as jobs, hands them to a bounded pool of
 * SMTP client sessions (deliver_session.c), and turns each recipient's
 * result into a durable index change: sent, deferred (with backoff and
 * jitter), or bounced (with a DSN queued through the same spool).
 *
 * Route state: one destination, the smarthost. When it cannot be reached,
 * refuses our TLS or AUTH, or asks us to slow down, the whole route pauses
 * (exponential backoff from retry_min to retry_max) instead of every
 * message finding out for itself; after a pause one session probes before
 * the others follow. The state shows in `relayctl stats` and `list`.
 *
 * The smarthost's SIZE: each session reports what its EHLO named; the
 * scheduler keeps it (and spool_dir/smarthost.size) and tells smtpd, which
 * offers clients no more (deliver.h).
 *
 * Invariant: a message is in at most one place at a time: the busy table
 * holds every message loaded as a job, in a session, or with an index
 * change on its way; the schedule scan skips them.
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "common/log.h"
#include "common/smtp.h"
#include "deliver/deliver_dsn.h"

#define BUSY_BUCKETS 1024
/* Jobs loaded ahead of the sessions, per session slot. */
#define READY_PER_SESSION 4
/* Longest wait between schedule scans (new mail also wakes it). */
#define SCAN_MAX_MS 60000
/* Bytes of the original read per step while composing a DSN. */
#define DSN_CHUNK (64 * 1024)

struct busy {
	struct busy *next;
	char qid[QUEUE_ID_SIZE];
	struct deliver_job *job;   /* NULL: an index change is on its way */
	bool in_session;
	/* uv_now() ms until which the message is left alone after its
	 * index change failed (no resend loop on a full disk); 0: none. */
	uint64_t cool_until;
};

struct snode {
	struct snode *next;
	struct deliver_session *s;
	bool up;
	char name[300];     /* "host:port" it went to (a SIGHUP may change) */
};

/* Sends in the last window, for smarthost_rate: a ring of timestamps. */
struct rate {
	unsigned cap;
	uint64_t window_ms;
	uint64_t *t;
	unsigned head, n;
};

struct deliver {
	uv_loop_t *loop;
	struct queue *q;
	struct deliver_cfg *cfg;
	struct deliver_ctl *ctl;
	uv_timer_t timer;
	bool timer_inited;

	struct snode *sessions;
	unsigned nsessions, nconnecting;
	struct deliver_job *ready, **ready_tail;
	unsigned nready;
	struct busy *busy[BUSY_BUCKETS];
	size_t nbusy;

	/* The route. */
	bool paused, probing;
	uint64_t pause_until;       /* uv_now() ms */
	int64_t pause_until_wall;   /* unix seconds, for stats */
	unsigned route_fails;
	char route_reason[DELIVER_REPLY_TEXT_MAX - 64];

	struct rate rate_min, rate_hour;

	/* relayctl flush: ids captured at the time, tried ahead of the
	 * schedule. */
	char (*flush)[QUEUE_ID_SIZE];
	size_t nflush, flush_pos;

	/* The smarthost's SIZE (0: none known) and who hears of it. */
	uint64_t sh_size;
	deliver_size_cb size_cb;
	void *size_arg;
	/* One write of smarthost.size at a time (two on the pool would
	 * share its temp file); a change meanwhile is written after it. */
	bool size_storing, size_dirty;

	uint64_t n_sent, n_deferred, n_bounced, n_dsn, n_attempts;
	/* Failure reports that nobody will get: for a null-sender message
	 * (a bounce itself) with no postmaster to tell. */
	uint64_t n_dsn_dropped;
	int64_t started;
	unsigned inflight;          /* DSN works and index changes */
	bool stopping;
	void (*done_cb)(void *);
	void *done_arg;
};

static void schedule(struct deliver *d);
static void maybe_done(struct deliver *d);
static void arm(struct deliver *d, uint64_t ms);

/* ---- settings ----------------------------------------------------------- */

static char *dup_nonempty(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

static int read_password(const char *path, char **out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		snprintf(err, errlen, "smarthost_password_file %s: %s", path,
		         strerror(errno));
		return -errno;
	}
	char line[1024];
	if (!fgets(line, sizeof line, f))
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\r\n")] = '\0';
	*out = strdup(line);
	memset(line, 0, sizeof line);
	return *out ? 0 : -ENOMEM;
}

struct deliver_cfg *deliver_cfg_new(const struct conf *c, char *err,
                                    size_t errlen)
{
	struct deliver_cfg *g = calloc(1, sizeof *g);
	if (!g) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	g->refs = 1;
	g->mode = c->delivery;
	g->hostname = strdup(c->hostname ? c->hostname : "localhost");
	g->spool_dir = strdup(c->spool_dir);
	g->concurrency = c->smarthost_concurrency;
	g->per_conn = c->max_messages_per_connection;
	g->rewrite_sender = dup_nonempty(c->rewrite_sender);
	g->rewrite_from = c->rewrite_from_header;
	g->retry_min = c->retry_min;
	g->retry_max = c->retry_max < c->retry_min ? c->retry_min : c->retry_max;
	g->lifetime = c->max_queue_lifetime;
	g->warn_after = c->delay_warning_after;
	g->timeout = c->delivery_timeout;
	g->postmaster = dup_nonempty(c->postmaster);
	conf_parse_rate(c->smarthost_rate, &g->rate_minute, &g->rate_hour);
	if (!g->hostname || !g->spool_dir)
		goto nomem;
	if (g->mode != CONF_DELIVERY_SMARTHOST)
		return g;

	if (!c->smarthost[0]) {
		snprintf(err, errlen, "delivery = smarthost needs smarthost = HOST:PORT");
		goto fail;
	}
	if (conf_parse_hostport(c->smarthost, g->host, sizeof g->host, &g->port)) {
		snprintf(err, errlen, "smarthost: not HOST:PORT");
		goto fail;
	}
	g->tls = c->smarthost_tls;
	if (g->tls == CONF_TLS_AUTO)
		g->tls = g->port == 465 ? CONF_TLS_IMPLICIT : CONF_TLS_STARTTLS;
	g->tls_name = strdup(c->smarthost_tls_name[0] ? c->smarthost_tls_name
	                                              : g->host);
	if (!g->tls_name)
		goto nomem;
	if (c->smarthost_user[0]) {
		g->user = strdup(c->smarthost_user);
		if (!g->user)
			goto nomem;
		const char *env = getenv("RELAYD_SMARTHOST_PASSWORD");
		if (c->smarthost_password_file[0]) {
			if (read_password(c->smarthost_password_file, &g->password,
			                  err, errlen))
				goto fail;
		} else if (env) {
			g->password = strdup(env);
		} else {
			snprintf(err, errlen, "smarthost_user needs "
			         "smarthost_password_file or RELAYD_SMARTHOST_PASSWORD");
			goto fail;
		}
		if (!g->password)
			goto nomem;
	}
	if (g->tls != CONF_TLS_NONE) {
		g->ssl = SSL_CTX_new(TLS_client_method());
		if (!g->ssl)
			goto nomem;
		SSL_CTX_set_min_proto_version(g->ssl, TLS1_2_VERSION);
		SSL_CTX_set_mode(g->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
		if (c->smarthost_tls_verify) {
			SSL_CTX_set_verify(g->ssl, SSL_VERIFY_PEER, NULL);
			int ok = c->smarthost_tls_ca[0]
			         ? SSL_CTX_load_verify_locations(g->ssl,
			                                         c->smarthost_tls_ca, NULL)
			         : SSL_CTX_set_default_verify_paths(g->ssl);
			if (!ok) {
				char e[160] = "";
				ERR_error_string_n(ERR_get_error(), e, sizeof e);
				ERR_clear_error();
				snprintf(err, errlen, "smarthost_tls_ca %s: %s",
				         c->smarthost_tls_ca, e);
				goto fail;
			}
		} else {
			SSL_CTX_set_verify(g->ssl, SSL_VERIFY_NONE, NULL);
		}
	}
	return g;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	deliver_cfg_unref(g);
	return NULL;
}

int deliver_check_conf(const struct conf *conf, char *err, size_t errlen)
{
	struct deliver_cfg *g = deliver_cfg_new(conf, err, errlen);
	if (!g)
		return -EINVAL;
	deliver_cfg_unref(g);
	return 0;
}

void deliver_cfg_ref(struct deliver_cfg *g)
{
	g->refs++;
}

void deliver_cfg_unref(struct deliver_cfg *g)
{
	if (!g || --g->refs > 0)
		return;
	free(g->hostname);
	free(g->spool_dir);
	free(g->tls_name);
	free(g->user);
	if (g->password) {
		memset(g->password, 0, strlen(g->password));
		free(g->password);
	}
	free(g->rewrite_sender);
	free(g->postmaster);
	if (g->ssl)
		SSL_CTX_free(g->ssl);
	free(g);
}

/* ---- the busy table ----------------------------------------------------- */

static unsigned busy_hash(const char *qid)
{
	unsigned h = 2166136261u;
	for (size_t i = 0; i < QUEUE_ID_LEN; i++)
		h = (h ^ (unsigned char)qid[i]) * 16777619u;
	return h % BUSY_BUCKETS;
}

static struct busy *busy_find(struct deliver *d, const char *qid)
{
	for (struct busy *b = d->busy[busy_hash(qid)]; b; b = b->next)
		if (memcmp(b->qid, qid, QUEUE_ID_LEN) == 0)
			return b;
	return NULL;
}

static struct busy *busy_add(struct deliver *d, const char *qid)
{
	struct busy *b = calloc(1, sizeof *b);
	if (!b)
		return NULL;
	memcpy(b->qid, qid, QUEUE_ID_SIZE);
	unsigned h = busy_hash(qid);
	b->next = d->busy[h];
	d->busy[h] = b;
	d->nbusy++;
	return b;
}

static void busy_del(struct deliver *d, const char *qid);

/* Whether qid is taken; an expired cool-down ends here. */
static bool busy_is(struct deliver *d, const char *qid, uint64_t now)
{
	struct busy *b = busy_find(d, qid);
	if (!b)
		return false;
	if (b->cool_until && b->cool_until <= now && !b->job) {
		busy_del(d, qid);
		return false;
	}
	return true;
}

static void busy_del(struct deliver *d, const char *qid)
{
	for (struct busy **p = &d->busy[busy_hash(qid)]; *p; p = &(*p)->next) {
		if (memcmp((*p)->qid, qid, QUEUE_ID_LEN) == 0) {
			struct busy *b = *p;
			*p = b->next;
			free(b);
			d->nbusy--;
			return;
		}
	}
}

/* ---- time and rates ----------------------------------------------------- */

static int64_t wall_now(void)
{
	return (int64_t)time(NULL);
}

static double wall_now_f(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static int rate_init(struct rate *r, unsigned cap, uint64_t window_ms)
{
	free(r->t);
	memset(r, 0, sizeof *r);
	if (!cap)
		return 0;
	r->t = calloc(cap, sizeof *r->t);
	if (!r->t)
		return -ENOMEM;
	r->cap = cap;
	r->window_ms = window_ms;
	return 0;
}

/* 0 when a send may go now, else the ms until one may. */
static uint64_t rate_wait(const struct rate *r, uint64_t now)
{
	if (!r->cap || r->n < r->cap)
		return 0;
	uint64_t oldest = r->t[r->head];   /* ring full: head is the oldest */
	return oldest + r->window_ms > now ? oldest + r->window_ms - now : 0;
}

/* Sends that may still go in the current window (UINT_MAX: no cap). */
static unsigned rate_room(const struct rate *r, uint64_t now)
{
	if (!r->cap)
		return UINT_MAX;
	unsigned used = 0;
	for (unsigned i = 0; i < r->n; i++)
		if (r->t[(r->head + i) % r->cap] + r->window_ms > now)
			used++;
	return used < r->cap ? r->cap - used : 0;
}

static void rate_note(struct rate *r, uint64_t now)
{
	if (!r->cap)
		return;
	if (r->n < r->cap) {
		r->t[(r->head + r->n) % r->cap] = now;
		r->n++;
	} else {
		r->t[r->head] = now;
		r->head = (r->head + 1) % r->cap;
	}
}

/* ---- jobs --------------------------------------------------------------- */

static void job_free(struct deliver_job *j)
{
	if (!j)
		return;
	queue_msg_free(j->m);
	free(j->idx);
	free(j->rcpt);
	free(j->notify);
	free(j->orcpt);
	free(j->notify_txt);
	free(j->sender);
	free(j);
}

static bool rcpt_open(const struct queue_rcpt *r)
{
	return r->state == QUEUE_RCPT_PENDING || r->state == QUEUE_RCPT_DEFERRED;
}

static void notify_text(uint8_t bits, char out[32])
{
	out[0] = '\0';
	if (bits & QUEUE_NOTIFY_NEVER) {
		strcpy(out, "NEVER");
		return;
	}
	if (bits & QUEUE_NOTIFY_SUCCESS)
		strcat(out, "SUCCESS");
	if (bits & QUEUE_NOTIFY_FAILURE)
		strcat(out, out[0] ? ",FAILURE" : "FAILURE");
	if (bits & QUEUE_NOTIFY_DELAY)
		strcat(out, out[0] ? ",DELAY" : "DELAY");
}

/* A job for every open recipient of m (taken over). NULL: none open, or
 * out of memory (m freed). */
static struct deliver_job *job_new(struct deliver *d, struct queue_msg *m)
{
	struct deliver_job *j = calloc(1, sizeof *j);
	size_t n = 0;
	for (size_t i = 0; i < m->nrcpt; i++)
		n += rcpt_open(&m->rcpt[i]);
	if (!j || n == 0) {
		free(j);
		queue_msg_free(m);
		return NULL;
	}
	j->m = m;
	j->idx = calloc(n, sizeof *j->idx);
	j->rcpt = calloc(n, sizeof *j->rcpt);
	j->notify = calloc(n, sizeof *j->notify);
	j->orcpt = calloc(n, sizeof *j->orcpt);
	j->notify_txt = calloc(n, sizeof *j->notify_txt);
	if (!j->idx || !j->rcpt || !j->notify || !j->orcpt || !j->notify_txt ||
	    queue_body_path(d->cfg->spool_dir, m->qid, j->path, sizeof j->path)) {
		job_free(j);
		return NULL;
	}
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (!rcpt_open(r))
			continue;
		j->idx[j->n] = i;
		j->rcpt[j->n] = r->addr;
		j->orcpt[j->n] = r->orcpt;
		if (r->notify) {
			notify_text(r->notify, j->notify_txt[j->n]);
			j->notify[j->n] = j->notify_txt[j->n];
		}
		j->n++;
	}
	/* Null senders stay null: a bounce is never given an address to
	 * bounce back to. */
	if (m->sender[0] && d->cfg->rewrite_sender) {
		/* A copy: a SIGHUP may free the settings while j waits. */
		j->sender = strdup(d->cfg->rewrite_sender);
		if (!j->sender) {
			job_free(j);
			return NULL;
		}
	}
	j->cm.sender = j->sender ? j->sender : m->sender;
	j->cm.size = m->size;
	j->cm.body_8bit = m->flags & (QUEUE_F_8BITMIME | QUEUE_F_BINARYMIME);
	j->cm.body_7bit = m->flags & QUEUE_F_7BIT;
	j->cm.smtputf8 = m->flags & QUEUE_F_SMTPUTF8;
	j->cm.ret = (m->flags & QUEUE_F_RET_FULL) ? "FULL" :
	            (m->flags & QUEUE_F_RET_HDRS) ? "HDRS" : NULL;
	j->cm.envid = m->envid;
	j->cm.nrcpt = j->n;
	j->cm.rcpt = j->rcpt;
	j->cm.notify = j->notify;
	j->cm.orcpt = j->orcpt;
	j->t_ready = uv_now(d->loop);
	return j;
}

/* ---- index changes ------------------------------------------------------ */

struct change {
	struct deliver *d;
	char qid[QUEUE_ID_SIZE];
	bool removed;
	deliver_ctl_reply_fn reply;
	void *reply_arg;
	char ok_text[96];
};

static void change_cb(void *arg, int status)
{
	struct change *c = arg;
	struct deliver *d = c->d;
	struct busy *b = busy_find(d, c->qid);
	if (status && status != -ENOENT && b) {
		/* The index still says "due": without a pause, the message
		 * would be sent again at once, and again. */
		b->cool_until = uv_now(d->loop) + d->cfg->retry_min;
		b->job = NULL;
		b->in_session = false;
	} else {
		busy_del(d, c->qid);
	}
	d->inflight--;
	if (status == 0 && c->removed)
		log_info("%s: removed", c->qid);
	else if (status && status != -ENOENT)
		log_err("%s: cannot record the delivery state: %s (the message "
		        "will be retried)", c->qid, strerror(-status));
	if (c->reply) {
		char t[160];
		if (status == 0)
			snprintf(t, sizeof t, "ok %s", c->ok_text);
		else
			snprintf(t, sizeof t, "err %s: %s", c->qid,
			         status == -ENOENT ? "no such message" : strerror(-status));
		c->reply(c->reply_arg, t);
	}
	free(c);
	schedule(d);
	maybe_done(d);   /* last: it may free d */
}

/* Writes m back (or removes it when nothing is left); the message stays
 * busy until the change is durable. Takes a busy entry for qid if it has
 * none. */
static int record(struct deliver *d, const struct queue_msg *m, bool remove,
                  deliver_ctl_reply_fn reply, void *reply_arg,
                  const char *ok_text)
{
	struct change *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->d = d;
	memcpy(c->qid, m->qid, QUEUE_ID_SIZE);
	c->removed = remove || queue_msg_due(m) < 0;
	c->reply = reply;
	c->reply_arg = reply_arg;
	snprintf(c->ok_text, sizeof c->ok_text, "%s", ok_text ? ok_text : "");
	struct busy *b = busy_find(d, m->qid);
	if (!b && !(b = busy_add(d, m->qid))) {
		free(c);
		return -ENOMEM;
	}
	b->job = NULL;
	b->in_session = false;
	b->cool_until = 0;
	int r = c->removed ? queue_remove(d->q, m->qid, change_cb, c)
	                   : queue_update(d->q, m, change_cb, c);
	if (r) {
		b->cool_until = uv_now(d->loop) + d->cfg->retry_min;
		free(c);
		log_err("%s: cannot record the delivery state: %s", m->qid,
		        strerror(-r));
		return r;
	}
	d->inflight++;
	return 0;
}

/* ---- DSNs --------------------------------------------------------------- */

struct dsn_work {
	uv_work_t w;
	struct deliver *d;
	struct queue_msg *orig;      /* copy of the original's envelope */
	char to[320];                /* the DSN's recipient */
	bool delayed, headers_only;
	int64_t retry_until;
	size_t n;
	struct deliver_dsn_rcpt *rcpt;
	char **strs;                 /* owned strings of rcpt[] */
	size_t nstrs;
	char path[PATH_MAX];
	char newqid[QUEUE_ID_SIZE];
	char host[256];
	struct queue_body *body;
	int err;
	/* A failure report is durable before the original changes: the
	 * original's new state (after) is recorded only once the DSN is
	 * committed. If the DSN cannot be queued, the recipients it was
	 * about (after_idx) are deferred instead, so nothing is lost. */
	struct queue_msg *after;
	bool after_remove;
	size_t *after_idx, nafter;
	deliver_ctl_reply_fn reply;
	void *reply_arg;
	char ok_text[96];
};

static void settle_after(struct deliver *d, struct dsn_work *w, bool dsn_ok);

static void dsn_work_free(struct dsn_work *w)
{
	queue_msg_free(w->after);
	free(w->after_idx);
	for (size_t i = 0; i < w->nstrs; i++)
		free(w->strs[i]);
	free(w->strs);
	free(w->rcpt);
	queue_msg_free(w->orig);
	free(w);
}

/* On a pool thread: composes the DSN into its body file, reading the
 * original as it goes (never whole in memory). */
static void dsn_compose(uv_work_t *req)
{
	struct dsn_work *w = req->data;
	char msgid[QUEUE_ID_SIZE + 300], boundary[320];
	snprintf(msgid, sizeof msgid, "<%s@%s>", w->newqid, w->orig->qid[0] ?
	         w->host : "localhost");
	snprintf(boundary, sizeof boundary, "%s.%" PRId64 "/%s", w->orig->qid,
	         (int64_t)time(NULL), w->host);
	struct deliver_dsn dsn = {
		.reporting_mta = w->host,
		.qid = w->orig->qid,
		.envid = w->orig->envid,
		.sender = w->to,
		.message_id = msgid,
		.boundary = boundary,
		.arrival = w->orig->arrival,
		.now = (int64_t)time(NULL),
		.delayed = w->delayed,
		.retry_until = w->retry_until,
		.headers_only = w->headers_only,
		.utf8 = w->orig->flags & (QUEUE_F_SMTPUTF8 | QUEUE_F_8BITMIME),
		.global = w->orig->flags & QUEUE_F_SMTPUTF8,
		.nrcpt = w->n,
		.rcpt = w->rcpt,
	};
	struct buf out;
	buf_init(&out, 4 * DSN_CHUNK);
	int r = deliver_dsn_head(&dsn, &out);
	if (r == 0)
		r = queue_body_write(w->body, out.data, out.len);
	buf_reset(&out);

	struct deliver_dsn_orig o;
	deliver_dsn_orig_init(&o, w->headers_only);
	int fd = r == 0 ? open(w->path, O_RDONLY | O_CLOEXEC) : -1;
	if (r == 0 && fd < 0)
		r = -errno;
	uint8_t *chunk = r == 0 ? malloc(DSN_CHUNK) : NULL;
	if (r == 0 && !chunk)
		r = -ENOMEM;
	while (r == 0) {
		ssize_t n = read(fd, chunk, DSN_CHUNK);
		if (n < 0) {
			r = -errno;
			break;
		}
		if (n == 0)
			break;
		int f = deliver_dsn_orig_feed(&o, chunk, (size_t)n, &out);
		if (f < 0) {
			r = f;
			break;
		}
		r = queue_body_write(w->body, out.data, out.len);
		buf_reset(&out);
		if (f == 1)
			break;
	}
	free(chunk);
	if (fd >= 0)
		close(fd);
	if (r == 0)
		r = deliver_dsn_tail(&dsn, &o, &out);
	if (r == 0)
		r = queue_body_write(w->body, out.data, out.len);
	buf_free(&out);
	w->err = r;
}

static bool is_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return false;
	return true;
}

static void dsn_committed(void *arg, int status)
{
	struct dsn_work *w = arg;
	struct deliver *d = w->d;
	d->inflight--;
	if (status == 0) {
		d->n_dsn++;
		log_info("%s: sender %s notification: %s", w->orig->qid,
		         w->delayed ? "delay" : "non-delivery", w->newqid);
	} else {
		log_err("%s: the %s notification could not be queued: %s",
		        w->orig->qid, w->delayed ? "delay" : "non-delivery",
		        strerror(-status));
	}
	settle_after(d, w, status == 0);
	dsn_work_free(w);
	maybe_done(d);
}

static void dsn_composed(uv_work_t *req, int status)
{
	struct dsn_work *w = req->data;
	struct deliver *d = w->d;
	if (status == 0 && w->err == 0) {
		struct queue_rcpt rc = {.addr = w->to};
		/* The report's own needs, not the original's flags (issue 8
		 * §10): SMTPUTF8 only for a recipient (its envelope and its
		 * To:) that is not ASCII - UTF-8 in the report's body parts is
		 * RFC 6533's message/global*, which needs none (RFC 6532
		 * §3.7); BODY=8BITMIME only when its content is 8-bit. Copying
		 * the original's SMTPUTF8 made a bounce for an ASCII sender
		 * fail at a smarthost without SMTPUTF8, and nobody heard. */
		uint8_t flags = 0;
		if (!is_ascii(w->to))
			flags |= QUEUE_F_SMTPUTF8;
		if (queue_body_8bit(w->body))
			flags |= QUEUE_F_8BITMIME;
		struct queue_msg m = {
			.arrival = wall_now(),
			.state = QUEUE_MSG_ACTIVE,
			.flags = flags,
			.sender = "",
			.nrcpt = 1,
			.rcpt = &rc,
		};
		memcpy(m.qid, w->newqid, QUEUE_ID_SIZE);
		int r = queue_commit(d->q, w->body, &m, dsn_committed, w);
		if (r == 0)
			return;   /* dsn_committed runs */
		w->err = r;
	} else {
		queue_body_abort(w->body);
		if (w->err == 0)
			w->err = status;
	}
	log_err("%s: the %s notification could not be written: %s",
	        w->orig->qid, w->delayed ? "delay" : "non-delivery",
	        strerror(-w->err));
	d->inflight--;
	settle_after(d, w, false);
	dsn_work_free(w);
	maybe_done(d);
}

static char *keep(struct dsn_work *w, const char *s)
{
	if (!s)
		return NULL;
	char *c = strdup(s);
	if (c)
		w->strs[w->nstrs++] = c;
	return c;
}

/*
 * Queues one DSN about m for the recipients in which[] (n of them, with
 * their action and status). To the envelope sender; for a null sender, to
 * the postmaster when one is configured and the message was not already
 * for the postmaster; otherwise it is dropped with a log line. Never loops:
 * a DSN has the null sender itself.
 */
struct dsn_item {
	size_t i;              /* recipient index in m */
	char status[16];       /* "5.1.1" */
	const char *reason;    /* our words, or NULL */
	bool remote;           /* last_reply came from the smarthost */
};

/* The original's new state, once its failure report is durable (or
 * could not be made: then the recipients it was about are deferred). */
static void settle_after(struct deliver *d, struct dsn_work *w, bool dsn_ok)
{
	struct queue_msg *m = w->after;
	if (!m)
		return;
	w->after = NULL;
	deliver_ctl_reply_fn reply = w->reply;
	void *arg = w->reply_arg;
	bool remove = w->after_remove;
	if (!dsn_ok) {
		int64_t next = wall_now() + (int64_t)(d->cfg->retry_min / 1000);
		for (size_t k = 0; k < w->nafter; k++) {
			struct queue_rcpt *r = &m->rcpt[w->after_idx[k]];
			r->state = QUEUE_RCPT_DEFERRED;
			r->next_attempt = next > wall_now() ? next : wall_now() + 1;
		}
		remove = false;
		if (reply) {
			char t[160];
			snprintf(t, sizeof t, "err %s: the bounce could not be "
			         "queued; the message stays", m->qid);
			reply(arg, t);
			reply = NULL;
		}
	}
	if (record(d, m, remove, reply, arg, w->ok_text) && reply) {
		char t[160];
		snprintf(t, sizeof t, "err %s: cannot record the change", m->qid);
		reply(arg, t);
	}
	queue_msg_free(m);
}

/*
 * Queues one DSN about m for the recipients in items[]. To the envelope
 * sender; for a null sender, to the postmaster when one is configured and
 * the message was not already for the postmaster; otherwise there is none
 * (a log line says so). Never loops: a DSN has the null sender itself.
 *
 * after (owned, may be NULL): m's new state, recorded (or removed, with
 * remove) only once the DSN is committed, then reply(arg, "ok ok_text").
 */
static void send_dsn(struct deliver *d, const struct queue_msg *m,
                     const struct dsn_item *items, size_t n, bool delayed,
                     int64_t retry_until, struct queue_msg *after,
                     bool remove, deliver_ctl_reply_fn reply, void *reply_arg,
                     const char *ok_text)
{
	const char *to = m->sender;
	struct dsn_work *w = calloc(1, sizeof *w);
	if (!w) {
		log_err("%s: no notification: out of memory", m->qid);
		if (after) {   /* stays as it is in the index */
			busy_del(d, after->qid);
			queue_msg_free(after);
		}
		if (reply)
			reply(reply_arg, "err out of memory");
		return;
	}
	w->d = d;
	w->after = after;
	w->after_remove = remove;
	w->reply = reply;
	w->reply_arg = reply_arg;
	snprintf(w->ok_text, sizeof w->ok_text, "%s", ok_text ? ok_text : "");
	w->after_idx = calloc(n ? n : 1, sizeof *w->after_idx);
	if (!w->after_idx)
		goto fail;
	for (size_t k = 0; k < n; k++)
		w->after_idx[k] = items[k].i;
	w->nafter = n;
	if (!to[0]) {
		bool for_pm = false;
		for (size_t k = 0; k < m->nrcpt && d->cfg->postmaster; k++)
			for_pm |= strcasecmp(m->rcpt[k].addr, d->cfg->postmaster) == 0;
		if (delayed) {
			/* RFC 3461 §6.2: no warnings about a bounce. */
			log_info("%s: no delay notification: the sender is <>",
			         m->qid);
			settle_after(d, w, true);
			dsn_work_free(w);
			return;
		}
		if (!d->cfg->postmaster || for_pm) {
			/* A bounce (or other null-sender mail) that failed, and
			 * nobody left to tell: the failure is final and lost. */
			d->n_dsn_dropped++;
			log_err("%s: non-delivery notification dropped: the sender "
			        "is <> and %s", m->qid, for_pm
			        ? "it was for the postmaster already"
			        : "no postmaster is configured");
			settle_after(d, w, true);
			dsn_work_free(w);
			return;
		}
		to = d->cfg->postmaster;
	}
	w->w.data = w;
	w->delayed = delayed;
	w->retry_until = retry_until;
	/* RFC 3461 §4.3: RET=FULL asks for the whole message; without RET we
	 * return the headers, as for RET=HDRS. */
	w->headers_only = !(m->flags & QUEUE_F_RET_FULL);
	/* A message refused for its 8-bit content (5.6.3) comes back as
	 * its header section: whole, the report would carry the same 8-bit
	 * body to the same smarthost and fail the same way. */
	for (size_t k = 0; k < n; k++)
		if (strcmp(items[k].status,
		           smtp_replies[SMTP_R_DLV_NO_8BIT].enh) == 0)
			w->headers_only = true;
	snprintf(w->to, sizeof w->to, "%s", to);
	snprintf(w->host, sizeof w->host, "%s", d->cfg->hostname);
	w->orig = queue_msg_dup(m);
	w->rcpt = calloc(n, sizeof *w->rcpt);
	w->strs = calloc(n * 4, sizeof *w->strs);
	if (!w->orig || !w->rcpt || !w->strs ||
	    queue_body_path(d->cfg->spool_dir, m->qid, w->path, sizeof w->path))
		goto fail;
	for (size_t k = 0; k < n; k++) {
		const struct queue_rcpt *r = &w->orig->rcpt[items[k].i];
		struct deliver_dsn_rcpt *o = &w->rcpt[k];
		o->addr = r->addr;
		o->orcpt = r->orcpt;
		o->action = delayed ? DELIVER_DSN_DELAYED : DELIVER_DSN_FAILED;
		o->status = keep(w, items[k].status);
		/* A copy: the settings may change (SIGHUP) while the report
		 * is composed on a pool thread. */
		o->remote_mta = items[k].remote ? keep(w, d->cfg->host) : NULL;
		o->diag = items[k].remote ? r->last_reply : NULL;
		o->reason = keep(w, items[k].reason ? items[k].reason :
		                 (!items[k].remote ? r->last_reply : NULL));
		o->last_attempt = r->attempts ? wall_now() : 0;
	}
	w->n = n;
	queue_new_id(d->q, w->newqid);
	int r = queue_body_open(d->q, w->newqid, &w->body);
	if (r) {
		log_err("%s: cannot queue a notification: %s", m->qid, strerror(-r));
		goto fail;
	}
	r = uv_queue_work(d->loop, &w->w, dsn_compose, dsn_composed);
	if (r < 0) {
		queue_body_abort(w->body);
		log_err("%s: cannot queue a notification: %s", m->qid, uv_strerror(r));
		goto fail;
	}
	d->inflight++;
	return;
fail:
	settle_after(d, w, false);
	dsn_work_free(w);
}

static bool wants(const struct queue_rcpt *r, uint8_t bit)
{
	if (r->notify & QUEUE_NOTIFY_NEVER)
		return false;
	/* No NOTIFY: failures, and delays when delay warnings are on (as
	 * Postfix does with delay_warning_time). */
	return r->notify == 0 || (r->notify & bit);
}

/* ---- results ------------------------------------------------------------ */

static int reply_code(const struct deliver_reply *r)
{
	if (r->code)
		return r->code;
	/* Our own refusal texts start with a code ("553 5.6.7 ..."). */
	if (r->text[0] >= '2' && r->text[0] <= '5' && r->text[1] >= '0' &&
	    r->text[1] <= '9' && r->text[2] >= '0' && r->text[2] <= '9' &&
	    r->text[3] == ' ')
		return (r->text[0] - '0') * 100 + (r->text[1] - '0') * 10 +
		       (r->text[2] - '0');
	return 0;   /* a local, temporary failure */
}

static double rnd01(void)
{
	return (double)(random() % 1000000) / 1000000.0;
}

static void set_reply(struct queue_rcpt *r, const char *text)
{
	char *t = strdup(text);
	if (!t)
		return;   /* keep the old one */
	free(r->last_reply);
	r->last_reply = t;
}

/* The log line of one recipient, in Postfix's shape. */
static void log_result(const struct queue_msg *m, const struct queue_rcpt *r,
                       const char *relay, const struct deliver_times *t,
                       const char *dsn, const char *status, const char *text)
{
	char esc[DELIVER_REPLY_TEXT_MAX * 4 + 16], to[1024];
	double delay = wall_now_f() - (double)m->arrival;
	if (delay < 0)
		delay = 0;
	double conn = t ? t->conn_ms / 1000.0 : 0, xfer = t ? t->xfer_ms / 1000.0 : 0;
	double queued = delay - conn - xfer;
	log_escape(to, sizeof to, r->addr, strlen(r->addr));
	log_escape(esc, sizeof esc, text, strlen(text));
	log_info("%s: to=<%s>, relay=%s, delay=%.2f, delays=%.2f/%.2f/%.2f, "
	         "dsn=%s, status=%s (%s)", m->qid, to, relay ? relay : "none",
	         delay, queued < 0 ? 0 : queued, conn, xfer, dsn, status, esc);
}

/* Seconds since arrival, never negative (the wall clock may step back). */
static uint64_t age_ms(const struct queue_msg *m, int64_t now)
{
	return now > m->arrival ? (uint64_t)(now - m->arrival) * 1000 : 0;
}

/*
 * Applies one attempt's outcome to job j's message: results[k] for
 * recipient j->idx[k]. temp: the attempt failed as a whole (session,
 * TLS, AUTH, shutdown of the route): every recipient is deferred whatever
 * the reply says. A "delayed" DSN goes out here; the failure report's
 * items are returned in *fail (the caller records the message after the
 * report is durable: settle()).
 */
static void finish(struct deliver *d, struct deliver_job *j,
                   const struct deliver_reply *const *results,
                   const char *relay, const struct deliver_times *t,
                   bool temp, struct dsn_item *fail, size_t *nfail)
{
	struct queue_msg *m = j->m;
	struct deliver_cfg *g = d->cfg;
	int64_t now = wall_now();
	bool expired = age_ms(m, now) >= g->lifetime;
	struct dsn_item *late = calloc(j->n ? j->n : 1, sizeof *late);
	size_t nlate = 0;
	char st[16];

	*nfail = 0;
	for (size_t k = 0; k < j->n; k++) {
		struct queue_rcpt *r = &m->rcpt[j->idx[k]];
		const struct deliver_reply *rep = results[k];
		int code = temp ? 0 : reply_code(rep);
		struct deliver_reply local;
		if (!temp && rep->code == 0 && code) {
			/* Our own refusal ("553 5.6.7 ..."): its code counts. */
			local = *rep;
			local.code = code;
			rep = &local;
		}
		r->attempts++;
		set_reply(r, rep->text);
		deliver_reply_status(rep, st);
		if (temp || (code >= 400 && code < 500) || code == 0)
			if (st[0] != '4')
				snprintf(st, sizeof st, "4.0.0");
		if (code >= 200 && code < 300) {
			r->state = QUEUE_RCPT_SENT;
			d->n_sent++;
			log_result(m, r, relay, t, st, "sent", rep->text);
		} else if (code >= 500 || expired) {
			r->state = QUEUE_RCPT_BOUNCED;
			d->n_bounced++;
			const char *status = code >= 500 ? st : "4.4.7";
			char why[DELIVER_REPLY_TEXT_MAX + 80];
			if (code >= 500)
				snprintf(why, sizeof why, "%s", rep->text);
			else
				snprintf(why, sizeof why, "message expired after %" PRIu64
				         " s in the queue; last reply: %s",
				         age_ms(m, now) / 1000, rep->text);
			log_result(m, r, relay, t, status, "bounced", why);
			if (wants(r, QUEUE_NOTIFY_FAILURE)) {
				struct dsn_item *it = &fail[(*nfail)++];
				it->i = j->idx[k];
				snprintf(it->status, sizeof it->status, "%s", status);
				it->reason = code >= 500 ? NULL :
				             "the message expired in the queue";
				it->remote = !temp && code;
			}
		} else {
			r->state = QUEUE_RCPT_DEFERRED;
			d->n_deferred++;
			uint64_t wait = deliver_backoff(g->retry_min, g->retry_max,
			                                r->attempts, rnd01());
			int64_t next = now + (int64_t)((wait + 999) / 1000);
			if (d->paused && d->pause_until_wall > next)
				next = d->pause_until_wall;
			/* Never past the lifetime, nor past the delay warning. */
			int64_t end = m->arrival + (int64_t)(g->lifetime / 1000);
			if (next > end)
				next = end;
			if (g->warn_after && !(m->flags & QUEUE_F_WARNED)) {
				int64_t w = m->arrival + (int64_t)(g->warn_after / 1000);
				if (w > now && next > w)
					next = w;
			}
			if (next <= now)
				next = now + 1;
			r->next_attempt = next;
			log_result(m, r, relay, t, st, "deferred", rep->text);
			if (late && g->warn_after && !(m->flags & QUEUE_F_WARNED) &&
			    age_ms(m, now) >= g->warn_after &&
			    wants(r, QUEUE_NOTIFY_DELAY)) {
				late[nlate].i = j->idx[k];
				snprintf(late[nlate].status, sizeof late[nlate].status,
				         "%s", st);
				late[nlate].remote = !temp && code;
				nlate++;
			}
		}
	}
	if (nlate) {
		m->flags |= QUEUE_F_WARNED;
		send_dsn(d, m, late, nlate, true,
		         m->arrival + (int64_t)(g->lifetime / 1000), NULL, false,
		         NULL, NULL, NULL);
	} else if (g->warn_after && age_ms(m, now) >= g->warn_after) {
		m->flags |= QUEUE_F_WARNED;   /* nobody wanted one */
	}
	free(late);
}

/* Records m (owned) - or removes it - after the failure report about
 * fail[] is durable, then answers reply(arg, "ok ok_text"). */
static void settle(struct deliver *d, struct queue_msg *m, bool remove,
                   const struct dsn_item *fail, size_t nfail,
                   deliver_ctl_reply_fn reply, void *arg, const char *ok_text)
{
	/* Busy until the change is durable: the schedule still has it. */
	struct busy *b = busy_find(d, m->qid);
	if (!b)
		b = busy_add(d, m->qid);
	if (b) {
		b->job = NULL;          /* an index change is on its way */
		b->in_session = false;
	}
	if (nfail) {
		send_dsn(d, m, fail, nfail, false, 0, m, remove, reply, arg,
		         ok_text);
		return;
	}
	if (record(d, m, remove, reply, arg, ok_text) && reply) {
		char t[160];
		snprintf(t, sizeof t, "err %s: cannot record the change", m->qid);
		reply(arg, t);
	}
	queue_msg_free(m);
}

/* relayctl bounce: every open recipient of m fails now; appended to
 * fail[] (room for m->nrcpt). */
static void fail_open(struct deliver *d, struct queue_msg *m, const char *why,
                      struct dsn_item *fail, size_t *nfail)
{
	for (size_t i = 0; i < m->nrcpt; i++) {
		struct queue_rcpt *r = &m->rcpt[i];
		if (!rcpt_open(r))
			continue;
		r->state = QUEUE_RCPT_BOUNCED;
		set_reply(r, why);
		d->n_bounced++;
		log_result(m, r, NULL, NULL, "5.0.0", "bounced", why);
		if (wants(r, QUEUE_NOTIFY_FAILURE)) {
			struct dsn_item *it = &fail[(*nfail)++];
			it->i = i;
			snprintf(it->status, sizeof it->status, "5.0.0");
			it->reason = why;
			it->remote = false;
		}
	}
}

/* The end of a job: operator actions that waited for it (hold, delete,
 * bounce), then the record. fail[] has room for m->nrcpt items. */
static void job_end(struct deliver *d, struct deliver_job *j,
                    struct dsn_item *fail, size_t nfail)
{
	struct queue_msg *m = j->m;
	j->m = NULL;
	bool remove = false;
	if (j->pend & DELIVER_PEND_DELETE) {
		remove = true;
		nfail = 0;   /* deleted by the operator: silently */
	} else {
		if (j->pend & DELIVER_PEND_BOUNCE) {
			fail_open(d, m, "bounced by the operator", fail, &nfail);
			remove = true;
		}
		if (j->pend & DELIVER_PEND_HOLD)
			m->state = QUEUE_MSG_HOLD;
	}
	settle(d, m, remove, fail, nfail, NULL, NULL, NULL);
	job_free(j);
}

void deliver_job_done(struct deliver *d, struct deliver_job *j,
                      const struct deliver_reply *const *results,
                      const char *relay, const struct deliver_times *t)
{
	struct dsn_item *fail = calloc(j->m->nrcpt ? j->m->nrcpt : 1,
	                               sizeof *fail);
	size_t nfail = 0;
	if (!fail) {
		busy_del(d, j->m->qid);   /* retried: a duplicate, not a loss */
		job_free(j);
		return;
	}
	d->n_attempts++;
	finish(d, j, results, relay, t, false, fail, &nfail);
	job_end(d, j, fail, nfail);
	free(fail);
}

void deliver_job_failed(struct deliver *d, struct deliver_job *j,
                        const struct deliver_reply *r, const char *relay)
{
	struct dsn_item *fail = calloc(j->m->nrcpt ? j->m->nrcpt : 1,
	                               sizeof *fail);
	size_t nfail = 0;
	if (!fail) {
		busy_del(d, j->m->qid);
		job_free(j);
		return;
	}
	if (d->stopping) {
		/* Shutdown cut the attempt off: the message stays as it is in
		 * the index and is tried first thing after the restart (if the
		 * smarthost had taken it already, that is a duplicate, never a
		 * loss) - unless the operator acted on it meanwhile: that was
		 * acknowledged and is recorded now. */
		if (j->pend)
			job_end(d, j, fail, 0);
		else {
			busy_del(d, j->m->qid);
			job_free(j);
		}
		free(fail);
		return;
	}
	/* Whatever went wrong with the session is temporary for every
	 * recipient, whatever its code (never a bounce, nor a "sent", for a
	 * connection, TLS or AUTH problem or an unexpected reply). */
	const struct deliver_reply **res = calloc(j->n ? j->n : 1, sizeof *res);
	if (!res) {
		busy_del(d, j->m->qid);
		job_free(j);
		free(fail);
		return;
	}
	for (size_t k = 0; k < j->n; k++)
		res[k] = r;
	d->n_attempts++;
	finish(d, j, res, relay, NULL, true, fail, &nfail);
	free(res);
	job_end(d, j, fail, nfail);
	free(fail);
}

/* ---- sessions and the route --------------------------------------------- */

struct deliver_job *deliver_take_job(struct deliver *d)
{
	if (d->stopping || d->paused || !d->ready)
		return NULL;
	uint64_t now = uv_now(d->loop);
	if (rate_wait(&d->rate_min, now) || rate_wait(&d->rate_hour, now)) {
		schedule(d);   /* arms the timer for when one may go */
		return NULL;
	}
	struct deliver_job *j = d->ready;
	d->ready = j->next;
	if (!d->ready)
		d->ready_tail = &d->ready;
	d->nready--;
	j->next = NULL;
	struct busy *b = busy_find(d, j->m->qid);
	if (b)
		b->in_session = true;
	rate_note(&d->rate_min, now);
	rate_note(&d->rate_hour, now);
	return j;
}

/* ---- the smarthost's SIZE ---------------------------------------------- */

/* spool_dir/smarthost.size: "HOST:PORT BYTES\n", the SIZE the smarthost
 * named in its last EHLO. A cache, not state: written with a rename but
 * no fsync (a crash loses at most the last change, and the first session
 * after the restart learns it again); it names the smarthost so that a
 * new one is not judged by the old one's limit. */
#define SIZE_FILE "smarthost.size"
#define SIZE_FILE_TMP ".smarthost.size.tmp"

static void size_name(const struct deliver_cfg *g, char *out, size_t n)
{
	snprintf(out, n, "%s:%u", g->host, g->port);
}

static uint64_t size_cap(const struct deliver *d)
{
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST || d->sh_size == 0)
		return 0;
	/* A SIZE too small for the headroom: half of it, still a limit. */
	if (d->sh_size <= 2 * (uint64_t)DELIVER_SIZE_HEADROOM)
		return d->sh_size / 2 ? d->sh_size / 2 : 1;
	return d->sh_size - DELIVER_SIZE_HEADROOM;
}

static void size_notify(struct deliver *d)
{
	if (d->size_cb)
		d->size_cb(d->size_arg, size_cap(d));
}

/* At start and SIGHUP (the loop is not serving yet, or the read is one
 * small file): the smarthost's SIZE as last seen, if it is this one's. */
static void size_load(struct deliver *d)
{
	char path[PATH_MAX], name[300], want[300];
	unsigned long long v = 0;
	d->sh_size = 0;
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST)
		return;
	snprintf(path, sizeof path, "%s/%s", d->cfg->spool_dir, SIZE_FILE);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return;
	FILE *f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return;
	}
	size_name(d->cfg, want, sizeof want);
	if (fscanf(f, "%299s %llu", name, &v) == 2 && strcmp(name, want) == 0)
		d->sh_size = v;
	fclose(f);
	if (d->sh_size)
		log_info("smarthost %s: SIZE %" PRIu64 " as last seen; clients "
		         "are offered SIZE %" PRIu64, want, d->sh_size, size_cap(d));
}

struct size_store {
	uv_work_t w;
	struct deliver *d;
	char dir[PATH_MAX];
	char line[340];
	int err;
};

static void size_store_work(uv_work_t *req)
{
	struct size_store *st = req->data;
	int dfd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		st->err = -errno;
		return;
	}
	int fd = openat(dfd, SIZE_FILE_TMP, O_WRONLY | O_CREAT | O_TRUNC |
	                O_NOFOLLOW | O_CLOEXEC, 0600);
	size_t n = strlen(st->line);
	if (fd < 0 || write(fd, st->line, n) != (ssize_t)n)
		st->err = -errno;
	if (fd >= 0 && close(fd) < 0 && !st->err)
		st->err = -errno;
	if (!st->err && renameat(dfd, SIZE_FILE_TMP, dfd, SIZE_FILE) < 0)
		st->err = -errno;
	if (st->err)
		unlinkat(dfd, SIZE_FILE_TMP, 0);
	close(dfd);
}

static void size_store(struct deliver *d);

static void size_stored(uv_work_t *req, int status)
{
	struct size_store *st = req->data;
	struct deliver *d = st->d;
	if (status == 0 && st->err)
		log_warn("cannot keep the smarthost's SIZE in %s/%s: %s", st->dir,
		         SIZE_FILE, strerror(-st->err));
	d->inflight--;
	d->size_storing = false;
	free(st);
	if (d->size_dirty && !d->stopping)
		size_store(d);
	maybe_done(d);
}

static void size_store(struct deliver *d)
{
	if (d->size_storing) {
		d->size_dirty = true;
		return;
	}
	d->size_dirty = false;
	struct size_store *st = calloc(1, sizeof *st);
	if (!st)
		return;   /* a cache: the next session tries again */
	char name[300];
	size_name(d->cfg, name, sizeof name);
	st->w.data = st;
	st->d = d;
	snprintf(st->dir, sizeof st->dir, "%s", d->cfg->spool_dir);
	snprintf(st->line, sizeof st->line, "%s %" PRIu64 "\n", name, d->sh_size);
	if (uv_queue_work(d->loop, &st->w, size_store_work, size_stored) < 0) {
		free(st);
		return;
	}
	d->size_storing = true;
	d->inflight++;
}

/* A session's EHLO named size (0: none): the new limit, if it changed. */
static void size_learn(struct deliver *d, uint64_t size)
{
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST)
		return;
	char name[300];
	size_name(d->cfg, name, sizeof name);
	/* A SIZE below any real provider's (a misconfiguration, or a
	 * man in the middle of smarthost_tls = none) would make relayd
	 * refuse every message, and with nothing queued no session would
	 * ever learn a corrected one: not taken, not kept. */
	if (size && size < DELIVER_SIZE_FLOOR) {
		log_warn("smarthost %s: SIZE %" PRIu64 " is below %u bytes; "
		         "ignored", name, size, DELIVER_SIZE_FLOOR);
		return;
	}
	if (size == d->sh_size)
		return;
	d->sh_size = size;
	if (size)
		log_info("smarthost %s: SIZE %" PRIu64 "; clients are offered "
		         "SIZE %" PRIu64 " at most", name, size, size_cap(d));
	else
		log_info("smarthost %s: no SIZE limit; clients are offered "
		         "max_message_size", name);
	size_notify(d);
	size_store(d);
}

void deliver_set_size_cb(struct deliver *d, deliver_size_cb cb, void *arg)
{
	d->size_cb = cb;
	d->size_arg = arg;
	size_notify(d);
}

void deliver_session_up(struct deliver *d, struct deliver_session *s,
                        uint64_t size)
{
	/* Every session's EHLO counts, a probe's too: the provider may
	 * change its limit at any time. Not one to a smarthost replaced by
	 * a SIGHUP since it started. */
	char name[300];
	size_name(d->cfg, name, sizeof name);
	for (struct snode *n = d->sessions; n; n = n->next)
		if (n->s == s && !n->up) {
			n->up = true;
			d->nconnecting--;
			if (strcmp(n->name, name) == 0)
				size_learn(d, size);
		}
	if (d->paused)
		return;   /* started before the pause: proves nothing */
	if (d->route_fails || d->probing)
		log_info("smarthost %s:%u: delivering again", d->cfg->host,
		         d->cfg->port);
	d->route_fails = 0;
	d->probing = false;
	d->route_reason[0] = '\0';
	/* No schedule() here: the session takes a job right after this, and
	 * other sessions may start once it did (a probe is over now). */
	arm(d, 0);
}

/* Puts the ready jobs back (they stay in the schedule; busy ends). */
static void drop_ready(struct deliver *d)
{
	while (d->ready) {
		struct deliver_job *j = d->ready;
		d->ready = j->next;
		busy_del(d, j->m->qid);
		job_free(j);
	}
	d->ready_tail = &d->ready;
	d->nready = 0;
}

static void route_pause(struct deliver *d, bool auth, const char *why)
{
	struct deliver_cfg *g = d->cfg;
	d->route_fails++;
	uint64_t ms = deliver_backoff(g->retry_min, g->retry_max, d->route_fails,
	                              rnd01());
	d->paused = true;
	d->pause_until = uv_now(d->loop) + ms;
	d->pause_until_wall = wall_now() + (int64_t)((ms + 999) / 1000);
	snprintf(d->route_reason, sizeof d->route_reason, "%s%s",
	         auth ? "authentication failed: " : "", why);
	char esc[sizeof d->route_reason * 4];
	log_escape(esc, sizeof esc, d->route_reason, strlen(d->route_reason));
	if (auth)
		log_err("smarthost %s:%u: AUTH as %s refused; delivery paused for "
		        "%.0f s: %s", g->host, g->port, g->user ? g->user : "?",
		        ms / 1000.0, esc);
	else
		log_warn("smarthost %s:%u: delivery paused for %.0f s: %s",
		         g->host, g->port, ms / 1000.0, esc);
	/* As Postfix does for a dead destination: the messages waiting for
	 * this route are deferred now with the reason, so that `relayctl
	 * list` says why they wait and each one's backoff grows. */
	struct deliver_reply r = {0, ""};
	snprintf(r.text, sizeof r.text, "delivery temporarily suspended: %s",
	         d->route_reason);
	while (d->ready) {
		struct deliver_job *j = d->ready;
		d->ready = j->next;
		d->nready--;
		j->next = NULL;
		if (!d->ready)
			d->ready_tail = &d->ready;
		deliver_job_failed(d, j, &r, NULL);
	}
}

void deliver_session_gone(struct deliver *d, struct deliver_session *s,
                          bool route_fail, bool auth_fail,
                          const struct deliver_reply *r)
{
	for (struct snode **p = &d->sessions; *p; p = &(*p)->next) {
		if ((*p)->s != s)
			continue;
		struct snode *n = *p;
		if (!n->up)
			d->nconnecting--;
		*p = n->next;
		free(n);
		d->nsessions--;
		break;
	}
	if (route_fail && !d->stopping && !d->paused)
		route_pause(d, auth_fail, r ? r->text : "session failed");
	schedule(d);
	maybe_done(d);   /* last: it may free d */
}

static int start_session(struct deliver *d)
{
	struct snode *n = calloc(1, sizeof *n);
	if (!n)
		return -ENOMEM;
	size_name(d->cfg, n->name, sizeof n->name);
	int r = deliver_session_new(d, d->cfg, d->loop, &n->s);
	if (r) {
		log_err("smarthost: cannot start a session: %s", strerror(-r));
		free(n);
		return r;
	}
	n->next = d->sessions;
	d->sessions = n;
	d->nsessions++;
	d->nconnecting++;
	return 0;
}

/* ---- the schedule ------------------------------------------------------- */

/* Takes a due message into the ready list, or settles it without an
 * attempt (expired). */
static void load(struct deliver *d, const char *qid)
{
	struct queue_msg *m;
	int r = queue_get(d->q, qid, &m);
	if (r) {
		if (r != -ENOENT)
			log_err("%s: cannot load: %s", qid, strerror(-r));
		return;
	}
	if (m->state != QUEUE_MSG_ACTIVE) {
		queue_msg_free(m);
		return;
	}
	struct busy *b = busy_add(d, qid);
	if (!b) {
		queue_msg_free(m);
		return;
	}
	struct deliver_job *j = job_new(d, m);
	if (!j) {
		busy_del(d, qid);
		return;
	}
	b->job = j;
	*d->ready_tail = j;
	d->ready_tail = &j->next;
	d->nready++;
}

struct scan {
	struct deliver *d;
	char (*ids)[QUEUE_ID_SIZE];
	size_t n, want, visited, max_visit;
};

static int scan_cb(void *arg, const char *qid, int64_t due)
{
	(void)due;
	struct scan *s = arg;
	if (++s->visited > s->max_visit)
		return 1;
	if (busy_is(s->d, qid, uv_now(s->d->loop)))
		return 0;
	memcpy(s->ids[s->n++], qid, QUEUE_ID_SIZE);
	return s->n >= s->want;
}

static void timer_cb(uv_timer_t *t)
{
	schedule(t->data);
}

static void arm(struct deliver *d, uint64_t ms)
{
	if (d->stopping || !d->timer_inited)
		return;
	uint64_t due = uv_now(d->loop) + ms;
	if (uv_is_active((uv_handle_t *)&d->timer) &&
	    uv_timer_get_due_in(&d->timer) <= ms)
		return;
	(void)due;
	uv_timer_start(&d->timer, timer_cb, ms, 0);
}

static void schedule(struct deliver *d)
{
	struct deliver_cfg *g = d->cfg;
	if (d->stopping || g->mode != CONF_DELIVERY_SMARTHOST)
		return;
	/* Not before startup recovery has made the index consistent: a
	 * schedule entry may still name a record without its body. The
	 * queue's notify callback calls us again when it has. */
	if (!queue_recovered(d->q))
		return;
	uint64_t nowms = uv_now(d->loop);
	if (d->paused) {
		if (nowms < d->pause_until) {
			arm(d, d->pause_until - nowms);
			return;
		}
		d->paused = false;
		d->probing = true;
		log_info("smarthost %s:%u: trying again", g->host, g->port);
	}

	/* Fill the ready list: flushed messages first, then the schedule. */
	unsigned slots = d->probing ? 1 : g->concurrency;
	size_t want_total = (size_t)slots * READY_PER_SESSION + 8;
	while (d->flush && d->flush_pos < d->nflush && d->nready < want_total) {
		const char *qid = d->flush[d->flush_pos++];
		if (!busy_is(d, qid, nowms))
			load(d, qid);
	}
	if (d->flush && d->flush_pos >= d->nflush) {
		free(d->flush);
		d->flush = NULL;
		d->nflush = d->flush_pos = 0;
	}
	int64_t next = -1;
	if (d->nready < want_total) {
		size_t want = want_total - d->nready;
		struct scan s = {d, calloc(want, QUEUE_ID_SIZE), 0, want, 0,
		                 want + d->nbusy + 64};
		if (s.ids) {
			int r = queue_scan_due(d->q, wall_now(), &next, scan_cb, &s);
			if (r)
				log_err("deliver: cannot read the schedule: %s",
				        strerror(-r));
			for (size_t i = 0; i < s.n; i++)
				load(d, s.ids[i]);
			if (s.visited > s.max_visit || s.n >= s.want)
				next = wall_now();   /* more is due */
			free(s.ids);
		}
	} else {
		next = wall_now();
	}

	log_debug("deliver: %u ready, %zu busy, %u sessions (%u connecting), "
	          "next due %" PRId64, d->nready, d->nbusy, d->nsessions,
	          d->nconnecting, next);
	/* Sessions: idle ones take work; new ones while there is more work
	 * than sessions on their way. */
	for (struct snode *n = d->sessions; n && d->ready; n = n->next)
		deliver_session_kick(n->s);
	/* Not while the rate cap holds everything back: a session would only
	 * connect, idle and leave (a reconnect storm at the provider). */
	bool capped = rate_wait(&d->rate_min, nowms) ||
	              rate_wait(&d->rate_hour, nowms);
	unsigned room = rate_room(&d->rate_min, nowms);
	unsigned room_h = rate_room(&d->rate_hour, nowms);
	if (room_h < room)
		room = room_h;
	while (!capped && d->ready && d->nsessions < slots &&
	       d->nready > d->nconnecting && d->nconnecting < room)
		if (start_session(d) < 0)
			break;

	uint64_t wait = SCAN_MAX_MS;
	if (next >= 0) {
		int64_t sec = next - wall_now();
		wait = sec <= 0 ? 1000 : (uint64_t)sec * 1000;
		if (wait > SCAN_MAX_MS)
			wait = SCAN_MAX_MS;
	}
	uint64_t rw = rate_wait(&d->rate_min, nowms);
	uint64_t rh = rate_wait(&d->rate_hour, nowms);
	if (rh > rw)
		rw = rh;
	if (d->ready && rw)
		wait = rw < wait ? rw : wait;
	arm(d, wait);
}

static void notify_cb(void *arg)
{
	struct deliver *d = arg;
	/* New mail: look now (the scan is cheap; the timer debounces). */
	if (!d->stopping && d->cfg->mode == CONF_DELIVERY_SMARTHOST &&
	    !d->paused)
		arm(d, 0);
}

/* ---- operator actions --------------------------------------------------- */

/* Takes a message out of the ready list, if it is there. */
static struct deliver_job *unready(struct deliver *d, const char *qid)
{
	for (struct deliver_job **p = &d->ready; *p; p = &(*p)->next) {
		if (strcmp((*p)->m->qid, qid) != 0)
			continue;
		struct deliver_job *j = *p;
		*p = j->next;
		if (!*p)
			d->ready_tail = p;
		d->nready--;
		j->next = NULL;
		return j;
	}
	return NULL;
}

static void flush_all(struct deliver *d, deliver_ctl_reply_fn reply, void *arg)
{
	/* Every scheduled message, whatever its next attempt. */
	struct flushscan { size_t n, cap; char (*ids)[QUEUE_ID_SIZE]; int err; };
	uint64_t nmsg = 0, nsched = 0;
	queue_count(d->q, &nmsg, &nsched);
	struct scan s = {d, NULL, 0, 0, 0, 0};
	s.want = (size_t)nsched + 1;
	s.max_visit = (size_t)nsched + 1;
	s.ids = calloc(s.want, QUEUE_ID_SIZE);
	if (!s.ids) {
		reply(arg, "err out of memory");
		return;
	}
	int64_t next;
	queue_scan_due(d->q, INT64_MAX, &next, scan_cb, &s);
	free(d->flush);
	d->flush = s.ids;
	d->nflush = s.n;
	d->flush_pos = 0;
	d->paused = false;
	d->probing = false;
	d->route_fails = 0;
	d->route_reason[0] = '\0';
	char t[96];
	snprintf(t, sizeof t, "ok flushing %zu messages", s.n);
	reply(arg, t);
	schedule(d);
}

int deliver_ctl_verb(struct deliver *d, const char *verb,
                     deliver_ctl_verb_fn fn, void *arg)
{
	static const char *const own[] = {"stats", "flush", "hold", "release",
	                                  "delete", "bounce", "requeue"};
	for (size_t i = 0; i < sizeof own / sizeof *own; i++)
		if (strcmp(own[i], verb) == 0)
			return -EEXIST;
	return deliver_ctl_add_verb(d->ctl, verb, fn, arg);
}

void deliver_ctl_run(struct deliver *d, const char *line,
                     deliver_ctl_reply_fn reply, void *arg)
{
	char verb[16] = "", qid[64] = "", t[160];
	int n = sscanf(line, "%15s %63s", verb, qid);
	if (n < 1) {
		reply(arg, "err empty request");
		return;
	}
	if (strcmp(verb, "stats") == 0) {
		char js[4096];
		deliver_stats_json(d, js, sizeof js);
		snprintf(t, sizeof t, "ok ");
		char out[4200];
		snprintf(out, sizeof out, "ok %s", js);
		reply(arg, out);
		return;
	}
	if (strcmp(verb, "flush") == 0 && n == 1) {
		flush_all(d, reply, arg);
		return;
	}
	static const char *const verbs[] = {"flush", "hold", "release", "delete",
	                                    "bounce", "requeue", NULL};
	size_t v = 0;
	while (verbs[v] && strcmp(verbs[v], verb) != 0)
		v++;
	if (!verbs[v]) {
		reply(arg, "err unknown request");
		return;
	}
	if (n < 2 || !queue_id_valid(qid)) {
		reply(arg, "err a queue id is needed");
		return;
	}
	struct busy *b = busy_find(d, qid);
	struct deliver_job *j = NULL;
	if (b && b->job && !b->in_session) {
		j = unready(d, qid);
		if (j)
			busy_del(d, qid);
		b = NULL;
	}
	if (b) {
		if (b->in_session && b->job && (v == 1 || v == 3 || v == 4)) {
			/* Delivery is under way: act when it ends. */
			b->job->pend |= v == 1 ? DELIVER_PEND_HOLD :
			                v == 3 ? DELIVER_PEND_DELETE : DELIVER_PEND_BOUNCE;
			snprintf(t, sizeof t, "ok %s: being delivered; will be %s when "
			         "the attempt ends", qid, v == 1 ? "held" :
			         v == 3 ? "deleted" : "bounced");
			reply(arg, t);
			return;
		}
		snprintf(t, sizeof t, "err %s: being delivered; try again shortly",
		         qid);
		reply(arg, t);
		return;
	}
	struct queue_msg *m = NULL;
	if (j) {
		m = j->m;
		j->m = NULL;
		job_free(j);
	} else {
		int r = queue_get(d->q, qid, &m);
		if (r) {
			snprintf(t, sizeof t, "err %s: %s", qid,
			         r == -ENOENT ? "no such message" : strerror(-r));
			reply(arg, t);
			return;
		}
	}
	int64_t now = wall_now();
	char ok[96];
	bool remove = false;
	struct dsn_item *fail = NULL;
	size_t nfail = 0;
	switch (v) {
	case 0:   /* flush */
		if (m->state == QUEUE_MSG_HOLD) {
			snprintf(t, sizeof t, "err %s: on hold; release it first", qid);
			reply(arg, t);
			queue_msg_free(m);
			return;
		}
		for (size_t i = 0; i < m->nrcpt; i++)
			if (rcpt_open(&m->rcpt[i]))
				m->rcpt[i].next_attempt = now;
		d->paused = false;
		d->probing = false;
		d->route_fails = 0;
		snprintf(ok, sizeof ok, "%s: flushed", qid);
		break;
	case 1:   /* hold */
		m->state = QUEUE_MSG_HOLD;
		snprintf(ok, sizeof ok, "%s: held", qid);
		break;
	case 2:   /* release */
		m->state = QUEUE_MSG_ACTIVE;
		for (size_t i = 0; i < m->nrcpt; i++)
			if (rcpt_open(&m->rcpt[i]))
				m->rcpt[i].next_attempt = now;
		snprintf(ok, sizeof ok, "%s: released", qid);
		break;
	case 3:   /* delete */
		remove = true;
		snprintf(ok, sizeof ok, "%s: deleted", qid);
		break;
	case 4:   /* bounce */
		fail = calloc(m->nrcpt ? m->nrcpt : 1, sizeof *fail);
		if (!fail) {
			reply(arg, "err out of memory");
			queue_msg_free(m);
			return;
		}
		fail_open(d, m, "bounced by the operator", fail, &nfail);
		remove = true;
		snprintf(ok, sizeof ok, "%s: bounced", qid);
		break;
	case 5:   /* requeue */
		for (size_t i = 0; i < m->nrcpt; i++) {
			struct queue_rcpt *r = &m->rcpt[i];
			if (!rcpt_open(r))
				continue;
			r->state = QUEUE_RCPT_PENDING;
			r->attempts = 0;
			r->next_attempt = now;
			free(r->last_reply);
			r->last_reply = NULL;
		}
		m->flags &= (uint8_t)~QUEUE_F_WARNED;
		snprintf(ok, sizeof ok, "%s: requeued", qid);
		break;
	}
	/* The reply goes out when the change (and a bounce's report) is
	 * durable. */
	settle(d, m, remove, fail, nfail, reply, arg, ok);
	free(fail);
}

/* ---- stats -------------------------------------------------------------- */

static void json_str(char *out, size_t outlen, const char *s)
{
	size_t o = 0;
	if (outlen < 3)
		return;
	out[o++] = '"';
	for (; *s && o + 8 < outlen; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
}

void deliver_stats_json(struct deliver *d, char *out, size_t outlen)
{
	uint64_t nmsg = 0, nsched = 0;
	queue_count(d->q, &nmsg, &nsched);
	struct deliver_cfg *g = d->cfg;
	char name[300], reason[sizeof d->route_reason * 6 + 4];
	snprintf(name, sizeof name, "%s:%u", g->host, g->port);
	json_str(reason, sizeof reason, d->route_reason);
	char route[sizeof reason + 400];
	if (g->mode != CONF_DELIVERY_SMARTHOST)
		snprintf(route, sizeof route, "{\"state\":\"hold\"}");
	else
		snprintf(route, sizeof route,
		         "{\"name\":\"%s\",\"state\":\"%s\",\"until\":%" PRId64
		         ",\"failures\":%u,\"reason\":%s}", name,
		         d->paused ? "paused" : "ok",
		         d->paused ? d->pause_until_wall : 0, d->route_fails, reason);
	snprintf(out, outlen,
	         "{\"running\":true,\"pid\":%d,\"uptime\":%" PRId64
	         ",\"delivery\":\"%s\",\"queue\":{\"messages\":%" PRIu64
	         ",\"active\":%" PRIu64 ",\"hold\":%" PRIu64
	         ",\"in_flight\":%zu},"
	         "\"sessions\":%u,\"attempts\":%" PRIu64 ",\"sent\":%" PRIu64
	         ",\"deferred\":%" PRIu64 ",\"bounced\":%" PRIu64
	         ",\"notifications\":%" PRIu64
	         ",\"notifications_dropped\":%" PRIu64
	         ",\"smarthost_size\":%" PRIu64 ",\"route\":%s}",
	         (int)getpid(), wall_now() - d->started,
	         g->mode == CONF_DELIVERY_SMARTHOST ? "smarthost" : "hold",
	         nmsg, nsched, nmsg > nsched ? nmsg - nsched : 0, d->nbusy,
	         d->nsessions, d->n_attempts, d->n_sent,
	         d->n_deferred, d->n_bounced, d->n_dsn, d->n_dsn_dropped,
	         d->sh_size, route);
}

/* ---- life cycle --------------------------------------------------------- */

int deliver_new(uv_loop_t *loop, struct queue *q, const struct conf *conf,
                struct deliver **out)
{
	char err[512] = "";
	struct deliver *d = calloc(1, sizeof *d);
	if (!d)
		return -ENOMEM;
	d->loop = loop;
	d->q = q;
	d->ready_tail = &d->ready;
	d->started = wall_now();
	d->cfg = deliver_cfg_new(conf, err, sizeof err);
	if (!d->cfg) {
		log_err("delivery: %s", err);
		free(d);
		return -EINVAL;
	}
	if (rate_init(&d->rate_min, d->cfg->rate_minute, 60000) ||
	    rate_init(&d->rate_hour, d->cfg->rate_hour, 3600000)) {
		deliver_cfg_unref(d->cfg);
		free(d);
		return -ENOMEM;
	}
	size_load(d);
	srandom((unsigned)(getpid() ^ time(NULL)));
	int r = uv_timer_init(loop, &d->timer);
	if (r < 0) {
		log_err("delivery: uv_timer_init: %s", uv_strerror(r));
		deliver_cfg_unref(d->cfg);
		free(d);
		return r;
	}
	d->timer.data = d;
	d->timer_inited = true;
	r = deliver_ctl_open(d, loop, conf->spool_dir, &d->ctl);
	if (r)
		log_warn("control socket unavailable: relayctl flush/hold/... "
		         "will not reach this relayd");
	queue_set_notify(q, notify_cb, d);
	if (d->cfg->mode == CONF_DELIVERY_SMARTHOST)
		log_info("delivery through smarthost %s:%u (TLS %s%s%s)",
		         d->cfg->host, d->cfg->port,
		         d->cfg->tls == CONF_TLS_IMPLICIT ? "implicit" :
		         d->cfg->tls == CONF_TLS_STARTTLS ? "starttls" : "none",
		         d->cfg->user ? ", AUTH as " : "",
		         d->cfg->user ? d->cfg->user : "");
	*out = d;
	arm(d, 0);
	return 0;
}

int deliver_set_conf(struct deliver *d, const struct conf *conf)
{
	char err[512] = "";
	struct deliver_cfg *g = deliver_cfg_new(conf, err, sizeof err);
	if (!g) {
		log_err("SIGHUP: delivery settings kept: %s", err);
		return -EINVAL;
	}
	/* The windows keep their history unless the caps change (a nightly
	 * logrotate HUP must not hand out a fresh hour). */
	if ((g->rate_minute != d->cfg->rate_minute &&
	     rate_init(&d->rate_min, g->rate_minute, 60000)) ||
	    (g->rate_hour != d->cfg->rate_hour &&
	     rate_init(&d->rate_hour, g->rate_hour, 3600000)))
		log_warn("SIGHUP: smarthost_rate: out of memory");
	bool same = g->mode == d->cfg->mode && g->port == d->cfg->port &&
	            strcmp(g->host, d->cfg->host) == 0;
	deliver_cfg_unref(d->cfg);
	d->cfg = g;
	if (!same) {
		/* Another smarthost (or none): its SIZE, if known. */
		size_load(d);
		size_notify(d);
	}
	if (g->mode != CONF_DELIVERY_SMARTHOST)
		drop_ready(d);   /* back to hold: waiting jobs go back */
	/* A new password or certificate deserves a try now. */
	d->paused = false;
	d->probing = d->route_fails > 0;
	arm(d, 0);
	return 0;
}

static void maybe_done(struct deliver *d)
{
	if (!d->stopping || d->nsessions || d->inflight || d->ctl ||
	    d->timer_inited)
		return;
	void (*cb)(void *) = d->done_cb;
	void *arg = d->done_arg;
	for (size_t i = 0; i < BUSY_BUCKETS; i++)
		while (d->busy[i]) {
			struct busy *b = d->busy[i];
			d->busy[i] = b->next;
			free(b);
		}
	free(d->flush);
	free(d->rate_min.t);
	free(d->rate_hour.t);
	deliver_cfg_unref(d->cfg);
	free(d);
	if (cb)
		cb(arg);
}

static void timer_closed_cb(uv_handle_t *h)
{
	struct deliver *d = h->data;
	d->timer_inited = false;
	maybe_done(d);
}

static void ctl_closed_cb(void *arg)
{
	struct deliver *d = arg;
	d->ctl = NULL;
	maybe_done(d);
}

void deliver_stop(struct deliver *d, void (*done_cb)(void *arg), void *arg)
{
	d->stopping = true;
	d->done_cb = done_cb;
	d->done_arg = arg;
	queue_set_notify(d->q, NULL, NULL);
	drop_ready(d);
	for (struct snode *n = d->sessions; n; n = n->next)
		deliver_session_close(n->s);
	uv_timer_stop(&d->timer);
	uv_close((uv_handle_t *)&d->timer, timer_closed_cb);
	if (d->ctl)
		deliver_ctl_close(d->ctl, ctl_closed_cb, d);
	maybe_done(d);
}
