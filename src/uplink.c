/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "list.h"
#include "log.h"
#include "tls_conn.h"
#include "uplink.h"
#include "uplink_connect.h"

#define USEC_PER_SEC 1000000ULL
#define UPLINK_HIGH_WATER (64u * 1024u)  /* uplink_writable() false from here */
#define UPLINK_LOW_WATER (16u * 1024u)   /* on_writable below this */
#define UPLINK_LINGER_USEC (5 * USEC_PER_SEC) /* a detached link's last words */
#define UPLINK_READ_CHUNK (16u * 1024u)  /* one read(2) / SSL_read: one TLS record */
#define UPLINK_READS_PER_EVENT 16        /* then let other links have the loop */
#define UPLINK_MAX_ADDRS 8               /* getaddrinfo() results tried in turn */
#define UPLINK_TIMER_ACCURACY_USEC (50 * 1000ULL)
#define UPLINK_DEFAULT_CONNECT_TIMEOUT 10
/* The default cap on a packet from the broker: [limits] max_packet_size's
 * default. The owner sets the configured value with
 * uplink_pool_set_max_packet(); §2.2.3 allows up to 268435460 bytes, far
 * more than any device here could take. */
#define UPLINK_MAX_PACKET_DEFAULT (256u * 1024u)

enum uplink_state {
        UPLINK_TCP_CONNECTING,  /* non-blocking connect(2) under way */
        UPLINK_TLS_HANDSHAKE,
        UPLINK_WAIT_CONNACK,    /* transport up; CONNECT queued or sent */
        UPLINK_CONNECTED,       /* CONNACK 0 received */
        UPLINK_DEAD,            /* transport closed */
};

struct uplink {
        struct uplink_pool *pool;
        LIST_FIELDS(struct uplink, all);
        const struct uplink_ops *ops;   /* NULL once the owner closed it */
        void *ud;
        enum uplink_state state;

        int fd;                         /* ours; -1 once closed */
        SSL_CTX *ctx;                   /* the pool's at connect time; NULL: no TLS */
        bool tls;
        struct tls_conn tc;             /* when tls */
        sd_event_source *io, *timer, *defer;
        uint32_t events;

        unsigned busy;                  /* our handlers running on the stack */
        bool doomed;                    /* free once busy drops to 0 */
        bool paused;                    /* uplink_pause_input(true) */
        bool input_pass;                /* the defer must look at the input */
        bool write_blocked;             /* write(2) said EAGAIN: wait for EPOLLOUT */
        bool over_high;                 /* reached the high-water mark: on_writable owed */
        bool draining;                  /* closed gracefully: DISCONNECT, then EOF */
        bool write_shut;                /* DISCONNECT written, SHUT_WR done */

        uint8_t *out;                   /* bytes [out_off, out_len) queued */
        size_t out_off, out_len, out_cap, reserved;
        uint8_t *in;                    /* a partial packet, or input held while paused */
        size_t in_len, in_cap;

        uint64_t t_sent, t_recv;        /* CLOCK_MONOTONIC usec of the last write / read */
        uint64_t deadline;              /* connect timeout, or the linger limit */
        uint16_t keepalive;
        unsigned connect_timeout;

        struct sockaddr_storage addrs[UPLINK_MAX_ADDRS];
        socklen_t addr_lens[UPLINK_MAX_ADDRS];
        unsigned n_addrs, addr_i;
        struct sockaddr_storage bind_addr;
        socklen_t bind_len;
        char *tls_name;                 /* verified against the SAN; NULL: the context's */
        char peer[sizeof(((struct sockaddr_un *) 0)->sun_path) + 8]; /* "[v6]:port" or a path */
        char *name, *client_id;         /* for log lines */
};

struct uplink_pool {
        sd_event *event;
        const struct config_upstream *cfg;
        SSL_CTX *ctx;
        size_t max_packet;
        struct uplink *all;
        unsigned n_open, n_connected;
        char why[256];                  /* uplink_connect's reason */
        uint8_t scratch[UPLINK_READ_CHUNK]; /* handlers never nest: one read buffer for all */
};

static void uplink_update_events(struct uplink *u);
static void uplink_lost(struct uplink *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static uint64_t now_usec(const struct uplink_pool *p)
{
        uint64_t t = 0;
        sd_event_now(p->event, CLOCK_MONOTONIC, &t);
        return t;
}

static struct log_fields uplink_fields(const struct uplink *u, const char *reason)
{
        return (struct log_fields) { .cn = u->name, .client_id = u->client_id, .reason = reason };
}

static bool uplink_alive(const struct uplink *u)
{
        return !u->doomed && u->state != UPLINK_DEAD;
}

/* ---- teardown and lifetime ---- */

/* Close the transport now (no DISCONNECT, no close_notify): the broker
 * sees the connection end and publishes the will. Only our own fd. */
static void uplink_teardown(struct uplink *u)
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
        free(u->out);
        u->out = NULL;
        u->out_off = u->out_len = u->out_cap = 0;
        free(u->in);
        u->in = NULL;
        u->in_len = u->in_cap = 0;
}

static void uplink_free(struct uplink *u)
{
        uplink_teardown(u);
        LIST_REMOVE(all, u->pool->all, u);
        u->pool->n_open--;
        SSL_CTX_free(u->ctx);
        free(u->tls_name);
        free(u->name);
        free(u->client_id);
        free(u);
}

/* Tear down now; free now, or when the handler on the stack returns. */
static void uplink_doom(struct uplink *u)
{
        uplink_teardown(u);
        u->ops = NULL;
        if (u->busy)
                u->doomed = true;
        else
                uplink_free(u);
}

static void uplink_enter(struct uplink *u)
{
        u->busy++;
}

/* Leave a handler: free a link closed meanwhile, else watch what it needs. */
static void uplink_leave(struct uplink *u)
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
static void uplink_lost(struct uplink *u, const char *fmt, ...)
{
        char why[320];
        va_list ap;

        if (!uplink_alive(u))
                return;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
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

/* ---- events and timer ---- */

static bool uplink_reading(const struct uplink *u)
{
        return !u->paused || u->draining;
}

static uint32_t uplink_wanted_events(const struct uplink *u)
{
        bool has_output = u->out_len > u->out_off && !u->write_shut;
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
static void uplink_schedule(struct uplink *u)
{
        if (u->defer)
                (void) sd_event_source_set_enabled(u->defer, SD_EVENT_ONESHOT);
}

/* The next moment something is due. Timestamps move with every packet,
 * the timer only when it fires: no timer update per packet. */
static uint64_t uplink_next_due(const struct uplink *u, uint64_t now)
{
        uint64_t ka = (uint64_t) u->keepalive * USEC_PER_SEC, next;

        if (u->draining || u->state != UPLINK_CONNECTED)
                return u->deadline;
        if (!ka)
                return UINT64_MAX;
        next = u->t_sent + ka;
        if (next <= now)        /* a PINGREQ is queued or stuck behind output */
                next = now + ka;
        if (!u->paused && u->t_recv + ka + ka / 2 < next)
                next = u->t_recv + ka + ka / 2;
        return next;
}

static void uplink_arm_timer(struct uplink *u, uint64_t now)
{
        uint64_t next = uplink_next_due(u, now);

        if (!u->timer)
                return;
        if (next == UINT64_MAX) {
                (void) sd_event_source_set_enabled(u->timer, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(u->timer, next);
        (void) sd_event_source_set_enabled(u->timer, SD_EVENT_ONESHOT);
}

static int uplink_queue_empty_packet(struct uplink *u, enum mqtt_type type);

static int uplink_on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct uplink *u = userdata;
        uint64_t now = now_usec(u->pool), ka = (uint64_t) u->keepalive * USEC_PER_SEC;
        static const char *const phase[] = {
                [UPLINK_TCP_CONNECTING] = "connecting",
                [UPLINK_TLS_HANDSHAKE] = "in the TLS handshake",
                [UPLINK_WAIT_CONNACK] = "waiting for CONNACK",
        };

        uplink_enter(u);
        if (u->draining) {
                if (now >= u->deadline) {
                        uplink_lost(u, "closing: the broker did not end the connection within %llu s",
                                    (unsigned long long) (UPLINK_LINGER_USEC / USEC_PER_SEC));
                        goto out;
                }
        } else if (u->state < UPLINK_CONNECTED) {
                if (now >= u->deadline) {
                        uplink_lost(u, "upstream connect to %s timed out after %u s %s", u->peer,
                                    u->connect_timeout, phase[u->state]);
                        goto out;
                }
        } else if (u->state == UPLINK_CONNECTED && ka) {
                /* §3.1.2.10: the server allows one and a half keepalive
                 * periods; hold the broker to the same. */
                if (!u->paused && now >= u->t_recv + ka + ka / 2) {
                        uplink_lost(u, "no packet from the broker for %u.%u s (keepalive %u s)",
                                    u->keepalive * 3 / 2, u->keepalive % 2 ? 5 : 0, u->keepalive);
                        goto out;
                }
                /* §3.1.2.10: a PINGREQ when nothing else was sent; queued
                 * output still counts as sending once it moves. */
                if (now >= u->t_sent + ka && u->out_len == u->out_off &&
                    uplink_queue_empty_packet(u, MQTT_PINGREQ) < 0) {
                        uplink_lost(u, "out of memory for PINGREQ");
                        goto out;
                }
        }
        if (uplink_alive(u))
                uplink_arm_timer(u, now);
out:
        uplink_leave(u);
        return 0;
}

/* ---- output ---- */

static int uplink_out_room(struct uplink *u, size_t n)
{
        size_t need;

        if (u->out_cap - u->out_len >= n)
                return 0;
        if (u->out_off > 0) {
                /* TLS may retry a write from here: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER. */
                memmove(u->out, u->out + u->out_off, u->out_len - u->out_off);
                u->out_len -= u->out_off;
                u->out_off = 0;
                if (u->out_cap - u->out_len >= n)
                        return 0;
        }
        if (n > SIZE_MAX / 2 - u->out_len)
                return -ENOMEM;
        need = u->out_len + n;
        size_t cap = u->out_cap ? u->out_cap : 1024;
        while (cap < need)
                cap *= 2;
        uint8_t *b = realloc(u->out, cap);
        if (!b)
                return -ENOMEM;
        u->out = b;
        u->out_cap = cap;
        return 0;
}

static int uplink_queue_empty_packet(struct uplink *u, enum mqtt_type type)
{
        if (uplink_out_room(u, 2) < 0)
                return -ENOMEM;
        int r = mqtt_encode_empty(u->out + u->out_len, 2, type);
        if (r < 0)
                return r;
        u->out_len += (size_t) r;
        if (!u->write_blocked)
                uplink_schedule(u);
        return 0;
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

/* Write what is queued, until done or the socket is full. Returns 0, or
 * -EPIPE when the link was lost (reported). */
static int uplink_flush(struct uplink *u)
{
        char why[256] = "";

        if (u->state != UPLINK_WAIT_CONNACK && u->state != UPLINK_CONNECTED)
                return 0;
        u->write_blocked = false;
        while (u->out_len > u->out_off && !u->write_shut) {
                size_t len = u->out_len - u->out_off;
                ssize_t n;

                if (u->tls) {
                        n = tls_conn_write(&u->tc, u->out + u->out_off, len, why, sizeof why);
                } else {
                        n = send(u->fd, u->out + u->out_off, len, MSG_NOSIGNAL);
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
                        uplink_lost(u, "write to the broker at %s failed: %s", u->peer, why);
                        return -EPIPE;
                }
                u->out_off += (size_t) n;
                u->t_sent = now_usec(u->pool);
        }
        if (u->out_off == u->out_len) {
                u->out_off = u->out_len = 0;
                /* An idle link keeps no big buffer. */
                if (u->out_cap > UPLINK_HIGH_WATER) {
                        free(u->out);
                        u->out = NULL;
                        u->out_cap = 0;
                }
                if (u->draining && !u->write_shut)
                        uplink_shut_write(u);
        }
        if (u->over_high && u->out_len - u->out_off < UPLINK_LOW_WATER) {
                u->over_high = false;
                if (u->ops && u->ops->on_writable && u->state == UPLINK_CONNECTED) {
                        const struct uplink_ops *ops = u->ops;
                        ops->on_writable(u->ud);
                }
        }
        return 0;
}

/* ---- input ---- */

static void uplink_protocol_error(struct uplink *u, const struct mqtt_packet *pkt)
{
        uplink_lost(u, "protocol error: the broker sent %s %s", mqtt_type_name(pkt->type),
                    u->state == UPLINK_WAIT_CONNACK ? "before CONNACK (§3.2)"
                                                    : "(not a packet a server sends, §2.2.1)");
}

static void uplink_on_connack(struct uplink *u, const struct mqtt_packet *pkt)
{
        uint8_t rc = pkt->u.connack.return_code;
        bool sp = pkt->u.connack.session_present;
        const struct uplink_ops *ops = u->ops;

        if (rc != 0) {
                /* §3.2.2.3: the server closes the connection after a
                 * refusal; so do we, right after the owner heard it. */
                ops->on_connack(u->ud, rc, sp);
                if (!uplink_alive(u))
                        return;
                if (u->ops)
                        uplink_teardown(u);     /* the owner still calls uplink_close() */
                else
                        uplink_doom(u);         /* it did, even gracefully: nothing to say */
                return;
        }
        u->state = UPLINK_CONNECTED;
        u->pool->n_connected++;
        u->t_recv = now_usec(u->pool);
        if (u->out_len == u->out_off)
                u->t_sent = u->t_recv;
        uplink_arm_timer(u, u->t_recv);
        ops->on_connack(u->ud, 0, sp);
}

/* One whole packet from the broker. */
static void uplink_on_packet(struct uplink *u, const uint8_t *raw, size_t len)
{
        struct mqtt_packet pkt;
        const char *why = NULL;
        const struct uplink_ops *ops = u->ops;

        if (mqtt_parse(raw, len, &pkt, &why) < 0) {
                uplink_lost(u, "malformed %s from the broker: %s", mqtt_type_name(raw[0] >> 4),
                            why ? why : "?");
                return;
        }
        if (u->state == UPLINK_WAIT_CONNACK) {
                if (pkt.type != MQTT_CONNACK) {
                        uplink_protocol_error(u, &pkt);
                        return;
                }
                uplink_on_connack(u, &pkt);
                return;
        }
        switch (pkt.type) {
        case MQTT_PINGRESP:
                return;
        case MQTT_PUBLISH:
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
                ops->on_packet(u->ud, &pkt, raw, len);
                return;
        case MQTT_CONNACK:
                uplink_lost(u, "protocol error: a second CONNACK from the broker (§3.2)");
                return;
        default:
                uplink_protocol_error(u, &pkt);
                return;
        }
}

/* Deliver the whole packets at the start of buf. Returns the bytes used;
 * stops early when the link is paused, closed or lost. */
static size_t uplink_feed(struct uplink *u, const uint8_t *buf, size_t len)
{
        size_t off = 0, plen;

        while (off < len && uplink_alive(u) && u->ops && !u->paused) {
                int r = mqtt_frame(buf + off, len - off, u->pool->max_packet, &plen);
                if (r == 0)
                        break;
                if (r == -EMSGSIZE) {
                        uplink_lost(u, "%s from the broker larger than %zu bytes (the packet size limit)",
                                    mqtt_type_name(buf[off] >> 4), u->pool->max_packet);
                        break;
                }
                if (r < 0) {
                        uplink_lost(u, "malformed packet from the broker: remaining length over 4 bytes (§2.2.3)");
                        break;
                }
                uplink_on_packet(u, buf + off, plen);
                off += plen;
        }
        return off;
}

static int uplink_in_append(struct uplink *u, const uint8_t *b, size_t n)
{
        if (u->in_cap - u->in_len < n) {
                size_t cap = u->in_cap ? u->in_cap : UPLINK_READ_CHUNK;
                while (cap - u->in_len < n)
                        cap *= 2;
                uint8_t *nb = realloc(u->in, cap);
                if (!nb)
                        return -ENOMEM;
                u->in = nb;
                u->in_cap = cap;
        }
        memcpy(u->in + u->in_len, b, n);
        u->in_len += n;
        return 0;
}

/* Deliver what is held in u->in; keep the rest at its start. */
static void uplink_feed_held(struct uplink *u)
{
        size_t used = uplink_feed(u, u->in, u->in_len);

        if (!uplink_alive(u) || used == 0)
                return;
        memmove(u->in, u->in + used, u->in_len - used);
        u->in_len -= used;
        if (u->in_len == 0) {
                free(u->in);
                u->in = NULL;
                u->in_cap = 0;
        }
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
                if (u->in_len && !u->draining) {
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
                                uplink_lost(u, "the broker at %s closed the connection", u->peer);
                        return;
                }
                if (n < 0) {
                        uplink_lost(u, "read from the broker at %s failed: %s", u->peer, why);
                        return;
                }
                u->t_recv = now_usec(u->pool);
                if (u->draining)
                        continue;       /* nobody to give it to; nothing is acknowledged */

                size_t used = 0;
                if (u->in_len == 0)
                        used = uplink_feed(u, scratch, (size_t) n);
                if (!uplink_alive(u))
                        return;
                if (u->draining)
                        continue;       /* closed gracefully from a callback */
                if ((size_t) n > used && uplink_in_append(u, scratch + used, (size_t) n - used) < 0) {
                        uplink_lost(u, "out of memory for input from the broker");
                        return;
                }
        }
        /* Out of turns: come back after the others, even if epoll would
         * not wake us (bytes OpenSSL holds, or input held in u->in). */
        u->input_pass = true;
        uplink_schedule(u);
}

/* ---- connecting ---- */

static void uplink_transport_up(struct uplink *u);
static int uplink_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int uplink_socket_connect(struct uplink *u, char *why, size_t whylen)
{
        const struct sockaddr *sa = (const struct sockaddr *) &u->addrs[u->addr_i];
        int fd, one = 1;

        if (sa->sa_family == AF_UNIX)
                snprintf(u->peer, sizeof u->peer, "%s", ((const struct sockaddr_un *) sa)->sun_path);
        else
                log_format_peer(u->peer, sizeof u->peer, sa);

        fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                snprintf(why, whylen, "socket: %s", strerror(errno));
                return -errno;
        }
        if (sa->sa_family != AF_UNIX) {
                /* MQTT packets are small and latency matters: no Nagle. */
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                if (u->bind_len && bind(fd, (const struct sockaddr *) &u->bind_addr, u->bind_len) < 0) {
                        int e = errno;
                        snprintf(why, whylen, "cannot bind to [upstream] bind_address: %s", strerror(e));
                        close(fd);
                        return -e;
                }
        }
        if (connect(fd, sa, u->addr_lens[u->addr_i]) < 0 && errno != EINPROGRESS) {
                int e = errno;
                /* A Unix socket says EAGAIN when the listen queue is full. */
                snprintf(why, whylen, "cannot connect to %s: %s", u->peer,
                         e == EAGAIN ? "the broker's listen queue is full" : strerror(e));
                close(fd);
                return -e;
        }
        /* Connected or not yet: either way EPOLLOUT says so, from our own
         * handler, so no callback ever runs inside uplink_connect(). */
        u->fd = fd;
        return 0;
}

/* Connect to the next address that takes it. Returns 0, or a negative
 * errno with why set once every address failed. */
static int uplink_try_addresses(struct uplink *u, char *why, size_t whylen)
{
        int r = -EHOSTUNREACH;

        while (u->addr_i < u->n_addrs) {
                r = uplink_socket_connect(u, why, whylen);
                if (r == 0)
                        return 0;
                u->addr_i++;
        }
        return r;
}

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
                uplink_lost(u, "TLS handshake with the broker at %s failed: %s", u->peer, why);
                return;
        }
        if (log_enabled(LOG_LEVEL_DEBUG)) {
                struct log_fields f = uplink_fields(u, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream TLS to %s: %s, %s%s", u->peer,
                        SSL_get_version(u->tc.ssl), SSL_get_cipher_name(u->tc.ssl),
                        SSL_session_reused(u->tc.ssl) ? ", resumed" : "");
        }
        u->state = UPLINK_WAIT_CONNACK;
        (void) uplink_flush(u);         /* the CONNECT */
}

/* The socket connected (EPOLLOUT): start TLS, or send CONNECT. */
static void uplink_transport_up(struct uplink *u)
{
        int r;

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
                u->state = UPLINK_TLS_HANDSHAKE;
                uplink_handshake(u);
                return;
        }
        u->state = UPLINK_WAIT_CONNACK;
        (void) uplink_flush(u);
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
        snprintf(why, sizeof why, "cannot connect to %s: %s", u->peer, strerror(err));
        u->io = sd_event_source_disable_unref(u->io);
        close(u->fd);
        u->fd = -1;
        u->addr_i++;
        if (uplink_try_addresses(u, why, sizeof why) < 0 || uplink_watch(u) < 0) {
                uplink_lost(u, "%s", why);
                return;
        }
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
                        uplink_lost(u, "the connection to the broker at %s %s", u->peer,
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

/* Fill u->addrs from [upstream]. getaddrinfo() does no DNS for an IP
 * literal (the usual case: 127.0.0.1, or the broker's address); a host
 * name is resolved here, once per connect, and that blocks the loop for
 * as long as the resolver takes. Reasons go to why. */
static int uplink_resolve(struct uplink *u, const struct config_upstream *cfg, char *why, size_t whylen)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL, *ai;
        char port[8];
        int r;

        if (config_upstream_is_socket(cfg)) {
                struct sockaddr_un *sun = (struct sockaddr_un *) &u->addrs[0];

                if (strlen(cfg->host) >= sizeof sun->sun_path) {
                        snprintf(why, whylen, "[upstream] host: Unix socket path longer than %zu bytes",
                                 sizeof sun->sun_path - 1);
                        return -ENAMETOOLONG;
                }
                sun->sun_family = AF_UNIX;
                strcpy(sun->sun_path, cfg->host);
                u->addr_lens[0] = (socklen_t) sizeof *sun;
                u->n_addrs = 1;
                return 0;
        }

        if (cfg->bind_address) {
                struct sockaddr_in *sin = (struct sockaddr_in *) &u->bind_addr;
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &u->bind_addr;

                if (inet_pton(AF_INET, cfg->bind_address, &sin->sin_addr) == 1) {
                        sin->sin_family = AF_INET;
                        u->bind_len = sizeof *sin;
                } else if (inet_pton(AF_INET6, cfg->bind_address, &sin6->sin6_addr) == 1) {
                        sin6->sin6_family = AF_INET6;
                        u->bind_len = sizeof *sin6;
                } else {
                        snprintf(why, whylen, "[upstream] bind_address: \"%s\" is not an IP address",
                                 cfg->bind_address);
                        return -EINVAL;
                }
                hints.ai_family = u->bind_addr.ss_family;
        }

        snprintf(port, sizeof port, "%u", (unsigned) cfg->port);
        r = getaddrinfo(cfg->host, port, &hints, &res);
        if (r != 0) {
                snprintf(why, whylen, "cannot resolve upstream host \"%s\"%s: %s", cfg->host,
                         cfg->bind_address ? " (for the family of bind_address)" : "",
                         r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
                return -EHOSTUNREACH;
        }
        for (ai = res; ai && u->n_addrs < UPLINK_MAX_ADDRS; ai = ai->ai_next) {
                if (ai->ai_addrlen > sizeof u->addrs[0])
                        continue;
                memcpy(&u->addrs[u->n_addrs], ai->ai_addr, ai->ai_addrlen);
                u->addr_lens[u->n_addrs++] = ai->ai_addrlen;
        }
        freeaddrinfo(res);
        if (u->n_addrs == 0) {
                snprintf(why, whylen, "upstream host \"%s\" has no usable address", cfg->host);
                return -EHOSTUNREACH;
        }
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
        /* The name the broker's certificate must carry: as
         * tls_client_ctx_new puts on the context, per SSL so a reload's
         * [upstream] applies to the next link. A Unix socket path is no
         * name: then the context's setting stands. */
        const char *tls_name = cfg->server_name ? cfg->server_name
                                                : (config_upstream_is_socket(cfg) ? NULL : cfg->host);
        u->tls_name = strdup_or_null(tls_name);
        if (p->ctx && SSL_CTX_up_ref(p->ctx) == 1)
                u->ctx = p->ctx;
        if ((params->name && !u->name) || (params->client_id && !u->client_id) ||
            (tls_name && !u->tls_name) || (p->ctx && !u->ctx)) {
                snprintf(p->why, sizeof p->why, "out of memory");
                r = -ENOMEM;
                goto fail;
        }

        /* The CONNECT goes first into the output: the strings are copied
         * by encoding them, and it leaves as soon as the transport is up
         * (§3.1: the first packet from the client). */
        r = uplink_out_room(u, uplink_connect_size(params));
        if (r < 0) {
                snprintf(p->why, sizeof p->why, "out of memory");
                goto fail;
        }
        r = uplink_encode_connect(u->out, u->out_cap, params, &reason);
        if (r < 0) {
                snprintf(p->why, sizeof p->why, "cannot build the upstream CONNECT: %s",
                         reason ? reason : "buffer too small");
                r = -EINVAL;
                goto fail;
        }
        u->out_len = (size_t) r;

        r = uplink_resolve(u, cfg, p->why, sizeof p->why);
        if (r < 0)
                goto fail;
        r = uplink_try_addresses(u, p->why, sizeof p->why);
        if (r < 0)
                goto fail;

        now = now_usec(p);
        u->deadline = now + (uint64_t) u->connect_timeout * USEC_PER_SEC;
        r = uplink_watch(u);
        if (r >= 0)
                r = sd_event_add_time(p->event, &u->timer, CLOCK_MONOTONIC, u->deadline,
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
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream link connecting to %s%s", u->peer,
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

bool uplink_is_connected(const struct uplink *u)
{
        return u && u->state == UPLINK_CONNECTED && !u->doomed && u->ops;
}

uint8_t *uplink_reserve(struct uplink *u, size_t n)
{
        if (!uplink_is_connected(u) || uplink_out_room(u, n) < 0)
                return NULL;
        u->reserved = n;
        return u->out + u->out_len;
}

void uplink_commit(struct uplink *u, size_t used)
{
        if (!uplink_is_connected(u) || used == 0)
                return;
        if (used > u->reserved)
                used = u->reserved;     /* a caller bug; never write past the room */
        u->reserved = 0;
        u->out_len += used;
        if (u->out_len - u->out_off >= UPLINK_HIGH_WATER)
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
        return u ? u->out_len - u->out_off : 0;
}

bool uplink_writable(const struct uplink *u)
{
        return uplink_is_connected(u) && u->out_len - u->out_off < UPLINK_HIGH_WATER;
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
                u->t_recv = now_usec(u->pool);
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
                                free(u->in);
                                u->in = NULL;
                                u->in_len = u->in_cap = 0;
                                u->deadline = now_usec(u->pool) + UPLINK_LINGER_USEC;
                                uplink_arm_timer(u, now_usec(u->pool));
                                if (!u->busy)
                                        uplink_update_events(u);
                                return;
                        }
                } else if (!graceful && !u->write_shut) {
                        /* What the device sent before it went: one try, no
                         * waiting. Then cut: the broker publishes the will
                         * (§3.1.2.5) and keeps what is unacknowledged (§4.4). */
                        char why[128];
                        if (u->tls && u->out_len > u->out_off)
                                (void) tls_conn_write(&u->tc, u->out + u->out_off, u->out_len - u->out_off,
                                                      why, sizeof why);
                        else if (u->out_len > u->out_off)
                                (void) send(u->fd, u->out + u->out_off, u->out_len - u->out_off,
                                            MSG_NOSIGNAL | MSG_DONTWAIT);
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
        SSL_CTX_free(p->ctx);
        sd_event_unref(p->event);
        free(p);
}

void uplink_pool_set_config(struct uplink_pool *p, const struct config_upstream *cfg, SSL_CTX *ctx)
{
        if (ctx)
                SSL_CTX_up_ref(ctx);
        SSL_CTX_free(p->ctx);
        p->ctx = ctx;
        p->cfg = cfg;
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
