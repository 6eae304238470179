/*
 * tests/fuzz/fuzz_dmarc.c - libFuzzer harness for dns/dmarc.c, fed what a
 * domain's owner (or an attacker's zone) controls: a DMARC TXT record, and
 * a domain name for the tree walk. Input: a first line is the domain, the
 * rest (NULs and all) the record. Bytes of the record past the first
 * that are above 0x80 also set, one bit each, which walk names "found" a
 * record and their psd, so the organizational domain is driven too.
 * Checks the contracts: the return values, `why` NUL-terminated and
 * printable, a valid record has a policy; the walk's names are at most 8,
 * each a proper suffix of the one before; the organizational domain is a
 * suffix of the name (or the name).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dmarc.h"

static bool is_suffix(const char *s, const char *of)
{
	size_t a = strlen(s), b = strlen(of);
	if (a > b)
		return false;
	if (a == b)
		return strcmp(s, of) == 0;
	return of[b - a - 1] == '.' && strcmp(of + (b - a), s) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t dlen = nl ? (size_t)(nl - data) : 0;
	const char *rec = (const char *)data + (nl ? dlen + 1 : 0);
	size_t rlen = size - (size_t)(rec - (const char *)data);

	struct dmarc_record r;
	char why[128];
	int rc = dmarc_parse(rec, rlen, &r, why, sizeof why);
	if (rc != 0 && rc != -ENOENT && rc != -EINVAL)
		abort();
	if (!memchr(why, '\0', sizeof why))
		abort();
	for (const char *p = why; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			abort();
	if (rc == -EINVAL && why[0] == '\0')
		abort();
	if (rc == 0 && (r.p == DMARC_P_UNSET || r.pct > 100 ||
	                (r.psd && r.psd != 'y' && r.psd != 'n')))
		abort();

	char dom[512];
	if (dlen >= sizeof dom)
		dlen = sizeof dom - 1;
	memcpy(dom, data, dlen);
	dom[dlen] = '\0';
	char names[DMARC_WALK_MAX][DMARC_NAME_BUF];
	size_t n = dmarc_walk_names(dom, names);
	if (n > DMARC_WALK_MAX)
		abort();
	for (size_t i = 0; i < n; i++) {
		if (strlen(names[i]) == 0 || strlen(names[i]) > DNS_NAME_MAX)
			abort();
		if (i > 0 && (strcmp(names[i], names[i - 1]) == 0 ||
		              !is_suffix(names[i], names[i - 1])))
			abort();
	}
	if (n == 0)
		return 0;
	struct dmarc_found f[DMARC_WALK_MAX] = {{0}};
	size_t k = 0;
	for (size_t i = 0; i < rlen && k < n; i++) {
		unsigned char c = (unsigned char)rec[i];
		if (c < 0x80)
			continue;
		f[k].found = c & 1;
		f[k].psd = (c & 6) == 2 ? 'y' : (c & 6) == 4 ? 'n' : 0;
		k++;
	}
	char org[DMARC_NAME_BUF];
	dmarc_org_domain((const char (*)[DMARC_NAME_BUF])names, f, n, org);
	if (!is_suffix(org, names[0]) || org[0] == '\0')
		abort();
	if (!dmarc_aligned(names[0], org, names[0], org, true) ||
	    !dmarc_aligned(names[0], org, org, org, false))
		abort();
	return 0;
}
