/*
 * dkim/dkim.h - DKIM signing (issue 10 §1). A signer is the set of keys
 * loaded from the `dkim_key` lines (dkim/dkim_key.h loads each one) with
 * the active key per domain and algorithm; a job signs one message fed to
 * it as bytes (the stored message: CRLF lines, header section, empty line,
 * body) and returns the DKIM-Signature header block to store with it.
 * relayd signs RSA and Ed25519 itself (dkim/dkim_canon.c, OpenSSL) with
 * each key parsed once when the signer is made; libopendkim is kept as
 * the tests' oracle (dkim_signer_use_libopendkim). No libuv: callers run
 * jobs on a thread pool. dkim_sign.c is the only file that includes
 * <opendkim/dkim.h>.
 *
 * Threads: a signer is immutable once made; jobs of one signer may run on
 * several threads at once (its EVP_PKEYs are only read; libopendkim's
 * DKIM_LIB is thread-safe, each job has its own handles). The caller
 * keeps the signer alive while its jobs run (dkim_signer_ref /
 * dkim_signer_unref, on one thread).
 */
#ifndef RELAY_DKIM_H
#define RELAY_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dkim/dkim_key.h"

/* Largest header section a job reads (a bigger one fails the signing:
 * -EMSGSIZE). */
#define DKIM_HEADER_MAX (1024 * 1024)

/* The header fields signed (issue 10 §1), From: oversigned. */
extern const char *const dkim_signed_headers[];

struct dkim_signer;

enum dkim_job_result {
	DKIM_SIGNED,      /* *sig holds the header block */
	DKIM_NO_FROM,     /* no From: field, or none with a usable domain */
	DKIM_NO_KEY,      /* no key for the From: domain */
	DKIM_FAILED,      /* the signing failed (why says how) */
};

/* Loads every `dkim_key` value of lines[0..n). The last line of a domain
 * and algorithm is that pair's active key; earlier ones stay known
 * (dkim_signer_key). With old (a SIGHUP), a line whose key does not load
 * keeps old's key of the same domain, selector and path when it had one
 * ("kept"); otherwise the line is left out. Each problem is logged
 * (warning: a weak RSA key; error: a key that does not load, naming the
 * file and why). Without old, a key that does not load is an error:
 * -errno with the reason in err (start: relayd -t and relayd refuse the
 * configuration). n == 0 gives a signer with no keys. 0 or -errno. */
int dkim_signer_new(char *const *lines, size_t n, bool subdomains,
                    const struct dkim_signer *old,
                    struct dkim_signer **out, char *err, size_t errlen);
/* The count starts at 1 (dkim_signer_new's reference). unref(NULL): no-op.
 * The last unref frees it. */
/* RSA and Ed25519 are signed by relayd itself (dkim/dkim_canon.h,
 * OpenSSL); on = true makes s sign both with libopendkim instead, which
 * parses the PEM key again for every message and leaks about 550 bytes
 * per Ed25519 signature: only for the unit tests' oracle and the bench.
 * With a fixed time the two give byte-identical fields. Call before the
 * first job. */
void dkim_signer_use_libopendkim(struct dkim_signer *s, bool on);
/* t= is t (seconds since the epoch) for every signature of s, both
 * paths (libopendkim's DKIM_OPTS_FIXEDTIME): tests. 0 or -EINVAL. */
int dkim_signer_fixed_time(struct dkim_signer *s, long long t);
void dkim_signer_ref(struct dkim_signer *s);
void dkim_signer_unref(struct dkim_signer *s);
/* What was signed, for relayctl stats: counted on the caller's one
 * thread (the loop), carried over to the signer a SIGHUP makes. */
struct dkim_counts {
	uint64_t signed_msgs;     /* DKIM_SIGNED */
	uint64_t unsigned_msgs;   /* DKIM_NO_FROM, DKIM_NO_KEY */
	uint64_t failed;          /* DKIM_FAILED (issue 10 §1's counter) */
};
void dkim_signer_count(struct dkim_signer *s, enum dkim_job_result r);
struct dkim_counts dkim_signer_counts(const struct dkim_signer *s);
/* Keys loaded, in line order (NULL past the end). */
const struct dkim_key *dkim_signer_key(const struct dkim_signer *s, size_t i);

/* The active keys for signing mail from `domain` (lower case, no trailing
 * dot): the domain's own, or with subdomains the nearest parent domain's
 * that has keys (a.b.example.com: b.example.com, then example.com; never
 * a bare top-level label). out[0] RSA, out[1] Ed25519 when present; the
 * number stored (0: no key). */
size_t dkim_signer_select(const struct dkim_signer *s, const char *domain,
                          const struct dkim_key *out[2]);
/* The same over keys[0..nkeys) in line order. Pure (unit-tested). */
size_t dkim_select_keys(const struct dkim_key *const *keys, size_t nkeys,
                        bool subdomains, const char *domain,
                        const struct dkim_key *out[2]);

/* The domain of the first mailbox of a From: field's value (after the
 * colon; folded lines allowed), lower-cased into dom, a trailing dot cut:
 * "Ann <ann@Example.COM>" -> "example.com". Comments and quoted strings
 * are skipped; a group takes its first member. 0, or -EINVAL (no
 * address, an address literal, a domain that is not letters, digits,
 * '-' and '.', or longer than domlen - 1). Pure. */
int dkim_from_domain(const char *value, size_t n, char *dom, size_t domlen);

/* ---- one message -------------------------------------------------------- */

struct dkim_job;


/* A job of s (s must outlive it). qid names the message in libopendkim's
 * messages. 0 or -ENOMEM. */
int dkim_job_new(const struct dkim_signer *s, const char *qid,
                 struct dkim_job **out);
/* Signs for `domain` (lower case) whatever the From: says: relayd's own
 * DSNs, signed with the key of its hostname's domain (the hostname, or
 * the nearest parent domain with a key, whatever dkim_subdomains says).
 * Call before the first feed. */
void dkim_job_set_domain(struct dkim_job *j, const char *domain);
/* The message, in pieces of any size. 0, or -errno once it failed (the
 * rest is ignored; finish reports DKIM_FAILED). */
int dkim_job_feed(struct dkim_job *j, const uint8_t *p, size_t n);
/* The end of the message. DKIM_SIGNED: *sig is the block of
 * "DKIM-Signature: ..." fields (CRLF lines; RSA first, then Ed25519),
 * malloc'd. Otherwise *sig is NULL and why says what happened. The From:
 * domain (or "") is left in dom. */
enum dkim_job_result dkim_job_finish(struct dkim_job *j, char **sig,
                                     char *dom, size_t domlen,
                                     char *why, size_t whylen);
void dkim_job_free(struct dkim_job *j);

/* Signs a whole message in memory: new, feed, finish, free. */
enum dkim_job_result dkim_sign_buf(const struct dkim_signer *s,
                                   const char *qid, const uint8_t *p,
                                   size_t n, char **sig, char *dom,
                                   size_t domlen, char *why, size_t whylen);

/* Signs the message in file descriptor fd (read with pread from offset
 * 0 to its end, at most max bytes; more: DKIM_FAILED). */
enum dkim_job_result dkim_sign_fd(const struct dkim_signer *s,
                                  const char *qid, int fd, uint64_t max,
                                  char **sig, char *dom, size_t domlen,
                                  char *why, size_t whylen);
/* The same, signing for `domain` (dkim_job_set_domain). */
enum dkim_job_result dkim_sign_fd_for(const struct dkim_signer *s,
                                      const char *qid, const char *domain,
                                      int fd, uint64_t max, char **sig,
                                      char *dom, size_t domlen, char *why,
                                      size_t whylen);

#endif
