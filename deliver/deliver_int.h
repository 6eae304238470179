/*
 * deliver/deliver_int.h - What the scheduler (deliver.c and the files it
 * is split into: deliver_conf.c, deliver_bounce.c, deliver_size.c,
 * deliver_verbs.c), the SMTP client sessions (deliver_session.c) and the
 * control socket (deliver_ctl.c) share inside deliver/: the settings, a
 * job (one message on its way), the scheduler's state, and the calls
 * between them. Not for other modules.
 */
#ifndef RELAY_DELIVER_INT_H
#define RELAY_DELIVER_INT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "common/buf.h"
#include "common/conf.h"
#include "deliver/deliver.h"
#include "deliver/deliver_client.h"
#include "deliver/deliver_mx.h"
#include "deliver/deliver_tlspol.h"
#include "queue/queue.h"
#include "queue/queue_stats.h"

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
	/* delivery = direct (deliver_direct.c). ssl: unverified client
	 * context for opportunistic STARTTLS. */
	uint16_t mx_port;
	bool mx_allow_private;
	enum conf_ip_pref ip_pref;
	unsigned max_rcpt_txn;      /* max_recipients_per_transaction */
	unsigned max_sessions;      /* max_delivery_sessions */
	char *bind4, *bind6;        /* NULL: the kernel's choice */
	struct deliver_tls_policy *tls_policy;   /* NULL: every domain may */
	SSL_CTX *ssl_verify;        /* tls_policy_file verify: chain + name */
	struct deliver_dest_policy *dest_policy; /* NULL: no overrides */
	struct deliver_endpoint self[CONF_LISTEN_MAX];  /* our listeners */
	size_t nself;
};

struct deliver_cfg *deliver_cfg_new(const struct conf *c, char *err,
                                    size_t errlen);
void deliver_cfg_ref(struct deliver_cfg *cfg);
void deliver_cfg_unref(struct deliver_cfg *cfg);

/* Operator actions waiting for a message in flight. */
#define DELIVER_PEND_HOLD   0x1
#define DELIVER_PEND_DELETE 0x2
#define DELIVER_PEND_BOUNCE 0x4

struct deliver_dest;
struct deliver_busy;

/* One message on its way to one destination: the recipients of a message
 * that route there, loaded from the index, waiting for a session of that
 * destination or being sent by one. A message whose recipients route to
 * several destinations is several jobs, independent of each other. */
struct deliver_job {
	struct deliver_job *next;      /* its destination's ready list */
	struct deliver_job *bnext;     /* the other jobs of the message */
	struct deliver_dest *dest;
	struct deliver_busy *b;        /* the message's busy entry */
	bool in_session;
	struct queue_msg *m;           /* b->latest: borrowed, shared by the
	                                  message's jobs; each changes only
	                                  its own recipients */
	size_t n;                      /* recipients attempted */
	size_t *idx;                   /* their indices in m->rcpt */
	const char **rcpt, **notify, **orcpt;
	char (*notify_txt)[32];
	char *sender;                  /* rewrite_sender's copy, or NULL */
	struct deliver_client_msg cm;
	char path[PATH_MAX];           /* the body */
	uint64_t t_ready;              /* uv_now when it was loaded */
	unsigned pend;                 /* DELIVER_PEND_* */
	bool route_fail;               /* direct: the result is our routing
	                                  failure, not a server's reply */
};

struct deliver_session;

/* Starts a session to destination dst (cfg's smarthost); it asks dst for
 * jobs with deliver_take_job() and reports with the calls below. dst
 * outlives it. */
int deliver_session_new(struct deliver_dest *dst, struct deliver_cfg *cfg,
                        uv_loop_t *loop, struct deliver_session **out);
/* Whether the session reached READY (direct: a failure before that
 * moves on to the next address). */
bool deliver_session_was_up(const struct deliver_session *s);
/* Whether the server said anything (a greeting): a connection that
 * failed before does not count against DELIVER_MX_SESSION_LIMIT. */
bool deliver_session_greeted(const struct deliver_session *s);
/* Whether it failed at STARTTLS or in the TLS handshake (direct). */
bool deliver_session_tls_failed(const struct deliver_session *s);
/* "may": how long a destination remembers a failed handshake. */
#define DELIVER_TLS_BROKEN_MS (3600 * 1000)
/* A job is ready: an idle session takes it. */
void deliver_session_kick(struct deliver_session *s);
/* Shutdown: closes the session; its job (if any) is reported failed. */
void deliver_session_close(struct deliver_session *s);

/* ---- scheduler side, called by sessions -------------------------------- */

/* The next job of dst for one of its sessions, or NULL. */
struct deliver_job *deliver_take_job(struct deliver_dest *dst);
/* The scheduler a destination belongs to. */
struct deliver *deliver_dest_owner(const struct deliver_dest *dst);

/* Timing of an attempt, for the log's delays=a/b/c. */
struct deliver_times {
	uint64_t conn_ms;   /* connection setup this job waited for */
	uint64_t xfer_ms;   /* MAIL to the final reply */
	const char *tls;    /* direct: "none", "TLSv1.3/unverified"; NULL:
	                       not logged (smarthost) */
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
void deliver_session_up(struct deliver_dest *dst, struct deliver_session *s,
                        uint64_t size);

/* The session is gone. route_fail: it failed in a way that says the route
 * is down or refuses us (connect, TLS, AUTH, greeting, throttling), with
 * r saying how. Called once, from the session's last close callback. */
void deliver_session_gone(struct deliver_dest *dst, struct deliver_session *s,
                          bool route_fail, bool auth_fail,
                          const struct deliver_reply *r);

/* ---- direct delivery (deliver_direct.c) -------------------------------- */

struct deliver_domain;
/* Direct mode's routing of recipient address rcpt: 0 with key (the MX
 * set and effective TLS level), -EAGAIN while its domain is looked up
 * (the scheduler is woken when it is done), -EPROTO when routing failed
 * (*fail gets the reply: 5xx bounces, 4xx defers). */
int deliver_direct_route(struct deliver *d, const char *rcpt, char *key,
                         size_t keylen, struct deliver_reply *fail);
/* A new direct destination: its try list, from the domain routed to it. */
void deliver_direct_dest_init(struct deliver *d, struct deliver_dest *dst);
/* Recipient rcpt's domain routes to dst: remembered (up to
 * DELIVER_DEST_DOMAINS_MAX), and a new one's destination_policy_file
 * entry applies too (the most restrictive limits win). */
#define DELIVER_DEST_DOMAINS_MAX 64
void deliver_direct_dest_note(struct deliver *d, struct deliver_dest *dst,
                              const char *rcpt);
/* Whether a recipient domain resolved lately routes to destination key
 * (a destination forgotten while idle can be made again): its name in
 * domain. */
bool deliver_direct_key_known(struct deliver *d, const char *key,
                              char *domain, size_t domlen);
/* Whether dst holds domain (lower case, as noted). */
bool deliver_dest_has_domain(const struct deliver_dest *dst,
                             const char *domain);
/* Smarthost mode: false while dst's host name is being resolved (the
 * lookup is started here; dst is run again when it is over), true when
 * addrs[] is ready or the host is a literal. */
bool deliver_direct_host_ready(struct deliver *d, struct deliver_dest *dst);
/* Cancels dst's lookups (dst is going). */
void deliver_direct_dest_free(struct deliver_dest *dst);
/* ip_preference = auto: (re)checks the IPv6 source address's FCrDNS
 * through dns/ (logged); d->v6_first follows. */
void deliver_direct_check_v6(struct deliver *d);
/* Forgets expired domains (not those being resolved); all when stopping. */
void deliver_direct_sweep(struct deliver *d, uint64_t now, bool all);

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

/* ---- the scheduler's state (deliver.c; read by the files below) ------- */

#define BUSY_BUCKETS 1024

/* The busy table: every message loaded as a job, in a session, or with an
 * index change on its way; the schedule scan skips them. */
struct deliver_busy {
	struct deliver_busy *next;
	char qid[QUEUE_ID_SIZE];
	/* The record as it is to be: loaded with the message, changed in
	 * place by each job for its own recipients (and by operator verbs),
	 * and written from here. NULL once nothing is on its way. */
	struct queue_msg *latest;
	struct deliver_job *jobs;  /* loaded or in a session (bnext) */
	unsigned njobs;
	/* Index changes are serialized per message: ops counts the failure
	 * reports (DSNs) and the index change on their way; while there are
	 * any, results only mark latest dirty, and one write of latest
	 * follows when they are done. A failure report is durable before
	 * the original changes (deliver_bounce.c). */
	unsigned ops;
	bool dirty;
	/* What the next write carries. Results are per recipient: chg[i]
	 * marks recipient i of latest changed since the last write, and the
	 * write hands just those to queue_update_rcpts(), which applies them
	 * to the record as stored, so two jobs of the message (or a later
	 * release writing other fields) can never undo each other. whole:
	 * a message-level change (hold, release, the delay-warning flag, an
	 * operator verb) that only a whole-record queue_update() carries;
	 * latest holds every job's results, so that write loses none.
	 * chg has latest->nrcpt entries, allocated at the first mark. */
	bool whole;
	uint8_t *chg;
	bool remove;               /* latest goes: deleted or bounced */
	bool removed;              /* ... and is gone from the index */
	/* The control request waiting for the next write, if any. */
	deliver_ctl_reply_fn reply;
	void *reply_arg;
	char ok_text[96];
	/* uv_now() ms until which the message is left alone after its
	 * index change failed (no resend loop on a full disk); 0: none. */
	uint64_t cool_until;
	/* Which recipients of latest are in a job (injob[i], latest->nrcpt
	 * entries, allocated by the first job): the others may be loaded
	 * while the jobs run, when they fall due (deliver_busy_more), so
	 * that a slow or throttled destination never delays another. */
	uint8_t *injob;
	/* uv_now() ms before which no more of the message is loaded: its
	 * other recipients wait for a paused destination or a lookup. */
	uint64_t more_after;
};

struct deliver_snode {
	struct deliver_snode *next;
	struct deliver_session *s;
	bool up;
	char name[300];     /* "host:port" it went to (a SIGHUP may change) */
};

/* Sends in the last window, for smarthost_rate: a ring of timestamps. */
struct deliver_rate {
	unsigned cap;
	uint64_t window_ms;
	uint64_t *t;
	unsigned head, n;
};

/* The key of a destination: "smarthost:HOST:PORT" (direct mode: the MX
 * set and TLS policy). */
#define DELIVER_DEST_KEY_MAX 320

/*
 * A destination (deliver_dest.c): where jobs go, and everything that
 * belongs to it rather than to a message: its sessions (and the idle ones
 * waiting for work), its concurrency, its pause and backoff when it is
 * down or refuses us, its rate caps, its TLS policy, its last error and
 * counters. Smarthost mode has exactly one. Destinations exist for what
 * is due or in flight, and go when idle with nothing worth keeping (a
 * paused one keeps its pause until it expires; rate windows with recent
 * sends are kept).
 */
/* The delivery latency histogram's upper bounds, seconds (metrics). */
#define DELIVER_LAT_BUCKETS 10
extern const unsigned deliver_lat_bounds[DELIVER_LAT_BUCKETS];

struct deliver_dest {
	struct deliver_dest *next;          /* d->dests */
	struct deliver *d;
	char key[DELIVER_DEST_KEY_MAX];
	char name[300];                     /* "HOST:PORT", for logs */
	enum conf_tls tls;                  /* TLS policy */

	struct deliver_snode *sessions;
	unsigned nsessions, nconnecting;
	struct deliver_job *ready, **ready_tail;
	unsigned nready;
	unsigned nbusy;                     /* jobs in its sessions */

	bool paused, probing;
	/* relayctl pause: paused by the operator until resumed (op_until
	 * 0) or until op_until (uv_now() ms); no failure or flush lifts it.
	 * In memory only: a restart forgets it. */
	bool op_paused;
	uint64_t op_until;
	uint64_t pause_until;               /* uv_now() ms */
	int64_t pause_until_wall;           /* unix seconds, for stats */
	unsigned fails;
	char reason[DELIVER_REPLY_TEXT_MAX - 64];
	char last_error[DELIVER_REPLY_TEXT_MAX];

	struct deliver_rate rate_min, rate_hour;

	/* Throttled by a reply (the reply table's DEST_THROTTLE row): until
	 * throttle_until (uv_now() ms) one session and one transaction at
	 * a time, throttle_gap ms apart (from last_take); a repeat while it
	 * lasts doubles its length (throttles: how many times). */
	uint64_t throttle_until, throttle_gap, last_take;
	int64_t throttle_until_wall;
	unsigned throttles;
	char throttle_reason[DELIVER_REPLY_TEXT_MAX - 64];

	/* delivery = direct: the try list of one attempt (deliver_mx.h),
	 * best first, each address with its MX host; new sessions go to
	 * addrs[addr_pos], the next one after a connection, greeting or
	 * EHLO failure; all failed: the destination pauses. */
	bool direct;
	int tls_level;                      /* deliver_tlspol.h */
	struct deliver_dest_addr {
		struct deliver_addr addr;
		char host[SMTP_DOMAIN_MAX + 1];
	} addrs[DELIVER_MX_ADDR_LIMIT];
	size_t naddrs, addr_pos;
	/* Sessions (greeted connections) that failed in this attempt: at
	 * DELIVER_MX_SESSION_LIMIT the attempt ends (Postfix's
	 * smtp_mx_session_limit), whatever addresses are left. */
	unsigned attempt_sessions;
	unsigned concurrency;               /* direct: sessions (0: the cfg's) */
	/* Direct: the recipient domains routed here (the first
	 * DELIVER_DEST_DOMAINS_MAX), for relayctl list/show and
	 * destination_policy_file (deliver_direct_dest_note). */
	char (*domains)[SMTP_DOMAIN_MAX + 1];
	size_t ndomains;
	/* "may" after a failed handshake: plaintext until then (uv_now),
	 * and why (relayctl destinations). */
	uint64_t tls_broken_until;
	int64_t tls_broken_until_wall;      /* unix seconds */
	char tls_broken_why[DELIVER_REPLY_TEXT_MAX];
	/* Smarthost mode: the smarthost's name resolved through dns/ into
	 * addrs[] (A then AAAA, tried in turn like MX addresses); no
	 * session starts before. */
	struct dns_req *hq[2];
	unsigned hpending;
	bool hresolved;

	uint64_t n_sent, n_deferred, n_bounced, n_attempts;
};

struct deliver {
	uv_loop_t *loop;
	struct queue *q;
	struct deliver_cfg *cfg;
	struct deliver_ctl *ctl;
	uv_timer_t timer;
	bool timer_inited;

	struct deliver_dest *dests;
	unsigned ndests;
	unsigned nsessions;         /* over every destination */
	unsigned nready;            /* jobs waiting, over every destination */
	struct deliver_busy *busy[BUSY_BUCKETS];
	size_t nbusy;

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

	/* DKIM keys (a reference; NULL: none), for the DSNs relayd writes:
	 * signed with the key of hostname's domain (deliver_bounce.c). */
	struct dkim_signer *dkim;

	/* delivery = direct (deliver_direct.c): the resolver (NULL until
	 * deliver_set_dns) and each recipient domain's routing. */
	struct dns *dns;
	struct deliver_domain *domains;
	size_t ndomains;
	/* ip_preference = auto: IPv6 first only when the IPv6 source
	 * address has forward-confirmed reverse DNS naming hostname;
	 * checked at start and SIGHUP (deliver_direct_check_v6). */
	bool v6_first;
	struct dns_req *v6q;
	struct deliver_addr v6src;
	char v6name[SMTP_DOMAIN_MAX + 1];

	/* uv_now() ms when a message held back briefly (a pause on one of
	 * its destinations while another's domain was looked up) is due to
	 * be loaded again; 0: none. */
	uint64_t route_wake;

	uint64_t n_sent, n_deferred, n_bounced, n_dsn, n_attempts;
	/* Arrival-to-sent latency of each recipient sent, in the fixed
	 * buckets of deliver_lat_bounds (seconds); the last is +Inf. */
	uint64_t lat_bucket[DELIVER_LAT_BUCKETS + 1];
	uint64_t lat_sum_ms;
	/* Failure reports that nobody will get: for a null-sender message
	 * (a bounce itself) with no postmaster to tell. */
	uint64_t n_dsn_dropped;
	int64_t started;
	unsigned inflight;          /* DSN works and index changes */
	bool stopping;
	void (*done_cb)(void *);
	void *done_arg;
};

/* ---- destinations (deliver_dest.c) ------------------------------------ */

/* The routing hook: the key of the destination recipient i of m goes to
 * (smarthost mode: "smarthost:HOST:PORT" for every one; direct mode:
 * deliver_direct_route). 0, or -EAGAIN (the domain is being resolved:
 * the recipient waits), -EPROTO (routing failed: deliver_direct_failure
 * says how), or another -errno (the recipient waits). */
int deliver_route(struct deliver *d, const struct queue_msg *m, size_t i,
                  char *key, size_t keylen);
/* The destination with this key; created when create is set (NULL: out
 * of memory, or none). */
struct deliver_dest *deliver_dest_get(struct deliver *d, const char *key,
                                      bool create);
/* The smarthost's destination, if it exists now. */
struct deliver_dest *deliver_dest_smarthost(struct deliver *d);
/* Appends j to dst's ready list. */
void deliver_dest_push(struct deliver_dest *dst, struct deliver_job *j);
/* Takes j out of dst's ready list (true if it was there). */
bool deliver_dest_unready(struct deliver_dest *dst, struct deliver_job *j);
/* Kicks idle sessions, starts new ones within the concurrency limit and
 * rate caps; *wait_ms: when to look again for the rate caps (0: no need). */
void deliver_dest_run(struct deliver_dest *dst, uint64_t now,
                      uint64_t *wait_ms);
/* A paused destination whose pause is over probes with one session. */
void deliver_dest_tick(struct deliver_dest *dst, uint64_t now);
/* The destination is down or refuses us: pause it (backoff over its
 * failures), and defer the jobs waiting for it. */
void deliver_dest_pause(struct deliver_dest *dst, bool auth, const char *why);
/* A reply from dst matched the reply table's throttle row `rule` (secs:
 * the row's length): dst drops to one session and one transaction per
 * gap for that long, doubled on a repeat while it lasts (logged). */
void deliver_dest_throttle(struct deliver_dest *dst, const char *rule,
                           unsigned secs, const char *reply);
/* Whether dst is throttled now. */
bool deliver_dest_throttled(const struct deliver_dest *dst, uint64_t now);
/* relayctl flush, SIGHUP: try now. probe: one session first. Not a
 * destination the operator paused. */
void deliver_dest_unpause(struct deliver_dest *dst, bool probe);
/* relayctl pause DEST [--for]: ms 0 until resumed. Jobs waiting go back
 * to the index (no attempt counted); sessions finish what they carry. */
void deliver_dest_op_pause(struct deliver_dest *dst, uint64_t ms);
/* relayctl resume DEST: lifts the operator's pause (and a failure
 * pause); the messages it held are tried now. false: was not paused. */
bool deliver_dest_op_resume(struct deliver_dest *dst);
/* The messages cooling down behind a pause are due again (resume). */
void deliver_busy_uncool(struct deliver *d);
/* Puts dst's ready jobs back (they stay in the index as they are). */
void deliver_dest_drop_ready(struct deliver_dest *dst);
/* Closes dst's sessions (shutdown). */
void deliver_dest_close_sessions(struct deliver_dest *dst);
/* New rate caps (SIGHUP): windows keep their history unless the cap
 * changes. */
void deliver_dest_set_rates(struct deliver_dest *dst, unsigned per_minute,
                            unsigned per_hour);
/* Frees destinations that are idle with nothing worth keeping (all of
 * them when stopping and idle). */
void deliver_dest_sweep(struct deliver *d, uint64_t now);
/* The destinations as JSON objects, comma-separated, for "destinations":
 * {"name":KEY,"state":"active"|"probing"|"paused"|"throttled","until":
 * UNIX (paused; 0: until resumed; throttled: its end),"failures":N,
 * "sessions":N,"connecting":N,"ready":N (jobs waiting),"in_flight":N
 * (jobs in sessions),"attempts","sent","deferred","bounced":N,"reason":
 * TEXT (of the pause; throttled: the reply),"last_error":TEXT,
 * "tls_broken_until":UNIX (direct, "may": plaintext after a failed
 * handshake until then; 0: not broken),"operator":BOOL (relayctl pause),
 * "domains":[DOMAIN...] (direct: routed here)}. 0, or the first error of
 * an append (out is bounded). */
int deliver_dest_json(struct deliver *d, struct buf *out);

/* Busy table (deliver.c). deliver_busy_is ends an expired cool-down. */
struct deliver_busy *deliver_busy_find(struct deliver *d, const char *qid);
/* Writes b->latest if it changed and nothing else is on its way for the
 * message (one index change in flight per message); frees b when nothing
 * is left. */
void deliver_busy_flush(struct deliver *d, struct deliver_busy *b);
/* A job leaves its message's busy entry without a result (shutdown, out
 * of memory, back to hold): the recipients stay as the index has them. */
void deliver_job_drop(struct deliver *d, struct deliver_job *j);
struct deliver_busy *deliver_busy_add(struct deliver *d, const char *qid);
void deliver_busy_del(struct deliver *d, const char *qid);
/* Recipient i of b->latest changed: the next write carries it (out of
 * memory: the whole record). */
void deliver_busy_mark(struct deliver_busy *b, size_t i);
bool deliver_busy_is(struct deliver *d, const char *qid, uint64_t now);

/* A walk of the schedule collecting ids that are not busy, or busy with
 * due recipients in no job (queue_scan_due's callback). busy_next: the
 * earliest time a busy message's other recipients fall due (-1: none). */
struct deliver_scan {
	struct deliver *d;
	char (*ids)[QUEUE_ID_SIZE];
	size_t n, want, visited, max_visit;
	int64_t now, busy_next;
};
int deliver_scan_cb(void *arg, const char *qid, int64_t due);

void deliver_schedule(struct deliver *d);
/* When stopping and nothing is left: frees d. Call last. */
void deliver_maybe_done(struct deliver *d);
/* The schedule runs within ms (never later than an earlier arming). */
void deliver_arm(struct deliver *d, uint64_t ms);
int64_t deliver_wall_now(void);
void deliver_job_free(struct deliver_job *j);
/* Pending or deferred. */
bool deliver_rcpt_open(const struct queue_rcpt *r);
void deliver_set_reply(struct queue_rcpt *r, const char *text);
/* The log line of one recipient, in Postfix's shape. */
void deliver_log_result(const struct queue_msg *m, const struct queue_rcpt *r,
                        const char *relay, const struct deliver_times *t,
                        const char *dsn, const char *status, const char *text);
/* ---- DSN orchestration (deliver_bounce.c) ------------------------------ */

/* One recipient a report is about. */
struct deliver_dsn_item {
	size_t i;              /* recipient index in m */
	char status[16];       /* "5.1.1" */
	const char *reason;    /* our words, or NULL */
	bool remote;           /* last_reply came from the smarthost */
};

/* Whether r's NOTIFY asks for a report of kind bit (QUEUE_NOTIFY_*). */
bool deliver_wants(const struct queue_rcpt *r, uint8_t bit);

/*
 * Queues one DSN about m for the recipients in items[]. To the envelope
 * sender; for a null sender, to the postmaster when one is configured and
 * the message was not already for the postmaster; otherwise there is none
 * (a log line says so). Never loops: a DSN has the null sender itself.
 *
 * after (may be NULL): the busy entry whose latest is m; the report
 * counts among its ops, and latest is written (or removed, with remove)
 * only once the DSN is committed - or, if it cannot be, with the
 * recipients it was about deferred instead, so nothing is lost.
 */
void deliver_send_dsn(struct deliver *d, const struct queue_msg *m,
                      const struct deliver_dsn_item *items, size_t n,
                      bool delayed, int64_t retry_until,
                      struct deliver_busy *after, bool remove);

/* b->latest has changed: written (or removed, with remove) after the
 * failure report about fail[] is durable; reply (may be NULL) then gets
 * "ok ok_text". */
void deliver_settle(struct deliver *d, struct deliver_busy *b, bool remove,
                    const struct deliver_dsn_item *fail, size_t nfail,
                    deliver_ctl_reply_fn reply, void *arg,
                    const char *ok_text);

/* relayctl bounce: every open recipient of m fails now; appended to
 * fail[] (room for m->nrcpt). */
void deliver_fail_open(struct deliver *d, struct queue_msg *m,
                       const char *why, struct deliver_dsn_item *fail,
                       size_t *nfail);

/* ---- the smarthost's SIZE (deliver_size.c) ----------------------------- */

/* "HOST:PORT" of g's smarthost. */
void deliver_size_name(const struct deliver_cfg *g, char *out, size_t n);
/* Tells the size callback the current limit. */
void deliver_size_notify(struct deliver *d);
/* At start and SIGHUP: the SIZE as last seen, if it is this smarthost's. */
void deliver_size_load(struct deliver *d);
/* A session's EHLO named size (0: none): the new limit, if it changed. */
void deliver_size_learn(struct deliver *d, uint64_t size);

/* ---- pure helpers (deliver_util.c), unit-tested ------------------------ */

/* The retry interval after `attempts` failed attempts (1 = the first):
 * retry_min doubling up to retry_max, then +0..25 % jitter (rnd in
 * [0, 1)) so that messages deferred together do not return together. */
uint64_t deliver_backoff(uint64_t retry_min, uint64_t retry_max,
                         uint32_t attempts, double rnd);


#endif
