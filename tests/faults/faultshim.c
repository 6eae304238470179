/*
 * tests/faults/faultshim.c - An LD_PRELOAD shim that makes chosen file
 * system calls fail, for the disk-fault tests (tests/e2e/
 * test_durability_faults.py). Test-only: never linked into relayd. It
 * does not mix with ASan (both want to be first in the link map), so the
 * tests that use it run in the plain pass only.
 *
 * Wrapped: write, pwrite(64), writev, pwritev(64), fsync, fdatasync,
 * syncfs, sync_file_range, msync, rename, renameat, renameat2, linkat.
 * LMDB (liblmdb0 0.9) writes its pages with pwrite/writev, syncs them with
 * fdatasync, and writes the meta page with pwrite (through an O_DSYNC
 * descriptor unless MDB_NOMETASYNC): a rule on "index/data.mdb" fails its
 * commit.
 *
 * Control, at run time: FAULTSHIM_CTL names a control file, re-read
 * whenever it changes (mtime, size or inode; write it elsewhere and
 * rename it over, or just rewrite it). One rule per line:
 *
 *     OPS ERRNO PATH COUNT [after=OP]
 *
 *   OPS    comma list of the call names above, or "*" for all of them
 *   ERRNO  EIO, ENOSPC or EDQUOT
 *   PATH   substring the file's path must contain ("*": any). For a
 *          descriptor, its /proc/self/fd link (an unnamed O_TMPFILE
 *          file reads "DIR/#N (deleted)"); for rename and linkat, the
 *          old or the new path (relative names resolved against their
 *          directory descriptor). msync has no path: only "*" matches it.
 *   COUNT  how many calls fail before the rule is spent; -1: all of them
 *   after=OP  fail a call only when the call before it on a matching
 *          path was OP. LMDB's commit is pages (pwrite/writev),
 *          fdatasync, then the meta page (pwrite): "pwrite EIO
 *          index/data.mdb 1 after=fdatasync" fails the meta page write
 *          alone, the one failure that makes LMDB mark its environment
 *          fatal (MDB_PANIC for every later transaction).
 *
 * Lines starting with '#' and empty lines are ignored. An empty or
 * missing file: no faults. Counts restart when the file changes.
 *
 * FAULTSHIM_LOG, if set, names a file that gets one line per injected
 * fault ("OP ERRNO PATH"), so a test can show its fault was hit.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_RULES 16

enum op {
	OP_WRITE, OP_PWRITE, OP_WRITEV, OP_PWRITEV, OP_FSYNC, OP_FDATASYNC,
	OP_SYNCFS, OP_SYNC_FILE_RANGE, OP_MSYNC, OP_RENAME, OP_RENAMEAT,
	OP_RENAMEAT2, OP_LINKAT, OP__COUNT
};

static const char *const op_names[OP__COUNT] = {
	"write", "pwrite", "writev", "pwritev", "fsync", "fdatasync", "syncfs",
	"sync_file_range", "msync", "rename", "renameat", "renameat2", "linkat",
};

struct rule {
	unsigned ops;       /* bit per enum op */
	int err;
	char path[PATH_MAX];    /* "" matches any */
	long left;          /* -1: forever */
	int after;          /* -1, or the op that must come just before */
	int last;           /* the last op seen on a matching path, or -1 */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static size_t nrules;
static struct stat ctl_seen;    /* what the rules were read from */
static bool ctl_loaded;

/* The real functions. */
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned);
static int (*real_msync)(void *, size_t, int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);
static int (*real_linkat)(int, const char *, int, const char *, int);

#define RESOLVE(name) (real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name))

__attribute__((constructor)) static void shim_init(void)
{
	RESOLVE(write);
	RESOLVE(pwrite);
	RESOLVE(pwrite64);
	RESOLVE(writev);
	RESOLVE(pwritev);
	RESOLVE(pwritev64);
	RESOLVE(fsync);
	RESOLVE(fdatasync);
	RESOLVE(syncfs);
	RESOLVE(sync_file_range);
	RESOLVE(msync);
	RESOLVE(rename);
	RESOLVE(renameat);
	RESOLVE(renameat2);
	RESOLVE(linkat);
}

static int parse_errno(const char *s)
{
	if (!strcmp(s, "EIO"))
		return EIO;
	if (!strcmp(s, "ENOSPC"))
		return ENOSPC;
	if (!strcmp(s, "EDQUOT"))
		return EDQUOT;
	return 0;
}

static unsigned parse_ops(char *s)
{
	unsigned m = 0;
	for (char *save = NULL, *t = strtok_r(s, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		if (!strcmp(t, "*"))
			return (1u << OP__COUNT) - 1;
		for (int i = 0; i < OP__COUNT; i++)
			if (!strcmp(t, op_names[i]))
				m |= 1u << i;
	}
	return m;
}

/* Under mu: re-reads the control file when it changed. */
static void reload(void)
{
	const char *ctl = getenv("FAULTSHIM_CTL");
	struct stat st;
	if (!ctl || stat(ctl, &st) < 0) {
		nrules = 0;
		ctl_loaded = false;
		return;
	}
	if (ctl_loaded && st.st_ino == ctl_seen.st_ino &&
	    st.st_size == ctl_seen.st_size &&
	    st.st_mtim.tv_sec == ctl_seen.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == ctl_seen.st_mtim.tv_nsec)
		return;
	ctl_seen = st;
	ctl_loaded = true;
	nrules = 0;
	FILE *f = fopen(ctl, "re");
	if (!f)
		return;
	char line[PATH_MAX + 128];
	while (nrules < MAX_RULES && fgets(line, sizeof line, f)) {
		char ops[256], err[32], path[PATH_MAX], after[64] = "";
		long count;
		if (line[0] == '#' || line[0] == '\n')
			continue;
		int got = sscanf(line, "%255s %31s %4095s %ld %63s", ops, err, path,
		                 &count, after);
		if (got < 4)
			continue;
		struct rule *r = &rules[nrules];
		r->after = r->last = -1;
		if (after[0]) {
			if (strncmp(after, "after=", 6) != 0)
				continue;
			for (int i = 0; i < OP__COUNT; i++)
				if (!strcmp(after + 6, op_names[i]))
					r->after = i;
			if (r->after < 0)
				continue;
		}
		r->ops = parse_ops(ops);
		r->err = parse_errno(err);
		if (!r->ops || !r->err || count == 0)
			continue;
		snprintf(r->path, sizeof r->path, "%s", strcmp(path, "*") ? path : "");
		r->left = count < 0 ? -1 : count;
		nrules++;
	}
	fclose(f);
}

static void log_hit(enum op op, int err, const char *path)
{
	const char *lp = getenv("FAULTSHIM_LOG");
	if (!lp)
		return;
	char line[PATH_MAX + 64];
	int n = snprintf(line, sizeof line, "%s %s %s\n", op_names[op],
	                 err == EIO ? "EIO" : err == ENOSPC ? "ENOSPC" : "EDQUOT",
	                 path && path[0] ? path : "-");
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = (int)sizeof line - 1;
	int fd = open(lp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	/* One write with O_APPEND: lines from several threads do not mix. */
	if (real_write(fd, line, (size_t)n) < 0) {
		/* nothing to do: the log is best effort */
	}
	close(fd);
}

/* The errno to fail with, or 0. a and b are the paths the call touches
 * (either may be NULL). */
static int fault(enum op op, const char *a, const char *b)
{
	if (!getenv("FAULTSHIM_CTL"))
		return 0;
	int saved = errno;
	int err = 0;
	const char *hit = NULL;
	pthread_mutex_lock(&mu);
	reload();
	/* Every rule sees every call on its path (after= needs the whole
	 * sequence); the first one that fires decides. */
	for (size_t i = 0; i < nrules; i++) {
		struct rule *r = &rules[i];
		const char *m;
		if (r->path[0]) {
			if (a && strstr(a, r->path))
				m = a;
			else if (b && strstr(b, r->path))
				m = b;
			else
				continue;
		} else {
			m = a ? a : b;
		}
		/* The sequence on this path, for after=. */
		int prev = r->last;
		r->last = (int)op;
		if (err || !(r->ops & (1u << op)) || r->left == 0)
			continue;
		if (r->after >= 0 && prev != r->after)
			continue;
		hit = m;
		err = r->err;
		if (r->left > 0)
			r->left--;
	}
	pthread_mutex_unlock(&mu);
	if (err)
		log_hit(op, err, hit);
	errno = saved;
	return err;
}

static const char *fd_path(int fd, char *buf, size_t len)
{
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, buf, len - 1);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return buf;
}

/* name relative to dirfd, as an absolute path where it can be found. */
static const char *at_path(int dirfd, const char *name, char *buf, size_t len)
{
	if (!name)
		return NULL;
	if (name[0] == '/' || dirfd == AT_FDCWD) {
		if (name[0] == '/') {
			snprintf(buf, len, "%s", name);
			return buf;
		}
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof cwd))
			return name;
		if (snprintf(buf, len, "%s/%s", cwd, name) >= (int)len)
			return name;
		return buf;
	}
	char dir[PATH_MAX];
	if (!fd_path(dirfd, dir, sizeof dir))
		return name;
	if (snprintf(buf, len, "%s/%s", dir, name) >= (int)len)
		return name;
	return buf;
}

/* For calls on a descriptor. */
#define FD_FAULT(op, fd, failval)                                        \
	do {                                                                 \
		if (getenv("FAULTSHIM_CTL")) {                                   \
			char pb_[PATH_MAX];                                          \
			int e_ = fault(op, fd_path(fd, pb_, sizeof pb_), NULL);      \
			if (e_) {                                                    \
				errno = e_;                                              \
				return failval;                                          \
			}                                                            \
		}                                                                \
	} while (0)

ssize_t write(int fd, const void *p, size_t n)
{
	FD_FAULT(OP_WRITE, fd, -1);
	return real_write(fd, p, n);
}

ssize_t pwrite(int fd, const void *p, size_t n, off_t off)
{
	FD_FAULT(OP_PWRITE, fd, -1);
	return real_pwrite(fd, p, n, off);
}

ssize_t pwrite64(int fd, const void *p, size_t n, off64_t off)
{
	FD_FAULT(OP_PWRITE, fd, -1);
	return real_pwrite64(fd, p, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	FD_FAULT(OP_WRITEV, fd, -1);
	return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	FD_FAULT(OP_PWRITEV, fd, -1);
	return real_pwritev(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off)
{
	FD_FAULT(OP_PWRITEV, fd, -1);
	return real_pwritev64(fd, iov, cnt, off);
}

int fsync(int fd)
{
	FD_FAULT(OP_FSYNC, fd, -1);
	return real_fsync(fd);
}

int fdatasync(int fd)
{
	FD_FAULT(OP_FDATASYNC, fd, -1);
	return real_fdatasync(fd);
}

int syncfs(int fd)
{
	FD_FAULT(OP_SYNCFS, fd, -1);
	return real_syncfs(fd);
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned flags)
{
	FD_FAULT(OP_SYNC_FILE_RANGE, fd, -1);
	return real_sync_file_range(fd, off, n, flags);
}

int msync(void *addr, size_t len, int flags)
{
	int e = fault(OP_MSYNC, NULL, NULL);
	if (e) {
		errno = e;
		return -1;
	}
	return real_msync(addr, len, flags);
}

int rename(const char *from, const char *to)
{
	char a[PATH_MAX], b[PATH_MAX];
	int e = fault(OP_RENAME, at_path(AT_FDCWD, from, a, sizeof a),
	              at_path(AT_FDCWD, to, b, sizeof b));
	if (e) {
		errno = e;
		return -1;
	}
	return real_rename(from, to);
}

int renameat(int fd1, const char *from, int fd2, const char *to)
{
	char a[PATH_MAX], b[PATH_MAX];
	int e = fault(OP_RENAMEAT, at_path(fd1, from, a, sizeof a),
	              at_path(fd2, to, b, sizeof b));
	if (e) {
		errno = e;
		return -1;
	}
	return real_renameat(fd1, from, fd2, to);
}

int renameat2(int fd1, const char *from, int fd2, const char *to,
              unsigned flags)
{
	char a[PATH_MAX], b[PATH_MAX];
	int e = fault(OP_RENAMEAT2, at_path(fd1, from, a, sizeof a),
	              at_path(fd2, to, b, sizeof b));
	if (e) {
		errno = e;
		return -1;
	}
	return real_renameat2(fd1, from, fd2, to, flags);
}

int linkat(int fd1, const char *from, int fd2, const char *to, int flags)
{
	char a[PATH_MAX], b[PATH_MAX];
	int e = fault(OP_LINKAT, at_path(fd1, from, a, sizeof a),
	              at_path(fd2, to, b, sizeof b));
	if (e) {
		errno = e;
		return -1;
	}
	return real_linkat(fd1, from, fd2, to, flags);
}
