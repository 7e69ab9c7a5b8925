/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * dialer — where [upstream] points, and a non-blocking connect(2) to each
 * of its addresses in turn: TCP (IPv4/IPv6, optional bind_address,
 * TCP_NODELAY) or a Unix socket (host = an absolute path).
 */

#include <sys/socket.h>
#include <sys/un.h>

#include "config.h"

#define DIALER_MAX_ADDRS 4

struct dialer {
        struct sockaddr_storage addr[DIALER_MAX_ADDRS];
        socklen_t addr_len[DIALER_MAX_ADDRS];
        unsigned n, next;
        struct sockaddr_storage bind;
        socklen_t bind_len;
        /* The address being dialled: "192.0.2.1:8883", "[::1]:8883" or the
         * socket's path, for log lines and reasons. */
        char peer[sizeof(((struct sockaddr_un *) 0)->sun_path) + 8];
};

/*
 * Fill d from cfg. An IP literal is used as it is; a host name is
 * resolved with getaddrinfo(), which blocks for as long as the resolver
 * takes (once per connect). Returns 0, or a negative errno with a reason
 * naming the setting in why.
 */
int dialer_init(struct dialer *d, const struct config_upstream *cfg, char *why, size_t whylen);

/*
 * Open a non-blocking socket to the next address and start connect(2);
 * an address that fails at once is skipped. Returns the new descriptor
 * (the caller owns it; completion shows as EPOLLOUT, then SO_ERROR), or a
 * negative errno once no address is left: why then says why the last
 * one tried here failed (untouched if none was left to try).
 */
int dialer_next(struct dialer *d, char *why, size_t whylen);
