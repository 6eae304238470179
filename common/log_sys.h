/*
 * common/log_sys.h - log_syslog for common/log.c: RFC 3164 lines
 * ("<PRI>Mmm dd hh:mm:ss relayd[PID]: message", facility mail) to the
 * local syslog socket /dev/log. Levels here are enum log_level's values
 * (0 error .. 3 debug).
 */
#ifndef RELAY_LOG_SYS_H
#define RELAY_LOG_SYS_H

#include <stdbool.h>
#include <stddef.h>

/* Connects a non-blocking datagram socket to /dev/log at once, while
 * relayd may still be root (a line that would block is dropped and
 * counted instead: the event loop never waits on syslog). */
void log_sys_open(void);
void log_sys_close(void);
/* One message (no newline) at enum log_level `level`. */
void log_sys_write(int level, const char *msg, size_t len);

#endif
