/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * outbox — one device's messages on their way to the broker, with store
 * and forward. Used by a device session, and by a replayer (the same
 * spool, sent while the device is away; it then has no device).
 *
 * Direct forwarding (the uplink is connected and nothing is spooled): a
 * QoS 1/2 PUBLISH goes upstream with the device's own packet identifier,
 * and its PUBACK / PUBREC goes to the device once the broker sent its own
 * (acknowledgements pass through, DESIGN.md). A copy is kept until then,
 * so that a lost uplink loses nothing: the copies go to the spool.
 *
 * Store and forward (the uplink is away, or a backlog is being sent):
 * QoS 1/2 messages are appended to the device's spool file and
 * acknowledged to the device only after outbox_commit() made them durable
 * (fdatasync). The bridge then owns them: it replays them in order, a QoS 2
 * one under the device's own packet identifier (a broker that stored it
 * already, forwarded before the link went or resent by the device with
 * DUP, takes it for the same, §4.3.3), a QoS 1 one under an identifier of
 * the bridge's (one nothing here uses upstream), and a spooled message
 * leaves the file only on the broker's own PUBACK / PUBCOMP for it. A
 * replay the broker PUBREC'd and we released is never sent as a PUBLISH
 * again, only its PUBREL (§4.4), also by a later outbox on the file. Once
 * the backlog is sent, forwarding is direct again.
 *
 * Order ([MQTT-4.6.0-2]): acknowledgements reach the device in the order
 * of its PUBLISHes, whether a message was forwarded, spooled, or refused
 * (outbox_refuse): an acknowledgement waits for every earlier one.
 *
 * QoS 2 (§4.3.3): for a forwarded message the device's PUBREL goes to the
 * broker and the broker's PUBCOMP back to the device; for a spooled one
 * the bridge answers PUBCOMP itself, once the release is durable
 * (outbox_commit). The identifiers of those are held in the spool file
 * (spool_append_pid): a DUP the device resends before its PUBREL, on this
 * connection or a later one or after a restart, is PUBREC'd again and kept
 * once; a device that starts a clean session releases them all. A PUBREL
 * for an identifier the outbox does not know (the device reconnected
 * after the broker's PUBREC) is forwarded too: the broker holds that state
 * in the persistent session.
 *
 * QoS 0 while the uplink is away waits in memory, bounded
 * (max_qos0_bytes, oldest dropped first).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt_codec.h"

struct outbox;
struct uplink;
struct spool_meta;

struct outbox_ops {
        /* Acknowledge the device's PUBLISH pid: PUBACK for qos 1, PUBREC
         * for 2. Called in the order of the PUBLISHes. */
        void (*ack)(void *ud, uint16_t pid, uint8_t qos);
        /* PUBCOMP pid to the device (its QoS 2 message is complete). */
        void (*complete)(void *ud, uint16_t pid);
        /* Is pid in use upstream by the owner for something else (a
         * SUBSCRIBE or UNSUBSCRIBE in flight)? May be NULL. */
        bool (*pid_busy)(void *ud, uint16_t pid);
};

struct outbox_params {
        const char *spool_dir;          /* NULL: no spool (no store and forward) */
        const char *key;                /* identifies the spool file in spool_dir (spool_path) */
        const char *spool_path;         /* instead of spool_dir + key (a replayer) */
        const char *name;               /* the device, for log lines */
        /* The sender recorded in the spool (copied): who the messages are
         * from, for a replay while the device is away. NULL: keep the
         * file's record (a replayer). Never a password. */
        const struct spool_meta *meta;
        uint64_t spool_max_bytes;       /* this device's file (0: no bound) */
        uint64_t *spool_total;          /* bytes of every spool file (shared gauge, borrowed) */
        uint64_t spool_total_max;       /* bound on *spool_total (0: none) */
        uint64_t *spool_msgs;           /* messages in every spool (shared gauge, borrowed), may be NULL */
        unsigned max_inflight;          /* QoS 1/2 in flight upstream, per device */
        size_t max_qos0_bytes;          /* QoS 0 held while the uplink is away */
        uint64_t *stat_spooled;         /* counters (borrowed), may be NULL */
        uint64_t *stat_replayed;
        uint64_t *stat_dropped;
        const struct outbox_ops *ops;   /* borrowed; may be NULL for a replayer */
        void *ud;
};

/* Create. Everything in p is copied except the borrowed counters and ops.
 * A spool holding messages from an earlier connection (or a crash) is
 * opened at once: those go first. Returns 0 and *out, -EBUSY when another
 * writer holds the spool file, or another negative errno. */
int outbox_new(const struct outbox_params *p, struct outbox **out);

/* The owner is gone: close the spool file now (a new connection of the
 * same device may open it at once) and do no more I/O. Spooled messages
 * not yet acknowledged stay in the file (closing syncs it) and are sent:
 * a QoS 1 one the device resends may arrive twice, a QoS 2 one is held
 * and its DUP taken for the same. Returns true if the spool still holds
 * messages. */
bool outbox_detach(struct outbox *o);

/* Free: copies in flight are dropped (not acknowledged to the device, so
 * it sends them again); the spool file stays if it holds anything.
 * NULL-safe. */
void outbox_free(struct outbox *o);

/*
 * The uplink is connected (CONNACK 0). session_present is the broker's
 * flag: without it, state of the earlier link is gone (QoS 2 messages the
 * broker had PUBREC'd are spooled as the bridge's own). Starts sending
 * what waits: QoS 0, the spool backlog. u is borrowed.
 */
void outbox_uplink_up(struct outbox *o, struct uplink *u, bool session_present);

/*
 * The uplink was lost. Messages in flight go to the spool (durable when
 * this returns) and are acknowledged to the device; with clean (the
 * uplink's session was not persistent) QoS 2 messages the broker had
 * PUBREC'd are spooled too. Returns 0, -ENOTCONN when there is no spool
 * (the owner must close the device, which then sends them again), or
 * another negative errno (nothing acknowledged).
 */
int outbox_uplink_down(struct outbox *o, bool clean);

/* Send what waits (after the uplink said on_writable). */
void outbox_pump(struct outbox *o);

/*
 * A PUBLISH from the device; p->topic is already mapped upstream. Returns
 * 0 (forwarded, queued or spooled: for QoS 1/2 the acknowledgement
 * follows through ops->ack), 1 when it is a resend of one still being
 * handled (nothing to do), -ENOSPC when the spool is full, -ENOTCONN when
 * the uplink is away and there is no spool, or another negative errno.
 */
int outbox_publish(struct outbox *o, const struct mqtt_publish *p);

/* A QoS 1/2 PUBLISH refused here (outside the mountpoint): acknowledged
 * like the others, in order, and dropped (MQTT 3.1.1 has no negative
 * acknowledgement; mosquitto's ACL does the same). */
int outbox_refuse(struct outbox *o, uint16_t pid, uint8_t qos);

/* Make what was spooled (and released) durable, then acknowledge it:
 * PUBACK / PUBREC, and PUBCOMP for held QoS 2 messages the device
 * released. Returns 0 or a negative errno (fsync failed: nothing was
 * acknowledged). */
int outbox_commit(struct outbox *o);

/* Has the device as many QoS 1/2 messages waiting for the broker as
 * allowed, or is a backlog being replayed? (The owner then stops reading
 * it, and resumes after the next acknowledgement from the broker.) */
bool outbox_full(const struct outbox *o);

/* A PUBACK, PUBREC or PUBCOMP from the broker. Returns true if it was
 * for a message of this outbox. */
bool outbox_on_broker_ack(struct outbox *o, enum mqtt_type type, uint16_t pid);

/* The device's PUBREL for its QoS 2 message pid (§4.3.3). */
void outbox_device_pubrel(struct outbox *o, uint16_t pid);

/* Is pid in use upstream by this outbox (forwarded, replayed, or a QoS 2
 * exchange still open)? */
bool outbox_pid_in_use(const struct outbox *o, uint16_t pid);

/* A packet identifier for something the bridge itself sends upstream on
 * this link (a replay, the owner's resubscription): none the outbox uses
 * or the spool holds for a QoS 2 message, none ops->pid_busy claims.
 * 0 if none is free (or o is NULL). */
uint16_t outbox_free_pid(struct outbox *o);

/* Free the spare blocks kept for copies of messages in flight (up to
 * max_inflight of them, so that a steady stream allocates nothing); call
 * when the device is quiet. NULL-safe. */
void outbox_trim(struct outbox *o);

/* Messages waiting in the spool, and whether nothing at all is left to
 * send or to be acknowledged (a replayer is done). */
uint64_t outbox_spooled(const struct outbox *o);
bool outbox_idle(const struct outbox *o);

/* The sender recorded in the open spool, or NULL. */
const struct spool_meta *outbox_spool_meta(const struct outbox *o);
