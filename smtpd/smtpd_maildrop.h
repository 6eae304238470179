/*
 * smtpd/smtpd_maildrop.h - relayd's importer of SPOOL/maildrop/ (what
 * relayd-sendmail leaves there while relayd is stopped or refusing for a
 * while): makes the directory, then runs `relayd-sendmail --import` as a
 * child, once at start, whenever a file is renamed into the directory
 * (inotify), and every SMTPD_MAILDROP_PERIOD seconds; one child at a time
 * (a file that appears during a run starts another after it). The child
 * submits each file over loopback SMTP through relayd's own acceptance
 * path (tools/sendmail.c).
 */
#ifndef RELAY_SMTPD_MAILDROP_H
#define RELAY_SMTPD_MAILDROP_H

#include <uv.h>

#include "common/conf.h"

#define SMTPD_MAILDROP_PERIOD 60
/* The maildrop's group; relayd-sendmail is installed setgid to it. */
#define SMTPD_MAILDROP_GROUP "relayd-drop"

struct smtpd_maildrop;

/* conf_path: the file relayd read (passed to the child as -C), or NULL.
 * Logs and returns -errno when the directory cannot be made; no importer
 * is then run (relayd runs on without it). */
int smtpd_maildrop_start(uv_loop_t *loop, const struct conf *c,
                         const char *conf_path, struct smtpd_maildrop **out);
/* Stops the timer, sends a running child SIGTERM, and frees itself once
 * its handles are closed. NULL: no-op. */
void smtpd_maildrop_stop(struct smtpd_maildrop *m);

#endif
