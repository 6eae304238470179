/*
 * smtpd/smtpd_session.c - The I/O shell around smtpd_proto: listeners,
 * one session per TCP connection (libuv), TLS (STARTTLS and smtps; OpenSSL
 * over memory BIOs, so libuv does all socket I/O and nothing blocks),
 * timeouts, flow control, and the sink that streams the body into the
 * spool and asks the queue to commit. Owns each session's uv_tcp_t,
 * uv_timer_t and SSL; a session is freed only when both handles are
 * closed and no commit or password check is in flight. Owns the
 * server's TLS context and its reloads (smtpd_tls.c loads it), and the
 * AUTH side: the credentials table (loaded at start, on SIGHUP and when
 * the file changes), password checks on the thread pool, and the
 * failed-AUTH lockout table; and the wiring of the per-credential quotas
 * (queue/queue_quota.h): a peek at MAIL, a charge before each commit.
 */
#include "smtpd/smtpd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/smtp.h"
#include "queue/queue_quota.h"
#include "smtpd/smtpd_policy.h"
#include "smtpd/smtpd_policy_net.h"
#include "smtpd/smtpd_cidr.h"
#include "smtpd/smtpd_cred.h"
#include "smtpd/smtpd_lockout.h"
#include "smtpd/smtpd_proto.h"
#include "smtpd/smtpd_tls.h"

#define READ_CHUNK   (64 * 1024)
/* Unconsumed input kept while a commit is pending or a line is partial. */
#define IN_HIGH      (256 * 1024)
/* Stop reading while this much output waits for a slow reader. */
#define OUT_HIGH     (256 * 1024)
#define BACKLOG      511
/* A graceful close waits this long for queued replies to drain; a peer
 * that stopped reading must not hold its session slot forever. */
#define LINGER_MS    10000
/* Ciphertext is moved between the socket and OpenSSL in pieces this big
 * (a TLS record is at most 16 KiB plus overhead). */
#define TLS_CHUNK    (16 * 1024 + 512)
/* Password checks on the thread pool at once (each one scrypt run: about
 * 0.1 s and 32 MiB). More AUTHs meanwhile get 454 4.7.0: a guesser
 * cannot queue up unbounded work, and memory stays bounded. */
#define AUTH_MAX_INFLIGHT 16
/* The credentials file is looked at (stat) at most this often, when an
 * AUTH arrives: relayctl's edits apply without a restart. */
#define CREDS_CHECK_MS 1000
/* Keys (client addresses and credential names) the lockout table holds. */
#define LOCKOUT_CAP 4096

struct smtpd_listener {
	struct smtpd *srv;
	uv_tcp_t tcp;
	struct conf_listen cl;     /* a copy: configurations come and go */
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

static struct smtpd_conf *conf_hold(struct smtpd_conf *c)
{
	c->refs++;
	return c;
}

/* The access lists, parsed once per configuration. smtpd_check_conf
 * refused bad ones before; should one slip through (or memory run out),
 * the list is empty: nobody trusted, AUTH nowhere in plaintext (the safe
 * side). */
static void conf_lists(struct smtpd_conf *c)
{
	char err[256];
	if (smtpd_cidr_parse(c->conf.trusted_networks, &c->trusted, err,
	                     sizeof err) < 0)
		log_err("trusted_networks: %s; trusting nobody", err);
	if (smtpd_cidr_parse(c->conf.auth_plaintext_networks, &c->plaintext,
	                     err, sizeof err) < 0)
		log_err("auth_plaintext_networks: %s; AUTH only in TLS", err);
}

int smtpd_check_conf(const struct conf *conf, char *err, size_t errlen)
{
	struct smtpd_cidr_list l;
	char msg[256];
	int r;
	if ((r = smtpd_cidr_parse(conf->trusted_networks, &l, msg,
	                          sizeof msg)) < 0) {
		snprintf(err, errlen, "trusted_networks: %s", msg);
		return r;
	}
	smtpd_cidr_list_free(&l);
	if ((r = smtpd_cidr_parse(conf->auth_plaintext_networks, &l, msg,
	                          sizeof msg)) < 0) {
		snprintf(err, errlen, "auth_plaintext_networks: %s", msg);
		return r;
	}
	smtpd_cidr_list_free(&l);
	return 0;
}

static void conf_drop(struct smtpd_conf *c)
{
	if (c && --c->refs == 0) {
		smtpd_relay_free(c->relay);
		smtpd_cidr_list_free(&c->trusted);
		smtpd_cidr_list_free(&c->plaintext);
		conf_free(&c->conf);
		free(c);
	}
}

/* A shared configuration made from conf, which is moved in (and left
 * zeroed) on success. NULL when its relay policy does not parse (the
 * callers checked it before: only out of memory) with conf untouched. */
static struct smtpd_conf *conf_new(struct conf *conf)
{
	char err[512];
	struct smtpd_conf *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	if (smtpd_relay_new(conf, NULL, &c->relay, err, sizeof err) < 0) {
		log_err("relay policy: %s", err);
		free(c);
		return NULL;
	}
	c->conf = *conf;
	memset(conf, 0, sizeof *conf);
	c->refs = 1;
	conf_lists(c);
	return c;
}

struct smtpd_session;

/* Which credentials file is loaded: a change of any field (relayctl
 * renames a new file over the old) means it is read again. */
struct creds_id {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

/* A password check (and maybe a look at the credentials file first) on
 * the thread pool. s is NULL for a reload alone (SIGHUP). */
struct auth_job {
	uv_work_t req;
	struct smtpd *srv;
	struct smtpd_session *s;
	struct smtpd_creds *creds;   /* a reference to the table in use */
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
	struct smtpd_creds *loaded;   /* the file read again, or NULL */
	int load_err;
	char err[512];
	/* The verification. */
	bool verified;
	enum smtpd_cred_result res;
	const struct smtpd_cred *cred;
};

/* A certificate being loaded on the thread pool (SIGHUP). */
struct tls_load {
	uv_work_t req;
	struct smtpd *srv;
	uint64_t gen;
	char *cert, *key;
	SSL_CTX *ctx;          /* the result, or NULL with err */
	char err[512];
};

struct smtpd {
	uv_loop_t *loop;
	struct smtpd_conf *conf;     /* for new sessions */
	struct queue *q;
	/* Per-credential quota counters: the LMDB store of q. */
	struct queue_quota_store quota;
	/* TLS for new sessions (a reference); NULL: no certificate. A reload
	 * replaces it; sessions hold their own references. */
	SSL_CTX *tls;
	uint64_t tls_gen;            /* the load that produced tls */
	uint64_t tls_next_gen;       /* the last load started */
	unsigned tls_loading;        /* loads on the thread pool */
	/* AUTH. creds NULL: no credentials (AUTH gets 454). */
	struct smtpd_creds *creds;
	struct creds_id creds_id;    /* the file creds came from */
	uint64_t creds_gen;          /* the check that produced them */
	uint64_t creds_next_gen;
	uint64_t creds_checked;      /* uv_now() of the last check started */
	bool creds_checking;         /* a check is on the pool */
	unsigned auth_inflight;      /* password checks on the pool */
	unsigned auth_jobs;          /* every job on the pool */
	struct smtpd_lockout *lockout;
	struct smtpd_listener lst[CONF_LISTEN_MAX];
	size_t nlst;
	/* Per-client-IP rates: the listener's, so SIGHUP keeps them. */
	struct smtpd_relay_limits *limits;
	size_t open_listeners;
	struct smtpd_session *sessions;   /* doubly linked */
	unsigned nsessions;
	uint64_t next_sid;
	bool stopping;
	void (*stop_cb)(void *arg);
	void *stop_arg;
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
	/* The table the authenticated credential lives in (a reference):
	 * the core reads its restrictions for the rest of the session. */
	struct smtpd_creds *auth_creds;
	struct sockaddr_storage peer;
	bool stop_after_commit;
	bool reading;
	bool eof;              /* the client shut down its side */
	struct smtpd_proto *proto;
	struct smtpd_relay_sess relay;   /* relay policy of this client */
	/* Plaintext: in is what the core has yet to consume (decrypted when
	 * in TLS), out the replies it wrote (encrypted on the way out). */
	struct buf in, out;
	enum sess_tls tls;
	SSL_CTX *tls_ctx;      /* the server's when the session began (a ref) */
	SSL *ssl;              /* owns rbio (ciphertext in), wbio (out) */
	BIO *rbio, *wbio;
	struct queue_body *body;
	uint64_t commit_size;  /* body size of the message being committed */
	/* The message being committed was charged to this credential's
	 * quota at quota_now: a failed commit gives the unit back. */
	bool quota_charged;
	int64_t quota_now;
	char quota_key[SMTPD_CRED_NAME_MAX + 1];
	char sid[20];
	char ip[64];           /* "127.0.0.1" / "::1" */
	int port;
	struct smtpd_session *prev, *next;
};

struct write_req {
	uv_write_t req;
	struct smtpd_session *s;
	size_t len;
	uint8_t data[];
};

static void session_process(struct smtpd_session *s);
static void session_close(struct smtpd_session *s, bool graceful);

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
		buf_printf(&h, " (%s %s)", SSL_get_version(s->ssl),
		           SSL_get_cipher_name(s->ssl));
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

static const struct smtpd_sink_ops sink_ops = {
	.begin = sink_begin,
	.write = sink_write,
	.abort = sink_abort,
};

/* ---- output and flow control ----------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct smtpd_session *s = w->s;
	free(w);
	if (status < 0 && status != UV_ECANCELED && !s->closing) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(status));
		session_close(s, false);
		return;
	}
	if (!s->closing)
		session_process(s);
}

/* Bytes for the wire, in order after everything sent before. */
static void send_raw(struct smtpd_session *s, const uint8_t *p, size_t n)
{
	if (n == 0 || s->closing)
		return;
	/* Most replies fit the socket buffer: write them now, with no request
	 * to allocate and no write callback (which costs libuv an epoll_ctl
	 * per write). Only what the kernel did not take is queued. (libuv
	 * refuses a try_write while writes are queued, keeping the order.) */
	uv_buf_t now = uv_buf_init((char *)p, (unsigned)n);
	int k = uv_try_write((uv_stream_t *)&s->tcp, &now, 1);
	if (k == (int)n)
		return;
	if (k < 0 && k != UV_EAGAIN) {
		log_info("s=%s: write error: %s", s->sid, uv_strerror(k));
		session_close(s, false);
		return;
	}
	if (k > 0) {
		p += k;
		n -= (size_t)k;
	}
	struct write_req *w = malloc(sizeof *w + n);
	if (!w) {
		session_close(s, false);
		return;
	}
	w->s = s;
	w->len = n;
	memcpy(w->data, p, n);
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int r = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
	if (r < 0) {
		free(w);
		log_info("s=%s: write error: %s", s->sid, uv_strerror(r));
		session_close(s, false);
	}
}

/* What OpenSSL wrote for the peer (handshake, records, alerts). */
static void tls_drain(struct smtpd_session *s)
{
	uint8_t tmp[TLS_CHUNK];
	int n;
	while ((n = BIO_read(s->wbio, tmp, sizeof tmp)) > 0)
		send_raw(s, tmp, (size_t)n);
}

static void tls_fail(struct smtpd_session *s, const char *what);

static void flush(struct smtpd_session *s)
{
	if (s->out.len == 0 || s->closing)
		return;
	switch (s->tls) {
	case SESS_TLS_OFF:
		send_raw(s, s->out.data, s->out.len);
		break;
	case SESS_TLS_ON: {
		/* A memory BIO never pushes back: SSL_write takes it all. */
		size_t off = 0;
		while (off < s->out.len) {
			size_t k = s->out.len - off;
			if (k > 4 * TLS_CHUNK)
				k = 4 * TLS_CHUNK;
			ERR_clear_error();
			int n = SSL_write(s->ssl, s->out.data + off, (int)k);
			if (n <= 0) {
				buf_reset(&s->out);
				tls_fail(s, "write");
				return;
			}
			off += (size_t)n;
		}
		tls_drain(s);
		break;
	}
	case SESS_TLS_HANDSHAKE:
	case SESS_TLS_FAILED:
		/* Nothing can be said: a plaintext reply in the middle of a
		 * handshake would only be garbage to the peer's TLS. */
		break;
	}
	buf_reset(&s->out);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct smtpd_session *s = h->data;
	(void)hint;
	if (s->tls != SESS_TLS_OFF) {
		/* Ciphertext: read_cb hands it to OpenSSL at once, so one
		 * buffer serves every session on the loop thread. */
		static uint8_t raw[READ_CHUNK];
		*b = uv_buf_init((char *)raw, sizeof raw);
		return;
	}
	if (buf_reserve(&s->in, READ_CHUNK) < 0) {
		*b = uv_buf_init(NULL, 0);
		return;
	}
	*b = uv_buf_init((char *)s->in.data + s->in.len,
	                 (unsigned)(s->in.cap - s->in.len));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static uint64_t current_timeout(const struct smtpd_session *s)
{
	const struct conf *cf = &s->cf->conf;
	if (s->tls == SESS_TLS_HANDSHAKE)
		return cf->timeout_command;
	switch (smtpd_proto_state(s->proto)) {
	case SMTPD_ST_INIT:
		return cf->timeout_greeting;
	case SMTPD_ST_DATA:
	case SMTPD_ST_BDAT:
		return cf->timeout_data;
	default:
		return cf->timeout_command;
	}
}

static void timer_cb(uv_timer_t *t);

/* Reads only when the protocol can take input and the peer reads ours. */
static void update_reading(struct smtpd_session *s)
{
	/* Reading goes on during a commit: pipelined commands wait in s->in
	 * (bounded by IN_HIGH), and no epoll change is paid per message. */
	bool want = !s->closing && !s->eof && s->in.len < IN_HIGH &&
	            uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) < OUT_HIGH;
	if (want && !s->reading) {
		int r = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
		if (r < 0) {
			log_warn("s=%s: read start: %s", s->sid, uv_strerror(r));
			session_close(s, false);
			return;
		}
		s->reading = true;
	} else if (!want && s->reading) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->reading = false;
	}
	/* The handshake has one deadline, set when it starts: a peer that
	 * trickles bytes does not push it back. */
	if (s->closing || s->tls == SESS_TLS_HANDSHAKE)
		return;
	if (!s->commit_pending && !s->auth_pending)
		uv_timer_start(&s->timer, timer_cb, current_timeout(s), 0);
	else
		uv_timer_stop(&s->timer);
}

/* ---- quotas --------------------------------------------------------------- */

/* The credential's limits; both 0: it has no quota. */
static struct queue_quota_limits quota_limits(const struct smtpd_cred *c)
{
	struct queue_quota_limits lim = {0, 0};
	if (c) {
		lim.hourly = smtpd_cred_hourly(c);
		lim.daily = smtpd_cred_daily(c);
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

/* The core's quota hook at MAIL (smtpd_proto_cfg.quota): a short read
 * transaction on the loop thread (it never waits for the writer). It only
 * spares the client a body that could not be charged; the charge before
 * the commit is what holds under concurrent sessions. */
static enum smtp_reply_id quota_mail(void *ctx, const struct smtpd_cred *c)
{
	struct smtpd_session *s = ctx;
	struct smtpd *srv = s->srv;
	struct queue_quota_limits lim = quota_limits(c);
	if ((!lim.hourly && !lim.daily) || !srv->quota.ops)
		return SMTP_R__COUNT;
	const char *name = smtpd_cred_name(c);
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

static void session_maybe_free(struct smtpd_session *s);

/* After a commit or a charge: go on reading, or finish the close or the
 * shutdown that waited for it. */
static void commit_next(struct smtpd_session *s)
{
	if (s->closing) {
		session_maybe_free(s);
		return;
	}
	if (s->commit_pending)
		return;   /* the charged message went on to the queue */
	if (s->stop_after_commit) {
		smtpd_proto_shutdown(s->proto, &s->out);
		flush(s);
		session_close(s, true);
		return;
	}
	session_process(s);
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
		char auth[SMTPD_CRED_NAME_MAX + 16] = "";
		if (t->auth[0])
			snprintf(auth, sizeof auth, ", auth=%s", t->auth);
		log_info("%s: from=<%s>, size=%" PRIu64 ", nrcpt=%zu, client=%s, "
		         "scrubbed=%u%s (s=%s)", t->qid, from, s->commit_size,
		         t->nrcpt, client, t->scrubbed, auth, s->sid);
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
static void start_charge(struct smtpd_session *s, const struct smtpd_cred *c,
                         const struct queue_quota_limits *lim)
{
	struct smtpd *srv = s->srv;
	const struct smtpd_txn *t = smtpd_proto_txn(s->proto);
	snprintf(s->quota_key, sizeof s->quota_key, "%s", smtpd_cred_name(c));
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

static void start_commit(struct smtpd_session *s)
{
	const struct smtpd_cred *c = smtpd_proto_cred(s->proto);
	struct queue_quota_limits lim = quota_limits(c);
	if ((lim.hourly || lim.daily) && s->srv->quota.ops)
		start_charge(s, c, &lim);
	else
		queue_message(s);
}

/* ---- TLS -------------------------------------------------------------------- */

/* A handshake or TLS read/write went wrong: logged with the peer and
 * OpenSSL's reason; the alert OpenSSL wrote, if any, goes out; closed.
 * Nothing reaches the core any more. */
static void tls_fail(struct smtpd_session *s, const char *what)
{
	char why[256];
	smtpd_tls_reason(why, sizeof why, "protocol error");
	log_info("s=%s: TLS %s failed with [%s]:%d: %s", s->sid, what, s->ip,
	         s->port, why);
	bool handshake = s->tls == SESS_TLS_HANDSHAKE;
	tls_drain(s);
	s->tls = SESS_TLS_FAILED;
	if (handshake && smtpd_proto_state(s->proto) == SMTPD_ST_STARTTLS)
		smtpd_proto_done(s->proto, -EPROTO, &s->out);
	session_close(s, true);
}

/* The context a handshake uses: the server's newest (a certificate
 * renewed since the client connected is the better one), else the one
 * the session began with (TLS was turned off by a reload since). */
static SSL_CTX *tls_ctx_for(const struct smtpd_session *s)
{
	return s->srv->tls ? s->srv->tls : s->tls_ctx;
}

/* Starts a server-side handshake: the client speaks first (ClientHello).
 * The whole handshake must end within timeout_command. */
static int tls_begin(struct smtpd_session *s)
{
	SSL_CTX *ctx = tls_ctx_for(s);
	if (!ctx)
		return -EINVAL;
	s->ssl = SSL_new(ctx);
	s->rbio = BIO_new(BIO_s_mem());
	s->wbio = BIO_new(BIO_s_mem());
	if (!s->ssl || !s->rbio || !s->wbio) {
		BIO_free(s->rbio);
		BIO_free(s->wbio);
		SSL_free(s->ssl);
		s->ssl = NULL;
		s->rbio = s->wbio = NULL;
		ERR_clear_error();
		return -ENOMEM;
	}
	SSL_set_bio(s->ssl, s->rbio, s->wbio);   /* s->ssl owns both now */
	SSL_set_accept_state(s->ssl);
	s->tls = SESS_TLS_HANDSHAKE;
	uv_timer_start(&s->timer, timer_cb, s->cf->conf.timeout_command, 0);
	return 0;
}

/* Moves decrypted input into s->in, as far as it has room (IN_HIGH);
 * the rest waits in OpenSSL and the socket stops being read (flow
 * control as in plaintext). Returns 0, or -1 when the session closed. */
static int tls_pull(struct smtpd_session *s)
{
	while (s->in.len < IN_HIGH) {
		if (buf_reserve(&s->in, READ_CHUNK) < 0)
			break;
		size_t room = s->in.cap - s->in.len;
		if (room > READ_CHUNK)
			room = READ_CHUNK;
		ERR_clear_error();
		int n = SSL_read(s->ssl, s->in.data + s->in.len, (int)room);
		if (n > 0) {
			s->in.len += (size_t)n;
			continue;
		}
		int e = SSL_get_error(s->ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			s->eof = true;   /* close_notify: as a TCP half-close */
			break;
		}
		tls_fail(s, "read");
		return -1;
	}
	tls_drain(s);   /* TLS 1.3 key updates, alerts */
	return s->closing ? -1 : 0;
}

static void tls_handshake(struct smtpd_session *s)
{
	ERR_clear_error();
	int r = SSL_do_handshake(s->ssl);
	if (r != 1) {
		int e = SSL_get_error(s->ssl, r);
		if (e == SSL_ERROR_WANT_READ) {
			tls_drain(s);
			return;
		}
		tls_fail(s, "handshake");
		return;
	}
	tls_drain(s);
	if (s->closing)
		return;
	s->tls = SESS_TLS_ON;
	const char *sni = SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name);
	char name[128] = "";
	if (sni)
		log_escape(name, sizeof name, sni, strlen(sni));
	log_info("s=%s: TLS established: %s %s%s%s", s->sid,
	         SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl),
	         sni ? ", sni=" : "", name);
	if (s->mode == CONF_LISTEN_SMTPS)
		smtpd_proto_greet(s->proto, &s->out);   /* RFC 8314 §3.3 */
	else
		smtpd_proto_done(s->proto, 0, &s->out);   /* back to no EHLO */
	/* Application data may have come with the client's Finished. */
	session_process(s);
}

/* STARTTLS accepted by the core: its 220 goes out in plaintext, then
 * every byte read is the handshake's. */
static void starttls(struct smtpd_session *s)
{
	flush(s);
	if (s->closing)
		return;
	/* CVE-2011-0411: the core consumed (and threw away) what followed
	 * the STARTTLS line; from here on, s->in only ever receives
	 * decrypted bytes, so nothing read before the handshake can reach
	 * the core after it. */
	buf_reset(&s->in);
	int r = tls_begin(s);
	if (r < 0) {
		log_err("s=%s: cannot start TLS: %s", s->sid, strerror(-r));
		smtpd_proto_done(s->proto, r, &s->out);
		session_close(s, false);
		return;
	}
	update_reading(s);
}

/* ---- AUTH: credentials, password checks, lockout ---------------------------- */

static void server_maybe_done(struct smtpd *srv);

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
	j->load_err = smtpd_creds_load(j->path, &j->loaded, j->err,
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
		size_t n = smtpd_creds_count(j->loaded);
		smtpd_creds_free(srv->creds);
		srv->creds = smtpd_creds_ref(j->loaded);
		log_info("%scredentials loaded from %s: %zu credential%s", why,
		         j->path, n, n == 1 ? "" : "s");
	} else if (j->load_err == -ENOENT) {
		if (srv->creds)
			log_warn("%scredentials file %s is gone: AUTH unavailable",
			         why, j->path);
		else
			log_info("%s%s: AUTH unavailable", why, j->err);
		smtpd_creds_free(srv->creds);
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
	smtpd_creds_free(j->creds);
	smtpd_creds_free(j->loaded);
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
	const struct smtpd_creds *t = j->loaded ? j->loaded : j->creds;
	if (t) {
		j->res = smtpd_creds_verify(t, j->user, j->pw, j->pwlen, &j->cred);
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
	log_escape(d, n, user, strnlen(user, SMTPD_CRED_NAME_MAX + 1));
}

static void auth_after_cb(uv_work_t *req, int status)
{
	struct auth_job *j = req->data;
	struct smtpd *srv = j->srv;
	struct smtpd_session *s = j->s;
	/* srv->auth_jobs drops last, just before server_maybe_done: until
	 * then nothing (session_maybe_free included) can free srv. */
	if (j->check)
		srv->creds_checking = false;
	if (status == 0 && !srv->stopping)
		creds_install(srv, j, s ? "" : "SIGHUP: ");
	if (!s) {
		auth_job_free(j);
		srv->auth_jobs--;
		server_maybe_done(srv);
		return;
	}
	srv->auth_inflight--;
	s->auth_pending = false;
	if (s->closing || smtpd_proto_state(s->proto) != SMTPD_ST_AUTH) {
		/* Gone, timed out or shut down while the KDF ran. */
		smtpd_proto_done(s->proto, SMTPD_AUTH_TEMPFAIL, &s->out);
		auth_job_free(j);
		if (s->closing)
			session_maybe_free(s);
		else
			session_process(s);
		srv->auth_jobs--;
		server_maybe_done(srv);
		return;
	}
	char user[SMTPD_CRED_NAME_MAX * 4 + 8], kn[SMTPD_LOCKOUT_KEY_MAX],
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
		         smtpd_cred_result_names[j->res], s->ip);
		switch (j->res) {
		case SMTPD_CRED_OK: {
			const struct smtpd_creds *t = j->loaded ? j->loaded : j->creds;
			smtpd_lockout_clear(srv->lockout, kn, now);
			smtpd_creds_free(s->auth_creds);
			s->auth_creds = smtpd_creds_ref((struct smtpd_creds *)t);
			smtpd_proto_set_cred(s->proto, j->cred);
			result = SMTPD_AUTH_OK;
			break;
		}
		case SMTPD_CRED_BAD_PASSWORD:
		case SMTPD_CRED_UNKNOWN: {
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
		case SMTPD_CRED_DISABLED:
			result = SMTPD_AUTH_FAILED;
			break;
		default:
			result = SMTPD_AUTH_TEMPFAIL;
			break;
		}
	}
	auth_job_free(j);
	smtpd_proto_done(s->proto, result, &s->out);
	session_process(s);
	srv->auth_jobs--;
	server_maybe_done(srv);
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
static void start_auth(struct smtpd_session *s)
{
	struct smtpd *srv = s->srv;
	const char *user;
	const void *pw;
	size_t pwlen;
	smtpd_proto_auth_request(s->proto, &user, &pw, &pwlen);
	char who[SMTPD_CRED_NAME_MAX * 4 + 8], kn[SMTPD_LOCKOUT_KEY_MAX],
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
		j->creds = srv->creds ? smtpd_creds_ref(srv->creds) : NULL;
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
static void creds_reload(struct smtpd *srv)
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
static void creds_load_now(struct smtpd *srv)
{
	struct auth_job j = {.srv = srv};
	j.path = srv->conf->conf.credentials_file;
	j.force = true;
	j.gen = ++srv->creds_next_gen;
	creds_check(&j);
	srv->creds_checked = uv_now(srv->loop);
	creds_install(srv, &j, "");
	smtpd_creds_free(j.loaded);
}

/* ---- input ----------------------------------------------------------------- */

/* Runs the protocol over buffered input until it needs more, raises a
 * request, or closes; then sends the replies (batched: RFC 2920). */
static void session_process(struct smtpd_session *s)
{
	if (s->closing || s->tls == SESS_TLS_HANDSHAKE)
		return;   /* the handshake drives the session until it ends */
	for (;;) {
		/* In TLS, decrypt even while a commit runs: input waits in
		 * s->in, bounded, as plaintext would. */
		if (s->tls == SESS_TLS_ON && tls_pull(s) < 0)
			return;
		if (s->closing || s->commit_pending || s->auth_pending ||
		    s->in.len == 0)
			break;
		enum smtpd_req req;
		size_t k = smtpd_proto_feed(s->proto, s->in.data, s->in.len,
		                            &s->out, &req);
		buf_consume(&s->in, k);
		if (req == SMTPD_REQ_COMMIT) {
			start_commit(s);
			continue;
		}
		if (req == SMTPD_REQ_CLOSE) {
			flush(s);
			session_close(s, true);
			return;
		}
		if (req == SMTPD_REQ_STARTTLS) {
			starttls(s);
			return;
		}
		if (req == SMTPD_REQ_AUTH) {
			start_auth(s);
			if (smtpd_proto_state(s->proto) == SMTPD_ST_CLOSED) {
				flush(s);   /* 421: locked out */
				session_close(s, true);
				return;
			}
			continue;
		}
		if (k == 0)
			break;
	}
	flush(s);
	if (s->closing)
		return;
	if (s->eof && !s->commit_pending && !s->auth_pending) {
		session_close(s, true);
		return;
	}
	update_reading(s);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct smtpd_session *s = st->data;
	if (nread == 0 || s->closing)
		return;
	if (nread == UV_EOF) {
		if (s->tls == SESS_TLS_HANDSHAKE) {
			log_info("s=%s: TLS handshake failed with [%s]:%d: connection "
			         "closed by the client", s->sid, s->ip, s->port);
			s->tls = SESS_TLS_FAILED;
			session_close(s, false);
			return;
		}
		/* A half-close: what the client sent before it still gets
		 * processed and answered (pipelined input, a commit running). */
		s->eof = true;
		session_process(s);
		return;
	}
	if (nread < 0) {
		log_info("s=%s: read error: %s", s->sid, uv_strerror((int)nread));
		session_close(s, false);
		return;
	}
	switch (s->tls) {
	case SESS_TLS_OFF:
		s->in.len += (size_t)nread;   /* read into s->in by alloc_cb */
		session_process(s);
		return;
	case SESS_TLS_FAILED:
		return;
	case SESS_TLS_HANDSHAKE:
	case SESS_TLS_ON:
		/* A memory BIO takes everything (it only grows); what it holds
		 * is bounded because reading stops while s->in is full. */
		if (BIO_write(s->rbio, b->base, (int)nread) != (int)nread) {
			log_err("s=%s: TLS: out of memory", s->sid);
			session_close(s, false);
			return;
		}
		if (s->tls == SESS_TLS_HANDSHAKE)
			tls_handshake(s);
		else
			session_process(s);
		return;
	}
}

static void timer_cb(uv_timer_t *t)
{
	struct smtpd_session *s = t->data;
	if (s->tls == SESS_TLS_HANDSHAKE) {
		log_info("s=%s: TLS handshake timed out with [%s]:%d", s->sid, s->ip,
		         s->port);
		s->tls = SESS_TLS_FAILED;
		if (smtpd_proto_state(s->proto) == SMTPD_ST_STARTTLS)
			smtpd_proto_done(s->proto, -ETIMEDOUT, &s->out);
		session_close(s, false);
		return;
	}
	log_info("s=%s: timeout in state %s from [%s]:%d", s->sid,
	         smtpd_state_names[smtpd_proto_state(s->proto)], s->ip, s->port);
	smtpd_proto_timeout(s->proto, &s->out);
	flush(s);
	session_close(s, true);
}

/* ---- life cycle ------------------------------------------------------------ */

static void server_maybe_done(struct smtpd *srv);

/* Frees the session once both handles are closed and the queue holds no
 * callback to it. The body in progress, if any, is aborted here. */
static void session_maybe_free(struct smtpd_session *s)
{
	if (s->open_handles > 0 || s->commit_pending || s->auth_pending)
		return;
	struct smtpd *srv = s->srv;
	if (s->prev)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	srv->nsessions--;
	smtpd_proto_free(s->proto);
	SSL_free(s->ssl);            /* and its BIOs; NULL: no-op */
	SSL_CTX_free(s->tls_ctx);
	smtpd_creds_free(s->auth_creds);
	conf_drop(s->cf);
	buf_free(&s->in);
	buf_free(&s->out);
	free(s);
	server_maybe_done(srv);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct smtpd_session *s = h->data;
	s->open_handles--;
	session_maybe_free(s);
}

static void close_handles(struct smtpd_session *s)
{
	if (!uv_is_closing((uv_handle_t *)&s->timer))
		uv_close((uv_handle_t *)&s->timer, handle_closed_cb);
	if (!uv_is_closing((uv_handle_t *)&s->tcp))
		uv_close((uv_handle_t *)&s->tcp, handle_closed_cb);
}

static void linger_cb(uv_timer_t *t)
{
	struct smtpd_session *s = t->data;
	log_info("s=%s: peer not reading; closing [%s]:%d", s->sid, s->ip,
	         s->port);
	close_handles(s);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	struct smtpd_session *s = req->data;
	(void)status;
	free(req);
	close_handles(s);
}

/* graceful: the replies already queued are sent before the close. */
static void session_close(struct smtpd_session *s, bool graceful)
{
	if (s->closing)
		return;
	if (graceful && s->tls == SESS_TLS_ON) {
		/* close_notify: the client can tell our close from a cut. */
		ERR_clear_error();
		SSL_shutdown(s->ssl);
		ERR_clear_error();
		tls_drain(s);
		if (s->closing)
			return;
	}
	s->closing = true;
	if (s->proto)
		log_info("s=%s: disconnect from [%s]:%d in state %s%s", s->sid, s->ip,
		         s->port, smtpd_state_names[smtpd_proto_state(s->proto)],
		         s->tls == SESS_TLS_HANDSHAKE ? " (TLS handshake)" : "");
	uv_timer_stop(&s->timer);
	if (s->reading)
		uv_read_stop((uv_stream_t *)&s->tcp);
	s->reading = false;
	/* Graceful only while the peer is reading: a full write queue would
	 * never drain. The shutdown itself is bounded by LINGER_MS. */
	if (graceful &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) < OUT_HIGH) {
		uv_shutdown_t *req = malloc(sizeof *req);
		if (req) {
			req->data = s;
			if (uv_shutdown(req, (uv_stream_t *)&s->tcp, shutdown_cb) == 0) {
				uv_timer_start(&s->timer, linger_cb, LINGER_MS, 0);
				return;
			}
			free(req);
		}
	}
	close_handles(s);
}

static unsigned count_ip(const struct smtpd *srv, const char *ip)
{
	unsigned n = 0;
	for (const struct smtpd_session *s = srv->sessions; s; s = s->next)
		if (strcmp(s->ip, ip) == 0)
			n++;
	return n;
}

static void peer_name(uv_tcp_t *t, struct sockaddr_storage *peer, char *ip,
                      size_t n, int *port)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	snprintf(ip, n, "unknown");
	*port = 0;
	memset(peer, 0, sizeof *peer);
	if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) < 0)
		return;
	*peer = ss;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		uv_ip4_name(a, ip, n);
		*port = ntohs(a->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		uv_ip6_name(a, ip, n);
		*port = ntohs(a->sin6_port);
	}
}

static void connection_cb(uv_stream_t *server, int status)
{
	struct smtpd_listener *l = server->data;
	struct smtpd *srv = l->srv;
	const struct conf *cf = &srv->conf->conf;
	if (status < 0) {
		log_warn("accept on %s:%u: %s", l->cl.host, l->cl.port,
		         uv_strerror(status));
		return;
	}
	struct smtpd_session *s = calloc(1, sizeof *s);
	if (!s) {
		log_err("accept: out of memory");
		return;
	}
	s->srv = srv;
	s->cf = conf_hold(srv->conf);
	s->mode = l->cl.mode;
	if (srv->tls && SSL_CTX_up_ref(srv->tls))
		s->tls_ctx = srv->tls;
	buf_init(&s->in, IN_HIGH + READ_CHUNK);
	buf_init(&s->out, SIZE_MAX);
	snprintf(s->sid, sizeof s->sid, "%" PRIx64, ++srv->next_sid);
	uv_tcp_init(srv->loop, &s->tcp);
	uv_timer_init(srv->loop, &s->timer);
	s->tcp.data = s->timer.data = s;
	s->open_handles = 2;
	s->next = srv->sessions;
	if (s->next)
		s->next->prev = s;
	srv->sessions = s;
	srv->nsessions++;

	int r = uv_accept(server, (uv_stream_t *)&s->tcp);
	if (r < 0) {
		log_warn("accept: %s", uv_strerror(r));
		s->closing = true;
		close_handles(s);
		return;
	}
	uv_tcp_nodelay(&s->tcp, 1);
	peer_name(&s->tcp, &s->peer, s->ip, sizeof s->ip, &s->port);
	const struct sockaddr *peer = (const struct sockaddr *)&s->peer;
	bool trusted = smtpd_cidr_match(&srv->conf->trusted, peer);
	smtpd_relay_sess_init(&s->relay, s->cf->relay, srv->limits, peer,
	                      s->ip, s->sid);

	struct smtpd_proto_cfg pc = {
		.hostname = cf->hostname,
		.sid = s->sid,
		.max_message_size = cf->max_message_size,
		.max_recipients = cf->max_recipients,
		.max_bad_commands = cf->max_bad_commands,
		.bare_normalize = cf->bare_newline == CONF_BARE_NORMALIZE,
		.long_lines_reject = cf->long_lines == CONF_LONG_LINES_REJECT,
		.scrub = (const char *const *)cf->scrub_headers,
		.nscrub = cf->nscrub_headers,
		.mode = s->mode,
		.tls_available = s->tls_ctx != NULL,
		.policy = &smtpd_relay_policy_ops,
		.policy_ctx = &s->relay,
		.trusted = trusted,
		.auth_plaintext = smtpd_cidr_match(&srv->conf->plaintext, peer),
		.auth_available = srv->creds != NULL,
		.quota = quota_mail,
		.quota_ctx = s,
	};
	s->proto = smtpd_proto_new(&pc, &sink_ops, s);
	if (!s->proto) {
		log_err("s=%s: out of memory", s->sid);
		s->closing = true;
		close_handles(s);
		return;
	}

	/* deny_networks, rate_connections: logged there, with the reason. */
	enum smtp_reply_id refuse = smtpd_relay_connect(&s->relay,
	                                                smtpd_relay_now());
	bool logged = refuse != SMTP_R__COUNT;
	if (logged)
		(void)0;
	else if (srv->nsessions > cf->max_connections)
		refuse = SMTP_R_TOO_MANY_CONN;
	else if (count_ip(srv, s->ip) > cf->max_connections_per_ip)
		refuse = SMTP_R_TOO_MANY_CONN_IP;
	if (refuse != SMTP_R__COUNT) {
		const struct smtp_reply_def *d = &smtp_replies[refuse];
		if (!logged)
			log_info("s=%s: refused [%s]:%d: %u %s %s", s->sid, s->ip,
			         s->port, d->code, d->enh, d->text);
		/* On smtps a plaintext reply would be garbage to the client's
		 * TLS, and a handshake just to refuse costs what the limit is
		 * there to save: the connection is closed without a word. */
		if (s->mode != CONF_LISTEN_SMTPS)
			buf_printf(&s->out, "%u %s %s\r\n", d->code, d->enh, d->text);
		flush(s);
		session_close(s, true);
		return;
	}
	log_info("s=%s: connect from [%s]:%d to %s%s", s->sid, s->ip, s->port,
	         conf_listen_mode_names[s->mode], trusted ? " (trusted)" : "");
	if (s->mode == CONF_LISTEN_SMTPS) {
		/* RFC 8314: TLS from the first byte; the greeting comes after
		 * the handshake, inside it. */
		r = tls_begin(s);
		if (r < 0) {
			log_err("s=%s: cannot start TLS: %s", s->sid,
			        r == -EINVAL ? "no certificate loaded" : strerror(-r));
			session_close(s, false);
			return;
		}
	} else {
		smtpd_proto_greet(s->proto, &s->out);
		flush(s);
	}
	update_reading(s);
}

/* ---- server ------------------------------------------------------------- */

int smtpd_new(uv_loop_t *loop, struct conf *conf, struct queue *q,
              struct smtpd **out)
{
	struct smtpd *srv = calloc(1, sizeof *srv);
	struct smtpd_relay_limits *lim =
		smtpd_relay_limits_new(SMTPD_RELAY_RATE_KEYS);
	struct smtpd_conf *c = srv && lim ? conf_new(conf) : NULL;
	if (!c) {
		/* conf stays the caller's */
		free(srv);
		smtpd_relay_limits_free(lim);
		return -ENOMEM;
	}
	srv->limits = lim;
	srv->loop = loop;
	srv->conf = c;
	srv->q = q;
	if (q)
		queue_quota_store_lmdb(q, &srv->quota);
	conf = &c->conf;
	srv->lockout = smtpd_lockout_new(LOCKOUT_CAP);
	if (!srv->lockout) {
		*out = srv;
		return -ENOMEM;
	}
	smtpd_lockout_set(srv->lockout, conf->auth_fail_limit,
	                  conf->auth_fail_window, conf->auth_lockout);
	int r = 0;
	for (size_t i = 0; i < conf->nlisten; i++) {
		const struct conf_listen *cl = &conf->listen[i];
		struct smtpd_listener *l = &srv->lst[i];
		struct sockaddr_storage ss;
		l->srv = srv;
		l->cl = *cl;
		if (cl->ipv6)
			r = uv_ip6_addr(cl->host, cl->port, (struct sockaddr_in6 *)&ss);
		else
			r = uv_ip4_addr(cl->host, cl->port, (struct sockaddr_in *)&ss);
		if (r == 0)
			r = uv_tcp_init(loop, &l->tcp);
		if (r < 0) {
			log_err("listen %s:%u: %s", cl->host, cl->port, uv_strerror(r));
			break;
		}
		l->tcp.data = l;
		srv->nlst++;
		srv->open_listeners++;
		r = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss,
		                cl->ipv6 ? UV_TCP_IPV6ONLY : 0);
		if (r < 0) {
			log_err("cannot bind %s%s%s:%u: %s", cl->ipv6 ? "[" : "",
			        cl->host, cl->ipv6 ? "]" : "", cl->port, uv_strerror(r));
			break;
		}
	}
	if (r < 0) {
		/* The caller closes the loop's handles via smtpd_stop. */
		*out = srv;
		return r == UV_EADDRINUSE ? -EADDRINUSE : (r < 0 ? r : -EINVAL);
	}
	*out = srv;
	return 0;
}

void smtpd_set_queue(struct smtpd *srv, struct queue *q)
{
	srv->q = q;
	if (q)
		queue_quota_store_lmdb(q, &srv->quota);
}

const struct conf *smtpd_conf(const struct smtpd *srv)
{
	return &srv->conf->conf;
}

/* ---- the TLS context ------------------------------------------------------ */

static void server_maybe_done(struct smtpd *srv);

static void tls_install(struct smtpd *srv, SSL_CTX *ctx, uint64_t gen,
                        const char *cert_file)
{
	char desc[512];
	if (smtpd_tls_ctx_describe(ctx, desc, sizeof desc))
		log_warn("TLS certificate in %s has expired: %s", cert_file, desc);
	log_info("TLS certificate loaded from %s: %s", cert_file, desc);
	SSL_CTX_free(srv->tls);   /* sessions using it hold their own refs */
	srv->tls = ctx;
	srv->tls_gen = gen;
}

static bool any_smtps(const struct smtpd *srv)
{
	for (size_t i = 0; i < srv->nlst; i++)
		if (srv->lst[i].cl.mode == CONF_LISTEN_SMTPS)
			return true;
	return false;
}

static void tls_load_work_cb(uv_work_t *req)
{
	struct tls_load *ld = req->data;
	ld->ctx = smtpd_tls_ctx_new(ld->cert, ld->key, ld->err, sizeof ld->err);
}

static void tls_load_done_cb(uv_work_t *req, int status)
{
	struct tls_load *ld = req->data;
	struct smtpd *srv = ld->srv;
	srv->tls_loading--;
	if (status < 0 || srv->stopping) {
		SSL_CTX_free(ld->ctx);
	} else if (!ld->ctx) {
		/* A renewal gone wrong (a missing file, a key that does not
		 * match) must not take TLS down: the old context stays. */
		log_err("SIGHUP: TLS certificate not reloaded: %s; %s", ld->err,
		        srv->tls ? "keeping the one loaded before"
		                 : "TLS stays off");
	} else if (ld->gen < srv->tls_gen) {
		SSL_CTX_free(ld->ctx);   /* a later reload got there first */
	} else {
		tls_install(srv, ld->ctx, ld->gen, ld->cert);
	}
	free(ld->cert);
	free(ld->key);
	free(ld);
	server_maybe_done(srv);
}

/* SIGHUP: the certificate is read again (certbot and acme.sh renew it in
 * place) on the thread pool, so the loop never waits for the disk, and
 * installed for new sessions when it loads; sessions in TLS keep their
 * SSL, which holds its own reference to the old context. */
static void tls_reload(struct smtpd *srv)
{
	const struct conf *cf = &srv->conf->conf;
	if (!cf->tls_cert_file[0]) {
		if (!srv->tls)
			return;
		if (any_smtps(srv)) {
			/* listen needs a restart, so the smtps port stays. */
			log_warn("SIGHUP: tls_cert_file is empty but an smtps listener "
			         "is open; keeping the loaded certificate");
			return;
		}
		log_info("SIGHUP: tls_cert_file is empty: no TLS for new sessions");
		SSL_CTX_free(srv->tls);
		srv->tls = NULL;
		srv->tls_gen = ++srv->tls_next_gen;
		return;
	}
	struct tls_load *ld = calloc(1, sizeof *ld);
	if (ld) {
		ld->cert = strdup(cf->tls_cert_file);
		ld->key = strdup(cf->tls_key_file);
	}
	if (!ld || !ld->cert || !ld->key) {
		if (ld) {
			free(ld->cert);
			free(ld->key);
			free(ld);
		}
		log_err("SIGHUP: TLS certificate not reloaded: out of memory");
		return;
	}
	ld->srv = srv;
	ld->gen = ++srv->tls_next_gen;
	ld->req.data = ld;
	int r = uv_queue_work(srv->loop, &ld->req, tls_load_work_cb,
	                      tls_load_done_cb);
	if (r < 0) {
		log_err("SIGHUP: TLS certificate not reloaded: %s", uv_strerror(r));
		free(ld->cert);
		free(ld->key);
		free(ld);
		return;
	}
	srv->tls_loading++;
}

int smtpd_check_tls(const struct conf *conf, char *err, size_t errlen)
{
	if (!conf->tls_cert_file[0])
		return 0;
	SSL_CTX *ctx = smtpd_tls_ctx_new(conf->tls_cert_file, conf->tls_key_file,
	                                 err, errlen);
	if (!ctx)
		return -EINVAL;
	SSL_CTX_free(ctx);
	return 0;
}

/* ---- configuration -------------------------------------------------------- */

void smtpd_set_conf(struct smtpd *srv, struct conf *conf)
{
	struct smtpd_conf *c = conf_new(conf);
	if (!c) {
		log_err("reload: out of memory; keeping the running configuration");
		conf_free(conf);
		return;
	}
	conf_drop(srv->conf);
	srv->conf = c;
	smtpd_lockout_set(srv->lockout, c->conf.auth_fail_limit,
	                  c->conf.auth_fail_window, c->conf.auth_lockout);
	tls_reload(srv);
	creds_reload(srv);
}

int smtpd_start(struct smtpd *srv)
{
	/* Loaded here, after privileges are dropped, rather than with the
	 * listeners: a key relayd's user cannot read fails now, at start,
	 * not at the first SIGHUP after a renewal. Blocking is fine: the
	 * loop is not serving anyone yet. */
	const struct conf *cf = &srv->conf->conf;
	if (cf->tls_cert_file[0]) {
		char err[512];
		SSL_CTX *ctx = smtpd_tls_ctx_new(cf->tls_cert_file,
		                                 cf->tls_key_file, err, sizeof err);
		if (!ctx) {
			log_err("%s", err);
			return -EINVAL;
		}
		tls_install(srv, ctx, ++srv->tls_next_gen, cf->tls_cert_file);
	}
	/* Also as relayd's user; a missing or broken file only means no
	 * AUTH (logged), never a relayd that does not start. */
	creds_load_now(srv);
	for (size_t i = 0; i < srv->nlst; i++) {
		struct smtpd_listener *l = &srv->lst[i];
		int r = uv_listen((uv_stream_t *)&l->tcp, BACKLOG, connection_cb);
		if (r < 0) {
			log_err("cannot listen on %s:%u: %s", l->cl.host, l->cl.port,
			        uv_strerror(r));
			return r;
		}
		log_info("listening on %s%s%s:%u (%s%s)", l->cl.ipv6 ? "[" : "",
		         l->cl.host, l->cl.ipv6 ? "]" : "", l->cl.port,
		         conf_listen_mode_names[l->cl.mode],
		         l->cl.mode != CONF_LISTEN_SMTPS && srv->tls ? ", STARTTLS"
		                                                     : "");
	}
	return 0;
}

static void server_maybe_done(struct smtpd *srv)
{
	if (!srv->stopping || srv->nsessions > 0 || srv->open_listeners > 0 ||
	    srv->tls_loading > 0 || srv->auth_jobs > 0)
		return;
	void (*cb)(void *) = srv->stop_cb;
	void *arg = srv->stop_arg;
	conf_drop(srv->conf);
	SSL_CTX_free(srv->tls);
	smtpd_relay_limits_free(srv->limits);
	smtpd_creds_free(srv->creds);
	smtpd_lockout_free(srv->lockout);
	free(srv);
	if (cb)
		cb(arg);
}

static void listener_closed_cb(uv_handle_t *h)
{
	struct smtpd_listener *l = h->data;
	struct smtpd *srv = l->srv;
	srv->open_listeners--;
	server_maybe_done(srv);
}

void smtpd_stop(struct smtpd *srv, void (*done_cb)(void *arg), void *arg)
{
	srv->stopping = true;
	srv->stop_cb = done_cb;
	srv->stop_arg = arg;
	for (size_t i = 0; i < srv->nlst; i++)
		if (!uv_is_closing((uv_handle_t *)&srv->lst[i].tcp))
			uv_close((uv_handle_t *)&srv->lst[i].tcp, listener_closed_cb);
	for (struct smtpd_session *s = srv->sessions, *n; s; s = n) {
		n = s->next;
		if (s->closing)
			continue;
		if (s->commit_pending) {
			s->stop_after_commit = true;
			continue;
		}
		smtpd_proto_shutdown(s->proto, &s->out);
		flush(s);
		session_close(s, true);
	}
	if (srv->nlst == 0)
		server_maybe_done(srv);
}
