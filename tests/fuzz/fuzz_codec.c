/*
 * tests/fuzz/fuzz_codec.c - libFuzzer harness for the queue index record
 * decoder (what relayctl and recovery read from LMDB): any bytes decode
 * or fail cleanly, and what decodes re-encodes to a record that decodes
 * to the same envelope.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_int.h"

static int same_str(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct queue_msg *m = NULL, *m2 = NULL;
	if (queue_msg_decode("0000000000000001", data, size, &m) != 0)
		return 0;
	uint8_t *enc = NULL;
	size_t len = 0;
	if (queue_msg_encode(m, &enc, &len) != 0 ||
	    queue_msg_decode("0000000000000001", enc, len, &m2) != 0)
		abort();
	if (m->nrcpt != m2->nrcpt || !same_str(m->sender, m2->sender) ||
	    !same_str(m->envid, m2->envid) || m->size != m2->size ||
	    m->arrival != m2->arrival || m->flags != m2->flags)
		abort();
	for (size_t i = 0; i < m->nrcpt; i++)
		if (!same_str(m->rcpt[i].addr, m2->rcpt[i].addr) ||
		    !same_str(m->rcpt[i].orcpt, m2->rcpt[i].orcpt) ||
		    !same_str(m->rcpt[i].last_reply, m2->rcpt[i].last_reply) ||
		    m->rcpt[i].state != m2->rcpt[i].state)
			abort();
	free(enc);
	queue_msg_free(m);
	queue_msg_free(m2);
	return 0;
}
