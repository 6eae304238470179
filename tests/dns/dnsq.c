/*
 * tests/dns/dnsq.c - test-only driver for dns/: runs queries through the
 * resolver on a libuv loop (with its cache) against the given servers and
 * prints each result in a stable text form, then the counters. Used by
 * tests/e2e/test_dns.py; not installed.
 *
 *   dnsq [-s SERVERS] [-t TRY_MS] [-T TRIES] [-d DEADLINE_MS] [-p] ITEM...
 *   ITEM: TYPE:NAME    MX, A, AAAA, TXT or PTR (PTR:192.0.2.1 asks the
 *                      reverse name of an address)
 *         cancel:TYPE:NAME  ask, then cancel at once (prints "cancelled"
 *                      unless the callback is wrongly called)
 *         reload       dns_reload() (same servers) before the next item
 *   -p: every item at once (coalescing); output still in item order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include <uv.h>

#include "common/buf.h"
#include "dns/dns.h"

#define ITEMS_MAX 64

struct item {
	const char *text;
	uint16_t type;
	char name[300];
	bool cancel, reload;
	bool done;
	struct buf out;
	struct dns_req *req;
};

static struct dns *d;
static struct item items[ITEMS_MAX];
static size_t nitems, next_item, pending;
static bool parallel;
static const char *servers;

static void put_txt(struct buf *b, const char *s, size_t n)
{
	buf_appends(b, "\"");
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		char e[8];
		if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') {
			snprintf(e, sizeof e, "\\%03u", ch);
			buf_appends(b, e);
		} else {
			buf_append(b, &s[i], 1);
		}
	}
	buf_appends(b, "\"");
}

static void format(struct item *it, const struct dns_result *r)
{
	char line[600];
	snprintf(line, sizeof line, "%s %s %s ttl=%u\n", dns_type_name(it->type),
	         r->qname, dns_status_names[r->status],
	         r->status == DNS_OK || r->status == DNS_NODATA ||
	         r->status == DNS_NXDOMAIN ? r->ttl : 0);
	buf_appends(&it->out, line);
	if (strcmp(r->canon, r->qname) != 0) {
		snprintf(line, sizeof line, "  canon %s\n", r->canon);
		buf_appends(&it->out, line);
	}
	if (r->nullmx)
		buf_appends(&it->out, "  nullmx\n");
	for (size_t i = 0; i < r->nrr; i++) {
		const struct dns_rr *rr = &r->rr[i];
		char a[64];
		switch (rr->type) {
		case DNS_T_MX:
			snprintf(line, sizeof line, "  MX %u %s\n", rr->pref, rr->name);
			break;
		case DNS_T_A:
		case DNS_T_AAAA:
			snprintf(line, sizeof line, "  %s %s\n", dns_type_name(rr->type),
			         dns_addr_str(&rr->addr, a, sizeof a));
			break;
		case DNS_T_PTR:
			snprintf(line, sizeof line, "  PTR %s\n", rr->name);
			break;
		case DNS_T_TXT:
			buf_appends(&it->out, "  TXT ");
			put_txt(&it->out, rr->txt, rr->txtlen);
			snprintf(line, sizeof line, "\n");
			break;
		}
		buf_appends(&it->out, line);
	}
}

static void run_next(void);
static void finish_all(void);

static void query_cb(void *arg, const struct dns_result *r)
{
	struct item *it = arg;
	if (it->cancel)
		buf_appends(&it->out, "ERROR: callback after cancel\n");
	else
		format(it, r);
	it->done = true;
	pending--;
	if (!parallel)
		run_next();
	else if (pending == 0)
		finish_all();
}

static void start(struct item *it)
{
	if (it->reload) {
		char err[256];
		int r = dns_reload(d, servers, err, sizeof err);
		buf_appends(&it->out, r < 0 ? "reload failed\n" : "reloaded\n");
		it->done = true;
		return;
	}
	enum dns_status st;
	pending++;
	it->req = dns_query(d, it->name, it->type, query_cb, it, &st);
	if (!it->req) {
		char line[400];
		snprintf(line, sizeof line, "%s %s %s (refused)\n",
		         dns_type_name(it->type), it->name, dns_status_names[st]);
		buf_appends(&it->out, line);
		it->done = true;
		pending--;
		return;
	}
	if (it->cancel) {
		dns_cancel(it->req);
		buf_appends(&it->out, "cancelled\n");
		pending--;
		it->done = true;
	}
}

static void closed_cb(void *arg)
{
	(void)arg;
	d = NULL;
}

static void finish_all(void)
{
	for (size_t i = 0; i < nitems; i++)
		fwrite(items[i].out.data, 1, items[i].out.len, stdout);
	struct dns_stats st;
	dns_get_stats(d, &st);
	printf("stats queries=%llu sent=%llu hits=%llu neg_hits=%llu "
	       "misses=%llu coalesced=%llu timeouts=%llu tempfails=%llu\n",
	       (unsigned long long)st.queries, (unsigned long long)st.sent,
	       (unsigned long long)st.hits, (unsigned long long)st.neg_hits,
	       (unsigned long long)st.misses, (unsigned long long)st.coalesced,
	       (unsigned long long)st.timeouts,
	       (unsigned long long)st.tempfails);
	fflush(stdout);
	dns_close(d, closed_cb, NULL);
}

/* Sequential mode: the next item once the last one answered (items that
 * finish at once, reload and cancel, do not wait). */
static void run_next(void)
{
	while (next_item < nitems) {
		struct item *it = &items[next_item++];
		start(it);
		if (!it->done)
			return;
	}
	if (pending == 0)
		finish_all();
}

static int parse_item(struct item *it, const char *s)
{
	it->text = s;
	if (strcmp(s, "reload") == 0) {
		it->reload = true;
		return 0;
	}
	if (strncmp(s, "cancel:", 7) == 0) {
		it->cancel = true;
		s += 7;
	}
	const char *colon = strchr(s, ':');
	if (!colon)
		return -1;
	static const uint16_t types[] = {DNS_T_MX, DNS_T_A, DNS_T_AAAA,
	                                 DNS_T_TXT, DNS_T_PTR};
	for (size_t i = 0; i < sizeof types / sizeof *types; i++)
		if (strlen(dns_type_name(types[i])) == (size_t)(colon - s) &&
		    strncmp(s, dns_type_name(types[i]), (size_t)(colon - s)) == 0)
			it->type = types[i];
	if (!it->type)
		return -1;
	const char *name = colon + 1;
	struct dns_addr a = {0};
	if (it->type == DNS_T_PTR && inet_pton(AF_INET, name, a.a) == 1)
		a.family = AF_INET;
	else if (it->type == DNS_T_PTR && inet_pton(AF_INET6, name, a.a) == 1)
		a.family = AF_INET6;
	if (a.family)
		return dns_reverse_name(&a, it->name, sizeof it->name);
	snprintf(it->name, sizeof it->name, "%s", name);
	return 0;
}

int main(int argc, char **argv)
{
	struct dns_opts o = {0};
	int opt;
	while ((opt = getopt(argc, argv, "s:t:T:d:p")) != -1) {
		switch (opt) {
		case 's': servers = optarg; break;
		case 't': o.timeout_ms = (unsigned)atoi(optarg); break;
		case 'T': o.tries = (unsigned)atoi(optarg); break;
		case 'd': o.deadline_ms = (unsigned)atoi(optarg); break;
		case 'p': parallel = true; break;
		default:
			fprintf(stderr, "usage: dnsq [-s SERVERS] [-t MS] [-T N] "
			        "[-d MS] [-p] TYPE:NAME|cancel:TYPE:NAME|reload...\n");
			return 2;
		}
	}
	if (optind == argc || argc - optind > ITEMS_MAX) {
		fprintf(stderr, "dnsq: 1 to %d items\n", ITEMS_MAX);
		return 2;
	}
	for (int i = optind; i < argc; i++) {
		struct item *it = &items[nitems++];
		buf_init(&it->out, 1 << 20);
		if (parse_item(it, argv[i]) < 0) {
			fprintf(stderr, "dnsq: bad item '%s'\n", argv[i]);
			return 2;
		}
	}
	o.servers = servers;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char err[256];
	if (dns_new(&loop, &o, &d, err, sizeof err) < 0) {
		fprintf(stderr, "dnsq: %s\n", err);
		return 1;
	}
	if (parallel) {
		next_item = nitems;
		for (size_t i = 0; i < nitems; i++)
			start(&items[i]);
		if (pending == 0)
			finish_all();
	} else {
		run_next();
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	int rc = 0;
	if (pending != 0 || d != NULL) {
		fprintf(stderr, "dnsq: loop ended with %zu pending\n", pending);
		rc = 1;
	}
	if (uv_loop_close(&loop) != 0) {
		fprintf(stderr, "dnsq: handles left open\n");
		rc = 1;
	}
	for (size_t i = 0; i < nitems; i++)
		buf_free(&items[i].out);
	return rc;
}
