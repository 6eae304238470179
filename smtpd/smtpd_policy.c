/*
 * smtpd/smtpd_policy.c - Relay policy building blocks: domain allowlists
 * and the sliding-window rate limiter (contracts in smtpd_policy.h).
 * Pure: no sockets, no libuv, no clock. The rate table is a bounded key
 * table: a fixed array of entries
 * allocated up front, chained in hash buckets (SipHash-2-4 with a random
 * seed, so a client cannot pick keys that pile into one bucket) and in an
 * LRU list whose tail is evicted when the table is full.
 */
#include "smtpd/smtpd_policy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "common/addr.h"
#include "common/log.h"

/* ---- domain allowlists ------------------------------------------------ */

struct smtpd_domains {
	size_t n;
	char **v;   /* lowercased, sorted, unique */
};

static char ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void set_err(char *err, size_t errlen, const char *item, size_t n,
                    const char *why)
{
	char esc[96];
	if (err && errlen)
		snprintf(err, errlen, "\"%s\": %s",
		         log_escape(esc, sizeof esc, item, n), why);
}

/* Checks one trimmed item; NULL when good, else why not. */
static const char *domain_item_bad(const char *s, size_t n)
{
	if (n == 0)
		return "empty item";
	if (n > SMTPD_DOMAIN_MAX)
		return "longer than 255 characters";
	if (s[0] == '.' || s[0] == '*')
		return "wildcards are not supported: subdomains never match "
		       "their parent, list each domain";
	if (s[0] == '[') {
		/* An address literal, matched as text. */
		if (n < 3 || s[n - 1] != ']')
			return "bad address literal";
		for (size_t i = 1; i + 1 < n; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c <= 0x20 || c >= 0x7f || c == '[' || c == ']' || c == '@')
				return "bad address literal";
		}
		return NULL;
	}
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '@')
			return "a domain, not an address";
		if (c == '.') {
			if (label == 0)
				return "empty label";
			label = 0;
			continue;
		}
		bool ok = c >= 0x80 || (c >= 'a' && c <= 'z') ||
		          (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
		if (!ok)
			return c < 0x20 || c == 0x7f || is_blank((char)c)
			       ? "blank or control character inside"
			       : "not a domain character";
		label++;
	}
	if (label == 0)
		return "empty label";
	return NULL;
}

int smtpd_domains_parse(const char *list, struct smtpd_domains **out,
                        char *err, size_t errlen)
{
	struct smtpd_domains *d = calloc(1, sizeof *d);
	if (!d)
		return -ENOMEM;
	if (err && errlen)
		err[0] = '\0';
	const char *p = list ? list : "";
	const char *q = p;
	while (is_blank(*q))
		q++;
	int r = 0;
	if (*q == '\0')
		goto done;   /* the empty list */

	size_t cap = 1;
	for (const char *c = p; *c; c++)
		cap += *c == ',';
	d->v = calloc(cap, sizeof *d->v);
	if (!d->v) {
		r = -ENOMEM;
		goto fail;
	}
	for (;;) {
		const char *end = strchr(p, ',');
		if (!end)
			end = p + strlen(p);
		const char *a = p, *b = end;
		while (a < b && is_blank(*a))
			a++;
		while (b > a && is_blank(b[-1]))
			b--;
		const char *why = domain_item_bad(a, (size_t)(b - a));
		if (why) {
			set_err(err, errlen, a, (size_t)(b - a), why);
			r = -EINVAL;
			goto fail;
		}
		char *s = malloc((size_t)(b - a) + 1);
		if (!s) {
			r = -ENOMEM;
			goto fail;
		}
		for (size_t i = 0; i < (size_t)(b - a); i++)
			s[i] = ascii_lower(a[i]);
		s[b - a] = '\0';
		d->v[d->n++] = s;
		if (*end == '\0')
			break;
		p = end + 1;
	}
	qsort(d->v, d->n, sizeof *d->v, cmp_str);
	size_t w = 0;
	for (size_t i = 0; i < d->n; i++) {
		if (w > 0 && strcmp(d->v[w - 1], d->v[i]) == 0)
			free(d->v[i]);
		else
			d->v[w++] = d->v[i];
	}
	d->n = w;
done:
	*out = d;
	return 0;
fail:
	smtpd_domains_free(d);
	return r;
}

void smtpd_domains_free(struct smtpd_domains *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i]);
	free(d->v);
	free(d);
}

size_t smtpd_domains_count(const struct smtpd_domains *d)
{
	return d ? d->n : 0;
}

bool smtpd_policy_domain_ok(const struct smtpd_domains *d, const char *addr)
{
	if (!d || d->n == 0)
		return true;
	const char *dom = addr ? addr_domain(addr) : NULL;
	if (!dom || !*dom)
		return false;
	size_t n = strlen(dom);
	if (n > SMTPD_DOMAIN_MAX)
		return false;   /* no entry is that long */
	char low[SMTPD_DOMAIN_MAX + 1];
	for (size_t i = 0; i < n; i++)
		low[i] = ascii_lower(dom[i]);
	low[n] = '\0';
	/* The whole domain against whole entries: no suffix, prefix or
	 * label-boundary match, so "example.com.evil.org" and
	 * "evil-example.com" never pass for "example.com". */
	const char *key = low;
	return bsearch(&key, d->v, d->n, sizeof *d->v, cmp_str) != NULL;
}

bool smtpd_policy_sender_ok(const struct smtpd_domains *d, const char *addr)
{
	if (addr && addr[0] == '\0')
		return true;   /* <>: bounces must get through */
	return smtpd_policy_domain_ok(d, addr);
}

int smtpd_policy_ip_key(const struct sockaddr *sa, unsigned v6_prefix,
                        char *out, size_t outlen)
{
	char text[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		if (!inet_ntop(AF_INET, &s4->sin_addr, text, sizeof text))
			return -EAFNOSUPPORT;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		if (v6_prefix > 128)
			return -EINVAL;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			if (!inet_ntop(AF_INET, s6->sin6_addr.s6_addr + 12, text,
			               sizeof text))
				return -EAFNOSUPPORT;
		} else {
			struct in6_addr a = s6->sin6_addr;
			for (unsigned i = 0; i < 16; i++) {
				unsigned keep = v6_prefix > i * 8 ? v6_prefix - i * 8 : 0;
				if (keep < 8)
					a.s6_addr[i] &= (uint8_t)(0xff00u >> keep);
			}
			char t6[INET6_ADDRSTRLEN];
			if (!inet_ntop(AF_INET6, &a, t6, sizeof t6))
				return -EAFNOSUPPORT;
			int w = snprintf(out, outlen, "%s/%u", t6, v6_prefix);
			return w < 0 || (size_t)w >= outlen ? -ENOBUFS : 0;
		}
	} else {
		return -EAFNOSUPPORT;
	}
	int w = snprintf(out, outlen, "%s", text);
	return w < 0 || (size_t)w >= outlen ? -ENOBUFS : 0;
}

/* ---- rate specs ---------------------------------------------------------- */

int smtpd_rate_parse(const char *spec, struct smtpd_rate_spec *out)
{
	const char *p = spec ? spec : "";
	while (is_blank(*p))
		p++;
	const char *e = p + strlen(p);
	while (e > p && is_blank(e[-1]))
		e--;
	if (e == p || (e - p == 1 && *p == '0')) {
		out->limit = 0;
		out->window_ms = 0;
		return 0;
	}
	uint64_t n = 0;
	const char *c = p;
	if (c == e || *c < '0' || *c > '9')
		return -EINVAL;
	while (c < e && *c >= '0' && *c <= '9') {
		n = n * 10 + (uint64_t)(*c++ - '0');
		if (n > SMTPD_RATE_LIMIT_MAX)
			return -EINVAL;
	}
	if (n == 0)
		return -EINVAL;
	while (c < e && is_blank(*c))
		c++;
	if (c == e || *c++ != '/')
		return -EINVAL;
	while (c < e && is_blank(*c))
		c++;
	uint64_t d = 0;
	bool digits = false;
	while (c < e && *c >= '0' && *c <= '9') {
		d = d * 10 + (uint64_t)(*c++ - '0');
		digits = true;
		if (d > SMTPD_RATE_WINDOW_MAX / 1000)
			return -EINVAL;
	}
	if (!digits)
		d = 1;
	if (d == 0 || c + 1 != e)
		return -EINVAL;
	uint64_t unit;
	switch (*c) {
	case 's': unit = 1000; break;
	case 'm': unit = 60 * 1000; break;
	case 'h': unit = 3600 * 1000; break;
	case 'd': unit = 86400 * 1000; break;
	default: return -EINVAL;
	}
	if (d > SMTPD_RATE_WINDOW_MAX / unit)
		return -EINVAL;
	out->limit = (uint32_t)n;
	out->window_ms = d * unit;
	return 0;
}

/* ---- the bounded key table ------------------------------------------- */

#define NIL UINT32_MAX
#define KTAB_MAX_KEYS (UINT32_C(1) << 24)

struct kent {
	uint32_t hnext;          /* bucket chain, or the free list */
	uint32_t lprev, lnext;   /* LRU list: head most recent */
	uint32_t hash;
	/* rate limiter */
	uint32_t prev, cur;      /* hits in the previous and current window */
	uint64_t start;          /* the current window's start */
	uint64_t window;
	uint8_t klen;
	char key[SMTPD_RATE_KEY_MAX];
};

struct ktab {
	struct kent *e;
	uint32_t cap, n;
	uint32_t *bucket;
	uint32_t mask;
	uint32_t head, tail, free;
	uint64_t k0, k1;         /* SipHash key */
	uint64_t evicted;
};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                        \
	do {                                                                \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);       \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                          \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                          \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);       \
	} while (0)

/* SipHash-2-4 (Aumasson and Bernstein): keys are chosen by clients (their
 * addresses, the names they try), so the table's hash must be keyed. */
static uint64_t siphash(uint64_t k0, uint64_t k1, const void *src, size_t n)
{
	const uint8_t *p = src;
	uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
	uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1;
	uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
	uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
	uint64_t b = (uint64_t)n << 56;
	size_t full = n & ~(size_t)7;
	for (size_t i = 0; i < full; i += 8) {
		uint64_t m = 0;
		for (int j = 7; j >= 0; j--)
			m = m << 8 | p[i + (size_t)j];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < (n & 7); j++)
		b |= (uint64_t)p[full + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static int ktab_init(struct ktab *t, size_t cap)
{
	memset(t, 0, sizeof *t);
	if (cap == 0 || cap > KTAB_MAX_KEYS)
		return -EINVAL;
	uint32_t nb = 1;
	while (nb < cap)
		nb <<= 1;
	t->e = calloc(cap, sizeof *t->e);
	t->bucket = malloc(nb * sizeof *t->bucket);
	if (!t->e || !t->bucket) {
		free(t->e);
		free(t->bucket);
		return -ENOMEM;
	}
	t->cap = (uint32_t)cap;
	t->mask = nb - 1;
	for (uint32_t i = 0; i < nb; i++)
		t->bucket[i] = NIL;
	for (uint32_t i = 0; i < t->cap; i++)
		t->e[i].hnext = i + 1 < t->cap ? i + 1 : NIL;
	t->free = 0;
	t->head = t->tail = NIL;
	uint64_t seed[2];
	if (getrandom(seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
		/* Early boot without entropy: still a per-process key. */
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		seed[0] = (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)t;
		seed[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&seed;
	}
	t->k0 = seed[0];
	t->k1 = seed[1];
	return 0;
}

static void ktab_fini(struct ktab *t)
{
	free(t->e);
	free(t->bucket);
}

static void lru_unlink(struct ktab *t, uint32_t i)
{
	struct kent *e = &t->e[i];
	if (e->lprev != NIL)
		t->e[e->lprev].lnext = e->lnext;
	else
		t->head = e->lnext;
	if (e->lnext != NIL)
		t->e[e->lnext].lprev = e->lprev;
	else
		t->tail = e->lprev;
}

static void lru_push(struct ktab *t, uint32_t i)
{
	struct kent *e = &t->e[i];
	e->lprev = NIL;
	e->lnext = t->head;
	if (t->head != NIL)
		t->e[t->head].lprev = i;
	t->head = i;
	if (t->tail == NIL)
		t->tail = i;
}

static void bucket_unlink(struct ktab *t, uint32_t i)
{
	uint32_t *pp = &t->bucket[t->e[i].hash & t->mask];
	while (*pp != i)
		pp = &t->e[*pp].hnext;   /* i is in its chain */
	*pp = t->e[i].hnext;
}

/* The entry for key, most recent now; NULL when absent and !create. A new
 * entry is zeroed apart from its key; when the table is full the least
 * recently used entry makes room. */
static struct kent *ktab_get(struct ktab *t, const char *key, bool create)
{
	size_t klen = strnlen(key, SMTPD_RATE_KEY_MAX);
	uint32_t h = (uint32_t)siphash(t->k0, t->k1, key, klen);
	for (uint32_t i = t->bucket[h & t->mask]; i != NIL; i = t->e[i].hnext) {
		struct kent *e = &t->e[i];
		if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) {
			if (t->head != i) {
				lru_unlink(t, i);
				lru_push(t, i);
			}
			return e;
		}
	}
	if (!create)
		return NULL;
	uint32_t i;
	if (t->free != NIL) {
		i = t->free;
		t->free = t->e[i].hnext;
		t->n++;
	} else {
		i = t->tail;
		lru_unlink(t, i);
		bucket_unlink(t, i);
		t->evicted++;
	}
	struct kent *e = &t->e[i];
	memset(e, 0, sizeof *e);
	e->hash = h;
	e->klen = (uint8_t)klen;
	memcpy(e->key, key, klen);
	e->hnext = t->bucket[h & t->mask];
	t->bucket[h & t->mask] = i;
	lru_push(t, i);
	return e;
}

/* ---- rate limiter ------------------------------------------------------- */

struct smtpd_rate {
	struct ktab t;
};

struct smtpd_rate *smtpd_rate_new(size_t max_keys)
{
	struct smtpd_rate *r = malloc(sizeof *r);
	if (!r)
		return NULL;
	if (ktab_init(&r->t, max_keys)) {
		free(r);
		return NULL;
	}
	return r;
}

void smtpd_rate_free(struct smtpd_rate *r)
{
	if (!r)
		return;
	ktab_fini(&r->t);
	free(r);
}

/* Moves the entry's windows forward to now (which may not be before its
 * current window). */
static void rate_roll(struct kent *e, uint64_t now, uint64_t w)
{
	if (e->window != w) {
		e->window = w;
		e->prev = e->cur = 0;
		e->start = now - now % w;
		return;
	}
	if (now - e->start >= 2 * w) {
		e->prev = e->cur = 0;
		e->start = now - now % w;
	} else if (now - e->start >= w) {
		e->prev = e->cur;
		e->cur = 0;
		e->start += w;
	}
}

/*
 * The sliding-window estimate at elapsed time x into the current window
 * is prev * (w - x) / w + cur; a hit is allowed when it stays within the
 * limit counting the hit itself, tested in integers (times w):
 *     prev * (w - x) + (cur + 1) * w <= limit * w.
 * With counts below 2^30 and w below 2^30 ms every product fits 64 bits.
 * When refused, the next allowed time solves the same inequality for x:
 * later in this window if this window's own count leaves room, else in
 * the next one, where this window's count becomes the weighted one.
 */
static bool rate_eval(const struct kent *e, uint64_t now, uint64_t limit,
                      uint64_t *next)
{
	uint64_t w = e->window, x = now - e->start;
	uint64_t prev = e->prev, cur = e->cur;
	if (prev * (w - x) + (cur + 1) * w <= limit * w) {
		*next = now;
		return true;
	}
	if (cur + 1 <= limit) {
		/* prev > 0 here, or the test above would have passed. */
		uint64_t room = (limit - cur - 1) * w;
		*next = e->start + (w - room / prev);
	} else {
		*next = e->start + w + (w - (limit - 1) * w / cur);
	}
	return false;
}

static bool rate_do(struct smtpd_rate *r, const char *key, uint64_t now,
                    uint32_t limit, uint64_t w, uint64_t *next_ms,
                    bool count)
{
	uint64_t next = now;
	bool ok = true;
	if (limit == 0 || w == 0)
		goto out;
	if (limit > SMTPD_RATE_LIMIT_MAX)
		limit = SMTPD_RATE_LIMIT_MAX;
	if (w > SMTPD_RATE_WINDOW_MAX)
		w = SMTPD_RATE_WINDOW_MAX;
	struct kent *e = ktab_get(&r->t, key, count);
	if (!e)
		goto out;   /* unknown key, peek: nothing counted yet */
	if (e->window == w && now < e->start)
		now = e->start;   /* the clock went back: stand still */
	if (count) {
		rate_roll(e, now, w);
	} else if (e->window != w || now - e->start >= w) {
		/* Peek must not change the entry: roll a copy. */
		struct kent c = *e;
		rate_roll(&c, now, w);
		ok = rate_eval(&c, now, limit, &next);
		goto out;
	}
	ok = rate_eval(e, now, limit, &next);
	if (ok && count)
		e->cur++;
out:
	if (next_ms)
		*next_ms = next;
	return ok;
}

bool smtpd_rate_hit(struct smtpd_rate *r, const char *key, uint64_t now_ms,
                    uint32_t limit, uint64_t window_ms, uint64_t *next_ms)
{
	return rate_do(r, key, now_ms, limit, window_ms, next_ms, true);
}

bool smtpd_rate_peek(struct smtpd_rate *r, const char *key, uint64_t now_ms,
                     uint32_t limit, uint64_t window_ms, uint64_t *next_ms)
{
	return rate_do(r, key, now_ms, limit, window_ms, next_ms, false);
}

size_t smtpd_rate_count(const struct smtpd_rate *r)
{
	return r->t.n;
}

uint64_t smtpd_rate_evicted(const struct smtpd_rate *r)
{
	return r->t.evicted;
}

/* ---- credential quotas ------------------------------------------------- */

const char *smtpd_policy_quota_over(uint32_t hour, uint32_t day,
                                    uint32_t hourly, uint32_t daily,
                                    uint32_t n, uint32_t *used,
                                    uint32_t *limit)
{
	/* 64-bit sums: a count near UINT32_MAX plus n must not wrap. */
	if (hourly && (uint64_t)hour + n > hourly) {
		*used = hour;
		*limit = hourly;
		return "hourly";
	}
	if (daily && (uint64_t)day + n > daily) {
		*used = day;
		*limit = daily;
		return "daily";
	}
	return NULL;
}
