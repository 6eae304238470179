/*
 * smtpd/smtpd_lockout.h - Failed-AUTH lockout (issue 4 §3): failures
 * counted per key (the shell uses "ip:ADDR" and "name:CREDENTIAL") within
 * a window; at the limit the key is locked out for a while, twice as long
 * on each repeat, up to SMTPD_LOCKOUT_MAX_MS. An in-memory table bounded
 * in size (the least recently touched entry is evicted when full) whose
 * entries expire. Pure: the caller passes the time; one thread.
 */
#ifndef RELAY_SMTPD_LOCKOUT_H
#define RELAY_SMTPD_LOCKOUT_H

#include <stddef.h>
#include <stdint.h>

#define SMTPD_LOCKOUT_MAX_MS (24ull * 3600 * 1000)
#define SMTPD_LOCKOUT_KEY_MAX 96   /* longer keys are cut */

struct smtpd_lockout;

/* A table of at most cap entries (cap >= 1). NULL on ENOMEM. */
struct smtpd_lockout *smtpd_lockout_new(size_t cap);
void smtpd_lockout_free(struct smtpd_lockout *t);   /* NULL: no-op */

/* limit failures within window_ms lock a key for lockout_ms (doubled per
 * repeat). Applies to entries already in the table too (SIGHUP). */
void smtpd_lockout_set(struct smtpd_lockout *t, unsigned limit,
                       uint64_t window_ms, uint64_t lockout_ms);

/* Milliseconds left of key's lockout at now, or 0 when not locked. */
uint64_t smtpd_lockout_check(struct smtpd_lockout *t, const char *key,
                             uint64_t now);

/* Records one failure of key at now. Returns the length of the lockout
 * this failure started (ms), or 0 when it started none. */
uint64_t smtpd_lockout_fail(struct smtpd_lockout *t, const char *key,
                            uint64_t now);

/* A success: key's failures (not a lockout in force) are forgotten. */
void smtpd_lockout_clear(struct smtpd_lockout *t, const char *key,
                         uint64_t now);

/* Entries held (expired ones are dropped first); for tests. */
size_t smtpd_lockout_count(struct smtpd_lockout *t, uint64_t now);

#endif
