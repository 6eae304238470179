/*
 * smtpd/smtpd_policy_net.c - The credential-free relay policy, wired (see
 * smtpd_policy_net.h): the policy of one configuration parsed from its
 * keys, the listener's rate tables, and the connect / MAIL / RCPT /
 * commit decisions with their log lines. Pure: no sockets, no
 * libuv; the time comes from the caller or smtpd_relay_now().
 */
#include "smtpd/smtpd_policy_net.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

/* ---- one configuration's policy -------------------------------------------- */

static int parse_rate(const struct conf *c, const char *name, const char *key,
                      const char *v, struct smtpd_rate_spec *out,
                      char *text, size_t textlen, char *err, size_t errlen)
{
	if (smtpd_rate_parse(v, out) < 0) {
		char q[128], why[256];
		log_escape(q, sizeof q, v, strlen(v));
		snprintf(why, sizeof why, "not N/DURATION (e.g. 60/1m, 100/1h) "
		         "or 0: '%s'", q);
		conf_where(c, name, key, why, err, errlen);
		return -EINVAL;
	}
	snprintf(text, textlen, "%s", v);
	return 0;
}

int smtpd_relay_new(const struct conf *c, const char *name,
                    struct smtpd_relay **out, char *err, size_t errlen)
{
	char why[512];
	int r;
	struct smtpd_relay *p = calloc(1, sizeof *p);
	if (!p) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((r = smtpd_cidr_parse(c->deny_networks, &p->deny, why,
	                          sizeof why)) < 0) {
		conf_where(c, name, "deny_networks", why, err, errlen);
		goto fail;
	}
	if ((r = smtpd_domains_parse(c->sender_domains, &p->senders, why,
	                             sizeof why)) < 0) {
		conf_where(c, name, "sender_domains", why, err, errlen);
		goto fail;
	}
	if ((r = smtpd_domains_parse(c->recipient_domains, &p->recipients, why,
	                             sizeof why)) < 0) {
		conf_where(c, name, "recipient_domains", why, err, errlen);
		goto fail;
	}
	if ((r = parse_rate(c, name, "rate_connections", c->rate_connections,
	                    &p->conn, p->conn_text, sizeof p->conn_text, err,
	                    errlen)) < 0)
		goto fail;
	if ((r = parse_rate(c, name, "rate_messages", c->rate_messages, &p->msg,
	                    p->msg_text, sizeof p->msg_text, err, errlen)) < 0)
		goto fail;
	*out = p;
	return 0;
fail:
	smtpd_relay_free(p);
	return r;
}

void smtpd_relay_free(struct smtpd_relay *r)
{
	if (!r)
		return;
	smtpd_cidr_list_free(&r->deny);
	smtpd_domains_free(r->senders);
	smtpd_domains_free(r->recipients);
	free(r);
}

int smtpd_relay_check_conf(const struct conf *c, const char *name,
                           char *err, size_t errlen)
{
	struct smtpd_relay *r;
	int rc = smtpd_relay_new(c, name, &r, err, errlen);
	if (rc == 0)
		smtpd_relay_free(r);
	return rc;
}

/* ---- the listener's rate tables ---------------------------------------------- */

struct smtpd_relay_limits {
	size_t max_keys;
	struct smtpd_rate *conn;   /* NULL until rate_connections is first on */
	struct smtpd_rate *msg;    /* NULL until rate_messages is first on */
};

struct smtpd_relay_limits *smtpd_relay_limits_new(size_t max_keys)
{
	if (max_keys == 0 || max_keys > (1u << 24))
		return NULL;
	struct smtpd_relay_limits *l = calloc(1, sizeof *l);
	if (l)
		l->max_keys = max_keys;
	return l;
}

void smtpd_relay_limits_free(struct smtpd_relay_limits *l)
{
	if (!l)
		return;
	smtpd_rate_free(l->conn);
	smtpd_rate_free(l->msg);
	free(l);
}

/* The table for a rate that is on, made on first use; NULL when out of
 * memory (logged once per attempt; the limit is then not enforced rather
 * than refusing everyone). */
static struct smtpd_rate *table(struct smtpd_relay_limits *l,
                                struct smtpd_rate **t, const char *what)
{
	if (!*t && !(*t = smtpd_rate_new(l->max_keys)))
		log_err("%s: out of memory for the rate table; not enforced", what);
	return *t;
}

/* ---- one session ---------------------------------------------------------------- */

void smtpd_relay_sess_init(struct smtpd_relay_sess *rs,
                           const struct smtpd_relay *pol,
                           struct smtpd_relay_limits *lim,
                           const struct sockaddr *sa, const char *ip,
                           const char *sid)
{
	memset(rs, 0, sizeof *rs);
	rs->pol = pol;
	rs->lim = lim;
	rs->sid = sid;
	snprintf(rs->ip, sizeof rs->ip, "%s", ip ? ip : "unknown");
	if (!sa)
		return;
	size_t len = sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
	           : sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : 0;
	if (len == 0)
		return;
	memcpy(&rs->sa, sa, len);
	/* IPv6 clients by their /64: one customer's subnet. */
	if (smtpd_policy_ip_key(sa, 64, rs->key, sizeof rs->key) < 0)
		rs->key[0] = '\0';
}

bool smtpd_relay_same_client(const struct smtpd_relay_sess *a,
                             const struct smtpd_relay_sess *b)
{
	if (a->key[0] || b->key[0])
		return strcmp(a->key, b->key) == 0;
	return strcmp(a->ip, b->ip) == 0;
}

uint64_t smtpd_relay_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *sid_of(const struct smtpd_relay_sess *rs)
{
	return rs->sid ? rs->sid : "-";
}

enum smtp_reply_id smtpd_relay_connect(struct smtpd_relay_sess *rs,
                                       uint64_t now_ms)
{
	const struct smtpd_relay *p = rs->pol;
	if (!p)
		return SMTP_R__COUNT;
	const struct smtpd_cidr *hit =
		smtpd_cidr_find(&p->deny, (const struct sockaddr *)&rs->sa);
	if (hit) {
		char net[SMTPD_CIDR_TEXT_MAX];
		smtpd_cidr_text(hit, net, sizeof net);
		log_info("s=%s: refused: client=%s in deny_networks (%s): "
		         "554 5.7.1", sid_of(rs), rs->ip, net);
		return SMTP_R_ACCESS_DENIED;
	}
	if (p->conn.limit && rs->key[0] && rs->lim) {
		struct smtpd_rate *t = table(rs->lim, &rs->lim->conn,
		                             "rate_connections");
		uint64_t next;
		if (t && !smtpd_rate_hit(t, rs->key, now_ms, p->conn.limit,
		                         p->conn.window_ms, &next)) {
			log_info("s=%s: refused: client=%s over rate_connections %s "
			         "(key %s, next allowed in %llus): 421 4.7.0",
			         sid_of(rs), rs->ip, p->conn_text, rs->key,
			         (unsigned long long)((next - now_ms + 999) / 1000));
			return SMTP_R_CONN_RATE;
		}
	}
	return SMTP_R__COUNT;
}

enum smtp_reply_id smtpd_relay_mail(struct smtpd_relay_sess *rs,
                                    uint64_t now_ms, const char *sender)
{
	const struct smtpd_relay *p = rs->pol;
	if (!p)
		return SMTP_R__COUNT;
	char from[SMTP_PATH_MAX * 4 + 8];
	if (!smtpd_policy_sender_ok(p->senders, sender)) {
		log_escape(from, sizeof from, sender, strlen(sender));
		log_info("s=%s: policy: from=<%s>, client=%s: sender domain not in "
		         "sender_domains", sid_of(rs), from, rs->ip);
		return SMTP_R_SENDER_DOMAIN;
	}
	if (p->msg.limit && rs->key[0] && rs->lim) {
		struct smtpd_rate *t = table(rs->lim, &rs->lim->msg,
		                             "rate_messages");
		uint64_t next;
		if (t && !smtpd_rate_peek(t, rs->key, now_ms, p->msg.limit,
		                          p->msg.window_ms, &next)) {
			log_escape(from, sizeof from, sender, strlen(sender));
			log_info("s=%s: policy: from=<%s>, client=%s: over "
			         "rate_messages %s (key %s, next allowed in %llus)",
			         sid_of(rs), from, rs->ip, p->msg_text, rs->key,
			         (unsigned long long)((next - now_ms + 999) / 1000));
			return SMTP_R_MSG_RATE;
		}
	}
	return SMTP_R__COUNT;
}

enum smtp_reply_id smtpd_relay_rcpt(struct smtpd_relay_sess *rs,
                                    const char *rcpt)
{
	const struct smtpd_relay *p = rs->pol;
	if (!p || smtpd_policy_domain_ok(p->recipients, rcpt))
		return SMTP_R__COUNT;
	char to[SMTP_PATH_MAX * 4 + 8];
	log_escape(to, sizeof to, rcpt, strlen(rcpt));
	log_info("s=%s: policy: to=<%s>, client=%s: recipient domain not in "
	         "recipient_domains", sid_of(rs), to, rs->ip);
	return SMTP_R_RCPT_DOMAIN;
}

void smtpd_relay_committed(struct smtpd_relay_sess *rs, uint64_t now_ms)
{
	const struct smtpd_relay *p = rs->pol;
	if (!p || !p->msg.limit || !rs->key[0] || !rs->lim)
		return;
	struct smtpd_rate *t = table(rs->lim, &rs->lim->msg, "rate_messages");
	/* Refused when parallel sessions overshot: nothing more to count. */
	if (t)
		smtpd_rate_hit(t, rs->key, now_ms, p->msg.limit, p->msg.window_ms,
		               NULL);
}

static enum smtp_reply_id ops_mail(void *ctx, const char *sender)
{
	return smtpd_relay_mail(ctx, smtpd_relay_now(), sender);
}

static enum smtp_reply_id ops_rcpt(void *ctx, const char *rcpt)
{
	return smtpd_relay_rcpt(ctx, rcpt);
}

const struct smtpd_policy_ops smtpd_relay_policy_ops = {
	.mail = ops_mail,
	.rcpt = ops_rcpt,
};
