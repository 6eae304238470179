/*
 * common/path.h - Opening a directory by a path without following any
 * symbolic link in it, for code that runs as root on paths another
 * account may write to (relayd handing the spool over, relayctl as root):
 * O_NOFOLLOW alone protects only the last component.
 */
#ifndef RELAY_PATH_H
#define RELAY_PATH_H

/* Opens the directory path (relative: from the working directory) one
 * component at a time, each with O_NOFOLLOW | O_DIRECTORY. Returns a
 * descriptor (O_RDONLY | O_DIRECTORY | O_CLOEXEC) or -errno: -ELOOP or
 * -ENOTDIR when a component is a symbolic link (or not a directory);
 * then, if bad is not NULL, the path up to that component is in bad. */
int path_open_dir_nofollow(const char *path, char *bad, unsigned badlen);

#endif
