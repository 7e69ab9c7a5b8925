/* SPDX-License-Identifier: MIT */
/* fake_uplink — see fake_uplink.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fake_uplink.h"
#include "mqtt_codec.h"
#include "uplink.h"

void fake_uplink_connect(struct uplink *l, size_t high_water)
{
        l->connected = true;
        l->len = 0;
        l->reserved = 0;
        l->high_water = high_water;
}

void fake_uplink_disconnect(struct uplink *l)
{
        l->connected = false;
        l->len = 0;
        l->reserved = 0;
}

void fake_uplink_consume(struct uplink *l, size_t n)
{
        if (n > l->len)
                n = l->len;
        memmove(l->out, l->out + n, l->len - n);
        l->len -= n;
}

void fake_uplink_done(struct uplink *l)
{
        free(l->out);
        *l = (struct uplink){ 0 };
}

uint8_t *uplink_reserve(struct uplink *u, size_t n)
{
        if (!u || !u->connected)
                return NULL;
        if (u->len + n > u->cap) {
                size_t c = u->cap ? u->cap : 256;
                while (c < u->len + n)
                        c *= 2;
                uint8_t *b = realloc(u->out, c);
                if (!b)
                        return NULL;
                u->out = b;
                u->cap = c;
        }
        u->reserved = n;
        return u->out + u->len;
}

void uplink_commit(struct uplink *u, size_t used)
{
        if (used > u->reserved)
                u->misuse++;
        else
                u->len += used;
        u->reserved = 0;
}

int uplink_send_ack(struct uplink *u, enum mqtt_type type, uint16_t packet_id)
{
        uint8_t *b = uplink_reserve(u, 4);
        if (!b)
                return -ENOTCONN;
        int n = mqtt_encode_ack(b, 4, type, packet_id);
        uplink_commit(u, n > 0 ? (size_t) n : 0);
        return n > 0 ? 0 : n;
}

bool uplink_writable(const struct uplink *u)
{
        return u && u->connected && u->len < u->high_water;
}

bool uplink_is_connected(const struct uplink *u)
{
        return u && u->connected;
}
