/*
 * deliver/deliver_tlspol.h - The TLS policy file's lookup for the engine
 * (deliver_tlspol.c): levels as ints (enum deliver_tls_level of
 * deliver_policy.h: 0 none, 1 may, 2 encrypt, 3 verify).
 */
#ifndef RELAY_DELIVER_TLSPOL_H
#define RELAY_DELIVER_TLSPOL_H

#include <stdbool.h>
#include <stddef.h>

#define DELIVER_TLSPOL_NONE 0
#define DELIVER_TLSPOL_MAY 1
#define DELIVER_TLSPOL_ENCRYPT 2
#define DELIVER_TLSPOL_VERIFY 3

/* deliver_policy.h's DELIVER_THROTTLE_*, for the engine. */
#define DELIVER_TLSPOL_THROTTLE_GAP_MS 60000
#define DELIVER_TLSPOL_THROTTLE_MAX_DOUBLINGS 3

struct deliver_tls_policy;

int deliver_tlspol_load(const char *path, struct deliver_tls_policy **out,
                        char *err, size_t errlen);
void deliver_tlspol_free(struct deliver_tls_policy *p);
/* The level for a recipient domain; p NULL: may. */
int deliver_tlspol_level(const struct deliver_tls_policy *p,
                         const char *domain);
/* "none", "may", "encrypt", "verify". */
const char *deliver_tlspol_name(int level);

/* destination_policy_file. */
struct deliver_dest_policy;
int deliver_tlspol_dest_load(const char *path, struct deliver_dest_policy **out,
                             char *err, size_t errlen);
void deliver_tlspol_dest_free(struct deliver_dest_policy *p);
/* The limits of a destination matched by names[] (its MX hosts and
 * recipient domains): *conc (dflt without a match), rates (0: none).
 * True when some line applied. */
bool deliver_tlspol_dest_limits(const struct deliver_dest_policy *p,
                                const char *const *names, size_t n,
                                unsigned dflt, unsigned *conc,
                                unsigned *per_min, unsigned *per_hour);

/* The reply table (deliver_policy.h), for MX hosts and the smarthost
 * alike: whether a reply ("421 4.7.28 text", lines joined) asks the
 * destination to slow down; *rule (may be NULL) gets the matching row's
 * name, *secs (may be NULL) how long the throttle lasts. Greylisting, a
 * busy mailbox (4.2.1) and other 4xx are not. */
bool deliver_tlspol_throttle(const char *reply, size_t n, const char **rule,
                             unsigned *secs);
/* Whether a RCPT reply says "too many recipients" (452 4.5.3): the rest
 * go in another transaction. */
bool deliver_tlspol_split(const char *reply, size_t n);

#endif
