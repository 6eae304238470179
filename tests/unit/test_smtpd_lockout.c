/*
 * tests/unit/test_smtpd_lockout.c - The failed-AUTH lockout table: the
 * limit within the window, the window sliding, release after the lockout,
 * doubling per repeat up to 24 h, a success forgetting failures, expiry
 * and eviction when full.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "smtpd/smtpd_lockout.h"

#define S 1000ull
#define MIN (60 * S)

static void test_limit_and_release(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(16);
	smtpd_lockout_set(t, 3, 10 * MIN, 15 * MIN);
	uint64_t now = 1000000;
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now), 0);
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now + S), 0);
	assert_int_equal(smtpd_lockout_check(t, "ip:1", now + S), 0);
	/* The third failure locks, for 15 minutes. */
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now + 2 * S), 15 * MIN);
	assert_int_equal(smtpd_lockout_check(t, "ip:1", now + 2 * S), 15 * MIN);
	assert_int_equal(smtpd_lockout_check(t, "ip:2", now + 2 * S), 0);
	/* Failures while locked do not extend it. */
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now + 3 * S), 0);
	assert_int_equal(smtpd_lockout_check(t, "ip:1", now + 2 * S + 15 * MIN), 0);
	/* Released; the next lockout is twice as long. */
	now += 2 * S + 15 * MIN;
	smtpd_lockout_fail(t, "ip:1", now);
	smtpd_lockout_fail(t, "ip:1", now);
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now), 30 * MIN);
	now += 30 * MIN;
	smtpd_lockout_fail(t, "ip:1", now);
	smtpd_lockout_fail(t, "ip:1", now);
	assert_int_equal(smtpd_lockout_fail(t, "ip:1", now), 60 * MIN);
	smtpd_lockout_free(t);
}

static void test_window(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(16);
	smtpd_lockout_set(t, 3, 10 * S, 60 * S);
	uint64_t now = 5000;
	smtpd_lockout_fail(t, "k", now);
	smtpd_lockout_fail(t, "k", now + 5 * S);
	/* Outside the window: counting starts over. */
	assert_int_equal(smtpd_lockout_fail(t, "k", now + 10 * S), 0);
	assert_int_equal(smtpd_lockout_fail(t, "k", now + 11 * S), 0);
	assert_int_equal(smtpd_lockout_fail(t, "k", now + 12 * S), 60 * S);
	smtpd_lockout_free(t);
}

static void test_cap_24h(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(4);
	smtpd_lockout_set(t, 1, 10 * S, 15 * MIN);
	uint64_t now = 1, d = 0, prev = 0;
	for (int i = 0; i < 12; i++) {
		d = smtpd_lockout_fail(t, "k", now);
		assert_true(d >= prev);
		prev = d;
		now += d;
	}
	assert_int_equal(d, SMTPD_LOCKOUT_MAX_MS);
	smtpd_lockout_free(t);
}

static void test_success_clears(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(4);
	smtpd_lockout_set(t, 2, MIN, MIN);
	smtpd_lockout_fail(t, "name:app", 10);
	smtpd_lockout_clear(t, "name:app", 20);
	assert_int_equal(smtpd_lockout_fail(t, "name:app", 30), 0);
	assert_int_equal(smtpd_lockout_fail(t, "name:app", 40), MIN);
	/* A lockout in force stays. */
	smtpd_lockout_clear(t, "name:app", 50);
	assert_true(smtpd_lockout_check(t, "name:app", 50) > 0);
	smtpd_lockout_free(t);
}

static void test_expiry_and_eviction(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(3);
	smtpd_lockout_set(t, 2, 10 * S, 10 * S);
	smtpd_lockout_fail(t, "a", 0);
	smtpd_lockout_fail(t, "b", 1);
	smtpd_lockout_fail(t, "c", 2);
	assert_int_equal(smtpd_lockout_count(t, 3), 3);
	/* Full: a fourth key evicts the least recently touched ("a"). */
	smtpd_lockout_fail(t, "b", 4);
	smtpd_lockout_fail(t, "d", 5);
	assert_int_equal(smtpd_lockout_count(t, 6), 3);
	assert_int_equal(smtpd_lockout_fail(t, "a", 6), 0);   /* counts anew */
	/* "b" was locked at 4 for 10 s; it stays until that long after. */
	assert_true(smtpd_lockout_check(t, "b", 7) > 0);
	assert_int_equal(smtpd_lockout_check(t, "b", 4 + 10 * S), 0);
	assert_int_equal(smtpd_lockout_count(t, 4 + 10 * S + 10 * S), 0);
	/* Long keys are cut, not overflowed. */
	char big[300];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	smtpd_lockout_fail(t, big, 100 * S);
	assert_int_equal(smtpd_lockout_fail(t, big, 100 * S), 10 * S);
	smtpd_lockout_free(t);
	smtpd_lockout_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limit_and_release),
		cmocka_unit_test(test_window),
		cmocka_unit_test(test_cap_24h),
		cmocka_unit_test(test_success_clears),
		cmocka_unit_test(test_expiry_and_eviction),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
