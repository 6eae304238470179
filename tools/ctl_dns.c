/*
 * tools/ctl_dns.c - relayctl's synchronous resolver (ctl_dns.h): owns a
 * uv_loop_t and a struct dns on it; a lookup starts one query and runs
 * the loop until its callback ran. Nothing else runs on that loop.
 */
#include "tools/ctl_dns.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct ctl_dns {
	uv_loop_t loop;
	struct dns *dns;
};

int ctl_dns_open(const struct conf *c, struct ctl_dns **out, char *err,
                 size_t errlen)
{
	*out = NULL;
	struct ctl_dns *cd = calloc(1, sizeof *cd);
	if (!cd) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int r = uv_loop_init(&cd->loop);
	if (r < 0) {
		snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(r));
		free(cd);
		return r;
	}
	struct dns_opts o = {.servers = c ? c->dns_servers : NULL};
	r = dns_new(&cd->loop, &o, &cd->dns, err, errlen);
	if (r < 0) {
		uv_loop_close(&cd->loop);
		free(cd);
		return r;
	}
	*out = cd;
	return 0;
}

struct ctl_dns_wait {
	dns_cb cb;
	void *arg;
	bool done;
};

static void ctl_dns_wait_cb(void *arg, const struct dns_result *res)
{
	struct ctl_dns_wait *w = arg;
	w->done = true;
	w->cb(w->arg, res);
}

/* A result for an answer that never came from dns/. */
static void ctl_dns_fake(dns_cb cb, void *arg, const char *name,
                         enum dns_type t, enum dns_status st)
{
	struct dns_result res = {.status = st, .qtype = (uint16_t)t,
	                         .qname = name, .canon = name};
	cb(arg, &res);
}

int ctl_dns_lookup(struct ctl_dns *cd, const char *name, enum dns_type t,
                   dns_cb cb, void *arg)
{
	struct ctl_dns_wait w = {.cb = cb, .arg = arg};
	enum dns_status st = DNS_TEMPFAIL;
	struct dns_req *q = dns_query(cd->dns, name, (uint16_t)t,
	                              ctl_dns_wait_cb, &w, &st);
	if (!q) {
		ctl_dns_fake(cb, arg, name, t, st);
		return 0;
	}
	/* dns/ ends every query by its deadline (dns_opts.deadline_ms), so
	 * this loop is bounded in time; the loop having nothing left to do
	 * before the callback is a bug in dns/, reported as a failure. */
	while (!w.done) {
		if (uv_run(&cd->loop, UV_RUN_ONCE) == 0 && !w.done) {
			dns_cancel(q);
			ctl_dns_fake(cb, arg, name, t, DNS_TEMPFAIL);
			return -EIO;
		}
	}
	return 0;
}

uv_loop_t *ctl_dns_loop(struct ctl_dns *cd)
{
	return &cd->loop;
}

struct dns *ctl_dns_dns(struct ctl_dns *cd)
{
	return cd->dns;
}

static void ctl_dns_closed_cb(void *arg)
{
	struct ctl_dns *cd = arg;
	cd->dns = NULL;
}

void ctl_dns_close(struct ctl_dns *cd)
{
	if (!cd)
		return;
	if (cd->dns) {
		dns_close(cd->dns, ctl_dns_closed_cb, cd);
		/* dns_close ends with done_cb from the loop; bounded since
		 * it only closes handles. */
		while (cd->dns && uv_run(&cd->loop, UV_RUN_ONCE) != 0)
			;
		uv_run(&cd->loop, UV_RUN_DEFAULT);
	}
	uv_loop_close(&cd->loop);
	free(cd);
}

int ctl_dns_source_addr(int family, struct dns_addr *out)
{
	/* Public addresses (Google's resolvers): only the
	 * route toward them matters, connect() on UDP sends nothing. */
	struct sockaddr_storage to;
	socklen_t tolen;
	memset(&to, 0, sizeof to);
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&to;
		s->sin_family = AF_INET;
		s->sin_port = htons(53);
		inet_pton(AF_INET, "8.8.8.8", &s->sin_addr);
		tolen = sizeof *s;
	} else if (family == AF_INET6) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&to;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons(53);
		inet_pton(AF_INET6, "2001:4860:4860::8888", &s->sin6_addr);
		tolen = sizeof *s;
	} else {
		return -EAFNOSUPPORT;
	}
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_storage me;
	socklen_t len = sizeof me;
	int r = 0;
	if (connect(fd, (struct sockaddr *)&to, tolen) < 0 ||
	    getsockname(fd, (struct sockaddr *)&me, &len) < 0)
		r = -errno;
	close(fd);
	if (r < 0)
		return r;
	memset(out, 0, sizeof *out);
	out->family = family;
	if (family == AF_INET)
		memcpy(out->a, &((struct sockaddr_in *)&me)->sin_addr, 4);
	else
		memcpy(out->a, &((struct sockaddr_in6 *)&me)->sin6_addr, 16);
	return 0;
}
