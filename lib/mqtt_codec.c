/* SPDX-License-Identifier: MIT */
/*
 * mqtt_codec — MQTT 3.1 / 3.1.1 packet codec (see lib/mqtt_codec.h).
 *
 * Section numbers and [MQTT-x.y.z-n] tags refer to the OASIS MQTT 3.1.1
 * standard. Error classes: -EBADMSG when the bytes do not form the packet
 * (lengths, truncated fields, trailing bytes), -EPROTO when they do but break
 * a rule (flag bits, QoS 3, UTF-8, wildcards, zero packet identifiers...).
 * Either way the spec says the receiver closes the network connection; the
 * distinction is only for logs and metrics.
 *
 * No allocation, no I/O, no mutable globals: this file also builds into the
 * ESP8266 firmware core.
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mqtt_codec.h"

/* §2.2.3: remaining length fits 4 bytes; fixed header 1 + 4 bytes. */
#define MAX_PACKET_DEFAULT ((size_t) MQTT_MAX_REMAINING_LENGTH + MQTT_MAX_FIXED_HEADER)

/* -------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static inline uint16_t get_u16(const uint8_t *p) {
        return (uint16_t) ((unsigned) p[0] << 8 | p[1]);
}

static inline uint8_t *put_u16(uint8_t *p, uint16_t v) {
        p[0] = (uint8_t) (v >> 8);
        p[1] = (uint8_t) v;
        return p + 2;
}

/* Bytes needed to encode rl as a §2.2.3 variable byte integer, or 0 when
 * rl does not fit four bytes. */
static size_t rl_size(size_t rl) {
        if (rl < 128u)
                return 1;
        if (rl < 16384u)
                return 2;
        if (rl < 2097152u)
                return 3;
        if (rl <= MQTT_MAX_REMAINING_LENGTH)
                return 4;
        return 0;
}

/* Writes the fixed header; rl must already be known to fit. */
static uint8_t *put_header(uint8_t *p, uint8_t first, size_t rl) {
        *p++ = first;
        do {
                uint8_t b = (uint8_t) (rl & 0x7fu);
                rl >>= 7;
                if (rl > 0)
                        b |= 0x80u;
                *p++ = b;
        } while (rl > 0);
        return p;
}

static uint8_t *put_str(uint8_t *p, const struct mqtt_str *s) {
        p = put_u16(p, s->len);
        if (s->len > 0) {
                memcpy(p, s->data, s->len);
                p += s->len;
        }
        return p;
}

/* A field the caller hands to an encoder: len > 0 needs data. */
static bool str_ok(const struct mqtt_str *s) {
        return s->len == 0 || s->data != NULL;
}

static int fail(const char **why, const char *reason, int err) {
        if (why)
                *why = reason;
        return err;
}

/* Read cursor over one packet body. */
struct rd {
        const uint8_t *p;
        const uint8_t *end;
};

static size_t rd_left(const struct rd *r) {
        return (size_t) (r->end - r->p);
}

static bool rd_u8(struct rd *r, uint8_t *v) {
        if (rd_left(r) < 1)
                return false;
        *v = *r->p++;
        return true;
}

static bool rd_u16(struct rd *r, uint16_t *v) {
        if (rd_left(r) < 2)
                return false;
        *v = get_u16(r->p);
        r->p += 2;
        return true;
}

/* §1.5.3 / §1.5.4 length-prefixed string or binary data. A present field
 * always gets a non-NULL data pointer, even when empty. */
static bool rd_str(struct rd *r, struct mqtt_str *s) {
        uint16_t n;

        if (!rd_u16(r, &n) || rd_left(r) < n)
                return false;
        s->data = r->p;
        s->len = n;
        r->p += n;
        return true;
}

/* -------------------------------------------------------------------------
 * UTF-8 and topics (§1.5.3, §4.7)
 * ---------------------------------------------------------------------- */

/* §1.5.3; with forbid_ctrl also the C0 and C1 control characters
 * U+0001..U+001F and U+007F..U+009F, as mosquitto_validate_utf8() does. */
static bool utf8_check(const uint8_t *s, size_t len, bool forbid_ctrl) {
        size_t i = 0;

        if (len > 0 && !s)
                return false;

        while (i < len) {
                uint8_t c = s[i];
                uint32_t cp;
                size_t n, k;

                if (c < 0x80u) {
                        /* §1.5.3 [MQTT-1.5.3-2]: U+0000 must not appear. */
                        if (c == 0)
                                return false;
                        if (forbid_ctrl && (c < 0x20u || c == 0x7fu))
                                return false;
                        i++;
                        continue;
                }
                if (c >= 0xc2u && c <= 0xdfu) {
                        n = 1;
                        cp = c & 0x1fu;
                } else if (c >= 0xe0u && c <= 0xefu) {
                        n = 2;
                        cp = c & 0x0fu;
                } else if (c >= 0xf0u && c <= 0xf4u) {
                        n = 3;
                        cp = c & 0x07u;
                } else {
                        /* Continuation byte out of place, 0xc0/0xc1 (always
                         * overlong) or 0xf5..0xff (beyond U+10FFFF). */
                        return false;
                }
                if (len - i - 1 < n)
                        return false;
                for (k = 1; k <= n; k++) {
                        uint8_t cc = s[i + k];
                        if ((cc & 0xc0u) != 0x80u)
                                return false;
                        cp = cp << 6 | (cc & 0x3fu);
                }
                /* §1.5.3 [MQTT-1.5.3-1]: "well-formed" per RFC 3629 rules out
                 * overlong forms and code points past U+10FFFF, and the
                 * surrogates U+D800..U+DFFF are explicitly forbidden. */
                if ((n == 2 && cp < 0x800u) || (n == 3 && cp < 0x10000u) || cp > 0x10ffffu)
                        return false;
                if (cp >= 0xd800u && cp <= 0xdfffu)
                        return false;
                if (forbid_ctrl && cp >= 0x80u && cp <= 0x9fu)
                        return false;
                i += n + 1;
        }
        return true;
}

bool mqtt_utf8_valid(const uint8_t *s, size_t len) {
        return utf8_check(s, len, false);
}

bool mqtt_string_clean(const uint8_t *s, size_t len) {
        return utf8_check(s, len, true);
}

bool mqtt_topic_name_valid(const uint8_t *s, size_t len) {
        /* §4.7.3 [MQTT-4.7.3-1]: at least one character; §1.5.3: at most
         * 65535 bytes, since the length prefix is 16 bits. */
        if (len == 0 || len > UINT16_MAX || !s)
                return false;
        /* §3.3.2.1 [MQTT-3.3.2-2]: no wildcards in a topic name. */
        if (memchr(s, '+', len) || memchr(s, '#', len))
                return false;
        return mqtt_utf8_valid(s, len);
}

bool mqtt_topic_name_clean(const uint8_t *s, size_t len) {
        if (len == 0 || len > UINT16_MAX || !s)
                return false;
        if (memchr(s, '+', len) || memchr(s, '#', len))
                return false;
        return utf8_check(s, len, true);
}

bool mqtt_topic_filter_valid(const uint8_t *s, size_t len) {
        size_t i, level_start = 0;

        /* §4.7.3 [MQTT-4.7.3-1]: non-empty; §1.5.3 length prefix limit. */
        if (len == 0 || len > UINT16_MAX || !s)
                return false;

        for (i = 0; i < len; i++) {
                if (s[i] == '/') {
                        level_start = i + 1;
                        continue;
                }
                if (s[i] == '#') {
                        /* §4.7.1.2 [MQTT-4.7.1-2]: '#' alone in its level and
                         * the last character of the filter ("a/#/b", "#a",
                         * "a#" are all invalid). */
                        if (i != level_start || i + 1 != len)
                                return false;
                } else if (s[i] == '+') {
                        /* §4.7.1.3 [MQTT-4.7.1-3]: '+' occupies a whole level
                         * ("a+", "+a" invalid). */
                        if (i != level_start || (i + 1 < len && s[i + 1] != '/'))
                                return false;
                }
        }
        return mqtt_utf8_valid(s, len);
}

bool mqtt_topic_matches(const uint8_t *filter, size_t flen, const uint8_t *topic, size_t tlen) {
        const uint8_t *f = filter, *fend = filter + flen;
        const uint8_t *t = topic, *tend = topic + tlen;
        bool topic_done = false;

        if (flen == 0 || tlen == 0 || !filter || !topic)
                return false;

        /* §4.7.2 [MQTT-4.7.2-1]: a filter starting with a wildcard must not
         * match a topic name starting with '$' ($SYS/... is server-owned). */
        if (topic[0] == '$' && (filter[0] == '#' || filter[0] == '+'))
                return false;

        for (;;) {
                const uint8_t *fs = memchr(f, '/', (size_t) (fend - f));
                size_t fl = fs ? (size_t) (fs - f) : (size_t) (fend - f);
                const uint8_t *ts;
                size_t tl;
                bool f_more, t_more;

                /* §4.7.1.2: '#' matches this level and every level below,
                 * and also the parent: "sport/#" matches "sport". */
                if (fl == 1 && f[0] == '#')
                        return true;
                if (topic_done)
                        return false;

                ts = memchr(t, '/', (size_t) (tend - t));
                tl = ts ? (size_t) (ts - t) : (size_t) (tend - t);

                /* §4.7.1.3: '+' matches exactly one level, an empty one too. */
                if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl) != 0))
                        return false;

                f += fl;
                t += tl;
                f_more = f < fend;
                t_more = t < tend;
                if (!f_more)
                        return !t_more;
                f++; /* skip '/' */
                if (t_more)
                        t++;
                else
                        topic_done = true;
        }
}

const char *mqtt_type_name(unsigned type) {
        static const char *const names[] = {
                [MQTT_CONNECT] = "CONNECT",         [MQTT_CONNACK] = "CONNACK",
                [MQTT_PUBLISH] = "PUBLISH",         [MQTT_PUBACK] = "PUBACK",
                [MQTT_PUBREC] = "PUBREC",           [MQTT_PUBREL] = "PUBREL",
                [MQTT_PUBCOMP] = "PUBCOMP",         [MQTT_SUBSCRIBE] = "SUBSCRIBE",
                [MQTT_SUBACK] = "SUBACK",           [MQTT_UNSUBSCRIBE] = "UNSUBSCRIBE",
                [MQTT_UNSUBACK] = "UNSUBACK",       [MQTT_PINGREQ] = "PINGREQ",
                [MQTT_PINGRESP] = "PINGRESP",       [MQTT_DISCONNECT] = "DISCONNECT",
        };

        if (type < sizeof(names) / sizeof(names[0]) && names[type])
                return names[type];
        return "?";
}

/* -------------------------------------------------------------------------
 * Framing (§2.2.3)
 * ---------------------------------------------------------------------- */

int mqtt_frame(const uint8_t *buf, size_t len, size_t max_packet, size_t *packet_len) {
        size_t rl = 0, i;

        if (max_packet == 0 || max_packet > MAX_PACKET_DEFAULT)
                max_packet = MAX_PACKET_DEFAULT;

        for (i = 0; i < 4; i++) {
                uint8_t b;

                if (1 + i >= len)
                        break; /* header incomplete */
                b = buf[1 + i];
                rl |= (size_t) (b & 0x7fu) << (7 * i);
                if (!(b & 0x80u)) {
                        size_t total = 1 + (i + 1) + rl;

                        if (total > max_packet)
                                return -EMSGSIZE;
                        if (len < total)
                                return 0;
                        *packet_len = total;
                        return 1;
                }
                /* §2.2.3: at most four bytes; a continuation bit on the
                 * fourth makes the packet malformed. Non-minimal encodings
                 * (e.g. 0x80 0x00) are accepted: 3.1.1 does not forbid them. */
                if (i == 3)
                        return -EBADMSG;
        }

        /* Header incomplete. Because non-minimal encodings are accepted, the
         * next length byte may add nothing, so the smallest possible packet
         * is: type byte, the bytes seen, one more, and rl so far. If even
         * that is too large, say so now rather than buffer more. */
        if (len >= 2 && 1 + i + 1 + rl > max_packet)
                return -EMSGSIZE;
        if (len == 1 && 2 > max_packet)
                return -EMSGSIZE;
        return 0;
}

/* -------------------------------------------------------------------------
 * Parsers, one per packet type. Each gets the body (variable header and
 * payload) and fills out->u.
 * ---------------------------------------------------------------------- */

static int parse_connect(struct rd *r, struct mqtt_connect *c, const char **why) {
        struct mqtt_str name;
        uint8_t level, fl;
        bool is_mqtt, is_mqisdp;

        /* §3.1.2.1 protocol name, §3.1.2.2 protocol level. */
        if (!rd_str(r, &name))
                return fail(why, "CONNECT truncated in protocol name (§3.1.2.1)", -EBADMSG);
        is_mqtt = name.len == 4 && memcmp(name.data, "MQTT", 4) == 0;
        is_mqisdp = name.len == 6 && memcmp(name.data, "MQIsdp", 6) == 0;
        if (!is_mqtt && !is_mqisdp)
                /* §3.1.2.1 [MQTT-3.1.2-1]: not an MQTT client at all; there
                 * is nobody to send a CONNACK to. */
                return fail(why, "CONNECT protocol name is neither MQTT nor MQIsdp (§3.1.2.1)", -EPROTO);
        if (!rd_u8(r, &level))
                return fail(why, "CONNECT truncated in protocol level (§3.1.2.2)", -EBADMSG);
        c->protocol_level = level;
        if (!(is_mqtt && level == MQTT_PROTOCOL_LEVEL_311) && !(is_mqisdp && level == MQTT_PROTOCOL_LEVEL_31))
                /* §3.1.2.2 [MQTT-3.1.2-2]: answer CONNACK 1 and close. The
                 * rest may be another version's layout (MQTT 5 properties),
                 * so it is not looked at. */
                return fail(why, "CONNECT protocol level not supported (§3.1.2.2)", -EPROTONOSUPPORT);

        if (!rd_u8(r, &fl) || !rd_u16(r, &c->keepalive))
                return fail(why, "CONNECT truncated in variable header (§3.1.2)", -EBADMSG);

        /* §3.1.2.3 [MQTT-3.1.2-3]: reserved flag must be zero. */
        if (fl & 0x01u)
                return fail(why, "CONNECT reserved flag set (§3.1.2.3 [MQTT-3.1.2-3])", -EPROTO);
        c->clean_session = fl & 0x02u;
        c->will_flag = fl & 0x04u;
        c->will_qos = (fl >> 3) & 0x03u;
        c->will_retain = fl & 0x20u;
        c->has_password = fl & 0x40u;
        c->has_username = fl & 0x80u;

        if (!c->will_flag) {
                /* §3.1.2.5 [MQTT-3.1.2-11][MQTT-3.1.2-13]: without a will,
                 * will QoS must be 0; §3.1.2.7 [MQTT-3.1.2-15]: and will
                 * retain 0. */
                if (c->will_qos != 0)
                        return fail(why, "CONNECT will QoS set without will flag (§3.1.2.6 [MQTT-3.1.2-13])", -EPROTO);
                if (c->will_retain)
                        return fail(why, "CONNECT will retain set without will flag (§3.1.2.7 [MQTT-3.1.2-15])", -EPROTO);
        } else if (c->will_qos == 3) {
                /* §3.1.2.6 [MQTT-3.1.2-14]. */
                return fail(why, "CONNECT will QoS 3 (§3.1.2.6 [MQTT-3.1.2-14])", -EPROTO);
        }
        /* §3.1.2.9 [MQTT-3.1.2-22]: no password without a user name. The 3.1
         * spec says the same ("not valid to supply a password without a user
         * name"), so MQIsdp gets the same treatment. */
        if (c->has_password && !c->has_username)
                return fail(why, "CONNECT password flag without user name flag (§3.1.2.9 [MQTT-3.1.2-22])", -EPROTO);

        /* §3.1.3 payload: fields in this order, each present iff its flag. */
        if (!rd_str(r, &c->client_id))
                return fail(why, "CONNECT truncated in client identifier (§3.1.3.1)", -EBADMSG);
        /* §3.1.3.1 [MQTT-3.1.3-4]: client id is a UTF-8 string. */
        if (!mqtt_utf8_valid(c->client_id.data, c->client_id.len))
                return fail(why, "CONNECT client identifier not valid UTF-8 (§3.1.3.1 [MQTT-3.1.3-4])", -EPROTO);

        if (c->will_flag) {
                if (!rd_str(r, &c->will_topic))
                        return fail(why, "CONNECT truncated in will topic (§3.1.3.2)", -EBADMSG);
                /* §3.1.3.2 [MQTT-3.1.3-10] UTF-8, and it is published as a
                 * topic name, so §4.7 applies: no wildcards, not empty. */
                if (!mqtt_topic_name_valid(c->will_topic.data, c->will_topic.len))
                        return fail(why, "CONNECT will topic is not a valid topic name (§3.1.3.2, §4.7)", -EPROTO);
                /* §3.1.3.3: binary, any bytes. */
                if (!rd_str(r, &c->will_payload))
                        return fail(why, "CONNECT truncated in will message (§3.1.3.3)", -EBADMSG);
        }
        if (c->has_username) {
                if (!rd_str(r, &c->username))
                        return fail(why, "CONNECT truncated in user name (§3.1.3.4 [MQTT-3.1.2-19])", -EBADMSG);
                if (!mqtt_utf8_valid(c->username.data, c->username.len))
                        return fail(why, "CONNECT user name not valid UTF-8 (§3.1.3.4 [MQTT-3.1.3-11])", -EPROTO);
        }
        if (c->has_password) {
                /* §3.1.3.5: binary data, not UTF-8 checked. */
                if (!rd_str(r, &c->password))
                        return fail(why, "CONNECT truncated in password (§3.1.3.5 [MQTT-3.1.2-21])", -EBADMSG);
        }
        /* §3.1.2.8/§3.1.2.9 [MQTT-3.1.2-18][MQTT-3.1.2-20]: a field whose
         * flag is clear must not be present, so nothing may follow. */
        if (rd_left(r) != 0)
                return fail(why, "CONNECT has bytes after its last flagged field (§3.1.3)", -EBADMSG);
        return 0;
}

static int parse_connack(struct rd *r, struct mqtt_connack *a, const char **why) {
        uint8_t fl, rc;

        /* §3.2: remaining length is exactly 2. */
        if (rd_left(r) != 2)
                return fail(why, "CONNACK remaining length is not 2 (§3.2.1)", -EBADMSG);
        fl = r->p[0];
        rc = r->p[1];
        r->p += 2;
        /* §3.2.2.1: bits 7-1 of the acknowledge flags are reserved, 0. */
        if (fl & 0xfeu)
                return fail(why, "CONNACK reserved acknowledge flags set (§3.2.2.1)", -EPROTO);
        /* §3.2.2.3: 6..255 are reserved. */
        if (rc > MQTT_CONNACK_NOT_AUTHORIZED)
                return fail(why, "CONNACK reserved return code (§3.2.2.3)", -EPROTO);
        /* §3.2.2.2 [MQTT-3.2.2-4]: a refusal never claims a session. */
        if (rc != MQTT_CONNACK_ACCEPTED && (fl & 0x01u))
                return fail(why, "CONNACK session present with non-zero return code (§3.2.2.2 [MQTT-3.2.2-4])",
                            -EPROTO);
        a->session_present = fl & 0x01u;
        a->return_code = rc;
        return 0;
}

static int parse_publish(struct rd *r, uint8_t flags, struct mqtt_publish *p, const char **why) {
        p->dup = flags & 0x08u;
        p->qos = (flags >> 1) & 0x03u;
        p->retain = flags & 0x01u;

        /* §3.3.1.2 [MQTT-3.3.1-4]: QoS 3 is malformed. */
        if (p->qos == 3)
                return fail(why, "PUBLISH QoS 3 (§3.3.1.2 [MQTT-3.3.1-4])", -EPROTO);
        /* §3.3.1.1 [MQTT-3.3.1-2]: DUP must be 0 on QoS 0, which is never
         * redelivered. */
        if (p->dup && p->qos == 0)
                return fail(why, "PUBLISH DUP set on QoS 0 (§3.3.1.1 [MQTT-3.3.1-2])", -EPROTO);

        if (!rd_str(r, &p->topic))
                return fail(why, "PUBLISH truncated in topic name (§3.3.2.1)", -EBADMSG);
        /* §3.3.2.1 [MQTT-3.3.2-1][MQTT-3.3.2-2], §4.7.3 [MQTT-4.7.3-1]. */
        if (!mqtt_topic_name_valid(p->topic.data, p->topic.len))
                return fail(why, "PUBLISH topic name empty, not UTF-8 or has wildcards (§3.3.2.1, §4.7)",
                            -EPROTO);
        if (p->qos > 0) {
                if (!rd_u16(r, &p->packet_id))
                        return fail(why, "PUBLISH truncated in packet identifier (§3.3.2.2)", -EBADMSG);
                /* §2.3.1 [MQTT-2.3.1-1]. */
                if (p->packet_id == 0)
                        return fail(why, "PUBLISH packet identifier is zero (§2.3.1 [MQTT-2.3.1-1])", -EPROTO);
        }
        /* §3.3.3: the rest is the payload, possibly empty. */
        p->payload = r->p;
        p->payload_len = rd_left(r);
        r->p = r->end;
        return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: just a packet identifier. */
static int parse_ack(struct rd *r, uint16_t *packet_id, const char **why) {
        /* §3.4.1, §3.5.1, §3.6.1, §3.7.1, §3.11.1: remaining length 2. */
        if (rd_left(r) != 2)
                return fail(why, "acknowledgement remaining length is not 2 (§3.4.1)", -EBADMSG);
        *packet_id = get_u16(r->p);
        r->p += 2;
        if (*packet_id == 0)
                return fail(why, "packet identifier is zero (§2.3.1 [MQTT-2.3.1-1])", -EPROTO);
        return 0;
}

static int parse_list(struct rd *r, enum mqtt_type type, struct mqtt_list *l, const char **why) {
        if (!rd_u16(r, &l->packet_id))
                return fail(why, "truncated in packet identifier (§2.3.1)", -EBADMSG);
        /* §2.3.1 [MQTT-2.3.1-1]. */
        if (l->packet_id == 0)
                return fail(why, "packet identifier is zero (§2.3.1 [MQTT-2.3.1-1])", -EPROTO);

        l->start = r->p;
        l->len = rd_left(r);
        l->count = 0;

        while (rd_left(r) > 0) {
                struct mqtt_str f;
                uint8_t q;

                if (type == MQTT_SUBACK) {
                        q = *r->p++; /* loop condition: at least one byte left */
                        /* §3.9.3 [MQTT-3.9.3-2]: only 0, 1, 2 and 0x80. */
                        if (q > 2 && q != MQTT_SUBACK_FAILURE)
                                return fail(why, "SUBACK reserved return code (§3.9.3 [MQTT-3.9.3-2])", -EPROTO);
                        l->count++;
                        continue;
                }

                if (!rd_str(r, &f))
                        return fail(why, "truncated in topic filter (§3.8.3, §3.10.3)", -EBADMSG);
                /* §3.8.3 [MQTT-3.8.3-1], §3.10.3 [MQTT-3.10.3-1], §4.7.1. */
                if (!mqtt_topic_filter_valid(f.data, f.len))
                        return fail(why, "topic filter empty, not UTF-8 or misplaced wildcard (§4.7.1)", -EPROTO);
                if (type == MQTT_SUBSCRIBE) {
                        if (!rd_u8(r, &q))
                                return fail(why, "SUBSCRIBE truncated in requested QoS (§3.8.3.1)", -EBADMSG);
                        /* §3.8.3.1 [MQTT-3-8.3-4]: upper 6 bits reserved
                         * zero, and QoS 3 does not exist. */
                        if (q > 2)
                                return fail(why, "SUBSCRIBE requested QoS > 2 or reserved bits set (§3.8.3.1 [MQTT-3-8.3-4])",
                                            -EPROTO);
                }
                l->count++;
        }

        /* §3.8.3 [MQTT-3.8.3-3], §3.10.3 [MQTT-3.10.3-2]: at least one
         * entry; §3.9.3: a SUBACK has one code per filter, so also >= 1. */
        if (l->count == 0)
                return fail(why, "no entries (§3.8.3 [MQTT-3.8.3-3], §3.10.3 [MQTT-3.10.3-2])", -EPROTO);
        return 0;
}

int mqtt_parse(const uint8_t *pkt, size_t len, struct mqtt_packet *out, const char **why) {
        size_t total = 0;
        uint8_t type, flags, want_flags;
        struct rd r;
        int ret;

        if (!pkt || !out)
                return fail(why, "no packet", -EINVAL);

        memset(out, 0, sizeof(*out));

        ret = mqtt_frame(pkt, len, 0, &total);
        if (ret < 0)
                return fail(why, "remaining length uses more than 4 bytes (§2.2.3)", -EBADMSG);
        /* §2.2.3: the remaining length must account for exactly the bytes
         * handed in; mqtt_frame() delimits them. */
        if (ret == 0 || total != len)
                return fail(why, "packet length does not match remaining length (§2.2.3)", -EBADMSG);

        type = pkt[0] >> 4;
        flags = pkt[0] & 0x0fu;
        /* mqtt_frame() proved the length field ends within 4 bytes. */
        r.p = pkt + 1;
        while (*r.p++ & 0x80u)
                ;
        r.end = pkt + len;

        /* §2.2.1: 0 and 15 are reserved ("Forbidden"). */
        if (type < MQTT_CONNECT || type > MQTT_DISCONNECT)
                return fail(why, "reserved control packet type (§2.2.1)", -EPROTO);

        out->type = (enum mqtt_type) type;
        out->flags = flags;

        /* §2.2.2 [MQTT-2.2.2-1][MQTT-2.2.2-2]: flags are fixed for every type
         * but PUBLISH; PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0b0010
         * (§3.6.1 [MQTT-3.6.1-1], §3.8.1 [MQTT-3.8.1-1], §3.10.1 [MQTT-3.10.1-1]). */
        if (type != MQTT_PUBLISH) {
                want_flags = (type == MQTT_PUBREL || type == MQTT_SUBSCRIBE || type == MQTT_UNSUBSCRIBE) ? 0x2u : 0x0u;
                if (flags != want_flags)
                        return fail(why, "invalid fixed header flags (§2.2.2 [MQTT-2.2.2-2])", -EPROTO);
        }

        switch (type) {
        case MQTT_CONNECT:
                return parse_connect(&r, &out->u.connect, why);
        case MQTT_CONNACK:
                return parse_connack(&r, &out->u.connack, why);
        case MQTT_PUBLISH:
                return parse_publish(&r, flags, &out->u.publish, why);
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_UNSUBACK:
                return parse_ack(&r, &out->u.packet_id, why);
        case MQTT_SUBSCRIBE:
        case MQTT_UNSUBSCRIBE:
        case MQTT_SUBACK:
                return parse_list(&r, (enum mqtt_type) type, &out->u.list, why);
        default:
                /* PINGREQ §3.12, PINGRESP §3.13, DISCONNECT §3.14: no
                 * variable header, no payload. */
                if (rd_left(&r) != 0)
                        return fail(why, "PINGREQ/PINGRESP/DISCONNECT remaining length is not 0 (§3.12-§3.14)",
                                    -EBADMSG);
                return 0;
        }
}

void mqtt_list_iter_init(struct mqtt_list_iter *it, enum mqtt_type type, const struct mqtt_list *list) {
        it->type = type;
        it->p = list->start;
        it->end = list->start ? list->start + list->len : NULL;
}

bool mqtt_list_next(struct mqtt_list_iter *it, struct mqtt_str *filter, uint8_t *qos) {
        struct rd r = { .p = it->p, .end = it->end };
        struct mqtt_str f = { NULL, 0 };
        uint8_t q = 0;

        if (!r.p || r.p >= r.end)
                return false;

        switch (it->type) {
        case MQTT_SUBACK:
                q = *r.p++; /* r.p < r.end checked above */
                break;
        case MQTT_SUBSCRIBE:
        case MQTT_UNSUBSCRIBE:
                /* Re-checks bounds so a list that did not come from
                 * mqtt_parse() cannot walk past its end. */
                if (!rd_str(&r, &f))
                        goto stop;
                if (it->type == MQTT_SUBSCRIBE && !rd_u8(&r, &q))
                        goto stop;
                break;
        default:
                goto stop;
        }

        it->p = r.p;
        if (filter)
                *filter = f;
        if (qos)
                *qos = q;
        return true;

stop:
        it->p = it->end;
        return false;
}

/* -------------------------------------------------------------------------
 * Encoders
 * ---------------------------------------------------------------------- */

static bool connect_body_len(const struct mqtt_connect *c, size_t *rl) {
        size_t n;

        if (c->protocol_level == MQTT_PROTOCOL_LEVEL_311)
                n = 2 + 4;
        else if (c->protocol_level == MQTT_PROTOCOL_LEVEL_31)
                n = 2 + 6;
        else
                return false;
        n += 1 + 1 + 2; /* level, flags, keepalive */
        n += 2 + (size_t) c->client_id.len;
        if (c->will_flag)
                n += 2 + (size_t) c->will_topic.len + 2 + (size_t) c->will_payload.len;
        if (c->has_username)
                n += 2 + (size_t) c->username.len;
        if (c->has_password)
                n += 2 + (size_t) c->password.len;
        *rl = n; /* at most ~5 * 65537, always fits §2.2.3 */
        return true;
}

int mqtt_encode_connect(uint8_t *buf, size_t cap, const struct mqtt_connect *c) {
        size_t rl, total;
        uint8_t fl = 0, *p;

        if (!c || !connect_body_len(c, &rl))
                return -EINVAL;
        if (!str_ok(&c->client_id) || !mqtt_utf8_valid(c->client_id.data, c->client_id.len))
                return -EINVAL;
        if (c->will_flag) {
                if (c->will_qos > 2 || !str_ok(&c->will_payload) ||
                    !mqtt_topic_name_valid(c->will_topic.data, c->will_topic.len))
                        return -EINVAL;
        }
        if (c->has_username && (!str_ok(&c->username) || !mqtt_utf8_valid(c->username.data, c->username.len)))
                return -EINVAL;
        if (c->has_password && (!c->has_username || !str_ok(&c->password)))
                return -EINVAL; /* §3.1.2.9 [MQTT-3.1.2-22] */

        total = 1 + rl_size(rl) + rl;
        if (!buf || cap < total)
                return -ENOBUFS;

        if (c->clean_session)
                fl |= 0x02u;
        /* §3.1.2.5..7: will QoS/retain only travel with a will. */
        if (c->will_flag)
                fl |= (uint8_t) (0x04u | (unsigned) c->will_qos << 3 | (c->will_retain ? 0x20u : 0u));
        if (c->has_password)
                fl |= 0x40u;
        if (c->has_username)
                fl |= 0x80u;

        p = put_header(buf, MQTT_CONNECT << 4, rl);
        if (c->protocol_level == MQTT_PROTOCOL_LEVEL_311) {
                p = put_u16(p, 4);
                memcpy(p, "MQTT", 4);
                p += 4;
        } else {
                p = put_u16(p, 6);
                memcpy(p, "MQIsdp", 6);
                p += 6;
        }
        *p++ = c->protocol_level;
        *p++ = fl;
        p = put_u16(p, c->keepalive);
        p = put_str(p, &c->client_id);
        if (c->will_flag) {
                p = put_str(p, &c->will_topic);
                p = put_str(p, &c->will_payload);
        }
        if (c->has_username)
                p = put_str(p, &c->username);
        if (c->has_password)
                p = put_str(p, &c->password);
        return (int) (p - buf);
}

int mqtt_encode_connack(uint8_t *buf, size_t cap, bool session_present, uint8_t return_code) {
        /* §3.2.2.3: codes above 5 are reserved; §3.2.2.2 [MQTT-3.2.2-4]:
         * a refusal carries session present 0. */
        if (return_code > MQTT_CONNACK_NOT_AUTHORIZED || (session_present && return_code != 0))
                return -EINVAL;
        if (!buf || cap < 4)
                return -ENOBUFS;
        buf[0] = MQTT_CONNACK << 4;
        buf[1] = 2;
        buf[2] = session_present ? 1 : 0;
        buf[3] = return_code;
        return 4;
}

static size_t publish_rl(const struct mqtt_publish *p) {
        size_t fixed = 2 + (size_t) p->topic.len + (p->qos > 0 ? 2u : 0u);

        if (p->payload_len > MQTT_MAX_REMAINING_LENGTH - fixed)
                return SIZE_MAX;
        return fixed + p->payload_len;
}

size_t mqtt_publish_len(const struct mqtt_publish *p) {
        size_t rl;

        if (!p)
                return 0;
        rl = publish_rl(p);
        if (rl == SIZE_MAX)
                return 0;
        return 1 + rl_size(rl) + rl;
}

int mqtt_encode_publish(uint8_t *buf, size_t cap, const struct mqtt_publish *p) {
        size_t rl, total;
        uint8_t *w;

        if (!p || p->qos > 2)
                return -EINVAL;
        /* §3.3.1.1 [MQTT-3.3.1-2]. */
        if (p->dup && p->qos == 0)
                return -EINVAL;
        /* §3.3.2.1, §4.7: the receiver would reject it. */
        if (!mqtt_topic_name_valid(p->topic.data, p->topic.len))
                return -EINVAL;
        /* §2.3.1 [MQTT-2.3.1-1]. */
        if (p->qos > 0 && p->packet_id == 0)
                return -EINVAL;
        if (p->payload_len > 0 && !p->payload)
                return -EINVAL;
        rl = publish_rl(p);
        if (rl == SIZE_MAX)
                return -EINVAL;
        total = 1 + rl_size(rl) + rl;
        if (!buf || cap < total)
                return -ENOBUFS;

        w = put_header(buf, (uint8_t) (MQTT_PUBLISH << 4 | (p->dup ? 0x08u : 0u) | (unsigned) p->qos << 1 |
                                       (p->retain ? 0x01u : 0u)),
                       rl);
        w = put_str(w, &p->topic);
        if (p->qos > 0)
                w = put_u16(w, p->packet_id);
        if (p->payload_len > 0) {
                memcpy(w, p->payload, p->payload_len);
                w += p->payload_len;
        }
        return (int) (w - buf);
}

int mqtt_encode_ack(uint8_t *buf, size_t cap, enum mqtt_type type, uint16_t packet_id) {
        uint8_t first;

        switch (type) {
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBCOMP:
        case MQTT_UNSUBACK:
                first = (uint8_t) (type << 4);
                break;
        case MQTT_PUBREL:
                /* §3.6.1 [MQTT-3.6.1-1]. */
                first = (uint8_t) (type << 4 | 0x2u);
                break;
        default:
                return -EINVAL;
        }
        if (packet_id == 0)
                return -EINVAL; /* §2.3.1 [MQTT-2.3.1-1] */
        if (!buf || cap < 4)
                return -ENOBUFS;
        buf[0] = first;
        buf[1] = 2;
        put_u16(buf + 2, packet_id);
        return 4;
}

int mqtt_encode_suback(uint8_t *buf, size_t cap, uint16_t packet_id, const uint8_t *codes, size_t n) {
        size_t rl, total, i;
        uint8_t *p;

        if (packet_id == 0 || n == 0 || !codes || n > MQTT_MAX_REMAINING_LENGTH - 2)
                return -EINVAL;
        for (i = 0; i < n; i++)
                /* §3.9.3 [MQTT-3.9.3-2]. */
                if (codes[i] > 2 && codes[i] != MQTT_SUBACK_FAILURE)
                        return -EINVAL;
        rl = 2 + n;
        total = 1 + rl_size(rl) + rl;
        if (!buf || cap < total)
                return -ENOBUFS;
        p = put_header(buf, MQTT_SUBACK << 4, rl);
        p = put_u16(p, packet_id);
        memcpy(p, codes, n);
        return (int) (p + n - buf);
}

int mqtt_encode_subscribe(uint8_t *buf, size_t cap, enum mqtt_type type, uint16_t packet_id,
                          const struct mqtt_str *filters, const uint8_t *qos, size_t n) {
        size_t rl = 2, total, i, per_qos;
        uint8_t *p;

        if (type == MQTT_SUBSCRIBE)
                per_qos = 1;
        else if (type == MQTT_UNSUBSCRIBE)
                per_qos = 0;
        else
                return -EINVAL;
        /* §2.3.1 [MQTT-2.3.1-1]; §3.8.3 [MQTT-3.8.3-3], §3.10.3 [MQTT-3.10.3-2]. */
        if (packet_id == 0 || n == 0 || !filters || (per_qos && !qos))
                return -EINVAL;
        for (i = 0; i < n; i++) {
                size_t e = 2 + (size_t) filters[i].len + per_qos;

                if (!mqtt_topic_filter_valid(filters[i].data, filters[i].len))
                        return -EINVAL;
                if (per_qos && qos[i] > 2)
                        return -EINVAL;
                if (e > MQTT_MAX_REMAINING_LENGTH - rl)
                        return -EINVAL;
                rl += e;
        }
        total = 1 + rl_size(rl) + rl;
        if (!buf || cap < total)
                return -ENOBUFS;

        /* §3.8.1 [MQTT-3.8.1-1], §3.10.1 [MQTT-3.10.1-1]: flags 0b0010. */
        p = put_header(buf, (uint8_t) (type << 4 | 0x2u), rl);
        p = put_u16(p, packet_id);
        for (i = 0; i < n; i++) {
                p = put_str(p, &filters[i]);
                if (per_qos)
                        *p++ = qos[i];
        }
        return (int) (p - buf);
}

int mqtt_encode_empty(uint8_t *buf, size_t cap, enum mqtt_type type) {
        if (type != MQTT_PINGREQ && type != MQTT_PINGRESP && type != MQTT_DISCONNECT)
                return -EINVAL;
        if (!buf || cap < 2)
                return -ENOBUFS;
        buf[0] = (uint8_t) (type << 4);
        buf[1] = 0;
        return 2;
}
