/*
 * deliver/deliver_tlspol.c - The TLS policy (deliver_policy.h) for the
 * direct-delivery engine, behind plain types: deliver_policy.h and
 * deliver_client.h both define a struct deliver_reply, so the files of
 * the engine (deliver_int.h) cannot include both. This file includes only
 * the policy's header. Also destination_policy_file's limits.
 */
#include <stdbool.h>

#include "deliver/deliver_policy.h"
#include "deliver/deliver_tlspol.h"

_Static_assert(DELIVER_TLSPOL_NONE == DELIVER_TLS_NONE &&
               DELIVER_TLSPOL_MAY == DELIVER_TLS_MAY &&
               DELIVER_TLSPOL_ENCRYPT == DELIVER_TLS_ENCRYPT &&
               DELIVER_TLSPOL_VERIFY == DELIVER_TLS_VERIFY, "levels");

int deliver_tlspol_load(const char *path, struct deliver_tls_policy **out,
                        char *err, size_t errlen)
{
	return deliver_tls_policy_load(path, out, err, errlen);
}

void deliver_tlspol_free(struct deliver_tls_policy *p)
{
	deliver_tls_policy_free(p);
}

int deliver_tlspol_level(const struct deliver_tls_policy *p,
                         const char *domain)
{
	enum deliver_tls_source src;
	return (int)deliver_tls_policy_lookup(p, domain, &src);
}

const char *deliver_tlspol_name(int level)
{
	return level >= 0 && level < DELIVER_TLS__COUNT
	       ? deliver_tls_level_names[level] : "?";
}

int deliver_tlspol_dest_load(const char *path, struct deliver_dest_policy **out,
                             char *err, size_t errlen)
{
	return deliver_dest_policy_load(path, out, err, errlen);
}

void deliver_tlspol_dest_free(struct deliver_dest_policy *p)
{
	deliver_dest_policy_free(p);
}

bool deliver_tlspol_dest_limits(const struct deliver_dest_policy *p,
                                const char *const *names, size_t n,
                                unsigned dflt, unsigned *conc,
                                unsigned *per_min, unsigned *per_hour)
{
	struct deliver_dest_limits lim = {0};
	for (size_t i = 0; i < n; i++)
		deliver_dest_policy_match(p, names[i], &lim);
	*conc = deliver_dest_concurrency(&lim, dflt);
	*per_min = lim.per_minute;
	*per_hour = lim.per_hour;
	return lim.matched;
}

_Static_assert(DELIVER_TLSPOL_THROTTLE_GAP_MS == DELIVER_THROTTLE_GAP_MS &&
               DELIVER_TLSPOL_THROTTLE_MAX_DOUBLINGS ==
               DELIVER_THROTTLE_MAX_DOUBLINGS, "throttle");

bool deliver_tlspol_throttle(const char *reply, size_t n, const char **rule,
                             unsigned *secs)
{
	const char *r = NULL;
	enum deliver_reaction x = deliver_reply_classify_raw(reply, n, &r);
	if (rule)
		*rule = r;
	if (secs)
		*secs = deliver_reply_throttle_secs(r);
	return x == DELIVER_REACT_DEST_THROTTLE;
}

bool deliver_tlspol_split(const char *reply, size_t n)
{
	return deliver_reply_classify_raw(reply, n, NULL) ==
	       DELIVER_REACT_SPLIT_TXN;
}
