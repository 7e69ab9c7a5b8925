/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * outbox — one device's messages on their way upstream, with store and
 * forward.
 *
 * While the upstream client is connected and nothing is spooled, a QoS 1/2
 * PUBLISH goes straight upstream (a copy is kept) and is acknowledged to
 * the device once the broker acknowledged it. When the upstream connection
 * is lost, the copies still in flight and every later QoS 1/2 message are
 * appended to the device's spool file, fsync'd by outbox_commit(), and only
 * then acknowledged. When the upstream returns, the spool is replayed in
 * order; a spooled message leaves the file only once the broker has it.
 * QoS 0 messages while upstream is away wait in memory (bounded, oldest
 * dropped first).
 *
 * The owner (session.c) sends the acknowledgements through ops->ack and
 * decides what to do with errors (close the device: it keeps the message
 * and retries).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct outbox;
struct upstream;
struct spool_meta;

struct outbox_ops {
        /* Acknowledge pid to the device: PUBACK for qos 1, PUBREC for 2. */
        void (*ack)(void *ud, uint16_t pid, uint8_t qos);
};

struct outbox_params {
        const char *spool_dir;          /* NULL: no spool (no store and forward) */
        const char *key;                /* identifies the device's spool file */
        const char *name;               /* the device, for log lines */
        const char *spool_path;         /* instead of spool_dir + key (replaying for an absent device) */
        /* Recorded in the spool so that it can be replayed while the
         * device is away (NULL client id: leave the file's record). */
        const char *up_client_id, *up_username, *up_password;
        int protocol_level;
        uint64_t spool_max_bytes;       /* this device's file */
        uint64_t *spool_total;          /* bytes of every spool file (shared counter) */
        uint64_t spool_total_max;
        uint64_t *spool_msgs;           /* messages in every spool (shared gauge), may be NULL */
        unsigned max_inflight;          /* upstream QoS 1/2 in flight, per device */
        size_t max_qos0_bytes;          /* QoS 0 held while upstream is away */
        uint64_t *stat_spooled;         /* counters, may be NULL */
        uint64_t *stat_replayed;
        uint64_t *stat_dropped;
        const struct outbox_ops *ops;
        void *ud;
};

/* Create; opens the device's spool if it holds messages from an earlier
 * connection (they go first). Returns 0 and *out, or a negative errno. */
int outbox_new(const struct outbox_params *p, struct outbox **out);

/* The session ended: close the spool file now (a new connection of the
 * same device may open it at once) and do no more I/O; the struct stays
 * valid (code below on the stack may still be using it) until
 * outbox_free(). Returns true if the spool still holds messages. */
bool outbox_detach(struct outbox *o);

/* Free: copies in flight are dropped (not acknowledged to the device, so
 * it sends them again); the spool file stays if it holds anything. */
void outbox_free(struct outbox *o);

/* The upstream client to publish to (NULL while there is none), and
 * whether it is connected. Connecting starts the replay. */
void outbox_set_upstream(struct outbox *o, struct upstream *u, bool connected);

/*
 * A QoS 0/1/2 PUBLISH from the device (topic already mapped upstream).
 * Returns 0 (sent, queued or spooled: for QoS 1/2 the ack follows through
 * ops->ack, after outbox_commit() for spooled ones), -ENOSPC when the spool
 * is full, -ENOTCONN when upstream is away and there is no spool, or
 * another negative errno.
 */
int outbox_publish(struct outbox *o, uint16_t pid, uint8_t qos, bool retain, const char *topic,
                   const void *payload, size_t len);

/* Make spooled messages durable, then acknowledge them. Returns 0, or a
 * negative errno (fsync failed: nothing was acknowledged). */
int outbox_commit(struct outbox *o);

/* Is a QoS 1/2 message with this id still being handled (a resend)? */
bool outbox_has(const struct outbox *o, uint16_t pid);

/* Has the device as many QoS 1/2 messages in flight as allowed? */
bool outbox_full(const struct outbox *o);

/* The broker acknowledged mid. Returns true if it was one of ours. */
bool outbox_on_published(struct outbox *o, int mid);

/* The upstream connection was lost: move the messages in flight to the
 * spool. Returns 0 (call outbox_commit), or -ENOTCONN when there is no
 * spool (the device must be closed so it resends them), or an error. */
int outbox_upstream_lost(struct outbox *o);

/* Messages waiting in the spool. */
uint64_t outbox_spooled(const struct outbox *o);

/* The sender recorded in the open spool, or NULL. */
const struct spool_meta *outbox_spool_meta(const struct outbox *o);
