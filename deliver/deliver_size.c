/*
 * deliver/deliver_size.c - The smarthost's SIZE (RFC 1870): learnt from
 * each session's EHLO, kept in spool_dir/smarthost.size so that a restart
 * knows it before the first session, and passed to smtpd (through the
 * callback of deliver_set_size_cb) so clients are offered no more.
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

/* spool_dir/smarthost.size: "HOST:PORT BYTES\n", the SIZE the smarthost
 * named in its last EHLO. A cache, not state: written with a rename but
 * no fsync (a crash loses at most the last change, and the first session
 * after the restart learns it again); it names the smarthost so that a
 * new one is not judged by the old one's limit. */
#define SIZE_FILE "smarthost.size"
#define SIZE_FILE_TMP ".smarthost.size.tmp"

void deliver_size_name(const struct deliver_cfg *g, char *out, size_t n)
{
	snprintf(out, n, "%s:%u", g->host, g->port);
}

static uint64_t size_cap(const struct deliver *d)
{
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST || d->sh_size == 0)
		return 0;
	/* A SIZE too small for the headroom: half of it, still a limit. */
	if (d->sh_size <= 2 * (uint64_t)DELIVER_SIZE_HEADROOM)
		return d->sh_size / 2 ? d->sh_size / 2 : 1;
	return d->sh_size - DELIVER_SIZE_HEADROOM;
}

void deliver_size_notify(struct deliver *d)
{
	if (d->size_cb)
		d->size_cb(d->size_arg, size_cap(d));
}

/* At start and SIGHUP (the loop is not serving yet, or the read is one
 * small file): the smarthost's SIZE as last seen, if it is this one's. */
void deliver_size_load(struct deliver *d)
{
	char path[PATH_MAX], name[300], want[300];
	unsigned long long v = 0;
	d->sh_size = 0;
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST)
		return;
	snprintf(path, sizeof path, "%s/%s", d->cfg->spool_dir, SIZE_FILE);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return;
	FILE *f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return;
	}
	deliver_size_name(d->cfg, want, sizeof want);
	if (fscanf(f, "%299s %llu", name, &v) == 2 && strcmp(name, want) == 0)
		d->sh_size = v;
	fclose(f);
	if (d->sh_size)
		log_info("smarthost %s: SIZE %" PRIu64 " as last seen; clients "
		         "are offered SIZE %" PRIu64, want, d->sh_size, size_cap(d));
}

struct size_store {
	uv_work_t w;
	struct deliver *d;
	char dir[PATH_MAX];
	char line[340];
	int err;
};

static void size_store_work(uv_work_t *req)
{
	struct size_store *st = req->data;
	int dfd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		st->err = -errno;
		return;
	}
	int fd = openat(dfd, SIZE_FILE_TMP, O_WRONLY | O_CREAT | O_TRUNC |
	                O_NOFOLLOW | O_CLOEXEC, 0600);
	size_t n = strlen(st->line);
	if (fd < 0 || write(fd, st->line, n) != (ssize_t)n)
		st->err = -errno;
	if (fd >= 0 && close(fd) < 0 && !st->err)
		st->err = -errno;
	if (!st->err && renameat(dfd, SIZE_FILE_TMP, dfd, SIZE_FILE) < 0)
		st->err = -errno;
	if (st->err)
		unlinkat(dfd, SIZE_FILE_TMP, 0);
	close(dfd);
}

static void size_store(struct deliver *d);

static void size_stored(uv_work_t *req, int status)
{
	struct size_store *st = req->data;
	struct deliver *d = st->d;
	if (status == 0 && st->err)
		log_warn("cannot keep the smarthost's SIZE in %s/%s: %s", st->dir,
		         SIZE_FILE, strerror(-st->err));
	d->inflight--;
	d->size_storing = false;
	free(st);
	if (d->size_dirty && !d->stopping)
		size_store(d);
	deliver_maybe_done(d);
}

static void size_store(struct deliver *d)
{
	if (d->size_storing) {
		d->size_dirty = true;
		return;
	}
	d->size_dirty = false;
	struct size_store *st = calloc(1, sizeof *st);
	if (!st)
		return;   /* a cache: the next session tries again */
	char name[300];
	deliver_size_name(d->cfg, name, sizeof name);
	st->w.data = st;
	st->d = d;
	snprintf(st->dir, sizeof st->dir, "%s", d->cfg->spool_dir);
	snprintf(st->line, sizeof st->line, "%s %" PRIu64 "\n", name, d->sh_size);
	if (uv_queue_work(d->loop, &st->w, size_store_work, size_stored) < 0) {
		free(st);
		return;
	}
	d->size_storing = true;
	d->inflight++;
}

/* A session's EHLO named size (0: none): the new limit, if it changed. */
void deliver_size_learn(struct deliver *d, uint64_t size)
{
	if (d->cfg->mode != CONF_DELIVERY_SMARTHOST)
		return;
	char name[300];
	deliver_size_name(d->cfg, name, sizeof name);
	/* A SIZE below any real provider's (a misconfiguration, or a
	 * man in the middle of smarthost_tls = none) would make relayd
	 * refuse every message, and with nothing queued no session would
	 * ever learn a corrected one: not taken, not kept. */
	if (size && size < DELIVER_SIZE_FLOOR) {
		log_warn("smarthost %s: SIZE %" PRIu64 " is below %u bytes; "
		         "ignored", name, size, DELIVER_SIZE_FLOOR);
		return;
	}
	if (size == d->sh_size)
		return;
	d->sh_size = size;
	if (size)
		log_info("smarthost %s: SIZE %" PRIu64 "; clients are offered "
		         "SIZE %" PRIu64 " at most", name, size, size_cap(d));
	else
		log_info("smarthost %s: no SIZE limit; clients are offered "
		         "max_message_size", name);
	deliver_size_notify(d);
	size_store(d);
}

void deliver_set_size_cb(struct deliver *d, deliver_size_cb cb, void *arg)
{
	d->size_cb = cb;
	d->size_arg = arg;
	deliver_size_notify(d);
}

