/*
 * tests/unit/test_queue_admin.c - Unit tests of the offline admin API
 * (queue/queue_admin.c): hold, release and delete on a spool written by
 * the daemon side (queue_open + queue_commit) and then closed, checked
 * through the read side, straight from LMDB (the queue module's own tests
 * may look: the "sched" invariant of queue.h), and by reopening the spool
 * with queue_open(): recovery must find nothing to repair. Also: a
 * missing spool, an index another process has open, a corrupt record, a
 * misplaced schedule entry, and the map size surviving the admin's
 * commits. Every test that opens a loop ends with uv_loop_close() == 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "common/log.h"
#include "queue/queue_int.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAP_SIZE (16u << 20)
#define ARRIVAL 1700000000
#define NOW 1800000000

/* ---- a spool written by the daemon side ------------------------------- */

struct spool {
	char dir[64];
	uv_loop_t loop;
	struct queue *q;
};

static void commit_cb(void *arg, int status)
{
	int *r = arg;
	r[0]++;
	r[1] = status;
}

static void closed_cb(void *arg)
{
	*(bool *)arg = true;
}

static void spool_open(struct spool *s)
{
	struct queue_opts o = {.spool_dir = s->dir, .map_size = MAP_SIZE,
	                       .sync = QUEUE_SYNC_SYNCFS};
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(queue_open(&s->loop, &o, &s->q), 0);
}

static void spool_close(struct spool *s)
{
	bool closed = false;
	queue_close(s->q, closed_cb, &closed);
	assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s->loop), 0);
	s->q = NULL;
}

static void rm_tree(const char *dir)
{
	static const char *const sub[] = {"tmp", "msg", "index"};
	char p[256], f[512];
	for (size_t i = 0; i < ARRAY_LEN(sub); i++) {
		snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(f, sizeof f, "%s/%s", p, e->d_name);
			unlink(f);
		}
		closedir(d);
		rmdir(p);
	}
	snprintf(f, sizeof f, "%s/relayd.log", dir);
	unlink(f);
	rmdir(dir);
}

/* Recipients: one of each state; the pending one (next attempt 0 = the
 * arrival) makes the message due at its arrival, which is what the
 * daemon's commit schedules. */
static struct queue_rcpt rcpts[] = {
	{"a@example.org", NULL, 0, QUEUE_RCPT_PENDING, 0, 0, NULL, NULL, NULL,
	 0, NULL, 0},
	{"b@example.net", "rfc822;b@example.net", QUEUE_NOTIFY_FAILURE,
	 QUEUE_RCPT_DEFERRED, 2, ARRIVAL + 500, "451 4.7.1 try again later",
	 "mx:mx.example.net", "mx.example.net[192.0.2.7]:25", ARRIVAL + 20,
	 NULL, 0},
	{"c@example.com", NULL, 0, QUEUE_RCPT_SENT, 1, 0, "250 2.0.0 ok",
	 NULL, NULL, 0, NULL, 0},
	{"d@example.com", NULL, 0, QUEUE_RCPT_BOUNCED, 1, 0, "550 5.1.1 no",
	 NULL, NULL, 0, NULL, 0},
};

static void commit_one(struct spool *s, char qid[QUEUE_ID_SIZE], uint8_t st)
{
	static const char body[] = "Subject: x\r\n\r\nhello\r\n";
	int res[2] = {0, -1};
	struct queue_body *b;
	queue_new_id(s->q, qid);
	assert_int_equal(queue_body_open(s->q, qid, &b), 0);
	assert_int_equal(queue_body_write(b, body, sizeof body - 1), 0);
	struct queue_msg m = {.arrival = ARRIVAL, .state = st,
	                      .sender = "from@example.org",
	                      .nrcpt = ARRAY_LEN(rcpts), .rcpt = rcpts};
	memcpy(m.qid, qid, QUEUE_ID_SIZE);
	assert_int_equal(queue_commit(s->q, b, &m, commit_cb, res), 0);
	while (res[0] < 1)
		uv_run(&s->loop, UV_RUN_ONCE);
	assert_int_equal(res[1], 0);
}

static void spool_setup(struct spool *s, size_t nactive, size_t nhold,
                        char qids[][QUEUE_ID_SIZE])
{
	snprintf(s->dir, sizeof s->dir, "/tmp/relayd-tqa-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	spool_open(s);
	for (size_t i = 0; i < nactive + nhold; i++)
		commit_one(s, qids[i], i < nactive ? QUEUE_MSG_ACTIVE : QUEUE_MSG_HOLD);
	spool_close(s);
}

static bool has_body(const char *dir, const char *qid)
{
	char p[256];
	assert_int_equal(queue_body_path(dir, qid, p, sizeof p), 0);
	return access(p, F_OK) == 0;
}

static struct queue_msg *ro_get(const char *dir, const char *qid, int want)
{
	struct queue_ro *ro;
	struct queue_msg *m = NULL;
	assert_int_equal(queue_ro_open(dir, &ro), 0);
	assert_int_equal(queue_ro_get(ro, qid, &m), want);
	queue_ro_close(ro);
	return m;
}

/* ---- the index, read raw --------------------------------------------- */

struct raw {
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi msg, sched;
};

static void raw_open(struct raw *r, const char *dir, bool write)
{
	char p[256];
	snprintf(p, sizeof p, "%s/index", dir);
	assert_int_equal(mdb_env_create(&r->env), 0);
	assert_int_equal(mdb_env_set_maxdbs(r->env, QUEUE_MAXDBS), 0);
	assert_int_equal(mdb_env_open(r->env, p, write ? 0 : MDB_RDONLY, 0600), 0);
	/* The size the environment recorded, not LMDB's default. */
	assert_int_equal(mdb_env_set_mapsize(r->env, 0), 0);
	assert_int_equal(mdb_txn_begin(r->env, NULL, write ? 0 : MDB_RDONLY,
	                               &r->txn), 0);
	assert_int_equal(mdb_dbi_open(r->txn, QUEUE_DB_MSG, 0, &r->msg), 0);
	assert_int_equal(mdb_dbi_open(r->txn, QUEUE_DB_SCHED, 0, &r->sched), 0);
}

static void raw_close(struct raw *r, bool commit)
{
	if (commit)
		assert_int_equal(mdb_txn_commit(r->txn), 0);
	else
		mdb_txn_abort(r->txn);
	mdb_env_close(r->env);
}

/* The invariant of queue.h: an ACTIVE message with something left to
 * deliver has exactly one "sched" entry, at queue_msg_due(); any other
 * message has none; no entry points at a missing record. Returns the
 * number of entries. */
static size_t check_sched(const char *dir)
{
	struct raw r;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t nsched = 0, want = 0;
	int rc;
	raw_open(&r, dir, false);
	assert_int_equal(mdb_cursor_open(r.txn, r.sched, &cur), 0);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		char qid[QUEUE_ID_SIZE];
		struct queue_msg *m;
		uint8_t sk[QUEUE_SCHED_KEY_LEN];
		MDB_val mk = {QUEUE_ID_LEN, qid}, mv;
		assert_int_equal(k.mv_size, QUEUE_SCHED_KEY_LEN);
		memcpy(qid, (char *)k.mv_data + 8, QUEUE_ID_LEN);
		qid[QUEUE_ID_LEN] = '\0';
		if (mdb_get(r.txn, r.msg, &mk, &mv) != 0)
			fail_msg("%s: schedule entry without record", qid);
		assert_int_equal(queue_msg_decode(qid, mv.mv_data, mv.mv_size, &m), 0);
		if (m->state != QUEUE_MSG_ACTIVE)
			fail_msg("%s: %s message scheduled", qid,
			         queue_msg_state_names[m->state]);
		queue_sched_key(queue_msg_due(m), qid, sk);
		if (memcmp(sk, k.mv_data, sizeof sk) != 0)
			fail_msg("%s: scheduled at the wrong time", qid);
		queue_msg_free(m);
		nsched++;
	}
	assert_int_equal(rc, MDB_NOTFOUND);
	mdb_cursor_close(cur);
	assert_int_equal(mdb_cursor_open(r.txn, r.msg, &cur), 0);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		char qid[QUEUE_ID_SIZE];
		struct queue_msg *m;
		memcpy(qid, k.mv_data, QUEUE_ID_LEN);
		qid[QUEUE_ID_LEN] = '\0';
		if (queue_msg_decode(qid, v.mv_data, v.mv_size, &m) != 0)
			continue;       /* a corrupt record planted by a test */
		want += m->state == QUEUE_MSG_ACTIVE && queue_msg_due(m) >= 0;
		queue_msg_free(m);
	}
	mdb_cursor_close(cur);
	raw_close(&r, false);
	assert_int_equal(nsched, want);
	return nsched;
}

/* The map size the environment records (its meta page). */
static uint64_t recorded_map_size(const char *dir)
{
	struct raw r;
	MDB_envinfo info;
	raw_open(&r, dir, false);
	assert_int_equal(mdb_env_info(r.env, &info), 0);
	raw_close(&r, false);
	return info.me_mapsize;
}

/* Reopens the spool as relayd does at startup, logging to a file, and
 * returns what recovery said (malloc'd). */
static char *reopen_log(struct spool *s)
{
	char path[128];
	snprintf(path, sizeof path, "%s/relayd.log", s->dir);
	unlink(path);
	assert_int_equal(log_open(path, false, LOG_INFO), 0);
	spool_open(s);
	spool_close(s);
	log_close();
	assert_int_equal(log_open(NULL, false, LOG_ERR), 0);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	char *text = calloc(1, 65536);
	assert_non_null(text);
	size_t n = fread(text, 1, 65535, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static void assert_clean_recovery(struct spool *s, size_t nmsg)
{
	char *log = reopen_log(s);
	char want[64];
	snprintf(want, sizeof want, "recovery: %zu messages in queue, 0 repaired",
	         nmsg);
	if (!strstr(log, want) || strstr(log, "dropped") || strstr(log, "removed") ||
	    strstr(log, "warning") || strstr(log, "error"))
		fail_msg("recovery repaired something:\n%s", log);
	free(log);
}

/* ---- tests ------------------------------------------------------------ */

static void test_hold_release(void **state)
{
	(void)state;
	struct spool s;
	char q[3][QUEUE_ID_SIZE];
	struct queue_admin *a;
	struct queue_msg *m;
	spool_setup(&s, 2, 1, q);
	assert_int_equal(check_sched(s.dir), 2);

	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_hold(a, q[0]), 0);
	assert_int_equal(queue_admin_hold(a, q[0]), 0);     /* already held */
	assert_int_equal(queue_admin_hold(a, q[2]), 0);     /* held at arrival */
	queue_admin_close(a);
	m = ro_get(s.dir, q[0], 0);
	assert_int_equal(m->state, QUEUE_MSG_HOLD);
	/* Nothing else changed. */
	assert_int_equal(m->nrcpt, ARRAY_LEN(rcpts));
	assert_int_equal(m->rcpt[1].next_attempt, ARRIVAL + 500);
	assert_int_equal(m->rcpt[1].attempts, 2);
	assert_string_equal(m->rcpt[1].last_reply, "451 4.7.1 try again later");
	assert_string_equal(m->sender, "from@example.org");
	queue_msg_free(m);
	assert_int_equal(check_sched(s.dir), 1);

	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_release(a, q[0], NOW), 0);
	assert_int_equal(queue_admin_release(a, q[2], NOW + 1), 0);
	/* Not held: nothing changes, also not its schedule. */
	assert_int_equal(queue_admin_release(a, q[1], NOW + 2), 0);
	queue_admin_close(a);
	for (size_t i = 0; i < 3; i++) {
		m = ro_get(s.dir, q[i], 0);
		int64_t t = i == 0 ? NOW : i == 2 ? NOW + 1 : 0;
		assert_int_equal(m->state, QUEUE_MSG_ACTIVE);
		assert_int_equal(m->rcpt[0].next_attempt, t);
		assert_int_equal(m->rcpt[1].next_attempt, t ? t : ARRIVAL + 500);
		/* Sent and bounced recipients are not scheduled again. */
		assert_int_equal(m->rcpt[2].next_attempt, 0);
		assert_int_equal(m->rcpt[3].next_attempt, 0);
		assert_int_equal(m->rcpt[1].attempts, 2);
		assert_int_equal(queue_msg_due(m), t ? t : ARRIVAL);
		queue_msg_free(m);
	}
	assert_int_equal(check_sched(s.dir), 3);

	/* relayd's next start finds a consistent index. */
	assert_clean_recovery(&s, 3);
	assert_int_equal(check_sched(s.dir), 3);
	m = ro_get(s.dir, q[0], 0);
	assert_int_equal(m->state, QUEUE_MSG_ACTIVE);
	assert_int_equal(m->rcpt[0].next_attempt, NOW);
	queue_msg_free(m);

	/* A hold made offline survives a restart too. */
	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_hold(a, q[1]), 0);
	queue_admin_close(a);
	assert_clean_recovery(&s, 3);
	m = ro_get(s.dir, q[1], 0);
	assert_int_equal(m->state, QUEUE_MSG_HOLD);
	queue_msg_free(m);
	assert_int_equal(check_sched(s.dir), 2);
	assert_int_equal(recorded_map_size(s.dir), MAP_SIZE);
	rm_tree(s.dir);
}

static void test_delete(void **state)
{
	(void)state;
	struct spool s;
	char q[3][QUEUE_ID_SIZE];
	struct queue_admin *a;
	spool_setup(&s, 2, 1, q);

	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_delete(a, q[0]), 0);   /* active */
	assert_int_equal(queue_admin_delete(a, q[2]), 0);   /* held */
	assert_int_equal(queue_admin_delete(a, q[0]), -ENOENT);
	queue_admin_close(a);
	ro_get(s.dir, q[0], -ENOENT);
	ro_get(s.dir, q[2], -ENOENT);
	assert_false(has_body(s.dir, q[0]));
	assert_false(has_body(s.dir, q[2]));
	assert_true(has_body(s.dir, q[1]));
	assert_int_equal(check_sched(s.dir), 1);

	/* A body already gone (a crash between commit and unlink, seen
	 * from the other side) is no error. */
	char p[256];
	assert_int_equal(queue_body_path(s.dir, q[1], p, sizeof p), 0);
	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(queue_admin_delete(a, q[1]), 0);
	queue_admin_close(a);
	assert_int_equal(check_sched(s.dir), 0);

	assert_clean_recovery(&s, 0);
	ro_get(s.dir, q[0], -ENOENT);
	assert_int_equal(recorded_map_size(s.dir), MAP_SIZE);
	rm_tree(s.dir);
}

static void test_unknown_and_bad_ids(void **state)
{
	(void)state;
	struct spool s;
	char q[1][QUEUE_ID_SIZE];
	struct queue_admin *a;
	spool_setup(&s, 1, 0, q);
	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	static const char *const unknown = "0000000000000000";
	assert_int_equal(queue_admin_hold(a, unknown), -ENOENT);
	assert_int_equal(queue_admin_release(a, unknown, NOW), -ENOENT);
	assert_int_equal(queue_admin_delete(a, unknown), -ENOENT);
	static const char *const bad[] = {"", "../index/data.m", "0000",
	                                  "000000000000000a", "000000000000000U"};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		assert_int_equal(queue_admin_hold(a, bad[i]), -EINVAL);
		assert_int_equal(queue_admin_release(a, bad[i], NOW), -EINVAL);
		assert_int_equal(queue_admin_delete(a, bad[i]), -EINVAL);
	}
	queue_admin_close(a);
	queue_admin_close(NULL);
	assert_true(has_body(s.dir, q[0]));
	assert_int_equal(check_sched(s.dir), 1);
	rm_tree(s.dir);
}

static void test_missing_spool(void **state)
{
	(void)state;
	struct queue_admin *a;
	char dir[64], sub[128];
	snprintf(dir, sizeof dir, "/tmp/relayd-tqa-XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(sub, sizeof sub, "%s/spool", dir);
	assert_int_equal(queue_admin_open(sub, &a), -ENOENT);
	assert_int_equal(access(sub, F_OK), -1);      /* nothing created */
	assert_int_equal(queue_admin_open(dir, &a), -ENOENT);
	/* An index directory without data is not a spool either. */
	snprintf(sub, sizeof sub, "%s/index", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_int_equal(queue_admin_open(dir, &a), -ENOENT);
	snprintf(sub, sizeof sub, "%s/index/data.mdb", dir);
	assert_int_equal(access(sub, F_OK), -1);
	rm_tree(dir);
}

/* Another process with the index open (relayd without its control
 * socket, or a reader): the admin refuses rather than change the queue
 * behind its back. */
static void test_busy(void **state)
{
	(void)state;
	struct spool s;
	char q[1][QUEUE_ID_SIZE];
	struct queue_admin *a;
	int go[2], done[2];
	spool_setup(&s, 1, 0, q);
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(done), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* Only the ends it uses: the parent's exit is an EOF here,
		 * also when its assertions fail first. */
		close(go[0]);
		close(done[1]);
		struct queue_ro *ro = NULL;
		char c = queue_ro_open(s.dir, &ro) == 0 ? 'y' : 'n';
		if (write(go[1], &c, 1) != 1)
			_exit(1);
		if (read(done[0], &c, 1) < 0)
			_exit(1);
		queue_ro_close(ro);
		_exit(0);
	}
	close(go[1]);
	close(done[0]);
	char c = 0;
	assert_int_equal(read(go[0], &c, 1), 1);
	assert_int_equal(c, 'y');
	assert_int_equal(queue_admin_open(s.dir, &a), -EBUSY);
	assert_int_equal(write(done[1], "x", 1), 1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(go[0]);
	close(done[1]);
	/* The reader is gone: fine now. */
	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_hold(a, q[0]), 0);
	queue_admin_close(a);
	rm_tree(s.dir);
}

/* A record that cannot be decoded: hold and release refuse (-EIO) and
 * change nothing; delete removes it with its schedule entry. */
static void test_corrupt_record(void **state)
{
	(void)state;
	struct spool s;
	char q[1][QUEUE_ID_SIZE];
	struct queue_admin *a;
	struct raw r;
	static const char *const bad = "01HX0000000B0000";
	spool_setup(&s, 1, 0, q);

	raw_open(&r, s.dir, true);
	uint8_t junk[] = {QUEUE_REC_VERSION, 0xff, 0xff};
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	MDB_val k = {QUEUE_ID_LEN, (void *)bad}, v = {sizeof junk, junk};
	queue_sched_key(ARRIVAL + 7, bad, sk);
	MDB_val skv = {sizeof sk, sk}, empty = {0, NULL};
	assert_int_equal(mdb_put(r.txn, r.msg, &k, &v, 0), 0);
	assert_int_equal(mdb_put(r.txn, r.sched, &skv, &empty, 0), 0);
	raw_close(&r, true);

	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_hold(a, bad), -EIO);
	assert_int_equal(queue_admin_release(a, bad, NOW), -EIO);
	assert_int_equal(queue_admin_delete(a, bad), 0);
	assert_int_equal(queue_admin_delete(a, bad), -ENOENT);
	queue_admin_close(a);
	ro_get(s.dir, bad, -ENOENT);
	assert_int_equal(check_sched(s.dir), 1);    /* q[0]'s only */
	assert_true(has_body(s.dir, q[0]));
	rm_tree(s.dir);
}

/* An ACTIVE message whose schedule entry is not at queue_msg_due() (a
 * writer that broke the invariant): hold and delete still leave no entry
 * behind. */
static void test_misplaced_sched(void **state)
{
	(void)state;
	struct spool s;
	char q[2][QUEUE_ID_SIZE];
	struct queue_admin *a;
	struct raw r;
	spool_setup(&s, 2, 0, q);
	raw_open(&r, s.dir, true);
	for (size_t i = 0; i < 2; i++) {
		uint8_t sk[QUEUE_SCHED_KEY_LEN];
		queue_sched_key(ARRIVAL, q[i], sk);
		MDB_val k = {sizeof sk, sk}, empty = {0, NULL};
		assert_int_equal(mdb_del(r.txn, r.sched, &k, NULL), 0);
		queue_sched_key(ARRIVAL + 99, q[i], sk);
		assert_int_equal(mdb_put(r.txn, r.sched, &k, &empty, 0), 0);
	}
	raw_close(&r, true);

	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_hold(a, q[0]), 0);
	assert_int_equal(queue_admin_delete(a, q[1]), 0);
	queue_admin_close(a);
	assert_int_equal(check_sched(s.dir), 0);
	assert_int_equal(queue_admin_open(s.dir, &a), 0);
	assert_int_equal(queue_admin_release(a, q[0], NOW), 0);
	queue_admin_close(a);
	assert_int_equal(check_sched(s.dir), 1);
	rm_tree(s.dir);
}

int main(void)
{
	/* Expected errors (corrupt record) stay out of the output. */
	log_open(NULL, false, LOG_ERR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hold_release),
		cmocka_unit_test(test_delete),
		cmocka_unit_test(test_unknown_and_bad_ids),
		cmocka_unit_test(test_missing_spool),
		cmocka_unit_test(test_busy),
		cmocka_unit_test(test_corrupt_record),
		cmocka_unit_test(test_misplaced_sched),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
