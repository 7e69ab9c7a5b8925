/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * mqtt_probe — the two MQTT 3.1.1 packets the doctor needs to act like a
 * device: CONNECT (§3.1) out, CONNACK (§3.2) in. Caller-provided buffers,
 * no I/O.
 */

#include <stddef.h>
#include <stdint.h>

/* Builds CONNECT with clean session; user/pass NULL = absent. Returns the
 * packet length, or -ENOBUFS / -EINVAL (a field over 65535 bytes). */
int mqtt_probe_connect(unsigned char *buf, size_t size, const char *client_id, uint16_t keepalive,
                       const char *user, const char *pass);

/* Parses a 4-byte CONNACK. Returns the return code (0..255), or -EBADMSG. */
int mqtt_probe_connack(const unsigned char p[4], int *session_present);

/* Words for a CONNACK return code (§3.2.2.3). */
const char *mqtt_probe_connack_text(int rc);
