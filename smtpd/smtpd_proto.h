/*
 * smtpd/smtpd_proto.h - SMTP server protocol core. Turns client bytes into
 * replies and at most one request at a time (commit a message, close the
 * connection); no sockets, no libuv. smtpd_session.c feeds it and carries
 * out its requests. The message body streams through the DATA reader and
 * the header scrubber into a sink the caller supplies.
 *
 * RFC 5321 with PIPELINING (2920), SIZE (1870), 8BITMIME (6152),
 * ENHANCEDSTATUSCODES (2034/3463), SMTPUTF8 (6531), CHUNKING (3030) and
 * DSN (3461). Limits: common/smtp.h.
 */
#ifndef RELAY_SMTPD_PROTO_H
#define RELAY_SMTPD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "queue/queue.h"

enum smtpd_req {
	SMTPD_REQ_NONE,
	SMTPD_REQ_COMMIT,   /* message complete: make it durable, then done() */
	SMTPD_REQ_CLOSE,    /* send what is in `out`, then close */
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

struct smtpd_proto_cfg {
	const char *hostname;
	const char *sid;              /* session id, for log lines */
	uint64_t max_message_size;
	unsigned max_recipients;
	unsigned max_bad_commands;
	bool bare_normalize;
	const char *const *scrub;     /* header names to remove */
	size_t nscrub;
};

struct smtpd_proto;

/* cfg's strings must outlive p. Returns NULL on ENOMEM. */
struct smtpd_proto *smtpd_proto_new(const struct smtpd_proto_cfg *cfg,
                                    const struct smtpd_sink_ops *ops,
                                    void *ctx);
/* Aborts a body in progress. NULL: no-op. */
void smtpd_proto_free(struct smtpd_proto *p);

/* The 220 greeting. */
void smtpd_proto_greet(struct smtpd_proto *p, struct buf *out);

/*
 * Consumes client bytes, appending replies to out. Returns the number of
 * bytes consumed; stops early (leaving the rest for a later call) when a
 * request is raised (*req != NONE) or when only a partial command line is
 * left (fewer than SMTP_CMD_LINE_MAX bytes without LF). While a request is
 * pending it consumes nothing.
 */
size_t smtpd_proto_feed(struct smtpd_proto *p, const uint8_t *in, size_t n,
                        struct buf *out, enum smtpd_req *req);

/* Result of SMTPD_REQ_COMMIT: 0 (250 queued as), -ENOSPC (452) or other
 * -errno (451). The transaction is reset either way. */
void smtpd_proto_done(struct smtpd_proto *p, int status, struct buf *out);

/* Timer fired: 421 4.4.2, body aborted; returns SMTPD_REQ_CLOSE. */
enum smtpd_req smtpd_proto_timeout(struct smtpd_proto *p, struct buf *out);

/* Server shutting down: 421 4.3.2, body aborted; returns SMTPD_REQ_CLOSE. */
enum smtpd_req smtpd_proto_shutdown(struct smtpd_proto *p, struct buf *out);

enum smtpd_state smtpd_proto_state(const struct smtpd_proto *p);
const struct smtpd_txn *smtpd_proto_txn(const struct smtpd_proto *p);
/* "ESMTP" or "SMTP", for the Received header (RFC 3848). */
const char *smtpd_proto_with(const struct smtpd_proto *p);
/* Client's HELO/EHLO argument ("" before it). */
const char *smtpd_proto_helo(const struct smtpd_proto *p);

#endif
