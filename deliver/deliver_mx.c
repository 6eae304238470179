/*
 * deliver/deliver_mx.c - Direct delivery's routing decisions (issue 9
 * §3): MX ordering, the implicit MX, the addresses of one attempt,
 * refused address ranges, address literals and loops. Pure: the engine
 * feeds it what dns/ answered and connects where it says.
 */
#include "deliver/deliver_mx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common/addr.h"

const char *const deliver_addr_class_names[DELIVER_ADDR__COUNT] = {
	[DELIVER_ADDR_PUBLIC] = "public address",
	[DELIVER_ADDR_LOOPBACK] = "loopback address",
	[DELIVER_ADDR_PRIVATE] = "private address",
	[DELIVER_ADDR_DOCUMENTATION] = "documentation address",
	[DELIVER_ADDR_LINK_LOCAL] = "link-local address",
	[DELIVER_ADDR_UNSPECIFIED] = "unspecified address",
	[DELIVER_ADDR_MULTICAST] = "multicast address",
	[DELIVER_ADDR_RESERVED] = "reserved address",
};

/* ---- names ------------------------------------------------------------ */

/* Lowercase copy of a host name without its trailing dot into out
 * (SMTP_DOMAIN_MAX + 1). 1: the root ("." or ""), 0: a host name,
 * -EINVAL: not a host name (labels of letters, digits, '-', '_', 1-63
 * octets, 253 in all). */
static int host_norm(const char *s, size_t max, char *out)
{
	size_t n = strnlen(s, max);
	if (n == max || n > SMTP_DOMAIN_MAX)
		return -EINVAL;     /* not terminated within max, or too long */
	if (n > 0 && s[n - 1] == '.')
		n--;
	if (n == 0) {
		out[0] = '\0';
		return 1;
	}
	if (n > 253)
		return -EINVAL;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		           c == '-' || c == '_') {
			label++;
		} else if (c >= 'A' && c <= 'Z') {
			c = (char)(c + 32);
			label++;
		} else {
			return -EINVAL;
		}
		if (label > 63)
			return -EINVAL;
		out[i] = c;
	}
	if (label == 0)
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

/* ---- MX order --------------------------------------------------------- */

enum deliver_mx_verdict deliver_mx_order(struct deliver_mx *mx, size_t *n,
                                         deliver_rand_fn rnd, void *ctx)
{
	size_t in = *n < DELIVER_MX_INPUT_MAX ? *n : DELIVER_MX_INPUT_MAX;
	size_t k = 0, nulls = 0;
	/* 1. normalise, drop malformed and null records */
	for (size_t i = 0; i < in; i++) {
		char h[SMTP_DOMAIN_MAX + 1];
		int r = host_norm(mx[i].host, sizeof mx[i].host, h);
		if (r == 1)
			nulls++;
		if (r != 0)
			continue;
		mx[k].pref = mx[i].pref;
		memcpy(mx[k].host, h, strlen(h) + 1);
		k++;
	}
	/* 2. RFC 7505: a null MX alone means no mail */
	if (k == 0) {
		*n = 0;
		return nulls > 0 ? DELIVER_MX_NULL : DELIVER_MX_NONE;
	}
	/* 3. stable insertion sort by preference (k <= 128) */
	for (size_t i = 1; i < k; i++) {
		struct deliver_mx x = mx[i];
		size_t j = i;
		while (j > 0 && mx[j - 1].pref > x.pref) {
			mx[j] = mx[j - 1];
			j--;
		}
		mx[j] = x;
	}
	/* ... and a host named twice keeps its first (best) place */
	size_t m = 0;
	for (size_t i = 0; i < k; i++) {
		bool dup = false;
		for (size_t j = 0; j < m && !dup; j++)
			dup = strcmp(mx[j].host, mx[i].host) == 0;
		if (!dup)
			mx[m++] = mx[i];
	}
	/* 4. RFC 5321 §5.1: equal preferences in random order */
	for (size_t lo = 0; lo < m;) {
		size_t hi = lo + 1;
		while (hi < m && mx[hi].pref == mx[lo].pref)
			hi++;
		for (size_t i = hi - 1; rnd && i > lo; i--) {
			/* modulo bias is at most (i - lo + 1) / 2^32 */
			size_t j = lo + (size_t)(rnd(ctx) % (uint32_t)(i - lo + 1));
			struct deliver_mx t = mx[i];
			mx[i] = mx[j];
			mx[j] = t;
		}
		lo = hi;
	}
	/* 5. bound */
	*n = m < DELIVER_MX_HOSTS_MAX ? m : DELIVER_MX_HOSTS_MAX;
	return DELIVER_MX_HOSTS;
}

int deliver_mx_implicit(const char *domain, struct deliver_mx *out)
{
	char h[SMTP_DOMAIN_MAX + 1];
	if (!domain || host_norm(domain, SMTP_DOMAIN_MAX + 1, h) != 0)
		return -EINVAL;
	out->pref = 0;
	memcpy(out->host, h, strlen(h) + 1);
	return 0;
}

/* ---- address classes --------------------------------------------------- */

static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0xff, 0xff};

/* A v4-mapped IPv6 address as the IPv4 one; others unchanged. */
static struct deliver_addr addr_norm(const struct deliver_addr *a)
{
	struct deliver_addr r = *a;
	if (a->family == AF_INET6 && memcmp(a->a, v4mapped, 12) == 0) {
		r.family = AF_INET;
		memmove(r.a, a->a + 12, 4);
		memset(r.a + 4, 0, 12);
	}
	return r;
}

static enum deliver_addr_class class_v4(const unsigned char *b)
{
	if ((b[0] | b[1] | b[2] | b[3]) == 0)
		return DELIVER_ADDR_UNSPECIFIED;
	if (b[0] == 127)
		return DELIVER_ADDR_LOOPBACK;
	if (b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
	    (b[0] == 192 && b[1] == 168) ||
	    (b[0] == 100 && (b[1] & 0xc0) == 64))
		return DELIVER_ADDR_PRIVATE;
	if (b[0] == 169 && b[1] == 254)
		return DELIVER_ADDR_LINK_LOCAL;
	if ((b[0] == 192 && b[1] == 0 && b[2] == 2) ||
	    (b[0] == 198 && b[1] == 51 && b[2] == 100) ||
	    (b[0] == 203 && b[1] == 0 && b[2] == 113))
		return DELIVER_ADDR_DOCUMENTATION;
	if ((b[0] & 0xf0) == 224)
		return DELIVER_ADDR_MULTICAST;
	if (b[0] == 0 || b[0] >= 240)
		return DELIVER_ADDR_RESERVED;
	return DELIVER_ADDR_PUBLIC;
}

static enum deliver_addr_class class_v6(const unsigned char *b)
{
	static const unsigned char zero[16];
	if (memcmp(b, zero, 16) == 0)
		return DELIVER_ADDR_UNSPECIFIED;
	if (memcmp(b, zero, 15) == 0 && b[15] == 1)
		return DELIVER_ADDR_LOOPBACK;
	if (memcmp(b, zero, 12) == 0)        /* ::a.b.c.d, RFC 4291 §2.5.5.1 */
		return DELIVER_ADDR_RESERVED;
	if (b[0] == 0xff)
		return DELIVER_ADDR_MULTICAST;
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
		return DELIVER_ADDR_LINK_LOCAL;
	if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0))
		return DELIVER_ADDR_PRIVATE;
	if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
		return DELIVER_ADDR_DOCUMENTATION;
	/* Prefixes that carry an IPv4 address a gateway or tunnel sends to:
	 * NAT64 (RFC 6052 64:ff9b::/96, RFC 8215 local-use 64:ff9b:1::/48,
	 * whose last 32 bits are the v4 address), SIIT ::ffff:0:a.b.c.d
	 * (RFC 2765) and 6to4 2002:aabb:ccdd::/48 (RFC 3056). A name whose
	 * AAAA wraps 10.0.0.1 or 127.0.0.1 reaches that through the
	 * gateway: it is what it wraps unless that is public. */
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
	static const unsigned char siit[12] = {0, 0, 0, 0, 0, 0, 0, 0,
	                                       0xff, 0xff, 0, 0};
	const unsigned char *v4 = NULL;
	if (memcmp(b, nat64, 12) == 0 || memcmp(b, siit, 12) == 0 ||
	    (memcmp(b, nat64, 4) == 0 && b[4] == 0 && b[5] == 1))
		v4 = b + 12;
	else if (b[0] == 0x20 && b[1] == 0x02)
		v4 = b + 2;
	if (v4) {
		enum deliver_addr_class c = class_v4(v4);
		if (c != DELIVER_ADDR_PUBLIC)
			return c;
	}
	return DELIVER_ADDR_PUBLIC;
}

enum deliver_addr_class deliver_addr_classify(const struct deliver_addr *a)
{
	struct deliver_addr x = addr_norm(a);
	if (x.family == AF_INET)
		return class_v4(x.a);
	if (x.family == AF_INET6)
		return class_v6(x.a);
	return DELIVER_ADDR_RESERVED;
}

const char *deliver_mx_addr_refused(const struct deliver_addr *a,
                                    bool allow_private)
{
	enum deliver_addr_class c = deliver_addr_classify(a);
	switch (c) {
	case DELIVER_ADDR_PUBLIC:
		return NULL;
	case DELIVER_ADDR_LOOPBACK:
	case DELIVER_ADDR_PRIVATE:
	case DELIVER_ADDR_DOCUMENTATION:
		return allow_private ? NULL : deliver_addr_class_names[c];
	default:
		return deliver_addr_class_names[c];
	}
}

/* ---- loops ------------------------------------------------------------- */

static bool addr_eq(const struct deliver_addr *x, const struct deliver_addr *y)
{
	struct deliver_addr a = addr_norm(x), b = addr_norm(y);
	if (a.family != b.family)
		return false;
	return memcmp(a.a, b.a, a.family == AF_INET ? 4 : 16) == 0;
}

bool deliver_mx_is_self(const struct deliver_self *self,
                        const struct deliver_addr *a, uint16_t port)
{
	if (!self)
		return false;
	for (size_t i = 0; i < self->nlisten; i++) {
		const struct deliver_endpoint *l = &self->listen[i];
		if (l->port != port)
			continue;
		if (deliver_addr_classify(&l->addr) != DELIVER_ADDR_UNSPECIFIED) {
			if (addr_eq(&l->addr, a))
				return true;
			continue;
		}
		/* a wildcard listener: every local address on that port */
		if (deliver_addr_classify(a) == DELIVER_ADDR_LOOPBACK)
			return true;
		for (size_t j = 0; j < self->nlocal; j++)
			if (addr_eq(&self->local[j], a))
				return true;
	}
	return false;
}

/* ---- the try list ------------------------------------------------------ */

static bool fam_ok(int family, enum conf_ip_pref p)
{
	return p == CONF_IP_ANY || p == CONF_IP_AUTO ||
	       (p == CONF_IP_IPV4 && family == AF_INET) ||
	       (p == CONF_IP_IPV6 && family == AF_INET6);
}

enum deliver_try_verdict deliver_mx_try_list(
	const struct deliver_mx_target *t, size_t nt,
	const struct deliver_try_opts *o, struct deliver_try *out,
	size_t *n, struct deliver_try_report *rep)
{
	struct deliver_try cand[DELIVER_MX_CAND_MAX];
	size_t nc = 0, limit = o->limit ? o->limit : DELIVER_MX_ADDR_LIMIT;
	memset(rep, 0, sizeof *rep);
	*n = 0;

	/* 1. loops: only hosts better than the best one that is us */
	bool cut = false;
	uint16_t self_pref = 0;
	for (size_t i = 0; i < nt && o->self; i++)
		for (size_t j = 0; j < t[i].naddrs; j++)
			if (deliver_mx_is_self(o->self, &t[i].addrs[j], o->port) &&
			    (!cut || t[i].pref < self_pref)) {
				cut = true;
				self_pref = t[i].pref;
			}
	size_t kept = 0;
	for (size_t i = 0; i < nt; i++) {
		if (cut && t[i].pref >= self_pref) {
			rep->npruned++;
			continue;
		}
		kept++;
	}
	if (cut && kept == 0)
		return DELIVER_TRY_LOOP;

	/* 2. candidates, host by host, family order per ip_preference */
	int first = o->ip_pref == CONF_IP_IPV6 ||
	            (o->ip_pref == CONF_IP_AUTO && o->v6_first) ? AF_INET6
	                                                        : AF_INET;
	for (size_t i = 0; i < nt && nc < DELIVER_MX_CAND_MAX; i++) {
		if (cut && t[i].pref >= self_pref)
			continue;
		/* auto: two passes (first family, then the other); else one
		 * pass in DNS order over the allowed families */
		int passes = o->ip_pref == CONF_IP_AUTO ? 2 : 1;
		for (int pass = 0; pass < passes; pass++) {
			for (size_t j = 0; j < t[i].naddrs &&
			     nc < DELIVER_MX_CAND_MAX; j++) {
				struct deliver_addr a = addr_norm(&t[i].addrs[j]);
				if (a.family != AF_INET && a.family != AF_INET6)
					continue;
				if (o->ip_pref == CONF_IP_AUTO &&
				    (a.family == first) != (pass == 0))
					continue;
				if (!fam_ok(a.family, o->ip_pref))
					continue;
				const char *why = deliver_mx_addr_refused(
					&a, o->allow_private);
				if (why) {
					if (rep->nrefused++ == 0) {
						rep->reason = why;
						rep->reason_target = i;
						rep->reason_addr = a;
					}
					continue;
				}
				bool dup = false;
				for (size_t k = 0; k < nc && !dup; k++)
					dup = addr_eq(&cand[k].addr, &a);
				if (dup)
					continue;
				cand[nc].addr = a;
				cand[nc].target = i;
				nc++;
			}
		}
	}
	if (nc == 0)
		return rep->nrefused ? DELIVER_TRY_REFUSED : DELIVER_TRY_EMPTY;

	/* 3. the limit, keeping one address of the other family in it */
	size_t m = nc < limit ? nc : limit;
	memcpy(out, cand, m * sizeof *out);
	if ((o->ip_pref == CONF_IP_AUTO || o->ip_pref == CONF_IP_ANY) &&
	    m < nc && m > 1) {
		bool has4 = false, has6 = false;
		for (size_t k = 0; k < m; k++)
			if (out[k].addr.family == AF_INET)
				has4 = true;
			else
				has6 = true;
		for (size_t k = m; k < nc && (has4 != has6); k++)
			if ((cand[k].addr.family == AF_INET) != has4) {
				out[m - 1] = cand[k];
				break;
			}
	}
	*n = m;
	return DELIVER_TRY_OK;
}

/* ---- literals ---------------------------------------------------------- */

enum deliver_literal_verdict deliver_mx_literal(
	const char *domain, bool allow_private, const struct deliver_self *self,
	uint16_t port, struct deliver_addr *out, const char **reason)
{
	unsigned char bin[16];
	int family;
	*reason = NULL;
	int r = addr_domain_literal(domain, &family, bin);
	if (r == -ENOENT)
		return DELIVER_LIT_NONE;
	if (r < 0) {
		*reason = "malformed address literal";
		return DELIVER_LIT_REFUSED;
	}
	memset(out, 0, sizeof *out);
	out->family = family;
	memcpy(out->a, bin, family == AF_INET ? 4 : 16);
	*out = addr_norm(out);
	if ((*reason = deliver_mx_addr_refused(out, allow_private)))
		return DELIVER_LIT_REFUSED;
	if (deliver_mx_is_self(self, out, port)) {
		*reason = "the address literal is relayd's own address";
		return DELIVER_LIT_LOOP;
	}
	return DELIVER_LIT_OK;
}

const char *deliver_addr_str(const struct deliver_addr *a, char *buf,
                             size_t len)
{
	if (!inet_ntop(a->family, a->a, buf, (socklen_t)len))
		snprintf(buf, len, "?");
	return buf;
}
