/*
 * tools/ctl_checkdns.c - relayctl check-dns DOMAIN: from the relay itself,
 * through dns/ (dns_servers) and the egress path, item by item, what
 * receivers will see: per egress address PTR, forward confirmation and
 * the EHLO name; SPF (dns/spf.h's evaluator) for DOMAIN, the HELO name and
 * the envelope domain; DKIM records against the loaded keys (dkim/
 * dkim_key.h); DMARC (dns/dmarc.h: record, RFC 9989 tree walk,
 * alignment); MX; outbound port 25; DNS blocklists (dnsbl_zones);
 * MTA-STS and TLS-RPT; then a verdict against the Gmail / Yahoo /
 * Outlook sender rules. Each item is OK, WARN, FAIL or INFO with a
 * one-line fix naming the record to publish or change.
 *
 * Exit: 0 nothing FAILed, 1 something did, 2 usage or configuration.
 * Every DNS answer is bounded by dns/ (sizes, deadline); the port 25
 * probe by CD_PROBE_MS and CD_GREETING_MAX.
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/smtp.h"
#include "dkim/dkim_key.h"
#include "dns/dmarc.h"
#include "dns/dns.h"
#include "dns/spf.h"
#include "tools/ctl_dns.h"

#define CD_ADDR_MAX 16
#define CD_RR_MAX 16
#define CD_ITEMS_MAX 2048
/* The port 25 probe: connect and the whole greeting, and its size. */
#define CD_PROBE_MS 10000
#define CD_GREETING_MAX 2048
#define CD_KEYS_MAX 32

enum cd_status { CD_OK, CD_INFO, CD_WARN, CD_FAIL };
static const char *const cd_status_names[] = {"OK", "INFO", "WARN", "FAIL"};

struct cd_item {
	enum cd_status st;
	char *name, *subject, *detail, *fix;
};

/* One DKIM selector to check: the key loaded from a dkim_key line, or
 * only a --selector. */
struct cd_sel {
	char domain[DMARC_NAME_BUF];
	char selector[64];
	struct dkim_key *key;       /* NULL: --selector only, or not loaded */
	char load_err[256];         /* why the key did not load */
};

struct cd {
	struct ctl_ctx *c;
	struct ctl_dns *dns;
	char domain[DMARC_NAME_BUF];
	char hostname[DMARC_NAME_BUF];
	char env_domain[DMARC_NAME_BUF];    /* --mail-from, or DOMAIN */
	struct dns_addr addr[CD_ADDR_MAX];
	size_t naddr;
	struct cd_item *items;
	size_t nitems, cap;
	bool overflow;
	/* For the verdict. */
	bool fcrdns_all;            /* every egress address forward-confirms */
	int spf_pass;               /* 1 pass for every address, 0 not, -1
	                               not evaluated */
	bool dkim_ok;               /* a served record matches a loaded key */
	char dkim_d[DMARC_NAME_BUF];    /* the signing domain, "" if none */
	bool dmarc_ok;              /* one valid record applies */
	bool dmarc_pass;            /* an aligned mechanism passes */
	/* The best MX, for the probe. */
	char mx[DMARC_NAME_BUF];
};

/* ---- items ------------------------------------------------------------ */

static size_t cd_add(struct cd *cd, enum cd_status st, const char *name,
                     const char *subject, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static size_t cd_add(struct cd *cd, enum cd_status st, const char *name,
                     const char *subject, const char *fmt, ...)
{
	if (cd->nitems == cd->cap) {
		size_t cap = cd->cap ? cd->cap * 2 : 64;
		struct cd_item *n = cap <= CD_ITEMS_MAX ?
		        realloc(cd->items, cap * sizeof *n) : NULL;
		if (!n) {
			cd->overflow = true;
			return SIZE_MAX;
		}
		cd->items = n;
		cd->cap = cap;
	}
	struct cd_item *it = &cd->items[cd->nitems];
	memset(it, 0, sizeof *it);
	it->st = st;
	it->name = strdup(name);
	it->subject = strdup(subject ? subject : "");
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&it->detail, fmt, ap) < 0)
		it->detail = NULL;
	va_end(ap);
	if (!it->name || !it->subject || !it->detail) {
		free(it->name);
		free(it->subject);
		free(it->detail);
		cd->overflow = true;
		return SIZE_MAX;
	}
	return cd->nitems++;
}

static void cd_fix(struct cd *cd, size_t i, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void cd_fix(struct cd *cd, size_t i, const char *fmt, ...)
{
	if (i >= cd->nitems)
		return;
	va_list ap;
	va_start(ap, fmt);
	free(cd->items[i].fix);
	if (vasprintf(&cd->items[i].fix, fmt, ap) < 0) {
		cd->items[i].fix = NULL;
		cd->overflow = true;
	}
	va_end(ap);
}

/* Appends to a NUL-terminated buffer of n bytes; cuts what does not fit
 * (these are messages). */
static void cd_cat(char *buf, size_t n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void cd_cat(char *buf, size_t n, const char *fmt, ...)
{
	size_t l = strnlen(buf, n);
	if (l + 1 >= n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + l, n - l, fmt, ap);
	va_end(ap);
}

/* ---- DNS answers, copied out of the callback ---------------------------- */

struct cd_rr {
	uint16_t pref;
	struct dns_addr addr;
	char name[DNS_NAME_MAX + 1];
	char *txt;
	size_t txtlen;
};

struct cd_ans {
	enum dns_status st;
	bool nullmx;
	size_t n;
	struct cd_rr rr[CD_RR_MAX];
};

static void cd_ans_cb(void *arg, const struct dns_result *r)
{
	struct cd_ans *a = arg;
	a->st = r->status;
	a->nullmx = r->nullmx;
	a->n = 0;
	for (size_t i = 0; i < r->nrr && a->n < CD_RR_MAX; i++) {
		const struct dns_rr *s = &r->rr[i];
		if (s->type != r->qtype)
			continue;
		struct cd_rr *d = &a->rr[a->n];
		memset(d, 0, sizeof *d);
		d->pref = s->pref;
		d->addr = s->addr;
		if (s->name)
			snprintf(d->name, sizeof d->name, "%s", s->name);
		if (s->txt) {
			d->txt = malloc(s->txtlen + 1);
			if (!d->txt) {
				a->st = DNS_NOMEM;
				return;
			}
			memcpy(d->txt, s->txt, s->txtlen);
			d->txt[s->txtlen] = '\0';
			d->txtlen = s->txtlen;
		}
		a->n++;
	}
}

static void cd_ans_free(struct cd_ans *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->rr[i].txt);
	a->n = 0;
}

static void cd_q(struct cd *cd, const char *name, enum dns_type t,
                 struct cd_ans *a)
{
	memset(a, 0, sizeof *a);
	a->st = DNS_TEMPFAIL;
	ctl_dns_lookup(cd->dns, name, t, cd_ans_cb, a);
	if (a->st == DNS_OK && a->n == 0 && !a->nullmx)
		a->st = DNS_NODATA;     /* only other types (a CNAME) came */
}

static bool cd_absent(enum dns_status st)
{
	return st == DNS_NXDOMAIN || st == DNS_NODATA;
}

/* ---- addresses ---------------------------------------------------------- */

static bool cd_in4(const uint8_t *a, uint32_t net, unsigned bits)
{
	uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 |
	             (uint32_t)a[2] << 8 | a[3];
	uint32_t mask = bits ? ~0u << (32 - bits) : 0;
	return (v & mask) == (net & mask);
}

/* Global unicast, i.e. what a receiver on the Internet could see. */
static bool cd_global(const struct dns_addr *a)
{
	if (a->family == AF_INET) {
		static const struct { uint32_t net; unsigned bits; } priv[] = {
			{0x00000000, 8}, {0x0a000000, 8}, {0x64400000, 10},
			{0x7f000000, 8}, {0xa9fe0000, 16}, {0xac100000, 12},
			{0xc0000000, 24}, {0xc0000200, 24}, {0xc0a80000, 16},
			{0xc6120000, 15}, {0xc6336400, 24}, {0xcb007100, 24},
			{0xe0000000, 3},
		};
		for (size_t i = 0; i < sizeof priv / sizeof *priv; i++)
			if (cd_in4(a->a, priv[i].net, priv[i].bits))
				return false;
		return true;
	}
	const uint8_t *b = a->a;
	static const uint8_t zero[16];
	if (memcmp(b, zero, 15) == 0)                   /* ::, ::1 */
		return false;
	if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||
	    b[0] == 0xff)                               /* ULA, link, mcast */
		return false;
	if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
		return false;                               /* 2001:db8::/32 */
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
	                                   0xff};
	return memcmp(b, mapped, 12) != 0;
}

static const char *cd_astr(const struct dns_addr *a, char *out, size_t n)
{
	return dns_addr_str(a, out, n);
}

static const char *cd_rrtype(const struct dns_addr *a)
{
	return a->family == AF_INET ? "A" : "AAAA";
}

static int cd_parse_addr(const char *s, struct dns_addr *a)
{
	memset(a, 0, sizeof *a);
	if (inet_pton(AF_INET, s, a->a) == 1) {
		a->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, s, a->a) == 1) {
		a->family = AF_INET6;
		return 0;
	}
	return -EINVAL;
}

static bool cd_same_addr(const struct dns_addr *x, const struct dns_addr *y)
{
	return x->family == y->family &&
	       memcmp(x->a, y->a, x->family == AF_INET ? 4 : 16) == 0;
}

/* ---- egress addresses: PTR, FCrDNS, EHLO name --------------------------- */

static void cd_check_addr(struct cd *cd, const struct dns_addr *a)
{
	char as[64], rev[128];
	size_t it;
	cd_astr(a, as, sizeof as);
	if (!cd_global(a)) {
		it = cd_add(cd, CD_WARN, "address", as, "%s is a private "
		            "address: receivers on the Internet see another one "
		            "(checked as given)", as);
		cd_fix(cd, it, "check the public address: --ip ADDR, or set "
		       "smtp_bind_address%s", a->family == AF_INET ? "" : "6");
	}
	if (dns_reverse_name(a, rev, sizeof rev) < 0) {
		cd->fcrdns_all = false;
		return;
	}
	struct cd_ans ptr;
	cd_q(cd, rev, DNS_T_PTR, &ptr);
	if (cd_absent(ptr.st)) {
		cd->fcrdns_all = false;
		it = cd_add(cd, CD_FAIL, "ptr", as, "no PTR record for %s (%s: %s)",
		            as, rev, dns_status_names[ptr.st]);
		cd_fix(cd, it, "ask the provider of %s to set its reverse DNS "
		       "(PTR) to %s, and publish: %s. %s %s", as, cd->hostname,
		       cd->hostname, cd_rrtype(a), as);
		return;
	}
	if (ptr.st != DNS_OK) {
		cd->fcrdns_all = false;
		it = cd_add(cd, CD_WARN, "ptr", as, "could not look up the PTR of "
		            "%s: %s", as, dns_status_names[ptr.st]);
		cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and run "
		       "check-dns again");
		cd_ans_free(&ptr);
		return;
	}
	char names[512] = "";
	for (size_t i = 0; i < ptr.n; i++) {
		cd_cat(names, sizeof names, "%s%s", i ? ", " : "",
		       ptr.rr[i].name);
	}
	cd_add(cd, CD_OK, "ptr", as, "%s has PTR %s", as, names);

	/* RFC 8601 §3 "iprev" / Gmail: a PTR name whose A (AAAA) records
	 * hold the address. */
	bool confirmed = false, named = false;
	char why[1024] = "";
	const char *confirmer = NULL;
	for (size_t i = 0; i < ptr.n && !confirmed; i++) {
		const char *nm = ptr.rr[i].name;
		if (strcasecmp(nm, cd->hostname) == 0)
			named = true;
		struct cd_ans fw;
		cd_q(cd, nm, a->family == AF_INET ? DNS_T_A : DNS_T_AAAA, &fw);
		size_t l = strlen(why);
		if (fw.st == DNS_OK) {
			char got[256] = "";
			for (size_t k = 0; k < fw.n; k++) {
				if (cd_same_addr(&fw.rr[k].addr, a)) {
					confirmed = true;
					confirmer = nm;
				}
				char s[64];
				cd_cat(got, sizeof got, "%s%s", k ? ", " : "",
				       cd_astr(&fw.rr[k].addr, s, sizeof s));
			}
			if (!confirmed)
				cd_cat(why, sizeof why, "%s%s has %s %s, not %s",
				       l ? "; " : "", nm, cd_rrtype(a), got, as);
		} else {
			cd_cat(why, sizeof why, "%s%s has no %s record (%s)",
			       l ? "; " : "", nm, cd_rrtype(a),
			       dns_status_names[fw.st]);
		}
		cd_ans_free(&fw);
	}
	for (size_t i = 0; i < ptr.n; i++)
		if (strcasecmp(ptr.rr[i].name, cd->hostname) == 0)
			named = true;
	if (confirmed) {
		cd_add(cd, CD_OK, "fcrdns", as, "%s resolves back to %s", confirmer,
		       as);
	} else {
		cd->fcrdns_all = false;
		it = cd_add(cd, CD_FAIL, "fcrdns", as, "the PTR name does not "
		            "resolve back to %s: %s", as, why);
		cd_fix(cd, it, "publish: %s. %s %s (or have the PTR of %s "
		       "changed to a name that has it)", ptr.rr[0].name,
		       cd_rrtype(a), as, as);
	}
	if (named) {
		cd_add(cd, CD_OK, "ptr-hostname", as, "the PTR of %s is relayd's "
		       "hostname %s (its EHLO name)", as, cd->hostname);
	} else {
		it = cd_add(cd, CD_WARN, "ptr-hostname", as, "relayd says EHLO "
		            "%s, but the PTR of %s is %s", cd->hostname, as, names);
		cd_fix(cd, it, "set \"hostname = %s\" in relayd.conf, or have the "
		       "PTR of %s changed to %s", ptr.rr[0].name, as, cd->hostname);
	}
	cd_ans_free(&ptr);
}

/* ---- SPF ---------------------------------------------------------------- */

/* The SPF records (TXT starting "v=spf1") at name: how many; the first
 * one's text into rec. -1: the lookup failed. */
static int cd_spf_records(struct cd *cd, const char *name, char *rec,
                          size_t reclen, enum dns_status *st)
{
	struct cd_ans t;
	cd_q(cd, name, DNS_T_TXT, &t);
	*st = t.st;
	rec[0] = '\0';
	if (t.st != DNS_OK) {
		cd_ans_free(&t);
		return cd_absent(*st) ? 0 : -1;
	}
	int n = 0;
	for (size_t i = 0; i < t.n; i++) {
		const char *x = t.rr[i].txt;
		if (t.rr[i].txtlen >= 6 && strncasecmp(x, "v=spf1", 6) == 0 &&
		    (t.rr[i].txtlen == 6 || x[6] == ' ')) {
			if (n++ == 0)
				snprintf(rec, reclen, "%s", x);
		}
	}
	cd_ans_free(&t);
	return n;
}

/* The record-level items for one SPF domain (`what`: "DOMAIN", "HELO
 * name", "envelope domain"): exactly one record. */
static void cd_check_spf_domain(struct cd *cd, const char *name,
                                const char *what)
{
	char rec[DNS_TXT_MAX + 1];
	enum dns_status st;
	int n = cd_spf_records(cd, name, rec, sizeof rec, &st);
	size_t it;
	char suggest[256] = "v=spf1";
	for (size_t i = 0; i < cd->naddr; i++) {
		char as[64];
		cd_cat(suggest, sizeof suggest, " %s:%s",
		       cd->addr[i].family == AF_INET ? "ip4" : "ip6",
		         cd_astr(&cd->addr[i], as, sizeof as));
	}
	cd_cat(suggest, sizeof suggest, " -all");
	if (n < 0) {
		it = cd_add(cd, CD_WARN, "spf-record", name, "could not look up "
		            "the SPF record of %s (%s): %s", name, what,
		            dns_status_names[st]);
		cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and run "
		       "check-dns again");
	} else if (n == 0) {
		it = cd_add(cd, CD_FAIL, "spf-record", name, "no SPF record at %s "
		            "(%s)", name, what);
		cd_fix(cd, it, "publish: %s. TXT \"%s\"", name, suggest);
	} else if (n > 1) {
		it = cd_add(cd, CD_FAIL, "spf-record", name, "%d SPF records at %s "
		            "(%s): receivers return permerror (RFC 7208 §4.5)", n,
		            name, what);
		cd_fix(cd, it, "merge them into one TXT record starting v=spf1 at "
		       "%s and delete the others", name);
	} else {
		cd_add(cd, CD_OK, "spf-record", name, "one SPF record at %s (%s): "
		       "%s", name, what, rec);
	}
}

/* check_host() (dns/spf.h) run to its end on relayctl's loop; the
 * evaluator bounds it (SPF_DEADLINE_MS). */
struct cd_spf_wait {
	bool done;
	struct spf_result res;
};

static void cd_spf_cb(void *arg, const struct spf_result *r)
{
	struct cd_spf_wait *w = arg;
	w->res = *r;
	w->done = true;
}

static int cd_spf_eval(struct cd *cd, const char *domain, const char *sender,
                       const struct dns_addr *ip, struct spf_result *out)
{
	struct spf_query q = {.ip = *ip, .domain = domain, .sender = sender,
	                      .helo = cd->hostname};
	struct cd_spf_wait *w = calloc(1, sizeof *w);
	if (!w)
		return -ENOMEM;
	struct spf_req *req = spf_check(ctl_dns_dns(cd->dns), &q, cd_spf_cb, w);
	if (!req) {
		free(w);
		return -ENOMEM;
	}
	uv_loop_t *loop = ctl_dns_loop(cd->dns);
	while (!w->done) {
		if (uv_run(loop, UV_RUN_ONCE) == 0 && !w->done) {
			spf_cancel(req);
			free(w);
			return -EIO;
		}
	}
	*out = w->res;
	free(w);
	return 0;
}

/* The one-line fix for an SPF result that is not pass. */
static void cd_spf_fix(struct cd *cd, size_t it, const struct spf_result *r,
                       const char *domain, const struct dns_addr *ip)
{
	char as[64];
	const char *mech = ip->family == AF_INET ? "ip4" : "ip6";
	cd_astr(ip, as, sizeof as);
	if (r->verdict == SPF_PERMERROR) {
		if (strstr(r->why, "lookups") && !strstr(r->why, "void"))
			cd_fix(cd, it, "at most %d terms that cause DNS lookups "
			       "(include, a, mx, ptr, exists, redirect) in all "
			       "(RFC 7208 §4.6.4): replace includes with %s: ranges "
			       "at %s", SPF_LOOKUP_MAX, mech, domain);
		else if (strstr(r->why, "void"))
			cd_fix(cd, it, "remove the terms of %s that point at names "
			       "without records (at most %d, RFC 7208 §4.6.4)",
			       domain, SPF_VOID_MAX);
		else if (strstr(r->why, "loop"))
			cd_fix(cd, it, "remove the include or redirect of %s that "
			       "leads back to itself", domain);
		else if (strstr(r->why, "two SPF") || strstr(r->why, "records"))
			cd_fix(cd, it, "merge the SPF records of %s into one TXT "
			       "record starting v=spf1", domain);
		else
			cd_fix(cd, it, "correct the SPF record of %s", domain);
	} else if (r->verdict == SPF_TEMPERROR) {
		cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and the "
		       "name servers of %s, then run check-dns again", domain);
	} else if (r->verdict == SPF_NONE || !r->record[0]) {
		cd_fix(cd, it, "publish: %s. TXT \"v=spf1 %s:%s -all\"", domain,
		       mech, as);
	} else {
		/* Add the address in front of the record's terms. */
		const char *rest = r->record + 6;
		while (*rest == ' ')
			rest++;
		cd_fix(cd, it, "publish: %s. TXT \"v=spf1 %s:%s %s\" (in place "
		       "of the record now served)", domain, mech, as, rest);
	}
}

/* check_host() for each egress address against `domain` (sender: NULL
 * for the HELO identity). Returns 1 when it passes for every address. */
static int cd_check_spf_eval(struct cd *cd, const char *domain,
                             const char *sender, const char *what)
{
	int all = cd->naddr > 0;
	struct spf_result *r = malloc(sizeof *r);
	if (!r) {
		cd->overflow = true;
		return 0;
	}
	for (size_t i = 0; i < cd->naddr; i++) {
		char as[64], subject[DMARC_NAME_BUF + 70];
		cd_astr(&cd->addr[i], as, sizeof as);
		snprintf(subject, sizeof subject, "%s %s", domain, as);
		if (cd_spf_eval(cd, domain, sender, &cd->addr[i], r) < 0) {
			size_t it = cd_add(cd, CD_WARN, "spf", subject, "could not "
			                   "evaluate SPF of %s for %s", domain, as);
			cd_fix(cd, it, "run check-dns again");
			all = 0;
			continue;
		}
		const char *v = spf_verdict_names[r->verdict];
		if (r->verdict == SPF_PASS) {
			bool via = r->path[0] && strcmp(r->path, r->mechanism) != 0;
			cd_add(cd, CD_OK, "spf", subject, "SPF pass for %s at %s (%s): "
			       "%s%s%s; %u DNS lookups, %u void", as, domain, what,
			       r->mechanism, via ? " via " : "", via ? r->path : "",
			       r->dns_lookups, r->void_lookups);
			continue;
		}
		all = 0;
		size_t it;
		if (r->verdict == SPF_TEMPERROR)
			it = cd_add(cd, CD_WARN, "spf", subject, "SPF temperror for "
			            "%s at %s (%s): %s", as, domain, what,
			            r->why[0] ? r->why : "a DNS lookup failed");
		else if (r->verdict == SPF_PERMERROR || r->verdict == SPF_NONE)
			it = cd_add(cd, CD_FAIL, "spf", subject, "SPF %s for %s at %s "
			            "(%s): %s; %u DNS lookups, %u void", v, as, domain,
			            what, r->why[0] ? r->why : "no SPF record",
			            r->dns_lookups, r->void_lookups);
		else
			it = cd_add(cd, CD_FAIL, "spf", subject, "SPF %s for %s at %s "
			            "(%s): the record does not cover it (%s%s); "
			            "record: %s", v, as, domain, what,
			            r->mechanism[0] ? "decided by " : "no term matched",
			            r->mechanism, r->record);
		cd_spf_fix(cd, it, r, domain, &cd->addr[i]);
	}
	free(r);
	return all;
}

/* ---- DKIM --------------------------------------------------------------- */

/* The domain whose key signs mail From: DOMAIN (dkim/: an exact match, or
 * with dkim_subdomains the closest parent with a key). "" if none. */
static void cd_signing_domain(struct cd *cd, struct dkim_key_spec *specs,
                              size_t nspecs, char out[DMARC_NAME_BUF])
{
	out[0] = '\0';
	size_t best = 0;
	for (size_t i = 0; i < nspecs; i++) {
		const char *d = specs[i].domain;
		size_t dl = strlen(d), fl = strlen(cd->domain);
		bool exact = strcasecmp(d, cd->domain) == 0;
		bool parent = cd->c->conf.dkim_subdomains && fl > dl &&
		              cd->domain[fl - dl - 1] == '.' &&
		              strcasecmp(cd->domain + fl - dl, d) == 0;
		if ((exact || parent) && dl > best && dl < DMARC_NAME_BUF) {
			best = dl;
			memcpy(out, d, dl + 1);
		}
	}
}

static void cd_check_dkim(struct cd *cd)
{
	struct dkim_key_spec specs[CD_KEYS_MAX];
	size_t nspecs = 0;
	const struct conf *cf = &cd->c->conf;
	for (size_t i = 0; i < cf->ndkim_keys && nspecs < CD_KEYS_MAX; i++) {
		char err[256];
		if (dkim_key_parse_line(cf->dkim_keys[i], &specs[nspecs], err,
		                        sizeof err) == 0)
			nspecs++;
	}
	char d[DMARC_NAME_BUF];
	cd_signing_domain(cd, specs, nspecs, d);

	struct cd_sel sels[CD_KEYS_MAX + CTL_OPTS_MAX];
	size_t nsels = 0;
	for (size_t i = 0; d[0] && i < nspecs; i++) {
		if (strcasecmp(specs[i].domain, d) != 0)
			continue;
		struct cd_sel *s = &sels[nsels++];
		memset(s, 0, sizeof *s);
		snprintf(s->domain, sizeof s->domain, "%s", d);
		snprintf(s->selector, sizeof s->selector, "%s", specs[i].selector);
		if (dkim_key_load(&specs[i], &s->key, s->load_err,
		                  sizeof s->load_err) < 0)
			s->key = NULL;
	}
	for (size_t i = 0; i < cd->c->nopts; i++) {
		if (strcmp(cd->c->opts[i].name, "--selector") != 0)
			continue;
		const char *sel = cd->c->opts[i].value;
		bool have = false;
		for (size_t k = 0; k < nsels; k++)
			if (strcasecmp(sels[k].selector, sel) == 0)
				have = true;
		if (have)
			continue;
		struct cd_sel *s = &sels[nsels++];
		memset(s, 0, sizeof *s);
		snprintf(s->domain, sizeof s->domain, "%s", d[0] ? d : cd->domain);
		snprintf(s->selector, sizeof s->selector, "%s", sel);
	}
	snprintf(cd->dkim_d, sizeof cd->dkim_d, "%s", d);

	size_t it;
	if (nsels == 0) {
		it = cd_add(cd, CD_WARN, "dkim", cd->domain, "no dkim_key for %s: "
		            "mail From: it goes out unsigned", cd->domain);
		cd_fix(cd, it, "relayctl dkim keygen %s SELECTOR, add the dkim_key "
		       "line it prints to relayd.conf and publish its record",
		       cd->domain);
		return;
	}
	for (size_t i = 0; i < nsels; i++) {
		struct cd_sel *s = &sels[i];
		char qn[DNS_NAME_MAX + 80];
		snprintf(qn, sizeof qn, "%s._domainkey.%s", s->selector, s->domain);
		char *want = s->key ? dkim_key_record(s->key) : NULL;
		struct cd_ans t;
		cd_q(cd, qn, DNS_T_TXT, &t);
		if (cd_absent(t.st)) {
			it = cd_add(cd, CD_FAIL, "dkim", qn, "no DKIM record at %s",
			            qn);
			if (want)
				cd_fix(cd, it, "publish: %s. TXT \"%s\"", qn, want);
			else
				cd_fix(cd, it, "publish the record 'relayctl dkim show' "
				       "prints for selector %s at %s", s->selector, qn);
		} else if (t.st != DNS_OK) {
			it = cd_add(cd, CD_WARN, "dkim", qn, "could not look up %s: %s",
			            qn, dns_status_names[t.st]);
			cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and "
			       "run check-dns again");
		} else if (!s->key) {
			it = cd_add(cd, CD_WARN, "dkim", qn, "a record is served at %s, "
			            "but no key is loaded to compare its p= with%s%s",
			            qn, s->load_err[0] ? ": " : "", s->load_err);
			if (s->load_err[0])
				cd_fix(cd, it, "run check-dns as root or relayd's user so "
				       "the key file can be read");
			else
				cd_fix(cd, it, "add \"dkim_key = %s %s /path/to/key.pem\" "
				       "to relayd.conf", s->domain, s->selector);
		} else {
			/* Several TXT records at the name: any one that is the
			 * key will do for a verifier that tries them; report the
			 * best. */
			int best = 2;
			char why[512] = "", bwhy[512] = "";
			for (size_t k = 0; k < t.n; k++) {
				int r = dkim_key_match(s->key, t.rr[k].txt,
				                       t.rr[k].txtlen, why, sizeof why);
				int rank = r == 0 ? 0 : r == 1 ? 1 : 2;
				if (rank < best || k == 0) {
					best = rank;
					snprintf(bwhy, sizeof bwhy, "%s", why);
				}
				if (r == 0)
					break;
			}
			if (best == 0) {
				cd->dkim_ok = true;
				enum cd_status st = s->key->weak ? CD_WARN : CD_OK;
				it = cd_add(cd, st, "dkim", qn, "p= at %s is the loaded "
				            "key (%s, %u bits)%s%s%s", qn,
				            dkim_alg_name(s->key->alg), s->key->bits,
				            s->key->weak ? "; under 2048 bits" : "",
				            bwhy[0] ? "; " : "", bwhy);
				if (s->key->weak)
					cd_fix(cd, it, "relayctl dkim rotate %s (a new key of "
					       "2048 bits or more)", s->domain);
			} else {
				it = cd_add(cd, CD_FAIL, "dkim", qn, "%s %s: %s", qn,
				            best == 1 ? "does not serve the loaded key" :
				            "is not a valid DKIM key record", bwhy);
				if (want)
					cd_fix(cd, it, "publish: %s. TXT \"%s\" in "
					       "place of the record served", qn, want);
			}
		}
		cd_ans_free(&t);
		free(want);
		dkim_key_free(s->key);
	}
}

/* ---- DMARC -------------------------------------------------------------- */

struct cd_walk {
	size_t n, asked;
	char names[DMARC_WALK_MAX][DMARC_NAME_BUF];
	struct dmarc_found found[DMARC_WALK_MAX];
	int at;                     /* the record that applies: index, or -1 */
	struct dmarc_record rec;
	char rec_txt[512];
	int bad_at;                 /* first invalid or multiple, or -1 */
	char bad_why[256];
	bool tempfail;
	char org[DMARC_NAME_BUF];
};

/* RFC 9989 §4.10: _dmarc at the name and up; the policy is the first
 * record found, the organizational domain from the psd tags. */
static void cd_walk(struct cd *cd, const char *domain, struct cd_walk *w)
{
	memset(w, 0, sizeof *w);
	w->at = w->bad_at = -1;
	w->n = dmarc_walk_names(domain, w->names);
	for (size_t i = 0; i < w->n; i++) {
		char qn[DMARC_NAME_BUF + 8];
		snprintf(qn, sizeof qn, "_dmarc.%s", w->names[i]);
		struct cd_ans t;
		cd_q(cd, qn, DNS_T_TXT, &t);
		w->asked = i + 1;
		if (t.st != DNS_OK && !cd_absent(t.st))
			w->tempfail = true;
		int ndmarc = 0, valid = -1;
		struct dmarc_record rec;
		char why[256];
		for (size_t k = 0; k < t.n; k++) {
			int r = dmarc_parse(t.rr[k].txt, t.rr[k].txtlen, &rec, why,
			                    sizeof why);
			if (r == -ENOENT)
				continue;
			ndmarc++;
			if (r == 0 && valid < 0) {
				valid = (int)k;
				if (w->at < 0) {
					w->rec = rec;
					snprintf(w->rec_txt, sizeof w->rec_txt, "%s",
					         t.rr[k].txt);
				}
			} else if (r < 0 && w->bad_at < 0) {
				w->bad_at = (int)i;
				snprintf(w->bad_why, sizeof w->bad_why, "%s", why);
			}
		}
		if (ndmarc > 1 && w->bad_at < 0) {
			w->bad_at = (int)i;
			snprintf(w->bad_why, sizeof w->bad_why, "%d DMARC records: "
			         "receivers discard them all", ndmarc);
		}
		/* RFC 7489 §6.6.3: two or more records at a name count as
		 * none. */
		if (ndmarc == 1 && valid >= 0) {
			w->found[i].found = true;
			w->found[i].psd = rec.psd;
			if (w->at < 0)
				w->at = (int)i;
		}
		cd_ans_free(&t);
		if (w->found[i].found && w->found[i].psd)
			break;
	}
	dmarc_org_domain((const char (*)[DMARC_NAME_BUF])w->names, w->found,
	                 w->asked, w->org);
}

static const char *cd_yesno_strict(bool s)
{
	return s ? "s, strict" : "r, relaxed";
}

static void cd_check_dmarc(struct cd *cd)
{
	struct cd_walk from, dk, env;
	cd_walk(cd, cd->domain, &from);
	size_t it;
	char sample[300];
	snprintf(sample, sizeof sample, "v=DMARC1; p=none; rua=mailto:postmaster@%s",
	         cd->domain);
	if (from.bad_at >= 0 && (from.at < 0 || from.bad_at <= from.at)) {
		it = cd_add(cd, CD_FAIL, "dmarc", cd->domain, "_dmarc.%s: %s",
		            from.names[from.bad_at], from.bad_why);
		cd_fix(cd, it, "publish one valid record, e.g.: _dmarc.%s. TXT "
		       "\"%s\"", from.names[from.bad_at], sample);
	} else if (from.at < 0 && from.tempfail) {
		it = cd_add(cd, CD_WARN, "dmarc", cd->domain, "could not look up "
		            "_dmarc.%s or its parents", cd->domain);
		cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and run "
		       "check-dns again");
	} else if (from.at < 0) {
		it = cd_add(cd, CD_FAIL, "dmarc", cd->domain, "no DMARC record at "
		            "_dmarc.%s or above (tree walk of %zu names)", cd->domain,
		            from.asked);
		cd_fix(cd, it, "publish: _dmarc.%s. TXT \"%s\"", cd->domain,
		       sample);
	} else {
		cd->dmarc_ok = true;
		const struct dmarc_record *r = &from.rec;
		/* A record above the domain applies to it as a subdomain: sp=
		 * if given (np= for a name that does not exist: not ours). */
		enum dmarc_policy p = from.at > 0 && r->sp ? r->sp : r->p;
		char notes[256] = "";
		if (r->warnings & DMARC_W_REMOVED_TAG)
			strcat(notes, "; pct/rf/ri are removed in RFC 9989");
		if (r->warnings & DMARC_W_P_NOT_SECOND)
			strcat(notes, "; RFC 7489 readers want p= right after v=");
		if (r->warnings & DMARC_W_UNKNOWN_TAG)
			strcat(notes, "; unknown tags ignored");
		if (r->testing)
			strcat(notes, "; t=y: testing");
		if (p == DMARC_P_NONE)
			strcat(notes, "; p=none only monitors");
		cd_add(cd, CD_OK, "dmarc", cd->domain, "policy %s from _dmarc.%s "
		       "(%s); organizational domain %s (RFC 9989 tree walk)%s",
		       dmarc_policy_names[p], from.names[from.at], from.rec_txt,
		       from.org, notes);
	}

	/* Alignment (RFC 7489 §3.1): DMARC passes when DKIM passes with
	 * d= aligned, or SPF passes for an aligned envelope domain. */
	bool as = from.at >= 0 && from.rec.aspf_strict;
	bool ad = from.at >= 0 && from.rec.adkim_strict;
	bool dkim_al = false, spf_al;
	char dwhy[700], swhy[700];
	if (cd->dkim_d[0]) {
		cd_walk(cd, cd->dkim_d, &dk);
		dkim_al = dmarc_aligned(cd->dkim_d, dk.org, cd->domain, from.org, ad);
		snprintf(dwhy, sizeof dwhy, "DKIM d=%s %s with %s (adkim=%s)%s",
		         cd->dkim_d, dkim_al ? "aligned" : "not aligned",
		         cd->domain, cd_yesno_strict(ad),
		         cd->dkim_ok ? "" : ", but its record does not match");
	} else {
		snprintf(dwhy, sizeof dwhy, "DKIM: no key signs mail From: %s",
		         cd->domain);
	}
	cd_walk(cd, cd->env_domain, &env);
	spf_al = dmarc_aligned(cd->env_domain, env.org, cd->domain, from.org, as);
	snprintf(swhy, sizeof swhy, "SPF domain %s %s with %s (aspf=%s)%s",
	         cd->env_domain, spf_al ? "aligned" : "not aligned", cd->domain,
	         cd_yesno_strict(as),
	         cd->spf_pass == 1 ? "" : cd->spf_pass == 0 ?
	         ", but SPF does not pass" : ", SPF not evaluated");
	cd->dmarc_pass = (dkim_al && cd->dkim_ok) ||
	                 (spf_al && cd->spf_pass == 1);
	if (cd->dmarc_pass) {
		cd_add(cd, CD_OK, "dmarc-alignment", cd->domain, "%s; %s", dwhy,
		       swhy);
	} else {
		it = cd_add(cd, CD_FAIL, "dmarc-alignment", cd->domain, "DMARC "
		            "would fail: %s; %s", dwhy, swhy);
		cd_fix(cd, it, "sign with a key of %s (relayctl dkim keygen %s "
		       "SELECTOR, published), or send with an envelope sender "
		       "in %s whose SPF covers this host", cd->domain, cd->domain,
		       cd->domain);
	}
}

/* ---- MX, MTA-STS, TLS-RPT ---------------------------------------------- */

static void cd_check_mx(struct cd *cd)
{
	struct cd_ans mx;
	size_t it;
	cd_q(cd, cd->domain, DNS_T_MX, &mx);
	if (mx.nullmx) {
		it = cd_add(cd, CD_WARN, "mx", cd->domain, "%s publishes a null MX "
		            "(RFC 7505): replies and bounces to it cannot be "
		            "delivered", cd->domain);
		cd_fix(cd, it, "publish: %s. MX 10 mail.%s. (a host that "
		       "receives mail) if anyone should answer", cd->domain,
		       cd->domain);
	} else if (mx.st == DNS_OK) {
		char list[512] = "";
		unsigned best = 65536;
		for (size_t i = 0; i < mx.n; i++) {
			cd_cat(list, sizeof list, "%s%u %s", i ? ", " : "",
			       mx.rr[i].pref, mx.rr[i].name);
			if (mx.rr[i].pref < best) {
				best = mx.rr[i].pref;
				snprintf(cd->mx, sizeof cd->mx, "%s", mx.rr[i].name);
			}
		}
		cd_add(cd, CD_OK, "mx", cd->domain, "MX %s", list);
	} else if (cd_absent(mx.st)) {
		struct cd_ans a;
		cd_q(cd, cd->domain, DNS_T_A, &a);
		bool has_a = a.st == DNS_OK;
		cd_ans_free(&a);
		it = cd_add(cd, has_a ? CD_WARN : CD_FAIL, "mx", cd->domain,
		            "no MX for %s%s", cd->domain, has_a ?
		            " (its A record serves as implicit MX)" :
		            " and no address: receivers may refuse a sender "
		            "domain that cannot receive replies or bounces");
		cd_fix(cd, it, "publish: %s. MX 10 mail.%s. pointing at a host "
		       "that receives mail", cd->domain, cd->domain);
	} else {
		it = cd_add(cd, CD_WARN, "mx", cd->domain, "could not look up the "
		            "MX of %s: %s", cd->domain, dns_status_names[mx.st]);
		cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf) and run "
		       "check-dns again");
	}
	cd_ans_free(&mx);
}

static void cd_check_txt_info(struct cd *cd, const char *item,
                              const char *prefix, const char *label,
                              const char *what)
{
	char qn[DMARC_NAME_BUF + 16];
	snprintf(qn, sizeof qn, "%s.%s", prefix, cd->domain);
	struct cd_ans t;
	cd_q(cd, qn, DNS_T_TXT, &t);
	size_t pl = strlen(label);
	const char *rec = NULL;
	for (size_t i = 0; i < t.n; i++)
		if (t.rr[i].txtlen >= pl && strncasecmp(t.rr[i].txt, label, pl) == 0)
			rec = t.rr[i].txt;
	if (rec)
		cd_add(cd, CD_INFO, item, qn, "%s published: %s", what, rec);
	else
		cd_add(cd, CD_INFO, item, qn, "no %s record at %s (%s; optional)",
		       what, qn, t.st == DNS_OK ? "no matching TXT" :
		       dns_status_names[t.st]);
	cd_ans_free(&t);
}

/* ---- port 25 ------------------------------------------------------------ */

static int64_t cd_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connects to a:port and reads the greeting (RFC 5321 §4.2: lines
 * "NNN-..." then "NNN ..."), within CD_PROBE_MS in all and
 * CD_GREETING_MAX bytes. 0 and the last line in greet (printable as
 * received; the caller's output escapes it), or -errno (-ETIMEDOUT,
 * -ECONNREFUSED, -EPROTO: not an SMTP greeting). */
static int cd_probe(const struct dns_addr *a, unsigned port, char *greet,
                    size_t greetlen, int *code)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof ss);
	if (a->family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&ss;
		s->sin_family = AF_INET;
		s->sin_port = htons((uint16_t)port);
		memcpy(&s->sin_addr, a->a, 4);
		sl = sizeof *s;
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons((uint16_t)port);
		memcpy(&s->sin6_addr, a->a, 16);
		sl = sizeof *s;
	}
	greet[0] = '\0';
	int fd = socket(a->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int64_t deadline = cd_now_ms() + CD_PROBE_MS;
	int r = 0;
	if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
		r = -errno;
		goto out;
	}
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	int64_t left = deadline - cd_now_ms();
	int pr = left > 0 ? poll(&pfd, 1, (int)left) : 0;
	if (pr <= 0) {
		r = pr < 0 ? -errno : -ETIMEDOUT;
		goto out;
	}
	int soerr = 0;
	socklen_t el = sizeof soerr;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) < 0 || soerr) {
		r = soerr ? -soerr : -errno;
		goto out;
	}
	char buf[CD_GREETING_MAX + 1];
	size_t n = 0, line = 0;
	for (;;) {
		char *nl = memchr(buf + line, '\n', n - line);
		if (nl) {
			size_t ll = (size_t)(nl - (buf + line));
			const char *s = buf + line;
			if (ll < 3 || s[0] < '1' || s[0] > '5' || s[1] < '0' ||
			    s[1] > '9' || s[2] < '0' || s[2] > '9') {
				r = -EPROTO;
				goto out;
			}
			if (ll == 3 || s[3] != '-' || (ll == 4 && s[3] == '\r')) {
				*code = (s[0] - '0') * 100 + (s[1] - '0') * 10 +
				        (s[2] - '0');
				while (ll && (s[ll - 1] == '\r'))
					ll--;
				snprintf(greet, greetlen, "%.*s", (int)ll, s);
				break;
			}
			line += ll + 1;
			continue;
		}
		if (n == CD_GREETING_MAX) {
			r = -EPROTO;
			goto out;
		}
		pfd.events = POLLIN;
		left = deadline - cd_now_ms();
		pr = left > 0 ? poll(&pfd, 1, (int)left) : 0;
		if (pr <= 0) {
			r = pr < 0 ? -errno : -ETIMEDOUT;
			goto out;
		}
		ssize_t k = read(fd, buf + n, CD_GREETING_MAX - n);
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (k <= 0) {
			r = k < 0 ? -errno : -ECONNRESET;
			goto out;
		}
		n += (size_t)k;
	}
	/* Polite: end the session; nothing waits for the reply. */
	if (write(fd, "QUIT\r\n", 6) < 0)
		(void)0;
out:
	close(fd);
	return r;
}

static bool cd_name_ok(const char *s);

/* --probe HOST, HOST:PORT, [V6]:PORT or a bare IPv6 literal: 0, or
 * -EINVAL. host holds DMARC_NAME_BUF bytes. */
static int cd_parse_probe(const char *probe, char *host, unsigned *port)
{
	const char *h = probe, *colon = NULL;
	size_t hl;
	*port = 25;
	if (probe[0] == '[') {
		const char *e = strchr(probe, ']');
		if (!e || (e[1] && e[1] != ':'))
			return -EINVAL;
		h = probe + 1;
		hl = (size_t)(e - h);
		colon = e[1] == ':' ? e + 1 : NULL;
	} else {
		colon = strrchr(probe, ':');
		if (colon && strchr(probe, ':') != colon)
			colon = NULL;          /* a bare IPv6 literal */
		hl = colon ? (size_t)(colon - probe) : strlen(probe);
	}
	if (hl == 0 || hl >= DMARC_NAME_BUF)
		return -EINVAL;
	if (colon) {
		char *end;
		errno = 0;
		unsigned long p = strtoul(colon + 1, &end, 10);
		if (!colon[1] || *end || errno || p == 0 || p > 65535 ||
		    colon[1] < '0' || colon[1] > '9')
			return -EINVAL;
		*port = (unsigned)p;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	struct dns_addr a;
	if (cd_parse_addr(host, &a) < 0 && !cd_name_ok(host))
		return -EINVAL;
	return 0;
}

static void cd_check_port25(struct cd *cd)
{
	const char *probe = ctl_opt(cd->c, "--probe");
	char host[DMARC_NAME_BUF];
	unsigned port = 25;
	size_t it;
	if (probe) {
		if (cd_parse_probe(probe, host, &port) < 0)
			return;                 /* refused before (usage) */
	} else if (cd->mx[0]) {
		snprintf(host, sizeof host, "%s", cd->mx);
	} else {
		it = cd_add(cd, CD_WARN, "port25", cd->domain, "no MX of %s to "
		            "try port 25 against", cd->domain);
		cd_fix(cd, it, "run again with --probe HOST (any mail server, "
		       "e.g. your provider's or a big mailbox provider's MX)");
		return;
	}
	struct dns_addr a;
	if (cd_parse_addr(host, &a) < 0) {
		struct cd_ans r;
		cd_q(cd, host, DNS_T_A, &r);
		if (r.st != DNS_OK) {
			cd_ans_free(&r);
			cd_q(cd, host, DNS_T_AAAA, &r);
		}
		if (r.st != DNS_OK) {
			it = cd_add(cd, CD_WARN, "port25", host, "could not resolve "
			            "%s: %s", host, dns_status_names[r.st]);
			cd_fix(cd, it, "run again with --probe HOST[:PORT]");
			cd_ans_free(&r);
			return;
		}
		a = r.rr[0].addr;
		cd_ans_free(&r);
	}
	char as[64], target[DMARC_NAME_BUF + 80], greet[SMTP_REPLY_LINE_MAX];
	snprintf(target, sizeof target, "%s[%s]:%u", host,
	         cd_astr(&a, as, sizeof as), port);
	int code = 0;
	int r = cd_probe(&a, port, greet, sizeof greet, &code);
	if (r == 0 && code / 100 == 2) {
		cd_add(cd, CD_OK, "port25", target, "connected to %s: %s", target,
		       greet);
	} else if (r == 0) {
		it = cd_add(cd, CD_WARN, "port25", target, "connected to %s (the "
		            "port is open), but it greeted: %s", target, greet);
		cd_fix(cd, it, "try another host with --probe HOST");
	} else if (r == -EPROTO) {
		it = cd_add(cd, CD_WARN, "port25", target, "connected to %s, but "
		            "got no SMTP greeting", target);
		cd_fix(cd, it, "try another host with --probe HOST");
	} else {
		it = cd_add(cd, CD_FAIL, "port25", target, "cannot reach %s: %s",
		            target, r == -ETIMEDOUT ? "no answer within 10 s" :
		            strerror(-r));
		cd_fix(cd, it, "your provider may block port 25: ask it to open "
		       "outbound port 25, or set delivery = smarthost");
	}
}

/* ---- DNS blocklists ----------------------------------------------------- */

/* Zones known to list IPv6 addresses (others are asked about IPv4 only). */
static bool cd_zone_v6(const char *zone)
{
	return strcasecmp(zone, "zen.spamhaus.org") == 0 ||
	       strcasecmp(zone, "sbl.spamhaus.org") == 0 ||
	       strcasecmp(zone, "xbl.spamhaus.org") == 0 ||
	       strcasecmp(zone, "pbl.spamhaus.org") == 0;
}

static void cd_check_dnsbl(struct cd *cd, const struct dns_addr *a)
{
	const char *z = cd->c->conf.dnsbl_zones ? cd->c->conf.dnsbl_zones : "";
	char as[64];
	cd_astr(a, as, sizeof as);
	while (*z) {
		size_t len = strcspn(z, ", \t");
		if (len == 0) {
			z++;
			continue;
		}
		char zone[DMARC_NAME_BUF];
		snprintf(zone, sizeof zone, "%.*s", (int)(len < sizeof zone ? len :
		         sizeof zone - 1), z);
		z += len;
		if (a->family == AF_INET6 && !cd_zone_v6(zone))
			continue;
		/* The reverse name without its .in-addr.arpa / .ip6.arpa. */
		char rev[128], qn[400];
		if (dns_reverse_name(a, rev, sizeof rev) < 0)
			continue;
		char *arpa = strstr(rev, a->family == AF_INET ? ".in-addr.arpa" :
		                    ".ip6.arpa");
		if (arpa)
			*arpa = '\0';
		snprintf(qn, sizeof qn, "%s.%s", rev, zone);
		char subject[400];
		snprintf(subject, sizeof subject, "%s %s", as, zone);
		struct cd_ans r;
		cd_q(cd, qn, DNS_T_A, &r);
		size_t it;
		if (cd_absent(r.st)) {
			cd_add(cd, CD_OK, "dnsbl", subject, "%s is not listed in %s",
			       as, zone);
		} else if (r.st != DNS_OK) {
			it = cd_add(cd, CD_WARN, "dnsbl", subject, "could not check %s "
			            "in %s: %s", as, zone, dns_status_names[r.st]);
			cd_fix(cd, it, "check dns_servers (or /etc/resolv.conf)");
		} else {
			const uint8_t *v = r.rr[0].addr.a;
			char vs[64];
			cd_astr(&r.rr[0].addr, vs, sizeof vs);
			if (r.rr[0].addr.family == AF_INET && v[0] == 127 &&
			    v[1] == 255 && v[2] == 255) {
				/* Spamhaus: 127.255.255.x is an error code (the
				 * query was refused), not a listing. */
				it = cd_add(cd, CD_WARN, "dnsbl", subject, "could not "
				            "check %s in %s: it answered %s (query refused, "
				            "e.g. through a public resolver)", as, zone, vs);
				cd_fix(cd, it, "ask through your own resolver "
				       "(dns_servers), not a public one");
			} else if (r.rr[0].addr.family != AF_INET || v[0] != 127) {
				it = cd_add(cd, CD_WARN, "dnsbl", subject, "%s answered %s "
				            "for %s: not a DNSBL answer (a dead zone?)",
				            zone, vs, as);
				cd_fix(cd, it, "remove %s from dnsbl_zones", zone);
			} else {
				struct cd_ans t;
				cd_q(cd, qn, DNS_T_TXT, &t);
				it = cd_add(cd, CD_FAIL, "dnsbl", subject, "%s is listed in "
				            "%s (%s)%s%s", as, zone, vs, t.st == DNS_OK &&
				            t.n ? ": " : "", t.st == DNS_OK && t.n ?
				            t.rr[0].txt : "");
				cd_fix(cd, it, "ask %s to delist %s (its reason text says "
				       "how), after fixing what got it listed", zone, as);
				cd_ans_free(&t);
			}
		}
		cd_ans_free(&r);
	}
}

/* ---- the egress addresses ------------------------------------------------ */

static int cd_egress(struct cd *cd)
{
	bool given = false;
	for (size_t i = 0; i < cd->c->nopts; i++) {
		if (strcmp(cd->c->opts[i].name, "--ip") != 0)
			continue;
		given = true;
		struct dns_addr a;
		if (cd_parse_addr(cd->c->opts[i].value, &a) < 0) {
			char esc[128];
			return ctl_usage_error("--ip %s: not an IPv4 or IPv6 address",
			                       log_escape(esc, sizeof esc,
			                       cd->c->opts[i].value,
			                       strlen(cd->c->opts[i].value)));
		}
		if (cd->naddr < CD_ADDR_MAX)
			cd->addr[cd->naddr++] = a;
	}
	if (given)
		return 0;
	const struct conf *cf = &cd->c->conf;
	static const int fams[2] = {AF_INET, AF_INET6};
	for (int k = 0; k < 2; k++) {
		int fam = fams[k];
		if ((fam == AF_INET && cf->ip_preference == CONF_IP_IPV6) ||
		    (fam == AF_INET6 && cf->ip_preference == CONF_IP_IPV4))
			continue;
		const char *bind = fam == AF_INET ? cf->smtp_bind_address :
		                   cf->smtp_bind_address6;
		struct dns_addr a;
		if (bind && bind[0]) {
			if (cd_parse_addr(bind, &a) < 0)
				continue;
		} else if (ctl_dns_source_addr(fam, &a) < 0) {
			cd_add(cd, CD_INFO, "address", fam == AF_INET ? "IPv4" : "IPv6",
			       "no %s route: relayd will not send over %s",
			       fam == AF_INET ? "IPv4" : "IPv6",
			       fam == AF_INET ? "IPv4" : "IPv6");
			continue;
		}
		cd->addr[cd->naddr++] = a;
	}
	return 0;
}

/* ---- the verdict and output --------------------------------------------- */

static void cd_verdict(struct cd *cd)
{
	/* Gmail, Yahoo, Outlook (2024-2025): every sender needs SPF or DKIM
	 * passing, forward-confirmed reverse DNS and TLS; bulk senders SPF
	 * and DKIM, DMARC (p=none will do) with alignment, and one-click
	 * unsubscribe (RFC 8058). */
	bool auth = cd->spf_pass == 1 || cd->dkim_ok;
	char miss[400] = "";
	if (!auth)
		strcat(miss, "; neither SPF nor DKIM passes");
	if (!cd->fcrdns_all)
		strcat(miss, "; an egress address lacks forward-confirmed PTR");
	size_t it;
	if (miss[0]) {
		it = cd_add(cd, CD_FAIL, "verdict-all-senders", "Gmail Yahoo "
		            "Outlook", "rules for all senders NOT met%s "
		            "(TLS: relayd uses STARTTLS when offered)", miss);
		cd_fix(cd, it, "fix the FAIL items above");
	} else {
		cd_add(cd, CD_OK, "verdict-all-senders", "Gmail Yahoo Outlook",
		       "rules for all senders met: %s, forward-confirmed PTR, "
		       "TLS (relayd uses STARTTLS when offered)",
		       cd->spf_pass == 1 && cd->dkim_ok ? "SPF and DKIM pass" :
		       cd->dkim_ok ? "DKIM passes" : "SPF passes");
	}
	miss[0] = '\0';
	if (cd->spf_pass != 1)
		strcat(miss, cd->spf_pass < 0 ? "; SPF not evaluated" :
		       "; SPF does not pass");
	if (!cd->dkim_ok)
		strcat(miss, "; DKIM does not pass");
	if (!cd->dmarc_ok)
		strcat(miss, "; no valid DMARC record");
	else if (!cd->dmarc_pass)
		strcat(miss, "; DMARC would not pass (alignment)");
	if (miss[0]) {
		it = cd_add(cd, CD_WARN, "verdict-bulk", "Gmail Yahoo Outlook",
		            "rules for bulk senders (over 5000 a day) NOT met%s; "
		            "one-click unsubscribe (List-Unsubscribe-Post, RFC 8058) "
		            "is the sending application's job", miss);
		cd_fix(cd, it, "needed only for bulk mail: fix the items above");
	} else {
		cd_add(cd, CD_OK, "verdict-bulk", "Gmail Yahoo Outlook", "rules for "
		       "bulk senders met: SPF and DKIM pass, DMARC aligned; "
		       "one-click unsubscribe (List-Unsubscribe-Post, RFC 8058) is "
		       "the sending application's job");
	}
}

static void cd_render(struct cd *cd, struct ctl_out *o, size_t nfail,
                      size_t nwarn)
{
	if (cd->c->json) {
		ctl_out_str(o, "{\"domain\":");
		ctl_out_json_strz(o, cd->domain);
		ctl_out_str(o, ",\"hostname\":");
		ctl_out_json_strz(o, cd->hostname);
		ctl_out_str(o, ",\"addresses\":[");
		for (size_t i = 0; i < cd->naddr; i++) {
			char as[64];
			if (i)
				ctl_out_str(o, ",");
			ctl_out_json_strz(o, cd_astr(&cd->addr[i], as, sizeof as));
		}
		ctl_out_str(o, "],\"items\":[");
		for (size_t i = 0; i < cd->nitems; i++) {
			const struct cd_item *it = &cd->items[i];
			ctl_out_str(o, i ? ",{\"name\":" : "{\"name\":");
			ctl_out_json_strz(o, it->name);
			ctl_out_str(o, ",\"subject\":");
			ctl_out_json_strz(o, it->subject);
			ctl_out_str(o, ",\"status\":");
			ctl_out_json_strz(o, cd_status_names[it->st]);
			ctl_out_str(o, ",\"detail\":");
			ctl_out_json_strz(o, it->detail);
			ctl_out_str(o, ",\"fix\":");
			ctl_out_json_strz(o, it->fix);
			ctl_out_str(o, "}");
		}
		ctl_out_printf(o, "],\"fail\":%zu,\"warn\":%zu,\"verdict\":{"
		               "\"all_senders\":%s,\"bulk\":%s}}\n", nfail, nwarn,
		               cd->spf_pass == 1 || cd->dkim_ok ?
		               (cd->fcrdns_all ? "true" : "false") : "false",
		               cd->spf_pass == 1 && cd->dkim_ok && cd->dmarc_ok &&
		               cd->dmarc_pass ? "true" : "false");
		return;
	}
	ctl_out_str(o, "check-dns ");
	ctl_out_text(o, cd->domain, strlen(cd->domain), 0);
	ctl_out_str(o, " (EHLO ");
	ctl_out_text(o, cd->hostname, strlen(cd->hostname), 0);
	ctl_out_str(o, ", egress");
	for (size_t i = 0; i < cd->naddr; i++) {
		char as[64];
		ctl_out_printf(o, " %s", cd_astr(&cd->addr[i], as, sizeof as));
	}
	ctl_out_str(o, ")\n");
	for (size_t i = 0; i < cd->nitems; i++) {
		const struct cd_item *it = &cd->items[i];
		ctl_out_printf(o, "%-4s  %-19s ", cd_status_names[it->st], it->name);
		ctl_out_text(o, it->detail, strlen(it->detail), 0);
		ctl_out_str(o, "\n");
		if (it->fix && it->st != CD_OK && it->st != CD_INFO) {
			ctl_out_str(o, "      fix: ");
			ctl_out_text(o, it->fix, strlen(it->fix), 0);
			ctl_out_str(o, "\n");
		}
	}
	ctl_out_printf(o, "%zu FAIL, %zu WARN\n", nfail, nwarn);
}

/* A name we would ask about: letters, digits, '-', '_' and dots. */
static bool cd_name_ok(const char *s)
{
	char names[DMARC_WALK_MAX][DMARC_NAME_BUF];
	if (dmarc_walk_names(s, names) == 0)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' ||
		      *s == '.'))
			return false;
	return true;
}

static void cd_lower(char *dst, size_t n, const char *s)
{
	size_t l = strlen(s);
	if (l && s[l - 1] == '.')
		l--;
	snprintf(dst, n, "%.*s", (int)l, s);
	for (char *p = dst; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
}

int ctl_cmd_check_dns(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	char esc[300];
	if (!cd_name_ok(argv[0]))
		return ctl_usage_error("'%s' is not a domain name",
		                       log_escape(esc, sizeof esc, argv[0],
		                                  strlen(argv[0])));
	const char *mf = ctl_opt(c, "--mail-from");
	if (mf) {
		const char *at = strrchr(mf, '@');
		if (at)
			mf = at + 1;
		if (!cd_name_ok(mf))
			return ctl_usage_error("--mail-from '%s' is not a domain",
			                       log_escape(esc, sizeof esc, mf,
			                                  strlen(mf)));
	}
	const char *probe = ctl_opt(c, "--probe");
	char ph[DMARC_NAME_BUF];
	unsigned pp;
	if (probe && cd_parse_probe(probe, ph, &pp) < 0)
		return ctl_usage_error("--probe '%s': want HOST, HOST:PORT or "
		                       "[IPV6]:PORT", log_escape(esc, sizeof esc,
		                       probe, strlen(probe)));
	for (size_t i = 0; i < c->nopts; i++)
		if (strcmp(c->opts[i].name, "--selector") == 0 &&
		    (!cd_name_ok(c->opts[i].value) ||
		     strlen(c->opts[i].value) >= 64))
			return ctl_usage_error("--selector '%s' is not a selector",
			                       log_escape(esc, sizeof esc,
			                                  c->opts[i].value,
			                                  strlen(c->opts[i].value)));

	struct cd *cd = calloc(1, sizeof *cd);
	if (!cd) {
		ctl_err("out of memory");
		return -ENOMEM;
	}
	cd->c = c;
	cd->fcrdns_all = true;
	cd->spf_pass = -1;
	cd_lower(cd->domain, sizeof cd->domain, argv[0]);
	cd_lower(cd->hostname, sizeof cd->hostname,
	         c->conf.hostname ? c->conf.hostname : "localhost");
	cd_lower(cd->env_domain, sizeof cd->env_domain, mf ? mf : cd->domain);

	int r = cd_egress(cd);
	if (r != 0)
		goto done;
	char err[256];
	r = ctl_dns_open(&c->conf, &cd->dns, err, sizeof err);
	if (r < 0) {
		ctl_err("dns: %s", err);
		r = CTL_EXIT_USAGE;
		goto done;
	}
	if (c->conf.delivery != CONF_DELIVERY_DIRECT)
		cd_add(cd, CD_INFO, "delivery", "", "delivery is not direct: "
		       "receivers see the smarthost's addresses, not these; "
		       "what follows is for direct delivery");
	if (cd->naddr == 0) {
		size_t it = cd_add(cd, CD_FAIL, "address", "", "no egress address "
		                   "found (no route, no smtp_bind_address)");
		cd_fix(cd, it, "run again with --ip ADDR");
	}
	for (size_t i = 0; i < cd->naddr; i++)
		cd_check_addr(cd, &cd->addr[i]);
	/* SPF identities: the From: domain (as MAIL FROM when no other is
	 * given), the HELO name (bounces, MAIL FROM:<>), the envelope
	 * domain; SPF for DMARC is the envelope's. */
	char sender[DMARC_NAME_BUF + 16];
	cd_check_spf_domain(cd, cd->domain, "the From: domain");
	snprintf(sender, sizeof sender, "postmaster@%s", cd->domain);
	int pass_from = cd_check_spf_eval(cd, cd->domain, sender,
	                                  "the From: domain");
	if (strcmp(cd->hostname, cd->domain) != 0) {
		cd_check_spf_domain(cd, cd->hostname, "the HELO name, for bounces");
		cd_check_spf_eval(cd, cd->hostname, NULL, "the HELO name");
	}
	cd->spf_pass = pass_from;
	if (strcmp(cd->env_domain, cd->domain) != 0) {
		cd_check_spf_domain(cd, cd->env_domain, "the envelope domain");
		snprintf(sender, sizeof sender, "postmaster@%s", cd->env_domain);
		cd->spf_pass = cd_check_spf_eval(cd, cd->env_domain, sender,
		                                 "the envelope domain");
	}
	cd_check_dkim(cd);
	cd_check_mx(cd);
	cd_check_dmarc(cd);
	cd_check_port25(cd);
	for (size_t i = 0; i < cd->naddr; i++)
		cd_check_dnsbl(cd, &cd->addr[i]);
	cd_check_txt_info(cd, "mta-sts", "_mta-sts", "v=STSv1", "MTA-STS");
	cd_check_txt_info(cd, "tls-rpt", "_smtp._tls", "v=TLSRPTv1", "TLS-RPT");
	cd_verdict(cd);

	if (cd->overflow) {
		ctl_err("out of memory");
		r = -ENOMEM;
		goto done;
	}
	size_t nfail = 0, nwarn = 0;
	for (size_t i = 0; i < cd->nitems; i++) {
		nfail += cd->items[i].st == CD_FAIL;
		nwarn += cd->items[i].st == CD_WARN;
	}
	struct ctl_out o;
	ctl_out_init(&o);
	cd_render(cd, &o, nfail, nwarn);
	r = ctl_out_flush(&o, stdout);
	ctl_out_free(&o);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	else if (nfail)
		r = -EUCLEAN;               /* exit 1: something FAILed */
done:
	ctl_dns_close(cd->dns);
	for (size_t i = 0; i < cd->nitems; i++) {
		free(cd->items[i].name);
		free(cd->items[i].subject);
		free(cd->items[i].detail);
		free(cd->items[i].fix);
	}
	free(cd->items);
	free(cd);
	return r;
}
