/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Append the addresses of one host; returns how many, or a negative errno
 * with why set. */
static int dialer_resolve(struct dialer *d, const struct config_upstream *cfg, unsigned h, char *why,
                          size_t whylen)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL;
        const struct config_upstream_host *host = &cfg->hosts[h];
        char port[8];
        int r, added = 0;

        if (d->bind_len)
                hints.ai_family = d->bind.ss_family;    /* only what we can bind for */
        snprintf(port, sizeof port, "%u", (unsigned) host->port);
        r = getaddrinfo(host->name, port, &hints, &res);
        if (r != 0) {
                snprintf(why, whylen, "cannot resolve upstream host \"%s\"%s: %s", host->name,
                         cfg->bind_address ? " (in the family of [upstream] bind_address)" : "",
                         r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
                return -EHOSTUNREACH;
        }
        for (struct addrinfo *ai = res; ai && added < DIALER_MAX_ADDRS; ai = ai->ai_next) {
                if (ai->ai_addrlen > sizeof d->addr[0].sa)
                        continue;
                memcpy(&d->addr[d->n].sa, ai->ai_addr, ai->ai_addrlen);
                d->addr[d->n].len = ai->ai_addrlen;
                d->addr[d->n].host = (uint8_t) h;
                d->n++;
                added++;
        }
        freeaddrinfo(res);
        if (added == 0) {
                snprintf(why, whylen, "upstream host \"%s\" has no usable address", host->name);
                return -EHOSTUNREACH;
        }
        return added;
}

int dialer_init(struct dialer *d, const struct config_upstream *cfg, unsigned first_host, char *why,
                size_t whylen)
{
        size_t names_len = 0;
        unsigned n_hosts = (unsigned) cfg->n_hosts;
        int r;

        memset(d, 0, sizeof *d);
        if (n_hosts == 0 || n_hosts > CONFIG_MAX_HOSTS) {
                snprintf(why, whylen, "[upstream] host: no host");
                return -EINVAL;
        }
        for (unsigned i = 0; i < n_hosts; i++)
                names_len += (cfg->hosts[i].server_name ? strlen(cfg->hosts[i].server_name) : 0) + 1;
        d->addr = calloc((size_t) n_hosts * DIALER_MAX_ADDRS, sizeof *d->addr);
        d->names = malloc(names_len);
        if (!d->addr || !d->names) {
                dialer_done(d);
                snprintf(why, whylen, "out of memory");
                return -ENOMEM;
        }
        for (unsigned i = 0, at = 0; i < n_hosts; i++) {
                const char *sn = cfg->hosts[i].server_name ? cfg->hosts[i].server_name : "";
                memcpy(d->names + at, sn, strlen(sn) + 1);
                at += (unsigned) strlen(sn) + 1;
        }

        if (config_upstream_is_socket(cfg)) {
                struct sockaddr_un *sun = (struct sockaddr_un *) &d->addr[0].sa;

                if (strlen(cfg->host) >= sizeof sun->sun_path) {
                        snprintf(why, whylen, "[upstream] host: Unix socket path longer than %zu bytes",
                                 sizeof sun->sun_path - 1);
                        dialer_done(d);
                        return -ENAMETOOLONG;
                }
                sun->sun_family = AF_UNIX;
                strcpy(sun->sun_path, cfg->host);
                d->addr[0].len = (socklen_t) sizeof *sun;
                d->n = 1;
                return 0;
        }
        if (cfg->bind_address) {
                r = dialer_bind_address(d, cfg->bind_address, why, whylen);
                if (r < 0) {
                        dialer_done(d);
                        return r;
                }
        }
        /* From first_host round the list: the host that worked last goes
         * first, the others keep their order after it. */
        for (unsigned k = 0; k < n_hosts; k++)
                (void) dialer_resolve(d, cfg, (first_host + k) % n_hosts, why, whylen);
        if (d->n == 0) {
                dialer_done(d);
                return -EHOSTUNREACH;
        }
        d->host = d->addr[0].host;
        return 0;
}

const char *dialer_server_name(const struct dialer *d)
{
        const char *p = d->names;

        if (!p || (d->n && d->addr && d->addr[0].sa.ss_family == AF_UNIX))
                return NULL;
        for (unsigned i = 0; i < d->host; i++)
                p += strlen(p) + 1;
        return *p ? p : NULL;
}

void dialer_done(struct dialer *d)
{
        if (!d)
                return;
        free(d->addr);
        free(d->names);
        d->addr = NULL;
        d->names = NULL;
        d->n = d->next = 0;
}

static int dialer_open(struct dialer *d, unsigned i, char *why, size_t whylen)
{
        const struct sockaddr *sa = (const struct sockaddr *) &d->addr[i].sa;
        int fd, e, one = 1;

        d->host = d->addr[i].host;
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
        if (connect(fd, sa, d->addr[i].len) < 0 && errno != EINPROGRESS) {
                e = errno;
                /* A Unix socket says EAGAIN when the listen queue is full. */
                snprintf(why, whylen, "cannot connect to %s: %s", d->peer,
                         e == EAGAIN ? "the broker's listen queue is full" : strerror(e));
                close(fd);
                return -e;
        }
        return fd;
}

bool dialer_queue_full(const struct dialer *d, int r)
{
        return r == -EAGAIN && d->addr && d->next > 0 && d->addr[d->next - 1].sa.ss_family == AF_UNIX;
}

int dialer_again(struct dialer *d, char *why, size_t whylen)
{
        if (!d->addr || d->next == 0)
                return -EHOSTUNREACH;
        return dialer_open(d, d->next - 1, why, whylen);
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
