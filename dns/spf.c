/*
 * dns/spf.c - check_host() of RFC 7208 on dns/. Two parts:
 *   - a pure core (spf_eval_*, dns/spf_int.h): a stack of records being
 *     evaluated (the top record, then one frame per include; redirect
 *     replaces a frame), one outstanding DNS question at a time, fed the
 *     answers as struct dns_result; it counts the §4.6.4 limits and
 *     builds the result;
 *   - the shell (spf_check/spf_cancel): asks dns/ what the core asks, and
 *     owns one uv_timer_t that starts the core from the loop (so the
 *     callback never runs inside spf_check) and then bounds the whole
 *     check by its deadline.
 * Parsing and macros: dns/spf_parse.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <uv.h>

#include "common/log.h"
#include "dns/dns_int.h"
#include "dns/spf_int.h"

/* ---- the core ------------------------------------------------------- */

/* What the outstanding question is for. */
enum spf_op {
	OP_NONE, OP_TXT, OP_A, OP_MX, OP_MX_ADDR, OP_PTR, OP_PTR_ADDR,
	OP_EXISTS,
};

struct spf_frame {
	char domain[DNS_NAME_MAX + 1];
	struct spf_record *rec;     /* NULL until its TXT answer */
	size_t ti;                  /* the term being evaluated */
	size_t path_len;            /* e->path length when pushed */
	bool include;               /* pushed by an include term */
};

/* Domains on the include/redirect path, for loop detection. */
struct spf_seen {
	char domain[DNS_NAME_MAX + 1];
	unsigned depth;
};

struct spf_eval {
	struct spf_query q;
	char sender[DNS_NAME_MAX + 80];
	char helo[DNS_NAME_MAX + 1];
	unsigned deadline_ms;
	struct spf_frame st[SPF_LOOKUP_MAX + 2];
	unsigned depth;             /* frames on st[] */
	struct spf_seen seen[2 * SPF_LOOKUP_MAX + 2];
	unsigned nseen;
	bool done;
	bool top_redirected;        /* the top frame followed a redirect */
	enum spf_op op;
	struct spf_ask ask;
	char target[DNS_NAME_MAX + 1];   /* a, mx, ptr: the target-name */
	char names[SPF_NAMES_MAX][DNS_NAME_MAX + 1];  /* MX targets, PTR names */
	unsigned nnames, ni;
	char lookups[400];          /* the terms counted, for the message */
	char path[512];             /* "include:x > redirect=y > " so far */
	struct spf_result res;
};

static void why(struct spf_eval *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void why(struct spf_eval *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->res.why, sizeof e->res.why, fmt, ap);
	va_end(ap);
}

static void finish(struct spf_eval *e, enum spf_verdict v)
{
	e->res.verdict = v;
	e->done = true;
	e->op = OP_NONE;
}

static void append(char *dst, size_t cap, const char *s)
{
	size_t n = strlen(dst);
	if (n + 1 < cap)
		snprintf(dst + n, cap - n, "%s", s);
}

bool spf_addr_in(const struct dns_addr *a, const struct dns_addr *net,
                 unsigned len)
{
	if (a->family != net->family)
		return false;
	unsigned max = a->family == AF_INET ? 32 : 128;
	if (len > max)
		return false;
	unsigned full = len / 8, rest = len % 8;
	if (memcmp(a->a, net->a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a->a[full] & mask) == (net->a[full] & mask);
}

int spf_eval_new(const struct spf_query *q, struct spf_eval **out)
{
	struct spf_eval *e = calloc(1, sizeof *e);
	*out = NULL;
	if (!e)
		return -ENOMEM;
	e->q = *q;
	e->deadline_ms = q->deadline_ms ? q->deadline_ms : SPF_DEADLINE_MS;
	/* §5: an IPv4-mapped IPv6 client is an IPv4 client. */
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	                                   0xff, 0xff};
	if (e->q.ip.family == AF_INET6 && memcmp(e->q.ip.a, mapped, 12) == 0) {
		memmove(e->q.ip.a, e->q.ip.a + 12, 4);
		memset(e->q.ip.a + 4, 0, 12);
		e->q.ip.family = AF_INET;
	}
	const char *helo = q->helo && *q->helo ? q->helo : "unknown";
	snprintf(e->helo, sizeof e->helo, "%s", helo);
	e->q.helo = e->helo;
	e->q.domain = NULL;
	e->q.sender = e->sender;
	*out = e;
	if (strlen(helo) > DNS_NAME_MAX) {
		why(e, "HELO name longer than %d", DNS_NAME_MAX);
		finish(e, SPF_NONE);
		return 0;
	}
	/* §4.3: no sender, the HELO identity: postmaster@helo; no
	 * local-part: postmaster. */
	const char *s = q->sender ? q->sender : "";
	const char *at = strrchr(s, '@');
	int n;
	if (!*s)
		n = snprintf(e->sender, sizeof e->sender, "postmaster@%s", helo);
	else if (!at)
		n = snprintf(e->sender, sizeof e->sender, "postmaster@%s", s);
	else if (at == s)
		n = snprintf(e->sender, sizeof e->sender, "postmaster%s", s);
	else
		n = snprintf(e->sender, sizeof e->sender, "%s", s);
	if (n < 0 || (size_t)n >= sizeof e->sender) {
		e->sender[0] = '\0';
		why(e, "sender longer than %zu", sizeof e->sender - 1);
		finish(e, SPF_NONE);
		return 0;
	}
	/* §4.3: a malformed <domain> is "none". */
	if (!q->domain || dns_name_norm(q->domain, e->res.domain,
	                                sizeof e->res.domain) < 0 ||
	    !strchr(e->res.domain, '.')) {
		why(e, "'%.300s' is not a domain name", q->domain ? q->domain : "");
		e->res.domain[0] = '\0';
		finish(e, SPF_NONE);
		return 0;
	}
	struct spf_frame *f = &e->st[e->depth++];
	snprintf(f->domain, sizeof f->domain, "%s", e->res.domain);
	snprintf(e->seen[0].domain, sizeof e->seen[0].domain, "%s", f->domain);
	e->nseen = 1;
	return 0;
}

void spf_eval_free(struct spf_eval *e)
{
	if (!e)
		return;
	for (unsigned i = 0; i < e->depth; i++)
		spf_record_free(e->st[i].rec);
	free(e);
}

const struct spf_result *spf_eval_result(const struct spf_eval *e)
{
	return &e->res;
}

void spf_eval_timeout(struct spf_eval *e, unsigned ms)
{
	if (e->done)
		return;
	why(e, "no result within %u ms", ms);
	finish(e, SPF_TEMPERROR);
}

static struct spf_frame *top(struct spf_eval *e)
{
	return &e->st[e->depth - 1];
}

static struct spf_term *cur_term(struct spf_eval *e)
{
	struct spf_frame *f = top(e);
	return &f->rec->terms[f->ti];
}

static void ask(struct spf_eval *e, enum spf_op op, const char *name,
                uint16_t type)
{
	e->op = op;
	snprintf(e->ask.name, sizeof e->ask.name, "%s", name);
	e->ask.type = type;
	e->res.queries++;
}

/* §4.6.4: one more term that causes DNS lookups. false: over the limit
 * (the result is final). */
static bool count_lookup(struct spf_eval *e, const char *text)
{
	if (e->res.dns_lookups == SPF_LOOKUP_MAX) {
		why(e, "more than %d DNS lookups (%s, then %s)", SPF_LOOKUP_MAX,
		    e->lookups, text);
		finish(e, SPF_PERMERROR);
		return false;
	}
	if (e->res.dns_lookups++)
		append(e->lookups, sizeof e->lookups, ", ");
	append(e->lookups, sizeof e->lookups, text);
	return true;
}

/* §4.6.4: a void lookup (NXDOMAIN, or an answer with no records). */
static bool count_void(struct spf_eval *e)
{
	if (++e->res.void_lookups > SPF_VOID_MAX) {
		struct spf_frame *f = top(e);
		why(e, "more than %d void lookups at %s (in %s)", SPF_VOID_MAX,
		    cur_term(e)->text, f->domain);
		finish(e, SPF_PERMERROR);
		return false;
	}
	return true;
}

/* Expands a domain-spec into name (DNS_NAME_MAX + 1 bytes), normalised.
 * Returns 0, 1 when the expanded text is not a name we would ask about,
 * or -1 when the result is final (permerror). */
static int expand(struct spf_eval *e, const char *spec, char *name)
{
	struct spf_macro_ctx c = {
		.sender = e->sender, .domain = top(e)->domain, .ip = e->q.ip,
		.helo = e->helo,
	};
	char raw[SPF_EXPAND_MAX + 1], err[256];
	if (spf_expand_name(spec, &c, raw, sizeof raw, err, sizeof err) < 0) {
		why(e, "at %s: %s", top(e)->domain, err);
		finish(e, SPF_PERMERROR);
		return -1;
	}
	if (dns_name_norm(raw, name, DNS_NAME_MAX + 1) < 0)
		return 1;
	return 0;
}

static bool seen_on_path(struct spf_eval *e, const char *d)
{
	for (unsigned i = 0; i < e->nseen; i++)
		if (strcmp(e->seen[i].domain, d) == 0)
			return true;
	return false;
}

static void loop_error(struct spf_eval *e, const char *text, const char *d)
{
	char chain[400] = "";
	for (unsigned i = 0; i < e->nseen; i++) {
		append(chain, sizeof chain, e->seen[i].domain);
		append(chain, sizeof chain, " > ");
	}
	append(chain, sizeof chain, d);
	why(e, "include loop at %s (%s)", text, chain);
	finish(e, SPF_PERMERROR);
}

static void add_seen(struct spf_eval *e, const char *d)
{
	/* Bounded: every push or redirect counted a lookup first. */
	if (e->nseen < sizeof e->seen / sizeof *e->seen) {
		snprintf(e->seen[e->nseen].domain, sizeof e->seen[0].domain, "%s",
		         d);
		e->seen[e->nseen++].depth = e->depth - 1;
	}
}

static enum spf_verdict qual_verdict(char q)
{
	switch (q) {
	case '-': return SPF_FAIL;
	case '~': return SPF_SOFTFAIL;
	case '?': return SPF_NEUTRAL;
	default: return SPF_PASS;
	}
}

static void frame_done(struct spf_eval *e, enum spf_verdict v);

/* The current term of the top frame matched. */
static void matched(struct spf_eval *e)
{
	struct spf_term *t = cur_term(e);
	/* The innermost match sets the path (the includes and redirects
	 * above it are in e->path); a pass climbing back up keeps it. */
	if (!e->res.path[0])
		snprintf(e->res.path, sizeof e->res.path, "%s%s", e->path,
		         t->text);
	if (e->depth == 1) {
		/* mechanism: the top record's own term, the path's first. */
		const char *sep = strstr(e->res.path, " > ");
		size_t n = sep ? (size_t)(sep - e->res.path) : strlen(e->res.path);
		if (n >= sizeof e->res.mechanism)
			n = sizeof e->res.mechanism - 1;
		memcpy(e->res.mechanism, e->res.path, n);
		e->res.mechanism[n] = '\0';
	}
	frame_done(e, qual_verdict(t->qual));
}

static void no_match(struct spf_eval *e)
{
	e->op = OP_NONE;
	top(e)->ti++;
}

/* The top frame's check_host() returned v. */
static void frame_done(struct spf_eval *e, enum spf_verdict v)
{
	e->op = OP_NONE;
	struct spf_frame *f = top(e);
	if (e->depth == 1) {
		finish(e, v);
		return;
	}
	char child[DNS_NAME_MAX + 1];
	snprintf(child, sizeof child, "%s", f->domain);
	spf_record_free(f->rec);
	f->rec = NULL;
	e->path[f->path_len] = '\0';
	while (e->nseen > 0 && e->seen[e->nseen - 1].depth >= e->depth - 1)
		e->nseen--;
	e->depth--;
	/* §5.2: the include's result. */
	switch (v) {
	case SPF_PASS:
		matched(e);
		break;
	case SPF_FAIL:
	case SPF_SOFTFAIL:
	case SPF_NEUTRAL:
		e->res.path[0] = '\0';    /* that inner match did not count */
		no_match(e);
		break;
	case SPF_TEMPERROR:
	case SPF_PERMERROR:
		finish(e, v);             /* why set by the inner error */
		break;
	case SPF_NONE:
	default:
		why(e, "%s: no SPF record at %s", cur_term(e)->text, child);
		finish(e, SPF_PERMERROR);
	}
}

/* Starts the current term, or moves past it. */
static void step_term(struct spf_eval *e)
{
	struct spf_frame *f = top(e);
	struct spf_term *t = cur_term(e);
	char name[DNS_NAME_MAX + 1];
	int rc;
	switch (t->kind) {
	case SPF_T_ALL:
		matched(e);
		return;
	case SPF_T_IP4:
		if (e->q.ip.family == AF_INET &&
		    spf_addr_in(&e->q.ip, &t->net, t->cidr4))
			matched(e);
		else
			no_match(e);
		return;
	case SPF_T_IP6:
		if (e->q.ip.family == AF_INET6 &&
		    spf_addr_in(&e->q.ip, &t->net, t->cidr6))
			matched(e);
		else
			no_match(e);
		return;
	case SPF_T_A:
	case SPF_T_MX:
	case SPF_T_PTR:
	case SPF_T_EXISTS:
		if (!count_lookup(e, t->text))
			return;
		if (t->spec) {
			rc = expand(e, t->spec, e->target);
			if (rc < 0)
				return;
			if (rc > 0) {
				no_match(e);   /* documented in spf.h */
				return;
			}
		} else {
			snprintf(e->target, sizeof e->target, "%s", f->domain);
		}
		if (t->kind == SPF_T_A)
			ask(e, OP_A, e->target,
			    e->q.ip.family == AF_INET ? DNS_T_A : DNS_T_AAAA);
		else if (t->kind == SPF_T_MX)
			ask(e, OP_MX, e->target, DNS_T_MX);
		else if (t->kind == SPF_T_EXISTS)
			ask(e, OP_EXISTS, e->target, DNS_T_A);   /* §5.7: always A */
		else {
			char rev[DNS_NAME_MAX + 1];
			if (dns_reverse_name(&e->q.ip, rev, sizeof rev) < 0) {
				no_match(e);
				return;
			}
			ask(e, OP_PTR, rev, DNS_T_PTR);
		}
		return;
	case SPF_T_INCLUDE:
		if (!count_lookup(e, t->text))
			return;
		rc = expand(e, t->spec, name);
		if (rc < 0)
			return;
		if (rc > 0) {
			why(e, "%s: not a domain name to ask about", t->text);
			finish(e, SPF_PERMERROR);
			return;
		}
		if (seen_on_path(e, name)) {
			loop_error(e, t->text, name);
			return;
		}
		if (e->depth == sizeof e->st / sizeof *e->st) {
			/* Unreachable: every frame counted a lookup. */
			why(e, "includes nested too deep at %s", t->text);
			finish(e, SPF_PERMERROR);
			return;
		}
		{
			struct spf_frame *c = &e->st[e->depth++];
			memset(c, 0, sizeof *c);
			snprintf(c->domain, sizeof c->domain, "%s", name);
			c->include = true;
			c->path_len = strlen(e->path);
			append(e->path, sizeof e->path, t->text);
			append(e->path, sizeof e->path, " > ");
			add_seen(e, name);
		}
		return;
	default:
		/* Modifiers: redirect is applied after the last mechanism,
		 * exp= is never fetched, unknown ones are ignored (§6). */
		no_match(e);
		return;
	}
}

/* No mechanism of the top frame matched: redirect or neutral (§4.7). */
static void step_end(struct spf_eval *e)
{
	struct spf_frame *f = top(e);
	const struct spf_term *r = f->rec->redirect;
	if (!r || f->rec->has_all) {
		frame_done(e, SPF_NEUTRAL);
		return;
	}
	if (!count_lookup(e, r->text))
		return;
	char name[DNS_NAME_MAX + 1];
	int rc = expand(e, r->spec, name);
	if (rc < 0)
		return;
	if (rc > 0) {
		why(e, "%s: not a domain name to ask about", r->text);
		finish(e, SPF_PERMERROR);
		return;
	}
	if (seen_on_path(e, name)) {
		loop_error(e, r->text, name);
		return;
	}
	append(e->path, sizeof e->path, r->text);
	append(e->path, sizeof e->path, " > ");
	spf_record_free(f->rec);
	f->rec = NULL;
	f->ti = 0;
	snprintf(f->domain, sizeof f->domain, "%s", name);
	add_seen(e, name);
	if (e->depth == 1)
		e->top_redirected = true;
}

bool spf_eval_next(struct spf_eval *e, struct spf_ask *out)
{
	/* Each pass settles a term without DNS or asks a question; terms
	 * are bounded (SPF_TERMS_MAX per record, SPF_LOOKUP_MAX records). */
	while (!e->done) {
		if (e->op != OP_NONE) {
			*out = e->ask;
			return true;
		}
		struct spf_frame *f = top(e);
		if (!f->rec) {
			ask(e, OP_TXT, f->domain, DNS_T_TXT);
			continue;
		}
		if (f->ti < f->rec->nterms)
			step_term(e);
		else
			step_end(e);
	}
	return false;
}

/* An error answer to a question every check needs (§4.4, §5). */
static void dns_error(struct spf_eval *e, const struct dns_result *r)
{
	why(e, "DNS %s for %s %s", dns_status_names[r->status],
	    dns_type_name(e->ask.type), e->ask.name);
	finish(e, SPF_TEMPERROR);
}

static bool is_void(const struct dns_result *r)
{
	return r->status == DNS_NXDOMAIN || r->status == DNS_NODATA ||
	       (r->status == DNS_OK && r->nrr == 0);
}

static bool any_addr_matches(struct spf_eval *e, const struct dns_result *r,
                             unsigned len)
{
	if (r->status != DNS_OK)
		return false;
	for (size_t i = 0; i < r->nrr; i++)
		if ((r->rr[i].type == DNS_T_A || r->rr[i].type == DNS_T_AAAA) &&
		    spf_addr_in(&e->q.ip, &r->rr[i].addr, len))
			return true;
	return false;
}

static void answer_txt(struct spf_eval *e, const struct dns_result *r)
{
	struct spf_frame *f = top(e);
	bool first = e->depth == 1 && !e->top_redirected;
	if (r->status == DNS_TEMPFAIL || r->status == DNS_NOMEM) {
		dns_error(e, r);
		return;
	}
	const struct dns_rr *rec = NULL;
	unsigned n = 0;
	if (r->status == DNS_OK)
		for (size_t i = 0; i < r->nrr; i++)
			if (r->rr[i].type == DNS_T_TXT &&
			    spf_is_record(r->rr[i].txt, r->rr[i].txtlen)) {
				rec = &r->rr[i];
				n++;
			}
	if (n == 0) {
		if (first) {
			/* §4.5: no record, "none". */
			why(e, "no SPF record at %s", f->domain);
			finish(e, SPF_NONE);
		} else if (f->include) {
			frame_done(e, SPF_NONE);   /* the parent names the include */
		} else {
			/* §6.1: a redirect to a domain without a record. */
			why(e, "no SPF record at %s (redirect)", f->domain);
			finish(e, SPF_PERMERROR);
		}
		return;
	}
	if (n > 1) {
		why(e, "%s SPF records at %s", n == 2 ? "two" : "more than two",
		    f->domain);
		finish(e, SPF_PERMERROR);
		return;
	}
	if (first)
		snprintf(e->res.record, sizeof e->res.record, "%.*s",
		         (int)rec->txtlen, rec->txt);
	char err[300];
	int rc = spf_parse(rec->txt, rec->txtlen, &f->rec, err, sizeof err);
	if (rc == -ENOMEM) {
		why(e, "out of memory");
		finish(e, SPF_TEMPERROR);
	} else if (rc < 0) {
		why(e, "syntax error at %s: %s", f->domain, err);
		finish(e, SPF_PERMERROR);
	} else {
		e->op = OP_NONE;
	}
}

/* Asks the address of the next MX target / PTR name, or ends the term. */
static void next_name(struct spf_eval *e, enum spf_op op)
{
	if (e->ni >= e->nnames) {
		no_match(e);
		return;
	}
	ask(e, op, e->names[e->ni++],
	    e->q.ip.family == AF_INET ? DNS_T_A : DNS_T_AAAA);
}

/* Does PTR name n equal the target or lie under it (§5.5)? */
static bool under(const char *n, const char *target)
{
	size_t ln = strlen(n), lt = strlen(target);
	if (ln == lt)
		return strcmp(n, target) == 0;
	return ln > lt && n[ln - lt - 1] == '.' &&
	       strcmp(n + ln - lt, target) == 0;
}

void spf_eval_answer(struct spf_eval *e, const struct dns_result *r)
{
	if (e->done || e->op == OP_NONE)
		return;
	struct spf_term *t = e->op == OP_TXT ? NULL : cur_term(e);
	switch (e->op) {
	case OP_TXT:
		answer_txt(e, r);
		return;
	case OP_A:
	case OP_EXISTS:
		if (r->status == DNS_BADNAME) {
			no_match(e);
		} else if (is_void(r)) {
			if (count_void(e))
				no_match(e);
		} else if (r->status != DNS_OK) {
			dns_error(e, r);
		} else if (e->op == OP_EXISTS ||
		           any_addr_matches(e, r, e->q.ip.family == AF_INET ?
		                            t->cidr4 : t->cidr6)) {
			matched(e);
		} else {
			no_match(e);
		}
		return;
	case OP_MX:
		if (r->status == DNS_BADNAME) {
			no_match(e);
			return;
		}
		if (is_void(r)) {
			if (count_void(e))
				no_match(e);
			return;
		}
		if (r->status != DNS_OK) {
			dns_error(e, r);
			return;
		}
		if (r->nullmx) {            /* RFC 7505: no MX host to match */
			no_match(e);
			return;
		}
		if (r->nrr > SPF_NAMES_MAX) {
			why(e, "more than %d MX records for %s at %s", SPF_NAMES_MAX,
			    t->text, e->target);
			finish(e, SPF_PERMERROR);
			return;
		}
		e->nnames = e->ni = 0;
		for (size_t i = 0; i < r->nrr; i++)
			if (r->rr[i].type == DNS_T_MX && r->rr[i].name &&
			    r->rr[i].name[0])
				snprintf(e->names[e->nnames++], sizeof e->names[0], "%s",
				         r->rr[i].name);
		next_name(e, OP_MX_ADDR);
		return;
	case OP_MX_ADDR:
		if (any_addr_matches(e, r, e->q.ip.family == AF_INET ?
		                     t->cidr4 : t->cidr6))
			matched(e);
		else if (r->status == DNS_TEMPFAIL || r->status == DNS_NOMEM)
			dns_error(e, r);
		else
			next_name(e, OP_MX_ADDR);
		return;
	case OP_PTR:
		/* §5.5: a DNS error on the PTR lookup: no match. */
		if (is_void(r)) {
			if (count_void(e))
				no_match(e);
			return;
		}
		if (r->status != DNS_OK) {
			no_match(e);
			return;
		}
		/* The first SPF_NAMES_MAX names (§4.6.4); only those that
		 * could match need validating. */
		e->nnames = e->ni = 0;
		for (size_t i = 0; i < r->nrr && i < SPF_NAMES_MAX; i++)
			if (r->rr[i].type == DNS_T_PTR && r->rr[i].name &&
			    under(r->rr[i].name, e->target))
				snprintf(e->names[e->nnames++], sizeof e->names[0], "%s",
				         r->rr[i].name);
		next_name(e, OP_PTR_ADDR);
		return;
	case OP_PTR_ADDR:
		/* Validated when the name's addresses hold the client's; a
		 * DNS error skips the name (§5.5). */
		if (any_addr_matches(e, r, e->q.ip.family == AF_INET ? 32 : 128))
			matched(e);
		else
			next_name(e, OP_PTR_ADDR);
		return;
	case OP_NONE:
		return;
	}
}

/* ---- the shell ------------------------------------------------------ */

struct spf_req {
	struct dns *d;
	struct spf_eval *e;
	spf_cb cb;                 /* NULL once cancelled or called */
	void *arg;
	struct dns_req *dq;        /* the question in flight */
	uv_timer_t timer;          /* the start (0 ms), then the deadline */
	bool started;
};

static void req_closed_cb(uv_handle_t *h)
{
	struct spf_req *r = h->data;
	spf_eval_free(r->e);
	free(r);
}

static void req_close(struct spf_req *r)
{
	if (r->dq) {
		dns_cancel(r->dq);
		r->dq = NULL;
	}
	uv_timer_stop(&r->timer);
	if (!uv_is_closing((uv_handle_t *)&r->timer))
		uv_close((uv_handle_t *)&r->timer, req_closed_cb);
}

static void run(struct spf_req *r);

static void answer_cb(void *arg, const struct dns_result *res)
{
	struct spf_req *r = arg;
	r->dq = NULL;
	spf_eval_answer(r->e, res);
	run(r);
}

/* Asks dns/ until a question is in flight or the result is final. */
static void run(struct spf_req *r)
{
	struct spf_ask a;
	while (spf_eval_next(r->e, &a)) {
		enum dns_status st;
		r->dq = dns_query(r->d, a.name, a.type, answer_cb, r, &st);
		if (r->dq)
			return;
		/* Refused at once (bad name, no memory): the same answer as
		 * a result with that status. */
		struct dns_result fake = {
			.status = st, .qtype = a.type, .qname = a.name,
			.canon = a.name,
		};
		spf_eval_answer(r->e, &fake);
	}
	spf_cb cb = r->cb;
	r->cb = NULL;
	if (cb)
		cb(r->arg, spf_eval_result(r->e));
	req_close(r);
}

static void timer_cb(uv_timer_t *t)
{
	struct spf_req *r = t->data;
	if (!r->started) {
		r->started = true;
		const struct spf_query *q = &r->e->q;
		int rc = uv_timer_start(&r->timer, timer_cb,
		                        q->deadline_ms ? q->deadline_ms :
		                        SPF_DEADLINE_MS, 0);
		if (rc < 0)   /* only on a closing handle: never here */
			log_err("spf: uv_timer_start: %s", uv_strerror(rc));
		run(r);
		return;
	}
	/* The deadline: drop the question in flight, temperror. */
	if (r->dq) {
		dns_cancel(r->dq);
		r->dq = NULL;
	}
	spf_eval_timeout(r->e, r->e->q.deadline_ms ? r->e->q.deadline_ms :
	                 SPF_DEADLINE_MS);
	run(r);
}

struct spf_req *spf_check(struct dns *d, const struct spf_query *q,
                          spf_cb cb, void *arg)
{
	struct spf_req *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	if (spf_eval_new(q, &r->e) < 0) {
		free(r);
		return NULL;
	}
	r->d = d;
	r->cb = cb;
	r->arg = arg;
	int rc = uv_timer_init(dns_loop(d), &r->timer);
	if (rc < 0) {
		log_err("spf: uv_timer_init: %s", uv_strerror(rc));
		spf_eval_free(r->e);
		free(r);
		return NULL;
	}
	r->timer.data = r;
	/* Started from the loop: the callback never runs in here. */
	rc = uv_timer_start(&r->timer, timer_cb, 0, 0);
	if (rc < 0) {
		log_err("spf: uv_timer_start: %s", uv_strerror(rc));
		r->cb = NULL;
		uv_close((uv_handle_t *)&r->timer, req_closed_cb);
		return NULL;
	}
	return r;
}

void spf_cancel(struct spf_req *r)
{
	if (!r)
		return;
	r->cb = NULL;
	req_close(r);
}
