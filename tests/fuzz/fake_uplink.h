/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * fake_uplink — the four uplink_* calls the outbox makes (uplink.h), into a
 * plain byte buffer instead of a socket, for the relay model (relay_model.h)
 * that plays the broker on the other end. Test code only: it replaces
 * src/uplink.c in the fuzzer and the unit test, never in the daemon.
 *
 * A link is either connected (uplink_reserve / uplink_send_ack append to
 * out) or dead (they fail with NULL / -ENOTCONN, like a real link between
 * its loss and the owner's outbox_uplink_down). uplink_writable() is false
 * once out holds high_water bytes, so back-pressure paths run too.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uplink {
        bool connected;
        uint8_t *out;           /* what the outbox wrote, not yet read by the broker */
        size_t len, cap;
        size_t reserved;        /* bytes handed out by the last uplink_reserve */
        size_t high_water;      /* uplink_writable() is len < high_water */
        unsigned misuse;        /* commits without a reserve, or over it */
};

/* Start a new connection on l: connected, nothing queued. */
void fake_uplink_connect(struct uplink *l, size_t high_water);
/* The connection is gone: what was queued is lost. */
void fake_uplink_disconnect(struct uplink *l);
/* Drop the first n queued bytes (the broker read them). */
void fake_uplink_consume(struct uplink *l, size_t n);
/* Free the buffer. */
void fake_uplink_done(struct uplink *l);
