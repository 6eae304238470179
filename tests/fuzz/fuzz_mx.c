/*
 * tests/fuzz/fuzz_mx.c - libFuzzer harness for deliver/deliver_mx.c, fed
 * what DNS and a hostile recipient control: an MX answer (ordered, then
 * its hosts given addresses and turned into a try list under every
 * ip_preference) and an address-literal domain. Input: lines; a line
 * "PREF HOST" is an MX record, a line "@ADDR" gives the previous record
 * an address (inet_pton syntax), a line "[..." is a literal domain. The
 * checks are the contracts: bounds, order by preference, no refused
 * address in a try list, no duplicate.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "deliver/deliver_mx.h"

#define RECS 40
#define ADDRS 8

struct rnd {
	const uint8_t *d;
	size_t n, i;
};

static uint32_t rnd_next(void *ctx)
{
	struct rnd *r = ctx;
	uint32_t v = 0;
	for (int k = 0; k < 4 && r->n; k++)
		v = v << 8 | r->d[r->i++ % r->n];
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct deliver_mx mx[RECS];
	static struct deliver_addr addrs[RECS][ADDRS];
	size_t naddr[RECS] = {0};
	size_t n = 0;
	char line[300];
	struct deliver_endpoint listen[] = {
		{{AF_INET, {127, 0, 0, 1}}, 25}, {{AF_INET6, {0}}, 2525}};
	struct deliver_addr local[] = {{AF_INET, {8, 8, 8, 8}}};
	struct deliver_self self = {listen, 2, local, 1};

	for (size_t i = 0; i < size;) {
		size_t j = i;
		while (j < size && data[j] != '\n' && j - i < sizeof line - 1)
			j++;
		memcpy(line, data + i, j - i);
		line[j - i] = '\0';
		i = j + 1;
		if (line[0] == '[') {
			struct deliver_addr a;
			const char *why;
			enum deliver_literal_verdict v = deliver_mx_literal(
				line, line[1] & 1, &self, 25, &a, &why);
			if (v == DELIVER_LIT_OK &&
			    deliver_mx_addr_refused(&a, line[1] & 1))
				abort();
			if ((v == DELIVER_LIT_REFUSED || v == DELIVER_LIT_LOOP) &&
			    !why)
				abort();
		} else if (line[0] == '@' && n > 0 && naddr[n - 1] < ADDRS) {
			struct deliver_addr *a = &addrs[n - 1][naddr[n - 1]];
			memset(a, 0, sizeof *a);
			if (inet_pton(AF_INET, line + 1, a->a) == 1)
				a->family = AF_INET;
			else if (inet_pton(AF_INET6, line + 1, a->a) == 1)
				a->family = AF_INET6;
			else
				continue;
			naddr[n - 1]++;
		} else if (n < RECS) {
			char *sp = strchr(line, ' ');
			mx[n].pref = (uint16_t)atoi(line);
			snprintf(mx[n].host, sizeof mx[n].host, "%s", sp ? sp + 1 : "");
			n++;
		}
	}
	/* the addresses stay with their record through the ordering */
	struct deliver_mx_target t[RECS];
	for (size_t k = 0; k < n; k++) {
		t[k].host = mx[k].host;
		t[k].pref = mx[k].pref;
		t[k].addrs = addrs[k];
		t[k].naddrs = naddr[k];
	}
	struct rnd r = {data, size, 0};
	size_t m = n;
	enum deliver_mx_verdict v = deliver_mx_order(mx, &m, rnd_next, &r);
	if (m > DELIVER_MX_HOSTS_MAX || (v != DELIVER_MX_HOSTS && m != 0))
		abort();
	for (size_t k = 1; k < m; k++)
		if (mx[k].pref < mx[k - 1].pref ||
		    strcmp(mx[k].host, mx[k - 1].host) == 0)
			abort();

	for (int p = CONF_IP_AUTO; p <= CONF_IP_ANY; p++) {
		struct deliver_try_opts o = {(enum conf_ip_pref)p, size & 1,
		                             (size & 2) != 0, size & 4 ? 25 : 2525,
		                             &self, 0};
		struct deliver_try out[DELIVER_MX_ADDR_LIMIT];
		struct deliver_try_report rep;
		size_t got = 99;
		enum deliver_try_verdict tv =
			deliver_mx_try_list(t, n, &o, out, &got, &rep);
		if (tv != DELIVER_TRY_OK) {
			if (got != 0)
				abort();
			continue;
		}
		if (got == 0 || got > DELIVER_MX_ADDR_LIMIT)
			abort();
		for (size_t k = 0; k < got; k++) {
			if (out[k].target >= n ||
			    deliver_mx_addr_refused(&out[k].addr, o.allow_private) ||
			    (p == CONF_IP_IPV4 && out[k].addr.family != AF_INET) ||
			    (p == CONF_IP_IPV6 && out[k].addr.family != AF_INET6))
				abort();
			for (size_t q = 0; q < k; q++)
				if (out[q].addr.family == out[k].addr.family &&
				    memcmp(out[q].addr.a, out[k].addr.a, 16) == 0)
					abort();
		}
	}
	return 0;
}
