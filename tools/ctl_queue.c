/*
 * tools/ctl_queue.c - The read-only queue commands: list (with its
 * filters and per-recipient lines), show and cat. Envelopes come from the
 * index through queue.h's read side (queue_ro_*), which is safe beside a
 * running relayd; bodies are read from spool_dir/msg/QID (show reads only
 * the header section, cat streams the file). list never opens body files
 * and makes no system call per message, so it stays fast on large queues;
 * the one thing it asks a running relayd (ctl_control.c, before the index
 * is read, never inside a read transaction) is where its mail goes and
 * which destinations are paused (direct mode: with the recipient domains
 * routed to each): a pause lives in relayd's memory, and it is why a
 * recipient that was never tried waits (struct ctl_route).
 */
#include "ctl.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "deliver/deliver_ctl.h"
#include "queue/queue.h"

/* show prints at most this much of the header section. */
#define CTL_HDR_MAX (64 * 1024)
/* list renders into memory so the index read transaction never waits on
 * stdout; past this much it writes out anyway, to bound memory. */
#define CTL_LIST_SPILL ((size_t)64 << 20)
/* cat's copy buffer when sendfile(2) cannot write to stdout. */
#define CTL_COPY_BUF (128 * 1024)

static const char *ctl_msg_state(uint8_t s)
{
	return s <= QUEUE_MSG_HOLD ? queue_msg_state_names[s] : "unknown";
}

static const char *ctl_rcpt_state(uint8_t s)
{
	return s <= QUEUE_RCPT_BOUNCED ? queue_rcpt_state_names[s] : "unknown";
}

static const char *ctl_body_type(uint8_t flags)
{
	if (flags & QUEUE_F_BINARYMIME)
		return "BINARYMIME";
	if (flags & QUEUE_F_8BITMIME)
		return "8BITMIME";
	return NULL;            /* BODY= not given */
}

static const char *ctl_ret(uint8_t flags)
{
	if (flags & QUEUE_F_RET_FULL)
		return "FULL";
	if (flags & QUEUE_F_RET_HDRS)
		return "HDRS";
	return NULL;
}

static const struct {
	uint8_t bit;
	const char *name;
} ctl_notify_names[] = {
	{QUEUE_NOTIFY_NEVER, "NEVER"},
	{QUEUE_NOTIFY_SUCCESS, "SUCCESS"},
	{QUEUE_NOTIFY_FAILURE, "FAILURE"},
	{QUEUE_NOTIFY_DELAY, "DELAY"},
};

#define CTL_NNOTIFY (sizeof ctl_notify_names / sizeof *ctl_notify_names)

/* A queue id argument for show/cat: an error (exit 1) when malformed. */
static int ctl_qid_arg(const char *arg, char out[QUEUE_ID_SIZE])
{
	if (ctl_qid_norm(arg, out))
		return 0;
	char esc[128];
	log_escape(esc, sizeof esc, arg, strlen(arg));
	ctl_err("'%s' is not a queue id", esc);
	return -EINVAL;
}

int ctl_ro_open(const char *spool, struct queue_ro **out)
{
	int r = queue_ro_open(spool, out);
	if (r == -ENOENT)
		ctl_err("no spool at %s (is spool_dir right? relayd creates it "
		        "at first start)", spool);
	else if (r < 0)
		ctl_err("cannot open the queue index in %s: %s", spool,
		        strerror(-r));
	return r;
}

/* ---- where mail goes: the running relayd's word ------------------------ */

/* list/show ask a running relayd; they do not wait long for the answer. */
#define CTL_ROUTE_MS 2000
/* A destination key (deliver/deliver_int.h: DELIVER_DEST_KEY_MAX). */
#define CTL_DEST_KEY_MAX 320

enum ctl_route_asked {
	CTL_RT_NOT_ASKED = 0,
	CTL_RT_ANSWERED,        /* stats reply read */
	CTL_RT_STOPPED,         /* relayd is not running */
	CTL_RT_NO_ANSWER,       /* it did not answer in time, or not sensibly */
};

/* At most this many paused destinations are told apart (direct mode). */
#define CTL_PAUSED_MAX 256

/* A destination the running relayd says is paused or throttled: its
 * key, until when (0: not said, or until resumed), why (throttled: the
 * reply), and (direct mode) the recipient domains routed to it,
 * NUL-separated. */
struct ctl_rdest {
	char key[CTL_DEST_KEY_MAX];
	int64_t until;
	bool op;                /* paused by the operator */
	bool throttled;         /* not paused: throttled by a reply */
	struct buf reason;
	struct buf domains;
};

/* The smarthost destination as the running relayd has it (its "stats"
 * reply: delivery, route.name/state/until/reason), or as the
 * configuration names it when relayd is not running; and the paused
 * destinations (smarthost mode: that one; direct mode: its
 * "destinations" reply). */
struct ctl_route {
	enum ctl_route_asked asked;
	bool smarthost;         /* delivery = smarthost (relayd's word first) */
	bool direct;            /* delivery = direct (relayd's word) */
	char key[CTL_DEST_KEY_MAX];   /* "smarthost:HOST:PORT", or "" */
	bool paused;            /* route.state "paused" */
	int64_t until;          /* unix seconds, 0: not said */
	struct buf reason;      /* route.reason (UTF-8), maybe empty */
	struct ctl_rdest *dests;
	size_t ndests;
};

static void ctl_route_free(struct ctl_route *rt)
{
	buf_free(&rt->reason);
	for (size_t i = 0; i < rt->ndests; i++) {
		buf_free(&rt->dests[i].reason);
		buf_free(&rt->dests[i].domains);
	}
	free(rt->dests);
	rt->dests = NULL;
	rt->ndests = 0;
}

static struct ctl_rdest *ctl_route_add(struct ctl_route *rt)
{
	if (rt->ndests >= CTL_PAUSED_MAX)
		return NULL;
	struct ctl_rdest *n = realloc(rt->dests, (rt->ndests + 1) * sizeof *n);
	if (!n)
		return NULL;
	rt->dests = n;
	struct ctl_rdest *e = &n[rt->ndests++];
	*e = (struct ctl_rdest){.reason = BUF_INIT(DELIVER_CTL_REPLY_MAX),
	                        .domains = BUF_INIT(DELIVER_CTL_REPLY_MAX)};
	return e;
}

static int ctl_route_domain_cb(void *arg, const char *v, size_t vn)
{
	struct ctl_rdest *e = arg;
	struct buf s = BUF_INIT(CTL_DEST_KEY_MAX);
	/* The reader finds members of objects: the element as one. */
	char obj[CTL_DEST_KEY_MAX * 6 + 8];
	if (vn > sizeof obj - 8)
		return 0;   /* no domain is that long */
	int on = snprintf(obj, sizeof obj, "{\"d\":%.*s}", (int)vn, v);
	int r = ctl_json_get_str(obj, (size_t)on, "d", &s);
	if (r == 0 && s.len && !memchr(s.data, '\0', s.len) &&
	    (buf_append(&e->domains, s.data, s.len) < 0 ||
	     buf_append(&e->domains, "", 1) < 0))
		r = -ENOMEM;
	buf_free(&s);
	return r < 0 ? r : 0;
}

/* One destination of the "destinations" reply: kept when paused or
 * throttled. */
static int ctl_route_dest_cb(void *arg, const char *v, size_t vn)
{
	struct ctl_route *rt = arg;
	struct buf name = BUF_INIT(CTL_DEST_KEY_MAX), st = BUF_INIT(64);
	int r = ctl_json_get_str(v, vn, "name", &name);
	if (r == 0)
		r = ctl_json_get_str(v, vn, "state", &st);
	bool thr = st.len == 9 && memcmp(st.data, "throttled", 9) == 0;
	if (r == 0 && ((st.len == 6 && memcmp(st.data, "paused", 6) == 0) ||
	               thr) &&
	    name.len < CTL_DEST_KEY_MAX && !memchr(name.data, '\0', name.len)) {
		struct ctl_rdest *e = ctl_route_add(rt);
		if (e) {
			e->throttled = thr;
			memcpy(e->key, name.data, name.len);
			e->key[name.len] = '\0';
			if (ctl_json_get_int(v, vn, "until", &e->until) < 0 ||
			    e->until < 0)
				e->until = 0;
			if (ctl_json_get_str(v, vn, "reason", &e->reason) < 0)
				buf_reset(&e->reason);
			const char *b;
			size_t bn;
			e->op = ctl_json_find(v, vn, "operator", &b, &bn) == 0 &&
			        bn == 4 && memcmp(b, "true", 4) == 0;
			/* Older relayd: no domains; the recipients tried there
			 * still match by their dest. */
			(void)ctl_json_each(v, vn, "domains", ctl_route_domain_cb, e);
		}
	}
	buf_free(&name);
	buf_free(&st);
	return 0;
}

/* The configuration's idea of the smarthost destination's key. */
static void ctl_route_from_conf(const struct ctl_ctx *c, struct ctl_route *rt)
{
	char host[256];
	uint16_t port;
	rt->smarthost = c->conf_loaded &&
	                c->conf.delivery == CONF_DELIVERY_SMARTHOST;
	if (rt->smarthost && c->conf.smarthost &&
	    conf_parse_hostport(c->conf.smarthost, host, sizeof host, &port) == 0)
		snprintf(rt->key, sizeof rt->key, "smarthost:%s:%u", host,
		         (unsigned)port);
}

/* Asks the running relayd (stats) once. Never fails: what it could not
 * learn stays unknown (asked says why). */
static void ctl_route_get(const struct ctl_ctx *c, struct ctl_route *rt)
{
	*rt = (struct ctl_route){.reason = BUF_INIT(DELIVER_CTL_REPLY_MAX)};
	ctl_route_from_conf(c, rt);
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		rt->asked = CTL_RT_NO_ANSWER;
		return;
	}
	int r = ctl_control_request(c->conf.spool_dir, "stats", CTL_ROUTE_MS,
	                            reply, DELIVER_CTL_REPLY_MAX);
	if (r == -ECONNREFUSED || r == -ENOENT) {
		rt->asked = CTL_RT_STOPPED;
		free(reply);
		return;
	}
	size_t n = strlen(reply);
	if (r != 0 || ctl_json_check(reply, n) != 0) {
		rt->asked = CTL_RT_NO_ANSWER;
		free(reply);
		return;
	}
	rt->asked = CTL_RT_ANSWERED;
	struct buf v = BUF_INIT(CTL_DEST_KEY_MAX);
	if (ctl_json_get_str(reply, n, "delivery", &v) == 0)
		rt->smarthost = v.len == 9 && memcmp(v.data, "smarthost", 9) == 0;
	buf_reset(&v);
	if (rt->smarthost && ctl_json_get_str(reply, n, "route.name", &v) == 0 &&
	    v.len + 11 < sizeof rt->key && !memchr(v.data, '\0', v.len))
		snprintf(rt->key, sizeof rt->key, "smarthost:%.*s", (int)v.len,
		         (const char *)v.data);
	buf_reset(&v);
	rt->paused = ctl_json_get_str(reply, n, "route.state", &v) == 0 &&
	             v.len == 6 && memcmp(v.data, "paused", 6) == 0;
	if (ctl_json_get_int(reply, n, "route.until", &rt->until) < 0 ||
	    rt->until < 0)
		rt->until = 0;
	if (ctl_json_get_str(reply, n, "route.reason", &rt->reason) < 0)
		buf_reset(&rt->reason);
	buf_reset(&v);
	if (ctl_json_get_str(reply, n, "delivery", &v) == 0)
		rt->direct = v.len == 6 && memcmp(v.data, "direct", 6) == 0;
	buf_free(&v);
	/* The paused and throttled destinations (direct mode: with the
	 * domains routed to each, which say why a recipient never tried
	 * waits). */
	if ((rt->smarthost || rt->direct) &&
	    ctl_control_request(c->conf.spool_dir, "destinations", CTL_ROUTE_MS,
	                        reply, DELIVER_CTL_REPLY_MAX) == 0 &&
	    ctl_json_check(reply, strlen(reply)) == 0)
		(void)ctl_json_each(reply, strlen(reply), "destinations",
		                    ctl_route_dest_cb, rt);
	free(reply);
}

/* Why an undelivered recipient waits. */
enum ctl_wait {
	CTL_W_NONE,             /* sent or bounced: it does not */
	CTL_W_HOLD,             /* its message is on hold */
	CTL_W_PAUSED,           /* its destination is paused */
	CTL_W_THROTTLED,        /* its destination is throttled: one
	                           transaction at a time, spaced */
	CTL_W_DEFERRED,         /* its last attempt failed; next_attempt */
	CTL_W_PENDING,          /* not tried yet; due at next_attempt */
};
static const char *const ctl_wait_names[] = {
	[CTL_W_NONE] = "none", [CTL_W_HOLD] = "hold",
	[CTL_W_PAUSED] = "paused", [CTL_W_THROTTLED] = "throttled",
	[CTL_W_DEFERRED] = "deferred",
	[CTL_W_PENDING] = "pending",
};

/* The paused destination r's domain routes to, by relayd's word (direct
 * mode), or NULL. */
static const struct ctl_rdest *ctl_rcpt_domain_dest(const struct ctl_route *rt,
                                                    const struct queue_rcpt *r)
{
	const char *at = r->addr ? strrchr(r->addr, '@') : NULL;
	if (!rt || !at || !at[1])
		return NULL;
	size_t dn = strlen(at + 1);
	if (dn > 1 && at[dn] == '.')
		dn--;   /* one trailing dot */
	for (size_t i = 0; i < rt->ndests; i++) {
		const struct ctl_rdest *e = &rt->dests[i];
		const char *p = (const char *)e->domains.data, *end = p +
		                e->domains.len;
		for (; p && p < end; p += strlen(p) + 1)
			if (strlen(p) == dn && strncasecmp(p, at + 1, dn) == 0)
				return e;
	}
	return NULL;
}

/* The destination r goes to: in direct mode the paused one its domain
 * routes to; else the one it was last tried at, else (never tried)
 * where relayd routes it - in smarthost mode, the smarthost. */
static const char *ctl_rcpt_dest(const struct ctl_route *rt,
                                 const struct queue_rcpt *r)
{
	const struct ctl_rdest *e = ctl_rcpt_domain_dest(rt, r);
	if (e)
		return e->key;
	if (r->dest)
		return r->dest;
	return rt && rt->smarthost && rt->key[0] ? rt->key : NULL;
}

/* Why r waits; *pd (may be NULL) gets the paused destination. */
static enum ctl_wait ctl_rcpt_wait(const struct ctl_route *rt,
                                   const struct queue_msg *m,
                                   const struct queue_rcpt *r,
                                   const struct ctl_rdest **pd)
{
	if (pd)
		*pd = NULL;
	if (r->state != QUEUE_RCPT_PENDING && r->state != QUEUE_RCPT_DEFERRED)
		return CTL_W_NONE;
	if (m->state == QUEUE_MSG_HOLD)
		return CTL_W_HOLD;
	if (!rt || rt->asked != CTL_RT_ANSWERED)
		return r->state == QUEUE_RCPT_DEFERRED ? CTL_W_DEFERRED
		                                       : CTL_W_PENDING;
	/* A paused destination holds every recipient routed to it, tried
	 * or not (mail accepted during the pause was never loaded). */
	const char *dest = ctl_rcpt_dest(rt, r);
	for (size_t i = 0; dest && i < rt->ndests; i++)
		if (strcmp(dest, rt->dests[i].key) == 0) {
			if (pd)
				*pd = &rt->dests[i];
			return rt->dests[i].throttled ? CTL_W_THROTTLED
			                              : CTL_W_PAUSED;
		}
	return r->state == QUEUE_RCPT_DEFERRED ? CTL_W_DEFERRED : CTL_W_PENDING;
}

/* "relayd": what relayctl learned from the running relayd, for --json. */
static void ctl_json_route(struct ctl_out *o, const struct ctl_route *rt)
{
	ctl_out_printf(o, "\"relayd\":{\"running\":%s",
	               rt->asked == CTL_RT_STOPPED ? "false" :
	               rt->asked == CTL_RT_ANSWERED ? "true" : "null");
	if (rt->asked == CTL_RT_ANSWERED && rt->smarthost) {
		ctl_out_str(o, ",\"route\":{\"dest\":");
		ctl_out_json_strz(o, rt->key[0] ? rt->key : NULL);
		ctl_out_printf(o, ",\"state\":\"%s\",\"until\":",
		               rt->paused ? "paused" : "active");
		if (rt->paused && rt->until)
			ctl_out_printf(o, "%" PRId64, rt->until);
		else
			ctl_out_str(o, "null");
		ctl_out_str(o, ",\"reason\":");
		if (rt->paused && rt->reason.len)
			ctl_out_json_str(o, rt->reason.data, rt->reason.len);
		else
			ctl_out_str(o, "null");
		ctl_out_str(o, "}");
	}
	ctl_out_str(o, "}");
}

/* The text of why r waits, after its address in list and as show's
 * "waiting:" line: "(destination DEST paused until T (in 4m): REASON)",
 * "(destination DEST paused until resumed: paused by operator)". */
static void ctl_paused_text(struct ctl_out *o, const struct ctl_rdest *pd,
                            int64_t now, size_t max)
{
	ctl_out_str(o, "destination ");
	ctl_out_text(o, pd->key, strlen(pd->key), 0);
	ctl_out_str(o, pd->throttled ? " throttled" : " paused");
	if (pd->until > 0) {
		char ts[64], age[32];
		ctl_fmt_time(ts, sizeof ts, pd->until);
		ctl_fmt_age(age, sizeof age, pd->until - now);
		ctl_out_printf(o, " until %s (in %s)", ts, age);
	} else if (pd->op) {
		ctl_out_str(o, " until resumed");
	}
	if (pd->reason.len) {
		ctl_out_str(o, ": ");
		ctl_out_text_max(o, pd->reason.data, pd->reason.len, max);
	}
}

/* ---- JSON ------------------------------------------------------------ */

/* One message as a JSON object, without the closing brace (show adds
 * "headers"). */
static void ctl_json_msg(struct ctl_out *o, const struct queue_msg *m,
                         int64_t now, const struct ctl_route *rt)
{
	int64_t age = now - m->arrival;
	ctl_out_str(o, "{\"id\":");
	ctl_out_json_strz(o, m->qid);
	ctl_out_printf(o, ",\"arrival\":%" PRId64 ",\"arrival_ms\":%u"
	               ",\"age_seconds\":%" PRId64
	               ",\"size\":%" PRIu64 ",\"sender\":",
	               m->arrival, (unsigned)m->arrival_ms, age < 0 ? 0 : age,
	               m->size);
	ctl_out_json_strz(o, m->sender ? m->sender : "");
	ctl_out_str(o, ",\"state\":");
	ctl_out_json_strz(o, ctl_msg_state(m->state));
	ctl_out_printf(o, ",\"flags\":{\"smtputf8\":%s,\"body\":",
	               (m->flags & QUEUE_F_SMTPUTF8) ? "true" : "false");
	ctl_out_json_strz(o, ctl_body_type(m->flags));
	ctl_out_str(o, ",\"ret\":");
	ctl_out_json_strz(o, ctl_ret(m->flags));
	ctl_out_str(o, ",\"envid\":");
	ctl_out_json_strz(o, m->envid);
	ctl_out_str(o, "},\"recipients\":[");
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *rc = &m->rcpt[i];
		ctl_out_str(o, i ? ",{\"address\":" : "{\"address\":");
		ctl_out_json_strz(o, rc->addr ? rc->addr : "");
		ctl_out_str(o, ",\"state\":");
		ctl_out_json_strz(o, ctl_rcpt_state(rc->state));
		ctl_out_printf(o, ",\"attempts\":%" PRIu32 ",\"next_attempt\":",
		               rc->attempts);
		if (rc->next_attempt)
			ctl_out_printf(o, "%" PRId64, rc->next_attempt);
		else
			ctl_out_str(o, "null");
		ctl_out_str(o, ",\"orcpt\":");
		ctl_out_json_strz(o, rc->orcpt);
		ctl_out_str(o, ",\"notify\":");
		if (rc->notify) {
			bool first = true;
			ctl_out_str(o, "[");
			for (size_t k = 0; k < CTL_NNOTIFY; k++) {
				if (!(rc->notify & ctl_notify_names[k].bit))
					continue;
				ctl_out_str(o, first ? "\"" : ",\"");
				ctl_out_str(o, ctl_notify_names[k].name);
				ctl_out_str(o, "\"");
				first = false;
			}
			ctl_out_str(o, "]");
		} else {
			ctl_out_str(o, "null");
		}
		ctl_out_str(o, ",\"last_reply\":");
		ctl_out_json_strz(o, rc->last_reply);
		ctl_out_str(o, ",\"dest\":");
		ctl_out_json_strz(o, rc->dest);
		ctl_out_str(o, ",\"mx\":");
		ctl_out_json_strz(o, rc->mx);
		ctl_out_str(o, ",\"last_try\":");
		if (rc->last_try)
			ctl_out_printf(o, "%" PRId64, rc->last_try);
		else
			ctl_out_str(o, "null");
		/* Why it waits: {"why": pending|deferred|paused|hold, "dest":
		 * where it goes, "until": when it is tried next (null: not
		 * known, or on hold), "reason": the last reply or the pause's
		 * reason}; null once sent or bounced. */
		const struct ctl_rdest *pd;
		enum ctl_wait w = ctl_rcpt_wait(rt, m, rc, &pd);
		ctl_out_str(o, ",\"waiting\":");
		if (w == CTL_W_NONE) {
			ctl_out_str(o, "null}");
			continue;
		}
		ctl_out_printf(o, "{\"why\":\"%s\",\"dest\":", ctl_wait_names[w]);
		ctl_out_json_strz(o, pd ? pd->key : ctl_rcpt_dest(rt, rc));
		ctl_out_str(o, ",\"until\":");
		int64_t until = pd ? pd->until :
		                w == CTL_W_HOLD ? 0 :
		                rc->next_attempt ? rc->next_attempt : m->arrival;
		if (until > 0)
			ctl_out_printf(o, "%" PRId64, until);
		else
			ctl_out_str(o, "null");
		ctl_out_str(o, ",\"reason\":");
		if (pd && pd->reason.len)
			ctl_out_json_str(o, pd->reason.data, pd->reason.len);
		else if (w == CTL_W_PAUSED)
			ctl_out_str(o, "null");
		else
			ctl_out_json_strz(o, rc->last_reply);
		ctl_out_str(o, "}}");
	}
	ctl_out_str(o, "]");
}

/* ---- list ------------------------------------------------------------ */

#define CTL_COL_SENDER 32
/* A recipient line shows this much of the last reply. */
#define CTL_REPLY_CHARS 72

/* The list filters (command options); all that are given must match. */
struct ctl_filter {
	bool any;               /* at least one filter given */
	int rcpt_state;         /* --state pending|...: a recipient in it; -1 */
	int msg_state;          /* --state active|hold: the message's; -1 */
	const char *to;         /* --to DOMAIN: a recipient's domain */
	const char *from;       /* --from ADDR (without <>) */
	size_t fromlen;
	bool older_set;         /* --older AGE: arrival <= now - older */
	int64_t older;          /* seconds */
};

static int ctl_filter_parse(const struct ctl_ctx *c, struct ctl_filter *f)
{
	const char *v;
	char esc[128];
	*f = (struct ctl_filter){.rcpt_state = -1, .msg_state = -1};
	if ((v = ctl_opt(c, "--state"))) {
		for (int i = 0; i <= QUEUE_RCPT_BOUNCED; i++)
			if (strcasecmp(v, queue_rcpt_state_names[i]) == 0)
				f->rcpt_state = i;
		for (int i = 0; i <= QUEUE_MSG_HOLD; i++)
			if (strcasecmp(v, queue_msg_state_names[i]) == 0)
				f->msg_state = i;
		if (f->rcpt_state < 0 && f->msg_state < 0)
			return ctl_usage_error("--state: '%s' is none of pending, "
			                       "deferred, sent, bounced, active, hold",
			                       log_escape(esc, sizeof esc, v, strlen(v)));
		f->any = true;
	}
	if ((v = ctl_opt(c, "--to"))) {
		if (v[0] == '@')        /* "@example.com" reads as meant */
			v++;
		if (!v[0] || strchr(v, '@'))
			return ctl_usage_error("--to takes a domain, like example.com");
		f->to = v;
		f->any = true;
	}
	if ((v = ctl_opt(c, "--from"))) {
		size_t n = strlen(v);
		if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
			v++;
			n -= 2;
		}
		f->from = v;
		f->fromlen = n;
		f->any = true;
	}
	if ((v = ctl_opt(c, "--older"))) {
		uint64_t ms;
		if (conf_parse_duration(v, &ms) < 0 || ms / 1000 > INT64_MAX / 2)
			return ctl_usage_error("--older: '%s' is not an age like 30s, "
			                       "15m, 2h or 3d",
			                       log_escape(esc, sizeof esc, v, strlen(v)));
		f->older_set = true;
		f->older = (int64_t)(ms / 1000);
		f->any = true;
	}
	return 0;
}

/* The domain of an address: after its last '@' (a quoted local part may
 * hold one), or "" without one. */
static const char *ctl_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

/* Addresses compare exactly in the local part (RFC 5321 2.4: it may be
 * case-sensitive) and without case in the domain. */
static bool ctl_addr_eq(const char *a, const char *b, size_t blen)
{
	size_t alen = strlen(a);
	const char *aat = strrchr(a, '@');
	const char *bat = blen ? memrchr(b, '@', blen) : NULL;
	if (!aat || !bat)
		return alen == blen && memcmp(a, b, blen) == 0;
	size_t al = (size_t)(aat - a), bl = (size_t)(bat - b);
	return al == bl && memcmp(a, b, al) == 0 && alen - al == blen - bl &&
	       strncasecmp(aat, bat, alen - al) == 0;
}

static bool ctl_filter_match(const struct ctl_filter *f,
                             const struct queue_msg *m, int64_t now,
                             const struct ctl_route *rt)
{
	if (!f->any)
		return true;
	if (f->msg_state >= 0 && m->state != f->msg_state)
		return false;
	if (f->older_set && !(m->arrival <= now - f->older))
		return false;
	if (f->from && !ctl_addr_eq(m->sender ? m->sender : "", f->from,
	                            f->fromlen))
		return false;
	if (f->rcpt_state < 0 && !f->to)
		return true;
	/* One recipient must satisfy both (--state deferred --to x.org:
	 * a deferred recipient at x.org). */
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		/* A recipient held back by its paused destination is in
		 * effect deferred, tried or not. */
		if (f->rcpt_state >= 0 && r->state != f->rcpt_state &&
		    !(f->rcpt_state == QUEUE_RCPT_DEFERRED &&
		      ctl_rcpt_wait(rt, m, r, NULL) == CTL_W_PAUSED))
			continue;
		if (f->to && strcasecmp(ctl_domain(r->addr ? r->addr : ""),
		                        f->to) != 0)
			continue;
		return true;
	}
	return false;
}

struct ctl_list {
	struct ctl_out *o;
	const struct ctl_ctx *c;
	const struct ctl_route *rt;
	struct ctl_filter f;
	uint64_t total;         /* messages in the queue */
	uint64_t count;         /* messages listed */
	uint64_t bytes;
	int err;
};

static void ctl_list_row(struct ctl_out *o, const struct queue_msg *m,
                         int64_t now)
{
	char age[32];
	ctl_fmt_age(age, sizeof age, now - m->arrival);
	ctl_out_printf(o, "%-16s %5s %10" PRIu64 " %-8s <", m->qid, age,
	               m->size, ctl_msg_state(m->state));
	const char *s = m->sender ? m->sender : "";
	size_t cols = 2 + ctl_out_text(o, s, strlen(s), 0);
	ctl_out_str(o, ">");
	ctl_out_spaces(o, cols < CTL_COL_SENDER ? CTL_COL_SENDER - cols + 1 : 1);
	if (m->nrcpt == 0) {
		ctl_out_str(o, "-\n");
		return;
	}
	const char *a = m->rcpt[0].addr ? m->rcpt[0].addr : "";
	ctl_out_str(o, "<");
	ctl_out_text(o, a, strlen(a), 0);
	ctl_out_str(o, ">");
	if (m->nrcpt > 1)
		ctl_out_printf(o, " (+%zu more)", m->nrcpt - 1);
	ctl_out_str(o, "\n");
}

/* Under the message's line, one per recipient not yet delivered, as in
 * Postfix's queue listing but on one line each, with where it goes once
 * it has been tried (dest=, mx=) and why it waits:
 *   "  deferred   3 tries  next in 4m   <b@example.org> dest=smarthost:
 *    mail.example.net:587 mx=mail.example.net (451 4.7.1 ...)"
 *   "  pending    0 tries  paused 4m    <c@example.org> (destination
 *    smarthost:mail.example.net:587 paused until T (in 4m): REASON)" */
static void ctl_list_rcpts(struct ctl_out *o, const struct queue_msg *m,
                           int64_t now, const struct ctl_route *rt)
{
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		char next[48], age[32];
		const struct ctl_rdest *pd;
		enum ctl_wait w = ctl_rcpt_wait(rt, m, r, &pd);
		if (r->state == QUEUE_RCPT_SENT)
			continue;
		if (r->state != QUEUE_RCPT_PENDING && r->state != QUEUE_RCPT_DEFERRED) {
			snprintf(next, sizeof next, "-");
		} else if (m->state == QUEUE_MSG_HOLD) {
			snprintf(next, sizeof next, "on hold");
		} else if (w == CTL_W_PAUSED) {
			ctl_fmt_age(age, sizeof age, pd->until - now);
			snprintf(next, sizeof next, pd->until > now ? "paused %s" :
			         "paused", age);
		} else {
			/* queue_msg_due(): no next attempt yet means at arrival. */
			int64_t t = r->next_attempt ? r->next_attempt : m->arrival;
			ctl_fmt_age(age, sizeof age, t - now);
			snprintf(next, sizeof next, t <= now ? "next now" : "next in %s",
			         age);
		}
		ctl_out_printf(o, "  %-8s %3" PRIu32 " %-5s  %-11s <",
		               ctl_rcpt_state(r->state), r->attempts,
		               r->attempts == 1 ? "try" : "tries", next);
		const char *a = r->addr ? r->addr : "";
		ctl_out_text(o, a, strlen(a), 0);
		ctl_out_str(o, ">");
		if (r->dest) {
			ctl_out_str(o, " dest=");
			ctl_out_text(o, r->dest, strlen(r->dest), 0);
		}
		if (r->mx) {
			ctl_out_str(o, " mx=");
			ctl_out_text(o, r->mx, strlen(r->mx), 0);
		}
		if (w == CTL_W_PAUSED || w == CTL_W_THROTTLED) {
			ctl_out_str(o, " (");
			ctl_paused_text(o, pd, now, CTL_REPLY_CHARS);
			ctl_out_str(o, ")");
		} else if (r->last_reply) {
			ctl_out_str(o, " (");
			ctl_out_text_max(o, r->last_reply, strlen(r->last_reply),
			                 CTL_REPLY_CHARS);
			ctl_out_str(o, ")");
		}
		ctl_out_str(o, "\n");
	}
}

static int ctl_list_cb(void *arg, const struct queue_msg *m)
{
	struct ctl_list *l = arg;
	l->total++;
	if (!ctl_filter_match(&l->f, m, l->c->now, l->rt))
		return 0;
	if (l->c->json) {
		if (l->count > 0)
			ctl_out_str(l->o, ",\n");
		ctl_json_msg(l->o, m, l->c->now, l->rt);
		ctl_out_str(l->o, "}");
	} else {
		if (l->count == 0)
			ctl_out_printf(l->o, "%-16s %5s %10s %-8s %-*s %s\n",
			               "ID", "AGE", "SIZE", "STATE",
			               CTL_COL_SENDER, "SENDER", "RECIPIENTS");
		ctl_list_row(l->o, m, l->c->now);
		ctl_list_rcpts(l->o, m, l->c->now, l->rt);
	}
	l->count++;
	l->bytes += m->size;
	if (l->o->err) {
		l->err = l->o->err;
		return 1;
	}
	if (l->o->b.len >= CTL_LIST_SPILL) {
		int r = ctl_out_flush(l->o, stdout);
		if (r < 0) {
			l->err = r;
			return 1;
		}
	}
	return 0;
}

/* "delivery paused until TIME (in 4m): REASON" when a running relayd says
 * so in its stats (route.state "paused"); "relayd is not running" when
 * delivery goes through a smarthost (whose pauses only a running relayd
 * knows) and none answers. Silent otherwise. */
static void ctl_list_banner(const struct ctl_ctx *c, struct ctl_out *o,
                            const struct ctl_route *rt)
{
	if (rt->asked == CTL_RT_STOPPED && rt->smarthost) {
		ctl_out_str(o, "relayd is not running: next attempts are as "
		            "recorded (a destination's pause lives in its memory)\n");
		return;
	}
	if (rt->asked != CTL_RT_ANSWERED || !rt->paused)
		return;
	ctl_out_str(o, "delivery paused");
	if (rt->until > 0) {
		char ts[64], age[32];
		ctl_fmt_time(ts, sizeof ts, rt->until);
		ctl_fmt_age(age, sizeof age, rt->until - c->now);
		ctl_out_printf(o, " until %s (in %s)", ts, age);
	}
	if (rt->reason.len) {
		ctl_out_str(o, ": ");
		ctl_out_text_max(o, rt->reason.data, rt->reason.len,
		                 2 * CTL_REPLY_CHARS);
	}
	ctl_out_str(o, "\n");
}

/* Whether list/show ask the running relayd: the text listing always (its
 * banner), anything else when delivery goes through a smarthost or
 * direct, the modes with destinations that pause. */
static bool ctl_ask_route(const struct ctl_ctx *c, bool banner)
{
	return banner || (c->conf_loaded &&
	                  (c->conf.delivery == CONF_DELIVERY_SMARTHOST ||
	                   c->conf.delivery == CONF_DELIVERY_DIRECT));
}

int ctl_cmd_list(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	struct queue_ro *ro;
	struct ctl_route rt = {.reason = BUF_INIT(1)};
	struct ctl_list l = {.c = c, .rt = &rt};
	int r = ctl_filter_parse(c, &l.f);
	if (r != 0)
		return r;
	if ((r = ctl_ro_open(c->conf.spool_dir, &ro)) < 0)
		return r;

	struct ctl_out o;
	ctl_out_init(&o);
	l.o = &o;
	/* Before the index is read: no read transaction waits on relayd. */
	if (ctl_ask_route(c, !c->json))
		ctl_route_get(c, &rt);
	if (c->json)
		ctl_out_str(&o, "{\"messages\":[\n");
	else
		ctl_list_banner(c, &o, &rt);
	r = queue_ro_foreach(ro, ctl_list_cb, &l);
	queue_ro_close(ro);
	if (l.err) {
		ctl_err("writing the listing: %s", strerror(-l.err));
		r = l.err;
		goto out;
	}
	if (r < 0) {
		ctl_err("reading the queue index in %s: %s", c->conf.spool_dir,
		        strerror(-r));
		goto out;
	}

	if (c->json) {
		ctl_out_printf(&o, "%s],\"count\":%" PRIu64
		               ",\"total_size\":%" PRIu64,
		               l.count ? "\n" : "", l.count, l.bytes);
		if (rt.asked != CTL_RT_NOT_ASKED) {
			ctl_out_str(&o, ",");
			ctl_json_route(&o, &rt);
		}
		ctl_out_str(&o, "}\n");
	}
	else if (l.total == 0)
		ctl_out_str(&o, "Mail queue is empty\n");
	else if (l.count == 0)
		ctl_out_printf(&o, "No message matches (%" PRIu64 " in the "
		               "queue)\n", l.total);
	else
		ctl_out_printf(&o, "%" PRIu64 " message%s, %" PRIu64 " KiB%s",
		               l.count, l.count == 1 ? "" : "s",
		               (l.bytes + 1023) / 1024, l.f.any ? "" : "\n");
	if (!c->json && l.count > 0 && l.f.any)
		ctl_out_printf(&o, " (of %" PRIu64 " in the queue)\n", l.total);
	r = ctl_out_flush(&o, stdout);
	if (r < 0)
		ctl_err("writing the listing: %s", strerror(-r));
out:
	ctl_out_free(&o);
	ctl_route_free(&rt);
	return r;
}

/* ---- show ------------------------------------------------------------ */

/* Opens a body file: never through a symbolic link (relayd makes none;
 * one planted in msg/ must not lead relayctl elsewhere), and only a
 * regular file (O_NONBLOCK: a FIFO planted there cannot block the open).
 * Returns the descriptor, -ELOOP for a link, -EINVAL for another kind of
 * file, or -errno. */
static int ctl_body_open(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
	              O_NOCTTY);
	if (fd < 0)
		return -errno;
	struct stat st;
	int r = fstat(fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
	if (r == 0 && fcntl(fd, F_SETFL, 0) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* Reads the header section of the stored message at path: the bytes up to
 * the first empty line (CRLF or, leniently, LF), at most CTL_HDR_MAX of
 * them, cut at a line end when longer. dst holds CTL_HDR_MAX bytes. */
static int ctl_read_headers(const char *path, char *dst, size_t *len,
                            bool *truncated)
{
	int fd = ctl_body_open(path);
	if (fd < 0)
		return fd;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	size_t n = 0;
	while (n < CTL_HDR_MAX) {
		ssize_t k = read(fd, dst + n, CTL_HDR_MAX - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);

	*truncated = false;
	if (n >= 1 && (dst[0] == '\n' || (n >= 2 && dst[0] == '\r' &&
	                                  dst[1] == '\n'))) {
		*len = 0;       /* no header section at all */
		return 0;
	}
	for (const char *p = dst, *end = dst + n;
	     (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) {
		if ((p + 1 < end && p[1] == '\n') ||
		    (p + 2 < end && p[1] == '\r' && p[2] == '\n')) {
			*len = (size_t)(p + 1 - dst);
			return 0;
		}
	}
	if (n == CTL_HDR_MAX && (uint64_t)st.st_size > n) {
		*truncated = true;
		const char *nl = memrchr(dst, '\n', n);
		*len = nl ? (size_t)(nl + 1 - dst) : n;
		return 0;
	}
	*len = n;               /* headers only, no body */
	return 0;
}

static void ctl_show_time(struct ctl_out *o, int64_t t, int64_t now)
{
	char ts[64], age[32];
	ctl_fmt_time(ts, sizeof ts, t);
	if (t <= now) {
		ctl_fmt_age(age, sizeof age, now - t);
		ctl_out_printf(o, "%s (%s ago)\n", ts, age);
	} else {
		ctl_fmt_age(age, sizeof age, t - now);
		ctl_out_printf(o, "%s (in %s)\n", ts, age);
	}
}

static void ctl_show_field(struct ctl_out *o, const char *label,
                           const char *s)
{
	ctl_out_str(o, label);
	if (s)
		ctl_out_text(o, s, strlen(s), 0);
	else
		ctl_out_str(o, "-");
	ctl_out_str(o, "\n");
}

static void ctl_show_text(struct ctl_out *o, const struct queue_msg *m,
                          int64_t now, const struct ctl_route *rt)
{
	const char *s;
	char ts[64], age[32];
	ctl_out_printf(o, "id:           %s\n", m->qid);
	/* To the millisecond: the delivery log's delay= counts from it. */
	ctl_fmt_time(ts, sizeof ts, m->arrival);
	ctl_fmt_age(age, sizeof age, now - m->arrival);
	ctl_out_printf(o, "arrival:      %.*s.%03uZ (%s ago)\n",
	               (int)(strlen(ts) > 0 ? strlen(ts) - 1 : 0), ts,
	               (unsigned)m->arrival_ms % 1000, age);
	if (rt->asked == CTL_RT_STOPPED && rt->smarthost)
		ctl_out_str(o, "relayd:       not running (next attempts are as "
		            "recorded; a destination's pause lives in its memory)\n");
	ctl_out_printf(o, "size:         %" PRIu64 " bytes\n", m->size);
	ctl_out_printf(o, "state:        %s\n", ctl_msg_state(m->state));
	s = m->sender ? m->sender : "";
	ctl_out_str(o, "sender:       <");
	ctl_out_text(o, s, strlen(s), 0);
	ctl_out_str(o, ">\nflags:       ");
	bool any = false;
	if (m->flags & QUEUE_F_SMTPUTF8) {
		ctl_out_str(o, " SMTPUTF8");
		any = true;
	}
	if ((s = ctl_body_type(m->flags))) {
		ctl_out_printf(o, " BODY=%s", s);
		any = true;
	}
	if ((s = ctl_ret(m->flags))) {
		ctl_out_printf(o, " RET=%s", s);
		any = true;
	}
	if (m->envid) {
		ctl_out_str(o, " ENVID=");
		ctl_out_text(o, m->envid, strlen(m->envid), 0);
		any = true;
	}
	ctl_out_str(o, any ? "\n" : " -\n");
	ctl_out_printf(o, "recipients:   %zu\n", m->nrcpt);

	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *rc = &m->rcpt[i];
		s = rc->addr ? rc->addr : "";
		ctl_out_str(o, "\nrecipient:    <");
		ctl_out_text(o, s, strlen(s), 0);
		ctl_out_printf(o, ">\n  state:        %s\n"
		               "  attempts:     %" PRIu32 "\n"
		               "  next attempt: ",
		               ctl_rcpt_state(rc->state), rc->attempts);
		if (rc->next_attempt)
			ctl_show_time(o, rc->next_attempt, now);
		else
			ctl_out_str(o, "-\n");
		ctl_show_field(o, "  orcpt:        ", rc->orcpt);
		ctl_out_str(o, "  notify:       ");
		if (rc->notify) {
			bool first = true;
			for (size_t k = 0; k < CTL_NNOTIFY; k++) {
				if (!(rc->notify & ctl_notify_names[k].bit))
					continue;
				if (!first)
					ctl_out_str(o, ",");
				ctl_out_str(o, ctl_notify_names[k].name);
				first = false;
			}
			ctl_out_str(o, "\n");
		} else {
			ctl_out_str(o, "-\n");
		}
		ctl_show_field(o, "  last reply:   ", rc->last_reply);
		ctl_show_field(o, "  destination:  ", ctl_rcpt_dest(rt, rc));
		ctl_show_field(o, "  mx:           ", rc->mx);
		ctl_out_str(o, "  last try:     ");
		if (rc->last_try)
			ctl_show_time(o, rc->last_try, now);
		else
			ctl_out_str(o, "-\n");
		/* Why it waits, in words. */
		const struct ctl_rdest *pd;
		enum ctl_wait w = ctl_rcpt_wait(rt, m, rc, &pd);
		if (w == CTL_W_NONE)
			continue;
		ctl_out_str(o, "  waiting:      ");
		if (w == CTL_W_HOLD) {
			ctl_out_str(o, "the message is on hold\n");
		} else if (w == CTL_W_PAUSED || w == CTL_W_THROTTLED) {
			ctl_paused_text(o, pd, now, 4 * CTL_REPLY_CHARS);
			ctl_out_str(o, "\n");
		} else {
			int64_t t = rc->next_attempt ? rc->next_attempt : m->arrival;
			ctl_out_str(o, w == CTL_W_DEFERRED ? "deferred, " :
			            "not tried yet, ");
			if (t <= now) {
				ctl_out_str(o, "due now\n");
			} else {
				ctl_out_str(o, "next attempt ");
				ctl_show_time(o, t, now);
			}
		}
	}
}

/* The header section as text lines: CRLF becomes a newline, tabs stay,
 * other controls are escaped. */
static void ctl_show_headers(struct ctl_out *o, const char *p, size_t n)
{
	while (n > 0) {
		const char *nl = memchr(p, '\n', n);
		size_t line = nl ? (size_t)(nl - p) : n;
		size_t next = nl ? line + 1 : n;
		if (line > 0 && p[line - 1] == '\r')
			line--;
		ctl_out_text(o, p, line, CTL_TEXT_TAB);
		ctl_out_str(o, "\n");
		p += next;
		n -= next;
	}
}

int ctl_cmd_show(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	char qid[QUEUE_ID_SIZE];
	int r = ctl_qid_arg(argv[0], qid);
	if (r < 0)
		return r;

	const char *spool = c->conf.spool_dir;
	struct queue_ro *ro;
	struct queue_msg *m = NULL;
	struct ctl_route rt = {.reason = BUF_INIT(1)};
	if ((r = ctl_ro_open(spool, &ro)) < 0)
		return r;
	/* Before the index is read: no read transaction waits on relayd. */
	if (ctl_ask_route(c, false))
		ctl_route_get(c, &rt);
	r = queue_ro_get(ro, qid, &m);
	queue_ro_close(ro);
	if (r == -ENOENT) {
		ctl_err("no message with id %s", qid);
		ctl_route_free(&rt);
		return r;
	}
	if (r < 0) {
		ctl_err("%s: reading the queue index in %s: %s", qid, spool,
		        strerror(-r));
		ctl_route_free(&rt);
		return r;
	}

	/* The body: the message may have left the queue since the index
	 * read; the envelope is still shown, with an error. */
	char path[PATH_MAX];
	char *hdr = malloc(CTL_HDR_MAX);
	size_t hlen = 0;
	bool trunc = false;
	int hr = hdr ? queue_body_path(spool, qid, path, sizeof path) : -ENOMEM;
	if (hr >= 0)
		hr = ctl_read_headers(path, hdr, &hlen, &trunc);

	struct ctl_out o;
	ctl_out_init(&o);
	if (c->json) {
		ctl_json_msg(&o, m, c->now, &rt);
		if (rt.asked != CTL_RT_NOT_ASKED) {
			ctl_out_str(&o, ",");
			ctl_json_route(&o, &rt);
		}
		ctl_out_str(&o, ",\"headers\":");
		if (hr < 0)
			ctl_out_str(&o, "null");
		else
			ctl_out_json_str(&o, hdr, hlen);
		ctl_out_printf(&o, ",\"headers_truncated\":%s}\n",
		               trunc ? "true" : "false");
	} else {
		ctl_show_text(&o, m, c->now, &rt);
		if (hr >= 0) {
			ctl_out_str(&o, "\nheaders:\n");
			if (hlen == 0)
				ctl_out_str(&o, "(none)\n");
			ctl_show_headers(&o, hdr, hlen);
			if (trunc)
				ctl_out_printf(&o, "[header section truncated "
				               "at %d KiB]\n", CTL_HDR_MAX / 1024);
		}
	}
	r = ctl_out_flush(&o, stdout);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	ctl_out_free(&o);
	free(hdr);
	queue_msg_free(m);
	ctl_route_free(&rt);

	if (hr == -ENOENT) {
		ctl_err("%s: the message left the queue (no %s)", qid, path);
		return hr;
	}
	if (hr == -ELOOP || hr == -EINVAL) {
		ctl_err("%s: %s is %s, which relayd never makes; not reading it",
		        qid, path, hr == -ELOOP ? "a symbolic link"
		                                : "not a regular file");
		return hr;
	}
	if (hr < 0) {
		ctl_err("%s: reading the headers: %s", qid, strerror(-hr));
		return hr;
	}
	return r;
}

/* ---- cat ------------------------------------------------------------- */

/* Waits until a non-blocking stdout can take more. */
static int ctl_wait_writable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

static int ctl_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			int r = ctl_wait_writable(fd);
			if (r < 0)
				return r;
			continue;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Copies in to out from in's current offset to its end: sendfile(2) (no
 * copy through user space), or read/write where the kernel cannot
 * sendfile to out (e.g. O_APPEND). Never holds more than a buffer. */
static int ctl_copy_fd(int in, int out)
{
	for (;;) {
		ssize_t k = sendfile(out, in, NULL, (size_t)1 << 30);
		if (k > 0)
			continue;
		if (k == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			int r = ctl_wait_writable(out);
			if (r < 0)
				return r;
			continue;
		}
		if (errno == EINVAL || errno == ENOSYS)
			break;
		return -errno;
	}

	char *b = malloc(CTL_COPY_BUF);
	if (!b)
		return -ENOMEM;
	int r = 0;
	for (;;) {
		ssize_t k = read(in, b, CTL_COPY_BUF);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			break;
		}
		if (k == 0)
			break;
		if ((r = ctl_write_all(out, b, (size_t)k)) < 0)
			break;
	}
	free(b);
	return r;
}

/* cat to a terminal: the bytes made safe to show (ctl_out_text_lines),
 * a buffer at a time; a character cut by a read waits for the next. */
static int ctl_copy_escaped(int in, FILE *out)
{
	unsigned char *b = malloc(CTL_COPY_BUF);
	if (!b)
		return -ENOMEM;
	struct ctl_out o;
	ctl_out_init(&o);
	size_t have = 0;
	int r = 0;
	for (;;) {
		ssize_t k = read(in, b + have, CTL_COPY_BUF - have);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			break;
		}
		have += (size_t)k;
		size_t used = ctl_out_text_lines(&o, b, have, k > 0);
		memmove(b, b + used, have - used);
		have -= used;
		if ((r = ctl_out_flush(&o, out)) < 0 || k == 0)
			break;
	}
	ctl_out_free(&o);
	free(b);
	return r;
}

int ctl_cmd_cat(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	char qid[QUEUE_ID_SIZE];
	int r = ctl_qid_arg(argv[0], qid);
	if (r < 0)
		return r;

	/* The body file is the message; the index is not needed, so cat also
	 * works on a spool whose index cannot be opened. */
	const char *spool = c->conf.spool_dir;
	char path[PATH_MAX];
	if ((r = queue_body_path(spool, qid, path, sizeof path)) < 0) {
		ctl_err("%s: %s", qid, strerror(-r));
		return r;
	}
	int fd = ctl_body_open(path);
	if (fd < 0) {
		r = fd;
		struct stat st;
		if (r == -ENOENT && stat(spool, &st) < 0 && errno == ENOENT)
			ctl_err("no spool at %s (is spool_dir right? relayd "
			        "creates it at first start)", spool);
		else if (r == -ENOENT)
			ctl_err("no message with id %s", qid);
		else if (r == -ELOOP)
			ctl_err("%s is a symbolic link, which relayd never makes; "
			        "not following it", path);
		else if (r == -EINVAL)
			ctl_err("%s is not a regular file, which relayd never makes; "
			        "not reading it", path);
		else
			ctl_err("%s: %s", path, strerror(-r));
		return r;
	}
	/* A terminal acts on escape sequences in what it shows: there the
	 * message is shown escaped unless --raw asks for the bytes. */
	if (!ctl_opt(c, "--raw") && isatty(STDOUT_FILENO))
		r = ctl_copy_escaped(fd, stdout);
	else
		r = ctl_copy_fd(fd, STDOUT_FILENO);
	close(fd);
	if (r < 0)
		ctl_err("%s: copying to stdout: %s", qid, strerror(-r));
	return r;
}
