/*
 * deliver/deliver_ctl.c - relayd's control socket (protocol: deliver_ctl.h):
 * a unix stream listener at spool_dir/control, mode 0600, answering only
 * its own user and root (SO_PEERCRED). One request line per connection,
 * bounded in length and time; the scheduler runs it (deliver_ctl_run) and
 * the reply goes back when the change it asked for is durable.
 */
#include "deliver/deliver_int.h"
#include "deliver/deliver_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"

/* A client has this long to send its request. */
#define CTL_TIMEOUT_MS 10000
/* Connections at once; more are refused. */
#define CTL_CONN_MAX 64

/* A verb served by another module (deliver_ctl_verb). */
struct ctl_verb {
	char name[16];
	deliver_ctl_verb_fn fn;
	void *arg;
};

struct deliver_ctl {
	struct deliver *d;
	struct ctl_verb verbs[DELIVER_CTL_VERBS_MAX];
	size_t nverbs;
	uv_loop_t *loop;
	uv_pipe_t srv;
	char path[PATH_MAX];
	unsigned nconn;
	struct ctl_conn *conns;     /* open connections */
	bool closing, srv_closed;
	void (*done_cb)(void *);
	void *done_arg;
};

struct ctl_conn {
	struct ctl_conn *next, **prev;
	struct deliver_ctl *ctl;
	uv_pipe_t pipe;
	uv_timer_t timer;
	uv_write_t wr;
	int refs;            /* handles (2) + a pending reply + a write */
	bool asked, answered, closing;
	size_t len;
	char line[DELIVER_CTL_LINE_MAX];
	char *out;
};

/* Frees c once the listener and every connection are closed. */
static void ctl_maybe_done(struct deliver_ctl *c)
{
	if (!c->closing || c->nconn || !c->srv_closed)
		return;
	void (*cb)(void *) = c->done_cb;
	void *arg = c->done_arg;
	free(c);
	if (cb)
		cb(arg);
}

static void conn_unref(struct ctl_conn *k)
{
	if (--k->refs > 0)
		return;
	struct deliver_ctl *c = k->ctl;
	*k->prev = k->next;
	if (k->next)
		k->next->prev = k->prev;
	free(k->out);
	free(k);
	c->nconn--;
	ctl_maybe_done(c);
}

static void conn_closed_cb(uv_handle_t *h)
{
	conn_unref(h->data);
}

static void conn_close(struct ctl_conn *k)
{
	if (k->closing)
		return;
	k->closing = true;
	uv_close((uv_handle_t *)&k->timer, conn_closed_cb);
	uv_close((uv_handle_t *)&k->pipe, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
	(void)status;
	struct ctl_conn *k = req->data;
	conn_close(k);
	conn_unref(k);
}

static void reply_cb(void *arg, const char *text)
{
	struct ctl_conn *k = arg;
	k->answered = true;
	if (k->closing) {
		conn_unref(k);   /* the client went away */
		return;
	}
	size_t n = strlen(text);
	k->out = malloc(n + 1);
	if (!k->out) {
		conn_close(k);
		conn_unref(k);
		return;
	}
	memcpy(k->out, text, n);
	k->out[n] = '\n';
	uv_buf_t b = uv_buf_init(k->out, (unsigned)(n + 1));
	k->wr.data = k;
	/* The pending-reply reference passes to the write. */
	if (uv_write(&k->wr, (uv_stream_t *)&k->pipe, &b, 1, write_cb) < 0) {
		conn_close(k);
		conn_unref(k);
	}
}

/* A verb of another module's: the handler answers at once. */
static bool run_verb(struct ctl_conn *k)
{
	struct deliver_ctl *c = k->ctl;
	size_t vl = strcspn(k->line, " ");
	for (size_t i = 0; i < c->nverbs; i++) {
		struct ctl_verb *v = &c->verbs[i];
		if (strlen(v->name) != vl || memcmp(v->name, k->line, vl) != 0)
			continue;
		const char *args = k->line[vl] ? k->line + vl + 1 : "";
		/* The text, its NUL here and its LF on the wire fit. */
		struct buf out = BUF_INIT(DELIVER_CTL_REPLY_MAX);
		int r = v->fn(v->arg, args, &out);
		if (r == 0 && out.len > 0)
			r = buf_append(&out, "", 1);
		if (r < 0 || out.len == 0) {
			reply_cb(k, r == -ENOBUFS ? "err reply too long" :
			            r < 0 ? "err out of memory" : "err no reply");
		} else {
			reply_cb(k, (const char *)out.data);
		}
		buf_free(&out);
		return true;
	}
	return false;
}

int deliver_ctl_add_verb(struct deliver_ctl *c, const char *verb,
                         deliver_ctl_verb_fn fn, void *arg)
{
	if (strlen(verb) >= sizeof c->verbs[0].name || strchr(verb, ' '))
		return -EINVAL;
	for (size_t i = 0; i < c->nverbs; i++)
		if (strcmp(c->verbs[i].name, verb) == 0)
			return -EEXIST;
	if (c->nverbs == DELIVER_CTL_VERBS_MAX)
		return -ENOSPC;
	struct ctl_verb *v = &c->verbs[c->nverbs++];
	snprintf(v->name, sizeof v->name, "%s", verb);
	v->fn = fn;
	v->arg = arg;
	return 0;
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	(void)hint;
	struct ctl_conn *k = h->data;
	b->base = k->line + k->len;
	b->len = sizeof k->line - k->len;
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
	(void)b;
	struct ctl_conn *k = st->data;
	if (n < 0) {
		conn_close(k);
		return;
	}
	k->len += (size_t)n;
	char *nl = memchr(k->line, '\n', k->len);
	if (!nl) {
		if (k->len == sizeof k->line) {
			uv_read_stop(st);
			k->refs++;
			k->asked = true;
			reply_cb(k, "err request too long");
		}
		return;
	}
	*nl = '\0';
	if (nl > k->line && nl[-1] == '\r')
		nl[-1] = '\0';
	uv_read_stop(st);
	uv_timer_stop(&k->timer);
	k->asked = true;
	k->refs++;   /* for the reply */
	char esc[DELIVER_CTL_LINE_MAX * 4];
	log_escape(esc, sizeof esc, k->line, strlen(k->line));
	log_info("control: %s", esc);
	if (!run_verb(k))
		deliver_ctl_run(k->ctl->d, k->line, reply_cb, k);
}

static void timeout_cb(uv_timer_t *t)
{
	conn_close(t->data);
}

static void accept_cb(uv_stream_t *srv, int status)
{
	struct deliver_ctl *c = srv->data;
	if (status < 0 || c->closing)
		return;
	struct ctl_conn *k = calloc(1, sizeof *k);
	if (!k)
		return;
	k->ctl = c;
	if (uv_pipe_init(c->loop, &k->pipe, 0) < 0) {
		free(k);
		return;
	}
	k->pipe.data = k;
	uv_timer_init(c->loop, &k->timer);
	k->timer.data = k;
	k->refs = 2;
	c->nconn++;
	k->next = c->conns;
	if (c->conns)
		c->conns->prev = &k->next;
	k->prev = &c->conns;
	c->conns = k;
	if (uv_accept(srv, (uv_stream_t *)&k->pipe) < 0) {
		conn_close(k);
		return;
	}
	/* Only relayd's own user and root may steer the queue. */
	uv_os_fd_t fd;
	struct ucred cr;
	socklen_t crlen = sizeof cr;
	if (uv_fileno((uv_handle_t *)&k->pipe, &fd) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 ||
	    (cr.uid != 0 && cr.uid != getuid())) {
		log_warn("control: refused a connection from uid %ld",
		         crlen == sizeof cr ? (long)cr.uid : -1L);
		k->refs++;
		k->asked = true;
		reply_cb(k, "err permission denied");
		return;
	}
	if (c->nconn > CTL_CONN_MAX) {
		k->refs++;
		k->asked = true;
		reply_cb(k, "err busy");
		return;
	}
	uv_timer_start(&k->timer, timeout_cb, CTL_TIMEOUT_MS, 0);
	uv_read_start((uv_stream_t *)&k->pipe, alloc_cb, read_cb);
}

int deliver_ctl_open(struct deliver *d, uv_loop_t *loop, const char *spool_dir,
                     struct deliver_ctl **out)
{
	struct deliver_ctl *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->d = d;
	c->loop = loop;
	int n = snprintf(c->path, sizeof c->path, "%s/%s", spool_dir,
	                 QUEUE_CONTROL_NAME);
	if (n < 0 || (size_t)n >= sizeof c->path ||
	    (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		log_err("control: socket path too long: %s/%s", spool_dir,
		        QUEUE_CONTROL_NAME);
		free(c);
		return -ENAMETOOLONG;
	}
	int r = uv_pipe_init(loop, &c->srv, 0);
	if (r < 0) {
		free(c);
		return r;
	}
	c->srv.data = c;
	/* A socket left by a relayd that was killed: the spool is ours now
	 * (the index lock says so). Created with mode 0600 from the start. */
	unlink(c->path);
	mode_t old = umask(077);
	r = uv_pipe_bind(&c->srv, c->path);
	umask(old);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&c->srv, 16, accept_cb);
	if (r < 0) {
		log_err("control: cannot listen on %s: %s", c->path, uv_strerror(r));
		deliver_ctl_close(c, NULL, NULL);
		return r;
	}
	chmod(c->path, 0600);
	*out = c;
	return 0;
}

static void srv_closed_cb(uv_handle_t *h)
{
	struct deliver_ctl *c = h->data;
	c->srv_closed = true;
	ctl_maybe_done(c);
}

void deliver_ctl_close(struct deliver_ctl *c, void (*done_cb)(void *arg),
                       void *arg)
{
	c->closing = true;
	c->done_cb = done_cb;
	c->done_arg = arg;
	unlink(c->path);
	/* Connections still reading a request go; one waiting for its reply
	 * gets it (the scheduler finishes its changes before it stops). */
	for (struct ctl_conn *k = c->conns; k; k = k->next)
		if (!k->asked)
			conn_close(k);
	uv_close((uv_handle_t *)&c->srv, srv_closed_cb);
}
