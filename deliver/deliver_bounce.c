/*
 * deliver/deliver_bounce.c - DSN orchestration: queues RFC 3464 delivery
 * status notifications (composed on a pool thread by deliver_dsn.c, the
 * pure composer) through the same spool as client mail, and records the
 * original's new state only once its failure report is durable. Owns the
 * rules of who gets a report (the sender, the postmaster for <>, nobody
 * for a bounce of a bounce).
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/hdr.h"
#include "common/log.h"
#include "common/smtp.h"
#include "deliver/deliver_dsn.h"
#include "dkim/dkim.h"

/* Bytes of the original read per step while composing a DSN. */
#define DSN_CHUNK (64 * 1024)

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
	char *rewrite_from;          /* rewrite_from_header's sender, or NULL */
	struct queue_body *body;
	int err;
	/* DKIM (issue 10 §1): the report is signed with the key of
	 * hostname's domain, when there is one. */
	struct dkim_signer *dkim;    /* a reference, or NULL */
	char *sig;                   /* the DKIM-Signature block, or NULL */
	enum dkim_job_result dkim_res;
	char dkim_why[512];
	/* A failure report is durable before the original changes: the
	 * original's new state (after) is recorded only once the DSN is
	 * committed. If the DSN cannot be queued, the recipients it was
	 * about (after_idx) are deferred instead, so nothing is lost. */
	bool after;                  /* the original's busy entry waits */
	char after_qid[QUEUE_ID_SIZE];
	bool after_remove;
	size_t *after_idx, nafter;
};

static void settle_after(struct deliver *d, struct dsn_work *w, bool dsn_ok);

static void dsn_work_free(struct dsn_work *w)
{
	free(w->after_idx);
	for (size_t i = 0; i < w->nstrs; i++)
		free(w->strs[i]);
	free(w->strs);
	free(w->rcpt);
	queue_msg_free(w->orig);
	free(w->sig);
	free(w->rewrite_from);
	dkim_signer_unref(w->dkim);
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
	/* rewrite_from_header applies to reports as to client mail (the
	 * smarthost may take no other From:), before they are signed. */
	const uint8_t *hend = r == 0 && w->rewrite_from ?
	    memmem(out.data, out.len, "\r\n\r\n", 4) : NULL;
	if (hend) {
		size_t hlen = (size_t)(hend - out.data) + 2;
		struct buf nh = BUF_INIT(2 * HDR_REWRITE_MAX);
		r = hdr_rewrite_from(out.data, hlen, w->rewrite_from, &nh);
		if (r == 0)
			r = buf_append(&nh, out.data + hlen, out.len - hlen);
		if (r == 0)
			r = queue_body_write(w->body, nh.data, nh.len);
		buf_free(&nh);
	} else if (r == 0) {
		r = queue_body_write(w->body, out.data, out.len);
	}
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
	if (r == 0 && w->dkim) {
		/* The From: is MAILER-DAEMON@hostname: its domain, or the
		 * nearest parent with a key, signs. */
		int fd = queue_body_read_fd(w->body);
		char dom[256];
		if (fd < 0) {
			w->dkim_res = DKIM_FAILED;
			snprintf(w->dkim_why, sizeof w->dkim_why, "%s",
			         strerror(-fd));
		} else {
			/* Rewritten, the From: is rewrite_sender's: its key. */
			w->dkim_res = dkim_sign_fd_for(w->dkim, w->newqid,
			                               w->rewrite_from ? NULL : w->host,
			                               fd,
			                               queue_body_size(w->body),
			                               &w->sig, dom, sizeof dom,
			                               w->dkim_why,
			                               sizeof w->dkim_why);
		}
	}
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
		queue_stats_count(d->q, deliver_wall_now(), QUEUE_STATS_DSN, NULL,
		                  NULL, 1);
		log_info("%s: sender %s notification: %s", w->orig->qid,
		         w->delayed ? "delay" : "non-delivery", w->newqid);
	} else {
		log_err("%s: the %s notification could not be queued: %s",
		        w->orig->qid, w->delayed ? "delay" : "non-delivery",
		        strerror(-status));
	}
	settle_after(d, w, status == 0);
	dsn_work_free(w);
	deliver_maybe_done(d);
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
			.arrival = deliver_wall_now(),
			.state = QUEUE_MSG_ACTIVE,
			.flags = flags,
			.sender = "",
			.nrcpt = 1,
			.rcpt = &rc,
		};
		memcpy(m.qid, w->newqid, QUEUE_ID_SIZE);
		if (w->dkim && w->dkim_res == DKIM_SIGNED &&
		    strlen(w->sig) >= QUEUE_DKIM_SIG_MAX) {
			w->dkim_res = DKIM_FAILED;
			snprintf(w->dkim_why, sizeof w->dkim_why, "signature too long");
		}
		if (w->dkim)
			dkim_signer_count(d->dkim, w->dkim_res);
		if (w->dkim && w->dkim_res == DKIM_SIGNED) {
			m.dkim_sig = w->sig;
		} else if (w->dkim && w->dkim_res == DKIM_FAILED) {
			log_warn("%s: dkim: signing the notification failed: %s; "
			         "queued unsigned", w->newqid, w->dkim_why);
		}
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
	deliver_maybe_done(d);
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

/* The original's new state, once its failure report is durable (or
 * could not be made: then the recipients it was about are deferred). */
static void settle_after(struct deliver *d, struct dsn_work *w, bool dsn_ok)
{
	if (!w->after)
		return;
	w->after = false;
	struct deliver_busy *b = deliver_busy_find(d, w->after_qid);
	if (!b)
		return;
	b->ops--;
	if (b->latest && !dsn_ok) {
		struct queue_msg *m = b->latest;
		int64_t next = deliver_wall_now() +
		               (int64_t)(d->cfg->retry_min / 1000);
		for (size_t k = 0; k < w->nafter; k++) {
			struct queue_rcpt *r = &m->rcpt[w->after_idx[k]];
			r->state = QUEUE_RCPT_DEFERRED;
			r->next_attempt = next > deliver_wall_now()
			                  ? next : deliver_wall_now() + 1;
			deliver_busy_mark(b, w->after_idx[k]);
		}
		if (b->reply) {
			char t[160];
			snprintf(t, sizeof t, "err %s: the bounce could not be "
			         "queued; the message stays", m->qid);
			b->reply(b->reply_arg, t);
			b->reply = NULL;
		}
	} else if (dsn_ok && w->after_remove) {
		b->remove = true;
	}
	b->dirty = true;
	deliver_busy_flush(d, b);
}

/*
 * Queues one DSN about m for the recipients in items[]. To the envelope
 * sender; for a null sender, to the postmaster when one is configured and
 * the message was not already for the postmaster; otherwise there is none
 * (a log line says so). Never loops: a DSN has the null sender itself.
 *
 * after (may be NULL): the busy entry whose latest is m, written (or
 * removed, with remove) only once the DSN is committed.
 */
void deliver_send_dsn(struct deliver *d, const struct queue_msg *m,
                     const struct deliver_dsn_item *items, size_t n, bool delayed,
                     int64_t retry_until, struct deliver_busy *after,
                     bool remove)
{
	const char *to = m->sender;
	struct dsn_work *w = calloc(1, sizeof *w);
	if (!w) {
		log_err("%s: no notification: out of memory", m->qid);
		if (after) {   /* as if it could not be queued */
			after->ops--;
			if (after->latest) {
				for (size_t k = 0; k < n; k++) {
					struct queue_rcpt *r =
						&after->latest->rcpt[items[k].i];
					r->state = QUEUE_RCPT_DEFERRED;
					r->next_attempt = deliver_wall_now() + 1;
					deliver_busy_mark(after, items[k].i);
				}
			}
			if (after->reply) {
				after->reply(after->reply_arg, "err out of memory");
				after->reply = NULL;
			}
			after->dirty = true;
			deliver_busy_flush(d, after);
		}
		return;
	}
	w->d = d;
	w->after = after != NULL;
	if (after)
		memcpy(w->after_qid, after->qid, QUEUE_ID_SIZE);
	w->after_remove = remove;
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
	if (d->cfg->rewrite_from && d->cfg->rewrite_sender &&
	    !(w->rewrite_from = strdup(d->cfg->rewrite_sender)))
		goto fail;
	if (d->dkim && dkim_signer_key(d->dkim, 0)) {
		w->dkim = d->dkim;
		dkim_signer_ref(w->dkim);
	}
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
		o->remote_mta = items[k].remote ?
		                keep(w, r->mx ? r->mx : d->cfg->host) : NULL;
		o->diag = items[k].remote ? r->last_reply : NULL;
		o->reason = keep(w, items[k].reason ? items[k].reason :
		                 (!items[k].remote ? r->last_reply : NULL));
		o->last_attempt = r->attempts ? deliver_wall_now() : 0;
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

bool deliver_wants(const struct queue_rcpt *r, uint8_t bit)
{
	if (r->notify & QUEUE_NOTIFY_NEVER)
		return false;
	/* No NOTIFY: failures, and delays when delay warnings are on (as
	 * Postfix does with delay_warning_time). */
	return r->notify == 0 || (r->notify & bit);
}

void deliver_settle(struct deliver *d, struct deliver_busy *b, bool remove,
                    const struct deliver_dsn_item *fail, size_t nfail,
                    deliver_ctl_reply_fn reply, void *arg, const char *ok_text)
{
	if (reply) {
		/* Operator verbs act only on messages with nothing else on
		 * their way (deliver_verbs.c): no other request waits. They
		 * change the message as a whole (hold, release, requeue). */
		b->whole = true;
		b->reply = reply;
		b->reply_arg = arg;
		snprintf(b->ok_text, sizeof b->ok_text, "%s",
		         ok_text ? ok_text : "");
	}
	if (nfail) {
		/* Counted before the report starts: it may end before
		 * deliver_send_dsn returns. */
		b->ops++;
		deliver_send_dsn(d, b->latest, fail, nfail, false, 0, b, remove);
		return;
	}
	if (remove)
		b->remove = true;
	b->dirty = true;
	deliver_busy_flush(d, b);
}

/* relayctl bounce: every open recipient of m fails now; appended to
 * fail[] (room for m->nrcpt). */
void deliver_fail_open(struct deliver *d, struct queue_msg *m, const char *why,
                      struct deliver_dsn_item *fail, size_t *nfail)
{
	for (size_t i = 0; i < m->nrcpt; i++) {
		struct queue_rcpt *r = &m->rcpt[i];
		if (!deliver_rcpt_open(r))
			continue;
		r->state = QUEUE_RCPT_BOUNCED;
		deliver_set_reply(r, why);
		d->n_bounced++;
		queue_stats_count(d->q, deliver_wall_now(), QUEUE_STATS_BOUNCED,
		                  NULL, queue_stats_domain(r->addr), 1);
		deliver_log_result(m, r, NULL, NULL, "5.0.0", "bounced", why);
		if (deliver_wants(r, QUEUE_NOTIFY_FAILURE)) {
			struct deliver_dsn_item *it = &fail[(*nfail)++];
			it->i = i;
			snprintf(it->status, sizeof it->status, "5.0.0");
			it->reason = why;
			it->remote = false;
		}
	}
}
