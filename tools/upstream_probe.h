/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * upstream_probe — one MQTT 3.1.1 client session against the main broker
 * with libmosquitto, driven synchronously: connect (TCP or Unix socket,
 * TLS through the caller's SSL_CTX), CONNACK, then SUBSCRIBE to a test
 * topic, PUBLISH to it (QoS 1) and wait for the message to come back,
 * then DISCONNECT. Every step is bounded by the step timeout; nothing
 * blocks longer (mosquitto_loop with short waits under a deadline).
 *
 * The result says how far it got and why it stopped; it interprets
 * nothing about the broker's ACL beyond the wire facts: a SUBACK return
 * code (0x80 = refused, §3.9.3) and whether the published message came
 * back. mosquitto 2.0 answers a denied QoS 1 PUBLISH with PUBACK anyway
 * (MQTT 3.1.1 has no way to say no), so a PUBACK alone proves nothing.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct upstream_probe_params {
        const char *host;               /* host name, IP, or Unix socket path */
        int port;                       /* 0 = Unix socket at host */
        const char *bind_address;       /* NULL = any */
        SSL_CTX *ctx;                   /* NULL = no TLS; borrowed */
        const char *client_id;          /* must be valid UTF-8 without control characters */
        const char *username, *password;        /* NULL = not sent */
        uint16_t keepalive;
        const char *topic;              /* NULL = stop after CONNACK */
        const char *payload;
        unsigned timeout_sec;           /* per step */
};

struct upstream_probe_result {
        bool connected;                 /* the socket connected (TCP or Unix) */
        char local[80], peer[80];       /* addresses of the connected socket */
        int connack;                    /* CONNACK return code, -1 = none */
        int suback;                     /* first SUBACK return code, -1 = none */
        bool puback;                    /* PUBACK for the test message */
        bool echoed;                    /* the test message came back */
        bool timed_out;                 /* the step that failed ran out of time */
        char error[256];                /* why it stopped early, "" = it did not */
        char tls_error[256];            /* OpenSSL's error as libmosquitto logged it, "" = none */
};

/* Runs the session. Returns 0 when it ran (look at the result), or a
 * negative errno when libmosquitto could not be set up (error says why). */
int upstream_probe_run(const struct upstream_probe_params *p, struct upstream_probe_result *res);
