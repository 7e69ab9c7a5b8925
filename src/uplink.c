/* SPDX-License-Identifier: MIT */
/*
 * The uplink's life (include/uplink.h): dialling, TLS, the output and
 * input buffers, the event sources, closing, and the owner's API. What it
 * means in MQTT is in uplink_wire.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "uplink_connect.h"
#include "uplink_internal.h"

static void uplink_update_events(struct uplink *u);

uint64_t uplink_now(const struct uplink_pool *p)
{
        uint64_t t = 0;
        sd_event_now(p->event, CLOCK_MONOTONIC, &t);
        return t;
}

/* ---- teardown and lifetime ---- */

/* Close the transport now (no DISCONNECT, no close_notify): the broker
 * sees the connection end and publishes the will. Only our own fd. */
void uplink_teardown(struct uplink *u)
{
        u->io = sd_event_source_disable_unref(u->io);
        u->timer = sd_event_source_disable_unref(u->timer);
        u->defer = sd_event_source_disable_unref(u->defer);
        if (u->tls)
                tls_conn_done(&u->tc);
        u->tls = false;
        if (u->fd >= 0)
                close(u->fd);
        u->fd = -1;
        if (u->state == UPLINK_CONNECTED)
                u->pool->n_connected--;
        u->state = UPLINK_DEAD;
        bytebuf_free(&u->out);
        bytebuf_free(&u->in);
}

static void uplink_free(struct uplink *u)
{
        uplink_teardown(u);
        dialer_done(&u->dialer);
        LIST_REMOVE(all, u->pool->all, u);
        u->pool->n_open--;
        SSL_CTX_free(u->ctx);
        free(u->tls_name);
        free(u->name);
        free(u->client_id);
        free(u);
}

/* Tear down now; free now, or when the handler on the stack returns. */
void uplink_doom(struct uplink *u)
{
        uplink_teardown(u);
        u->ops = NULL;
        if (u->busy)
                u->doomed = true;
        else
                uplink_free(u);
}

void uplink_enter(struct uplink *u)
{
        u->busy++;
}

/* Leave a handler: free a link closed meanwhile, else watch what it needs. */
void uplink_leave(struct uplink *u)
{
        if (--u->busy > 0)
                return;
        if (u->doomed) {
                uplink_free(u);
                return;
        }
        if (u->state != UPLINK_DEAD)
                uplink_update_events(u);
}

/* The link failed: close it and tell the owner (who calls uplink_close,
 * perhaps from inside on_lost). A detached link just goes. */
void uplink_lost(struct uplink *u, const char *fmt, ...)
{
        char why[320];
        va_list ap;

        if (!uplink_alive(u))
                return;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        /* Before CONNACK: this host did not work out; the next link
         * starts with the next host of [upstream] host. */
        if (u->state != UPLINK_CONNECTED && !u->draining)
                uplink_pool_host_failed(u->pool, u->dialer.host, why);
        uplink_teardown(u);
        if (u->ops) {
                const struct uplink_ops *ops = u->ops;
                ops->on_lost(u->ud, why);
        } else {
                struct log_fields f = uplink_fields(u, "upstream-closed");
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream link of a closed session ended: %s", why);
                uplink_doom(u);
        }
}

/* ---- events ---- */

static bool uplink_reading(const struct uplink *u)
{
        return !u->paused || u->draining;
}

static uint32_t uplink_wanted_events(const struct uplink *u)
{
        bool has_output = bytebuf_size(&u->out) > 0 && !u->write_shut;
        uint32_t ev = 0;

        switch (u->state) {
        case UPLINK_TCP_CONNECTING:
                return EPOLLOUT;
        case UPLINK_TLS_HANDSHAKE:
                return u->tc.want_write ? EPOLLOUT : EPOLLIN;
        case UPLINK_DEAD:
                return 0;
        default:
                break;
        }
        if (!u->tls) {
                if (uplink_reading(u))
                        ev |= EPOLLIN;
                if (has_output)
                        ev |= EPOLLOUT;
                return ev;
        }
        /* redis tls.c: a record in one direction may need the socket
         * ready in the other one. A paused link does not read, so its
         * read_wants_write must not keep EPOLLOUT on. */
        if (uplink_reading(u) || (has_output && u->tc.write_wants_read))
                ev |= EPOLLIN;
        if ((has_output && !u->tc.write_wants_read) || (uplink_reading(u) && u->tc.read_wants_write))
                ev |= EPOLLOUT;
        return ev;
}

/* With events = 0 epoll still reports EPOLLERR/EPOLLHUP (epoll_ctl(2)),
 * which is what a paused link wants to hear. */
static void uplink_update_events(struct uplink *u)
{
        uint32_t ev = uplink_wanted_events(u);

        if (u->io && ev != u->events) {
                if (sd_event_source_set_io_events(u->io, ev) < 0) {
                        uplink_lost(u, "cannot watch the upstream socket");
                        return;
                }
                u->events = ev;
        }
}

/* Run the defer handler in this loop turn: it writes what was committed
 * meanwhile in one go, and delivers input held back by a pause. */
void uplink_schedule(struct uplink *u)
{
        if (u->defer)
                (void) sd_event_source_set_enabled(u->defer, SD_EVENT_ONESHOT);
}

/* After the last byte of a graceful close: close_notify and FIN, then
 * wait for the broker to close (§3.14.4: it closes after DISCONNECT).
 * Closing at once could reset the connection if input is still unread,
 * and a reset can overtake the DISCONNECT. */
static void uplink_shut_write(struct uplink *u)
{
        u->write_shut = true;
        if (u->tls)
                tls_conn_shutdown(&u->tc);
        (void) shutdown(u->fd, SHUT_WR);
}

/* A TLS broker that refuses us (our certificate, say) sends an alert and
 * resets; if our write meets the reset first, the alert still waits in
 * the socket and says more than "Connection reset by peer". Nothing read
 * here is delivered: the link is going, and nothing gets acknowledged. */
static void uplink_write_failed(struct uplink *u, const char *why)
{
        char alert[256] = "";

        if (u->tls) {
                for (unsigned i = 0; i < 4; i++) {
                        ssize_t n = tls_conn_read(&u->tc, u->pool->scratch, UPLINK_READ_CHUNK, alert,
                                                  sizeof alert);
                        if (n == -EPROTO || n == -EIO) {
                                uplink_lost(u, "TLS with the broker at %s failed: %s", u->dialer.peer, alert);
                                return;
                        }
                        if (n <= 0)
                                break;
                }
        }
        uplink_lost(u, "write to the broker at %s failed: %s", u->dialer.peer, why);
}

/* Write what is queued, until done or the socket is full. Returns 0, or
 * -EPIPE when the link was lost (reported). */
static int uplink_flush(struct uplink *u)
{
        char why[256] = "";

        if (u->state != UPLINK_WAIT_CONNACK && u->state != UPLINK_CONNECTED)
                return 0;
        u->write_blocked = false;
        while (bytebuf_size(&u->out) > 0 && !u->write_shut) {
                size_t len = bytebuf_size(&u->out);
                ssize_t n;

                /* TLS may retry from a moved buffer (bytebuf_reserve):
                 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, tls_conn_init_client. */
                if (u->tls) {
                        n = tls_conn_write(&u->tc, bytebuf_head(&u->out), len, why, sizeof why);
                } else {
                        n = send(u->fd, bytebuf_head(&u->out), len, MSG_NOSIGNAL);
                        if (n < 0) {
                                n = -errno;
                                if (n == -EWOULDBLOCK)
                                        n = -EAGAIN;
                                snprintf(why, sizeof why, "%s", strerror(errno));
                        }
                }
                if (n == -EAGAIN) {
                        u->write_blocked = true;
                        break;
                }
                if (n == -EINTR)
                        continue;
                if (n <= 0) {
                        uplink_write_failed(u, why);
                        return -EPIPE;
                }
                bytebuf_consume(&u->out, (size_t) n);
                u->t_sent = uplink_now(u->pool);
        }
        if (bytebuf_size(&u->out) == 0) {
                /* An idle link keeps no big buffer. */
                bytebuf_trim(&u->out, UPLINK_LOW_WATER);
                if (u->draining && !u->write_shut)
                        uplink_shut_write(u);
        }
        if (u->over_high && bytebuf_size(&u->out) < UPLINK_LOW_WATER) {
                u->over_high = false;
                if (u->ops && u->ops->on_writable && u->state == UPLINK_CONNECTED) {
                        const struct uplink_ops *ops = u->ops;
                        ops->on_writable(u->ud);
                }
        }
        return 0;
}

static ssize_t uplink_read_some(struct uplink *u, uint8_t *buf, size_t len, char *why, size_t whylen)
{
        ssize_t n;

        if (u->tls)
                return tls_conn_read(&u->tc, buf, len, why, whylen);
        n = recv(u->fd, buf, len, 0);
        if (n >= 0)
                return n;
        n = -errno;
        if (n == -EWOULDBLOCK)
                return -EAGAIN;
        snprintf(why, whylen, "%s", strerror(errno));
        return n;
}

/* Read and deliver, a bounded number of reads per event. */
static void uplink_read(struct uplink *u)
{
        uint8_t *scratch = u->pool->scratch;
        char why[256] = "";

        for (unsigned i = 0; i < UPLINK_READS_PER_EVENT; i++) {
                if (bytebuf_size(&u->in) && !u->draining) {
                        uplink_feed_held(u);
                        if (!uplink_alive(u))
                                return;
                }
                if (!uplink_reading(u) || (!u->ops && !u->draining))
                        return;

                ssize_t n = uplink_read_some(u, scratch, UPLINK_READ_CHUNK, why, sizeof why);
                if (n == -EAGAIN)
                        return;
                if (n == -EINTR)
                        continue;
                if (n == 0) {
                        if (u->draining)
                                uplink_lost(u, "closed after DISCONNECT");
                        else
                                uplink_lost(u, "the broker at %s closed the connection", u->dialer.peer);
                        return;
                }
                if (n < 0) {
                        uplink_lost(u, "read from the broker at %s failed: %s", u->dialer.peer, why);
                        return;
                }
                u->t_recv = uplink_now(u->pool);
                if (u->draining)
                        continue;       /* nobody to give it to; nothing is acknowledged */

                size_t used = 0;
                if (bytebuf_size(&u->in) == 0)
                        used = uplink_feed(u, scratch, (size_t) n);
                if (!uplink_alive(u))
                        return;
                if (u->draining)
                        continue;       /* closed gracefully from a callback */
                if ((size_t) n > used && bytebuf_append(&u->in, scratch + used, (size_t) n - used) < 0) {
                        uplink_lost(u, "out of memory for input from the broker");
                        return;
                }
                /* A short read emptied the socket, and OpenSSL holds
                 * nothing: level-triggered epoll reports what comes next,
                 * without a read(2) that only says EAGAIN. */
                if (u->tls ? !tls_conn_pending(&u->tc) : (size_t) n < UPLINK_READ_CHUNK) {
                        /* This read may have completed a packet held in
                         * u->in: nothing would wake us for it. */
                        if (bytebuf_size(&u->in) && !u->draining)
                                uplink_feed_held(u);
                        return;
                }
        }
        /* Out of turns: come back after the others, even if epoll would
         * not wake us (bytes OpenSSL holds, or input held in u->in). */
        u->input_pass = true;
        uplink_schedule(u);
}

/* ---- TLS sessions: one per [upstream] host, offered by every new link ---- */

/* SSL ex_data: the struct uplink of a link's SSL, for the new-session
 * callback. -1: none (no resumption). */
static int uplink_ssl_index = -1;

static void uplink_tls_session_clear(struct uplink_tls_session *t)
{
        SSL_SESSION_free(t->sess);
        free(t->name);
        *t = (struct uplink_tls_session) { 0 };
}

static void uplink_pool_forget_tls_sessions(struct uplink_pool *p)
{
        for (size_t i = 0; i < CONFIG_MAX_HOSTS; i++)
                uplink_tls_session_clear(&p->tls_sessions[i]);
}

/* The session u may offer: stored for the host u dialled, verified for
 * the same name, with the context u uses and the pool has now (a reload
 * makes a new one, with perhaps another CA), and not too old. */
static SSL_SESSION *uplink_tls_session_for(struct uplink *u)
{
        struct uplink_pool *p = u->pool;
        struct uplink_tls_session *t;

        if (u->dialer.host >= CONFIG_MAX_HOSTS || !u->ctx || u->ctx != p->ctx)
                return NULL;
        t = &p->tls_sessions[u->dialer.host];
        if (!t->sess || strcmp(t->name, u->tls_name ? u->tls_name : "") != 0)
                return NULL;
        long made = SSL_SESSION_get_time(t->sess), lifetime = SSL_SESSION_get_timeout(t->sess);
        if (uplink_now(p) - t->since >= UPLINK_TLS_SESSION_MAX_AGE_USEC || time(NULL) - made >= lifetime ||
            !SSL_SESSION_is_resumable(t->sess)) {
                uplink_tls_session_clear(t);
                return NULL;
        }
        return t->sess;
}

/* SSL_CTX_sess_set_new_cb: a session the broker gave (TLS 1.2: at the
 * end of the handshake; TLS 1.3: each NewSessionTicket after it). Kept
 * only from a full handshake whose certificate chain and name verified,
 * so that no resumed link inherits anything but a real verification,
 * and never from a handshake whose context is no longer the pool's. A
 * later full handshake replaces it.
 *
 * The pool keeps a copy of its own (the certificate is shared, not
 * copied), and every link resumes from a copy of that: OpenSSL marks the
 * session a TLS 1.3 handshake resumed, and the session of a connection
 * freed without close_notify, as not resumable (SSL_CTX_remove_session,
 * also without an internal store), which would otherwise spoil it for
 * every link after the first. One ticket for many links is what RFC 8446
 * §C.4 advises against for privacy: the broker sees one bridge either
 * way. A broker that takes each ticket once only makes every other link
 * a full handshake, which stores a fresh ticket. */
static int uplink_on_new_session(SSL *ssl, SSL_SESSION *sess)
{
        struct uplink *u = uplink_ssl_index >= 0 ? SSL_get_ex_data(ssl, uplink_ssl_index) : NULL;
        struct uplink_tls_session *t;
        SSL_SESSION *copy;
        char *name;

        if (!u || !uplink_alive(u) || u->dialer.host >= CONFIG_MAX_HOSTS || SSL_get_SSL_CTX(ssl) != u->pool->ctx ||
            SSL_session_reused(ssl) || SSL_get_verify_result(ssl) != X509_V_OK ||
            !SSL_get0_peer_certificate(ssl) || !SSL_SESSION_is_resumable(sess))
                return 0;
        name = strdup(u->tls_name ? u->tls_name : "");
        copy = SSL_SESSION_dup(sess);
        if (!name || !copy) {
                free(name);
                SSL_SESSION_free(copy);
                return 0;
        }
        t = &u->pool->tls_sessions[u->dialer.host];
        uplink_tls_session_clear(t);
        t->sess = copy;
        t->name = name;
        t->since = uplink_now(u->pool);
        if (log_enabled(LOG_LEVEL_DEBUG)) {
                struct log_fields f = uplink_fields(u, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream TLS session of %s kept: new links resume it", u->dialer.peer);
        }
        return 0;       /* OpenSSL keeps its reference */
}

/* ---- connecting ---- */

static void uplink_transport_up(struct uplink *u);
static int uplink_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int uplink_watch(struct uplink *u)
{
        u->io = sd_event_source_disable_unref(u->io);
        u->events = uplink_wanted_events(u);
        return sd_event_add_io(u->pool->event, &u->io, u->fd, u->events, uplink_on_io, u);
}

static void uplink_handshake(struct uplink *u)
{
        char why[256] = "";
        int r = tls_conn_handshake(&u->tc, why, sizeof why);

        if (r == 0)
                return;
        if (r < 0) {
                /* Whatever went wrong, the next link starts afresh. */
                if (u->tls_resume_offered && u->dialer.host < CONFIG_MAX_HOSTS)
                        uplink_tls_session_clear(&u->pool->tls_sessions[u->dialer.host]);
                uplink_lost(u, "TLS handshake with the broker at %s failed: %s", u->dialer.peer, why);
                return;
        }
        if (log_enabled(LOG_LEVEL_DEBUG)) {
                struct log_fields f = uplink_fields(u, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream TLS to %s: %s, %s%s", u->dialer.peer,
                        SSL_get_version(u->tc.ssl), SSL_get_cipher_name(u->tc.ssl),
                        SSL_session_reused(u->tc.ssl) ? ", resumed" :
                        u->tls_resume_offered ? ", full (the broker did not resume the session)" : "");
        }
        u->state = UPLINK_WAIT_CONNACK;
        (void) uplink_flush(u);         /* the CONNECT */
}

/* The socket connected (EPOLLOUT): start TLS, or send CONNECT. */
static void uplink_transport_up(struct uplink *u)
{
        int r;

        /* The name the broker's certificate must carry: that host's own
         * (or [upstream] server_name), set per SSL, so each host of a
         * list is checked against its own name and a reload's [upstream]
         * applies to the next link. A Unix socket path is no name: then
         * the context's setting stands. The other addresses are not
         * needed any more. */
        free(u->tls_name);
        u->tls_name = NULL;
        const char *tls_name = dialer_server_name(&u->dialer);
        if (tls_name && !(u->tls_name = strdup(tls_name))) {
                uplink_lost(u, "out of memory for TLS");
                return;
        }
        dialer_done(&u->dialer);
        if (u->ctx) {
                r = tls_conn_init_client(&u->tc, u->ctx, u->fd, u->tls_name);
                if (r < 0) {
                        if (r == -ENOMEM)
                                uplink_lost(u, "out of memory for TLS");
                        else
                                uplink_lost(u, "[upstream] server_name \"%s\" is not usable for TLS",
                                            u->tls_name);
                        return;
                }
                u->tls = true;
                /* Resume the host's session when there is one: the broker
                 * then sends no certificate chain to parse and verify, and
                 * the link shares the parsed certificate instead of holding
                 * its own (bench/README.md: about 7 kB a link). */
                if (uplink_ssl_index >= 0 && SSL_set_ex_data(u->tc.ssl, uplink_ssl_index, u) == 1) {
                        SSL_SESSION *sess = uplink_tls_session_for(u);
                        SSL_SESSION *copy = sess ? SSL_SESSION_dup(sess) : NULL;
                        u->tls_resume_offered = copy && SSL_set_session(u->tc.ssl, copy) == 1;
                        SSL_SESSION_free(copy); /* the SSL holds it now */
                }
                u->state = UPLINK_TLS_HANDSHAKE;
                uplink_handshake(u);
                return;
        }
        u->state = UPLINK_WAIT_CONNACK;
        (void) uplink_flush(u);
}

/* 10-50 ms, spread so that a burst does not come back all at once. */
static uint64_t uplink_redial_delay(const struct uplink *u)
{
        uint64_t x = (uint64_t) (uintptr_t) u ^ uplink_now(u->pool);

        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 32;
        return 10000 + x % 40000;
}

void uplink_redial(struct uplink *u, uint64_t now)
{
        char why[256] = "";
        int fd = dialer_again(&u->dialer, why, sizeof why);

        if (dialer_queue_full(&u->dialer, fd)) {
                u->redial_at = now + uplink_redial_delay(u);
                return;
        }
        u->redial_at = 0;
        if (fd < 0) {
                uplink_lost(u, "%s", why[0] ? why : "cannot connect to the broker");
                return;
        }
        u->fd = fd;
        if (uplink_watch(u) < 0)
                uplink_lost(u, "cannot watch the upstream socket");
}

static void uplink_on_connect_event(struct uplink *u, uint32_t revents)
{
        char why[256];
        int err = 0;
        socklen_t len = sizeof err;

        if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        else if (err == 0 && (revents & (EPOLLERR | EPOLLHUP)))
                err = ECONNREFUSED;
        if (err == 0) {
                uplink_transport_up(u);
                return;
        }
        /* Next address (a name with IPv6 and IPv4 ones, say). */
        snprintf(why, sizeof why, "cannot connect to %s: %s", u->dialer.peer, strerror(err));
        u->io = sd_event_source_disable_unref(u->io);
        close(u->fd);
        u->fd = dialer_next(&u->dialer, why, sizeof why);
        if (u->fd < 0) {
                uplink_lost(u, "%s", why);
                return;
        }
        if (uplink_watch(u) < 0)
                uplink_lost(u, "cannot watch the upstream socket");
}

static int uplink_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        struct uplink *u = userdata;

        uplink_enter(u);
        switch (u->state) {
        case UPLINK_TCP_CONNECTING:
                uplink_on_connect_event(u, revents);
                break;
        case UPLINK_TLS_HANDSHAKE:
                uplink_handshake(u);
                break;
        case UPLINK_WAIT_CONNACK:
        case UPLINK_CONNECTED: {
                bool handled = false;
                bool rd = uplink_reading(u) &&
                          ((revents & (EPOLLIN | EPOLLERR | EPOLLHUP)) ||
                           (u->tls && u->tc.read_wants_write && (revents & EPOLLOUT)));
                bool wr = (revents & EPOLLOUT) || (u->tls && u->tc.write_wants_read && (revents & EPOLLIN));

                if (wr) {
                        handled = true;
                        if (uplink_flush(u) < 0)
                                break;
                }
                if (rd && uplink_alive(u)) {
                        handled = true;
                        uplink_read(u);
                }
                /* A paused link does not read, and a hang-up would wake
                 * it for ever (level-triggered): the link is gone. */
                if (!handled && uplink_alive(u) && (revents & (EPOLLERR | EPOLLHUP))) {
                        int err = 0;
                        socklen_t len = sizeof err;
                        (void) getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                        uplink_lost(u, "the connection to the broker at %s %s", u->dialer.peer,
                                    err ? strerror(err) : "hung up");
                }
                break;
        }
        case UPLINK_DEAD:
                break;
        }
        uplink_leave(u);
        return 0;
}

/* The deferred write (and input held back by a pause or by fairness). */
static int uplink_on_defer(sd_event_source *s, void *userdata)
{
        struct uplink *u = userdata;

        uplink_enter(u);
        if (u->input_pass && uplink_reading(u) &&
            (u->state == UPLINK_WAIT_CONNACK || u->state == UPLINK_CONNECTED)) {
                u->input_pass = false;
                uplink_read(u);
        }
        if (uplink_alive(u) && !u->write_blocked)
                (void) uplink_flush(u);
        uplink_leave(u);
        return 0;
}

static char *strdup_or_null(const char *s)
{
        return s ? strdup(s) : NULL;
}

int uplink_connect(struct uplink_pool *p, const struct uplink_params *params,
                   const struct uplink_ops *ops, void *ud, struct uplink **out, const char **why)
{
        const struct config_upstream *cfg = p->cfg;
        const char *reason = NULL;
        struct uplink *u;
        uint64_t now;
        int r;

        *why = p->why;
        if (!cfg || !cfg->host || !params) {
                snprintf(p->why, sizeof p->why, "uplink_connect: no [upstream] host or no parameters");
                return -EINVAL;
        }
        if (!ops || !ops->on_connack || !ops->on_packet || !ops->on_lost) {
                snprintf(p->why, sizeof p->why, "uplink_connect: missing callbacks");
                return -EINVAL;
        }
        u = calloc(1, sizeof *u);
        if (!u) {
                snprintf(p->why, sizeof p->why, "out of memory");
                return -ENOMEM;
        }
        u->pool = p;
        u->fd = -1;
        u->ops = ops;
        u->ud = ud;
        u->state = UPLINK_TCP_CONNECTING;
        u->keepalive = params->keepalive;
        u->connect_timeout = cfg->connect_timeout ? cfg->connect_timeout : UPLINK_DEFAULT_CONNECT_TIMEOUT;
        LIST_PREPEND(all, p->all, u);
        p->n_open++;

        u->name = strdup_or_null(params->name);
        u->client_id = strdup_or_null(params->client_id);
        if (p->ctx && SSL_CTX_up_ref(p->ctx) == 1)
                u->ctx = p->ctx;
        if ((params->name && !u->name) || (params->client_id && !u->client_id) || (p->ctx && !u->ctx)) {
                snprintf(p->why, sizeof p->why, "out of memory");
                r = -ENOMEM;
                goto fail;
        }

        /* The CONNECT goes first into the output: the strings are copied
         * by encoding them, and it leaves as soon as the transport is up
         * (§3.1: the first packet from the client). */
        size_t size = uplink_connect_size(params);
        uint8_t *b = bytebuf_reserve(&u->out, size);
        if (!b) {
                snprintf(p->why, sizeof p->why, "out of memory");
                r = -ENOMEM;
                goto fail;
        }
        r = uplink_encode_connect(b, size, params, &reason);
        if (r < 0) {
                snprintf(p->why, sizeof p->why, "cannot build the upstream CONNECT: %s",
                         reason ? reason : "buffer too small");
                r = -EINVAL;
                goto fail;
        }
        bytebuf_commit(&u->out, (size_t) r);

        /* The host that worked last first (uplink_pool_host_*). */
        r = dialer_init(&u->dialer, cfg, p->host_pref, p->why, sizeof p->why);
        if (r < 0)
                goto fail;
        /* Connected or not yet, EPOLLOUT says so, from our own handler:
         * no callback ever runs inside uplink_connect(). */
        r = u->fd = dialer_next(&u->dialer, p->why, sizeof p->why);
        bool full = dialer_queue_full(&u->dialer, r);
        if (r < 0 && !full)
                goto fail;

        now = uplink_now(p);
        u->deadline = now + (uint64_t) u->connect_timeout * USEC_PER_SEC;
        if (full) {
                /* A burst of devices, not the broker away: dial again in a
                 * moment (uplink_redial), until connect_timeout. */
                u->fd = -1;
                u->redial_at = now + uplink_redial_delay(u);
                r = 0;
        } else {
                r = uplink_watch(u);
        }
        if (r >= 0)
                r = sd_event_add_time(p->event, &u->timer, CLOCK_MONOTONIC, full ? u->redial_at : u->deadline,
                                      UPLINK_TIMER_ACCURACY_USEC, uplink_on_timer, u);
        if (r >= 0)
                r = sd_event_add_defer(p->event, &u->defer, uplink_on_defer, u);
        if (r >= 0)
                r = sd_event_source_set_enabled(u->defer, SD_EVENT_OFF);
        if (r < 0) {
                snprintf(p->why, sizeof p->why, "cannot watch the upstream socket: %s", strerror(-r));
                goto fail;
        }
        if (log_enabled(LOG_LEVEL_DEBUG)) {
                struct log_fields f = uplink_fields(u, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream link connecting to %s%s", u->dialer.peer,
                        p->ctx ? " (TLS)" : "");
        }
        *out = u;
        return 0;
fail:
        u->ops = NULL;
        uplink_free(u);
        return r;
}

/* ---- the owner's side ---- */

void uplink_push(struct uplink *u)
{
        if (!uplink_is_connected(u) || u->write_blocked || bytebuf_size(&u->out) == 0)
                return;
        uplink_enter(u);
        (void) uplink_flush(u);
        /* Written: the deferred write scheduled by uplink_commit has
         * nothing left to do, and a dispatch costs more than this. */
        if (uplink_alive(u) && !u->input_pass && u->defer)
                (void) sd_event_source_set_enabled(u->defer, SD_EVENT_OFF);
        uplink_leave(u);
}

void uplink_trim(struct uplink *u)
{
        if (!u)
                return;
        bytebuf_trim(&u->out, 0);
        bytebuf_trim(&u->in, 0);
        tls_conn_trim(&u->tc); /* nothing for a plain link (no SSL) or before the handshake */
}

bool uplink_is_connected(const struct uplink *u)
{
        return u && u->state == UPLINK_CONNECTED && !u->doomed && u->ops;
}

uint8_t *uplink_reserve(struct uplink *u, size_t n)
{
        uint8_t *b;

        if (!uplink_is_connected(u) || !(b = bytebuf_reserve(&u->out, n)))
                return NULL;
        u->reserved = n;
        return b;
}

void uplink_commit(struct uplink *u, size_t used)
{
        if (!uplink_is_connected(u) || used == 0)
                return;
        if (used > u->reserved)
                used = u->reserved;     /* a caller bug; never write past the room */
        u->reserved = 0;
        bytebuf_commit(&u->out, used);
        if (bytebuf_size(&u->out) >= UPLINK_HIGH_WATER)
                u->over_high = true;
        /* Written by the defer handler, so everything committed in this
         * turn leaves together; or on EPOLLOUT when the socket is full. */
        if (!u->write_blocked)
                uplink_schedule(u);
}

int uplink_send_ack(struct uplink *u, enum mqtt_type type, uint16_t packet_id)
{
        uint8_t *b;
        int r;

        if (!uplink_is_connected(u))
                return -ENOTCONN;
        b = uplink_reserve(u, 4);
        if (!b)
                return -ENOMEM;
        r = mqtt_encode_ack(b, 4, type, packet_id);
        if (r < 0)
                return r;
        uplink_commit(u, (size_t) r);
        return 0;
}

size_t uplink_queued(const struct uplink *u)
{
        return u ? bytebuf_size(&u->out) : 0;
}

bool uplink_writable(const struct uplink *u)
{
        return uplink_is_connected(u) && bytebuf_size(&u->out) < UPLINK_HIGH_WATER;
}

void uplink_pause_input(struct uplink *u, bool paused)
{
        if (!u || u->paused == paused)
                return;
        u->paused = paused;
        if (!uplink_alive(u))
                return;
        if (!paused) {
                /* We did not listen meanwhile: the broker's silence was ours. */
                u->t_recv = uplink_now(u->pool);
                /* Held packets and bytes OpenSSL holds wake no epoll. */
                u->input_pass = true;
                uplink_schedule(u);
        }
        if (!u->busy)
                uplink_update_events(u);
}

void uplink_close(struct uplink *u, bool graceful)
{
        if (!u)
                return;
        u->ops = NULL;
        u->ud = NULL;
        if (!uplink_alive(u)) {
                uplink_doom(u);
                return;
        }
        if (u->state == UPLINK_WAIT_CONNACK || u->state == UPLINK_CONNECTED) {
                if (graceful && !u->draining) {
                        /* §3.14.4: the broker discards the will on DISCONNECT,
                         * which goes after what is queued. §3.1.4 lets a
                         * client send it before CONNACK arrives. */
                        if (uplink_queue_empty_packet(u, MQTT_DISCONNECT) == 0) {
                                u->draining = true;
                                u->paused = false;
                                bytebuf_free(&u->in);
                                u->deadline = uplink_now(u->pool) + UPLINK_LINGER_USEC;
                                uplink_arm_timer(u, uplink_now(u->pool));
                                if (!u->busy)
                                        uplink_update_events(u);
                                return;
                        }
                } else if (!graceful && !u->write_shut) {
                        /* What the device sent before it went: one try, no
                         * waiting. Then cut: the broker publishes the will
                         * (§3.1.2.5) and keeps what is unacknowledged (§4.4). */
                        char why[128];
                        size_t len = bytebuf_size(&u->out);
                        if (u->tls && len)
                                (void) tls_conn_write(&u->tc, bytebuf_head(&u->out), len, why, sizeof why);
                        else if (len)
                                (void) send(u->fd, bytebuf_head(&u->out), len, MSG_NOSIGNAL | MSG_DONTWAIT);
                } else if (graceful) {
                        return;         /* already draining */
                }
        }
        uplink_doom(u);
}

/* ---- pool ---- */

int uplink_pool_new(sd_event *event, const struct config_upstream *cfg, SSL_CTX *ctx,
                    struct uplink_pool **out)
{
        struct uplink_pool *p = calloc(1, sizeof *p);

        if (!p)
                return -ENOMEM;
        p->event = sd_event_ref(event);
        p->max_packet = UPLINK_MAX_PACKET_DEFAULT;
        if (uplink_ssl_index < 0)
                uplink_ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        uplink_pool_set_config(p, cfg, ctx);
        *out = p;
        return 0;
}

void uplink_pool_free(struct uplink_pool *p)
{
        if (!p)
                return;
        while (p->all) {
                p->all->ops = NULL;
                p->all->busy = 0;
                uplink_free(p->all);
        }
        uplink_pool_forget_tls_sessions(p);
        SSL_CTX_free(p->ctx);
        sd_event_unref(p->event);
        free(p);
}

void uplink_pool_set_config(struct uplink_pool *p, const struct config_upstream *cfg, SSL_CTX *ctx)
{
        /* Sessions were verified with the old context's CA and names, for
         * the old host list: none is offered under the new ones. */
        uplink_pool_forget_tls_sessions(p);
        if (ctx) {
                SSL_CTX_up_ref(ctx);
                SSL_CTX_sess_set_new_cb(ctx, uplink_on_new_session);
        }
        SSL_CTX_free(p->ctx);
        p->ctx = ctx;
        p->cfg = cfg;
        /* A new list may differ: start again at its first host. */
        p->host_pref = 0;
}

void uplink_pool_host_failed(struct uplink_pool *p, unsigned host, const char *why)
{
        size_t n = p->cfg ? p->cfg->n_hosts : 0;

        if (n < 2 || host != p->host_pref || host >= n)
                return;
        p->host_pref = (host + 1) % (unsigned) n;
        log_warning("upstream host %s port %u did not work (%s): new upstream links try %s port %u first",
                    p->cfg->hosts[host].name, p->cfg->hosts[host].port, why,
                    p->cfg->hosts[p->host_pref].name, p->cfg->hosts[p->host_pref].port);
}

void uplink_pool_host_worked(struct uplink_pool *p, unsigned host)
{
        size_t n = p->cfg ? p->cfg->n_hosts : 0;

        if (n < 2 || host >= n || host == p->host_pref)
                return;
        p->host_pref = host;
        log_notice("upstream host %s port %u works: new upstream links try it first",
                   p->cfg->hosts[host].name, p->cfg->hosts[host].port);
}

void uplink_pool_set_max_packet(struct uplink_pool *p, size_t max_packet)
{
        p->max_packet = max_packet ? max_packet : UPLINK_MAX_PACKET_DEFAULT;
}

void uplink_pool_count(const struct uplink_pool *p, unsigned *open, unsigned *connected)
{
        *open = p->n_open;
        *connected = p->n_connected;
}
