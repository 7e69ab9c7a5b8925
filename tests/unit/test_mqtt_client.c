/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the firmware's MQTT client core (firmware/core) over a
 * fake in-memory transport with a hand-driven clock: backoff, QoS 1 retry
 * with DUP, retry after reconnect, keepalive, PINGRESP timeout, QoS 2 both
 * ways, malformed packets from the server.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mqtt_client.h"
#include "mqtt_codec.h"

/* ---- fake transport ---- */

struct fake {
        uint32_t now;
        int connect_result;
        unsigned connects, closes, flushes;
        bool open, last_graceful, eof;
        uint8_t in[4096];         /* server → client */
        size_t in_len, in_off;
        uint8_t out[16384];       /* client → server, not yet taken by the test */
        size_t out_len;
};

static int fake_connect(void *ctx)
{
        struct fake *f = ctx;

        f->connects++;
        if (f->connect_result < 0)
                return f->connect_result;
        f->open = true;
        f->eof = false;
        f->in_len = f->in_off = 0;
        f->out_len = 0;
        return 0;
}

static int fake_read(void *ctx, uint8_t *buf, size_t len)
{
        struct fake *f = ctx;
        size_t n = f->in_len - f->in_off;

        assert_true(f->open);
        if (n == 0)
                return f->eof ? -ECONNRESET : 0;
        if (n > len)
                n = len;
        memcpy(buf, f->in + f->in_off, n);
        f->in_off += n;
        return (int)n;
}

static int fake_write(void *ctx, const uint8_t *buf, size_t len)
{
        struct fake *f = ctx;

        assert_true(f->open);
        assert_true(f->out_len + len <= sizeof(f->out));
        memcpy(f->out + f->out_len, buf, len);
        f->out_len += len;
        return (int)len;
}

static int fake_flush(void *ctx)
{
        struct fake *f = ctx;

        f->flushes++;
        return 0;
}

static void fake_close(void *ctx, bool graceful)
{
        struct fake *f = ctx;

        f->closes++;
        f->open = false;
        f->last_graceful = graceful;
}

static uint32_t fake_millis(void *ctx)
{
        return ((struct fake *)ctx)->now;
}

/* Server side: queue raw bytes for the client. */
static void server_raw(struct fake *f, const void *p, size_t len)
{
        assert_true(f->in_len + len <= sizeof(f->in));
        memcpy(f->in + f->in_len, p, len);
        f->in_len += len;
}

static void server_connack(struct fake *f, bool sp, uint8_t rc)
{
        uint8_t b[4];

        assert_int_equal(mqtt_encode_connack(b, sizeof(b), sp, rc), 4);
        server_raw(f, b, 4);
}

static void server_ack(struct fake *f, enum mqtt_type type, uint16_t id)
{
        uint8_t b[4];

        assert_int_equal(mqtt_encode_ack(b, sizeof(b), type, id), 4);
        server_raw(f, b, 4);
}

static void server_empty(struct fake *f, enum mqtt_type type)
{
        uint8_t b[2];

        assert_int_equal(mqtt_encode_empty(b, sizeof(b), type), 2);
        server_raw(f, b, 2);
}

static void server_publish(struct fake *f, const char *topic, const char *payload, uint8_t qos, uint16_t id,
                           bool dup)
{
        struct mqtt_publish p = {
                .dup = dup, .qos = qos, .packet_id = id,
                .topic = { (const uint8_t *)topic, (uint16_t)strlen(topic) },
                .payload = (const uint8_t *)payload, .payload_len = strlen(payload),
        };
        uint8_t b[256];
        int n = mqtt_encode_publish(b, sizeof(b), &p);

        assert_true(n > 0);
        server_raw(f, b, (size_t)n);
}

/* Take the next packet the client wrote. The parsed packet points into
 * hold, which must stay untouched while it is used. */
static bool take(struct fake *f, struct mqtt_packet *p, uint8_t *hold)
{
        size_t plen = 0;
        const char *why = NULL;

        if (f->out_len == 0)
                return false;
        assert_int_equal(mqtt_frame(f->out, f->out_len, 0, &plen), 1);
        memcpy(hold, f->out, plen);
        memmove(f->out, f->out + plen, f->out_len - plen);
        f->out_len -= plen;
        assert_int_equal(mqtt_parse(hold, plen, p, &why), 0);
        return true;
}

/* ---- event log ---- */

#define MAX_EVENTS 64

struct tctx {
        struct fake f;
        struct edge_transport tp;
        struct mqtt_client c;
        struct mqtt_client_event ev[MAX_EVENTS];
        size_t n_ev;
        char last_payload[64];
};

static void on_event(void *user, const struct mqtt_client_event *ev)
{
        struct tctx *t = user;

        assert_true(t->n_ev < MAX_EVENTS);
        t->ev[t->n_ev] = *ev;
        t->ev[t->n_ev].publish = NULL; /* points into the client's buffer */
        if (ev->type == MQTT_CLIENT_EV_MESSAGE) {
                size_t n = ev->publish->payload_len < 63 ? ev->publish->payload_len : 63;

                memcpy(t->last_payload, ev->publish->payload, n);
                t->last_payload[n] = '\0';
        }
        t->n_ev++;
}

static size_t count_events(const struct tctx *t, enum mqtt_client_event_type type)
{
        size_t n = 0;

        for (size_t i = 0; i < t->n_ev; i++)
                if (t->ev[i].type == type)
                        n++;
        return n;
}

static const struct mqtt_client_event *last_event(const struct tctx *t, enum mqtt_client_event_type type)
{
        for (size_t i = t->n_ev; i > 0; i--)
                if (t->ev[i - 1].type == type)
                        return &t->ev[i - 1];
        return NULL;
}

static struct tctx T;

static void setup_with(const struct mqtt_client_config *cfg)
{
        memset(&T, 0, sizeof(T));
        T.f.now = 1000;
        T.tp = (struct edge_transport){
                .ctx = &T.f, .connect = fake_connect, .read = fake_read, .write = fake_write,
                .flush = fake_flush, .close = fake_close, .millis = fake_millis,
        };
        mqtt_client_init(&T.c, cfg, &T.tp, on_event, &T);
        mqtt_client_start(&T.c);
}

static const struct mqtt_client_config default_cfg = {
        .client_id = "dev1",
        .clean_session = true,
        .keepalive = 10,
        .retry_ms = 3000,
        .backoff_base_ms = 1000,
        .backoff_max_ms = 60000,
        .seed = 12345,
};

/* Connect and complete the CONNECT/CONNACK exchange. */
static void connect_ok(void)
{
        struct mqtt_packet p;
        uint8_t hold[512];

        assert_int_equal(mqtt_client_poll(&T.c), 0);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTING);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_CONNECT);
        server_connack(&T.f, false, 0);
        assert_int_equal(mqtt_client_poll(&T.c), 0);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTED);
}

/* ---- backoff ---- */

static void test_backoff_bounds_and_growth(void **state)
{
        (void)state;
        const uint32_t base = 1000, max = 60000;
        const uint32_t rnds[] = { 0, 1, 499, 12345, 0x7fffffffu, 0xffffffffu };
        uint32_t prev_lo = 0;

        for (uint32_t attempt = 0; attempt < 40; attempt++) {
                uint64_t cap = (uint64_t)base << (attempt < 32 ? attempt : 32);
                uint32_t lo, hi = UINT32_MAX, lo_seen = UINT32_MAX;

                if (cap > max)
                        cap = max;
                lo = (uint32_t)cap / 2;
                for (size_t i = 0; i < sizeof(rnds) / sizeof(rnds[0]); i++) {
                        uint32_t d = mqtt_backoff_delay_ms(attempt, base, max, rnds[i]);

                        assert_true(d >= lo);
                        assert_true(d <= cap);
                        if (d < lo_seen)
                                lo_seen = d;
                }
                /* rnd = 0 gives the floor, which doubles until the cap. */
                assert_int_equal(mqtt_backoff_delay_ms(attempt, base, max, 0), lo);
                assert_true(lo >= prev_lo);
                prev_lo = lo;
                (void)hi;
        }
        assert_int_equal(mqtt_backoff_delay_ms(0, base, max, 0), 500);
        assert_int_equal(mqtt_backoff_delay_ms(1, base, max, 0), 1000);
        assert_int_equal(mqtt_backoff_delay_ms(3, base, max, 0), 4000);
        assert_int_equal(mqtt_backoff_delay_ms(30, base, max, 0), 30000);
        assert_int_equal(mqtt_backoff_delay_ms(30, base, max, 30000), 60000);
        /* Jitter: different random values give different delays. */
        assert_int_not_equal(mqtt_backoff_delay_ms(4, base, max, 1), mqtt_backoff_delay_ms(4, base, max, 7777));
        /* Degenerate parameters do not trap. */
        assert_true(mqtt_backoff_delay_ms(5, 0, 0, 99) <= 1);
        assert_int_equal(mqtt_backoff_delay_ms(UINT32_MAX, 0xffffffffu, 0xffffffffu, 0), 0x7fffffffu);
}

static void test_connect_failure_backs_off(void **state)
{
        (void)state;
        setup_with(&default_cfg);
        T.f.connect_result = -ECONNREFUSED;

        assert_int_equal(mqtt_client_poll(&T.c), 0);
        assert_int_equal(T.f.connects, 1);
        const struct mqtt_client_event *ev = last_event(&T, MQTT_CLIENT_EV_CONNECT_FAILED);
        assert_non_null(ev);
        assert_int_equal(ev->err, -ECONNREFUSED);
        uint32_t d1 = ev->retry_in_ms;
        assert_true(d1 >= 500 && d1 <= 1000);
        assert_int_equal(mqtt_client_next_timeout_ms(&T.c), d1);

        /* Not before the delay ... */
        T.f.now += d1 - 1;
        mqtt_client_poll(&T.c);
        assert_int_equal(T.f.connects, 1);
        /* ... but at it. */
        T.f.now += 1;
        mqtt_client_poll(&T.c);
        assert_int_equal(T.f.connects, 2);
        uint32_t d2 = last_event(&T, MQTT_CLIENT_EV_CONNECT_FAILED)->retry_in_ms;
        assert_true(d2 >= 1000 && d2 <= 2000);

        /* Success resets the attempt counter once CONNACK arrives. */
        T.f.connect_result = 0;
        T.f.now += d2;
        connect_ok();
        assert_int_equal(T.c.attempt, 0);
}

/* ---- CONNECT, will, birth ---- */

static void test_connect_will_and_birth(void **state)
{
        (void)state;
        struct mqtt_client_config cfg = default_cfg;
        struct mqtt_packet p;
        uint8_t hold[512];

        cfg.will_topic = "dev/dev1/status";
        cfg.will_payload = (const uint8_t *)"offline";
        cfg.will_payload_len = 7;
        cfg.will_qos = 1;
        cfg.will_retain = true;
        cfg.birth_topic = "dev/dev1/status";
        setup_with(&cfg);

        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_CONNECT);
        assert_int_equal(p.u.connect.protocol_level, 4);
        assert_true(p.u.connect.clean_session);
        assert_int_equal(p.u.connect.keepalive, 10);
        assert_memory_equal(p.u.connect.client_id.data, "dev1", 4);
        assert_true(p.u.connect.will_flag);
        assert_true(p.u.connect.will_retain);
        assert_int_equal(p.u.connect.will_qos, 1);
        assert_memory_equal(p.u.connect.will_payload.data, "offline", 7);
        assert_false(take(&T.f, &p, hold)); /* birth only after CONNACK */

        server_connack(&T.f, false, 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBLISH);
        assert_true(p.u.publish.retain);
        assert_int_equal(p.u.publish.qos, 1);
        assert_int_equal(p.u.publish.payload_len, 6);
        assert_memory_equal(p.u.publish.payload, "online", 6);
        server_ack(&T.f, MQTT_PUBACK, p.u.publish.packet_id);
        mqtt_client_poll(&T.c);
        assert_true(last_event(&T, MQTT_CLIENT_EV_PUBACK)->internal);
        assert_int_equal(mqtt_client_inflight(&T.c), 0);
}

/* ---- QoS 1 ---- */

static void test_qos1_retry_with_dup_after_timeout(void **state)
{
        (void)state;
        struct mqtt_packet p;
        uint8_t hold[512];
        int id;

        setup_with(&default_cfg);
        connect_ok();

        id = mqtt_client_publish(&T.c, "t/1", "reading", 7, 1, false);
        assert_true(id > 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBLISH);
        assert_int_equal(p.u.publish.packet_id, id);
        assert_false(p.u.publish.dup);

        /* No PUBACK: nothing before retry_ms ... */
        T.f.now += 2999;
        mqtt_client_poll(&T.c);
        assert_false(take(&T.f, &p, hold));
        /* ... then the same message, same id, DUP=1 (§3.3.1.1). */
        T.f.now += 1;
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBLISH);
        assert_int_equal(p.u.publish.packet_id, id);
        assert_true(p.u.publish.dup);
        assert_memory_equal(p.u.publish.payload, "reading", 7);

        server_ack(&T.f, MQTT_PUBACK, (uint16_t)id);
        mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_PUBACK), 1);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_PUBACK)->packet_id, id);
        assert_false(last_event(&T, MQTT_CLIENT_EV_PUBACK)->internal);
        assert_int_equal(mqtt_client_inflight(&T.c), 0);

        /* Acknowledged: never sent again; a stale PUBACK is ignored. */
        T.f.now += 10000;
        server_ack(&T.f, MQTT_PUBACK, (uint16_t)id);
        mqtt_client_poll(&T.c);
        while (take(&T.f, &p, hold))
                assert_int_not_equal(p.type, MQTT_PUBLISH);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_PUBACK), 1);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTED);
}

static void test_qos1_retry_after_reconnect(void **state)
{
        (void)state;
        struct mqtt_client_config cfg = default_cfg;
        struct mqtt_packet p;
        uint8_t hold[512];
        int id1, id2;

        cfg.retry_ms = 0; /* only on reconnect, as §4.4 has it */
        setup_with(&cfg);
        connect_ok();

        id1 = mqtt_client_publish(&T.c, "t/1", "one", 3, 1, false);
        assert_true(id1 > 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_false(p.u.publish.dup);

        /* The server goes away before PUBACK. */
        T.f.eof = true;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_WAITING);
        assert_int_equal(T.f.closes, 1);
        assert_false(T.f.last_graceful);
        const struct mqtt_client_event *lost = last_event(&T, MQTT_CLIENT_EV_CONNECTION_LOST);
        assert_non_null(lost);
        assert_int_equal(lost->err, -ECONNRESET);
        assert_true(lost->retry_in_ms >= 500 && lost->retry_in_ms <= 1000);

        /* A reading taken while offline is accepted into the outbox. */
        id2 = mqtt_client_publish(&T.c, "t/1", "two", 3, 1, false);
        assert_true(id2 > 0 && id2 != id1);
        assert_int_equal(mqtt_client_inflight(&T.c), 2);
        /* QoS 0 cannot wait. */
        assert_int_equal(mqtt_client_publish(&T.c, "t/0", "x", 1, 0, false), -ENOTCONN);

        T.f.now += lost->retry_in_ms;
        mqtt_client_poll(&T.c);
        assert_int_equal(T.f.connects, 2);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_CONNECT);
        /* Resent in the original order, the first with DUP=1 (§4.4),
         * the second for the first time. */
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBLISH);
        assert_int_equal(p.u.publish.packet_id, id1);
        assert_true(p.u.publish.dup);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.u.publish.packet_id, id2);
        assert_false(p.u.publish.dup);

        server_connack(&T.f, false, 0);
        server_ack(&T.f, MQTT_PUBACK, (uint16_t)id2); /* out of order */
        server_ack(&T.f, MQTT_PUBACK, (uint16_t)id1);
        mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_PUBACK), 2);
        assert_int_equal(mqtt_client_inflight(&T.c), 0);
}

static void test_outbox_full(void **state)
{
        (void)state;
        setup_with(&default_cfg);
        connect_ok();
        for (int i = 0; i < MQTT_CLIENT_OUTBOX; i++)
                assert_true(mqtt_client_publish(&T.c, "t/x", "v", 1, 1, false) > 0);
        assert_int_equal(mqtt_client_publish(&T.c, "t/x", "v", 1, 1, false), -ENOBUFS);
        assert_int_equal(mqtt_client_publish(&T.c, "t/#", "v", 1, 1, false), -EINVAL);
        char big[MQTT_CLIENT_OUTBOX_PACKET + 1];
        memset(big, 'x', sizeof(big));
        assert_int_equal(mqtt_client_publish(&T.c, "t/x", big, sizeof(big), 2, false), -EMSGSIZE);
}

/* ---- keepalive (§3.1.2.10) ---- */

static void test_keepalive_pingreq_timing(void **state)
{
        (void)state;
        struct mqtt_packet p;
        uint8_t hold[512];
        uint32_t t0;

        setup_with(&default_cfg);
        connect_ok();
        t0 = T.f.now; /* CONNECT went out at t0 */
        assert_int_equal(mqtt_client_next_timeout_ms(&T.c), 10000);

        T.f.now = t0 + 9999;
        mqtt_client_poll(&T.c);
        assert_false(take(&T.f, &p, hold));
        T.f.now = t0 + 10000;
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PINGREQ);
        assert_false(take(&T.f, &p, hold));

        /* Answered: no loss at the PINGRESP deadline, next ping one
         * keepalive after this one. */
        server_empty(&T.f, MQTT_PINGRESP);
        T.f.now = t0 + 15000;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTED);
        assert_false(take(&T.f, &p, hold));

        /* Any packet we send restarts the keepalive period. */
        T.f.now = t0 + 17000;
        assert_int_equal(mqtt_client_publish(&T.c, "t/0", "x", 1, 0, false), 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBLISH);
        T.f.now = t0 + 26999;
        mqtt_client_poll(&T.c);
        assert_false(take(&T.f, &p, hold));
        T.f.now = t0 + 27000;
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PINGREQ);
}

static void test_pingresp_timeout(void **state)
{
        (void)state;
        struct mqtt_packet p;
        uint8_t hold[512];
        uint32_t t0;

        setup_with(&default_cfg);
        connect_ok();
        t0 = T.f.now;
        T.f.now = t0 + 10000;
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PINGREQ);

        /* Default PINGRESP wait: keepalive / 2. */
        T.f.now = t0 + 14999;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTED);
        T.f.now = t0 + 15000;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_WAITING);
        assert_int_equal(T.f.closes, 1);
        assert_false(T.f.last_graceful);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_CONNECTION_LOST)->err, -ETIMEDOUT);
}

static void test_connack_timeout(void **state)
{
        (void)state;
        setup_with(&default_cfg);
        mqtt_client_poll(&T.c);
        T.f.now += 9999;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTING);
        T.f.now += 1;
        mqtt_client_poll(&T.c);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_WAITING);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_CONNECTION_LOST)->err, -ETIMEDOUT);
}

/* ---- malformed or out-of-place packets from the server (§4.8) ---- */

static void expect_protocol_close(const void *bytes, size_t len, bool before_connack)
{
        setup_with(&default_cfg);
        if (before_connack)
                mqtt_client_poll(&T.c);
        else
                connect_ok();
        server_raw(&T.f, bytes, len);
        mqtt_client_poll(&T.c);
        const struct mqtt_client_event *ev = last_event(&T, MQTT_CLIENT_EV_CONNECTION_LOST);
        assert_non_null(ev);
        assert_true(ev->err == -EBADMSG || ev->err == -EPROTO);
        assert_non_null(ev->why);
        assert_int_equal(T.f.closes, 1);
        assert_false(T.f.last_graceful);
        /* ... and then reconnect with backoff. */
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_WAITING);
        assert_true(ev->retry_in_ms > 0);
        T.f.now += ev->retry_in_ms;
        mqtt_client_poll(&T.c);
        assert_int_equal(T.f.connects, 2);
}

static void test_malformed_from_server(void **state)
{
        (void)state;
        static const uint8_t reserved_type[] = { 0xf0, 0x00 };
        static const uint8_t connack_long[] = { 0x20, 0x03, 0x00, 0x00, 0x00 };
        static const uint8_t publish_qos3[] = { 0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01 };
        static const uint8_t remaining_5[] = { 0x30, 0xff, 0xff, 0xff, 0xff, 0x01 };
        static const uint8_t puback_flags[] = { 0x42, 0x02, 0x00, 0x01 };
        static const uint8_t topic_wild[] = { 0x30, 0x05, 0x00, 0x03, 'a', '/', '#' };
        static const uint8_t server_subscribe[] = { 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00 };
        static const uint8_t publish_first[] = { 0x30, 0x04, 0x00, 0x01, 'a', 'b' };
        static const uint8_t second_connack[] = { 0x20, 0x02, 0x00, 0x00 };
        static const uint8_t sp_with_clean[] = { 0x20, 0x02, 0x01, 0x00 };

        expect_protocol_close(reserved_type, sizeof(reserved_type), false);
        expect_protocol_close(connack_long, sizeof(connack_long), true);
        expect_protocol_close(publish_qos3, sizeof(publish_qos3), false);
        expect_protocol_close(remaining_5, sizeof(remaining_5), false);
        expect_protocol_close(puback_flags, sizeof(puback_flags), false);
        expect_protocol_close(topic_wild, sizeof(topic_wild), false);
        expect_protocol_close(server_subscribe, sizeof(server_subscribe), false);
        expect_protocol_close(publish_first, sizeof(publish_first), true);
        expect_protocol_close(second_connack, sizeof(second_connack), false);
        expect_protocol_close(sp_with_clean, sizeof(sp_with_clean), true);
}

static void test_oversized_packet_skipped(void **state)
{
        (void)state;
        uint8_t big[3 + MQTT_CLIENT_RX_BUF + 16];
        size_t rl = sizeof(big) - 3;

        setup_with(&default_cfg);
        connect_ok();
        memset(big, 'x', sizeof(big));
        big[0] = 0x30;
        big[1] = (uint8_t)(0x80 | (rl & 0x7f));
        big[2] = (uint8_t)(rl >> 7);
        big[3] = 0x00;
        big[4] = 0x03;
        server_raw(&T.f, big, sizeof(big));
        server_publish(&T.f, "a/b", "after", 0, 0, false);
        for (int i = 0; i < 4; i++)
                mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_DROPPED), 1);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_MESSAGE), 1);
        assert_string_equal(T.last_payload, "after");
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_CONNECTED);
}

static void test_connack_refused(void **state)
{
        (void)state;
        setup_with(&default_cfg);
        mqtt_client_poll(&T.c);
        server_connack(&T.f, false, MQTT_CONNACK_NOT_AUTHORIZED);
        mqtt_client_poll(&T.c);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_CONNACK)->return_code, 5);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_CONNECTION_LOST)->err, -ECONNREFUSED);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_WAITING);
}

/* ---- QoS 2 (§4.3.3) ---- */

static void test_qos2_receive_once(void **state)
{
        (void)state;
        struct mqtt_packet p;
        uint8_t hold[512];

        setup_with(&default_cfg);
        connect_ok();
        server_publish(&T.f, "cmd/led", "on", 2, 7, false);
        mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_MESSAGE), 1);
        assert_string_equal(T.last_payload, "on");
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBREC);
        assert_int_equal(p.u.packet_id, 7);

        /* The server did not see PUBREC and resends: no second delivery. */
        server_publish(&T.f, "cmd/led", "on", 2, 7, true);
        mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_MESSAGE), 1);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBREC);

        server_ack(&T.f, MQTT_PUBREL, 7);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBCOMP);
        assert_int_equal(p.u.packet_id, 7);

        /* After PUBREL the id is free: a new message with it is new. */
        server_publish(&T.f, "cmd/led", "off", 2, 7, false);
        mqtt_client_poll(&T.c);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_MESSAGE), 2);

        /* QoS 1 receive: delivered, PUBACK. */
        server_publish(&T.f, "cmd/led", "q1", 1, 9, false);
        mqtt_client_poll(&T.c);
        while (take(&T.f, &p, hold) && p.type != MQTT_PUBACK)
                ;
        assert_int_equal(p.type, MQTT_PUBACK);
        assert_int_equal(p.u.packet_id, 9);
}

static void test_qos2_publish(void **state)
{
        (void)state;
        struct mqtt_packet p;
        uint8_t hold[512];
        int id;

        setup_with(&default_cfg);
        connect_ok();
        id = mqtt_client_publish(&T.c, "t/2", "exactly-once", 12, 2, false);
        assert_true(id > 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.u.publish.qos, 2);

        server_ack(&T.f, MQTT_PUBREC, (uint16_t)id);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBREL);
        assert_int_equal(p.u.packet_id, id);

        /* From now on PUBREL is what gets retried, never the PUBLISH. */
        T.f.now += 3000;
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_PUBREL);

        server_ack(&T.f, MQTT_PUBCOMP, (uint16_t)id);
        mqtt_client_poll(&T.c);
        assert_int_equal(last_event(&T, MQTT_CLIENT_EV_PUBCOMP)->packet_id, id);
        assert_int_equal(mqtt_client_inflight(&T.c), 0);
}

/* ---- subscribe, disconnect, abort ---- */

static void test_subscribe_and_disconnect(void **state)
{
        (void)state;
        static const char *const filters[] = { "cmd/#", "cfg/+" };
        static const uint8_t qos[] = { 1, 0 };
        static const uint8_t suback[] = { 0x90, 0x04, 0x00, 0x00, 0x01, 0x80 };
        uint8_t sb[sizeof(suback)];
        struct mqtt_packet p;
        uint8_t hold[512];
        int id;

        setup_with(&default_cfg);
        connect_ok();
        id = mqtt_client_subscribe(&T.c, filters, qos, 2);
        assert_true(id > 0);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_SUBSCRIBE);
        assert_int_equal(p.u.list.count, 2);

        memcpy(sb, suback, sizeof(sb));
        sb[2] = (uint8_t)(id >> 8);
        sb[3] = (uint8_t)id;
        server_raw(&T.f, sb, sizeof(sb));
        mqtt_client_poll(&T.c);
        const struct mqtt_client_event *ev = last_event(&T, MQTT_CLIENT_EV_SUBACK);
        assert_non_null(ev);
        assert_int_equal(ev->packet_id, id);
        assert_int_equal(ev->n_codes, 2);

        static const char *const bad[] = { "a/#/b" };
        assert_int_equal(mqtt_client_unsubscribe(&T.c, bad, 1), -EINVAL);

        mqtt_client_disconnect(&T.c);
        mqtt_client_poll(&T.c);
        assert_true(take(&T.f, &p, hold));
        assert_int_equal(p.type, MQTT_DISCONNECT);
        assert_int_equal(mqtt_client_get_state(&T.c), MQTT_CLIENT_STOPPED);
        assert_true(T.f.last_graceful);
        assert_int_equal(count_events(&T, MQTT_CLIENT_EV_CLOSED), 1);
        assert_int_equal(mqtt_client_poll(&T.c), -ENOTCONN);
        assert_int_equal(mqtt_client_next_timeout_ms(&T.c), UINT32_MAX);
}

static void test_coalesced_connect(void **state)
{
        (void)state;
        /* Everything queued before the first poll's write leaves in one
         * write + one flush (one TLS record on the device). */
        setup_with(&default_cfg);
        T.f.connect_result = 0;
        mqtt_client_poll(&T.c);
        unsigned flushes = T.f.flushes;
        assert_true(mqtt_client_publish(&T.c, "t/1", "a", 1, 1, false) > 0);
        assert_int_equal(mqtt_client_publish(&T.c, "t/0", "b", 1, 0, false), 0);
        mqtt_client_poll(&T.c);
        assert_int_equal(T.f.flushes, flushes + 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_backoff_bounds_and_growth),
                cmocka_unit_test(test_connect_failure_backs_off),
                cmocka_unit_test(test_connect_will_and_birth),
                cmocka_unit_test(test_qos1_retry_with_dup_after_timeout),
                cmocka_unit_test(test_qos1_retry_after_reconnect),
                cmocka_unit_test(test_outbox_full),
                cmocka_unit_test(test_keepalive_pingreq_timing),
                cmocka_unit_test(test_pingresp_timeout),
                cmocka_unit_test(test_connack_timeout),
                cmocka_unit_test(test_malformed_from_server),
                cmocka_unit_test(test_oversized_packet_skipped),
                cmocka_unit_test(test_connack_refused),
                cmocka_unit_test(test_qos2_receive_once),
                cmocka_unit_test(test_qos2_publish),
                cmocka_unit_test(test_subscribe_and_disconnect),
                cmocka_unit_test(test_coalesced_connect),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
