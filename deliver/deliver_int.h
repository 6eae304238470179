/*
 * deliver/deliver_int.h - What the scheduler (deliver.c), the SMTP client
 * sessions (deliver_session.c) and the control socket (deliver_ctl.c)
 * share inside deliver/: the settings, a job (one message on its way), and
 * the calls between them. Not for other modules.
 */
#ifndef RELAY_DELIVER_INT_H
#define RELAY_DELIVER_INT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "common/conf.h"
#include "deliver/deliver.h"
#include "deliver/deliver_client.h"
#include "queue/queue.h"

/* Settings taken from the configuration; refcounted, so that sessions
 * keep theirs across a SIGHUP. Times in milliseconds. */
struct deliver_cfg {
	int refs;
	enum conf_delivery mode;
	char *hostname;
	char *spool_dir;
	char host[256];         /* smarthost host (no brackets) */
	uint16_t port;
	char *tls_name;         /* certificate name to match */
	enum conf_tls tls;      /* IMPLICIT, STARTTLS or NONE (auto resolved) */
	SSL_CTX *ssl;           /* NULL when tls is NONE */
	char *user, *password;  /* NULL: no AUTH */
	char *rewrite_sender;   /* NULL: keep */
	bool rewrite_from;
	unsigned concurrency, per_conn;
	unsigned rate_minute, rate_hour;   /* 0: no cap */
	uint64_t retry_min, retry_max, lifetime, warn_after, timeout;
	char *postmaster;       /* NULL: none */
};

struct deliver_cfg *deliver_cfg_new(const struct conf *c, char *err,
                                    size_t errlen);
void deliver_cfg_ref(struct deliver_cfg *cfg);
void deliver_cfg_unref(struct deliver_cfg *cfg);

/* Operator actions waiting for a message in flight. */
#define DELIVER_PEND_HOLD   0x1
#define DELIVER_PEND_DELETE 0x2
#define DELIVER_PEND_BOUNCE 0x4

/* One message on its way: loaded from the index, waiting for a session
 * or being sent by one. */
struct deliver_job {
	struct deliver_job *next;      /* ready list */
	struct queue_msg *m;
	size_t n;                      /* recipients attempted */
	size_t *idx;                   /* their indices in m->rcpt */
	const char **rcpt, **notify, **orcpt;
	char (*notify_txt)[32];
	char *sender;                  /* rewrite_sender's copy, or NULL */
	struct deliver_client_msg cm;
	char path[PATH_MAX];           /* the body */
	uint64_t t_ready;              /* uv_now when it was loaded */
	unsigned pend;                 /* DELIVER_PEND_* */
};

struct deliver_session;

/* Starts a session to cfg's smarthost; it asks for jobs with
 * deliver_take_job() and reports with the calls below. */
int deliver_session_new(struct deliver *d, struct deliver_cfg *cfg,
                        uv_loop_t *loop, struct deliver_session **out);
/* A job is ready: an idle session takes it. */
void deliver_session_kick(struct deliver_session *s);
/* Shutdown: closes the session; its job (if any) is reported failed. */
void deliver_session_close(struct deliver_session *s);

/* ---- scheduler side, called by sessions -------------------------------- */

/* The next job for a session, or NULL. */
struct deliver_job *deliver_take_job(struct deliver *d);

/* Timing of an attempt, for the log's delays=a/b/c. */
struct deliver_times {
	uint64_t conn_ms;   /* connection setup this job waited for */
	uint64_t xfer_ms;   /* MAIL to the final reply */
};

/* The transaction is over: results[k] is the reply for recipient
 * j->idx[k]. The scheduler takes j back. */
void deliver_job_done(struct deliver *d, struct deliver_job *j,
                      const struct deliver_reply *const *results,
                      const char *relay, const struct deliver_times *t);

/* The session failed with j in flight (or before it was sent): every
 * recipient of j gets reply r (temporary). */
void deliver_job_failed(struct deliver *d, struct deliver_job *j,
                        const struct deliver_reply *r, const char *relay);

/* The session reached READY (connected, TLS, AUTH): the route works.
 * size: the SIZE of the server's last EHLO (deliver_client_size_max). */
void deliver_session_up(struct deliver *d, struct deliver_session *s,
                        uint64_t size);

/* The session is gone. route_fail: it failed in a way that says the route
 * is down or refuses us (connect, TLS, AUTH, greeting, throttling), with
 * r saying how. Called once, from the session's last close callback. */
void deliver_session_gone(struct deliver *d, struct deliver_session *s,
                          bool route_fail, bool auth_fail,
                          const struct deliver_reply *r);

/* ---- control socket (deliver_ctl.c) ------------------------------------ */

struct deliver_ctl;

int deliver_ctl_open(struct deliver *d, uv_loop_t *loop, const char *spool_dir,
                     struct deliver_ctl **out);
void deliver_ctl_close(struct deliver_ctl *c, void (*done_cb)(void *arg),
                       void *arg);
/* deliver_ctl_verb (deliver.h) on the socket. */
int deliver_ctl_add_verb(struct deliver_ctl *c, const char *verb,
                         deliver_ctl_verb_fn fn, void *arg);

/* A control request's answer arrives later, through this. text is the
 * reply line without the newline: "ok ..." or "err ...". */
typedef void (*deliver_ctl_reply_fn)(void *arg, const char *text);

/* Runs one request line (VERB [ARG]); reply() runs exactly once, maybe
 * before this returns. */
void deliver_ctl_run(struct deliver *d, const char *line,
                     deliver_ctl_reply_fn reply, void *arg);

/* The scheduler's counters as a JSON object, for "stats". */
void deliver_stats_json(struct deliver *d, char *out, size_t outlen);

/* ---- pure helpers (deliver_util.c), unit-tested ------------------------ */

/* The retry interval after `attempts` failed attempts (1 = the first):
 * retry_min doubling up to retry_max, then +0..25 % jitter (rnd in
 * [0, 1)) so that messages deferred together do not return together. */
uint64_t deliver_backoff(uint64_t retry_min, uint64_t retry_max,
                         uint32_t attempts, double rnd);

/* Rewrites a header section (without the blank line that ends it) for
 * rewrite_from_header: every From: field (with its continuation lines)
 * becomes "From: <sender>" and, unless the section has a Reply-To:, the
 * original From: field is kept as Reply-To:. Appends to out. */
int deliver_rewrite_from(const uint8_t *h, size_t n, const char *sender,
                         struct buf *out);

#endif
