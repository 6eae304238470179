/*
 * tools/ctl_sendtest.c - `relayctl send-test ADDR` (issue 10 §4): hands
 * relayd a small test message the way a local application would (SMTP to
 * its first listener reachable from this host, through relayd's own
 * client core, tools/ctl_smtp.c), reads the queue id from the 250 reply,
 * then follows the message until it is sent, deferred or bounced: the
 * delivery log (log_file, one Postfix-shaped line per attempt, which
 * deliver/ writes before it changes the index) and the queue index
 * (read-only, queue.h) for the next retry. Each outcome names the next
 * step. Exit: 0 sent, 1 bounced (or an error), 75 (EX_TEMPFAIL) deferred,
 * held or not decided within --timeout.
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/addr.h"
#include "common/cred.h"
#include "common/log.h"
#include "common/smtp.h"
#include "tools/ctl_smtp.h"

/* How often the log and the index are looked at while following. */
#define CTL_ST_POLL_MS 200
/* Longest log line kept (common/log.c writes at most 4096 bytes). */
#define CTL_ST_LINE_MAX 4096
#define CTL_ST_TIMEOUT_DEFAULT_MS 120000
/* The submission's steps (connect, each reply). */
#define CTL_ST_SMTP_TIMEOUT_MS 60000

enum ctl_st_outcome { CTL_ST_NONE, CTL_ST_SENT, CTL_ST_DEFERRED,
                      CTL_ST_BOUNCED };

/* The delivery log, read from where it ended before the submission. */
struct ctl_st_log {
	int fd;
	char line[CTL_ST_LINE_MAX + 1];
	size_t len;
	bool skipping;          /* inside a line longer than the buffer */
};

struct ctl_st {
	char qid[QUEUE_ID_SIZE];
	const char *rcpt;
	struct ctl_st_log log;
	enum ctl_st_outcome outcome;
	char outcome_text[CTL_ST_LINE_MAX + 1];
	uint32_t seen_attempts; /* from the index, when there is no log */
	bool seen_in_queue;
};

static void ctl_st_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int64_t ctl_st_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "text" made safe for the terminal (it comes from remote servers). */
static void ctl_st_print(const char *prefix, const char *text)
{
	char esc[CTL_ST_LINE_MAX * 4 + 1];
	printf("%s%s\n", prefix, log_escape(esc, sizeof esc, text, strlen(text)));
}

/* One line of the log: "...: info: QID: to=<...>, relay=..., ...,
 * status=sent (250 ...)". Lines of other messages are skipped. */
static void ctl_st_log_line(struct ctl_st *s, const char *l)
{
	char key[QUEUE_ID_SIZE + 8];
	snprintf(key, sizeof key, ": %s: to=<", s->qid);
	const char *p = strstr(l, key);
	if (!p)
		return;
	p += 2 + QUEUE_ID_LEN + 2;
	const char *st = strstr(p, ", status=");
	if (!st)
		return;
	st += strlen(", status=");
	enum ctl_st_outcome o = strncmp(st, "sent", 4) == 0 ? CTL_ST_SENT :
	                        strncmp(st, "bounced", 7) == 0 ? CTL_ST_BOUNCED :
	                        strncmp(st, "deferred", 8) == 0 ? CTL_ST_DEFERRED :
	                        CTL_ST_NONE;
	if (o == CTL_ST_NONE)
		return;
	ctl_st_print("  attempt: ", p);
	/* The first final result wins; a deferral is final for send-test
	 * too (the retry is minutes away), but a later line may still say
	 * sent or bounced within the same poll. */
	if (s->outcome == CTL_ST_NONE || s->outcome == CTL_ST_DEFERRED) {
		s->outcome = o;
		const char *paren = strstr(st, " (");
		snprintf(s->outcome_text, sizeof s->outcome_text, "%s",
		         paren ? paren + 2 : st);
		size_t n = strlen(s->outcome_text);
		if (n && s->outcome_text[n - 1] == ')')
			s->outcome_text[n - 1] = '\0';
	}
}

/* Reads what was appended to the log since the last call (bounded by
 * what is there: the file is not followed past its current end). */
static void ctl_st_log_poll(struct ctl_st *s)
{
	struct ctl_st_log *g = &s->log;
	if (g->fd < 0)
		return;
	char rb[8192];
	for (int round = 0; round < 1024; round++) {
		ssize_t n = read(g->fd, rb, sizeof rb);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		for (ssize_t i = 0; i < n; i++) {
			char ch = rb[i];
			if (ch == '\n') {
				if (!g->skipping) {
					g->line[g->len] = '\0';
					ctl_st_log_line(s, g->line);
				}
				g->len = 0;
				g->skipping = false;
			} else if (g->len < CTL_ST_LINE_MAX) {
				g->line[g->len++] = ch == '\0' ? ' ' : ch;
			} else {
				g->skipping = true;
			}
		}
	}
}

/* The listener a local application would use: the first that is not
 * smtps (send-test speaks plain SMTP to relayd on this host), with a
 * wildcard address replaced by loopback. */
static const struct conf_listen *ctl_st_listener(const struct conf *cf,
                                                 char *host, size_t n)
{
	for (size_t i = 0; i < cf->nlisten; i++) {
		const struct conf_listen *l = &cf->listen[i];
		if (l->mode == CONF_LISTEN_SMTPS)
			continue;
		if (strcmp(l->host, "0.0.0.0") == 0)
			snprintf(host, n, "127.0.0.1");
		else if (strcmp(l->host, "::") == 0)
			snprintf(host, n, "::1");
		else
			snprintf(host, n, "%s", l->host);
		return l;
	}
	return NULL;
}

/* A mailbox as relayd's server parses it, user@domain (no <>, no null
 * path, ASCII): what RCPT TO and MAIL FROM will carry. */
static bool ctl_st_addr_ok(const char *a)
{
	char path[SMTP_PATH_MAX + 3], out[SMTP_PATH_MAX + 1];
	size_t used = 0;
	if (!a[0] || strlen(a) > SMTP_PATH_MAX || !addr_domain(a))
		return false;
	snprintf(path, sizeof path, "<%s>", a);
	return addr_parse_path(path, strlen(path), 0, out, sizeof out,
	                       &used) == 0 && used == strlen(path) &&
	       strcmp(out, a) == 0;
}

/* The test message: CRLF lines, 7-bit. */
static int ctl_st_message(struct buf *b, const char *from, const char *to,
                          const char *hostname)
{
	char date[64], when[64], mid[96];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
	gmtime_r(&now, &tm);
	strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
	unsigned char rnd[8];
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	close(fd);
	snprintf(mid, sizeof mid, "%" PRId64 ".%02x%02x%02x%02x%02x%02x%02x%02x",
	         (int64_t)now, rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5],
	         rnd[6], rnd[7]);
	buf_printf(b, "From: relayd test <%s>\r\n"
	           "To: <%s>\r\n"
	           "Subject: relayd test message from %s, %s\r\n"
	           "Date: %s\r\n"
	           "Message-ID: <%s.send-test@%s>\r\n"
	           "MIME-Version: 1.0\r\n"
	           "Content-Type: text/plain; charset=us-ascii\r\n"
	           "\r\n"
	           "This is a test message from relayd on %s, sent at %s\r\n"
	           "by `relayctl send-test`. If it reached you, relayd can "
	           "deliver mail\r\n"
	           "to this address. No reply is needed.\r\n",
	           from, to, hostname, when, date, mid, hostname, hostname,
	           when);
	return b->data ? 0 : -ENOMEM;
}

/* The queue id in "250 2.0.0 Ok: queued as QID" (common/smtp.c's
 * SMTP_R_QUEUED). */
static bool ctl_st_qid(const char *text, char qid[QUEUE_ID_SIZE])
{
	const char *p = strstr(text, "queued as ");
	if (!p)
		return false;
	p += strlen("queued as ");
	char w[QUEUE_ID_SIZE + 1];
	size_t n = strspn(p, "0123456789ABCDEFGHJKMNPQRSTVWXYZ");
	if (n != QUEUE_ID_LEN)
		return false;
	memcpy(w, p, n);
	w[n] = '\0';
	return ctl_qid_norm(w, qid);
}

/* Submits the message; fills s->qid. 0, or -errno / 1 after saying why. */
static int ctl_st_submit(struct ctl_ctx *c, struct ctl_st *s,
                         const char *from, const struct buf *msg)
{
	char host[64], err[600], esc[2600];
	const struct conf_listen *l = ctl_st_listener(&c->conf, host,
	                                              sizeof host);
	if (!l) {
		ctl_err("relayd has no plain SMTP listener in %s (only smtps): "
		        "add one on 127.0.0.1 to `listen`", c->conf_path);
		return -EINVAL;
	}
	const char *user = ctl_opt(c, "--user");
	char pw[CRED_PASSWORD_MAX + 2] = "";
	if (user) {
		const char *pf = ctl_opt(c, "--password-file");
		if (pf) {
			FILE *f = fopen(pf, "re");
			if (!f) {
				int e = errno;
				ctl_err("--password-file %s: %s", pf, strerror(e));
				return -e;
			}
			if (!fgets(pw, sizeof pw, f))
				pw[0] = '\0';
			fclose(f);
			pw[strcspn(pw, "\r\n")] = '\0';
		} else if (ctl_read_password(user, false, pw, sizeof pw) < 0) {
			return -EINVAL;
		}
	}
	const char *helo = c->conf.hostname ? c->conf.hostname : "localhost";
	struct ctl_smtp_opts o = {
		.host = host,
		.port = l->port,
		.tls = CONF_TLS_NONE,
		.helo = helo,
		.user = user,
		.password = user ? pw : NULL,
		.timeout_ms = CTL_ST_SMTP_TIMEOUT_MS,
	};
	struct ctl_smtp *sm = NULL;
	int r = ctl_smtp_open(&sm, &o, err, sizeof err);
	explicit_bzero(pw, sizeof pw);
	if (r < 0) {
		ctl_err("submitting to relayd at %s:%u: %s", host, l->port,
		        log_escape(esc, sizeof esc, err, strlen(err)));
		if (r == -ECONNREFUSED)
			fprintf(stderr, "Is relayd running? Start it: relayd -c %s "
			        "(or: systemctl start relayd)\n", c->conf_path);
		else if (r == -EACCES && !user)
			fprintf(stderr, "The listener wants AUTH: give --user NAME "
			        "and --password-file FILE.\n");
		return r;
	}
	printf("Submitting to relayd at %s as a local application would\n",
	       ctl_smtp_peer(sm));
	printf("  MAIL FROM:<%s> RCPT TO:<%s>\n", from, s->rcpt);
	struct deliver_reply rep;
	r = ctl_smtp_send(sm, from, s->rcpt, msg->data, msg->len, &rep);
	ctl_smtp_close(sm);
	if (r < 0) {
		ctl_err("submitting to relayd: %s",
		        log_escape(esc, sizeof esc, err, strlen(err)));
		return r;
	}
	if (rep.code / 100 != 2) {
		ctl_st_print("relayd refused the message: ", rep.text);
		if (rep.code == 530)
			printf("The listener wants AUTH: give --user NAME and "
			       "--password-file FILE.\n");
		else if (rep.code == 554 || rep.code == 550 || rep.code == 553)
			printf("Check relayd's relay policy (trusted_networks, "
			       "sender_domains, recipient_domains) in %s%s.\n",
			       c->conf_path, user ? "" : ", or log in: --user NAME "
			       "--password-file FILE");
		return rep.code / 100 == 4 ? CTL_EXIT_TEMPFAIL : -EPERM;
	}
	if (!ctl_st_qid(rep.text, s->qid)) {
		ctl_st_print("relayd accepted the message, but its reply has no "
		             "queue id: ", rep.text);
		return -EPROTO;
	}
	printf("Accepted as %s by relayd: %s\n", s->qid,
	       log_escape(esc, sizeof esc, rep.text, strlen(rep.text)));
	return 0;
}

/* The recipient's record in the index, or NULL when the message is no
 * longer queued. */
static const struct queue_rcpt *ctl_st_rcpt(const struct queue_msg *m,
                                            const char *addr)
{
	for (size_t i = 0; i < m->nrcpt; i++)
		if (strcasecmp(m->rcpt[i].addr, addr) == 0)
			return &m->rcpt[i];
	return m->nrcpt ? &m->rcpt[0] : NULL;
}

static void ctl_st_next_retry(const struct ctl_ctx *c, const struct ctl_st *s,
                              const struct queue_msg *m)
{
	const struct queue_rcpt *r = m ? ctl_st_rcpt(m, s->rcpt) : NULL;
	if (r && r->next_attempt > 0) {
		char t[40], age[32];
		ctl_fmt_time(t, sizeof t, r->next_attempt);
		ctl_fmt_age(age, sizeof age, r->next_attempt - (int64_t)time(NULL));
		printf("Next retry: %s (in %s); relayd keeps trying until "
		       "max_queue_lifetime.\n", t, age);
	}
	(void)c;
}

/* Looks at the index once: what the log does not say (no log_file), a
 * hold, and the next retry. */
static int ctl_st_index(struct ctl_ctx *c, struct ctl_st *s,
                        struct queue_msg **out)
{
	struct queue_ro *ro = NULL;
	*out = NULL;
	int r = queue_ro_open(c->conf.spool_dir, &ro);
	if (r < 0)
		return r;
	r = queue_ro_get(ro, s->qid, out);
	queue_ro_close(ro);
	return r;
}

static int ctl_st_follow(struct ctl_ctx *c, struct ctl_st *s, int timeout_ms)
{
	int64_t deadline = ctl_st_now_ms() + timeout_ms;
	bool have_log = s->log.fd >= 0;
	struct queue_msg *m = NULL;
	int r;
	printf("Following %s (%s; up to %d s) ...\n", s->qid,
	       have_log ? "relayd's log and queue" : "relayd's queue",
	       timeout_ms / 1000);
	fflush(stdout);
	/* Bounded: one poll every CTL_ST_POLL_MS until the deadline. */
	for (;;) {
		ctl_st_log_poll(s);
		queue_msg_free(m);
		m = NULL;
		r = ctl_st_index(c, s, &m);
		if (r < 0 && r != -ENOENT) {
			ctl_err("reading the queue in %s: %s", c->conf.spool_dir,
			        strerror(-r));
			return r;
		}
		if (r == 0) {
			s->seen_in_queue = true;
			const struct queue_rcpt *q = ctl_st_rcpt(m, s->rcpt);
			/* delivery = hold leaves messages ACTIVE: the scheduler
			 * does not run at all. */
			bool conf_hold = c->conf.delivery == CONF_DELIVERY_HOLD;
			if (m->state == QUEUE_MSG_HOLD || conf_hold) {
				printf("HELD: %s stays in the queue (%s).\n", s->qid,
				       conf_hold ? "delivery = hold in the configuration"
				       : "held with relayctl hold");
				printf("Next: set delivery = smarthost or direct "
				       "(relayctl setup ...), or relayctl release "
				       "%s.\n", s->qid);
				queue_msg_free(m);
				return CTL_EXIT_TEMPFAIL;
			}
			if (q && !have_log && q->attempts > s->seen_attempts) {
				s->seen_attempts = q->attempts;
				printf("  attempt %" PRIu32 ": %s%s%s\n", q->attempts,
				       q->mx ? "via " : "", q->mx ? q->mx : "",
				       q->mx ? ": " : "");
				if (q->last_reply)
					ctl_st_print("    ", q->last_reply);
			}
			if (q && !have_log && s->outcome == CTL_ST_NONE &&
			    q->state != QUEUE_RCPT_PENDING) {
				s->outcome = q->state == QUEUE_RCPT_SENT ? CTL_ST_SENT :
				             q->state == QUEUE_RCPT_BOUNCED
				             ? CTL_ST_BOUNCED : CTL_ST_DEFERRED;
				snprintf(s->outcome_text, sizeof s->outcome_text, "%s",
				         q->last_reply ? q->last_reply : "");
			}
		}
		/* A deferral is told once the index has it too (deliver/ logs
		 * first, then writes the next retry time). */
		if (s->outcome == CTL_ST_DEFERRED &&
		    (r == -ENOENT || (ctl_st_rcpt(m, s->rcpt) &&
		                      ctl_st_rcpt(m, s->rcpt)->state !=
		                      QUEUE_RCPT_PENDING)))
			break;
		if (s->outcome == CTL_ST_SENT || s->outcome == CTL_ST_BOUNCED)
			break;
		if (r == -ENOENT && s->outcome == CTL_ST_NONE) {
			/* Gone without a result line: read the log once more
			 * (deliver/ logs before it removes the message). */
			ctl_st_log_poll(s);
			if (s->outcome != CTL_ST_NONE)
				continue;
			printf("%s has left the queue, but relayd %s whether it "
			       "was sent or bounced.\n", s->qid, have_log
			       ? "logged nothing saying" : "has no log_file to say");
			printf("Next: look in relayd's log (journalctl -u relayd, or "
			       "syslog), and set log_file so send-test can follow "
			       "it.\n");
			return -ENOENT;
		}
		if (ctl_st_now_ms() >= deadline) {
			printf("TIMEOUT: no result for %s within %d s; it is still "
			       "queued.\n", s->qid, timeout_ms / 1000);
			printf("Next: relayctl show %s, relayctl destinations, and "
			       "relayctl log --id %s.\n", s->qid, s->qid);
			queue_msg_free(m);
			return CTL_EXIT_TEMPFAIL;
		}
		fflush(stdout);
		ctl_st_sleep_ms(CTL_ST_POLL_MS);
	}
	fflush(stdout);
	switch (s->outcome) {
	case CTL_ST_SENT:
		ctl_st_print("SENT: the receiving server answered: ",
		             s->outcome_text);
		printf("Next: check that the message arrived in %s's mailbox "
		       "(and not as spam:\nits headers show the SPF, DKIM and "
		       "DMARC results).\n", s->rcpt);
		r = 0;
		break;
	case CTL_ST_BOUNCED:
		ctl_st_print("BOUNCED: ", s->outcome_text);
		printf("Next: the reply above says why; for a direct setup, "
		       "relayctl check-dns YOUR-DOMAIN;\nfor a smarthost, the "
		       "provider's rules for senders (rewrite_sender).\n");
		r = -ECANCELED;
		break;
	default:
		ctl_st_print("DEFERRED: ", s->outcome_text);
		ctl_st_next_retry(c, s, m);
		printf("Next: relayctl show %s and relayctl log --id %s for the "
		       "attempts;\nrelayctl check-dns YOUR-DOMAIN when the "
		       "receiver refuses the sender; relayctl flush %s\nretries "
		       "now.\n", s->qid, s->qid, s->qid);
		r = CTL_EXIT_TEMPFAIL;
	}
	queue_msg_free(m);
	return r;
}

int ctl_cmd_send_test(struct ctl_ctx *c, int argc, char **argv)
{
	(void)argc;
	struct ctl_st s = {.rcpt = argv[0], .log = {.fd = -1}};
	char esc[1024], from_buf[300];
	if (!ctl_st_addr_ok(s.rcpt))
		return ctl_usage_error("send-test: '%s' is not an address "
		                       "(user@domain)",
		                       log_escape(esc, sizeof esc, s.rcpt,
		                                  strlen(s.rcpt)));
	const char *from = ctl_opt(c, "--from");
	if (!from) {
		snprintf(from_buf, sizeof from_buf, "postmaster@%s",
		         c->conf.hostname ? c->conf.hostname : "localhost");
		from = from_buf;
	}
	if (!ctl_st_addr_ok(from))
		return ctl_usage_error("send-test: --from '%s' is not an address",
		                       log_escape(esc, sizeof esc, from,
		                                  strlen(from)));
	int timeout_ms = CTL_ST_TIMEOUT_DEFAULT_MS;
	const char *t = ctl_opt(c, "--timeout");
	if (t) {
		uint64_t v;
		if (conf_parse_duration(t, &v) < 0 || v == 0 || v > 86400000)
			return ctl_usage_error("send-test: bad --timeout '%s'",
			                       log_escape(esc, sizeof esc, t,
			                                  strlen(t)));
		timeout_ms = (int)v;
	}
	if (c->conf.delivery == CONF_DELIVERY_HOLD)
		printf("Note: delivery = hold in %s: relayd keeps mail queued.\n",
		       c->conf_path);
	/* The log is opened at its end before the submission, so every
	 * line about the message is read and none of an older one.
	 * Opened before privileges are dropped (relayd creates it root's,
	 * 0640), never through a link, and only a regular file (a FIFO
	 * would block). */
	if (c->conf.log_file && c->conf.log_file[0]) {
		struct stat st;
		s.log.fd = open(c->conf.log_file, O_RDONLY | O_CLOEXEC |
		                O_NOFOLLOW | O_NONBLOCK);
		if (s.log.fd >= 0 && (fstat(s.log.fd, &st) < 0 ||
		                      !S_ISREG(st.st_mode))) {
			close(s.log.fd);
			s.log.fd = -1;
			errno = EINVAL;
		}
		if (s.log.fd >= 0)
			lseek(s.log.fd, 0, SEEK_END);
		else
			fprintf(stderr, CTL_PROG ": warning: cannot read log_file "
			        "%s (%s): following the queue only\n",
			        c->conf.log_file, errno == EINVAL
			        ? "not a regular file" : strerror(errno));
	}
	struct buf msg;
	buf_init(&msg, 1 << 16);
	int r = ctl_st_message(&msg, from, s.rcpt,
	                       c->conf.hostname ? c->conf.hostname : "localhost");
	if (r == 0)
		r = ctl_st_submit(c, &s, from, &msg);
	buf_free(&msg);
	/* Run as root, relayctl becomes the spool's owner only now: the
	 * log and a --password-file were opened with root's rights. */
	if (r == 0 && (r = ctl_spool_enter(c)) == 0)
		r = ctl_st_follow(c, &s, timeout_ms);
	if (s.log.fd >= 0)
		close(s.log.fd);
	return r;
}
