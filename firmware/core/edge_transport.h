/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * edge_transport — the byte stream under the firmware's MQTT client.
 *
 * The MQTT client core (mqtt_client.h) never touches a socket, a TLS
 * library or a clock itself: it calls these function pointers. The
 * Arduino glue implements them on BearSSL::WiFiClientSecure, the host
 * build (edge-device) on a POSIX socket + libbearssl, the unit tests on
 * an in-memory fake.
 *
 * Ownership: the glue owns the struct, ctx and everything behind it and
 * must keep them alive as long as the client that points at them. The
 * client never frees anything.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct edge_transport {
        void *ctx;                /* passed back to every function */

        /* Open a fresh connection (TCP + TLS handshake) to the server.
         * May block (the ESP8266 core's connect() does). Returns 0 when
         * the stream is ready for MQTT bytes, or a negative errno value;
         * the client then retries with backoff. Called only while closed. */
        int (*connect)(void *ctx);

        /* Copy up to len received bytes into buf. Returns the count (> 0),
         * 0 when nothing is available right now (would block), or a
         * negative errno value when the stream is finished (-ECONNRESET
         * for an orderly end by the peer). Must not block. */
        int (*read)(void *ctx, uint8_t *buf, size_t len);

        /* Accept up to len bytes for sending. Returns the count accepted
         * (> 0, possibly fewer than len), 0 when no byte can be accepted
         * right now (would block), or a negative errno value. Accepted
         * bytes belong to the transport; it may hold them until flush().
         * Must not block. */
        int (*write)(void *ctx, const uint8_t *buf, size_t len);

        /* Optional (may be NULL): push everything write() accepted onto
         * the wire (for TLS: close the current record). The client calls
         * it once per mqtt_client_poll() after writing, so the packets
         * produced by one poll travel together. Returns 0 or a negative
         * errno value. */
        int (*flush)(void *ctx);

        /* Close the connection. graceful = true after an MQTT DISCONNECT:
         * send the TLS close_notify first; false: just drop the
         * connection (error paths, simulated power loss). Never fails;
         * safe to call on an already closed transport. */
        void (*close)(void *ctx, bool graceful);

        /* A monotonic millisecond clock; wraps around at 2^32 (the client
         * only ever compares differences). */
        uint32_t (*millis)(void *ctx);
};
