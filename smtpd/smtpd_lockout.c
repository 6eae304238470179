/*
 * smtpd/smtpd_lockout.c - The failed-AUTH table (smtpd_lockout.h): a
 * fixed array scanned linearly. AUTH attempts are rare next to the KDF
 * run each one costs, so a scan of a few thousand entries is noise; the
 * array never grows, so a flood of addresses or names cannot exhaust
 * memory. Eviction never takes a lockout in force or an entry that holds
 * verifications: 4 096 failures from rotating addresses must not flush a
 * lock (and reset its doubling), nor lose count of a client's checks in
 * flight. When nothing can go, the caller is told (-ENOSPC, FULL) and
 * fails closed.
 */
#include "smtpd/smtpd_lockout.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	char key[SMTPD_LOCKOUT_KEY_MAX];
	uint64_t window_start;   /* first failure counted in nfail */
	uint64_t locked_until;   /* 0: never locked */
	uint64_t touched;        /* for eviction */
	uint64_t ready_at;       /* the lane's next start, at the earliest */
	unsigned nfail;
	unsigned strikes;        /* lockouts so far: the next lasts 2^strikes */
	unsigned held;           /* verifications in flight, lane waiters */
	bool running;            /* the lane's verification runs */
	bool used;
};

struct smtpd_lockout {
	unsigned limit;          /* 0: never locks */
	uint64_t window, lockout;
	uint64_t delay, delay_max;
	size_t cap;
	struct entry e[];
};

const char *const smtpd_lockout_admit_names[] = {
	[SMTPD_LOCKOUT_CLEAN] = "clean",
	[SMTPD_LOCKOUT_FAILED] = "failed before",
	[SMTPD_LOCKOUT_LOCKED] = "locked out",
	[SMTPD_LOCKOUT_BUSY] = "busy",
	[SMTPD_LOCKOUT_FULL] = "table full",
};

struct smtpd_lockout *smtpd_lockout_new(size_t cap)
{
	if (cap == 0)
		cap = 1;
	struct smtpd_lockout *t = calloc(1, sizeof *t + cap * sizeof t->e[0]);
	if (!t)
		return NULL;
	t->cap = cap;
	t->limit = 5;
	t->window = 10 * 60 * 1000;
	t->lockout = 15 * 60 * 1000;
	return t;
}

void smtpd_lockout_free(struct smtpd_lockout *t)
{
	free(t);
}

void smtpd_lockout_set(struct smtpd_lockout *t, unsigned limit,
                       uint64_t window_ms, uint64_t lockout_ms)
{
	t->limit = limit;
	t->window = window_ms;
	t->lockout = lockout_ms;
}

void smtpd_lockout_set_delay(struct smtpd_lockout *t, uint64_t delay_ms,
                             uint64_t delay_max_ms)
{
	t->delay = delay_ms;
	t->delay_max = delay_max_ms > delay_ms ? delay_max_ms : delay_ms;
}

/* The lockout that follows `strikes` earlier ones. */
static uint64_t lockout_len(const struct smtpd_lockout *t, unsigned strikes)
{
	uint64_t d = t->lockout;
	for (unsigned i = 0; i < strikes && d < SMTPD_LOCKOUT_MAX_MS; i++)
		d *= 2;
	return d < SMTPD_LOCKOUT_MAX_MS ? d : SMTPD_LOCKOUT_MAX_MS;
}

/* The lane delay after the n-th failure in the window. */
static uint64_t delay_for(const struct smtpd_lockout *t, unsigned n)
{
	if (n == 0 || t->delay == 0)
		return 0;
	uint64_t d = t->delay;
	for (unsigned i = 1; i < n && d < t->delay_max; i++)
		d *= 2;
	return d < t->delay_max ? d : t->delay_max;
}

/* Failures that still count at now. */
static unsigned live_fails(const struct smtpd_lockout *t,
                           const struct entry *e, uint64_t now)
{
	return e->nfail && now - e->window_start < t->window ? e->nfail : 0;
}

/* Locked out before, and not yet clean for as long as that lockout
 * lasted, or for the failure window if that is longer (so the doubling
 * forgets a key that behaved for that long, and a key failing again
 * within the window of its release doubles). */
static bool recent_strike(const struct smtpd_lockout *t,
                          const struct entry *e, uint64_t now)
{
	if (!e->strikes)
		return false;
	uint64_t d = lockout_len(t, e->strikes - 1);
	return now < e->locked_until + (d > t->window ? d : t->window);
}

/* An entry can go once it locks nothing, counts nothing, holds nothing,
 * delays nothing and remembers no recent lockout. */
static bool expired(const struct smtpd_lockout *t, const struct entry *e,
                    uint64_t now)
{
	return !e->held && !e->running && now >= e->locked_until &&
	       !live_fails(t, e, now) && !recent_strike(t, e, now) &&
	       now >= e->ready_at;
}

static bool key_eq(const struct entry *e, const char *key)
{
	return strncmp(e->key, key, sizeof e->key - 1) == 0;
}

static struct entry *find(struct smtpd_lockout *t, const char *key,
                          uint64_t now)
{
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used || !key_eq(e, key))
			continue;
		if (expired(t, e, now)) {
			e->used = false;
			return NULL;
		}
		return e;
	}
	return NULL;
}

/* May e make room for another key? Never a lockout in force, never an
 * entry holding verifications. */
static bool evictable(const struct entry *e, uint64_t now)
{
	return !e->held && !e->running && now >= e->locked_until;
}

/* Is a a better victim than b: fewer failures, fewer lockouts, older? */
static bool worse(const struct smtpd_lockout *t, const struct entry *a,
                  const struct entry *b, uint64_t now)
{
	unsigned fa = live_fails(t, a, now), fb = live_fails(t, b, now);
	if (fa != fb)
		return fa < fb;
	if (a->strikes != b->strikes)
		return a->strikes < b->strikes;
	return a->touched < b->touched;
}

/* A slot for key: a free one, an expired one, else an evictable one;
 * NULL when every entry is locked or holding. */
static struct entry *slot(struct smtpd_lockout *t, const char *key,
                          uint64_t now)
{
	struct entry *victim = NULL;
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used || expired(t, e, now)) {
			victim = e;
			break;
		}
		if (evictable(e, now) && (!victim || worse(t, e, victim, now)))
			victim = e;
	}
	if (!victim)
		return NULL;
	memset(victim, 0, sizeof *victim);
	victim->used = true;
	size_t n = strnlen(key, sizeof victim->key - 1);
	memcpy(victim->key, key, n);
	victim->key[n] = '\0';
	victim->touched = now;
	return victim;
}

static struct entry *get(struct smtpd_lockout *t, const char *key,
                         uint64_t now)
{
	struct entry *e = find(t, key, now);
	return e ? e : slot(t, key, now);
}

/* One failure of e at now; returns the lockout it started, or 0. */
static uint64_t count_fail(struct smtpd_lockout *t, struct entry *e,
                           uint64_t now)
{
	e->touched = now;
	if (now < e->locked_until)
		return 0;   /* already locked: nothing more to count */
	if (!live_fails(t, e, now)) {
		e->nfail = 0;
		e->window_start = now;
	}
	e->nfail++;
	uint64_t d = delay_for(t, e->nfail);
	if (d && now + d > e->ready_at)
		e->ready_at = now + d;
	if (!t->limit || e->nfail < t->limit)
		return 0;
	d = lockout_len(t, e->strikes);
	e->strikes++;
	e->nfail = 0;
	e->locked_until = now + d;
	return d;
}

uint64_t smtpd_lockout_check(struct smtpd_lockout *t, const char *key,
                             uint64_t now)
{
	struct entry *e = find(t, key, now);
	return e && now < e->locked_until ? e->locked_until - now : 0;
}

enum smtpd_lockout_admit smtpd_lockout_begin(struct smtpd_lockout *t,
                                             const char *key, uint64_t now,
                                             uint64_t *left_ms)
{
	struct entry *e = find(t, key, now);
	if (e && now < e->locked_until) {
		if (left_ms)
			*left_ms = e->locked_until - now;
		return SMTPD_LOCKOUT_LOCKED;
	}
	unsigned f = e ? live_fails(t, e, now) : 0;
	/* Checks in flight count against the failures left: five wrong
	 * passwords sent at once must not all be checked. */
	if (t->limit && f + (e ? e->held : 0) >= t->limit)
		return SMTPD_LOCKOUT_BUSY;
	if (!e && !(e = slot(t, key, now)))
		return SMTPD_LOCKOUT_FULL;
	e->held++;
	e->touched = now;
	return f || recent_strike(t, e, now) ? SMTPD_LOCKOUT_FAILED
	                                     : SMTPD_LOCKOUT_CLEAN;
}

uint64_t smtpd_lockout_end(struct smtpd_lockout *t, const char *key,
                           uint64_t now, bool failed)
{
	/* Held entries never expire nor go: it is there. */
	struct entry *e = get(t, key, now);
	if (!e)
		return 0;
	if (e->held)
		e->held--;
	e->touched = now;
	return failed ? count_fail(t, e, now) : 0;
}

int smtpd_lockout_fail(struct smtpd_lockout *t, const char *key,
                       uint64_t now, uint64_t *lock_ms)
{
	struct entry *e = get(t, key, now);
	if (!e)
		return -ENOSPC;
	uint64_t d = count_fail(t, e, now);
	if (lock_ms)
		*lock_ms = d;
	return 0;
}

int smtpd_lockout_hold(struct smtpd_lockout *t, const char *key,
                       uint64_t now)
{
	struct entry *e = get(t, key, now);
	if (!e)
		return -ENOSPC;
	e->held++;
	e->touched = now;
	return (int)(e->held > 1u << 30 ? 1u << 30 : e->held);
}

void smtpd_lockout_release(struct smtpd_lockout *t, const char *key,
                           uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (e && e->held)
		e->held--;
}

uint64_t smtpd_lockout_lane_wait(struct smtpd_lockout *t, const char *key,
                                 uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (!e)
		return 0;
	if (e->running)
		return UINT64_MAX;
	return e->ready_at > now ? e->ready_at - now : 0;
}

void smtpd_lockout_lane_start(struct smtpd_lockout *t, const char *key,
                              uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (e) {
		e->running = true;
		e->touched = now;
	}
}

void smtpd_lockout_lane_done(struct smtpd_lockout *t, const char *key,
                             uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (e)
		e->running = false;
}

void smtpd_lockout_foreach(struct smtpd_lockout *t, uint64_t now,
                           void (*cb)(void *arg,
                                      const struct smtpd_lockout_info *e),
                           void *arg)
{
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used)
			continue;
		if (expired(t, e, now)) {
			e->used = false;
			continue;
		}
		struct smtpd_lockout_info in = {
			.key = e->key,
			.failures = live_fails(t, e, now),
			.strikes = e->strikes,
			.held = e->held,
			.locked_ms = now < e->locked_until ? e->locked_until - now : 0,
			.wait_ms = e->ready_at > now ? e->ready_at - now : 0,
			.running = e->running,
		};
		cb(arg, &in);
	}
}

size_t smtpd_lockout_clear(struct smtpd_lockout *t, const char *key,
                           uint64_t now)
{
	size_t n = 0;
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used || (key && !key_eq(e, key)))
			continue;
		if (expired(t, e, now)) {
			e->used = false;
			continue;
		}
		bool had = now < e->locked_until || live_fails(t, e, now) ||
		           e->strikes || now < e->ready_at;
		n += had;
		e->nfail = 0;
		e->window_start = 0;
		e->locked_until = 0;
		e->strikes = 0;
		e->ready_at = 0;
		if (expired(t, e, now))
			e->used = false;
	}
	return n;
}

size_t smtpd_lockout_count(struct smtpd_lockout *t, uint64_t now)
{
	size_t n = 0;
	for (size_t i = 0; i < t->cap; i++) {
		if (t->e[i].used && expired(t, &t->e[i], now))
			t->e[i].used = false;
		n += t->e[i].used;
	}
	return n;
}
