/* SPDX-License-Identifier: MIT */
/*
 * outbox — device → broker, with the spool. See outbox.h for the promise;
 * the state below is what keeps it:
 *
 *   fifo    every QoS 1/2 PUBLISH of the device whose acknowledgement has
 *           not gone to the device yet, in arrival order (§4.6): waiting
 *           for the broker (a copy kept), for fsync (spooled), or done
 *           (refused, or acknowledged but behind an earlier one);
 *   rel     QoS 2 messages forwarded directly that the broker PUBREC'd:
 *           the device's PUBREL goes upstream, the broker's PUBCOMP back;
 *   held    (in the spool file: spool_append_pid) QoS 2 messages the
 *           bridge spooled and PUBREC'd itself: the device's PUBREL is
 *           answered here, and a DUP of one is the same message, also on a
 *           later connection or after a restart;
 *   comp    PUBCOMPs for those, sent once the release is durable;
 *   down2   QoS 2 messages a broker without QoS 2 took with PUBACK
 *           (RabbitMQ downgrades QoS 2 to 1): the device got PUBREC, and
 *           its PUBREL is answered here (in memory only);
 *   replay  spooled messages in flight upstream under the bridge's own
 *           packet identifiers;
 *   q0      QoS 0 waiting for the uplink.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "outbox.h"
#include "spool.h"
#include "uplink.h"

/* A message's topic and payload, kept while it is in flight. */
struct ob_msg {
        struct ob_msg *next;    /* QoS 0 queue, or the spare list */
        uint8_t qos;
        bool retain;
        uint16_t topic_len;
        size_t len;
        size_t cap;             /* room in data[] */
        uint8_t data[];         /* topic, then payload */
};

/* Blocks for copies come back to a short spare list when the broker
 * acknowledges, so a steady stream of messages allocates nothing; the
 * list holds at most max_inflight blocks of up to OB_SPARE_MAX bytes, and
 * outbox_trim() empties it once the device is quiet. */
#define OB_SPARE_MIN 128u
#define OB_SPARE_MAX 4096u

enum ob_state {
        OB_WAIT_BROKER,         /* forwarded; copy kept */
        OB_WAIT_SYNC,           /* spooled, not yet durable */
        OB_DONE,                /* may be acknowledged once it is at the head */
};

struct ob_entry {
        uint16_t pid;
        uint8_t qos;
        uint8_t state;          /* enum ob_state */
        struct ob_msg *copy;    /* OB_WAIT_BROKER */
};

struct ob_rel {
        uint16_t pid;
        bool released;          /* PUBREL went upstream: waiting for PUBCOMP */
        bool device_released;   /* the device's PUBREL came while the uplink was away */
        struct ob_msg *copy;    /* until PUBREL goes upstream */
};

struct ob_replay {
        uint16_t pid;           /* the bridge's own */
        uint8_t qos;
        bool released;          /* QoS 2: PUBREC seen, PUBREL sent */
        uint64_t seq;
};

struct outbox {
        struct outbox_params p;
        char *spool_dir, *key, *name, *spool_path;
        struct spool_meta meta;
        bool has_meta;
        struct uplink *up;              /* connected uplink, or NULL */
        bool session_present;           /* the broker's flag on it */
        struct spool *spool;
        bool spooling;                  /* new QoS 1/2 go to the spool (backlog or uplink away) */
        bool detached;

        struct ob_entry *fifo;
        unsigned n_fifo, cap_fifo;
        unsigned n_wait_broker;
        struct ob_rel *rel;
        unsigned n_rel, cap_rel;
        uint16_t *comp;
        unsigned n_comp, cap_comp;
        uint16_t *down2;
        unsigned n_down2, cap_down2;
        struct ob_replay *replay;
        unsigned n_replay, cap_replay;
        uint64_t last_read_seq;
        uint16_t next_pid;
        bool replay_progress;           /* a replayed message was acknowledged on this link */
        uint64_t stuck_seq;             /* oldest in flight when a link died without progress */
        unsigned stuck_count;           /* ... how many links in a row */

        struct ob_msg *spare;           /* free blocks for copies (ob_msg_new) */
        unsigned n_spare;
        struct ob_msg *q0_head, *q0_tail;
        size_t q0_bytes;
        uint64_t counted_pending;       /* this spool's share of *p.spool_msgs */
};

static void count(uint64_t *c)
{
        if (c)
                (*c)++;
}

/* Grow an array of n elements to hold one more. */
static int grow(void **arr, unsigned *cap, unsigned n, size_t size)
{
        if (n < *cap)
                return 0;
        unsigned c = *cap ? *cap * 2 : 8;
        void *a = realloc(*arr, c * size);
        if (!a)
                return -ENOMEM;
        *arr = a;
        *cap = c;
        return 0;
}

static struct ob_msg *ob_msg_new(struct outbox *o, const struct mqtt_publish *p)
{
        size_t need = p->topic.len + p->payload_len, cap = need;
        struct ob_msg *m = NULL;

        if (need <= OB_SPARE_MAX) {
                m = o->spare;
                if (m) {
                        o->spare = m->next;
                        o->n_spare--;
                        cap = m->cap;
                        if (cap < need) { /* messages got bigger: a bigger block */
                                free(m);
                                m = NULL;
                        }
                }
                if (!m)
                        for (cap = OB_SPARE_MIN; cap < need; cap *= 2)
                                ;
        }
        if (!m)
                m = malloc(sizeof *m + cap);
        if (!m)
                return NULL;
        *m = (struct ob_msg){ .qos = p->qos, .retain = p->retain, .topic_len = p->topic.len, .len = p->payload_len,
                              .cap = cap };
        memcpy(m->data, p->topic.data, p->topic.len);
        if (p->payload_len)
                memcpy(m->data + p->topic.len, p->payload, p->payload_len);
        return m;
}

/* Done with a copy: onto the spare list, or freed. NULL-safe. */
static void ob_msg_free(struct outbox *o, struct ob_msg *m)
{
        if (!m)
                return;
        if (m->cap <= OB_SPARE_MAX && o->n_spare < o->p.max_inflight) {
                m->next = o->spare;
                o->spare = m;
                o->n_spare++;
                return;
        }
        free(m);
}

void outbox_trim(struct outbox *o)
{
        if (!o)
                return;
        while (o->spare) {
                struct ob_msg *m = o->spare;
                o->spare = m->next;
                free(m);
        }
        o->n_spare = 0;
}

static struct mqtt_publish ob_msg_publish(const struct ob_msg *m)
{
        return (struct mqtt_publish){
                .qos = m->qos,
                .retain = m->retain,
                .topic = { m->data, m->topic_len },
                .payload = m->data + m->topic_len,
                .payload_len = m->len,
        };
}

/* ---- the spool and its gauges ---- */

static void ob_account(struct outbox *o, uint64_t before)
{
        uint64_t after = o->spool ? spool_bytes(o->spool) : 0;
        uint64_t pending = o->spool ? spool_pending(o->spool) : 0;

        if (o->p.spool_total)
                *o->p.spool_total = *o->p.spool_total + after - before;
        if (o->p.spool_msgs)
                *o->p.spool_msgs = *o->p.spool_msgs + pending - o->counted_pending;
        o->counted_pending = pending;
}

/* The file's size on disk now (0 if it does not exist). */
static uint64_t ob_disk_size(const char *path)
{
        struct stat st;
        return path && stat(path, &st) == 0 ? (uint64_t) st.st_size : 0;
}

/* *p.spool_total counts every spool file in the directory, open or not
 * (replayer_start_all adds those a restart finds; a file that waits for
 * its device stays counted): opening one counts only what opening changed
 * (a torn tail cut off, a delivered file started afresh). */
static int ob_spool_open(struct outbox *o)
{
        char *path = NULL;
        int r;

        if (o->spool)
                return 0;
        if (o->detached)
                return -ESHUTDOWN;
        if (!o->spool_dir && !o->spool_path)
                return -ENOTCONN;
        path = o->spool_path ? strdup(o->spool_path) : spool_path(o->spool_dir, o->key);
        if (!path)
                return -ENOMEM;
        uint64_t on_disk = ob_disk_size(path);
        r = spool_open_path(path, o->p.spool_max_bytes, &o->spool);
        free(path);
        if (r < 0)
                return r;
        if (o->has_meta) {
                r = spool_set_meta(o->spool, &o->meta);
                if (r < 0)
                        log_warning("spool of \"%s\": cannot record the sender: %s", o->name, strerror(-r));
        }
        /* After the META record, which a file holding messages gets at once. */
        ob_account(o, on_disk);
        return 0;
}

/* Close the file; spool_close removes it when nothing is pending or held,
 * and only then does it leave the byte gauge (a file that waits stays
 * counted). */
static bool ob_spool_close(struct outbox *o)
{
        bool pending;
        uint64_t size;

        if (!o->spool)
                return false;
        size = spool_bytes(o->spool);
        pending = spool_pending(o->spool) > 0;
        bool stays = pending || spool_held_count(o->spool) > 0;
        spool_close(o->spool);
        o->spool = NULL;
        if (o->p.spool_total && !stays)
                *o->p.spool_total -= size < *o->p.spool_total ? size : *o->p.spool_total;
        if (o->p.spool_msgs)
                *o->p.spool_msgs -= o->counted_pending;
        o->counted_pending = 0;
        return pending;
}

static unsigned ob_count_state(const struct outbox *o, enum ob_state st)
{
        unsigned n = 0;
        for (unsigned i = 0; i < o->n_fifo; i++)
                n += o->fifo[i].state == st;
        return n;
}

/* The backlog is sent: forward directly again, and give the file back. */
static void ob_spool_done_if_empty(struct outbox *o)
{
        if (!o->spooling || !o->up || o->n_replay > 0 || ob_count_state(o, OB_WAIT_SYNC) > 0)
                return;
        if (o->spool && spool_pending(o->spool) > 0)
                return;
        /* Held identifiers keep the file (and it open, for their release). */
        if (spool_held_count(o->spool) == 0)
                ob_spool_close(o);
        o->spooling = false;
        o->last_read_seq = 0;
}

/* Append one message; it is acknowledged to anyone only after a sync.
 * A QoS 2 one with the device's packet identifier (p->packet_id), so that
 * the replay uses it too: a broker that already stores the message under
 * it (it was forwarded, the PUBREC lost with the link, or the device resent
 * it with DUP) takes the replay for the same (§4.3.3), and the bridge never
 * picks an identifier the broker may still hold for another message
 * (§2.3.1, outbox_free_pid). QoS 1 needs neither (the broker keeps no state
 * for it across links): it goes under one of the bridge's. hold: the bridge
 * answers this QoS 2 message's PUBREC itself (spool_append_pid). */
static int ob_spool_append(struct outbox *o, const struct mqtt_publish *p, bool hold)
{
        uint64_t seq, before;
        char *topic;
        int r;

        r = ob_spool_open(o);
        if (r < 0)
                return r;
        if (o->p.spool_total && o->p.spool_total_max &&
            *o->p.spool_total + p->payload_len + p->topic.len + 64 > o->p.spool_total_max)
                return -ENOSPC;
        topic = strndup((const char *) p->topic.data, p->topic.len);
        if (!topic)
                return -ENOMEM;
        before = spool_bytes(o->spool);
        r = spool_append_pid(o->spool, p->qos, p->retain, topic, p->payload, p->payload_len,
                             p->qos == 2 ? p->packet_id : 0, hold && p->qos == 2, &seq);
        ob_account(o, before);
        free(topic);
        if (r < 0)
                return r;
        o->spooling = true;
        count(o->p.stat_spooled);
        return 0;
}

static int ob_sync(struct outbox *o)
{
        if (!o->spool)
                return -ESHUTDOWN;
        return spool_sync(o->spool);
}

/* Replay i is delivered: it leaves the spool once every earlier one did. */
static void ob_replay_done(struct outbox *o, unsigned i)
{
        o->replay[i] = o->replay[--o->n_replay];
        o->replay_progress = true;
        if (!o->spool)
                return;
        /* Everything below the oldest still in flight is safe. */
        uint64_t through = o->last_read_seq;
        for (unsigned k = 0; k < o->n_replay; k++)
                if (o->replay[k].seq - 1 < through)
                        through = o->replay[k].seq - 1;
        uint64_t before = spool_bytes(o->spool);
        int r = spool_ack_through(o->spool, through);
        ob_account(o, before);
        if (r < 0)
                log_warning("spool of \"%s\": %s (messages may be sent twice)", o->name, strerror(-r));
}

/* ---- acknowledgements to the device, in order ---- */

static bool ob_held(const struct outbox *o, uint16_t pid)
{
        return o->spool && spool_held(o->spool, pid);
}

static void ob_flush_acks(struct outbox *o)
{
        /* One at a time off the head: an ack callback may detach us. */
        while (o->n_fifo > 0 && o->fifo[0].state == OB_DONE && !o->detached) {
                struct ob_entry e = o->fifo[0];
                memmove(o->fifo, o->fifo + 1, (o->n_fifo - 1) * sizeof *o->fifo);
                o->n_fifo--;
                if (o->p.ops && o->p.ops->ack)
                        o->p.ops->ack(o->p.ud, e.pid, e.qos);
        }
}

static int ob_fifo_push(struct outbox *o, uint16_t pid, uint8_t qos, enum ob_state st, struct ob_msg *copy)
{
        if (grow((void **) &o->fifo, &o->cap_fifo, o->n_fifo, sizeof *o->fifo) < 0)
                return -ENOMEM;
        o->fifo[o->n_fifo++] = (struct ob_entry){ .pid = pid, .qos = qos, .state = (uint8_t) st, .copy = copy };
        if (st == OB_WAIT_BROKER)
                o->n_wait_broker++;
        return 0;
}

/* ---- life ---- */

int outbox_new(const struct outbox_params *p, struct outbox **out)
{
        struct outbox *o = calloc(1, sizeof *o);
        int r = -ENOMEM;

        if (!o)
                return -ENOMEM;
        o->p = *p;
        o->name = strdup(p->name ? p->name : "?");
        if (p->key && !(o->key = strdup(p->key)))
                goto fail;
        if (p->spool_dir && !(o->spool_dir = strdup(p->spool_dir)))
                goto fail;
        if (p->spool_path && !(o->spool_path = strdup(p->spool_path)))
                goto fail;
        if (!o->name)
                goto fail;
        if (p->meta) {
                if (spool_meta_copy(&o->meta, p->meta) < 0)
                        goto fail;
                o->has_meta = true;
        }
        o->p.meta = NULL;
        if (o->spool_dir || o->spool_path) {
                /* Messages an earlier connection (or a crashed bridge) left
                 * behind go out before anything new. */
                r = ob_spool_open(o);
                if (r == -EBUSY)
                        goto fail;
                if (r == 0 && o->has_meta && o->meta.clean_session && spool_held_count(o->spool) > 0) {
                        /* §3.1.2.4: the device starts afresh; no PUBREL will
                         * come for what an earlier session left held. */
                        uint64_t before = spool_bytes(o->spool);
                        if (spool_release_all(o->spool) < 0 || spool_sync(o->spool) < 0)
                                log_warning("spool of \"%s\": cannot release the QoS 2 ids of its last session", o->name);
                        ob_account(o, before);
                }
                if (r == 0 && spool_pending(o->spool) > 0) {
                        o->spooling = true;
                        log_notice("%llu spooled message%s of \"%s\" will be sent upstream first",
                                   (unsigned long long) spool_pending(o->spool),
                                   spool_pending(o->spool) == 1 ? "" : "s", o->name);
                } else if (r == 0 && spool_held_count(o->spool) == 0) {
                        ob_spool_close(o);
                } else if (r < 0) {
                        log_warning("cannot open the spool of \"%s\": %s", o->name, strerror(-r));
                }
        }
        *out = o;
        return 0;
fail:
        outbox_free(o);
        return r;
}

bool outbox_detach(struct outbox *o)
{
        if (!o)
                return false;
        o->detached = true;
        o->up = NULL;
        return ob_spool_close(o);
}

void outbox_free(struct outbox *o)
{
        if (!o)
                return;
        (void) outbox_detach(o);
        for (unsigned i = 0; i < o->n_fifo; i++)
                free(o->fifo[i].copy);
        for (unsigned i = 0; i < o->n_rel; i++)
                free(o->rel[i].copy);
        outbox_trim(o);
        free(o->down2);
        while (o->q0_head) {
                struct ob_msg *m = o->q0_head;
                o->q0_head = m->next;
                free(m);
        }
        free(o->fifo);
        free(o->rel);
        free(o->comp);
        free(o->replay);
        spool_meta_clear(&o->meta);
        free(o->key);
        free(o->name);
        free(o->spool_dir);
        free(o->spool_path);
        free(o);
}

/* ---- sending upstream ---- */

static int ob_send(struct outbox *o, const struct mqtt_publish *p)
{
        size_t len = mqtt_publish_len(p);
        uint8_t *buf;
        int n;

        if (!o->up || len == 0)
                return -ENOTCONN;
        buf = uplink_reserve(o->up, len);
        if (!buf)
                return -ENOTCONN;
        n = mqtt_encode_publish(buf, len, p);
        if (n < 0) {
                uplink_commit(o->up, 0);
                return n;
        }
        uplink_commit(o->up, (size_t) n);
        return 0;
}

bool outbox_pid_in_use(const struct outbox *o, uint16_t pid)
{
        if (!o)
                return false;
        for (unsigned i = 0; i < o->n_fifo; i++)
                if (o->fifo[i].pid == pid && o->fifo[i].state == OB_WAIT_BROKER)
                        return true;
        for (unsigned i = 0; i < o->n_rel; i++)
                if (o->rel[i].pid == pid)
                        return true;
        for (unsigned i = 0; i < o->n_replay; i++)
                if (o->replay[i].pid == pid)
                        return true;
        return false;
}

/* §2.3.1: a packet identifier the bridge's link is not using, for a QoS 1
 * replay. The device picks its own independently, so the bridge's must
 * avoid every id the device has open upstream that this outbox knows of,
 * those of QoS 2 messages in the spool (the broker may store one under
 * it), and the owner's SUBSCRIBEs. What it cannot know: a QoS 2 exchange
 * the device left open at the broker on an earlier connection, until the
 * device resends it; devices count their ids up from 1, so the bridge
 * counts down from 65535, far from them. 0 if none is free (cannot happen
 * with bounded in-flight windows). */
uint16_t outbox_free_pid(struct outbox *o)
{
        if (!o)
                return 0;
        for (unsigned tries = 0; tries < 65535; tries++) {
                uint16_t pid = (uint16_t) (65535 - o->next_pid % 65535);
                o->next_pid++;
                if (outbox_pid_in_use(o, pid) || (o->spool && spool_pinned(o->spool, pid)))
                        continue;
                if (o->p.ops && o->p.ops->pid_busy && o->p.ops->pid_busy(o->p.ud, pid))
                        continue;
                return pid;
        }
        return 0;
}

static void ob_flush_qos0(struct outbox *o)
{
        while (o->up && o->q0_head && uplink_writable(o->up)) {
                struct ob_msg *m = o->q0_head;
                struct mqtt_publish p = ob_msg_publish(m);
                if (ob_send(o, &p) < 0)
                        return;
                o->q0_head = m->next;
                if (!o->q0_head)
                        o->q0_tail = NULL;
                o->q0_bytes -= m->len + m->topic_len;
                ob_msg_free(o, m);
        }
}

/* Send spooled messages upstream, in order, up to the in-flight limit. */
static void ob_replay_pump(struct outbox *o)
{
        while (o->up && o->spooling && o->spool && o->n_replay < o->p.max_inflight && uplink_writable(o->up)) {
                struct spool_msg *m = NULL;
                uint64_t cursor = spool_cursor(o->spool);
                int r = spool_read_next(o->spool, &m);
                if (r < 0) {
                        log_error("spool of \"%s\": read error: %s", o->name, strerror(-r));
                        return;
                }
                if (r == 0)
                        break;
                bool in_flight = false;
                for (unsigned k = 0; k < o->n_replay; k++)
                        in_flight |= o->replay[k].seq == m->seq;
                if (in_flight) {
                        /* Released on an earlier link: its PUBREL, not the
                         * PUBLISH, goes again (outbox_uplink_up). */
                        o->last_read_seq = m->seq;
                        free(m);
                        continue;
                }
                if (m->sent_rel && m->pid && m->qos == 2) {
                        /* Released by an earlier outbox: PUBREL again under
                         * the same id (§4.4), or, the broker's session gone,
                         * delivered or lost with it. */
                        uint64_t rseq = m->seq;
                        uint16_t rpid = m->pid;
                        free(m);
                        if (outbox_pid_in_use(o, rpid) ||
                            grow((void **) &o->replay, &o->cap_replay, o->n_replay, sizeof *o->replay) < 0) {
                                spool_set_cursor(o->spool, cursor);
                                return;
                        }
                        if (o->session_present && uplink_send_ack(o->up, MQTT_PUBREL, rpid) < 0) {
                                spool_set_cursor(o->spool, cursor);
                                return;
                        }
                        o->last_read_seq = rseq;
                        o->replay[o->n_replay++] = (struct ob_replay){ .pid = rpid, .qos = 2, .released = true,
                                                                       .seq = rseq };
                        if (!o->session_present)
                                ob_replay_done(o, o->n_replay - 1);
                        continue;
                }
                /* The device's own identifier (ob_spool_append); it waits while
                 * that is still in use upstream (an earlier message of the
                 * spool under it, a QoS 2 exchange, a SUBSCRIBE). */
                uint16_t pid = m->qos ? m->pid : 0;
                if (pid && (outbox_pid_in_use(o, pid) ||
                            (o->p.ops && o->p.ops->pid_busy && o->p.ops->pid_busy(o->p.ud, pid))))
                        pid = 0;
                else if (!pid)
                        pid = outbox_free_pid(o);
                if (pid == 0 || grow((void **) &o->replay, &o->cap_replay, o->n_replay, sizeof *o->replay) < 0) {
                        free(m);
                        spool_set_cursor(o->spool, cursor);
                        return;
                }
                size_t tlen = strlen(m->topic);
                struct mqtt_publish p = {
                        .qos = m->qos,
                        .retain = m->retain,
                        .topic = { (const uint8_t *) m->topic, (uint16_t) tlen },
                        .packet_id = m->qos ? pid : 0,
                        .payload = m->payload,
                        .payload_len = m->payload_len,
                };
                r = tlen > 0 && tlen <= 65535 ? ob_send(o, &p) : -EINVAL;
                uint64_t seq = m->seq;
                uint8_t qos = m->qos;
                free(m);
                if (r == -ENOTCONN) {
                        spool_set_cursor(o->spool, cursor);
                        return;
                }
                count(o->p.stat_replayed);
                o->last_read_seq = seq;
                if (r < 0 || qos == 0) {
                        /* Cannot be encoded (never happens with what the
                         * spool accepted), or QoS 0: nothing will ack it. */
                        if (r < 0)
                                log_warning("spool of \"%s\": message %llu cannot be sent (%s), skipped",
                                            o->name, (unsigned long long) seq, strerror(-r));
                        continue;
                }
                o->replay[o->n_replay++] = (struct ob_replay){ .pid = pid, .qos = qos, .seq = seq };
        }
        ob_spool_done_if_empty(o);
}

void outbox_pump(struct outbox *o)
{
        if (!o || o->detached || !o->up)
                return;
        ob_flush_qos0(o);
        ob_replay_pump(o);
}

void outbox_uplink_up(struct outbox *o, struct uplink *u, bool session_present)
{
        if (!o || o->detached)
                return;
        o->up = u;
        o->replay_progress = false;
        o->session_present = session_present;
        /* QoS 2 messages the broker PUBREC'd on the earlier link. */
        for (unsigned i = 0; i < o->n_rel;) {
                struct ob_rel *rl = &o->rel[i];
                if (!session_present) {
                        /* The broker's state is gone: a message it had not
                         * been released is not delivered (mosquitto hands a
                         * QoS 2 message on at PUBREL); the bridge owns its
                         * copy from now on. One that was released is. */
                        if (rl->copy) {
                                struct mqtt_publish p = ob_msg_publish(rl->copy);
                                p.qos = 2;
                                p.packet_id = rl->pid;
                                if (ob_spool_append(o, &p, !rl->device_released) == 0 && ob_sync(o) == 0) {
                                        if (rl->device_released && o->p.ops && o->p.ops->complete)
                                                o->p.ops->complete(o->p.ud, rl->pid);
                                } else {
                                        log_warning("\"%s\": cannot spool a QoS 2 message the broker lost", o->name);
                                }
                        } else if (o->p.ops && o->p.ops->complete) {
                                o->p.ops->complete(o->p.ud, rl->pid);
                        }
                        ob_msg_free(o, rl->copy);
                        o->rel[i] = o->rel[--o->n_rel];
                        continue;
                }
                /* §4.4: resend PUBREL for what was released. */
                if (rl->released || rl->device_released) {
                        if (uplink_send_ack(u, MQTT_PUBREL, rl->pid) == 0) {
                                rl->released = true;
                                rl->device_released = false;
                                ob_msg_free(o, rl->copy);
                                rl->copy = NULL;
                        }
                }
                i++;
        }
        /* Our own QoS 2 replays released on the earlier link. */
        for (unsigned i = 0; i < o->n_replay;) {
                if (!session_present) {
                        ob_replay_done(o, i);
                        continue;
                }
                (void) uplink_send_ack(u, MQTT_PUBREL, o->replay[i].pid);
                i++;
        }
        outbox_pump(o);
}

/* A message the broker ends the connection over, every time it is sent
 * (mosquitto does so for a packet over its max_packet_size), must not
 * block every message behind it for ever: after OB_STUCK_LINKS links in a
 * row died with it the oldest in flight and nothing at all acknowledged,
 * it is moved to "<spool>.rejected" (a spool file of its own, never
 * replayed, kept for the operator) and skipped, with a warning. Five, not
 * fewer: a flapping network can end a link or two before the first PUBACK
 * (the relay fuzzer did, about once in 20,000 scripts with three). */
#define OB_STUCK_LINKS 5

static void ob_check_stuck(struct outbox *o)
{
        uint64_t oldest = UINT64_MAX;
        struct spool_msg *m = NULL;

        for (unsigned i = 0; i < o->n_replay; i++)
                if (o->replay[i].seq < oldest)
                        oldest = o->replay[i].seq;
        if (o->replay_progress)
                o->stuck_count = 0;
        /* A connect that failed sent nothing: it neither counts nor resets. */
        if (o->n_replay == 0 || o->replay_progress || !o->spool)
                return;
        if (oldest != o->stuck_seq) {
                o->stuck_seq = oldest;
                o->stuck_count = 0;
        }
        if (++o->stuck_count < OB_STUCK_LINKS)
                return;
        o->stuck_count = 0;
        spool_rewind(o->spool);
        if (spool_read_next(o->spool, &m) != 1 || m->seq != oldest) {
                free(m);
                return;
        }
        char *side = NULL;
        struct spool *rej = NULL;
        if (asprintf(&side, "%s.rejected", spool_file(o->spool)) >= 0 &&
            spool_open_path(side, 0, &rej) == 0 &&
            spool_append(rej, m->qos, m->retain, m->topic, m->payload, m->payload_len, &(uint64_t){ 0 }) == 0)
                (void) spool_sync(rej);
        spool_close(rej);
        log_warning("spool of \"%s\": the broker closed the connection %u times when message %llu (topic "
                    "\"%s\") was sent; it is moved to %s and the messages behind it go on",
                    o->name, OB_STUCK_LINKS, (unsigned long long) oldest, m->topic, side ? side : "?");
        uint64_t before = spool_bytes(o->spool);
        (void) spool_ack_through(o->spool, oldest);
        ob_account(o, before);
        free(side);
        free(m);
}

int outbox_uplink_down(struct outbox *o, bool clean)
{
        bool spooled = false;
        int r = 0;

        if (!o)
                return 0;
        o->up = NULL;
        ob_check_stuck(o);
        /* Unacknowledged replays go again from the spool; a QoS 2 one the
         * broker PUBREC'd and we released has been delivered (method B) or
         * will be on our PUBREL: it must never be sent again as a PUBLISH,
         * §4.4. It waits for its PUBCOMP, or, the broker's session gone,
         * counts as delivered (at most once, as for any client). */
        unsigned kept = 0;
        for (unsigned i = 0; i < o->n_replay; i++)
                if (o->replay[i].released)
                        o->replay[kept++] = o->replay[i];
        o->n_replay = kept;
        o->last_read_seq = 0;
        if (o->spool)
                spool_rewind(o->spool);
        while (clean && o->n_replay > 0)
                ob_replay_done(o, o->n_replay - 1);
        if (o->n_wait_broker == 0 && (!clean || o->n_rel == 0))
                return 0;
        if (!o->spool_dir && !o->spool_path)
                return -ENOTCONN;
        /* In order, ahead of anything the device sends from now on. */
        for (unsigned i = 0; i < o->n_fifo; i++) {
                struct ob_entry *e = &o->fifo[i];
                if (e->state != OB_WAIT_BROKER)
                        continue;
                struct mqtt_publish p = ob_msg_publish(e->copy);
                p.packet_id = e->pid;
                r = ob_spool_append(o, &p, true);
                if (r < 0)
                        return r;
                ob_msg_free(o, e->copy);
                e->copy = NULL;
                e->state = OB_WAIT_SYNC;
                o->n_wait_broker--;
                spooled = true;
        }
        if (clean) {
                /* No session to come back to (§3.1.2.4): handled now as
                 * outbox_uplink_up would after session_present = 0. */
                for (unsigned i = 0; i < o->n_rel; i++)
                        if (o->rel[i].copy) {
                                struct mqtt_publish p = ob_msg_publish(o->rel[i].copy);
                                p.qos = 2;
                                p.packet_id = o->rel[i].pid;
                                r = ob_spool_append(o, &p, !o->rel[i].device_released);
                                if (r < 0)
                                        return r;
                                spooled = true;
                        }
        }
        if (spooled) {
                r = outbox_commit(o);
                if (r < 0)
                        return r;
        }
        if (clean) {
                while (o->n_rel > 0) {
                        struct ob_rel rl = o->rel[--o->n_rel];
                        bool had_copy = rl.copy != NULL;
                        ob_msg_free(o, rl.copy);
                        /* Spooled and held above, or to complete now. */
                        if ((!had_copy || rl.device_released) && o->p.ops && o->p.ops->complete)
                                o->p.ops->complete(o->p.ud, rl.pid);
                        if (o->detached)
                                break;
                }
        }
        return 0;
}

/* ---- from the device ---- */

static int ob_queue_qos0(struct outbox *o, const struct mqtt_publish *p)
{
        size_t need = p->payload_len + p->topic.len;
        struct ob_msg *m;

        if (need > o->p.max_qos0_bytes) {
                count(o->p.stat_dropped);
                return 0;
        }
        /* Bounded: drop the oldest first, and count it. */
        while (o->q0_head && o->q0_bytes + need > o->p.max_qos0_bytes) {
                m = o->q0_head;
                o->q0_head = m->next;
                if (!o->q0_head)
                        o->q0_tail = NULL;
                o->q0_bytes -= m->len + m->topic_len;
                ob_msg_free(o, m);
                count(o->p.stat_dropped);
        }
        m = ob_msg_new(o, p);
        if (!m)
                return -ENOMEM;
        if (o->q0_tail)
                o->q0_tail->next = m;
        else
                o->q0_head = m;
        o->q0_tail = m;
        o->q0_bytes += need;
        return 0;
}

int outbox_publish(struct outbox *o, const struct mqtt_publish *p)
{
        struct ob_msg *copy;
        int r;

        if (o->detached)
                return -ESHUTDOWN;
        if (p->qos == 0) {
                if (o->up && !o->q0_head && ob_send(o, p) == 0)
                        return 0;
                return ob_queue_qos0(o, p);
        }
        /* A resend (DUP, §4.3) of one still being handled: it is on its way
         * (or owned) already, its acknowledgement will come. */
        for (unsigned i = 0; i < o->n_fifo; i++)
                if (o->fifo[i].pid == p->packet_id)
                        return 1;
        if (p->qos == 2) {
                if (ob_held(o, p->packet_id)) {
                        /* §4.3.3: ours already: PUBREC again, keep one. */
                        if (o->p.ops && o->p.ops->ack)
                                o->p.ops->ack(o->p.ud, p->packet_id, 2);
                        return 1;
                }
                for (unsigned i = 0; i < o->n_rel; i++)
                        if (o->rel[i].pid == p->packet_id) {
                                if (o->p.ops && o->p.ops->ack)
                                        o->p.ops->ack(o->p.ud, p->packet_id, 2);
                                return 1;
                        }
        }
        if (o->spooling || !o->up) {
                r = ob_spool_append(o, p, true);
                if (r < 0)
                        return r;
                return ob_fifo_push(o, p->packet_id, p->qos, OB_WAIT_SYNC, NULL);
        }
        copy = ob_msg_new(o, p);
        if (!copy)
                return -ENOMEM;
        r = ob_fifo_push(o, p->packet_id, p->qos, OB_WAIT_BROKER, copy);
        if (r < 0) {
                ob_msg_free(o, copy);
                return r;
        }
        struct mqtt_publish fwd = *p;
        fwd.dup = false; /* a new message on this link (§3.3.1.1) */
        r = ob_send(o, &fwd);
        /* -ENOTCONN: the link is failing; the copy goes to the spool when
         * outbox_uplink_down() comes. */
        return r == -ENOTCONN ? 0 : r;
}

int outbox_refuse(struct outbox *o, uint16_t pid, uint8_t qos)
{
        for (unsigned i = 0; i < o->n_fifo; i++)
                if (o->fifo[i].pid == pid)
                        return 0;
        int r = ob_fifo_push(o, pid, qos, OB_DONE, NULL);
        if (r == 0)
                ob_flush_acks(o);
        return r;
}

int outbox_commit(struct outbox *o)
{
        bool any = false;
        int r;

        if (!o || o->detached)
                return 0;
        for (unsigned i = 0; i < o->n_fifo; i++)
                any |= o->fifo[i].state == OB_WAIT_SYNC;
        if (!any && o->n_comp == 0)
                return 0;
        /* Releases only, and the file closed since (the backlog done):
         * closing synced them. */
        r = !any && !o->spool ? 0 : ob_sync(o);
        if (r < 0)
                return r;
        /* Durable: now, and only now, the device may forget them. */
        for (unsigned i = 0; i < o->n_fifo; i++)
                if (o->fifo[i].state == OB_WAIT_SYNC)
                        o->fifo[i].state = OB_DONE;
        ob_flush_acks(o);
        /* Released for good: the device may reuse those identifiers. */
        while (o->n_comp > 0 && !o->detached) {
                uint16_t pid = o->comp[0];
                memmove(o->comp, o->comp + 1, (o->n_comp - 1) * sizeof *o->comp);
                o->n_comp--;
                if (o->p.ops && o->p.ops->complete)
                        o->p.ops->complete(o->p.ud, pid);
        }
        if (!o->detached)
                outbox_pump(o);
        return 0;
}

bool outbox_full(const struct outbox *o)
{
        if (!o)
                return false;
        /* While a backlog is replayed the device waits: its new messages
         * would have to go behind the backlog (order, §4.6), and taking
         * them would let the backlog grow as fast as it drains, so the
         * spool would never empty and forwarding never become direct
         * again. It is read again once the last spooled message is
         * acknowledged. */
        if (o->up && o->spooling)
                return true;
        /* Only what waits for the broker or the disk: a QoS 2 exchange that
         * waits for the device's PUBREL must not stop its input. */
        return o->n_fifo >= o->p.max_inflight;
}

void outbox_device_pubrel(struct outbox *o, uint16_t pid)
{
        for (unsigned i = 0; i < o->n_down2; i++)
                if (o->down2[i] == pid) {
                        /* The broker has it already (a PUBACK for QoS 2). */
                        o->down2[i] = o->down2[--o->n_down2];
                        if (o->p.ops && o->p.ops->complete)
                                o->p.ops->complete(o->p.ud, pid);
                        return;
                }
        for (unsigned i = 0; i < o->n_fifo; i++)
                if (o->fifo[i].pid == pid)
                        return; /* PUBREL before our PUBREC: out of order, ignored */
        if (ob_held(o, pid)) {
                /* Ours: PUBCOMP once the release is durable (outbox_commit). */
                uint64_t before = spool_bytes(o->spool);
                int r = spool_release(o->spool, pid);
                ob_account(o, before);
                if (r == 0)
                        r = grow((void **) &o->comp, &o->cap_comp, o->n_comp, sizeof *o->comp);
                if (r < 0) {
                        log_warning("spool of \"%s\": cannot release QoS 2 id %u: %s", o->name, pid, strerror(-r));
                        return; /* the device sends its PUBREL again */
                }
                o->comp[o->n_comp++] = pid;
                return;
        }
        struct ob_rel *rl = NULL;
        for (unsigned i = 0; i < o->n_rel; i++)
                if (o->rel[i].pid == pid)
                        rl = &o->rel[i];
        if (!rl && o->spool && spool_pinned(o->spool, pid)) {
                /* Released already (our PUBCOMP was lost): upstream, pid is
                 * the spool's own exchange for that message, not to be
                 * released by the device again. */
                if (o->p.ops && o->p.ops->complete)
                        o->p.ops->complete(o->p.ud, pid);
                return;
        }
        if (!rl) {
                /* Not ours: the broker PUBREC'd it on an earlier connection
                 * of this device (persistent session). The broker has the
                 * state; forward it and relay its PUBCOMP. */
                if (grow((void **) &o->rel, &o->cap_rel, o->n_rel, sizeof *o->rel) < 0)
                        return;
                rl = &o->rel[o->n_rel++];
                *rl = (struct ob_rel){ .pid = pid };
        }
        if (o->up && uplink_send_ack(o->up, MQTT_PUBREL, pid) == 0) {
                rl->released = true;
                rl->device_released = false;
                ob_msg_free(o, rl->copy);
                rl->copy = NULL;
        } else {
                rl->device_released = true;
        }
}

/* ---- from the broker ---- */

static bool ob_on_direct_ack(struct outbox *o, enum mqtt_type type, uint16_t pid)
{
        if (type == MQTT_PUBCOMP) {
                for (unsigned i = 0; i < o->n_rel; i++)
                        if (o->rel[i].pid == pid && o->rel[i].released) {
                                ob_msg_free(o, o->rel[i].copy);
                                o->rel[i] = o->rel[--o->n_rel];
                                if (o->p.ops && o->p.ops->complete)
                                        o->p.ops->complete(o->p.ud, pid);
                                return true;
                        }
                return false;
        }
        for (unsigned i = 0; i < o->n_fifo; i++) {
                struct ob_entry *e = &o->fifo[i];
                if (e->pid != pid || e->state != OB_WAIT_BROKER)
                        continue;
                if (type == MQTT_PUBACK && e->qos == 2) {
                        /* A broker without QoS 2 (RabbitMQ downgrades it to
                         * QoS 1 and answers PUBACK): it has the message, at
                         * least once. The device still gets its QoS 2 flow
                         * (§4.3.3): PUBREC now, and the bridge completes its
                         * PUBREL itself (down2). */
                        if (grow((void **) &o->down2, &o->cap_down2, o->n_down2, sizeof *o->down2) < 0)
                                return true; /* stays waiting; resent after a reconnect */
                        o->down2[o->n_down2++] = pid;
                        ob_msg_free(o, e->copy);
                        e->copy = NULL;
                        e->state = OB_DONE;
                        o->n_wait_broker--;
                        ob_flush_acks(o);
                        return true;
                }
                if ((type == MQTT_PUBACK) != (e->qos == 1))
                        return false; /* the wrong ack for its QoS: ignored */
                if (e->qos == 2) {
                        /* The broker has it (§4.3.3); the exchange goes on
                         * between the device and the broker. */
                        if (grow((void **) &o->rel, &o->cap_rel, o->n_rel, sizeof *o->rel) < 0)
                                return true; /* stays waiting; resent after a reconnect */
                        o->rel[o->n_rel++] = (struct ob_rel){ .pid = pid, .copy = e->copy };
                } else {
                        ob_msg_free(o, e->copy);
                }
                e->copy = NULL;
                e->state = OB_DONE;
                o->n_wait_broker--;
                ob_flush_acks(o);
                return true;
        }
        return false;
}

static bool ob_on_replay_ack(struct outbox *o, enum mqtt_type type, uint16_t pid)
{
        for (unsigned i = 0; i < o->n_replay; i++) {
                struct ob_replay *rp = &o->replay[i];
                if (rp->pid != pid)
                        continue;
                if (type == MQTT_PUBREC && rp->qos == 2) {
                        if (rp->released)
                                return true;
                        /* From now on only its PUBREL may go again, also
                         * from a later outbox on this spool. */
                        uint64_t before = spool_bytes(o->spool);
                        int r = o->spool ? spool_mark_sent_rel(o->spool, rp->seq, pid) : -ESHUTDOWN;
                        ob_account(o, before);
                        if (r < 0)
                                log_warning("spool of \"%s\": %s (a QoS 2 message may be sent twice)", o->name,
                                            strerror(-r));
                        if (uplink_send_ack(o->up, MQTT_PUBREL, pid) == 0)
                                rp->released = true;
                        return true;
                }
                /* A PUBACK for QoS 2 before any PUBREC: a broker that has no
                 * QoS 2 (RabbitMQ downgrades it to 1) took the message. */
                if (!((type == MQTT_PUBACK && (rp->qos == 1 || !rp->released)) ||
                      (type == MQTT_PUBCOMP && rp->qos == 2 && rp->released)))
                        return true; /* out of order for its QoS: ignored */
                ob_replay_done(o, i);
                outbox_pump(o);
                return true;
        }
        return false;
}

bool outbox_on_broker_ack(struct outbox *o, enum mqtt_type type, uint16_t pid)
{
        if (!o || o->detached)
                return false;
        if (ob_on_replay_ack(o, type, pid))
                return true;
        return ob_on_direct_ack(o, type, pid);
}

uint64_t outbox_spooled(const struct outbox *o)
{
        if (!o)
                return 0;
        return o->spool ? spool_pending(o->spool) : 0;
}

bool outbox_idle(const struct outbox *o)
{
        return !o || (o->n_fifo == 0 && o->n_rel == 0 && o->n_replay == 0 && !o->q0_head &&
                      (!o->spool || spool_pending(o->spool) == 0));
}

const struct spool_meta *outbox_spool_meta(const struct outbox *o)
{
        return o && o->spool ? spool_get_meta(o->spool) : NULL;
}
