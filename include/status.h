/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * status — the device inventory for mqtt-edge-bridge --status, served by
 * the metrics endpoint as GET /status (text for a person) and
 * GET /status.json (for scripts): the connected devices (CN, client id,
 * address, since, TLS version, suite, fragment length, resumed or full,
 * certificate expiry, messages each way, last activity), the recent
 * handshake failures with their reason, and every certificate's expiry.
 */

#include <stdbool.h>
#include <stddef.h>

struct bridge;

/* Render into a malloc'ed, NUL-terminated *out. Returns 0 or -ENOMEM. */
int status_render(struct bridge *b, bool json, char **out, size_t *len);
