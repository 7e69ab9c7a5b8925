/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * spool — one device's durable store-and-forward queue: an append-only
 * file in the state directory (records: spool_codec.h).
 *
 * The promise it keeps (DESIGN.md, "an acknowledgement is a promise"): a
 * device's QoS 1/2 message is acknowledged while the upstream broker is
 * away only after spool_sync() has returned, and leaves the spool only
 * once the broker acknowledged it (spool_ack_through). After a crash,
 * spool_open() finds every message not yet acknowledged upstream.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct spool;

/* A message read back for replay; free with free(). topic is
 * NUL-terminated; payload follows it in the same allocation. */
struct spool_msg {
        uint64_t seq;
        uint16_t pid;           /* the device's packet identifier (0: not recorded) */
        bool sent_rel;          /* spool_mark_sent_rel: PUBREL again under pid, never the PUBLISH */
        uint8_t qos;
        bool retain;
        uint32_t payload_len;
        const uint8_t *payload;
        char topic[];
};

/* Who the messages are from, recorded in the file so that they can be sent
 * upstream while the device is not connected. Never a password: the
 * credentials a device sent live in memory only (a replay after a crash
 * takes them from the configuration, or waits for the device). Strings
 * owned by whoever filled the struct (the spool, for spool_get_meta). */
struct spool_meta {
        char *client_id;        /* the device's upstream client id */
        char *username;         /* NULL: none (the one the device sent, for username_mode = device) */
        char *identity;         /* the certificate identity (CN) the spool belongs to; NULL in old files */
        int protocol_level;     /* 3 or 4 */
        bool clean_session;     /* the device's clean-session flag (§3.1.2.4) */
        bool had_password;      /* the uplink sent a password the file does not hold */
};

/* The file that holds key's spool in dir (malloc'ed; NULL on ENOMEM). */
char *spool_path(const char *dir, const char *key);

/* Open (or create) the spool file at path: spool_open without the key. */
int spool_open_path(const char *path, uint64_t max_bytes, struct spool **out);

/* Record the sender (copied; written before the next message, and at once
 * when the file already holds messages). Returns 0 or a negative errno. */
int spool_set_meta(struct spool *s, const struct spool_meta *m);

/* Free the strings of a spool_meta filled by spool_meta_copy. NULL-safe. */
void spool_meta_clear(struct spool_meta *m);
/* Deep copy. Returns 0 or -ENOMEM (dst cleared). */
int spool_meta_copy(struct spool_meta *dst, const struct spool_meta *src);

/* The sender recorded in the file, or NULL if none was. */
const struct spool_meta *spool_get_meta(const struct spool *s);

/* The file's path. */
const char *spool_file(const struct spool *s);

/*
 * Open (or create, 0600) the spool of the device identified by key in dir,
 * recovering what a crash left: a torn last record is cut off. max_bytes
 * bounds the file (0 = no bound). Returns 0 and *out, or a negative errno.
 */
int spool_open(const char *dir, const char *key, uint64_t max_bytes, struct spool **out);

/* Append one message (not yet durable: call spool_sync before acking).
 * Returns 0 and *seq, -ENOSPC when max_bytes would be exceeded, or a
 * negative errno from write(). */
int spool_append(struct spool *s, uint8_t qos, bool retain, const char *topic, const void *payload,
                 size_t len, uint64_t *seq);

/*
 * spool_append, with the device's packet identifier pid (non-zero) in the
 * same write: a replay sends the message under that identifier, as the
 * device would have (§4.4: a broker that already has it under that
 * identifier takes it for the same). hold (QoS 2): the bridge answers this
 * message's PUBREC itself, and holds pid until spool_release(): a DUP
 * PUBLISH the device resends with it meanwhile, even on a later connection
 * or after a restart, is the same message (§4.3.3), never a second one.
 */
int spool_append_pid(struct spool *s, uint8_t qos, bool retain, const char *topic, const void *payload,
                     size_t len, uint16_t pid, bool hold, uint64_t *seq);

/* The replay of QoS 2 message seq was PUBREC'd by the broker and our
 * PUBREL for it went under pid: the broker delivers it (§4.3.3 method B),
 * so it is never to be sent as a PUBLISH again, only its PUBREL (§4.4),
 * also by a later outbox on this file. Not synced (a crash before the next
 * sync may send it twice). Returns 0 or a negative errno. */
int spool_mark_sent_rel(struct spool *s, uint64_t seq, uint16_t pid);

/* Is pid the device's id of a message still pending here (a replay of it
 * is, or will be, upstream under pid)? */
bool spool_pinned(const struct spool *s, uint16_t pid);

/* Is pid held (see spool_append_pid)? How many are? */
bool spool_held(const struct spool *s, uint16_t pid);
unsigned spool_held_count(const struct spool *s);

/* The device's PUBREL for pid came: no longer held. Not durable until the
 * next spool_sync (sync before the PUBCOMP: a held id that came back after
 * a crash would take the device's next message with it for a duplicate).
 * Returns 0 (also when pid was not held) or a negative errno. */
int spool_release(struct spool *s, uint16_t pid);
/* Release every held id: the device started a clean session (§3.1.2.4),
 * it will send no PUBREL for them. Returns 0 or a negative errno. */
int spool_release_all(struct spool *s);

/* Make every append durable (fdatasync). Returns 0 or a negative errno. */
int spool_sync(struct spool *s);

/* The next message for replay, in order, skipping acknowledged ones.
 * Returns 1 and *out (caller frees), 0 when there is none left to read,
 * or a negative errno. */
int spool_read_next(struct spool *s, struct spool_msg **out);

/* Every message with seq <= seq is safe upstream. When nothing is left the
 * file is emptied. Returns 0 or a negative errno. */
int spool_ack_through(struct spool *s, uint64_t seq);

/* The replay cursor, to come back to it when a read message could not be
 * sent. */
uint64_t spool_cursor(const struct spool *s);
void spool_set_cursor(struct spool *s, uint64_t cursor);

/* Rewind the replay cursor (after the upstream connection was lost again
 * mid-replay: unacknowledged messages are sent again). */
void spool_rewind(struct spool *s);

/* Messages not yet acknowledged upstream, and the file's size. A file with
 * no message pending but identifiers held stays (spool_close). */
uint64_t spool_pending(const struct spool *s);
uint64_t spool_bytes(const struct spool *s);

/* Sync, close, and remove the file if nothing is pending or held. NULL-safe. */
void spool_close(struct spool *s);

