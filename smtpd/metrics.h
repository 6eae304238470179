/*
 * smtpd/metrics.h - the Prometheus endpoint (metrics_listen): a small
 * HTTP/1.x server on the loop that answers GET /metrics and nothing else.
 * What it serves comes from a callback (relayd.c gathers smtpd's and
 * delivery's numbers); the request reader is common/httpget.c.
 */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include <uv.h>

#include "common/buf.h"

/* Limits: connections at once (more are closed at accept), and the time
 * a connection may take to send its request head and read the answer. */
#define METRICS_CONN_MAX 16
#define METRICS_TIMEOUT_MS 10000
/* The most an answer may be (the buffer's limit). */
#define METRICS_BODY_MAX (1024 * 1024)

/* Appends the metrics text (exposition format 0.0.4) to out. */
typedef void (*metrics_collect_fn)(void *arg, struct buf *out);

struct metrics;

/* Binds and listens on hostport ("127.0.0.1:9325", "[::1]:9325"); a
 * non-loopback address is logged as a warning. 0 or -errno (logged). */
int metrics_start(uv_loop_t *loop, const char *hostport,
                  metrics_collect_fn collect, void *arg, struct metrics **out);

/* Closes the listener and every connection; done_cb runs when the last
 * handle is closed, after which m is freed. */
void metrics_stop(struct metrics *m, void (*done_cb)(void *arg), void *arg);

/* The lines every relayd exposes: build info, process start time. */
void metrics_common(struct buf *out, int64_t start_time);

#endif
