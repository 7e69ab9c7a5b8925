/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * upstream — one libmosquitto client per device session, driven by the
 * daemon's sd-event loop (no libmosquitto thread, no mosquitto_loop()).
 *
 * The socket is registered with sd-event and re-registered whenever
 * libmosquitto replaces it; EPOLLOUT is asked for only while there is
 * something to write (mosquitto_want_write), and during a TLS handshake
 * only while OpenSSL itself is blocked on writing, so the loop never spins
 * on a writable socket (mosquitto issues #3745, #1507). A 1 s timer runs
 * mosquitto_loop_misc() for keepalive on every client.
 *
 * Callbacks to the owner are never made from inside libmosquitto's own
 * callbacks in a way that lets the owner free the client: libmosquitto's
 * events are recorded and delivered after its loop function has returned.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <systemd/sd-event.h>

#include "config.h"

struct mosquitto_message;
struct upstream;
struct upstream_pool;

struct upstream_callbacks {
        /* CONNACK from the broker: rc is the MQTT return code. */
        void (*on_connect)(void *ud, int rc, bool session_present);
        /* The connection ended or could not be made; why is for the log. */
        void (*on_lost)(void *ud, const char *why);
        /* A QoS 1/2 publish was acknowledged (PUBACK / PUBCOMP). */
        void (*on_publish)(void *ud, int mid);
        /* A message for one of the device's subscriptions. libmosquitto has
         * already acknowledged it upstream (PUBACK before on_message). */
        void (*on_message)(void *ud, const struct mosquitto_message *msg);
        void (*on_subscribe)(void *ud, int mid, int n, const int *granted);
        void (*on_unsubscribe)(void *ud, int mid);
        /* Everything queued was written (after upstream_backlogged() said
         * true). May be NULL. */
        void (*on_drained)(void *ud);
};

struct upstream_params {
        const char *client_id;
        const char *username;   /* NULL: none */
        const char *password;   /* NULL: none */
        bool clean_session;
        uint16_t keepalive;     /* the device's; raised to 5 s if 1..4 (libmosquitto's minimum) */
        int protocol_level;     /* 3 or 4, the device's */
        const char *will_topic; /* NULL: no will */
        const void *will_payload;
        size_t will_len;
        int will_qos;
        bool will_retain;
};

/* The pool: shared TLS context, the misc timer, every client.
 * ctx may be NULL (plain TCP / Unix socket); the pool takes a reference. */
int upstream_pool_new(sd_event *event, const struct config_upstream *cfg, SSL_CTX *ctx,
                      struct upstream_pool **out);
/* Destroy every client still open (no DISCONNECT) and the pool. NULL-safe. */
void upstream_pool_free(struct upstream_pool *p);
/* Replace the TLS context used by clients connected from now on. */
void upstream_pool_set_ctx(struct upstream_pool *p, SSL_CTX *ctx);
/* Clients currently open, and of those, connected. */
void upstream_pool_count(const struct upstream_pool *p, unsigned *open, unsigned *connected);

/*
 * Create a client and start connecting (non-blocking). Returns 0 and *out,
 * or a negative errno with why set (on failure no callback is made).
 */
int upstream_connect(struct upstream_pool *p, const struct upstream_params *params,
                     const struct upstream_callbacks *cb, void *ud,
                     struct upstream **out, const char **why);

/* Forward a PUBLISH. *mid is the libmosquitto message id for QoS > 0. */
int upstream_publish(struct upstream *u, int *mid, const char *topic, const void *payload,
                     size_t len, int qos, bool retain);
/* One SUBSCRIBE for n filters, all with the same requested qos. */
int upstream_subscribe(struct upstream *u, int *mid, int n, char *const *filters, int qos);
int upstream_unsubscribe(struct upstream *u, int *mid, int n, char *const *filters);

bool upstream_is_connected(const struct upstream *u);

/* Does libmosquitto hold bytes the socket has not taken yet? A slow
 * broker shows here first: the owner stops reading its device until
 * on_drained, so memory stays bounded (one packet per device). */
bool upstream_backlogged(struct upstream *u);

/*
 * End the client. graceful: send DISCONNECT after everything queued
 * (the broker discards the will), then close; the client lives on,
 * detached from its owner, until that is written or 5 s pass.
 * !graceful: flush what can be written now and close without DISCONNECT,
 * so the broker publishes the will (MQTT 3.1.1 §3.1.2.5).
 * Either way no callback reaches the owner afterwards. NULL-safe.
 */
void upstream_close(struct upstream *u, bool graceful);
