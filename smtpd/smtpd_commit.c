/*
 * smtpd/smtpd_commit.c - The commit path of a session: the sink that streams
 * the body into the spool with relayd's Received: first, the wiring of
 * the per-credential quotas (queue/queue_quota.h: a peek at MAIL, a
 * charge before each commit, a refund when the commit fails), and the
 * queue commit whose callback lets the core answer 250 (or 4xx).
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
#include "smtpd/smtpd_tls.h"

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
	buf_printf(&h, " with %s", smtpd_proto_with(s->proto));
	/* RFC 8314 §4.3: the TLS version and cipher suite, as a comment
	 * after the protocol (OpenSSL's names: no parentheses in them). */
	if (s->tls == SESS_TLS_ON)
		buf_printf(&h, " (%s %s)", tls_stream_version(&s->tls_s),
		           tls_stream_cipher(&s->tls_s));
	buf_printf(&h, " id %s", t->qid);
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

const struct smtpd_sink_ops smtpd_sink_ops = {
	.begin = sink_begin,
	.write = sink_write,
	.abort = sink_abort,
};

/* ---- quotas --------------------------------------------------------------- */

/* The credential's limits; both 0: it has no quota. */
static struct queue_quota_limits quota_limits(const struct cred *c)
{
	struct queue_quota_limits lim = {0, 0};
	if (c) {
		lim.hourly = cred_hourly(c);
		lim.daily = cred_daily(c);
	}
	return lim;
}

/* "s=N: quota: credential NAME over its hourly limit (2/2): 450 4.7.1",
 * the queue id first once there is one (qid NULL: none yet). */
static void quota_log_over(const struct smtpd_session *s, const char *qid,
                           const char *name,
                           const struct queue_quota_usage *u,
                           const struct queue_quota_limits *lim)
{
	if (!log_enabled(LOG_INFO))
		return;
	uint32_t used = 0, limit = 0;
	const char *which = smtpd_policy_quota_over(u->hour, u->day, lim->hourly,
	                                            lim->daily, 1, &used, &limit);
	const struct smtp_reply_def *d = &smtp_replies[SMTP_R_QUOTA];
	if (!which)
		which = "hourly or daily";   /* a store that refused on its own */
	if (qid)
		log_info("%s: quota: credential %s over its %s limit (%" PRIu32
		         "/%" PRIu32 "): %u %s (s=%s)", qid, name, which, used,
		         limit, d->code, d->enh, s->sid);
	else
		log_info("s=%s: quota: credential %s over its %s limit (%" PRIu32
		         "/%" PRIu32 "): %u %s", s->sid, name, which, used, limit,
		         d->code, d->enh);
}

/* The core's spool hook at MAIL (smtpd_proto_cfg.spool): queue_min_free. */
enum smtp_reply_id smtpd_spool_mail(void *ctx, uint64_t size)
{
	struct smtpd_session *s = ctx;
	if (!s->srv->q || queue_space_check(s->srv->q, size) == 0)
		return SMTP_R__COUNT;
	log_info("s=%s: MAIL refused: less than queue_min_free free in the "
	         "spool (SIZE=%" PRIu64 "): 452 4.3.1", s->sid, size);
	return SMTP_R_STORAGE_FULL;
}

/* The core's quota hook at MAIL (smtpd_proto_cfg.quota): a short read
 * transaction on the loop thread (it never waits for the writer). It only
 * spares the client a body that could not be charged; the charge before
 * the commit is what holds under concurrent sessions. */
enum smtp_reply_id smtpd_quota_mail(void *ctx, const struct cred *c)
{
	struct smtpd_session *s = ctx;
	struct smtpd *srv = s->srv;
	struct queue_quota_limits lim = quota_limits(c);
	if ((!lim.hourly && !lim.daily) || !srv->quota.ops)
		return SMTP_R__COUNT;
	const char *name = cred_name(c);
	struct queue_quota_usage u;
	int r = srv->quota.ops->peek(srv->quota.ctx, name, (int64_t)time(NULL),
	                             &u);
	if (r < 0) {
		/* Fail closed, as the charge does (start_charge). */
		log_warn("s=%s: quota: credential %s: cannot read the %s counters: "
		         "%s", s->sid, name, srv->quota.ops->name, strerror(-r));
		return SMTP_R_STORAGE_ERR;
	}
	if (!queue_quota_exceeded(&u, &lim, 1))
		return SMTP_R__COUNT;
	quota_log_over(s, NULL, name, &u, &lim);
	return SMTP_R_QUOTA;
}

static void quota_refund_cb(void *arg, int status,
                            const struct queue_quota_usage *u)
{
	(void)arg;
	(void)u;
	if (status < 0)
		log_warn("quota: a refund failed: %s", strerror(-status));
}

/* The charged message was not queued: its unit goes back (to the hour and
 * day it was charged in). */
static void quota_refund(struct smtpd_session *s, const char *qid)
{
	if (!s->quota_charged)
		return;
	s->quota_charged = false;
	struct smtpd *srv = s->srv;
	int r = srv->quota.ops->refund(srv->quota.ctx, s->quota_key,
	                               s->quota_now, 1, quota_refund_cb, NULL);
	if (r < 0)
		log_warn("%s: quota: credential %s: the unit charged for this "
		         "message not given back: %s (s=%s)", qid, s->quota_key,
		         strerror(-r), s->sid);
}

/* ---- commit ------------------------------------------------------------- */


/* After a commit or a charge: go on reading, or finish the close or the
 * shutdown that waited for it. */
static void commit_next(struct smtpd_session *s)
{
	if (s->closing) {
		smtpd_session_maybe_free(s);
		return;
	}
	if (s->commit_pending)
		return;   /* the charged message went on to the queue */
	if (s->stop_after_commit) {
		smtpd_proto_shutdown(s->proto, &s->out);
		smtpd_session_flush(s);
		smtpd_session_close(s, true);
		return;
	}
	smtpd_session_process(s);
}

static void commit_cb(void *arg, int status)
{
	struct smtpd_session *s = arg;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	s->commit_pending = false;
	/* -EDQUOT from the core's done() means "over quota"; the queue says
	 * "no space" as -ENOSPC, but keep the two apart whatever it says. */
	if (status == -EDQUOT)
		status = -ENOSPC;
	if (status == 0) {
		char client[80], from[SMTP_PATH_MAX * 4 + 8];
		if (s->cf->conf.received_client)
			snprintf(client, sizeof client, "[%s]:%d", s->ip, s->port);
		else
			snprintf(client, sizeof client, "hidden");
		log_escape(from, sizeof from, t->sender, strlen(t->sender));
		char auth[CRED_NAME_MAX + 16] = "";
		if (t->auth[0])
			snprintf(auth, sizeof auth, ", auth=%s", t->auth);
		log_info("%s: from=<%s>, size=%" PRIu64 ", nrcpt=%zu, client=%s, "
		         "scrubbed=%u, hops=%u%s (s=%s)", t->qid, from,
		         s->commit_size, t->nrcpt, client, t->scrubbed, t->hops,
		         auth, s->sid);
		smtpd_relay_committed(&s->relay, smtpd_relay_now());
		s->quota_charged = false;   /* spent: this message has its 250 */
	} else {
		log_warn("%s: not queued: %s (s=%s)", t->qid, strerror(-status),
		         s->sid);
		quota_refund(s, t->qid);
	}
	/* A client that left before its 250 may send the message again: a
	 * duplicate, never a loss (DESIGN.md). */
	smtpd_proto_done(s->proto, status, &s->out);
	commit_next(s);
}

/* The body is complete and durable on disk: index it (queue_commit). */
static void queue_message(struct smtpd_session *s)
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
	m.dkim_sig = s->dkim_sig;
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
	free(s->dkim_sig);   /* the queue has its copy */
	s->dkim_sig = NULL;
	if (r < 0) {
		log_warn("%s: commit failed: %s (s=%s)", t->qid, strerror(-r), s->sid);
		quota_refund(s, t->qid);
		smtpd_proto_done(s->proto, r == -EDQUOT ? -ENOSPC : r, &s->out);
		return;
	}
	s->commit_pending = true;
}

/* The message will not be queued: the body goes, the core answers. */
static void commit_refuse(struct smtpd_session *s, int status)
{
	queue_body_abort(s->body);
	s->body = NULL;
	free(s->dkim_sig);
	s->dkim_sig = NULL;
	smtpd_proto_done(s->proto, status, &s->out);
}

/* The charge before the commit came back. */
static void charge_cb(void *arg, int status, const struct queue_quota_usage *u)
{
	struct smtpd_session *s = arg;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	s->commit_pending = false;
	if (status == 0)
		s->quota_charged = true;
	if (s->closing) {
		/* The client is gone (timeout, error) and never got a 250:
		 * nothing is queued, and the unit goes back. */
		quota_refund(s, t->qid);
		commit_refuse(s, -ECONNABORTED);
	} else if (status == -EDQUOT) {
		/* Another session of this credential took the last unit since
		 * our MAIL's peek. Nothing was charged. */
		struct queue_quota_limits lim = quota_limits(smtpd_proto_cred(s->proto));
		quota_log_over(s, t->qid, s->quota_key, u, &lim);
		commit_refuse(s, -EDQUOT);
	} else if (status < 0) {
		/* The store failed: fail closed (451 4.3.0, or 452 4.3.1 when
		 * it is full). Over-sending on a provider's account is worse
		 * than a retry: the client keeps the message and tries later. */
		log_warn("%s: quota: credential %s: cannot charge the %s counters: "
		         "%s; not queued (s=%s)", t->qid, s->quota_key,
		         s->srv->quota.ops->name, strerror(-status), s->sid);
		commit_refuse(s, status);
	} else {
		queue_message(s);
	}
	commit_next(s);
}

/* A credential with a quota: charge one message before the commit, so a
 * message that gets its 250 was charged exactly once (a failed commit is
 * refunded). The charge checks and counts in one write transaction on the
 * queue's writer thread: concurrent sessions of one credential never
 * overshoot its limits. */
static void start_charge(struct smtpd_session *s, const struct cred *c,
                         const struct queue_quota_limits *lim)
{
	struct smtpd *srv = s->srv;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	snprintf(s->quota_key, sizeof s->quota_key, "%s", cred_name(c));
	s->quota_now = (int64_t)time(NULL);
	s->quota_charged = false;
	int r = srv->quota.ops->charge(srv->quota.ctx, s->quota_key, s->quota_now,
	                               1, lim, charge_cb, s);
	if (r < 0) {
		/* Fail closed, as charge_cb does. */
		log_warn("%s: quota: credential %s: cannot charge the %s counters: "
		         "%s; not queued (s=%s)", t->qid, s->quota_key,
		         srv->quota.ops->name, strerror(-r), s->sid);
		commit_refuse(s, r == -EDQUOT ? -EIO : r);
		return;
	}
	s->commit_pending = true;   /* the queue holds a callback to us */
}

/* The body is complete (and signed when there are keys): charge the
 * credential's quota first when it has one, then commit. */
static void commit_continue(struct smtpd_session *s)
{
	const struct cred *c = smtpd_proto_cred(s->proto);
	struct queue_quota_limits lim = quota_limits(c);
	if ((lim.hourly || lim.daily) && s->srv->quota.ops)
		start_charge(s, c, &lim);
	else
		queue_message(s);
}

/* ---- DKIM --------------------------------------------------------------- */

/* One message signed on libuv's thread pool (issue 10 §1): RSA costs a
 * fraction of a millisecond, which must not stall the loop (or the
 * writer thread, the accept path's bottleneck). The job reads the body
 * file as it stands after scrubbing and line wrapping, before the
 * commit: the signature covers exactly the bytes that are stored. */
struct sign_job {
	uv_work_t req;
	struct smtpd_session *s;
	struct dkim_signer *signer;   /* a reference */
	int fd;
	uint64_t size;
	char qid[QUEUE_ID_SIZE];
	enum dkim_job_result res;
	char *sig;
	char dom[256];
	char why[512];
};

static void sign_work_cb(uv_work_t *req)
{
	struct sign_job *j = req->data;
	j->res = dkim_sign_fd(j->signer, j->qid, j->fd, j->size, &j->sig, j->dom,
	                      sizeof j->dom, j->why, sizeof j->why);
}

/* The signing's outcome: the signature goes with the message; a message
 * that cannot be signed is queued unsigned (logged, counted), or with
 * dkim_required refused at the end of its data. */
static void sign_done(struct smtpd_session *s, struct sign_job *j)
{
	struct smtpd *srv = s->srv;
	const struct conf *cf = &s->cf->conf;
	int refuse = 0;
	if (j->res == DKIM_SIGNED && strlen(j->sig) >= QUEUE_DKIM_SIG_MAX) {
		j->res = DKIM_FAILED;
		snprintf(j->why, sizeof j->why, "signature over %d bytes",
		         QUEUE_DKIM_SIG_MAX);
	}
	switch (j->res) {
	case DKIM_SIGNED:
		srv->dkim_signed++;
		s->dkim_sig = j->sig;
		j->sig = NULL;
		if (log_enabled(LOG_INFO)) {
			const struct dkim_key *k[2];
			size_t n = dkim_signer_select(j->signer, j->dom, k);
			log_info("%s: dkim: signed, d=%s, s=%s%s%s (s=%s)", j->qid,
			         n ? k[0]->spec.domain : j->dom,
			         n ? k[0]->spec.selector : "?", n > 1 ? "+" : "",
			         n > 1 ? k[1]->spec.selector : "", s->sid);
		}
		break;
	case DKIM_NO_FROM:
	case DKIM_NO_KEY:
		if (cf->dkim_required) {
			refuse = -ENOKEY;
			log_info("%s: dkim: %s, dkim_required: %u %s, not queued "
			         "(s=%s)", j->qid, j->why,
			         smtp_replies[SMTP_R_DKIM_NO_KEY].code,
			         smtp_replies[SMTP_R_DKIM_NO_KEY].enh, s->sid);
		} else {
			log_debug("%s: dkim: %s: not signed (s=%s)", j->qid, j->why,
			          s->sid);
		}
		break;
	case DKIM_FAILED:
		srv->dkim_failures++;
		if (cf->dkim_required) {
			refuse = -EKEYREJECTED;
			log_warn("%s: dkim: signing failed for %s: %s; dkim_required: "
			         "%u %s, not queued (s=%s)", j->qid,
			         j->dom[0] ? j->dom : "?", j->why,
			         smtp_replies[SMTP_R_DKIM_FAILED].code,
			         smtp_replies[SMTP_R_DKIM_FAILED].enh, s->sid);
		} else {
			log_warn("%s: dkim: signing failed for %s: %s; queued unsigned "
			         "(s=%s)", j->qid, j->dom[0] ? j->dom : "?", j->why,
			         s->sid);
		}
		break;
	}
	if (s->closing)
		commit_refuse(s, -ECONNABORTED);   /* no 250 was given */
	else if (refuse)
		commit_refuse(s, refuse);
	else
		commit_continue(s);
}

static void sign_after_cb(uv_work_t *req, int status)
{
	struct sign_job *j = req->data;
	struct smtpd_session *s = j->s;
	struct smtpd *srv = s->srv;
	srv->dkim_jobs--;
	s->commit_pending = false;
	if (status < 0) {
		j->res = DKIM_FAILED;
		snprintf(j->why, sizeof j->why, "%s", uv_strerror(status));
	}
	sign_done(s, j);
	free(j->sig);
	dkim_signer_unref(j->signer);
	free(j);
	commit_next(s);
}

/* Starts the signing; false when there is nothing to sign with. */
static bool start_sign(struct smtpd_session *s)
{
	struct smtpd *srv = s->srv;
	if (!srv->dkim || !dkim_signer_key(srv->dkim, 0))
		return false;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	struct sign_job *j = calloc(1, sizeof *j);
	int fd = queue_body_read_fd(s->body);
	if (!j || fd < 0) {
		free(j);
		int r = fd < 0 ? fd : -ENOMEM;
		log_warn("%s: dkim: cannot sign: %s (s=%s)", t->qid, strerror(-r),
		         s->sid);
		commit_refuse(s, r);
		return true;
	}
	j->s = s;
	j->signer = srv->dkim;
	dkim_signer_ref(j->signer);
	j->fd = fd;
	j->size = queue_body_size(s->body);
	memcpy(j->qid, t->qid, sizeof j->qid);
	j->req.data = j;
	int r = uv_queue_work(srv->loop, &j->req, sign_work_cb, sign_after_cb);
	if (r < 0) {
		j->res = DKIM_FAILED;
		snprintf(j->why, sizeof j->why, "uv_queue_work: %s", uv_strerror(r));
		sign_done(s, j);
		dkim_signer_unref(j->signer);
		free(j);
		return true;
	}
	srv->dkim_jobs++;
	s->commit_pending = true;   /* the pool holds a pointer to us */
	return true;
}

void smtpd_commit_start(struct smtpd_session *s)
{
	if (!start_sign(s))
		commit_continue(s);
}
