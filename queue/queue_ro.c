/*
 * queue/queue_ro.c - The read side of the spool, for relayctl: the index
 * opened MDB_RDONLY, short read transactions only. Safe beside the running
 * daemon (LMDB readers never block its writer) and with no daemon at all.
 * Creates nothing: a missing spool is -ENOENT.
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "common/log.h"

int queue_body_path(const char *spool_dir, const char *qid,
                    char *out, size_t outsz)
{
	if (!queue_id_valid(qid))
		return -EINVAL;
	int n = snprintf(out, outsz, "%s/msg/%s", spool_dir, qid);
	if (n < 0 || (size_t)n >= outsz)
		return -ENAMETOOLONG;
	return 0;
}

/* Begins a read transaction. If the daemon grew the map since we opened
 * it, adopt the new size once and retry. */
int queue_ro_begin(struct queue_ro *r, MDB_txn **txn)
{
	int rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, txn);
	if (rc == MDB_MAP_RESIZED) {
		rc = mdb_env_set_mapsize(r->env, 0);
		if (rc == 0)
			rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, txn);
	}
	return rc;
}

int queue_ro_open(const char *spool_dir, struct queue_ro **out)
{
	char path[PATH_MAX], data[PATH_MAX];
	struct queue_ro *r = NULL;
	struct stat st;
	MDB_txn *txn;
	int rc, err;

	if (snprintf(path, sizeof path, "%s/index", spool_dir) >= (int)sizeof path ||
	    snprintf(data, sizeof data, "%s/data.mdb", path) >= (int)sizeof data)
		return -ENAMETOOLONG;
	/* Look first: mdb_env_open would create what is missing. */
	if (stat(data, &st) < 0)
		return -errno;

	r = calloc(1, sizeof *r);
	if (!r)
		return -ENOMEM;
	if (!(r->spool_dir = strdup(spool_dir))) {
		free(r);
		return -ENOMEM;
	}
	if ((rc = mdb_env_create(&r->env)))
		goto fail;
	if ((rc = mdb_env_set_maxdbs(r->env, QUEUE_MAXDBS)))
		goto fail;
	/* The map size comes from the environment itself when reading. */
	if ((rc = mdb_env_open(r->env, path, MDB_RDONLY | MDB_NOTLS, 0600)))
		goto fail;
	if ((rc = queue_ro_begin(r, &txn)))
		goto fail;
	rc = mdb_dbi_open(txn, QUEUE_DB_MSG, 0, &r->dbi_msg);
	if (rc == 0)
		rc = mdb_dbi_open(txn, QUEUE_DB_SCHED, 0, &r->dbi_sched);
	if (rc) {
		mdb_txn_abort(txn);
		goto fail;
	}
	/* Both formats are read (queue_codec.c); a spool a later release
	 * wrote is refused as a whole rather than record by record. No
	 * "meta" DB: format 1 (a spool of relayd up to bb1fcad). */
	MDB_dbi meta;
	r->format = 1;
	rc = mdb_dbi_open(txn, QUEUE_DB_META, 0, &meta);
	if (rc == 0) {
		MDB_val k = {strlen(QUEUE_META_FORMAT), QUEUE_META_FORMAT}, v;
		rc = mdb_get(txn, meta, &k, &v);
		if (rc == 0) {
			unsigned f = v.mv_size == 1 ? ((uint8_t *)v.mv_data)[0] : 255;
			if (f > QUEUE_FORMAT) {
				mdb_txn_abort(txn);
				log_err("queue: index %s is in format %u, newer than this "
				        "relayctl reads (%d)", path, f, QUEUE_FORMAT);
				queue_ro_close(r);
				return -EPROTO;
			}
			r->format = f;
		}
	}
	if (rc && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		goto fail;
	}
	/* Committing the read transaction keeps the handle for later ones. */
	if ((rc = mdb_txn_commit(txn)))
		goto fail;
	*out = r;
	return 0;
fail:
	err = queue_mdb_errno(rc);
	if (rc != MDB_NOTFOUND)
		log_err("queue: cannot open index %s: %s", path, mdb_strerror(rc));
	queue_ro_close(r);
	return err;
}

void queue_ro_close(struct queue_ro *r)
{
	if (!r)
		return;
	if (r->env)
		mdb_env_close(r->env);
	free(r->spool_dir);
	free(r);
}

static int decode_val(const MDB_val *k, const MDB_val *v, struct queue_msg **m)
{
	char qid[QUEUE_ID_SIZE];
	if (k->mv_size != QUEUE_ID_LEN)
		return -EINVAL;
	memcpy(qid, k->mv_data, QUEUE_ID_LEN);
	qid[QUEUE_ID_LEN] = '\0';
	return queue_msg_decode(qid, v->mv_data, v->mv_size, m);
}

int queue_ro_foreach(struct queue_ro *r,
                     int (*cb)(void *arg, const struct queue_msg *m),
                     void *arg)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, err = 0;

	if ((rc = queue_ro_begin(r, &txn)))
		goto fail;
	if ((rc = mdb_cursor_open(txn, r->dbi_msg, &cur))) {
		mdb_txn_abort(txn);
		goto fail;
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct queue_msg *m;
		int d = decode_val(&k, &v, &m);
		if (d == -ENOMEM) {
			err = d;
			break;
		}
		if (d) {
			/* One bad record must not hide the rest of the queue. */
			char esc[64];
			log_warn("%s: index record cannot be decoded",
			         log_escape(esc, sizeof esc, k.mv_data, k.mv_size));
			continue;
		}
		int stop = cb(arg, m);
		queue_msg_free(m);
		if (stop)
			break;
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (err || rc == 0 || rc == MDB_NOTFOUND)
		return err;
fail:
	log_err("queue: index read: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

int queue_ro_get(struct queue_ro *r, const char *qid, struct queue_msg **out)
{
	MDB_txn *txn;
	MDB_val k = {QUEUE_ID_LEN, (void *)qid}, v;
	int rc, d;

	if (!queue_id_valid(qid))
		return -EINVAL;
	if ((rc = queue_ro_begin(r, &txn)))
		goto fail;
	rc = mdb_get(txn, r->dbi_msg, &k, &v);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return -ENOENT;
	}
	if (rc) {
		mdb_txn_abort(txn);
		goto fail;
	}
	/* Decode inside the transaction: v points into the map. */
	d = queue_msg_decode(qid, v.mv_data, v.mv_size, out);
	mdb_txn_abort(txn);
	if (d == -EINVAL) {
		log_err("%s: index record cannot be decoded", qid);
		return -EIO;
	}
	return d;
fail:
	log_err("%s: index read: %s", qid, mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* ---- statistics history (queue_stats.h) ------------------------------- */

int queue_ro_stats(struct queue_ro *r, char gran, int64_t since,
                   int (*cb)(void *arg, int64_t start,
                             const struct queue_stats_bucket *b),
                   void *arg)
{
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_dbi dbi;
	int rc = queue_ro_begin(r, &txn);
	if (rc) {
		log_err("queue: index read: %s", mdb_strerror(rc));
		return queue_mdb_errno(rc);
	}
	/* A format-1 spool has no "stats" DB: no buckets. */
	rc = mdb_dbi_open(txn, QUEUE_DB_STATS, 0, &dbi);
	if (rc == 0)
		rc = mdb_cursor_open(txn, dbi, &cur);
	uint8_t kb[QUEUE_STATS_KEY_LEN];
	uint64_t u = since < 0 ? 0 : (uint64_t)since;
	kb[0] = (uint8_t)gran;
	for (int i = 0; i < 8; i++)
		kb[1 + i] = (uint8_t)(u >> (56 - 8 * i));
	MDB_val k = {sizeof kb, kb}, v;
	if (rc == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	int err = 0;
	for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const uint8_t *p = k.mv_data;
		if (k.mv_size < 1 || p[0] != (uint8_t)gran)
			break;
		/* Keys of another shape (a later release's): not ours. */
		if (k.mv_size != QUEUE_STATS_KEY_LEN)
			continue;
		uint64_t t = 0;
		for (int i = 0; i < 8; i++)
			t = t << 8 | p[1 + i];
		if (t > INT64_MAX)
			break;
		struct queue_stats_bucket b;
		int d = queue_stats_decode(v.mv_data, v.mv_size, &b);
		if (d == -ENOMEM) {
			err = d;
			break;
		}
		int stop = cb(arg, (int64_t)t, d ? NULL : &b);
		queue_stats_bucket_reset(&b);
		if (stop)
			break;
	}
	if (cur)
		mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (err)
		return err;
	if (rc == 0 || rc == MDB_NOTFOUND)
		return 0;
	log_err("queue: stats read: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}
