/*
 * common/httpget.h - a bounded HTTP/1.x request-head reader for the
 * metrics endpoint (smtpd/metrics.c). Pure: bytes in, a verdict out; no
 * sockets. Only the request line is interpreted; header lines are checked
 * for shape (no bare CR, no NUL, no obs-fold) and skipped.
 */
#ifndef RELAY_HTTPGET_H
#define RELAY_HTTPGET_H

#include <stddef.h>

/* The most a request head (request line + headers + blank line) may be. */
#define HTTPGET_HEAD_MAX 8192

enum httpget_result {
	HTTPGET_MORE,        /* no blank line yet, under the limit: read on */
	HTTPGET_METRICS,     /* GET /metrics (or /metrics?query): 200 */
	HTTPGET_NOT_FOUND,   /* a well-formed GET/HEAD for another path: 404 */
	HTTPGET_BAD_METHOD,  /* another method on /metrics: 405 */
	HTTPGET_TOO_LARGE,   /* no end of head within HTTPGET_HEAD_MAX: 431 */
	HTTPGET_BAD,         /* malformed: 400 */
	HTTPGET_VERSION,     /* not HTTP/1.0 or HTTP/1.1: 505 */
};

struct httpget {
	enum httpget_result result;
	int head;            /* the method was HEAD: no body in the reply */
	size_t used;         /* bytes of the input that made up the head */
};

/* Reads the request head at the start of p[0..n). Bytes past the blank
 * line are ignored (one request per connection). Returns r->result. */
enum httpget_result httpget_parse(const char *p, size_t n, struct httpget *r);

/* The status line text for a result ("404 Not Found"), "" for MORE. */
const char *httpget_status(enum httpget_result res);

#endif
