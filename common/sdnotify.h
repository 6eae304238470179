/*
 * common/sdnotify.h - systemd's notification protocol (sd_notify(3)),
 * written directly: one datagram of "KEY=VALUE\n" lines to the AF_UNIX
 * socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract
 * namespace). No libsystemd: relayd's dependencies are fixed. Without
 * $NOTIFY_SOCKET every call does nothing.
 */
#ifndef RELAY_SDNOTIFY_H
#define RELAY_SDNOTIFY_H

/* Reads $NOTIFY_SOCKET and opens the datagram socket, before relayd drops
 * root (systemd's socket accepts anyone's datagrams, but the variable is
 * read once). Returns 0 (also when there is none) or -errno. */
int sdnotify_open(void);
/* Sends text ("READY=1\nSTATUS=..."); errors are ignored (systemd may
 * have gone away): 0 or -errno for the tests' sake. */
int sdnotify(const char *text);
void sdnotify_close(void);

#endif
