/* SPDX-License-Identifier: MIT */
/*
 * Example of the device configuration the firmware includes as
 * "edge_config.h". Do not edit this one: generate the real file with
 *
 *   mqtt-edge-bridge-certs firmware-config NAME --address ADDR --port PORT \
 *           [--name SERVER-NAME] --out firmware/include/edge_config.h
 *
 * then put in the Wi-Fi SSID and password and delete the
 * EDGE_WIFI_PLACEHOLDERS line. edge_config.h holds the device's private
 * key: keep it out of version control.
 */
#pragma once

#define EDGE_WIFI_SSID "CHANGE-ME-SSID"
#define EDGE_WIFI_PASSWORD "CHANGE-ME-PASSWORD"
#define EDGE_WIFI_PLACEHOLDERS 1

/* The bridge's device listener: the address the device dials. */
#define EDGE_MQTT_HOST "192.168.0.52"
#define EDGE_MQTT_PORT 8884

/* The name checked against the bridge's certificate (CN when it has no
 * SAN, else the SAN's dNSName entries; BearSSL never looks at iPAddress
 * entries). Normally the same string as EDGE_MQTT_HOST. */
#define EDGE_SERVER_NAME "192.168.0.52"

/* MQTT client id; the bridge knows the device by its certificate's CN. */
#define EDGE_CLIENT_ID "dev1"

/* Prepended to the device's topics ("" when the bridge's mountpoint does it). */
#define EDGE_TOPIC_PREFIX ""

/* The CA that issued the bridge's certificate (basicConstraints CA:TRUE). */
#define EDGE_CA_PEM \
        "-----BEGIN CERTIFICATE-----\n" \
        "...\n" \
        "-----END CERTIFICATE-----\n"

/* The device's certificate (CN = EDGE_CLIENT_ID). */
#define EDGE_CERT_PEM \
        "-----BEGIN CERTIFICATE-----\n" \
        "...\n" \
        "-----END CERTIFICATE-----\n"

/* The device's private key (RSA-2048 or EC P-256), PEM. SECRET: only the
 * generated edge_config.h (git-ignored, 0600) ever holds it; this example
 * carries no key, not even a placeholder block. */
#define EDGE_KEY_PEM \
        "(the device key PEM, written here by mqtt-edge-bridge-certs firmware-config)\n"

/* Optional (defaults in src/main.cpp):
 * #define EDGE_TELEMETRY_INTERVAL_MS 60000
 * #define EDGE_KEEPALIVE_S 60
 * #define EDGE_NTP_SERVER1 "pool.ntp.org"
 * #define EDGE_NTP_SERVER2 "time.nist.gov"
 */
