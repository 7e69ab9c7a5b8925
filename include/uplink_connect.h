/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * uplink_connect — the CONNECT packet (MQTT 3.1.1 §3.1) an uplink sends,
 * built from struct uplink_params. Pure: no I/O, no allocation.
 */

#include <stddef.h>
#include <stdint.h>

#include "uplink.h"

/* An upper bound of the encoded CONNECT's length (exact unless a field
 * is too long to encode at all, which uplink_encode_connect reports). */
size_t uplink_connect_size(const struct uplink_params *p);

/*
 * Encode the CONNECT for p into buf. Checks what the broker would refuse
 * or misread before it goes out: protocol level 3 or 4, an empty client
 * id only with a clean session (§3.1.3.1 [MQTT-3.1.3-7]), a password only
 * with a user name (§3.1.2.9 [MQTT-3.1.2-22]), a will topic that is a
 * valid topic name (§3.1.3.2, §4.7), will QoS 0..2, strings of at most
 * 65535 bytes, valid UTF-8 where §1.5.3 requires it.
 * Returns the length written, -ENOBUFS (cap too small; nothing written),
 * or -EINVAL with a static reason in *why (when why is not NULL).
 */
int uplink_encode_connect(uint8_t *buf, size_t cap, const struct uplink_params *p, const char **why);
