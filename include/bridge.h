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
struct uplink_pool;
struct replayer;
struct metrics;
struct conn_limits;
struct inventory;

/* CONNACK return codes (MQTT 3.1.1 §3.2.2.3), to count refusals by. */
#define BRIDGE_CONNACK_CODES 6

/*
 * Counters, for the status line and the metrics endpoint (metrics.c turns
 * them into Prometheus names). Each counts up from 0 at start; a reload
 * does not reset them.
 */
struct bridge_stats {
        uint64_t connections_accepted;
        uint64_t refused_max_connections;
        uint64_t refused_max_handshakes;   /* handshakes in progress at max_handshakes */
        uint64_t refused_per_address;      /* over max_connections_per_address */
        uint64_t closed_first_byte_timeout; /* no TLS byte within first_byte_timeout */
        uint64_t closed_idle_evicted;      /* no TLS byte yet, closed to make room (max_handshakes) */
        uint64_t refused_accept_errors;  /* accept() failed: out of descriptors or memory */
        uint64_t proxy_headers;            /* PROXY protocol headers accepted */
        uint64_t refused_proxy_untrusted;  /* proxy_protocol on, peer not in proxy_from */
        uint64_t refused_proxy_header;     /* proxy_protocol on, header missing or invalid */
        uint64_t refused_proxy_unexpected; /* proxy_protocol off, a PROXY header came */
        uint64_t refused_connack[BRIDGE_CONNACK_CODES]; /* by CONNACK return code 1..5 sent to refuse */
        uint64_t handshakes_full;
        uint64_t handshakes_resumed;
        uint64_t handshakes_failed;              /* all failures, whatever the reason */
        uint64_t handshakes_failed_certificate;  /* of those: client certificate not accepted */
        uint64_t handshakes_failed_timeout;      /* of those: handshake_timeout expired */
        uint64_t msgs_from_devices[3];   /* by QoS */
        uint64_t msgs_to_devices[3];
        uint64_t bytes_from_devices;     /* MQTT bytes (TLS plaintext), every packet */
        uint64_t bytes_to_devices;
        uint64_t payload_bytes_from_devices[3]; /* PUBLISH payload bytes, by QoS */
        uint64_t payload_bytes_to_devices[3];
        uint64_t msgs_dropped;           /* queue full or not deliverable */
        uint64_t publishes_denied;       /* outside the mountpoint */
        uint64_t protocol_errors;
        uint64_t keepalive_timeouts;
        uint64_t msgs_spooled;           /* written to the spool while upstream was away */
        uint64_t msgs_replayed;          /* sent upstream from the spool (redeliveries included) */
        uint64_t spool_messages;         /* gauge: messages held in the spool now */
        uint64_t spool_bytes;            /* gauge: bytes of the spool files now */
        uint64_t revoked_on_reload;      /* devices disconnected: certificate no longer verifies after a reload */
        uint64_t reloads_ok;
        uint64_t reloads_failed;
        bool last_reload_failed;
};

struct bridge {
        sd_event *event;
        struct config cfg;
        SSL_CTX *device_ctx;
        struct uplink_pool *uplinks;      /* every device's own MQTT link to the broker */
        struct listener *listeners[CONFIG_MAX_BIND];
        size_t n_listeners;
        struct session *sessions;    /* every live session */
        struct session *reap;        /* closed, to be freed outside callbacks */
        struct session *busy;        /* sessions holding I/O buffers (session.c's trim sweep) */
        sd_event_source *trim_timer;
        struct replayer *replayers;  /* spools sent upstream for absent devices */
        sd_event_source *reaper;
        sd_event_source *status_timer;
        struct metrics *metrics;     /* NULL when [metrics] enabled = false */
        struct conn_limits *conn_limits; /* connections, handshakes, per address (listener.c) */
        struct inventory *inventory; /* certificates seen, expiry warnings, handshake failures */
        uint64_t start_time_usec;    /* CLOCK_REALTIME, for process_start_time_seconds */
        unsigned n_sessions;
        unsigned n_devices;          /* sessions past CONNACK 0 */
        uint32_t nonce;              /* for generated client ids */
        struct bridge_stats stats;
        bool stopping;
        /* A device's topic mapped under its mountpoint, on the message path
         * (session_on_publish): one for all, handlers never nest. */
        uint8_t topic_buf[65535];
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
