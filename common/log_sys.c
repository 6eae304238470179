/*
 * common/log_sys.c - syslog(3) for log_syslog (see log_sys.h).
 */
#include "log_sys.h"

#include <syslog.h>

void log_sys_open(void)
{
	openlog("relayd", LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_sys_close(void)
{
	closelog();
}

void log_sys_write(int level, const char *msg, size_t len)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	if (level < 0 || level > 3)
		level = 3;
	syslog(prio[level], "%.*s", (int)len, msg);
}
