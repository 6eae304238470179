/*
 * deliver/deliver.c - The delivery scheduler. Finds due messages in the
 * queue's schedule, routes each open recipient to a destination
 * (deliver_route, deliver_dest.c) and loads the message as one job per
 * destination; each destination feeds its own SMTP client sessions
 * (deliver_session.c). Turns each recipient's result into a durable index
 * change: sent, deferred (with backoff and jitter), or bounced (with a DSN
 * queued through the same spool: deliver_bounce.c). Settings:
 * deliver_conf.c; the smarthost's SIZE: deliver_size.c; operator verbs
 * and stats: deliver_verbs.c.
 *
 * Destinations pause on their own (deliver_dest.c): one that is down or
 * throttled holds back only its own jobs. In smarthost mode there is one,
 * and while it is paused nothing is loaded; its state shows in `relayctl
 * stats` (route), `list` and `destinations`.
 *
 * Invariant: a message is loaded once at a time: the busy table holds
 * every message with a job (waiting or in a session) or an index change
 * on its way, and the schedule scan skips them. The jobs of one message
 * share its record (busy->latest), each changing only its own
 * recipients. Results are written per recipient (queue_update_rcpts:
 * only the recipients a job changed, applied to the record as stored,
 * with their destination, MX and time of the attempt); a whole record
 * only for message-level changes (hold, the delay-warning flag, operator
 * verbs). Writes are serialized, one in flight per message, so a failure
 * report is durable before the record that bounces its recipients
 * (deliver_busy_flush, deliver_settle).
 */
#include "deliver/deliver_int.h"

#include "dkim/dkim.h"

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
/* A message held by a pause while another of its domains is looked up:
 * loaded again this soon. */
#define ROUTE_WAIT_MS 1000

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

/* Whether qid is taken; an expired cool-down ends here. */
bool deliver_busy_is(struct deliver *d, const char *qid, uint64_t now)
{
	struct deliver_busy *b = deliver_busy_find(d, qid);
	if (!b)
		return false;
	if (b->cool_until && b->cool_until <= now && !b->njobs && !b->ops) {
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
			queue_msg_free(b->latest);
			free(b->chg);
			free(b->injob);
			free(b);
			d->nbusy--;
			return;
		}
	}
}

void deliver_busy_uncool(struct deliver *d)
{
	/* An expired cool-down ends at the next scan (deliver_busy_is); a
	 * busy message's other recipients may load at once. */
	for (size_t h = 0; h < BUSY_BUCKETS; h++)
		for (struct deliver_busy *b = d->busy[h]; b; b = b->next) {
			if (b->cool_until)
				b->cool_until = 1;
			b->more_after = 0;
		}
}

void deliver_busy_mark(struct deliver_busy *b, size_t i)
{
	if (!b->latest || i >= b->latest->nrcpt)
		return;
	if (!b->chg)
		b->chg = calloc(b->latest->nrcpt ? b->latest->nrcpt : 1, 1);
	if (b->chg)
		b->chg[i] = 1;
	else
		b->whole = true;   /* latest has it: a whole write carries it */
}

/* b's record is no longer held in memory (the index has the truth):
 * nothing of it is left to write. */
static void busy_forget(struct deliver_busy *b)
{
	queue_msg_free(b->latest);
	b->latest = NULL;
	free(b->chg);
	b->chg = NULL;
	free(b->injob);
	b->injob = NULL;
	b->whole = false;
}

/* Frees b when nothing is left of it: no job, nothing on its way, no
 * change waiting, no cool-down. */
static void busy_release(struct deliver *d, struct deliver_busy *b)
{
	if (b->njobs || b->ops || b->dirty || b->cool_until)
		return;
	deliver_busy_del(d, b->qid);
}

/* ---- time --------------------------------------------------------------- */

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

/* ---- jobs --------------------------------------------------------------- */

void deliver_job_free(struct deliver_job *j)
{
	if (!j)
		return;
	free(j->idx);
	free(j->rcpt);
	free(j->notify);
	free(j->orcpt);
	free(j->notify_txt);
	free(j->sender);
	free(j);
}

/* Takes j out of its message's busy entry. */
static void job_detach(struct deliver_job *j)
{
	struct deliver_busy *b = j->b;
	if (!b)
		return;
	for (struct deliver_job **p = &b->jobs; *p; p = &(*p)->bnext)
		if (*p == j) {
			*p = j->bnext;
			b->njobs--;
			break;
		}
	for (size_t k = 0; b->injob && k < j->n; k++)
		b->injob[j->idx[k]] = 0;
	if (j->in_session && j->dest)
		j->dest->nbusy--;
	j->in_session = false;
	j->b = NULL;
	j->m = NULL;
}

void deliver_job_drop(struct deliver *d, struct deliver_job *j)
{
	struct deliver_busy *b = j->b;
	job_detach(j);
	deliver_job_free(j);
	if (b)
		busy_release(d, b);
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

/* A job for the n recipients idx[] of b's message (open ones, all routed
 * to one destination); attached to b. NULL: out of memory. */
static struct deliver_job *job_new(struct deliver *d, struct deliver_busy *b,
                                   const size_t *idx, size_t n)
{
	struct queue_msg *m = b->latest;
	if (!b->injob && !(b->injob = calloc(m->nrcpt ? m->nrcpt : 1, 1)))
		return NULL;
	struct deliver_job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
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
	for (size_t k = 0; k < n; k++) {
		const struct queue_rcpt *r = &m->rcpt[idx[k]];
		j->idx[j->n] = idx[k];
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
	/* SIZE= counts the stored DKIM-Signature block sent in front. */
	j->cm.size = m->size + (m->dkim_sig ? strlen(m->dkim_sig) : 0);
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
	for (size_t k = 0; k < j->n; k++)
		b->injob[j->idx[k]] = 1;
	j->t_ready = uv_now(d->loop);
	j->b = b;
	j->bnext = b->jobs;
	b->jobs = j;
	b->njobs++;
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
	if (status == QUEUE_RCPTS_DONE) {
		/* The results left no recipient open (the record as stored
		 * knew of one that latest did not): the message goes now, in
		 * a second step of the same change. */
		c->removed = true;
		int r = queue_remove(d->q, c->qid, change_cb, c);
		if (r == 0)
			return;   /* b->ops and d->inflight still count it */
		status = r;
	}
	d->inflight--;
	if (b) {
		b->ops--;
		if (status == 0 && c->removed)
			b->removed = true;
		if (status == -ENOENT)
			b->removed = true;   /* gone: nothing more to write */
		if (status && status != -ENOENT && !b->njobs && !b->dirty &&
		    !b->ops) {
			/* The index still says "due": without a pause, the
			 * message would be sent again at once, and again. */
			b->cool_until = uv_now(d->loop) + d->cfg->retry_min;
			busy_forget(b);
		}
	}
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
	if (b)
		deliver_busy_flush(d, b);   /* results that waited; may free b */
	deliver_schedule(d);
	deliver_maybe_done(d);   /* last: it may free d */
}

/* Answers b's waiting control request with an error. */
static void busy_reply_err(struct deliver_busy *b, const char *why)
{
	if (!b->reply)
		return;
	char t[160];
	snprintf(t, sizeof t, "err %s: %s", b->qid, why);
	b->reply(b->reply_arg, t);
	b->reply = NULL;
}

/* The recipients b->chg marks, as they are in b->latest, handed to the
 * writer as per-recipient changes (queue_update_rcpts). */
static int write_rcpts(struct deliver *d, struct deliver_busy *b,
                       struct change *c)
{
	const struct queue_msg *m = b->latest;
	struct queue_rcpt_change *ch = calloc(m->nrcpt ? m->nrcpt : 1,
	                                      sizeof *ch);
	if (!ch)
		return -ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < m->nrcpt; i++) {
		if (!b->chg[i])
			continue;
		const struct queue_rcpt *r = &m->rcpt[i];
		ch[n++] = (struct queue_rcpt_change){
			.index = i,
			.state = r->state,
			.attempts = r->attempts,
			.next_attempt = r->next_attempt,
			.last_reply = r->last_reply,
			.dest = r->dest,
			.mx = r->mx,
			.last_try = r->last_try,
		};
	}
	/* Nothing marked (a write asked for by a result that changed no
	 * recipient): the whole record, as before. */
	int r = n ? queue_update_rcpts(d->q, b->qid, ch, n, change_cb, c)
	          : queue_update(d->q, m, change_cb, c);
	free(ch);
	return r;
}

void deliver_busy_flush(struct deliver *d, struct deliver_busy *b)
{
	if (b->ops || !b->dirty || !b->latest) {
		busy_release(d, b);
		return;
	}
	b->dirty = false;
	if (b->removed) {
		/* Deleted or bounced meanwhile: later results have no
		 * record to go to. */
		busy_reply_err(b, "no such message");
		busy_release(d, b);
		return;
	}
	struct change *c = calloc(1, sizeof *c);
	int r = -ENOMEM;
	if (c) {
		c->d = d;
		memcpy(c->qid, b->qid, QUEUE_ID_SIZE);
		c->removed = b->remove || queue_msg_due(b->latest) < 0;
		c->reply = b->reply;
		c->reply_arg = b->reply_arg;
		snprintf(c->ok_text, sizeof c->ok_text, "%s", b->ok_text);
		if (c->removed)
			r = queue_remove(d->q, b->qid, change_cb, c);
		else if (b->whole || !b->chg)
			r = queue_update(d->q, b->latest, change_cb, c);
		else
			r = write_rcpts(d, b, c);
	}
	if (r) {
		free(c);
		log_err("%s: cannot record the delivery state: %s", b->qid,
		        strerror(-r));
		busy_reply_err(b, "cannot record the change");
		if (!b->njobs && !b->ops) {
			b->cool_until = uv_now(d->loop) + d->cfg->retry_min;
			busy_forget(b);
		}
		return;
	}
	/* On its way: later results mark afresh. */
	b->whole = false;
	if (b->chg)
		memset(b->chg, 0, b->latest->nrcpt ? b->latest->nrcpt : 1);
	b->reply = NULL;
	b->ops++;
	d->inflight++;
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
	/* From the arrival to the millisecond (format-1 records have none:
	 * their arrival_ms is 0). */
	double delay = wall_now_f() - ((double)m->arrival +
	                               m->arrival_ms / 1000.0);
	if (delay < 0)
		delay = 0;
	double conn = t ? t->conn_ms / 1000.0 : 0, xfer = t ? t->xfer_ms / 1000.0 : 0;
	double queued = delay - conn - xfer;
	log_escape(to, sizeof to, r->addr, strlen(r->addr));
	log_escape(esc, sizeof esc, text, strlen(text));
	log_info("%s: to=<%s>, relay=%s, delay=%.2f, delays=%.2f/%.2f/%.2f, "
	         "dsn=%s, %s%s%sstatus=%s (%s)", m->qid, to, relay ? relay : "none",
	         delay, queued < 0 ? 0 : queued, conn, xfer, dsn,
	         t && t->tls ? "tls=" : "", t && t->tls ? t->tls : "",
	         t && t->tls ? ", " : "", status, esc);
}

/* *p becomes a copy of v (NULL: cleared); out of memory keeps the old. */
static void set_str(char **p, const char *v)
{
	char *c = NULL;
	if (v && !(c = strdup(v)))
		return;
	free(*p);
	*p = c;
}

/* The host of a session's relay name: "host[ip]:port" or, before an
 * address was picked, "host:port" (host never bracketed there, so the
 * last ':' ends it). */
static void relay_host(const char *relay, char *out, size_t outlen)
{
	const char *e = strchr(relay, '[');
	if (!e)
		e = strrchr(relay, ':');
	size_t n = e ? (size_t)(e - relay) : strlen(relay);
	snprintf(out, outlen, "%.*s", (int)n, relay);
}

/* Seconds since arrival, never negative (the wall clock may step back). */
static uint64_t age_ms(const struct queue_msg *m, int64_t now)
{
	return now > m->arrival ? (uint64_t)(now - m->arrival) * 1000 : 0;
}

const unsigned deliver_lat_bounds[DELIVER_LAT_BUCKETS] = {
	1, 5, 15, 60, 300, 900, 3600, 14400, 86400, 432000};

/* One recipient sent ms after its message arrived: the histogram keeps
 * per-bucket counts (made cumulative when written out). */
static void deliver_lat_observe(struct deliver *d, uint64_t ms)
{
	size_t i = 0;
	while (i < DELIVER_LAT_BUCKETS && ms > deliver_lat_bounds[i] * 1000ULL)
		i++;
	d->lat_bucket[i]++;
	d->lat_sum_ms += ms;
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
	char st[16], mx[QUEUE_MX_MAX];
	uint8_t flags0 = m->flags;

	if (relay)
		relay_host(relay, mx, sizeof mx);

	*nfail = 0;
	/* Direct: "452 4.5.3 too many recipients" after some were accepted
	 * leaves those recipients as they were, so that they go in another
	 * transaction right away (RFC 5321 §4.5.3.1.10), not deferred. */
	bool some_ok = false;
	for (size_t k = 0; k < j->n && !temp && j->dest->direct; k++)
		some_ok |= results[k]->code >= 200 && results[k]->code < 300;
	for (size_t k = 0; k < j->n; k++) {
		struct queue_rcpt *r = &m->rcpt[j->idx[k]];
		const struct deliver_reply *rep = results[k];
		if (some_ok && rep->code == 452 &&
		    deliver_tlspol_split(rep->text, strlen(rep->text))) {
			char to[1024], esc[DELIVER_REPLY_TEXT_MAX * 4];
			log_escape(to, sizeof to, r->addr, strlen(r->addr));
			log_escape(esc, sizeof esc, rep->text, strlen(rep->text));
			log_info("%s: to=<%s>: %s: in another transaction", m->qid,
			         to, esc);
			continue;
		}
		/* Our own refusals ("553 5.6.7 ...") come with their codes
		 * (deliver_client_result); 0 is a local, temporary failure. */
		int code = temp ? 0 : rep->code;
		r->attempts++;
		deliver_set_reply(r, rep->text);
		/* Where it was tried, and when (relayctl show, the DSN); a job
		 * given up by a destination that paused before it reached a
		 * session talked to no host: its mx stays. */
		set_str(&r->dest, j->dest->key);
		if (relay && mx[0])
			set_str(&r->mx, mx);
		r->last_try = now;
		deliver_busy_mark(j->b, j->idx[k]);
		deliver_reply_status(rep, st);
		if (temp || (code >= 400 && code < 500) || code == 0)
			if (st[0] != '4')
				snprintf(st, sizeof st, "4.0.0");
		if (code >= 200 && code < 300) {
			r->state = QUEUE_RCPT_SENT;
			d->n_sent++;
			j->dest->n_sent++;
			queue_stats_count(d->q, now, QUEUE_STATS_SENT, NULL,
			                  queue_stats_domain(r->addr), 1);
			deliver_lat_observe(d, age_ms(m, now));
			deliver_log_result(m, r, relay, t, st, "sent", rep->text);
		} else if (code >= 500 || expired) {
			r->state = QUEUE_RCPT_BOUNCED;
			d->n_bounced++;
			j->dest->n_bounced++;
			queue_stats_count(d->q, now, QUEUE_STATS_BOUNCED, NULL,
			                  queue_stats_domain(r->addr), 1);
			snprintf(j->dest->last_error, sizeof j->dest->last_error,
			         "%s", rep->text);
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
				it->remote = !temp && code && !j->route_fail;
			}
		} else {
			r->state = QUEUE_RCPT_DEFERRED;
			d->n_deferred++;
			j->dest->n_deferred++;
			queue_stats_count(d->q, now, QUEUE_STATS_DEFERRED, NULL,
			                  queue_stats_domain(r->addr), 1);
			snprintf(j->dest->last_error, sizeof j->dest->last_error,
			         "%s", rep->text);
			uint64_t wait = deliver_backoff(g->retry_min, g->retry_max,
			                                r->attempts, rnd01());
			int64_t next = now + (int64_t)((wait + 999) / 1000);
			if (j->dest->paused && j->dest->pause_until_wall > next)
				next = j->dest->pause_until_wall;
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
				late[nlate].remote = !temp && code && !j->route_fail;
				nlate++;
			}
		}
	}
	if (nlate) {
		m->flags |= QUEUE_F_WARNED;
		deliver_send_dsn(d, m, late, nlate, true,
		                 m->arrival + (int64_t)(g->lifetime / 1000), NULL,
		                 false);
	} else if (g->warn_after && age_ms(m, now) >= g->warn_after) {
		m->flags |= QUEUE_F_WARNED;   /* nobody wanted one */
	}
	if (m->flags != flags0)
		j->b->whole = true;   /* a message-level change */
	free(late);
}

/* The end of a job: operator actions that waited for it (hold, delete,
 * bounce), then the record. fail[] has room for m->nrcpt items. */
static void job_end(struct deliver *d, struct deliver_job *j,
                    struct deliver_dsn_item *fail, size_t nfail)
{
	struct deliver_busy *b = j->b;
	struct queue_msg *m = b->latest;
	bool remove = false;
	if (j->pend & DELIVER_PEND_DELETE) {
		remove = true;
		nfail = 0;   /* deleted by the operator: silently */
	} else {
		if (j->pend & DELIVER_PEND_BOUNCE) {
			deliver_fail_open(d, m, "bounced by the operator", fail, &nfail);
			remove = true;
			b->whole = true;
		}
		if (j->pend & DELIVER_PEND_HOLD) {
			m->state = QUEUE_MSG_HOLD;
			b->whole = true;
		}
	}
	job_detach(j);
	deliver_job_free(j);
	deliver_settle(d, b, remove, fail, nfail, NULL, NULL, NULL);
}

void deliver_job_done(struct deliver *d, struct deliver_job *j,
                      const struct deliver_reply *const *results,
                      const char *relay, const struct deliver_times *t)
{
	struct deliver_dsn_item *fail = calloc(j->m->nrcpt ? j->m->nrcpt : 1,
	                                       sizeof *fail);
	size_t nfail = 0;
	if (!fail) {
		deliver_job_drop(d, j);   /* retried: a duplicate, not a loss */
		return;
	}
	d->n_attempts++;
	j->dest->n_attempts++;
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
		deliver_job_drop(d, j);
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
		else
			deliver_job_drop(d, j);
		free(fail);
		return;
	}
	/* Whatever went wrong with the session is temporary for every
	 * recipient, whatever its code (never a bounce, nor a "sent", for a
	 * connection, TLS or AUTH problem or an unexpected reply). */
	const struct deliver_reply **res = calloc(j->n ? j->n : 1, sizeof *res);
	if (!res) {
		deliver_job_drop(d, j);
		free(fail);
		return;
	}
	for (size_t k = 0; k < j->n; k++)
		res[k] = r;
	d->n_attempts++;
	j->dest->n_attempts++;
	finish(d, j, res, relay, NULL, true, fail, &nfail);
	free(res);
	job_end(d, j, fail, nfail);
	free(fail);
}

/* ---- the schedule ------------------------------------------------------- */

/*
 * Direct mode: the recipients of b's message whose routing failed (null
 * MX, NXDOMAIN, a loop, a failed lookup: deliver_direct.c) get that
 * reply as their result, as if a server had given it, but from us: a 5xx
 * bounces (the DSN names no Remote-MTA), a 4xx defers with backoff. They
 * go through a job of the destination "dns:DOMAIN" that never has a
 * session, so that `relayctl destinations` shows why they wait. idx is
 * scratch room for m->nrcpt indices.
 */
static void route_failures(struct deliver *d, struct deliver_busy *b,
                           bool *done, size_t *idx)
{
	struct queue_msg *m = b->latest;
	for (size_t i = 0; i < m->nrcpt; i++) {
		struct deliver_reply fail;
		char key[DELIVER_DEST_KEY_MAX];
		if (done[i] || !deliver_rcpt_open(&m->rcpt[i]) ||
		    deliver_direct_route(d, m->rcpt[i].addr, key, sizeof key,
		                         &fail) != -EPROTO)
			continue;
		const char *at = strrchr(m->rcpt[i].addr, '@');
		snprintf(key, sizeof key, "dns:%s", at ? at + 1 : "");
		/* Every recipient of that domain with the same outcome. */
		size_t n = 0;
		for (size_t k = i; k < m->nrcpt; k++) {
			struct deliver_reply f2;
			char k2[DELIVER_DEST_KEY_MAX];
			const char *at2 = strrchr(m->rcpt[k].addr, '@');
			if (done[k] || !deliver_rcpt_open(&m->rcpt[k]) ||
			    strcasecmp(at2 ? at2 : "", at ? at : "") != 0 ||
			    deliver_direct_route(d, m->rcpt[k].addr, k2, sizeof k2,
			                         &f2) != -EPROTO)
				continue;
			done[k] = true;
			idx[n++] = k;
		}
		struct deliver_dest *dst = deliver_dest_get(d, key, true);
		struct deliver_job *j = dst ? job_new(d, b, idx, n) : NULL;
		if (!j)
			continue;
		j->dest = dst;
		j->route_fail = true;
		const struct deliver_reply **res = calloc(n, sizeof *res);
		if (!res) {
			deliver_job_drop(d, j);
			continue;
		}
		for (size_t k = 0; k < n; k++)
			res[k] = &fail;
		snprintf(dst->last_error, sizeof dst->last_error, "%s", fail.text);
		deliver_job_done(d, j, res, NULL, NULL);
		free(res);
	}
}

/*
 * Whether more of busy message b may be loaded now: it has open
 * recipients in no job, one of them due by now (any, when force: a
 * flush), and nothing is pending for the message as a whole (an
 * operator's hold, delete or bounce waiting for an attempt, a removal, a
 * cool-down, a pause or lookup its other recipients wait for). *due_at,
 * when not NULL: the earliest time such a recipient falls due (wall
 * seconds; unchanged when there is none).
 */
static bool busy_more(const struct deliver_busy *b, int64_t now,
                      uint64_t nowms, bool force, int64_t *due_at)
{
	const struct queue_msg *m = b->latest;
	if (!m || !b->njobs || b->remove || b->removed || b->cool_until ||
	    m->state != QUEUE_MSG_ACTIVE || nowms < b->more_after)
		return false;
	for (const struct deliver_job *j = b->jobs; j; j = j->bnext)
		if (j->pend)
			return false;
	bool due = false;
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (!deliver_rcpt_open(r) || (b->injob && b->injob[i]))
			continue;
		int64_t t = r->next_attempt ? r->next_attempt : m->arrival;
		if (force || t <= now)
			due = true;
		else if (due_at && (*due_at < 0 || t < *due_at))
			*due_at = t;
	}
	return due;
}

/* Takes a due message in: its open recipients grouped by destination
 * (deliver_route), one job per destination on that destination's ready
 * list. Recipients of a paused destination wait in the index; a message
 * with nothing to send now cools down until the first pause ends. A
 * message that already has jobs (busy_more) gets jobs for the recipients
 * in none, built on its record as it is to be (b->latest). */
static void load(struct deliver *d, const char *qid)
{
	struct queue_msg *m;
	struct deliver_busy *b = deliver_busy_find(d, qid);
	bool more = b != NULL;
	if (more) {
		m = b->latest;
		if (!m)
			return;
	} else {
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
		b = deliver_busy_add(d, qid);
	}
	size_t *idx = calloc(m->nrcpt ? m->nrcpt : 1, sizeof *idx);
	bool *done = calloc(m->nrcpt ? m->nrcpt : 1, sizeof *done);
	if (!b || !idx || !done) {
		if (b && !more)
			deliver_busy_del(d, qid);
		if (!more)
			queue_msg_free(m);
		free(idx);
		free(done);
		return;
	}
	if (more) {
		/* Recipients in a job are that job's. */
		for (size_t i = 0; i < m->nrcpt && b->injob; i++)
			done[i] = b->injob[i];
		b->more_after = 0;
	} else {
		b->latest = m;
	}
	uint64_t paused_until = 0;
	char key[DELIVER_DEST_KEY_MAX], other[DELIVER_DEST_KEY_MAX];
	/* Direct mode: at most max_recipients_per_transaction per job (one
	 * job is one transaction). */
	size_t per_job = d->cfg->mode == CONF_DELIVERY_DIRECT &&
	                 d->cfg->max_rcpt_txn ? d->cfg->max_rcpt_txn : SIZE_MAX;
	bool route_failed = false, routing = false;
	for (size_t i = 0; i < m->nrcpt; i++) {
		if (done[i] || !deliver_rcpt_open(&m->rcpt[i]))
			continue;
		int rr = deliver_route(d, m, i, key, sizeof key);
		if (rr == -EPROTO)
			route_failed = true;
		else if (rr)
			routing = true;
		if (rr)
			continue;
		/* Every open recipient with the same key: one job. */
		size_t n = 0;
		for (size_t k = i; k < m->nrcpt && n < per_job; k++) {
			if (done[k] || !deliver_rcpt_open(&m->rcpt[k]))
				continue;
			if (k != i && (deliver_route(d, m, k, other, sizeof other) ||
			               strcmp(key, other) != 0))
				continue;
			done[k] = true;
			idx[n++] = k;
		}
		struct deliver_dest *dst = deliver_dest_get(d, key, true);
		if (!dst)
			continue;
		for (size_t k = 0; k < n && dst->direct; k++)
			deliver_direct_dest_note(d, dst, m->rcpt[idx[k]].addr);
		if (dst->paused) {
			if (!paused_until || dst->pause_until < paused_until)
				paused_until = dst->pause_until;
			/* Once per cool-down: the message waits in the index. */
			char esc[sizeof dst->reason * 4];
			log_escape(esc, sizeof esc, dst->reason,
			           strlen(dst->reason));
			log_info("%s: %zu recipient%s waiting: destination %s "
			         "paused (%s)", m->qid, n, n == 1 ? "" : "s",
			         dst->key, esc);
			continue;
		}
		struct deliver_job *j = job_new(d, b, idx, n);
		if (j)
			deliver_dest_push(dst, j);
	}
	if (route_failed)
		route_failures(d, b, done, idx);
	free(idx);
	free(done);
	/* A recipient whose domain is being looked up must not wait for
	 * another destination's pause: a short cool-down (the lookup's end
	 * wakes the schedule). */
	uint64_t soon = uv_now(d->loop) + ROUTE_WAIT_MS;
	if (paused_until && routing && soon < paused_until) {
		paused_until = soon;
		/* The schedule looks again then (deliver_schedule). */
		if (!d->route_wake || soon < d->route_wake)
			d->route_wake = soon;
	}
	if (more || b->njobs) {
		/* The jobs run; what waits for a pause or a lookup is loaded
		 * when it ends (busy_more), not at every scan. */
		if (routing && !paused_until) {
			paused_until = soon;
			if (!d->route_wake || soon < d->route_wake)
				d->route_wake = soon;
		}
		b->more_after = paused_until;
		return;
	}
	if (b->ops || b->dirty)
		return;   /* the failures' record is on its way */
	busy_forget(b);
	if (paused_until)
		b->cool_until = paused_until;
	else
		deliver_busy_del(d, qid);
}

int deliver_scan_cb(void *arg, const char *qid, int64_t due)
{
	(void)due;
	struct deliver_scan *s = arg;
	if (++s->visited > s->max_visit)
		return 1;
	uint64_t nowms = uv_now(s->d->loop);
	if (deliver_busy_is(s->d, qid, nowms)) {
		/* Taken; its recipients in no job may still be due (a job of
		 * another destination is slow or throttled). */
		struct deliver_busy *b = deliver_busy_find(s->d, qid);
		if (!b || !busy_more(b, s->now, nowms, false, &s->busy_next))
			return 0;
	}
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
	if (d->stopping || (g->mode != CONF_DELIVERY_SMARTHOST &&
	                    g->mode != CONF_DELIVERY_DIRECT))
		return;
	/* Not before startup recovery has made the index consistent: a
	 * schedule entry may still name a record without its body. The
	 * queue's notify callback calls us again when it has. */
	if (!queue_recovered(d->q))
		return;
	uint64_t nowms = uv_now(d->loop);
	for (struct deliver_dest *t = d->dests; t; t = t->next)
		deliver_dest_tick(t, nowms);
	if (g->mode == CONF_DELIVERY_DIRECT)
		deliver_direct_sweep(d, nowms, false);
	/* The smarthost is the only destination: while it is paused there is
	 * nothing to load (the messages wait in the index). */
	struct deliver_dest *sh = deliver_dest_smarthost(d);
	if (sh && sh->paused) {
		deliver_arm(d, sh->pause_until - nowms);
		return;
	}

	/* Fill the ready lists: flushed messages first, then the schedule. */
	unsigned slots = sh && sh->probing ? 1 : g->concurrency;
	if (g->mode == CONF_DELIVERY_DIRECT)
		slots = g->max_sessions < 64 ? g->max_sessions : 64;
	size_t want_total = (size_t)slots * READY_PER_SESSION + 8;
	while (d->flush && d->flush_pos < d->nflush && d->nready < want_total) {
		const char *qid = d->flush[d->flush_pos++];
		struct deliver_busy *b = deliver_busy_is(d, qid, nowms) ?
		                         deliver_busy_find(d, qid) : NULL;
		if (!b || busy_more(b, deliver_wall_now(), nowms, true, NULL))
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
		struct deliver_scan s = {
			.d = d, .ids = calloc(want, QUEUE_ID_SIZE), .want = want,
			.max_visit = want + d->nbusy + 64,
			.now = deliver_wall_now(), .busy_next = -1};
		if (s.ids) {
			int r = queue_scan_due(d->q, deliver_wall_now(), &next, deliver_scan_cb, &s);
			if (r)
				log_err("deliver: cannot read the schedule: %s",
				        strerror(-r));
			for (size_t i = 0; i < s.n; i++)
				load(d, s.ids[i]);
			if (s.visited > s.max_visit || s.n >= s.want)
				next = deliver_wall_now();   /* more is due */
			/* A busy message's other recipients fall due then. */
			if (s.busy_next >= 0 && (next < 0 || s.busy_next < next))
				next = s.busy_next;
			free(s.ids);
		}
	} else {
		next = deliver_wall_now();
	}

	log_debug("deliver: %u ready, %zu busy, %u sessions, %u destinations, "
	          "next due %" PRId64, d->nready, d->nbusy, d->nsessions,
	          d->ndests, next);
	uint64_t wait = SCAN_MAX_MS;
	if (next >= 0) {
		int64_t sec = next - deliver_wall_now();
		wait = sec <= 0 ? 1000 : (uint64_t)sec * 1000;
		if (wait > SCAN_MAX_MS)
			wait = SCAN_MAX_MS;
	}
	/* Each destination starts and feeds its own sessions; one that is
	 * paused or capped holds back only its own jobs. */
	for (struct deliver_dest *t = d->dests; t; t = t->next) {
		uint64_t rw;
		deliver_dest_run(t, nowms, &rw);
		if (rw && rw < wait)
			wait = rw;
		if (t->paused && t->pause_until > nowms &&
		    t->pause_until - nowms < wait)
			wait = t->pause_until - nowms;
	}
	/* A message cooling down while one of its domains is looked up. */
	if (d->route_wake > nowms && d->route_wake - nowms < wait)
		wait = d->route_wake - nowms;
	else if (d->route_wake <= nowms)
		d->route_wake = 0;
	deliver_dest_sweep(d, nowms);
	deliver_arm(d, wait);
}

static void notify_cb(void *arg)
{
	struct deliver *d = arg;
	/* New mail: look now (the scan is cheap; the timer debounces). */
	struct deliver_dest *sh = d->stopping ? NULL : deliver_dest_smarthost(d);
	if (!d->stopping && (d->cfg->mode == CONF_DELIVERY_DIRECT ||
	                     (d->cfg->mode == CONF_DELIVERY_SMARTHOST &&
	                      !(sh && sh->paused))))
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
	d->started = deliver_wall_now();
	d->cfg = deliver_cfg_new(conf, err, sizeof err);
	if (!d->cfg) {
		log_err("delivery: %s", err);
		free(d);
		return -EINVAL;
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

void deliver_set_dkim(struct deliver *d, struct dkim_signer *s)
{
	if (s)
		dkim_signer_ref(s);
	dkim_signer_unref(d->dkim);
	d->dkim = s;
}

void deliver_set_dns(struct deliver *d, struct dns *dns)
{
	d->dns = dns;
	deliver_direct_check_v6(d);
	if (d->cfg->mode == CONF_DELIVERY_DIRECT)
		deliver_arm(d, 0);
}

int deliver_set_conf(struct deliver *d, const struct conf *conf)
{
	char err[512] = "";
	struct deliver_cfg *g = deliver_cfg_new(conf, err, sizeof err);
	if (!g) {
		log_err("SIGHUP: delivery settings kept: %s", err);
		return -EINVAL;
	}
	/* Direct destinations keep the rates destination_policy_file gave
	 * them until they are made again. */
	for (struct deliver_dest *t = d->dests; t; t = t->next)
		if (!t->direct)
			deliver_dest_set_rates(t, g->rate_minute, g->rate_hour);
	bool same = g->mode == d->cfg->mode && g->port == d->cfg->port &&
	            strcmp(g->host, d->cfg->host) == 0;
	deliver_cfg_unref(d->cfg);
	d->cfg = g;
	/* Routing may change with the TLS policy or the MX settings. */
	deliver_direct_sweep(d, UINT64_MAX, false);
	deliver_direct_check_v6(d);
	if (!same) {
		/* Another smarthost (or none): its SIZE, if known. */
		deliver_size_load(d);
		deliver_size_notify(d);
	}
	for (struct deliver_dest *t = d->dests; t; t = t->next) {
		if (g->mode == CONF_DELIVERY_HOLD)
			deliver_dest_drop_ready(t);   /* back to hold: waiting
			                                 jobs go back */
		/* A new password or certificate deserves a try now. */
		deliver_dest_unpause(t, true);
	}
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
			queue_msg_free(b->latest);
			free(b->chg);
			free(b);
		}
	deliver_dest_sweep(d, uv_now(d->loop));
	free(d->flush);
	deliver_cfg_unref(d->cfg);
	dkim_signer_unref(d->dkim);
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
	/* Lookups in flight complete into nothing (dns_cancel). */
	deliver_direct_sweep(d, 0, true);
	for (struct deliver_dest *t = d->dests; t; t = t->next) {
		deliver_dest_drop_ready(t);
		deliver_dest_close_sessions(t);
	}
	uv_timer_stop(&d->timer);
	uv_close((uv_handle_t *)&d->timer, timer_closed_cb);
	if (d->ctl)
		deliver_ctl_close(d->ctl, ctl_closed_cb, d);
	deliver_maybe_done(d);
}

