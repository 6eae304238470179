/*
 * smtpd/smtpd_policy_net.c - The credential-free relay policy, wired (see
 * smtpd_policy_net.h): CIDR lists, the policy of one configuration parsed
 * from its keys, the listener's rate tables, and the connect / MAIL /
 * RCPT / commit decisions with their log lines. Pure: no sockets, no
 * libuv; the time comes from the caller or smtpd_relay_now().
 */
#include "smtpd/smtpd_policy_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

/* ---- CIDR lists ----------------------------------------------------------- */

struct smtpd_net {
	int family;             /* AF_INET or AF_INET6 */
	uint8_t addr[16];       /* network, host bits zero; IPv4 in [0..3] */
	unsigned prefix;
};

struct smtpd_nets {
	struct smtpd_net *v;
	size_t n, cap;
};

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* Are the bits of a past prefix all zero? */
static bool host_bits_zero(const uint8_t *a, size_t len, unsigned prefix)
{
	for (size_t i = 0; i < len; i++) {
		unsigned keep = prefix > i * 8 ? prefix - (unsigned)i * 8 : 0;
		uint8_t mask = keep >= 8 ? 0xff : (uint8_t)(0xff00u >> keep);
		if (a[i] & (uint8_t)~mask)
			return false;
	}
	return true;
}

static bool prefix_match(const uint8_t *a, const uint8_t *net,
                         unsigned prefix)
{
	size_t whole = prefix / 8;
	if (memcmp(a, net, whole) != 0)
		return false;
	unsigned rest = prefix % 8;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff00u >> rest);
	return (a[whole] & mask) == (net[whole] & mask);
}

static void net_text(const struct smtpd_net *e, char *out, size_t n)
{
	char a[INET6_ADDRSTRLEN] = "?";
	inet_ntop(e->family, e->addr, a, sizeof a);
	snprintf(out, n, "%s/%u", a, e->prefix);
}

/* One trimmed item [s, s + n). */
static int net_item(struct smtpd_nets *l, const char *s, size_t n,
                    char *err, size_t errlen)
{
	char q[SMTPD_NET_TEXT_MAX * 4 + 8], text[SMTPD_NET_TEXT_MAX + 1];
	log_escape(q, sizeof q, s, n);
	if (n == 0) {
		snprintf(err, errlen, "empty network in list");
		return -EINVAL;
	}
	if (n > SMTPD_NET_TEXT_MAX) {
		snprintf(err, errlen, "not a network: '%s'", q);
		return -EINVAL;
	}
	memcpy(text, s, n);
	text[n] = '\0';
	char *slash = strchr(text, '/');
	const char *plen = NULL;
	if (slash) {
		*slash = '\0';
		plen = slash + 1;
	}
	struct smtpd_net e = {0};
	bool v6 = strchr(text, ':') != NULL;
	e.family = v6 ? AF_INET6 : AF_INET;
	if (inet_pton(e.family, text, e.addr) != 1) {
		snprintf(err, errlen, "not an IP%s address: '%s'", v6 ? "v6" : "v4",
		         q);
		return -EINVAL;
	}
	unsigned max = v6 ? 128 : 32;
	e.prefix = max;
	if (plen) {
		size_t k = strlen(plen);
		bool ok = k >= 1 && k <= 3 && (k == 1 || plen[0] != '0');
		unsigned v = 0;
		for (size_t i = 0; ok && i < k; i++) {
			ok = plen[i] >= '0' && plen[i] <= '9';
			v = v * 10 + (unsigned)(plen[i] - '0');
		}
		if (!ok || v > max) {
			snprintf(err, errlen, "bad prefix length in '%s' (expected "
			         "0-%u)", q, max);
			return -EINVAL;
		}
		e.prefix = v;
	}
	if (!host_bits_zero(e.addr, v6 ? 16 : 4, e.prefix)) {
		struct smtpd_net fixed = e;
		for (size_t i = 0; i < 16; i++) {
			unsigned keep = e.prefix > i * 8 ? e.prefix - (unsigned)i * 8
			                                 : 0;
			if (keep < 8)
				fixed.addr[i] &= (uint8_t)(0xff00u >> keep);
		}
		char fx[SMTPD_NET_TEXT_MAX];
		net_text(&fixed, fx, sizeof fx);
		snprintf(err, errlen, "host bits set in '%s' (the network is %s)",
		         q, fx);
		return -EINVAL;
	}
	/* ::ffff:a.b.c.d/96+ names IPv4 addresses: store it as such, so it
	 * matches clients on IPv4 sockets and on dual-stack ones alike. */
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	                                   0xff, 0xff};
	if (v6 && e.prefix >= 96 && memcmp(e.addr, mapped, 12) == 0) {
		memmove(e.addr, e.addr + 12, 4);
		memset(e.addr + 4, 0, 12);
		e.family = AF_INET;
		e.prefix -= 96;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		struct smtpd_net *nv = realloc(l->v, cap * sizeof *nv);
		if (!nv) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = e;
	return 0;
}

int smtpd_nets_parse(const char *list, struct smtpd_nets **out, char *err,
                     size_t errlen)
{
	struct smtpd_nets *l = calloc(1, sizeof *l);
	if (!l) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	const char *p = list ? list : "";
	bool blank = true;
	for (const char *t = p; *t; t++)
		blank &= is_blank(*t);
	while (!blank) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		const char *s = p;
		while (n && is_blank(*s))
			s++, n--;
		while (n && is_blank(s[n - 1]))
			n--;
		int r = net_item(l, s, n, err, errlen);
		if (r < 0) {
			smtpd_nets_free(l);
			return r;
		}
		if (!comma)
			break;
		p = comma + 1;
	}
	*out = l;
	return 0;
}

void smtpd_nets_free(struct smtpd_nets *n)
{
	if (!n)
		return;
	free(n->v);
	free(n);
}

size_t smtpd_nets_count(const struct smtpd_nets *n)
{
	return n ? n->n : 0;
}

bool smtpd_nets_match(const struct smtpd_nets *n, const struct sockaddr *sa,
                      char *which, size_t whichlen)
{
	if (!n || n->n == 0 || !sa)
		return false;
	int family;
	const uint8_t *a;
	if (sa->sa_family == AF_INET) {
		family = AF_INET;
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 =
			&((const struct sockaddr_in6 *)sa)->sin6_addr;
		/* A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d. */
		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			family = AF_INET;
			a = a6->s6_addr + 12;
		} else {
			family = AF_INET6;
			a = a6->s6_addr;
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < n->n; i++) {
		const struct smtpd_net *e = &n->v[i];
		if (e->family != family || !prefix_match(a, e->addr, e->prefix))
			continue;
		if (which && whichlen)
			net_text(e, which, whichlen);
		return true;
	}
	return false;
}

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
	if ((r = smtpd_nets_parse(c->deny_networks, &p->deny, why,
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
	smtpd_nets_free(r->deny);
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
	char net[SMTPD_NET_TEXT_MAX];
	if (smtpd_nets_match(p->deny, (const struct sockaddr *)&rs->sa, net,
	                     sizeof net)) {
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
