/*
 * tools/ctl.h - relayctl's internal interface: the context a command runs
 * in, the command handlers (one ctl_cmd_* per subcommand, listed in the
 * table in relayctl.c), and the output helpers of ctl_out.c (an in-memory
 * output buffer with a sticky error, terminal-safe text, JSON strings,
 * ages and timestamps). Not a public header: only tools/ includes it.
 */
#ifndef RELAY_CTL_H
#define RELAY_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/buf.h"
#include "common/conf.h"

#define CTL_PROG "relayctl"
#define CTL_DEFAULT_CONF "/etc/relayd/relayd.conf"

/* Exit statuses. */
#define CTL_EXIT_OK 0
#define CTL_EXIT_ERR 1
#define CTL_EXIT_USAGE 2

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
 * were parsed by relayctl.c against the command's table entry). Returns 0
 * or -errno after printing its own "relayctl: ..." message to stderr. */
typedef int (*ctl_cmd_fn)(struct ctl_ctx *c, int argc, char **argv);

int ctl_cmd_list(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_show(struct ctl_ctx *c, int argc, char **argv);
int ctl_cmd_cat(struct ctl_ctx *c, int argc, char **argv);
/* user add|del|list|passwd|disable|enable|test (ctl_user.c) */
int ctl_cmd_user(struct ctl_ctx *c, int argc, char **argv);

/* "relayctl: " + message + newline on stderr. */
void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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

/* "5s", "3m", "2h", "4d" (negative: "0s"). */
void ctl_fmt_age(char *dst, size_t n, int64_t secs);
/* "2024-05-01T12:00:00Z". */
void ctl_fmt_time(char *dst, size_t n, int64_t t);

#endif
