/*
 * queue/queue_quota.c - The default quota store: hourly and daily counters
 * in the "quota" DB of the spool's LMDB index (layout and contract in
 * queue_quota.h). Peeks are short read transactions on the loop thread;
 * charges and refunds travel to the writer thread as OP_QUOTA ops
 * (queue.c's ops list) and report back on the loop thread.
 */
#include "queue/queue_quota.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "common/log.h"
#include "queue/queue_int.h"

#define QUOTA_VERSION 1
#define QUOTA_VAL_LEN 5                         /* version, u32 count */
#define QUOTA_DBKEY_MAX (1 + 8 + QUEUE_QUOTA_KEY_MAX)

struct queue_quota_req {
	bool refund;
	uint32_t n;
	struct queue_quota_limits lim;
	int64_t hour, day;
	int result;                  /* 0 or -EDQUOT, set on the writer */
	struct queue_quota_usage u;  /* the counts it left, or found */
	queue_quota_cb cb;
	void *arg;
	size_t klen;
	char key[QUEUE_QUOTA_KEY_MAX];   /* ASCII-lowercased */
};

int64_t queue_quota_hour(int64_t now)
{
	return now < 0 ? 0 : now / 3600;
}

int64_t queue_quota_day(int64_t now)
{
	return now < 0 ? 0 : now / 86400;
}

bool queue_quota_exceeded(const struct queue_quota_usage *u,
                          const struct queue_quota_limits *lim, uint32_t n)
{
	return (lim->hourly && (uint64_t)u->hour + n > lim->hourly) ||
	       (lim->daily && (uint64_t)u->day + n > lim->daily);
}

/* Checks and copies a key, lowercased: credential names are
 * case-insensitive, and "App" must not get a second quota. */
static int key_copy(const char *key, char out[QUEUE_QUOTA_KEY_MAX],
                    size_t *len)
{
	if (!key)
		return -EINVAL;
	size_t n = strnlen(key, QUEUE_QUOTA_KEY_MAX + 1);
	if (n == 0 || n > QUEUE_QUOTA_KEY_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		out[i] = key[i] >= 'A' && key[i] <= 'Z' ? (char)(key[i] - 'A' + 'a')
		                                        : key[i];
	*len = n;
	return 0;
}

/* 'H' or 'D', the period big-endian (byte order = time order), the key. */
static size_t db_key(uint8_t out[QUOTA_DBKEY_MAX], char kind, int64_t period,
                     const char *key, size_t klen)
{
	uint64_t p = period < 0 ? 0 : (uint64_t)period;
	out[0] = (uint8_t)kind;
	for (int i = 0; i < 8; i++)
		out[1 + i] = (uint8_t)(p >> (56 - 8 * i));
	memcpy(out + 9, key, klen);
	return 9 + klen;
}

static uint32_t val_count(const MDB_val *v, const uint8_t *k, size_t klen)
{
	const uint8_t *p = v->mv_data;
	if (v->mv_size != QUOTA_VAL_LEN || p[0] != QUOTA_VERSION) {
		/* A counter we cannot read must not block the credential
		 * forever: it counts as 0, and the next charge rewrites it. */
		char esc[QUOTA_DBKEY_MAX * 4 + 8];
		log_warn("quota: unreadable counter for %s (%zu bytes); reset",
		         log_escape(esc, sizeof esc, k + 9, klen - 9), v->mv_size);
		return 0;
	}
	return (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 8 | p[4];
}

static int get_count(MDB_txn *txn, MDB_dbi dbi, const uint8_t *k, size_t klen,
                     uint32_t *out)
{
	MDB_val kv = {klen, (void *)k}, v;
	int rc = mdb_get(txn, dbi, &kv, &v);
	*out = 0;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc == 0)
		*out = val_count(&v, k, klen);
	return rc;
}

static int put_count(MDB_txn *txn, MDB_dbi dbi, const uint8_t *k, size_t klen,
                     uint32_t c)
{
	MDB_val kv = {klen, (void *)k};
	if (c == 0) {
		int rc = mdb_del(txn, dbi, &kv, NULL);
		return rc == MDB_NOTFOUND ? 0 : rc;
	}
	uint8_t b[QUOTA_VAL_LEN] = {QUOTA_VERSION, (uint8_t)(c >> 24),
	                            (uint8_t)(c >> 16), (uint8_t)(c >> 8),
	                            (uint8_t)c};
	MDB_val v = {sizeof b, b};
	return mdb_put(txn, dbi, &kv, &v, 0);
}

/* Deletes up to QUEUE_QUOTA_PRUNE_MAX counters of `kind` whose period is
 * before `keep`. Period-first keys: the stale ones are a prefix of the
 * kind's range, so the walk stops at the first one still wanted. */
static int prune(MDB_txn *txn, MDB_dbi dbi, char kind, int64_t keep)
{
	MDB_cursor *cur;
	int rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		return rc;
	uint8_t start = (uint8_t)kind;
	MDB_val k = {1, &start}, v;
	unsigned n = 0;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const uint8_t *p = k.mv_data;
		if (k.mv_size < 9 || p[0] != (uint8_t)kind)
			break;
		uint64_t period = 0;
		for (int i = 0; i < 8; i++)
			period = period << 8 | p[1 + i];
		if (keep < 0 || period >= (uint64_t)keep ||
		    n >= QUEUE_QUOTA_PRUNE_MAX)
			break;
		/* The cursor then stands on the next entry, and MDB_NEXT knows
		 * it (see recover_index): nothing is skipped. */
		if ((rc = mdb_cursor_del(cur, 0)))
			break;
		n++;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static uint32_t sat_add(uint32_t a, uint32_t b)
{
	return a > UINT32_MAX - b ? UINT32_MAX : a + b;
}

int queue_quota_apply(struct queue_quota_req *r, MDB_txn *txn, unsigned dbi)
{
	uint8_t hk[QUOTA_DBKEY_MAX], dk[QUOTA_DBKEY_MAX];
	size_t hl = db_key(hk, 'H', r->hour, r->key, r->klen);
	size_t dl = db_key(dk, 'D', r->day, r->key, r->klen);
	uint32_t h, d;
	int rc;
	if ((rc = get_count(txn, dbi, hk, hl, &h)) ||
	    (rc = get_count(txn, dbi, dk, dl, &d)))
		return rc;
	r->u.hour = h;
	r->u.day = d;
	if (r->refund) {
		h = h > r->n ? h - r->n : 0;
		d = d > r->n ? d - r->n : 0;
	} else {
		if (queue_quota_exceeded(&r->u, &r->lim, r->n)) {
			r->result = -EDQUOT;
			return 0;   /* nothing written: nothing to prune for */
		}
		h = sat_add(h, r->n);
		d = sat_add(d, r->n);
	}
	if ((rc = put_count(txn, dbi, hk, hl, h)) ||
	    (rc = put_count(txn, dbi, dk, dl, d)))
		return rc;
	r->u.hour = h;
	r->u.day = d;
	r->result = 0;
	/* The previous period stays (a clock that steps back a little finds
	 * its counts); older ones go. */
	if ((rc = prune(txn, dbi, 'H', r->hour - 1)) ||
	    (rc = prune(txn, dbi, 'D', r->day - 1)))
		return rc;
	return 0;
}

/* ---- loop thread -------------------------------------------------------- */

int queue_quota_peek(struct queue *q, const char *key, int64_t now,
                     struct queue_quota_usage *out)
{
	char k[QUEUE_QUOTA_KEY_MAX];
	size_t klen;
	int r = key_copy(key, k, &klen);
	out->hour = out->day = 0;
	if (r)
		return r;
	uint8_t hk[QUOTA_DBKEY_MAX], dk[QUOTA_DBKEY_MAX];
	size_t hl = db_key(hk, 'H', queue_quota_hour(now), k, klen);
	size_t dl = db_key(dk, 'D', queue_quota_day(now), k, klen);
	/* A read transaction takes no lock and never waits for the writer. */
	MDB_txn *txn;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	MDB_dbi dbi = queue_dbi_quota(q);
	if ((rc = get_count(txn, dbi, hk, hl, &out->hour)) == 0)
		rc = get_count(txn, dbi, dk, dl, &out->day);
	queue_env_read_end(q, txn);
	if (rc) {
		out->hour = out->day = 0;
		return queue_mdb_errno(rc);
	}
	return 0;
}

/* The op's completion, on the loop thread: a failed transaction charged
 * nothing, whatever the op had found. */
static void quota_done_cb(void *arg, int status)
{
	struct queue_quota_req *r = arg;
	static const struct queue_quota_usage zero;
	if (r->cb)
		r->cb(r->arg, status ? status : r->result, status ? &zero : &r->u);
	free(r);
}

static int quota_push(struct queue *q, const char *key, int64_t now,
                      uint32_t n, const struct queue_quota_limits *lim,
                      bool refund, queue_quota_cb cb, void *arg)
{
	if (n == 0)
		return -EINVAL;
	struct queue_quota_req *r = calloc(1, sizeof *r);
	if (!r)
		return -ENOMEM;
	int rc = key_copy(key, r->key, &r->klen);
	if (rc) {
		free(r);
		return rc;
	}
	r->refund = refund;
	r->n = n;
	if (lim)
		r->lim = *lim;
	r->hour = queue_quota_hour(now);
	r->day = queue_quota_day(now);
	r->cb = cb;
	r->arg = arg;
	if ((rc = queue_push_quota(q, r, quota_done_cb)))
		free(r);
	return rc;
}

int queue_quota_charge(struct queue *q, const char *key, int64_t now,
                       uint32_t n, const struct queue_quota_limits *lim,
                       queue_quota_cb cb, void *arg)
{
	if (!lim || !cb)
		return -EINVAL;
	return quota_push(q, key, now, n, lim, false, cb, arg);
}

int queue_quota_refund(struct queue *q, const char *key, int64_t now,
                       uint32_t n, queue_quota_cb cb, void *arg)
{
	return quota_push(q, key, now, n, NULL, true, cb, arg);
}

int queue_quota_entries(struct queue *q, uint64_t *entries)
{
	MDB_txn *txn;
	MDB_stat st;
	int rc = queue_env_read_begin(q, &txn);
	if (rc)
		return queue_mdb_errno(rc);
	rc = mdb_stat(txn, queue_dbi_quota(q), &st);
	queue_env_read_end(q, txn);
	if (rc)
		return queue_mdb_errno(rc);
	*entries = st.ms_entries;
	return 0;
}

/* ---- the store table ------------------------------------------------------ */

static int lmdb_peek(void *ctx, const char *key, int64_t now,
                     struct queue_quota_usage *out)
{
	return queue_quota_peek(ctx, key, now, out);
}

static int lmdb_charge(void *ctx, const char *key, int64_t now, uint32_t n,
                       const struct queue_quota_limits *lim,
                       queue_quota_cb cb, void *arg)
{
	return queue_quota_charge(ctx, key, now, n, lim, cb, arg);
}

static int lmdb_refund(void *ctx, const char *key, int64_t now, uint32_t n,
                       queue_quota_cb cb, void *arg)
{
	return queue_quota_refund(ctx, key, now, n, cb, arg);
}

static const struct queue_quota_ops lmdb_ops = {
	.name = "lmdb",
	.peek = lmdb_peek,
	.charge = lmdb_charge,
	.refund = lmdb_refund,
};

void queue_quota_store_lmdb(struct queue *q, struct queue_quota_store *out)
{
	out->ops = &lmdb_ops;
	out->ctx = q;
}
