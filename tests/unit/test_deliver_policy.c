/*
 * tests/unit/test_deliver_policy.c - deliver/deliver_policy.c: the
 * tls_policy_file and destination_policy_file parsers (good lines, each
 * error with its file:line message), lookups (exact, ".parent", default),
 * the TLS decision and its reactions to TLS events, whole-word matching,
 * and the reply table against real provider replies and near misses.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/conf.h"
#include "common/smtp.h"
#include "deliver/deliver_policy.h"

#define S(x) x, (sizeof(x) - 1)

/* ---- tls_policy_file ------------------------------------------------- */

struct file_case {
	const char *text;
	int rc;
	const char *err;   /* exact message when rc < 0 */
};

static const struct file_case tls_files[] = {
	{"", 0, NULL},
	{"# only a comment\n\n   \t\n", 0, NULL},
	{"example.com verify\n.example.net encrypt\r\nbroken.example none # x\n"
	 "may.example MAY", 0, NULL},
	{"example.com must\n", -EINVAL,
	 "tls:1: unknown level 'must' (none, may, encrypt, verify)"},
	{"\nexample.com\n", -EINVAL,
	 "tls:2: expected 'DOMAIN none|may|encrypt|verify'"},
	{"example.com may extra\n", -EINVAL,
	 "tls:1: expected 'DOMAIN none|may|encrypt|verify'"},
	{"a..b may\n", -EINVAL, "tls:1: not a domain or host name: 'a..b'"},
	{"..b may\n", -EINVAL, "tls:1: not a domain or host name: '..b'"},
	{". may\n", -EINVAL, "tls:1: not a domain or host name: '.'"},
	{"exa/mple.com may\n", -EINVAL,
	 "tls:1: not a domain or host name: 'exa/mple.com'"},
	{"[192.0.2.1] may\n", -EINVAL,
	 "tls:1: not a domain or host name: '[192.0.2.1]'"},
	{"example.com may\n# c\nEXAMPLE.COM. none\n", -EINVAL,
	 "tls:3: 'example.com' is already on line 1"},
	{"example.com\x01 may\n", -EINVAL, "tls:1: control character (0x01)"},
	{"example.com\x7f may\n", -EINVAL, "tls:1: control character (0x7f)"},
};

static void test_tls_files(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof tls_files / sizeof *tls_files; i++) {
		const struct file_case *c = &tls_files[i];
		size_t len = strlen(c->text);
		struct deliver_tls_policy *p = (void *)1;
		char err[256] = "";
		int rc = deliver_tls_policy_parse("tls", c->text, len, &p, err,
		                                  sizeof err);
		if (rc != c->rc)
			fail_msg("case %zu: rc %d, want %d (%s)", i, rc, c->rc, err);
		if (rc < 0) {
			assert_null(p);
			assert_string_equal(err, c->err);
		} else {
			assert_non_null(p);
		}
		deliver_tls_policy_free(p);
	}
	/* a NUL inside the text */
	struct deliver_tls_policy *p;
	char err[256];
	assert_int_equal(deliver_tls_policy_parse("tls", S("example.com m\0y\n"),
	                 &p, err, sizeof err), -EINVAL);
	assert_string_equal(err, "tls:1: control character (0x00)");
}

static void test_tls_long_line_and_count(void **state)
{
	(void)state;
	char err[256];
	struct deliver_tls_policy *p;
	/* a line of exactly the limit is fine, one more is not */
	size_t n = DELIVER_POLICY_LINE_MAX + 2;
	char *t = malloc(n + 1);
	assert_non_null(t);
	memset(t, ' ', n);
	memcpy(t, "example.com may", 15);
	t[DELIVER_POLICY_LINE_MAX] = '\n';
	assert_int_equal(deliver_tls_policy_parse("tls", t,
	                 DELIVER_POLICY_LINE_MAX + 1, &p, err, sizeof err), 0);
	assert_int_equal(deliver_tls_policy_count(p), 1);
	deliver_tls_policy_free(p);
	t[DELIVER_POLICY_LINE_MAX] = ' ';
	t[DELIVER_POLICY_LINE_MAX + 1] = '\n';
	assert_int_equal(deliver_tls_policy_parse("tls", t, n, &p, err,
	                 sizeof err), -EINVAL);
	assert_string_equal(err, "tls:1: line longer than 1024 characters");
	free(t);

	/* DELIVER_POLICY_ENTRIES_MAX entries, then one more */
	size_t cap = (DELIVER_POLICY_ENTRIES_MAX + 1) * 24;
	char *big = malloc(cap);
	assert_non_null(big);
	size_t o = 0;
	for (unsigned i = 0; i <= DELIVER_POLICY_ENTRIES_MAX; i++)
		o += (size_t)snprintf(big + o, cap - o, "d%u.example may\n", i);
	size_t upto = 0;
	for (unsigned i = 0; i < DELIVER_POLICY_ENTRIES_MAX; i++)
		upto = (size_t)((char *)memchr(big + upto, '\n', o - upto) - big) + 1;
	assert_int_equal(deliver_tls_policy_parse("tls", big, upto, &p, err,
	                 sizeof err), 0);
	assert_int_equal(deliver_tls_policy_count(p), DELIVER_POLICY_ENTRIES_MAX);
	deliver_tls_policy_free(p);
	assert_int_equal(deliver_tls_policy_parse("tls", big, o, &p, err,
	                 sizeof err), -E2BIG);
	assert_string_equal(err, "tls:10001: more than 10000 entries");
	free(big);
}

struct lookup_case {
	const char *domain;
	enum deliver_tls_level level;
	enum deliver_tls_source src;
};

static void test_tls_lookup(void **state)
{
	(void)state;
	static const char text[] =
		"example.com verify\n"
		".example.net encrypt\n"
		".b.example.net none\n"
		"broken.example none\n";
	static const struct lookup_case cases[] = {
		{"example.com", DELIVER_TLS_VERIFY, DELIVER_TLS_SRC_FILE},
		{"EXAMPLE.com.", DELIVER_TLS_VERIFY, DELIVER_TLS_SRC_FILE},
		/* an exact entry covers no subdomain */
		{"sub.example.com", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
		/* ".parent" covers subdomains, not the parent itself */
		{"example.net", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
		{"a.example.net", DELIVER_TLS_ENCRYPT, DELIVER_TLS_SRC_FILE},
		{"x.a.example.net", DELIVER_TLS_ENCRYPT, DELIVER_TLS_SRC_FILE},
		/* the longest parent wins */
		{"c.b.example.net", DELIVER_TLS_NONE, DELIVER_TLS_SRC_FILE},
		{"b.example.net", DELIVER_TLS_ENCRYPT, DELIVER_TLS_SRC_FILE},
		{"broken.example", DELIVER_TLS_NONE, DELIVER_TLS_SRC_FILE},
		{"notexample.com", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
		{"example.com.evil", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
		{"", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
		{"[192.0.2.1]", DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT},
	};
	char err[256];
	struct deliver_tls_policy *p;
	assert_int_equal(deliver_tls_policy_parse("tls", S(text), &p, err,
	                 sizeof err), 0);
	assert_int_equal(deliver_tls_policy_count(p), 4);
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		enum deliver_tls_source src = DELIVER_TLS_SRC__COUNT;
		enum deliver_tls_level l =
			deliver_tls_policy_lookup(p, cases[i].domain, &src);
		if (l != cases[i].level || src != cases[i].src)
			fail_msg("%s: %s/%s, want %s/%s", cases[i].domain,
			         deliver_tls_level_names[l],
			         deliver_tls_source_names[src],
			         deliver_tls_level_names[cases[i].level],
			         deliver_tls_source_names[cases[i].src]);
	}
	deliver_tls_policy_free(p);
	/* no file */
	enum deliver_tls_source src;
	assert_int_equal(deliver_tls_policy_lookup(NULL, "example.com", &src),
	                 DELIVER_TLS_MAY);
	assert_int_equal(src, DELIVER_TLS_SRC_DEFAULT);
}

/* ---- the TLS decision ------------------------------------------------ */

static void test_tls_decide(void **state)
{
	(void)state;
	struct deliver_tls_decision d;
	struct deliver_tls_input in = {DELIVER_TLS_MAY, DELIVER_TLS_SRC_DEFAULT,
	                               "mx.example.com", false};
	int reply;

	/* may: opportunistic, unverified, one plaintext retry */
	assert_int_equal(deliver_tls_decide(&in, &d), 0);
	assert_true(d.starttls);
	assert_false(d.required);
	assert_false(d.verify);
	assert_true(d.plain_retry);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_NOT_OFFERED,
	                 false, &reply), DELIVER_TLS_ACT_PLAIN);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_HANDSHAKE_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_RETRY_PLAIN);
	assert_int_equal(reply, -1);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_HANDSHAKE_FAIL,
	                 true, &reply), DELIVER_TLS_ACT_DEFER);
	assert_int_equal(reply, SMTP_R_DLV_TLS_FAILED);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_VERIFY_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_CONTINUE);
	/* may, with TLS remembered broken: plaintext from the start */
	in.tls_broken = true;
	assert_int_equal(deliver_tls_decide(&in, &d), 0);
	assert_false(d.starttls);
	assert_int_equal(d.level, DELIVER_TLS_MAY);

	/* encrypt: required, never plaintext, any certificate */
	in.level = DELIVER_TLS_ENCRYPT;
	in.source = DELIVER_TLS_SRC_FILE;
	assert_int_equal(deliver_tls_decide(&in, &d), 0);
	assert_true(d.starttls);     /* tls_broken is ignored */
	assert_true(d.required);
	assert_false(d.verify);
	assert_false(d.plain_retry);
	assert_int_equal(d.source, DELIVER_TLS_SRC_FILE);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_NOT_OFFERED,
	                 false, &reply), DELIVER_TLS_ACT_DEFER);
	assert_int_equal(reply, SMTP_R_DLV_TLS_NOT_OFFERED);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_HANDSHAKE_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_DEFER);
	assert_int_equal(reply, SMTP_R_DLV_TLS_FAILED);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_VERIFY_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_CONTINUE);

	/* verify: chain and the MX host's name */
	in.level = DELIVER_TLS_VERIFY;
	assert_int_equal(deliver_tls_decide(&in, &d), 0);
	assert_true(d.required);
	assert_true(d.verify);
	assert_string_equal(d.verify_name, "mx.example.com");
	assert_false(d.plain_retry);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_VERIFY_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_DEFER);
	assert_int_equal(reply, SMTP_R_DLV_TLS_UNVERIFIED);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_HANDSHAKE_FAIL,
	                 false, &reply), DELIVER_TLS_ACT_DEFER);
	in.mx_host = "";
	assert_int_equal(deliver_tls_decide(&in, &d), -EINVAL);
	in.mx_host = "mx.example.com";

	/* none: no STARTTLS even when offered */
	in.level = DELIVER_TLS_NONE;
	assert_int_equal(deliver_tls_decide(&in, &d), 0);
	assert_false(d.starttls);
	assert_false(d.required);
	assert_int_equal(deliver_tls_on_event(&d, DELIVER_TLS_EV_NOT_OFFERED,
	                 false, &reply), DELIVER_TLS_ACT_PLAIN);

	/* not implemented yet, and out of range */
	in.level = DELIVER_TLS_VERIFY;
	in.source = DELIVER_TLS_SRC_MTA_STS;
	assert_int_equal(deliver_tls_decide(&in, &d), -ENOTSUP);
	in.source = DELIVER_TLS_SRC_DANE;
	assert_int_equal(deliver_tls_decide(&in, &d), -ENOTSUP);
	in.source = DELIVER_TLS_SRC_FILE;
	in.level = DELIVER_TLS__COUNT;
	assert_int_equal(deliver_tls_decide(&in, &d), -EINVAL);
}

/* ---- words ----------------------------------------------------------- */

struct word_case {
	const char *text, *phrase;
	bool want;
};

static const struct word_case word_cases[] = {
	{"temporarily rate limited", "rate", true},
	{"RATE-LIMITED", "rate", true},
	{"rate", "rate", true},
	{"(rate)", "rate", true},
	{"separate", "rate", false},
	{"generated", "rate", false},
	{"moderate accurate karate", "rate", false},
	{"rates", "rate", false},
	{"ratelimit exceeded", "ratelimit", true},
	{"Too Many connections", "too many", true},
	{"too  many", "too many", true},
	{"too-many", "too many", true},
	{"too manyfold", "too many", false},
	{"not too", "too many", false},
	{"footoo many", "too many", false},
	{"[TSS04] deferred", "TSS04", true},
	{"TSS041", "TSS04", false},
	{"XTSS04", "TSS04", false},
	{"throttled", "throttle", false},
	{"", "rate", false},
};

static void test_words(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof word_cases / sizeof *word_cases; i++) {
		const struct word_case *c = &word_cases[i];
		if (deliver_text_has_words(c->text, strlen(c->text), c->phrase) !=
		    c->want)
			fail_msg("'%s' in '%s': want %d", c->phrase, c->text, c->want);
	}
	/* the length bounds the scan: "rate" just past n is not seen */
	assert_false(deliver_text_has_words("xx rate", 3, "rate"));
	assert_true(deliver_text_has_words("xx rate", 7, "rate"));
	assert_false(deliver_text_has_words("xx ratex", 8, "rate"));
}

/* ---- the reply table ------------------------------------------------- */

struct reply_case {
	const char *reply;
	enum deliver_reaction want;
	const char *rule;
};

static const struct reply_case reply_cases[] = {
	/* Gmail (support.google.com/a/answer/3726730, research §3) */
	{"421-4.7.28 [192.0.2.1      15] Our system has detected an unusual "
	 "rate of\r\n421-4.7.28 unsolicited mail originating from your IP "
	 "address. To protect our\r\n421 4.7.28 users from spam, mail sent "
	 "from your IP address has been temporarily rate limited. - gsmtp\r\n",
	 DELIVER_REACT_DEST_THROTTLE, "gmail-4.7.28"},
	{"421 4.7.28 gsmtp", DELIVER_REACT_DEST_THROTTLE, "gmail-4.7.28"},
	{"421-4.7.0 [192.0.2.1] Our system has detected an unusual rate of\r\n"
	 "421 4.7.0 unsolicited mail. gsmtp\r\n",
	 DELIVER_REACT_DEST_THROTTLE, "throttle-words"},
	{"450-4.2.1 The user you are trying to contact is receiving mail at a "
	 "rate that\r\n450 4.2.1 prevents additional messages from being "
	 "delivered. gsmtp\r\n", DELIVER_REACT_RCPT_DEFER, "mailbox-too-fast"},
	{"550-5.7.28 Our system has detected an unusual rate of unsolicited "
	 "mail\r\n550 5.7.28 gsmtp\r\n", DELIVER_REACT_BOUNCE, "permanent"},
	{"451 4.7.23 The sending IP does not have a PTR record",
	 DELIVER_REACT_RCPT_DEFER, "temporary"},
	/* Yahoo (research §3) */
	{"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due "
	 "to unexpected volume or user complaints - 4.16.55.1; see "
	 "https://postmaster.yahooinc.com/error-codes",
	 DELIVER_REACT_DEST_THROTTLE, "yahoo-tss04"},
	/* Microsoft */
	{"451 4.7.650 The mail server [192.0.2.5] has been temporarily rate "
	 "limited due to IP reputation. (S775)",
	 DELIVER_REACT_DEST_THROTTLE, "microsoft-4.7.5xx-6xx"},
	{"451 4.7.500 Server busy. Please try again later from [192.0.2.5]. "
	 "(S77719)", DELIVER_REACT_DEST_THROTTLE, "microsoft-4.7.5xx-6xx"},
	{"451 4.7.700 something else", DELIVER_REACT_RCPT_DEFER, "temporary"},
	/* other servers' throttling */
	{"421 4.7.0 mx.example.net Error: too many connections from 192.0.2.1",
	 DELIVER_REACT_DEST_THROTTLE, "throttle-words"},
	{"421 Too many concurrent SMTP connections; please try again later.",
	 DELIVER_REACT_DEST_THROTTLE, "throttle-words"},
	{"450 4.7.1 Client host rejected: rate-limited, slow down",
	 DELIVER_REACT_DEST_THROTTLE, "throttle-words"},
	{"451 4.7.1 Throttling: too fast", DELIVER_REACT_DEST_THROTTLE,
	 "throttle-words"},
	/* greylisting: retry later, no throttle (even with "too many") */
	{"451 4.7.1 Greylisting in action, please come back later",
	 DELIVER_REACT_RCPT_DEFER, "greylist"},
	{"450 4.2.0 <a@example.com>: Recipient address rejected: Greylisted, "
	 "see http://postgrey.schweikert.ch/help/example.com.html",
	 DELIVER_REACT_RCPT_DEFER, "greylist"},
	{"450 4.7.1 graylisted, too many attempts", DELIVER_REACT_RCPT_DEFER,
	 "greylist"},
	/* too many recipients */
	{"452 4.5.3 Too many recipients", DELIVER_REACT_SPLIT_TXN,
	 "too-many-recipients"},
	{"452 Too many recipients received this hour", DELIVER_REACT_SPLIT_TXN,
	 "too-many-recipients"},
	{"452 4.2.2 Mailbox full", DELIVER_REACT_RCPT_DEFER, "mailbox-full"},
	/* ... even when it says "too many" (not the sender's rate) */
	{"450 4.2.2 too many messages in this mailbox",
	 DELIVER_REACT_RCPT_DEFER, "mailbox-full"},
	/* smarthosts (issue 9: one table for both modes): quotas and rate
	 * limits under other enhanced codes throttle; a 421 greylisting
	 * defers the recipient, never the destination */
	{"451 4.3.0 Ratelimit exceeded", DELIVER_REACT_DEST_THROTTLE,
	 "throttle-words"},
	{"450 4.2.0 Account throttled", DELIVER_REACT_DEST_THROTTLE,
	 "throttle-words"},
	{"451 4.3.0 Daily limit exceeded", DELIVER_REACT_DEST_THROTTLE,
	 "throttle-words"},
	{"421 4.7.0 Greylisted, try again in 5 minutes",
	 DELIVER_REACT_RCPT_DEFER, "greylist"},
	{"451 4.3.0 Error generated by the content filter",
	 DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"452 4.3.1 Insufficient system storage", DELIVER_REACT_RCPT_DEFER,
	 "temporary"},
	/* near misses: the words must be whole words */
	{"451 4.7.1 separate generated moderate accurate",
	 DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"451 4.7.1 Please try again later (corporate policy)",
	 DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"450 4.1.1 rate", DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"421 4.3.2 Service not available, closing transmission channel",
	 DELIVER_REACT_DEST_DEFER, "service-unavailable"},
	{"421 mx.example.com Service not available", DELIVER_REACT_DEST_DEFER,
	 "service-unavailable"},
	/* throttle words in a 5xx bounce anyway */
	{"550 5.7.1 too many complaints", DELIVER_REACT_BOUNCE, "permanent"},
	{"550 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
	 DELIVER_REACT_BOUNCE, "permanent"},
	{"554 5.7.1 Service unavailable; client host blocked",
	 DELIVER_REACT_BOUNCE, "permanent"},
	/* not failures, or not replies */
	{"250 2.0.0 Ok", DELIVER_REACT_NONE, "none"},
	{"354 go ahead", DELIVER_REACT_NONE, "none"},
	{"", DELIVER_REACT_NONE, "none"},
	{"42", DELIVER_REACT_NONE, "none"},
	{"4211 4.7.28", DELIVER_REACT_NONE, "none"},
	{"621 4.7.28", DELIVER_REACT_NONE, "none"},
	{"461 4.7.28", DELIVER_REACT_NONE, "none"},
	{"abc", DELIVER_REACT_NONE, "none"},
	/* an enhanced code of the wrong class or shape is text, not a code */
	{"421 5.7.28 odd", DELIVER_REACT_DEST_DEFER, "service-unavailable"},
	{"450 4.7.28x", DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"450 4.7.2800 x", DELIVER_REACT_RCPT_DEFER, "temporary"},
	{"450 4.7.", DELIVER_REACT_RCPT_DEFER, "temporary"},
};

static void test_replies(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof reply_cases / sizeof *reply_cases; i++) {
		const struct reply_case *c = &reply_cases[i];
		const char *rule = NULL;
		enum deliver_reaction r =
			deliver_reply_classify_raw(c->reply, strlen(c->reply), &rule);
		if (r != c->want || !rule || strcmp(rule, c->rule) != 0)
			fail_msg("'%.60s': %s (%s), want %s (%s)", c->reply,
			         deliver_reaction_names[r], rule ? rule : "NULL",
			         deliver_reaction_names[c->want], c->rule);
	}
}

/* The throttle rows' lengths (README "Throttling and other replies"). */
static void test_throttle_secs(void **state)
{
	(void)state;
	assert_int_equal(deliver_reply_throttle_secs("gmail-4.7.28"), 90 * 60);
	assert_int_equal(deliver_reply_throttle_secs("microsoft-4.7.5xx-6xx"),
	                 90 * 60);
	assert_int_equal(deliver_reply_throttle_secs("yahoo-tss04"), 120 * 60);
	assert_int_equal(deliver_reply_throttle_secs("throttle-words"), 30 * 60);
	/* rows that do not throttle, and no row */
	assert_int_equal(deliver_reply_throttle_secs("greylist"), 0);
	assert_int_equal(deliver_reply_throttle_secs("service-unavailable"), 0);
	assert_int_equal(deliver_reply_throttle_secs("no-such-row"), 0);
	assert_int_equal(deliver_reply_throttle_secs(NULL), 0);
}

static void test_reply_parse(void **state)
{
	(void)state;
	struct deliver_reply r;
	assert_int_equal(deliver_reply_parse(S("421-4.7.28 first\r\n421 4.7.28 "
	                 "second\r\n"), &r), 0);
	assert_int_equal(r.code, 421);
	assert_int_equal(r.enh_class, 4);
	assert_int_equal(r.enh_subject, 7);
	assert_int_equal(r.enh_detail, 28);
	assert_int_equal(r.textlen, 5);
	assert_memory_equal(r.text, "first", 5);
	assert_int_equal(deliver_reply_parse(S("250"), &r), 0);
	assert_int_equal(r.code, 250);
	assert_int_equal(r.enh_class, 0);
	assert_int_equal(r.textlen, 0);
	assert_int_equal(deliver_reply_parse(S("452 Too many"), &r), 0);
	assert_int_equal(r.enh_class, 0);
	assert_int_equal(r.textlen, 8);
	assert_int_equal(deliver_reply_parse(S("45 x"), &r), -EINVAL);
	assert_int_equal(deliver_reply_parse(S("4x1 x"), &r), -EINVAL);
	assert_int_equal(deliver_reply_parse(S("461 x"), &r), -EINVAL);

	/* the struct form, as the client core passes it */
	struct deliver_reply x = {421, 4, 7, 28, "anything", 8};
	const char *rule;
	assert_int_equal(deliver_reply_classify(&x, &rule),
	                 DELIVER_REACT_DEST_THROTTLE);
	assert_string_equal(rule, "gmail-4.7.28");
	struct deliver_reply y = {450, 0, 0, 0, "Greylisted", 10};
	assert_int_equal(deliver_reply_classify(&y, &rule),
	                 DELIVER_REACT_RCPT_DEFER);
	assert_string_equal(rule, "greylist");
	assert_int_equal(deliver_reply_classify(NULL, &rule), DELIVER_REACT_NONE);
}

/* ---- destination_policy_file ----------------------------------------- */

static const struct file_case dest_files[] = {
	{"", 0, NULL},
	{"gmail-smtp-in.l.google.com concurrency=2 rate=60/min\n"
	 ".google.com rate=30/min,500/hour\nexample.org concurrency=1\n"
	 "example.net rate=100/hour concurrency=3 # both, any order\n", 0, NULL},
	{"example.org\n", -EINVAL, "dest:1: expected 'DESTINATION "
	 "concurrency=N rate=N/min|N/hour'"},
	{"example.org concurrency=0\n", -EINVAL, "dest:1: concurrency: not a "
	 "number from 1 to 1000: '0'"},
	{"example.org concurrency=1001\n", -EINVAL, "dest:1: concurrency: not "
	 "a number from 1 to 1000: '1001'"},
	{"example.org concurrency=\n", -EINVAL,
	 "dest:1: concurrency: not a number from 1 to 1000: ''"},
	{"example.org concurrency=-1\n", -EINVAL,
	 "dest:1: concurrency: not a number from 1 to 1000: '-1'"},
	{"example.org rate=30/day\n", -EINVAL,
	 "dest:1: rate: not N/min, N/hour or N/min,M/hour: '30/day'"},
	{"example.org rate=\n", -EINVAL,
	 "dest:1: rate: not N/min, N/hour or N/min,M/hour: ''"},
	{"example.org rate=0/min\n", -EINVAL,
	 "dest:1: rate: not N/min, N/hour or N/min,M/hour: '0/min'"},
	{"example.org speed=3\n", -EINVAL, "dest:1: unknown or repeated setting "
	 "'speed=3' (concurrency=N, rate=N/min|N/hour)"},
	{"example.org concurrency=1 concurrency=2\n", -EINVAL,
	 "dest:1: unknown or repeated setting 'concurrency=2' (concurrency=N, "
	 "rate=N/min|N/hour)"},
	{"example.org concurrency\n", -EINVAL, "dest:1: unknown or repeated "
	 "setting 'concurrency' (concurrency=N, rate=N/min|N/hour)"},
	{"exa_mple.org concurrency=1\nexa_mple.org. rate=1/min\n", -EINVAL,
	 "dest:2: 'exa_mple.org' is already on line 1"},
	{"-bad/name concurrency=1\n", -EINVAL,
	 "dest:1: not a domain or host name: '-bad/name'"},
};

static void test_dest_files(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof dest_files / sizeof *dest_files; i++) {
		const struct file_case *c = &dest_files[i];
		struct deliver_dest_policy *p = (void *)1;
		char err[256] = "";
		int rc = deliver_dest_policy_parse("dest", c->text, strlen(c->text),
		                                   &p, err, sizeof err);
		if (rc != c->rc)
			fail_msg("case %zu: rc %d, want %d (%s)", i, rc, c->rc, err);
		if (rc < 0) {
			assert_null(p);
			assert_string_equal(err, c->err);
		}
		deliver_dest_policy_free(p);
	}
}

static void test_dest_match(void **state)
{
	(void)state;
	static const char text[] =
		"gmail-smtp-in.l.google.com concurrency=2 rate=60/min\n"
		".google.com rate=30/min,500/hour\n"
		"example.org concurrency=8\n"
		"example.net rate=100/hour\n";
	char err[256];
	struct deliver_dest_policy *p;
	assert_int_equal(deliver_dest_policy_parse("dest", S(text), &p, err,
	                 sizeof err), 0);
	assert_int_equal(deliver_dest_policy_count(p), 4);

	/* Gmail's MX set: the exact host entry, and its alternates through
	 * ".google.com"; the smallest of each limit wins. */
	struct deliver_dest_limits lim = {0};
	deliver_dest_policy_match(p, "gmail-smtp-in.l.google.com", &lim);
	assert_true(lim.matched);
	assert_int_equal(lim.concurrency, 2);
	assert_int_equal(lim.per_minute, 60);
	assert_int_equal(lim.per_hour, 0);
	deliver_dest_policy_match(p, "alt1.gmail-smtp-in.l.google.com", &lim);
	assert_int_equal(lim.concurrency, 2);
	assert_int_equal(lim.per_minute, 30);
	assert_int_equal(lim.per_hour, 500);
	/* a domain routed to it that has no entry changes nothing */
	deliver_dest_policy_match(p, "customer.example", &lim);
	assert_int_equal(deliver_dest_concurrency(&lim, 5), 2);

	/* a recipient domain's entry may raise the default */
	struct deliver_dest_limits l2 = {0};
	deliver_dest_policy_match(p, "mx.example.org", &l2);
	assert_false(l2.matched);
	assert_int_equal(deliver_dest_concurrency(&l2, 5), 5);
	deliver_dest_policy_match(p, "EXAMPLE.ORG.", &l2);
	assert_true(l2.matched);
	assert_int_equal(deliver_dest_concurrency(&l2, 5), 8);
	/* two domains sharing the MX set: the smaller limits */
	deliver_dest_policy_match(p, "example.net", &l2);
	assert_int_equal(l2.concurrency, 8);
	assert_int_equal(l2.per_hour, 100);
	/* google.com itself is not below ".google.com" */
	struct deliver_dest_limits l3 = {0};
	deliver_dest_policy_match(p, "google.com", &l3);
	assert_false(l3.matched);
	deliver_dest_policy_match(NULL, "google.com", &l3);
	assert_false(l3.matched);
	deliver_dest_policy_free(p);
}

/* ---- relayd -t ------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_check_conf(void **state)
{
	(void)state;
	struct conf c;
	char err[512], tls[64], dest[64];
	assert_int_equal(conf_init(&c), 0);
	assert_int_equal(deliver_policy_check_conf(&c, err, sizeof err), 0);
	snprintf(tls, sizeof tls, "/tmp/relayd-test-tls.%d", (int)getpid());
	snprintf(dest, sizeof dest, "/tmp/relayd-test-dest.%d", (int)getpid());
	write_file(tls, "example.com verify\nexample.net sometimes\n");
	write_file(dest, "example.com concurrency=2\n");
	assert_int_equal(conf_set(&c, "tls_policy_file", tls, err, sizeof err),
	                 0);
	assert_int_equal(deliver_policy_check_conf(&c, err, sizeof err),
	                 -EINVAL);
	char want[256];
	snprintf(want, sizeof want, "tls_policy_file: %s:2: unknown level "
	         "'sometimes' (none, may, encrypt, verify)", tls);
	assert_string_equal(err, want);
	write_file(tls, "example.com verify\n");
	assert_int_equal(conf_set(&c, "destination_policy_file", dest, err,
	                 sizeof err), 0);
	assert_int_equal(deliver_policy_check_conf(&c, err, sizeof err), 0);
	unlink(dest);
	assert_int_equal(deliver_policy_check_conf(&c, err, sizeof err),
	                 -ENOENT);
	snprintf(want, sizeof want, "destination_policy_file: cannot read %s: "
	         "No such file or directory", dest);
	assert_string_equal(err, want);
	unlink(tls);
	conf_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls_files),
		cmocka_unit_test(test_tls_long_line_and_count),
		cmocka_unit_test(test_tls_lookup),
		cmocka_unit_test(test_tls_decide),
		cmocka_unit_test(test_words),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_throttle_secs),
		cmocka_unit_test(test_reply_parse),
		cmocka_unit_test(test_dest_files),
		cmocka_unit_test(test_dest_match),
		cmocka_unit_test(test_check_conf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
