/* SPDX-License-Identifier: MIT */
/*
 * session_down.c — broker → device.
 *
 * A broker PUBLISH goes to the device with the broker's own packet
 * identifier, QoS, DUP and RETAIN flags (each device has its own uplink,
 * so the identifiers cannot collide), the topic mapped back out of the
 * mountpoint. Nothing is acknowledged to the broker here: the device's
 * PUBACK / PUBREC / PUBCOMP go upstream as the device sends them, and the
 * broker's PUBREL comes down. So the broker, not the bridge, holds every
 * message the device has not acknowledged, and redelivers it (§4.4) after
 * a reconnect, a bridge restart or a crash — exactly as if the device had
 * connected directly.
 *
 * Flow control: while the device's output is over max_queued_bytes, the
 * uplink is not read; TCP then slows the broker down, which queues the
 * rest (max_queued_messages) instead of the bridge.
 */
#include <errno.h>
#include <string.h>

#include "policy.h"
#include "session_internal.h"

static void session_down_deliver(struct session *s, const struct mqtt_publish *p)
{
        size_t off = 0;
        struct mqtt_publish d = *p;

        if (policy_topic_from_upstream_buf(s->mountpoint, p->topic.data, p->topic.len, &off) < 0) {
                /* Cannot match a mapped subscription; never the device's.
                 * Acknowledged so the broker does not resend it for ever. */
                struct log_fields f = session_fields(s, "topic outside the mountpoint");
                log_msg(LOG_LEVEL_DEBUG, &f, "message from the broker dropped");
                s->b->stats.msgs_dropped++;
                if (p->qos == 1)
                        (void) uplink_send_ack(s->up, MQTT_PUBACK, p->packet_id);
                else if (p->qos == 2)
                        (void) uplink_send_ack(s->up, MQTT_PUBREC, p->packet_id);
                return;
        }
        d.topic = (struct mqtt_str){ p->topic.data + off, (uint16_t) (p->topic.len - off) };
        size_t len = mqtt_publish_len(&d);
        uint8_t *buf = len ? session_out_reserve(s, len, false) : NULL;
        if (!buf) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        if (mqtt_encode_publish(buf, len, &d) < 0) {
                s->out_len -= len;
                return;
        }
        s->msgs_out++;
        s->b->stats.msgs_to_devices[p->qos]++;
        s->b->stats.payload_bytes_to_devices[p->qos] += p->payload_len;
}

void session_down_on_packet(struct session *s, const struct mqtt_packet *pkt)
{
        if (s->state != S_ACTIVE)
                return;
        if (pkt->type == MQTT_PUBLISH)
                session_down_deliver(s, &pkt->u.publish);
        else if (pkt->type == MQTT_PUBREL)
                session_send_ack(s, MQTT_PUBREL, pkt->u.packet_id);
        if (s->state == S_ACTIVE && session_out_full(s) && !s->uplink_paused && s->up) {
                /* The device reads slowly: slow its uplink down, not the
                 * bridge's memory up. */
                struct log_fields f = session_fields(s, "output over max_queued_bytes");
                log_msg(LOG_LEVEL_DEBUG, &f, "device reads slowly: its uplink is paused, the broker keeps the rest");
                s->uplink_paused = true;
                uplink_pause_input(s->up, true);
        }
}

/* The device's PUBACK / PUBREC / PUBCOMP for a broker message: upstream as
 * is. While the uplink is away there is nobody to tell; the broker resends
 * the message (DUP) when it is back, and the device answers again. */
void session_down_on_device_ack(struct session *s, enum mqtt_type type, uint16_t pid)
{
        if (!s->up_connected)
                return;
        if (uplink_send_ack(s->up, type, pid) < 0)
                session_close(s, LOG_LEVEL_ERR, "out of memory");
}

void session_down_output_drained(struct session *s)
{
        if (s->uplink_paused && s->up) {
                s->uplink_paused = false;
                uplink_pause_input(s->up, false);
        }
}
