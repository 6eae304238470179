/*
 * common/log_sys.c - log_syslog (see log_sys.h): lines to the local
 * syslog socket, written by us rather than by syslog(3), because glibc's
 * syslog() blocks when the socket's queue is full (a slow journald or
 * rsyslog, 10 datagrams by default on Linux) and relayd's event loop must
 * never wait on its log. The socket is non-blocking: a line that does not
 * fit is dropped and counted, and the count is reported in the next line
 * that goes through. A syslog daemon that restarts is reconnected to.
 */
#include "log_sys.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* RFC 3164 facility mail (2); severities err, warning, info, debug. */
#define FAC_MAIL 2
static const int sev[] = {3, 4, 6, 7};

static int sys_fd = -1;
static bool sys_connected;
static unsigned long sys_dropped;
static time_t sys_retry_at;       /* next connect attempt after a failure */
static const char *sys_path = "/dev/log";

static bool sys_connect(void)
{
	if (sys_fd < 0)
		sys_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		                0);
	if (sys_fd < 0)
		return false;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sys_path);
	sys_connected = connect(sys_fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	if (!sys_connected)
		sys_retry_at = time(NULL) + 5;
	return sys_connected;
}

void log_sys_open(void)
{
	/* At start, as root if relayd started so: /dev/log may want it. */
	sys_connect();
}

void log_sys_close(void)
{
	if (sys_fd >= 0)
		close(sys_fd);
	sys_fd = -1;
	sys_connected = false;
}

static int sys_send(const char *buf, size_t len)
{
	for (int tries = 0; tries < 2; tries++) {
		if (!sys_connected && (time(NULL) < sys_retry_at || !sys_connect()))
			return -ENOTCONN;
		ssize_t r;
		do
			r = send(sys_fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (r < 0 && errno == EINTR);
		if (r >= 0)
			return 0;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
			return -EAGAIN;
		/* The daemon went away (restart): connect again, once. */
		sys_connected = false;
		sys_retry_at = 0;
	}
	return -ENOTCONN;
}

void log_sys_write(int level, const char *msg, size_t len)
{
	if (level < 0 || level > 3)
		level = 3;
	char line[4200];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	char ts[32];
	strftime(ts, sizeof ts, "%b %e %H:%M:%S", &tm);
	int n;
	if (sys_dropped) {
		/* Said first, at warning, then the line itself. */
		n = snprintf(line, sizeof line, "<%d>%s relayd[%ld]: syslog: %lu "
		             "lines dropped: the syslog socket was full",
		             FAC_MAIL * 8 + 4, ts, (long)getpid(), sys_dropped);
		if (n > 0 && sys_send(line, (size_t)n) == 0)
			sys_dropped = 0;
	}
	if (len > sizeof line - 64)
		len = sizeof line - 64;
	n = snprintf(line, sizeof line, "<%d>%s relayd[%ld]: %.*s",
	             FAC_MAIL * 8 + sev[level], ts, (long)getpid(), (int)len, msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = (int)sizeof line - 1;
	if (sys_send(line, (size_t)n) < 0)
		sys_dropped++;
}
