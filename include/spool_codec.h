/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * spool_codec — the on-disk record format of the store-and-forward spool.
 * Pure functions on buffers (fuzzed); spool.c does the file I/O.
 *
 * A spool file is an append-only sequence of records:
 *
 *   magic "MEBS" | u32 body length | u32 CRC-32 of body | body
 *
 * body of a MESSAGE record (type 1):
 *   u8 type | u8 qos | u8 retain | u8 0 | u64 seq | u16 topic length | topic
 *   | u32 payload length | payload
 * body of an ACKED record (type 2): every message with seq <= this is safe
 * upstream:
 *   u8 type | u8 0 | u8 0 | u8 0 | u64 seq
 * body of a META record (type 3): how to reach the broker on the device's
 * behalf when it is not connected — the MESSAGE layout, with the flags
 * SPOOL_META_* in the qos byte, the upstream client id as topic and
 * "username\0\0identity" as payload. (Files written before version 0.2
 * had "username\0password" and SPOOL_META_PASSWORD: read, the password
 * is discarded and never written again.)
 * body of a PID record (type 4): the device's own packet identifier of
 * the message seq (written with it, in the same write), and whether the
 * bridge answered that QoS 2 message's PUBREC itself and so holds the
 * exchange until the device's PUBREL (§4.3.3):
 *   u8 type | u8 flags | u16 packet id | u64 seq
 * flags: SPOOL_PID_HOLD (held from now on; seq 0 when its message is gone
 * already), SPOOL_PID_RELEASE (the device sent its PUBREL: no longer held;
 * seq 0), SPOOL_PID_SENT_REL (the bridge
 * sent the broker its PUBREL for the replay of seq under this id: it is
 * delivered or will be on that PUBREL, never to be sent again as a
 * PUBLISH, §4.3.3, §4.4), none (identifier only).
 *
 * All integers big-endian. A record cut short at the end of the file was
 * being written when the process died, so it was never acknowledged to a
 * device (acks follow fsync): it is cut off. A record that does not decode
 * with more data after it is damage (a bad disk, a stray write): reading
 * resynchronises on the next record whose magic, lengths and CRC check
 * out (spool_find_magic), and what was skipped is reported.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPOOL_HEADER_LEN 12
#define SPOOL_MAX_BODY (16u * 1024 * 1024 + 1024) /* a record never exceeds this */

enum spool_record_type {
        SPOOL_MESSAGE = 1,
        SPOOL_ACKED = 2,
        SPOOL_META = 3,
        SPOOL_PID = 4,
};

#define SPOOL_PID_HOLD 0x01
#define SPOOL_PID_RELEASE 0x02
#define SPOOL_PID_SENT_REL 0x04

#define SPOOL_META_USERNAME 0x01
#define SPOOL_META_PASSWORD 0x02  /* a password was used upstream (never stored; old files stored it) */
#define SPOOL_META_MQTT31 0x04
#define SPOOL_META_CLEAN 0x08     /* the device connected with clean session */
#define SPOOL_META_IDENTITY 0x10  /* the payload's third field is the identity */

struct spool_record {
        enum spool_record_type type;
        uint8_t qos;              /* MESSAGE: QoS; META: SPOOL_META_*; PID: SPOOL_PID_* */
        bool retain;
        uint64_t seq;
        uint16_t pid;             /* PID only */
        const uint8_t *topic;     /* points into the buffer */
        uint16_t topic_len;
        const uint8_t *payload;   /* points into the buffer */
        uint32_t payload_len;
};

/* CRC-32 (IEEE 802.3, the zlib one). */
uint32_t spool_crc32(const uint8_t *p, size_t len);

/* Bytes a record takes on disk. */
size_t spool_record_len(const struct spool_record *r);

/* Write r into buf. Returns its length, or -ENOBUFS if cap is too small,
 * -EINVAL for a record that cannot be written (qos > 2, unknown type). */
int spool_record_encode(uint8_t *buf, size_t cap, const struct spool_record *r);

/*
 * Decode the record at the start of buf. Returns 1 and fills *r and *used
 * when a whole valid record is there; 0 when buf holds only part of one
 * (read more, or: the torn end of the file); -EBADMSG when the bytes are
 * not a valid record (bad magic, CRC, lengths, type, QoS).
 */
int spool_record_decode(const uint8_t *buf, size_t len, struct spool_record *r, size_t *used);

/* The offset of the first record magic ("MEBS") in buf, or len when there
 * is none; a magic cut by the end of buf is not found (search again from
 * len - 3 with more bytes). */
size_t spool_find_magic(const uint8_t *buf, size_t len);
