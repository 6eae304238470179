/*
 * smtpd/smtpd_priv.c - Who relayd runs as (smtpd_priv.h): the `user`
 * account and the spool_dir checks of `relayd -t` and of the start, the
 * creation of a missing spool_dir (and parents), and the drop from root
 * after binding, with the hand-over of a spool that root (or another
 * account) created before.
 *
 * The hand-over runs as root inside a directory tree the target account
 * may already control, so it never resolves a name twice: each entry is
 * opened O_PATH | O_NOFOLLOW, checked through the descriptor (a symbolic
 * link stops the start; a file with more than one link is left alone,
 * since it may be a hard link to a file of root's) and changed through
 * the same descriptor.
 */
#include "smtpd/smtpd_priv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/path.h"

/* The account relayd drops to. */
struct priv_account {
	char name[64];
	uid_t uid;
	gid_t gid;
};

static int fmt(char *err, size_t errlen, int rc, const char *f, ...)
	__attribute__((format(printf, 4, 5)));

static int fmt(char *err, size_t errlen, int rc, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	vsnprintf(err, errlen, f, ap);
	va_end(ap);
	return rc;
}

/* The account `user` names, when relayd runs as root. "root" (or any name
 * of uid 0) means staying root; that has to be written out. */
static int priv_lookup(const struct conf *c, struct priv_account *a,
                       char *err, size_t errlen)
{
	if (!c->user[0])
		return fmt(err, errlen, -EINVAL,
		           "user is empty: name the account relayd runs as after "
		           "binding (user = relayd, the default), or write "
		           "user = root to keep running as root");
	if (strlen(c->user) >= sizeof a->name)
		return fmt(err, errlen, -ENAMETOOLONG, "user %s: name too long",
		           c->user);
	errno = 0;
	struct passwd *pw = getpwnam(c->user);
	if (!pw) {
		int e = errno;
		/* glibc reports "no such entry" as 0, ENOENT, ESRCH or EBADF. */
		if (e && e != ENOENT && e != ESRCH && e != EBADF && e != EPERM)
			return fmt(err, errlen, -e, "user %s: cannot look it up: %s",
			           c->user, strerror(e));
		return fmt(err, errlen, -ENOENT,
		           "user %s does not exist: create it with `make install` "
		           "or `adduser --system --group %s`, or set user = root to "
		           "run as root", c->user, c->user);
	}
	snprintf(a->name, sizeof a->name, "%s", pw->pw_name);
	a->uid = pw->pw_uid;
	a->gid = pw->pw_gid;
	return 0;
}

/* spool_dir is a directory, or relayd can make it: the nearest ancestor
 * that exists is a directory it may write to. Missing parents are made
 * at start (smtpd_priv_make_spool), as `install -d` would.
 * handover: relayd will give the spool away as root, which it does
 * without following links, so a link as spool_dir is refused here. */
static int spool_check(const char *spool, bool handover, char *err,
                       size_t errlen)
{
	struct stat st;
	uid_t me = geteuid();
	if (lstat(spool, &st) == 0) {
		if (S_ISLNK(st.st_mode) && handover) {
			char real[PATH_MAX];
			if (!realpath(spool, real))
				snprintf(real, sizeof real, "a missing directory");
			return fmt(err, errlen, -ELOOP,
			           "spool_dir %s is a symbolic link (to %s); relayd "
			           "started as root hands the spool over to its user "
			           "without following links: set spool_dir to the real "
			           "directory", spool, real);
		}
		if (stat(spool, &st) < 0)
			return fmt(err, errlen, -errno, "spool_dir %s: %s", spool,
			           strerror(errno));
		if (!S_ISDIR(st.st_mode))
			return fmt(err, errlen, -ENOTDIR,
			           "spool_dir %s exists and is not a directory", spool);
		if (me != 0 && access(spool, R_OK | W_OK | X_OK) < 0)
			return fmt(err, errlen, -errno,
			           "spool_dir %s is not usable by uid %u: %s (it must "
			           "belong to the account relayd runs as)", spool,
			           (unsigned)me, strerror(errno));
		return 0;
	}
	if (errno != ENOENT && errno != ENOTDIR)
		return fmt(err, errlen, -errno, "spool_dir %s: %s", spool,
		           strerror(errno));

	/* The nearest ancestor that exists (at most one step per '/'). */
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof dir, "%s", spool) >= (int)sizeof dir)
		return fmt(err, errlen, -ENAMETOOLONG, "spool_dir %s: name too long",
		           spool);
	for (;;) {
		char *slash = strrchr(dir, '/');
		while (slash && slash > dir && slash[1] == '\0') {
			*slash = '\0';              /* "a/b/" is "a/b" */
			slash = strrchr(dir, '/');
		}
		if (!slash)
			snprintf(dir, sizeof dir, ".");
		else
			slash[slash == dir ? 1 : 0] = '\0';
		if (stat(dir, &st) == 0)
			break;
		int e = errno;
		if (e == ENOTDIR)
			continue;               /* named below, at the non-directory */
		if (e != ENOENT)
			return fmt(err, errlen, -e, "spool_dir %s cannot be created: "
			           "%s: %s", spool, dir, strerror(e));
		if (strcmp(dir, ".") == 0 || strcmp(dir, "/") == 0)
			return fmt(err, errlen, -e, "spool_dir %s cannot be created: "
			           "%s: %s", spool, dir, strerror(e));
	}
	if (!S_ISDIR(st.st_mode))
		return fmt(err, errlen, -ENOTDIR, "spool_dir %s cannot be created: "
		           "%s is not a directory", spool, dir);
	if (access(dir, W_OK | X_OK) < 0) {
		int e = errno;
		if (me == 0)
			return fmt(err, errlen, -e, "spool_dir %s cannot be created "
			           "in %s: %s", spool, dir, strerror(e));
		return fmt(err, errlen, -e, "spool_dir %s cannot be created: %s "
		           "is not writable by uid %u (%s); create the spool as root "
		           "and give it to that account, or fix spool_dir", spool,
		           dir, (unsigned)me, strerror(e));
	}
	return 0;
}

int smtpd_priv_check(const struct conf *c, char *err, size_t errlen)
{
	bool handover = false;
	if (geteuid() == 0) {
		struct priv_account a;
		int r = priv_lookup(c, &a, err, errlen);
		if (r < 0)
			return r;
		handover = a.uid != 0;
	}
	return spool_check(c->spool_dir, handover, err, errlen);
}

/* ---- the hand-over --------------------------------------------------- */

struct handover {
	const char *spool;
	const struct priv_account *to;
	bool top_owned;         /* the spool was the account's already */
	size_t changed;         /* entries given away */
};

static bool owned(const struct handover *h, const struct stat *st)
{
	return st->st_uid == h->to->uid && st->st_gid == h->to->gid;
}

/* Changes the owner of what fd (any kind, O_PATH too) refers to. */
static int give_fd(struct handover *h, int fd, const struct stat *st,
                   const char *rel)
{
	if (owned(h, st))
		return 0;
	if (fchownat(fd, "", h->to->uid, h->to->gid, AT_EMPTY_PATH) < 0) {
		int e = errno;
		log_err("cannot give %s/%s to user %s: %s", h->spool, rel,
		        h->to->name, strerror(e));
		return -e;
	}
	h->changed++;
	return 0;
}

static int give_dir(struct handover *h, int dfd, const char *rel, int depth);

static int give_maildrop(struct handover *h, int dfd, const char *name)
{
	int fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	int r = 0;
	if (fstat(fd, &st) < 0) {
		r = -errno;
	} else if (!S_ISDIR(st.st_mode)) {
		log_err("spool %s/%s is not a directory (a link?); refusing to "
		        "start as root with it there", h->spool, name);
		r = -ENOTDIR;
	} else if (st.st_uid != h->to->uid &&
	           fchownat(fd, "", h->to->uid, st.st_gid == 0 ? h->to->gid :
	                    st.st_gid, AT_EMPTY_PATH) < 0) {
		r = -errno;
		log_err("cannot give %s/%s to user %s: %s", h->spool, name,
		        h->to->name, strerror(-r));
	}
	close(fd);
	return r;
}

/* One entry of directory dfd. Regular files (with a single link) and,
 * at the top, directories become the account's; sockets (the control
 * socket, which relayd makes anew), FIFOs and devices are left alone. */
static int give_entry(struct handover *h, int dfd, const char *dir_rel,
                      const char *name, int depth)
{
	char rel[PATH_MAX];
	/* maildrop/ becomes the account's but keeps a group other than
	 * root's (relayd-drop, which relayd-sendmail is setgid to), and its
	 * files stay their submitters' (the importer checks a file's owner
	 * against the uid it names): smtpd_maildrop.c. */
	if (depth == 0 && strcmp(name, "maildrop") == 0)
		return give_maildrop(h, dfd, name);
	snprintf(rel, sizeof rel, "%s%s%s", dir_rel, *dir_rel ? "/" : "", name);
	int fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)        /* removed meanwhile */
			return 0;
		log_err("cannot open %s/%s: %s", h->spool, rel, strerror(e));
		return -e;
	}
	struct stat st;
	int r = 0;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		log_err("cannot stat %s/%s: %s", h->spool, rel, strerror(-r));
	} else if (S_ISLNK(st.st_mode)) {
		log_err("spool %s/%s is a symbolic link, which relayd never makes; "
		        "remove it (refusing to start as root with it there)",
		        h->spool, rel);
		r = -ELOOP;
	} else if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
		/* Possibly a hard link to a file of root's: never chown it. */
		if (!owned(h, &st))
			log_warn("spool %s/%s has %ju links, which relayd never makes; "
			         "not giving it to user %s (remove it)", h->spool, rel,
			         (uintmax_t)st.st_nlink, h->to->name);
	} else if (S_ISREG(st.st_mode)) {
		r = give_fd(h, fd, &st, rel);
	} else if (S_ISDIR(st.st_mode) && depth == 0) {
		int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		                 O_CLOEXEC);
		struct stat st2;
		if (sub < 0 || fstat(sub, &st2) < 0) {
			r = -errno;
			log_err("cannot open %s/%s: %s", h->spool, rel, strerror(-r));
		} else if (st2.st_dev != st.st_dev || st2.st_ino != st.st_ino) {
			log_err("spool %s/%s changed while relayd started; refusing to "
			        "start", h->spool, rel);
			r = -EAGAIN;
		} else {
			r = give_dir(h, sub, rel, depth + 1);
		}
		if (sub >= 0)
			close(sub);
	} else if (S_ISDIR(st.st_mode) && !owned(h, &st)) {
		log_warn("spool %s/%s: a directory relayd does not make; not giving "
		         "it to user %s", h->spool, rel, h->to->name);
	}
	close(fd);
	return r;
}

/* The entries of dfd, then dfd itself, so that a directory owned by the
 * account means its hand-over finished (a crash midway is redone at the
 * next start). A subdirectory already the account's, inside a spool
 * already the account's, is not walked again (msg/ may hold a million
 * bodies), except index/ whose few files a root-run relayctl of old may
 * have created. */
static int give_dir(struct handover *h, int dfd, const char *rel, int depth)
{
	struct stat st;
	if (fstat(dfd, &st) < 0) {
		log_err("cannot stat %s/%s: %s", h->spool, rel, strerror(errno));
		return -errno;
	}
	bool walk = depth == 0 || !h->top_owned || !owned(h, &st) ||
	            strcmp(rel, "index") == 0;
	int r = 0;
	if (walk) {
		int copy = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = copy >= 0 ? fdopendir(copy) : NULL;
		if (!d) {
			r = -errno;
			log_err("cannot read %s/%s: %s", h->spool, rel, strerror(-r));
			if (copy >= 0)
				close(copy);
			return r;
		}
		struct dirent *e;
		errno = 0;
		while (r == 0 && (e = readdir(d))) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			/* A spool on its own file system: fsck's pieces of other
			 * files stay root's. */
			if (depth == 0 && strcmp(e->d_name, "lost+found") == 0)
				continue;
			r = give_entry(h, dfd, rel, e->d_name, depth);
			errno = 0;
		}
		if (r == 0 && errno) {
			r = -errno;
			log_err("cannot read %s/%s: %s", h->spool, rel, strerror(-r));
		}
		closedir(d);
	}
	if (r == 0)
		r = give_fd(h, dfd, &st, *rel ? rel : ".");
	return r;
}

/* A spool that root (an earlier relayd, a root-run relayctl) created
 * becomes the account's. */
static int hand_over_spool(const char *spool, const struct priv_account *a)
{
	/* No link is followed anywhere on the path (O_NOFOLLOW alone covers
	 * only its last component): an account that can write to a
	 * directory on the way must not make root give it another tree. */
	char bad[PATH_MAX];
	int dfd = path_open_dir_nofollow(spool, bad, sizeof bad);
	if (dfd < 0) {
		int e = -dfd;
		if (e == ELOOP || e == ENOTDIR)
			log_err("cannot open spool %s: %s is a symbolic link or not a "
			        "directory (relayd started as root follows no link on "
			        "the way to spool_dir: set it to the real path)",
			        spool, bad);
		else
			log_err("cannot open spool %s: %s", spool, strerror(e));
		return -e;
	}
	struct handover h = {.spool = spool, .to = a};
	struct stat st;
	int r = 0;
	if (fstat(dfd, &st) < 0) {
		r = -errno;
		log_err("cannot stat spool %s: %s", spool, strerror(-r));
	} else {
		h.top_owned = owned(&h, &st);
		r = give_dir(&h, dfd, "", 0);
	}
	close(dfd);
	if (r == 0 && h.changed)
		log_info("spool %s handed over to user %s (%zu entries had another "
		         "owner)", spool, a->name, h.changed);
	return r;
}

/* The log file was opened as root: give it to the account so SIGHUP can
 * reopen it (logrotate should create the next one as the account: see
 * contrib/). Through a descriptor, and never a file with several links. */
static void hand_over_log(const char *path, const struct priv_account *a)
{
	if (!path || !*path)
		return;
	int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_warn("cannot give log file %s to user %s: %s", path, a->name,
		         strerror(errno));
	} else if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
		log_warn("log file %s is not a regular file with one link; not "
		         "giving it to user %s", path, a->name);
	} else if ((st.st_uid != a->uid || st.st_gid != a->gid) &&
	           fchownat(fd, "", a->uid, a->gid, AT_EMPTY_PATH) < 0) {
		log_warn("cannot give log file %s to user %s: %s", path, a->name,
		         strerror(errno));
	}
	if (fd >= 0)
		close(fd);
}

/* fsync of the directory holding path, so a new entry survives a crash. */
static int sync_parent(const char *path)
{
	char parent[PATH_MAX];
	snprintf(parent, sizeof parent, "%s", path);
	int fd = open(dirname(parent), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd < 0 || fsync(fd) < 0 ? -errno : 0;
	if (fd >= 0)
		close(fd);
	if (r < 0)
		log_err("cannot sync the directory holding %s: %s", path,
		        strerror(-r));
	return r;
}

/* mkdir with exactly `mode` (not narrowed by the umask: a parent made
 * 0700 would keep the account out), its entry synced. *made: it was
 * created now. */
static int make_dir(const char *path, mode_t mode, bool *made)
{
	*made = false;
	/* The mode at creation, not by a chmod afterwards: between the two
	 * an account that can write to the parent could put a link in the
	 * new directory's place, and root would chmod its target. (At start,
	 * before any thread: the umask is the process's.) */
	mode_t old = umask(0);
	int r = mkdir(path, mode);
	int e = errno;
	umask(old);
	if (r < 0)
		return e == EEXIST ? 0 : -e;
	*made = true;
	return sync_parent(path);
}

int smtpd_priv_make_spool(const struct conf *c)
{
	const char *spool = c->spool_dir;
	char path[PATH_MAX];
	size_t n = strlen(spool);
	bool made;
	int r;
	if (n >= sizeof path) {
		log_err("spool_dir %s: name too long", spool);
		return -ENAMETOOLONG;
	}
	memcpy(path, spool, n + 1);
	while (n > 1 && path[n - 1] == '/')
		path[--n] = '\0';
	/* Each missing parent, from the top, mode 0755 as `install -d`. */
	for (char *p = path + 1; (p = strchr(p, '/')); p++) {
		*p = '\0';
		r = make_dir(path, 0755, &made);
		if (r == 0 && made)
			log_info("created directory %s (mode 0755) for spool_dir",
			         path);
		*p = '/';
		if (r < 0) {
			log_err("cannot create directory %.*s for spool_dir: %s",
			        (int)(p - path), path, strerror(-r));
			return r;
		}
	}
	r = make_dir(path, 0700, &made);
	if (r < 0) {
		log_err("cannot create spool %s: %s", spool, strerror(-r));
		return r;
	}
	return 0;
}

/* Drops to a for good: supplementary groups of the account (a group such
 * as ssl-cert may give it the TLS key), then the group, then the user,
 * and checks that none of root's ids is left and root cannot come back. */
static int drop_to(const struct priv_account *a)
{
	if (initgroups(a->name, a->gid) < 0 || setgid(a->gid) < 0 ||
	    setuid(a->uid) < 0) {
		log_err("cannot drop privileges to user %s: %s", a->name,
		        strerror(errno));
		return -errno;
	}
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 ||
	    ru != a->uid || eu != a->uid || su != a->uid || rg != a->gid ||
	    eg != a->gid || sg != a->gid || setuid(0) == 0 || seteuid(0) == 0 ||
	    (a->gid != 0 && setgid(0) == 0)) {
		log_err("dropping privileges to user %s left a way back to root; "
		        "refusing to run", a->name);
		return -EPERM;
	}
	return 0;
}

int smtpd_priv_drop(const struct conf *c)
{
	uid_t me = geteuid();
	if (me != 0) {
		struct passwd *pw = getpwuid(me);
		if (c->user[0] && (!pw || strcmp(pw->pw_name, c->user) != 0))
			log_info("not started as root: running as uid %u (user = %s "
			         "applies when relayd is started as root)",
			         (unsigned)me, c->user);
		return 0;
	}
	struct priv_account a;
	char err[512];
	int r = priv_lookup(c, &a, err, sizeof err);
	if (r < 0) {
		log_err("%s", err);
		return r;
	}
	if (a.uid == 0) {
		log_info("running as root (user = %s)", c->user);
		return 0;
	}
	if ((r = hand_over_spool(c->spool_dir, &a)) < 0)
		return r;
	hand_over_log(c->log_file, &a);
	if ((r = drop_to(&a)) < 0)
		return r;
	log_info("running as user %s (uid %u, gid %u)", a.name, (unsigned)a.uid,
	         (unsigned)a.gid);
	return 0;
}
