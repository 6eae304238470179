/*
 * smtpd/smtpd_priv.h - Who relayd runs as. Started as root, relayd binds
 * its listeners, hands the spool (and its log file) over to the account
 * named by `user` (default "relayd") without following links, and drops
 * root for good (initgroups, setgid, setuid, then checks that root cannot
 * be regained). `user = root` keeps root, explicitly. Also the start-up
 * check that spool_dir exists or can be created, and its creation with
 * any missing parents. Called from main() only
 * (smtpd/relayd.c), before the event loop runs.
 */
#ifndef RELAY_SMTPD_PRIV_H
#define RELAY_SMTPD_PRIV_H

#include <stddef.h>

struct conf;

/* What `relayd -t` and the start check before anything is bound: as root,
 * that `user` names an existing account (or is "root"); for everyone,
 * that spool_dir is a directory or can be created (the nearest ancestor
 * that exists is a directory relayd may write to). Returns 0, or -errno
 * with one line in err that names the fix. */
int smtpd_priv_check(const struct conf *c, char *err, size_t errlen);

/* Before the drop: creates what is missing of spool_dir, its parents
 * mode 0755 (as `install -d`; logged) and the spool 0700, owned by who
 * runs relayd now (the drop then gives the spool away). 0 or -errno
 * (logged). */
int smtpd_priv_make_spool(const struct conf *c);

/* After binding and smtpd_priv_make_spool, before the spool is opened:
 * when running as root and `user` is not root, gives the spool's
 * directories and files to the account (logged), gives it the log file,
 * and drops to it. Not root: nothing changes (logged at info when `user`
 * names another account). Returns 0 or -errno (logged). */
int smtpd_priv_drop(const struct conf *c);

#endif
