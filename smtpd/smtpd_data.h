/*
 * smtpd/smtpd_data.h - The DATA reader: a byte-at-a-time state machine
 * that removes dot-stuffing (RFC 5321 §4.5.2), finds the end of data, and
 * enforces strict line endings. Pure; streams to an emit callback and never
 * holds the message.
 *
 * Only <CRLF>.<CRLF> ends DATA (the CRLF before the dot belongs to the
 * message; a message that starts with ".\r\n" is empty). A bare LF or bare
 * CR anywhere - including the sequences \n.\n, \r.\n, \n.\r\n, \r\n.\r,
 * \r.\r\n - never ends the data and never splits a message (SMTP smuggling,
 * CVE-2023-51764): with reject policy it marks the message as bad (the rest
 * is read and discarded until the real end); with normalize policy each
 * bare LF or bare CR becomes CRLF in the output, but still cannot end the
 * data or begin a dot-stuffed line.
 *
 * In RAW mode (BDAT chunks, RFC 3030) there is no dot-unstuffing and no end
 * marker; line-ending and NUL checks still apply, and smtpd_data_finish()
 * must be called after the LAST chunk.
 */
#ifndef RELAY_SMTPD_DATA_H
#define RELAY_SMTPD_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum smtpd_data_mode { SMTPD_DATA_DOT, SMTPD_DATA_RAW };

/* Error bits; once any is set, nothing more is emitted. */
#define SMTPD_DATA_E_BARE    0x01  /* bare CR or LF (reject policy) */
#define SMTPD_DATA_E_NUL     0x02  /* NUL byte */
#define SMTPD_DATA_E_TOO_BIG 0x04  /* more than `limit` content bytes */
#define SMTPD_DATA_E_WRITE   0x08  /* emit returned an error (see werr) */

/* Receives unstuffed content. Returns 0 or -errno (then E_WRITE is set and
 * werr keeps the first error). */
typedef int (*smtpd_data_emit_fn)(void *ctx, const uint8_t *p, size_t n);

struct smtpd_data {
	enum smtpd_data_mode mode;
	bool normalize;     /* bare CR/LF -> CRLF instead of rejecting */
	int state;          /* private */
	uint64_t size;      /* content bytes counted (also past the limit) */
	uint64_t limit;     /* max content bytes */
	unsigned errors;    /* SMTPD_DATA_E_* */
	int werr;           /* first emit error */
};

void smtpd_data_init(struct smtpd_data *d, enum smtpd_data_mode mode,
                     uint64_t limit, bool normalize);

/* Consumes bytes from in. In DOT mode it stops right after the end marker
 * and sets *done (the return value counts the marker); the caller handles
 * any bytes after it as commands. In RAW mode it consumes everything and
 * *done stays false. Output is batched: emit is called with runs of bytes,
 * not per byte. */
size_t smtpd_data_feed(struct smtpd_data *d, const uint8_t *in, size_t n,
                       bool *done, smtpd_data_emit_fn emit, void *ctx);

/* RAW mode, after the last chunk: settles a pending CR at the very end
 * (a bare CR: error or normalized). Returns d->errors. */
unsigned smtpd_data_finish(struct smtpd_data *d, smtpd_data_emit_fn emit,
                           void *ctx);

/* The reader's current state by name, for log lines. */
const char *smtpd_data_state_name(const struct smtpd_data *d);

#endif
