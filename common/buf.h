/*
 * common/buf.h - Growable byte buffer with a hard limit. Doubles as it
 * grows; past `limit` an append fails with -ENOBUFS and changes nothing:
 * it never truncates silently and never aborts on peer input.
 * Do not keep pointers into `data` across an append: it may move.
 */
#ifndef RELAY_BUF_H
#define RELAY_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *data;
	size_t len, cap, limit;
};

#define BUF_INIT(lim) {NULL, 0, 0, (lim)}

void buf_init(struct buf *b, size_t limit);
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_appends(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

#endif
