/*
 * smtpd/smtpd_data.c - The DATA reader (contract: smtpd_data.h). Removes
 * dot-stuffing, finds the one genuine end marker <CRLF>.<CRLF>, and holds
 * line endings to CRLF, streaming content to an emit callback in runs.
 * Owns nothing but the small struct smtpd_data; never holds the message.
 *
 * State machine (DOT mode; RAW mode never enters the BOL states):
 *
 *   BOL         at a genuine line start: the very start of the data, or
 *               right after a real CR LF. Only here can a dot be
 *               unstuffed or begin the end marker.
 *   BOL_DOT     BOL, then "." (held back, never emitted).
 *   BOL_DOT_CR  BOL, ".", CR (held back). LF now ends the data.
 *   TEXT        inside a line, or at a line start made by a bare CR or
 *               bare LF (normalized or not): such a start is NOT genuine,
 *               so "\n.\r\n" never ends the data (SMTP smuggling,
 *               CVE-2023-51764) and its dot is kept as content.
 *   CR          TEXT, then CR. LF makes a real line end (-> BOL); anything
 *               else makes it a bare CR.
 *   DONE        the end marker was consumed.
 *
 * Output and errors:
 *   - Bytes that pass unchanged are collected as runs of the input buffer
 *     and emitted in one call when a byte must be skipped (a stuffing dot,
 *     the end marker) or replaced (a normalized bare CR/LF), or at the end
 *     of the feed. A CR that ends a feed is held back (not emitted) until
 *     the next byte shows whether it is part of a CRLF, so the output never
 *     depends on where the input was split.
 *   - The first error (bare CR/LF under reject, NUL, size, write) stops all
 *     output; the content emitted before it is exactly the valid content
 *     that preceded the offending byte. The reader goes on tracking lines
 *     so it still finds the genuine end marker, keeps counting size, and
 *     keeps setting error bits: at the end, errors holds every condition
 *     met (E_TOO_BIG iff size > limit), whatever came first.
 *   - Size counts content bytes: after unstuffing, CRLFs included, a bare
 *     CR or LF counted as the CRLF normalize would make of it (under
 *     either policy, so size does not depend on it). Exactly `limit`
 *     bytes may be emitted; the byte past it sets E_TOO_BIG and nothing
 *     of it (or after it) is emitted. `limit` is a hard maximum; pass
 *     UINT64_MAX for none.
 *   - A dot at a genuine line start followed by anything but CR LF is
 *     removed (RFC 5321 §4.5.2), including ".\n" and ".\r" + x, where the
 *     bare CR/LF after it is then handled as any bare CR/LF.
 */
#include "smtpd_data.h"

#include <string.h>

#include "common/log.h"

enum {
	DATA_ST_BOL,
	DATA_ST_BOL_DOT,
	DATA_ST_BOL_DOT_CR,
	DATA_ST_TEXT,
	DATA_ST_CR,
	DATA_ST_DONE,
};

/* For log lines; indexed by the DATA_ST_* values above. */
static const char *const data_state_names[] = {
	"BOL", "BOL_DOT", "BOL_DOT_CR", "TEXT", "CR", "DONE",
};

const char *smtpd_data_state_name(const struct smtpd_data *d)
{
	if (d->state < 0 || d->state > DATA_ST_DONE)
		return "?";
	return data_state_names[d->state];
}

static const uint8_t crlf[2] = {'\r', '\n'};

/* Whether any byte of w is below 14 (CR is 13): the classic SWAR test,
 * exact for any threshold up to 128 ("Bit Twiddling Hacks", hasless). */
static inline bool has_below_14(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101ull;
	return ((w - ones * 14) & ~w & ones * 0x80) != 0;
}

void smtpd_data_init(struct smtpd_data *d, enum smtpd_data_mode mode,
                     uint64_t limit, bool normalize)
{
	d->mode = mode;
	d->normalize = normalize;
	d->state = mode == SMTPD_DATA_DOT ? DATA_ST_BOL : DATA_ST_TEXT;
	d->size = 0;
	d->limit = limit;
	d->errors = 0;
	d->werr = 0;
}

/* Counts n content bytes; E_TOO_BIG as soon as they pass the limit. */
static inline size_t count(struct smtpd_data *d, size_t n)
{
	uint64_t room = d->size < d->limit ? d->limit - d->size : 0;
	d->size += n;
	if ((uint64_t)n <= room)
		return n;
	d->errors |= SMTPD_DATA_E_TOO_BIG;
	return (size_t)room;
}

/* Counts n content bytes and emits as many of them as the limit allows,
 * unless an error already stopped the output. */
static void put(struct smtpd_data *d, const uint8_t *p, size_t n,
                smtpd_data_emit_fn emit, void *ctx)
{
	if (n == 0)
		return;
	bool stopped = d->errors != 0;
	size_t len = count(d, n);
	if (stopped || len == 0)
		return;
	int r = emit(ctx, p, len);
	if (r < 0) {
		d->errors |= SMTPD_DATA_E_WRITE;
		d->werr = r;
	}
}

/* A bare CR or LF whose run has been flushed: under normalize it becomes
 * the CRLF given by (p, n) (the part not already emitted); under reject it
 * marks the message bad. Either way it counts as the normalized bytes, so
 * size does not depend on the policy. */
static void bare(struct smtpd_data *d, const uint8_t *p, size_t n,
                 smtpd_data_emit_fn emit, void *ctx)
{
	if (d->normalize) {
		put(d, p, n, emit, ctx);
	} else {
		d->errors |= SMTPD_DATA_E_BARE;
		count(d, n);
	}
}

size_t smtpd_data_feed(struct smtpd_data *d, const uint8_t *in, size_t n,
                       bool *done, smtpd_data_emit_fn emit, void *ctx)
{
	*done = false;
	if (d->state == DATA_ST_DONE) {
		*done = true;
		return 0;
	}
	if (n == 0)
		return 0;

	const int line_start = d->mode == SMTPD_DATA_DOT ? DATA_ST_BOL
	                                                 : DATA_ST_TEXT;
	int st = d->state;
	/* A CR that ended the previous feed was held back, not emitted. */
	bool cr_held = st == DATA_ST_CR;
	const uint8_t *run = in;  /* start of the pending run of content */
	size_t i = 0;

	while (i < n) {
		switch (st) {
		case DATA_ST_TEXT: {
			/* Fast path: everything above CR is plain content.
			 * Eight bytes at a time while none is below 14. */
			while (n - i >= 8) {
				uint64_t w;
				memcpy(&w, in + i, 8);
				if (has_below_14(w))
					break;
				i += 8;
			}
			while (i < n && in[i] > '\r')
				i++;
			if (i == n)
				goto out;
			uint8_t c = in[i];
			if (c == '\r') {
				st = DATA_ST_CR;  /* CR stays in the run */
			} else if (c == '\n') {
				/* Bare LF: the LF stays in the run, preceded by
				 * an inserted CR under normalize. */
				put(d, run, (size_t)(in + i - run), emit, ctx);
				run = in + i;
				bare(d, crlf, 1, emit, ctx);
			} else if (c == '\0') {
				put(d, run, (size_t)(in + i - run), emit, ctx);
				run = in + i;
				d->errors |= SMTPD_DATA_E_NUL;
			}
			i++;
			break;
		}

		case DATA_ST_CR:
			if (in[i] == '\n') {
				if (cr_held) {
					/* run == in + i: the LF starts it */
					put(d, crlf, 1, emit, ctx);
					cr_held = false;
				}
				i++;
				st = line_start;
				break;
			}
			/* Bare CR. The next byte is reprocessed as TEXT: the
			 * line start it makes is not genuine. */
			if (cr_held) {
				bare(d, crlf, 2, emit, ctx);
				cr_held = false;
			} else if (d->normalize) {
				put(d, run, (size_t)(in + i - run), emit, ctx);
				put(d, crlf + 1, 1, emit, ctx);
			} else {
				put(d, run, (size_t)(in + i - 1 - run), emit, ctx);
				bare(d, crlf, 2, emit, ctx);
			}
			run = in + i;
			st = DATA_ST_TEXT;
			break;

		case DATA_ST_BOL:
			if (in[i] == '.') {
				/* Stuffing dot or the end marker: hold it. */
				put(d, run, (size_t)(in + i - run), emit, ctx);
				i++;
				run = in + i;
				st = DATA_ST_BOL_DOT;
			} else {
				st = DATA_ST_TEXT;
			}
			break;

		case DATA_ST_BOL_DOT:
			/* run == in + i here: the dot was skipped. */
			if (in[i] == '\r') {
				i++;
				run = in + i;
				st = DATA_ST_BOL_DOT_CR;
			} else {
				/* "." + other: the dot is removed (§4.5.2). */
				st = DATA_ST_TEXT;
			}
			break;

		case DATA_ST_BOL_DOT_CR:
			/* run == in + i here: the dot and CR were skipped. */
			if (in[i] == '\n') {
				/* <CRLF>.<CRLF>: end of data. Nothing pending. */
				d->state = DATA_ST_DONE;
				*done = true;
				return i + 1;
			}
			/* ".\r" + other: dot removed, the CR is bare. */
			bare(d, crlf, 2, emit, ctx);
			st = DATA_ST_TEXT;
			break;

		default:
			/* DONE returned above; no other state exists. */
			RELAY_ASSERT(!"smtpd_data: bad state");
		}
	}
out:
	/* Hold back a final CR until the next byte decides what it is. */
	put(d, run, (size_t)(in + n - run) - (st == DATA_ST_CR), emit, ctx);
	d->state = st;
	return n;
}

unsigned smtpd_data_finish(struct smtpd_data *d, smtpd_data_emit_fn emit,
                           void *ctx)
{
	if (d->state == DATA_ST_CR) {
		/* A held CR with nothing after it is bare. */
		bare(d, crlf, 2, emit, ctx);
		d->state = DATA_ST_TEXT;
	}
	return d->errors;
}
