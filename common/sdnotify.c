/*
 * common/sdnotify.c - systemd notifications (see sdnotify.h).
 */
#include "common/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int sd_fd = -1;
static struct sockaddr_un sd_addr;
static socklen_t sd_len;

int sdnotify_open(void)
{
	const char *p = getenv("NOTIFY_SOCKET");
	if (!p || !p[0])
		return 0;
	size_t n = strlen(p);
	if ((p[0] != '/' && p[0] != '@') || n >= sizeof sd_addr.sun_path)
		return -EINVAL;
	memset(&sd_addr, 0, sizeof sd_addr);
	sd_addr.sun_family = AF_UNIX;
	memcpy(sd_addr.sun_path, p, n);
	if (p[0] == '@')
		sd_addr.sun_path[0] = '\0';     /* abstract namespace */
	sd_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
	                     (p[0] == '/'));
	sd_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	return sd_fd < 0 ? -errno : 0;
}

int sdnotify(const char *text)
{
	if (sd_fd < 0)
		return 0;
	ssize_t r;
	do
		r = sendto(sd_fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT,
		           (const struct sockaddr *)&sd_addr, sd_len);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : 0;
}

void sdnotify_close(void)
{
	if (sd_fd >= 0)
		close(sd_fd);
	sd_fd = -1;
}
