/*
 * common/log.c - Line-at-a-time logging to stderr and/or a file (log.h).
 */
#include "log.h"
#include "log_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_threshold = LOG_INFO;

static int log_fd = -1;
static bool log_stderr = true;
static char *log_path;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static long log_pid;
static bool log_syslog;      /* also to syslog(3), facility mail */

static const char *const level_names[] = {"error", "warning", "info", "debug"};

/* May be called again (SIGHUP) while other threads log: the settings they
 * read inside log_write() change under the mutex. log_path is only used
 * by the thread that opens and reopens the log. */
int log_open(const char *file, bool to_stderr, enum log_level level)
{
	char *path = NULL;
	if (file && *file) {
		path = strdup(file);
		if (!path)
			return -ENOMEM;
	}
	if (!log_pid)   /* first call, before any other thread exists */
		log_pid = (long)getpid();
	pthread_mutex_lock(&log_mu);
	log_stderr = to_stderr;
	pthread_mutex_unlock(&log_mu);
	__atomic_store_n(&log_threshold, (int)level, __ATOMIC_RELAXED);
	free(log_path);
	log_path = path;
	return log_reopen();
}

int log_reopen(void)
{
	int fd = -1;
	if (log_path) {
		/* Never through a link: relayd opens it as root before it
		 * drops privileges, perhaps in a directory its account can
		 * write to. */
		fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC |
		          O_NOFOLLOW, 0640);
		if (fd < 0)
			return -errno;
	}
	pthread_mutex_lock(&log_mu);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	pthread_mutex_unlock(&log_mu);
	return 0;
}

void log_set_syslog(bool on)
{
	pthread_mutex_lock(&log_mu);
	if (on && !log_syslog)
		log_sys_open();
	else if (!on && log_syslog)
		log_sys_close();
	log_syslog = on;
	pthread_mutex_unlock(&log_mu);
}

void log_close(void)
{
	pthread_mutex_lock(&log_mu);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = -1;
	pthread_mutex_unlock(&log_mu);
	free(log_path);
	log_path = NULL;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

void log_write(enum log_level lvl, const char *fmt, ...)
{
	char line[4096];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof line,
	                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ relayd[%ld]: %s: ",
	                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	                 tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000),
	                 log_pid ? log_pid : (long)getpid(), level_names[lvl]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';

	pthread_mutex_lock(&log_mu);
	if (log_fd >= 0)
		write_all(log_fd, line, len);
	if (log_stderr)
		write_all(STDERR_FILENO, line, len);
	if (log_syslog) {
		/* syslog has its own time, name and pid, and the level is
		 * the priority: the message alone. */
		log_sys_write((int)lvl, line + n, len - 1 - (size_t)n);
	}
	pthread_mutex_unlock(&log_mu);
}

char *log_escape(char *dst, size_t dstlen, const void *src, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = src;
	size_t o = 0;
	if (dstlen == 0)
		return dst;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		char tmp[4];
		size_t k;
		if (c < 0x20 || c == 0x7f) {
			tmp[0] = '\\';
			tmp[1] = 'x';
			tmp[2] = hex[c >> 4];
			tmp[3] = hex[c & 15];
			k = 4;
		} else if (c == '\\') {
			tmp[0] = tmp[1] = '\\';
			k = 2;
		} else {
			tmp[0] = (char)c;
			k = 1;
		}
		if (o + k + 4 > dstlen) {
			if (o + 4 <= dstlen) {
				memcpy(dst + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(dst + o, tmp, k);
		o += k;
	}
	dst[o] = '\0';
	return dst;
}

void relay_assert_fail(const char *expr, const char *file, int line)
{
	log_write(LOG_ERR, "assertion failed: %s (%s:%d)", expr, file, line);
	abort();
}
