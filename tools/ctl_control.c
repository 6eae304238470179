/*
 * tools/ctl_control.c - relayctl's control client and the commands that
 * change the queue: flush, hold, release, delete, bounce, requeue, and
 * stats. While relayd runs, every change goes through its control socket
 * (spool_dir/control, deliver/deliver_ctl.h: one request line, one reply
 * line), so its schedule never goes stale. While it is stopped, hold,
 * release and delete change the spool directly (queue.h, queue_admin_*)
 * and say so; flush, bounce and requeue need the daemon; stats counts what
 * the index holds. lockout list|clear shows and lifts the failed-AUTH
 * lockouts relayd holds in memory. pause|resume DESTINATION stops and
 * restarts delivery to one destination (in relayd's memory).
 */
#include "ctl.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "deliver/deliver_ctl.h"
#include "queue/queue.h"

/* ---- the client -------------------------------------------------------- */

static int64_t ctl_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline: 0, -ETIMEDOUT or -errno. */
static int ctl_wait(int fd, short events, int64_t deadline)
{
	struct pollfd p = {.fd = fd, .events = events};
	for (;;) {
		int64_t left = deadline - ctl_mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (n > 0)
			return 0;       /* ready, or an error the next call reports */
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

static int ctl_connect(const char *spool_dir, int64_t deadline)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int n = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", spool_dir,
	                 QUEUE_CONTROL_NAME);
	if (n < 0 || (size_t)n >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
			return fd;
		int e = errno;
		if (e == EINTR)
			continue;
		/* A full listen backlog: relayd is busy, not gone. */
		if (e == EAGAIN) {
			if (ctl_mono_ms() + 10 >= deadline) {
				close(fd);
				return -ETIMEDOUT;
			}
			poll(NULL, 0, 10);
			continue;
		}
		close(fd);
		/* No socket, or a stale one nobody listens on (relayd was
		 * killed): not running. */
		return e == ENOENT || e == ECONNREFUSED ? -ECONNREFUSED : -e;
	}
}

static int ctl_send_all(int fd, const char *p, size_t n, int64_t deadline)
{
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			int r = ctl_wait(fd, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Reads up to the first LF, at most DELIVER_CTL_REPLY_MAX bytes with it;
 * *len excludes the LF. */
static int ctl_read_line(int fd, char *line, size_t *len, int64_t deadline)
{
	size_t n = 0;
	for (;;) {
		char *nl = memchr(line, '\n', n);
		if (nl) {
			*len = (size_t)(nl - line);
			return 0;
		}
		if (n == DELIVER_CTL_REPLY_MAX)
			return -EPROTO;             /* too long */
		ssize_t k = recv(fd, line + n, DELIVER_CTL_REPLY_MAX - n, 0);
		if (k > 0) {
			n += (size_t)k;
			continue;
		}
		if (k == 0)
			return -EPROTO;             /* closed before the LF */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		int r = ctl_wait(fd, POLLIN, deadline);
		if (r < 0)
			return r;
	}
}

int ctl_control_request(const char *spool_dir, const char *line,
                        int timeout_ms, char *reply, size_t replysz)
{
	int64_t deadline = ctl_mono_ms() + timeout_ms;
	size_t n = strlen(line);
	char *buf = NULL;
	size_t len = 0;
	int r, fd = -1;

	reply[0] = '\0';
	if (n + 1 > DELIVER_CTL_LINE_MAX || strpbrk(line, "\r\n"))
		return -EINVAL;
	if ((fd = ctl_connect(spool_dir, deadline)) < 0)
		return fd;
	if (!(buf = malloc(DELIVER_CTL_REPLY_MAX))) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(buf, line, n);
	buf[n] = '\n';
	if ((r = ctl_send_all(fd, buf, n + 1, deadline)) < 0 ||
	    (r = ctl_read_line(fd, buf, &len, deadline)) < 0)
		goto out;
	/* Anything after the LF is ignored: one reply per connection. */
	const char *text;
	if (memchr(buf, '\0', len)) {
		r = -EPROTO;
		goto out;
	}
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	if (strcmp(buf, "ok") == 0 || strncmp(buf, "ok ", 3) == 0) {
		text = buf[2] ? buf + 3 : "";
		r = 0;
	} else if (strcmp(buf, "err") == 0 || strncmp(buf, "err ", 4) == 0) {
		text = buf[3] ? buf + 4 : "";
		r = -EREMOTEIO;
	} else {
		r = -EPROTO;
		goto out;
	}
	snprintf(reply, replysz, "%s", text);
out:
	free(buf);
	close(fd);
	return r;
}

/* ---- commands ---------------------------------------------------------- */

enum ctl_verb {
	CTL_FLUSH, CTL_HOLD, CTL_RELEASE, CTL_DELETE, CTL_BOUNCE, CTL_REQUEUE,
};

static const struct {
	const char *name;       /* the protocol's verb */
	const char *done;       /* "ID: held" when relayd says just "ok" */
	bool offline;           /* possible without relayd (queue_admin_*) */
} ctl_verbs[] = {
	[CTL_FLUSH] = {"flush", "flushed", false},
	[CTL_HOLD] = {"hold", "held", true},
	[CTL_RELEASE] = {"release", "released", true},
	[CTL_DELETE] = {"delete", "deleted", true},
	[CTL_BOUNCE] = {"bounce", "bounced", false},
	[CTL_REQUEUE] = {"requeue", "requeued", false},
};

/* A queue id argument for the queue changes: a usage error (exit 2)
 * when malformed. */
static int ctl_id_arg(const char *arg, char out[QUEUE_ID_SIZE])
{
	if (ctl_qid_norm(arg, out))
		return 0;
	char esc[128];
	return ctl_usage_error("'%s' is not a queue id",
	                       log_escape(esc, sizeof esc, arg, strlen(arg)));
}

/* relayd's own words (a reply text) on stderr, made safe. */
static void ctl_err_text(const char *prefix, const char *text)
{
	char esc[1024];
	ctl_err("%s%s", prefix, log_escape(esc, sizeof esc, text, strlen(text)));
}

void ctl_err_request(const char *spool, int r)
{
	if (r == -EPROTO)
		ctl_err("relayd sent a malformed reply on %s/%s", spool,
		        QUEUE_CONTROL_NAME);
	else if (r == -ETIMEDOUT)
		ctl_err("relayd did not answer on %s/%s within %d s", spool,
		        QUEUE_CONTROL_NAME, CTL_CONTROL_TIMEOUT_MS / 1000);
	else
		ctl_err("cannot talk to relayd on %s/%s: %s", spool,
		        QUEUE_CONTROL_NAME, strerror(-r));
}

static int ctl_print_line(struct ctl_out *o)
{
	int r = ctl_out_flush(o, stdout);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	ctl_out_free(o);
	return r;
}

/* relayd is stopped: hold, release and delete change the index directly. */
static int ctl_offline(struct ctl_ctx *c, enum ctl_verb v, const char *qid)
{
	const char *spool = c->conf.spool_dir;
	struct queue_admin *a;
	int r = queue_admin_open(spool, &a);
	if (r == -ENOENT) {
		ctl_err("no spool at %s (is spool_dir right? relayd creates it "
		        "at first start)", spool);
		return r;
	}
	if (r == -EBUSY) {
		ctl_err("relayd does not answer on %s/%s, but another process "
		        "has the queue index open (relayd without its control "
		        "socket?); not changing the spool behind its back",
		        spool, QUEUE_CONTROL_NAME);
		return r;
	}
	if (r < 0) {
		ctl_err("cannot open the queue index in %s: %s", spool,
		        strerror(-r));
		return r;
	}
	switch (v) {
	case CTL_HOLD: r = queue_admin_hold(a, qid); break;
	case CTL_RELEASE: r = queue_admin_release(a, qid, c->now); break;
	case CTL_DELETE: r = queue_admin_delete(a, qid); break;
	default: r = -EINVAL; break;
	}
	queue_admin_close(a);
	if (r == -ENOENT) {
		ctl_err("no message with id %s", qid);
		return r;
	}
	if (r < 0) {
		ctl_err("%s: %s: %s", qid, ctl_verbs[v].name, strerror(-r));
		return r;
	}
	struct ctl_out o;
	ctl_out_init(&o);
	ctl_out_printf(&o, "%s: %s (relayd is not running; changed the spool "
	               "directly)\n", qid, ctl_verbs[v].done);
	return ctl_print_line(&o);
}

static int ctl_verb_run(struct ctl_ctx *c, enum ctl_verb v, int argc,
                        char **argv)
{
	const char *spool = c->conf.spool_dir;
	char qid[QUEUE_ID_SIZE] = "";
	char line[DELIVER_CTL_LINE_MAX];
	int r;

	if (argc > 0 && (r = ctl_id_arg(argv[0], qid)) != 0)
		return r;
	snprintf(line, sizeof line, qid[0] ? "%s %s" : "%s", ctl_verbs[v].name,
	         qid);
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	r = ctl_control_request(spool, line, CTL_CONTROL_TIMEOUT_MS, reply,
	                        DELIVER_CTL_REPLY_MAX);
	if (r == -ECONNREFUSED && ctl_verbs[v].offline) {
		free(reply);
		return ctl_offline(c, v, qid);
	}
	if (r == -ECONNREFUSED) {
		ctl_err("relayd is not running (nothing answers on %s/%s); '%s' "
		        "needs it", spool, QUEUE_CONTROL_NAME, ctl_verbs[v].name);
	} else if (r == -EREMOTEIO) {
		ctl_err_text("", reply[0] ? reply : "relayd refused the request");
	} else if (r < 0) {
		ctl_err_request(spool, r);
	} else {
		struct ctl_out o;
		ctl_out_init(&o);
		if (reply[0])
			ctl_out_text(&o, reply, strlen(reply), 0);
		else if (qid[0])
			ctl_out_printf(&o, "%s: %s", qid, ctl_verbs[v].done);
		else
			ctl_out_printf(&o, "queue %s", ctl_verbs[v].done);
		ctl_out_str(&o, "\n");
		r = ctl_print_line(&o);
	}
	free(reply);
	return r;
}

int ctl_cmd_flush(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_FLUSH, argc, argv);
}

int ctl_cmd_hold(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_HOLD, argc, argv);
}

int ctl_cmd_release(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_RELEASE, argc, argv);
}

int ctl_cmd_delete(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_DELETE, argc, argv);
}

int ctl_cmd_bounce(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_BOUNCE, argc, argv);
}

int ctl_cmd_requeue(struct ctl_ctx *c, int argc, char **argv)
{
	return ctl_verb_run(c, CTL_REQUEUE, argc, argv);
}

/* ---- pause / resume a destination --------------------------------------- */

/* Asks of a domain whose MX hosts relayd is still looking up ("err busy
 * ..."): at most this many times, this far apart. */
#define CTL_PAUSE_TRIES 40
#define CTL_PAUSE_GAP_MS 250

static int ctl_pause_resume(struct ctl_ctx *c, bool pause, const char *dest)
{
	const char *spool = c->conf.spool_dir;
	char line[DELIVER_CTL_LINE_MAX], esc[128];
	uint64_t ms = 0;
	const char *v = pause ? ctl_opt(c, "--for") : NULL;
	if (v && (conf_parse_duration(v, &ms) < 0 || ms < 1000 ||
	          ms / 1000 > 10ull * 365 * 24 * 3600))
		return ctl_usage_error("--for: '%s' is not a duration like 30s, "
		                       "15m, 2h or 3d (1 s to 10 years)",
		                       log_escape(esc, sizeof esc, v, strlen(v)));
	if (!dest[0] || strlen(dest) >= 320 || strpbrk(dest, " \t\r\n"))
		return ctl_usage_error("'%s' is not a destination (relayctl "
		                       "destinations lists them)",
		                       log_escape(esc, sizeof esc, dest,
		                                  strlen(dest)));
	if (v)
		snprintf(line, sizeof line, "pause %s %" PRIu64, dest,
		         (ms + 999) / 1000);
	else
		snprintf(line, sizeof line, "%s %s", pause ? "pause" : "resume",
		         dest);
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	int r = -EAGAIN;
	for (int i = 0; i < CTL_PAUSE_TRIES; i++) {
		r = ctl_control_request(spool, line, CTL_CONTROL_TIMEOUT_MS, reply,
		                        DELIVER_CTL_REPLY_MAX);
		if (r != -EREMOTEIO || strncmp(reply, "busy ", 5) != 0)
			break;
		usleep(CTL_PAUSE_GAP_MS * 1000);
	}
	if (r == -ECONNREFUSED) {
		ctl_err("relayd is not running (nothing answers on %s/%s); a "
		        "pause lives in its memory", spool, QUEUE_CONTROL_NAME);
	} else if (r == -EREMOTEIO) {
		const char *t = strncmp(reply, "busy ", 5) == 0 ? reply + 5 : reply;
		ctl_err_text("", t[0] ? t : "relayd refused the request");
	} else if (r < 0) {
		ctl_err_request(spool, r);
	} else {
		struct ctl_out o;
		ctl_out_init(&o);
		ctl_out_text(&o, reply, strlen(reply), 0);
		ctl_out_str(&o, "\n");
		r = ctl_print_line(&o);
	}
	free(reply);
	return r;
}

int ctl_cmd_pause(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	return ctl_pause_resume(c, true, argv[0]);
}

int ctl_cmd_resume(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	return ctl_pause_resume(c, false, argv[0]);
}

/* ---- stats ------------------------------------------------------------- */

struct ctl_count {
	uint64_t messages, bytes;
	uint64_t msg_state[QUEUE_MSG_HOLD + 1];
	uint64_t rcpt_state[QUEUE_RCPT_BOUNCED + 1];
};

static int ctl_count_cb(void *arg, const struct queue_msg *m)
{
	struct ctl_count *n = arg;
	n->messages++;
	n->bytes += m->size;
	if (m->state <= QUEUE_MSG_HOLD)
		n->msg_state[m->state]++;
	for (size_t i = 0; i < m->nrcpt; i++)
		if (m->rcpt[i].state <= QUEUE_RCPT_BOUNCED)
			n->rcpt_state[m->rcpt[i].state]++;
	return 0;
}

/* What the index says, as the "queue" object relayd's stats would have:
 * {"messages":N,"size":BYTES,"active":N,"hold":N,"recipients":{...}}. */
static int ctl_stats_offline(struct ctl_ctx *c, struct ctl_out *q)
{
	const char *spool = c->conf.spool_dir;
	struct ctl_count n = {0};
	struct queue_ro *ro;
	int r = queue_ro_open(spool, &ro);
	if (r == -ENOENT) {
		ctl_err("no spool at %s (is spool_dir right? relayd creates it "
		        "at first start)", spool);
		return r;
	}
	if (r < 0) {
		ctl_err("cannot open the queue index in %s: %s", spool,
		        strerror(-r));
		return r;
	}
	r = queue_ro_foreach(ro, ctl_count_cb, &n);
	queue_ro_close(ro);
	if (r < 0) {
		ctl_err("reading the queue index in %s: %s", spool, strerror(-r));
		return r;
	}
	ctl_out_printf(q, "{\"messages\":%" PRIu64 ",\"size\":%" PRIu64,
	               n.messages, n.bytes);
	for (size_t i = 0; i <= QUEUE_MSG_HOLD; i++)
		ctl_out_printf(q, ",\"%s\":%" PRIu64, queue_msg_state_names[i],
		               n.msg_state[i]);
	ctl_out_str(q, ",\"recipients\":{");
	for (size_t i = 0; i <= QUEUE_RCPT_BOUNCED; i++)
		ctl_out_printf(q, "%s\"%s\":%" PRIu64, i ? "," : "",
		               queue_rcpt_state_names[i], n.rcpt_state[i]);
	ctl_out_str(q, "}}");
	return q->err;
}

int ctl_cmd_stats(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (ctl_opt(c, "--by"))
		return ctl_stats_history(c);
	const char *spool = c->conf.spool_dir;
	struct ctl_out o, q;
	int r;
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	ctl_out_init(&o);
	ctl_out_init(&q);
	r = ctl_control_request(spool, "stats", CTL_CONTROL_TIMEOUT_MS, reply,
	                        DELIVER_CTL_REPLY_MAX);
	if (r == 0) {
		size_t n = strlen(reply);
		if (c->json && (r = ctl_json_check(reply, n)) == 0) {
			ctl_out_mem(&o, reply, n);   /* valid JSON, as sent */
			ctl_out_str(&o, "\n");
		} else if (!c->json) {
			r = ctl_json_flatten(&o, reply, n);
		}
		if (r < 0)
			ctl_err("relayd sent a malformed stats reply on %s/%s", spool,
			        QUEUE_CONTROL_NAME);
	} else if (r == -ECONNREFUSED) {
		/* Stopped: what the index holds, in the daemon's shape. */
		struct ctl_out w;
		ctl_out_init(&w);
		r = ctl_stats_offline(c, &q);
		if (r == 0 && c->json) {
			ctl_out_str(&o, "{\"running\":false,\"queue\":");
			ctl_out_mem(&o, q.b.data, q.b.len);
			ctl_out_str(&o, "}\n");
		} else if (r == 0) {
			ctl_out_str(&o, "relayd: not running\n");
			ctl_out_str(&w, "{\"queue\":");
			ctl_out_mem(&w, q.b.data, q.b.len);
			ctl_out_str(&w, "}");
			r = w.err ? w.err :
			    ctl_json_flatten(&o, (const char *)w.b.data, w.b.len);
		}
		ctl_out_free(&w);
	} else if (r == -EREMOTEIO) {
		ctl_err_text("", reply[0] ? reply : "relayd refused the request");
	} else {
		ctl_err_request(spool, r);
	}
	free(reply);
	ctl_out_free(&q);
	if (r < 0) {
		ctl_out_free(&o);
		return r;
	}
	return ctl_print_line(&o);
}

/* ---- lockout ------------------------------------------------------------ */

/* One row of "lockout list", from an element of the reply's arrays. */
struct ctl_lock_rows {
	struct ctl_out *o;
	bool names;
	size_t n;
};

static int ctl_lock_row(void *arg, const char *v, size_t vn)
{
	struct ctl_lock_rows *t = arg;
	struct buf key = BUF_INIT(DELIVER_CTL_REPLY_MAX);
	int64_t f = 0, a = 0, b = 0, c = 0;
	int r = ctl_json_get_str(v, vn, t->names ? "name" : "client", &key);
	if (r == 0)
		r = ctl_json_get_int(v, vn, "failures", &f);
	if (r == 0 && t->names)
		r = ctl_json_get_int(v, vn, "delay", &a);
	if (r == 0 && t->names)
		r = ctl_json_get_int(v, vn, "waiting", &b);
	if (r == 0 && !t->names)
		r = ctl_json_get_int(v, vn, "locked", &a);
	if (r == 0 && !t->names)
		r = ctl_json_get_int(v, vn, "lockouts", &b);
	if (r == 0 && !t->names)
		r = ctl_json_get_int(v, vn, "checks", &c);
	if (r == 0 && buf_append(&key, "", 1) < 0)
		r = -ENOMEM;
	if (r < 0) {
		buf_free(&key);
		return r == -ENOENT ? -EPROTO : r;
	}
	char age[32];
	if (t->n++ == 0)
		ctl_out_str(t->o, t->names ?
		            "NAME                                      FAILURES   "
		            "DELAY  WAITING\n" :
		            "CLIENT                                    FAILURES  "
		            "LOCKED  LOCKOUTS  CHECKS\n");
	/* Names are what clients typed: made safe for the terminal. */
	ctl_out_text_pad(t->o, (const char *)key.data, 40);
	if (a > 0)
		ctl_fmt_age(age, sizeof age, a);
	else
		snprintf(age, sizeof age, "-");
	if (t->names)
		ctl_out_printf(t->o, "  %8" PRId64 "  %6s  %7" PRId64 "\n", f, age,
		               b);
	else
		ctl_out_printf(t->o, "  %8" PRId64 "  %6s  %8" PRId64 "  %6" PRId64
		               "\n", f, age, b, c);
	buf_free(&key);
	return 0;
}

static int ctl_lockout_list(struct ctl_ctx *c, const char *reply,
                            struct ctl_out *o)
{
	size_t n = strlen(reply);
	int r = ctl_json_check(reply, n);
	if (r == 0 && c->json) {
		ctl_out_mem(o, reply, n);   /* valid JSON, as sent */
		ctl_out_str(o, "\n");
		return 0;
	}
	struct ctl_lock_rows t = {.o = o};
	if (r == 0)
		r = ctl_json_each(reply, n, "clients", ctl_lock_row, &t);
	size_t nclients = t.n;
	if (r == 0 && nclients)
		ctl_out_str(o, "\n");
	t.names = true;
	t.n = 0;
	if (r == 0)
		r = ctl_json_each(reply, n, "names", ctl_lock_row, &t);
	if (r == 0 && t.n)
		ctl_out_str(o, "\n");
	if (r == 0 && nclients + t.n == 0)
		ctl_out_str(o, "no failed AUTH recorded\n");
	else if (r == 0)
		ctl_out_printf(o, "%zu client%s, %zu name%s\n", nclients,
		               nclients == 1 ? "" : "s", t.n, t.n == 1 ? "" : "s");
	if (r < 0)
		ctl_err("relayd sent a malformed lockout list on %s/%s",
		        c->conf.spool_dir, QUEUE_CONTROL_NAME);
	return r;
}

int ctl_cmd_lockout(struct ctl_ctx *c, int argc, char **argv)
{
	const char *spool = c->conf.spool_dir;
	char esc[1100], line[DELIVER_CTL_LINE_MAX];
	bool list = strcmp(argv[0], "list") == 0;
	if (!list && strcmp(argv[0], "clear") != 0)
		return ctl_usage_error("unknown lockout subcommand '%s' (list or "
		                       "clear)", log_escape(esc, sizeof esc, argv[0],
		                                            strlen(argv[0])));
	if (list && argc > 1)
		return ctl_usage_error("lockout list takes no argument");
	if (!list && c->json)
		return ctl_usage_error("'lockout clear' has no --json output");
	const char *arg = argc > 1 ? argv[1] : NULL;
	if (arg) {
		size_t n = strlen(arg);
		bool ok = n > 0 && n < 256;
		for (size_t i = 0; ok && i < n; i++)
			ok = (unsigned char)arg[i] > ' ' && arg[i] != 0x7f;
		if (!ok)
			return ctl_usage_error("'%s' is not an address or a name",
			                       log_escape(esc, sizeof esc, arg, n));
	}
	snprintf(line, sizeof line, "lockout %s%s%s", argv[0], arg ? " " : "",
	         arg ? arg : "");
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	struct ctl_out o;
	ctl_out_init(&o);
	int r = ctl_control_request(spool, line, CTL_CONTROL_TIMEOUT_MS, reply,
	                            DELIVER_CTL_REPLY_MAX);
	if (r == -ECONNREFUSED) {
		/* The tables live in relayd's memory: none while it is
		 * stopped (a restart starts them empty). */
		if (list && c->json)
			ctl_out_str(&o, "{\"running\":false,\"clients\":[],"
			            "\"names\":[]}\n");
		else
			ctl_out_printf(&o, "relayd is not running: no lockouts (they "
			               "live in its memory)\n");
		r = 0;
	} else if (r == -EREMOTEIO) {
		ctl_err_text("", reply[0] ? reply : "relayd refused the request");
	} else if (r < 0) {
		ctl_err_request(spool, r);
	} else if (list) {
		r = ctl_lockout_list(c, reply, &o);
	} else {
		int64_t n = 0;
		r = ctl_json_get_int(reply, strlen(reply), "cleared", &n);
		if (r < 0) {
			ctl_err("relayd sent a malformed reply on %s/%s", spool,
			        QUEUE_CONTROL_NAME);
		} else if (arg) {
			ctl_out_str(&o, n ? "cleared: " : "nothing recorded for ");
			ctl_out_text(&o, arg, strlen(arg), 0);
			ctl_out_str(&o, "\n");
		} else {
			ctl_out_printf(&o, "cleared: %" PRId64 " client%s and name%s\n",
			               n, n == 1 ? "" : "s", n == 1 ? "" : "s");
		}
	}
	free(reply);
	if (r < 0) {
		ctl_out_free(&o);
		return r;
	}
	return ctl_print_line(&o);
}

/* ---- reload ----------------------------------------------------------- */

/* relayctl reload: relayd reads its configuration again (as on SIGHUP)
 * and says whether it took it; exit 1 when it kept the running one. */
int ctl_cmd_reload(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	const char *spool = c->conf.spool_dir;
	char reply[1200];
	int r = ctl_control_request(spool, "reload", CTL_CONTROL_TIMEOUT_MS,
	                            reply, sizeof reply);
	if (r == -EREMOTEIO) {
		ctl_err_text("", reply[0] ? reply : "relayd refused the reload");
		return r;
	}
	if (r == -ECONNREFUSED) {
		ctl_err("relayd is not running (nothing to reload)");
		return r;
	}
	if (r < 0) {
		ctl_err_request(spool, r);
		return r;
	}
	struct ctl_out o;
	ctl_out_init(&o);
	ctl_out_text(&o, reply, strlen(reply), 0);
	ctl_out_str(&o, "\n");
	return ctl_print_line(&o);
}

/* ---- destinations ------------------------------------------------------ */

/* Characters of a pause reason or last error shown in the table. */
#define CTL_DEST_TEXT_CHARS 144

struct ctl_dest_row {
	struct ctl_ctx *c;
	struct ctl_out *o;
	int err;
};

/* One destination of relayd's "destinations" reply, as a table row:
 * DESTINATION STATE SESSIONS IN-FLIGHT, then what it waits for and its
 * last error on lines of their own. */
static int ctl_dest_row_cb(void *arg, const char *v, size_t vn)
{
	struct ctl_dest_row *t = arg;
	struct buf name = BUF_INIT(4096), st = BUF_INIT(64),
	           why = BUF_INIT(DELIVER_CTL_REPLY_MAX),
	           last = BUF_INIT(DELIVER_CTL_REPLY_MAX);
	int64_t until = 0, sessions = 0, flight = 0, ready = 0;
	int r = ctl_json_get_str(v, vn, "name", &name);
	if (r == 0)
		r = ctl_json_get_str(v, vn, "state", &st);
	if (r == 0)
		r = ctl_json_get_int(v, vn, "sessions", &sessions);
	if (r == 0)
		r = ctl_json_get_int(v, vn, "in_flight", &flight);
	if (r == 0)
		r = ctl_json_get_int(v, vn, "ready", &ready);
	if (r == 0)
		r = ctl_json_get_int(v, vn, "until", &until);
	if (r == 0)
		r = ctl_json_get_str(v, vn, "reason", &why);
	if (r == 0)
		r = ctl_json_get_str(v, vn, "last_error", &last);
	/* Direct mode, "may" after a failed handshake: plaintext until. */
	int64_t broken = 0;
	struct buf bwhy = BUF_INIT(DELIVER_CTL_REPLY_MAX);
	if (r == 0 && ctl_json_get_int(v, vn, "tls_broken_until", &broken) < 0)
		broken = 0;
	if (r == 0 && broken > 0 &&
	    ctl_json_get_str(v, vn, "tls_broken_reason", &bwhy) < 0)
		buf_reset(&bwhy);
	if (r == 0) {
		struct ctl_out *o = t->o;
		buf_append(&name, "", 1);
		buf_append(&st, "", 1);
		ctl_out_text_pad(o, (const char *)name.data, 40);
		ctl_out_printf(o, " %-8s %8" PRId64 " %9" PRId64 " %7" PRId64 "\n",
		               (const char *)st.data, sessions, flight, ready);
		const char *state = (const char *)st.data;
		bool held = strcmp(state, "paused") == 0 ||
		            strcmp(state, "throttled") == 0;
		if (held && until <= 0) {
			ctl_out_printf(o, "  %s until resumed", state);
		} else if (held) {
			char ts[64], age[32];
			ctl_fmt_time(ts, sizeof ts, until);
			ctl_fmt_age(age, sizeof age, until - t->c->now);
			ctl_out_printf(o, "  %s until %s (in %s)", state, ts, age);
		}
		if (held) {
			if (why.len) {
				ctl_out_str(o, ": ");
				ctl_out_text_max(o, why.data, why.len,
				                 CTL_DEST_TEXT_CHARS);
			}
			ctl_out_str(o, "\n");
		}
		if (broken > 0) {
			char ts[64], age[32];
			ctl_fmt_time(ts, sizeof ts, broken);
			ctl_fmt_age(age, sizeof age, broken - t->c->now);
			ctl_out_printf(o, "  TLS broken until %s (in %s), "
			               "plaintext", ts, age);
			if (bwhy.len) {
				ctl_out_str(o, ": ");
				ctl_out_text_max(o, bwhy.data, bwhy.len,
				                 CTL_DEST_TEXT_CHARS);
			}
			ctl_out_str(o, "\n");
		}
		if (last.len) {
			ctl_out_str(o, "  last error: ");
			ctl_out_text_max(o, last.data, last.len, CTL_DEST_TEXT_CHARS);
			ctl_out_str(o, "\n");
		}
	}
	buf_free(&name);
	buf_free(&st);
	buf_free(&why);
	buf_free(&last);
	buf_free(&bwhy);
	if (r < 0)
		t->err = -EPROTO;
	return r < 0 ? -EPROTO : 0;
}

int ctl_cmd_destinations(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	const char *spool = c->conf.spool_dir;
	struct ctl_out o;
	char *reply = malloc(DELIVER_CTL_REPLY_MAX);
	if (!reply) {
		ctl_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	ctl_out_init(&o);
	int r = ctl_control_request(spool, "destinations", CTL_CONTROL_TIMEOUT_MS,
	                            reply, DELIVER_CTL_REPLY_MAX);
	if (r == 0) {
		size_t n = strlen(reply);
		r = ctl_json_check(reply, n);
		if (r == 0 && c->json) {
			ctl_out_mem(&o, reply, n);   /* valid JSON, as sent */
			ctl_out_str(&o, "\n");
		} else if (r == 0) {
			struct ctl_dest_row t = {c, &o, 0};
			ctl_out_printf(&o, "%-40s %-8s %8s %9s %7s\n", "DESTINATION",
			               "STATE", "SESSIONS", "IN-FLIGHT", "WAITING");
			r = ctl_json_each(reply, n, "destinations", ctl_dest_row_cb,
			                  &t);
			if (r == 0)
				r = t.err;
		}
		if (r < 0)
			ctl_err("relayd sent a malformed destinations reply on %s/%s",
			        spool, QUEUE_CONTROL_NAME);
	} else if (r == -ECONNREFUSED) {
		/* Destinations live in the running daemon only. */
		if (c->json)
			ctl_out_str(&o, "{\"running\":false,\"destinations\":[]}\n");
		else
			ctl_out_str(&o, "relayd: not running (destinations exist "
			            "only while it runs)\n");
		r = 0;
	} else if (r == -EREMOTEIO) {
		ctl_err_text("", reply[0] ? reply : "relayd refused the request");
	} else {
		ctl_err_request(spool, r);
	}
	free(reply);
	if (r < 0) {
		ctl_out_free(&o);
		return r;
	}
	return ctl_print_line(&o);
}
