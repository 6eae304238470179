/*
 * smtpd/smtpd_policy_net.h - The relay policy of issue 4 §3 that needs no
 * credential, wired: deny_networks (a list of smtpd_cidr.h), the global
 * sender and recipient domain allowlists, and the per-client-IP rates of
 * new connections and accepted messages. Owns the parsing of those keys into
 * one struct smtpd_relay per configuration load, the listener's rate
 * tables (struct smtpd_relay_limits, which live as long as the listener
 * and so survive SIGHUP; in memory only: a restart forgets them), and the
 * decisions with their log lines. No sockets, no libuv: the shell gives
 * the client's address and the time. The building blocks (domain lists,
 * the limiter, rate specs, IP keys) are smtpd_policy.h's; CIDR lists are
 * smtpd_cidr.h's, shared with trusted_networks.
 *
 *   deny_networks      at connect: 554 5.7.1, then close
 *   rate_connections   at connect: 421 4.7.0, then close (every new
 *                      connection counts, refused or not)
 *   sender_domains     at MAIL: 553 5.7.1 (<> always passes)
 *   rate_messages      at MAIL: 450 4.7.1 when the client's committed
 *                      messages in the window reached the limit; a
 *                      message counts once its commit succeeded
 *   recipient_domains  at RCPT, per recipient: 550 5.7.1
 *
 * Rates are keyed by smtpd_policy_ip_key (IPv4 address; IPv6 by /64).
 * Messages are checked at MAIL and counted at commit, so sessions of one
 * client running in parallel may each pass the check and overshoot the
 * limit by up to their number (bounded by max_connections_per_ip).
 */
#ifndef RELAY_SMTPD_POLICY_NET_H
#define RELAY_SMTPD_POLICY_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/conf.h"
#include "common/smtp.h"
#include "smtpd/smtpd_cidr.h"
#include "smtpd/smtpd_policy.h"
#include "smtpd/smtpd_proto.h"

/* ---- one configuration's policy -------------------------------------------- */

struct smtpd_relay {
	struct smtpd_cidr_list deny;        /* deny_networks */
	struct smtpd_domains *senders;      /* sender_domains; empty: any */
	struct smtpd_domains *recipients;   /* recipient_domains; empty: any */
	struct smtpd_rate_spec conn;        /* rate_connections; 0: none */
	struct smtpd_rate_spec msg;         /* rate_messages; 0: none */
	char conn_text[32], msg_text[32];   /* the specs as set, for logs */
};

/* Parses the policy keys of c. Errors (-EINVAL) name where the key was
 * set, as conf_check's do: "relayd.conf:7: sender_domains: ..." (name:
 * the file's name). -ENOMEM. On success *out is the caller's. */
int smtpd_relay_new(const struct conf *c, const char *name,
                    struct smtpd_relay **out, char *err, size_t errlen);
void smtpd_relay_free(struct smtpd_relay *r);   /* NULL: no-op */

/* relayd -t, startup and SIGHUP: the same parse, thrown away. */
int smtpd_relay_check_conf(const struct conf *c, const char *name,
                           char *err, size_t errlen);

/* ---- the listener's rate tables ---------------------------------------------- */

/* Keys per table: about 160 bytes each, so 10 MiB a table at most. */
#define SMTPD_RELAY_RATE_KEYS 65536

struct smtpd_relay_limits;

/* max_keys per table (1..2^24). The tables themselves are allocated on
 * first use, so a rate that is off costs nothing. NULL: out of memory. */
struct smtpd_relay_limits *smtpd_relay_limits_new(size_t max_keys);
void smtpd_relay_limits_free(struct smtpd_relay_limits *l);   /* NULL ok */

/* ---- one session ---------------------------------------------------------------- */

struct smtpd_relay_sess {
	const struct smtpd_relay *pol;      /* the session's configuration */
	struct smtpd_relay_limits *lim;     /* the listener's */
	const char *sid;                    /* for log lines; outlives this */
	struct sockaddr_storage sa;         /* the client */
	char ip[64];                        /* its text, for log lines */
	char key[64];                       /* its rate key; "" if none */
};

/* Sets rs up for a client at sa (its text ip). pol NULL: no policy. */
void smtpd_relay_sess_init(struct smtpd_relay_sess *rs,
                           const struct smtpd_relay *pol,
                           struct smtpd_relay_limits *lim,
                           const struct sockaddr *sa, const char *ip,
                           const char *sid);

/* a and b come from the same client as the limits count clients (the
 * rates, max_connections_per_ip): the same IPv4 address, or the same
 * IPv6 /64 (an IPv4-mapped address counts as IPv4); without a rate key
 * (an unknown family), the same address text. */
bool smtpd_relay_same_client(const struct smtpd_relay_sess *a,
                             const struct smtpd_relay_sess *b);

/* Milliseconds on a monotonic clock: the `now_ms` of the calls below. */
uint64_t smtpd_relay_now(void);

/* A new connection: deny_networks, then rate_connections (this connection
 * counts). SMTP_R__COUNT to go on, or the reply to send before closing
 * (already logged with the reason). */
enum smtp_reply_id smtpd_relay_connect(struct smtpd_relay_sess *rs,
                                       uint64_t now_ms);

/* MAIL FROM:<sender> ("" for <>): sender_domains, then rate_messages.
 * SMTP_R__COUNT or the refusal (logged). */
enum smtp_reply_id smtpd_relay_mail(struct smtpd_relay_sess *rs,
                                    uint64_t now_ms, const char *sender);

/* RCPT TO:<rcpt>: recipient_domains. SMTP_R__COUNT or the refusal. */
enum smtp_reply_id smtpd_relay_rcpt(struct smtpd_relay_sess *rs,
                                    const char *rcpt);

/* A message of this client was committed: it counts for rate_messages. */
void smtpd_relay_committed(struct smtpd_relay_sess *rs, uint64_t now_ms);

/* The core's hooks (smtpd_proto_cfg.policy), ctx a struct
 * smtpd_relay_sess; the time is smtpd_relay_now(). */
extern const struct smtpd_policy_ops smtpd_relay_policy_ops;

#endif
