/*
 * tests/unit/test_lines.c - common/lines.{c,h}: the line walker, table
 * driven (bytes in, the lines and errors out: CRLF, no final newline,
 * an overlong line, a NUL byte, an empty text), and the bounded file
 * reader on real files in a temporary directory (empty, at the limit,
 * one byte over, not a regular file, missing).
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

#include "common/lines.h"

/* ---- the walker -------------------------------------------------------- */

struct walk_case {
	const char *name;
	const char *in;
	size_t len;             /* 0: strlen(in) */
	size_t max;
	unsigned flags;
	/* Each step: a line as "text|" (CR shown as \r), or "E2BIG@N" /
	 * "EILSEQ@N" for an error on line N; joined in order. */
	const char *want;
};

#define L(s) s, sizeof s - 1

static const struct walk_case walk_cases[] = {
	{"empty text", L(""), 8, 0, ""},
	{"one line with LF", "a b\n", 0, 8, 0, "a b|"},
	{"no final newline", "a\nbc", 0, 8, 0, "a|bc|"},
	{"empty lines", "\n\nx\n", 0, 8, 0, "||x|"},
	{"CRLF kept", "a\r\nb\r\n", 0, 8, 0, "a\\r|b\\r|"},
	{"CRLF stripped", "a\r\nb\r\n", 0, 8, LINES_STRIP_CR, "a|b|"},
	{"lone CR is no line end", "a\rb\n", 0, 8, LINES_STRIP_CR, "a\\rb|"},
	{"CR-only line stripped", "\r\n", 0, 8, LINES_STRIP_CR, "|"},
	{"exactly max", "12345678\n", 0, 8, 0, "12345678|"},
	{"max + 1", "123456789\nok\n", 0, 8, 0, "E2BIG@1|ok|"},
	{"CR counts unless stripped", "1234567\r\n", 0, 7, 0, "E2BIG@1|"},
	{"CR stripped before the cap", "1234567\r\n", 0, 7, LINES_STRIP_CR,
	 "1234567|"},
	{"overlong last line without LF", "a\n123456789", 0, 8, 0,
	 "a|E2BIG@2|"},
	{"NUL byte", L("a\nb\0c\nd\n"), 8, LINES_NO_NUL, "a|EILSEQ@2|d|"},
	{"NUL byte allowed without the flag", L("b\0c\n"), 8, 0, "b\\0c|"},
	{"NUL in an overlong line: the length first", L("\0" "23456789\n"), 8,
	 LINES_NO_NUL, "E2BIG@1|"},
};

static void show(char *out, size_t cap, const char *s, size_t n)
{
	size_t o = strlen(out);
	for (size_t i = 0; i < n && o + 3 < cap; i++) {
		if (s[i] == '\r' || s[i] == '\0') {
			out[o++] = '\\';
			out[o++] = s[i] == '\r' ? 'r' : '0';
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
}

static void test_walk(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof walk_cases / sizeof walk_cases[0]; i++) {
		const struct walk_case *c = &walk_cases[i];
		size_t len = c->len ? c->len : strlen(c->in);
		char got[256] = "";
		struct lines it;
		const char *s;
		size_t n;
		int rc, steps = 0;
		lines_init(&it, c->in, len, c->max, c->flags);
		while ((rc = lines_next(&it, &s, &n)) != 0 && steps++ < 32) {
			if (rc == 1)
				show(got, sizeof got, s, n);
			else
				snprintf(got + strlen(got), sizeof got - strlen(got),
				         "%s@%zu", rc == -E2BIG ? "E2BIG" :
				         rc == -EILSEQ ? "EILSEQ" : "?", it.lineno);
			strncat(got, "|", sizeof got - strlen(got) - 1);
		}
		if (strcmp(got, c->want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", c->name, got,
			         c->want);
		/* The end stays the end. */
		assert_int_equal(lines_next(&it, &s, &n), 0);
	}
}

static void test_walk_null_text(void **state)
{
	(void)state;
	struct lines it;
	const char *s;
	size_t n;
	lines_init(&it, NULL, 5, 8, 0);
	assert_int_equal(lines_next(&it, &s, &n), 0);
	assert_int_equal(it.lineno, 0);
}

static void test_error_messages(void **state)
{
	(void)state;
	char err[128];
	struct lines it;
	const char *s;
	size_t n;
	lines_init(&it, L("ok\n0123456789\n"), 4, 0);
	assert_int_equal(lines_next(&it, &s, &n), 1);
	int rc = lines_next(&it, &s, &n);
	assert_int_equal(rc, -E2BIG);
	lines_error(&it, rc, "f.conf", err, sizeof err);
	assert_string_equal(err, "f.conf:2: line longer than 4 characters");
	lines_init(&it, L("x\n\ny\0\n"), 4, LINES_NO_NUL);
	while ((rc = lines_next(&it, &s, &n)) == 1)
		;
	assert_int_equal(rc, -EILSEQ);
	lines_error(&it, rc, "creds", err, sizeof err);
	assert_string_equal(err, "creds:3: NUL byte in line");
}

/* ---- the file reader --------------------------------------------------- */

struct tmpdir {
	char dir[64];
	char path[128];
};

static int setup_dir(void **state)
{
	struct tmpdir *t = calloc(1, sizeof *t);
	if (!t)
		return -1;
	snprintf(t->dir, sizeof t->dir, "/tmp/test_lines.XXXXXX");
	if (!mkdtemp(t->dir)) {
		free(t);
		return -1;
	}
	snprintf(t->path, sizeof t->path, "%s/f", t->dir);
	*state = t;
	return 0;
}

static int teardown_dir(void **state)
{
	struct tmpdir *t = *state;
	unlink(t->path);
	rmdir(t->dir);
	free(t);
	return 0;
}

static void write_file(const char *path, const char *data, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	assert_int_equal(close(fd), 0);
}

struct read_case {
	const char *name;
	size_t size;            /* bytes of 'x' (every 100th a '\n') */
	size_t max;
	unsigned flags;
	int want;               /* 0 or -errno */
};

static const struct read_case read_cases[] = {
	{"empty file", 0, 16, 0, 0},
	{"empty file, regular, snapshot", 0, 16, LINES_REGULAR | LINES_SNAPSHOT,
	 0},
	{"small", 10, 16, 0, 0},
	{"exactly max", 16, 16, 0, 0},
	{"one byte over", 17, 16, 0, -EFBIG},
	{"one byte over, snapshot", 17, 16, LINES_REGULAR | LINES_SNAPSHOT,
	 -EFBIG},
	{"larger than the first buffer", 20000, 20000, 0, 0},
	{"over max, larger than the first buffer", 20001, 20000, 0, -EFBIG},
};

static void test_read(void **state)
{
	struct tmpdir *t = *state;
	for (size_t i = 0; i < sizeof read_cases / sizeof read_cases[0]; i++) {
		const struct read_case *c = &read_cases[i];
		char *data = malloc(c->size + 1);
		assert_non_null(data);
		for (size_t k = 0; k < c->size; k++)
			data[k] = k % 100 == 99 ? '\n' : 'x';
		write_file(t->path, data, c->size);
		char *text = (char *)1;
		size_t len = 12345;
		int rc = lines_read_file(t->path, c->max, c->flags, &text, &len);
		if (rc != c->want)
			fail_msg("%s: got %d, want %d", c->name, rc, c->want);
		if (rc == 0) {
			assert_int_equal(len, c->size);
			assert_memory_equal(text, data, c->size);
			assert_int_equal(text[len], '\0');
			free(text);
		} else {
			/* Untouched on failure. */
			assert_ptr_equal(text, (char *)1);
			assert_int_equal(len, 12345);
		}
		free(data);
	}
}

static void test_read_not_regular(void **state)
{
	struct tmpdir *t = *state;
	char *text;
	size_t len;
	/* A directory: refused up front with LINES_REGULAR; without it,
	 * read(2)'s own error. */
	assert_int_equal(lines_read_file(t->dir, 16, LINES_REGULAR, &text,
	                                 &len), -EINVAL);
	assert_int_equal(lines_read_file(t->dir, 16, 0, &text, &len), -EISDIR);
	assert_int_equal(lines_read_file("/nonexistent/lines", 16, 0, &text,
	                                 &len), -ENOENT);
	/* A character device read to its end, bounded: /dev/zero never
	 * ends, so max + 1 bytes are read and it is too big. */
	assert_int_equal(lines_read_file("/dev/zero", 5000, 0, &text, &len),
	                 -EFBIG);
	assert_int_equal(lines_read_file("/dev/null", 16, 0, &text, &len), 0);
	assert_int_equal(len, 0);
	free(text);
	/* A FIFO where a regular file must be: refused at once, never an
	 * open(2) that waits for a writer (relayd reads the credentials
	 * file on its loop). The alarm ends the test if the open blocks. */
	assert_int_equal(mkfifo(t->path, 0600), 0);
	alarm(10);
	assert_int_equal(lines_read_file(t->path, 16, LINES_REGULAR, &text,
	                                 &len), -EINVAL);
	alarm(0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_walk),
		cmocka_unit_test(test_walk_null_text),
		cmocka_unit_test(test_error_messages),
		cmocka_unit_test_setup_teardown(test_read, setup_dir,
		                                teardown_dir),
		cmocka_unit_test_setup_teardown(test_read_not_regular, setup_dir,
		                                teardown_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
