/*
 * tests/fuzz/fuzz_dkim_record.c - libFuzzer harness for dkim/dkim_key.c:
 * dkim_key_match()'s parser of served DKIM key records (RFC 6376 §3.2
 * tag lists, §3.6.1 tags) against a fixed RSA-1024 and a fixed Ed25519
 * key (test-only keys, below, so the corpus can hold their exact
 * records), and dkim_key_parse_line() on the same bytes. The first byte
 * picks the key (even: RSA, odd: Ed25519); the rest is the record. Every
 * input must give 0, 1 or -EINVAL with a reason, never a crash, leak or
 * overread.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim_key.h"

/* Test keys, never used for mail. */
static const char rsa_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBAMEH7utnKrS6zFsv\n"
	"om/5EZbSiE6SFsr0+jzQJhUe4p8bKVNQkXOZDZ69zDpGx2MDfP18XOtS025Kc+nm\n"
	"w10uV4Efaryf35e8nY7dHhixVOoU9oEoxNRTErCedraF192ZLMAlokWXB9UhnR8R\n"
	"ukjldGrklZpQ7/cCVkEASZkj+TxLAgMBAAECgYEAuq2Fbbs0HdyZTYZfvZJOZGHu\n"
	"2K2HxXftmWpjqgFYgS6vZJeCUx0tgtti6ukQYr0435yp8BsFxp/SQd6eCTuL+u+6\n"
	"QDtkVNGg67zJFm+U+e3LuvK/wjbwcSJzG/Kyr8Uh+lw1N904jBFLIP/V1CKrAa1p\n"
	"JAQLwASLnSIp9+zErMECQQD2br1+1ozhw+iWinxE7Vk1lKFKZiIfupXqGOSO6sga\n"
	"lGIOPUlyk8nW+iVvCTdgJT7vyEy9IS+LNzJoUpNpdSQ5AkEAyIZxI5HSlwjFxiUm\n"
	"7jl7PnTrhgwmCCnIhVV5Ri3o++oKcLWbDEwyakpdESBOYV1OqKUZkJPOwC68+tiw\n"
	"KzSMowJBAN2qAt3Ck3rIQ8CV1O4TKPlfNi277NnpdcvalExRt6jg68qvKg/cC+RJ\n"
	"ob5c5eif2BrLaut8nE13WuonzN1BN1ECQBy00mGLMKCaiuWQz//ujqwkRMtN1ev5\n"
	"P1GHKPNZAy99E72K4gViqxz4RFZ9T3s0xlvyNrSx1DlC957Zgm7M+Q0CQGn0VAjk\n"
	"yNLLfOC23Jbes4i/TCRe9ElmCxWbViXV6hUBkZCLXlXgtR9Z9H1Iw/qMdIwwWbKw\n"
	"4cHcLMtyA6SrNeI=\n"
	"-----END PRIVATE KEY-----\n"
	;
static const char ed_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MC4CAQAwBQYDK2VwBCIEIF2WSuobcQsqHQwjh1eUV1JKvvFwovH7xF53MafSWXFT\n"
	"-----END PRIVATE KEY-----\n"
	;

static struct dkim_key *keys[2];

static struct dkim_key *key(int which)
{
	if (!keys[which]) {
		struct dkim_key_spec s = {"example.com", "fuzz", "/fuzz.key"};
		const char *pem = which ? ed_pem : rsa_pem;
		char err[256];
		if (dkim_key_from_pem(&s, pem, strlen(pem), &keys[which], err,
		                      sizeof err) != 0)
			abort();
	}
	return keys[which];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct dkim_key *k = key(data[0] & 1);
	char why[256];
	why[0] = 'x';
	int r = dkim_key_match(k, (const char *)data + 1, size - 1, why,
	                       sizeof why);
	if (r != 0 && r != 1 && r != -EINVAL)
		abort();
	if (r != 0 && why[0] == '\0')
		abort();   /* every refusal says why */
	if (strlen(why) >= sizeof why)
		abort();

	/* The same bytes as a dkim_key value (cut at the first NUL). */
	char *line = malloc(size);
	if (!line)
		return 0;
	memcpy(line, data + 1, size - 1);
	line[size - 1] = '\0';
	struct dkim_key_spec spec;
	char err[256];
	err[0] = '\0';
	r = dkim_key_parse_line(line, &spec, err, sizeof err);
	if (r != 0 && (r != -EINVAL || err[0] == '\0'))
		abort();
	if (r == 0 && (spec.path[0] != '/' || spec.domain[0] == '\0' ||
	               spec.selector[0] == '\0'))
		abort();
	free(line);
	return 0;
}
