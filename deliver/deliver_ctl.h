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
 *   destinations  ok {"destinations":[{...},...]}: each destination the
 *                 scheduler holds now (fields: deliver_dest_json in
 *                 deliver_int.h)
 *   pause DEST [SECONDS]
 *                 the destination takes no new transaction until resumed
 *                 (or for SECONDS); its recipients wait in the queue,
 *                 shown as paused by the operator. DEST: a key or name as
 *                 `destinations` gives it, "smarthost" (smarthost mode),
 *                 or a recipient domain (direct mode: the destination it
 *                 routes to; "err busy ..." while its MX hosts are being
 *                 looked up: ask again). In memory only.
 *   resume DEST   lifts the pause (an operator's or a failure's); what it
 *                 held is tried now
 *
 * Verbs served by the SMTP server (smtpd/smtpd_auth.c), wired by relayd.c
 * through deliver_ctl_verb (deliver.h):
 *   lockout list  ok {JSON}: the failed-AUTH tables (issue 8 §3):
 *                 {"clients":[{"client":"192.0.2.7","failures":2,
 *                   "locked":0,"lockouts":1,"checks":0},...],
 *                  "names":[{"name":"alice","failures":50,"delay":60,
 *                   "waiting":3},...],
 *                  "limit":5,"capacity":4096}
 *                 client: an address, or an IPv6 /64 as "2001:db8::/64";
 *                 failures: within auth_fail_window; locked: seconds of
 *                 lockout left (0: none); lockouts: how many are
 *                 remembered (the next lasts 2^lockouts * auth_lockout);
 *                 checks: password checks in flight or waiting; name:
 *                 as typed, lower-cased (known or not); delay: seconds
 *                 before the name's slow lane may start a check; waiting:
 *                 checks in that lane (running or waiting). limit is
 *                 auth_fail_limit, capacity each table's size.
 *   lockout clear [ADDR|NAME]
 *                 forgets failures, lockouts and lane delays: of every
 *                 client and name, or of one client (an IPv6 address
 *                 stands for its /64) or one name (case-insensitive); an
 *                 argument that is both an address and a name clears
 *                 both. ok {"cleared":N} (N entries had something to
 *                 forget; checks in flight stay counted).
 */
#ifndef RELAY_DELIVER_CTL_H
#define RELAY_DELIVER_CTL_H

#define DELIVER_CTL_LINE_MAX 512
/* Longest reply line relayctl accepts, LF included: room for a lockout
 * list of two full tables (4096 clients, 4096 names as typed, escaped). */
#define DELIVER_CTL_REPLY_MAX (4u << 20)
/* Verbs other modules may add (deliver_ctl_verb). */
#define DELIVER_CTL_VERBS_MAX 4

#endif
