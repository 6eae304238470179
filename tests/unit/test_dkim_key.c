/*
 * tests/unit/test_dkim_key.c - dkim/dkim_key.c: the dkim_key line (good
 * and bad values, table-driven), loading key files (keys generated here
 * and the committed odd ones in tests/unit/data/dkim: RSA-768, P-256, an
 * encrypted key, a PKCS#1 RSA-1024), the refusals (world-readable, a
 * symbolic link, a directory, too large), the public record, and matching
 * served TXT records (spaces in p=, t=y, missing or empty p=, other key
 * types and keys, h=, s=, duplicate tags, bad base64).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/b64.h"
#include "dkim/dkim_key.h"

#define DATA "tests/unit/data/dkim/"

static char tmpdir[64];

static int setup_dir(void **state)
{
	(void)state;
	strcpy(tmpdir, "/tmp/test_dkim_key.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Writes n bytes to tmpdir/name with mode; fills spec with the path. */
static void put_file(const char *name, const void *p, size_t n, mode_t mode,
                     struct dkim_key_spec *spec)
{
	memset(spec, 0, sizeof *spec);
	strcpy(spec->domain, "example.com");
	strcpy(spec->selector, "sel");
	snprintf(spec->path, sizeof spec->path, "%s/%s", tmpdir, name);
	unlink(spec->path);
	int fd = open(spec->path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

/* A committed file (git keeps no 0600) copied to tmpdir at 0600. */
static void put_data(const char *name, struct dkim_key_spec *spec)
{
	char buf[8192];
	FILE *f = fopen(name, "rb");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof buf, f);
	fclose(f);
	assert_true(n > 0 && n < sizeof buf);
	put_file(strrchr(name, '/') + 1, buf, n, 0600, spec);
}

static struct dkim_key *gen_load(enum dkim_alg alg, unsigned bits,
                                 const char *name)
{
	char *pem, err[256];
	size_t n;
	struct dkim_key_spec spec;
	struct dkim_key *k;
	assert_int_equal(dkim_key_generate(alg, bits, &pem, &n, err, sizeof err), 0);
	put_file(name, pem, n, 0600, &spec);
	free(pem);
	assert_int_equal(dkim_key_load(&spec, &k, err, sizeof err), 0);
	return k;
}

/* ---- the line ---------------------------------------------------------- */

static const struct {
	const char *in;
	const char *domain, *selector, *path;  /* NULL domain: an error */
	const char *err;                       /* substring of the error */
} lines[] = {
	{"example.com s1 /etc/relayd/dkim/example.com.s1.key", "example.com",
	 "s1", "/etc/relayd/dkim/example.com.s1.key", NULL},
	{"  Example.COM.\tS2026 \t /k/a b.pem  ", "example.com", "S2026",
	 "/k/a b.pem", NULL},
	{"mail.example.org a.b-c /k", "mail.example.org", "a.b-c", "/k", NULL},
	{"", NULL, NULL, NULL, "three words"},
	{"example.com sel", NULL, NULL, NULL, "three words"},
	{"example.com sel relative/key.pem", NULL, NULL, NULL, "absolute"},
	{"exa_mple.com sel /k", NULL, NULL, NULL, "the domain 'exa_mple.com'"},
	{"example..com sel /k", NULL, NULL, NULL, "empty label"},
	{"-example.com sel /k", NULL, NULL, NULL, "starts or ends with '-'"},
	{"example.com sel_1 /k", NULL, NULL, NULL, "the selector 'sel_1'"},
	{"example.com .sel /k", NULL, NULL, NULL, "empty label"},
	{"example.com sel- /k", NULL, NULL, NULL, "starts or ends"},
	{"example.com "
	 "a234567890123456789012345678901234567890123456789012345678901234 /k",
	 NULL, NULL, NULL, "longer than 63"},
	{"example.com sel /k\x01x", NULL, NULL, NULL, "control character"},
};

static void test_parse_line(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
		struct dkim_key_spec s;
		char err[256] = "";
		int r = dkim_key_parse_line(lines[i].in, &s, err, sizeof err);
		if (lines[i].domain) {
			if (r != 0)
				fail_msg("line %zu: %s", i, err);
			assert_string_equal(s.domain, lines[i].domain);
			assert_string_equal(s.selector, lines[i].selector);
			assert_string_equal(s.path, lines[i].path);
		} else {
			assert_int_equal(r, -EINVAL);
			if (!strstr(err, lines[i].err))
				fail_msg("line %zu: '%s' lacks '%s'", i, err, lines[i].err);
		}
	}
}

static void test_parse_line_lengths(void **state)
{
	(void)state;
	char line[700], err[256];
	struct dkim_key_spec s;
	/* 4 labels of 63 + 3 dots = 255: over 253. */
	char dom[300] = "";
	for (int i = 0; i < 4; i++) {
		if (i)
			strcat(dom, ".");
		strcat(dom, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	}
	snprintf(line, sizeof line, "%s s /k", dom);
	assert_int_equal(dkim_key_parse_line(line, &s, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "253"));
	/* 3 labels of 63 + a 50-character one: a valid domain (242) whose
	 * selector1._domainkey name (263) is too long. */
	snprintf(line, sizeof line, "%.191s.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
	         "selector1 /k", dom);
	assert_int_equal(dkim_key_parse_line(line, &s, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "_domainkey"));
}

/* ---- loading ------------------------------------------------------------- */

static void test_load_generated(void **state)
{
	(void)state;
	struct dkim_key *k = gen_load(DKIM_ALG_ED25519, 0, "ed.key");
	assert_int_equal(k->alg, DKIM_ALG_ED25519);
	assert_int_equal(k->bits, 256);
	assert_false(k->weak);
	assert_int_equal(strlen(k->pub_b64), 44);   /* 32 bytes */
	assert_non_null(strstr(k->pem, "-----BEGIN PRIVATE KEY-----"));
	char *rec = dkim_key_record(k);
	assert_non_null(rec);
	char want[128];
	snprintf(want, sizeof want, "v=DKIM1; k=ed25519; p=%s", k->pub_b64);
	assert_string_equal(rec, want);
	char why[256];
	assert_int_equal(dkim_key_match(k, rec, strlen(rec), why, sizeof why), 0);
	assert_string_equal(why, "");
	free(rec);
	dkim_key_free(k);

	k = gen_load(DKIM_ALG_RSA, 1024, "rsa1024.key");
	assert_int_equal(k->alg, DKIM_ALG_RSA);
	assert_int_equal(k->bits, 1024);
	assert_true(k->weak);
	rec = dkim_key_record(k);
	assert_int_equal(strncmp(rec, "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GN",
	                         46), 0);
	assert_int_equal(dkim_key_match(k, rec, strlen(rec), why, sizeof why), 0);
	free(rec);
	dkim_key_free(k);

	k = gen_load(DKIM_ALG_RSA, 2048, "rsa2048.key");
	assert_int_equal(k->bits, 2048);
	assert_false(k->weak);
	dkim_key_free(k);
	dkim_key_free(NULL);
}

static void test_generate_bits(void **state)
{
	(void)state;
	char *pem = (char *)1, err[256];
	size_t n = 1;
	assert_int_equal(dkim_key_generate(DKIM_ALG_RSA, 768, &pem, &n, err,
	                                   sizeof err), -EINVAL);
	assert_null(pem);
	assert_non_null(strstr(err, "1024 to 4096"));
	assert_int_equal(dkim_key_generate(DKIM_ALG_RSA, 8192, &pem, &n, err,
	                                   sizeof err), -EINVAL);
}

static void test_load_refusals(void **state)
{
	(void)state;
	struct dkim_key_spec s, link_spec;
	struct dkim_key *k = (struct dkim_key *)1;
	char err[512], *pem;
	size_t n;
	assert_int_equal(dkim_key_generate(DKIM_ALG_ED25519, 0, &pem, &n, err,
	                                   sizeof err), 0);

	/* world-readable */
	put_file("world.key", pem, n, 0644, &s);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -EPERM);
	assert_null(k);
	assert_non_null(strstr(err, "mode 0644"));
	assert_non_null(strstr(err, "chmod 0600"));
	/* group-readable is fine (0640 with relayd's group) */
	put_file("group.key", pem, n, 0640, &s);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), 0);
	dkim_key_free(k);

	/* a symbolic link to a good key */
	put_file("good.key", pem, n, 0600, &s);
	link_spec = s;
	snprintf(link_spec.path, sizeof link_spec.path, "%s/link.key", tmpdir);
	assert_int_equal(symlink(s.path, link_spec.path), 0);
	assert_int_equal(dkim_key_load(&link_spec, &k, err, sizeof err), -ELOOP);
	assert_non_null(strstr(err, "symbolic link"));
	/* a second name (hard link) for a key file: refused, both names */
	snprintf(link_spec.path, sizeof link_spec.path, "%s/hard.key", tmpdir);
	assert_int_equal(link(s.path, link_spec.path), 0);
	assert_int_equal(dkim_key_load(&link_spec, &k, err, sizeof err), -EPERM);
	assert_non_null(strstr(err, "has 2 names"));
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -EPERM);
	assert_int_equal(unlink(link_spec.path), 0);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), 0);
	dkim_key_free(k);

	/* a directory, a missing file */
	snprintf(s.path, sizeof s.path, "%s", tmpdir);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "not a regular file"));
	snprintf(s.path, sizeof s.path, "%s/missing.key", tmpdir);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -ENOENT);

	/* over 64 KiB: the key followed by padding */
	size_t big = DKIM_KEY_FILE_MAX + 1;
	char *b = malloc(big);
	memset(b, '\n', big);
	memcpy(b, pem, n);
	put_file("big.key", b, big, 0600, &s);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -EFBIG);
	free(b);

	/* not a key; a public key only */
	put_file("junk.key", "hello\n", 6, 0600, &s);
	assert_int_equal(dkim_key_load(&s, &k, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "not a PEM private key"));
	free(pem);
}

static void test_load_committed(void **state)
{
	(void)state;
	static const struct {
		const char *file;
		int r;
		const char *err;
	} t[] = {
		{DATA "rsa768.pem", -EINVAL, "768 bits is too weak"},
		{DATA "ec256.pem", -EINVAL, "RSA or Ed25519"},
		{DATA "ed25519-encrypted.pem", -EINVAL, "encrypted"},
		{DATA "rsa1024-pkcs1.pem", 0, NULL},
	};
	for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
		struct dkim_key_spec s;
		struct dkim_key *k;
		char err[512] = "";
		put_data(t[i].file, &s);
		int r = dkim_key_load(&s, &k, err, sizeof err);
		if (r != t[i].r)
			fail_msg("%s: %d (%s)", t[i].file, r, err);
		if (t[i].err && !strstr(err, t[i].err))
			fail_msg("%s: '%s' lacks '%s'", t[i].file, err, t[i].err);
		if (r == 0) {
			assert_int_equal(k->bits, 1024);
			assert_true(k->weak);
			/* re-encoded as PKCS#8 */
			assert_non_null(strstr(k->pem, "BEGIN PRIVATE KEY"));
			dkim_key_free(k);
		} else {
			assert_null(k);
		}
	}
}

/* ---- matching ---------------------------------------------------------- */

static struct dkim_key *rsa, *rsa_other, *ed;

static int setup_keys(void **state)
{
	if (setup_dir(state) < 0)
		return -1;
	rsa = gen_load(DKIM_ALG_RSA, 1024, "m-rsa.key");
	rsa_other = gen_load(DKIM_ALG_RSA, 1024, "m-rsa2.key");
	ed = gen_load(DKIM_ALG_ED25519, 0, "m-ed.key");
	return 0;
}

static int teardown_keys(void **state)
{
	dkim_key_free(rsa);
	dkim_key_free(rsa_other);
	dkim_key_free(ed);
	return teardown_dir(state);
}

/* %P in a pattern: the key's p= value; %S: it split by spaces every 40
 * characters; %O: the other RSA key's; %1: the PKCS#1 form; %E: the
 * Ed25519 key's; %X: the Ed25519 key as DER SubjectPublicKeyInfo. */
static void expand(const char *pat, const struct dkim_key *k, char *out,
                   size_t cap)
{
	size_t o = 0;
	for (const char *p = pat; *p; p++) {
		char tmp[1024] = "";
		if (*p != '%') {
			assert_true(o + 1 < cap);
			out[o++] = *p;
			continue;
		}
		p++;
		if (*p == 'P') {
			snprintf(tmp, sizeof tmp, "%s", k->pub_b64);
		} else if (*p == 'S') {
			size_t n = strlen(k->pub_b64), t = 0;
			for (size_t i = 0; i < n; i++) {
				if (i && i % 40 == 0)
					tmp[t++] = ' ';
				tmp[t++] = k->pub_b64[i];
			}
			tmp[t] = '\0';
		} else if (*p == 'O') {
			snprintf(tmp, sizeof tmp, "%s", rsa_other->pub_b64);
		} else if (*p == '1') {
			b64_encode(rsa->pub_alt, rsa->pub_alt_len, B64_PAD, tmp);
		} else if (*p == 'E') {
			snprintf(tmp, sizeof tmp, "%s", ed->pub_b64);
		} else if (*p == 'X') {
			/* RFC 8410 SPKI: 30 2a 30 05 06 03 2b 65 70 03 21 00 || raw */
			uint8_t der[44] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b,
			                   0x65, 0x70, 0x03, 0x21, 0x00};
			memcpy(der + 12, ed->pub_raw, 32);
			b64_encode(der, sizeof der, B64_PAD, tmp);
		}
		size_t n = strlen(tmp);
		assert_true(o + n < cap);
		memcpy(out + o, tmp, n);
		o += n;
	}
	out[o] = '\0';
}

static const struct {
	const char *name;
	int alg_ed;             /* match against: 0 rsa, 1 ed */
	const char *rec;
	int r;
	const char *why;        /* substring; "" = empty why */
} recs[] = {
	{"plain", 0, "v=DKIM1; k=rsa; p=%P", 0, ""},
	{"no v, no k", 0, "p=%P", 0, ""},
	{"spaces and tabs", 0, " v = DKIM1 ;\tk=rsa ;  p = %S ; ", 0, ""},
	{"CRLF folding in p", 0, "v=DKIM1; p=%S\r\n\t;", 0, ""},
	{"PKCS#1 form", 0, "v=DKIM1; k=rsa; p=%1", 0, ""},
	{"t=y", 0, "v=DKIM1; t=y; p=%P", 0, "t=y"},
	{"t=s:y", 0, "v=DKIM1; t = s : y; p=%P", 0, "t=y"},
	{"t=s", 0, "v=DKIM1; t=s; p=%P", 0, ""},
	{"h=sha1:sha256", 0, "v=DKIM1; h=sha1:sha256; p=%P", 0, ""},
	{"s=email", 0, "v=DKIM1; s=email; p=%P", 0, ""},
	{"s=*", 0, "v=DKIM1; s=*; p=%P", 0, ""},
	{"unknown tag", 0, "v=DKIM1; n=note here; x_y=1; p=%P", 0, ""},
	{"ed25519", 1, "v=DKIM1; k=ed25519; p=%E", 0, ""},

	{"missing p", 0, "v=DKIM1; k=rsa", -EINVAL, "no p= tag"},
	{"empty record", 0, "", -EINVAL, "empty record"},
	{"only blanks", 0, "  ;", -EINVAL, "not a tag name"},
	{"v not first", 0, "k=rsa; v=DKIM1; p=%P", -EINVAL, "v= is not the first"},
	{"v=DKIM2", 0, "v=DKIM2; p=%P", -EINVAL, "v= is not DKIM1"},
	{"duplicate p", 0, "v=DKIM1; p=%P; p=%P", -EINVAL, "appears twice"},
	{"no =", 0, "v=DKIM1; k; p=%P", -EINVAL, "tag 'k' has no '='"},
	{"bad name", 0, "v=DKIM1; 1k=rsa; p=%P", -EINVAL, "not a tag name"},
	{"bad base64", 0, "v=DKIM1; p=%P!", -EINVAL, "not valid base64"},
	{"control byte", 0, "v=DKIM1; p=%P\x01", -EINVAL, "byte 0x01"},
	{"base64 cut", 0, "v=DKIM1; p=abc", -EINVAL, "not valid base64"},
	{"8-bit byte", 0, "v=DKIM1; n=\xc3\xa9; p=%P", -EINVAL, "byte 0xc3"},

	{"revoked", 0, "v=DKIM1; k=rsa; p=", 1, "revoked"},
	{"revoked, spaces", 0, "v=DKIM1; p= ;", 1, "revoked"},
	{"other RSA key", 0, "v=DKIM1; k=rsa; p=%O", 1, "another RSA key (1024 bits)"},
	{"ed25519 record, rsa key", 0, "v=DKIM1; k=ed25519; p=%E", 1,
	 "the record is k=ed25519, the key is rsa"},
	{"rsa record, ed key", 1, "v=DKIM1; p=%P", 1, "k= absent"},
	{"unknown k", 0, "v=DKIM1; k=dsa; p=%P", 1, "k=dsa"},
	{"h=sha1", 0, "v=DKIM1; h=sha1; p=%P", 1, "h= does not allow sha256"},
	{"s=other", 0, "v=DKIM1; s=tlsrpt; p=%P", 1, "s= does not allow email"},
	{"ed25519 as SPKI", 1, "v=DKIM1; k=ed25519; p=%X", 1, "44 bytes"},
	{"ed25519 other", 1, "v=DKIM1; k=ed25519; p=%P", 1, "another Ed25519"},
	{"rsa: not DER", 0, "v=DKIM1; p=aGVsbG8=", 1, "not this RSA public key"},
};

static void test_match(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof recs / sizeof *recs; i++) {
		char rec[2048], why[256] = "x";
		const struct dkim_key *k = recs[i].alg_ed ? ed : rsa;
		/* "ed25519 other": a fresh key's p= against ed */
		struct dkim_key *tmp = NULL;
		if (strcmp(recs[i].name, "ed25519 other") == 0) {
			tmp = gen_load(DKIM_ALG_ED25519, 0, "m-ed2.key");
			expand(recs[i].rec, tmp, rec, sizeof rec);
		} else {
			expand(recs[i].rec, k, rec, sizeof rec);
		}
		int r = dkim_key_match(k, rec, strlen(rec), why, sizeof why);
		if (r != recs[i].r)
			fail_msg("%s: %d, want %d (%s)", recs[i].name, r, recs[i].r, why);
		if (recs[i].why[0] ? !strstr(why, recs[i].why) : why[0] != '\0')
			fail_msg("%s: why '%s', want '%s'", recs[i].name, why,
			         recs[i].why);
		dkim_key_free(tmp);
	}
}

/* Reads only len bytes: a record cut right after "p=" of a longer buffer
 * is revoked, whatever follows in memory. */
static void test_match_bounded(void **state)
{
	(void)state;
	char rec[2048], why[256];
	expand("v=DKIM1; p=%P", rsa, rec, sizeof rec);
	assert_int_equal(dkim_key_match(rsa, rec, strlen("v=DKIM1; p="), why,
	                                sizeof why), 1);
	assert_non_null(strstr(why, "revoked"));
	/* 65 tags */
	char many[1024] = "";
	for (int i = 0; i < 65; i++) {
		char t[16];
		snprintf(t, sizeof t, "a%d=1;", i);
		strcat(many, t);
	}
	assert_int_equal(dkim_key_match(rsa, many, strlen(many), why, sizeof why),
	                 -EINVAL);
	assert_non_null(strstr(why, "more than 64 tags"));
}

int main(void)
{
	const struct CMUnitTest line_tests[] = {
		cmocka_unit_test(test_parse_line),
		cmocka_unit_test(test_parse_line_lengths),
	};
	const struct CMUnitTest load_tests[] = {
		cmocka_unit_test(test_load_generated),
		cmocka_unit_test(test_generate_bits),
		cmocka_unit_test(test_load_refusals),
		cmocka_unit_test(test_load_committed),
	};
	const struct CMUnitTest match_tests[] = {
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_match_bounded),
	};
	int r = cmocka_run_group_tests(line_tests, NULL, NULL);
	r += cmocka_run_group_tests(load_tests, setup_dir, teardown_dir);
	r += cmocka_run_group_tests(match_tests, setup_keys, teardown_keys);
	return r;
}
