/*
 * smtpd/smtpd_proto.c - SMTP server protocol core. Turns client bytes into
 * replies and requests (commit, start TLS, close); no sockets, no libuv.
 * smtpd_session.c feeds it. The session state lives here, the mail
 * transaction in struct smtpd_txn; which command may run in which state is
 * one table (cmd_seq). AUTH PLAIN/LOGIN exchanges (RFC 4954) are parsed
 * here and handed to the shell as (user, password); the relay rule and a
 * credential's sender/recipient restrictions are applied at MAIL and
 * RCPT, and its sender restriction to the From: header at the end of the
 * data. Limits: common/smtp.h.
 */
#include "smtpd/smtpd_proto.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/addr.h"
#include "common/b64.h"
#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_data.h"
#include "smtpd/smtpd_scrub.h"
#include "smtpd/smtpd_wrap.h"

const char *const smtpd_state_names[SMTPD_ST__COUNT] = {
	[SMTPD_ST_INIT] = "init",         [SMTPD_ST_READY] = "ready",
	[SMTPD_ST_MAIL] = "mail",         [SMTPD_ST_RCPT] = "rcpt",
	[SMTPD_ST_DATA] = "data",         [SMTPD_ST_BDAT] = "bdat",
	[SMTPD_ST_BDAT_NEXT] = "bdat-next", [SMTPD_ST_COMMIT] = "commit",
	[SMTPD_ST_STARTTLS] = "starttls", [SMTPD_ST_AUTH_PLAIN] = "auth-plain",
	[SMTPD_ST_AUTH_USER] = "auth-user", [SMTPD_ST_AUTH_PASS] = "auth-pass",
	[SMTPD_ST_AUTH] = "auth",         [SMTPD_ST_CLOSED] = "closed",
};

enum cmd {
	CMD_HELO, CMD_EHLO, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD_BDAT, CMD_RSET,
	CMD_NOOP, CMD_QUIT, CMD_HELP, CMD_VRFY, CMD_EXPN, CMD_STARTTLS,
	CMD_AUTH, CMD__COUNT
};

struct smtpd_proto {
	struct smtpd_proto_cfg cfg;
	const struct smtpd_sink_ops *ops;
	void *ctx;
	enum smtpd_state st;
	bool esmtp;
	bool tls;                /* inside TLS: STARTTLS done, or smtps */
	bool discard_line;       /* rest of an over-long line is skipped */
	bool body_open;          /* ops->begin succeeded, not yet handed over */
	char cmd[80];            /* current command, escaped, for log lines */
	unsigned bad;            /* protocol errors so far */
	char helo[256];

	struct smtpd_txn txn;
	struct smtpd_data data;
	/* The scrubber and the line-length limiter, allocated for the data
	 * phase only (about 2 KiB that idle sessions do not hold). */
	struct body_pipe *pipe;
	char msgid_line[QUEUE_ID_SIZE + SMTP_DOMAIN_MAX + 32];
	/* The From: field's value, captured by the scrubber for a credential
	 * with sender restrictions (else NULL); FROM_CAP_MAX bytes. */
	char *from_cap;
	char date_line[80];
	/* What a scrubbed Received: field becomes (smtpd_scrub_hops). */
	char hop_line[SMTP_DOMAIN_MAX + 128];

	/* BDAT (RFC 3030): octets left in the current chunk; a rejected chunk
	 * is still read (§2) and then answered with bdat_reply. */
	uint64_t bdat_left;
	uint64_t bdat_total;
	bool bdat_last;
	bool bdat_discard;
	enum smtp_reply_id bdat_reply;
	enum smtpd_state bdat_after;   /* state after a discarded chunk */
	/* A BDAT transaction failed on a chunk that was not LAST: the client
	 * may have more chunks in flight (RFC 3030 §3). They get the same
	 * answer, uncounted as protocol errors, until LAST or another
	 * command. SMTP_R__COUNT when none. */
	enum smtp_reply_id bdat_fail;
	bool bdat_nocount;

	/* AUTH (RFC 4954). auth_name is set once authenticated; the user and
	 * password of an exchange live until done() and are wiped then. */
	char auth_name[CRED_NAME_MAX + 1];
	const struct cred *cred;   /* the shell's; NULL: none */
	char auth_user[SMTP_CMD_LINE_MAX];
	uint8_t auth_pw[SMTP_CMD_LINE_MAX];
	size_t auth_pwlen;
};

struct body_pipe {
	struct smtpd_scrub scrub;
	struct smtpd_wrap wrap;    /* after the scrubber: long_lines */
};

/* A From: field's value longer than this (four full RFC 5322 lines) is
 * not read as addresses: the message is refused. */
#define FROM_CAP_MAX (998 * 4)

/* ---- replies ------------------------------------------------------------ */

/* Appends one reply line; refusals are logged with the command that drew
 * them, the queue id first once there is one. */
static void vreply_def(struct smtpd_proto *p, struct buf *out,
                       const struct smtp_reply_def *r, va_list ap)
{
	char text[SMTP_REPLY_LINE_MAX];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	/* Formats come only from the const reply table. */
	vsnprintf(text, sizeof text, r->text, ap);
#pragma GCC diagnostic pop
	if (r->enh[0])
		buf_printf(out, "%u %s %s\r\n", r->code, r->enh, text);
	else
		buf_printf(out, "%u %s\r\n", r->code, text);
	if (r->code < 400 || !log_enabled(LOG_INFO))
		return;
	/* The credential, where known: every refusal names it (issue 4 §3). */
	char who[CRED_NAME_MAX + 16] = "";
	if (p->auth_name[0])
		snprintf(who, sizeof who, ", auth=%s", p->auth_name);
	if (p->txn.qid[0])
		log_write(LOG_INFO, "%s: reject: %s: %u %s %s (s=%s%s)", p->txn.qid,
		          p->cmd, r->code, r->enh, text, p->cfg.sid, who);
	else
		log_write(LOG_INFO, "s=%s: reject: %s: %u %s %s%s", p->cfg.sid,
		          p->cmd, r->code, r->enh, text, who);
}

static void vreply(struct smtpd_proto *p, struct buf *out,
                   enum smtp_reply_id id, va_list ap)
{
	if (p->cfg.reply_counts && id < SMTP_R__COUNT)
		p->cfg.reply_counts[id]++;
	if (p->cfg.reply_hook && id < SMTP_R__COUNT)
		p->cfg.reply_hook(p->cfg.reply_hook_ctx, id, p->auth_name);
	vreply_def(p, out, &smtp_replies[id], ap);
}

static void reply(struct smtpd_proto *p, struct buf *out,
                  enum smtp_reply_id id, ...)
{
	va_list ap;
	va_start(ap, id);
	vreply(p, out, id, ap);
	va_end(ap);
}

/* A protocol error (unknown command, syntax, sequence). Returns true when
 * the limit is reached and the session must close. */
static bool count_bad(struct smtpd_proto *p, struct buf *out,
                      enum smtpd_req *req)
{
	if (++p->bad < p->cfg.max_bad_commands)
		return false;
	reply(p, out, SMTP_R_TOO_MANY_ERRORS);
	p->st = SMTPD_ST_CLOSED;
	*req = SMTPD_REQ_CLOSE;
	return true;
}

static void bad(struct smtpd_proto *p, struct buf *out, enum smtpd_req *req,
                enum smtp_reply_id id, ...)
{
	va_list ap;
	va_start(ap, id);
	vreply(p, out, id, ap);
	va_end(ap);
	count_bad(p, out, req);
}

/* ---- transaction ---------------------------------------------------------- */

static void txn_reset(struct smtpd_proto *p)
{
	struct smtpd_txn *t = &p->txn;
	if (p->body_open) {
		p->ops->abort(p->ctx);
		p->body_open = false;
	}
	free(t->sender);
	free(t->envid);
	for (size_t i = 0; i < t->nrcpt; i++) {
		free(t->rcpt[i].addr);
		free(t->rcpt[i].orcpt);
	}
	free(t->rcpt);
	memset(t, 0, sizeof *t);
	free(p->from_cap);
	p->from_cap = NULL;
	free(p->pipe);
	p->pipe = NULL;
	p->bdat_total = 0;
}

/* Back to READY (or INIT if no HELO yet): RFC 5321 §4.1.1.5. */
static void txn_end(struct smtpd_proto *p)
{
	txn_reset(p);
	p->st = p->helo[0] ? SMTPD_ST_READY : SMTPD_ST_INIT;
}

/* The body's path: DATA reader -> scrubber -> line-length limiter ->
 * sink. The limiter comes last so that it sees the header section the
 * scrubber decided on (with the empty line it may insert) and the final
 * bytes, and everything after the sink (the spool, DKIM) sees lines of at
 * most 998 octets. */
static int wrap_emit(void *ctx, const uint8_t *b, size_t n)
{
	struct smtpd_proto *p = ctx;
	return p->ops->write(p->ctx, b, n);
}

static int scrub_emit(void *ctx, const uint8_t *b, size_t n)
{
	struct smtpd_proto *p = ctx;
	return smtpd_wrap_feed(&p->pipe->wrap, b, n);
}

static int data_emit(void *ctx, const uint8_t *b, size_t n)
{
	struct smtpd_proto *p = ctx;
	return smtpd_scrub_feed(&p->pipe->scrub, b, n);
}

static unsigned hop_limit(const struct smtpd_proto *p)
{
	return p->cfg.hop_limit ? p->cfg.hop_limit : SMTPD_HOP_LIMIT_DEFAULT;
}

/* Opens the body through the sink and sets up reader and scrubber. */
static int body_begin(struct smtpd_proto *p, enum smtpd_data_mode mode)
{
	int r = p->ops->begin(p->ctx, &p->txn);
	if (r < 0)
		return r;
	p->body_open = true;
	snprintf(p->msgid_line, sizeof p->msgid_line, "Message-ID: <%s@%s>\r\n",
	         p->txn.qid, p->cfg.hostname);
	snprintf(p->date_line, sizeof p->date_line, "Date: %s\r\n", p->txn.date);
	/* A scrubbed Received: field still counts as a hop downstream (issue
	 * 9 §3): it becomes this line, which names only relayd's own host and
	 * the date relayd took the message (no earlier host, address, id or
	 * time). A "by"-only trace line, like the internal hops large
	 * providers add, so spam filters read it as a handover inside the
	 * sending site and not as a relay to judge. */
	snprintf(p->hop_line, sizeof p->hop_line,
	         "Received: by %s (relayd: earlier hop, details removed); %s\r\n",
	         p->cfg.hostname, p->txn.date);
	p->pipe = malloc(sizeof *p->pipe);
	if (!p->pipe)
		return -ENOMEM;
	smtpd_data_init(&p->data, mode, p->cfg.max_message_size,
	                p->cfg.bare_normalize);
	smtpd_scrub_init(&p->pipe->scrub, p->cfg.scrub, p->cfg.nscrub, p->msgid_line,
	                 p->date_line, scrub_emit, p);
	smtpd_scrub_hops(&p->pipe->scrub, p->hop_line, hop_limit(p));
	smtpd_wrap_init(&p->pipe->wrap, p->cfg.long_lines_reject ? SMTPD_WRAP_CHECK
	                                                   : SMTPD_WRAP_FOLD,
	                wrap_emit, p);
	/* A credential restricted to some senders must also name an allowed
	 * author (issue 4 §3): keep the From: value for body_end. Others,
	 * and trusted clients, are not checked. */
	if (p->cred && p->auth_name[0] && cred_nfrom(p->cred) > 0) {
		p->from_cap = malloc(FROM_CAP_MAX);
		if (!p->from_cap)
			return -ENOMEM;
		smtpd_scrub_capture_from(&p->pipe->scrub, p->from_cap,
		                         FROM_CAP_MAX);
	}
	return 0;
}

static enum smtp_reply_id storage_reply(int err)
{
	return err == -ENOSPC || err == -EDQUOT ? SMTP_R_STORAGE_FULL
	                                        : SMTP_R_STORAGE_ERR;
}

/* Reader errors to the reply that explains them; SMTP_R__COUNT if none. */
static enum smtp_reply_id data_error_reply(const struct smtpd_data *d)
{
	if (d->errors & SMTPD_DATA_E_TOO_BIG)
		return SMTP_R_MSG_TOO_BIG;
	if (d->errors & SMTPD_DATA_E_BARE)
		return SMTP_R_BARE_NEWLINE;
	if (d->errors & SMTPD_DATA_E_NUL)
		return SMTP_R_NUL;
	if (d->errors & SMTPD_DATA_E_WRITE)
		return storage_reply(d->werr);
	return SMTP_R__COUNT;
}

struct from_check {
	const struct cred *cred;
	char bad[SMTP_PATH_MAX + 1];   /* the first address refused */
};

static int from_addr_cb(void *ctx, const char *addr)
{
	struct from_check *fc = ctx;
	if (cred_sender_ok(fc->cred, addr))
		return 0;
	snprintf(fc->bad, sizeof fc->bad, "%s", addr);
	return -EPERM;
}

/* Whether a line of the captured From: field (its first one counted with
 * the name and colon before the value) is longer than 998 octets. */
static bool from_line_too_long(const struct smtpd_scrub *s, const char *v)
{
	size_t col = s->cap_lead;
	for (size_t i = 0; i < s->caplen; i++) {
		if (v[i] == '\n' && i > 0 && v[i - 1] == '\r') {
			col = 0;
			continue;
		}
		if (++col > SMTP_TEXT_LINE_MAX + (v[i] == '\r'))
			return true;
	}
	return false;
}

/* The From: header against the credential's allowed senders: every
 * mailbox in it must be allowed, and there must be exactly one From:
 * field (RFC 5322 §3.6) naming at least one mailbox. Logs and returns
 * SMTP_R_CRED_FROM when refused, else SMTP_R__COUNT. */
static enum smtp_reply_id from_check(struct smtpd_proto *p)
{
	const struct smtpd_scrub *s = &p->pipe->scrub;
	struct from_check fc = {.cred = p->cred};
	const char *why = NULL;
	if (s->nfrom == 0) {
		why = "no From: header";
	} else if (s->nfrom > 1) {
		why = "several From: headers";
	} else if (s->cap_over) {
		why = "From: header too long";
	} else if (from_line_too_long(s, p->from_cap)) {
		/* long_lines = wrap would break it after this check, and
		 * a CRLF SP inside an address makes another one: judge only
		 * a field that is delivered as it was checked. */
		why = "From: header line longer than 998 octets";
	} else {
		int r = addr_parse_mailbox_list(p->from_cap, s->caplen,
		                                from_addr_cb, &fc);
		if (r == -EPERM)
			why = "address not allowed";
		else if (r == 0)
			why = "no address in From: header";
		else if (r < 0)
			why = "unparsable From: header";
	}
	if (!why)
		return SMTP_R__COUNT;
	if (log_enabled(LOG_INFO)) {
		/* The refused address, or else the field's value without the
		 * blanks and line ends around it; escaped, cut at 512. */
		const char *v = fc.bad;
		size_t n = strlen(fc.bad);
		if (!n && s->nfrom == 1) {
			v = p->from_cap;
			n = s->caplen;
			while (n && strchr(" \t\r\n", *v) && *v) {
				v++;
				n--;
			}
			while (n && strchr(" \t\r\n", v[n - 1]) && v[n - 1])
				n--;
		}
		char from[512];
		log_escape(from, sizeof from, v, n);
		log_write(LOG_INFO, "%s: reject: header From: <%s>: %s (s=%s, "
		          "auth=%s)", p->txn.qid, from, why, p->cfg.sid,
		          cred_name(p->cred));
	}
	return SMTP_R_CRED_FROM;
}

/* End of DATA or the LAST BDAT chunk: hand the message over or refuse it. */
static void body_end(struct smtpd_proto *p, struct buf *out,
                     enum smtpd_req *req)
{
	struct body_pipe *bp = p->pipe;
	enum smtp_reply_id e = data_error_reply(&p->data);
	if (e == SMTP_R__COUNT) {
		int r = smtpd_scrub_finish(&bp->scrub);
		if (r == 0)
			r = smtpd_wrap_finish(&bp->wrap);
		if (r < 0)
			e = storage_reply(r);
		else if (bp->scrub.received >= hop_limit(p))
			e = SMTP_R_TOO_MANY_HOPS;   /* a loop: issue 9 §3 */
		else if (bp->wrap.too_long)
			e = SMTP_R_LONG_LINE;   /* long_lines = reject */
		else if (p->from_cap)
			e = from_check(p);
	}
	if (e == SMTP_R_TOO_MANY_HOPS) {
		reply(p, out, e, bp->scrub.received, hop_limit(p));
		txn_end(p);
		return;
	}
	if (e != SMTP_R__COUNT) {
		reply(p, out, e);
		txn_end(p);
		return;
	}
	p->txn.scrubbed = bp->scrub.dropped;
	p->txn.hops = bp->scrub.received;
	if (bp->wrap.breaks)
		log_info("%s: lines longer than %d octets wrapped: %llu breaks "
		         "inserted (s=%s)", p->txn.qid, SMTP_TEXT_LINE_MAX,
		         bp->wrap.breaks, p->cfg.sid);
	if (bp->scrub.inserted)
		log_info("%s: header section ends at a line that is not a header "
		         "field: empty line inserted (s=%s)", p->txn.qid,
		         p->cfg.sid);
	p->body_open = false;   /* the session hands the body to the queue */
	p->st = SMTPD_ST_COMMIT;
	*req = SMTPD_REQ_COMMIT;
}

/* ---- command handlers ----------------------------------------------------- */

struct cmd_ctx {
	struct smtpd_proto *p;
	const char *arg;     /* after the verb and one space; NUL-terminated */
	size_t arglen;
	struct buf *out;
	enum smtpd_req *req;
};

static bool streq_ci(const char *a, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

static bool has_8bit(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/* addr_parse_path's -EILSEQ covers both 8-bit bytes and control
 * characters; only the former deserve "553 5.6.7 requires SMTPUTF8". */
static bool needs_utf8(const char *s, bool smtputf8)
{
	bool eight = false;
	for (; *s && *s != ' '; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f)
			return false;
		eight |= c >= 0x80;
	}
	return eight && !smtputf8;
}

/* AUTH may be used here: inside TLS, or by an auth_plaintext client. */
static bool auth_allowed(const struct smtpd_proto *p)
{
	return p->tls || p->cfg.auth_plaintext;
}

static void do_hello(struct cmd_ctx *c, bool ehlo)
{
	struct smtpd_proto *p = c->p;
	/* RFC 5321 §4.1.1.1: a domain or address literal; like Postfix we only
	 * require something to be there. */
	const char *a = c->arg;
	size_t n = c->arglen;
	while (n && *a == ' ')
		a++, n--;
	while (n && a[n - 1] == ' ')
		n--;
	if (n == 0) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX,
		    ehlo ? "EHLO hostname" : "HELO hostname");
		return;
	}
	txn_reset(p);
	if (n >= sizeof p->helo)
		n = sizeof p->helo - 1;
	memcpy(p->helo, a, n);
	p->helo[n] = '\0';
	p->esmtp = ehlo;
	p->st = SMTPD_ST_READY;
	if (!ehlo) {
		buf_printf(c->out, "250 %s\r\n", p->cfg.hostname);
		return;
	}
	/* RFC 3207 §4: STARTTLS is not offered once TLS is on (§4.2), nor
	 * without a certificate. AUTH only where it may be used: inside TLS,
	 * or for auth_plaintext clients (issue 4 §2). */
	bool auth = p->cfg.auth_available && auth_allowed(p);
	buf_printf(c->out,
	           "250-%s\r\n"
	           "250-PIPELINING\r\n"
	           "250-SIZE %" PRIu64 "\r\n"
	           "250-8BITMIME\r\n"
	           "250-ENHANCEDSTATUSCODES\r\n"
	           "250-SMTPUTF8\r\n"
	           "250-CHUNKING\r\n"
	           "%s%s"
	           "250 DSN\r\n",
	           p->cfg.hostname, p->cfg.max_message_size,
	           p->cfg.tls_available && !p->tls ? "250-STARTTLS\r\n" : "",
	           auth ? "250-AUTH PLAIN LOGIN\r\n" : "");
}

static void cmd_helo(struct cmd_ctx *c) { do_hello(c, false); }
static void cmd_ehlo(struct cmd_ctx *c) { do_hello(c, true); }

/* "FROM:" / "TO:" then optional spaces; returns the path start or NULL. */
static const char *path_start(const struct cmd_ctx *c, const char *kw)
{
	size_t k = strlen(kw);
	if (c->arglen < k || strncasecmp(c->arg, kw, k) != 0)
		return NULL;
	const char *s = c->arg + k;
	while (*s == ' ')
		s++;
	return s;
}

static bool parse_u64(const char *s, size_t n, uint64_t *v)
{
	if (n == 0 || n > 20)
		return false;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
	}
	*v = x;
	return true;
}

#define MAX_PARAMS 16

/* A relay policy hook (cfg.policy): true when it refused (reply sent). */
static bool policy_refuses(struct smtpd_proto *p, struct buf *out,
                           enum smtp_reply_id (*hook)(void *, const char *),
                           const char *addr)
{
	if (!hook)
		return false;
	enum smtp_reply_id e = hook(p->cfg.policy_ctx, addr);
	if (e == SMTP_R__COUNT)
		return false;
	reply(p, out, e);
	return true;
}

static void cmd_mail(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	struct smtpd_txn *t = &p->txn;
	const char *s = path_start(c, "FROM:");
	if (!s) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "MAIL FROM:<address>");
		return;
	}
	size_t slen = c->arglen - (size_t)(s - c->arg);
	char addr[SMTP_PATH_MAX + 1];
	size_t used = 0;
	int r = addr_parse_path(s, slen, ADDR_ALLOW_NULL | ADDR_ALLOW_UTF8 |
	                        ADDR_ALLOW_BARE, addr, sizeof addr, &used);
	if (r == -EILSEQ && needs_utf8(s, strcasestr(s, "SMTPUTF8") != NULL)) {
		reply(p, c->out, SMTP_R_NEED_UTF8);
		return;
	}
	if (r < 0 || (used < slen && s[used] != ' ')) {
		bad(p, c->out, c->req, SMTP_R_BAD_SENDER);
		return;
	}
	struct addr_param prm[MAX_PARAMS];
	int np = addr_parse_params(s + used, slen - used, true, prm, MAX_PARAMS);
	if (np < 0) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "MAIL FROM:<address> [parameters]");
		return;
	}
	uint8_t flags = 0;
	uint64_t size = 0;
	const char *envid = NULL;
	size_t envidlen = 0;
	for (int i = 0; i < np; i++) {
		const struct addr_param *a = &prm[i];
		char key[32];
		log_escape(key, sizeof key, a->key, a->keylen);
		if (streq_ci(a->key, a->keylen, "SIZE")) {
			if (!a->val || !parse_u64(a->val, a->vallen, &size)) {
				bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "SIZE");
				return;
			}
		} else if (streq_ci(a->key, a->keylen, "BODY")) {
			if (a->val && streq_ci(a->val, a->vallen, "8BITMIME"))
				flags |= QUEUE_F_8BITMIME;
			else if (!a->val || !streq_ci(a->val, a->vallen, "7BIT")) {
				bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "BODY");
				return;
			}
		} else if (streq_ci(a->key, a->keylen, "SMTPUTF8") && !a->val) {
			flags |= QUEUE_F_SMTPUTF8;
		} else if (streq_ci(a->key, a->keylen, "RET") && a->val &&
		           streq_ci(a->val, a->vallen, "FULL")) {
			flags |= QUEUE_F_RET_FULL;
		} else if (streq_ci(a->key, a->keylen, "RET") && a->val &&
		           streq_ci(a->val, a->vallen, "HDRS")) {
			flags |= QUEUE_F_RET_HDRS;
		} else if (streq_ci(a->key, a->keylen, "ENVID")) {
			if (!a->val || a->vallen > SMTP_ENVID_MAX ||
			    !addr_xtext_valid(a->val, a->vallen)) {
				bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "ENVID");
				return;
			}
			envid = a->val;
			envidlen = a->vallen;
		} else if (streq_ci(a->key, a->keylen, "RET")) {
			bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "RET");
			return;
		} else {
			reply(p, c->out, SMTP_R_PARAM_UNKNOWN, key);
			count_bad(p, c->out, c->req);
			return;
		}
	}
	/* RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter. */
	if (!(flags & QUEUE_F_SMTPUTF8) && has_8bit(addr)) {
		reply(p, c->out, SMTP_R_NEED_UTF8);
		return;
	}
	/* RFC 1870 §6.2: a declared size over the limit is refused at once. */
	if (size > p->cfg.max_message_size) {
		reply(p, c->out, SMTP_R_SIZE_TOO_BIG);
		return;
	}
	/* Submission ports are for authenticated clients (RFC 6409 §4.3,
	 * RFC 4954 §6: 530 5.7.0); trusted networks are exempt. */
	if (!p->cfg.trusted && !p->auth_name[0] &&
	    p->cfg.mode != CONF_LISTEN_SMTP) {
		reply(p, c->out, SMTP_R_AUTH_REQUIRED);
		return;
	}
	/* A credential restricted to some senders (from=): the null sender
	 * matches none of them, so a restricted credential cannot send
	 * bounces either. */
	if (p->cred && !cred_sender_ok(p->cred, addr)) {
		reply(p, c->out, SMTP_R_CRED_SENDER);
		return;
	}
	/* queue_min_free (like Postfix's queue_minfree): refused before the
	 * body is sent, not after the client has sent it all. A refusal is
	 * not a protocol error. */
	if (p->cfg.spool) {
		enum smtp_reply_id e = p->cfg.spool(p->cfg.spool_ctx, size);
		if (e != SMTP_R__COUNT) {
			reply(p, c->out, e);
			return;
		}
	}
	if (policy_refuses(p, c->out, p->cfg.policy ? p->cfg.policy->mail : NULL,
	                   addr))
		return;
	/* The credential's hourly and daily quotas: a transaction that could
	 * not be charged is refused whole here, before its body is sent. */
	if (p->cred && p->auth_name[0] && p->cfg.quota) {
		enum smtp_reply_id e = p->cfg.quota(p->cfg.quota_ctx, p->cred);
		if (e != SMTP_R__COUNT) {
			reply(p, c->out, e);
			return;
		}
	}
	t->sender = strdup(addr);
	t->envid = envid ? strndup(envid, envidlen) : NULL;
	if (!t->sender || (envid && !t->envid)) {
		txn_reset(p);
		reply(p, c->out, SMTP_R_STORAGE_ERR);
		return;
	}
	t->flags = flags;
	t->declared_size = size;
	memcpy(t->auth, p->auth_name, sizeof t->auth);
	p->st = SMTPD_ST_MAIL;
	reply(p, c->out, SMTP_R_SENDER_OK);
}

/* RFC 3461 §4.1: NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY. */
static int parse_notify(const char *v, size_t n, uint8_t *out)
{
	uint8_t bits = 0;
	size_t i = 0;
	while (i <= n) {
		size_t j = i;
		while (j < n && v[j] != ',')
			j++;
		const char *w = v + i;
		size_t wl = j - i;
		uint8_t b;
		if (streq_ci(w, wl, "NEVER"))
			b = QUEUE_NOTIFY_NEVER;
		else if (streq_ci(w, wl, "SUCCESS"))
			b = QUEUE_NOTIFY_SUCCESS;
		else if (streq_ci(w, wl, "FAILURE"))
			b = QUEUE_NOTIFY_FAILURE;
		else if (streq_ci(w, wl, "DELAY"))
			b = QUEUE_NOTIFY_DELAY;
		else
			return -EINVAL;
		if (bits & b)
			return -EINVAL;
		bits |= b;
		i = j + 1;
	}
	if ((bits & QUEUE_NOTIFY_NEVER) && bits != QUEUE_NOTIFY_NEVER)
		return -EINVAL;
	*out = bits;
	return 0;
}

/* RFC 3461 §4.2: ORCPT=addr-type ";" xtext. */
static bool orcpt_valid(const char *v, size_t n)
{
	if (n == 0 || n > SMTP_ORCPT_MAX)
		return false;
	const char *semi = memchr(v, ';', n);
	if (!semi || semi == v)
		return false;
	for (const char *q = v; q < semi; q++)
		if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
		      (*q >= '0' && *q <= '9') || *q == '-'))
			return false;
	return addr_xtext_valid(semi + 1, n - (size_t)(semi + 1 - v));
}

static void cmd_rcpt(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	struct smtpd_txn *t = &p->txn;
	const char *s = path_start(c, "TO:");
	if (!s) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "RCPT TO:<address>");
		return;
	}
	if (t->nrcpt >= p->cfg.max_recipients) {
		reply(p, c->out, SMTP_R_TOO_MANY_RCPT);
		return;
	}
	size_t slen = c->arglen - (size_t)(s - c->arg);
	char addr[SMTP_PATH_MAX + 1];
	size_t used = 0;
	unsigned fl = ADDR_ALLOW_BARE;
	if (t->flags & QUEUE_F_SMTPUTF8)
		fl |= ADDR_ALLOW_UTF8;
	int r = addr_parse_path(s, slen, fl, addr, sizeof addr, &used);
	if (r == -EILSEQ && needs_utf8(s, t->flags & QUEUE_F_SMTPUTF8)) {
		reply(p, c->out, SMTP_R_NEED_UTF8);
		return;
	}
	if (r < 0 || (used < slen && s[used] != ' ')) {
		bad(p, c->out, c->req, SMTP_R_BAD_RCPT);
		return;
	}
	struct addr_param prm[MAX_PARAMS];
	int np = addr_parse_params(s + used, slen - used,
	                           t->flags & QUEUE_F_SMTPUTF8, prm, MAX_PARAMS);
	if (np < 0) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "RCPT TO:<address> [parameters]");
		return;
	}
	uint8_t notify = 0;
	const char *orcpt = NULL;
	size_t orcptlen = 0;
	for (int i = 0; i < np; i++) {
		const struct addr_param *a = &prm[i];
		if (streq_ci(a->key, a->keylen, "NOTIFY")) {
			if (!a->val || parse_notify(a->val, a->vallen, &notify) < 0) {
				bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "NOTIFY");
				return;
			}
		} else if (streq_ci(a->key, a->keylen, "ORCPT")) {
			if (!a->val || !orcpt_valid(a->val, a->vallen)) {
				bad(p, c->out, c->req, SMTP_R_PARAM_BAD, "ORCPT");
				return;
			}
			orcpt = a->val;
			orcptlen = a->vallen;
		} else {
			char key[32];
			log_escape(key, sizeof key, a->key, a->keylen);
			reply(p, c->out, SMTP_R_PARAM_UNKNOWN, key);
			count_bad(p, c->out, c->req);
			return;
		}
	}
	/* Never an open relay: outside trusted_networks, only an
	 * authenticated client may name recipients (issue 4 §3). */
	if (!p->cfg.trusted && !p->auth_name[0]) {
		reply(p, c->out, SMTP_R_RELAY_DENIED);
		return;
	}
	if (p->cred && !cred_rcpt_ok(p->cred, addr)) {
		reply(p, c->out, SMTP_R_CRED_RCPT);
		return;
	}
	if (policy_refuses(p, c->out, p->cfg.policy ? p->cfg.policy->rcpt : NULL,
	                   addr))
		return;
	if (t->nrcpt == t->rcpt_cap) {
		size_t cap = t->rcpt_cap ? t->rcpt_cap * 2 : 4;
		struct smtpd_rcpt *nr = realloc(t->rcpt, cap * sizeof *nr);
		if (!nr) {
			reply(p, c->out, SMTP_R_STORAGE_ERR);
			return;
		}
		t->rcpt = nr;
		t->rcpt_cap = cap;
	}
	struct smtpd_rcpt *rc = &t->rcpt[t->nrcpt];
	rc->addr = strdup(addr);
	rc->orcpt = orcpt ? strndup(orcpt, orcptlen) : NULL;
	rc->notify = notify;
	if (!rc->addr || (orcpt && !rc->orcpt)) {
		free(rc->addr);
		free(rc->orcpt);
		reply(p, c->out, SMTP_R_STORAGE_ERR);
		return;
	}
	t->nrcpt++;
	p->st = SMTPD_ST_RCPT;
	reply(p, c->out, SMTP_R_RCPT_OK);
}

static void cmd_data(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	if (c->arglen) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "DATA");
		return;
	}
	int r = body_begin(p, SMTPD_DATA_DOT);
	if (r < 0) {
		reply(p, c->out, storage_reply(r));
		txn_end(p);
		return;
	}
	p->st = SMTPD_ST_DATA;
	reply(p, c->out, SMTP_R_DATA_GO);
}

/* The sequence error for a BDAT in the current state, or SMTP_R__COUNT. */
static enum smtp_reply_id bdat_seq(const struct smtpd_proto *p)
{
	switch (p->st) {
	case SMTPD_ST_RCPT:
	case SMTPD_ST_BDAT_NEXT:
		return SMTP_R__COUNT;
	case SMTPD_ST_MAIL:
		return SMTP_R_SEQ_NEED_RCPT;
	case SMTPD_ST_INIT:
		return SMTP_R_SEQ_HELO;
	default:
		return SMTP_R_SEQ_NEED_MAIL;
	}
}

static void cmd_bdat(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	const char *a = c->arg;
	size_t n = strspn(a, "0123456789");
	uint64_t size;
	bool last = false;
	const char *rest = a + n;
	if (*rest == ' ') {
		rest++;
		if (strcasecmp(rest, "LAST") != 0)
			rest = NULL;
		else
			last = true;
	} else if (*rest) {
		rest = NULL;
	}
	if (!rest || !parse_u64(a, n, &size)) {
		/* Without a size we cannot tell chunk octets from commands:
		 * the only safe answer is to close (as Postfix does). */
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "BDAT size [LAST]");
		if (*c->req != SMTPD_REQ_CLOSE) {
			p->st = SMTPD_ST_CLOSED;
			*c->req = SMTPD_REQ_CLOSE;
		}
		txn_reset(p);
		return;
	}
	p->bdat_left = size;
	p->bdat_last = last;
	p->bdat_discard = false;
	p->bdat_nocount = false;
	if (p->bdat_fail != SMTP_R__COUNT) {
		p->bdat_discard = true;
		p->bdat_nocount = true;
		p->bdat_reply = p->bdat_fail;
		p->bdat_after = p->st;
		if (last)
			p->bdat_fail = SMTP_R__COUNT;
		p->st = SMTPD_ST_BDAT;
		return;
	}
	enum smtp_reply_id e = bdat_seq(p);
	if (e == SMTP_R__COUNT && p->st == SMTPD_ST_RCPT) {
		int r = body_begin(p, SMTPD_DATA_RAW);
		if (r < 0) {
			e = storage_reply(r);
			txn_end(p);
		}
	}
	if (e != SMTP_R__COUNT) {
		/* RFC 3030 §2: a rejected chunk's octets are still read; then
		 * the session is where it was (or, after a storage error, at
		 * the end of the failed transaction). */
		p->bdat_discard = true;
		p->bdat_reply = e;
		p->bdat_after = p->st;
	}
	p->st = SMTPD_ST_BDAT;
}

/* A BDAT chunk has been read completely. */
static void bdat_chunk_done(struct smtpd_proto *p, struct buf *out,
                            enum smtpd_req *req)
{
	if (p->bdat_discard) {
		p->st = p->bdat_after;
		if (p->bdat_nocount || p->bdat_reply == SMTP_R_STORAGE_FULL ||
		    p->bdat_reply == SMTP_R_STORAGE_ERR)
			reply(p, out, p->bdat_reply);
		else
			bad(p, out, req, p->bdat_reply);
		return;
	}
	if (p->bdat_last)
		smtpd_data_finish(&p->data, data_emit, p);
	enum smtp_reply_id e = data_error_reply(&p->data);
	if (e != SMTP_R__COUNT) {
		reply(p, out, e);
		txn_end(p);
		if (!p->bdat_last)
			p->bdat_fail = e;
		return;
	}
	if (p->bdat_last) {
		body_end(p, out, req);
		return;
	}
	p->st = SMTPD_ST_BDAT_NEXT;
	reply(p, out, SMTP_R_BDAT_OK, (unsigned long long)p->bdat_total);
}

static void cmd_rset(struct cmd_ctx *c)
{
	txn_end(c->p);
	reply(c->p, c->out, SMTP_R_OK);
}

static void cmd_noop(struct cmd_ctx *c)
{
	reply(c->p, c->out, SMTP_R_OK);
}

static void cmd_quit(struct cmd_ctx *c)
{
	txn_reset(c->p);
	reply(c->p, c->out, SMTP_R_BYE);
	c->p->st = SMTPD_ST_CLOSED;
	*c->req = SMTPD_REQ_CLOSE;
}

static void cmd_help(struct cmd_ctx *c)
{
	reply(c->p, c->out, SMTP_R_HELP);
}

static void cmd_vrfy(struct cmd_ctx *c)
{
	if (c->arglen == 0) {
		bad(c->p, c->out, c->req, SMTP_R_SYNTAX, "VRFY address");
		return;
	}
	reply(c->p, c->out, SMTP_R_VRFY);
}

static void cmd_expn(struct cmd_ctx *c)
{
	reply(c->p, c->out, SMTP_R_EXPN);
}

/* RFC 3207 §4. The sequence (EHLO first, not during BDAT) is cmd_seq's. */
static void cmd_starttls(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	if (c->arglen) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX, "STARTTLS");
		return;
	}
	if (p->tls) {
		reply(p, c->out, SMTP_R_TLS_ACTIVE);
		count_bad(p, c->out, c->req);
		return;
	}
	if (p->st != SMTPD_ST_READY) {
		/* MAIL or RCPT given: the envelope would straddle the switch. */
		reply(p, c->out, SMTP_R_TLS_IN_TXN);
		count_bad(p, c->out, c->req);
		return;
	}
	if (!p->cfg.tls_available) {
		reply(p, c->out, SMTP_R_TLS_UNAVAILABLE);
		return;
	}
	reply(p, c->out, SMTP_R_TLS_READY);
	p->st = SMTPD_ST_STARTTLS;
	*c->req = SMTPD_REQ_STARTTLS;
}

/* ---- AUTH (RFC 4954) ------------------------------------------------------ */

/* Forgets the exchange's user and password. */
static void auth_wipe(struct smtpd_proto *p)
{
	explicit_bzero(p->auth_user, sizeof p->auth_user);
	explicit_bzero(p->auth_pw, sizeof p->auth_pw);
	p->auth_pwlen = 0;
}

/* The exchange ends without a verification: back to READY. */
static void auth_end(struct smtpd_proto *p)
{
	auth_wipe(p);
	p->st = p->helo[0] ? SMTPD_ST_READY : SMTPD_ST_INIT;
}

static bool auth_cont_state(enum smtpd_state st)
{
	return st == SMTPD_ST_AUTH_PLAIN || st == SMTPD_ST_AUTH_USER ||
	       st == SMTPD_ST_AUTH_PASS;
}

/* A user name and password are ready: the shell verifies them. */
static void auth_raise(struct smtpd_proto *p, enum smtpd_req *req)
{
	p->st = SMTPD_ST_AUTH;
	*req = SMTPD_REQ_AUTH;
}

/* PLAIN (RFC 4616 §2): [authzid] NUL authcid NUL passwd. An authzid other
 * than the authcid would be acting for someone else: not supported. */
static void auth_plain(struct smtpd_proto *p, const uint8_t *m, size_t n,
                       struct buf *out, enum smtpd_req *req)
{
	const uint8_t *z1 = memchr(m, '\0', n);
	const uint8_t *z2 = z1 ? memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - m))
	                       : NULL;
	if (!z2) {
		reply(p, out, SMTP_R_AUTH_BAD_B64);
		auth_end(p);
		count_bad(p, out, req);
		return;
	}
	size_t zl = (size_t)(z1 - m), ul = (size_t)(z2 - z1 - 1);
	size_t pl = n - (size_t)(z2 + 1 - m);
	if (ul == 0 || memchr(z2 + 1, '\0', pl) ||
	    (zl && (zl != ul || memcmp(m, z1 + 1, ul) != 0))) {
		reply(p, out, SMTP_R_AUTH_FAILED);
		auth_end(p);
		return;
	}
	memcpy(p->auth_user, z1 + 1, ul);
	p->auth_user[ul] = '\0';
	memcpy(p->auth_pw, z2 + 1, pl);
	p->auth_pwlen = pl;
	auth_raise(p, req);
}

/* One response line, in an AUTH_* continuation state (or the initial
 * response of the AUTH command itself). */
static void auth_response(struct smtpd_proto *p, const char *line, size_t len,
                          struct buf *out, enum smtpd_req *req)
{
	/* RFC 4954 §4: "*" cancels the exchange. */
	if (len == 1 && line[0] == '*') {
		reply(p, out, SMTP_R_AUTH_CANCELLED);
		auth_end(p);
		return;
	}
	uint8_t dec[SMTP_CMD_LINE_MAX];
	long n = 0;
	/* "=" is an empty initial response (§4); the empty line an empty
	 * continuation. */
	if (!(len == 1 && line[0] == '=') &&
	    (n = b64_decode(line, len, B64_PAD, dec, sizeof dec)) < 0) {
		reply(p, out, SMTP_R_AUTH_BAD_B64);
		auth_end(p);
		count_bad(p, out, req);
		return;
	}
	switch (p->st) {
	case SMTPD_ST_AUTH_PLAIN:
		auth_plain(p, dec, (size_t)n, out, req);
		break;
	case SMTPD_ST_AUTH_USER:
		if (n == 0 || memchr(dec, '\0', (size_t)n)) {
			reply(p, out, SMTP_R_AUTH_FAILED);
			auth_end(p);
			break;
		}
		memcpy(p->auth_user, dec, (size_t)n);
		p->auth_user[n] = '\0';
		p->st = SMTPD_ST_AUTH_PASS;
		reply(p, out, SMTP_R_AUTH_CHALLENGE, "UGFzc3dvcmQ6");  /* Password: */
		break;
	case SMTPD_ST_AUTH_PASS:
		memcpy(p->auth_pw, dec, (size_t)n);
		p->auth_pwlen = (size_t)n;
		auth_raise(p, req);
		break;
	default:
		RELAY_ASSERT(false);
	}
	explicit_bzero(dec, sizeof dec);
}

/* AUTH mechanism [initial-response]. The sequence (EHLO first, not inside
 * a transaction, not during BDAT) is cmd_seq's. */
static void cmd_auth(struct cmd_ctx *c)
{
	struct smtpd_proto *p = c->p;
	size_t ml = strcspn(c->arg, " ");
	const char *ir = c->arg[ml] == ' ' ? c->arg + ml + 1 : NULL;
	char mech[24];
	log_escape(mech, sizeof mech, c->arg, ml < 20 ? ml : 20);
	snprintf(p->cmd, sizeof p->cmd, "AUTH %s", mech);
	if (ml == 0 || (ir && (*ir == '\0' || strchr(ir, ' ')))) {
		bad(p, c->out, c->req, SMTP_R_SYNTAX,
		    "AUTH mechanism [initial-response]");
		return;
	}
	/* RFC 4954 §4: one successful AUTH per session. */
	if (p->auth_name[0]) {
		reply(p, c->out, SMTP_R_AUTH_ALREADY);
		count_bad(p, c->out, c->req);
		return;
	}
	enum smtpd_state next;
	if (streq_ci(c->arg, ml, "PLAIN"))
		next = SMTPD_ST_AUTH_PLAIN;
	else if (streq_ci(c->arg, ml, "LOGIN"))
		next = SMTPD_ST_AUTH_USER;
	else {
		reply(p, c->out, SMTP_R_AUTH_MECH);
		return;
	}
	/* Passwords never cross the wire in the clear (issue 4 §2). */
	if (!auth_allowed(p)) {
		reply(p, c->out, SMTP_R_AUTH_ENCRYPT);
		return;
	}
	auth_wipe(p);
	p->st = next;
	if (ir) {
		/* The initial response is the first (PLAIN: only) response;
		 * LOGIN clients send the user name this way. */
		auth_response(p, ir, strlen(ir), c->out, c->req);
		return;
	}
	reply(p, c->out, SMTP_R_AUTH_CHALLENGE,
	      next == SMTPD_ST_AUTH_PLAIN ? "" : "VXNlcm5hbWU6");  /* Username: */
}

struct cmd_def {
	const char *verb;
	void (*fn)(struct cmd_ctx *c);
};

static const struct cmd_def cmds[CMD__COUNT] = {
	[CMD_HELO] = {"HELO", cmd_helo},     [CMD_EHLO] = {"EHLO", cmd_ehlo},
	[CMD_MAIL] = {"MAIL", cmd_mail},     [CMD_RCPT] = {"RCPT", cmd_rcpt},
	[CMD_DATA] = {"DATA", cmd_data},     [CMD_BDAT] = {"BDAT", cmd_bdat},
	[CMD_RSET] = {"RSET", cmd_rset},     [CMD_NOOP] = {"NOOP", cmd_noop},
	[CMD_QUIT] = {"QUIT", cmd_quit},     [CMD_HELP] = {"HELP", cmd_help},
	[CMD_VRFY] = {"VRFY", cmd_vrfy},     [CMD_EXPN] = {"EXPN", cmd_expn},
	[CMD_STARTTLS] = {"STARTTLS", cmd_starttls},
	[CMD_AUTH] = {"AUTH", cmd_auth},
};

/* State x command: 0 = allowed, otherwise the sequence error reply + 1.
 * Only command states appear; DATA/BDAT/COMMIT/CLOSED never parse lines.
 * BDAT checks its own sequence (its chunk must be read either way). */
#define E(r) ((uint8_t)((r) + 1))
static const uint8_t cmd_seq[CMD__COUNT][SMTPD_ST__COUNT] = {
	[CMD_MAIL] = {
		[SMTPD_ST_INIT] = E(SMTP_R_SEQ_HELO),
		[SMTPD_ST_MAIL] = E(SMTP_R_SEQ_NESTED_MAIL),
		[SMTPD_ST_RCPT] = E(SMTP_R_SEQ_NESTED_MAIL),
		[SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT),
	},
	[CMD_RCPT] = {
		[SMTPD_ST_INIT] = E(SMTP_R_SEQ_HELO),
		[SMTPD_ST_READY] = E(SMTP_R_SEQ_NEED_MAIL),
		[SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT),
	},
	[CMD_DATA] = {
		[SMTPD_ST_INIT] = E(SMTP_R_SEQ_HELO),
		[SMTPD_ST_READY] = E(SMTP_R_SEQ_NEED_MAIL),
		[SMTPD_ST_MAIL] = E(SMTP_R_SEQ_NEED_RCPT),
		[SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_BDAT_MIX),
	},
	[CMD_HELO] = { [SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT) },
	[CMD_EHLO] = { [SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT) },
	[CMD_HELP] = { [SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT) },
	[CMD_VRFY] = { [SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT) },
	[CMD_EXPN] = { [SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT) },
	[CMD_STARTTLS] = {
		[SMTPD_ST_INIT] = E(SMTP_R_SEQ_HELO),
		[SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT),
	},
	/* RFC 4954 §4: after EHLO, never inside a transaction. */
	[CMD_AUTH] = {
		[SMTPD_ST_INIT] = E(SMTP_R_SEQ_HELO),
		[SMTPD_ST_MAIL] = E(SMTP_R_AUTH_IN_TXN),
		[SMTPD_ST_RCPT] = E(SMTP_R_AUTH_IN_TXN),
		[SMTPD_ST_BDAT_NEXT] = E(SMTP_R_SEQ_IN_BDAT),
	},
};
#undef E

/* One complete command line (CRLF removed, NUL-terminated, no NUL inside). */
static void handle_line(struct smtpd_proto *p, char *line, size_t len,
                        struct buf *out, enum smtpd_req *req)
{
	if (auth_cont_state(p->st)) {
		/* A response in an AUTH exchange: credentials, never logged. */
		snprintf(p->cmd, sizeof p->cmd, "(AUTH response)");
		auth_response(p, line, len, out, req);
		return;
	}
	size_t vl = strcspn(line, " ");
	int cmd = -1;
	/* AUTH arguments are credentials: never logged. */
	log_escape(p->cmd, sizeof p->cmd, line,
	           streq_ci(line, vl, "AUTH") ? vl : len);
	for (int i = 0; i < CMD__COUNT; i++)
		if (streq_ci(line, vl, cmds[i].verb)) {
			cmd = i;
			break;
		}
	if (cmd < 0) {
		bad(p, out, req, SMTP_R_UNKNOWN_CMD);
		return;
	}
	if (cmd != CMD_BDAT)
		p->bdat_fail = SMTP_R__COUNT;
	uint8_t e = cmd_seq[cmd][p->st];
	if (e) {
		bad(p, out, req, (enum smtp_reply_id)(e - 1));
		return;
	}
	struct cmd_ctx c = {
		.p = p, .out = out, .req = req,
		.arg = line + vl + (vl < len ? 1 : 0),
	};
	c.arglen = len - (size_t)(c.arg - line);
	cmds[cmd].fn(&c);
}

/* ---- feeding -------------------------------------------------------------- */

static size_t feed_command(struct smtpd_proto *p, const uint8_t *in, size_t n,
                           struct buf *out, enum smtpd_req *req)
{
	const uint8_t *lf = memchr(in, '\n', n);
	if (p->discard_line) {
		if (!lf)
			return n;
		p->discard_line = false;
		return (size_t)(lf - in) + 1;
	}
	if (!lf) {
		if (n < SMTP_CMD_LINE_MAX)
			return 0;   /* wait for the rest of the line */
		p->discard_line = true;
		snprintf(p->cmd, sizeof p->cmd, "(line too long)");
		if (auth_cont_state(p->st))
			auth_end(p);   /* an over-long response ends the exchange */
		bad(p, out, req, SMTP_R_LINE_TOO_LONG);
		return n;
	}
	size_t used = (size_t)(lf - in) + 1;
	if (used > SMTP_CMD_LINE_MAX) {
		snprintf(p->cmd, sizeof p->cmd, "(line too long)");
		if (auth_cont_state(p->st))
			auth_end(p);
		bad(p, out, req, SMTP_R_LINE_TOO_LONG);
		return used;
	}
	size_t len = used - 1;
	if (len && in[len - 1] == '\r')
		len--;
	char line[SMTP_CMD_LINE_MAX + 1];
	memcpy(line, in, len);
	line[len] = '\0';
	if (memchr(line, '\0', len)) {
		snprintf(p->cmd, sizeof p->cmd, "(command with NUL)");
		if (auth_cont_state(p->st))
			auth_end(p);
		bad(p, out, req, SMTP_R_UNKNOWN_CMD);
		return used;
	}
	handle_line(p, line, len, out, req);
	return used;
}

size_t smtpd_proto_feed(struct smtpd_proto *p, const uint8_t *in, size_t n,
                        struct buf *out, enum smtpd_req *req)
{
	size_t off = 0;
	*req = SMTPD_REQ_NONE;
	/* Replies are bounded per call: a client that pipelines commands and
	 * never reads gets no more than SMTPD_OUT_BATCH (plus one reply)
	 * written for it before the shell has sent them. */
	while (off < n && *req == SMTPD_REQ_NONE && out->len < SMTPD_OUT_BATCH) {
		switch (p->st) {
		case SMTPD_ST_COMMIT:
		case SMTPD_ST_STARTTLS:
		case SMTPD_ST_AUTH:
		case SMTPD_ST_CLOSED:
			return off;
		case SMTPD_ST_DATA: {
			bool done = false;
			off += smtpd_data_feed(&p->data, in + off, n - off, &done,
			                       data_emit, p);
			if (done)
				body_end(p, out, req);
			break;
		}
		case SMTPD_ST_BDAT: {
			uint64_t k = n - off;
			if (k > p->bdat_left)
				k = p->bdat_left;
			if (!p->bdat_discard) {
				bool done;
				smtpd_data_feed(&p->data, in + off, (size_t)k, &done,
				                data_emit, p);
				p->bdat_total += k;
			}
			off += (size_t)k;
			p->bdat_left -= k;
			if (p->bdat_left == 0)
				bdat_chunk_done(p, out, req);
			break;
		}
		default: {
			size_t k = feed_command(p, in + off, n - off, out, req);
			if (k == 0)
				return off;
			off += k;
			if (*req == SMTPD_REQ_STARTTLS) {
				/* CVE-2011-0411: bytes pipelined after STARTTLS
				 * were sent in plaintext; run inside TLS they
				 * would pass for the client's. Thrown away. */
				if (off < n)
					log_info("s=%s: %zu bytes sent after STARTTLS "
					         "before the handshake discarded",
					         p->cfg.sid, n - off);
				return n;
			}
			/* A zero-length BDAT chunk completes without octets. */
			if (p->st == SMTPD_ST_BDAT && p->bdat_left == 0)
				bdat_chunk_done(p, out, req);
			break;
		}
		}
	}
	return off;
}

/* ---- life cycle ----------------------------------------------------------- */

struct smtpd_proto *smtpd_proto_new(const struct smtpd_proto_cfg *cfg,
                                    const struct smtpd_sink_ops *ops,
                                    void *ctx)
{
	struct smtpd_proto *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->cfg = *cfg;
	if (p->cfg.max_bad_commands == 0)
		p->cfg.max_bad_commands = 1;
	p->ops = ops;
	p->ctx = ctx;
	p->st = SMTPD_ST_INIT;
	p->tls = cfg->mode == CONF_LISTEN_SMTPS;
	snprintf(p->cmd, sizeof p->cmd, "(none)");
	p->bdat_fail = SMTP_R__COUNT;
	return p;
}

void smtpd_proto_free(struct smtpd_proto *p)
{
	if (!p)
		return;
	txn_reset(p);
	auth_wipe(p);
	free(p);
}

void smtpd_proto_greet(struct smtpd_proto *p, struct buf *out)
{
	buf_printf(out, "220 %s ESMTP relayd\r\n", p->cfg.hostname);
}

/* The TLS handshake after STARTTLS ended. */
static void starttls_done(struct smtpd_proto *p, int status)
{
	if (status < 0) {
		p->st = SMTPD_ST_CLOSED;
		return;
	}
	/* RFC 3207 §4.2: discard all knowledge obtained from the client
	 * before TLS: the EHLO argument, any transaction (none: STARTTLS
	 * is refused inside one), the extensions it asked for. The client
	 * must send EHLO again. The error count stays: it is the server's. */
	txn_reset(p);
	p->helo[0] = '\0';
	p->esmtp = false;
	p->bdat_fail = SMTP_R__COUNT;
	/* An AUTH done in plaintext (auth_plaintext) is forgotten too. */
	auth_wipe(p);
	p->auth_name[0] = '\0';
	p->cred = NULL;
	p->tls = true;
	p->st = SMTPD_ST_INIT;
}

/* The shell checked the user and password of SMTPD_REQ_AUTH. */
static void auth_done(struct smtpd_proto *p, int status, struct buf *out)
{
	snprintf(p->cmd, sizeof p->cmd, "AUTH");
	switch (status) {
	case SMTPD_AUTH_OK:
	{
		/* The name as the file spells it (names match any case). */
		const char *n = p->cred ? cred_name(p->cred) : p->auth_user;
		log_escape(p->auth_name, sizeof p->auth_name, n,
		           strnlen(n, sizeof p->auth_name - 1));
	}
		reply(p, out, SMTP_R_AUTH_OK);
		break;
	case SMTPD_AUTH_FAILED:
		p->cred = NULL;
		reply(p, out, SMTP_R_AUTH_FAILED);
		break;
	case SMTPD_AUTH_LOCKED:
		p->cred = NULL;
		reply(p, out, SMTP_R_AUTH_LOCKED);
		break;
	case SMTPD_AUTH_LOCKED_IP:
	case SMTPD_AUTH_UNTRACKED:
		p->cred = NULL;
		auth_wipe(p);
		reply(p, out, status == SMTPD_AUTH_LOCKED_IP ? SMTP_R_AUTH_LOCKED_IP
		                                             : SMTP_R_AUTH_UNTRACKED);
		p->st = SMTPD_ST_CLOSED;
		return;
	default:
		p->cred = NULL;
		reply(p, out, SMTP_R_AUTH_TEMP);
		break;
	}
	auth_end(p);
}

void smtpd_proto_done(struct smtpd_proto *p, int status, struct buf *out)
{
	if (p->st == SMTPD_ST_CLOSED) {
		/* Timed out or shut down while the commit was running. */
		txn_reset(p);
		auth_wipe(p);
		return;
	}
	if (p->st == SMTPD_ST_STARTTLS) {
		starttls_done(p, status);
		return;
	}
	if (p->st == SMTPD_ST_AUTH) {
		auth_done(p, status, out);
		return;
	}
	RELAY_ASSERT(p->st == SMTPD_ST_COMMIT);
	if (status == 0)
		reply(p, out, SMTP_R_QUEUED, p->txn.qid);
	else if (status == -EDQUOT)
		reply(p, out, SMTP_R_QUOTA);   /* the charge was refused */
	else if (status == -ENOKEY)
		reply(p, out, SMTP_R_DKIM_NO_KEY);   /* dkim_required */
	else if (status == -EKEYREJECTED)
		reply(p, out, SMTP_R_DKIM_FAILED);   /* dkim_required */
	else
		reply(p, out, storage_reply(status));
	txn_end(p);
}

enum smtpd_req smtpd_proto_close(struct smtpd_proto *p, enum smtp_reply_id id,
                                 struct buf *out)
{
	if (p->st != SMTPD_ST_CLOSED) {
		if (p->st != SMTPD_ST_COMMIT)
			txn_reset(p);
		snprintf(p->cmd, sizeof p->cmd, "(%s)",
		         id == SMTP_R_TIMEOUT     ? "timeout"
		         : id == SMTP_R_DATA_SLOW ? "data rate"
		         : id == SMTP_R_LIFETIME  ? "lifetime"
		                                  : "shutdown");
		reply(p, out, id);
		p->st = SMTPD_ST_CLOSED;
		/* A line being skipped is not waited for any more. */
		p->discard_line = false;
	}
	return SMTPD_REQ_CLOSE;
}

enum smtpd_req smtpd_proto_timeout(struct smtpd_proto *p, struct buf *out)
{
	return smtpd_proto_close(p, SMTP_R_TIMEOUT, out);
}

enum smtpd_req smtpd_proto_shutdown(struct smtpd_proto *p, struct buf *out)
{
	return smtpd_proto_close(p, SMTP_R_SHUTDOWN, out);
}

bool smtpd_proto_in_line(const struct smtpd_proto *p)
{
	return p->discard_line;
}

enum smtpd_state smtpd_proto_state(const struct smtpd_proto *p)
{
	return p->st;
}

const struct smtpd_txn *smtpd_proto_txn(const struct smtpd_proto *p)
{
	return &p->txn;
}

const char *smtpd_proto_with(const struct smtpd_proto *p)
{
	/* RFC 3848 §2: ESMTPS for ESMTP over TLS, ESMTPA with AUTH,
	 * ESMTPSA with both. RFC 6531 §3.7.3: a transaction that used the
	 * SMTPUTF8 extension (MAIL FROM ... SMTPUTF8) is UTF8SMTP, with the
	 * same S and A suffixes. HELO has no such keyword (and no extension:
	 * a HELO client's SMTPUTF8 parameter does not make it ESMTP). */
	static const char *const kw[2][2][2] = {
		/* [utf8][tls][auth] */
		{{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
		{{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}},
	};
	if (!p->esmtp)
		return "SMTP";
	bool utf8 = (p->txn.flags & QUEUE_F_SMTPUTF8) != 0;
	return kw[utf8][p->tls][p->auth_name[0] != '\0'];
}

void smtpd_proto_auth_request(const struct smtpd_proto *p, const char **user,
                              const void **pw, size_t *pwlen)
{
	*user = p->auth_user;
	*pw = p->auth_pw;
	*pwlen = p->auth_pwlen;
}

void smtpd_proto_set_cred(struct smtpd_proto *p, const struct cred *c)
{
	p->cred = c;
}

const char *smtpd_proto_auth_name(const struct smtpd_proto *p)
{
	return p->auth_name;
}

const struct cred *smtpd_proto_cred(const struct smtpd_proto *p)
{
	return p->auth_name[0] ? p->cred : NULL;
}

bool smtpd_proto_tls(const struct smtpd_proto *p)
{
	return p->tls;
}

enum conf_listen_mode smtpd_proto_mode(const struct smtpd_proto *p)
{
	return p->cfg.mode;
}

const char *smtpd_proto_helo(const struct smtpd_proto *p)
{
	return p->helo;
}
