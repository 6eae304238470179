/*
 * common/path.c - path_open_dir_nofollow (path.h): a directory opened by
 * a walk that follows no symbolic link, so an account that can write to
 * a directory on the way cannot redirect root elsewhere.
 */
#include "common/path.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int path_open_dir_nofollow(const char *path, char *bad, unsigned badlen)
{
	const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0)
		return -ENOENT;
	if (n >= sizeof buf)
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	int fd = open(buf[0] == '/' ? "/" : ".", flags);
	if (fd < 0)
		return -errno;
	char *save = NULL;
	for (char *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (strcmp(c, ".") == 0)
			continue;
		int next = openat(fd, c, flags);
		int e = errno;
		close(fd);
		if (next < 0) {
			if (bad) {
				/* The path as given, up to this component. */
				size_t end = (size_t)(c - buf) + strlen(c);
				snprintf(bad, badlen, "%.*s", (int)end, path);
			}
			return -e;
		}
		fd = next;
	}
	return fd;
}
