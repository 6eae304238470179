/*
 * common/hdr.c - Pure helpers on a message's header section shared by
 * smtpd/ (the From: rewrite of rewrite_from_header, at acceptance, before
 * DKIM signing) and deliver/ (the same for the DSNs it writes).
 */
#include "common/hdr.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* Length of the field starting at h[i] (up to and including the CRLF of
 * its last continuation line). */
static size_t field_len(const uint8_t *h, size_t n, size_t i)
{
	size_t j = i;
	for (;;) {
		const uint8_t *nl = memchr(h + j, '\n', n - j);
		if (!nl)
			return n - i;
		j = (size_t)(nl - h) + 1;
		if (j >= n || (h[j] != ' ' && h[j] != '\t'))
			return j - i;
	}
}

static bool field_is(const uint8_t *f, size_t n, const char *name)
{
	size_t k = strlen(name);
	if (n <= k || strncasecmp((const char *)f, name, k) != 0)
		return false;
	/* "From:" or "From :" (obsolete syntax allows space before ':'). */
	size_t i = k;
	while (i < n && (f[i] == ' ' || f[i] == '\t'))
		i++;
	return i < n && f[i] == ':';
}

int hdr_rewrite_from(const uint8_t *h, size_t n, const char *sender,
                     struct buf *out)
{
	bool has_reply_to = false;
	for (size_t i = 0; i < n;) {
		size_t fl = field_len(h, n, i);
		if (field_is(h + i, fl, "Reply-To"))
			has_reply_to = true;
		i += fl;
	}
	bool wrote_from = false;
	int r = 0;
	for (size_t i = 0; i < n && r == 0;) {
		size_t fl = field_len(h, n, i);
		if (!field_is(h + i, fl, "From")) {
			r = buf_append(out, h + i, fl);
			i += fl;
			continue;
		}
		if (!has_reply_to) {
			/* "From: x" -> "Reply-To: x", continuation lines kept. */
			const uint8_t *colon = memchr(h + i, ':', fl);
			r = buf_appends(out, "Reply-To:");
			if (r == 0)
				r = buf_append(out, colon + 1,
				               fl - (size_t)(colon + 1 - (h + i)));
			has_reply_to = true;
		}
		if (r == 0 && !wrote_from) {
			r = buf_printf(out, "From: <%s>\r\n", sender);
			wrote_from = true;
		}
		i += fl;
	}
	if (r == 0 && !wrote_from)
		r = buf_printf(out, "From: <%s>\r\n", sender);
	return r;
}
