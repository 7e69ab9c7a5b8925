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
#include "listener.h"
#include "log.h"
#include "session.h"

struct listener {
        struct bridge *b;
        int fd;
        uint16_t port;
        sd_event_source *io;
        sd_event_source *retry;   /* re-enables io after running out of descriptors */
};

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
                if (b->cfg.limits.max_connections && b->n_sessions >= b->cfg.limits.max_connections) {
                        char peer[INET6_ADDRSTRLEN + 8];
                        log_format_peer(peer, sizeof peer, (struct sockaddr *) &ss);
                        struct log_fields f = { .peer = peer, .reason = "max_connections" };
                        b->stats.refused_max_connections++;
                        log_msg(LOG_LEVEL_WARNING, &f, "connection refused: %u connections already open",
                                b->n_sessions);
                        close(cfd);
                        continue;
                }
                int one = 1;
                (void) setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                (void) session_new(b, cfd, (struct sockaddr *) &ss, len);
        }
        return 0;
}

int listener_new(struct bridge *b, const char *address, uint16_t port, struct listener **out)
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
        sd_event_source_disable_unref(l->io);
        sd_event_source_disable_unref(l->retry);
        if (l->fd >= 0)
                close(l->fd);
        free(l);
}
