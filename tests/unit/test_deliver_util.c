/*
 * tests/unit/test_deliver_util.c - The scheduler's pure helpers: the retry
 * backoff (doubling, cap, jitter bounds), table-driven. (The From: rewrite
 * of rewrite_from_header is tested in test_hdr.c.)
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "deliver/deliver_int.h"

#define S(x) x, (sizeof(x) - 1)
#define SEC 1000ull
#define MINUTE (60 * SEC)
#define HOUR (60 * MINUTE)

struct bcase {
	uint64_t min, max;
	uint32_t attempts;
	uint64_t want;   /* without jitter */
};

static const struct bcase bcases[] = {
	{5 * MINUTE, HOUR, 1, 5 * MINUTE},
	{5 * MINUTE, HOUR, 2, 10 * MINUTE},
	{5 * MINUTE, HOUR, 3, 20 * MINUTE},
	{5 * MINUTE, HOUR, 4, 40 * MINUTE},
	{5 * MINUTE, HOUR, 5, HOUR},           /* capped */
	{5 * MINUTE, HOUR, 50, HOUR},
	{5 * MINUTE, HOUR, UINT32_MAX, HOUR},  /* no overflow, no long loop */
	{5 * MINUTE, HOUR, 0, 5 * MINUTE},        /* never below retry_min */
	{SEC, 2 * SEC, 1, SEC},
	{SEC, 2 * SEC, 2, 2 * SEC},
	{SEC, 2 * SEC, 3, 2 * SEC},
	{HOUR, 5 * MINUTE, 3, HOUR},           /* max < min: min wins */
};

static void test_backoff(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bcases / sizeof *bcases; i++) {
		const struct bcase *c = &bcases[i];
		uint64_t lo = deliver_backoff(c->min, c->max, c->attempts, 0);
		uint64_t hi = deliver_backoff(c->min, c->max, c->attempts, 0.999999);
		if (lo != c->want)
			fail_msg("case %zu: %llu, want %llu", i,
			         (unsigned long long)lo, (unsigned long long)c->want);
		/* Jitter adds up to a quarter, never takes away. */
		assert_true(hi >= lo);
		assert_true(hi <= lo + lo / 4);
		if (lo >= 1000)
			assert_true(hi > lo);
		/* Out-of-range randomness is treated as none. */
		assert_int_equal(deliver_backoff(c->min, c->max, c->attempts, 1.5),
		                 lo);
		assert_int_equal(deliver_backoff(c->min, c->max, c->attempts, -1),
		                 lo);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
