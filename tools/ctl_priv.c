/*
 * tools/ctl_priv.c - relayctl run as root on a spool that belongs to
 * relayd's account. Before any command opens the LMDB environment, a body
 * file or the control socket, relayctl checks the spool and becomes its
 * owner (ctl_spool_enter). LMDB opens index/lock.mdb read-write by path
 * even for a read-only environment, and follows symbolic links: checking
 * after the fact cannot help, so the opening itself must run with no more
 * rights than the account that could have planted a link.
 *
 * The checks (lstat, never following) are there to explain; the switch
 * of ids is what makes a planted link harmless:
 *   - spool_dir itself: a directory, not a symbolic link, not writable
 *     by its group or others;
 *   - index/, msg/, tmp/ and the index files: not links, the spool
 *     owner's, not writable by group or others;
 *   - each ancestor of the spool: owned by root or the spool's owner and
 *     not writable by others unless sticky (/tmp), so nobody else can
 *     swap the spool between these checks and the opening.
 * Then setgroups, setgid, setuid to the owner (its account's group, or
 * the spool's group when the uid has no account), and a check that root
 * cannot come back. A spool of root's is used as root.
 */
#include "ctl.h"
#include "common/path.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* "relayd (uid 107)", or "uid 107" without an account. */
static const char *ctl_who(char *dst, size_t n, uid_t uid)
{
	struct passwd *pw = getpwuid(uid);
	if (pw)
		snprintf(dst, n, "%s (uid %u)", pw->pw_name, (unsigned)uid);
	else
		snprintf(dst, n, "uid %u", (unsigned)uid);
	return dst;
}

/* spool/name: absent, or a directory (dir) or regular file of owner's
 * that only owner may write. */
static int ctl_check_part(const char *spool, const char *name, bool dir,
                          uid_t owner)
{
	char path[PATH_MAX], w1[96], w2[96];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", spool, name);
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		ctl_err("%s: %s", path, strerror(errno));
		return -errno;
	}
	if (S_ISLNK(st.st_mode)) {
		ctl_err("%s is a symbolic link, which relayd never makes (someone "
		        "planted it?); run as root, relayctl refuses the spool: "
		        "remove the link", path);
		return -ELOOP;
	}
	if (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
		ctl_err("%s is not a %s, which relayd never makes; run as root, "
		        "relayctl refuses the spool", path,
		        dir ? "directory" : "regular file");
		return -EINVAL;
	}
	if (st.st_uid != owner) {
		ctl_err("%s belongs to %s but the spool to %s; run as root, "
		        "relayctl refuses a spool of mixed owners: start relayd "
		        "once (it gives the whole spool to its user) or fix the "
		        "owner", path, ctl_who(w1, sizeof w1, st.st_uid),
		        ctl_who(w2, sizeof w2, owner));
		return -EPERM;
	}
	if (st.st_mode & 022) {
		ctl_err("%s is writable by its group or others (mode %04o); run "
		        "as root, relayctl refuses it: chmod go-w %s", path,
		        (unsigned)(st.st_mode & 07777), path);
		return -EPERM;
	}
	return 0;
}

/* Every directory above the spool is root's or owner's, and nobody else
 * may rename entries in it (writable by group or others only with the
 * sticky bit, as /tmp). */
static int ctl_check_ancestors(const char *spool, uid_t owner)
{
	char real[PATH_MAX], w[96];
	/* No link anywhere on the path as written: the directories checked
	 * below are then the ones the path goes through, and none of them
	 * can be swapped by another account (a link in the middle, flipped
	 * between a tree of root's and the account's, made root open the
	 * account's index as root). */
	int fd = path_open_dir_nofollow(spool, real, sizeof real);
	if (fd < 0) {
		if (fd == -ELOOP || fd == -ENOTDIR)
			ctl_err("%s, on the way to spool_dir %s, is a symbolic link "
			        "or not a directory; run as root, relayctl refuses a "
			        "spool reached through a link: set spool_dir to the "
			        "real path", real, spool);
		else
			ctl_err("%s: %s", spool, strerror(-fd));
		return fd;
	}
	close(fd);
	if (!realpath(spool, real)) {
		ctl_err("%s: %s", spool, strerror(errno));
		return -errno;
	}
	for (char *slash = strrchr(real, '/'); slash; slash = strrchr(real, '/')) {
		if (slash == real)
			slash[1] = '\0';        /* "/" itself, last */
		else
			*slash = '\0';
		struct stat st;
		if (lstat(real, &st) < 0) {
			ctl_err("%s: %s", real, strerror(errno));
			return -errno;
		}
		if (st.st_uid != 0 && st.st_uid != owner) {
			ctl_err("%s, above spool_dir %s, belongs to %s; run as root, "
			        "relayctl refuses a spool that others could swap", real,
			        spool, ctl_who(w, sizeof w, st.st_uid));
			return -EPERM;
		}
		if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
			ctl_err("%s, above spool_dir %s, is writable by its group or "
			        "others (mode %04o); run as root, relayctl refuses a "
			        "spool that others could swap", real, spool,
			        (unsigned)(st.st_mode & 07777));
			return -EPERM;
		}
		if (slash == real)
			break;
	}
	return 0;
}

/* Becomes uid/gid for good: setuid(0) must fail afterwards. */
static int ctl_become(uid_t uid, gid_t gid, const char *who)
{
	if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
		ctl_err("cannot switch to the spool's owner %s: %s", who,
		        strerror(errno));
		return -errno;
	}
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 ||
	    ru != uid || eu != uid || su != uid || rg != gid || eg != gid ||
	    sg != gid || getgroups(0, NULL) != 0 || setuid(0) == 0 ||
	    seteuid(0) == 0 || (gid != 0 && setgid(0) == 0)) {
		ctl_err("switching to the spool's owner %s left a way back to "
		        "root; stopping", who);
		return -EPERM;
	}
	return 0;
}

int ctl_spool_enter(struct ctl_ctx *c)
{
	if (geteuid() != 0)
		return 0;       /* the kernel's checks are the owner's already */
	const char *spool = c->conf.spool_dir;
	struct stat st;
	if (lstat(spool, &st) < 0) {
		int e = errno;
		if (e == ENOENT)
			ctl_err("no spool at %s (is spool_dir right? relayd creates "
			        "it at first start)", spool);
		else
			ctl_err("%s: %s", spool, strerror(e));
		return -e;
	}
	if (S_ISLNK(st.st_mode)) {
		char real[PATH_MAX];
		if (!realpath(spool, real))
			snprintf(real, sizeof real, "nothing");
		ctl_err("spool_dir %s is a symbolic link (to %s); run as root, "
		        "relayctl does not follow it: set spool_dir to the real "
		        "directory", spool, real);
		return -ELOOP;
	}
	if (!S_ISDIR(st.st_mode)) {
		ctl_err("spool_dir %s is not a directory", spool);
		return -ENOTDIR;
	}
	if (st.st_mode & 022) {
		ctl_err("spool %s is writable by its group or others (mode %04o); "
		        "relayd makes it 0700; run as root, relayctl refuses it: "
		        "chmod go-w %s", spool, (unsigned)(st.st_mode & 07777),
		        spool);
		return -EPERM;
	}
	uid_t owner = st.st_uid;
	static const struct { const char *name; bool dir; } parts[] = {
		{"index", true}, {"msg", true}, {"tmp", true},
		{"index/data.mdb", false}, {"index/lock.mdb", false},
	};
	int r;
	for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
		if ((r = ctl_check_part(spool, parts[i].name, parts[i].dir,
		                        owner)) < 0)
			return r;
	if ((r = ctl_check_ancestors(spool, owner)) < 0)
		return r;
	if (owner == 0)
		return 0;       /* root's spool: nobody else could plant a link */

	char who[96];
	struct passwd *pw = getpwuid(owner);
	gid_t gid = pw ? pw->pw_gid : st.st_gid;
	ctl_who(who, sizeof who, owner);
	if ((r = ctl_become(owner, gid, who)) < 0)
		return r;
	/* From here on every name is resolved with the owner's rights. */
	if (access(spool, R_OK | W_OK | X_OK) < 0) {
		int e = errno;
		ctl_err("run as root, relayctl works as the spool's owner %s, who "
		        "cannot use %s: %s (its parent directories must let that "
		        "account through)", who, spool, strerror(e));
		return -e;
	}
	return 0;
}
