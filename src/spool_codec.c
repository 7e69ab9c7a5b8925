/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "spool_codec.h"

static const uint8_t spool_magic[4] = { 'M', 'E', 'B', 'S' };

uint32_t spool_crc32(const uint8_t *p, size_t len)
{
        uint32_t crc = 0xffffffffu;

        /* Bitwise: the spool writes at most a few thousand records a
         * second, and a table would be 1 kB of constants for nothing. */
        for (size_t i = 0; i < len; i++) {
                crc ^= p[i];
                for (int k = 0; k < 8; k++)
                        crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
        }
        return ~crc;
}

static void put16(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t) (v >> 8);
        p[1] = (uint8_t) v;
}

static void put32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (56 - 8 * i));
}

static uint16_t get16(const uint8_t *p)
{
        return (uint16_t) ((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
        return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

static uint64_t get64(const uint8_t *p)
{
        return ((uint64_t) get32(p) << 32) | get32(p + 4);
}

/* One flag at most; a release names no message, the others do. */
static bool spool_pid_flags_valid(const struct spool_record *r)
{
        if (r->pid == 0)
                return false;
        if (r->qos == SPOOL_PID_RELEASE)
                return r->seq == 0;
        if (r->qos == SPOOL_PID_HOLD)
                return true; /* seq 0: held, its message gone already */
        return (r->qos == 0 || r->qos == SPOOL_PID_SENT_REL) && r->seq != 0;
}

static size_t body_len(const struct spool_record *r)
{
        if (r->type == SPOOL_ACKED || r->type == SPOOL_PID)
                return 12;
        return 12 + 2 + (size_t) r->topic_len + 4 + r->payload_len;
}

size_t spool_record_len(const struct spool_record *r)
{
        return SPOOL_HEADER_LEN + body_len(r);
}

int spool_record_encode(uint8_t *buf, size_t cap, const struct spool_record *r)
{
        size_t blen, len;
        uint8_t *b;

        if (r->type != SPOOL_MESSAGE && r->type != SPOOL_ACKED && r->type != SPOOL_META && r->type != SPOOL_PID)
                return -EINVAL;
        if (r->type == SPOOL_MESSAGE ? r->qos > 2 : r->type == SPOOL_META && r->qos > 0x1f)
                return -EINVAL;
        if (r->type == SPOOL_PID && !spool_pid_flags_valid(r))
                return -EINVAL;
        blen = body_len(r);
        if (blen > SPOOL_MAX_BODY)
                return -EINVAL;
        len = SPOOL_HEADER_LEN + blen;
        if (!buf || cap < len)
                return -ENOBUFS;

        b = buf + SPOOL_HEADER_LEN;
        b[0] = (uint8_t) r->type;
        b[1] = r->type != SPOOL_ACKED ? r->qos : 0;
        b[2] = r->type == SPOOL_MESSAGE && r->retain;
        b[3] = 0;
        if (r->type == SPOOL_PID)
                put16(b + 2, r->pid);
        put64(b + 4, r->seq);
        if (r->type != SPOOL_ACKED && r->type != SPOOL_PID) {
                put16(b + 12, r->topic_len);
                if (r->topic_len)
                        memcpy(b + 14, r->topic, r->topic_len);
                put32(b + 14 + r->topic_len, r->payload_len);
                if (r->payload_len)
                        memcpy(b + 18 + r->topic_len, r->payload, r->payload_len);
        }
        memcpy(buf, spool_magic, 4);
        put32(buf + 4, (uint32_t) blen);
        put32(buf + 8, spool_crc32(b, blen));
        return (int) len;
}

int spool_record_decode(const uint8_t *buf, size_t len, struct spool_record *r, size_t *used)
{
        const uint8_t *b;
        uint32_t blen;

        if (len < SPOOL_HEADER_LEN)
                return 0;
        if (memcmp(buf, spool_magic, 4) != 0)
                return -EBADMSG;
        blen = get32(buf + 4);
        if (blen < 12 || blen > SPOOL_MAX_BODY)
                return -EBADMSG;
        if (len - SPOOL_HEADER_LEN < blen)
                return 0;
        b = buf + SPOOL_HEADER_LEN;
        if (spool_crc32(b, blen) != get32(buf + 8))
                return -EBADMSG;

        memset(r, 0, sizeof *r);
        r->type = (enum spool_record_type) b[0];
        r->seq = get64(b + 4);
        if (r->type == SPOOL_ACKED) {
                if (blen != 12 || b[1] || b[2] || b[3])
                        return -EBADMSG;
        } else if (r->type == SPOOL_PID) {
                r->qos = b[1];
                r->pid = get16(b + 2);
                if (blen != 12 || !spool_pid_flags_valid(r))
                        return -EBADMSG;
        } else if (r->type == SPOOL_MESSAGE || r->type == SPOOL_META) {
                if (b[1] > (r->type == SPOOL_MESSAGE ? 2 : 0x1f) || b[2] > 1 || b[3] || blen < 18)
                        return -EBADMSG;
                if (r->type == SPOOL_META && b[2])
                        return -EBADMSG;
                r->qos = b[1];
                r->retain = b[2];
                r->topic_len = get16(b + 12);
                if ((size_t) r->topic_len + 18 > blen)
                        return -EBADMSG;
                r->topic = b + 14;
                r->payload_len = get32(b + 14 + r->topic_len);
                if ((size_t) 18 + r->topic_len + r->payload_len != blen)
                        return -EBADMSG;
                r->payload = b + 18 + r->topic_len;
        } else {
                return -EBADMSG;
        }
        *used = SPOOL_HEADER_LEN + blen;
        return 1;
}

size_t spool_find_magic(const uint8_t *buf, size_t len)
{
        const uint8_t *p = len >= sizeof spool_magic ? memmem(buf, len, spool_magic, sizeof spool_magic) : NULL;

        return p ? (size_t) (p - buf) : len;
}
