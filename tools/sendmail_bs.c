/*
 * tools/sendmail_bs.c - The pure core of `relayd-sendmail -bs`: command
 * lines to verbs and arguments, MAIL/RCPT paths, and the end of DATA.
 * See sendmail_bs.h.
 */
#include "tools/sendmail_bs.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

/* Whether line[0..n) starts with w (case-insensitive) and then ends, or
 * has a blank, or w ends with ':'. */
static bool verb_is(const char *line, size_t n, const char *w, size_t *len)
{
	size_t l = strlen(w);
	if (n < l || strncasecmp(line, w, l) != 0)
		return false;
	if (!(n == l || w[l - 1] == ':' || line[l] == ' '))
		return false;
	*len = l;
	return true;
}

enum sm_bs_verb sm_bs_command(const char *line, size_t n, const char **arg)
{
	static const struct {
		const char *w;
		enum sm_bs_verb v;
	} verbs[] = {
		{"EHLO", SM_BS_EHLO}, {"HELO", SM_BS_HELO},
		{"MAIL FROM:", SM_BS_MAIL}, {"RCPT TO:", SM_BS_RCPT},
		{"DATA", SM_BS_DATA}, {"RSET", SM_BS_RSET}, {"NOOP", SM_BS_NOOP},
		{"VRFY", SM_BS_VRFY}, {"QUIT", SM_BS_QUIT},
	};
	*arg = line + n;
	if (memchr(line, '\0', n))
		return SM_BS_BAD;
	for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++) {
		size_t l;
		if (!verb_is(line, n, verbs[i].w, &l))
			continue;
		const char *a = line + l;
		while (a < line + n && *a == ' ')
			a++;
		*arg = a;
		return verbs[i].v;
	}
	return SM_BS_UNKNOWN;
}

int sm_bs_path(const char *arg, size_t n, char *out, size_t max,
               size_t *rest)
{
	if (n == 0 || arg[0] != '<')
		return -EINVAL;
	const char *gt = memchr(arg, '>', n);
	if (!gt)
		return -EINVAL;
	size_t l = (size_t)(gt - arg) + 1;
	if (l > max)
		return -EINVAL;
	memcpy(out, arg, l);
	out[l] = '\0';
	*rest = l;
	return 0;
}

void sm_bs_dot_init(struct sm_bs_dot *d)
{
	d->bol = true;
	d->dot = false;
}

int sm_bs_dot_piece(struct sm_bs_dot *d, const char **p, size_t *n, bool end)
{
	bool bol = d->bol, dot = d->dot;
	d->bol = end;
	d->dot = false;
	/* A line "." cut after its dot: whether it ends the message shows in
	 * the next piece (the dot is dropped either way). */
	if (dot)
		return *n == 0 && end;
	if (!bol || *n == 0 || (*p)[0] != '.')
		return 0;
	if (*n == 1 && end)
		return 1;
	d->dot = *n == 1;
	(*p)++;
	(*n)--;
	return 0;
}
