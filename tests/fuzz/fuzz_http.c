/*
 * tests/fuzz/fuzz_http.c - libFuzzer harness for common/httpget.c, the
 * metrics endpoint's request-head reader (anyone who can reach
 * metrics_listen writes these bytes). The verdict must be one of the
 * enum, the head inside the input and at most HTTPGET_HEAD_MAX, and a
 * prefix of a complete head must never be judged complete differently
 * from "more" or the same verdict.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/httpget.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: no NUL after it. */
	char *p = malloc(size ? size : 1);
	if (!p)
		return 0;
	memcpy(p, data, size);
	struct httpget r;
	enum httpget_result res = httpget_parse(p, size, &r);
	if (res != r.result || (unsigned)res > HTTPGET_VERSION)
		abort();
	if (res == HTTPGET_MORE && size >= HTTPGET_HEAD_MAX)
		abort();
	if (r.used > size || r.used > HTTPGET_HEAD_MAX)
		abort();
	if (res != HTTPGET_MORE && !httpget_status(res)[0])
		abort();
	if (r.head && res != HTTPGET_METRICS && res != HTTPGET_NOT_FOUND)
		abort();
	/* A complete head: reading it again alone gives the same verdict,
	 * and any shorter prefix says "more" or a verdict on bad bytes. */
	if (r.used) {
		struct httpget r2;
		if (httpget_parse(p, r.used, &r2) != res || r2.used != r.used)
			abort();
		if (r.used > 1) {
			enum httpget_result pr = httpget_parse(p, r.used - 1, &r2);
			if (pr != HTTPGET_MORE && pr != HTTPGET_BAD)
				abort();
		}
	}
	free(p);
	return 0;
}
