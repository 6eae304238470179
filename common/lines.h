/*
 * common/lines.h - One bounded reader for the small text files relayd
 * and relayctl load whole (the config file, the credentials file,
 * tls_policy_file, destination_policy_file): read a file of at most N
 * bytes into memory, then walk it line by line with line numbers and a
 * length cap. No parsing: each caller keeps its own syntax and messages.
 */
#ifndef RELAY_LINES_H
#define RELAY_LINES_H

#include <stddef.h>

/* lines_read_file flags. */
#define LINES_REGULAR 0x1   /* anything but a regular file: -EINVAL */
#define LINES_SNAPSHOT 0x2  /* regular file read at its fstat size: a file
                             * that grows meanwhile gives -EAGAIN (the
                             * caller tries again later) */

/* Reads all of path (opened O_RDONLY | O_CLOEXEC, following symbolic
 * links as open(2) does) into *text (malloc'd, NUL-terminated after *len
 * bytes; the caller frees it). More than max bytes: -EFBIG, without
 * reading past max + 1. Else 0 or -errno (-ENOMEM, open's and read's). */
int lines_read_file(const char *path, size_t max, unsigned flags,
                    char **text, size_t *len);

/* lines_next flags. */
#define LINES_STRIP_CR 0x1  /* a '\r' before the '\n' is not the line's */
#define LINES_NO_NUL 0x2    /* a NUL byte in a line: -EILSEQ */

/* Iterates over text[0..len): lines end with '\n'; the last one may
 * lack it; an empty text has no line. */
struct lines {
	const char *text;
	size_t len, pos;
	size_t lineno;      /* of the line lines_next returned last (1-based) */
	size_t max;         /* characters in a line, its '\n' not counted */
	unsigned flags;
};

void lines_init(struct lines *it, const char *text, size_t len, size_t max,
                unsigned flags);
/* The next line in *s, *n (without '\n'; with the '\r' before it unless
 * LINES_STRIP_CR): 1; 0 at the end; -E2BIG for a line longer than max
 * and -EILSEQ for a NUL byte (LINES_NO_NUL), it->lineno naming the line
 * (the walk can go on past it). */
int lines_next(struct lines *it, const char **s, size_t *n);
/* "NAME:LINE: line longer than MAX characters" or "NAME:LINE: NUL byte
 * in line" for lines_next's error rc into err. */
void lines_error(const struct lines *it, int rc, const char *name, char *err,
                 size_t errlen);

#endif
