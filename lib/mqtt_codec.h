/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * mqtt_codec — MQTT 3.1 / 3.1.1 packet codec.
 *
 * Pure functions on caller-provided buffers: no I/O, no allocation, no
 * global state, no libc beyond <string.h>/<stdint.h>/<stddef.h>/<errno.h>,
 * so the same file builds into the daemon, the fuzzers and the ESP8266
 * firmware core (xtensa-lx106, picolibc).
 *
 * Parsed packets point INTO the input buffer (struct mqtt_str, payload):
 * they stay valid only as long as the caller keeps that buffer unchanged.
 *
 * Errors are negative errno values; where a parser rejects input it also
 * stores a static, human-readable reason (citing the MQTT 3.1.1 section)
 * in *why when why is not NULL.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* MQTT 3.1.1 §2.2.1 control packet types. */
enum mqtt_type {
        MQTT_CONNECT = 1,
        MQTT_CONNACK = 2,
        MQTT_PUBLISH = 3,
        MQTT_PUBACK = 4,
        MQTT_PUBREC = 5,
        MQTT_PUBREL = 6,
        MQTT_PUBCOMP = 7,
        MQTT_SUBSCRIBE = 8,
        MQTT_SUBACK = 9,
        MQTT_UNSUBSCRIBE = 10,
        MQTT_UNSUBACK = 11,
        MQTT_PINGREQ = 12,
        MQTT_PINGRESP = 13,
        MQTT_DISCONNECT = 14,
};

/* MQTT 3.1.1 §3.2.2.3 CONNACK return codes. */
enum mqtt_connack_rc {
        MQTT_CONNACK_ACCEPTED = 0,
        MQTT_CONNACK_BAD_PROTOCOL = 1,
        MQTT_CONNACK_ID_REJECTED = 2,
        MQTT_CONNACK_SERVER_UNAVAILABLE = 3,
        MQTT_CONNACK_BAD_CREDENTIALS = 4,
        MQTT_CONNACK_NOT_AUTHORIZED = 5,
};

#define MQTT_PROTOCOL_LEVEL_31 3  /* "MQIsdp" */
#define MQTT_PROTOCOL_LEVEL_311 4 /* "MQTT" */
#define MQTT_SUBACK_FAILURE 0x80  /* §3.9.3 */
#define MQTT_MAX_REMAINING_LENGTH 268435455u /* §2.2.3: 4 bytes of 7 bits */
#define MQTT_MAX_FIXED_HEADER 5

/* A length-prefixed string or binary field, pointing into the packet. Not
 * NUL-terminated. data is NULL only when len is 0 and the field is absent. */
struct mqtt_str {
        const uint8_t *data;
        uint16_t len;
};

struct mqtt_connect {
        uint8_t protocol_level;   /* 3 (MQIsdp) or 4 (MQTT) */
        bool clean_session;
        uint16_t keepalive;       /* seconds, 0 = off */
        struct mqtt_str client_id;
        bool will_flag;
        uint8_t will_qos;
        bool will_retain;
        struct mqtt_str will_topic;
        struct mqtt_str will_payload; /* binary */
        bool has_username;
        struct mqtt_str username;
        bool has_password;
        struct mqtt_str password;     /* binary */
};

struct mqtt_connack {
        bool session_present;
        uint8_t return_code;
};

struct mqtt_publish {
        bool dup;
        uint8_t qos;              /* 0, 1 or 2 */
        bool retain;
        struct mqtt_str topic;
        uint16_t packet_id;       /* 0 for QoS 0 */
        const uint8_t *payload;
        size_t payload_len;
};

/* SUBSCRIBE / UNSUBSCRIBE / SUBACK carry a list. The parser validates the
 * whole list and counts it; mqtt_list_next() then walks it. */
struct mqtt_list {
        uint16_t packet_id;
        size_t count;             /* entries, >= 1 after a successful parse */
        const uint8_t *start;     /* first entry, inside the packet */
        size_t len;               /* bytes of entries */
};

/* One parsed packet. Which member of u is set depends on type:
 *   CONNECT → u.connect, CONNACK → u.connack, PUBLISH → u.publish,
 *   PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK → u.packet_id,
 *   SUBSCRIBE/UNSUBSCRIBE/SUBACK → u.list,
 *   PINGREQ/PINGRESP/DISCONNECT → nothing. */
struct mqtt_packet {
        enum mqtt_type type;
        uint8_t flags;            /* low nibble of the fixed header */
        union {
                struct mqtt_connect connect;
                struct mqtt_connack connack;
                struct mqtt_publish publish;
                struct mqtt_list list;
                uint16_t packet_id;
        } u;
};

/* Cursor for mqtt_list_next(). Initialise with mqtt_list_iter_init(). */
struct mqtt_list_iter {
        enum mqtt_type type;
        const uint8_t *p;
        const uint8_t *end;
};

/*
 * Find the packet at the start of buf (§2.2.3 remaining length).
 * Returns 1 and sets *packet_len (fixed header + remaining length) when buf
 * holds one whole packet; 0 when more bytes are needed (nothing else set);
 * -EBADMSG when the remaining length uses more than 4 bytes;
 * -EMSGSIZE when the packet would exceed max_packet bytes (0 = 268435460).
 * -EMSGSIZE is reported as soon as the length is known, before the body
 * has arrived, so a receiver never buffers an oversized packet.
 */
int mqtt_frame(const uint8_t *buf, size_t len, size_t max_packet, size_t *packet_len);

/*
 * Parse one whole packet (as delimited by mqtt_frame). Checks every
 * MQTT 3.1.1 rule that can be checked on the packet alone: fixed-header
 * flag bits (§2.2.2), remaining-length consistency, UTF-8 strings (§1.5.3),
 * topic names without wildcards and not empty (§3.3.2.1, §4.7), topic
 * filters well formed (§4.7.1), packet identifiers non-zero (§2.3.1),
 * SUBSCRIBE requested-QoS reserved bits (§3.8.3.1), at least one entry
 * (§3.8.3, §3.10.3), CONNECT flags (§3.1.2.3..§3.1.2.9).
 *
 * CONNECT: a protocol name/level pair other than "MQTT"/4 or "MQIsdp"/3
 * returns -EPROTONOSUPPORT with out->u.connect.protocol_level set, so the
 * server can answer CONNACK 1 (§3.1.2.2) rather than just close.
 * An empty client id is accepted here (the session decides §3.1.3.1 rules).
 *
 * Returns 0 on success, -EBADMSG (malformed), -EPROTO (violates a rule),
 * -EPROTONOSUPPORT (see above), -EINVAL (pkt or out NULL). *why gets a
 * static reason on failure.
 */
int mqtt_parse(const uint8_t *pkt, size_t len, struct mqtt_packet *out, const char **why);

void mqtt_list_iter_init(struct mqtt_list_iter *it, enum mqtt_type type, const struct mqtt_list *list);
/* Next entry: SUBSCRIBE → filter + requested qos; UNSUBSCRIBE → filter
 * (qos set to 0); SUBACK → return code in *qos, filter left empty.
 * Returns true while an entry was produced. Only valid on a list produced
 * by a successful mqtt_parse(). */
bool mqtt_list_next(struct mqtt_list_iter *it, struct mqtt_str *filter, uint8_t *qos);

/*
 * Encoders. Each writes one whole packet into buf and returns its length,
 * or -ENOBUFS (writing nothing) if cap is too small, or -EINVAL if the
 * arguments cannot form a valid packet (string over 65535 bytes, qos > 2,
 * packet too large, wildcard in a topic name, zero packet identifier...):
 * what an encoder writes always passes mqtt_parse(). Arguments are checked
 * first, so -EINVAL wins over -ENOBUFS. With buf = NULL or cap = 0 the
 * return is -ENOBUFS; mqtt_publish_len() gives a PUBLISH's exact length,
 * acks and CONNACK are 4 bytes, PINGREQ/PINGRESP/DISCONNECT 2.
 */
int mqtt_encode_connect(uint8_t *buf, size_t cap, const struct mqtt_connect *c);
int mqtt_encode_connack(uint8_t *buf, size_t cap, bool session_present, uint8_t return_code);
int mqtt_encode_publish(uint8_t *buf, size_t cap, const struct mqtt_publish *p);
/* PUBACK, PUBREC, PUBREL (flags 0x2 set for you), PUBCOMP, UNSUBACK. */
int mqtt_encode_ack(uint8_t *buf, size_t cap, enum mqtt_type type, uint16_t packet_id);
int mqtt_encode_suback(uint8_t *buf, size_t cap, uint16_t packet_id, const uint8_t *codes, size_t n);
/* SUBSCRIBE (qos used) or UNSUBSCRIBE (qos ignored, may be NULL). */
int mqtt_encode_subscribe(uint8_t *buf, size_t cap, enum mqtt_type type, uint16_t packet_id,
                          const struct mqtt_str *filters, const uint8_t *qos, size_t n);
/* PINGREQ, PINGRESP, DISCONNECT. */
int mqtt_encode_empty(uint8_t *buf, size_t cap, enum mqtt_type type);

/* Exact encoded length of a PUBLISH (fixed header included), or 0 if the
 * packet could not be encoded (remaining length over the maximum). */
size_t mqtt_publish_len(const struct mqtt_publish *p);

/* §1.5.3: well-formed UTF-8, no U+0000, no surrogates U+D800..U+DFFF. */
bool mqtt_utf8_valid(const uint8_t *s, size_t len);
/* §1.5.3 plus the rule brokers apply at the door (mosquitto's
 * mosquitto_validate_utf8): well-formed, and none of U+0000..U+001F,
 * U+007F..U+009F. For client ids, usernames, topic names and filters: a
 * control character there only ever cross-wires logs or other clients. */
bool mqtt_string_clean(const uint8_t *s, size_t len);
/* §4.7: topic name for PUBLISH: non-empty, valid UTF-8, no '+' or '#'. */
bool mqtt_topic_name_valid(const uint8_t *s, size_t len);
/* Both of the above (a valid topic name that is also clean), in one pass
 * over the bytes: the check on every message a device publishes. */
bool mqtt_topic_name_clean(const uint8_t *s, size_t len);
/* §4.7.1: topic filter: non-empty, valid UTF-8, '#' only last and alone in
 * its level, '+' alone in its level. */
bool mqtt_topic_filter_valid(const uint8_t *s, size_t len);
/* §4.7: does topic name match filter? Applies the §4.7.2 rule that a filter
 * starting with a wildcard does not match a name starting with '$'. */
bool mqtt_topic_matches(const uint8_t *filter, size_t flen, const uint8_t *topic, size_t tlen);

/* Name of a packet type ("PUBLISH"), or "?" */
const char *mqtt_type_name(unsigned type);
