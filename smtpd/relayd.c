/*
 * smtpd/relayd.c - main(): reads the configuration, opens the log and the
 * spool, binds the listeners (as root if needed, then drops to `user`:
 * smtpd_priv.c),
 * loads the TLS certificate (as `user`), and runs the event loop until
 * SIGTERM/SIGINT. SIGHUP reloads the configuration and the TLS
 * certificate for new sessions and reopens the log. Wires the control
 * socket's "lockout" verb (deliver/) to the SMTP server's lockout tables
 * (smtpd/), so neither module includes the other.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "common/buf.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/pidfile.h"
#include "common/sdnotify.h"
#include "common/tls_stream.h"
#include "common/version.h"
#include "queue/queue.h"
#include "queue/queue_stats.h"
#include "deliver/deliver.h"
#include "deliver/deliver_policy.h"
#include "dkim/dkim.h"
#include "dns/dns.h"
#include "smtpd/smtpd.h"
#include "smtpd/smtpd_maildrop.h"
#include "smtpd/smtpd_policy_net.h"
#include "smtpd/metrics.h"
#include "smtpd/smtpd_priv.h"

struct relayd {
	uv_loop_t loop;
	const char *conf_path;
	struct conf conf;           /* until smtpd_new takes it over */
	struct queue *q;
	struct smtpd *smtpd;
	struct deliver *deliver;
	/* The resolver: made here and kept here until delivery and relayctl
	 * use it (issue 9); re-reads resolv.conf or dns_servers on SIGHUP. */
	struct dns *dns;
	struct smtpd_maildrop *maildrop;   /* relayd-sendmail --import runs */
	struct metrics *metrics;     /* metrics_listen; NULL: off */
	int64_t start_time;         /* unix seconds */
	uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
	/* Hands the statistics counted to the spool's writer once a minute
	 * (queue_stats.h); queue_close flushes the rest. */
	uv_timer_t stats_timer;
	int pid_fd;                 /* pid_file, locked; -1: none */
	char *pid_path;             /* its path as opened (smtpd owns conf) */
	bool stopping;
};

/* relayctl lockout list|clear, from the control socket: the SMTP server
 * answers while it runs (it stops first at shutdown; the socket last). */
static int lockout_ctl_cb(void *arg, const char *args, struct buf *out)
{
	struct relayd *d = arg;
	if (!d->smtpd || d->stopping)
		return buf_appends(out, "err relayd is stopping");
	return smtpd_auth_ctl(d->smtpd, args, out);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: relayd [-c FILE] [-t] | relayd --version\n"
	        "  -c FILE  configuration file (default /etc/relayd/relayd.conf)\n"
	        "  -t       check the configuration and exit (0 when valid)\n"
	        "  -h       this help\n"
	        "Every key can be overridden by RELAYD_<KEY> in the environment.\n");
}

static void signal_closed_cb(uv_handle_t *h)
{
	(void)h;
}

static void close_signals(struct relayd *d)
{
	uv_signal_t *sigs[] = {&d->sig_term, &d->sig_int, &d->sig_hup,
	                       &d->sig_usr1};
	for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
		if (sigs[i]->loop && !uv_is_closing((uv_handle_t *)sigs[i]))
			uv_close((uv_handle_t *)sigs[i], signal_closed_cb);
	/* libuv gave these back to their default action (death): the spool
	 * is closed and relayd is on its way out with 0, so a HUP from
	 * logrotate or a second TERM arriving now is ignored instead. */
	if (d->stopping) {
		signal(SIGTERM, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		signal(SIGUSR1, SIG_IGN);
	}
}

/* The last step of a shutdown: the signal handles stay open until here,
 * so that a HUP or a second TERM during the drain is handled (ignored)
 * rather than killing the process with the default action. */
static void dns_closed_cb(void *arg)
{
	struct relayd *d = arg;
	d->dns = NULL;
}

static void close_dns(struct relayd *d)
{
	if (!d->dns)
		return;
	struct dns_stats st;
	dns_get_stats(d->dns, &st);
	log_info("dns: queries=%" PRIu64 ", sent=%" PRIu64 ", hits=%" PRIu64
	         ", negative_hits=%" PRIu64 ", misses=%" PRIu64 ", timeouts=%"
	         PRIu64, st.queries, st.sent, st.hits, st.neg_hits, st.misses,
	         st.timeouts);
	dns_close(d->dns, dns_closed_cb, d);
}

static void queue_closed_cb(void *arg)
{
	struct relayd *d = arg;
	d->q = NULL;
	close_dns(d);
	close_signals(d);
}

static void close_queue(struct relayd *d)
{
	struct queue_stats st;
	queue_get_stats(d->q, &st);
	log_info("stopping: committed=%" PRIu64 ", batches=%" PRIu64
	         ", syncs=%" PRIu64 ", syncs_per_msg=%.3f, writer_busy=%.2fs, "
	         "gather=%.2fs", st.committed, st.batches, st.syncs,
	         st.committed ? (double)st.syncs / (double)st.committed : 0.0,
	         (double)st.busy_us / 1e6, (double)st.gather_us / 1e6);
	queue_close(d->q, queue_closed_cb, d);
}

/* Shutdown order: the listener (sessions finish their commits), then
 * delivery (sessions close, index changes and DSNs in flight finish),
 * then the spool. */
/* The delivery side learnt a new limit (the smarthost's SIZE): smtpd
 * advertises and enforces it for new sessions. */
static void size_cap_cb(void *arg, uint64_t cap)
{
	smtpd_set_size_cap(arg, cap);
}

static void deliver_stopped_cb(void *arg)
{
	struct relayd *d = arg;
	d->deliver = NULL;
	if (d->q)
		close_queue(d);
}

static void smtpd_stopped_cb(void *arg)
{
	struct relayd *d = arg;
	d->smtpd = NULL;
	if (d->deliver)
		deliver_stop(d->deliver, deliver_stopped_cb, d);
	else if (d->q)
		close_queue(d);
}

static void metrics_stopped_cb(void *arg)
{
	(void)arg;
}

/* GET /metrics: what the process, smtpd and delivery have to say. */
static void metrics_collect_cb(void *arg, struct buf *out)
{
	struct relayd *d = arg;
	metrics_common(out, d->start_time);
	if (d->smtpd)
		smtpd_metrics(d->smtpd, out);
	if (d->deliver)
		deliver_metrics(d->deliver, out);
}

/* Often enough that a crash loses at most a minute of history, rarely
 * enough that the writes cost nothing (never one per message). */
#define STATS_FLUSH_MS (60 * 1000)

static void stats_timer_cb(uv_timer_t *t)
{
	struct relayd *d = t->data;
	if (d->q)
		(void)queue_stats_flush(d->q);
}

static void close_stats_timer(struct relayd *d)
{
	if (d->stats_timer.loop && !uv_is_closing((uv_handle_t *)&d->stats_timer))
		uv_close((uv_handle_t *)&d->stats_timer, signal_closed_cb);
}

static void stop(struct relayd *d)
{
	if (d->stopping)
		return;
	d->stopping = true;
	close_stats_timer(d);
	smtpd_maildrop_stop(d->maildrop);
	d->maildrop = NULL;
	if (d->metrics) {
		metrics_stop(d->metrics, metrics_stopped_cb, d);
		d->metrics = NULL;
	}
	if (d->smtpd)
		smtpd_stop(d->smtpd, smtpd_stopped_cb, d);
	else
		smtpd_stopped_cb(d);
}

/* Keys that only a restart can change: the running values are kept in
 * the new configuration, with a warning when the file says otherwise. */
static void keep_restart_keys(struct conf *nc, const struct conf *old)
{
	struct { const char *key; char **nv; const char *ov; } strs[] = {
		{"spool_dir", &nc->spool_dir, old->spool_dir},
		{"user", &nc->user, old->user},
		{"pid_file", &nc->pid_file, old->pid_file},
		{"metrics_listen", &nc->metrics_listen, old->metrics_listen},
	};
	for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
		if (strcmp(*strs[i].nv, strs[i].ov) == 0)
			continue;
		log_warn("SIGHUP: %s changed; restart relayd to apply it",
		         strs[i].key);
		char *copy = strdup(strs[i].ov);
		if (copy) {
			free(*strs[i].nv);
			*strs[i].nv = copy;
		}
	}
	if (nc->auth_lockout_table != old->auth_lockout_table) {
		log_warn("SIGHUP: auth_lockout_table changed; restart relayd to "
		         "apply it");
		nc->auth_lockout_table = old->auth_lockout_table;
	}
	if (nc->spool_sync != old->spool_sync ||
	    nc->queue_map_size != old->queue_map_size) {
		log_warn("SIGHUP: spool_sync/queue_map_size changed; restart "
		         "relayd to apply them");
		nc->spool_sync = old->spool_sync;
		nc->queue_map_size = old->queue_map_size;
	}
}

/* SIGHUP or `relayctl reload`: a configuration that does not load leaves
 * everything as it was. Sessions already open keep the settings they
 * started with. Returns 0, or -EINVAL with why (as logged) filled in. */
static int reload(struct relayd *d, const char *by, char *why, size_t whylen)
{
	struct conf nc;
	char err[512];
	if (conf_load(&nc, d->conf_path, err, sizeof err) < 0) {
		/* logrotate's HUP must still move us to the new file. */
		int r = log_reopen();
		if (r < 0)
			log_err("%s: cannot reopen log file: %s", by, strerror(-r));
		goto refused;
	}
	if (smtpd_relay_check_conf(&nc, d->conf_path, err, sizeof err) < 0) {
		conf_free(&nc);
		goto refused;
	}
	char e2[sizeof err];
	if (smtpd_check_conf(&nc, e2, sizeof e2) < 0) {
		size_t pl = strlen(d->conf_path);
		snprintf(err, sizeof err, "%.*s: %.*s", (int)(pl > 200 ? 200 : pl),
		         d->conf_path, (int)(sizeof err - 210), e2);
		conf_free(&nc);
		goto refused;
	}
	/* tls_policy_file, destination_policy_file: a bad line keeps the
	 * running configuration (errors name the file and line). */
	if (deliver_policy_check_conf(&nc, err, sizeof err) < 0) {
		conf_free(&nc);
		goto refused;
	}
	keep_restart_keys(&nc, smtpd_conf(d->smtpd));
	/* Listeners added or removed: all new ones bound, or nothing. */
	if (smtpd_listen_update(d->smtpd, &nc, err, sizeof err) < 0) {
		conf_free(&nc);
		goto refused;
	}
	if (d->dns && dns_reload(d->dns, nc.dns_servers, err, sizeof err) < 0)
		log_err("%s: dns: %s; keeping the running resolver", by, err);
	int r = log_open(nc.log_file, nc.log_stderr, nc.log_level);
	if (r < 0)
		log_err("%s: cannot open log file %s: %s", by, nc.log_file,
		        strerror(-r));
	log_set_syslog(nc.log_syslog);
	queue_set_commit_delay(d->q, nc.commit_delay * 1000);
	queue_set_min_free(d->q, nc.queue_min_free);
	if (d->deliver)
		deliver_set_conf(d->deliver, &nc);
	smtpd_set_conf(d->smtpd, &nc);
	if (d->deliver)
		deliver_set_dkim(d->deliver, smtpd_dkim(d->smtpd));
	log_info("%s: configuration reloaded from %s", by, d->conf_path);
	snprintf(why, whylen, "configuration reloaded from %s", d->conf_path);
	return 0;
refused:
	log_err("%s: %s; keeping the running configuration", by, err);
	snprintf(why, whylen, "%s; keeping the running configuration", err);
	return -EINVAL;
}

/* relayctl reload: the same, reported back (and to systemd). */
static int reload_ctl_cb(void *arg, const char *args, struct buf *out)
{
	struct relayd *d = arg;
	char why[1024];
	if (args && args[0])
		return buf_appends(out, "err reload takes no arguments");
	if (!d->smtpd || d->stopping)
		return buf_appends(out, "err relayd is stopping");
	sdnotify("RELOADING=1\nSTATUS=reloading\n");
	int r = reload(d, "reload", why, sizeof why);
	sdnotify("READY=1\nSTATUS=accepting mail\n");
	/* The reply is one line: no CR/LF from a file name can break it. */
	for (char *p = why; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	int e = buf_appends(out, r == 0 ? "ok " : "err ");
	return e < 0 ? e : buf_appends(out, why);
}

static void signal_cb(uv_signal_t *h, int signum)
{
	struct relayd *d = h->data;
	if (signum == SIGUSR1) {
		/* logrotate: the file was renamed; write to a new one. */
		int r = log_reopen();
		if (r < 0)
			log_err("SIGUSR1: cannot reopen log file: %s",
			        strerror(-r));
		else
			log_info("SIGUSR1: log file reopened");
		return;
	}
	if (d->stopping) {
		/* Everything that got its 250 is committed already: leave
		 * now, the rest (messages half sent to us, deliveries in
		 * flight) is the client's or the next start's to redo. */
		log_info("%s again: exiting now", strsignal(signum));
		if (d->pid_path)
			pidfile_close(d->pid_path, d->pid_fd);
		_exit(0);
	}
	if (signum == SIGHUP) {
		char why[1024];
		sdnotify("RELOADING=1\nSTATUS=reloading\n");
		reload(d, "SIGHUP", why, sizeof why);
		sdnotify("READY=1\nSTATUS=accepting mail\n");
		return;
	}
	log_info("%s: shutting down", strsignal(signum));
	sdnotify("STOPPING=1\nSTATUS=stopping\n");
	stop(d);
}

/* Each session can hold a socket and a body file, plus the pool of body
 * files and the index: raise the soft descriptor limit to the hard one
 * (1024 by default would not cover max_connections = 1000). */
static void raise_fd_limit(const struct conf *c)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = (rlim_t)c->max_connections * 2 + 128;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("cannot raise the descriptor limit: %s",
			         strerror(errno));
	}
	if (rl.rlim_cur < want)
		log_warn("descriptor limit %llu is below what max_connections = %u "
		         "may need (%llu); raise LimitNOFILE or ulimit -n",
		         (unsigned long long)rl.rlim_cur, c->max_connections,
		         (unsigned long long)want);
}

int main(int argc, char **argv)
{
	const char *path = getenv("RELAYD_CONFIG");
	bool check_only = false;
	int opt;
	if (!path)
		path = "/etc/relayd/relayd.conf";
	if (argc == 2 && (strcmp(argv[1], "--version") == 0 ||
	                  strcmp(argv[1], "-V") == 0)) {
		printf("relayd %s (libuv %s, %s, %s, c-ares %s)\n", RELAY_VERSION,
		       uv_version_string(), tls_library_version(),
		       queue_library_version(), dns_library_version());
		return 0;
	}
	while ((opt = getopt(argc, argv, "c:th")) != -1) {
		switch (opt) {
		case 'c': path = optarg; break;
		case 't': check_only = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	static struct relayd d;
	char err[512];
	d.conf_path = path;
	if (conf_load(&d.conf, path, err, sizeof err) < 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 1;
	}
	if (deliver_check_conf(&d.conf, err, sizeof err) < 0 ||
	    smtpd_check_conf(&d.conf, err, sizeof err) < 0) {
		fprintf(stderr, "relayd: %s: %s\n", path, err);
		conf_free(&d.conf);
		return 1;
	}
	/* The direct-delivery policy files (errors name their file:line). */
	if (deliver_policy_check_conf(&d.conf, err, sizeof err) < 0) {
		fprintf(stderr, "relayd: %s\n", err);
		conf_free(&d.conf);
		return 1;
	}
	/* The relay policy's lists and rates (errors name file:line). */
	if (smtpd_relay_check_conf(&d.conf, path, err, sizeof err) < 0) {
		fprintf(stderr, "relayd: %s\n", err);
		conf_free(&d.conf);
		return 1;
	}
	/* As root, the account to drop to must exist; spool_dir must exist
	 * or be creatable (-t says so too, before anything is bound). */
	if (smtpd_priv_check(&d.conf, err, sizeof err) < 0) {
		fprintf(stderr, "relayd: %s: %s\n", path, err);
		conf_free(&d.conf);
		return 1;
	}
	if (check_only) {
		/* The daemon loads them in smtpd_start, as its user. */
		if (smtpd_check_tls(&d.conf, err, sizeof err) < 0) {
			fprintf(stderr, "relayd: %s: %s\n", path, err);
			conf_free(&d.conf);
			return 1;
		}
		/* The DKIM keys (as whoever runs -t; relayd loads them as
		 * its user). */
		struct dkim_signer *ds;
		if (dkim_signer_new(d.conf.dkim_keys, d.conf.ndkim_keys,
		                    d.conf.dkim_subdomains, NULL, &ds, err,
		                    sizeof err) < 0) {
			fprintf(stderr, "relayd: %s: %s\n", path, err);
			conf_free(&d.conf);
			return 1;
		}
		dkim_signer_unref(ds);
		printf("relayd: configuration %s is valid\n", path);
		conf_free(&d.conf);
		return 0;
	}
	int r = log_open(d.conf.log_file, d.conf.log_stderr, d.conf.log_level);
	if (r < 0) {
		fprintf(stderr, "relayd: cannot open log file %s: %s\n",
		        d.conf.log_file, strerror(-r));
		return 1;
	}
	log_set_syslog(d.conf.log_syslog);
	signal(SIGPIPE, SIG_IGN);
	/* Before anything is bound: a second relayd says so plainly. */
	d.pid_fd = -1;
	if (d.conf.pid_file[0]) {
		d.pid_fd = pidfile_open(d.conf.pid_file, err, sizeof err);
		d.pid_path = strdup(d.conf.pid_file);
		if (d.pid_fd < 0 || !d.pid_path) {
			if (d.pid_fd >= 0) {
				snprintf(err, sizeof err, "out of memory");
				close(d.pid_fd);
			}
			free(d.pid_path);
			log_err("%s", err);
			log_close();
			conf_free(&d.conf);
			return 1;
		}
	}

	r = sdnotify_open();
	if (r < 0)
		log_warn("NOTIFY_SOCKET: %s; systemd will not hear from relayd",
		         strerror(-r));

	int rc = 1;
	uv_loop_init(&d.loop);
	d.start_time = (int64_t)time(NULL);
	r = smtpd_new(&d.loop, &d.conf, NULL, &d.smtpd);
	if (r < 0)
		goto fail;
	const struct conf *c = smtpd_conf(d.smtpd);
	raise_fd_limit(c);
	if (smtpd_priv_make_spool(c) < 0 || smtpd_priv_drop(c) < 0)
		goto fail;
	struct queue_opts qo = {
		.spool_dir = c->spool_dir,
		.map_size = c->queue_map_size,
		.commit_delay_us = c->commit_delay * 1000,
		.min_free = c->queue_min_free,
		.sync = c->spool_sync == CONF_SYNC_FSYNC ? QUEUE_SYNC_FSYNC
		                                         : QUEUE_SYNC_SYNCFS,
		/* Listening must not wait for the spool's recovery (a
		 * million messages take a minute to check). */
		.recover_async = true,
		/* Test hook: tests/e2e/test_recovery_async.py holds recovery
		 * at this gate to see what happens while it runs. */
		.recover_gate = getenv("RELAYD_TEST_RECOVERY_GATE"),
	};
	r = queue_open(&d.loop, &qo, &d.q);
	if (r < 0) {
		log_err("cannot open spool %s: %s", c->spool_dir, strerror(-r));
		goto fail;
	}
	smtpd_set_queue(d.smtpd, d.q);
	uv_timer_init(&d.loop, &d.stats_timer);
	d.stats_timer.data = &d;
	r = uv_timer_start(&d.stats_timer, stats_timer_cb, STATS_FLUSH_MS,
	                   STATS_FLUSH_MS);
	if (r < 0) {
		log_err("stats: cannot start the flush timer: %s", uv_strerror(r));
		goto fail;
	}
	r = deliver_new(&d.loop, d.q, c, &d.deliver);
	if (r < 0)
		goto fail;
	deliver_set_size_cb(d.deliver, size_cap_cb, d.smtpd);
	struct dns_opts dno = {.servers = c->dns_servers};
	r = dns_new(&d.loop, &dno, &d.dns, err, sizeof err);
	if (r < 0) {
		log_err("dns: %s", err);
		goto fail;
	}
	deliver_set_dns(d.deliver, d.dns);
	r = deliver_ctl_verb(d.deliver, "lockout", lockout_ctl_cb, &d);
	if (r == 0)
		r = deliver_ctl_verb(d.deliver, "reload", reload_ctl_cb, &d);
	if (r < 0) {
		log_err("control: cannot add the lockout and reload verbs: %s",
		        strerror(-r));
		goto fail;
	}
	if (smtpd_start(d.smtpd) < 0)
		goto fail;
	/* relayd's own DSNs are signed with the keys smtpd loaded. */
	deliver_set_dkim(d.deliver, smtpd_dkim(d.smtpd));
	if (c->metrics_listen[0] &&
	    metrics_start(&d.loop, c->metrics_listen, metrics_collect_cb, &d,
	                  &d.metrics) < 0)
		goto fail;

	uv_signal_init(&d.loop, &d.sig_term);
	uv_signal_init(&d.loop, &d.sig_int);
	uv_signal_init(&d.loop, &d.sig_hup);
	uv_signal_init(&d.loop, &d.sig_usr1);
	d.sig_term.data = d.sig_int.data = d.sig_hup.data = d.sig_usr1.data = &d;
	uv_signal_start(&d.sig_term, signal_cb, SIGTERM);
	uv_signal_start(&d.sig_int, signal_cb, SIGINT);
	uv_signal_start(&d.sig_hup, signal_cb, SIGHUP);
	uv_signal_start(&d.sig_usr1, signal_cb, SIGUSR1);
	/* Listening (and recovering in the background, which accepting does
	 * not wait for): what relayd-sendmail left in the maildrop while
	 * relayd was stopped is submitted now, by a child, over loopback. */
	(void)smtpd_maildrop_start(&d.loop, c, path, &d.maildrop);
	log_info("relayd started: hostname=%s, spool=%s, delivery=%s",
	         c->hostname, c->spool_dir,
	         c->delivery == CONF_DELIVERY_SMARTHOST ? "smarthost" :
	         c->delivery == CONF_DELIVERY_DIRECT ? "direct" : "hold");
	/* Type=notify: listening (recovery goes on in the background, and
	 * mail is accepted meanwhile). */
	char ready[96];
	snprintf(ready, sizeof ready, "READY=1\nMAINPID=%ld\nSTATUS=accepting "
	         "mail\n", (long)getpid());
	sdnotify(ready);

	uv_run(&d.loop, UV_RUN_DEFAULT);
	rc = 0;
	goto out;

fail:
	/* Close what was opened, then let the loop run the close callbacks. */
	d.stopping = true;
	close_stats_timer(&d);
	if (d.metrics) {
		metrics_stop(d.metrics, metrics_stopped_cb, &d);
		d.metrics = NULL;
	}
	if (d.smtpd)
		smtpd_stop(d.smtpd, smtpd_stopped_cb, &d);
	else
		smtpd_stopped_cb(&d);
	uv_run(&d.loop, UV_RUN_DEFAULT);
out:
	r = uv_loop_close(&d.loop);
	if (r < 0) {
		log_err("event loop closed with open handles: %s", uv_strerror(r));
		rc = 1;
	}
	if (d.pid_path)
		pidfile_close(d.pid_path, d.pid_fd);
	free(d.pid_path);
	log_info("relayd stopped");
	sdnotify_close();
	log_close();
	conf_free(&d.conf);
	return rc;
}
