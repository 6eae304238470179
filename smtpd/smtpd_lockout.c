/*
 * smtpd/smtpd_lockout.c - The failed-AUTH lockout table: a fixed array
 * scanned linearly. AUTH attempts are rare next to the scrypt run each
 * one costs, so a scan of a few thousand entries is noise; the array
 * never grows, so a flood of addresses cannot exhaust memory, only evict
 * older entries.
 */
#include "smtpd/smtpd_lockout.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	char key[SMTPD_LOCKOUT_KEY_MAX];
	uint64_t window_start;   /* first failure counted in nfail */
	uint64_t locked_until;   /* 0: never locked */
	uint64_t touched;        /* for eviction */
	unsigned nfail;
	unsigned strikes;        /* lockouts so far: the next lasts 2^strikes */
	bool used;
};

struct smtpd_lockout {
	unsigned limit;
	uint64_t window, lockout;
	size_t cap;
	struct entry e[];
};

struct smtpd_lockout *smtpd_lockout_new(size_t cap)
{
	if (cap == 0)
		cap = 1;
	struct smtpd_lockout *t = calloc(1, sizeof *t + cap * sizeof t->e[0]);
	if (!t)
		return NULL;
	t->cap = cap;
	t->limit = 5;
	t->window = 10 * 60 * 1000;
	t->lockout = 15 * 60 * 1000;
	return t;
}

void smtpd_lockout_free(struct smtpd_lockout *t)
{
	free(t);
}

void smtpd_lockout_set(struct smtpd_lockout *t, unsigned limit,
                       uint64_t window_ms, uint64_t lockout_ms)
{
	t->limit = limit ? limit : 1;
	t->window = window_ms;
	t->lockout = lockout_ms;
}

/* The lockout that follows `strikes` earlier ones. */
static uint64_t lockout_len(const struct smtpd_lockout *t, unsigned strikes)
{
	uint64_t d = t->lockout;
	for (unsigned i = 0; i < strikes && d < SMTPD_LOCKOUT_MAX_MS; i++)
		d *= 2;
	return d < SMTPD_LOCKOUT_MAX_MS ? d : SMTPD_LOCKOUT_MAX_MS;
}

/* An entry can go once it locks nothing, counts nothing, and its last
 * lockout is as far behind as it lasted (so the doubling forgets a key
 * that behaved for that long). */
static bool expired(const struct smtpd_lockout *t, const struct entry *e,
                    uint64_t now)
{
	if (now < e->locked_until)
		return false;
	if (e->nfail && now - e->window_start < t->window)
		return false;
	if (e->strikes &&
	    now - e->locked_until < lockout_len(t, e->strikes - 1))
		return false;
	return true;
}

static struct entry *find(struct smtpd_lockout *t, const char *key,
                          uint64_t now)
{
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used || strncmp(e->key, key, sizeof e->key - 1) != 0)
			continue;
		if (expired(t, e, now)) {
			e->used = false;
			return NULL;
		}
		return e;
	}
	return NULL;
}

/* A slot for a new key: a free one, an expired one, else the least
 * recently touched. */
static struct entry *slot(struct smtpd_lockout *t, uint64_t now)
{
	struct entry *old = &t->e[0];
	for (size_t i = 0; i < t->cap; i++) {
		struct entry *e = &t->e[i];
		if (!e->used || expired(t, e, now))
			return e;
		if (e->touched < old->touched)
			old = e;
	}
	return old;
}

uint64_t smtpd_lockout_check(struct smtpd_lockout *t, const char *key,
                             uint64_t now)
{
	struct entry *e = find(t, key, now);
	return e && now < e->locked_until ? e->locked_until - now : 0;
}

uint64_t smtpd_lockout_fail(struct smtpd_lockout *t, const char *key,
                            uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (!e) {
		e = slot(t, now);
		memset(e, 0, sizeof *e);
		e->used = true;
		size_t n = strnlen(key, sizeof e->key - 1);
		memcpy(e->key, key, n);
		e->key[n] = '\0';
	}
	e->touched = now;
	if (now < e->locked_until)
		return 0;   /* already locked: nothing more to count */
	if (e->nfail == 0 || now - e->window_start >= t->window) {
		e->nfail = 0;
		e->window_start = now;
	}
	if (++e->nfail < t->limit)
		return 0;
	uint64_t d = lockout_len(t, e->strikes);
	e->strikes++;
	e->nfail = 0;
	e->locked_until = now + d;
	return d;
}

void smtpd_lockout_clear(struct smtpd_lockout *t, const char *key,
                         uint64_t now)
{
	struct entry *e = find(t, key, now);
	if (e)
		e->nfail = 0;
}

size_t smtpd_lockout_count(struct smtpd_lockout *t, uint64_t now)
{
	size_t n = 0;
	for (size_t i = 0; i < t->cap; i++) {
		if (t->e[i].used && expired(t, &t->e[i], now))
			t->e[i].used = false;
		n += t->e[i].used;
	}
	return n;
}
