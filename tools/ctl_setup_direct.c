/*
 * tools/ctl_setup_direct.c - `relayctl setup direct --domain D` (issue 10
 * §4): the configuration for sending straight to recipients' MX hosts
 * (listeners on loopback 25 and 587 for local applications, hostname,
 * delivery = direct, the dkim_key line, log_file), the DKIM key
 * (generated with dkim/dkim_key.h, written 0600 and owned by relayd's
 * account), and every DNS record to publish: the PTR to ask the provider
 * for, A/AAAA for the host name, SPF for the domain and the host name,
 * DKIM, DMARC; then the next command, `relayctl check-dns D`.
 *
 * The egress addresses in those records: --ip, else the source address
 * the kernel picks toward the Internet per family (tools/ctl_dns.h).
 */
#include "ctl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "dkim/dkim_key.h"
#include "tools/ctl_dns.h"

#define CTL_SD_IPS_MAX 8
#define CTL_SD_RSA_BITS 2048
/* Where relayd's log goes (send-test follows it). */
#define CTL_SD_LOG "/var/log/relayd.log"

struct ctl_sd {
	const char *domain, *hostname, *selector;
	char keydir[PATH_MAX], keypath[PATH_MAX];
	char ips[CTL_SD_IPS_MAX][INET6_ADDRSTRLEN];
	int fam[CTL_SD_IPS_MAX];
	size_t nips;
	bool ips_guessed;           /* from the kernel, not --ip */
};

/* A domain name as DNS and relayd take it: labels of letters, digits and
 * '-', not starting or ending with '-', at least two labels. */
static bool ctl_sd_domain_ok(const char *d)
{
	size_t n = strlen(d), lab = 0, labels = 1;
	if (n == 0 || n > 253 || d[0] == '.' || d[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = d[i];
		if (ch == '.') {
			if (lab == 0 || d[i - 1] == '-')
				return false;
			lab = 0;
			labels++;
			continue;
		}
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		          (ch >= '0' && ch <= '9') || ch == '-';
		if (!ok || (lab == 0 && ch == '-') || ++lab > 63)
			return false;
	}
	return labels >= 2 && d[n - 1] != '-';
}

/* --ip "ADDR[,ADDR...]", else the kernel's source address per family. */
static int ctl_sd_ips(const struct ctl_ctx *c, struct ctl_sd *s)
{
	const char *v = ctl_opt(c, "--ip");
	if (v) {
		char w[INET6_ADDRSTRLEN + 8];
		while (*v) {
			size_t n = strcspn(v, ", ");
			if (n > 0) {
				unsigned char bin[16];
				if (n >= sizeof w || s->nips == CTL_SD_IPS_MAX)
					return ctl_setup_bad_value("--ip", v);
				memcpy(w, v, n);
				w[n] = '\0';
				int fam = inet_pton(AF_INET, w, bin) == 1 ? AF_INET :
				          inet_pton(AF_INET6, w, bin) == 1 ? AF_INET6 : 0;
				if (!fam)
					return ctl_setup_bad_value("--ip (IPv4 or IPv6 "
					                           "addresses)", w);
				inet_ntop(fam, bin, s->ips[s->nips], INET6_ADDRSTRLEN);
				s->fam[s->nips++] = fam;
			}
			v += n;
			v += strspn(v, ", ");
		}
		return 0;
	}
	static const int fams[2] = {AF_INET, AF_INET6};
	for (int i = 0; i < 2; i++) {
		struct dns_addr a;
		if (ctl_dns_source_addr(fams[i], &a) < 0)
			continue;
		inet_ntop(a.family, a.a, s->ips[s->nips], INET6_ADDRSTRLEN);
		s->fam[s->nips++] = a.family;
		s->ips_guessed = true;
	}
	return 0;
}

/* Loopback, RFC 1918, CGNAT, link-local, ULA: not what the Internet sees. */
static bool ctl_sd_private(int fam, const char *ip)
{
	unsigned char b[16];
	if (inet_pton(fam, ip, b) != 1)
		return true;
	if (fam == AF_INET)
		return b[0] == 127 || b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
		       (b[0] == 192 && b[1] == 168) || (b[0] == 100 && (b[1] & 0xc0) == 64) ||
		       (b[0] == 169 && b[1] == 254);
	static const unsigned char lo[16] = {[15] = 1};
	return memcmp(b, lo, 16) == 0 || (b[0] & 0xfe) == 0xfc ||
	       (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

/* The record value as a zone file wants it: strings of at most 255
 * octets (RFC 1035 §3.3.14), in parentheses when there are several. */
static void ctl_sd_txt(struct buf *b, const char *name, const char *v)
{
	size_t n = strlen(v);
	buf_printf(b, "    %s IN TXT ", name);
	if (n <= 255) {
		buf_printf(b, "\"%s\"\n", v);
		return;
	}
	buf_appends(b, "(");
	for (size_t i = 0; i < n; i += 255)
		buf_printf(b, "\n        \"%.*s\"", (int)(n - i < 255 ? n - i : 255),
		           v + i);
	buf_appends(b, " )\n");
}

/* Generates the key, writes it (0600, relayd's account), and returns its
 * public record in *rec (malloc'd). */
static int ctl_sd_key(const struct ctl_sd *s, bool force, char **rec,
                      unsigned *bits)
{
	char err[512], line[PATH_MAX + 400];
	struct dkim_key_spec spec;
	struct dkim_key *k = NULL;
	char *pem = NULL;
	size_t len = 0;
	uid_t uid;
	gid_t gid;
	*rec = NULL;
	/* The dkim_key line relayd will read, parsed as relayd parses it. */
	snprintf(line, sizeof line, "%s %s %s", s->domain, s->selector,
	         s->keypath);
	int r = dkim_key_parse_line(line, &spec, err, sizeof err);
	if (r < 0) {
		ctl_err("dkim_key %s: %s", line, err);
		return r;
	}
	r = dkim_key_generate(DKIM_ALG_RSA, CTL_SD_RSA_BITS, &pem, &len, err,
	                      sizeof err);
	if (r == 0)
		r = dkim_key_from_pem(&spec, pem, len, &k, err, sizeof err);
	if (r < 0) {
		ctl_err("DKIM key: %s", err);
		goto out;
	}
	if ((r = ctl_setup_mkdirs(s->keydir, 0750)) < 0)
		goto out;
	ctl_setup_relayd_owner(&uid, &gid, s->keypath);
	r = ctl_setup_write_file(s->keypath, pem, len, 0600, uid, gid, force);
	if (r < 0)
		goto out;
	*rec = dkim_key_record(k);
	*bits = k->bits;
	if (!*rec) {
		ctl_err("out of memory");
		r = -ENOMEM;
	}
out:
	if (pem) {
		explicit_bzero(pem, len);
		free(pem);
	}
	dkim_key_free(k);
	return r;
}

static void ctl_sd_records(struct buf *b, const struct ctl_sd *s,
                           const char *dkim_rec, unsigned bits)
{
	char name[600];
	buf_printf(b, "\nDNS records to publish (zone-file lines; a web DNS "
	           "panel takes the name and\nthe value):\n");
	buf_printf(b, "\n1. Reverse DNS (PTR): ask your hosting provider (or its "
	           "panel) to set\n");
	if (s->nips == 0)
		buf_printf(b, "    (this host's public address)  ->  %s\n",
		           s->hostname);
	for (size_t i = 0; i < s->nips; i++)
		buf_printf(b, "    %s  ->  %s\n", s->ips[i], s->hostname);
	buf_printf(b, "\n2. The host name's addresses (the PTR must point back "
	           "to them):\n");
	if (s->nips == 0)
		buf_printf(b, "    %s. IN A    (this host's public IPv4 address)\n",
		           s->hostname);
	for (size_t i = 0; i < s->nips; i++)
		buf_printf(b, "    %s. IN %-4s %s\n", s->hostname,
		           s->fam[i] == AF_INET ? "A" : "AAAA", s->ips[i]);

	struct buf spf;
	buf_init(&spf, 4096);
	buf_appends(&spf, "v=spf1");
	for (size_t i = 0; i < s->nips; i++)
		buf_printf(&spf, " %s:%s", s->fam[i] == AF_INET ? "ip4" : "ip6",
		           s->ips[i]);
	if (s->nips == 0)
		buf_printf(&spf, " a:%s", s->hostname);
	buf_appends(&spf, " -all");
	buf_append(&spf, "", 1);    /* a C string from here on */
	buf_printf(b, "\n3. SPF, for the domain and for the host name (bounces "
	           "are checked against\n   the EHLO name). A name has one SPF "
	           "record: if %s has one already,\n   add the ip4:/ip6: terms "
	           "to it instead.\n", s->domain);
	snprintf(name, sizeof name, "%s.", s->domain);
	ctl_sd_txt(b, name, spf.data ? (char *)spf.data : "v=spf1 -all");
	if (strcasecmp(s->hostname, s->domain) != 0) {
		snprintf(name, sizeof name, "%s.", s->hostname);
		ctl_sd_txt(b, name, "v=spf1 a -all");
	}
	buf_free(&spf);

	buf_printf(b, "\n4. DKIM (RSA-%u; the key relayd signs %s's mail with):\n",
	           bits, s->domain);
	snprintf(name, sizeof name, "%s._domainkey.%s.", s->selector, s->domain);
	ctl_sd_txt(b, name, dkim_rec);
	buf_printf(b, "   as one string, for web DNS panels (name %s._domainkey):\n"
	           "    %s\n", s->selector, dkim_rec);

	buf_printf(b, "\n5. DMARC: start with p=none and reports to you; once the "
	           "reports show only\n   your mail passing, tighten it to "
	           "p=quarantine, then p=reject.\n");
	snprintf(name, sizeof name, "_dmarc.%s.", s->domain);
	char dmarc[400];
	snprintf(dmarc, sizeof dmarc, "v=DMARC1; p=none; rua=mailto:postmaster@%s",
	         s->domain);
	ctl_sd_txt(b, name, dmarc);
	if (s->ips_guessed)
		buf_printf(b, "\nThe addresses above are the ones this host sends "
		           "from as the kernel picks\nthem; give others with --ip "
		           "ADDR,ADDR.\n");
	for (size_t i = 0; i < s->nips; i++)
		if (ctl_sd_private(s->fam[i], s->ips[i]))
			buf_printf(b, "Note: %s is not a public address (NAT or a "
			           "private network): the records\nneed the address "
			           "the Internet sees (--ip).\n", s->ips[i]);
}

int ctl_setup_direct(struct ctl_ctx *c)
{
	struct ctl_sd s;
	static char dom_ans[256], host_ans[256], hn[256], sel[64];
	char when[64], dir[PATH_MAX];
	const char *path = ctl_setup_path(c);
	bool force = ctl_opt(c, "--force") != NULL;
	int r;
	memset(&s, 0, sizeof s);
	if (ctl_opt(c, "--check-only") || ctl_opt(c, "--host") ||
	    ctl_opt(c, "--user") || ctl_opt(c, "--password-file"))
		return ctl_usage_error("setup direct takes --domain, --hostname, "
		                       "--selector, --dkim-dir, --ip, --config, "
		                       "--force");
	s.domain = ctl_setup_ask(c, "--domain", "Mail domain (the part after @ "
	                         "in your From: addresses)", NULL, dom_ans,
	                         sizeof dom_ans);
	if (!s.domain)
		return ctl_usage_error("setup direct needs --domain DOMAIN");
	if (!ctl_sd_domain_ok(s.domain))
		return ctl_setup_bad_value("--domain", s.domain);
	/* The default host name: this host's, when it is a full name. */
	if (gethostname(hn, sizeof hn) != 0 || !strchr(hn, '.'))
		snprintf(hn, sizeof hn, "mail.%s", s.domain);
	hn[sizeof hn - 1] = '\0';
	s.hostname = ctl_setup_ask(c, "--hostname", "Host name (EHLO; its PTR "
	                           "and A records must match)", hn, host_ans,
	                           sizeof host_ans);
	if (!ctl_sd_domain_ok(s.hostname))
		return ctl_setup_bad_value("--hostname", s.hostname);
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	/* A dated selector, so the next key (rotation) gets another one. */
	strftime(sel, sizeof sel, "s%Y%m", &tm);
	s.selector = ctl_opt(c, "--selector") ? ctl_opt(c, "--selector") : sel;
	if (!ctl_setup_value_ok(path))
		return ctl_setup_bad_value("--config", path);
	/* The key path is absolute (dkim_key requires it): the directory
	 * of the configuration, made absolute, + dkim/. */
	const char *kd = ctl_opt(c, "--dkim-dir");
	if (kd) {
		snprintf(dir, sizeof dir, "%s", kd);
	} else {
		char cd[PATH_MAX];
		ctl_setup_dirname(path, cd, sizeof cd);
		if (snprintf(dir, sizeof dir, "%s/dkim", cd) >= (int)sizeof dir)
			return ctl_setup_bad_value("--config", path);
	}
	if (dir[0] != '/') {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof cwd)) {
			ctl_err("getcwd: %s", strerror(errno));
			return -errno;
		}
		if (snprintf(s.keydir, sizeof s.keydir, "%s/%s", cwd, dir) >=
		    (int)sizeof s.keydir)
			return ctl_setup_bad_value("--dkim-dir", dir);
	} else {
		snprintf(s.keydir, sizeof s.keydir, "%s", dir);
	}
	if (!ctl_setup_value_ok(s.keydir) ||
	    snprintf(s.keypath, sizeof s.keypath, "%s/%s.%s.pem", s.keydir,
	             s.domain, s.selector) >= (int)sizeof s.keypath)
		return ctl_setup_bad_value("--dkim-dir", s.keydir);
	if ((r = ctl_sd_ips(c, &s)) != 0)
		return r;
	if ((r = ctl_setup_refuse_existing(path, force)) < 0 ||
	    (r = ctl_setup_refuse_existing(s.keypath, force)) < 0)
		return r;

	char *rec = NULL;
	unsigned bits = 0;
	if ((r = ctl_sd_key(&s, force, &rec, &bits)) < 0)
		return r;
	printf("Wrote %s (the DKIM private key, mode 0600).\n", s.keypath);

	struct buf b;
	buf_init(&b, 1 << 20);
	char when_l[64];
	strftime(when_l, sizeof when_l, "%Y-%m-%d %H:%M UTC", &tm);
	snprintf(when, sizeof when, "%s", when_l);
	buf_printf(&b, "# %s - relayd configuration, written by `relayctl setup "
	           "direct` on %s.\n# Every key is explained in relayd's example "
	           "configuration (etc/relayd.conf)\n# and README.md; `relayd -t "
	           "-c %s` checks this file.\n", path, when, path);
	buf_printf(&b, "\n# The name in relayd's greeting and EHLO; its PTR and "
	           "A/AAAA records must\n# match (relayctl check-dns %s "
	           "checks).\nhostname = %s\n", s.domain, s.hostname);
	buf_printf(&b, "\n# Local applications hand mail to relayd here: SMTP "
	           "on 25, submission on 587\n# (no AUTH needed from this host; "
	           "trusted_networks is loopback by default).\n"
	           "listen = 127.0.0.1:25/smtp, 127.0.0.1:587/submission\n");
	buf_printf(&b, "\n# Straight to each recipient domain's MX hosts.\n"
	           "delivery = direct\n");
	buf_printf(&b, "\n# Mail whose From: is at %s is signed with this key "
	           "(DKIM).\ndkim_key = %s %s %s\n", s.domain, s.domain,
	           s.selector, s.keypath);
	buf_printf(&b, "\n# One line per delivery event (relayctl send-test "
	           "follows it;\n# contrib/relayd.logrotate rotates it).\n"
	           "log_file = %s\n", CTL_SD_LOG);
	if (!b.data) {
		ctl_err("out of memory");
		free(rec);
		return -ENOMEM;
	}
	r = ctl_setup_write_file(path, b.data, b.len, 0644, (uid_t)-1,
	                         (gid_t)-1, force);
	buf_free(&b);
	if (r < 0) {
		free(rec);
		return r;
	}
	printf("Wrote %s.\n", path);

	buf_init(&b, 1 << 20);
	ctl_sd_records(&b, &s, rec, bits);
	free(rec);
	buf_printf(&b, "\nNext:\n"
	           "  relayctl -c %s check-dns %s\n"
	           "                           once the records are published "
	           "(DNS may take a while):\n"
	           "                           each item OK, or the exact fix\n"
	           "  relayd -t -c %s          check the configuration\n"
	           "  relayd -c %s             run relayd (or: systemctl restart "
	           "relayd)\n"
	           "  relayctl -c %s send-test YOU@GMAIL.COM\n"
	           "                           send a test message and follow "
	           "it\n", path, s.domain, path, path, path);
	if (!b.data) {
		ctl_err("out of memory");
		return -ENOMEM;
	}
	fwrite(b.data, 1, b.len, stdout);
	buf_free(&b);
	return 0;
}
