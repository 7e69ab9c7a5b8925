/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "outbox.h"
#include "spool.h"
#include "upstream.h"

/* A message in flight upstream (a copy, for the spool if the connection
 * drops), or a QoS 0 message waiting for the connection. */
struct ob_msg {
        struct ob_msg *next;
        int mid;
        unsigned shadowed;      /* QoS 0 publishes that got the same mid since */
        uint16_t pid;
        uint8_t qos;
        bool retain;
        size_t len;
        char *topic;            /* points into data */
        uint8_t data[];         /* payload, then topic */
};

struct ob_replay {
        int mid;
        uint64_t seq;
        unsigned shadowed;
};

struct ob_ack {
        uint16_t pid;
        uint8_t qos;
};

struct outbox {
        struct outbox_params p;
        char *spool_dir;
        char *key;
        char *name;
        struct upstream *up;
        bool connected;
        struct spool *spool;
        bool spooling;                  /* QoS 1/2 go to the spool */
        struct ob_msg *fly_head, *fly_tail; /* direct, in flight, in order */
        unsigned n_fly;
        struct ob_msg *q0_head, *q0_tail;   /* QoS 0 waiting */
        size_t q0_bytes;
        struct ob_replay *replay;       /* spooled, in flight upstream */
        unsigned n_replay;
        uint64_t last_read_seq;
        struct ob_ack *acks;            /* spooled, waiting for fsync */
        unsigned n_acks, cap_acks;
        uint64_t counted_pending;       /* this spool's share of *p.spool_msgs */
        bool detached;                  /* the session ended: no more I/O */
        bool in_qos0_publish;           /* inside upstream_publish() for QoS 0 */
        bool qos0_seen;                 /* ...and its on_publish came at once */
};

static void count(uint64_t *c)
{
        if (c)
                (*c)++;
}

static struct ob_msg *ob_msg_new(uint16_t pid, uint8_t qos, bool retain, const char *topic,
                                 const void *payload, size_t len)
{
        size_t tlen = strlen(topic);
        struct ob_msg *m = malloc(sizeof *m + len + tlen + 1);

        if (!m)
                return NULL;
        *m = (struct ob_msg){ .pid = pid, .qos = qos, .retain = retain, .len = len };
        if (len)
                memcpy(m->data, payload, len);
        m->topic = (char *) m->data + len;
        memcpy(m->topic, topic, tlen + 1);
        return m;
}

/* Keep the shared byte counter right across an operation on the file,
 * and the shared message gauge with this spool's pending count. */
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

static int ob_spool_open(struct outbox *o)
{
        int r;

        if (o->spool)
                return 0;
        if (o->detached)
                return -ESHUTDOWN;
        if (!o->spool_dir && !o->p.spool_path)
                return -ENOTCONN;
        if (o->p.spool_path)
                r = spool_open_path(o->p.spool_path, o->p.spool_max_bytes, &o->spool);
        else
                r = spool_open(o->spool_dir, o->key, o->p.spool_max_bytes, &o->spool);
        if (r < 0) {
                log_error("cannot open the spool of \"%s\": %s", o->name, strerror(-r));
                return r;
        }
        if (o->p.up_client_id) {
                r = spool_set_meta(o->spool, o->p.up_client_id, o->p.up_username, o->p.up_password,
                                   o->p.protocol_level);
                if (r < 0)
                        log_warning("spool of \"%s\": cannot record the sender: %s", o->name, strerror(-r));
        }
        ob_account(o, 0);
        return 0;
}

/* Close the spool file (spool_close removes it when nothing is pending)
 * and take it out of the gauges. Returns true if it held messages. */
static bool ob_spool_close(struct outbox *o)
{
        bool pending;
        uint64_t before;

        if (!o->spool)
                return false;
        before = spool_bytes(o->spool);
        pending = spool_pending(o->spool) > 0;
        spool_close(o->spool);
        o->spool = NULL;
        ob_account(o, before);
        return pending;
}

static void ob_spool_close_if_empty(struct outbox *o)
{
        if (!o->spool || spool_pending(o->spool) > 0 || o->n_acks > 0 || o->n_replay > 0)
                return;
        ob_spool_close(o);
        o->spooling = false;
        o->last_read_seq = 0;
}

static int ob_spool_append(struct outbox *o, uint16_t pid, uint8_t qos, bool retain, const char *topic,
                           const void *payload, size_t len)
{
        uint64_t seq, before;
        int r;

        r = ob_spool_open(o);
        if (r < 0)
                return r;
        if (o->p.spool_total && o->p.spool_total_max &&
            *o->p.spool_total + len + strlen(topic) + 64 > o->p.spool_total_max)
                return -ENOSPC;
        if (o->n_acks == o->cap_acks) {
                unsigned cap = o->cap_acks ? o->cap_acks * 2 : 8;
                struct ob_ack *a = realloc(o->acks, cap * sizeof *a);
                if (!a)
                        return -ENOMEM;
                o->acks = a;
                o->cap_acks = cap;
        }
        before = spool_bytes(o->spool);
        r = spool_append(o->spool, qos, retain, topic, payload, len, &seq);
        ob_account(o, before);
        if (r < 0)
                return r;
        o->acks[o->n_acks++] = (struct ob_ack){ .pid = pid, .qos = qos };
        o->spooling = true;
        count(o->p.stat_spooled);
        return 0;
}

int outbox_new(const struct outbox_params *p, struct outbox **out)
{
        struct outbox *o = calloc(1, sizeof *o);

        if (!o)
                return -ENOMEM;
        o->p = *p;
        o->key = strdup(p->key);
        o->name = strdup(p->name ? p->name : p->key);
        o->spool_dir = p->spool_dir ? strdup(p->spool_dir) : NULL;
        if (!o->key || !o->name || (p->spool_dir && !o->spool_dir)) {
                outbox_free(o);
                return -ENOMEM;
        }
        if (o->spool_dir || p->spool_path) {
                /* Messages an earlier connection (or a crashed bridge) left
                 * behind go out before anything new. */
                if (ob_spool_open(o) == 0) {
                        if (spool_pending(o->spool) > 0) {
                                o->spooling = true;
                                log_notice("%llu spooled message%s of \"%s\" will be sent upstream first",
                                           (unsigned long long) spool_pending(o->spool),
                                           spool_pending(o->spool) == 1 ? "" : "s", o->name);
                        } else {
                                ob_spool_close_if_empty(o);
                        }
                }
        }
        *out = o;
        return 0;
}

static void ob_list_free(struct ob_msg *m)
{
        while (m) {
                struct ob_msg *n = m->next;
                free(m);
                m = n;
        }
}

bool outbox_detach(struct outbox *o)
{
        if (!o)
                return false;
        o->detached = true;
        o->connected = false;
        o->up = NULL;
        o->n_acks = 0; /* not durable yet: never acknowledged */
        /* The gauges count open spools; a file left with messages waits on
         * disk for the device's next connection (or a replayer). */
        return ob_spool_close(o);
}

void outbox_free(struct outbox *o)
{
        if (!o)
                return;
        (void) outbox_detach(o);
        ob_list_free(o->fly_head);
        ob_list_free(o->q0_head);
        free(o->replay);
        free(o->acks);
        free(o->key);
        free(o->name);
        free(o->spool_dir);
        free(o);
}

/* libmosquitto reports a QoS 0 publish through on_publish too, with a mid
 * from the same 16-bit counter: after a wrap-around it can equal that of a
 * QoS 1/2 message still in flight, whose PUBACK must not be faked. */
static void ob_shadow(struct outbox *o, int mid)
{
        for (struct ob_msg *m = o->fly_head; m; m = m->next)
                if (m->mid == mid)
                        m->shadowed++;
        for (unsigned i = 0; i < o->n_replay; i++)
                if (o->replay[i].mid == mid)
                        o->replay[i].shadowed++;
}

/* A QoS 0 PUBLISH upstream. libmosquitto usually reports it through
 * on_publish from inside mosquitto_publish (written at once): that call is
 * recognised by the flag; a later one (written later) by ob_shadow. */
static int ob_publish_qos0(struct outbox *o, const char *topic, const void *payload, size_t len, bool retain)
{
        int mid = 0, r;

        o->in_qos0_publish = true;
        o->qos0_seen = false;
        r = upstream_publish(o->up, &mid, topic, payload, len, 0, retain);
        o->in_qos0_publish = false;
        if (r == 0 && !o->qos0_seen)
                ob_shadow(o, mid);
        return r;
}

/* Send spooled messages upstream, in order, up to the in-flight limit. */
static void ob_pump(struct outbox *o)
{
        while (o->connected && o->spooling && o->spool && o->n_replay < o->p.max_inflight) {
                struct spool_msg *m = NULL;
                int mid = 0;
                uint64_t cursor = spool_cursor(o->spool);
                int r = spool_read_next(o->spool, &m);
                if (r < 0) {
                        log_error("spool of \"%s\": read error: %s", o->name, strerror(-r));
                        return;
                }
                if (r == 0)
                        break;
                struct ob_replay *rp = realloc(o->replay, (o->n_replay + 1) * sizeof *rp);
                if (!rp) {
                        free(m);
                        spool_rewind(o->spool);
                        return;
                }
                o->replay = rp;
                r = upstream_publish(o->up, &mid, m->topic, m->payload, m->payload_len, m->qos, m->retain);
                uint64_t seq = m->seq;
                free(m);
                if (r < 0) {
                        /* Read it again next time: the cursor must not pass
                         * a message that did not go out. A lost connection
                         * arrives through outbox_upstream_lost. */
                        if (o->spool)
                                spool_set_cursor(o->spool, cursor);
                        return;
                }
                o->replay[o->n_replay++] = (struct ob_replay){ .mid = mid, .seq = seq };
                o->last_read_seq = seq;
                count(o->p.stat_replayed);
        }
        if (o->connected && o->n_replay == 0 && o->n_acks == 0)
                ob_spool_close_if_empty(o);
}

static void ob_flush_qos0(struct outbox *o)
{
        while (o->connected && o->q0_head) {
                struct ob_msg *m = o->q0_head;
                if (ob_publish_qos0(o, m->topic, m->data, m->len, m->retain) < 0)
                        return;
                o->q0_head = m->next;
                if (!o->q0_head)
                        o->q0_tail = NULL;
                o->q0_bytes -= m->len + strlen(m->topic);
                free(m);
        }
}

void outbox_set_upstream(struct outbox *o, struct upstream *u, bool connected)
{
        o->up = u;
        o->connected = u && connected;
        if (o->connected) {
                ob_flush_qos0(o);
                ob_pump(o);
        }
}

static int ob_queue_qos0(struct outbox *o, bool retain, const char *topic, const void *payload, size_t len)
{
        size_t need = len + strlen(topic);
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
                o->q0_bytes -= m->len + strlen(m->topic);
                free(m);
                count(o->p.stat_dropped);
        }
        m = ob_msg_new(0, 0, retain, topic, payload, len);
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

int outbox_publish(struct outbox *o, uint16_t pid, uint8_t qos, bool retain, const char *topic,
                   const void *payload, size_t len)
{
        struct ob_msg *m;
        int r;

        if (qos == 0) {
                if (o->connected) {
                        r = ob_publish_qos0(o, topic, payload, len, retain);
                        if (r != -ENOTCONN)
                                return r;
                }
                return ob_queue_qos0(o, retain, topic, payload, len);
        }
        if (o->detached)
                return -ESHUTDOWN;
        if (o->spooling || !o->connected)
                return ob_spool_append(o, pid, qos, retain, topic, payload, len);

        m = ob_msg_new(pid, qos, retain, topic, payload, len);
        if (!m)
                return -ENOMEM;
        r = upstream_publish(o->up, &m->mid, topic, payload, len, qos, retain);
        if (r < 0 && r != -ENOTCONN) {
                free(m);
                return r;
        }
        /* Even when the connection just failed (-ENOTCONN) keep the copy:
         * outbox_upstream_lost() moves it to the spool. */
        if (o->fly_tail)
                o->fly_tail->next = m;
        else
                o->fly_head = m;
        o->fly_tail = m;
        o->n_fly++;
        return 0;
}

int outbox_commit(struct outbox *o)
{
        if (!o)
                return 0;
        int r;

        if (o->n_acks == 0)
                return 0;
        if (!o->spool)
                return -ESHUTDOWN;
        r = spool_sync(o->spool);
        if (r < 0)
                return r;
        /* Durable: now, and only now, the device may forget them. */
        unsigned n = o->n_acks;
        o->n_acks = 0;
        for (unsigned i = 0; i < n; i++)
                o->p.ops->ack(o->p.ud, o->acks[i].pid, o->acks[i].qos);
        ob_pump(o);
        return 0;
}

bool outbox_has(const struct outbox *o, uint16_t pid)
{
        if (!o)
                return false;
        for (const struct ob_msg *m = o->fly_head; m; m = m->next)
                if (m->pid == pid)
                        return true;
        for (unsigned i = 0; i < o->n_acks; i++)
                if (o->acks[i].pid == pid)
                        return true;
        return false;
}

bool outbox_full(const struct outbox *o)
{
        if (!o)
                return false;
        return o->n_fly >= o->p.max_inflight;
}

bool outbox_on_published(struct outbox *o, int mid)
{
        if (!o)
                return false;
        if (o->in_qos0_publish) {
                /* The QoS 0 message being written right now. */
                o->qos0_seen = true;
                return true;
        }
        struct ob_msg **pp, *m;

        for (pp = &o->fly_head; (m = *pp); pp = &m->next) {
                if (m->mid != mid)
                        continue;
                if (m->shadowed > 0) {
                        /* This is the QoS 0 publish's callback, not ours. */
                        m->shadowed--;
                        return true;
                }
                *pp = m->next;
                if (o->fly_tail == m) {
                        o->fly_tail = NULL;
                        for (struct ob_msg *t = o->fly_head; t; t = t->next)
                                o->fly_tail = t;
                }
                o->n_fly--;
                o->p.ops->ack(o->p.ud, m->pid, m->qos);
                free(m);
                return true;
        }
        for (unsigned i = 0; i < o->n_replay; i++) {
                if (o->replay[i].mid != mid)
                        continue;
                if (o->replay[i].shadowed > 0) {
                        o->replay[i].shadowed--;
                        return true;
                }
                if (!o->spool)
                        return true;
                o->replay[i] = o->replay[--o->n_replay];
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
                ob_pump(o);
                return true;
        }
        return false;
}

int outbox_upstream_lost(struct outbox *o)
{
        int r = 0;

        o->connected = false;
        o->n_replay = 0;
        if (o->spool)
                spool_rewind(o->spool); /* unacknowledged ones go again */
        if (!o->fly_head)
                return 0;
        if (!o->spool_dir && !o->p.spool_path)
                return -ENOTCONN;
        /* In order, ahead of anything the device sends from now on. */
        while (o->fly_head) {
                struct ob_msg *m = o->fly_head;
                r = ob_spool_append(o, m->pid, m->qos, m->retain, m->topic, m->data, m->len);
                if (r < 0)
                        return r;
                o->fly_head = m->next;
                o->n_fly--;
                free(m);
        }
        o->fly_tail = NULL;
        return 0;
}

uint64_t outbox_spooled(const struct outbox *o)
{
        if (!o)
                return 0;
        return o->spool ? spool_pending(o->spool) : 0;
}

const struct spool_meta *outbox_spool_meta(const struct outbox *o)
{
        return o->spool ? spool_get_meta(o->spool) : NULL;
}
