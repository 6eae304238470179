/*
 * queue/queue_admin.c - Offline changes to the spool (queue.h,
 * queue_admin_*): hold, release and delete a message while relayd is
 * stopped, for relayctl. Each change is one synchronous LMDB write
 * transaction that keeps the index's invariant (queue.h, queue_msg_due:
 * an ACTIVE message has exactly one "sched" entry, keyed by its due time;
 * a HOLD message has none), so the next startup recovery has nothing to
 * repair. While relayd runs, the same changes go through its control
 * socket instead (deliver/deliver_ctl.h).
 *
 * The environment is opened with the size it already has (never shrunk),
 * without MDB_NOMETASYNC or MDB_NOSYNC: a commit here is durable when it
 * returns. It refuses (-EBUSY) to open an index that another process has
 * open (see index_in_use): relayd running without a control socket must
 * not have its queue changed behind its back.
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "common/log.h"

struct queue_admin {
	MDB_env *env;
	MDB_dbi dbi_msg, dbi_sched;
	int msg_fd;             /* spool_dir/msg, for unlinkat */
};

enum admin_op { ADMIN_HOLD, ADMIN_RELEASE, ADMIN_DELETE };

static const char *const admin_op_names[] = {
	[ADMIN_HOLD] = "hold",
	[ADMIN_RELEASE] = "release",
	[ADMIN_DELETE] = "delete",
};

/* Whether another process has the environment open. Every process that
 * opens an LMDB environment holds a shared fcntl lock on the first byte of
 * lock.mdb for as long as it stays open (mdb_env_excl_lock, LMDB 0.9); a
 * probe for a write lock there sees it. fcntl locks die with their
 * process, so a crashed relayd does not count. Racy by nature (relayd may
 * start right after): that case is covered by LMDB's writer lock, which
 * serializes our commit against its recovery. */
static int index_in_use(const char *path)
{
	char lock[PATH_MAX];
	if (snprintf(lock, sizeof lock, "%s/lock.mdb", path) >= (int)sizeof lock)
		return -ENAMETOOLONG;
	int fd = open(lock, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
	                   .l_start = 0, .l_len = 1};
	int r = fcntl(fd, F_GETLK, &fl) < 0 ? -errno : fl.l_type != F_UNLCK;
	close(fd);
	return r;
}

/* Begins a write transaction; adopts a map grown by another process. */
static int begin_write(struct queue_admin *a, MDB_txn **txn)
{
	int rc = mdb_txn_begin(a->env, NULL, 0, txn);
	if (rc == MDB_MAP_RESIZED) {
		rc = mdb_env_set_mapsize(a->env, 0);
		if (rc == 0)
			rc = mdb_txn_begin(a->env, NULL, 0, txn);
	}
	return rc;
}

int queue_admin_open(const char *spool_dir, struct queue_admin **out)
{
	char path[PATH_MAX], data[PATH_MAX], msg[PATH_MAX];
	struct queue_admin *a = NULL;
	struct stat st;
	MDB_txn *txn;
	int rc, err;

	if (snprintf(path, sizeof path, "%s/index", spool_dir) >= (int)sizeof path ||
	    snprintf(data, sizeof data, "%s/data.mdb", path) >= (int)sizeof data ||
	    snprintf(msg, sizeof msg, "%s/msg", spool_dir) >= (int)sizeof msg)
		return -ENAMETOOLONG;
	/* Look first: mdb_env_open would create what is missing. */
	if (stat(data, &st) < 0)
		return -errno;
	if ((err = index_in_use(path)) != 0)
		return err < 0 ? err : -EBUSY;

	a = calloc(1, sizeof *a);
	if (!a)
		return -ENOMEM;
	a->msg_fd = open(msg, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->msg_fd < 0) {
		err = -errno;
		free(a);
		return err;
	}
	if ((rc = mdb_env_create(&a->env)))
		goto fail;
	if ((rc = mdb_env_set_maxdbs(a->env, QUEUE_MAXDBS)))
		goto fail;
	if ((rc = mdb_env_open(a->env, path, 0, 0600)))
		goto fail;
	/* Every commit writes the map size into the meta page. Size 0 is
	 * the size the environment recorded (relayd's queue_map_size), so a
	 * commit here never records a smaller one, whatever this LMDB maps
	 * by default when no size is configured (older releases: 1 MiB). */
	if ((rc = mdb_env_set_mapsize(a->env, 0)))
		goto fail;
	if ((rc = begin_write(a, &txn)))
		goto fail;
	/* No MDB_CREATE: an index without them is not a spool. */
	if ((rc = mdb_dbi_open(txn, QUEUE_DB_MSG, 0, &a->dbi_msg)) ||
	    (rc = mdb_dbi_open(txn, QUEUE_DB_SCHED, 0, &a->dbi_sched))) {
		mdb_txn_abort(txn);
		goto fail;
	}
	if ((rc = mdb_txn_commit(txn)))
		goto fail;
	*out = a;
	return 0;
fail:
	err = queue_mdb_errno(rc);
	if (rc != MDB_NOTFOUND)
		log_err("queue: cannot open index %s: %s", path, mdb_strerror(rc));
	queue_admin_close(a);
	return err;
}

void queue_admin_close(struct queue_admin *a)
{
	if (!a)
		return;
	if (a->env)
		mdb_env_close(a->env);
	if (a->msg_fd >= 0)
		close(a->msg_fd);
	free(a);
}

static int sched_del_any(struct queue_admin *a, MDB_txn *txn,
                         const char *qid);

/* Deletes the "sched" entry of m when it has one: ACTIVE and something
 * left to deliver (queue_msg_due). Where the invariant says it is, or, if
 * it is not there, wherever it is: a stale entry would have the scheduler
 * look at a held or deleted message. */
static int sched_del(struct queue_admin *a, MDB_txn *txn,
                     const struct queue_msg *m)
{
	int64_t due = queue_msg_due(m);
	if (m->state != QUEUE_MSG_ACTIVE || due < 0)
		return 0;
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	queue_sched_key(due, m->qid, sk);
	MDB_val k = {sizeof sk, sk};
	int rc = mdb_del(txn, a->dbi_sched, &k, NULL);
	return rc == MDB_NOTFOUND ? sched_del_any(a, txn, m->qid) : rc;
}

static int sched_put(struct queue_admin *a, MDB_txn *txn,
                     const struct queue_msg *m)
{
	int64_t due = queue_msg_due(m);
	if (m->state != QUEUE_MSG_ACTIVE || due < 0)
		return 0;
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	queue_sched_key(due, m->qid, sk);
	MDB_val k = {sizeof sk, sk}, empty = {0, NULL};
	return mdb_put(txn, a->dbi_sched, &k, &empty, 0);
}

/* Every schedule entry of qid, found by a full scan: only for a record
 * that cannot be decoded (its due time is lost) or an entry that is not
 * where queue_msg_due() says, both signs of a broken index. */
static int sched_del_any(struct queue_admin *a, MDB_txn *txn, const char *qid)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = mdb_cursor_open(txn, a->dbi_sched, &cur);
	if (rc)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size == QUEUE_SCHED_KEY_LEN &&
		    memcmp((uint8_t *)k.mv_data + 8, qid, QUEUE_ID_LEN) == 0 &&
		    (rc = mdb_cursor_del(cur, 0)))
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Writes m back under its qid. */
static int put_msg(struct queue_admin *a, MDB_txn *txn,
                   const struct queue_msg *m, int *err)
{
	uint8_t *rec;
	size_t len;
	int r = queue_msg_encode(m, &rec, &len);
	if (r < 0) {
		*err = r;
		return 0;
	}
	MDB_val k = {QUEUE_ID_LEN, (void *)m->qid}, v = {len, rec};
	int rc = mdb_put(txn, a->dbi_msg, &k, &v, 0);
	free(rec);
	return rc;
}

/* One change, one synchronous write transaction. rc is LMDB's code, err
 * ours (-errno); whichever is set first ends the transaction. */
static int admin_apply(struct queue_admin *a, const char *qid,
                       enum admin_op op, int64_t now)
{
	struct queue_msg *m = NULL;
	MDB_txn *txn;
	MDB_val k = {QUEUE_ID_LEN, (void *)qid}, v;
	int rc, err = 0;

	if (!queue_id_valid(qid))
		return -EINVAL;
	if ((rc = begin_write(a, &txn)))
		goto fail;
	rc = mdb_get(txn, a->dbi_msg, &k, &v);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return -ENOENT;
	}
	if (rc)
		goto abort;
	/* Decode inside the transaction: v points into the map. */
	err = queue_msg_decode(qid, v.mv_data, v.mv_size, &m);
	if (err == -EINVAL) {
		log_err("%s: index record cannot be decoded", qid);
		if (op != ADMIN_DELETE) {
			err = -EIO;
			goto abort;
		}
		/* A corrupt record can still be deleted. */
		err = 0;
		if ((rc = sched_del_any(a, txn, qid)) ||
		    (rc = mdb_del(txn, a->dbi_msg, &k, NULL)))
			goto abort;
	} else if (err) {
		goto abort;
	} else if (op == ADMIN_HOLD) {
		if (m->state == QUEUE_MSG_HOLD)
			goto noop;
		if ((rc = sched_del(a, txn, m)))
			goto abort;
		m->state = QUEUE_MSG_HOLD;
		if ((rc = put_msg(a, txn, m, &err)) || err)
			goto abort;
	} else if (op == ADMIN_RELEASE) {
		/* Releasing what is not held changes nothing: an ACTIVE
		 * message keeps its schedule (flush is for "due now"). */
		if (m->state == QUEUE_MSG_ACTIVE)
			goto noop;
		m->state = QUEUE_MSG_ACTIVE;
		for (size_t i = 0; i < m->nrcpt; i++)
			if (m->rcpt[i].state == QUEUE_RCPT_PENDING ||
			    m->rcpt[i].state == QUEUE_RCPT_DEFERRED)
				m->rcpt[i].next_attempt = now;
		if ((rc = put_msg(a, txn, m, &err)) || err ||
		    (rc = sched_put(a, txn, m)))
			goto abort;
	} else {
		if ((rc = sched_del(a, txn, m)) ||
		    (rc = mdb_del(txn, a->dbi_msg, &k, NULL)))
			goto abort;
	}
	/* Synchronous: LMDB syncs the data pages, then the meta page. */
	queue_msg_free(m);
	if ((rc = mdb_txn_commit(txn)))
		goto fail;

	if (op == ADMIN_DELETE) {
		/* After the commit: a crash before the unlink leaves a body
		 * without a record, which startup recovery removes; the other
		 * order could leave a record without its body. */
		if (unlinkat(a->msg_fd, qid, 0) < 0 && errno != ENOENT) {
			err = -errno;
			log_err("%s: removed from the index, but cannot remove "
			        "msg/%s: %s", qid, qid, strerror(-err));
			return err;
		}
	}
	return 0;
noop:
	mdb_txn_abort(txn);
	queue_msg_free(m);
	return 0;
abort:
	mdb_txn_abort(txn);
	queue_msg_free(m);
	if (err)
		return err;
fail:
	log_err("%s: %s: index: %s", qid, admin_op_names[op], mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

int queue_admin_hold(struct queue_admin *a, const char *qid)
{
	return admin_apply(a, qid, ADMIN_HOLD, 0);
}

int queue_admin_release(struct queue_admin *a, const char *qid, int64_t now)
{
	return admin_apply(a, qid, ADMIN_RELEASE, now);
}

int queue_admin_delete(struct queue_admin *a, const char *qid)
{
	return admin_apply(a, qid, ADMIN_DELETE, 0);
}
