/*
 * tests/fuzz/fuzz_dkim_from.c - libFuzzer harness for dkim/'s message
 * reader: the From: domain parser (dkim_from_domain) on the input as a
 * field value, and a signing job (no keys: header section split, first
 * From: found, the rest skipped) on the input as a message, fed in two
 * pieces split where the first byte says. Any input: no crash, no leak,
 * a domain that is lower-case letters, digits, '-' and '.'.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim.h"

static void check_domain(const char *d)
{
	if (!*d || *d == '.')
		abort();
	for (const char *p = d; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '.'))
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char dom[256];
	if (dkim_from_domain((const char *)data, size, dom, sizeof dom) == 0)
		check_domain(dom);

	struct dkim_job *j;
	if (dkim_job_new(NULL, "fuzz", &j) < 0)
		return 0;
	size_t cut = size ? data[0] % (size + 1) : 0;
	dkim_job_feed(j, data, cut);
	dkim_job_feed(j, data + cut, size - cut);
	char *sig = NULL, why[512];
	enum dkim_job_result r = dkim_job_finish(j, &sig, dom, sizeof dom, why,
	                                         sizeof why);
	if (r == DKIM_SIGNED || sig)
		abort();   /* no keys: nothing can be signed */
	if (r == DKIM_NO_KEY)
		check_domain(dom);
	dkim_job_free(j);
	return 0;
}
