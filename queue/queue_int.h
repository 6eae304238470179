/*
 * queue/queue_int.h - Pure functions of the queue module, exposed for the
 * unit tests: the id generator, the index record codec and the spool
 * check's verdicts; and what the module's files share (LMDB layout, the
 * read side's handle, the quota glue).
 */
#ifndef RELAY_QUEUE_INT_H
#define RELAY_QUEUE_INT_H

#include "queue.h"
#include "queue_stats.h"

struct queue_idgen {
	uint64_t last_us;   /* time part of the last id */
	uint32_t seq;       /* sequence within last_us (20 bits) */
};

/* Seeds the generator so that it never returns an id <= floor_qid
 * (the largest id already in the spool), or "" for none. */
void queue_idgen_init(struct queue_idgen *g, const char *floor_qid);

/* Writes the next id for the clock reading now_us. Strictly increasing
 * across calls even if the clock stands still or goes backwards. */
void queue_idgen_next(struct queue_idgen *g, uint64_t now_us,
                      char out[QUEUE_ID_SIZE]);

/* Index record codec (formats: queue_codec.c): a version byte, then the
 * fields. encode writes format QUEUE_REC_VERSION to a malloc'd buffer
 * (*out, *outlen) that the caller free()s; it fails with -EINVAL when
 * m->sender or a recipient's addr is NULL, or a bounded field is too long
 * (QUEUE_DEST_MAX, QUEUE_MX_MAX, QUEUE_DKIM_SIG_MAX, QUEUE_EXT_MAX), or an
 * ext blob is not a TLV list. decode reads formats 1 and 2 and returns a
 * new queue_msg (qid taken from the key); -EINVAL for a corrupt or
 * unknown record. encode_v1 writes format 1 (what relayd up to bb1fcad
 * wrote; the format-2 fields are dropped): for the upgrade's tests. */
int queue_msg_encode(const struct queue_msg *m, uint8_t **out, size_t *outlen);
int queue_msg_encode_v1(const struct queue_msg *m, uint8_t **out,
                        size_t *outlen);
int queue_msg_decode(const char *qid, const uint8_t *p, size_t n,
                     struct queue_msg **out);

/* Applies n per-recipient changes to m (queue_update_rcpts' merge, on the
 * writer thread against the stored record): all or nothing. -EINVAL (m
 * unchanged) when an index is out of range, a state unknown or a string
 * too long; -ENOMEM. */
int queue_msg_apply_rcpts(struct queue_msg *m,
                          const struct queue_rcpt_change *ch, size_t n);
/* The checks of queue_msg_apply_rcpts that need no record (state, string
 * bounds): 0 or -EINVAL. */
int queue_rcpt_change_check(const struct queue_rcpt_change *ch, size_t n);

/* What startup recovery does with a name it finds in msg/, given the
 * run's boundary id (queue.c: every id this run gives out is above it). */
enum queue_recover_kind {
	QUEUE_RECOVER_SKIP,      /* "." or ".." */
	QUEUE_RECOVER_KEEP,      /* this run's body being received or pool
	                            file (".QID" above the boundary, or ".p" +
	                            boundary + counter) */
	QUEUE_RECOVER_OLD_BODY,  /* msg/QID below the boundary: removed when
	                            it has no record (an orphan) */
	QUEUE_RECOVER_NEW_BODY,  /* msg/QID of this run: never removed while
	                            this run accepts mail */
	QUEUE_RECOVER_REMOVE,    /* an earlier run's dot file, or a stray */
};
enum queue_recover_kind queue_recover_classify(const char *name,
                                               const char *boundary);

/* ---- shared by queue.c (daemon) and queue_ro.c (readers) ----------- */

/* LMDB layout of spool_dir/index: named databases
 *   "msg"    key = the 16-character qid, value = queue_msg_encode() record
 *   "sched"  key = queue_sched_key(next attempt, qid), empty value; one
 *            entry per ACTIVE message, none for HOLD.
 *   "quota"  the quota counters (queue_quota.h).
 *   "meta"   (format 2) key "format" = one byte, the index format: every
 *            "msg" record is in it. Absent in a format-1 spool (releases
 *            up to bb1fcad); written last by the in-place upgrade.
 *   "stats"  (format 2) the statistics history (queue_stats.h)
 *            key = u8 granularity (QUEUE_STATS_HOUR 'h', QUEUE_STATS_DAY
 *            'd') + 8-byte big-endian bucket start (unix seconds, UTC,
 *            a multiple of 3600 or 86400), so a cursor walks one
 *            granularity in time order and old buckets are pruned from
 *            the front; value = u8 version (1), then TLVs (varint tag,
 *            varint length, payload): tags 1-31 counters (varint count;
 *            ids a release does not know are kept, missing ones read as
 *            0), 32 and 33 a credential's and a recipient domain's
 *            counters (name, then counter TLVs), at most 100 names each
 *            plus "(other)"; other tags are skipped. Readers skip keys of
 *            another length (room for a later per-key layout). The full
 *            format and its bounds: queue_stats.h. */
#define QUEUE_DB_MSG "msg"
#define QUEUE_DB_SCHED "sched"
#define QUEUE_DB_META "meta"
#define QUEUE_DB_STATS "stats"
#define QUEUE_META_FORMAT "format"
#define QUEUE_STATS_KEY_LEN 9
/* msg, sched, quota, meta, stats, and room for three more. */
#define QUEUE_MAXDBS 8
#define QUEUE_SCHED_KEY_LEN (8 + QUEUE_ID_LEN)

/* Record format version (first byte of every "msg" value written now),
 * and the index format this release writes in "meta". */
#define QUEUE_REC_VERSION 2
#define QUEUE_FORMAT 2

/* Writes the schedule key: 8-byte big-endian unix seconds (negative times
 * clamp to 0, so byte order = time order), then the qid. */
void queue_sched_key(int64_t t, const char *qid,
                     uint8_t out[QUEUE_SCHED_KEY_LEN]);

/* Translates an LMDB return code to 0 or -errno at the module edge:
 * MDB_MAP_FULL and a full disk become -ENOSPC, MDB_NOTFOUND -ENOENT,
 * system errors pass through as -errno, every other MDB_* code is -EIO. Callers log
 * mdb_strerror(rc) themselves. */
int queue_mdb_errno(int rc);

/* ---- quotas: the glue between queue.c and queue_quota.c ------------- */

/* Named DB of the quota counters (layout: queue_quota.h). */
#define QUEUE_DB_QUOTA "quota"

struct MDB_env;
struct MDB_txn;
struct queue_quota_req;   /* one charge or refund; queue_quota.c */

/* queue.c: hands r to the writer thread as an OP_QUOTA op, applied in the
 * next ops transaction by queue_quota_apply(); then done_cb(r, status)
 * runs on the loop thread, status 0 or the -errno of a failed
 * transaction (the op's own outcome is in r). 0 or -ESHUTDOWN/-ENOMEM
 * (done_cb will not run; r stays the caller's). */
int queue_push_quota(struct queue *q, struct queue_quota_req *r,
                     queue_op_cb done_cb);

/* queue_quota.c, on the writer thread inside apply_ops' write
 * transaction: applies r to the "quota" DB. Returns an LMDB code: not 0
 * only when the transaction must fail. */
int queue_quota_apply(struct queue_quota_req *r, struct MDB_txn *txn,
                      unsigned dbi);

/* A read transaction on q's index, from any thread (queue_quota_peek on
 * the loop thread): begin returns an LMDB code (0: *txn is open); end
 * aborts it. Between the two the writer cannot reopen the environment
 * (queue.c: env_reopen after a failed write), so keep it short and never
 * across a callback. */
int queue_env_read_begin(struct queue *q, struct MDB_txn **txn);
void queue_env_read_end(struct queue *q, struct MDB_txn *txn);
/* The quota DB handle, valid inside such a transaction. */
unsigned queue_dbi_quota(struct queue *q);

/* ---- the read side: queue_ro.c and queue_check.c ------------------- */

struct queue_ro {
	struct MDB_env *env;
	unsigned dbi_msg, dbi_sched;
	unsigned format;        /* the index format ("meta"; 1 when absent) */
	char *spool_dir;
};

/* Begins a read transaction (adopting a map the daemon grew). An LMDB
 * code. */
int queue_ro_begin(struct queue_ro *r, struct MDB_txn **txn);

/* ---- the integrity check's pure parts (queue_check.c) --------------- */

/* What a name in msg/ is. */
enum queue_check_name {
	QUEUE_NAME_BODY,    /* a queue id: a committed body (or an orphan) */
	QUEUE_NAME_PART,    /* ".QID" or ".p" + 16 hex digits: relayd's name
	                       for a body being received, or made ahead of
	                       need (queue.c's pool) */
	QUEUE_NAME_TEMP,    /* another dot file (".probe123"): a temp file */
	QUEUE_NAME_STRAY,   /* anything else */
};
enum queue_check_name queue_check_name(const char *name);

/* One index record and its body, as the check saw them. */
struct queue_check_rec {
	bool decoded;           /* false: the record cannot be decoded */
	bool active;            /* QUEUE_MSG_ACTIVE */
	int64_t due;            /* queue_msg_due(): -1 when nothing is left */
	bool sched_ok;          /* its "sched" entry at `due` exists */
	uint64_t size;          /* the body size the record gives */
	enum { QUEUE_BODY_FILE, QUEUE_BODY_MISSING, QUEUE_BODY_OTHER } body;
	uint64_t body_size;     /* QUEUE_BODY_FILE: its size */
};

/* The problems of a record: a bit (1u << QUEUE_CHK_*) per problem, 0 when
 * it is consistent. */
unsigned queue_check_rec_eval(const struct queue_check_rec *r);

/* Whether a "sched" entry at time `at` is the one queue_msg_due() gives
 * the record rec (NULL: there is no record): QUEUE_STALE_OK or why not. */
enum queue_check_stale queue_check_sched_eval(int64_t at,
                                              const struct queue_check_rec *rec);

#endif
