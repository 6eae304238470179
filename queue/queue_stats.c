/*
 * queue/queue_stats.c - The statistics bucket codec (format and bounds in
 * queue_stats.h): pure functions, no LMDB, shared by the daemon's writer
 * (merge into the stored bucket), relayctl (read) and the tests.
 */
#include "queue/queue_stats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define TAG_CRED 32
#define TAG_DOMAIN 33
#define VARINT_MAX 10

const char *const queue_stats_names[QUEUE_STATS_NIDS] = {
	[QUEUE_STATS_ACCEPTED] = "accepted",
	[QUEUE_STATS_REJECTED] = "rejected",
	[QUEUE_STATS_SENT] = "sent",
	[QUEUE_STATS_DEFERRED] = "deferred",
	[QUEUE_STATS_BOUNCED] = "bounced",
	[QUEUE_STATS_DSN] = "dsn",
	[QUEUE_STATS_REJ_POLICY] = "rejected_policy",
	[QUEUE_STATS_REJ_AUTH] = "rejected_auth",
	[QUEUE_STATS_REJ_QUOTA] = "rejected_quota",
	[QUEUE_STATS_REJ_RATE] = "rejected_rate",
	[QUEUE_STATS_REJ_SIZE] = "rejected_size",
	[QUEUE_STATS_REJ_TIMEOUT] = "rejected_timeout",
	[QUEUE_STATS_REJ_TEMPORARY] = "rejected_temporary",
	[QUEUE_STATS_REJ_PROTOCOL] = "rejected_protocol",
};

const char *const queue_stats_dim_names[QUEUE_STATS_NDIMS] = {
	"credential", "domain",
};

int64_t queue_stats_hour(int64_t t)
{
	return t < 0 ? 0 : t - t % 3600;
}

int64_t queue_stats_day(int64_t t)
{
	return t < 0 ? 0 : t - t % 86400;
}

const char *queue_stats_domain(const char *addr)
{
	const char *at = addr ? strrchr(addr, '@') : NULL;
	return at ? at + 1 : "";
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

void queue_stats_bucket_reset(struct queue_stats_bucket *b)
{
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++)
		free(b->e[d]);
	memset(b, 0, sizeof *b);
}

bool queue_stats_bucket_empty(const struct queue_stats_bucket *b)
{
	for (int i = 0; i < QUEUE_STATS_NIDS; i++)
		if (b->c[i])
			return false;
	return b->n[0] == 0 && b->n[1] == 0;
}

/* A name as stored: 1..QUEUE_STATS_NAME_MAX bytes, none a control
 * character (they would reach terminals and JSON). */
static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > QUEUE_STATS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* The entry named `name` (n bytes, valid) of dimension d, made when
 * missing: the QUEUE_STATS_OTHER one once DIM_MAX names are there. NULL
 * when out of memory. */
static struct queue_stats_entry *entry_get(struct queue_stats_bucket *b,
                                           int d, const char *name, size_t n)
{
	size_t named = 0;
	struct queue_stats_entry *other = NULL;
	for (size_t i = 0; i < b->n[d]; i++) {
		struct queue_stats_entry *e = &b->e[d][i];
		if (strlen(e->name) == n && memcmp(e->name, name, n) == 0)
			return e;
		if (strcmp(e->name, QUEUE_STATS_OTHER) == 0)
			other = e;
		else
			named++;
	}
	if (named >= QUEUE_STATS_DIM_MAX) {
		if (other)
			return other;
		name = QUEUE_STATS_OTHER;
		n = strlen(QUEUE_STATS_OTHER);
	}
	if (!b->e[d]) {
		/* Room for every entry at once: no realloc moves them. */
		b->e[d] = malloc((QUEUE_STATS_DIM_MAX + 1) * sizeof *b->e[d]);
		if (!b->e[d])
			return NULL;
	}
	RELAY_ASSERT(b->n[d] <= QUEUE_STATS_DIM_MAX);
	struct queue_stats_entry *e = &b->e[d][b->n[d]++];
	memset(e, 0, sizeof *e);
	memcpy(e->name, name, n);
	e->name[n] = '\0';
	return e;
}

/* Counts into dimension d under name (lowercased; an unfit one under
 * QUEUE_STATS_OTHER). */
static int dim_add(struct queue_stats_bucket *b, int d, const char *name,
                   unsigned id, uint64_t n)
{
	char low[QUEUE_STATS_NAME_MAX + 1];
	size_t len = strlen(name);
	if (!name_ok(name, len)) {
		name = QUEUE_STATS_OTHER;
		len = strlen(name);
	}
	for (size_t i = 0; i < len; i++)
		low[i] = name[i] >= 'A' && name[i] <= 'Z' ? (char)(name[i] + 32)
		                                          : name[i];
	struct queue_stats_entry *e = entry_get(b, d, low, len);
	if (!e)
		return -ENOMEM;
	e->c[id] = sat_add(e->c[id], n);
	return 0;
}

int queue_stats_bucket_add(struct queue_stats_bucket *b, unsigned id,
                           const char *cred, const char *domain, uint64_t n)
{
	if (id == 0 || id >= QUEUE_STATS_NIDS)
		return -EINVAL;
	b->c[id] = sat_add(b->c[id], n);
	int r = 0;
	if (cred && *cred && dim_add(b, QUEUE_STATS_CRED, cred, id, n))
		r = -ENOMEM;
	if (domain && *domain && dim_add(b, QUEUE_STATS_DOMAIN, domain, id, n))
		r = -ENOMEM;
	return r;
}

int queue_stats_bucket_merge(struct queue_stats_bucket *dst,
                             const struct queue_stats_bucket *src)
{
	for (int i = 0; i < QUEUE_STATS_NIDS; i++)
		dst->c[i] = sat_add(dst->c[i], src->c[i]);
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++)
		for (size_t k = 0; k < src->n[d]; k++) {
			const struct queue_stats_entry *s = &src->e[d][k];
			struct queue_stats_entry *e = entry_get(dst, d, s->name,
			                                        strlen(s->name));
			if (!e)
				return -ENOMEM;
			for (int i = 0; i < QUEUE_STATS_NIDS; i++)
				e->c[i] = sat_add(e->c[i], s->c[i]);
		}
	return 0;
}

/* ---- encoding ---------------------------------------------------------- */

static size_t varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	do {
		uint8_t b = v & 0x7f;
		v >>= 7;
		p[n++] = b | (v ? 0x80 : 0);
	} while (v);
	return n;
}

static size_t varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >>= 7)
		n++;
	return n;
}

/* Bytes of the counter TLVs of c (zero counters are left out). */
static size_t counters_len(const uint64_t *c)
{
	size_t n = 0;
	for (int i = 1; i < QUEUE_STATS_NIDS; i++)
		if (c[i])
			n += 2 + varint_len(c[i]);   /* tag and length: 1 byte */
	return n;
}

static size_t counters_put(uint8_t *p, const uint64_t *c)
{
	size_t n = 0;
	for (int i = 1; i < QUEUE_STATS_NIDS; i++)
		if (c[i]) {
			p[n++] = (uint8_t)i;
			p[n++] = (uint8_t)varint_len(c[i]);
			n += varint_put(p + n, c[i]);
		}
	return n;
}

int queue_stats_encode(const struct queue_stats_bucket *b, uint8_t **out,
                       size_t *outlen)
{
	size_t total = 1 + counters_len(b->c);
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++) {
		if (b->n[d] > QUEUE_STATS_DIM_MAX + 1)
			return -EINVAL;
		for (size_t k = 0; k < b->n[d]; k++) {
			const struct queue_stats_entry *e = &b->e[d][k];
			size_t nl = strnlen(e->name, sizeof e->name);
			if (!name_ok(e->name, nl))
				return -EINVAL;
			size_t pl = varint_len(nl) + nl + counters_len(e->c);
			total += 1 + varint_len(pl) + pl;
		}
	}
	if (total > QUEUE_STATS_VALUE_MAX)
		return -EINVAL;
	uint8_t *p = malloc(total);
	if (!p)
		return -ENOMEM;
	size_t n = 0;
	p[n++] = QUEUE_STATS_VERSION;
	n += counters_put(p + n, b->c);
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++)
		for (size_t k = 0; k < b->n[d]; k++) {
			const struct queue_stats_entry *e = &b->e[d][k];
			size_t nl = strlen(e->name);
			size_t pl = varint_len(nl) + nl + counters_len(e->c);
			p[n++] = d == QUEUE_STATS_CRED ? TAG_CRED : TAG_DOMAIN;
			n += varint_put(p + n, pl);
			n += varint_put(p + n, nl);
			memcpy(p + n, e->name, nl);
			n += nl;
			n += counters_put(p + n, e->c);
		}
	RELAY_ASSERT(n == total);
	*out = p;
	*outlen = n;
	return 0;
}

/* ---- decoding: every length checked against what is left -------------- */

/* Reads a varint from p[*i..n): 0 or -EINVAL (truncated, more than 10
 * bytes, or above 2^64-1). */
static int varint_get(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
	uint64_t x = 0;
	for (int k = 0; k < VARINT_MAX; k++) {
		if (*i >= n)
			return -EINVAL;
		uint8_t b = p[(*i)++];
		if (k == 9 && b > 1)
			return -EINVAL;   /* past 64 bits */
		x |= (uint64_t)(b & 0x7f) << (7 * k);
		if (!(b & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return -EINVAL;
}

/* One TLV header at p[*i..n): the tag, and the payload's bounds. */
static int tlv_get(const uint8_t *p, size_t n, size_t *i, uint64_t *tag,
                   size_t *start, size_t *len)
{
	uint64_t l;
	if (varint_get(p, n, i, tag) || varint_get(p, n, i, &l) ||
	    l > n - *i)
		return -EINVAL;
	*start = *i;
	*len = (size_t)l;
	*i += (size_t)l;
	return 0;
}

/* A counter TLV's payload: exactly one varint. Into c[tag]; a counter
 * given twice is malformed. */
static int counter_get(const uint8_t *p, size_t start, size_t len,
                       uint64_t tag, uint64_t *c, uint32_t *seen)
{
	size_t j = start;
	uint64_t v;
	if (varint_get(p, start + len, &j, &v) || j != start + len ||
	    (*seen & (1u << tag)))
		return -EINVAL;
	*seen |= 1u << tag;
	c[tag] = v;
	return 0;
}

static int entry_decode(const uint8_t *p, size_t start, size_t len,
                        struct queue_stats_bucket *b, int d)
{
	size_t end = start + len, j = start;
	uint64_t nl;
	if (varint_get(p, end, &j, &nl) || nl > end - j ||
	    !name_ok((const char *)p + j, (size_t)nl))
		return -EINVAL;
	const char *name = (const char *)p + j;
	j += (size_t)nl;
	bool other = nl == strlen(QUEUE_STATS_OTHER) &&
	             memcmp(name, QUEUE_STATS_OTHER, (size_t)nl) == 0;
	size_t named = 0;
	for (size_t k = 0; k < b->n[d]; k++) {
		if (strlen(b->e[d][k].name) == nl &&
		    memcmp(b->e[d][k].name, name, (size_t)nl) == 0)
			return -EINVAL;   /* a name twice */
		named += strcmp(b->e[d][k].name, QUEUE_STATS_OTHER) != 0;
	}
	/* At most DIM_MAX names and QUEUE_STATS_OTHER: what entry_get keeps
	 * to, so a merge into a decoded bucket stays in bounds. */
	if (!other && named >= QUEUE_STATS_DIM_MAX)
		return -EINVAL;
	if (!b->e[d] &&
	    !(b->e[d] = malloc((QUEUE_STATS_DIM_MAX + 1) * sizeof *b->e[d])))
		return -ENOMEM;
	struct queue_stats_entry *e = &b->e[d][b->n[d]++];
	memset(e, 0, sizeof *e);
	memcpy(e->name, name, (size_t)nl);
	uint32_t seen = 0;
	while (j < end) {
		uint64_t tag;
		size_t s, l;
		if (tlv_get(p, end, &j, &tag, &s, &l))
			return -EINVAL;
		if (tag == 0)
			return -EINVAL;
		if (tag < QUEUE_STATS_NIDS && counter_get(p, s, l, tag, e->c, &seen))
			return -EINVAL;
	}
	return 0;
}

int queue_stats_decode(const uint8_t *p, size_t n,
                       struct queue_stats_bucket *b)
{
	memset(b, 0, sizeof *b);
	if (n < 1 || n > QUEUE_STATS_VALUE_MAX || p[0] != QUEUE_STATS_VERSION)
		return -EINVAL;
	size_t i = 1;
	uint32_t seen = 0;
	int r = 0;
	while (i < n && r == 0) {
		uint64_t tag;
		size_t s, l;
		if (tlv_get(p, n, &i, &tag, &s, &l) || tag == 0)
			r = -EINVAL;
		else if (tag < QUEUE_STATS_NIDS)
			r = counter_get(p, s, l, tag, b->c, &seen);
		else if (tag == TAG_CRED)
			r = entry_decode(p, s, l, b, QUEUE_STATS_CRED);
		else if (tag == TAG_DOMAIN)
			r = entry_decode(p, s, l, b, QUEUE_STATS_DOMAIN);
		/* other tags: a later release's; skipped */
	}
	if (r)
		queue_stats_bucket_reset(b);
	return r;
}
