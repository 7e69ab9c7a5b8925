/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * bridge — the daemon's state: configuration, TLS contexts, listeners,
 * device sessions, upstream pool, counters. One per process, driven by one
 * sd-event loop.
 */

#include <stdbool.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <systemd/sd-event.h>

#include "config.h"

struct session;
struct listener;
struct upstream_pool;

/* Counters, for the status line and (later) the metrics endpoint. */
struct bridge_stats {
        uint64_t connections_accepted;
        uint64_t refused_max_connections;
        uint64_t handshakes_full;
        uint64_t handshakes_resumed;
        uint64_t handshakes_failed;
        uint64_t msgs_from_devices[3];   /* by QoS */
        uint64_t msgs_to_devices[3];
        uint64_t bytes_from_devices;
        uint64_t bytes_to_devices;
        uint64_t msgs_dropped;           /* queue full or not deliverable */
        uint64_t publishes_denied;       /* outside the mountpoint */
        uint64_t protocol_errors;
        uint64_t keepalive_timeouts;
};

struct bridge {
        sd_event *event;
        struct config cfg;
        SSL_CTX *device_ctx;
        struct upstream_pool *upstreams;
        struct listener *listeners[CONFIG_MAX_BIND];
        size_t n_listeners;
        struct session *sessions;    /* every live session */
        struct session *reap;        /* closed, to be freed outside callbacks */
        sd_event_source *reaper;
        sd_event_source *status_timer;
        unsigned n_sessions;
        unsigned n_devices;          /* sessions past CONNACK 0 */
        uint32_t nonce;              /* for generated client ids */
        struct bridge_stats stats;
        bool stopping;
};

/* Build everything from cfg (moved into the bridge: the caller's copy is
 * zeroed) and start listening. Returns 0, or a negative errno after
 * logging what failed. */
int bridge_start(struct bridge *b, sd_event *event, struct config *cfg);

/* Stop accepting, close every session (devices get close_notify; upstream
 * clients are cut without DISCONNECT so wills fire) and free all. */
void bridge_stop(struct bridge *b);

/* Schedule the reaper (sessions put on b->reap get freed next turn). */
void bridge_schedule_reap(struct bridge *b);

/* Push STATUS= to systemd (devices connected, upstream state). */
void bridge_notify_status(struct bridge *b);
