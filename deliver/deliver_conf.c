/*
 * deliver/deliver_conf.c - The delivery settings: what deliver/ takes
 * from the configuration (copied, refcounted so that sessions keep theirs
 * across a SIGHUP), the smarthost password file, the client SSL_CTX, and
 * the checks `relayd -t` runs beyond conf's key-by-key ones.
 */
#include "deliver/deliver_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <openssl/err.h>

static char *dup_nonempty(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

static int read_password(const char *path, char **out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		snprintf(err, errlen, "smarthost_password_file %s: %s", path,
		         strerror(errno));
		return -errno;
	}
	char line[1024];
	if (!fgets(line, sizeof line, f))
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\r\n")] = '\0';
	*out = strdup(line);
	memset(line, 0, sizeof line);
	return *out ? 0 : -ENOMEM;
}

static struct deliver_cfg *direct_cfg(struct deliver_cfg *g,
                                      const struct conf *c, char *err,
                                      size_t errlen);

struct deliver_cfg *deliver_cfg_new(const struct conf *c, char *err,
                                    size_t errlen)
{
	struct deliver_cfg *g = calloc(1, sizeof *g);
	if (!g) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	g->refs = 1;
	g->mode = c->delivery;
	g->hostname = strdup(c->hostname ? c->hostname : "localhost");
	g->spool_dir = strdup(c->spool_dir);
	g->concurrency = c->smarthost_concurrency;
	g->per_conn = c->max_messages_per_connection;
	g->rewrite_sender = dup_nonempty(c->rewrite_sender);
	g->rewrite_from = c->rewrite_from_header;
	g->retry_min = c->retry_min;
	g->retry_max = c->retry_max < c->retry_min ? c->retry_min : c->retry_max;
	g->lifetime = c->max_queue_lifetime;
	g->warn_after = c->delay_warning_after;
	g->timeout = c->delivery_timeout;
	g->postmaster = dup_nonempty(c->postmaster);
	conf_parse_rate(c->smarthost_rate, &g->rate_minute, &g->rate_hour);
	if (!g->hostname || !g->spool_dir)
		goto nomem;
	g->max_sessions = c->max_delivery_sessions;
	if (g->mode == CONF_DELIVERY_DIRECT)
		return direct_cfg(g, c, err, errlen);
	if (g->mode != CONF_DELIVERY_SMARTHOST)
		return g;

	if (!c->smarthost[0]) {
		snprintf(err, errlen, "delivery = smarthost needs smarthost = HOST:PORT");
		goto fail;
	}
	if (conf_parse_hostport(c->smarthost, g->host, sizeof g->host, &g->port)) {
		snprintf(err, errlen, "smarthost: not HOST:PORT");
		goto fail;
	}
	g->tls = c->smarthost_tls;
	if (g->tls == CONF_TLS_AUTO)
		g->tls = g->port == 465 ? CONF_TLS_IMPLICIT : CONF_TLS_STARTTLS;
	g->tls_name = strdup(c->smarthost_tls_name[0] ? c->smarthost_tls_name
	                                              : g->host);
	if (!g->tls_name)
		goto nomem;
	if (c->smarthost_user[0]) {
		g->user = strdup(c->smarthost_user);
		if (!g->user)
			goto nomem;
		const char *env = getenv("RELAYD_SMARTHOST_PASSWORD");
		if (c->smarthost_password_file[0]) {
			if (read_password(c->smarthost_password_file, &g->password,
			                  err, errlen))
				goto fail;
		} else if (env) {
			g->password = strdup(env);
		} else {
			snprintf(err, errlen, "smarthost_user needs "
			         "smarthost_password_file or RELAYD_SMARTHOST_PASSWORD");
			goto fail;
		}
		if (!g->password)
			goto nomem;
	}
	if (g->tls != CONF_TLS_NONE) {
		g->ssl = SSL_CTX_new(TLS_client_method());
		if (!g->ssl)
			goto nomem;
		SSL_CTX_set_min_proto_version(g->ssl, TLS1_2_VERSION);
		SSL_CTX_set_mode(g->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
		if (c->smarthost_tls_verify) {
			SSL_CTX_set_verify(g->ssl, SSL_VERIFY_PEER, NULL);
			int ok = c->smarthost_tls_ca[0]
			         ? SSL_CTX_load_verify_locations(g->ssl,
			                                         c->smarthost_tls_ca, NULL)
			         : SSL_CTX_set_default_verify_paths(g->ssl);
			if (!ok) {
				char e[160] = "";
				ERR_error_string_n(ERR_get_error(), e, sizeof e);
				ERR_clear_error();
				snprintf(err, errlen, "smarthost_tls_ca %s: %s",
				         c->smarthost_tls_ca, e);
				goto fail;
			}
		} else {
			SSL_CTX_set_verify(g->ssl, SSL_VERIFY_NONE, NULL);
		}
	}
	return g;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	deliver_cfg_unref(g);
	return NULL;
}

/* delivery = direct: the MX settings, relayd's own listeners (for the
 * loop check), the TLS policy file, and an unverified client context
 * for opportunistic STARTTLS (RFC 7435: a certificate is not checked
 * at "may"; tls_policy_file's verify is not wired yet). */
static struct deliver_cfg *direct_cfg(struct deliver_cfg *g,
                                      const struct conf *c, char *err,
                                      size_t errlen)
{
	g->concurrency = c->destination_concurrency;
	g->mx_port = (uint16_t)c->mx_port;
	g->mx_allow_private = c->mx_allow_private;
	g->ip_pref = c->ip_preference;
	g->max_rcpt_txn = c->max_recipients_per_transaction;
	g->bind4 = dup_nonempty(c->smtp_bind_address);
	g->bind6 = dup_nonempty(c->smtp_bind_address6);
	g->tls = CONF_TLS_STARTTLS;
	snprintf(g->host, sizeof g->host, "MX");
	g->tls_name = strdup("");
	if (!g->tls_name || (c->smtp_bind_address[0] && !g->bind4) ||
	    (c->smtp_bind_address6[0] && !g->bind6))
		goto nomem;
	for (size_t i = 0; i < c->nlisten && g->nself < CONF_LISTEN_MAX; i++) {
		struct deliver_endpoint *e = &g->self[g->nself];
		memset(e, 0, sizeof *e);
		e->addr.family = c->listen[i].ipv6 ? AF_INET6 : AF_INET;
		if (inet_pton(e->addr.family, c->listen[i].host, e->addr.a) != 1)
			continue;
		e->port = c->listen[i].port;
		g->nself++;
	}
	if (c->tls_policy_file[0] &&
	    deliver_tlspol_load(c->tls_policy_file, &g->tls_policy, err,
	                            errlen) < 0)
		goto fail;
	if (c->destination_policy_file[0] &&
	    deliver_tlspol_dest_load(c->destination_policy_file,
	                             &g->dest_policy, err, errlen) < 0)
		goto fail;
	/* smarthost_rate is the smarthost's; MX destinations get rates from
	 * destination_policy_file only. */
	g->rate_minute = g->rate_hour = 0;
	g->ssl = SSL_CTX_new(TLS_client_method());
	if (!g->ssl)
		goto nomem;
	SSL_CTX_set_min_proto_version(g->ssl, TLS1_2_VERSION);
	SSL_CTX_set_mode(g->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
	SSL_CTX_set_verify(g->ssl, SSL_VERIFY_NONE, NULL);
	/* verify: the system's trust store; the MX host's name is set per
	 * session (deliver_session.c). */
	g->ssl_verify = SSL_CTX_new(TLS_client_method());
	if (!g->ssl_verify)
		goto nomem;
	SSL_CTX_set_min_proto_version(g->ssl_verify, TLS1_2_VERSION);
	SSL_CTX_set_mode(g->ssl_verify, SSL_MODE_ENABLE_PARTIAL_WRITE);
	SSL_CTX_set_verify(g->ssl_verify, SSL_VERIFY_PEER, NULL);
	if (!SSL_CTX_set_default_verify_paths(g->ssl_verify)) {
		snprintf(err, errlen, "cannot load the system's CA certificates");
		goto fail;
	}
	return g;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	deliver_cfg_unref(g);
	return NULL;
}

int deliver_check_conf(const struct conf *conf, char *err, size_t errlen)
{
	struct deliver_cfg *g = deliver_cfg_new(conf, err, errlen);
	if (!g)
		return -EINVAL;
	deliver_cfg_unref(g);
	return 0;
}

void deliver_cfg_ref(struct deliver_cfg *g)
{
	g->refs++;
}

void deliver_cfg_unref(struct deliver_cfg *g)
{
	if (!g || --g->refs > 0)
		return;
	free(g->hostname);
	free(g->spool_dir);
	free(g->tls_name);
	free(g->user);
	if (g->password) {
		memset(g->password, 0, strlen(g->password));
		free(g->password);
	}
	free(g->rewrite_sender);
	free(g->postmaster);
	free(g->bind4);
	free(g->bind6);
	deliver_tlspol_free(g->tls_policy);
	deliver_tlspol_dest_free(g->dest_policy);
	if (g->ssl)
		SSL_CTX_free(g->ssl);
	if (g->ssl_verify)
		SSL_CTX_free(g->ssl_verify);
	free(g);
}

