/*
 * tools/ctl_user.c - relayctl user: add, del, list, passwd, disable, enable
 * and test on the SMTP AUTH credentials file (the credentials_file key),
 * through common/cred.h (format, hashing, atomic save).
 *
 * An edit takes a lock (flock on the file's directory) from reading the
 * file to renaming the new one into place, so two relayctl runs never
 * lose each other's change; relayd only ever sees whole files. Passwords
 * are read before the lock: from the terminal without echo (twice when
 * one is set), or as one line from standard input when that is not a
 * terminal (scripts, tests). No password or hash is ever printed, except
 * the one --generate makes, once, on stdout.
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <termios.h>
#include <unistd.h>

#include "common/log.h"
#include "common/cred.h"

struct ctl_user_sub {
	const char *name;
	const char *synopsis;   /* after "user NAME" */
	bool needs_name;
	bool json;              /* accepts --json */
	const char *opts;       /* options it takes, space separated */
	int (*run)(struct ctl_ctx *c, const char *path, const char *user);
};

/* ---- small helpers -------------------------------------------------------- */

/* A user-typed word made safe for the terminal. */
static const char *ctl_user_esc(char *dst, size_t n, const char *s)
{
	return log_escape(dst, n, s, strlen(s));
}

/* --hourly / --daily: absent 0 (no limit), else 1..CRED_QUOTA_MAX. */
static int ctl_user_quota(const struct ctl_ctx *c, const char *opt,
                          uint32_t *out)
{
	const char *v = ctl_opt(c, opt);
	char esc[64];
	*out = 0;
	if (!v)
		return 0;
	uint64_t x = 0;
	size_t n = strlen(v);
	bool ok = n > 0 && n <= 10 && strspn(v, "0123456789") == n;
	for (size_t i = 0; ok && i < n; i++)
		x = x * 10 + (uint64_t)(v[i] - '0');
	if (!ok || x < 1 || x > CRED_QUOTA_MAX) {
		ctl_err("%s: expected a number from 1 to %u, not '%s'", opt,
		        CRED_QUOTA_MAX, ctl_user_esc(esc, sizeof esc, v));
		return -EINVAL;
	}
	*out = (uint32_t)x;
	return 0;
}

/* Loads the file; a missing one is an empty table when missing_ok. */
static int ctl_user_load(const char *path, bool missing_ok,
                         struct cred_store **t)
{
	char err[1024];
	int r = cred_store_load(path, t, err, sizeof err);
	if (r == -ENOENT && missing_ok) {
		if (!(*t = cred_store_new())) {
			ctl_err("out of memory");
			return -ENOMEM;
		}
		return 0;
	}
	if (r < 0)
		ctl_err("%s", err);
	return r;
}

static int ctl_user_unknown(const char *user)
{
	char esc[128];
	ctl_err("unknown user '%s'", ctl_user_esc(esc, sizeof esc, user));
	return -ENOENT;
}

/* ---- the lock --------------------------------------------------------------- */

/* Locks the directory holding path (flock: released when the descriptor
 * is closed, also when relayctl dies). Returns the descriptor or -errno. */
static int ctl_user_lock(const char *path)
{
	const char *slash = strrchr(path, '/');
	char dir[4096];
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else
		snprintf(dir, sizeof dir, "%.*s",
		         (int)(slash == path ? 1 : slash - path), path);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		ctl_err("cannot open directory %s: %s", dir, strerror(e));
		return -e;
	}
	while (flock(fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		int e = errno;
		ctl_err("cannot lock directory %s: %s", dir, strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

/* The change an edit makes to the loaded table; prints its own error. */
typedef int (*ctl_user_edit_fn)(struct cred_store *t, const char *user,
                                void *arg);

/* Lock, load, change, save, unlock. */
static int ctl_user_edit(const char *path, bool missing_ok, const char *user,
                         ctl_user_edit_fn fn, void *arg)
{
	struct cred_store *t = NULL;
	char err[1024];
	int lock = ctl_user_lock(path);
	if (lock < 0)
		return lock;
	int r = ctl_user_load(path, missing_ok, &t);
	if (r == 0)
		r = fn(t, user, arg);
	if (r == 0 && (r = cred_store_save(t, path, err, sizeof err)) < 0)
		ctl_err("%s", err);
	cred_store_free(t);
	close(lock);
	return r;
}

/* ---- reading a password ------------------------------------------------------- */

/* The terminal's settings while echo is off, for the signal handler. */
static struct termios ctl_tty_saved;
static volatile sig_atomic_t ctl_tty_off;

static void ctl_tty_sig_cb(int sig)
{
	if (ctl_tty_off)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &ctl_tty_saved);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* One line from fd into pw (NUL-terminated, newline and a CR before it
 * dropped). Returns the length, or -ENODATA (nothing before end of
 * input), -E2BIG, -EILSEQ (a NUL byte) or -errno. */
static ssize_t ctl_read_line(int fd, char *pw, size_t cap)
{
	size_t n = 0;
	bool any = false;
	for (;;) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		any = true;
		if (ch == '\n')
			break;
		if (n + 1 >= cap)
			return -E2BIG;
		pw[n++] = ch;
	}
	if (!any)
		return -ENODATA;
	if (n > 0 && pw[n - 1] == '\r')
		n--;
	pw[n] = '\0';
	if (memchr(pw, '\0', n))
		return -EILSEQ;
	return (ssize_t)n;
}

/* Prompts on stderr and reads a line from the terminal without echo. */
static ssize_t ctl_read_tty(const char *prompt, char *pw, size_t cap)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
	struct sigaction sa = {.sa_handler = ctl_tty_sig_cb}, old[4];
	struct termios t;
	if (tcgetattr(STDIN_FILENO, &ctl_tty_saved) < 0)
		return -errno;
	t = ctl_tty_saved;
	t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK);
	t.c_lflag |= ECHONL;
	for (size_t i = 0; i < 4; i++)
		sigaction(sigs[i], &sa, &old[i]);
	ctl_tty_off = 1;
	/* Echo goes off (TCSAFLUSH drops what was typed before) and only
	 * then the prompt shows: an answer typed after the prompt is never
	 * thrown away, nor echoed. */
	ssize_t r = tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) < 0 ? -errno : 0;
	if (r == 0) {
		fputs(prompt, stderr);
		fflush(stderr);
		r = ctl_read_line(STDIN_FILENO, pw, cap);
	}
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &ctl_tty_saved);
	ctl_tty_off = 0;
	for (size_t i = 0; i < 4; i++)
		sigaction(sigs[i], &old[i], NULL);
	return r;
}

/* The password for user: from the terminal (asked twice when confirm),
 * or one line of stdin. Prints its own errors. (ctl.h: setup and
 * send-test read passwords with it too.) */
ssize_t ctl_read_password(const char *user, bool confirm, char *pw,
                          size_t cap)
{
	char again[CRED_PASSWORD_MAX + 2], prompt[128];
	bool tty = isatty(STDIN_FILENO);
	ssize_t n;
	if (tty) {
		snprintf(prompt, sizeof prompt, "Password for %s: ", user);
		n = ctl_read_tty(prompt, pw, cap);
	} else {
		n = ctl_read_line(STDIN_FILENO, pw, cap);
	}
	/* pw has room for a CR before the newline; without it, too long. */
	if (n > CRED_PASSWORD_MAX)
		n = -E2BIG;
	if (n >= 0 && tty && confirm) {
		ssize_t m = ctl_read_tty("Retype password: ", again, sizeof again);
		if (m >= 0 && (m != n || memcmp(pw, again, (size_t)n) != 0))
			m = -EDOM;
		explicit_bzero(again, sizeof again);
		if (m < 0)
			n = m;
	}
	switch (n) {
	case -ENODATA:
		ctl_err("no password given on standard input");
		break;
	case -E2BIG:
		ctl_err("password longer than %d bytes", CRED_PASSWORD_MAX);
		break;
	case -EILSEQ:
		ctl_err("password contains a NUL byte");
		break;
	case -EDOM:
		ctl_err("passwords do not match");
		break;
	case 0:
		ctl_err("empty password");
		n = -EINVAL;
		break;
	default:
		if (n < 0)
			ctl_err("reading the password: %s", strerror((int)-n));
	}
	if (n < 0)
		explicit_bzero(pw, cap);
	return n;
}

/* A new hash for user: --generate makes the password (into gen, to print
 * after the save), else it is read. */
static int ctl_new_hash(const struct ctl_ctx *c, const char *user,
                        char *hash, size_t hashlen,
                        char gen[CRED_GEN_LEN + 1])
{
	char pw[CRED_PASSWORD_MAX + 2];
	ssize_t n;
	int r;
	gen[0] = '\0';
	if (ctl_opt(c, "--generate")) {
		if ((r = cred_generate(gen, CRED_GEN_LEN + 1)) < 0) {
			ctl_err("cannot generate a password: %s", strerror(-r));
			return r;
		}
		r = cred_hash(gen, strlen(gen), NULL, hash, hashlen);
	} else {
		if ((n = ctl_read_password(user, true, pw, sizeof pw)) < 0)
			return (int)n;
		r = cred_hash(pw, (size_t)n, NULL, hash, hashlen);
		explicit_bzero(pw, sizeof pw);
	}
	if (r < 0)
		ctl_err("cannot hash the password: %s", strerror(-r));
	return r;
}

/* ---- add, del, passwd, disable, enable ------------------------------------------ */

static int ctl_add_fn(struct cred_store *t, const char *user, void *arg)
{
	char err[1024];
	(void)user;
	int r = cred_store_add(t, arg, err, sizeof err);
	if (r < 0)
		ctl_err("%s", err);
	return r;
}

static int ctl_user_add(struct ctl_ctx *c, const char *path, const char *user)
{
	struct cred_spec s = {
		.name = user,
		.owner = ctl_opt(c, "--owner"),
		.from = ctl_opt(c, "--from-domains"),
		.to = ctl_opt(c, "--to-domains"),
	};
	char hash[CRED_HASH_MAX], gen[CRED_GEN_LEN + 1], err[1024];
	struct cred_store *t = NULL;
	int r;
	if ((r = ctl_user_quota(c, "--hourly", &s.hourly)) < 0 ||
	    (r = ctl_user_quota(c, "--daily", &s.daily)) < 0)
		return r;

	/* Everything but the password is checked before asking for it. */
	if ((r = ctl_user_load(path, true, &t)) < 0)
		return r;
	r = cred_store_check(t, &s, err, sizeof err);
	cred_store_free(t);
	if (r < 0) {
		ctl_err("%s", err);
		return r;
	}

	if ((r = ctl_new_hash(c, user, hash, sizeof hash, gen)) < 0)
		return r;
	s.hash = hash;
	r = ctl_user_edit(path, true, user, ctl_add_fn, &s);
	explicit_bzero(hash, sizeof hash);
	if (r == 0 && gen[0])
		printf("%s\n", gen);
	explicit_bzero(gen, sizeof gen);
	return r;
}

static int ctl_del_fn(struct cred_store *t, const char *user, void *arg)
{
	(void)arg;
	return cred_store_del(t, user) < 0 ? ctl_user_unknown(user) : 0;
}

static int ctl_user_del(struct ctl_ctx *c, const char *path, const char *user)
{
	(void)c;
	return ctl_user_edit(path, false, user, ctl_del_fn, NULL);
}

static int ctl_passwd_fn(struct cred_store *t, const char *user, void *arg)
{
	int r = cred_store_set_hash(t, user, arg);
	if (r == -ENOENT)
		return ctl_user_unknown(user);
	if (r < 0)
		ctl_err("cannot set the password: %s", strerror(-r));
	return r;
}

static int ctl_user_passwd(struct ctl_ctx *c, const char *path,
                           const char *user)
{
	char hash[CRED_HASH_MAX], gen[CRED_GEN_LEN + 1];
	struct cred_store *t = NULL;
	int r;
	/* An unknown user is told before the password is asked for. */
	if ((r = ctl_user_load(path, false, &t)) < 0)
		return r;
	bool known = cred_store_find(t, user) != NULL;
	cred_store_free(t);
	if (!known)
		return ctl_user_unknown(user);
	if ((r = ctl_new_hash(c, user, hash, sizeof hash, gen)) < 0)
		return r;
	r = ctl_user_edit(path, false, user, ctl_passwd_fn, hash);
	explicit_bzero(hash, sizeof hash);
	if (r == 0 && gen[0])
		printf("%s\n", gen);
	explicit_bzero(gen, sizeof gen);
	return r;
}

static int ctl_disable_fn(struct cred_store *t, const char *user, void *arg)
{
	bool disabled = arg != NULL;
	return cred_store_set_disabled(t, user, disabled) < 0 ?
	       ctl_user_unknown(user) : 0;
}

static int ctl_user_disable(struct ctl_ctx *c, const char *path,
                            const char *user)
{
	(void)c;
	return ctl_user_edit(path, false, user, ctl_disable_fn, (void *)1);
}

static int ctl_user_enable(struct ctl_ctx *c, const char *path,
                           const char *user)
{
	(void)c;
	return ctl_user_edit(path, false, user, ctl_disable_fn, NULL);
}

/* ---- test ------------------------------------------------------------------------ */

static int ctl_user_test(struct ctl_ctx *c, const char *path, const char *user)
{
	char pw[CRED_PASSWORD_MAX + 2], esc[128];
	struct cred_store *t = NULL;
	int r;
	(void)c;
	if ((r = ctl_user_load(path, false, &t)) < 0)
		return r;
	if (!cred_store_find(t, user)) {
		cred_store_free(t);
		return ctl_user_unknown(user);
	}
	ssize_t n = ctl_read_password(user, false, pw, sizeof pw);
	if (n < 0) {
		cred_store_free(t);
		return (int)n;
	}
	enum cred_result res = cred_store_verify(t, user, pw, (size_t)n,
	                                                NULL);
	explicit_bzero(pw, sizeof pw);
	cred_store_free(t);
	ctl_user_esc(esc, sizeof esc, user);
	switch (res) {
	case CRED_OK:
		printf("ok\n");
		return 0;
	case CRED_DISABLED:
		ctl_err("the password is right, but user '%s' is disabled", esc);
		return -EACCES;
	case CRED_BAD_PASSWORD:
		ctl_err("wrong password for user '%s'", esc);
		return -EACCES;
	case CRED_UNKNOWN:
		return ctl_user_unknown(user);
	default:
		ctl_err("cannot verify the password (out of memory?)");
		return -EIO;
	}
}

/* ---- list -------------------------------------------------------------------------- */

/* "a,b,c", or "-" for none; returns the columns written. */
static size_t ctl_list_items(struct ctl_out *o, const struct cred *cr,
                             bool from)
{
	size_t n = from ? cred_nfrom(cr) : cred_nto(cr), w = 0;
	if (n == 0) {
		if (o)
			ctl_out_str(o, "-");
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		const char *s = from ? cred_from(cr, i) : cred_to(cr, i);
		if (o)
			ctl_out_str(o, i ? "," : "");
		/* Items are checked ASCII (cred.h): one column a byte. */
		w += strlen(s) + (i ? 1 : 0);
		if (o)
			ctl_out_str(o, s);
	}
	return w;
}

static void ctl_list_json(struct ctl_out *o, const struct cred_store *t)
{
	size_t n = cred_store_count(t);
	ctl_out_str(o, "{\"users\":[");
	for (size_t i = 0; i < n; i++) {
		const struct cred *cr = cred_store_at(t, i);
		const char *owner = cred_owner(cr);
		ctl_out_str(o, i ? ",{\"name\":" : "{\"name\":");
		ctl_out_json_strz(o, cred_name(cr));
		ctl_out_str(o, ",\"owner\":");
		ctl_out_json_strz(o, owner[0] ? owner : NULL);
		for (int f = 1; f >= 0; f--) {
			size_t k = f ? cred_nfrom(cr) : cred_nto(cr);
			ctl_out_str(o, f ? ",\"from\":[" : "],\"to\":[");
			for (size_t j = 0; j < k; j++) {
				if (j)
					ctl_out_str(o, ",");
				ctl_out_json_strz(o, f ? cred_from(cr, j)
				                       : cred_to(cr, j));
			}
		}
		uint32_t h = cred_hourly(cr), d = cred_daily(cr);
		ctl_out_str(o, "],\"hourly\":");
		if (h)
			ctl_out_printf(o, "%u", (unsigned)h);
		else
			ctl_out_str(o, "null");
		ctl_out_str(o, ",\"daily\":");
		if (d)
			ctl_out_printf(o, "%u", (unsigned)d);
		else
			ctl_out_str(o, "null");
		ctl_out_printf(o, ",\"disabled\":%s}",
		               cred_disabled(cr) ? "true" : "false");
	}
	ctl_out_printf(o, "],\"count\":%zu}\n", n);
}

static void ctl_list_text(struct ctl_out *o, const struct cred_store *t)
{
	size_t n = cred_store_count(t), wn = 4, wo = 5, wf = 4;
	if (n == 0) {
		ctl_out_str(o, "No users\n");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		const struct cred *cr = cred_store_at(t, i);
		size_t a = strlen(cred_name(cr));
		size_t b = strlen(cred_owner(cr));
		size_t f = ctl_list_items(NULL, cr, true);
		wn = a > wn ? a : wn;
		wo = b > wo ? b : wo;
		wf = f > wf ? f : wf;
	}
	ctl_out_text_pad(o, "NAME", wn + 2);
	ctl_out_text_pad(o, "OWNER", wo + 2);
	ctl_out_str(o, "STATE     HOURLY      DAILY       ");
	ctl_out_text_pad(o, "FROM", wf + 2);
	ctl_out_str(o, "TO\n");
	for (size_t i = 0; i < n; i++) {
		const struct cred *cr = cred_store_at(t, i);
		const char *owner = cred_owner(cr);
		char q[16];
		ctl_out_text_pad(o, cred_name(cr), wn + 2);
		ctl_out_text_pad(o, owner[0] ? owner : "-", wo + 2);
		ctl_out_text_pad(o, cred_disabled(cr) ? "disabled" : "enabled",
		                 10);
		uint32_t h = cred_hourly(cr), d = cred_daily(cr);
		snprintf(q, sizeof q, "%u", (unsigned)h);
		ctl_out_text_pad(o, h ? q : "-", 12);
		snprintf(q, sizeof q, "%u", (unsigned)d);
		ctl_out_text_pad(o, d ? q : "-", 12);
		ctl_out_spaces(o, wf + 2 - ctl_list_items(o, cr, true));
		ctl_list_items(o, cr, false);
		ctl_out_str(o, "\n");
	}
	ctl_out_printf(o, "%zu user%s\n", n, n == 1 ? "" : "s");
}

static int ctl_user_list(struct ctl_ctx *c, const char *path,
                         const char *user)
{
	struct cred_store *t = NULL;
	struct ctl_out o;
	(void)user;
	int r = ctl_user_load(path, false, &t);
	if (r < 0)
		return r;
	ctl_out_init(&o);
	if (c->json)
		ctl_list_json(&o, t);
	else
		ctl_list_text(&o, t);
	cred_store_free(t);
	r = ctl_out_flush(&o, stdout);
	ctl_out_free(&o);
	if (r < 0)
		ctl_err("writing to stdout: %s", strerror(-r));
	return r;
}

/* ---- dispatch ------------------------------------------------------------------------ */

static const struct ctl_user_sub ctl_user_subs[] = {
	{"add", "[--owner O] [--from-domains LIST] [--to-domains LIST] "
	 "[--hourly N] [--daily N] [--generate]", true, false,
	 "--owner --from-domains --to-domains --hourly --daily --generate",
	 ctl_user_add},
	{"del", "", true, false, "", ctl_user_del},
	{"list", "", false, true, "", ctl_user_list},
	{"passwd", "[--generate]", true, false, "--generate", ctl_user_passwd},
	{"disable", "", true, false, "", ctl_user_disable},
	{"enable", "", true, false, "", ctl_user_enable},
	{"test", "", true, false, "", ctl_user_test},
};

#define CTL_USER_NSUBS (sizeof ctl_user_subs / sizeof *ctl_user_subs)

static bool ctl_user_takes(const struct ctl_user_sub *s, const char *opt)
{
	size_t n = strlen(opt);
	for (const char *p = s->opts; *p;) {
		size_t k = strcspn(p, " ");
		if (k == n && strncmp(p, opt, n) == 0)
			return true;
		p += k;
		p += strspn(p, " ");
	}
	return false;
}

static int ctl_user_usage_error(const struct ctl_user_sub *s, const char *why)
{
	ctl_err("%s; usage: " CTL_PROG " user %s%s%s%s", why, s->name,
	        s->needs_name ? " NAME" : "", s->synopsis[0] ? " " : "",
	        s->synopsis);
	return -EINVAL;
}

int ctl_cmd_user(struct ctl_ctx *c, int argc, char **argv)
{
	char esc[128], why[256];
	const struct ctl_user_sub *s = NULL;
	for (size_t i = 0; i < CTL_USER_NSUBS; i++)
		if (strcmp(ctl_user_subs[i].name, argv[0]) == 0)
			s = &ctl_user_subs[i];
	if (!s) {
		ctl_err("unknown user command '%s' (expected add, del, list, "
		        "passwd, disable, enable or test)",
		        ctl_user_esc(esc, sizeof esc, argv[0]));
		return -EINVAL;
	}
	if (s->needs_name && argc < 2)
		return ctl_user_usage_error(s, "missing user name");
	if (!s->needs_name && argc > 1)
		return ctl_user_usage_error(s, "too many arguments");
	for (size_t i = 0; i < c->nopts; i++)
		if (!ctl_user_takes(s, c->opts[i].name)) {
			snprintf(why, sizeof why, "option %s does not apply",
			         c->opts[i].name);
			return ctl_user_usage_error(s, why);
		}
	if (c->json && !s->json)
		return ctl_user_usage_error(s, "no --json output");
	int r = s->run(c, c->conf.credentials_file,
	               s->needs_name ? argv[1] : NULL);
	/* A change says what it did, on stderr: stdout stays what scripts
	 * read (the --generate'd password, "ok", the list). */
	static const char *const done[][2] = {
		{"add", "added to"}, {"del", "removed from"},
		{"passwd", "has a new password in"}, {"disable", "disabled in"},
		{"enable", "enabled in"},
	};
	for (size_t i = 0; r == 0 && i < sizeof done / sizeof *done; i++)
		if (strcmp(s->name, done[i][0]) == 0)
			fprintf(stderr, CTL_PROG ": user %s %s %s (relayd reads "
			        "it again within a second)\n",
			        ctl_user_esc(esc, sizeof esc, argv[1]), done[i][1],
			        c->conf.credentials_file);
	return r;
}
