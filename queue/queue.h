/*
 * queue/queue.h - The spool: message bodies as files, envelopes and
 * per-recipient state in an LMDB index, one writer thread that makes
 * accepted messages durable in batches (group commit), and startup
 * recovery. The only module that includes <lmdb.h>.
 *
 * Spool layout under spool_dir:
 *   msg/QID      committed bodies (the stored message, CRLF lines)
 *   msg/.NAME    a body being received where the file system has no
 *                O_TMPFILE, or in fsync mode (removed at startup)
 *   tmp/         unused; anything in it is removed at startup
 * In syncfs mode a body being received is an unnamed O_TMPFILE file in
 * msg/ that the writer links as msg/QID before the batch's syncfs; a crash
 * leaves nothing of it behind.
 *   index/       LMDB environment (data.mdb, lock.mdb)
 *   smarthost.size  not the queue's: the smarthost's SIZE as deliver/
 *                last saw it (a cache; deliver.h)
 *
 * Durability contract (DESIGN.md): queue_commit()'s callback reports 0 only
 * after the body is on stable storage under msg/, the directory entry is
 * durable, and the envelope record is committed to LMDB (synchronously).
 * Then, and only then, smtpd answers 250.
 */
#ifndef RELAY_QUEUE_H
#define RELAY_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Queue ids: 16 characters of Crockford base32 (0-9, A-Z without I L O U):
 * 12 for the microseconds since the epoch, 4 for a sequence number. They
 * sort by time as strings, are unique per spool (the generator never goes
 * backwards, also across restarts) and are safe as file names. */
#define QUEUE_ID_LEN 16
#define QUEUE_ID_SIZE (QUEUE_ID_LEN + 1)

/* Recipient states. */
enum queue_rcpt_state {
	QUEUE_RCPT_PENDING = 0,
	QUEUE_RCPT_DEFERRED = 1,
	QUEUE_RCPT_SENT = 2,
	QUEUE_RCPT_BOUNCED = 3,
};
extern const char *const queue_rcpt_state_names[];

/* Message states. */
enum queue_msg_state {
	QUEUE_MSG_ACTIVE = 0,  /* waiting for delivery */
	QUEUE_MSG_HOLD = 1,    /* delivery = hold, or held by the operator */
};
extern const char *const queue_msg_state_names[];

/* Message flags. */
#define QUEUE_F_SMTPUTF8  0x01  /* MAIL FROM had SMTPUTF8 */
#define QUEUE_F_8BITMIME  0x02  /* BODY=8BITMIME */
#define QUEUE_F_RET_FULL  0x04  /* RET=FULL (RFC 3461) */
#define QUEUE_F_RET_HDRS  0x08  /* RET=HDRS */
#define QUEUE_F_BINARYMIME 0x10 /* BODY=BINARYMIME (RFC 3030) */
#define QUEUE_F_WARNED    0x20  /* the "delayed" DSN has been sent */
/* The stored body holds no octet >= 0x80: set by queue_commit() from what
 * queue_body_write() saw (callers' values are ignored), so the client can
 * send a message declared BODY=8BITMIME to a server without 8BITMIME when
 * its content is in fact 7-bit (RFC 6152 §3). A flag bit, not a new field:
 * records written before it existed lack it, which reads as "may hold
 * 8-bit", the safe answer, so no record version bump is needed. */
#define QUEUE_F_7BIT      0x40

/* RFC 3461 NOTIFY bits; 0 means NOTIFY was not given. */
#define QUEUE_NOTIFY_NEVER   0x01
#define QUEUE_NOTIFY_SUCCESS 0x02
#define QUEUE_NOTIFY_FAILURE 0x04
#define QUEUE_NOTIFY_DELAY   0x08

struct queue_rcpt {
	char *addr;             /* forward-path without <> */
	char *orcpt;            /* ORCPT as received ("rfc822;x@y", xtext), or NULL */
	uint8_t notify;         /* QUEUE_NOTIFY_* */
	uint8_t state;          /* enum queue_rcpt_state */
	uint32_t attempts;
	int64_t next_attempt;   /* unix seconds; 0 = none scheduled */
	char *last_reply;       /* last remote reply or error, or NULL */
	/* Index format 2 (queue_codec.c); NULL / 0 in records upgraded from
	 * format 1 until delivery sets them. */
	char *dest;             /* destination key ("smarthost:HOST:PORT",
	                           "mx:HOST,HOST"), at most QUEUE_DEST_MAX
	                           bytes, or NULL: not routed yet */
	char *mx;               /* the host last tried (relayctl show, DSN
	                           Remote-MTA), at most QUEUE_MX_MAX, or NULL */
	int64_t last_try;       /* unix seconds of the last attempt; 0: none */
	/* Fields of later releases this one does not know (a well-formed
	 * TLV list, queue_codec.c), kept verbatim when the record is
	 * written again; NULL/0 when none. */
	uint8_t *ext;
	size_t extlen;
};

/* Bounds of the format-2 fields (queue_msg_encode refuses longer ones,
 * decode treats them as corrupt). A destination key names an MX set:
 * up to about ten host names of at most 255 octets. */
#define QUEUE_DEST_MAX 4096
#define QUEUE_MX_MAX 512
/* The stored DKIM-Signature header block (issue 10): two signatures
 * (RSA-4096 and Ed25519, folded) take under 2 KiB. */
#define QUEUE_DKIM_SIG_MAX 16384
/* The unknown-field tails (message and recipient). */
#define QUEUE_EXT_MAX 65536

struct queue_msg {
	char qid[QUEUE_ID_SIZE];
	int64_t arrival;        /* unix seconds */
	uint16_t arrival_ms;    /* milliseconds within that second (0-999);
	                           0 in records upgraded from format 1 */
	uint64_t size;          /* bytes of the stored body file */
	uint8_t state;          /* enum queue_msg_state */
	uint8_t flags;          /* QUEUE_F_* */
	char *sender;           /* reverse-path without <>; "" for the null sender */
	char *envid;            /* ENVID (xtext) or NULL */
	/* The DKIM-Signature header block stored at acceptance (CRLF
	 * lines), sent before the body on every attempt so retries carry
	 * identical bytes; NULL when unsigned. At most QUEUE_DKIM_SIG_MAX. */
	char *dkim_sig;
	size_t nrcpt;
	struct queue_rcpt *rcpt;
	uint8_t *ext;           /* unknown fields kept verbatim (queue_rcpt) */
	size_t extlen;
};

/* Frees every string and the recipient array, and m itself. NULL: no-op. */
void queue_msg_free(struct queue_msg *m);

/* A deep copy, or NULL when out of memory. */
struct queue_msg *queue_msg_dup(const struct queue_msg *m);

/* When the message is next due: the earliest next_attempt among the
 * recipients still PENDING or DEFERRED (a next_attempt of 0 counts as the
 * arrival time), or -1 when none is left (all sent or bounced). The
 * "sched" entry of an ACTIVE message is keyed by this time; a HOLD message
 * has none. Every writer of the index keeps to this rule, and startup
 * recovery restores it. */
int64_t queue_msg_due(const struct queue_msg *m);

/* The control socket relayd listens on: spool_dir/control (unix stream,
 * mode 0600). Protocol: deliver/deliver_ctl.h. */
#define QUEUE_CONTROL_NAME "control"

/* ---- daemon side ---------------------------------------------------- */

struct queue;

enum queue_sync { QUEUE_SYNC_SYNCFS, QUEUE_SYNC_FSYNC };

struct queue_opts {
	const char *spool_dir;
	uint64_t map_size;          /* LMDB map size in bytes */
	uint64_t commit_delay_us;   /* longest a batch gathers concurrent
	                               commits (0: none); see gather() */
	enum queue_sync sync;       /* how the writer makes bodies durable:
	                               one syncfs(2) per batch, or fdatasync(2)
	                               per body plus one fsync of msg/ */
	uint64_t min_free;          /* queue_min_free: bytes the spool's file
	                               system must keep free for MAIL to be
	                               accepted (queue_space_check); 0: off */
	bool recover_async;         /* startup recovery on the writer thread
	                               after queue_open() returns (relayd), so
	                               listening never waits for a big spool;
	                               false: queue_open() does it all first */
	const char *recover_gate;   /* tests only (recover_async): recovery
	                               waits before its first step until this
	                               path exists (at most 120 s); NULL: none */
};

struct queue_stats {
	uint64_t committed;   /* messages made durable */
	uint64_t batches;     /* writer batches (LMDB write transactions) */
	uint64_t syncs;       /* fsync/fdatasync/syncfs calls, LMDB's included */
	uint64_t failed;      /* commits that failed */
	uint64_t busy_us;     /* time the writer spent making batches durable */
	uint64_t gather_us;   /* time it spent waiting for a batch to fill */
};

/* Creates the spool directories if needed, opens the index, starts startup
 * recovery (logs one line per repaired item: index records without a body
 * are dropped, bodies without an index record and every tmp/ file are
 * removed; at the end "recovery: N messages in queue, M repaired"), and
 * starts the writer thread, which reports to `loop` through a uv_async_t.
 * With o->recover_async, recovery runs on the writer thread, in steps
 * between commits: new mail is accepted meanwhile and never mistaken for
 * an orphan (queue.c explains why). Returns 0 or -errno (with a log line
 * saying why). */
int queue_open(uv_loop_t *loop, const struct queue_opts *o, struct queue **out);
/* LMDB's version, as linked ("LMDB 0.9.24: ..."), for --version. */
const char *queue_library_version(void);

/* True once recovery has made the index consistent (at once without
 * recover_async): records have their bodies and the schedule agrees with
 * them. Delivery must not start before; the notify callback runs when it
 * turns true. Loop thread. */
bool queue_recovered(const struct queue *q);

/* Waits for the writer to finish queued commits (their callbacks run),
 * stops it, and closes the async handle; done_cb runs from the handle's
 * close callback, after which the queue memory is gone. */
void queue_close(struct queue *q, void (*done_cb)(void *arg), void *arg);

void queue_get_stats(const struct queue *q, struct queue_stats *st);

/* Changes commit_delay_us (SIGHUP). */
void queue_set_commit_delay(struct queue *q, uint64_t us);

/* Changes min_free (SIGHUP); the free space is read again at once. */
void queue_set_min_free(struct queue *q, uint64_t bytes);

/* At MAIL (loop thread): -ENOSPC (452 4.3.1) when the spool's file system
 * has less than min_free + need bytes available (need: the declared SIZE,
 * or 0), else 0; always 0 when min_free is 0. Costs a mutex, no system
 * call: the free space is read at most a second apart by the queue's
 * opener thread (statvfs can wait on a network file system), so a disk
 * filling faster than that is still caught by the writes themselves
 * (-ENOSPC at the end of DATA). */
int queue_space_check(struct queue *q, uint64_t need);

/* Next queue id (loop thread only). */
void queue_new_id(struct queue *q, char out[QUEUE_ID_SIZE]);

/* A body being received (unnamed, or msg/.NAME), written with buffered write(2) on the
 * caller's thread (page cache only; no fsync here). */
struct queue_body;

int queue_body_open(struct queue *q, const char *qid, struct queue_body **out);
/* Returns 0, -ENOSPC or -EIO (or another -errno). After an error the body
 * must be aborted. */
int queue_body_write(struct queue_body *b, const void *p, size_t n);
/* Writes out what is buffered and returns a descriptor the body can be
 * read from with pread(2) (DKIM signing reads it on the thread pool
 * before the commit, while nothing more is written), or the sticky write
 * error. The body keeps the descriptor. */
int queue_body_read_fd(struct queue_body *b);
/* Bytes written so far. */
uint64_t queue_body_size(const struct queue_body *b);
/* Whether any byte written so far is >= 0x80. */
bool queue_body_8bit(const struct queue_body *b);
/* Closes and unlinks the temp file and frees b. NULL: no-op. */
void queue_body_abort(struct queue_body *b);

/* Called on the loop thread when the commit is done: status 0 (durable:
 * answer 250), -ENOSPC (452 4.3.1) or another -errno (451 4.3.0). On
 * failure nothing of the message is left in the spool. */
typedef void (*queue_commit_cb)(void *arg, int status);

/* Hands the body (ownership passes to the queue, whatever the result) and
 * a copy of the envelope (m->qid must equal the body's qid; m->size and
 * the QUEUE_F_7BIT flag are taken from the body) to the writer thread. The callback always runs,
 * exactly once, on the loop thread, later (never from inside this call).
 * Returns 0 or -errno (then the callback will not run and the body has
 * been aborted). */
int queue_commit(struct queue *q, struct queue_body *b,
                 const struct queue_msg *m, queue_commit_cb cb, void *arg);

/* ---- delivery: changes and reads of committed messages (loop thread) */

/* Called on the loop thread when a change is durable: 0, -ENOENT (the
 * message is gone) or -errno (nothing changed). */
typedef void (*queue_op_cb)(void *arg, int status);

/* Replaces the message's record with m (same qid) and moves its "sched"
 * entry to queue_msg_due(m) (none when HOLD or nothing is left), in one
 * synchronous write transaction on the writer thread, batched with other
 * changes. cb may be NULL. Returns 0 (cb will run) or -errno. */
int queue_update(struct queue *q, const struct queue_msg *m,
                 queue_op_cb cb, void *arg);

/* One recipient's new delivery state: every field is set (this is the
 * recipient's state after the attempt, not a difference); strings are
 * copied at the call, NULL clears the field. */
struct queue_rcpt_change {
	size_t index;           /* into queue_msg.rcpt */
	uint8_t state;          /* enum queue_rcpt_state */
	uint32_t attempts;
	int64_t next_attempt;
	const char *last_reply;
	const char *dest;       /* <= QUEUE_DEST_MAX bytes */
	const char *mx;         /* <= QUEUE_MX_MAX bytes */
	int64_t last_try;
};

/* queue_update_rcpts' status when the change left no recipient PENDING
 * or DEFERRED: the record stays (without a "sched" entry) so the caller
 * can still read the body for a DSN; the caller then removes it with
 * queue_remove(). */
#define QUEUE_RCPTS_DONE 1

/* Applies n changes to the message's recipients against the record as
 * stored when the writer applies them (never a copy the caller read
 * earlier), in one synchronous write transaction on the writer thread
 * (batched with other changes), and moves its "sched" entry to the new
 * queue_msg_due() (none when HOLD or nothing is left). Two callers
 * changing different recipients of one message therefore never undo each
 * other; every other field of the record is left as stored. All n apply
 * or none. cb (may be NULL) gets 0, QUEUE_RCPTS_DONE, -ENOENT (the
 * message is gone), -EINVAL (an index beyond the stored recipients;
 * nothing changed), -EIO (the stored record cannot be decoded) or
 * another -errno. Returns 0 (cb will run) or -errno (-EINVAL at once for
 * a bad state or a string too long). */
int queue_update_rcpts(struct queue *q, const char *qid,
                       const struct queue_rcpt_change *ch, size_t n,
                       queue_op_cb cb, void *arg);

/* Removes the message: its record and "sched" entry in one durable step,
 * then its body file. cb may be NULL. 0 or -errno. */
int queue_remove(struct queue *q, const char *qid, queue_op_cb cb, void *arg);

/* Runs on the loop thread after a batch with at least one successful
 * commit (the scheduler's cue that new mail is due). */
typedef void (*queue_notify_cb)(void *arg);
void queue_set_notify(struct queue *q, queue_notify_cb cb, void *arg);

/* Loads one message (a short read transaction on the caller's thread).
 * 0, -ENOENT or -errno; *out is the caller's (queue_msg_free). */
int queue_get(struct queue *q, const char *qid, struct queue_msg **out);

/* Calls cb for each "sched" entry due at or before `until`, in time order,
 * inside one read transaction; cb returns nonzero to stop. *next gets the
 * time of the first entry after `until`, or -1. 0 or -errno. */
int queue_scan_due(struct queue *q, int64_t until, int64_t *next,
                   int (*cb)(void *arg, const char *qid, int64_t due),
                   void *arg);

/* Number of messages and of "sched" entries (O(1)). */
int queue_count(struct queue *q, uint64_t *messages, uint64_t *scheduled);
/* The arrival time (unix seconds) of the oldest message, -1 when the
 * queue is empty (or its record is unreadable). 0 or -errno. */
int queue_oldest(struct queue *q, int64_t *arrival);

/* ---- read side (relayctl; safe beside the running daemon) ----------- */
/* For other processes only: LMDB allows one open environment per process,
 * so the daemon must not queue_ro_open() the spool it has queue_open()ed
 * (closing the second handle would drop the first one's locks). */

struct queue_ro;

/* Opens spool_dir's index read-only. -ENOENT when there is no spool. */
int queue_ro_open(const char *spool_dir, struct queue_ro **out);
void queue_ro_close(struct queue_ro *r);

/* Calls cb for each message in queue-id (= arrival) order inside one short
 * read transaction; the message is only valid during the call. cb returns
 * nonzero to stop. Returns 0 or -errno. */
int queue_ro_foreach(struct queue_ro *r,
                     int (*cb)(void *arg, const struct queue_msg *m),
                     void *arg);

/* Loads one message: 0, -ENOENT (unknown id) or -errno. *out is owned by
 * the caller (queue_msg_free). */
int queue_ro_get(struct queue_ro *r, const char *qid, struct queue_msg **out);

/* ---- integrity check (relayctl check) ------------------------------ */
/* Checks the spool against the rules above: every index record has its
 * body msg/QID with the recorded size, every body its record, the
 * "sched" entries are exactly the ones queue_msg_due() gives the ACTIVE
 * records, and no temp file is left. Read-only, in short read
 * transactions: beside a running relayd an item may be a moment in the
 * life of a message (a body placed just before its record is committed),
 * which queue_ro_recheck() tells apart a little later. */

enum queue_check_kind {
	QUEUE_CHK_NO_BODY,      /* a record without msg/QID */
	QUEUE_CHK_BODY_SIZE,    /* msg/QID's size is not the recorded one */
	QUEUE_CHK_BODY_TYPE,    /* msg/QID is not a regular file */
	QUEUE_CHK_BAD_RECORD,   /* a record that cannot be decoded, or whose
	                           key is not a queue id */
	QUEUE_CHK_UNSCHEDULED,  /* ACTIVE with recipients left, but no
	                           "sched" entry at its due time */
	QUEUE_CHK_STALE_SCHED,  /* a "sched" entry no record asks for */
	QUEUE_CHK_DONE,         /* every recipient sent or bounced, but the
	                           message is still in the index */
	QUEUE_CHK_ORPHAN_BODY,  /* msg/QID without a record */
	QUEUE_CHK_TEMP,         /* msg/.NAME or tmp/NAME: an unfinished body */
	QUEUE_CHK_STRAY,        /* another file in msg/ */
	QUEUE_CHK_NKINDS
};
/* "missing_body", "body_size", ...: the kinds' names in relayctl's JSON. */
extern const char *const queue_check_kind_names[];

/* Why a "sched" entry is stale. */
enum queue_check_stale {
	QUEUE_STALE_OK = 0,
	QUEUE_STALE_NO_RECORD,  /* its message is not in the index */
	QUEUE_STALE_BAD_RECORD, /* its record cannot be decoded */
	QUEUE_STALE_HOLD,       /* its message is on hold */
	QUEUE_STALE_DONE,       /* its message has nothing left to deliver */
	QUEUE_STALE_TIME,       /* its message is due at another time */
	QUEUE_STALE_BAD_KEY,    /* the key is not a time and a queue id */
};

#define QUEUE_CHECK_KEY_MAX 64

struct queue_check_item {
	enum queue_check_kind kind;
	char qid[QUEUE_ID_SIZE];    /* the message, or "" */
	char file[4 + 256];         /* "msg/QID", "tmp/NAME" (spool-relative),
	                               or "" */
	enum queue_check_stale stale;   /* QUEUE_CHK_STALE_SCHED */
	int64_t at;                 /* STALE_SCHED: the entry's time */
	int64_t due;                /* UNSCHEDULED, STALE_TIME: the due time */
	uint64_t size, recorded;    /* BODY_SIZE: the file's, the record's */
	/* BAD_RECORD and STALE_SCHED: the LMDB key (at most
	 * QUEUE_CHECK_KEY_MAX bytes of it; keylen is the whole length) */
	uint8_t key[QUEUE_CHECK_KEY_MAX];
	size_t keylen;
};

struct queue_check_stats {
	uint64_t messages;      /* index records */
	uint64_t scheduled;     /* "sched" entries */
	uint64_t bodies;        /* msg/QID files with a record */
	uint64_t in_use;        /* QUEUE_CHECK_LIVE: relayd's temp files */
};

/* relayd is running: its temp files (msg/.QID, and the empty files it
 * makes ahead of need) are bodies being received, not problems. */
#define QUEUE_CHECK_LIVE 0x1

/* Called once per item found; returns nonzero to stop the check. */
typedef int (*queue_check_cb)(void *arg, const struct queue_check_item *it);

/* Checks the spool r was opened on; st gets the counts. 0 or -errno
 * (the check could not be completed: an index read or a directory
 * failed). */
int queue_ro_check(struct queue_ro *r, unsigned flags, queue_check_cb cb,
                   void *arg, struct queue_check_stats *st);

/* Looks at the subject of an earlier item again - its message (record,
 * body and schedule entry), its "sched" entry, or its file - and calls cb
 * for each problem it has now (none: it was a moment in a running
 * relayd's work). 0 or -errno. */
int queue_ro_recheck(struct queue_ro *r, unsigned flags,
                     const struct queue_check_item *it, queue_check_cb cb,
                     void *arg);

/* True when a and b are about the same subject (one recheck covers
 * both). */
bool queue_check_same_subject(const struct queue_check_item *a,
                              const struct queue_check_item *b);

/* ---- offline changes (relayctl while relayd is stopped) ----------- */
/* Direct writes to the index for when no daemon is running: each call is
 * one synchronous LMDB write transaction (LMDB's lock file serializes it
 * against any other writer). While relayd runs, changes go through its
 * control socket instead, so its schedule never goes stale. */

struct queue_admin;

/* Opens spool_dir's index read-write. -ENOENT when there is no spool. */
int queue_admin_open(const char *spool_dir, struct queue_admin **out);
void queue_admin_close(struct queue_admin *a);

/* HOLD: the message keeps its record but loses its "sched" entry.
 * 0 (also when already held), -ENOENT (unknown id) or -errno. */
int queue_admin_hold(struct queue_admin *a, const char *qid);
/* Back to ACTIVE, due now (every PENDING/DEFERRED recipient's
 * next_attempt = now). 0 (also when not held), -ENOENT or -errno. */
int queue_admin_release(struct queue_admin *a, const char *qid, int64_t now);
/* Removes the record and its "sched" entry in one synchronous commit,
 * then unlinks msg/QID (a crash in between leaves a body without a
 * record, which startup recovery removes). 0, -ENOENT or -errno. */
int queue_admin_delete(struct queue_admin *a, const char *qid);

/* Path of a message's stored body: spool_dir/msg/QID. */
int queue_body_path(const char *spool_dir, const char *qid,
                    char *out, size_t outsz);

/* True when s is a well-formed queue id. */
bool queue_id_valid(const char *s);

#endif
