/*
 * common/logline.c - relayd's log lines read back: see logline.h.
 */
#include "common/logline.h"

#include <string.h>
#include <time.h>

const char *const logline_event_names[LOGEV__COUNT] = {
	"other", "accepted", "sent", "deferred", "bounced", "dsn", "removed",
};

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alnum(char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool starts(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);
	return n >= l && memcmp(p, lit, l) == 0;
}

/* n digits at p -> value; -1 if not all digits. */
static long digits(const char *p, size_t n)
{
	long v = 0;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_from_civil(long y, long m, long d)
{
	y -= m <= 2;
	long era = (y >= 0 ? y : y - 399) / 400;
	long yoe = y - era * 400;
	long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return (int64_t)era * 146097 + doe - 719468;
}

int64_t logline_time(const char *s, size_t len)
{
	/* YYYY-MM-DDTHH:MM:SS */
	if (len < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
	    s[13] != ':' || s[16] != ':')
		return -1;
	long y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
	long h = digits(s + 11, 2), mi = digits(s + 14, 2);
	long se = digits(s + 17, 2);
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 ||
	    h > 23 || mi < 0 || mi > 59 || se < 0 || se > 60)
		return -1;
	long ms = 0;
	if (len >= 23 && s[19] == '.') {
		ms = digits(s + 20, 3);
		if (ms < 0)
			return -1;
	}
	return ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 +
	       (int64_t)se * 1000 + ms;
}

/* "key=value, key=<addr>, ..." up to "status=WORD (reply)". */
static void parse_fields(struct logline *l, const char *p, const char *end)
{
	while (p < end && l->nf < LOGLINE_FIELDS_MAX) {
		const char *k = p;
		while (p < end && ((*p >= 'a' && *p <= 'z') || *p == '_'))
			p++;
		if (p == k || p >= end || *p != '=')
			return;
		struct logline_field *f = &l->f[l->nf];
		f->key = k;
		f->keylen = (size_t)(p - k);
		p++;
		const char *v = p, *ve;
		if (p < end && *p == '<') {
			/* An address: up to the last '>' before ", " or the
			 * end (escaped text never holds a raw control byte,
			 * but may hold ", "). */
			const char *q = p + 1, *gt = NULL;
			for (; q < end; q++)
				if (*q == '>' && (q + 1 == end ||
				                  (q + 2 < end && q[1] == ',' &&
				                   q[2] == ' ') ||
				                  q[1] == ':')) {
					gt = q;
					break;
				}
			if (!gt)
				return;
			v = p + 1;
			ve = gt;
			p = gt + 1;
		} else {
			while (p < end && *p != ',' && *p != ' ')
				p++;
			ve = p;
		}
		f->val = v;
		f->vallen = (size_t)(ve - v);
		l->nf++;
		if (f->keylen == 6 && memcmp(k, "status", 6) == 0) {
			/* The reply in parentheses, to the end of the line. */
			if (p + 1 < end && p[0] == ' ' && p[1] == '(' &&
			    end[-1] == ')') {
				l->reply = p + 2;
				l->replylen = (size_t)(end - 1 - (p + 2));
			}
			return;
		}
		if (p + 1 < end && p[0] == ',' && p[1] == ' ')
			p += 2;
		else
			return;
	}
}

static bool id_at(const char *p, size_t n)
{
	if (n < 18 || p[16] != ':' || p[17] != ' ')
		return false;
	for (int i = 0; i < 16; i++)
		if (!is_alnum(p[i]))
			return false;
	return true;
}

void logline_parse(const char *line, size_t len, struct logline *l)
{
	memset(l, 0, sizeof *l);
	l->ms = -1;
	l->text = line;
	l->textlen = len;
	const char *p = line, *end = line + len;

	/* "TIME relayd[PID]: LEVEL: " */
	size_t tl = 0;
	while (tl < len && tl < 40 && line[tl] != ' ')
		tl++;
	int64_t ms = logline_time(line, tl);
	if (ms >= 0 && tl < len) {
		const char *q = line + tl + 1;
		const char *br = memchr(q, '[', (size_t)(end - q));
		const char *col = br ? memchr(br, ']', (size_t)(end - br)) : NULL;
		if (br && col && col + 2 < end && col[1] == ':' && col[2] == ' ' &&
		    br - q <= 32 && col - br <= 21) {
			long pid = digits(br + 1, (size_t)(col - br - 1));
			const char *lv = col + 3;
			const char *lve = lv;
			while (lve < end && *lve >= 'a' && *lve <= 'z' &&
			       lve - lv < 8)
				lve++;
			if (pid > 0 && lve > lv && lve + 1 < end &&
			    lve[0] == ':' && lve[1] == ' ') {
				l->ms = ms;
				l->time = line;
				l->timelen = tl;
				l->pid = pid;
				l->level = lv;
				l->levellen = (size_t)(lve - lv);
				p = lve + 2;
			}
		}
	}
	if (l->ms < 0)
		return;     /* not one of relayd's lines: all of it is text */

	if (id_at(p, (size_t)(end - p))) {
		memcpy(l->id, p, 16);
		l->id[16] = '\0';
		p += 18;
	}
	l->text = p;
	l->textlen = (size_t)(end - p);
	if (!l->id[0])
		return;
	size_t n = l->textlen;
	if (starts(p, n, "from=<")) {
		l->ev = LOGEV_ACCEPTED;
		parse_fields(l, p, end);
	} else if (starts(p, n, "to=<")) {
		parse_fields(l, p, end);
		const struct logline_field *st = logline_get(l, "status");
		if (st && st->vallen == 4 && memcmp(st->val, "sent", 4) == 0)
			l->ev = LOGEV_SENT;
		else if (st && st->vallen == 8 &&
		         memcmp(st->val, "deferred", 8) == 0)
			l->ev = LOGEV_DEFERRED;
		else if (st && st->vallen == 7 &&
		         memcmp(st->val, "bounced", 7) == 0)
			l->ev = LOGEV_BOUNCED;
	} else if (n == 7 && memcmp(p, "removed", 7) == 0) {
		l->ev = LOGEV_REMOVED;
	} else if (starts(p, n, "sender ") && n >= 16 + 14 &&
	           memcmp(end - 16 - 14, "notification: ", 14) == 0) {
		const char *d = end - 16;
		bool ok = true;
		for (int i = 0; i < 16; i++)
			ok = ok && is_alnum(d[i]);
		if (ok) {
			l->ev = LOGEV_DSN;
			memcpy(l->dsn_id, d, 16);
			l->dsn_id[16] = '\0';
		}
	}
}

const struct logline_field *logline_get(const struct logline *l,
                                        const char *key)
{
	size_t kl = strlen(key);
	for (size_t i = 0; i < l->nf; i++)
		if (l->f[i].keylen == kl && memcmp(l->f[i].key, key, kl) == 0)
			return &l->f[i];
	return NULL;
}
