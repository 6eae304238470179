/*
 * smtpd/smtpd_scrub.h - Streaming header filter between the DATA reader
 * and the spool. Drops every header field named in the scrub list (case-
 * insensitive, together with its folded continuation lines), notes whether
 * Message-ID and Date are present, and at the end of the header section
 * inserts the caller's Message-ID and/or Date lines when they were missing.
 * The body is passed through untouched. Pure: bytes in, bytes to emit.
 *
 * Input is the message as CRLF lines, in chunks of any size (a field name
 * may be split across calls). The header section ends at the first empty
 * line, or at the first line that is not a header field (no colon, bad
 * field-name characters, a leading blank on the first line), which then
 * begins the body after an inserted empty line (issue 8 §7): the output
 * always separates header and body with an empty line, so no reader can
 * take a line of the body for a header field. Header lines are not
 * length-limited here; the bytes after the field name are streamed.
 *
 * Added lines go right before that empty line (the client's or ours).
 * A header field's colon is one of the first 998 octets of its line (RFC
 * 5322 §2.1.1): name[] holds the name and blanks before it, at most
 * SMTPD_SCRUB_HOLD_MAX octets; a line without a colon there is not a
 * header field.
 *
 * Optionally (smtpd_scrub_capture_from) it also keeps a copy of the first
 * kept From: field's value, for the credential's author check (issue 4
 * §3), and counts the kept From: fields.
 *
 * Hops (issue 9 §3): it always counts the Received: fields of the header
 * section, dropped or kept (`received`), the count Postfix's
 * hopcount_limit and Exim's received_headers_max go by. Optionally
 * (smtpd_scrub_hops) each dropped Received: field is replaced, where it
 * stood, by the caller's origin-free line (relayd's own host name and
 * date, nothing of the original), so the next MTA still counts every hop
 * and a loop through relayds grows the count; at most hop_max of them, as
 * a message with more is refused anyway (and a flood of tiny Received:
 * lines must not grow into a far larger spool file).
 */
#ifndef RELAY_SMTPD_SCRUB_H
#define RELAY_SMTPD_SCRUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/smtp.h"

/* Name and blanks before the colon: the colon is at most the 998th
 * octet of the line (RFC 5322 §2.1.1). */
#define SMTPD_SCRUB_HOLD_MAX (SMTP_TEXT_LINE_MAX - 1)

typedef int (*smtpd_scrub_emit_fn)(void *ctx, const uint8_t *p, size_t n);

struct smtpd_scrub {
	const char *const *names;  /* header names to drop, not owned */
	size_t nnames;
	const char *msgid_line;    /* "Message-ID: <...>\r\n" to add if missing */
	const char *date_line;     /* "Date: ...\r\n" to add if missing */
	smtpd_scrub_emit_fn emit;
	void *ctx;
	/* private */
	int state;
	bool drop;                 /* current field (and its folds) dropped */
	bool have_msgid, have_date;
	size_t namelen;
	char name[SMTPD_SCRUB_HOLD_MAX];
	unsigned dropped;          /* number of fields removed (for the log) */
	bool inserted;             /* we inserted the empty line (§7) */
	int err;                   /* first emit error */
	/* From: capture (smtpd_scrub_capture_from); cap NULL: off. */
	char *cap;                 /* the caller's buffer, not owned */
	size_t cap_max, caplen;
	bool cap_on;               /* inside the captured field */
	bool cap_over;             /* the value was longer than cap_max */
	size_t cap_lead;           /* octets before the value on its first
	                              line: the name, blanks and colon */
	unsigned nfrom;            /* kept From: fields seen */
	/* Hops (smtpd_scrub_hops); hop_line NULL: dropped fields vanish. */
	const char *hop_line;      /* "Received: ...\r\n" per dropped one */
	unsigned hop_max;          /* no hop_line past this many Received */
	unsigned received;         /* Received: fields seen, dropped or kept */
	unsigned hop_lines;        /* hop_line emitted this many times */
};

void smtpd_scrub_init(struct smtpd_scrub *s, const char *const *names,
                      size_t nnames, const char *msgid_line,
                      const char *date_line, smtpd_scrub_emit_fn emit,
                      void *ctx);

/* After init: copy the value of the first kept From: field (the bytes
 * after its colon, continuation lines and their CR LF included, up to the
 * end of its last line) into buf, at most max bytes (then cap_over is set
 * and caplen stays at max); caplen is its length, nfrom the number of kept
 * From: fields, cap_lead the octets before the value on the field's first
 * line (name, blanks, colon). buf is not NUL-terminated and must outlive
 * the feeding. */
void smtpd_scrub_capture_from(struct smtpd_scrub *s, char *buf, size_t max);

/* After init: replace each dropped Received: field (the field and its
 * continuation lines) by line, a whole header line with its CRLF that
 * must itself be a Received: field, as long as at most max Received:
 * fields have been seen; past that they are only dropped (and counted).
 * line must outlive the feeding. */
void smtpd_scrub_hops(struct smtpd_scrub *s, const char *line, unsigned max);

/* Returns 0 or the first emit error. */
int smtpd_scrub_feed(struct smtpd_scrub *s, const uint8_t *p, size_t n);

/* End of message: if still in the header section (no body, or input that
 * ended mid-line), completes it (terminating a partial line with CRLF) and
 * adds the missing fields. Returns 0 or the first emit error. */
int smtpd_scrub_finish(struct smtpd_scrub *s);

/* The scrubber's current state by name, for log lines. */
const char *smtpd_scrub_state_name(const struct smtpd_scrub *s);

#endif
