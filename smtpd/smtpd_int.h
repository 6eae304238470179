/*
 * smtpd/smtpd_int.h - What the SMTP server's files share: the server
 * (smtpd.c: listeners, configurations, the TLS context), its sessions
 * (smtpd_session.c: I/O, TLS, flow control, timeouts), the commit path
 * (smtpd_commit.c: the body sink, quotas, queue commits) and AUTH
 * (smtpd_auth.c: credentials, password checks, lockouts). Not for use
 * outside smtpd/.
 */
#ifndef RELAY_SMTPD_INT_H
#define RELAY_SMTPD_INT_H

#include "smtpd/smtpd.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <openssl/ssl.h>

#include "common/buf.h"
#include "common/tls_stream.h"
#include "dkim/dkim.h"
#include "queue/queue_quota.h"
#include "queue/queue_stats.h"
#include "smtpd/smtpd_cidr.h"
#include "common/cred.h"
#include "smtpd/smtpd_lockout.h"
#include "smtpd/smtpd_policy_net.h"
#include "smtpd/smtpd_proto.h"


/* Memory per session is bounded for a client that does not read
 * (issue 8 §4): at most IN_HIGH of its input is held (plaintext), and
 * input stops being processed, and read, while OUT_HIGH of replies wait
 * to be sent (s->out, libuv's write queue, OpenSSL's output); the core
 * writes at most SMTPD_OUT_BATCH (plus one reply) before they are sent.
 * About 53 KiB in all; an idle session holds neither buffer (nor, with
 * TLS, grown OpenSSL buffers: tls_stream_trim). */
#define READ_CHUNK   (64 * 1024)
/* Unconsumed input kept while a commit is pending, a line is partial or
 * replies wait for a slow reader. */
#define IN_HIGH      (32 * 1024)
/* The same for a TLS session, whose input also waits in OpenSSL (at most
 * about one record: the socket is read only while OpenSSL holds less than
 * a record) and whose replies also wait encrypted: a TLS session that
 * does not read stays within 64 KiB as well. */
#define TLS_IN_HIGH  (8 * 1024)
/* Stop processing input and reading while this much output waits (TLS:
 * TLS_OUT_HIGH, for the reason above). */
#define OUT_HIGH     (16 * 1024)
#define TLS_OUT_HIGH (8 * 1024)
/* The kernel's send buffer of a session (SO_SNDBUF; Linux doubles it).
 * Replies are small: without a cap, autotuning lets a client that does
 * not read make relayd generate megabytes of them per connection into
 * kernel memory (and spend the CPU to) before OUT_HIGH is ever reached. */
#define SESS_SNDBUF  (32 * 1024)
#define BACKLOG      511
/* A graceful close waits this long for queued replies to drain; a peer
 * that stopped reading must not hold its session slot forever. */
#define LINGER_MS    10000
/* Password checks (each one KDF run: with the default scrypt about 0.1 s
 * and 32 MiB) go through two lanes, so that failures - someone else's
 * guesses - never slow down or refuse a client without failures of its
 * own (issue 8 §3; smtpd_auth.c says how). The fast lane, for such
 * clients: at most this many checks on the thread pool at once; more
 * AUTHs meanwhile get 454 4.7.0, so nobody queues up unbounded work. */
#define AUTH_FAST_MAX 16
/* The slow lane, for clients that failed before: at most this many of its
 * checks on the pool at once (libuv's pool has 4 threads: the others stay
 * free for the fast lane), at most AUTH_SLOW_PER_NAME waiting per name
 * and AUTH_SLOW_MAX in all; more get 454 4.7.0. */
#define AUTH_SLOW_ACTIVE 1
#define AUTH_SLOW_PER_NAME 8
#define AUTH_SLOW_MAX 256
/* Checks at once of clients the full client table cannot track (every
 * entry locked or busy); more get 454 4.7.0. */
#define AUTH_UNTRACKED_MAX 4
/* The credentials file is looked at (stat) at most this often, when an
 * AUTH arrives: relayctl's edits apply without a restart. */
#define CREDS_CHECK_MS 1000

/* One listening socket. On the heap: a reload may close it while the
 * server lives on; it is freed by its close callback. */
struct smtpd_listener {
	struct smtpd *srv;
	uv_tcp_t tcp;
	struct conf_listen cl;     /* a copy: configurations come and go */
	bool listening;            /* uv_listen done (not after a failure) */
};

/* A configuration shared by the server and the sessions that started
 * under it. SIGHUP installs a new one for new sessions; a session keeps
 * the one it started with until it ends, so nothing changes under it. */
struct smtpd_conf {
	struct conf conf;
	struct smtpd_relay *relay;   /* conf's relay policy, parsed */
	struct smtpd_cidr_list trusted;     /* trusted_networks */
	struct smtpd_cidr_list plaintext;   /* auth_plaintext_networks */
	unsigned refs;
};

struct smtpd_session;
struct auth_job;

/* Which credentials file is loaded: a change of any field (relayctl
 * renames a new file over the old) means it is read again. */
struct creds_id {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct smtpd {
	uv_loop_t *loop;
	struct smtpd_conf *conf;     /* for new sessions */
	struct queue *q;
	/* DKIM keys (dkim_key lines): loaded at start as relayd's user,
	 * again on SIGHUP (a key that does not load keeps the old one). A
	 * reference; each signing job on the pool holds its own. */
	struct dkim_signer *dkim;
	unsigned dkim_jobs;          /* signing jobs on the pool */
	/* Per-credential quota counters: the LMDB store of q. */
	struct queue_quota_store quota;
	/* TLS for new sessions (a reference); NULL: no certificate. A reload
	 * replaces it; sessions hold their own references. */
	SSL_CTX *tls;
	uint64_t tls_gen;            /* the load that produced tls */
	uint64_t tls_next_gen;       /* the last load started */
	unsigned tls_loading;        /* loads on the thread pool */
	/* AUTH. creds NULL: no credentials (AUTH gets 454). */
	struct cred_store *creds;
	struct creds_id creds_id;    /* the file creds came from */
	uint64_t creds_gen;          /* the check that produced them */
	uint64_t creds_next_gen;
	uint64_t creds_checked;      /* uv_now() of the last check started */
	bool creds_checking;         /* a check is on the pool */
	unsigned auth_jobs;          /* every job: on the pool or waiting */
	/* Failed AUTH (smtpd_auth.c): clients (the address; IPv6 by /64)
	 * and credential names as typed, each with its lane. */
	struct smtpd_lockout *lockout;
	struct smtpd_lockout *names;
	unsigned lockout_cap;        /* entries in each (auth_lockout_table) */
	unsigned auth_fast;          /* fast-lane checks on the pool */
	unsigned auth_slow;          /* slow-lane checks on the pool */
	unsigned auth_untracked;     /* checks of untracked clients */
	unsigned auth_waiting;       /* slow-lane checks waiting */
	struct auth_job *wait_head, **wait_tail;   /* FIFO */
	uv_timer_t lane_timer;       /* the next slow-lane start or deadline */
	bool lane_timer_open;
	struct smtpd_listener *lst[CONF_LISTEN_MAX];
	size_t nlst;
	/* Per-client-IP rates: the listener's, so SIGHUP keeps them. */
	struct smtpd_relay_limits *limits;
	size_t open_listeners;
	struct smtpd_session *sessions;   /* doubly linked */
	unsigned nsessions;
	uint64_t next_sid;
	/* Counters since start (smtpd/metrics.c): replies sent by id, the
	 * connect-time refusals included, and failed TLS handshakes. */
	uint64_t replies[SMTP_R__COUNT];
	uint64_t tls_failed;
	/* The delivery side's limit on message size (the smarthost's SIZE,
	 * issue 8 §10); 0: none. New sessions advertise and enforce the
	 * smaller of this and max_message_size. */
	uint64_t size_cap;
	bool stopping;
	/* smtpd_stop: when it began (uv_now) and the shutdown_timeout of
	 * the configuration then: sessions inside a mail transaction may
	 * finish it until stop_at + stop_grace, then get 421. */
	uint64_t stop_at, stop_grace;
	void (*stop_cb)(void *arg);
	void *stop_arg;
};

/* Which deadline the session's timer runs for (besides its lifetime). */
enum sess_phase {
	SESS_PH_NONE,    /* a commit or password check runs: no deadline */
	SESS_PH_CMD,     /* waiting for a command line, or inside one */
	SESS_PH_DATA,    /* DATA or a BDAT chunk: data_min_rate applies */
};

/* A session's TLS, as the shell sees it (the core only knows in or out). */
enum sess_tls {
	SESS_TLS_OFF,        /* plaintext */
	SESS_TLS_HANDSHAKE,  /* bytes go to OpenSSL, none to the core */
	SESS_TLS_ON,
	SESS_TLS_FAILED,     /* nothing more is read or written through it */
};

struct smtpd_session {
	struct smtpd *srv;
	struct smtpd_conf *cf;     /* the configuration this session runs on */
	enum conf_listen_mode mode;
	uv_tcp_t tcp;
	uv_timer_t timer;
	int open_handles;
	bool closing;          /* close started: no more input or output */
	bool commit_pending;   /* the queue holds a callback to us */
	bool auth_pending;     /* a password check holds a pointer to us */
	struct auth_job *auth_job;   /* that check */
	/* The table the authenticated credential lives in (a reference):
	 * the core reads its restrictions for the rest of the session. */
	struct cred_store *auth_creds;
	struct sockaddr_storage peer;
	bool stop_after_commit;
	bool reading;
	bool eof;              /* the client shut down its side */
	/* Deadlines (uv_now() milliseconds; smtpd_session.c's
	 * update_timer). born: accepted, for session_max_lifetime. deadline:
	 * the current phase's: the idle wait and the command line begun
	 * (timeout_command from its first byte), or the data's budget
	 * (timeout_data, topped up by data_min_rate). */
	uint64_t born;
	uint64_t deadline;
	enum sess_phase phase;
	bool line_started;     /* a command line's first byte has come */
	bool cmd_done;         /* a command completed since update_timer */
	uint64_t data_new;     /* data bytes consumed since update_timer */
	uint64_t data_total;   /* and in this data phase so far */
	uint64_t data_start;   /* uv_now() when it began */
	uint64_t data_last;    /* uv_now() when data last came */
	struct smtpd_proto *proto;
	struct smtpd_relay_sess relay;   /* relay policy of this client */
	/* Plaintext: in is what the core has yet to consume (decrypted when
	 * in TLS), out the replies it wrote (encrypted on the way out). */
	struct buf in, out;
	enum sess_tls tls;
	SSL_CTX *tls_ctx;      /* the server's when the session began (a ref) */
	struct tls_stream tls_s;   /* TLS over memory BIOs, when tls != OFF */
	struct queue_body *body;
	uint64_t commit_size;  /* body size of the message being committed */
	char *dkim_sig;        /* its DKIM-Signature block, or NULL */
	/* rewrite_from_header (at acceptance, before signing): the header
	 * section held until its end, then written rewritten. */
	bool rw_on;
	struct buf rw;
	/* The message being committed was charged to this credential's
	 * quota at quota_now: a failed commit gives the unit back. */
	bool quota_charged;
	int64_t quota_now;
	char quota_key[CRED_NAME_MAX + 1];
	char sid[20];
	char ip[64];           /* "127.0.0.1" / "::1" */
	int port;
	struct smtpd_session *prev, *next;
};

/* smtpd.c */
struct smtpd_conf *smtpd_conf_hold(struct smtpd_conf *c);
void smtpd_conf_drop(struct smtpd_conf *c);
/* Frees the server once it is stopping and nothing refers to it. */
void smtpd_server_maybe_done(struct smtpd *srv);

/* smtpd_session.c */
void smtpd_session_accept_cb(uv_stream_t *server, int status);
/* Runs the protocol over buffered input; sends the replies. */
void smtpd_session_process(struct smtpd_session *s);
/* relayd stops: a session inside a mail transaction (MAIL to the end of
 * its data) is left to finish it, its timer set to the shutdown deadline;
 * true then. False: no transaction open, close it now. */
bool smtpd_session_drain(struct smtpd_session *s);
/* graceful: the replies already queued are sent before the close. */
void smtpd_session_close(struct smtpd_session *s, bool graceful);
/* Frees s once its handles are closed and nothing holds a callback. */
void smtpd_session_maybe_free(struct smtpd_session *s);
/* The core's replies in s->out go to the wire (through TLS if on). */
void smtpd_session_flush(struct smtpd_session *s);

/* smtpd_commit.c */
extern const struct smtpd_sink_ops smtpd_sink_ops;
enum smtp_reply_id smtpd_quota_mail(void *ctx, const struct cred *c);
/* queue_min_free at MAIL (smtpd_proto_cfg.spool). */
enum smtp_reply_id smtpd_spool_mail(void *ctx, uint64_t size);
/* SMTPD_REQ_COMMIT: charge the quota if any, then commit to the queue. */
void smtpd_commit_start(struct smtpd_session *s);

/* smtpd_auth.c */
/* SMTPD_REQ_AUTH: lockouts first, then the password check on the pool. */
void smtpd_auth_start(struct smtpd_session *s);
/* The client left (s->eof) or s is closing: a check still waiting in the
 * slow lane is dropped (454 4.7.0 to the core). True if there was one. */
bool smtpd_auth_cancel(struct smtpd_session *s);
/* smtpd_new and smtpd_stop: the slow lane's timer. */
int smtpd_auth_init(struct smtpd *srv, unsigned table_size);
void smtpd_auth_stop(struct smtpd *srv);
/* The lockout tables' settings from conf (start, SIGHUP). */
void smtpd_auth_set_conf(struct smtpd *srv, const struct conf *conf);
/* SIGHUP: the credentials file is read again on the thread pool. */
void smtpd_auth_reload(struct smtpd *srv);
/* At start: the credentials file is read (blocking). */
void smtpd_auth_load_now(struct smtpd *srv);

/* Counts a reply in the statistics history (smtpd/metrics.c): a 250
 * after the data as a message accepted, a refusal as rejected and under
 * its reason class; by credential when cred is not NULL or "". */
void smtpd_stats_reply(struct smtpd *s, enum smtp_reply_id id,
                       const char *cred);

#endif
