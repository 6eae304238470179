/*
 * deliver/deliver_dsn.c - RFC 3464 DSN composition (contract:
 * deliver_dsn.h). Writes the report's header, text and delivery-status
 * parts into the caller's buf, streams the original into part 3 and closes
 * the multipart. Owns nothing but the struct deliver_dsn_orig; no I/O, no
 * allocation of its own.
 *
 * How values get out safely: every value that is not a literal of ours
 * goes through dsn_text(), which reads it as a list of segments (each
 * optionally xtext-decoded) one character at a time (dsn_unit(): CR/LF/HT
 * are spaces, controls and unwanted 8-bit become '?'), splits it into
 * words at spaces, and places each word on the current line or, when the
 * line would pass DELIVER_DSN_FOLD, on a continuation line. The caller's
 * strings can be any length: a word is measured by reading it twice,
 * nothing is copied aside.
 *
 * Decisions:
 *   - The per-message fields follow RFC 3464 §2.2's grammar order
 *     (Original-Envelope-Id, Reporting-MTA, Arrival-Date, then extension
 *     fields such as X-Relayd-Queue-ID), the per-recipient fields §2.3's.
 *   - "rfc822;ADDR" and "dns;NAME" without a space, "smtp; TEXT" with one,
 *     as the brief for this module has them; all three parse alike.
 *   - The boundary is the caller's (Postfix's QID.time/host shape), made
 *     safe, never extended: it has to be the same in head and tail, and
 *     appending a counter or hash would add nothing the queue id does not
 *     already give.
 *   - RFC 6533 for reports about SMTPUTF8 messages (global): their
 *     recipients may have UTF-8 addresses and their header sections
 *     UTF-8, which message/delivery-status and message/rfc822 cannot
 *     carry; the global types can, as body parts, so the report needs
 *     SMTPUTF8 only when its own envelope does (deliver_bounce.c decides).
 *     A report about an 8BITMIME-only message (utf8 without global)
 *     stays message/delivery-status, as Postfix does: its addresses
 *     are ASCII, only a remote reply may carry UTF-8.
 */
#include "deliver_dsn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/addr.h"

/* For log lines; indexed by enum deliver_dsn_orig_state. */
static const char *const dsn_orig_state_names[] = {
	"BOL", "NAME", "FIELD", "BODY", "DONE",
};

/* RFC 5322 §3.3 day-name and month-name: fixed English, not the locale's. */
static const char dsn_wday[7][4] = {
	"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
};
static const char dsn_month[12][4] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

#define DSN_DATE_SIZE 96  /* room for any int the format could print */
#define DSN_TEXT_INDENT "    "

/* ---- dates ------------------------------------------------------------ */

/* "Tue, 21 Nov 2026 10:00:00 +0000" (RFC 5322 §3.3 date-time, in UTC).
 * -EINVAL outside years 1900-9999, which the grammar cannot express. */
static int dsn_date(int64_t t, char out[DSN_DATE_SIZE])
{
	time_t tt = (time_t)t;
	struct tm tm;
	if ((int64_t)tt != t || !gmtime_r(&tt, &tm) || tm.tm_year < 0 ||
	    tm.tm_year > 9999 - 1900 || tm.tm_wday < 0 || tm.tm_wday > 6 ||
	    tm.tm_mon < 0 || tm.tm_mon > 11)
		return -EINVAL;
	snprintf(out, DSN_DATE_SIZE, "%s, %d %s %04d %02d:%02d:%02d +0000",
	         dsn_wday[tm.tm_wday], tm.tm_mday, dsn_month[tm.tm_mon],
	         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return 0;
}

/* ---- reading values: segments, xtext, characters ---------------------- */

/* A piece of a value: our literal text or a caller's string (NULL reads
 * as empty); xtext is set only for a string that is valid xtext; in a
 * keep piece (one of our dates) a space does not separate words, so a
 * date is never wrapped in the middle. */
struct dsn_seg {
	const char *s;
	bool xtext;
	bool keep;
};

/* A position in a list of segments. Copied by value to read ahead. */
struct dsn_cur {
	const struct dsn_seg *seg;
	size_t nseg, i;
	const char *p;
};

/* One output character: a space (separator), or 1-4 bytes to write. */
struct dsn_unit {
	uint8_t b[4];
	uint8_t len;
	bool space;
};

static struct dsn_seg dsn_lit(const char *s)
{
	return (struct dsn_seg){s, false, false};
}

static struct dsn_seg dsn_keep(const char *s)
{
	return (struct dsn_seg){s, false, true};
}

/* RFC 3461 §4: decoded only when the whole value is well-formed xtext;
 * otherwise shown as stored. */
static struct dsn_seg dsn_xtext(const char *s)
{
	return (struct dsn_seg){s, s && addr_xtext_valid(s, strlen(s)), false};
}

#define DSN_NSEG(...) \
	(sizeof((const struct dsn_seg[]){__VA_ARGS__}) / sizeof(struct dsn_seg))
#define DSN_SEGS(...) (const struct dsn_seg[]){__VA_ARGS__}, DSN_NSEG(__VA_ARGS__)

static struct dsn_cur dsn_cur(const struct dsn_seg *seg, size_t nseg)
{
	return (struct dsn_cur){seg, nseg, 0, nseg ? seg[0].s : NULL};
}

static int dsn_hexval(char c)
{
	return c <= '9' ? c - '0' : c - 'A' + 10;
}

/* The next byte of the value (xtext decoded), or -1 at its end. On
 * return c->i is still the index of the byte's segment. */
static int dsn_byte(struct dsn_cur *c)
{
	while (c->i < c->nseg) {
		if (c->p && *c->p) {
			const char *p = c->p;
			/* Valid xtext: '+' is always followed by two
			 * upper-case hex digits. */
			if (c->seg[c->i].xtext && p[0] == '+') {
				c->p += 3;
				return dsn_hexval(p[1]) << 4 | dsn_hexval(p[2]);
			}
			c->p++;
			return (uint8_t)*p;
		}
		if (++c->i < c->nseg)
			c->p = c->seg[c->i].s;
	}
	return -1;
}

/* The next character, made safe (see deliver_dsn.h); false at the end. */
static bool dsn_unit(struct dsn_cur *c, bool utf8, struct dsn_unit *u)
{
	int b = dsn_byte(c);
	if (b < 0)
		return false;
	u->space = false;
	u->len = 1;
	u->b[0] = '?';
	if (b == ' ' && c->seg[c->i].keep) {
		u->b[0] = ' ';
		return true;
	}
	if (b == ' ' || b == '\t' || b == '\r' || b == '\n') {
		u->space = true;
		u->b[0] = ' ';
		return true;
	}
	if (b < 0x20 || b == 0x7f)
		return true;
	if (b < 0x80) {
		u->b[0] = (uint8_t)b;
		return true;
	}
	/* RFC 3629 §4: C0, C1 and F5-FF never lead; E0/F0/F4 limits are
	 * checked on the code point below. */
	size_t need;
	uint32_t cp, min;
	if (b >= 0xc2 && b <= 0xdf) {
		need = 1, cp = (uint32_t)b & 0x1f, min = 0x80;
	} else if (b >= 0xe0 && b <= 0xef) {
		need = 2, cp = (uint32_t)b & 0x0f, min = 0x800;
	} else if (b >= 0xf0 && b <= 0xf4) {
		need = 3, cp = (uint32_t)b & 0x07, min = 0x10000;
	} else {
		return true;
	}
	uint8_t seq[4] = {(uint8_t)b};
	for (size_t k = 1; k <= need; k++) {
		struct dsn_cur save = *c;
		int x = dsn_byte(c);
		if (x < 0x80 || x > 0xbf) {
			/* Truncated: '?' for what was read; the byte that
			 * broke it is read again as the next character. */
			*c = save;
			return true;
		}
		seq[k] = (uint8_t)x;
		cp = cp << 6 | ((uint32_t)x & 0x3f);
	}
	if (!utf8 || cp < min || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f) ||
	    cp == 0x2028 || cp == 0x2029)
		return true;
	memcpy(u->b, seq, need + 1);
	u->len = (uint8_t)(need + 1);
	return true;
}

/* ---- writing lines ---------------------------------------------------- */

/* The line writer: a sticky error (Knot-style) so the composition reads
 * straight and is checked once at the end. */
struct dsn_w {
	struct buf *out;
	int err;
	size_t col;        /* octets on the current line */
	bool word;         /* a word of dsn_text() is on the current line */
	const char *cont;  /* starts a continuation line: " " or an indent */
	bool utf8;
};

static void dsn_put(struct dsn_w *w, const void *p, size_t n)
{
	if (w->err)
		return;
	int r = buf_append(w->out, p, n);
	if (r < 0)
		w->err = r;
	w->col += n;
}

/* Our own text, with no line break in it. */
static void dsn_lit_put(struct dsn_w *w, const char *s)
{
	dsn_put(w, s, strlen(s));
}

static void dsn_nl(struct dsn_w *w)
{
	dsn_put(w, "\r\n", 2);
	w->col = 0;
	w->word = false;
}

static void dsn_cont(struct dsn_w *w)
{
	dsn_nl(w);
	dsn_lit_put(w, w->cont);
}

/* Whether the value has anything but spaces once made safe. */
static bool dsn_has_text(const struct dsn_seg *seg, size_t nseg, bool utf8)
{
	struct dsn_cur c = dsn_cur(seg, nseg);
	struct dsn_unit u;
	while (dsn_unit(&c, utf8, &u))
		if (!u.space)
			return true;
	return false;
}

/* Writes the value's words on the current line, folding before a word
 * that would pass DELIVER_DSN_FOLD (never before the first word after a
 * line start or a literal) and cutting a word only where it would pass
 * DELIVER_DSN_LINE_MAX. Units are whole characters, so a cut never splits
 * a UTF-8 sequence. */
static void dsn_text(struct dsn_w *w, const struct dsn_seg *seg, size_t nseg)
{
	struct dsn_cur c = dsn_cur(seg, nseg);
	struct dsn_unit u;
	for (;;) {
		struct dsn_cur start;
		do {
			start = c;
			if (!dsn_unit(&c, w->utf8, &u))
				return;
		} while (u.space);
		c = start;

		size_t wlen = 0;
		struct dsn_cur m = c;
		while (dsn_unit(&m, w->utf8, &u) && !u.space)
			wlen += u.len;

		if (w->word) {
			/* RFC 5322 §2.2.3: folding is a CRLF before the
			 * space, so unfolding gives the text back. */
			if (w->col + 1 + wlen > DELIVER_DSN_FOLD)
				dsn_cont(w);
			else
				dsn_put(w, " ", 1);
		}
		while (dsn_unit(&c, w->utf8, &u) && !u.space) {
			if (w->col + u.len > DELIVER_DSN_LINE_MAX)
				dsn_cont(w);
			dsn_put(w, u.b, u.len);
		}
		w->word = true;
	}
}

/* A whole header field: "Name: " (our literal) and the value. */
static void dsn_field(struct dsn_w *w, const char *name,
                      const struct dsn_seg *seg, size_t nseg)
{
	dsn_lit_put(w, name);
	dsn_text(w, seg, nseg);
	dsn_nl(w);
}

static void dsn_date_field(struct dsn_w *w, const char *name, int64_t t)
{
	char date[DSN_DATE_SIZE];
	int r = dsn_date(t, date);
	if (r < 0 && !w->err)
		w->err = r;
	if (r < 0)
		return;
	dsn_lit_put(w, name);
	dsn_lit_put(w, date);
	dsn_nl(w);
}

/* ---- the report ------------------------------------------------------- */

/* RFC 2046 §5.1.1 bcharsnospace. */
static bool dsn_is_bchar(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || strchr("'()+_,-./:=?", c) != NULL;
}

size_t deliver_dsn_boundary(const struct deliver_dsn *d,
                            char out[DELIVER_DSN_BOUNDARY_MAX + 1])
{
	const char *s = d->boundary ? d->boundary : "";
	size_t n = 0;
	for (; *s && n < DELIVER_DSN_BOUNDARY_MAX; s++)
		out[n++] = dsn_is_bchar(*s) ? *s : '.';
	if (n == 0) {
		strcpy(out, "relayd-dsn");
		return strlen(out);
	}
	out[n] = '\0';
	return n;
}

/* RFC 3463 §2: class "." subject "." detail, 1-3 digits each. */
static bool dsn_status_valid(const char *s)
{
	if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	s += 2;
	for (int part = 0; part < 2; part++) {
		size_t n = 0;
		while (s[n] >= '0' && s[n] <= '9')
			n++;
		if (n < 1 || n > 3)
			return false;
		s += n;
		if (part == 0 && *s++ != '.')
			return false;
	}
	return *s == '\0';
}

static const char *dsn_status(const struct deliver_dsn_rcpt *r)
{
	if (dsn_status_valid(r->status))
		return r->status;
	return r->action == DELIVER_DSN_DELAYED ? "4.0.0" : "5.0.0";
}

static bool dsn_valid(const struct deliver_dsn *d)
{
	if (!d->reporting_mta || !d->sender || !d->sender[0] ||
	    !d->message_id || !d->boundary || d->nrcpt == 0 || !d->rcpt)
		return false;
	for (size_t i = 0; i < d->nrcpt; i++)
		if (!d->rcpt[i].addr)
			return false;
	return true;
}

/* One paragraph of the text part: our words and the host name, wrapped. */
static void dsn_para(struct dsn_w *w, const struct dsn_seg *seg,
                     size_t nseg)
{
	dsn_text(w, seg, nseg);
	dsn_nl(w);
	dsn_nl(w);
}

static void dsn_human(struct dsn_w *w, const struct deliver_dsn *d)
{
	size_t nfailed = 0, ndelayed = 0;
	for (size_t i = 0; i < d->nrcpt; i++) {
		if (d->rcpt[i].action == DELIVER_DSN_DELAYED)
			ndelayed++;
		else
			nfailed++;
	}
	char until[DSN_DATE_SIZE] = "";
	if (d->retry_until) {
		int r = dsn_date(d->retry_until, until);
		if (r < 0 && !w->err)
			w->err = r;
	}

	w->cont = "";
	dsn_para(w, DSN_SEGS(dsn_lit("This is the mail delivery system at "),
	                     dsn_lit(d->reporting_mta), dsn_lit(".")));
	if (d->delayed) {
		dsn_para(w, DSN_SEGS(dsn_lit(
			"This is a warning only: no action is required on "
			"your part, and you do not need to send your "
			"message again.")));
		dsn_para(w, DSN_SEGS(
			dsn_lit("Your message has not yet been delivered to "
			        "the recipients marked delayed below. The mail "
			        "system will keep trying"),
			dsn_lit(until[0] ? " until " : ""), dsn_keep(until),
			dsn_lit(".")));
		if (nfailed)
			dsn_para(w, DSN_SEGS(dsn_lit(
				"Delivery to the recipients marked failed "
				"below has failed permanently; they will not "
				"be retried.")));
	} else {
		dsn_para(w, DSN_SEGS(dsn_lit(
			"Your message could not be delivered to one or more "
			"recipients. Delivery to the recipients marked "
			"failed below has been given up; they will not be "
			"retried.")));
		if (ndelayed)
			dsn_para(w, DSN_SEGS(
				dsn_lit("Delivery to the recipients marked "
				        "delayed is still being retried"),
				dsn_lit(until[0] ? " until " : ""),
				dsn_keep(until), dsn_lit(".")));
	}
	dsn_para(w, DSN_SEGS(dsn_lit(
		d->headers_only
			? "The header section of your message is attached."
			: "Your message is attached.")));

	w->cont = DSN_TEXT_INDENT;
	for (size_t i = 0; i < d->nrcpt; i++) {
		const struct deliver_dsn_rcpt *r = &d->rcpt[i];
		if (i > 0)
			dsn_nl(w);
		dsn_text(w, DSN_SEGS(
			dsn_lit("<"), dsn_lit(r->addr), dsn_lit(">: "),
			dsn_lit(r->action == DELIVER_DSN_DELAYED
			        ? "delayed, still being retried (status "
			        : "failed (status "),
			dsn_lit(dsn_status(r)), dsn_lit(")")));
		if (dsn_has_text(DSN_SEGS(dsn_lit(r->diag)), w->utf8)) {
			dsn_nl(w);
			dsn_lit_put(w, DSN_TEXT_INDENT);
			if (dsn_has_text(DSN_SEGS(dsn_lit(r->remote_mta)),
			                 w->utf8))
				dsn_text(w, DSN_SEGS(
					dsn_lit("host "), dsn_lit(r->remote_mta),
					dsn_lit(" said: "), dsn_lit(r->diag)));
			else
				dsn_text(w, DSN_SEGS(
					dsn_lit("the remote server said: "),
					dsn_lit(r->diag)));
		}
		if (dsn_has_text(DSN_SEGS(dsn_lit(r->reason)), w->utf8)) {
			dsn_nl(w);
			dsn_lit_put(w, DSN_TEXT_INDENT);
			dsn_text(w, DSN_SEGS(dsn_lit(r->reason)));
		}
		dsn_nl(w);
	}
	w->cont = " ";
}

/* RFC 6533 §3 utf-8-addr-unitext: UTF-8 as is; '+', '=', '\\', space
 * and controls as \x{HEX} (EmbeddedUnicodeChar). False when out is too
 * small. */
static bool dsn_unitext(const char *a, char *out, size_t n)
{
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)a; *p; p++) {
		char e[16];
		size_t k;
		if (*p == '+' || *p == '=' || *p == '\\' || *p <= ' ' ||
		    *p == 0x7f)
			k = (size_t)snprintf(e, sizeof e, "\\x{%X}", *p);
		else {
			e[0] = (char)*p;
			k = 1;
		}
		if (o + k >= n)
			return false;
		memcpy(out + o, e, k);
		o += k;
	}
	out[o] = '\0';
	return true;
}

static bool dsn_ascii(const char *a)
{
	for (; *a; a++)
		if ((unsigned char)*a >= 0x80)
			return false;
	return true;
}

/* Part 2: RFC 3464 §2.2 per-message and §2.3 per-recipient fields. */
static void dsn_status_part(struct dsn_w *w, const struct deliver_dsn *d)
{
	if (dsn_has_text(DSN_SEGS(dsn_xtext(d->envid)), w->utf8))
		dsn_field(w, "Original-Envelope-Id: ",
		          DSN_SEGS(dsn_xtext(d->envid)));
	dsn_field(w, "Reporting-MTA: ",
	          DSN_SEGS(dsn_lit("dns;"), dsn_lit(d->reporting_mta)));
	if (d->arrival)
		dsn_date_field(w, "Arrival-Date: ", d->arrival);
	if (dsn_has_text(DSN_SEGS(dsn_lit(d->qid)), w->utf8))
		dsn_field(w, "X-Relayd-Queue-ID: ", DSN_SEGS(dsn_lit(d->qid)));

	for (size_t i = 0; i < d->nrcpt; i++) {
		const struct deliver_dsn_rcpt *r = &d->rcpt[i];
		bool delayed = r->action == DELIVER_DSN_DELAYED;
		dsn_nl(w);
		if (dsn_has_text(DSN_SEGS(dsn_xtext(r->orcpt)), w->utf8))
			dsn_field(w, "Original-Recipient: ",
			          DSN_SEGS(dsn_xtext(r->orcpt)));
		/* One too long to escape here (longer than any the queue
		 * takes) stays rfc822;, cut by dsn_text like any value. */
		char uaddr[6 * 512 + 1];
		if (d->global && !dsn_ascii(r->addr) &&
		    dsn_unitext(r->addr, uaddr, sizeof uaddr))
			dsn_field(w, "Final-Recipient: ",
			          DSN_SEGS(dsn_lit("utf-8;"), dsn_lit(uaddr)));
		else
			dsn_field(w, "Final-Recipient: ",
			          DSN_SEGS(dsn_lit("rfc822;"), dsn_lit(r->addr)));
		dsn_lit_put(w, delayed ? "Action: delayed" : "Action: failed");
		dsn_nl(w);
		dsn_lit_put(w, "Status: ");
		dsn_lit_put(w, dsn_status(r));
		dsn_nl(w);
		if (dsn_has_text(DSN_SEGS(dsn_lit(r->remote_mta)), w->utf8))
			dsn_field(w, "Remote-MTA: ", DSN_SEGS(dsn_lit("dns;"),
			          dsn_lit(r->remote_mta)));
		if (dsn_has_text(DSN_SEGS(dsn_lit(r->diag)), w->utf8))
			dsn_field(w, "Diagnostic-Code: smtp; ",
			          DSN_SEGS(dsn_lit(r->diag)));
		if (r->last_attempt)
			dsn_date_field(w, "Last-Attempt-Date: ",
			               r->last_attempt);
		if (delayed && d->retry_until)
			dsn_date_field(w, "Will-Retry-Until: ", d->retry_until);
	}
}

int deliver_dsn_head(const struct deliver_dsn *d, struct buf *out)
{
	if (!dsn_valid(d))
		return -EINVAL;
	char bnd[DELIVER_DSN_BOUNDARY_MAX + 1];
	deliver_dsn_boundary(d, bnd);
	size_t start = out->len;
	struct dsn_w w = {out, 0, 0, false, " ", d->utf8};

	dsn_field(&w, "From: ", DSN_SEGS(dsn_lit(
		"\"Mail Delivery System\" <MAILER-DAEMON@"),
		dsn_lit(d->reporting_mta), dsn_lit(">")));
	dsn_field(&w, "To: ", DSN_SEGS(dsn_lit("<"), dsn_lit(d->sender),
	                               dsn_lit(">")));
	dsn_lit_put(&w, d->delayed
		? "Subject: Delayed Mail (still being retried)"
		: "Subject: Undelivered Mail Returned to Sender");
	dsn_nl(&w);
	dsn_date_field(&w, "Date: ", d->now);
	dsn_field(&w, "Message-ID: ", DSN_SEGS(dsn_lit(d->message_id)));
	dsn_lit_put(&w, "MIME-Version: 1.0");
	dsn_nl(&w);
	dsn_lit_put(&w, "Content-Type: multipart/report; "
	                "report-type=delivery-status;");
	dsn_nl(&w);
	dsn_lit_put(&w, "\tboundary=\"");
	dsn_lit_put(&w, bnd);
	dsn_lit_put(&w, "\"");
	dsn_nl(&w);
	if (d->utf8) {
		dsn_lit_put(&w, "Content-Transfer-Encoding: 8bit");
		dsn_nl(&w);
	}
	/* RFC 3834 §5 and RFC 3464 §2: DSNs are auto-replied. */
	dsn_lit_put(&w, "Auto-Submitted: auto-replied");
	dsn_nl(&w);
	dsn_nl(&w);
	dsn_lit_put(&w, "This is a MIME-encapsulated message.");
	dsn_nl(&w);

	const char *cte = d->utf8 ? "Content-Transfer-Encoding: 8bit\r\n" : "";
	dsn_nl(&w);
	dsn_lit_put(&w, "--");
	dsn_lit_put(&w, bnd);
	dsn_nl(&w);
	dsn_lit_put(&w, "Content-Description: Notification");
	dsn_nl(&w);
	dsn_lit_put(&w, d->utf8 ? "Content-Type: text/plain; charset=utf-8"
	                        : "Content-Type: text/plain; charset=us-ascii");
	dsn_nl(&w);
	dsn_put(&w, cte, strlen(cte));
	dsn_nl(&w);
	dsn_human(&w, d);

	dsn_nl(&w);
	dsn_lit_put(&w, "--");
	dsn_lit_put(&w, bnd);
	dsn_nl(&w);
	dsn_lit_put(&w, "Content-Description: Delivery report");
	dsn_nl(&w);
	dsn_lit_put(&w, d->global ? "Content-Type: message/global-delivery-status"
	                          : "Content-Type: message/delivery-status");
	dsn_nl(&w);
	dsn_put(&w, cte, strlen(cte));
	dsn_nl(&w);
	dsn_status_part(&w, d);

	dsn_nl(&w);
	dsn_lit_put(&w, "--");
	dsn_lit_put(&w, bnd);
	dsn_nl(&w);
	dsn_lit_put(&w, "Content-Description: ");
	dsn_lit_put(&w, d->delayed ? "Delayed Message" : "Undelivered Message");
	if (d->headers_only)
		dsn_lit_put(&w, " Headers");
	dsn_nl(&w);
	dsn_lit_put(&w, d->global
		? (d->headers_only ? "Content-Type: message/global-headers"
		                   : "Content-Type: message/global")
		: (d->headers_only ? "Content-Type: text/rfc822-headers"
		                   : "Content-Type: message/rfc822"));
	dsn_nl(&w);
	dsn_put(&w, cte, strlen(cte));
	dsn_nl(&w);

	if (w.err) {
		out->len = start;
		return w.err;
	}
	return 0;
}

/* ---- part 3: the original --------------------------------------------- */

void deliver_dsn_orig_init(struct deliver_dsn_orig *o, bool headers_only)
{
	memset(o, 0, sizeof(*o));
	o->state = headers_only ? DELIVER_DSN_ORIG_BOL : DELIVER_DSN_ORIG_BODY;
	o->first_line = true;
}

const char *deliver_dsn_orig_state_name(const struct deliver_dsn_orig *o)
{
	if (o->state < 0 || o->state > DELIVER_DSN_ORIG_DONE)
		return "?";
	return dsn_orig_state_names[o->state];
}

static void orig_put(struct deliver_dsn_orig *o, struct buf *out,
                     const void *p, size_t n)
{
	if (o->err || n == 0)
		return;
	int r = buf_append(out, p, n);
	if (r < 0)
		o->err = r;
}

static bool orig_is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* RFC 5322 §3.6.8 ftext: printable US-ASCII except ':'. */
static bool orig_is_ftext(uint8_t c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* The end of a line (CRLF, or a bare CR or LF made one). In the header
 * section an empty line, or a held name that never got its colon, ends
 * it: nothing of that line is copied. */
static void orig_eol(struct deliver_dsn_orig *o, struct buf *out)
{
	switch (o->state) {
	case DELIVER_DSN_ORIG_BOL:
	case DELIVER_DSN_ORIG_NAME:
		o->state = DELIVER_DSN_ORIG_DONE;
		return;
	case DELIVER_DSN_ORIG_FIELD:
		o->state = DELIVER_DSN_ORIG_BOL;
		o->first_line = false;
		break;
	default:
		break;
	}
	orig_put(o, out, "\r\n", 2);
	o->col = 0;
}

/* Copies bytes up to the next CR or LF, breaking the line with CRLF SP
 * where it would pass DELIVER_DSN_LINE_MAX (three octets early before a
 * byte that may lead a UTF-8 sequence, so the sequence stays whole).
 * Returns the bytes consumed. */
static size_t orig_run(struct deliver_dsn_orig *o, const uint8_t *p,
                       size_t n, struct buf *out)
{
	size_t s = 0, j = 0;
	while (j < n && p[j] != '\r' && p[j] != '\n') {
		if (o->col >= DELIVER_DSN_LINE_MAX ||
		    (o->col >= DELIVER_DSN_LINE_MAX - 3 && p[j] >= 0xc0)) {
			orig_put(o, out, p + s, j - s);
			orig_put(o, out, "\r\n ", 3);
			o->col = 1;
			s = j;
		}
		o->col++;
		j++;
	}
	orig_put(o, out, p + s, j - s);
	return j;
}

/* headers_only, at a line start or in a held field name: one byte that
 * is not CR or LF. Mirrors smtpd_scrub's idea of a header field. */
static void orig_hdr_byte(struct deliver_dsn_orig *o, uint8_t c,
                          struct buf *out)
{
	if (o->state == DELIVER_DSN_ORIG_BOL) {
		if (orig_is_wsp(c) && !o->first_line) {
			/* A continuation line of the field above. */
			orig_put(o, out, &c, 1);
			o->col++;
			o->state = DELIVER_DSN_ORIG_FIELD;
		} else if (orig_is_ftext(c)) {
			o->name[0] = (char)c;
			o->namelen = 1;
			o->name_wsp = false;
			o->state = DELIVER_DSN_ORIG_NAME;
		} else {
			/* A leading blank on the first line, a colon at the
			 * line start, a control or 8-bit byte: not a field. */
			o->state = DELIVER_DSN_ORIG_DONE;
		}
		return;
	}
	/* DELIVER_DSN_ORIG_NAME */
	if (c == ':' || o->namelen == sizeof(o->name)) {
		/* A field (a name too long to hold is taken for one, as
		 * smtpd_scrub does: it was kept in the spool as a field). */
		orig_put(o, out, o->name, o->namelen);
		orig_put(o, out, &c, 1);
		o->col += o->namelen + 1;
		o->namelen = 0;
		o->state = DELIVER_DSN_ORIG_FIELD;
	} else if (orig_is_wsp(c)) {
		/* RFC 5322 §4.5.1 obs: blanks before the colon. */
		o->name[o->namelen++] = (char)c;
		o->name_wsp = true;
	} else if (orig_is_ftext(c) && !o->name_wsp) {
		o->name[o->namelen++] = (char)c;
	} else {
		o->state = DELIVER_DSN_ORIG_DONE;
	}
}

int deliver_dsn_orig_feed(struct deliver_dsn_orig *o, const uint8_t *p,
                          size_t n, struct buf *out)
{
	if (o->err)
		return o->err;
	size_t start = out->len;
	size_t i = 0;
	while (i < n && o->state != DELIVER_DSN_ORIG_DONE) {
		uint8_t c = p[i];
		if (o->pending_cr) {
			/* CRLF, or a bare CR taken as a line end. */
			o->pending_cr = false;
			if (c == '\n')
				i++;
			orig_eol(o, out);
		} else if (c == '\r') {
			o->pending_cr = true;
			i++;
		} else if (c == '\n') {
			i++;
			orig_eol(o, out);
		} else if (o->state == DELIVER_DSN_ORIG_BOL ||
		           o->state == DELIVER_DSN_ORIG_NAME) {
			orig_hdr_byte(o, c, out);
			i++;
		} else {
			i += orig_run(o, p + i, n - i, out);
		}
	}
	if (o->err) {
		out->len = start;
		return o->err;
	}
	o->copied += out->len - start;
	return o->state == DELIVER_DSN_ORIG_DONE ? 1 : 0;
}

int deliver_dsn_tail(const struct deliver_dsn *d,
                     const struct deliver_dsn_orig *o, struct buf *out)
{
	if (o->err)
		return o->err;
	char bnd[DELIVER_DSN_BOUNDARY_MAX + 1];
	deliver_dsn_boundary(d, bnd);
	size_t start = out->len;
	struct dsn_w w = {out, 0, 0, false, " ", d->utf8};
	/* RFC 2046 §5.1.1: the CRLF before "--" belongs to the delimiter,
	 * so it is always written: the copy keeps its last line end, and an
	 * unfinished last line stays unfinished. A CR left pending in a
	 * field or the body is the line end the feed would have made of it;
	 * at a line start or after a held name in the header section it
	 * would end that section, so nothing of it is copied. */
	if (o->pending_cr && (o->state == DELIVER_DSN_ORIG_FIELD ||
	                      o->state == DELIVER_DSN_ORIG_BODY))
		dsn_nl(&w);
	dsn_nl(&w);
	dsn_lit_put(&w, "--");
	dsn_lit_put(&w, bnd);
	dsn_lit_put(&w, "--");
	dsn_nl(&w);
	if (w.err) {
		out->len = start;
		return w.err;
	}
	return 0;
}
