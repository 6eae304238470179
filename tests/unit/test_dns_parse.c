/*
 * tests/unit/test_dns_parse.c - dns/dns_parse.c and dns/dns_cache.c:
 * raw DNS answers built byte by byte (MX with compression, CNAME chains
 * ok / too long / looping, NXDOMAIN and NODATA with and without an SOA,
 * truncation, answers to another question, oversize counts, bad
 * compression pointers, null MX, multi-string TXT), name checks, reverse
 * names, and the cache (TTL expiry on an injected clock, LRU and byte
 * bounds, negative TTL clamp, TEMPFAIL never stored).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "dns/dns_int.h"

/* ---- message bytes ------------------------------------------------------ */

#define HDR(fl, qd, an, ns) 0x12, 0x34, (fl) >> 8, (fl) & 0xff, 0, qd, 0, an, \
                            0, ns, 0, 0
#define EX 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 4, 't', 'e', 's', 't', 0
#define Q(t) EX, 0, t, 0, 1            /* the question: 18 bytes at 12 */
#define PQ 0xc0, 12                    /* -> example.test */
#define PT 0xc0, 20                    /* -> test */
#define TTL(x) ((x) >> 24) & 0xff, ((x) >> 16) & 0xff, ((x) >> 8) & 0xff, \
               (x) & 0xff
#define RR(t, ttl, len) 0, t, 0, 1, TTL(ttl), 0, len
/* SOA rdata for "test": ns.test hostmaster.test, serial..minimum. */
#define SOA(ttl, min) PT, RR(6, ttl, 38), 2, 'n', 's', PT, \
	10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r', PT, \
	TTL(1), TTL(3600), TTL(600), TTL(86400), TTL(min)

#define NOERR 0x8180
#define NXDOM 0x8183

static const uint8_t m_mx[] = {
	HDR(NOERR, 1, 2, 0), Q(15),
	PQ, RR(15, 300, 8), 0, 10, 3, 'm', 'x', '1', PQ,
	PQ, RR(15, 200, 8), 0, 5, 3, 'm', 'x', '2', PQ,
};
/* The second MX points at the first one's name (offset 44). */
static const uint8_t m_mx_ptr2[] = {
	HDR(NOERR, 1, 2, 0), Q(15),
	PQ, RR(15, 300, 8), 0, 10, 3, 'm', 'x', '1', PQ,
	PQ, RR(15, 300, 6), 0, 20, 1, 'b', 0xc0, 44,
};
static const uint8_t m_nullmx[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(15, 3600, 3), 0, 0, 0,
};
/* Two "." targets, neither preference 0: still no mail (the lesser TTL). */
static const uint8_t m_nullmx_two[] = {
	HDR(NOERR, 1, 2, 0), Q(15), PQ, RR(15, 3600, 3), 0, 10, 0,
	PQ, RR(15, 600, 3), 0, 20, 0,
};
/* "0 ." beside another MX is not a null MX; the "." is dropped. */
static const uint8_t m_nullmx_mixed[] = {
	HDR(NOERR, 1, 2, 0), Q(15), PQ, RR(15, 3600, 3), 0, 0, 0,
	PQ, RR(15, 300, 8), 0, 10, 3, 'm', 'x', '1', PQ,
};
/* example.test CNAME a.example.test (at 42); a.example.test A. */
static const uint8_t m_cname[] = {
	HDR(NOERR, 1, 2, 0), Q(1),
	PQ, RR(5, 60, 4), 1, 'a', PQ,
	0xc0, 42, RR(1, 300, 4), 127, 0, 0, 2,
};
/* The same, records in reverse order, plus an unrelated A. */
static const uint8_t m_cname_rev[] = {
	HDR(NOERR, 1, 3, 0), Q(1),
	1, 'a', PQ, RR(1, 300, 4), 127, 0, 0, 2,
	PQ, RR(5, 60, 2), 0xc0, 30,
	1, 'z', PQ, RR(1, 300, 4), 127, 0, 0, 9,
};
static const uint8_t m_cname_loop[] = {
	HDR(NOERR, 1, 2, 0), Q(1),
	PQ, RR(5, 60, 4), 1, 'a', PQ,
	0xc0, 42, RR(5, 60, 2), PQ,
};
static const uint8_t m_cname_self[] = {
	HDR(NOERR, 1, 1, 0), Q(1), PQ, RR(5, 60, 2), PQ,
};
/* CNAME to a name that does not exist. */
static const uint8_t m_cname_nx[] = {
	HDR(NXDOM, 1, 1, 1), Q(1), PQ, RR(5, 60, 4), 1, 'a', PQ,
	SOA(600, 120),
};
/* RFC 2317: example.test CNAME 0/26.example.test (at 42), its PTR. */
static const uint8_t m_cname_2317[] = {
	HDR(NOERR, 1, 2, 0), Q(12),
	PQ, RR(5, 60, 7), 4, '0', '/', '2', '6', PQ,
	0xc0, 42, RR(12, 300, 7), 4, 'h', 'o', 's', 't', PT,
};
/* A PTR target with a '/' is no host name: skipped. */
static const uint8_t m_ptr_slash[] = {
	HDR(NOERR, 1, 2, 0), Q(12),
	PQ, RR(12, 300, 7), 4, 'a', '/', 'b', 'c', PT,
	PQ, RR(12, 300, 7), 4, 'h', 'o', 's', 't', PT,
};
static const uint8_t m_nx_soa[] = {
	HDR(NXDOM, 1, 0, 1), Q(15), SOA(600, 120),
};
static const uint8_t m_nodata_soa[] = {
	HDR(NOERR, 1, 0, 1), Q(15), SOA(60, 3600),
};
static const uint8_t m_nodata_nosoa[] = { HDR(NOERR, 1, 0, 0), Q(15) };
/* NOERROR, answers of another type only (a CNAME-less A for an MX
 * question): NODATA. */
static const uint8_t m_nodata_other[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(1, 300, 4), 127, 0, 0, 2,
};
static const uint8_t m_tc[] = { HDR(0x8380, 1, 0, 0), Q(15) };
static const uint8_t m_servfail[] = { HDR(0x8182, 1, 0, 0), Q(15) };
static const uint8_t m_refused[] = { HDR(0x8185, 1, 0, 0), Q(15) };
static const uint8_t m_query[] = { HDR(0x0100, 1, 0, 0), Q(15) };
static const uint8_t m_noq[] = { HDR(NOERR, 0, 0, 0) };
static const uint8_t m_other_name[] = {
	HDR(NOERR, 1, 1, 0), 5, 'o', 't', 'h', 'e', 'r', 4, 't', 'e', 's', 't',
	0, 0, 15, 0, 1, PQ, RR(15, 300, 3), 0, 0, 0,
};
static const uint8_t m_upper_q[] = {
	HDR(NOERR, 1, 1, 0), 7, 'E', 'X', 'A', 'M', 'P', 'L', 'E', 4, 'T', 'e',
	's', 't', 0, 0, 15, 0, 1,
	PQ, RR(15, 300, 8), 0, 10, 3, 'M', 'X', '1', PQ,
};
static const uint8_t m_too_many[] = { HDR(NOERR, 1, 65, 0), Q(15) };
static const uint8_t m_count_lies[] = {
	HDR(NOERR, 1, 3, 0), Q(15), PQ, RR(15, 300, 3), 0, 0, 0,
};
static const uint8_t m_ptr_forward[] = {
	HDR(NOERR, 1, 1, 0), Q(15), 0xc0, 0x40, RR(15, 300, 3), 0, 0, 0,
};
static const uint8_t m_ptr_self[] = {
	HDR(NOERR, 1, 1, 0), Q(15), 0xc0, 30, RR(15, 300, 3), 0, 0, 0,
};
/* rdata name: "x" then a pointer back into itself (a loop). */
static const uint8_t m_ptr_loop[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(15, 300, 6), 0, 1, 1, 'x', 0xc0, 44,
};
static const uint8_t m_ptr_trunc[] = {
	HDR(NOERR, 1, 1, 0), Q(15), 0xc0,
};
static const uint8_t m_label_type[] = {
	HDR(NOERR, 1, 1, 0), Q(15), 0x40, 0, RR(15, 300, 3), 0, 0, 0,
};
static const uint8_t m_rdlen_over[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(15, 300, 40), 0, 0, 0,
};
static const uint8_t m_mx_rdlen_short[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(15, 300, 4), 0, 10, PQ,  /* ok */
};
static const uint8_t m_mx_rdata_slack[] = {
	HDR(NOERR, 1, 1, 0), Q(15), PQ, RR(15, 300, 5), 0, 10, PQ, 0,
};
static const uint8_t m_odd_target[] = {
	HDR(NOERR, 1, 2, 0), Q(15),
	PQ, RR(15, 300, 6), 0, 10, 2, 'a', ' ', 0,
	PQ, RR(15, 300, 8), 0, 20, 3, 'm', 'x', '2', PQ,
};
/* MX records whose only targets are unusable names are not "no MX" (the
 * implicit MX would follow); beside "." the null MX stands, as in
 * deliver_mx_order. */
static const uint8_t m_odd_only[] = {
	HDR(NOERR, 1, 1, 0), Q(15),
	PQ, RR(15, 300, 6), 0, 10, 2, 'a', ' ', 0,
};
static const uint8_t m_odd_and_null[] = {
	HDR(NOERR, 1, 2, 0), Q(15),
	PQ, RR(15, 300, 6), 0, 10, 2, 'a', ' ', 0,
	PQ, RR(15, 300, 3), 0, 0, 0,
};
static const uint8_t m_txt[] = {
	HDR(NOERR, 1, 1, 0), Q(16),
	PQ, RR(16, 300, 9), 3, 'a', 'b', 'c', 0, 3, 'd', 'e', 'f',
};
static const uint8_t m_txt_bad[] = {
	HDR(NOERR, 1, 1, 0), Q(16), PQ, RR(16, 300, 4), 5, 'a', 'b', 'c',
};
static const uint8_t m_a_badlen[] = {
	HDR(NOERR, 1, 1, 0), Q(1), PQ, RR(1, 300, 5), 127, 0, 0, 1, 0,
};
static const uint8_t m_aaaa[] = {
	HDR(NOERR, 1, 1, 0), Q(28), PQ, RR(28, 300, 16),
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
};
static const uint8_t m_ttl_top[] = {
	HDR(NOERR, 1, 1, 0), Q(1), PQ, RR(1, 0x80000001u, 4), 127, 0, 0, 2,
};
static const uint8_t m_class_ch[] = {
	HDR(NOERR, 1, 1, 0), Q(1), PQ, 0, 1, 0, 3, TTL(300), 0, 4, 1, 2, 3, 4,
};

struct pcase {
	const char *name;
	const uint8_t *msg;
	size_t len;
	const char *qname;
	uint16_t qtype;
	enum dns_status st;
	size_t nrr;
	uint32_t ttl;       /* checked when st is not TEMPFAIL */
	const char *why;    /* TEMPFAIL: the reason */
};

#define M(x) x, sizeof x
#define EXQ "example.test"
static const struct pcase pcases[] = {
	{"MX with compression", M(m_mx), EXQ, 15, DNS_OK, 2, 200, ""},
	{"MX pointer to a pointer", M(m_mx_ptr2), EXQ, 15, DNS_OK, 2, 300, ""},
	{"null MX", M(m_nullmx), EXQ, 15, DNS_OK, 1, 3600, ""},
	{"null MX beside another", M(m_nullmx_mixed), EXQ, 15, DNS_OK, 1, 300, ""},
	{"two \".\" MX", M(m_nullmx_two), EXQ, 15, DNS_OK, 1, 600, ""},
	{"CNAME then A", M(m_cname), EXQ, 1, DNS_OK, 1, 60, ""},
	{"CNAME, records out of order", M(m_cname_rev), EXQ, 1, DNS_OK, 1, 60, ""},
	{"CNAME loop", M(m_cname_loop), EXQ, 1, DNS_TEMPFAIL, 0, 0, "CNAME loop"},
	{"CNAME to itself", M(m_cname_self), EXQ, 1, DNS_TEMPFAIL, 0, 0,
	 "CNAME loop"},
	{"CNAME to NXDOMAIN", M(m_cname_nx), EXQ, 1, DNS_NXDOMAIN, 0, 60, ""},
	{"RFC 2317 classless CNAME", M(m_cname_2317), EXQ, 12, DNS_OK, 1, 60, ""},
	{"PTR target with a slash skipped", M(m_ptr_slash), EXQ, 12, DNS_OK, 1,
	 300, ""},
	{"NXDOMAIN, SOA minimum", M(m_nx_soa), EXQ, 15, DNS_NXDOMAIN, 0, 120, ""},
	{"NODATA, SOA TTL", M(m_nodata_soa), EXQ, 15, DNS_NODATA, 0, 60, ""},
	{"NODATA, no SOA", M(m_nodata_nosoa), EXQ, 15, DNS_NODATA, 0,
	 DNS_NEG_TTL_DEFAULT, ""},
	{"NODATA, other type only", M(m_nodata_other), EXQ, 15, DNS_NODATA, 0,
	 DNS_NEG_TTL_DEFAULT, ""},
	{"truncated", M(m_tc), EXQ, 15, DNS_TEMPFAIL, 0, 0, "truncated"},
	{"SERVFAIL", M(m_servfail), EXQ, 15, DNS_TEMPFAIL, 0, 0, "SERVFAIL"},
	{"REFUSED", M(m_refused), EXQ, 15, DNS_TEMPFAIL, 0, 0, "REFUSED"},
	{"a query, not a response", M(m_query), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "not a response"},
	{"no question", M(m_noq), EXQ, 15, DNS_TEMPFAIL, 0, 0, "not one question"},
	{"short", m_noq, 11, EXQ, 15, DNS_TEMPFAIL, 0, 0, "short answer"},
	{"answer to another name", M(m_other_name), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "answer to another question"},
	{"answer to another type", M(m_mx), EXQ, 16, DNS_TEMPFAIL, 0, 0,
	 "answer to another question"},
	{"question in other case", M(m_upper_q), EXQ, 15, DNS_OK, 1, 300, ""},
	{"65 answers", M(m_too_many), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "too many records"},
	{"count beyond the data", M(m_count_lies), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"forward pointer", M(m_ptr_forward), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"pointer to itself", M(m_ptr_self), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"pointer loop in rdata", M(m_ptr_loop), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed name in record"},
	{"pointer cut short", M(m_ptr_trunc), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"extended label type", M(m_label_type), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"rdlength past the end", M(m_rdlen_over), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed record"},
	{"MX to the zone apex", M(m_mx_rdlen_short), EXQ, 15, DNS_OK, 1, 300, ""},
	{"MX rdata with slack", M(m_mx_rdata_slack), EXQ, 15, DNS_TEMPFAIL, 0, 0,
	 "malformed name in record"},
	{"MX target with a space skipped", M(m_odd_target), EXQ, 15, DNS_OK, 1,
	 300, ""},
	{"MX whose only target is unusable", M(m_odd_only), EXQ, 15,
	 DNS_TEMPFAIL, 0, 0, "no usable MX target"},
	{"unusable MX target beside \".\"", M(m_odd_and_null), EXQ, 15,
	 DNS_OK, 1, 300, ""},
	{"TXT, two strings and an empty one", M(m_txt), EXQ, 16, DNS_OK, 1, 300,
	 ""},
	{"TXT string past rdata", M(m_txt_bad), EXQ, 16, DNS_TEMPFAIL, 0, 0,
	 "malformed TXT"},
	{"A of 5 bytes", M(m_a_badlen), EXQ, 1, DNS_TEMPFAIL, 0, 0,
	 "bad address length"},
	{"AAAA", M(m_aaaa), EXQ, 28, DNS_OK, 1, 300, ""},
	{"TTL with the top bit is 0", M(m_ttl_top), EXQ, 1, DNS_OK, 1, 0, ""},
	{"class CH ignored", M(m_class_ch), EXQ, 1, DNS_NODATA, 0,
	 DNS_NEG_TTL_DEFAULT, ""},
};

static void test_parse_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof pcases / sizeof *pcases; i++) {
		const struct pcase *c = &pcases[i];
		struct dns_result *r = (void *)1;
		const char *why = NULL;
		/* An exact-size copy so ASan sees any overread. */
		uint8_t *copy = malloc(c->len);
		assert_non_null(copy);
		memcpy(copy, c->msg, c->len);
		enum dns_status st = dns_parse(copy, c->len, c->qname, c->qtype,
		                               &r, &why);
		free(copy);
		if (st != c->st || (st == DNS_TEMPFAIL && strcmp(why, c->why)))
			fail_msg("%s: got %s (%s), want %s (%s)", c->name,
			         dns_status_names[st], why, dns_status_names[c->st],
			         c->why);
		if (st == DNS_TEMPFAIL) {
			assert_null(r);
			continue;
		}
		assert_non_null(r);
		if (r->nrr != c->nrr || r->ttl != c->ttl || r->status != st)
			fail_msg("%s: nrr %zu ttl %u, want %zu %u", c->name, r->nrr,
			         r->ttl, c->nrr, c->ttl);
		assert_int_equal(r->qtype, c->qtype);
		assert_string_equal(r->qname, c->qname);
		dns_result_unref(r);
	}
}

static struct dns_result *parse_ok(const uint8_t *m, size_t len,
                                   uint16_t qtype)
{
	struct dns_result *r;
	const char *why;
	assert_int_equal(dns_parse(m, len, EXQ, qtype, &r, &why), DNS_OK);
	return r;
}

static void test_parse_fields(void **state)
{
	(void)state;
	struct dns_result *r = parse_ok(M(m_mx), 15);
	assert_int_equal(r->rr[0].pref, 10);
	assert_string_equal(r->rr[0].name, "mx1.example.test");
	assert_int_equal(r->rr[0].ttl, 300);
	assert_int_equal(r->rr[1].pref, 5);
	assert_string_equal(r->rr[1].name, "mx2.example.test");
	assert_false(r->nullmx);
	dns_result_unref(r);

	r = parse_ok(M(m_mx_ptr2), 15);
	assert_string_equal(r->rr[1].name, "b.mx1.example.test");
	dns_result_unref(r);

	r = parse_ok(M(m_nullmx), 15);
	assert_true(r->nullmx);
	assert_string_equal(r->rr[0].name, "");
	dns_result_unref(r);
	r = parse_ok(M(m_nullmx_mixed), 15);
	assert_false(r->nullmx);
	assert_string_equal(r->rr[0].name, "mx1.example.test");
	dns_result_unref(r);
	r = parse_ok(M(m_odd_and_null), 15);
	assert_true(r->nullmx);
	assert_string_equal(r->rr[0].name, "");
	dns_result_unref(r);
	r = parse_ok(M(m_nullmx_two), 15);
	assert_true(r->nullmx);
	assert_int_equal(r->rr[0].pref, 20);
	assert_string_equal(r->rr[0].name, "");
	dns_result_unref(r);

	r = parse_ok(M(m_upper_q), 15);
	assert_string_equal(r->rr[0].name, "mx1.example.test");
	dns_result_unref(r);

	r = parse_ok(M(m_cname_rev), 1);
	assert_string_equal(r->canon, "a.example.test");
	assert_int_equal(r->rr[0].addr.family, AF_INET);
	assert_memory_equal(r->rr[0].addr.a, ((uint8_t[]){127, 0, 0, 2}), 4);
	dns_result_unref(r);

	r = parse_ok(M(m_odd_target), 15);
	assert_string_equal(r->rr[0].name, "mx2.example.test");
	dns_result_unref(r);

	r = parse_ok(M(m_mx_rdlen_short), 15);
	assert_string_equal(r->rr[0].name, "example.test");
	dns_result_unref(r);

	r = parse_ok(M(m_txt), 16);
	assert_int_equal(r->rr[0].txtlen, 6);
	assert_string_equal(r->rr[0].txt, "abcdef");
	dns_result_unref(r);

	r = parse_ok(M(m_aaaa), 28);
	assert_int_equal(r->rr[0].addr.family, AF_INET6);
	assert_int_equal(r->rr[0].addr.a[15], 1);
	dns_result_unref(r);

	const char *why;
	assert_int_equal(dns_parse(M(m_nx_soa), EXQ, 15, &r, &why),
	                 DNS_NXDOMAIN);
	assert_true(r->neg_soa);
	assert_int_equal(r->nrr, 0);
	dns_result_unref(r);
	assert_int_equal(dns_parse(M(m_nodata_nosoa), EXQ, 15, &r, &why),
	                 DNS_NODATA);
	assert_false(r->neg_soa);
	dns_result_unref(r);
}

/* ---- built at run time: long chains, big TXT ------------------------- */

struct mb {
	uint8_t b[8192];
	size_t n;
};

static void put(struct mb *m, const void *p, size_t n)
{
	assert_true(m->n + n <= sizeof m->b);
	memcpy(m->b + m->n, p, n);
	m->n += n;
}
static void put16(struct mb *m, unsigned v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	put(m, b, 2);
}
static void put_name(struct mb *m, const char *name)
{
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);
		uint8_t lb = (uint8_t)l;
		put(m, &lb, 1);
		put(m, name, l);
		name += l + (dot ? 1 : 0);
	}
	put(m, "", 1);
}
static void put_rr(struct mb *m, const char *owner, unsigned type,
                   const void *rdata, size_t rdlen)
{
	put_name(m, owner);
	put16(m, type);
	put16(m, 1);
	put16(m, 0);
	put16(m, 300);
	put16(m, (unsigned)rdlen);
	put(m, rdata, rdlen);
}
static void put_hdr(struct mb *m, unsigned an, const char *q, unsigned qtype)
{
	const uint8_t h[12] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, (uint8_t)an,
	                       0, 0, 0, 0};
	m->n = 0;
	put(m, h, sizeof h);
	put_name(m, q);
	put16(m, qtype);
	put16(m, 1);
}

/* A chain of `hops` CNAMEs from example.test, then an A. */
static enum dns_status chain(unsigned hops, struct dns_result **r)
{
	static struct mb m;
	put_hdr(&m, hops + 1, EXQ, 1);
	char owner[64] = EXQ, target[64];
	for (unsigned i = 0; i < hops; i++) {
		struct mb rd = {.n = 0};
		snprintf(target, sizeof target, "c%u.example.test", i);
		put_name(&rd, target);
		put_rr(&m, owner, 5, rd.b, rd.n);
		strcpy(owner, target);
	}
	put_rr(&m, owner, 1, (uint8_t[]){127, 0, 0, 3}, 4);
	const char *why;
	enum dns_status st = dns_parse(m.b, m.n, EXQ, 1, r, &why);
	if (st == DNS_TEMPFAIL)
		assert_string_equal(why, "CNAME chain too long");
	return st;
}

static void test_cname_bound(void **state)
{
	(void)state;
	struct dns_result *r;
	assert_int_equal(chain(DNS_CNAME_MAX, &r), DNS_OK);
	assert_string_equal(r->canon, "c7.example.test");
	assert_int_equal(r->rr[0].addr.a[3], 3);
	dns_result_unref(r);
	assert_int_equal(chain(DNS_CNAME_MAX + 1, &r), DNS_TEMPFAIL);
	assert_null(r);
}

static void test_txt_bound(void **state)
{
	(void)state;
	static struct mb m;
	for (unsigned total = DNS_TXT_MAX; total <= DNS_TXT_MAX + 1; total++) {
		put_hdr(&m, 1, EXQ, 16);
		struct mb rd = {.n = 0};
		for (unsigned left = total; left > 0;) {
			uint8_t l = left > 255 ? 255 : (uint8_t)left;
			put(&rd, &l, 1);
			uint8_t s[255];
			memset(s, 'x', l);
			put(&rd, s, l);
			left -= l;
		}
		put_rr(&m, EXQ, 16, rd.b, rd.n);
		struct dns_result *r;
		const char *why;
		enum dns_status st = dns_parse(m.b, m.n, EXQ, 16, &r, &why);
		if (total == DNS_TXT_MAX) {
			assert_int_equal(st, DNS_OK);
			assert_int_equal(r->rr[0].txtlen, DNS_TXT_MAX);
			assert_int_equal(strlen(r->rr[0].txt), DNS_TXT_MAX);
			dns_result_unref(r);
		} else {
			assert_int_equal(st, DNS_TEMPFAIL);
			assert_string_equal(why, "TXT record too long");
		}
	}
}

/* A name of 255 octets on the wire parses; 256 does not. */
static void test_name_bound(void **state)
{
	(void)state;
	static struct mb m;
	char q[300];
	for (unsigned extra = 0; extra <= 1; extra++) {
		/* 3 labels of 63 + one of 61+extra: wire 64*3 + 62+extra + 1. */
		char *p = q;
		for (int i = 0; i < 3; i++) {
			memset(p, 'a' + i, 63);
			p[63] = '.';
			p += 64;
		}
		memset(p, 'd', 61 + extra);
		p[61 + extra] = '\0';
		put_hdr(&m, 0, q, 15);
		struct dns_result *r;
		const char *why;
		enum dns_status st = dns_parse(m.b, m.n, q, 15, &r, &why);
		if (extra == 0) {
			assert_int_equal(st, DNS_NODATA);
			assert_int_equal(strlen(r->qname), 253);
			dns_result_unref(r);
		} else {
			assert_int_equal(st, DNS_TEMPFAIL);
			assert_string_equal(why, "bad question");
		}
	}
}

static void test_name_norm(void **state)
{
	(void)state;
	static const struct { const char *in, *out; } ok[] = {
		{"Example.TEST", "example.test"}, {"example.test.", "example.test"},
		{"_dmarc.x-y.test", "_dmarc.x-y.test"}, {"test", "test"},
	};
	static const char *const bad[] = {
		"", ".", "a..b", ".a", "a b.test", "a\\.test", "é.test", "a.test..",
	};
	char out[DNS_NAME_MAX + 1];
	for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
		assert_int_equal(dns_name_norm(ok[i].in, out, sizeof out), 0);
		assert_string_equal(out, ok[i].out);
	}
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		if (dns_name_norm(bad[i], out, sizeof out) == 0)
			fail_msg("accepted '%s'", bad[i]);
	char lab[70];
	memset(lab, 'a', 64);
	lab[64] = '\0';
	assert_int_not_equal(dns_name_norm(lab, out, sizeof out), 0);
	lab[63] = '\0';
	assert_int_equal(dns_name_norm(lab, out, sizeof out), 0);
}

static void test_reverse_name(void **state)
{
	(void)state;
	char out[128];
	struct dns_addr a4 = {.family = AF_INET, .a = {192, 0, 2, 10}};
	assert_int_equal(dns_reverse_name(&a4, out, sizeof out), 0);
	assert_string_equal(out, "10.2.0.192.in-addr.arpa");
	struct dns_addr a6 = {.family = AF_INET6,
	                      .a = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x1f}};
	assert_int_equal(dns_reverse_name(&a6, out, sizeof out), 0);
	assert_string_equal(out, "f.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
	                         "8.b.d.0.1.0.0.2.ip6.arpa");
	assert_int_not_equal(dns_reverse_name(&a6, out, 20), 0);
	char s[64];
	assert_string_equal(dns_addr_str(&a4, s, sizeof s), "192.0.2.10");
	assert_string_equal(dns_addr_str(&a6, s, sizeof s), "2001:db8::1f");
}

/* ---- the cache ---------------------------------------------------------- */

static struct dns_result *mk(enum dns_status st, const char *name,
                             uint16_t type, uint32_t ttl)
{
	struct dns_result *r = dns_result_new_status(st, name, type);
	assert_non_null(r);
	r->ttl = ttl;
	return r;
}

static const struct dns_cache_opts copts = {
	.max_entries = 3, .max_bytes = 1 << 20,
	.ttl_min = 5, .ttl_max = 86400, .neg_ttl_max = 3600,
};

static void test_cache_ttl(void **state)
{
	(void)state;
	struct dns_cache *c = dns_cache_new(&copts);
	assert_non_null(c);
	struct dns_result *r = mk(DNS_OK, "a.test", 15, 60);
	assert_int_equal(dns_cache_put(c, r, 1000), 0);
	dns_result_unref(r);   /* the cache holds its own reference */
	assert_ptr_equal(dns_cache_get(c, 15, "a.test", 1000), r);
	assert_ptr_equal(dns_cache_get(c, 15, "a.test", 60999), r);
	assert_null(dns_cache_get(c, 1, "a.test", 2000));   /* type is the key */
	assert_null(dns_cache_get(c, 15, "b.test", 2000));
	assert_null(dns_cache_get(c, 15, "a.test", 61000)); /* expired */
	assert_int_equal(dns_cache_count(c), 0);

	/* Clamps: 0 s lives ttl_min, a week lives ttl_max; negative
	 * answers at most neg_ttl_max. */
	r = mk(DNS_OK, "z.test", 1, 0);
	assert_int_equal(dns_cache_ttl(c, r), 5);
	assert_int_equal(dns_cache_put(c, r, 0), 0);
	assert_non_null(dns_cache_get(c, 1, "z.test", 4999));
	assert_null(dns_cache_get(c, 1, "z.test", 5000));
	r->ttl = 7 * 86400;
	assert_int_equal(dns_cache_ttl(c, r), 86400);
	dns_result_unref(r);
	r = mk(DNS_NXDOMAIN, "nx.test", 15, 86400);
	assert_int_equal(dns_cache_ttl(c, r), 3600);
	assert_int_equal(dns_cache_put(c, r, 0), 0);
	assert_non_null(dns_cache_get(c, 15, "nx.test", 3599999));
	assert_null(dns_cache_get(c, 15, "nx.test", 3600000));
	dns_result_unref(r);
	r = mk(DNS_NODATA, "nd.test", 15, 120);
	assert_int_equal(dns_cache_put(c, r, 0), 0);
	assert_int_equal(dns_cache_get(c, 15, "nd.test", 119999)->status,
	                 DNS_NODATA);
	dns_result_unref(r);

	/* TEMPFAIL and friends are never stored. */
	r = mk(DNS_TEMPFAIL, "t.test", 15, 300);
	assert_int_equal(dns_cache_put(c, r, 0), 1);
	assert_null(dns_cache_get(c, 15, "t.test", 0));
	dns_result_unref(r);
	dns_cache_free(c);
}

static void test_cache_lru(void **state)
{
	(void)state;
	struct dns_cache *c = dns_cache_new(&copts);
	const char *names[] = {"a.test", "b.test", "c.test", "d.test"};
	struct dns_result *r[4];
	for (int i = 0; i < 4; i++)
		r[i] = mk(DNS_OK, names[i], 15, 300);
	for (int i = 0; i < 3; i++)
		assert_int_equal(dns_cache_put(c, r[i], 0), 0);
	assert_non_null(dns_cache_get(c, 15, "a.test", 1));   /* a: recent */
	assert_int_equal(dns_cache_put(c, r[3], 2), 0);        /* b goes */
	assert_int_equal(dns_cache_count(c), 3);
	assert_null(dns_cache_get(c, 15, "b.test", 3));
	assert_non_null(dns_cache_get(c, 15, "a.test", 3));
	assert_non_null(dns_cache_get(c, 15, "c.test", 3));
	assert_non_null(dns_cache_get(c, 15, "d.test", 3));
	/* Replacing a key keeps one entry. */
	assert_int_equal(dns_cache_put(c, r[3], 4), 0);
	assert_int_equal(dns_cache_count(c), 3);
	assert_int_equal(dns_cache_bytes(c),
	                 r[0]->size + r[2]->size + r[3]->size);
	dns_cache_free(c);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(r[i]->refs, 1);
		dns_result_unref(r[i]);
	}

	/* The byte cap: room for two of these. */
	struct dns_cache_opts o = copts;
	o.max_entries = 100;
	struct dns_result *x = mk(DNS_OK, "x.test", 15, 300);
	o.max_bytes = 2 * x->size + x->size / 2;
	c = dns_cache_new(&o);
	struct dns_result *y = mk(DNS_OK, "y.test", 15, 300);
	struct dns_result *z = mk(DNS_OK, "z.test", 15, 300);
	dns_cache_put(c, x, 0);
	dns_cache_put(c, y, 0);
	dns_cache_put(c, z, 0);
	assert_int_equal(dns_cache_count(c), 2);
	assert_null(dns_cache_get(c, 15, "x.test", 1));
	assert_true(dns_cache_bytes(c) <= o.max_bytes);
	/* One result bigger than the cap is not stored at all. */
	o.max_bytes = x->size - 1;
	struct dns_cache *c2 = dns_cache_new(&o);
	assert_int_equal(dns_cache_put(c2, x, 0), 1);
	assert_int_equal(dns_cache_count(c2), 0);
	dns_cache_free(c2);
	dns_cache_free(c);
	dns_result_unref(x);
	dns_result_unref(y);
	dns_result_unref(z);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_parse_fields),
		cmocka_unit_test(test_cname_bound),
		cmocka_unit_test(test_txt_bound),
		cmocka_unit_test(test_name_bound),
		cmocka_unit_test(test_name_norm),
		cmocka_unit_test(test_reverse_name),
		cmocka_unit_test(test_cache_ttl),
		cmocka_unit_test(test_cache_lru),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
