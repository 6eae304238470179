/*
 * tests/fuzz/fuzz_dns.c - libFuzzer harness for dns/dns_parse.c, the walk
 * of raw DNS answers. Input: one byte choosing the question (type: low 3
 * bits, name: next 2 bits), then the message. A parsed result must keep
 * every bound (records, names, TXT, CNAME hops) and be consistent; the
 * cache takes it and gives it back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns/dns_int.h"

static const uint16_t types[8] = {
	DNS_T_MX, DNS_T_A, DNS_T_AAAA, DNS_T_TXT, DNS_T_PTR, DNS_T_CNAME,
	DNS_T_MX, DNS_T_TXT,
};
static const char *const names[4] = {
	"example.test", "test", "a.test", "2.0.0.127.in-addr.arpa",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint16_t qtype = types[data[0] & 7];
	const char *qname = names[(data[0] >> 3) & 3];
	struct dns_result *r;
	const char *why = NULL;
	enum dns_status st = dns_parse(data + 1, size - 1, qname, qtype, &r,
	                               &why);
	if (!why)
		abort();
	if (st == DNS_TEMPFAIL || st == DNS_NOMEM) {
		if (r || !*why)
			abort();
		return 0;
	}
	if (!r || r->status != st || r->qtype != qtype ||
	    strcmp(r->qname, qname) != 0 || strlen(r->canon) > DNS_NAME_MAX ||
	    r->nrr > DNS_RR_MAX || (st == DNS_OK) != (r->nrr > 0) ||
	    (r->nullmx && (qtype != DNS_T_MX || r->nrr != 1)))
		abort();
	for (size_t i = 0; i < r->nrr; i++) {
		const struct dns_rr *rr = &r->rr[i];
		if (rr->type != qtype || rr->ttl > 0x7fffffffu || rr->ttl < r->ttl)
			abort();
		switch (qtype) {
		case DNS_T_A:
			if (rr->addr.family != AF_INET)
				abort();
			break;
		case DNS_T_AAAA:
			if (rr->addr.family != AF_INET6)
				abort();
			break;
		case DNS_T_TXT:
			if (rr->txtlen > DNS_TXT_MAX || rr->txt[rr->txtlen] != '\0')
				abort();
			break;
		default:
			if (strlen(rr->name) > DNS_NAME_MAX)
				abort();
			/* Names we hand out are plain LDH/underscore text. */
			for (const char *p = rr->name; *p; p++)
				if (*p == ' ' || (unsigned char)*p < 0x21 ||
				    (unsigned char)*p > 0x7e)
					abort();
		}
	}
	struct dns_cache_opts o = {
		.max_entries = 2, .max_bytes = 1 << 20,
		.ttl_min = 5, .ttl_max = 86400, .neg_ttl_max = 3600,
	};
	struct dns_cache *c = dns_cache_new(&o);
	if (c) {
		if (dns_cache_put(c, r, 0) == 0 &&
		    dns_cache_get(c, qtype, qname, 4999) != r)
			abort();
		dns_cache_free(c);
	}
	dns_result_unref(r);
	return 0;
}
