/*
 * tests/fuzz/fuzz_spf.c - libFuzzer harness for dns/spf_parse.c (the SPF
 * record parser and the macro expander) and the pure check_host() core
 * of dns/spf.c. Input: one control byte, then the text.
 *   bit 0: prefix "v=spf1 " to the text (most inputs then parse);
 *   bit 1: the client is IPv6 (2001:db8::cb01) instead of 192.0.2.3;
 *   bit 2: expand the text itself as a macro-string (exp letters allowed
 *          when bit 3), instead of parsing it;
 *   bit 4: evaluate the record: every TXT question is answered with the
 *          text, A/AAAA with the client's address (bit 5: a NODATA),
 *          MX with two names, PTR with one name.
 * Parsed records must keep their bounds (terms, strings inside the
 * arena); every domain-spec and modifier value of a parsed record must
 * expand; expansions are NUL-terminated, their length returned, names at
 * most 253; an evaluation ends within its limits.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "dns/spf_int.h"

static void check_expand(const char *spec, const struct spf_macro_ctx *c)
{
	char out[512], name[SPF_EXPAND_MAX + 1], err[256];
	int n = spf_expand(spec, c, out, sizeof out, err, sizeof err);
	if (n >= 0 && ((size_t)n >= sizeof out || strlen(out) != (size_t)n))
		abort();
	if (n < 0 && n != -EINVAL && n != -ENOBUFS)
		abort();
	n = spf_expand_name(spec, c, name, sizeof name, err, sizeof err);
	if (n >= 0 && (n > SPF_EXPAND_MAX || strlen(name) != (size_t)n))
		abort();
}

static bool inside(const struct spf_record *r, const char *p)
{
	return p >= r->arena && p < r->arena + sizeof r->arena &&
	       memchr(p, '\0', (size_t)(r->arena + sizeof r->arena - p));
}

static void evaluate(const char *txt, size_t len, const struct dns_addr *ip,
                     bool nodata)
{
	struct spf_query q = {
		.ip = *ip, .domain = "example.test",
		.sender = "strong-bad@email.example.com", .helo = "mx.example.org",
	};
	struct spf_eval *e;
	if (spf_eval_new(&q, &e) < 0)
		return;
	struct spf_ask a;
	unsigned asks = 0;
	struct dns_rr rr[2];
	while (spf_eval_next(e, &a)) {
		/* Bounded by the limits: 1 + 10 terms x (1 + 10 names). */
		if (++asks > 1 + SPF_LOOKUP_MAX * (2 + SPF_NAMES_MAX))
			abort();
		struct dns_result r = {
			.status = DNS_OK, .qtype = a.type, .qname = a.name,
			.canon = a.name, .nrr = 1, .rr = rr,
		};
		memset(rr, 0, sizeof rr);
		rr[0].type = rr[1].type = a.type;
		switch (a.type) {
		case DNS_T_TXT:
			rr[0].txt = txt;
			rr[0].txtlen = len;
			break;
		case DNS_T_A:
		case DNS_T_AAAA:
			if (nodata) {
				r.status = DNS_NODATA;
				r.nrr = 0;
			}
			rr[0].addr = *ip;
			break;
		case DNS_T_MX:
			rr[0].name = "mx1.example.test";
			rr[1].name = "mx2.example.test";
			r.nrr = 2;
			break;
		case DNS_T_PTR:
			rr[0].name = "mx1.example.test";
			break;
		default:
			abort();
		}
		spf_eval_answer(e, &r);
	}
	const struct spf_result *res = spf_eval_result(e);
	if (res->verdict >= SPF__VERDICT_COUNT ||
	    res->dns_lookups > SPF_LOOKUP_MAX ||
	    res->void_lookups > SPF_VOID_MAX + 1 ||
	    !memchr(res->why, '\0', sizeof res->why) ||
	    !memchr(res->path, '\0', sizeof res->path) ||
	    !memchr(res->mechanism, '\0', sizeof res->mechanism))
		abort();
	if ((res->verdict == SPF_PASS || res->verdict == SPF_FAIL ||
	     res->verdict == SPF_SOFTFAIL) && !res->mechanism[0])
		abort();
	spf_eval_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > DNS_TXT_MAX + 1)
		return 0;
	uint8_t ctl = data[0];
	char *txt = malloc(size + 8);
	if (!txt)
		return 0;
	size_t len = 0;
	if (ctl & 1) {
		memcpy(txt, "v=spf1 ", 7);
		len = 7;
	}
	memcpy(txt + len, data + 1, size - 1);
	len += size - 1;
	txt[len] = '\0';

	struct spf_macro_ctx c = {
		.sender = "strong-bad@email.example.com",
		.domain = "email.example.com", .helo = "mx.example.org",
		.exp = (ctl & 8) != 0, .receiver = "relay.example.net",
		.now = 1700000000,
	};
	c.ip.family = (ctl & 2) ? AF_INET6 : AF_INET;
	inet_pton(c.ip.family, (ctl & 2) ? "2001:db8::cb01" : "192.0.2.3",
	          c.ip.a);

	if (ctl & 4) {
		if (!memchr(txt, '\0', len))
			check_expand(txt, &c);
		free(txt);
		return 0;
	}
	struct spf_record *r;
	char err[256];
	int rc = spf_parse(txt, len, &r, err, sizeof err);
	if (rc == 0) {
		if (r->nterms > SPF_TERMS_MAX)
			abort();
		for (size_t i = 0; i < r->nterms; i++) {
			const struct spf_term *t = &r->terms[i];
			if (t->kind >= SPF__T_COUNT || !inside(r, t->text) ||
			    (t->spec && !inside(r, t->spec)) || !strchr("+-~?", t->qual))
				abort();
			if (t->spec) {
				/* A domain-spec the parser took expands. */
				char out[2048];
				struct spf_macro_ctx ce = c;
				ce.exp = t->kind == SPF_T_UNKNOWN_MOD;
				int n = spf_expand(t->spec, &ce, out, sizeof out, err,
				                   sizeof err);
				if (n == -EINVAL)
					abort();
				check_expand(t->spec, &ce);
			}
		}
		spf_record_free(r);
	} else if (rc != -EINVAL && rc != -E2BIG) {
		abort();
	}
	if ((ctl & 16) && !memchr(txt, '\0', len))
		evaluate(txt, len, &c.ip, (ctl & 32) != 0);
	free(txt);
	return 0;
}
