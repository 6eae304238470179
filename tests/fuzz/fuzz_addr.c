/*
 * tests/fuzz/fuzz_addr.c - libFuzzer harness for the RFC 5321 path and
 * ESMTP parameter parsers: any bytes, every flag combination; a parsed
 * path must fit its limits and re-parse to itself when bracketed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned flags = data[0] & 7;
	const char *in = (const char *)data + 1;
	size_t n = size - 1;
	char out[SMTP_PATH_MAX + 1];
	size_t used = 0;
	if (addr_parse_path(in, n, flags, out, sizeof out, &used) == 0) {
		if (used > n || strlen(out) > SMTP_PATH_MAX)
			abort();
		char again[SMTP_PATH_MAX + 3], out2[SMTP_PATH_MAX + 1];
		size_t len = strlen(out), used2;
		again[0] = '<';
		memcpy(again + 1, out, len);
		again[len + 1] = '>';
		if (addr_parse_path(again, len + 2, flags | ADDR_ALLOW_NULL, out2,
		                    sizeof out2, &used2) != 0 ||
		    strcmp(out, out2) != 0)
			abort();
		(void)addr_domain(out);
	}
	struct addr_param prm[8];
	int np = addr_parse_params(in, n, flags & 1, prm, 8);
	for (int i = 0; i < np; i++)
		if (prm[i].key < in || prm[i].key + prm[i].keylen > in + n)
			abort();
	(void)addr_xtext_valid(in, n);
	return 0;
}
