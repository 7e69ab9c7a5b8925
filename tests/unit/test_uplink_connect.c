/* SPDX-License-Identifier: MIT */
/* The uplink's CONNECT builder (src/uplink_connect.c): what the broker
 * receives from uplink_params, and what is refused before it is sent. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "uplink_connect.h"

static const struct uplink_params base = {
        .client_id = "sensor-1",
        .clean_session = true,
        .keepalive = 30,
        .protocol_level = MQTT_PROTOCOL_LEVEL_311,
        .name = "sensor-1",
};

/* Encode p into buf and parse it back with the codec. */
static int round_trip(const struct uplink_params *p, uint8_t *buf, size_t cap, struct mqtt_packet *pkt)
{
        const char *why = NULL;
        int n = uplink_encode_connect(buf, cap, p, &why);

        if (n < 0)
                return n;
        assert_true((size_t) n <= uplink_connect_size(p));
        assert_int_equal(mqtt_parse(buf, (size_t) n, pkt, &why), 0);
        assert_int_equal(pkt->type, MQTT_CONNECT);
        return n;
}

static void test_minimal(void **state)
{
        uint8_t buf[64];
        struct mqtt_packet pkt;
        (void) state;

        int n = round_trip(&base, buf, sizeof buf, &pkt);
        /* §3.1: 0x10, rl, "MQTT", level 4, flags 0x02, keepalive 30, id. */
        static const uint8_t want[] = { 0x10, 20, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30,
                                        0, 8, 's', 'e', 'n', 's', 'o', 'r', '-', '1' };
        assert_int_equal(n, (int) sizeof want);
        assert_memory_equal(buf, want, sizeof want);
        assert_int_equal(uplink_connect_size(&base), sizeof want + 3 /* upper bound: 5-byte header, MQIsdp */ + 2);
}

static void test_everything(void **state)
{
        static const uint8_t pw[] = { 0, 1, 2, 0xff }; /* binary, §3.1.3.5 */
        struct uplink_params p = base;
        uint8_t buf[256];
        struct mqtt_packet pkt;
        (void) state;

        p.clean_session = false;
        p.keepalive = 0;
        p.username = (const uint8_t *) "user";
        p.username_len = 4;
        p.password = pw;
        p.password_len = sizeof pw;
        p.will_topic = "devices/sensor-1/status";
        p.will_payload = "offline";
        p.will_len = 7;
        p.will_qos = 1;
        p.will_retain = true;
        round_trip(&p, buf, sizeof buf, &pkt);
        const struct mqtt_connect *c = &pkt.u.connect;
        assert_int_equal(c->protocol_level, 4);
        assert_false(c->clean_session);
        assert_int_equal(c->keepalive, 0);
        assert_true(c->will_flag);
        assert_int_equal(c->will_qos, 1);
        assert_true(c->will_retain);
        assert_int_equal(c->will_topic.len, strlen(p.will_topic));
        assert_memory_equal(c->will_topic.data, p.will_topic, c->will_topic.len);
        assert_int_equal(c->will_payload.len, 7);
        assert_memory_equal(c->will_payload.data, "offline", 7);
        assert_true(c->has_username);
        assert_memory_equal(c->username.data, "user", 4);
        assert_true(c->has_password);
        assert_int_equal(c->password.len, sizeof pw);
        assert_memory_equal(c->password.data, pw, sizeof pw);
}

static void test_mqtt31_and_empty_id(void **state)
{
        struct uplink_params p = base;
        uint8_t buf[64];
        struct mqtt_packet pkt;
        (void) state;

        p.protocol_level = MQTT_PROTOCOL_LEVEL_31;
        p.client_id = "";
        round_trip(&p, buf, sizeof buf, &pkt);
        assert_memory_equal(buf + 2, "\0\6MQIsdp\3", 9);
        assert_int_equal(pkt.u.connect.client_id.len, 0);

        /* NULL client id is the empty one; an empty password is a password. */
        p.client_id = NULL;
        p.username = (const uint8_t *) "";
        p.password = (const uint8_t *) "";
        round_trip(&p, buf, sizeof buf, &pkt);
        assert_true(pkt.u.connect.has_username);
        assert_true(pkt.u.connect.has_password);
        assert_int_equal(pkt.u.connect.password.len, 0);
}

static void expect_invalid(const struct uplink_params *p, const char *reason_part)
{
        uint8_t buf[256];
        const char *why = NULL;

        assert_int_equal(uplink_encode_connect(buf, sizeof buf, p, &why), -EINVAL);
        assert_non_null(why);
        assert_non_null(strstr(why, reason_part));
}

static void test_refused(void **state)
{
        struct uplink_params p;
        (void) state;

        p = base;
        p.client_id = "";
        p.clean_session = false;
        expect_invalid(&p, "§3.1.3.1");

        p = base;
        p.password = (const uint8_t *) "pw";
        p.password_len = 2;
        expect_invalid(&p, "password without a user name");

        p = base;
        p.protocol_level = 5;
        expect_invalid(&p, "protocol level");

        p = base;
        p.will_topic = "a/+/b";
        expect_invalid(&p, "will topic");
        p.will_topic = "";
        expect_invalid(&p, "will topic");
        p.will_topic = "a/b";
        p.will_qos = 3;
        expect_invalid(&p, "will QoS");

        p = base;
        p.client_id = "bad\xff";
        expect_invalid(&p, "UTF-8");

        p = base;
        p.username = (const uint8_t *) "u\0x";  /* U+0000: §1.5.3 */
        p.username_len = 3;
        expect_invalid(&p, "UTF-8");

        char *big = malloc(70000);
        assert_non_null(big);
        memset(big, 'a', 69999);
        big[69999] = 0;
        p = base;
        p.client_id = big;
        expect_invalid(&p, "65535");
        free(big);

        assert_int_equal(uplink_encode_connect(NULL, 0, NULL, NULL), -EINVAL);
}

static void test_small_buffer(void **state)
{
        uint8_t buf[64];
        (void) state;

        for (size_t cap = 0; cap < 22; cap++)
                assert_int_equal(uplink_encode_connect(cap ? buf : NULL, cap, &base, NULL), -ENOBUFS);
        assert_int_equal(uplink_encode_connect(buf, 22, &base, NULL), 22);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_minimal),
                cmocka_unit_test(test_everything),
                cmocka_unit_test(test_mqtt31_and_empty_id),
                cmocka_unit_test(test_refused),
                cmocka_unit_test(test_small_buffer),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
