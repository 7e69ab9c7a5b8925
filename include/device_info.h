/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * device_info — how one device's TLS was negotiated, for --status: read
 * once from the SSL when the handshake completes (device_info_from_ssl).
 *
 * Plain fields, no pointers: a session embeds one; readers (status,
 * metrics) get it with the session's counters in a struct device_view
 * through session_foreach_device(), never by reaching into struct session.
 */

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <openssl/ssl.h>

struct device_info {
        char sni[256];              /* the name the device dialled (SNI), "" when none sent */
        char tls_version[16];       /* "TLSv1.2" */
        char cipher[64];            /* OpenSSL's name of the suite */
        unsigned max_fragment;      /* RFC 6066 Maximum Fragment Length negotiated, bytes; 0 = none */
        bool resumed;               /* session resumed by session ID (no full handshake) */
        bool has_cert;              /* a client certificate was presented and verified */
        time_t cert_not_after;      /* its notAfter, 0 without one */
};

/* Fill *d from a completed handshake on ssl. */
void device_info_from_ssl(struct device_info *d, SSL *ssl);

/* What a reader of sessions sees of one device (every string valid only
 * during the callback; client_id NULL before CONNECT). */
struct device_view {
        const char *cn;             /* certificate CN, "" without a certificate */
        const char *client_id;
        const char *peer;           /* "192.0.2.7:51234" */
        bool connected;             /* past CONNACK 0 */
        time_t since;               /* CLOCK_REALTIME: connection accepted */
        time_t last_activity;       /* CLOCK_REALTIME: last bytes from the device */
        uint64_t msgs_from_device;  /* PUBLISH packets, any QoS */
        uint64_t msgs_to_device;
        const struct device_info *info;
};
