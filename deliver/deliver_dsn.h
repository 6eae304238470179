/*
 * deliver/deliver_dsn.h - RFC 3464 delivery status notifications: composes
 * the bounce ("failed") or warning ("delayed") report for one message
 * attempt as a multipart/report (RFC 6522) with three parts: a text/plain
 * explanation, a message/delivery-status, and the original message
 * (message/rfc822) or its header section (text/rfc822-headers). Pure: no
 * I/O, no libuv, no allocation beyond the caller's struct buf, no mutable
 * static state.
 *
 * The caller (the scheduler) writes the DSN into the spool as a new
 * message with MAIL FROM:<> to the original sender, in three steps, so the
 * original is streamed and never held whole:
 *
 *   deliver_dsn_head(&d, &out);                    headers, parts 1 and 2,
 *                                                  part 3's MIME header
 *   deliver_dsn_orig_init(&o, d.headers_only);
 *   while (read a chunk of msg/QID)                the original, as stored
 *       if (deliver_dsn_orig_feed(&o, p, n, &out) != 0) break;   (1 or <0)
 *   deliver_dsn_tail(&d, &o, &out);                closing boundary
 *
 * `out` may be flushed to the body file and reset between calls.
 *
 * Output guarantees, whatever the input: CRLF line ends only (no bare CR
 * or LF), every line at most DELIVER_DSN_LINE_MAX octets. Values that come
 * from the network or the envelope (addresses, ORCPT, ENVID, the remote
 * reply, and also our own names) are made safe on the way out:
 *   - CR, LF and HT become a space; runs of spaces collapse to one, and
 *     leading and trailing spaces go;
 *   - NUL, other C0 controls and DEL become '?';
 *   - with utf8 false every non-ASCII character (a valid UTF-8 sequence)
 *     or stray 8-bit byte becomes one '?'; with utf8 true valid UTF-8
 *     passes, except C1 controls and U+2028/U+2029 ('?'), and every byte
 *     of an invalid sequence becomes '?';
 *   - lines longer than DELIVER_DSN_FOLD are folded at spaces (header
 *     fields: CRLF + SP, RFC 5322 §2.2.3 and RFC 3464 §2.1.1; text: CRLF
 *     + indentation); a word that does not fit in DELIVER_DSN_LINE_MAX is
 *     cut there, on a UTF-8 character boundary.
 * ORCPT and ENVID are shown xtext-decoded (RFC 3461 §4); a malformed xtext
 * value is shown as stored.
 *
 * Errors: a function that fails leaves out->len as it was on entry, so a
 * partly written piece never reaches the spool by accident; the DSN as a
 * whole must then be abandoned.
 */
#ifndef RELAY_DELIVER_DSN_H
#define RELAY_DELIVER_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* RFC 5322 §2.1.1: a line MUST be at most 998 octets without its CRLF... */
#define DELIVER_DSN_LINE_MAX 998
/* ...and SHOULD be at most 78: where our output is folded. */
#define DELIVER_DSN_FOLD 78
/* RFC 2046 §5.1.1: a boundary is 1 to 70 bchars. */
#define DELIVER_DSN_BOUNDARY_MAX 70
/* A field name held back while deciding whether a line of the original is
 * a header field (headers_only): a name of CONF_HEADER_NAME_MAX (76)
 * plus blanks before the colon. A longer name is taken to be a field (the
 * stored header section holds nothing else: smtpd_scrub.h). */
#define DELIVER_DSN_NAME_MAX 78

enum deliver_dsn_action { DELIVER_DSN_FAILED, DELIVER_DSN_DELAYED };

struct deliver_dsn_rcpt {
	/* The recipient, without <> -> Final-Recipient: rfc822;ADDR. Must
	 * not be NULL. */
	const char *addr;
	/* ORCPT as stored ("rfc822;x+2By@z", xtext) or NULL ->
	 * Original-Recipient: rfc822;x+y@z (decoded). */
	const char *orcpt;
	enum deliver_dsn_action action;
	/* Enhanced status code ("5.1.1", "4.4.7"). NULL or not of the form
	 * [245].D{1,3}.D{1,3} (RFC 3463 §2): "5.0.0" when failed, "4.0.0"
	 * when delayed. */
	const char *status;
	/* The host that answered, or NULL -> Remote-MTA: dns;NAME. */
	const char *remote_mta;
	/* The remote SMTP reply ("550 5.1.1 <x@y>: no such user"), any bytes,
	 * or NULL -> Diagnostic-Code: smtp; TEXT, and in the text part. */
	const char *diag;
	/* Our own words when there was no remote reply ("connection
	 * refused"), or NULL; shown in the text part only. */
	const char *reason;
	/* Unix seconds, or 0 -> Last-Attempt-Date. */
	int64_t last_attempt;
};

struct deliver_dsn {
	/* Our host name -> Reporting-MTA: dns;NAME and
	 * From: "Mail Delivery System" <MAILER-DAEMON@NAME>. Required. */
	const char *reporting_mta;
	/* The original's queue id -> X-Relayd-Queue-ID: QID (an extension
	 * field, RFC 3464 §3.2), or NULL to leave it out. */
	const char *qid;
	/* ENVID as stored (xtext), or NULL -> Original-Envelope-Id
	 * (decoded). */
	const char *envid;
	/* The original envelope sender, the DSN's To: <SENDER>. Required and
	 * not empty: there is no DSN for the null sender. */
	const char *sender;
	/* "<ID@host>" for the DSN's Message-ID. Required. */
	const char *message_id;
	/* The MIME boundary ("QID.1700000000/host"). Required. Used as given
	 * when it is made of RFC 2046 bchars other than space; otherwise each
	 * other byte becomes '.', and it is cut to DELIVER_DSN_BOUNDARY_MAX
	 * (see deliver_dsn_boundary()). Uniqueness is the caller's: the
	 * original is not searched for it. */
	const char *boundary;
	/* Unix seconds: Arrival-Date (0: left out), and Date:. */
	int64_t arrival;
	int64_t now;
	/* A "delayed" warning instead of a failure report: Subject, text and
	 * part 3's description differ. Each recipient still has its own
	 * action; a report may mix them. */
	bool delayed;
	/* Unix seconds, or 0: Will-Retry-Until for each delayed recipient,
	 * and the date the text says retries continue until. */
	int64_t retry_until;
	/* Part 3 is text/rfc822-headers (the original's header section)
	 * instead of message/rfc822 (the whole original): RET=HDRS. */
	bool headers_only;
	/* The original was SMTPUTF8 or 8BITMIME: the DSN may carry UTF-8
	 * (Content-Transfer-Encoding: 8bit on the message and each part, the
	 * text part in charset=utf-8). Otherwise it is 7-bit apart from
	 * whatever the original itself contains. */
	bool utf8;
	/* RFC 6533, for a report about an internationalized (SMTPUTF8)
	 * message: part 2 is message/global-delivery-status, where a
	 * recipient address that is not ASCII is given as
	 * "utf-8;ADDR" (§3 utf-8-addr-unitext: the UTF-8 as is, with '+',
	 * '=', '\\' and controls as \x{HEX}); part 3 is message/global or
	 * message/global-headers. These are body parts: the report itself
	 * needs no SMTPUTF8 for them, only 8BITMIME (RFC 6532 §3.5-3.7).
	 * Meant with utf8. */
	bool global;
	size_t nrcpt;          /* at least 1 (RFC 3464 §2.1) */
	const struct deliver_dsn_rcpt *rcpt;
};

/*
 * Appends everything before the original to out:
 *
 *   the message header: From: "Mail Delivery System" <MAILER-DAEMON@host>,
 *     To: <sender>, Subject ("Undelivered Mail Returned to Sender" or
 *     "Delayed Mail (still being retried)"), Date (RFC 5322 §3.3, UTC),
 *     Message-ID, MIME-Version: 1.0, Content-Type: multipart/report;
 *     report-type=delivery-status; boundary="B" (folded before boundary),
 *     Content-Transfer-Encoding: 8bit (utf8 only), Auto-Submitted:
 *     auto-replied (RFC 3834 §5);
 *   a one-line MIME preamble;
 *   part 1, text/plain: who we are, what happened, whether delivery is
 *     still being retried (and until when), then one paragraph per
 *     recipient with its action, status, and the remote reply and/or
 *     reason;
 *   part 2, message/delivery-status, fields in RFC 3464 §2.2/§2.3 order:
 *     Original-Envelope-Id (when envid), Reporting-MTA, Arrival-Date (when
 *     arrival), X-Relayd-Queue-ID (when qid); then for each recipient an
 *     empty line and Original-Recipient (when orcpt), Final-Recipient,
 *     Action (failed|delayed), Status, Remote-MTA (when set),
 *     Diagnostic-Code (when diag), Last-Attempt-Date (when set),
 *     Will-Retry-Until (action delayed and retry_until set);
 *   the delimiter of part 3, its Content-Description and Content-Type
 *     ("message/rfc822" or "text/rfc822-headers"), and the empty line.
 * Optional values that are empty after sanitizing are left out like NULL.
 *
 * Returns 0, -EINVAL (a required field is NULL or empty, nrcpt is 0, a
 * recipient's addr is NULL, or a time is outside years 1900-9999), or
 * -ENOBUFS/-ENOMEM from buf. Deterministic: the same d gives the same
 * bytes.
 */
int deliver_dsn_head(const struct deliver_dsn *d, struct buf *out);

/*
 * Writes the boundary deliver_dsn_head() and deliver_dsn_tail() use into
 * out (NUL-terminated) and returns its length (1..70): d->boundary with
 * every byte that is not an RFC 2046 bchar (or is a space) replaced by
 * '.', cut to DELIVER_DSN_BOUNDARY_MAX; "relayd-dsn" when NULL or empty.
 */
size_t deliver_dsn_boundary(const struct deliver_dsn *d,
                            char out[DELIVER_DSN_BOUNDARY_MAX + 1]);

/* States of the copy of the original (names: deliver_dsn_orig_state_name). */
enum deliver_dsn_orig_state {
	DELIVER_DSN_ORIG_BOL,    /* headers_only: at the start of a line */
	DELIVER_DSN_ORIG_NAME,   /* headers_only: field name held back */
	DELIVER_DSN_ORIG_FIELD,  /* headers_only: in a header field line */
	DELIVER_DSN_ORIG_BODY,   /* whole copy: every byte passes */
	DELIVER_DSN_ORIG_DONE,   /* headers_only: the header section ended */
};

/*
 * The copy of the original into part 3. Private apart from `copied`.
 *
 * The original is copied as stored, with two repairs so the output keeps
 * its guarantees even for a spool file that breaks the spool's own rules:
 * a bare CR or bare LF becomes CRLF, and a line longer than
 * DELIVER_DSN_LINE_MAX octets is broken by inserting CRLF + SP (a fold in
 * the header section, as Postfix's smtp_line_length_limit does), before a
 * UTF-8 lead byte near the limit rather than inside its sequence.
 *
 * headers_only copies the header section as smtpd_scrub delimits it: it
 * ends at the first empty line, or at the first line that is not a header
 * field (no colon after a field name of printable ASCII, a blank inside
 * the name, a leading blank on the first line, or an 8-bit or control
 * byte in the name). Neither that line nor anything after it is copied.
 */
struct deliver_dsn_orig {
	int state;              /* enum deliver_dsn_orig_state */
	bool first_line;        /* headers_only: no line ended yet */
	bool pending_cr;        /* a CR whose LF may come in the next chunk */
	bool name_wsp;          /* blanks after the held name */
	size_t namelen;
	char name[DELIVER_DSN_NAME_MAX];
	size_t col;             /* octets on the current output line */
	int err;                /* first error, returned from then on */
	uint64_t copied;        /* octets appended to out so far */
};

/* Starts a copy: the whole original, or only its header section.
 * headers_only must match the deliver_dsn's. */
void deliver_dsn_orig_init(struct deliver_dsn_orig *o, bool headers_only);

/*
 * Appends the next n bytes of the original (as stored: CRLF lines, not
 * dot-stuffed; chunks may split anywhere, a CRLF or the empty line
 * included) to out. Returns 1 when no more input is wanted (headers_only
 * and the header section has ended; the line that ended it is not copied,
 * nor anything after it in p), 0 to keep feeding, or -ENOBUFS/-ENOMEM
 * from buf (then nothing of this chunk is in out, and every later call
 * returns the same error).
 */
int deliver_dsn_orig_feed(struct deliver_dsn_orig *o, const uint8_t *p,
                          size_t n, struct buf *out);

/*
 * The end of the DSN, after the last feed: a CRLF unless the copied text
 * ended with one (so an original without a final CRLF, or with nothing
 * copied, keeps its last line whole; a CR left pending at the end counts
 * as the line end the feed would have made of it), then the closing
 * delimiter "--B--" and CRLF. Returns 0, o's error if a feed failed, or
 * -ENOBUFS/-ENOMEM from buf.
 */
int deliver_dsn_tail(const struct deliver_dsn *d,
                     const struct deliver_dsn_orig *o, struct buf *out);

/* The copy's state by name, for log lines. */
const char *deliver_dsn_orig_state_name(const struct deliver_dsn_orig *o);

#endif
