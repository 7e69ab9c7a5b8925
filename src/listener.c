/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridge.h"
#include "conn_limits.h"
#include "list.h"
#include "listener.h"
#include "log.h"
#include "proxy_proto.h"

/* An accepted socket that has not sent its first byte yet. It gets no
 * session (no SSL object, no buffers) until it does, and only
 * first_byte_timeout to do so: a device sends its ClientHello right after
 * the TCP handshake, an idle socket is a probe or an attack.
 *
 * Behind a balancer ([listener] proxy_protocol = v1|v2), the first bytes
 * are its PROXY header instead, which must be complete within the same
 * time; the header is read (peeked, then exactly its length consumed, so
 * the ClientHello stays in the socket) and the session gets the device's
 * own address from it. */
struct waiting {
        struct listener *l;
        LIST_FIELDS(struct waiting, waiting);
        int fd;
        enum proxy_version want;  /* the header expected first; PROXY_NONE: TLS */
        struct sockaddr_storage ss;
        socklen_t len;
        uint64_t deadline;        /* CLOCK_MONOTONIC usec */
        sd_event_source *io;
};

/* Log rate limiting slots: enum conn_verdict's four, then these. */
enum {
        REFUSAL_PROXY_UNTRUSTED = 4,  /* proxy_protocol on, peer not in proxy_from */
        REFUSAL_PROXY_HEADER,         /* missing, invalid or wrong-version header */
        REFUSAL_PROXY_UNEXPECTED,     /* a header while proxy_protocol = off */
        REFUSAL_SLOTS,
};

struct listener {
        struct bridge *b;
        listener_accept_fn on_accept; /* admitted connections go here */
        void *ud;
        int fd;
        uint16_t port;
        sd_event_source *io;
        sd_event_source *retry;   /* re-enables io after running out of descriptors */
        struct waiting *wait_head; /* oldest first (all share one timeout) */
        struct waiting *wait_tail;
        sd_event_source *wait_timer; /* at the head's deadline */
        struct refusal_log {
                uint64_t window_usec; /* start of the current one-second window */
                unsigned logged;      /* lines in it */
                unsigned suppressed;  /* refusals not logged since the last line */
        } refusal_logs[REFUSAL_SLOTS]; /* by enum conn_verdict, then the PROXY reasons */
};

static uint64_t listener_now(const struct listener *l)
{
        uint64_t now = 0;
        sd_event_now(l->b->event, CLOCK_MONOTONIC, &now);
        return now;
}

/* REFUSAL_LOG_BURST lines per reason and second at most: a flood of
 * refusals must not become a flood of journal lines (the counters keep the
 * full count, and the next line says how many went unlogged). */
#define REFUSAL_LOG_BURST 10

/* May a refusal line for this slot be logged now? Logs how many were
 * not, first, under the given fields. */
static bool listener_log_allowed(struct listener *l, unsigned slot, const struct log_fields *f)
{
        struct refusal_log *rl = &l->refusal_logs[slot];
        uint64_t now = listener_now(l);

        if (now >= rl->window_usec + 1000000ULL) {
                rl->window_usec = now;
                rl->logged = 0;
        }
        if (rl->logged >= REFUSAL_LOG_BURST) {
                rl->suppressed++;
                return false;
        }
        rl->logged++;
        if (rl->suppressed) {
                log_msg(LOG_LEVEL_WARNING, f, "%u more connection%s refused for %s, not logged",
                        rl->suppressed, rl->suppressed == 1 ? "" : "s", f->reason);
                rl->suppressed = 0;
        }
        return true;
}

static void listener_log_refusal(struct listener *l, enum conn_verdict v, const struct sockaddr *sa)
{
        struct bridge *b = l->b;
        char peer[INET6_ADDRSTRLEN + 8];

        log_format_peer(peer, sizeof peer, sa);
        struct log_fields f = { .peer = peer, .reason = conn_verdict_to_string(v) };
        if (!listener_log_allowed(l, v, &f))
                return;
        switch (v) {
        case CONN_REFUSE_PER_ADDRESS:
                log_msg(LOG_LEVEL_WARNING, &f, "connection refused: %u connections from this address already "
                        "(max_connections_per_address)", conn_limits_from(b->conn_limits, sa));
                break;
        case CONN_REFUSE_MAX_HANDSHAKES:
                log_msg(LOG_LEVEL_WARNING, &f, "connection refused: %u TLS handshakes already in progress "
                        "(max_handshakes)", conn_limits_handshakes(b->conn_limits));
                break;
        default:
                log_msg(LOG_LEVEL_WARNING, &f, "connection refused: %u connections already open",
                        conn_limits_connections(b->conn_limits));
                break;
        }
}

static void waiting_free(struct waiting *w, bool close_fd)
{
        struct listener *l = w->l;

        sd_event_source_disable_unref(w->io);
        if (w->waiting_next)
                w->waiting_next->waiting_prev = w->waiting_prev;
        else
                l->wait_tail = w->waiting_prev;
        LIST_REMOVE(waiting, l->wait_head, w);
        if (close_fd) {
                conn_limits_remove(l->b->conn_limits, w->fd);
                close(w->fd);
        }
        free(w);
}

static void listener_arm_wait_timer(struct listener *l)
{
        if (!l->wait_head) {
                sd_event_source_set_enabled(l->wait_timer, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(l->wait_timer, l->wait_head->deadline);
        sd_event_source_set_enabled(l->wait_timer, SD_EVENT_ONESHOT);
}

static void waiting_close(struct waiting *w, const char *reason, const char *what)
{
        char peer[INET6_ADDRSTRLEN + 8];

        log_format_peer(peer, sizeof peer, (struct sockaddr *) &w->ss);
        struct log_fields f = { .peer = peer, .reason = reason };
        log_msg(LOG_LEVEL_INFO, &f, "connection closed: %s", what);
        waiting_free(w, true);
}

static int listener_on_wait_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct listener *l = userdata;
        uint64_t now = listener_now(l);

        /* Bounded by the list, which max_handshakes bounds. */
        while (l->wait_head && l->wait_head->deadline <= now) {
                l->b->stats.closed_first_byte_timeout++;
                if (l->wait_head->want != PROXY_NONE)
                        waiting_close(l->wait_head, "first_byte_timeout",
                                      "no complete PROXY header within first_byte_timeout");
                else
                        waiting_close(l->wait_head, "first_byte_timeout", "no TLS byte within first_byte_timeout");
        }
        listener_arm_wait_timer(l);
        return 0;
}

/* Hand w's socket to a new session, as coming from ss (the device). */
static void waiting_start_session(struct waiting *w, const struct sockaddr_storage *from, socklen_t from_len)
{
        struct listener *l = w->l;
        struct sockaddr_storage ss = *from;
        socklen_t len = from_len;
        int fd = w->fd;

        waiting_free(w, false); /* removes fd from epoll before the session adds it */
        if (l->on_accept(l->ud, fd, (struct sockaddr *) &ss, len) < 0)
                conn_limits_remove(l->b->conn_limits, fd); /* the callee closed fd */
        listener_arm_wait_timer(l);
}

/* Refuse w over its PROXY header (or the lack of one), logged with the
 * address the connection came from (the balancer, or whoever it is). */
static void waiting_refuse_proxy(struct waiting *w, unsigned slot, const char *what, const char *detail)
{
        struct listener *l = w->l;
        char peer[INET6_ADDRSTRLEN + 8];

        log_format_peer(peer, sizeof peer, (struct sockaddr *) &w->ss);
        struct log_fields f = {
                .peer = peer,
                .reason = slot == REFUSAL_PROXY_UNEXPECTED ? "proxy_unexpected" : "proxy_header",
        };
        if (slot == REFUSAL_PROXY_UNEXPECTED)
                l->b->stats.refused_proxy_unexpected++;
        else
                l->b->stats.refused_proxy_header++;
        if (listener_log_allowed(l, slot, &f))
                log_msg(LOG_LEVEL_WARNING, &f, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
        waiting_free(w, true);
        listener_arm_wait_timer(l);
}

/* proxy_protocol = v1|v2: read the header, then start the session with
 * the device's address. Called on every EPOLLIN (edge-triggered: an
 * incomplete header waits for more bytes, or for first_byte_timeout). */
static void waiting_read_proxy(struct waiting *w)
{
        struct listener *l = w->l;
        struct bridge *b = l->b;
        uint8_t buf[PROXY_HEADER_MAX];
        struct proxy_header h;
        const char *why = NULL;
        ssize_t n;
        int r;

        n = recv(w->fd, buf, sizeof buf, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
        if (n < 0) {
                waiting_refuse_proxy(w, REFUSAL_PROXY_HEADER, "connection closed before its PROXY header",
                                     strerror(errno));
                return;
        }
        if (n == 0) {
                /* Nothing at all: a port probe, or the balancer's plain TCP
                 * health check. Not worth a line each time. */
                char peer[INET6_ADDRSTRLEN + 8];
                log_format_peer(peer, sizeof peer, (struct sockaddr *) &w->ss);
                struct log_fields f = { .peer = peer, .reason = "no data" };
                log_msg(LOG_LEVEL_DEBUG, &f, "connection closed before its PROXY header (a probe or health check)");
                waiting_free(w, true);
                listener_arm_wait_timer(l);
                return;
        }
        r = proxy_parse(buf, (size_t) n, &h, &why);
        if (r == 0)
                return;         /* more to come; the deadline still runs */
        if (r < 0) {
                waiting_refuse_proxy(w, REFUSAL_PROXY_HEADER,
                                     "connection refused: no valid PROXY header ([listener] proxy_protocol is on)",
                                     why ? why : "invalid");
                return;
        }
        if (h.version != w->want) {
                waiting_refuse_proxy(w, REFUSAL_PROXY_HEADER,
                                     h.version == PROXY_V1 ? "connection refused: a PROXY v1 header"
                                                           : "connection refused: a PROXY v2 header",
                                     w->want == PROXY_V1 ? "[listener] proxy_protocol = v1"
                                                         : "[listener] proxy_protocol = v2");
                return;
        }
        /* Exactly the header: what follows is the device's TLS. */
        ssize_t m = recv(w->fd, buf, (size_t) r, 0);
        if (m != r) {
                waiting_refuse_proxy(w, REFUSAL_PROXY_HEADER, "cannot consume the PROXY header", NULL);
                return;
        }
        b->stats.proxy_headers++;
        if (h.local) {
                /* The balancer's own connection (a health check): its own
                 * address stands, and so do the limits it was admitted under. */
                waiting_start_session(w, &w->ss, w->len);
                return;
        }

        /* The per-address limit is the device's, now that it is known. */
        unsigned max = b->cfg.limits.max_connections_per_address;
        if (max && conn_limits_from(b->conn_limits, (struct sockaddr *) &h.src) >= max) {
                b->stats.refused_per_address++;
                listener_log_refusal(l, CONN_REFUSE_PER_ADDRESS, (struct sockaddr *) &h.src);
                waiting_free(w, true);
                listener_arm_wait_timer(l);
                return;
        }
        if (conn_limits_readdress(b->conn_limits, w->fd, (struct sockaddr *) &h.src) < 0) {
                waiting_free(w, true);
                listener_arm_wait_timer(l);
                return;
        }
        if (log_enabled(LOG_LEVEL_DEBUG)) {
                char dev[INET6_ADDRSTRLEN + 8], via[INET6_ADDRSTRLEN + 8];
                log_format_peer(dev, sizeof dev, (struct sockaddr *) &h.src);
                log_format_peer(via, sizeof via, (struct sockaddr *) &w->ss);
                struct log_fields f = { .peer = dev };
                log_msg(LOG_LEVEL_DEBUG, &f, "PROXY %s header: device %s via balancer %s",
                        proxy_version_to_string(h.version), dev, via);
        }
        waiting_start_session(w, &h.src, h.src_len);
}

/* The first byte (or EOF, or an error) is there: from now on it is a TLS
 * connection like any other, and the session runs the handshake under
 * handshake_timeout. It stays a handshake in progress for conn_limits
 * until the session reports the handshake done. */
static int waiting_on_io(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct waiting *w = userdata;
        uint8_t first[16];
        ssize_t n;

        if (w->want != PROXY_NONE) {
                waiting_read_proxy(w);
                return 0;
        }
        /* A balancer sending PROXY headers to a listener that expects
         * none would fail the TLS handshake with a puzzling error; say
         * what it is instead. */
        n = recv(fd, first, sizeof first, MSG_PEEK);
        if (n > 0 && proxy_detect(first, (size_t) n) != PROXY_NONE) {
                waiting_refuse_proxy(w, REFUSAL_PROXY_UNEXPECTED,
                                     "connection refused: it starts with a PROXY protocol header, but "
                                     "[listener] proxy_protocol = off (a balancer with send-proxy?)", NULL);
                return 0;
        }
        waiting_start_session(w, &w->ss, w->len);
        return 0;
}

/* Close the socket that has waited longest for its first byte, in any
 * listener, to make room for a new connection. Returns true if one was
 * closed. An idle socket sends nothing, so closing the oldest costs a
 * device nothing: it would have sent its ClientHello long ago. */
static bool listener_evict_idle(struct bridge *b)
{
        struct waiting *oldest = NULL;

        for (size_t i = 0; i < b->n_listeners; i++) {
                struct waiting *w = b->listeners[i] ? b->listeners[i]->wait_head : NULL;
                if (w && (!oldest || w->deadline < oldest->deadline))
                        oldest = w;
        }
        if (!oldest)
                return false;
        struct listener *l = oldest->l;
        b->stats.closed_idle_evicted++;
        waiting_close(oldest, "max_handshakes", "no TLS byte yet, and max_handshakes reached: "
                      "making room for a new connection");
        listener_arm_wait_timer(l);
        return true;
}

static struct conn_limits_config listener_limits(const struct bridge *b)
{
        return (struct conn_limits_config){
                .max_connections = b->cfg.limits.max_connections,
                .max_handshakes = b->cfg.limits.max_handshakes,
                .max_per_address = b->cfg.limits.max_connections_per_address,
        };
}

/* Admit cfd or close it; returns nothing, logs and counts a refusal. */
static void listener_admit(struct listener *l, int cfd, const struct sockaddr_storage *ss, socklen_t len)
{
        struct bridge *b = l->b;
        struct conn_limits_config c = listener_limits(b);
        enum proxy_version want = b->cfg.listener.proxy_protocol;
        enum conn_verdict v;
        struct waiting *w;

        if (want != PROXY_NONE) {
                /* Only the balancer may speak first with a header: from
                 * anyone else it would be a forged address. */
                if (!proxy_net_match(b->cfg.listener.proxy_from, b->cfg.listener.n_proxy_from,
                                     (const struct sockaddr *) ss)) {
                        char peer[INET6_ADDRSTRLEN + 8];
                        log_format_peer(peer, sizeof peer, (const struct sockaddr *) ss);
                        struct log_fields f = { .peer = peer, .reason = "proxy_untrusted" };
                        b->stats.refused_proxy_untrusted++;
                        if (listener_log_allowed(l, REFUSAL_PROXY_UNTRUSTED, &f))
                                log_msg(LOG_LEVEL_WARNING, &f, "connection refused: [listener] proxy_protocol = %s "
                                        "and this address is not in proxy_from", proxy_version_to_string(want));
                        close(cfd);
                        return;
                }
                /* Every connection comes from the balancer: the limit per
                 * address applies to the device's, once the header told it. */
                c.max_per_address = 0;
        }
        v = conn_limits_check(b->conn_limits, &c, (const struct sockaddr *) ss);

        if (v == CONN_REFUSE_MAX_HANDSHAKES && listener_evict_idle(b))
                v = conn_limits_check(b->conn_limits, &c, (const struct sockaddr *) ss);
        if (v != CONN_ADMIT) {
                switch (v) {
                case CONN_REFUSE_PER_ADDRESS:
                        b->stats.refused_per_address++;
                        break;
                case CONN_REFUSE_MAX_HANDSHAKES:
                        b->stats.refused_max_handshakes++;
                        break;
                default:
                        b->stats.refused_max_connections++;
                        break;
                }
                listener_log_refusal(l, v, (const struct sockaddr *) ss);
                close(cfd);
                return;
        }
        if (conn_limits_add(b->conn_limits, cfd, (const struct sockaddr *) ss) < 0) {
                close(cfd);
                return;
        }
        int one = 1;
        (void) setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

        w = calloc(1, sizeof *w);
        if (!w)
                goto fail;
        w->l = l;
        w->fd = cfd;
        w->want = want;
        memcpy(&w->ss, ss, len);
        w->len = len;
        {
                unsigned t = b->cfg.listener.first_byte_timeout;
                if (t == 0 || t > b->cfg.listener.handshake_timeout)
                        t = b->cfg.listener.handshake_timeout;
                w->deadline = listener_now(l) + (uint64_t) t * 1000000ULL;
        }
        /* Edge-triggered while a header is expected: it is peeked, and a
         * partial one stays in the socket until the rest arrives. */
        if (sd_event_add_io(b->event, &w->io, cfd, want != PROXY_NONE ? EPOLLIN | EPOLLET : EPOLLIN,
                            waiting_on_io, w) < 0) {
                free(w);
                goto fail;
        }
        /* Append: deadlines only grow, so the list stays sorted. */
        w->waiting_prev = l->wait_tail;
        w->waiting_next = NULL;
        if (l->wait_tail)
                l->wait_tail->waiting_next = w;
        else
                l->wait_head = w;
        l->wait_tail = w;
        if (l->wait_head == w)
                listener_arm_wait_timer(l);
        return;
fail:
        conn_limits_remove(b->conn_limits, cfd);
        close(cfd);
}

static int listener_on_retry(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct listener *l = userdata;
        sd_event_source_set_enabled(l->io, SD_EVENT_ON);
        return 0;
}

static int listener_on_accept(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct listener *l = userdata;
        struct bridge *b = l->b;

        /* Bounded: at most 64 accepts per wake-up, so a connection storm
         * cannot starve the devices already connected. */
        for (int i = 0; i < 64; i++) {
                struct sockaddr_storage ss;
                socklen_t len = sizeof ss;
                int cfd = accept4(fd, (struct sockaddr *) &ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                return 0;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                                /* The connection stays in the backlog and the
                                 * socket stays readable: level-triggered, that
                                 * would spin. Pause accepting for 200 ms. */
                                log_warning("accept: %s (raise LimitNOFILE= or lower max_connections); "
                                            "not accepting for 200 ms", strerror(errno));
                                b->stats.refused_accept_errors++;
                                sd_event_source_set_enabled(l->io, SD_EVENT_OFF);
                                uint64_t now = 0;
                                sd_event_now(b->event, CLOCK_MONOTONIC, &now);
                                if (!l->retry && sd_event_add_time(b->event, &l->retry, CLOCK_MONOTONIC, now + 200000,
                                                                   50000, listener_on_retry, l) < 0) {
                                        /* No timer: better to spin than to stop listening. */
                                        sd_event_source_set_enabled(l->io, SD_EVENT_ON);
                                        return 0;
                                }
                                sd_event_source_set_time(l->retry, now + 200000);
                                sd_event_source_set_enabled(l->retry, SD_EVENT_ONESHOT);
                                return 0;
                        }
                        log_warning("accept: %s", strerror(errno));
                        return 0;
                }
                b->stats.connections_accepted++;
                listener_admit(l, cfd, &ss, len);
        }
        return 0;
}

int listener_new(struct bridge *b, const char *address, uint16_t port, listener_accept_fn on_accept, void *ud,
                 struct listener **out)
{
        struct sockaddr_storage ss = { 0 };
        socklen_t len;
        struct listener *l;
        int fd, r, one = 1;

        if (inet_pton(AF_INET6, address, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(port);
                len = sizeof *in6;
        } else if (inet_pton(AF_INET, address, &((struct sockaddr_in *) &ss)->sin_addr) == 1) {
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                in->sin_family = AF_INET;
                in->sin_port = htons(port);
                len = sizeof *in;
        } else {
                log_error("[listener] bind_address: \"%s\" is not an IPv4 or IPv6 address", address);
                return -EINVAL;
        }

        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                log_error("socket(%s): %s", address, strerror(errno));
                return r;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ss.ss_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, 128) < 0) {
                r = -errno;
                log_error("cannot listen on %s port %u: %s", address, port, strerror(errno));
                close(fd);
                return r;
        }

        l = calloc(1, sizeof *l);
        if (!l) {
                close(fd);
                return -ENOMEM;
        }
        l->b = b;
        l->on_accept = on_accept;
        l->ud = ud;
        l->fd = fd;
        len = sizeof ss;
        getsockname(fd, (struct sockaddr *) &ss, &len);
        l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                 : ((struct sockaddr_in *) &ss)->sin_port);
        r = sd_event_add_io(b->event, &l->io, fd, EPOLLIN, listener_on_accept, l);
        if (r < 0) {
                listener_free(l);
                return r;
        }
        r = sd_event_add_time(b->event, &l->wait_timer, CLOCK_MONOTONIC, 0, 100000,
                              listener_on_wait_timer, l);
        if (r < 0) {
                listener_free(l);
                return r;
        }
        sd_event_source_set_enabled(l->wait_timer, SD_EVENT_OFF);
        *out = l;
        return 0;
}

uint16_t listener_port(const struct listener *l)
{
        return l->port;
}

void listener_free(struct listener *l)
{
        if (!l)
                return;
        while (l->wait_head)
                waiting_free(l->wait_head, true);
        sd_event_source_disable_unref(l->wait_timer);
        sd_event_source_disable_unref(l->io);
        sd_event_source_disable_unref(l->retry);
        if (l->fd >= 0)
                close(l->fd);
        free(l);
}
