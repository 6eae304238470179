/*
 * tests/unit/test_pidfile.c - common/pidfile.c on real files in a
 * temporary directory: a fresh file gets "PID\n"; a second open of the
 * same path is refused while the first holds the lock; a hard link to
 * another file (planted by whoever can write the pid_file's directory,
 * e.g. relayd's own user after it dropped root) is refused and the
 * linked file is left untouched; a FIFO is refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/pidfile.h"

struct dir {
	char path[64];
};

static int dir_setup(void **state)
{
	struct dir *d = calloc(1, sizeof *d);
	if (!d)
		return -1;
	snprintf(d->path, sizeof d->path, "/tmp/relayd-pidfile-XXXXXX");
	if (!mkdtemp(d->path)) {
		free(d);
		return -1;
	}
	*state = d;
	return 0;
}

static int dir_teardown(void **state)
{
	struct dir *d = *state;
	const char *names[] = {"relayd.pid", "victim", "fifo"};
	char p[128];
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(p, sizeof p, "%s/%s", d->path, names[i]);
		(void)unlink(p);
	}
	(void)rmdir(d->path);
	free(d);
	return 0;
}

static void read_all(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	ssize_t r = read(fd, buf, n - 1);
	assert_true(r >= 0);
	buf[r] = '\0';
	close(fd);
}

static void test_written_and_locked(void **state)
{
	struct dir *d = *state;
	char p[128], err[256] = "", want[32], got[64];
	snprintf(p, sizeof p, "%s/relayd.pid", d->path);
	int fd = pidfile_open(p, err, sizeof err);
	assert_true(fd >= 0);
	snprintf(want, sizeof want, "%ld\n", (long)getpid());
	read_all(p, got, sizeof got);
	assert_string_equal(got, want);
	/* A second relayd: refused, naming the first one's pid. */
	int fd2 = pidfile_open(p, err, sizeof err);
	assert_int_equal(fd2, -EEXIST);
	assert_non_null(strstr(err, "already running"));
	pidfile_close(p, fd);
	assert_int_equal(access(p, F_OK), -1);
}

static void test_hard_link_refused(void **state)
{
	struct dir *d = *state;
	char p[128], v[128], err[256] = "", got[64];
	snprintf(p, sizeof p, "%s/relayd.pid", d->path);
	snprintf(v, sizeof v, "%s/victim", d->path);
	int vfd = open(v, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(vfd >= 0);
	assert_int_equal(write(vfd, "root:secret\n", 12), 12);
	close(vfd);
	assert_int_equal(link(v, p), 0);
	int fd = pidfile_open(p, err, sizeof err);
	assert_int_equal(fd, -EINVAL);
	assert_non_null(strstr(err, "hard link"));
	/* Neither truncated nor overwritten. */
	read_all(v, got, sizeof got);
	assert_string_equal(got, "root:secret\n");
}

static void test_fifo_refused(void **state)
{
	struct dir *d = *state;
	char p[128], err[256] = "";
	snprintf(p, sizeof p, "%s/fifo", d->path);
	assert_int_equal(mkfifo(p, 0600), 0);
	int fd = pidfile_open(p, err, sizeof err);
	assert_int_equal(fd, -EINVAL);
	assert_non_null(strstr(err, "not a regular file"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_written_and_locked,
		                                dir_setup, dir_teardown),
		cmocka_unit_test_setup_teardown(test_hard_link_refused,
		                                dir_setup, dir_teardown),
		cmocka_unit_test_setup_teardown(test_fifo_refused,
		                                dir_setup, dir_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
