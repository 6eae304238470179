/*
 * tests/unit/test_queue_ops.c - Unit tests of the queue's delivery side:
 * the pure helpers queue_msg_due() and queue_msg_dup(), then, on a real
 * spool in a temporary directory, changes to committed messages
 * (queue_update, queue_remove, batched on the writer), the loop-side reads
 * (queue_get, queue_scan_due, queue_count), the commit notification,
 * queue_close with changes still queued, and startup recovery of the
 * schedule rule after the index was tampered with directly through LMDB.
 * Every test that opens a loop ends with uv_loop_close() == 0.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "common/log.h"
#include "queue/queue_int.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Times used throughout: far in the past, so nothing depends on the clock. */
#define T0 INT64_C(1700000000)

static const char *const rcpt_addr[] = {
	"r0@example.org", "r1@example.org", "r2@example.net", "r3@example.com",
};

/* A message on the stack: strings are literals, recipients in rc[]. */
struct tmsg {
	struct queue_msg m;
	struct queue_rcpt rc[4];
};

static void tmsg_init(struct tmsg *t, const char *qid, int64_t arrival,
                      uint8_t state, size_t nrcpt)
{
	memset(t, 0, sizeof *t);
	if (qid)
		memcpy(t->m.qid, qid, QUEUE_ID_SIZE);
	t->m.arrival = arrival;
	t->m.state = state;
	t->m.sender = "from@example.org";
	t->m.nrcpt = nrcpt;
	t->m.rcpt = nrcpt ? t->rc : NULL;
	for (size_t i = 0; i < nrcpt; i++)
		t->rc[i].addr = (char *)rcpt_addr[i];
}

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool blob_eq(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static void assert_msg_equal(const char *name, const struct queue_msg *a,
                             const struct queue_msg *b)
{
	if (strcmp(a->qid, b->qid) || a->arrival != b->arrival ||
	    a->arrival_ms != b->arrival_ms ||
	    a->size != b->size || a->state != b->state || a->flags != b->flags ||
	    !str_eq(a->sender, b->sender) || !str_eq(a->envid, b->envid) ||
	    !str_eq(a->dkim_sig, b->dkim_sig) ||
	    !blob_eq(a->ext, a->extlen, b->ext, b->extlen) ||
	    a->nrcpt != b->nrcpt)
		fail_msg("%s: message fields differ", name);
	for (size_t i = 0; i < a->nrcpt; i++) {
		const struct queue_rcpt *x = &a->rcpt[i], *y = &b->rcpt[i];
		if (!str_eq(x->addr, y->addr) || !str_eq(x->orcpt, y->orcpt) ||
		    x->notify != y->notify || x->state != y->state ||
		    x->attempts != y->attempts ||
		    x->next_attempt != y->next_attempt ||
		    !str_eq(x->last_reply, y->last_reply) ||
		    !str_eq(x->dest, y->dest) || !str_eq(x->mx, y->mx) ||
		    x->last_try != y->last_try ||
		    !blob_eq(x->ext, x->extlen, y->ext, y->extlen))
			fail_msg("%s: recipient %zu differs", name, i);
	}
}

/* ---- queue_msg_due ---------------------------------------------------- */

#define P QUEUE_RCPT_PENDING
#define D QUEUE_RCPT_DEFERRED
#define S QUEUE_RCPT_SENT
#define B QUEUE_RCPT_BOUNCED

static const struct {
	const char *name;
	int64_t arrival;
	uint8_t state;
	size_t n;
	uint8_t st[4];
	int64_t next[4];
	int64_t want;
} due_cases[] = {
	{"no recipients", T0, QUEUE_MSG_ACTIVE, 0, {0}, {0}, -1},
	{"all sent", T0, QUEUE_MSG_ACTIVE, 2, {S, S}, {0, T0 + 5}, -1},
	{"all bounced", T0, QUEUE_MSG_ACTIVE, 1, {B}, {T0 + 9}, -1},
	{"sent and bounced", T0, QUEUE_MSG_ACTIVE, 3, {S, B, S}, {T0, 0, 7}, -1},
	{"pending, next 0 = arrival", T0, QUEUE_MSG_ACTIVE, 1, {P}, {0}, T0},
	{"deferred, next 0 = arrival", T0, QUEUE_MSG_ACTIVE, 1, {D}, {0}, T0},
	{"one deferred", T0, QUEUE_MSG_ACTIVE, 1, {D}, {T0 + 600}, T0 + 600},
	{"mixed deferred: the minimum", T0, QUEUE_MSG_ACTIVE, 4, {D, D, P, D},
	 {T0 + 900, T0 + 300, T0 + 400, T0 + 301}, T0 + 300},
	{"done recipients do not count", T0, QUEUE_MSG_ACTIVE, 4, {S, D, B, D},
	 {T0 + 1, T0 + 500, T0 + 2, T0 + 700}, T0 + 500},
	{"next 0 beside later ones", T0, QUEUE_MSG_ACTIVE, 3, {D, P, D},
	 {T0 + 50, 0, T0 + 60}, T0},
	{"deferred before arrival", T0, QUEUE_MSG_ACTIVE, 2, {P, D},
	 {0, T0 - 10}, T0 - 10},
	{"HOLD does not matter", T0, QUEUE_MSG_HOLD, 2, {D, D},
	 {T0 + 80, T0 + 70}, T0 + 70},
	{"HOLD, nothing left", T0, QUEUE_MSG_HOLD, 1, {S}, {0}, -1},
	{"arrival 0", 0, QUEUE_MSG_ACTIVE, 1, {P}, {0}, 0},
	/* A negative time is still due (as soon as possible), never "done":
	 * the schedule key clamps it to 0 too. */
	{"negative next_attempt", T0, QUEUE_MSG_ACTIVE, 2, {D, D},
	 {-5, T0 + 5}, 0},
	{"negative arrival", -100, QUEUE_MSG_ACTIVE, 2, {P, D}, {0, 30}, 0},
};

#undef P
#undef D
#undef S
#undef B

static void test_msg_due(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(due_cases); i++) {
		struct tmsg t;
		tmsg_init(&t, "01HX0000000A0000", due_cases[i].arrival,
		          due_cases[i].state, due_cases[i].n);
		for (size_t j = 0; j < due_cases[i].n; j++) {
			t.rc[j].state = due_cases[i].st[j];
			t.rc[j].next_attempt = due_cases[i].next[j];
		}
		int64_t got = queue_msg_due(&t.m);
		if (got != due_cases[i].want)
			fail_msg("%s: due %lld, want %lld", due_cases[i].name,
			         (long long)got, (long long)due_cases[i].want);
	}
}

/* ---- queue_msg_dup ---------------------------------------------------- */

static struct queue_msg *heap_msg(void)
{
	struct queue_msg *m = calloc(1, sizeof *m);
	assert_non_null(m);
	memcpy(m->qid, "01HX0000000A0000", QUEUE_ID_SIZE);
	m->arrival = T0;
	m->size = 4321;
	m->state = QUEUE_MSG_HOLD;
	m->flags = QUEUE_F_SMTPUTF8 | QUEUE_F_RET_FULL;
	m->sender = strdup("sender@example.org");
	m->envid = strdup("ENV+2B1");
	m->nrcpt = 3;
	m->rcpt = calloc(3, sizeof *m->rcpt);
	assert_non_null(m->rcpt);
	m->dkim_sig = strdup("DKIM-Signature: v=1; d=example.org\r\n");
	m->arrival_ms = 123;
	m->rcpt[0] = (struct queue_rcpt){strdup("a@example.org"),
	                                 strdup("rfc822;a@example.org"),
	                                 QUEUE_NOTIFY_FAILURE, QUEUE_RCPT_DEFERRED,
	                                 2, T0 + 60, strdup("451 4.7.1 later"),
	                                 strdup("mx:mx.example.org"),
	                                 strdup("mx.example.org[192.0.2.1]:25"),
	                                 T0 + 1, NULL, 0};
	m->rcpt[1] = (struct queue_rcpt){strdup("b@example.org"), NULL, 0,
	                                 QUEUE_RCPT_PENDING, 0, 0, NULL, NULL, NULL,
	                                 0, NULL, 0};
	m->rcpt[2] = (struct queue_rcpt){strdup("c@example.org"), NULL,
	                                 QUEUE_NOTIFY_NEVER, QUEUE_RCPT_SENT, 1, 0,
	                                 strdup("250 2.0.0 ok"), NULL, NULL, 0,
	                                 NULL, 0};
	/* A later release's field (tag 9, one byte) on the message and on
	 * the last recipient. */
	static const uint8_t tlv[] = {9, 1, 'x'};
	m->ext = malloc(sizeof tlv);
	m->rcpt[2].ext = malloc(sizeof tlv);
	assert_non_null(m->ext);
	assert_non_null(m->rcpt[2].ext);
	memcpy(m->ext, tlv, sizeof tlv);
	memcpy(m->rcpt[2].ext, tlv, sizeof tlv);
	m->extlen = m->rcpt[2].extlen = sizeof tlv;
	return m;
}

static void test_msg_dup(void **state)
{
	(void)state;
	struct queue_msg *m = heap_msg(), *ref = heap_msg();
	struct queue_msg *d = queue_msg_dup(m);
	assert_non_null(d);
	assert_msg_equal("copy", m, d);

	/* Every string is a copy of its own... */
	assert_ptr_not_equal(d->sender, m->sender);
	assert_ptr_not_equal(d->envid, m->envid);
	assert_ptr_not_equal(d->dkim_sig, m->dkim_sig);
	assert_ptr_not_equal(d->ext, m->ext);
	assert_ptr_not_equal(d->rcpt[0].dest, m->rcpt[0].dest);
	assert_ptr_not_equal(d->rcpt[0].mx, m->rcpt[0].mx);
	assert_ptr_not_equal(d->rcpt[2].ext, m->rcpt[2].ext);
	assert_ptr_not_equal(d->rcpt, m->rcpt);
	for (size_t i = 0; i < m->nrcpt; i++) {
		assert_ptr_not_equal(d->rcpt[i].addr, m->rcpt[i].addr);
		if (m->rcpt[i].orcpt)
			assert_ptr_not_equal(d->rcpt[i].orcpt, m->rcpt[i].orcpt);
		if (m->rcpt[i].last_reply)
			assert_ptr_not_equal(d->rcpt[i].last_reply,
			                     m->rcpt[i].last_reply);
	}
	/* ...NULL stays NULL... */
	assert_null(d->rcpt[1].orcpt);
	assert_null(d->rcpt[1].last_reply);
	assert_null(d->rcpt[2].orcpt);

	/* ...and changing the copy leaves the original alone. */
	d->sender[0] = 'X';
	d->envid[0] = 'X';
	d->rcpt[0].addr[0] = 'X';
	d->rcpt[0].orcpt[0] = 'X';
	d->rcpt[0].last_reply[0] = '5';
	d->rcpt[0].state = QUEUE_RCPT_BOUNCED;
	d->rcpt[0].attempts = 99;
	d->rcpt[2].last_reply[0] = '5';
	d->rcpt[0].dest[0] = 'X';
	d->rcpt[0].mx[0] = 'X';
	d->dkim_sig[0] = 'X';
	d->ext[2] = 'y';
	d->rcpt[2].ext[2] = 'y';
	d->state = QUEUE_MSG_ACTIVE;
	d->arrival = 1;
	assert_msg_equal("original after the copy changed", ref, m);

	/* The copy owns its memory: it outlives the original (ASan). */
	queue_msg_free(m);
	assert_string_equal(d->rcpt[0].addr, "X@example.org");
	queue_msg_free(d);

	/* NULL envid, no recipients. */
	free(ref->envid);
	ref->envid = NULL;
	for (size_t i = 0; i < ref->nrcpt; i++) {
		free(ref->rcpt[i].addr);
		free(ref->rcpt[i].orcpt);
		free(ref->rcpt[i].last_reply);
		free(ref->rcpt[i].dest);
		free(ref->rcpt[i].mx);
		free(ref->rcpt[i].ext);
	}
	free(ref->rcpt);
	ref->rcpt = NULL;
	ref->nrcpt = 0;
	d = queue_msg_dup(ref);
	assert_non_null(d);
	assert_null(d->envid);
	assert_null(d->rcpt);
	assert_int_equal(d->nrcpt, 0);
	assert_msg_equal("no recipients", ref, d);
	queue_msg_free(d);
	queue_msg_free(ref);
}

/* ---- a spool on a loop ------------------------------------------------ */

struct spool {
	char dir[64];
	uv_loop_t loop;
	struct queue *q;
};

static void rm_tree(const char *dir)
{
	static const char *const sub[] = {"tmp", "msg", "index"};
	for (size_t i = 0; i < ARRAY_LEN(sub); i++) {
		char p[256];
		snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char f[512];
			snprintf(f, sizeof f, "%s/%s", p, e->d_name);
			unlink(f);
		}
		closedir(d);
		rmdir(p);
	}
	rmdir(dir);
}

static void closed_cb(void *arg)
{
	*(bool *)arg = true;
}

static void spool_open(struct spool *s, const struct queue_opts *tmpl)
{
	struct queue_opts o = *tmpl;
	o.spool_dir = s->dir;
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(queue_open(&s->loop, &o, &s->q), 0);
}

static void spool_close(struct spool *s)
{
	bool closed = false;
	queue_close(s->q, closed_cb, &closed);
	assert_false(closed);
	assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s->loop), 0);
	s->q = NULL;
}

static void spool_setup(struct spool *s, const struct queue_opts *o)
{
	snprintf(s->dir, sizeof s->dir, "/tmp/relayd-tqo-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	spool_open(s, o);
}

static const struct queue_opts opts_syncfs = {.map_size = 16 << 20,
                                              .sync = QUEUE_SYNC_SYNCFS};
static const struct queue_opts opts_fsync = {.map_size = 16 << 20,
                                             .sync = QUEUE_SYNC_FSYNC};

static void run_until(struct spool *s, const int *calls, int want)
{
	for (int i = 0; *calls < want; i++) {
		if (i > 100000)
			fail_msg("waited too long: %d of %d callbacks", *calls, want);
		uv_run(&s->loop, UV_RUN_ONCE);
	}
}

static bool has_body(const char *dir, const char *qid)
{
	char p[256];
	assert_int_equal(queue_body_path(dir, qid, p, sizeof p), 0);
	return access(p, F_OK) == 0;
}

struct result {
	int calls;
	int status;
};

static void result_cb(void *arg, int status)
{
	struct result *r = arg;
	r->calls++;
	r->status = status;
}

/* Commits m (its qid) with a body of `size` bytes; returns the status. */
static int commit_msg(struct spool *s, const struct queue_msg *m, size_t size)
{
	struct queue_body *b;
	struct result res = {0};
	char line[64];
	assert_int_equal(queue_body_open(s->q, m->qid, &b), 0);
	memset(line, 'x', sizeof line);
	for (size_t off = 0; off < size; off += sizeof line) {
		size_t k = size - off < sizeof line ? size - off : sizeof line;
		assert_int_equal(queue_body_write(b, line, k), 0);
	}
	assert_int_equal(queue_commit(s->q, b, m, result_cb, &res), 0);
	run_until(s, &res.calls, 1);
	assert_int_equal(res.calls, 1);
	return res.status;
}

/* A committed ACTIVE message with n PENDING recipients, arrival `t`. */
static void commit_new(struct spool *s, char qid[QUEUE_ID_SIZE], int64_t t,
                       uint8_t state, size_t n)
{
	struct tmsg m;
	queue_new_id(s->q, qid);
	tmsg_init(&m, qid, t, state, n);
	assert_int_equal(commit_msg(s, &m.m, 100), 0);
}

/* Updates and waits; returns the callback's status. */
static int update_wait(struct spool *s, const struct queue_msg *m)
{
	struct result res = {0};
	assert_int_equal(queue_update(s->q, m, result_cb, &res), 0);
	assert_int_equal(res.calls, 0);     /* never from inside */
	run_until(s, &res.calls, 1);
	return res.status;
}

static int remove_wait(struct spool *s, const char *qid)
{
	struct result res = {0};
	assert_int_equal(queue_remove(s->q, qid, result_cb, &res), 0);
	assert_int_equal(res.calls, 0);
	run_until(s, &res.calls, 1);
	return res.status;
}

/* Callbacks of several changes, in the order they ran. */
struct oplog {
	int n;
	int tag[32];
	int status[32];
	bool *closed;           /* set by queue_close's done_cb, or NULL */
};

struct optag {
	struct oplog *log;
	int tag;
};

static void oplog_cb(void *arg, int status)
{
	struct optag *t = arg;
	struct oplog *l = t->log;
	assert_true(l->n < (int)ARRAY_LEN(l->tag));
	if (l->closed)
		assert_false(*l->closed);
	l->tag[l->n] = t->tag;
	l->status[l->n] = status;
	l->n++;
}

/* Results of one queue_scan_due. */
struct hits {
	size_t n, stop_at;      /* stop_at: cb returns 1 on that hit (0: never) */
	char qid[16][QUEUE_ID_SIZE];
	int64_t due[16];
};

static int hits_cb(void *arg, const char *qid, int64_t due)
{
	struct hits *h = arg;
	assert_true(h->n < ARRAY_LEN(h->qid));
	assert_true(queue_id_valid(qid));
	memcpy(h->qid[h->n], qid, QUEUE_ID_SIZE);
	h->due[h->n] = due;
	h->n++;
	return h->stop_at && h->n == h->stop_at;
}

static struct hits scan(struct spool *s, int64_t until, int64_t *next)
{
	struct hits h = {0};
	*next = 12345;      /* must be overwritten */
	assert_int_equal(queue_scan_due(s->q, until, next, hits_cb, &h), 0);
	return h;
}

static void assert_counts(struct spool *s, uint64_t msgs, uint64_t sched)
{
	uint64_t m = 99, n = 99;
	assert_int_equal(queue_count(s->q, &m, &n), 0);
	if (m != msgs || n != sched)
		fail_msg("queue_count: %llu messages, %llu scheduled; want %llu, %llu",
		         (unsigned long long)m, (unsigned long long)n,
		         (unsigned long long)msgs, (unsigned long long)sched);
}

/* ---- queue_update ------------------------------------------------------- */

static void test_update(void **state)
{
	(void)state;
	static const struct queue_opts *const modes[] = {&opts_syncfs, &opts_fsync};
	for (size_t mi = 0; mi < ARRAY_LEN(modes); mi++) {
		struct spool s;
		char qid[QUEUE_ID_SIZE];
		int64_t next;
		struct hits h;
		spool_setup(&s, modes[mi]);
		commit_new(&s, qid, T0, QUEUE_MSG_ACTIVE, 2);
		assert_counts(&s, 1, 1);
		h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 1);
		assert_string_equal(h.qid[0], qid);
		assert_int_equal(h.due[0], T0);
		assert_int_equal(next, -1);

		/* The first attempt: r0 deferred to T, r1 delivered. */
		const int64_t T = T0 + 3600;
		struct queue_msg *m;
		assert_int_equal(queue_get(s.q, qid, &m), 0);
		assert_int_equal(m->size, 100);
		free(m->rcpt[0].last_reply);
		m->rcpt[0].last_reply = strdup("451 4.7.1 greylisted");
		m->rcpt[0].state = QUEUE_RCPT_DEFERRED;
		m->rcpt[0].attempts = 2;
		m->rcpt[0].next_attempt = T;
		m->rcpt[1].state = QUEUE_RCPT_SENT;
		m->rcpt[1].attempts = 1;
		m->rcpt[1].last_reply = strdup("250 2.0.0 ok");
		assert_int_equal(update_wait(&s, m), 0);

		struct queue_msg *got;
		assert_int_equal(queue_get(s.q, qid, &got), 0);
		assert_msg_equal("after the update", m, got);
		queue_msg_free(got);
		assert_counts(&s, 1, 1);

		/* Not due before T; `until` is inclusive. */
		h = scan(&s, T - 1, &next);
		assert_int_equal(h.n, 0);
		assert_int_equal(next, T);
		h = scan(&s, T0, &next);
		assert_int_equal(h.n, 0);
		assert_int_equal(next, T);
		h = scan(&s, T, &next);
		assert_int_equal(h.n, 1);
		assert_string_equal(h.qid[0], qid);
		assert_int_equal(h.due[0], T);
		assert_int_equal(next, -1);

		/* HOLD: no schedule entry at all. */
		m->state = QUEUE_MSG_HOLD;
		assert_int_equal(update_wait(&s, m), 0);
		h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 0);
		assert_int_equal(next, -1);
		assert_counts(&s, 1, 0);
		assert_int_equal(queue_get(s.q, qid, &got), 0);
		assert_int_equal(got->state, QUEUE_MSG_HOLD);
		queue_msg_free(got);

		/* Held again: still nothing (the delete of a missing entry is no
		 * error). */
		assert_int_equal(update_wait(&s, m), 0);
		assert_counts(&s, 1, 0);

		/* Released with a new time: exactly one entry, at that time. */
		const int64_t T2 = T0 + 7200;
		m->state = QUEUE_MSG_ACTIVE;
		m->rcpt[0].next_attempt = T2;
		assert_int_equal(update_wait(&s, m), 0);
		h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 1);
		assert_string_equal(h.qid[0], qid);
		assert_int_equal(h.due[0], T2);
		assert_counts(&s, 1, 1);

		/* Moved earlier while ACTIVE: the old entry goes. */
		m->rcpt[0].next_attempt = T0 + 10;
		assert_int_equal(update_wait(&s, m), 0);
		h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 1);
		assert_int_equal(h.due[0], T0 + 10);
		assert_counts(&s, 1, 1);

		/* The same record again: still one entry. */
		assert_int_equal(update_wait(&s, m), 0);
		assert_counts(&s, 1, 1);

		/* Nothing left but still recorded (the caller removes it): an
		 * ACTIVE record without an entry. */
		m->rcpt[0].state = QUEUE_RCPT_BOUNCED;
		assert_int_equal(update_wait(&s, m), 0);
		assert_counts(&s, 1, 0);
		h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 0);

		/* An unknown id: -ENOENT and nothing created. */
		struct tmsg u;
		char unknown[QUEUE_ID_SIZE];
		queue_new_id(s.q, unknown);
		tmsg_init(&u, unknown, T0, QUEUE_MSG_ACTIVE, 1);
		assert_int_equal(update_wait(&s, &u.m), -ENOENT);
		assert_int_equal(queue_get(s.q, unknown, &got), -ENOENT);
		assert_counts(&s, 1, 0);
		assert_false(has_body(s.dir, unknown));

		/* Refused up front, no callback: a record that cannot be
		 * encoded, an id that is not one. */
		struct result res = {0};
		u.m.sender = NULL;
		assert_int_equal(queue_update(s.q, &u.m, result_cb, &res), -EINVAL);
		assert_int_equal(queue_remove(s.q, "../x", result_cb, &res), -EINVAL);
		assert_int_equal(queue_get(s.q, "nope", &got), -EINVAL);
		uv_run(&s.loop, UV_RUN_NOWAIT);
		assert_int_equal(res.calls, 0);

		queue_msg_free(m);
		spool_close(&s);
		rm_tree(s.dir);
	}
}

/* A message committed with a recipient already deferred is scheduled at
 * queue_msg_due(), not at its arrival; an update then moves that one
 * entry (no stale entry at the arrival time is left behind). */
static void test_commit_schedules_due(void **state)
{
	(void)state;
	struct spool s;
	struct tmsg t;
	char qid[QUEUE_ID_SIZE], done[QUEUE_ID_SIZE];
	int64_t next;
	spool_setup(&s, &opts_syncfs);
	queue_new_id(s.q, qid);
	tmsg_init(&t, qid, T0, QUEUE_MSG_ACTIVE, 2);
	t.rc[0].state = QUEUE_RCPT_DEFERRED;
	t.rc[0].next_attempt = T0 + 500;
	t.rc[1].state = QUEUE_RCPT_SENT;
	assert_int_equal(commit_msg(&s, &t.m, 10), 0);
	struct hits h = scan(&s, INT64_MAX, &next);
	assert_int_equal(h.n, 1);
	assert_int_equal(h.due[0], T0 + 500);

	t.rc[0].next_attempt = T0 + 900;
	t.m.size = 10;
	assert_int_equal(update_wait(&s, &t.m), 0);
	h = scan(&s, INT64_MAX, &next);
	assert_int_equal(h.n, 1);
	assert_int_equal(h.due[0], T0 + 900);
	assert_counts(&s, 1, 1);

	/* Nothing left to deliver at commit: no entry. */
	queue_new_id(s.q, done);
	tmsg_init(&t, done, T0, QUEUE_MSG_ACTIVE, 1);
	t.rc[0].state = QUEUE_RCPT_SENT;
	assert_int_equal(commit_msg(&s, &t.m, 10), 0);
	assert_counts(&s, 2, 1);
	spool_close(&s);
	rm_tree(s.dir);
}

/* Holds LMDB's writer lock from a child process (LMDB allows one
 * environment per process, and the writer's lock is shared between
 * processes), so that the queue's writer blocks in its next transaction
 * and the changes queued meanwhile form one batch. */
struct lock_child {
	pid_t pid;
	int release;        /* write a byte here to let go */
};

static void lock_writer(const char *dir, struct lock_child *c)
{
	int locked[2], release[2];
	assert_int_equal(pipe(locked), 0);
	assert_int_equal(pipe(release), 0);
	fflush(NULL);
	c->pid = fork();
	assert_true(c->pid >= 0);
	if (c->pid == 0) {
		char p[256], x = 0;
		MDB_env *env;
		MDB_txn *txn;
		snprintf(p, sizeof p, "%s/index", dir);
		if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, QUEUE_MAXDBS) ||
		    mdb_env_open(env, p, MDB_NOTLS, 0600) ||
		    mdb_txn_begin(env, NULL, 0, &txn))
			_exit(1);
		if (write(locked[1], &x, 1) != 1 || read(release[0], &x, 1) != 1)
			_exit(2);
		mdb_txn_abort(txn);
		mdb_env_close(env);
		_exit(0);
	}
	close(locked[1]);
	close(release[0]);
	char x;
	assert_int_equal(read(locked[0], &x, 1), 1);
	close(locked[0]);
	c->release = release[1];
}

static void unlock_writer(struct lock_child *c)
{
	int st;
	assert_int_equal(write(c->release, "", 1), 1);
	close(c->release);
	assert_int_equal(waitpid(c->pid, &st, 0), c->pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* Changes queued while the writer is busy: all applied in order (a later
 * one sees the earlier ones of its batch), callbacks in order, each once. */
static void test_update_batch(void **state)
{
	(void)state;
	static const struct queue_opts *const modes[] = {&opts_fsync, &opts_syncfs};
	for (size_t mi = 0; mi < ARRAY_LEN(modes); mi++) {
		struct spool s;
		char a[QUEUE_ID_SIZE], b[QUEUE_ID_SIZE], c[QUEUE_ID_SIZE];
		char unknown[QUEUE_ID_SIZE];
		spool_setup(&s, modes[mi]);
		commit_new(&s, a, T0, QUEUE_MSG_ACTIVE, 1);
		commit_new(&s, b, T0 + 1, QUEUE_MSG_ACTIVE, 1);
		commit_new(&s, c, T0 + 2, QUEUE_MSG_ACTIVE, 1);
		queue_new_id(s.q, unknown);
		assert_counts(&s, 3, 3);

		struct tmsg a1, a2, b1, b2, u, c1;
		tmsg_init(&a1, a, T0, QUEUE_MSG_ACTIVE, 1);
		a1.m.size = 100;
		a1.rc[0].state = QUEUE_RCPT_DEFERRED;
		a1.rc[0].next_attempt = T0 + 100;
		a1.rc[0].attempts = 1;
		a1.rc[0].last_reply = "421 4.4.2 timeout";
		a2 = a1;
		a2.m.rcpt = a2.rc;
		a2.rc[0].next_attempt = T0 + 200;
		a2.rc[0].attempts = 2;
		a2.rc[0].last_reply = "450 4.2.0 busy";
		tmsg_init(&b1, b, T0 + 1, QUEUE_MSG_HOLD, 1);
		b1.m.size = 100;
		b2 = b1;
		b2.m.rcpt = b2.rc;
		b2.m.state = QUEUE_MSG_ACTIVE;
		b2.rc[0].next_attempt = T0 + 50;
		tmsg_init(&u, unknown, T0, QUEUE_MSG_ACTIVE, 1);
		tmsg_init(&c1, c, T0 + 2, QUEUE_MSG_ACTIVE, 1);

		struct oplog log = {0};
		struct optag tag[8];
		for (int i = 0; i < 8; i++)
			tag[i] = (struct optag){&log, i};
		struct queue_stats st0, st1;
		queue_get_stats(s.q, &st0);

		struct lock_child lc;
		lock_writer(s.dir, &lc);
		assert_int_equal(queue_update(s.q, &a1.m, oplog_cb, &tag[0]), 0);
		/* Give the writer time to take the first change and block on
		 * the lock: then the rest is one batch (else all eight are). */
		usleep(20000);
		assert_int_equal(queue_update(s.q, &b1.m, oplog_cb, &tag[1]), 0);
		assert_int_equal(queue_update(s.q, &u.m, oplog_cb, &tag[2]), 0);
		assert_int_equal(queue_update(s.q, &a2.m, oplog_cb, &tag[3]), 0);
		assert_int_equal(queue_remove(s.q, c, oplog_cb, &tag[4]), 0);
		assert_int_equal(queue_update(s.q, &c1.m, oplog_cb, &tag[5]), 0);
		assert_int_equal(queue_remove(s.q, c, oplog_cb, &tag[6]), 0);
		assert_int_equal(queue_update(s.q, &b2.m, NULL, NULL), 0);
		assert_int_equal(queue_remove(s.q, unknown, oplog_cb, &tag[7]), 0);
		uv_run(&s.loop, UV_RUN_NOWAIT);
		assert_int_equal(log.n, 0);     /* nothing durable yet */
		unlock_writer(&lc);
		run_until(&s, &log.n, 8);
		for (int i = 0; i < 10; i++)    /* any extra callback shows now */
			uv_run(&s.loop, UV_RUN_NOWAIT);

		static const int want[8] = {0, 0, -ENOENT, 0, 0, -ENOENT, -ENOENT,
		                            -ENOENT};
		assert_int_equal(log.n, 8);
		for (int i = 0; i < 8; i++) {
			if (log.tag[i] != i || log.status[i] != want[i])
				fail_msg("callback %d: change %d, status %d (want %d, %d)",
				         i, log.tag[i], log.status[i], i, want[i]);
		}
		/* Two transactions at most: the first change alone, then the
		 * rest together (LMDB: 2 syncs each, + 1 meta sync in syncfs). */
		queue_get_stats(s.q, &st1);
		uint64_t per = modes[mi]->sync == QUEUE_SYNC_SYNCFS ? 3 : 2;
		if (st1.syncs - st0.syncs > 2 * per)
			fail_msg("%llu syncs for 9 changes",
			         (unsigned long long)(st1.syncs - st0.syncs));

		struct queue_msg *got;
		assert_int_equal(queue_get(s.q, a, &got), 0);
		assert_msg_equal("a after two updates", &a2.m, got);
		queue_msg_free(got);
		assert_int_equal(queue_get(s.q, b, &got), 0);
		assert_msg_equal("b held, then released", &b2.m, got);
		queue_msg_free(got);
		assert_int_equal(queue_get(s.q, c, &got), -ENOENT);
		assert_false(has_body(s.dir, c));
		assert_true(has_body(s.dir, a));
		assert_int_equal(queue_get(s.q, unknown, &got), -ENOENT);

		int64_t next;
		struct hits h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 2);
		assert_string_equal(h.qid[0], b);
		assert_int_equal(h.due[0], T0 + 50);
		assert_string_equal(h.qid[1], a);
		assert_int_equal(h.due[1], T0 + 200);
		assert_counts(&s, 2, 2);
		spool_close(&s);
		rm_tree(s.dir);
	}
}

/* ---- queue_remove --------------------------------------------------------- */

struct remove_check {
	const char *dir, *qid;
	int calls, status;
};

static void test_remove(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		const struct queue_opts *o;
		uint8_t state;
		bool deferred;
	} cases[] = {
		{"active, syncfs", &opts_syncfs, QUEUE_MSG_ACTIVE, false},
		{"active deferred, fsync", &opts_fsync, QUEUE_MSG_ACTIVE, true},
		{"hold, syncfs", &opts_syncfs, QUEUE_MSG_HOLD, false},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct spool s;
		char qid[QUEUE_ID_SIZE], other[QUEUE_ID_SIZE];
		int64_t next;
		spool_setup(&s, cases[i].o);
		commit_new(&s, other, T0 + 5, QUEUE_MSG_ACTIVE, 1);
		commit_new(&s, qid, T0, cases[i].state, 2);
		if (cases[i].deferred) {
			struct queue_msg *m;
			assert_int_equal(queue_get(s.q, qid, &m), 0);
			m->rcpt[1].state = QUEUE_RCPT_DEFERRED;
			m->rcpt[1].next_attempt = T0 + 99;
			assert_int_equal(update_wait(&s, m), 0);
			queue_msg_free(m);
		}
		assert_true(has_body(s.dir, qid));

		if (remove_wait(&s, qid) != 0)
			fail_msg("%s: remove failed", cases[i].name);
		struct queue_msg *got;
		assert_int_equal(queue_get(s.q, qid, &got), -ENOENT);
		assert_false(has_body(s.dir, qid));
		struct hits h = scan(&s, INT64_MAX, &next);
		assert_int_equal(h.n, 1);               /* only the other one */
		assert_string_equal(h.qid[0], other);
		assert_int_equal(next, -1);
		assert_counts(&s, 1, 1);

		/* Twice: the second finds nothing. */
		assert_int_equal(remove_wait(&s, qid), -ENOENT);
		assert_true(has_body(s.dir, other));
		assert_int_equal(queue_get(s.q, other, &got), 0);
		queue_msg_free(got);

		/* Without a callback. */
		assert_int_equal(queue_remove(s.q, other, NULL, NULL), 0);
		for (int k = 0; k < 5000 && has_body(s.dir, other); k++) {
			uv_run(&s.loop, UV_RUN_NOWAIT);
			usleep(1000);
		}
		assert_false(has_body(s.dir, other));
		spool_close(&s);
		/* Nothing left: a reopen has nothing to repair either. */
		spool_open(&s, cases[i].o);
		assert_counts(&s, 0, 0);
		spool_close(&s);
		rm_tree(s.dir);
	}
}

/* ---- queue_scan_due --------------------------------------------------- */

/* Five messages; ids go up in commit order, times do not. */
static const int64_t scan_times[] = {T0 + 300, T0 + 100, T0 + 200, T0 + 100,
                                     T0 + 300};

static const struct {
	const char *name;
	int64_t until;
	size_t stop_at;
	size_t n;
	int order[5];           /* indexes into scan_times, expected order */
	int64_t next;           /* -2: not checked */
} scan_cases[] = {
	{"everything", INT64_MAX, 0, 5, {1, 3, 2, 0, 4}, -1},
	{"nothing due yet", T0 + 99, 0, 0, {0}, T0 + 100},
	{"until 0", 0, 0, 0, {0}, T0 + 100},
	{"until negative", -1, 0, 0, {0}, T0 + 100},
	{"boundary inclusive, same time by id", T0 + 100, 0, 2, {1, 3}, T0 + 200},
	{"between", T0 + 250, 0, 3, {1, 3, 2}, T0 + 300},
	{"last time inclusive", T0 + 300, 0, 5, {1, 3, 2, 0, 4}, -1},
	{"cb stops after 1", INT64_MAX, 1, 1, {1}, -2},
	{"cb stops after 3", T0 + 300, 3, 3, {1, 3, 2}, -2},
	{"cb stops at the last", INT64_MAX, 5, 5, {1, 3, 2, 0, 4}, -2},
};

static void test_scan_due(void **state)
{
	(void)state;
	struct spool s;
	char qid[ARRAY_LEN(scan_times)][QUEUE_ID_SIZE];
	int64_t next;
	spool_setup(&s, &opts_syncfs);

	/* An empty queue. */
	struct hits h = scan(&s, INT64_MAX, &next);
	assert_int_equal(h.n, 0);
	assert_int_equal(next, -1);

	for (size_t i = 0; i < ARRAY_LEN(scan_times); i++)
		commit_new(&s, qid[i], scan_times[i], QUEUE_MSG_ACTIVE, 1);
	for (size_t i = 1; i < ARRAY_LEN(scan_times); i++)
		assert_true(strcmp(qid[i - 1], qid[i]) < 0);

	for (size_t c = 0; c < ARRAY_LEN(scan_cases); c++) {
		struct hits hh = {.stop_at = scan_cases[c].stop_at};
		next = 12345;
		assert_int_equal(queue_scan_due(s.q, scan_cases[c].until, &next,
		                                hits_cb, &hh), 0);
		if (hh.n != scan_cases[c].n)
			fail_msg("%s: %zu hits, want %zu", scan_cases[c].name, hh.n,
			         scan_cases[c].n);
		for (size_t k = 0; k < hh.n; k++) {
			int want = scan_cases[c].order[k];
			if (strcmp(hh.qid[k], qid[want]) != 0 ||
			    hh.due[k] != scan_times[want])
				fail_msg("%s: hit %zu is %s at %lld, want %s at %lld",
				         scan_cases[c].name, k, hh.qid[k],
				         (long long)hh.due[k], qid[want],
				         (long long)scan_times[want]);
		}
		if (scan_cases[c].next != -2 && next != scan_cases[c].next)
			fail_msg("%s: next %lld, want %lld", scan_cases[c].name,
			         (long long)next, (long long)scan_cases[c].next);
	}

	/* A HOLD message is never returned, whatever `until`. */
	char held[QUEUE_ID_SIZE];
	commit_new(&s, held, T0, QUEUE_MSG_HOLD, 1);
	h = scan(&s, INT64_MAX, &next);
	assert_int_equal(h.n, 5);
	for (size_t k = 0; k < h.n; k++)
		assert_string_not_equal(h.qid[k], held);
	spool_close(&s);
	rm_tree(s.dir);
}

/* ---- queue_count ------------------------------------------------------ */

static void test_count(void **state)
{
	(void)state;
	struct spool s;
	char q[4][QUEUE_ID_SIZE];
	spool_setup(&s, &opts_syncfs);
	assert_counts(&s, 0, 0);
	commit_new(&s, q[0], T0, QUEUE_MSG_ACTIVE, 1);
	assert_counts(&s, 1, 1);
	commit_new(&s, q[1], T0, QUEUE_MSG_ACTIVE, 3);
	assert_counts(&s, 2, 2);
	commit_new(&s, q[2], T0, QUEUE_MSG_HOLD, 1);
	assert_counts(&s, 3, 2);
	commit_new(&s, q[3], T0 + 1, QUEUE_MSG_ACTIVE, 1);
	assert_counts(&s, 4, 3);

	/* HOLD by update: scheduled drops, messages stay. */
	struct queue_msg *m;
	assert_int_equal(queue_get(s.q, q[1], &m), 0);
	m->state = QUEUE_MSG_HOLD;
	assert_int_equal(update_wait(&s, m), 0);
	assert_counts(&s, 4, 2);
	/* A deferred time: still one entry. */
	m->state = QUEUE_MSG_ACTIVE;
	m->rcpt[2].state = QUEUE_RCPT_DEFERRED;
	m->rcpt[2].next_attempt = T0 + 1000;
	assert_int_equal(update_wait(&s, m), 0);
	assert_counts(&s, 4, 3);
	queue_msg_free(m);

	/* Removes: of a scheduled message and of a held one. */
	assert_int_equal(remove_wait(&s, q[0]), 0);
	assert_counts(&s, 3, 2);
	assert_int_equal(remove_wait(&s, q[2]), 0);
	assert_counts(&s, 2, 2);
	assert_int_equal(remove_wait(&s, q[2]), -ENOENT);
	assert_counts(&s, 2, 2);
	spool_close(&s);

	/* The counts come from the index: the same after a reopen. */
	spool_open(&s, &opts_syncfs);
	assert_counts(&s, 2, 2);
	spool_close(&s);
	rm_tree(s.dir);
}

/* ---- queue_set_notify ------------------------------------------------- */

struct notify_state {
	int calls;
	pthread_t loop_thread;
};

static void notify_cb(void *arg)
{
	struct notify_state *n = arg;
	assert_true(pthread_equal(pthread_self(), n->loop_thread));
	n->calls++;
}

static void test_notify(void **state)
{
	(void)state;
	struct spool s;
	struct notify_state n = {.loop_thread = pthread_self()};
	char qid[QUEUE_ID_SIZE], other[QUEUE_ID_SIZE];
	struct tmsg t;
	spool_setup(&s, &opts_syncfs);
	queue_set_notify(s.q, notify_cb, &n);

	/* A successful commit: the cue comes on the loop, after the
	 * commit's own callback, never from inside queue_commit. */
	queue_new_id(s.q, qid);
	tmsg_init(&t, qid, T0, QUEUE_MSG_ACTIVE, 1);
	struct queue_body *b;
	struct result res = {0};
	assert_int_equal(queue_body_open(s.q, qid, &b), 0);
	assert_int_equal(queue_body_write(b, "x\r\n", 3), 0);
	assert_int_equal(queue_commit(s.q, b, &t.m, result_cb, &res), 0);
	assert_int_equal(n.calls, 0);
	run_until(&s, &res.calls, 1);
	assert_int_equal(res.status, 0);
	assert_int_equal(n.calls, 1);

	/* A failed commit (the id is taken): no cue. */
	assert_int_equal(commit_msg(&s, &t.m, 3), -EEXIST);
	for (int i = 0; i < 10; i++)
		uv_run(&s.loop, UV_RUN_NOWAIT);
	assert_int_equal(n.calls, 1);

	/* Changes are not commits: no cue either. */
	struct queue_msg *m;
	assert_int_equal(queue_get(s.q, qid, &m), 0);
	m->rcpt[0].state = QUEUE_RCPT_DEFERRED;
	m->rcpt[0].next_attempt = T0 + 60;
	assert_int_equal(update_wait(&s, m), 0);
	queue_msg_free(m);
	for (int i = 0; i < 10; i++)
		uv_run(&s.loop, UV_RUN_NOWAIT);
	assert_int_equal(n.calls, 1);

	/* A HOLD commit is a commit too. */
	commit_new(&s, other, T0, QUEUE_MSG_HOLD, 1);
	assert_int_equal(n.calls, 2);

	/* Cleared: commits go on, silently. */
	queue_set_notify(s.q, NULL, NULL);
	commit_new(&s, other, T0, QUEUE_MSG_ACTIVE, 1);
	assert_int_equal(n.calls, 2);
	spool_close(&s);
	assert_int_equal(n.calls, 2);
	rm_tree(s.dir);
}

/* ---- queue_close with changes queued ------------------------------------ */

static void close_done_cb(void *arg)
{
	struct oplog *l = arg;
	*l->closed = true;
	l->tag[l->n] = 100;
	l->status[l->n] = 0;
	l->n++;
}

static void test_close_with_ops(void **state)
{
	(void)state;
	static const struct queue_opts *const modes[] = {&opts_syncfs, &opts_fsync};
	for (size_t mi = 0; mi < ARRAY_LEN(modes); mi++) {
		struct spool s;
		char a[QUEUE_ID_SIZE], b[QUEUE_ID_SIZE], unknown[QUEUE_ID_SIZE];
		spool_setup(&s, modes[mi]);
		commit_new(&s, a, T0, QUEUE_MSG_ACTIVE, 1);
		commit_new(&s, b, T0, QUEUE_MSG_ACTIVE, 1);
		queue_new_id(s.q, unknown);

		bool closed = false;
		struct oplog log = {.closed = &closed};
		struct optag tag[4];
		for (int i = 0; i < 4; i++)
			tag[i] = (struct optag){&log, i};
		struct tmsg a1, a2, u;
		tmsg_init(&a1, a, T0, QUEUE_MSG_ACTIVE, 1);
		a1.m.size = 100;
		a1.rc[0].state = QUEUE_RCPT_DEFERRED;
		a1.rc[0].next_attempt = T0 + 10;
		a2 = a1;
		a2.m.rcpt = a2.rc;
		a2.rc[0].next_attempt = T0 + 20;
		a2.rc[0].attempts = 7;
		tmsg_init(&u, unknown, T0, QUEUE_MSG_ACTIVE, 1);

		assert_int_equal(queue_update(s.q, &a1.m, oplog_cb, &tag[0]), 0);
		assert_int_equal(queue_remove(s.q, b, oplog_cb, &tag[1]), 0);
		assert_int_equal(queue_update(s.q, &u.m, oplog_cb, &tag[2]), 0);
		assert_int_equal(queue_update(s.q, &a2.m, oplog_cb, &tag[3]), 0);
		queue_close(s.q, close_done_cb, &log);
		/* The queue is closing: no new changes. */
		struct result res = {0};
		assert_int_equal(queue_update(s.q, &a1.m, result_cb, &res),
		                 -ESHUTDOWN);
		assert_int_equal(queue_remove(s.q, a, result_cb, &res), -ESHUTDOWN);
		assert_int_equal(uv_run(&s.loop, UV_RUN_DEFAULT), 0);
		assert_int_equal(uv_loop_close(&s.loop), 0);
		assert_true(closed);
		assert_int_equal(res.calls, 0);

		static const int want_tag[5] = {0, 1, 2, 3, 100};
		static const int want_status[5] = {0, 0, -ENOENT, 0, 0};
		assert_int_equal(log.n, 5);
		for (int i = 0; i < 5; i++)
			if (log.tag[i] != want_tag[i] || log.status[i] != want_status[i])
				fail_msg("callback %d: %d status %d", i, log.tag[i],
				         log.status[i]);
		assert_false(has_body(s.dir, b));

		/* Durable: a reopen sees the last update, and b is gone. */
		spool_open(&s, modes[mi]);
		struct queue_msg *got;
		assert_int_equal(queue_get(s.q, a, &got), 0);
		assert_msg_equal("a after close", &a2.m, got);
		queue_msg_free(got);
		assert_int_equal(queue_get(s.q, b, &got), -ENOENT);
		assert_counts(&s, 1, 1);
		spool_close(&s);
		rm_tree(s.dir);
	}
}

/* ---- the writer's transaction cannot begin ------------------------------ */

/* Another process grew the map beyond this one's: LMDB refuses the
 * writer's transactions (MDB_MAP_RESIZED). Each change reports an error,
 * nothing changes, nothing crashes. */
static void test_ops_txn_fails(void **state)
{
	(void)state;
	struct queue_opts small = {.map_size = 1 << 20,
	                           .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	char a[QUEUE_ID_SIZE];
	spool_setup(&s, &small);
	commit_new(&s, a, T0, QUEUE_MSG_ACTIVE, 1);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char p[256];
		MDB_env *env;
		MDB_txn *txn;
		MDB_dbi dbi;
		size_t n = 2 << 20;
		void *pad = calloc(1, n);
		MDB_val k = {3, "pad"}, v = {n, pad};
		snprintf(p, sizeof p, "%s/index", s.dir);
		if (!pad || mdb_env_create(&env) ||
		    mdb_env_set_maxdbs(env, QUEUE_MAXDBS) ||
		    mdb_env_set_mapsize(env, 16 << 20) ||
		    mdb_env_open(env, p, MDB_NOTLS, 0600) ||
		    mdb_txn_begin(env, NULL, 0, &txn) ||
		    mdb_dbi_open(txn, "pad", MDB_CREATE, &dbi) ||
		    mdb_put(txn, dbi, &k, &v, 0) || mdb_txn_commit(txn))
			_exit(1);
		mdb_env_close(env);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);

	struct tmsg a1;
	tmsg_init(&a1, a, T0, QUEUE_MSG_ACTIVE, 1);
	a1.m.size = 100;
	a1.rc[0].state = QUEUE_RCPT_DEFERRED;
	a1.rc[0].next_attempt = T0 + 10;
	int r = update_wait(&s, &a1.m);
	assert_true(r < 0 && r != -ENOENT);
	r = remove_wait(&s, a);
	assert_true(r < 0 && r != -ENOENT);
	assert_true(has_body(s.dir, a));
	spool_close(&s);

	/* With a map as large as the other process's: nothing changed. */
	spool_open(&s, &opts_syncfs);
	struct queue_msg *got;
	assert_int_equal(queue_get(s.q, a, &got), 0);
	assert_int_equal(got->rcpt[0].state, QUEUE_RCPT_PENDING);
	queue_msg_free(got);
	int64_t next;
	struct hits h = scan(&s, INT64_MAX, &next);
	assert_int_equal(h.n, 1);
	assert_int_equal(h.due[0], T0);
	spool_close(&s);
	rm_tree(s.dir);
}


/* Schedule entries of qid, read through the open queue. */
static size_t idx_count_sched_open(struct spool *s, const char *qid)
{
	int64_t next;
	struct hits h = scan(s, INT64_MAX, &next);
	size_t n = 0;
	for (size_t i = 0; i < h.n; i++)
		n += strcmp(h.qid[i], qid) == 0;
	return n;
}

/* ---- per-recipient changes (queue_update_rcpts) -------------------------- */

static int rcpts_wait(struct spool *s, const char *qid,
                      const struct queue_rcpt_change *ch, size_t n)
{
	struct result res = {0};
	assert_int_equal(queue_update_rcpts(s->q, qid, ch, n, result_cb, &res), 0);
	assert_int_equal(res.calls, 0);     /* never from inside */
	run_until(s, &res.calls, 1);
	return res.status;
}

static struct queue_msg *get_msg(struct spool *s, const char *qid)
{
	struct queue_msg *m = NULL;
	assert_int_equal(queue_get(s->q, qid, &m), 0);
	return m;
}

/* Two jobs, each holding a copy of the message read before either
 * finished, report results for different recipients: both results are
 * in the record, whether the writer applies them in one transaction or
 * in two, and whichever comes first. */
static void test_update_rcpts_interleaved(void **state)
{
	(void)state;
	for (int variant = 0; variant < 3; variant++) {
		struct spool s;
		char a[QUEUE_ID_SIZE];
		spool_setup(&s, variant == 1 ? &opts_fsync : &opts_syncfs);
		commit_new(&s, a, T0, QUEUE_MSG_ACTIVE, 4);
		/* The jobs' snapshots, from before either reported. */
		struct queue_msg *snap_x = get_msg(&s, a), *snap_y = get_msg(&s, a);
		assert_int_equal(snap_x->nrcpt, 4);

		const struct queue_rcpt_change x[] = {
			{.index = 0, .state = QUEUE_RCPT_SENT, .attempts = 1,
			 .last_reply = "250 2.0.0 ok", .dest = "mx:mx.example.org",
			 .mx = "mx.example.org[192.0.2.1]:25", .last_try = T0 + 5},
		};
		const struct queue_rcpt_change y[] = {
			{.index = 2, .state = QUEUE_RCPT_DEFERRED, .attempts = 1,
			 .next_attempt = T0 + 300, .last_reply = "451 4.7.1 later",
			 .dest = "mx:mx.example.net", .mx = "mx.example.net[192.0.2.2]:25",
			 .last_try = T0 + 6},
			{.index = 3, .state = QUEUE_RCPT_BOUNCED, .attempts = 1,
			 .last_reply = "550 5.1.1 no such user",
			 .dest = "mx:mx.example.com", .mx = "mx.example.com[192.0.2.3]:25",
			 .last_try = T0 + 7},
		};
		if (variant == 2) {
			/* One batch: y then x, in the same transaction. */
			struct oplog log = {0};
			struct optag tag[2] = {{&log, 0}, {&log, 1}};
			struct lock_child lc;
			lock_writer(s.dir, &lc);
			assert_int_equal(queue_update_rcpts(s.q, a, y, 2, oplog_cb,
			                                    &tag[0]), 0);
			assert_int_equal(queue_update_rcpts(s.q, a, x, 1, oplog_cb,
			                                    &tag[1]), 0);
			unlock_writer(&lc);
			run_until(&s, &log.n, 2);
			assert_int_equal(log.tag[0], 0);
			assert_int_equal(log.tag[1], 1);
			assert_int_equal(log.status[0], 0);
			assert_int_equal(log.status[1], 0);
		} else {
			assert_int_equal(rcpts_wait(&s, a, x, 1), 0);
			assert_int_equal(rcpts_wait(&s, a, y, 2), 0);
		}

		struct queue_msg *m = get_msg(&s, a);
		const struct queue_rcpt *r = m->rcpt;
		assert_int_equal(r[0].state, QUEUE_RCPT_SENT);
		assert_string_equal(r[0].last_reply, "250 2.0.0 ok");
		assert_string_equal(r[0].dest, "mx:mx.example.org");
		assert_string_equal(r[0].mx, "mx.example.org[192.0.2.1]:25");
		assert_int_equal(r[0].last_try, T0 + 5);
		assert_int_equal(r[1].state, QUEUE_RCPT_PENDING);   /* untouched */
		assert_null(r[1].last_reply);
		assert_null(r[1].dest);
		assert_int_equal(r[2].state, QUEUE_RCPT_DEFERRED);
		assert_int_equal(r[2].next_attempt, T0 + 300);
		assert_string_equal(r[2].mx, "mx.example.net[192.0.2.2]:25");
		assert_int_equal(r[3].state, QUEUE_RCPT_BOUNCED);
		assert_string_equal(r[3].last_reply, "550 5.1.1 no such user");
		/* Message fields as committed. */
		assert_int_equal(m->arrival, T0);
		assert_string_equal(m->sender, snap_x->sender);
		assert_int_equal(m->size, 100);
		/* Still due at its arrival (recipient 1 is pending): one entry. */
		assert_int_equal(queue_msg_due(m), T0);
		assert_int_equal(idx_count_sched_open(&s, a), 1);
		queue_msg_free(m);

		/* The old way loses a result: a whole record from y's snapshot
		 * undoes x's. queue_update keeps that meaning (one owner). */
		snap_y->rcpt[2].state = QUEUE_RCPT_DEFERRED;
		assert_int_equal(update_wait(&s, snap_y), 0);
		m = get_msg(&s, a);
		assert_int_equal(m->rcpt[0].state, QUEUE_RCPT_PENDING);
		queue_msg_free(m);

		/* The last open recipients done: QUEUE_RCPTS_DONE, the record
		 * and body stay (for the DSN), without a schedule entry. */
		const struct queue_rcpt_change done[] = {
			{.index = 0, .state = QUEUE_RCPT_SENT, .attempts = 1},
			{.index = 1, .state = QUEUE_RCPT_SENT, .attempts = 1},
			{.index = 2, .state = QUEUE_RCPT_BOUNCED, .attempts = 2},
			{.index = 3, .state = QUEUE_RCPT_BOUNCED, .attempts = 1},
		};
		assert_int_equal(rcpts_wait(&s, a, done, 4), QUEUE_RCPTS_DONE);
		assert_counts(&s, 1, 0);
		assert_true(has_body(s.dir, a));
		assert_int_equal(remove_wait(&s, a), 0);
		assert_counts(&s, 0, 0);
		assert_false(has_body(s.dir, a));
		queue_msg_free(snap_x);
		queue_msg_free(snap_y);
		spool_close(&s);
		rm_tree(s.dir);
	}
}

/* What queue_update_rcpts refuses, and that a refusal changes nothing. */
static void test_update_rcpts_refused(void **state)
{
	(void)state;
	struct spool s;
	char a[QUEUE_ID_SIZE], h[QUEUE_ID_SIZE], gone[QUEUE_ID_SIZE];
	spool_setup(&s, &opts_syncfs);
	commit_new(&s, a, T0, QUEUE_MSG_ACTIVE, 2);
	commit_new(&s, h, T0 + 1, QUEUE_MSG_HOLD, 2);
	queue_new_id(s.q, gone);
	struct queue_msg *before = get_msg(&s, a);

	static char longdest[QUEUE_DEST_MAX + 2], longmx[QUEUE_MX_MAX + 2];
	memset(longdest, 'd', QUEUE_DEST_MAX + 1);
	memset(longmx, 'm', QUEUE_MX_MAX + 1);
	const struct queue_rcpt_change bad_state = {.index = 0, .state = 4};
	const struct queue_rcpt_change bad_dest = {.index = 0, .dest = longdest};
	const struct queue_rcpt_change bad_mx = {.index = 0, .mx = longmx};
	struct result res = {0};
	assert_int_equal(queue_update_rcpts(s.q, a, &bad_state, 1, result_cb, &res),
	                 -EINVAL);
	assert_int_equal(queue_update_rcpts(s.q, a, &bad_dest, 1, result_cb, &res),
	                 -EINVAL);
	assert_int_equal(queue_update_rcpts(s.q, a, &bad_mx, 1, result_cb, &res),
	                 -EINVAL);
	assert_int_equal(queue_update_rcpts(s.q, "nope", &bad_mx, 1, result_cb,
	                                    &res), -EINVAL);
	assert_int_equal(res.calls, 0);

	/* All or nothing: a valid change beside an index out of range. */
	const struct queue_rcpt_change mixed[] = {
		{.index = 0, .state = QUEUE_RCPT_SENT, .attempts = 1},
		{.index = 2, .state = QUEUE_RCPT_SENT, .attempts = 1},
	};
	assert_int_equal(rcpts_wait(&s, a, mixed, 2), -EINVAL);
	assert_int_equal(rcpts_wait(&s, gone, mixed, 1), -ENOENT);
	struct queue_msg *after = get_msg(&s, a);
	assert_msg_equal("refused changes", before, after);
	queue_msg_free(after);
	assert_counts(&s, 2, 1);

	/* On hold: the change is recorded, and no entry appears. */
	const struct queue_rcpt_change later = {.index = 1,
		.state = QUEUE_RCPT_DEFERRED, .attempts = 1, .next_attempt = T0 + 60};
	assert_int_equal(rcpts_wait(&s, h, &later, 1), 0);
	assert_counts(&s, 2, 1);
	after = get_msg(&s, h);
	assert_int_equal(after->rcpt[1].state, QUEUE_RCPT_DEFERRED);
	assert_int_equal(after->state, QUEUE_MSG_HOLD);
	queue_msg_free(after);
	queue_msg_free(before);
	spool_close(&s);
	rm_tree(s.dir);
}

/* ---- recovery of the schedule rule ---------------------------------------- */

/* The index opened directly, read-write, while no queue is open. */
struct idx {
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi msg, sched;
};

static void idx_begin(struct idx *x, const char *dir)
{
	char p[256];
	snprintf(p, sizeof p, "%s/index", dir);
	assert_int_equal(mdb_env_create(&x->env), 0);
	assert_int_equal(mdb_env_set_maxdbs(x->env, QUEUE_MAXDBS), 0);
	assert_int_equal(mdb_env_open(x->env, p, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(x->env, NULL, 0, &x->txn), 0);
	assert_int_equal(mdb_dbi_open(x->txn, QUEUE_DB_MSG, 0, &x->msg), 0);
	assert_int_equal(mdb_dbi_open(x->txn, QUEUE_DB_SCHED, 0, &x->sched), 0);
}

static void idx_commit(struct idx *x)
{
	assert_int_equal(mdb_txn_commit(x->txn), 0);
	mdb_env_close(x->env);
}

static void idx_sched(struct idx *x, const char *qid, int64_t t, bool put)
{
	uint8_t sk[QUEUE_SCHED_KEY_LEN];
	queue_sched_key(t, qid, sk);
	MDB_val k = {sizeof sk, sk}, empty = {0, NULL};
	if (put)
		assert_int_equal(mdb_put(x->txn, x->sched, &k, &empty, 0), 0);
	else
		assert_int_equal(mdb_del(x->txn, x->sched, &k, NULL), 0);
}

/* Rewrites a record: every recipient to `st` at `next`. */
static void idx_rewrite(struct idx *x, const char *qid, uint8_t st,
                        int64_t next)
{
	MDB_val k = {QUEUE_ID_LEN, (void *)qid}, v;
	struct queue_msg *m;
	uint8_t *enc;
	size_t n;
	assert_int_equal(mdb_get(x->txn, x->msg, &k, &v), 0);
	assert_int_equal(queue_msg_decode(qid, v.mv_data, v.mv_size, &m), 0);
	for (size_t i = 0; i < m->nrcpt; i++) {
		m->rcpt[i].state = st;
		m->rcpt[i].next_attempt = next;
	}
	assert_int_equal(queue_msg_encode(m, &enc, &n), 0);
	v = (MDB_val){n, enc};
	assert_int_equal(mdb_put(x->txn, x->msg, &k, &v, 0), 0);
	free(enc);
	queue_msg_free(m);
}

/* Schedule entries straight from the index (no queue open): count of
 * qid's entries, and the time of the last one seen. */
static size_t idx_count_sched(const char *dir, const char *qid, int64_t *t)
{
	struct idx x;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	idx_begin(&x, dir);
	assert_int_equal(mdb_cursor_open(x.txn, x.sched, &cur), 0);
	int rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		assert_int_equal(k.mv_size, QUEUE_SCHED_KEY_LEN);
		if (memcmp((uint8_t *)k.mv_data + 8, qid, QUEUE_ID_LEN) != 0)
			continue;
		uint64_t u = 0;
		for (int i = 0; i < 8; i++)
			u = u << 8 | ((uint8_t *)k.mv_data)[i];
		if (t)
			*t = (int64_t)u;
		n++;
	}
	assert_int_equal(rc, MDB_NOTFOUND);
	mdb_cursor_close(cur);
	mdb_txn_abort(x.txn);
	mdb_env_close(x.env);
	return n;
}

/* Runs queue_open with the log going to a file, and returns the numbers
 * of its "recovery: N messages in queue, M repaired" line. */
static void open_logged(struct spool *s, const struct queue_opts *o,
                        size_t *msgs, size_t *repaired)
{
	char path[128], text[65536];
	snprintf(path, sizeof path, "%s/recovery.log", s->dir);
	unlink(path);
	assert_int_equal(log_open(path, false, LOG_INFO), 0);
	spool_open(s, o);
	assert_int_equal(log_open(NULL, true, LOG_ERR), 0);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	unlink(path);
	text[n] = '\0';
	const char *line = strstr(text, "recovery: ");
	assert_non_null(line);
	unsigned long long a, b;
	assert_int_equal(sscanf(line, "recovery: %llu messages in queue, "
	                        "%llu repaired", &a, &b), 2);
	*msgs = (size_t)a;
	*repaired = (size_t)b;
}

static void test_recovery_schedule(void **state)
{
	(void)state;
	enum { A, B, C, D, E, F, G, N };
	static const struct {
		const char *what;
		uint8_t state;
	} msgs[N] = {
		[A] = {"active, its entry deleted: restored", QUEUE_MSG_ACTIVE},
		[B] = {"active, a stale entry added: dropped", QUEUE_MSG_ACTIVE},
		[C] = {"active, every recipient sent: removed", QUEUE_MSG_ACTIVE},
		[D] = {"hold, an entry added: dropped", QUEUE_MSG_HOLD},
		[E] = {"hold, every recipient bounced: removed", QUEUE_MSG_HOLD},
		[F] = {"active, entry moved to a wrong time: fixed", QUEUE_MSG_ACTIVE},
		[G] = {"active, record deferred, entry not moved: fixed",
		       QUEUE_MSG_ACTIVE},
	};
	struct spool s;
	char qid[N][QUEUE_ID_SIZE], stray[QUEUE_ID_SIZE];
	int64_t t[N];
	spool_setup(&s, &opts_syncfs);
	for (int i = 0; i < N; i++) {
		t[i] = T0 + 100 * i;
		commit_new(&s, qid[i], t[i], msgs[i].state, 2);
	}
	queue_new_id(s.q, stray);
	assert_counts(&s, N, 5);
	spool_close(&s);

	struct idx x;
	idx_begin(&x, s.dir);
	idx_sched(&x, qid[A], t[A], false);
	idx_sched(&x, qid[B], 5, true);
	idx_rewrite(&x, qid[C], QUEUE_RCPT_SENT, 0);
	idx_sched(&x, qid[D], t[D], true);
	idx_rewrite(&x, qid[E], QUEUE_RCPT_BOUNCED, 0);
	idx_sched(&x, qid[F], t[F], false);
	idx_sched(&x, qid[F], T0 + 99999, true);
	idx_rewrite(&x, qid[G], QUEUE_RCPT_DEFERRED, T0 + 5000);
	idx_sched(&x, stray, T0, true);     /* no record at all */
	idx_commit(&x);
	assert_int_equal(idx_count_sched(s.dir, qid[A], NULL), 0);
	assert_int_equal(idx_count_sched(s.dir, qid[B], NULL), 2);

	size_t nmsg, repaired;
	open_logged(&s, &opts_syncfs, &nmsg, &repaired);

	/* What is visible afterwards: C and E gone with their bodies, every
	 * ACTIVE message due exactly once, at its queue_msg_due(). */
	struct queue_msg *got;
	assert_int_equal(queue_get(s.q, qid[C], &got), -ENOENT);
	assert_int_equal(queue_get(s.q, qid[E], &got), -ENOENT);
	assert_false(has_body(s.dir, qid[C]));
	assert_false(has_body(s.dir, qid[E]));
	static const int kept[] = {A, B, D, F, G};
	for (size_t i = 0; i < ARRAY_LEN(kept); i++) {
		if (queue_get(s.q, qid[kept[i]], &got) != 0)
			fail_msg("%s: record lost", msgs[kept[i]].what);
		queue_msg_free(got);
		if (!has_body(s.dir, qid[kept[i]]))
			fail_msg("%s: body lost", msgs[kept[i]].what);
	}
	assert_counts(&s, 5, 4);
	int64_t next;
	struct hits h = scan(&s, INT64_MAX, &next);
	static const int order[] = {A, B, F, G};
	const int64_t due[] = {t[A], t[B], t[F], T0 + 5000};
	assert_int_equal(h.n, ARRAY_LEN(order));
	for (size_t i = 0; i < ARRAY_LEN(order); i++)
		if (strcmp(h.qid[i], qid[order[i]]) != 0 || h.due[i] != due[i])
			fail_msg("%s: scan hit %zu is %s at %lld, want at %lld",
			         msgs[order[i]].what, i, h.qid[i],
			         (long long)h.due[i], (long long)due[i]);

	/* The log line: five messages; one repair per item: A restored, B's,
	 * C's, D's stale entries dropped, C and E removed, F's and G's stale
	 * entries dropped and right ones restored. The stray entry's record
	 * does not exist to be repaired: dropped, not counted. */
	assert_int_equal(nmsg, 5);
	assert_int_equal(repaired, 10);
	spool_close(&s);

	assert_int_equal(idx_count_sched(s.dir, stray, NULL), 0);
	assert_int_equal(idx_count_sched(s.dir, qid[D], NULL), 0);
	int64_t tg = 0;
	assert_int_equal(idx_count_sched(s.dir, qid[G], &tg), 1);
	assert_int_equal(tg, T0 + 5000);

	/* Repaired once for all: the next start finds nothing to do. */
	open_logged(&s, &opts_syncfs, &nmsg, &repaired);
	assert_int_equal(nmsg, 5);
	assert_int_equal(repaired, 0);
	assert_counts(&s, 5, 4);
	spool_close(&s);
	rm_tree(s.dir);
}



static int64_t realtime_ms(void)
{
	struct timespec ts;
	assert_int_equal(clock_gettime(CLOCK_REALTIME, &ts), 0);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A caller that gives the arrival in seconds (smtpd: time(NULL)) gets
 * the milliseconds from the commit's clock reading of that second: the
 * stored time lies between the readings around the commit. */
static void test_commit_arrival_ms(void **state)
{
	(void)state;
	struct spool s;
	spool_setup(&s, &opts_syncfs);
	bool checked = false;
	for (int i = 0; i < 20 && !checked; i++) {
		char qid[QUEUE_ID_SIZE];
		struct tmsg m;
		queue_new_id(s.q, qid);
		int64_t before = realtime_ms();
		tmsg_init(&m, qid, before / 1000, QUEUE_MSG_ACTIVE, 1);
		struct queue_body *b;
		struct result res = {0};
		assert_int_equal(queue_body_open(s.q, qid, &b), 0);
		assert_int_equal(queue_body_write(b, "x\r\n", 3), 0);
		assert_int_equal(queue_commit(s.q, b, &m.m, result_cb, &res), 0);
		int64_t after = realtime_ms();
		run_until(&s, &res.calls, 1);
		assert_int_equal(res.status, 0);
		struct queue_msg *got = get_msg(&s, qid);
		int64_t stored = got->arrival * 1000 + got->arrival_ms;
		assert_int_equal(got->arrival, before / 1000);
		queue_msg_free(got);
		if (before / 1000 != after / 1000)
			continue;   /* the second turned: the ms are unknown (0) */
		assert_true(stored >= before && stored <= after);
		checked = true;
	}
	assert_true(checked);
	/* Given milliseconds are kept. */
	char qid[QUEUE_ID_SIZE];
	struct tmsg m;
	queue_new_id(s.q, qid);
	tmsg_init(&m, qid, T0, QUEUE_MSG_ACTIVE, 1);
	m.m.arrival_ms = 321;
	assert_int_equal(commit_msg(&s, &m.m, 10), 0);
	struct queue_msg *got = get_msg(&s, qid);
	assert_int_equal(got->arrival, T0);
	assert_int_equal(got->arrival_ms, 321);
	queue_msg_free(got);
	spool_close(&s);
	rm_tree(s.dir);
}

/* ---- the in-place upgrade from index format 1 ----------------------------- */

/* queue_open with the log going to a file; its text in out. Returns
 * queue_open's result (the queue is open when 0). */
static int open_log_text(struct spool *s, const struct queue_opts *tmpl,
                         char *out, size_t outsz)
{
	char path[128];
	snprintf(path, sizeof path, "%s/open.log", s->dir);
	unlink(path);
	assert_int_equal(log_open(path, false, LOG_INFO), 0);
	struct queue_opts o = *tmpl;
	o.spool_dir = s->dir;
	assert_int_equal(uv_loop_init(&s->loop), 0);
	int r = queue_open(&s->loop, &o, &s->q);
	assert_int_equal(log_open(NULL, true, LOG_ERR), 0);
	if (r) {
		assert_int_equal(uv_loop_close(&s->loop), 0);
		s->q = NULL;
	}
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(out, 1, outsz - 1, f);
	fclose(f);
	unlink(path);
	out[n] = '\0';
	return r;
}

/* The "meta" format byte, straight from the index: -1 when absent. */
static int idx_format(const char *dir)
{
	struct idx x;
	MDB_dbi meta;
	MDB_val k = {strlen(QUEUE_META_FORMAT), QUEUE_META_FORMAT}, v;
	idx_begin(&x, dir);
	int f = -1;
	if (mdb_dbi_open(x.txn, QUEUE_DB_META, 0, &meta) == 0 &&
	    mdb_get(x.txn, meta, &k, &v) == 0) {
		assert_int_equal(v.mv_size, 1);
		f = ((uint8_t *)v.mv_data)[0];
	}
	mdb_txn_abort(x.txn);
	mdb_env_close(x.env);
	return f;
}

/* Sets the "meta" format byte (-1: deletes the key). */
static void idx_set_format(const char *dir, int f)
{
	struct idx x;
	MDB_dbi meta;
	MDB_val k = {strlen(QUEUE_META_FORMAT), QUEUE_META_FORMAT};
	uint8_t b = (uint8_t)f;
	MDB_val v = {1, &b};
	idx_begin(&x, dir);
	assert_int_equal(mdb_dbi_open(x.txn, QUEUE_DB_META, 0, &meta), 0);
	if (f < 0)
		assert_int_equal(mdb_del(x.txn, meta, &k, NULL), 0);
	else
		assert_int_equal(mdb_put(x.txn, meta, &k, &v, 0), 0);
	idx_commit(&x);
}

static void count_cb(void *arg, int status)
{
	assert_int_equal(status, 0);
	(*(int *)arg)++;
}

enum { UP_N = 1100 };   /* more than one recovery step (RECOVER_STEP) */

/* A spool left by format 1 (every tenth record already rewritten, as a
 * crash in the middle of an upgrade leaves it, and no "meta" format) is
 * read as it is by queue_ro; queue_open rewrites the rest in place, logs
 * the count once, records the format last, and loses nothing: every
 * record decodes to what it was. The next start has nothing to do. */
static void test_upgrade_v1(void **state)
{
	(void)state;
	struct spool s;
	static char qid[UP_N][QUEUE_ID_SIZE];
	static char text[1 << 16];
	spool_setup(&s, &opts_syncfs);
	int done = 0;
	for (int i = 0; i < UP_N; i++) {
		struct tmsg m;
		struct queue_body *b;
		queue_new_id(s.q, qid[i]);
		tmsg_init(&m, qid[i], T0 + i, i % 7 ? QUEUE_MSG_ACTIVE
		                                     : QUEUE_MSG_HOLD, 1 + i % 4);
		m.m.envid = i % 5 ? NULL : "ENV+2B1";
		m.rc[0].orcpt = i % 3 ? NULL : "rfc822;r0@example.org";
		m.rc[0].notify = (uint8_t)(i % 16);
		assert_int_equal(queue_body_open(s.q, qid[i], &b), 0);
		assert_int_equal(queue_body_write(b, "body\r\n", 6), 0);
		assert_int_equal(queue_commit(s.q, b, &m.m, count_cb, &done), 0);
	}
	run_until(&s, &done, UP_N);
	spool_close(&s);
	assert_int_equal(idx_format(s.dir), QUEUE_FORMAT);

	/* Back to format 1, but for every tenth record; originals kept. */
	static struct queue_msg *orig[UP_N];
	struct idx x;
	idx_begin(&x, s.dir);
	for (int i = 0; i < UP_N; i++) {
		MDB_val k = {QUEUE_ID_LEN, qid[i]}, v;
		uint8_t *enc;
		size_t n;
		assert_int_equal(mdb_get(x.txn, x.msg, &k, &v), 0);
		assert_int_equal(((uint8_t *)v.mv_data)[0], 2);
		assert_int_equal(queue_msg_decode(qid[i], v.mv_data, v.mv_size,
		                                  &orig[i]), 0);
		if (i % 10 == 0)
			continue;
		assert_int_equal(queue_msg_encode_v1(orig[i], &enc, &n), 0);
		v = (MDB_val){n, enc};
		assert_int_equal(mdb_put(x.txn, x.msg, &k, &v, 0), 0);
		free(enc);
		orig[i]->arrival_ms = 0;    /* format 1 has no milliseconds */
	}
	idx_commit(&x);
	idx_set_format(s.dir, -1);
	assert_int_equal(idx_format(s.dir), -1);

	/* relayctl's side reads both formats before any upgrade. */
	struct queue_ro *ro;
	struct queue_msg *got;
	assert_int_equal(queue_ro_open(s.dir, &ro), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(queue_ro_get(ro, qid[i], &got), 0);
		assert_msg_equal("read by queue_ro before the upgrade", orig[i], got);
		queue_msg_free(got);
	}
	queue_ro_close(ro);

	assert_int_equal(open_log_text(&s, &opts_syncfs, text, sizeof text), 0);
	const char *line = strstr(text, "index upgraded in place");
	if (!line)
		fail_msg("no upgrade line in:\n%s", text);
	unsigned long long n = 0;
	assert_int_equal(sscanf(line, "index upgraded in place from format 1 "
	                        "to 2: %llu records rewritten", &n), 1);
	assert_int_equal(n, UP_N - UP_N / 10);
	assert_null(strstr(line + 1, "index upgraded in place"));   /* once */
	assert_non_null(strstr(text, "recovery: 1100 messages in queue, 0 repaired"));
	for (int i = 0; i < UP_N; i++) {
		assert_int_equal(queue_get(s.q, qid[i], &got), 0);
		assert_msg_equal("upgraded", orig[i], got);
		queue_msg_free(got);
	}
	spool_close(&s);

	idx_begin(&x, s.dir);
	for (int i = 0; i < UP_N; i++) {
		MDB_val k = {QUEUE_ID_LEN, qid[i]}, v;
		assert_int_equal(mdb_get(x.txn, x.msg, &k, &v), 0);
		if (((uint8_t *)v.mv_data)[0] != 2)
			fail_msg("record %d still in format %u", i,
			         ((uint8_t *)v.mv_data)[0]);
	}
	mdb_txn_abort(x.txn);
	mdb_env_close(x.env);
	assert_int_equal(idx_format(s.dir), QUEUE_FORMAT);

	/* Nothing left to upgrade at the next start. */
	assert_int_equal(open_log_text(&s, &opts_syncfs, text, sizeof text), 0);
	assert_null(strstr(text, "upgraded"));
	spool_close(&s);

	/* A format from a later release is refused, by relayd and relayctl,
	 * and refusing changes nothing. */
	idx_set_format(s.dir, QUEUE_FORMAT + 1);
	assert_int_equal(open_log_text(&s, &opts_syncfs, text, sizeof text),
	                 -EPROTO);
	assert_non_null(strstr(text, "newer than this relayd reads"));
	assert_int_equal(queue_ro_open(s.dir, &ro), -EPROTO);
	assert_int_equal(idx_format(s.dir), QUEUE_FORMAT + 1);
	for (int i = 0; i < UP_N; i++)
		queue_msg_free(orig[i]);
	rm_tree(s.dir);
}

/* Fills the index's map (a "pad" database, one transaction per value,
 * values ever smaller) until not even a small write fits. */
static void fill_map(const char *dir)
{
	static const size_t sizes[] = {1500, 200, 8};
	static uint8_t pad[1500];
	uint32_t key = 0;
	for (size_t z = 0; z < ARRAY_LEN(sizes); z++) {
		for (int i = 0; i < 100000; i++) {
			struct idx x;
			MDB_dbi dbi;
			idx_begin(&x, dir);
			assert_int_equal(mdb_dbi_open(x.txn, "pad", MDB_CREATE, &dbi),
			                 0);
			key++;
			MDB_val k = {sizeof key, &key}, v = {sizes[z], pad};
			int rc = mdb_put(x.txn, dbi, &k, &v, 0);
			if (rc == 0)
				rc = mdb_txn_commit(x.txn);
			else
				mdb_txn_abort(x.txn);
			mdb_env_close(x.env);
			if (rc == MDB_MAP_FULL)
				break;
			assert_int_equal(rc, 0);
			if (i == 99999)
				fail_msg("the map did not fill up");
		}
	}
}

/* A map that holds the index in format 1 but has no room to rewrite it
 * (format-2 records are larger, and every write needs pages): the
 * upgrade stops, logged; recovery still finishes (delivery must not stay
 * off for good while the queue cannot drain) and every record reads as
 * it was. A later start with a larger map finishes the upgrade. */
static void test_upgrade_map_full(void **state)
{
	(void)state;
	enum { N = 64 };
	static const struct queue_opts small = {.map_size = 1 << 20,
	                                        .sync = QUEUE_SYNC_SYNCFS};
	static char qid[N][QUEUE_ID_SIZE];
	static char text[1 << 16];
	static struct queue_msg *orig[N];
	struct spool s;
	spool_setup(&s, &small);
	int done = 0;
	for (int i = 0; i < N; i++) {
		struct tmsg m;
		struct queue_body *b;
		queue_new_id(s.q, qid[i]);
		tmsg_init(&m, qid[i], T0 + i, QUEUE_MSG_ACTIVE, 4);
		assert_int_equal(queue_body_open(s.q, qid[i], &b), 0);
		assert_int_equal(queue_body_write(b, "body\r\n", 6), 0);
		assert_int_equal(queue_commit(s.q, b, &m.m, count_cb, &done), 0);
	}
	run_until(&s, &done, N);
	spool_close(&s);

	struct idx x;
	idx_begin(&x, s.dir);
	for (int i = 0; i < N; i++) {
		MDB_val k = {QUEUE_ID_LEN, qid[i]}, v;
		uint8_t *enc;
		size_t n;
		assert_int_equal(mdb_get(x.txn, x.msg, &k, &v), 0);
		assert_int_equal(queue_msg_decode(qid[i], v.mv_data, v.mv_size,
		                                  &orig[i]), 0);
		assert_int_equal(queue_msg_encode_v1(orig[i], &enc, &n), 0);
		v = (MDB_val){n, enc};
		assert_int_equal(mdb_put(x.txn, x.msg, &k, &v, 0), 0);
		free(enc);
		orig[i]->arrival_ms = 0;    /* format 1 has no milliseconds */
	}
	idx_commit(&x);
	idx_set_format(s.dir, -1);
	fill_map(s.dir);

	assert_int_equal(open_log_text(&s, &small, text, sizeof text), 0);
	if (!strstr(text, "index upgrade to format 2 stopped: the index map "
	                  "is full"))
		fail_msg("no 'upgrade stopped' line in:\n%s", text);
	assert_null(strstr(text, "index upgraded in place"));
	assert_true(queue_recovered(s.q));
	struct queue_msg *got;
	for (int i = 0; i < N; i++) {
		assert_int_equal(queue_get(s.q, qid[i], &got), 0);
		assert_msg_equal("kept in format 1", orig[i], got);
		queue_msg_free(got);
	}
	spool_close(&s);
	assert_int_equal(idx_format(s.dir), -1);

	/* The operator raises queue_map_size: the upgrade completes. */
	static const struct queue_opts big = {.map_size = 16 << 20,
	                                      .sync = QUEUE_SYNC_SYNCFS};
	assert_int_equal(open_log_text(&s, &big, text, sizeof text), 0);
	const char *line = strstr(text, "index upgraded in place");
	if (!line)
		fail_msg("no upgrade line in:\n%s", text);
	unsigned long long n = 0;
	assert_int_equal(sscanf(line, "index upgraded in place from format 1 "
	                        "to 2: %llu records rewritten", &n), 1);
	assert_int_equal(n, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(queue_get(s.q, qid[i], &got), 0);
		assert_msg_equal("upgraded", orig[i], got);
		queue_msg_free(got);
		queue_msg_free(orig[i]);
	}
	spool_close(&s);
	assert_int_equal(idx_format(s.dir), QUEUE_FORMAT);
	rm_tree(s.dir);
}

int main(void)
{
	/* Recovery's warnings are expected here; keep the output readable. */
	log_threshold = LOG_ERR;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_msg_due),
		cmocka_unit_test(test_msg_dup),
		cmocka_unit_test(test_update),
		cmocka_unit_test(test_commit_schedules_due),
		cmocka_unit_test(test_update_batch),
		cmocka_unit_test(test_remove),
		cmocka_unit_test(test_scan_due),
		cmocka_unit_test(test_count),
		cmocka_unit_test(test_notify),
		cmocka_unit_test(test_close_with_ops),
		cmocka_unit_test(test_ops_txn_fails),
		cmocka_unit_test(test_recovery_schedule),
		cmocka_unit_test(test_update_rcpts_interleaved),
		cmocka_unit_test(test_update_rcpts_refused),
		cmocka_unit_test(test_upgrade_v1),
		cmocka_unit_test(test_upgrade_map_full),
		cmocka_unit_test(test_commit_arrival_ms),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
