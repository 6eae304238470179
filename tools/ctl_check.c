/*
 * tools/ctl_check.c - relayctl check: verifies the spool (queue.h's
 * queue_ro_check: records, bodies, schedule, temp files) and prints one
 * line per problem, naming the queue id or the file.
 *
 * Beside a running relayd some items are a moment in its work (a body
 * placed just before its record is committed, a record removed just
 * before its body is unlinked): each one found is looked at again after a
 * pause, a few times over at most CTL_CHECK_ROUNDS, and only what is still
 * wrong at the end is reported. With relayd stopped nothing moves, so
 * nothing is waited for; its temp files are then leftovers too.
 *
 * Exit status: 0 clean, 1 problems (listed), 2 the check could not be
 * done (no spool, an unreadable index or directory, a bad configuration).
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "deliver/deliver_ctl.h"

/* Items kept for rechecks and the report; beyond this they are counted. */
#define CTL_CHECK_MAX_ITEMS 10000
/* Pauses before each recheck round, in milliseconds (3 s in all). */
static const unsigned ctl_check_waits_ms[] = {500, 1000, 1500};
#define CTL_CHECK_ROUNDS (sizeof ctl_check_waits_ms / sizeof *ctl_check_waits_ms)
/* How long to wait for relayd to say it is running. */
#define CTL_CHECK_PING_MS 2000

enum ctl_daemon { CTL_DAEMON_STOPPED, CTL_DAEMON_RUNNING, CTL_DAEMON_UNKNOWN };
static const char *const ctl_daemon_names[] = {"stopped", "running", "unknown"};

struct ctl_items {
	struct queue_check_item *v;
	size_t n, cap;
	uint64_t more;          /* found beyond CTL_CHECK_MAX_ITEMS */
	int err;                /* -ENOMEM */
};

static int ctl_items_add(void *arg, const struct queue_check_item *it)
{
	struct ctl_items *l = arg;
	/* One subject seen twice in a row (a recheck of an item and of its
	 * twin) is kept once. */
	if (l->n > 0 && l->v[l->n - 1].kind == it->kind &&
	    queue_check_same_subject(&l->v[l->n - 1], it))
		return 0;
	if (l->n == CTL_CHECK_MAX_ITEMS) {
		l->more++;
		return 0;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		void *p = realloc(l->v, cap * sizeof *l->v);
		if (!p) {
			l->err = -ENOMEM;
			return 1;
		}
		l->v = p;
		l->cap = cap;
	}
	l->v[l->n++] = *it;
	return 0;
}

/* Is relayd running on this spool? Asked through its control socket. */
static enum ctl_daemon ctl_check_daemon(const char *spool)
{
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply)
		return CTL_DAEMON_UNKNOWN;
	int r = ctl_control_request(spool, "stats", CTL_CHECK_PING_MS, reply,
	                            DELIVER_CTL_REPLY_MAX);
	free(reply);
	if (r == 0)
		return CTL_DAEMON_RUNNING;
	/* No socket, or nobody listening on it. Anything else (not allowed
	 * to ask, no answer in time) may be a running relayd. */
	return r == -ECONNREFUSED ? CTL_DAEMON_STOPPED : CTL_DAEMON_UNKNOWN;
}

static void ctl_check_hex(struct ctl_out *o, const struct queue_check_item *it)
{
	size_t n = it->keylen < QUEUE_CHECK_KEY_MAX ? it->keylen
	                                            : QUEUE_CHECK_KEY_MAX;
	for (size_t i = 0; i < n; i++)
		ctl_out_printf(o, "%02x", it->key[i]);
	if (n < it->keylen)
		ctl_out_str(o, "...");
}

static void ctl_check_time(struct ctl_out *o, int64_t t)
{
	char ts[64];
	ctl_fmt_time(ts, sizeof ts, t);
	ctl_out_str(o, ts);
}

/* The one-line description of an item, without the newline. */
static void ctl_check_line(struct ctl_out *o, const struct queue_check_item *it)
{
	const char *q = it->qid;
	switch (it->kind) {
	case QUEUE_CHK_NO_BODY:
		ctl_out_printf(o, "%s: index record without its body (msg/%s is "
		               "missing)", q, q);
		break;
	case QUEUE_CHK_BODY_SIZE:
		ctl_out_printf(o, "%s: body msg/%s has %" PRIu64 " bytes, the "
		               "index record says %" PRIu64, q, q, it->size,
		               it->recorded);
		break;
	case QUEUE_CHK_BODY_TYPE:
		ctl_out_printf(o, "%s: msg/%s is not a regular file", q, q);
		break;
	case QUEUE_CHK_BAD_RECORD:
		if (q[0]) {
			ctl_out_printf(o, "%s: index record cannot be decoded", q);
		} else {
			ctl_out_str(o, "index record with a key that is not a "
			            "queue id (hex ");
			ctl_check_hex(o, it);
			ctl_out_str(o, ")");
		}
		break;
	case QUEUE_CHK_UNSCHEDULED:
		ctl_out_printf(o, "%s: active with recipients due at ", q);
		ctl_check_time(o, it->due);
		ctl_out_str(o, ", but no schedule entry for that time");
		break;
	case QUEUE_CHK_STALE_SCHED:
		if (it->stale == QUEUE_STALE_BAD_KEY) {
			ctl_out_str(o, "schedule entry with a key that is not a time "
			            "and a queue id (hex ");
			ctl_check_hex(o, it);
			ctl_out_str(o, ")");
			break;
		}
		ctl_out_printf(o, "%s: schedule entry at ", q);
		ctl_check_time(o, it->at);
		switch (it->stale) {
		case QUEUE_STALE_NO_RECORD:
			ctl_out_str(o, " for a message not in the index");
			break;
		case QUEUE_STALE_BAD_RECORD:
			ctl_out_str(o, " for a record that cannot be decoded");
			break;
		case QUEUE_STALE_HOLD:
			ctl_out_str(o, " for a message on hold");
			break;
		case QUEUE_STALE_DONE:
			ctl_out_str(o, " for a message with nothing left to deliver");
			break;
		default:
			ctl_out_str(o, ", but the message is due at ");
			ctl_check_time(o, it->due);
			break;
		}
		break;
	case QUEUE_CHK_DONE:
		ctl_out_printf(o, "%s: every recipient is sent or bounced, but the "
		               "message is still in the index", q);
		break;
	case QUEUE_CHK_ORPHAN_BODY:
		ctl_out_printf(o, "%s: body msg/%s has no index record (orphan "
		               "body)", q, q);
		break;
	case QUEUE_CHK_TEMP:
		ctl_out_text(o, it->file, strlen(it->file), 0);
		ctl_out_str(o, ": stray temp file (an unfinished body; relayd "
		            "removes it at start)");
		break;
	case QUEUE_CHK_STRAY:
	default:
		ctl_out_text(o, it->file, strlen(it->file), 0);
		ctl_out_str(o, ": stray file (not a queue id)");
		break;
	}
}

static void ctl_check_json_item(struct ctl_out *o,
                                const struct queue_check_item *it)
{
	struct ctl_out line;
	ctl_out_init(&line);
	ctl_check_line(&line, it);
	ctl_out_str(o, "{\"kind\":");
	ctl_out_json_strz(o, queue_check_kind_names[it->kind]);
	ctl_out_str(o, ",\"id\":");
	ctl_out_json_strz(o, it->qid[0] ? it->qid : NULL);
	ctl_out_str(o, ",\"file\":");
	ctl_out_json_strz(o, it->file[0] ? it->file : NULL);
	ctl_out_str(o, ",\"message\":");
	if (line.err)
		o->err = o->err ? o->err : line.err;
	ctl_out_json_str(o, line.b.data, line.b.len);
	ctl_out_str(o, "}");
	ctl_out_free(&line);
}

static void ctl_sleep_ms(unsigned ms)
{
	struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

int ctl_cmd_check(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	const char *spool = c->conf.spool_dir;
	struct queue_ro *ro;
	struct queue_check_stats st;
	struct ctl_items found = {0};
	unsigned rounds = 0;
	int r;

	if (ctl_ro_open(spool, &ro) < 0)
		return CTL_EXIT_USAGE;      /* exit 2: could not check */
	enum ctl_daemon daemon = ctl_check_daemon(spool);
	unsigned flags = daemon == CTL_DAEMON_STOPPED ? 0 : QUEUE_CHECK_LIVE;

	r = queue_ro_check(ro, flags, ctl_items_add, &found, &st);
	/* Rechecks: only what was found is looked at again, and only while
	 * something may still be moving it. */
	while (r == 0 && found.err == 0 && found.n > 0 &&
	       daemon != CTL_DAEMON_STOPPED && rounds < CTL_CHECK_ROUNDS) {
		struct ctl_items now = {.more = found.more};
		ctl_sleep_ms(ctl_check_waits_ms[rounds++]);
		for (size_t i = 0; i < found.n && r == 0 && now.err == 0; i++) {
			/* Two problems of one message: one look covers both. */
			if (i > 0 && queue_check_same_subject(&found.v[i - 1],
			                                      &found.v[i]))
				continue;
			r = queue_ro_recheck(ro, flags, &found.v[i], ctl_items_add,
			                     &now);
		}
		free(found.v);
		found = now;
	}
	queue_ro_close(ro);
	if (r == 0)
		r = found.err;
	if (r < 0) {
		ctl_err("cannot check the spool %s: %s", spool, strerror(-r));
		free(found.v);
		return CTL_EXIT_USAGE;
	}

	uint64_t problems = found.n + found.more;
	struct ctl_out o;
	ctl_out_init(&o);
	if (c->json) {
		ctl_out_str(&o, "{\"spool\":");
		ctl_out_json_strz(&o, spool);
		ctl_out_printf(&o, ",\"clean\":%s,\"relayd\":\"%s\",\"messages\":%"
		               PRIu64 ",\"scheduled\":%" PRIu64 ",\"bodies\":%"
		               PRIu64 ",\"temp_in_use\":%" PRIu64 ",\"rechecks\":%u,"
		               "\"problems\":[", problems ? "false" : "true",
		               ctl_daemon_names[daemon], st.messages, st.scheduled,
		               st.bodies, st.in_use, rounds);
		for (size_t i = 0; i < found.n; i++) {
			ctl_out_str(&o, i ? ",\n" : "\n");
			ctl_check_json_item(&o, &found.v[i]);
		}
		ctl_out_printf(&o, "%s],\"unlisted\":%" PRIu64 "}\n",
		               found.n ? "\n" : "", found.more);
	} else {
		for (size_t i = 0; i < found.n; i++) {
			ctl_check_line(&o, &found.v[i]);
			ctl_out_str(&o, "\n");
		}
		if (found.more)
			ctl_out_printf(&o, "... and %" PRIu64 " more problems\n",
			               found.more);
		ctl_out_str(&o, "spool ");
		ctl_out_text(&o, spool, strlen(spool), 0);
		if (problems)
			ctl_out_printf(&o, ": %" PRIu64 " problem%s", problems,
			               problems == 1 ? "" : "s");
		else
			ctl_out_str(&o, ": clean");
		ctl_out_printf(&o, " (%" PRIu64 " messages, %" PRIu64 " scheduled, %"
		               PRIu64 " bodies", st.messages, st.scheduled,
		               st.bodies);
		if (st.in_use)
			ctl_out_printf(&o, ", %" PRIu64 " temp files in use by relayd",
			               st.in_use);
		ctl_out_str(&o, ")\n");
	}
	free(found.v);
	r = ctl_out_flush(&o, stdout);
	ctl_out_free(&o);
	if (r < 0) {
		ctl_err("writing the report: %s", strerror(-r));
		return CTL_EXIT_USAGE;
	}
	return problems ? -EUCLEAN : 0;     /* exit 1: problems */
}
