/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for mqtt_codec: frame a stream of packets, parse each,
 * walk the lists, re-encode what parsed and check that the re-encoded
 * packet parses back to the same fields. Any mismatch aborts.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib \
 *         lib/mqtt_codec.c tests/fuzz/fuzz_mqtt_codec.c -o fuzz_mqtt_codec
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                  \
        do {                                                                                      \
                if (!(x))                                                                         \
                        abort();                                                                  \
        } while (0)

static void check_str(struct mqtt_str a, struct mqtt_str b) {
        CHECK(a.len == b.len);
        CHECK(a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static uint8_t *encode_buf(size_t n) {
        uint8_t *b = malloc(n ? n : 1);
        CHECK(b);
        return b;
}

/* The re-encoding is never longer than the original: same fields, and a
 * minimal remaining-length encoding where the original may have padded. */
static void roundtrip_connect(const struct mqtt_connect *c, size_t cap) {
        struct mqtt_packet pk;
        uint8_t small[8];
        uint8_t *buf;
        int n;

        buf = encode_buf(cap);
        n = mqtt_encode_connect(buf, cap, c);
        CHECK(n > 0 && (size_t) n <= cap);
        CHECK(mqtt_encode_connect(NULL, 0, c) == -ENOBUFS);
        memset(small, 0xa5, sizeof(small));
        CHECK(mqtt_encode_connect(small, sizeof(small), c) == -ENOBUFS);
        for (size_t i = 0; i < sizeof(small); i++)
                CHECK(small[i] == 0xa5);
        CHECK(mqtt_encode_connect(buf, (size_t) n - 1, c) == -ENOBUFS);
        CHECK(mqtt_parse(buf, (size_t) n, &pk, NULL) == 0);
        CHECK(pk.type == MQTT_CONNECT);
        CHECK(pk.u.connect.protocol_level == c->protocol_level);
        CHECK(pk.u.connect.clean_session == c->clean_session);
        CHECK(pk.u.connect.keepalive == c->keepalive);
        check_str(pk.u.connect.client_id, c->client_id);
        CHECK(pk.u.connect.will_flag == c->will_flag);
        CHECK(pk.u.connect.will_qos == c->will_qos);
        CHECK(pk.u.connect.will_retain == c->will_retain);
        check_str(pk.u.connect.will_topic, c->will_topic);
        check_str(pk.u.connect.will_payload, c->will_payload);
        CHECK(pk.u.connect.has_username == c->has_username);
        check_str(pk.u.connect.username, c->username);
        CHECK(pk.u.connect.has_password == c->has_password);
        check_str(pk.u.connect.password, c->password);
        free(buf);
}

static void roundtrip_publish(const struct mqtt_publish *p) {
        struct mqtt_packet pk;
        size_t len = mqtt_publish_len(p);
        uint8_t *buf;
        int n;

        CHECK(len > 0);
        buf = encode_buf(len);
        n = mqtt_encode_publish(buf, len, p);
        CHECK(n > 0 && (size_t) n == len);
        CHECK(mqtt_encode_publish(buf, len - 1, p) == -ENOBUFS);
        CHECK(mqtt_encode_publish(NULL, 0, p) == -ENOBUFS);
        CHECK(mqtt_parse(buf, len, &pk, NULL) == 0);
        CHECK(pk.type == MQTT_PUBLISH);
        CHECK(pk.u.publish.dup == p->dup);
        CHECK(pk.u.publish.qos == p->qos);
        CHECK(pk.u.publish.retain == p->retain);
        check_str(pk.u.publish.topic, p->topic);
        CHECK(pk.u.publish.packet_id == p->packet_id);
        CHECK(pk.u.publish.payload_len == p->payload_len);
        CHECK(p->payload_len == 0 || memcmp(pk.u.publish.payload, p->payload, p->payload_len) == 0);
        free(buf);
}

static void walk_list(const struct mqtt_packet *pk, const uint8_t *data, size_t size) {
        struct mqtt_list_iter it;
        struct mqtt_str f, filters[8];
        uint8_t q, qos[8];
        size_t count = 0, nf = 0;

        mqtt_list_iter_init(&it, pk->type, &pk->u.list);
        while (mqtt_list_next(&it, &f, &q)) {
                count++;
                if (pk->type == MQTT_SUBACK) {
                        CHECK(q <= 2 || q == MQTT_SUBACK_FAILURE);
                        CHECK(f.len == 0);
                        continue;
                }
                CHECK(mqtt_topic_filter_valid(f.data, f.len));
                CHECK(pk->type == MQTT_SUBSCRIBE ? q <= 2 : q == 0);
                if (nf < 8) {
                        filters[nf] = f;
                        qos[nf] = q;
                        nf++;
                }
                /* Exercise matching against the rest of the input. */
                if (size > 0)
                        (void) mqtt_topic_matches(f.data, f.len, data, size > 64 ? 64 : size);
                /* A filter without wildcards is a name that matches itself. */
                if (mqtt_topic_name_valid(f.data, f.len))
                        CHECK(mqtt_topic_matches(f.data, f.len, f.data, f.len));
        }
        CHECK(count == pk->u.list.count);

        /* Re-encode what fits in the small array. */
        if (pk->type != MQTT_SUBACK && nf == count) {
                struct mqtt_packet pk2;
                size_t cap = pk->u.list.len + 7;
                uint8_t *buf = encode_buf(cap);
                int n = mqtt_encode_subscribe(buf, cap, pk->type, pk->u.list.packet_id, filters, qos, nf);

                CHECK(n > 0);
                CHECK(mqtt_parse(buf, (size_t) n, &pk2, NULL) == 0);
                CHECK(pk2.type == pk->type);
                CHECK(pk2.u.list.count == count);
                CHECK(pk2.u.list.len == pk->u.list.len);
                CHECK(memcmp(pk2.u.list.start, pk->u.list.start, pk->u.list.len) == 0);
                CHECK(mqtt_encode_subscribe(buf, (size_t) n - 1, pk->type, pk->u.list.packet_id, filters, qos, nf) ==
                      -ENOBUFS);
                free(buf);
        } else if (pk->type == MQTT_SUBACK) {
                struct mqtt_packet pk2;
                uint8_t *buf = encode_buf(pk->u.list.len + 8);
                int n = mqtt_encode_suback(buf, pk->u.list.len + 8, pk->u.list.packet_id, pk->u.list.start,
                                           pk->u.list.len);

                CHECK(n > 0);
                CHECK(mqtt_parse(buf, (size_t) n, &pk2, NULL) == 0);
                CHECK(pk2.u.list.count == count);
                free(buf);
        }
}

static void check_packet(const uint8_t *pkt, size_t len) {
        struct mqtt_packet pk, pk2;
        const char *why = NULL;
        uint8_t buf[4];
        int r;

        r = mqtt_parse(pkt, len, &pk, &why);
        if (r != 0) {
                CHECK(why != NULL);
                CHECK(r == -EBADMSG || r == -EPROTO || r == -EPROTONOSUPPORT);
                if (r == -EPROTONOSUPPORT)
                        CHECK(pk.type == MQTT_CONNECT);
                return;
        }
        (void) mqtt_type_name(pk.type);

        switch (pk.type) {
        case MQTT_CONNECT:
                roundtrip_connect(&pk.u.connect, len);
                break;
        case MQTT_PUBLISH:
                CHECK(mqtt_topic_name_valid(pk.u.publish.topic.data, pk.u.publish.topic.len));
                roundtrip_publish(&pk.u.publish);
                break;
        case MQTT_CONNACK:
                CHECK(mqtt_encode_connack(buf, sizeof(buf), pk.u.connack.session_present, pk.u.connack.return_code) ==
                      4);
                CHECK(mqtt_parse(buf, 4, &pk2, NULL) == 0);
                CHECK(pk2.u.connack.session_present == pk.u.connack.session_present);
                CHECK(pk2.u.connack.return_code == pk.u.connack.return_code);
                break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_UNSUBACK:
                CHECK(mqtt_encode_ack(buf, sizeof(buf), pk.type, pk.u.packet_id) == 4);
                CHECK(memcmp(buf, pkt, 1) == 0);
                CHECK(mqtt_parse(buf, 4, &pk2, NULL) == 0);
                CHECK(pk2.u.packet_id == pk.u.packet_id);
                break;
        case MQTT_SUBSCRIBE:
        case MQTT_UNSUBSCRIBE:
        case MQTT_SUBACK:
                walk_list(&pk, pkt, len);
                break;
        default:
                CHECK(mqtt_encode_empty(buf, sizeof(buf), pk.type) == 2);
                CHECK(buf[0] == pkt[0]);
                break;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        size_t off = 0, max_packet = 0;

        /* Parse the whole input as one packet too: most of the time the
         * declared length will not match, which has to be caught. */
        check_packet(data, size);

        /* String helpers on the raw input. */
        (void) mqtt_utf8_valid(data, size);
        if (mqtt_topic_name_valid(data, size))
                CHECK(mqtt_topic_filter_valid(data, size) && mqtt_topic_matches(data, size, data, size));
        if (size >= 2) {
                size_t split = data[0] % size;
                (void) mqtt_topic_matches(data, split, data + split, size - split);
                /* A small max_packet from the input, to exercise -EMSGSIZE. */
                if (data[1] & 1)
                        max_packet = data[1];
        }

        /* Frame a stream of packets, as the session does. */
        while (off < size) {
                size_t plen = 0;
                int r = mqtt_frame(data + off, size - off, max_packet, &plen);

                if (r <= 0) {
                        CHECK(r == 0 || r == -EBADMSG || r == -EMSGSIZE);
                        break;
                }
                CHECK(plen >= 2 && plen <= size - off);
                CHECK(max_packet == 0 || plen <= max_packet);
                check_packet(data + off, plen);
                off += plen;
        }
        return 0;
}
