/*
 * tools/ctl_stats.c - The statistics history (queue/queue_stats.h) as
 * relayctl shows it: `relayctl stats --by hour|day [--by credential|
 * domain]` (a table of buckets, newest last, or per bucket its names),
 * `--by credential|domain` alone (totals over the day buckets kept), and
 * the "last hour" / "last 24 h" sums of `relayctl status`. Everything is
 * read from the spool's index in one read-only transaction per query,
 * with relayd running or stopped.
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "queue/queue_stats.h"

#define HOUR 3600
#define DAY 86400

/* The totals columns, in table order. */
static const unsigned total_ids[] = {
	QUEUE_STATS_ACCEPTED, QUEUE_STATS_REJECTED, QUEUE_STATS_SENT,
	QUEUE_STATS_DEFERRED, QUEUE_STATS_BOUNCED, QUEUE_STATS_DSN,
};
/* What each dimension counts. */
static const unsigned cred_ids[] = {QUEUE_STATS_ACCEPTED,
                                    QUEUE_STATS_REJECTED};
static const unsigned domain_ids[] = {QUEUE_STATS_SENT, QUEUE_STATS_DEFERRED,
                                      QUEUE_STATS_BOUNCED};

struct hist {
	struct ctl_ctx *c;
	struct ctl_out *o;
	char gran;                  /* 'h', 'd', or 0: totals only */
	int dim;                    /* QUEUE_STATS_CRED/_DOMAIN, or -1 */
	size_t nbuckets;
	size_t bad;                 /* buckets that did not decode */
	struct queue_stats_bucket sum;   /* dimension totals (no gran) */
	int err;
};

static void dim_ids(int dim, const unsigned **ids, size_t *n)
{
	*ids = dim == QUEUE_STATS_CRED ? cred_ids : domain_ids;
	*n = dim == QUEUE_STATS_CRED ? sizeof cred_ids / sizeof *cred_ids
	                             : sizeof domain_ids / sizeof *domain_ids;
}

/* Entries in output order: the largest first count first, then by name,
 * QUEUE_STATS_OTHER last. */
static int dim_for_sort;
static int entry_cmp(const void *a, const void *b)
{
	const struct queue_stats_entry *x = a, *y = b;
	bool xo = strcmp(x->name, QUEUE_STATS_OTHER) == 0;
	bool yo = strcmp(y->name, QUEUE_STATS_OTHER) == 0;
	if (xo != yo)
		return xo ? 1 : -1;
	unsigned id = dim_for_sort == QUEUE_STATS_CRED ? QUEUE_STATS_ACCEPTED
	                                               : QUEUE_STATS_SENT;
	if (x->c[id] != y->c[id])
		return x->c[id] < y->c[id] ? 1 : -1;
	return strcmp(x->name, y->name);
}

static void sort_entries(struct queue_stats_bucket *b, int dim)
{
	dim_for_sort = dim;
	if (b->n[dim])
		qsort(b->e[dim], b->n[dim], sizeof *b->e[dim], entry_cmp);
}

/* JSON: "name":N for every named counter of c. */
static void json_counters(struct ctl_out *o, const uint64_t *c,
                          const unsigned *ids, size_t nids)
{
	for (size_t i = 0; i < nids; i++)
		ctl_out_printf(o, "%s\"%s\":%" PRIu64, i ? "," : "",
		               queue_stats_names[ids[i]], c[ids[i]]);
}

static void json_entries(struct ctl_out *o, const struct queue_stats_bucket *b,
                         int dim)
{
	const unsigned *ids;
	size_t nids;
	dim_ids(dim, &ids, &nids);
	ctl_out_printf(o, "\"%ss\":[", queue_stats_dim_names[dim]);
	for (size_t i = 0; i < b->n[dim]; i++) {
		ctl_out_str(o, i ? ",{\"name\":" : "{\"name\":");
		ctl_out_json_strz(o, b->e[dim][i].name);
		ctl_out_str(o, ",");
		json_counters(o, b->e[dim][i].c, ids, nids);
		ctl_out_str(o, "}");
	}
	ctl_out_str(o, "]");
}

static void text_entries(struct ctl_out *o, const struct queue_stats_bucket *b,
                         int dim, const char *indent)
{
	const unsigned *ids;
	size_t nids;
	dim_ids(dim, &ids, &nids);
	for (size_t i = 0; i < b->n[dim]; i++) {
		ctl_out_str(o, indent);
		ctl_out_text_pad(o, b->e[dim][i].name, 40);
		for (size_t k = 0; k < nids; k++)
			ctl_out_printf(o, " %10" PRIu64, b->e[dim][i].c[ids[k]]);
		ctl_out_str(o, "\n");
	}
}

static void text_dim_header(struct ctl_out *o, int dim, const char *indent)
{
	const unsigned *ids;
	size_t nids;
	dim_ids(dim, &ids, &nids);
	ctl_out_str(o, indent);
	ctl_out_text_pad(o, queue_stats_dim_names[dim], 40);
	for (size_t k = 0; k < nids; k++)
		ctl_out_printf(o, " %10s", queue_stats_names[ids[k]]);
	ctl_out_str(o, "\n");
}

static int bucket_cb(void *arg, int64_t start,
                     const struct queue_stats_bucket *cb)
{
	struct hist *h = arg;
	if (!cb) {
		h->bad++;
		return 0;
	}
	if (!h->gran) {
		/* totals over the window: summed, shown at the end */
		if (queue_stats_bucket_merge(&h->sum, cb)) {
			h->err = -ENOMEM;
			return 1;
		}
		return 0;
	}
	struct queue_stats_bucket *b = (struct queue_stats_bucket *)cb;
	if (h->dim >= 0)
		sort_entries(b, h->dim);
	struct ctl_out *o = h->o;
	char ts[64];
	ctl_fmt_time(ts, sizeof ts, start);
	if (h->c->json) {
		ctl_out_printf(o, "%s{\"start\":%" PRId64 ",\"time\":\"%s\",",
		               h->nbuckets ? "," : "", start, ts);
		bool first = true;
		for (unsigned id = 1; id < QUEUE_STATS_NIDS; id++)
			if (queue_stats_names[id]) {
				ctl_out_printf(o, "%s\"%s\":%" PRIu64, first ? "" : ",",
				               queue_stats_names[id], b->c[id]);
				first = false;
			}
		if (h->dim >= 0) {
			ctl_out_str(o, ",");
			json_entries(o, b, h->dim);
		}
		ctl_out_str(o, "}");
	} else {
		ctl_out_printf(o, "%-21s", ts);
		for (size_t i = 0; i < sizeof total_ids / sizeof *total_ids; i++)
			ctl_out_printf(o, " %10" PRIu64, b->c[total_ids[i]]);
		ctl_out_str(o, "\n");
		if (h->dim >= 0 && b->n[h->dim])
			text_entries(o, b, h->dim, "    ");
	}
	h->nbuckets++;
	return 0;
}

int ctl_stats_history(struct ctl_ctx *c)
{
	struct hist h = {.c = c, .dim = -1};
	for (size_t i = 0; i < c->nopts; i++) {
		if (strcmp(c->opts[i].name, "--by") != 0)
			continue;
		const char *v = c->opts[i].value;
		char g = strcmp(v, "hour") == 0 ? QUEUE_STATS_HOUR :
		         strcmp(v, "day") == 0 ? QUEUE_STATS_DAY : 0;
		int d = strcmp(v, "credential") == 0 ? QUEUE_STATS_CRED :
		        strcmp(v, "domain") == 0 ? QUEUE_STATS_DOMAIN : -1;
		if (!g && d < 0) {
			char esc[64];
			return ctl_usage_error("--by %s: not hour, day, credential or "
			                       "domain", log_escape(esc, sizeof esc, v,
			                       strlen(v)));
		}
		if ((g && h.gran) || (d >= 0 && h.dim >= 0))
			return ctl_usage_error("--by: at most one of hour and day, "
			                       "and one of credential and domain");
		if (g)
			h.gran = g;
		else
			h.dim = d;
	}
	const char *spool = c->conf.spool_dir;
	struct queue_ro *ro;
	int r = queue_ro_open(spool, &ro);
	if (r < 0) {
		ctl_err("cannot open the queue index in %s: %s", spool,
		        r == -ENOENT ? "no spool there yet" : strerror(-r));
		return r;
	}
	/* The window kept: the current bucket and the ones before it. */
	char gran = h.gran ? h.gran : QUEUE_STATS_DAY;
	int64_t since = gran == QUEUE_STATS_HOUR
	                ? queue_stats_hour(c->now) - (QUEUE_STATS_HOURS - 1) * HOUR
	                : queue_stats_day(c->now) - (QUEUE_STATS_DAYS - 1) * DAY;
	struct ctl_out o;
	ctl_out_init(&o);
	h.o = &o;
	if (h.gran && c->json) {
		ctl_out_printf(&o, "{\"by\":\"%s\",", h.gran == QUEUE_STATS_HOUR
		               ? "hour" : "day");
		if (h.dim >= 0)
			ctl_out_printf(&o, "\"dimension\":\"%s\",",
			               queue_stats_dim_names[h.dim]);
		ctl_out_str(&o, "\"buckets\":[");
	} else if (h.gran) {
		ctl_out_printf(&o, "%-21s", h.gran == QUEUE_STATS_HOUR
		               ? "hour (UTC)" : "day (UTC)");
		for (size_t i = 0; i < sizeof total_ids / sizeof *total_ids; i++)
			ctl_out_printf(&o, " %10s", queue_stats_names[total_ids[i]]);
		ctl_out_str(&o, "\n");
		if (h.dim >= 0)
			text_dim_header(&o, h.dim, "    ");
	}
	r = queue_ro_stats(ro, gran, since, bucket_cb, &h);
	queue_ro_close(ro);
	if (r == 0)
		r = h.err;
	if (r < 0) {
		ctl_err("reading the statistics in %s: %s", spool, strerror(-r));
		ctl_out_free(&o);
		queue_stats_bucket_reset(&h.sum);
		return r;
	}
	if (h.gran && c->json) {
		ctl_out_str(&o, "]}\n");
	} else if (!h.gran) {
		sort_entries(&h.sum, h.dim);
		char ts[64];
		ctl_fmt_time(ts, sizeof ts, since);
		if (c->json) {
			ctl_out_printf(&o, "{\"by\":\"%s\",\"since\":%" PRId64
			               ",\"since_time\":\"%s\",",
			               queue_stats_dim_names[h.dim], since, ts);
			json_entries(&o, &h.sum, h.dim);
			ctl_out_str(&o, "}\n");
		} else {
			ctl_out_printf(&o, "since %s (the %d days kept)\n", ts,
			               QUEUE_STATS_DAYS);
			text_dim_header(&o, h.dim, "");
			text_entries(&o, &h.sum, h.dim, "");
		}
	}
	if (h.bad)
		ctl_err("warning: %zu statistics bucket%s in %s could not be "
		        "read and %s left out", h.bad, h.bad == 1 ? "" : "s",
		        spool, h.bad == 1 ? "is" : "are");
	queue_stats_bucket_reset(&h.sum);
	r = ctl_out_flush(&o, stdout);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	ctl_out_free(&o);
	return r;
}

/* ---- relayctl status: the last hour and the last 24 hours ------------- */

struct window_sum {
	int64_t hour_since, day_since;
	uint64_t hour[QUEUE_STATS_NIDS], day[QUEUE_STATS_NIDS];
};

static int window_cb(void *arg, int64_t start,
                     const struct queue_stats_bucket *b)
{
	struct window_sum *w = arg;
	if (!b)
		return 0;
	for (int i = 0; i < QUEUE_STATS_NIDS; i++) {
		w->day[i] += b->c[i];
		if (start >= w->hour_since)
			w->hour[i] += b->c[i];
	}
	return 0;
}

int ctl_stats_windows(struct ctl_ctx *c, struct queue_ro *ro,
                      struct ctl_stats_window *hour,
                      struct ctl_stats_window *day)
{
	struct window_sum w;
	memset(&w, 0, sizeof w);
	/* "Last hour": the current hour's bucket and the one before it;
	 * "last 24 h": the current one and the 24 before it. */
	w.hour_since = queue_stats_hour(c->now) - HOUR;
	w.day_since = queue_stats_hour(c->now) - 24 * HOUR;
	int r = queue_ro_stats(ro, QUEUE_STATS_HOUR, w.day_since, window_cb, &w);
	if (r < 0)
		return r;
	struct ctl_stats_window *ws[2] = {hour, day};
	for (int k = 0; k < 2; k++) {
		const uint64_t *s = k ? w.day : w.hour;
		ws[k]->since = k ? w.day_since : w.hour_since;
		ws[k]->accepted = s[QUEUE_STATS_ACCEPTED];
		ws[k]->rejected = s[QUEUE_STATS_REJECTED];
		ws[k]->sent = s[QUEUE_STATS_SENT];
		ws[k]->deferred = s[QUEUE_STATS_DEFERRED];
		ws[k]->bounced = s[QUEUE_STATS_BOUNCED];
	}
	return 0;
}
