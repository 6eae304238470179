/*
 * tests/unit/test_queue_check.c - Unit tests of the spool check's pure
 * parts (queue/queue_check.c): what a name in msg/ is, the problems of a
 * record and its body, whether a schedule entry is the one its record
 * asks for, and which items share a subject for a recheck. The check on
 * real spools is in test_queue.c (chunked reads, relayd's temp files) and
 * tests/e2e/test_relayctl_check.py.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "queue/queue_int.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define BIT(k) (1u << (k))

static void test_names(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		enum queue_check_name want;
	} cases[] = {
		{"01HX0000000B0000", QUEUE_NAME_BODY},
		{"ZZZZZZZZZZZZZZZZ", QUEUE_NAME_BODY},
		{".01HX0000000B0000", QUEUE_NAME_PART},     /* part_name() */
		{".p0000000000000001", QUEUE_NAME_PART},    /* the opener's pool */
		{".p00000000000000ab", QUEUE_NAME_PART},
		{".p00000000000000AB", QUEUE_NAME_TEMP},    /* %016llx: lower case */
		{".p000000000000001", QUEUE_NAME_TEMP},     /* 15 digits */
		{".p00000000000000001", QUEUE_NAME_TEMP},   /* 17 digits */
		{".probe1234", QUEUE_NAME_TEMP},            /* probe_tmpfile() */
		/* The opener's pool, tagged with the run's boundary id. */
		{".p01K1WQ00000A00000000000000000001", QUEUE_NAME_PART},
		{".p01K1WQ00000A0000000000000000001", QUEUE_NAME_TEMP},  /* 15 */
		{".p01K1WQ00000a00000000000000000001", QUEUE_NAME_TEMP}, /* id */
		{".p01K1WQ00000A000", QUEUE_NAME_TEMP},
		{".01HX0000000B000", QUEUE_NAME_TEMP},
		{".", QUEUE_NAME_TEMP},
		{"01hx0000000b0000", QUEUE_NAME_STRAY},     /* ids are upper case */
		{"01HX0000000B0000.bak", QUEUE_NAME_STRAY},
		{"notes.txt", QUEUE_NAME_STRAY},
		{"", QUEUE_NAME_STRAY},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		if (queue_check_name(cases[i].name) != cases[i].want)
			fail_msg("queue_check_name(\"%s\") = %d, want %d",
			         cases[i].name, queue_check_name(cases[i].name),
			         cases[i].want);
}

static void test_records(void **state)
{
	(void)state;
	/* decoded, active, due, sched_ok, size, body, body_size */
	static const struct {
		const char *name;
		struct queue_check_rec rec;
		unsigned want;
	} cases[] = {
		{"active, scheduled, body of the recorded size",
		 {true, true, 100, true, 42, QUEUE_BODY_FILE, 42}, 0},
		{"on hold: no entry is right",
		 {true, false, 100, false, 42, QUEUE_BODY_FILE, 42}, 0},
		{"empty body",
		 {true, true, 0, true, 0, QUEUE_BODY_FILE, 0}, 0},
		{"body missing",
		 {true, true, 100, true, 42, QUEUE_BODY_MISSING, 0},
		 BIT(QUEUE_CHK_NO_BODY)},
		{"body longer",
		 {true, true, 100, true, 42, QUEUE_BODY_FILE, 43},
		 BIT(QUEUE_CHK_BODY_SIZE)},
		{"body shorter",
		 {true, false, 100, false, 42, QUEUE_BODY_FILE, 0},
		 BIT(QUEUE_CHK_BODY_SIZE)},
		{"body a symlink or directory",
		 {true, true, 100, true, 42, QUEUE_BODY_OTHER, 4096},
		 BIT(QUEUE_CHK_BODY_TYPE)},
		{"active without its entry",
		 {true, true, 100, false, 42, QUEUE_BODY_FILE, 42},
		 BIT(QUEUE_CHK_UNSCHEDULED)},
		{"nothing left to deliver, active",
		 {true, true, -1, false, 42, QUEUE_BODY_FILE, 42},
		 BIT(QUEUE_CHK_DONE)},
		{"nothing left to deliver, held",
		 {true, false, -1, false, 42, QUEUE_BODY_FILE, 42},
		 BIT(QUEUE_CHK_DONE)},
		{"two problems at once",
		 {true, true, 100, false, 42, QUEUE_BODY_MISSING, 0},
		 BIT(QUEUE_CHK_NO_BODY) | BIT(QUEUE_CHK_UNSCHEDULED)},
		{"undecodable: its size means nothing",
		 {false, false, 0, false, 0, QUEUE_BODY_FILE, 42},
		 BIT(QUEUE_CHK_BAD_RECORD)},
		{"undecodable and no body",
		 {false, false, 0, false, 0, QUEUE_BODY_MISSING, 0},
		 BIT(QUEUE_CHK_BAD_RECORD) | BIT(QUEUE_CHK_NO_BODY)},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		unsigned got = queue_check_rec_eval(&cases[i].rec);
		if (got != cases[i].want)
			fail_msg("%s: 0x%x, want 0x%x", cases[i].name, got,
			         cases[i].want);
	}
}

static void test_sched_entries(void **state)
{
	(void)state;
	static const struct queue_check_rec active = {true, true, 100, true, 1,
	                                              QUEUE_BODY_FILE, 1};
	static const struct queue_check_rec held = {true, false, 100, false, 1,
	                                            QUEUE_BODY_FILE, 1};
	static const struct queue_check_rec done = {true, true, -1, false, 1,
	                                            QUEUE_BODY_FILE, 1};
	static const struct queue_check_rec bad = {false, false, 0, false, 0,
	                                           QUEUE_BODY_FILE, 1};
	static const struct {
		const char *name;
		int64_t at;
		const struct queue_check_rec *rec;
		enum queue_check_stale want;
	} cases[] = {
		{"the entry its record asks for", 100, &active, QUEUE_STALE_OK},
		{"too early", 99, &active, QUEUE_STALE_TIME},
		{"too late", 101, &active, QUEUE_STALE_TIME},
		{"no record", 100, NULL, QUEUE_STALE_NO_RECORD},
		{"record on hold", 100, &held, QUEUE_STALE_HOLD},
		{"nothing left", 100, &done, QUEUE_STALE_DONE},
		{"undecodable record", 100, &bad, QUEUE_STALE_BAD_RECORD},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		enum queue_check_stale got =
			queue_check_sched_eval(cases[i].at, cases[i].rec);
		if (got != cases[i].want)
			fail_msg("%s: %d, want %d", cases[i].name, got, cases[i].want);
	}
}

static void test_subjects(void **state)
{
	(void)state;
	struct queue_check_item a = {.kind = QUEUE_CHK_NO_BODY,
	                             .qid = "01HX0000000B0000"};
	struct queue_check_item b = {.kind = QUEUE_CHK_UNSCHEDULED,
	                             .qid = "01HX0000000B0000"};
	struct queue_check_item c = {.kind = QUEUE_CHK_NO_BODY,
	                             .qid = "01HX0000000C0000"};
	/* Same message: one subject, whatever the problems. */
	assert_true(queue_check_same_subject(&a, &b));
	assert_false(queue_check_same_subject(&a, &c));
	/* A schedule entry of that message is a subject of its own. */
	struct queue_check_item s1 = {.kind = QUEUE_CHK_STALE_SCHED,
	                              .qid = "01HX0000000B0000", .keylen = 3,
	                              .key = {1, 2, 3}};
	struct queue_check_item s2 = s1;
	assert_false(queue_check_same_subject(&a, &s1));
	assert_true(queue_check_same_subject(&s1, &s2));
	s2.key[2] = 4;
	assert_false(queue_check_same_subject(&s1, &s2));
	/* Files by name. */
	struct queue_check_item f1 = {.kind = QUEUE_CHK_TEMP, .file = "tmp/a"};
	struct queue_check_item f2 = {.kind = QUEUE_CHK_TEMP, .file = "tmp/a"};
	struct queue_check_item f3 = {.kind = QUEUE_CHK_TEMP, .file = "msg/a"};
	assert_true(queue_check_same_subject(&f1, &f2));
	assert_false(queue_check_same_subject(&f1, &f3));
	assert_false(queue_check_same_subject(&f1, &a));
	/* Every kind has a name for JSON. */
	for (int k = 0; k < QUEUE_CHK_NKINDS; k++)
		assert_non_null(queue_check_kind_names[k]);
	assert_string_equal(queue_check_kind_names[QUEUE_CHK_NO_BODY],
	                    "missing_body");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_records),
		cmocka_unit_test(test_sched_entries),
		cmocka_unit_test(test_subjects),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
