/*
 * dns/dns_cache.c - the resolver's TTL cache: results keyed by (type,
 * name), kept until their TTL clamped to [ttl_min, ttl_max] (negative
 * answers, RFC 2308: to [ttl_min, neg_ttl_max]) runs out. Bounded in
 * entries and bytes, least recently used evicted first. TEMPFAIL is never
 * stored. Pure: the clock is a parameter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns_int.h"

struct entry {
	struct entry *hnext;          /* bucket chain */
	struct entry *prev, *next;    /* LRU list, most recent first */
	struct dns_result *r;
	uint64_t expires_ms;
	uint32_t hash;
};

struct dns_cache {
	struct dns_cache_opts o;
	struct entry **buckets;
	size_t nbuckets;              /* a power of two */
	struct entry *head, *tail;
	size_t count, bytes;
};

static uint32_t hash_key(uint16_t type, const char *name)
{
	uint32_t h = 2166136261u;    /* FNV-1a */
	h = (h ^ (type & 0xff)) * 16777619u;
	h = (h ^ (type >> 8)) * 16777619u;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h;
}

struct dns_cache *dns_cache_new(const struct dns_cache_opts *o)
{
	struct dns_cache *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->o = *o;
	if (c->o.max_entries == 0)
		c->o.max_entries = 1;
	c->nbuckets = 16;
	while (c->nbuckets < c->o.max_entries && c->nbuckets < (1u << 20))
		c->nbuckets <<= 1;
	c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
	if (!c->buckets) {
		free(c);
		return NULL;
	}
	return c;
}

static void unlink_entry(struct dns_cache *c, struct entry *e)
{
	struct entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	if (e->prev)
		e->prev->next = e->next;
	else
		c->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		c->tail = e->prev;
	c->count--;
	c->bytes -= e->r->size;
	dns_result_unref(e->r);
	free(e);
}

void dns_cache_free(struct dns_cache *c)
{
	if (!c)
		return;
	while (c->head)
		unlink_entry(c, c->head);
	free(c->buckets);
	free(c);
}

static struct entry *find(struct dns_cache *c, uint16_t type,
                          const char *name, uint32_t h)
{
	for (struct entry *e = c->buckets[h & (c->nbuckets - 1)]; e;
	     e = e->hnext)
		if (e->hash == h && e->r->qtype == type &&
		    strcmp(e->r->qname, name) == 0)
			return e;
	return NULL;
}

uint32_t dns_cache_ttl(const struct dns_cache *c, const struct dns_result *r)
{
	uint32_t max = r->status == DNS_OK ? c->o.ttl_max : c->o.neg_ttl_max;
	uint32_t t = r->ttl;
	if (t > max)
		t = max;
	if (t < c->o.ttl_min)
		t = c->o.ttl_min;
	return t;
}

int dns_cache_put(struct dns_cache *c, struct dns_result *r, uint64_t now_ms)
{
	if (r->status != DNS_OK && r->status != DNS_NODATA &&
	    r->status != DNS_NXDOMAIN)
		return 1;
	if (r->size > c->o.max_bytes)
		return 1;
	uint32_t h = hash_key(r->qtype, r->qname);
	struct entry *old = find(c, r->qtype, r->qname, h);
	if (old)
		unlink_entry(c, old);
	struct entry *e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->r = dns_result_ref(r);
	e->hash = h;
	e->expires_ms = now_ms + (uint64_t)dns_cache_ttl(c, r) * 1000;
	struct entry **b = &c->buckets[h & (c->nbuckets - 1)];
	e->hnext = *b;
	*b = e;
	e->next = c->head;
	if (c->head)
		c->head->prev = e;
	c->head = e;
	if (!c->tail)
		c->tail = e;
	c->count++;
	c->bytes += r->size;
	/* Least recently used first; the new entry is at the head and fits
	 * on its own (checked above). */
	while (c->count > c->o.max_entries || c->bytes > c->o.max_bytes)
		unlink_entry(c, c->tail);
	return 0;
}

struct dns_result *dns_cache_get(struct dns_cache *c, uint16_t qtype,
                                 const char *qname, uint64_t now_ms)
{
	uint32_t h = hash_key(qtype, qname);
	struct entry *e = find(c, qtype, qname, h);
	if (!e)
		return NULL;
	if (now_ms >= e->expires_ms) {
		unlink_entry(c, e);
		return NULL;
	}
	if (e != c->head) {
		e->prev->next = e->next;
		if (e->next)
			e->next->prev = e->prev;
		else
			c->tail = e->prev;
		e->prev = NULL;
		e->next = c->head;
		c->head->prev = e;
		c->head = e;
	}
	return e->r;
}

size_t dns_cache_count(const struct dns_cache *c) { return c->count; }
size_t dns_cache_bytes(const struct dns_cache *c) { return c->bytes; }
