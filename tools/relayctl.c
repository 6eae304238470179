/*
 * tools/relayctl.c - relayctl's main(): global options, the command table
 * (name, synopsis, help line, accepted options, argument counts, handler),
 * usage text, and loading relayd's configuration to find the spool. The
 * commands live in ctl_*.c. Adding one is a line in ctl_cmds[] and a
 * ctl_cmd_* handler; usage text is generated from the table.
 *
 * Exit status: 0 success, 1 error (message on stderr), 2 usage error.
 */
#include "ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/tls_stream.h"
#include "common/version.h"
#include "dns/dns.h"
#include "tools/ctl_dkim.h"

extern char **environ;

#define CTL_F_JSON 0x1   /* accepts --json */
#define CTL_F_CONF 0x2   /* needs the configuration (spool_dir, ...) */
#define CTL_F_SPOOL 0x4  /* opens the spool: as root, becomes its owner */
#define CTL_F_EXIT2 0x8  /* a configuration error exits 2, not 1 (check:
                            1 means problems found) */

struct ctl_cmd {
	const char *name;
	const char *args;    /* synopsis after the name */
	const char *help;    /* one line for the usage text */
	unsigned flags;      /* CTL_F_* */
	int min_args, max_args;
	ctl_cmd_fn run;
	/* The command's own options, space separated: "--to=" takes a
	 * value (as "--to VALUE" or "--to=VALUE"), "--generate" does not;
	 * short ones ("-f", "-n=") are listed the same way.
	 * Handlers read them with ctl_opt(). NULL: none. */
	const char *opts;
};

static int ctl_cmd_help(struct ctl_ctx *c, int argc, char **argv);

static const struct ctl_cmd ctl_cmds[] = {
	{"list", "[--json] [FILTERS]", "messages, oldest first, with undelivered "
	 "recipients", CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL, 0, 0,
	 ctl_cmd_list, "--state= --to= --older= --from="},
	{"show", "ID [--json]", "envelope, recipients and headers of a message",
	 CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL, 1, 1, ctl_cmd_show, NULL},
	{"cat", "ID [--raw]", "the stored message to stdout (escaped on a "
	 "terminal unless --raw)", CTL_F_CONF | CTL_F_SPOOL, 1, 1, ctl_cmd_cat,
	 "--raw"},
	{"check", "[--json]", "verify the spool: index, bodies, schedule, temp "
	 "files", CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL | CTL_F_EXIT2, 0, 0,
	 ctl_cmd_check, NULL},
	{"flush", "[ID]", "make ID (or every active message) due now",
	 CTL_F_CONF | CTL_F_SPOOL, 0, 1, ctl_cmd_flush, NULL},
	{"hold", "ID", "keep ID from delivery until released", CTL_F_CONF | CTL_F_SPOOL, 1, 1,
	 ctl_cmd_hold, NULL},
	{"release", "ID", "release a held message; it is due now", CTL_F_CONF | CTL_F_SPOOL,
	 1, 1, ctl_cmd_release, NULL},
	{"delete", "ID", "remove ID from the queue, without a DSN", CTL_F_CONF | CTL_F_SPOOL,
	 1, 1, ctl_cmd_delete, NULL},
	{"bounce", "ID", "fail ID's undelivered recipients, with a DSN",
	 CTL_F_CONF | CTL_F_SPOOL, 1, 1, ctl_cmd_bounce, NULL},
	{"requeue", "ID", "retry ID's undelivered recipients from scratch, now",
	 CTL_F_CONF | CTL_F_SPOOL, 1, 1, ctl_cmd_requeue, NULL},
	{"status", "[--json]", "one screen: up since, listeners, delivery, "
	 "paused destinations, queue, oldest message, deferral reasons",
	 CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL, 0, 0, ctl_cmd_status, NULL},
	{"stats", "[--by hour|day] [--by credential|domain] [--json]",
	 "queue counts and the state of delivery; --by: the history kept in "
	 "the index (48 hours, 60 days)",
	 CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL, 0, 0, ctl_cmd_stats, "--by=*"},
	{"destinations", "[--json]", "where delivery goes: sessions, state "
	 "(paused until when, why), last error", CTL_F_JSON | CTL_F_CONF |
	 CTL_F_SPOOL, 0, 0, ctl_cmd_destinations, NULL},
	{"reload", "", "relayd reads its configuration again (as on SIGHUP) "
	 "and says whether it took it", CTL_F_CONF | CTL_F_SPOOL, 0, 0,
	 ctl_cmd_reload, NULL},
	{"pause", "DEST [--for DURATION]", "no new deliveries to DEST until "
	 "resumed (below)", CTL_F_CONF | CTL_F_SPOOL, 1, 1,
	 ctl_cmd_pause, "--for="},
	{"resume", "DEST", "deliver to a paused DEST again, now", CTL_F_CONF | CTL_F_SPOOL, 1, 1, ctl_cmd_resume, NULL},
	{"lockout", "SUBCOMMAND [ARG]", "failed-AUTH lockouts (below)",
	 CTL_F_JSON | CTL_F_CONF | CTL_F_SPOOL, 1, 2, ctl_cmd_lockout, NULL},
	{"user", "SUBCOMMAND [NAME]", "SMTP AUTH credentials (below)",
	 CTL_F_JSON | CTL_F_CONF, 1, 2, ctl_cmd_user,
	 "--owner= --from-domains= --to-domains= --hourly= --daily= "
	 "--generate"},
	{"log", "[-f] [LOG FILTERS] [-n N]", "relayd's log_file: delivery lines, "
	 "one message's story, following", CTL_F_JSON | CTL_F_CONF, 0, 0,
	 ctl_cmd_log, "-f -n= --id= --rcpt= --from= --status= --since="},
	{"dkim", "SUBCOMMAND [ARGS]", "DKIM keys: make, show, rotate (below)",
	 CTL_F_JSON | CTL_F_CONF, 1, 3, ctl_cmd_dkim,
	 "--type= --bits= --dir= --selector= --check --retire="},
	{"check-dns", "DOMAIN [OPTIONS] [--json]", "what receivers will check: PTR, "
	 "SPF, DKIM, DMARC, MX, port 25, DNSBLs (below)",
	 CTL_F_JSON | CTL_F_CONF | CTL_F_EXIT2, 1, 1, ctl_cmd_check_dns,
	 "--ip=* --selector=* --mail-from= --probe="},
	{"setup", "direct|smarthost [OPTIONS]", "write a working configuration "
	 "(below)", 0, 1, 1, ctl_cmd_setup,
	 "--config= --force --hostname= --host= --user= --password-file= "
	 "--tls= --tls-ca= --tls-name= --tls-verify= --check-only --timeout= "
	 "--domain= --selector= --dkim-dir= --ip="},
	{"send-test", "ADDR [--from ADDR]", "send a test message through "
	 "relayd and follow it (below)", CTL_F_CONF, 1, 1,
	 ctl_cmd_send_test, "--from= --timeout= --user= --password-file="},
	{"help", "", "this text", 0, 0, 1, ctl_cmd_help, NULL},
};

#define CTL_NCMDS (sizeof ctl_cmds / sizeof *ctl_cmds)

static void ctl_usage(FILE *f)
{
	size_t w = 0;
	for (size_t i = 0; i < CTL_NCMDS; i++) {
		size_t n = strlen(ctl_cmds[i].name) + 1 + strlen(ctl_cmds[i].args);
		if (n > w)
			w = n;
	}
	fprintf(f,
	        "usage: " CTL_PROG " [-c FILE] COMMAND [ARGS] [--json]\n"
	        "\n"
	        "Inspects and changes relayd's mail queue, and manages its SMTP AUTH\n"
	        "credentials. Reading works whether relayd is running or stopped.\n"
	        "Queue changes go through relayd's control socket; while relayd is\n"
	        "stopped, hold, release and delete change the spool directly.\n"
	        "\n"
	        "Commands:\n");
	for (size_t i = 0; i < CTL_NCMDS; i++) {
		char syn[128];
		snprintf(syn, sizeof syn, "%s %s", ctl_cmds[i].name,
		         ctl_cmds[i].args);
		fprintf(f, "  %-*s  %s\n", (int)w, syn, ctl_cmds[i].help);
	}
	fprintf(f,
	        "\n"
	        "User subcommands (on credentials_file; passwords are read "
	        "from the terminal,\nor as one line from standard input):\n"
	        "  user add NAME [--owner O] [--from-domains LIST] "
	        "[--to-domains LIST]\n"
	        "           [--hourly N] [--daily N] [--generate]\n"
	        "  user del NAME\n"
	        "  user list [--json]          never shows hashes\n"
	        "  user passwd NAME [--generate]\n"
	        "  user disable NAME | user enable NAME\n"
	        "  user test NAME              exit 0 and \"ok\" if the "
	        "password is right\n"
	        "LIST: domains or addresses separated by ','; --generate "
	        "prints a new random\npassword once.\n"
	        "\n"
	        "Lockout subcommands (relayd's failed-AUTH tables, held in its "
	        "memory):\n"
	        "  lockout list [--json]       clients locked out or with "
	        "failures, and the\n"
	        "                              names whose checks are slowed "
	        "down\n"
	        "  lockout clear [ADDR|NAME]   lift all of it, or one client's "
	        "(an IPv6\n"
	        "                              address stands for its /64) or "
	        "one name's\n"
	        "\n"
	        "DKIM subcommands (keys named by relayd.conf's dkim_key lines; "
	        "relayctl prints\nthe lines to add or remove, it never edits "
	        "the file):\n"
	        "  dkim keygen DOMAIN SELECTOR [--type rsa|ed25519] [--bits N] "
	        "[--dir DIR]\n"
	        "        a new private key in DIR (default " CTL_DKIM_DIR "), "
	        "0600,\n"
	        "        never over a file; prints the dkim_key line and the "
	        "DNS record\n"
	        "  dkim show [--json]          each key: type, size, active, "
	        "its record, and\n"
	        "                              whether DNS serves it (exit 1 "
	        "if not)\n"
	        "  dkim rotate DOMAIN [--type T] [--bits N] [--selector S] "
	        "[--dir DIR]\n"
	        "        step 1: a new key under a dated selector (s20261205) "
	        "and its record\n"
	        "  dkim rotate DOMAIN --check --selector S\n"
	        "        step 2: does DNS serve it? then the dkim_key line to "
	        "add\n"
	        "  dkim rotate DOMAIN --retire SELECTOR\n"
	        "        step 3: what to remove, and when\n"
	        "\n"
	        "check-dns DOMAIN: from this host, through relayd's resolver "
	        "(dns_servers),\n"
	        "each item OK, WARN, FAIL or INFO with the record to publish or "
	        "change:\n"
	        "  --ip ADDR          an egress address to check (repeatable; "
	        "default:\n"
	        "                     smtp_bind_address[6], else the host's "
	        "source addresses)\n"
	        "  --selector S       a DKIM selector of DOMAIN besides the "
	        "dkim_key lines\n"
	        "  --mail-from D      the envelope (MAIL FROM) domain, when "
	        "not DOMAIN\n"
	        "  --probe HOST[:PORT]  where to try outbound port 25 (default: "
	        "DOMAIN's MX)\n"
	        "\n"
	        "Setup (writes relayd's configuration, -c FILE or --config FILE, "
	        "default\n" CTL_DEFAULT_CONF "; never replaces a file without "
	        "--force):\n"
	        "  setup smarthost --host HOST:PORT [--user U] [--password-file F]\n"
	        "        [--tls auto|implicit|starttls|none] [--tls-ca FILE] "
	        "[--tls-name NAME]\n"
	        "        [--tls-verify yes|no] [--hostname H] [--check-only] "
	        "[--timeout 30s]\n"
	        "        the password comes from F's first line, the terminal "
	        "(no echo) or\n"
	        "        one line of stdin, and is stored 0600 next to the "
	        "configuration;\n"
	        "        then the login is checked (EHLO, TLS, AUTH; no mail "
	        "sent)\n"
	        "  setup direct --domain D [--hostname H] [--selector S] "
	        "[--dkim-dir DIR]\n"
	        "        [--ip ADDR,ADDR]\n"
	        "        writes the configuration and a DKIM key (RSA-2048, "
	        "0600), prints\n"
	        "        every DNS record to publish (PTR, A/AAAA, SPF, DKIM, "
	        "DMARC)\n"
	        "  On a terminal, setup asks for what a flag does not give.\n"
	        "\n"
	        "Send-test (to relayd's first non-smtps listener, as a local "
	        "application):\n"
	        "  send-test ADDR [--from ADDR] [--timeout 120s] [--user U "
	        "--password-file F]\n"
	        "        follows the message through relayd's log and queue; "
	        "exit 0 sent,\n"
	        "        1 bounced, 75 deferred, held or no result within "
	        "--timeout\n"
	        "\n"
	        "Options:\n"
	        "  -c FILE     relayd's configuration file (default: "
	        "$RELAYD_CONFIG, else\n"
	        "              " CTL_DEFAULT_CONF "); RELAYD_<KEY> variables "
	        "override its keys,\n"
	        "              e.g. RELAYD_SPOOL_DIR=/var/spool/relayd\n"
	        "  --json      JSON output for scripts (list, show, stats, "
	        "destinations,\n"
	        "              check, user list, lockout list, dkim show,\n"
	        "              check-dns)\n"
	        "  -h, --help  this text\n"
	        "  -V, --version  relayctl's version and its libraries'\n"
	        "\n"
	        "List filters (all given must match):\n"
	        "  --state STATE  pending, deferred, sent or bounced: a "
	        "recipient in that state;\n"
	        "                 active or hold: the message's state\n"
	        "  --to DOMAIN    a recipient at exactly DOMAIN (any case)\n"
	        "  --older AGE    arrived at least AGE ago: 30s, 15m, 2h, 3d\n"
	        "  --from ADDR    the sender is ADDR ('<>' for bounces)\n"
	        "\n"
	        "Log filters (all given must match; log reads log_file):\n"
	        "  --id ID        the whole story of one message: accepted, "
	        "each attempt,\n"
	        "                 sent/deferred/bounced, its DSN, removed\n"
	        "  --rcpt ADDR    delivery lines to ADDR\n"
	        "  --from ADDR    messages from ADDR: accepted and delivery "
	        "lines\n"
	        "  --status S     delivery lines with status S: sent, deferred, "
	        "bounced\n"
	        "  --since T      lines from T on: an age (30m, 2h, 1d) or a UTC "
	        "time\n"
	        "                 (2026-12-05T10:00)\n"
	        "  -n N           the last N matching lines (50; all with --id)\n"
	        "  -f             then follow new lines, across rotation and "
	        "truncation\n"
	        "\n"
	        "DEST (pause, resume): a destination as 'destinations' names "
	        "it; 'smarthost';\nor a recipient domain (delivery = direct: "
	        "the destination it routes to).\nA pause lives in relayd's "
	        "memory: a restart forgets it.\n"
	        "\n"
	        "ID is a 16-character queue id as shown by 'list'.\n"
	        "Exit status: 0 success, 1 error, 2 usage error; check: 0 clean,\n"
	        "1 problems found (one line each), 2 the spool could not be "
	        "checked;\ncheck-dns: 0 nothing FAILed, 1 an item FAILed, 2 "
	        "usage or configuration.\n");
}

/* Prints "relayctl: <message>" and the usage text to stderr; returns the
 * usage exit status. Callers pass user-typed text through ctl_esc(). */
int ctl_usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, CTL_PROG ": %s\n\n", msg);
	ctl_usage(stderr);
	return CTL_EXIT_USAGE;
}

/* A command-line word made safe to echo to a terminal. */
static const char *ctl_esc(char *dst, size_t n, const char *s)
{
	return log_escape(dst, n, s, strlen(s));
}

static int ctl_cmd_help(struct ctl_ctx *c, int argc, char **argv)
{
	(void)c;
	(void)argc;
	(void)argv;
	ctl_usage(stdout);
	return 0;
}

static const struct ctl_cmd *ctl_cmd_find(const char *name)
{
	for (size_t i = 0; i < CTL_NCMDS; i++)
		if (strcmp(ctl_cmds[i].name, name) == 0)
			return &ctl_cmds[i];
	return NULL;
}

/* Looks name ("--to") up in the command's option list: 0 = not an
 * option of it, 1 = a flag, 2 = takes a value, 3 = takes a value and may
 * be given more than once ("--ip=*"; the handler walks c->opts). */
static int ctl_cmd_opt_kind(const struct ctl_cmd *cmd, const char *name,
                            size_t namelen)
{
	const char *p = cmd->opts;
	while (p && *p) {
		size_t n = strcspn(p, " ");
		bool many = n > 1 && p[n - 1] == '*' && p[n - 2] == '=';
		bool val = many || (n > 0 && p[n - 1] == '=');
		size_t bare = many ? n - 2 : val ? n - 1 : n;
		if (bare == namelen && strncmp(p, name, namelen) == 0)
			return many ? 3 : val ? 2 : 1;
		p += n;
		p += strspn(p, " ");
	}
	return 0;
}

const char *ctl_opt(const struct ctl_ctx *c, const char *name)
{
	for (size_t i = 0; i < c->nopts; i++)
		if (strcmp(c->opts[i].name, name) == 0)
			return c->opts[i].value;
	return NULL;
}

/* The configuration relayd would use. Without -c or $RELAYD_CONFIG, a
 * missing default file is not an error: the built-in defaults plus
 * RELAYD_<KEY> variables apply (containers configure by environment). */
static int ctl_conf_load(struct ctl_ctx *c, bool explicit_path)
{
	char err[512] = "";
	int r;
	if (!explicit_path && access(c->conf_path, F_OK) != 0 &&
	    errno == ENOENT) {
		r = conf_init(&c->conf);
		if (r < 0) {
			ctl_err("%s", strerror(-r));
			return r;
		}
		r = conf_apply_env(&c->conf, environ, err, sizeof err);
	} else {
		r = conf_load(&c->conf, c->conf_path, err, sizeof err);
	}
	if (r < 0) {
		ctl_err("%s", err[0] ? err : strerror(-r));
		conf_free(&c->conf);
		return r;
	}
	c->conf_loaded = true;
	return 0;
}

/* Takes -c FILE / -cFILE at argv[*i]; returns 1 if it was -c, 0 if not,
 * or CTL_EXIT_USAGE negated when the file name is missing. */
static int ctl_opt_conf(struct ctl_ctx *c, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	if (strncmp(a, "-c", 2) != 0)
		return 0;
	if (a[2]) {
		c->conf_path = a + 2;
		return 1;
	}
	if (*i + 1 >= argc)
		return -CTL_EXIT_USAGE;
	c->conf_path = argv[++*i];
	return 1;
}

int main(int argc, char **argv)
{
	struct ctl_ctx c = {0};
	bool explicit_conf = false;
	char esc[256];
	int i = 1, r;

	/* Global options, before the command. */
	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			ctl_usage(stdout);
			return CTL_EXIT_OK;
		}
		if (strcmp(a, "--json") == 0) {
			c.json = true;
			continue;
		}
		if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
			printf(CTL_PROG " %s (libuv %s, %s, %s, c-ares %s)\n",
			       RELAY_VERSION,
			       uv_version_string(), tls_library_version(),
			       queue_library_version(), dns_library_version());
			return CTL_EXIT_OK;
		}
		r = ctl_opt_conf(&c, argc, argv, &i);
		if (r < 0)
			return ctl_usage_error("option %s needs a file name",
			                       ctl_esc(esc, sizeof esc, a));
		if (r == 0)
			return ctl_usage_error("unknown option '%s'",
			                       ctl_esc(esc, sizeof esc, a));
		explicit_conf = true;
	}
	if (i >= argc)
		return ctl_usage_error("no command given");
	const struct ctl_cmd *cmd = ctl_cmd_find(argv[i]);
	if (!cmd)
		return ctl_usage_error("unknown command '%s'",
		                       ctl_esc(esc, sizeof esc, argv[i]));
	i++;

	/* The command's options and arguments, in any order; positional
	 * arguments are packed to the front of pos (argv is writable). */
	char **pos = argv + i;
	int npos = 0;
	bool opts_done = false;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (opts_done || a[0] != '-' || a[1] == '\0') {
			pos[npos++] = argv[i];
			continue;
		}
		if (strcmp(a, "--") == 0) {
			opts_done = true;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			ctl_usage(stdout);
			return CTL_EXIT_OK;
		} else if (strcmp(a, "--json") == 0) {
			c.json = true;
		} else if ((r = ctl_opt_conf(&c, argc, argv, &i)) != 0) {
			if (r < 0)
				return ctl_usage_error("option %s needs a file name",
				                       ctl_esc(esc, sizeof esc, a));
			explicit_conf = true;
		} else if ((r = ctl_cmd_opt_kind(cmd, a, strcspn(a, "="))) != 0) {
			const char *eq = strchr(a, '=');
			if (c.nopts == CTL_OPTS_MAX)
				return ctl_usage_error("too many options");
			if (r == 1 && eq)
				return ctl_usage_error("option %s takes no value",
				                       ctl_esc(esc, sizeof esc, a));
			if (r >= 2 && !eq && i + 1 >= argc)
				return ctl_usage_error("option %s needs a value",
				                       ctl_esc(esc, sizeof esc, a));
			/* The name is cut at '=' in place (argv is writable). */
			const char *val = r == 1 ? "" : eq ? eq + 1 : argv[++i];
			if (eq)
				*(char *)eq = '\0';
			for (size_t k = 0; r != 3 && k < c.nopts; k++)
				if (strcmp(c.opts[k].name, a) == 0)
					return ctl_usage_error("option %s given twice",
					                       ctl_esc(esc, sizeof esc, a));
			c.opts[c.nopts].name = a;
			c.opts[c.nopts].value = val;
			c.nopts++;
		} else {
			return ctl_usage_error("unknown option '%s'",
			                       ctl_esc(esc, sizeof esc, a));
		}
	}
	if (c.json && !(cmd->flags & CTL_F_JSON))
		return ctl_usage_error("'%s' has no --json output", cmd->name);
	if (npos < cmd->min_args || npos > cmd->max_args) {
		char syn[128];
		snprintf(syn, sizeof syn, "%s %s", cmd->name, cmd->args);
		return ctl_usage_error(npos < cmd->min_args ?
		                       "missing argument; usage: " CTL_PROG
		                       " [-c FILE] %s" :
		                       "too many arguments; usage: " CTL_PROG
		                       " [-c FILE] %s", syn);
	}

	if (cmd->flags & CTL_F_CONF) {
		const char *env = getenv("RELAYD_CONFIG");
		if (!c.conf_path && env && env[0]) {
			c.conf_path = env;
			explicit_conf = true;
		}
		if (!c.conf_path)
			c.conf_path = CTL_DEFAULT_CONF;
		if (ctl_conf_load(&c, explicit_conf) < 0)
			return cmd->flags & CTL_F_EXIT2 ? CTL_EXIT_USAGE : CTL_EXIT_ERR;
	}
	/* Before the command opens the index, a body or the control socket. */
	if ((cmd->flags & CTL_F_SPOOL) && ctl_spool_enter(&c) < 0) {
		conf_free(&c.conf);
		return cmd->flags & CTL_F_EXIT2 ? CTL_EXIT_USAGE : CTL_EXIT_ERR;
	}

	/* Output is written in large blocks (commands render into memory
	 * first; see struct ctl_out). */
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	c.now = (int64_t)time(NULL);

	r = cmd->run(&c, npos, pos);

	if (fflush(stdout) != 0 || ferror(stdout)) {
		if (r == 0)
			ctl_err("writing to stdout: %s", strerror(errno));
		r = -EIO;
	}
	if (c.conf_loaded)
		conf_free(&c.conf);
	if (r == CTL_EXIT_USAGE)
		return CTL_EXIT_USAGE;      /* from ctl_usage_error() */
	if (r == CTL_EXIT_TEMPFAIL)
		return CTL_EXIT_TEMPFAIL;   /* send-test: deferred */
	return r < 0 ? CTL_EXIT_ERR : CTL_EXIT_OK;
}
