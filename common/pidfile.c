/*
 * common/pidfile.c - pid_file (see pidfile.h).
 */
#include "common/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int pidfile_open(const char *path, char *err, size_t errlen)
{
	/* Opened as root, at a path from root's configuration: never
	 * through a link, never anything but a regular file. */
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC |
	              O_NONBLOCK | O_NOCTTY, 0644);
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "pid_file %s: %s", path,
		         e == ELOOP ? "is a symbolic link" : strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "pid_file %s: not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	/* A hard link planted by whoever can write the directory (relayd's
	 * own user, once it dropped root) would have root truncate and
	 * overwrite the file it names. Ours has exactly one name. */
	if (st.st_nlink != 1) {
		snprintf(err, errlen, "pid_file %s: is a hard link (%ju names); "
		         "remove it", path, (uintmax_t)st.st_nlink);
		close(fd);
		return -EINVAL;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		char buf[32] = "";
		ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		if (e == EWOULDBLOCK)
			snprintf(err, errlen, "pid_file %s: relayd is already "
			         "running (pid %s)", path, buf[0] ? buf : "?");
		else
			snprintf(err, errlen, "pid_file %s: cannot lock: %s", path,
			         strerror(e));
		close(fd);
		return e == EWOULDBLOCK ? -EEXIST : -e;
	}
	char line[32];
	int len = snprintf(line, sizeof line, "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, line, (size_t)len, 0) != len) {
		int e = errno ? errno : EIO;
		snprintf(err, errlen, "pid_file %s: cannot write: %s", path,
		         strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

void pidfile_close(const char *path, int fd)
{
	if (fd < 0)
		return;
	struct stat a, b;
	if (fstat(fd, &a) == 0 && lstat(path, &b) == 0 &&
	    a.st_dev == b.st_dev && a.st_ino == b.st_ino)
		(void)unlink(path);
	close(fd);
}
