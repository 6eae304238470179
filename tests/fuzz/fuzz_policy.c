/*
 * tests/fuzz/fuzz_policy.c - libFuzzer harness for deliver/deliver_policy.c:
 * the tls_policy_file and destination_policy_file parsers (then lookups of
 * names taken from the same input) and the reply classifier (with the
 * throttle rows' lengths). The first
 * byte picks the target; the rest is the input. Any bytes must give a
 * result or an error that explains itself, never a crash, leak or
 * overread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/deliver_policy.h"

/* Names to look up: the input's lines, each cut to a C string. */
static void lookups(const uint8_t *d, size_t n,
                    const struct deliver_tls_policy *tp,
                    const struct deliver_dest_policy *dp)
{
	char name[300];
	size_t done = 0;
	for (size_t i = 0; i < n && done < 64; done++) {
		size_t j = i;
		while (j < n && d[j] != '\n' && j - i < sizeof name - 1)
			j++;
		memcpy(name, d + i, j - i);
		name[j - i] = '\0';
		i = j + 1;
		/* the first word, as a caller would pass a domain */
		name[strcspn(name, " \t#")] = '\0';
		enum deliver_tls_source src;
		enum deliver_tls_level l = deliver_tls_policy_lookup(tp, name, &src);
		if ((unsigned)l >= DELIVER_TLS__COUNT)
			abort();
		struct deliver_tls_decision dec;
		struct deliver_tls_input in = {l, src, name, (done & 1) != 0};
		if (deliver_tls_decide(&in, &dec) == 0 && dec.required &&
		    dec.plain_retry)
			abort();   /* encrypt/verify never fall back */
		struct deliver_dest_limits lim = {0};
		deliver_dest_policy_match(dp, name, &lim);
		if (lim.concurrency > 1000)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	if (size < 1)
		return 0;
	const char *s = (const char *)data + 1;
	size_t n = size - 1;
	err[0] = '\0';
	switch (data[0] % 4) {
	case 0: {
		struct deliver_tls_policy *p = NULL;
		if (deliver_tls_policy_parse("fuzz", s, n, &p, err, sizeof err) < 0) {
			if (!err[0] || p)
				abort();
			break;
		}
		lookups(data + 1, n, p, NULL);
		deliver_tls_policy_free(p);
		break;
	}
	case 1: {
		struct deliver_dest_policy *p = NULL;
		if (deliver_dest_policy_parse("fuzz", s, n, &p, err, sizeof err) < 0) {
			if (!err[0] || p)
				abort();
			break;
		}
		lookups(data + 1, n, NULL, p);
		deliver_dest_policy_free(p);
		break;
	}
	case 2: {
		const char *rule = NULL;
		enum deliver_reaction r = deliver_reply_classify_raw(s, n, &rule);
		if ((unsigned)r >= DELIVER_REACT__COUNT || !rule)
			abort();
		/* a throttle always says for how long; nothing else does */
		if ((r == DELIVER_REACT_DEST_THROTTLE) !=
		    (deliver_reply_throttle_secs(rule) > 0))
			abort();
		struct deliver_reply rep;
		if (deliver_reply_parse(s, n, &rep) == 0 &&
		    (rep.text < s || rep.text + rep.textlen > s + n))
			abort();
		break;
	}
	default: {
		/* a parsed reply with arbitrary numbers, and a phrase */
		if (n < 4)
			break;
		struct deliver_reply r = {
			.code = 400 + data[1] % 200, .enh_class = data[2] % 6,
			.enh_subject = data[3] % 10, .enh_detail = data[4 % n] * 3,
			.text = s + 4, .textlen = n - 4};
		const char *rule = NULL;
		if ((unsigned)deliver_reply_classify(&r, &rule) >=
		    DELIVER_REACT__COUNT || !rule)
			abort();
		(void)deliver_text_has_words(s + 4, n - 4, "too many");
		break;
	}
	}
	return 0;
}
