/*
 * tools/sendmail_bs.h - The pure core of `relayd-sendmail -bs` (SMTP on
 * stdin and stdout; tools/sendmail.c runs the session): a command line to
 * its verb and argument, and the DATA reader that finds the end of the
 * message and undoes dot-stuffing. No I/O; fuzzed by
 * tests/fuzz/fuzz_sendmail_bs.c.
 */
#ifndef RELAY_SENDMAIL_BS_H
#define RELAY_SENDMAIL_BS_H

#include <stdbool.h>
#include <stddef.h>

enum sm_bs_verb {
	SM_BS_UNKNOWN, SM_BS_EHLO, SM_BS_HELO, SM_BS_MAIL, SM_BS_RCPT,
	SM_BS_DATA, SM_BS_RSET, SM_BS_NOOP, SM_BS_VRFY, SM_BS_QUIT,
	SM_BS_BAD,     /* a NUL byte in the line */
};

/* line[0..n) (without its CRLF): the verb, case-insensitive, and *arg:
 * what follows it (for MAIL/RCPT, after "FROM:"/"TO:" and any blanks;
 * else after one blank), within line. */
enum sm_bs_verb sm_bs_command(const char *line, size_t n, const char **arg);

/* The path of a MAIL/RCPT argument: "<...>" (at most max bytes with the
 * brackets) copied NUL-terminated into out (max + 1 bytes); *rest: what
 * follows (the parameters). -EINVAL: no path. */
int sm_bs_path(const char *arg, size_t n, char *out, size_t max,
               size_t *rest);

/* DATA, line by line in pieces (a piece ends its line or not): */
struct sm_bs_dot {
	bool bol;      /* the next piece starts a line */
	bool dot;      /* the line so far is the dot the last piece held */
};
/* Before the first piece. */
void sm_bs_dot_init(struct sm_bs_dot *d);
/* One piece *p, *n (end: it ends its line): 1 when it is the line "."
 * that ends the message (nothing to keep), else 0 with *p, *n what goes
 * into the message (a leading dot of a line removed: RFC 5321 §4.5.2). */
int sm_bs_dot_piece(struct sm_bs_dot *d, const char **p, size_t *n, bool end);

#endif
