/*
 * tests/unit/test_dmarc.c - dns/dmarc.c: the record grammar (valid
 * records with their fields and warnings, records that are not DMARC,
 * invalid ones with the tag named), the tree walk's names (RFC 9989
 * §4.10: 8 at most, the jump to 7 labels), the organizational domain
 * from what the walk found (psd=n, psd=y, fewest labels, nothing), and
 * strict and relaxed alignment.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dns/dmarc.h"

static const struct {
	const char *txt;
	enum dmarc_policy p, sp, np;
	bool adkim_s, aspf_s, rua;
	char psd;
	unsigned pct, warnings;
} valid[] = {
	{"v=DMARC1; p=none", DMARC_P_NONE, 0, 0, false, false, false, 0, 100, 0},
	{"v=DMARC1;p=reject;", DMARC_P_REJECT, 0, 0, false, false, false, 0,
	 100, 0},
	{"V = DMARC1 ; P = Quarantine ; sp=none; adkim=s; aspf=S",
	 DMARC_P_QUARANTINE, DMARC_P_NONE, 0, true, true, false, 0, 100, 0},
	{"v=DMARC1; p=none; rua=mailto:d@example.com,mailto:e@x.example!10m",
	 DMARC_P_NONE, 0, 0, false, false, true, 0, 100, 0},
	{"v=DMARC1; p=reject; np=quarantine; psd=y; t=n", DMARC_P_REJECT, 0,
	 DMARC_P_QUARANTINE, false, false, false, 'y', 100, 0},
	{"v=DMARC1; p=none; psd=u", DMARC_P_NONE, 0, 0, false, false, false, 0,
	 100, 0},
	{"v=DMARC1; p=none; pct=50", DMARC_P_NONE, 0, 0, false, false, false, 0,
	 50, DMARC_W_REMOVED_TAG},
	{"v=DMARC1; p=none; pct=500", DMARC_P_NONE, 0, 0, false, false, false, 0,
	 100, DMARC_W_REMOVED_TAG | DMARC_W_PCT_RANGE},
	{"v=DMARC1; p=none; rf=afrf; ri=86400", DMARC_P_NONE, 0, 0, false,
	 false, false, 0, 100, DMARC_W_REMOVED_TAG},
	{"v=DMARC1; rua=mailto:a@b.example; p=none", DMARC_P_NONE, 0, 0, false,
	 false, true, 0, 100, DMARC_W_P_NOT_SECOND},
	{"v=DMARC1; p=none; zz=whatever; fo=1:d", DMARC_P_NONE, 0, 0, false,
	 false, false, 0, 100, DMARC_W_UNKNOWN_TAG},
	{"v=DMARC1;\tp=none;;  ", DMARC_P_NONE, 0, 0, false, false, false, 0,
	 100, 0},
};

static const char *const not_dmarc[] = {
	"", "v=spf1 -all", "v=DMARC2; p=none", "v=dmarc1; p=none",
	"v=DMARC1p=none", " v=DMARC1; p=none", "p=none; v=DMARC1", "v",
	"v=", "v=DMARC",
};

static const struct { const char *txt, *why; } invalid[] = {
	{"v=DMARC1", "no p= tag"},
	{"v=DMARC1; rua=mailto:a@b.example", "no p= tag"},
	{"v=DMARC1; p=block", "p=block: want none, quarantine or reject"},
	{"v=DMARC1; p=", "p=: want"},
	{"v=DMARC1; p=none; sp=maybe", "sp=maybe"},
	{"v=DMARC1; p=none; adkim=x", "adkim=x: want r or s"},
	{"v=DMARC1; p=none; aspf=relaxed", "aspf=relaxed"},
	{"v=DMARC1; p=none; p=reject", "p= given twice"},
	{"v=DMARC1; p=none; v=DMARC1", "v= given twice"},
	{"v=DMARC1; p=none; rua=dmarc@example.com", "rua=dmarc@example.com"},
	{"v=DMARC1; p=none; rua=mailto:", "rua=mailto:"},
	{"v=DMARC1; p=none; rua=mailto:a@b,", "rua="},
	{"v=DMARC1; p=none; fo=2", "fo=2"},
	{"v=DMARC1; p=none; psd=maybe", "psd=maybe"},
	{"v=DMARC1; p=none; t=yes", "t=yes"},
	{"v=DMARC1 p=none", "expected ';'"},
	{"v=DMARC1; =none", "expected a tag name"},
	{"v=DMARC1; 1p=none", "expected a tag name"},
	{"v=DMARC1; p none", "has no '='"},
	{"v=DMARC1; p=none\r\n", "byte 0x0d"},
	{"v=DMARC1; p=n\xc3\xb6ne", "byte 0xc3"},
};

static void test_parse(void **state)
{
	(void)state;
	struct dmarc_record r;
	char why[200];
	for (size_t i = 0; i < sizeof valid / sizeof *valid; i++) {
		int rc = dmarc_parse(valid[i].txt, strlen(valid[i].txt), &r, why,
		                     sizeof why);
		if (rc != 0)
			fail_msg("'%s': %d %s", valid[i].txt, rc, why);
		assert_int_equal(r.p, valid[i].p);
		assert_int_equal(r.sp, valid[i].sp);
		assert_int_equal(r.np, valid[i].np);
		assert_int_equal(r.adkim_strict, valid[i].adkim_s);
		assert_int_equal(r.aspf_strict, valid[i].aspf_s);
		assert_int_equal(r.rua, valid[i].rua);
		assert_int_equal(r.psd, valid[i].psd);
		assert_int_equal(r.pct, valid[i].pct);
		if (r.warnings != valid[i].warnings)
			fail_msg("'%s': warnings %#x, want %#x", valid[i].txt,
			         r.warnings, valid[i].warnings);
	}
	for (size_t i = 0; i < sizeof not_dmarc / sizeof *not_dmarc; i++)
		if (dmarc_parse(not_dmarc[i], strlen(not_dmarc[i]), &r, why,
		                sizeof why) != -ENOENT)
			fail_msg("'%s' taken for DMARC", not_dmarc[i]);
	for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
		int rc = dmarc_parse(invalid[i].txt, strlen(invalid[i].txt), &r,
		                     why, sizeof why);
		if (rc != -EINVAL)
			fail_msg("'%s': %d, want -EINVAL", invalid[i].txt, rc);
		if (!strstr(why, invalid[i].why))
			fail_msg("'%s': why '%s', want '%s'", invalid[i].txt, why,
			         invalid[i].why);
	}
	/* A NUL inside the record (TXT strings may hold one). */
	static const char nul[] = "v=DMARC1; p=none\0; p=reject";
	assert_int_equal(dmarc_parse(nul, sizeof nul - 1, &r, why, sizeof why),
	                 -EINVAL);
	assert_non_null(strstr(why, "byte 0x00"));
	/* A long bad value is cut in the message. */
	char big[400] = "v=DMARC1; p=";
	memset(big + strlen(big), 'x', 300);
	big[12 + 300] = '\0';
	assert_int_equal(dmarc_parse(big, strlen(big), &r, why, 60), -EINVAL);
	assert_true(strlen(why) < 60);
}

static const struct {
	const char *domain;
	size_t n;
	const char *names[DMARC_WALK_MAX];
} walks[] = {
	{"example.com", 2, {"example.com", "com"}},
	{"Mail.Example.COM.", 3, {"mail.example.com", "example.com", "com"}},
	{"com", 1, {"com"}},
	{"a.b.c.d.e.f.g.h", 8, {"a.b.c.d.e.f.g.h", "b.c.d.e.f.g.h",
	 "c.d.e.f.g.h", "d.e.f.g.h", "e.f.g.h", "f.g.h", "g.h", "h"}},
	/* 10 labels: the name, then its last 7, down to 1: 8 names. */
	{"a.b.c.d.e.f.g.h.i.j", 8, {"a.b.c.d.e.f.g.h.i.j", "d.e.f.g.h.i.j",
	 "e.f.g.h.i.j", "f.g.h.i.j", "g.h.i.j", "h.i.j", "i.j", "j"}},
	{"", 0, {NULL}},
	{".", 0, {NULL}},
	{"a..b", 0, {NULL}},
	{".a.b", 0, {NULL}},
};

static void test_walk(void **state)
{
	(void)state;
	char names[DMARC_WALK_MAX][DMARC_NAME_BUF];
	for (size_t i = 0; i < sizeof walks / sizeof *walks; i++) {
		size_t n = dmarc_walk_names(walks[i].domain, names);
		if (n != walks[i].n)
			fail_msg("%s: %zu names, want %zu", walks[i].domain, n,
			         walks[i].n);
		for (size_t k = 0; k < n; k++)
			assert_string_equal(names[k], walks[i].names[k]);
	}
	char longname[300];
	memset(longname, 'a', 254);
	longname[254] = '\0';
	assert_int_equal(dmarc_walk_names(longname, names), 0);
}

static void test_org_domain(void **state)
{
	(void)state;
	char names[DMARC_WALK_MAX][DMARC_NAME_BUF];
	char org[DMARC_NAME_BUF];
	size_t n = dmarc_walk_names("a.mail.example.co.uk", names);
	assert_int_equal(n, 5);
	static const struct {
		struct dmarc_found f[5];
		const char *org;
	} cases[] = {
		/* nothing anywhere: the domain itself */
		{{{0}}, "a.mail.example.co.uk"},
		/* only at example.co.uk */
		{{{false, 0}, {false, 0}, {true, 0}}, "example.co.uk"},
		/* at the name and its org: fewest labels wins */
		{{{true, 0}, {false, 0}, {true, 0}}, "example.co.uk"},
		/* psd=n at mail.example.co.uk stops the walk there */
		{{{false, 0}, {true, 'n'}, {true, 0}}, "mail.example.co.uk"},
		/* psd=y at co.uk: one label below it */
		{{{false, 0}, {false, 0}, {false, 0}, {true, 'y'}},
		 "example.co.uk"},
		/* a record without psd under a PSD: the PSD rule wins */
		{{{false, 0}, {true, 0}, {false, 0}, {true, 'y'}},
		 "example.co.uk"},
		/* psd=y on the name itself: its own org domain */
		{{{true, 'y'}, {true, 0}}, "a.mail.example.co.uk"},
		/* a stray record at the TLD without psd: fewest labels */
		{{{false, 0}, {false, 0}, {true, 0}, {false, 0}, {true, 0}}, "uk"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		dmarc_org_domain((const char (*)[DMARC_NAME_BUF])names, cases[i].f,
		                 n, org);
		if (strcmp(org, cases[i].org) != 0)
			fail_msg("case %zu: org %s, want %s", i, org, cases[i].org);
	}
}

static void test_aligned(void **state)
{
	(void)state;
	assert_true(dmarc_aligned("Example.com", "example.com", "example.com",
	                          "example.com", true));
	assert_false(dmarc_aligned("mail.example.com", "example.com",
	                           "example.com", "example.com", true));
	assert_true(dmarc_aligned("mail.example.com", "example.com",
	                          "example.com", "example.com", false));
	assert_false(dmarc_aligned("example.net", "example.net", "example.com",
	                           "example.com", false));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_walk),
		cmocka_unit_test(test_org_domain),
		cmocka_unit_test(test_aligned),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
