/*
 * tests/fuzz/fuzz_idna.c - libFuzzer harness for common/idna.c: the
 * input as a domain name (idna_to_ascii) and, read as 21-bit code
 * points, as a Punycode label (idna_punycode). Any input: no crash, no
 * read or write out of bounds; a name that converts is lower-case
 * letters, digits, '-' and '.', labels of 1 to 63 octets, at most 253 in
 * all; an all-ASCII name converts to itself in lower case.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/idna.h"

static void check_name(const uint8_t *in, size_t n, const char *out)
{
	size_t len = strlen(out), lab = 0;
	if (len == 0 || len > IDNA_NAME_MAX)
		abort();
	for (size_t i = 0; i <= len; i++) {
		char c = out[i];
		if (c == '.' || c == '\0') {
			if (lab == 0 || lab > IDNA_LABEL_MAX)
				abort();
			lab = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-'))
			abort();
		lab++;
	}
	if (!idna_is_8bit((const char *)in, n)) {
		if (n && in[n - 1] == '.')
			n--;
		if (n != len)
			abort();
		for (size_t i = 0; i < n; i++) {
			char c = (char)in[i];
			if (c >= 'A' && c <= 'Z')
				c = (char)(c + 32);
			if (c != out[i])
				abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out[IDNA_NAME_MAX + 1];
	if (idna_to_ascii((const char *)data, size, out, sizeof out) == 0)
		check_name(data, size, out);

	unsigned cp[64];
	size_t n = 0;
	for (size_t i = 0; i + 2 < size && n < 64; i += 3)
		cp[n++] = ((unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 |
		           data[i + 2]) % 0x110000;
	char pc[512];
	if (idna_punycode(cp, n, pc, sizeof pc) == 0)
		for (const char *p = pc; *p; p++)
			if ((unsigned char)*p >= 0x80)
				abort();
	return 0;
}
