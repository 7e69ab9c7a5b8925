/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * metrics — the bridge's counters as a Prometheus text-format endpoint
 * (exposition format 0.0.4), and the person-readable --status built from
 * the same text.
 *
 * The server is a deliberately tiny HTTP/1.0 responder on the daemon's
 * sd-event loop: GET /metrics only, one request per connection, request
 * at most METRICS_MAX_REQUEST bytes, which must arrive within
 * METRICS_READ_TIMEOUT_USEC of the accept; the response then gets
 * METRICS_TIMEOUT_USEC to be read. At most METRICS_MAX_CLIENTS connections
 * at once: when a new one comes with every slot taken, the oldest
 * connection still waiting for its request is closed to make room, so
 * idle local connections cannot stop a real scrape (issue 12). It has no
 * authentication: it binds to 127.0.0.1 unless told otherwise.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct bridge;
struct metrics;

#define METRICS_MAX_REQUEST 2048
#define METRICS_MAX_CLIENTS 64
#define METRICS_READ_TIMEOUT_USEC (2 * 1000 * 1000ULL)
#define METRICS_TIMEOUT_USEC (5 * 1000 * 1000ULL)

/* Listen on address:port (IPv4/IPv6 literal; port 0 = any, see
 * metrics_port) and serve b's counters. Returns 0 and *out, or a negative
 * errno after logging why. */
int metrics_new(struct bridge *b, const char *address, uint16_t port, struct metrics **out);

/* Stop listening and drop every open scrape. NULL-safe. */
void metrics_free(struct metrics *m);

/* The port actually bound. */
uint16_t metrics_port(const struct metrics *m);

/* The exposition text for b, malloc'ed and NUL-terminated, in *out.
 * Returns 0 or -ENOMEM. */
int metrics_render(const struct bridge *b, char **out, size_t *len);

/*
 * --status: GET /metrics from address:port (a wildcard address means the
 * loopback of its family) with a timeout, and print a summary for a person
 * to f, then the device list of GET /status; with json, only GET
 * /status.json as it comes. Returns 0; -ECONNREFUSED and friends when the daemon cannot be
 * reached; -EPROTO on a reply that is not ours. Messages go to stderr.
 */
int metrics_print_status(FILE *f, const char *address, uint16_t port, bool json);
