/*
 * queue/queue_quota.h - Per-credential quotas (messages per hour and per
 * day, issue 4 §3) behind a small table of functions, so that a store
 * shared by several relayd nodes (Redis, DESIGN.md "Scale beyond one
 * machine") can replace the default one: counters in the spool's LMDB
 * index, which survive restarts.
 *
 * ---- What is counted --------------------------------------------------
 *
 * Messages: one accepted message (one 250 after DATA/BDAT) is 1, whatever
 * its number of recipients. That is what operators mean by "messages per
 * hour" (Postfix's anvil and policy daemons count messages, smtp2go's plan
 * quotas count emails), what a customer can predict, and it lets MAIL
 * refuse a transaction whole instead of cutting its recipient list part
 * way. The fan-out of one message is bounded separately (recipients per
 * message). The store itself does not care: a charge of n units is
 * accepted whole or refused whole, so a wiring that wants recipient
 * counting passes n = number of recipients.
 *
 * ---- Periods ----------------------------------------------------------
 *
 * Fixed UTC periods: hour number now/3600 and day number now/86400 (unix
 * seconds, passed in by the caller, so tests inject time). A fixed period
 * is what "per hour" means on an invoice; near a boundary a client may
 * send up to the hourly limit on each side of it (smooth bursts are the
 * rate limiter's job, smtpd_policy.h).
 *
 * ---- How the SMTP session uses it --------------------------------------
 *
 *   MAIL:  peek (a short read transaction on the loop thread, never waits
 *          for the writer); queue_quota_exceeded(usage, limits, 1) ->
 *          450 4.7.1.
 *   after the body, before queue_commit: charge(key, now, 1, limits, cb).
 *          It runs on the queue's writer thread, checks and increments in
 *          one write transaction (so concurrent sessions of one credential
 *          never overshoot), and calls cb on the loop thread: 0 -> commit
 *          the message; -EDQUOT -> 450 4.7.1 (nothing charged); another
 *          -errno -> 451 4.3.0 (the wiring may also choose to let mail
 *          through when the store is down: fail open or closed is policy).
 *   commit failed after a charge: refund(key, same now, 1) gives it back.
 *
 * The key is the credential's name (ASCII-lowercased by the LMDB store,
 * as names are case-insensitive); a wiring may also key by owner.
 *
 * ---- The LMDB store ---------------------------------------------------
 *
 * Named DB "quota" in spool_dir/index: key = 'H' or 'D', the period
 * number as 8 bytes big-endian, then the key text; value = a version byte
 * (1) and the count as 4 bytes big-endian. Period-first keys keep each
 * kind in time order, so pruning is a range walk from the start: every
 * charge's transaction deletes (at most QUEUE_QUOTA_PRUNE_MAX) entries of
 * periods before the previous one. Charges and refunds are ops of the
 * writer thread (queue.c, OP_QUOTA), batched with delivery changes into
 * one synchronous write transaction: a charge reported is durable.
 */
#ifndef RELAY_QUEUE_QUOTA_H
#define RELAY_QUEUE_QUOTA_H

#include <stdbool.h>
#include <stdint.h>

#include "queue.h"

#define QUEUE_QUOTA_KEY_MAX 255     /* bytes of a key */
#define QUEUE_QUOTA_PRUNE_MAX 1024  /* deletions per kind per transaction */

struct queue_quota_limits {
	uint32_t hourly;   /* 0: no limit */
	uint32_t daily;    /* 0: no limit */
};

/* Units counted in the hour and the day that contain `now`. */
struct queue_quota_usage {
	uint32_t hour;
	uint32_t day;
};

/* On the loop thread, exactly once, later (never from inside the call
 * that asked). status: 0 (charged, or refunded), -EDQUOT (the charge
 * would exceed a limit: nothing charged), -ENOSPC or another -errno (the
 * store failed: nothing charged). u: the counts after the charge, or as
 * they stand when refused; zeros on a store error. */
typedef void (*queue_quota_cb)(void *arg, int status,
                               const struct queue_quota_usage *u);

/* The interface a store implements. Every function is called on the loop
 * thread and must not block it. Keys are 1..QUEUE_QUOTA_KEY_MAX bytes. */
struct queue_quota_ops {
	const char *name;   /* "lmdb": for log lines */
	/* The counts for key at now, from what is already stored (a fast
	 * local read; a remote store may answer from a cache). 0 or -errno. */
	int (*peek)(void *ctx, const char *key, int64_t now,
	            struct queue_quota_usage *out);
	/* Adds n to key's hour and day counts at now if neither would exceed
	 * its limit, else nothing. cb must not be NULL. Returns 0 (cb will
	 * run) or -errno (-EINVAL: bad key, n = 0, no cb or lim; -ESHUTDOWN,
	 * -ENOMEM: cb will not run). */
	int (*charge)(void *ctx, const char *key, int64_t now, uint32_t n,
	              const struct queue_quota_limits *lim, queue_quota_cb cb,
	              void *arg);
	/* Takes back n units charged at `now` (pass the charge's now: the
	 * unit goes back to that hour and day); counts never go below 0.
	 * cb may be NULL. Same returns as charge. */
	int (*refund)(void *ctx, const char *key, int64_t now, uint32_t n,
	              queue_quota_cb cb, void *arg);
};

struct queue_quota_store {
	const struct queue_quota_ops *ops;
	void *ctx;
};

/* The default store: the LMDB index of q (open: queue_open). The store
 * lives as long as q; stop using it before queue_close. */
void queue_quota_store_lmdb(struct queue *q, struct queue_quota_store *out);

/* The same operations directly on q (what the store's functions call). */
int queue_quota_peek(struct queue *q, const char *key, int64_t now,
                     struct queue_quota_usage *out);
int queue_quota_charge(struct queue *q, const char *key, int64_t now,
                       uint32_t n, const struct queue_quota_limits *lim,
                       queue_quota_cb cb, void *arg);
int queue_quota_refund(struct queue *q, const char *key, int64_t now,
                       uint32_t n, queue_quota_cb cb, void *arg);

/* Counters stored in the "quota" DB (a short read transaction; metrics
 * and tests). 0 or -errno. */
int queue_quota_entries(struct queue *q, uint64_t *entries);

/* Would charging n more exceed a limit? (Pure; limits of 0 never do.) */
bool queue_quota_exceeded(const struct queue_quota_usage *u,
                          const struct queue_quota_limits *lim, uint32_t n);

/* Period numbers of a time (UTC; negative times count as 0). */
int64_t queue_quota_hour(int64_t now);
int64_t queue_quota_day(int64_t now);

#endif
