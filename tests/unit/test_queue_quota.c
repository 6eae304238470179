/*
 * tests/unit/test_queue_quota.c - The LMDB quota store (queue/queue_quota.h)
 * on a real spool in a temporary directory: charges within the limits,
 * a charge over a limit refused without counting (all or nothing for n >
 * 1), concurrent charges in one writer batch never overshooting, hour and
 * day rollover with injected times, refunds, case-insensitive keys,
 * counters surviving a close and reopen of the queue, pruning of old
 * periods, bad arguments, the function table, and a charge still queued
 * when the queue closes. Every test ends with uv_loop_close() == 0.
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

#include "queue/queue_quota.h"

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

static const struct queue_opts opts_syncfs = {.map_size = 16 << 20,
                                              .sync = QUEUE_SYNC_SYNCFS};
static const struct queue_opts opts_fsync = {.map_size = 16 << 20,
                                             .sync = QUEUE_SYNC_FSYNC};

static void spool_open(struct spool *s, const struct queue_opts *tmpl)
{
	struct queue_opts o = *tmpl;
	o.spool_dir = s->dir;
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(queue_open(&s->loop, &o, &s->q), 0);
}

static void closed_cb(void *arg)
{
	*(bool *)arg = true;
}

static void spool_close(struct spool *s)
{
	bool closed = false;
	queue_close(s->q, closed_cb, &closed);
	assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s->loop), 0);
	s->q = NULL;
}

static void spool_setup(struct spool *s, const struct queue_opts *o)
{
	snprintf(s->dir, sizeof s->dir, "/tmp/relayd-tqq-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	spool_open(s, o);
}

static void spool_teardown(struct spool *s)
{
	spool_close(s);
	rm_spool(s->dir);
}

struct result {
	int calls;
	int status;
	struct queue_quota_usage u;
};

static void result_cb(void *arg, int status, const struct queue_quota_usage *u)
{
	struct result *r = arg;
	r->calls++;
	r->status = status;
	r->u = *u;
}

static void run_until(struct spool *s, const int *calls, int want)
{
	for (int i = 0; *calls < want; i++) {
		if (i > 100000)
			fail_msg("waited too long: %d of %d callbacks", *calls, want);
		uv_run(&s->loop, UV_RUN_ONCE);
	}
}

/* One charge, waited for; returns its status, usage in *u. */
static int charge(struct spool *s, const char *key, int64_t now, uint32_t n,
                  uint32_t hourly, uint32_t daily, struct queue_quota_usage *u)
{
	struct result r = {0};
	struct queue_quota_limits lim = {hourly, daily};
	assert_int_equal(queue_quota_charge(s->q, key, now, n, &lim, result_cb,
	                                    &r), 0);
	assert_int_equal(r.calls, 0);   /* never from inside the call */
	run_until(s, &r.calls, 1);
	if (u)
		*u = r.u;
	return r.status;
}

static void assert_usage(struct spool *s, const char *key, int64_t now,
                         uint32_t hour, uint32_t day)
{
	struct queue_quota_usage u = {99, 99};
	assert_int_equal(queue_quota_peek(s->q, key, now, &u), 0);
	if (u.hour != hour || u.day != day)
		fail_msg("%s at %lld: %u/%u, want %u/%u", key, (long long)now,
		         u.hour, u.day, hour, day);
}

static void test_charge_within_and_over(void **state)
{
	(void)state;
	const struct queue_opts *modes[] = {&opts_syncfs, &opts_fsync};
	for (size_t m = 0; m < 2; m++) {
		struct spool s;
		spool_setup(&s, modes[m]);
		struct queue_quota_usage u;
		int64_t t = DAY0 + 10 * HOUR + 5;
		assert_usage(&s, "shop", t, 0, 0);
		for (uint32_t i = 1; i <= 3; i++) {
			assert_int_equal(charge(&s, "shop", t, 1, 3, 10, &u), 0);
			assert_int_equal(u.hour, i);
			assert_int_equal(u.day, i);
		}
		/* Over the hourly limit: refused, nothing counted. */
		assert_int_equal(charge(&s, "shop", t + 60, 1, 3, 10, &u), -EDQUOT);
		assert_int_equal(u.hour, 3);
		assert_int_equal(u.day, 3);
		assert_usage(&s, "shop", t, 3, 3);
		struct queue_quota_limits lim = {3, 10};
		assert_true(queue_quota_exceeded(&u, &lim, 1));
		/* Other keys have their own counts. */
		assert_int_equal(charge(&s, "crm", t, 1, 3, 10, &u), 0);
		assert_usage(&s, "crm", t, 1, 1);
		/* No limits: always. */
		for (int i = 0; i < 5; i++)
			assert_int_equal(charge(&s, "free", t, 1000, 0, 0, NULL), 0);
		assert_usage(&s, "free", t, 5000, 5000);
		spool_teardown(&s);
	}
}

static void test_all_or_nothing(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	int64_t t = DAY0 + 5;
	struct queue_quota_usage u;
	assert_int_equal(charge(&s, "k", t, 8, 10, 0, &u), 0);
	assert_int_equal(charge(&s, "k", t, 3, 10, 0, &u), -EDQUOT);
	assert_usage(&s, "k", t, 8, 8);
	assert_int_equal(charge(&s, "k", t, 2, 10, 0, &u), 0);
	assert_int_equal(u.hour, 10);
	/* The daily limit refuses the same way. */
	assert_int_equal(charge(&s, "k", t + HOUR, 1, 10, 10, &u), -EDQUOT);
	assert_int_equal(u.hour, 0);
	assert_int_equal(u.day, 10);
	spool_teardown(&s);
}

/* Five charges handed over before the writer runs share one transaction:
 * each sees the ones before it, so exactly the limit passes. */
static void test_concurrent_no_overshoot(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	struct result r[5] = {{0}};
	struct queue_quota_limits lim = {3, 0};
	int calls = 0;
	for (int i = 0; i < 5; i++)
		assert_int_equal(queue_quota_charge(s.q, "Burst", DAY0, 1, &lim,
		                                    result_cb, &r[i]), 0);
	for (int i = 0; i < 100000 && calls < 5; i++) {
		uv_run(&s.loop, UV_RUN_ONCE);
		calls = 0;
		for (int j = 0; j < 5; j++)
			calls += r[j].calls;
	}
	int ok = 0, over = 0;
	for (int j = 0; j < 5; j++) {
		assert_int_equal(r[j].calls, 1);
		ok += r[j].status == 0;
		over += r[j].status == -EDQUOT;
	}
	assert_int_equal(ok, 3);
	assert_int_equal(over, 2);
	assert_usage(&s, "burst", DAY0, 3, 3);
	spool_teardown(&s);
}

static void test_rollover(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	struct queue_quota_usage u;
	/* hourly 2, daily 5 */
	int64_t t = DAY0 + 22 * HOUR + 3599;   /* the last second of 22:00 */
	assert_int_equal(charge(&s, "k", t - 10, 1, 2, 5, NULL), 0);
	assert_int_equal(charge(&s, "k", t, 1, 2, 5, NULL), 0);
	assert_int_equal(charge(&s, "k", t, 1, 2, 5, &u), -EDQUOT);
	/* 23:00: a new hour, the same day. */
	assert_int_equal(charge(&s, "k", t + 1, 1, 2, 5, &u), 0);
	assert_int_equal(u.hour, 1);
	assert_int_equal(u.day, 3);
	assert_int_equal(charge(&s, "k", t + 2, 1, 2, 5, NULL), 0);
	assert_int_equal(charge(&s, "k", t + 3, 1, 2, 5, NULL), -EDQUOT);
	assert_usage(&s, "k", t + 3, 2, 4);
	/* The hour before still reads its own counts. */
	assert_usage(&s, "k", t, 2, 4);
	/* 23:59:59 is still the day; the daily limit bites first. */
	int64_t late = DAY0 + DAY - 1;
	assert_int_equal(charge(&s, "k", late, 1, 5, 5, &u), 0);
	assert_int_equal(u.day, 5);
	assert_int_equal(charge(&s, "k", late, 1, 5, 5, &u), -EDQUOT);
	/* Midnight UTC: a new day and hour. */
	assert_int_equal(charge(&s, "k", DAY0 + DAY, 1, 5, 5, &u), 0);
	assert_int_equal(u.hour, 1);
	assert_int_equal(u.day, 1);
	assert_int_equal(queue_quota_hour(DAY0 + DAY - 1) + 1,
	                 queue_quota_hour(DAY0 + DAY));
	assert_int_equal(queue_quota_day(DAY0 + DAY - 1) + 1,
	                 queue_quota_day(DAY0 + DAY));
	assert_int_equal(queue_quota_day(-5), 0);
	spool_teardown(&s);
}

static void test_refund_and_case(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	int64_t t = DAY0 + 7;
	assert_int_equal(charge(&s, "App", t, 2, 2, 0, NULL), 0);
	/* Names are case-insensitive: "app" is the same credential. */
	assert_int_equal(charge(&s, "app", t, 1, 2, 0, NULL), -EDQUOT);
	assert_usage(&s, "APP", t, 2, 2);
	struct result r = {0};
	assert_int_equal(queue_quota_refund(s.q, "app", t, 1, result_cb, &r), 0);
	run_until(&s, &r.calls, 1);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.u.hour, 1);
	assert_int_equal(charge(&s, "app", t, 1, 2, 0, NULL), 0);
	/* Never below zero; a counter at zero is removed. */
	r.calls = 0;
	assert_int_equal(queue_quota_refund(s.q, "app", t, 50, result_cb, &r), 0);
	run_until(&s, &r.calls, 1);
	assert_int_equal(r.u.hour, 0);
	assert_int_equal(r.u.day, 0);
	uint64_t n = 99;
	assert_int_equal(queue_quota_entries(s.q, &n), 0);
	assert_int_equal(n, 0);
	/* A refund without a callback. */
	assert_int_equal(charge(&s, "app", t, 1, 0, 0, NULL), 0);
	assert_int_equal(queue_quota_refund(s.q, "app", t, 1, NULL, NULL), 0);
	r.calls = 0;   /* ops are applied in order: this one runs after */
	assert_int_equal(queue_quota_refund(s.q, "app", t, 1, result_cb, &r), 0);
	run_until(&s, &r.calls, 1);
	assert_usage(&s, "app", t, 0, 0);
	spool_teardown(&s);
}

static void test_survives_reopen(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	int64_t t = DAY0 + 3 * HOUR;
	for (int i = 0; i < 4; i++)
		assert_int_equal(charge(&s, "shop", t, 1, 4, 100, NULL), 0);
	spool_close(&s);
	spool_open(&s, &opts_fsync);
	assert_usage(&s, "shop", t, 4, 4);
	assert_int_equal(charge(&s, "shop", t + 1, 1, 4, 100, NULL), -EDQUOT);
	assert_int_equal(charge(&s, "shop", t + HOUR, 1, 4, 100, NULL), 0);
	spool_close(&s);
	spool_open(&s, &opts_syncfs);
	assert_usage(&s, "shop", t + HOUR, 1, 5);
	spool_teardown(&s);
}

static void test_prune(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	uint64_t n = 0;
	/* Three keys over several hours of day 0: H and D counters. */
	for (int h = 0; h < 5; h++) {
		assert_int_equal(charge(&s, "a", DAY0 + h * HOUR, 1, 0, 0, NULL), 0);
		assert_int_equal(charge(&s, "b", DAY0 + h * HOUR, 1, 0, 0, NULL), 0);
	}
	/* hours 0..4: "a" and "b" at 3 and 4 are kept (the current and the
	 * previous hour), hours 0-2 were pruned on the way: 4 H + 2 D. */
	assert_int_equal(queue_quota_entries(s.q, &n), 0);
	assert_int_equal(n, 6);
	/* Day 1, 00:00: day 0 and hour 23 of day 0 would be kept, hour 4 of
	 * day 0 goes. */
	assert_int_equal(charge(&s, "c", DAY0 + DAY, 1, 0, 0, NULL), 0);
	assert_int_equal(queue_quota_entries(s.q, &n), 0);
	assert_int_equal(n, 2 /* D0 a, b */ + 2 /* c */);
	/* Day 3: everything of day 0 and 1 is gone but the new key's. */
	assert_int_equal(charge(&s, "a", DAY0 + 3 * DAY, 1, 0, 0, NULL), 0);
	assert_int_equal(queue_quota_entries(s.q, &n), 0);
	assert_int_equal(n, 2);
	assert_usage(&s, "a", DAY0 + 3 * DAY, 1, 1);
	/* A refused charge writes (and prunes) nothing. */
	assert_int_equal(charge(&s, "a", DAY0 + 3 * DAY, 5, 5, 0, NULL), -EDQUOT);
	assert_int_equal(queue_quota_entries(s.q, &n), 0);
	assert_int_equal(n, 2);
	spool_teardown(&s);
}

static void test_bad_args_and_store(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	struct queue_quota_limits lim = {1, 1};
	struct queue_quota_usage u;
	struct result r = {0};
	char longkey[QUEUE_QUOTA_KEY_MAX + 2];
	memset(longkey, 'k', sizeof longkey);
	longkey[QUEUE_QUOTA_KEY_MAX + 1] = '\0';
	assert_int_equal(queue_quota_charge(s.q, "", DAY0, 1, &lim, result_cb, &r),
	                 -EINVAL);
	assert_int_equal(queue_quota_charge(s.q, NULL, DAY0, 1, &lim, result_cb,
	                                    &r), -EINVAL);
	assert_int_equal(queue_quota_charge(s.q, longkey, DAY0, 1, &lim,
	                                    result_cb, &r), -EINVAL);
	assert_int_equal(queue_quota_charge(s.q, "k", DAY0, 0, &lim, result_cb,
	                                    &r), -EINVAL);
	assert_int_equal(queue_quota_charge(s.q, "k", DAY0, 1, NULL, result_cb,
	                                    &r), -EINVAL);
	assert_int_equal(queue_quota_charge(s.q, "k", DAY0, 1, &lim, NULL, &r),
	                 -EINVAL);
	assert_int_equal(queue_quota_peek(s.q, longkey, DAY0, &u), -EINVAL);
	/* The longest key works. */
	longkey[QUEUE_QUOTA_KEY_MAX] = '\0';
	assert_int_equal(charge(&s, longkey, DAY0, 1, 1, 1, NULL), 0);
	assert_usage(&s, longkey, DAY0, 1, 1);
	assert_int_equal(r.calls, 0);

	/* Through the function table. */
	struct queue_quota_store st;
	queue_quota_store_lmdb(s.q, &st);
	assert_string_equal(st.ops->name, "lmdb");
	assert_int_equal(st.ops->charge(st.ctx, "t", DAY0, 1, &lim, result_cb,
	                                &r), 0);
	run_until(&s, &r.calls, 1);
	assert_int_equal(r.status, 0);
	assert_int_equal(st.ops->peek(st.ctx, "t", DAY0, &u), 0);
	assert_int_equal(u.hour, 1);
	assert_int_equal(st.ops->charge(st.ctx, "t", DAY0, 1, &lim, result_cb,
	                                &r), 0);
	run_until(&s, &r.calls, 2);
	assert_int_equal(r.status, -EDQUOT);
	assert_int_equal(st.ops->refund(st.ctx, "t", DAY0, 1, result_cb, &r), 0);
	run_until(&s, &r.calls, 3);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.u.hour, 0);
	spool_teardown(&s);
}

/* A charge still queued when the queue closes gets its answer. */
static void test_close_with_charge(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	struct queue_quota_limits lim = {10, 0};
	struct result r = {0};
	assert_int_equal(queue_quota_charge(s.q, "k", DAY0, 1, &lim, result_cb,
	                                    &r), 0);
	struct queue *q = s.q;
	bool closed = false;
	queue_close(q, closed_cb, &closed);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 0);
	assert_int_equal(uv_run(&s.loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s.loop), 0);
	spool_open(&s, &opts_syncfs);
	assert_usage(&s, "k", DAY0, 1, 1);
	spool_teardown(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_charge_within_and_over),
		cmocka_unit_test(test_all_or_nothing),
		cmocka_unit_test(test_concurrent_no_overshoot),
		cmocka_unit_test(test_rollover),
		cmocka_unit_test(test_refund_and_case),
		cmocka_unit_test(test_survives_reopen),
		cmocka_unit_test(test_prune),
		cmocka_unit_test(test_bad_args_and_store),
		cmocka_unit_test(test_close_with_charge),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
