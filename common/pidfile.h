/*
 * common/pidfile.h - pid_file: relayd's process id in a file, for init
 * scripts and monitoring that do not use systemd. The file is locked
 * (flock) for as long as relayd runs, so a second relayd with the same
 * pid_file refuses to start, and a stale file (relayd was killed) is
 * simply taken over.
 */
#ifndef RELAY_PIDFILE_H
#define RELAY_PIDFILE_H

#include <stddef.h>

/* Opens (creating, 0644) path without following a link, takes the lock
 * and writes "PID\n". Returns the descriptor to keep open, or -errno with
 * err saying why: "relayd is already running (pid N)", not a regular
 * file, cannot create. */
int pidfile_open(const char *path, char *err, size_t errlen);
/* At exit: removes the file if it is still ours (same inode as fd), then
 * closes fd. After relayd dropped root the removal may be refused; the
 * file is then left, unlocked, and the next start takes it over. */
void pidfile_close(const char *path, int fd);

#endif
