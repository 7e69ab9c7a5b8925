/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dialer.h"
#include "log.h"

static int dialer_bind_address(struct dialer *d, const char *addr, char *why, size_t whylen)
{
        struct sockaddr_in *sin = (struct sockaddr_in *) &d->bind;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &d->bind;

        if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
                sin->sin_family = AF_INET;
                d->bind_len = sizeof *sin;
        } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
                sin6->sin6_family = AF_INET6;
                d->bind_len = sizeof *sin6;
        } else {
                snprintf(why, whylen, "[upstream] bind_address: \"%s\" is not an IP address", addr);
                return -EINVAL;
        }
        return 0;
}

int dialer_init(struct dialer *d, const struct config_upstream *cfg, char *why, size_t whylen)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL;
        char port[8];
        int r;

        memset(d, 0, sizeof *d);
        if (config_upstream_is_socket(cfg)) {
                struct sockaddr_un *sun = (struct sockaddr_un *) &d->addr[0];

                if (strlen(cfg->host) >= sizeof sun->sun_path) {
                        snprintf(why, whylen, "[upstream] host: Unix socket path longer than %zu bytes",
                                 sizeof sun->sun_path - 1);
                        return -ENAMETOOLONG;
                }
                sun->sun_family = AF_UNIX;
                strcpy(sun->sun_path, cfg->host);
                d->addr_len[0] = (socklen_t) sizeof *sun;
                d->n = 1;
                return 0;
        }
        if (cfg->bind_address) {
                r = dialer_bind_address(d, cfg->bind_address, why, whylen);
                if (r < 0)
                        return r;
                hints.ai_family = d->bind.ss_family;    /* only what we can bind for */
        }
        snprintf(port, sizeof port, "%u", (unsigned) cfg->port);
        r = getaddrinfo(cfg->host, port, &hints, &res);
        if (r != 0) {
                snprintf(why, whylen, "cannot resolve upstream host \"%s\"%s: %s", cfg->host,
                         cfg->bind_address ? " (in the family of [upstream] bind_address)" : "",
                         r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
                return -EHOSTUNREACH;
        }
        for (struct addrinfo *ai = res; ai && d->n < DIALER_MAX_ADDRS; ai = ai->ai_next) {
                if (ai->ai_addrlen > sizeof d->addr[0])
                        continue;
                memcpy(&d->addr[d->n], ai->ai_addr, ai->ai_addrlen);
                d->addr_len[d->n++] = ai->ai_addrlen;
        }
        freeaddrinfo(res);
        if (d->n == 0) {
                snprintf(why, whylen, "upstream host \"%s\" has no usable address", cfg->host);
                return -EHOSTUNREACH;
        }
        return 0;
}

static int dialer_open(struct dialer *d, unsigned i, char *why, size_t whylen)
{
        const struct sockaddr *sa = (const struct sockaddr *) &d->addr[i];
        int fd, e, one = 1;

        if (sa->sa_family == AF_UNIX)
                snprintf(d->peer, sizeof d->peer, "%s", ((const struct sockaddr_un *) sa)->sun_path);
        else
                log_format_peer(d->peer, sizeof d->peer, sa);

        fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                e = errno;
                snprintf(why, whylen, "cannot connect to %s: socket: %s", d->peer, strerror(e));
                return -e;
        }
        if (sa->sa_family != AF_UNIX) {
                /* MQTT packets are small and an ack is latency: no Nagle. */
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                if (d->bind_len && bind(fd, (const struct sockaddr *) &d->bind, d->bind_len) < 0) {
                        e = errno;
                        snprintf(why, whylen, "cannot bind to [upstream] bind_address for %s: %s", d->peer,
                                 strerror(e));
                        close(fd);
                        return -e;
                }
        }
        if (connect(fd, sa, d->addr_len[i]) < 0 && errno != EINPROGRESS) {
                e = errno;
                /* A Unix socket says EAGAIN when the listen queue is full. */
                snprintf(why, whylen, "cannot connect to %s: %s", d->peer,
                         e == EAGAIN ? "the broker's listen queue is full" : strerror(e));
                close(fd);
                return -e;
        }
        return fd;
}

int dialer_next(struct dialer *d, char *why, size_t whylen)
{
        int r = -EHOSTUNREACH;

        while (d->next < d->n) {
                r = dialer_open(d, d->next++, why, whylen);
                if (r >= 0)
                        return r;
        }
        return r;
}
