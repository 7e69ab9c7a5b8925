/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * listener — one bound TCP socket for devices. Accepts, applies
 * max_connections (an extra connection is accepted and closed at once, with
 * a log line and a counter, rather than left waiting in the backlog), and
 * hands each socket to a new session.
 */

#include <stdint.h>

struct bridge;
struct listener;

/* Bind address:port (IPv4 or IPv6 literal; "::" is IPv6-only so that
 * "0.0.0.0 ::" can be configured side by side) and start accepting.
 * Returns 0 and *out, or a negative errno after logging why. */
int listener_new(struct bridge *b, const char *address, uint16_t port, struct listener **out);

/* The port actually bound (useful with port 0 in tests). */
uint16_t listener_port(const struct listener *l);

/* Stop accepting and close the socket. NULL-safe. */
void listener_free(struct listener *l);
