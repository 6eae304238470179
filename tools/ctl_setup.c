/*
 * tools/ctl_setup.c - `relayctl setup smarthost|direct` (issue 10 §4):
 * writes a working relayd configuration for one of the two ways of
 * sending, from flags (or, on a terminal, questions for what is missing),
 * and says what to do next. smarthost: stores the password (0600, owned
 * by relayd's account when run as root) and checks the login against the
 * provider with relayd's own client core (tools/ctl_smtp.c: connect,
 * EHLO, TLS, AUTH, QUIT; no mail). direct: generates the DKIM key and
 * prints every DNS record to publish.
 *
 * Files are written as a temporary file, fsynced, then renamed into
 * place; an existing file is never replaced without --force
 * (renameat2 RENAME_NOREPLACE, so not even a racing writer's).
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "tools/ctl_smtp.h"

/* The smarthost password: first line of its file, as relayd reads it
 * (deliver/deliver_conf.c reads at most 1023 bytes of it). */
#define CTL_SH_PASSWORD_MAX 1000
/* Default limit of the login check's steps (connect, each reply). */
#define CTL_SETUP_TIMEOUT_MS 30000
/* Where relayd's log goes in a configuration setup writes: the path
 * contrib/relayd.logrotate rotates; send-test follows delivery there. */
#define CTL_SETUP_LOG "/var/log/relayd.log"

/* ---- writing files -------------------------------------------------------- */

/* The directory part of path ("." when none), into dir. */
void ctl_setup_dirname(const char *path, char *dir, size_t n)
{
	const char *sl = strrchr(path, '/');
	if (!sl)
		snprintf(dir, n, ".");
	else if (sl == path)
		snprintf(dir, n, "/");
	else
		snprintf(dir, n, "%.*s", (int)(sl - path), path);
}

/* Makes dir and its missing parents (as install -d: parents 0755, dir
 * itself mode). Prints its own error. */
int ctl_setup_mkdirs(const char *dir, mode_t mode)
{
	char p[PATH_MAX];
	if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) {
		ctl_err("%s: path too long", dir);
		return -ENAMETOOLONG;
	}
	for (char *sl = strchr(p + 1, '/'); sl; sl = strchr(sl + 1, '/')) {
		*sl = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			int e = errno;
			ctl_err("cannot make the directory %s: %s", p, strerror(e));
			return -e;
		}
		*sl = '/';
	}
	if (mkdir(p, mode) < 0 && errno != EEXIST) {
		int e = errno;
		ctl_err("cannot make the directory %s: %s", p, strerror(e));
		return -e;
	}
	return 0;
}

/* Makes path's directory (and parents, 0755) when it is missing. */
static int ctl_ensure_dir(const char *path)
{
	char dir[PATH_MAX];
	ctl_setup_dirname(path, dir, sizeof dir);
	return ctl_setup_mkdirs(dir, 0755);
}

/* Writes data to path through a temporary file in the same directory:
 * written, fchmod'ed to mode, fchown'ed to uid/gid (when uid != -1),
 * fsynced, renamed into place (never over an existing file unless
 * force), then the directory is fsynced. Prints its own errors. */
int ctl_setup_write_file(const char *path, const void *data, size_t n,
                          mode_t mode, uid_t uid, gid_t gid, bool force)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) {
		ctl_err("%s: path too long", path);
		return -ENAMETOOLONG;
	}
	int r = ctl_ensure_dir(path);
	if (r < 0)
		return r;
	/* mkstemp makes it 0600: a password is never readable by others,
	 * not even for a moment. */
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		ctl_err("cannot create a file next to %s: %s", path, strerror(-r));
		return r;
	}
	const char *p = data;
	size_t left = n;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			r = -errno;
			goto fail;
		}
		p += w;
		left -= (size_t)w;
	}
	if (uid != (uid_t)-1 && fchown(fd, uid, gid) < 0) {
		r = -errno;
		goto fail;
	}
	if (fchmod(fd, mode) < 0 || fsync(fd) < 0) {
		r = -errno;
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		goto fail;
	}
	fd = -1;
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path,
	              force ? 0 : RENAME_NOREPLACE) < 0) {
		r = -errno;
		goto fail;
	}
	ctl_setup_dirname(path, dir, sizeof dir);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	if (r == -EEXIST)
		ctl_err("%s exists; not replaced (--force replaces it)", path);
	else
		ctl_err("writing %s: %s", path, strerror(-r));
	return r;
}

/* --force over an existing configuration: the old one stays as
 * PATH.bak (a hard link, replacing an older .bak), so nothing the
 * operator wrote is lost. Prints what it did. */
int ctl_setup_backup(const char *path)
{
	char bak[PATH_MAX];
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	if (snprintf(bak, sizeof bak, "%s.bak", path) >= (int)sizeof bak)
		return 0;
	if ((unlink(bak) < 0 && errno != ENOENT) || link(path, bak) < 0) {
		int e = errno;
		ctl_err("cannot keep %s as %s: %s", path, bak, strerror(e));
		return -e;
	}
	printf("Kept the previous %s as %s.\n", path, bak);
	return 0;
}

/* Before anything is asked or checked: a file that exists stops setup
 * unless --force (the rename checks again, atomically). */
int ctl_setup_refuse_existing(const char *path, bool force)
{
	if (force || access(path, F_OK) != 0)
		return 0;
	ctl_err("%s exists; not replaced (--force replaces it)", path);
	return -EEXIST;
}

/* relayd's account (RELAYD_USER, else the `user` default), for the
 * owner of files relayd reads after dropping privileges. Only as root;
 * uid -1 otherwise or when the account is missing (then a warning). */
void ctl_setup_relayd_owner(uid_t *uid, gid_t *gid, const char *what)
{
	*uid = (uid_t)-1;
	*gid = (gid_t)-1;
	if (geteuid() != 0)
		return;
	const char *name = getenv("RELAYD_USER");
	if (!name || !name[0])
		name = "relayd";
	struct passwd *pw = getpwnam(name);
	if (!pw) {
		fprintf(stderr, CTL_PROG ": warning: there is no account %s yet: "
		        "%s stays root's; make the account (adduser --system "
		        "--group %s) and chown the file to it\n", name, what, name);
		return;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
}

/* ---- questions on a terminal ------------------------------------------------ */

/* opt's value; when missing and stdin is a terminal, the answer to
 * question (into ans; def when the answer is empty). NULL when neither. */
const char *ctl_setup_ask(const struct ctl_ctx *c, const char *opt,
                           const char *question, const char *def,
                           char *ans, size_t n)
{
	const char *v = ctl_opt(c, opt);
	if (v && v[0])
		return v;
	if (!isatty(STDIN_FILENO))
		return def;
	fprintf(stderr, "%s%s%s%s: ", question, def ? " [" : "", def ? def : "",
	        def ? "]" : "");
	fflush(stderr);
	if (!fgets(ans, (int)n, stdin))
		return def;
	ans[strcspn(ans, "\r\n")] = '\0';
	return ans[0] ? ans : def;
}

/* A value that goes on a configuration line: no line breaks, no '#'
 * (a comment would cut it), not empty. */
bool ctl_setup_value_ok(const char *v)
{
	return v && v[0] && !strpbrk(v, "\r\n#") &&
	       v[0] != ' ' && v[strlen(v) - 1] != ' ';
}

int ctl_setup_bad_value(const char *opt, const char *v)
{
	char esc[256];
	return ctl_usage_error("%s: bad value '%s'", opt,
	                       log_escape(esc, sizeof esc, v ? v : "",
	                                  v ? strlen(v) : 0));
}

/* The host's name for `hostname` when none is given. */
static void ctl_default_hostname(char *h, size_t n)
{
	if (gethostname(h, n) != 0 || !h[0])
		snprintf(h, n, "localhost");
	h[n - 1] = '\0';
}

static void ctl_now_text(char *t, size_t n)
{
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(t, n, "%Y-%m-%d %H:%M UTC", &tm);
}

/* The configuration path: --config, -c, else the default. */
const char *ctl_setup_path(const struct ctl_ctx *c)
{
	const char *p = ctl_opt(c, "--config");
	if (p && p[0])
		return p;
	return c->conf_path ? c->conf_path : CTL_DEFAULT_CONF;
}

static int ctl_parse_timeout(const struct ctl_ctx *c, int *ms)
{
	const char *t = ctl_opt(c, "--timeout");
	*ms = CTL_SETUP_TIMEOUT_MS;
	if (!t)
		return 0;
	uint64_t v;
	if (conf_parse_duration(t, &v) < 0 || v == 0 || v > 3600000)
		return ctl_setup_bad_value("--timeout", t);
	*ms = (int)v;
	return 0;
}

/* ---- setup smarthost ---------------------------------------------------------- */

struct ctl_sh {
	const char *host_port;
	char host[256];
	uint16_t port;
	enum conf_tls tls;          /* as written (AUTO allowed) */
	enum conf_tls tls_eff;      /* AUTO resolved */
	const char *tls_word;       /* --tls as given, or NULL */
	const char *tls_ca, *tls_name;
	bool verify;
	const char *user;
	char password[CTL_SH_PASSWORD_MAX + 2];
	const char *password_file;  /* the file the configuration names */
	bool password_given_file;   /* --password-file: read from it */
	const char *hostname;
	int timeout_ms;
};

/* Checks the login: EHLO, TLS, AUTH, QUIT. Prints each step's result. */
static int ctl_sh_check(const struct ctl_sh *s)
{
	char err[600] = "";
	SSL_CTX *ctx = NULL;
	const char *name = s->tls_name && s->tls_name[0] ? s->tls_name : s->host;
	if (s->tls_eff != CONF_TLS_NONE) {
		ctx = SSL_CTX_new(TLS_client_method());
		if (!ctx) {
			ctl_err("TLS: out of memory");
			return -ENOMEM;
		}
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
		/* As relayd (deliver/deliver_conf.c): verified unless
		 * smarthost_tls_verify = no, against smarthost_tls_ca or the
		 * system's CAs. */
		if (s->verify) {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
			int ok = s->tls_ca && s->tls_ca[0]
			         ? SSL_CTX_load_verify_locations(ctx, s->tls_ca, NULL)
			         : SSL_CTX_set_default_verify_paths(ctx);
			if (!ok) {
				char e[160] = "";
				ERR_error_string_n(ERR_get_error(), e, sizeof e);
				ERR_clear_error();
				ctl_err("smarthost_tls_ca %s: %s", s->tls_ca ? s->tls_ca : "",
				        e);
				SSL_CTX_free(ctx);
				return -EINVAL;
			}
		} else {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		}
	}
	struct ctl_smtp_opts o = {
		.host = s->host,
		.port = s->port,
		.tls = s->tls_eff,
		.ssl = ctx,
		.tls_name = name,
		.helo = s->hostname,
		.user = s->user,
		.password = s->user ? s->password : NULL,
		.timeout_ms = s->timeout_ms,
	};
	printf("Checking the login at %s:%u (%s%s) ...\n", s->host, s->port,
	       s->tls_eff == CONF_TLS_IMPLICIT ? "implicit TLS" :
	       s->tls_eff == CONF_TLS_STARTTLS ? "STARTTLS" : "no TLS",
	       s->user ? ", AUTH" : "");
	fflush(stdout);
	struct ctl_smtp *sm = NULL;
	int r = ctl_smtp_open(&sm, &o, err, sizeof err);
	if (r < 0) {
		char esc[sizeof err * 4];
		printf("FAILED: %s\n", log_escape(esc, sizeof esc, err, strlen(err)));
		switch (r) {
		case -EACCES:
			printf("Check the user name and password (and that the "
			       "account may send by SMTP).\n");
			break;
		case -EPROTO:
			if (strstr(err, "certificate"))
				printf("The certificate check failed: give the CA with "
				       "--tls-ca FILE, or the name the certificate "
				       "carries with --tls-name NAME.\n");
			break;
		default:
			printf("Check the host and port, and that this machine may "
			       "connect to it.\n");
		}
		SSL_CTX_free(ctx);
		return r;
	}
	char tls[160];
	printf("  connected to %s\n", ctl_smtp_peer(sm));
	if (ctl_smtp_tls(sm, tls, sizeof tls))
		printf("  TLS: %s, certificate %s\n", tls,
		       s->verify ? "verified" : "not verified (--tls-verify no)");
	if (s->user)
		printf("  AUTH as %s: accepted\n", s->user);
	ctl_smtp_close(sm);
	SSL_CTX_free(ctx);
	printf("OK: relayd can log in to the smarthost (no mail was sent).\n");
	return 0;
}

static int ctl_sh_parse(struct ctl_ctx *c, struct ctl_sh *s)
{
	char ans[256];
	static char host_ans[300], user_ans[256];
	memset(s, 0, sizeof *s);
	s->host_port = ctl_setup_ask(c, "--host", "Smarthost (HOST:PORT, e.g. "
	                       "smtp.example.com:465)", NULL, host_ans,
	                       sizeof host_ans);
	if (!s->host_port)
		return ctl_usage_error("setup smarthost needs --host HOST:PORT");
	if (!ctl_setup_value_ok(s->host_port) ||
	    conf_parse_hostport(s->host_port, s->host, sizeof s->host,
	                        &s->port) < 0 || s->port == 0)
		return ctl_setup_bad_value("--host (HOST:PORT)", s->host_port);
	s->tls = CONF_TLS_AUTO;
	s->tls_word = ctl_opt(c, "--tls");
	if (s->tls_word) {
		static const char *const w[] = {"auto", "implicit", "starttls",
		                                "none"};
		size_t i = 0;
		while (i < 4 && strcmp(s->tls_word, w[i]) != 0)
			i++;
		if (i == 4)
			return ctl_setup_bad_value("--tls (auto, implicit, starttls or "
			                     "none)", s->tls_word);
		s->tls = (enum conf_tls)i;
	}
	s->tls_eff = s->tls == CONF_TLS_AUTO
	             ? (s->port == 465 ? CONF_TLS_IMPLICIT : CONF_TLS_STARTTLS)
	             : s->tls;
	s->tls_ca = ctl_opt(c, "--tls-ca");
	s->tls_name = ctl_opt(c, "--tls-name");
	if (s->tls_ca && !ctl_setup_value_ok(s->tls_ca))
		return ctl_setup_bad_value("--tls-ca", s->tls_ca);
	if (s->tls_name && !ctl_setup_value_ok(s->tls_name))
		return ctl_setup_bad_value("--tls-name", s->tls_name);
	s->verify = true;
	const char *v = ctl_opt(c, "--tls-verify");
	if (v) {
		if (strcmp(v, "yes") == 0)
			s->verify = true;
		else if (strcmp(v, "no") == 0)
			s->verify = false;
		else
			return ctl_setup_bad_value("--tls-verify (yes or no)", v);
	}
	s->user = ctl_setup_ask(c, "--user", "User name at the smarthost (empty: no "
	                  "AUTH)", NULL, user_ans, sizeof user_ans);
	if (s->user && !ctl_setup_value_ok(s->user))
		return ctl_setup_bad_value("--user", s->user);
	static char hn[256];
	const char *h = ctl_opt(c, "--hostname");
	if (!h) {
		ctl_default_hostname(hn, sizeof hn);
		h = hn;
	}
	if (!ctl_setup_value_ok(h) || strchr(h, ' '))
		return ctl_setup_bad_value("--hostname", h);
	s->hostname = h;
	(void)ans;
	return ctl_parse_timeout(c, &s->timeout_ms);
}

/* The password: first line of --password-file, or from the terminal
 * (no echo) or one line of stdin. */
static int ctl_sh_password(struct ctl_ctx *c, struct ctl_sh *s,
                           const char *conf_path, char *stored, size_t n)
{
	const char *pf = ctl_opt(c, "--password-file");
	if (pf) {
		if (!ctl_setup_value_ok(pf))
			return ctl_setup_bad_value("--password-file", pf);
		FILE *f = fopen(pf, "re");
		if (!f) {
			int e = errno;
			ctl_err("--password-file %s: %s", pf, strerror(e));
			return -e;
		}
		if (!fgets(s->password, sizeof s->password, f))
			s->password[0] = '\0';
		fclose(f);
		s->password[strcspn(s->password, "\r\n")] = '\0';
		if (!s->password[0]) {
			ctl_err("--password-file %s: the first line is empty", pf);
			return -EINVAL;
		}
		/* relayd reads it from its own working directory: the
		 * configuration names it by an absolute path. */
		if (pf[0] != '/') {
			char cwd[PATH_MAX];
			if (!getcwd(cwd, sizeof cwd) ||
			    snprintf(stored, n, "%s/%s", cwd, pf) >= (int)n)
				return ctl_setup_bad_value("--password-file", pf);
			pf = stored;
		}
		struct stat st;
		if (stat(pf, &st) == 0 && (st.st_mode & 077))
			fprintf(stderr, CTL_PROG ": warning: %s can be read by "
			        "others: chmod 600 %s\n", pf, pf);
		s->password_file = pf;
		s->password_given_file = true;
		return 0;
	}
	ssize_t r = ctl_read_password(s->user, false, s->password,
	                              sizeof s->password);
	if (r < 0)
		return (int)r;
	char dir[PATH_MAX];
	ctl_setup_dirname(conf_path, dir, sizeof dir);
	snprintf(stored, n, "%s/smarthost.password", dir);
	s->password_file = stored;
	return 0;
}

static void ctl_conf_line(struct buf *b, const char *comment, const char *key,
                          const char *value)
{
	if (comment)
		buf_printf(b, "\n# %s\n", comment);
	buf_printf(b, "%s = %s\n", key, value);
}

static int ctl_setup_smarthost(struct ctl_ctx *c)
{
	struct ctl_sh s;
	char stored[PATH_MAX + 32] = "", when[64];
	const char *path = ctl_setup_path(c);
	bool force = ctl_opt(c, "--force") != NULL;
	bool check_only = ctl_opt(c, "--check-only") != NULL;
	int r = ctl_sh_parse(c, &s);
	if (r != 0)
		return r;
	if (!check_only && !ctl_setup_value_ok(path))
		return ctl_setup_bad_value("--config", path);
	if (!check_only && (r = ctl_setup_refuse_existing(path, force)) < 0)
		return r;
	if (s.user && (r = ctl_sh_password(c, &s, path, stored,
	                                   sizeof stored)) < 0)
		return r;
	if (check_only) {
		r = ctl_sh_check(&s);
		explicit_bzero(s.password, sizeof s.password);
		return r < 0 ? r : 0;
	}
	if (stored[0] && !s.password_given_file &&
	    (r = ctl_setup_refuse_existing(stored, force)) < 0)
		goto out;

	struct buf b;
	buf_init(&b, 1 << 20);
	ctl_now_text(when, sizeof when);
	buf_printf(&b, "# %s - relayd configuration, written by `relayctl setup "
	           "smarthost` on %s.\n# Every key is explained in relayd's "
	           "example configuration (etc/relayd.conf)\n# and README.md; "
	           "`relayd -t -c %s` checks this file.\n", path, when, path);
	ctl_conf_line(&b, "The name in relayd's greeting, EHLO and Received: "
	              "lines.", "hostname", s.hostname);
	ctl_conf_line(&b, "Local applications hand mail to relayd here (no AUTH "
	              "needed from this host;\n# trusted_networks is loopback by "
	              "default).", "listen", "127.0.0.1:2525");
	ctl_conf_line(&b, "Everything goes out through the provider's submission "
	              "server.", "delivery", "smarthost");
	ctl_conf_line(&b, NULL, "smarthost", s.host_port);
	if (s.tls_word)
		ctl_conf_line(&b, NULL, "smarthost_tls", s.tls_word);
	if (s.tls_ca)
		ctl_conf_line(&b, NULL, "smarthost_tls_ca", s.tls_ca);
	if (s.tls_name)
		ctl_conf_line(&b, NULL, "smarthost_tls_name", s.tls_name);
	if (!s.verify)
		ctl_conf_line(&b, NULL, "smarthost_tls_verify", "no");
	if (s.user) {
		ctl_conf_line(&b, NULL, "smarthost_user", s.user);
		ctl_conf_line(&b, NULL, "smarthost_password_file", s.password_file);
	}
	ctl_conf_line(&b, "One line per delivery event (relayctl send-test "
	              "follows it;\n# contrib/relayd.logrotate rotates it).",
	              "log_file", CTL_SETUP_LOG);
	if (b.data == NULL) {
		ctl_err("out of memory");
		r = -ENOMEM;
		goto out;
	}
	uid_t uid;
	gid_t gid;
	if (stored[0] && !s.password_given_file) {
		struct buf pb;
		buf_init(&pb, sizeof s.password + 2);
		buf_printf(&pb, "%s\n", s.password);
		ctl_setup_relayd_owner(&uid, &gid, stored);
		r = pb.data ? ctl_setup_write_file(stored, pb.data, pb.len, 0600, uid,
		                             gid, force) : -ENOMEM;
		if (pb.data)
			explicit_bzero(pb.data, pb.cap);
		buf_free(&pb);
		if (r < 0) {
			buf_free(&b);
			goto out;
		}
		printf("Wrote %s (the password, mode 0600).\n", stored);
	}
	if (force && (r = ctl_setup_backup(path)) < 0) {
		buf_free(&b);
		goto out;
	}
	r = ctl_setup_write_file(path, b.data, b.len, 0644, (uid_t)-1, (gid_t)-1,
	                   force);
	buf_free(&b);
	if (r < 0)
		goto out;
	printf("Wrote %s.\n", path);
	fflush(stdout);
	r = ctl_sh_check(&s);
	if (r < 0) {
		printf("\nThe configuration is written, but relayd could not log "
		       "in with it.\nFix the cause above, then run the same "
		       "command again with --force\n(or with --check-only to "
		       "check without writing).\n");
		goto out;
	}
	printf("\nNext:\n"
	       "  relayd -t -c %s\n"
	       "      checks the configuration; then relayd -c %s (or: "
	       "systemctl restart relayd)\n"
	       "  relayctl -c %s send-test YOU@EXAMPLE.COM\n"
	       "      sends a test message and follows it\n", path, path, path);
out:
	explicit_bzero(s.password, sizeof s.password);
	return r < 0 ? r : 0;
}

int ctl_cmd_setup(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	if (strcmp(argv[0], "smarthost") == 0)
		return ctl_setup_smarthost(c);
	if (strcmp(argv[0], "direct") == 0)
		return ctl_setup_direct(c);
	char esc[128];
	return ctl_usage_error("setup: unknown mode '%s' (direct or smarthost)",
	                       log_escape(esc, sizeof esc, argv[0],
	                                  strlen(argv[0])));
}
