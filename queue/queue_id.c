/*
 * queue/queue_id.c - Queue ids: 16 characters of Crockford base32, 12 for
 * the microseconds since the epoch (60 bits) and 4 for a sequence number
 * (20 bits). The alphabet is in ASCII order, so ids sort by time as plain
 * strings (and as LMDB keys). The generator never goes backwards: not when
 * the clock stands still or steps back, and not across restarts (seeded
 * with the largest id in the index). Also how startup recovery tells this
 * run's names in msg/ from an earlier run's (queue_recover_classify).
 */
#include "queue/queue_int.h"

#include <string.h>

#define ID_TIME_CHARS 12
#define ID_SEQ_CHARS 4
#define ID_TIME_MASK ((UINT64_C(1) << (5 * ID_TIME_CHARS)) - 1)
#define ID_SEQ_MAX ((UINT32_C(1) << (5 * ID_SEQ_CHARS)) - 1)

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Value of one alphabet character, or -1. Exact alphabet only (no lower
 * case, no I/L/O aliases): ids are file names and must compare bytewise. */
static int b32_val(char c)
{
	const char *p = c ? strchr(b32, c) : NULL;
	return p ? (int)(p - b32) : -1;
}

static void put_b32(char *out, uint64_t v, int nchars)
{
	for (int i = nchars - 1; i >= 0; i--) {
		out[i] = b32[v & 31];
		v >>= 5;
	}
}

bool queue_id_valid(const char *s)
{
	if (!s)
		return false;
	for (int i = 0; i < QUEUE_ID_LEN; i++)
		if (b32_val(s[i]) < 0)
			return false;
	return s[QUEUE_ID_LEN] == '\0';
}

void queue_idgen_init(struct queue_idgen *g, const char *floor_qid)
{
	g->last_us = 0;
	g->seq = 0;
	if (!floor_qid || !queue_id_valid(floor_qid))
		return;
	for (int i = 0; i < ID_TIME_CHARS; i++)
		g->last_us = g->last_us << 5 | (uint64_t)b32_val(floor_qid[i]);
	for (int i = ID_TIME_CHARS; i < QUEUE_ID_LEN; i++)
		g->seq = g->seq << 5 | (uint32_t)b32_val(floor_qid[i]);
}

void queue_idgen_next(struct queue_idgen *g, uint64_t now_us,
                      char out[QUEUE_ID_SIZE])
{
	now_us &= ID_TIME_MASK;
	if (now_us > g->last_us) {
		g->last_us = now_us;
		g->seq = 0;
	} else if (g->seq < ID_SEQ_MAX) {
		/* Same microsecond, or the clock went back: stay on last_us. */
		g->seq++;
	} else {
		/* Sequence exhausted: borrow the next microsecond. */
		g->last_us++;
		g->seq = 0;
	}
	put_b32(out, g->last_us, ID_TIME_CHARS);
	put_b32(out + ID_TIME_CHARS, g->seq, ID_SEQ_CHARS);
	out[QUEUE_ID_LEN] = '\0';
}

enum queue_recover_kind queue_recover_classify(const char *name,
                                               const char *boundary)
{
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return QUEUE_RECOVER_SKIP;
	if (queue_id_valid(name))
		return strcmp(name, boundary) < 0 ? QUEUE_RECOVER_OLD_BODY
		                                  : QUEUE_RECOVER_NEW_BODY;
	if (name[0] != '.')
		return QUEUE_RECOVER_REMOVE;        /* a stray file */
	/* msg/.QID: a body this run creates on the spot. */
	if (queue_id_valid(name + 1) && strcmp(name + 1, boundary) > 0)
		return QUEUE_RECOVER_KEEP;
	/* ".p" + boundary + counter: this run's pool file. */
	size_t bl = strlen(boundary);
	if (name[1] == 'p' && !strncmp(name + 2, boundary, bl) &&
	    name[2 + bl] != '\0')
		return QUEUE_RECOVER_KEEP;
	return QUEUE_RECOVER_REMOVE;            /* an earlier run's */
}
