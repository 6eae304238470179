/*
 * smtpd/smtpd_maildrop.c - runs relayd-sendmail --import (contract:
 * smtpd_maildrop.h). Owns one uv_timer_t, one uv_fs_event_t (inotify on
 * the directory: a file renamed in starts a run at once) and at most one
 * uv_process_t.
 * The program is looked for next to relayd's own binary (build/ and
 * sbin/ both hold the two), as "relayd-sendmail".
 */
#include "smtpd/smtpd_maildrop.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

struct smtpd_maildrop {
	uv_loop_t *loop;
	uv_timer_t timer;
	uv_fs_event_t watch;        /* a file renamed into the maildrop */
	uv_process_t proc;
	bool running;               /* proc is a live child */
	bool proc_open;             /* proc is initialised, not yet closed */
	bool again;                 /* a file appeared while it ran */
	int dfd;                    /* the maildrop, for the event's names */
	bool stopping;
	int open_handles;
	char prog[PATH_MAX + 32];
	char *conf_path;
};

static void md_free(struct smtpd_maildrop *m)
{
	if (m->dfd >= 0)
		close(m->dfd);
	free(m->conf_path);
	free(m);
}

static void md_closed_cb(uv_handle_t *h)
{
	struct smtpd_maildrop *m = h->data;
	if (--m->open_handles == 0)
		md_free(m);
}

static void md_run(struct smtpd_maildrop *m);

/* The process handle is free again only here: a file that appeared
 * during the run starts the next one now. */
static void md_proc_closed_cb(uv_handle_t *h)
{
	struct smtpd_maildrop *m = h->data;
	m->proc_open = false;
	if (--m->open_handles == 0) {
		md_free(m);
		return;
	}
	if (m->again && !m->stopping) {
		m->again = false;
		md_run(m);
	}
}

static void md_exit_cb(uv_process_t *p, int64_t status, int sig)
{
	struct smtpd_maildrop *m = p->data;
	m->running = false;
	/* 75 (EX_TEMPFAIL): a file stays for the next run; the child
	 * logged which and why. */
	if (sig)
		log_warn("maildrop: importer killed by signal %d", sig);
	else if (status != 0 && status != 75)
		log_warn("maildrop: importer exited %lld", (long long)status);
	uv_close((uv_handle_t *)p, md_proc_closed_cb);
}

static void md_run(struct smtpd_maildrop *m)
{
	if (m->stopping)
		return;
	if (m->running || m->proc_open) {
		m->again = true;
		return;
	}
	char *args[5];
	int n = 0;
	args[n++] = m->prog;
	args[n++] = "--import";
	if (m->conf_path) {
		args[n++] = "-C";
		args[n++] = m->conf_path;
	}
	args[n] = NULL;
	uv_stdio_container_t stdio[3] = {
		{.flags = UV_IGNORE},
		{.flags = UV_INHERIT_FD, .data.fd = 1},
		{.flags = UV_INHERIT_FD, .data.fd = 2},
	};
	uv_process_options_t o = {
		.exit_cb = md_exit_cb,
		.file = m->prog,
		.args = args,
		.stdio_count = 3,
		.stdio = stdio,
	};
	m->proc.data = m;
	int r = uv_spawn(m->loop, &m->proc, &o);
	if (r < 0) {
		log_err("maildrop: cannot run %s: %s", m->prog, uv_strerror(r));
		/* uv_spawn initialised the handle: it must be closed. */
		m->open_handles++;
		m->proc_open = true;
		m->again = false;       /* not again and again on this error */
		uv_close((uv_handle_t *)&m->proc, md_proc_closed_cb);
		return;
	}
	m->running = true;
	m->proc_open = true;
	m->open_handles++;
}

static void md_timer_cb(uv_timer_t *t)
{
	md_run(t->data);
}

/* inotify on the directory: a name that exists now and is not a dot
 * file (one being written) or bad/ is a new message. Removals (the
 * importer's own) name files that are gone, and start nothing. */
static void md_watch_cb(uv_fs_event_t *h, const char *name, int events,
                        int status)
{
	struct smtpd_maildrop *m = h->data;
	(void)events;
	if (status < 0 || !name || name[0] == '.' || strcmp(name, "bad") == 0)
		return;
	if (faccessat(m->dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		md_run(m);
}

int smtpd_maildrop_start(uv_loop_t *loop, const struct conf *c,
                         const char *conf_path, struct smtpd_maildrop **out)
{
	char dir[PATH_MAX], self[PATH_MAX];
	*out = NULL;
	if ((size_t)snprintf(dir, sizeof dir, "%s/maildrop", c->spool_dir) >=
	    sizeof dir)
		return -ENAMETOOLONG;
	/* 1730: relayd's; its group (relayd-drop, the group relayd-sendmail
	 * is setgid to) may create files but not list or read them; sticky,
	 * so no one removes another's file. The mode at creation, not
	 * narrowed by the umask. */
	mode_t old = umask(0);
	int r = mkdir(dir, 01730) < 0 && errno != EEXIST ? -errno : 0;
	umask(old);
	if (r < 0) {
		log_err("maildrop: cannot make %s: %s", dir, strerror(-r));
		return r;
	}
	struct stat st;
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_err("maildrop: %s is not a directory; not importing", dir);
		return -ENOTDIR;
	}
	/* The group relayd-sendmail is setgid to, when the system has it
	 * (`make install` makes it, and relayd's account a member, so that
	 * this works after the privilege drop too). */
	struct group *g = getgrnam(SMTPD_MAILDROP_GROUP);
	if (g && st.st_gid != g->gr_gid && st.st_uid == geteuid()) {
		if (chown(dir, (uid_t)-1, g->gr_gid) < 0 || chmod(dir, 01730) < 0)
			log_warn("maildrop: cannot give %s to group %s: %s; "
			         "relayd-sendmail cannot write there", dir,
			         SMTPD_MAILDROP_GROUP, strerror(errno));
	}
	/* The group must be able to pass through the spool (0711). */
	struct stat sp;
	if (g && stat(c->spool_dir, &sp) == 0 && !(sp.st_mode & S_IXOTH) &&
	    !(sp.st_gid == g->gr_gid && (sp.st_mode & S_IXGRP)))
		log_warn("maildrop: spool_dir %s is mode %04o: relayd-sendmail "
		         "(group %s) cannot reach %s; chmod 0711 %s", c->spool_dir,
		         (unsigned)(sp.st_mode & 07777), SMTPD_MAILDROP_GROUP, dir,
		         c->spool_dir);
	if (st.st_uid != geteuid())
		log_warn("maildrop: %s belongs to uid %u, not to relayd (uid %u): "
		         "chown it to relayd's account", dir, (unsigned)st.st_uid,
		         (unsigned)geteuid());
	struct smtpd_maildrop *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	m->dfd = -1;
	m->loop = loop;
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	if (k <= 0) {
		free(m);
		return -errno;
	}
	self[k] = '\0';
	char *slash = strrchr(self, '/');
	*(slash ? slash : self) = '\0';
	snprintf(m->prog, sizeof m->prog, "%s/relayd-sendmail", self);
	if (conf_path && !(m->conf_path = realpath(conf_path, NULL))) {
		free(m);
		return -errno;
	}
	if (access(m->prog, X_OK) < 0) {
		log_warn("maildrop: %s not found; %s is not imported", m->prog,
		         dir);
		md_free(m);
		return -ENOENT;
	}
	uv_timer_init(loop, &m->timer);
	m->timer.data = m;
	m->open_handles = 1;
	/* Without inotify (or out of watches) the timer still imports. */
	m->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (m->dfd >= 0 && uv_fs_event_init(loop, &m->watch) == 0) {
		m->watch.data = m;
		m->open_handles++;
		r = uv_fs_event_start(&m->watch, md_watch_cb, dir, 0);
		if (r < 0) {
			log_warn("maildrop: cannot watch %s: %s; importing every "
			         "%d s", dir, uv_strerror(r), SMTPD_MAILDROP_PERIOD);
			uv_close((uv_handle_t *)&m->watch, md_closed_cb);
		}
	}
	/* At once (the loop is about to run, so the child finds relayd
	 * listening), then periodically. */
	uv_timer_start(&m->timer, md_timer_cb, 0, SMTPD_MAILDROP_PERIOD * 1000);
	*out = m;
	return 0;
}

void smtpd_maildrop_stop(struct smtpd_maildrop *m)
{
	if (!m || m->stopping)
		return;
	m->stopping = true;
	uv_timer_stop(&m->timer);
	uv_close((uv_handle_t *)&m->timer, md_closed_cb);
	if (m->watch.loop && !uv_is_closing((uv_handle_t *)&m->watch))
		uv_close((uv_handle_t *)&m->watch, md_closed_cb);
	/* The child finds relayd gone and leaves the rest for next time;
	 * a file is removed only after its 250. */
	if (m->running)
		uv_process_kill(&m->proc, SIGTERM);
}
