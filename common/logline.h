/*
 * common/logline.h - Reading relayd's own log lines back (for `relayctl
 * log`): the inverse of log_write's format
 *
 *   2026-12-05T22:55:49.123Z relayd[812]: info: 0MGl3hZ4a1b2c3d4: to=<a@b>, ...
 *
 * Pure functions over bytes: no allocation, every field points into the
 * line given, every count bounded. A line that is not relayd's (a foreign
 * program's, a cut one) still parses, as an event of kind "other" with no
 * time.
 */
#ifndef RELAY_LOGLINE_H
#define RELAY_LOGLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a line says about a message. */
enum logline_event {
	LOGEV_OTHER,      /* anything else (session lines, warnings) */
	LOGEV_ACCEPTED,   /* "ID: from=<...>, size=..., nrcpt=..." */
	LOGEV_SENT,       /* "ID: to=<...>, ..., status=sent (reply)" */
	LOGEV_DEFERRED,
	LOGEV_BOUNCED,
	LOGEV_DSN,        /* "ID: sender non-delivery notification: DSNID" */
	LOGEV_REMOVED,    /* "ID: removed" */
	LOGEV__COUNT
};
/* "other", "accepted", "sent", "deferred", "bounced", "dsn", "removed". */
extern const char *const logline_event_names[LOGEV__COUNT];

/* key=value pairs kept from one line: beyond this, the rest is text. */
#define LOGLINE_FIELDS_MAX 16

struct logline_field {
	const char *key, *val;
	size_t keylen, vallen;   /* val without its <> for addresses */
};

struct logline {
	int64_t ms;              /* unix milliseconds; -1: no timestamp */
	const char *time;        /* the timestamp as written (24 bytes) */
	size_t timelen;
	long pid;                /* 0 if none */
	const char *level;       /* "info", "warn", ... (levellen 0: none) */
	size_t levellen;
	char id[17];             /* the queue id the line is about, or "" */
	enum logline_event ev;
	const char *text;        /* after "ID: " (or after the level) */
	size_t textlen;
	struct logline_field f[LOGLINE_FIELDS_MAX];
	size_t nf;
	const char *reply;       /* delivery lines: inside "status=X (...)" */
	size_t replylen;
	char dsn_id[17];         /* LOGEV_DSN: the notification's queue id */
};

/* Parses one line (without its newline). Never fails: see the header. */
void logline_parse(const char *line, size_t len, struct logline *out);

/* The field `key` ("to", "from", "relay", "status", ...) or NULL. */
const struct logline_field *logline_get(const struct logline *l,
                                        const char *key);

/* "2026-12-05T22:55:49.123Z" (at least the seconds; ".mmm" and "Z"
 * optional) -> unix ms. -1 if it is not one. */
int64_t logline_time(const char *s, size_t len);

#endif
