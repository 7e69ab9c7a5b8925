/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * conn_limits — the bookkeeping behind the listener's limits: how many
 * device connections are open, how many of them are still in the TLS
 * handshake (or have not sent their first TLS byte yet), and how many come
 * from each source address. Pure: no sockets, no clock; the listener and
 * the session tell it what happened, keyed by the connection's file
 * descriptor (unique while the connection is open).
 *
 * Why: an unauthenticated TCP socket costs an attacker nothing, so without
 * a separate cap for handshakes in progress and one per address, a few
 * idle sockets fill max_connections and lock out devices with valid
 * certificates (issue 12).
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct conn_limits;

/* The limits, as configured; 0 means unlimited for each. */
struct conn_limits_config {
        unsigned max_connections;
        unsigned max_handshakes;
        unsigned max_per_address;
};

enum conn_verdict {
        CONN_ADMIT = 0,
        CONN_REFUSE_MAX_CONNECTIONS,
        CONN_REFUSE_MAX_HANDSHAKES,
        CONN_REFUSE_PER_ADDRESS,
};

/* Make an empty table. seed keys the address hash (pass random bits, so
 * that nobody can choose addresses that all land in one bucket).
 * Returns 0 and *out (free with conn_limits_free), or -ENOMEM. */
int conn_limits_new(uint64_t seed, struct conn_limits **out);

/* Forget everything. NULL-safe. */
void conn_limits_free(struct conn_limits *cl);

/* Would one more connection from addr (AF_INET or AF_INET6; the port is
 * ignored) fit under c? Records nothing. The reasons are checked in the
 * order per address, handshakes, connections. */
enum conn_verdict conn_limits_check(const struct conn_limits *cl, const struct conn_limits_config *c,
                                    const struct sockaddr *addr);

/* Record fd as an open connection from addr, its handshake in progress.
 * Returns 0; -EEXIST if fd is already recorded; -EAFNOSUPPORT for another
 * family; -EINVAL for a negative fd; -ENOMEM. With cl NULL, records
 * nothing and returns 0. */
int conn_limits_add(struct conn_limits *cl, int fd, const struct sockaddr *addr);

/* The handshake of fd is over (it is an authenticated device now): it no
 * longer counts against max_handshakes. Idempotent; NULL-safe; an unknown
 * fd is ignored. */
void conn_limits_handshake_done(struct conn_limits *cl, int fd);

/* fd's connection turned out to come from addr (a PROXY protocol header
 * named the device behind a balancer): its count moves from the address
 * it was added with to addr, its handshake state stays. Returns 0;
 * -ENOENT for an unknown fd; -EAFNOSUPPORT, -ENOMEM (fd then no longer
 * counts at all, as after conn_limits_remove). With cl NULL, returns 0. */
int conn_limits_readdress(struct conn_limits *cl, int fd, const struct sockaddr *addr);

/* fd is being closed: it no longer counts at all. Idempotent; NULL-safe;
 * an unknown fd is ignored. Call before close(2), as the number can be
 * reused at once. */
void conn_limits_remove(struct conn_limits *cl, int fd);

/* Counts now: open connections, handshakes in progress, and connections
 * from addr's address. */
unsigned conn_limits_connections(const struct conn_limits *cl);
unsigned conn_limits_handshakes(const struct conn_limits *cl);
unsigned conn_limits_from(const struct conn_limits *cl, const struct sockaddr *addr);

/* Human-readable name of a refusal, also the metric's reason label. */
const char *conn_verdict_to_string(enum conn_verdict v);
