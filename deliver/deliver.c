/*
 * deliver/deliver.c - The delivery scheduler. Finds due messages in the
 * queue's schedule, loads them as jobs, hands them to a bounded pool of
 * SMTP client sessions (deliver_session.c), and turns each recipient's
 * result into a durable index change: sent, deferred (with backoff and
 * jitter), or bounced (with a DSN queued through the same spool:
 * deliver_bounce.c). Settings: deliver_conf.c; the smarthost's SIZE:
 * deliver_size.c; operator verbs and stats: deliver_verbs.c.
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

/* Jobs loaded ahead of the sessions, per session slot. */
#define READY_PER_SESSION 4
/* Longest wait between schedule scans (new mail also wakes it). */
#define SCAN_MAX_MS 60000

/* ---- the busy table ----------------------------------------------------- */

static unsigned busy_hash(const char *qid)
{
	unsigned h = 2166136261u;
	for (size_t i = 0; i < QUEUE_ID_LEN; i++)
		h = (h ^ (unsigned char)qid[i]) * 16777619u;
	return h % BUSY_BUCKETS;
}

struct deliver_busy *deliver_busy_find(struct deliver *d, const char *qid)
{
	for (struct deliver_busy *b = d->busy[busy_hash(qid)]; b; b = b->next)
		if (memcmp(b->qid, qid, QUEUE_ID_LEN) == 0)
			return b;
	return NULL;
}

struct deliver_busy *deliver_busy_add(struct deliver *d, const char *qid)
{
	struct deliver_busy *b = calloc(1, sizeof *b);
	if (!b)
		return NULL;
	memcpy(b->qid, qid, QUEUE_ID_SIZE);
	unsigned h = busy_hash(qid);
	b->next = d->busy[h];
	d->busy[h] = b;
	d->nbusy++;
	return b;
}

void deliver_busy_del(struct deliver *d, const char *qid);

/* Whether qid is taken; an expired cool-down ends here. */
bool deliver_busy_is(struct deliver *d, const char *qid, uint64_t now)
{
	struct deliver_busy *b = deliver_busy_find(d, qid);
	if (!b)
		return false;
	if (b->cool_until && b->cool_until <= now && !b->job) {
		deliver_busy_del(d, qid);
		return false;
	}
	return true;
}

void deliver_busy_del(struct deliver *d, const char *qid)
{
	for (struct deliver_busy **p = &d->busy[busy_hash(qid)]; *p; p = &(*p)->next) {
		if (memcmp((*p)->qid, qid, QUEUE_ID_LEN) == 0) {
			struct deliver_busy *b = *p;
			*p = b->next;
			free(b);
			d->nbusy--;
			return;
		}
	}
}

/* ---- time and rates ----------------------------------------------------- */

int64_t deliver_wall_now(void)
{
	return (int64_t)time(NULL);
}

static double wall_now_f(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static int rate_init(struct deliver_rate *r, unsigned cap, uint64_t window_ms)
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
static uint64_t rate_wait(const struct deliver_rate *r, uint64_t now)
{
	if (!r->cap || r->n < r->cap)
		return 0;
	uint64_t oldest = r->t[r->head];   /* ring full: head is the oldest */
	return oldest + r->window_ms > now ? oldest + r->window_ms - now : 0;
}

/* Sends that may still go in the current window (UINT_MAX: no cap). */
static unsigned rate_room(const struct deliver_rate *r, uint64_t now)
{
	if (!r->cap)
		return UINT_MAX;
	unsigned used = 0;
	for (unsigned i = 0; i < r->n; i++)
		if (r->t[(r->head + i) % r->cap] + r->window_ms > now)
			used++;
	return used < r->cap ? r->cap - used : 0;
}

static void rate_note(struct deliver_rate *r, uint64_t now)
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

void deliver_job_free(struct deliver_job *j)
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

bool deliver_rcpt_open(const struct queue_rcpt *r)
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
		n += deliver_rcpt_open(&m->rcpt[i]);
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
		deliver_job_free(j);
		return NULL;
	}
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (!deliver_rcpt_open(r))
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
			deliver_job_free(j);
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
	struct deliver_busy *b = deliver_busy_find(d, c->qid);
	if (status && status != -ENOENT && b) {
		/* The index still says "due": without a pause, the message
		 * would be sent again at once, and again. */
		b->cool_until = uv_now(d->loop) + d->cfg->retry_min;
		b->job = NULL;
		b->in_session = false;
	} else {
		deliver_busy_del(d, c->qid);
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
	deliver_schedule(d);
	deliver_maybe_done(d);   /* last: it may free d */
}

/* Writes m back (or removes it when nothing is left); the message stays
 * busy until the change is durable. Takes a busy entry for qid if it has
 * none. */
int deliver_record(struct deliver *d, const struct queue_msg *m, bool remove,
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
	struct deliver_busy *b = deliver_busy_find(d, m->qid);
	if (!b && !(b = deliver_busy_add(d, m->qid))) {
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

/* ---- results ------------------------------------------------------------ */

static double rnd01(void)
{
	return (double)(random() % 1000000) / 1000000.0;
}

void deliver_set_reply(struct queue_rcpt *r, const char *text)
{
	char *t = strdup(text);
	if (!t)
		return;   /* keep the old one */
	free(r->last_reply);
	r->last_reply = t;
}

/* The log line of one recipient, in Postfix's shape. */
void deliver_log_result(const struct queue_msg *m, const struct queue_rcpt *r,
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
 * report is durable: deliver_settle()).
 */
static void finish(struct deliver *d, struct deliver_job *j,
                   const struct deliver_reply *const *results,
                   const char *relay, const struct deliver_times *t,
                   bool temp, struct deliver_dsn_item *fail, size_t *nfail)
{
	struct queue_msg *m = j->m;
	struct deliver_cfg *g = d->cfg;
	int64_t now = deliver_wall_now();
	bool expired = age_ms(m, now) >= g->lifetime;
	struct deliver_dsn_item *late = calloc(j->n ? j->n : 1, sizeof *late);
	size_t nlate = 0;
	char st[16];

	*nfail = 0;
	for (size_t k = 0; k < j->n; k++) {
		struct queue_rcpt *r = &m->rcpt[j->idx[k]];
		const struct deliver_reply *rep = results[k];
		/* Our own refusals ("553 5.6.7 ...") come with their codes
		 * (deliver_client_result); 0 is a local, temporary failure. */
		int code = temp ? 0 : rep->code;
		r->attempts++;
		deliver_set_reply(r, rep->text);
		deliver_reply_status(rep, st);
		if (temp || (code >= 400 && code < 500) || code == 0)
			if (st[0] != '4')
				snprintf(st, sizeof st, "4.0.0");
		if (code >= 200 && code < 300) {
			r->state = QUEUE_RCPT_SENT;
			d->n_sent++;
			deliver_log_result(m, r, relay, t, st, "sent", rep->text);
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
			deliver_log_result(m, r, relay, t, status, "bounced", why);
			if (deliver_wants(r, QUEUE_NOTIFY_FAILURE)) {
				struct deliver_dsn_item *it = &fail[(*nfail)++];
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
			deliver_log_result(m, r, relay, t, st, "deferred", rep->text);
			if (late && g->warn_after && !(m->flags & QUEUE_F_WARNED) &&
			    age_ms(m, now) >= g->warn_after &&
			    deliver_wants(r, QUEUE_NOTIFY_DELAY)) {
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
		deliver_send_dsn(d, m, late, nlate, true,
		         m->arrival + (int64_t)(g->lifetime / 1000), NULL, false,
		         NULL, NULL, NULL);
	} else if (g->warn_after && age_ms(m, now) >= g->warn_after) {
		m->flags |= QUEUE_F_WARNED;   /* nobody wanted one */
	}
	free(late);
}

/* The end of a job: operator actions that waited for it (hold, delete,
 * bounce), then the record. fail[] has room for m->nrcpt items. */
static void job_end(struct deliver *d, struct deliver_job *j,
                    struct deliver_dsn_item *fail, size_t nfail)
{
	struct queue_msg *m = j->m;
	j->m = NULL;
	bool remove = false;
	if (j->pend & DELIVER_PEND_DELETE) {
		remove = true;
		nfail = 0;   /* deleted by the operator: silently */
	} else {
		if (j->pend & DELIVER_PEND_BOUNCE) {
			deliver_fail_open(d, m, "bounced by the operator", fail, &nfail);
			remove = true;
		}
		if (j->pend & DELIVER_PEND_HOLD)
			m->state = QUEUE_MSG_HOLD;
	}
	deliver_settle(d, m, remove, fail, nfail, NULL, NULL, NULL);
	deliver_job_free(j);
}

void deliver_job_done(struct deliver *d, struct deliver_job *j,
                      const struct deliver_reply *const *results,
                      const char *relay, const struct deliver_times *t)
{
	struct deliver_dsn_item *fail = calloc(j->m->nrcpt ? j->m->nrcpt : 1,
	                               sizeof *fail);
	size_t nfail = 0;
	if (!fail) {
		deliver_busy_del(d, j->m->qid);   /* retried: a duplicate, not a loss */
		deliver_job_free(j);
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
	struct deliver_dsn_item *fail = calloc(j->m->nrcpt ? j->m->nrcpt : 1,
	                               sizeof *fail);
	size_t nfail = 0;
	if (!fail) {
		deliver_busy_del(d, j->m->qid);
		deliver_job_free(j);
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
			deliver_busy_del(d, j->m->qid);
			deliver_job_free(j);
		}
		free(fail);
		return;
	}
	/* Whatever went wrong with the session is temporary for every
	 * recipient, whatever its code (never a bounce, nor a "sent", for a
	 * connection, TLS or AUTH problem or an unexpected reply). */
	const struct deliver_reply **res = calloc(j->n ? j->n : 1, sizeof *res);
	if (!res) {
		deliver_busy_del(d, j->m->qid);
		deliver_job_free(j);
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
		deliver_schedule(d);   /* arms the timer for when one may go */
		return NULL;
	}
	struct deliver_job *j = d->ready;
	d->ready = j->next;
	if (!d->ready)
		d->ready_tail = &d->ready;
	d->nready--;
	j->next = NULL;
	struct deliver_busy *b = deliver_busy_find(d, j->m->qid);
	if (b)
		b->in_session = true;
	rate_note(&d->rate_min, now);
	rate_note(&d->rate_hour, now);
	return j;
}

void deliver_session_up(struct deliver *d, struct deliver_session *s,
                        uint64_t size)
{
	/* Every session's EHLO counts, a probe's too: the provider may
	 * change its limit at any time. Not one to a smarthost replaced by
	 * a SIGHUP since it started. */
	char name[300];
	deliver_size_name(d->cfg, name, sizeof name);
	for (struct deliver_snode *n = d->sessions; n; n = n->next)
		if (n->s == s && !n->up) {
			n->up = true;
			d->nconnecting--;
			if (strcmp(n->name, name) == 0)
				deliver_size_learn(d, size);
		}
	if (d->paused)
		return;   /* started before the pause: proves nothing */
	if (d->route_fails || d->probing)
		log_info("smarthost %s:%u: delivering again", d->cfg->host,
		         d->cfg->port);
	d->route_fails = 0;
	d->probing = false;
	d->route_reason[0] = '\0';
	/* No deliver_schedule() here: the session takes a job right after this, and
	 * other sessions may start once it did (a probe is over now). */
	deliver_arm(d, 0);
}

/* Puts the ready jobs back (they stay in the schedule; busy ends). */
static void drop_ready(struct deliver *d)
{
	while (d->ready) {
		struct deliver_job *j = d->ready;
		d->ready = j->next;
		deliver_busy_del(d, j->m->qid);
		deliver_job_free(j);
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
	d->pause_until_wall = deliver_wall_now() + (int64_t)((ms + 999) / 1000);
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
	struct deliver_reply r = {.code = 0};
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
	for (struct deliver_snode **p = &d->sessions; *p; p = &(*p)->next) {
		if ((*p)->s != s)
			continue;
		struct deliver_snode *n = *p;
		if (!n->up)
			d->nconnecting--;
		*p = n->next;
		free(n);
		d->nsessions--;
		break;
	}
	if (route_fail && !d->stopping && !d->paused)
		route_pause(d, auth_fail, r ? r->text : "session failed");
	deliver_schedule(d);
	deliver_maybe_done(d);   /* last: it may free d */
}

static int start_session(struct deliver *d)
{
	struct deliver_snode *n = calloc(1, sizeof *n);
	if (!n)
		return -ENOMEM;
	deliver_size_name(d->cfg, n->name, sizeof n->name);
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
	struct deliver_busy *b = deliver_busy_add(d, qid);
	if (!b) {
		queue_msg_free(m);
		return;
	}
	struct deliver_job *j = job_new(d, m);
	if (!j) {
		deliver_busy_del(d, qid);
		return;
	}
	b->job = j;
	*d->ready_tail = j;
	d->ready_tail = &j->next;
	d->nready++;
}

int deliver_scan_cb(void *arg, const char *qid, int64_t due)
{
	(void)due;
	struct deliver_scan *s = arg;
	if (++s->visited > s->max_visit)
		return 1;
	if (deliver_busy_is(s->d, qid, uv_now(s->d->loop)))
		return 0;
	memcpy(s->ids[s->n++], qid, QUEUE_ID_SIZE);
	return s->n >= s->want;
}

static void timer_cb(uv_timer_t *t)
{
	deliver_schedule(t->data);
}

void deliver_arm(struct deliver *d, uint64_t ms)
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

void deliver_schedule(struct deliver *d)
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
			deliver_arm(d, d->pause_until - nowms);
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
		if (!deliver_busy_is(d, qid, nowms))
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
		struct deliver_scan s = {d, calloc(want, QUEUE_ID_SIZE), 0, want, 0,
		                 want + d->nbusy + 64};
		if (s.ids) {
			int r = queue_scan_due(d->q, deliver_wall_now(), &next, deliver_scan_cb, &s);
			if (r)
				log_err("deliver: cannot read the schedule: %s",
				        strerror(-r));
			for (size_t i = 0; i < s.n; i++)
				load(d, s.ids[i]);
			if (s.visited > s.max_visit || s.n >= s.want)
				next = deliver_wall_now();   /* more is due */
			free(s.ids);
		}
	} else {
		next = deliver_wall_now();
	}

	log_debug("deliver: %u ready, %zu busy, %u sessions (%u connecting), "
	          "next due %" PRId64, d->nready, d->nbusy, d->nsessions,
	          d->nconnecting, next);
	/* Sessions: idle ones take work; new ones while there is more work
	 * than sessions on their way. */
	for (struct deliver_snode *n = d->sessions; n && d->ready; n = n->next)
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
		int64_t sec = next - deliver_wall_now();
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
	deliver_arm(d, wait);
}

static void notify_cb(void *arg)
{
	struct deliver *d = arg;
	/* New mail: look now (the scan is cheap; the timer debounces). */
	if (!d->stopping && d->cfg->mode == CONF_DELIVERY_SMARTHOST &&
	    !d->paused)
		deliver_arm(d, 0);
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
	d->started = deliver_wall_now();
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
	deliver_size_load(d);
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
	deliver_arm(d, 0);
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
		deliver_size_load(d);
		deliver_size_notify(d);
	}
	if (g->mode != CONF_DELIVERY_SMARTHOST)
		drop_ready(d);   /* back to hold: waiting jobs go back */
	/* A new password or certificate deserves a try now. */
	d->paused = false;
	d->probing = d->route_fails > 0;
	deliver_arm(d, 0);
	return 0;
}

void deliver_maybe_done(struct deliver *d)
{
	if (!d->stopping || d->nsessions || d->inflight || d->ctl ||
	    d->timer_inited)
		return;
	void (*cb)(void *) = d->done_cb;
	void *arg = d->done_arg;
	for (size_t i = 0; i < BUSY_BUCKETS; i++)
		while (d->busy[i]) {
			struct deliver_busy *b = d->busy[i];
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
	deliver_maybe_done(d);
}

static void ctl_closed_cb(void *arg)
{
	struct deliver *d = arg;
	d->ctl = NULL;
	deliver_maybe_done(d);
}

void deliver_stop(struct deliver *d, void (*done_cb)(void *arg), void *arg)
{
	d->stopping = true;
	d->done_cb = done_cb;
	d->done_arg = arg;
	queue_set_notify(d->q, NULL, NULL);
	drop_ready(d);
	for (struct deliver_snode *n = d->sessions; n; n = n->next)
		deliver_session_close(n->s);
	uv_timer_stop(&d->timer);
	uv_close((uv_handle_t *)&d->timer, timer_closed_cb);
	if (d->ctl)
		deliver_ctl_close(d->ctl, ctl_closed_cb, d);
	deliver_maybe_done(d);
}

