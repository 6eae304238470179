/*
 * queue/queue_stats.h - Statistics history (issue 11 §2): hourly and
 * daily buckets of counters in the "stats" DB of the spool's LMDB index,
 * so that `relayctl stats --by hour|day|credential|domain` and `relayctl
 * status` see them across restarts, with relayd running or stopped.
 *
 * ---- What is counted ----------------------------------------------------
 *
 * Counter ids (QUEUE_STATS_*), each an unsigned 64-bit count (adds
 * saturate): messages accepted (250 after the data), refusals (4xx/5xx
 * replies of smtpd, the connect-time ones included, with one counter per
 * reason class as in /metrics), recipients sent, deferrals (one per
 * recipient and attempt), recipients bounced, DSNs queued. A bucket also
 * holds two bounded dimensions: by credential (the AUTH name, lowercased:
 * accepted and refused) and by recipient domain (lowercased: sent,
 * deferred, bounced). At most QUEUE_STATS_DIM_MAX names each; what comes
 * after them is summed under QUEUE_STATS_OTHER.
 *
 * ---- How it gets there ----------------------------------------------------
 *
 * The loop thread adds to an in-memory bucket (queue_stats_count: no I/O,
 * no allocation after the first name of each dimension) and hands it to
 * the writer thread as an OP_STATS op on queue_stats_flush() (relayd: once
 * a minute), when the hour changes, and at queue_close(). The writer
 * merges it into the hour and the day bucket in a nested transaction of
 * its ops batch: a failed stats write is logged and its counts dropped,
 * and never fails the delivery changes it shares the batch with. It
 * prunes hour buckets older than QUEUE_STATS_HOURS and day buckets older
 * than QUEUE_STATS_DAYS.
 *
 * ---- Value format (the codec below; key layout in queue_int.h) ----------
 *
 * u8 version (1), then TLVs: varint tag, varint length, `length` bytes.
 *   tag 1..31  a counter (the id): the payload is one varint, the count.
 *   tag 32     a credential entry, tag 33 a recipient domain entry: the
 *              payload is varint name length (1..QUEUE_STATS_NAME_MAX),
 *              the name (no control characters), then counter TLVs as
 *              above (tags >= 32 inside an entry are skipped).
 *   other tags skipped by readers (and not kept when a bucket is written
 *              again).
 * Varints are LEB128, at most 10 bytes, no value above 2^64-1. Counters
 * of ids this release has no name for are kept and merged like the
 * others. A decoder refuses (-EINVAL) a value longer than
 * QUEUE_STATS_VALUE_MAX, a length running past the end, a counter given
 * twice, a name given twice in one dimension, or more than
 * QUEUE_STATS_DIM_MAX + 1 names in one.
 */
#ifndef RELAY_QUEUE_STATS_H
#define RELAY_QUEUE_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"

enum queue_stats_id {
	QUEUE_STATS_ACCEPTED = 1,   /* messages accepted (queued) */
	QUEUE_STATS_REJECTED = 2,   /* SMTP refusals, all classes */
	QUEUE_STATS_SENT = 3,       /* recipients delivered */
	QUEUE_STATS_DEFERRED = 4,   /* recipient attempts deferred */
	QUEUE_STATS_BOUNCED = 5,    /* recipients bounced */
	QUEUE_STATS_DSN = 6,        /* delivery status notifications queued */
	/* Refusals by reason class (smtpd/metrics.c's classes). */
	QUEUE_STATS_REJ_POLICY = 8,
	QUEUE_STATS_REJ_AUTH = 9,
	QUEUE_STATS_REJ_QUOTA = 10,
	QUEUE_STATS_REJ_RATE = 11,
	QUEUE_STATS_REJ_SIZE = 12,
	QUEUE_STATS_REJ_TIMEOUT = 13,
	QUEUE_STATS_REJ_TEMPORARY = 14,
	QUEUE_STATS_REJ_PROTOCOL = 15,
};
/* Ids are 1..QUEUE_STATS_NIDS-1. */
#define QUEUE_STATS_NIDS 32
#define QUEUE_STATS_REJ_FIRST QUEUE_STATS_REJ_POLICY
#define QUEUE_STATS_REJ_LAST QUEUE_STATS_REJ_PROTOCOL
/* "accepted", ..., "rejected_policy", ...; NULL for ids without a name. */
extern const char *const queue_stats_names[QUEUE_STATS_NIDS];

enum queue_stats_dim {
	QUEUE_STATS_CRED = 0,       /* by credential */
	QUEUE_STATS_DOMAIN = 1,     /* by recipient domain */
	QUEUE_STATS_NDIMS
};
extern const char *const queue_stats_dim_names[QUEUE_STATS_NDIMS];

#define QUEUE_STATS_DIM_MAX 100         /* names per dimension and bucket */
#define QUEUE_STATS_NAME_MAX 255        /* bytes of a name */
#define QUEUE_STATS_OTHER "(other)"     /* the rest of a dimension */
#define QUEUE_STATS_VALUE_MAX (256 * 1024)
#define QUEUE_STATS_VERSION 1
/* Bucket granularities: the first byte of a "stats" key (queue_int.h). */
#define QUEUE_STATS_HOUR 'h'
#define QUEUE_STATS_DAY 'd'
#define QUEUE_STATS_HOURS 48            /* hour buckets kept */
#define QUEUE_STATS_DAYS 60             /* day buckets kept */

struct queue_stats_entry {
	char name[QUEUE_STATS_NAME_MAX + 1];
	uint64_t c[QUEUE_STATS_NIDS];
};

/* One bucket: the totals and the two dimensions (entries in the order
 * first seen; at most QUEUE_STATS_DIM_MAX named ones plus
 * QUEUE_STATS_OTHER). Zero it (or queue_stats_bucket_reset) to start. */
struct queue_stats_bucket {
	uint64_t c[QUEUE_STATS_NIDS];
	struct queue_stats_entry *e[QUEUE_STATS_NDIMS];   /* malloc'd */
	size_t n[QUEUE_STATS_NDIMS];
};

/* Frees the entries and zeroes b (it may be used again). */
void queue_stats_bucket_reset(struct queue_stats_bucket *b);
/* True when every counter is 0 and no entry exists. */
bool queue_stats_bucket_empty(const struct queue_stats_bucket *b);

/* Adds n to counter id of the totals, and of the entries named cred
 * (QUEUE_STATS_CRED) and domain (QUEUE_STATS_DOMAIN) when not NULL or "".
 * Names are ASCII-lowercased; one that is too long or holds a control
 * character, or that comes when the dimension is full, counts under
 * QUEUE_STATS_OTHER. 0, -EINVAL (id out of range: nothing counted) or
 * -ENOMEM (the totals are counted, the entry is not). */
int queue_stats_bucket_add(struct queue_stats_bucket *b, unsigned id,
                           const char *cred, const char *domain,
                           uint64_t n);

/* Adds every counter and entry of src to dst (entries by name, the same
 * bound). 0 or -ENOMEM (dst then holds part of src). */
int queue_stats_bucket_merge(struct queue_stats_bucket *dst,
                             const struct queue_stats_bucket *src);

/* Encodes b (format above) to a malloc'd buffer the caller free()s.
 * 0, -ENOMEM, or -EINVAL when b breaks a bound (a name too long or
 * empty, too many entries). */
int queue_stats_encode(const struct queue_stats_bucket *b, uint8_t **out,
                       size_t *outlen);
/* Decodes a value into *b (which it resets first; on error b is left
 * empty). 0, -EINVAL (malformed, see above) or -ENOMEM. */
int queue_stats_decode(const uint8_t *p, size_t n,
                       struct queue_stats_bucket *b);

/* The domain of a recipient address (after its last '@'), or "" when it
 * has none. */
const char *queue_stats_domain(const char *addr);

/* The start (unix seconds, UTC) of the hour and of the day holding t. */
int64_t queue_stats_hour(int64_t t);
int64_t queue_stats_day(int64_t t);

/* ---- the daemon: counting on the loop thread (queue.c) ----------------- */

/* Counts n for id at time now (unix seconds) with the credential and the
 * recipient domain (either may be NULL): memory only. When now falls in
 * another hour than the counts held, those are flushed first. Loop
 * thread; a no-op once the queue is closing. */
void queue_stats_count(struct queue *q, int64_t now, unsigned id,
                       const char *cred, const char *domain, uint64_t n);
/* Hands the counts held to the writer (nothing when there are none).
 * 0 or -errno (the counts are dropped, with a log line). Loop thread. */
int queue_stats_flush(struct queue *q);
/* The counts not handed to the writer yet, and the hour they belong to
 * (-1 when none): for the control socket's "stats" reply. Loop thread. */
const struct queue_stats_bucket *queue_stats_unflushed(const struct queue *q,
                                                       int64_t *hour);

/* ---- readers (relayctl) -------------------------------------------------- */

/* Calls cb for each bucket of granularity gran (QUEUE_STATS_HOUR or
 * QUEUE_STATS_DAY, queue_int.h's 'h' / 'd') whose start is >= since, in
 * time order, inside one read transaction. A bucket that does not decode
 * is passed as NULL (cb may warn). cb returns nonzero to stop. 0 or
 * -errno; a spool without a "stats" DB has no buckets. */
int queue_ro_stats(struct queue_ro *r, char gran, int64_t since,
                   int (*cb)(void *arg, int64_t start,
                             const struct queue_stats_bucket *b),
                   void *arg);

#endif
