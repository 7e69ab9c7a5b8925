/* SPDX-License-Identifier: MIT */
#include "mqtt_probe.h"

#include <errno.h>
#include <string.h>

static int put_str(unsigned char *buf, size_t size, size_t *off, const char *s) {
        size_t len = strlen(s);

        if (len > 65535)
                return -EINVAL;
        if (*off + 2 + len > size)
                return -ENOBUFS;
        buf[(*off)++] = (unsigned char) (len >> 8);
        buf[(*off)++] = (unsigned char) len;
        memcpy(buf + *off, s, len);
        *off += len;
        return 0;
}

int mqtt_probe_connect(unsigned char *buf, size_t size, const char *client_id, uint16_t keepalive,
                       const char *user, const char *pass) {
        unsigned char body[1024];
        size_t off = 0, rem, hdr = 1;
        unsigned char flags = 0x02;     /* §3.1.2.4 clean session */
        int r;

        if (user)
                flags |= 0x80;
        if (pass)
                flags |= 0x40;
        r = put_str(body, sizeof body, &off, "MQTT");   /* §3.1.2.1 */
        if (r < 0)
                return r;
        body[off++] = 4;                                /* §3.1.2.2 level 4 = 3.1.1 */
        body[off++] = flags;
        body[off++] = (unsigned char) (keepalive >> 8);
        body[off++] = (unsigned char) keepalive;
        r = put_str(body, sizeof body, &off, client_id);
        if (r >= 0 && user)
                r = put_str(body, sizeof body, &off, user);
        if (r >= 0 && pass)
                r = put_str(body, sizeof body, &off, pass);
        if (r < 0)
                return r;

        /* §2.2.3 remaining length, base-128 varint */
        rem = off;
        if (size < 5 + off)
                return -ENOBUFS;
        buf[0] = 0x10;
        do {
                unsigned char b = rem % 128;

                rem /= 128;
                buf[hdr++] = (unsigned char) (b | (rem ? 0x80 : 0));
        } while (rem);
        memcpy(buf + hdr, body, off);
        return (int) (hdr + off);
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
