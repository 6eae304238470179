/*
 * smtpd/smtpd_auth.c - SMTP AUTH for the sessions: the credentials table
 * (loaded at start, on SIGHUP and when the file changes), password
 * checks on the thread pool (bounded in number), and the failed-AUTH
 * lockout table (smtpd_lockout.c).
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

/* A password check (and maybe a look at the credentials file first) on
 * the thread pool. s is NULL for a reload alone (SIGHUP). */
struct auth_job {
	uv_work_t req;
	struct smtpd *srv;
	struct smtpd_session *s;
	struct cred_store *creds;   /* a reference to the table in use */
	char user[SMTP_CMD_LINE_MAX];
	uint8_t pw[SMTP_CMD_LINE_MAX];
	size_t pwlen;
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

/* ---- AUTH: credentials, password checks, lockout ---------------------------- */


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

/* Lockout keys: the client address, and the credential name as typed
 * (ASCII lower case: names match any case). */
static void key_ip(char *k, size_t n, const struct smtpd_session *s)
{
	snprintf(k, n, "ip:%s", s->ip);
}

static void key_name(char *k, size_t n, const char *user)
{
	size_t o = (size_t)snprintf(k, n, "name:");
	for (; *user && o + 1 < n; user++)
		k[o++] = (*user >= 'A' && *user <= 'Z') ? (char)(*user + 32) : *user;
	k[o] = '\0';
}

/* The user name for log lines: escaped and cut like a credential name. */
static void log_user(char *d, size_t n, const char *user)
{
	log_escape(d, n, user, strnlen(user, CRED_NAME_MAX + 1));
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
	srv->auth_inflight--;
	s->auth_pending = false;
	if (s->closing || smtpd_proto_state(s->proto) != SMTPD_ST_AUTH) {
		/* Gone, timed out or shut down while the KDF ran. */
		smtpd_proto_done(s->proto, SMTPD_AUTH_TEMPFAIL, &s->out);
		auth_job_free(j);
		if (s->closing)
			smtpd_session_maybe_free(s);
		else
			smtpd_session_process(s);
		srv->auth_jobs--;
		smtpd_server_maybe_done(srv);
		return;
	}
	char user[CRED_NAME_MAX * 4 + 8], kn[SMTPD_LOCKOUT_KEY_MAX],
	     ki[SMTPD_LOCKOUT_KEY_MAX];
	log_user(user, sizeof user, j->user);
	key_name(kn, sizeof kn, j->user);
	key_ip(ki, sizeof ki, s);
	uint64_t now = uv_now(srv->loop);
	int result;
	if (status < 0 || !j->verified) {
		log_info("s=%s: AUTH as %s: unavailable (%s)", s->sid, user,
		         status < 0 ? uv_strerror(status) : "no credentials loaded");
		result = SMTPD_AUTH_TEMPFAIL;
	} else {
		log_info("s=%s: AUTH as %s: %s, client=[%s]", s->sid, user,
		         cred_result_names[j->res], s->ip);
		switch (j->res) {
		case CRED_OK: {
			const struct cred_store *t = j->loaded ? j->loaded : j->creds;
			smtpd_lockout_clear(srv->lockout, kn, now);
			cred_store_free(s->auth_creds);
			s->auth_creds = cred_store_ref((struct cred_store *)t);
			smtpd_proto_set_cred(s->proto, j->cred);
			result = SMTPD_AUTH_OK;
			break;
		}
		case CRED_BAD_PASSWORD:
		case CRED_UNKNOWN: {
			/* Guesses count against the client and the name. */
			uint64_t d = smtpd_lockout_fail(srv->lockout, ki, now);
			if (d)
				log_warn("s=%s: AUTH lockout of client [%s] for %" PRIu64
				         "s after too many failures", s->sid, s->ip,
				         d / 1000);
			d = smtpd_lockout_fail(srv->lockout, kn, now);
			if (d)
				log_warn("s=%s: AUTH lockout of credential %s for %" PRIu64
				         "s after too many failures", s->sid, user,
				         d / 1000);
			result = SMTPD_AUTH_FAILED;
			break;
		}
		case CRED_DISABLED:
			result = SMTPD_AUTH_FAILED;
			break;
		default:
			result = SMTPD_AUTH_TEMPFAIL;
			break;
		}
	}
	auth_job_free(j);
	smtpd_proto_done(s->proto, result, &s->out);
	smtpd_session_process(s);
	srv->auth_jobs--;
	smtpd_server_maybe_done(srv);
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

/* SMTPD_REQ_AUTH: the lockouts first (no password check for a locked-out
 * client or name), then the check on the thread pool. */
void smtpd_auth_start(struct smtpd_session *s)
{
	struct smtpd *srv = s->srv;
	const char *user;
	const void *pw;
	size_t pwlen;
	smtpd_proto_auth_request(s->proto, &user, &pw, &pwlen);
	char who[CRED_NAME_MAX * 4 + 8], kn[SMTPD_LOCKOUT_KEY_MAX],
	     ki[SMTPD_LOCKOUT_KEY_MAX];
	log_user(who, sizeof who, user);
	key_ip(ki, sizeof ki, s);
	key_name(kn, sizeof kn, user);
	uint64_t now = uv_now(srv->loop);
	uint64_t left = smtpd_lockout_check(srv->lockout, ki, now);
	if (left) {
		log_info("s=%s: AUTH as %s: refused: client [%s] locked out for "
		         "%" PRIu64 "s more", s->sid, who, s->ip, (left + 999) / 1000);
		smtpd_proto_done(s->proto, SMTPD_AUTH_LOCKED_IP, &s->out);
		return;
	}
	left = smtpd_lockout_check(srv->lockout, kn, now);
	if (left) {
		log_info("s=%s: AUTH as %s: refused: credential locked out for "
		         "%" PRIu64 "s more", s->sid, who, (left + 999) / 1000);
		smtpd_proto_done(s->proto, SMTPD_AUTH_LOCKED, &s->out);
		return;
	}
	bool check = !srv->creds_checking && !srv->stopping &&
	             now - srv->creds_checked >= CREDS_CHECK_MS;
	const char *why = NULL;
	if (!srv->creds && !check)
		why = "no credentials loaded";
	else if (srv->auth_inflight >= AUTH_MAX_INFLIGHT)
		why = "too many password checks in progress";
	struct auth_job *j = why ? NULL : calloc(1, sizeof *j);
	if (!why && !j)
		why = "out of memory";
	if (j) {
		j->srv = srv;
		j->s = s;
		j->creds = srv->creds ? cred_store_ref(srv->creds) : NULL;
		snprintf(j->user, sizeof j->user, "%s", user);
		memcpy(j->pw, pw, pwlen);
		j->pwlen = pwlen;
		int r = check ? creds_check_begin(srv, j, false) : 0;
		if (r == 0)
			r = auth_queue(srv, j);
		if (r < 0) {
			if (j->check)
				srv->creds_checking = false;
			auth_job_free(j);
			why = "cannot queue the password check";
		}
	}
	if (why) {
		log_info("s=%s: AUTH as %s: unavailable (%s)", s->sid, who, why);
		smtpd_proto_done(s->proto, SMTPD_AUTH_TEMPFAIL, &s->out);
		return;
	}
	s->auth_pending = true;
	srv->auth_inflight++;
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

