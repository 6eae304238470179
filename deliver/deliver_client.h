/*
 * deliver/deliver_client.h - SMTP client protocol core: turns the server's
 * reply bytes into the next commands and per-recipient results. No
 * sockets, no TLS, no libuv: deliver_session.c feeds it and does what its
 * events ask (start TLS, stream the body, close). The mirror image of
 * smtpd/smtpd_proto.h.
 *
 * One session: greeting, EHLO, [STARTTLS, EHLO], [AUTH], then any number
 * of transactions (RSET, MAIL, RCPT..., DATA, body, ".") and QUIT. With
 * PIPELINING (RFC 2920) RSET, MAIL, the RCPTs and DATA go out in one
 * write; their replies are matched in order.
 */
#ifndef RELAY_DELIVER_CLIENT_H
#define RELAY_DELIVER_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* Bounds on what the server sends (RFC 5321 §4.5.3.1.5 allows 512-byte
 * reply lines; we take longer ones but not without limit). */
#define DELIVER_REPLY_LINE_MAX 2048
#define DELIVER_REPLY_LINES_MAX 64
/* The reply text kept for logs, DSNs and the index. */
#define DELIVER_REPLY_TEXT_MAX 400

/* A reply, as numbers plus text: the basic code and the enhanced status
 * code (RFC 3463) are read once, by the parser; nobody reads the text for
 * them again. */
struct deliver_reply {
	int code;                            /* 200..599, 0: local error */
	/* The enhanced code class.subject.detail ("5.1.1" is 5, 1, 1) when
	 * the reply had one whose class matches code's; cls 0: none. */
	uint8_t cls;
	uint16_t subject, detail;
	char text[DELIVER_REPLY_TEXT_MAX];   /* "550 5.1.1 no such user": the
	                                        lines joined by spaces, made
	                                        printable */
};

/* Fills r from a reply's code and (printable, joined) text, reading the
 * enhanced code from the text as the parser does. For tests and for
 * replies relayd makes up. */
void deliver_reply_make(struct deliver_reply *r, int code, const char *text);

struct deliver_client_opts {
	const char *helo;       /* our name for EHLO */
	bool starttls;          /* STARTTLS after the first EHLO (required:
	                           the session fails if it is not offered) */
	bool starttls_may;      /* STARTTLS when the server offers it, else
	                           plaintext (RFC 7435; direct delivery) */
	const char *user;       /* AUTH when non-NULL (required: the session
	                           fails if no usable mechanism is offered) */
	const char *password;
};

enum deliver_client_ev {
	DELIVER_CL_WAIT,        /* needs more input */
	DELIVER_CL_STARTTLS,    /* 220 to STARTTLS: hand the connection to
	                           TLS (input after the 220 was dropped), then
	                           call deliver_client_tls_ready() */
	DELIVER_CL_READY,       /* idle: deliver_client_send() or _quit() */
	DELIVER_CL_BODY,        /* 354: stream the body through
	                           deliver_client_body(), then _body_end() */
	DELIVER_CL_DONE,        /* the transaction is over: per-recipient
	                           results are in; READY follows */
	DELIVER_CL_FAILED,      /* the session is over: deliver_client_error() */
	DELIVER_CL_CLOSED,      /* QUIT answered (or not worth waiting for) */
};

/* What went wrong with a failed session. */
enum deliver_client_fail {
	DELIVER_FAIL_NONE,
	DELIVER_FAIL_PROTOCOL,  /* unexpected or malformed reply */
	DELIVER_FAIL_GREETING,  /* the server refused us (greeting/EHLO) */
	DELIVER_FAIL_NO_TLS,    /* STARTTLS required but not offered/refused */
	DELIVER_FAIL_NO_AUTH,   /* credentials configured, no usable AUTH */
	DELIVER_FAIL_AUTH,      /* AUTH refused (535 and friends) */
	DELIVER_FAIL_CLOSED,    /* 421: the server is closing */
};

struct deliver_client_msg {
	const char *sender;     /* reverse-path without <>; "" = <> */
	uint64_t size;          /* SIZE= when offered; 0: not sent */
	bool body_8bit;         /* declared BODY=8BITMIME: sent when offered;
	                           when not, the message goes without BODY=
	                           if body_7bit, else it is refused (554
	                           5.6.3, RFC 6152 §3) */
	bool body_7bit;         /* the body holds no octet >= 0x80 */
	bool smtputf8;          /* SMTPUTF8 (fails if not offered) */
	const char *ret;        /* "FULL", "HDRS" or NULL (sent with DSN) */
	const char *envid;      /* xtext or NULL (sent with DSN) */
	size_t nrcpt;
	const char *const *rcpt;    /* forward-paths without <> */
	const char *const *notify;  /* per recipient "SUCCESS,FAILURE" or NULL */
	const char *const *orcpt;   /* per recipient "rfc822;x@y" or NULL */
};

struct deliver_client;

/* Copies what it needs of o. NULL when out of memory. */
struct deliver_client *deliver_client_new(const struct deliver_client_opts *o);
void deliver_client_free(struct deliver_client *c);

/* Appends server bytes. -ENOBUFS when a reply exceeds the bounds above
 * (the session must then be failed: deliver_client_step() reports it). */
int deliver_client_input(struct deliver_client *c, const void *p, size_t n);

/* Consumes complete replies until something needs the shell; commands to
 * send are appended to out. Call again after handling any event but WAIT,
 * FAILED and CLOSED. */
enum deliver_client_ev deliver_client_step(struct deliver_client *c,
                                           struct buf *out);

/* After DELIVER_CL_STARTTLS: the handshake succeeded; EHLO goes to out. */
void deliver_client_tls_ready(struct deliver_client *c, struct buf *out);

/* In READY: starts a transaction (the strings must live until DONE). */
void deliver_client_send(struct deliver_client *c,
                         const struct deliver_client_msg *m, struct buf *out);

/* In BODY: the stored message's bytes, dot-stuffed into out (RFC 5321
 * §4.5.2); any chunking. _body_end() ends it with ".\r\n" (after a CRLF
 * if the message did not end with one). */
void deliver_client_body(struct deliver_client *c, const uint8_t *p, size_t n,
                         struct buf *out);
void deliver_client_body_end(struct deliver_client *c, struct buf *out);

/* In READY: QUIT; CLOSED follows on its reply. */
void deliver_client_quit(struct deliver_client *c, struct buf *out);

/* After DONE: recipient i's reply (the RCPT reply if refused, else the
 * MAIL, DATA or final reply that decided it; for local refusals our own
 * reply from common/smtp.h's table, codes included: SMTPUTF8 not offered,
 * 553 5.6.7; an 8-bit body and no 8BITMIME, 554 5.6.3). */
const struct deliver_reply *deliver_client_result(const struct deliver_client *c,
                                                  size_t i);

/* After FAILED: the kind, and the reply or our description. */
enum deliver_client_fail deliver_client_error(const struct deliver_client *c,
                                              const struct deliver_reply **r);

/* Whether the server waits for a reply now (the shell's timeout applies:
 * true in every state but READY and after CLOSED/FAILED). */
bool deliver_client_waiting(const struct deliver_client *c);

/* True for a final-dot wait, which gets a longer timeout (RFC 5321
 * §4.5.3.2.6: 10 minutes against 5 for other replies). */
bool deliver_client_in_final(const struct deliver_client *c);

/* The state table (deliver_client.c): each state has a name, a timeout
 * from RFC 5321 §4.5.3.2 and a description. The timeouts are given for
 * base_ms = 5 minutes (DELIVER_CLIENT_TIMEOUT_BASE_S, delivery_timeout's
 * default) and scale with it: greeting, EHLO, AUTH, MAIL, RCPT and the
 * rest 1x base, DATA 0.4x (2 min), each write of the body 0.6x (3 min),
 * the reply to the final dot 2x (10 min). 0 in READY, FAILED, CLOSED. */
#define DELIVER_CLIENT_TIMEOUT_BASE_S 300
uint64_t deliver_client_timeout(const struct deliver_client *c,
                                uint64_t base_ms);
/* The current state's name ("rcpt"), for debug logs. */
const char *deliver_client_state_name(const struct deliver_client *c);
/* What the client waits for now, for errors: "while waiting for the
 * reply to RCPT TO". */
const char *deliver_client_state_desc(const struct deliver_client *c);


/* The enhanced status code of a reply as text ("5.1.1"), from its numbers,
 * or one derived from the basic code (RFC 3463: 2.0.0, 4.0.0, 5.0.0) when
 * it has none. */
void deliver_reply_status(const struct deliver_reply *r, char out[16]);

/* Server extensions seen in the last EHLO reply (for logs and tests). */
#define DELIVER_EXT_PIPELINING 0x01
#define DELIVER_EXT_STARTTLS   0x02
#define DELIVER_EXT_SIZE       0x04
#define DELIVER_EXT_8BITMIME   0x08
#define DELIVER_EXT_DSN        0x10
#define DELIVER_EXT_SMTPUTF8   0x20
#define DELIVER_EXT_AUTH_PLAIN 0x40
#define DELIVER_EXT_AUTH_LOGIN 0x80
unsigned deliver_client_ext(const struct deliver_client *c);

/* The server's SIZE (RFC 1870) in the last EHLO reply: its limit in
 * bytes, or 0 when it gave none, said 0 (no fixed limit), or gave a value
 * that is not a number. Read it in READY: after STARTTLS only the second
 * EHLO counts (RFC 3207 §4.2). */
uint64_t deliver_client_size_max(const struct deliver_client *c);

/* The size-value of an EHLO "SIZE" line, p being what follows the
 * keyword (" 10485760"): the number, or 0 as above. Pure, for the tests
 * and the fuzzer. */
uint64_t deliver_client_parse_size(const char *p, size_t n);

#endif
