/*
 * tests/fuzz/fuzz_sendmail_bs.c - libFuzzer harness for relayd-sendmail
 * -bs's pure core (tools/sendmail_bs.c). The input as command lines:
 * each verb's argument lies within its line, a path is "<...>" within
 * the argument and bounded. The input as DATA, cut into pieces of a size
 * the first byte picks: the dot reader's output must equal a plain
 * line-by-line reference (the first "." line ends the message; a leading
 * dot is removed from other lines).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/sendmail_bs.h"

static void commands(const char *in, size_t size)
{
	size_t i = 0;
	while (i < size) {
		const char *line = in + i;
		const char *lf = memchr(line, '\n', size - i);
		size_t n = lf ? (size_t)(lf - line) : size - i;
		i += n + 1;
		const char *arg;
		enum sm_bs_verb v = sm_bs_command(line, n, &arg);
		if (arg < line || arg > line + n || v > SM_BS_BAD)
			abort();
		char out[64];
		size_t rest, an = (size_t)(line + n - arg);
		if (sm_bs_path(arg, an, out, sizeof out - 1, &rest) == 0) {
			size_t ol = strlen(out);
			if (ol > sizeof out - 1 || ol != rest || rest > an ||
			    out[0] != '<' || out[ol - 1] != '>')
				abort();
		}
	}
}

/* The reference: whole lines. */
static size_t reference(const char *in, size_t size, char *out, bool *ended)
{
	size_t i = 0, o = 0;
	*ended = false;
	while (i < size) {
		const char *line = in + i;
		const char *lf = memchr(line, '\n', size - i);
		size_t n = lf ? (size_t)(lf - line) : size - i;
		i += n + 1;
		bool end = true;
		if (n == 1 && line[0] == '.' && end) {
			*ended = true;
			break;
		}
		if (n > 0 && line[0] == '.') {
			line++;
			n--;
		}
		memcpy(out + o, line, n);
		o += n;
		out[o++] = '\n';
	}
	return o;
}

static void data(const char *in, size_t size)
{
	if (size == 0)
		return;
	size_t piece = (unsigned char)in[0] % 7 + 1;
	in++;
	size--;
	char *want = malloc(size * 2 + 1), *got = malloc(size * 2 + 1);
	if (!want || !got)
		abort();
	bool ended;
	size_t wn = reference(in, size, want, &ended), gn = 0;
	struct sm_bs_dot d;
	sm_bs_dot_init(&d);
	bool got_end = false;
	size_t i = 0;
	while (i < size && !got_end) {
		/* A piece: up to `piece` bytes, ending at a LF (not kept). */
		const char *p = in + i;
		size_t n = 0;
		bool end = false;
		while (i < size && n < piece) {
			if (in[i] == '\n') {
				end = true;
				i++;
				break;
			}
			n++;
			i++;
		}
		if (i == size && !end)
			end = true;   /* a last line without LF */
		if (sm_bs_dot_piece(&d, &p, &n, end)) {
			got_end = true;
			break;
		}
		if (p < in || p + n > in + size)
			abort();
		memcpy(got + gn, p, n);
		gn += n;
		if (end)
			got[gn++] = '\n';
	}
	if (got_end != ended || gn != wn || memcmp(got, want, wn) != 0)
		abort();
	free(want);
	free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t size)
{
	commands((const char *)d, size);
	data((const char *)d, size);
	return 0;
}
