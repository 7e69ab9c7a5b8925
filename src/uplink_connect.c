/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

#include "uplink_connect.h"

size_t uplink_connect_size(const struct uplink_params *p)
{
        /* Fixed header (at most 5), protocol name "MQIsdp" (2 + 6), level,
         * flags, keepalive, then every 2-byte-prefixed field. */
        size_t n = MQTT_MAX_FIXED_HEADER + 8 + 4;

        n += 2 + (p->client_id ? strlen(p->client_id) : 0);
        if (p->will_topic)
                n += 2 + strlen(p->will_topic) + 2 + p->will_len;
        if (p->username)
                n += 2 + p->username_len;
        if (p->password)
                n += 2 + p->password_len;
        return n;
}

static int fail(const char **why, const char *reason)
{
        if (why)
                *why = reason;
        return -EINVAL;
}

int uplink_encode_connect(uint8_t *buf, size_t cap, const struct uplink_params *p, const char **why)
{
        struct mqtt_connect c = { 0 };
        size_t cid_len;
        int r;

        if (!p)
                return fail(why, "no parameters");
        if (p->protocol_level != MQTT_PROTOCOL_LEVEL_31 && p->protocol_level != MQTT_PROTOCOL_LEVEL_311)
                return fail(why, "protocol level is neither 3 (MQTT 3.1) nor 4 (MQTT 3.1.1)");
        cid_len = p->client_id ? strlen(p->client_id) : 0;
        if (cid_len > UINT16_MAX)
                return fail(why, "client id longer than 65535 bytes (§1.5.3)");
        if (!mqtt_utf8_valid((const uint8_t *) p->client_id, cid_len))
                return fail(why, "client id is not valid UTF-8 (§1.5.3)");
        /* §3.1.3.1 [MQTT-3.1.3-7]: a zero-length id needs CleanSession = 1. */
        if (cid_len == 0 && !p->clean_session)
                return fail(why, "empty client id without a clean session (§3.1.3.1)");

        c.protocol_level = p->protocol_level;
        c.clean_session = p->clean_session;
        c.keepalive = p->keepalive;
        c.client_id.data = (const uint8_t *) p->client_id;
        c.client_id.len = (uint16_t) cid_len;

        if (p->will_topic) {
                size_t tlen = strlen(p->will_topic);

                if (tlen > UINT16_MAX || p->will_len > UINT16_MAX)
                        return fail(why, "will topic or message longer than 65535 bytes (§3.1.3.2)");
                if (!mqtt_topic_name_valid((const uint8_t *) p->will_topic, tlen))
                        return fail(why, "will topic is not a valid topic name (§3.1.3.2, §4.7)");
                if (p->will_qos > 2)
                        return fail(why, "will QoS above 2 (§3.1.2.6)");
                if (p->will_len && !p->will_payload)
                        return fail(why, "will message missing");
                c.will_flag = true;
                c.will_qos = p->will_qos;
                c.will_retain = p->will_retain;
                c.will_topic.data = (const uint8_t *) p->will_topic;
                c.will_topic.len = (uint16_t) tlen;
                c.will_payload.data = p->will_payload;
                c.will_payload.len = (uint16_t) p->will_len;
        }
        if (p->username) {
                if (p->username_len > UINT16_MAX)
                        return fail(why, "user name longer than 65535 bytes (§3.1.3.4)");
                if (!mqtt_utf8_valid(p->username, p->username_len))
                        return fail(why, "user name is not valid UTF-8 (§3.1.3.4)");
                c.has_username = true;
                c.username.data = p->username;
                c.username.len = (uint16_t) p->username_len;
        }
        if (p->password) {
                if (!p->username)
                        return fail(why, "password without a user name (§3.1.2.9)");
                if (p->password_len > UINT16_MAX)
                        return fail(why, "password longer than 65535 bytes (§3.1.3.5)");
                c.has_password = true;
                c.password.data = p->password;
                c.password.len = (uint16_t) p->password_len;
        }

        r = mqtt_encode_connect(buf, cap, &c);
        if (r == -EINVAL)
                return fail(why, "CONNECT cannot be encoded");
        return r;
}
