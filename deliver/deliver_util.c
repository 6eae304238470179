/*
 * deliver/deliver_util.c - Pure helpers of the scheduler, kept apart so
 * the unit tests can feed them: the retry backoff. (The From: rewrite of
 * rewrite_from_header moved to common/hdr.c: it runs at acceptance now,
 * before DKIM signing.)
 */
#include "deliver/deliver_int.h"


uint64_t deliver_backoff(uint64_t retry_min, uint64_t retry_max,
                         uint32_t attempts, double rnd)
{
	uint64_t t = retry_min ? retry_min : 1;
	for (uint32_t i = 1; i < attempts && t < retry_max; i++)
		t *= 2;
	if (t > retry_max)
		t = retry_max;
	if (t < retry_min)
		t = retry_min;
	/* Jitter: messages deferred by one outage spread out on return
	 * instead of hitting the smarthost in one burst. */
	if (rnd < 0 || rnd >= 1)
		rnd = 0;
	return t + (uint64_t)((double)t * 0.25 * rnd);
}
