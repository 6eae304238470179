/*
 * bench/fill_queue.c - Fills a spool with N synthetic messages through the
 * queue's own commit path (queue_open + queue_commit, as relayd's SMTP
 * sessions do), to time relayctl on a large queue:
 *
 *   make bench-fill
 *   build/bench/fill_queue /tmp/bigspool 100000
 *   time build/relayctl list >/dev/null      # with RELAYD_SPOOL_DIR=/tmp/bigspool
 *
 * The spool must not be in use by a running relayd. Messages arrive one
 * second apart, ending now; 1 to 3 recipients at a few domains; every 7th
 * message is on hold; some recipients are deferred (with a reply and a
 * next attempt), sent or bounced. The first recipient is always pending,
 * so each message is due at its arrival, where the commit schedules it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "queue/queue.h"

/* Bodies in flight at once: each holds an open file. */
#define WINDOW 256

static const char *const domains[] = {
	"example.com", "example.org", "dest.test", "mail.example.net",
};

static int failed;

static void commit_cb(void *arg, int status)
{
	int *left = arg;
	if (status != 0 && !failed++)
		fprintf(stderr, "fill_queue: commit: %s\n", strerror(-status));
	(*left)--;
}

static void closed_cb(void *arg)
{
	*(int *)arg = 1;
}

static void make_msg(struct queue_msg *m, struct queue_rcpt *r, char addr[][64],
                     unsigned long i, int64_t now, unsigned long n)
{
	m->arrival = now - (int64_t)(n - i);
	m->state = i % 7 == 3 ? QUEUE_MSG_HOLD : QUEUE_MSG_ACTIVE;
	m->sender = i % 11 == 0 ? "" : "sender@client.example";
	m->nrcpt = 1 + i % 3;
	m->rcpt = r;
	for (size_t k = 0; k < m->nrcpt; k++) {
		snprintf(addr[k], 64, "user%lu.%zu@%s", i, k,
		         domains[(i + k) % (sizeof domains / sizeof *domains)]);
		r[k] = (struct queue_rcpt){.addr = addr[k]};
		if (k == 1) {
			r[k].state = QUEUE_RCPT_DEFERRED;
			r[k].attempts = 1 + (uint32_t)(i % 5);
			r[k].next_attempt = now + (int64_t)(i % 3600);
			r[k].last_reply = "451 4.7.1 Greylisted, please try again later";
		} else if (k == 2) {
			r[k].state = i % 2 ? QUEUE_RCPT_SENT : QUEUE_RCPT_BOUNCED;
			r[k].attempts = 1;
			r[k].last_reply = i % 2 ? "250 2.0.0 Ok: queued" :
			                  "550 5.1.1 <x>: Recipient address rejected";
		}
	}
}

int main(int argc, char **argv)
{
	static const char body[] =
		"Received: by relay.test (relayd)\r\n"
		"From: sender@client.example\r\nSubject: fill\r\n\r\nbody\r\n";
	uv_loop_t loop;
	struct queue *q;
	char *end = NULL;
	unsigned long n = argc == 3 ? strtoul(argv[2], &end, 10) : 0;

	if (argc != 3 || !end || *end || n == 0) {
		fprintf(stderr, "usage: fill_queue SPOOL_DIR N\n");
		return 2;
	}
	log_open(NULL, true, LOG_WARN);
	struct queue_opts o = {.spool_dir = argv[1], .map_size = UINT64_C(4) << 30,
	                       .sync = QUEUE_SYNC_SYNCFS};
	if (uv_loop_init(&loop) != 0 || queue_open(&loop, &o, &q) != 0)
		return 1;
	int64_t now = (int64_t)time(NULL);
	for (unsigned long i = 0; i < n;) {
		int left = 0;
		for (int w = 0; w < WINDOW && i < n; w++, i++) {
			struct queue_rcpt r[3];
			char addr[3][64];
			struct queue_msg m = {0};
			struct queue_body *b;
			queue_new_id(q, m.qid);
			make_msg(&m, r, addr, i, now, n);
			int e = queue_body_open(q, m.qid, &b);
			if (e == 0 && (e = queue_body_write(b, body, sizeof body - 1)))
				queue_body_abort(b);
			else if (e == 0)    /* takes the body, whatever the result */
				e = queue_commit(q, b, &m, commit_cb, &left);
			if (e != 0) {
				fprintf(stderr, "fill_queue: %s\n", strerror(-e));
				return 1;
			}
			left++;
		}
		while (left > 0)
			uv_run(&loop, UV_RUN_ONCE);
		if (failed)
			break;
	}
	int closed = 0;
	queue_close(q, closed_cb, &closed);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (!closed || uv_loop_close(&loop) != 0 || failed)
		return 1;
	printf("%lu messages in %s\n", n, argv[1]);
	return 0;
}
