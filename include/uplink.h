/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * uplink — one device's own MQTT 3.1/3.1.1 connection to the main broker,
 * spoken with the project's codec on the daemon's sd-event loop.
 *
 * The bridge relays packets rather than re-publishing messages: the owner
 * (the device session, or a replayer) encodes whole MQTT packets straight
 * into the uplink's output buffer and receives the broker's packets parsed,
 * so acknowledgements travel end to end (DESIGN.md). Nothing here ever
 * acknowledges a broker PUBLISH by itself: the only packets the uplink
 * writes on its own are CONNECT, PINGREQ and DISCONNECT.
 *
 * Transports: TCP (IPv4/IPv6, host names resolved once per connect),
 * a Unix socket ([upstream] host = an absolute path), and TLS over TCP
 * through OpenSSL with the pool's SSL_CTX (CA verification, the SAN host /
 * IP check against server_name or host, optional client certificate).
 * The pool keeps the TLS session of the last full handshake with each
 * host, and new links to that host resume it: only a verified handshake
 * is kept, for that host and name, for an hour at most; a new context
 * (uplink_pool_set_config) forgets them all.
 * Connect, TLS handshake and CONNACK are bounded by connect_timeout.
 *
 * Keepalive (§3.1.2.10): a PINGREQ when nothing was sent for keepalive
 * seconds; the link is lost if no packet arrived within 1.5 × keepalive.
 *
 * Callbacks: made from the uplink's own event handlers only, never from
 * inside uplink_*() calls the owner makes. The owner may call any uplink
 * function from a callback, uplink_close() included: after uplink_close()
 * no callback is made any more and the memory is released once the
 * handler that is running returns.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "mqtt_codec.h"

struct uplink;
struct uplink_pool;

struct uplink_ops {
        /* The broker's CONNACK (§3.2). rc != 0: the broker refused; the
         * link is closed and freed right after this callback returns
         * (on_lost is not called): the owner forgets its pointer, and may
         * but need not call uplink_close() inside the callback. */
        void (*on_connack)(void *ud, uint8_t rc, bool session_present);
        /* A packet from the broker after CONNACK: PUBLISH, PUBACK, PUBREC,
         * PUBREL, PUBCOMP, SUBACK or UNSUBACK (PINGRESP is consumed here;
         * anything else closes the link as a protocol error). pkt points
         * into the input buffer and is valid during the call only; raw/len
         * is the whole packet as received. */
        void (*on_packet)(void *ud, const struct mqtt_packet *pkt, const uint8_t *raw, size_t len);
        /* The link could not be made, or ended (socket error, EOF, TLS
         * failure, keepalive, protocol error, connect timeout). why is a
         * human-readable reason for the log. The link is dead; the owner
         * must still call uplink_close() (it may do so inside this callback). */
        void (*on_lost)(void *ud, const char *why);
        /* The output buffer fell below the low-water mark after
         * uplink_writable() had returned false. May be NULL. */
        void (*on_writable)(void *ud);
        /* Every packet of one read has been delivered (on_packet): the
         * owner writes what they produced now, in one go (one TLS record
         * for a batch of messages), instead of once per packet. Not called
         * when the link was lost or closed meanwhile. May be NULL. */
        void (*on_input_end)(void *ud);
};

/* What goes into the CONNECT (§3.1). Strings are copied by uplink_connect. */
struct uplink_params {
        const char *client_id;          /* may be "" (clean session only) */
        const uint8_t *username;        /* NULL: none */
        size_t username_len;
        const uint8_t *password;        /* NULL: none; binary (§3.1.3.5) */
        size_t password_len;
        bool clean_session;
        uint16_t keepalive;             /* seconds, 0 = off */
        uint8_t protocol_level;         /* 3 (MQIsdp) or 4 (MQTT) */
        const char *will_topic;         /* NULL: no will */
        const void *will_payload;
        size_t will_len;
        uint8_t will_qos;
        bool will_retain;
        const char *name;               /* for log lines: the device (CN) */
};

/*
 * The pool: shared settings and TLS context for every uplink. cfg is
 * borrowed and must outlive the pool (or be replaced with
 * uplink_pool_set_config). ctx may be NULL (plain TCP or Unix socket); the
 * pool takes its own reference. Returns 0 and *out, or a negative errno.
 */
int uplink_pool_new(sd_event *event, const struct config_upstream *cfg, SSL_CTX *ctx,
                    struct uplink_pool **out);
/* Close every uplink still open (no DISCONNECT: wills fire) and free the
 * pool. No callbacks are made. NULL-safe. */
void uplink_pool_free(struct uplink_pool *p);
/* Settings and TLS context for links connected from now on (reload). cfg
 * borrowed as above; ctx referenced, and its new-session callback set to
 * the pool's. The TLS sessions kept so far are dropped. */
void uplink_pool_set_config(struct uplink_pool *p, const struct config_upstream *cfg, SSL_CTX *ctx);
/* The largest packet accepted from the broker, fixed header included
 * (0: the default, 256 KiB = [limits] max_packet_size's default). A larger
 * one ends the link with a reason. Applies to every link at once. */
void uplink_pool_set_max_packet(struct uplink_pool *p, size_t max_packet);
/* Links open, and of those, past CONNACK 0. */
void uplink_pool_count(const struct uplink_pool *p, unsigned *open, unsigned *connected);

/*
 * Start connecting (non-blocking) and send CONNECT once the transport is
 * up. Returns 0 and *out (the result comes through ops), or a negative
 * errno with a static reason in *why (no callback is made then).
 */
int uplink_connect(struct uplink_pool *p, const struct uplink_params *params,
                   const struct uplink_ops *ops, void *ud, struct uplink **out, const char **why);

/* CONNACK 0 received and the link not lost. */
bool uplink_is_connected(const struct uplink *u);

/*
 * Room for n bytes at the end of the output buffer, for the owner to
 * encode one packet into; uplink_commit(u, used) then queues the used
 * bytes (used <= n). Returns NULL when the link is not connected or on
 * ENOMEM. The pointer is valid until the next uplink call. Everything
 * committed during one event-loop turn goes out in as few writes (TLS
 * records) as possible.
 */
uint8_t *uplink_reserve(struct uplink *u, size_t n);
void uplink_commit(struct uplink *u, size_t used);

/*
 * Write now what was committed (instead of at the end of the loop turn):
 * for an owner that has just finished a batch. May report the link lost
 * (on_lost) from inside. NULL-safe; does nothing when not connected or the
 * socket is full (EPOLLOUT takes over).
 */
void uplink_push(struct uplink *u);

/* Give back the buffers an idle link holds (empty input and output
 * buffers, OpenSSL's record buffers); they come back when data moves.
 * NULL-safe. */
void uplink_trim(struct uplink *u);

/* Encode and queue an ack (PUBACK/PUBREC/PUBREL/PUBCOMP). Returns 0,
 * -ENOTCONN or -ENOMEM. */
int uplink_send_ack(struct uplink *u, enum mqtt_type type, uint16_t packet_id);

/* Bytes queued and not yet written. */
size_t uplink_queued(const struct uplink *u);
/* Is the output below the high-water mark (64 KiB)? When false, the owner
 * stops feeding it until on_writable. */
bool uplink_writable(const struct uplink *u);

/* Stop (true) or resume (false) reading the broker's socket: a device that
 * reads slowly slows its own link (TCP flow control back to the broker)
 * instead of making the bridge buffer for it. */
void uplink_pause_input(struct uplink *u, bool paused);

/*
 * End the link. graceful: DISCONNECT after what is queued (the broker
 * discards the will, §3.14.4), then close; the link finishes writing on
 * its own, detached from the owner, for at most 5 s. !graceful: close
 * without DISCONNECT, so the broker publishes the will (§3.1.2.5) and
 * keeps every unacknowledged QoS 1/2 message for redelivery (§4.4).
 * No callback reaches the owner afterwards. NULL-safe.
 */
void uplink_close(struct uplink *u, bool graceful);
