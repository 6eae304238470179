/*
 * deliver/deliver.h - The delivery scheduler: takes due messages from the
 * queue, sends them through the smarthost over a bounded pool of SMTP
 * client sessions, records each recipient's result durably, retries with
 * backoff, bounces with RFC 3464 DSNs, and serves the control socket that
 * relayctl steers it with (deliver_ctl.h).
 */
#ifndef RELAY_DELIVER_H
#define RELAY_DELIVER_H

#include <uv.h>

#include "common/conf.h"
#include "queue/queue.h"

struct deliver;

/* Checks the delivery settings beyond what conf checks key by key
 * (delivery = smarthost needs a smarthost, AUTH needs a password, the CA
 * file must load). 0, or -EINVAL with the reason in err. */
int deliver_check_conf(const struct conf *conf, char *err, size_t errlen);

/* Reads what it needs from conf (copied: conf may go away), opens the
 * control socket in spool_dir and starts scheduling (with delivery =
 * hold it only serves the control socket). Returns 0 or -errno with a
 * log line. */
int deliver_new(uv_loop_t *loop, struct queue *q, const struct conf *conf,
                struct deliver **out);

/* Room left under the smarthost's SIZE for what relayd adds to a message
 * between the client's DATA and the smarthost (Received:, Message-ID:,
 * Date:, a From: rewrite, folding of over-long lines). */
#define DELIVER_SIZE_HEADROOM (16 * 1024)
/* A learned SIZE below this is ignored (deliver_size.c). */
#define DELIVER_SIZE_FLOOR (1024 * 1024)

/* The largest message clients may hand us for the smarthost: learnt from
 * the SIZE in its EHLO (every session's; RFC 1870), minus
 * DELIVER_SIZE_HEADROOM; 0 when it gives none (or delivery = hold). The
 * last value is kept in spool_dir/smarthost.size, so a restart knows it
 * before the first session. cb(arg, bytes) runs at once with the current
 * value and on the loop whenever it changes. */
typedef void (*deliver_size_cb)(void *arg, uint64_t bytes);
void deliver_set_size_cb(struct deliver *d, deliver_size_cb cb, void *arg);

/* SIGHUP: settings for new sessions and the scheduler from now on.
 * Returns 0, or -errno (a log line says why) and keeps the old ones. */
int deliver_set_conf(struct deliver *d, const struct conf *conf);

/* A verb of the control socket (deliver_ctl.h) served by another module:
 * relayd.c wires smtpd's "lockout" here, so deliver/ never includes
 * smtpd/. fn runs on the loop with the request's arguments (after the
 * verb and one space; "" for none) and appends the reply line without its
 * LF to out: "ok[ TEXT]" or "err TEXT", and returns 0, or the error of
 * an append (out is bounded: the reply line with its LF fits in
 * DELIVER_CTL_REPLY_MAX; relayctl then gets "err reply too long"). At most
 * DELIVER_CTL_VERBS_MAX verbs; a verb of the scheduler's own cannot be
 * taken. Returns 0, -EEXIST or -ENOSPC. */
struct buf;
typedef int (*deliver_ctl_verb_fn)(void *arg, const char *args,
                                   struct buf *out);
int deliver_ctl_verb(struct deliver *d, const char *verb,
                     deliver_ctl_verb_fn fn, void *arg);

/* delivery = direct looks recipient domains up through dns (owned by the
 * caller, closed after deliver_stop); without it, their recipients
 * defer. */
struct dns;
void deliver_set_dns(struct deliver *d, struct dns *dns);

/* The DKIM signer for the DSNs relayd writes (a reference is taken; the
 * previous one dropped): at start and after each SIGHUP. NULL: none. */
struct dkim_signer;
void deliver_set_dkim(struct deliver *d, struct dkim_signer *s);

/* Stops: no new sessions, sessions are closed (a message in flight is
 * simply retried later), the control socket is closed; done_cb runs
 * when every handle is gone, after which d is freed. */
void deliver_stop(struct deliver *d, void (*done_cb)(void *arg), void *arg);

/* Appends delivery's Prometheus metrics (text format 0.0.4, with HELP
 * and TYPE lines) to out: queue depth, oldest message age, sent/deferred/
 * bounced/attempt counters, the latency histogram, destinations paused
 * and throttled, DKIM counts. Loop thread. */
struct buf;
void deliver_metrics(struct deliver *d, struct buf *out);

#endif
