/*
 * tests/unit/test_smtpd_lockout.c - The failed-AUTH table: the limit
 * within the window, the window sliding, release after the lockout,
 * doubling per repeat up to 24 h; verifications in flight counted against
 * the limit; a name table that never locks and whose lane delay grows per
 * failure; eviction of unlocked, idle entries only (a flood of rotating
 * keys never flushes a lock), and no room when every entry is locked;
 * the operator's list and clear.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "smtpd/smtpd_lockout.h"

#define S 1000ull
#define MIN (60 * S)

/* One failure that must find room; the lockout it started. */
static uint64_t fail1(struct smtpd_lockout *t, const char *key, uint64_t now)
{
	uint64_t d = 12345;
	assert_int_equal(smtpd_lockout_fail(t, key, now, &d), 0);
	return d;
}

static void test_limit_and_release(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(16);
	smtpd_lockout_set(t, 3, 10 * MIN, 15 * MIN);
	uint64_t now = 1000000;
	assert_int_equal(fail1(t, "1", now), 0);
	assert_int_equal(fail1(t, "1", now + S), 0);
	assert_int_equal(smtpd_lockout_check(t, "1", now + S), 0);
	/* The third failure locks, for 15 minutes. */
	assert_int_equal(fail1(t, "1", now + 2 * S), 15 * MIN);
	assert_int_equal(smtpd_lockout_check(t, "1", now + 2 * S), 15 * MIN);
	assert_int_equal(smtpd_lockout_check(t, "2", now + 2 * S), 0);
	uint64_t left = 0;
	assert_int_equal(smtpd_lockout_begin(t, "1", now + 3 * S, &left),
	                 SMTPD_LOCKOUT_LOCKED);
	assert_int_equal(left, 15 * MIN - S);
	/* Failures while locked do not extend it. */
	assert_int_equal(fail1(t, "1", now + 3 * S), 0);
	assert_int_equal(smtpd_lockout_check(t, "1", now + 2 * S + 15 * MIN), 0);
	/* Released; it failed before, so not clean. */
	now += 2 * S + 15 * MIN;
	assert_int_equal(smtpd_lockout_begin(t, "1", now, NULL),
	                 SMTPD_LOCKOUT_FAILED);
	assert_int_equal(smtpd_lockout_end(t, "1", now, false), 0);
	/* The next lockout is twice as long, then twice again. */
	fail1(t, "1", now);
	fail1(t, "1", now);
	assert_int_equal(fail1(t, "1", now), 30 * MIN);
	now += 30 * MIN;
	fail1(t, "1", now);
	fail1(t, "1", now);
	assert_int_equal(fail1(t, "1", now), 60 * MIN);
	smtpd_lockout_free(t);
}

static void test_window(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(16);
	smtpd_lockout_set(t, 3, 10 * S, 60 * S);
	uint64_t now = 5000;
	fail1(t, "k", now);
	fail1(t, "k", now + 5 * S);
	/* Outside the window: counting starts over. */
	assert_int_equal(fail1(t, "k", now + 10 * S), 0);
	assert_int_equal(fail1(t, "k", now + 11 * S), 0);
	assert_int_equal(fail1(t, "k", now + 12 * S), 60 * S);
	/* A key whose failures left the window is clean again. */
	assert_int_equal(smtpd_lockout_begin(t, "j", 0, NULL),
	                 SMTPD_LOCKOUT_CLEAN);
	smtpd_lockout_end(t, "j", 0, true);
	assert_int_equal(smtpd_lockout_begin(t, "j", 9 * S, NULL),
	                 SMTPD_LOCKOUT_FAILED);
	smtpd_lockout_end(t, "j", 9 * S, false);
	assert_int_equal(smtpd_lockout_begin(t, "j", 20 * S, NULL),
	                 SMTPD_LOCKOUT_CLEAN);
	smtpd_lockout_free(t);

	/* The doubling is remembered for the window after a release when
	 * the window is longer than the lockout: failing again 30 s after a
	 * 10 s lockout ended doubles; clean for the window (60 s) after the
	 * second one ended, it starts over. */
	t = smtpd_lockout_new(16);
	smtpd_lockout_set(t, 1, 60 * S, 10 * S);
	assert_int_equal(fail1(t, "w", 0), 10 * S);
	assert_int_equal(fail1(t, "w", 40 * S), 20 * S);
	assert_int_equal(smtpd_lockout_begin(t, "w", 119 * S, NULL),
	                 SMTPD_LOCKOUT_FAILED);
	smtpd_lockout_end(t, "w", 119 * S, false);
	assert_int_equal(fail1(t, "w", 60 * S + 61 * S), 10 * S);
	smtpd_lockout_free(t);
}

static void test_cap_24h(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(4);
	smtpd_lockout_set(t, 1, 10 * S, 15 * MIN);
	uint64_t now = 1, d = 0, prev = 0;
	for (int i = 0; i < 12; i++) {
		d = fail1(t, "k", now);
		assert_true(d >= prev);
		prev = d;
		now += d;
	}
	assert_int_equal(d, SMTPD_LOCKOUT_MAX_MS);
	smtpd_lockout_free(t);
}

/* Verifications in flight count against the failures left (issue 8 §3:
 * up to 16 checks of one client ran at once although the limit was 5). A
 * table of steps: the operation, its key, the time, and what it returns. */
enum op { BEGIN, END_OK, END_FAIL, CHECK };
static const struct step {
	enum op op;
	const char *key;
	uint64_t now;
	uint64_t want;      /* BEGIN: the admit; END_*: lockout; CHECK: left */
} inflight_steps[] = {
	/* limit 3: three at once from a clean client, the fourth refused */
	{BEGIN, "c", 0, SMTPD_LOCKOUT_CLEAN},
	{BEGIN, "c", 0, SMTPD_LOCKOUT_CLEAN},
	{BEGIN, "c", 0, SMTPD_LOCKOUT_CLEAN},
	{BEGIN, "c", 0, SMTPD_LOCKOUT_BUSY},
	{BEGIN, "other", 0, SMTPD_LOCKOUT_CLEAN},     /* others unaffected */
	/* one fails: 1 failure + 2 in flight is still the limit */
	{END_FAIL, "c", 1, 0},
	{BEGIN, "c", 1, SMTPD_LOCKOUT_BUSY},
	/* one succeeds: 1 failure + 1 in flight leaves room for one */
	{END_OK, "c", 2, 0},
	{BEGIN, "c", 2, SMTPD_LOCKOUT_FAILED},
	{BEGIN, "c", 2, SMTPD_LOCKOUT_BUSY},
	/* both fail: the third failure locks; nothing was ever over 3 */
	{END_FAIL, "c", 3, 0},
	{END_FAIL, "c", 4, 60 * S},
	{CHECK, "c", 5, 60 * S - 1},
	{BEGIN, "c", 5, SMTPD_LOCKOUT_LOCKED},
	{END_OK, "other", 5, 0},
	{BEGIN, "other", 6, SMTPD_LOCKOUT_CLEAN},
};

static void test_inflight(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(8);
	smtpd_lockout_set(t, 3, 10 * MIN, 60 * S);
	for (size_t i = 0; i < sizeof inflight_steps / sizeof *inflight_steps;
	     i++) {
		const struct step *s = &inflight_steps[i];
		uint64_t got = 0;
		switch (s->op) {
		case BEGIN:
			got = smtpd_lockout_begin(t, s->key, s->now, NULL);
			break;
		case END_OK:
			got = smtpd_lockout_end(t, s->key, s->now, false);
			break;
		case END_FAIL:
			got = smtpd_lockout_end(t, s->key, s->now, true);
			break;
		case CHECK:
			got = smtpd_lockout_check(t, s->key, s->now);
			break;
		}
		if (got != s->want)
			fail_msg("step %zu: got %llu, want %llu", i,
			         (unsigned long long)got, (unsigned long long)s->want);
	}
	smtpd_lockout_free(t);
}

/* The name table: limit 0 never locks, whatever the failures; the lane
 * delay grows per failure up to its cap; one verification at a time. */
static void test_name_lane(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(8);
	smtpd_lockout_set(t, 0, 10 * MIN, 15 * MIN);
	smtpd_lockout_set_delay(t, 1 * S, 8 * S);
	uint64_t now = 100;
	assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now), 0);
	static const uint64_t delays[] = {1 * S, 2 * S, 4 * S, 8 * S, 8 * S};
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(fail1(t, "alice", now), 0);
		assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now),
		                 delays[i]);
	}
	for (int i = 0; i < 1000; i++)
		assert_int_equal(fail1(t, "alice", now), 0);
	assert_int_equal(smtpd_lockout_check(t, "alice", now), 0);
	assert_int_equal(smtpd_lockout_begin(t, "alice", now, NULL),
	                 SMTPD_LOCKOUT_FAILED);       /* never LOCKED or BUSY */
	smtpd_lockout_end(t, "alice", now, false);
	/* Other names have their own lane. */
	assert_int_equal(smtpd_lockout_lane_wait(t, "bob", now), 0);
	/* Waiters hold the entry; the running one makes the others wait. */
	assert_int_equal(smtpd_lockout_hold(t, "alice", now), 1);
	assert_int_equal(smtpd_lockout_hold(t, "alice", now), 2);
	now += 8 * S;
	assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now), 0);
	smtpd_lockout_lane_start(t, "alice", now);
	assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now), UINT64_MAX);
	fail1(t, "alice", now + 1);
	smtpd_lockout_lane_done(t, "alice", now + 1);
	smtpd_lockout_release(t, "alice", now + 1);
	assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now + 1), 8 * S);
	/* Held, it outlives its window; released, it expires. */
	now += 20 * MIN;
	assert_int_equal(smtpd_lockout_count(t, now), 1);
	smtpd_lockout_release(t, "alice", now);
	assert_int_equal(smtpd_lockout_count(t, now), 0);
	assert_int_equal(smtpd_lockout_lane_wait(t, "alice", now), 0);
	smtpd_lockout_free(t);
}

/* Eviction takes only unlocked, idle entries (issue 8 §3: 4 096 failures
 * from rotating addresses flushed a lock and reset its doubling). */
static void test_eviction_spares_locks(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(3);
	smtpd_lockout_set(t, 2, 10 * MIN, 10 * MIN);
	fail1(t, "a", 0);
	assert_int_equal(fail1(t, "a", 1), 10 * MIN);   /* "a" locked */
	fail1(t, "b", 2);                              /* 1 failure */
	fail1(t, "c", 3);
	fail1(t, "c", 4);                              /* "c" locked */
	/* A flood of rotating keys: each evicts an unlocked one, never a
	 * lock. */
	char k[32];
	for (int i = 0; i < 10000; i++) {
		snprintf(k, sizeof k, "r%d", i);
		assert_int_equal(fail1(t, k, 10 + (uint64_t)i), 0);
	}
	assert_true(smtpd_lockout_check(t, "a", 20000) > 0);
	assert_true(smtpd_lockout_check(t, "c", 20000) > 0);
	/* The doubling survived: "a"'s next lockout lasts 20 minutes. */
	uint64_t now = 1 + 10 * MIN;
	assert_int_equal(smtpd_lockout_check(t, "a", now), 0);
	fail1(t, "a", now);
	assert_int_equal(fail1(t, "a", now), 20 * MIN);
	/* Now all three are locked ("c", "a", and the rotating one left,
	 * whose second failure this is). */
	assert_int_equal(fail1(t, "r9999", now), 10 * MIN);
	/* Full of locks: no room for a new key. It is not admitted
	 * (untracked) and its failure cannot be recorded: fail closed. */
	assert_int_equal(smtpd_lockout_fail(t, "new", now, NULL), -ENOSPC);
	assert_int_equal(smtpd_lockout_begin(t, "new", now, NULL),
	                 SMTPD_LOCKOUT_FULL);
	assert_int_equal(smtpd_lockout_hold(t, "new", now), -ENOSPC);
	assert_int_equal(smtpd_lockout_count(t, now), 3);
	/* Once a lockout ends, its slot can go. */
	assert_int_equal(fail1(t, "new", now + 10 * MIN), 0);
	smtpd_lockout_free(t);
}

/* Held entries (checks in flight) are never evicted either: their count
 * would be lost. Among unlocked entries the fewest failures go first. */
static void test_eviction_order(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(3);
	smtpd_lockout_set(t, 5, 10 * MIN, 10 * MIN);
	assert_int_equal(smtpd_lockout_begin(t, "held", 0, NULL),
	                 SMTPD_LOCKOUT_CLEAN);
	fail1(t, "two", 1);
	fail1(t, "two", 2);
	fail1(t, "one", 3);
	/* "one" has the fewest failures among the evictable: it goes. */
	fail1(t, "x", 4);
	assert_int_equal(smtpd_lockout_begin(t, "two", 5, NULL),
	                 SMTPD_LOCKOUT_FAILED);
	smtpd_lockout_end(t, "two", 5, false);
	/* "x" (1 failure, touched last) goes before "two" (2). */
	fail1(t, "y", 6);
	fail1(t, "y", 6);
	fail1(t, "y", 6);
	assert_int_equal(smtpd_lockout_begin(t, "two", 7, NULL),
	                 SMTPD_LOCKOUT_FAILED);
	smtpd_lockout_end(t, "two", 7, false);
	/* "held" is still there with its check: the limit counts it. */
	for (int i = 0; i < 4; i++)
		assert_int_equal(smtpd_lockout_begin(t, "held", 8, NULL),
		                 SMTPD_LOCKOUT_CLEAN);
	assert_int_equal(smtpd_lockout_begin(t, "held", 8, NULL),
	                 SMTPD_LOCKOUT_BUSY);
	smtpd_lockout_free(t);
}

struct listed {
	char keys[8][SMTPD_LOCKOUT_KEY_MAX];
	struct smtpd_lockout_info info[8];
	size_t n;
};

static void list_cb(void *arg, const struct smtpd_lockout_info *e)
{
	struct listed *l = arg;
	assert_true(l->n < 8);
	snprintf(l->keys[l->n], sizeof l->keys[0], "%s", e->key);
	l->info[l->n] = *e;
	l->info[l->n].key = l->keys[l->n];
	l->n++;
}

static const struct smtpd_lockout_info *listed_find(const struct listed *l,
                                                    const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->keys[i], key) == 0)
			return &l->info[i];
	return NULL;
}

/* relayctl lockout list and clear. */
static void test_list_and_clear(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(8);
	smtpd_lockout_set(t, 2, 10 * MIN, 15 * MIN);
	fail1(t, "locked", 0);
	fail1(t, "locked", 0);
	fail1(t, "once", 0);
	smtpd_lockout_begin(t, "busy", 0, NULL);
	struct listed l = {0};
	smtpd_lockout_foreach(t, 60 * S, list_cb, &l);
	assert_int_equal(l.n, 3);
	const struct smtpd_lockout_info *e = listed_find(&l, "locked");
	assert_non_null(e);
	assert_int_equal(e->locked_ms, 14 * MIN);
	assert_int_equal(e->strikes, 1);
	assert_int_equal(e->failures, 0);
	e = listed_find(&l, "once");
	assert_non_null(e);
	assert_int_equal(e->failures, 1);
	assert_int_equal(e->locked_ms, 0);
	e = listed_find(&l, "busy");
	assert_non_null(e);
	assert_int_equal(e->held, 1);

	/* Clear one key: its lockout and doubling go. */
	assert_int_equal(smtpd_lockout_clear(t, "locked", 60 * S), 1);
	assert_int_equal(smtpd_lockout_check(t, "locked", 60 * S), 0);
	assert_int_equal(smtpd_lockout_begin(t, "locked", 60 * S, NULL),
	                 SMTPD_LOCKOUT_CLEAN);
	smtpd_lockout_end(t, "locked", 60 * S, true);
	assert_int_equal(fail1(t, "locked", 60 * S), 15 * MIN);   /* not 30 */
	assert_int_equal(smtpd_lockout_clear(t, "nothing", 60 * S), 0);
	/* Clear all: what is held stays counted. */
	assert_int_equal(smtpd_lockout_clear(t, NULL, 60 * S), 2);
	assert_int_equal(smtpd_lockout_count(t, 60 * S), 1);     /* "busy" */
	assert_int_equal(smtpd_lockout_begin(t, "busy", 60 * S, NULL),
	                 SMTPD_LOCKOUT_CLEAN);
	assert_int_equal(smtpd_lockout_begin(t, "busy", 60 * S, NULL),
	                 SMTPD_LOCKOUT_BUSY);
	smtpd_lockout_free(t);
}

static void test_long_keys(void **state)
{
	(void)state;
	struct smtpd_lockout *t = smtpd_lockout_new(2);
	smtpd_lockout_set(t, 2, 10 * S, 10 * S);
	char big[300];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	fail1(t, big, 100 * S);
	assert_int_equal(fail1(t, big, 100 * S), 10 * S);
	struct listed l = {0};
	smtpd_lockout_foreach(t, 100 * S, list_cb, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(strlen(l.keys[0]), SMTPD_LOCKOUT_KEY_MAX - 1);
	assert_int_equal(smtpd_lockout_count(t, 100 * S + 30 * S), 0);
	smtpd_lockout_free(t);
	smtpd_lockout_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limit_and_release),
		cmocka_unit_test(test_window),
		cmocka_unit_test(test_cap_24h),
		cmocka_unit_test(test_inflight),
		cmocka_unit_test(test_name_lane),
		cmocka_unit_test(test_eviction_spares_locks),
		cmocka_unit_test(test_eviction_order),
		cmocka_unit_test(test_list_and_clear),
		cmocka_unit_test(test_long_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
