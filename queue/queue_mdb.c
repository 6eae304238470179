/*
 * queue/queue_mdb.c - Small LMDB helpers shared by the daemon side
 * (queue.c) and the read side (queue_ro.c): schedule keys, and the one
 * place where LMDB return codes become -errno.
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <string.h>

#include <lmdb.h>

void queue_sched_key(int64_t t, const char *qid,
                     uint8_t out[QUEUE_SCHED_KEY_LEN])
{
	/* Big-endian so that LMDB's bytewise key order is time order. */
	uint64_t u = t < 0 ? 0 : (uint64_t)t;
	for (int i = 7; i >= 0; i--) {
		out[i] = (uint8_t)(u & 0xff);
		u >>= 8;
	}
	memcpy(out + 8, qid, QUEUE_ID_LEN);
}

int queue_mdb_errno(int rc)
{
	if (rc == MDB_SUCCESS)
		return 0;
	/* The map is full: as much "no space" as a full disk (452 4.3.1). */
	if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT)
		return -ENOSPC;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	/* LMDB passes system errors through as positive errno values. */
	if (rc > 0)
		return -rc;
	return -EIO;
}
