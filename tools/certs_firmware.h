/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * certs_firmware — the C header the bundled firmware includes: where the
 * bridge is, the name the device must check in its certificate, the trust
 * anchor, the device's certificate and key, and Wi-Fi placeholders.
 */

#include <stddef.h>

struct firmware_config {
        const char *device;             /* client id = certificate CN */
        const char *host;               /* what the device dials */
        unsigned port;
        const char *server_name;        /* what it checks (CN of a cn-only listener) */
        const char *topic_prefix;
        const char *ca_pem, *cert_pem, *key_pem;
};

/* The header text, malloc'ed. Strings become C string literals line by line
 * (valid in C and C++), so the PEMs keep their exact bytes. Negative errno. */
int firmware_header_render(const struct firmware_config *fc, char **out, size_t *len);
