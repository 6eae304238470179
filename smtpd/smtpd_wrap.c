/*
 * smtpd/smtpd_wrap.c - The line-length limiter (contract: smtpd_wrap.h).
 * Folds header lines and breaks body lines longer than 998 octets
 * (long_lines = wrap), or only notices them (long_lines = reject). Owns
 * only the struct smtpd_wrap, which holds at most one header line.
 *
 * States:
 *
 *   HEAD   header section: each line is collected in hold[] (at most 998
 *          octets and a CR that may end it) and emitted whole at its
 *          CRLF, so a fold point before the 999th octet can still be
 *          chosen. An empty line ends the section.
 *   BODY   everything else, and the whole message in CHECK mode: runs of
 *          the input are emitted as they are (zero-copy); only the octet
 *          count of the current line is kept, and a break goes in when a
 *          999th octet arrives.
 *   STOP   CHECK mode after a long line, or after an emit error: input is
 *          consumed, nothing is emitted.
 *
 * Octets on a line: a CR LF pair ends the line and is not counted; every
 * other byte (a lone CR or LF too) counts. A CR that would be the 999th
 * octet is content only if no LF follows; until the next byte shows it,
 * it stays undecided (the last byte of hold[] in HEAD, held_cr in BODY).
 */
#include "smtpd/smtpd_wrap.h"

#include <string.h>

#include "common/log.h"

#define LIMIT SMTP_TEXT_LINE_MAX
#define NO_COLON SIZE_MAX

enum { WRAP_ST_HEAD, WRAP_ST_BODY, WRAP_ST_STOP };

/* For log lines; indexed by the WRAP_ST_* values above. */
static const char *const wrap_state_names[] = {"HEAD", "BODY", "STOP"};

const char *smtpd_wrap_state_name(const struct smtpd_wrap *w)
{
	if (w->state < 0 || w->state > WRAP_ST_STOP)
		return "?";
	return wrap_state_names[w->state];
}

void smtpd_wrap_init(struct smtpd_wrap *w, enum smtpd_wrap_mode mode,
                     smtpd_wrap_emit_fn emit, void *ctx)
{
	memset(w, 0, sizeof *w);
	w->mode = mode;
	w->emit = emit;
	w->ctx = ctx;
	/* CHECK looks at every line alike: no header state needed. */
	w->state = mode == SMTPD_WRAP_FOLD ? WRAP_ST_HEAD : WRAP_ST_BODY;
	w->colon = NO_COLON;
}

static void out(struct smtpd_wrap *w, const void *p, size_t n)
{
	if (n == 0 || w->err)
		return;
	int r = w->emit(w->ctx, p, n);
	if (r < 0) {
		w->err = r;
		w->state = WRAP_ST_STOP;
	}
}

static inline bool is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* ---- header section ------------------------------------------------------ */

/* The held line cannot take another octet: break it. Emits the longest
 * foldable prefix (see smtpd_wrap.h) with CRLF and keeps the rest, which
 * starts with its blank, as a continuation line; without a fold point,
 * emits 998 octets, CRLF, and keeps SP + the rest. */
static void head_fold(struct smtpd_wrap *w)
{
	const uint8_t *h = w->hold;
	size_t n = w->nhold;
	/* The first octet a fold may follow: after the colon on a field's
	 * first line, after the first visible octet on a continuation. */
	size_t lo = NO_COLON;
	if (!w->cont) {
		lo = w->colon;
	} else {
		for (size_t i = 0; i < n; i++)
			if (!is_wsp(h[i])) {
				lo = i;
				break;
			}
	}
	size_t k = 0;
	if (lo != NO_COLON) {
		/* The blank at k starts the next line, so k <= LIMIT keeps
		 * this one within the limit; h[k + 1] > ' ' is a visible
		 * octet (not a blank, not the CR that may end the line). */
		size_t hi = n - 1 < LIMIT ? n - 1 : LIMIT;
		for (size_t i = hi; i > lo + 1; i--) {
			if (is_wsp(h[i - 1]) && h[i] > ' ') {
				k = i - 1;
				break;
			}
		}
	}
	w->breaks++;
	if (k > 0) {
		out(w, h, k);
		out(w, "\r\n", 2);
		memmove(w->hold, h + k, n - k);
		w->nhold = n - k;
	} else {
		out(w, h, LIMIT);
		out(w, "\r\n", 2);
		/* n - LIMIT is 0 or 1 here: room for the SP. */
		memmove(w->hold + 1, h + LIMIT, n - LIMIT);
		w->hold[0] = ' ';
		w->nhold = n - LIMIT + 1;
	}
	w->cont = true;
	w->fold_cont = true;
}

/* The held line (ending in CR) is a continuation one of our folds started
 * and holds nothing but blanks. */
static bool head_blank_fold(const struct smtpd_wrap *w)
{
	if (!w->fold_cont)
		return false;
	for (size_t i = 0; i + 1 < w->nhold; i++)
		if (!is_wsp(w->hold[i]))
			return false;
	return true;
}

/* Whether appending c would put a 999th octet on the held line. */
static inline bool head_full(const struct smtpd_wrap *w, uint8_t c)
{
	/* All held octets are content but a last CR, which c (not LF here)
	 * now makes content too. A CR as c may still end the line. */
	return w->nhold > LIMIT || (w->nhold == LIMIT && c != '\r');
}

/* Consumes header bytes; returns how many (all, or up to and including
 * the empty line that ends the section). */
static size_t head_feed(struct smtpd_wrap *w, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		if (c == '\n' && w->nhold > 0 && w->hold[w->nhold - 1] == '\r') {
			if (w->nhold == 1) {
				/* The empty line: the body starts after it. */
				out(w, "\r\n", 2);
				w->nhold = 0;
				if (w->state == WRAP_ST_HEAD)
					w->state = WRAP_ST_BODY;
				return i + 1;
			}
			if (head_blank_fold(w)) {
				/* The line before ended with our CRLF already. */
				w->nhold = 0;
				continue;
			}
			w->hold[w->nhold++] = '\n';
			out(w, w->hold, w->nhold);
			w->nhold = 0;
			continue;
		}
		if (w->nhold == 0) {
			w->cont = is_wsp(c);
			w->fold_cont = false;
			w->colon = NO_COLON;
		}
		while (head_full(w, c))
			head_fold(w);
		if (c == ':' && !w->cont && w->colon == NO_COLON)
			w->colon = w->nhold;
		w->hold[w->nhold++] = c;
	}
	return n;
}

/* ---- body ---------------------------------------------------------------- */

static void body_feed(struct smtpd_wrap *w, const uint8_t *p, size_t n)
{
	const uint8_t *run = p;   /* start of the pending run of input */
	size_t i = 0;
	while (i < n) {
		if (w->col < LIMIT) {
			/* Fast path: up to the limit, only line ends matter. */
			size_t k = LIMIT - w->col;
			if (k > n - i)
				k = n - i;
			const uint8_t *lf = memchr(p + i, '\n', k);
			if (!lf) {
				w->col += k;
				i += k;
				w->cr = p[i - 1] == '\r';
				continue;
			}
			size_t j = (size_t)(lf - p);
			bool crlf = j > i ? p[j - 1] == '\r' : w->cr;
			w->col = crlf ? 0 : w->col + (j + 1 - i);
			w->cr = false;
			i = j + 1;
			continue;
		}
		/* LIMIT octets on the line; p[i] would be the next one. */
		uint8_t c = p[i];
		if (w->held_cr) {
			if (c == '\n') {
				/* CR LF after 998 octets: the line is whole. */
				out(w, run, (size_t)(p + i - run));
				out(w, "\r", 1);
				run = p + i;
				w->held_cr = false;
				w->col = 0;
				w->cr = false;
				i++;
				continue;
			}
		} else if (w->cr && c == '\n') {
			w->col = 0;   /* CR LF after 997 octets */
			w->cr = false;
			i++;
			continue;
		} else if (c == '\r') {
			/* Maybe the end of the line: decide on the next byte. */
			out(w, run, (size_t)(p + i - run));
			w->held_cr = true;
			i++;
			run = p + i;
			continue;
		}
		/* A 999th octet (the held CR, or c). */
		out(w, run, (size_t)(p + i - run));
		run = p + i;
		if (w->mode == SMTPD_WRAP_CHECK) {
			w->too_long = true;
			w->state = WRAP_ST_STOP;
			return;
		}
		out(w, "\r\n", 2);
		w->breaks++;
		w->col = 0;
		w->cr = false;
		if (w->held_cr) {
			out(w, "\r", 1);
			w->held_cr = false;
			w->col = 1;
			w->cr = true;
		}
		/* c is looked at again, on the new line. */
	}
	out(w, run, (size_t)(p + n - run));
}

/* ---- entry points -------------------------------------------------------- */

int smtpd_wrap_feed(struct smtpd_wrap *w, const uint8_t *p, size_t n)
{
	if (w->state == WRAP_ST_HEAD) {
		size_t used = head_feed(w, p, n);
		p += used;
		n -= used;
	}
	if (w->state == WRAP_ST_BODY && n > 0)
		body_feed(w, p, n);
	return w->err;
}

int smtpd_wrap_finish(struct smtpd_wrap *w)
{
	if (w->state == WRAP_ST_HEAD) {
		/* A last CR with nothing after it is an octet of the line. */
		while (w->nhold > LIMIT)
			head_fold(w);
		out(w, w->hold, w->nhold);
		w->nhold = 0;
	} else if (w->state == WRAP_ST_BODY && w->held_cr) {
		if (w->mode == SMTPD_WRAP_CHECK) {
			w->too_long = true;
			w->state = WRAP_ST_STOP;
		} else {
			out(w, "\r\n\r", 3);
			w->breaks++;
		}
		w->held_cr = false;
	}
	if (w->state != WRAP_ST_STOP)
		w->state = WRAP_ST_STOP;
	return w->err;
}
