/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for mqtt_codec (MQTT 3.1 / 3.1.1). Section numbers refer to
 * the OASIS MQTT 3.1.1 standard.
 */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mqtt_codec.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define S(lit) ((const uint8_t *) (lit)), (sizeof(lit) - 1)
#define STR(lit) ((struct mqtt_str){ (const uint8_t *) (lit), (uint16_t) (sizeof(lit) - 1) })

/* Parse a byte literal; returns the parser's result and keeps *why set. */
static int parse_bytes(const uint8_t *b, size_t n, struct mqtt_packet *pk, const char **why) {
        *why = NULL;
        return mqtt_parse(b, n, pk, why);
}

/* C99 compound literals keep each packet next to its assertion. */
#define PARSE(pk, why, ...)                                                                       \
        parse_bytes((const uint8_t[]){ __VA_ARGS__ }, sizeof((const uint8_t[]){ __VA_ARGS__ }), (pk), (why))

/* Parse and check that a rejection comes with a reason. */
static int parse_arr(const uint8_t *b, size_t n) {
        struct mqtt_packet pk;
        const char *why = NULL;
        int r = mqtt_parse(b, n, &pk, &why);

        if (r != 0)
                assert_non_null(why); /* every rejection says why */
        return r;
}
#define EXPECT_PARSE(ret, ...)                                                                    \
        do {                                                                                      \
                static const uint8_t pkt_[] = { __VA_ARGS__ };                                    \
                assert_int_equal(parse_arr(pkt_, sizeof(pkt_)), (ret));                           \
        } while (0)

static bool str_eq(struct mqtt_str s, const char *lit) {
        size_t n = strlen(lit);
        return s.len == n && (n == 0 || memcmp(s.data, lit, n) == 0);
}

/* ---------------------------------------------------------------- frame */

static void frame_header(uint8_t *b, size_t rl, size_t *hlen) {
        size_t i = 1;

        b[0] = 0x30;
        do {
                uint8_t d = rl & 0x7f;
                rl >>= 7;
                b[i++] = d | (rl ? 0x80 : 0);
        } while (rl);
        *hlen = i;
}

static void test_frame_remaining_length_edges(void **state) {
        static const struct {
                size_t rl;
                size_t hlen;
        } cases[] = {
                { 0, 2 },         { 127, 2 },       { 128, 3 },       { 16383, 3 },
                { 16384, 4 },     { 2097151, 4 },   { 2097152, 5 },   { 268435455, 5 },
        };
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                uint8_t b[8];
                size_t hlen, plen = 0;

                frame_header(b, cases[i].rl, &hlen);
                assert_int_equal(hlen, cases[i].hlen);
                /* Only the header has arrived: need more, unless rl = 0. */
                if (cases[i].rl == 0) {
                        assert_int_equal(mqtt_frame(b, hlen, 0, &plen), 1);
                        assert_int_equal(plen, 2);
                } else {
                        assert_int_equal(mqtt_frame(b, hlen, 0, &plen), 0);
                        assert_int_equal(plen, 0);
                }
                /* Every shorter prefix of the header: need more. */
                for (size_t k = 0; k < hlen; k++)
                        assert_int_equal(mqtt_frame(b, k, 0, &plen), 0);
                /* Oversized relative to max_packet, known from the header alone. */
                if (cases[i].rl > 0)
                        assert_int_equal(mqtt_frame(b, hlen, hlen + cases[i].rl - 1, &plen), -EMSGSIZE);
                /* Exactly max_packet is fine. */
                assert_true(mqtt_frame(b, hlen, hlen + cases[i].rl, &plen) >= 0);
        }
}

static void test_frame_whole_packets(void **state) {
        size_t plen = 0;
        uint8_t *big;
        size_t hlen;
        (void) state;

        /* 2097152-byte body: header says 5 bytes of header... build it. */
        big = calloc(1, 2097152 + 5);
        assert_non_null(big);
        frame_header(big, 2097152, &hlen);
        assert_int_equal(mqtt_frame(big, hlen + 2097152, 0, &plen), 1);
        assert_int_equal(plen, hlen + 2097152);
        assert_int_equal(mqtt_frame(big, hlen + 2097151, 0, &plen), 0);
        /* Extra bytes after the packet belong to the next one. */
        assert_int_equal(mqtt_frame(big, hlen + 2097152 + 1, 0, &plen), 1);
        assert_int_equal(plen, hlen + 2097152);
        free(big);

        /* Two packets back to back: the frame is the first only. */
        {
                static const uint8_t two[] = { 0xc0, 0x00, 0xd0, 0x00 };
                assert_int_equal(mqtt_frame(two, sizeof(two), 0, &plen), 1);
                assert_int_equal(plen, 2);
        }
}

static void test_frame_five_byte_length(void **state) {
        static const uint8_t five[] = { 0x30, 0xff, 0xff, 0xff, 0xff, 0x7f };
        static const uint8_t four_cont[] = { 0x30, 0x80, 0x80, 0x80, 0x80 };
        size_t plen = 0;
        (void) state;

        /* §2.2.3: the 4th byte may not carry a continuation bit; known
         * without seeing the 5th. */
        assert_int_equal(mqtt_frame(five, sizeof(five), 0, &plen), -EBADMSG);
        assert_int_equal(mqtt_frame(five, 5, 0, &plen), -EBADMSG);
        assert_int_equal(mqtt_frame(four_cont, sizeof(four_cont), 0, &plen), -EBADMSG);
        assert_int_equal(plen, 0);
}

static void test_frame_max_rl(void **state) {
        static const uint8_t hdr[] = { 0x30, 0xff, 0xff, 0xff, 0x7f };
        size_t plen = 0;
        (void) state;

        assert_int_equal(mqtt_frame(hdr, sizeof(hdr), 0, &plen), 0);
        assert_int_equal(mqtt_frame(hdr, sizeof(hdr), 268435460u, &plen), 0);
        assert_int_equal(mqtt_frame(hdr, sizeof(hdr), 268435459u, &plen), -EMSGSIZE);
        assert_int_equal(mqtt_frame(hdr, sizeof(hdr), 1024, &plen), -EMSGSIZE);
}

static void test_frame_partial_header_oversize(void **state) {
        /* rl at least 0x7f + 0x7f*128 after two continuation bytes. */
        static const uint8_t part[] = { 0x30, 0xff, 0xff };
        static const uint8_t small[] = { 0x30, 0x80 };
        size_t plen = 0;
        (void) state;

        assert_int_equal(mqtt_frame(part, sizeof(part), 1024, &plen), -EMSGSIZE);
        assert_int_equal(mqtt_frame(part, sizeof(part), 0, &plen), 0);
        /* 0x80 could still be followed by 0x00 (non-minimal, rl 0). */
        assert_int_equal(mqtt_frame(small, sizeof(small), 3, &plen), 0);
        assert_int_equal(mqtt_frame(small, sizeof(small), 2, &plen), -EMSGSIZE);
}

static void test_frame_non_minimal(void **state) {
        /* PINGREQ with rl 0 encoded in 2 bytes: accepted by frame and parse. */
        static const uint8_t p[] = { 0xc0, 0x80, 0x00 };
        struct mqtt_packet pk;
        const char *why;
        size_t plen = 0;
        (void) state;

        assert_int_equal(mqtt_frame(p, sizeof(p), 0, &plen), 1);
        assert_int_equal(plen, 3);
        assert_int_equal(parse_bytes(p, sizeof(p), &pk, &why), 0);
        assert_int_equal(pk.type, MQTT_PINGREQ);
}

/* --------------------------------------------------------------- CONNECT */

static void test_parse_connect_minimal(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0e, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0x00, 0x3c, 0, 2, 'i',
                               'd'),
                         0);
        assert_int_equal(pk.type, MQTT_CONNECT);
        assert_int_equal(pk.u.connect.protocol_level, 4);
        assert_true(pk.u.connect.clean_session);
        assert_int_equal(pk.u.connect.keepalive, 60);
        assert_true(str_eq(pk.u.connect.client_id, "id"));
        assert_false(pk.u.connect.will_flag);
        assert_false(pk.u.connect.has_username);
        assert_false(pk.u.connect.has_password);
        assert_null(pk.u.connect.username.data);
        assert_null(pk.u.connect.password.data);
        assert_null(pk.u.connect.will_topic.data);
}

static void test_parse_connect_full(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        /* MQIsdp/3, will qos 2 retain, user + binary password with NUL. */
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x20, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3, 0xf4, 0x00, 0x0a, 0,
                               1, 'c', 0, 3, 'w', '/', 't', 0, 2, 0x00, 0xff, 0, 1, 'u', 0, 3, 0x00, 0xc0, 0xff),
                         0);
        assert_int_equal(pk.u.connect.protocol_level, 3);
        assert_false(pk.u.connect.clean_session);
        assert_int_equal(pk.u.connect.keepalive, 10);
        assert_true(pk.u.connect.will_flag);
        assert_int_equal(pk.u.connect.will_qos, 2);
        assert_true(pk.u.connect.will_retain);
        assert_true(str_eq(pk.u.connect.will_topic, "w/t"));
        assert_int_equal(pk.u.connect.will_payload.len, 2);
        assert_int_equal(pk.u.connect.will_payload.data[1], 0xff);
        assert_true(pk.u.connect.has_username);
        assert_true(str_eq(pk.u.connect.username, "u"));
        assert_true(pk.u.connect.has_password);
        assert_int_equal(pk.u.connect.password.len, 3);
        assert_int_equal(pk.u.connect.password.data[0], 0x00);
}

static void test_parse_connect_empty_client_id(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        /* §3.1.3.1: the session decides about empty ids, not the codec. */
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x00, 0, 0, 0, 0), 0);
        assert_int_equal(pk.u.connect.client_id.len, 0);
        assert_non_null(pk.u.connect.client_id.data);
}

static void test_parse_connect_protocol(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        /* MQTT level 5 (an MQTT 5 client): CONNACK 1 material. */
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, 0),
                         -EPROTONOSUPPORT);
        assert_int_equal(pk.u.connect.protocol_level, 5);
        assert_non_null(why);
        /* MQTT with level 3, MQIsdp with level 4: mismatched pairs. */
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 3, 0x02, 0, 60, 0, 0),
                         -EPROTONOSUPPORT);
        assert_int_equal(pk.u.connect.protocol_level, 3);
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0e, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 0x02, 0, 60, 0, 0),
                         -EPROTONOSUPPORT);
        assert_int_equal(pk.u.connect.protocol_level, 4);
        /* A garbage name: not MQTT at all → -EPROTO. */
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0c, 0, 4, 'H', 'T', 'T', 'P', 4, 0x02, 0, 60, 0, 0), -EPROTO);
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x0c, 0, 4, 'm', 'q', 't', 't', 4, 0x02, 0, 60, 0, 0), -EPROTO);
        assert_int_equal(PARSE(&pk, &why, 0x10, 0x08, 0, 0, 4, 0x02, 0, 60, 0, 0), -EPROTO);
        /* Name truncated, level missing. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x03, 0, 4, 'M');
        EXPECT_PARSE(-EBADMSG, 0x10, 0x06, 0, 4, 'M', 'Q', 'T', 'T');
        EXPECT_PARSE(-EBADMSG, 0x10, 0x00);
}

static void test_parse_connect_flags(void **state) {
        (void) state;

        /* Fixed header flags must be 0 (§2.2.2). */
        EXPECT_PARSE(-EPROTO, 0x11, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0);
        /* Reserved connect flag [MQTT-3.1.2-3]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 60, 0, 0);
        /* Will QoS without will [MQTT-3.1.2-13]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x0a, 0, 60, 0, 0);
        /* Will retain without will [MQTT-3.1.2-15]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x22, 0, 60, 0, 0);
        /* Will QoS 3 [MQTT-3.1.2-14]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x11, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x1e, 0, 60, 0, 0, 0, 1, 't', 0, 0);
        /* Password without user name [MQTT-3.1.2-22]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x0e, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x42, 0, 60, 0, 0, 0, 0);
        EXPECT_PARSE(-EPROTO, 0x10, 0x10, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3, 0x42, 0, 60, 0, 0, 0, 0);
        /* Truncated before flags / keepalive. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x07, 0, 4, 'M', 'Q', 'T', 'T', 4);
        EXPECT_PARSE(-EBADMSG, 0x10, 0x09, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0);
}

static void test_parse_connect_fields(void **state) {
        (void) state;

        /* Client id missing or truncated. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0a, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60);
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 2, 'a');
        /* Client id with U+0000 [MQTT-1.5.3-2]. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 0x00);
        /* Trailing byte after client id (no flags for more fields). */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0, 'x');
        /* Will flag but no will topic / message. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0);
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0, 0, 1, 't');
        /* Will topic with a wildcard or empty. */
        EXPECT_PARSE(-EPROTO, 0x10, 0x11, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0, 0, 1, '#', 0, 0);
        EXPECT_PARSE(-EPROTO, 0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0, 0, 0, 0, 0);
        /* Will valid (qos 1), then trailing byte. */
        EXPECT_PARSE(0, 0x10, 0x11, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x0e, 0, 60, 0, 0, 0, 1, 't', 0, 0);
        EXPECT_PARSE(-EBADMSG, 0x10, 0x12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x0e, 0, 60, 0, 0, 0, 1, 't', 0, 0, 9);
        /* User name flag but user name missing; user name bad UTF-8. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 60, 0, 0);
        EXPECT_PARSE(-EPROTO, 0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 60, 0, 0, 0, 1, 0xff);
        /* User name present but flag clear: trailing bytes [MQTT-3.1.2-18]. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0, 0, 1, 'u');
        /* Password flag, password missing / truncated. */
        EXPECT_PARSE(-EBADMSG, 0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc2, 0, 60, 0, 0, 0, 1, 'u');
        EXPECT_PARSE(-EBADMSG, 0x10, 0x11, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc2, 0, 60, 0, 0, 0, 1, 'u', 0, 5);
        /* Password is binary: invalid UTF-8 is fine. */
        EXPECT_PARSE(0, 0x10, 0x12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc2, 0, 60, 0, 0, 0, 1, 'u', 0, 1, 0xff);
        /* Will message is binary too. */
        EXPECT_PARSE(0, 0x10, 0x12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, 0, 0, 0, 1, 't', 0, 1, 0x00);
}

/* --------------------------------------------------------------- CONNACK */

static void test_parse_connack(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0x20, 0x02, 0x01, 0x00), 0);
        assert_int_equal(pk.type, MQTT_CONNACK);
        assert_true(pk.u.connack.session_present);
        assert_int_equal(pk.u.connack.return_code, 0);
        assert_int_equal(PARSE(&pk, &why, 0x20, 0x02, 0x00, 0x05), 0);
        assert_false(pk.u.connack.session_present);
        assert_int_equal(pk.u.connack.return_code, MQTT_CONNACK_NOT_AUTHORIZED);

        EXPECT_PARSE(-EPROTO, 0x21, 0x02, 0x00, 0x00);  /* flags */
        EXPECT_PARSE(-EBADMSG, 0x20, 0x01, 0x00);       /* short */
        EXPECT_PARSE(-EBADMSG, 0x20, 0x03, 0x00, 0x00, 0x00); /* trailing */
        EXPECT_PARSE(-EBADMSG, 0x20, 0x00);
        EXPECT_PARSE(-EPROTO, 0x20, 0x02, 0x02, 0x00);  /* reserved ack flag bit */
        EXPECT_PARSE(-EPROTO, 0x20, 0x02, 0x80, 0x00);
        EXPECT_PARSE(-EPROTO, 0x20, 0x02, 0x00, 0x06);  /* reserved return code */
        EXPECT_PARSE(-EPROTO, 0x20, 0x02, 0x01, 0x05);  /* [MQTT-3.2.2-4] */
}

/* --------------------------------------------------------------- PUBLISH */

static void test_parse_publish(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0x30, 0x05, 0, 1, 'a', 'h', 'i'), 0);
        assert_int_equal(pk.type, MQTT_PUBLISH);
        assert_int_equal(pk.u.publish.qos, 0);
        assert_false(pk.u.publish.dup);
        assert_false(pk.u.publish.retain);
        assert_true(str_eq(pk.u.publish.topic, "a"));
        assert_int_equal(pk.u.publish.packet_id, 0);
        assert_int_equal(pk.u.publish.payload_len, 2);
        assert_memory_equal(pk.u.publish.payload, "hi", 2);

        assert_int_equal(PARSE(&pk, &why, 0x3d, 0x07, 0, 3, 'a', '/', 'b', 0x12, 0x34), 0);
        assert_true(pk.u.publish.dup);
        assert_int_equal(pk.u.publish.qos, 2);
        assert_true(pk.u.publish.retain);
        assert_int_equal(pk.u.publish.packet_id, 0x1234);
        assert_int_equal(pk.u.publish.payload_len, 0);
        assert_int_equal(pk.flags, 0x0d);

        assert_int_equal(PARSE(&pk, &why, 0x32, 0x05, 0, 1, 'x', 0, 1), 0);
        assert_int_equal(pk.u.publish.qos, 1);
        assert_int_equal(pk.u.publish.packet_id, 1);

        /* A '$' topic is a perfectly valid name. */
        EXPECT_PARSE(0, 0x30, 0x06, 0, 4, '$', 'S', 'Y', 'S');
}

static void test_parse_publish_malformed(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        /* QoS 3 [MQTT-3.3.1-4]. */
        assert_int_equal(PARSE(&pk, &why, 0x36, 0x05, 0, 1, 'a', 0, 1), -EPROTO);
        assert_non_null(strstr(why, "3.3.1"));
        /* DUP on QoS 0 [MQTT-3.3.1-2]. */
        EXPECT_PARSE(-EPROTO, 0x38, 0x03, 0, 1, 'a');
        /* Topic empty [MQTT-4.7.3-1], wildcards [MQTT-3.3.2-2]. */
        EXPECT_PARSE(-EPROTO, 0x30, 0x02, 0, 0);
        EXPECT_PARSE(-EPROTO, 0x30, 0x03, 0, 1, '#');
        EXPECT_PARSE(-EPROTO, 0x30, 0x05, 0, 3, 'a', '/', '+');
        EXPECT_PARSE(-EPROTO, 0x30, 0x04, 0, 2, 'a', '+');
        /* Topic with U+0000, with a surrogate, bad UTF-8. */
        EXPECT_PARSE(-EPROTO, 0x30, 0x03, 0, 1, 0x00);
        EXPECT_PARSE(-EPROTO, 0x30, 0x05, 0, 3, 0xed, 0xa0, 0x80);
        EXPECT_PARSE(-EPROTO, 0x30, 0x03, 0, 1, 0x80);
        /* Topic length longer than the packet. */
        EXPECT_PARSE(-EBADMSG, 0x30, 0x03, 0, 5, 'a');
        EXPECT_PARSE(-EBADMSG, 0x30, 0x01, 0);
        EXPECT_PARSE(-EBADMSG, 0x30, 0x00);
        /* QoS 1 without packet id, with a zero one [MQTT-2.3.1-1]. */
        EXPECT_PARSE(-EBADMSG, 0x32, 0x03, 0, 1, 'a');
        EXPECT_PARSE(-EBADMSG, 0x32, 0x04, 0, 1, 'a', 0);
        EXPECT_PARSE(-EPROTO, 0x34, 0x05, 0, 1, 'a', 0, 0);
        /* Declared remaining length differs from the bytes handed in. */
        EXPECT_PARSE(-EBADMSG, 0x30, 0x05, 0, 1, 'a', 'b');
        EXPECT_PARSE(-EBADMSG, 0x30, 0x03, 0, 1, 'a', 'b');
}

/* ------------------------------------------------------------------ acks */

static void test_parse_acks(void **state) {
        static const struct {
                uint8_t first;
                enum mqtt_type type;
        } ok[] = {
                { 0x40, MQTT_PUBACK },  { 0x50, MQTT_PUBREC },  { 0x62, MQTT_PUBREL },
                { 0x70, MQTT_PUBCOMP }, { 0xb0, MQTT_UNSUBACK },
        };
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
                uint8_t b[5] = { ok[i].first, 2, 0xab, 0xcd, 0 };
                uint8_t first = ok[i].first;

                assert_int_equal(parse_bytes(b, 4, &pk, &why), 0);
                assert_int_equal(pk.type, ok[i].type);
                assert_int_equal(pk.u.packet_id, 0xabcd);
                /* Zero packet id [MQTT-2.3.1-1]. */
                b[2] = b[3] = 0;
                assert_int_equal(parse_bytes(b, 4, &pk, &why), -EPROTO);
                b[3] = 1;
                /* Every other flag value is wrong (§2.2.2). */
                for (unsigned f = 0; f < 16; f++) {
                        b[0] = (uint8_t) ((first & 0xf0) | f);
                        assert_int_equal(parse_bytes(b, 4, &pk, &why), (b[0] == first) ? 0 : -EPROTO);
                }
                b[0] = first;
                /* Remaining length must be exactly 2. */
                b[1] = 3;
                assert_int_equal(parse_bytes(b, 5, &pk, &why), -EBADMSG);
                b[1] = 1;
                assert_int_equal(parse_bytes(b, 3, &pk, &why), -EBADMSG);
                b[1] = 0;
                assert_int_equal(parse_bytes(b, 2, &pk, &why), -EBADMSG);
        }
}

/* ------------------------------------------------------- SUBSCRIBE & co */

static void test_parse_subscribe(void **state) {
        struct mqtt_packet pk;
        struct mqtt_list_iter it;
        struct mqtt_str f;
        uint8_t q = 0xee;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0x82, 0x0f, 0x00, 0x07, 0, 3, 'a', '/', '#', 0x01, 0, 4, '+', '/', 'b',
                               '/', 0x02),
                         0);
        assert_int_equal(pk.type, MQTT_SUBSCRIBE);
        assert_int_equal(pk.u.list.packet_id, 7);
        assert_int_equal(pk.u.list.count, 2);
        mqtt_list_iter_init(&it, pk.type, &pk.u.list);
        assert_true(mqtt_list_next(&it, &f, &q));
        assert_true(str_eq(f, "a/#"));
        assert_int_equal(q, 1);
        assert_true(mqtt_list_next(&it, &f, &q));
        assert_true(str_eq(f, "+/b/"));
        assert_int_equal(q, 2);
        assert_false(mqtt_list_next(&it, &f, &q));
        assert_false(mqtt_list_next(&it, &f, &q));
}

static void test_parse_subscribe_malformed(void **state) {
        (void) state;

        /* Flags must be 0b0010 [MQTT-3.8.1-1]. */
        EXPECT_PARSE(-EPROTO, 0x80, 0x06, 0, 1, 0, 1, 'a', 0);
        EXPECT_PARSE(-EPROTO, 0x83, 0x06, 0, 1, 0, 1, 'a', 0);
        /* Empty [MQTT-3.8.3-3]. */
        EXPECT_PARSE(-EPROTO, 0x82, 0x02, 0, 1);
        /* Zero packet id; missing packet id. */
        EXPECT_PARSE(-EPROTO, 0x82, 0x06, 0, 0, 0, 1, 'a', 0);
        EXPECT_PARSE(-EBADMSG, 0x82, 0x01, 0);
        /* Requested QoS 3, reserved bits [MQTT-3-8.3-4]. */
        EXPECT_PARSE(-EPROTO, 0x82, 0x06, 0, 1, 0, 1, 'a', 3);
        EXPECT_PARSE(-EPROTO, 0x82, 0x06, 0, 1, 0, 1, 'a', 0x40);
        EXPECT_PARSE(-EPROTO, 0x82, 0x06, 0, 1, 0, 1, 'a', 0x81);
        /* Missing QoS byte; filter truncated. */
        EXPECT_PARSE(-EBADMSG, 0x82, 0x05, 0, 1, 0, 1, 'a');
        EXPECT_PARSE(-EBADMSG, 0x82, 0x06, 0, 1, 0, 3, 'a', 0);
        EXPECT_PARSE(-EBADMSG, 0x82, 0x03, 0, 1, 0);
        /* Bad filters (§4.7.1). */
        EXPECT_PARSE(-EPROTO, 0x82, 0x05, 0, 1, 0, 0, 0);
        EXPECT_PARSE(-EPROTO, 0x82, 0x0a, 0, 1, 0, 5, 'a', '/', '#', '/', 'b', 0);
        EXPECT_PARSE(-EPROTO, 0x82, 0x07, 0, 1, 0, 2, 'a', '+', 0);
        EXPECT_PARSE(-EPROTO, 0x82, 0x07, 0, 1, 0, 2, '#', 'a', 0);
        EXPECT_PARSE(-EPROTO, 0x82, 0x06, 0, 1, 0, 1, 0x00, 0);
        /* A bad second entry still fails the whole packet. */
        EXPECT_PARSE(-EPROTO, 0x82, 0x0a, 0, 1, 0, 1, 'a', 0, 0, 1, 'b', 7);
}

static void test_parse_unsubscribe(void **state) {
        struct mqtt_packet pk;
        struct mqtt_list_iter it;
        struct mqtt_str f;
        uint8_t q = 0xee;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0xa2, 0x09, 0x12, 0x34, 0, 1, '#', 0, 2, '+', '/'), 0);
        assert_int_equal(pk.type, MQTT_UNSUBSCRIBE);
        assert_int_equal(pk.u.list.packet_id, 0x1234);
        assert_int_equal(pk.u.list.count, 2);
        mqtt_list_iter_init(&it, pk.type, &pk.u.list);
        assert_true(mqtt_list_next(&it, &f, &q));
        assert_true(str_eq(f, "#"));
        assert_int_equal(q, 0);
        assert_true(mqtt_list_next(&it, &f, &q));
        assert_true(str_eq(f, "+/"));
        assert_false(mqtt_list_next(&it, &f, &q));

        EXPECT_PARSE(-EPROTO, 0xa0, 0x05, 0, 1, 0, 1, 'a');   /* flags [MQTT-3.10.1-1] */
        EXPECT_PARSE(-EPROTO, 0xa2, 0x02, 0, 1);              /* empty [MQTT-3.10.3-2] */
        EXPECT_PARSE(-EPROTO, 0xa2, 0x05, 0, 0, 0, 1, 'a');   /* packet id 0 */
        EXPECT_PARSE(-EBADMSG, 0xa2, 0x06, 0, 1, 0, 1, 'a', 0); /* stray byte */
        EXPECT_PARSE(-EPROTO, 0xa2, 0x06, 0, 1, 0, 2, 'a', '#');
        EXPECT_PARSE(-EPROTO, 0xa2, 0x04, 0, 1, 0, 0);
}

static void test_parse_suback(void **state) {
        struct mqtt_packet pk;
        struct mqtt_list_iter it;
        struct mqtt_str f = STR("junk");
        uint8_t q;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0x90, 0x06, 0, 9, 0x00, 0x01, 0x02, 0x80), 0);
        assert_int_equal(pk.type, MQTT_SUBACK);
        assert_int_equal(pk.u.list.packet_id, 9);
        assert_int_equal(pk.u.list.count, 4);
        mqtt_list_iter_init(&it, pk.type, &pk.u.list);
        static const uint8_t want[] = { 0, 1, 2, 0x80 };
        for (size_t i = 0; i < 4; i++) {
                assert_true(mqtt_list_next(&it, &f, &q));
                assert_int_equal(q, want[i]);
                assert_int_equal(f.len, 0);
                assert_null(f.data);
        }
        assert_false(mqtt_list_next(&it, &f, &q));

        EXPECT_PARSE(-EPROTO, 0x92, 0x03, 0, 9, 0);    /* flags */
        EXPECT_PARSE(-EPROTO, 0x90, 0x03, 0, 9, 3);    /* reserved code [MQTT-3.9.3-2] */
        EXPECT_PARSE(-EPROTO, 0x90, 0x03, 0, 9, 0x81);
        EXPECT_PARSE(-EPROTO, 0x90, 0x02, 0, 9);       /* no codes */
        EXPECT_PARSE(-EPROTO, 0x90, 0x03, 0, 0, 0);    /* packet id 0 */
        EXPECT_PARSE(-EBADMSG, 0x90, 0x01, 0);
}

static void test_parse_empty_packets(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        assert_int_equal(PARSE(&pk, &why, 0xc0, 0x00), 0);
        assert_int_equal(pk.type, MQTT_PINGREQ);
        assert_int_equal(PARSE(&pk, &why, 0xd0, 0x00), 0);
        assert_int_equal(pk.type, MQTT_PINGRESP);
        assert_int_equal(PARSE(&pk, &why, 0xe0, 0x00), 0);
        assert_int_equal(pk.type, MQTT_DISCONNECT);

        EXPECT_PARSE(-EBADMSG, 0xc0, 0x01, 0x00);
        EXPECT_PARSE(-EBADMSG, 0xd0, 0x01, 0x00);
        EXPECT_PARSE(-EBADMSG, 0xe0, 0x02, 0x00, 0x00);
        EXPECT_PARSE(-EPROTO, 0xc1, 0x00);
        EXPECT_PARSE(-EPROTO, 0xd8, 0x00);
        EXPECT_PARSE(-EPROTO, 0xe2, 0x00); /* [MQTT-3.14.1-1] */
}

static void test_parse_framing_errors(void **state) {
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        /* Reserved types 0 and 15 (§2.2.1). */
        EXPECT_PARSE(-EPROTO, 0x00, 0x00);
        EXPECT_PARSE(-EPROTO, 0xf0, 0x00);
        /* Too short, incomplete, 5-byte remaining length. */
        EXPECT_PARSE(-EBADMSG, 0xc0);
        EXPECT_PARSE(-EBADMSG, 0x30, 0x80);
        EXPECT_PARSE(-EBADMSG, 0x30, 0x80, 0x80, 0x80, 0x80, 0x00);
        assert_int_equal(mqtt_parse(NULL, 0, &pk, &why), -EINVAL);
        /* why may be NULL. */
        {
                static const uint8_t b[] = { 0xc1, 0x00 };
                assert_int_equal(mqtt_parse(b, sizeof(b), &pk, NULL), -EPROTO);
        }
}

/* -------------------------------------------------------------- encoders */

static void test_encode_connect_roundtrip(void **state) {
        uint8_t buf[256];
        struct mqtt_packet pk;
        const char *why;
        struct mqtt_connect c = {
                .protocol_level = MQTT_PROTOCOL_LEVEL_311,
                .clean_session = true,
                .keepalive = 120,
                .client_id = STR("esp-1"),
                .will_flag = true,
                .will_qos = 1,
                .will_retain = true,
                .will_topic = STR("dev/esp-1/status"),
                .will_payload = { (const uint8_t *) "\0off", 4 },
                .has_username = true,
                .username = STR("user"),
                .has_password = true,
                .password = { (const uint8_t *) "\xff\x00pw", 4 },
        };
        int n;
        (void) state;

        n = mqtt_encode_connect(buf, sizeof(buf), &c);
        assert_true(n > 0);
        assert_int_equal(buf[0], 0x10);
        assert_memory_equal(buf + 2, "\0\4MQTT\4", 7);
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_int_equal(pk.u.connect.protocol_level, 4);
        assert_true(pk.u.connect.clean_session);
        assert_int_equal(pk.u.connect.keepalive, 120);
        assert_true(str_eq(pk.u.connect.client_id, "esp-1"));
        assert_true(pk.u.connect.will_flag);
        assert_int_equal(pk.u.connect.will_qos, 1);
        assert_true(pk.u.connect.will_retain);
        assert_true(str_eq(pk.u.connect.will_topic, "dev/esp-1/status"));
        assert_int_equal(pk.u.connect.will_payload.len, 4);
        assert_memory_equal(pk.u.connect.will_payload.data, "\0off", 4);
        assert_true(str_eq(pk.u.connect.username, "user"));
        assert_int_equal(pk.u.connect.password.len, 4);
        assert_memory_equal(pk.u.connect.password.data, "\xff\x00pw", 4);

        /* Every shorter buffer: -ENOBUFS and not one byte written. */
        for (size_t cap = 0; cap < (size_t) n; cap++) {
                uint8_t b2[256];
                memset(b2, 0xa5, sizeof(b2));
                assert_int_equal(mqtt_encode_connect(b2, cap, &c), -ENOBUFS);
                for (size_t k = 0; k < sizeof(b2); k++)
                        assert_int_equal(b2[k], 0xa5);
        }
        assert_int_equal(mqtt_encode_connect(NULL, 0, &c), -ENOBUFS);
        assert_int_equal(mqtt_encode_connect(buf, (size_t) n, &c), n);

        /* MQTT 3.1. */
        c.protocol_level = MQTT_PROTOCOL_LEVEL_31;
        c.will_flag = false;
        c.has_password = false;
        n = mqtt_encode_connect(buf, sizeof(buf), &c);
        assert_true(n > 0);
        assert_memory_equal(buf + 2, "\0\6MQIsdp\3", 9);
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_int_equal(pk.u.connect.protocol_level, 3);
        assert_false(pk.u.connect.will_flag);
        assert_int_equal(pk.u.connect.will_qos, 0); /* not sent without a will */
        assert_false(pk.u.connect.will_retain);
        assert_false(pk.u.connect.has_password);
        assert_true(pk.u.connect.has_username);
}

static void test_encode_connect_invalid(void **state) {
        uint8_t buf[128];
        struct mqtt_connect c = { .protocol_level = 4, .client_id = STR("x") };
        (void) state;

        assert_true(mqtt_encode_connect(buf, sizeof(buf), &c) > 0);
        c.protocol_level = 5;
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        assert_int_equal(mqtt_encode_connect(NULL, 0, &c), -EINVAL);
        c.protocol_level = 4;
        c.has_password = true;
        c.password = STR("p");
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        c.has_password = false;
        c.will_flag = true;
        c.will_topic = STR("a/+");
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        c.will_topic = STR("a");
        c.will_qos = 3;
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        c.will_qos = 2;
        assert_true(mqtt_encode_connect(buf, sizeof(buf), &c) > 0);
        c.client_id = (struct mqtt_str){ (const uint8_t *) "\xc0\x80", 2 }; /* overlong NUL */
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        c.client_id = (struct mqtt_str){ NULL, 3 };
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), &c), -EINVAL);
        assert_int_equal(mqtt_encode_connect(buf, sizeof(buf), NULL), -EINVAL);
}

static void test_encode_connack(void **state) {
        uint8_t buf[8];
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        memset(buf, 0, sizeof(buf));
        assert_int_equal(mqtt_encode_connack(buf, sizeof(buf), true, 0), 4);
        assert_memory_equal(buf, "\x20\x02\x01\x00", 4);
        assert_int_equal(parse_bytes(buf, 4, &pk, &why), 0);
        assert_true(pk.u.connack.session_present);
        assert_int_equal(mqtt_encode_connack(buf, sizeof(buf), false, MQTT_CONNACK_BAD_PROTOCOL), 4);
        assert_memory_equal(buf, "\x20\x02\x00\x01", 4);
        assert_int_equal(mqtt_encode_connack(buf, 3, false, 0), -ENOBUFS);
        assert_int_equal(mqtt_encode_connack(NULL, 0, false, 0), -ENOBUFS);
        assert_int_equal(mqtt_encode_connack(buf, sizeof(buf), false, 6), -EINVAL);
        assert_int_equal(mqtt_encode_connack(buf, sizeof(buf), true, 5), -EINVAL);
}

static void test_encode_publish_roundtrip(void **state) {
        uint8_t buf[64];
        struct mqtt_packet pk;
        const char *why;
        struct mqtt_publish p = {
                .dup = true, .qos = 2, .retain = true, .topic = STR("a/b"), .packet_id = 513,
                .payload = (const uint8_t *) "xyz", .payload_len = 3,
        };
        int n;
        (void) state;

        n = mqtt_encode_publish(buf, sizeof(buf), &p);
        assert_int_equal(n, 2 + 2 + 3 + 2 + 3);
        assert_int_equal((size_t) n, mqtt_publish_len(&p));
        assert_int_equal(buf[0], 0x3d);
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_true(pk.u.publish.dup);
        assert_int_equal(pk.u.publish.qos, 2);
        assert_true(pk.u.publish.retain);
        assert_true(str_eq(pk.u.publish.topic, "a/b"));
        assert_int_equal(pk.u.publish.packet_id, 513);
        assert_int_equal(pk.u.publish.payload_len, 3);
        assert_memory_equal(pk.u.publish.payload, "xyz", 3);

        for (size_t cap = 0; cap < (size_t) n; cap++) {
                uint8_t b2[64];
                memset(b2, 0x5a, sizeof(b2));
                assert_int_equal(mqtt_encode_publish(b2, cap, &p), -ENOBUFS);
                for (size_t k = 0; k < sizeof(b2); k++)
                        assert_int_equal(b2[k], 0x5a);
        }
        assert_int_equal(mqtt_encode_publish(NULL, 0, &p), -ENOBUFS);

        /* QoS 0: no packet id on the wire, whatever the struct says. */
        p.qos = 0;
        p.dup = false;
        p.payload = NULL;
        p.payload_len = 0;
        n = mqtt_encode_publish(buf, sizeof(buf), &p);
        assert_int_equal(n, 2 + 2 + 3);
        assert_int_equal((size_t) n, mqtt_publish_len(&p));
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_int_equal(pk.u.publish.packet_id, 0);
        assert_int_equal(pk.u.publish.payload_len, 0);
}

static void test_encode_publish_invalid(void **state) {
        uint8_t buf[64];
        struct mqtt_publish p = { .qos = 1, .topic = STR("t"), .packet_id = 1 };
        (void) state;

        assert_true(mqtt_encode_publish(buf, sizeof(buf), &p) > 0);
        p.qos = 3;
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.qos = 0;
        p.dup = true;
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.dup = false;
        p.qos = 1;
        p.packet_id = 0;
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.packet_id = 1;
        p.topic = STR("a/#");
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.topic = STR("");
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.topic = STR("t");
        p.payload = NULL;
        p.payload_len = 1;
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        /* Over the §2.2.3 maximum: not encodable, len reports 0. */
        p.payload = buf;
        p.payload_len = MQTT_MAX_REMAINING_LENGTH;
        assert_int_equal(mqtt_publish_len(&p), 0);
        assert_int_equal(mqtt_encode_publish(buf, sizeof(buf), &p), -EINVAL);
        p.payload_len = SIZE_MAX;
        assert_int_equal(mqtt_publish_len(&p), 0);
        assert_int_equal(mqtt_encode_publish(NULL, 0, NULL), -EINVAL);
        assert_int_equal(mqtt_publish_len(NULL), 0);
}

static void test_publish_len_edges(void **state) {
        /* topic "t" + QoS 1 packet id = 5 bytes before the payload. */
        static const struct {
                size_t rl;
                size_t hlen;
        } cases[] = {
                { 5, 2 },         { 127, 2 },       { 128, 3 },       { 16383, 3 },
                { 16384, 4 },     { 2097151, 4 },   { 2097152, 5 },   { 268435455, 5 },
        };
        struct mqtt_publish p = { .qos = 1, .topic = STR("t"), .packet_id = 1 };
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                p.payload_len = cases[i].rl - 5;
                assert_int_equal(mqtt_publish_len(&p), cases[i].hlen + cases[i].rl);
        }
        p.payload_len = 268435455 - 5 + 1;
        assert_int_equal(mqtt_publish_len(&p), 0);
}

static void test_encode_publish_big(void **state) {
        /* rl = 2097152: 4-byte length field, encoder and parser agree. */
        size_t plen = 2097152 - 5, total;
        uint8_t *payload = malloc(plen), *buf;
        struct mqtt_publish p = { .qos = 1, .topic = STR("t"), .packet_id = 9, .payload_len = plen };
        struct mqtt_packet pk;
        const char *why;
        size_t framed = 0;
        int n;
        (void) state;

        assert_non_null(payload);
        memset(payload, 0x42, plen);
        p.payload = payload;
        total = mqtt_publish_len(&p);
        assert_int_equal(total, 2097152 + 5);
        buf = malloc(total);
        assert_non_null(buf);
        n = mqtt_encode_publish(buf, total, &p);
        assert_int_equal((size_t) n, total);
        assert_memory_equal(buf, "\x32\x80\x80\x80\x01", 5);
        assert_int_equal(mqtt_frame(buf, total, 0, &framed), 1);
        assert_int_equal(framed, total);
        assert_int_equal(mqtt_frame(buf, total, total - 1, &framed), -EMSGSIZE);
        assert_int_equal(parse_bytes(buf, total, &pk, &why), 0);
        assert_int_equal(pk.u.publish.payload_len, plen);
        assert_int_equal(pk.u.publish.payload[plen - 1], 0x42);
        assert_int_equal(mqtt_encode_publish(buf, total - 1, &p), -ENOBUFS);
        free(buf);
        free(payload);
}

static void test_encode_acks(void **state) {
        static const struct {
                enum mqtt_type type;
                uint8_t first;
        } cases[] = {
                { MQTT_PUBACK, 0x40 },  { MQTT_PUBREC, 0x50 },  { MQTT_PUBREL, 0x62 },
                { MQTT_PUBCOMP, 0x70 }, { MQTT_UNSUBACK, 0xb0 },
        };
        uint8_t buf[8];
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                assert_int_equal(mqtt_encode_ack(buf, sizeof(buf), cases[i].type, 0x0102), 4);
                assert_int_equal(buf[0], cases[i].first);
                assert_int_equal(buf[1], 2);
                assert_int_equal(buf[2], 1);
                assert_int_equal(buf[3], 2);
                assert_int_equal(parse_bytes(buf, 4, &pk, &why), 0);
                assert_int_equal(pk.type, cases[i].type);
                assert_int_equal(pk.u.packet_id, 0x0102);
                assert_int_equal(mqtt_encode_ack(buf, 3, cases[i].type, 1), -ENOBUFS);
                assert_int_equal(mqtt_encode_ack(NULL, 0, cases[i].type, 1), -ENOBUFS);
                assert_int_equal(mqtt_encode_ack(buf, sizeof(buf), cases[i].type, 0), -EINVAL);
        }
        assert_int_equal(mqtt_encode_ack(buf, sizeof(buf), MQTT_SUBACK, 1), -EINVAL);
        assert_int_equal(mqtt_encode_ack(buf, sizeof(buf), MQTT_PUBLISH, 1), -EINVAL);
}

static void test_encode_suback(void **state) {
        static const uint8_t codes[] = { 0, 1, 2, 0x80 };
        static const uint8_t bad[] = { 0, 3 };
        uint8_t buf[16];
        struct mqtt_packet pk;
        struct mqtt_list_iter it;
        uint8_t q;
        const char *why;
        (void) state;

        assert_int_equal(mqtt_encode_suback(buf, sizeof(buf), 77, codes, 4), 8);
        assert_memory_equal(buf, "\x90\x06\x00\x4d\x00\x01\x02\x80", 8);
        assert_int_equal(parse_bytes(buf, 8, &pk, &why), 0);
        assert_int_equal(pk.u.list.count, 4);
        mqtt_list_iter_init(&it, MQTT_SUBACK, &pk.u.list);
        for (size_t i = 0; i < 4; i++) {
                assert_true(mqtt_list_next(&it, NULL, &q));
                assert_int_equal(q, codes[i]);
        }
        assert_false(mqtt_list_next(&it, NULL, &q));
        assert_int_equal(mqtt_encode_suback(buf, 7, 77, codes, 4), -ENOBUFS);
        assert_int_equal(mqtt_encode_suback(NULL, 0, 77, codes, 4), -ENOBUFS);
        assert_int_equal(mqtt_encode_suback(buf, sizeof(buf), 0, codes, 4), -EINVAL);
        assert_int_equal(mqtt_encode_suback(buf, sizeof(buf), 1, codes, 0), -EINVAL);
        assert_int_equal(mqtt_encode_suback(buf, sizeof(buf), 1, bad, 2), -EINVAL);
        assert_int_equal(mqtt_encode_suback(buf, sizeof(buf), 1, NULL, 1), -EINVAL);
}

static void test_encode_subscribe(void **state) {
        const struct mqtt_str filters[] = { STR("a/+/c"), STR("#"), STR("$SYS/x") };
        const uint8_t qos[] = { 0, 1, 2 };
        uint8_t buf[64];
        struct mqtt_packet pk;
        struct mqtt_list_iter it;
        struct mqtt_str f;
        uint8_t q;
        const char *why;
        int n;
        (void) state;

        n = mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 5, filters, qos, 3);
        assert_int_equal(n, 2 + 2 + (2 + 5 + 1) + (2 + 1 + 1) + (2 + 6 + 1));
        assert_int_equal(buf[0], 0x82);
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_int_equal(pk.u.list.count, 3);
        assert_int_equal(pk.u.list.packet_id, 5);
        mqtt_list_iter_init(&it, pk.type, &pk.u.list);
        for (size_t i = 0; i < 3; i++) {
                assert_true(mqtt_list_next(&it, &f, &q));
                assert_int_equal(f.len, filters[i].len);
                assert_memory_equal(f.data, filters[i].data, f.len);
                assert_int_equal(q, qos[i]);
        }
        assert_false(mqtt_list_next(&it, &f, &q));
        for (size_t cap = 0; cap < (size_t) n; cap++)
                assert_int_equal(mqtt_encode_subscribe(buf, cap, MQTT_SUBSCRIBE, 5, filters, qos, 3), -ENOBUFS);

        /* UNSUBSCRIBE: qos may be NULL. */
        n = mqtt_encode_subscribe(buf, sizeof(buf), MQTT_UNSUBSCRIBE, 6, filters, NULL, 2);
        assert_int_equal(n, 2 + 2 + (2 + 5) + (2 + 1));
        assert_int_equal(buf[0], 0xa2);
        assert_int_equal(parse_bytes(buf, (size_t) n, &pk, &why), 0);
        assert_int_equal(pk.type, MQTT_UNSUBSCRIBE);
        assert_int_equal(pk.u.list.count, 2);

        /* Invalid arguments. */
        {
                const struct mqtt_str badf[] = { STR("a/#/b") };
                const uint8_t badq[] = { 3 };
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 5, badf, qos, 1), -EINVAL);
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 5, filters, badq, 1),
                                 -EINVAL);
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 5, filters, NULL, 1),
                                 -EINVAL);
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 0, filters, qos, 1),
                                 -EINVAL);
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBSCRIBE, 5, filters, qos, 0),
                                 -EINVAL);
                assert_int_equal(mqtt_encode_subscribe(buf, sizeof(buf), MQTT_SUBACK, 5, filters, qos, 1), -EINVAL);
        }
}

static void test_encode_empty(void **state) {
        static const enum mqtt_type types[] = { MQTT_PINGREQ, MQTT_PINGRESP, MQTT_DISCONNECT };
        uint8_t buf[4] = { 0xff, 0xff, 0xff, 0xff };
        struct mqtt_packet pk;
        const char *why;
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(types); i++) {
                assert_int_equal(mqtt_encode_empty(buf, sizeof(buf), types[i]), 2);
                assert_int_equal(buf[0], types[i] << 4);
                assert_int_equal(buf[1], 0);
                assert_int_equal(parse_bytes(buf, 2, &pk, &why), 0);
                assert_int_equal(pk.type, types[i]);
                buf[0] = buf[1] = 0xee;
                assert_int_equal(mqtt_encode_empty(buf, 1, types[i]), -ENOBUFS);
                assert_int_equal(buf[0], 0xee);
                assert_int_equal(mqtt_encode_empty(NULL, 0, types[i]), -ENOBUFS);
        }
        assert_int_equal(mqtt_encode_empty(buf, sizeof(buf), MQTT_PUBACK), -EINVAL);
}

/* ----------------------------------------------------------- UTF-8/topic */

static void test_utf8(void **state) {
        static const struct {
                const char *s;
                size_t len;
                bool ok;
        } cases[] = {
                { "", 0, true },
                { "plain", 5, true },
                { "caf\xc3\xa9", 5, true },               /* U+00E9 */
                { "\xe2\x82\xac", 3, true },              /* U+20AC */
                { "\xef\xbb\xbf", 3, true },              /* BOM, kept [MQTT-1.5.3-3] */
                { "\xf0\x9f\x98\x80", 4, true },          /* U+1F600 */
                { "\xf4\x8f\xbf\xbf", 4, true },          /* U+10FFFF */
                { "\xed\x9f\xbf", 3, true },              /* U+D7FF */
                { "\xee\x80\x80", 3, true },              /* U+E000 */
                { "\x01\x7f", 2, true },                  /* controls: SHOULD NOT, allowed */
                { "a\0b", 3, false },                     /* U+0000 [MQTT-1.5.3-2] */
                { "\xc0\x80", 2, false },                 /* overlong NUL */
                { "\xc1\xbf", 2, false },                 /* overlong */
                { "\xe0\x80\xaf", 3, false },             /* overlong '/' */
                { "\xf0\x8f\xbf\xbf", 4, false },         /* overlong 3-byte */
                { "\xed\xa0\x80", 3, false },             /* U+D800 [MQTT-1.5.3-1] */
                { "\xed\xbf\xbf", 3, false },             /* U+DFFF */
                { "\xf4\x90\x80\x80", 4, false },         /* U+110000 */
                { "\xf5\x80\x80\x80", 4, false },
                { "\xff", 1, false },
                { "\x80", 1, false },                     /* lone continuation */
                { "\xc3", 1, false },                     /* truncated */
                { "\xe2\x82", 2, false },
                { "\xf0\x9f\x98", 3, false },
                { "\xc3\x28", 2, false },                 /* bad continuation */
                { "\xe2\x28\xa1", 3, false },
        };
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                if (mqtt_utf8_valid((const uint8_t *) cases[i].s, cases[i].len) != cases[i].ok)
                        fail_msg("utf8 case %zu", i);
        }
        assert_false(mqtt_utf8_valid(NULL, 1));
        assert_true(mqtt_utf8_valid(NULL, 0));
}

static void test_topic_valid(void **state) {
        static const struct {
                const char *s;
                bool name, filter;
        } cases[] = {
                { "a", true, true },        { "a/b/c", true, true },    { "/", true, true },
                { "//", true, true },       { "/a", true, true },       { "a/", true, true },
                { "$SYS/x", true, true },   { " ", true, true },        { "", false, false },
                { "#", false, true },       { "+", false, true },       { "a/#", false, true },
                { "+/+", false, true },     { "/+", false, true },      { "+/", false, true },
                { "a/+/b/#", false, true }, { "a/#/b", false, false },  { "a+", false, false },
                { "+a", false, false },     { "#a", false, false },     { "a#", false, false },
                { "a/b#", false, false },   { "##", false, false },     { "++", false, false },
                { "a/+b", false, false },   { "#/", false, false },     { "sport/tennis#", false, false },
        };
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                const uint8_t *s = (const uint8_t *) cases[i].s;
                size_t n = strlen(cases[i].s);
                if (mqtt_topic_name_valid(s, n) != cases[i].name)
                        fail_msg("topic name '%s'", cases[i].s);
                if (mqtt_topic_filter_valid(s, n) != cases[i].filter)
                        fail_msg("topic filter '%s'", cases[i].s);
                /* clean = valid name and clean string, whatever the input */
                if (mqtt_topic_name_clean(s, n) != (cases[i].name && mqtt_string_clean(s, n)))
                        fail_msg("clean topic name '%s'", cases[i].s);
        }
        assert_false(mqtt_topic_name_clean(S("a\x01b")));
        assert_false(mqtt_topic_name_clean(S("a\x7f")));
        assert_false(mqtt_topic_name_clean(S("a\xc2\x85")));   /* U+0085, C1 */
        assert_true(mqtt_topic_name_clean(S("caf\xc3\xa9/x"))); /* U+00E9 */
        assert_false(mqtt_topic_name_clean(S("a\xed\xa0\x80")));
        assert_false(mqtt_topic_name_clean(NULL, 1));
        assert_false(mqtt_topic_name_valid(S("a\xed\xa0\x80")));
        assert_false(mqtt_topic_filter_valid(S("a/\xc0\x80")));
        {
                /* 65536 bytes cannot be a string (§1.5.3). */
                uint8_t *big = malloc(65536);
                assert_non_null(big);
                memset(big, 'a', 65536);
                assert_true(mqtt_topic_name_valid(big, 65535));
                assert_false(mqtt_topic_name_valid(big, 65536));
                assert_true(mqtt_topic_name_clean(big, 65535));
                assert_false(mqtt_topic_name_clean(big, 65536));
                assert_false(mqtt_topic_filter_valid(big, 65536));
                free(big);
        }
}

static void test_topic_matches(void **state) {
        static const struct {
                const char *filter, *topic;
                bool match;
        } cases[] = {
                /* §4.7.1.2 */
                { "sport/tennis/player1/#", "sport/tennis/player1", true },
                { "sport/tennis/player1/#", "sport/tennis/player1/ranking", true },
                { "sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true },
                { "sport/#", "sport", true },
                { "#", "sport", true },
                { "#", "/", true },
                { "#", "a/b/c", true },
                { "sport/#", "sports", false },
                { "sport/#", "sport/", true },
                /* §4.7.1.3 */
                { "sport/tennis/+", "sport/tennis/player1", true },
                { "sport/tennis/+", "sport/tennis/player2", true },
                { "sport/tennis/+", "sport/tennis/player1/ranking", false },
                { "sport/+", "sport", false },
                { "sport/+", "sport/", true },
                { "+", "a", true },
                { "+", "/a", false },
                { "+/+", "/finance", true },
                { "/+", "/finance", true },
                { "+", "/finance", false },
                { "+/b", "/b", true },
                { "a/+/c", "a//c", true },
                { "a/+/#", "a/b", true },
                { "+/#", "a", true },
                /* plain */
                { "a/b", "a/b", true },
                { "a/b", "a/c", false },
                { "a/b", "a/b/", false },
                { "a/b/", "a/b", false },
                { "a/b", "a", false },
                { "a", "a/b", false },
                { "a/b", "A/b", false },
                { "/", "/", true },
                { "a//b", "a//b", true },
                /* §4.7.2 */
                { "#", "$SYS/broker", false },
                { "+/monitor/Clients", "$SYS/monitor/Clients", false },
                { "$SYS/#", "$SYS/monitor/Clients", true },
                { "$SYS/monitor/+", "$SYS/monitor/Clients", true },
                { "$SYS", "$SYS", true },
                { "+", "$", false },
                { "a/#", "a/$x", true },
                { "a/+", "a/$x", true },
                /* degenerate */
                { "", "a", false },
                { "a", "", false },
        };
        (void) state;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                bool m = mqtt_topic_matches((const uint8_t *) cases[i].filter, strlen(cases[i].filter),
                                            (const uint8_t *) cases[i].topic, strlen(cases[i].topic));
                if (m != cases[i].match)
                        fail_msg("filter '%s' topic '%s': got %d", cases[i].filter, cases[i].topic, m);
        }
}

static void test_type_name(void **state) {
        (void) state;

        assert_string_equal(mqtt_type_name(MQTT_CONNECT), "CONNECT");
        assert_string_equal(mqtt_type_name(MQTT_PUBLISH), "PUBLISH");
        assert_string_equal(mqtt_type_name(MQTT_UNSUBACK), "UNSUBACK");
        assert_string_equal(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
        assert_string_equal(mqtt_type_name(0), "?");
        assert_string_equal(mqtt_type_name(15), "?");
        assert_string_equal(mqtt_type_name(1000), "?");
}

static void test_list_iter_defensive(void **state) {
        /* A hand-made list that lies about its contents stops cleanly. */
        static const uint8_t bytes[] = { 0, 9, 'a' };
        struct mqtt_list l = { .packet_id = 1, .count = 1, .start = bytes, .len = sizeof(bytes) };
        struct mqtt_list empty = { 0 };
        struct mqtt_list_iter it;
        struct mqtt_str f;
        uint8_t q;
        (void) state;

        mqtt_list_iter_init(&it, MQTT_SUBSCRIBE, &l);
        assert_false(mqtt_list_next(&it, &f, &q));
        assert_false(mqtt_list_next(&it, &f, &q));
        mqtt_list_iter_init(&it, MQTT_PUBLISH, &l);
        assert_false(mqtt_list_next(&it, &f, &q));
        mqtt_list_iter_init(&it, MQTT_SUBACK, &empty);
        assert_false(mqtt_list_next(&it, &f, &q));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_frame_remaining_length_edges),
                cmocka_unit_test(test_frame_whole_packets),
                cmocka_unit_test(test_frame_five_byte_length),
                cmocka_unit_test(test_frame_max_rl),
                cmocka_unit_test(test_frame_partial_header_oversize),
                cmocka_unit_test(test_frame_non_minimal),
                cmocka_unit_test(test_parse_connect_minimal),
                cmocka_unit_test(test_parse_connect_full),
                cmocka_unit_test(test_parse_connect_empty_client_id),
                cmocka_unit_test(test_parse_connect_protocol),
                cmocka_unit_test(test_parse_connect_flags),
                cmocka_unit_test(test_parse_connect_fields),
                cmocka_unit_test(test_parse_connack),
                cmocka_unit_test(test_parse_publish),
                cmocka_unit_test(test_parse_publish_malformed),
                cmocka_unit_test(test_parse_acks),
                cmocka_unit_test(test_parse_subscribe),
                cmocka_unit_test(test_parse_subscribe_malformed),
                cmocka_unit_test(test_parse_unsubscribe),
                cmocka_unit_test(test_parse_suback),
                cmocka_unit_test(test_parse_empty_packets),
                cmocka_unit_test(test_parse_framing_errors),
                cmocka_unit_test(test_encode_connect_roundtrip),
                cmocka_unit_test(test_encode_connect_invalid),
                cmocka_unit_test(test_encode_connack),
                cmocka_unit_test(test_encode_publish_roundtrip),
                cmocka_unit_test(test_encode_publish_invalid),
                cmocka_unit_test(test_publish_len_edges),
                cmocka_unit_test(test_encode_publish_big),
                cmocka_unit_test(test_encode_acks),
                cmocka_unit_test(test_encode_suback),
                cmocka_unit_test(test_encode_subscribe),
                cmocka_unit_test(test_encode_empty),
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_topic_valid),
                cmocka_unit_test(test_topic_matches),
                cmocka_unit_test(test_type_name),
                cmocka_unit_test(test_list_iter_defensive),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
