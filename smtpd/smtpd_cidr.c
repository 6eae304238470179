/*
 * smtpd/smtpd_cidr.c - CIDR lists: parse "127.0.0.0/8, ::1/128" and match
 * client addresses against them, naming the entry that matched. Pure
 * (inet_pton and inet_ntop only); the list is the one allocation.
 */
#include "smtpd/smtpd_cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0xff, 0xff};

void smtpd_cidr_text(const struct smtpd_cidr *c, char *out, size_t outlen)
{
	char a[INET6_ADDRSTRLEN] = "?";
	inet_ntop(c->family == 4 ? AF_INET : AF_INET6, c->addr, a, sizeof a);
	snprintf(out, outlen, "%s/%u", a, (unsigned)c->bits);
}

/* One trimmed item [s, s + n), copied to be NUL-terminated. */
static int parse_item(const char *s, size_t n, struct smtpd_cidr *c,
                      char *err, size_t errlen)
{
	char item[INET6_ADDRSTRLEN + 8], q[SMTPD_CIDR_TEXT_MAX * 4 + 8];
	log_escape(q, sizeof q, s, n);
	if (n >= sizeof item) {
		snprintf(err, errlen, "'%s': not an address or network", q);
		return -EINVAL;
	}
	memcpy(item, s, n);
	item[n] = '\0';
	char *slash = strchr(item, '/');
	if (slash)
		*slash = '\0';
	memset(c, 0, sizeof *c);
	int max;
	if (inet_pton(AF_INET, item, c->addr) == 1) {
		c->family = 4;
		max = 32;
	} else if (inet_pton(AF_INET6, item, c->addr) == 1) {
		c->family = 6;
		max = 128;
	} else {
		snprintf(err, errlen, "'%s': not an address or network", q);
		return -EINVAL;
	}
	int bits = max;
	if (slash) {
		/* Decimal, no sign, no leading zero: "/08" is as suspect as
		 * "010.0.0.1", which inet_pton refuses too. */
		const char *b = slash + 1;
		size_t bl = strlen(b);
		if (bl == 0 || bl > 3 || strspn(b, "0123456789") != bl ||
		    (bl > 1 && b[0] == '0')) {
			snprintf(err, errlen, "'%s': bad prefix length (expected "
			         "0-%d)", q, max);
			return -EINVAL;
		}
		bits = 0;
		for (; *b; b++)
			bits = bits * 10 + (*b - '0');
		if (bits > max) {
			snprintf(err, errlen, "'%s': prefix longer than %d bits: bad "
			         "prefix length (expected 0-%d)", q, max, max);
			return -EINVAL;
		}
	}
	c->bits = (uint8_t)bits;
	/* Host bits past the prefix: most likely a typo for another
	 * network; refusing beats guessing which one was meant, and the
	 * message names the network the prefix alone gives. */
	bool host = false;
	struct smtpd_cidr fixed = *c;
	for (int i = bits; i < max; i++) {
		uint8_t bit = (uint8_t)(0x80 >> (i % 8));
		host |= (c->addr[i / 8] & bit) != 0;
		fixed.addr[i / 8] &= (uint8_t)~bit;
	}
	if (host) {
		char fx[SMTPD_CIDR_TEXT_MAX];
		smtpd_cidr_text(&fixed, fx, sizeof fx);
		snprintf(err, errlen, "'%s': host bits set past the prefix (the "
		         "network is %s)", q, fx);
		return -EINVAL;
	}
	/* ::ffff:a.b.c.d/96+ names IPv4 addresses, and clients on dual-stack
	 * sockets are matched as IPv4: store it as IPv4, so it matches them
	 * and clients on IPv4 sockets alike. */
	if (c->family == 6 && bits >= 96 &&
	    memcmp(c->addr, v4mapped, sizeof v4mapped) == 0) {
		memmove(c->addr, c->addr + 12, 4);
		memset(c->addr + 4, 0, 12);
		c->family = 4;
		c->bits = (uint8_t)(bits - 96);
	}
	return 0;
}

void smtpd_cidr_list_free(struct smtpd_cidr_list *l)
{
	free(l->net);
	l->net = NULL;
	l->n = l->cap = 0;
}

static int fail(struct smtpd_cidr_list *l, int rc)
{
	smtpd_cidr_list_free(l);
	return rc;
}

int smtpd_cidr_parse(const char *text, struct smtpd_cidr_list *out,
                     char *err, size_t errlen)
{
	*out = (struct smtpd_cidr_list){0};
	const char *s = text ? text : "";
	for (;;) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		const char *a = s;
		while (n && (*a == ' ' || *a == '\t'))
			a++, n--;
		while (n && (a[n - 1] == ' ' || a[n - 1] == '\t'))
			n--;
		if (n == 0) {
			/* "" is the empty list; an empty item inside one is not. */
			if (e || out->n) {
				snprintf(err, errlen, "empty item in the list");
				return fail(out, -EINVAL);
			}
			return 0;
		}
		if (out->n == SMTPD_CIDR_MAX) {
			snprintf(err, errlen, "more than %d networks", SMTPD_CIDR_MAX);
			return fail(out, -EINVAL);
		}
		if (out->n == out->cap) {
			size_t cap = out->cap ? out->cap * 2 : 8;
			struct smtpd_cidr *nv = realloc(out->net, cap * sizeof *nv);
			if (!nv) {
				snprintf(err, errlen, "out of memory");
				return fail(out, -ENOMEM);
			}
			out->net = nv;
			out->cap = cap;
		}
		if (parse_item(a, n, &out->net[out->n], err, errlen) < 0)
			return fail(out, -EINVAL);
		out->n++;
		if (!e)
			return 0;
		s = e + 1;
	}
}

static bool prefix_eq(const uint8_t *a, const uint8_t *net, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	if (memcmp(a, net, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == net[full];
}

static const struct smtpd_cidr *find_raw(const struct smtpd_cidr_list *l,
                                         int family, const uint8_t *a)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->net[i].family == family &&
		    prefix_eq(a, l->net[i].addr, l->net[i].bits))
			return &l->net[i];
	return NULL;
}

const struct smtpd_cidr *smtpd_cidr_find(const struct smtpd_cidr_list *l,
                                         const struct sockaddr *sa)
{
	if (!l || !sa)
		return NULL;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return find_raw(l, 4, (const uint8_t *)&in->sin_addr);
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = in->sin6_addr.s6_addr;
		/* A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d. */
		if (memcmp(a, v4mapped, sizeof v4mapped) == 0)
			return find_raw(l, 4, a + 12);
		return find_raw(l, 6, a);
	}
	return NULL;
}

bool smtpd_cidr_match(const struct smtpd_cidr_list *l,
                      const struct sockaddr *sa)
{
	return smtpd_cidr_find(l, sa) != NULL;
}

bool smtpd_cidr_match_text(const struct smtpd_cidr_list *l, const char *ip)
{
	struct sockaddr_in in = {.sin_family = AF_INET};
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
	if (inet_pton(AF_INET, ip, &in.sin_addr) == 1)
		return smtpd_cidr_match(l, (struct sockaddr *)&in);
	if (inet_pton(AF_INET6, ip, &in6.sin6_addr) == 1)
		return smtpd_cidr_match(l, (struct sockaddr *)&in6);
	return false;
}
