/* SPDX-License-Identifier: MIT */
/*
 * The uplink in MQTT terms: the broker's CONNACK and packets, parsed with
 * the codec and checked against what a server may send, and keepalive
 * (§3.1.2.10) on the link's one timer.
 */
#include <errno.h>

#include "uplink_internal.h"

/* The next moment something is due. Timestamps move with every packet,
 * the timer only when it fires: no timer update per packet. */
static uint64_t uplink_next_due(const struct uplink *u, uint64_t now)
{
        uint64_t ka = (uint64_t) u->keepalive * USEC_PER_SEC, next;

        if (!u->draining && u->redial_at)
                return u->redial_at < u->deadline ? u->redial_at : u->deadline;
        if (u->draining || u->state != UPLINK_CONNECTED)
                return u->deadline;
        if (!ka)
                return UINT64_MAX;
        next = u->t_sent + ka;
        if (next <= now)        /* a PINGREQ is queued or stuck behind output */
                next = now + ka;
        if (!u->paused && u->t_recv + ka + ka / 2 < next)
                next = u->t_recv + ka + ka / 2;
        return next;
}

void uplink_arm_timer(struct uplink *u, uint64_t now)
{
        uint64_t next = uplink_next_due(u, now);

        if (!u->timer)
                return;
        if (next == UINT64_MAX) {
                (void) sd_event_source_set_enabled(u->timer, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(u->timer, next);
        (void) sd_event_source_set_enabled(u->timer, SD_EVENT_ONESHOT);
}

int uplink_on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct uplink *u = userdata;
        uint64_t now = uplink_now(u->pool), ka = (uint64_t) u->keepalive * USEC_PER_SEC;
        static const char *const phase[] = {
                [UPLINK_TCP_CONNECTING] = "connecting",
                [UPLINK_TLS_HANDSHAKE] = "in the TLS handshake",
                [UPLINK_WAIT_CONNACK] = "waiting for CONNACK",
        };

        uplink_enter(u);
        if (u->draining) {
                if (now >= u->deadline) {
                        uplink_lost(u, "closing: the broker did not end the connection within %llu s",
                                    (unsigned long long) (UPLINK_LINGER_USEC / USEC_PER_SEC));
                        goto out;
                }
        } else if (u->redial_at) {
                if (now >= u->deadline) {
                        uplink_lost(u, "upstream connect to %s timed out after %u s: the broker's listen queue "
                                    "stayed full", u->dialer.peer, u->connect_timeout);
                        goto out;
                }
                if (now >= u->redial_at)
                        uplink_redial(u, now);
        } else if (u->state < UPLINK_CONNECTED) {
                if (now >= u->deadline) {
                        uplink_lost(u, "upstream connect to %s timed out after %u s %s", u->dialer.peer,
                                    u->connect_timeout, phase[u->state]);
                        goto out;
                }
        } else if (u->state == UPLINK_CONNECTED && ka) {
                /* §3.1.2.10: the server allows one and a half keepalive
                 * periods; hold the broker to the same. */
                if (!u->paused && now >= u->t_recv + ka + ka / 2) {
                        uplink_lost(u, "no packet from the broker for %u.%u s (keepalive %u s)",
                                    u->keepalive * 3 / 2, u->keepalive % 2 ? 5 : 0, u->keepalive);
                        goto out;
                }
                /* §3.1.2.10: a PINGREQ when nothing else was sent; queued
                 * output still counts as sending once it moves. */
                if (now >= u->t_sent + ka && bytebuf_size(&u->out) == 0 &&
                    uplink_queue_empty_packet(u, MQTT_PINGREQ) < 0) {
                        uplink_lost(u, "out of memory for PINGREQ");
                        goto out;
                }
        }
        if (uplink_alive(u))
                uplink_arm_timer(u, now);
out:
        uplink_leave(u);
        return 0;
}

int uplink_queue_empty_packet(struct uplink *u, enum mqtt_type type)
{
        uint8_t *b = bytebuf_reserve(&u->out, 2);

        if (!b)
                return -ENOMEM;
        int r = mqtt_encode_empty(b, 2, type);
        if (r < 0)
                return r;
        bytebuf_commit(&u->out, (size_t) r);
        if (!u->write_blocked)
                uplink_schedule(u);
        return 0;
}

/* ---- what the broker says ---- */

static void uplink_protocol_error(struct uplink *u, const struct mqtt_packet *pkt)
{
        uplink_lost(u, "protocol error: the broker sent %s %s", mqtt_type_name(pkt->type),
                    u->state == UPLINK_WAIT_CONNACK ? "before CONNACK (§3.2)"
                                                    : "(not a packet a server sends, §2.2.1)");
}

static void uplink_on_connack(struct uplink *u, const struct mqtt_packet *pkt)
{
        uint8_t rc = pkt->u.connack.return_code;
        bool sp = pkt->u.connack.session_present;
        const struct uplink_ops *ops = u->ops;

        if (rc != 0) {
                /* §3.2.2.3: the server closes the connection after a
                 * refusal; so do we, right after the owner heard it. */
                ops->on_connack(u->ud, rc, sp);
                /* Whether or not the owner closed it in the callback, the
                 * link is gone now (uplink.h): free it once we return. */
                if (!u->doomed)
                        uplink_doom(u);
                return;
        }
        u->state = UPLINK_CONNECTED;
        u->pool->n_connected++;
        uplink_pool_host_worked(u->pool, u->dialer.host);
        u->t_recv = uplink_now(u->pool);
        if (bytebuf_size(&u->out) == 0)
                u->t_sent = u->t_recv;
        uplink_arm_timer(u, u->t_recv);
        ops->on_connack(u->ud, 0, sp);
}

/* One whole packet from the broker. */
static void uplink_on_packet(struct uplink *u, const uint8_t *raw, size_t len)
{
        struct mqtt_packet pkt;
        const char *why = NULL;
        const struct uplink_ops *ops = u->ops;

        if (mqtt_parse(raw, len, &pkt, &why) < 0) {
                uplink_lost(u, "malformed %s from the broker: %s", mqtt_type_name(raw[0] >> 4),
                            why ? why : "?");
                return;
        }
        if (u->state == UPLINK_WAIT_CONNACK) {
                if (pkt.type != MQTT_CONNACK) {
                        uplink_protocol_error(u, &pkt);
                        return;
                }
                uplink_on_connack(u, &pkt);
                return;
        }
        switch (pkt.type) {
        case MQTT_PINGRESP:
                /* Our PINGREQ went because nothing else did: a quiet link
                 * (§3.1.2.10) needs no buffers until data moves again. */
                if (bytebuf_size(&u->out) == 0)
                        uplink_trim(u);
                return;
        case MQTT_PUBLISH:
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
                ops->on_packet(u->ud, &pkt, raw, len);
                return;
        case MQTT_CONNACK:
                uplink_lost(u, "protocol error: a second CONNACK from the broker (§3.2)");
                return;
        default:
                uplink_protocol_error(u, &pkt);
                return;
        }
}

size_t uplink_feed(struct uplink *u, const uint8_t *buf, size_t len)
{
        size_t off = 0, plen;
        const struct uplink_ops *ops = u->ops;
        void *ud = u->ud;

        while (off < len && uplink_alive(u) && u->ops && !u->paused) {
                int r = mqtt_frame(buf + off, len - off, u->pool->max_packet, &plen);
                if (r == 0)
                        break;
                if (r == -EMSGSIZE) {
                        uplink_lost(u, "%s from the broker larger than %zu bytes (the packet size limit)",
                                    mqtt_type_name(buf[off] >> 4), u->pool->max_packet);
                        break;
                }
                if (r < 0) {
                        uplink_lost(u, "malformed packet from the broker: remaining length over 4 bytes (§2.2.3)");
                        break;
                }
                uplink_on_packet(u, buf + off, plen);
                off += plen;
        }
        if (off > 0 && uplink_alive(u) && u->ops == ops && ops && ops->on_input_end)
                ops->on_input_end(ud);
        return off;
}

/* Deliver what is held in u->in; keep the rest. */
void uplink_feed_held(struct uplink *u)
{
        size_t used = uplink_feed(u, bytebuf_head(&u->in), bytebuf_size(&u->in));

        if (!uplink_alive(u))
                return;
        bytebuf_consume(&u->in, used);
        bytebuf_trim(&u->in, 0);
}
