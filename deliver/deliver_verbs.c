/*
 * deliver/deliver_verbs.c - The scheduler's operator verbs on the control
 * socket (deliver_ctl.h): flush, hold, release, delete, bounce, requeue,
 * stats, destinations, and pause/resume of a destination, each acting on the index through the scheduler so that a
 * message in flight is never changed under its session.
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/smtp.h"
#include "deliver/deliver_ctl.h"
#include "dkim/dkim.h"

/* Every destination tries again now (relayctl flush). */
static void unpause_all(struct deliver *d)
{
	for (struct deliver_dest *t = d->dests; t; t = t->next)
		deliver_dest_unpause(t, false);
}

/* Takes b's jobs that wait for a session back (their recipients stay as
 * the index has them); those in a session are left. May free b (then
 * returns true). */
static bool drop_waiting(struct deliver *d, struct deliver_busy *b)
{
	unsigned n = b->njobs, in = 0;
	for (struct deliver_job *j = b->jobs; j; j = j->bnext)
		in += j->in_session;
	for (unsigned k = 0; k < n - in; k++) {
		struct deliver_job *j = b->jobs;
		while (j->in_session)
			j = j->bnext;
		deliver_dest_unready(j->dest, j);
		deliver_job_drop(d, j);   /* the last may free b */
	}
	return in == 0 && n > 0;
}

static void flush_all(struct deliver *d, deliver_ctl_reply_fn reply, void *arg)
{
	/* Every scheduled message, whatever its next attempt, and every
	 * destination unpaused first: what waited for a pause (a cooling
	 * message, a busy one's recipients in no job) is taken now too. */
	unpause_all(d);
	deliver_busy_uncool(d);
	uint64_t nmsg = 0, nsched = 0;
	queue_count(d->q, &nmsg, &nsched);
	/* A busy message counts when some recipient is in no job. */
	struct deliver_scan s = {.d = d, .now = INT64_MAX, .busy_next = -1};
	s.want = (size_t)nsched + 1;
	s.max_visit = (size_t)nsched + 1;
	s.ids = calloc(s.want, QUEUE_ID_SIZE);
	if (!s.ids) {
		reply(arg, "err out of memory");
		return;
	}
	int64_t next;
	queue_scan_due(d->q, INT64_MAX, &next, deliver_scan_cb, &s);
	free(d->flush);
	d->flush = s.ids;
	d->nflush = s.n;
	d->flush_pos = 0;
	char t[96];
	snprintf(t, sizeof t, "ok flushing %zu message%s", s.n,
	         s.n == 1 ? "" : "s");
	reply(arg, t);
	deliver_schedule(d);
}

/* ---- verbs on one message --------------------------------------------- */

/* What a verb on one message works with: m (loaded, owned by the caller)
 * is changed in place; the verb says whether it goes (remove), which
 * recipients a failure report is about (fail[], room for m->nrcpt), and
 * the text of the "ok" reply. */
struct verb_msg {
	struct deliver *d;
	struct queue_msg *m;
	int64_t now;
	bool remove;
	struct deliver_dsn_item *fail;
	size_t nfail;
	char ok[96];
	char err[160];   /* set when the verb refuses (returns -1) */
};

static void due_now(struct queue_msg *m, int64_t now)
{
	for (size_t i = 0; i < m->nrcpt; i++)
		if (deliver_rcpt_open(&m->rcpt[i]))
			m->rcpt[i].next_attempt = now;
}

static int verb_flush(struct verb_msg *v)
{
	if (v->m->state == QUEUE_MSG_HOLD) {
		snprintf(v->err, sizeof v->err, "err %s: on hold; release it first",
		         v->m->qid);
		return -1;
	}
	due_now(v->m, v->now);
	unpause_all(v->d);
	snprintf(v->ok, sizeof v->ok, "%s: flushed", v->m->qid);
	return 0;
}

static int verb_hold(struct verb_msg *v)
{
	v->m->state = QUEUE_MSG_HOLD;
	snprintf(v->ok, sizeof v->ok, "%s: held", v->m->qid);
	return 0;
}

static int verb_release(struct verb_msg *v)
{
	v->m->state = QUEUE_MSG_ACTIVE;
	due_now(v->m, v->now);
	snprintf(v->ok, sizeof v->ok, "%s: released", v->m->qid);
	return 0;
}

static int verb_delete(struct verb_msg *v)
{
	v->remove = true;
	snprintf(v->ok, sizeof v->ok, "%s: deleted", v->m->qid);
	return 0;
}

static int verb_bounce(struct verb_msg *v)
{
	v->fail = calloc(v->m->nrcpt ? v->m->nrcpt : 1, sizeof *v->fail);
	if (!v->fail) {
		snprintf(v->err, sizeof v->err, "err out of memory");
		return -1;
	}
	deliver_fail_open(v->d, v->m, "bounced by the operator", v->fail,
	                  &v->nfail);
	v->remove = true;
	snprintf(v->ok, sizeof v->ok, "%s: bounced", v->m->qid);
	return 0;
}

static int verb_requeue(struct verb_msg *v)
{
	for (size_t i = 0; i < v->m->nrcpt; i++) {
		struct queue_rcpt *r = &v->m->rcpt[i];
		if (!deliver_rcpt_open(r))
			continue;
		r->state = QUEUE_RCPT_PENDING;
		r->attempts = 0;
		r->next_attempt = v->now;
		free(r->last_reply);
		r->last_reply = NULL;
	}
	v->m->flags &= (uint8_t)~QUEUE_F_WARNED;
	snprintf(v->ok, sizeof v->ok, "%s: requeued", v->m->qid);
	return 0;
}

/* ---- verbs without a message ------------------------------------------- */

static void verb_stats(struct deliver *d, deliver_ctl_reply_fn reply,
                       void *arg)
{
	char js[4096], out[4200];
	deliver_stats_json(d, js, sizeof js);
	snprintf(out, sizeof out, "ok %s", js);
	reply(arg, out);
}

/* ok {"destinations":[...]}: each destination the scheduler holds now
 * (deliver_dest_json). */
static void verb_destinations(struct deliver *d, deliver_ctl_reply_fn reply,
                              void *arg)
{
	struct buf out;
	buf_init(&out, DELIVER_CTL_REPLY_MAX - 1);
	int r = buf_appends(&out, "ok {\"destinations\":[");
	int j = deliver_dest_json(d, &out);
	if (r == 0)
		r = j;
	if (r == 0)
		r = buf_append(&out, "]}", 3);   /* with the NUL */
	if (r < 0)
		reply(arg, r == -ENOBUFS ? "err reply too long" : "err out of memory");
	else
		reply(arg, (const char *)out.data);
	buf_free(&out);
}

/* ---- relayctl pause|resume DESTINATION ------------------------------- */

/* The destination an operator names: its key or its name as `relayctl
 * destinations` prints them; in smarthost mode also "smarthost"; in
 * direct mode also a recipient domain (the destination that domain
 * routes to, looked up now if need be). create: make it (a pause before
 * any mail). NULL with err the reply. */
static struct deliver_dest *named_dest(struct deliver *d, const char *name,
                                       bool create, char *err, size_t errlen)
{
	struct deliver_cfg *g = d->cfg;
	char key[DELIVER_DEST_KEY_MAX];
	for (struct deliver_dest *t = d->dests; t; t = t->next)
		if (strcmp(t->key, name) == 0 || strcmp(t->name, name) == 0)
			return t;
	if (g->mode == CONF_DELIVERY_SMARTHOST &&
	    deliver_route(d, NULL, 0, key, sizeof key) == 0 &&
	    (strcmp(name, "smarthost") == 0 || strcmp(name, key) == 0 ||
	     strcmp(name, key + strlen("smarthost:")) == 0)) {
		struct deliver_dest *t = deliver_dest_get(d, key, create);
		if (!t)
			snprintf(err, errlen, create ? "err out of memory" :
			         "err %s: not paused", key);
		return t;
	}
	/* Direct: a destination forgotten while idle (its key as it was
	 * printed) is made again while a domain routed to it is known. */
	char dom[SMTP_DOMAIN_MAX + 1];
	if (g->mode == CONF_DELIVERY_DIRECT && create &&
	    deliver_direct_key_known(d, name, dom, sizeof dom)) {
		struct deliver_dest *t = deliver_dest_get(d, name, true);
		char rcpt[SMTP_DOMAIN_MAX + 16];
		snprintf(rcpt, sizeof rcpt, "postmaster@%.*s", SMTP_DOMAIN_MAX,
		         dom);
		if (t)
			deliver_direct_dest_note(d, t, rcpt);
		else
			snprintf(err, errlen, "err out of memory");
		return t;
	}
	if (g->mode == CONF_DELIVERY_DIRECT && !strchr(name, ':') &&
	    !strchr(name, '@') && name[0] && name[0] != '.' &&
	    strlen(name) <= SMTP_DOMAIN_MAX) {
		char rcpt[SMTP_DOMAIN_MAX + 16];
		struct deliver_reply fail;
		snprintf(rcpt, sizeof rcpt, "postmaster@%.*s", SMTP_DOMAIN_MAX,
		         name);
		int r = deliver_direct_route(d, rcpt, key, sizeof key, &fail);
		if (r == -EAGAIN) {
			/* relayctl asks again (a bounded number of times). */
			snprintf(err, errlen, "err busy %s: its MX hosts are being "
			         "looked up; try again in a moment", name);
			return NULL;
		}
		if (r == -EPROTO) {
			snprintf(err, errlen, "err %.255s: %.256s", name, fail.text);
			return NULL;
		}
		if (r) {
			snprintf(err, errlen, "err %s: %s", name, strerror(-r));
			return NULL;
		}
		struct deliver_dest *t = deliver_dest_get(d, key, create);
		if (!t) {
			snprintf(err, errlen, create ? "err out of memory" :
			         "err %s (%s): not paused", key, name);
			return NULL;
		}
		deliver_direct_dest_note(d, t, rcpt);
		return t;
	}
	snprintf(err, errlen, "err no destination '%s' (relayctl destinations "
	         "lists them%s)", name, g->mode == CONF_DELIVERY_DIRECT ?
	         "; a recipient domain names the destination it routes to" :
	         g->mode == CONF_DELIVERY_SMARTHOST ? "; 'smarthost' names "
	         "the smarthost" : "");
	return NULL;
}

/* Longest pause an operator may ask for: 10 years. */
#define OP_PAUSE_MAX_S (10ll * 365 * 24 * 3600)

/* "pause DEST [SECONDS]", "resume DEST". */
static void verb_pause_resume(struct deliver *d, const char *line,
                              deliver_ctl_reply_fn reply, void *arg)
{
	char verb[16] = "", name[DELIVER_DEST_KEY_MAX] = "", secs[32] = "";
	char t[DELIVER_DEST_KEY_MAX + 256], junk[2];
	int n = sscanf(line, "%15s %319s %31s %1s", verb, name, secs, junk);
	bool pause = strcmp(verb, "pause") == 0;
	if (n < 2 || n > (pause ? 3 : 2)) {
		reply(arg, pause ? "err usage: pause DESTINATION [SECONDS]" :
		      "err usage: resume DESTINATION");
		return;
	}
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST &&
	    d->cfg->mode != CONF_DELIVERY_DIRECT) {
		reply(arg, "err delivery = hold: there are no destinations");
		return;
	}
	long long sec = 0;
	if (n == 3) {
		char *end;
		errno = 0;
		sec = strtoll(secs, &end, 10);
		if (errno || *end || sec < 1 || sec > OP_PAUSE_MAX_S) {
			reply(arg, "err the pause's length is a number of seconds "
			      "from 1 to 10 years");
			return;
		}
	}
	struct deliver_dest *dst = named_dest(d, name, pause, t, sizeof t);
	if (!dst) {
		reply(arg, t);
		return;
	}
	if (strncmp(dst->key, "dns:", 4) == 0) {
		snprintf(t, sizeof t, "err %s: routing failed for it; there is "
		         "nothing to pause", dst->key);
		reply(arg, t);
		return;
	}
	if (pause) {
		deliver_dest_op_pause(dst, (uint64_t)sec * 1000);
		if (sec)
			snprintf(t, sizeof t, "ok %s: paused for %lld s", dst->key,
			         sec);
		else
			snprintf(t, sizeof t, "ok %s: paused until resumed",
			         dst->key);
	} else if (deliver_dest_op_resume(dst)) {
		snprintf(t, sizeof t, "ok %s: resumed", dst->key);
	} else {
		snprintf(t, sizeof t, "err %s: not paused", dst->key);
	}
	reply(arg, t);
}

/* ---- the table ---------------------------------------------------------- */

#define VERB_QID      0x1   /* takes a queue id */
#define VERB_QID_OPT  0x2   /* ... or none (then `all` runs) */
#define VERB_LINE     0x4   /* `line` gets the whole request line */

struct deliver_verb {
	const char *name;
	unsigned flags;           /* VERB_* */
	/* Without a queue id (stats; flush of everything). */
	void (*all)(struct deliver *d, deliver_ctl_reply_fn reply, void *arg);
	/* On one message: 0, or -1 with v->err the reply. */
	int (*one)(struct verb_msg *v);
	/* While the message is in a session: DELIVER_PEND_* to act when the
	 * attempt ends, and the word for the reply; 0: refused for now. */
	unsigned pend;
	const char *pend_done;
	/* VERB_LINE: arguments of its own. */
	void (*line)(struct deliver *d, const char *line,
	             deliver_ctl_reply_fn reply, void *arg);
};

static const struct deliver_verb verbs[] = {
	{"stats",   0,            verb_stats, NULL, 0, NULL, NULL},
	{"destinations", 0,       verb_destinations, NULL, 0, NULL, NULL},
	{"flush",   VERB_QID_OPT, flush_all, verb_flush, 0, NULL, NULL},
	{"hold",    VERB_QID,     NULL, verb_hold, DELIVER_PEND_HOLD, "held", NULL},
	{"release", VERB_QID,     NULL, verb_release, 0, NULL, NULL},
	{"delete",  VERB_QID,     NULL, verb_delete, DELIVER_PEND_DELETE,
	 "deleted", NULL},
	{"bounce",  VERB_QID,     NULL, verb_bounce, DELIVER_PEND_BOUNCE,
	 "bounced", NULL},
	{"requeue", VERB_QID,     NULL, verb_requeue, 0, NULL, NULL},
	{"pause",   VERB_LINE,    NULL, NULL, 0, NULL, verb_pause_resume},
	{"resume",  VERB_LINE,    NULL, NULL, 0, NULL, verb_pause_resume},
};
#define NVERBS (sizeof verbs / sizeof *verbs)

int deliver_ctl_verb(struct deliver *d, const char *verb,
                     deliver_ctl_verb_fn fn, void *arg)
{
	for (size_t i = 0; i < NVERBS; i++)
		if (strcmp(verbs[i].name, verb) == 0)
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
	const struct deliver_verb *vb = NULL;
	for (size_t i = 0; i < NVERBS && !vb; i++)
		if (strcmp(verbs[i].name, verb) == 0)
			vb = &verbs[i];
	if (!vb) {
		reply(arg, "err unknown request");
		return;
	}
	if (vb->flags & VERB_LINE) {
		vb->line(d, line, reply, arg);
		return;
	}
	if (!(vb->flags & (VERB_QID | VERB_QID_OPT)) ||
	    (n == 1 && (vb->flags & VERB_QID_OPT))) {
		vb->all(d, reply, arg);
		return;
	}
	if (n < 2 || !queue_id_valid(qid)) {
		reply(arg, "err a queue id is needed");
		return;
	}
	struct deliver_busy *b = deliver_busy_find(d, qid);
	struct queue_msg *m = NULL;
	if (b && b->njobs && !b->ops && !b->dirty) {
		/* Jobs waiting for a session and none in one: the verb acts
		 * on the message as loaded; the jobs go. */
		bool in = false;
		for (struct deliver_job *j = b->jobs; j; j = j->bnext)
			in |= j->in_session;
		if (!in) {
			m = b->latest;
			b->latest = NULL;
			drop_waiting(d, b);   /* frees b */
			b = NULL;
		}
	}
	if (b) {
		bool in = false;
		for (struct deliver_job *j = b->jobs; j; j = j->bnext)
			in |= j->in_session;
		if (in && vb->pend) {
			/* Delivery is under way: act when it ends; what waits
			 * for a session does not start. */
			for (struct deliver_job *j = b->jobs; j; j = j->bnext)
				if (j->in_session)
					j->pend |= vb->pend;
			drop_waiting(d, b);
			snprintf(t, sizeof t, "ok %s: being delivered; will be %s when "
			         "the attempt ends", qid, vb->pend_done);
			reply(arg, t);
			return;
		}
		snprintf(t, sizeof t, "err %s: being delivered; try again shortly",
		         qid);
		reply(arg, t);
		return;
	}
	struct verb_msg v = {.d = d, .now = deliver_wall_now(), .m = m};
	if (!v.m) {
		int r = queue_get(d->q, qid, &v.m);
		if (r) {
			snprintf(t, sizeof t, "err %s: %s", qid,
			         r == -ENOENT ? "no such message" : strerror(-r));
			reply(arg, t);
			return;
		}
	}
	if (vb->one(&v) < 0) {
		reply(arg, v.err);
		queue_msg_free(v.m);
		free(v.fail);
		return;
	}
	b = deliver_busy_add(d, qid);
	if (!b) {
		reply(arg, "err out of memory");
		queue_msg_free(v.m);
		free(v.fail);
		return;
	}
	b->latest = v.m;
	/* The reply goes out when the change (and a bounce's report) is
	 * durable. */
	deliver_settle(d, b, v.remove, v.fail, v.nfail, reply, arg, v.ok);
	free(v.fail);
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
	/* The route: the smarthost's destination (none yet, or forgotten
	 * when idle: all is well). */
	struct deliver_dest *sh = deliver_dest_smarthost(d);
	char name[300], reason[(DELIVER_REPLY_TEXT_MAX - 64) * 6 + 4];
	snprintf(name, sizeof name, "%s:%u", g->host, g->port);
	json_str(reason, sizeof reason, sh ? sh->reason : "");
	char route[sizeof reason + 400];
	bool paused = sh && sh->paused;
	if (g->mode == CONF_DELIVERY_DIRECT)
		/* Many destinations: `relayctl destinations` has each. */
		snprintf(route, sizeof route,
		         "{\"state\":\"direct\",\"destinations\":%u}",
		         d->ndests);
	else if (g->mode != CONF_DELIVERY_SMARTHOST)
		snprintf(route, sizeof route, "{\"state\":\"hold\"}");
	else
		snprintf(route, sizeof route,
		         "{\"name\":\"%s\",\"state\":\"%s\",\"until\":%" PRId64
		         ",\"failures\":%u,\"reason\":%s}", name,
		         paused ? "paused" : "ok",
		         paused ? sh->pause_until_wall : 0, sh ? sh->fails : 0,
		         reason);
	struct dkim_counts dc = dkim_signer_counts(d->dkim);
	/* The statistics counted and not yet written to the history
	 * (relayctl status adds them to the buckets it reads). */
	int64_t sh_hour;
	const struct queue_stats_bucket *sb = queue_stats_unflushed(d->q,
	                                                            &sh_hour);
	snprintf(out, outlen,
	         "{\"running\":true,\"pid\":%d,\"uptime\":%" PRId64
	         ",\"delivery\":\"%s\",\"queue\":{\"messages\":%" PRIu64
	         ",\"active\":%" PRIu64 ",\"hold\":%" PRIu64
	         ",\"in_flight\":%zu},"
	         "\"sessions\":%u,\"attempts\":%" PRIu64 ",\"sent\":%" PRIu64
	         ",\"deferred\":%" PRIu64 ",\"bounced\":%" PRIu64
	         ",\"notifications\":%" PRIu64
	         ",\"notifications_dropped\":%" PRIu64
	         ",\"dkim_signed\":%" PRIu64 ",\"dkim_unsigned\":%" PRIu64
	         ",\"dkim_failed\":%" PRIu64
	         ",\"smarthost_size\":%" PRIu64 ",\"unflushed\":{\"hour\":%"
	         PRId64 ",\"accepted\":%" PRIu64 ",\"rejected\":%" PRIu64
	         ",\"sent\":%" PRIu64 ",\"deferred\":%" PRIu64
	         ",\"bounced\":%" PRIu64 "},\"route\":%s}",
	         (int)getpid(), deliver_wall_now() - d->started,
	         g->mode == CONF_DELIVERY_SMARTHOST ? "smarthost" :
	         g->mode == CONF_DELIVERY_DIRECT ? "direct" : "hold",
	         nmsg, nsched, nmsg > nsched ? nmsg - nsched : 0, d->nbusy,
	         d->nsessions, d->n_attempts, d->n_sent,
	         d->n_deferred, d->n_bounced, d->n_dsn, d->n_dsn_dropped,
	         dc.signed_msgs, dc.unsigned_msgs, dc.failed,
	         d->sh_size, sh_hour, sb->c[QUEUE_STATS_ACCEPTED],
	         sb->c[QUEUE_STATS_REJECTED], sb->c[QUEUE_STATS_SENT],
	         sb->c[QUEUE_STATS_DEFERRED], sb->c[QUEUE_STATS_BOUNCED], route);
}


/* ---- Prometheus metrics (smtpd/metrics.c serves them) ------------------- */

static void prom_head(struct buf *out, const char *name, const char *type,
                      const char *help)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_one(struct buf *out, const char *name, const char *type,
                     const char *help, uint64_t v)
{
	prom_head(out, name, type, help);
	buf_printf(out, "%s %" PRIu64 "\n", name, v);
}

void deliver_metrics(struct deliver *d, struct buf *out)
{
	uint64_t nmsg = 0, nsched = 0;
	int64_t oldest = -1;
	queue_count(d->q, &nmsg, &nsched);
	queue_oldest(d->q, &oldest);
	int64_t now = deliver_wall_now();
	prom_head(out, "relayd_queue_messages", "gauge",
	          "Messages in the queue by state (active: scheduled for "
	          "delivery; hold: held, nothing scheduled).");
	buf_printf(out, "relayd_queue_messages{state=\"active\"} %" PRIu64 "\n"
	           "relayd_queue_messages{state=\"hold\"} %" PRIu64 "\n",
	           nsched, nmsg > nsched ? nmsg - nsched : 0);
	prom_one(out, "relayd_queue_in_flight", "gauge",
	         "Recipients in delivery attempts right now.", d->nbusy);
	prom_one(out, "relayd_queue_oldest_message_age_seconds", "gauge",
	         "Age of the oldest message in the queue; 0 when empty.",
	         oldest >= 0 && now > oldest ? (uint64_t)(now - oldest) : 0);
	prom_one(out, "relayd_delivery_attempts_total", "counter",
	         "Delivery transactions tried since start.", d->n_attempts);
	prom_one(out, "relayd_sent_total", "counter",
	         "Recipients delivered since start.", d->n_sent);
	prom_one(out, "relayd_deferred_total", "counter",
	         "Recipient delivery attempts deferred since start.",
	         d->n_deferred);
	prom_one(out, "relayd_bounced_total", "counter",
	         "Recipients bounced (failed permanently or expired) since start.",
	         d->n_bounced);
	prom_one(out, "relayd_dsn_total", "counter",
	         "Delivery status notifications queued since start.", d->n_dsn);
	prom_one(out, "relayd_delivery_sessions", "gauge",
	         "Open outgoing SMTP sessions.", d->nsessions);

	prom_head(out, "relayd_delivery_latency_seconds", "histogram",
	          "Time from arrival to delivery of each recipient sent.");
	uint64_t cum = 0;
	for (size_t i = 0; i < DELIVER_LAT_BUCKETS; i++) {
		cum += d->lat_bucket[i];
		buf_printf(out, "relayd_delivery_latency_seconds_bucket{le=\"%u\"} "
		           "%" PRIu64 "\n", deliver_lat_bounds[i], cum);
	}
	cum += d->lat_bucket[DELIVER_LAT_BUCKETS];
	buf_printf(out, "relayd_delivery_latency_seconds_bucket{le=\"+Inf\"} "
	           "%" PRIu64 "\n"
	           "relayd_delivery_latency_seconds_sum %" PRIu64 ".%03u\n"
	           "relayd_delivery_latency_seconds_count %" PRIu64 "\n",
	           cum, d->lat_sum_ms / 1000, (unsigned)(d->lat_sum_ms % 1000),
	           cum);

	unsigned paused = 0, throttled = 0;
	uint64_t t = uv_now(d->loop);
	for (struct deliver_dest *x = d->dests; x; x = x->next) {
		if (x->paused || x->op_paused)
			paused++;
		if (x->throttle_until > t)
			throttled++;
	}
	prom_one(out, "relayd_destinations", "gauge",
	         "Destinations known to the scheduler.", d->ndests);
	prom_one(out, "relayd_destinations_paused", "gauge",
	         "Destinations paused (after failures or by relayctl pause).",
	         paused);
	prom_one(out, "relayd_destinations_throttled", "gauge",
	         "Destinations throttled (one transaction at a time).", throttled);

	struct dkim_counts dc = dkim_signer_counts(d->dkim);
	prom_head(out, "relayd_dkim_messages_total", "counter",
	          "Messages by DKIM signing result since start.");
	buf_printf(out, "relayd_dkim_messages_total{result=\"signed\"} %" PRIu64
	           "\nrelayd_dkim_messages_total{result=\"unsigned\"} %" PRIu64
	           "\nrelayd_dkim_messages_total{result=\"failed\"} %" PRIu64 "\n",
	           dc.signed_msgs, dc.unsigned_msgs, dc.failed);
}
