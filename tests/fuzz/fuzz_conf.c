/*
 * tests/fuzz/fuzz_conf.c - libFuzzer harness for the configuration parser:
 * any file text must yield 0 or an error message, never a crash or leak.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conf c;
	char err[512];
	if (conf_init(&c) < 0)
		return 0;
	err[0] = '\0';
	if (conf_parse(&c, "fuzz.conf", (const char *)data, size, err,
	               sizeof err) < 0 && err[0] == '\0')
		abort();   /* every error explains itself */
	conf_free(&c);
	return 0;
}
