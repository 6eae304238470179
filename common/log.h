/*
 * common/log.h - The daemon's log: one line per event, to stderr and/or a
 * file, written with a single write(2) so threads never interleave.
 * Callers put the queue id (or s=<session>) first. Peer text goes through
 * log_escape() first; AUTH payloads are never logged.
 */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* The current threshold; read it through the macros below. */
extern int log_threshold;

/* file may be NULL or "" (no file). Returns 0 or -errno. */
int log_open(const char *file, bool to_stderr, enum log_level level);
/* Reopens the log file (after rotation, on SIGHUP). */
int log_reopen(void);
void log_close(void);
/* log_syslog: every line to syslog(3) too, facility mail, ident relayd,
 * the level as its priority (journald, rsyslog). */
void log_set_syslog(bool on);

void log_write(enum log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Relaxed atomic: SIGHUP may change the level while threads log. */
#define log_enabled(l) \
	((int)(l) <= __atomic_load_n(&log_threshold, __ATOMIC_RELAXED))
#define log_err(...)   do { if (log_enabled(LOG_ERR)) log_write(LOG_ERR, __VA_ARGS__); } while (0)
#define log_warn(...)  do { if (log_enabled(LOG_WARN)) log_write(LOG_WARN, __VA_ARGS__); } while (0)
#define log_info(...)  do { if (log_enabled(LOG_INFO)) log_write(LOG_INFO, __VA_ARGS__); } while (0)
#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)

/* Copies peer text into dst (always NUL-terminated), escaping control
 * characters, DEL and backslash as \xNN / \\ so a log line cannot be
 * forged. Output is cut (with "...") if dst is too small. Returns dst. */
char *log_escape(char *dst, size_t dstlen, const void *src, size_t n);

/* Broken invariant: logs and aborts. The only abort in library code. */
#define RELAY_ASSERT(c) do { if (!(c)) relay_assert_fail(#c, __FILE__, __LINE__); } while (0)
_Noreturn void relay_assert_fail(const char *expr, const char *file, int line);

#endif
