/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <mosquitto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "list.h"
#include "log.h"
#include "upstream.h"

#define UPSTREAM_MISC_INTERVAL_USEC (1000 * 1000ULL)
#define UPSTREAM_DETACHED_GRACE_USEC (5 * 1000 * 1000ULL)

/* libmosquitto 2.0.x opens a socketpair per client (two descriptors) and
 * writes one byte into it for every packet it queues, to wake a
 * mosquitto_loop() this daemon never runs. Nothing drains it: every
 * PUBLISH costs a write(2) that fails with EAGAIN once ~200 kB of kernel
 * memory sit in the pair. When socketpair() fails, libmosquitto logs a
 * warning and carries on without one. Refuse it to libmosquitto only
 * (single-threaded: a flag is enough). libmosquitto 2.1 has
 * MOSQ_OPT_DISABLE_SOCKETPAIR for this. */
static bool upstream_refuse_socketpair;
int socketpair(int domain, int type, int protocol, int sv[2]);
int socketpair(int domain, int type, int protocol, int sv[2])
{
        if (upstream_refuse_socketpair) {
                errno = EMFILE;
                return -1;
        }
        return (int) syscall(SYS_socketpair, domain, type, protocol, sv);
}

struct upstream {
        struct upstream_pool *pool;
        LIST_FIELDS(struct upstream, all);
        struct mosquitto *mosq;
        sd_event_source *io;
        int fd;                 /* the socket io watches, -1 if none */
        uint32_t events;
        const struct upstream_callbacks *cb; /* NULL once detached */
        void *ud;
        bool connected;         /* CONNACK 0 received */
        bool refused;           /* CONNACK != 0 received */
        bool dead;              /* socket gone; on_lost delivered */
        bool lost;              /* libmosquitto said on_disconnect */
        int lost_errno;         /* errno when it said so */
        bool backlog_seen;      /* the owner saw a backlog: tell it when drained */
        int lost_rc;
        uint64_t deadline;      /* CLOCK_MONOTONIC usec: connect timeout, or detach grace */
};

struct upstream_pool {
        sd_event *event;
        const struct config_upstream *cfg;
        SSL_CTX *ctx;
        struct upstream *all;
        sd_event_source *misc_timer;
        unsigned n_open;
        unsigned n_connected;
};

static void upstream_free(struct upstream *u);
static void upstream_after_loop(struct upstream *u, int rc);

static uint64_t now_usec(sd_event *e)
{
        uint64_t t = 0;
        sd_event_now(e, CLOCK_MONOTONIC, &t);
        return t;
}

/* ---- libmosquitto callbacks: record, or pass straight to the owner ---- */

static void cb_connect(struct mosquitto *mosq, void *obj, int rc, int flags)
{
        struct upstream *u = obj;

        if (rc == 0) {
                u->connected = true;
                u->pool->n_connected++;
        } else {
                u->refused = true;
        }
        if (u->cb)
                u->cb->on_connect(u->ud, rc, (flags & 1) != 0);
}

static void cb_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
        struct upstream *u = obj;
        /* libmosquitto has already closed the socket (issues #1043, #1644);
         * the owner hears of it after the loop function returns. */
        u->lost = true;
        u->lost_rc = rc;
        u->lost_errno = errno;
}

static void cb_publish(struct mosquitto *mosq, void *obj, int mid)
{
        struct upstream *u = obj;
        if (u->cb)
                u->cb->on_publish(u->ud, mid);
}

static void cb_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
        struct upstream *u = obj;
        if (u->cb)
                u->cb->on_message(u->ud, msg);
}

static void cb_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *granted)
{
        struct upstream *u = obj;
        if (u->cb)
                u->cb->on_subscribe(u->ud, mid, n, granted);
}

static void cb_unsubscribe(struct mosquitto *mosq, void *obj, int mid)
{
        struct upstream *u = obj;
        if (u->cb)
                u->cb->on_unsubscribe(u->ud, mid);
}

static void cb_log(struct mosquitto *mosq, void *obj, int level, const char *str)
{
        if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
                log_debug("libmosquitto: %s", str);
}

/* ---- event loop glue ---- */

static bool upstream_handshaking(struct upstream *u)
{
        SSL *ssl = mosquitto_ssl_get(u->mosq);
        return ssl && !SSL_is_init_finished(ssl);
}

/* What to wait for. During the TLS handshake libmosquitto's want_write can
 * stay true while OpenSSL waits to read (#3745): ask OpenSSL instead. */
static uint32_t upstream_wanted_events(struct upstream *u)
{
        SSL *ssl = mosquitto_ssl_get(u->mosq);

        if (ssl && !SSL_is_init_finished(ssl))
                return SSL_want_write(ssl) ? EPOLLOUT : EPOLLIN;
        return EPOLLIN | (mosquitto_want_write(u->mosq) ? EPOLLOUT : 0);
}

static int upstream_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        struct upstream *u = userdata;
        int rc = MOSQ_ERR_SUCCESS;

        if ((revents & (EPOLLERR | EPOLLHUP)) && !u->connected && !u->refused) {
                /* A failed non-blocking connect. Decide here: libmosquitto
                 * would retry the TLS handshake forever on the
                 * SSL_ERROR_SYSCALL this gives it, and a write may already
                 * have consumed SO_ERROR. */
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err == 0)
                        err = ECONNREFUSED;
                u->lost = true;
                u->lost_rc = MOSQ_ERR_ERRNO;
                u->lost_errno = err;
                errno = err;
                upstream_after_loop(u, MOSQ_ERR_ERRNO);
                return 0;
        }

        if (upstream_handshaking(u)) {
                /* loop_read drives SSL_connect while libmosquitto's
                 * want_connect is set; loop_write would do nothing. */
                rc = mosquitto_loop_read(u->mosq, 1);
        } else {
                if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
                        rc = mosquitto_loop_read(u->mosq, 1);
                if (rc == MOSQ_ERR_SUCCESS && (revents & EPOLLOUT) && mosquitto_socket(u->mosq) >= 0)
                        rc = mosquitto_loop_write(u->mosq, 1);
        }
        upstream_after_loop(u, rc);
        return 0;
}

static void upstream_unwatch(struct upstream *u)
{
        u->io = sd_event_source_disable_unref(u->io);
        u->fd = -1;
}

static int upstream_watch(struct upstream *u)
{
        int fd = mosquitto_socket(u->mosq);
        uint32_t ev;

        if (fd != u->fd) {
                upstream_unwatch(u);
                if (fd < 0)
                        return 0;
                ev = upstream_wanted_events(u);
                int r = sd_event_add_io(u->pool->event, &u->io, fd, ev, upstream_io, u);
                if (r < 0)
                        return r;
                u->fd = fd;
                u->events = ev;
                return 0;
        }
        if (fd < 0)
                return 0;
        ev = upstream_wanted_events(u);
        if (ev != u->events) {
                sd_event_source_set_io_events(u->io, ev);
                u->events = ev;
        }
        return 0;
}

static const char *upstream_lost_reason(struct upstream *u, int rc, char *buf, size_t len)
{
        SSL *ssl = mosquitto_ssl_get(u->mosq);

        if (ssl && !u->connected && SSL_get_verify_result(ssl) != X509_V_OK) {
                snprintf(buf, len, "upstream certificate rejected: %s",
                         X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        } else if (rc == MOSQ_ERR_ERRNO || u->lost_rc == MOSQ_ERR_ERRNO) {
                snprintf(buf, len, "upstream connection: %s",
                         strerror(u->lost_errno ? u->lost_errno : errno));
        } else if (u->lost && u->lost_rc == 0) {
                snprintf(buf, len, "upstream connection closed");
        } else {
                snprintf(buf, len, "upstream connection: %s",
                         mosquitto_strerror(rc ? rc : u->lost_rc));
        }
        return buf;
}

/* After any libmosquitto loop call: follow the socket, report a loss. */
static void upstream_after_loop(struct upstream *u, int rc)
{
        char why[192];

        if (u->dead)
                return;
        if (mosquitto_socket(u->mosq) < 0 || u->lost) {
                u->dead = true;
                upstream_unwatch(u);
                if (u->connected) {
                        u->connected = false;
                        u->pool->n_connected--;
                }
                if (!u->cb) {
                        /* Detached and done (DISCONNECT written): free it. */
                        upstream_free(u);
                        return;
                }
                u->cb->on_lost(u->ud, upstream_lost_reason(u, rc, why, sizeof why));
                return;
        }
        if (upstream_watch(u) < 0) {
                u->dead = true;
                upstream_unwatch(u);
                if (u->cb)
                        u->cb->on_lost(u->ud, "cannot watch the upstream socket");
                return;
        }
        if (u->backlog_seen && !mosquitto_want_write(u->mosq)) {
                u->backlog_seen = false;
                if (u->cb && u->cb->on_drained)
                        u->cb->on_drained(u->ud);
        }
}

bool upstream_backlogged(struct upstream *u)
{
        if (!u || u->dead || !u->connected || !mosquitto_want_write(u->mosq))
                return false;
        u->backlog_seen = true;
        return true;
}

static int upstream_misc(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct upstream_pool *p = userdata;
        struct upstream *u, *n;
        uint64_t now = now_usec(p->event);

        LIST_FOREACH_SAFE(all, u, n, p->all) {
                if (u->dead) {
                        if (!u->cb)
                                upstream_free(u);
                        continue;
                }
                if (!u->cb && now > u->deadline) {
                        upstream_free(u);
                        continue;
                }
                if (!u->connected && !u->refused && u->cb && now > u->deadline) {
                        u->dead = true;
                        upstream_unwatch(u);
                        u->cb->on_lost(u->ud, "upstream connect timed out");
                        continue;
                }
                upstream_after_loop(u, mosquitto_loop_misc(u->mosq));
        }
        sd_event_source_set_time(s, usec + UPSTREAM_MISC_INTERVAL_USEC);
        return 0;
}

/* ---- pool ---- */

int upstream_pool_new(sd_event *event, const struct config_upstream *cfg, SSL_CTX *ctx,
                      struct upstream_pool **out)
{
        struct upstream_pool *p = calloc(1, sizeof *p);
        int r;

        if (!p)
                return -ENOMEM;
        p->event = sd_event_ref(event);
        p->cfg = cfg;
        upstream_pool_set_ctx(p, ctx);
        r = sd_event_add_time_relative(event, &p->misc_timer, CLOCK_MONOTONIC,
                                       UPSTREAM_MISC_INTERVAL_USEC, 100 * 1000, upstream_misc, p);
        if (r < 0) {
                upstream_pool_free(p);
                return r;
        }
        sd_event_source_set_enabled(p->misc_timer, SD_EVENT_ON);
        *out = p;
        return 0;
}

void upstream_pool_set_ctx(struct upstream_pool *p, SSL_CTX *ctx)
{
        if (ctx)
                SSL_CTX_up_ref(ctx);
        SSL_CTX_free(p->ctx);
        p->ctx = ctx;
}

void upstream_pool_free(struct upstream_pool *p)
{
        if (!p)
                return;
        while (p->all) {
                p->all->cb = NULL;
                upstream_free(p->all);
        }
        sd_event_source_disable_unref(p->misc_timer);
        SSL_CTX_free(p->ctx);
        sd_event_unref(p->event);
        free(p);
}

void upstream_pool_count(const struct upstream_pool *p, unsigned *open, unsigned *connected)
{
        *open = p->n_open;
        *connected = p->n_connected;
}

/* ---- one client ---- */

static void upstream_free(struct upstream *u)
{
        if (!u)
                return;
        upstream_unwatch(u);
        if (u->connected)
                u->pool->n_connected--;
        /* mosquitto_destroy closes the socket without DISCONNECT. */
        mosquitto_destroy(u->mosq);
        LIST_REMOVE(all, u->pool->all, u);
        u->pool->n_open--;
        free(u);
}

int upstream_connect(struct upstream_pool *p, const struct upstream_params *params,
                     const struct upstream_callbacks *cb, void *ud,
                     struct upstream **out, const char **why)
{
        const struct config_upstream *cfg = p->cfg;
        struct upstream *u;
        int rc, keepalive;

        u = calloc(1, sizeof *u);
        if (!u) {
                *why = "out of memory";
                return -ENOMEM;
        }
        u->pool = p;
        u->fd = -1;
        u->cb = cb;
        u->ud = ud;
        LIST_PREPEND(all, p->all, u);
        p->n_open++;

        upstream_refuse_socketpair = true;
        u->mosq = mosquitto_new(params->client_id, params->clean_session, u);
        upstream_refuse_socketpair = false;
        if (!u->mosq) {
                *why = "cannot create the upstream client";
                goto fail;
        }
        mosquitto_int_option(u->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                             params->protocol_level == 3 ? MQTT_PROTOCOL_V31 : MQTT_PROTOCOL_V311);
        mosquitto_int_option(u->mosq, MOSQ_OPT_TCP_NODELAY, 1);
        if (p->ctx) {
                /* One shared context for every device: loading the CA per
                 * client would cost tens of kB each (DESIGN.md). */
                mosquitto_void_option(u->mosq, MOSQ_OPT_SSL_CTX, p->ctx);
                /* libmosquitto 2.0 defaults this to 1, which would rebuild
                 * the context per client from cafile settings we never give
                 * it. Our context carries the verification (tls_server.c). */
                mosquitto_int_option(u->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
        }
        if (params->username || params->password) {
                if (mosquitto_username_pw_set(u->mosq, params->username, params->password) != MOSQ_ERR_SUCCESS) {
                        *why = "bad upstream username or password";
                        goto fail;
                }
        }
        if (params->will_topic) {
                rc = mosquitto_will_set(u->mosq, params->will_topic, (int) params->will_len,
                                        params->will_payload, params->will_qos, params->will_retain);
                if (rc != MOSQ_ERR_SUCCESS) {
                        *why = "will refused by libmosquitto";
                        goto fail;
                }
        }
        mosquitto_connect_with_flags_callback_set(u->mosq, cb_connect);
        mosquitto_disconnect_callback_set(u->mosq, cb_disconnect);
        mosquitto_publish_callback_set(u->mosq, cb_publish);
        mosquitto_message_callback_set(u->mosq, cb_message);
        mosquitto_subscribe_callback_set(u->mosq, cb_subscribe);
        mosquitto_unsubscribe_callback_set(u->mosq, cb_unsubscribe);
        /* libmosquitto formats a debug line (malloc + vsnprintf) for every
         * packet it sends or receives whenever a log callback is set, and
         * cb_log only logs at debug level: set it only then. */
        if (log_enabled(LOG_LEVEL_DEBUG))
                mosquitto_log_callback_set(u->mosq, cb_log);

        keepalive = params->keepalive;
        if (keepalive > 0 && keepalive < 5)
                keepalive = 5;
        /* A host starting with '/' is a Unix socket: libmosquitto 2.0
         * connects to one when the port is 0. */
        bool unix_socket = cfg->host[0] == '/';
        upstream_refuse_socketpair = true;
        rc = mosquitto_connect_bind_async(u->mosq, cfg->host, unix_socket ? 0 : cfg->port, keepalive,
                                          unix_socket ? NULL : cfg->bind_address);
        upstream_refuse_socketpair = false;
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_CONN_PENDING) {
                *why = rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
                goto fail;
        }
        u->deadline = now_usec(p->event) + (uint64_t) (cfg->connect_timeout ? cfg->connect_timeout : 10) * 1000000ULL;
        if (upstream_watch(u) < 0 || u->fd < 0) {
                *why = "upstream socket closed at once";
                goto fail;
        }
        *out = u;
        return 0;
fail:
        u->cb = NULL;
        upstream_free(u);
        return -EIO;
}

bool upstream_is_connected(const struct upstream *u)
{
        return u && u->connected && !u->dead;
}

static int mosq_to_errno(int rc)
{
        switch (rc) {
        case MOSQ_ERR_SUCCESS: return 0;
        case MOSQ_ERR_NOMEM: return -ENOMEM;
        case MOSQ_ERR_NO_CONN: return -ENOTCONN;
        /* A write failure on the broker socket: the loss is reported next
         * (on_lost); the caller keeps the message for the spool. */
        case MOSQ_ERR_CONN_LOST: return -ENOTCONN;
        case MOSQ_ERR_ERRNO: return -ENOTCONN;
        case MOSQ_ERR_PAYLOAD_SIZE: return -EMSGSIZE;
        case MOSQ_ERR_OVERSIZE_PACKET: return -EMSGSIZE;
        case MOSQ_ERR_MALFORMED_UTF8: return -EINVAL;
        default: return -EIO;
        }
}

int upstream_publish(struct upstream *u, int *mid, const char *topic, const void *payload,
                     size_t len, int qos, bool retain)
{
        if (u->dead)
                return -ENOTCONN;
        int rc = mosquitto_publish(u->mosq, mid, topic, (int) len, payload, qos, retain);
        upstream_after_loop(u, MOSQ_ERR_SUCCESS);
        return mosq_to_errno(rc);
}

int upstream_subscribe(struct upstream *u, int *mid, int n, char *const *filters, int qos)
{
        if (u->dead)
                return -ENOTCONN;
        int rc = mosquitto_subscribe_multiple(u->mosq, mid, n, filters, qos, 0, NULL);
        upstream_after_loop(u, MOSQ_ERR_SUCCESS);
        return mosq_to_errno(rc);
}

int upstream_unsubscribe(struct upstream *u, int *mid, int n, char *const *filters)
{
        if (u->dead)
                return -ENOTCONN;
        int rc = mosquitto_unsubscribe_multiple(u->mosq, mid, n, filters, NULL);
        upstream_after_loop(u, MOSQ_ERR_SUCCESS);
        return mosq_to_errno(rc);
}

void upstream_close(struct upstream *u, bool graceful)
{
        if (!u)
                return;
        u->cb = NULL;
        if (u->dead) {
                upstream_free(u);
                return;
        }
        if (graceful && u->connected) {
                /* §3.14.4: after DISCONNECT the broker discards the will. The
                 * packet goes out after whatever is queued before it. */
                mosquitto_disconnect(u->mosq);
                u->deadline = now_usec(u->pool->event) + UPSTREAM_DETACHED_GRACE_USEC;
                upstream_after_loop(u, MOSQ_ERR_SUCCESS); /* frees u if already written */
                return;
        }
        if (u->connected) {
                /* Flush what the device sent before it went away, then cut
                 * the connection without DISCONNECT: the will is published. */
                (void) mosquitto_loop_write(u->mosq, 1);
        }
        upstream_free(u);
}
