/*
 * deliver/deliver_direct.c - Routing for delivery = direct (issue 9 §3):
 * each recipient domain is looked up through dns/ (MX, then A/AAAA of
 * each MX host), its answer ordered by deliver_mx.c, and the domain is
 * keyed to a destination by its MX host set and effective TLS level, so
 * that domains served by the same MX hosts share one destination (as
 * KumoMTA's "site") and an encrypt/verify domain never shares one with a
 * "may" domain. Owns the table of domains (struct deliver_domain): the
 * lookups in flight, and for a while after, their outcome: a destination
 * key and its try list, or the reply that bounces (null MX 5.1.10,
 * NXDOMAIN 5.1.2, loop 5.4.6, refused literal 5.4.4) or defers (a failed
 * lookup 4.4.3, refused addresses 4.4.4) its recipients.
 *
 * Routing is two-stage: deliver_route() answers -EAGAIN while a domain is
 * being resolved (the recipient waits in the index), and the scheduler is
 * woken when the lookup is over. A lookup outlives nothing: when its
 * domain is forgotten (stop), its queries are cancelled (dns_cancel) and
 * complete into nothing.
 */
#include "deliver/deliver_int.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/idna.h"
#include "common/log.h"
#include "common/smtp.h"
#include "dns/dns.h"

/* How long an outcome is kept. dns/ caches by TTL; this table only saves
 * re-doing the ordering and the address lookups for every message. A
 * failed lookup is kept shortly so the next retry asks again. */
#define DOMAIN_OK_MS 60000
#define DOMAIN_PERM_MS 60000
#define DOMAIN_TEMP_MS 1000
/* Domains remembered at most (the oldest expired ones go first). */
#define DOMAINS_MAX 10000

enum dom_state { DOM_RESOLVING, DOM_READY, DOM_FAILED };

struct dom_host {
	struct deliver_domain *dom;
	char name[SMTP_DOMAIN_MAX + 1];
	uint16_t pref;
	struct dns_req *q[2];           /* A, AAAA */
	struct deliver_addr addrs[DNS_RR_MAX];
	size_t naddrs;
	bool temp;                      /* a lookup failed temporarily */
};

struct deliver_domain {
	struct deliver_domain *next;
	struct deliver *d;
	char name[SMTP_DOMAIN_MAX + 1];
	enum dom_state st;
	uint64_t expires;               /* uv_now() ms; READY and FAILED */
	struct dns_req *qmx;
	struct dom_host hosts[DELIVER_MX_HOSTS_MAX];
	size_t nhosts;
	unsigned pending;               /* address queries in flight */
	/* READY */
	char key[DELIVER_DEST_KEY_MAX];
	int tls;                        /* deliver_tlspol.h */
	struct deliver_dest_addr try[DELIVER_MX_ADDR_LIMIT];
	size_t ntry;
	/* FAILED */
	struct deliver_reply fail;
};

static uint32_t rnd32(void *ctx)
{
	(void)ctx;
	return (uint32_t)random() ^ ((uint32_t)random() << 16);
}

/* The reply of table entry id, its %s arguments filled in. */
static void table_reply(struct deliver_reply *r, enum smtp_reply_id id,
                        const char *a1, const char *a2)
{
	const struct smtp_reply_def *def = &smtp_replies[id];
	char text[DELIVER_REPLY_TEXT_MAX - 32], t[DELIVER_REPLY_TEXT_MAX];
	/* The table's formats take at most two strings. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(text, sizeof text, def->text, a1 ? a1 : "", a2 ? a2 : "");
#pragma GCC diagnostic pop
	snprintf(t, sizeof t, "%u %.8s %s", def->code, def->enh, text);
	deliver_reply_make(r, def->code, t);
}

static void dom_cancel(struct deliver_domain *dm)
{
	if (dm->qmx)
		dns_cancel(dm->qmx);
	dm->qmx = NULL;
	for (size_t i = 0; i < dm->nhosts; i++)
		for (int k = 0; k < 2; k++) {
			if (dm->hosts[i].q[k])
				dns_cancel(dm->hosts[i].q[k]);
			dm->hosts[i].q[k] = NULL;
		}
	dm->pending = 0;
}

static void dom_fail(struct deliver_domain *dm, enum smtp_reply_id id,
                     const char *a1, const char *a2)
{
	struct deliver *d = dm->d;
	dom_cancel(dm);
	dm->st = DOM_FAILED;
	table_reply(&dm->fail, id, a1, a2);
	dm->expires = uv_now(d->loop) + (dm->fail.code >= 500 ? DOMAIN_PERM_MS
	                                                      : DOMAIN_TEMP_MS);
	char esc[DELIVER_REPLY_TEXT_MAX * 4];
	log_escape(esc, sizeof esc, dm->fail.text, strlen(dm->fail.text));
	log_info("direct: %s: %s", dm->name, esc);
	deliver_arm(d, 0);
}

/* The destination key: the MX host names, sorted (the order of one
 * answer is shuffled within a preference), and the TLS level. A set too
 * long for the key is named by a hash of it. */
static void dom_key(struct deliver_domain *dm, const char *lit)
{
	char set[4096] = "";
	size_t len = 0;
	if (lit) {
		snprintf(set, sizeof set, "%s", lit);
	} else {
		const char *names[DELIVER_MX_HOSTS_MAX];
		size_t n = 0;
		for (size_t i = 0; i < dm->nhosts; i++)
			names[n++] = dm->hosts[i].name;
		for (size_t i = 1; i < n; i++)      /* insertion sort: n <= 16 */
			for (size_t k = i; k > 0 && strcmp(names[k - 1], names[k]) > 0;
			     k--) {
				const char *t = names[k];
				names[k] = names[k - 1];
				names[k - 1] = t;
			}
		for (size_t i = 0; i < n && len < sizeof set; i++)
			len += (size_t)snprintf(set + len, sizeof set - len, "%s%s",
			                        i ? "," : "", names[i]);
	}
	const char *lvl = deliver_tlspol_name(dm->tls);
	int w = snprintf(dm->key, sizeof dm->key, "%s:%s/%s", lit ? "literal" : "mx",
	                 set, lvl);
	if (w < 0 || (size_t)w >= sizeof dm->key) {
		uint64_t h = 1469598103934665603ull;
		for (const char *p = set; *p; p++)
			h = (h ^ (unsigned char)*p) * 1099511628211ull;
		snprintf(dm->key, sizeof dm->key, "mx:#%016" PRIx64 "/%s", h, lvl);
	}
}

static void dom_ready(struct deliver_domain *dm)
{
	struct deliver *d = dm->d;
	struct deliver_cfg *g = d->cfg;
	struct deliver_mx_target t[DELIVER_MX_HOSTS_MAX];
	bool temp = false;
	for (size_t i = 0; i < dm->nhosts; i++) {
		t[i].host = dm->hosts[i].name;
		t[i].pref = dm->hosts[i].pref;
		t[i].addrs = dm->hosts[i].addrs;
		t[i].naddrs = dm->hosts[i].naddrs;
		temp |= dm->hosts[i].temp;
	}
	struct deliver_self self = {g->self, g->nself, NULL, 0};
	struct deliver_try_opts o = {
		.ip_pref = g->ip_pref,
		.v6_first = d->v6_first,   /* auto: deliver_direct_check_v6 */
		.allow_private = g->mx_allow_private,
		.port = g->mx_port,
		.self = &self,
		.limit = DELIVER_MX_ADDR_LIMIT,
	};
	struct deliver_try tr[DELIVER_MX_ADDR_LIMIT];
	struct deliver_try_report rep = {0};
	size_t n = 0;
	enum deliver_try_verdict v = deliver_mx_try_list(t, dm->nhosts, &o, tr,
	                                                 &n, &rep);
	switch (v) {
	case DELIVER_TRY_OK:
		break;
	case DELIVER_TRY_LOOP:
		dom_fail(dm, SMTP_R_DLV_LOOP, NULL, NULL);
		return;
	case DELIVER_TRY_REFUSED: {
		char a[64], why[256];
		snprintf(why, sizeof why, "%s %s of %s", rep.reason ? rep.reason
		         : "refused", deliver_addr_str(&rep.reason_addr, a, sizeof a),
		         rep.reason_target < dm->nhosts ?
		         dm->hosts[rep.reason_target].name : "?");
		dom_fail(dm, SMTP_R_DLV_MX_REFUSED, why, NULL);
		return;
	}
	case DELIVER_TRY_EMPTY:
		if (temp)
			dom_fail(dm, SMTP_R_DLV_DNS_TEMP, dm->name,
			         "address of the MX hosts");
		else
			dom_fail(dm, SMTP_R_DLV_NO_MX_ADDR, dm->name, NULL);
		return;
	}
	dm->ntry = n;
	for (size_t i = 0; i < n; i++) {
		dm->try[i].addr = tr[i].addr;
		snprintf(dm->try[i].host, sizeof dm->try[i].host, "%s",
		         dm->hosts[tr[i].target].name);
	}
	dom_key(dm, NULL);
	dm->st = DOM_READY;
	dm->expires = uv_now(d->loop) + DOMAIN_OK_MS;
	char a[64];
	log_info("direct: %s: %zu MX host(s), %zu address(es) to try, first "
	         "%s[%s], destination %s", dm->name, dm->nhosts, n,
	         dm->try[0].host, deliver_addr_str(&dm->try[0].addr, a, sizeof a),
	         dm->key);
	deliver_arm(d, 0);
}

static void addr_cb(void *arg, const struct dns_result *res)
{
	struct dom_host *h = arg;
	struct deliver_domain *dm = h->dom;
	int k = res->qtype == DNS_T_AAAA;
	h->q[k] = NULL;
	if (res->status == DNS_OK) {
		for (size_t i = 0; i < res->nrr && h->naddrs < DNS_RR_MAX; i++) {
			const struct dns_rr *rr = &res->rr[i];
			if (rr->type != DNS_T_A && rr->type != DNS_T_AAAA)
				continue;
			struct deliver_addr *a = &h->addrs[h->naddrs++];
			memset(a, 0, sizeof *a);
			a->family = rr->addr.family;
			memcpy(a->a, rr->addr.a, rr->addr.family == AF_INET ? 4 : 16);
		}
	} else if (res->status != DNS_NODATA && res->status != DNS_NXDOMAIN) {
		h->temp = true;
	}
	if (--dm->pending == 0)
		dom_ready(dm);
}

static bool want_family(enum conf_ip_pref p, int k)
{
	return p == CONF_IP_IPV4 ? k == 0 : p == CONF_IP_IPV6 ? k == 1 : true;
}

static void mx_cb(void *arg, const struct dns_result *res)
{
	struct deliver_domain *dm = arg;
	struct deliver *d = dm->d;
	dm->qmx = NULL;
	struct deliver_mx mx[DELIVER_MX_INPUT_MAX];
	size_t n = 0;
	switch (res->status) {
	case DNS_OK:
		for (size_t i = 0; i < res->nrr && n < DELIVER_MX_INPUT_MAX; i++) {
			if (res->rr[i].type != DNS_T_MX)
				continue;
			mx[n].pref = res->rr[i].pref;
			snprintf(mx[n].host, sizeof mx[n].host, "%s",
			         res->rr[i].name ? res->rr[i].name : "");
			n++;
		}
		switch (deliver_mx_order(mx, &n, rnd32, NULL)) {
		case DELIVER_MX_NULL:
			dom_fail(dm, SMTP_R_DLV_NULL_MX, NULL, NULL);
			return;
		case DELIVER_MX_NONE:
			dom_fail(dm, SMTP_R_DLV_NO_MX_ADDR, dm->name, NULL);
			return;
		case DELIVER_MX_HOSTS:
			break;
		}
		break;
	case DNS_NODATA:
		/* RFC 5321 §5.1: the implicit MX, only when the domain exists
		 * without MX records - never on a failed lookup. */
		if (deliver_mx_implicit(dm->name, &mx[0]) < 0) {
			dom_fail(dm, SMTP_R_DLV_NXDOMAIN, dm->name, NULL);
			return;
		}
		n = 1;
		break;
	case DNS_NXDOMAIN:
		dom_fail(dm, SMTP_R_DLV_NXDOMAIN, dm->name, NULL);
		return;
	case DNS_BADNAME:
		dom_fail(dm, SMTP_R_DLV_NXDOMAIN, dm->name, NULL);
		return;
	default:
		dom_fail(dm, SMTP_R_DLV_DNS_TEMP, dm->name,
		         dns_status_names[res->status]);
		return;
	}
	dm->nhosts = 0;
	for (size_t i = 0; i < n && dm->nhosts < DELIVER_MX_HOSTS_MAX; i++) {
		struct dom_host *h = &dm->hosts[dm->nhosts++];
		memset(h, 0, sizeof *h);
		h->dom = dm;
		h->pref = mx[i].pref;
		snprintf(h->name, sizeof h->name, "%s", mx[i].host);
	}
	/* Every query first, counted, so that a callback never sees the
	 * count reach zero before they are all asked (dns_query never calls
	 * back before it returns, but a refusal to ask is counted here). */
	dm->pending = 1;
	for (size_t i = 0; i < dm->nhosts; i++) {
		struct dom_host *h = &dm->hosts[i];
		for (int k = 0; k < 2; k++) {
			if (!want_family(d->cfg->ip_pref, k))
				continue;
			enum dns_status err;
			h->q[k] = dns_query(d->dns, h->name, k ? DNS_T_AAAA : DNS_T_A,
			                    addr_cb, h, &err);
			if (h->q[k])
				dm->pending++;
			else if (err != DNS_BADNAME)
				h->temp = true;
		}
	}
	if (--dm->pending == 0)
		dom_ready(dm);
}

/* Lookups of dm in flight (a first resolution or a refresh). */
static bool dom_busy(const struct deliver_domain *dm)
{
	return dm->qmx || dm->pending;
}

static void dom_free(struct deliver_domain *dm)
{
	dom_cancel(dm);
	free(dm);
}

void deliver_direct_sweep(struct deliver *d, uint64_t now, bool all)
{
	if (all && d->v6q) {
		dns_cancel(d->v6q);
		d->v6q = NULL;
	}
	for (struct deliver_domain **p = &d->domains; *p;) {
		struct deliver_domain *dm = *p;
		/* A READY entry is kept a while past its expiry: it is
		 * refreshed on use, and serves meanwhile. */
		uint64_t grace = dm->st == DOM_READY ? DOMAIN_OK_MS : 0;
		if (all || (!dom_busy(dm) && dm->st != DOM_RESOLVING &&
		            dm->expires + grace <= now)) {
			*p = dm->next;
			d->ndomains--;
			dom_free(dm);
		} else {
			p = &dm->next;
		}
	}
}

/* A recipient domain, lower case; an internationalized one (SMTPUTF8)
 * as its A-labels, the form DNS knows it by (RFC 6531 §3.2; Postfix does
 * the same). "": none (a bare local part). -EILSEQ, -EINVAL,
 * -ENAMETOOLONG: not a domain name (idna_to_ascii); out has the domain
 * as given. */
static int rcpt_domain(const char *rcpt, char *out, size_t outlen)
{
	const char *at = strrchr(rcpt, '@');
	size_t i = 0;
	if (at)
		for (at++; *at && i + 1 < outlen; at++)
			out[i++] = (char)tolower((unsigned char)*at);
	out[i] = '\0';
	if (i && out[i - 1] == '.')
		out[--i] = '\0';
	if (!idna_is_8bit(out, i) || out[0] == '[')
		return 0;
	char a[IDNA_NAME_MAX + 1];
	int r = idna_to_ascii(out, i, a, sizeof a);
	if (r == 0)
		snprintf(out, outlen, "%s", a);
	return r;
}

static struct deliver_domain *dom_find(struct deliver *d, const char *name)
{
	for (struct deliver_domain *dm = d->domains; dm; dm = dm->next)
		if (strcmp(dm->name, name) == 0)
			return dm;
	return NULL;
}

/* (Re)starts the lookup of dm: an address literal is settled at once. */
static void dom_start(struct deliver_domain *dm)
{
	struct deliver *d = dm->d;
	struct deliver_cfg *g = d->cfg;
	/* A refresh of a READY domain keeps serving its key and try list
	 * until the new answer replaces them. */
	bool refresh = dm->st == DOM_READY;
	memset(&dm->fail, 0, sizeof dm->fail);
	dm->nhosts = 0;
	if (!refresh) {
		dm->ntry = 0;
		dm->key[0] = '\0';
	}
	dm->tls = deliver_tlspol_level(g->tls_policy, dm->name);
	if (dm->name[0] == '[') {
		struct deliver_self self = {g->self, g->nself, NULL, 0};
		struct deliver_addr a;
		const char *why = NULL;
		switch (deliver_mx_literal(dm->name, g->mx_allow_private, &self,
		                           g->mx_port, &a, &why)) {
		case DELIVER_LIT_OK:
			dm->ntry = 1;
			dm->try[0].addr = a;
			deliver_addr_str(&a, dm->try[0].host, sizeof dm->try[0].host);
			dom_key(dm, dm->name);
			dm->st = DOM_READY;
			dm->expires = uv_now(d->loop) + DOMAIN_OK_MS;
			return;
		case DELIVER_LIT_LOOP:
			dom_fail(dm, SMTP_R_DLV_LOOP, NULL, NULL);
			return;
		case DELIVER_LIT_REFUSED:
			dom_fail(dm, SMTP_R_DLV_LITERAL_REFUSED,
			         why ? why : "refused", NULL);
			return;
		case DELIVER_LIT_NONE:
			dom_fail(dm, SMTP_R_DLV_NXDOMAIN, dm->name, NULL);
			return;
		}
	}
	if (!d->dns) {
		dom_fail(dm, SMTP_R_DLV_DNS_TEMP, dm->name, "no resolver");
		return;
	}
	if (!refresh)
		dm->st = DOM_RESOLVING;
	enum dns_status err;
	dm->qmx = dns_query(d->dns, dm->name, DNS_T_MX, mx_cb, dm, &err);
	if (!dm->qmx) {
		if (err == DNS_BADNAME)
			dom_fail(dm, SMTP_R_DLV_NXDOMAIN, dm->name, NULL);
		else
			dom_fail(dm, SMTP_R_DLV_DNS_TEMP, dm->name,
			         dns_status_names[err]);
	}
}

int deliver_direct_route(struct deliver *d, const char *rcpt, char *key,
                         size_t keylen, struct deliver_reply *fail)
{
	char name[SMTP_DOMAIN_MAX + 1];
	int bad = rcpt_domain(rcpt, name, sizeof name);
	uint64_t now = uv_now(d->loop);
	struct deliver_domain *dm = dom_find(d, name);
	if (dm && dm->st != DOM_RESOLVING && !dom_busy(dm) &&
	    dm->expires <= now) {
		dom_start(dm);   /* expired: again (READY serves meanwhile) */
	} else if (!dm) {
		if (d->ndomains >= DOMAINS_MAX)
			deliver_direct_sweep(d, now, false);
		if (d->ndomains >= DOMAINS_MAX)
			return -EAGAIN;   /* full of live lookups: later */
		dm = calloc(1, sizeof *dm);
		if (!dm)
			return -ENOMEM;
		dm->d = d;
		snprintf(dm->name, sizeof dm->name, "%s", name);
		dm->next = d->domains;
		d->domains = dm;
		d->ndomains++;
		if (!name[0]) {
			dom_fail(dm, SMTP_R_DLV_NXDOMAIN, "(no domain)", NULL);
		} else if (bad) {
			dom_fail(dm, SMTP_R_DLV_BAD_DOMAIN, name,
			         bad == -EILSEQ ? "a character no domain name may "
			         "have, or not UTF-8" : bad == -ENAMETOOLONG ?
			         "a label or the name too long" :
			         "an empty label, or a hyphen where none may be");
		} else {
			dom_start(dm);
		}
	}
	switch (dm->st) {
	case DOM_RESOLVING:
		return -EAGAIN;
	case DOM_FAILED:
		*fail = dm->fail;
		return -EPROTO;
	case DOM_READY:
		break;
	}
	int n = snprintf(key, keylen, "%s", dm->key);
	return n < 0 || (size_t)n >= keylen ? -ENAMETOOLONG : 0;
}

/* destination_policy_file's limits for dst: matched by its MX host
 * names (dm's, or its try list's) and each domain routed to it (dm's
 * name included); the smallest concurrency and rates win. */
static void dest_limits(struct deliver *d, struct deliver_dest *dst,
                        const struct deliver_domain *dm)
{
	const char *names[DELIVER_MX_HOSTS_MAX + DELIVER_MX_ADDR_LIMIT +
	                  DELIVER_DEST_DOMAINS_MAX + 1];
	size_t n = 0;
	if (dm) {
		for (size_t i = 0; i < dm->nhosts; i++)
			names[n++] = dm->hosts[i].name;
		names[n++] = dm->name;
	} else {
		for (size_t i = 0; i < dst->naddrs; i++)
			names[n++] = dst->addrs[i].host;
	}
	for (size_t i = 0; i < dst->ndomains; i++)
		names[n++] = dst->domains[i];
	unsigned conc, pm, ph;
	if (!deliver_tlspol_dest_limits(d->cfg->dest_policy, names, n,
	                                d->cfg->concurrency, &conc, &pm, &ph))
		return;
	if (dm == NULL && conc == dst->concurrency &&
	    pm == dst->rate_min.cap && ph == dst->rate_hour.cap)
		return;   /* nothing new */
	dst->concurrency = conc;
	deliver_dest_set_rates(dst, pm, ph);
	log_info("destination %s: destination_policy_file: concurrency %u, "
	         "rate %u/min %u/hour", dst->name, dst->concurrency, pm, ph);
}

void deliver_direct_dest_init(struct deliver *d, struct deliver_dest *dst)
{
	dst->direct = true;
	for (struct deliver_domain *dm = d->domains; dm; dm = dm->next) {
		if (dm->st != DOM_READY || strcmp(dm->key, dst->key) != 0)
			continue;
		dst->tls_level = dm->tls;
		dst->naddrs = dm->ntry;
		dst->addr_pos = 0;
		memcpy(dst->addrs, dm->try, dm->ntry * sizeof *dm->try);
		/* destination_policy_file: matched by the MX hosts and every
		 * domain routed here (deliver_direct_dest_note). */
		dest_limits(d, dst, dm);
		return;
	}
}

bool deliver_direct_key_known(struct deliver *d, const char *key,
                              char *domain, size_t domlen)
{
	for (struct deliver_domain *dm = d->domains; dm; dm = dm->next)
		if (dm->st == DOM_READY && strcmp(dm->key, key) == 0) {
			snprintf(domain, domlen, "%s", dm->name);
			return true;
		}
	return false;
}

bool deliver_dest_has_domain(const struct deliver_dest *dst,
                             const char *domain)
{
	for (size_t i = 0; i < dst->ndomains; i++)
		if (strcmp(dst->domains[i], domain) == 0)
			return true;
	return false;
}

void deliver_direct_dest_note(struct deliver *d, struct deliver_dest *dst,
                              const char *rcpt)
{
	char name[SMTP_DOMAIN_MAX + 1];
	rcpt_domain(rcpt, name, sizeof name);
	if (!dst->direct || !name[0] || deliver_dest_has_domain(dst, name) ||
	    dst->ndomains >= DELIVER_DEST_DOMAINS_MAX)
		return;
	if (!dst->domains) {
		dst->domains = calloc(DELIVER_DEST_DOMAINS_MAX,
		                      sizeof *dst->domains);
		if (!dst->domains)
			return;
	}
	snprintf(dst->domains[dst->ndomains++], sizeof *dst->domains, "%s",
	         name);
	/* A domain that shares the MX set of another brings its own
	 * destination_policy_file entry; where several apply the most
	 * restrictive concurrency and rates win. */
	if (d->cfg->dest_policy && dst->ndomains > 1)
		dest_limits(d, dst, NULL);
}

/* ---- the smarthost's name (issue 9 §2: no getaddrinfo in delivery) ---- */

static void host_cb(void *arg, const struct dns_result *res)
{
	struct deliver_dest *dst = arg;
	struct deliver *d = dst->d;
	int k = res->qtype == DNS_T_AAAA;
	dst->hq[k] = NULL;
	if (res->status == DNS_OK) {
		/* A answers first in the list, whichever came back first. */
		struct deliver_dest_addr tmp[DELIVER_MX_ADDR_LIMIT];
		size_t n = 0;
		if (k)
			for (size_t i = 0; i < dst->naddrs; i++)
				tmp[n++] = dst->addrs[i];
		for (size_t i = 0; i < res->nrr && n < DELIVER_MX_ADDR_LIMIT; i++) {
			const struct dns_rr *rr = &res->rr[i];
			if (rr->type != DNS_T_A && rr->type != DNS_T_AAAA)
				continue;
			memset(&tmp[n], 0, sizeof tmp[n]);
			tmp[n].addr.family = rr->addr.family;
			memcpy(tmp[n].addr.a, rr->addr.a,
			       rr->addr.family == AF_INET ? 4 : 16);
			snprintf(tmp[n].host, sizeof tmp[n].host, "%s", d->cfg->host);
			n++;
		}
		if (!k)
			for (size_t i = 0; i < dst->naddrs && n < DELIVER_MX_ADDR_LIMIT;
			     i++)
				tmp[n++] = dst->addrs[i];
		memcpy(dst->addrs, tmp, n * sizeof *tmp);
		dst->naddrs = n;
	} else {
		snprintf(dst->last_error, sizeof dst->last_error,
		         "cannot resolve %s (%s): %s", d->cfg->host,
		         k ? "AAAA" : "A", dns_status_names[res->status]);
	}
	if (--dst->hpending > 0)
		return;
	dst->hresolved = true;
	dst->addr_pos = 0;
	if (dst->naddrs == 0) {
		dst->hresolved = false;   /* asked again after the pause */
		deliver_dest_pause(dst, false, dst->last_error[0] ? dst->last_error
		                   : "the smarthost's name has no address");
	} else {
		char a[64];
		log_info("smarthost %s: %zu address(es), first %s", dst->name,
		         dst->naddrs, deliver_addr_str(&dst->addrs[0].addr, a,
		                                       sizeof a));
	}
	deliver_arm(d, 0);
}

bool deliver_direct_host_ready(struct deliver *d, struct deliver_dest *dst)
{
	struct deliver_cfg *g = d->cfg;
	if (dst->direct || dst->hresolved)
		return true;
	unsigned char b[16];
	if (inet_pton(AF_INET, g->host, b) == 1 ||
	    inet_pton(AF_INET6, g->host, b) == 1)
		return true;   /* a literal: deliver_session.c connects to it */
	if (dst->hpending)
		return false;
	if (!d->dns) {
		deliver_dest_pause(dst, false, "no resolver");
		return false;
	}
	dst->naddrs = 0;
	dst->last_error[0] = '\0';
	dst->hpending = 1;
	for (int k = 0; k < 2; k++) {
		enum dns_status err;
		dst->hq[k] = dns_query(d->dns, g->host, k ? DNS_T_AAAA : DNS_T_A,
		                       host_cb, dst, &err);
		if (dst->hq[k])
			dst->hpending++;
		else
			snprintf(dst->last_error, sizeof dst->last_error,
			         "cannot resolve %s: %s", g->host, dns_status_names[err]);
	}
	if (--dst->hpending == 0) {
		deliver_dest_pause(dst, false, dst->last_error);
		return false;
	}
	return false;
}

void deliver_direct_dest_free(struct deliver_dest *dst)
{
	for (int k = 0; k < 2; k++) {
		if (dst->hq[k])
			dns_cancel(dst->hq[k]);
		dst->hq[k] = NULL;
	}
	dst->hpending = 0;
}

/* ---- ip_preference = auto: the IPv6 source's FCrDNS (issue 9 §3) ------- */

static void v6_done(struct deliver *d, bool ok, const char *why)
{
	char a[64];
	deliver_addr_str(&d->v6src, a, sizeof a);
	if (d->v6_first != ok)
		deliver_direct_sweep(d, UINT64_MAX, false);   /* re-order */
	d->v6_first = ok;
	if (ok)
		log_info("ip_preference auto: IPv6 first (%s has forward-confirmed "
		         "reverse DNS %s)", a, d->v6name);
	else
		log_info("ip_preference auto: IPv4 first (%s: %s)", a, why);
}

static void v6_aaaa_cb(void *arg, const struct dns_result *res)
{
	struct deliver *d = arg;
	d->v6q = NULL;
	if (res->status == DNS_OK)
		for (size_t i = 0; i < res->nrr; i++)
			if (res->rr[i].type == DNS_T_AAAA &&
			    memcmp(res->rr[i].addr.a, d->v6src.a, 16) == 0) {
				v6_done(d, true, NULL);
				return;
			}
	char why[400];
	snprintf(why, sizeof why, "%s has no AAAA record naming it back (%s)",
	         d->v6name, dns_status_names[res->status]);
	v6_done(d, false, why);
}

static void v6_ptr_cb(void *arg, const struct dns_result *res)
{
	struct deliver *d = arg;
	d->v6q = NULL;
	if (res->status != DNS_OK || !res->nrr || !res->rr[0].name) {
		char why[128];
		snprintf(why, sizeof why, "no PTR record (%s)",
		         dns_status_names[res->status]);
		v6_done(d, false, why);
		return;
	}
	snprintf(d->v6name, sizeof d->v6name, "%s", res->rr[0].name);
	if (strcasecmp(d->v6name, d->cfg->hostname) != 0) {
		char why[600];
		snprintf(why, sizeof why, "its PTR names %s, not hostname %s",
		         d->v6name, d->cfg->hostname);
		v6_done(d, false, why);
		return;
	}
	enum dns_status err;
	d->v6q = dns_query(d->dns, d->v6name, DNS_T_AAAA, v6_aaaa_cb, d, &err);
	if (!d->v6q)
		v6_done(d, false, dns_status_names[err]);
}

void deliver_direct_check_v6(struct deliver *d)
{
	struct deliver_cfg *g = d->cfg;
	if (d->v6q) {
		dns_cancel(d->v6q);
		d->v6q = NULL;
	}
	d->v6_first = false;
	if (g->mode != CONF_DELIVERY_DIRECT || g->ip_pref != CONF_IP_AUTO ||
	    !d->dns)
		return;
	memset(&d->v6src, 0, sizeof d->v6src);
	d->v6src.family = AF_INET6;
	if (g->bind6) {
		if (inet_pton(AF_INET6, g->bind6, d->v6src.a) != 1)
			return;
	} else {
		/* The address the kernel would pick toward a global
		 * destination: a UDP connect sends nothing. */
		struct sockaddr_in6 to = {.sin6_family = AF_INET6,
		                          .sin6_port = htons(53)};
		inet_pton(AF_INET6, "2001:4860:4860::8888", &to.sin6_addr);
		int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in6 me;
		socklen_t len = sizeof me;
		if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0 ||
		    getsockname(fd, (struct sockaddr *)&me, &len) < 0) {
			if (fd >= 0)
				close(fd);
			log_info("ip_preference auto: IPv4 first (no IPv6 route)");
			return;
		}
		close(fd);
		memcpy(d->v6src.a, &me.sin6_addr, 16);
		char a[64];
		log_info("ip_preference auto: IPv6 source %s is the kernel's "
		         "choice; it may be a temporary (privacy) address: set "
		         "smtp_bind_address6 to the one with a PTR record",
		         deliver_addr_str(&d->v6src, a, sizeof a));
	}
	struct dns_addr da = {.family = AF_INET6};
	memcpy(da.a, d->v6src.a, 16);
	char rev[128];
	enum dns_status err;
	if (dns_reverse_name(&da, rev, sizeof rev) < 0)
		return;
	d->v6q = dns_query(d->dns, rev, DNS_T_PTR, v6_ptr_cb, d, &err);
	if (!d->v6q)
		v6_done(d, false, dns_status_names[err]);
}
