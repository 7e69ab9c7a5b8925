/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * esp8266_profile — BearSSL client set-up exactly as the ESP8266 Arduino
 * core's BearSSL::WiFiClientSecure does it (br_ssl_client_base_init() in
 * WiFiClientSecureBearSSL.cpp). One definition, used by edge-device (the
 * simulated device) and by mqtt-edge-bridge-doctor (the prediction), so
 * the two can never disagree about what a device offers.
 */

#include <stddef.h>
#include <stdint.h>
#include <bearssl.h>

/* The core's suites_P[] in its order (the ClientHello preference). */
extern const uint16_t esp8266_suites[];
extern const size_t esp8266_suites_count;

/* Zero cc and install versions (TLS 1.0-1.2), suites, hashes, PRFs and
 * ciphers, no renegotiation: the core's br_ssl_client_base_init(). The
 * X.509 engine, buffers and client certificate are the caller's. */
void esp8266_client_base_init(br_ssl_client_context *cc);

/* "ECDHE_RSA_WITH_AES_128_GCM_SHA256" for a suite the core offers, NULL
 * for one it does not. */
const char *esp8266_suite_name(uint16_t id);
