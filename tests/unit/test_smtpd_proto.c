/*
 * tests/unit/test_smtpd_proto.c - The SMTP server core fed bytes: command
 * parsing, the state table, every error reply, pipelining, DATA and BDAT
 * into a memory sink, DSN parameters, STARTTLS (RFC 3207 and the
 * CVE-2011-0411 injection), AUTH PLAIN/LOGIN (RFC 4954: every reply
 * code, cancel, base64, TLS required, reset by STARTTLS), the relay
 * rule with a credential's restrictions, and the quota hook at MAIL and
 * a refused charge at commit. No sockets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_proto.h"

struct sink {
	struct buf body;
	int begin_err;      /* returned by begin */
	int write_err;      /* returned by write */
	int begins, aborts;
};

static int s_begin(void *ctx, struct smtpd_txn *t)
{
	struct sink *s = ctx;
	s->begins++;
	if (s->begin_err)
		return s->begin_err;
	snprintf(t->qid, sizeof t->qid, "0000000000000001");
	snprintf(t->date, sizeof t->date, "Sat, 21 Nov 2026 06:00:00 +0000");
	buf_reset(&s->body);
	return buf_appends(&s->body, "Received: test\r\n");
}

static int s_write(void *ctx, const uint8_t *p, size_t n)
{
	struct sink *s = ctx;
	if (s->write_err)
		return s->write_err;
	return buf_append(&s->body, p, n);
}

static void s_abort(void *ctx)
{
	struct sink *s = ctx;
	s->aborts++;
	buf_reset(&s->body);
}

static const struct smtpd_sink_ops ops = {s_begin, s_write, s_abort};
static const char *const scrub[] = {"Received", "X-Originating-IP"};

struct fixture {
	struct smtpd_proto_cfg cfg;
	struct sink sink;
	struct smtpd_proto *p;
	struct buf out;
	enum smtpd_req req;
};

static struct fixture *fx_mode(unsigned max_rcpt, uint64_t max_size,
                               unsigned max_bad, bool tls,
                               enum conf_listen_mode mode)
{
	struct fixture *f = calloc(1, sizeof *f);
	f->cfg = (struct smtpd_proto_cfg){
		.hostname = "relay.test", .sid = "t1",
		.max_message_size = max_size, .max_recipients = max_rcpt,
		.max_bad_commands = max_bad, .scrub = scrub, .nscrub = 2,
		.mode = mode, .tls_available = tls, .trusted = true,
	};
	buf_init(&f->sink.body, SIZE_MAX);
	buf_init(&f->out, SIZE_MAX);
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);
	return f;
}

static struct fixture *fx_new(unsigned max_rcpt, uint64_t max_size,
                              unsigned max_bad)
{
	return fx_mode(max_rcpt, max_size, max_bad, false, CONF_LISTEN_SMTP);
}

static struct fixture *fx(void)
{
	return fx_new(100, 1000000, 20);
}

/* A certificate is loaded: STARTTLS is offered. */
static struct fixture *fx_tls(void)
{
	return fx_mode(100, 1000000, 20, true, CONF_LISTEN_SUBMISSION);
}

static void fx_free(struct fixture *f)
{
	smtpd_proto_free(f->p);
	buf_free(&f->out);
	buf_free(&f->sink.body);
	free(f);
}

/* Feeds all of s (as one segment); returns bytes consumed. */
static size_t feed(struct fixture *f, const char *s)
{
	return smtpd_proto_feed(f->p, (const uint8_t *)s, strlen(s), &f->out,
	                        &f->req);
}

static size_t feedn(struct fixture *f, const char *s, size_t n)
{
	return smtpd_proto_feed(f->p, (const uint8_t *)s, n, &f->out, &f->req);
}

/* The output so far, NUL-terminated; then cleared. */
static char *take(struct fixture *f)
{
	static char s[65536];
	size_t n = f->out.len < sizeof s - 1 ? f->out.len : sizeof s - 1;
	if (n)
		memcpy(s, f->out.data, n);
	s[n] = '\0';
	buf_reset(&f->out);
	return s;
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

#define assert_has(hay, needle) do { \
	if (!strstr((hay), (needle))) \
		fail_msg("expected '%s' in:\n%s", (needle), (hay)); } while (0)
#define assert_lacks(hay, needle) do { \
	if (strstr((hay), (needle))) \
		fail_msg("unexpected '%s' in:\n%s", (needle), (hay)); } while (0)

static void start(struct fixture *f)
{
	feed(f, "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
	take(f);
}

/* ---- table of single-reply cases -------------------------------------- */

struct reply_case {
	const char *name;
	const char *setup;     /* fed first, output discarded */
	const char *input;
	const char *expect;    /* the last reply line starts with this */
};

static const struct reply_case reply_cases[] = {
	{"mail before helo", "", "MAIL FROM:<a@b>\r\n", "503 5.5.1"},
	{"rcpt before mail", "EHLO x\r\n", "RCPT TO:<a@b>\r\n", "503 5.5.1"},
	{"data before mail", "EHLO x\r\n", "DATA\r\n", "503 5.5.1"},
	{"data before rcpt", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "DATA\r\n", "503 5.5.1"},
	{"nested mail", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "MAIL FROM:<a@b>\r\n", "503 5.5.1"},
	{"unknown command", "EHLO x\r\n", "FOO bar\r\n", "500 5.5.1"},
	{"empty line", "EHLO x\r\n", "\r\n", "500 5.5.1"},
	{"ehlo without name", "", "EHLO\r\n", "501 5.5.4"},
	{"helo", "", "HELO x\r\n", "250 relay.test"},
	{"mail syntax", "EHLO x\r\n", "MAIL <a@b>\r\n", "501 5.5.4"},
	{"bad sender", "EHLO x\r\n", "MAIL FROM:<a@@b>\r\n", "501 5.1.7"},
	{"null sender", "EHLO x\r\n", "MAIL FROM:<>\r\n", "250 2.1.0"},
	{"bad rcpt", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<>\r\n", "501 5.1.3"},
	{"unknown mail param", "EHLO x\r\n", "MAIL FROM:<a@b> FOO=1\r\n", "555 5.5.4"},
	{"bad body param", "EHLO x\r\n", "MAIL FROM:<a@b> BODY=9BIT\r\n", "501 5.5.4"},
	{"size too big", "EHLO x\r\n", "MAIL FROM:<a@b> SIZE=1000001\r\n", "552 5.3.4"},
	{"size ok", "EHLO x\r\n", "MAIL FROM:<a@b> SIZE=1000000\r\n", "250 2.1.0"},
	{"utf8 without smtputf8", "EHLO x\r\n", "MAIL FROM:<j\xc3\xb6rg@b.test>\r\n", "553 5.6.7"},
	{"utf8 with smtputf8", "EHLO x\r\n", "MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\n", "250 2.1.0"},
	{"control char in sender", "EHLO x\r\n", "MAIL FROM:<a\x01b@c.test>\r\n", "501 5.1.7"},
	{"control char in rcpt", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<a\x7f@c.test>\r\n", "501 5.1.3"},
	{"utf8 rcpt without", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<j\xc3\xb6rg@b.test>\r\n", "553 5.6.7"},
	{"bad notify", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<a@b> NOTIFY=NEVER,DELAY\r\n", "501 5.5.4"},
	{"bad orcpt", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<a@b> ORCPT=rfc822\r\n", "501 5.5.4"},
	{"bad envid", "EHLO x\r\n", "MAIL FROM:<a@b> ENVID=a+zz\r\n", "501 5.5.4"},
	{"vrfy", "EHLO x\r\n", "VRFY a\r\n", "252 2.5.0"},
	{"expn", "EHLO x\r\n", "EXPN a\r\n", "502 5.5.1"},
	{"help", "", "HELP\r\n", "214 2.0.0"},
	{"noop", "", "NOOP\r\n", "250 2.0.0"},
	{"rset", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RSET\r\n", "250 2.0.0"},
	{"rcpt after rset", "EHLO x\r\nMAIL FROM:<a@b>\r\nRSET\r\n", "RCPT TO:<a@b>\r\n", "503 5.5.1"},
	{"lowercase verbs", "ehlo x\r\n", "mail from:<a@b>\r\n", "250 2.1.0"},
	{"bare LF command", "EHLO x\n", "NOOP\n", "250 2.0.0"},
	{"starttls unavailable", "EHLO x\r\n", "STARTTLS\r\n", "454 4.7.0"},
	{"data with argument", "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", "DATA x\r\n", "501 5.5.4"},
	{"bdat before rcpt", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "BDAT 0\r\n", "503 5.5.1"},
	{"data after bdat", "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nx", "DATA\r\n", "503 5.5.1"},
	{"mail after bdat", "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nx", "MAIL FROM:<a@b>\r\n", "503 5.5.1"},
	{"postmaster", "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<Postmaster>\r\n", "250 2.1.5"},
};

static const char *last_line(const char *s)
{
	size_t n = strlen(s);
	if (n >= 2)
		n -= 2;
	while (n > 0 && s[n - 1] != '\n')
		n--;
	return s + n;
}

static void test_reply_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof reply_cases / sizeof *reply_cases; i++) {
		const struct reply_case *c = &reply_cases[i];
		struct fixture *f = fx();
		feed(f, c->setup);
		take(f);
		feed(f, c->input);
		const char *out = take(f);
		if (strncmp(last_line(out), c->expect, strlen(c->expect)) != 0)
			fail_msg("case '%s': expected '%s', got '%s'", c->name,
			         c->expect, out);
		fx_free(f);
	}
}

/* ---- scenarios ------------------------------------------------------------ */

static void test_happy_path(void **state)
{
	(void)state;
	struct fixture *f = fx();
	smtpd_proto_greet(f->p, &f->out);
	assert_has(take(f), "220 relay.test");
	feed(f, "EHLO client.test\r\n");
	char *o = take(f);
	assert_has(o, "250-relay.test\r\n");
	assert_has(o, "250-PIPELINING\r\n");
	assert_has(o, "250-SIZE 1000000\r\n");
	assert_has(o, "250-8BITMIME\r\n");
	assert_has(o, "250-ENHANCEDSTATUSCODES\r\n");
	assert_has(o, "250-SMTPUTF8\r\n");
	assert_has(o, "250-CHUNKING\r\n");
	assert_has(o, "250 DSN\r\n");
	feed(f, "MAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "250 2.1.0");
	feed(f, "RCPT TO:<c@d.test>\r\n");
	assert_has(take(f), "250 2.1.5");
	feed(f, "DATA\r\n");
	assert_has(take(f), "354 ");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_DATA);
	const char *msg = "Subject: hi\r\nReceived: from secret [10.1.2.3]\r\n"
	                  "\r\n..dot\r\nbody\r\n.\r\n";
	assert_int_equal(feed(f, msg), strlen(msg));
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	assert_string_equal(take(f), "");
	/* Nothing is consumed while the commit is pending. */
	assert_int_equal(feed(f, "NOOP\r\n"), 0);
	smtpd_proto_done(f->p, 0, &f->out);
	assert_has(take(f), "250 2.0.0 Ok: queued as 0000000000000001");
	char body[512];
	snprintf(body, sizeof body, "%.*s", (int)f->sink.body.len,
	         (char *)f->sink.body.data);
	/* The scrubbed Received: is replaced where it stood by a line naming
	 * only relayd (issue 9 §3): the hop still counts downstream. */
	assert_string_equal(body,
	        "Received: test\r\nSubject: hi\r\n"
	        "Received: by relay.test (relayd: earlier hop, details "
	        "removed); Sat, 21 Nov 2026 06:00:00 +0000\r\n"
	        "Message-ID: <0000000000000001@relay.test>\r\n"
	        "Date: Sat, 21 Nov 2026 06:00:00 +0000\r\n"
	        "\r\n.dot\r\nbody\r\n");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	fx_free(f);
}

static void test_pipelining(void **state)
{
	(void)state;
	struct fixture *f = fx();
	char in[4096] = "EHLO x\r\nMAIL FROM:<a@b>\r\n";
	for (int i = 0; i < 20; i++) {
		char r[64];
		snprintf(r, sizeof r, "RCPT TO:<r%d@d.test>\r\n", i);
		strcat(in, r);
	}
	strcat(in, "DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n");
	size_t n = feed(f, in);
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	char *o = take(f);
	assert_int_equal(count_lines(o), 8 + 1 + 20 + 1);
	const struct smtpd_txn *t = smtpd_proto_txn(f->p);
	assert_int_equal(t->nrcpt, 20);
	smtpd_proto_done(f->p, 0, &f->out);
	feed(f, in + n);
	assert_int_equal(f->req, SMTPD_REQ_CLOSE);
	o = take(f);
	assert_has(o, "250 2.0.0 Ok: queued");
	assert_has(o, "250 2.0.0 Ok\r\n221 2.0.0");
	fx_free(f);
}

static void test_too_many_rcpt(void **state)
{
	(void)state;
	struct fixture *f = fx_new(2, 1000, 20);
	feed(f, "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\n"
	        "RCPT TO:<3@d>\r\n");
	assert_has(take(f), "250 2.1.5 Recipient ok\r\n452 4.5.3");
	assert_int_equal(smtpd_proto_txn(f->p)->nrcpt, 2);
	fx_free(f);
}

static void test_line_too_long(void **state)
{
	(void)state;
	struct fixture *f = fx();
	feed(f, "EHLO x\r\n");
	take(f);
	static char big[3 * 2048];
	memset(big, 'A', sizeof big);
	/* Longer than the limit with no LF yet: refused, rest discarded. */
	assert_int_equal(feedn(f, big, sizeof big), sizeof big);
	assert_has(take(f), "500 5.5.2");
	feed(f, "AAAA\r\nNOOP\r\n");
	char *o = take(f);
	assert_string_equal(o, "250 2.0.0 Ok\r\n");
	/* A partial line under the limit waits for more. */
	assert_int_equal(feed(f, "NOO"), 0);
	fx_free(f);
}

static void test_bad_command_limit(void **state)
{
	(void)state;
	struct fixture *f = fx_new(100, 1000, 3);
	feed(f, "X1\r\nX2\r\nX3\r\nNOOP\r\n");
	char *o = take(f);
	assert_int_equal(f->req, SMTPD_REQ_CLOSE);
	assert_has(o, "500 5.5.1");
	assert_has(o, "421 4.7.0");
	assert_lacks(o, "250 2.0.0");
	fx_free(f);
}

static void test_message_too_big(void **state)
{
	(void)state;
	struct fixture *f = fx_new(100, 50, 20);
	start(f);
	feed(f, "DATA\r\n");
	take(f);
	feed(f, "Subject: x\r\n\r\n0123456789012345678901234567890123456789"
	        "0123456789\r\nmore\r\n.\r\nNOOP\r\n");
	char *o = take(f);
	assert_has(o, "552 5.3.4");
	assert_has(o, "250 2.0.0 Ok\r\n");
	assert_int_equal(f->sink.aborts, 1);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	fx_free(f);
}

static void test_bare_lf_rejected(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	/* \n.\n must not end the message, and the MAIL after it must not run
	 * as a command (SMTP smuggling). */
	feed(f, "DATA\r\nSubject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n"
	        "RCPT TO:<v@x>\r\nDATA\r\nevil\r\n.\r\n");
	char *o = take(f);
	assert_int_equal(f->req, SMTPD_REQ_NONE);
	assert_has(o, "354 ");
	assert_has(o, "554 5.6.0");
	assert_lacks(o, "250 2.1.0");
	assert_int_equal(f->sink.aborts, 1);
	fx_free(f);
}

static void test_nul_rejected(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	feed(f, "DATA\r\n");
	take(f);
	feedn(f, "a\0b\r\n.\r\n", 8);
	assert_has(take(f), "554 5.6.0 Message contains NUL");
	fx_free(f);
}

static void test_storage_errors(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	f->sink.begin_err = -ENOSPC;
	feed(f, "DATA\r\n");
	assert_has(take(f), "452 4.3.1");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	fx_free(f);

	f = fx();
	start(f);
	f->sink.write_err = -EIO;
	feed(f, "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
	assert_has(take(f), "451 4.3.0");
	fx_free(f);

	f = fx();
	start(f);
	feed(f, "DATA\r\nx\r\n.\r\n");
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	smtpd_proto_done(f->p, -ENOSPC, &f->out);
	assert_has(take(f), "452 4.3.1");
	fx_free(f);
}

static void test_bdat(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	feed(f, "BDAT 14\r\nSubject: x\r\n\r\nBDAT 6 LAST\r\nbody\r\n");
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	assert_has(take(f), "250 2.0.0 14 octets received\r\n");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_has(take(f), "queued as");
	char body[512];
	snprintf(body, sizeof body, "%.*s", (int)f->sink.body.len,
	         (char *)f->sink.body.data);
	assert_has(body, "Subject: x\r\nMessage-ID: <");
	assert_has(body, "\r\n\r\nbody\r\n");
	fx_free(f);
}

static void test_bdat_rejected_chunk_is_consumed(void **state)
{
	(void)state;
	struct fixture *f = fx();
	feed(f, "EHLO x\r\n");
	take(f);
	/* No transaction: the 6 octets "QUIT\r\n" are chunk data, not QUIT. */
	feed(f, "BDAT 6\r\nQUIT\r\nNOOP\r\n");
	char *o = take(f);
	assert_int_equal(f->req, SMTPD_REQ_NONE);
	assert_has(o, "503 5.5.1");
	assert_has(o, "250 2.0.0 Ok\r\n");
	assert_lacks(o, "221");
	fx_free(f);
}

static void test_bdat_failed_chunks_not_counted(void **state)
{
	(void)state;
	/* 552 on the first of many pipelined chunks: every later chunk gets
	 * the same 552, none counts toward max_bad_commands (3 here), and
	 * after LAST the session is ready for a new transaction. */
	struct fixture *f = fx_new(100, 10, 3);
	start(f);
	feed(f, "BDAT 20\r\n01234567890123456789BDAT 2\r\nabBDAT 2\r\nab"
	        "BDAT 2\r\nabBDAT 2\r\nabBDAT 2 LAST\r\nabNOOP\r\n"
	        "MAIL FROM:<x@y>\r\n");
	char *o = take(f);
	assert_int_equal(f->req, SMTPD_REQ_NONE);
	int n552 = 0;
	for (char *q = o; (q = strstr(q, "552 5.3.4")); q++)
		n552++;
	assert_int_equal(n552, 6);
	assert_lacks(o, "421");
	assert_has(o, "250 2.0.0 Ok\r\n250 2.1.0");
	fx_free(f);
}

static void test_bdat_bad_syntax_closes(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	feed(f, "BDAT x\r\nNOOP\r\n");
	assert_int_equal(f->req, SMTPD_REQ_CLOSE);
	assert_has(take(f), "501 5.5.4");
	fx_free(f);
}

static void test_dsn_params(void **state)
{
	(void)state;
	struct fixture *f = fx();
	feed(f, "EHLO x\r\nMAIL FROM:<a@b> RET=HDRS ENVID=QQ+2B1 BODY=8BITMIME\r\n"
	        "RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40d\r\n"
	        "RCPT TO:<e@f> NOTIFY=NEVER\r\n");
	char *o = take(f);
	assert_int_equal(count_lines(o), 8 + 3);
	assert_lacks(o, " 5.");
	const struct smtpd_txn *t = smtpd_proto_txn(f->p);
	assert_true(t->flags & QUEUE_F_RET_HDRS);
	assert_true(t->flags & QUEUE_F_8BITMIME);
	assert_string_equal(t->envid, "QQ+2B1");
	assert_int_equal(t->nrcpt, 2);
	assert_int_equal(t->rcpt[0].notify, QUEUE_NOTIFY_SUCCESS | QUEUE_NOTIFY_FAILURE);
	assert_string_equal(t->rcpt[0].orcpt, "rfc822;c+40d");
	assert_int_equal(t->rcpt[1].notify, QUEUE_NOTIFY_NEVER);
	assert_null(t->rcpt[1].orcpt);
	fx_free(f);
}

static void test_timeout_and_shutdown(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	feed(f, "DATA\r\npartial");
	take(f);
	assert_int_equal(smtpd_proto_timeout(f->p, &f->out), SMTPD_REQ_CLOSE);
	assert_has(take(f), "421 4.4.2");
	assert_int_equal(f->sink.aborts, 1);
	assert_int_equal(feed(f, "NOOP\r\n"), 0);
	fx_free(f);

	f = fx();
	assert_int_equal(smtpd_proto_shutdown(f->p, &f->out), SMTPD_REQ_CLOSE);
	assert_has(take(f), "421 4.3.2");
	fx_free(f);
}

/* A client that pipelines commands and never reads: each call writes at
 * most SMTPD_OUT_BATCH bytes of replies (plus the one that crossed it),
 * consumes only the commands it answered, and a full `out` consumes
 * nothing; every command is still answered once the shell sends out. */
static void test_out_batch(void **state)
{
	(void)state;
	struct fixture *f = fx();
	static char in[2000 * 8 + 1];
	in[0] = '\0';
	for (int i = 0; i < 2000; i++)
		strcat(in, "EHLO x\r\n");
	size_t n = strlen(in), off = 0;
	int calls = 0, ehlo = 0;
	while (off < n) {
		size_t k = feedn(f, in + off, n - off);
		assert_int_equal(f->req, SMTPD_REQ_NONE);
		assert_true(k > 0);
		assert_int_equal(k % 8, 0);          /* whole commands only */
		assert_true(f->out.len >= SMTPD_OUT_BATCH || off + k == n);
		assert_true(f->out.len < SMTPD_OUT_BATCH + 1024);
		/* Not sent yet: nothing more is taken. */
		if (off + k < n)
			assert_int_equal(feedn(f, in + off + k, n - off - k), 0);
		off += k;
		calls++;
		for (char *o = take(f); (o = strstr(o, "250-relay.test")); o++)
			ehlo++;
	}
	assert_int_equal(ehlo, 2000);
	assert_true(calls > 2000 * 100 / SMTPD_OUT_BATCH);
	fx_free(f);
}

/* The core says when it is inside a line the shell no longer holds (an
 * over-long one being skipped), so the command deadline keeps running. */
static void test_in_line(void **state)
{
	(void)state;
	struct fixture *f = fx();
	feed(f, "EHLO x\r\n");
	take(f);
	assert_false(smtpd_proto_in_line(f->p));
	assert_int_equal(feed(f, "NOO"), 0);         /* the shell holds it */
	assert_false(smtpd_proto_in_line(f->p));
	static char big[2 * 2048];
	memset(big, 'A', sizeof big);
	assert_int_equal(feedn(f, big, sizeof big), sizeof big);
	assert_has(take(f), "500 5.5.2");
	assert_true(smtpd_proto_in_line(f->p));
	assert_int_equal(feedn(f, big, sizeof big), sizeof big);
	assert_string_equal(take(f), "");
	assert_true(smtpd_proto_in_line(f->p));
	feed(f, "A\r\n");
	assert_false(smtpd_proto_in_line(f->p));
	/* Closing while skipping: no line is waited for any more. */
	feedn(f, big, sizeof big);
	take(f);
	assert_true(smtpd_proto_in_line(f->p));
	assert_int_equal(smtpd_proto_close(f->p, SMTP_R_LIFETIME, &f->out),
	                 SMTPD_REQ_CLOSE);
	assert_false(smtpd_proto_in_line(f->p));
	assert_string_equal(take(f), "421 4.4.2 Session lasted too long, "
	                             "closing connection\r\n");
	fx_free(f);
}

/* The shell's other 421s: a data transfer too slow, a session too old;
 * the body in progress is aborted, nothing more is read or said. */
static void test_close_replies(void **state)
{
	(void)state;
	struct fixture *f = fx();
	start(f);
	feed(f, "DATA\r\nSubject: slow\r\n");
	take(f);
	assert_int_equal(smtpd_proto_close(f->p, SMTP_R_DATA_SLOW, &f->out),
	                 SMTPD_REQ_CLOSE);
	assert_string_equal(take(f), "421 4.4.2 Data arriving too slowly, "
	                             "closing connection\r\n");
	assert_int_equal(f->sink.aborts, 1);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_CLOSED);
	assert_int_equal(feed(f, "NOOP\r\n"), 0);
	smtpd_proto_close(f->p, SMTP_R_TIMEOUT, &f->out);
	assert_string_equal(take(f), "");
	fx_free(f);
}

static void test_byte_by_byte(void **state)
{
	(void)state;
	/* A client that trickles one byte per segment gets the same replies. */
	const char *in = "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
	                 "Subject: y\r\n\r\nz\r\n.\r\n";
	struct fixture *f = fx();
	struct buf pend = BUF_INIT(SIZE_MAX);
	for (const char *c = in; *c; c++) {
		buf_append(&pend, c, 1);
		size_t k = feedn(f, (const char *)pend.data, pend.len);
		buf_consume(&pend, k);
	}
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	assert_int_equal(pend.len, 0);
	char *o = take(f);
	assert_has(o, "354 ");
	buf_free(&pend);
	fx_free(f);
}


/* ---- STARTTLS (RFC 3207) -------------------------------------------------- */

/* Feeds what the client sent up to and including STARTTLS; checks the
 * request and that exactly the 220 came out. */
static void starttls_ok(struct fixture *f, const char *in)
{
	assert_int_equal(feed(f, in), strlen(in));
	assert_int_equal(f->req, SMTPD_REQ_STARTTLS);
	assert_string_equal(take(f), "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_STARTTLS);
}

struct tls_case {
	const char *name;
	bool tls;              /* a certificate is loaded */
	const char *setup;
	const char *input;
	const char *expect;    /* the whole output */
};

static const struct tls_case tls_cases[] = {
	{"no certificate", false, "EHLO x\r\n", "STARTTLS\r\n",
	 "454 4.7.0 TLS not available due to temporary reason\r\n"},
	{"with an argument", true, "EHLO x\r\n", "STARTTLS now\r\n",
	 "501 5.5.4 Syntax: STARTTLS\r\n"},
	{"before EHLO", true, "", "STARTTLS\r\n",
	 "503 5.5.1 Error: send HELO/EHLO first\r\n"},
	{"after MAIL", true, "EHLO x\r\nMAIL FROM:<a@b>\r\n", "STARTTLS\r\n",
	 "503 5.5.1 Error: STARTTLS not allowed inside a mail transaction\r\n"},
	{"after RCPT", true, "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
	 "STARTTLS\r\n",
	 "503 5.5.1 Error: STARTTLS not allowed inside a mail transaction\r\n"},
	{"between BDAT chunks", true,
	 "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nx",
	 "STARTTLS\r\n", "503 5.5.1 Error: only BDAT, RSET, NOOP or QUIT "
	 "during a BDAT transfer\r\n"},
	{"after RSET", true, "EHLO x\r\nMAIL FROM:<a@b>\r\nRSET\r\n",
	 "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n"},
	{"after HELO", true, "HELO x\r\n", "starttls\r\n",
	 "220 2.0.0 Ready to start TLS\r\n"},
};

static void test_starttls_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof tls_cases / sizeof *tls_cases; i++) {
		const struct tls_case *c = &tls_cases[i];
		struct fixture *f = fx_mode(100, 1000000, 20, c->tls,
		                            CONF_LISTEN_SMTP);
		feed(f, c->setup);
		take(f);
		feed(f, c->input);
		const char *out = take(f);
		if (strcmp(out, c->expect) != 0)
			fail_msg("case '%s': expected '%s', got '%s'", c->name,
			         c->expect, out);
		bool started = strncmp(c->expect, "220", 3) == 0;
		assert_int_equal(f->req, started ? SMTPD_REQ_STARTTLS
		                                 : SMTPD_REQ_NONE);
		fx_free(f);
	}
}

static void test_starttls_advertised(void **state)
{
	(void)state;
	/* Only with a certificate, and only outside TLS. */
	struct fixture *f = fx();
	feed(f, "EHLO x\r\n");
	assert_lacks(take(f), "STARTTLS");
	fx_free(f);

	f = fx_tls();
	feed(f, "EHLO x\r\n");
	char *o = take(f);
	assert_has(o, "250-STARTTLS\r\n");
	assert_has(o, "250 DSN\r\n");
	assert_false(smtpd_proto_tls(f->p));
	assert_string_equal(smtpd_proto_with(f->p), "ESMTP");
	starttls_ok(f, "STARTTLS\r\n");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_string_equal(take(f), "");
	assert_true(smtpd_proto_tls(f->p));
	feed(f, "EHLO x\r\n");
	o = take(f);
	assert_has(o, "250-relay.test\r\n");
	assert_lacks(o, "STARTTLS");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPS");
	/* Not offered, and refused, once in TLS. */
	feed(f, "STARTTLS\r\n");
	assert_string_equal(take(f), "503 5.5.1 Error: TLS already active\r\n");
	assert_int_equal(f->req, SMTPD_REQ_NONE);
	assert_int_equal(smtpd_proto_mode(f->p), CONF_LISTEN_SUBMISSION);
	fx_free(f);
}

static void test_starttls_resets_session(void **state)
{
	(void)state;
	struct fixture *f = fx_tls();
	feed(f, "EHLO before.tls\r\n");
	take(f);
	starttls_ok(f, "STARTTLS\r\n");
	/* Nothing is consumed while the handshake runs. */
	assert_int_equal(feed(f, "NOOP\r\n"), 0);
	assert_string_equal(take(f), "");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_string_equal(take(f), "");
	/* RFC 3207 §4.2: the EHLO from before TLS is forgotten. */
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_INIT);
	assert_string_equal(smtpd_proto_helo(f->p), "");
	feed(f, "MAIL FROM:<a@b>\r\n");
	assert_string_equal(take(f), "503 5.5.1 Error: send HELO/EHLO first\r\n");
	feed(f, "EHLO after.tls\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
	        "DATA\r\nSubject: x\r\n\r\ny\r\n.\r\n");
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	assert_string_equal(smtpd_proto_helo(f->p), "after.tls");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_has(take(f), "250 2.0.0 Ok: queued as");
	fx_free(f);
}

static void test_starttls_pipelined_input_discarded(void **state)
{
	(void)state;
	/* CVE-2011-0411: a man in the middle appends a command to the
	 * client's STARTTLS; it must never run inside TLS. */
	static const char *const tails[] = {
		"MAIL FROM:<a@b>\r\n",
		"RSET\r\n",
		"EHLO evil\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\n"
		"evil\r\n.\r\n",
		"QUIT\r\n",
		"partial line without end",
	};
	for (size_t i = 0; i < sizeof tails / sizeof *tails; i++) {
		struct fixture *f = fx_tls();
		feed(f, "EHLO x\r\n");
		take(f);
		char in[512];
		snprintf(in, sizeof in, "STARTTLS\r\n%s", tails[i]);
		/* Everything is consumed; only the 220 comes out. */
		starttls_ok(f, in);
		smtpd_proto_done(f->p, 0, &f->out);
		assert_string_equal(take(f), "");
		assert_int_equal(f->req, SMTPD_REQ_STARTTLS);
		assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_INIT);
		assert_null(smtpd_proto_txn(f->p)->sender);
		assert_string_equal(smtpd_proto_helo(f->p), "");
		assert_int_equal(f->sink.begins, 0);
		/* The first reply inside TLS answers the client's own EHLO. */
		feed(f, "EHLO x\r\n");
		assert_int_equal(strncmp(take(f), "250-relay.test\r\n", 16), 0);
		fx_free(f);
	}

	/* The same with the STARTTLS line split across reads: what follows
	 * its end in the read that completes it is still dropped. */
	struct fixture *f = fx_tls();
	feed(f, "EHLO x\r\n");
	take(f);
	assert_int_equal(feed(f, "STARTT"), 0);
	starttls_ok(f, "STARTTLS\r\nRSET\r\n");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_string_equal(take(f), "");
	fx_free(f);

	/* Pipelined before STARTTLS, answered in plaintext; after, dropped. */
	f = fx_tls();
	const char *in = "EHLO x\r\nNOOP\r\nSTARTTLS\r\nNOOP\r\n";
	assert_int_equal(feed(f, in), strlen(in));
	assert_int_equal(f->req, SMTPD_REQ_STARTTLS);
	char *o = take(f);
	assert_has(o, "250 2.0.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(count_lines(o), 9 + 1 + 1);
	fx_free(f);
}

static void test_starttls_handshake_failed(void **state)
{
	(void)state;
	struct fixture *f = fx_tls();
	feed(f, "EHLO x\r\n");
	take(f);
	starttls_ok(f, "STARTTLS\r\n");
	smtpd_proto_done(f->p, -EPROTO, &f->out);
	assert_string_equal(take(f), "");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_CLOSED);
	assert_false(smtpd_proto_tls(f->p));
	assert_int_equal(feed(f, "EHLO x\r\n"), 0);
	fx_free(f);

	/* Timed out during the handshake: closed (the shell says nothing). */
	f = fx_tls();
	feed(f, "EHLO x\r\n");
	take(f);
	starttls_ok(f, "STARTTLS\r\n");
	assert_int_equal(smtpd_proto_timeout(f->p, &f->out), SMTPD_REQ_CLOSE);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_CLOSED);
	fx_free(f);
}

static void test_smtps_session(void **state)
{
	(void)state;
	/* Implicit TLS: in TLS from the first command, STARTTLS is neither
	 * offered nor accepted, and Received says ESMTPS. */
	struct fixture *f = fx_mode(100, 1000000, 20, true, CONF_LISTEN_SMTPS);
	assert_true(smtpd_proto_tls(f->p));
	assert_int_equal(smtpd_proto_mode(f->p), CONF_LISTEN_SMTPS);
	feed(f, "EHLO x\r\n");
	assert_lacks(take(f), "STARTTLS");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPS");
	feed(f, "STARTTLS\r\n");
	assert_string_equal(take(f), "503 5.5.1 Error: TLS already active\r\n");
	feed(f, "HELO x\r\n");
	take(f);
	assert_string_equal(smtpd_proto_with(f->p), "SMTP");
	fx_free(f);
}

/* ---- AUTH (RFC 4954) and the relay rule ---------------------------------- */

/* Base64 of n bytes, for building responses. */
static const char *b64(const void *data, size_t n)
{
	static char out[4][512];
	static int k;
	static const char al[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *o = out[k++ % 4];
	const uint8_t *s = data;
	size_t j = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)s[i + 1] << 8;
		if (i + 2 < n)
			v |= s[i + 2];
		o[j++] = al[v >> 18 & 63];
		o[j++] = al[v >> 12 & 63];
		o[j++] = i + 1 < n ? al[v >> 6 & 63] : '=';
		o[j++] = i + 2 < n ? al[v & 63] : '=';
	}
	o[j] = '\0';
	return o;
}

#define B64S(s) b64((s), sizeof(s) - 1)

/* A session for AUTH: mode smtps starts in TLS. Not trusted unless said. */
static struct fixture *fx_auth(enum conf_listen_mode mode, bool plaintext,
                               bool trusted)
{
	struct fixture *f = calloc(1, sizeof *f);
	f->cfg = (struct smtpd_proto_cfg){
		.hostname = "relay.test", .sid = "t1",
		.max_message_size = 1000000, .max_recipients = 100,
		.max_bad_commands = 20, .scrub = scrub, .nscrub = 2,
		.mode = mode, .tls_available = true, .trusted = trusted,
		.auth_plaintext = plaintext, .auth_available = true,
	};
	buf_init(&f->sink.body, SIZE_MAX);
	buf_init(&f->out, SIZE_MAX);
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);
	return f;
}

/* Expects SMTPD_REQ_AUTH with this user and password, then answers. */
static void auth_expect(struct fixture *f, const char *user, const char *pw,
                        enum smtpd_auth_result res, const char *reply)
{
	assert_int_equal(f->req, SMTPD_REQ_AUTH);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_AUTH);
	assert_string_equal(take(f), "");
	const char *u;
	const void *p;
	size_t pl;
	smtpd_proto_auth_request(f->p, &u, &p, &pl);
	assert_string_equal(u, user);
	assert_int_equal(pl, strlen(pw));
	assert_memory_equal(p, pw, pl);
	/* Nothing is read while the password is being checked. */
	assert_int_equal(feed(f, "NOOP\r\n"), 0);
	smtpd_proto_done(f->p, res, &f->out);
	assert_string_equal(take(f), reply);
}

struct auth_case {
	const char *name;
	enum conf_listen_mode mode;
	bool plaintext, trusted;
	const char *setup;     /* fed first, output discarded */
	const char *input;
	const char *expect;    /* the whole output */
	enum smtpd_state st;   /* afterwards */
};

static const struct auth_case auth_cases[] = {
	{"unknown mechanism", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type\r\n",
	 SMTPD_ST_READY},
	{"no mechanism", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
	 SMTPD_ST_READY},
	{"two initial responses", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH PLAIN AA== AA==\r\n",
	 "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
	 SMTPD_ST_READY},
	{"before EHLO", CONF_LISTEN_SMTPS, false, false, "",
	 "AUTH PLAIN\r\n", "503 5.5.1 Error: send HELO/EHLO first\r\n",
	 SMTPD_ST_INIT},
	{"inside a transaction", CONF_LISTEN_SMTPS, false, true,
	 "EHLO x\r\nMAIL FROM:<a@b>\r\n", "AUTH PLAIN\r\n",
	 "503 5.5.1 Error: AUTH not allowed inside a mail transaction\r\n",
	 SMTPD_ST_MAIL},
	{"after RCPT", CONF_LISTEN_SMTPS, false, true,
	 "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", "AUTH LOGIN\r\n",
	 "503 5.5.1 Error: AUTH not allowed inside a mail transaction\r\n",
	 SMTPD_ST_RCPT},
	{"outside TLS", CONF_LISTEN_SUBMISSION, false, false, "EHLO x\r\n",
	 "AUTH PLAIN AHUAcA==\r\n",
	 "538 5.7.11 Encryption required for requested authentication "
	 "mechanism\r\n", SMTPD_ST_READY},
	{"outside TLS, LOGIN", CONF_LISTEN_SMTP, false, true, "EHLO x\r\n",
	 "AUTH LOGIN\r\n",
	 "538 5.7.11 Encryption required for requested authentication "
	 "mechanism\r\n", SMTPD_ST_READY},
	{"plaintext allowed", CONF_LISTEN_SMTP, true, false, "EHLO x\r\n",
	 "AUTH PLAIN\r\n", "334 \r\n", SMTPD_ST_AUTH_PLAIN},
	{"plain challenge", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "auth plain\r\n", "334 \r\n", SMTPD_ST_AUTH_PLAIN},
	{"login challenge", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n", SMTPD_ST_AUTH_USER},
	{"login initial response", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH LOGIN dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n", SMTPD_ST_AUTH_PASS},
	{"plain cancelled", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH PLAIN\r\n", "*\r\n",
	 "501 5.7.0 Authentication cancelled\r\n", SMTPD_ST_READY},
	{"login cancelled at user", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH LOGIN\r\n", "*\r\n",
	 "501 5.7.0 Authentication cancelled\r\n", SMTPD_ST_READY},
	{"login cancelled at password", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\n", "*\r\n",
	 "501 5.7.0 Authentication cancelled\r\n", SMTPD_ST_READY},
	{"bad base64 initial", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH PLAIN !!!!\r\n", "501 5.5.2 Cannot decode response\r\n",
	 SMTPD_ST_READY},
	{"bad base64 continuation", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH PLAIN\r\n", "AHUAcA\r\n",
	 "501 5.5.2 Cannot decode response\r\n", SMTPD_ST_READY},
	{"base64 padding inside", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH LOGIN\r\n", "dX=lcg==\r\n",
	 "501 5.5.2 Cannot decode response\r\n", SMTPD_ST_READY},
	{"base64 with a space", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH LOGIN\r\n", "dXNl cg==\r\n",
	 "501 5.5.2 Cannot decode response\r\n", SMTPD_ST_READY},
	{"plain without NULs", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH PLAIN dXNlcg==\r\n", "501 5.5.2 Cannot decode response\r\n",
	 SMTPD_ST_READY},
	{"plain empty user", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 "AUTH PLAIN AABw\r\n", "535 5.7.8 Authentication credentials invalid\r\n",
	 SMTPD_ST_READY},
	{"plain other authzid", CONF_LISTEN_SMTPS, false, false, "EHLO x\r\n",
	 /* "admin\0user\0pw" */
	 "AUTH PLAIN YWRtaW4AdXNlcgBwdw==\r\n",
	 "535 5.7.8 Authentication credentials invalid\r\n", SMTPD_ST_READY},
	{"plain empty initial response", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\n", "AUTH PLAIN =\r\n", "501 5.5.2 Cannot decode response\r\n",
	 SMTPD_ST_READY},
	{"login empty user", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\nAUTH LOGIN\r\n", "\r\n",
	 "535 5.7.8 Authentication credentials invalid\r\n", SMTPD_ST_READY},
	/* The relay rule. */
	{"untrusted rcpt", CONF_LISTEN_SMTP, false, false,
	 "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n",
	 "554 5.7.1 Relay access denied\r\n", SMTPD_ST_MAIL},
	{"untrusted mail on smtp", CONF_LISTEN_SMTP, false, false, "EHLO x\r\n",
	 "MAIL FROM:<a@b>\r\n", "250 2.1.0 Sender ok\r\n", SMTPD_ST_MAIL},
	{"untrusted mail on submission", CONF_LISTEN_SUBMISSION, false, false,
	 "EHLO x\r\n", "MAIL FROM:<a@b>\r\n",
	 "530 5.7.0 Authentication required\r\n", SMTPD_ST_READY},
	{"untrusted mail on smtps", CONF_LISTEN_SMTPS, false, false,
	 "EHLO x\r\n", "MAIL FROM:<a@b>\r\n",
	 "530 5.7.0 Authentication required\r\n", SMTPD_ST_READY},
	{"trusted mail on submission", CONF_LISTEN_SUBMISSION, false, true,
	 "EHLO x\r\n", "MAIL FROM:<a@b>\r\n", "250 2.1.0 Sender ok\r\n",
	 SMTPD_ST_MAIL},
	{"trusted rcpt", CONF_LISTEN_SMTP, false, true,
	 "EHLO x\r\nMAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n",
	 "250 2.1.5 Recipient ok\r\n", SMTPD_ST_RCPT},
};

static void test_auth_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof auth_cases / sizeof *auth_cases; i++) {
		const struct auth_case *c = &auth_cases[i];
		struct fixture *f = fx_auth(c->mode, c->plaintext, c->trusted);
		feed(f, c->setup);
		take(f);
		feed(f, c->input);
		const char *out = take(f);
		if (strcmp(out, c->expect) != 0)
			fail_msg("case '%s': expected '%s', got '%s'", c->name,
			         c->expect, out);
		if (smtpd_proto_state(f->p) != c->st)
			fail_msg("case '%s': state %s, want %s", c->name,
			         smtpd_state_names[smtpd_proto_state(f->p)],
			         smtpd_state_names[c->st]);
		assert_int_equal(f->req, SMTPD_REQ_NONE);
		assert_string_equal(smtpd_proto_auth_name(f->p), "");
		fx_free(f);
	}
}

static void test_auth_plain(void **state)
{
	(void)state;
	/* With an initial response (RFC 4954 §4). */
	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	feed(f, "EHLO x\r\n");
	assert_has(take(f), "250-AUTH PLAIN LOGIN\r\n");
	char line[256];
	snprintf(line, sizeof line, "AUTH PLAIN %s\r\nNOOP\r\n",
	         B64S("\0app\0s3cret pass"));
	size_t n = feed(f, line);
	/* Stops at the request: the NOOP waits for the answer. */
	assert_int_equal(n, strlen(line) - strlen("NOOP\r\n"));
	auth_expect(f, "app", "s3cret pass", SMTPD_AUTH_OK,
	            "235 2.7.0 Authentication successful\r\n");
	assert_string_equal(smtpd_proto_auth_name(f->p), "app");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPSA");
	/* RFC 4954 §4: no second AUTH. */
	feed(f, "AUTH PLAIN\r\n");
	assert_string_equal(take(f), "503 5.5.1 Error: already authenticated\r\n");
	/* Authenticated and untrusted: MAIL and RCPT pass; the txn knows. */
	feed(f, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
	assert_string_equal(take(f), "250 2.1.0 Sender ok\r\n"
	                             "250 2.1.5 Recipient ok\r\n");
	assert_string_equal(smtpd_proto_txn(f->p)->auth, "app");
	fx_free(f);

	/* Without: an empty 334, then the response; authzid = authcid. */
	f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	feed(f, "EHLO x\r\nAUTH PLAIN\r\n");
	assert_has(take(f), "334 \r\n");
	snprintf(line, sizeof line, "%s\r\n", B64S("app\0app\0pw"));
	feed(f, line);
	auth_expect(f, "app", "pw", SMTPD_AUTH_FAILED,
	            "535 5.7.8 Authentication credentials invalid\r\n");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	assert_string_equal(smtpd_proto_auth_name(f->p), "");
	/* A failure leaves AUTH open for another try; the password went. */
	const char *u;
	const void *p;
	size_t pl;
	smtpd_proto_auth_request(f->p, &u, &p, &pl);
	assert_int_equal(pl, 0);
	assert_string_equal(u, "");
	feed(f, "AUTH PLAIN\r\n");
	assert_string_equal(take(f), "334 \r\n");
	/* An empty password is a password (it just never verifies). */
	snprintf(line, sizeof line, "%s\r\n", B64S("\0app\0"));
	feed(f, line);
	auth_expect(f, "app", "", SMTPD_AUTH_TEMPFAIL,
	            "454 4.7.0 Temporary authentication failure\r\n");
	fx_free(f);
}

static void test_auth_login(void **state)
{
	(void)state;
	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	feed(f, "EHLO x\r\nAUTH LOGIN\r\n");
	assert_has(take(f), "334 VXNlcm5hbWU6\r\n");   /* Username: */
	char line[128];
	snprintf(line, sizeof line, "%s\r\n", B64S("shop"));
	feed(f, line);
	assert_string_equal(take(f), "334 UGFzc3dvcmQ6\r\n");   /* Password: */
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_AUTH_PASS);
	snprintf(line, sizeof line, "%s\r\n", B64S("pa:ss\0word"));
	feed(f, line);
	assert_int_equal(f->req, SMTPD_REQ_AUTH);
	const char *u;
	const void *p;
	size_t pl;
	smtpd_proto_auth_request(f->p, &u, &p, &pl);
	assert_string_equal(u, "shop");
	assert_int_equal(pl, 10);
	assert_memory_equal(p, "pa:ss\0word", 10);
	smtpd_proto_done(f->p, SMTPD_AUTH_OK, &f->out);
	assert_string_equal(take(f), "235 2.7.0 Authentication successful\r\n");
	assert_string_equal(smtpd_proto_auth_name(f->p), "shop");
	fx_free(f);
}

static void test_auth_results(void **state)
{
	(void)state;
	static const struct {
		enum smtpd_auth_result r;
		const char *reply;
		enum smtpd_state st;
	} cases[] = {
		{SMTPD_AUTH_FAILED, "535 5.7.8 Authentication credentials invalid\r\n",
		 SMTPD_ST_READY},
		{SMTPD_AUTH_TEMPFAIL, "454 4.7.0 Temporary authentication failure\r\n",
		 SMTPD_ST_READY},
		{SMTPD_AUTH_LOCKED, "454 4.7.0 Too many failed authentications, try "
		 "again later\r\n", SMTPD_ST_READY},
		{SMTPD_AUTH_LOCKED_IP, "421 4.7.0 Too many failed authentications "
		 "from your address, closing connection\r\n", SMTPD_ST_CLOSED},
		{SMTPD_AUTH_UNTRACKED, "421 4.7.0 Too many failed authentications, "
		 "closing connection\r\n", SMTPD_ST_CLOSED},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
		char line[128];
		snprintf(line, sizeof line, "EHLO x\r\nAUTH PLAIN %s\r\n",
		         B64S("\0u\0p"));
		feed(f, line);
		take(f);
		auth_expect(f, "u", "p", cases[i].r, cases[i].reply);
		assert_int_equal(smtpd_proto_state(f->p), cases[i].st);
		assert_string_equal(smtpd_proto_auth_name(f->p), "");
		fx_free(f);
	}
}

static void test_auth_line_limit(void **state)
{
	(void)state;
	/* A response is bounded like a command line; an over-long one ends
	 * the exchange. */
	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	feed(f, "EHLO x\r\nAUTH PLAIN\r\n");
	take(f);
	static char big[SMTP_CMD_LINE_MAX + 64];
	memset(big, 'A', sizeof big - 3);
	memcpy(big + sizeof big - 3, "\r\n", 3);
	feed(f, big);
	assert_string_equal(take(f), "500 5.5.2 Line too long\r\n");
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	feed(f, "NOOP\r\n");
	assert_string_equal(take(f), "250 2.0.0 Ok\r\n");
	fx_free(f);
}

static void test_auth_advertised(void **state)
{
	(void)state;
	/* Outside TLS: not offered... */
	struct fixture *f = fx_auth(CONF_LISTEN_SUBMISSION, false, false);
	feed(f, "EHLO x\r\n");
	assert_lacks(take(f), "AUTH");
	/* ...but after STARTTLS, yes. */
	starttls_ok(f, "STARTTLS\r\n");
	smtpd_proto_done(f->p, 0, &f->out);
	feed(f, "EHLO x\r\n");
	assert_has(take(f), "250-AUTH PLAIN LOGIN\r\n");
	fx_free(f);
	/* auth_plaintext clients see it in plaintext. */
	f = fx_auth(CONF_LISTEN_SMTP, true, false);
	feed(f, "EHLO x\r\n");
	assert_has(take(f), "250-AUTH PLAIN LOGIN\r\n");
	fx_free(f);
	/* No credentials loaded: not offered. */
	f = fx_new(100, 1000000, 20);
	feed(f, "EHLO x\r\n");
	assert_lacks(take(f), "AUTH");
	fx_free(f);
}

static void test_auth_starttls_resets(void **state)
{
	(void)state;
	/* Authenticated in plaintext (auth_plaintext), then STARTTLS: RFC
	 * 3207 §4.2, the AUTH is forgotten with the rest. */
	struct fixture *f = fx_auth(CONF_LISTEN_SUBMISSION, true, false);
	char line[128];
	snprintf(line, sizeof line, "EHLO x\r\nAUTH PLAIN %s\r\n",
	         B64S("\0app\0pw"));
	feed(f, line);
	take(f);
	auth_expect(f, "app", "pw", SMTPD_AUTH_OK,
	            "235 2.7.0 Authentication successful\r\n");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPA");
	starttls_ok(f, "STARTTLS\r\n");
	smtpd_proto_done(f->p, 0, &f->out);
	assert_string_equal(smtpd_proto_auth_name(f->p), "");
	feed(f, "EHLO x\r\nMAIL FROM:<a@b>\r\n");
	assert_has(take(f), "530 5.7.0 Authentication required\r\n");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPS");
	/* AUTH may be done again, inside TLS now. */
	feed(f, line + strlen("EHLO x\r\n"));
	auth_expect(f, "app", "pw", SMTPD_AUTH_OK,
	            "235 2.7.0 Authentication successful\r\n");
	assert_string_equal(smtpd_proto_with(f->p), "ESMTPSA");
	fx_free(f);

	/* Inside an exchange, "STARTTLS" is only a response (valid base64
	 * here: a user name); no handshake starts. */
	f = fx_auth(CONF_LISTEN_SUBMISSION, true, false);
	feed(f, "EHLO x\r\nAUTH LOGIN\r\n");
	take(f);
	feed(f, "STARTTLS\r\n");
	assert_string_equal(take(f), "334 UGFzc3dvcmQ6\r\n");
	assert_int_equal(f->req, SMTPD_REQ_NONE);
	assert_false(smtpd_proto_tls(f->p));
	fx_free(f);
}

/* ---- long_lines (issue 8 §2) ---------------------------------------- */

/* "<N:c>" -> N copies of c. */
static void expand(const char *s, struct buf *b)
{
	buf_reset(b);
	while (*s) {
		char c;
		unsigned n;
		int used;
		if (*s == '<' && sscanf(s, "<%u:%c>%n", &n, &c, &used) == 2 &&
		    used > 0) {
			for (unsigned i = 0; i < n; i++)
				assert_int_equal(buf_append(b, &c, 1), 0);
			s += used;
		} else {
			assert_int_equal(buf_append(b, s, 1), 0);
			s++;
		}
	}
}

#define LL_MID "Message-ID: <0000000000000001@relay.test>\r\n"
#define LL_DATE "Date: Sat, 21 Nov 2026 06:00:00 +0000\r\n"
/* What a scrubbed Received: becomes (issue 9 §3). */
#define LL_HOP "Received: by relay.test (relayd: earlier hop, details " \
	"removed); Sat, 21 Nov 2026 06:00:00 +0000\r\n"
#define LL_REFUSED "554 5.6.0 Message contains a line longer than 998 " \
	"characters (RFC 5322 2.1.1)\r\n"

struct ll_case {
	const char *name;
	bool reject;        /* long_lines = reject */
	const char *msg;    /* the message, "<N:c>" expanded */
	const char *stored; /* after "Received: test\r\n"; NULL: refused */
};

static const struct ll_case ll_cases[] = {
	{"wrap: body line of 1200", false,
	 "Subject: s\r\n\r\n<1200:x>\r\nend\r\n",
	 "Subject: s\r\n" LL_MID LL_DATE "\r\n<998:x>\r\n<202:x>\r\nend\r\n"},
	{"wrap: header folded at a blank", false,
	 "Subject: <600:a> <600:b>\r\n\r\nbody\r\n",
	 "Subject: <600:a>\r\n <600:b>\r\n" LL_MID LL_DATE "\r\nbody\r\n"},
	/* A long field cannot smuggle a field in at a line start: every
	 * break in the header section makes a continuation line. */
	{"wrap: no field made at a break", false,
	 "Subject: <989:a>X-Originating-IP: 10.1.2.3\r\n\r\nb\r\n",
	 "Subject:\r\n <989:a>X-Origin\r\n ating-IP: 10.1.2.3\r\n" LL_MID
	 LL_DATE "\r\nb\r\n"},
	/* §7 and §2 together: the long line has no colon, so the body
	 * starts at it (after the inserted empty line), and body lines are
	 * broken, not folded. */
	{"wrap: long non-header line starts the body", false,
	 "Subject: s\r\n<1200:x>\r\nX-Originating-IP: 1\r\n",
	 "Subject: s\r\n" LL_MID LL_DATE "\r\n<998:x>\r\n<202:x>\r\n"
	 "X-Originating-IP: 1\r\n"},
	{"wrap: dot after the break", false, "S: s\r\n\r\n<998:x>.\r\n..\r\n",
	 "S: s\r\n" LL_MID LL_DATE "\r\n<998:x>\r\n.\r\n..\r\n"},
	{"wrap: dropped long field is not wrapped", false,
	 "Received: <2000:r>\r\nS: s\r\n\r\nb\r\n",
	 LL_HOP "S: s\r\n" LL_MID LL_DATE "\r\nb\r\n"},
	{"reject: 998 octets pass", true,
	 "S: <995:a>\r\n\r\n<998:x>\r\n<998:y>\r\n",
	 "S: <995:a>\r\n" LL_MID LL_DATE "\r\n<998:x>\r\n<998:y>\r\n"},
	{"reject: body line of 999", true, "S: s\r\n\r\n<999:x>\r\n", NULL},
	{"reject: header line of 999", true, "S: <996:a>\r\n\r\nb\r\n", NULL},
	{"reject: long line at the very end", true, "S: s\r\n\r\nb\r\n<5000:x>",
	 NULL},
	{"reject: dropped long field is not refused", true,
	 "Received: <2000:r>\r\nS: s\r\n\r\nb\r\n",
	 LL_HOP "S: s\r\n" LL_MID LL_DATE "\r\nb\r\n"},
};

/* One transaction: DATA (dot-stuffed), or BDAT in chunks of `chunk`
 * octets (0: one chunk), LAST on the last. */
static void ll_txn(const struct ll_case *c, int via, size_t chunk)
{
	struct fixture *f = calloc(1, sizeof *f);
	f->cfg = (struct smtpd_proto_cfg){
		.hostname = "relay.test", .sid = "t1",
		.max_message_size = 1000000, .max_recipients = 100,
		.max_bad_commands = 20, .scrub = scrub, .nscrub = 2,
		.trusted = true, .long_lines_reject = c->reject,
	};
	buf_init(&f->sink.body, SIZE_MAX);
	buf_init(&f->out, SIZE_MAX);
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);
	struct buf msg = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20),
	           wire = BUF_INIT(1 << 20);
	expand(c->msg, &msg);
	if (c->stored) {
		buf_appends(&want, "Received: test\r\n");
		struct buf tail = BUF_INIT(1 << 20);
		expand(c->stored, &tail);
		buf_append(&want, tail.data, tail.len);
		buf_free(&tail);
	}
	start(f);
	if (via == 0) {
		feed(f, "DATA\r\n");
		assert_has(take(f), "354 ");
		bool bol = true;
		for (size_t i = 0; i < msg.len; i++) {
			if (bol && msg.data[i] == '.')
				buf_append(&wire, ".", 1);
			buf_append(&wire, &msg.data[i], 1);
			bol = msg.data[i] == '\n';
		}
		if (!bol)
			buf_appends(&wire, "\r\n");   /* the reader needs CRLF . */
		buf_appends(&wire, ".\r\n");
		if (!bol && c->stored)
			buf_appends(&want, "\r\n");
	} else {
		size_t step = chunk ? chunk : msg.len;
		for (size_t i = 0; i < msg.len; i += step) {
			size_t k = msg.len - i < step ? msg.len - i : step;
			char cmd[64];
			snprintf(cmd, sizeof cmd, "BDAT %zu%s\r\n", k,
			         i + k == msg.len ? " LAST" : "");
			buf_appends(&wire, cmd);
			buf_append(&wire, msg.data + i, k);
		}
	}
	/* Fed as the shell does: a BDAT per octet makes many replies, and
	 * the core stops at SMTPD_OUT_BATCH of them until they are sent.
	 * The last reply line is what counts. */
	char o[512] = "";
	size_t off = 0;
	for (int guard = 0; off < wire.len && guard < 1000000; guard++) {
		size_t k = feedn(f, (const char *)wire.data + off, wire.len - off);
		off += k;
		if (f->out.len) {
			size_t end = f->out.len, from = end - 1;
			while (from > 0 && f->out.data[from - 1] != '\n')
				from--;
			snprintf(o, sizeof o, "%.*s", (int)(end - from),
			         (const char *)f->out.data + from);
			buf_reset(&f->out);
		}
		if (k == 0 || f->req != SMTPD_REQ_NONE)
			break;
	}
	assert_int_equal(off, wire.len);
	const char *last = o;
	if (c->stored) {
		if (f->req != SMTPD_REQ_COMMIT)
			fail_msg("case '%s' (via %d/%zu): no commit: %s", c->name,
			         via, chunk, o);
		if (f->sink.body.len != want.len ||
		    memcmp(f->sink.body.data, want.data, want.len) != 0)
			fail_msg("case '%s' (via %d/%zu): stored %zu bytes, want "
			         "%zu", c->name, via, chunk, f->sink.body.len,
			         want.len);
		smtpd_proto_done(f->p, 0, &f->out);
		assert_has(take(f), "250 2.0.0 Ok: queued as");
	} else {
		if (f->req != SMTPD_REQ_NONE || strcmp(last, LL_REFUSED) != 0)
			fail_msg("case '%s' (via %d/%zu): got '%s'", c->name, via,
			         chunk, o);
		assert_int_equal(f->sink.aborts, 1);
		assert_int_equal(f->sink.body.len, 0);
		/* Not a protocol error, and the session goes on. */
		assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
		feed(f, "MAIL FROM:<a@b.test>\r\n");
		assert_has(take(f), "250 2.1.0");
	}
	buf_free(&msg);
	buf_free(&want);
	buf_free(&wire);
	fx_free(f);
}

/* ---- hop_limit (issue 9 §3) ------------------------------------------------ */

struct hop_case {
	const char *name;
	unsigned limit;       /* cfg.hop_limit; 0: the default, 50 */
	bool keep_received;   /* scrub list without Received */
	unsigned nrcvd;       /* Received: fields in the header section */
	bool in_body;         /* ... or in the body instead */
	bool accepted;
};

static const struct hop_case hop_cases[] = {
	{"default limit: 49 pass", 0, false, 49, false, true},
	{"default limit: 50 refused", 0, false, 50, false, false},
	{"default limit: 51 refused", 0, false, 51, false, false},
	{"none at all", 0, false, 0, false, true},
	{"hop_limit 3: 2 pass", 3, false, 2, false, true},
	{"hop_limit 3: 3 refused", 3, false, 3, false, false},
	{"hop_limit 1: 0 pass", 1, false, 0, false, true},
	{"hop_limit 1: 1 refused", 1, false, 1, false, false},
	{"kept Received count too: 49", 0, true, 49, false, true},
	{"kept Received count too: 50", 0, true, 50, false, false},
	{"Received in the body do not count", 0, false, 60, true, true},
};

/* One message with c->nrcvd Received: fields (folded, varied case),
 * through DATA and through BDAT in 5-octet chunks. */
static void hop_txn(const struct hop_case *c, bool bdat)
{
	static const char *const keep[] = {"X-Originating-IP"};
	struct fixture *f = calloc(1, sizeof *f);
	f->cfg = (struct smtpd_proto_cfg){
		.hostname = "relay.test", .sid = "t1",
		.max_message_size = 1000000, .max_recipients = 100,
		.max_bad_commands = 20, .trusted = true,
		.scrub = c->keep_received ? keep : scrub,
		.nscrub = c->keep_received ? 1 : 2,
		.hop_limit = c->limit,
	};
	buf_init(&f->sink.body, SIZE_MAX);
	buf_init(&f->out, SIZE_MAX);
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);
	struct buf msg = BUF_INIT(1 << 20), trace = BUF_INIT(1 << 20),
	           wire = BUF_INIT(1 << 20), want = BUF_INIT(1 << 20);
	for (unsigned i = 0; i < c->nrcvd; i++)
		buf_printf(&trace, "%s: from h%u.example ([10.0.0.%u])\r\n"
		           "\tby mx.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
		           i % 2 ? "RECEIVED" : "Received", i, i % 250);
	if (c->in_body) {
		buf_appends(&msg, "Subject: s\r\n\r\n");
		buf_append(&msg, trace.data, trace.len);
	} else {
		buf_append(&msg, trace.data, trace.len);
		buf_appends(&msg, "Subject: s\r\n\r\nb\r\n");
	}
	buf_appends(&want, "Received: test\r\n");
	if (c->in_body) {
		buf_appends(&want, "Subject: s\r\n" LL_MID LL_DATE "\r\n");
		buf_append(&want, trace.data, trace.len);
	} else {
		for (unsigned i = 0; i < c->nrcvd; i++)
			buf_appends(&want, LL_HOP);
		if (c->keep_received) {
			buf_reset(&want);
			buf_appends(&want, "Received: test\r\n");
			buf_append(&want, trace.data, trace.len);
		}
		buf_appends(&want, "Subject: s\r\n" LL_MID LL_DATE "\r\nb\r\n");
	}
	start(f);
	if (!bdat) {
		buf_appends(&wire, "DATA\r\n");
		buf_append(&wire, msg.data, msg.len);
		buf_appends(&wire, ".\r\n");
	} else {
		for (size_t i = 0; i < msg.len; i += 5) {
			size_t k = msg.len - i < 5 ? msg.len - i : 5;
			char cmd[64];
			snprintf(cmd, sizeof cmd, "BDAT %zu%s\r\n", k,
			         i + k == msg.len ? " LAST" : "");
			buf_appends(&wire, cmd);
			buf_append(&wire, msg.data + i, k);
		}
	}
	/* The last reply line is the verdict (see ll_txn). */
	char o[512] = "";
	size_t off = 0;
	for (int guard = 0; off < wire.len && guard < 1000000; guard++) {
		size_t k = feedn(f, (const char *)wire.data + off, wire.len - off);
		off += k;
		if (f->out.len) {
			size_t end = f->out.len, from = end - 1;
			while (from > 0 && f->out.data[from - 1] != '\n')
				from--;
			snprintf(o, sizeof o, "%.*s", (int)(end - from),
			         (const char *)f->out.data + from);
			buf_reset(&f->out);
		}
		if (k == 0 || f->req != SMTPD_REQ_NONE)
			break;
	}
	assert_int_equal(off, wire.len);
	if (c->accepted) {
		if (f->req != SMTPD_REQ_COMMIT)
			fail_msg("case '%s' (bdat %d): no commit: %s", c->name, bdat,
			         o);
		if (f->sink.body.len != want.len ||
		    memcmp(f->sink.body.data, want.data, want.len) != 0)
			fail_msg("case '%s' (bdat %d): stored '%.*s'", c->name, bdat,
			         (int)f->sink.body.len, f->sink.body.data);
		assert_int_equal(smtpd_proto_txn(f->p)->hops,
		                 c->in_body ? 0 : c->nrcvd);
		assert_int_equal(f->sink.aborts, 0);
		smtpd_proto_done(f->p, 0, &f->out);
		assert_has(take(f), "250 2.0.0 Ok: queued as");
	} else {
		char want_reply[160];
		snprintf(want_reply, sizeof want_reply,
		         "554 5.4.6 Too many hops (%u Received: header fields, "
		         "limit %u), mail loop suspected\r\n", c->nrcvd,
		         c->limit ? c->limit : SMTPD_HOP_LIMIT_DEFAULT);
		if (f->req != SMTPD_REQ_NONE || strcmp(o, want_reply) != 0)
			fail_msg("case '%s' (bdat %d): got '%s'", c->name, bdat, o);
		/* Nothing queued: the body begun is thrown away. */
		assert_int_equal(f->sink.aborts, 1);
		assert_int_equal(f->sink.body.len, 0);
		assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
		feed(f, "MAIL FROM:<a@b.test>\r\n");
		assert_has(take(f), "250 2.1.0");
	}
	buf_free(&msg);
	buf_free(&trace);
	buf_free(&wire);
	buf_free(&want);
	fx_free(f);
}

static void test_hop_limit(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof hop_cases / sizeof *hop_cases; i++) {
		hop_txn(&hop_cases[i], false);
		hop_txn(&hop_cases[i], true);
	}
}

static void test_long_lines(void **state)
{
	(void)state;
	static const size_t chunks[] = {0, 1, 7, 997, 998, 999, 1000};
	for (size_t i = 0; i < sizeof ll_cases / sizeof *ll_cases; i++) {
		ll_txn(&ll_cases[i], 0, 0);
		for (size_t k = 0; k < sizeof chunks / sizeof *chunks; k++)
			ll_txn(&ll_cases[i], 1, chunks[k]);
	}
}

/* The Received "with" keyword: RFC 3848 (ESMTP, S for TLS, A for AUTH),
 * RFC 6531 §3.7.3 (UTF8SMTP... for a transaction with SMTPUTF8); HELO is
 * plain SMTP. Checked inside the transaction (where the sink's begin()
 * reads it) and after it, when SMTPUTF8 no longer applies. */
struct with_case {
	bool tls, auth, utf8, ehlo;
	const char *in_txn, *after;
};

static const struct with_case with_cases[] = {
	{false, false, false, true, "ESMTP", "ESMTP"},
	{true, false, false, true, "ESMTPS", "ESMTPS"},
	{false, true, false, true, "ESMTPA", "ESMTPA"},
	{true, true, false, true, "ESMTPSA", "ESMTPSA"},
	{false, false, true, true, "UTF8SMTP", "ESMTP"},
	{true, false, true, true, "UTF8SMTPS", "ESMTPS"},
	{false, true, true, true, "UTF8SMTPA", "ESMTPA"},
	{true, true, true, true, "UTF8SMTPSA", "ESMTPSA"},
	{false, false, true, false, "SMTP", "SMTP"},
	{true, false, true, false, "SMTP", "SMTP"},
};

static void test_with_keyword(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof with_cases / sizeof *with_cases; i++) {
		const struct with_case *c = &with_cases[i];
		struct fixture *f = fx_auth(c->tls ? CONF_LISTEN_SMTPS
		                                   : CONF_LISTEN_SMTP, true, true);
		feed(f, c->ehlo ? "EHLO x\r\n" : "HELO x\r\n");
		take(f);
		if (c->auth) {
			char line[128];
			snprintf(line, sizeof line, "AUTH PLAIN %s\r\n",
			         B64S("\0app\0pw"));
			feed(f, line);
			auth_expect(f, "app", "pw", SMTPD_AUTH_OK,
			            "235 2.7.0 Authentication successful\r\n");
		}
		feed(f, c->utf8 ? "MAIL FROM:<a@b.test> SMTPUTF8\r\n"
		                : "MAIL FROM:<a@b.test>\r\n");
		assert_has(take(f), "250 2.1.0");
		feed(f, "RCPT TO:<c@d.test>\r\nDATA\r\n");
		assert_has(take(f), "354 ");
		if (strcmp(smtpd_proto_with(f->p), c->in_txn) != 0)
			fail_msg("case %zu: in the transaction '%s', want '%s'", i,
			         smtpd_proto_with(f->p), c->in_txn);
		feed(f, "Subject: s\r\n\r\nb\r\n.\r\n");
		assert_int_equal(f->req, SMTPD_REQ_COMMIT);
		smtpd_proto_done(f->p, 0, &f->out);
		assert_has(take(f), "250 2.0.0 Ok: queued as");
		if (strcmp(smtpd_proto_with(f->p), c->after) != 0)
			fail_msg("case %zu: after the transaction '%s', want '%s'",
			         i, smtpd_proto_with(f->p), c->after);
		fx_free(f);
	}
}

static void test_auth_cred_restrictions(void **state)
{
	(void)state;
	char hash[CRED_HASH_MAX], text[1024], err[256];
	struct cred_kdf k = cred_kdf_scrypt;
	k.ln = 10;
	assert_int_equal(cred_hash("pw", 2, &k, hash, sizeof hash), 0);
	snprintf(text, sizeof text,
	         "shop:%s:acme:from=shop.example|noreply@other.example,"
	         "to=dest.example\n", hash);
	struct cred_store *t = NULL;
	assert_int_equal(cred_store_parse("creds", text, strlen(text), &t, err,
	                                   sizeof err), 0);
	const struct cred *cred = cred_store_find(t, "SHOP");
	assert_non_null(cred);

	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	char line[128];
	snprintf(line, sizeof line, "EHLO x\r\nAUTH PLAIN %s\r\n",
	         B64S("\0SHOP\0pw"));
	feed(f, line);
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_AUTH);
	smtpd_proto_set_cred(f->p, cred);
	smtpd_proto_done(f->p, SMTPD_AUTH_OK, &f->out);
	assert_string_equal(take(f), "235 2.7.0 Authentication successful\r\n");
	/* The name as the file has it. */
	assert_string_equal(smtpd_proto_auth_name(f->p), "shop");

	static const struct {
		const char *in, *out;
	} steps[] = {
		{"MAIL FROM:<x@evil.example>\r\n",
		 "553 5.7.1 Sender address not allowed for this credential\r\n"},
		{"MAIL FROM:<x@shop.example.evil.org>\r\n",
		 "553 5.7.1 Sender address not allowed for this credential\r\n"},
		{"MAIL FROM:<>\r\n",
		 "553 5.7.1 Sender address not allowed for this credential\r\n"},
		{"MAIL FROM:<other@other.example>\r\n",
		 "553 5.7.1 Sender address not allowed for this credential\r\n"},
		{"MAIL FROM:<noreply@other.example>\r\n", "250 2.1.0 Sender ok\r\n"},
		{"RSET\r\n", "250 2.0.0 Ok\r\n"},
		{"MAIL FROM:<x@SHOP.example>\r\n", "250 2.1.0 Sender ok\r\n"},
		{"RCPT TO:<a@elsewhere.example>\r\n",
		 "550 5.7.1 Recipient not allowed for this credential\r\n"},
		{"RCPT TO:<a@sub.dest.example>\r\n",
		 "550 5.7.1 Recipient not allowed for this credential\r\n"},
		{"RCPT TO:<a@dest.example>\r\n", "250 2.1.5 Recipient ok\r\n"},
		{"RCPT TO:<b@DEST.EXAMPLE>\r\n", "250 2.1.5 Recipient ok\r\n"},
	};
	for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
		feed(f, steps[i].in);
		const char *o = take(f);
		if (strcmp(o, steps[i].out) != 0)
			fail_msg("'%s': got '%s', want '%s'", steps[i].in, o,
			         steps[i].out);
	}
	assert_int_equal(smtpd_proto_txn(f->p)->nrcpt, 2);
	fx_free(f);
	cred_store_free(t);
}

/* The From: header against a credential's allowed senders, at the end of
 * DATA and of BDAT LAST (issue 4 §3). */
#define FROM_REFUSED \
	"553 5.7.1 From: header address not allowed for this credential\r\n"

struct from_case {
	const char *name;
	const char *head;   /* header section, without the empty line */
	bool ok;
};

static const struct from_case from_cases[] = {
	{"plain", "From: a@shop.example\r\n", true},
	{"display name", "Subject: s\r\nFrom: Shop <a@shop.example>\r\n", true},
	{"case", "FROM: a@SHOP.Example\r\n", true},
	{"all allowed", "From: noreply@other.example, b <b@shop.example>\r\n",
	 true},
	{"folded", "From: \"Shop, Inc.\"\r\n <a@shop.example>\r\n (c)\r\n", true},
	{"other domain", "From: x@evil.example\r\n", false},
	{"lookalike domain", "From: a@shop.example.evil.org\r\n", false},
	{"allowed name, other address",
	 "From: \"a@shop.example\" <x@evil.example>\r\n", false},
	{"allowed address in a comment",
	 "From: x@evil.example (a@shop.example)\r\n", false},
	{"one of two refused", "From: a@shop.example, x@evil.example\r\n",
	 false},
	{"other address at an allowed domain",
	 "From: other@other.example\r\n", false},
	{"missing", "Subject: s\r\n", false},
	{"two From fields", "From: a@shop.example\r\nFrom: x@evil.example\r\n",
	 false},
	{"empty group", "From: undisclosed-recipients:;\r\n", false},
	{"empty", "From:\r\n", false},
	{"garbage", "From: <<a@shop.example\r\n", false},
	{"scrubbed away", "X-Originating-IP: 1\r\nReceived: x\r\n", false},
	/* issue 8 §7: after a line that is not a header field the body
	 * starts (an empty line is inserted there): a From: below it is
	 * body, for the check as for every reader downstream. */
	{"allowed From: after a malformed line",
	 "Subject: s\r\nno colon here\r\nFrom: a@shop.example\r\n", false},
	{"refused From: after a malformed line is body",
	 "From: a@shop.example\r\nno colon here\r\nFrom: x@evil.example\r\n",
	 true},
};

static struct fixture *fx_cred(const struct cred *cred,
                               const char *name)
{
	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, false);
	char line[128], plain[32];
	size_t n = (size_t)snprintf(plain, sizeof plain, "%c%s%cpw", 0, name, 0);
	char b64[64];
	static const char tb[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned char)plain[i] << 16;
		if (i + 1 < n) v |= (unsigned char)plain[i + 1] << 8;
		if (i + 2 < n) v |= (unsigned char)plain[i + 2];
		b64[o++] = tb[v >> 18 & 63];
		b64[o++] = tb[v >> 12 & 63];
		b64[o++] = i + 1 < n ? tb[v >> 6 & 63] : '=';
		b64[o++] = i + 2 < n ? tb[v & 63] : '=';
	}
	b64[o] = '\0';
	snprintf(line, sizeof line, "EHLO x\r\nAUTH PLAIN %s\r\n", b64);
	feed(f, line);
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_AUTH);
	smtpd_proto_set_cred(f->p, cred);
	smtpd_proto_done(f->p, SMTPD_AUTH_OK, &f->out);
	assert_string_equal(take(f), "235 2.7.0 Authentication successful\r\n");
	return f;
}

/* One transaction with the header section head; DATA or BDAT LAST. */
static void from_txn(struct fixture *f, const char *head, bool bdat,
                     bool ok, const char *name)
{
	feed(f, "MAIL FROM:<a@shop.example>\r\nRCPT TO:<r@dest.example>\r\n");
	take(f);
	int aborts = f->sink.aborts;
	char msg[8192];
	if (bdat) {
		char data[8000];
		int n = snprintf(data, sizeof data, "%s\r\nbody\r\n", head);
		snprintf(msg, sizeof msg, "BDAT %d LAST\r\n%s", n, data);
	} else {
		feed(f, "DATA\r\n");
		assert_has(take(f), "354 ");
		snprintf(msg, sizeof msg, "%s\r\nbody\r\n.\r\n", head);
	}
	feed(f, msg);
	if (ok) {
		if (f->req != SMTPD_REQ_COMMIT)
			fail_msg("case '%s' (%s): no commit: %s", name,
			         bdat ? "BDAT" : "DATA", take(f));
		smtpd_proto_done(f->p, 0, &f->out);
		assert_has(take(f), "250 2.0.0 Ok: queued as");
	} else {
		const char *o = take(f);
		if (f->req != SMTPD_REQ_NONE || strcmp(o, FROM_REFUSED) != 0)
			fail_msg("case '%s' (%s): got '%s'", name,
			         bdat ? "BDAT" : "DATA", o);
		assert_int_equal(f->sink.aborts, aborts + 1);
	}
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
}

static void test_auth_cred_from(void **state)
{
	(void)state;
	char hash[CRED_HASH_MAX], text[1024], err[256];
	struct cred_kdf k = cred_kdf_scrypt;
	k.ln = 10;
	assert_int_equal(cred_hash("pw", 2, &k, hash, sizeof hash), 0);
	snprintf(text, sizeof text,
	         "shop:%s:acme:from=shop.example|noreply@other.example\n"
	         "free:%s::to=dest.example\n", hash, hash);
	struct cred_store *t = NULL;
	assert_int_equal(cred_store_parse("creds", text, strlen(text), &t, err,
	                                   sizeof err), 0);
	const struct cred *shop = cred_store_find(t, "shop");
	const struct cred *free_cred = cred_store_find(t, "free");
	assert_non_null(shop);
	assert_non_null(free_cred);

	for (size_t i = 0; i < sizeof from_cases / sizeof *from_cases; i++) {
		const struct from_case *c = &from_cases[i];
		for (int bdat = 0; bdat < 2; bdat++) {
			struct fixture *f = fx_cred(shop, "shop");
			from_txn(f, c->head, bdat, c->ok, c->name);
			/* The session goes on: an allowed message passes. */
			from_txn(f, "From: a@shop.example\r\n", bdat, true, "after");
			fx_free(f);
		}
	}

	/* A From: value past the bound is not parsed: refused. */
	char head[6000];
	int n = snprintf(head, sizeof head, "From: a@shop.example");
	while (n < 998 * 4)
		n += snprintf(head + n, sizeof head - (size_t)n,
		              ",\r\n b@shop.example");
	snprintf(head + n, sizeof head - (size_t)n, "\r\n");
	struct fixture *f = fx_cred(shop, "shop");
	from_txn(f, head, false, false, "too long");
	fx_free(f);

	/* A line of the From: field over 998 octets (issue 8 §2): wrapping
	 * would change the field after the check, so it is refused; up to
	 * 998 octets, or folded by the client, it is judged as it is. The
	 * first line counts "From:" and any blanks before the colon. */
	struct {
		const char *name;   /* before the comment */
		size_t comment;     /* octets of the comment's text */
		const char *after;  /* after the comment */
		bool ok;
	} longs[] = {
		{"From: (", 975, ") a@shop.example", true},        /* 998 */
		{"From: (", 976, ") a@shop.example", false},       /* 999 */
		{"From  : (", 973, ") a@shop.example", true},      /* 998 */
		{"From  : (", 974, ") a@shop.example", false},     /* 999 */
		{"From: (", 990, ")\r\n a@shop.example", true},    /* 998 + */
		{"From: a@shop.example,\r\n (", 995, ")", true},   /* + 998 */
		{"From: a@shop.example,\r\n (", 996, ")", false},  /* + 999 */
	};
	for (size_t i = 0; i < sizeof longs / sizeof *longs; i++) {
		n = snprintf(head, sizeof head, "%s", longs[i].name);
		for (size_t j = 0; j < longs[i].comment; j++)
			head[n++] = 'c';
		snprintf(head + n, sizeof head - (size_t)n, "%s\r\n",
		         longs[i].after);
		for (int bdat = 0; bdat < 2; bdat++) {
			f = fx_cred(shop, "shop");
			from_txn(f, head, bdat, longs[i].ok, longs[i].name);
			fx_free(f);
		}
	}

	/* A credential without from=: no From: check at all. */
	f = fx_cred(free_cred, "free");
	from_txn(f, "From: x@evil.example\r\n", false, true, "unrestricted");
	from_txn(f, "Subject: no From\r\n", true, true, "unrestricted");
	fx_free(f);

	/* A trusted client that did not authenticate: none either. */
	f = fx();
	feed(f, "EHLO x\r\n");
	take(f);
	from_txn(f, "From: x@evil.example\r\n", false, true, "trusted");
	fx_free(f);
	cred_store_free(t);
}

/* ---- queue_min_free: the spool hook at MAIL -------------------------------- */

struct spool_hook {
	int calls;
	uint64_t size;           /* the SIZE= it was asked about */
	uint64_t room;           /* bytes above queue_min_free */
	int policy_calls;        /* the relay policy's MAIL hook */
};

static enum smtp_reply_id spool_hook_cb(void *ctx, uint64_t size)
{
	struct spool_hook *h = ctx;
	h->calls++;
	h->size = size;
	return size <= h->room && h->room > 0 ? SMTP_R__COUNT
	                                      : SMTP_R_STORAGE_FULL;
}

static enum smtp_reply_id spool_policy_mail(void *ctx, const char *sender)
{
	(void)sender;
	((struct spool_hook *)ctx)->policy_calls++;
	return SMTP_R__COUNT;
}

static const struct smtpd_policy_ops spool_policy = {spool_policy_mail, NULL};

#define STORAGE_FULL_REPLY \
	"452 4.3.1 Insufficient system storage, try again later\r\n"

static void test_spool_min_free(void **state)
{
	(void)state;
	struct spool_hook h = {.room = 0};
	struct fixture *f = fx();
	smtpd_proto_free(f->p);
	f->cfg.spool = spool_hook_cb;
	f->cfg.spool_ctx = &h;
	f->cfg.policy = &spool_policy;
	f->cfg.policy_ctx = &h;
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);

	/* A bad command never reaches the hook. */
	feed(f, "EHLO x\r\nMAIL FROM:<a@@b>\r\n");
	assert_has(take(f), "501 5.1.7");
	assert_int_equal(h.calls, 0);
	/* Below the reserve: 452 4.3.1 at MAIL, before any data, and the
	 * relay policy (rate counters) is not asked; not a protocol error
	 * either (more refusals than max_bad_commands, the session lives). */
	for (int i = 0; i < 30; i++) {
		feed(f, "MAIL FROM:<a@b.test>\r\n");
		assert_string_equal(take(f), STORAGE_FULL_REPLY);
	}
	assert_int_equal(h.calls, 30);
	assert_int_equal(h.size, 0);
	assert_int_equal(h.policy_calls, 0);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	feed(f, "RCPT TO:<c@d.test>\r\n");
	assert_has(take(f), "503 5.5.1");
	/* Room again, but not for the declared SIZE. */
	h.room = 5000;
	feed(f, "MAIL FROM:<a@b.test> SIZE=6000\r\n");
	assert_string_equal(take(f), STORAGE_FULL_REPLY);
	assert_int_equal(h.size, 6000);
	assert_int_equal(h.policy_calls, 0);
	/* Room for it: the transaction goes on, the policy asked after. */
	feed(f, "MAIL FROM:<a@b.test> SIZE=4000\r\n");
	assert_string_equal(take(f), "250 2.1.0 Sender ok\r\n");
	assert_int_equal(h.size, 4000);
	assert_int_equal(h.policy_calls, 1);
	feed(f, "RCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n");
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	fx_free(f);

	/* No hook: no check. */
	f = fx();
	feed(f, "EHLO x\r\nMAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "250 2.1.0");
	fx_free(f);
}

/* ---- quotas --------------------------------------------------------------- */

struct quota_hook {
	int calls;
	enum smtp_reply_id answer;
	const struct cred *seen;
};

static enum smtp_reply_id quota_hook_cb(void *ctx, const struct cred *c)
{
	struct quota_hook *q = ctx;
	q->calls++;
	q->seen = c;
	return q->answer;
}

/* An AUTH fixture whose core has the quota hook. */
static struct fixture *fx_quota(struct quota_hook *q, bool trusted)
{
	struct fixture *f = fx_auth(CONF_LISTEN_SMTPS, false, trusted);
	smtpd_proto_free(f->p);
	f->cfg.quota = quota_hook_cb;
	f->cfg.quota_ctx = q;
	f->p = smtpd_proto_new(&f->cfg, &ops, &f->sink);
	return f;
}

static void quota_auth(struct fixture *f, const struct cred *cred)
{
	char line[128];
	snprintf(line, sizeof line, "EHLO x\r\nAUTH PLAIN %s\r\n",
	         B64S("\0app\0pw"));
	feed(f, line);
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_AUTH);
	assert_null(smtpd_proto_cred(f->p));
	smtpd_proto_set_cred(f->p, cred);
	smtpd_proto_done(f->p, SMTPD_AUTH_OK, &f->out);
	assert_has(take(f), "235 2.7.0");
}

#define QUOTA_REPLY \
	"450 4.7.1 Sending quota exceeded for this credential, try again later\r\n"

static void test_quota(void **state)
{
	(void)state;
	char hash[CRED_HASH_MAX], text[1024], err[256];
	struct cred_kdf k = cred_kdf_scrypt;
	k.ln = 10;
	assert_int_equal(cred_hash("pw", 2, &k, hash, sizeof hash), 0);
	snprintf(text, sizeof text, "app:%s::hourly=2,daily=3\n", hash);
	struct cred_store *t = NULL;
	assert_int_equal(cred_store_parse("creds", text, strlen(text), &t, err,
	                                   sizeof err), 0);
	const struct cred *cred = cred_store_find(t, "app");
	assert_non_null(cred);

	/* A trusted client that did not authenticate has no quota: the hook
	 * is never asked. */
	struct quota_hook q = {.answer = SMTP_R_QUOTA};
	struct fixture *f = fx_quota(&q, true);
	feed(f, "EHLO x\r\nMAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "250 2.1.0");
	assert_int_equal(q.calls, 0);
	fx_free(f);

	/* Authenticated with a credential: asked at MAIL, after the syntax
	 * and the credential's sender check. */
	q = (struct quota_hook){.answer = SMTP_R__COUNT};
	f = fx_quota(&q, false);
	quota_auth(f, cred);
	assert_ptr_equal(smtpd_proto_cred(f->p), cred);
	feed(f, "MAIL FROM:<a@@b>\r\n");
	assert_has(take(f), "501 5.1.7");
	assert_int_equal(q.calls, 0);
	feed(f, "MAIL FROM:<a@b.test>\r\n");
	assert_string_equal(take(f), "250 2.1.0 Sender ok\r\n");
	assert_int_equal(q.calls, 1);
	assert_ptr_equal(q.seen, cred);
	/* The charge at commit refused (another session took the last
	 * unit): 450 4.7.1, the transaction is over. */
	feed(f, "RCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n");
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	smtpd_proto_done(f->p, -EDQUOT, &f->out);
	assert_string_equal(take(f), QUOTA_REPLY);
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	assert_int_equal(smtpd_proto_txn(f->p)->nrcpt, 0);
	/* Over quota at MAIL: refused whole, not a protocol error; the
	 * session goes on and may try again later. */
	q.answer = SMTP_R_QUOTA;
	unsigned refused = 0;
	for (int i = 0; i < 30; i++) {   /* more than max_bad_commands */
		feed(f, "MAIL FROM:<a@b.test>\r\n");
		assert_string_equal(take(f), QUOTA_REPLY);
		refused++;
	}
	assert_int_equal(smtpd_proto_state(f->p), SMTPD_ST_READY);
	feed(f, "RCPT TO:<c@d.test>\r\n");
	assert_has(take(f), "503 5.5.1");
	/* A store error at the peek: what the hook says is sent. */
	q.answer = SMTP_R_STORAGE_ERR;
	feed(f, "MAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "451 4.3.0");
	q.answer = SMTP_R__COUNT;
	feed(f, "MAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "250 2.1.0");
	assert_int_equal(q.calls, 1 + (int)refused + 2);
	fx_free(f);

	/* Authenticated without a credential (tests): no quota. */
	q = (struct quota_hook){.answer = SMTP_R_QUOTA};
	f = fx_quota(&q, false);
	quota_auth(f, NULL);
	assert_null(smtpd_proto_cred(f->p));
	feed(f, "MAIL FROM:<a@b.test>\r\n");
	assert_has(take(f), "250 2.1.0");
	assert_int_equal(q.calls, 0);
	fx_free(f);

	/* Without a hook, a refused charge still answers 450 4.7.1; other
	 * commit errors keep their replies. */
	f = fx();
	start(f);
	feed(f, "DATA\r\nx\r\n.\r\n");
	take(f);
	smtpd_proto_done(f->p, -EDQUOT, &f->out);
	assert_string_equal(take(f), QUOTA_REPLY);
	feed(f, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
	     "DATA\r\nx\r\n.\r\n");
	take(f);
	assert_int_equal(f->req, SMTPD_REQ_COMMIT);
	smtpd_proto_done(f->p, -EIO, &f->out);
	assert_has(take(f), "451 4.3.0");
	fx_free(f);
	cred_store_free(t);
}

int main(void)
{
	log_open(NULL, false, LOG_ERR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_table),
		cmocka_unit_test(test_happy_path),
		cmocka_unit_test(test_pipelining),
		cmocka_unit_test(test_too_many_rcpt),
		cmocka_unit_test(test_line_too_long),
		cmocka_unit_test(test_bad_command_limit),
		cmocka_unit_test(test_message_too_big),
		cmocka_unit_test(test_bare_lf_rejected),
		cmocka_unit_test(test_nul_rejected),
		cmocka_unit_test(test_storage_errors),
		cmocka_unit_test(test_bdat),
		cmocka_unit_test(test_bdat_rejected_chunk_is_consumed),
		cmocka_unit_test(test_bdat_bad_syntax_closes),
		cmocka_unit_test(test_bdat_failed_chunks_not_counted),
		cmocka_unit_test(test_dsn_params),
		cmocka_unit_test(test_timeout_and_shutdown),
		cmocka_unit_test(test_byte_by_byte),
		cmocka_unit_test(test_out_batch),
		cmocka_unit_test(test_in_line),
		cmocka_unit_test(test_close_replies),
		cmocka_unit_test(test_starttls_table),
		cmocka_unit_test(test_starttls_advertised),
		cmocka_unit_test(test_starttls_resets_session),
		cmocka_unit_test(test_starttls_pipelined_input_discarded),
		cmocka_unit_test(test_starttls_handshake_failed),
		cmocka_unit_test(test_smtps_session),
		cmocka_unit_test(test_auth_table),
		cmocka_unit_test(test_auth_plain),
		cmocka_unit_test(test_auth_login),
		cmocka_unit_test(test_auth_results),
		cmocka_unit_test(test_auth_line_limit),
		cmocka_unit_test(test_auth_advertised),
		cmocka_unit_test(test_auth_starttls_resets),
		cmocka_unit_test(test_auth_cred_restrictions),
		cmocka_unit_test(test_with_keyword),
		cmocka_unit_test(test_long_lines),
		cmocka_unit_test(test_hop_limit),
		cmocka_unit_test(test_auth_cred_from),
		cmocka_unit_test(test_quota),
		cmocka_unit_test(test_spool_min_free),
	};
	return cmocka_run_group_tests_name("smtpd_proto", tests, NULL, NULL);
}
