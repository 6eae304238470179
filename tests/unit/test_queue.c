/*
 * tests/unit/test_queue.c - Unit tests of queue/: the id generator, the
 * index record codec (round trips and hostile input), and the daemon side
 * on a real spool in a temporary directory (commit, group commit, map
 * full, recovery) read back through the read-only API. Every test that
 * opens a loop ends with uv_loop_close() == 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "common/log.h"
#include "queue/queue_int.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- ids -------------------------------------------------------------- */

static void test_id_valid(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		bool ok;
	} cases[] = {
		{"0000000000000000", true},
		{"0123456789ABCDEF", true},
		{"GHJKMNPQRSTVWXYZ", true},
		{"ZZZZZZZZZZZZZZZZ", true},
		{"", false},
		{"000000000000000", false},      /* 15 */
		{"00000000000000000", false},    /* 17 */
		{"000000000000000a", false},     /* lower case */
		{"000000000000000I", false},     /* not in Crockford's alphabet */
		{"000000000000000L", false},
		{"000000000000000O", false},
		{"000000000000000U", false},
		{"0000000/00000000", false},
		{"../0000000000000", false},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		if (queue_id_valid(cases[i].s) != cases[i].ok)
			fail_msg("queue_id_valid(\"%s\") != %d", cases[i].s, cases[i].ok);
	}
	assert_false(queue_id_valid(NULL));
}

static void test_id_exact(void **state)
{
	(void)state;
	struct queue_idgen g;
	char id[QUEUE_ID_SIZE];
	queue_idgen_init(&g, "");
	queue_idgen_next(&g, 1, id);
	assert_string_equal(id, "0000000000010000");
	queue_idgen_next(&g, 1, id);
	assert_string_equal(id, "0000000000010001");
	queue_idgen_next(&g, 33, id);
	assert_string_equal(id, "0000000000110000");
	/* 2024-01-01T00:00:00Z in microseconds. */
	queue_idgen_next(&g, UINT64_C(1704067200000000), id);
	assert_true(queue_id_valid(id));
	assert_int_equal(id[QUEUE_ID_LEN], '\0');
	assert_string_equal(id + 12, "0000");
}

/* Clock readings fed to a generator; every id must be valid, strictly
 * greater than the previous one (as a string) and than the floor. */
static const struct {
	const char *name;
	const char *floor;
	uint64_t now[8];
	size_t n;
	const char *last;       /* expected last id, or NULL */
} clock_cases[] = {
	{"advancing", "", {10, 20, 30}, 3, "00000000000Y0000"},
	{"standing still", "", {5, 5, 5, 5}, 4, "0000000000050003"},
	{"going back", "", {1000, 999, 10, 0}, 4, "0000000000Z80003"},
	{"floor across restart", "0000000000Z80005", {900, 1000, 1001}, 3,
	 "0000000000Z90000"},
	{"floor in the future", "Y000000000000000", {1, 2}, 2, "Y000000000000002"},
	{"sequence overflow", "000000000000ZZZZ", {0, 0}, 2, "0000000000010001"},
	{"bad floor ignored", "not-an-id", {7}, 1, "0000000000070000"},
};

static void test_id_clock(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(clock_cases); i++) {
		struct queue_idgen g;
		char prev[QUEUE_ID_SIZE], id[QUEUE_ID_SIZE];
		queue_idgen_init(&g, clock_cases[i].floor);
		snprintf(prev, sizeof prev, "%s",
		         queue_id_valid(clock_cases[i].floor) ? clock_cases[i].floor : "");
		for (size_t j = 0; j < clock_cases[i].n; j++) {
			queue_idgen_next(&g, clock_cases[i].now[j], id);
			if (!queue_id_valid(id) || strcmp(id, prev) <= 0)
				fail_msg("%s: step %zu: %s after %s", clock_cases[i].name,
				         j, id, prev);
			memcpy(prev, id, sizeof id);
		}
		if (clock_cases[i].last && strcmp(id, clock_cases[i].last) != 0)
			fail_msg("%s: last %s, want %s", clock_cases[i].name, id,
			         clock_cases[i].last);
	}
}

/* String order equals numeric order over the whole range, including a
 * restart seeded with the last id. */
static void test_id_sortable(void **state)
{
	(void)state;
	struct queue_idgen g;
	char prev[QUEUE_ID_SIZE] = "", id[QUEUE_ID_SIZE];
	uint64_t now = 1;
	queue_idgen_init(&g, NULL);
	srand(42);
	for (int i = 0; i < 100000; i++) {
		/* Mostly forward, sometimes still, sometimes back, sometimes
		 * big jumps across many digit positions. */
		switch (rand() % 4) {
		case 0: now += (uint64_t)rand(); break;
		case 1: now += (uint64_t)rand() << 8; break;
		case 2: now -= now > 50 ? 50 : 0; break;
		default: break;
		}
		if (i == 50000) {
			struct queue_idgen g2;
			queue_idgen_init(&g2, prev);    /* "restart" */
			g = g2;
			now = 1;                        /* clock reset */
		}
		queue_idgen_next(&g, now, id);
		assert_true(queue_id_valid(id));
		if (strcmp(id, prev) <= 0)
			fail_msg("step %d: %s after %s", i, id, prev);
		memcpy(prev, id, sizeof id);
	}
}

/* ---- codec ------------------------------------------------------------ */

static const char *const QID = "01HX0000000A0000";

static struct queue_rcpt rcpt_plain[] = {
	{"a@example.org", NULL, 0, QUEUE_RCPT_PENDING, 0, 0, NULL, NULL, NULL,
	 0, NULL, 0},
};
/* A TLV list (tag 7, 2 bytes; tag 300, 0 bytes): a later release's
 * fields, kept verbatim. */
static uint8_t ext_tlv[] = {7, 2, 'h', 'i', 0xac, 0x02, 0};
static struct queue_rcpt rcpt_full[] = {
	{"b@example.org", "rfc822;b@example.org", QUEUE_NOTIFY_SUCCESS |
	 QUEUE_NOTIFY_FAILURE, QUEUE_RCPT_DEFERRED, 3, 1700000000,
	 "451 4.7.1 try again later", "mx:mx1.example.org,mx2.example.org",
	 "mx1.example.org[192.0.2.1]:25", 1699999000, ext_tlv, sizeof ext_tlv},
	{"c@example.net", NULL, QUEUE_NOTIFY_NEVER, QUEUE_RCPT_SENT, 1, 0,
	 "250 2.0.0 ok", "smarthost:smtp.example.com:465", NULL, INT64_MIN,
	 NULL, 0},
	{"d@example.com", "utf-8;d@example.com", QUEUE_NOTIFY_DELAY,
	 QUEUE_RCPT_BOUNCED, UINT32_MAX, -1, NULL, "", "", INT64_MAX, NULL, 0},
};
static struct queue_rcpt rcpt_utf8[] = {
	{"j\xc3\xb6rg@b\xc3\xbc" "cher.example", NULL, 0, 0, 0, 0, NULL, NULL,
	 NULL, 0, NULL, 0},
	{"\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8",
	 "utf-8;\xe7\x94\xa8\xe6\x88\xb7@x", 0, 0, 0, 0, "550 5.1.1 \xe2\x9c\x97",
	 "mx:\xc3\xa9.example", NULL, 1, NULL, 0},
};
static struct queue_rcpt rcpt_empty_strings[] = {
	{"", "", 0, 0, 0, 0, "", "", "", 0, NULL, 0},
};

static const struct {
	const char *name;
	struct queue_msg m;
} codec_cases[] = {
	{"null sender, one rcpt", {.arrival = 1700000000, .size = 1234,
	  .sender = "", .nrcpt = 1, .rcpt = rcpt_plain}},
	{"all fields", {.arrival = 1700000001, .size = 99, .state = QUEUE_MSG_HOLD,
	  .flags = QUEUE_F_SMTPUTF8 | QUEUE_F_RET_HDRS, .sender = "s@example.org",
	  .envid = "QQ+2B314", .nrcpt = 3, .rcpt = rcpt_full,
	  .arrival_ms = 999, .dkim_sig = "DKIM-Signature: v=1; a=rsa-sha256;\r\n"
	  "\tb=abc\r\n", .ext = ext_tlv, .extlen = sizeof ext_tlv}},
	{"utf-8 addresses", {.arrival = 1, .sender = "\xc3\xa9@\xc3\xa9.fr",
	  .flags = QUEUE_F_SMTPUTF8, .nrcpt = 2, .rcpt = rcpt_utf8}},
	{"empty strings are not NULL", {.sender = "", .envid = "", .nrcpt = 1,
	  .dkim_sig = "", .rcpt = rcpt_empty_strings}},
	{"extremes", {.arrival = INT64_MIN, .size = UINT64_MAX, .flags = 0xff,
	  .sender = "x", .nrcpt = 0, .rcpt = NULL}},
	{"max arrival", {.arrival = INT64_MAX, .sender = "y", .nrcpt = 0}},
};

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool blob_eq(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static void assert_msg_equal(const char *name, const struct queue_msg *a,
                             const struct queue_msg *b)
{
	if (strcmp(a->qid, b->qid) || a->arrival != b->arrival ||
	    a->arrival_ms != b->arrival_ms ||
	    a->size != b->size || a->state != b->state || a->flags != b->flags ||
	    !str_eq(a->sender, b->sender) || !str_eq(a->envid, b->envid) ||
	    !str_eq(a->dkim_sig, b->dkim_sig) ||
	    !blob_eq(a->ext, a->extlen, b->ext, b->extlen) ||
	    a->nrcpt != b->nrcpt)
		fail_msg("%s: message fields differ", name);
	for (size_t i = 0; i < a->nrcpt; i++) {
		const struct queue_rcpt *x = &a->rcpt[i], *y = &b->rcpt[i];
		if (!str_eq(x->addr, y->addr) || !str_eq(x->orcpt, y->orcpt) ||
		    x->notify != y->notify || x->state != y->state ||
		    x->attempts != y->attempts ||
		    x->next_attempt != y->next_attempt ||
		    !str_eq(x->last_reply, y->last_reply) ||
		    !str_eq(x->dest, y->dest) || !str_eq(x->mx, y->mx) ||
		    x->last_try != y->last_try ||
		    !blob_eq(x->ext, x->extlen, y->ext, y->extlen))
			fail_msg("%s: recipient %zu differs", name, i);
	}
}

static void test_codec_roundtrip(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(codec_cases); i++) {
		struct queue_msg m = codec_cases[i].m, *d = NULL;
		uint8_t *enc;
		size_t n;
		memcpy(m.qid, QID, QUEUE_ID_SIZE);
		assert_int_equal(queue_msg_encode(&m, &enc, &n), 0);
		assert_int_equal(enc[0], 2);
		assert_int_equal(queue_msg_decode(QID, enc, n, &d), 0);
		assert_msg_equal(codec_cases[i].name, &m, d);
		queue_msg_free(d);
		free(enc);
	}
	queue_msg_free(NULL);
}

static struct queue_msg *many_rcpts(size_t n, size_t addrlen)
{
	struct queue_msg *m = calloc(1, sizeof *m);
	assert_non_null(m);
	memcpy(m->qid, QID, QUEUE_ID_SIZE);
	m->arrival = 1700000000;
	m->sender = strdup("bulk@example.org");
	m->rcpt = calloc(n, sizeof *m->rcpt);
	assert_non_null(m->rcpt);
	m->nrcpt = n;
	for (size_t i = 0; i < n; i++) {
		char *a = malloc(addrlen + 32);
		assert_non_null(a);
		int k = snprintf(a, addrlen + 32, "r%zu@", i);
		memset(a + k, 'x', addrlen);
		a[k + (int)addrlen] = '\0';
		m->rcpt[i].addr = a;
		m->rcpt[i].orcpt = i % 2 ? strdup("rfc822;o@example.org") : NULL;
		m->rcpt[i].attempts = (uint32_t)i;
		m->rcpt[i].next_attempt = (int64_t)i * 1000;
		m->rcpt[i].state = (uint8_t)(i % 4);
	}
	return m;
}

static void test_codec_many_rcpts(void **state)
{
	(void)state;
	struct queue_msg *m = many_rcpts(5000, 10), *d;
	uint8_t *enc;
	size_t n;
	assert_int_equal(queue_msg_encode(m, &enc, &n), 0);
	assert_int_equal(queue_msg_decode(QID, enc, n, &d), 0);
	assert_msg_equal("5000 recipients", m, d);
	queue_msg_free(d);
	queue_msg_free(m);
	free(enc);
}

static void test_codec_encode_rejects(void **state)
{
	(void)state;
	struct queue_rcpt r = {0};
	struct queue_msg m = {.sender = NULL};
	uint8_t *enc;
	size_t n;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
	m.sender = "";
	m.nrcpt = 1;
	m.rcpt = &r;        /* addr NULL */
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
}

static void test_codec_truncated(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(codec_cases); i++) {
		struct queue_msg m = codec_cases[i].m, *d;
		uint8_t *enc, *cut;
		size_t n;
		memcpy(m.qid, QID, QUEUE_ID_SIZE);
		assert_int_equal(queue_msg_encode(&m, &enc, &n), 0);
		/* Each prefix in its own allocation, so ASan sees an overread. */
		for (size_t k = 0; k < n; k++) {
			cut = malloc(k ? k : 1);
			memcpy(cut, enc, k);
			if (queue_msg_decode(QID, cut, k, &d) != -EINVAL)
				fail_msg("%s: prefix of %zu/%zu bytes accepted",
				         codec_cases[i].name, k, n);
			free(cut);
		}
		/* One trailing byte too many. */
		cut = malloc(n + 1);
		memcpy(cut, enc, n);
		cut[n] = 0;
		assert_int_equal(queue_msg_decode(QID, cut, n + 1, &d), -EINVAL);
		free(cut);
		free(enc);
	}
}

/* Hand-made records, each wrong in one way. */
static const struct {
	const char *name;
	uint8_t b[32];
	size_t n;
} corrupt_cases[] = {
	/* version, arrival, size, state, flags, sender "", envid NULL, nrcpt 0 */
	{"valid baseline", {1, 0, 0, 0, 0, 0, 0, 0}, 8},
	{"empty", {0}, 0},
	{"version 0", {0, 0, 0, 0, 0, 0, 0, 0}, 8},
	{"version 3", {3, 0, 0, 0, 0, 0, 0, 0}, 8},
	{"version 255", {255, 0, 0, 0, 0, 0, 0, 0}, 8},
	{"message state 2", {1, 0, 0, 2, 0, 0, 0, 0}, 8},
	{"sender runs past end", {1, 0, 0, 0, 0, 5, 'a', 0, 0}, 9},
	{"NUL inside sender", {1, 0, 0, 0, 0, 2, 'a', 0, 0, 0}, 10},
	{"envid length past end", {1, 0, 0, 0, 0, 0, 9, 'a', 0}, 9},
	{"overlong varint", {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	  0xff, 0xff, 0x01, 0, 0, 0, 0, 0, 0}, 18},
	{"varint 10th byte too big", {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	  0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0, 0}, 17},
	{"unterminated varint", {1, 0x80, 0x80}, 3},
	{"huge nrcpt", {1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, 12},
	{"nrcpt 1, no rcpt", {1, 0, 0, 0, 0, 0, 0, 1}, 8},
	{"rcpt state 4", {1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0}, 15},
	{"attempts > 2^32", {1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
	  0x80, 0x80, 0x80, 0x80, 0x10, 0, 0}, 19},
	{"rcpt ok but trailing", {1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
	  7}, 16},
};

static void test_codec_corrupt(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(corrupt_cases); i++) {
		struct queue_msg *d = NULL;
		uint8_t *p = malloc(corrupt_cases[i].n ? corrupt_cases[i].n : 1);
		memcpy(p, corrupt_cases[i].b, corrupt_cases[i].n);
		int r = queue_msg_decode(QID, p, corrupt_cases[i].n, &d);
		int want = i == 0 ? 0 : -EINVAL;
		if (r != want)
			fail_msg("%s: decode = %d, want %d", corrupt_cases[i].name, r,
			         want);
		queue_msg_free(d);
		free(p);
	}
	/* A valid record under a key that is not a queue id. */
	struct queue_msg *d;
	assert_int_equal(queue_msg_decode("nope", corrupt_cases[0].b, 8, &d),
	                 -EINVAL);
}

/* Random corruption of valid records: decode either fails cleanly or
 * yields something that encodes again. Meaningful under ASan/UBSan. */
static void test_codec_mutations(void **state)
{
	(void)state;
	srand(7);
	for (size_t i = 0; i < ARRAY_LEN(codec_cases); i++) {
		struct queue_msg m = codec_cases[i].m;
		uint8_t *enc;
		size_t n;
		memcpy(m.qid, QID, QUEUE_ID_SIZE);
		assert_int_equal(queue_msg_encode(&m, &enc, &n), 0);
		for (int it = 0; it < 3000; it++) {
			uint8_t *p = malloc(n);
			memcpy(p, enc, n);
			int flips = 1 + rand() % 3;
			for (int f = 0; f < flips; f++)
				p[(size_t)rand() % n] = (uint8_t)rand();
			size_t len = rand() % 4 ? n : (size_t)rand() % (n + 1);
			struct queue_msg *d = NULL;
			int r = queue_msg_decode(QID, p, len, &d);
			assert_true(r == 0 || r == -EINVAL);
			if (r == 0) {
				uint8_t *e2;
				size_t n2;
				assert_int_equal(queue_msg_encode(d, &e2, &n2), 0);
				free(e2);
				queue_msg_free(d);
			}
			free(p);
		}
		free(enc);
	}
}


/* Format 1 (what relayd up to bb1fcad wrote) decodes to the same
 * envelope, with the format-2 fields empty; what it encodes to now is
 * format 2 and decodes the same again. */
static void test_codec_v1(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(codec_cases); i++) {
		struct queue_msg m = codec_cases[i].m, *d = NULL, *d2 = NULL;
		struct queue_rcpt rc[4];
		uint8_t *enc, *enc2;
		size_t n, n2;
		memcpy(m.qid, QID, QUEUE_ID_SIZE);
		assert_int_equal(queue_msg_encode_v1(&m, &enc, &n), 0);
		assert_int_equal(enc[0], 1);
		assert_int_equal(queue_msg_decode(QID, enc, n, &d), 0);
		/* What format 1 keeps. */
		assert_true(m.nrcpt <= ARRAY_LEN(rc));
		m.arrival_ms = 0;
		m.dkim_sig = NULL;
		m.ext = NULL;
		m.extlen = 0;
		for (size_t k = 0; k < m.nrcpt; k++) {
			rc[k] = m.rcpt[k];
			rc[k].dest = rc[k].mx = NULL;
			rc[k].last_try = 0;
			rc[k].ext = NULL;
			rc[k].extlen = 0;
		}
		m.rcpt = m.nrcpt ? rc : NULL;
		assert_msg_equal(codec_cases[i].name, &m, d);
		assert_int_equal(queue_msg_encode(d, &enc2, &n2), 0);
		assert_int_equal(enc2[0], 2);
		assert_int_equal(queue_msg_decode(QID, enc2, n2, &d2), 0);
		assert_msg_equal(codec_cases[i].name, d, d2);
		queue_msg_free(d);
		queue_msg_free(d2);
		free(enc);
		free(enc2);
	}
}

/* The format-2 fields' bounds: the longest allowed round-trips, one byte
 * more is refused by encode and, hand-made, by decode. */
static void test_codec_v2_bounds(void **state)
{
	(void)state;
	static char dest[QUEUE_DEST_MAX + 2], mx[QUEUE_MX_MAX + 2];
	static char sig[QUEUE_DKIM_SIG_MAX + 2];
	static uint8_t ext[QUEUE_EXT_MAX + 8];
	memset(dest, 'd', QUEUE_DEST_MAX);
	memset(mx, 'm', QUEUE_MX_MAX);
	memset(sig, 's', QUEUE_DKIM_SIG_MAX);
	/* One TLV of QUEUE_EXT_MAX bytes in all: tag 1, a 3-byte length. */
	size_t body = QUEUE_EXT_MAX - 4;
	ext[0] = 1;
	ext[1] = (uint8_t)(0x80 | (body & 0x7f));
	ext[2] = (uint8_t)(0x80 | ((body >> 7) & 0x7f));
	ext[3] = (uint8_t)(body >> 14);
	struct queue_rcpt r = {.addr = "a@b", .dest = dest, .mx = mx,
	                       .ext = ext, .extlen = QUEUE_EXT_MAX};
	struct queue_msg m = {.sender = "s@t", .dkim_sig = sig, .nrcpt = 1,
	                      .rcpt = &r, .ext = ext, .extlen = QUEUE_EXT_MAX,
	                      .arrival_ms = 999};
	memcpy(m.qid, QID, QUEUE_ID_SIZE);
	uint8_t *enc;
	size_t n;
	struct queue_msg *d;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), 0);
	assert_int_equal(queue_msg_decode(QID, enc, n, &d), 0);
	assert_msg_equal("at the bounds", &m, d);
	queue_msg_free(d);
	free(enc);

	static const struct {
		const char *name;
		char *field;
		size_t len;
	} over[] = {
		{"dest", dest, QUEUE_DEST_MAX + 1},
		{"mx", mx, QUEUE_MX_MAX + 1},
		{"dkim_sig", sig, QUEUE_DKIM_SIG_MAX + 1},
	};
	for (size_t i = 0; i < ARRAY_LEN(over); i++) {
		over[i].field[over[i].len - 1] = 'x';
		over[i].field[over[i].len] = '\0';
		if (queue_msg_encode(&m, &enc, &n) != -EINVAL)
			fail_msg("%s one byte too long: encoded", over[i].name);
		over[i].field[over[i].len - 1] = '\0';
	}
	m.arrival_ms = 1000;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
	m.arrival_ms = 0;
	m.extlen = QUEUE_EXT_MAX + 1;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
	/* A blob that is not a TLV list (a length past its end). */
	static uint8_t bad_tlv[] = {1, 5, 'x'};
	m.ext = bad_tlv;
	m.extlen = sizeof bad_tlv;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
	m.ext = NULL;
	m.extlen = 0;
	r.ext = bad_tlv;
	r.extlen = sizeof bad_tlv;
	assert_int_equal(queue_msg_encode(&m, &enc, &n), -EINVAL);
}

/* Hand-made format-2 records, each wrong in one way. Baseline: version,
 * arrival 0, ms 0, size 0, state, flags, sender "", envid NULL, dkim NULL,
 * nrcpt 0, ext "". */
static const struct {
	const char *name;
	uint8_t b[40];
	size_t n;
	int want;
} corrupt_v2[] = {
	{"valid baseline", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 11, 0},
	{"no ext length", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 10, -EINVAL},
	{"ms 1000", {2, 0, 0xe8, 0x07, 0, 0, 0, 0, 0, 0, 0, 0}, 12, -EINVAL},
	{"ms 999", {2, 0, 0xe7, 0x07, 0, 0, 0, 0, 0, 0, 0, 0}, 12, 0},
	{"dkim past end", {2, 0, 0, 0, 0, 0, 0, 0, 9, 'a', 0, 0}, 12, -EINVAL},
	{"ext TLV ok", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 7, 1, 'x'}, 14, 0},
	{"ext TLV length past blob", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 7, 2,
	  'x'}, 14, -EINVAL},
	{"ext past end", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 7, 1, 'x'}, 14,
	 -EINVAL},
	{"ext TLV tag unterminated", {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x80},
	 12, -EINVAL},
	/* one recipient: addr "", orcpt, notify, state, attempts, next,
	 * reply, dest, mx, last_try, ext */
	{"rcpt valid", {2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
	  0, 0, 0, 0}, 22, 0},
	{"rcpt without ext", {2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
	  0, 0, 0, 0, 0}, 21, -EINVAL},
	{"rcpt v1-shaped in v2", {2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
	  0, 0, 0}, 18, -EINVAL},
	{"rcpt mx past end", {2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
	  0, 0, 30, 0, 0, 0}, 22, -EINVAL},
};

static void test_codec_v2_corrupt(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(corrupt_v2); i++) {
		struct queue_msg *d = NULL;
		uint8_t *p = malloc(corrupt_v2[i].n);
		memcpy(p, corrupt_v2[i].b, corrupt_v2[i].n);
		int r = queue_msg_decode(QID, p, corrupt_v2[i].n, &d);
		if (r != corrupt_v2[i].want)
			fail_msg("%s: decode = %d, want %d", corrupt_v2[i].name, r,
			         corrupt_v2[i].want);
		queue_msg_free(d);
		free(p);
	}
}

/* queue_msg_apply_rcpts: table of change sets against one message. */
static void test_apply_rcpts(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		struct queue_rcpt_change ch[3];
		size_t n;
		int want;
	} cases[] = {
		{"none", {{0}}, 0, 0},
		{"one", {{.index = 1, .state = QUEUE_RCPT_SENT, .attempts = 1,
		  .last_reply = "250 ok", .dest = "mx:m", .mx = "m[192.0.2.9]:25",
		  .last_try = 77}}, 1, 0},
		{"two, clearing a reply", {{.index = 0, .state = QUEUE_RCPT_DEFERRED,
		  .attempts = 4, .next_attempt = 900},
		  {.index = 2, .state = QUEUE_RCPT_BOUNCED, .last_reply = "550 no"}},
		  2, 0},
		{"index out of range", {{.index = 0, .state = QUEUE_RCPT_SENT},
		  {.index = 3, .state = QUEUE_RCPT_SENT}}, 2, -EINVAL},
		{"state 4", {{.index = 0, .state = 4}}, 1, -EINVAL},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct queue_msg m0 = codec_cases[1].m;     /* three recipients */
		memcpy(m0.qid, QID, QUEUE_ID_SIZE);
		struct queue_msg *m = queue_msg_dup(&m0), *ref = queue_msg_dup(&m0);
		assert_non_null(m);
		assert_non_null(ref);
		int r = queue_msg_apply_rcpts(m, cases[i].ch, cases[i].n);
		if (r != cases[i].want)
			fail_msg("%s: %d, want %d", cases[i].name, r, cases[i].want);
		if (r == 0) {
			for (size_t k = 0; k < cases[i].n; k++) {
				const struct queue_rcpt_change *c = &cases[i].ch[k];
				struct queue_rcpt *x = &ref->rcpt[c->index];
				free(x->last_reply);
				free(x->dest);
				free(x->mx);
				x->state = c->state;
				x->attempts = c->attempts;
				x->next_attempt = c->next_attempt;
				x->last_try = c->last_try;
				x->last_reply = c->last_reply ? strdup(c->last_reply) : NULL;
				x->dest = c->dest ? strdup(c->dest) : NULL;
				x->mx = c->mx ? strdup(c->mx) : NULL;
			}
		}
		/* Unchanged on failure; exactly the changes on success (the
		 * other recipients and every message field as they were). */
		assert_msg_equal(cases[i].name, ref, m);
		queue_msg_free(m);
		queue_msg_free(ref);
	}
}

static void test_state_names(void **state)
{
	(void)state;
	assert_string_equal(queue_rcpt_state_names[QUEUE_RCPT_PENDING], "pending");
	assert_string_equal(queue_rcpt_state_names[QUEUE_RCPT_DEFERRED], "deferred");
	assert_string_equal(queue_rcpt_state_names[QUEUE_RCPT_SENT], "sent");
	assert_string_equal(queue_rcpt_state_names[QUEUE_RCPT_BOUNCED], "bounced");
	assert_string_equal(queue_msg_state_names[QUEUE_MSG_ACTIVE], "active");
	assert_string_equal(queue_msg_state_names[QUEUE_MSG_HOLD], "hold");
}

static void test_body_path(void **state)
{
	(void)state;
	char p[64];
	assert_int_equal(queue_body_path("/var/spool/relayd", QID, p, sizeof p), 0);
	assert_string_equal(p, "/var/spool/relayd/msg/01HX0000000A0000");
	assert_int_equal(queue_body_path("/s", "../etc/passwd", p, sizeof p),
	                 -EINVAL);
	assert_int_equal(queue_body_path("/s", QID, p, 10), -ENAMETOOLONG);
}

/* ---- daemon side -------------------------------------------------------- */

struct spool {
	char dir[64];
	uv_loop_t loop;
	struct queue *q;
};

struct result {
	int calls;
	int status;
};

static void commit_cb(void *arg, int status)
{
	struct result *r = arg;
	r->calls++;
	r->status = status;
}

static void closed_cb(void *arg)
{
	*(bool *)arg = true;
}

static int rm_cb(const char *dir, const char *name)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	return unlink(p);
}

static void rm_tree(const char *dir)
{
	static const char *const sub[] = {"tmp", "msg", "index"};
	for (size_t i = 0; i < ARRAY_LEN(sub); i++) {
		char p[256];
		snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)))
			if (e->d_name[0] != '.')
				rm_cb(p, e->d_name);
		closedir(d);
		rmdir(p);
	}
	rmdir(dir);
}

static size_t count_dir(const char *dir, const char *sub)
{
	char p[1024];
	size_t n = 0;
	snprintf(p, sizeof p, "%s/%s", dir, sub);
	DIR *d = opendir(p);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)))
		/* ".p…" files are the opener's pool of empty bodies-to-be. */
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
		     strncmp(e->d_name, ".p", 2) != 0;
	closedir(d);
	return n;
}

/* Aborted bodies are removed by the writer thread: wait for it (bounded). */
static size_t wait_dir_count(const char *dir, const char *sub, size_t want)
{
	size_t n = count_dir(dir, sub);
	for (int i = 0; i < 5000 && n != want; i++) {
		usleep(1000);
		n = count_dir(dir, sub);
	}
	return n;
}

static void spool_open(struct spool *s, const struct queue_opts *tmpl)
{
	struct queue_opts o = *tmpl;
	o.spool_dir = s->dir;
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(queue_open(&s->loop, &o, &s->q), 0);
}

static void spool_close(struct spool *s)
{
	bool closed = false;
	queue_close(s->q, closed_cb, &closed);
	assert_false(closed);   /* only from the close callback */
	assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
	assert_true(closed);
	assert_int_equal(uv_loop_close(&s->loop), 0);
	s->q = NULL;
}

static void spool_setup(struct spool *s, const struct queue_opts *o)
{
	snprintf(s->dir, sizeof s->dir, "/tmp/relayd-tq-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	spool_open(s, o);
}

static void run_until(struct spool *s, const int *calls, int want)
{
	while (*calls < want)
		uv_run(&s->loop, UV_RUN_ONCE);
}

/* Body bytes: deterministic, so the stored file can be compared. */
static uint8_t body_byte(size_t i)
{
	static const char text[] = "Subject: x\r\n\r\nhello world\r\n";
	size_t n = sizeof text - 1;
	return (uint8_t)(text[i % n] + (i / n) % 3);
}

/* Opens, fills (in uneven chunks, some larger than the body buffer) and
 * returns a body of n bytes. */
static struct queue_body *make_body(struct spool *s, const char *qid, size_t n)
{
	static const size_t chunks[] = {1, 7, 1000, 65535, 65536, 200000, 3};
	struct queue_body *b;
	uint8_t *tmp = malloc(200000);
	assert_int_equal(queue_body_open(s->q, qid, &b), 0);
	for (size_t off = 0, c = 0; off < n; c++) {
		size_t k = chunks[c % ARRAY_LEN(chunks)];
		if (k > n - off)
			k = n - off;
		for (size_t i = 0; i < k; i++)
			tmp[i] = body_byte(off + i);
		assert_int_equal(queue_body_write(b, tmp, k), 0);
		off += k;
	}
	free(tmp);
	assert_int_equal(queue_body_size(b), n);
	return b;
}

static void check_body_file(const char *dir, const char *qid, size_t n)
{
	char p[1024];
	struct stat st;
	assert_int_equal(queue_body_path(dir, qid, p, sizeof p), 0);
	FILE *f = fopen(p, "rb");
	assert_non_null(f);
	assert_int_equal(fstat(fileno(f), &st), 0);
	assert_int_equal((size_t)st.st_size, n);
	assert_int_equal(st.st_mode & 0777, 0600);
	for (size_t i = 0; i < n; i++)
		if (fgetc(f) != body_byte(i))
			fail_msg("%s: byte %zu differs", qid, i);
	fclose(f);
}

/* Schedule entries, straight from LMDB (the queue's own test may look). */
static size_t count_sched(const char *dir, const char *qid)
{
	char p[1024];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	snprintf(p, sizeof p, "%s/index", dir);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, QUEUE_MAXDBS), 0);
	assert_int_equal(mdb_env_open(env, p, MDB_RDONLY | MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, QUEUE_DB_SCHED, 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	int rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		assert_int_equal(k.mv_size, QUEUE_SCHED_KEY_LEN);
		assert_int_equal(v.mv_size, 0);
		if (!qid || memcmp((char *)k.mv_data + 8, qid, QUEUE_ID_LEN) == 0)
			n++;
	}
	assert_int_equal(rc, MDB_NOTFOUND);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return n;
}

/* LMDB forbids opening one environment twice in a process (closing the
 * second handle drops the first one's locks), so while the daemon side is
 * open, the read side is exercised from a child process, as relayctl
 * would: the record must be there, complete, while the daemon runs. */
static void ro_check_in_child(const char *dir, const struct queue_msg *want)
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct queue_ro *ro;
		struct queue_msg *got;
		int ok = queue_ro_open(dir, &ro) == 0 &&
		         queue_ro_get(ro, want->qid, &got) == 0;
		if (ok) {
			ok = got->size == want->size && got->nrcpt == want->nrcpt &&
			     strcmp(got->sender, want->sender) == 0;
			queue_msg_free(got);
		}
		_exit(ok ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

static struct queue_msg env_of(const char *qid, int64_t arrival, uint8_t st)
{
	struct queue_msg m = {.arrival = arrival, .state = st,
	                      .sender = "from@example.org", .envid = "E1",
	                      .nrcpt = ARRAY_LEN(rcpt_full), .rcpt = rcpt_full};
	memcpy(m.qid, qid, QUEUE_ID_SIZE);
	return m;
}

/* Commits one message of each size and sync mode; checks the stored body,
 * the record (through the read side, while the daemon runs), the schedule
 * entry, the stats and that tmp/ is empty. */
static const struct {
	const char *name;
	enum queue_sync sync;
	size_t size;
	uint8_t state;
	size_t sched;
} commit_cases[] = {
	{"syncfs, empty body", QUEUE_SYNC_SYNCFS, 0, QUEUE_MSG_ACTIVE, 1},
	{"syncfs, 300k body", QUEUE_SYNC_SYNCFS, 300000, QUEUE_MSG_ACTIVE, 1},
	{"fsync, 70k body", QUEUE_SYNC_FSYNC, 70000, QUEUE_MSG_ACTIVE, 1},
	{"fsync, hold", QUEUE_SYNC_FSYNC, 100, QUEUE_MSG_HOLD, 0},
};

static void test_commit(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(commit_cases); i++) {
		struct queue_opts o = {.map_size = 16 << 20,
		                       .sync = commit_cases[i].sync};
		struct spool s;
		struct result res = {0};
		char qid[QUEUE_ID_SIZE];
		spool_setup(&s, &o);

		queue_new_id(s.q, qid);
		assert_true(queue_id_valid(qid));
		struct queue_body *b = make_body(&s, qid, commit_cases[i].size);
		struct queue_msg m = env_of(qid, 1700000000, commit_cases[i].state);
		assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), 0);
		assert_int_equal(res.calls, 0);     /* never from inside */
		run_until(&s, &res.calls, 1);
		if (res.status != 0)
			fail_msg("%s: status %d", commit_cases[i].name, res.status);

		check_body_file(s.dir, qid, commit_cases[i].size);
		assert_int_equal(count_dir(s.dir, "tmp"), 0);
		m.size = commit_cases[i].size;      /* taken from the body */
		m.flags |= QUEUE_F_7BIT;            /* so is this: ASCII bodies */
		ro_check_in_child(s.dir, &m);

		struct queue_stats st;
		queue_get_stats(s.q, &st);
		assert_int_equal(st.committed, 1);
		assert_int_equal(st.batches, 1);
		assert_int_equal(st.failed, 0);
		/* syncfs: LMDB pages + one syncfs; fsync: fdatasync + dir + 2. */
		assert_int_equal(st.syncs,
		                 commit_cases[i].sync == QUEUE_SYNC_SYNCFS ? 2 : 4);
		spool_close(&s);

		/* With the daemon stopped: the whole record, and the schedule. */
		struct queue_ro *ro;
		struct queue_msg *got;
		assert_int_equal(count_sched(s.dir, qid), commit_cases[i].sched);
		assert_int_equal(queue_ro_open(s.dir, &ro), 0);
		assert_int_equal(queue_ro_get(ro, qid, &got), 0);
		assert_msg_equal(commit_cases[i].name, &m, got);
		queue_msg_free(got);
		assert_int_equal(queue_ro_get(ro, "0000000000000000", &got), -ENOENT);
		assert_int_equal(queue_ro_get(ro, "bad", &got), -EINVAL);
		queue_ro_close(ro);
		rm_tree(s.dir);
	}
}

/* QUEUE_F_7BIT is the queue's finding, from every byte written, whatever
 * the caller's flags say (issue 8 §10). */
static const struct {
	const char *name;
	const char *chunks[4];     /* written in turn; NULL ends */
	uint8_t flags_in;          /* what the caller passes */
	uint8_t flags_out;         /* what the record holds */
} bit7_cases[] = {
	{"ascii body", {"Subject: x\r\n\r\nhi\r\n"}, 0, QUEUE_F_7BIT},
	{"ascii, declared 8BITMIME", {"Subject: x\r\n\r\nhi\r\n"},
	 QUEUE_F_8BITMIME, QUEUE_F_8BITMIME | QUEUE_F_7BIT},
	{"utf-8 in the body, caller claims 7BIT",
	 {"Subject: x\r\n\r\n", "caf\xc3\xa9\r\n"},
	 QUEUE_F_8BITMIME | QUEUE_F_7BIT, QUEUE_F_8BITMIME},
	{"one 8-bit byte in the last chunk",
	 {"Subject: x\r\n\r\n", "a\r\n", "\x80"}, 0, 0},
	{"0x7f and controls are 7-bit", {"\x7f\x01\t\r\n"}, 0, QUEUE_F_7BIT},
	{"empty body", {NULL}, QUEUE_F_SMTPUTF8, QUEUE_F_SMTPUTF8 | QUEUE_F_7BIT},
};

static void test_commit_7bit(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(bit7_cases); i++) {
		struct queue_opts o = {.map_size = 16 << 20,
		                       .sync = QUEUE_SYNC_FSYNC};
		struct spool s;
		struct result res = {0};
		char qid[QUEUE_ID_SIZE];
		spool_setup(&s, &o);
		queue_new_id(s.q, qid);
		struct queue_body *b;
		assert_int_equal(queue_body_open(s.q, qid, &b), 0);
		size_t size = 0;
		for (size_t k = 0; k < 4 && bit7_cases[i].chunks[k]; k++) {
			const char *c = bit7_cases[i].chunks[k];
			assert_int_equal(queue_body_write(b, c, strlen(c)), 0);
			size += strlen(c);
		}
		bool want8 = !(bit7_cases[i].flags_out & QUEUE_F_7BIT);
		if (queue_body_8bit(b) != want8)
			fail_msg("%s: queue_body_8bit %d", bit7_cases[i].name,
			         !want8);
		struct queue_msg m = env_of(qid, 1700000000, QUEUE_MSG_ACTIVE);
		m.flags = bit7_cases[i].flags_in;
		assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), 0);
		run_until(&s, &res.calls, 1);
		assert_int_equal(res.status, 0);
		spool_close(&s);

		struct queue_ro *ro;
		struct queue_msg *got;
		assert_int_equal(queue_ro_open(s.dir, &ro), 0);
		assert_int_equal(queue_ro_get(ro, qid, &got), 0);
		if (got->flags != bit7_cases[i].flags_out || got->size != size)
			fail_msg("%s: flags 0x%02x size %" PRIu64 ", want 0x%02x %zu",
			         bit7_cases[i].name, got->flags, got->size,
			         bit7_cases[i].flags_out, size);
		queue_msg_free(got);
		queue_ro_close(ro);
		rm_tree(s.dir);
	}
}

struct foreach_state {
	char prev[QUEUE_ID_SIZE];
	size_t n, stop_at;
};

static int foreach_cb(void *arg, const struct queue_msg *m)
{
	struct foreach_state *fs = arg;
	assert_true(strcmp(m->qid, fs->prev) > 0);
	memcpy(fs->prev, m->qid, QUEUE_ID_SIZE);
	fs->n++;
	return fs->n == fs->stop_at;
}

/* Many commits handed over in one loop turn: the writer must group them
 * (far fewer batches than messages), and every callback runs once. */
static void test_group_commit(void **state)
{
	(void)state;
	enum { N = 64 };
	static const enum queue_sync modes[] = {QUEUE_SYNC_SYNCFS, QUEUE_SYNC_FSYNC};
	for (size_t mi = 0; mi < ARRAY_LEN(modes); mi++) {
		struct queue_opts o = {.map_size = 16 << 20, .sync = modes[mi]};
		struct spool s;
		struct result res[N] = {{0}};
		struct queue_body *b[N];
		char qid[N][QUEUE_ID_SIZE];
		int calls = 0;
		spool_setup(&s, &o);

		for (int i = 0; i < N; i++) {
			queue_new_id(s.q, qid[i]);
			b[i] = make_body(&s, qid[i], 1000 + (size_t)i);
		}
		for (int i = 0; i < N; i++) {
			struct queue_msg m = env_of(qid[i], 1700000000 + i,
			                            QUEUE_MSG_ACTIVE);
			assert_int_equal(queue_commit(s.q, b[i], &m, commit_cb, &res[i]), 0);
		}
		while (calls < N) {
			uv_run(&s.loop, UV_RUN_ONCE);
			calls = 0;
			for (int i = 0; i < N; i++)
				calls += res[i].calls;
		}
		for (int i = 0; i < N; i++) {
			assert_int_equal(res[i].calls, 1);
			assert_int_equal(res[i].status, 0);
			check_body_file(s.dir, qid[i], 1000 + (size_t)i);
		}
		struct queue_stats st;
		queue_get_stats(s.q, &st);
		assert_int_equal(st.committed, N);
		if (st.batches >= N / 4)
			fail_msg("%zu: %llu batches for %d messages", mi,
			         (unsigned long long)st.batches, N);
		spool_close(&s);

		assert_int_equal(count_sched(s.dir, NULL), N);
		struct queue_ro *ro;
		struct foreach_state fs = {.prev = ""};
		assert_int_equal(queue_ro_open(s.dir, &ro), 0);
		assert_int_equal(queue_ro_foreach(ro, foreach_cb, &fs), 0);
		assert_int_equal(fs.n, N);
		fs = (struct foreach_state){.prev = "", .stop_at = 5};
		assert_int_equal(queue_ro_foreach(ro, foreach_cb, &fs), 0);
		assert_int_equal(fs.n, 5);
		queue_ro_close(ro);
		rm_tree(s.dir);
	}
}

/* An envelope that does not fit the map: -ENOSPC, nothing left behind,
 * and the next (small) commit works. */
static void test_map_full(void **state)
{
	(void)state;
	struct queue_opts o = {.map_size = 1 << 20, .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	struct result res = {0};
	char qid[QUEUE_ID_SIZE];
	spool_setup(&s, &o);

	queue_new_id(s.q, qid);
	struct queue_msg *big = many_rcpts(4000, 500);    /* ~2 MB record */
	memcpy(big->qid, qid, QUEUE_ID_SIZE);
	struct queue_body *b = make_body(&s, qid, 5000);
	assert_int_equal(queue_commit(s.q, b, big, commit_cb, &res), 0);
	queue_msg_free(big);
	run_until(&s, &res.calls, 1);
	assert_int_equal(res.status, -ENOSPC);
	assert_int_equal(count_dir(s.dir, "msg"), 0);
	assert_int_equal(count_dir(s.dir, "tmp"), 0);

	res = (struct result){0};
	queue_new_id(s.q, qid);
	b = make_body(&s, qid, 10);
	struct queue_msg m = env_of(qid, 1, QUEUE_MSG_ACTIVE);
	assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), 0);
	run_until(&s, &res.calls, 1);
	assert_int_equal(res.status, 0);

	struct queue_stats st;
	queue_get_stats(s.q, &st);
	assert_int_equal(st.committed, 1);
	assert_int_equal(st.failed, 1);
	spool_close(&s);
	rm_tree(s.dir);
}

/* A second commit under an id already in msg/ fails (rename NOREPLACE)
 * and leaves the first message as it was. */
static void test_duplicate_id(void **state)
{
	(void)state;
	struct queue_opts o = {.map_size = 16 << 20, .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	struct result res = {0};
	char qid[QUEUE_ID_SIZE];
	spool_setup(&s, &o);
	queue_new_id(s.q, qid);
	struct queue_body *b = make_body(&s, qid, 100);
	struct queue_msg m = env_of(qid, 1, QUEUE_MSG_ACTIVE);
	assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), 0);
	run_until(&s, &res.calls, 1);
	assert_int_equal(res.status, 0);
	res = (struct result){0};
	b = make_body(&s, qid, 7);
	assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), 0);
	run_until(&s, &res.calls, 1);
	assert_int_equal(res.status, -EEXIST);
	check_body_file(s.dir, qid, 100);
	assert_int_equal(wait_dir_count(s.dir, "msg", 1), 1);
	spool_close(&s);
	rm_tree(s.dir);
}

/* Refused commits and aborted bodies leave nothing behind. */
static void test_refused(void **state)
{
	(void)state;
	struct queue_opts o = {.map_size = 16 << 20, .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	struct result res = {0};
	char qid[QUEUE_ID_SIZE], other[QUEUE_ID_SIZE];
	struct queue_body *b;
	spool_setup(&s, &o);

	assert_int_equal(queue_body_open(s.q, "../../etc/x", &b), -EINVAL);

	queue_new_id(s.q, qid);
	queue_new_id(s.q, other);
	b = make_body(&s, qid, 100);
	/* A body being received has no name where O_TMPFILE works, else one. */
	assert_true(count_dir(s.dir, "msg") <= 1);
	queue_body_abort(b);
	queue_body_abort(NULL);
	assert_int_equal(wait_dir_count(s.dir, "msg", 0), 0);

	b = make_body(&s, qid, 100);
	struct queue_msg m = env_of(other, 1, QUEUE_MSG_ACTIVE);   /* wrong qid */
	assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res), -EINVAL);
	assert_int_equal(wait_dir_count(s.dir, "msg", 0), 0);
	struct queue_msg nosender = env_of(qid, 1, QUEUE_MSG_ACTIVE);
	nosender.sender = NULL;
	b = make_body(&s, qid, 100);
	assert_int_equal(queue_commit(s.q, b, &nosender, commit_cb, &res), -EINVAL);
	uv_run(&s.loop, UV_RUN_NOWAIT);
	assert_int_equal(res.calls, 0);
	assert_int_equal(count_dir(s.dir, "tmp"), 0);
	assert_int_equal(wait_dir_count(s.dir, "msg", 0), 0);
	spool_close(&s);
	rm_tree(s.dir);
}


static void put_file(const char *dir, const char *sub, const char *name)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s/%s", dir, sub, name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "x\r\n", 3), 3);
	close(fd);
}

static bool has_file(const char *dir, const char *sub, const char *name)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s/%s", dir, sub, name);
	return access(p, F_OK) == 0;
}

static void commit_one(struct spool *s, const char *qid, size_t size)
{
	struct result res = {0};
	struct queue_body *b = make_body(s, qid, size);
	struct queue_msg m = env_of(qid, 1700000000, QUEUE_MSG_ACTIVE);
	assert_int_equal(queue_commit(s->q, b, &m, commit_cb, &res), 0);
	run_until(s, &res.calls, 1);
	assert_int_equal(res.status, 0);
}

/* A crash leaves a tmp/ body, a msg/ body without record and a record
 * without body (and stray names); the next open repairs all of them, and
 * keeps ids above the largest one in the index. */
static void test_recovery(void **state)
{
	(void)state;
	static const char *const keep = "Y0000000000A0000";    /* far future */
	static const char *const lost = "01HX0000000B0000";
	static const char *const orphan = "01HX0000000C0000";
	static const char *const torn = "01HX0000000E0000";
	struct queue_opts o = {.map_size = 16 << 20, .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	spool_setup(&s, &o);
	commit_one(&s, lost, 10);
	commit_one(&s, torn, 10);
	commit_one(&s, keep, 20);
	spool_close(&s);
	/* A record that reached the disk before its body did (the window
	 * before a batch's syncfs): the body is shorter than recorded. */
	put_file(s.dir, "msg", torn);
	put_file(s.dir, "msg", ".01HX0000000F0000");

	put_file(s.dir, "tmp", "01HX0000000D0000");
	put_file(s.dir, "tmp", "junk");
	put_file(s.dir, "msg", orphan);
	put_file(s.dir, "msg", "not-a-qid");
	char p[1024];
	assert_int_equal(queue_body_path(s.dir, lost, p, sizeof p), 0);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(count_sched(s.dir, lost), 1);

	spool_open(&s, &o);
	assert_int_equal(count_dir(s.dir, "tmp"), 0);
	assert_false(has_file(s.dir, "msg", orphan));
	assert_false(has_file(s.dir, "msg", "not-a-qid"));
	assert_false(has_file(s.dir, "msg", torn));
	assert_false(has_file(s.dir, "msg", ".01HX0000000F0000"));
	assert_true(has_file(s.dir, "msg", keep));

	/* The clock is far behind "keep": ids still go up. */
	char qid[QUEUE_ID_SIZE];
	queue_new_id(s.q, qid);
	assert_true(strcmp(qid, keep) > 0);
	commit_one(&s, qid, 30);
	spool_close(&s);

	assert_int_equal(count_sched(s.dir, lost), 0);
	assert_int_equal(count_sched(s.dir, keep), 1);
	struct queue_ro *ro;
	struct queue_msg *got;
	assert_int_equal(queue_ro_open(s.dir, &ro), 0);
	assert_int_equal(queue_ro_get(ro, lost, &got), -ENOENT);
	assert_int_equal(queue_ro_get(ro, torn, &got), -ENOENT);
	assert_int_equal(queue_ro_get(ro, keep, &got), 0);
	assert_int_equal(got->size, 20);
	queue_msg_free(got);
	queue_ro_close(ro);

	/* A clean reopen repairs nothing and keeps both messages. */
	spool_open(&s, &o);
	assert_true(has_file(s.dir, "msg", keep));
	assert_true(has_file(s.dir, "msg", qid));
	spool_close(&s);
	rm_tree(s.dir);
}

/* ---- the spool check (queue_check.c) on real spools -------------------- */

struct check_items {
	size_t n;
	struct queue_check_item v[16];
};

static int check_cb(void *arg, const struct queue_check_item *it)
{
	struct check_items *c = arg;
	if (c->n < ARRAY_LEN(c->v))
		c->v[c->n] = *it;
	c->n++;
	return 0;
}

/* More messages than one read transaction covers (CHECK_CHUNK = 256):
 * the check resumes each chunk after the last key of the one before,
 * missing nothing and seeing nothing twice, also at the edges. */
static void test_check_chunks(void **state)
{
	(void)state;
	enum { N = 600 };
	struct queue_opts o = {.map_size = 64 << 20, .sync = QUEUE_SYNC_SYNCFS};
	struct spool s;
	static char qid[N][QUEUE_ID_SIZE];
	struct result res[N];
	memset(res, 0, sizeof res);
	spool_setup(&s, &o);
	for (int i = 0; i < N; i++) {
		queue_new_id(s.q, qid[i]);
		struct queue_body *b = make_body(&s, qid[i], 10 + (size_t)(i % 7));
		struct queue_msg m = env_of(qid[i], 1700000000 + i, QUEUE_MSG_ACTIVE);
		assert_int_equal(queue_commit(s.q, b, &m, commit_cb, &res[i]), 0);
	}
	for (int calls = 0; calls < N;) {
		uv_run(&s.loop, UV_RUN_ONCE);
		calls = 0;
		for (int i = 0; i < N; i++)
			calls += res[i].calls;
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(res[i].status, 0);
	spool_close(&s);

	struct queue_ro *ro;
	struct queue_check_stats st;
	struct check_items found = {0};
	assert_int_equal(queue_ro_open(s.dir, &ro), 0);
	assert_int_equal(queue_ro_check(ro, 0, check_cb, &found, &st), 0);
	assert_int_equal(found.n, 0);
	assert_int_equal(st.messages, N);
	assert_int_equal(st.scheduled, N);
	assert_int_equal(st.bodies, N);
	assert_int_equal(st.in_use, 0);

	/* Bodies gone at the chunk edges (records are in id order). */
	static const int gone[] = {0, 255, 256, 257, 511, 512, 599};
	for (size_t i = 0; i < ARRAY_LEN(gone); i++) {
		char p[1024];
		assert_int_equal(queue_body_path(s.dir, qid[gone[i]], p, sizeof p), 0);
		assert_int_equal(unlink(p), 0);
	}
	found.n = 0;
	assert_int_equal(queue_ro_check(ro, 0, check_cb, &found, &st), 0);
	assert_int_equal(found.n, ARRAY_LEN(gone));
	for (size_t i = 0; i < ARRAY_LEN(gone); i++) {
		assert_int_equal(found.v[i].kind, QUEUE_CHK_NO_BODY);
		assert_string_equal(found.v[i].qid, qid[gone[i]]);
		/* Looked at again: still so. */
		struct check_items again = {0};
		assert_int_equal(queue_ro_recheck(ro, 0, &found.v[i], check_cb,
		                                  &again), 0);
		assert_int_equal(again.n, 1);
		assert_int_equal(again.v[0].kind, QUEUE_CHK_NO_BODY);
	}
	assert_int_equal(st.messages, N);
	assert_int_equal(st.bodies, N - ARRAY_LEN(gone));

	/* A body put back in the meantime: the recheck judges what is there
	 * now, not what the scan saw. */
	put_file(s.dir, "msg", qid[0]);
	struct check_items again = {0};
	found.v[0].kind = QUEUE_CHK_NO_BODY;
	assert_int_equal(queue_ro_recheck(ro, 0, &found.v[0], check_cb, &again), 0);
	assert_int_equal(again.n, 1);         /* 3 bytes, not the recorded 10 */
	assert_int_equal(again.v[0].kind, QUEUE_CHK_BODY_SIZE);
	assert_int_equal(again.v[0].size, 3);
	assert_int_equal(again.v[0].recorded, 10);
	queue_ro_close(ro);
	rm_tree(s.dir);
}

/* While the daemon side runs in fsync mode, its pool of empty msg/.p*
 * files is there: in use with QUEUE_CHECK_LIVE, leftovers without. From a
 * child process, as relayctl (LMDB: one open environment per process). */
static void test_check_live_pool(void **state)
{
	(void)state;
	struct queue_opts o = {.map_size = 16 << 20, .sync = QUEUE_SYNC_FSYNC};
	struct spool s;
	spool_setup(&s, &o);
	char qid[QUEUE_ID_SIZE];
	queue_new_id(s.q, qid);
	commit_one(&s, qid, 50);
	/* The opener fills the pool to 64 files (queue.c POOL_MAX) in one
	 * batch, and refills only below POOL_LOW: the commit above took a body
	 * from a full pool (63 stay) or made its own before the first batch (64
	 * come). Wait (up to 30 s on a loaded machine) until the count is one of
	 * those and the same 100 ms later, so no batch is still being made. */
	char p[1024];
	size_t npool = 0, prev = SIZE_MAX;
	snprintf(p, sizeof p, "%s/msg", s.dir);
	for (int i = 0; i < 300; i++) {
		DIR *d = opendir(p);
		assert_non_null(d);
		struct dirent *e;
		npool = 0;
		while ((e = readdir(d)))
			npool += strncmp(e->d_name, ".p", 2) == 0;
		closedir(d);
		if (npool >= 63 && npool == prev)
			break;
		prev = npool;
		usleep(100 * 1000);
	}
	assert_true(npool == 63 || npool == 64);
	assert_int_equal(npool, prev);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct queue_ro *ro;
		struct queue_check_stats st;
		struct check_items live = {0}, dead = {0};
		int ok = queue_ro_open(s.dir, &ro) == 0 &&
		         queue_ro_check(ro, QUEUE_CHECK_LIVE, check_cb, &live,
		                        &st) == 0 &&
		         live.n == 0 && st.in_use == npool && st.messages == 1 &&
		         st.bodies == 1 &&
		         queue_ro_check(ro, 0, check_cb, &dead, &st) == 0 &&
		         dead.n == npool && st.in_use == 0;
		for (size_t i = 0; ok && i < ARRAY_LEN(dead.v); i++)
			ok = dead.v[i].kind == QUEUE_CHK_TEMP &&
			     strncmp(dead.v[i].file, "msg/.p", 6) == 0;
		_exit(ok ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	spool_close(&s);
	rm_tree(s.dir);
}

static void test_ro_missing(void **state)
{
	(void)state;
	struct queue_ro *ro;
	char dir[64];
	snprintf(dir, sizeof dir, "/tmp/relayd-tq-XXXXXX");
	assert_non_null(mkdtemp(dir));
	char sub[128];
	snprintf(sub, sizeof sub, "%s/spool", dir);
	assert_int_equal(queue_ro_open(sub, &ro), -ENOENT);
	assert_int_equal(access(sub, F_OK), -1);      /* nothing created */
	assert_int_equal(queue_ro_open(dir, &ro), -ENOENT);
	assert_int_equal(access(sub, F_OK), -1);
	queue_ro_close(NULL);
	rmdir(dir);
}

/* Which names in msg/ recovery may remove: this run's (at or above the
 * boundary, or pool files tagged with it) never. */
static void test_recover_classify(void **state)
{
	(void)state;
	static const char *const bnd = "01K1WQ00000A0000";
	static const struct {
		const char *name;
		enum queue_recover_kind want;
	} cases[] = {
		{".", QUEUE_RECOVER_SKIP},
		{"..", QUEUE_RECOVER_SKIP},
		{"01K1WQ0000090000", QUEUE_RECOVER_OLD_BODY},
		{"01HX0000000C0000", QUEUE_RECOVER_OLD_BODY},
		{"01K1WQ00000A0000", QUEUE_RECOVER_NEW_BODY},   /* never given out */
		{"01K1WQ00000A0001", QUEUE_RECOVER_NEW_BODY},
		{"Y0000000000A0000", QUEUE_RECOVER_NEW_BODY},
		{".01K1WQ00000A0001", QUEUE_RECOVER_KEEP},      /* body on the spot */
		{".01K1WQ0000090000", QUEUE_RECOVER_REMOVE},    /* an earlier run's */
		{".01K1WQ00000A0000", QUEUE_RECOVER_REMOVE},
		{".p01K1WQ00000A00000000000000000001", QUEUE_RECOVER_KEEP},
		{".p01K1WQ00000A0000", QUEUE_RECOVER_REMOVE},   /* no counter */
		{".p0000000000000001", QUEUE_RECOVER_REMOVE},   /* old pool name */
		{".p01K1WQ0000090000000000000000001", QUEUE_RECOVER_REMOVE},
		{".probe123", QUEUE_RECOVER_REMOVE},
		{".", QUEUE_RECOVER_SKIP},
		{"not-a-qid", QUEUE_RECOVER_REMOVE},
		{"01k1wq00000a0001", QUEUE_RECOVER_REMOVE},     /* lower case */
		{"01K1WQ00000A00011", QUEUE_RECOVER_REMOVE},    /* 17 chars */
		{".p", QUEUE_RECOVER_REMOVE},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		enum queue_recover_kind got =
			queue_recover_classify(cases[i].name, bnd);
		if (got != cases[i].want)
			fail_msg("%s: %d, want %d", cases[i].name, (int)got,
			         (int)cases[i].want);
	}
}

/* This run's pool files: ".p" names other than the old one planted. */
static size_t count_pool(const char *dir)
{
	char p[1024];
	size_t n = 0;
	snprintf(p, sizeof p, "%s/msg", dir);
	DIR *d = opendir(p);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)))
		n += strncmp(e->d_name, ".p", 2) == 0 &&
		     strcmp(e->d_name, ".p0000000000000001") != 0;
	closedir(d);
	return n;
}

/* recover_async: queue_open returns before recovery; a commit while it
 * waits at its gate succeeds and survives it; queue_recovered() turns
 * true only after the gate opens; the repairs are the same as before. */
static void test_recovery_async(void **state)
{
	(void)state;
	static const char *const keep = "01HX0000000A0000";
	static const char *const lost = "01HX0000000B0000";
	static const char *const orphan = "01HX0000000C0000";
	struct queue_opts o = {.map_size = 16 << 20, .sync = QUEUE_SYNC_FSYNC};
	struct spool s;
	spool_setup(&s, &o);
	commit_one(&s, keep, 10);
	commit_one(&s, lost, 10);
	spool_close(&s);
	put_file(s.dir, "msg", orphan);
	put_file(s.dir, "msg", ".p0000000000000001");
	char p[1024], gate[1100];
	assert_int_equal(queue_body_path(s.dir, lost, p, sizeof p), 0);
	assert_int_equal(unlink(p), 0);

	snprintf(gate, sizeof gate, "%s/gate", s.dir);
	o.recover_async = true;
	o.recover_gate = gate;
	spool_open(&s, &o);
	assert_false(queue_recovered(s.q));
	char qid[QUEUE_ID_SIZE];
	queue_new_id(s.q, qid);
	commit_one(&s, qid, 20);          /* the writer takes it meanwhile */
	assert_true(has_file(s.dir, "msg", qid));
	assert_true(has_file(s.dir, "msg", orphan));    /* still gated */
	assert_false(queue_recovered(s.q));

	put_file(s.dir, "", "gate");
	for (int i = 0; i < 10000 && !queue_recovered(s.q); i++) {
		uv_run(&s.loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
	assert_true(queue_recovered(s.q));
	struct queue_msg *got;
	assert_int_equal(queue_get(s.q, lost, &got), -ENOENT);
	for (int i = 0; i < 10000 && has_file(s.dir, "msg", orphan); i++)
		usleep(1000);
	assert_false(has_file(s.dir, "msg", orphan));
	for (int i = 0; i < 10000 && has_file(s.dir, "msg", ".p0000000000000001"); i++)
		usleep(1000);
	assert_false(has_file(s.dir, "msg", ".p0000000000000001"));
	assert_true(has_file(s.dir, "msg", keep));
	assert_true(has_file(s.dir, "msg", qid));
	assert_int_equal(queue_get(s.q, qid, &got), 0);
	queue_msg_free(got);
	/* Pool files of this run (fsync mode names them) are still there. */
	assert_true(count_pool(s.dir) > 0);
	/* And they still take bodies. */
	for (int i = 0; i < 70; i++) {
		queue_new_id(s.q, qid);
		commit_one(&s, qid, 5);
	}
	spool_close(&s);
	rm_tree(s.dir);
}

int main(void)
{
	/* Recovery's warnings are expected here; keep the output readable. */
	log_threshold = LOG_ERR;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_id_valid),
		cmocka_unit_test(test_id_exact),
		cmocka_unit_test(test_id_clock),
		cmocka_unit_test(test_id_sortable),
		cmocka_unit_test(test_codec_roundtrip),
		cmocka_unit_test(test_codec_many_rcpts),
		cmocka_unit_test(test_codec_encode_rejects),
		cmocka_unit_test(test_codec_truncated),
		cmocka_unit_test(test_codec_corrupt),
		cmocka_unit_test(test_codec_mutations),
		cmocka_unit_test(test_codec_v1),
		cmocka_unit_test(test_codec_v2_bounds),
		cmocka_unit_test(test_codec_v2_corrupt),
		cmocka_unit_test(test_apply_rcpts),
		cmocka_unit_test(test_state_names),
		cmocka_unit_test(test_body_path),
		cmocka_unit_test(test_commit),
		cmocka_unit_test(test_commit_7bit),
		cmocka_unit_test(test_group_commit),
		cmocka_unit_test(test_map_full),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_duplicate_id),
		cmocka_unit_test(test_recovery),
		cmocka_unit_test(test_recover_classify),
		cmocka_unit_test(test_recovery_async),
		cmocka_unit_test(test_ro_missing),
		cmocka_unit_test(test_check_chunks),
		cmocka_unit_test(test_check_live_pool),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
