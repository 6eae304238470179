/*
 * queue/queue.c - The daemon side of the spool: opening it (directories,
 * the LMDB index, startup recovery), receiving bodies into msg/, and the
 * writer thread that makes accepted messages durable in batches (group
 * commit) and reports back to the loop through a uv_async_t.
 *
 * A body is received into a file created ahead of need by the opener
 * thread: an unnamed O_TMPFILE file in msg/ (syncfs mode, where the file
 * system has them) or msg/.NAME. The writer places it as msg/QID (linkat
 * or a rename inside msg/, never over an existing file) before the batch's
 * sync; the LMDB record is what makes the message exist. A rename from
 * tmp/ would lock two directories and contended with every create in the
 * benchmark. Recovery removes dot files and bodies without a record;
 * unnamed files leave nothing behind.
 *
 * Threads: the loop thread takes body files, writes bodies (page cache
 * only) and hands commits over; the opener thread creates body files; the
 * writer thread alone places, syncs and runs LMDB write transactions. No
 * fsync and no LMDB write ever happens on the loop thread once
 * queue_open() has returned.
 */
#include "queue/queue_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>

#include "common/log.h"

/* Body files are created ahead of need by the opener thread, so that no
 * file is created on the loop thread under load (inode allocation costs
 * tens of microseconds, and far more on some file systems). */
#define POOL_MAX 64
#define POOL_LOW 32
/* A body's name until it is placed as msg/QID: "" for an unnamed file
 * (O_TMPFILE: no directory entry at all until linkat places it, and
 * nothing to clean up after a crash), else ".QID" or ".p" + this run's
 * boundary id + 16 hex digits where the file system has no O_TMPFILE
 * (recovery tells this run's names from an earlier one's by them). */
#define PART_NAME_SIZE 40

/* User-space buffer per body: bounded, whatever the message size. */
#define BODY_BUF_SIZE (64 * 1024)
#define DEFAULT_MAP_SIZE (UINT64_C(1) << 30)

/* A record to take back (unindex): its body did not become durable. */
struct unindex_item {
	char qid[QUEUE_ID_SIZE];
	int64_t due;
	bool sched;
};

/* How often the opener thread reads the spool's free space when
 * queue_min_free is set: often enough that a filling disk is seen within
 * a second, rarely enough to cost nothing. */
#define SPACE_REFRESH_US (1000 * 1000)

static uint64_t now_us(void);

/* How soon the writer tries again, when idle, to take back records of
 * failed commits or to reopen an index it could not reopen. */
#define UNINDEX_RETRY_US (1000 * 1000)

/* One commit on its way through the writer. */
struct queue_req {
	struct queue_req *next;
	char qid[QUEUE_ID_SIZE];
	int fd;                 /* body; the writer closes it after the sync */
	char part[PART_NAME_SIZE];  /* its name until placed; "" if unnamed */
	uint8_t *rec;           /* encoded envelope, the "msg" value */
	size_t reclen;
	int64_t due;            /* its "sched" time: queue_msg_due() */
	bool sched;             /* ACTIVE with recipients left: an entry */
	bool placed;            /* the body is msg/QID now */
	bool indexed;           /* its record went into the batch's txn */
	int status;
	queue_commit_cb cb;
	void *arg;
};

/* An aborted body for the writer to remove: a named one is closed
 * already (fd -1) and is unlinked; an unnamed one is freed by its close. */
struct queue_discard {
	struct queue_discard *next;
	int fd;
	char qid[QUEUE_ID_SIZE];
	char part[PART_NAME_SIZE];
};

/* Beyond this many removals waiting, the loop removes bodies itself: a
 * client aborting transactions in a loop must not grow the list (or, with
 * it, the writer's work ahead of real commits) without bound. */
#define DISCARD_MAX 256

/* A change to a committed message (delivery results, hold, removal) on
 * its way through the writer. */
enum op_kind { OP_UPDATE, OP_REMOVE,
	OP_QUOTA,     /* a quota charge or refund: queue_quota.c */
	OP_RCPTS,     /* per-recipient changes merged into the stored record */
	OP_STATS };   /* statistics counts merged into their buckets */

struct queue_op {
	struct queue_op *next;
	enum op_kind kind;
	char qid[QUEUE_ID_SIZE];
	uint8_t *rec;           /* OP_UPDATE: the new "msg" value */
	size_t reclen;
	int64_t due;            /* OP_UPDATE: its sched time, or -1 for none */
	struct queue_quota_req *quota;   /* OP_QUOTA: owned by op->arg's cb */
	struct queue_rcpt_change *ch;    /* OP_RCPTS: deep copies */
	size_t nch;
	struct queue_stats_bucket *sb;   /* OP_STATS: the counts (owned) */
	int64_t stats_hour;              /* OP_STATS: the hour they are of */
	int status;
	queue_op_cb cb;
	void *arg;
};

/* Items (records, entries, directory entries) per step: a few
 * milliseconds of work, so a commit waits at most that long for it. */
#define RECOVER_STEP 1024
/* Longest wait for the test gate (RELAYD_TEST_RECOVERY_GATE). */
#define RECOVER_GATE_MAX_US (120 * 1000000ull)

enum recover_phase {
	RECOVER_TMP,      /* tmp/: every file is an unfinished body */
	RECOVER_RECORDS,  /* "msg" records below the boundary: body present,
	                     of the recorded size */
	RECOVER_SCHED,    /* "sched" entries: each is its record's due time */
	RECOVER_RESTORE,  /* records below the boundary: finished ones removed,
	                     missing entries restored */
	RECOVER_BODIES,   /* msg/: orphan bodies and old dot files removed */
	RECOVER_DONE,
};
static const char *const recover_phase_names[] = {
	"tmp", "records", "schedule", "restore", "bodies", "done",
};

struct recovery {
	enum recover_phase phase;
	uint8_t key[QUEUE_SCHED_KEY_LEN];   /* resume after this key */
	size_t keylen;                      /* 0: from the first */
	DIR *dir;                           /* RECOVER_BODIES */
	size_t nmsg;        /* records below the boundary that were kept */
	size_t repaired;
	size_t upgraded;    /* format-1 records rewritten in format 2 */
	bool no_upgrade;    /* the map filled up: records stay as they are */
	uint64_t t0;        /* CLOCK_MONOTONIC us at the start */
	uint64_t gate_t0;   /* when the gate was first found closed */
	char *gate;         /* test only: wait until this path exists */
};

struct pool_file {
	int fd;
	char part[PART_NAME_SIZE];
};

struct queue {
	uv_loop_t *loop;
	uv_async_t async;       /* writer -> loop: requests on the done list */
	enum queue_sync sync;
	uint64_t commit_delay_us;
	int spool_fd, tmp_fd, msg_fd;
	bool tmpfile;           /* bodies start as O_TMPFILE files (probed) */
	/* The index. After a failed write LMDB may refuse every later write
	 * transaction on the same environment (a failed meta page write marks
	 * it fatal: MDB_PANIC), so the writer closes and reopens it
	 * (env_reopen). Readers on other threads hold envlock for reading
	 * around each read transaction (queue_env_read_begin/_end); the
	 * reopen holds it for writing. env is NULL while a reopen failed. */
	pthread_rwlock_t envlock;
	MDB_env *env;
	MDB_dbi dbi_msg, dbi_sched;
	MDB_dbi dbi_quota;      /* quota counters (queue_quota.c) */
	MDB_dbi dbi_meta, dbi_stats;    /* index format; statistics history */
	unsigned format;        /* "meta" format at open: 0 absent (format 1) */
	bool boundary_had_records;  /* the index had records at open */
	char *spool_path;       /* for env_reopen */
	uint64_t map_size;
	/* Writer thread only: */
	bool env_broken;        /* a write failed: reopen before the next one */
	struct unindex_item *unindex_left;  /* records still to take back */
	size_t nunindex_left;
	struct queue_idgen idgen;   /* loop thread only */
	/* Every id this run gives out is above it (set in queue_open, then
	 * read-only): see the recovery section. */
	char boundary[QUEUE_ID_SIZE];
	bool recover_async;         /* recovery runs on the writer thread */
	struct recovery rec;        /* writer thread (queue_open before it) */

	pthread_t writer;
	pthread_mutex_t mu;
	pthread_cond_t cond;    /* signalled when pending grows or stop is set */
	/* Under mu: */
	struct queue_req *pending, **pending_tail;
	uint64_t npushed;       /* requests ever queued: arrivals while waiting */
	struct queue_discard *discard;  /* aborted bodies to remove */
	size_t ndiscard;
	bool writer_running;
	struct pool_file pool[POOL_MAX];  /* empty body files, ready */
	size_t npool;
	pthread_t opener;
	pthread_cond_t opener_cond;   /* signalled when the pool runs low */
	bool opener_running;
	struct queue_req *done, **done_tail;
	struct queue_op *ops, **ops_tail;        /* changes waiting */
	struct queue_op *ops_done, **ops_done_tail;
	bool stop;
	bool reopened;          /* the index was reopened: tell the scheduler */
	bool index_ready;       /* recovery's index phases are done */
	struct queue_stats st;
	/* Free space in the spool's file system, for queue_min_free: read
	 * by the opener thread every SPACE_REFRESH_US (never on the loop
	 * thread while the opener runs: statvfs of a network file system
	 * can wait on the network). */
	uint64_t min_free;      /* 0: no check, no readings */
	uint64_t space_free;    /* bytes available to relayd (f_bavail) */
	uint64_t space_at;      /* now_us() of that reading; 0: none yet */
	bool space_low;         /* below min_free at the last reading */

	/* Loop thread: */
	bool closing;
	/* Statistics counted since the last flush (queue_stats.h), all of
	 * the hour stats_hour (-1: none counted). */
	struct queue_stats_bucket stats;
	int64_t stats_hour;
	bool ready_told;        /* index_ready seen, notify called */
	queue_notify_cb notify;    /* after each successful commit */
	void *notify_arg;
	void (*done_cb)(void *arg);
	void *done_arg;
};

struct queue_body {
	struct queue *q;
	char qid[QUEUE_ID_SIZE];
	char part[PART_NAME_SIZE];
	int fd;
	int err;                /* sticky: the first write error */
	size_t len;             /* bytes waiting in buf */
	uint64_t size;          /* bytes accepted so far */
	uint8_t high;           /* every byte written, OR-ed: bit 7 = 8-bit */
	uint8_t buf[BODY_BUF_SIZE];
};

/* Startup recovery (its own section below), run by the writer. */
static bool recover_gated(struct queue *q);
static int recover_step(struct queue *q, bool *index_done, uint64_t *syncs);

/* A full disk and an exhausted quota both mean "no space" (452 4.3.1). */
static int io_errno(int e)
{
	return e == ENOSPC || e == EDQUOT ? -ENOSPC : -e;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return io_errno(errno);
		}
		if (w == 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ---- bodies (loop thread) --------------------------------------------- */

/* msg/.QID: the name of a body created on the spot, until the rename. */
static void part_name(char out[PART_NAME_SIZE], const char *qid)
{
	out[0] = '.';
	memcpy(out + 1, qid, QUEUE_ID_SIZE);
}

/* Creates an empty body file: unnamed where the file system allows,
 * else named after `hint` (".QID" or a pool name). Returns the fd or
 * -errno; part receives the name ("" for unnamed). */
static int body_create(struct queue *q, const char *hint,
                       char part[PART_NAME_SIZE])
{
	int fd;
	if (q->tmpfile) {
		fd = openat(q->msg_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		part[0] = '\0';
	} else {
		snprintf(part, PART_NAME_SIZE, "%s", hint);
		fd = openat(q->msg_fd, part, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
		            0600);
	}
	return fd < 0 ? io_errno(errno) : fd;
}

/* Gives a body its queue name, msg/QID, never replacing an existing one
 * (linkat and RENAME_NOREPLACE both fail with EEXIST). An unnamed file is
 * linked through /proc/self/fd, which needs no privilege (AT_EMPTY_PATH
 * would need CAP_DAC_READ_SEARCH). */
static int body_place(struct queue *q, int fd, const char *part,
                      const char *qid)
{
	int r;
	if (part[0]) {
		r = renameat2(q->msg_fd, part, q->msg_fd, qid, RENAME_NOREPLACE);
	} else {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		r = linkat(AT_FDCWD, path, q->msg_fd, qid, AT_SYMLINK_FOLLOW);
	}
	return r < 0 ? io_errno(errno) : 0;
}

/* Can bodies start unnamed here? One O_TMPFILE file, placed and removed. */
static bool probe_tmpfile(struct queue *q)
{
	char name[32];
	q->tmpfile = true;
	char part[PART_NAME_SIZE];
	int fd = body_create(q, "", part);
	if (fd < 0) {
		q->tmpfile = false;
		return false;
	}
	snprintf(name, sizeof name, ".probe%ld", (long)getpid());
	unlinkat(q->msg_fd, name, 0);
	int r = body_place(q, fd, part, name);
	close(fd);
	if (r == 0)
		unlinkat(q->msg_fd, name, 0);
	q->tmpfile = r == 0;
	return q->tmpfile;
}

/* Takes a pre-created body file, if any, and wakes the opener when the
 * pool runs low. */
static bool pool_take(struct queue *q, int *fd, char part[PART_NAME_SIZE])
{
	bool got = false;
	pthread_mutex_lock(&q->mu);
	if (q->npool > 0) {
		struct pool_file *f = &q->pool[--q->npool];
		*fd = f->fd;
		memcpy(part, f->part, PART_NAME_SIZE);
		got = true;
	}
	if (q->npool < POOL_LOW && q->opener_running)
		pthread_cond_signal(&q->opener_cond);
	pthread_mutex_unlock(&q->mu);
	return got;
}

/* CLOCK_MONOTONIC microseconds (now_us) as a deadline for the queue's
 * condition variables, which wait on that clock. */
static void us_timespec(uint64_t us, struct timespec *t)
{
	t->tv_sec = (time_t)(us / 1000000);
	t->tv_nsec = (long)(us % 1000000) * 1000;
}

/* Reads the free space of msg/'s file system (where bodies go) and logs
 * when it crosses queue_min_free, either way. Not on the loop thread once
 * the opener runs. A failed statvfs keeps the last reading. */
static void space_read(struct queue *q)
{
	struct statvfs sv;
	int r = fstatvfs(q->msg_fd, &sv) < 0 ? -errno : 0;
	/* f_bavail: what an unprivileged relayd may use (root's reserve is
	 * not ours to fill). */
	uint64_t avail = r ? 0 : (uint64_t)sv.f_bavail * sv.f_frsize;
	pthread_mutex_lock(&q->mu);
	uint64_t min = q->min_free;
	bool was = q->space_low, low = was;
	q->space_at = now_us();
	if (r == 0) {
		q->space_free = avail;
		q->space_low = low = min && avail < min;
	}
	pthread_mutex_unlock(&q->mu);
	if (r)
		log_warn("queue: cannot read the spool's free space: %s",
		         strerror(-r));
	else if (low && !was)
		log_warn("queue: %" PRIu64 " bytes free in the spool's file "
		         "system, below queue_min_free (%" PRIu64 "): MAIL is "
		         "answered 452 4.3.1", avail, min);
	else if (!low && was)
		log_info("queue: %" PRIu64 " bytes free in the spool's file "
		         "system again (queue_min_free %" PRIu64 "): accepting "
		         "mail", avail, min);
}

int queue_space_check(struct queue *q, uint64_t need)
{
	pthread_mutex_lock(&q->mu);
	uint64_t min = q->min_free, at = q->space_at;
	bool opener = q->opener_running;
	pthread_mutex_unlock(&q->mu);
	if (min == 0)
		return 0;
	/* Without the opener thread nobody else reads it: once a second
	 * here, on the loop thread. */
	if (!opener && now_us() - at >= SPACE_REFRESH_US)
		space_read(q);
	pthread_mutex_lock(&q->mu);
	uint64_t avail = q->space_free;
	at = q->space_at;
	pthread_mutex_unlock(&q->mu);
	if (at == 0)
		return 0;   /* never read: refuse nothing on a guess */
	/* The declared SIZE must fit above the reserve too (as Postfix
	 * checks SIZE against queue_minfree). */
	if (avail < min || avail - min < need)
		return -ENOSPC;
	return 0;
}

void queue_set_min_free(struct queue *q, uint64_t bytes)
{
	pthread_mutex_lock(&q->mu);
	bool changed = q->min_free != bytes;
	q->min_free = bytes;
	if (changed) {
		q->space_at = 0;        /* read again at once */
		q->space_low = false;
		pthread_cond_signal(&q->opener_cond);
	}
	pthread_mutex_unlock(&q->mu);
}

/* The opener thread keeps the pool between POOL_LOW and POOL_MAX files.
 * A failure (disk full) is not reported here: the loop then creates the
 * body itself and answers the client with the error. */
static void *opener_main(void *arg)
{
	struct queue *q = arg;
	uint64_t seq = 0;
	pthread_mutex_lock(&q->mu);
	while (!q->stop) {
		if (q->min_free && now_us() - q->space_at >= SPACE_REFRESH_US) {
			pthread_mutex_unlock(&q->mu);
			space_read(q);
			pthread_mutex_lock(&q->mu);
			continue;
		}
		if (q->npool >= POOL_LOW) {
			if (q->min_free) {
				struct timespec t;
				us_timespec(q->space_at + SPACE_REFRESH_US, &t);
				pthread_cond_timedwait(&q->opener_cond, &q->mu, &t);
			} else {
				pthread_cond_wait(&q->opener_cond, &q->mu);
			}
			continue;
		}
		size_t want = POOL_MAX - q->npool;
		pthread_mutex_unlock(&q->mu);
		struct pool_file made[POOL_MAX];
		size_t n = 0;
		while (n < want) {
			char hint[PART_NAME_SIZE];
			snprintf(hint, sizeof hint, ".p%s%016llx", q->boundary,
			         (unsigned long long)++seq);
			made[n].fd = body_create(q, hint, made[n].part);
			if (made[n].fd < 0)
				break;
			n++;
		}
		bool failed = n < want;
		pthread_mutex_lock(&q->mu);
		for (size_t i = 0; i < n; i++)
			q->pool[q->npool++] = made[i];
		if (failed && !q->stop) {
			/* Try again later, not in a tight loop. */
			struct timespec t;
			clock_gettime(CLOCK_MONOTONIC, &t);
			t.tv_nsec += 100 * 1000000L;
			if (t.tv_nsec >= 1000000000L) {
				t.tv_sec++;
				t.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&q->opener_cond, &q->mu, &t);
		}
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

int queue_body_open(struct queue *q, const char *qid, struct queue_body **out)
{
	if (!queue_id_valid(qid))
		return -EINVAL;
	if (q->closing)
		return -ESHUTDOWN;
	struct queue_body *b = malloc(sizeof *b);
	if (!b)
		return -ENOMEM;
	if (!pool_take(q, &b->fd, b->part)) {
		char hint[PART_NAME_SIZE];
		part_name(hint, qid);
		b->fd = body_create(q, hint, b->part);
		if (b->fd < 0) {
			int r = b->fd;
			log_err("%s: cannot create a body file in msg/: %s", qid,
			        strerror(-r));
			free(b);
			return r;
		}
	}
	b->q = q;
	memcpy(b->qid, qid, QUEUE_ID_SIZE);
	b->err = 0;
	b->len = 0;
	b->size = 0;
	b->high = 0;
	*out = b;
	return 0;
}

static int body_flush(struct queue_body *b)
{
	if (b->err == 0 && b->len > 0) {
		b->err = write_all(b->fd, b->buf, b->len);
		b->len = 0;
		if (b->err)
			log_err("%s: cannot write body%s%s: %s", b->qid,
			        b->part[0] ? " msg/" : "", b->part,
			        strerror(-b->err));
	}
	return b->err;
}

/* OR of the bytes (bit 7 tells 8-bit content): one pass the compiler
 * vectorizes, cheaper than a branch per byte. */
static uint8_t or_bytes(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;
	for (size_t i = 0; i < n; i++)
		acc |= p[i];
	return acc;
}

int queue_body_write(struct queue_body *b, const void *p, size_t n)
{
	if (b->err)
		return b->err;
	if (!(b->high & 0x80))
		b->high |= or_bytes(p, n);
	if (n > sizeof b->buf - b->len && body_flush(b))
		return b->err;
	if (n >= sizeof b->buf) {
		/* Large chunk: straight to the file, no copy. */
		b->err = write_all(b->fd, p, n);
		if (b->err) {
			log_err("%s: cannot write body%s%s: %s", b->qid,
			        b->part[0] ? " msg/" : "", b->part,
			        strerror(-b->err));
			return b->err;
		}
	} else {
		memcpy(b->buf + b->len, p, n);
		b->len += n;
	}
	b->size += n;
	return 0;
}

int queue_body_read_fd(struct queue_body *b)
{
	int r = body_flush(b);
	return r < 0 ? r : b->fd;
}

uint64_t queue_body_size(const struct queue_body *b)
{
	return b->size;
}

bool queue_body_8bit(const struct queue_body *b)
{
	return b->high & 0x80;
}

/* Closes and removes an unfinished body. On the loop thread this could
 * wait on the disk (the last unlink of a large file frees its blocks and
 * waits for pages under writeback), so queue_body_abort() hands it to the
 * writer thread when it can. */
static void unlink_part(struct queue *q, const char *qid, const char *part)
{
	if (!part[0])
		return;   /* unnamed: its close frees it */
	if (unlinkat(q->msg_fd, part, 0) < 0 && errno != ENOENT)
		log_err("%s: cannot remove msg/%s: %s", qid, part, strerror(errno));
}

static void discard_body(struct queue *q, int fd, const char *qid,
                         const char *part)
{
	if (close(fd) < 0 && errno != EINTR)
		log_warn("%s: close msg/%s: %s", qid, part, strerror(errno));
	unlink_part(q, qid, part);
}

void queue_body_abort(struct queue_body *b)
{
	if (!b)
		return;
	struct queue *q = b->q;
	/* What frees a large body's blocks can wait on the disk: the last
	 * unlink of a named file, the close of an unnamed one. That goes to
	 * the writer; closing a file that still has a name is cheap. */
	int fd = b->fd;
	if (b->part[0]) {
		if (close(fd) < 0 && errno != EINTR)
			log_warn("%s: close msg/%s: %s", b->qid, b->part,
			         strerror(errno));
		fd = -1;
	}
	struct queue_discard *d = malloc(sizeof *d);
	bool handed = false;
	if (d) {
		d->fd = fd;
		memcpy(d->qid, b->qid, QUEUE_ID_SIZE);
		memcpy(d->part, b->part, PART_NAME_SIZE);
		pthread_mutex_lock(&q->mu);
		if (q->writer_running && !q->stop && q->ndiscard < DISCARD_MAX) {
			d->next = q->discard;
			q->discard = d;
			q->ndiscard++;
			pthread_cond_signal(&q->cond);
			handed = true;
		}
		pthread_mutex_unlock(&q->mu);
	}
	if (!handed) {
		free(d);
		if (fd >= 0)
			close(fd);
		unlink_part(q, b->qid, b->part);
	}
	free(b);
}

/* ---- commit (loop thread) --------------------------------------------- */

int queue_commit(struct queue *q, struct queue_body *b,
                 const struct queue_msg *m, queue_commit_cb cb, void *arg)
{
	struct queue_req *req = NULL;
	int r;

	if (q->closing) {
		r = -ESHUTDOWN;
		goto fail;
	}
	if (strcmp(m->qid, b->qid) != 0) {
		r = -EINVAL;
		goto fail;
	}
	/* The last bytes reach the page cache here; the writer syncs them. */
	r = body_flush(b);
	if (r)
		goto fail;
	req = calloc(1, sizeof *req);
	if (!req) {
		r = -ENOMEM;
		goto fail;
	}
	struct queue_msg copy = *m;
	copy.size = b->size;
	/* Arrival to the millisecond (format 2) for a caller that gave only
	 * the second (smtpd: time(NULL) in the same loop turn): the clock's
	 * milliseconds when it still reads that second, else 0. */
	struct timespec ts;
	if (copy.arrival_ms == 0 && clock_gettime(CLOCK_REALTIME, &ts) == 0 &&
	    ts.tv_sec == copy.arrival)
		copy.arrival_ms = (uint16_t)(ts.tv_nsec / 1000000);
	copy.flags = (uint8_t)((copy.flags & ~QUEUE_F_7BIT) |
	                       ((b->high & 0x80) ? 0 : QUEUE_F_7BIT));
	r = queue_msg_encode(&copy, &req->rec, &req->reclen);
	if (r)
		goto fail;
	memcpy(req->qid, b->qid, QUEUE_ID_SIZE);
	memcpy(req->part, b->part, PART_NAME_SIZE);
	req->fd = b->fd;        /* the fd now belongs to the request */
	/* The entry goes where queue_msg_due() says, as for every other
	 * writer of the index: keyed by the arrival, it was wrong for a
	 * recipient committed already deferred (and a later update, which
	 * deletes the entry at queue_msg_due(), left it behind). */
	req->due = queue_msg_due(&copy);
	req->sched = m->state == QUEUE_MSG_ACTIVE && req->due >= 0;
	req->cb = cb;
	req->arg = arg;
	free(b);

	pthread_mutex_lock(&q->mu);
	*q->pending_tail = req;
	q->pending_tail = &req->next;
	q->npushed++;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->mu);
	return 0;

fail:
	log_err("%s: commit refused: %s", b->qid, strerror(-r));
	queue_body_abort(b);
	free(req);
	pthread_mutex_lock(&q->mu);
	q->st.failed++;
	pthread_mutex_unlock(&q->mu);
	return r;
}

/* ---- changes and reads of committed messages (loop thread) ----------- */

static int push_op(struct queue *q, struct queue_op *op)
{
	pthread_mutex_lock(&q->mu);
	if (q->stop) {
		pthread_mutex_unlock(&q->mu);
		return -ESHUTDOWN;
	}
	*q->ops_tail = op;
	q->ops_tail = &op->next;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->mu);
	return 0;
}

int queue_update(struct queue *q, const struct queue_msg *m,
                 queue_op_cb cb, void *arg)
{
	if (q->closing)
		return -ESHUTDOWN;
	struct queue_op *op = calloc(1, sizeof *op);
	if (!op)
		return -ENOMEM;
	int r = queue_msg_encode(m, &op->rec, &op->reclen);
	if (r) {
		free(op);
		return r;
	}
	op->kind = OP_UPDATE;
	memcpy(op->qid, m->qid, QUEUE_ID_SIZE);
	op->due = m->state == QUEUE_MSG_ACTIVE ? queue_msg_due(m) : -1;
	op->cb = cb;
	op->arg = arg;
	if ((r = push_op(q, op))) {
		free(op->rec);
		free(op);
	}
	return r;
}

static void op_free(struct queue_op *op)
{
	for (size_t i = 0; op->ch && i < op->nch; i++) {
		free((char *)op->ch[i].last_reply);
		free((char *)op->ch[i].dest);
		free((char *)op->ch[i].mx);
	}
	free(op->ch);
	free(op->rec);
	if (op->sb) {
		queue_stats_bucket_reset(op->sb);
		free(op->sb);
	}
	free(op);
}

int queue_update_rcpts(struct queue *q, const char *qid,
                       const struct queue_rcpt_change *ch, size_t n,
                       queue_op_cb cb, void *arg)
{
	if (q->closing)
		return -ESHUTDOWN;
	if (!queue_id_valid(qid) || (n && !ch) || queue_rcpt_change_check(ch, n))
		return -EINVAL;
	struct queue_op *op = calloc(1, sizeof *op);
	if (!op)
		return -ENOMEM;
	op->kind = OP_RCPTS;
	memcpy(op->qid, qid, QUEUE_ID_SIZE);
	op->due = -1;
	op->cb = cb;
	op->arg = arg;
	if (n && !(op->ch = calloc(n, sizeof *op->ch))) {
		free(op);
		return -ENOMEM;
	}
	op->nch = n;
	bool fail = false;
	for (size_t i = 0; i < n; i++) {
		op->ch[i] = ch[i];
		op->ch[i].last_reply = op->ch[i].dest = op->ch[i].mx = NULL;
		if ((ch[i].last_reply && !(op->ch[i].last_reply = strdup(ch[i].last_reply))) ||
		    (ch[i].dest && !(op->ch[i].dest = strdup(ch[i].dest))) ||
		    (ch[i].mx && !(op->ch[i].mx = strdup(ch[i].mx))))
			fail = true;
	}
	int r = fail ? -ENOMEM : push_op(q, op);
	if (r)
		op_free(op);
	return r;
}

int queue_remove(struct queue *q, const char *qid, queue_op_cb cb, void *arg)
{
	if (q->closing)
		return -ESHUTDOWN;
	if (!queue_id_valid(qid))
		return -EINVAL;
	struct queue_op *op = calloc(1, sizeof *op);
	if (!op)
		return -ENOMEM;
	op->kind = OP_REMOVE;
	memcpy(op->qid, qid, QUEUE_ID_SIZE);
	op->due = -1;
	op->cb = cb;
	op->arg = arg;
	int r = push_op(q, op);
	if (r)
		free(op);
	return r;
}

/* ---- quota ops (queue_quota.c; glue declared in queue_int.h) ------- */

int queue_push_quota(struct queue *q, struct queue_quota_req *r,
                     queue_op_cb done_cb)
{
	if (q->closing)
		return -ESHUTDOWN;
	struct queue_op *op = calloc(1, sizeof *op);
	if (!op)
		return -ENOMEM;
	op->kind = OP_QUOTA;
	op->due = -1;
	op->quota = r;
	op->cb = done_cb;
	op->arg = r;
	int rc = push_op(q, op);
	if (rc)
		free(op);
	return rc;
}

/* ---- statistics (queue_stats.h): counted here, merged by the writer -- */

void queue_stats_count(struct queue *q, int64_t now, unsigned id,
                       const char *cred, const char *domain, uint64_t n)
{
	if (q->closing)
		return;
	int64_t hour = queue_stats_hour(now);
	/* A bucket is one hour's: the counts of the hour before go first. */
	if (q->stats_hour >= 0 && hour != q->stats_hour)
		(void)queue_stats_flush(q);
	q->stats_hour = hour;
	if (queue_stats_bucket_add(&q->stats, id, cred, domain, n) == -ENOMEM)
		log_warn("stats: out of memory: a %s count kept in the totals "
		         "only", id < QUEUE_STATS_NIDS && queue_stats_names[id]
		         ? queue_stats_names[id] : "counter");
}

/* Hands the counts to the writer, whatever q->closing says (queue_close
 * flushes through it). */
static int stats_flush(struct queue *q)
{
	if (q->stats_hour < 0 || queue_stats_bucket_empty(&q->stats)) {
		q->stats_hour = -1;
		return 0;
	}
	int r = -ENOMEM;
	struct queue_op *op = calloc(1, sizeof *op);
	struct queue_stats_bucket *sb = malloc(sizeof *sb);
	if (op && sb) {
		*sb = q->stats;     /* the entries move with it */
		memset(&q->stats, 0, sizeof q->stats);
		op->kind = OP_STATS;
		op->due = -1;
		op->sb = sb;
		op->stats_hour = q->stats_hour;
		if ((r = push_op(q, op)) == 0) {
			q->stats_hour = -1;
			return 0;
		}
		op_free(op);
	} else {
		free(op);
		free(sb);
		queue_stats_bucket_reset(&q->stats);
	}
	q->stats_hour = -1;
	log_warn("stats: counts of the last minute dropped: %s", strerror(-r));
	return r;
}

int queue_stats_flush(struct queue *q)
{
	return q->closing ? -ESHUTDOWN : stats_flush(q);
}

const struct queue_stats_bucket *queue_stats_unflushed(const struct queue *q,
                                                       int64_t *hour)
{
	*hour = q->stats_hour;
	return &q->stats;
}

/* A read transaction on any thread. envlock keeps the environment from
 * being closed under it by env_reopen (writer thread): held for reading
 * from begin to end, never across a callback. */
int queue_env_read_begin(struct queue *q, struct MDB_txn **txn)
{
	pthread_rwlock_rdlock(&q->envlock);
	/* NULL while a reopen failed: the index is unusable until the next
	 * one works. */
	int rc = q->env ? mdb_txn_begin(q->env, NULL, MDB_RDONLY, txn) : EIO;
	if (rc)
		pthread_rwlock_unlock(&q->envlock);
	return rc;
}

void queue_env_read_end(struct queue *q, struct MDB_txn *txn)
{
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&q->envlock);
}

unsigned queue_dbi_quota(struct queue *q)
{
	return q->dbi_quota;
}

void queue_set_notify(struct queue *q, queue_notify_cb cb, void *arg)
{
	q->notify = cb;
	q->notify_arg = arg;
}

/* Read transactions on the loop thread are cheap (no lock, no I/O beyond
 * page faults on the mapped file) and never wait for the writer. */
int queue_get(struct queue *q, const char *qid, struct queue_msg **out)
{
	MDB_txn *txn;
	if (!queue_id_valid(qid))
		return -EINVAL;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	MDB_val k = {QUEUE_ID_LEN, (void *)qid}, v;
	rc = mdb_get(txn, q->dbi_msg, &k, &v);
	int r = rc ? queue_mdb_errno(rc) : queue_msg_decode(qid, v.mv_data,
	                                                   v.mv_size, out);
	queue_env_read_end(q, txn);
	return r;
}

int queue_scan_due(struct queue *q, int64_t until, int64_t *next,
                   int (*cb)(void *arg, const char *qid, int64_t due),
                   void *arg)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	*next = -1;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	if ((rc = mdb_cursor_open(txn, q->dbi_sched, &cur))) {
		queue_env_read_end(q, txn);
		return queue_mdb_errno(rc);
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != QUEUE_SCHED_KEY_LEN)
			continue;
		const uint8_t *p = k.mv_data;
		uint64_t t = 0;
		for (int i = 0; i < 8; i++)
			t = t << 8 | p[i];
		if ((int64_t)t > until) {
			*next = (int64_t)t;
			break;
		}
		char qid[QUEUE_ID_SIZE];
		memcpy(qid, p + 8, QUEUE_ID_LEN);
		qid[QUEUE_ID_LEN] = '\0';
		if (cb(arg, qid, (int64_t)t))
			break;
	}
	int r = rc == 0 || rc == MDB_NOTFOUND ? 0 : queue_mdb_errno(rc);
	mdb_cursor_close(cur);
	queue_env_read_end(q, txn);
	return r;
}

int queue_count(struct queue *q, uint64_t *messages, uint64_t *scheduled)
{
	MDB_txn *txn;
	MDB_stat st;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	if ((rc = mdb_stat(txn, q->dbi_msg, &st)) == 0) {
		*messages = st.ms_entries;
		if ((rc = mdb_stat(txn, q->dbi_sched, &st)) == 0)
			*scheduled = st.ms_entries;
	}
	queue_env_read_end(q, txn);
	return rc ? queue_mdb_errno(rc) : 0;
}

/* The first message in qid order is the one that arrived first (qids
 * grow with arrival time: queue_idgen). One cursor step and a decode. */
int queue_oldest(struct queue *q, int64_t *arrival)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	*arrival = -1;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	if ((rc = mdb_cursor_open(txn, q->dbi_msg, &cur)) == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		if (rc == 0 && k.mv_size == QUEUE_ID_LEN) {
			char qid[QUEUE_ID_LEN + 1];
			memcpy(qid, k.mv_data, QUEUE_ID_LEN);
			qid[QUEUE_ID_LEN] = '\0';
			struct queue_msg *m;
			if (queue_msg_decode(qid, v.mv_data, v.mv_size, &m) == 0) {
				*arrival = m->arrival;
				queue_msg_free(m);
			}
		}
		if (rc == MDB_NOTFOUND)
			rc = 0;
		mdb_cursor_close(cur);
	}
	queue_env_read_end(q, txn);
	return rc ? queue_mdb_errno(rc) : 0;
}

/* ---- the writer thread ------------------------------------------------ */

static int open_index(struct queue *q, const char *spool, uint64_t map_size,
                      bool reopen);
static void unindex_retry(struct queue *q);

/* A write transaction or a sync of the index failed. LMDB may now refuse
 * every write on this environment: a failed meta page write marks it
 * fatal (MDB_PANIC from then on), and after a failed fdatasync the page
 * cache may hold pages the disk does not. So the writer closes it and
 * opens it again before its next write; LMDB's copy-on-write pages and
 * its two meta pages make the last durable transaction the current one. */
static void env_failed(struct queue *q, int rc)
{
	if (!q->env_broken)
		log_err("queue: index write failed (%s): reopening the index",
		        mdb_strerror(rc));
	q->env_broken = true;
}

/* Writer thread: closes and reopens the environment. Readers on other
 * threads (the loop's scheduler, quota peeks) hold envlock for reading
 * around each short read transaction; this waits for them, and they for
 * it (mdb_env_open of an existing index is a few system calls, and no
 * sync: open_index's reopen). LMDB
 * allows one environment per file per process: the old one is closed
 * before the new one opens (its fcntl locks go with it). Returns 0 or
 * -errno; on failure env is NULL and the next write tries again. */
static int env_reopen(struct queue *q)
{
	pthread_rwlock_wrlock(&q->envlock);
	if (q->env)
		mdb_env_close(q->env);
	q->env = NULL;
	int r = open_index(q, q->spool_path, q->map_size, true);
	if (r && q->env) {
		mdb_env_close(q->env);
		q->env = NULL;
	}
	pthread_rwlock_unlock(&q->envlock);
	if (r) {
		log_err("queue: cannot reopen the index: %s (tried again at the "
		        "next write)", strerror(-r));
		return r;
	}
	q->env_broken = false;
	log_warn("queue: index reopened after a failed write");
	pthread_mutex_lock(&q->mu);
	q->reopened = true;
	pthread_mutex_unlock(&q->mu);
	return 0;
}

/* Before a write transaction: an LMDB code, 0 when the index is usable. */
static int env_ready(struct queue *q)
{
	if (q->env_broken && env_reopen(q))
		return EIO;
	return 0;
}

/* One LMDB write transaction for the whole batch: a record per message,
 * and a schedule entry (at queue_msg_due()) per ACTIVE message. */
static int index_batch(struct queue *q, struct queue_req *batch,
                       char *why, size_t whylen)
{
	MDB_txn *txn;
	int rc = env_ready(q);
	if (rc)
		goto fail;
	if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn))) {
		env_failed(q, rc);
		goto fail;
	}
	for (struct queue_req *req = batch; req; req = req->next) {
		if (req->status)
			continue;
		MDB_val k = {QUEUE_ID_LEN, req->qid};
		MDB_val v = {req->reclen, req->rec};
		/* Never over another message's record: that one was answered
		 * 250 and is not ours to replace. */
		rc = mdb_put(txn, q->dbi_msg, &k, &v, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST) {
			req->status = -EEXIST;
			log_err("%s: a record with this id exists", req->qid);
			continue;
		}
		if (rc)
			goto abort;
		if (req->sched) {
			uint8_t sk[QUEUE_SCHED_KEY_LEN];
			queue_sched_key(req->due, req->qid, sk);
			MDB_val skv = {sizeof sk, sk}, empty = {0, NULL};
			rc = mdb_put(txn, q->dbi_sched, &skv, &empty, 0);
			if (rc)
				goto abort;
		}
		req->indexed = true;
	}
	/* Only the meta page write makes the transaction current, after
	 * LMDB synced its pages: records never point at pages that did not
	 * reach the disk. */
	rc = mdb_txn_commit(txn);
	if (rc) {
		env_failed(q, rc);
		goto fail;
	}
	return 0;
abort:
	mdb_txn_abort(txn);
fail:
	for (struct queue_req *req = batch; req; req = req->next)
		req->indexed = false;
	snprintf(why, whylen, "index: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* Deletes the records (and schedule entries) of items in one write
 * transaction: an LMDB code. */
static int unindex_items(struct queue *q, const struct unindex_item *it,
                         size_t n)
{
	/* NULL: mdb_txn_begin leaves it unset when it fails, and the abort
	 * below must not be handed garbage. */
	MDB_txn *txn = NULL;
	int rc = env_ready(q);
	if (rc == 0 && (rc = mdb_txn_begin(q->env, NULL, 0, &txn)))
		env_failed(q, rc);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		MDB_val k = {QUEUE_ID_LEN, (void *)it[i].qid};
		rc = mdb_del(txn, q->dbi_msg, &k, NULL);
		if (rc == 0 && it[i].sched) {
			uint8_t sk[QUEUE_SCHED_KEY_LEN];
			queue_sched_key(it[i].due, it[i].qid, sk);
			MDB_val skv = {sizeof sk, sk};
			rc = mdb_del(txn, q->dbi_sched, &skv, NULL);
		}
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
		/* In syncfs mode the meta page needs its own sync. */
		if (rc == 0 && q->sync == QUEUE_SYNC_SYNCFS)
			rc = mdb_env_sync(q->env, 1);
		if (rc)
			env_failed(q, rc);
	} else if (txn) {
		mdb_txn_abort(txn);
	}
	return rc;
}

/* Takes back the records of requests that failed after the index commit
 * (their bodies did not become durable), and only theirs. The caller
 * makes this and the bodies' removal durable (settle_failures). If the
 * index refuses (the fault that failed the batch may still be there),
 * the writer keeps them and tries again before its next batch: a record
 * whose body is gone must not stay, or the scheduler would find it. */
static void unindex(struct queue *q, struct queue_req *batch)
{
	size_t n = 0;
	for (struct queue_req *req = batch; req; req = req->next)
		n += req->status != 0 && req->indexed;
	if (n == 0)
		return;
	struct unindex_item *it = realloc(q->unindex_left,
	                                  (q->nunindex_left + n) * sizeof *it);
	if (!it) {
		log_err("queue: out of memory taking back failed records; "
		        "recovery drops them at the next start");
		return;
	}
	q->unindex_left = it;
	for (struct queue_req *req = batch; req; req = req->next) {
		if (req->status == 0 || !req->indexed)
			continue;
		req->indexed = false;
		struct unindex_item *u = &it[q->nunindex_left++];
		memcpy(u->qid, req->qid, QUEUE_ID_SIZE);
		u->due = req->due;
		u->sched = req->sched;
	}
	unindex_retry(q);
}

/* Writer thread: takes back the records left by earlier failures. */
static void unindex_retry(struct queue *q)
{
	if (q->nunindex_left == 0)
		return;
	int rc = unindex_items(q, q->unindex_left, q->nunindex_left);
	if (rc) {
		log_err("queue: cannot take back %zu failed record(s): %s (tried "
		        "again before the next batch)", q->nunindex_left,
		        mdb_strerror(rc));
		return;
	}
	for (size_t i = 0; i < q->nunindex_left; i++)
		log_info("%s: record of the failed commit taken back",
		         q->unindex_left[i].qid);
	free(q->unindex_left);
	q->unindex_left = NULL;
	q->nunindex_left = 0;
}

/* syncfs reports a writeback error to one caller only (the first to look,
 * per descriptor): a failure in this batch's bodies may have been consumed
 * by an earlier batch's syncfs. Each body's own error state answers for
 * it; the pages are clean by now, so this waits for nothing and, unlike
 * fdatasync, sends no cache flush to the device. Returns the failures. */
static size_t check_bodies(struct queue_req *batch)
{
	size_t failed = 0;
	for (struct queue_req *req = batch; req; req = req->next) {
		if (req->status)
			continue;
		if (sync_file_range(req->fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE |
		                    SYNC_FILE_RANGE_WRITE |
		                    SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
			req->status = io_errno(errno);
			log_err("%s: writeback of msg/%s failed: %s", req->qid,
			        req->qid, strerror(-req->status));
			failed++;
		}
	}
	return failed;
}

/*
 * Makes one batch durable before any callback reports success.
 *
 * fsync mode, in the contract's order: each body's data (fdatasync), its
 * name (rename .QID -> QID, then fsync of msg/), then the index (an LMDB
 * commit with both of its syncs).
 *
 * syncfs mode, in two syncs instead of four: the renames, the LMDB commit
 * with MDB_NOMETASYNC (LMDB syncs the new pages, then writes the meta page
 * that makes them current without syncing it), then one syncfs that makes
 * the bodies, their names and that meta page durable together. Only then
 * do callbacks run. A crash before the syncfs returns may leave a record
 * on disk whose body is missing or short - for a message no client got a
 * 250 for - and recovery drops such a record (it checks each body's size
 * against its record). LMDB's own integrity holds with NOMETASYNC.
 */
static void write_batch(struct queue *q, struct queue_req *batch,
                        uint64_t *syncs)
{
	char why[160] = "";
	size_t live = 0;
	int r = 0;
	bool indexed = false;

	for (struct queue_req *req = batch; req; req = req->next) {
		const char *part = req->part;
		if (q->sync == QUEUE_SYNC_FSYNC) {
			/* Data before the name, so msg/QID never names a file
			 * whose blocks are not on disk. */
			(*syncs)++;
			if (fdatasync(req->fd) < 0) {
				req->status = io_errno(errno);
				log_err("%s: fdatasync msg/%s: %s", req->qid, part,
				        strerror(-req->status));
				continue;
			}
		}
		if ((req->status = body_place(q, req->fd, part, req->qid))) {
			log_err("%s: cannot place body as msg/%s: %s", req->qid,
			        req->qid, strerror(-req->status));
			continue;
		}
		req->placed = true;
		live++;
	}

	if (live && q->sync == QUEUE_SYNC_FSYNC) {
		(*syncs)++;
		if (fsync(q->msg_fd) < 0) {
			r = io_errno(errno);
			snprintf(why, sizeof why, "fsync msg/: %s", strerror(-r));
		}
		/* LMDB syncs twice per commit: fdatasync of the data file,
		 * then the meta page through an O_DSYNC descriptor. */
		if (r == 0) {
			*syncs += 2;
			r = index_batch(q, batch, why, sizeof why);
		}
	} else if (live) {
		*syncs += 2;   /* LMDB's fdatasync of its pages, and the syncfs */
		r = index_batch(q, batch, why, sizeof why);
		indexed = r == 0;
		if (r == 0 && syncfs(q->spool_fd) < 0) {
			r = io_errno(errno);
			snprintf(why, sizeof why, "syncfs: %s", strerror(-r));
		}
		/* The meta page was written without a sync of its own: its
		 * writeback error, like a body's, is checked on its file. */
		int mfd;
		if (r == 0 && q->env && mdb_env_get_fd(q->env, &mfd) == 0 &&
		    sync_file_range(mfd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE |
		                    SYNC_FILE_RANGE_WRITE |
		                    SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
			r = io_errno(errno);
			snprintf(why, sizeof why, "index writeback: %s", strerror(-r));
		}
		if (r == 0)
			check_bodies(batch);
	}

	/* Closed here, after the sync: fdatasync needs the descriptor, and
	 * close(2) on the loop thread could be the one to block or to see a
	 * writeback error that belongs to the sync. */
	for (struct queue_req *req = batch; req; req = req->next) {
		if (close(req->fd) < 0 && errno != EINTR)
			log_warn("%s: close body: %s", req->qid, strerror(errno));
		req->fd = -1;
	}

	if (r && indexed) {
		/* The sync failed after the commit: none of the batch is
		 * known to be durable. */
		for (struct queue_req *req = batch; req; req = req->next)
			if (req->status == 0)
				req->status = r;
	}
	bool failures = false;
	for (struct queue_req *req = batch; req; req = req->next)
		failures |= req->indexed && req->status != 0;
	if (failures)
		unindex(q, batch);

	for (struct queue_req *req = batch; req; req = req->next) {
		if (req->status == 0 && r == 0)
			continue;
		/* Take the body back out so nothing half-written stays in
		 * the queue. If this unlink is lost in a crash, recovery
		 * removes the body (it has no record). */
		if (req->status == 0)
			req->status = r;
		log_err("%s: commit failed (%s)", req->qid,
		        why[0] ? why : strerror(-req->status));
		unlink_part(q, req->qid, req->placed ? req->qid : req->part);
	}
	if (failures) {
		/* A record and a body that did reach the disk must not outlive
		 * the 451/452 the client is about to get: a corrupt body with
		 * the recorded size would pass recovery. Rare; sync it all. */
		int rc = q->env && !q->env_broken ? mdb_env_sync(q->env, 1) : 0;
		if (rc) {
			log_err("queue: index sync after a failed batch: %s",
			        mdb_strerror(rc));
			env_failed(q, rc);
		}
		if (fsync(q->msg_fd) < 0)
			log_err("queue: fsync msg/ after a failed batch: %s",
			        strerror(errno));
	}
}

/* Commit delay (like PostgreSQL's commit_delay): when the last batch
 * showed concurrent senders, linger while their commits keep arriving, a
 * gap of at most GATHER_GAP_US each and commit_delay_us in all. Sessions
 * whose 250 went out with the last batch are then in MAIL..DATA again and
 * join this batch instead of waiting for the next: bigger batches, fewer
 * syncs per message, and less queueing behind a sync. A lone sender (last
 * batch of one) never waits. Called and returns with q->mu held. */
#define GATHER_GAP_US 150

static uint64_t now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

static void gather(struct queue *q)
{
	struct timespec start, now, until;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		uint64_t seen = q->npushed;
		clock_gettime(CLOCK_MONOTONIC, &now);
		int64_t spent = (now.tv_sec - start.tv_sec) * 1000000 +
		                (now.tv_nsec - start.tv_nsec) / 1000;
		int64_t wait = (int64_t)q->commit_delay_us - spent;
		if (wait <= 0)
			return;
		if (wait > GATHER_GAP_US)
			wait = GATHER_GAP_US;
		until = now;
		until.tv_nsec += wait * 1000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		while (q->npushed == seen && !q->stop &&
		       pthread_cond_timedwait(&q->cond, &q->mu, &until) == 0)
			;
		if (q->npushed == seen || q->stop)
			return;
	}
}

/* Puts or deletes the schedule entry of a message due at `due` (-1:
 * none). A missing entry on delete is no error. */
static int sched_set(struct queue *q, MDB_txn *txn, const char *qid,
                     int64_t due, bool put)
{
	if (due < 0)
		return 0;
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	queue_sched_key(due, qid, sk);
	MDB_val skv = {sizeof sk, sk}, empty = {0, NULL};
	int rc = put ? mdb_put(txn, q->dbi_sched, &skv, &empty, 0)
	             : mdb_del(txn, q->dbi_sched, &skv, NULL);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The schedule time of the record stored under qid, or -1 (HOLD, nothing
 * left, or undecodable). */
static int64_t stored_due(const char *qid, const MDB_val *v)
{
	struct queue_msg *m;
	if (queue_msg_decode(qid, v->mv_data, v->mv_size, &m))
		return -1;
	int64_t due = m->state == QUEUE_MSG_ACTIVE ? queue_msg_due(m) : -1;
	queue_msg_free(m);
	return due;
}

/* OP_RCPTS inside apply_ops' transaction: the stored record (v), merged
 * with the op's changes, written back with its "sched" entry moved. The
 * op's own failures are its status (the transaction goes on); returns an
 * LMDB code only when the transaction must fail. */
static int apply_rcpts(struct queue *q, MDB_txn *txn, struct queue_op *op,
                       const MDB_val *v)
{
	struct queue_msg *m;
	int d = queue_msg_decode(op->qid, v->mv_data, v->mv_size, &m);
	if (d) {
		log_err("%s: index record cannot be decoded; recipients not "
		        "updated", op->qid);
		op->status = d == -ENOMEM ? -ENOMEM : -EIO;
		return 0;
	}
	int64_t old = m->state == QUEUE_MSG_ACTIVE ? queue_msg_due(m) : -1;
	uint8_t *rec = NULL;
	size_t len = 0;
	int r = queue_msg_apply_rcpts(m, op->ch, op->nch);
	if (r == 0)
		r = queue_msg_encode(m, &rec, &len);
	if (r) {
		op->status = r;
		queue_msg_free(m);
		return 0;
	}
	int64_t due = queue_msg_due(m);
	int64_t sched = m->state == QUEUE_MSG_ACTIVE ? due : -1;
	queue_msg_free(m);
	MDB_val k = {QUEUE_ID_LEN, op->qid}, nv = {len, rec};
	int rc = sched_set(q, txn, op->qid, old, false);
	if (rc == 0)
		rc = mdb_put(txn, q->dbi_msg, &k, &nv, 0);
	if (rc == 0)
		rc = sched_set(q, txn, op->qid, sched, true);
	free(rec);
	if (rc == 0 && due < 0)
		op->status = QUEUE_RCPTS_DONE;
	return rc;
}

/* "stats" key: granularity, then the bucket start, 8 bytes big-endian. */
static void stats_key(uint8_t k[QUEUE_STATS_KEY_LEN], char gran, int64_t t)
{
	uint64_t u = t < 0 ? 0 : (uint64_t)t;
	k[0] = (uint8_t)gran;
	for (int i = 0; i < 8; i++)
		k[1 + i] = (uint8_t)(u >> (56 - 8 * i));
}

/* Merges sb into the bucket (gran, start). An LMDB code. */
static int stats_merge(struct queue *q, MDB_txn *txn, char gran,
                       int64_t start, const struct queue_stats_bucket *sb)
{
	uint8_t kb[QUEUE_STATS_KEY_LEN];
	stats_key(kb, gran, start);
	MDB_val k = {sizeof kb, kb}, v;
	struct queue_stats_bucket b;
	memset(&b, 0, sizeof b);
	int rc = mdb_get(txn, q->dbi_stats, &k, &v);
	if (rc == 0 && queue_stats_decode(v.mv_data, v.mv_size, &b))
		log_warn("stats: the %s bucket at %" PRId64 " cannot be decoded; "
		         "it starts again from these counts",
		         gran == QUEUE_STATS_HOUR ? "hour" : "day", start);
	if (rc && rc != MDB_NOTFOUND)
		return rc;
	uint8_t *enc = NULL;
	size_t len = 0;
	int r = queue_stats_bucket_merge(&b, sb);
	if (r == 0)
		r = queue_stats_encode(&b, &enc, &len);
	queue_stats_bucket_reset(&b);
	if (r)
		return r == -ENOMEM ? ENOMEM : MDB_BAD_VALSIZE;
	MDB_val nv = {len, enc};
	rc = mdb_put(txn, q->dbi_stats, &k, &nv, 0);
	free(enc);
	return rc;
}

/* Deletes the buckets of granularity gran that start before `before`
 * (from the front: keys sort by time), at most STATS_PRUNE_MAX. */
#define STATS_PRUNE_MAX 256
static int stats_prune(struct queue *q, MDB_txn *txn, char gran,
                       int64_t before)
{
	MDB_cursor *cur;
	uint8_t kb[QUEUE_STATS_KEY_LEN];
	stats_key(kb, gran, 0);
	MDB_val k = {sizeof kb, kb}, v;
	int rc = mdb_cursor_open(txn, q->dbi_stats, &cur);
	if (rc)
		return rc;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	for (int n = 0; rc == 0 && n < STATS_PRUNE_MAX; n++) {
		const uint8_t *p = k.mv_data;
		if (k.mv_size < QUEUE_STATS_KEY_LEN || p[0] != (uint8_t)gran)
			break;
		uint64_t t = 0;
		for (int i = 0; i < 8; i++)
			t = t << 8 | p[1 + i];
		if (t >= (uint64_t)(before < 0 ? 0 : before))
			break;
		if ((rc = mdb_cursor_del(cur, 0)) == 0)
			rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
		/* After a delete the cursor stands on the next entry (or
		 * past the end: MDB_NOTFOUND). */
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* OP_STATS inside apply_ops' transaction, in a nested one: a stats write
 * that fails (a full map) is logged and its counts dropped, and the
 * delivery changes of the batch go on. Returns an LMDB code only when
 * the outer transaction must fail. */
static int apply_stats(struct queue *q, MDB_txn *txn, struct queue_op *op)
{
	MDB_txn *child = NULL;
	int64_t hour = op->stats_hour, day = queue_stats_day(op->stats_hour);
	int rc = mdb_txn_begin(q->env, txn, 0, &child);
	if (rc == 0)
		rc = stats_merge(q, child, QUEUE_STATS_HOUR, hour, op->sb);
	if (rc == 0)
		rc = stats_merge(q, child, QUEUE_STATS_DAY, day, op->sb);
	if (rc == 0)
		rc = stats_prune(q, child, QUEUE_STATS_HOUR,
		                 hour - (QUEUE_STATS_HOURS - 1) * INT64_C(3600));
	if (rc == 0)
		rc = stats_prune(q, child, QUEUE_STATS_DAY,
		                 day - (QUEUE_STATS_DAYS - 1) * INT64_C(86400));
	if (rc == 0)
		rc = mdb_txn_commit(child);
	else if (child)
		mdb_txn_abort(child);
	if (rc) {
		log_warn("stats: cannot record the counts of the hour at %" PRId64
		         ": %s; they are dropped", hour, mdb_strerror(rc));
		op->status = queue_mdb_errno(rc);
	}
	return 0;
}

/* Applies a list of changes in one write transaction and makes it
 * durable (a synchronous commit; in syncfs mode the meta page needs its
 * own sync), then unlinks the bodies of removed messages: a crash before
 * the unlink leaves a body without a record, which recovery removes.
 * Returns the last op. */
static struct queue_op *apply_ops(struct queue *q, struct queue_op *ops,
                                  uint64_t *syncs)
{
	struct queue_op *last = NULL;
	/* NULL: a failed mdb_txn_begin (MDB_MAP_RESIZED when another process
	 * grew the map) leaves it unset, and aborting garbage crashed. */
	MDB_txn *txn = NULL;
	int rc = env_ready(q);
	if (rc == 0 && (rc = mdb_txn_begin(q->env, NULL, 0, &txn)))
		env_failed(q, rc);
	for (struct queue_op *op = ops; op; op = op->next) {
		last = op;
		if (rc)
			continue;
		if (op->kind == OP_QUOTA) {
			/* Its outcome (charged or over quota) is in op->quota;
			 * rc only when the transaction itself failed. */
			rc = queue_quota_apply(op->quota, txn, q->dbi_quota);
			continue;
		}
		if (op->kind == OP_STATS) {
			rc = apply_stats(q, txn, op);
			continue;
		}
		MDB_val k = {QUEUE_ID_LEN, op->qid}, v;
		int g = mdb_get(txn, q->dbi_msg, &k, &v);
		if (g == MDB_NOTFOUND) {
			op->status = -ENOENT;
			continue;
		}
		if (g) {
			rc = g;
			continue;
		}
		if (op->kind == OP_RCPTS) {
			rc = apply_rcpts(q, txn, op, &v);
			continue;
		}
		if ((rc = sched_set(q, txn, op->qid, stored_due(op->qid, &v), false)))
			continue;
		if (op->kind == OP_REMOVE) {
			rc = mdb_del(txn, q->dbi_msg, &k, NULL);
		} else {
			MDB_val nv = {op->reclen, op->rec};
			if ((rc = mdb_put(txn, q->dbi_msg, &k, &nv, 0)) == 0)
				rc = sched_set(q, txn, op->qid, op->due, true);
		}
	}
	if (rc == 0) {
		*syncs += 2;
		rc = mdb_txn_commit(txn);
		/* Without MDB_NOMETASYNC the commit synced it all already. */
		if (rc == 0 && q->sync == QUEUE_SYNC_SYNCFS) {
			(*syncs)++;
			rc = mdb_env_sync(q->env, 1);
		}
		if (rc)
			env_failed(q, rc);
	} else if (txn) {
		mdb_txn_abort(txn);
	}
	if (rc) {
		log_err("queue: cannot record changes: %s", mdb_strerror(rc));
		for (struct queue_op *op = ops; op; op = op->next)
			if (op->status >= 0)   /* QUEUE_RCPTS_DONE too */
				op->status = queue_mdb_errno(rc);
		return last;
	}
	for (struct queue_op *op = ops; op; op = op->next)
		if (op->kind == OP_REMOVE && op->status == 0 &&
		    unlinkat(q->msg_fd, op->qid, 0) < 0 && errno != ENOENT)
			log_err("%s: cannot remove msg/%s: %s", op->qid, op->qid,
			        strerror(errno));
	return last;
}

/* Recovery (with recover_async) takes turns with the work below: a step
 * runs when nothing else waits, or after each batch or set of changes,
 * so neither starves the other. Called and returns with q->mu held. */
static void writer_recover(struct queue *q, bool *turn)
{
	/* While the index is closed (a failed write, reopen pending) no
	 * step can run: the idle writer reopens it first. */
	if (q->rec.phase == RECOVER_DONE || q->stop || q->env_broken ||
	    (!*turn && (q->pending || q->ops)) || recover_gated(q))
		return;
	*turn = false;
	pthread_mutex_unlock(&q->mu);
	uint64_t syncs = 0;
	bool index_done = false;
	struct recovery saved = q->rec;
	int r = recover_step(q, &index_done, &syncs);
	if (r && q->env_broken && saved.phase != RECOVER_BODIES) {
		/* The index failed under an index step: nothing of it was
		 * committed, so the same step runs again once the index is
		 * reopened (a disk fault must not turn delivery off). The
		 * bodies phase reads a directory and cannot go back; it is
		 * not restored: a failed read there only leaves an orphan
		 * for the next start. */
		q->rec.phase = saved.phase;
		memcpy(q->rec.key, saved.key, sizeof q->rec.key);
		q->rec.keylen = saved.keylen;
		q->rec.nmsg = saved.nmsg;
		q->rec.repaired = saved.repaired;
		q->rec.upgraded = saved.upgraded;
		r = 0;
	} else if (r && q->env_broken) {
		r = 0;
	}
	if (r) {
		/* Delivery stays off (the index may be inconsistent); mail
		 * is still accepted and kept. A restart tries again. */
		log_err("recovery: stopped; delivery stays off until relayd "
		        "restarts");
		q->rec.phase = RECOVER_DONE;
	}
	/* Its syncs count (they are the writer's); its time is not in
	 * busy_us, which is about making mail durable. */
	pthread_mutex_lock(&q->mu);
	q->st.syncs += syncs;
	if (index_done) {
		q->index_ready = true;
		pthread_mutex_unlock(&q->mu);
		int e = uv_async_send(&q->async);
		if (e < 0)
			log_err("queue: uv_async_send: %s", uv_strerror(e));
		pthread_mutex_lock(&q->mu);
	}
}

/* Sleeps until there is work; while recovery waits at its test gate,
 * looks again every 50 ms. Called and returns with q->mu held. */
static void writer_wait(struct queue *q)
{
	while (!q->pending && !q->discard && !q->ops && !q->stop) {
		if (q->rec.phase != RECOVER_DONE && !q->env_broken &&
		    !recover_gated(q))
			return;
		/* Records of failed commits are still in the index, or the
		 * index is closed: try again within a second rather than at
		 * the next commit, which may be hours away while the
		 * scheduler keeps finding them. */
		bool retry = q->nunindex_left > 0 || q->env_broken;
		if (q->rec.phase == RECOVER_DONE && !retry) {
			pthread_cond_wait(&q->cond, &q->mu);
			continue;
		}
		/* A gated recovery (tests) is looked at every 50 ms. */
		uint64_t wait_us = q->rec.phase != RECOVER_DONE && !retry
		                   ? 50 * 1000 : UNINDEX_RETRY_US;
		struct timespec t;
		us_timespec(now_us() + wait_us, &t);
		if (pthread_cond_timedwait(&q->cond, &q->mu, &t) != ETIMEDOUT ||
		    !retry)
			continue;
		pthread_mutex_unlock(&q->mu);
		if (q->env_broken)
			env_reopen(q);
		unindex_retry(q);
		pthread_mutex_lock(&q->mu);
	}
}

static void *writer_main(void *arg)
{
	struct queue *q = arg;
	uint64_t last_batch = 0;
	bool recover_turn = true;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		writer_wait(q);
		writer_recover(q, &recover_turn);
		if (!q->pending && !q->discard && !q->ops && !q->stop)
			continue;
		recover_turn = true;
		if (q->ops) {
			/* Changes to committed messages: one transaction for all
			 * of them, ahead of new commits (they are few and free
			 * the space new ones need). */
			struct queue_op *ops = q->ops;
			q->ops = NULL;
			q->ops_tail = &q->ops;
			pthread_mutex_unlock(&q->mu);
			uint64_t t0 = now_us(), syncs = 0;
			unindex_retry(q);
			struct queue_op *last = apply_ops(q, ops, &syncs);
			/* Reopened now, not at the next write: readers (the
			 * scheduler) get a working index back at once. */
			if (q->env_broken)
				env_reopen(q);
			uint64_t busy = now_us() - t0;
			pthread_mutex_lock(&q->mu);
			*q->ops_done_tail = ops;
			q->ops_done_tail = &last->next;
			q->st.syncs += syncs;
			q->st.busy_us += busy;
			pthread_mutex_unlock(&q->mu);
			int r = uv_async_send(&q->async);
			if (r < 0)
				log_err("queue: uv_async_send: %s", uv_strerror(r));
			pthread_mutex_lock(&q->mu);
			continue;
		}
		if (!q->pending && q->discard) {
			/* Removals only when no commit waits: commits first. */
			struct queue_discard *d = q->discard;
			q->discard = NULL;
			q->ndiscard = 0;
			pthread_mutex_unlock(&q->mu);
			while (d) {
				struct queue_discard *next = d->next;
				if (d->fd >= 0)
					close(d->fd);
				unlink_part(q, d->qid, d->part);
				free(d);
				d = next;
			}
			pthread_mutex_lock(&q->mu);
			continue;
		}
		if (!q->pending)
			break;  /* stopping, and everything queued is done */
		if (last_batch > 1 && q->commit_delay_us && !q->stop) {
			uint64_t t0 = now_us();
			gather(q);
			q->st.gather_us += now_us() - t0;
		}

		/* Group commit: take everything queued so far as one batch.
		 * Requests arriving while we sync it wait on the pending list
		 * and become the next batch. */
		struct queue_req *batch = q->pending;
		q->pending = NULL;
		q->pending_tail = &q->pending;
		pthread_mutex_unlock(&q->mu);

		uint64_t syncs = 0, ok = 0, n = 0;
		struct queue_req *last = NULL;
		uint64_t t0 = now_us();
		unindex_retry(q);
		write_batch(q, batch, &syncs);
		if (q->env_broken)
			env_reopen(q);
		uint64_t busy = now_us() - t0;
		for (struct queue_req *req = batch; req; req = req->next) {
			n++;
			ok += req->status == 0;
			last = req;
		}
		last_batch = n;

		pthread_mutex_lock(&q->mu);
		*q->done_tail = batch;
		q->done_tail = &last->next;
		q->st.batches++;
		q->st.committed += ok;
		q->st.failed += n - ok;
		q->st.syncs += syncs;
		q->st.busy_us += busy;
		pthread_mutex_unlock(&q->mu);

		/* The handle outlives this thread: queue_close joins us first. */
		int r = uv_async_send(&q->async);
		if (r < 0)
			log_err("queue: uv_async_send: %s", uv_strerror(r));

		pthread_mutex_lock(&q->mu);
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

/* ---- completions (loop thread) ---------------------------------------- */

static void run_done(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	struct queue_req *list = q->done;
	q->done = NULL;
	q->done_tail = &q->done;
	pthread_mutex_unlock(&q->mu);

	bool committed = false;
	while (list) {
		struct queue_req *req = list;
		list = req->next;
		committed |= req->status == 0;
		req->cb(req->arg, req->status);
		free(req->rec);
		free(req);
	}

	pthread_mutex_lock(&q->mu);
	struct queue_op *ops = q->ops_done;
	q->ops_done = NULL;
	q->ops_done_tail = &q->ops_done;
	/* After a reopen the scheduler reads the schedule again: a scan that
	 * failed while the index was down left nothing armed. */
	committed |= q->reopened;
	q->reopened = false;
	pthread_mutex_unlock(&q->mu);
	while (ops) {
		struct queue_op *op = ops;
		ops = op->next;
		if (op->cb)
			op->cb(op->arg, op->status);
		op_free(op);
	}
	/* Recovery made the index consistent: delivery may start. */
	pthread_mutex_lock(&q->mu);
	bool ready = q->index_ready && !q->ready_told;
	pthread_mutex_unlock(&q->mu);
	if (ready)
		q->ready_told = true;
	if ((committed || ready) && q->notify && !q->closing)
		q->notify(q->notify_arg);
}

bool queue_recovered(const struct queue *q)
{
	return q->ready_told;
}

static void async_cb(uv_async_t *h)
{
	run_done(h->data);
}

/* ---- open and close --------------------------------------------------- */

static void queue_free(struct queue *q)
{
	if (q->rec.dir)
		closedir(q->rec.dir);
	free(q->rec.gate);
	if (q->env)
		mdb_env_close(q->env);
	free(q->spool_path);
	free(q->unindex_left);
	queue_stats_bucket_reset(&q->stats);
	pthread_rwlock_destroy(&q->envlock);
	if (q->msg_fd >= 0)
		close(q->msg_fd);
	if (q->tmp_fd >= 0)
		close(q->tmp_fd);
	if (q->spool_fd >= 0)
		close(q->spool_fd);
	pthread_cond_destroy(&q->cond);
	pthread_cond_destroy(&q->opener_cond);
	pthread_mutex_destroy(&q->mu);
	free(q);
}

static void closed_cb(uv_handle_t *h)
{
	struct queue *q = h->data;
	void (*done_cb)(void *) = q->done_cb;
	void *done_arg = q->done_arg;
	queue_free(q);
	if (done_cb)
		done_cb(done_arg);
}

void queue_close(struct queue *q, void (*done_cb)(void *arg), void *arg)
{
	RELAY_ASSERT(!q->closing);
	/* The counts not flushed yet: applied before the writer stops. */
	(void)stats_flush(q);
	q->closing = true;
	q->done_cb = done_cb;
	q->done_arg = arg;

	pthread_mutex_lock(&q->mu);
	q->stop = true;
	pthread_cond_signal(&q->cond);
	pthread_cond_signal(&q->opener_cond);
	pthread_mutex_unlock(&q->mu);

	/* Blocks the loop only for the batches already handed over: this is
	 * shutdown, and each of them is owed an answer. */
	int r = pthread_join(q->writer, NULL);
	if (r)
		log_err("queue: pthread_join: %s", strerror(r));
	q->writer_running = false;
	if (q->rec.phase != RECOVER_DONE)
		log_info("recovery: interrupted by shutdown in the %s phase; "
		         "the next start does it again",
		         recover_phase_names[q->rec.phase]);
	if (q->opener_running) {
		pthread_join(q->opener, NULL);
		q->opener_running = false;
	}
	/* Unused pool files: nobody else can take them now. */
	for (size_t i = 0; i < q->npool; i++)
		discard_body(q, q->pool[i].fd, "queue", q->pool[i].part);
	q->npool = 0;
	run_done(q);
	uv_close((uv_handle_t *)&q->async, closed_cb);
}

void queue_set_commit_delay(struct queue *q, uint64_t us)
{
	pthread_mutex_lock(&q->mu);
	q->commit_delay_us = us;
	pthread_mutex_unlock(&q->mu);
}

void queue_get_stats(const struct queue *q, struct queue_stats *st)
{
	struct queue *mq = (struct queue *)q;   /* the mutex is not data */
	pthread_mutex_lock(&mq->mu);
	*st = q->st;
	pthread_mutex_unlock(&mq->mu);
}

void queue_new_id(struct queue *q, char out[QUEUE_ID_SIZE])
{
	struct timespec ts;
	uint64_t us = 0;
	/* Wall clock, not uv_now(): ids must also order across restarts. */
	if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec > 0)
		us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	queue_idgen_next(&q->idgen, us, out);
}

/* mkdir that accepts an existing directory; *created says whether the
 * parent's entry changed (and so needs an fsync). */
static int mkdir_at(int dirfd, const char *name, bool *created)
{
	if (mkdirat(dirfd, name, 0700) == 0) {
		*created = true;
		return 0;
	}
	return errno == EEXIST ? 0 : -errno;
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? io_errno(errno) : 0;
	close(fd);
	return r;
}

static int open_dirs(struct queue *q, const char *spool)
{
	bool created = false;
	int r = mkdir_at(AT_FDCWD, spool, &created);
	if (r)
		goto fail;
	if (created) {
		/* The spool's own entry must survive a crash too. */
		char tmp[PATH_MAX];
		snprintf(tmp, sizeof tmp, "%s", spool);
		r = fsync_path(dirname(tmp));
		if (r)
			goto fail;
	}
	q->spool_fd = open(spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q->spool_fd < 0) {
		r = -errno;
		goto fail;
	}
	created = false;
	if ((r = mkdir_at(q->spool_fd, "tmp", &created)) ||
	    (r = mkdir_at(q->spool_fd, "msg", &created)) ||
	    (r = mkdir_at(q->spool_fd, "index", &created)))
		goto fail;
	/* New subdirectories: make their entries durable before any
	 * message relies on them. */
	if (created && fsync(q->spool_fd) < 0) {
		r = io_errno(errno);
		goto fail;
	}
	q->tmp_fd = openat(q->spool_fd, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q->tmp_fd < 0) {
		r = -errno;
		goto fail;
	}
	q->msg_fd = openat(q->spool_fd, "msg", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q->msg_fd < 0) {
		r = -errno;
		goto fail;
	}
	/* One syncfs covers one file system: with msg/ or index/ mounted or
	 * linked elsewhere it would miss them. Fall back to per-file syncs. */
	struct stat sp, sm, si;
	if (q->sync == QUEUE_SYNC_SYNCFS &&
	    (fstat(q->spool_fd, &sp) < 0 || fstat(q->msg_fd, &sm) < 0 ||
	     fstatat(q->spool_fd, "index", &si, 0) < 0 ||
	     sm.st_dev != sp.st_dev || si.st_dev != sp.st_dev)) {
		log_warn("queue: msg/ or index/ is not on the spool's file system; "
		         "using spool_sync = fsync");
		q->sync = QUEUE_SYNC_FSYNC;
	}
	return 0;
fail:
	log_err("queue: cannot set up spool %s: %s", spool, strerror(-r));
	return r;
}

/* reopen: the index exists and was open in this process (env_reopen,
 * under envlock, which the loop's readers wait for): no directory sync,
 * which could hold the loop for as long as a slow disk takes. */
static int open_index(struct queue *q, const char *spool, uint64_t map_size,
                      bool reopen)
{
	char path[PATH_MAX];
	MDB_txn *txn;
	int dead, rc;

	if (snprintf(path, sizeof path, "%s/index", spool) >= (int)sizeof path) {
		log_err("queue: spool path too long: %s", spool);
		return -ENAMETOOLONG;
	}
	if ((rc = mdb_env_create(&q->env)))
		goto fail;
	if ((rc = mdb_env_set_maxdbs(q->env, QUEUE_MAXDBS)) ||
	    (rc = mdb_env_set_mapsize(q->env, map_size ? map_size : DEFAULT_MAP_SIZE)))
		goto fail;
	/* Never MDB_NOSYNC: LMDB syncs its pages before the meta page that
	 * makes them current, which is the index's integrity. In syncfs mode
	 * the meta page itself is made durable by the batch's syncfs, before
	 * any 250 (MDB_NOMETASYNC; see write_batch). MDB_NOTLS: read
	 * transactions may run on threads other than the one that began them. */
	unsigned flags = MDB_NOTLS;
	if (q->sync == QUEUE_SYNC_SYNCFS)
		flags |= MDB_NOMETASYNC;
	if ((rc = mdb_env_open(q->env, path, flags, 0600)))
		goto fail;
	/* LMDB syncs the files it writes but not the directory it may just
	 * have created data.mdb in: make that entry durable before any
	 * commit relies on it. */
	int r = reopen ? 0 : fsync_path(path);
	if (r) {
		log_err("queue: cannot sync %s: %s", path, strerror(-r));
		return r;
	}
	/* Free reader slots left by crashed processes (a killed relayctl),
	 * which would otherwise pin old pages forever. */
	if ((rc = mdb_reader_check(q->env, &dead)))
		goto fail;
	if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)))
		goto fail;
	if ((rc = mdb_dbi_open(txn, QUEUE_DB_MSG, MDB_CREATE, &q->dbi_msg)) ||
	    (rc = mdb_dbi_open(txn, QUEUE_DB_SCHED, MDB_CREATE, &q->dbi_sched))) {
		mdb_txn_abort(txn);
		goto fail;
	}
	/* Quota counters (queue_quota.c): a DB of their own in the same
	 * environment, so a charge can share a transaction with other ops. */
	if ((rc = mdb_dbi_open(txn, QUEUE_DB_QUOTA, MDB_CREATE, &q->dbi_quota))) {
		mdb_txn_abort(txn);
		goto fail;
	}
	/* Format 2: "meta" (the index format, written by recovery once every
	 * record is in it) and "stats" (the statistics history, queue_stats.h). */
	if ((rc = mdb_dbi_open(txn, QUEUE_DB_META, MDB_CREATE, &q->dbi_meta)) ||
	    (rc = mdb_dbi_open(txn, QUEUE_DB_STATS, MDB_CREATE, &q->dbi_stats))) {
		mdb_txn_abort(txn);
		goto fail;
	}
	MDB_val fk = {strlen(QUEUE_META_FORMAT), QUEUE_META_FORMAT}, fv;
	rc = mdb_get(txn, q->dbi_meta, &fk, &fv);
	if (rc == MDB_NOTFOUND) {
		q->format = 0;
	} else if (rc) {
		mdb_txn_abort(txn);
		goto fail;
	} else if (fv.mv_size != 1 || ((uint8_t *)fv.mv_data)[0] > QUEUE_FORMAT) {
		mdb_txn_abort(txn);
		log_err("queue: index %s is in format %u, newer than this relayd "
		        "reads (%d); run the release that wrote it", path,
		        fv.mv_size == 1 ? ((uint8_t *)fv.mv_data)[0] : 255u,
		        QUEUE_FORMAT);
		return -EPROTO;
	} else {
		q->format = ((uint8_t *)fv.mv_data)[0];
	}
	if ((rc = mdb_txn_commit(txn)))
		goto fail;
	return 0;
fail:
	log_err("queue: cannot open index %s: %s", path, mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* ---- startup recovery ------------------------------------------------- */
/*
 * Recovery restores the spool's rules after a crash: index records
 * without their body (or with a body of another size) are dropped,
 * schedule entries agree with their records, finished records are
 * removed, and files under msg/ and tmp/ that belong to no message are
 * removed. It runs in steps of at most RECOVER_STEP items, each its own
 * short LMDB transaction, through the phases below.
 *
 * relayd runs it on the writer thread after queue_open() has returned
 * (opts.recover_async), so listening never waits for a big spool: the
 * writer alternates recovery steps with commit batches and changes, and
 * queue_recovered() turns true once the index phases are done (delivery
 * waits for that; the msg/ pass that follows is cleanup only). Without
 * recover_async, queue_open() runs every step itself before returning.
 *
 * Why a message accepted while recovery runs is never taken for an
 * orphan or an unfinished body:
 * - Ids: `boundary` is an id drawn from the generator in queue_open(),
 *   before any other; every id this run gives out is above it. The index
 *   phases look only at records below the boundary (a new record is
 *   consistent by construction: the writer commits it with its entry).
 * - Bodies being received are unnamed O_TMPFILE files (nothing to find),
 *   or msg/.QID with QID above the boundary, or pool files named
 *   ".p" + boundary + a counter: queue_recover_classify() keeps all of
 *   them. Only dot files of earlier runs are removed.
 * - A body gets its msg/QID name only on the writer thread, inside
 *   write_batch(), which returns with its record committed or with the
 *   body unlinked again. Recovery steps run on the same thread between
 *   batches, and the msg/ pass opens its read transaction per step,
 *   after the last batch's commit: a placed body always has its record
 *   by then. A msg/QID above the boundary without a record is therefore
 *   not expected at all; it is kept and logged, never removed.
 * - Changes (delivery results, relayctl hold/release/delete) go through
 *   the same thread; each step re-reads what it checks in its own
 *   transaction, so it sees them. Delivery itself starts only once the
 *   index phases are done.
 */

static void log_removed(const char *dir, const char *name, const char *what)
{
	if (queue_id_valid(name)) {
		log_warn("%s: removed %s", name, what);
	} else {
		char esc[128];
		log_warn("queue: removed stray file %s/%s", dir,
		         log_escape(esc, sizeof esc, name, strlen(name)));
	}
}

/* Every tmp/ file is a body whose commit never completed: no client got
 * a 250 for it. relayd puts nothing in tmp/ any more, so one step. */
static int recover_tmp(struct queue *q)
{
	int fd = openat(q->tmp_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		int r = -errno;
		if (fd >= 0)
			close(fd);
		log_err("queue: cannot read tmp/: %s", strerror(-r));
		return r;
	}
	int r = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (unlinkat(q->tmp_fd, e->d_name, 0) < 0 && errno != ENOENT) {
			r = -errno;
			log_err("queue: cannot remove tmp/%s: %s", e->d_name,
			        strerror(-r));
			break;
		}
		log_removed("tmp", e->d_name, "unfinished body");
		q->rec.repaired++;
	}
	closedir(d);
	return r;
}

static bool key_qid(const MDB_val *k, char qid[QUEUE_ID_SIZE])
{
	if (k->mv_size != QUEUE_ID_LEN)
		return false;
	memcpy(qid, k->mv_data, QUEUE_ID_LEN);
	qid[QUEUE_ID_LEN] = '\0';
	return queue_id_valid(qid);
}

/* Positions cur on the first key after the step's resume point. */
static int recover_seek(struct recovery *rc_, MDB_cursor *cur, MDB_val *k,
                        MDB_val *v)
{
	if (rc_->keylen == 0)
		return mdb_cursor_get(cur, k, v, MDB_FIRST);
	k->mv_size = rc_->keylen;
	k->mv_data = rc_->key;
	int rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
	if (rc == 0 && k->mv_size == rc_->keylen &&
	    memcmp(k->mv_data, rc_->key, rc_->keylen) == 0)
		rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
	return rc;
}

static void recover_mark(struct recovery *rc_, const MDB_val *k)
{
	rc_->keylen = k->mv_size < sizeof rc_->key ? k->mv_size
	                                           : sizeof rc_->key;
	memcpy(rc_->key, k->mv_data, rc_->keylen);
}

/* True when the key is a record of this run (at or above the boundary):
 * the index phases stop there. */
static bool above_boundary(const struct queue *q, const MDB_val *k)
{
	size_t n = k->mv_size < QUEUE_ID_LEN ? k->mv_size : QUEUE_ID_LEN;
	int c = memcmp(k->mv_data, q->boundary, n);
	return c > 0 || (c == 0 && k->mv_size >= QUEUE_ID_LEN);
}

/* One item of RECOVER_RECORDS: keeps the record (0, *del false), or asks
 * for it to be deleted (*del true), or fails (-errno). */
static int check_record(struct queue *q, const MDB_val *k, const MDB_val *v,
                        bool *del)
{
	char qid[QUEUE_ID_SIZE];
	*del = true;
	if (!key_qid(k, qid)) {
		char esc[64];
		log_warn("queue: dropped index record with bad key %s",
		         log_escape(esc, sizeof esc, k->mv_data, k->mv_size));
		return 0;
	}
	struct stat st;
	if (fstatat(q->msg_fd, qid, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT) {
			int r = -errno;
			log_err("%s: cannot stat msg/%s: %s", qid, qid, strerror(-r));
			return r;
		}
		log_warn("%s: dropped index record without body", qid);
		return 0;
	}
	struct queue_msg *m;
	int d = queue_msg_decode(qid, v->mv_data, v->mv_size, &m);
	/* A record whose body is shorter or longer than it says was
	 * committed in the window before its batch's syncfs returned: no
	 * 250 went out for it. */
	bool short_body = d == 0 && (uint64_t)st.st_size != m->size;
	if (d == 0)
		queue_msg_free(m);
	else  /* kept: dropping it would lose the mail */
		log_warn("%s: index record cannot be decoded: %s", qid,
		         strerror(-d));
	if (!short_body) {
		*del = false;
		q->rec.nmsg++;
		return 0;
	}
	log_warn("%s: dropped index record: body has %lld bytes, not the size "
	         "recorded (unfinished commit)", qid, (long long)st.st_size);
	if (unlinkat(q->msg_fd, qid, 0) < 0 && errno != ENOENT)
		log_err("%s: cannot remove msg/%s: %s", qid, qid, strerror(errno));
	return 0;
}

/* One item of RECOVER_SCHED: *del when the entry is not the one its
 * record's queue_msg_due() gives (or the record is gone). */
static int check_entry(struct queue *q, MDB_txn *txn, const MDB_val *k,
                       bool *del)
{
	*del = true;
	if (k->mv_size != QUEUE_SCHED_KEY_LEN)
		return 0;
	MDB_val mk = {QUEUE_ID_LEN, (uint8_t *)k->mv_data + 8}, mv;
	int rc = mdb_get(txn, q->dbi_msg, &mk, &mv);
	if (rc == MDB_NOTFOUND)
		return 0;  /* the record's own log line said why */
	if (rc)
		return rc;
	char qid[QUEUE_ID_SIZE];
	uint8_t want[QUEUE_SCHED_KEY_LEN];
	memcpy(qid, mk.mv_data, QUEUE_ID_LEN);
	qid[QUEUE_ID_LEN] = '\0';
	int64_t due = stored_due(qid, &mv);
	queue_sched_key(due, qid, want);
	if (due >= 0 && memcmp(want, k->mv_data, sizeof want) == 0) {
		*del = false;
		return 0;
	}
	/* A repair like any other: one log line, counted. */
	log_warn("%s: dropped a stale schedule entry", qid);
	q->rec.repaired++;
	return 0;
}

/* One item of RECOVER_RESTORE: a record with nothing left to deliver is
 * finished business (*del, and its body goes); an ACTIVE one gets its
 * entry if it has none. A record in an older format is rewritten in the
 * current one (the in-place upgrade: one record at a time, each readable
 * in either format, so a crash anywhere leaves a spool the next start
 * upgrades further). */
static int restore_record(struct queue *q, MDB_txn *txn, MDB_cursor *cur,
                          const MDB_val *k, const MDB_val *v, bool *del)
{
	char qid[QUEUE_ID_SIZE];
	struct queue_msg *m;
	*del = false;
	if (!key_qid(k, qid) || queue_msg_decode(qid, v->mv_data, v->mv_size, &m))
		return 0;
	int64_t due = queue_msg_due(m);
	bool active = m->state == QUEUE_MSG_ACTIVE;
	bool old = ((const uint8_t *)v->mv_data)[0] != QUEUE_REC_VERSION;
	int rc = 0;
	if (old && due >= 0 && !q->rec.no_upgrade) {
		uint8_t *rec;
		size_t len;
		int r = queue_msg_encode(m, &rec, &len);
		if (r) {
			queue_msg_free(m);
			log_err("%s: cannot upgrade index record: %s", qid,
			        strerror(-r));
			return r == -ENOMEM ? ENOMEM : EINVAL;
		}
		/* The key from our own buffer: k points into the page this
		 * put rewrites (a value of another size moves the node, and
		 * LMDB would copy the key from memory it is shifting). */
		MDB_val kk = {QUEUE_ID_LEN, qid}, nv = {len, rec};
		rc = mdb_cursor_put(cur, &kk, &nv, MDB_CURRENT);
		free(rec);
		if (rc == 0)
			q->rec.upgraded++;
	}
	queue_msg_free(m);
	if (rc)
		return rc;
	if (due < 0) {
		log_warn("%s: removed: every recipient was done", qid);
		if (unlinkat(q->msg_fd, qid, 0) < 0 && errno != ENOENT)
			log_err("%s: cannot remove msg/%s: %s", qid, qid,
			        strerror(errno));
		*del = true;
		q->rec.nmsg--;
		q->rec.repaired++;
		return 0;
	}
	if (!active)
		return 0;
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	queue_sched_key(due, qid, sk);
	MDB_val skv = {sizeof sk, sk}, empty = {0, NULL};
	rc = mdb_put(txn, q->dbi_sched, &skv, &empty, MDB_NOOVERWRITE);
	if (rc == MDB_KEYEXIST)
		return 0;
	if (rc == 0) {
		log_warn("%s: restored its schedule entry", qid);
		q->rec.repaired++;
	}
	return rc;
}

/* One step of an index phase: up to RECOVER_STEP items in one write
 * transaction (synchronous, like every index change; a step that
 * changed nothing writes nothing). *more is false when the phase is
 * finished. */
static int recover_index_step(struct queue *q, bool *more, uint64_t *syncs)
{
	struct recovery *rs = &q->rec;
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	size_t n, changed;
	int r, rc;
	MDB_dbi dbi = rs->phase == RECOVER_SCHED ? q->dbi_sched : q->dbi_msg;
	const struct recovery saved = *rs;   /* for a step done again */

redo:
	n = changed = 0;
	r = 0;
	rc = mdb_txn_begin(q->env, NULL, 0, &txn);
	if (rc || (rc = mdb_cursor_open(txn, dbi, &cur)))
		goto fail;
	*more = false;
	for (rc = recover_seek(rs, cur, &k, &v); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (n == RECOVER_STEP) {
			*more = true;
			break;
		}
		if (rs->phase != RECOVER_SCHED && above_boundary(q, &k))
			break;
		n++;
		recover_mark(rs, &k);
		bool del = false;
		if (rs->phase == RECOVER_RECORDS) {
			if ((r = check_record(q, &k, &v, &del)))
				goto fail;
			rs->repaired += del;
		} else if (rs->phase == RECOVER_SCHED) {
			rc = check_entry(q, txn, &k, &del);
		} else {
			size_t before = rs->repaired + rs->upgraded;
			rc = restore_record(q, txn, cur, &k, &v, &del);
			changed += rs->repaired + rs->upgraded != before;
		}
		if (rc)
			goto fail;
		/* After a delete the cursor already stands on the next item,
		 * and LMDB's MDB_NEXT knows it (C_DEL): nothing is skipped. */
		if (del) {
			if ((rc = mdb_cursor_del(cur, 0)))
				goto fail;
			changed++;
		}
	}
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto fail;
	mdb_cursor_close(cur);
	cur = NULL;
	/* The end of the upgrade: every record below the boundary is in the
	 * current format now (this run's records always were), so the
	 * format is recorded, last, in the same transaction as the last
	 * rewritten records. */
	bool format_set = false;
	if (rs->phase == RECOVER_RESTORE && !*more && q->format != QUEUE_FORMAT &&
	    !rs->no_upgrade) {
		uint8_t f = QUEUE_FORMAT;
		MDB_val fk = {strlen(QUEUE_META_FORMAT), QUEUE_META_FORMAT},
		        fv = {1, &f};
		if ((rc = mdb_put(txn, q->dbi_meta, &fk, &fv, 0)))
			goto fail;
		format_set = true;
		changed++;
	}
	if (changed)
		*syncs += 2;
	if ((rc = mdb_txn_commit(txn)))
		goto fail_committed;
	if (format_set) {
		/* A new spool has no records of an older format to speak of. */
		if (q->format != 0 || rs->upgraded || q->boundary_had_records)
			log_info("queue: index upgraded in place from format %u to "
			         "%d: %zu records rewritten", q->format ? q->format : 1,
			         QUEUE_FORMAT, rs->upgraded);
		q->format = QUEUE_FORMAT;
	}
	return 0;
fail:
	if (cur)
		mdb_cursor_close(cur);
	if (txn)
		mdb_txn_abort(txn);
	if (r)
		return r;
	if (rc == MDB_MAP_FULL && rs->phase == RECOVER_RESTORE &&
	    !rs->no_upgrade) {
		/* Format-2 records are larger: a map that held the format-1
		 * index may not hold it rewritten. Failing here would keep
		 * delivery off for good (every start, every retry, fails the
		 * same way) and the queue could never drain to make room.
		 * Both formats are read, so the step is done again without
		 * rewriting; the format stays unrecorded and a later start,
		 * or any change to a record, finishes the upgrade. */
		log_warn("queue: index upgrade to format %d stopped: the index "
		         "map is full (queue_map_size %" PRIu64 " bytes); %zu "
		         "records rewritten, the others stay in format 1 (read "
		         "as they are) until a start with more room",
		         QUEUE_FORMAT, q->map_size, saved.upgraded);
		rs->no_upgrade = true;
		rs->keylen = saved.keylen;
		memcpy(rs->key, saved.key, sizeof rs->key);
		rs->nmsg = saved.nmsg;
		rs->repaired = saved.repaired;
		rs->upgraded = saved.upgraded;
		txn = NULL;
		cur = NULL;
		goto redo;
	}
fail_committed:
	env_failed(q, rc);   /* LMDB may refuse this environment from now on */
	log_err("queue: recovery: index: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* One step of RECOVER_BODIES: up to RECOVER_STEP directory entries of
 * msg/. A body below the boundary without a record is an orphan: its
 * commit never reached the index, so no client got a 250 for it. */
static int recover_bodies_step(struct queue *q, bool *more)
{
	struct recovery *rs = &q->rec;
	*more = false;
	if (!rs->dir) {
		int fd = openat(q->msg_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		rs->dir = fd < 0 ? NULL : fdopendir(fd);
		if (!rs->dir) {
			int r = -errno;
			if (fd >= 0)
				close(fd);
			log_err("queue: cannot read msg/: %s", strerror(-r));
			return r;
		}
	}
	/* Per step, after the last batch's commit (see above). */
	MDB_txn *txn;
	int rc = mdb_txn_begin(q->env, NULL, MDB_RDONLY, &txn);
	if (rc) {
		log_err("queue: recovery: index: %s", mdb_strerror(rc));
		return queue_mdb_errno(rc);
	}
	int r = 0;
	struct dirent *e;
	for (size_t n = 0; n < RECOVER_STEP; n++) {
		errno = 0;
		if (!(e = readdir(rs->dir))) {
			if (errno) {
				r = -errno;
				log_err("queue: cannot read msg/: %s", strerror(-r));
			}
			goto out;
		}
		const char *what = "unfinished body";
		switch (queue_recover_classify(e->d_name, q->boundary)) {
		case QUEUE_RECOVER_SKIP:
		case QUEUE_RECOVER_KEEP:
			continue;
		case QUEUE_RECOVER_OLD_BODY:
		case QUEUE_RECOVER_NEW_BODY: {
			MDB_val k = {QUEUE_ID_LEN, e->d_name}, v;
			rc = mdb_get(txn, q->dbi_msg, &k, &v);
			if (rc == 0)
				continue;
			if (rc != MDB_NOTFOUND) {
				log_err("queue: recovery: index: %s", mdb_strerror(rc));
				r = queue_mdb_errno(rc);
				goto out;
			}
			if (q->recover_async &&
			    strcmp(e->d_name, q->boundary) > 0) {
				/* Not expected (see above): kept, never lost. */
				log_warn("%s: body without a record from this run; "
				         "kept", e->d_name);
				continue;
			}
			what = "orphan body";
			break;
		}
		case QUEUE_RECOVER_REMOVE:
			break;
		}
		if (unlinkat(q->msg_fd, e->d_name, 0) < 0) {
			if (errno == ENOENT)   /* removed meanwhile (a delete) */
				continue;
			r = -errno;
			log_err("queue: cannot remove msg/%s: %s", e->d_name,
			        strerror(-r));
			goto out;
		}
		log_removed("msg", e->d_name, what);
		rs->repaired++;
	}
	*more = true;
out:
	mdb_txn_abort(txn);
	if (!*more) {
		closedir(rs->dir);
		rs->dir = NULL;
	}
	return r;
}

/* Test hook: with a gate path set, recovery waits before its first step
 * until that file exists (bounded), so a test can see what happens while
 * recovery runs.
 * Returns true while closed. */
static bool recover_gated(struct queue *q)
{
	struct recovery *rs = &q->rec;
	if (!rs->gate || rs->phase != RECOVER_TMP)
		return false;
	if (access(rs->gate, F_OK) == 0) {
		log_info("recovery: gate %s open", rs->gate);
		free(rs->gate);
		rs->gate = NULL;
		return false;
	}
	uint64_t t = now_us();
	if (!rs->gate_t0) {
		rs->gate_t0 = t;
		log_info("recovery: waiting for gate %s", rs->gate);
	} else if (t - rs->gate_t0 > RECOVER_GATE_MAX_US) {
		log_warn("recovery: gate %s still closed; going on", rs->gate);
		free(rs->gate);
		rs->gate = NULL;
		return false;
	}
	return true;
}

/* Runs one step. Returns 0 (more to do unless rec.phase is
 * RECOVER_DONE) or -errno (recovery failed; relayd cannot go on safely
 * with a spool it could not read). Sets *index_done when the index
 * phases have just finished. Writer thread (or queue_open). */
static int recover_step(struct queue *q, bool *index_done, uint64_t *syncs)
{
	struct recovery *rs = &q->rec;
	bool more = false;
	int r = 0;
	*index_done = false;
	switch (rs->phase) {
	case RECOVER_TMP:
		r = recover_tmp(q);
		break;
	case RECOVER_RECORDS:
	case RECOVER_SCHED:
	case RECOVER_RESTORE:
		r = recover_index_step(q, &more, syncs);
		break;
	case RECOVER_BODIES:
		r = recover_bodies_step(q, &more);
		break;
	case RECOVER_DONE:
		return 0;
	}
	if (r) {
		log_err("recovery: failed in the %s phase: %s",
		        recover_phase_names[rs->phase], strerror(-r));
		return r;
	}
	if (more)
		return 0;
	rs->keylen = 0;
	rs->phase++;
	log_debug("recovery: %s phase", recover_phase_names[rs->phase]);
	if (rs->phase == RECOVER_BODIES) {
		*index_done = true;
		log_info("queue: index consistent after %.3f s of recovery, "
		         "%zu messages from before this start; delivery may begin",
		         (double)(now_us() - rs->t0) / 1e6, rs->nmsg);
	} else if (rs->phase == RECOVER_DONE) {
		log_info("recovery: %zu messages in queue, %zu repaired",
		         rs->nmsg, rs->repaired);
	}
	return 0;
}

/* The largest qid in the index: the id generator starts above it. */
static int index_floor(struct queue *q, char floor[QUEUE_ID_SIZE])
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = mdb_txn_begin(q->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		goto fail;
	if ((rc = mdb_cursor_open(txn, q->dbi_msg, &cur)) == 0) {
		for (rc = mdb_cursor_get(cur, &k, &v, MDB_LAST); rc == 0;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_PREV))
			if (key_qid(&k, floor))
				break;
		mdb_cursor_close(cur);
	}
	mdb_txn_abort(txn);
	if (rc == MDB_NOTFOUND)
		floor[0] = '\0';
	if (rc == 0 || rc == MDB_NOTFOUND)
		return 0;
fail:
	log_err("queue: cannot read the index: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

int queue_open(uv_loop_t *loop, const struct queue_opts *o, struct queue **out)
{
	struct queue *q = calloc(1, sizeof *q);
	char floor[QUEUE_ID_SIZE] = "";
	sigset_t all, old;
	int r;

	if (!q)
		return -ENOMEM;
	q->loop = loop;
	q->sync = o->sync;
	q->commit_delay_us = o->commit_delay_us;
	q->spool_fd = q->tmp_fd = q->msg_fd = -1;
	q->pending_tail = &q->pending;
	q->done_tail = &q->done;
	q->ops_tail = &q->ops;
	q->stats_hour = -1;
	q->ops_done_tail = &q->ops_done;
	q->map_size = o->map_size;
	q->min_free = o->min_free;
	if (!(q->spool_path = strdup(o->spool_dir))) {
		free(q);
		return -ENOMEM;
	}
	if ((r = pthread_rwlock_init(&q->envlock, NULL))) {
		free(q->spool_path);
		free(q);
		return -r;
	}
	if ((r = pthread_mutex_init(&q->mu, NULL))) {
		pthread_rwlock_destroy(&q->envlock);
		free(q->spool_path);
		free(q);
		return -r;
	}
	/* gather() waits with CLOCK_MONOTONIC deadlines. */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	r = pthread_cond_init(&q->cond, &ca);
	if (r == 0 && (r = pthread_cond_init(&q->opener_cond, &ca)))
		pthread_cond_destroy(&q->cond);
	pthread_condattr_destroy(&ca);
	if (r) {
		pthread_mutex_destroy(&q->mu);
		pthread_rwlock_destroy(&q->envlock);
		free(q->spool_path);
		free(q);
		return -r;
	}

	if ((r = open_dirs(q, o->spool_dir)) ||
	    (r = open_index(q, o->spool_dir, o->map_size, false)) ||
	    (r = index_floor(q, floor)))
		goto fail;
	queue_idgen_init(&q->idgen, floor);
	q->boundary_had_records = floor[0] != '\0';
	/* The first reading before any MAIL; the opener thread keeps it
	 * fresh from here on. */
	if (q->min_free)
		space_read(q);
	/* The first id is never given out: it divides this run's ids and
	 * file names from those of earlier runs (recovery section). */
	queue_new_id(q, q->boundary);
	/* Unnamed bodies only where one syncfs makes the link, the inode and
	 * the data durable together; fsync mode keeps named files, whose
	 * fdatasync-then-rename order needs no inode sync of its own. */
	if (q->sync == QUEUE_SYNC_SYNCFS && !probe_tmpfile(q))
		log_info("queue: no O_TMPFILE in %s/msg; bodies start as "
		         "msg/.NAME files", o->spool_dir);

	q->rec.t0 = now_us();
	q->recover_async = o->recover_async;
	if (!q->recover_async) {
		uint64_t syncs = 0;
		bool index_done;
		while (q->rec.phase != RECOVER_DONE)
			if ((r = recover_step(q, &index_done, &syncs)))
				goto fail;
		q->index_ready = q->ready_told = true;
	} else {
		if (o->recover_gate && !(q->rec.gate = strdup(o->recover_gate))) {
			r = -ENOMEM;
			goto fail;
		}
		log_info("recovery: started in the background (spool %s)",
		         o->spool_dir);
	}

	if ((r = uv_async_init(loop, &q->async, async_cb)) < 0) {
		log_err("queue: uv_async_init: %s", uv_strerror(r));
		goto fail;
	}
	q->async.data = q;

	/* The writer inherits a full signal mask: signals are the loop's
	 * business, and fsync must not be interrupted by a handler. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&q->writer, NULL, writer_main, q);
	if (r == 0) {
		q->writer_running = true;   /* no other thread yet: no lock */
		/* Without the opener, bodies are simply created on demand. */
		if (pthread_create(&q->opener, NULL, opener_main, q) == 0)
			q->opener_running = true;
		else
			log_warn("queue: no opener thread; bodies created on demand");
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		log_err("queue: cannot start writer thread: %s", strerror(r));
		/* The handle is live now: free q from its close callback. */
		q->closing = true;
		uv_close((uv_handle_t *)&q->async, closed_cb);
		return -r;
	}
	*out = q;
	return 0;
fail:
	queue_free(q);
	return r;
}

const char *queue_library_version(void)
{
	return mdb_version(NULL, NULL, NULL);
}
