/*
 * smtpd/smtpd_auth.c - SMTP AUTH for the sessions: the credentials table
 * (loaded at start, on SIGHUP and when the file changes), password
 * checks on the thread pool, and what keeps guessing in check without
 * letting anyone turn it against a user (issue 8 §3), over the two tables
 * of smtpd_lockout.c. relayctl lockout list|clear reaches them here.
 *
 * ---- Lockouts that cannot be turned against a user ----------------------
 *
 * A lockout is per client: a client address (an IPv6 client by its /64,
 * which one customer usually holds) with auth_fail_limit failures within
 * auth_fail_window is locked out for auth_lockout, doubling per repeat:
 * its AUTH gets 421 4.7.0 and the connection closes. A credential name is
 * never locked: a stranger who types five wrong passwords for "alice"
 * must not lock alice out.
 *
 * Guessing spread over many addresses is slowed per name instead, and
 * only for clients that failed before. Every check goes through a lane:
 *
 * - The fast lane: a client with no failures of its own (none in the
 *   window, no lockout remembered) is checked at once on the thread pool,
 *   whatever anyone did with the name it tries. So alice, from her usual
 *   address, is never refused or delayed for a stranger's guesses. A
 *   guesser gets one fast try per fresh address (per fresh /64 in IPv6),
 *   and each try costs it a connection and a KDF run's wait; AUTH_FAST_MAX
 *   bounds the work queued.
 * - The slow lane: a client that failed before waits in a per-name queue,
 *   keyed by the name as typed (lower-cased), known or not, so the delay
 *   reveals nothing about which names exist. A name's lane runs one check
 *   at a time; after each failure of the name (from anyone, in either
 *   lane) the next start waits auth_slow_delay, doubling per failure in
 *   the window up to auth_slow_delay_max. At most AUTH_SLOW_PER_NAME wait
 *   per name and AUTH_SLOW_MAX in all (more get 454 4.7.0 at once), a
 *   waiter gives up with 454 after timeout_command, and the lane runs at
 *   most AUTH_SLOW_ACTIVE checks on the pool, so it cannot crowd out the
 *   fast lane's threads.
 *
 * A client's checks in flight or waiting count against its failures left:
 * with the limit at 5, a client with 2 failures runs at most 3 checks at
 * once, and a sixth concurrent AUTH gets 454 without a check (it used to
 * be 16 at once). The tables are bounded and never evict a lockout in
 * force or an entry holding checks; when the client table is full of
 * them, a client it cannot track is still checked (at most
 * AUTH_UNTRACKED_MAX at once), but a failure it cannot record gets 421
 * and the connection closes (fail closed), logged.
 */
#include "smtpd/smtpd_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_policy.h"

enum auth_lane {
	AUTH_LANE_NONE,     /* a look at the credentials file alone */
	AUTH_LANE_FAST,
	AUTH_LANE_SLOW,
};

/* A password check (and maybe a look at the credentials file first) on
 * the thread pool, or waiting in the slow lane. s is NULL for a reload
 * alone (SIGHUP). */
struct auth_job {
	uv_work_t req;
	struct smtpd *srv;
	struct smtpd_session *s;
	struct cred_store *creds;   /* a reference to the table in use */
	char user[SMTP_CMD_LINE_MAX];
	uint8_t pw[SMTP_CMD_LINE_MAX];
	size_t pwlen;
	/* The lanes. */
	enum auth_lane lane;
	bool tracked;                /* the client table holds the check */
	bool waiting;                /* in the slow lane's queue, not running */
	uint64_t deadline;           /* a waiter gives up then (uv_now) */
	struct auth_job *next;       /* in the queue */
	char kc[SMTPD_LOCKOUT_KEY_MAX];   /* client key */
	char kn[SMTPD_LOCKOUT_KEY_MAX];   /* name key */
	/* The file check: known is what is loaded; the rest are results. */
	bool check;
	bool force;                  /* SIGHUP: read it even if unchanged */
	uint64_t gen;
	char *path;
	struct creds_id known, found;
	bool changed;
	struct cred_store *loaded;   /* the file read again, or NULL */
	int load_err;
	char err[512];
	/* The verification. */
	bool verified;
	enum cred_result res;
	const struct cred *cred;
};

/* ---- the credentials file --------------------------------------------------- */

static bool creds_id_eq(const struct creds_id *a, const struct creds_id *b)
{
	if (a->exists != b->exists)
		return false;
	return !a->exists ||
	       (a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	        a->mtime.tv_sec == b->mtime.tv_sec &&
	        a->mtime.tv_nsec == b->mtime.tv_nsec &&
	        a->ctime.tv_sec == b->ctime.tv_sec &&
	        a->ctime.tv_nsec == b->ctime.tv_nsec);
}

/* stat(path) as a creds_id; errno other than ENOENT counts as missing
 * too (logged by the load that follows a change). */
static void creds_stat(const char *path, struct creds_id *id)
{
	struct stat st;
	memset(id, 0, sizeof *id);
	if (stat(path, &st) < 0)
		return;
	id->exists = true;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = st.st_size;
	id->mtime = st.st_mtim;
	id->ctime = st.st_ctim;
}

/* Looks at the file and reads it again if it changed. Blocking: on the
 * thread pool, or at start before the loop serves anyone. */
static void creds_check(struct auth_job *j)
{
	creds_stat(j->path, &j->found);
	if (!j->force && creds_id_eq(&j->found, &j->known))
		return;
	j->changed = true;
	if (!j->found.exists) {
		j->load_err = -ENOENT;
		snprintf(j->err, sizeof j->err, "cannot read %s: %s", j->path,
		         strerror(ENOENT));
		return;
	}
	j->load_err = cred_store_load(j->path, &j->loaded, j->err,
	                               sizeof j->err);
}

/* The result of a check, on the loop: the new table goes in (a missing
 * file means no AUTH; a broken one keeps the table loaded before). Logged
 * once per change of the file. */
static void creds_install(struct smtpd *srv, struct auth_job *j,
                          const char *why)
{
	if (!j->changed || j->gen < srv->creds_gen)
		return;   /* unchanged, or a later check got there first */
	srv->creds_gen = j->gen;
	srv->creds_id = j->found;
	if (j->loaded) {
		size_t n = cred_store_count(j->loaded);
		cred_store_free(srv->creds);
		srv->creds = cred_store_ref(j->loaded);
		log_info("%scredentials loaded from %s: %zu credential%s", why,
		         j->path, n, n == 1 ? "" : "s");
	} else if (j->load_err == -ENOENT) {
		if (srv->creds)
			log_warn("%scredentials file %s is gone: AUTH unavailable",
			         why, j->path);
		else
			log_info("%s%s: AUTH unavailable", why, j->err);
		cred_store_free(srv->creds);
		srv->creds = NULL;
	} else {
		log_err("%scredentials not loaded: %s; %s", why, j->err,
		        srv->creds ? "keeping those loaded before"
		                   : "AUTH unavailable");
	}
}


static void auth_job_free(struct auth_job *j)
{
	explicit_bzero(j->pw, sizeof j->pw);
	cred_store_free(j->creds);
	cred_store_free(j->loaded);
	free(j->path);
	free(j);
}

static void auth_work_cb(uv_work_t *req)
{
	struct auth_job *j = req->data;
	if (j->check)
		creds_check(j);
	if (!j->s)
		return;
	/* A file that failed to load leaves the table in use. */
	const struct cred_store *t = j->loaded ? j->loaded : j->creds;
	if (t) {
		j->res = cred_store_verify(t, j->user, j->pw, j->pwlen, &j->cred);
		j->verified = true;
	}
	explicit_bzero(j->pw, sizeof j->pw);
}

/* ---- keys ------------------------------------------------------------------- */

/* The client's key: its address, an IPv6 client's /64 ("2001:db8::/64"),
 * as the rate limits count them. */
static void key_client(char *k, size_t n, const struct sockaddr *sa,
                       const char *ip)
{
	if (smtpd_policy_ip_key(sa, 64, k, n) < 0)
		snprintf(k, n, "%s", ip);
}

/* A name's key: as typed, ASCII lower case (names match any case), cut
 * to the table's key length. */
static void key_name(char *k, size_t n, const char *user)
{
	size_t o = 0;
	for (; *user && o + 1 < n; user++)
		k[o++] = (*user >= 'A' && *user <= 'Z') ? (char)(*user + 32) : *user;
	k[o] = '\0';
}

/* The user name for log lines: escaped and cut like a credential name. */
static void log_user(char *d, size_t n, const char *user)
{
	log_escape(d, n, user, strnlen(user, CRED_NAME_MAX + 1));
}

/* ---- the lanes ---------------------------------------------------------------- */

static void lane_timer_cb(uv_timer_t *t);

/* The slow lane looks at its queue on the next loop turn (never from
 * inside a session's processing: no re-entry). */
static void lane_kick(struct smtpd *srv)
{
	if (srv->stopping || !srv->lane_timer_open)
		return;
	int r = uv_timer_start(&srv->lane_timer, lane_timer_cb, 0, 0);
	if (r < 0)
		log_err("AUTH: slow lane timer: %s", uv_strerror(r));
}

/* A check that ran (or was started: status < 0) is over: the lanes and
 * the tables are told. failed: a wrong password or an unknown name,
 * counted against the client and the name. *lock_ms: the client's
 * lockout this started; *full: a failure the client table had no room
 * for. */
static void lane_end(struct auth_job *j, bool failed, uint64_t now,
                     uint64_t *lock_ms, bool *full)
{
	struct smtpd *srv = j->srv;
	*lock_ms = 0;
	*full = false;
	if (j->lane == AUTH_LANE_FAST) {
		srv->auth_fast--;
	} else if (j->lane == AUTH_LANE_SLOW) {
		srv->auth_slow--;
		smtpd_lockout_lane_done(srv->names, j->kn, now);
		smtpd_lockout_release(srv->names, j->kn, now);
	}
	if (j->tracked) {
		*lock_ms = smtpd_lockout_end(srv->lockout, j->kc, now, failed);
	} else {
		srv->auth_untracked--;
		if (failed &&
		    smtpd_lockout_fail(srv->lockout, j->kc, now, lock_ms) < 0)
			*full = true;
	}
	/* Before the lane looks again, so the delay already applies. A
	 * name the full table cannot hold is not slowed: its lane cannot
	 * hold waiters either (454). */
	if (failed)
		smtpd_lockout_fail(srv->names, j->kn, now, NULL);
	if (j->lane == AUTH_LANE_SLOW)
		lane_kick(srv);
}

/* A waiter leaves the queue without a check. */
static void lane_unlink(struct auth_job *j)
{
	struct smtpd *srv = j->srv;
	struct auth_job **pp = &srv->wait_head;
	while (*pp && *pp != j)
		pp = &(*pp)->next;
	RELAY_ASSERT(*pp == j);
	*pp = j->next;
	if (!*pp)
		srv->wait_tail = pp;
	j->next = NULL;
	j->waiting = false;
	srv->auth_waiting--;
}

/* A waiter that never ran: it let go of everything it held. */
static void lane_abandon(struct auth_job *j, uint64_t now)
{
	struct smtpd *srv = j->srv;
	smtpd_lockout_release(srv->names, j->kn, now);
	if (j->tracked)
		smtpd_lockout_end(srv->lockout, j->kc, now, false);
	else
		srv->auth_untracked--;
}

/* The session's answer, and the job goes. The session was still
 * waiting for it (not closing). */
static void auth_answer(struct auth_job *j, int result)
{
	struct smtpd *srv = j->srv;
	struct smtpd_session *s = j->s;
	s->auth_pending = false;
	s->auth_job = NULL;
	auth_job_free(j);
	smtpd_proto_done(s->proto, result, &s->out);
	if (s->closing) {
		smtpd_session_maybe_free(s);
	} else if (smtpd_proto_state(s->proto) == SMTPD_ST_CLOSED) {
		smtpd_session_flush(s);   /* 421: disconnected */
		smtpd_session_close(s, true);
	} else {
		smtpd_session_process(s);
	}
	srv->auth_jobs--;
	smtpd_server_maybe_done(srv);
}

static void auth_after_cb(uv_work_t *req, int status);

/* Starts a slow-lane check on the pool: it checks against the table in
 * use now, not the one of when it began to wait. */
static void lane_run_one(struct auth_job *j, uint64_t now)
{
	struct smtpd *srv = j->srv;
	cred_store_free(j->creds);
	j->creds = srv->creds ? cred_store_ref(srv->creds) : NULL;
	j->req.data = j;
	int r = uv_queue_work(srv->loop, &j->req, auth_work_cb, auth_after_cb);
	if (r == 0)
		return;
	uint64_t lock;
	bool full;
	char who[CRED_NAME_MAX * 4 + 8];
	log_user(who, sizeof who, j->user);
	log_err("s=%s: AUTH as %s: cannot queue the password check: %s",
	        j->s->sid, who, uv_strerror(r));
	lane_end(j, false, now, &lock, &full);
	auth_answer(j, SMTPD_AUTH_TEMPFAIL);
}

/* The slow lane: starts what may start (per name one at a time, after
 * the name's delay; AUTH_SLOW_ACTIVE at most), answers waiters past their
 * deadline with 454, and sets the timer for the next of either. */
static void lane_timer_cb(uv_timer_t *t)
{
	struct smtpd *srv = t->data;
	uint64_t now = uv_now(srv->loop), next = UINT64_MAX;
	struct auth_job *go = NULL, **go_tail = &go;
	struct auth_job *late = NULL, **late_tail = &late;
	struct auth_job **pp = &srv->wait_head;
	while (*pp) {
		struct auth_job *j = *pp;
		bool take = false, expired = now >= j->deadline;
		if (!expired && srv->auth_slow < AUTH_SLOW_ACTIVE) {
			uint64_t w = smtpd_lockout_lane_wait(srv->names, j->kn, now);
			if (w == 0) {
				/* Marked running now: the next waiter for this
				 * name, further down, sees it busy. */
				smtpd_lockout_lane_start(srv->names, j->kn, now);
				srv->auth_slow++;
				take = true;
			} else if (w != UINT64_MAX && now + w < next) {
				next = now + w;
			}
		}
		if (!take && !expired) {
			if (j->deadline < next)
				next = j->deadline;
			pp = &j->next;
			continue;
		}
		*pp = j->next;
		j->next = NULL;
		j->waiting = false;
		srv->auth_waiting--;
		if (take) {
			j->lane = AUTH_LANE_SLOW;
			*go_tail = j;
			go_tail = &j->next;
		} else {
			*late_tail = j;
			late_tail = &j->next;
		}
	}
	srv->wait_tail = pp;
	/* Armed before the answers below: a session they let go on may
	 * queue a new AUTH and kick the timer to 0, which must win. */
	if (next != UINT64_MAX)
		uv_timer_start(&srv->lane_timer, lane_timer_cb, next - now, 0);
	else
		uv_timer_stop(&srv->lane_timer);
	while (go) {
		struct auth_job *j = go;
		go = j->next;
		j->next = NULL;
		lane_run_one(j, now);
	}
	while (late) {
		struct auth_job *j = late;
		late = j->next;
		j->next = NULL;
		char who[CRED_NAME_MAX * 4 + 8];
		log_user(who, sizeof who, j->user);
		log_info("s=%s: AUTH as %s: refused: waited too long in the "
		         "slow lane, client=[%s]", j->s->sid, who, j->s->ip);
		lane_abandon(j, now);
		auth_answer(j, SMTPD_AUTH_LOCKED);
	}
}

static void auth_after_cb(uv_work_t *req, int status)
{
	struct auth_job *j = req->data;
	struct smtpd *srv = j->srv;
	struct smtpd_session *s = j->s;
	/* srv->auth_jobs drops last, just before smtpd_server_maybe_done: until
	 * then nothing (smtpd_session_maybe_free included) can free srv. */
	if (j->check)
		srv->creds_checking = false;
	if (status == 0 && !srv->stopping)
		creds_install(srv, j, s ? "" : "SIGHUP: ");
	if (!s) {
		auth_job_free(j);
		srv->auth_jobs--;
		smtpd_server_maybe_done(srv);
		return;
	}
	uint64_t now = uv_now(srv->loop);
	bool ran = status == 0 && j->verified;
	/* A guess counts even when its client left before the answer: the
	 * KDF ran for it. */
	bool failed = ran && (j->res == CRED_BAD_PASSWORD ||
	                      j->res == CRED_UNKNOWN);
	uint64_t lock;
	bool full;
	lane_end(j, failed, now, &lock, &full);
	char user[CRED_NAME_MAX * 4 + 8];
	log_user(user, sizeof user, j->user);
	if (s->closing || smtpd_proto_state(s->proto) != SMTPD_ST_AUTH) {
		/* Gone, timed out or shut down while the KDF ran. */
		if (ran)
			log_info("s=%s: AUTH as %s: %s, client=[%s] (gone)", s->sid, user,
			         cred_result_names[j->res], s->ip);
		auth_answer(j, SMTPD_AUTH_TEMPFAIL);
		return;
	}
	int result;
	if (!ran) {
		log_info("s=%s: AUTH as %s: unavailable (%s)", s->sid, user,
		         status < 0 ? uv_strerror(status) : "no credentials loaded");
		result = SMTPD_AUTH_TEMPFAIL;
	} else {
		log_info("s=%s: AUTH as %s: %s, client=[%s]", s->sid, user,
		         cred_result_names[j->res], s->ip);
		switch (j->res) {
		case CRED_OK: {
			/* Neither table forgets: a client's failures stay for the
			 * window (an attacker with a credential of its own must not
			 * wipe its count between guesses), a name's too (alice's
			 * logins must not reset the slowdown of those guessing her
			 * password; she is never in their lane). */
			const struct cred_store *t = j->loaded ? j->loaded : j->creds;
			cred_store_free(s->auth_creds);
			s->auth_creds = cred_store_ref((struct cred_store *)t);
			smtpd_proto_set_cred(s->proto, j->cred);
			result = SMTPD_AUTH_OK;
			break;
		}
		case CRED_BAD_PASSWORD:
		case CRED_UNKNOWN:
			result = SMTPD_AUTH_FAILED;
			break;
		case CRED_DISABLED:
			result = SMTPD_AUTH_FAILED;
			break;
		default:
			result = SMTPD_AUTH_TEMPFAIL;
			break;
		}
	}
	if (lock)
		log_warn("s=%s: AUTH lockout of client [%s] for %" PRIu64
		         "s after too many failures", s->sid, j->kc, lock / 1000);
	if (full) {
		log_warn("s=%s: AUTH lockout table full (%u clients locked out or "
		         "checking): failure of untracked client [%s] not "
		         "recorded; disconnecting it", s->sid, srv->lockout_cap,
		         j->kc);
		result = SMTPD_AUTH_UNTRACKED;
	}
	auth_answer(j, result);
}

/* A look at the credentials file is due: start one with this job. */
static int creds_check_begin(struct smtpd *srv, struct auth_job *j,
                             bool force)
{
	const char *path = srv->conf->conf.credentials_file;
	j->srv = srv;
	j->path = strdup(path);
	if (!j->path)
		return -ENOMEM;
	j->check = true;
	j->gen = ++srv->creds_next_gen;
	/* force (SIGHUP): read it even if it looks the same. */
	j->known = srv->creds_id;
	j->force = force;
	srv->creds_checking = true;
	srv->creds_checked = uv_now(srv->loop);
	return 0;
}

static int auth_queue(struct smtpd *srv, struct auth_job *j)
{
	j->req.data = j;
	int r = uv_queue_work(srv->loop, &j->req, auth_work_cb, auth_after_cb);
	if (r < 0)
		return r;
	srv->auth_jobs++;
	return 0;
}

/* SMTPD_REQ_AUTH: the client's lockout and its checks left first (no
 * password check for a locked-out or busy client), then its lane. */
void smtpd_auth_start(struct smtpd_session *s)
{
	struct smtpd *srv = s->srv;
	const char *user;
	const void *pw;
	size_t pwlen;
	smtpd_proto_auth_request(s->proto, &user, &pw, &pwlen);
	char who[CRED_NAME_MAX * 4 + 8], kc[SMTPD_LOCKOUT_KEY_MAX],
	     kn[SMTPD_LOCKOUT_KEY_MAX];
	log_user(who, sizeof who, user);
	key_client(kc, sizeof kc, (const struct sockaddr *)&s->peer, s->ip);
	key_name(kn, sizeof kn, user);
	uint64_t now = uv_now(srv->loop), left = 0;
	enum smtpd_lockout_admit a = smtpd_lockout_begin(srv->lockout, kc, now,
	                                                 &left);
	log_debug("s=%s: AUTH as %s: client [%s] %s", s->sid, who, kc,
	          smtpd_lockout_admit_names[a]);
	enum auth_lane lane = AUTH_LANE_FAST;
	bool tracked = true;
	int refuse = -1;
	const char *why = NULL;
	switch (a) {
	case SMTPD_LOCKOUT_LOCKED:
		log_info("s=%s: AUTH as %s: refused: client [%s] locked out for "
		         "%" PRIu64 "s more", s->sid, who, kc, (left + 999) / 1000);
		smtpd_proto_done(s->proto, SMTPD_AUTH_LOCKED_IP, &s->out);
		return;
	case SMTPD_LOCKOUT_BUSY:
		log_info("s=%s: AUTH as %s: refused: client [%s] has as many checks "
		         "in progress as failures left", s->sid, who, kc);
		smtpd_proto_done(s->proto, SMTPD_AUTH_LOCKED, &s->out);
		return;
	case SMTPD_LOCKOUT_FULL:
		tracked = false;
		if (srv->auth_untracked >= AUTH_UNTRACKED_MAX) {
			log_warn("s=%s: AUTH as %s: refused: lockout table full and "
			         "%d untracked checks in progress, client=[%s]", s->sid,
			         who, AUTH_UNTRACKED_MAX, kc);
			smtpd_proto_done(s->proto, SMTPD_AUTH_TEMPFAIL, &s->out);
			return;
		}
		break;
	case SMTPD_LOCKOUT_FAILED:
		lane = AUTH_LANE_SLOW;
		break;
	case SMTPD_LOCKOUT_CLEAN:
		break;
	}
	/* From here the client table holds the check (when tracked): every
	 * refusal below gives it back. */
	bool check = lane == AUTH_LANE_FAST && !srv->creds_checking &&
	             !srv->stopping && now - srv->creds_checked >= CREDS_CHECK_MS;
	bool held_name = false;
	if (!srv->creds && !check) {
		why = "no credentials loaded";
		refuse = SMTPD_AUTH_TEMPFAIL;
	} else if (lane == AUTH_LANE_FAST && srv->auth_fast >= AUTH_FAST_MAX) {
		why = "too many password checks in progress";
		refuse = SMTPD_AUTH_TEMPFAIL;
	} else if (lane == AUTH_LANE_SLOW) {
		int n = srv->auth_waiting < AUTH_SLOW_MAX
		            ? smtpd_lockout_hold(srv->names, kn, now) : -ENOSPC;
		held_name = n > 0;
		if (n < 0 || n > AUTH_SLOW_PER_NAME) {
			why = "too many checks waiting in the slow lane";
			refuse = SMTPD_AUTH_LOCKED;
		}
	}
	struct auth_job *j = refuse < 0 ? calloc(1, sizeof *j) : NULL;
	if (refuse < 0 && !j) {
		why = "out of memory";
		refuse = SMTPD_AUTH_TEMPFAIL;
	}
	if (j) {
		j->srv = srv;
		j->s = s;
		j->lane = lane;
		j->tracked = tracked;
		memcpy(j->kc, kc, sizeof kc);
		memcpy(j->kn, kn, sizeof kn);
		j->creds = srv->creds ? cred_store_ref(srv->creds) : NULL;
		snprintf(j->user, sizeof j->user, "%s", user);
		memcpy(j->pw, pw, pwlen);
		j->pwlen = pwlen;
	}
	if (j && lane == AUTH_LANE_FAST) {
		int r = check ? creds_check_begin(srv, j, false) : 0;
		if (r == 0)
			r = auth_queue(srv, j);
		if (r < 0) {
			if (j->check)
				srv->creds_checking = false;
			auth_job_free(j);
			j = NULL;
			why = "cannot queue the password check";
			refuse = SMTPD_AUTH_TEMPFAIL;
		} else {
			srv->auth_fast++;
			if (!tracked)
				srv->auth_untracked++;
		}
	} else if (j) {
		/* The slow lane: queued, started by lane_timer_cb. */
		j->waiting = true;
		j->deadline = now + s->cf->conf.timeout_command;
		*srv->wait_tail = j;
		srv->wait_tail = &j->next;
		srv->auth_waiting++;
		srv->auth_jobs++;
		log_info("s=%s: AUTH as %s: client [%s] failed before: waiting in "
		         "the name's slow lane (%" PRIu64 " ms)", s->sid, who, kc,
		         smtpd_lockout_lane_wait(srv->names, kn, now) == UINT64_MAX
		             ? 0 : smtpd_lockout_lane_wait(srv->names, kn, now));
		lane_kick(srv);
	}
	if (refuse >= 0) {
		if (held_name)
			smtpd_lockout_release(srv->names, kn, now);
		if (tracked)
			smtpd_lockout_end(srv->lockout, kc, now, false);
		log_info("s=%s: AUTH as %s: %s (%s), client=[%s]", s->sid, who,
		         refuse == SMTPD_AUTH_LOCKED ? "refused" : "unavailable", why,
		         kc);
		smtpd_proto_done(s->proto, refuse, &s->out);
		return;
	}
	s->auth_pending = true;
	s->auth_job = j;
}

bool smtpd_auth_cancel(struct smtpd_session *s)
{
	struct auth_job *j = s->auth_job;
	if (!s->auth_pending || !j || !j->waiting)
		return false;   /* none, or on the pool: it finishes there */
	struct smtpd *srv = s->srv;
	uint64_t now = uv_now(srv->loop);
	lane_unlink(j);
	lane_abandon(j, now);
	char who[CRED_NAME_MAX * 4 + 8];
	log_user(who, sizeof who, j->user);
	log_info("s=%s: AUTH as %s: client [%s] left while waiting in the slow "
	         "lane", s->sid, who, j->kc);
	s->auth_pending = false;
	s->auth_job = NULL;
	auth_job_free(j);
	srv->auth_jobs--;
	smtpd_proto_done(s->proto, SMTPD_AUTH_TEMPFAIL, &s->out);
	lane_kick(srv);
	return true;
}

/* SIGHUP: the credentials file is read again on the thread pool (it may
 * also have moved: credentials_file is reloadable). */
void smtpd_auth_reload(struct smtpd *srv)
{
	struct auth_job *j = calloc(1, sizeof *j);
	if (!j || creds_check_begin(srv, j, true) < 0 ||
	    auth_queue(srv, j) < 0) {
		if (j && j->check)
			srv->creds_checking = false;
		if (j)
			auth_job_free(j);
		log_err("SIGHUP: credentials not reloaded: cannot queue the work");
	}
}

/* At start, before the loop serves anyone: blocking is fine. */
void smtpd_auth_load_now(struct smtpd *srv)
{
	struct auth_job j = {.srv = srv};
	j.path = srv->conf->conf.credentials_file;
	j.force = true;
	j.gen = ++srv->creds_next_gen;
	creds_check(&j);
	srv->creds_checked = uv_now(srv->loop);
	creds_install(srv, &j, "");
	cred_store_free(j.loaded);
}

/* ---- setup ------------------------------------------------------------------ */

int smtpd_auth_init(struct smtpd *srv, unsigned table_size)
{
	srv->lockout_cap = table_size;
	srv->wait_tail = &srv->wait_head;
	int r = uv_timer_init(srv->loop, &srv->lane_timer);
	if (r < 0)
		return r;
	srv->lane_timer.data = srv;
	srv->lane_timer_open = true;
	srv->lockout = smtpd_lockout_new(table_size);
	srv->names = smtpd_lockout_new(table_size);
	return srv->lockout && srv->names ? 0 : -ENOMEM;
}

static void lane_timer_closed_cb(uv_handle_t *h)
{
	struct smtpd *srv = h->data;
	srv->lane_timer_open = false;
	smtpd_server_maybe_done(srv);
}

/* After the sessions were closed (their waiters left the queue). */
void smtpd_auth_stop(struct smtpd *srv)
{
	if (srv->lane_timer_open &&
	    !uv_is_closing((uv_handle_t *)&srv->lane_timer))
		uv_close((uv_handle_t *)&srv->lane_timer, lane_timer_closed_cb);
}

void smtpd_auth_set_conf(struct smtpd *srv, const struct conf *conf)
{
	smtpd_lockout_set(srv->lockout, conf->auth_fail_limit,
	                  conf->auth_fail_window, conf->auth_lockout);
	/* Names never lock; their failures count in the same window and
	 * set the lane's delay. */
	smtpd_lockout_set(srv->names, 0, conf->auth_fail_window, 0);
	smtpd_lockout_set_delay(srv->names, conf->auth_slow_delay,
	                        conf->auth_slow_delay_max);
	/* The lane's delays may have changed. */
	lane_kick(srv);
}

/* ---- relayctl lockout list|clear ---------------------------------------------- */

/* A JSON string (RFC 8259) of peer text: quotes, backslash and controls
 * escaped; bytes >= 0x7f as \u00XX (read as Latin-1), so the reply is
 * always valid UTF-8 JSON whatever a client typed as a name. */
static int json_str(struct buf *out, const char *s)
{
	int r = buf_appends(out, "\"");
	for (; *s && r == 0; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			r = buf_printf(out, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			r = buf_printf(out, "\\u%04x", c);
		else
			r = buf_append(out, s, 1);
	}
	return r ? r : buf_appends(out, "\"");
}

struct list_ctx {
	struct buf *out;
	bool first;
	bool names;
	int err;
};

static void list_cb(void *arg, const struct smtpd_lockout_info *e)
{
	struct list_ctx *l = arg;
	if (l->err)
		return;
	int r = buf_appends(l->out, l->first ? "" : ",");
	l->first = false;
	if (r == 0)
		r = buf_printf(l->out, "{\"%s\":", l->names ? "name" : "client");
	if (r == 0)
		r = json_str(l->out, e->key);
	if (r == 0 && l->names)
		r = buf_printf(l->out, ",\"failures\":%u,\"delay\":%" PRIu64
		               ",\"waiting\":%u}", e->failures,
		               e->running ? 0 : (e->wait_ms + 999) / 1000, e->held);
	else if (r == 0)
		r = buf_printf(l->out, ",\"failures\":%u,\"locked\":%" PRIu64
		               ",\"lockouts\":%u,\"checks\":%u}", e->failures,
		               (e->locked_ms + 999) / 1000, e->strikes, e->held);
	l->err = r;
}

/* The key an operator's ADDR stands for: an address as a client is
 * keyed (IPv6 by /64), or "2001:db8::/64" as listed. 0, or -EINVAL. */
static int ctl_addr_key(const char *arg, char *k, size_t n)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	char a[INET6_ADDRSTRLEN + 8];
	size_t l = strlen(arg);
	if (l >= sizeof a)
		return -EINVAL;
	memcpy(a, arg, l + 1);
	bool slash64 = l > 3 && strcmp(a + l - 3, "/64") == 0;
	if (slash64)
		a[l - 3] = '\0';
	if (!slash64 && inet_pton(AF_INET, a, &s4->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		return -EINVAL;
	return smtpd_policy_ip_key((struct sockaddr *)&ss, 64, k, n);
}

int smtpd_auth_ctl(struct smtpd *srv, const char *args, struct buf *out)
{
	uint64_t now = uv_now(srv->loop);
	char verb[8] = "", arg[256] = "", extra[2] = "";
	int n = sscanf(args, "%7s %255s %1s", verb, arg, extra);
	if (n >= 1 && strcmp(verb, "list") == 0 && n == 1) {
		int r = buf_appends(out, "ok {\"clients\":[");
		struct list_ctx l = {.out = out, .first = true};
		if (r == 0) {
			smtpd_lockout_foreach(srv->lockout, now, list_cb, &l);
			r = l.err;
		}
		if (r == 0)
			r = buf_appends(out, "],\"names\":[");
		l.first = true;
		l.names = true;
		if (r == 0) {
			smtpd_lockout_foreach(srv->names, now, list_cb, &l);
			r = l.err;
		}
		if (r == 0)
			r = buf_printf(out, "],\"limit\":%u,\"capacity\":%u}",
			               srv->conf->conf.auth_fail_limit, srv->lockout_cap);
		return r;
	}
	if (n >= 1 && strcmp(verb, "clear") == 0 && n <= 2) {
		size_t cleared = 0;
		if (n == 1) {
			cleared = smtpd_lockout_clear(srv->lockout, NULL, now) +
			          smtpd_lockout_clear(srv->names, NULL, now);
			log_warn("control: AUTH lockouts cleared: %zu entr%s", cleared,
			         cleared == 1 ? "y" : "ies");
		} else {
			char k[SMTPD_LOCKOUT_KEY_MAX], esc[SMTPD_LOCKOUT_KEY_MAX * 4];
			if (ctl_addr_key(arg, k, sizeof k) == 0)
				cleared += smtpd_lockout_clear(srv->lockout, k, now);
			key_name(k, sizeof k, arg);
			cleared += smtpd_lockout_clear(srv->names, k, now);
			log_escape(esc, sizeof esc, arg, strlen(arg));
			log_warn("control: AUTH lockout of %s cleared: %zu entr%s", esc,
			         cleared, cleared == 1 ? "y" : "ies");
		}
		/* Delays lifted: waiters may go now. */
		lane_kick(srv);
		return buf_printf(out, "ok {\"cleared\":%zu}", cleared);
	}
	return buf_appends(out, "err usage: lockout list | lockout clear "
	                        "[ADDR|NAME]");
}
