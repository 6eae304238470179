/*
 * queue/queue_check.c - The spool's integrity check, for relayctl check:
 * every index record has its body msg/QID with the recorded size, every
 * body its record, the "sched" entries are exactly those queue_msg_due()
 * gives the ACTIVE records (so every due recipient is scheduled), and no
 * temp file is left. The rules are recovery's (queue.c), checked instead
 * of repaired.
 *
 * Read-only: the index through MDB_RDONLY transactions of at most
 * CHECK_CHUNK records each (a long reader pins pages the running daemon
 * wants back, and a million-message queue would hold one for seconds),
 * the directories with readdir and fstatat, and body files are never
 * opened. Bodies are looked at after each chunk's transaction ends.
 * Items go to a callback; whether one is a problem or a moment in a
 * running relayd's work is decided later, by queue_ro_recheck().
 */
#include "queue/queue_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "common/log.h"

/* Records (or schedule entries, or directory names) per read
 * transaction. */
#define CHECK_CHUNK 256
/* LMDB's longest key (mdb_env_get_maxkeysize() of a default build). */
#define CHECK_KEY_BUF 512

const char *const queue_check_kind_names[] = {
	[QUEUE_CHK_NO_BODY] = "missing_body",
	[QUEUE_CHK_BODY_SIZE] = "body_size",
	[QUEUE_CHK_BODY_TYPE] = "body_type",
	[QUEUE_CHK_BAD_RECORD] = "bad_record",
	[QUEUE_CHK_UNSCHEDULED] = "unscheduled",
	[QUEUE_CHK_STALE_SCHED] = "stale_schedule",
	[QUEUE_CHK_DONE] = "done",
	[QUEUE_CHK_ORPHAN_BODY] = "orphan_body",
	[QUEUE_CHK_TEMP] = "temp_file",
	[QUEUE_CHK_STRAY] = "stray_file",
};
_Static_assert(sizeof queue_check_kind_names / sizeof *queue_check_kind_names
               == QUEUE_CHK_NKINDS, "a name per kind");

/* ---- pure parts --------------------------------------------------------- */

static bool hex16(const char *s)
{
	for (int i = 0; i < 16; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[16] == '\0';
}

enum queue_check_name queue_check_name(const char *name)
{
	if (queue_id_valid(name))
		return QUEUE_NAME_BODY;
	if (name[0] != '.')
		return QUEUE_NAME_STRAY;
	/* queue.c: part_name() and the opener's ".p" + the run's boundary
	 * id + "%016llx" (".p%016llx" before the boundary existed). */
	if (queue_id_valid(name + 1) || (name[1] == 'p' && hex16(name + 2)))
		return QUEUE_NAME_PART;
	if (name[1] == 'p' && strnlen(name + 2, QUEUE_ID_LEN) == QUEUE_ID_LEN) {
		char id[QUEUE_ID_SIZE];
		memcpy(id, name + 2, QUEUE_ID_LEN);
		id[QUEUE_ID_LEN] = '\0';
		if (queue_id_valid(id) && hex16(name + 2 + QUEUE_ID_LEN))
			return QUEUE_NAME_PART;
	}
	return QUEUE_NAME_TEMP;
}

unsigned queue_check_rec_eval(const struct queue_check_rec *r)
{
	unsigned bad = 0;
	if (r->body == QUEUE_BODY_MISSING)
		bad |= 1u << QUEUE_CHK_NO_BODY;
	else if (r->body == QUEUE_BODY_OTHER)
		bad |= 1u << QUEUE_CHK_BODY_TYPE;
	else if (r->decoded && r->body_size != r->size)
		bad |= 1u << QUEUE_CHK_BODY_SIZE;
	if (!r->decoded)
		return bad | 1u << QUEUE_CHK_BAD_RECORD;
	if (r->due < 0)
		bad |= 1u << QUEUE_CHK_DONE;
	else if (r->active && !r->sched_ok)
		bad |= 1u << QUEUE_CHK_UNSCHEDULED;
	return bad;
}

enum queue_check_stale queue_check_sched_eval(int64_t at,
                                              const struct queue_check_rec *rec)
{
	if (!rec)
		return QUEUE_STALE_NO_RECORD;
	if (!rec->decoded)
		return QUEUE_STALE_BAD_RECORD;
	if (rec->due < 0)
		return QUEUE_STALE_DONE;
	if (!rec->active)
		return QUEUE_STALE_HOLD;
	/* The key clamps negative times to 0 (queue_sched_key). */
	return at == rec->due ? QUEUE_STALE_OK : QUEUE_STALE_TIME;
}

bool queue_check_same_subject(const struct queue_check_item *a,
                              const struct queue_check_item *b)
{
	bool ak = a->keylen > 0, bk = b->keylen > 0;
	if (ak || bk)
		return ak && bk && a->kind == b->kind && a->keylen == b->keylen &&
		       memcmp(a->key, b->key, a->keylen < QUEUE_CHECK_KEY_MAX ?
		              a->keylen : QUEUE_CHECK_KEY_MAX) == 0;
	if (a->qid[0] || b->qid[0])
		return strcmp(a->qid, b->qid) == 0;
	return strcmp(a->file, b->file) == 0;
}

/* ---- reading ------------------------------------------------------------ */

struct check {
	struct queue_ro *r;
	unsigned flags;
	int msg_fd;             /* spool/msg, or -1 when it does not exist */
	queue_check_cb cb;
	void *arg;
	bool stop;
	struct queue_check_stats st;
};

/* A record as read inside a transaction, judged after it. */
struct probe {
	char qid[QUEUE_ID_SIZE];
	struct queue_check_rec rec;
};

static void emit(struct check *c, const struct queue_check_item *it)
{
	if (!c->stop && c->cb(c->arg, it))
		c->stop = true;
}

static void set_key(struct queue_check_item *it, const MDB_val *k)
{
	it->keylen = k->mv_size;
	memcpy(it->key, k->mv_data, k->mv_size < QUEUE_CHECK_KEY_MAX ?
	       k->mv_size : QUEUE_CHECK_KEY_MAX);
}

static int64_t sched_time(const uint8_t *p)
{
	uint64_t t = 0;
	for (int i = 0; i < 8; i++)
		t = t << 8 | p[i];
	return (int64_t)t;
}

/* Reads one record (inside txn) into p->rec, body not yet looked at. */
static void probe_record(struct check *c, MDB_txn *txn, const char *qid,
                         const MDB_val *v, struct probe *p)
{
	struct queue_msg *m;
	memcpy(p->qid, qid, QUEUE_ID_SIZE);
	p->rec = (struct queue_check_rec){0};
	if (queue_msg_decode(qid, v->mv_data, v->mv_size, &m) != 0)
		return;
	p->rec.decoded = true;
	p->rec.active = m->state == QUEUE_MSG_ACTIVE;
	p->rec.due = queue_msg_due(m);
	p->rec.size = m->size;
	queue_msg_free(m);
	if (p->rec.active && p->rec.due >= 0) {
		uint8_t sk[QUEUE_SCHED_KEY_LEN];
		queue_sched_key(p->rec.due, qid, sk);
		MDB_val k = {sizeof sk, sk}, sv;
		p->rec.sched_ok = mdb_get(txn, c->r->dbi_sched, &k, &sv) == 0;
	}
}

/* Looks at msg/QID (never following a link). */
static void probe_body(struct check *c, struct probe *p)
{
	struct stat st;
	if (c->msg_fd < 0 ||
	    fstatat(c->msg_fd, p->qid, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		p->rec.body = QUEUE_BODY_MISSING;
		return;
	}
	p->rec.body = S_ISREG(st.st_mode) ? QUEUE_BODY_FILE : QUEUE_BODY_OTHER;
	p->rec.body_size = (uint64_t)st.st_size;
}

static void report_record(struct check *c, const struct probe *p)
{
	unsigned bad = queue_check_rec_eval(&p->rec);
	for (int k = 0; k < QUEUE_CHK_NKINDS && bad; k++) {
		if (!(bad & 1u << k))
			continue;
		struct queue_check_item it = {.kind = k};
		memcpy(it.qid, p->qid, QUEUE_ID_SIZE);
		snprintf(it.file, sizeof it.file, "msg/%s", p->qid);
		it.due = p->rec.due;
		it.size = p->rec.body_size;
		it.recorded = p->rec.size;
		emit(c, &it);
	}
}

/* Walks a DB in chunks: each chunk is one read transaction that resumes
 * after the last key of the one before. fn sees each entry inside the
 * transaction, and after_fn runs once the transaction is over. */
static int walk(struct check *c, MDB_dbi dbi,
                void (*fn)(struct check *c, MDB_txn *txn, const MDB_val *k,
                           const MDB_val *v, void *chunk, size_t *n),
                void (*after_fn)(struct check *c, void *chunk, size_t n),
                void *chunk)
{
	uint8_t last[CHECK_KEY_BUF];
	size_t lastlen = 0;
	bool first = true;
	int rc;

	for (;;) {
		MDB_txn *txn;
		MDB_cursor *cur;
		MDB_val k, v;
		size_t n = 0;
		if ((rc = queue_ro_begin(c->r, &txn)))
			goto fail;
		if ((rc = mdb_cursor_open(txn, dbi, &cur))) {
			mdb_txn_abort(txn);
			goto fail;
		}
		if (first) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		} else {
			k.mv_size = lastlen;
			k.mv_data = last;
			rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
			if (rc == 0 && k.mv_size == lastlen &&
			    memcmp(k.mv_data, last, lastlen) == 0)
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
		for (; rc == 0 && n < CHECK_CHUNK;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
			fn(c, txn, &k, &v, chunk, &n);
			if (k.mv_size <= sizeof last) {
				lastlen = k.mv_size;
				memcpy(last, k.mv_data, lastlen);
			}
		}
		mdb_cursor_close(cur);
		mdb_txn_abort(txn);
		if (rc != 0 && rc != MDB_NOTFOUND)
			goto fail;
		first = false;
		after_fn(c, chunk, n);
		if (rc == MDB_NOTFOUND || c->stop)
			return 0;
	}
fail:
	log_err("queue: index read: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* ---- pass 1: records and their bodies ---------------------------------- */

static void rec_fn(struct check *c, MDB_txn *txn, const MDB_val *k,
                   const MDB_val *v, void *chunk, size_t *n)
{
	struct probe *p = chunk;
	char qid[QUEUE_ID_SIZE];
	c->st.messages++;
	if (k->mv_size == QUEUE_ID_LEN) {
		memcpy(qid, k->mv_data, QUEUE_ID_LEN);
		qid[QUEUE_ID_LEN] = '\0';
		if (queue_id_valid(qid)) {
			probe_record(c, txn, qid, v, &p[(*n)++]);
			return;
		}
	}
	struct queue_check_item it = {.kind = QUEUE_CHK_BAD_RECORD};
	set_key(&it, k);
	emit(c, &it);
	/* Counted as a chunk entry all the same: CHECK_CHUNK bounds the
	 * transaction, whatever the keys hold. */
	p[*n].qid[0] = '\0';
	(*n)++;
}

static void rec_after(struct check *c, void *chunk, size_t n)
{
	struct probe *p = chunk;
	for (size_t i = 0; i < n && !c->stop; i++) {
		if (!p[i].qid[0])
			continue;
		probe_body(c, &p[i]);
		report_record(c, &p[i]);
	}
}

/* ---- pass 2: schedule entries ------------------------------------------- */

/* Judges the entry (k) against its record, inside txn. */
static void sched_judge(struct check *c, MDB_txn *txn, const MDB_val *k)
{
	struct queue_check_item it = {.kind = QUEUE_CHK_STALE_SCHED};
	char qid[QUEUE_ID_SIZE] = "";
	if (k->mv_size == QUEUE_SCHED_KEY_LEN) {
		memcpy(qid, (const uint8_t *)k->mv_data + 8, QUEUE_ID_LEN);
		qid[QUEUE_ID_LEN] = '\0';
	}
	set_key(&it, k);
	if (!queue_id_valid(qid)) {
		it.stale = QUEUE_STALE_BAD_KEY;
		emit(c, &it);
		return;
	}
	it.at = sched_time(k->mv_data);
	MDB_val mk = {QUEUE_ID_LEN, qid}, mv;
	struct probe p;
	bool have = mdb_get(txn, c->r->dbi_msg, &mk, &mv) == 0;
	if (have)
		probe_record(c, txn, qid, &mv, &p);
	it.stale = queue_check_sched_eval(it.at, have ? &p.rec : NULL);
	if (it.stale == QUEUE_STALE_OK)
		return;
	memcpy(it.qid, qid, QUEUE_ID_SIZE);
	it.due = have ? p.rec.due : -1;
	emit(c, &it);
}

static void sched_fn(struct check *c, MDB_txn *txn, const MDB_val *k,
                     const MDB_val *v, void *chunk, size_t *n)
{
	(void)v;
	(void)chunk;
	c->st.scheduled++;
	sched_judge(c, txn, k);
	(*n)++;
}

static void no_after(struct check *c, void *chunk, size_t n)
{
	(void)c;
	(void)chunk;
	(void)n;
}

/* ---- pass 3: the directories ------------------------------------------- */

/* A name in msg/ (or tmp/, in_tmp) judged on its own; bodies are judged
 * against the index by the caller. */
static void judge_file(struct check *c, const char *name, bool in_tmp)
{
	struct queue_check_item it = {.kind = QUEUE_CHK_TEMP};
	snprintf(it.file, sizeof it.file, "%s/%s", in_tmp ? "tmp" : "msg", name);
	if (!in_tmp) {
		enum queue_check_name nc = queue_check_name(name);
		if (nc == QUEUE_NAME_PART && (c->flags & QUEUE_CHECK_LIVE)) {
			c->st.in_use++;
			return;
		}
		if (nc == QUEUE_NAME_STRAY)
			it.kind = QUEUE_CHK_STRAY;
	}
	emit(c, &it);
}

/* Bodies whose record is missing: names looked up CHECK_CHUNK at a time,
 * one read transaction each. */
static int judge_bodies(struct check *c, char (*names)[QUEUE_ID_SIZE],
                        size_t n)
{
	MDB_txn *txn;
	bool has[CHECK_CHUNK];
	int rc = queue_ro_begin(c->r, &txn);
	if (rc) {
		log_err("queue: index read: %s", mdb_strerror(rc));
		return queue_mdb_errno(rc);
	}
	for (size_t i = 0; i < n; i++) {
		MDB_val k = {QUEUE_ID_LEN, names[i]}, v;
		rc = mdb_get(txn, c->r->dbi_msg, &k, &v);
		if (rc != 0 && rc != MDB_NOTFOUND)
			break;
		has[i] = rc == 0;
		rc = 0;
	}
	mdb_txn_abort(txn);
	if (rc) {
		log_err("queue: index read: %s", mdb_strerror(rc));
		return queue_mdb_errno(rc);
	}
	for (size_t i = 0; i < n; i++) {
		if (has[i]) {
			c->st.bodies++;
			continue;
		}
		struct queue_check_item it = {.kind = QUEUE_CHK_ORPHAN_BODY};
		memcpy(it.qid, names[i], QUEUE_ID_SIZE);
		snprintf(it.file, sizeof it.file, "msg/%s", names[i]);
		emit(c, &it);
	}
	return 0;
}

static int scan_dir(struct check *c, const char *sub)
{
	bool in_tmp = strcmp(sub, "tmp") == 0;
	char path[4096];
	if (snprintf(path, sizeof path, "%s/%s", c->r->spool_dir, sub) >=
	    (int)sizeof path)
		return -ENAMETOOLONG;
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		int r = -errno;
		if (fd >= 0)
			close(fd);
		if (r == -ENOENT)
			return 0;   /* no bodies at all: pass 1 said so */
		log_err("queue: cannot read %s: %s", path, strerror(-r));
		return r;
	}
	char names[CHECK_CHUNK][QUEUE_ID_SIZE];
	size_t n = 0;
	int r = 0;
	struct dirent *e;
	errno = 0;
	while (!c->stop && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (in_tmp || queue_check_name(e->d_name) != QUEUE_NAME_BODY) {
			judge_file(c, e->d_name, in_tmp);
			continue;
		}
		memcpy(names[n++], e->d_name, QUEUE_ID_SIZE);
		if (n == CHECK_CHUNK) {
			if ((r = judge_bodies(c, names, n)))
				break;
			n = 0;
		}
		errno = 0;
	}
	if (r == 0 && errno != 0 && !c->stop) {
		r = -errno;
		log_err("queue: cannot read %s: %s", path, strerror(-r));
	}
	if (r == 0 && n > 0 && !c->stop)
		r = judge_bodies(c, names, n);
	closedir(d);
	return r;
}

static int open_msg_dir(struct check *c)
{
	char path[4096];
	if (snprintf(path, sizeof path, "%s/msg", c->r->spool_dir) >=
	    (int)sizeof path)
		return -ENAMETOOLONG;
	c->msg_fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (c->msg_fd < 0 && errno != ENOENT) {
		int r = -errno;
		log_err("queue: cannot open %s: %s", path, strerror(-r));
		return r;
	}
	return 0;
}

int queue_ro_check(struct queue_ro *r, unsigned flags, queue_check_cb cb,
                   void *arg, struct queue_check_stats *st)
{
	struct check c = {.r = r, .flags = flags, .msg_fd = -1, .cb = cb,
	                  .arg = arg};
	struct probe *chunk = calloc(CHECK_CHUNK, sizeof *chunk);
	int rc;
	if (!chunk)
		return -ENOMEM;
	if ((rc = open_msg_dir(&c)))
		goto out;
	/* Records first, then the schedule, then the files: in a running
	 * relayd a body is placed before its record is committed and removed
	 * after its record is, so what this order sees late (an orphan body)
	 * is what a recheck resolves. */
	if ((rc = walk(&c, r->dbi_msg, rec_fn, rec_after, chunk)) == 0 &&
	    !c.stop &&
	    (rc = walk(&c, r->dbi_sched, sched_fn, no_after, NULL)) == 0 &&
	    !c.stop && (rc = scan_dir(&c, "msg")) == 0 && !c.stop)
		rc = scan_dir(&c, "tmp");
out:
	if (c.msg_fd >= 0)
		close(c.msg_fd);
	free(chunk);
	*st = c.st;
	return rc;
}

/* ---- recheck ------------------------------------------------------------ */

/* The message qid as it is now: its record, body and entry; or, without
 * a record, its body as an orphan. */
static int recheck_msg(struct check *c, const char *qid)
{
	MDB_txn *txn;
	MDB_val k = {QUEUE_ID_LEN, (void *)qid}, v;
	struct probe p;
	int rc = queue_ro_begin(c->r, &txn);
	if (rc)
		goto fail;
	rc = mdb_get(txn, c->r->dbi_msg, &k, &v);
	if (rc == 0)
		probe_record(c, txn, qid, &v, &p);
	mdb_txn_abort(txn);
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto fail;
	memcpy(p.qid, qid, QUEUE_ID_SIZE);
	bool have = rc == 0;
	probe_body(c, &p);
	if (have) {
		report_record(c, &p);
	} else if (p.rec.body != QUEUE_BODY_MISSING) {
		struct queue_check_item it = {.kind = QUEUE_CHK_ORPHAN_BODY};
		memcpy(it.qid, qid, QUEUE_ID_SIZE);
		snprintf(it.file, sizeof it.file, "msg/%s", qid);
		emit(c, &it);
	}
	return 0;
fail:
	log_err("%s: index read: %s", qid, mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

/* An entry of DB dbi with key it->key, if it is still there. */
static int recheck_key(struct check *c, const struct queue_check_item *it,
                       MDB_dbi dbi)
{
	if (it->keylen > QUEUE_CHECK_KEY_MAX) {
		emit(c, it);    /* not kept whole: cannot look again */
		return 0;
	}
	MDB_txn *txn;
	MDB_val k = {it->keylen, (void *)it->key}, v;
	int rc = queue_ro_begin(c->r, &txn);
	if (rc)
		goto fail;
	rc = mdb_get(txn, dbi, &k, &v);
	if (rc == 0) {
		if (dbi == c->r->dbi_sched)
			sched_judge(c, txn, &k);
		else
			emit(c, it);
	}
	mdb_txn_abort(txn);
	if (rc == 0 || rc == MDB_NOTFOUND)
		return 0;
fail:
	log_err("queue: index read: %s", mdb_strerror(rc));
	return queue_mdb_errno(rc);
}

int queue_ro_recheck(struct queue_ro *r, unsigned flags,
                     const struct queue_check_item *it, queue_check_cb cb,
                     void *arg)
{
	struct check c = {.r = r, .flags = flags, .msg_fd = -1, .cb = cb,
	                  .arg = arg};
	int rc = 0;
	if (it->kind == QUEUE_CHK_STALE_SCHED)
		return recheck_key(&c, it, r->dbi_sched);
	if (it->kind == QUEUE_CHK_BAD_RECORD && it->keylen)
		return recheck_key(&c, it, r->dbi_msg);
	if ((rc = open_msg_dir(&c)))
		return rc;
	if (it->qid[0]) {
		rc = recheck_msg(&c, it->qid);
	} else {
		/* A file by itself: still there? */
		char path[4096];
		struct stat st;
		const char *name = strchr(it->file, '/');
		if (name && snprintf(path, sizeof path, "%s/%s", r->spool_dir,
		                     it->file) < (int)sizeof path &&
		    lstat(path, &st) == 0)
			judge_file(&c, name + 1, strncmp(it->file, "tmp/", 4) == 0);
	}
	if (c.msg_fd >= 0)
		close(c.msg_fd);
	return rc;
}
