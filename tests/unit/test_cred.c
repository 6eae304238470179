/*
 * tests/unit/test_cred.c - The credentials module (common/cred.h):
 * good files and a table of bad lines (each error names file and line and
 * never echoes a hash), hostile KDF parameters refused, hash and verify
 * round trips (also against vectors made by Python's hashlib), every
 * verify outcome costing exactly one KDF run, the sender and recipient
 * domain tables, editing, formatting and an atomic save reloaded.
 * Hashes made here use a cheap scrypt (ln=10) through the explicit kdf
 * parameter; one test uses the default cost.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/cred.h"

#define ERRLEN 512

/* Made by Python's hashlib (scrypt n=1024 r=8 p=1 and pbkdf2_hmac sha256,
 * 1000 iterations, salt "relayd-test-salt", 32 bytes): an independent
 * implementation agrees on the KDF and on the text format. */
#define H_SCRYPT "$scrypt$ln=10,r=8,p=1$cmVsYXlkLXRlc3Qtc2FsdA$" \
                 "NVujefwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa4"
#define PW_SCRYPT "correct horse"
#define H_PBKDF2 "$pbkdf2-sha256$i=1000$cmVsYXlkLXRlc3Qtc2FsdA$" \
                 "KdzLLAnRRAG3icRsvf/f3PzbVHLu8K/Xuj8EkLk2fZY"
#define PW_PBKDF2 "battery staple"

/* The salt and hash parts, for "never in a message" checks. */
#define SALT64 "cmVsYXlkLXRlc3Qtc2FsdA"

static const struct cred_kdf cheap = {
	.alg = CRED_SCRYPT, .ln = 10, .r = 8, .p = 1};

static struct cred_store *parse_ok(const char *text)
{
	char err[ERRLEN] = "";
	struct cred_store *t = NULL;
	int rc = cred_store_parse("t", text, strlen(text), &t, err, sizeof err);
	if (rc != 0)
		fail_msg("parse failed (%d): %s", rc, err);
	return t;
}

static char *format(const struct cred_store *t)
{
	struct buf b = BUF_INIT(1 << 20);
	assert_int_equal(cred_store_format(t, &b), 0);
	assert_int_equal(buf_append(&b, "", 1), 0);
	return (char *)b.data;
}

/* ---- parsing ------------------------------------------------------------- */

static void test_parse_good(void **state)
{
	(void)state;
	static const char text[] =
		"# relayd credentials\n"
		"\n"
		"shop:" H_SCRYPT ":acme:from=shop.example|noreply@Example.com,"
		"to=dest.example,hourly=100,daily=1000\n"
		"  # indented comment\r\n"
		"crm:" H_PBKDF2 ":acme:disabled=1\r\n"
		"bare:" H_SCRYPT "\n"
		"  padded:" H_SCRYPT "::disabled=0  \n"
		"x.y_z@a+b-c:" H_SCRYPT "::";   /* no final newline */
	struct cred_store *t = parse_ok(text);
	assert_int_equal(cred_store_count(t), 5);

	/* name order, case-insensitive */
	static const char *const order[] = {"bare", "crm", "padded", "shop",
	                                    "x.y_z@a+b-c"};
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(cred_name(cred_store_at(t, i)), order[i]);
	assert_null(cred_store_at(t, 5));

	const struct cred *c = cred_store_find(t, "SHOP");
	assert_non_null(c);
	assert_ptr_equal(c, cred_store_find(t, "shop"));
	assert_string_equal(cred_name(c), "shop");
	assert_string_equal(cred_owner(c), "acme");
	assert_int_equal(cred_nfrom(c), 2);
	assert_string_equal(cred_from(c, 0), "shop.example");
	assert_string_equal(cred_from(c, 1), "noreply@Example.com");
	assert_null(cred_from(c, 2));
	assert_int_equal(cred_nto(c), 1);
	assert_string_equal(cred_to(c, 0), "dest.example");
	assert_int_equal(cred_hourly(c), 100);
	assert_int_equal(cred_daily(c), 1000);
	assert_false(cred_disabled(c));

	c = cred_store_find(t, "crm");
	assert_true(cred_disabled(c));
	assert_string_equal(cred_owner(c), "acme");
	c = cred_store_find(t, "bare");
	assert_string_equal(cred_owner(c), "");
	assert_int_equal(cred_nfrom(c) + cred_nto(c), 0);
	assert_int_equal(cred_hourly(c) + cred_daily(c), 0);
	assert_false(cred_disabled(cred_store_find(t, "padded")));
	assert_non_null(cred_store_find(t, "X.Y_Z@A+B-C"));
	assert_null(cred_store_find(t, "nobody"));
	assert_null(cred_store_find(t, "sh op"));
	assert_null(cred_store_find(t, ""));
	assert_null(cred_store_find(t, NULL));
	cred_store_free(t);

	/* empty and comment-only files */
	t = parse_ok("");
	assert_int_equal(cred_store_count(t), 0);
	cred_store_free(t);
	t = parse_ok("# nothing\n\n   \n");
	assert_int_equal(cred_store_count(t), 0);
	cred_store_free(t);
}

struct bad_case {
	const char *text;
	const char *err;   /* the whole message */
};

#define L65 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SC(params) "$scrypt$" params "$" SALT64 "$NVujefwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa4"

static const struct bad_case bad_cases[] = {
	/* line structure */
	{"a:" H_SCRYPT "\nb c:" H_SCRYPT "\n",
	 "t:2: white space or control character in a credential line"},
	{"a:" H_SCRYPT ":o:hourly=1\tx\n",
	 "t:1: white space or control character in a credential line"},
	{"# ok\nalice\n", "t:2: no password hash (expected NAME:HASH:OWNER:OPTIONS)"},
	{"alice:" H_SCRYPT ":o:hourly=1:x\n",
	 "t:1: too many ':' fields (expected NAME:HASH:OWNER:OPTIONS)"},
	{"a:" H_SCRYPT "\n\n\nA:" H_PBKDF2 "\n",
	 "t:4: duplicate name 'A' (also on line 1)"},
	/* names and owners */
	{":" H_SCRYPT "\n", "t:1: bad name '' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
	{L65 ":" H_SCRYPT "\n",
	 "t:1: bad name '" L65 "' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
	{"al!ce:" H_SCRYPT "\n", "t:1: bad name 'al!ce' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
	{"al\xc3\xa9:" H_SCRYPT "\n",
	 "t:1: bad name 'al\xc3\xa9' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
	{"a:" H_SCRYPT ":o:from=x\x1b[31m.example\n",
	 "t:1: white space or control character in a credential line"},
	{"a:" H_SCRYPT ":o/x\n", "t:1: bad owner 'o/x' (0-64 of A-Z a-z 0-9 . _ @ + -)"},
	/* hashes: never echoed */
	{"a:" SALT64 "\n",
	 "t:1: password hash: not a password hash ($scrypt$... or $pbkdf2-sha256$...)"},
	{"a:$argon2id$v=19$m=65536,t=3,p=4$" SALT64 "$" SALT64 "\n",
	 "t:1: password hash: not a password hash ($scrypt$... or $pbkdf2-sha256$...)"},
	{"a:" SC("ln=15,p=1,r=8") "\n",
	 "t:1: password hash: bad scrypt parameters (expected ln=N,r=N,p=N)"},
	{"a:" SC("ln=15,r=8,p=") "\n",
	 "t:1: password hash: bad scrypt parameters (expected ln=N,r=N,p=N)"},
	{"a:" SC("ln=-1,r=8,p=1") "\n",
	 "t:1: password hash: bad scrypt parameters (expected ln=N,r=N,p=N)"},
	{"a:$scrypt$ln=10,r=8,p=1$" SALT64 "\n",
	 "t:1: password hash: bad salt or hash (expected $SALT$HASH in base64)"},
	{"a:$scrypt$ln=10,r=8,p=1$" SALT64 "$NVujefwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa4=\n",
	 "t:1: password hash: bad salt or hash (expected $SALT$HASH in base64)"},
	{"a:$scrypt$ln=10,r=8,p=1$" SALT64 "$NVujefwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa5\n",
	 "t:1: password hash: bad salt or hash (expected $SALT$HASH in base64)"},
	{"a:$scrypt$ln=10,r=8,p=1$" SALT64 "$NVuj*fwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa4\n",
	 "t:1: password hash: bad salt or hash (expected $SALT$HASH in base64)"},
	{"a:$scrypt$ln=10,r=8,p=1$c2FsdA$NVujefwWFhaDjhMqwHAF5GUaWjRGQ1AnvwDJ3WMuDa4\n",
	 "t:1: password hash: salt (8-64 bytes) or hash (16-64 bytes) of a bad length"},
	{"a:$scrypt$ln=10,r=8,p=1$" SALT64 "$" SALT64 "$x\n",
	 "t:1: password hash: bad salt or hash (expected $SALT$HASH in base64)"},
	/* hostile parameters: refused at load, no KDF is ever run with them */
	{"a:" SC("ln=40,r=8,p=1") "\n",
	 "t:1: password hash: scrypt ln out of range (10-20)"},
	{"a:" SC("ln=64,r=8,p=1") "\n",
	 "t:1: password hash: scrypt ln out of range (10-20)"},
	{"a:" SC("ln=99999999999,r=8,p=1") "\n",
	 "t:1: password hash: bad scrypt parameters (expected ln=N,r=N,p=N)"},
	{"a:" SC("ln=9,r=8,p=1") "\n",
	 "t:1: password hash: scrypt ln out of range (10-20)"},
	{"a:" SC("ln=15,r=8,p=1000000") "\n",
	 "t:1: password hash: scrypt p out of range (1-16)"},
	{"a:" SC("ln=15,r=8,p=4294967295") "\n",
	 "t:1: password hash: scrypt p out of range (1-16)"},
	{"a:" SC("ln=15,r=1024,p=1") "\n",
	 "t:1: password hash: scrypt r out of range (1-32)"},
	{"a:" SC("ln=15,r=0,p=1") "\n",
	 "t:1: password hash: scrypt r out of range (1-32)"},
	{"a:" SC("ln=20,r=1,p=1") "\n",
	 "t:1: password hash: scrypt parameters need more than 64 MiB"},
	{"a:" SC("ln=17,r=8,p=1") "\n",
	 "t:1: password hash: scrypt parameters need more than 64 MiB"},
	{"a:" SC("ln=15,r=8,p=16") "\n",
	 "t:1: password hash: scrypt parameters too costly (2^ln*r*p > 2^20)"},
	{"a:$pbkdf2-sha256$i=100000000$" SALT64 "$" SALT64 "\n",
	 "t:1: password hash: pbkdf2 iterations out of range (1000-2000000)"},
	{"a:$pbkdf2-sha256$i=999$" SALT64 "$" SALT64 "\n",
	 "t:1: password hash: pbkdf2 iterations out of range (1000-2000000)"},
	{"a:$pbkdf2-sha256$i=$" SALT64 "$" SALT64 "\n",
	 "t:1: password hash: bad pbkdf2 parameters (expected i=N)"},
	/* options */
	{"a:" H_SCRYPT ":o:frm=x.example\n",
	 "t:1: unknown option 'frm' (expected from, to, hourly, daily or disabled)"},
	{"a:" H_SCRYPT ":o:hourly\n", "t:1: option 'hourly' is not KEY=VALUE"},
	{"a:" H_SCRYPT ":o:hourly=1,,daily=2\n", "t:1: option '' is not KEY=VALUE"},
	{"a:" H_SCRYPT ":o:hourly=1,hourly=2\n", "t:1: option hourly given twice"},
	{"a:" H_SCRYPT ":o:hourly=0\n",
	 "t:1: hourly: not a number from 1 to 1000000000: '0'"},
	{"a:" H_SCRYPT ":o:daily=1000000001\n",
	 "t:1: daily: not a number from 1 to 1000000000: '1000000001'"},
	{"a:" H_SCRYPT ":o:daily=12a\n",
	 "t:1: daily: not a number from 1 to 1000000000: '12a'"},
	{"a:" H_SCRYPT ":o:daily=-1\n",
	 "t:1: daily: not a number from 1 to 1000000000: '-1'"},
	{"a:" H_SCRYPT ":o:disabled=yes\n", "t:1: disabled: expected 0 or 1: 'yes'"},
	{"a:" H_SCRYPT ":o:from=\n", "t:1: empty from list"},
	{"a:" H_SCRYPT ":o:from=a.example|\n", "t:1: empty item in from list"},
	{"a:" H_SCRYPT ":o:from=a..example\n", "t:1: bad from item 'a..example'"},
	{"a:" H_SCRYPT ":o:from=-a.example\n", "t:1: bad from item '-a.example'"},
	{"a:" H_SCRYPT ":o:from=a-.example\n", "t:1: bad from item 'a-.example'"},
	{"a:" H_SCRYPT ":o:from=a.example.\n", "t:1: bad from item 'a.example.'"},
	{"a:" H_SCRYPT ":o:from=x@\n", "t:1: bad from item 'x@'"},
	{"a:" H_SCRYPT ":o:from=@x.example\n", "t:1: bad from item '@x.example'"},
	{"a:" H_SCRYPT ":o:from=x@y@x.example\n", "t:1: bad from item 'x@y@x.example'"},
	{"a:" H_SCRYPT ":o:from=.x@x.example\n", "t:1: bad from item '.x@x.example'"},
	{"a:" H_SCRYPT ":o:from=*.example\n", "t:1: bad from item '*.example'"},
	{"a:" H_SCRYPT ":o:to=x@dest.example\n", "t:1: bad to item 'x@dest.example'"},
	{"a:" H_SCRYPT ":o:to=[127.0.0.1]\n", "t:1: bad to item '[127.0.0.1]'"},
};

static void test_parse_bad(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
		const struct bad_case *bc = &bad_cases[i];
		size_t len = strlen(bc->text);
		char err[ERRLEN] = "";
		struct cred_store *t = (struct cred_store *)1;
		int rc = cred_store_parse("t", bc->text, len, &t, err, sizeof err);
		if (rc != -EINVAL || strcmp(err, bc->err) != 0)
			fail_msg("case %zu: rc %d, err '%s', want '%s'", i, rc, err,
			         bc->err);
		assert_null(t);
		assert_null(strstr(err, SALT64));
		assert_null(strstr(err, "NVuj"));
	}

	/* a line too long, counted without its newline */
	char *big = malloc(CRED_LINE_MAX + 16);
	assert_non_null(big);
	memset(big, '#', CRED_LINE_MAX);
	strcpy(big + CRED_LINE_MAX, "\n");
	struct cred_store *t = parse_ok(big);
	cred_store_free(t);
	strcpy(big + CRED_LINE_MAX, "#\n");
	char err[ERRLEN];
	assert_int_equal(cred_store_parse("t", big, strlen(big), &t, err,
	                                   sizeof err), -EINVAL);
	assert_string_equal(err, "t:1: line longer than 4096 characters");
	free(big);

	/* the largest accepted parameters do parse */
	t = parse_ok("a:" SC("ln=16,r=8,p=2") "\nb:" SC("ln=10,r=32,p=16") "\n"
	             "c:$pbkdf2-sha256$i=2000000$" SALT64 "$" SALT64 "\n");
	cred_store_free(t);
}

/* A NUL byte, which a C string table cannot hold. */
static void test_parse_nul(void **state)
{
	(void)state;
	static const char text[] = "ok:" H_SCRYPT "\nb\0c:" H_SCRYPT "\n";
	char err[ERRLEN];
	struct cred_store *t;
	assert_int_equal(cred_store_parse("f", text, sizeof text - 1, &t, err,
	                                   sizeof err), -EINVAL);
	assert_string_equal(err, "f:2: NUL byte in line");
}

static void test_load_errors(void **state)
{
	(void)state;
	char err[ERRLEN];
	struct cred_store *t = (struct cred_store *)1;
	assert_int_equal(cred_store_load("/nonexistent/creds", &t, err,
	                                  sizeof err), -ENOENT);
	assert_null(t);
	assert_string_equal(err, "cannot read /nonexistent/creds: No such file "
	                    "or directory");
	assert_int_equal(cred_store_load("/", &t, err, sizeof err), -EINVAL);
	assert_string_equal(err, "cannot read /: not a regular file");
}

/* ---- hashing and verifying ----------------------------------------------- */

/* "$scrypt$ln=10,r=8,p=1$" + 22 + "$" + 43 base64 characters. */
static void check_hash_shape(const char *h, const char *prefix)
{
	size_t pl = strlen(prefix);
	assert_int_equal(strncmp(h, prefix, pl), 0);
	assert_int_equal(strlen(h), pl + 22 + 1 + 43);
	assert_int_equal(h[pl + 22], '$');
	for (size_t i = pl; h[i]; i++)
		if (i != pl + 22)
			assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
			                       "qrstuvwxyz0123456789+/", h[i]));
}

static struct cred_store *one(const char *name, const char *hash,
                               const char *opts)
{
	char text[1024];
	snprintf(text, sizeof text, "%s:%s::%s\n", name, hash, opts);
	return parse_ok(text);
}

static void test_hash_verify(void **state)
{
	(void)state;
	char h1[CRED_HASH_MAX], h2[CRED_HASH_MAX];
	const struct cred *c;

	/* cheap scrypt: round trip, random salt */
	assert_int_equal(cred_hash("s3cret", 6, &cheap, h1, sizeof h1), 0);
	assert_int_equal(cred_hash("s3cret", 6, &cheap, h2, sizeof h2), 0);
	check_hash_shape(h1, "$scrypt$ln=10,r=8,p=1$");
	assert_string_not_equal(h1, h2);
	assert_int_not_equal(memcmp(h1, h2, 45), 0);  /* the salts differ */
	struct cred_store *t = one("alice", h1, "");
	assert_int_equal(cred_store_verify(t, "alice", "s3cret", 6, &c),
	                 CRED_OK);
	assert_ptr_equal(c, cred_store_find(t, "alice"));
	assert_int_equal(cred_store_verify(t, "ALICE", "s3cret", 6, NULL),
	                 CRED_OK);
	assert_int_equal(cred_store_verify(t, "alice", "s3cref", 6, &c),
	                 CRED_BAD_PASSWORD);
	assert_ptr_equal(c, cred_store_find(t, "alice"));
	assert_int_equal(cred_store_verify(t, "alice", "s3cret", 5, NULL),
	                 CRED_BAD_PASSWORD);
	assert_int_equal(cred_store_verify(t, "alice", "S3CRET", 6, NULL),
	                 CRED_BAD_PASSWORD);
	cred_store_free(t);

	/* PBKDF2 when asked */
	struct cred_kdf pb = cred_kdf_pbkdf2;
	pb.iter = 1000;
	assert_int_equal(cred_hash("pw", 2, &pb, h1, sizeof h1), 0);
	check_hash_shape(h1, "$pbkdf2-sha256$i=1000$");
	t = one("bob", h1, "");
	assert_int_equal(cred_store_verify(t, "bob", "pw", 2, NULL), CRED_OK);
	assert_int_equal(cred_store_verify(t, "bob", "pW", 2, NULL),
	                 CRED_BAD_PASSWORD);
	cred_store_free(t);

	/* hashes made elsewhere (Python's hashlib) */
	t = parse_ok("s:" H_SCRYPT "\np:" H_PBKDF2 "\n");
	assert_int_equal(cred_store_verify(t, "s", PW_SCRYPT, strlen(PW_SCRYPT),
	                                    NULL), CRED_OK);
	assert_int_equal(cred_store_verify(t, "p", PW_PBKDF2, strlen(PW_PBKDF2),
	                                    NULL), CRED_OK);
	assert_int_equal(cred_store_verify(t, "s", PW_PBKDF2, strlen(PW_PBKDF2),
	                                    NULL), CRED_BAD_PASSWORD);
	assert_int_equal(cred_store_verify(t, "p", PW_SCRYPT, strlen(PW_SCRYPT),
	                                    NULL), CRED_BAD_PASSWORD);
	cred_store_free(t);

	/* refused inputs */
	assert_int_equal(cred_hash("", 0, &cheap, h1, sizeof h1), -EINVAL);
	assert_int_equal(cred_hash("a\0b", 3, &cheap, h1, sizeof h1),
	                 -EINVAL);
	static char longpw[CRED_PASSWORD_MAX + 1];
	memset(longpw, 'x', sizeof longpw);
	assert_int_equal(cred_hash(longpw, sizeof longpw, &cheap, h1,
	                                 sizeof h1), -EINVAL);
	assert_int_equal(cred_hash(longpw, CRED_PASSWORD_MAX, &cheap,
	                                 h1, sizeof h1), 0);
	assert_int_equal(cred_hash("pw", 2, &cheap, h1, 40), -ENOBUFS);
	struct cred_kdf bad = {.alg = CRED_SCRYPT, .ln = 40, .r = 8,
	                             .p = 1};
	assert_int_equal(cred_hash("pw", 2, &bad, h1, sizeof h1), -EINVAL);
	bad.ln = 15;
	bad.p = 1000;
	assert_int_equal(cred_hash("pw", 2, &bad, h1, sizeof h1), -EINVAL);
	bad.alg = 99;
	assert_int_equal(cred_hash("pw", 2, &bad, h1, sizeof h1), -EINVAL);
}

/* The default cost: the format, and how long one verification takes. */
static void test_default_cost(void **state)
{
	(void)state;
	char h[CRED_HASH_MAX];
	struct timespec a, b;
	assert_int_equal(cred_hash("pw", 2, NULL, h, sizeof h), 0);
	check_hash_shape(h, "$scrypt$ln=15,r=8,p=1$");
	struct cred_store *t = one("d", h, "");
	clock_gettime(CLOCK_MONOTONIC, &a);
	assert_int_equal(cred_store_verify(t, "d", "pw", 2, NULL), CRED_OK);
	clock_gettime(CLOCK_MONOTONIC, &b);
	print_message("scrypt ln=15 r=8 p=1 verify: %.0f ms\n",
	              (double)(b.tv_sec - a.tv_sec) * 1e3 +
	              (double)(b.tv_nsec - a.tv_nsec) / 1e6);
	cred_store_free(t);
}

static void test_verify_outcomes(void **state)
{
	(void)state;
	char h[CRED_HASH_MAX];
	const struct cred *c = (const struct cred *)1;
	assert_int_equal(cred_hash("right", 5, &cheap, h, sizeof h), 0);
	char text[1024];
	snprintf(text, sizeof text, "on:%s\noff:%s::disabled=1\n", h, h);
	struct cred_store *t = parse_ok(text);
	uint64_t k = cred_store_kdf_count(t);
	assert_int_equal(k, 0);

	/* Every outcome costs exactly one KDF run. */
	static const struct {
		const char *name, *pw;
		size_t pwlen;
		enum cred_result want;
		bool known;
	} cases[] = {
		{"on", "right", 5, CRED_OK, true},
		{"on", "wrong", 5, CRED_BAD_PASSWORD, true},
		{"off", "right", 5, CRED_DISABLED, true},
		/* a wrong guess does not learn that the credential is disabled */
		{"off", "wrong", 5, CRED_BAD_PASSWORD, true},
		{"nobody", "right", 5, CRED_UNKNOWN, false},
		{"nobody", "", 0, CRED_UNKNOWN, false},
		{"not a name", "right", 5, CRED_UNKNOWN, false},
		{"", "right", 5, CRED_UNKNOWN, false},
		{NULL, "right", 5, CRED_UNKNOWN, false},
		{"on", "", 0, CRED_BAD_PASSWORD, true},
		{"on", NULL, 0, CRED_BAD_PASSWORD, true},
		{"on", "right\0x", 7, CRED_BAD_PASSWORD, true},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		enum cred_result r = cred_store_verify(
			t, cases[i].name, cases[i].pw, cases[i].pwlen, &c);
		if (r != cases[i].want)
			fail_msg("case %zu: %s, want %s", i, cred_result_names[r],
			         cred_result_names[cases[i].want]);
		assert_int_equal(cred_store_kdf_count(t), ++k);
		if (cases[i].known)
			assert_ptr_equal(c, cred_store_find(t, cases[i].name));
		else
			assert_null(c);
	}
	/* too long: still one run */
	static char longpw[CRED_PASSWORD_MAX + 1];
	memset(longpw, 'r', sizeof longpw);
	assert_int_equal(cred_store_verify(t, "on", longpw, sizeof longpw, NULL),
	                 CRED_BAD_PASSWORD);
	assert_int_equal(cred_store_kdf_count(t), ++k);
	cred_store_free(t);

	/* an empty table: unknown, at the default cost */
	t = cred_store_new();
	assert_non_null(t);
	assert_int_equal(cred_store_verify(t, "x", "y", 1, &c),
	                 CRED_UNKNOWN);
	assert_null(c);
	assert_int_equal(cred_store_kdf_count(t), 1);
	/* references: the last free releases it */
	assert_ptr_equal(cred_store_ref(t), t);
	cred_store_free(t);
	assert_int_equal(cred_store_count(t), 0);
	cred_store_free(t);
	cred_store_free(NULL);

	assert_string_equal(cred_result_names[CRED_OK], "ok");
	assert_string_equal(cred_result_names[CRED_ERROR], "error");
}

/* Unknown names cost what the costliest known one does, whatever order
 * and mix of hash parameters the table holds (issue 8 §3: PBKDF2 imported
 * beside scrypt). Counted in KDF work (cred_store_kdf_work), not time. */
#define Z22 "AAAAAAAAAAAAAAAAAAAAAA"       /* 16 zero bytes, base64 */
#define Z43 Z22 "AAAAAAAAAAAAAAAAAAAAA"    /* 32 */
#define Z86 Z43 Z43                        /* 64 */
static void test_mixed_cost(void **state)
{
	(void)state;
	/* The cost model itself. */
	static const struct {
		struct cred_kdf k;
		size_t dklen;
		uint64_t cost;
	} costs[] = {
		{{.alg = CRED_SCRYPT, .ln = 15, .r = 8, .p = 1}, 32, 524288},
		{{.alg = CRED_SCRYPT, .ln = 10, .r = 8, .p = 1}, 32, 16384},
		{{.alg = CRED_SCRYPT, .ln = 10, .r = 1, .p = 2}, 64, 4096},
		{{.alg = CRED_PBKDF2_SHA256, .iter = 600000}, 32, 600000},
		{{.alg = CRED_PBKDF2_SHA256, .iter = 1000}, 32, 1000},
		{{.alg = CRED_PBKDF2_SHA256, .iter = 1000}, 33, 2000},
		{{.alg = CRED_PBKDF2_SHA256, .iter = 1000}, 64, 2000},
	};
	for (size_t i = 0; i < sizeof costs / sizeof *costs; i++)
		if (cred_kdf_cost(&costs[i].k, costs[i].dklen) != costs[i].cost)
			fail_msg("cost case %zu: %llu, want %llu", i,
			         (unsigned long long)cred_kdf_cost(&costs[i].k,
			                                           costs[i].dklen),
			         (unsigned long long)costs[i].cost);

	/* Tables: the cost of checking each name (unknown ones too). */
	static const struct {
		const char *text;
		const char *name[4];
		uint64_t work[4];
	} tables[] = {
		/* the first by name is the cheap PBKDF2: before the fix an
		 * unknown name cost 1000, a known scrypt one 16384 */
		{"aaa:$pbkdf2-sha256$i=1000$" Z22 "$" Z43 "\n"
		 "zzz:" H_SCRYPT "\n",
		 {"aaa", "zzz", "nobody", "a"}, {1000, 16384, 16384, 16384}},
		/* PBKDF2 the costlier one, last by name */
		{"aaa:$scrypt$ln=10,r=1,p=1$" Z22 "$" Z43 "\n"
		 "zzz:$pbkdf2-sha256$i=5000$" Z22 "$" Z43 "\n",
		 {"aaa", "zzz", "mmm", "zzzz"}, {2048, 5000, 5000, 5000}},
		/* the same iterations, a longer hash: twice the work */
		{"p32:$pbkdf2-sha256$i=3000$" Z22 "$" Z43 "\n"
		 "p64:$pbkdf2-sha256$i=3000$" Z22 "$" Z86 "\n",
		 {"p32", "p64", "x", NULL}, {3000, 6000, 6000, 0}},
		/* a disabled credential's hash counts too */
		{"on:" H_PBKDF2 "\n"
		 "off:$pbkdf2-sha256$i=9000$" Z22 "$" Z43 "::disabled=1\n",
		 {"on", "off", "x", NULL}, {1000, 9000, 9000, 0}},
	};
	for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
		struct cred_store *t = parse_ok(tables[i].text);
		for (size_t j = 0; j < 4 && tables[i].name[j]; j++) {
			uint64_t w = cred_store_kdf_work(t);
			uint64_t n = cred_store_kdf_count(t);
			cred_store_verify(t, tables[i].name[j], "guess", 5, NULL);
			assert_int_equal(cred_store_kdf_count(t), n + 1);
			if (cred_store_kdf_work(t) - w != tables[i].work[j])
				fail_msg("table %zu, %s: work %llu, want %llu", i,
				         tables[i].name[j],
				         (unsigned long long)(cred_store_kdf_work(t) - w),
				         (unsigned long long)tables[i].work[j]);
		}
		cred_store_free(t);
	}

	/* Edits move the dummy: deleting the costliest, or rehashing. */
	struct cred_store *t = parse_ok(
		"aaa:$pbkdf2-sha256$i=1000$" Z22 "$" Z43 "\n"
		"bbb:$pbkdf2-sha256$i=4000$" Z22 "$" Z43 "\n"
		"ccc:$pbkdf2-sha256$i=2000$" Z22 "$" Z43 "\n");
	uint64_t w = cred_store_kdf_work(t);
	cred_store_verify(t, "nobody", "guess", 5, NULL);
	assert_int_equal(cred_store_kdf_work(t) - w, 4000);
	assert_int_equal(cred_store_del(t, "bbb"), 0);
	w = cred_store_kdf_work(t);
	cred_store_verify(t, "nobody", "guess", 5, NULL);
	assert_int_equal(cred_store_kdf_work(t) - w, 2000);
	assert_int_equal(cred_store_set_hash(t, "aaa", H_SCRYPT), 0);
	w = cred_store_kdf_work(t);
	cred_store_verify(t, "nobody", "guess", 5, NULL);
	assert_int_equal(cred_store_kdf_work(t) - w, 16384);
	struct cred_spec sp = {.name = "ddd",
	                       .hash = "$pbkdf2-sha256$i=20000$" Z22 "$" Z43};
	char err[ERRLEN];
	assert_int_equal(cred_store_add(t, &sp, err, sizeof err), 0);
	w = cred_store_kdf_work(t);
	cred_store_verify(t, "nobody", "guess", 5, NULL);
	assert_int_equal(cred_store_kdf_work(t) - w, 20000);
	cred_store_free(t);

	/* An empty table: the default scrypt. */
	t = cred_store_new();
	cred_store_verify(t, "nobody", "guess", 5, NULL);
	assert_int_equal(cred_store_kdf_work(t),
	                 cred_kdf_cost(&cred_kdf_scrypt, 32));
	cred_store_free(t);
}

static void test_generate(void **state)
{
	(void)state;
	char a[CRED_GEN_LEN + 1], b[CRED_GEN_LEN + 1];
	assert_int_equal(cred_generate(a, sizeof a), 0);
	assert_int_equal(cred_generate(b, sizeof b), 0);
	assert_int_equal(strlen(a), 24);
	assert_string_not_equal(a, b);
	assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
	                           "qrstuvwxyz0123456789-_"), 24);
	assert_int_equal(cred_generate(a, CRED_GEN_LEN), -ENOBUFS);
}

/* ---- sender and recipient restrictions ----------------------------------- */

static void test_domain_matching(void **state)
{
	(void)state;
	struct cred_store *t = parse_ok(
		"r:" H_SCRYPT "::from=example.com|boss@Other.org,"
		"to=dest.example|Example.NET\n"
		"free:" H_SCRYPT "\n");
	const struct cred *r = cred_store_find(t, "r");
	const struct cred *f = cred_store_find(t, "free");
	static const struct {
		const char *addr;
		bool from, to;
	} cases[] = {
		{"x@example.com", true, false},
		{"X@EXAMPLE.COM", true, false},
		{"x@Example.Com", true, false},
		{"x@evil-example.com", false, false},
		{"x@example.com.evil.org", false, false},
		{"x@sub.example.com", false, false},
		{"x@xexample.com", false, false},
		{"x@example.co", false, false},
		{"x@example.comm", false, false},
		{"example.com", false, false},
		{"x@", false, false},
		{"", false, false},
		{"x@[127.0.0.1]", false, false},
		{"\"x@example.com\"@evil.org", false, false},
		{"\"boss@other.org\"@evil.org", false, false},
		{"boss@other.org", true, false},
		{"BOSS@OTHER.ORG", true, false},
		{"boss@other.org.evil.org", false, false},
		{"xboss@other.org", false, false},
		{"x@other.org", false, false},
		{"a@dest.example", false, true},
		{"a@DEST.example", false, true},
		{"a@example.net", false, true},
		{"a@evil-dest.example", false, false},
		{"a@dest.example.evil.org", false, false},
		{"a@sub.dest.example", false, false},
		{"a@example.net.evil.org", false, false},
		{"a@dest.example@evil.org", false, false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const char *a = cases[i].addr;
		if (cred_sender_ok(r, a) != cases[i].from)
			fail_msg("sender_ok(%s) != %d", a, cases[i].from);
		if (cred_rcpt_ok(r, a) != cases[i].to)
			fail_msg("rcpt_ok(%s) != %d", a, cases[i].to);
		/* no lists: anything goes */
		assert_true(cred_sender_ok(f, a));
		assert_true(cred_rcpt_ok(f, a));
	}
	assert_false(cred_sender_ok(r, NULL));
	assert_false(cred_rcpt_ok(r, NULL));
	cred_store_free(t);
}

/* ---- editing, formatting, saving ------------------------------------------- */

static void test_format_roundtrip(void **state)
{
	(void)state;
	static const char in[] =
		"# header comment\n"
		"\n"
		"b:" H_SCRYPT ":own:daily=5,disabled=1,from=x.example,hourly=2\r\n"
		"   # indented\n"
		"a:" H_PBKDF2 "\n"
		"c:" H_SCRYPT "::disabled=0,to=d.example|e.example\n";
	static const char want[] =
		"# header comment\n"
		"\n"
		"b:" H_SCRYPT ":own:from=x.example,hourly=2,daily=5,disabled=1\n"
		"   # indented\n"
		"a:" H_PBKDF2 "::\n"
		"c:" H_SCRYPT "::to=d.example|e.example\n";
	struct cred_store *t = parse_ok(in);
	char *out = format(t);
	assert_string_equal(out, want);
	cred_store_free(t);
	t = parse_ok(out);
	char *again = format(t);
	assert_string_equal(again, want);
	free(again);
	free(out);

	/* edits: comments stay where they were, new lines go last */
	char h[CRED_HASH_MAX], err[ERRLEN];
	assert_int_equal(cred_hash("new", 3, &cheap, h, sizeof h), 0);
	struct cred_spec s = {.name = "New.One", .hash = h, .owner = "acme",
	                            .from = "n.example,me@m.example|o.example",
	                            .to = "t.example", .hourly = 7, .daily = 70};
	assert_int_equal(cred_store_add(t, &s, err, sizeof err), 0);
	assert_int_equal(cred_store_del(t, "B"), 0);
	assert_int_equal(cred_store_del(t, "b"), -ENOENT);
	assert_int_equal(cred_store_set_disabled(t, "a", true), 0);
	assert_int_equal(cred_store_set_disabled(t, "zz", true), -ENOENT);
	assert_int_equal(cred_store_set_hash(t, "c", H_PBKDF2), 0);
	assert_int_equal(cred_store_set_hash(t, "c", "$scrypt$bogus"), -EINVAL);
	assert_int_equal(cred_store_set_hash(t, "zz", H_PBKDF2), -ENOENT);
	char expect[2048];
	snprintf(expect, sizeof expect,
	         "# header comment\n"
	         "\n"
	         "   # indented\n"
	         "a:" H_PBKDF2 "::disabled=1\n"
	         "c:" H_PBKDF2 "::to=d.example|e.example\n"
	         "New.One:%s:acme:from=n.example|me@m.example|o.example,"
	         "to=t.example,hourly=7,daily=70\n", h);
	out = format(t);
	assert_string_equal(out, expect);
	assert_int_equal(cred_store_count(t), 3);
	assert_int_equal(cred_store_verify(t, "new.one", "new", 3, NULL),
	                 CRED_OK);
	assert_int_equal(cred_store_verify(t, "c", PW_PBKDF2, strlen(PW_PBKDF2),
	                                    NULL), CRED_OK);
	cred_store_free(t);
	t = parse_ok(out);
	assert_int_equal(cred_store_count(t), 3);
	assert_true(cred_sender_ok(cred_store_find(t, "new.one"),
	                                 "ME@m.example"));
	free(out);

	/* delete everything: only the comments remain */
	assert_int_equal(cred_store_del(t, "a"), 0);
	assert_int_equal(cred_store_del(t, "c"), 0);
	assert_int_equal(cred_store_del(t, "new.one"), 0);
	assert_int_equal(cred_store_count(t), 0);
	out = format(t);
	assert_string_equal(out, "# header comment\n\n   # indented\n");
	free(out);
	assert_int_equal(cred_store_verify(t, "a", "x", 1, NULL),
	                 CRED_UNKNOWN);
	cred_store_free(t);
}

static void test_add_errors(void **state)
{
	(void)state;
	char err[ERRLEN];
	struct cred_store *t = parse_ok("alice:" H_SCRYPT "\n");
	static char longlist[CRED_LINE_MAX + 100];
	for (size_t i = 0; i + 10 < sizeof longlist; i += 10)
		memcpy(longlist + i, "ab.example", 10), longlist[i + 9] = ',';
	longlist[sizeof longlist - 20] = '\0';
	longlist[sizeof longlist - 21] = 'e';
	static const struct {
		struct cred_spec s;
		int rc;
		const char *err;
	} cases[] = {
		{{.name = "ALICE", .hash = H_SCRYPT}, -EEXIST, "user 'ALICE' exists"},
		{{.name = "a b", .hash = H_SCRYPT}, -EINVAL,
		 "bad name 'a b' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
		{{.name = "a:b", .hash = H_SCRYPT}, -EINVAL,
		 "bad name 'a:b' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
		{{.name = "", .hash = H_SCRYPT}, -EINVAL,
		 "bad name '' (1-64 of A-Z a-z 0-9 . _ @ + -)"},
		{{.name = "b", .hash = "plain"}, -EINVAL,
		 "password hash: not a password hash ($scrypt$... or "
		 "$pbkdf2-sha256$...)"},
		{{.name = "b", .hash = H_SCRYPT, .owner = "o w"}, -EINVAL,
		 "bad owner 'o w' (0-64 of A-Z a-z 0-9 . _ @ + -)"},
		{{.name = "b", .hash = H_SCRYPT, .from = "x.example,,y.example"},
		 -EINVAL, "empty item in from list"},
		{{.name = "b", .hash = H_SCRYPT, .from = "x.example y.example"},
		 -EINVAL, "bad from item 'x.example y.example'"},
		{{.name = "b", .hash = H_SCRYPT, .to = "me@x.example"}, -EINVAL,
		 "bad to item 'me@x.example'"},
		{{.name = "b", .hash = H_SCRYPT, .hourly = 1000000001}, -EINVAL,
		 "quota above 1000000000"},
		{{.name = "b", .hash = H_SCRYPT, .from = longlist}, -EINVAL,
		 "the credential's line would be longer than 4096 characters"},
		{{.name = NULL, .hash = H_SCRYPT}, -EINVAL, "no name given"},
		{{.name = "b"}, -EINVAL, "no password hash given"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int rc = cred_store_add(t, &cases[i].s, err, sizeof err);
		if (rc != cases[i].rc || strcmp(err, cases[i].err) != 0)
			fail_msg("case %zu: rc %d '%s', want %d '%s'", i, rc, err,
			         cases[i].rc, cases[i].err);
	}
	assert_int_equal(cred_store_count(t), 1);
	char *out = format(t);
	assert_string_equal(out, "alice:" H_SCRYPT "::\n");
	free(out);

	/* the dry run: the same checks, nothing added; the hash optional */
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		bool nohash = strcmp(cases[i].err, "no password hash given") == 0;
		int rc = cred_store_check(t, &cases[i].s, err, sizeof err);
		if (nohash ? rc != 0 : rc != cases[i].rc ||
		             strcmp(err, cases[i].err) != 0)
			fail_msg("check %zu: rc %d '%s'", i, rc, err);
	}
	struct cred_spec ok = {.name = "bob", .from = "x.example"};
	assert_int_equal(cred_store_check(t, &ok, err, sizeof err), 0);
	ok.hash = "bad";
	assert_int_equal(cred_store_check(t, &ok, err, sizeof err), -EINVAL);
	assert_int_equal(cred_store_count(t), 1);
	out = format(t);
	assert_string_equal(out, "alice:" H_SCRYPT "::\n");
	free(out);
	cred_store_free(t);
}

static void test_save_load(void **state)
{
	(void)state;
	char dir[] = "/tmp/relayd-tcred-XXXXXX", path[256], err[ERRLEN];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/credentials", dir);

	struct cred_store *t = parse_ok("# kept\nalice:" H_SCRYPT ":o:hourly=3\n");
	if (cred_store_save(t, path, err, sizeof err) != 0)
		fail_msg("%s", err);
	cred_store_free(t);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* a group-readable file stays group-readable, never world-readable */
	assert_int_equal(chmod(path, 0644), 0);
	t = NULL;
	if (cred_store_load(path, &t, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_int_equal(cred_store_count(t), 1);
	assert_int_equal(cred_store_set_disabled(t, "alice", true), 0);
	if (cred_store_save(t, path, err, sizeof err) != 0)
		fail_msg("%s", err);
	cred_store_free(t);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	if (cred_store_load(path, &t, err, sizeof err) != 0)
		fail_msg("%s", err);
	char *out = format(t);
	assert_string_equal(out, "# kept\nalice:" H_SCRYPT ":o:hourly=3,"
	                    "disabled=1\n");
	free(out);

	/* no temporary file is left behind */
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	size_t n = 0;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			assert_string_equal(e->d_name, "credentials"), n++;
	closedir(d);
	assert_int_equal(n, 1);

	/* a directory that does not exist: an error naming it */
	char bad[300];
	snprintf(bad, sizeof bad, "%s/nodir/credentials", dir);
	assert_int_equal(cred_store_save(t, bad, err, sizeof err), -ENOENT);
	char want[400];
	snprintf(want, sizeof want, "cannot create a temporary file in %s/nodir: "
	         "No such file or directory", dir);
	assert_string_equal(err, want);
	cred_store_free(t);

	/* a relative path saves in the current directory */
	char cwd[256];
	assert_non_null(getcwd(cwd, sizeof cwd));
	assert_int_equal(chdir(dir), 0);
	t = parse_ok("rel:" H_SCRYPT "\n");
	if (cred_store_save(t, "creds2", err, sizeof err) != 0)
		fail_msg("%s", err);
	cred_store_free(t);
	assert_int_equal(unlink("creds2"), 0);
	assert_int_equal(chdir(cwd), 0);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_good),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_parse_nul),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_hash_verify),
		cmocka_unit_test(test_default_cost),
		cmocka_unit_test(test_verify_outcomes),
		cmocka_unit_test(test_mixed_cost),
		cmocka_unit_test(test_generate),
		cmocka_unit_test(test_domain_matching),
		cmocka_unit_test(test_format_roundtrip),
		cmocka_unit_test(test_add_errors),
		cmocka_unit_test(test_save_load),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
