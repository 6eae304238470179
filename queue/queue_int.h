/*
 * queue/queue_int.h - Pure functions of the queue module, exposed for the
 * unit tests: the id generator and the index record codec.
 */
#ifndef RELAY_QUEUE_INT_H
#define RELAY_QUEUE_INT_H

#include "queue.h"

struct queue_idgen {
	uint64_t last_us;   /* time part of the last id */
	uint32_t seq;       /* sequence within last_us (20 bits) */
};

/* Seeds the generator so that it never returns an id <= floor_qid
 * (the largest id already in the spool), or "" for none. */
void queue_idgen_init(struct queue_idgen *g, const char *floor_qid);

/* Writes the next id for the clock reading now_us. Strictly increasing
 * across calls even if the clock stands still or goes backwards. */
void queue_idgen_next(struct queue_idgen *g, uint64_t now_us,
                      char out[QUEUE_ID_SIZE]);

/* Index record codec: a version byte (1), then the fields. encode appends
 * to a malloc'd buffer (*out, *outlen); decode returns a new queue_msg
 * (qid taken from the key). -EINVAL for a corrupt or unknown record. */
int queue_msg_encode(const struct queue_msg *m, uint8_t **out, size_t *outlen);
int queue_msg_decode(const char *qid, const uint8_t *p, size_t n,
                     struct queue_msg **out);

#endif
