/*
 * tests/unit/test_httpget.c - common/httpget.{c,h}: the metrics
 * endpoint's request-head reader, table driven (bytes in, the verdict
 * out): the one good request, other paths and methods, incomplete heads,
 * the size limit, malformed lines (bare CR, NUL, obs-fold, bad version).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/httpget.h"

struct case_ {
	const char *name;
	const char *in;
	enum httpget_result want;
	int head;
};

static const struct case_ cases[] = {
	{"get metrics", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
	 HTTPGET_METRICS, 0},
	{"get metrics 1.0 no headers", "GET /metrics HTTP/1.0\r\n\r\n",
	 HTTPGET_METRICS, 0},
	{"bare LF line ends", "GET /metrics HTTP/1.1\nHost: x\n\n",
	 HTTPGET_METRICS, 0},
	{"query ignored", "GET /metrics?x=1 HTTP/1.1\r\n\r\n",
	 HTTPGET_METRICS, 0},
	{"head", "HEAD /metrics HTTP/1.1\r\n\r\n", HTTPGET_METRICS, 1},
	{"other path", "GET /other HTTP/1.1\r\n\r\n", HTTPGET_NOT_FOUND, 0},
	{"prefix path", "GET /metricsx HTTP/1.1\r\n\r\n", HTTPGET_NOT_FOUND, 0},
	{"root", "GET / HTTP/1.1\r\n\r\n", HTTPGET_NOT_FOUND, 0},
	{"absolute form", "GET http://h/metrics HTTP/1.1\r\n\r\n",
	 HTTPGET_NOT_FOUND, 0},
	{"post metrics", "POST /metrics HTTP/1.1\r\n\r\n",
	 HTTPGET_BAD_METHOD, 0},
	{"lower-case get", "get /metrics HTTP/1.1\r\n\r\n",
	 HTTPGET_BAD_METHOD, 0},
	{"post other", "POST /x HTTP/1.1\r\n\r\n", HTTPGET_NOT_FOUND, 0},
	{"empty", "", HTTPGET_MORE, 0},
	{"partial line", "GET /metr", HTTPGET_MORE, 0},
	{"no blank line", "GET /metrics HTTP/1.1\r\nHost: x\r\n", HTTPGET_MORE, 0},
	{"cr at the end", "GET /metrics HTTP/1.1\r\n\r", HTTPGET_MORE, 0},
	{"head, unfinished", "HEAD /metrics HTTP/1.1\nA: HTT", HTTPGET_MORE, 0},
	{"http 2", "GET /metrics HTTP/2.0\r\n\r\n", HTTPGET_VERSION, 0},
	{"http 0.9 form", "GET /metrics\r\n\r\n", HTTPGET_BAD, 0},
	{"bad version", "GET /metrics HTTP/1.x\r\n\r\n", HTTPGET_BAD, 0},
	{"lower version", "GET /metrics http/1.1\r\n\r\n", HTTPGET_BAD, 0},
	{"two spaces", "GET  /metrics HTTP/1.1\r\n\r\n", HTTPGET_BAD, 0},
	{"no method", " /metrics HTTP/1.1\r\n\r\n", HTTPGET_BAD, 0},
	{"bare cr", "GET /metrics HTTP/1.1\rX\r\n\r\n", HTTPGET_BAD, 0},
	{"ctl in target", "GET /me\x01trics HTTP/1.1\r\n\r\n", HTTPGET_BAD, 0},
	{"obs-fold", "GET /metrics HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
	 HTTPGET_BAD, 0},
	{"header without colon", "GET /metrics HTTP/1.1\r\nAb\r\n\r\n",
	 HTTPGET_BAD, 0},
	{"space before colon", "GET /metrics HTTP/1.1\r\nA : b\r\n\r\n",
	 HTTPGET_BAD, 0},
	{"empty header name", "GET /metrics HTTP/1.1\r\n: b\r\n\r\n",
	 HTTPGET_BAD, 0},
	{"blank first line", "\r\n\r\n", HTTPGET_BAD, 0},
};

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct httpget r;
		enum httpget_result got =
		    httpget_parse(cases[i].in, strlen(cases[i].in), &r);
		if (got != cases[i].want || r.result != got ||
		    r.head != cases[i].head)
			fail_msg("%s: got %d want %d (head %d)", cases[i].name,
			         (int)got, (int)cases[i].want, r.head);
		if (got != HTTPGET_MORE && got != HTTPGET_TOO_LARGE &&
		    got != HTTPGET_BAD && r.used != strlen(cases[i].in))
			fail_msg("%s: used %zu of %zu", cases[i].name, r.used,
			         strlen(cases[i].in));
	}
}

/* A NUL is refused wherever it is (strlen would hide it from the table). */
static void test_nul(void **state)
{
	(void)state;
	static const char in[] = "GET /metrics HTTP/1.1\r\nA: \0b\r\n\r\n";
	struct httpget r;
	assert_int_equal(httpget_parse(in, sizeof in - 1, &r), HTTPGET_BAD);
}

/* The head limit: one at the limit is read; one byte more without the
 * blank line is too large; bytes after the head do not count. */
static void test_limit(void **state)
{
	(void)state;
	char *b = malloc(HTTPGET_HEAD_MAX + 100);
	assert_non_null(b);
	static const char rl[] = "GET /metrics HTTP/1.1\r\nX: ";
	size_t n = HTTPGET_HEAD_MAX;
	memcpy(b, rl, sizeof rl - 1);
	memset(b + sizeof rl - 1, 'a', n - (sizeof rl - 1) - 4);
	memcpy(b + n - 4, "\r\n\r\n", 4);
	struct httpget r;
	assert_int_equal(httpget_parse(b, n, &r), HTTPGET_METRICS);
	assert_int_equal(r.used, n);
	/* The blank line one byte past the limit. */
	memset(b + sizeof rl - 1, 'a', n - (sizeof rl - 1) - 3);
	memcpy(b + n - 3, "\r\n\r\n", 4);
	assert_int_equal(httpget_parse(b, n + 1, &r), HTTPGET_TOO_LARGE);
	/* Under the limit and unfinished: more. */
	assert_int_equal(httpget_parse(b, n - 1, &r), HTTPGET_MORE);
	/* A request line longer than the limit. */
	memset(b, 'a', HTTPGET_HEAD_MAX + 100);
	memcpy(b, "GET /", 5);
	assert_int_equal(httpget_parse(b, HTTPGET_HEAD_MAX + 100, &r),
	                 HTTPGET_TOO_LARGE);
	/* Pipelined bytes after the head are left alone. */
	static const char two[] = "GET /x HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
	assert_int_equal(httpget_parse(two, sizeof two - 1, &r),
	                 HTTPGET_NOT_FOUND);
	assert_int_equal(r.used, strlen("GET /x HTTP/1.1\r\n\r\n"));
	free(b);
}

static void test_status(void **state)
{
	(void)state;
	assert_string_equal(httpget_status(HTTPGET_METRICS), "200 OK");
	assert_string_equal(httpget_status(HTTPGET_NOT_FOUND), "404 Not Found");
	assert_string_equal(httpget_status(HTTPGET_TOO_LARGE),
	                    "431 Request Header Fields Too Large");
	assert_string_equal(httpget_status(HTTPGET_MORE), "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_nul),
		cmocka_unit_test(test_limit),
		cmocka_unit_test(test_status),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
