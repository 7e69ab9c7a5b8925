/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * doctor_cert — "mqtt-edge-bridge-doctor cert": the device's verdict on a
 * server chain (BearSSL x509_minimal, configured like the ESP8266 core),
 * beside what OpenSSL/Python clients say, and for every failure the cause
 * in plain words and the fix.
 */

#include <stdbool.h>
#include <time.h>

struct doctor_cert_args {
        const char *chain_path;
        const char *ca_path;
        const char *name;       /* "" = name check off, as connect(IPAddress) */
        const char *key_path;   /* optional: the server key, to check it matches */
        time_t at;              /* the device's clock */
        bool json;
};

/* Prints the report. Returns 0 when the device would accept the chain,
 * 1 when it would not, 2 when the input could not be read (message printed). */
int doctor_cert_run(const struct doctor_cert_args *a);
