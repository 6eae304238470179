/*
 * common/lines.c - The bounded file reader and line walker of lines.h,
 * shared by common/conf.c, common/cred.c and deliver/deliver_policy.c.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/lines.h"

#define LINES_FIRST_CAP 4096

int lines_read_file(const char *path, size_t max, unsigned flags,
                    char **text, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	size_t n = 0, cap = LINES_FIRST_CAP;
	int rc = 0;
	/* LINES_REGULAR: O_NONBLOCK, so that a FIFO is refused below
	 * rather than waited on in open(2) (a regular file ignores it). */
	int fd = open(path, O_RDONLY | O_CLOEXEC |
	              ((flags & LINES_REGULAR) ? O_NONBLOCK : 0));
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	bool reg = S_ISREG(st.st_mode);
	if ((flags & LINES_REGULAR) && !reg) {
		rc = -EINVAL;
		goto fail;
	}
	if (reg && (uint64_t)st.st_size > max) {
		rc = -EFBIG;
		goto fail;
	}
	/* A regular file: one byte more than its size, to see the end (or a
	 * file that grew meanwhile) in one read. */
	if (reg)
		cap = (size_t)st.st_size + 1;
	else if (cap > max + 1)
		cap = max + 1;
	if (!(buf = malloc(cap + 1))) {
		rc = -ENOMEM;
		goto fail;
	}
	for (;;) {
		if (n == cap) {
			if (reg && (flags & LINES_SNAPSHOT)) {
				rc = -EAGAIN;
				goto fail;
			}
			if (n > max) {
				rc = -EFBIG;
				goto fail;
			}
			size_t ncap = cap > (max + 1) / 2 ? max + 1 : cap * 2;
			char *nb = realloc(buf, ncap + 1);
			if (!nb) {
				rc = -ENOMEM;
				goto fail;
			}
			buf = nb;
			cap = ncap;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto fail;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > max) {
		rc = -EFBIG;
		goto fail;
	}
	buf[n] = '\0';
	close(fd);
	*text = buf;
	*len = n;
	return 0;
fail:
	free(buf);
	close(fd);
	return rc;
}

void lines_init(struct lines *it, const char *text, size_t len, size_t max,
                unsigned flags)
{
	it->text = text;
	it->len = text ? len : 0;
	it->pos = 0;
	it->lineno = 0;
	it->max = max;
	it->flags = flags;
}

int lines_next(struct lines *it, const char **s, size_t *n)
{
	if (it->pos >= it->len)
		return 0;
	const char *p = it->text + it->pos;
	const char *nl = memchr(p, '\n', it->len - it->pos);
	size_t k = nl ? (size_t)(nl - p) : it->len - it->pos;
	it->pos += k + (nl ? 1 : 0);
	it->lineno++;
	if ((it->flags & LINES_STRIP_CR) && k > 0 && p[k - 1] == '\r')
		k--;
	*s = p;
	*n = k;
	if (k > it->max)
		return -E2BIG;
	if ((it->flags & LINES_NO_NUL) && memchr(p, '\0', k))
		return -EILSEQ;
	return 1;
}

void lines_error(const struct lines *it, int rc, const char *name, char *err,
                 size_t errlen)
{
	if (!err || !errlen)
		return;
	if (rc == -E2BIG)
		snprintf(err, errlen, "%s:%zu: line longer than %zu characters",
		         name, it->lineno, it->max);
	else if (rc == -EILSEQ)
		snprintf(err, errlen, "%s:%zu: NUL byte in line", name,
		         it->lineno);
	else
		snprintf(err, errlen, "%s:%zu: %s", name, it->lineno,
		         strerror(rc < 0 ? -rc : rc));
}
