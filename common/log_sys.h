/*
 * common/log_sys.h - syslog(3) for common/log.c, apart: <syslog.h> defines
 * LOG_ERR, LOG_INFO and LOG_DEBUG as macros, which are enum log_level's
 * names in log.h. Levels here are enum log_level's values (0 error ..
 * 3 debug).
 */
#ifndef RELAY_LOG_SYS_H
#define RELAY_LOG_SYS_H

#include <stddef.h>

/* openlog("relayd", LOG_PID | LOG_NDELAY, LOG_MAIL): the socket to
 * /dev/log is opened at once, while relayd may still be root. */
void log_sys_open(void);
void log_sys_close(void);
/* One message (no newline) at enum log_level `level`. */
void log_sys_write(int level, const char *msg, size_t len);

#endif
