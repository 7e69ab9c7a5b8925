/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * mqtt_probe — the two MQTT 3.1.1 packets the doctor needs to act like a
 * device: CONNECT (§3.1) out, CONNACK (§3.2) in. Caller-provided buffers,
 * no I/O; the CONNECT comes from lib/mqtt_codec.c.
 */

#include <stddef.h>
#include <stdint.h>

/* Builds CONNECT with clean session with the shared codec
 * (mqtt_encode_connect); user/pass NULL = absent. Returns the packet
 * length, or -ENOBUFS, or -EINVAL (a field over 65535 bytes, a client id
 * that is not UTF-8, a password without a user name: §3.1.2.9). */
int mqtt_probe_connect(unsigned char *buf, size_t size, const char *client_id, uint16_t keepalive,
                       const char *user, const char *pass);

/* Parses a 4-byte CONNACK. Returns the return code (0..255), or -EBADMSG. */
int mqtt_probe_connack(const unsigned char p[4], int *session_present);

/* Words for a CONNACK return code (§3.2.2.3). */
const char *mqtt_probe_connack_text(int rc);
