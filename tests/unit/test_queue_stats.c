/*
 * tests/unit/test_queue_stats.c - The statistics bucket codec
 * (queue/queue_stats.h): a table of values and what decoding them gives
 * (counters, entries, or -EINVAL for each malformation); encode/decode
 * round trips; the 100-name bound with the rest under "(other)", through
 * counting, merging and decoding; lowercased names; saturating adds. Then
 * the daemon side on a real spool in a temporary directory: counts
 * flushed to the writer land in the hour and the day bucket, add up
 * across a close and reopen, are flushed at close, and old buckets are
 * pruned; and a stats write that does not fit in a full map is dropped
 * while a quota charge (a mail op of the same writer) still commits.
 * Every spool test ends with uv_loop_close() == 0.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "queue/queue_int.h"
#include "queue/queue_quota.h"
#include "queue/queue_stats.h"

/* ---- decoding: a table -------------------------------------------------- */

struct dec_case {
	const char *name;
	const char *bytes;
	size_t len;
	int rc;
	uint64_t accepted, sent;
	unsigned extra_id;          /* a further counter to check, or 0 */
	uint64_t extra;
	size_t ncred, ndomain;
	const char *cred0;          /* the first credential's name */
	uint64_t cred0_accepted;
};

#define B(s) s, sizeof s - 1

static const struct dec_case dec_cases[] = {
	{"empty value", B(""), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"unknown version", B("\x02"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"version only", B("\x01"), 0, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"accepted 5", B("\x01\x01\x01\x05"), 0, 5, 0, 0, 0, 0, 0, NULL, 0},
	{"two counters", B("\x01\x01\x01\x05\x03\x02\xac\x02"), 0, 5, 300, 0, 0,
	 0, 0, NULL, 0},
	{"length past the end", B("\x01\x01\x05\x05"), -EINVAL, 0, 0, 0, 0, 0,
	 0, NULL, 0},
	{"header cut", B("\x01\x01"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"counter twice", B("\x01\x01\x01\x05\x01\x01\x06"), -EINVAL, 0, 0, 0,
	 0, 0, 0, NULL, 0},
	{"counter with a trailing byte", B("\x01\x01\x02\x05\x00"), -EINVAL, 0,
	 0, 0, 0, 0, 0, NULL, 0},
	{"counter cut inside its varint", B("\x01\x01\x01\x85"), -EINVAL, 0, 0,
	 0, 0, 0, 0, NULL, 0},
	{"tag 0", B("\x01\x00\x01\x05"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"unknown tag skipped", B("\x01\x40\x02\xaa\xbb\x01\x01\x07"), 0, 7, 0,
	 0, 0, 0, 0, NULL, 0},
	{"unknown counter id kept", B("\x01\x14\x01\x03"), 0, 0, 0, 20, 3, 0, 0,
	 NULL, 0},
	{"largest count", B("\x01\x01\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff"
	 "\x01"), 0, UINT64_MAX, 0, 0, 0, 0, 0, NULL, 0},
	{"count past 64 bits", B("\x01\x01\x0a\xff\xff\xff\xff\xff\xff\xff\xff"
	 "\xff\x02"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"varint of 11 bytes", B("\x01\x01\x0b\x80\x80\x80\x80\x80\x80\x80\x80"
	 "\x80\x80\x00"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"huge length", B("\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
	 -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"credential entry", B("\x01\x01\x01\x02\x20\x09\x05" "alice"
	 "\x01\x01\x02"), 0, 2, 0, 0, 0, 1, 0, "alice", 2},
	{"domain entry", B("\x01\x21\x0b\x07" "a.test" "x" "\x03\x01\x04"), 0, 0,
	 0, 0, 0, 0, 1, NULL, 0},
	{"entry with an empty name", B("\x01\x20\x04\x00\x01\x01\x02"), -EINVAL,
	 0, 0, 0, 0, 0, 0, NULL, 0},
	{"entry name with a control character", B("\x01\x20\x03\x02" "a\n"),
	 -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"entry name past its payload", B("\x01\x20\x03\x09" "ab"), -EINVAL, 0,
	 0, 0, 0, 0, 0, NULL, 0},
	{"entry name given twice", B("\x01\x20\x02\x01" "a" "\x20\x02\x01" "a"),
	 -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"same name in two dimensions", B("\x01\x20\x02\x01" "a" "\x21\x02\x01"
	 "a"), 0, 0, 0, 0, 0, 1, 1, "a", 0},
	{"entry counter twice", B("\x01\x20\x08\x01" "a" "\x01\x01\x01\x01\x01"
	 "\x02"), -EINVAL, 0, 0, 0, 0, 0, 0, NULL, 0},
	{"entry counter cut", B("\x01\x20\x05\x01" "a" "\x01\x05\x01"), -EINVAL,
	 0, 0, 0, 0, 0, 0, NULL, 0},
	{"entry: unknown inner tag skipped", B("\x01\x20\x08\x01" "a" "\x30\x01"
	 "\x00\x01\x01\x09"), 0, 0, 0, 0, 0, 1, 0, "a", 9},
};

static void test_decode_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof dec_cases / sizeof *dec_cases; i++) {
		const struct dec_case *c = &dec_cases[i];
		struct queue_stats_bucket b;
		int r = queue_stats_decode((const uint8_t *)c->bytes, c->len, &b);
		if (r != c->rc)
			fail_msg("%s: rc %d, want %d", c->name, r, c->rc);
		if (r) {
			if (!queue_stats_bucket_empty(&b))
				fail_msg("%s: bucket not left empty", c->name);
			continue;
		}
		if (b.c[QUEUE_STATS_ACCEPTED] != c->accepted ||
		    b.c[QUEUE_STATS_SENT] != c->sent ||
		    (c->extra_id && b.c[c->extra_id] != c->extra) ||
		    b.n[QUEUE_STATS_CRED] != c->ncred ||
		    b.n[QUEUE_STATS_DOMAIN] != c->ndomain)
			fail_msg("%s: wrong counts", c->name);
		if (c->cred0 && (strcmp(b.e[QUEUE_STATS_CRED][0].name, c->cred0) ||
		                 b.e[QUEUE_STATS_CRED][0].c[QUEUE_STATS_ACCEPTED] !=
		                 c->cred0_accepted))
			fail_msg("%s: wrong credential entry", c->name);
		/* Whatever decodes encodes again, to the same bucket. */
		uint8_t *enc;
		size_t len;
		struct queue_stats_bucket b2;
		assert_int_equal(queue_stats_encode(&b, &enc, &len), 0);
		assert_int_equal(queue_stats_decode(enc, len, &b2), 0);
		assert_memory_equal(b.c, b2.c, sizeof b.c);
		for (int d = 0; d < QUEUE_STATS_NDIMS; d++) {
			assert_int_equal(b.n[d], b2.n[d]);
			if (b.n[d])
				assert_memory_equal(b.e[d], b2.e[d],
				                    b.n[d] * sizeof *b.e[d]);
		}
		free(enc);
		queue_stats_bucket_reset(&b);
		queue_stats_bucket_reset(&b2);
	}
}

static void test_decode_too_long(void **state)
{
	(void)state;
	size_t n = QUEUE_STATS_VALUE_MAX + 1;
	uint8_t *p = calloc(1, n);
	assert_non_null(p);
	/* version 1, then unknown tag-64 TLVs filling the value */
	p[0] = 1;
	for (size_t i = 1; i + 2 <= n; i += 2) {
		p[i] = 0x40;
		p[i + 1] = 0;
	}
	struct queue_stats_bucket b;
	assert_int_equal(queue_stats_decode(p, n, &b), -EINVAL);
	/* one byte less would have been read (and skipped) */
	assert_int_equal(queue_stats_decode(p, n - 2, &b), 0);
	assert_true(queue_stats_bucket_empty(&b));
	free(p);
}

/* ---- counting, bounds, merging ----------------------------------------- */

static uint64_t entry_count(const struct queue_stats_bucket *b, int d,
                            const char *name, unsigned id)
{
	for (size_t i = 0; i < b->n[d]; i++)
		if (strcmp(b->e[d][i].name, name) == 0)
			return b->e[d][i].c[id];
	return UINT64_MAX;   /* absent */
}

static void test_count_bound_and_roundtrip(void **state)
{
	(void)state;
	struct queue_stats_bucket b = {0};
	char dom[64];
	for (int i = 0; i < 150; i++) {
		snprintf(dom, sizeof dom, "D%03d.Example", i);
		assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_SENT, NULL,
		                                        dom, 2), 0);
	}
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_ACCEPTED,
	                                        "Alice", NULL, 1), 0);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_ACCEPTED,
	                                        "alice", NULL, 1), 0);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_BOUNCED, NULL,
	                                        "d000.example", 1), 0);
	/* 100 names, then "(other)" with the 50 after them */
	assert_int_equal(b.n[QUEUE_STATS_DOMAIN], QUEUE_STATS_DIM_MAX + 1);
	assert_int_equal(entry_count(&b, QUEUE_STATS_DOMAIN, "d000.example",
	                             QUEUE_STATS_SENT), 2);
	assert_int_equal(entry_count(&b, QUEUE_STATS_DOMAIN, "d000.example",
	                             QUEUE_STATS_BOUNCED), 1);
	assert_int_equal(entry_count(&b, QUEUE_STATS_DOMAIN, "d099.example",
	                             QUEUE_STATS_SENT), 2);
	assert_int_equal(entry_count(&b, QUEUE_STATS_DOMAIN, "d100.example",
	                             QUEUE_STATS_SENT), UINT64_MAX);
	assert_int_equal(entry_count(&b, QUEUE_STATS_DOMAIN, QUEUE_STATS_OTHER,
	                             QUEUE_STATS_SENT), 100);
	assert_int_equal(b.c[QUEUE_STATS_SENT], 300);
	assert_int_equal(b.n[QUEUE_STATS_CRED], 1);
	assert_int_equal(entry_count(&b, QUEUE_STATS_CRED, "alice",
	                             QUEUE_STATS_ACCEPTED), 2);
	/* a bad id counts nothing */
	assert_int_equal(queue_stats_bucket_add(&b, 0, NULL, NULL, 1), -EINVAL);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_NIDS, NULL,
	                                        NULL, 1), -EINVAL);
	/* an unfit name counts under "(other)" */
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_REJECTED,
	                                        "bad\x01name", NULL, 3), 0);
	assert_int_equal(entry_count(&b, QUEUE_STATS_CRED, QUEUE_STATS_OTHER,
	                             QUEUE_STATS_REJECTED), 3);

	uint8_t *enc;
	size_t len;
	assert_int_equal(queue_stats_encode(&b, &enc, &len), 0);
	struct queue_stats_bucket d;
	assert_int_equal(queue_stats_decode(enc, len, &d), 0);
	free(enc);
	assert_memory_equal(b.c, d.c, sizeof b.c);
	for (int k = 0; k < QUEUE_STATS_NDIMS; k++) {
		assert_int_equal(b.n[k], d.n[k]);
		assert_memory_equal(b.e[k], d.e[k], b.n[k] * sizeof *b.e[k]);
	}
	/* A new name in the decoded (full) bucket goes to "(other)". */
	assert_int_equal(queue_stats_bucket_add(&d, QUEUE_STATS_SENT, NULL,
	                                        "new.example", 5), 0);
	assert_int_equal(d.n[QUEUE_STATS_DOMAIN], QUEUE_STATS_DIM_MAX + 1);
	assert_int_equal(entry_count(&d, QUEUE_STATS_DOMAIN, QUEUE_STATS_OTHER,
	                             QUEUE_STATS_SENT), 105);
	queue_stats_bucket_reset(&b);
	queue_stats_bucket_reset(&d);
	assert_true(queue_stats_bucket_empty(&b));
}

/* 101 named entries never decode; 100 and "(other)" do. */
static void test_decode_dimension_bound(void **state)
{
	(void)state;
	for (int extra = 0; extra < 2; extra++) {
		uint8_t buf[4096];
		size_t n = 0;
		buf[n++] = 1;
		for (int i = 0; i < QUEUE_STATS_DIM_MAX + 1; i++) {
			char name[16];
			if (i == QUEUE_STATS_DIM_MAX && !extra)
				snprintf(name, sizeof name, "%s", QUEUE_STATS_OTHER);
			else
				snprintf(name, sizeof name, "u%03d", i);
			size_t nl = strlen(name);
			buf[n++] = 0x20;
			buf[n++] = (uint8_t)(1 + nl);
			buf[n++] = (uint8_t)nl;
			memcpy(buf + n, name, nl);
			n += nl;
		}
		struct queue_stats_bucket b;
		int r = queue_stats_decode(buf, n, &b);
		assert_int_equal(r, extra ? -EINVAL : 0);
		if (!r)
			assert_int_equal(b.n[QUEUE_STATS_CRED], QUEUE_STATS_DIM_MAX + 1);
		queue_stats_bucket_reset(&b);
	}
}

static void test_merge(void **state)
{
	(void)state;
	struct queue_stats_bucket a = {0}, b = {0};
	assert_int_equal(queue_stats_bucket_add(&a, QUEUE_STATS_ACCEPTED, "u1",
	                                        NULL, 3), 0);
	assert_int_equal(queue_stats_bucket_add(&a, QUEUE_STATS_SENT, NULL,
	                                        "a.test", 2), 0);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_ACCEPTED, "u2",
	                                        NULL, 4), 0);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_ACCEPTED, "u1",
	                                        NULL, 1), 0);
	assert_int_equal(queue_stats_bucket_add(&b, QUEUE_STATS_DEFERRED, NULL,
	                                        "a.test", 6), 0);
	b.c[QUEUE_STATS_DSN] = UINT64_MAX - 1;
	a.c[QUEUE_STATS_DSN] = 5;
	assert_int_equal(queue_stats_bucket_merge(&a, &b), 0);
	assert_int_equal(a.c[QUEUE_STATS_ACCEPTED], 8);
	assert_int_equal(a.c[QUEUE_STATS_DSN], UINT64_MAX);   /* saturates */
	assert_int_equal(a.n[QUEUE_STATS_CRED], 2);
	assert_int_equal(entry_count(&a, QUEUE_STATS_CRED, "u1",
	                             QUEUE_STATS_ACCEPTED), 4);
	assert_int_equal(entry_count(&a, QUEUE_STATS_CRED, "u2",
	                             QUEUE_STATS_ACCEPTED), 4);
	assert_int_equal(entry_count(&a, QUEUE_STATS_DOMAIN, "a.test",
	                             QUEUE_STATS_SENT), 2);
	assert_int_equal(entry_count(&a, QUEUE_STATS_DOMAIN, "a.test",
	                             QUEUE_STATS_DEFERRED), 6);
	/* merging an empty bucket changes nothing */
	struct queue_stats_bucket e = {0}, before = a;
	assert_int_equal(queue_stats_bucket_merge(&a, &e), 0);
	assert_memory_equal(before.c, a.c, sizeof a.c);
	queue_stats_bucket_reset(&a);
	queue_stats_bucket_reset(&b);
}

static void test_times_and_domain(void **state)
{
	(void)state;
	/* 2023-11-14 00:00:00 UTC and 01:59:59 */
	assert_int_equal(queue_stats_hour(INT64_C(1699927199)),
	                 INT64_C(1699923600));
	assert_int_equal(queue_stats_day(INT64_C(1699927199)),
	                 INT64_C(1699920000));
	assert_int_equal(queue_stats_hour(-5), 0);
	assert_string_equal(queue_stats_domain("a@b@c.test"), "c.test");
	assert_string_equal(queue_stats_domain("postmaster"), "");
	assert_string_equal(queue_stats_domain(NULL), "");
}

/* ---- the daemon side, on a real spool ---------------------------------- */

/* A UTC day boundary (2023-11-14 00:00:00), so hours and days are plain. */
#define DAY0 INT64_C(1699920000)
#define HOUR 3600
#define DAY 86400

struct spool {
	char dir[64];
	uv_loop_t loop;
	struct queue *q;
};

static void rm_spool(const char *dir)
{
	static const char *const sub[] = {"msg", "tmp", "index"};
	for (size_t i = 0; i < 3; i++) {
		char p[256];
		snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char f[512];
			snprintf(f, sizeof f, "%s/%s", p, e->d_name);
			unlink(f);
		}
		closedir(d);
		rmdir(p);
	}
	char c[256];
	snprintf(c, sizeof c, "%s/control", dir);
	unlink(c);
	rmdir(dir);
}

static void spool_open_map(struct spool *s, size_t map_size)
{
	struct queue_opts o = {.map_size = map_size, .sync = QUEUE_SYNC_SYNCFS,
	                       .spool_dir = s->dir};
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(queue_open(&s->loop, &o, &s->q), 0);
}

static void spool_open(struct spool *s)
{
	spool_open_map(s, 16 << 20);
}

static void closed_cb(void *arg)
{
	*(bool *)arg = true;
}

/* Closing flushes the counts held and waits for the writer. */
static void spool_close(struct spool *s)
{
	bool closed = false;
	queue_close(s->q, closed_cb, &closed);
	assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s->loop), 0);
	s->q = NULL;
}

#define SEEN_MAX 128
struct seen {
	size_t n;
	int64_t start[SEEN_MAX];
	uint64_t accepted[SEEN_MAX], sent[SEEN_MAX], deferred[SEEN_MAX];
	uint64_t alice[SEEN_MAX];       /* credential alice: accepted */
	uint64_t a_sent[SEEN_MAX];      /* domain a.test: sent */
	size_t bad;
};

static int seen_cb(void *arg, int64_t start, const struct queue_stats_bucket *b)
{
	struct seen *v = arg;
	if (!b) {
		v->bad++;
		return 0;
	}
	assert_true(v->n < SEEN_MAX);
	v->start[v->n] = start;
	v->accepted[v->n] = b->c[QUEUE_STATS_ACCEPTED];
	v->sent[v->n] = b->c[QUEUE_STATS_SENT];
	v->deferred[v->n] = b->c[QUEUE_STATS_DEFERRED];
	v->alice[v->n] = entry_count(b, QUEUE_STATS_CRED, "alice",
	                             QUEUE_STATS_ACCEPTED);
	v->a_sent[v->n] = entry_count(b, QUEUE_STATS_DOMAIN, "a.test",
	                              QUEUE_STATS_SENT);
	v->n++;
	return 0;
}

/* Reads the spool's buckets of one granularity (the queue closed). */
static void read_buckets(const char *dir, char gran, struct seen *v)
{
	struct queue_ro *ro;
	memset(v, 0, sizeof *v);
	assert_int_equal(queue_ro_open(dir, &ro), 0);
	assert_int_equal(queue_ro_stats(ro, gran, 0, seen_cb, v), 0);
	queue_ro_close(ro);
	assert_int_equal(v->bad, 0);
}

static void test_spool_history(void **state)
{
	(void)state;
	struct spool s;
	snprintf(s.dir, sizeof s.dir, "/tmp/relayd-tqs-XXXXXX");
	assert_non_null(mkdtemp(s.dir));
	spool_open(&s);
	int64_t t = DAY0 + 3 * HOUR + 10, hour;

	/* Nothing counted: nothing to flush, no bucket. */
	assert_int_equal(queue_stats_flush(s.q), 0);
	assert_true(queue_stats_bucket_empty(queue_stats_unflushed(s.q, &hour)));
	assert_int_equal(hour, -1);

	queue_stats_count(s.q, t, QUEUE_STATS_ACCEPTED, "Alice", NULL, 1);
	queue_stats_count(s.q, t + 5, QUEUE_STATS_ACCEPTED, "alice", NULL, 1);
	queue_stats_count(s.q, t + 6, QUEUE_STATS_SENT, NULL, "A.test", 3);
	queue_stats_count(s.q, t + 7, QUEUE_STATS_DEFERRED, NULL, "b.test", 1);
	const struct queue_stats_bucket *u = queue_stats_unflushed(s.q, &hour);
	assert_int_equal(hour, DAY0 + 3 * HOUR);
	assert_int_equal(u->c[QUEUE_STATS_ACCEPTED], 2);
	assert_int_equal(queue_stats_flush(s.q), 0);
	assert_int_equal(queue_stats_unflushed(s.q, &hour)->c[QUEUE_STATS_ACCEPTED],
	                 0);
	assert_int_equal(hour, -1);
	/* more in the same hour, flushed by the close */
	queue_stats_count(s.q, t + 60, QUEUE_STATS_ACCEPTED, "bob", NULL, 1);
	spool_close(&s);

	struct seen v;
	read_buckets(s.dir, QUEUE_STATS_HOUR, &v);
	assert_int_equal(v.n, 1);
	assert_int_equal(v.start[0], DAY0 + 3 * HOUR);
	assert_int_equal(v.accepted[0], 3);
	assert_int_equal(v.alice[0], 2);
	assert_int_equal(v.sent[0], 3);
	assert_int_equal(v.a_sent[0], 3);
	assert_int_equal(v.deferred[0], 1);
	read_buckets(s.dir, QUEUE_STATS_DAY, &v);
	assert_int_equal(v.n, 1);
	assert_int_equal(v.start[0], DAY0);
	assert_int_equal(v.accepted[0], 3);

	/* Reopened: counts add up; a new hour flushes the one before. */
	spool_open(&s);
	queue_stats_count(s.q, t + HOUR, QUEUE_STATS_ACCEPTED, "alice", NULL, 1);
	queue_stats_count(s.q, t + 2 * HOUR, QUEUE_STATS_ACCEPTED, NULL, NULL, 4);
	u = queue_stats_unflushed(s.q, &hour);
	assert_int_equal(hour, DAY0 + 5 * HOUR);
	assert_int_equal(u->c[QUEUE_STATS_ACCEPTED], 4);
	spool_close(&s);
	read_buckets(s.dir, QUEUE_STATS_HOUR, &v);
	assert_int_equal(v.n, 3);
	assert_int_equal(v.start[1], DAY0 + 4 * HOUR);
	assert_int_equal(v.accepted[1], 1);
	assert_int_equal(v.alice[1], 1);
	assert_int_equal(v.start[2], DAY0 + 5 * HOUR);
	assert_int_equal(v.accepted[2], 4);
	read_buckets(s.dir, QUEUE_STATS_DAY, &v);
	assert_int_equal(v.n, 1);
	assert_int_equal(v.accepted[0], 8);
	assert_int_equal(v.alice[0], 3);

	/* 48 hours after hour 3: hour 3 is pruned, hours 4 and 5 are among
	 * the 48 kept. */
	spool_open(&s);
	queue_stats_count(s.q, DAY0 + 51 * HOUR, QUEUE_STATS_SENT, NULL, "a.test",
	                  1);
	spool_close(&s);
	read_buckets(s.dir, QUEUE_STATS_HOUR, &v);
	assert_int_equal(v.n, 3);
	assert_int_equal(v.start[0], DAY0 + 4 * HOUR);
	assert_int_equal(v.start[2], DAY0 + 51 * HOUR);
	read_buckets(s.dir, QUEUE_STATS_DAY, &v);
	assert_int_equal(v.n, 2);
	assert_int_equal(v.start[1], DAY0 + 2 * DAY);
	assert_int_equal(v.a_sent[1], 1);

	/* 70 days on: day 0 and day 2 are older than the 60 days kept, and
	 * every hour bucket is older than 48 hours. */
	spool_open(&s);
	queue_stats_count(s.q, DAY0 + 70 * DAY, QUEUE_STATS_SENT, NULL, NULL, 2);
	spool_close(&s);
	read_buckets(s.dir, QUEUE_STATS_HOUR, &v);
	assert_int_equal(v.n, 1);
	assert_int_equal(v.start[0], DAY0 + 70 * DAY);
	read_buckets(s.dir, QUEUE_STATS_DAY, &v);
	assert_int_equal(v.n, 1);
	assert_int_equal(v.start[0], DAY0 + 70 * DAY);
	assert_int_equal(v.sent[0], 2);
	/* "since" skips what is older */
	struct queue_ro *ro;
	assert_int_equal(queue_ro_open(s.dir, &ro), 0);
	memset(&v, 0, sizeof v);
	assert_int_equal(queue_ro_stats(ro, QUEUE_STATS_DAY, DAY0 + 71 * DAY,
	                                seen_cb, &v), 0);
	queue_ro_close(ro);
	assert_int_equal(v.n, 0);
	rm_spool(s.dir);
}

/* ---- a full map: the history gives way, mail does not ------------------ */

static void charge_cb(void *arg, int status, const struct queue_quota_usage *u)
{
	(void)u;
	int *r = arg;
	*r = status;
}

/* Fills the index of dir (no queue open) until at most `left` pages of
 * its map are unused. */
static void fill_map(const char *dir, size_t mapsize, size_t left)
{
	char p[256];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	static uint8_t pad[4000];
	snprintf(p, sizeof p, "%s/index", dir);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, QUEUE_MAXDBS), 0);
	assert_int_equal(mdb_env_set_mapsize(env, mapsize), 0);
	assert_int_equal(mdb_env_open(env, p, MDB_NOTLS, 0600), 0);
	for (unsigned i = 0; i < 1000; i++) {
		MDB_envinfo info;
		MDB_stat st;
		assert_int_equal(mdb_env_info(env, &info), 0);
		assert_int_equal(mdb_env_stat(env, &st), 0);
		if (mapsize / st.ms_psize - info.me_last_pgno - 1 <= left)
			break;
		char key[16];
		snprintf(key, sizeof key, "pad%u", i);
		MDB_val k = {strlen(key), key}, v = {sizeof pad, pad};
		assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
		assert_int_equal(mdb_dbi_open(txn, "pad", MDB_CREATE, &dbi), 0);
		int rc = mdb_put(txn, dbi, &k, &v, 0);
		if (rc == MDB_MAP_FULL) {
			mdb_txn_abort(txn);
			break;
		}
		assert_int_equal(rc, 0);
		assert_int_equal(mdb_txn_commit(txn), 0);
	}
	mdb_env_close(env);
}

static void test_map_full(void **state)
{
	(void)state;
	struct spool s;
	snprintf(s.dir, sizeof s.dir, "/tmp/relayd-tqs-XXXXXX");
	assert_non_null(mkdtemp(s.dir));
	spool_open_map(&s, 1 << 20);     /* makes the index and its DBs */
	spool_close(&s);
	fill_map(s.dir, 1 << 20, 12);

	spool_open_map(&s, 1 << 20);
	/* Two buckets of 200 long names each: some 100 KiB, far more than
	 * the dozen pages left. */
	int64_t t = DAY0 + 7 * HOUR;
	char name[256];
	for (int i = 0; i < 2 * QUEUE_STATS_DIM_MAX; i++) {
		memset(name, 'a' + i % 26, 250);
		name[250] = (char)('0' + i / 100);
		name[251] = (char)('0' + i / 10 % 10);
		name[252] = (char)('0' + i % 10);
		name[253] = '\0';
		queue_stats_count(s.q, t, QUEUE_STATS_SENT, name, name, 1);
	}
	assert_int_equal(queue_stats_flush(s.q), 0);
	/* A charge after it: in the same ops batch or the next, it commits. */
	int r = 1;
	struct queue_quota_limits lim = {10, 10};
	assert_int_equal(queue_quota_charge(s.q, "shop", t, 1, &lim, charge_cb,
	                                    &r), 0);
	for (int i = 0; r == 1; i++) {
		assert_true(i < 100000);
		uv_run(&s.loop, UV_RUN_ONCE);
	}
	assert_int_equal(r, 0);
	spool_close(&s);

	struct seen v;
	read_buckets(s.dir, QUEUE_STATS_HOUR, &v);
	assert_int_equal(v.n, 0);
	read_buckets(s.dir, QUEUE_STATS_DAY, &v);
	assert_int_equal(v.n, 0);
	/* The charge is there. */
	spool_open_map(&s, 1 << 20);
	struct queue_quota_usage u;
	assert_int_equal(queue_quota_peek(s.q, "shop", t, &u), 0);
	assert_int_equal(u.hour, 1);
	spool_close(&s);
	rm_spool(s.dir);
	/* the "pad" DB's pages went with the index files */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode_table),
		cmocka_unit_test(test_decode_too_long),
		cmocka_unit_test(test_count_bound_and_roundtrip),
		cmocka_unit_test(test_decode_dimension_bound),
		cmocka_unit_test(test_merge),
		cmocka_unit_test(test_times_and_domain),
		cmocka_unit_test(test_spool_history),
		cmocka_unit_test(test_map_full),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
