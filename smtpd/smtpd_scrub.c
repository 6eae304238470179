/*
 * smtpd/smtpd_scrub.c - Streaming header scrubber (contract:
 * smtpd_scrub.h). Drops the listed header fields with their folded
 * continuation lines, notes Message-ID and Date, and adds the caller's
 * lines for the missing ones at the end of the header section. Owns only
 * the struct smtpd_scrub; holds back at most one field name.
 *
 * States:
 *
 *   FIRST      start of the first line (a leading SP/HT here is not a
 *              continuation: there is nothing to continue, so the line
 *              is not a header field and starts the body).
 *   LSTART     start of a later header line.
 *   EMPTY_CR   CR at a line start (held back): LF makes the empty line
 *              that ends the header section.
 *   NAME       accumulating a field name in s->name (held back).
 *   NAME_WSP   field name, then SP/HT before the colon (RFC 5322 §4.5.1
 *              obs-optional: "Received :" is a Received field). The
 *              blanks are held in s->name after the name.
 *   FIELD      rest of a header line, after the colon: emitted straight
 *              from the input when kept, skipped when dropped.
 *   FIELD_CR   FIELD, then CR. LF ends the line; other bytes stay in the
 *              field.
 *   BODY       pass-through, zero-copy: each feed is one emit call.
 *
 * Decisions:
 *   - A field name is 1 or more characters 33..126 except ':' (RFC 5322
 *     §3.6.8), then optional blanks (obs-optional), then the colon, which
 *     must be one of the first 998 octets of the line (RFC 5322 §2.1.1;
 *     SMTPD_SCRUB_HOLD_MAX octets before it). A line whose name and
 *     blanks run on past that has no colon where a field would: it is not
 *     a header field, and the body starts at it, behind the inserted empty
 *     line, for every reader alike (issue 8 §7). Field names are not
 *     otherwise limited: a long one keeps the line in the header section,
 *     so the fields after it are still scrubbed.
 *   - Names compare ASCII case-insensitively and whole: "Received-SPF"
 *     is kept when "Received" is dropped.
 *   - A line at a line start that is not a header field (no colon, a bad
 *     character, a leading blank on the first line, a bare CR) ends the
 *     header section: the missing Message-ID/Date lines are added, then
 *     an empty line is inserted, then that line and the rest pass as
 *     body (issue 8 §7; Postfix's cleanup does the same). Without the
 *     empty line a reader more lenient than relayd (one that skips a
 *     malformed line; Python's email with a first line that starts with
 *     a blank, which it takes for a continuation) goes on reading
 *     "X-Originating-IP:" or "Received:" lines after it as header fields
 *     that were never scrubbed, and a first line starting with SP/HT
 *     would fold into an added field. With it, every reader sees the
 *     header section relayd scrubbed and the From: check judged.
 *   - An empty line ends the header section: missing lines are added
 *     before it.
 *   - Message-ID and Date count as present only if kept (a caller that
 *     scrubs them gets its own lines instead).
 *   - Bytes after the colon are not inspected: 8-bit field bodies pass
 *     unchanged, and header lines have no length limit here.
 *   - Every Received: field of the header section counts as a hop, kept
 *     or dropped, "Received :" (obs-optional) included, once however
 *     many continuation lines it has; one in the body is not a field and
 *     does not count. With hop lines on, a dropped one is replaced at its
 *     place by the caller's line (its first hop_max only): the fields
 *     stay in order, and the count the next MTA makes is the real one.
 *   - With capture on, the kept From: fields are counted and the first
 *     one's value (from after the colon through its last line's CR LF) is
 *     copied into the caller's bounded buffer as it passes; a dropped
 *     From: is not in the message and is not seen.
 */
#include "smtpd_scrub.h"

#include <limits.h>
#include <string.h>

#include "common/log.h"

enum {
	SCRUB_ST_FIRST,
	SCRUB_ST_LSTART,
	SCRUB_ST_EMPTY_CR,
	SCRUB_ST_NAME,
	SCRUB_ST_NAME_WSP,
	SCRUB_ST_FIELD,
	SCRUB_ST_FIELD_CR,
	SCRUB_ST_BODY,
};

/* For log lines; indexed by the SCRUB_ST_* values above. */
static const char *const scrub_state_names[] = {
	"FIRST", "LSTART", "EMPTY_CR", "NAME", "NAME_WSP", "FIELD",
	"FIELD_CR", "BODY",
};

const char *smtpd_scrub_state_name(const struct smtpd_scrub *s)
{
	if (s->state < 0 || s->state > SCRUB_ST_BODY)
		return "?";
	return scrub_state_names[s->state];
}

void smtpd_scrub_init(struct smtpd_scrub *s, const char *const *names,
                      size_t nnames, const char *msgid_line,
                      const char *date_line, smtpd_scrub_emit_fn emit,
                      void *ctx)
{
	memset(s, 0, sizeof(*s));
	s->names = names;
	s->nnames = nnames;
	s->msgid_line = msgid_line;
	s->date_line = date_line;
	s->emit = emit;
	s->ctx = ctx;
	s->state = SCRUB_ST_FIRST;
}

void smtpd_scrub_capture_from(struct smtpd_scrub *s, char *buf, size_t max)
{
	s->cap = buf;
	s->cap_max = max;
	s->caplen = 0;
	s->cap_on = s->cap_over = false;
	s->nfrom = 0;
}

void smtpd_scrub_hops(struct smtpd_scrub *s, const char *line, unsigned max)
{
	s->hop_line = line;
	s->hop_max = max;
}

/* Bytes of the captured From: field's value. */
static void cap_add(struct smtpd_scrub *s, const uint8_t *p, size_t n)
{
	if (!s->cap_on || n == 0)
		return;
	size_t room = s->cap_max - s->caplen;
	if (n > room) {
		n = room;
		s->cap_over = true;
	}
	memcpy(s->cap + s->caplen, p, n);
	s->caplen += n;
}

static inline bool is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/* RFC 5322 §3.6.8 ftext: printable US-ASCII except ':'. */
static inline bool is_ftext(uint8_t c)
{
	return c >= 33 && c <= 126 && c != ':';
}

static void out(struct smtpd_scrub *s, const void *p, size_t n)
{
	if (n == 0 || s->err)
		return;
	int r = s->emit(s->ctx, p, n);
	if (r < 0)
		s->err = r;
}

static bool name_eq(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
		if (x >= 'A' && x <= 'Z')
			x = (unsigned char)(x + 32);
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char)(y + 32);
		if (x != y)
			return false;
	}
	return true;
}

/* End of the header section: adds what the message lacks, once. Returns
 * whether it added anything. */
static bool add_missing(struct smtpd_scrub *s)
{
	bool added = false;
	if (s->msgid_line && !s->have_msgid) {
		out(s, s->msgid_line, strlen(s->msgid_line));
		added = true;
	}
	if (s->date_line && !s->have_date) {
		out(s, s->date_line, strlen(s->date_line));
		added = true;
	}
	s->have_msgid = s->have_date = true;
	return added;
}

/* The colon after the held name: decides the field's fate and, if it is
 * kept, emits the held name and blanks. */
static void decide(struct smtpd_scrub *s)
{
	size_t len = s->namelen;
	while (len > 0 && is_wsp((uint8_t)s->name[len - 1]))
		len--;
	s->drop = false;
	for (size_t k = 0; k < s->nnames; k++) {
		if (s->names[k] && name_eq(s->name, len, s->names[k])) {
			s->drop = true;
			break;
		}
	}
	bool received = name_eq(s->name, len, "Received");
	if (received && s->received < UINT_MAX)
		s->received++;
	if (s->drop) {
		s->dropped++;
		/* The hop stays counted, its content gone (issue 9 §3). */
		if (received && s->hop_line && s->received <= s->hop_max) {
			out(s, s->hop_line, strlen(s->hop_line));
			s->hop_lines++;
		}
	} else {
		if (name_eq(s->name, len, "Message-ID"))
			s->have_msgid = true;
		else if (name_eq(s->name, len, "Date"))
			s->have_date = true;
		else if (s->cap && name_eq(s->name, len, "From")) {
			s->cap_on = ++s->nfrom == 1;
			if (s->cap_on)
				s->cap_lead = s->namelen + 1;   /* and ':' */
		}
		out(s, s->name, s->namelen);
	}
	s->namelen = 0;
}

/* The current line is not a header field: the header section ends before
 * it, and it begins the body with the held bytes. The empty line that
 * separates them is inserted (issue 8 §7, as Postfix's cleanup does): a
 * reader more lenient than we are must not take the lines after it for
 * header fields we did not scrub, and the From: check must not judge a
 * header section other than the one delivered. */
static void begin_body(struct smtpd_scrub *s, const void *held, size_t n)
{
	add_missing(s);
	out(s, "\r\n", 2);
	s->inserted = true;
	out(s, held, n);
	s->namelen = 0;
	s->state = SCRUB_ST_BODY;
}

int smtpd_scrub_feed(struct smtpd_scrub *s, const uint8_t *p, size_t n)
{
	if (s->err)
		return s->err;
	if (s->state == SCRUB_ST_BODY) {
		out(s, p, n);
		return s->err;
	}

	int st = s->state;
	/* Start of the pending run of kept bytes, NULL while dropping or
	 * holding back. At a line start it is open if the previous field was
	 * kept, for a continuation line. */
	const uint8_t *run = NULL;
	if ((st == SCRUB_ST_FIELD || st == SCRUB_ST_FIELD_CR ||
	     st == SCRUB_ST_LSTART) && !s->drop)
		run = p;
	size_t i = 0;

	while (i < n) {
		uint8_t c = p[i];
		switch (st) {
		case SCRUB_ST_FIELD: {
			const uint8_t *cr = memchr(p + i, '\r', n - i);
			if (!cr) {
				cap_add(s, p + i, n - i);
				i = n;
				break;
			}
			cap_add(s, p + i, (size_t)(cr - p) + 1 - i);
			i = (size_t)(cr - p) + 1;
			st = SCRUB_ST_FIELD_CR;
			break;
		}

		case SCRUB_ST_FIELD_CR:
			if (c == '\n') {
				cap_add(s, p + i, 1);
				i++;
				st = SCRUB_ST_LSTART;
			} else {
				st = SCRUB_ST_FIELD;  /* a CR inside the field */
			}
			break;

		case SCRUB_ST_FIRST:
		case SCRUB_ST_LSTART:
			if (is_wsp(c) && st == SCRUB_ST_LSTART) {
				/* Folded continuation: same fate as its field,
				 * so the run stays as it is. */
				cap_add(s, p + i, 1);
				i++;
				st = SCRUB_ST_FIELD;
				break;
			}
			if (run) {
				out(s, run, (size_t)(p + i - run));
				run = NULL;
			}
			s->cap_on = false;   /* the captured field has ended */
			if (c == '\r') {
				i++;
				st = SCRUB_ST_EMPTY_CR;
			} else if (is_ftext(c)) {
				s->name[0] = (char)c;
				s->namelen = 1;
				i++;
				st = SCRUB_ST_NAME;
			} else {
				/* Not a header field: the body starts here,
				 * after the empty line we insert. */
				begin_body(s, NULL, 0);
				goto body;
			}
			break;

		case SCRUB_ST_EMPTY_CR:
			if (c == '\n') {
				/* The empty line: add what is missing before it. */
				add_missing(s);
				out(s, "\r\n", 2);
				i++;
				s->state = SCRUB_ST_BODY;
			} else {
				/* A bare CR starts a non-header line. */
				begin_body(s, "\r", 1);
			}
			goto body;

		case SCRUB_ST_NAME:
		case SCRUB_ST_NAME_WSP:
			if (c == ':') {
				decide(s);
				if (!s->drop)
					run = p + i;  /* from the colon on */
				i++;
				st = SCRUB_ST_FIELD;
			} else if (is_wsp(c) && s->namelen < sizeof(s->name)) {
				s->name[s->namelen++] = (char)c;
				i++;
				st = SCRUB_ST_NAME_WSP;
			} else if (st == SCRUB_ST_NAME && is_ftext(c) &&
			           s->namelen < sizeof(s->name)) {
				s->name[s->namelen++] = (char)c;
				i++;
			} else {
				/* A bad character, or no colon among the first
				 * 998 octets: not a header field. */
				begin_body(s, s->name, s->namelen);
				goto body;
			}
			break;

		default:
			/* BODY returned above; no other state exists. */
			RELAY_ASSERT(!"smtpd_scrub: bad state");
		}
	}
	if (run)
		out(s, run, (size_t)(p + n - run));
	s->state = st;
	return s->err;

body:
	/* s->state is BODY; the rest of the input passes as it is. */
	out(s, p + i, n - i);
	return s->err;
}

int smtpd_scrub_finish(struct smtpd_scrub *s)
{
	switch (s->state) {
	case SCRUB_ST_FIELD:
		/* A header line cut short: terminate it. */
		if (!s->drop)
			out(s, "\r\n", 2);
		add_missing(s);
		break;
	case SCRUB_ST_FIELD_CR:
		if (!s->drop)
			out(s, "\n", 1);  /* the CR was emitted */
		add_missing(s);
		break;
	case SCRUB_ST_EMPTY_CR:
		begin_body(s, "\r", 1);
		break;
	case SCRUB_ST_NAME:
	case SCRUB_ST_NAME_WSP:
		/* No colon before the end: not a header field. */
		begin_body(s, s->name, s->namelen);
		break;
	case SCRUB_ST_FIRST:
	case SCRUB_ST_LSTART:
		add_missing(s);
		break;
	default:
		break;
	}
	s->state = SCRUB_ST_BODY;
	return s->err;
}
