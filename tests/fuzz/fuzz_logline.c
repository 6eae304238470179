/*
 * tests/fuzz/fuzz_logline.c - libFuzzer harness for common/logline.c, the
 * reader of relayd's log lines behind `relayctl log` (a log file may hold
 * anything: a damaged line, another program's). Every field must lie
 * inside the line, counts within their bounds, the event consistent with
 * the fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/logline.h"

static void inside(const char *p, size_t n, const uint8_t *base, size_t size)
{
	if (!p) {
		if (n)
			abort();
		return;
	}
	if ((const uint8_t *)p < base || (const uint8_t *)p + n > base + size)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: no NUL after it. */
	char *line = malloc(size ? size : 1);
	if (!line)
		return 0;
	memcpy(line, data, size);
	struct logline l;
	logline_parse(line, size, &l);
	const uint8_t *b = (const uint8_t *)line;
	inside(l.text, l.textlen, b, size);
	inside(l.level, l.levellen, b, size);
	inside(l.time, l.timelen, b, size);
	inside(l.reply, l.replylen, b, size);
	if (l.nf > LOGLINE_FIELDS_MAX || (unsigned)l.ev >= LOGEV__COUNT)
		abort();
	for (size_t i = 0; i < l.nf; i++) {
		inside(l.f[i].key, l.f[i].keylen, b, size);
		inside(l.f[i].val, l.f[i].vallen, b, size);
		if (!l.f[i].keylen)
			abort();
	}
	if (strlen(l.id) != 0 && strlen(l.id) != 16)
		abort();
	if ((l.ev == LOGEV_DSN) != (strlen(l.dsn_id) == 16))
		abort();
	if (l.ev != LOGEV_OTHER && (!l.id[0] || l.ms < 0))
		abort();
	if ((l.ev == LOGEV_SENT || l.ev == LOGEV_DEFERRED ||
	     l.ev == LOGEV_BOUNCED) && !logline_get(&l, "status"))
		abort();
	if (size >= 19)
		(void)logline_time(line, size);
	free(line);
	return 0;
}
