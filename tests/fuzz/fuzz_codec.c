/*
 * tests/fuzz/fuzz_codec.c - libFuzzer harness for the queue index record
 * decoder (what relayctl and recovery read from LMDB), formats 1 and 2:
 * any bytes decode or fail cleanly; what decodes re-encodes (format 2) to
 * a record that decodes to the same envelope, field for field, unknown
 * TLV tails included; a format-1 record also survives a format-1
 * re-encode; and a per-recipient change built from the input merges
 * (queue_msg_apply_rcpts) into something that still encodes, or is
 * refused without touching the message.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_int.h"

static const char QID[] = "0000000000000001";

static int same_str(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static int same_blob(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* Equal in every field; v1only: the fields format 1 has. */
static void check_same(const struct queue_msg *m, const struct queue_msg *m2,
                       int v1only)
{
	if (m->nrcpt != m2->nrcpt || !same_str(m->sender, m2->sender) ||
	    !same_str(m->envid, m2->envid) || m->size != m2->size ||
	    m->arrival != m2->arrival || m->flags != m2->flags ||
	    m->state != m2->state)
		abort();
	if (!v1only && (m->arrival_ms != m2->arrival_ms ||
	                !same_str(m->dkim_sig, m2->dkim_sig) ||
	                !same_blob(m->ext, m->extlen, m2->ext, m2->extlen)))
		abort();
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *a = &m->rcpt[i], *b = &m2->rcpt[i];
		if (!same_str(a->addr, b->addr) || !same_str(a->orcpt, b->orcpt) ||
		    !same_str(a->last_reply, b->last_reply) ||
		    a->state != b->state || a->notify != b->notify ||
		    a->attempts != b->attempts ||
		    a->next_attempt != b->next_attempt)
			abort();
		if (!v1only && (!same_str(a->dest, b->dest) ||
		                !same_str(a->mx, b->mx) || a->last_try != b->last_try ||
		                !same_blob(a->ext, a->extlen, b->ext, b->extlen)))
			abort();
	}
}

static void roundtrip(const struct queue_msg *m, int v1)
{
	uint8_t *enc = NULL;
	size_t len = 0;
	struct queue_msg *m2 = NULL;
	int r = v1 ? queue_msg_encode_v1(m, &enc, &len)
	           : queue_msg_encode(m, &enc, &len);
	if (r != 0 || enc[0] != (v1 ? 1 : QUEUE_REC_VERSION) ||
	    queue_msg_decode(QID, enc, len, &m2) != 0)
		abort();
	check_same(m, m2, v1);
	free(enc);
	queue_msg_free(m2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct queue_msg *m = NULL;
	if (queue_msg_decode(QID, data, size, &m) != 0)
		return 0;
	roundtrip(m, 0);
	if (data[0] == 1)
		roundtrip(m, 1);

	/* A change from the input's last bytes: index, state, and the
	 * record's own strings as reply, destination and MX. */
	if (m->nrcpt && size >= 3) {
		struct queue_rcpt_change ch = {
			.index = data[size - 1] % (m->nrcpt + 1),   /* may be out of range */
			.state = data[size - 2] % 5,                /* 4 is invalid */
			.attempts = data[size - 3],
			.next_attempt = (int64_t)size,
			.last_reply = m->sender,
			.dest = m->envid,
			.mx = m->rcpt[0].addr,
			.last_try = -(int64_t)size,
		};
		struct queue_msg *before = queue_msg_dup(m);
		if (!before)
			abort();
		int r = queue_msg_apply_rcpts(m, &ch, 1);
		if (r == 0) {
			const struct queue_rcpt *x = &m->rcpt[ch.index];
			if (x->state != ch.state || !same_str(x->last_reply, ch.last_reply) ||
			    !same_str(x->dest, ch.dest) || x->last_try != ch.last_try)
				abort();
			/* Bounded strings may now be too long for the record:
			 * then encode refuses; anything else must round-trip. */
			uint8_t *enc = NULL;
			size_t len = 0;
			if (queue_msg_encode(m, &enc, &len) == 0) {
				free(enc);
				roundtrip(m, 0);
			}
		} else {
			if (r != -EINVAL)
				abort();
			check_same(before, m, 0);
		}
		queue_msg_free(before);
	}
	queue_msg_free(m);
	return 0;
}
