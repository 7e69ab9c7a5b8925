/* SPDX-License-Identifier: MIT */
/*
 * mqtt_client — see mqtt_client.h for the contract. Section numbers are
 * those of the MQTT 3.1.1 OASIS standard.
 */
#include "mqtt_client.h"

#include <errno.h>
#include <string.h>

#define MQTT_CLIENT_MAX_FILTERS 16
#define MQTT_DUP_FLAG 0x08        /* §3.3.1.1: bit 3 of a PUBLISH fixed header */

/* Wrap-safe "now - then" on the 32-bit millisecond clock. */
static uint32_t elapsed(uint32_t now, uint32_t then)
{
        return (uint32_t)(now - then);
}

/* Has the clock reached t? (t at most 2^31 ms in the future or past) */
static bool time_reached(uint32_t now, uint32_t t)
{
        return elapsed(now, t) < 0x80000000u;
}

static uint32_t remaining(uint32_t now, uint32_t since, uint32_t period)
{
        uint32_t e = elapsed(now, since);

        return e >= period ? 0 : period - e;
}

static uint32_t client_now(const struct mqtt_client *c)
{
        return c->tp->millis(c->tp->ctx);
}

/* xorshift32: jitter only needs to differ between devices, not be secret. */
static uint32_t client_random(struct mqtt_client *c)
{
        uint32_t x = c->rng;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        c->rng = x;
        return x;
}

uint32_t mqtt_backoff_delay_ms(uint32_t attempt, uint32_t base_ms, uint32_t max_ms, uint32_t rnd)
{
        uint32_t cap, lo, span;

        if (base_ms == 0)
                base_ms = 1;
        if (max_ms < base_ms)
                max_ms = base_ms;

        cap = base_ms;
        for (uint32_t i = 0; i < attempt && cap < max_ms; i++)
                cap = cap > max_ms / 2 ? max_ms : cap * 2;

        /* Equal jitter: half of the delay is fixed so it keeps growing,
         * the other half is random so devices spread out. */
        lo = cap / 2;
        span = cap - lo;
        return lo + rnd % (span + 1);
}

static uint32_t cfg_connack_timeout(const struct mqtt_client *c)
{
        return c->cfg.connack_timeout_ms ? c->cfg.connack_timeout_ms : 10000;
}

static uint32_t cfg_ping_timeout(const struct mqtt_client *c)
{
        uint32_t t;

        if (c->cfg.ping_timeout_ms)
                return c->cfg.ping_timeout_ms;
        t = (uint32_t)c->cfg.keepalive * 500u;
        return t < 1000 ? 1000 : t;
}

static void client_emit(struct mqtt_client *c, struct mqtt_client_event *ev)
{
        if (c->on_event)
                c->on_event(c->user, ev);
}

void mqtt_client_init(struct mqtt_client *c, const struct mqtt_client_config *cfg,
                      const struct edge_transport *tp, mqtt_client_event_fn on_event, void *user)
{
        memset(c, 0, sizeof(*c));
        c->cfg = *cfg;
        if (c->cfg.protocol_level == 0)
                c->cfg.protocol_level = MQTT_PROTOCOL_LEVEL_311;
        if (c->cfg.backoff_base_ms == 0)
                c->cfg.backoff_base_ms = 1000;
        if (c->cfg.backoff_max_ms == 0)
                c->cfg.backoff_max_ms = 60000;
        c->tp = tp;
        c->on_event = on_event;
        c->user = user;
        c->rng = cfg->seed ? cfg->seed : 0x9e3779b9u;
        c->next_packet_id = 1;
        c->state = MQTT_CLIENT_STOPPED;
}

void mqtt_client_start(struct mqtt_client *c)
{
        if (c->state != MQTT_CLIENT_STOPPED)
                return;
        c->state = MQTT_CLIENT_WAITING;
        c->muted = false;
        c->attempt = 0;
        c->next_attempt_at = client_now(c);
}

enum mqtt_client_state mqtt_client_get_state(const struct mqtt_client *c)
{
        return c->state;
}

size_t mqtt_client_tx_pending(const struct mqtt_client *c)
{
        return c->tx_len;
}

size_t mqtt_client_inflight(const struct mqtt_client *c)
{
        size_t n = 0;

        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                if (c->outbox[i].state != MQTT_OUTBOX_FREE)
                        n++;
        return n;
}

static bool client_is_open(const struct mqtt_client *c)
{
        return c->state == MQTT_CLIENT_CONNECTING || c->state == MQTT_CLIENT_CONNECTED ||
               c->state == MQTT_CLIENT_DISCONNECTING;
}

static size_t tx_room(const struct mqtt_client *c)
{
        return sizeof(c->tx) - c->tx_len;
}

/* ---- packet identifiers (§2.3.1: non-zero, unique among those in use) ---- */

static bool packet_id_in_use(const struct mqtt_client *c, uint16_t id)
{
        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                if (c->outbox[i].state != MQTT_OUTBOX_FREE && c->outbox[i].packet_id == id)
                        return true;
        return false;
}

static uint16_t packet_id_next(struct mqtt_client *c)
{
        uint16_t id;

        do {
                id = c->next_packet_id++;
                if (c->next_packet_id == 0)
                        c->next_packet_id = 1;
        } while (id == 0 || packet_id_in_use(c, id));
        return id;
}

/* ---- outbox ring ---- */

static struct mqtt_outbox_slot *outbox_find(struct mqtt_client *c, uint16_t id)
{
        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                if (c->outbox[i].state != MQTT_OUTBOX_FREE && c->outbox[i].packet_id == id)
                        return &c->outbox[i];
        return NULL;
}

static void outbox_free(struct mqtt_client *c, struct mqtt_outbox_slot *s)
{
        s->state = MQTT_OUTBOX_FREE;
        /* Acknowledgements may come out of order; the ring only gives the
         * head back, so order of (re)transmission stays the order of
         * publication (§4.6). */
        while (c->ob_count > 0 && c->outbox[c->ob_head].state == MQTT_OUTBOX_FREE) {
                c->ob_head = (c->ob_head + 1) % MQTT_CLIENT_OUTBOX;
                c->ob_count--;
        }
}

static struct mqtt_outbox_slot *outbox_alloc(struct mqtt_client *c)
{
        struct mqtt_outbox_slot *s;

        if (c->ob_count >= MQTT_CLIENT_OUTBOX)
                return NULL;
        s = &c->outbox[(c->ob_head + c->ob_count) % MQTT_CLIENT_OUTBOX];
        c->ob_count++;
        memset(s, 0, offsetof(struct mqtt_outbox_slot, packet));
        return s;
}

/* After a reconnect everything unacknowledged goes out again (§4.4). */
static void outbox_mark_all_pending(struct mqtt_client *c)
{
        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                if (c->outbox[i].state != MQTT_OUTBOX_FREE)
                        c->outbox[i].pending = true;
}

/* ---- QoS 2 receive ids (§4.3.3) ---- */

static bool qos2_rx_has(const struct mqtt_client *c, uint16_t id)
{
        for (size_t i = 0; i < MQTT_CLIENT_QOS2_RX; i++)
                if (c->qos2_rx[i] == id)
                        return true;
        return false;
}

static void qos2_rx_add(struct mqtt_client *c, uint16_t id)
{
        for (size_t i = 0; i < MQTT_CLIENT_QOS2_RX; i++)
                if (c->qos2_rx[i] == 0) {
                        c->qos2_rx[i] = id;
                        return;
                }
        /* Full: the message was delivered but its id is not remembered,
         * so a resent PUBLISH may be delivered twice. Duplicates beat
         * losses; size MQTT_CLIENT_QOS2_RX to the server's in-flight
         * window (mosquitto: max_inflight_messages) to avoid it. */
}

static void qos2_rx_remove(struct mqtt_client *c, uint16_t id)
{
        for (size_t i = 0; i < MQTT_CLIENT_QOS2_RX; i++)
                if (c->qos2_rx[i] == id)
                        c->qos2_rx[i] = 0;
}

/* ---- tx staging ---- */

/* Queue a packet-sized encoder result: r > 0 means r bytes were written at
 * c->tx + c->tx_len. */
static int tx_commit(struct mqtt_client *c, int r)
{
        if (r < 0)
                return r;
        if (c->muted)
                return 0;       /* muted: nothing ever leaves */
        c->tx_len += (size_t)r;
        return 0;
}

static int tx_ack(struct mqtt_client *c, enum mqtt_type type, uint16_t id)
{
        return tx_commit(c, mqtt_encode_ack(c->tx + c->tx_len, tx_room(c), type, id));
}

static int tx_empty(struct mqtt_client *c, enum mqtt_type type)
{
        return tx_commit(c, mqtt_encode_empty(c->tx + c->tx_len, tx_room(c), type));
}

/* ---- connection lifecycle ---- */

static void client_reset_stream(struct mqtt_client *c)
{
        c->rx_len = 0;
        c->rx_skip = 0;
        c->tx_len = 0;
        c->ping_outstanding = false;
        c->connack_seen = false;
}

/* Close on purpose (disconnect/abort) and stop; report EV_CLOSED. */
static void client_closed(struct mqtt_client *c, bool graceful, int err)
{
        struct mqtt_client_event ev = { .type = MQTT_CLIENT_EV_CLOSED, .err = err };

        c->tp->close(c->tp->ctx, graceful);
        client_reset_stream(c);
        outbox_mark_all_pending(c);
        c->state = MQTT_CLIENT_STOPPED;
        client_emit(c, &ev);
}

/* Close after a failure; schedule the next attempt unless muted. */
static void client_lost(struct mqtt_client *c, int err, const char *why)
{
        struct mqtt_client_event ev = { .type = MQTT_CLIENT_EV_CONNECTION_LOST, .err = err, .why = why };
        uint32_t delay;

        c->tp->close(c->tp->ctx, false);
        client_reset_stream(c);
        outbox_mark_all_pending(c);

        if (c->muted) {
                c->state = MQTT_CLIENT_STOPPED;
        } else {
                delay = mqtt_backoff_delay_ms(c->attempt, c->cfg.backoff_base_ms, c->cfg.backoff_max_ms,
                                              client_random(c));
                c->attempt++;
                c->next_attempt_at = client_now(c) + delay;
                c->state = MQTT_CLIENT_WAITING;
                ev.retry_in_ms = delay;
        }
        client_emit(c, &ev);
}

static int client_queue_connect(struct mqtt_client *c)
{
        const struct mqtt_client_config *cfg = &c->cfg;
        struct mqtt_connect m = {
                .protocol_level = cfg->protocol_level,
                .clean_session = cfg->clean_session,
                .keepalive = cfg->keepalive,
        };
        int r;

        m.client_id.data = (const uint8_t *)cfg->client_id;
        m.client_id.len = cfg->client_id ? (uint16_t)strlen(cfg->client_id) : 0;
        if (cfg->will_topic) {
                /* §3.1.2.5: the will is the server's to publish if we vanish
                 * without DISCONNECT. */
                m.will_flag = true;
                m.will_qos = cfg->will_qos;
                m.will_retain = cfg->will_retain;
                m.will_topic.data = (const uint8_t *)cfg->will_topic;
                m.will_topic.len = (uint16_t)strlen(cfg->will_topic);
                m.will_payload.data = cfg->will_payload;
                m.will_payload.len = (uint16_t)cfg->will_payload_len;
        }
        if (cfg->username) {
                m.has_username = true;
                m.username.data = (const uint8_t *)cfg->username;
                m.username.len = (uint16_t)strlen(cfg->username);
        }
        if (cfg->password) {
                m.has_password = true;
                m.password.data = (const uint8_t *)cfg->password;
                m.password.len = (uint16_t)strlen(cfg->password);
        }
        r = mqtt_encode_connect(c->tx + c->tx_len, tx_room(c), &m);
        if (r == -ENOBUFS)
                return -EMSGSIZE;
        return tx_commit(c, r);
}

static void client_try_connect(struct mqtt_client *c)
{
        struct mqtt_client_event ev = { 0 };
        uint32_t delay;
        int r;

        r = c->tp->connect(c->tp->ctx);
        if (r >= 0) {
                client_reset_stream(c);
                c->state = MQTT_CLIENT_CONNECTING;
                c->connect_sent_at = c->last_tx_at = client_now(c);
                r = client_queue_connect(c);
                if (r < 0) {
                        client_lost(c, r, "CONNECT does not fit MQTT_CLIENT_TX_BUF");
                        return;
                }
                outbox_mark_all_pending(c);
                ev.type = MQTT_CLIENT_EV_TRANSPORT_UP;
                client_emit(c, &ev);
                return;
        }

        delay = mqtt_backoff_delay_ms(c->attempt, c->cfg.backoff_base_ms, c->cfg.backoff_max_ms,
                                      client_random(c));
        c->attempt++;
        c->next_attempt_at = client_now(c) + delay;
        ev.type = MQTT_CLIENT_EV_CONNECT_FAILED;
        ev.err = r;
        ev.retry_in_ms = delay;
        client_emit(c, &ev);
}

static void client_queue_birth(struct mqtt_client *c)
{
        const char *payload;
        int r;

        if (!c->cfg.birth_topic)
                return;
        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                if (c->outbox[i].state != MQTT_OUTBOX_FREE && c->outbox[i].internal)
                        return; /* the previous one is still being resent */
        payload = c->cfg.birth_payload ? c->cfg.birth_payload : "online";
        r = mqtt_client_publish(c, c->cfg.birth_topic, payload, strlen(payload), 1, true);
        if (r > 0)
                outbox_find(c, (uint16_t)r)->internal = true;
}

/* ---- incoming packets ---- */

static int client_handle_publish(struct mqtt_client *c, const struct mqtt_publish *p)
{
        struct mqtt_client_event ev = { .type = MQTT_CLIENT_EV_MESSAGE, .publish = p,
                                        .packet_id = p->packet_id };

        switch (p->qos) {
        case 0:
                client_emit(c, &ev);
                return 0;
        case 1:
                /* §4.3.2: deliver, then PUBACK (ownership passes to us). */
                client_emit(c, &ev);
                return tx_ack(c, MQTT_PUBACK, p->packet_id);
        default:
                /* §4.3.3: deliver once, answer PUBREC every time until PUBREL. */
                if (!qos2_rx_has(c, p->packet_id)) {
                        qos2_rx_add(c, p->packet_id);
                        client_emit(c, &ev);
                }
                return tx_ack(c, MQTT_PUBREC, p->packet_id);
        }
}

static int client_handle(struct mqtt_client *c, const uint8_t *pkt, size_t len, const char **why)
{
        struct mqtt_client_event ev = { 0 };
        struct mqtt_outbox_slot *s;
        struct mqtt_packet p;
        int r;

        r = mqtt_parse(pkt, len, &p, why);
        if (r < 0)
                return r == -EPROTONOSUPPORT ? -EPROTO : r;

        if (!c->connack_seen && p.type != MQTT_CONNACK) {
                *why = "§3.2: the first packet from the server must be CONNACK";
                return -EPROTO;
        }

        switch (p.type) {
        case MQTT_CONNACK:
                if (c->connack_seen) {
                        *why = "§3.2: second CONNACK";
                        return -EPROTO;
                }
                c->connack_seen = true;
                ev.type = MQTT_CLIENT_EV_CONNACK;
                ev.return_code = p.u.connack.return_code;
                ev.session_present = p.u.connack.session_present;
                if (ev.return_code != MQTT_CONNACK_ACCEPTED) {
                        client_emit(c, &ev);
                        *why = "CONNACK refused the connection";
                        return -ECONNREFUSED;
                }
                if (c->cfg.clean_session && ev.session_present) {
                        *why = "§3.2.2.2: session present with CleanSession=1";
                        return -EPROTO;
                }
                c->state = MQTT_CLIENT_CONNECTED;
                c->attempt = 0;
                if (!ev.session_present)
                        memset(c->qos2_rx, 0, sizeof(c->qos2_rx)); /* the server forgot them too */
                client_queue_birth(c);
                client_emit(c, &ev);
                return 0;

        case MQTT_PUBLISH:
                return client_handle_publish(c, &p.u.publish);

        case MQTT_PUBACK:
                s = outbox_find(c, p.u.packet_id);
                if (!s || s->qos != 1)
                        return 0; /* stale: acknowledged before a reconnect */
                ev.type = MQTT_CLIENT_EV_PUBACK;
                ev.packet_id = s->packet_id;
                ev.internal = s->internal;
                outbox_free(c, s);
                client_emit(c, &ev);
                return 0;

        case MQTT_PUBREC:
                s = outbox_find(c, p.u.packet_id);
                if (s && s->qos == 2) {
                        /* §4.3.3: the server owns the message now; from here
                         * on we resend PUBREL, never the PUBLISH. */
                        s->state = MQTT_OUTBOX_PUBREL;
                        s->pending = true;
                        s->sent = false;
                        return 0;
                }
                /* Unknown id: answer anyway so the server can finish. */
                return tx_ack(c, MQTT_PUBREL, p.u.packet_id);

        case MQTT_PUBREL:
                qos2_rx_remove(c, p.u.packet_id);
                return tx_ack(c, MQTT_PUBCOMP, p.u.packet_id);

        case MQTT_PUBCOMP:
                s = outbox_find(c, p.u.packet_id);
                if (!s || s->state != MQTT_OUTBOX_PUBREL)
                        return 0;
                ev.type = MQTT_CLIENT_EV_PUBCOMP;
                ev.packet_id = s->packet_id;
                ev.internal = s->internal;
                outbox_free(c, s);
                client_emit(c, &ev);
                return 0;

        case MQTT_SUBACK:
                /* SUBACK return codes are one byte each after the id (§3.9.3). */
                ev.type = MQTT_CLIENT_EV_SUBACK;
                ev.packet_id = p.u.list.packet_id;
                ev.codes = p.u.list.start;
                ev.n_codes = p.u.list.count;
                client_emit(c, &ev);
                return 0;

        case MQTT_UNSUBACK:
                ev.type = MQTT_CLIENT_EV_UNSUBACK;
                ev.packet_id = p.u.packet_id;
                client_emit(c, &ev);
                return 0;

        case MQTT_PINGRESP:
                c->ping_outstanding = false;
                return 0;

        default:
                /* CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT only
                 * ever travel client → server. */
                *why = "server sent a client-to-server packet type";
                return -EPROTO;
        }
}

/* Remaining-length prefix decode, only to learn how much of an oversized
 * packet to skip (mqtt_frame() reports -EMSGSIZE without the length). */
static bool frame_total_len(const uint8_t *b, size_t len, size_t *total)
{
        size_t rl = 0, mul = 1;

        for (size_t i = 1; i < len && i <= 4; i++) {
                rl += (size_t)(b[i] & 0x7f) * mul;
                mul *= 128;
                if (!(b[i] & 0x80)) {
                        *total = 1 + i + rl;
                        return true;
                }
        }
        return false;
}

/* Handle every whole packet in rx. Returns 0, or < 0 after the connection
 * was lost or the state changed under us (caller must return). */
static int client_process_rx(struct mqtt_client *c)
{
        size_t off = 0;
        int r = 0;

        while (off < c->rx_len) {
                const uint8_t *b = c->rx + off;
                size_t avail = c->rx_len - off, plen = 0;
                const char *why = NULL;
                enum mqtt_client_state st = c->state;

                if (c->rx_skip > 0) {
                        size_t n = c->rx_skip < avail ? c->rx_skip : avail;

                        c->rx_skip -= n;
                        off += n;
                        continue;
                }

                r = mqtt_frame(b, avail, sizeof(c->rx), &plen);
                if (r == 0)
                        break;
                if (r == -EMSGSIZE) {
                        struct mqtt_client_event ev = { .type = MQTT_CLIENT_EV_DROPPED, .err = -EMSGSIZE };
                        size_t total;

                        if (!frame_total_len(b, avail, &total))
                                break;
                        /* A PUBLISH larger than our buffer: skip it rather than
                         * reconnect forever on a big retained message. It is
                         * not acknowledged; the server resends it on the next
                         * session, like a device that was never there. */
                        c->rx_skip = total;
                        client_emit(c, &ev);
                        if (c->state != st)
                                return -ECANCELED;
                        continue;
                }
                if (r < 0) {
                        client_lost(c, -EBADMSG, "§2.2.3: malformed Remaining Length");
                        return -EBADMSG;
                }
                /* Acks go into tx; wait for room rather than drop one. */
                if (tx_room(c) < 4 && !c->muted)
                        break;

                r = client_handle(c, b, plen, &why);
                /* An event handler may have aborted or disconnected: its
                 * decision wins over ours. */
                if (c->state != st && !(st == MQTT_CLIENT_CONNECTING && c->state == MQTT_CLIENT_CONNECTED))
                        return -ECANCELED;
                if (r < 0) {
                        client_lost(c, r, why);
                        return r;
                }
                off += plen;
        }

        if (off > 0) {
                memmove(c->rx, c->rx + off, c->rx_len - off);
                c->rx_len -= off;
        }
        return 0;
}

static int client_read(struct mqtt_client *c)
{
        /* Bounded so a flooding server cannot starve the caller's loop. */
        for (int round = 0; round < 16; round++) {
                int r;

                if (c->rx_len == sizeof(c->rx))
                        return 0; /* backpressure: tx full of acks */
                r = c->tp->read(c->tp->ctx, c->rx + c->rx_len, sizeof(c->rx) - c->rx_len);
                if (r < 0) {
                        client_lost(c, r, "connection closed");
                        return r;
                }
                if (r == 0)
                        return 0;
                c->rx_len += (size_t)r;
                r = client_process_rx(c);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- outgoing ---- */

static void client_transmit_outbox(struct mqtt_client *c, uint32_t now)
{
        for (size_t k = 0; k < c->ob_count; k++) {
                struct mqtt_outbox_slot *s = &c->outbox[(c->ob_head + k) % MQTT_CLIENT_OUTBOX];

                if (s->state == MQTT_OUTBOX_FREE || !s->pending)
                        continue;
                if (s->state == MQTT_OUTBOX_PUBLISH) {
                        if (tx_room(c) < s->len)
                                return; /* keep the order: nothing overtakes */
                        memcpy(c->tx + c->tx_len, s->packet, s->len);
                        /* §3.3.1.1: DUP=1 on every redelivery attempt. */
                        if (s->sent)
                                c->tx[c->tx_len] |= MQTT_DUP_FLAG;
                        c->tx_len += s->len;
                } else {
                        if (tx_room(c) < 4)
                                return;
                        (void)tx_ack(c, MQTT_PUBREL, s->packet_id);
                }
                s->sent = true;
                s->pending = false;
                s->sent_at = now;
        }
}

static int client_write(struct mqtt_client *c, uint32_t now)
{
        bool wrote = false;
        size_t off = 0;
        int r = 0;

        while (off < c->tx_len) {
                r = c->tp->write(c->tp->ctx, c->tx + off, c->tx_len - off);
                if (r <= 0)
                        break;
                off += (size_t)r;
                wrote = true;
        }
        if (off > 0) {
                memmove(c->tx, c->tx + off, c->tx_len - off);
                c->tx_len -= off;
        }
        if (r >= 0 && wrote) {
                /* §3.1.2.10 counts packets sent, so any write resets the
                 * keepalive clock. */
                c->last_tx_at = now;
                if (c->tp->flush)
                        r = c->tp->flush(c->tp->ctx);
        }
        if (r < 0) {
                if (c->state == MQTT_CLIENT_DISCONNECTING) {
                        /* The server may close as soon as it has read our
                         * DISCONNECT (§3.14.4): that is the end we wanted. */
                        client_closed(c, false, 0);
                        return r;
                }
                client_lost(c, r, "write failed");
                return r;
        }
        return 0;
}

static int client_timers(struct mqtt_client *c, uint32_t now)
{
        if (c->muted)
                return 0;

        if (c->state == MQTT_CLIENT_CONNECTING) {
                if (elapsed(now, c->connect_sent_at) >= cfg_connack_timeout(c)) {
                        client_lost(c, -ETIMEDOUT, "no CONNACK");
                        return -ETIMEDOUT;
                }
                return 0;
        }
        if (c->state == MQTT_CLIENT_DISCONNECTING) {
                if (elapsed(now, c->connect_sent_at) >= cfg_connack_timeout(c)) {
                        client_closed(c, false, -ETIMEDOUT);
                        return -ETIMEDOUT;
                }
                return 0;
        }
        if (c->state != MQTT_CLIENT_CONNECTED)
                return 0;

        if (c->cfg.keepalive) {
                if (c->ping_outstanding) {
                        if (elapsed(now, c->ping_sent_at) >= cfg_ping_timeout(c)) {
                                client_lost(c, -ETIMEDOUT, "no PINGRESP");
                                return -ETIMEDOUT;
                        }
                } else if (elapsed(now, c->last_tx_at) >= (uint32_t)c->cfg.keepalive * 1000u &&
                           tx_room(c) >= 2) {
                        (void)tx_empty(c, MQTT_PINGREQ);
                        c->ping_outstanding = true;
                        c->ping_sent_at = now;
                }
        }

        if (c->cfg.retry_ms) {
                for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++) {
                        struct mqtt_outbox_slot *s = &c->outbox[i];

                        if (s->state != MQTT_OUTBOX_FREE && s->sent && !s->pending &&
                            elapsed(now, s->sent_at) >= c->cfg.retry_ms)
                                s->pending = true;
                }
        }
        return 0;
}

int mqtt_client_poll(struct mqtt_client *c)
{
        uint32_t now = client_now(c);

        switch (c->state) {
        case MQTT_CLIENT_STOPPED:
                return -ENOTCONN;
        case MQTT_CLIENT_WAITING:
                if (!time_reached(now, c->next_attempt_at))
                        return 0; /* still backing off */
                client_try_connect(c);
                if (c->state != MQTT_CLIENT_CONNECTING)
                        return 0;
                now = client_now(c);
                break;
        default:
                break;
        }

        if (c->state == MQTT_CLIENT_CONNECTING || c->state == MQTT_CLIENT_CONNECTED) {
                /* An event handler may have disconnected: then go on and
                 * drain; after a loss or an abort there is nothing to do. */
                (void)client_read(c);
                if (!client_is_open(c))
                        return 0;
        }
        if (client_timers(c, now) < 0)
                return 0;

        if (c->muted) {
                c->tx_len = 0;
                return 0;
        }

        /* A few rounds so outbox entries that did not fit the tx buffer
         * follow as soon as the transport took the previous bytes. */
        for (int round = 0; round < 4 && client_is_open(c); round++) {
                if (c->state == MQTT_CLIENT_CONNECTING || c->state == MQTT_CLIENT_CONNECTED)
                        client_transmit_outbox(c, now);
                if (c->tx_len == 0)
                        break;
                if (client_write(c, now) < 0)
                        return 0;
                if (c->tx_len > 0)
                        break; /* the transport is full */
        }

        if (c->state == MQTT_CLIENT_DISCONNECTING && c->tx_len == 0)
                client_closed(c, true, 0);
        return 0;
}

uint32_t mqtt_client_next_timeout_ms(const struct mqtt_client *c)
{
        uint32_t now = client_now(c), t = UINT32_MAX, x;

        switch (c->state) {
        case MQTT_CLIENT_STOPPED:
                return UINT32_MAX;
        case MQTT_CLIENT_WAITING:
                return time_reached(now, c->next_attempt_at) ? 0 : elapsed(c->next_attempt_at, now);
        case MQTT_CLIENT_CONNECTING:
        case MQTT_CLIENT_DISCONNECTING:
                return c->muted ? UINT32_MAX : remaining(now, c->connect_sent_at, cfg_connack_timeout(c));
        case MQTT_CLIENT_CONNECTED:
                break;
        }
        if (c->muted)
                return UINT32_MAX;
        if (c->cfg.keepalive) {
                if (c->ping_outstanding)
                        t = remaining(now, c->ping_sent_at, cfg_ping_timeout(c));
                else
                        t = remaining(now, c->last_tx_at, (uint32_t)c->cfg.keepalive * 1000u);
        }
        for (size_t i = 0; i < MQTT_CLIENT_OUTBOX; i++) {
                const struct mqtt_outbox_slot *s = &c->outbox[i];

                if (s->state == MQTT_OUTBOX_FREE)
                        continue;
                if (s->pending)
                        return 0;
                if (c->cfg.retry_ms && s->sent) {
                        x = remaining(now, s->sent_at, c->cfg.retry_ms);
                        if (x < t)
                                t = x;
                }
        }
        return t;
}

/* ---- application calls ---- */

int mqtt_client_publish(struct mqtt_client *c, const char *topic, const void *payload, size_t len,
                        uint8_t qos, bool retain)
{
        struct mqtt_publish p = { .qos = qos, .retain = retain, .payload = payload, .payload_len = len };
        struct mqtt_outbox_slot *s;
        size_t tlen = strlen(topic);
        int r;

        if (qos > 2 || tlen > 0xffff || !mqtt_topic_name_valid((const uint8_t *)topic, tlen))
                return -EINVAL;
        p.topic.data = (const uint8_t *)topic;
        p.topic.len = (uint16_t)tlen;

        if (qos == 0) {
                if (c->state != MQTT_CLIENT_CONNECTING && c->state != MQTT_CLIENT_CONNECTED)
                        return -ENOTCONN;
                r = mqtt_encode_publish(c->tx + c->tx_len, tx_room(c), &p);
                if (r == -ENOBUFS && mqtt_publish_len(&p) > sizeof(c->tx))
                        return -EMSGSIZE;
                return tx_commit(c, r);
        }

        if (mqtt_publish_len(&p) > MQTT_CLIENT_OUTBOX_PACKET)
                return -EMSGSIZE;
        s = outbox_alloc(c);
        if (!s)
                return -ENOBUFS;
        p.packet_id = packet_id_next(c);
        r = mqtt_encode_publish(s->packet, sizeof(s->packet), &p);
        if (r < 0) {
                outbox_free(c, s);
                return r == -ENOBUFS ? -EMSGSIZE : r;
        }
        s->state = MQTT_OUTBOX_PUBLISH;
        s->qos = qos;
        s->packet_id = p.packet_id;
        s->len = (uint16_t)r;
        s->pending = true;
        /* Sent from the next mqtt_client_poll(), in outbox order. */
        return p.packet_id;
}

static int client_sub_unsub(struct mqtt_client *c, enum mqtt_type type, const char *const *filters,
                            const uint8_t *qos, size_t n)
{
        struct mqtt_str f[MQTT_CLIENT_MAX_FILTERS];
        uint16_t id;
        int r;

        if (n == 0 || n > MQTT_CLIENT_MAX_FILTERS)
                return -EINVAL;
        if (c->state != MQTT_CLIENT_CONNECTING && c->state != MQTT_CLIENT_CONNECTED)
                return -ENOTCONN;
        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(filters[i]);

                if (len > 0xffff || !mqtt_topic_filter_valid((const uint8_t *)filters[i], len))
                        return -EINVAL;
                if (qos && qos[i] > 2)
                        return -EINVAL;
                f[i].data = (const uint8_t *)filters[i];
                f[i].len = (uint16_t)len;
        }
        /* Not stored in the outbox: packet_id_next() only avoids its ids, a
         * clash with a SUBSCRIBE still in flight is harmless because SUBACK
         * and PUBACK are different packet types. */
        id = packet_id_next(c);
        r = mqtt_encode_subscribe(c->tx + c->tx_len, tx_room(c), type, id, f, qos, n);
        if (r < 0)
                return r;
        r = tx_commit(c, r);
        return r < 0 ? r : id;
}

int mqtt_client_subscribe(struct mqtt_client *c, const char *const *filters, const uint8_t *qos, size_t n)
{
        if (!qos)
                return -EINVAL;
        return client_sub_unsub(c, MQTT_SUBSCRIBE, filters, qos, n);
}

int mqtt_client_unsubscribe(struct mqtt_client *c, const char *const *filters, size_t n)
{
        return client_sub_unsub(c, MQTT_UNSUBSCRIBE, filters, NULL, n);
}

void mqtt_client_disconnect(struct mqtt_client *c)
{
        if (c->state == MQTT_CLIENT_WAITING || c->state == MQTT_CLIENT_STOPPED) {
                c->state = MQTT_CLIENT_STOPPED;
                return;
        }
        if (c->state == MQTT_CLIENT_DISCONNECTING)
                return;
        /* Whatever is already staged goes first, then DISCONNECT (§3.14).
         * If the tx buffer is full the staged bytes are dropped: the
         * outbox still holds every QoS > 0 message for the next session. */
        if (tx_room(c) < 2)
                c->tx_len = 0;
        (void)tx_empty(c, MQTT_DISCONNECT);
        c->state = MQTT_CLIENT_DISCONNECTING;
        c->connect_sent_at = client_now(c); /* reused as the drain deadline */
}

void mqtt_client_abort(struct mqtt_client *c)
{
        if (client_is_open(c)) {
                client_closed(c, false, 0);
                return;
        }
        c->state = MQTT_CLIENT_STOPPED;
}

void mqtt_client_mute(struct mqtt_client *c)
{
        c->muted = true;
        c->tx_len = 0;
}
