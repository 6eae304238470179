/*
 * tools/ctl_dkim.c - relayctl dkim keygen | show | rotate (issue 10 §1-2):
 * writes new private keys safely (ctl_dkim_keygen, also for relayctl
 * setup), prints the dkim_key line and the DNS record to publish, lists
 * the configured keys with whether DNS serves a matching record (through
 * dns/ on dns_servers, tools/ctl_dns.c), and walks an operator through a
 * key rotation. relayctl never edits relayd.conf: it prints the lines to
 * add or remove. Keys themselves: dkim/dkim_key.c.
 */
#include "tools/ctl_dkim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "tools/ctl.h"
#include "tools/ctl_dns.h"

/* ---- writing a new key ------------------------------------------------- */

/* Opens dir (made 0700, chowned when asked, if missing; its parent must
 * exist), never through a symbolic link, and refuses a directory others
 * may write to: they could swap the key after it is written. */
static int keydir_open(const char *dir, uid_t uid, gid_t gid, char *err,
                       size_t errlen)
{
	bool made = false;
	if (mkdir(dir, 0700) == 0)
		made = true;
	else if (errno != EEXIST) {
		int e = errno;
		dkim_errf(err, errlen, "cannot make the key directory %s: %s", dir,
		          strerror(e));
		return -e;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		int e = errno;
		dkim_errf(err, errlen, "%s: %s", dir, e == ELOOP || e == ENOTDIR ?
		          "not a directory (or a symbolic link)" : strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(dfd, &st) < 0) {
		int e = errno;
		dkim_errf(err, errlen, "%s: %s", dir, strerror(e));
		close(dfd);
		return -e;
	}
	if ((st.st_mode & S_IWOTH) ||
	    ((st.st_mode & S_IWGRP) && !made)) {
		dkim_errf(err, errlen, "%s: writable by %s (mode %04o); keys go in a "
		          "directory only root or relayd's user can write",
		          dir, st.st_mode & S_IWOTH ? "every user" : "its group",
		          (unsigned)(st.st_mode & 07777));
		close(dfd);
		return -EPERM;
	}
	if (made && uid != (uid_t)-1 && fchown(dfd, uid, gid) < 0) {
		int e = errno;
		dkim_errf(err, errlen, "%s: chown: %s", dir, strerror(e));
		close(dfd);
		return -e;
	}
	return dfd;
}

int ctl_dkim_keygen(const char *domain, const char *selector,
                    enum dkim_alg alg, unsigned bits, const char *dir,
                    uid_t uid, gid_t gid, char *path_out, size_t pathlen,
                    char *err, size_t errlen)
{
	struct dkim_key_spec spec;
	char line[600], absdir[PATH_MAX], name[400];
	int r;

	/* The same checks as a dkim_key line (domain and selector). */
	if (strlen(domain) > 253 || strlen(selector) > 63) {
		dkim_errf(err, errlen, "the %s is too long", strlen(domain) > 253 ?
		          "domain" : "selector");
		return -EINVAL;
	}
	snprintf(line, sizeof line, "%s %s /", domain, selector);
	if (strpbrk(domain, " \t") || strpbrk(selector, " \t") ||
	    (r = dkim_key_parse_line(line, &spec, err, errlen)) < 0) {
		if (strpbrk(domain, " \t") || strpbrk(selector, " \t"))
			dkim_errf(err, errlen, "the domain and selector may not hold "
			          "blanks");
		else if (err && errlen > strlen("dkim_key: ") &&
		         strncmp(err, "dkim_key: ", 10) == 0)
			memmove(err, err + 10, strlen(err + 10) + 1);
		return -EINVAL;
	}
	if (alg == DKIM_ALG_RSA &&
	    (bits < DKIM_RSA_BITS_MIN || bits > DKIM_RSA_BITS_MAX)) {
		dkim_errf(err, errlen, "RSA keys are %d to %d bits (2048 is the usual "
		          "size)", DKIM_RSA_BITS_MIN, DKIM_RSA_BITS_MAX);
		return -EINVAL;
	}

	/* The path goes into relayd.conf, which wants it absolute. */
	if (!dir || !dir[0])
		dir = CTL_DKIM_DIR;
	if (dir[0] == '/') {
		if (snprintf(absdir, sizeof absdir, "%s", dir) >= (int)sizeof absdir)
			goto toolong;
	} else {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof cwd)) {
			int e = errno;
			dkim_errf(err, errlen, "getcwd: %s", strerror(e));
			return -e;
		}
		if (snprintf(absdir, sizeof absdir, "%s/%s", cwd, dir) >=
		    (int)sizeof absdir)
			goto toolong;
	}
	size_t dl = strlen(absdir);
	while (dl > 1 && absdir[dl - 1] == '/')
		absdir[--dl] = '\0';
	snprintf(name, sizeof name, "%s.%s.key", spec.domain, spec.selector);
	if (dl + 1 + strlen(name) >= pathlen ||
	    dl + 1 + strlen(name) >= sizeof spec.path)
		goto toolong;
	snprintf(path_out, pathlen, "%s%s%s", absdir, dl > 1 ? "/" : "", name);

	int dfd = keydir_open(absdir, uid, gid, err, errlen);
	if (dfd < 0)
		return dfd;
	char *pem = NULL;
	size_t plen = 0;
	if ((r = dkim_key_generate(alg, bits, &pem, &plen, err, errlen)) < 0) {
		close(dfd);
		return r;
	}
	/* O_EXCL|O_NOFOLLOW: never over an existing file, never through a
	 * link; 0600 from the start, so the key is never readable by others
	 * even for a moment; chowned before a byte of it is written. */
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
	                O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		if (r == -EEXIST)
			dkim_errf(err, errlen, "%s exists; it was left alone (choose "
			          "another selector, or remove the file if it is "
			          "unused)", path_out);
		else
			dkim_errf(err, errlen, "%s: %s", path_out, strerror(-r));
		goto out;
	}
	if ((uid != (uid_t)-1 && fchown(fd, uid, gid) < 0) ||
	    fchmod(fd, 0600) < 0) {
		r = -errno;
		dkim_errf(err, errlen, "%s: chown/chmod: %s", path_out, strerror(-r));
		goto fail;
	}
	for (size_t off = 0; off < plen;) {
		ssize_t w = write(fd, pem + off, plen - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = w < 0 ? -errno : -EIO;
			dkim_errf(err, errlen, "writing %s: %s", path_out, strerror(-r));
			goto fail;
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0) {
		r = -errno;
		dkim_errf(err, errlen, "fsync %s: %s", path_out, strerror(-r));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		dkim_errf(err, errlen, "close %s: %s", path_out, strerror(-r));
		goto fail;
	}
	fd = -1;
	/* The new name is durable too. */
	if (fsync(dfd) < 0) {
		r = -errno;
		dkim_errf(err, errlen, "fsync %s: %s", absdir, strerror(-r));
		goto fail;
	}
	r = 0;
	goto out;
fail:
	if (fd >= 0)
		close(fd);
	unlinkat(dfd, name, 0);
out:
	close(dfd);
	if (pem) {
		memset(pem, 0, plen);
		free(pem);
	}
	return r;
toolong:
	dkim_errf(err, errlen, "the key directory's path is too long");
	return -ENAMETOOLONG;
}

/* ---- what to publish ----------------------------------------------------- */

void ctl_dkim_txt_name(const struct dkim_key_spec *s, char *out, size_t n)
{
	snprintf(out, n, "%s._domainkey.%s", s->selector, s->domain);
}

char *ctl_dkim_zone_strings(const char *record)
{
	size_t n = strlen(record);
	/* quotes and a space per chunk; the record has no '"' or '\\' */
	size_t cap = n + (n / CTL_DKIM_TXT_CHUNK + 1) * 3 + 1;
	char *s = malloc(cap), *w = s;
	if (!s)
		return NULL;
	for (size_t i = 0; i < n || i == 0; i += CTL_DKIM_TXT_CHUNK) {
		size_t k = n - i < CTL_DKIM_TXT_CHUNK ? n - i : CTL_DKIM_TXT_CHUNK;
		if (i)
			*w++ = ' ';
		*w++ = '"';
		memcpy(w, record + i, k);
		w += k;
		*w++ = '"';
		if (n == 0)
			break;
	}
	*w = '\0';
	return s;
}

void ctl_dkim_out_dns(struct ctl_out *o, const struct dkim_key *k,
                      const char *indent)
{
	char name[330];
	char *rec = dkim_key_record(k);
	char *zone = rec ? ctl_dkim_zone_strings(rec) : NULL;
	if (!zone) {
		free(rec);
		o->err = o->err ? o->err : -ENOMEM;
		return;
	}
	ctl_dkim_txt_name(&k->spec, name, sizeof name);
	ctl_out_printf(o, "%szone file:\n%s  %s. IN TXT ( %s )\n", indent, indent,
	               name, zone);
	ctl_out_printf(o, "%sweb DNS panel (type TXT; the value as one "
	               "string):\n", indent);
	ctl_out_printf(o, "%s  name:  %s._domainkey  (%s)\n", indent,
	               k->spec.selector, name);
	ctl_out_printf(o, "%s  value: %s\n", indent, rec);
	free(zone);
	free(rec);
}

/* ---- relayctl dkim ------------------------------------------------------- */

/* A user-typed word made safe for the terminal. */
static const char *esc(char *dst, size_t n, const char *s)
{
	return log_escape(dst, n, s, strlen(s));
}

/* --type and --bits. */
static int opt_alg(const struct ctl_ctx *c, enum dkim_alg dflt,
                   enum dkim_alg *alg, unsigned *bits)
{
	char e[128];
	const char *t = ctl_opt(c, "--type"), *b = ctl_opt(c, "--bits");
	*alg = dflt;
	if (t && strcmp(t, "rsa") == 0)
		*alg = DKIM_ALG_RSA;
	else if (t && strcmp(t, "ed25519") == 0)
		*alg = DKIM_ALG_ED25519;
	else if (t)
		return ctl_usage_error("--type is rsa or ed25519, not '%s'",
		                       esc(e, sizeof e, t));
	*bits = CTL_DKIM_RSA_BITS;
	if (b) {
		char *end;
		errno = 0;
		unsigned long v = strtoul(b, &end, 10);
		if (*alg != DKIM_ALG_RSA)
			return ctl_usage_error("--bits is for RSA keys (an Ed25519 "
			                       "key has no size to choose)");
		if (!b[0] || *end || errno || b[0] == '-' ||
		    v < DKIM_RSA_BITS_MIN || v > DKIM_RSA_BITS_MAX)
			return ctl_usage_error("--bits is %d to %d for RSA (2048 is "
			                       "the usual size), not '%s'",
			                       DKIM_RSA_BITS_MIN, DKIM_RSA_BITS_MAX,
			                       esc(e, sizeof e, b));
		*bits = (unsigned)v;
	}
	return 0;
}

/* Whom the key file should belong to: relayd's `user` when relayctl runs
 * as root (relayd reads its keys after dropping root), else nobody in
 * particular (the caller's own file). */
static int key_owner(const struct ctl_ctx *c, uid_t *uid, gid_t *gid,
                     const char **who)
{
	*uid = (uid_t)-1;
	*gid = (gid_t)-1;
	*who = NULL;
	if (geteuid() != 0)
		return 0;
	const char *user = c->conf.user && c->conf.user[0] ? c->conf.user :
	                   "relayd";
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		char e[128];
		ctl_err("relayd's user '%s' (the `user` key) has no account here, "
		        "so the key cannot be given to it; create the account "
		        "(make install does) or set `user`", esc(e, sizeof e, user));
		return -ENOENT;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	*who = user;
	return 0;
}

/* Generates, writes and loads back a key; prints where it went. */
static int keygen_write(struct ctl_ctx *c, struct ctl_out *o,
                        const char *domain, const char *selector,
                        enum dkim_alg alg, unsigned bits, const char *dir,
                        struct dkim_key **out)
{
	char path[4096], err[512];
	uid_t uid;
	gid_t gid;
	const char *who;
	int r;
	*out = NULL;
	if ((r = key_owner(c, &uid, &gid, &who)) < 0)
		return r;
	r = ctl_dkim_keygen(domain, selector, alg, bits, dir, uid, gid, path,
	                    sizeof path, err, sizeof err);
	if (r < 0) {
		ctl_err("%s", err);
		return r;
	}
	struct dkim_key_spec spec;
	char line[4500];
	snprintf(line, sizeof line, "%s %s %s", domain, selector, path);
	if ((r = dkim_key_parse_line(line, &spec, err, sizeof err)) < 0 ||
	    (r = dkim_key_load(&spec, out, err, sizeof err)) < 0) {
		ctl_err("the new key does not load back: %s", err);
		return r;
	}
	ctl_out_printf(o, "Wrote the private key %s (%s, %u bits, mode 0600%s%s).\n",
	               path, dkim_alg_name(alg), (*out)->bits, who ? ", owner " : "",
	               who ? who : "");
	return 0;
}

static void out_conf_line(struct ctl_out *o, const struct dkim_key *k,
                          const char *indent)
{
	ctl_out_printf(o, "%sdkim_key = %s %s %s\n", indent, k->spec.domain,
	               k->spec.selector, k->spec.path);
}

static int dkim_keygen(struct ctl_ctx *c, int argc, char **argv)
{
	enum dkim_alg alg;
	unsigned bits;
	struct ctl_out o;
	struct dkim_key *k;
	int r;
	if (argc != 3)
		return ctl_usage_error("usage: " CTL_PROG " dkim keygen DOMAIN "
		                       "SELECTOR [--type rsa|ed25519] [--bits N] "
		                       "[--dir DIR]");
	if (c->json)
		return ctl_usage_error("'dkim keygen' has no --json output");
	if (ctl_opt(c, "--selector") || ctl_opt(c, "--check") ||
	    ctl_opt(c, "--retire"))
		return ctl_usage_error("'dkim keygen' takes --type, --bits and "
		                       "--dir; --selector, --check and --retire are "
		                       "for 'dkim rotate'");
	if ((r = opt_alg(c, DKIM_ALG_RSA, &alg, &bits)) != 0)
		return r;
	ctl_out_init(&o);
	r = keygen_write(c, &o, argv[1], argv[2], alg, bits, ctl_opt(c, "--dir"),
	                 &k);
	if (r == 0) {
		ctl_out_printf(&o, "\n1. Add this line to relayd.conf (after any "
		               "other dkim_key line for %s\n   with the same "
		               "algorithm: the last one signs):\n", k->spec.domain);
		out_conf_line(&o, k, "   ");
		ctl_out_printf(&o, "\n2. Publish this TXT record in %s's DNS:\n",
		               k->spec.domain);
		ctl_dkim_out_dns(&o, k, "   ");
		ctl_out_printf(&o, "\n3. Once DNS serves it (" CTL_PROG " dkim show "
		               "says \"dns: ok\"), reload relayd\n   (systemctl "
		               "reload relayd, or kill -HUP its pid).\n");
		r = ctl_out_flush(&o, stdout);
		if (r < 0)
			ctl_err("writing to stdout: %s", strerror(-r));
	}
	dkim_key_free(k);
	ctl_out_free(&o);
	return r;
}

/* ---- what DNS serves ------------------------------------------------------ */

enum dns_state { DS_OK, DS_TESTING, DS_MISMATCH, DS_MISSING, DS_INVALID,
                 DS_ERROR, DS__COUNT };
static const char *const dns_state_names[DS__COUNT] = {
	"ok", "ok", "mismatch", "missing", "invalid", "error",
};

struct dns_check {
	const struct dkim_key *k;
	enum dns_state state;
	char why[300];
};

/* Among the TXT records at the name: one that is k's key wins; else the
 * first record's reason (not a DKIM record, another key, ...). */
static void dns_check_cb(void *arg, const struct dns_result *res)
{
	struct dns_check *d = arg;
	if (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA) {
		d->state = DS_MISSING;
		snprintf(d->why, sizeof d->why, "no TXT record at %s (%s)",
		         res->qname ? res->qname : "the name",
		         dns_status_names[res->status]);
		return;
	}
	if (res->status != DNS_OK) {
		d->state = DS_ERROR;
		snprintf(d->why, sizeof d->why, "DNS lookup failed: %s",
		         dns_status_names[res->status]);
		return;
	}
	d->state = DS_MISSING;
	snprintf(d->why, sizeof d->why, "no TXT record");
	for (size_t i = 0; i < res->nrr; i++) {
		const struct dns_rr *rr = &res->rr[i];
		if (rr->type != DNS_T_TXT || !rr->txt)
			continue;
		char why[256];
		int r = dkim_key_match(d->k, rr->txt, rr->txtlen, why, sizeof why);
		enum dns_state st = r == 0 ? (why[0] ? DS_TESTING : DS_OK) :
		                    r == 1 ? DS_MISMATCH : DS_INVALID;
		if (st <= DS_TESTING || d->state == DS_MISSING) {
			d->state = st;
			snprintf(d->why, sizeof d->why, "%s", why);
		}
		if (st <= DS_TESTING)
			break;
	}
}

static void dns_check(struct ctl_dns *cd, const struct dkim_key *k,
                      struct dns_check *d)
{
	char name[330];
	memset(d, 0, sizeof *d);
	d->k = k;
	d->state = DS_ERROR;
	ctl_dkim_txt_name(&k->spec, name, sizeof name);
	int r = ctl_dns_lookup(cd, name, DNS_T_TXT, dns_check_cb, d);
	if (r < 0 && d->why[0] == '\0')
		snprintf(d->why, sizeof d->why, "DNS lookup failed: %s",
		         strerror(-r));
}

/* ---- relayctl dkim show ------------------------------------------------- */

struct shown {
	struct dkim_key_spec spec;
	struct dkim_key *k;      /* NULL: did not load (err) */
	char err[512];
	bool active;
	struct dns_check dns;
};

/* The configured keys, loaded, with their active flags: the last loaded
 * line of each domain and algorithm (relayd's rule, dkim/dkim.h). */
static struct shown *conf_keys(const struct ctl_ctx *c, size_t *n)
{
	size_t nk = c->conf.ndkim_keys;
	struct shown *s = calloc(nk ? nk : 1, sizeof *s);
	*n = 0;
	if (!s)
		return NULL;
	for (size_t i = 0; i < nk; i++) {
		if (dkim_key_parse_line(c->conf.dkim_keys[i], &s[i].spec, s[i].err,
		                        sizeof s[i].err) == 0 &&
		    dkim_key_load(&s[i].spec, &s[i].k, s[i].err,
		                  sizeof s[i].err) == -EACCES) {
			size_t l = strlen(s[i].err);
			snprintf(s[i].err + l, sizeof s[i].err - l, " (run relayctl "
			         "as root or as relayd's user)");
		}
	}
	for (size_t i = 0; i < nk; i++) {
		if (!s[i].k)
			continue;
		s[i].active = true;
		for (size_t j = i + 1; j < nk; j++)
			if (s[j].k && s[j].k->alg == s[i].k->alg &&
			    strcmp(s[j].spec.domain, s[i].spec.domain) == 0)
				s[i].active = false;
	}
	*n = nk;
	return s;
}

static void conf_keys_free(struct shown *s, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		dkim_key_free(s[i].k);
	free(s);
}

static void show_json(struct ctl_out *o, const struct shown *s, size_t n)
{
	ctl_out_str(o, "[");
	for (size_t i = 0; i < n; i++) {
		const struct shown *e = &s[i];
		ctl_out_str(o, i ? ",\n {" : "{");
		ctl_out_str(o, "\"domain\":");
		ctl_out_json_strz(o, e->spec.domain);
		ctl_out_str(o, ",\"selector\":");
		ctl_out_json_strz(o, e->spec.selector);
		ctl_out_str(o, ",\"path\":");
		ctl_out_json_strz(o, e->spec.path);
		if (!e->k) {
			ctl_out_str(o, ",\"error\":");
			ctl_out_json_strz(o, e->err);
			ctl_out_str(o, "}");
			continue;
		}
		char *rec = dkim_key_record(e->k);
		ctl_out_printf(o, ",\"alg\":\"%s\",\"bits\":%u,\"weak\":%s,"
		               "\"active\":%s,\"record\":", dkim_alg_name(e->k->alg),
		               e->k->bits, e->k->weak ? "true" : "false",
		               e->active ? "true" : "false");
		ctl_out_json_strz(o, rec);
		free(rec);
		ctl_out_printf(o, ",\"dns\":\"%s\",\"dns_detail\":",
		               dns_state_names[e->dns.state]);
		ctl_out_json_strz(o, e->dns.why);
		ctl_out_str(o, "}");
	}
	ctl_out_str(o, "]\n");
}

static void show_text(struct ctl_out *o, const struct shown *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct shown *e = &s[i];
		char name[330];
		ctl_dkim_txt_name(&e->spec, name, sizeof name);
		if (i)
			ctl_out_str(o, "\n");
		ctl_out_printf(o, "%s %s", e->spec.domain, e->spec.selector);
		if (!e->k) {
			ctl_out_str(o, "  (does not load)\n  error:  ");
			ctl_out_text(o, e->err, strlen(e->err), 0);
			ctl_out_printf(o, "\n  file:   %s\n", e->spec.path);
			continue;
		}
		ctl_out_printf(o, "  %s %u bits%s, %s\n", dkim_alg_name(e->k->alg),
		               e->k->bits, e->k->weak ? " (weak: use 2048)" : "",
		               e->active ? "active (signs)" : "inactive (a later "
		               "line for this domain and algorithm signs)");
		ctl_out_printf(o, "  file:   %s\n", e->spec.path);
		ctl_out_printf(o, "  dns:    %s", dns_state_names[e->dns.state]);
		if (e->dns.why[0]) {
			ctl_out_str(o, " (");
			ctl_out_text(o, e->dns.why, strlen(e->dns.why), 0);
			ctl_out_str(o, ")");
		}
		ctl_out_str(o, "\n");
		if (e->dns.state > DS_TESTING) {
			ctl_out_printf(o, "  publish at %s:\n", name);
			ctl_dkim_out_dns(o, e->k, "  ");
		} else {
			char *rec = dkim_key_record(e->k);
			ctl_out_printf(o, "  record: %s. TXT \"%s\"\n", name,
			               rec ? rec : "");
			free(rec);
		}
	}
}

static int dkim_show(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argv;
	struct ctl_dns *cd = NULL;
	struct ctl_out o;
	char err[512];
	size_t n;
	int r = 0;
	if (argc != 1)
		return ctl_usage_error("usage: " CTL_PROG " dkim show [--json]");
	if (c->nopts)
		return ctl_usage_error("'dkim show' takes no option but --json");
	struct shown *s = conf_keys(c, &n);
	if (!s) {
		ctl_err("out of memory");
		return -ENOMEM;
	}
	if (n == 0 && !c->json) {
		printf("No dkim_key lines in %s: relayd signs nothing.\n"
		       "Make a key with: " CTL_PROG " dkim keygen DOMAIN SELECTOR\n",
		       c->conf_path);
		free(s);
		return 0;
	}
	bool any = false;
	for (size_t i = 0; i < n; i++)
		any |= s[i].k != NULL;
	if (any && (r = ctl_dns_open(&c->conf, &cd, err, sizeof err)) < 0) {
		ctl_err("DNS: %s", err);
		conf_keys_free(s, n);
		return r;
	}
	for (size_t i = 0; i < n; i++)
		if (s[i].k)
			dns_check(cd, s[i].k, &s[i].dns);
	ctl_dns_close(cd);
	ctl_out_init(&o);
	if (c->json)
		show_json(&o, s, n);
	else
		show_text(&o, s, n);
	r = ctl_out_flush(&o, stdout);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	/* Exit 1 when a key does not load or DNS does not serve it. */
	for (size_t i = 0; r == 0 && i < n; i++)
		if (!s[i].k || s[i].dns.state > DS_TESTING)
			r = -EAGAIN;
	ctl_out_free(&o);
	conf_keys_free(s, n);
	return r;
}

/* ---- relayctl dkim rotate ------------------------------------------------ */

/* The hours messages may stay queued (and be retried), rounded up. */
static unsigned queue_days(const struct ctl_ctx *c)
{
	uint64_t ms = c->conf.max_queue_lifetime;
	return (unsigned)((ms + 86400000ull - 1) / 86400000ull);
}

/* The active key of domain for alg among s[0..n), or NULL. */
static const struct shown *active_key(const struct shown *s, size_t n,
                                      const char *domain, int alg)
{
	for (size_t i = 0; i < n; i++)
		if (s[i].k && s[i].active && (alg < 0 || (int)s[i].k->alg == alg) &&
		    strcmp(s[i].spec.domain, domain) == 0)
			return &s[i];
	return NULL;
}

/* DOMAIN, lower-cased and checked as a dkim_key line would. */
static int rotate_domain(const char *arg, char *dom, size_t n)
{
	struct dkim_key_spec spec;
	char line[400], err[300], e[300];
	if (strlen(arg) > 253 || strpbrk(arg, " \t")) {
		return ctl_usage_error("not a domain: '%s'", esc(e, sizeof e, arg));
	}
	snprintf(line, sizeof line, "%s s /", arg);
	if (dkim_key_parse_line(line, &spec, err, sizeof err) < 0)
		return ctl_usage_error("%s", err);
	snprintf(dom, n, "%s", spec.domain);
	return 0;
}

static int rotate_new(struct ctl_ctx *c, const char *dom,
                      const struct shown *s, size_t n)
{
	enum dkim_alg alg;
	unsigned bits;
	char sel[64], dir[4096];
	struct ctl_out o;
	struct dkim_key *k;
	int r;
	/* The type: --type, else that of the domain's active key (RSA first),
	 * else RSA. */
	const struct shown *cur = active_key(s, n, dom, DKIM_ALG_RSA);
	if (!cur)
		cur = active_key(s, n, dom, -1);
	if ((r = opt_alg(c, cur ? cur->k->alg : DKIM_ALG_RSA, &alg, &bits)) != 0)
		return r;
	cur = active_key(s, n, dom, (int)alg);
	if (!ctl_opt(c, "--bits") && cur && alg == DKIM_ALG_RSA &&
	    cur->k->bits > bits)
		bits = cur->k->bits;
	/* A dated selector, s20261205: it says when the key came in. */
	const char *osel = ctl_opt(c, "--selector");
	if (osel) {
		snprintf(sel, sizeof sel, "%s", osel);
	} else {
		struct tm tm;
		time_t now = (time_t)c->now;
		gmtime_r(&now, &tm);
		strftime(sel, sizeof sel, "s%Y%m%d", &tm);
	}
	/* The directory: --dir, else the current key's, else the default. */
	const char *odir = ctl_opt(c, "--dir");
	if (odir) {
		snprintf(dir, sizeof dir, "%s", odir);
	} else if (cur) {
		snprintf(dir, sizeof dir, "%s", cur->spec.path);
		*strrchr(dir, '/') = '\0';
		if (!dir[0])
			strcpy(dir, "/");
	} else {
		snprintf(dir, sizeof dir, "%s", CTL_DKIM_DIR);
	}
	for (size_t i = 0; i < n; i++)
		if (strcmp(s[i].spec.domain, dom) == 0 &&
		    strcmp(s[i].spec.selector, sel) == 0) {
			ctl_err("%s already has a dkim_key line with selector %s; "
			        "choose another with --selector", dom, sel);
			return -EEXIST;
		}
	ctl_out_init(&o);
	r = keygen_write(c, &o, dom, sel, alg, bits, dir, &k);
	if (r == 0) {
		ctl_out_printf(&o, "\nStep 1 of 3: publish the new key's record "
		               "in %s's DNS:\n", dom);
		ctl_dkim_out_dns(&o, k, "   ");
		ctl_out_printf(&o, "\nKeep signing with the current key "
		               "(%s) meanwhile; do not change relayd.conf yet.\n",
		               cur ? cur->spec.selector : "none configured");
		ctl_out_printf(&o, "\nNext, once the record is published (DNS "
		               "caches may take up to its TTL):\n   " CTL_PROG
		               " dkim rotate %s --check --selector %s%s%s\n", dom, sel,
		               odir ? " --dir " : "", odir ? odir : "");
		r = ctl_out_flush(&o, stdout);
	}
	dkim_key_free(k);
	ctl_out_free(&o);
	return r;
}

static int rotate_check(struct ctl_ctx *c, const char *dom,
                        const struct shown *s, size_t n)
{
	const char *sel = ctl_opt(c, "--selector");
	char dir[4096], path[4500], line[4700], err[512];
	struct dkim_key_spec spec;
	struct dkim_key *k = NULL;
	struct ctl_dns *cd;
	struct dns_check d;
	int r;
	if (!sel || !sel[0])
		return ctl_usage_error("--check needs --selector S: the new "
		                       "selector 'dkim rotate %s' printed", dom);
	/* The new key: configured already, or in the directory rotate used. */
	const struct shown *conf = NULL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(s[i].spec.domain, dom) == 0 &&
		    strcmp(s[i].spec.selector, sel) == 0)
			conf = &s[i];
	if (conf) {
		snprintf(path, sizeof path, "%s", conf->spec.path);
	} else {
		const char *odir = ctl_opt(c, "--dir");
		const struct shown *cur = active_key(s, n, dom, -1);
		snprintf(dir, sizeof dir, "%s", odir ? odir : cur ? cur->spec.path :
		         CTL_DKIM_DIR);
		if (!odir && cur)
			*strrchr(dir, '/') = '\0';
		snprintf(path, sizeof path, "%s/%s.%s.key", dir, dom, sel);
	}
	snprintf(line, sizeof line, "%s %s %s", dom, sel, path);
	if ((r = dkim_key_parse_line(line, &spec, err, sizeof err)) < 0 ||
	    (r = dkim_key_load(&spec, &k, err, sizeof err)) < 0) {
		ctl_err("the new key: %s", err);
		return r;
	}
	if ((r = ctl_dns_open(&c->conf, &cd, err, sizeof err)) < 0) {
		ctl_err("DNS: %s", err);
		dkim_key_free(k);
		return r;
	}
	dns_check(cd, k, &d);
	ctl_dns_close(cd);
	char name[330];
	ctl_dkim_txt_name(&k->spec, name, sizeof name);
	struct ctl_out o;
	ctl_out_init(&o);
	if (d.state > DS_TESTING) {
		ctl_out_printf(&o, "Step 2 of 3: not yet. DNS at %s: %s", name,
		               dns_state_names[d.state]);
		if (d.why[0]) {
			ctl_out_str(&o, " (");
			ctl_out_text(&o, d.why, strlen(d.why), 0);
			ctl_out_str(&o, ")");
		}
		ctl_out_str(&o, ".\nIt should serve:\n");
		ctl_dkim_out_dns(&o, k, "   ");
		ctl_out_printf(&o, "Run this again once it does; keep the current "
		               "key meanwhile.\n");
		r = -EAGAIN;
	} else if (conf && conf->active) {
		ctl_out_printf(&o, "DNS serves the new key at %s, and it is the "
		               "active key for %s already.\n"
		               "Step 3 of 3, in %u days or more: retire the old "
		               "key:\n   " CTL_PROG " dkim rotate %s --retire "
		               "OLD_SELECTOR\n", name, dom, queue_days(c) + 2, dom);
	} else {
		ctl_out_printf(&o, "Step 2 of 3: DNS serves the new key at %s.\n\n"
		               "Switch: add this line to relayd.conf AFTER the "
		               "current dkim_key line(s) for %s\n(the last line of "
		               "a domain and algorithm signs; keep the old line for "
		               "now):\n", name, dom);
		out_conf_line(&o, k, "   ");
		ctl_out_printf(&o, "then reload relayd (systemctl reload relayd, "
		               "or kill -HUP its pid) and check:\n   " CTL_PROG
		               " dkim show\n");
		const struct shown *cur = active_key(s, n, dom, (int)k->alg);
		if (cur)
			ctl_out_printf(&o, "\nStep 3 of 3, in %u days or more: retire "
			               "the old key:\n   " CTL_PROG " dkim rotate %s "
			               "--retire %s\n", queue_days(c) + 2, dom,
			               cur->spec.selector);
	}
	int w = ctl_out_flush(&o, stdout);
	ctl_out_free(&o);
	dkim_key_free(k);
	return w < 0 ? w : r;
}

static int rotate_retire(struct ctl_ctx *c, const char *dom,
                         const struct shown *s, size_t n)
{
	const char *sel = ctl_opt(c, "--retire");
	char e[128];
	const struct shown *old = NULL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(s[i].spec.domain, dom) == 0 &&
		    strcmp(s[i].spec.selector, sel) == 0)
			old = &s[i];
	if (!old) {
		ctl_err("%s has no dkim_key line with selector '%s' (see "
		        CTL_PROG " dkim show)", dom, esc(e, sizeof e, sel));
		return -ENOENT;
	}
	if (old->k && old->active) {
		ctl_err("%s %s is the active key: it still signs. Rotate first ("
		        CTL_PROG " dkim rotate %s), then retire it", dom, old->spec.selector,
		        dom);
		return -EBUSY;
	}
	char name[330];
	ctl_dkim_txt_name(&old->spec, name, sizeof name);
	unsigned days = queue_days(c) + 2;
	struct ctl_out o;
	ctl_out_init(&o);
	ctl_out_printf(&o, "Step 3 of 3: retire %s %s.\n\n"
	               "1. Now: remove this line from relayd.conf and reload "
	               "relayd:\n   dkim_key = %s\n\n", dom, old->spec.selector,
	               c->conf.dkim_keys[(size_t)(old - s)]);
	ctl_out_printf(&o, "2. Not before %u days after that reload: delete the "
	               "TXT record %s\n   and the key file %s.\n"
	               "   Why wait: mail signed with the old key may still be "
	               "queued here and retried\n   for up to max_queue_lifetime "
	               "(%u days), and receivers verify it when it arrives;\n"
	               "   removing the record earlier makes that mail fail "
	               "DKIM. Two days of margin\n   cover DNS caches and slow "
	               "receivers.\n", days, name, old->spec.path, days - 2);
	int r = ctl_out_flush(&o, stdout);
	ctl_out_free(&o);
	return r;
}

static int dkim_rotate(struct ctl_ctx *c, int argc, char **argv)
{
	char dom[254];
	size_t n;
	int r;
	if (argc != 2)
		return ctl_usage_error("usage: " CTL_PROG " dkim rotate DOMAIN "
		                       "[--type rsa|ed25519] [--bits N] [--selector S]"
		                       " [--dir DIR] | --check --selector S | "
		                       "--retire SELECTOR");
	if (c->json)
		return ctl_usage_error("'dkim rotate' has no --json output");
	if ((r = rotate_domain(argv[1], dom, sizeof dom)) != 0)
		return r;
	bool check = ctl_opt(c, "--check") != NULL;
	bool retire = ctl_opt(c, "--retire") != NULL;
	if (check && retire)
		return ctl_usage_error("--check and --retire are separate steps");
	if (retire && (ctl_opt(c, "--type") || ctl_opt(c, "--bits") ||
	               ctl_opt(c, "--selector") || ctl_opt(c, "--dir")))
		return ctl_usage_error("--retire SELECTOR takes no other option");
	if (check && (ctl_opt(c, "--type") || ctl_opt(c, "--bits")))
		return ctl_usage_error("--check takes --selector (and --dir), not "
		                       "--type or --bits");
	struct shown *s = conf_keys(c, &n);
	if (!s) {
		ctl_err("out of memory");
		return -ENOMEM;
	}
	r = check ? rotate_check(c, dom, s, n) :
	    retire ? rotate_retire(c, dom, s, n) : rotate_new(c, dom, s, n);
	conf_keys_free(s, n);
	return r;
}

int ctl_cmd_dkim(struct ctl_ctx *c, int argc, char **argv)
{
	char e[128];
	if (strcmp(argv[0], "keygen") == 0)
		return dkim_keygen(c, argc, argv);
	if (strcmp(argv[0], "show") == 0)
		return dkim_show(c, argc, argv);
	if (strcmp(argv[0], "rotate") == 0)
		return dkim_rotate(c, argc, argv);
	return ctl_usage_error("unknown dkim subcommand '%s' (keygen, show, "
	                       "rotate)", esc(e, sizeof e, argv[0]));
}
