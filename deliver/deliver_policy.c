/*
 * deliver/deliver_policy.c - Direct delivery's pure policies (issue 9 §3):
 * tls_policy_file and the TLS decision, the reply table that tells
 * throttling from greylisting from "too many recipients", and
 * destination_policy_file's per-destination limits. Owns the two files'
 * syntax and their "file:line: why" errors. No libuv, no sockets.
 */
#include "deliver/deliver_policy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/lines.h"
#include "common/log.h"
#include "common/smtp.h"

const char *const deliver_tls_level_names[DELIVER_TLS__COUNT] = {
	[DELIVER_TLS_NONE] = "none",
	[DELIVER_TLS_MAY] = "may",
	[DELIVER_TLS_ENCRYPT] = "encrypt",
	[DELIVER_TLS_VERIFY] = "verify",
};

const char *const deliver_tls_source_names[DELIVER_TLS_SRC__COUNT] = {
	[DELIVER_TLS_SRC_DEFAULT] = "default",
	[DELIVER_TLS_SRC_FILE] = "tls_policy_file",
	[DELIVER_TLS_SRC_MTA_STS] = "mta-sts",
	[DELIVER_TLS_SRC_DANE] = "dane",
};

const char *const deliver_reaction_names[DELIVER_REACT__COUNT] = {
	[DELIVER_REACT_NONE] = "none",
	[DELIVER_REACT_RCPT_DEFER] = "rcpt-defer",
	[DELIVER_REACT_SPLIT_TXN] = "split-transaction",
	[DELIVER_REACT_DEST_THROTTLE] = "destination-throttle",
	[DELIVER_REACT_DEST_DEFER] = "destination-defer",
	[DELIVER_REACT_BOUNCE] = "bounce",
};

static void fmt(char *dst, size_t len, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
static void fmt(char *dst, size_t len, const char *f, ...)
{
	if (!dst || len == 0)
		return;
	va_list ap;
	va_start(ap, f);
	vsnprintf(dst, len, f, ap);
	va_end(ap);
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9');
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* ---- names: the table both files share ------------------------------- */

/* A host or domain name: at most 253 octets without the trailing dot. */
#define NAME_MAX_LEN 253

/* Writes the normalised form of [s, s+n) into out (lowercase, one
 * trailing dot dropped; a leading '.' kept when `wild`). Labels of
 * letters, digits, '-' and '_' (seen in the wild), 1-63 octets. 0 or
 * -EINVAL. out holds NAME_MAX_LEN + 2. */
static int name_norm(const char *s, size_t n, bool wild, char *out)
{
	size_t o = 0, label = 0;
	if (n > 0 && s[n - 1] == '.')
		n--;
	if (wild) {
		if (n == 0 || s[0] != '.')
			return -EINVAL;
		out[o++] = '.';
		s++;
		n--;
	}
	if (n == 0 || n > NAME_MAX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if (is_alnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				return -EINVAL;
		} else {
			return -EINVAL;
		}
		out[o++] = lower(c);
	}
	if (label == 0)
		return -EINVAL;
	out[o] = '\0';
	return 0;
}

struct entry {
	char *name;         /* normalised; ".parent" for the wildcard form */
	uint32_t line;
	enum deliver_tls_level level;      /* tls_policy_file */
	struct deliver_dest_limits lim;    /* destination_policy_file */
};

struct names {
	struct entry *e;
	size_t n, cap;
};

static void names_free(struct names *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->e[i].name);
	free(t->e);
	t->e = NULL;
	t->n = t->cap = 0;
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->name,
	              ((const struct entry *)b)->name);
}

static const struct entry *names_find(const struct names *t, const char *k)
{
	struct entry key = {.name = (char *)k};
	if (!t || t->n == 0)
		return NULL;
	return bsearch(&key, t->e, t->n, sizeof *t->e, entry_cmp);
}

/* The exact entry, else the longest ".parent" one. */
static const struct entry *names_lookup(const struct names *t,
                                        const char *name)
{
	char k[NAME_MAX_LEN + 2];
	if (!t || !name || name_norm(name, strlen(name), false, k) < 0)
		return NULL;
	const struct entry *e = names_find(t, k);
	for (const char *p = strchr(k, '.'); !e && p; p = strchr(p + 1, '.'))
		e = names_find(t, p);
	return e;
}

/* ---- the line reader both files share -------------------------------- */

struct field {
	const char *s;
	size_t n;
};

#define FIELDS_MAX 8

/* Calls line_fn for each non-empty line (comments stripped), split into
 * fields on blanks. Bounds: line length, entry count; NUL and control
 * characters are errors. */
typedef int (*line_fn)(void *ctx, const char *name, uint32_t line,
                       const struct field *f, size_t nf, char *err,
                       size_t errlen);

static int read_lines(const char *name, const char *text, size_t len,
                      line_fn fn, void *ctx, char *err, size_t errlen)
{
	struct lines it;
	const char *s;
	size_t n;
	int rc;
	if (len > DELIVER_POLICY_FILE_MAX) {
		fmt(err, errlen, "%s: larger than %u bytes", name,
		    (unsigned)DELIVER_POLICY_FILE_MAX);
		return -E2BIG;
	}
	lines_init(&it, text, len, DELIVER_POLICY_LINE_MAX, LINES_STRIP_CR);
	while ((rc = lines_next(&it, &s, &n)) != 0) {
		if (rc < 0) {
			lines_error(&it, rc, name, err, errlen);
			return -EINVAL;
		}
		uint32_t line = (uint32_t)it.lineno;
		const char *hash = memchr(s, '#', n);
		if (hash)
			n = (size_t)(hash - s);
		struct field f[FIELDS_MAX];
		size_t nf = 0;
		for (size_t i = 0; i < n;) {
			unsigned char c = (unsigned char)s[i];
			if (c == ' ' || c == '\t') {
				i++;
				continue;
			}
			size_t j = i;
			while (j < n && s[j] != ' ' && s[j] != '\t') {
				unsigned char d = (unsigned char)s[j];
				if (d < 0x20 || d == 0x7f) {
					fmt(err, errlen, "%s:%u: control character "
					    "(0x%02x)", name, (unsigned)line, d);
					return -EINVAL;
				}
				j++;
			}
			if (nf == FIELDS_MAX) {
				fmt(err, errlen, "%s:%u: too many fields", name,
				    (unsigned)line);
				return -EINVAL;
			}
			f[nf].s = s + i;
			f[nf++].n = j - i;
			i = j;
		}
		if (nf == 0)
			continue;
		rc = fn(ctx, name, line, f, nf, err, errlen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Adds an entry for f (the DOMAIN field), checking syntax. */
static int names_add(struct names *t, const char *name, uint32_t line,
                     const struct field *f, struct entry **out, char *err,
                     size_t errlen)
{
	char k[NAME_MAX_LEN + 2], q[80];
	bool wild = f->n > 0 && f->s[0] == '.';
	if (name_norm(f->s, f->n, wild, k) < 0) {
		fmt(err, errlen, "%s:%u: not a domain or host name: '%s'", name,
		    (unsigned)line, log_escape(q, sizeof q, f->s, f->n));
		return -EINVAL;
	}
	if (t->n == DELIVER_POLICY_ENTRIES_MAX) {
		fmt(err, errlen, "%s:%u: more than %u entries", name,
		    (unsigned)line, (unsigned)DELIVER_POLICY_ENTRIES_MAX);
		return -E2BIG;
	}
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 16;
		struct entry *ne = realloc(t->e, nc * sizeof *ne);
		if (!ne)
			goto nomem;
		t->e = ne;
		t->cap = nc;
	}
	struct entry *e = &t->e[t->n];
	memset(e, 0, sizeof *e);
	if (!(e->name = strdup(k)))
		goto nomem;
	e->line = line;
	t->n++;
	*out = e;
	return 0;
nomem:
	fmt(err, errlen, "%s: out of memory", name);
	return -ENOMEM;
}

/* Sorts, and refuses a name given twice (which one would win is not
 * obvious to whoever edits the file). */
static int names_finish(struct names *t, const char *name, char *err,
                        size_t errlen)
{
	if (t->n > 1)
		qsort(t->e, t->n, sizeof *t->e, entry_cmp);
	for (size_t i = 1; i < t->n; i++) {
		if (strcmp(t->e[i - 1].name, t->e[i].name) != 0)
			continue;
		uint32_t a = t->e[i - 1].line, b = t->e[i].line;
		char q[80];
		fmt(err, errlen, "%s:%u: '%s' is already on line %u", name,
		    (unsigned)(a > b ? a : b),
		    log_escape(q, sizeof q, t->e[i].name, strlen(t->e[i].name)),
		    (unsigned)(a < b ? a : b));
		return -EINVAL;
	}
	return 0;
}

/* The whole file, at most DELIVER_POLICY_FILE_MAX bytes (common/lines.h);
 * larger: read_lines' own message and -E2BIG. */
static int policy_read(const char *path, char **text, size_t *len, char *err,
                       size_t errlen)
{
	int rc = lines_read_file(path, DELIVER_POLICY_FILE_MAX, 0, text, len);
	if (rc == -EFBIG) {
		fmt(err, errlen, "%s: larger than %u bytes", path,
		    (unsigned)DELIVER_POLICY_FILE_MAX);
		return -E2BIG;
	}
	if (rc < 0)
		fmt(err, errlen, "cannot read %s: %s", path, strerror(-rc));
	return rc;
}

/* ---- tls_policy_file ------------------------------------------------- */

struct deliver_tls_policy {
	struct names t;
};

static int tls_line(void *ctx, const char *name, uint32_t line,
                    const struct field *f, size_t nf, char *err,
                    size_t errlen)
{
	struct deliver_tls_policy *p = ctx;
	char q[80];
	if (nf != 2) {
		fmt(err, errlen, "%s:%u: expected 'DOMAIN none|may|encrypt|verify'",
		    name, (unsigned)line);
		return -EINVAL;
	}
	int level = -1;
	for (int i = 0; i < DELIVER_TLS__COUNT; i++)
		if (strlen(deliver_tls_level_names[i]) == f[1].n &&
		    strncasecmp(deliver_tls_level_names[i], f[1].s, f[1].n) == 0)
			level = i;
	if (level < 0) {
		fmt(err, errlen, "%s:%u: unknown level '%s' (none, may, encrypt, "
		    "verify)", name, (unsigned)line,
		    log_escape(q, sizeof q, f[1].s, f[1].n));
		return -EINVAL;
	}
	struct entry *e;
	int rc = names_add(&p->t, name, line, &f[0], &e, err, errlen);
	if (rc < 0)
		return rc;
	e->level = (enum deliver_tls_level)level;
	return 0;
}

int deliver_tls_policy_parse(const char *name, const char *text, size_t len,
                             struct deliver_tls_policy **out, char *err,
                             size_t errlen)
{
	struct deliver_tls_policy *p = calloc(1, sizeof *p);
	*out = NULL;
	if (!p) {
		fmt(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	int rc = read_lines(name, text, len, tls_line, p, err, errlen);
	if (rc == 0)
		rc = names_finish(&p->t, name, err, errlen);
	if (rc < 0) {
		deliver_tls_policy_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

int deliver_tls_policy_load(const char *path, struct deliver_tls_policy **out,
                            char *err, size_t errlen)
{
	char *text;
	size_t len;
	*out = NULL;
	int rc = policy_read(path, &text, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = deliver_tls_policy_parse(path, text, len, out, err, errlen);
	free(text);
	return rc;
}

void deliver_tls_policy_free(struct deliver_tls_policy *p)
{
	if (!p)
		return;
	names_free(&p->t);
	free(p);
}

size_t deliver_tls_policy_count(const struct deliver_tls_policy *p)
{
	return p ? p->t.n : 0;
}

enum deliver_tls_level deliver_tls_policy_lookup(
	const struct deliver_tls_policy *p, const char *domain,
	enum deliver_tls_source *src)
{
	const struct entry *e = p ? names_lookup(&p->t, domain) : NULL;
	if (src)
		*src = e ? DELIVER_TLS_SRC_FILE : DELIVER_TLS_SRC_DEFAULT;
	return e ? e->level : DELIVER_TLS_MAY;
}

int deliver_tls_decide(const struct deliver_tls_input *in,
                       struct deliver_tls_decision *out)
{
	memset(out, 0, sizeof *out);
	if ((unsigned)in->level >= DELIVER_TLS__COUNT ||
	    (unsigned)in->source >= DELIVER_TLS_SRC__COUNT)
		return -EINVAL;
	/* MTA-STS (RFC 8461 §5: enforce = verify against the policy's MX
	 * patterns) and DANE (RFC 7672) come later, here. */
	if (in->source == DELIVER_TLS_SRC_MTA_STS ||
	    in->source == DELIVER_TLS_SRC_DANE)
		return -ENOTSUP;
	out->level = in->level;
	out->source = in->source;
	switch (in->level) {
	case DELIVER_TLS_NONE:
		break;
	case DELIVER_TLS_MAY:
		/* RFC 7435 opportunistic security: TLS when offered, any
		 * certificate; after a failed handshake once in plaintext
		 * (Postfix's smtp_tls_security_level = may), and while the
		 * destination remembers TLS broken, plaintext directly. */
		out->starttls = !in->tls_broken;
		out->plain_retry = true;
		break;
	case DELIVER_TLS_VERIFY:
		if (!in->mx_host || !*in->mx_host)
			return -EINVAL;
		out->verify = true;
		out->verify_name = in->mx_host;
		/* fall through */
	case DELIVER_TLS_ENCRYPT:
		out->starttls = true;
		out->required = true;
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

enum deliver_tls_action deliver_tls_on_event(
	const struct deliver_tls_decision *d, enum deliver_tls_event ev,
	bool already_retried_plain, int *reply)
{
	*reply = -1;
	switch (ev) {
	case DELIVER_TLS_EV_NOT_OFFERED:
		if (!d->required)
			return DELIVER_TLS_ACT_PLAIN;
		*reply = SMTP_R_DLV_TLS_NOT_OFFERED;
		return DELIVER_TLS_ACT_DEFER;
	case DELIVER_TLS_EV_HANDSHAKE_FAIL:
		if (!d->required && d->plain_retry && !already_retried_plain)
			return DELIVER_TLS_ACT_RETRY_PLAIN;
		*reply = SMTP_R_DLV_TLS_FAILED;
		return DELIVER_TLS_ACT_DEFER;
	case DELIVER_TLS_EV_VERIFY_FAIL:
		if (!d->verify)
			return DELIVER_TLS_ACT_CONTINUE;
		*reply = SMTP_R_DLV_TLS_UNVERIFIED;
		return DELIVER_TLS_ACT_DEFER;
	}
	*reply = SMTP_R_DLV_TLS_FAILED;
	return DELIVER_TLS_ACT_DEFER;
}

/* ---- words ----------------------------------------------------------- */

bool deliver_text_has_words(const char *text, size_t n, const char *phrase)
{
	if (n > DELIVER_REPLY_TEXT_MAX)
		n = DELIVER_REPLY_TEXT_MAX;
	if (!text || !phrase || !*phrase)
		return false;
	for (size_t i = 0; i < n; i++) {
		/* at the start of a word only */
		if (!is_alnum(text[i]) || (i > 0 && is_alnum(text[i - 1])))
			continue;
		size_t t = i;
		const char *p = phrase;
		for (;;) {
			/* one word of the phrase against one word of the text */
			while (*p && *p != ' ' && t < n && is_alnum(text[t]) &&
			       lower(text[t]) == lower(*p)) {
				t++;
				p++;
			}
			if ((*p && *p != ' ') || (t < n && is_alnum(text[t])))
				break;              /* the words differ */
			if (!*p)
				return true;
			p++;                        /* next word of the phrase */
			while (t < n && !is_alnum(text[t]))
				t++;                /* to the next word of the text */
			if (t == n)
				break;
		}
	}
	return false;
}

/* ---- the reply table ------------------------------------------------- */

enum enh_need { ENH_ANY, ENH_NONE, ENH_IS };

struct reply_rule {
	const char *name;
	int code_lo, code_hi;         /* basic reply code, inclusive */
	enum enh_need enh;
	int cls, subj, det_lo, det_hi;/* ENH_IS: class.subject.detail; -1 any */
	const char *const *words;     /* NULL: no text condition; else any */
	enum deliver_reaction reaction;
};

static const char *const w_too_many_rcpts[] = {"too many recipients", NULL};
static const char *const w_greylist[] = {
	"greylist", "greylisted", "greylisting", "graylist", "graylisted",
	"graylisting", NULL};
static const char *const w_tss04[] = {"TSS04", NULL};
/* Words that name a rate limit on the sender. KumoMTA's shipped
 * automation matches "rate limited" and "temporarily deferred" texts
 * (research §3, assets/policy-extras/shaping.toml); Gmail's 421 4.7.0
 * says "temporarily rate limited" and "unusual rate"; Exim and Postfix
 * say "too many connections". */
static const char *const w_throttle[] = {
	"rate", "ratelimit", "ratelimited", "rate limit", "too many",
	"throttle", "throttled", "throttling", "slow down",
	"temporarily deferred", NULL};

/*
 * First match wins. The order matters: a mailbox receiving too fast
 * (4.2.1, whose Gmail text says "rate") and greylisting come before the
 * throttle words; the catch-alls come last.
 */
static const struct reply_rule reply_rules[] = {
	/* RFC 5321 §4.5.3.1.10 and RFC 3463 X.5.3: too many recipients;
	 * the client goes on with the rest in a new transaction. */
	{"too-many-recipients", 452, 452, ENH_IS, 4, 5, 3, 3, NULL,
	 DELIVER_REACT_SPLIT_TXN},
	{"too-many-recipients", 452, 452, ENH_NONE, 0, 0, 0, 0,
	 w_too_many_rcpts, DELIVER_REACT_SPLIT_TXN},
	/* Gmail 450 4.2.1 "The user you are trying to contact is receiving
	 * mail at a rate that prevents additional messages from being
	 * delivered" (support.google.com/a/answer/3726730, research §3):
	 * that mailbox only. */
	{"mailbox-too-fast", 400, 499, ENH_IS, 4, 2, 1, 1, NULL,
	 DELIVER_REACT_RCPT_DEFER},
	/* Greylisting: milter-greylist "451 4.7.1 Greylisting in action",
	 * Postgrey "450 4.2.0 ... Greylisted": retry later, nothing else. */
	{"greylist", 450, 451, ENH_ANY, 0, 0, 0, 0, w_greylist,
	 DELIVER_REACT_RCPT_DEFER},
	/* Gmail 421 4.7.28 "unusual rate of unsolicited email" (research
	 * §3, support.google.com/a/answer/3726730). */
	{"gmail-4.7.28", 400, 499, ENH_IS, 4, 7, 28, 28, NULL,
	 DELIVER_REACT_DEST_THROTTLE},
	/* Yahoo 421 4.7.0 [TSS04] "temporarily deferred due to unexpected
	 * volume or user complaints" (research §3; KumoMTA suspends 2 h). */
	{"yahoo-tss04", 400, 499, ENH_ANY, 0, 0, 0, 0, w_tss04,
	 DELIVER_REACT_DEST_THROTTLE},
	/* Microsoft 451 4.7.500-699 "Access denied, please try again later"
	 * (Exchange Online NDR reference, learn.microsoft.com "Email
	 * non-delivery reports and SMTP errors"), e.g. Outlook.com's "451
	 * 4.7.650 The mail server [IP] has been temporarily rate limited due
	 * to IP reputation" (as Sisimai's Microsoft table records it). */
	{"microsoft-4.7.5xx-6xx", 400, 499, ENH_IS, 4, 7, 500, 699, NULL,
	 DELIVER_REACT_DEST_THROTTLE},
	/* Any other 4.7.x policy deferral, or a 4xx without an enhanced
	 * code, that names a rate limit on the sender. */
	{"throttle-words", 400, 499, ENH_IS, 4, 7, -1, -1, w_throttle,
	 DELIVER_REACT_DEST_THROTTLE},
	{"throttle-words", 400, 499, ENH_NONE, 0, 0, 0, 0, w_throttle,
	 DELIVER_REACT_DEST_THROTTLE},
	/* RFC 5321 §3.8: 421 closes the channel; the next MX, or later. */
	{"service-unavailable", 421, 421, ENH_ANY, 0, 0, 0, 0, NULL,
	 DELIVER_REACT_DEST_DEFER},
	{"temporary", 400, 499, ENH_ANY, 0, 0, 0, 0, NULL,
	 DELIVER_REACT_RCPT_DEFER},
	{"permanent", 500, 599, ENH_ANY, 0, 0, 0, 0, NULL,
	 DELIVER_REACT_BOUNCE},
};

static bool rule_matches(const struct reply_rule *r,
                         const struct deliver_reply *x, const char *text,
                         size_t textlen)
{
	if (x->code < r->code_lo || x->code > r->code_hi)
		return false;
	bool has_enh = x->enh_class != 0;
	if (r->enh == ENH_NONE && has_enh)
		return false;
	if (r->enh == ENH_IS) {
		if (!has_enh || x->enh_class != r->cls ||
		    x->enh_subject != r->subj)
			return false;
		if (r->det_lo >= 0 &&
		    (x->enh_detail < r->det_lo || x->enh_detail > r->det_hi))
			return false;
	}
	if (!r->words)
		return true;
	for (const char *const *w = r->words; *w; w++)
		if (deliver_text_has_words(text, textlen, *w))
			return true;
	return false;
}

static enum deliver_reaction classify(const struct deliver_reply *r,
                                      const char *text, size_t textlen,
                                      const char **rule)
{
	if (rule)
		*rule = "none";
	if (!r || r->code < 400 || r->code > 599)
		return DELIVER_REACT_NONE;
	for (size_t i = 0; i < sizeof reply_rules / sizeof *reply_rules; i++) {
		if (!rule_matches(&reply_rules[i], r, text, textlen))
			continue;
		if (rule)
			*rule = reply_rules[i].name;
		return reply_rules[i].reaction;
	}
	return DELIVER_REACT_NONE;   /* not reached: the catch-alls match */
}

enum deliver_reaction deliver_reply_classify(const struct deliver_reply *r,
                                             const char **rule)
{
	return classify(r, r ? r->text : NULL, r ? r->textlen : 0, rule);
}

/* "X.Y.Z" at s (RFC 3463: class 2, 4 or 5; subject and detail 1-3
 * digits) followed by a blank or the end of the line; its length, or 0. */
static size_t parse_enh(const char *s, size_t n, struct deliver_reply *out)
{
	size_t i = 0;
	int part[3] = {0, 0, 0};
	for (int k = 0; k < 3; k++) {
		size_t start = i;
		while (i < n && is_digit(s[i]) && i - start < 4)
			part[k] = part[k] * 10 + (s[i++] - '0');
		size_t len = i - start;
		if (len == 0 || len > (k == 0 ? 1u : 3u))
			return 0;
		if (k < 2) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\r' &&
	    s[i] != '\n')
		return 0;
	if (part[0] != 2 && part[0] != 4 && part[0] != 5)
		return 0;
	out->enh_class = part[0];
	out->enh_subject = part[1];
	out->enh_detail = part[2];
	return i;
}

int deliver_reply_parse(const char *s, size_t n, struct deliver_reply *out)
{
	memset(out, 0, sizeof *out);
	if (!s || n < 3 || !is_digit(s[0]) || !is_digit(s[1]) ||
	    !is_digit(s[2]))
		return -EINVAL;
	/* RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39 */
	if (s[0] < '2' || s[0] > '5' || s[1] > '5')
		return -EINVAL;
	if (n > 3 && s[3] != ' ' && s[3] != '-' && s[3] != '\r' && s[3] != '\n')
		return -EINVAL;
	out->code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	const char *nl = memchr(s, '\n', n);
	size_t end = nl ? (size_t)(nl - s) : n;
	if (end > 0 && s[end - 1] == '\r')
		end--;
	size_t p = end > 3 ? 4 : end;
	/* RFC 3463 §2 / RFC 2034 §4: the enhanced code leads the text, and
	 * its class is the reply's. */
	if (p < end && s[p] == s[0]) {
		struct deliver_reply e = *out;
		size_t used = parse_enh(s + p, end - p, &e);
		if (used) {
			*out = e;
			p += used;
			while (p < end && (s[p] == ' ' || s[p] == '\t'))
				p++;
		}
	}
	out->text = s + p;
	out->textlen = end - p;
	return 0;
}

enum deliver_reaction deliver_reply_classify_raw(const char *s, size_t n,
                                                 const char **rule)
{
	struct deliver_reply r;
	if (deliver_reply_parse(s, n, &r) < 0) {
		if (rule)
			*rule = "none";
		return DELIVER_REACT_NONE;
	}
	/* The words may be on any line; the codes of the other lines are
	 * words of digits, which no phrase of the table is. */
	return classify(&r, s, n, rule);
}

/* ---- destination_policy_file ----------------------------------------- */

struct deliver_dest_policy {
	struct names t;
};

static int dest_line(void *ctx, const char *name, uint32_t line,
                     const struct field *f, size_t nf, char *err,
                     size_t errlen)
{
	struct deliver_dest_policy *p = ctx;
	struct deliver_dest_limits lim = {0};
	bool have_c = false, have_r = false;
	char q[80], v[64];
	if (nf < 2) {
		fmt(err, errlen, "%s:%u: expected 'DESTINATION concurrency=N "
		    "rate=N/min|N/hour'", name, (unsigned)line);
		return -EINVAL;
	}
	for (size_t i = 1; i < nf; i++) {
		const char *eq = memchr(f[i].s, '=', f[i].n);
		size_t kl = eq ? (size_t)(eq - f[i].s) : f[i].n;
		size_t vl = eq ? f[i].n - kl - 1 : 0;
		const char *vs = eq ? eq + 1 : NULL;
		if (eq && vl < sizeof v) {
			memcpy(v, vs, vl);
			v[vl] = '\0';
		}
		if (eq && kl == 11 && strncmp(f[i].s, "concurrency", 11) == 0 &&
		    !have_c) {
			unsigned long c = 0;
			bool ok = vl > 0 && vl <= 4;
			for (size_t k = 0; ok && k < vl; k++) {
				ok = is_digit(vs[k]);
				c = c * 10 + (unsigned long)(vs[k] - '0');
			}
			if (!ok || c < 1 || c > 1000) {
				fmt(err, errlen, "%s:%u: concurrency: not a number "
				    "from 1 to 1000: '%s'", name, (unsigned)line,
				    log_escape(q, sizeof q, vs, vl));
				return -EINVAL;
			}
			lim.concurrency = (unsigned)c;
			have_c = true;
		} else if (eq && kl == 4 && strncmp(f[i].s, "rate", 4) == 0 &&
		           !have_r) {
			if (vl == 0 || vl >= sizeof v ||
			    conf_parse_rate(v, &lim.per_minute, &lim.per_hour) < 0 ||
			    (lim.per_minute == 0 && lim.per_hour == 0)) {
				fmt(err, errlen, "%s:%u: rate: not N/min, N/hour or "
				    "N/min,M/hour: '%s'", name, (unsigned)line,
				    log_escape(q, sizeof q, vs, vl));
				return -EINVAL;
			}
			have_r = true;
		} else {
			fmt(err, errlen, "%s:%u: unknown or repeated setting '%s' "
			    "(concurrency=N, rate=N/min|N/hour)", name,
			    (unsigned)line, log_escape(q, sizeof q, f[i].s, f[i].n));
			return -EINVAL;
		}
	}
	struct entry *e;
	int rc = names_add(&p->t, name, line, &f[0], &e, err, errlen);
	if (rc < 0)
		return rc;
	e->lim = lim;
	e->lim.matched = true;
	return 0;
}

int deliver_dest_policy_parse(const char *name, const char *text, size_t len,
                              struct deliver_dest_policy **out, char *err,
                              size_t errlen)
{
	struct deliver_dest_policy *p = calloc(1, sizeof *p);
	*out = NULL;
	if (!p) {
		fmt(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	int rc = read_lines(name, text, len, dest_line, p, err, errlen);
	if (rc == 0)
		rc = names_finish(&p->t, name, err, errlen);
	if (rc < 0) {
		deliver_dest_policy_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

int deliver_dest_policy_load(const char *path,
                             struct deliver_dest_policy **out, char *err,
                             size_t errlen)
{
	char *text;
	size_t len;
	*out = NULL;
	int rc = policy_read(path, &text, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = deliver_dest_policy_parse(path, text, len, out, err, errlen);
	free(text);
	return rc;
}

void deliver_dest_policy_free(struct deliver_dest_policy *p)
{
	if (!p)
		return;
	names_free(&p->t);
	free(p);
}

size_t deliver_dest_policy_count(const struct deliver_dest_policy *p)
{
	return p ? p->t.n : 0;
}

/* The smaller of two limits where 0 means "none". */
static unsigned min_set(unsigned a, unsigned b)
{
	if (a == 0)
		return b;
	if (b == 0)
		return a;
	return a < b ? a : b;
}

void deliver_dest_policy_match(const struct deliver_dest_policy *p,
                               const char *name,
                               struct deliver_dest_limits *lim)
{
	const struct entry *e = p ? names_lookup(&p->t, name) : NULL;
	if (!e)
		return;
	lim->concurrency = min_set(lim->concurrency, e->lim.concurrency);
	lim->per_minute = min_set(lim->per_minute, e->lim.per_minute);
	lim->per_hour = min_set(lim->per_hour, e->lim.per_hour);
	lim->matched = true;
}

unsigned deliver_dest_concurrency(const struct deliver_dest_limits *lim,
                                  unsigned dflt)
{
	return lim && lim->concurrency ? lim->concurrency : dflt;
}

/* ---- relayd -t ------------------------------------------------------- */

int deliver_policy_check_conf(const struct conf *conf, char *err,
                              size_t errlen)
{
	char why[400];
	int rc;
	if (conf->tls_policy_file && *conf->tls_policy_file) {
		struct deliver_tls_policy *p;
		rc = deliver_tls_policy_load(conf->tls_policy_file, &p, why,
		                             sizeof why);
		if (rc < 0) {
			fmt(err, errlen, "tls_policy_file: %s", why);
			return rc;
		}
		deliver_tls_policy_free(p);
	}
	if (conf->destination_policy_file && *conf->destination_policy_file) {
		struct deliver_dest_policy *p;
		rc = deliver_dest_policy_load(conf->destination_policy_file, &p,
		                              why, sizeof why);
		if (rc < 0) {
			fmt(err, errlen, "destination_policy_file: %s", why);
			return rc;
		}
		deliver_dest_policy_free(p);
	}
	return 0;
}
