/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * esp_client — a BearSSL client configured the way the ESP8266 Arduino
 * core's WiFiClientSecure (BearSSL) configures its own: TLS 1.0-1.2, the
 * core's cipher suite list in its order, x509_minimal with CA-only trust
 * anchors, the device clock, buffers of 16384 bytes in and 512 out (the
 * core's defaults, which make BearSSL request 512-byte fragments), and the
 * device's own certificate for mutual TLS.
 */

#include <stdint.h>
#include <time.h>

#include <bearssl.h>

#include "br_chain.h"

/* WiFiClientSecure::setBufferSizes(): payload plus BearSSL's record overhead. */
#define ESP_IOBUF_IN  (16384 + 325)
#define ESP_IOBUF_OUT (512 + 85)

struct esp_client {
        br_ssl_client_context cc;
        br_x509_minimal_context xc;
        unsigned char iobuf_in[ESP_IOBUF_IN];
        unsigned char iobuf_out[ESP_IOBUF_OUT];
};

/* Configures a fresh connection. chain/key may be NULL (no client cert);
 * issuer_key_type is the CA's key type (for an EC client key). name NULL
 * or "" turns the name check off (connect(IPAddress)). With resume non-NULL
 * the session is offered for resumption (session ID). Returns 0, or a
 * BearSSL error code when the engine refuses the setup. */
int esp_client_start(struct esp_client *c, const struct br_anchors *ta, time_t now,
                     const struct br_certs *chain, const struct br_key *key, int issuer_key_type,
                     const char *name, const br_ssl_session_parameters *resume);

/* "ECDHE_RSA_WITH_AES_128_GCM_SHA256" for a suite the core offers, else NULL. */
const char *esp_suite_name(uint16_t suite);

/* "TLS 1.2" etc. */
const char *esp_version_name(unsigned v);
