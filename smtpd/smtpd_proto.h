/*
 * smtpd/smtpd_proto.h - SMTP server protocol core. Turns client bytes into
 * replies and at most one request at a time (commit a message, start TLS,
 * close the connection); no sockets, no libuv. smtpd_session.c feeds it
 * and carries out its requests. The message body streams through the DATA reader and
 * the header scrubber into a sink the caller supplies.
 *
 * RFC 5321 with PIPELINING (2920), SIZE (1870), 8BITMIME (6152),
 * ENHANCEDSTATUSCODES (2034/3463), SMTPUTF8 (6531), CHUNKING (3030),
 * DSN (3461), STARTTLS (3207) and AUTH PLAIN/LOGIN (4954). The core
 * knows whether the session is in TLS and which kind of listener it came
 * in on; the handshake itself is the shell's, and so is checking a
 * password (slow: the thread pool's). The relay rule is here too: a
 * client neither trusted nor authenticated may not relay (issue 4 §3).
 * Limits: common/smtp.h.
 */
#ifndef RELAY_SMTPD_PROTO_H
#define RELAY_SMTPD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/conf.h"
#include "common/smtp.h"
#include "queue/queue.h"
#include "common/cred.h"

enum smtpd_req {
	SMTPD_REQ_NONE,
	SMTPD_REQ_COMMIT,   /* message complete: make it durable, then done() */
	SMTPD_REQ_CLOSE,    /* send what is in `out`, then close */
	/* "220 Ready to start TLS" is in `out`: send it in plaintext, then run
	 * the TLS handshake and report with done() (RFC 3207). Everything the
	 * client sent after the STARTTLS line was consumed and thrown away. */
	SMTPD_REQ_STARTTLS,
	/* AUTH PLAIN or LOGIN has a user name and a password (read them with
	 * smtpd_proto_auth_request()): check them, then answer with done()
	 * and an enum smtpd_auth_result. Nothing was written to `out`. */
	SMTPD_REQ_AUTH,
};

/* The status smtpd_proto_done() takes for SMTPD_REQ_AUTH. */
enum smtpd_auth_result {
	SMTPD_AUTH_OK = 0,      /* 235 2.7.0; call smtpd_proto_set_cred first */
	SMTPD_AUTH_FAILED,      /* 535 5.7.8 (bad password, unknown, disabled) */
	SMTPD_AUTH_TEMPFAIL,    /* 454 4.7.0 (no credentials, busy, KDF error) */
	SMTPD_AUTH_LOCKED,      /* 454 4.7.0: too many checks waiting or in
	                         * flight (the client's, or the name's) */
	SMTPD_AUTH_LOCKED_IP,   /* 421 4.7.0, then the session is CLOSED */
	SMTPD_AUTH_UNTRACKED,   /* 421 4.7.0, CLOSED: a failure the full
	                         * lockout table could not record */
};

enum smtpd_state {
	SMTPD_ST_INIT,      /* greeted, no HELO/EHLO yet */
	SMTPD_ST_READY,     /* HELO/EHLO done, no transaction */
	SMTPD_ST_MAIL,      /* MAIL accepted, no recipient yet */
	SMTPD_ST_RCPT,      /* at least one recipient */
	SMTPD_ST_DATA,      /* reading DATA up to <CRLF>.<CRLF> */
	SMTPD_ST_BDAT,      /* reading a BDAT chunk's octets */
	SMTPD_ST_BDAT_NEXT, /* between BDAT chunks */
	SMTPD_ST_COMMIT,    /* waiting for smtpd_proto_done() */
	SMTPD_ST_STARTTLS,  /* 220 sent; waiting for the handshake's done() */
	SMTPD_ST_AUTH_PLAIN,/* 334 sent; waiting for the PLAIN response line */
	SMTPD_ST_AUTH_USER, /* LOGIN: 334 Username sent */
	SMTPD_ST_AUTH_PASS, /* LOGIN: 334 Password sent */
	SMTPD_ST_AUTH,      /* SMTPD_REQ_AUTH raised; waiting for done() */
	SMTPD_ST_CLOSED,    /* QUIT or fatal: nothing more is read */
	SMTPD_ST__COUNT
};
extern const char *const smtpd_state_names[SMTPD_ST__COUNT];

struct smtpd_rcpt {
	char *addr;
	char *orcpt;        /* as received, or NULL */
	uint8_t notify;     /* QUEUE_NOTIFY_* */
};

/* One mail transaction, kept apart from the session. */
struct smtpd_txn {
	char qid[QUEUE_ID_SIZE];   /* set by sink->begin */
	char date[64];             /* RFC 5322 date, set by sink->begin */
	char *sender;              /* "" for <> */
	uint8_t flags;             /* QUEUE_F_* */
	char *envid;
	uint64_t declared_size;    /* SIZE=, 0 if none */
	struct smtpd_rcpt *rcpt;
	size_t nrcpt, rcpt_cap;
	unsigned scrubbed;         /* header fields removed */
	unsigned hops;             /* Received: fields it arrived with */
	/* The credential the client authenticated as (set with MAIL), or
	 * "": for log lines, the queue and policy. */
	char auth[CRED_NAME_MAX + 1];
};

struct smtpd_sink_ops {
	/* The data phase starts (DATA accepted or first BDAT): open the body,
	 * set t->qid and t->date, write the trace (Received:) header.
	 * Returns 0 or -errno (-ENOSPC -> 452, else 451). */
	int (*begin)(void *ctx, struct smtpd_txn *t);
	/* Scrubbed message bytes. Returns 0 or -errno. */
	int (*write)(void *ctx, const uint8_t *p, size_t n);
	/* Discard the body begun (error, RSET, disconnect). */
	void (*abort)(void *ctx);
};

/* Relay policy hooks (smtpd_policy_net.h gives them). Each returns
 * SMTP_R__COUNT to go on, or the refusal the core sends (and logs); a
 * refusal is not a protocol error. Called once the command's syntax and
 * parameters are good, before the sender or recipient is taken. */
struct smtpd_policy_ops {
	enum smtp_reply_id (*mail)(void *ctx, const char *sender); /* "" for <> */
	enum smtp_reply_id (*rcpt)(void *ctx, const char *rcpt);
};

/* Postfix's hopcount_limit default (RFC 5321 §6.3 suggests at least 100;
 * Exim uses 30, sendmail 25). */
#define SMTPD_HOP_LIMIT_DEFAULT 50

struct smtpd_proto_cfg {
	const char *hostname;
	const char *sid;              /* session id, for log lines */
	/* NULL, or SMTP_R__COUNT counters: each reply sent bumps its own
	 * (the metrics endpoint's accepted and rejected counts). */
	uint64_t *reply_counts;
	/* NULL, or called for each reply sent, with the credential
	 * authenticated so far ("" before AUTH): the statistics history
	 * (smtpd_stats_reply). */
	void (*reply_hook)(void *ctx, enum smtp_reply_id id,
	                   const char *auth_name);
	void *reply_hook_ctx;
	uint64_t max_message_size;
	unsigned max_recipients;
	unsigned max_bad_commands;
	bool bare_normalize;
	/* long_lines = reject: a line over 998 octets (RFC 5322 §2.1.1)
	 * refuses the message at the end of the data (554 5.6.0). Else
	 * (wrap) such lines are folded or broken before they are stored
	 * (smtpd_wrap.h). */
	bool long_lines_reject;
	const char *const *scrub;     /* header names to remove */
	size_t nscrub;
	/* hop_limit (issue 9 §3): a message that arrives with this many
	 * Received: fields or more is refused at the end of the data (554
	 * 5.4.6), so one accepted leaves with at most this many, relayd's own
	 * included. Each scrubbed Received: is replaced by an origin-free
	 * line (smtpd_scrub_hops) so the count survives scrubbing. 0: the
	 * default, SMTPD_HOP_LIMIT_DEFAULT. */
	unsigned hop_limit;
	/* The listener the client came in on: submission vs smtp is what the
	 * AUTH policy will go by; smtps sessions start inside TLS. */
	enum conf_listen_mode mode;
	/* A certificate is loaded: STARTTLS is offered (outside TLS) and
	 * answered; without one STARTTLS gets 454 and is not advertised. */
	bool tls_available;
	/* NULL: no relay policy. */
	const struct smtpd_policy_ops *policy;
	void *policy_ctx;
	/* The client may relay without AUTH (trusted_networks). Otherwise it
	 * must authenticate: RCPT gets 554 5.7.1 until it has, and on
	 * submission and smtps listeners MAIL gets 530 5.7.0. */
	bool trusted;
	/* AUTH is offered and accepted outside TLS too
	 * (auth_plaintext_networks); inside TLS it always is. */
	bool auth_plaintext;
	/* Credentials are loaded: EHLO advertises AUTH (where allowed). AUTH
	 * is answered either way (the shell says 454 without credentials). */
	bool auth_available;
	/* The per-credential quota at MAIL (issue 4 §3), called only for a
	 * client authenticated with a credential (smtpd_proto_set_cred), after
	 * the relay policy's MAIL hook: SMTP_R__COUNT to go on, or the
	 * refusal the core sends (SMTP_R_QUOTA; the hook logs why). Trusted
	 * clients that did not authenticate have no quota. NULL: none. The
	 * authoritative check is the charge at commit: a done() of -EDQUOT. */
	enum smtp_reply_id (*quota)(void *ctx, const struct cred *c);
	void *quota_ctx;
	/* Room in the spool at MAIL (queue_min_free), called with the
	 * declared SIZE (0: none) once the command is good, before the
	 * relay policy and quota hooks (so a refused MAIL charges no rate
	 * or quota): SMTP_R__COUNT to go on, or the refusal the core sends
	 * (SMTP_R_STORAGE_FULL, 452 4.3.1; the hook logs why) before any
	 * data is sent. NULL: no check. */
	enum smtp_reply_id (*spool)(void *ctx, uint64_t size);
	void *spool_ctx;
};

struct smtpd_proto;

/* cfg's strings must outlive p. Returns NULL on ENOMEM. */
struct smtpd_proto *smtpd_proto_new(const struct smtpd_proto_cfg *cfg,
                                    const struct smtpd_sink_ops *ops,
                                    void *ctx);
/* Aborts a body in progress. NULL: no-op. */
void smtpd_proto_free(struct smtpd_proto *p);

/* The 220 greeting. On an smtps listener the shell sends it once the
 * handshake is done, inside TLS (RFC 8314 §3.3). */
void smtpd_proto_greet(struct smtpd_proto *p, struct buf *out);

/* smtpd_proto_feed stops once `out` holds this many bytes: the shell
 * sends them (or queues them, up to its own high-water mark) before it
 * feeds the rest, so a client that pipelines commands and never reads
 * cannot make replies pile up in memory. One reply may go past it. */
#define SMTPD_OUT_BATCH 4096

/*
 * Consumes client bytes, appending replies to out. Returns the number of
 * bytes consumed; stops early (leaving the rest for a later call) when a
 * request is raised (*req != NONE), when only a partial command line is
 * left (fewer than SMTP_CMD_LINE_MAX bytes without LF), or when out holds
 * SMTPD_OUT_BATCH bytes or more (then possibly consuming nothing). While a
 * request is pending it consumes nothing.
 *
 * SMTPD_REQ_STARTTLS is the exception: it consumes all n bytes. What
 * follows the STARTTLS line was sent before the TLS handshake and must
 * never be executed inside TLS (CVE-2011-0411): it is discarded here, and
 * the shell must feed nothing it read before the handshake afterwards.
 */
size_t smtpd_proto_feed(struct smtpd_proto *p, const uint8_t *in, size_t n,
                        struct buf *out, enum smtpd_req *req);

/* Result of the pending request.
 * SMTPD_REQ_COMMIT: 0 (250 queued as), -EDQUOT (450 4.7.1: the
 * credential's quota is used up; the shell charges it before committing),
 * -ENOKEY (550 5.7.1) and -EKEYREJECTED (451 4.7.0): dkim_required and
 * the message was not signed (no key for its From: domain; the signing
 * failed), -ENOSPC (452) or other -errno (451). The transaction is reset either
 * way.
 * SMTPD_REQ_AUTH: an enum smtpd_auth_result; the reply is written.
 * SMTPD_REQ_STARTTLS: 0 when the handshake completed: the session starts
 * over in TLS (RFC 3207 §4.2: no HELO/EHLO, no transaction; the client
 * must EHLO again) and nothing is written. Any other status: the session
 * is CLOSED (the shell closes the connection; nothing can be said). */
void smtpd_proto_done(struct smtpd_proto *p, int status, struct buf *out);

/* SMTPD_REQ_AUTH: the user name (NUL-terminated, no NUL inside) and the
 * password (pwlen bytes; may contain anything). Valid until done(); they
 * are wiped then. Never log the password. */
void smtpd_proto_auth_request(const struct smtpd_proto *p, const char **user,
                              const void **pw, size_t *pwlen);

/* Before done(p, SMTPD_AUTH_OK): the credential verified, whose sender
 * (from=) and recipient (to=) restrictions then apply to MAIL and RCPT;
 * from= also to the From: header, at the end of the data (exactly one
 * From: field, every mailbox in it allowed; else 553 5.7.1, the body
 * aborted, no commit).
 * It must stay valid for the rest of the session (the shell holds a
 * reference to its table). NULL: authenticated under the name given, with
 * no restrictions (tests). */
void smtpd_proto_set_cred(struct smtpd_proto *p, const struct cred *c);

/* The credential's name once authenticated, else "". STARTTLS forgets
 * it (RFC 3207 §4.2). */
const char *smtpd_proto_auth_name(const struct smtpd_proto *p);

/* The credential set with smtpd_proto_set_cred once authenticated, else
 * NULL (not authenticated, or authenticated without one: tests). */
const struct cred *smtpd_proto_cred(const struct smtpd_proto *p);

/* The shell ends the session with the 421 reply id (SMTP_R_TIMEOUT,
 * SMTP_R_DATA_SLOW, SMTP_R_LIFETIME, SMTP_R_SHUTDOWN), logged as a
 * refusal; the body in progress, if any, is aborted (a commit already
 * requested is left to its done()). The state becomes CLOSED; returns
 * SMTPD_REQ_CLOSE. Once CLOSED, it writes nothing. */
enum smtpd_req smtpd_proto_close(struct smtpd_proto *p, enum smtp_reply_id id,
                                 struct buf *out);

/* Timer fired: 421 4.4.2, body aborted; returns SMTPD_REQ_CLOSE. */
enum smtpd_req smtpd_proto_timeout(struct smtpd_proto *p, struct buf *out);

/* Server shutting down: 421 4.3.2, body aborted; returns SMTPD_REQ_CLOSE. */
enum smtpd_req smtpd_proto_shutdown(struct smtpd_proto *p, struct buf *out);

enum smtpd_state smtpd_proto_state(const struct smtpd_proto *p);
/* The core is in the middle of a command line the shell no longer holds:
 * it consumed the start of an over-long line and skips the rest up to
 * its LF. With the bytes the shell still holds, this tells whether a
 * command has begun (its timeout runs from its first byte). */
bool smtpd_proto_in_line(const struct smtpd_proto *p);
const struct smtpd_txn *smtpd_proto_txn(const struct smtpd_proto *p);
/* The "with" keyword of the Received header: "ESMTPSA", "ESMTPA",
 * "ESMTPS", "ESMTP" (RFC 3848) or "SMTP" (HELO); inside a transaction
 * whose MAIL FROM had SMTPUTF8, "UTF8SMTPSA", "UTF8SMTPA", "UTF8SMTPS" or
 * "UTF8SMTP" (RFC 6531 §3.7.3). */
const char *smtpd_proto_with(const struct smtpd_proto *p);
/* The session is inside TLS (after STARTTLS, or from the start on smtps).
 * AUTH is offered only then, or to auth_plaintext clients (issue 4 §2). */
bool smtpd_proto_tls(const struct smtpd_proto *p);
/* The listener's mode, from the configuration. */
enum conf_listen_mode smtpd_proto_mode(const struct smtpd_proto *p);
/* Client's HELO/EHLO argument ("" before it). */
const char *smtpd_proto_helo(const struct smtpd_proto *p);

#endif
