/*
 * deliver/deliver_dest.c - Destinations: where jobs go, and what belongs
 * to a destination rather than to a message (deliver_int.h): its SMTP
 * client sessions and their idle cache, concurrency, pause and backoff,
 * rate caps, TLS policy, last error and counters. The scheduler
 * (deliver.c) routes each recipient to a destination key with
 * deliver_route() and hands (message, destination) jobs to it.
 *
 * Smarthost mode has one destination, "smarthost:HOST:PORT". When it
 * cannot be reached, refuses our TLS or AUTH, or asks us to slow down, it
 * pauses (exponential backoff from retry_min to retry_max) instead of
 * every message finding out for itself; after a pause one session probes
 * before the others follow.
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

static double rnd01(void)
{
	return (double)(random() % 1000000) / 1000000.0;
}

/* ---- rate caps ---------------------------------------------------------- */

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

/* ---- the table of destinations ----------------------------------------- */

int deliver_route(struct deliver *d, const struct queue_msg *m, size_t i,
                  char *key, size_t keylen)
{
	/* Direct mode: the MX set and TLS level of the recipient's domain
	 * (deliver_direct.c); its failures are asked for again by the
	 * scheduler with deliver_direct_route. */
	if (d->cfg->mode == CONF_DELIVERY_DIRECT && m) {
		struct deliver_reply fail;
		return deliver_direct_route(d, m->rcpt[i].addr, key, keylen, &fail);
	}
	/* Smarthost mode: every recipient goes the same way. */
	int n = snprintf(key, keylen, "smarthost:%s:%u", d->cfg->host,
	                 d->cfg->port);
	return n < 0 || (size_t)n >= keylen ? -ENAMETOOLONG : 0;
}

struct deliver *deliver_dest_owner(const struct deliver_dest *dst)
{
	return dst->d;
}

struct deliver_dest *deliver_dest_get(struct deliver *d, const char *key,
                                      bool create)
{
	for (struct deliver_dest *t = d->dests; t; t = t->next)
		if (strcmp(t->key, key) == 0)
			return t;
	if (!create)
		return NULL;
	struct deliver_dest *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->d = d;
	snprintf(t->key, sizeof t->key, "%s", key);
	/* "smarthost:HOST:PORT": HOST:PORT for the log lines. */
	const char *c = strchr(key, ':');
	snprintf(t->name, sizeof t->name, "%s", c ? c + 1 : key);
	t->tls = d->cfg->tls;
	t->ready_tail = &t->ready;
	if (rate_init(&t->rate_min, d->cfg->rate_minute, 60000) ||
	    rate_init(&t->rate_hour, d->cfg->rate_hour, 3600000)) {
		free(t->rate_min.t);
		free(t);
		return NULL;
	}
	/* After the rates: destination_policy_file may set its own. */
	if (d->cfg->mode == CONF_DELIVERY_DIRECT)
		deliver_direct_dest_init(d, t);
	t->next = d->dests;
	d->dests = t;
	d->ndests++;
	log_debug("destination %s: new", t->key);
	return t;
}

struct deliver_dest *deliver_dest_smarthost(struct deliver *d)
{
	char key[DELIVER_DEST_KEY_MAX];
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST ||
	    deliver_route(d, NULL, 0, key, sizeof key))
		return NULL;
	return deliver_dest_get(d, key, false);
}

/* Whether dst holds nothing worth keeping: no session, no job, no pause
 * or failure history, no recent sends under a rate cap. */
static bool dest_idle(const struct deliver_dest *dst, uint64_t now)
{
	if (dst->nsessions || dst->nready || dst->nbusy || dst->paused ||
	    dst->probing || dst->fails || dst->tls_broken_until > now)
		return false;
	return rate_room(&dst->rate_min, now) == (dst->rate_min.cap ?
	                                          dst->rate_min.cap : UINT_MAX) &&
	       rate_room(&dst->rate_hour, now) == (dst->rate_hour.cap ?
	                                           dst->rate_hour.cap : UINT_MAX);
}

static void dest_free(struct deliver_dest *dst)
{
	deliver_direct_dest_free(dst);
	free(dst->rate_min.t);
	free(dst->rate_hour.t);
	free(dst);
}

void deliver_dest_sweep(struct deliver *d, uint64_t now)
{
	/* A destination no route leads to any more (the smarthost was
	 * replaced by a SIGHUP, or delivery went back to hold) keeps nothing
	 * once its sessions and jobs are gone, failure history included. */
	char cur[DELIVER_DEST_KEY_MAX] = "";
	if (d->cfg->mode == CONF_DELIVERY_SMARTHOST &&
	    deliver_route(d, NULL, 0, cur, sizeof cur))
		cur[0] = '\0';
	for (struct deliver_dest **p = &d->dests; *p;) {
		struct deliver_dest *t = *p;
		bool empty = !t->nsessions && !t->nready && !t->nbusy;
		/* Direct mode: every destination is current while it
		 * keeps something (a pause, a failure history). */
		bool stale = d->cfg->mode == CONF_DELIVERY_DIRECT ? false
		             : strcmp(t->key, cur) != 0;
		bool go = d->stopping || stale ? empty : dest_idle(t, now);
		if (!go) {
			p = &t->next;
			continue;
		}
		*p = t->next;
		d->ndests--;
		log_debug("destination %s: idle, forgotten", t->key);
		dest_free(t);
	}
}

/* ---- jobs --------------------------------------------------------------- */

void deliver_dest_push(struct deliver_dest *dst, struct deliver_job *j)
{
	j->next = NULL;
	j->dest = dst;
	*dst->ready_tail = j;
	dst->ready_tail = &j->next;
	dst->nready++;
	dst->d->nready++;
}

bool deliver_dest_unready(struct deliver_dest *dst, struct deliver_job *j)
{
	for (struct deliver_job **p = &dst->ready; *p; p = &(*p)->next) {
		if (*p != j)
			continue;
		*p = j->next;
		if (!*p)
			dst->ready_tail = p;
		dst->nready--;
		dst->d->nready--;
		j->next = NULL;
		return true;
	}
	return false;
}

/* The first ready job, taken off the list. */
static struct deliver_job *pop(struct deliver_dest *dst)
{
	struct deliver_job *j = dst->ready;
	if (!j)
		return NULL;
	dst->ready = j->next;
	if (!dst->ready)
		dst->ready_tail = &dst->ready;
	dst->nready--;
	dst->d->nready--;
	j->next = NULL;
	return j;
}

struct deliver_job *deliver_take_job(struct deliver_dest *dst)
{
	struct deliver *d = dst->d;
	if (d->stopping || dst->paused || !dst->ready)
		return NULL;
	uint64_t now = uv_now(d->loop);
	if (rate_wait(&dst->rate_min, now) || rate_wait(&dst->rate_hour, now)) {
		deliver_schedule(d);   /* arms the timer for when one may go */
		return NULL;
	}
	struct deliver_job *j = pop(dst);
	j->in_session = true;
	dst->nbusy++;
	rate_note(&dst->rate_min, now);
	rate_note(&dst->rate_hour, now);
	return j;
}

void deliver_dest_drop_ready(struct deliver_dest *dst)
{
	struct deliver_job *j;
	while ((j = pop(dst)) != NULL)
		deliver_job_drop(dst->d, j);
}

/* ---- pause and backoff -------------------------------------------------- */

void deliver_dest_pause(struct deliver_dest *dst, bool auth, const char *why)
{
	struct deliver *d = dst->d;
	struct deliver_cfg *g = d->cfg;
	dst->fails++;
	uint64_t ms = deliver_backoff(g->retry_min, g->retry_max, dst->fails,
	                              rnd01());
	dst->paused = true;
	dst->probing = false;
	dst->pause_until = uv_now(d->loop) + ms;
	dst->pause_until_wall = deliver_wall_now() + (int64_t)((ms + 999) / 1000);
	snprintf(dst->reason, sizeof dst->reason, "%s%s",
	         auth ? "authentication failed: " : "", why);
	snprintf(dst->last_error, sizeof dst->last_error, "%s", dst->reason);
	char esc[sizeof dst->reason * 4];
	log_escape(esc, sizeof esc, dst->reason, strlen(dst->reason));
	if (auth)
		log_err("smarthost %s: AUTH as %s refused; delivery paused for "
		        "%.0f s: %s", dst->name, g->user ? g->user : "?",
		        ms / 1000.0, esc);
	else
		log_warn("%s %s: delivery paused for %.0f s: %s",
		         dst->direct ? "destination" : "smarthost", dst->name,
		         ms / 1000.0, esc);
	/* As Postfix does for a dead destination: the messages waiting for
	 * it are deferred now with the reason, so that `relayctl list` says
	 * why they wait and each one's backoff grows. */
	struct deliver_reply r;
	char t[DELIVER_REPLY_TEXT_MAX];
	snprintf(t, sizeof t, "delivery temporarily suspended: %s", dst->reason);
	deliver_reply_make(&r, 0, t);
	struct deliver_job *j;
	while ((j = pop(dst)) != NULL)
		deliver_job_failed(d, j, &r, NULL);
}

void deliver_dest_unpause(struct deliver_dest *dst, bool probe)
{
	dst->paused = false;
	dst->probing = probe && dst->fails > 0;
	if (!probe) {
		dst->fails = 0;
		dst->reason[0] = '\0';
	}
}

void deliver_dest_tick(struct deliver_dest *dst, uint64_t now)
{
	if (!dst->paused || now < dst->pause_until)
		return;
	dst->paused = false;
	dst->probing = true;
	log_info("%s %s: trying again", dst->direct ? "destination" : "smarthost",
	         dst->name);
}

void deliver_dest_set_rates(struct deliver_dest *dst, unsigned per_minute,
                            unsigned per_hour)
{
	/* The windows keep their history unless the caps change (a nightly
	 * logrotate HUP must not hand out a fresh hour). */
	if ((per_minute != dst->rate_min.cap &&
	     rate_init(&dst->rate_min, per_minute, 60000)) ||
	    (per_hour != dst->rate_hour.cap &&
	     rate_init(&dst->rate_hour, per_hour, 3600000)))
		log_warn("SIGHUP: smarthost_rate: out of memory");
}

/* ---- sessions ----------------------------------------------------------- */

static int start_session(struct deliver_dest *dst)
{
	struct deliver *d = dst->d;
	struct deliver_snode *n = calloc(1, sizeof *n);
	if (!n)
		return -ENOMEM;
	deliver_size_name(d->cfg, n->name, sizeof n->name);
	int r = deliver_session_new(dst, d->cfg, d->loop, &n->s);
	if (r) {
		log_err("smarthost: cannot start a session: %s", strerror(-r));
		free(n);
		return r;
	}
	n->next = dst->sessions;
	dst->sessions = n;
	dst->nsessions++;
	dst->nconnecting++;
	d->nsessions++;
	return 0;
}

void deliver_dest_run(struct deliver_dest *dst, uint64_t now,
                      uint64_t *wait_ms)
{
	*wait_ms = 0;
	if (dst->paused)
		return;
	/* Smarthost: its name through dns/ first (then run again). */
	if (dst->ready && !deliver_direct_host_ready(dst->d, dst))
		return;
	/* Sessions: idle ones take work; new ones while there is more work
	 * than sessions on their way. */
	for (struct deliver_snode *n = dst->sessions; n && dst->ready;
	     n = n->next)
		deliver_session_kick(n->s);
	unsigned slots = dst->probing ? 1 : dst->concurrency ? dst->concurrency
	                                    : dst->d->cfg->concurrency;
	/* Not while the rate cap holds everything back: a session would only
	 * connect, idle and leave (a reconnect storm at the provider). */
	bool capped = rate_wait(&dst->rate_min, now) ||
	              rate_wait(&dst->rate_hour, now);
	unsigned room = rate_room(&dst->rate_min, now);
	unsigned room_h = rate_room(&dst->rate_hour, now);
	if (room_h < room)
		room = room_h;
	/* max_delivery_sessions: all destinations together (direct). */
	while (!capped && dst->ready && dst->nsessions < slots &&
	       (!dst->d->cfg->max_sessions ||
	        dst->d->nsessions < dst->d->cfg->max_sessions) &&
	       dst->nready > dst->nconnecting && dst->nconnecting < room)
		if (start_session(dst) < 0)
			break;
	uint64_t rw = rate_wait(&dst->rate_min, now);
	uint64_t rh = rate_wait(&dst->rate_hour, now);
	if (dst->ready)
		*wait_ms = rh > rw ? rh : rw;
}

void deliver_dest_close_sessions(struct deliver_dest *dst)
{
	for (struct deliver_snode *n = dst->sessions; n; n = n->next)
		deliver_session_close(n->s);
}

void deliver_session_up(struct deliver_dest *dst, struct deliver_session *s,
                        uint64_t size)
{
	struct deliver *d = dst->d;
	/* Every session's EHLO counts, a probe's too: the provider may
	 * change its limit at any time. Not one to a smarthost replaced by
	 * a SIGHUP since it started. */
	char name[300];
	deliver_size_name(d->cfg, name, sizeof name);
	for (struct deliver_snode *n = dst->sessions; n; n = n->next)
		if (n->s == s && !n->up) {
			n->up = true;
			dst->nconnecting--;
			if (strcmp(n->name, name) == 0)
				deliver_size_learn(d, size);
		}
	if (dst->paused)
		return;   /* started before the pause: proves nothing */
	if (dst->fails || dst->probing)
		log_info("%s %s: delivering again",
		         dst->direct ? "destination" : "smarthost", dst->name);
	dst->fails = 0;
	dst->probing = false;
	dst->reason[0] = '\0';
	/* No schedule() here: the session takes a job right after this, and
	 * other sessions may start once it did (a probe is over now). */
	deliver_arm(d, 0);
}

void deliver_session_gone(struct deliver_dest *dst, struct deliver_session *s,
                          bool route_fail, bool auth_fail,
                          const struct deliver_reply *r)
{
	struct deliver *d = dst->d;
	for (struct deliver_snode **p = &dst->sessions; *p; p = &(*p)->next) {
		if ((*p)->s != s)
			continue;
		struct deliver_snode *n = *p;
		if (!n->up)
			dst->nconnecting--;
		*p = n->next;
		free(n);
		dst->nsessions--;
		d->nsessions--;
		break;
	}
	if (r && r->text[0])
		snprintf(dst->last_error, sizeof dst->last_error, "%s", r->text);
	if (route_fail && !d->stopping && !dst->paused && dst->direct &&
	    dst->tls_level == DELIVER_TLSPOL_MAY &&
	    deliver_session_tls_failed(s) &&
	    dst->tls_broken_until <= uv_now(d->loop)) {
		/* "may": a failed STARTTLS or handshake is retried once in
		 * plaintext on the same host, and the destination remembers
		 * it for a while (RFC 7435 §6: never worse than plaintext). */
		char esc[DELIVER_REPLY_TEXT_MAX * 4];
		const char *why = r ? r->text : "TLS failed";
		log_escape(esc, sizeof esc, why, strlen(why));
		dst->tls_broken_until = uv_now(d->loop) + DELIVER_TLS_BROKEN_MS;
		dst->tls_broken_until_wall = deliver_wall_now() +
		                             DELIVER_TLS_BROKEN_MS / 1000;
		snprintf(dst->tls_broken_why, sizeof dst->tls_broken_why, "%s",
		         why);
		log_warn("destination %s: TLS broken (%s); plaintext for %d s, "
		         "retrying %s now", dst->name, esc,
		         DELIVER_TLS_BROKEN_MS / 1000,
		         dst->addr_pos < dst->naddrs ?
		         dst->addrs[dst->addr_pos].host : "?");
	} else if (route_fail && !d->stopping && !dst->paused &&
	    !deliver_session_was_up(s) && dst->addr_pos + 1 < dst->naddrs) {
		/* Direct: the next address of the try list (next MX on a
		 * connection failure or a 4xx greeting/EHLO), within the
		 * same attempt; the destination pauses only when every
		 * address failed. */
		char a[64], esc[DELIVER_REPLY_TEXT_MAX * 4];
		const char *why = r ? r->text : "session failed";
		log_escape(esc, sizeof esc, why, strlen(why));
		dst->addr_pos++;
		log_info("destination %s: %s; trying %s[%s]", dst->name, esc,
		         dst->addrs[dst->addr_pos].host,
		         deliver_addr_str(&dst->addrs[dst->addr_pos].addr, a,
		                          sizeof a));
	} else if (route_fail && !d->stopping && !dst->paused) {
		dst->addr_pos = 0;
		/* Smarthost: its name is looked up again after the pause. */
		if (!dst->direct)
			dst->hresolved = false;
		deliver_dest_pause(dst, auth_fail, r ? r->text : "session failed");
	}
	deliver_schedule(d);
	deliver_maybe_done(d);   /* last: it may free d */
}

/* ---- the operator's view ------------------------------------------------ */

/* Appends, keeping the first error (sticky): the caller checks once. */
static void app(struct buf *out, const void *p, size_t n, int *err)
{
	int r = buf_append(out, p, n);
	if (r < 0 && !*err)
		*err = r;
}

static void json_str(struct buf *out, const char *s, int *err)
{
	app(out, "\"", 1, err);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			app(out, e, 2, err);
		} else if (c < 0x20 || c >= 0x7f) {
			char e[8];
			snprintf(e, sizeof e, "\\u%04x", c);
			app(out, e, 6, err);
		} else {
			app(out, s, 1, err);
		}
	}
	app(out, "\"", 1, err);
}

int deliver_dest_json(struct deliver *d, struct buf *out)
{
	int err = 0;
	bool first = true;
	for (struct deliver_dest *t = d->dests; t; t = t->next) {
		char num[320];
		if (!first)
			app(out, ",", 1, &err);
		first = false;
		app(out, "{\"name\":", 8, &err);
		json_str(out, t->key, &err);
		snprintf(num, sizeof num,
		         ",\"state\":\"%s\",\"until\":%" PRId64 ",\"failures\":%u"
		         ",\"sessions\":%u,\"connecting\":%u,\"ready\":%u"
		         ",\"in_flight\":%u,\"attempts\":%" PRIu64
		         ",\"sent\":%" PRIu64 ",\"deferred\":%" PRIu64
		         ",\"bounced\":%" PRIu64 ",\"reason\":",
		         t->paused ? "paused" : t->probing ? "probing" : "active",
		         t->paused ? t->pause_until_wall : 0, t->fails,
		         t->nsessions, t->nconnecting, t->nready, t->nbusy,
		         t->n_attempts, t->n_sent, t->n_deferred, t->n_bounced);
		app(out, num, strlen(num), &err);
		json_str(out, t->reason, &err);
		app(out, ",\"last_error\":", 14, &err);
		json_str(out, t->last_error, &err);
		/* "may" plaintext after a failed handshake (0: not). */
		bool broken = t->tls_broken_until > uv_now(d->loop);
		snprintf(num, sizeof num, ",\"tls_broken_until\":%" PRId64
		         ",\"tls_broken_reason\":",
		         broken ? t->tls_broken_until_wall : 0);
		app(out, num, strlen(num), &err);
		json_str(out, broken ? t->tls_broken_why : "", &err);
		app(out, "}", 1, &err);
	}
	return err;
}
