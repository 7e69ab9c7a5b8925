/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * doctor_connect — "mqtt-edge-bridge-doctor connect": a live check done
 * exactly as a device does it (see esp_client.h), then an MQTT CONNECT,
 * then a second connection that offers the session for resumption.
 */

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct doctor_connect_args {
        const char *target;             /* HOST:PORT, [V6]:PORT */
        const char *ca_path;
        const char *cert_path;          /* device certificate (chain) */
        const char *key_path;
        const char *name;               /* NULL = the HOST as given; "" = no name check */
        const char *client_id;          /* NULL = the certificate's CN */
        const char *username, *password;
        uint16_t keepalive;
        time_t at;                      /* the device's clock */
        unsigned timeout_sec;           /* per connection, whole exchange */
        bool tls_only;                  /* no MQTT (e.g. against openssl s_server) */
        bool no_resume;
        bool json;
};

/* Prints the report. 0 when the device would succeed (handshake OK and,
 * unless tls_only, CONNACK 0), 1 when not, 2 on bad input. */
int doctor_connect_run(const struct doctor_connect_args *a);
