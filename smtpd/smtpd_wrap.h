/*
 * smtpd/smtpd_wrap.h - The line-length limiter between the header
 * scrubber and the spool (issue 8 §2, `long_lines`). RFC 5322 §2.1.1 and
 * RFC 5321 §4.5.3.1.6: a line holds at most SMTP_TEXT_LINE_MAX (998)
 * octets before its CRLF. Pure and streaming: bytes in, bytes to emit;
 * holds at most one header line (SMTP_TEXT_LINE_MAX + 2 bytes), never the
 * message.
 *
 * Input is the scrubbed message: CRLF lines whose header section ends at
 * the first empty line (smtpd_scrub inserts one where it decided the body
 * starts, so this is the same boundary). A CR LF pair ends a line; a lone
 * CR or LF is an ordinary octet of the line (the DATA reader lets none
 * through). A CR as the 999th octet is held back until the next byte
 * shows whether it ends the line, so the output never depends on where
 * the input was split.
 *
 * SMTPD_WRAP_FOLD (long_lines = wrap): each line longer than 998 octets
 * is broken before its 999th octet, so nothing is dropped and the bytes
 * after a break are the bytes that followed:
 *   - header lines are folded (RFC 5322 §2.2.3): CRLF goes before the
 *     last blank that still leaves at most 998 octets on the line, is
 *     followed by a visible octet (never a blank-only continuation line)
 *     and comes after the field's colon (never inside the name) or, on a
 *     continuation line, after a visible octet; unfolding gives the
 *     original line back. Without such a blank, CRLF SP is inserted after
 *     the 998th octet (the one octet added to the field), as Postfix does
 *     (smtp_line_length_limit). A continuation line a fold started that
 *     ends holding only blanks is dropped (the field's trailing blanks):
 *     a blank-only line in the header section is one some readers take
 *     for its end, and RFC 5322 §3.2.2 forbids it;
 *   - body lines get a CRLF after every 998 octets.
 * SMTPD_WRAP_CHECK (long_lines = reject): nothing is changed; the first
 * line longer than 998 octets sets too_long and stops all output (the
 * message will be refused, so the rest is not written).
 */
#ifndef RELAY_SMTPD_WRAP_H
#define RELAY_SMTPD_WRAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/smtp.h"

enum smtpd_wrap_mode { SMTPD_WRAP_FOLD, SMTPD_WRAP_CHECK };

/* Receives the output. Returns 0 or -errno (kept in err; output stops). */
typedef int (*smtpd_wrap_emit_fn)(void *ctx, const uint8_t *p, size_t n);

struct smtpd_wrap {
	enum smtpd_wrap_mode mode;
	smtpd_wrap_emit_fn emit;
	void *ctx;
	/* private */
	int state;
	size_t col;          /* BODY: octets on the current output line */
	bool cr;             /* BODY: the last of them is a CR */
	bool held_cr;        /* BODY: a CR past the limit, held back */
	bool cont;           /* HEAD: the held line is a continuation */
	bool fold_cont;      /* HEAD: ... that a fold of ours started */
	size_t colon;        /* HEAD: first ':' of a field's first line */
	size_t nhold;        /* HEAD: bytes in hold */
	uint8_t hold[SMTP_TEXT_LINE_MAX + 2];
	/* results */
	unsigned long long breaks;  /* FOLD: line breaks inserted */
	bool too_long;       /* CHECK: a line longer than the limit */
	int err;             /* first emit error */
};

void smtpd_wrap_init(struct smtpd_wrap *w, enum smtpd_wrap_mode mode,
                     smtpd_wrap_emit_fn emit, void *ctx);

/* Returns 0 or the first emit error. */
int smtpd_wrap_feed(struct smtpd_wrap *w, const uint8_t *p, size_t n);

/* End of the message: flushes a held line (an unterminated one stays
 * unterminated) or a held CR. Returns 0 or the first emit error. */
int smtpd_wrap_finish(struct smtpd_wrap *w);

/* The limiter's current state by name, for log lines. */
const char *smtpd_wrap_state_name(const struct smtpd_wrap *w);

#endif
