/*
 * tools/ctl_log.c - `relayctl log`: relayd's log_file, filtered, and
 * followed like `tail -F`.
 *
 *   relayctl log [-f] [--id ID] [--rcpt ADDR] [--from ADDR]
 *                [--status sent|deferred|bounced] [--since AGE|TIME]
 *                [-n N] [--json]
 *
 * Lines are read with common/logline.c. Filters:
 * - --status, --rcpt: delivery lines (to=<...>, status=...) only;
 * - --from: the "accepted" line of each message from ADDR, then every
 *   delivery line of those messages (their ids are remembered, in a
 *   bounded set);
 * - --id: the whole story of one message, every line naming it, and the
 *   lines of the notification (DSN) it caused;
 * - --since: lines at or after a time (an age: 30m, 2h, 1d; or a UTC time
 *   2026-12-05T10:00[:00]).
 * Without -f the last N matching lines are printed (-n, default 50; with
 * --id, all). With -f, after those, new lines as they are written:
 * rotation by rename (the old file is read to its end first, then the new
 * one from its start) and truncation (read again from the start) are
 * followed; polled every 200 ms. Reading is bounded: lines longer than
 * CTL_LOG_LINE_MAX are cut; memory is N lines plus the id set.
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/logline.h"

/* relayd writes lines of at most 4 KiB (common/log.c); a foreign or
 * damaged file may hold more: the rest of such a line is dropped. */
#define CTL_LOG_LINE_MAX 8192
#define CTL_LOG_N_DEFAULT 50
#define CTL_LOG_N_MAX 100000
/* Message ids remembered for --from and --id (DSN children). */
#define CTL_LOG_IDS (1u << 16)
#define CTL_LOG_POLL_MS 200

struct idset {
	char (*slot)[16];       /* open addressing; "" = empty */
	size_t n;
};

static uint32_t id_hash(const char *id)
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < 16; i++)
		h = (h ^ (unsigned char)id[i]) * 16777619u;
	return h;
}

static bool idset_has(const struct idset *s, const char *id)
{
	if (!s->slot)
		return false;
	for (uint32_t i = id_hash(id) & (CTL_LOG_IDS - 1);;
	     i = (i + 1) & (CTL_LOG_IDS - 1)) {
		if (!s->slot[i][0])
			return false;
		if (memcmp(s->slot[i], id, 16) == 0)
			return true;
	}
}

/* Bounded: at three quarters full the set starts again (ids of messages
 * accepted long before are then forgotten). */
static int idset_add(struct idset *s, const char *id)
{
	if (!s->slot) {
		s->slot = calloc(CTL_LOG_IDS, 16);
		if (!s->slot)
			return -ENOMEM;
	}
	if (idset_has(s, id))
		return 0;
	if (s->n >= CTL_LOG_IDS / 4 * 3) {
		memset(s->slot, 0, (size_t)CTL_LOG_IDS * 16);
		s->n = 0;
	}
	uint32_t i = id_hash(id) & (CTL_LOG_IDS - 1);
	while (s->slot[i][0])
		i = (i + 1) & (CTL_LOG_IDS - 1);
	memcpy(s->slot[i], id, 16);
	s->n++;
	return 0;
}

struct logf {
	const char *id;         /* --id, normalized */
	const char *rcpt, *from;
	enum logline_event status;   /* LOGEV_OTHER: any */
	int64_t since_ms;       /* -1: none */
	struct idset ids;       /* --from matches, --id's DSNs */
	bool json;
};

static bool field_is(const struct logline *l, const char *key,
                     const char *want)
{
	const struct logline_field *f = logline_get(l, key);
	return f && f->vallen == strlen(want) &&
	       strncasecmp(f->val, want, f->vallen) == 0;
}

static bool is_delivery(const struct logline *l)
{
	return l->ev == LOGEV_SENT || l->ev == LOGEV_DEFERRED ||
	       l->ev == LOGEV_BOUNCED;
}

static bool matches(struct logf *f, const struct logline *l)
{
	if (f->since_ms >= 0 && l->ms < f->since_ms)
		return false;
	if (f->id) {
		if (!l->id[0])
			return false;
		bool mine = strcmp(l->id, f->id) == 0;
		if (mine && l->ev == LOGEV_DSN)
			idset_add(&f->ids, l->dsn_id);
		if (!mine && !idset_has(&f->ids, l->id))
			return false;
	}
	if (f->from) {
		if (!l->id[0])
			return false;
		if (l->ev == LOGEV_ACCEPTED) {
			/* "<>": the null sender, as --from takes it. */
			const char *want = strcmp(f->from, "<>") == 0 ? "" : f->from;
			if (!field_is(l, "from", want))
				return false;
			idset_add(&f->ids, l->id);
		} else if (!is_delivery(l) || !idset_has(&f->ids, l->id)) {
			return false;
		}
	}
	if ((f->status != LOGEV_OTHER || f->rcpt) && !is_delivery(l))
		return false;
	if (f->status != LOGEV_OTHER && l->ev != f->status)
		return false;
	if (f->rcpt && !field_is(l, "to", f->rcpt))
		return false;
	return true;
}

static void out_json(struct ctl_out *o, const struct logline *l,
                     const char *line, size_t len)
{
	ctl_out_str(o, "{\"time\":");
	if (l->ms >= 0)
		ctl_out_json_str(o, l->time, l->timelen);
	else
		ctl_out_str(o, "null");
	ctl_out_printf(o, ",\"pid\":%ld,\"level\":", l->pid);
	if (l->levellen)
		ctl_out_json_str(o, l->level, l->levellen);
	else
		ctl_out_str(o, "null");
	ctl_out_str(o, ",\"id\":");
	ctl_out_json_strz(o, l->id[0] ? l->id : NULL);
	ctl_out_printf(o, ",\"event\":\"%s\"", logline_event_names[l->ev]);
	for (size_t i = 0; i < l->nf; i++) {
		/* A key twice (never in relayd's lines) is kept once. */
		bool dup = false;
		for (size_t k = 0; k < i && !dup; k++)
			dup = l->f[k].keylen == l->f[i].keylen &&
			      memcmp(l->f[k].key, l->f[i].key, l->f[i].keylen) == 0;
		if (dup || (l->f[i].keylen == 4 &&
		            memcmp(l->f[i].key, "text", 4) == 0))
			continue;
		ctl_out_str(o, ",");
		ctl_out_json_str(o, l->f[i].key, l->f[i].keylen);
		ctl_out_str(o, ":");
		ctl_out_json_str(o, l->f[i].val, l->f[i].vallen);
	}
	if (l->reply) {
		ctl_out_str(o, ",\"reply\":");
		ctl_out_json_str(o, l->reply, l->replylen);
	}
	if (l->ev == LOGEV_DSN) {
		ctl_out_str(o, ",\"dsn_id\":");
		ctl_out_json_strz(o, l->dsn_id);
	}
	ctl_out_str(o, ",\"text\":");
	ctl_out_json_str(o, l->text, l->textlen);
	(void)line;
	(void)len;
	ctl_out_str(o, "}\n");
}

static void out_line(struct logf *f, struct ctl_out *o,
                     const struct logline *l, const char *line, size_t len)
{
	if (f->json) {
		out_json(o, l, line, len);
		return;
	}
	/* relayd escapes what peers send; a file may hold anything else. */
	ctl_out_text(o, line, len, CTL_TEXT_TAB);
	ctl_out_str(o, "\n");
}

/* The last N matching lines of the pass over the existing file. */
struct ring {
	char **line;
	size_t *len;
	size_t cap, head, n;
};

static int ring_push(struct ring *r, const char *p, size_t n)
{
	if (r->cap == 0)
		return 0;
	char *copy = malloc(n ? n : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, p, n);
	size_t i = (r->head + r->n) % r->cap;
	if (r->n == r->cap) {
		free(r->line[r->head]);
		r->head = (r->head + 1) % r->cap;
		i = (r->head + r->n - 1) % r->cap;
	} else {
		r->n++;
	}
	r->line[i] = copy;
	r->len[i] = n;
	return 0;
}

/* A reader of lines from one file descriptor. */
struct lines {
	int fd;
	char buf[65536];
	size_t have;            /* bytes in buf */
	char line[CTL_LOG_LINE_MAX];
	size_t llen;
	bool cut;               /* the current line is over the cap */
};

/* Reads what is there; calls fn for each complete line. Returns 1 when
 * something was read, 0 at end of file, -errno. */
static int lines_read(struct lines *L, int (*fn)(void *, const char *, size_t),
                      void *arg)
{
	ssize_t r;
	do
		r = read(L->fd, L->buf, sizeof L->buf);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return 0;
	for (ssize_t i = 0; i < r; i++) {
		char ch = L->buf[i];
		if (ch == '\n') {
			int e = fn(arg, L->line, L->llen);
			L->llen = 0;
			L->cut = false;
			if (e < 0)
				return e;
		} else if (L->llen < sizeof L->line) {
			L->line[L->llen++] = ch;
		} else {
			L->cut = true;
		}
	}
	return 1;
}

struct pass {
	struct logf *f;
	struct ring *ring;      /* NULL: print at once (following) */
	struct ctl_out *o;
};

static int on_line(void *arg, const char *p, size_t n)
{
	struct pass *ps = arg;
	struct logline l;
	logline_parse(p, n, &l);
	if (!matches(ps->f, &l))
		return 0;
	if (ps->ring)
		return ring_push(ps->ring, p, n);
	out_line(ps->f, ps->o, &l, p, n);
	return 0;
}

static volatile sig_atomic_t ctl_log_stop;
static void on_stop(int sig)
{
	(void)sig;
	ctl_log_stop = 1;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int open_log(const char *path, struct stat *st)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	if (!S_ISREG(st->st_mode)) {
		close(fd);
		return -EINVAL;
	}
	return fd;
}

static int parse_opts(struct ctl_ctx *c, struct logf *f, long *nlines,
                      char idbuf[QUEUE_ID_SIZE])
{
	char esc[256];
	const char *v;
	f->since_ms = -1;
	f->json = c->json;
	if ((v = ctl_opt(c, "--id"))) {
		if (!ctl_qid_norm(v, idbuf))
			return ctl_usage_error("--id: '%s' is not a queue id",
			                       log_escape(esc, sizeof esc, v,
			                                  strlen(v)));
		f->id = idbuf;
	}
	f->rcpt = ctl_opt(c, "--rcpt");
	f->from = ctl_opt(c, "--from");
	if ((v = ctl_opt(c, "--status"))) {
		if (strcmp(v, "sent") == 0)
			f->status = LOGEV_SENT;
		else if (strcmp(v, "deferred") == 0)
			f->status = LOGEV_DEFERRED;
		else if (strcmp(v, "bounced") == 0)
			f->status = LOGEV_BOUNCED;
		else
			return ctl_usage_error("--status: '%s': use sent, deferred "
			                       "or bounced",
			                       log_escape(esc, sizeof esc, v,
			                                  strlen(v)));
	}
	if ((v = ctl_opt(c, "--since"))) {
		uint64_t ms;
		int64_t t = logline_time(v, strlen(v));
		if (t < 0 && strlen(v) == 16) {
			/* 2026-12-05T10:00: seconds left out. */
			char full[32];
			snprintf(full, sizeof full, "%s:00", v);
			t = logline_time(full, strlen(full));
		}
		if (t >= 0) {
			f->since_ms = t;
		} else if (conf_parse_duration(v, &ms) == 0 &&
		           ms / 1000 <= (uint64_t)c->now) {
			f->since_ms = c->now * 1000 - (int64_t)ms;
		} else {
			return ctl_usage_error("--since: '%s' is neither an age "
			                       "(30m, 2h, 1d) nor a UTC time "
			                       "(2026-12-05T10:00)",
			                       log_escape(esc, sizeof esc, v,
			                                  strlen(v)));
		}
	}
	*nlines = f->id ? CTL_LOG_N_MAX : CTL_LOG_N_DEFAULT;
	if ((v = ctl_opt(c, "-n"))) {
		char *end;
		errno = 0;
		long n = strtol(v, &end, 10);
		if (errno || end == v || *end || n < 0 || n > CTL_LOG_N_MAX)
			return ctl_usage_error("-n: '%s' is not a count from 0 to "
			                       "%d", log_escape(esc, sizeof esc, v,
			                                        strlen(v)),
			                       CTL_LOG_N_MAX);
		*nlines = n;
	}
	return 0;
}

int ctl_cmd_log(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	struct logf f = {0};
	char idbuf[QUEUE_ID_SIZE];
	long nlines = 0;
	int r = parse_opts(c, &f, &nlines, idbuf);
	if (r)
		return r;
	bool follow = ctl_opt(c, "-f") != NULL;
	const char *path = c->conf.log_file;
	if (!path || !path[0]) {
		ctl_err("log_file is not set in %s: relayd logs to stderr only "
		        "(under systemd: journalctl -u relayd)", c->conf_path);
		return -ENOENT;
	}

	struct stat st;
	int fd = open_log(path, &st);
	if (fd < 0 && !(follow && fd == -ENOENT)) {
		ctl_err("%s: %s", path, strerror(-fd));
		return fd;
	}

	struct ring ring = {0};
	struct ctl_out o;
	ctl_out_init(&o);
	struct lines *L = calloc(1, sizeof *L);
	if (nlines > 0) {
		ring.line = calloc((size_t)nlines, sizeof *ring.line);
		ring.len = calloc((size_t)nlines, sizeof *ring.len);
		ring.cap = (size_t)nlines;
	}
	if (!L || (nlines > 0 && (!ring.line || !ring.len))) {
		r = -ENOMEM;
		goto out;
	}
	L->fd = fd;

	/* The file as it is: the last N matching lines. */
	struct pass ps = {&f, &ring, &o};
	while (fd >= 0 && (r = lines_read(L, on_line, &ps)) > 0)
		;
	if (r < 0)
		goto out;
	for (size_t i = 0; i < ring.n; i++) {
		size_t k = (ring.head + i) % ring.cap;
		struct logline l;
		logline_parse(ring.line[k], ring.len[k], &l);
		out_line(&f, &o, &l, ring.line[k], ring.len[k]);
	}
	r = ctl_out_flush(&o, stdout);
	if (r < 0 || fflush(stdout) != 0 || !follow)
		goto out;

	/* Following: new lines as they come. */
	struct sigaction sa = {0};
	sa.sa_handler = on_stop;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	ps.ring = NULL;
	while (!ctl_log_stop) {
		int got = 0;
		if (L->fd >= 0) {
			got = lines_read(L, on_line, &ps);
			if (got < 0) {
				r = got;
				break;
			}
		}
		if (o.b.len) {
			r = ctl_out_flush(&o, stdout);
			if (r < 0 || fflush(stdout) != 0) {
				r = r < 0 ? r : -EIO;
				break;
			}
		}
		if (got > 0)
			continue;
		/* At the end: has the file been truncated, or replaced? */
		struct stat now, cur;
		if (L->fd >= 0 && fstat(L->fd, &cur) == 0) {
			off_t pos = lseek(L->fd, 0, SEEK_CUR);
			if (pos > cur.st_size) {
				lseek(L->fd, 0, SEEK_SET);
				L->llen = 0;
				continue;
			}
		}
		if (stat(path, &now) == 0 &&
		    (L->fd < 0 || now.st_ino != st.st_ino ||
		     now.st_dev != st.st_dev)) {
			struct stat nst;
			int nfd = open_log(path, &nst);
			if (nfd >= 0) {
				/* What relayd wrote to the old file between our
				 * last read and its reopen: read it to the end
				 * first (bounded: the file no longer grows once
				 * relayd writes to the new one). */
				int got2 = 0;
				for (int k = 0; L->fd >= 0 && k < 1024; k++) {
					got2 = lines_read(L, on_line, &ps);
					if (got2 <= 0)
						break;
				}
				if (got2 < 0) {
					close(nfd);
					r = got2;
					break;
				}
				st = nst;
				if (L->fd >= 0)
					close(L->fd);
				L->fd = nfd;
				L->llen = 0;
				continue;
			}
		}
		sleep_ms(CTL_LOG_POLL_MS);
	}
	if (ctl_log_stop)
		r = 0;
out:
	if (r == -ENOMEM)
		ctl_err("out of memory");
	else if (r < 0 && r != -EPIPE)
		ctl_err("%s: %s", path, strerror(-r));
	for (size_t i = 0; i < ring.n; i++)
		free(ring.line[(ring.head + i) % ring.cap]);
	free(ring.line);
	free(ring.len);
	free(f.ids.slot);
	if (L && L->fd >= 0)
		close(L->fd);
	free(L);
	ctl_out_free(&o);
	return r < 0 ? r : 0;
}
