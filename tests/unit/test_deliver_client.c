/*
 * tests/unit/test_deliver_client.c - The SMTP client core driven as a
 * conversation: scripts of (server bytes or shell action, expected events,
 * exact client output), each replayed whole, one byte at a time and split
 * in two at every position, which must all give the same result. Also the
 * EHLO keyword parser, reply bounds and malformed replies, dot-stuffing,
 * and the reading of replies (enhanced status, throttling). No sockets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "deliver/deliver_client.h"
#include "deliver/deliver_tlspol.h"

/* ---- the conversation driver -------------------------------------------- */

enum op {
	SRV,    /* server bytes: deliver_client_input() */
	TLS,    /* deliver_client_tls_ready() */
	SEND,   /* deliver_client_send(msg) */
	BODY,   /* deliver_client_body(data) */
	END,    /* deliver_client_body_end() */
	QUIT,   /* deliver_client_quit() */
};

/* One turn: the action, then deliver_client_step() until it stops (it is
 * called again after DONE), then the checks. NULL checks are skipped. */
struct turn {
	enum op op;
	const char *data;       /* SRV, BODY (len bytes, strlen when 0) */
	const struct deliver_client_msg *msg;   /* SEND */
	const char *ev;         /* the events, see ev_string(); NULL ends */
	const char *out;        /* exact client output (NULL: nothing) */
	const char *ext;        /* deliver_client_ext() as names, "" none */
	const char *err;        /* "KIND code text" from deliver_client_error() */
	const char *res;        /* "[code] text\n" per recipient of the last
	                           message */
	const char *flags;      /* W/w: waiting or not, F/f: in final or not */
	const char *size;       /* deliver_client_size_max() in decimal */
	const char *wait;       /* "NAME SECONDS": deliver_client_state_name()
	                           and deliver_client_timeout() at the default
	                           base of 5 minutes */
	size_t len;
};

#define MAX_TURNS 24

struct script {
	const char *name;
	struct deliver_client_opts opts;
	struct turn t[MAX_TURNS];
};

static const char *const ev_names[] = {
	[DELIVER_CL_WAIT] = "WAIT", [DELIVER_CL_STARTTLS] = "STARTTLS",
	[DELIVER_CL_READY] = "READY", [DELIVER_CL_BODY] = "BODY",
	[DELIVER_CL_DONE] = "DONE", [DELIVER_CL_FAILED] = "FAILED",
	[DELIVER_CL_CLOSED] = "CLOSED",
};

static const char *const fail_names[] = {
	[DELIVER_FAIL_NONE] = "NONE", [DELIVER_FAIL_PROTOCOL] = "PROTOCOL",
	[DELIVER_FAIL_GREETING] = "GREETING", [DELIVER_FAIL_NO_TLS] = "NO_TLS",
	[DELIVER_FAIL_NO_AUTH] = "NO_AUTH", [DELIVER_FAIL_AUTH] = "AUTH",
	[DELIVER_FAIL_CLOSED] = "CLOSED",
};

/* The events of one turn, written the same way however the bytes were
 * chunked: the events other than WAIT and READY in order (repeats
 * dropped: a FAILED session says FAILED to every step), then READY if the
 * turn ended idle, or WAIT if nothing else happened. "DONE READY",
 * "STARTTLS", "WAIT", "DONE FAILED". */
struct evlog {
	char s[128];
	const char *last;
	enum deliver_client_ev final;
};

static void ev_add(struct evlog *l, enum deliver_client_ev ev)
{
	l->final = ev;
	if (ev == DELIVER_CL_WAIT || ev == DELIVER_CL_READY ||
	    l->last == ev_names[ev])
		return;
	l->last = ev_names[ev];
	size_t n = strlen(l->s);
	snprintf(l->s + n, sizeof l->s - n, "%s%s", n ? " " : "", ev_names[ev]);
}

static const char *ev_string(struct evlog *l)
{
	if (l->final == DELIVER_CL_READY || (!l->s[0] && l->final == DELIVER_CL_WAIT)) {
		size_t n = strlen(l->s);
		snprintf(l->s + n, sizeof l->s - n, "%s%s", n ? " " : "",
		         ev_names[l->final]);
	}
	return l->s;
}

static void pump(struct deliver_client *c, struct buf *out, struct evlog *l)
{
	for (int guard = 0; guard < 1000; guard++) {
		enum deliver_client_ev ev = deliver_client_step(c, out);
		ev_add(l, ev);
		if (ev != DELIVER_CL_DONE)
			return;
	}
	fail_msg("deliver_client_step() keeps saying DONE");
}

static const char *ext_string(unsigned e, char *s, size_t n)
{
	static const struct { unsigned bit; const char *name; } names[] = {
		{DELIVER_EXT_PIPELINING, "PIPELINING"},
		{DELIVER_EXT_STARTTLS, "STARTTLS"},
		{DELIVER_EXT_SIZE, "SIZE"},
		{DELIVER_EXT_8BITMIME, "8BITMIME"},
		{DELIVER_EXT_DSN, "DSN"},
		{DELIVER_EXT_SMTPUTF8, "SMTPUTF8"},
		{DELIVER_EXT_AUTH_PLAIN, "AUTH_PLAIN"},
		{DELIVER_EXT_AUTH_LOGIN, "AUTH_LOGIN"},
	};
	s[0] = '\0';
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (e & names[i].bit) {
			size_t k = strlen(s);
			snprintf(s + k, n - k, "%s%s", k ? " " : "", names[i].name);
		}
	return s;
}

enum mode { WHOLE, BYTES, SPLIT };

struct run {
	const struct script *s;
	enum mode mode;
	size_t split_turn, split_at;
};

static const char *mode_name(const struct run *r, char *s, size_t n)
{
	if (r->mode == WHOLE)
		snprintf(s, n, "whole");
	else if (r->mode == BYTES)
		snprintf(s, n, "one byte at a time");
	else
		snprintf(s, n, "turn %zu split at %zu", r->split_turn, r->split_at);
	return s;
}

static size_t turn_len(const struct turn *t)
{
	return t->len ? t->len : t->data ? strlen(t->data) : 0;
}

static void feed(struct deliver_client *c, const struct turn *t,
                 const char *p, size_t n, struct buf *out, struct evlog *l)
{
	if (t->op == SRV)
		deliver_client_input(c, p, n);
	else
		deliver_client_body(c, (const uint8_t *)p, n, out);
	pump(c, out, l);
}

static void run_script(const struct run *r)
{
	const struct script *s = r->s;
	struct deliver_client *c = deliver_client_new(&s->opts);
	assert_non_null(c);
	struct buf out = BUF_INIT(SIZE_MAX);
	const struct deliver_client_msg *msg = NULL;
	char how[64], got[1024];
	mode_name(r, how, sizeof how);

	for (size_t i = 0; i < MAX_TURNS && s->t[i].ev; i++) {
		const struct turn *t = &s->t[i];
		struct evlog l = {.final = DELIVER_CL_WAIT};
		size_t n = turn_len(t);
		switch (t->op) {
		case SRV:
		case BODY:
			if (r->mode == BYTES && n) {
				for (size_t k = 0; k < n; k++)
					feed(c, t, t->data + k, 1, &out, &l);
			} else if (r->mode == SPLIT && r->split_turn == i) {
				feed(c, t, t->data, r->split_at, &out, &l);
				feed(c, t, t->data + r->split_at, n - r->split_at,
				     &out, &l);
			} else {
				feed(c, t, t->data, n, &out, &l);
			}
			break;
		case TLS:
			deliver_client_tls_ready(c, &out);
			pump(c, &out, &l);
			break;
		case SEND:
			msg = t->msg;
			deliver_client_send(c, t->msg, &out);
			pump(c, &out, &l);
			break;
		case END:
			deliver_client_body_end(c, &out);
			pump(c, &out, &l);
			break;
		case QUIT:
			deliver_client_quit(c, &out);
			pump(c, &out, &l);
			break;
		}

		const char *ev = ev_string(&l);
		if (strcmp(ev, t->ev) != 0)
			fail_msg("%s (%s), turn %zu: events '%s', expected '%s'",
			         s->name, how, i, ev, t->ev);
		snprintf(got, sizeof got, "%.*s", (int)out.len,
		         out.len ? (const char *)out.data : "");
		const char *want = t->out ? t->out : "";
		if (out.len != strlen(want) || memcmp(got, want, out.len) != 0)
			fail_msg("%s (%s), turn %zu: sent\n'%s'\nexpected\n'%s'",
			         s->name, how, i, got, want);
		buf_reset(&out);
		if (t->ext) {
			ext_string(deliver_client_ext(c), got, sizeof got);
			if (strcmp(got, t->ext) != 0)
				fail_msg("%s (%s), turn %zu: extensions '%s', "
				         "expected '%s'", s->name, how, i, got,
				         t->ext);
		}
		if (t->err) {
			const struct deliver_reply *e = NULL;
			enum deliver_client_fail f = deliver_client_error(c, &e);
			assert_non_null(e);
			snprintf(got, sizeof got, "%s %d %s", fail_names[f],
			         e->code, e->text);
			if (strcmp(got, t->err) != 0)
				fail_msg("%s (%s), turn %zu: error '%s', "
				         "expected '%s'", s->name, how, i, got,
				         t->err);
		}
		if (t->res) {
			assert_non_null(msg);
			got[0] = '\0';
			for (size_t k = 0; k < msg->nrcpt; k++) {
				const struct deliver_reply *rr =
					deliver_client_result(c, k);
				size_t m = strlen(got);
				snprintf(got + m, sizeof got - m, "[%d] %s\n",
				         rr->code, rr->text);
			}
			if (strcmp(got, t->res) != 0)
				fail_msg("%s (%s), turn %zu: results\n%s"
				         "expected\n%s", s->name, how, i, got,
				         t->res);
		}
		if (t->size) {
			snprintf(got, sizeof got, "%llu",
			         (unsigned long long)deliver_client_size_max(c));
			if (strcmp(got, t->size) != 0)
				fail_msg("%s (%s), turn %zu: SIZE %s, expected %s",
				         s->name, how, i, got, t->size);
		}
		if (t->wait) {
			snprintf(got, sizeof got, "%s %llu",
			         deliver_client_state_name(c),
			         (unsigned long long)deliver_client_timeout(c,
			                                                  300000) / 1000);
			if (strcmp(got, t->wait) != 0)
				fail_msg("%s (%s), turn %zu: wait '%s', expected '%s'",
				         s->name, how, i, got, t->wait);
		}
		for (const char *f = t->flags; f && *f; f++) {
			bool want_true = *f == 'W' || *f == 'F';
			bool is = *f == 'W' || *f == 'w'
			          ? deliver_client_waiting(c)
			          : deliver_client_in_final(c);
			if (is != want_true)
				fail_msg("%s (%s), turn %zu: flag %c is %s",
				         s->name, how, i, *f, is ? "true" : "false");
		}
	}
	buf_free(&out);
	deliver_client_free(c);
}

/* Whole, one byte at a time, and every turn's bytes cut in two at every
 * position (at a stride for long turns). */
static void run_all(const struct script *s)
{
	struct run r = {.s = s, .mode = WHOLE};
	run_script(&r);
	r.mode = BYTES;
	run_script(&r);
	r.mode = SPLIT;
	for (size_t i = 0; i < MAX_TURNS && s->t[i].ev; i++) {
		const struct turn *t = &s->t[i];
		if (t->op != SRV && t->op != BODY)
			continue;
		size_t n = turn_len(t), stride = n > 512 ? n / 97 : 1;
		for (size_t k = 1; k < n; k += stride) {
			r.split_turn = i;
			r.split_at = k;
			run_script(&r);
		}
	}
}

/* ---- fixtures --------------------------------------------------------- */

static const char *const rcpt1[] = {"r1@dst.test"};
static const char *const rcpt3[] = {"r1@dst.test", "r2@dst.test", "r3@dst.test"};
static const char *const notify3[] = {"SUCCESS,FAILURE", NULL, "NEVER"};
static const char *const orcpt3[] = {"rfc822;r1@dst.test", "rfc822;r2@dst.test",
                                     NULL};

static const struct deliver_client_msg m1 = {
	.sender = "a@src.test", .nrcpt = 1, .rcpt = rcpt1};
static const struct deliver_client_msg m3 = {
	.sender = "a@src.test", .nrcpt = 3, .rcpt = rcpt3};
static const struct deliver_client_msg m_null = {
	.sender = "", .nrcpt = 1, .rcpt = rcpt1};
/* Declared BODY=8BITMIME with a 7-bit body: BODY= only where offered. */
static const struct deliver_client_msg m_params = {
	.sender = "a@src.test", .size = 1234, .body_8bit = true, .body_7bit = true,
	.ret = "HDRS", .envid = "QID+2B1", .nrcpt = 3, .rcpt = rcpt3,
	.notify = notify3, .orcpt = orcpt3};
/* Declared BODY=8BITMIME and 8-bit in fact. */
static const struct deliver_client_msg m_8bit = {
	.sender = "a@src.test", .size = 99, .body_8bit = true, .nrcpt = 3,
	.rcpt = rcpt3};
/* 8-bit content not declared (a client that did not say BODY=): sent as
 * it is, as before; only a declaration is acted on. */
static const struct deliver_client_msg m_8bit_undeclared = {
	.sender = "a@src.test", .nrcpt = 1, .rcpt = rcpt1};
static const struct deliver_client_msg m_size0 = {
	.sender = "a@src.test", .size = 0, .nrcpt = 1, .rcpt = rcpt1};
static const struct deliver_client_msg m_utf8 = {
	.sender = "j\xc3\xb6rg@src.test", .smtputf8 = true, .nrcpt = 3,
	.rcpt = rcpt3};

#define O_PLAIN {.helo = "relay.test"}
#define O_TLS {.helo = "relay.test", .starttls = true}
#define O_MAY {.helo = "relay.test", .starttls_may = true}
#define O_AUTH {.helo = "relay.test", .user = "user", .password = "pass"}
#define O_TLS_AUTH {.helo = "relay.test", .starttls = true, .user = "user", \
                    .password = "pass"}

#define GREETING "220 mx.test ESMTP Postfix\r\n"
#define EHLO "EHLO relay.test\r\n"
#define MAIL "MAIL FROM:<a@src.test>\r\n"
#define RCPT1 "RCPT TO:<r1@dst.test>\r\n"
#define RCPT2 "RCPT TO:<r2@dst.test>\r\n"
#define RCPT3 "RCPT TO:<r3@dst.test>\r\n"
#define DATA "DATA\r\n"

#define T_GREET {SRV, GREETING, .ev = "WAIT", .out = EHLO, .flags = "Wf"}
/* EHLO replies: no PIPELINING, and PIPELINING. */
#define T_EHLO {SRV, "250-mx.test\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n", \
                .ev = "READY", .ext = "8BITMIME", .flags = "w"}
#define T_EHLO_PIPE {SRV, "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n", \
                     .ev = "READY", .ext = "PIPELINING 8BITMIME"}
#define T_421 {SRV, "421 4.3.2 Service shutting down\r\n", .ev = "FAILED", \
               .err = "CLOSED 421 421 4.3.2 Service shutting down", .flags = "wf"}

#define UTF8_REFUSED "[553] 553 5.6.7 the server does not offer SMTPUTF8, " \
                     "which this message needs\n"
#define BIT8_REFUSED "[554] 554 5.6.3 the server does not offer 8BITMIME and " \
                     "the message has 8-bit content (not converted: that " \
                     "would break its signatures)\n"

/* ---- the scripts -------------------------------------------------------- */

static const struct script scripts[] = {
	{"greeting, EHLO, one message, QUIT", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n",
		 .ev = "READY", .ext = "8BITMIME", .flags = "w", .wait = "ready 0"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL, .flags = "Wf",
		 .wait = "mail 300"},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1,
		 .wait = "rcpt 300"},
		/* RFC 5321 §4.5.3.2.4: DATA initiation, 2 minutes. */
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = DATA,
		 .wait = "data 120"},
		/* §4.5.3.2.5: a data block, 3 minutes. */
		{SRV, "354 End data with <CR><LF>.<CR><LF>\r\n", .ev = "BODY",
		 .flags = "wf", .wait = "body 180"},
		{BODY, "Subject: hi\r\n\r\nhello\r\n", .ev = "WAIT",
		 .out = "Subject: hi\r\n\r\nhello\r\n"},
		/* §4.5.3.2.6: DATA termination, 10 minutes. */
		{END, .ev = "WAIT", .out = ".\r\n", .flags = "WF",
		 .wait = "dot 600"},
		{SRV, "250 2.0.0 Ok: queued as 4XyZ\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 Ok: queued as 4XyZ\n", .flags = "wf"},
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n", .flags = "Wf",
		 .wait = "quit 300"},
		{SRV, "221 2.0.0 Bye\r\n", .ev = "CLOSED", .flags = "wf",
		 .wait = "closed 0"},
	}},
	{"multi-line greeting", O_PLAIN, {
		{SRV, "220-mx.test ESMTP\r\n220-No UCE\r\n220 hello\r\n",
		 .ev = "WAIT", .out = EHLO},
		{SRV, "250 mx.test\r\n", .ev = "READY", .ext = ""},
	}},
	{"greeting refused", O_PLAIN, {
		{SRV, "554 5.7.1 mx.test: go away\r\n", .ev = "FAILED",
		 .err = "GREETING 554 554 5.7.1 mx.test: go away", .flags = "w"},
	}},
	{"bare code greeting", O_PLAIN, {
		{SRV, "220\r\n", .ev = "WAIT", .out = EHLO},
	}},
	{"bare LF line ends", O_PLAIN, {
		{SRV, "220 mx.test\n", .ev = "WAIT", .out = EHLO},
		{SRV, "250-mx.test\n250-PIPELINING\r\n250 SIZE 100\n",
		 .ev = "READY", .ext = "PIPELINING SIZE"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 ok\n250 ok\r\n354 go\n", .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 queued\n", .ev = "DONE READY", .res = "[250] 250 queued\n"},
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
		{SRV, "221 bye\n", .ev = "CLOSED"},
	}},

	/* -- STARTTLS ------------------------------------------------------ */
	{"STARTTLS: pipelined plaintext after 220 is discarded", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
		      "250 STARTTLS\r\n",
		 .ev = "WAIT", .out = "STARTTLS\r\n",
		 .ext = "PIPELINING STARTTLS SIZE", .flags = "W"},
		/* An attacker's "250" queued behind the 220 (CVE-2011-0411). */
		{SRV, "220 2.0.0 Ready to start TLS\r\n250-evil\r\n250 PIPELINING\r\n",
		 .ev = "STARTTLS", .flags = "wf"},
		{TLS, .ev = "WAIT", .out = EHLO, .ext = "", .flags = "W"},
		{SRV, "250-mx.test\r\n250-8BITMIME\r\n250-DSN\r\n250 AUTH PLAIN\r\n",
		 .ev = "READY", .ext = "8BITMIME DSN AUTH_PLAIN"},
		/* PIPELINING was only offered before TLS: one at a time. */
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
	}},
	{"STARTTLS: plaintext arriving before the handshake is discarded", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "WAIT",
		 .out = "STARTTLS\r\n", .wait = "starttls 300"},
		{SRV, "220 go ahead\r\n", .ev = "STARTTLS", .wait = "tls 300"},
		/* Read off the socket in plaintext after the 220. */
		{SRV, "250 PIPELINING\r\n", .ev = "WAIT"},
		{TLS, .ev = "WAIT", .out = EHLO, .wait = "ehlo-tls 300"},
		{SRV, "250-mx.test\r\n250 PIPELINING\r\n", .ev = "READY",
		 .ext = "PIPELINING"},
	}},
	/* Direct delivery's "may" (RFC 7435): STARTTLS when offered, else
	 * plaintext; a refusal still fails the session (the engine retries
	 * once in plaintext and remembers it). */
	{"STARTTLS may, offered", O_MAY, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "WAIT",
		 .out = "STARTTLS\r\n", .ext = "STARTTLS"},
		{SRV, "220 go ahead\r\n", .ev = "STARTTLS"},
		{TLS, .ev = "WAIT", .out = EHLO, .ext = ""},
		{SRV, "250 mx.test\r\n", .ev = "READY"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
	}},
	{"STARTTLS may, not offered: plaintext", O_MAY, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 8BITMIME\r\n", .ev = "READY",
		 .ext = "8BITMIME"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
	}},
	{"STARTTLS may, refused", O_MAY, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "WAIT",
		 .out = "STARTTLS\r\n"},
		{SRV, "454 4.7.0 TLS not available\r\n", .ev = "FAILED",
		 .err = "NO_TLS 454 454 4.7.0 TLS not available"},
	}},
	{"STARTTLS may, old server: HELO after a 5xx EHLO", O_MAY, {
		T_GREET,
		{SRV, "502 5.5.2 what?\r\n", .ev = "WAIT",
		 .out = "HELO relay.test\r\n"},
		{SRV, "250 mx.test\r\n", .ev = "READY"},
	}},
	{"STARTTLS required, not offered", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n",
		 .ev = "FAILED", .err = "NO_TLS 0 STARTTLS is required but the "
		 "server does not offer it", .flags = "w"},
	}},
	{"STARTTLS refused", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "WAIT",
		 .out = "STARTTLS\r\n"},
		{SRV, "454 4.7.0 TLS not available due to local problem\r\n",
		 .ev = "FAILED", .err = "NO_TLS 454 454 4.7.0 TLS not available "
		 "due to local problem"},
	}},
	{"EHLO after STARTTLS refused", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "WAIT",
		 .out = "STARTTLS\r\n"},
		{SRV, "220 go\r\n", .ev = "STARTTLS"},
		{TLS, .ev = "WAIT", .out = EHLO},
		{SRV, "554 5.7.0 no\r\n", .ev = "FAILED",
		 .err = "GREETING 554 554 5.7.0 no"},
	}},
	{"STARTTLS not wanted: offered but not used", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 STARTTLS\r\n", .ev = "READY",
		 .ext = "STARTTLS"},
	}},

	/* -- AUTH ---------------------------------------------------------- */
	{"AUTH PLAIN", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n",
		 .ev = "WAIT", .out = "AUTH PLAIN AHVzZXIAcGFzcw==\r\n",
		 .ext = "PIPELINING AUTH_PLAIN AUTH_LOGIN", .flags = "W"},
		{SRV, "235 2.7.0 Authentication successful\r\n", .ev = "READY"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
	}},
	{"AUTH PLAIN, no password, base64 without padding",
	 {.helo = "relay.test", .user = "u"}, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH PLAIN\r\n", .ev = "WAIT",
		 .out = "AUTH PLAIN AHUA\r\n"},
		{SRV, "235 ok\r\n", .ev = "READY"},
	}},
	{"AUTH PLAIN, one byte of padding",
	 {.helo = "relay.test", .user = "ab", .password = "pass"}, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH PLAIN\r\n", .ev = "WAIT",
		 .out = "AUTH PLAIN AGFiAHBhc3M=\r\n"},
	}},
	{"AUTH LOGIN (old AUTH= form)", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH=LOGIN\r\n", .ev = "WAIT",
		 .out = "AUTH LOGIN\r\n", .ext = "AUTH_LOGIN"},
		{SRV, "334 VXNlcm5hbWU6\r\n", .ev = "WAIT", .out = "dXNlcg==\r\n"},
		{SRV, "334 UGFzc3dvcmQ6\r\n", .ev = "WAIT", .out = "cGFzcw==\r\n"},
		{SRV, "235 2.7.0 Authentication successful\r\n", .ev = "READY"},
	}},
	{"AUTH PLAIN refused", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n", .ev = "WAIT",
		 .out = "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"},
		{SRV, "535 5.7.8 Error: authentication failed: bad credentials\r\n",
		 .ev = "FAILED", .err = "AUTH 535 535 5.7.8 Error: authentication "
		 "failed: bad credentials", .flags = "w"},
	}},
	{"AUTH LOGIN: password refused", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH LOGIN\r\n", .ev = "WAIT",
		 .out = "AUTH LOGIN\r\n"},
		{SRV, "334 VXNlcm5hbWU6\r\n", .ev = "WAIT", .out = "dXNlcg==\r\n"},
		{SRV, "334 UGFzc3dvcmQ6\r\n", .ev = "WAIT", .out = "cGFzcw==\r\n"},
		{SRV, "535 5.7.8 no\r\n", .ev = "FAILED",
		 .err = "AUTH 535 535 5.7.8 no"},
	}},
	{"AUTH LOGIN: mechanism refused", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH LOGIN\r\n", .ev = "WAIT",
		 .out = "AUTH LOGIN\r\n"},
		{SRV, "504 5.5.4 Unrecognized authentication type\r\n",
		 .ev = "FAILED",
		 .err = "AUTH 504 504 5.5.4 Unrecognized authentication type"},
	}},
	{"AUTH: no usable mechanism", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 AUTH CRAM-MD5 XOAUTH2\r\n", .ev = "FAILED",
		 .err = "NO_AUTH 0 the server offers no AUTH PLAIN or LOGIN, and "
		 "credentials are configured"},
	}},
	{"AUTH: not offered at all", O_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 PIPELINING\r\n", .ev = "FAILED",
		 .err = "NO_AUTH 0 the server offers no AUTH PLAIN or LOGIN, and "
		 "credentials are configured"},
	}},
	{"STARTTLS, then AUTH LOGIN, then two pipelined messages", O_TLS_AUTH, {
		T_GREET,
		/* AUTH offered in plaintext: not used before TLS. */
		{SRV, "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n",
		 .ev = "WAIT", .out = "STARTTLS\r\n"},
		{SRV, "220 2.0.0 go\r\n", .ev = "STARTTLS"},
		{TLS, .ev = "WAIT", .out = EHLO},
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n",
		 .ev = "WAIT", .out = "AUTH LOGIN\r\n",
		 .ext = "PIPELINING AUTH_LOGIN"},
		{SRV, "334 VXNlcm5hbWU6\r\n", .ev = "WAIT", .out = "dXNlcg==\r\n"},
		{SRV, "334 UGFzc3dvcmQ6\r\n", .ev = "WAIT", .out = "cGFzcw==\r\n"},
		{SRV, "235 2.7.0 ok\r\n", .ev = "READY"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n", .ev = "BODY"},
		{BODY, "a\r\n", .ev = "WAIT", .out = "a\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 2.0.0 queued\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 queued\n"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = "RSET\r\n" MAIL RCPT1 DATA},
		{SRV, "250 2.0.0 ok\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
		 .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 2.0.0 queued 2\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 queued 2\n"},
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
		{SRV, "221 2.0.0 bye\r\n", .ev = "CLOSED"},
	}},
	{"AUTH offered before TLS only", O_TLS_AUTH, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
		 .ev = "WAIT", .out = "STARTTLS\r\n"},
		{SRV, "220 go\r\n", .ev = "STARTTLS"},
		{TLS, .ev = "WAIT", .out = EHLO},
		{SRV, "250-mx.test\r\n250 PIPELINING\r\n", .ev = "FAILED",
		 .err = "NO_AUTH 0 the server offers no AUTH PLAIN or LOGIN, and "
		 "credentials are configured"},
	}},

	/* -- HELO ---------------------------------------------------------- */
	{"EHLO refused with a multi-line reply: text, no keywords", O_TLS, {
		T_GREET,
		{SRV, "554-5.7.1 STARTTLS\r\n554 5.7.1 PIPELINING go away\r\n",
		 .ev = "FAILED", .ext = "",
		 .err = "GREETING 554 554 5.7.1 STARTTLS 5.7.1 PIPELINING go away"},
	}},
	{"HELO fallback on 502", O_PLAIN, {
		T_GREET,
		{SRV, "502 5.5.2 Error: command not recognized\r\n", .ev = "WAIT",
		 .out = "HELO relay.test\r\n"},
		{SRV, "250 mx.test\r\n", .ev = "READY", .ext = ""},
		/* No extensions: no SIZE=, BODY=, DSN, no pipelining. */
		{SEND, .msg = &m_params, .ev = "WAIT", .out = MAIL},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = RCPT1},
	}},
	{"HELO fallback on 500", O_PLAIN, {
		T_GREET,
		{SRV, "500 5.5.1 what?\r\n", .ev = "WAIT", .out = "HELO relay.test\r\n"},
		{SRV, "501 5.5.4 no\r\n", .ev = "FAILED",
		 .err = "GREETING 501 501 5.5.4 no"},
	}},
	{"no HELO fallback on a 4xx", O_PLAIN, {
		T_GREET,
		{SRV, "451 4.3.0 later\r\n", .ev = "FAILED",
		 .err = "GREETING 451 451 4.3.0 later"},
	}},
	{"no HELO fallback when STARTTLS is required", O_TLS, {
		T_GREET,
		{SRV, "502 5.5.2 Error: command not recognized\r\n", .ev = "FAILED",
		 .err = "GREETING 502 502 5.5.2 Error: command not recognized"},
	}},
	{"no HELO fallback when AUTH is required", O_AUTH, {
		T_GREET,
		{SRV, "502 5.5.2 Error: command not recognized\r\n", .ev = "FAILED",
		 .err = "GREETING 502 502 5.5.2 Error: command not recognized"},
	}},

	/* -- transactions without PIPELINING ------------------------------- */
	{"no pipelining: mixed RCPT results", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = RCPT2},
		{SRV, "550 5.1.1 <r2@dst.test>: Recipient address rejected: User "
		      "unknown\r\n", .ev = "WAIT", .out = RCPT3},
		{SRV, "451 4.3.0 <r3@dst.test>: Temporary lookup failure\r\n",
		 .ev = "WAIT", .out = DATA},
		{SRV, "354 go\r\n", .ev = "BODY"},
		{BODY, "x\r\n", .ev = "WAIT", .out = "x\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n", .flags = "WF"},
		{SRV, "250 2.0.0 Ok: queued as 1\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 Ok: queued as 1\n"
		        "[550] 550 5.1.1 <r2@dst.test>: Recipient address "
		        "rejected: User unknown\n"
		        "[451] 451 4.3.0 <r3@dst.test>: Temporary lookup failure\n"},
	}},
	{"no pipelining: MAIL refused skips the RCPTs, RSET before the next",
	 O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL},
		{SRV, "553 5.7.1 <a@src.test>: Sender address rejected\r\n",
		 .ev = "DONE READY", .flags = "w",
		 .res = "[553] 553 5.7.1 <a@src.test>: Sender address rejected\n"
		        "[553] 553 5.7.1 <a@src.test>: Sender address rejected\n"
		        "[553] 553 5.7.1 <a@src.test>: Sender address rejected\n"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = "RSET\r\n"},
		{SRV, "250 2.0.0 Ok\r\n", .ev = "WAIT", .out = MAIL},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1},
	}},
	{"no pipelining: every RCPT refused skips DATA", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "550 5.1.1 no r1\r\n", .ev = "WAIT", .out = RCPT2},
		{SRV, "450 4.2.0 no r2\r\n", .ev = "WAIT", .out = RCPT3},
		{SRV, "550 5.1.1 no r3\r\n", .ev = "DONE READY",
		 .res = "[550] 550 5.1.1 no r1\n[450] 450 4.2.0 no r2\n"
		        "[550] 550 5.1.1 no r3\n"},
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
	}},
	{"no pipelining: DATA refused after accepted RCPTs", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = RCPT2},
		{SRV, "550 5.1.1 no r2\r\n", .ev = "WAIT", .out = RCPT3},
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = DATA},
		{SRV, "554 5.5.1 Error: no valid recipients\r\n", .ev = "DONE READY",
		 .res = "[554] 554 5.5.1 Error: no valid recipients\n"
		        "[550] 550 5.1.1 no r2\n"
		        "[554] 554 5.5.1 Error: no valid recipients\n"},
	}},
	{"no pipelining: final dot refused", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL},
		{SRV, "250 2.1.0 Ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = RCPT2},
		{SRV, "550 5.1.1 no r2\r\n", .ev = "WAIT", .out = RCPT3},
		{SRV, "250 2.1.5 Ok\r\n", .ev = "WAIT", .out = DATA},
		{SRV, "354 go\r\n", .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "552 5.3.4 Error: message file too big\r\n", .ev = "DONE READY",
		 .res = "[552] 552 5.3.4 Error: message file too big\n"
		        "[550] 550 5.1.1 no r2\n"
		        "[552] 552 5.3.4 Error: message file too big\n"},
	}},
	{"RSET refused", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
		{SRV, "550 no\r\n", .ev = "DONE READY", .res = "[550] 550 no\n"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = "RSET\r\n"},
		{SRV, "500 5.5.1 what\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 500 500 5.5.1 what"},
	}},
	{"no pipelining: no recipients", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &(const struct deliver_client_msg){
			.sender = "a@src.test"}, .ev = "WAIT", .out = MAIL},
		{SRV, "250 ok\r\n", .ev = "DONE READY"},
	}},

	/* -- PIPELINING ---------------------------------------------------- */
	{"pipelining: two messages, mixed results", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL RCPT1 RCPT2 RCPT3 DATA,
		 .flags = "W"},
		{SRV, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", .ev = "WAIT"},
		{SRV, "550 5.1.1 no r2\r\n451 4.7.1 greylisted\r\n354 go\r\n",
		 .ev = "BODY"},
		{BODY, "x\r\n", .ev = "WAIT", .out = "x\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 2.0.0 Ok: queued as 1\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 Ok: queued as 1\n[550] 550 5.1.1 no r2\n"
		        "[451] 451 4.7.1 greylisted\n"},
		{SEND, .msg = &m3, .ev = "WAIT",
		 .out = "RSET\r\n" MAIL RCPT1 RCPT2 RCPT3 DATA},
		{SRV, "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
		      "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 2.0.0 Ok: queued as 2\r\n", .ev = "DONE READY",
		 .res = "[250] 250 2.0.0 Ok: queued as 2\n"
		        "[250] 250 2.0.0 Ok: queued as 2\n"
		        "[250] 250 2.0.0 Ok: queued as 2\n"},
	}},
	{"pipelining: MAIL refused, the rest is answered and ignored", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL RCPT1 RCPT2 RCPT3 DATA},
		{SRV, "553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n"
		      "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
		      "503 5.5.1 need RCPT\r\n", .ev = "DONE READY",
		 .res = "[553] 553 5.7.1 sender rejected\n"
		        "[553] 553 5.7.1 sender rejected\n"
		        "[553] 553 5.7.1 sender rejected\n"},
	}},
	{"pipelining: MAIL refused but DATA 354: empty body", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "553 5.7.1 sender rejected\r\n250 2.1.5 huh\r\n354 go\r\n",
		 .ev = "WAIT", .out = ".\r\n", .flags = "WF"},
		{SRV, "250 2.0.0 nothing\r\n", .ev = "DONE READY",
		 .res = "[553] 553 5.7.1 sender rejected\n"},
	}},
	{"pipelining: no accepted recipient, DATA 354: just the dot", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL RCPT1 RCPT2 RCPT3 DATA},
		{SRV, "250 2.1.0 Ok\r\n550 5.1.1 no r1\r\n550 5.1.1 no r2\r\n"
		      "451 4.3.0 no r3\r\n354 go\r\n",
		 .ev = "WAIT", .out = ".\r\n", .flags = "WF"},
		{SRV, "554 5.5.1 Error: no valid recipients\r\n", .ev = "DONE READY",
		 .res = "[550] 550 5.1.1 no r1\n[550] 550 5.1.1 no r2\n"
		        "[451] 451 4.3.0 no r3\n"},
	}},
	{"pipelining: no accepted recipient, DATA refused", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 2.1.0 Ok\r\n550 5.1.1 no r1\r\n"
		      "554 5.5.1 Error: no valid recipients\r\n",
		 .ev = "DONE READY", .res = "[550] 550 5.1.1 no r1\n"},
	}},
	{"pipelining: DATA refused after accepted RCPTs", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL RCPT1 RCPT2 RCPT3 DATA},
		{SRV, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no r2\r\n"
		      "250 2.1.5 Ok\r\n451 4.3.0 queue full\r\n",
		 .ev = "DONE READY",
		 .res = "[451] 451 4.3.0 queue full\n[550] 550 5.1.1 no r2\n"
		        "[451] 451 4.3.0 queue full\n"},
	}},
	{"pipelining: replies after a DONE are unsolicited", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "550 no\r\n550 no\r\n554 no\r\n250 extra\r\n",
		 .ev = "DONE FAILED", .err = "PROTOCOL 250 250 extra"},
	}},

	/* -- MAIL and RCPT parameters ------------------------------------- */
	{"parameters the server offers", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
		      "250-DSN\r\n250 SMTPUTF8\r\n", .ev = "READY",
		 .ext = "SIZE 8BITMIME DSN SMTPUTF8"},
		{SEND, .msg = &m_params, .ev = "WAIT",
		 .out = "MAIL FROM:<a@src.test> SIZE=1234 BODY=8BITMIME RET=HDRS "
		        "ENVID=QID+2B1\r\n"},
		{SRV, "250 ok\r\n", .ev = "WAIT",
		 .out = "RCPT TO:<r1@dst.test> NOTIFY=SUCCESS,FAILURE "
		        "ORCPT=rfc822;r1@dst.test\r\n"},
		{SRV, "250 ok\r\n", .ev = "WAIT",
		 .out = "RCPT TO:<r2@dst.test> ORCPT=rfc822;r2@dst.test\r\n"},
		{SRV, "250 ok\r\n", .ev = "WAIT",
		 .out = "RCPT TO:<r3@dst.test> NOTIFY=NEVER\r\n"},
	}},
	{"parameters the server does not offer", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 PIPELINING\r\n", .ev = "READY"},
		{SEND, .msg = &m_params, .ev = "WAIT",
		 .out = MAIL RCPT1 RCPT2 RCPT3 DATA},
	}},
	/* -- 8BITMIME (RFC 6152 §3; issue 8 §10) --------------------------- */
	{"8-bit body, 8BITMIME offered: BODY=8BITMIME", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
		 .ev = "READY"},
		{SEND, .msg = &m_8bit, .ev = "WAIT",
		 .out = "MAIL FROM:<a@src.test> BODY=8BITMIME\r\n" RCPT1 RCPT2
		        RCPT3 DATA},
	}},
	{"8-bit body, no 8BITMIME: refused 5.6.3, nothing sent", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n"
		      "250 SIZE 1000\r\n", .ev = "READY"},
		{SEND, .msg = &m_8bit, .ev = "DONE READY",
		 .res = BIT8_REFUSED BIT8_REFUSED BIT8_REFUSED},
		/* The session goes on: the next message is sent. */
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
	}},
	{"8-bit body, no 8BITMIME, without pipelining", O_PLAIN, {
		T_GREET,
		{SRV, "250 mx.test\r\n", .ev = "READY"},
		{SEND, .msg = &m_8bit, .ev = "DONE READY",
		 .res = BIT8_REFUSED BIT8_REFUSED BIT8_REFUSED},
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
	}},
	{"7-bit body declared 8BITMIME, no 8BITMIME: sent without BODY=",
	 O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 SIZE 5000\r\n", .ev = "READY"},
		{SEND, .msg = &m_params, .ev = "WAIT",
		 .out = "MAIL FROM:<a@src.test> SIZE=1234\r\n"},
	}},
	{"undeclared 8-bit body: no BODY=, not refused", O_PLAIN, {
		T_GREET,
		{SRV, "250 mx.test\r\n", .ev = "READY"},
		{SEND, .msg = &m_8bit_undeclared, .ev = "WAIT", .out = MAIL},
	}},
	{"SMTPUTF8 is checked before 8BITMIME", O_PLAIN, {
		T_GREET,
		{SRV, "250 mx.test\r\n", .ev = "READY"},
		{SEND, .msg = &m_utf8, .ev = "DONE READY",
		 .res = UTF8_REFUSED UTF8_REFUSED UTF8_REFUSED},
	}},
	{"8BITMIME lost after STARTTLS: the second EHLO decides", O_TLS, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-8BITMIME\r\n250-SIZE 900\r\n"
		      "250 STARTTLS\r\n", .ev = "WAIT", .out = "STARTTLS\r\n",
		 .size = "900"},
		{SRV, "220 go\r\n", .ev = "STARTTLS", .size = "900"},
		{TLS, .ev = "WAIT", .out = EHLO, .size = "0"},
		{SRV, "250-mx.test\r\n250 SIZE 700\r\n", .ev = "READY",
		 .ext = "SIZE", .size = "700"},
		{SEND, .msg = &m_8bit, .ev = "DONE READY",
		 .res = BIT8_REFUSED BIT8_REFUSED BIT8_REFUSED},
	}},

	/* -- SIZE (RFC 1870) ---------------------------------------------- */
	{"SIZE learnt from EHLO; HELO forgets it", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250 SIZE 10485760\r\n", .ev = "READY",
		 .size = "10485760"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
	}},
	{"SIZE only", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250 SIZE\r\n", .ev = "READY"},
		{SEND, .msg = &m_params, .ev = "WAIT",
		 .out = "MAIL FROM:<a@src.test> SIZE=1234\r\n" RCPT1 RCPT2 RCPT3 DATA},
	}},
	{"no SIZE= for size 0; BODY=8BITMIME; no RET= without DSN", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-SIZE 100\r\n250 8BITMIME\r\n", .ev = "READY"},
		{SEND, .msg = &m_size0, .ev = "WAIT", .out = MAIL},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = DATA},
		{SRV, "354 go\r\n", .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		{SRV, "250 ok\r\n", .ev = "DONE READY"},
		{SEND, .msg = &(const struct deliver_client_msg){
			.sender = "a@src.test", .body_8bit = true, .ret = "FULL",
			.nrcpt = 1, .rcpt = rcpt1}, .ev = "WAIT", .out = "RSET\r\n"},
		{SRV, "250 ok\r\n", .ev = "WAIT",
		 .out = "MAIL FROM:<a@src.test> BODY=8BITMIME\r\n"},
	}},
	{"null reverse-path", O_PLAIN, {
		T_GREET,
		T_EHLO,
		{SEND, .msg = &m_null, .ev = "WAIT", .out = "MAIL FROM:<>\r\n"},
	}},
	{"SMTPUTF8 offered", O_PLAIN, {
		T_GREET,
		{SRV, "250-mx.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
		 .ev = "READY"},
		{SEND, .msg = &m_utf8, .ev = "WAIT",
		 .out = "MAIL FROM:<j\xc3\xb6rg@src.test> SMTPUTF8\r\n"
		        RCPT1 RCPT2 RCPT3 DATA},
	}},
	{"SMTPUTF8 needed, not offered: refused locally", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m_utf8, .ev = "DONE READY", .flags = "w",
		 .res = UTF8_REFUSED UTF8_REFUSED UTF8_REFUSED},
		/* Nothing was sent: the next message needs no RSET. */
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
	}},

	/* -- 421 anywhere -------------------------------------------------- */
	{"421 greeting", O_PLAIN, {T_421}},
	{"421 to EHLO", O_PLAIN, {T_GREET, T_421}},
	{"421 multi-line", O_PLAIN, {T_GREET,
		{SRV, "421-4.7.0 mx.test Too many connections\r\n421 4.7.0 Try "
		      "again later\r\n", .ev = "FAILED",
		 .err = "CLOSED 421 421 4.7.0 mx.test Too many connections "
		        "4.7.0 Try again later"}}},
	{"421 to HELO", O_PLAIN, {T_GREET,
		{SRV, "502 no\r\n", .ev = "WAIT", .out = "HELO relay.test\r\n"},
		T_421}},
	{"421 to STARTTLS", O_TLS, {T_GREET,
		{SRV, "250-mx\r\n250 STARTTLS\r\n", .ev = "WAIT", .out = "STARTTLS\r\n"},
		T_421}},
	{"421 to EHLO after TLS", O_TLS, {T_GREET,
		{SRV, "250-mx\r\n250 STARTTLS\r\n", .ev = "WAIT", .out = "STARTTLS\r\n"},
		{SRV, "220 go\r\n", .ev = "STARTTLS"},
		{TLS, .ev = "WAIT", .out = EHLO},
		T_421}},
	{"421 to AUTH PLAIN", O_AUTH, {T_GREET,
		{SRV, "250-mx\r\n250 AUTH PLAIN\r\n", .ev = "WAIT",
		 .out = "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"},
		T_421}},
	{"421 to AUTH LOGIN user", O_AUTH, {T_GREET,
		{SRV, "250-mx\r\n250 AUTH LOGIN\r\n", .ev = "WAIT",
		 .out = "AUTH LOGIN\r\n"},
		{SRV, "334 VXNlcm5hbWU6\r\n", .ev = "WAIT", .out = "dXNlcg==\r\n"},
		T_421}},
	{"421 to MAIL", O_PLAIN, {T_GREET, T_EHLO,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
		T_421}},
	{"421 to RCPT", O_PLAIN, {T_GREET, T_EHLO,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = RCPT1},
		T_421}},
	{"421 to DATA", O_PLAIN, {T_GREET, T_EHLO,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = RCPT1},
		{SRV, "250 ok\r\n", .ev = "WAIT", .out = DATA},
		T_421}},
	{"421 to the final dot", O_PLAIN, {T_GREET, T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 ok\r\n250 ok\r\n354 go\r\n", .ev = "BODY"},
		{END, .ev = "WAIT", .out = ".\r\n"},
		T_421}},
	{"421 to RSET", O_PLAIN, {T_GREET, T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "550 no\r\n503 no\r\n503 no\r\n", .ev = "DONE READY"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = "RSET\r\n" MAIL RCPT1 DATA},
		T_421}},
	{"421 in a pipelined batch", O_PLAIN, {T_GREET, T_EHLO_PIPE,
		{SEND, .msg = &m3, .ev = "WAIT", .out = MAIL RCPT1 RCPT2 RCPT3 DATA},
		{SRV, "250 ok\r\n250 ok\r\n421 4.3.2 Service shutting down\r\n"
		      "250 never read\r\n", .ev = "FAILED",
		 .err = "CLOSED 421 421 4.3.2 Service shutting down"}}},
	{"421 while READY", O_PLAIN, {T_GREET, T_EHLO, T_421}},
	{"421 to QUIT is a close", O_PLAIN, {T_GREET, T_EHLO,
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
		{SRV, "421 4.3.2 bye\r\n", .ev = "CLOSED", .flags = "wf"},
		/* Closed stays closed: input ignored, nothing sent. */
		{SRV, "250 late\r\n", .ev = "CLOSED"},
		{QUIT, .ev = "CLOSED"}}},
	{"anything to QUIT is a close", O_PLAIN, {T_GREET, T_EHLO,
		{QUIT, .ev = "WAIT", .out = "QUIT\r\n"},
		{SRV, "500 5.5.1 what\r\n", .ev = "CLOSED"}}},

	/* -- malformed and unexpected replies ------------------------------ */
	{"garbage", O_PLAIN, {
		{SRV, "hello\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 0 malformed reply"}}},
	{"mismatched codes in a multi-line reply", O_PLAIN, {T_GREET,
		{SRV, "250-mx.test\r\n251-PIPELINING\r\n250 SIZE\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 0 malformed reply"}}},
	{"unsolicited reply while READY", O_PLAIN, {T_GREET, T_EHLO,
		{SRV, "250 surprise\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 250 250 surprise", .flags = "wf"},
		/* Input is ignored from now on. */
		{SRV, "250 more\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 250 250 surprise"}}},
	{"an extra reply behind the EHLO reply", O_PLAIN, {T_GREET,
		{SRV, "250 mx.test\r\n250 extra\r\n", .ev = "FAILED",
		 .err = "PROTOCOL 250 250 extra"}}},
	{"a reply during the body is the final reply", O_PLAIN, {T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 ok\r\n250 ok\r\n354 go\r\n", .ev = "BODY"},
		{SRV, "554 5.0.0 stop\r\n", .ev = "WAIT", .flags = "w"},
		{BODY, "x\r\n", .ev = "WAIT", .out = "x\r\n"},
		{END, .ev = "DONE READY", .out = ".\r\n",
		 .res = "[554] 554 5.0.0 stop\n"}}},

	/* -- reply text ---------------------------------------------------- */
	{"control characters become '?', UTF-8 stays", O_PLAIN, {
		{SRV, "554 5.7.1 bad\x01user\x7f\tx\x1b[31m j\xc3\xb6rg\r\x0b\r\n",
		 .ev = "FAILED",
		 .err = "GREETING 554 554 5.7.1 bad?user??x?[31m j\xc3\xb6rg??"}}},
	{"NUL in a reply", O_PLAIN, {
		{SRV, "554 a\0b\r\n", .len = 9, .ev = "FAILED",
		 .err = "GREETING 554 554 a?b"}}},
	{"multi-line reply: lines joined, the enhanced code readable", O_PLAIN, {
		T_GREET,
		T_EHLO_PIPE,
		{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA},
		{SRV, "250 2.1.0 OK\r\n"
		      "550-5.1.1 The email account that you tried to reach does not\r\n"
		      "550-5.1.1 exist. Please try double-checking the recipient's\r\n"
		      "550 5.1.1 email address. x1si123 - gsmtp\r\n"
		      "554 5.5.1 no valid recipients\r\n",
		 .ev = "DONE READY",
		 .res = "[550] 550 5.1.1 The email account that you tried to reach "
		        "does not 5.1.1 exist. Please try double-checking the "
		        "recipient's 5.1.1 email address. x1si123 - gsmtp\n"}}},
};

static void test_scripts(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++)
		run_all(&scripts[i]);
}

/* ---- EHLO keywords ------------------------------------------------------ */

struct ext_case {
	const char *name, *reply, *ext;
};

static const struct ext_case ext_cases[] = {
	{"single line", "250 mx.test\r\n", ""},
	{"the first line is the domain, never a keyword",
	 "250-PIPELINING\r\n250 SIZE 100\r\n", "SIZE"},
	{"everything", "250-mx.test Hello relay.test\r\n250-PIPELINING\r\n"
	 "250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n"
	 "250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
	 "250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
	 "PIPELINING STARTTLS SIZE 8BITMIME DSN SMTPUTF8 AUTH_PLAIN AUTH_LOGIN"},
	{"lowercase", "250-mx.test\r\n250-pipelining\r\n250-starttls\r\n"
	 "250-size 1000\r\n250-8bitmime\r\n250-dsn\r\n250-smtputf8\r\n"
	 "250 auth plain login\r\n",
	 "PIPELINING STARTTLS SIZE 8BITMIME DSN SMTPUTF8 AUTH_PLAIN AUTH_LOGIN"},
	{"mixed case", "250-mx\r\n250-PipeLining\r\n250 Auth Login\r\n",
	 "PIPELINING AUTH_LOGIN"},
	{"SIZE without a value", "250-mx\r\n250 SIZE\r\n", "SIZE"},
	{"AUTH=LOGIN old form", "250-mx\r\n250 AUTH=LOGIN\r\n", "AUTH_LOGIN"},
	{"AUTH=PLAIN LOGIN old form", "250-mx\r\n250 AUTH=PLAIN LOGIN\r\n",
	 "AUTH_PLAIN AUTH_LOGIN"},
	{"AUTH twice, both forms",
	 "250-mx\r\n250-AUTH CRAM-MD5 LOGIN\r\n250 AUTH=LOGIN PLAIN\r\n",
	 "AUTH_PLAIN AUTH_LOGIN"},
	{"AUTH with mechanisms we lack", "250-mx\r\n250 AUTH CRAM-MD5 XOAUTH2 "
	 "SCRAM-SHA-256\r\n", ""},
	{"AUTH near misses", "250-mx\r\n250 AUTH PLAINX LOGI XLOGIN PLAI\r\n", ""},
	{"AUTH with no mechanism", "250-mx\r\n250 AUTH\r\n", ""},
	{"AUTH, extra spaces", "250-mx\r\n250 AUTH   PLAIN  \r\n", "AUTH_PLAIN"},
	{"keyword prefixes and suffixes", "250-mx\r\n250-PIPELININGX\r\n"
	 "250-X-PIPELINING\r\n250-SIZED\r\n250-STARTTLSv2\r\n250-XDSN\r\n"
	 "250 8BITMIMEX\r\n", ""},
	{"a keyword longer than the parser's buffer",
	 "250-mx\r\n250 PIPELININGPIPELININGPIPELININGPIPELINING\r\n", ""},
	{"bare LF", "250-mx\n250-PIPELINING\n250 SIZE 5\n", "PIPELINING SIZE"},
	{"empty continuation line", "250-mx\r\n250-\r\n250 DSN\r\n", "DSN"},
	{"bare code last line", "250-mx\r\n250-DSN\r\n250\r\n", "DSN"},
	{"trailing space", "250-mx\r\n250-PIPELINING \r\n250 DSN\r\n",
	 "PIPELINING DSN"},
	{"the last line is a keyword", "250-mx\r\n250 STARTTLS\r\n", "STARTTLS"},
};

/* SIZE's value as the session reports it (RFC 1870 §4). */
static const struct {
	const char *name, *reply, *size;
} size_cases[] = {
	{"no SIZE", "250-mx\r\n250 DSN\r\n", "0"},
	{"SIZE alone: no fixed limit", "250-mx\r\n250 SIZE\r\n", "0"},
	{"SIZE 0: no fixed limit", "250-mx\r\n250 SIZE 0\r\n", "0"},
	{"a provider's 35M", "250-mx\r\n250-SIZE 36700160\r\n250 DSN\r\n",
	 "36700160"},
	{"lowercase, extra spaces", "250-mx\r\n250 size   1000  \r\n", "1000"},
	{"leading zeros", "250-mx\r\n250 SIZE 000123\r\n", "123"},
	{"20 digits, the most RFC 1870 allows",
	 "250-mx\r\n250 SIZE 18446744073709551615\r\n", "18446744073709551615"},
	{"past 2^64", "250-mx\r\n250 SIZE 18446744073709551616\r\n", "0"},
	{"21 digits", "250-mx\r\n250 SIZE 000000000000000000001\r\n", "0"},
	{"not a number", "250-mx\r\n250 SIZE ten\r\n", "0"},
	{"negative", "250-mx\r\n250 SIZE -5\r\n", "0"},
	{"a sign", "250-mx\r\n250 SIZE +5\r\n", "0"},
	{"number and junk", "250-mx\r\n250 SIZE 5M\r\n", "0"},
	{"two numbers", "250-mx\r\n250 SIZE 5 6\r\n", "0"},
	{"SIZE=5 is not SIZE", "250-mx\r\n250 SIZE=5\r\n", "0"},
	{"SIZED 5 is not SIZE", "250-mx\r\n250 SIZED 5\r\n", "0"},
	{"the last SIZE line counts", "250-mx\r\n250-SIZE 5\r\n250 SIZE 7\r\n",
	 "7"},
	{"the domain line is not a keyword", "250-SIZE 5\r\n250 DSN\r\n", "0"},
	{"in a refusal: text", "550-mx\r\n550 SIZE 5\r\n", NULL},
};

static void test_ehlo_size(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof size_cases / sizeof *size_cases; i++) {
		if (!size_cases[i].size) {
			/* A 5xx to EHLO: HELO, and nothing learnt. */
			struct script s = {size_cases[i].name, O_PLAIN, {
				T_GREET,
				{SRV, size_cases[i].reply, .ev = "WAIT",
				 .out = "HELO relay.test\r\n", .size = "0"},
				{SRV, "250 mx\r\n", .ev = "READY", .size = "0"},
			}};
			run_all(&s);
			continue;
		}
		struct script s = {size_cases[i].name, O_PLAIN, {
			T_GREET,
			{SRV, size_cases[i].reply, .ev = "READY",
			 .size = size_cases[i].size},
		}};
		run_all(&s);
	}
	/* The pure parser, on what follows the keyword. */
	static const struct { const char *in; uint64_t want; } p[] = {
		{"", 0}, {" ", 0}, {" 1", 1}, {"1", 1}, {" 10240000", 10240000},
		{" 1 ", 1}, {" 1x", 0}, {" x1", 0}, {" 1 2", 0}, {" \t1", 0},
		{" 99999999999999999999", 0}, {" 18446744073709551615", UINT64_MAX},
	};
	for (size_t i = 0; i < sizeof p / sizeof *p; i++) {
		uint64_t got = deliver_client_parse_size(p[i].in, strlen(p[i].in));
		if (got != p[i].want)
			fail_msg("parse_size('%s') = %llu, want %llu", p[i].in,
			         (unsigned long long)got,
			         (unsigned long long)p[i].want);
	}
}

static void test_ehlo_keywords(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof ext_cases / sizeof *ext_cases; i++) {
		struct script s = {ext_cases[i].name, O_PLAIN, {
			T_GREET,
			{SRV, ext_cases[i].reply, .ev = "READY",
			 .ext = ext_cases[i].ext},
		}};
		run_all(&s);
	}
}

/* ---- malformed replies --------------------------------------------------- */

static const char *const malformed[] = {
	"hello\r\n", "\r\n", "\n", "22\r\n", "2200 x\r\n", "220x\r\n",
	"220_x\r\n", " 220 x\r\n", "600 x\r\n", "199 x\r\n", "099 x\r\n",
	"2a0 x\r\n", "220-ok\r\nhello\r\n", "220-ok\r\n221 x\r\n",
	"220-ok\r\n220x\r\n", "220-ok\r\n\r\n",
};

static void test_malformed(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++) {
		char name[64];
		snprintf(name, sizeof name, "malformed #%zu", i);
		struct script s = {name, O_PLAIN, {
			{SRV, malformed[i], .ev = "FAILED",
			 .err = "PROTOCOL 0 malformed reply", .flags = "wf"},
		}};
		run_all(&s);
	}
}

/* ---- bounds ------------------------------------------------------------- */

/* A greeting line of n characters (code included, line end excluded). */
static char *long_line(size_t n, const char *eol)
{
	char *s = malloc(n + 3);
	assert_non_null(s);
	memcpy(s, "220 ", 4);
	memset(s + 4, 'x', n - 4);
	strcpy(s + n, eol);
	return s;
}

static void test_reply_line_bounds(void **state)
{
	(void)state;
	/* At the limit, CRLF or LF: fine, and the text is cut for keeping. */
	char *ok = long_line(DELIVER_REPLY_LINE_MAX, "\r\n");
	struct script s1 = {"line at the limit", O_PLAIN, {
		{SRV, ok, .ev = "WAIT", .out = EHLO},
	}};
	run_all(&s1);
	free(ok);
	ok = long_line(DELIVER_REPLY_LINE_MAX, "\n");
	struct script s2 = {"line at the limit, LF", O_PLAIN, {
		{SRV, ok, .ev = "WAIT", .out = EHLO},
	}};
	run_all(&s2);
	free(ok);

	/* One more: refused, however it arrives. */
	char *bad = long_line(DELIVER_REPLY_LINE_MAX + 1, "\r\n");
	struct script s3 = {"line over the limit", O_PLAIN, {
		{SRV, bad, .ev = "FAILED", .err = "PROTOCOL 0 reply too long"},
	}};
	run_all(&s3);
	free(bad);

	/* No line end at all: refused once past the limit, not buffered on. */
	bad = long_line(DELIVER_REPLY_LINE_MAX + 2, "");
	struct script s4 = {"endless line", O_PLAIN, {
		{SRV, bad, .ev = "FAILED", .err = "PROTOCOL 0 reply too long"},
	}};
	run_all(&s4);
	free(bad);
}

static void test_reply_text_cut(void **state)
{
	(void)state;
	char *line = long_line(1000, "\r\n");
	line[0] = '5';   /* 520: refused greeting, text kept */
	struct deliver_client_opts o = O_PLAIN;
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX);
	deliver_client_input(c, line, strlen(line));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_FAILED);
	const struct deliver_reply *r;
	assert_int_equal(deliver_client_error(c, &r), DELIVER_FAIL_GREETING);
	assert_int_equal(r->code, 520);
	assert_int_equal(strlen(r->text), DELIVER_REPLY_TEXT_MAX - 1);
	assert_memory_equal(r->text, line, DELIVER_REPLY_TEXT_MAX - 1);
	assert_int_equal(out.len, 0);
	deliver_client_free(c);
	buf_free(&out);
	free(line);
}

/* A greeting of n lines, each `width` characters. */
static char *many_lines(size_t n, size_t width)
{
	char *s = malloc(n * (width + 2) + 1), *p = s;
	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		memcpy(p, i + 1 < n ? "220-" : "220 ", 4);
		memset(p + 4, 'a' + (char)(i % 26), width - 4);
		memcpy(p + width, "\r\n", 2);
		p += width + 2;
	}
	*p = '\0';
	return s;
}

static void test_reply_lines_bounds(void **state)
{
	(void)state;
	char *ok = many_lines(DELIVER_REPLY_LINES_MAX, 12);
	struct script s1 = {"lines at the limit", O_PLAIN, {
		{SRV, ok, .ev = "WAIT", .out = EHLO},
		{SRV, "250 mx.test\r\n", .ev = "READY"},
	}};
	run_all(&s1);
	free(ok);

	char *bad = many_lines(DELIVER_REPLY_LINES_MAX + 1, 12);
	struct script s2 = {"lines over the limit", O_PLAIN, {
		{SRV, bad, .ev = "FAILED", .err = "PROTOCOL 0 reply too long"},
	}};
	run_all(&s2);
	free(bad);

	/* A big reply inside both bounds, handed over in one read. */
	char *big = many_lines(40, 1000);
	struct script s3 = {"a big reply in one piece", O_PLAIN, {
		{SRV, big, .ev = "WAIT", .out = EHLO},
		{SRV, "250 mx.test\r\n", .ev = "READY"},
	}};
	run_all(&s3);
	free(big);
}

/* Pipelined replies to many recipients arrive in one read. */
static void test_many_replies_in_one_read(void **state)
{
	(void)state;
	enum { N = 1000 };
	static const char *rcpt[N];
	for (size_t i = 0; i < N; i++)
		rcpt[i] = "someone.with.a.long.name@dst.test";
	struct deliver_client_msg m = {.sender = "a@src.test", .nrcpt = N,
	                               .rcpt = rcpt};
	struct deliver_client_opts o = O_PLAIN;
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX), in = BUF_INIT(SIZE_MAX);
	deliver_client_input(c, GREETING "250-mx\r\n250 PIPELINING\r\n",
	                     strlen(GREETING "250-mx\r\n250 PIPELINING\r\n"));
	/* Greeting and EHLO reply in one read: straight to READY. */
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	deliver_client_send(c, &m, &out);
	buf_appends(&in, "250 2.1.0 Sender <a@src.test> ok\r\n");
	for (size_t i = 0; i < N; i++)
		buf_printf(&in, "250 2.1.5 Recipient <%s> ok\r\n", rcpt[i]);
	buf_appends(&in, "354 go\r\n");
	assert_true(in.len > 40000);
	assert_int_equal(deliver_client_input(c, in.data, in.len), 0);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_BODY);
	buf_free(&in);
	buf_free(&out);
	deliver_client_free(c);
}

/* The server floods while the body streams (nothing consumes replies then):
 * the input is bounded and the session fails. */
static void test_flood_during_body(void **state)
{
	(void)state;
	struct deliver_client_opts o = O_PLAIN;
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX);
	const char *pre = GREETING "250-mx\r\n250 PIPELINING\r\n";
	deliver_client_input(c, pre, strlen(pre));
	/* Greeting and EHLO reply in one read: straight to READY. */
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	deliver_client_send(c, &m1, &out);
	deliver_client_input(c, "250 ok\r\n250 ok\r\n354 go\r\n", 24);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_BODY);
	static char junk[65536];
	memset(junk, '\n', sizeof junk);
	int r = 0;
	for (int i = 0; i < 64 && r == 0; i++)
		r = deliver_client_input(c, junk, sizeof junk);
	assert_int_equal(r, -ENOBUFS);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_FAILED);
	const struct deliver_reply *e;
	assert_int_equal(deliver_client_error(c, &e), DELIVER_FAIL_PROTOCOL);
	assert_string_equal(e->text, "reply too long");
	buf_free(&out);
	deliver_client_free(c);
}

/* ---- dot-stuffing --------------------------------------------------------- */

#define BODY_PRE T_GREET, T_EHLO_PIPE, \
	{SEND, .msg = &m1, .ev = "WAIT", .out = MAIL RCPT1 DATA}, \
	{SRV, "250 ok\r\n250 ok\r\n354 go\r\n", .ev = "BODY"}

static const struct script body_scripts[] = {
	{"dot-stuffing", O_PLAIN, {BODY_PRE,
		{BODY, ".a\r\nb\r\n..c\r\n.\r\nd.e\r\n\r\n.\r\n", .ev = "WAIT",
		 .out = "..a\r\nb\r\n...c\r\n..\r\nd.e\r\n\r\n..\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n", .flags = "WF"},
		{SRV, "250 ok\r\n", .ev = "DONE READY"}}},
	{"a '.' right after a CRLF that ends a chunk", O_PLAIN, {BODY_PRE,
		{BODY, "x\r\n", .ev = "WAIT", .out = "x\r\n"},
		{BODY, ".y\r\n", .ev = "WAIT", .out = "..y\r\n"},
		{BODY, "z\r", .ev = "WAIT", .out = "z\r"},
		{BODY, "\n", .ev = "WAIT", .out = "\n"},
		{BODY, ".", .ev = "WAIT", .out = ".."},
		{BODY, ".\r\n", .ev = "WAIT", .out = ".\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"a dot as the first byte of the body", O_PLAIN, {BODY_PRE,
		{BODY, ".\r\n", .ev = "WAIT", .out = "..\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"no stuffing in mid-line or after a lone CR", O_PLAIN, {BODY_PRE,
		{BODY, "a.b\r.c\r\n", .ev = "WAIT", .out = "a.b\r.c\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"a body not ending in CRLF", O_PLAIN, {BODY_PRE,
		{BODY, "a\r\nlast", .ev = "WAIT", .out = "a\r\nlast"},
		{END, .ev = "WAIT", .out = "\r\n.\r\n"}}},
	{"a body ending in a dot", O_PLAIN, {BODY_PRE,
		{BODY, "a\r\n.", .ev = "WAIT", .out = "a\r\n.."},
		{END, .ev = "WAIT", .out = "\r\n.\r\n"}}},
	{"an empty body", O_PLAIN, {BODY_PRE,
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"an empty chunk", O_PLAIN, {BODY_PRE,
		{BODY, "", .ev = "WAIT"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"an empty chunk after an unterminated line", O_PLAIN, {BODY_PRE,
		{BODY, "a", .ev = "WAIT", .out = "a"},
		{BODY, "", .ev = "WAIT"},
		{END, .ev = "WAIT", .out = "\r\n.\r\n"}}},
	{"the next body starts at a line start again", O_PLAIN, {BODY_PRE,
		{BODY, "no end", .ev = "WAIT", .out = "no end"},
		{END, .ev = "WAIT", .out = "\r\n.\r\n"},
		{SRV, "250 ok\r\n", .ev = "DONE READY"},
		{SEND, .msg = &m1, .ev = "WAIT", .out = "RSET\r\n" MAIL RCPT1 DATA},
		{SRV, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", .ev = "BODY"},
		{BODY, ".x\r\n", .ev = "WAIT", .out = "..x\r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
	{"a message full of dots", O_PLAIN, {BODY_PRE,
		{BODY, "Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.\r\n.x.\r\n. \r\n",
		 .ev = "WAIT",
		 .out = "Subject: dots\r\n\r\n..\r\n...\r\n....\r\n..\r\n..x.\r\n"
		        ".. \r\n"},
		{END, .ev = "WAIT", .out = ".\r\n"}}},
};

static void test_dot_stuffing(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof body_scripts / sizeof *body_scripts; i++)
		run_all(&body_scripts[i]);
}

/* ---- calls out of turn ---------------------------------------------------- */

static void test_calls_out_of_turn(void **state)
{
	(void)state;
	struct deliver_client_opts o = O_PLAIN;
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX);
	/* Before the greeting nothing is ours to send. */
	deliver_client_send(c, &m1, &out);
	deliver_client_quit(c, &out);
	deliver_client_body_end(c, &out);
	deliver_client_tls_ready(c, &out);
	assert_int_equal(out.len, 0);
	assert_true(deliver_client_waiting(c));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_WAIT);
	assert_int_equal(deliver_client_ext(c), 0);
	const struct deliver_reply *e = NULL;
	assert_int_equal(deliver_client_error(c, &e), DELIVER_FAIL_NONE);
	assert_int_equal(deliver_client_error(c, NULL), DELIVER_FAIL_NONE);

	/* In a transaction: no second MAIL, no QUIT. */
	const char *pre = GREETING "250 mx\r\n";
	deliver_client_input(c, pre, strlen(pre));
	/* Greeting and EHLO reply in one read: straight to READY. */
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	buf_reset(&out);
	deliver_client_send(c, &m1, &out);
	assert_int_equal(out.len, strlen(MAIL));
	deliver_client_send(c, &m3, &out);
	deliver_client_quit(c, &out);
	deliver_client_body_end(c, &out);
	assert_int_equal(out.len, strlen(MAIL));

	/* After a failure input is ignored and every step says FAILED. */
	deliver_client_input(c, "hello\r\n", 7);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_FAILED);
	assert_int_equal(deliver_client_input(c, "250 ok\r\n", 8), 0);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_FAILED);
	assert_false(deliver_client_waiting(c));
	deliver_client_free(c);
	deliver_client_free(NULL);
	buf_free(&out);
}

static void test_default_helo(void **state)
{
	(void)state;
	struct deliver_client_opts o = {0};
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX);
	deliver_client_input(c, GREETING, strlen(GREETING));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_WAIT);
	assert_int_equal(out.len, strlen("EHLO localhost\r\n"));
	assert_memory_equal(out.data, "EHLO localhost\r\n", out.len);
	buf_free(&out);
	deliver_client_free(c);
}

/* ---- reading replies ------------------------------------------------------ */

struct status_case {
	int code;
	const char *text, *status;
};

static const struct status_case status_cases[] = {
	{250, "250 2.1.5 Ok", "2.1.5"},
	{550, "550 5.1.1 <x@y>: Recipient address rejected", "5.1.1"},
	{452, "452 4.5.3 Error: too many recipients", "4.5.3"},
	{552, "552 5.3.4", "5.3.4"},
	{550, "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"},
	{550, "550 5.123.456 x", "5.123.456"},
	{550, "550 5.1.1 The email account 5.1.1 exist.", "5.1.1"},
	/* None: from the basic code. */
	{250, "250 Ok", "2.0.0"},
	{450, "450 mailbox busy", "4.0.0"},
	{550, "550 no such user", "5.0.0"},
	{550, "550", "5.0.0"},
	{250, "", "2.0.0"},
	/* The class must match the reply's. */
	{550, "550 4.1.1 mismatch", "5.0.0"},
	{451, "451 5.0.0 mismatch", "4.0.0"},
	{250, "250 5.0.0 odd", "2.0.0"},
	/* Not an enhanced code. */
	{550, "550 5.1234.1 x", "5.0.0"},
	{550, "550 5.1.1234 x", "5.0.0"},
	{550, "550 5.1.1x", "5.0.0"},
	{550, "550 5.1", "5.0.0"},
	{550, "550 5..1 x", "5.0.0"},
	{550, "550 3.1.1 x", "5.0.0"},
	{550, "550 5.-1.1 x", "5.0.0"},
	{550, "550 5.+1.1 x", "5.0.0"},
	{550, "550  5.1.1 double space", "5.0.0"},
	{550, "550 5. 1.1 x", "5.0.0"},
	{550, "550-5.1.1 raw continuation", "5.0.0"},
	/* 3xx is no final status: a temporary one. */
	{354, "354 End data with <CR><LF>.<CR><LF>", "4.0.0"},
	{334, "334 VXNlcm5hbWU6", "4.0.0"},
	{354, "354 2.0.0 go", "4.0.0"},
};

static void test_reply_status(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof status_cases / sizeof *status_cases; i++) {
		const struct status_case *k = &status_cases[i];
		struct deliver_reply r;
		deliver_reply_make(&r, k->code, k->text);
		char st[16];
		memset(st, 'Z', sizeof st);
		deliver_reply_status(&r, st);
		if (strcmp(st, k->status) != 0)
			fail_msg("'%s': status '%s', expected '%s'", k->text, st,
			         k->status);
	}
}

/* The parser hands codes over as numbers: the enhanced code of a
 * multi-line refusal, of a pipelined RCPT refusal, and none when the class
 * does not match. */
static void test_reply_numbers(void **state)
{
	(void)state;
	struct deliver_client_opts o = {.helo = "relay.test"};
	struct deliver_client *c = deliver_client_new(&o);
	struct buf out = BUF_INIT(SIZE_MAX);
	const char *in = "220 mx.test\r\n";
	deliver_client_input(c, in, strlen(in));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_WAIT);
	in = "250-mx.test\r\n250 PIPELINING\r\n";
	deliver_client_input(c, in, strlen(in));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	static const char *const rcpt[] = {"a@x.test", "b@x.test", "c@x.test"};
	struct deliver_client_msg m = {.sender = "s@y.test", .nrcpt = 3,
	                               .rcpt = rcpt};
	deliver_client_send(c, &m, &out);
	/* Pipelined: waiting for MAIL's reply first (5 minutes, scaled). */
	assert_string_equal(deliver_client_state_name(c), "mail");
	assert_int_equal(deliver_client_timeout(c, 10000), 10000);
	assert_string_equal(deliver_client_state_desc(c),
	                    "while waiting for the reply to MAIL FROM");
	in = "250 2.1.0 ok\r\n";
	deliver_client_input(c, in, strlen(in));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_WAIT);
	assert_string_equal(deliver_client_state_desc(c),
	                    "while waiting for the reply to RCPT TO");
	in = "550-5.1.1 no such\r\n550 5.1.1 user\r\n"
	     "452 5.2.2 class mismatch\r\n250 2.1.5 ok\r\n";
	deliver_client_input(c, in, strlen(in));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_WAIT);
	/* DATA initiation: 2 minutes of 5, scaled from a 10 s base. */
	assert_string_equal(deliver_client_state_name(c), "data");
	assert_int_equal(deliver_client_timeout(c, 10000), 4000);
	in = "554 5.5.1 no valid recipients\r\n";
	deliver_client_input(c, in, strlen(in));
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_DONE);
	const struct deliver_reply *r = deliver_client_result(c, 0);
	assert_int_equal(r->code, 550);
	assert_int_equal(r->cls, 5);
	assert_int_equal(r->subject, 1);
	assert_int_equal(r->detail, 1);
	r = deliver_client_result(c, 1);
	assert_int_equal(r->code, 452);
	assert_int_equal(r->cls, 0);   /* 5.2.2 in a 4xx: not taken */
	char st[16];
	deliver_reply_status(r, st);
	assert_string_equal(st, "4.0.0");
	r = deliver_client_result(c, 2);   /* accepted, then DATA refused */
	assert_int_equal(r->code, 554);
	assert_int_equal(r->cls, 5);
	assert_int_equal(r->subject, 5);
	assert_int_equal(r->detail, 1);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_READY);
	assert_int_equal(deliver_client_timeout(c, 10000), 0);
	/* A local refusal carries the table's numbers. */
	struct deliver_client_msg u = {.sender = "s@y.test", .nrcpt = 1,
	                               .rcpt = rcpt, .smtputf8 = true};
	deliver_client_send(c, &u, &out);
	assert_int_equal(deliver_client_step(c, &out), DELIVER_CL_DONE);
	r = deliver_client_result(c, 0);
	assert_int_equal(r->code, 553);
	assert_int_equal(r->cls, 5);
	assert_int_equal(r->subject, 6);
	assert_int_equal(r->detail, 7);
	buf_free(&out);
	deliver_client_free(c);
}

struct throttle_case {
	int code;
	const char *text;
	bool throttle;
};

/* Whether a reply throttles its destination: the one reply table
 * (deliver_policy.h, through deliver_tlspol_throttle), for the smarthost
 * as for MX hosts. */
static const struct throttle_case throttle_cases[] = {
	{421, "421 4.7.0 mx.test Error: too many connections from 1.2.3.4", true},
	/* A 421 without words of a rate limit: the server closes; the
	 * session ends and the recipients wait (no throttle). */
	{421, "421 4.7.0 Try again later", false},
	{421, "421 4.3.2 Service shutting down", false},
	{421, "421 Service not available", false},
	/* 4.2.1: one mailbox receiving too fast defers that recipient
	 * only (issue 9 §3), whatever the words. */
	{450, "450 4.2.1 rate limit exceeded", false},
	{450, "450 rate limit", true},
	{450, "450 4.2.1 The user you are trying to contact is receiving mail "
	      "at a rate that prevents additional messages", false},
	{451, "451 4.3.0 Temporary failure", false},
	{451, "451 4.3.0 Error: queue file write error", false},
	/* Greylisting is no throttle (the old word list's bug). */
	{451, "451 4.7.1 Greylisted, see https://example.test", false},
	{421, "421 4.7.0 greylisted, come back later", false},
	{451, "451 4.3.0 Ratelimit exceeded", true},
	{451, "451 4.3.0 RATE-LIMITED", true},
	/* 4.4.x (network) and 4.1.x (address) statuses name no limit on
	 * the sender, whatever the words. */
	{451, "451 4.4.2 Timeout, slow down", false},
	{450, "450 4.1.1 rate", false},
	{450, "450 Throttling in effect", true},
	{450, "450 4.2.0 Account throttled", true},
	/* Too many recipients: the rest in a new transaction. */
	{452, "452 4.5.3 Too many recipients", false},
	{452, "452 4.3.1 Insufficient system storage", false},
	{451, "451 4.3.0 Daily limit exceeded", true},
	/* "rate" inside another word is no rate limit. */
	{451, "451 4.3.0 Error generated by the content filter", false},
	{450, "450 4.2.0 Mailbox being migrated", false},
	{451, "451 4.3.0 Could not separate the parts", false},
	/* Not a 4xx. */
	{550, "550 5.7.1 rate limit exceeded", false},
	{554, "554 5.7.1 throttled", false},
	{250, "250 2.0.0 rate", false},
	{431, "431 4.7.0 too many", true},   /* any 4xx */
	{0, "rate limit", false},
};

static void test_throttle(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof throttle_cases / sizeof *throttle_cases;
	     i++) {
		const struct throttle_case *k = &throttle_cases[i];
		if (deliver_tlspol_throttle(k->text, strlen(k->text), NULL,
		                            NULL) != k->throttle)
			fail_msg("'%s': throttle should be %s", k->text,
			         k->throttle ? "true" : "false");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scripts),
		cmocka_unit_test(test_ehlo_keywords),
		cmocka_unit_test(test_ehlo_size),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_reply_line_bounds),
		cmocka_unit_test(test_reply_text_cut),
		cmocka_unit_test(test_reply_lines_bounds),
		cmocka_unit_test(test_many_replies_in_one_read),
		cmocka_unit_test(test_flood_during_body),
		cmocka_unit_test(test_dot_stuffing),
		cmocka_unit_test(test_calls_out_of_turn),
		cmocka_unit_test(test_default_helo),
		cmocka_unit_test(test_reply_status),
		cmocka_unit_test(test_reply_numbers),
		cmocka_unit_test(test_throttle),
	};
	return cmocka_run_group_tests_name("deliver_client", tests, NULL, NULL);
}
