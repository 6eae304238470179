/*
 * smtpd/smtpd.h - The SMTP listener: binds the configured addresses,
 * accepts connections (enforcing max_connections and
 * max_connections_per_ip), and runs one session per client on the loop.
 */
#ifndef RELAY_SMTPD_H
#define RELAY_SMTPD_H

#include <uv.h>

#include "common/conf.h"
#include "queue/queue.h"

struct smtpd;

/* Binds every `listen` address of conf (which must outlive the server).
 * Returns 0 or -errno with a log line naming the address. */
int smtpd_new(uv_loop_t *loop, const struct conf *conf, struct queue *q,
              struct smtpd **out);

/* The spool sessions commit to; set before smtpd_start (the listeners are
 * bound before privileges are dropped and the spool is opened). */
void smtpd_set_queue(struct smtpd *s, struct queue *q);

/* Starts accepting. */
int smtpd_start(struct smtpd *s);

/* Stops accepting, answers idle sessions 421 and closes them, lets a
 * commit in flight finish (its client gets its 250 first); done_cb runs
 * when the last session is gone, after which s is freed. */
void smtpd_stop(struct smtpd *s, void (*done_cb)(void *arg), void *arg);

#endif
