/*
 * smtpd/smtpd_priv.h - Who relayd runs as. Started as root, relayd binds
 * its listeners, hands the spool (and its log file) over to the account
 * named by `user` (default "relayd") without following links, and drops
 * root for good (initgroups, setgid, setuid, then checks that root cannot
 * be regained). `user = root` keeps root, explicitly. Also the start-up
 * check that spool_dir exists or can be created. Called from main() only
 * (smtpd/relayd.c), before the event loop runs.
 */
#ifndef RELAY_SMTPD_PRIV_H
#define RELAY_SMTPD_PRIV_H

#include <stddef.h>

struct conf;

/* What `relayd -t` and the start check before anything is bound: as root,
 * that `user` names an existing account (or is "root"); for everyone,
 * that spool_dir is a directory or can be created (its parent exists, is
 * a directory and is writable; relayd makes the spool itself, mode 0700,
 * never missing parents). Returns 0, or -errno with one line in err
 * that names the fix. */
int smtpd_priv_check(const struct conf *c, char *err, size_t errlen);

/* After binding, before the spool is opened: when running as root and
 * `user` is not root, creates spool_dir if missing, gives the spool's
 * directories and files to the account (logged), gives it the log file,
 * and drops to it. Not root: nothing changes (logged at info when `user`
 * names another account). Returns 0 or -errno (logged). */
int smtpd_priv_drop(const struct conf *c);

#endif
