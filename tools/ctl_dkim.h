/*
 * tools/ctl_dkim.h - relayctl dkim: key generation for `dkim keygen`,
 * `dkim rotate` and `relayctl setup` (ctl_dkim_keygen), and the text an
 * operator pastes: the dkim_key line and the DNS record as a zone-file
 * line (<= 255-octet strings) and as one string for web DNS panels.
 * Not a public header: only tools/ includes it.
 */
#ifndef RELAY_CTL_DKIM_H
#define RELAY_CTL_DKIM_H

#include <stddef.h>
#include <sys/types.h>

#include "dkim/dkim_key.h"

struct ctl_out;

/* Where keygen writes keys unless told (--dir). */
#define CTL_DKIM_DIR "/etc/relayd/dkim"
#define CTL_DKIM_RSA_BITS 2048
/* A TXT character-string holds at most 255 octets (RFC 1035 §3.3). */
#define CTL_DKIM_TXT_CHUNK 255

/* Generates a key (alg; bits for RSA, DKIM_RSA_BITS_MIN..MAX) for
 * DOMAIN SELECTOR and writes it to DIR/DOMAIN.SELECTOR.key (domain
 * lower-cased): created with O_EXCL|O_NOFOLLOW, mode 0600, never over an
 * existing file; DIR is made (0700) when missing, its parent must exist;
 * a relative DIR is made absolute. uid/gid other than (uid_t)-1 /
 * (gid_t)-1: the file (and a DIR made here) is chowned to them through
 * the open descriptor before the key is written (relayctl run as root for
 * relayd's account). The key is fsynced, then the directory. path_out
 * gets the file's absolute path. 0, or -errno with the reason in err
 * (-EEXIST: the file exists and was left alone; -EINVAL: a bad domain,
 * selector or size). */
int ctl_dkim_keygen(const char *domain, const char *selector,
                    enum dkim_alg alg, unsigned bits, const char *dir,
                    uid_t uid, gid_t gid, char *path_out, size_t pathlen,
                    char *err, size_t errlen);

/* The record's owner name, "SELECTOR._domainkey.DOMAIN" (no final dot). */
void ctl_dkim_txt_name(const struct dkim_key_spec *s, char *out, size_t n);

/* Appends what to publish for k: the zone-file line
 *   SELECTOR._domainkey.DOMAIN. IN TXT ( "..." "..." )
 * with the record cut into strings of at most CTL_DKIM_TXT_CHUNK octets,
 * then the name and the value as one string for web DNS panels; each
 * line starts with indent. */
void ctl_dkim_out_dns(struct ctl_out *o, const struct dkim_key *k,
                      const char *indent);

/* The record cut for a zone file: "\"...\" \"...\"" (malloc'd, NULL on
 * allocation failure). */
char *ctl_dkim_zone_strings(const char *record);

#endif
