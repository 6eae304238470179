/*
 * tests/dns/spfq.c - test-only driver for dns/spf.c: one check_host()
 * through dns/ on a libuv loop against the given DNS server, printing
 * the result as key=value lines. Used by tests/e2e/test_spf.py; not
 * installed.
 *
 *   spfq [--server IP:PORT] [--deadline MS] [--cancel] IP DOMAIN
 *        [SENDER] [HELO]
 *   --cancel: start the check and cancel it at once (prints "cancelled";
 *             the callback must never run).
 * Output: verdict=, lookups=, void=, queries=, mechanism=, path=, why=,
 * record= (each on its own line). Exit 0 when the loop closed cleanly.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include <uv.h>

#include "dns/spf.h"

static struct dns *d;
static int called;

static void closed_cb(void *arg)
{
	(void)arg;
	d = NULL;
}

static void done_cb(void *arg, const struct spf_result *r)
{
	(void)arg;
	called++;
	printf("verdict=%s\nlookups=%u\nvoid=%u\nqueries=%u\nmechanism=%s\n"
	       "path=%s\nwhy=%s\nrecord=%s\n", spf_verdict_names[r->verdict],
	       r->dns_lookups, r->void_lookups, r->queries, r->mechanism,
	       r->path, r->why, r->record);
	fflush(stdout);
	dns_close(d, closed_cb, NULL);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'},
		{"deadline", required_argument, NULL, 'd'},
		{"cancel", no_argument, NULL, 'c'},
		{NULL, 0, NULL, 0},
	};
	struct dns_opts o = {0};
	struct spf_query q = {0};
	bool cancel = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': o.servers = optarg; break;
		case 'd': q.deadline_ms = (unsigned)atoi(optarg); break;
		case 'c': cancel = true; break;
		default: goto usage;
		}
	}
	if (argc - optind < 2 || argc - optind > 4)
		goto usage;
	const char *ip = argv[optind];
	q.ip.family = strchr(ip, ':') ? AF_INET6 : AF_INET;
	if (inet_pton(q.ip.family, ip, q.ip.a) != 1) {
		fprintf(stderr, "spfq: bad address '%s'\n", ip);
		return 2;
	}
	q.domain = argv[optind + 1];
	q.sender = argc - optind > 2 ? argv[optind + 2] : "";
	q.helo = argc - optind > 3 ? argv[optind + 3] : NULL;

	uv_loop_t loop;
	uv_loop_init(&loop);
	char err[256];
	if (dns_new(&loop, &o, &d, err, sizeof err) < 0) {
		fprintf(stderr, "spfq: %s\n", err);
		return 1;
	}
	struct spf_req *req = spf_check(d, &q, done_cb, NULL);
	if (!req) {
		fprintf(stderr, "spfq: spf_check failed\n");
		return 1;
	}
	if (cancel) {
		spf_cancel(req);
		printf("cancelled\n");
		dns_close(d, closed_cb, NULL);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	int rc = 0;
	if (d != NULL || called != (cancel ? 0 : 1)) {
		fprintf(stderr, "spfq: loop ended with the check unfinished "
		        "(callbacks: %d)\n", called);
		rc = 1;
	}
	if (uv_loop_close(&loop) != 0) {
		fprintf(stderr, "spfq: handles left open\n");
		rc = 1;
	}
	return rc;
usage:
	fprintf(stderr, "usage: spfq [--server IP:PORT] [--deadline MS] "
	        "[--cancel] IP DOMAIN [SENDER] [HELO]\n");
	return 2;
}
