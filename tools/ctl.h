/*
 * tools/ctl.h - relayctl's internal interface: the context a command runs
 * in, the command handlers (one ctl_cmd_* per subcommand, listed in the
 * table in relayctl.c), the output helpers of ctl_out.c (an in-memory
 * output buffer with a sticky error, terminal-safe text, JSON strings,
 * ages and timestamps), the control socket client (ctl_control.c) and the
 * reader of its JSON replies (ctl_json.c). Not a public header: only
 * tools/ includes it.
 */
#ifndef RELAY_CTL_H
#define RELAY_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "common/buf.h"
#include "common/conf.h"
#include "queue/queue.h"

#define CTL_PROG "relayctl"
#define CTL_DEFAULT_CONF "/etc/relayd/relayd.conf"

/* Exit statuses. */
#define CTL_EXIT_OK 0
#define CTL_EXIT_ERR 1
#define CTL_EXIT_USAGE 2
/* send-test: deferred, held or undecided (sysexits.h EX_TEMPFAIL). */
#define CTL_EXIT_TEMPFAIL 75

#define CTL_OPTS_MAX 16

/* What a command handler gets: the parsed options and, for commands that
 * need it, the loaded configuration. Lives on main()'s stack. */
struct ctl_ctx {
	const char *conf_path;  /* -c FILE, $RELAYD_CONFIG or the default */
	bool json;              /* --json */
	bool conf_loaded;
	struct conf conf;       /* valid when conf_loaded */
	int64_t now;            /* unix seconds, read once per run */
	/* The command's own options (see the opts field of its table entry),
	 * in the order given; a flag's value is "". */
	struct { const char *name, *value; } opts[CTL_OPTS_MAX];
	size_t nopts;
};

/* The value of the command option `name` ("--to"), "" for a flag that was
 * given, or NULL when it was not given. */
const char *ctl_opt(const struct ctl_ctx *c, const char *name);

/* A command handler: argv holds the positional arguments only (options
 * were parsed by relayctl.c against the command's table entry). Returns 0,
 * -errno after printing its own "relayctl: ..." message to stderr, or
 * CTL_EXIT_USAGE from ctl_usage_error() for a bad argument or option
 * value (exit status 2). */
typedef int (*ctl_cmd_fn)(struct ctl_ctx *c, int argc, char **argv);

/* ctl_queue.c: reading the spool. */
int ctl_cmd_list(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_show(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_cat(struct ctl_ctx *c, int argc, char **argv);
/* Opens the index read-only; on failure prints why (no spool, ...). */
int ctl_ro_open(const char *spool, struct queue_ro **out);
/* ctl_check.c: verifies the spool; exit 0 clean, 1 problems, 2 could not
 * check. */
int ctl_cmd_check(struct ctl_ctx *c, int argc, char **argv);
/* user add|del|list|passwd|disable|enable|test (ctl_user.c) */
int ctl_cmd_user(struct ctl_ctx *c, int argc, char **argv);

/* The password for user: from the terminal without echo (asked twice
 * when confirm), or one line of stdin. Prints its own errors; returns the
 * length or -errno (ctl_user.c). */
ssize_t ctl_read_password(const char *user, bool confirm, char *pw,
                          size_t cap);

/* setup smarthost|direct (ctl_setup.c): writes a configuration, checks
 * the smarthost login or generates the DKIM key, prints what to do next.
 * ctl_setup_direct is the direct half (ctl_setup_direct.c). */
int ctl_cmd_setup(struct ctl_ctx *c, int argc, char **argv);
int ctl_setup_direct(struct ctl_ctx *c);
/* Shared by both halves of setup (ctl_setup.c). */
int ctl_setup_write_file(const char *path, const void *data, size_t n,
                         mode_t mode, uid_t uid, gid_t gid, bool force);
int ctl_setup_refuse_existing(const char *path, bool force);
void ctl_setup_relayd_owner(uid_t *uid, gid_t *gid, const char *what);
const char *ctl_setup_ask(const struct ctl_ctx *c, const char *opt,
                          const char *question, const char *def, char *ans,
                          size_t n);
bool ctl_setup_value_ok(const char *v);
int ctl_setup_bad_value(const char *opt, const char *v);
const char *ctl_setup_path(const struct ctl_ctx *c);
void ctl_setup_dirname(const char *path, char *dir, size_t n);
int ctl_setup_mkdirs(const char *dir, mode_t mode);
int ctl_setup_backup(const char *path);

/* send-test ADDR (ctl_sendtest.c): submits a test message to relayd and
 * follows it; exit 0 sent, 1 bounced, CTL_EXIT_TEMPFAIL deferred. */
int ctl_cmd_send_test(struct ctl_ctx *c, int argc, char **argv);

/* dkim keygen|show|rotate (ctl_dkim.c). */
int ctl_cmd_dkim(struct ctl_ctx *c, int argc, char **argv);

/* ctl_control.c: changes through relayd's control socket (hold, release
 * and delete also offline, while relayd is stopped), and stats. */
int ctl_cmd_flush(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_hold(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_release(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_delete(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_bounce(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_requeue(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_stats(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_destinations(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_status(struct ctl_ctx *c, int argc, char **argv);
/* reload: relayd reads its configuration again and reports the result. */
int ctl_cmd_reload(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_pause(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_resume(struct ctl_ctx *c, int argc, char **argv);
/* lockout list [--json] | lockout clear [ADDR|NAME]: relayd's failed-AUTH
 * tables, through the control socket. */
int ctl_cmd_lockout(struct ctl_ctx *c, int argc, char **argv);

/* ctl_log.c: log_file filtered and followed. */
int ctl_cmd_log(struct ctl_ctx *c, int argc, char **argv);

/* ctl_checkdns.c: check-dns DOMAIN [--ip ADDR]... [--selector S]...
 * [--mail-from D] [--probe HOST[:PORT]]: exit 0 nothing FAILed, 1 some
 * item did, 2 usage or configuration. */
int ctl_cmd_check_dns(struct ctl_ctx *c, int argc, char **argv);

/* ctl_priv.c: run as root, checks the spool (no links, one owner, safe
 * modes and ancestors) and switches to its owner's uid and gid for good,
 * before a command opens anything in it. Not root: nothing. 0, or -errno
 * after printing why. */
int ctl_spool_enter(struct ctl_ctx *c);

/* "relayctl: " + message + newline on stderr. */
void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The error of a control request that got no usable answer (r: -EPROTO,
 * -ETIMEDOUT, or why it could not be sent), naming the socket. */
void ctl_err_request(const char *spool, int r);

/* "relayctl: " + message, then the usage text, on stderr; returns
 * CTL_EXIT_USAGE. Callers pass user-typed text through log_escape(). */
int ctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- output (ctl_out.c) ---------------------------------------------- */

/* Output is rendered into memory and written in one go: the LMDB read
 * transaction of a listing then never waits on a slow reader of stdout
 * (a pager), and errors are checked once, at flush (sticky, as in Knot). */
struct ctl_out {
	struct buf b;
	int err;                /* first append error, or 0 */
};

void ctl_out_init(struct ctl_out *o);
void ctl_out_free(struct ctl_out *o);
void ctl_out_mem(struct ctl_out *o, const void *p, size_t n);
void ctl_out_str(struct ctl_out *o, const char *s);
void ctl_out_printf(struct ctl_out *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void ctl_out_spaces(struct ctl_out *o, size_t n);
/* Writes everything buffered to f and empties the buffer. Returns the
 * sticky error, or -errno of a failed write. */
int ctl_out_flush(struct ctl_out *o, FILE *f);

/* Text that came from peers (addresses, replies, headers), made safe for
 * a terminal: valid UTF-8 stays, C0/C1 controls, DEL and invalid bytes
 * become \xNN. Returns the columns written (one per code point). */
#define CTL_TEXT_TAB 0x1        /* keep horizontal tabs */
size_t ctl_out_text(struct ctl_out *o, const void *p, size_t n,
                    unsigned flags);
/* Same, for a whole message shown on a terminal (relayctl cat): tabs and
 * line ends (LF, CRLF) are kept, a lone CR is escaped. more: another
 * piece follows, so a character cut at the end, or a final CR, is left
 * for it. Returns the bytes consumed (all of them unless more). */
size_t ctl_out_text_lines(struct ctl_out *o, const void *p, size_t n,
                          bool more);
/* Same, for at most max characters: longer text is cut at a character
 * boundary and ends in "...". */
size_t ctl_out_text_max(struct ctl_out *o, const void *p, size_t n,
                        size_t max);
/* Same, pads with spaces to at least `width` columns. */
void ctl_out_text_pad(struct ctl_out *o, const char *s, size_t width);

/* A JSON string literal (RFC 8259): quotes, backslash and controls are
 * escaped, valid UTF-8 is kept as is, and each byte that is not part of
 * valid UTF-8 becomes \u00XX (read as Latin-1), so the output is always
 * valid UTF-8 JSON. */
void ctl_out_json_str(struct ctl_out *o, const void *p, size_t n);
/* NUL-terminated; NULL is written as null. */
void ctl_out_json_strz(struct ctl_out *o, const char *s);

/* Length of the valid UTF-8 sequence at p (1-4), or 0 if p[0] does not
 * start one (RFC 3629: no overlongs, surrogates or > U+10FFFF). */
size_t ctl_utf8_len(const unsigned char *p, size_t n);

/* A queue id as typed: copied upper-cased into out (Crockford base32 is
 * case-insensitive for people typing it); false when it is not one. */
bool ctl_qid_norm(const char *arg, char out[QUEUE_ID_SIZE]);

/* "5s", "3m", "2h", "4d" (negative: "0s"). */
void ctl_fmt_age(char *dst, size_t n, int64_t secs);
/* "2024-05-01T12:00:00Z". */
void ctl_fmt_time(char *dst, size_t n, int64_t t);

/* ---- control socket (ctl_control.c) ---------------------------------- */

/* Total time a request may take (connect, send, the reply). */
#define CTL_CONTROL_TIMEOUT_MS 30000

/* Sends one request line (no LF; deliver/deliver_ctl.h) to relayd on
 * spool_dir/control and reads its one-line reply, within timeout_ms.
 * reply (replysz >= 1) gets the reply's text, NUL-terminated:
 *   0             "ok[ TEXT]": TEXT, or ""
 *   -EREMOTEIO    "err TEXT": TEXT (relayd refused; TEXT says why)
 *   -ECONNREFUSED relayd is not running (no socket, or nobody listening)
 *   -EPROTO       a malformed reply (no LF within DELIVER_CTL_REPLY_MAX
 *                 bytes, a NUL byte, an unknown status word)
 *   -EINVAL       line too long (DELIVER_CTL_LINE_MAX), or has CR/LF
 *   -ETIMEDOUT, or another -errno (EACCES: not relayd's user or root)
 * In the error cases other than -EREMOTEIO, reply is "". */
int ctl_control_request(const char *spool_dir, const char *line,
                        int timeout_ms, char *reply, size_t replysz);

/* ---- JSON replies (ctl_json.c) --------------------------------------- */
/* All take the text of one JSON object (as in "ok {JSON}") and return
 * -EPROTO when it is not exactly that. */

/* 0 when p[0..n) is one well-formed object. */
int ctl_json_check(const char *p, size_t n);
/* One "key: value" line per leaf, nested keys joined by '.' ("route.state:
 * paused"); strings unquoted, arrays compact, all of it made safe for a
 * terminal (ctl_out_text). Prints nothing for a malformed object. */
int ctl_json_flatten(struct ctl_out *o, const char *p, size_t n);
/* The text of the value at a dotted path ("route.state"; not an object
 * that has members): 0, -ENOENT or -EPROTO. */
int ctl_json_find(const char *p, size_t n, const char *path,
                  const char **v, size_t *vn);
/* Calls cb with the text of each element of the array at path, in order
 * (an element is itself a JSON value: query it with the functions here).
 * 0, -ENOENT, -EPROTO (not an array), or cb's first non-zero return. */
int ctl_json_each(const char *p, size_t n, const char *path,
                  int (*cb)(void *arg, const char *v, size_t vn), void *arg);
/* A string value, decoded (UTF-8), appended to out; -EPROTO if the value
 * is not a string. */
int ctl_json_get_str(const char *p, size_t n, const char *path,
                     struct buf *out);
/* An integer value; -EPROTO for another type or a fraction, -ERANGE. */
int ctl_json_get_int(const char *p, size_t n, const char *path,
                     int64_t *out);

/* ---- statistics history (ctl_stats.c; queue/queue_stats.h) ---------- */

/* relayctl stats --by ...: the buckets of the spool's index. */
int ctl_stats_history(struct ctl_ctx *c);

/* Sums of the hour buckets since `since` (unix seconds, the start of a
 * bucket). */
struct ctl_stats_window {
	int64_t since;
	uint64_t accepted, rejected, sent, deferred, bounced;
};
/* relayctl status: "last hour" is the current hour's bucket and the one
 * before it, "last 24 h" the current one and the 24 before it. 0 or
 * -errno. */
int ctl_stats_windows(struct ctl_ctx *c, struct queue_ro *ro,
                      struct ctl_stats_window *hour,
                      struct ctl_stats_window *day);

#endif
