/*
 * dns/dns.c - the resolver's shell: c-ares 1.18 on the libuv loop. The
 * only file of relayd that includes <ares.h>. c-ares tells us its sockets
 * through ARES_OPT_SOCK_STATE_CB: one uv_poll_t per socket calls
 * ares_process_fd; one uv_timer_t, armed from ares_timeout(), drives
 * c-ares' retries, our per-query deadlines and the delivery of results.
 * Queries go out raw (ares_send of ares_create_query) and the answers are
 * read by dns_parse.c; results are cached in dns_cache.c. Identical
 * queries in flight share one c-ares query. Callbacks are never made from
 * inside c-ares or dns_query: finished requests wait for the timer (0 ms).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include <ares.h>
#include <uv.h>

#include "common/conf.h"
#include "common/log.h"
#include "dns/dns.h"
#include "dns/dns_int.h"

struct dns_req {
	struct dns_req *next;
	dns_cb cb;                 /* NULL once cancelled */
	void *arg;
	struct dns_result *res;    /* cache hits: delivered from the ready list */
};

/* One query in flight (or finished, waiting to be delivered). */
struct dns_q {
	struct dns_q *next;        /* d->inflight or d->done */
	struct dns *d;
	uint16_t type;
	char name[DNS_NAME_MAX + 1];
	struct dns_req *waiters, **tail;
	uint64_t deadline_ms;
	struct dns_result *res;    /* set when finished */
	const char *why;
	bool finished;             /* off the inflight list */
	bool in_ares;              /* c-ares still holds a pointer to us */
	bool delivered;
};

struct dns_poll {
	struct dns_poll *next;
	struct dns *d;
	uv_poll_t h;
	ares_socket_t fd;
};

struct dns {
	uv_loop_t *loop;
	ares_channel ch;
	struct dns_opts o;
	char *servers;             /* the dns_servers text in force */
	struct dns_cache *cache;
	struct dns_q *inflight;
	struct dns_q *done, **done_tail;      /* FIFO: delivered in order */
	struct dns_req *ready, **ready_tail;  /* cache hits to deliver */
	struct dns_poll *polls;
	uv_timer_t timer;
	unsigned open_handles;
	bool reissuing;            /* ares_destroy of an old channel: re-send */
	bool closing;
	void (*done_cb)(void *);
	void *done_arg;
	struct dns_stats st;
};

static void rearm(struct dns *d);

static uint64_t now_ms(const struct dns *d)
{
	return uv_now(d->loop);
}

/* ---- sockets ------------------------------------------------------------- */

static void poll_closed_cb(uv_handle_t *h)
{
	struct dns_poll *p = h->data;
	struct dns *d = p->d;
	free(p);
	if (--d->open_handles == 0 && d->closing && d->done_cb) {
		void (*cb)(void *) = d->done_cb;
		void *arg = d->done_arg;
		free(d);
		cb(arg);
	}
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	struct dns_poll *p = h->data;
	struct dns *d = p->d;
	/* An error on the socket: let c-ares read and write to find out. */
	bool r = status < 0 || (events & UV_READABLE);
	bool w = status < 0 || (events & UV_WRITABLE);
	ares_process_fd(d->ch, r ? p->fd : ARES_SOCKET_BAD,
	                w ? p->fd : ARES_SOCKET_BAD);
	rearm(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable,
                          int writable)
{
	struct dns *d = data;
	struct dns_poll **pp = &d->polls, *p;
	while ((p = *pp) && p->fd != fd)
		pp = &p->next;
	if (!readable && !writable) {
		if (p) {
			*pp = p->next;
			uv_poll_stop(&p->h);
			uv_close((uv_handle_t *)&p->h, poll_closed_cb);
		}
		return;
	}
	if (!p) {
		p = calloc(1, sizeof *p);
		if (!p) {
			log_err("dns: out of memory watching a socket");
			return;   /* the query times out */
		}
		int r = uv_poll_init_socket(d->loop, &p->h, fd);
		if (r < 0) {
			log_err("dns: uv_poll_init_socket: %s", uv_strerror(r));
			free(p);
			return;
		}
		p->d = d;
		p->fd = fd;
		p->h.data = p;
		p->next = d->polls;
		d->polls = p;
		d->open_handles++;
	}
	int ev = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
	int r = uv_poll_start(&p->h, ev, poll_cb);
	if (r < 0)
		log_err("dns: uv_poll_start: %s", uv_strerror(r));
}

/* ---- channels ------------------------------------------------------------ */

static int make_channel(struct dns *d, const char *servers, ares_channel *out,
                        char *err, size_t errlen)
{
	struct ares_options ao;
	memset(&ao, 0, sizeof ao);
	ao.sock_state_cb = sock_state_cb;
	ao.sock_state_cb_data = d;
	ao.timeout = (int)d->o.timeout_ms;
	ao.tries = (int)d->o.tries;
	/* We never search domains or read HOSTALIASES: names are asked as
	 * they are. */
	ao.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
	           ARES_OPT_FLAGS;
	ares_channel ch;
	int r = ares_init_options(&ch, &ao, mask);
	if (r != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(r));
		return r == ARES_ENOMEM ? -ENOMEM : -EIO;
	}
	if (servers && *servers) {
		struct conf_dns_server s[CONF_DNS_SERVERS_MAX];
		struct ares_addr_port_node node[CONF_DNS_SERVERS_MAX];
		int n = conf_parse_dns_servers(servers, s, CONF_DNS_SERVERS_MAX,
		                               err, errlen);
		if (n < 0) {
			ares_destroy(ch);
			return -EINVAL;
		}
		memset(node, 0, sizeof node);
		for (int i = 0; i < n; i++) {
			node[i].next = i + 1 < n ? &node[i + 1] : NULL;
			node[i].family = s[i].ipv6 ? AF_INET6 : AF_INET;
			if (s[i].ipv6)
				inet_pton(AF_INET6, s[i].host, &node[i].addr.addr6);
			else
				inet_pton(AF_INET, s[i].host, &node[i].addr.addr4);
			node[i].udp_port = node[i].tcp_port = s[i].port;
		}
		r = ares_set_servers_ports(ch, n ? node : NULL);
		if (r != ARES_SUCCESS) {
			snprintf(err, errlen, "c-ares: setting servers: %s",
			         ares_strerror(r));
			ares_destroy(ch);
			return r == ARES_ENOMEM ? -ENOMEM : -EIO;
		}
	}
	*out = ch;
	return 0;
}

/* ---- finishing queries --------------------------------------------------- */

/* Off the inflight list, onto the done list with its result. */
static void finish(struct dns_q *q, struct dns_result *res, const char *why)
{
	struct dns *d = q->d;
	struct dns_q **pp = &d->inflight;
	while (*pp && *pp != q)
		pp = &(*pp)->next;
	if (*pp)
		*pp = q->next;
	q->finished = true;
	q->res = res;
	q->why = why;
	q->next = NULL;
	*d->done_tail = q;
	d->done_tail = &q->next;
	if (res->status == DNS_TEMPFAIL)
		d->st.tempfails++;
	if (log_enabled(LOG_DEBUG))
		log_debug("dns: %s %s: %s%s%s", dns_type_name(q->type), q->name,
		          dns_status_names[res->status], *why ? ", " : "", why);
	else if (res->status == DNS_TEMPFAIL)
		log_info("dns: %s %s: temporary failure (%s)",
		         dns_type_name(q->type), q->name, why);
}

static void q_free_if_idle(struct dns_q *q)
{
	if (q->delivered && !q->in_ares) {
		dns_result_unref(q->res);
		free(q);
	}
}

static int send_q(struct dns *d, struct dns_q *q);

static void ares_cb(void *arg, int status, int timeouts, unsigned char *abuf,
                    int alen)
{
	(void)timeouts;
	struct dns_q *q = arg;
	struct dns *d = q->d;
	q->in_ares = false;
	if (q->finished) {         /* the deadline came first */
		q_free_if_idle(q);
		return;
	}
	if (status == ARES_EDESTRUCTION && d->reissuing && !d->closing) {
		/* dns_reload: the old channel is going; the new one asks. */
		if (send_q(d, q) == 0)
			return;
	}
	struct dns_result *res = NULL;
	enum dns_status st;
	const char *why = "";
	if (abuf && alen > 0) {
		st = dns_parse(abuf, (size_t)alen, q->name, q->type, &res, &why);
	} else {
		why = ares_strerror(status);
		switch (status) {
		case ARES_ENOMEM: st = DNS_NOMEM; break;
		case ARES_EBADNAME: st = DNS_BADNAME; break;
		case ARES_ETIMEOUT:
			d->st.timeouts++;
			/* fall through */
		default: st = DNS_TEMPFAIL; break;
		}
	}
	if (!res) {
		res = dns_result_new_status(st, q->name, q->type);
		if (!res) {
			/* Deliver something: a static NOMEM result. */
			static struct dns_result nomem = {
				.status = DNS_NOMEM, .qname = "", .canon = "",
				.refs = 1u << 30,
			};
			res = &nomem;
			why = "out of memory";
		}
	} else if (dns_cache_put(d->cache, res, now_ms(d)) < 0) {
		log_warn("dns: out of memory caching %s %s",
		         dns_type_name(q->type), q->name);
	}
	finish(q, res, why);
	rearm(d);
}

static int send_q(struct dns *d, struct dns_q *q)
{
	unsigned char *buf;
	int len;
	int r = ares_create_query(q->name, 1 /* IN */, q->type, 0, 1, &buf,
	                          &len, 0);
	if (r != ARES_SUCCESS)
		return r == ARES_ENOMEM ? -ENOMEM : -EINVAL;
	q->in_ares = true;
	d->st.sent++;
	/* c-ares picks the id; it may call ares_cb before returning (no
	 * servers, no memory): ares_cb only queues the result. */
	ares_send(d->ch, buf, len, ares_cb, q);
	ares_free_string(buf);
	return 0;
}

/* ---- delivery, deadlines, the timer -------------------------------------- */

static void deliver_all(struct dns *d)
{
	/* Take the lists: callbacks may add to them. */
	struct dns_req *ready = d->ready;
	d->ready = NULL;
	d->ready_tail = &d->ready;
	while (ready) {
		struct dns_req *r = ready;
		ready = r->next;
		if (r->cb)
			r->cb(r->arg, r->res);
		dns_result_unref(r->res);
		free(r);
	}
	struct dns_q *done = d->done;
	d->done = NULL;
	d->done_tail = &d->done;
	while (done) {
		struct dns_q *q = done;
		done = q->next;
		/* Waiters are taken one at a time, so a callback that
		 * cancels a later waiter of the same query is honoured. */
		while (q->waiters) {
			struct dns_req *r = q->waiters;
			q->waiters = r->next;
			if (r->cb)
				r->cb(r->arg, q->res);
			free(r);
		}
		q->delivered = true;
		q_free_if_idle(q);
	}
}

static void check_deadlines(struct dns *d)
{
	uint64_t now = now_ms(d);
	struct dns_q *q = d->inflight;
	while (q) {
		struct dns_q *next = q->next;
		if (q->deadline_ms <= now || d->closing) {
			struct dns_result *res =
				dns_result_new_status(DNS_TEMPFAIL, q->name, q->type);
			if (res) {
				if (!d->closing)
					d->st.timeouts++;
				finish(q, res, d->closing ? "resolver closing"
				                          : "deadline");
			}
		}
		q = next;
	}
}

static void close_timer_cb(uv_handle_t *h)
{
	struct dns *d = h->data;
	if (--d->open_handles == 0 && d->done_cb) {
		void (*cb)(void *) = d->done_cb;
		void *arg = d->done_arg;
		free(d);
		cb(arg);
	}
}

static void timer_cb(uv_timer_t *t)
{
	struct dns *d = t->data;
	if (d->ch)
		ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	check_deadlines(d);
	deliver_all(d);
	if (d->closing && !d->inflight && !d->done && !d->ready) {
		if (d->ch) {
			/* Every query is finished: c-ares' callbacks only free
			 * them now (EDESTRUCTION), and its sockets close. */
			ares_destroy(d->ch);
			d->ch = NULL;
			ares_library_cleanup();
		}
		dns_cache_free(d->cache);
		d->cache = NULL;
		free(d->servers);
		d->servers = NULL;
		if (!uv_is_closing((uv_handle_t *)&d->timer))
			uv_close((uv_handle_t *)&d->timer, close_timer_cb);
		return;
	}
	rearm(d);
}

static void rearm(struct dns *d)
{
	if (uv_is_closing((uv_handle_t *)&d->timer))
		return;
	uint64_t wait = UINT64_MAX;
	if (d->ready || d->done || d->closing) {
		wait = 0;
	} else {
		struct timeval tv;
		if (d->ch && ares_timeout(d->ch, NULL, &tv))
			wait = (uint64_t)tv.tv_sec * 1000 +
			       ((uint64_t)tv.tv_usec + 999) / 1000;
		uint64_t now = now_ms(d);
		for (struct dns_q *q = d->inflight; q; q = q->next) {
			uint64_t w = q->deadline_ms > now ? q->deadline_ms - now : 0;
			if (w < wait)
				wait = w;
		}
	}
	if (wait == UINT64_MAX) {
		uv_timer_stop(&d->timer);
		return;
	}
	int r = uv_timer_start(&d->timer, timer_cb, wait, 0);
	if (r < 0)
		log_err("dns: uv_timer_start: %s", uv_strerror(r));
}

/* ---- the API --------------------------------------------------------------- */

int dns_new(uv_loop_t *loop, const struct dns_opts *o, struct dns **out,
            char *err, size_t errlen)
{
	*out = NULL;
	struct dns *d = calloc(1, sizeof *d);
	if (!d) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	d->loop = loop;
	d->o = *o;
	d->done_tail = &d->done;
	d->ready_tail = &d->ready;
	if (!d->o.timeout_ms) d->o.timeout_ms = 2000;
	if (!d->o.tries) d->o.tries = 2;
	if (!d->o.deadline_ms) d->o.deadline_ms = 15000;
	if (!d->o.cache_entries) d->o.cache_entries = 10000;
	if (!d->o.cache_bytes) d->o.cache_bytes = 8u << 20;
	if (!d->o.ttl_min) d->o.ttl_min = 5;
	if (!d->o.ttl_max) d->o.ttl_max = 86400;
	if (!d->o.neg_ttl_max) d->o.neg_ttl_max = 3600;
	d->servers = strdup(o->servers ? o->servers : "");
	d->o.servers = NULL;
	struct dns_cache_opts co = {
		.max_entries = d->o.cache_entries, .max_bytes = d->o.cache_bytes,
		.ttl_min = d->o.ttl_min, .ttl_max = d->o.ttl_max,
		.neg_ttl_max = d->o.neg_ttl_max,
	};
	d->cache = dns_cache_new(&co);
	if (!d->servers || !d->cache) {
		snprintf(err, errlen, "out of memory");
		goto fail_mem;
	}
	int r = ares_library_init(ARES_LIB_INIT_ALL);
	if (r != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(r));
		goto fail_mem;
	}
	r = make_channel(d, d->servers, &d->ch, err, errlen);
	if (r < 0) {
		ares_library_cleanup();
		dns_cache_free(d->cache);
		free(d->servers);
		free(d);
		return r;
	}
	r = uv_timer_init(loop, &d->timer);
	if (r < 0) {
		snprintf(err, errlen, "uv_timer_init: %s", uv_strerror(r));
		ares_destroy(d->ch);
		ares_library_cleanup();
		dns_cache_free(d->cache);
		free(d->servers);
		free(d);
		return r;
	}
	d->timer.data = d;
	d->open_handles = 1;
	*out = d;
	return 0;
fail_mem:
	dns_cache_free(d->cache);
	free(d->servers);
	free(d);
	return -ENOMEM;
}

int dns_reload(struct dns *d, const char *servers, char *err, size_t errlen)
{
	if (d->closing)
		return -ESHUTDOWN;
	char *s = strdup(servers ? servers : d->servers);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ares_channel ch;
	int r = make_channel(d, s, &ch, err, errlen);
	if (r < 0) {
		free(s);
		return r;
	}
	ares_channel old = d->ch;
	d->ch = ch;
	free(d->servers);
	d->servers = s;
	/* c-ares 1.18 has no ares_reinit: its queries end with
	 * ARES_EDESTRUCTION, and ares_cb asks the new channel again. */
	d->reissuing = true;
	ares_destroy(old);
	d->reissuing = false;
	rearm(d);
	log_info("dns: resolver reloaded (servers: %s)",
	         *s ? s : "/etc/resolv.conf");
	return 0;
}

void dns_close(struct dns *d, void (*done_cb)(void *), void *arg)
{
	d->closing = true;
	d->done_cb = done_cb;
	d->done_arg = arg;
	rearm(d);   /* the timer fails what is in flight, then closes */
}

struct dns_req *dns_query(struct dns *d, const char *name, uint16_t type,
                          dns_cb cb, void *arg, enum dns_status *err)
{
	char norm[DNS_NAME_MAX + 1];
	d->st.queries++;
	if (!dns_type_name(type) || type == DNS_T_SOA ||
	    dns_name_norm(name, norm, sizeof norm) < 0) {
		*err = DNS_BADNAME;
		return NULL;
	}
	if (d->closing) {
		*err = DNS_TEMPFAIL;
		return NULL;
	}
	struct dns_req *req = calloc(1, sizeof *req);
	if (!req) {
		*err = DNS_NOMEM;
		return NULL;
	}
	req->cb = cb;
	req->arg = arg;
	struct dns_result *hit = dns_cache_get(d->cache, type, norm, now_ms(d));
	if (hit) {
		d->st.hits++;
		if (hit->status != DNS_OK)
			d->st.neg_hits++;
		req->res = dns_result_ref(hit);
		*d->ready_tail = req;
		d->ready_tail = &req->next;
		rearm(d);
		return req;
	}
	d->st.misses++;
	struct dns_q *q;
	for (q = d->inflight; q; q = q->next)
		if (q->type == type && strcmp(q->name, norm) == 0)
			break;
	if (q) {
		d->st.coalesced++;
	} else {
		q = calloc(1, sizeof *q);
		if (!q) {
			free(req);
			*err = DNS_NOMEM;
			return NULL;
		}
		q->d = d;
		q->type = type;
		memcpy(q->name, norm, strlen(norm) + 1);
		q->tail = &q->waiters;
		q->deadline_ms = now_ms(d) + d->o.deadline_ms;
		q->next = d->inflight;
		d->inflight = q;
	}
	*q->tail = req;
	q->tail = &req->next;
	if (!q->in_ares && !q->finished) {
		int r = send_q(d, q);
		if (r < 0) {
			struct dns_result *res = dns_result_new_status(
				r == -ENOMEM ? DNS_NOMEM : DNS_BADNAME, q->name, type);
			if (res)
				finish(q, res, "cannot build the query");
			/* else: the deadline fails it */
		}
	}
	rearm(d);
	return req;
}

void dns_cancel(struct dns_req *req)
{
	if (req)
		req->cb = NULL;
}

void dns_get_stats(const struct dns *d, struct dns_stats *st)
{
	*st = d->st;
}

const char *dns_library_version(void)
{
	return ares_version(NULL);
}
