/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

/*
 * dialer — where [upstream] points, and a non-blocking connect(2) to each
 * of its addresses in turn: TCP (IPv4/IPv6, optional bind_address,
 * TCP_NODELAY) or a Unix socket (host = an absolute path).
 *
 * [upstream] host may list several hosts (a clustered broker without a
 * balancer of its own): they are tried in the list's order, starting at a
 * host the caller chooses (the one that worked last, see uplink.c), each
 * host with all of its addresses before the next host.
 */

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "config.h"

/* Addresses used of each host name (a name with IPv6 and IPv4 ones, say). */
#define DIALER_MAX_ADDRS 4

struct dialer_addr {
        struct sockaddr_storage sa;
        socklen_t len;
        uint8_t host;                   /* index into [upstream] host */
};

struct dialer {
        struct dialer_addr *addr;       /* owned; NULL after dialer_done */
        char *names;                    /* owned: each host's TLS name, NUL-separated; "" = none */
        unsigned n, next;
        unsigned host;                  /* host of the address being dialled */
        struct sockaddr_storage bind;
        socklen_t bind_len;
        /* The address being dialled: "192.0.2.1:8883", "[::1]:8883" or the
         * socket's path, for log lines and reasons. */
        char peer[sizeof(((struct sockaddr_un *) 0)->sun_path) + 8];
};

/*
 * Fill d from cfg, starting with host number first_host (modulo the
 * number of hosts). An IP literal is used as it is; a host name is
 * resolved with getaddrinfo(), which blocks for as long as the resolver
 * takes (once per connect, for every host listed). A host that does not
 * resolve is skipped. Returns 0, or a negative errno with a reason naming
 * the setting in why when no host gave an address. Free with dialer_done.
 */
int dialer_init(struct dialer *d, const struct config_upstream *cfg, unsigned first_host, char *why,
                size_t whylen);

/*
 * Open a non-blocking socket to the next address and start connect(2);
 * an address that fails at once is skipped. Returns the new descriptor
 * (the caller owns it; completion shows as EPOLLOUT, then SO_ERROR), or a
 * negative errno once no address is left: why then says why the last
 * one tried here failed (untouched if none was left to try).
 */
int dialer_next(struct dialer *d, char *why, size_t whylen);

/*
 * A Unix listener whose queue is full refuses connect(2) at once with
 * EAGAIN, where TCP would queue the SYN (mosquitto listens on its Unix
 * socket with a short queue, so a burst of devices meets it): true when r,
 * from dialer_next or dialer_again, was that, and the same address is
 * worth dialling again shortly.
 */
bool dialer_queue_full(const struct dialer *d, int r);

/* Dial the address dialer_next tried last once more. Returns what
 * dialer_next returns (-EHOSTUNREACH when none was tried). */
int dialer_again(struct dialer *d, char *why, size_t whylen);

/* The name the broker's certificate must carry for the address being
 * dialled ([upstream] server_name, or that host's own name); NULL for a
 * Unix socket or after dialer_done. */
const char *dialer_server_name(const struct dialer *d);

/* Free the address list; peer and host stay for log lines. NULL-safe,
 * idempotent. */
void dialer_done(struct dialer *d);
