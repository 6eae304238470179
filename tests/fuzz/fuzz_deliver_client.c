/*
 * tests/fuzz/fuzz_deliver_client.c - libFuzzer harness for the SMTP client
 * core: the input is what the server says, and the harness plays the
 * shell. It must never crash, leak or loop, and what the client sends must
 * stay well-formed whatever the server says.
 *
 * Input: byte 0 picks the session, the rest is the server's bytes.
 *   bit 0      STARTTLS required (tls_ready() on the STARTTLS event)
 *   bit 1      AUTH credentials
 *   bit 2      the message needs SMTPUTF8
 *   bit 3      three messages before QUIT, else one
 *   bit 4      tls_ready() only after one more read (a shell that read
 *              plaintext behind the 220 before starting the handshake)
 *   bits 5-6   how the bytes arrive: 0 reads end at each 0xFF byte (not
 *              passed on; valid UTF-8 has none), so a seed says where the
 *              server's writes end (pipelined replies together, plaintext
 *              behind a 220 to STARTTLS); 1 one line per read; 2 one byte
 *              per read; 3 cut at three places derived from the data
 *              (often ahead of the commands: unsolicited replies)
 *   bit 7      no QUIT: the session ends without one (a timeout)
 * Without bits 0 and 1, an input whose length after byte 0 is a multiple
 * of 3 plays direct delivery's opportunistic STARTTLS (starttls_may).
 * The message is declared BODY=8BITMIME; its body counts as 7-bit when the
 * whole input's length is odd (so both answers to a server without
 * 8BITMIME are reached: sent without BODY=, or refused 5.6.3).
 * The EHLO SIZE value is checked against the extensions seen, and the
 * pure SIZE parser is fed the input as it is. Every wait for the server
 * has a timeout and a description from the state table (RFC 5321
 * §4.5.3.2: between 2 and 10 minutes at the default base).
 * Corpus: tests/fuzz/corpus/deliver_client/, replayed by `make test`:
 * server transcripts by name, min-* inputs the fuzzer found (edges the
 * transcripts miss, minimized with -merge=1 -use_counters=0).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "deliver/deliver_client.h"
#include "deliver/deliver_tlspol.h"

static const char *const rcpt[] = {"r1@dst.test", "r2@dst.test", "r3@dst.test"};
static const char *const notify[] = {"SUCCESS,FAILURE", NULL, "NEVER"};
static const char *const orcpt[] = {"rfc822;r1@dst.test", NULL, NULL};

/* Lines that must be stuffed, and no CRLF at the end. */
static const char body[] = "Subject: fuzz\r\n\r\n.\r\n..\r\n.x\r\nmid.dle\r\n"
                           "\r\n.\r\nend.";

struct fz {
	struct deliver_client *c;
	struct deliver_client_msg msg;
	struct buf out;
	unsigned nmsg, sent, txns, tls;
	int defer_tls, tls_pending;
	int quit;               /* 0, 1: QUIT sent, 2: not to be sent */
	size_t quit_len;        /* out.len when QUIT went out */
	size_t body_cut;
};

static void check_text(const char *t)
{
	size_t n = strnlen(t, DELIVER_REPLY_TEXT_MAX);
	if (n == DELIVER_REPLY_TEXT_MAX)
		abort();   /* not terminated */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
			abort();   /* control characters must be gone */
}

static void check_reply(const struct deliver_reply *r)
{
	if (r->code != 0 && (r->code < 200 || r->code > 599))
		abort();
	check_text(r->text);
	/* The enhanced code comes as numbers, of the reply's class. */
	if (r->cls && (r->cls != r->code / 100 || r->subject > 999 ||
	               r->detail > 999))
		abort();
	if (!r->cls && (r->subject || r->detail))
		abort();
	char st[16];
	deliver_reply_status(r, st);
	/* "c.s.d": a class 2, 4 or 5, then 1-3 digits twice. */
	if ((st[0] != '2' && st[0] != '4' && st[0] != '5') || st[1] != '.')
		abort();
	size_t i = 2, d = 0;
	for (int part = 0; part < 2; part++) {
		for (d = 0; st[i] >= '0' && st[i] <= '9'; i++, d++)
			;
		if (d < 1 || d > 3 || st[i] != (part ? '\0' : '.'))
			abort();
		i++;
	}
	(void)deliver_tlspol_throttle(r->text, strlen(r->text), NULL, NULL);
}

/* Steps until the client needs more input (0) or the session is over (1);
 * a loop is a bug. */
static int drive(struct fz *z)
{
	for (int guard = 0; guard < 64; guard++) {
		enum deliver_client_ev ev = deliver_client_step(z->c, &z->out);
		switch (ev) {
		case DELIVER_CL_WAIT: {
			if (!deliver_client_waiting(z->c))
				abort();
			uint64_t t = deliver_client_timeout(z->c, 300000);
			if (t < 120000 || t > 600000 ||
			    !deliver_client_state_name(z->c) ||
			    strncmp(deliver_client_state_desc(z->c), "while ", 6))
				abort();
			if (deliver_client_in_final(z->c) != (t == 600000))
				abort();
			/* Calls out of turn do nothing. */
			size_t before = z->out.len;
			deliver_client_send(z->c, &z->msg, &z->out);
			deliver_client_quit(z->c, &z->out);
			deliver_client_body_end(z->c, &z->out);
			deliver_client_tls_ready(z->c, &z->out);
			if (z->out.len != before)
				abort();
			return 0;
		}
		case DELIVER_CL_STARTTLS:
			if (++z->tls > 1 || deliver_client_waiting(z->c))
				abort();
			if (z->defer_tls) {
				z->tls_pending = 1;
				return 0;
			}
			deliver_client_tls_ready(z->c, &z->out);
			break;
		case DELIVER_CL_READY:
			if (deliver_client_waiting(z->c) || z->quit == 1)
				abort();
			if (z->sent < z->nmsg) {
				size_t before = z->out.len;
				unsigned ext = deliver_client_ext(z->c);
				deliver_client_send(z->c, &z->msg, &z->out);
				z->sent++;
				z->txns += z->out.len > before;
				/* Refused locally (nothing sent) exactly when the
				 * server lacks SMTPUTF8 for an SMTPUTF8 message,
				 * or 8BITMIME for an 8-bit body; and BODY= only
				 * where 8BITMIME is offered. */
				bool refuse =
					(z->msg.smtputf8 && !(ext & DELIVER_EXT_SMTPUTF8)) ||
					(!z->msg.body_7bit && !(ext & DELIVER_EXT_8BITMIME));
				if (refuse != (z->out.len == before))
					abort();
				if (!(ext & DELIVER_EXT_8BITMIME) &&
				    memmem(z->out.data + before, z->out.len - before,
				           "BODY=", 5))
					abort();
			} else if (z->quit == 0) {
				/* An EHLO without SIZE leaves no limit. */
				if (!(deliver_client_ext(z->c) & DELIVER_EXT_SIZE) &&
				    deliver_client_size_max(z->c) != 0)
					abort();
				deliver_client_quit(z->c, &z->out);
				z->quit = 1;
				z->quit_len = z->out.len;
			} else {
				return 0;   /* idle, nothing left to do */
			}
			break;
		case DELIVER_CL_BODY:
			deliver_client_body(z->c, (const uint8_t *)body,
			                    z->body_cut, &z->out);
			deliver_client_body(z->c, (const uint8_t *)body + z->body_cut,
			                    sizeof body - 1 - z->body_cut, &z->out);
			deliver_client_body_end(z->c, &z->out);
			if (!deliver_client_in_final(z->c))
				abort();
			break;
		case DELIVER_CL_DONE:
			for (size_t i = 0; i < z->msg.nrcpt; i++)
				check_reply(deliver_client_result(z->c, i));
			break;
		case DELIVER_CL_FAILED: {
			const struct deliver_reply *r = NULL;
			if (deliver_client_error(z->c, &r) == DELIVER_FAIL_NONE ||
			    !r)
				abort();
			check_reply(r);
			return 1;
		}
		case DELIVER_CL_CLOSED:
			if (z->quit != 1)
				abort();
			return 1;
		}
	}
	abort();
}

/* CRLF lines only (the body is CRLF-clean), one final dot per
 * transaction at most (more would mean a dot line went unstuffed), nothing
 * after QUIT. */
static void check_out(const struct fz *z)
{
	const uint8_t *p = z->out.data;
	size_t n = z->out.len, dots = 0;

	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			abort();
		if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))
			abort();
		if (i + 5 <= n && memcmp(p + i, "\r\n.\r\n", 5) == 0)
			dots++;
	}
	if (dots > z->txns)
		abort();
	if (z->quit == 1 && z->out.len != z->quit_len)
		abort();
}

static uint64_t hash(const uint8_t *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;   /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

/* The end of the read that starts at off; *skip: a separator follows. */
static size_t next_cut(unsigned mode, const uint8_t *p, size_t off, size_t n,
                       const size_t cuts[3], size_t *skip)
{
	*skip = 0;
	switch (mode) {
	case 0: {
		const uint8_t *ff = memchr(p + off, 0xff, n - off);
		*skip = ff != NULL;
		return ff ? (size_t)(ff - p) : n;
	}
	case 1: {
		const uint8_t *nl = memchr(p + off, '\n', n - off);
		return nl ? (size_t)(nl - p) + 1 : n;
	}
	case 2:
		return off + 1;
	default:
		for (int i = 0; i < 3; i++)
			if (cuts[i] > off)
				return cuts[i];
		return n;
	}
}

/* The SIZE parser: a limit only from a value of digits alone (and
 * spaces), never more than the digits say. */
static void check_size_parser(const uint8_t *p, size_t n)
{
	uint64_t v = deliver_client_parse_size((const char *)p, n);
	if (v == 0)
		return;
	uint64_t ref = 0;
	size_t digits = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == ' ')
			continue;
		if (p[i] < '0' || p[i] > '9')
			abort();
		ref = ref * 10 + (uint64_t)(p[i] - '0');
		if (++digits > 20)
			abort();
	}
	if (ref != v)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	check_size_parser(data, size);
	bool body_7bit = size & 1;
	uint8_t cfg = data[0];
	data++;
	size--;

	struct deliver_client_opts o = {
		.helo = "relay.test", .starttls = cfg & 1,
		.starttls_may = !(cfg & 3) && size % 3 == 0,
		.user = (cfg & 2) ? "user" : NULL, .password = "pass",
	};
	struct fz z = {
		.msg = {.sender = "a@src.test", .size = 1234, .body_8bit = true,
		        .body_7bit = body_7bit, .smtputf8 = cfg & 4, .ret = "HDRS", .envid = "QID1",
		        .nrcpt = 3, .rcpt = rcpt, .notify = notify, .orcpt = orcpt},
		.nmsg = (cfg & 8) ? 3 : 1,
		.defer_tls = (cfg >> 4) & 1,
		.quit = (cfg & 0x80) ? 2 : 0,
	};
	z.c = deliver_client_new(&o);
	if (!z.c)
		return 0;
	buf_init(&z.out, SIZE_MAX);

	uint64_t h = hash(data, size);
	size_t cuts[3] = {h % (size + 1), (h >> 21) % (size + 1),
	                  (h >> 42) % (size + 1)};
	qsort(cuts, 3, sizeof *cuts, cmp_size);
	z.body_cut = (h >> 13) % sizeof body;
	unsigned mode = (cfg >> 5) & 3;

	int over = drive(&z);
	enum deliver_client_ev last =
		over ? deliver_client_step(z.c, &z.out) : DELIVER_CL_WAIT;
	for (size_t off = 0; off < size;) {
		size_t skip, end = next_cut(mode, data, off, size, cuts, &skip);
		if (over) {
			/* Over is over: input ignored, the same answer, silence. */
			size_t before = z.out.len;
			if (deliver_client_input(z.c, data + off, end - off) != 0 ||
			    deliver_client_step(z.c, &z.out) != last ||
			    z.out.len != before)
				abort();
			off = end + skip;
			continue;
		}
		deliver_client_input(z.c, data + off, end - off);
		off = end + skip;
		if (z.tls_pending) {
			z.tls_pending = 0;
			deliver_client_tls_ready(z.c, &z.out);
		}
		over = drive(&z);
		if (over)
			last = deliver_client_step(z.c, &z.out);
	}
	check_out(&z);
	/* Whatever state it was left in, the session frees cleanly. */
	deliver_client_free(z.c);
	buf_free(&z.out);
	return 0;
}
