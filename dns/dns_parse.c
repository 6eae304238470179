/*
 * dns/dns_parse.c - our own walk of a raw DNS answer (RFC 1035 §4), since
 * c-ares 1.18's parsers drop TTLs and the authority section. Pure: bytes
 * in, a struct dns_result out; no c-ares types, no libuv. Everything is
 * bounded: records (DNS_RR_MAX), names (255 octets), CNAME hops
 * (DNS_CNAME_MAX), TXT (DNS_TXT_MAX); compression pointers must point
 * strictly backwards, so they cannot loop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include "dns/dns_int.h"

const char *const dns_status_names[DNS__STATUS_COUNT] = {
	"ok", "nodata", "nxdomain", "tempfail", "badname", "nomem",
};

#define HDR_LEN 12
#define C_IN 1
/* Decoded presentation names: 253 characters plus NUL, with room for
 * the escape-free form only (see get_name). */
#define NAMEBUF (DNS_NAME_MAX + 1)

static bool name_char_ok(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

int dns_name_norm(const char *name, char *out, size_t outlen)
{
	size_t n = strlen(name);
	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n == 0 || n > DNS_NAME_MAX || n + 1 > outlen)
		return -EINVAL;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (ch == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if (name_char_ok(ch)) {
			if (++label > 63)
				return -EINVAL;
		} else {
			return -EINVAL;
		}
		out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : (char)ch;
	}
	if (label == 0)
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

/* Name decoding results: the message is broken (refuse it), or the name
 * is well formed but holds bytes we do not represent (skip the record). */
#define NAME_BAD   (-1)
#define NAME_ODD   (-2)

/* Reads the name at *pos into out (presentation form, lower case, no
 * trailing dot, "" for the root); *pos moves past it in the record.
 * `slash`: '/' is a usable byte, for owner names and CNAME targets only:
 * RFC 2317 classless reverse delegation CNAMEs 5.2.0.192.in-addr.arpa to
 * 5.0/26.2.0.192.in-addr.arpa. A host name we would connect to or compare
 * (MX exchange, PTR target) never holds one. */
static int get_name(const uint8_t *m, size_t len, size_t *pos, char *out,
                    bool slash)
{
	size_t p = *pos, o = 0, wire = 0, end = 0;
	size_t lowest = p;  /* pointers must go below every label read */
	unsigned hops = 0;
	bool jumped = false, odd = false;
	for (;;) {
		if (p >= len)
			return NAME_BAD;
		uint8_t l = m[p];
		if ((l & 0xc0) == 0xc0) {
			if (p + 1 >= len)
				return NAME_BAD;
			size_t to = ((size_t)(l & 0x3f) << 8) | m[p + 1];
			if (!jumped)
				end = p + 2;
			/* Strictly backwards from the lowest offset reached,
			 * so the walk always ends (RFC 1035 §4.1.4 has
			 * pointers to a "prior occurrence"). */
			if (to >= lowest || ++hops > DNS_PTR_HOPS_MAX)
				return NAME_BAD;
			jumped = true;
			p = lowest = to;
			continue;
		}
		if (l & 0xc0)   /* 0x40, 0x80: extended label types */
			return NAME_BAD;
		wire += (size_t)l + 1;
		if (wire > 255)
			return NAME_BAD;
		if (l == 0) {
			if (!jumped)
				end = p + 1;
			break;
		}
		if (p + 1 + l > len)
			return NAME_BAD;
		if (o > 0)
			out[o++] = '.';
		for (size_t i = 0; i < l; i++) {
			unsigned char ch = m[p + 1 + i];
			if (!name_char_ok(ch) && !(slash && ch == '/'))
				odd = true;
			/* Written anyway (bounded: wire <= 255), but an odd
			 * name is never used. */
			out[o++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32)
			                                    : (char)ch;
		}
		p += 1 + (size_t)l;
	}
	out[o] = '\0';
	*pos = end;
	return odd ? NAME_ODD : 0;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* One resource record, as found. */
struct raw_rr {
	char owner[NAMEBUF];
	bool owner_ok;
	uint16_t type, class;
	uint32_t ttl;
	size_t rdata, rdlen;   /* offsets into the message */
};

/* Walks `count` records from *pos into rr[] (at most room). */
static int walk_rrs(const uint8_t *m, size_t len, size_t *pos, unsigned count,
                    struct raw_rr *rr, size_t room, size_t *n)
{
	for (unsigned i = 0; i < count; i++) {
		if (*n >= room)
			return -1;
		struct raw_rr *r = &rr[*n];
		int g = get_name(m, len, pos, r->owner, true);
		if (g == NAME_BAD || *pos + 10 > len)
			return -1;
		r->owner_ok = g == 0;
		r->type = get16(m + *pos);
		r->class = get16(m + *pos + 2);
		r->ttl = get32(m + *pos + 4);
		/* RFC 2181 §8: a TTL with the top bit set counts as 0. */
		if (r->ttl & 0x80000000u)
			r->ttl = 0;
		r->rdlen = get16(m + *pos + 8);
		r->rdata = *pos + 10;
		if (r->rdata + r->rdlen > len)
			return -1;
		*pos = r->rdata + r->rdlen;
		(*n)++;
	}
	return 0;
}

struct dns_result *dns_result_new_status(enum dns_status st,
                                         const char *qname, uint16_t qtype)
{
	size_t ql = strlen(qname);
	struct dns_result *r = calloc(1, sizeof *r + ql + 1);
	if (!r)
		return NULL;
	char *q = (char *)(r + 1);
	memcpy(q, qname, ql + 1);
	r->status = st;
	r->qtype = qtype;
	r->qname = r->canon = q;
	r->size = sizeof *r + ql + 1;
	r->refs = 1;
	return r;
}

struct dns_result *dns_result_ref(struct dns_result *r)
{
	if (r)
		r->refs++;
	return r;
}

void dns_result_unref(struct dns_result *r)
{
	if (r && --r->refs == 0)
		free(r);
}

/* A record kept for the result, before the final copy. */
struct kept {
	const struct raw_rr *raw;
	uint16_t pref;
	char name[NAMEBUF];
	size_t txtlen;           /* TXT: the strings' bytes joined */
};

static enum dns_status fail(const char **why, const char *w)
{
	*why = w;
	return DNS_TEMPFAIL;
}

enum dns_status dns_parse(const uint8_t *m, size_t len, const char *qname,
                          uint16_t qtype, struct dns_result **out,
                          const char **why)
{
	*out = NULL;
	*why = "";
	if (len < HDR_LEN)
		return fail(why, "short answer");
	uint16_t flags = get16(m + 2);
	if (!(flags & 0x8000))
		return fail(why, "not a response");
	if ((flags >> 11 & 0xf) != 0)
		return fail(why, "unexpected opcode");
	/* Truncated: c-ares retries over TCP itself; a TC answer that still
	 * reaches us is all we got, and incomplete (RFC 2181 §9). */
	if (flags & 0x0200)
		return fail(why, "truncated");
	unsigned rcode = flags & 0xf;
	switch (rcode) {
	case 0: case 3: break;
	case 1: return fail(why, "FORMERR");
	case 2: return fail(why, "SERVFAIL");
	case 4: return fail(why, "NOTIMP");
	case 5: return fail(why, "REFUSED");
	default: return fail(why, "unknown rcode");
	}
	unsigned qd = get16(m + 4), an = get16(m + 6), ns = get16(m + 8);
	if (qd != 1)
		return fail(why, "not one question");
	if (an > DNS_RR_MAX || ns > DNS_RR_MAX)
		return fail(why, "too many records");

	/* The question must be ours (c-ares matches the id and, in 1.18,
	 * the question too; we check again rather than trust it). */
	size_t pos = HDR_LEN;
	char qn[NAMEBUF];
	int g = get_name(m, len, &pos, qn, false);
	if (g == NAME_BAD || pos + 4 > len)
		return fail(why, "bad question");
	if (g != 0 || strcasecmp(qn, qname) != 0 || get16(m + pos) != qtype ||
	    get16(m + pos + 2) != C_IN)
		return fail(why, "answer to another question");
	pos += 4;

	/* Both sections at most 2 * DNS_RR_MAX records: on the heap. */
	struct raw_rr *rr = malloc(sizeof *rr * (an + ns + 1));
	struct kept *kept = malloc(sizeof *kept * (an + 1));
	struct dns_result *res = NULL;
	enum dns_status st = DNS_TEMPFAIL;
	if (!rr || !kept) {
		st = DNS_NOMEM;
		goto out;
	}
	size_t nan = 0, nns = 0;
	if (walk_rrs(m, len, &pos, an, rr, an, &nan) < 0 ||
	    walk_rrs(m, len, &pos, ns, rr + an, ns, &nns) < 0) {
		*why = "malformed record";
		goto out;
	}

	/* Follow the CNAME chain from the question (RFC 1034 §3.6.2), in
	 * any order the records come. */
	char chain[DNS_CNAME_MAX + 1][NAMEBUF];
	size_t nchain = 0;
	strcpy(chain[0], qn);
	uint32_t ttl = UINT32_MAX;
	for (;;) {
		const struct raw_rr *c = NULL;
		if (qtype != DNS_T_CNAME)
			for (size_t i = 0; i < nan && !c; i++)
				if (rr[i].owner_ok && rr[i].type == DNS_T_CNAME &&
				    rr[i].class == C_IN &&
				    strcmp(rr[i].owner, chain[nchain]) == 0)
					c = &rr[i];
		if (!c)
			break;
		if (nchain == DNS_CNAME_MAX) {
			*why = "CNAME chain too long";
			goto out;
		}
		size_t p = c->rdata;
		char *next = chain[nchain + 1];
		g = get_name(m, len, &p, next, true);
		if (g == NAME_BAD || p != c->rdata + c->rdlen) {
			*why = "malformed CNAME";
			goto out;
		}
		if (g != 0) {
			*why = "CNAME to an unusable name";
			goto out;
		}
		for (size_t k = 0; k <= nchain; k++)
			if (strcmp(chain[k], next) == 0) {
				*why = "CNAME loop";
				goto out;
			}
		if (c->ttl < ttl)
			ttl = c->ttl;
		nchain++;
	}
	const char *canon = chain[nchain];

	/* The records of the type at the end of the chain. */
	size_t nk = 0, pool = 0, unusable = 0;
	struct kept root;
	bool root_seen = false;
	for (size_t i = 0; i < nan; i++) {
		const struct raw_rr *r = &rr[i];
		if (!r->owner_ok || r->type != qtype || r->class != C_IN ||
		    strcmp(r->owner, canon) != 0)
			continue;
		struct kept *k = &kept[nk];
		k->raw = r;
		k->name[0] = '\0';
		k->pref = 0;
		k->txtlen = 0;
		size_t p = r->rdata;
		switch (qtype) {
		case DNS_T_A:
		case DNS_T_AAAA:
			if (r->rdlen != (qtype == DNS_T_A ? 4u : 16u)) {
				*why = "bad address length";
				goto out;
			}
			break;
		case DNS_T_MX:
			if (r->rdlen < 3) {
				*why = "malformed MX";
				goto out;
			}
			k->pref = get16(m + p);
			p += 2;
			/* fall through */
		case DNS_T_PTR:
		case DNS_T_CNAME:
			g = get_name(m, len, &p, k->name, false);
			if (g == NAME_BAD || p != r->rdata + r->rdlen) {
				*why = "malformed name in record";
				goto out;
			}
			if (g != 0) {
				unusable++;
				continue;   /* a target we would never use */
			}
			if (qtype == DNS_T_MX && k->name[0] == '\0') {
				/* "." (RFC 7505): kept aside; it counts only
				 * when there is no other MX. */
				if (!root_seen || r->ttl < root.raw->ttl)
					root = *k;
				root_seen = true;
				continue;
			}
			pool += strlen(k->name) + 1;
			break;
		case DNS_T_TXT: {
			/* RFC 1035 §3.3.14: one or more <character-string>s,
			 * joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2). */
			size_t tl = 0, q = p, e = r->rdata + r->rdlen;
			if (r->rdlen == 0) {
				*why = "malformed TXT";
				goto out;
			}
			while (q < e) {
				size_t sl = m[q];
				if (q + 1 + sl > e) {
					*why = "malformed TXT";
					goto out;
				}
				tl += sl;
				q += 1 + sl;
			}
			if (tl > DNS_TXT_MAX) {
				*why = "TXT record too long";
				goto out;
			}
			k->txtlen = tl;
			pool += tl + 1;
			break;
		}
		default:
			continue;
		}
		if (r->ttl < ttl)
			ttl = r->ttl;
		nk++;
	}

	/* RFC 7505 §3: a domain whose only MX target is "." (the null MX,
	 * "0 .") accepts no mail. A "." beside real MX hosts is dropped. */
	bool nullmx = false;
	/* MX records whose every target is a name we do not use are still
	 * MX records, not "no MX": the implicit MX would send the mail to
	 * the domain's A record (RFC 5321 §5.1; deliver_mx.h: malformed
	 * hosts only are DELIVER_MX_NONE, a deferral, never the implicit
	 * MX). Beside a "." they are dropped as deliver_mx_order drops
	 * them, and the null MX stands. */
	if (qtype == DNS_T_MX && nk == 0 && unusable > 0 && !root_seen) {
		*why = "no usable MX target";
		goto out;
	}
	if (nk == 0 && root_seen) {
		kept[0] = root;
		nk = 1;
		pool += 1;
		if (root.raw->ttl < ttl)
			ttl = root.raw->ttl;
		nullmx = true;
	}

	size_t qlen = strlen(qn), clen = strlen(canon);
	size_t size = sizeof *res + nk * sizeof(struct dns_rr) + qlen + 1 +
	              clen + 1 + pool;
	res = calloc(1, size);
	if (!res) {
		st = DNS_NOMEM;
		goto out;
	}
	struct dns_rr *orr = (struct dns_rr *)(res + 1);
	char *sp = (char *)(orr + nk);
	memcpy(sp, qn, qlen + 1);
	res->qname = sp;
	sp += qlen + 1;
	memcpy(sp, canon, clen + 1);
	res->canon = sp;
	sp += clen + 1;
	res->qtype = qtype;
	res->refs = 1;
	res->size = size;
	res->rr = orr;
	res->nrr = nk;
	for (size_t i = 0; i < nk; i++) {
		const struct kept *k = &kept[i];
		struct dns_rr *o = &orr[i];
		o->type = qtype;
		o->ttl = k->raw->ttl;
		o->pref = k->pref;
		if (qtype == DNS_T_A) {
			o->addr.family = AF_INET;
			memcpy(o->addr.a, m + k->raw->rdata, 4);
		} else if (qtype == DNS_T_AAAA) {
			o->addr.family = AF_INET6;
			memcpy(o->addr.a, m + k->raw->rdata, 16);
		} else if (qtype == DNS_T_TXT) {
			size_t q = k->raw->rdata, e = q + k->raw->rdlen, w = 0;
			while (q < e) {
				size_t sl = m[q];
				memcpy(sp + w, m + q + 1, sl);
				w += sl;
				q += 1 + sl;
			}
			sp[w] = '\0';
			o->txt = sp;
			o->txtlen = w;
			sp += w + 1;
		} else {
			size_t nl = strlen(k->name);
			memcpy(sp, k->name, nl + 1);
			o->name = sp;
			sp += nl + 1;
		}
	}
	res->nullmx = nullmx;

	if (nk > 0) {
		res->status = DNS_OK;
		res->ttl = ttl;
		st = DNS_OK;
		goto out;
	}
	/* No records: a name that does not exist, or has none of the type.
	 * RFC 2308 §5: the negative TTL is the lesser of the SOA record's
	 * TTL and its MINIMUM field. */
	st = rcode == 3 ? DNS_NXDOMAIN : DNS_NODATA;
	res->status = st;
	res->ttl = DNS_NEG_TTL_DEFAULT;
	for (size_t i = 0; i < nns; i++) {
		const struct raw_rr *r = &rr[an + i];
		if (r->type != DNS_T_SOA || r->class != C_IN)
			continue;
		size_t p = r->rdata;
		char tmp[NAMEBUF];
		if (get_name(m, len, &p, tmp, true) == NAME_BAD ||
		    get_name(m, len, &p, tmp, true) == NAME_BAD ||
		    p + 20 != r->rdata + r->rdlen) {
			*why = "malformed SOA";
			st = DNS_TEMPFAIL;
			dns_result_unref(res);
			res = NULL;
			goto out;
		}
		uint32_t min = get32(m + p + 16);
		if (min & 0x80000000u)
			min = 0;
		res->ttl = r->ttl < min ? r->ttl : min;
		res->neg_soa = true;
		break;
	}
	/* The answer for qname also rests on the CNAMEs that led there. */
	if (ttl < res->ttl)
		res->ttl = ttl;
	if (nchain > 0 && st == DNS_NXDOMAIN)
		*why = "CNAME target does not exist";

out:
	if (st == DNS_TEMPFAIL || st == DNS_NOMEM) {
		if (st == DNS_NOMEM)
			*why = "out of memory";
		dns_result_unref(res);
		res = NULL;
	}
	free(rr);
	free(kept);
	*out = res;
	return st;
}

/* ---- small pure helpers -------------------------------------------------- */

int dns_reverse_name(const struct dns_addr *a, char *out, size_t outlen)
{
	int n;
	if (a->family == AF_INET) {
		n = snprintf(out, outlen, "%u.%u.%u.%u.in-addr.arpa", a->a[3],
		             a->a[2], a->a[1], a->a[0]);
	} else if (a->family == AF_INET6) {
		/* 32 nibbles, least significant first, then ip6.arpa. */
		static const char hex[] = "0123456789abcdef";
		if (outlen < 64 + sizeof "ip6.arpa")
			return -ENOSPC;
		char *p = out;
		for (int i = 15; i >= 0; i--) {
			*p++ = hex[a->a[i] & 0xf];
			*p++ = '.';
			*p++ = hex[a->a[i] >> 4];
			*p++ = '.';
		}
		memcpy(p, "ip6.arpa", sizeof "ip6.arpa");
		return 0;
	} else {
		return -EAFNOSUPPORT;
	}
	return n < 0 || (size_t)n >= outlen ? -ENOSPC : 0;
}

const char *dns_addr_str(const struct dns_addr *a, char *out, size_t outlen)
{
	if (!inet_ntop(a->family, a->a, out, (socklen_t)outlen))
		snprintf(out, outlen, "?");
	return out;
}

const char *dns_type_name(uint16_t type)
{
	switch (type) {
	case DNS_T_A: return "A";
	case DNS_T_CNAME: return "CNAME";
	case DNS_T_SOA: return "SOA";
	case DNS_T_PTR: return "PTR";
	case DNS_T_MX: return "MX";
	case DNS_T_TXT: return "TXT";
	case DNS_T_AAAA: return "AAAA";
	default: return NULL;
	}
}
