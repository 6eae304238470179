/*
 * smtpd/smtpd.c - The SMTP server: binds the listeners and accepts on them
 * (smtpd_session.c runs each connection), keeps the configuration new
 * sessions get (shared, reference counted: a SIGHUP installs a new one,
 * sessions keep theirs), the server's TLS context and its reloads on the
 * thread pool (smtpd_tls.c loads it), and the stop sequence. Owns the
 * listeners' uv_tcp_t handles; the server is freed when the last
 * listener, session, TLS load and AUTH job is gone.
 */
#include "smtpd/smtpd_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/smtp.h"
#include "smtpd/smtpd_policy.h"
#include "smtpd/smtpd_tls.h"

struct smtpd_conf *smtpd_conf_hold(struct smtpd_conf *c)
{
	c->refs++;
	return c;
}

/* The access lists, parsed once per configuration. smtpd_check_conf
 * refused bad ones before; should one slip through (or memory run out),
 * the list is empty: nobody trusted, AUTH nowhere in plaintext (the safe
 * side). */
static void conf_lists(struct smtpd_conf *c)
{
	char err[256];
	if (smtpd_cidr_parse(c->conf.trusted_networks, &c->trusted, err,
	                     sizeof err) < 0)
		log_err("trusted_networks: %s; trusting nobody", err);
	if (smtpd_cidr_parse(c->conf.auth_plaintext_networks, &c->plaintext,
	                     err, sizeof err) < 0)
		log_err("auth_plaintext_networks: %s; AUTH only in TLS", err);
}

int smtpd_check_conf(const struct conf *conf, char *err, size_t errlen)
{
	struct smtpd_cidr_list l;
	char msg[256];
	int r;
	if ((r = smtpd_cidr_parse(conf->trusted_networks, &l, msg,
	                          sizeof msg)) < 0) {
		snprintf(err, errlen, "trusted_networks: %s", msg);
		return r;
	}
	smtpd_cidr_list_free(&l);
	if ((r = smtpd_cidr_parse(conf->auth_plaintext_networks, &l, msg,
	                          sizeof msg)) < 0) {
		snprintf(err, errlen, "auth_plaintext_networks: %s", msg);
		return r;
	}
	smtpd_cidr_list_free(&l);
	return 0;
}

void smtpd_conf_drop(struct smtpd_conf *c)
{
	if (c && --c->refs == 0) {
		smtpd_relay_free(c->relay);
		smtpd_cidr_list_free(&c->trusted);
		smtpd_cidr_list_free(&c->plaintext);
		conf_free(&c->conf);
		free(c);
	}
}

/* A shared configuration made from conf, which is moved in (and left
 * zeroed) on success. NULL when its relay policy does not parse (the
 * callers checked it before: only out of memory) with conf untouched. */
static struct smtpd_conf *conf_new(struct conf *conf)
{
	char err[512];
	struct smtpd_conf *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	if (smtpd_relay_new(conf, NULL, &c->relay, err, sizeof err) < 0) {
		log_err("relay policy: %s", err);
		free(c);
		return NULL;
	}
	c->conf = *conf;
	memset(conf, 0, sizeof *conf);
	c->refs = 1;
	conf_lists(c);
	return c;
}

/* A certificate being loaded on the thread pool (SIGHUP). */
struct tls_load {
	uv_work_t req;
	struct smtpd *srv;
	uint64_t gen;
	char *cert, *key;
	SSL_CTX *ctx;          /* the result, or NULL with err */
	char err[512];
};

/* ---- server ------------------------------------------------------------- */

int smtpd_new(uv_loop_t *loop, struct conf *conf, struct queue *q,
              struct smtpd **out)
{
	struct smtpd *srv = calloc(1, sizeof *srv);
	struct smtpd_relay_limits *lim =
		smtpd_relay_limits_new(SMTPD_RELAY_RATE_KEYS);
	struct smtpd_conf *c = srv && lim ? conf_new(conf) : NULL;
	if (!c) {
		/* conf stays the caller's */
		free(srv);
		smtpd_relay_limits_free(lim);
		return -ENOMEM;
	}
	srv->limits = lim;
	srv->loop = loop;
	/* The slow lane's timer exists from here: smtpd_stop closes it. */
	int ra = smtpd_auth_init(srv, c->conf.auth_lockout_table);
	srv->conf = c;
	srv->q = q;
	if (q)
		queue_quota_store_lmdb(q, &srv->quota);
	conf = &c->conf;
	if (ra < 0) {
		*out = srv;
		return ra;
	}
	smtpd_auth_set_conf(srv, conf);
	int r = 0;
	for (size_t i = 0; i < conf->nlisten; i++) {
		const struct conf_listen *cl = &conf->listen[i];
		struct smtpd_listener *l = &srv->lst[i];
		struct sockaddr_storage ss;
		l->srv = srv;
		l->cl = *cl;
		if (cl->ipv6)
			r = uv_ip6_addr(cl->host, cl->port, (struct sockaddr_in6 *)&ss);
		else
			r = uv_ip4_addr(cl->host, cl->port, (struct sockaddr_in *)&ss);
		if (r == 0)
			r = uv_tcp_init(loop, &l->tcp);
		if (r < 0) {
			log_err("listen %s:%u: %s", cl->host, cl->port, uv_strerror(r));
			break;
		}
		l->tcp.data = l;
		srv->nlst++;
		srv->open_listeners++;
		r = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss,
		                cl->ipv6 ? UV_TCP_IPV6ONLY : 0);
		if (r < 0) {
			log_err("cannot bind %s%s%s:%u: %s", cl->ipv6 ? "[" : "",
			        cl->host, cl->ipv6 ? "]" : "", cl->port, uv_strerror(r));
			break;
		}
	}
	if (r < 0) {
		/* The caller closes the loop's handles via smtpd_stop. */
		*out = srv;
		return r == UV_EADDRINUSE ? -EADDRINUSE : (r < 0 ? r : -EINVAL);
	}
	*out = srv;
	return 0;
}

void smtpd_set_size_cap(struct smtpd *srv, uint64_t cap)
{
	srv->size_cap = cap;
}

void smtpd_set_queue(struct smtpd *srv, struct queue *q)
{
	srv->q = q;
	if (q)
		queue_quota_store_lmdb(q, &srv->quota);
}

const struct conf *smtpd_conf(const struct smtpd *srv)
{
	return &srv->conf->conf;
}

/* ---- the TLS context ------------------------------------------------------ */


static void tls_install(struct smtpd *srv, SSL_CTX *ctx, uint64_t gen,
                        const char *cert_file)
{
	char desc[512];
	if (smtpd_tls_ctx_describe(ctx, desc, sizeof desc))
		log_warn("TLS certificate in %s has expired: %s", cert_file, desc);
	log_info("TLS certificate loaded from %s: %s", cert_file, desc);
	SSL_CTX_free(srv->tls);   /* sessions using it hold their own refs */
	srv->tls = ctx;
	srv->tls_gen = gen;
}

static bool any_smtps(const struct smtpd *srv)
{
	for (size_t i = 0; i < srv->nlst; i++)
		if (srv->lst[i].cl.mode == CONF_LISTEN_SMTPS)
			return true;
	return false;
}

static void tls_load_work_cb(uv_work_t *req)
{
	struct tls_load *ld = req->data;
	ld->ctx = smtpd_tls_ctx_new(ld->cert, ld->key, ld->err, sizeof ld->err);
}

static void tls_load_done_cb(uv_work_t *req, int status)
{
	struct tls_load *ld = req->data;
	struct smtpd *srv = ld->srv;
	srv->tls_loading--;
	if (status < 0 || srv->stopping) {
		SSL_CTX_free(ld->ctx);
	} else if (!ld->ctx) {
		/* A renewal gone wrong (a missing file, a key that does not
		 * match) must not take TLS down: the old context stays. */
		log_err("SIGHUP: TLS certificate not reloaded: %s; %s", ld->err,
		        srv->tls ? "keeping the one loaded before"
		                 : "TLS stays off");
	} else if (ld->gen < srv->tls_gen) {
		SSL_CTX_free(ld->ctx);   /* a later reload got there first */
	} else {
		tls_install(srv, ld->ctx, ld->gen, ld->cert);
	}
	free(ld->cert);
	free(ld->key);
	free(ld);
	smtpd_server_maybe_done(srv);
}

/* SIGHUP: the certificate is read again (certbot and acme.sh renew it in
 * place) on the thread pool, so the loop never waits for the disk, and
 * installed for new sessions when it loads; sessions in TLS keep their
 * SSL, which holds its own reference to the old context. */
static void tls_reload(struct smtpd *srv)
{
	const struct conf *cf = &srv->conf->conf;
	if (!cf->tls_cert_file[0]) {
		if (!srv->tls)
			return;
		if (any_smtps(srv)) {
			/* listen needs a restart, so the smtps port stays. */
			log_warn("SIGHUP: tls_cert_file is empty but an smtps listener "
			         "is open; keeping the loaded certificate");
			return;
		}
		log_info("SIGHUP: tls_cert_file is empty: no TLS for new sessions");
		SSL_CTX_free(srv->tls);
		srv->tls = NULL;
		srv->tls_gen = ++srv->tls_next_gen;
		return;
	}
	struct tls_load *ld = calloc(1, sizeof *ld);
	if (ld) {
		ld->cert = strdup(cf->tls_cert_file);
		ld->key = strdup(cf->tls_key_file);
	}
	if (!ld || !ld->cert || !ld->key) {
		if (ld) {
			free(ld->cert);
			free(ld->key);
			free(ld);
		}
		log_err("SIGHUP: TLS certificate not reloaded: out of memory");
		return;
	}
	ld->srv = srv;
	ld->gen = ++srv->tls_next_gen;
	ld->req.data = ld;
	int r = uv_queue_work(srv->loop, &ld->req, tls_load_work_cb,
	                      tls_load_done_cb);
	if (r < 0) {
		log_err("SIGHUP: TLS certificate not reloaded: %s", uv_strerror(r));
		free(ld->cert);
		free(ld->key);
		free(ld);
		return;
	}
	srv->tls_loading++;
}

int smtpd_check_tls(const struct conf *conf, char *err, size_t errlen)
{
	if (!conf->tls_cert_file[0])
		return 0;
	SSL_CTX *ctx = smtpd_tls_ctx_new(conf->tls_cert_file, conf->tls_key_file,
	                                 err, errlen);
	if (!ctx)
		return -EINVAL;
	SSL_CTX_free(ctx);
	return 0;
}

/* ---- configuration -------------------------------------------------------- */

/* SIGHUP: the dkim_key lines again. A key file that does not load keeps
 * the key loaded before from the same line (dkim_signer_new logs which
 * and why). The files are small and few: read here, on the loop, as the
 * configuration file itself is. */
static void dkim_reload(struct smtpd *srv)
{
	const struct conf *cf = &srv->conf->conf;
	struct dkim_signer *ns;
	char err[512];
	if (dkim_signer_new(cf->dkim_keys, cf->ndkim_keys, cf->dkim_subdomains,
	                    srv->dkim, &ns, err, sizeof err) < 0) {
		log_err("SIGHUP: dkim: %s; keeping the running keys", err);
		return;
	}
	dkim_signer_unref(srv->dkim);
	srv->dkim = ns;
	size_t n = 0;
	while (dkim_signer_key(ns, n))
		n++;
	log_info("dkim: %zu of %zu keys loaded", n, cf->ndkim_keys);
}

struct dkim_signer *smtpd_dkim(const struct smtpd *srv)
{
	return srv->dkim;
}

void smtpd_set_conf(struct smtpd *srv, struct conf *conf)
{
	struct smtpd_conf *c = conf_new(conf);
	if (!c) {
		log_err("reload: out of memory; keeping the running configuration");
		conf_free(conf);
		return;
	}
	smtpd_conf_drop(srv->conf);
	srv->conf = c;
	smtpd_auth_set_conf(srv, &c->conf);
	tls_reload(srv);
	smtpd_auth_reload(srv);
	dkim_reload(srv);
}

int smtpd_start(struct smtpd *srv)
{
	/* Loaded here, after privileges are dropped, rather than with the
	 * listeners: a key relayd's user cannot read fails now, at start,
	 * not at the first SIGHUP after a renewal. Blocking is fine: the
	 * loop is not serving anyone yet. */
	const struct conf *cf = &srv->conf->conf;
	if (cf->tls_cert_file[0]) {
		char err[512];
		SSL_CTX *ctx = smtpd_tls_ctx_new(cf->tls_cert_file,
		                                 cf->tls_key_file, err, sizeof err);
		if (!ctx) {
			log_err("%s", err);
			return -EINVAL;
		}
		tls_install(srv, ctx, ++srv->tls_next_gen, cf->tls_cert_file);
	}
	/* DKIM keys, as relayd's user too (issue 10 §1: readable by it): a
	 * key that does not load stops relayd here. */
	char derr[512];
	if (dkim_signer_new(cf->dkim_keys, cf->ndkim_keys, cf->dkim_subdomains,
	                    NULL, &srv->dkim, derr, sizeof derr) < 0) {
		log_err("%s", derr);
		return -EINVAL;
	}
	for (size_t i = 0; dkim_signer_key(srv->dkim, i); i++) {
		const struct dkim_key *k = dkim_signer_key(srv->dkim, i);
		log_info("dkim: key %s selector %s (%s, %u bits) from %s",
		         k->spec.domain, k->spec.selector, dkim_alg_name(k->alg),
		         k->bits, k->spec.path);
	}
	/* Also as relayd's user; a missing or broken file only means no
	 * AUTH (logged), never a relayd that does not start. */
	smtpd_auth_load_now(srv);
	for (size_t i = 0; i < srv->nlst; i++) {
		struct smtpd_listener *l = &srv->lst[i];
		int r = uv_listen((uv_stream_t *)&l->tcp, BACKLOG, smtpd_session_accept_cb);
		if (r < 0) {
			log_err("cannot listen on %s:%u: %s", l->cl.host, l->cl.port,
			        uv_strerror(r));
			return r;
		}
		log_info("listening on %s%s%s:%u (%s%s)", l->cl.ipv6 ? "[" : "",
		         l->cl.host, l->cl.ipv6 ? "]" : "", l->cl.port,
		         conf_listen_mode_names[l->cl.mode],
		         l->cl.mode != CONF_LISTEN_SMTPS && srv->tls ? ", STARTTLS"
		                                                     : "");
	}
	return 0;
}

void smtpd_server_maybe_done(struct smtpd *srv)
{
	if (!srv->stopping || srv->nsessions > 0 || srv->open_listeners > 0 ||
	    srv->tls_loading > 0 || srv->auth_jobs > 0 || srv->lane_timer_open ||
	    srv->dkim_jobs > 0)
		return;
	void (*cb)(void *) = srv->stop_cb;
	void *arg = srv->stop_arg;
	dkim_signer_unref(srv->dkim);
	smtpd_conf_drop(srv->conf);
	SSL_CTX_free(srv->tls);
	smtpd_relay_limits_free(srv->limits);
	cred_store_free(srv->creds);
	smtpd_lockout_free(srv->lockout);
	smtpd_lockout_free(srv->names);
	free(srv);
	if (cb)
		cb(arg);
}

static void listener_closed_cb(uv_handle_t *h)
{
	struct smtpd_listener *l = h->data;
	struct smtpd *srv = l->srv;
	srv->open_listeners--;
	smtpd_server_maybe_done(srv);
}

void smtpd_stop(struct smtpd *srv, void (*done_cb)(void *arg), void *arg)
{
	srv->stopping = true;
	srv->stop_cb = done_cb;
	srv->stop_arg = arg;
	srv->stop_at = uv_now(srv->loop);
	srv->stop_grace = srv->conf->conf.shutdown_timeout;
	for (size_t i = 0; i < srv->nlst; i++)
		if (!uv_is_closing((uv_handle_t *)&srv->lst[i].tcp))
			uv_close((uv_handle_t *)&srv->lst[i].tcp, listener_closed_cb);
	for (struct smtpd_session *s = srv->sessions, *n; s; s = n) {
		n = s->next;
		if (s->closing)
			continue;
		if (s->commit_pending) {
			s->stop_after_commit = true;
			continue;
		}
		/* A client inside a transaction may finish it (up to
		 * shutdown_timeout): its timer now says when (lifetime_due). */
		if (srv->stop_grace > 0 && smtpd_session_drain(s))
			continue;
		smtpd_proto_shutdown(s->proto, &s->out);
		smtpd_session_flush(s);
		smtpd_session_close(s, true);
	}
	/* The sessions' waiters left the slow lane as they closed. */
	smtpd_auth_stop(srv);
	if (srv->nlst == 0)
		smtpd_server_maybe_done(srv);
}

