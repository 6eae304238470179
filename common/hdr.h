/*
 * common/hdr.h - Pure helpers on a message's header section (CRLF lines,
 * without the empty line that ends it). No I/O.
 */
#ifndef RELAY_HDR_H
#define RELAY_HDR_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* Largest header section rewritten for rewrite_from_header; a bigger one
 * is kept as it is (the caller warns). */
#define HDR_REWRITE_MAX (1024 * 1024)

/* Rewrites a header section (without the blank line that ends it) for
 * rewrite_from_header: every From: field (with its continuation lines)
 * becomes "From: <sender>" and, unless the section has a Reply-To:, the
 * original From: field is kept as Reply-To:. Appends to out: 0, or
 * -ENOBUFS past out's limit. */
int hdr_rewrite_from(const uint8_t *h, size_t n, const char *sender,
                     struct buf *out);

#endif
