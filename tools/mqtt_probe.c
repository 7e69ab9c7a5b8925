/* SPDX-License-Identifier: MIT */
#include "mqtt_probe.h"

#include <errno.h>
#include <string.h>

#include "mqtt_codec.h"

/* The str fields of struct mqtt_connect point at the caller's strings;
 * over 65535 bytes cannot be said in MQTT (§1.5.3). */
static int str_field(struct mqtt_str *f, const char *s) {
        size_t len = strlen(s);

        if (len > 65535)
                return -EINVAL;
        f->data = (const uint8_t *) s;
        f->len = (uint16_t) len;
        return 0;
}

int mqtt_probe_connect(unsigned char *buf, size_t size, const char *client_id, uint16_t keepalive,
                       const char *user, const char *pass) {
        /* The codec the device and the bridge use (lib/mqtt_codec.c), so the
         * doctor's CONNECT is byte for byte what a device sends. */
        struct mqtt_connect c = {
                .protocol_level = MQTT_PROTOCOL_LEVEL_311,
                .clean_session = true,          /* §3.1.2.4: leave no session behind */
                .keepalive = keepalive,
                .has_username = user != NULL,
                .has_password = pass != NULL,
        };
        int r;

        r = str_field(&c.client_id, client_id);
        if (r >= 0 && user)
                r = str_field(&c.username, user);
        if (r >= 0 && pass)
                r = str_field(&c.password, pass);
        if (r < 0)
                return r;
        return mqtt_encode_connect(buf, size, &c);
}

int mqtt_probe_connack(const unsigned char p[4], int *session_present) {
        if (p[0] != 0x20 || p[1] != 0x02 || (p[2] & 0xfe))
                return -EBADMSG;
        *session_present = p[2] & 1;
        return p[3];
}

const char *mqtt_probe_connack_text(int rc) {
        switch (rc) {
        case 0: return "connection accepted";
        case 1: return "unacceptable protocol version";
        case 2: return "identifier rejected";
        case 3: return "server unavailable";
        case 4: return "bad user name or password";
        case 5: return "not authorized";
        default: return "unknown return code";
        }
}
