/*
 * common/cred.h - The credentials store that smtpd/ (AUTH) and relayctl
 * (tools/: user add/del/list/passwd) share: the credentials file parsed
 * into a table, password hashing and verification with a slow KDF
 * (scrypt, or PBKDF2-SHA256, from OpenSSL), and the per-credential sender
 * and recipient restrictions and quotas. No sockets, no libuv, no logging:
 * callers log (never a password or a hash). This header includes no
 * OpenSSL header, so relayctl (tools/) can use it.
 *
 * ---- The file -----------------------------------------------------------
 *
 * Text, one credential per line; blank lines and lines whose first non-
 * blank character is '#' are comments (kept when relayctl rewrites the
 * file). A credential line is four fields separated by ':':
 *
 *     NAME:HASH:OWNER:OPTIONS
 *
 *   NAME     1-64 characters of A-Z a-z 0-9 . _ @ + -; unique in the file,
 *            compared case-insensitively (ASCII): "App" and "app" are the
 *            same credential.
 *   HASH     the password hash (below).
 *   OWNER    0-64 characters of the same set; empty: none. Several
 *            credentials may share an owner, each with its own quotas.
 *   OPTIONS  empty, or comma-separated KEY=VALUE, each key at most once:
 *              from=ITEM|ITEM...  allowed envelope senders: a domain
 *                                 ("example.com") or an address
 *                                 ("app@example.com"); absent: any
 *              to=DOMAIN|DOMAIN...  allowed recipient domains; absent: any
 *              hourly=N, daily=N  quotas, 1 <= N <= 1000000000; absent:
 *                                 no limit
 *              disabled=1         the credential cannot authenticate
 *                                 (disabled=0 is accepted and dropped)
 *
 * OWNER and OPTIONS may be left out ("NAME:HASH"); relayctl always writes
 * all four fields. No white space or control character may appear inside
 * a credential line (leading and trailing blanks and a final CR are
 * ignored), ':' appears only as the separator, and a line is at most
 * CRED_LINE_MAX characters. Domains are ASCII (A-labels for IDNs):
 * labels of letters, digits and '-' (not first or last), 1-63 characters,
 * at most 253 in all. An address's local part is 1-64 characters of RFC
 * 5322 atext (without '|') and dots. Unknown option keys are errors, so a
 * typo never loosens a restriction. Example:
 *
 *     # owner acme: two applications, each with its own quota
 *     shop:$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$...:acme:from=shop.example|noreply@example.com,hourly=100,daily=1000
 *     crm:$scrypt$ln=15,r=8,p=1$...$...:acme:to=example.com,disabled=1
 *
 * ---- Hashes -------------------------------------------------------------
 *
 * Self-describing strings; SALT and HASH are base64 (RFC 4648 §4 alphabet)
 * without padding, as in the PHC string format:
 *
 *     $scrypt$ln=LN,r=R,p=P$SALT$HASH          (N = 2^LN)
 *     $pbkdf2-sha256$i=ITERATIONS$SALT$HASH
 *
 * New hashes use scrypt with ln=15, r=8, p=1 (32 MiB, about 0.1 s), a
 * 16-byte random salt and a 32-byte hash. A hostile or broken file cannot
 * make one verification take long or use much memory; accepted are:
 * scrypt 10 <= ln <= 20, 1 <= r <= 32, 1 <= p <= 16, with 128*r*2^ln at
 * most 64 MiB and 2^ln*r*p at most 2^20 (four times the default work);
 * PBKDF2 1000 <= i <= 2000000; salts of 8-64 bytes, hashes of 16-64 bytes.
 *
 * ---- Threads and lifetime -----------------------------------------------
 *
 * A loaded table is immutable: any number of threads may look up and
 * verify at once. It is reference counted (cred_store_ref / _free), so a
 * reload can swap in a new table while verifications on pool threads
 * finish with the old one. The editing functions (add, del, set_*) are for
 * relayctl, need the only reference, and are not thread-safe.
 *
 * Verification costs one KDF run (tens to hundreds of milliseconds and up
 * to 64 MiB): never call it on the event loop thread.
 */
#ifndef RELAY_CRED_H
#define RELAY_CRED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRED_NAME_MAX 64       /* NAME and OWNER */
#define CRED_LINE_MAX 4096     /* one line, without its newline */
#define CRED_FILE_MAX (16u << 20)
#define CRED_PASSWORD_MAX 1024 /* bytes; longer never verifies */
#define CRED_HASH_MAX 256      /* longest hash text, with its NUL */
#define CRED_QUOTA_MAX 1000000000u
/* cred_generate(): 18 random bytes as base64url, plus the NUL. */
#define CRED_GEN_LEN 24

struct cred_store;  /* the table */
struct cred;   /* one credential, owned by its table */

/* ---- hashing ------------------------------------------------------------ */

enum cred_alg { CRED_SCRYPT = 1, CRED_PBKDF2_SHA256 };

/* KDF parameters. scrypt uses ln, r, p; PBKDF2 uses iter. */
struct cred_kdf {
	enum cred_alg alg;
	unsigned ln, r, p;
	unsigned iter;
};

/* The defaults: scrypt ln=15 r=8 p=1; PBKDF2-SHA256 600000 iterations. */
extern const struct cred_kdf cred_kdf_scrypt;
extern const struct cred_kdf cred_kdf_pbkdf2;

/* Hashes pw (pwlen bytes, 1..CRED_PASSWORD_MAX, no NUL) with a new
 * 16-byte random salt into out as "$scrypt$..." text. kdf NULL: the
 * scrypt default; otherwise its parameters must be within the bounds
 * above (tests use a cheap ln=10). Returns 0, -EINVAL (bad password or
 * parameters), -ENOBUFS (outlen too small; CRED_HASH_MAX is enough)
 * or -EIO (the KDF or the random generator failed). */
int cred_hash(const void *pw, size_t pwlen,
                    const struct cred_kdf *kdf, char *out,
                    size_t outlen);

/* A strong random password: CRED_GEN_LEN characters of base64url
 * (A-Z a-z 0-9 - _) from 18 random bytes (144 bits). outlen must be at
 * least CRED_GEN_LEN + 1. Returns 0, -ENOBUFS or -EIO. */
int cred_generate(char *out, size_t outlen);

/* ---- the table ---------------------------------------------------------- */

/* An empty table with one reference, or NULL when out of memory. */
struct cred_store *cred_store_new(void);

/* Reads and parses the file at path into a new table (one reference).
 * Errors are one line in err: "cannot read PATH: No such file or
 * directory" (returns -errno, -ENOENT for a missing file, -EFBIG past
 * CRED_FILE_MAX), or "PATH:LINE: why" for a bad line (-EINVAL).
 * A message quotes names and options (escaped) but never a hash. */
int cred_store_load(const char *path, struct cred_store **out, char *err,
                     size_t errlen);

/* The same on text in memory; name stands for the file in messages. */
int cred_store_parse(const char *name, const char *text, size_t len,
                      struct cred_store **out, char *err, size_t errlen);

/* Another reference; returns t. */
struct cred_store *cred_store_ref(struct cred_store *t);
/* Drops one reference; the last frees the table and its credentials.
 * NULL is a no-op. */
void cred_store_free(struct cred_store *t);

/* Number of credentials, and the i-th in name order (NULL past the end). */
size_t cred_store_count(const struct cred_store *t);
const struct cred *cred_store_at(const struct cred_store *t,
                                        size_t i);

/* The credential called name (case-insensitive), or NULL. */
const struct cred *cred_store_find(const struct cred_store *t,
                                          const char *name);

enum cred_result {
	CRED_OK,            /* name known, password right, enabled */
	CRED_BAD_PASSWORD,  /* name known, password wrong */
	CRED_UNKNOWN,       /* no such name (or not a valid name) */
	CRED_DISABLED,      /* password right, credential disabled */
	CRED_ERROR,         /* the KDF failed (out of memory) */
};
/* "ok", "bad password", "unknown", "disabled", "error": for log lines. */
extern const char *const cred_result_names[];

/* Checks name's password. Every call runs the KDF exactly once, whatever
 * the outcome: an unknown name is checked against a dummy hash with the
 * parameters of the table's costliest hash (cred_kdf_cost; the first by
 * name among equals), so it costs at least as much as any known name, even
 * with PBKDF2 hashes imported beside scrypt ones; and a wrong
 * password on a disabled credential is BAD_PASSWORD, so neither the time
 * taken nor the answer tells a guesser which names exist or are disabled.
 * The comparison is constant-time (CRYPTO_memcmp). *cred (when cred is not
 * NULL) is set to the credential when the name is known (OK, BAD_PASSWORD,
 * DISABLED; for per-credential failure counts), else NULL; it lives as
 * long as the caller's reference to t. Thread-safe; blocks for the KDF. */
enum cred_result cred_store_verify(const struct cred_store *t,
                                          const char *name, const void *pw,
                                          size_t pwlen,
                                          const struct cred **cred);

/* KDF runs done by cred_store_verify on this table (for tests and
 * metrics). */
uint64_t cred_store_kdf_count(const struct cred_store *t);
/* The work of those runs, summed: cred_kdf_cost of each run's parameters. */
uint64_t cred_store_kdf_work(const struct cred_store *t);

/* What one KDF run with k, deriving dklen bytes, costs, in PBKDF2-SHA256
 * iterations: PBKDF2 iter * ceil(dklen / 32) (one run of the iterations per
 * 32-byte block); scrypt 2^ln * r * p * 2 (one unit of BlockMix work
 * measured at about two PBKDF2-SHA256 iterations with OpenSSL 3 on
 * x86-64). Orders hashes by cost; not a time. */
uint64_t cred_kdf_cost(const struct cred_kdf *k, size_t dklen);

/* ---- one credential ----------------------------------------------------- */

const char *cred_name(const struct cred *c);
const char *cred_owner(const struct cred *c);   /* "" if none */
bool cred_disabled(const struct cred *c);
/* Quotas; 0 = no limit. What a unit counts is the quota code's business. */
uint32_t cred_hourly(const struct cred *c);
uint32_t cred_daily(const struct cred *c);
/* The from= and to= lists as written (0 entries: no restriction). */
size_t cred_nfrom(const struct cred *c);
const char *cred_from(const struct cred *c, size_t i);
size_t cred_nto(const struct cred *c);
const char *cred_to(const struct cred *c, size_t i);

/* May this credential use addr (as parsed by addr_parse_path: no angle
 * brackets) as envelope sender? Without a from= list: yes. Otherwise an
 * entry with '@' matches that whole address, a domain entry matches
 * exactly the address's domain (after its last unquoted '@'); both ASCII
 * case-insensitive. "example.com" allows "x@example.com" and
 * "x@EXAMPLE.com", never "x@evil-example.com", "x@example.com.evil.org"
 * or "x@sub.example.com". The null sender "" and an address without a
 * domain do not match any entry (a caller that wants to allow "<>" for
 * restricted credentials says so itself). Also fit for the From: header's
 * address. */
bool cred_sender_ok(const struct cred *c, const char *addr);

/* May this credential send to addr? Without a to= list: yes; otherwise
 * addr's domain must equal an entry (ASCII case-insensitive), as above. */
bool cred_rcpt_ok(const struct cred *c, const char *addr);

/* ---- editing (relayctl) -------------------------------------------------- */

/* A credential to add. Lists are items separated by ',' or '|' (NULL or
 * "": no restriction); quotas 0 = no limit. */
struct cred_spec {
	const char *name;
	const char *hash;     /* text as made by cred_hash() */
	const char *owner;    /* NULL or "": none */
	const char *from;
	const char *to;
	uint32_t hourly, daily;
	bool disabled;
};

/* Appends a credential (after the file's last line). Returns 0, -EEXIST
 * (the name exists), -EINVAL (a field is bad, or its line would be longer
 * than CRED_LINE_MAX; err says which, naming the value unless it is
 * the hash) or -ENOMEM. */
int cred_store_add(struct cred_store *t, const struct cred_spec *s,
                    char *err, size_t errlen);
/* The checks of cred_store_add without adding: lets relayctl refuse a
 * bad name or option before it asks for a password. s->hash may be NULL
 * (not checked then). Same returns and messages as cred_store_add. */
int cred_store_check(const struct cred_store *t,
                      const struct cred_spec *s, char *err,
                      size_t errlen);
/* Removes one; its line goes, comments stay. 0 or -ENOENT. */
int cred_store_del(struct cred_store *t, const char *name);
/* Replaces the hash. 0, -ENOENT, -EINVAL (not a valid hash) or -ENOMEM. */
int cred_store_set_hash(struct cred_store *t, const char *name,
                         const char *hash);
/* 0 or -ENOENT. */
int cred_store_set_disabled(struct cred_store *t, const char *name,
                             bool disabled);

/* The file's text: comment and blank lines as read, credentials in the
 * file's order in the canonical form NAME:HASH:OWNER:OPTIONS (options in
 * the order from, to, hourly, daily, disabled), added ones at the end.
 * Appends to a struct buf (common/buf.h). Returns 0 or -ENOMEM/-ENOBUFS. */
struct buf;
int cred_store_format(const struct cred_store *t, struct buf *out);

/* Writes the table to path atomically: a temporary file in the same
 * directory, mode 0600 (an existing file's owner and group are kept, and
 * its group read/write bits, so a relayd running as another user can
 * still read it; "other" never gets access), fsync, rename over path,
 * fsync of the directory. On error the old file is untouched and err
 * names the path and the failing step. Returns 0 or -errno. */
int cred_store_save(const struct cred_store *t, const char *path,
                     char *err, size_t errlen);

#endif
