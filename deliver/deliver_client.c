/*
 * deliver/deliver_client.c - SMTP client protocol core (see the header):
 * the reply parser, the session state machine and the transaction's reply
 * bookkeeping, dot-stuffing of the body, and the reading of replies
 * (enhanced status codes, throttling). Pure: bytes in, commands out.
 */
#include "deliver/deliver_client.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/b64.h"
#include "common/smtp.h"

enum cl_state {
	CL_GREETING,
	CL_EHLO,
	CL_HELO,
	CL_STARTTLS,
	CL_TLS,             /* the shell is doing the handshake */
	CL_EHLO2,
	CL_AUTH_PLAIN,
	CL_AUTH_LOGIN,      /* AUTH LOGIN sent: 334 for the user name */
	CL_AUTH_LOGIN_USER, /* user name sent: 334 for the password */
	CL_AUTH_LOGIN_PASS, /* password sent: 235 */
	CL_READY,
	CL_TXN,             /* replies to RSET/MAIL/RCPT/DATA */
	CL_BODY,            /* the shell streams the body */
	CL_DOT,             /* the reply to the final dot */
	CL_QUIT,
	CL_FAILED,
	CL_CLOSED,
	CL__COUNT
};

/* One command of a transaction, waiting for its reply. */
enum cl_cmd { CMD_RSET, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD__COUNT };

/*
 * Each state: its name (for logs), how long the server may take (RFC 5321
 * §4.5.3.2, in seconds, for the default delivery_timeout of 5 minutes:
 * deliver_client_timeout() scales them), and what we wait for, for the
 * error that ends a session on a timeout. 0 s: nothing to wait for.
 * CL_TXN waits for the reply to one of its commands: cl_txn_waits[].
 */
struct cl_state_def {
	const char *name;
	unsigned timeout_s;
	const char *desc;
};

static const struct cl_state_def cl_states[CL__COUNT] = {
	/* §4.5.3.2.1: initial 220 message, 5 minutes. */
	[CL_GREETING] = {"greeting", 300, "while waiting for the greeting"},
	[CL_EHLO] = {"ehlo", 300, "while waiting for the reply to EHLO"},
	[CL_HELO] = {"helo", 300, "while waiting for the reply to HELO"},
	[CL_STARTTLS] = {"starttls", 300,
	                 "while waiting for the reply to STARTTLS"},
	[CL_TLS] = {"tls", 300, "during the TLS handshake"},
	[CL_EHLO2] = {"ehlo-tls", 300,
	              "while waiting for the reply to EHLO after STARTTLS"},
	[CL_AUTH_PLAIN] = {"auth-plain", 300,
	                   "while waiting for the reply to AUTH PLAIN"},
	[CL_AUTH_LOGIN] = {"auth-login", 300,
	                   "while waiting for the reply to AUTH LOGIN"},
	[CL_AUTH_LOGIN_USER] = {"auth-login-user", 300,
	                        "while waiting for the reply to the AUTH "
	                        "LOGIN user name"},
	[CL_AUTH_LOGIN_PASS] = {"auth-login-pass", 300,
	                        "while waiting for the reply to the AUTH "
	                        "LOGIN password"},
	[CL_READY] = {"ready", 0, "while idle"},
	[CL_TXN] = {"txn", 300, "while waiting for a reply in the transaction"},
	/* §4.5.3.2.5: data block, 3 minutes (each write of the body). */
	[CL_BODY] = {"body", 180, "while sending the message"},
	/* §4.5.3.2.6: DATA termination, 10 minutes. */
	[CL_DOT] = {"dot", 600,
	            "while waiting for the reply to the end of the message"},
	[CL_QUIT] = {"quit", 300, "while waiting for the reply to QUIT"},
	[CL_FAILED] = {"failed", 0, "after the session failed"},
	[CL_CLOSED] = {"closed", 0, "after the session closed"},
};

static const struct cl_state_def cl_txn_waits[CMD__COUNT] = {
	[CMD_RSET] = {"rset", 300, "while waiting for the reply to RSET"},
	/* §4.5.3.2.2: MAIL, 5 minutes. */
	[CMD_MAIL] = {"mail", 300, "while waiting for the reply to MAIL FROM"},
	/* §4.5.3.2.3: RCPT, 5 minutes. */
	[CMD_RCPT] = {"rcpt", 300, "while waiting for the reply to RCPT TO"},
	/* §4.5.3.2.4: DATA initiation, 2 minutes. */
	[CMD_DATA] = {"data", 120, "while waiting for the reply to DATA"},
};

#define TXN_MAX_EXTRA 3   /* RSET, MAIL, DATA besides the RCPTs */

struct deliver_client {
	enum cl_state st;
	char *helo, *user, *password;
	bool starttls, starttls_may, tls_done, pipelining;
	unsigned ext;
	uint64_t size_max;          /* SIZE in the last EHLO; 0: none */

	/* Input: raw bytes, and the reply being collected. */
	struct buf in;
	struct deliver_reply cur;
	size_t cur_len, cur_lines;
	bool cur_open;              /* a multi-line reply is under way */

	/* The transaction. */
	const struct deliver_client_msg *msg;
	struct deliver_reply *res;  /* nrcpt results */
	size_t res_cap;
	size_t ncmd, nsent, nanswered;  /* commands in the txn */
	bool mail_ok, data_ok, empty_body;
	size_t accepted;
	bool need_rset;             /* a transaction happened on this session */
	bool txn_rset;              /* this one starts with RSET */
	bool body_bol, body_crlf;   /* at a line start; ended with CRLF */
	int body_cr;                /* the last byte was CR */

	enum deliver_client_fail fail;
	struct deliver_reply err;
};

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

struct deliver_client *deliver_client_new(const struct deliver_client_opts *o)
{
	struct deliver_client *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->helo = strdup(o->helo ? o->helo : "localhost");
	c->user = dup_or_null(o->user);
	c->password = dup_or_null(o->password ? o->password : (o->user ? "" : NULL));
	c->starttls = o->starttls;
	c->starttls_may = o->starttls_may;
	/* Room for a whole reply at its bounds (the shell hands over what
	 * one read got, and step() consumes complete lines); 4 lines of the
	 * maximum were too few for a legitimate multi-line reply, or for a
	 * long run of pipelined replies, arriving in one read. */
	buf_init(&c->in, DELIVER_REPLY_LINES_MAX * (DELIVER_REPLY_LINE_MAX + 2));
	if (!c->helo || (o->user && (!c->user || !c->password))) {
		deliver_client_free(c);
		return NULL;
	}
	return c;
}

void deliver_client_free(struct deliver_client *c)
{
	if (!c)
		return;
	free(c->helo);
	free(c->user);
	if (c->password) {
		/* Not left behind in freed memory. */
		volatile char *p = c->password;
		while (*p)
			*p++ = 0;
		free(c->password);
	}
	buf_free(&c->in);
	free(c->res);
	free(c);
}

/* ---- replies ------------------------------------------------------------ */

/* A reply of ours: code 0 (no server reply; temporary), no enhanced
 * code. */
static void set_text(struct deliver_reply *r, const char *s)
{
	r->code = 0;
	r->cls = 0;
	r->subject = r->detail = 0;
	snprintf(r->text, sizeof r->text, "%s", s);
}

/* The enhanced status code (RFC 3463) at the start of r's text after the
 * basic code ("550 5.1.1 text"), into r's numbers: once, here, so that
 * nobody downstream reads the text again. The class must match the
 * reply's, and only 2, 4 and 5 are classes. */
static void parse_enh(struct deliver_reply *r)
{
	r->cls = 0;
	r->subject = r->detail = 0;
	const char *p = r->text;
	if (strlen(p) <= 4 || p[3] != ' ')
		return;
	p += 4;
	int a, b, cc, len = 0;
	/* strspn: %d alone would take "5.-1.1" and " 5.1.1". */
	if (sscanf(p, "%1d.%3d.%3d%n", &a, &b, &cc, &len) == 3 &&
	    strspn(p, "0123456789.") == (size_t)len &&
	    (p[len] == ' ' || p[len] == '\0') && a == r->code / 100 &&
	    (a == 2 || a == 4 || a == 5)) {
		r->cls = (uint8_t)a;
		r->subject = (uint16_t)b;
		r->detail = (uint16_t)cc;
	}
}

void deliver_reply_make(struct deliver_reply *r, int code, const char *text)
{
	r->code = code;
	snprintf(r->text, sizeof r->text, "%s", text);
	parse_enh(r);
}

/* Our own refusal from common/smtp.h's table ("553 5.6.7 ..."), with its
 * numbers. */
static void set_local(struct deliver_reply *r, enum smtp_reply_id id)
{
	const struct smtp_reply_def *d = &smtp_replies[id];
	char t[DELIVER_REPLY_TEXT_MAX];
	snprintf(t, sizeof t, "%u %s %s", d->code, d->enh, d->text);
	deliver_reply_make(r, d->code, t);
}

static void fail(struct deliver_client *c, enum deliver_client_fail f,
                 const struct deliver_reply *r, const char *why)
{
	c->fail = f;
	if (r)
		c->err = *r;
	else
		set_text(&c->err, why);
	c->st = CL_FAILED;
}

int deliver_client_input(struct deliver_client *c, const void *p, size_t n)
{
	if (c->st == CL_FAILED || c->st == CL_CLOSED)
		return 0;
	/* RFC 3207 §5: plaintext that arrives after the 220 to STARTTLS,
	 * before the handshake, is dropped like what came with the 220. */
	if (c->st == CL_TLS)
		return 0;
	int r = buf_append(&c->in, p, n);
	if (r < 0)   /* the header promises that step() reports it */
		fail(c, DELIVER_FAIL_PROTOCOL, NULL,
		     r == -ENOBUFS ? "reply too long" : "out of memory");
	return r;
}

/* Adds one line's text to the reply being collected: printable ASCII
 * (and UTF-8 bytes) only, lines joined by a space. */
static void add_text(struct deliver_client *c, const char *p, size_t n)
{
	struct deliver_reply *r = &c->cur;
	if (c->cur_len && c->cur_len + 1 < sizeof r->text)
		r->text[c->cur_len++] = ' ';
	for (size_t i = 0; i < n && c->cur_len + 1 < sizeof r->text; i++) {
		unsigned char ch = (unsigned char)p[i];
		r->text[c->cur_len++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	r->text[c->cur_len] = '\0';
}

/* RFC 1870 §4: "SIZE" [SP size-value], size-value = 1*20DIGIT; 0 (or
 * no value) means no fixed maximum. Returns the limit, or 0 for none or
 * for a value that is not a number of bytes we can hold (a malformed
 * value tells us nothing, and refusing to learn from it is safer than
 * guessing a limit). */
uint64_t deliver_client_parse_size(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n && p[i] == ' ')
		i++;
	if (i == n)
		return 0;
	uint64_t v = 0;
	size_t digits = 0;
	for (; i < n && p[i] != ' '; i++, digits++) {
		if (p[i] < '0' || p[i] > '9' || digits >= 20)
			return 0;
		uint64_t d = (uint64_t)(p[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	while (i < n && p[i] == ' ')
		i++;
	return i == n ? v : 0;   /* trailing words: not RFC 1870's */
}

/* EHLO keywords (RFC 5321 §4.1.1.1): one per line after the first. */
static void parse_ext(struct deliver_client *c, const char *p, size_t n)
{
	char kw[32];
	size_t k = 0;
	while (k < n && k + 1 < sizeof kw && p[k] != ' ' && p[k] != '=') {
		kw[k] = (char)toupper((unsigned char)p[k]);
		k++;
	}
	kw[k] = '\0';
	if (strcmp(kw, "PIPELINING") == 0)
		c->ext |= DELIVER_EXT_PIPELINING;
	else if (strcmp(kw, "STARTTLS") == 0)
		c->ext |= DELIVER_EXT_STARTTLS;
	else if (strcmp(kw, "SIZE") == 0 && (k == n || p[k] == ' ')) {
		c->ext |= DELIVER_EXT_SIZE;
		c->size_max = deliver_client_parse_size(p + k, n - k);
	}
	else if (strcmp(kw, "8BITMIME") == 0)
		c->ext |= DELIVER_EXT_8BITMIME;
	else if (strcmp(kw, "DSN") == 0)
		c->ext |= DELIVER_EXT_DSN;
	else if (strcmp(kw, "SMTPUTF8") == 0)
		c->ext |= DELIVER_EXT_SMTPUTF8;
	else if (strcmp(kw, "AUTH") == 0) {
		/* "AUTH PLAIN LOGIN" (also the old "AUTH=LOGIN" form). */
		const char *q = p + k, *end = p + n;
		while (q < end) {
			while (q < end && (*q == ' ' || *q == '='))
				q++;
			const char *w = q;
			while (q < end && *q != ' ')
				q++;
			if (q - w == 5 && strncasecmp(w, "PLAIN", 5) == 0)
				c->ext |= DELIVER_EXT_AUTH_PLAIN;
			else if (q - w == 5 && strncasecmp(w, "LOGIN", 5) == 0)
				c->ext |= DELIVER_EXT_AUTH_LOGIN;
		}
	}
}

/* Takes the next complete reply off the input: 1 (in c->cur), 0 (needs
 * more bytes) or -EPROTO / -ENOBUFS. */
static int next_reply(struct deliver_client *c)
{
	for (;;) {
		if (c->in.len == 0)
			return 0;
		uint8_t *nl = memchr(c->in.data, '\n', c->in.len);
		if (!nl) {
			/* + 1: the CR of a line at the limit, LF to come. */
			if (c->in.len > DELIVER_REPLY_LINE_MAX + 1)
				return -ENOBUFS;
			return 0;
		}
		size_t linelen = (size_t)(nl - c->in.data) + 1;
		size_t n = linelen - 1;
		const char *line = (const char *)c->in.data;
		if (n && line[n - 1] == '\r')
			n--;
		if (n > DELIVER_REPLY_LINE_MAX)
			return -ENOBUFS;
		int code = -1;
		bool more = false;
		if (n >= 3 && line[0] >= '2' && line[0] <= '5' &&
		    isdigit((unsigned char)line[1]) && isdigit((unsigned char)line[2]) &&
		    (n == 3 || line[3] == ' ' || line[3] == '-')) {
			code = (line[0] - '0') * 100 + (line[1] - '0') * 10 +
			       (line[2] - '0');
			more = n > 3 && line[3] == '-';
		}
		if (code < 0 || (c->cur_open && code != c->cur.code))
			return -EPROTO;
		if (!c->cur_open) {
			c->cur.code = code;
			c->cur_len = 0;
			c->cur_lines = 0;
			c->cur.text[0] = '\0';
			add_text(c, line, n);      /* "250 first line" */
			if (more)   /* "550-5.1.1 a" kept as "550 5.1.1 a ..." */
				c->cur.text[3] = ' ';
			if (c->st == CL_EHLO || c->st == CL_EHLO2) {
				c->ext = 0;
				c->size_max = 0;
			}
		} else {
			const char *t = n > 4 ? line + 4 : "";
			size_t tn = n > 4 ? n - 4 : 0;
			/* Keywords in a 250; a refusal's lines are text. */
			if ((c->st == CL_EHLO || c->st == CL_EHLO2) &&
			    c->cur.code / 100 == 2)
				parse_ext(c, t, tn);
			else
				add_text(c, t, tn);
		}
		if (++c->cur_lines > DELIVER_REPLY_LINES_MAX)
			return -ENOBUFS;
		buf_consume(&c->in, linelen);
		c->cur_open = more;
		if (!more) {
			parse_enh(&c->cur);
			return 1;
		}
	}
}

void deliver_reply_status(const struct deliver_reply *r, char out[16])
{
	if (r->cls) {
		snprintf(out, 16, "%u.%u.%u", r->cls, r->subject, r->detail);
		return;
	}
	int cls = r->code / 100;
	snprintf(out, 16, "%d.0.0", cls >= 2 && cls <= 5 && cls != 3 ? cls : 4);
}

/* ---- commands ----------------------------------------------------------- */

/* Appends p in padded base64 (AUTH, RFC 4954 §4). */
static void b64(struct buf *out, const uint8_t *p, size_t n)
{
	char *t = malloc(B64_ENCODED_LEN(n, 1) + 1);
	if (!t)
		return;   /* the server refuses the short line: the session fails */
	size_t len = b64_encode(p, n, B64_PAD, t);
	buf_append(out, t, len);
	free(t);
}

static void put(struct buf *out, const char *s)
{
	buf_append(out, s, strlen(s));
}

static void send_ehlo(struct deliver_client *c, struct buf *out)
{
	put(out, "EHLO ");
	put(out, c->helo);
	put(out, "\r\n");
}

/* AUTH after EHLO (and TLS), or straight to READY. */
static void after_ehlo(struct deliver_client *c, struct buf *out)
{
	c->pipelining = c->ext & DELIVER_EXT_PIPELINING;
	if (!c->user) {
		c->st = CL_READY;
		return;
	}
	if (c->ext & DELIVER_EXT_AUTH_PLAIN) {
		/* RFC 4616: authzid NUL authcid NUL passwd. */
		size_t ul = strlen(c->user), pl = strlen(c->password);
		uint8_t *tmp = malloc(ul + pl + 2);
		if (!tmp) {
			fail(c, DELIVER_FAIL_PROTOCOL, NULL, "out of memory");
			return;
		}
		tmp[0] = 0;
		memcpy(tmp + 1, c->user, ul);
		tmp[1 + ul] = 0;
		memcpy(tmp + 2 + ul, c->password, pl);
		put(out, "AUTH PLAIN ");
		b64(out, tmp, ul + pl + 2);
		put(out, "\r\n");
		memset(tmp, 0, ul + pl + 2);
		free(tmp);
		c->st = CL_AUTH_PLAIN;
	} else if (c->ext & DELIVER_EXT_AUTH_LOGIN) {
		put(out, "AUTH LOGIN\r\n");
		c->st = CL_AUTH_LOGIN;
	} else {
		fail(c, DELIVER_FAIL_NO_AUTH, NULL,
		     "the server offers no AUTH PLAIN or LOGIN, and credentials "
		     "are configured");
	}
}

static enum cl_cmd txn_cmd(const struct deliver_client *c, size_t k,
                           size_t *rcpt)
{
	if (c->txn_rset) {
		if (k == 0)
			return CMD_RSET;
		k--;
	}
	if (k == 0)
		return CMD_MAIL;
	if (k - 1 < c->msg->nrcpt) {
		*rcpt = k - 1;
		return CMD_RCPT;
	}
	return CMD_DATA;
}

static void write_cmd(struct deliver_client *c, size_t k, struct buf *out)
{
	const struct deliver_client_msg *m = c->msg;
	size_t i = 0;
	char num[32];
	switch (txn_cmd(c, k, &i)) {
	case CMD_RSET:
		put(out, "RSET\r\n");
		break;
	case CMD_MAIL:
		put(out, "MAIL FROM:<");
		put(out, m->sender);
		put(out, ">");
		if (m->size && (c->ext & DELIVER_EXT_SIZE)) {
			snprintf(num, sizeof num, " SIZE=%llu",
			         (unsigned long long)m->size);
			put(out, num);
		}
		/* Without 8BITMIME only a 7-bit body gets here (see
		 * deliver_client_send), and it goes without BODY=. */
		if (m->body_8bit && (c->ext & DELIVER_EXT_8BITMIME))
			put(out, " BODY=8BITMIME");
		if (m->smtputf8)
			put(out, " SMTPUTF8");
		if (c->ext & DELIVER_EXT_DSN) {
			if (m->ret) {
				put(out, " RET=");
				put(out, m->ret);
			}
			if (m->envid) {
				put(out, " ENVID=");
				put(out, m->envid);
			}
		}
		put(out, "\r\n");
		break;
	case CMD_RCPT:
		put(out, "RCPT TO:<");
		put(out, m->rcpt[i]);
		put(out, ">");
		if (c->ext & DELIVER_EXT_DSN) {
			if (m->notify && m->notify[i]) {
				put(out, " NOTIFY=");
				put(out, m->notify[i]);
			}
			if (m->orcpt && m->orcpt[i]) {
				put(out, " ORCPT=");
				put(out, m->orcpt[i]);
			}
		}
		put(out, "\r\n");
		break;
	case CMD_DATA:
		put(out, "DATA\r\n");
		break;
	case CMD__COUNT:
		break;
	}
}

/* Sends what may go out now: everything with PIPELINING, else the next
 * command (after MAIL or every RCPT failing, the rest is skipped). */
static void txn_send(struct deliver_client *c, struct buf *out)
{
	if (c->pipelining) {
		while (c->nsent < c->ncmd)
			write_cmd(c, c->nsent++, out);
	} else if (c->nsent == c->nanswered && c->nsent < c->ncmd) {
		write_cmd(c, c->nsent++, out);
	}
}

void deliver_client_send(struct deliver_client *c,
                         const struct deliver_client_msg *m, struct buf *out)
{
	if (c->st != CL_READY)
		return;
	c->msg = m;
	if (m->nrcpt > c->res_cap) {
		struct deliver_reply *r = realloc(c->res, m->nrcpt * sizeof *r);
		if (!r) {
			fail(c, DELIVER_FAIL_PROTOCOL, NULL, "out of memory");
			return;
		}
		c->res = r;
		c->res_cap = m->nrcpt;
	}
	for (size_t i = 0; i < m->nrcpt; i++)
		set_text(&c->res[i], "no reply");
	c->mail_ok = c->data_ok = c->empty_body = false;
	c->accepted = 0;
	/* txn_cmd() reads txn_rset, not need_rset, which already says "RSET
	 * before the next one" while this one is under way. */
	c->txn_rset = c->need_rset;
	c->ncmd = (c->txn_rset ? 1 : 0) + 1 + m->nrcpt + 1;
	c->nsent = c->nanswered = 0;
	c->st = CL_TXN;

	/* RFC 6531 §3.4: never send an SMTPUTF8 message to a server that does
	 * not offer it; the message cannot go this way. RFC 6152 §3: nor
	 * 8-bit content to one without 8BITMIME. A message declared 8BITMIME
	 * whose body is in fact 7-bit goes without BODY= (write_cmd); a
	 * truly 8-bit one is refused, not converted to quoted-printable or
	 * base64: that would break its DKIM signatures. */
	enum smtp_reply_id refuse = SMTP_R__COUNT;
	if (m->smtputf8 && !(c->ext & DELIVER_EXT_SMTPUTF8))
		refuse = SMTP_R_DLV_NO_UTF8;
	else if (m->body_8bit && !m->body_7bit &&
	         !(c->ext & DELIVER_EXT_8BITMIME))
		refuse = SMTP_R_DLV_NO_8BIT;
	if (refuse != SMTP_R__COUNT) {
		for (size_t i = 0; i < m->nrcpt; i++)
			set_local(&c->res[i], refuse);
		c->ncmd = 0;   /* DONE on the next step */
		return;
	}
	c->need_rset = true;
	txn_send(c, out);
}

/* ---- body --------------------------------------------------------------- */

void deliver_client_body(struct deliver_client *c, const uint8_t *p, size_t n,
                         struct buf *out)
{
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (c->body_bol && p[i] == '.') {
			/* RFC 5321 §4.5.2: a line starting with "." gets one
			 * more. */
			buf_append(out, p + start, i - start);
			buf_append(out, ".", 1);
			start = i;
		}
		c->body_bol = p[i] == '\n' && c->body_cr;
		c->body_cr = p[i] == '\r';
	}
	buf_append(out, p + start, n - start);
	if (n)
		c->body_crlf = c->body_bol;
}

void deliver_client_body_end(struct deliver_client *c, struct buf *out)
{
	if (c->st != CL_BODY)
		return;
	if (!c->body_crlf)
		put(out, "\r\n");
	put(out, ".\r\n");
	c->st = CL_DOT;
}

void deliver_client_quit(struct deliver_client *c, struct buf *out)
{
	if (c->st != CL_READY)
		return;
	put(out, "QUIT\r\n");
	c->st = CL_QUIT;
}

void deliver_client_tls_ready(struct deliver_client *c, struct buf *out)
{
	if (c->st != CL_TLS)
		return;
	c->tls_done = true;
	/* RFC 3207 §4.2: forget everything learnt before TLS. */
	c->ext = 0;
	c->size_max = 0;
	send_ehlo(c, out);
	c->st = CL_EHLO2;
}

/* ---- the state machine -------------------------------------------------- */

static bool ok2(int code)
{
	return code >= 200 && code < 300;
}

/* One reply inside a transaction. Returns an event or WAIT. */
static enum deliver_client_ev txn_reply(struct deliver_client *c,
                                        struct buf *out)
{
	const struct deliver_reply *r = &c->cur;
	size_t i = 0;
	enum cl_cmd cmd = txn_cmd(c, c->nanswered, &i);
	c->nanswered++;
	switch (cmd) {
	case CMD_RSET:
		if (!ok2(r->code)) {
			fail(c, DELIVER_FAIL_PROTOCOL, r, NULL);
			return DELIVER_CL_FAILED;
		}
		break;
	case CMD_MAIL:
		c->mail_ok = ok2(r->code);
		if (!c->mail_ok)
			for (size_t k = 0; k < c->msg->nrcpt; k++)
				c->res[k] = *r;
		break;
	case CMD_RCPT:
		if (!c->mail_ok)
			break;   /* answered MAIL's failure already */
		c->res[i] = *r;
		if (ok2(r->code)) {
			c->accepted++;
			c->res[i].code = 0;     /* decided by DATA and the dot */
		}
		break;
	case CMD_DATA:
		if (r->code == 354) {
			c->body_bol = true;
			c->body_cr = 0;
			c->body_crlf = true;
			if (c->mail_ok && c->accepted) {
				c->st = CL_BODY;
				return DELIVER_CL_BODY;
			}
			/* Pipelined DATA accepted with no recipient: end it
			 * empty (RFC 2920 §3.1); its reply means nothing. */
			c->empty_body = true;
			put(out, ".\r\n");
			c->st = CL_DOT;
			return DELIVER_CL_WAIT;
		}
		if (c->mail_ok)
			for (size_t k = 0; k < c->msg->nrcpt; k++)
				if (c->res[k].code == 0)
					c->res[k] = *r;
		c->st = CL_READY;
		return DELIVER_CL_DONE;
	case CMD__COUNT:
		break;
	}
	if (!c->pipelining) {
		/* Without pipelining, stop early where the rest is moot. */
		size_t j = 0;
		enum cl_cmd next = c->nanswered < c->ncmd ?
		                   txn_cmd(c, c->nanswered, &j) : CMD_DATA;
		if ((cmd == CMD_MAIL && !c->mail_ok) ||
		    (next == CMD_DATA && c->accepted == 0)) {
			c->st = CL_READY;
			return DELIVER_CL_DONE;
		}
	}
	txn_send(c, out);
	return DELIVER_CL_WAIT;
}

static enum deliver_client_ev on_reply(struct deliver_client *c,
                                       struct buf *out)
{
	const struct deliver_reply *r = &c->cur;

	/* RFC 5321 §3.8: 421 means the server is closing, in any state. */
	if (r->code == 421 && c->st != CL_QUIT) {
		fail(c, DELIVER_FAIL_CLOSED, r, NULL);
		return DELIVER_CL_FAILED;
	}
	switch (c->st) {
	case CL_GREETING:
		if (r->code != 220) {
			fail(c, DELIVER_FAIL_GREETING, r, NULL);
			return DELIVER_CL_FAILED;
		}
		send_ehlo(c, out);
		c->st = CL_EHLO;
		return DELIVER_CL_WAIT;
	case CL_EHLO:
		if (!ok2(r->code)) {
			/* An old server without EHLO: HELO, unless we need
			 * an extension (STARTTLS, AUTH). */
			if (r->code >= 500 && !c->starttls && !c->user) {
				put(out, "HELO ");
				put(out, c->helo);
				put(out, "\r\n");
				c->st = CL_HELO;
				return DELIVER_CL_WAIT;
			}
			fail(c, DELIVER_FAIL_GREETING, r, NULL);
			return DELIVER_CL_FAILED;
		}
		if (c->starttls ||
		    (c->starttls_may && (c->ext & DELIVER_EXT_STARTTLS))) {
			if (!(c->ext & DELIVER_EXT_STARTTLS)) {
				fail(c, DELIVER_FAIL_NO_TLS, NULL,
				     "STARTTLS is required but the server does not "
				     "offer it");
				return DELIVER_CL_FAILED;
			}
			put(out, "STARTTLS\r\n");
			c->st = CL_STARTTLS;
			return DELIVER_CL_WAIT;
		}
		after_ehlo(c, out);
		return c->st == CL_FAILED ? DELIVER_CL_FAILED : DELIVER_CL_WAIT;
	case CL_HELO:
		if (!ok2(r->code)) {
			fail(c, DELIVER_FAIL_GREETING, r, NULL);
			return DELIVER_CL_FAILED;
		}
		c->ext = 0;
		c->size_max = 0;
		c->st = CL_READY;
		return DELIVER_CL_WAIT;
	case CL_STARTTLS:
		if (r->code != 220) {
			fail(c, DELIVER_FAIL_NO_TLS, r, NULL);
			return DELIVER_CL_FAILED;
		}
		/* RFC 3207 §5 / CVE-2011-0411: nothing the server sent after
		 * its 220 in plaintext may be read as part of the TLS
		 * session. */
		buf_reset(&c->in);
		c->cur_open = false;
		c->st = CL_TLS;
		return DELIVER_CL_STARTTLS;
	case CL_EHLO2:
		if (!ok2(r->code)) {
			fail(c, DELIVER_FAIL_GREETING, r, NULL);
			return DELIVER_CL_FAILED;
		}
		after_ehlo(c, out);
		return c->st == CL_FAILED ? DELIVER_CL_FAILED : DELIVER_CL_WAIT;
	case CL_AUTH_PLAIN:
	case CL_AUTH_LOGIN_PASS:
		if (r->code != 235) {
			fail(c, DELIVER_FAIL_AUTH, r, NULL);
			return DELIVER_CL_FAILED;
		}
		c->st = CL_READY;
		return DELIVER_CL_WAIT;
	case CL_AUTH_LOGIN:
	case CL_AUTH_LOGIN_USER: {
		if (r->code != 334) {
			fail(c, DELIVER_FAIL_AUTH, r, NULL);
			return DELIVER_CL_FAILED;
		}
		const char *s = c->st == CL_AUTH_LOGIN ? c->user : c->password;
		b64(out, (const uint8_t *)s, strlen(s));
		put(out, "\r\n");
		c->st = c->st == CL_AUTH_LOGIN ? CL_AUTH_LOGIN_USER
		                               : CL_AUTH_LOGIN_PASS;
		return DELIVER_CL_WAIT;
	}
	case CL_TXN:
		return txn_reply(c, out);
	case CL_DOT:
		if (!c->empty_body)
			for (size_t k = 0; k < c->msg->nrcpt; k++)
				if (c->res[k].code == 0)
					c->res[k] = *r;
		c->st = CL_READY;
		return DELIVER_CL_DONE;
	case CL_QUIT:
		c->st = CL_CLOSED;
		return DELIVER_CL_CLOSED;
	case CL_READY:
	case CL_TLS:
	case CL_BODY:
		/* A reply nobody asked for. */
		fail(c, DELIVER_FAIL_PROTOCOL, r, NULL);
		return DELIVER_CL_FAILED;
	case CL_FAILED:
		return DELIVER_CL_FAILED;
	case CL_CLOSED:
	case CL__COUNT:
		return DELIVER_CL_CLOSED;
	}
	return DELIVER_CL_WAIT;
}

enum deliver_client_ev deliver_client_step(struct deliver_client *c,
                                           struct buf *out)
{
	if (c->st == CL_TXN && c->ncmd == 0) {
		/* Refused locally in deliver_client_send(). */
		c->st = CL_READY;
		return DELIVER_CL_DONE;
	}
	/* WAIT must mean "needs more input": a reply that only moves us on
	 * (EHLO answered, now READY; one of several pipelined replies that
	 * arrived together) is followed by the next one at once. */
	for (;;) {
		if (c->st == CL_FAILED)
			return DELIVER_CL_FAILED;
		if (c->st == CL_CLOSED)
			return DELIVER_CL_CLOSED;
		if (c->st == CL_TLS || c->st == CL_BODY)
			return DELIVER_CL_WAIT;   /* the shell's turn */
		int r = next_reply(c);
		if (r < 0) {
			fail(c, DELIVER_FAIL_PROTOCOL, NULL,
			     r == -ENOBUFS ? "reply too long" : "malformed reply");
			return DELIVER_CL_FAILED;
		}
		if (r == 0)
			return c->st == CL_READY ? DELIVER_CL_READY
			                         : DELIVER_CL_WAIT;
		enum deliver_client_ev ev = on_reply(c, out);
		if (ev != DELIVER_CL_WAIT)
			return ev;
	}
}

const struct deliver_reply *deliver_client_result(const struct deliver_client *c,
                                                  size_t i)
{
	return &c->res[i];
}

enum deliver_client_fail deliver_client_error(const struct deliver_client *c,
                                              const struct deliver_reply **r)
{
	if (r)
		*r = &c->err;
	return c->fail;
}

bool deliver_client_waiting(const struct deliver_client *c)
{
	return c->st != CL_READY && c->st != CL_FAILED && c->st != CL_CLOSED &&
	       c->st != CL_TLS && c->st != CL_BODY;
}

bool deliver_client_in_final(const struct deliver_client *c)
{
	return c->st == CL_DOT;
}

/* The table row for what c waits for now. */
static const struct cl_state_def *cur_def(const struct deliver_client *c)
{
	if (c->st == CL_TXN && c->msg && c->nanswered < c->ncmd) {
		size_t i = 0;
		return &cl_txn_waits[txn_cmd(c, c->nanswered, &i)];
	}
	return &cl_states[c->st];
}

uint64_t deliver_client_timeout(const struct deliver_client *c,
                                uint64_t base_ms)
{
	return base_ms * cur_def(c)->timeout_s / DELIVER_CLIENT_TIMEOUT_BASE_S;
}

const char *deliver_client_state_name(const struct deliver_client *c)
{
	return cur_def(c)->name;
}

const char *deliver_client_state_desc(const struct deliver_client *c)
{
	return cur_def(c)->desc;
}

unsigned deliver_client_ext(const struct deliver_client *c)
{
	return c->ext;
}

uint64_t deliver_client_size_max(const struct deliver_client *c)
{
	return c->size_max;
}
