/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * listener — one bound TCP socket for devices. Accepts, applies
 * max_connections, max_handshakes and max_connections_per_address
 * (conn_limits.h; an extra connection is accepted and closed at once, with
 * a log line and a counter, rather than left waiting in the backlog),
 * holds each new socket without TLS state until its first byte arrives
 * (first_byte_timeout), and then hands it to a new session.
 *
 * The session reports back to b->conn_limits, keyed by its fd:
 * conn_limits_handshake_done() once the TLS handshake succeeded, and
 * conn_limits_remove() before it closes the fd.
 */

#include <stdint.h>
#include <sys/socket.h>

struct bridge;
struct listener;

/* A connection that passed the limits (and its PROXY header): the callee
 * takes fd and returns 0, or a negative errno after closing it. peer is
 * the device's address (the PROXY header's behind a balancer). */
typedef int (*listener_accept_fn)(void *ud, int fd, const struct sockaddr *peer, socklen_t peer_len);

/* Bind address:port (IPv4 or IPv6 literal; "::" is IPv6-only so that
 * "0.0.0.0 ::" can be configured side by side) and start accepting; each
 * admitted connection goes to on_accept(ud, ...). Returns 0 and *out, or a
 * negative errno after logging why. */
int listener_new(struct bridge *b, const char *address, uint16_t port, listener_accept_fn on_accept, void *ud,
                 struct listener **out);

/* The port actually bound (useful with port 0 in tests). */
uint16_t listener_port(const struct listener *l);

/* Stop accepting and close the socket. NULL-safe. */
void listener_free(struct listener *l);
