/*
 * tools/ctl_status.c - `relayctl status [--json]`: one screen on relayd.
 * From the running daemon (control socket: "stats", "destinations"): up
 * since, pid, the route, destinations paused or throttled and why,
 * sent/deferred/bounced since start. From the queue index (read-only,
 * safe beside the daemon, and all there is when it is stopped): counts by
 * state, the oldest message, the most common deferral replies (a bounded
 * table), and the statistics history (ctl_stats.c): last hour and last
 * 24 h sent, deferred, bounced, rejected, plus what the running daemon
 * has counted and not yet written (its "stats" reply's "unflushed").
 * From the configuration: version, listeners, delivery mode.
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/version.h"
#include "deliver/deliver_ctl.h"
#include "queue/queue.h"
#include "queue/queue_stats.h"

/* Deferral reasons kept: distinct texts (cut to STATUS_REASON_CHARS),
 * the rest counted as "other"; STATUS_REASONS_SHOWN printed. */
#define STATUS_REASONS_MAX 32
#define STATUS_REASON_CHARS 120
#define STATUS_REASONS_SHOWN 5
/* Destinations listed (paused or throttled ones only). */
#define STATUS_DESTS_MAX 20

struct status_reason {
	char text[STATUS_REASON_CHARS + 1];
	uint64_t n;
};

struct status_scan {
	uint64_t messages;
	uint64_t msg_state[QUEUE_MSG_HOLD + 1];
	uint64_t rcpt_state[QUEUE_RCPT_BOUNCED + 1];
	int64_t oldest;            /* arrival; -1: empty */
	struct status_reason reasons[STATUS_REASONS_MAX];
	size_t nreasons;
	uint64_t other_reasons;
};

static void add_reason(struct status_scan *s, const char *text)
{
	char t[STATUS_REASON_CHARS + 1];
	snprintf(t, sizeof t, "%s", text && *text ? text : "(no reply)");
	for (size_t i = 0; i < s->nreasons; i++)
		if (strcmp(s->reasons[i].text, t) == 0) {
			s->reasons[i].n++;
			return;
		}
	if (s->nreasons == STATUS_REASONS_MAX) {
		s->other_reasons++;
		return;
	}
	memcpy(s->reasons[s->nreasons].text, t, sizeof t);
	s->reasons[s->nreasons++].n = 1;
}

static int scan_cb(void *arg, const struct queue_msg *m)
{
	struct status_scan *s = arg;
	s->messages++;
	if (m->state <= QUEUE_MSG_HOLD)
		s->msg_state[m->state]++;
	if (s->oldest < 0 || m->arrival < s->oldest)
		s->oldest = m->arrival;
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (r->state <= QUEUE_RCPT_BOUNCED)
			s->rcpt_state[r->state]++;
		if (r->state == QUEUE_RCPT_DEFERRED)
			add_reason(s, r->last_reply);
	}
	return 0;
}

static int reason_cmp(const void *a, const void *b)
{
	const struct status_reason *x = a, *y = b;
	return x->n < y->n ? 1 : x->n > y->n ? -1 : strcmp(x->text, y->text);
}

/* Paused or throttled destinations from the "destinations" reply. */
struct status_dest {
	char name[300], state[16], reason[STATUS_REASON_CHARS + 1];
	int64_t until;
};

struct status_dests {
	struct status_dest d[STATUS_DESTS_MAX];
	size_t n, more;
};

static int dest_cb(void *arg, const char *v, size_t vn)
{
	struct status_dests *t = arg;
	struct buf name = BUF_INIT(4096), st = BUF_INIT(64),
	           why = BUF_INIT(DELIVER_CTL_REPLY_MAX);
	int64_t until = 0;
	int r = ctl_json_get_str(v, vn, "name", &name);
	if (r == 0)
		r = ctl_json_get_str(v, vn, "state", &st);
	if (r == 0 && ctl_json_get_int(v, vn, "until", &until) < 0)
		until = 0;
	if (r == 0 && ctl_json_get_str(v, vn, "reason", &why) < 0)
		buf_reset(&why);
	if (r == 0) {
		buf_append(&name, "", 1);
		buf_append(&st, "", 1);
		buf_append(&why, "", 1);
		const char *s = (const char *)st.data;
		if (strcmp(s, "paused") == 0 || strcmp(s, "throttled") == 0) {
			if (t->n == STATUS_DESTS_MAX) {
				t->more++;
			} else {
				struct status_dest *d = &t->d[t->n++];
				snprintf(d->name, sizeof d->name, "%s",
				         (const char *)name.data);
				snprintf(d->state, sizeof d->state, "%s", s);
				snprintf(d->reason, sizeof d->reason, "%s",
				         (const char *)why.data);
				d->until = until;
			}
		}
	}
	buf_free(&name);
	buf_free(&st);
	buf_free(&why);
	return r < 0 ? -EPROTO : 0;
}

static void status_err_request(const char *spool, int r, const char *reply)
{
	char esc[1024];
	if (r == -EREMOTEIO)
		ctl_err("%s", log_escape(esc, sizeof esc, reply[0] ? reply :
		        "relayd refused the request", strlen(reply[0] ? reply :
		        "relayd refused the request")));
	else
		ctl_err_request(spool, r);
}

static const char *mode_name(enum conf_delivery m)
{
	return m == CONF_DELIVERY_SMARTHOST ? "smarthost" :
	       m == CONF_DELIVERY_DIRECT ? "direct" : "hold";
}

int ctl_cmd_status(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	const char *spool = c->conf.spool_dir;
	struct status_scan sc;
	memset(&sc, 0, sizeof sc);
	sc.oldest = -1;
	struct queue_ro *ro;
	struct ctl_stats_window w1, w24;
	memset(&w1, 0, sizeof w1);
	memset(&w24, 0, sizeof w24);
	int r = queue_ro_open(spool, &ro);
	bool have_queue = r == 0;
	if (r == 0) {
		r = queue_ro_foreach(ro, scan_cb, &sc);
		if (r == 0)
			r = ctl_stats_windows(c, ro, &w1, &w24);
		queue_ro_close(ro);
		if (r < 0) {
			ctl_err("reading the queue index in %s: %s", spool,
			        strerror(-r));
			return r;
		}
	} else if (r != -ENOENT) {
		ctl_err("cannot open the queue index in %s: %s", spool,
		        strerror(-r));
		return r;
	}
	qsort(sc.reasons, sc.nreasons, sizeof *sc.reasons, reason_cmp);

	/* The daemon, if it runs. */
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	char *dreply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply || !dreply) {
		free(reply);
		free(dreply);
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	bool running = false;
	int64_t pid = 0, uptime = 0, sent = 0, deferred = 0, bounced = 0;
	struct buf route = BUF_INIT(64), delivery = BUF_INIT(64);
	struct status_dests *dests = calloc(1, sizeof *dests);
	r = dests ? ctl_control_request(spool, "stats", CTL_CONTROL_TIMEOUT_MS,
	                                reply, DELIVER_CTL_REPLY_MAX) : -ENOMEM;
	if (r == 0) {
		size_t n = strlen(reply);
		running = true;
		if (ctl_json_get_int(reply, n, "pid", &pid) < 0 ||
		    ctl_json_get_int(reply, n, "uptime", &uptime) < 0 ||
		    ctl_json_get_int(reply, n, "sent", &sent) < 0 ||
		    ctl_json_get_int(reply, n, "deferred", &deferred) < 0 ||
		    ctl_json_get_int(reply, n, "bounced", &bounced) < 0 ||
		    ctl_json_get_str(reply, n, "delivery", &delivery) < 0) {
			ctl_err("relayd sent a malformed stats reply on %s/%s", spool,
			        QUEUE_CONTROL_NAME);
			r = -EPROTO;
		} else if (ctl_json_get_str(reply, n, "route.state", &route) < 0) {
			buf_reset(&route);
		}
		/* Counted by the daemon, not yet in the buckets read above
		 * (absent from an older relayd's reply). */
		int64_t uh = -1, ua = 0, ur = 0, us = 0, ud = 0, ub = 0;
		if (r == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.hour", &uh) == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.accepted", &ua) == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.rejected", &ur) == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.sent", &us) == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.deferred", &ud) == 0 &&
		    ctl_json_get_int(reply, n, "unflushed.bounced", &ub) == 0 &&
		    uh >= 0 && ua >= 0 && ur >= 0 && us >= 0 && ud >= 0 &&
		    ub >= 0) {
			struct ctl_stats_window *ws[2] = {&w1, &w24};
			w1.since = queue_stats_hour(c->now) - 3600;
			w24.since = queue_stats_hour(c->now) - 24 * 3600;
			for (int k = 0; k < 2; k++)
				if (uh >= ws[k]->since) {
					ws[k]->accepted += (uint64_t)ua;
					ws[k]->rejected += (uint64_t)ur;
					ws[k]->sent += (uint64_t)us;
					ws[k]->deferred += (uint64_t)ud;
					ws[k]->bounced += (uint64_t)ub;
				}
		}
		if (r == 0)
			r = ctl_control_request(spool, "destinations",
			                        CTL_CONTROL_TIMEOUT_MS, dreply,
			                        DELIVER_CTL_REPLY_MAX);
		if (r == 0) {
			r = ctl_json_each(dreply, strlen(dreply), "destinations",
			                  dest_cb, dests);
			if (r < 0)
				ctl_err("relayd sent a malformed destinations reply on "
				        "%s/%s", spool, QUEUE_CONTROL_NAME);
		} else if (r != -EPROTO) {
			status_err_request(spool, r, dreply);
		}
	} else if (r == -ECONNREFUSED) {
		r = 0;   /* stopped: the index and the configuration say the rest */
	} else if (r != -ENOMEM) {
		status_err_request(spool, r, reply);
	}
	free(reply);
	free(dreply);
	if (r < 0) {
		buf_free(&route);
		buf_free(&delivery);
		free(dests);
		return r;
	}
	buf_append(&route, "", 1);
	buf_append(&delivery, "", 1);
	const char *mode = running ? (const char *)delivery.data
	                           : mode_name(c->conf.delivery);
	int64_t oldest_age = sc.oldest >= 0 && c->now > sc.oldest
	                     ? c->now - sc.oldest : 0;

	struct ctl_out o;
	ctl_out_init(&o);
	if (c->json) {
		ctl_out_str(&o, "{\"version\":");
		ctl_out_json_strz(&o, RELAY_VERSION);
		ctl_out_printf(&o, ",\"running\":%s", running ? "true" : "false");
		if (running)
			ctl_out_printf(&o, ",\"pid\":%" PRId64 ",\"up_since\":%" PRId64
			               ",\"uptime\":%" PRId64, pid, c->now - uptime,
			               uptime);
		ctl_out_str(&o, ",\"listeners\":[");
		for (size_t i = 0; i < c->conf.nlisten; i++) {
			const struct conf_listen *l = &c->conf.listen[i];
			char s[128];
			snprintf(s, sizeof s, l->ipv6 ? "[%s]:%u/%s" : "%s:%u/%s",
			         l->host, l->port, conf_listen_mode_names[l->mode]);
			if (i)
				ctl_out_str(&o, ",");
			ctl_out_json_strz(&o, s);
		}
		ctl_out_str(&o, "],\"delivery\":");
		ctl_out_json_strz(&o, mode);
		if (running && route.len > 1) {
			ctl_out_str(&o, ",\"route\":");
			ctl_out_json_strz(&o, (const char *)route.data);
		}
		ctl_out_printf(&o, ",\"queue\":{\"messages\":%" PRIu64
		               ",\"active\":%" PRIu64 ",\"hold\":%" PRIu64
		               ",\"recipients\":{", sc.messages,
		               sc.msg_state[QUEUE_MSG_ACTIVE],
		               sc.msg_state[QUEUE_MSG_HOLD]);
		for (size_t i = 0; i <= QUEUE_RCPT_BOUNCED; i++)
			ctl_out_printf(&o, "%s\"%s\":%" PRIu64, i ? "," : "",
			               queue_rcpt_state_names[i], sc.rcpt_state[i]);
		ctl_out_printf(&o, "},\"oldest_age\":%" PRId64 "}", oldest_age);
		if (running)
			ctl_out_printf(&o, ",\"since_start\":{\"sent\":%" PRId64
			               ",\"deferred\":%" PRId64 ",\"bounced\":%" PRId64
			               "}", sent, deferred, bounced);
		if (have_queue) {
			const struct ctl_stats_window *ws[2] = {&w1, &w24};
			for (int k = 0; k < 2; k++)
				ctl_out_printf(&o, ",\"%s\":{\"since\":%" PRId64
				               ",\"accepted\":%" PRIu64 ",\"sent\":%"
				               PRIu64 ",\"deferred\":%" PRIu64
				               ",\"bounced\":%" PRIu64 ",\"rejected\":%"
				               PRIu64 "}", k ? "last_24h" : "last_hour",
				               ws[k]->since, ws[k]->accepted, ws[k]->sent,
				               ws[k]->deferred, ws[k]->bounced,
				               ws[k]->rejected);
		}
		ctl_out_str(&o, ",\"destinations\":[");
		for (size_t i = 0; i < dests->n; i++) {
			const struct status_dest *d = &dests->d[i];
			ctl_out_str(&o, i ? ",{\"name\":" : "{\"name\":");
			ctl_out_json_strz(&o, d->name);
			ctl_out_str(&o, ",\"state\":");
			ctl_out_json_strz(&o, d->state);
			ctl_out_printf(&o, ",\"until\":%" PRId64 ",\"reason\":",
			               d->until);
			ctl_out_json_strz(&o, d->reason);
			ctl_out_str(&o, "}");
		}
		ctl_out_str(&o, "],\"deferral_reasons\":[");
		for (size_t i = 0; i < sc.nreasons && i < STATUS_REASONS_SHOWN;
		     i++) {
			ctl_out_str(&o, i ? ",{\"reason\":" : "{\"reason\":");
			ctl_out_json_strz(&o, sc.reasons[i].text);
			ctl_out_printf(&o, ",\"count\":%" PRIu64 "}", sc.reasons[i].n);
		}
		ctl_out_str(&o, "]}\n");
	} else {
		char ts[64], age[32];
		if (running) {
			ctl_fmt_time(ts, sizeof ts, c->now - uptime);
			ctl_fmt_age(age, sizeof age, uptime);
			ctl_out_printf(&o, "relayd %s: running (pid %" PRId64 "), up "
			               "since %s (%s)\n", RELAY_VERSION, pid, ts, age);
		} else {
			ctl_out_printf(&o, "relayd %s: not running\n", RELAY_VERSION);
		}
		ctl_out_str(&o, "listeners:    ");
		for (size_t i = 0; i < c->conf.nlisten; i++) {
			const struct conf_listen *l = &c->conf.listen[i];
			ctl_out_printf(&o, l->ipv6 ? "%s[%s]:%u/%s" : "%s%s:%u/%s",
			               i ? ", " : "", l->host, l->port,
			               conf_listen_mode_names[l->mode]);
		}
		ctl_out_printf(&o, "\ndelivery:     %s", mode);
		if (running && route.len > 1)
			ctl_out_printf(&o, " (route %s)", (const char *)route.data);
		ctl_out_str(&o, "\n");
		if (!have_queue)
			ctl_out_printf(&o, "queue:        no spool at %s yet\n", spool);
		else
			ctl_out_printf(&o, "queue:        %" PRIu64 " messages (%" PRIu64
			               " active, %" PRIu64 " held); recipients %" PRIu64
			               " pending, %" PRIu64 " deferred\n", sc.messages,
			               sc.msg_state[QUEUE_MSG_ACTIVE],
			               sc.msg_state[QUEUE_MSG_HOLD],
			               sc.rcpt_state[QUEUE_RCPT_PENDING],
			               sc.rcpt_state[QUEUE_RCPT_DEFERRED]);
		if (sc.oldest >= 0) {
			ctl_fmt_age(age, sizeof age, oldest_age);
			ctl_out_printf(&o, "oldest:       %s\n", age);
		}
		if (running)
			ctl_out_printf(&o, "since start:  %" PRId64 " sent, %" PRId64
			               " deferred, %" PRId64 " bounced\n", sent,
			               deferred, bounced);
		if (have_queue) {
			const struct ctl_stats_window *ws[2] = {&w1, &w24};
			for (int k = 0; k < 2; k++) {
				ctl_fmt_time(ts, sizeof ts, ws[k]->since);
				ctl_out_printf(&o, "%s%" PRIu64 " sent, %" PRIu64
				               " deferred, %" PRIu64 " bounced, %" PRIu64
				               " rejected (since %s)\n",
				               k ? "last 24 h:    " : "last hour:    ",
				               ws[k]->sent, ws[k]->deferred, ws[k]->bounced,
				               ws[k]->rejected, ts);
			}
		}
		if (running && !dests->n)
			ctl_out_str(&o, "destinations: none paused or throttled\n");
		for (size_t i = 0; i < dests->n; i++) {
			const struct status_dest *d = &dests->d[i];
			ctl_out_str(&o, i ? "              " : "destinations: ");
			ctl_out_text_max(&o, d->name, strlen(d->name), 60);
			ctl_out_printf(&o, " %s", d->state);
			if (d->until > 0) {
				ctl_fmt_time(ts, sizeof ts, d->until);
				ctl_out_printf(&o, " until %s", ts);
			}
			if (d->reason[0]) {
				ctl_out_str(&o, ": ");
				ctl_out_text_max(&o, d->reason, strlen(d->reason), 80);
			}
			ctl_out_str(&o, "\n");
		}
		if (dests->more)
			ctl_out_printf(&o, "              and %zu more (relayctl "
			               "destinations)\n", dests->more);
		if (sc.nreasons) {
			ctl_out_str(&o, "deferred by:\n");
			for (size_t i = 0; i < sc.nreasons && i < STATUS_REASONS_SHOWN;
			     i++) {
				ctl_out_printf(&o, "  %6" PRIu64 "  ", sc.reasons[i].n);
				ctl_out_text_max(&o, sc.reasons[i].text,
				                 strlen(sc.reasons[i].text), 100);
				ctl_out_str(&o, "\n");
			}
			if (sc.other_reasons)
				ctl_out_printf(&o, "  %6" PRIu64 "  (other replies)\n",
				               sc.other_reasons);
		}
	}
	buf_free(&route);
	buf_free(&delivery);
	free(dests);
	r = ctl_out_flush(&o, stdout);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	ctl_out_free(&o);
	return r;
}
