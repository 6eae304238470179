/*
 * dns/spf_int.h - the pure core of check_host() (dns/spf.c), for the
 * shell in the same file and the unit tests: the core asks for one DNS
 * answer at a time and is fed struct dns_result values; it never calls
 * dns/ or the loop itself, so a test can play any sequence of answers.
 */
#ifndef RELAY_SPF_INT_H
#define RELAY_SPF_INT_H

#include "dns/spf.h"

struct spf_eval;

struct spf_ask {
	char name[DNS_NAME_MAX + 1];
	uint16_t type;          /* DNS_T_TXT, A, AAAA, MX or PTR */
};

/* A new evaluation of q (strings copied). Returns 0 or -ENOMEM. */
int spf_eval_new(const struct spf_query *q, struct spf_eval **out);
void spf_eval_free(struct spf_eval *e);
/* True with *ask filled when the core needs an answer (then call
 * spf_eval_answer); false when the result is final. */
bool spf_eval_next(struct spf_eval *e, struct spf_ask *ask);
/* The answer to the last ask (any status, DNS_BADNAME and DNS_NOMEM
 * included). */
void spf_eval_answer(struct spf_eval *e, const struct dns_result *r);
/* Ends the evaluation at once with temperror (the shell's deadline). */
void spf_eval_timeout(struct spf_eval *e, unsigned ms);
const struct spf_result *spf_eval_result(const struct spf_eval *e);

/* Does address a lie in net/len? (families must match) */
bool spf_addr_in(const struct dns_addr *a, const struct dns_addr *net,
                 unsigned len);

#endif
