/*
 * tests/fuzz/fuzz_stats.c - libFuzzer harness for the statistics bucket
 * decoder (queue/queue_stats.h: what the writer merges into and relayctl
 * reads from the index's "stats" DB): any bytes decode or fail cleanly
 * with -EINVAL and an empty bucket; what decodes keeps the bounds,
 * re-encodes to a value that decodes to the same bucket, and merges with
 * itself into doubled (saturated) counts that still encode; then names
 * taken from the input are counted into it and it still encodes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_stats.h"

static void check_bounds(const struct queue_stats_bucket *b)
{
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++) {
		size_t named = 0;
		if (b->n[d] > QUEUE_STATS_DIM_MAX + 1)
			abort();
		for (size_t i = 0; i < b->n[d]; i++) {
			size_t nl = strnlen(b->e[d][i].name, sizeof b->e[d][i].name);
			if (nl == 0 || nl > QUEUE_STATS_NAME_MAX)
				abort();
			named += strcmp(b->e[d][i].name, QUEUE_STATS_OTHER) != 0;
		}
		if (named > QUEUE_STATS_DIM_MAX)
			abort();
	}
}

static void check_same(const struct queue_stats_bucket *a,
                       const struct queue_stats_bucket *b)
{
	if (memcmp(a->c, b->c, sizeof a->c))
		abort();
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++) {
		if (a->n[d] != b->n[d])
			abort();
		for (size_t i = 0; i < a->n[d]; i++)
			if (strcmp(a->e[d][i].name, b->e[d][i].name) ||
			    memcmp(a->e[d][i].c, b->e[d][i].c, sizeof a->e[d][i].c))
				abort();
	}
}

static void roundtrip(const struct queue_stats_bucket *b)
{
	uint8_t *enc = NULL;
	size_t len = 0;
	struct queue_stats_bucket b2;
	if (queue_stats_encode(b, &enc, &len) != 0 || len > QUEUE_STATS_VALUE_MAX ||
	    enc[0] != QUEUE_STATS_VERSION || queue_stats_decode(enc, len, &b2) != 0)
		abort();
	check_same(b, &b2);
	free(enc);
	queue_stats_bucket_reset(&b2);
}

static uint64_t sat2(uint64_t v)
{
	return v > UINT64_MAX / 2 ? UINT64_MAX : 2 * v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct queue_stats_bucket b;
	int r = queue_stats_decode(data, size, &b);
	if (r) {
		if (r != -EINVAL || !queue_stats_bucket_empty(&b))
			abort();
		return 0;
	}
	check_bounds(&b);
	roundtrip(&b);

	/* Merged with itself: every count doubled, the same names. */
	struct queue_stats_bucket m = {0};
	if (queue_stats_bucket_merge(&m, &b) || queue_stats_bucket_merge(&m, &b))
		abort();
	for (int i = 0; i < QUEUE_STATS_NIDS; i++)
		if (m.c[i] != sat2(b.c[i]))
			abort();
	for (int d = 0; d < QUEUE_STATS_NDIMS; d++) {
		if (m.n[d] != b.n[d])
			abort();
		for (size_t i = 0; i < b.n[d]; i++)
			for (int k = 0; k < QUEUE_STATS_NIDS; k++)
				if (m.e[d][i].c[k] != sat2(b.e[d][i].c[k]))
					abort();
	}
	roundtrip(&m);

	/* Names from the input (cut at NULs), counted in: the bound holds. */
	char name[64];
	size_t nl = 0;
	for (size_t i = 1; i < size; i++) {
		if (data[i] && nl < sizeof name - 1) {
			name[nl++] = (char)data[i];
			continue;
		}
		name[nl] = '\0';
		unsigned id = 1 + data[i - 1] % (QUEUE_STATS_NIDS - 1);
		if (queue_stats_bucket_add(&m, id, name, name, 1))
			abort();
		nl = 0;
	}
	check_bounds(&m);
	roundtrip(&m);
	queue_stats_bucket_reset(&m);
	queue_stats_bucket_reset(&b);
	return 0;
}
