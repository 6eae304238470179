/*
 * deliver/deliver_ctl.h - The control protocol between relayctl and
 * relayd, and the daemon's control socket (deliver_ctl.c). relayctl reads
 * the queue straight from LMDB; every change to it goes through here while
 * relayd runs, so the scheduler's view never goes stale.
 *
 * Socket: spool_dir/control (QUEUE_CONTROL_NAME), unix stream, mode 0600.
 * The daemon answers only peers whose uid (SO_PEERCRED) is its own or 0.
 *
 * One request per connection: a line of at most DELIVER_CTL_LINE_MAX bytes
 * including the LF, `VERB [ARG]`; one reply line, then the daemon closes:
 *   ok[ TEXT]\n        done (TEXT: what happened, or a JSON object)
 *   err TEXT\n         refused; TEXT says why ("no such message")
 *
 * Verbs:
 *   flush [ID]    make ID (or every active message) due now, ignoring
 *                 per-message and destination backoff
 *   hold ID       HOLD: not delivered until released (a delivery already
 *                 under way finishes first)
 *   release ID    back to ACTIVE, due now
 *   delete ID     remove without a DSN ("ID: removed" in the log)
 *   bounce ID     fail every recipient not yet delivered, with a DSN
 *   requeue ID    every recipient not yet delivered back to pending, its
 *                 attempts reset; due now
 *   stats         ok {JSON}: counters and the state of the delivery route
 *                 (see deliver_ctl.c for the fields)
 */
#ifndef RELAY_DELIVER_CTL_H
#define RELAY_DELIVER_CTL_H

#define DELIVER_CTL_LINE_MAX 512
/* Longest reply line relayctl accepts, LF included. */
#define DELIVER_CTL_REPLY_MAX 8192

#endif
