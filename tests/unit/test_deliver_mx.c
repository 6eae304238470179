/*
 * tests/unit/test_deliver_mx.c - deliver/deliver_mx.c: MX ordering (with a
 * fixed random sequence), null and implicit MX, address classes and
 * refusals, loops to relayd's own addresses, the try list per
 * ip_preference (order, limit of 5, family fallback) and address literals.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "common/smtp.h"
#include "deliver/deliver_mx.h"

static struct deliver_addr A(const char *s)
{
	struct deliver_addr a;
	memset(&a, 0, sizeof a);
	if (inet_pton(AF_INET, s, a.a) == 1) {
		a.family = AF_INET;
	} else {
		a.family = AF_INET6;
		if (inet_pton(AF_INET6, s, a.a) != 1)
			fail_msg("bad test address %s", s);
	}
	return a;
}

/* A fixed "random" sequence. */
struct seq {
	const uint32_t *v;
	size_t n, i;
};

static uint32_t seq_next(void *ctx)
{
	struct seq *s = ctx;
	return s->n ? s->v[s->i++ % s->n] : 0;
}

/* ---- MX order ---------------------------------------------------------- */

struct order_case {
	const char *name;
	const char *in;          /* "pref host, pref host, ..." */
	uint32_t rnd[4];
	size_t nrnd;
	enum deliver_mx_verdict want;
	const char *out;         /* "host host ..." */
};

static const struct order_case order_cases[] = {
	{"by preference", "20 b.example, 10 a.example, 30 c.example", {0}, 0,
	 DELIVER_MX_HOSTS, "a.example b.example c.example"},
	{"normalised", "10 MX.Example.COM.", {0}, 0, DELIVER_MX_HOSTS,
	 "mx.example.com"},
	/* rnd 0 each step: Fisher-Yates swaps the last with the first */
	{"shuffled within a preference, rnd 0",
	 "10 a.example, 10 b.example, 10 c.example, 5 first.example", {0}, 1,
	 DELIVER_MX_HOSTS, "first.example b.example c.example a.example"},
	/* rnd i each step: j = i, nothing moves */
	{"shuffled within a preference, identity",
	 "10 a.example, 10 b.example, 10 c.example", {2, 1}, 2,
	 DELIVER_MX_HOSTS, "a.example b.example c.example"},
	{"never across preferences",
	 "20 z.example, 10 y.example, 20 x.example", {0}, 1, DELIVER_MX_HOSTS,
	 "y.example x.example z.example"},
	{"a host twice keeps its best preference",
	 "30 a.example, 10 b.example, 20 A.example.", {0}, 0, DELIVER_MX_HOSTS,
	 "b.example a.example"},
	{"null MX", "0 .", {0}, 0, DELIVER_MX_NULL, ""},
	{"null MX, empty name", "0 ", {0}, 0, DELIVER_MX_NULL, ""},
	{"null MX at another preference", "10 .", {0}, 0, DELIVER_MX_NULL, ""},
	{"two null MX records", "0 ., 0 .", {0}, 0, DELIVER_MX_NULL, ""},
	{"null MX mixed with a host: the host is used",
	 "0 ., 10 mx.example", {0}, 0, DELIVER_MX_HOSTS, "mx.example"},
	{"malformed names dropped", "10 bad..name, 20 ok.example, 5 sp ace",
	 {0}, 0, DELIVER_MX_HOSTS, "ok.example"},
	{"only malformed names", "10 bad..name, 20 -/x", {0}, 0,
	 DELIVER_MX_NONE, ""},
	{"empty answer", "", {0}, 0, DELIVER_MX_NONE, ""},
};

/* Parses "pref host, ..." into mx; returns the count. */
static size_t parse_mx(const char *in, struct deliver_mx *mx, size_t max)
{
	size_t n = 0;
	char buf[1024];
	snprintf(buf, sizeof buf, "%s", in);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < max;
	     tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *sp = strchr(tok, ' ');
		assert_non_null(sp);
		*sp = '\0';
		mx[n].pref = (uint16_t)atoi(tok);
		snprintf(mx[n].host, sizeof mx[n].host, "%s", sp + 1);
		n++;
	}
	return n;
}

static void test_order(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof order_cases / sizeof *order_cases; i++) {
		const struct order_case *c = &order_cases[i];
		struct deliver_mx mx[8];
		size_t n = parse_mx(c->in, mx, 8);
		struct seq s = {c->rnd, c->nrnd, 0};
		enum deliver_mx_verdict v = deliver_mx_order(mx, &n, seq_next, &s);
		char got[512] = "";
		for (size_t k = 0; k < n; k++)
			snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s",
			         k ? " " : "", mx[k].host);
		if (v != c->want || strcmp(got, c->out) != 0)
			fail_msg("%s: verdict %d '%s', want %d '%s'", c->name, v, got,
			         c->want, c->out);
	}
}

static void test_order_bounds(void **state)
{
	(void)state;
	/* 200 records: only the first 128 are looked at, 16 kept, and the
	 * best preferences are the ones kept */
	static struct deliver_mx mx[200];
	for (size_t i = 0; i < 200; i++) {
		mx[i].pref = (uint16_t)(200 - i);
		snprintf(mx[i].host, sizeof mx[i].host, "mx%zu.example", i);
	}
	size_t n = 200;
	assert_int_equal(deliver_mx_order(mx, &n, NULL, NULL), DELIVER_MX_HOSTS);
	assert_int_equal(n, DELIVER_MX_HOSTS_MAX);
	/* records 0..127 had preferences 200..73: the best is 73 (mx127) */
	assert_int_equal(mx[0].pref, 73);
	assert_string_equal(mx[0].host, "mx127.example");
	assert_int_equal(mx[15].pref, 88);

	/* a name filling the whole field without a NUL is malformed */
	struct deliver_mx one[2];
	memset(one[0].host, 'a', sizeof one[0].host);
	one[0].pref = 1;
	snprintf(one[1].host, sizeof one[1].host, "ok.example");
	one[1].pref = 2;
	n = 2;
	assert_int_equal(deliver_mx_order(one, &n, NULL, NULL), DELIVER_MX_HOSTS);
	assert_int_equal(n, 1);
	assert_string_equal(one[0].host, "ok.example");

	/* shuffling: every order of three equal hosts is reachable */
	unsigned seen = 0;
	for (uint32_t r0 = 0; r0 < 3; r0++)
		for (uint32_t r1 = 0; r1 < 2; r1++) {
			struct deliver_mx m[3];
			size_t k = parse_mx("10 a, 10 b, 10 c", m, 3);
			uint32_t v[2] = {r0, r1};
			struct seq s = {v, 2, 0};
			deliver_mx_order(m, &k, seq_next, &s);
			unsigned code = (unsigned)((m[0].host[0] - 'a') * 9 +
			                           (m[1].host[0] - 'a') * 3 +
			                           (m[2].host[0] - 'a'));
			seen |= 1u << code;
		}
	/* the 6 permutations of a, b, c */
	assert_int_equal(__builtin_popcount(seen), 6);
}

static void test_implicit(void **state)
{
	(void)state;
	struct deliver_mx mx;
	assert_int_equal(deliver_mx_implicit("Example.COM.", &mx), 0);
	assert_int_equal(mx.pref, 0);
	assert_string_equal(mx.host, "example.com");
	assert_int_equal(deliver_mx_implicit("[192.0.2.1]", &mx), -EINVAL);
	assert_int_equal(deliver_mx_implicit("", &mx), -EINVAL);
	assert_int_equal(deliver_mx_implicit(".", &mx), -EINVAL);
	assert_int_equal(deliver_mx_implicit(NULL, &mx), -EINVAL);
}

/* ---- classes ----------------------------------------------------------- */

struct class_case {
	const char *addr;
	enum deliver_addr_class cls;
	bool refused_strict, refused_private_ok;
};

static const struct class_case class_cases[] = {
	{"8.8.8.8", DELIVER_ADDR_PUBLIC, false, false},
	{"2a00:1450:4001::1b", DELIVER_ADDR_PUBLIC, false, false},
	{"127.0.0.1", DELIVER_ADDR_LOOPBACK, true, false},
	{"127.0.0.23", DELIVER_ADDR_LOOPBACK, true, false},
	{"::1", DELIVER_ADDR_LOOPBACK, true, false},
	{"10.1.2.3", DELIVER_ADDR_PRIVATE, true, false},
	{"172.16.0.1", DELIVER_ADDR_PRIVATE, true, false},
	{"172.31.255.255", DELIVER_ADDR_PRIVATE, true, false},
	{"172.32.0.1", DELIVER_ADDR_PUBLIC, false, false},
	{"172.15.255.255", DELIVER_ADDR_PUBLIC, false, false},
	{"192.168.1.1", DELIVER_ADDR_PRIVATE, true, false},
	{"100.64.0.1", DELIVER_ADDR_PRIVATE, true, false},
	{"100.127.255.255", DELIVER_ADDR_PRIVATE, true, false},
	{"100.128.0.1", DELIVER_ADDR_PUBLIC, false, false},
	{"100.63.255.255", DELIVER_ADDR_PUBLIC, false, false},
	{"fc00::1", DELIVER_ADDR_PRIVATE, true, false},
	{"fd12:3456::1", DELIVER_ADDR_PRIVATE, true, false},
	{"fec0::1", DELIVER_ADDR_PRIVATE, true, false},
	{"fe80::1", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"febf::1", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"169.254.10.1", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"0.0.0.0", DELIVER_ADDR_UNSPECIFIED, true, true},
	{"::", DELIVER_ADDR_UNSPECIFIED, true, true},
	{"224.0.0.1", DELIVER_ADDR_MULTICAST, true, true},
	{"239.255.255.250", DELIVER_ADDR_MULTICAST, true, true},
	{"ff02::1", DELIVER_ADDR_MULTICAST, true, true},
	{"240.0.0.1", DELIVER_ADDR_RESERVED, true, true},
	{"255.255.255.255", DELIVER_ADDR_RESERVED, true, true},
	{"0.1.2.3", DELIVER_ADDR_RESERVED, true, true},
	{"::127.0.0.1", DELIVER_ADDR_RESERVED, true, true},
	{"192.0.2.1", DELIVER_ADDR_DOCUMENTATION, true, false},
	{"198.51.100.7", DELIVER_ADDR_DOCUMENTATION, true, false},
	{"203.0.113.9", DELIVER_ADDR_DOCUMENTATION, true, false},
	{"2001:db8::25", DELIVER_ADDR_DOCUMENTATION, true, false},
	{"2001:db9::25", DELIVER_ADDR_PUBLIC, false, false},
	/* v4-mapped: classified by the IPv4 address */
	{"::ffff:127.0.0.1", DELIVER_ADDR_LOOPBACK, true, false},
	{"::ffff:10.0.0.1", DELIVER_ADDR_PRIVATE, true, false},
	{"::ffff:169.254.0.1", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"::ffff:8.8.8.8", DELIVER_ADDR_PUBLIC, false, false},
	/* IPv4 wrapped in NAT64, SIIT and 6to4 prefixes: what it wraps */
	{"64:ff9b::127.0.0.1", DELIVER_ADDR_LOOPBACK, true, false},
	{"64:ff9b::10.0.0.1", DELIVER_ADDR_PRIVATE, true, false},
	{"64:ff9b::169.254.169.254", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"64:ff9b::8.8.8.8", DELIVER_ADDR_PUBLIC, false, false},
	{"64:ff9b:1::192.168.0.1", DELIVER_ADDR_PRIVATE, true, false},
	{"64:ff9b:1:2::8.8.8.8", DELIVER_ADDR_PUBLIC, false, false},
	{"::ffff:0:127.0.0.1", DELIVER_ADDR_LOOPBACK, true, false},
	{"::ffff:0:8.8.8.8", DELIVER_ADDR_PUBLIC, false, false},
	{"2002:7f00:1::1", DELIVER_ADDR_LOOPBACK, true, false},
	{"2002:c0a8:101::25", DELIVER_ADDR_PRIVATE, true, false},
	{"2002:a9fe:a9fe::1", DELIVER_ADDR_LINK_LOCAL, true, true},
	{"2002:808:808::1", DELIVER_ADDR_PUBLIC, false, false},
};

static void test_classes(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof class_cases / sizeof *class_cases; i++) {
		const struct class_case *c = &class_cases[i];
		struct deliver_addr a = A(c->addr);
		enum deliver_addr_class k = deliver_addr_classify(&a);
		const char *r0 = deliver_mx_addr_refused(&a, false);
		const char *r1 = deliver_mx_addr_refused(&a, true);
		if (k != c->cls || (r0 != NULL) != c->refused_strict ||
		    (r1 != NULL) != c->refused_private_ok)
			fail_msg("%s: %s refused %d/%d, want %s %d/%d", c->addr,
			         deliver_addr_class_names[k], r0 != NULL, r1 != NULL,
			         deliver_addr_class_names[c->cls], c->refused_strict,
			         c->refused_private_ok);
		if (r0)
			assert_string_equal(r0, deliver_addr_class_names[c->cls]);
	}
	struct deliver_addr bad = {0};
	bad.family = AF_UNIX;
	assert_int_equal(deliver_addr_classify(&bad), DELIVER_ADDR_RESERVED);
	assert_non_null(deliver_mx_addr_refused(&bad, true));
}

/* ---- loops ------------------------------------------------------------- */

static void test_self(void **state)
{
	(void)state;
	struct deliver_endpoint listen[] = {
		{A("127.0.0.1"), 2525}, {A("::"), 25}, {A("192.0.2.10"), 587}};
	struct deliver_addr local[] = {A("192.0.2.10"), A("2001:db8::10")};
	struct deliver_self self = {listen, 3, local, 2};
	struct {
		const char *addr;
		uint16_t port;
		bool want;
	} cases[] = {
		{"127.0.0.1", 2525, true},
		{"::ffff:127.0.0.1", 2525, true},
		{"127.0.0.2", 2525, false},     /* tests' MX sinks */
		{"127.0.0.1", 2526, false},
		{"127.0.0.9", 25, true},        /* wildcard: loopback */
		{"::1", 25, true},
		{"192.0.2.10", 25, true},       /* wildcard: a local address */
		{"2001:db8::10", 25, true},
		{"192.0.2.11", 25, false},
		{"192.0.2.10", 587, true},
		{"192.0.2.11", 587, false},
		{"8.8.8.8", 25, false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct deliver_addr a = A(cases[i].addr);
		if (deliver_mx_is_self(&self, &a, cases[i].port) != cases[i].want)
			fail_msg("%s:%u: want %d", cases[i].addr, cases[i].port,
			         cases[i].want);
	}
	struct deliver_addr a = A("127.0.0.1");
	assert_false(deliver_mx_is_self(NULL, &a, 2525));
}

/* ---- the try list ------------------------------------------------------ */

struct try_case {
	const char *name;
	enum conf_ip_pref pref;
	bool v6_first, allow_private;
	size_t limit;
	enum deliver_try_verdict want;
	const char *out;      /* "addr addr ..." */
};

/* MX 10 a {A1, B1, A2}, MX 20 b {B2}, MX 30 c {A3, A4, A5, A6} */
static const struct deliver_addr ha[] = {
	{AF_INET, {8, 0, 0, 1}},
	{AF_INET6, {0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
	{AF_INET, {8, 0, 0, 2}}};
static const struct deliver_addr hb[] = {
	{AF_INET6, {0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}}};
static const struct deliver_addr hc[] = {
	{AF_INET, {8, 0, 0, 3}}, {AF_INET, {8, 0, 0, 4}},
	{AF_INET, {8, 0, 0, 5}}, {AF_INET, {8, 0, 0, 6}}};

static const struct try_case try_cases[] = {
	{"auto, IPv4 first", CONF_IP_AUTO, false, false, 0, DELIVER_TRY_OK,
	 "8.0.0.1 8.0.0.2 2a00::1 2a00::2 8.0.0.3"},
	{"auto, IPv6 first", CONF_IP_AUTO, true, false, 0, DELIVER_TRY_OK,
	 "2a00::1 8.0.0.1 8.0.0.2 2a00::2 8.0.0.3"},
	{"ipv4 only", CONF_IP_IPV4, false, false, 0, DELIVER_TRY_OK,
	 "8.0.0.1 8.0.0.2 8.0.0.3 8.0.0.4 8.0.0.5"},
	{"ipv6 only", CONF_IP_IPV6, false, false, 0, DELIVER_TRY_OK,
	 "2a00::1 2a00::2"},
	{"any, DNS order", CONF_IP_ANY, false, false, 0, DELIVER_TRY_OK,
	 "8.0.0.1 2a00::1 8.0.0.2 2a00::2 8.0.0.3"},
	{"limit 2, auto", CONF_IP_AUTO, false, false, 2, DELIVER_TRY_OK,
	 /* 8.0.0.2 gives way so that IPv6 is reached in this attempt */
	 "8.0.0.1 2a00::1"},
	{"limit 1", CONF_IP_AUTO, false, false, 1, DELIVER_TRY_OK, "8.0.0.1"},
};

static void fmt_try(const struct deliver_try *t, size_t n, char *buf,
                    size_t len)
{
	buf[0] = '\0';
	for (size_t k = 0; k < n; k++) {
		char a[64];
		snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", k ? " " : "",
		         deliver_addr_str(&t[k].addr, a, sizeof a));
	}
}

static void test_try_list(void **state)
{
	(void)state;
	struct deliver_mx_target t[] = {
		{"a.example", 10, ha, 3}, {"b.example", 20, hb, 1},
		{"c.example", 30, hc, 4}};
	for (size_t i = 0; i < sizeof try_cases / sizeof *try_cases; i++) {
		const struct try_case *c = &try_cases[i];
		struct deliver_try_opts o = {c->pref, c->v6_first, c->allow_private,
		                             25, NULL, c->limit};
		struct deliver_try out[DELIVER_MX_ADDR_LIMIT];
		struct deliver_try_report rep;
		size_t n = 99;
		enum deliver_try_verdict v = deliver_mx_try_list(t, 3, &o, out, &n,
		                                                 &rep);
		char got[512];
		fmt_try(out, v == DELIVER_TRY_OK ? n : 0, got, sizeof got);
		if (v != c->want || strcmp(got, c->out) != 0)
			fail_msg("%s: %d '%s', want %d '%s'", c->name, v, got, c->want,
			         c->out);
	}
	/* the target index says which MX host an address belongs to */
	struct deliver_try_opts o = {CONF_IP_AUTO, false, false, 25, NULL, 0};
	struct deliver_try out[DELIVER_MX_ADDR_LIMIT];
	struct deliver_try_report rep;
	size_t n;
	assert_int_equal(deliver_mx_try_list(t, 3, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	assert_int_equal(n, 5);
	assert_int_equal(out[0].target, 0);
	assert_int_equal(out[2].target, 0);
	assert_int_equal(out[3].target, 1);
	assert_int_equal(out[4].target, 2);
}

static void test_try_list_refused_and_loops(void **state)
{
	(void)state;
	struct deliver_addr priv[] = {A("10.0.0.1"), A("fe80::1")};
	struct deliver_addr lo[] = {A("127.0.0.2"), A("127.0.0.1")};
	struct deliver_addr pub[] = {A("8.8.8.8"), A("8.8.8.8")};
	struct deliver_addr v6only[] = {A("2a00::5")};
	struct deliver_try out[DELIVER_MX_ADDR_LIMIT];
	struct deliver_try_report rep;
	size_t n;
	char got[256];

	/* every address refused: the first reason is reported */
	struct deliver_mx_target t1[] = {{"mx.example", 10, priv, 2}};
	struct deliver_try_opts o = {CONF_IP_AUTO, false, false, 25, NULL, 0};
	assert_int_equal(deliver_mx_try_list(t1, 1, &o, out, &n, &rep),
	                 DELIVER_TRY_REFUSED);
	assert_int_equal(n, 0);
	assert_int_equal(rep.nrefused, 2);
	assert_string_equal(rep.reason, "private address");
	/* mx_allow_private: private allowed, link-local still refused */
	o.allow_private = true;
	assert_int_equal(deliver_mx_try_list(t1, 1, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	fmt_try(out, n, got, sizeof got);
	assert_string_equal(got, "10.0.0.1");
	assert_int_equal(rep.nrefused, 1);
	assert_string_equal(rep.reason, "link-local address");

	/* the same address twice is tried once */
	struct deliver_mx_target t2[] = {{"a", 10, pub, 2}, {"b", 20, pub, 1}};
	assert_int_equal(deliver_mx_try_list(t2, 2, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	assert_int_equal(n, 1);

	/* ipv4 only, an IPv6-only MX: nothing to try */
	struct deliver_mx_target t3[] = {{"v6.example", 10, v6only, 1}};
	o.ip_pref = CONF_IP_IPV4;
	assert_int_equal(deliver_mx_try_list(t3, 1, &o, out, &n, &rep),
	                 DELIVER_TRY_EMPTY);
	/* auto, IPv4 first: the IPv6-only MX is still tried */
	o.ip_pref = CONF_IP_AUTO;
	assert_int_equal(deliver_mx_try_list(t3, 1, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	assert_int_equal(n, 1);

	/* loops: relayd listens on 127.0.0.1:2525 */
	struct deliver_endpoint listen[] = {{A("127.0.0.1"), 2525}};
	struct deliver_self self = {listen, 1, NULL, 0};
	struct deliver_addr sink[] = {A("127.0.0.3")};
	struct deliver_addr me[] = {A("127.0.0.1")};
	o.self = &self;
	o.port = 2525;
	/* the best MX is relayd: loop */
	struct deliver_mx_target t4[] = {{"me", 10, lo, 2}, {"sink", 20, sink, 1}};
	assert_int_equal(deliver_mx_try_list(t4, 2, &o, out, &n, &rep),
	                 DELIVER_TRY_LOOP);
	assert_int_equal(rep.npruned, 2);
	/* a better MX than relayd: it stays, relayd and worse are cut */
	struct deliver_mx_target t5[] = {{"sink", 5, sink, 1}, {"me", 10, me, 1},
	                                 {"other", 10, lo, 1}};
	assert_int_equal(deliver_mx_try_list(t5, 3, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	fmt_try(out, n, got, sizeof got);
	assert_string_equal(got, "127.0.0.3");
	assert_int_equal(rep.npruned, 2);
	/* another port: not relayd */
	o.port = 25;
	assert_int_equal(deliver_mx_try_list(t4, 2, &o, out, &n, &rep),
	                 DELIVER_TRY_OK);
	fmt_try(out, n, got, sizeof got);
	assert_string_equal(got, "127.0.0.2 127.0.0.1 127.0.0.3");
	/* no targets */
	assert_int_equal(deliver_mx_try_list(NULL, 0, &o, out, &n, &rep),
	                 DELIVER_TRY_EMPTY);
}

/* ---- literals ---------------------------------------------------------- */

struct lit_case {
	const char *domain;
	bool allow_private;
	enum deliver_literal_verdict want;
	const char *addr_or_reason;
};

static const struct lit_case lit_cases[] = {
	{"example.com", false, DELIVER_LIT_NONE, NULL},
	{"[8.8.8.8]", false, DELIVER_LIT_OK, "8.8.8.8"},
	{"[IPv6:2a00:1450::1]", false, DELIVER_LIT_OK, "2a00:1450::1"},
	{"[ipv6:2a00:1450::1]", false, DELIVER_LIT_OK, "2a00:1450::1"},
	{"[127.0.0.2]", false, DELIVER_LIT_REFUSED, "loopback address"},
	{"[127.0.0.2]", true, DELIVER_LIT_OK, "127.0.0.2"},
	{"[IPv6:::1]", false, DELIVER_LIT_REFUSED, "loopback address"},
	{"[IPv6:::ffff:10.0.0.1]", false, DELIVER_LIT_REFUSED, "private address"},
	{"[IPv6:::ffff:10.0.0.1]", true, DELIVER_LIT_OK, "10.0.0.1"},
	{"[169.254.1.1]", true, DELIVER_LIT_REFUSED, "link-local address"},
	{"[0.0.0.0]", true, DELIVER_LIT_REFUSED, "unspecified address"},
	{"[127.0.0.1]", true, DELIVER_LIT_LOOP,
	 "the address literal is relayd's own address"},
	{"[IPv6:::ffff:127.0.0.1]", true, DELIVER_LIT_LOOP,
	 "the address literal is relayd's own address"},
	{"[1.2.3]", true, DELIVER_LIT_REFUSED, "malformed address literal"},
	{"[IPv6:1.2.3.4]", true, DELIVER_LIT_REFUSED, "malformed address literal"},
	{"[x-tag:foo]", true, DELIVER_LIT_REFUSED, "malformed address literal"},
	{"[8.8.8.8", true, DELIVER_LIT_REFUSED, "malformed address literal"},
	{"[]", true, DELIVER_LIT_REFUSED, "malformed address literal"},
};

static void test_literals(void **state)
{
	(void)state;
	struct deliver_endpoint listen[] = {{A("127.0.0.1"), 25}};
	struct deliver_self self = {listen, 1, NULL, 0};
	for (size_t i = 0; i < sizeof lit_cases / sizeof *lit_cases; i++) {
		const struct lit_case *c = &lit_cases[i];
		struct deliver_addr a;
		const char *reason = "unset";
		enum deliver_literal_verdict v = deliver_mx_literal(
			c->domain, c->allow_private, &self, 25, &a, &reason);
		char buf[64];
		const char *got = v == DELIVER_LIT_OK
		                ? deliver_addr_str(&a, buf, sizeof buf) : reason;
		if (v != c->want ||
		    (c->addr_or_reason ? !got || strcmp(got, c->addr_or_reason)
		                       : got != NULL))
			fail_msg("%s: %d '%s', want %d '%s'", c->domain, v,
			         got ? got : "NULL", c->want,
			         c->addr_or_reason ? c->addr_or_reason : "NULL");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order),
		cmocka_unit_test(test_order_bounds),
		cmocka_unit_test(test_implicit),
		cmocka_unit_test(test_classes),
		cmocka_unit_test(test_self),
		cmocka_unit_test(test_try_list),
		cmocka_unit_test(test_try_list_refused_and_loops),
		cmocka_unit_test(test_literals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
