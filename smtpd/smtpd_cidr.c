/*
 * smtpd/smtpd_cidr.c - CIDR lists: parse "127.0.0.0/8, ::1/128" and match
 * client addresses against them. Pure (inet_pton only).
 */
#include "smtpd/smtpd_cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"

/* One item, trimmed, NUL-terminated in a copy. */
static int parse_item(const char *s, size_t n, struct smtpd_cidr *c,
                      char *err, size_t errlen)
{
	char item[INET6_ADDRSTRLEN + 8], q[96];
	log_escape(q, sizeof q, s, n);
	if (n >= sizeof item) {
		snprintf(err, errlen, "'%s': not an address or network", q);
		return -EINVAL;
	}
	memcpy(item, s, n);
	item[n] = '\0';
	char *slash = strchr(item, '/');
	int bits = -1;
	if (slash) {
		*slash = '\0';
		const char *b = slash + 1;
		size_t bl = strlen(b);
		if (bl == 0 || bl > 3 || strspn(b, "0123456789") != bl) {
			snprintf(err, errlen, "'%s': bad prefix length", q);
			return -EINVAL;
		}
		bits = 0;
		for (; *b; b++)
			bits = bits * 10 + (*b - '0');
	}
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
	if (bits < 0)
		bits = max;
	if (bits > max) {
		snprintf(err, errlen, "'%s': prefix longer than %d bits", q, max);
		return -EINVAL;
	}
	c->bits = (uint8_t)bits;
	/* Host bits past the prefix: most likely a typo for another
	 * network; refusing beats guessing which one was meant. */
	for (int i = bits; i < max; i++)
		if (c->addr[i / 8] & (0x80 >> (i % 8))) {
			snprintf(err, errlen, "'%s': host bits set past the prefix", q);
			return -EINVAL;
		}
	return 0;
}

int smtpd_cidr_parse(const char *text, struct smtpd_cidr_list *out,
                     char *err, size_t errlen)
{
	out->n = 0;
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
				out->n = 0;
				return -EINVAL;
			}
			return 0;
		}
		if (out->n == SMTPD_CIDR_MAX) {
			snprintf(err, errlen, "more than %d networks",
			         SMTPD_CIDR_MAX);
			out->n = 0;
			return -EINVAL;
		}
		if (parse_item(a, n, &out->net[out->n], err, errlen) < 0) {
			out->n = 0;
			return -EINVAL;
		}
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

static bool match_raw(const struct smtpd_cidr_list *l, int family,
                      const uint8_t *a)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->net[i].family == family &&
		    prefix_eq(a, l->net[i].addr, l->net[i].bits))
			return true;
	return false;
}

bool smtpd_cidr_match(const struct smtpd_cidr_list *l,
                      const struct sockaddr *sa)
{
	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return match_raw(l, 4, (const uint8_t *)&in->sin_addr);
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = in->sin6_addr.s6_addr;
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		                                   0xff, 0xff};
		if (memcmp(a, mapped, sizeof mapped) == 0)
			return match_raw(l, 4, a + 12);
		return match_raw(l, 6, a);
	}
	return false;
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
