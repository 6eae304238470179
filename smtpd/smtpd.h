/*
 * smtpd/smtpd.h - The SMTP listener: binds the configured addresses (each
 * smtp, submission or smtps), accepts connections (enforcing
 * max_connections, max_connections_per_ip and the relay policy of
 * smtpd_policy_net.h, whose rate tables it owns across SIGHUPs), and runs
 * one session per client on the loop, with STARTTLS or implicit TLS.
 */
#ifndef RELAY_SMTPD_H
#define RELAY_SMTPD_H

#include <uv.h>

#include "common/conf.h"
#include "queue/queue.h"

struct smtpd;

/* Binds every `listen` address of conf. The server takes conf over (its
 * contents are moved and *conf is left zeroed): read it back with
 * smtpd_conf(). Returns 0 or -errno with a log line naming the address;
 * even then *out is set, for smtpd_stop(). */
int smtpd_new(uv_loop_t *loop, struct conf *conf, struct queue *q,
              struct smtpd **out);

/* The configuration new sessions get. */
const struct conf *smtpd_conf(const struct smtpd *s);

/* SIGHUP: new sessions use conf from now on (moved in, as for smtpd_new);
 * sessions already running keep the configuration they started with. The
 * listeners stay as they are. The TLS certificate and key are read again
 * on the thread pool and used for new handshakes once loaded; if they do
 * not load, the ones loaded before stay (logged). */
void smtpd_set_conf(struct smtpd *s, struct conf *conf);
/* SIGHUP: listeners follow nc->listen. New addresses are bound and
 * listening first, all or none (a bind that fails, e.g. a port below 1024
 * once root was dropped, changes nothing and err says why: -EINVAL);
 * then addresses no longer listed close (sessions on them go on), and a
 * mode change applies to sessions accepted from then on. */
int smtpd_listen_update(struct smtpd *srv, const struct conf *nc, char *err,
                        size_t errlen);

/* relayd -t: loads tls_cert_file and tls_key_file as smtpd_start would.
 * 0, or -EINVAL with the reason in err. */
int smtpd_check_tls(const struct conf *conf, char *err, size_t errlen);

/* relayd -t, start and SIGHUP: the access lists (trusted_networks,
 * auth_plaintext_networks) parse. 0, or -EINVAL (-ENOMEM) with the
 * reason in err. */
int smtpd_check_conf(const struct conf *conf, char *err, size_t errlen);

/* The spool sessions commit to; set before smtpd_start (the listeners are
 * bound before privileges are dropped and the spool is opened). */
void smtpd_set_queue(struct smtpd *s, struct queue *q);

/* A limit on message size from elsewhere (the smarthost's SIZE, which
 * the delivery side learns), in bytes; 0: none. Sessions that start from
 * now on advertise SIZE min(max_message_size, cap) and refuse larger
 * messages at MAIL (SIZE=) and at the end of DATA/BDAT with 552 5.3.4;
 * sessions already open keep the limit they started with. */
void smtpd_set_size_cap(struct smtpd *s, uint64_t cap);

/* The DKIM signer loaded by smtpd_start (and again on SIGHUP), for
 * deliver/'s DSNs: take a reference (dkim_signer_ref) to keep it. NULL
 * before smtpd_start. */
struct dkim_signer;
struct dkim_signer *smtpd_dkim(const struct smtpd *s);

/* Loads the TLS certificate and key (as the user relayd runs as: call
 * it after dropping privileges), then starts accepting. A certificate
 * that does not load is an error (logged). */
int smtpd_start(struct smtpd *s);

/* relayctl lockout list|clear (deliver_ctl.h documents the verb and its
 * JSON; relayd.c wires it to the control socket): answers the request's
 * arguments ("list", "clear", "clear ADDR|NAME") with the reply line,
 * "ok ..." or "err ...", appended to out. Returns 0 or the error of an
 * append (-ENOBUFS: out's limit). On the loop thread. */
struct buf;
int smtpd_auth_ctl(struct smtpd *s, const char *args, struct buf *out);

/* Stops accepting, answers idle sessions 421 and closes them, lets a
 * commit in flight finish (its client gets its 250 first); done_cb runs
 * when the last session is gone, after which s is freed. */
void smtpd_stop(struct smtpd *s, void (*done_cb)(void *arg), void *arg);

/* Appends smtpd's Prometheus metrics (smtpd/metrics.c): open sessions,
 * messages accepted, refusals by reason class, TLS handshake and AUTH
 * failures, quota and rate refusals. */
struct buf;
void smtpd_metrics(const struct smtpd *s, struct buf *out);

#endif
