/*
 * tests/fuzz/fuzz_proto.c - libFuzzer harness for the SMTP server core:
 * arbitrary client bytes, fed in segments whose sizes come from the input,
 * must never crash, and every reply must be a well-formed SMTP reply line.
 * Byte 0: the segment size (bits 0-5, also picking options), long_lines
 * = reject (bit 6). Whatever the client sends, no line longer than 998
 * octets (RFC 5322 §2.1.1) ever reaches the sink with long_lines = wrap,
 * nor is committed with long_lines = reject (issue 8 §2).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "smtpd/smtpd_proto.h"

/* What the sink saw of the current body. */
struct fsink {
	size_t total;
	size_t col;        /* octets on the current line, a last CR included */
	bool cr;           /* the last of them is a CR */
	size_t longest;    /* longest line so far (without its CRLF) */
	bool wrap;         /* long_lines = wrap: no long line, ever */
};

static int f_begin(void *ctx, struct smtpd_txn *t)
{
	struct fsink *k = ctx;
	k->col = 0;
	k->cr = false;
	k->longest = 0;
	memcpy(t->qid, "0000000000000001", QUEUE_ID_SIZE);
	strcpy(t->date, "Sat, 21 Nov 2026 06:00:00 +0000");
	return 0;
}

static int f_write(void *ctx, const uint8_t *p, size_t n)
{
	struct fsink *k = ctx;
	k->total += n;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n' && k->cr) {
			k->col = 0;
			k->cr = false;
			continue;
		}
		k->col++;
		k->cr = p[i] == '\r';
		/* A last CR may still end the line. */
		size_t len = k->col - (k->cr ? 1 : 0);
		if (len > k->longest)
			k->longest = len;
		if (k->wrap && len > 998)
			abort();
	}
	return 0;
}

static void f_abort(void *ctx)
{
	(void)ctx;
}

static const struct smtpd_sink_ops ops = {f_begin, f_write, f_abort};

/* queue_min_free at MAIL: "no room" for a declared SIZE over 1000. */
static enum smtp_reply_id f_spool(void *ctx, uint64_t size)
{
	(void)ctx;
	return size > 1000 ? SMTP_R_STORAGE_FULL : SMTP_R__COUNT;
}
static const char *const scrub[] = {"Received", "X-Originating-IP"};

/* Each reply line: 3 digits, ' ' or '-', text, CRLF. */
static void check_replies(const struct buf *out)
{
	size_t i = 0;
	while (i < out->len) {
		const uint8_t *p = out->data + i;
		size_t left = out->len - i;
		const uint8_t *lf = memchr(p, '\n', left);
		if (!lf || lf == p || lf[-1] != '\r' || left < 4)
			abort();
		for (int k = 0; k < 3; k++)
			if (p[k] < '0' || p[k] > '9')
				abort();
		if (p[3] != ' ' && p[3] != '-')
			abort();
		i += (size_t)(lf - p) + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	if (!quiet) {
		log_open(NULL, false, LOG_ERR);
		quiet = 1;
	}
	if (size < 1)
		return 0;
	size_t seg = (size_t)data[0] % 64 + 1;
	struct fsink sink = {.wrap = !(data[0] & 64)};
	data++;
	size--;
	struct smtpd_proto_cfg cfg = {
		.hostname = "fuzz.test", .sid = "f", .max_message_size = 4096,
		.max_recipients = 5, .max_bad_commands = 50,
		.bare_normalize = seg & 1, .scrub = scrub, .nscrub = 2,
		/* Trusted, so the corpus still reaches DATA; AUTH is usable in
		 * plaintext on half the runs. */
		.trusted = true, .auth_plaintext = (seg & 4) != 0,
		.auth_available = true,
		/* The spool hook on half the runs. */
		.spool = (seg & 8) ? f_spool : NULL,
		.long_lines_reject = !sink.wrap,
	};
	struct smtpd_proto *p = smtpd_proto_new(&cfg, &ops, &sink);
	struct buf out = BUF_INIT(SIZE_MAX);
	struct buf pend = BUF_INIT(SIZE_MAX);
	smtpd_proto_greet(p, &out);
	size_t off = 0;
	int closed = 0;
	while (off < size && !closed) {
		size_t n = size - off < seg ? size - off : seg;
		buf_append(&pend, data + off, n);
		off += n;
		for (int guard = 0; guard < 10000 && pend.len > 0; guard++) {
			enum smtpd_req req;
			size_t k = smtpd_proto_feed(p, pend.data, pend.len, &out, &req);
			if (k > pend.len)
				abort();
			/* Replies per call are bounded (a client that never
			 * reads); one reply may go past the batch. Then they
			 * are "sent", as the shell does. */
			if (out.len > SMTPD_OUT_BATCH + 1024)
				abort();
			check_replies(&out);
			buf_reset(&out);
			buf_consume(&pend, k);
			if (req == SMTPD_REQ_COMMIT) {
				if (sink.longest > 998)
					abort();
				smtpd_proto_done(p, (seg & 2) ? 0 : -28, &out);
				continue;
			}
			if (req == SMTPD_REQ_AUTH) {
				const char *u;
				const void *pw;
				size_t pl;
				smtpd_proto_auth_request(p, &u, &pw, &pl);
				if (strlen(u) >= 2048 || pl > 2048)
					abort();
				/* Every enum smtpd_auth_result, UNTRACKED (5) included. */
				smtpd_proto_done(p, (int)(seg / 8 % 6), &out);
				if (smtpd_proto_state(p) == SMTPD_ST_CLOSED) {
					closed = 1;
					break;
				}
				continue;
			}
			if (req == SMTPD_REQ_CLOSE) {
				closed = 1;
				break;
			}
			if (k == 0)
				break;
		}
	}
	if (!closed)
		smtpd_proto_timeout(p, &out);
	check_replies(&out);
	smtpd_proto_free(p);
	buf_free(&out);
	buf_free(&pend);
	return 0;
}
