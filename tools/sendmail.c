/*
 * tools/sendmail.c - relayd-sendmail: the sendmail(8) command of relayd
 * for cron, PHP's mail(), scripts. Reads a message on stdin (bare LF made
 * CRLF, bounded by max_message_size, streamed to an unlinked temp file),
 * adds Date, Message-ID and From when missing and a Received line naming
 * the local user, then hands it to relayd:
 *
 *   1. over SMTP to relayd's first loopback (or wildcard) listener; the
 *      250 is success. A 5xx is the caller's error (EX_DATAERR/EX_NOPERM).
 *   2. a 4xx, no connection, a timeout: the message goes to the maildrop,
 *      SPOOL/maildrop/, one file per message written to a dot name,
 *      fsynced, renamed, the directory fsynced (Postfix's postdrop model:
 *      the directory is relayd's, group relayd-drop, mode 1730; this
 *      program is installed setgid relayd-drop and holds that group only
 *      for the open of that file).
 *
 * `relayd-sendmail --import` is what relayd runs (as its own user) at
 * start and every SM_IMPORT_PERIOD seconds (smtpd/smtpd_maildrop.c): it
 * submits each maildrop file over loopback SMTP like (1) and unlinks it
 * after the 250; a 5xx moves it to maildrop/bad/ with a log line; a 4xx
 * leaves it for the next run. So everything goes through relayd's own
 * acceptance path (limits, scrubbing, signing).
 *
 * -bp and -q run relayctl list / relayctl flush.
 *
 * Exit status: sysexits.h.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "common/addr.h"
#include "common/buf.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/smtp.h"
#include "tools/sendmail_bs.h"

extern char **environ;

#define SM_PROG "relayd-sendmail"
#define SM_DEFAULT_CONF "/etc/relayd/relayd.conf"
#define SM_MAILDROP "maildrop"
#define SM_MAGIC "relayd-maildrop 1"
/* The header section is kept in memory (for -t and the fields to add):
 * bounded, a message with more is refused. */
#define SM_HDR_MAX (1024 * 1024)
#define SM_RCPT_MAX 1000
/* Each SMTP step (connect, a reply, a write) within this. */
#define SM_IO_TIMEOUT_MS 60000
#define SM_REPLY_LINE_MAX 1024
#define SM_REPLY_LINES_MAX 64
/* A maildrop file's envelope lines. */
#define SM_ENV_LINE_MAX 1100

struct sm {
	const char *conf_path;
	bool conf_explicit;
	struct conf conf;
	bool opt_t, opt_i, verbose;
	const char *from;           /* -f / -r */
	const char *fullname;       /* -F */
	char sender[SMTP_PATH_MAX + 1];
	char *rcpt[SM_RCPT_MAX];
	size_t nrcpt;
	uid_t uid;
	char user[64];
	gid_t drop_gid;             /* the setgid group, or -1 */
};

static void sm_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sm_err(const char *fmt, ...)
{
	va_list ap;
	fputs(SM_PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: " SM_PROG " [-t] [-i] [-f ADDR] [-F NAME] [-C FILE] [-v] "
	        "[--] [RCPT...] < message\n"
	        "       " SM_PROG " -bs  (SMTP on stdin and stdout)\n"
	        "       " SM_PROG " -bp | -q\n"
	        "  -t        recipients from To, Cc and Bcc (Bcc is removed)\n"
	        "  -i, -oi   a line with a lone '.' does not end the message\n"
	        "  -f ADDR   envelope sender (also -r); default user@hostname\n"
	        "  -F NAME   full name for the From field that is added\n"
	        "  -C FILE   relayd's configuration (default $RELAYD_CONFIG, "
	        "else " SM_DEFAULT_CONF ")\n"
	        "  -bm       deliver (the default); -bs: speak SMTP on stdin/stdout;\n"
	        "            -bp: the queue; -q: flush it\n"
	        "  -v        say where the message went\n"
	        "Other -o options, -B, -N, -R, -V and -X are accepted and ignored.\n"
	        "Exit status per sysexits.h: 0 ok, 64 usage, 65 bad address or "
	        "message, 75 try again later.\n");
}

#ifdef __SANITIZE_ADDRESS__
#include <sys/prctl.h>
/* LeakSanitizer's hook: it cannot inspect a setgid process (not dumpable,
 * so it cannot ptrace itself) and fails the run instead; the same code
 * runs leak-checked when not setgid. Only in sanitizer builds. */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
	return prctl(PR_GET_DUMPABLE) != 1;
}
#endif

/* ---- configuration --------------------------------------------------- */

static int sm_conf_load(struct sm *s)
{
	char err[512] = "";
	int r;
	const char *env = getenv("RELAYD_CONFIG");
	if (!s->conf_path && env && env[0]) {
		s->conf_path = env;
		s->conf_explicit = true;
	}
	if (!s->conf_path)
		s->conf_path = SM_DEFAULT_CONF;
	if (!s->conf_explicit && access(s->conf_path, F_OK) != 0 &&
	    errno == ENOENT) {
		/* As relayctl: built-in defaults plus RELAYD_<KEY>. */
		s->conf_path = NULL;
		r = conf_init(&s->conf);
		if (r == 0)
			r = conf_apply_env(&s->conf, environ, err, sizeof err);
	} else {
		r = conf_load(&s->conf, s->conf_path, err, sizeof err);
	}
	if (r < 0) {
		sm_err("%s", err[0] ? err : strerror(-r));
		return EX_CONFIG;
	}
	return 0;
}

/* Real, effective and saved group: the real one (the setgid group gone,
 * for good). */
static int sm_drop_group_for_good(void)
{
	gid_t g = getgid();
	return setresgid(g, g, g);
}

/*
 * Installed setgid and run by someone other than root, the caller chooses
 * nothing that decides where and how much the maildrop group writes (as
 * Postfix's postdrop ignores MAIL_CONFIG): RELAYD_<KEY> variables are
 * dropped, and -C names a file only if it is root's and writable by no
 * one else. 0 or an exit status.
 */
static int sm_setgid_guard(struct sm *s)
{
	if (s->drop_gid == (gid_t)-1 || getuid() == 0)
		return 0;
	for (;;) {
		char name[256];
		size_t k = 0;
		for (char **e = environ; e && *e; e++)
			if (strncmp(*e, "RELAYD_", 7) == 0) {
				k = strcspn(*e, "=");
				if (k >= sizeof name)
					k = sizeof name - 1;
				memcpy(name, *e, k);
				name[k] = '\0';
				break;
			}
		if (k == 0)
			break;
		if (unsetenv(name) < 0)
			return EX_OSERR;
	}
	if (s->conf_path) {
		struct stat st;
		int fd = open(s->conf_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		int bad = fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
		          st.st_uid != 0 || (st.st_mode & 022);
		if (fd >= 0)
			close(fd);
		if (bad) {
			sm_err("-C %s: a setgid relayd-sendmail reads only a "
			       "configuration file of root's that no one else may "
			       "write", s->conf_path);
			return EX_NOPERM;
		}
	}
	return 0;
}

/* ---- -bp, -q: relayctl ------------------------------------------------ */

static int sm_relayctl(struct sm *s, const char *cmd)
{
	char self[PATH_MAX], path[PATH_MAX + 32];
	const char *argv[6];
	int n = 0;
	/* No setgid group beyond this point. */
	if (sm_drop_group_for_good() < 0) {
		sm_err("cannot drop the group: %s", strerror(errno));
		return EX_OSERR;
	}
	argv[n++] = "relayctl";
	if (s->conf_path) {
		argv[n++] = "-c";
		argv[n++] = s->conf_path;
	}
	argv[n++] = cmd;
	argv[n] = NULL;
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	if (k > 0) {
		self[k] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			/* build/: side by side; installed: sbin/ and bin/. */
			const char *cand[] = {"%s/relayctl", "%s/../bin/relayctl"};
			for (size_t i = 0; i < 2; i++) {
				snprintf(path, sizeof path, cand[i], self);
				if (access(path, X_OK) == 0) {
					execv(path, (char **)argv);
					break;
				}
			}
		}
	}
	execvp("relayctl", (char **)argv);
	sm_err("cannot run relayctl: %s", strerror(errno));
	return EX_UNAVAILABLE;
}

/* ---- addresses --------------------------------------------------------- */

static int sm_add_rcpt(struct sm *s, const char *addr)
{
	for (size_t i = 0; i < s->nrcpt; i++)
		if (strcmp(s->rcpt[i], addr) == 0)
			return 0;
	if (s->nrcpt == SM_RCPT_MAX ||
	    s->nrcpt >= s->conf.max_recipients) {
		sm_err("too many recipients (at most %u)",
		       s->conf.max_recipients < SM_RCPT_MAX ?
		       s->conf.max_recipients : SM_RCPT_MAX);
		return EX_DATAERR;
	}
	s->rcpt[s->nrcpt] = strdup(addr);
	if (!s->rcpt[s->nrcpt])
		return EX_OSERR;
	s->nrcpt++;
	return 0;
}

/* A command-line address: "a@b", "<a@b>"; a bare local part gets
 * @hostname (as sendmail). out: SMTP_PATH_MAX + 1. */
static int sm_parse_arg_addr(const struct sm *s, const char *in,
                             bool null_ok, char *out)
{
	char tmp[SMTP_PATH_MAX + 8];
	size_t n = strlen(in), used = 0;
	if (n == 0 || n > SMTP_PATH_MAX)
		return -EINVAL;
	if (in[0] == '<')
		snprintf(tmp, sizeof tmp, "%s", in);
	else
		snprintf(tmp, sizeof tmp, "<%s>", in);
	int r = addr_parse_path(tmp, strlen(tmp),
	                        ADDR_ALLOW_UTF8 | (null_ok ? ADDR_ALLOW_NULL : 0),
	                        out, SMTP_PATH_MAX + 1, &used);
	if (r < 0 || used != strlen(tmp))
		return -EINVAL;
	if (out[0] && !addr_domain(out)) {
		if (strlen(out) + 1 + strlen(s->conf.hostname) > SMTP_PATH_MAX)
			return -EINVAL;
		strcat(out, "@");
		strcat(out, s->conf.hostname);
	}
	return 0;
}

static int sm_hdr_rcpt_cb(void *ctx, const char *addr)
{
	struct sm *s = ctx;
	char full[SMTP_PATH_MAX + 1];
	if (!addr_domain(addr)) {
		if (strlen(addr) + 1 + strlen(s->conf.hostname) > SMTP_PATH_MAX)
			return -ENAMETOOLONG;
		if (snprintf(full, sizeof full, "%s@%s", addr,
		             s->conf.hostname) >= (int)sizeof full)
			return -ENAMETOOLONG;
		addr = full;
	}
	int r = sm_add_rcpt(s, addr);
	return r ? -E2BIG : 0;
}

/* ---- reading the message ---------------------------------------------- */

struct sm_msg {
	FILE *body;                 /* temp file: the whole message, CRLF */
	uint64_t size;
	struct buf hdr;             /* the header section as read, CRLF */
	bool has_from, has_date, has_msgid;
};

static bool field_is(const char *line, size_t n, const char *name)
{
	size_t k = strlen(name);
	if (n <= k || strncasecmp(line, name, k) != 0)
		return false;
	size_t i = k;
	while (i < n && (line[i] == ' ' || line[i] == '\t'))
		i++;
	return i < n && line[i] == ':';
}

/* One header field (with its continuation lines) of `hdr`, at [p, e). */
static int sm_header_field(struct sm *s, struct sm_msg *m, const char *p,
                           size_t n, struct buf *kept)
{
	if (field_is(p, n, "From"))
		m->has_from = true;
	if (field_is(p, n, "Date"))
		m->has_date = true;
	if (field_is(p, n, "Message-ID"))
		m->has_msgid = true;
	bool bcc = field_is(p, n, "Bcc");
	if (s->opt_t && (bcc || field_is(p, n, "To") || field_is(p, n, "Cc"))) {
		const char *colon = memchr(p, ':', n);
		int r = addr_parse_mailbox_list(colon + 1,
		                                n - (size_t)(colon + 1 - p),
		                                sm_hdr_rcpt_cb, s);
		if (r == -E2BIG)
			return EX_DATAERR;
		if (r < 0) {
			sm_err("bad address in the %.*s field",
			       (int)(colon - p), p);
			return EX_DATAERR;
		}
	}
	if (bcc)
		return 0;               /* Bcc is never sent on */
	return buf_append(kept, p, n) < 0 ? EX_OSERR : 0;
}

static void fmt_date(char *dst, size_t n, time_t t)
{
	struct tm tm;
	localtime_r(&t, &tm);
	strftime(dst, n, "%a, %d %b %Y %H:%M:%S %z", &tm);
}

/* A display name as a quoted-string, without CR/LF (no header injection). */
static void sm_quote_name(struct buf *b, const char *name)
{
	buf_appends(b, "\"");
	for (const char *p = name; *p; p++) {
		if (*p == '\r' || *p == '\n')
			continue;
		if (*p == '"' || *p == '\\')
			buf_appends(b, "\\");
		buf_append(b, p, 1);
	}
	buf_appends(b, "\"");
}

/* The header section is complete in m->hdr: the fields to add, then the
 * kept ones, then the empty line, go to the temp file. */
static int sm_write_header(struct sm *s, struct sm_msg *m, bool had_empty)
{
	struct buf kept = BUF_INIT(SM_HDR_MAX + 4096);
	struct buf add = BUF_INIT(8192);
	const char *p = (const char *)m->hdr.data, *e = p + m->hdr.len;
	int rc = 0;
	while (p < e && rc == 0) {
		const char *q = p;
		/* A field runs to the CRLF not followed by SP/HT. */
		for (;;) {
			const char *lf = memchr(q, '\n', (size_t)(e - q));
			q = lf ? lf + 1 : e;
			if (q >= e || (*q != ' ' && *q != '\t'))
				break;
		}
		rc = sm_header_field(s, m, p, (size_t)(q - p), &kept);
		p = q;
	}
	if (rc)
		goto out;
	char date[64];
	time_t now = time(NULL);
	fmt_date(date, sizeof date, now);
	buf_printf(&add, "Received: from local user %s (uid %u)\r\n\tby %s "
	           "(relayd-sendmail); %s\r\n", s->user, (unsigned)s->uid,
	           s->conf.hostname, date);
	if (!m->has_date)
		buf_printf(&add, "Date: %s\r\n", date);
	if (!m->has_msgid) {
		uint64_t rnd = 0;
		if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
			rnd = (uint64_t)now ^ ((uint64_t)getpid() << 20);
		struct tm tm;
		char ts[32];
		gmtime_r(&now, &tm);
		strftime(ts, sizeof ts, "%Y%m%d%H%M%S", &tm);
		buf_printf(&add, "Message-ID: <%s.%ld.%016" PRIx64 "@%s>\r\n", ts,
		           (long)getpid(), rnd, s->conf.hostname);
	}
	if (!m->has_from) {
		buf_appends(&add, "From: ");
		if (s->fullname && s->fullname[0]) {
			sm_quote_name(&add, s->fullname);
			buf_printf(&add, " <%s>\r\n", s->sender[0] ? s->sender :
			           "MAILER-DAEMON");
		} else {
			buf_printf(&add, "%s\r\n", s->sender[0] ? s->sender :
			           "MAILER-DAEMON");
		}
	}
	if (add.len + kept.len + 2 > s->conf.max_message_size) {
		rc = EX_DATAERR;
		sm_err("message too big: relayd takes at most %" PRIu64 " bytes "
		       "(max_message_size)", s->conf.max_message_size);
		goto out;
	}
	if (fwrite(add.data, 1, add.len, m->body) != add.len ||
	    (kept.len && fwrite(kept.data, 1, kept.len, m->body) != kept.len) ||
	    (had_empty && fwrite("\r\n", 1, 2, m->body) != 2)) {
		sm_err("cannot write a temporary file: %s", strerror(errno));
		rc = EX_CANTCREAT;
		goto out;
	}
	m->size += add.len + kept.len + (had_empty ? 2 : 0);
out:
	buf_free(&kept);
	buf_free(&add);
	return rc;
}

/*
 * in (stdin, or -bs's DATA) to m->body: lines end in LF, CRLF or a lone CR, and are written
 * with CRLF. Without -i a line "." ends the message. The header section
 * (up to the first empty line, or a line that cannot be a field) is held
 * in m->hdr, then written behind the added fields.
 */
static int sm_read_message(struct sm *s, struct sm_msg *m, FILE *in)
{
	char line[1000];
	size_t n = 0;
	bool in_hdr = true, first = true, eof = false;
	int rc = 0;
	uint64_t limit = s->conf.max_message_size;
	m->body = tmpfile();
	if (!m->body) {
		sm_err("cannot create a temporary file: %s", strerror(errno));
		return EX_CANTCREAT;
	}
	buf_init(&m->hdr, SM_HDR_MAX);
	while (!eof && rc == 0) {
		/* One line, in pieces of up to sizeof line bytes. */
		bool end = false, piece_first = true;
		bool saw_cr = false;
		n = 0;
		while (!end) {
			int c = getc(in);
			if (c == EOF) {
				eof = true;
				if (n == 0 && piece_first)
					goto done;
				break;
			}
			if (saw_cr && c != '\n') {
				ungetc(c, in);
				end = true;
				break;
			}
			if (c == '\r') {
				saw_cr = true;
				continue;
			}
			if (c == '\n') {
				end = true;
				break;
			}
			line[n++] = (char)c;
			if (n == sizeof line) {
				/* A long line: write what we have, go on. */
				if (in_hdr) {
					if (buf_append(&m->hdr, line, n) < 0) {
						sm_err("header section too large "
						       "(more than %d bytes)", SM_HDR_MAX);
						return EX_DATAERR;
					}
				} else if (fwrite(line, 1, n, m->body) != n) {
					goto werr;
				}
				m->size += in_hdr ? 0 : n;
				n = 0;
				piece_first = false;
				/* A line without end is bounded too. */
				if (m->size > limit) {
					sm_err("message too big: relayd takes at most %"
					       PRIu64 " bytes (max_message_size)", limit);
					return EX_DATAERR;
				}
			}
		}
		if (eof && n == 0 && piece_first)
			break;
		if (!s->opt_i && piece_first && n == 1 && line[0] == '.')
			break;
		if (in_hdr && piece_first) {
			/* Does this line still belong to the header section? */
			bool cont = n > 0 && (line[0] == ' ' || line[0] == '\t');
			bool field = false;
			if (n > 0 && !cont) {
				size_t i = 0;
				while (i < n && line[i] > 32 && line[i] < 127 &&
				       line[i] != ':')
					i++;
				size_t j = i;
				while (j < n && (line[j] == ' ' || line[j] == '\t'))
					j++;
				field = i > 0 && j < n && line[j] == ':';
			}
			if (n == 0 || (!field && !(cont && !first))) {
				/* The empty line is written either way: a message
				 * that starts with body text (no header fields) gets
				 * the added fields, then the empty line, then it. */
				in_hdr = false;
				rc = sm_write_header(s, m, true);
				if (rc)
					return rc;
				if (n == 0)
					continue;   /* the empty line is written */
			}
		}
		first = false;
		if (in_hdr) {
			if (buf_append(&m->hdr, line, n) < 0 ||
			    buf_append(&m->hdr, "\r\n", 2) < 0) {
				sm_err("header section too large (more than %d "
				       "bytes)", SM_HDR_MAX);
				return EX_DATAERR;
			}
			continue;
		}
		if (fwrite(line, 1, n, m->body) != n ||
		    fwrite("\r\n", 1, 2, m->body) != 2)
			goto werr;
		m->size += n + 2;
		if (m->size > limit) {
			sm_err("message too big: relayd takes at most %" PRIu64
			       " bytes (max_message_size)", limit);
			return EX_DATAERR;
		}
	}
done:
	if (in_hdr) {
		/* Only a header section (or nothing): the empty line ends it. */
		rc = sm_write_header(s, m, true);
		if (rc)
			return rc;
	}
	if (m->size > limit) {
		sm_err("message too big: relayd takes at most %" PRIu64
		       " bytes (max_message_size)", limit);
		return EX_DATAERR;
	}
	if (ferror(in)) {
		sm_err("reading the message: %s", strerror(errno));
		return EX_IOERR;
	}
	if (fflush(m->body) != 0)
		goto werr;
	return 0;
werr:
	sm_err("cannot write a temporary file: %s", strerror(errno));
	return EX_CANTCREAT;
}

/* ---- SMTP to relayd --------------------------------------------------- */

enum { SM_SENT, SM_TEMP, SM_PERM };

struct sm_conn {
	int fd;
	char rbuf[4096];
	size_t rlen;
	char text[SM_REPLY_LINE_MAX];   /* the last reply, one line, for errors */
	int code;
};

static int sm_io_wait(int fd, short ev)
{
	struct pollfd p = {.fd = fd, .events = ev};
	int r;
	do
		r = poll(&p, 1, SM_IO_TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	return r == 1 ? 0 : r == 0 ? -ETIMEDOUT : -errno;
}

/* The listener to submit to: the first loopback or wildcard one that
 * speaks plain SMTP (smtps would need TLS). */
static int sm_connect(const struct conf *c, struct sm_conn *k)
{
	for (size_t i = 0; i < c->nlisten; i++) {
		const struct conf_listen *l = &c->listen[i];
		if (l->mode == CONF_LISTEN_SMTPS)
			continue;
		struct sockaddr_storage ss = {0};
		socklen_t sl;
		if (l->ipv6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			a->sin6_family = AF_INET6;
			a->sin6_port = htons(l->port);
			if (inet_pton(AF_INET6, l->host, &a->sin6_addr) != 1)
				continue;
			if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
				a->sin6_addr = in6addr_loopback;
			else if (!IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
				continue;
			sl = sizeof *a;
		} else {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			a->sin_family = AF_INET;
			a->sin_port = htons(l->port);
			if (inet_pton(AF_INET, l->host, &a->sin_addr) != 1)
				continue;
			uint32_t h = ntohl(a->sin_addr.s_addr);
			if (h == 0)
				a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			else if ((h >> 24) != 127)
				continue;
			sl = sizeof *a;
		}
		int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC |
		                SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		int r = connect(fd, (struct sockaddr *)&ss, sl);
		if (r < 0 && errno == EINPROGRESS) {
			r = sm_io_wait(fd, POLLOUT);
			int e = 0;
			socklen_t el = sizeof e;
			if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e,
			                         &el) == 0 && e)
				r = -e;
		} else if (r < 0) {
			r = -errno;
		}
		if (r < 0) {
			close(fd);
			return r;
		}
		k->fd = fd;
		k->rlen = 0;
		return 0;
	}
	return -ENOENT;
}

static int sm_write(struct sm_conn *k, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(k->fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			int r = sm_io_wait(k->fd, POLLOUT);
			if (r < 0)
				return r;
			continue;
		}
		if (w < 0)
			return -errno;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* EHLO keywords sm_reply notes. */
#define SM_EXT_8BITMIME 0x1
#define SM_EXT_SMTPUTF8 0x2

/* One reply (all its lines): k->code and k->text (the last line's text).
 * ext, when not NULL, gets the SM_EXT_* keywords the lines offered. */
static int sm_reply(struct sm_conn *k, unsigned *ext)
{
	for (int lines = 0; lines < SM_REPLY_LINES_MAX; lines++) {
		char *lf;
		while (!(lf = memchr(k->rbuf, '\n', k->rlen))) {
			if (k->rlen == sizeof k->rbuf)
				return -EPROTO;
			ssize_t r = recv(k->fd, k->rbuf + k->rlen,
			                 sizeof k->rbuf - k->rlen, 0);
			if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
				int w = sm_io_wait(k->fd, POLLIN);
				if (w < 0)
					return w;
				continue;
			}
			if (r <= 0)
				return r == 0 ? -ECONNRESET : -errno;
			k->rlen += (size_t)r;
		}
		size_t n = (size_t)(lf - k->rbuf);
		if (n > 0 && k->rbuf[n - 1] == '\r')
			n--;
		if (n < 3 || !isdigit((unsigned char)k->rbuf[0]) ||
		    !isdigit((unsigned char)k->rbuf[1]) ||
		    !isdigit((unsigned char)k->rbuf[2]) ||
		    (n > 3 && k->rbuf[3] != ' ' && k->rbuf[3] != '-'))
			return -EPROTO;
		k->code = (k->rbuf[0] - '0') * 100 + (k->rbuf[1] - '0') * 10 +
		          (k->rbuf[2] - '0');
		bool more = n > 3 && k->rbuf[3] == '-';
		size_t tn = n < sizeof k->text ? n : sizeof k->text - 1;
		for (size_t i = 0; i < tn; i++) {
			unsigned char ch = (unsigned char)k->rbuf[i];
			k->text[i] = ch < 32 || ch == 127 ? '?' : (char)ch;
		}
		k->text[tn] = '\0';
		if (ext && n == 12 && strncasecmp(k->rbuf + 4, "8BITMIME", 8) == 0)
			*ext |= SM_EXT_8BITMIME;
		if (ext && n == 12 && strncasecmp(k->rbuf + 4, "SMTPUTF8", 8) == 0)
			*ext |= SM_EXT_SMTPUTF8;
		size_t used = (size_t)(lf - k->rbuf) + 1;
		memmove(k->rbuf, k->rbuf + used, k->rlen - used);
		k->rlen -= used;
		if (!more)
			return 0;
	}
	return -EPROTO;
}

static int sm_cmd(struct sm_conn *k, const char *line, unsigned *ext)
{
	int r = sm_write(k, line, strlen(line));
	if (r == 0)
		r = sm_reply(k, ext);
	return r;
}

/* The message at body's offset `off` to the end, dot-stuffed (RFC 5321
 * §4.5.2), then the final dot. The file holds CRLF lines only. */
static int sm_send_body(struct sm_conn *k, FILE *body, off_t off)
{
	char in[16384], out[2 * sizeof in + 8];
	bool bol = true;
	if (fseeko(body, off, SEEK_SET) < 0)
		return -errno;
	size_t n;
	while ((n = fread(in, 1, sizeof in, body)) > 0) {
		size_t o = 0;
		for (size_t i = 0; i < n; i++) {
			if (bol && in[i] == '.')
				out[o++] = '.';
			out[o++] = in[i];
			bol = in[i] == '\n';
		}
		int r = sm_write(k, out, o);
		if (r < 0)
			return r;
	}
	if (ferror(body))
		return -EIO;
	return sm_write(k, bol ? ".\r\n" : "\r\n.\r\n", bol ? 3 : 5);
}

/*
 * One SMTP transaction with relayd. Returns SM_SENT (the 250 after the
 * data), SM_PERM (a 5xx: k->text says why) or SM_TEMP (a 4xx, no
 * connection, a timeout, a protocol error: k->text says why).
 */
static int sm_submit(const struct conf *c, const char *sender,
                     char *const *rcpt, size_t nrcpt, FILE *body, off_t off,
                     char *why, size_t whylen)
{
	struct sm_conn k = {.fd = -1};
	char line[SMTP_PATH_MAX + 64];
	unsigned ext = 0;
	bool utf8 = false;
	for (const char *p = sender; *p; p++)
		utf8 |= (unsigned char)*p >= 0x80;
	for (size_t i = 0; i < nrcpt; i++)
		for (const char *p = rcpt[i]; *p; p++)
			utf8 |= (unsigned char)*p >= 0x80;
	int r = sm_connect(c, &k);
	if (r < 0) {
		snprintf(why, whylen, r == -ENOENT ? "no loopback listener in "
		         "listen" : "cannot connect to relayd: %s", strerror(-r));
		return SM_TEMP;
	}
	int rc = SM_TEMP;
	if ((r = sm_reply(&k, NULL)) < 0 || k.code != 220)
		goto bad;
	snprintf(line, sizeof line, "EHLO %s\r\n", c->hostname);
	if ((r = sm_cmd(&k, line, &ext)) < 0 || k.code != 250)
		goto bad;
	/* RFC 6531: UTF-8 in an address needs SMTPUTF8 (without it relayd
	 * answers 553 5.6.7, the caller's error). */
	snprintf(line, sizeof line, "MAIL FROM:<%s>%s%s\r\n", sender,
	         ext & SM_EXT_8BITMIME ? " BODY=8BITMIME" : "",
	         utf8 && (ext & SM_EXT_SMTPUTF8) ? " SMTPUTF8" : "");
	if ((r = sm_cmd(&k, line, NULL)) < 0 || k.code != 250)
		goto bad;
	for (size_t i = 0; i < nrcpt; i++) {
		snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", rcpt[i]);
		if ((r = sm_cmd(&k, line, NULL)) < 0 || k.code / 100 != 2)
			goto bad;
	}
	if ((r = sm_cmd(&k, "DATA\r\n", NULL)) < 0 || k.code != 354)
		goto bad;
	if ((r = sm_send_body(&k, body, off)) < 0 || (r = sm_reply(&k, NULL)) < 0 ||
	    k.code != 250)
		goto bad;
	snprintf(why, whylen, "%s", k.text);
	rc = SM_SENT;
	(void)sm_cmd(&k, "QUIT\r\n", NULL);
	close(k.fd);
	return rc;
bad:
	if (r < 0) {
		snprintf(why, whylen, "relayd: %s", strerror(-r));
	} else {
		snprintf(why, whylen, "%s", k.text);
		rc = k.code / 100 == 5 ? SM_PERM : SM_TEMP;
		(void)sm_cmd(&k, "QUIT\r\n", NULL);
	}
	close(k.fd);
	return rc;
}

/* ---- maildrop ----------------------------------------------------------- */

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* The message into SPOOL/maildrop/ as one file: envelope lines, an empty
 * line, the message. Written to a dot name (never through a link, never
 * over a file: O_EXCL), fsynced, renamed, and the rename made durable. The
 * setgid group is taken for this function only: it opens nothing but this
 * file, and the group may neither list nor read the directory. */
static int sm_maildrop_write_file(struct sm *s, struct sm_msg *m,
                                  const char *dir, const char *tmp,
                                  const char *fin)
{
	mode_t old = umask(0);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	              0644);
	int e = errno;
	umask(old);
	if (fd < 0) {
		sm_err("cannot write to the maildrop %s: %s (relayd is not "
		       "accepting mail either)", dir, strerror(e));
		return EX_CANTCREAT;
	}
	FILE *f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		unlink(tmp);
		return EX_OSERR;
	}
	fprintf(f, SM_MAGIC "\nuid %u\nuser %s\nsender <%s>\n", (unsigned)s->uid,
	        s->user, s->sender);
	for (size_t i = 0; i < s->nrcpt; i++)
		fprintf(f, "rcpt <%s>\n", s->rcpt[i]);
	fputc('\n', f);
	char b[16384];
	size_t n;
	rewind(m->body);
	while ((n = fread(b, 1, sizeof b, m->body)) > 0)
		fwrite(b, 1, n, f);
	int bad = ferror(m->body) || fflush(f) != 0 || ferror(f) || fsync(fd) < 0;
	e = errno;
	if (bad || rename(tmp, fin) < 0) {
		sm_err("cannot write to the maildrop %s: %s", dir,
		       strerror(bad ? e : errno));
		fclose(f);
		unlink(tmp);
		return EX_CANTCREAT;
	}
	/* The new name on disk: fsync of the directory, which needs read
	 * permission on it that a setgid caller does not have (1730): then
	 * syncfs, which commits the directory's change with everything else
	 * on that file system. */
	int r = fsync_dir(dir);
	if (r == -EACCES)
		r = syncfs(fd) < 0 ? -errno : 0;
	fclose(f);
	if (r < 0) {
		/* On the disk or not, the file is there: relayd imports it
		 * unless the machine crashes right now. Say so, and let the
		 * caller keep its copy too. */
		sm_err("cannot sync the maildrop %s: %s", dir, strerror(-r));
		return EX_TEMPFAIL;
	}
	return 0;
}

static int sm_maildrop_write(struct sm *s, struct sm_msg *m)
{
	char dir[PATH_MAX], tmp[PATH_MAX + 64], fin[PATH_MAX + 64];
	uint64_t rnd = 0;
	if ((size_t)snprintf(dir, sizeof dir, "%s/" SM_MAILDROP,
	                     s->conf.spool_dir) >= sizeof dir)
		return EX_CANTCREAT;
	if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
		rnd = (uint64_t)time(NULL) ^ (uint64_t)getpid();
	snprintf(tmp, sizeof tmp, "%s/.%ld.%016" PRIx64, dir, (long)getpid(), rnd);
	snprintf(fin, sizeof fin, "%s/%lld.%ld.%016" PRIx64, dir,
	         (long long)time(NULL), (long)getpid(), rnd);
	if (s->drop_gid != (gid_t)-1 && setegid(s->drop_gid) < 0) {
		sm_err("cannot take the group of the maildrop: %s",
		       strerror(errno));
		return EX_NOPERM;
	}
	int rc = sm_maildrop_write_file(s, m, dir, tmp, fin);
	if (s->drop_gid != (gid_t)-1 && setegid(getgid()) < 0)
		abort();                /* cannot give the group back */
	return rc;
}

/* ---- --import (run by relayd) ------------------------------------------ */

/* Reads one envelope line into line (without LF); -EPROTO if longer than
 * SM_ENV_LINE_MAX or not ended by LF. */
static int env_line(FILE *f, char *line, size_t n)
{
	if (!fgets(line, (int)n, f))
		return -EPROTO;
	size_t l = strlen(line);
	if (l == 0 || line[l - 1] != '\n')
		return -EPROTO;
	line[l - 1] = '\0';
	return 0;
}

static int env_addr(const char *v, char *out)
{
	size_t used = 0, n = strlen(v);
	int r = addr_parse_path(v, n, ADDR_ALLOW_NULL | ADDR_ALLOW_UTF8, out,
	                        SMTP_PATH_MAX + 1, &used);
	return r < 0 || used != n ? -EPROTO : 0;
}

/* Moves a file relayd refused to bad/ (made if missing, 0700). */
static void sm_import_bad(int dfd, const char *name, const char *why)
{
	if (mkdirat(dfd, "bad", 0700) < 0 && errno != EEXIST) {
		log_err("maildrop: cannot make bad/: %s; %s stays", strerror(errno),
		        name);
		return;
	}
	char to[NAME_MAX + 8];
	snprintf(to, sizeof to, "bad/%s", name);
	if (renameat(dfd, name, dfd, to) < 0)
		log_err("maildrop: cannot move %s to bad/: %s", name,
		        strerror(errno));
	else
		log_warn("maildrop: %s refused for good, moved to bad/: %s", name,
		         why);
	fsync(dfd);
}

static int sm_import_one(struct sm *s, int dfd, const char *name)
{
	char line[SM_ENV_LINE_MAX + 2], why[SM_REPLY_LINE_MAX + 64];
	char sender[SMTP_PATH_MAX + 1];
	char *rcpt[SM_RCPT_MAX];
	size_t nrcpt = 0;
	unsigned long uid = 0;
	char user[64] = "?";
	int rc = 0;
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 0;               /* gone, or a link: not ours to read */
	struct stat st;
	FILE *f = NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
		close(fd);
		sm_import_bad(dfd, name, "not a plain file");
		return 0;
	}
	if ((uint64_t)st.st_size > s->conf.max_message_size +
	    (uint64_t)SM_RCPT_MAX * (SM_ENV_LINE_MAX + 1) + 4096) {
		close(fd);
		sm_import_bad(dfd, name, "larger than max_message_size");
		return 0;
	}
	f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	const char *bad = NULL;
	if (env_line(f, line, sizeof line) < 0 || strcmp(line, SM_MAGIC) != 0)
		bad = "not a maildrop file (no \"" SM_MAGIC "\" line)";
	else if (env_line(f, line, sizeof line) < 0 ||
	         sscanf(line, "uid %lu", &uid) != 1)
		bad = "no uid line";
	else if (st.st_uid != (uid_t)uid && st.st_uid != geteuid())
		bad = "the file's owner is not the uid it names";
	else if (env_line(f, line, sizeof line) < 0 ||
	         strncmp(line, "user ", 5) != 0)
		bad = "no user line";
	if (!bad) {
		snprintf(user, sizeof user, "%.63s", line + 5);
		for (char *p = user; *p; p++)
			if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
				*p = '?';
		if (env_line(f, line, sizeof line) < 0 ||
		    strncmp(line, "sender ", 7) != 0 ||
		    env_addr(line + 7, sender) < 0)
			bad = "bad sender line";
	}
	while (!bad) {
		if (env_line(f, line, sizeof line) < 0) {
			bad = "envelope not ended";
			break;
		}
		if (line[0] == '\0')
			break;
		char a[SMTP_PATH_MAX + 1];
		if (strncmp(line, "rcpt ", 5) != 0 || env_addr(line + 5, a) < 0 ||
		    !a[0] || nrcpt == SM_RCPT_MAX) {
			bad = "bad rcpt line";
			break;
		}
		if (!(rcpt[nrcpt] = strdup(a))) {
			rc = -ENOMEM;
			goto out;
		}
		nrcpt++;
	}
	if (!bad && nrcpt == 0)
		bad = "no recipients";
	if (bad) {
		sm_import_bad(dfd, name, bad);
		goto out;
	}
	off_t off = ftello(f);
	int res = sm_submit(&s->conf, sender, rcpt, nrcpt, f, off, why,
	                    sizeof why);
	if (res == SM_SENT) {
		/* The 250 carries relayd's queue id: "250 2.0.0 Ok: queued as X". */
		if (unlinkat(dfd, name, 0) < 0)
			log_err("maildrop: %s sent but cannot be removed: %s "
			        "(it would be sent again)", name, strerror(errno));
		fsync(dfd);
		/* Queue id first, as every line of relayd's: the 250 says
		 * "... queued as ID". */
		const char *qid = strstr(why, "queued as ");
		qid = qid ? qid + 10 : "?";
		log_info("%.16s: maildrop=%s, local user %s (uid %lu), from=<%s>, "
		         "nrcpt=%zu", qid, name, user, uid, sender, nrcpt);
	} else if (res == SM_PERM) {
		log_info("maildrop: %s from local user %s (uid %lu) refused: %s",
		         name, user, uid, why);
		sm_import_bad(dfd, name, why);
	} else {
		log_info("maildrop: %s from local user %s (uid %lu) stays: %s",
		         name, user, uid, why);
		rc = -EAGAIN;
	}
out:
	for (size_t i = 0; i < nrcpt; i++)
		free(rcpt[i]);
	fclose(f);
	return rc;
}

/* A dot name is a file being written, or one left by a relayd-sendmail
 * that died before its rename (whose caller was told it failed): removed
 * once older than SM_STALE_SECS. */
#define SM_STALE_SECS 3600
static void sm_import_stale(int dfd, const char *name)
{
	struct stat st;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
	    fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    time(NULL) - st.st_mtime < SM_STALE_SECS)
		return;
	if (unlinkat(dfd, name, 0) == 0)
		log_info("maildrop: removed %s, an unfinished file of uid %u "
		         "(its sender was told it failed)", name,
		         (unsigned)st.st_uid);
}

/* Every file of maildrop/ (not the dot names being written), oldest name
 * first is not promised; stops at the first temporary failure (relayd
 * is not taking mail: the next run retries). Exit 0, or EX_TEMPFAIL. */
static int sm_import(struct sm *s)
{
	char dir[PATH_MAX];
	int r = log_open(s->conf.log_file, s->conf.log_stderr, s->conf.log_level);
	if (r < 0) {
		sm_err("cannot open log file %s: %s", s->conf.log_file,
		       strerror(-r));
		return EX_CANTCREAT;
	}
	snprintf(dir, sizeof dir, "%s/" SM_MAILDROP, s->conf.spool_dir);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		log_close();
		return errno == ENOENT ? EX_OK : EX_NOINPUT;
	}
	DIR *d = fdopendir(dup(dfd));
	if (!d) {
		close(dfd);
		log_close();
		return EX_OSERR;
	}
	int rc = EX_OK;
	unsigned done = 0;
	struct dirent *de;
	/* Bounded per run: a flood of files is taken on over several runs. */
	while ((de = readdir(d)) && done < 10000) {
		if (de->d_name[0] == '.') {
			sm_import_stale(dfd, de->d_name);
			continue;
		}
		if (strcmp(de->d_name, "bad") == 0)
			continue;
		done++;
		if (sm_import_one(s, dfd, de->d_name) == -EAGAIN) {
			rc = EX_TEMPFAIL;
			break;
		}
	}
	closedir(d);
	close(dfd);
	log_close();
	return rc;
}

/* ---- main ------------------------------------------------------------- */

/* An option's value: "-fADDR" or "-f ADDR". NULL: missing. */
/* ---- -bs: SMTP on stdin and stdout ------------------------------------ */

/*
 * `sendmail -bs` (Symfony Mailer's and Laravel's default): the caller
 * speaks SMTP to us on stdin/stdout, one or more transactions. Each
 * message goes the way of any other (added fields, relayd over loopback
 * SMTP, else the maildrop), and the caller gets relayd's own reply, or
 * 250 once the message is in the maildrop. Bounded: command lines of
 * BS_LINE_MAX octets, BS_CMDS_MAX commands, BS_ERRS_MAX errors, each read
 * within BS_WAIT_MS (RFC 5321 §4.5.3.2.7's five minutes), the message by
 * max_message_size.
 */
#define BS_LINE_MAX 1000
#define BS_CMDS_MAX 1000
#define BS_ERRS_MAX 20
#define BS_WAIT_MS (300 * 1000)
#define BS_PIECE 4096

struct bs_in {
	char buf[8192];
	size_t pos, len;
	bool eof;
};

/*
 * The next piece of a line from fd 0: at most max (>= 2) bytes into p,
 * *n of them; *end when the piece ends its line (the LF and a CR before
 * it are not in p; a CR at the end of a full piece waits for the next, so
 * CRLF is never split). 1: a piece; 0: end of input before any byte;
 * -ETIMEDOUT; -EIO.
 */
static int bs_piece(struct bs_in *in, char *p, size_t max, size_t *n,
                    bool *end)
{
	size_t o = 0;
	*end = false;
	for (;;) {
		if (in->pos == in->len) {
			if (in->eof) {
				*end = true;   /* a last line without LF */
				break;
			}
			struct pollfd pf = {.fd = 0, .events = POLLIN};
			int r = poll(&pf, 1, BS_WAIT_MS);
			if (r == 0)
				return -ETIMEDOUT;
			if (r < 0) {
				if (errno == EINTR)
					continue;
				return -EIO;
			}
			ssize_t k = read(0, in->buf, sizeof in->buf);
			if (k < 0) {
				if (errno == EINTR || errno == EAGAIN)
					continue;
				return -EIO;
			}
			if (k == 0) {
				in->eof = true;
				if (o == 0)
					return 0;
				continue;
			}
			in->pos = 0;
			in->len = (size_t)k;
		}
		char c = in->buf[in->pos++];
		if (c == '\n') {
			*end = true;
			break;
		}
		p[o++] = c;
		if (o == max) {
			if (p[o - 1] == '\r') {
				in->pos--;   /* may be a CRLF: decided next time */
				o--;
			}
			break;
		}
	}
	if (*end && o && p[o - 1] == '\r')
		o--;
	*n = o;
	return 1;
}

static bool bs_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool bs_reply(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputs("\r\n", stdout);
	return fflush(stdout) == 0;
}

/* The path of a MAIL FROM: / RCPT TO: argument a[0..n): "<path>", then
 * parameters. out: the address (a bare local part gets @hostname).
 * -EINVAL: not a path. */
static int bs_path(const struct sm *s, const char *a, size_t n,
                   bool null_ok, char *out)
{
	char path[SMTP_PATH_MAX + 3];
	size_t rest;
	if (sm_bs_path(a, n, path, sizeof path - 1, &rest) < 0)
		return -EINVAL;
	/* Parameters (BODY=, SMTPUTF8, SIZE=) need nothing here: relayd
	 * checks the message itself. */
	return sm_parse_arg_addr(s, path, null_ok, out);
}

static void bs_reset(struct sm *s, const char *dflt)
{
	for (size_t k = 0; k < s->nrcpt; k++)
		free(s->rcpt[k]);
	s->nrcpt = 0;
	snprintf(s->sender, sizeof s->sender, "%s", dflt);
}

/*
 * DATA: the lines up to "." (dot-unstuffed) into a temp file, then the
 * message as sendmail would take it on stdin (-i), to relayd or the
 * maildrop. Returns false when the session must end (input gone).
 */
static bool bs_data(struct sm *s, struct bs_in *in)
{
	FILE *raw = tmpfile();
	if (!raw)
		return bs_reply("451 4.3.0 cannot create a temporary file: %s",
		                strerror(errno));
	if (!bs_reply("354 End data with <CR><LF>.<CR><LF>")) {
		fclose(raw);
		return false;
	}
	/* Room for the fields sendmail adds on top of the limit. */
	uint64_t limit = s->conf.max_message_size, size = 0;
	bool over = false, werr = false;
	char piece[BS_PIECE];
	struct sm_bs_dot dot;
	sm_bs_dot_init(&dot);
	for (;;) {
		size_t n;
		bool end;
		int r = bs_piece(in, piece, sizeof piece, &n, &end);
		if (r <= 0) {
			fclose(raw);
			if (r == -ETIMEDOUT)
				bs_reply("421 4.4.2 %s timeout: closing",
				         s->conf.hostname);
			return false;   /* no end of data: nothing is sent */
		}
		const char *p = piece;
		if (sm_bs_dot_piece(&dot, &p, &n, end))
			break;
		size += n + (end ? 2 : 0);
		if (size > limit)
			over = true;
		if (!over && !werr &&
		    (fwrite(p, 1, n, raw) != n ||
		     (end && fwrite("\r\n", 1, 2, raw) != 2)))
			werr = true;
	}
	if (over) {
		fclose(raw);
		return bs_reply("552 5.3.4 message too big: relayd takes at most %"
		                PRIu64 " bytes (max_message_size)", limit);
	}
	if (werr || fflush(raw) != 0 || fseeko(raw, 0, SEEK_SET) != 0) {
		fclose(raw);
		return bs_reply("451 4.3.0 cannot write a temporary file");
	}
	struct sm_msg m = {0};
	bool opt_i = s->opt_i;
	s->opt_i = true;            /* the dot ended the message already */
	int rc = sm_read_message(s, &m, raw);
	s->opt_i = opt_i;
	fclose(raw);
	bool ok;
	if (rc == EX_DATAERR) {
		ok = bs_reply("554 5.6.0 message refused: the header section is "
		              "too large or the message too big");
	} else if (rc) {
		ok = bs_reply("451 4.3.0 cannot read the message");
	} else {
		char why[SM_REPLY_LINE_MAX + 64];
		int res = sm_submit(&s->conf, s->sender, s->rcpt, s->nrcpt, m.body,
		                    0, why, sizeof why);
		if (res == SM_SENT || res == SM_PERM) {
			/* relayd's own reply: "250 2.0.0 Ok: queued as ..." or
			 * its refusal, with its code. */
			ok = bs_reply("%s", why);
		} else if (sm_maildrop_write(s, &m) == 0) {
			ok = bs_reply("250 2.0.0 Ok: queued in the maildrop for "
			              "relayd's next start (%s)", why);
		} else {
			ok = bs_reply("451 4.3.0 cannot queue the message now: %s",
			              why);
		}
	}
	if (m.body)
		fclose(m.body);
	buf_free(&m.hdr);
	return ok;
}

static int sm_bs(struct sm *s)
{
	static struct bs_in in;
	char dflt[SMTP_PATH_MAX + 1], line[BS_LINE_MAX + 1];
	snprintf(dflt, sizeof dflt, "%s", s->sender);
	bool mail = false;
	unsigned errs = 0;
	if (!bs_reply("220 %s relayd-sendmail ESMTP", s->conf.hostname))
		return EX_IOERR;
	for (unsigned cmds = 0; cmds < BS_CMDS_MAX; cmds++) {
		size_t n;
		bool end, ok = true;
		int r = bs_piece(&in, line, BS_LINE_MAX, &n, &end);
		if (r == 0 || r == -EIO)
			break;      /* the caller hung up */
		if (r == -ETIMEDOUT) {
			bs_reply("421 4.4.2 %s timeout: closing", s->conf.hostname);
			bs_reset(s, dflt);
			return EX_TEMPFAIL;
		}
		if (!end) {
			/* Too long: the rest of it is skipped. */
			while (!end && (r = bs_piece(&in, line, BS_LINE_MAX, &n,
			                             &end)) > 0)
				;
			if (r <= 0)
				break;
			ok = bs_reply("500 5.5.2 line too long");
			errs++;
			goto next;
		}
		line[n] = '\0';
		const char *arg;
		enum sm_bs_verb verb = sm_bs_command(line, n, &arg);
		size_t an = (size_t)(line + n - arg);
		char a[SMTP_PATH_MAX + 1];
		if (verb == SM_BS_BAD) {
			ok = bs_reply("500 5.5.2 NUL in the command");
			errs++;
		} else if (verb == SM_BS_EHLO) {
			ok = bs_reply("250-%s\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
			              "250-ENHANCEDSTATUSCODES\r\n250 SIZE %" PRIu64,
			              s->conf.hostname, s->conf.max_message_size);
			mail = false;
			bs_reset(s, dflt);
		} else if (verb == SM_BS_HELO) {
			ok = bs_reply("250 %s", s->conf.hostname);
			mail = false;
			bs_reset(s, dflt);
		} else if (verb == SM_BS_MAIL) {
			if (mail) {
				ok = bs_reply("503 5.5.1 nested MAIL command");
				errs++;
			} else if (bs_path(s, arg, an, true, a) < 0) {
				ok = bs_reply("501 5.1.7 bad sender address syntax");
				errs++;
			} else {
				snprintf(s->sender, sizeof s->sender, "%s", a);
				mail = true;
				ok = bs_reply("250 2.1.0 Ok");
			}
		} else if (verb == SM_BS_RCPT) {
			if (!mail) {
				ok = bs_reply("503 5.5.1 need MAIL first");
				errs++;
			} else if (bs_path(s, arg, an, false, a) < 0) {
				ok = bs_reply("501 5.1.3 bad recipient address syntax");
				errs++;
			} else if (sm_add_rcpt(s, a) != 0) {
				ok = bs_reply("452 4.5.3 too many recipients");
			} else {
				ok = bs_reply("250 2.1.5 Ok");
			}
		} else if (verb == SM_BS_DATA) {
			if (!mail || s->nrcpt == 0) {
				ok = bs_reply("503 5.5.1 need %s first",
				              mail ? "RCPT" : "MAIL");
				errs++;
			} else {
				ok = bs_data(s, &in);
				mail = false;
				bs_reset(s, dflt);
			}
		} else if (verb == SM_BS_RSET) {
			mail = false;
			bs_reset(s, dflt);
			ok = bs_reply("250 2.0.0 Ok");
		} else if (verb == SM_BS_NOOP) {
			ok = bs_reply("250 2.0.0 Ok");
		} else if (verb == SM_BS_VRFY) {
			ok = bs_reply("252 2.5.0 cannot verify; send the message");
		} else if (verb == SM_BS_QUIT) {
			bs_reply("221 2.0.0 Bye");
			bs_reset(s, dflt);
			return EX_OK;
		} else {
			ok = bs_reply("502 5.5.2 command not implemented");
			errs++;
		}
next:
		if (!ok)
			break;      /* stdout is gone */
		if (errs >= BS_ERRS_MAX) {
			bs_reply("421 4.7.0 %s too many errors: closing",
			         s->conf.hostname);
			bs_reset(s, dflt);
			return EX_PROTOCOL;
		}
	}
	bs_reset(s, dflt);
	return EX_OK;
}

static const char *opt_val(int argc, char **argv, int *i)
{
	if (argv[*i][2])
		return argv[*i] + 2;
	if (*i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

int main(int argc, char **argv)
{
	static struct sm s;
	enum { M_SEND, M_SMTP, M_LIST, M_FLUSH, M_IMPORT } mode = M_SEND;
	int i, rc;

	/* setgid: the group is held only for the maildrop write. */
	s.drop_gid = getegid() != getgid() ? getegid() : (gid_t)-1;
	if (s.drop_gid != (gid_t)-1 && setegid(getgid()) < 0) {
		sm_err("cannot drop the group: %s", strerror(errno));
		return EX_OSERR;
	}
	s.uid = getuid();
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || a[1] == '\0')
			break;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "--help") == 0) {
			usage(stdout);
			return EX_OK;
		}
		if (strcmp(a, "--import") == 0) {
			mode = M_IMPORT;
			continue;
		}
		switch (a[1]) {
		case 't':
		case 'i':
		case 'v':
			/* Grouped as getopt allows: -ti, -itv. */
			if (a[strspn(a + 1, "tiv") + 1])
				goto bad;
			for (const char *c = a + 1; *c; c++) {
				if (*c == 't')
					s.opt_t = true;
				else if (*c == 'i')
					s.opt_i = true;
				else
					s.verbose = true;
			}
			continue;
		case 'o':
			/* -oi as -i; -oem, -odb, -oQ... ignored (sendmail). */
			if (strcmp(a, "-oi") == 0)
				s.opt_i = true;
			else if (!a[2])
				goto bad;
			continue;
		case 'b':
			if (strcmp(a, "-bm") == 0)
				mode = M_SEND;
			else if (strcmp(a, "-bs") == 0)
				mode = M_SMTP;
			else if (strcmp(a, "-bp") == 0)
				mode = M_LIST;
			else
				goto bad;
			continue;
		case 'q':
			mode = M_FLUSH;     /* -q, -q30m: flush now */
			continue;
		case 'f':
		case 'r':
		case 'F':
		case 'C':
		case 'B':
		case 'N':
		case 'R':
		case 'V':
		case 'X': {
			const char *v = opt_val(argc, argv, &i);
			if (!v) {
				sm_err("option -%c needs a value", a[1]);
				usage(stderr);
				return EX_USAGE;
			}
			if (a[1] == 'f' || a[1] == 'r')
				s.from = v;
			else if (a[1] == 'F')
				s.fullname = v;
			else if (a[1] == 'C') {
				s.conf_path = v;
				s.conf_explicit = true;
			}
			continue;
		}
		default:
			goto bad;
		}
bad:
		{
			char esc[128];
			log_escape(esc, sizeof esc, a, strlen(a));
			sm_err("unknown option '%s'", esc);
			usage(stderr);
			return EX_USAGE;
		}
	}
	if ((rc = sm_setgid_guard(&s)) != 0 || (rc = sm_conf_load(&s)) != 0)
		return rc;
	if (mode == M_LIST)
		return sm_relayctl(&s, "list");
	if (mode == M_FLUSH)
		return sm_relayctl(&s, "flush");
	if (mode == M_IMPORT) {
		/* relayd runs the installed (setgid) program as its own
		 * user, who owns the maildrop: the group is not needed, and
		 * anyone else gets nothing from it (1730: no reading). */
		if (sm_drop_group_for_good() < 0) {
			sm_err("cannot drop the group: %s", strerror(errno));
			return EX_OSERR;
		}
		rc = sm_import(&s);
		conf_free(&s.conf);
		return rc;
	}

	struct passwd *pw = getpwuid(s.uid);
	snprintf(s.user, sizeof s.user, "%s", pw ? pw->pw_name : "unknown");
	for (char *p = s.user; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
			*p = '_';
	if (!s.fullname && pw && pw->pw_gecos && pw->pw_gecos[0]) {
		static char gecos[128];
		snprintf(gecos, sizeof gecos, "%.*s",
		         (int)strcspn(pw->pw_gecos, ","), pw->pw_gecos);
		if (gecos[0])
			s.fullname = gecos;
	}
	char esc[SMTP_PATH_MAX * 4 + 8];
	if (s.from) {
		if (sm_parse_arg_addr(&s, s.from, true, s.sender) < 0) {
			log_escape(esc, sizeof esc, s.from, strlen(s.from));
			sm_err("bad sender address '%s'", esc);
			return EX_DATAERR;
		}
	} else {
		snprintf(s.sender, sizeof s.sender, "%s@%s", s.user,
		         s.conf.hostname);
	}
	if (mode == M_SMTP) {
		if (i < argc) {
			sm_err("-bs takes no recipient arguments (RCPT TO gives "
			       "them)");
			return EX_USAGE;
		}
		s.opt_t = false;    /* the envelope comes with RCPT TO */
		rc = sm_bs(&s);
		conf_free(&s.conf);
		return rc;
	}
	for (; i < argc; i++) {
		char a[SMTP_PATH_MAX + 1];
		if (sm_parse_arg_addr(&s, argv[i], false, a) < 0) {
			log_escape(esc, sizeof esc, argv[i], strlen(argv[i]));
			sm_err("bad recipient address '%s'", esc);
			return EX_DATAERR;
		}
		if ((rc = sm_add_rcpt(&s, a)) != 0)
			return rc;
	}
	if (s.nrcpt == 0 && !s.opt_t) {
		sm_err("no recipients (give them as arguments, or -t)");
		usage(stderr);
		return EX_USAGE;
	}
	struct sm_msg m = {0};
	rc = sm_read_message(&s, &m, stdin);
	if (rc == 0 && s.nrcpt == 0) {
		sm_err("no recipients in To, Cc or Bcc");
		rc = EX_NOUSER;
	}
	if (rc == 0) {
		char why[SM_REPLY_LINE_MAX + 64];
		int res = sm_submit(&s.conf, s.sender, s.rcpt, s.nrcpt, m.body, 0,
		                    why, sizeof why);
		if (res == SM_SENT) {
			if (s.verbose)
				fprintf(stderr, SM_PROG ": sent to relayd: %s\n", why);
		} else if (res == SM_PERM) {
			sm_err("relayd refused the message: %s", why);
			rc = strncmp(why, "550 5.7", 7) == 0 ||
			     strncmp(why, "554 5.7", 7) == 0 ? EX_NOPERM : EX_DATAERR;
		} else {
			rc = sm_maildrop_write(&s, &m);
			if (rc == 0 && s.verbose)
				fprintf(stderr, SM_PROG ": %s; queued in the maildrop "
				        "for relayd's next start\n", why);
		}
	}
	if (m.body)
		fclose(m.body);
	buf_free(&m.hdr);
	for (size_t k = 0; k < s.nrcpt; k++)
		free(s.rcpt[k]);
	conf_free(&s.conf);
	return rc;
}
