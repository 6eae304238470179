/*
 * tests/unit/test_sendmail_bs.c - tools/sendmail_bs.c, relayd-sendmail
 * -bs's pure core: command lines to verbs and arguments (case, blanks,
 * look-alikes, NUL), MAIL/RCPT paths (parameters left over, no path, too
 * long), and the DATA reader (end of message, dot-unstuffing, a "." line
 * cut after its dot, a dot that is not at a line's start).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tools/sendmail_bs.h"

struct cmd_case {
	const char *line;
	size_t len;              /* 0: strlen */
	enum sm_bs_verb verb;
	const char *arg;
};

static const struct cmd_case cmds[] = {
	{"EHLO app.example", 0, SM_BS_EHLO, "app.example"},
	{"ehlo", 0, SM_BS_EHLO, ""},
	{"EHLOx", 0, SM_BS_UNKNOWN, ""},
	{"HELO  two  blanks", 0, SM_BS_HELO, "two  blanks"},
	{"MAIL FROM:<a@b> BODY=8BITMIME", 0, SM_BS_MAIL, "<a@b> BODY=8BITMIME"},
	{"mail from: <a@b>", 0, SM_BS_MAIL, "<a@b>"},
	{"MAIL FROM <a@b>", 0, SM_BS_UNKNOWN, ""},
	{"MAIL  FROM:<a@b>", 0, SM_BS_UNKNOWN, ""},
	{"RCPT TO:<c@d>", 0, SM_BS_RCPT, "<c@d>"},
	{"DATA", 0, SM_BS_DATA, ""},
	{"DATAX", 0, SM_BS_UNKNOWN, ""},
	{"RSET", 0, SM_BS_RSET, ""},
	{"NOOP whatever", 0, SM_BS_NOOP, "whatever"},
	{"VRFY root", 0, SM_BS_VRFY, "root"},
	{"quit", 0, SM_BS_QUIT, ""},
	{"", 0, SM_BS_UNKNOWN, ""},
	{"STARTTLS", 0, SM_BS_UNKNOWN, ""},
	{"DATA\0x", 6, SM_BS_BAD, ""},
};

static void commands(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
		const struct cmd_case *c = &cmds[i];
		size_t n = c->len ? c->len : strlen(c->line);
		const char *arg;
		enum sm_bs_verb v = sm_bs_command(c->line, n, &arg);
		if (v != c->verb)
			fail_msg("\"%s\": verb %d, want %d", c->line, v, c->verb);
		size_t an = (size_t)(c->line + n - arg);
		if (an != strlen(c->arg) || memcmp(arg, c->arg, an) != 0)
			fail_msg("\"%s\": argument \"%.*s\", want \"%s\"", c->line,
			         (int)an, arg, c->arg);
	}
}

static void paths(void **state)
{
	(void)state;
	char out[16];
	size_t rest;
	const char *a = "<a@b> SIZE=10";
	assert_int_equal(sm_bs_path(a, strlen(a), out, 15, &rest), 0);
	assert_string_equal(out, "<a@b>");
	assert_string_equal(a + rest, " SIZE=10");
	assert_int_equal(sm_bs_path("<>", 2, out, 15, &rest), 0);
	assert_string_equal(out, "<>");
	assert_int_equal(sm_bs_path("a@b", 3, out, 15, &rest), -EINVAL);
	assert_int_equal(sm_bs_path("<a@b", 4, out, 15, &rest), -EINVAL);
	assert_int_equal(sm_bs_path("", 0, out, 15, &rest), -EINVAL);
	/* 15 with the brackets fits, 16 does not. */
	assert_int_equal(sm_bs_path("<1234567890123>", 15, out, 15, &rest), 0);
	assert_int_equal(sm_bs_path("<12345678901234>", 16, out, 15, &rest),
	                 -EINVAL);
	/* The '>' is looked for within n only. */
	assert_int_equal(sm_bs_path("<ab>", 3, out, 15, &rest), -EINVAL);
}

/* Pieces "text|" (end of line) or "text~" (cut); the kept text joined
 * with '/' per line end, and "END" when the message ended. */
static void run_dot(const char *const *pieces, const char *want)
{
	struct sm_bs_dot d;
	char got[256] = "";
	sm_bs_dot_init(&d);
	for (size_t i = 0; pieces[i]; i++) {
		size_t l = strlen(pieces[i]);
		bool end = pieces[i][l - 1] == '|';
		const char *p = pieces[i];
		size_t n = l - 1;
		if (sm_bs_dot_piece(&d, &p, &n, end)) {
			strcat(got, "END");
			break;
		}
		strncat(got, p, n);
		if (end)
			strcat(got, "/");
	}
	assert_string_equal(got, want);
}

static void dots(void **state)
{
	(void)state;
	run_dot((const char *[]){"a|", "..b|", ".|", "after|", NULL},
	        "a/.b/END");
	run_dot((const char *[]){".x|", "y.|", ".|", NULL}, "x/y./END");
	/* A "." line cut after its dot (a CR held back, a tiny piece). */
	run_dot((const char *[]){".~", "|", NULL}, "END");
	run_dot((const char *[]){".~", "x|", ".|", NULL}, "x/END");
	/* A cut line: the dot in its second piece is kept. */
	run_dot((const char *[]){"ab~", ".c|", ".|", NULL}, "ab.c/END");
	run_dot((const char *[]){"|", ".|", NULL}, "/END");
	run_dot((const char *[]){"no end|", NULL}, "no end/");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(commands),
		cmocka_unit_test(paths),
		cmocka_unit_test(dots),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
