/*
 * smtpd/smtpd_lockout.h - The failed-AUTH table (issue 8 §3). The AUTH
 * shell (smtpd_auth.c) keeps two of them: one keyed by client (the
 * address; IPv6 by its /64) and one keyed by credential name as typed
 * (known or not). Pure: the caller passes the time; one thread.
 *
 * An entry counts failures within a window. A table with a limit locks a
 * key at limit failures for a while, twice as long on each repeat (up to
 * SMTPD_LOCKOUT_MAX_MS) until the key has been clean for as long as its
 * last lockout lasted or for the window, whichever is longer: the client
 * table. A table with limit 0 never
 * locks: the name table, where failures only slow the name's "lane" down
 * (below), so nobody can lock a user out by guessing her password.
 *
 * An entry also counts what it holds: verifications in flight or waiting
 * (client table; admitted only while failures + held stay below the
 * limit, so a client never runs more checks than it has failures left),
 * or waiters in the name's lane (name table). Per name, the lane runs one
 * verification at a time, and after each failure of the name from anyone
 * the next may start only a delay later: delay_ms after the first failure
 * in the window, doubling with each further one, up to delay_max_ms.
 *
 * Bounded: at most cap entries; entries that lock, count or hold nothing
 * expire. A new key takes a free or expired slot, else evicts an entry
 * that is neither locked nor holding anything (the fewest failures and
 * lockouts first, then the least recently touched). When every entry is
 * locked or holding, there is no room: the caller fails closed.
 */
#ifndef RELAY_SMTPD_LOCKOUT_H
#define RELAY_SMTPD_LOCKOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTPD_LOCKOUT_MAX_MS (24ull * 3600 * 1000)
#define SMTPD_LOCKOUT_KEY_MAX 96   /* longer keys are cut */

struct smtpd_lockout;

/* A table of at most cap entries (cap >= 1). NULL on ENOMEM. */
struct smtpd_lockout *smtpd_lockout_new(size_t cap);
void smtpd_lockout_free(struct smtpd_lockout *t);   /* NULL: no-op */

/* limit failures within window_ms lock a key for lockout_ms (doubled per
 * repeat); limit 0: never locks. Applies to entries already in the table
 * too (SIGHUP). */
void smtpd_lockout_set(struct smtpd_lockout *t, unsigned limit,
                       uint64_t window_ms, uint64_t lockout_ms);
/* The lane delay after the first failure of a key in its window, doubled
 * per further failure, at most delay_max_ms. Default 0: no delay. */
void smtpd_lockout_set_delay(struct smtpd_lockout *t, uint64_t delay_ms,
                             uint64_t delay_max_ms);

/* Milliseconds left of key's lockout at now, or 0 when not locked. */
uint64_t smtpd_lockout_check(struct smtpd_lockout *t, const char *key,
                             uint64_t now);

/* ---- a client's verifications ------------------------------------------- */

enum smtpd_lockout_admit {
	SMTPD_LOCKOUT_CLEAN,    /* admitted; no failures of its own */
	SMTPD_LOCKOUT_FAILED,   /* admitted; it failed before (in the window,
	                         * or was locked out and has not been clean
	                         * for as long as that lockout lasted) */
	SMTPD_LOCKOUT_LOCKED,   /* locked out: not admitted */
	SMTPD_LOCKOUT_BUSY,     /* failures + held reach the limit */
	SMTPD_LOCKOUT_FULL,     /* not in the table and no room: untracked */
};
extern const char *const smtpd_lockout_admit_names[];

/* Admits one verification for key: when CLEAN or FAILED, the entry holds
 * it until smtpd_lockout_end. LOCKED sets *left_ms (may be NULL). */
enum smtpd_lockout_admit smtpd_lockout_begin(struct smtpd_lockout *t,
                                             const char *key, uint64_t now,
                                             uint64_t *left_ms);

/* An admitted verification ended; failed: it counts as a failure. Returns
 * the length of the lockout that failure started (ms), or 0. */
uint64_t smtpd_lockout_end(struct smtpd_lockout *t, const char *key,
                           uint64_t now, bool failed);

/* Records one failure of key at now (an untracked client's, or a name's).
 * 0 with *lock_ms (may be NULL) the lockout it started (0: none), or
 * -ENOSPC when key is not in the table and there is no room for it. */
int smtpd_lockout_fail(struct smtpd_lockout *t, const char *key,
                       uint64_t now, uint64_t *lock_ms);

/* ---- a name's lane ------------------------------------------------------- */

/* One more waiter in key's lane. Returns how many the lane holds now, or
 * -ENOSPC (no room in the table). */
int smtpd_lockout_hold(struct smtpd_lockout *t, const char *key,
                       uint64_t now);
/* One waiter less (it ran, or gave up). */
void smtpd_lockout_release(struct smtpd_lockout *t, const char *key,
                           uint64_t now);
/* Milliseconds until key's lane may start a verification: 0 now,
 * UINT64_MAX while one runs. */
uint64_t smtpd_lockout_lane_wait(struct smtpd_lockout *t, const char *key,
                                 uint64_t now);
/* The lane's verification started (it runs alone), or ended. */
void smtpd_lockout_lane_start(struct smtpd_lockout *t, const char *key,
                              uint64_t now);
void smtpd_lockout_lane_done(struct smtpd_lockout *t, const char *key,
                             uint64_t now);

/* ---- the operator (relayctl lockout list|clear) -------------------------- */

struct smtpd_lockout_info {
	const char *key;
	unsigned failures;     /* in the current window */
	unsigned strikes;      /* lockouts remembered: the next lasts 2^strikes */
	unsigned held;
	uint64_t locked_ms;    /* left; 0: not locked */
	uint64_t wait_ms;      /* until the lane may start one (0: now) */
	bool running;          /* the lane's verification runs */
};

/* Calls cb for every live entry (expired ones are dropped first), in
 * table order. */
void smtpd_lockout_foreach(struct smtpd_lockout *t, uint64_t now,
                           void (*cb)(void *arg,
                                      const struct smtpd_lockout_info *e),
                           void *arg);

/* Forgets key's failures, lockout, doubling and lane delay (NULL: every
 * key's); what it holds stays counted. Returns the entries changed. */
size_t smtpd_lockout_clear(struct smtpd_lockout *t, const char *key,
                           uint64_t now);

/* Entries held (expired ones are dropped first); for tests. */
size_t smtpd_lockout_count(struct smtpd_lockout *t, uint64_t now);

#endif
