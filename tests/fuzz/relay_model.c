/* SPDX-License-Identifier: MIT */
/*
 * relay_model — see relay_model.h for the script and the invariants.
 *
 * The pieces, each a plain struct so that a failing script can be read
 * event by event (RELAY_TRACE=1 / trace):
 *
 *   dev     the device: its messages (with the state of each, §4.3), the
 *           packets it sent the bridge that the session has not read yet
 *           (pipe), and the acknowledgements the bridge sent it that it
 *           has not read yet (inbox). Both are lost when its connection
 *           goes, as on TCP.
 *   conn    one device connection: its outbox, the PUBLISHes handed to
 *           that outbox still owed an acknowledgement (in order), and the
 *           PUBRELs still owed a PUBCOMP.
 *   link    the uplink (fake_uplink.h): the outbox writes into it, the
 *           broker reads from it.
 *   broker  the QoS 2 messages it stores by packet identifier, and the
 *           acknowledgements it owes the bridge (sent when the script says).
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_uplink.h"
#include "log.h"
#include "mqtt_codec.h"
#include "outbox.h"
#include "relay_model.h"
#include "spool.h"
#include "uplink.h"

#define MAX_MSGS 512
#define MAX_PKTS 2048
#define MAX_PIDS 64             /* the device's packet identifiers: 1..pid_range */
#define DRAIN_ROUNDS 400

enum dstate {
        D_SENT = 1,             /* PUBLISH sent, no acknowledgement yet */
        D_RECD,                 /* QoS 2: PUBREC received, PUBREL not sent yet */
        D_RELEASED,             /* QoS 2: PUBREL sent, waiting for PUBCOMP */
        D_DONE,                 /* acknowledged (PUBACK, PUBCOMP) */
        D_DROPPED,              /* forgotten (clean session) */
};

struct msg {
        uint8_t qos;
        bool retain;
        bool refused;           /* outside the mountpoint: acknowledged, never delivered */
        uint8_t topic;          /* "up/t/<topic>" upstream */
        uint8_t len;            /* payload filler after the 4-byte message number */
        uint16_t pid;           /* the device's */
        uint8_t dstate;
        bool promised;          /* the bridge acknowledged it (PUBACK / PUBREC) */
        bool excused;           /* may be lost as with a direct connection (relay_model.h, 3.) */
        bool copy_only;         /* the broker lost it; only the outbox's copy is left */
        bool rejected;          /* moved aside to <spool>.rejected (outbox.c, ob_check_stuck) */
        unsigned delivered;
        unsigned delivery_rank; /* QoS 1: order of first delivery, from 1 */
};

struct pkt {
        uint8_t type;           /* MQTT_PUBLISH / PUBREL (device → bridge), PUBACK / PUBREC / PUBCOMP */
        uint16_t pid;
        uint32_t msg;
        bool dup;
};

struct fifo {
        struct pkt p[MAX_PKTS];
        unsigned head, n;
};

struct stored {
        uint16_t pid;
        uint32_t msg;
        bool recd;              /* its PUBREC reached an outbox */
        bool rel_lost;          /* a PUBREL for it died with a link */
        unsigned gen;           /* the device connection whose link stored it (0: a replayer's) */
};

struct rm {
        /* configuration */
        bool clean;
        unsigned max_inflight, pid_range;
        uint64_t spool_max;
        size_t high_water, max_qos0;
        char dir[256];
        int trace;

        /* the device */
        struct msg msgs[MAX_MSGS];
        unsigned n_msgs;
        int32_t dev_pid[MAX_PIDS + 1];  /* message using each pid, or -1 */
        struct fifo pipe;               /* device → bridge */
        struct fifo inbox;              /* bridge → device */
        bool connected;

        /* the connection and its outbox */
        struct outbox *ob;
        unsigned gen;
        uint32_t pend[MAX_PKTS];        /* messages handed to this outbox, owed an ack, in order */
        unsigned n_pend;
        uint16_t relset[MAX_PKTS];      /* PUBRELs handed to this outbox, owed a PUBCOMP */
        unsigned n_relset;
        int in_publish;                 /* pid of the outbox_publish running, or -1 */
        bool spooled;                   /* the last connection left messages in the spool */
        uint64_t gauge_bytes, gauge_msgs, st_spooled, st_replayed, st_dropped;

        /* the uplink and the broker */
        struct uplink link;
        bool has_session;               /* persistent: the broker has the session */
        unsigned link_gen;              /* the device connection on the link (0: a replayer's) */
        struct stored store[MAX_PKTS];
        unsigned n_store;
        struct fifo owed;               /* acks the broker owes the bridge */
        unsigned rank;

        /* the verdict */
        unsigned event;
        unsigned n_rejected;
        bool failed;
        char *why;
        size_t why_len;
};

static void fail(struct rm *rm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct rm *rm, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (rm->failed)
                return;
        rm->failed = true;
        n = snprintf(rm->why, rm->why_len, "event %u: ", rm->event);
        if (n < 0 || (size_t) n >= rm->why_len)
                return;
        va_start(ap, fmt);
        vsnprintf(rm->why + n, rm->why_len - (size_t) n, fmt, ap);
        va_end(ap);
}

static void trace(struct rm *rm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void trace(struct rm *rm, const char *fmt, ...)
{
        va_list ap;

        if (!rm->trace)
                return;
        fprintf(stderr, "[%u] ", rm->event);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static void fifo_push(struct rm *rm, struct fifo *f, struct pkt p)
{
        if (f->n == MAX_PKTS) {
                fail(rm, "model queue full");
                return;
        }
        f->p[(f->head + f->n++) % MAX_PKTS] = p;
}

static struct pkt fifo_take(struct fifo *f, unsigned i)
{
        struct pkt p = f->p[(f->head + i) % MAX_PKTS];
        for (unsigned k = i; k > 0; k--)
                f->p[(f->head + k) % MAX_PKTS] = f->p[(f->head + k - 1) % MAX_PKTS];
        f->head = (f->head + 1) % MAX_PKTS;
        f->n--;
        return p;
}

static void read_rejected(struct rm *rm, bool remove);

/* ---- messages on the wire ---- */

static size_t msg_payload(uint32_t id, const struct msg *m, uint8_t *buf)
{
        buf[0] = (uint8_t) (id >> 24);
        buf[1] = (uint8_t) (id >> 16);
        buf[2] = (uint8_t) (id >> 8);
        buf[3] = (uint8_t) id;
        for (unsigned i = 0; i < m->len; i++)
                buf[4 + i] = (uint8_t) (id * 7 + i);
        return 4u + m->len;
}

static size_t msg_topic(const struct msg *m, char *buf, size_t cap)
{
        return (size_t) snprintf(buf, cap, "up/t/%u", m->topic);
}

/* ---- the outbox's callbacks: what the bridge tells the device ---- */

static void ob_ack(void *ud, uint16_t pid, uint8_t qos)
{
        struct rm *rm = ud;

        trace(rm, "  outbox acks %s %u", qos == 1 ? "PUBACK" : "PUBREC", pid);
        if (qos == 2 && rm->in_publish == pid) {
                /* PUBREC again for a DUP of a message it holds (§4.3.3). */
                fifo_push(rm, &rm->inbox, (struct pkt){ .type = MQTT_PUBREC, .pid = pid });
                return;
        }
        if (rm->n_pend == 0) {
                fail(rm, "ack %u (QoS %u) for no PUBLISH of this connection", pid, qos);
                return;
        }
        struct msg *m = &rm->msgs[rm->pend[0]];
        if (m->pid != pid || m->qos != qos) {
                bool known = false;
                for (unsigned i = 0; i < rm->n_pend; i++)
                        known |= rm->msgs[rm->pend[i]].pid == pid;
                fail(rm, "ack %u (QoS %u) %s: the oldest PUBLISH waiting is %u (QoS %u) [MQTT-4.6.0-2]", pid, qos,
                     known ? "out of order" : "for no PUBLISH of this connection", m->pid, m->qos);
                return;
        }
        memmove(rm->pend, rm->pend + 1, (rm->n_pend - 1) * sizeof *rm->pend);
        rm->n_pend--;
        if (!m->refused)
                m->promised = true;
        fifo_push(rm, &rm->inbox, (struct pkt){ .type = qos == 1 ? MQTT_PUBACK : MQTT_PUBREC, .pid = pid });
}

static void ob_complete(void *ud, uint16_t pid)
{
        struct rm *rm = ud;

        trace(rm, "  outbox completes PUBCOMP %u", pid);
        for (unsigned i = 0; i < rm->n_relset; i++)
                if (rm->relset[i] == pid) {
                        rm->relset[i] = rm->relset[--rm->n_relset];
                        fifo_push(rm, &rm->inbox, (struct pkt){ .type = MQTT_PUBCOMP, .pid = pid });
                        return;
                }
        fail(rm, "PUBCOMP %u to the device, which sent no PUBREL %u on this connection", pid, pid);
}

static const struct outbox_ops ob_ops = {
        .ack = ob_ack,
        .complete = ob_complete,
};

/* ---- the broker ---- */

static struct stored *store_find(struct rm *rm, uint16_t pid)
{
        for (unsigned i = 0; i < rm->n_store; i++)
                if (rm->store[i].pid == pid)
                        return &rm->store[i];
        return NULL;
}

static bool owed_has(struct rm *rm, uint16_t pid)
{
        for (unsigned i = 0; i < rm->owed.n; i++)
                if (rm->owed.p[(rm->owed.head + i) % MAX_PKTS].pid == pid)
                        return true;
        return false;
}

static void deliver(struct rm *rm, uint32_t id)
{
        struct msg *m = &rm->msgs[id];

        m->delivered++;
        trace(rm, "  broker delivers message %u (QoS %u, device pid %u), %u time%s", id, m->qos, m->pid,
              m->delivered, m->delivered == 1 ? "" : "s");
        if (m->refused)
                fail(rm, "message %u was refused (outside the mountpoint) but delivered", id);
        else if (m->qos != 1 && m->delivered > 1)
                fail(rm, "QoS %u message %u (device pid %u) delivered twice", m->qos, id, m->pid);
        if (m->qos == 1 && m->delivered == 1)
                m->delivery_rank = ++rm->rank;
}

static void broker_publish(struct rm *rm, const struct mqtt_publish *p)
{
        uint32_t id;
        uint8_t want[4 + 256];
        char topic[32];

        if (p->payload_len < 4) {
                fail(rm, "broker got a PUBLISH the device never sent (payload %zu bytes)", p->payload_len);
                return;
        }
        id = (uint32_t) p->payload[0] << 24 | (uint32_t) p->payload[1] << 16 | (uint32_t) p->payload[2] << 8 |
             p->payload[3];
        if (id >= rm->n_msgs) {
                fail(rm, "broker got message %u the device never sent", id);
                return;
        }
        struct msg *m = &rm->msgs[id];
        size_t tl = msg_topic(m, topic, sizeof topic), pl = msg_payload(id, m, want);
        if (p->qos != m->qos || p->retain != m->retain || p->topic.len != tl ||
            memcmp(p->topic.data, topic, tl) != 0 || p->payload_len != pl || memcmp(p->payload, want, pl) != 0) {
                fail(rm, "broker got message %u altered (QoS %u, retain %d, topic %.*s, %zu bytes)", id, p->qos,
                     p->retain, (int) p->topic.len, (const char *) p->topic.data, p->payload_len);
                return;
        }
        trace(rm, "  broker reads PUBLISH %u QoS %u (message %u)%s", p->packet_id, p->qos, id, p->dup ? " DUP" : "");
        if (p->qos == 0) {
                deliver(rm, id);
                return;
        }
        struct stored *st = store_find(rm, p->packet_id);
        if (st && st->msg != id) {
                read_rejected(rm, false);
                if (rm->msgs[st->msg].rejected) {
                        /* The outbox set the stored one aside (ob_check_stuck)
                         * and its id is free again there. mosquitto takes a
                         * QoS 2 PUBLISH under a stored id with other content
                         * for a new message ("Reused message ID"): so here. */
                        trace(rm, "  broker drops message %u (set aside) for message %u under id %u", st->msg, id,
                              p->packet_id);
                        *st = rm->store[--rm->n_store];
                        st = NULL;
                }
        }
        if ((st && st->msg != id) || owed_has(rm, p->packet_id)) {
                /* §2.3.1: an identifier is free for a new PUBLISH only once
                 * its exchange is complete; the broker would take this one
                 * for a duplicate (QoS 2, §4.3.3) and drop it. */
                fail(rm, "packet id %u reused upstream for message %u while still in use (%s)", p->packet_id, id,
                     st ? "the broker stores a QoS 2 message under it" : "its acknowledgement is owed");
                return;
        }
        if (p->qos == 1) {
                deliver(rm, id);
                fifo_push(rm, &rm->owed, (struct pkt){ .type = MQTT_PUBACK, .pid = p->packet_id });
                return;
        }
        if (!st) {
                if (rm->n_store == MAX_PKTS) {
                        fail(rm, "model store full");
                        return;
                }
                rm->store[rm->n_store++] = (struct stored){ .pid = p->packet_id, .msg = id, .gen = rm->link_gen };
        }
        fifo_push(rm, &rm->owed, (struct pkt){ .type = MQTT_PUBREC, .pid = p->packet_id });
}

static void broker_pubrel(struct rm *rm, uint16_t pid)
{
        struct stored *st = store_find(rm, pid);

        trace(rm, "  broker reads PUBREL %u%s", pid, st ? "" : " (nothing stored)");
        if (st) {
                uint32_t id = st->msg;
                *st = rm->store[--rm->n_store];
                deliver(rm, id);
        }
        /* §4.3.3: PUBCOMP whether or not anything was stored. */
        fifo_push(rm, &rm->owed, (struct pkt){ .type = MQTT_PUBCOMP, .pid = pid });
}

/* Read up to max packets (0: all) the outbox wrote. Returns how many. */
static unsigned broker_read(struct rm *rm, unsigned max)
{
        unsigned n = 0;

        while (!rm->failed && rm->link.len > 0 && (max == 0 || n < max)) {
                size_t plen = 0;
                struct mqtt_packet pkt;
                const char *why = NULL;
                int r = mqtt_frame(rm->link.out, rm->link.len, 0, &plen);
                if (r == 0) {
                        fail(rm, "the outbox committed part of a packet (%zu bytes left)", rm->link.len);
                        return n;
                }
                if (r < 0 || mqtt_parse(rm->link.out, plen, &pkt, &why) < 0) {
                        fail(rm, "the outbox wrote an invalid packet upstream: %s", why ? why : "bad length");
                        return n;
                }
                if (pkt.type == MQTT_PUBLISH)
                        broker_publish(rm, &pkt.u.publish);
                else if (pkt.type == MQTT_PUBREL)
                        broker_pubrel(rm, pkt.u.packet_id);
                else
                        fail(rm, "the outbox wrote a %s upstream", mqtt_type_name(pkt.type));
                fake_uplink_consume(&rm->link, plen);
                n++;
        }
        return n;
}

/* The broker sends the i-th acknowledgement it owes to ob. */
static void broker_ack_to(struct rm *rm, struct outbox *ob, unsigned i)
{
        if (rm->owed.n == 0 || !ob)
                return;
        struct pkt a = fifo_take(&rm->owed, i % rm->owed.n);
        trace(rm, "broker sends %s %u", mqtt_type_name(a.type), a.pid);
        struct stored *st = a.type == MQTT_PUBREC ? store_find(rm, a.pid) : NULL;
        if (st)
                st->recd = true;
        (void) outbox_on_broker_ack(ob, (enum mqtt_type) a.type, a.pid);
}

static void broker_ack(struct rm *rm, unsigned i)
{
        broker_ack_to(rm, rm->ob, i);
}

/* The link is gone: what was on the wire is lost; a clean session's state
 * with it (§3.1.2.4). */
static void broker_link_lost(struct rm *rm)
{
        if (!rm->link.connected)
                return;
        trace(rm, "  link lost with %zu bytes unread, %u acks owed", rm->link.len, rm->owed.n);
        /* A PUBREL that dies with the link: with a clean session the
         * message is lost, as for a device connected directly; with a
         * persistent one it is sent again, unless the session goes too
         * (broker_restart). */
        size_t off = 0, plen;
        while (off < rm->link.len && mqtt_frame(rm->link.out + off, rm->link.len - off, 0, &plen) == 1) {
                struct mqtt_packet pkt;
                if (mqtt_parse(rm->link.out + off, plen, &pkt, NULL) == 0 && pkt.type == MQTT_PUBREL) {
                        struct stored *st = store_find(rm, pkt.u.packet_id);
                        if (st) {
                                st->rel_lost = true;
                                if (rm->clean)
                                        rm->msgs[st->msg].excused = true;
                        }
                }
                off += plen;
        }
        if (rm->clean)
                rm->n_store = 0;
        fake_uplink_disconnect(&rm->link);
        rm->owed.n = 0;
}

static bool broker_connect(struct rm *rm)
{
        bool sp = !rm->clean && rm->has_session;

        /* Told now: the outbox spools its copies (the device's connection
         * is the one of the link; a replayer's holds no copies). */
        for (unsigned i = 0; !sp && i < rm->n_msgs; i++)
                rm->msgs[i].copy_only = false;

        fake_uplink_connect(&rm->link, rm->high_water);
        rm->link_gen = rm->gen;
        rm->has_session = !rm->clean;
        trace(rm, "  link up, session_present=%d", sp);
        return sp;
}

/* ---- the device's connection ---- */

#define KEY "4:cn-1dev-1"

static void conn_open(struct rm *rm, bool online, unsigned replay_rounds);

/* The session ends: uplink closed without DISCONNECT, outbox detached
 * and freed (session_close, session_release_outbox, session_free). */
static void conn_close(struct rm *rm, const char *why)
{
        if (!rm->ob)
                return;
        trace(rm, "  device connection closed: %s", why);
        broker_link_lost(rm);
        rm->spooled = outbox_detach(rm->ob);
        /* Copies of what the broker lost, gone with the outbox before it
         * heard so: lost, as they are for a device connected directly. */
        for (unsigned i = 0; i < rm->n_msgs; i++)
                if (rm->msgs[i].copy_only) {
                        rm->msgs[i].excused = true;
                        rm->msgs[i].copy_only = false;
                }
        outbox_free(rm->ob);
        rm->ob = NULL;
        rm->connected = false;
        rm->pipe.n = 0;
        rm->inbox.n = 0;
        rm->n_pend = 0;
        rm->n_relset = 0;
        if (!rm->clean)
                return;
        /* §3.1.2.4: a clean session's state ends with the connection; the
         * device forgets what it had in flight. A QoS 2 message the bridge
         * PUBREC'd (the device may not have read it) may then be lost: the
         * broker drops what it stored too. */
        for (unsigned i = 0; i < rm->n_msgs; i++) {
                struct msg *m = &rm->msgs[i];
                if (m->dstate != D_SENT && m->dstate != D_RECD && m->dstate != D_RELEASED)
                        continue;
                if (m->qos == 2)
                        m->excused = true; /* PUBREC'd, perhaps, but never released */
                m->dstate = D_DROPPED;
                rm->dev_pid[m->pid] = -1;
        }
}

/* While the device is away its spool is replayed (replayer.c): an outbox
 * on the file alone, no device, its own link to the device's session. It
 * stops when the device is back (replayer_stop), after rounds rounds of
 * sending and acknowledging here. */
static void replay_while_away(struct rm *rm, unsigned rounds)
{
        struct outbox *ob = NULL;
        char *path;

        if (!rm->spooled || rounds == 0 || rm->failed)
                return;
        path = spool_path(rm->dir, KEY);
        struct outbox_params p = {
                .name = "replayer",
                .spool_path = path,
                .spool_max_bytes = rm->spool_max,
                .spool_total = &rm->gauge_bytes,
                .spool_msgs = &rm->gauge_msgs,
                .max_inflight = rm->max_inflight,
                .stat_replayed = &rm->st_replayed,
        };
        int r = path ? outbox_new(&p, &ob) : -ENOMEM;
        free(path);
        if (r < 0) {
                fail(rm, "replayer: outbox_new: %s", strerror(-r));
                return;
        }
        trace(rm, "  replayer for %llu spooled messages", (unsigned long long) outbox_spooled(ob));
        if (outbox_spooled(ob) > 0) {
                outbox_uplink_up(ob, &rm->link, broker_connect(rm));
                rm->link_gen = 0;
                for (unsigned i = 0; i < rounds && !rm->failed && !outbox_idle(ob); i++) {
                        outbox_pump(ob);
                        (void) broker_read(rm, 0);
                        while (rm->owed.n > 0 && !rm->failed)
                                broker_ack_to(rm, ob, 0);
                }
                trace(rm, "  replayer %s", outbox_idle(ob) ? "done" : "stopped");
                broker_link_lost(rm);
        }
        rm->spooled = false;
        outbox_free(ob);
}

static void conn_open(struct rm *rm, bool online, unsigned replay_rounds)
{
        struct spool_meta meta = {
                .client_id = (char *) "dev-1",
                .identity = (char *) "cn-1",
                .protocol_level = 4,
                .clean_session = rm->clean,
        };
        struct outbox_params p = {
                .spool_dir = rm->dir,
                .key = KEY,
                .name = "cn-1",
                .meta = &meta,
                .spool_max_bytes = rm->spool_max,
                .spool_total = &rm->gauge_bytes,
                .spool_msgs = &rm->gauge_msgs,
                .max_inflight = rm->max_inflight,
                .max_qos0_bytes = rm->max_qos0,
                .stat_spooled = &rm->st_spooled,
                .stat_replayed = &rm->st_replayed,
                .stat_dropped = &rm->st_dropped,
                .ops = &ob_ops,
                .ud = rm,
        };
        int r;

        conn_close(rm, "reconnect");
        replay_while_away(rm, replay_rounds);
        if (rm->failed)
                return;
        rm->gen++;
        r = outbox_new(&p, &rm->ob);
        if (r < 0) {
                fail(rm, "outbox_new: %s", strerror(-r));
                return;
        }
        rm->connected = true;
        trace(rm, "  device connected (%s), connection %u", online ? "online" : "offline", rm->gen);
        if (online)
                outbox_uplink_up(rm->ob, &rm->link, broker_connect(rm));
        if (rm->clean)
                return;
        /* §4.4: resend unacknowledged PUBLISHes (DUP) and PUBRELs, in the
         * original order. */
        for (unsigned i = 0; i < rm->n_msgs; i++) {
                struct msg *m = &rm->msgs[i];
                if (m->dstate == D_SENT)
                        fifo_push(rm, &rm->pipe, (struct pkt){ .type = MQTT_PUBLISH, .msg = i, .dup = true });
                else if (m->dstate == D_RECD || m->dstate == D_RELEASED) {
                        m->dstate = D_RELEASED;
                        fifo_push(rm, &rm->pipe, (struct pkt){ .type = MQTT_PUBREL, .pid = m->pid });
                }
        }
}

/* The session reads at most max packets (0: all) from the device, unless
 * back-pressure stops it (session_may_process), then commits the batch. */
static unsigned bridge_read(struct rm *rm, unsigned max)
{
        unsigned n = 0;

        while (rm->ob && !rm->failed && rm->pipe.n > 0 && (max == 0 || n < max)) {
                if (outbox_full(rm->ob) || (rm->link.connected && !uplink_writable(&rm->link)))
                        break;
                struct pkt k = fifo_take(&rm->pipe, 0);
                n++;
                if (k.type == MQTT_PUBREL) {
                        trace(rm, "bridge reads PUBREL %u", k.pid);
                        if (rm->n_relset < MAX_PKTS)
                                rm->relset[rm->n_relset++] = k.pid;
                        outbox_device_pubrel(rm->ob, k.pid);
                        continue;
                }
                struct msg *m = &rm->msgs[k.msg];
                uint8_t payload[4 + 256];
                char topic[32];
                size_t tl = msg_topic(m, topic, sizeof topic);
                struct mqtt_publish p = {
                        .dup = k.dup,
                        .qos = m->qos,
                        .retain = m->retain,
                        .topic = { (const uint8_t *) topic, (uint16_t) tl },
                        .packet_id = m->qos ? m->pid : 0,
                        .payload = payload,
                        .payload_len = msg_payload(k.msg, m, payload),
                };
                int r;
                trace(rm, "bridge reads PUBLISH %u QoS %u (message %u)%s%s", p.packet_id, m->qos, k.msg,
                      k.dup ? " DUP" : "", m->refused ? ", refused" : "");
                bool pending = false;
                for (unsigned i = 0; i < rm->n_pend; i++)
                        pending |= rm->msgs[rm->pend[i]].pid == m->pid;
                if (m->refused) {
                        if (m->qos == 0)
                                continue;
                        if (!pending)
                                rm->pend[rm->n_pend++] = k.msg;
                        r = outbox_refuse(rm->ob, m->pid, m->qos);
                } else {
                        rm->in_publish = m->qos == 2 ? m->pid : -1;
                        if (m->qos > 0 && !pending)
                                rm->pend[rm->n_pend++] = k.msg; /* before: acks may come at once */
                        r = outbox_publish(rm->ob, &p);
                        rm->in_publish = -1;
                        if (r != 0 && m->qos > 0 && !pending) {
                                /* Not taken as a new message: no ack owed for it. */
                                for (unsigned i = 0; i < rm->n_pend; i++)
                                        if (rm->pend[i] == k.msg) {
                                                memmove(rm->pend + i, rm->pend + i + 1,
                                                        (rm->n_pend - i - 1) * sizeof *rm->pend);
                                                rm->n_pend--;
                                                break;
                                        }
                        }
                        if (r == 0 && pending)
                                fail(rm, "outbox took PUBLISH %u as new while it still owes its ack", m->pid);
                }
                if (r < 0) {
                        /* -ENOSPC and the rest: the session closes the device
                         * (session_on_publish); it keeps the message. */
                        trace(rm, "  outbox: %s", strerror(-r));
                        conn_close(rm, strerror(-r));
                        return n;
                }
        }
        if (rm->ob && !rm->failed && n > 0) {
                int r = outbox_commit(rm->ob);
                if (r < 0) {
                        fail(rm, "outbox_commit: %s", strerror(-r));
                        return n;
                }
        }
        return n;
}

/* ---- the device ---- */

static void dev_publish(struct rm *rm, uint8_t arg)
{
        if (!rm->connected || rm->n_msgs == MAX_MSGS)
                return;
        uint8_t qos = arg & 3;
        if (qos == 3)
                qos = 1;
        int pid = 0;
        if (qos > 0) {
                unsigned start = (arg >> 2) % rm->pid_range;
                for (unsigned k = 0; k < rm->pid_range && !pid; k++) {
                        unsigned c = 1 + (start + k) % rm->pid_range;
                        if (rm->dev_pid[c] < 0)
                                pid = (int) c;
                }
                if (!pid)
                        return; /* every identifier in use: the device waits */
        }
        uint32_t id = rm->n_msgs++;
        struct msg *m = &rm->msgs[id];
        *m = (struct msg){
                .qos = qos,
                .retain = (arg & 0x60) == 0x60,
                .refused = (arg & 0x1c) == 0x1c,
                .topic = (uint8_t) ((arg >> 4) & 3),
                .len = (uint8_t) ((arg * 5u + id) % 48u),
                .pid = (uint16_t) pid,
                .dstate = qos ? D_SENT : D_DONE,
        };
        if (qos)
                rm->dev_pid[pid] = (int32_t) id;
        trace(rm, "device publishes message %u QoS %u pid %u%s", id, qos, pid, m->refused ? " (refused)" : "");
        fifo_push(rm, &rm->pipe, (struct pkt){ .type = MQTT_PUBLISH, .msg = id });
}

static bool dev_pubrel(struct rm *rm, uint8_t arg)
{
        unsigned n = 0;

        if (!rm->connected)
                return false;
        for (unsigned i = 0; i < rm->n_msgs; i++)
                n += rm->msgs[i].dstate == D_RECD;
        if (n == 0)
                return false;
        unsigned want = arg % n;
        for (unsigned i = 0; i < rm->n_msgs; i++) {
                struct msg *m = &rm->msgs[i];
                if (m->dstate != D_RECD || want-- > 0)
                        continue;
                m->dstate = D_RELEASED;
                trace(rm, "device sends PUBREL %u (message %u)", m->pid, i);
                fifo_push(rm, &rm->pipe, (struct pkt){ .type = MQTT_PUBREL, .pid = m->pid });
                return true;
        }
        return false;
}

/* The device reads up to max acknowledgements (0: all). */
static unsigned dev_read(struct rm *rm, unsigned max)
{
        unsigned n = 0;

        while (!rm->failed && rm->inbox.n > 0 && (max == 0 || n < max)) {
                struct pkt a = fifo_take(&rm->inbox, 0);
                int32_t id = a.pid <= MAX_PIDS ? rm->dev_pid[a.pid] : -1;
                struct msg *m = id >= 0 ? &rm->msgs[id] : NULL;
                n++;
                trace(rm, "device reads %s %u", mqtt_type_name(a.type), a.pid);
                if (a.type == MQTT_PUBCOMP) {
                        /* A stale duplicate is discarded. */
                        if (m && m->dstate == D_RELEASED) {
                                m->dstate = D_DONE;
                                rm->dev_pid[a.pid] = -1;
                        }
                        continue;
                }
                if (!m || m->qos != (a.type == MQTT_PUBACK ? 1 : 2)) {
                        fail(rm, "device got %s %u for no message of its own in flight", mqtt_type_name(a.type), a.pid);
                        return n;
                }
                if (a.type == MQTT_PUBACK) {
                        if (m->dstate != D_SENT)
                                fail(rm, "device got PUBACK %u twice", a.pid);
                        m->dstate = D_DONE;
                        rm->dev_pid[a.pid] = -1;
                } else if (m->dstate == D_SENT) {
                        m->dstate = D_RECD;
                } else if (m->dstate == D_RELEASED) {
                        /* §4.3.3: answer a PUBREC with PUBREL. */
                        fifo_push(rm, &rm->pipe, (struct pkt){ .type = MQTT_PUBREL, .pid = m->pid });
                }
        }
        return n;
}

/* ---- the script ---- */

enum op {
        OP_PUBLISH,
        OP_PUBLISH2,
        OP_PUBREL,
        OP_BRIDGE_READ,
        OP_DEV_READ,
        OP_BROKER_READ,
        OP_BROKER_ACK,
        OP_LINK_DOWN,
        OP_LINK_UP,
        OP_PUMP,
        OP_RECONNECT,
        OP_BROKER_ACK2,
        OP_BROKER_RESTART,
        OP_COUNT
};

static void link_down(struct rm *rm)
{
        if (!rm->ob || !rm->link.connected)
                return;
        trace(rm, "uplink lost");
        broker_link_lost(rm);
        int r = outbox_uplink_down(rm->ob, rm->clean);
        if (r < 0) {
                /* session: "uplink lost and the spool cannot be written" */
                trace(rm, "  outbox_uplink_down: %s", strerror(-r));
                conn_close(rm, "spool cannot be written");
        }
}

static void link_up(struct rm *rm)
{
        if (!rm->ob || rm->link.connected)
                return;
        trace(rm, "uplink connects");
        outbox_uplink_up(rm->ob, &rm->link, broker_connect(rm));
}

/* The broker restarts without its persistent sessions: the next CONNACK
 * says session_present = 0. What it stored is gone. Lost with it, as for
 * a device connected directly: a QoS 2 message whose PUBREL died with a
 * link (it would have been sent again, for nothing now), and one an
 * earlier connection of the device had the PUBREC for (its PUBREL comes
 * from the device). The others the bridge or the device sends again. */
static void broker_restart(struct rm *rm)
{
        trace(rm, "broker restarts, sessions lost");
        link_down(rm);
        for (unsigned i = 0; i < rm->n_store; i++) {
                const struct stored *st = &rm->store[i];
                if (st->rel_lost || (st->recd && st->gen != 0 && st->gen != rm->gen))
                        rm->msgs[st->msg].excused = true;
                else if (st->recd && st->gen == rm->gen)
                        rm->msgs[st->msg].copy_only = true; /* until that outbox hears session_present = 0 */
        }
        rm->n_store = 0;
        rm->has_session = false;
}

static void step(struct rm *rm, uint8_t op, uint8_t arg)
{
        switch (op % OP_COUNT) {
        case OP_PUBLISH:
        case OP_PUBLISH2:
                dev_publish(rm, arg);
                break;
        case OP_PUBREL:
                (void) dev_pubrel(rm, arg);
                break;
        case OP_BRIDGE_READ:
                (void) bridge_read(rm, arg % 8);
                break;
        case OP_DEV_READ:
                (void) dev_read(rm, arg % 8);
                break;
        case OP_BROKER_READ:
                (void) broker_read(rm, arg % 8);
                break;
        case OP_BROKER_ACK:
        case OP_BROKER_ACK2:
                broker_ack(rm, arg);
                break;
        case OP_LINK_DOWN:
                link_down(rm);
                break;
        case OP_LINK_UP:
                link_up(rm);
                break;
        case OP_BROKER_RESTART:
                broker_restart(rm);
                break;
        case OP_PUMP:
                if (rm->ob) {
                        trace(rm, "pump");
                        outbox_pump(rm->ob);
                }
                break;
        case OP_RECONNECT:
                trace(rm, "device reconnects");
                conn_open(rm, arg & 1, (arg >> 1) & 7);
                break;
        }
}

/* Everything that can move, moves: the device connected, the uplink up,
 * every PUBREL sent and every acknowledgement sent and read. */
static void drain(struct rm *rm)
{
        unsigned round;

        for (round = 0; round < DRAIN_ROUNDS && !rm->failed; round++) {
                unsigned moved = 0;
                if (!rm->ob) {
                        conn_open(rm, true, 64);
                        moved++;
                }
                if (!rm->link.connected) {
                        link_up(rm);
                        moved++;
                }
                while (dev_pubrel(rm, 0))
                        moved++;
                moved += bridge_read(rm, 0);
                if (rm->ob)
                        outbox_pump(rm->ob);
                moved += broker_read(rm, 0);
                while (rm->owed.n > 0 && rm->ob && !rm->failed) {
                        broker_ack(rm, 0);
                        moved++;
                }
                moved += dev_read(rm, 0);
                /* Quiet, unless the bridge may read the device again now
                 * (a pump above ended the replay: the session resumes it). */
                if (moved == 0 && !(rm->ob && rm->pipe.n > 0 && !outbox_full(rm->ob) &&
                                    (!rm->link.connected || uplink_writable(&rm->link))))
                        break;
        }
        if (rm->failed)
                return;
        if (round == DRAIN_ROUNDS) {
                fail(rm, "drain: still moving after %u rounds", round);
                return;
        }
        if (rm->pipe.n > 0)
                fail(rm, "drain: the bridge stopped reading the device with %u packets waiting (outbox_full %d, "
                     "uplink writable %d)", rm->pipe.n, outbox_full(rm->ob), uplink_writable(&rm->link));
        else if (!outbox_idle(rm->ob))
                fail(rm, "drain: the outbox is not idle (%llu spooled)", (unsigned long long) outbox_spooled(rm->ob));
}

static void check(struct rm *rm)
{
        unsigned last_rank = 0, last_id = 0;

        for (uint32_t i = 0; i < rm->n_msgs && !rm->failed; i++) {
                const struct msg *m = &rm->msgs[i];
                if (m->dstate == D_SENT || m->dstate == D_RECD || m->dstate == D_RELEASED)
                        fail(rm, "message %u (QoS %u pid %u) still in flight at the device after the drain", i, m->qos,
                             m->pid);
                else if (m->rejected)
                        continue;
                else if (m->qos == 1 && m->promised && m->delivered == 0)
                        fail(rm, "QoS 1 message %u (pid %u) PUBACK'd to the device, never delivered", i, m->pid);
                else if (m->qos == 2 && m->promised && !m->excused && m->delivered != 1)
                        fail(rm, "QoS 2 message %u (pid %u) PUBREC'd to the device, delivered %u times", i, m->pid,
                             m->delivered);
        }
        /* Order: QoS 1 messages reach the broker first in the order the
         * device sent them (QoS 2 is delivered at PUBREL, QoS 0 may pass). */
        for (unsigned r = 1; r <= rm->rank && !rm->failed; r++)
                for (uint32_t i = 0; i < rm->n_msgs; i++)
                        if (rm->msgs[i].qos == 1 && rm->msgs[i].delivery_rank == r && !rm->msgs[i].rejected) {
                                if (r > 1 && i < last_id)
                                        fail(rm, "QoS 1 message %u delivered before message %u", last_id, i);
                                last_rank = r;
                                last_id = i;
                        }
        (void) last_rank;
}

/* Bytes of the spool files in the directory (the byte gauge counts them). */
static uint64_t spool_dir_bytes(struct rm *rm)
{
        DIR *d = opendir(rm->dir);
        struct dirent *de;
        uint64_t sum = 0;

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                char path[512];
                struct stat st;
                size_t n = strlen(de->d_name);
                if (n < 6 || strcmp(de->d_name + n - 6, ".spool") != 0)
                        continue;
                snprintf(path, sizeof path, "%s/%s", rm->dir, de->d_name);
                if (stat(path, &st) == 0)
                        sum += (uint64_t) st.st_size;
        }
        closedir(d);
        return sum;
}

/* The outbox moves a message the broker ended OB_STUCK_LINKS (5) links in a row over,
 * with nothing acknowledged, to <spool>.rejected (never replayed). The
 * model's links die at random, not over a message, so this may catch an
 * innocent one: it is reported and excused, not counted as lost. */
static void read_rejected(struct rm *rm, bool remove)
{
        char *path = spool_path(rm->dir, KEY), *side = NULL;
        struct spool *s = NULL;
        struct spool_msg *m;

        if (!path || asprintf(&side, "%s.rejected", path) < 0)
                side = NULL;
        free(path);
        if (!side || access(side, F_OK) != 0 || spool_open_path(side, 0, &s) < 0) {
                free(side);
                return;
        }
        while (spool_read_next(s, &m) == 1) {
                uint32_t id = m->payload_len >= 4 ? (uint32_t) m->payload[0] << 24 | (uint32_t) m->payload[1] << 16 |
                                                            (uint32_t) m->payload[2] << 8 | m->payload[3]
                                                  : UINT32_MAX;
                if (id < rm->n_msgs && !rm->msgs[id].rejected) {
                        rm->msgs[id].rejected = true;
                        rm->n_rejected++;
                        trace(rm, "  message %u was moved to %s", id, side);
                }
                free(m);
        }
        spool_close(s);
        if (remove)
                (void) unlink(side);
        free(side);
}

static int spool_dir_clean(struct rm *rm, bool must_be_empty)
{
        DIR *d = opendir(rm->dir);
        struct dirent *de;
        int left = 0;
        char name[256] = "";

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                char path[512];
                snprintf(path, sizeof path, "%s/%s", rm->dir, de->d_name);
                if (!left)
                        snprintf(name, sizeof name, "%s", de->d_name);
                (void) unlink(path);
                left++;
        }
        closedir(d);
        (void) rmdir(rm->dir);
        if (must_be_empty && left)
                fail(rm, "spool file %s left behind after everything was delivered", name);
        return left;
}

int relay_run(const uint8_t *script, size_t len, const char *tmpdir, int trace_on, char *why, size_t why_len)
{
        struct rm *rm = calloc(1, sizeof *rm);
        int ret;

        if (!rm) {
                snprintf(why, why_len, "out of memory");
                return -1;
        }
        rm->why = why;
        rm->why_len = why_len;
        rm->trace = trace_on;
        rm->in_publish = -1;
        why[0] = 0;
        if (!tmpdir)
                tmpdir = getenv("TMPDIR");
        if (!tmpdir)
                tmpdir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(rm->dir, sizeof rm->dir, "%s/relay-model.XXXXXX", tmpdir);
        if (!mkdtemp(rm->dir)) {
                snprintf(why, why_len, "mkdtemp %s: %s", rm->dir, strerror(errno));
                free(rm);
                return -1;
        }
        uint8_t c[4] = { 0 };
        memcpy(c, script, len < 4 ? len : 4);
        static const uint64_t spool_max[] = { 0, 1500, 4000, 0 };
        rm->clean = c[0] & 1;
        rm->max_inflight = 1 + ((c[0] >> 1) & 7);
        rm->spool_max = spool_max[(c[0] >> 4) & 3];
        rm->pid_range = 2 + c[1] % 15;
        rm->high_water = (size_t) 64 << ((c[1] >> 4) & 3);
        rm->max_qos0 = (size_t) c[2] * 2;
        for (unsigned i = 0; i <= MAX_PIDS; i++)
                rm->dev_pid[i] = -1;
        trace(rm, "config: %s session, max_inflight %u, spool max %llu, pids 1..%u, high water %zu, qos0 %zu",
              rm->clean ? "clean" : "persistent", rm->max_inflight, (unsigned long long) rm->spool_max,
              rm->pid_range, rm->high_water, rm->max_qos0);

        conn_open(rm, c[3] & 1, 0);
        for (size_t off = 4; off + 1 < len && !rm->failed; off += 2) {
                rm->event++;
                step(rm, script[off], script[off + 1]);
                if (rm->trace)
                        trace(rm, "  (spool gauges: %llu bytes, %llu messages; on disk %llu bytes)",
                              (unsigned long long) rm->gauge_bytes, (unsigned long long) rm->gauge_msgs,
                              (unsigned long long) spool_dir_bytes(rm));
        }
        rm->event++;
        trace(rm, "drain");
        drain(rm);
        read_rejected(rm, true);
        check(rm);
        conn_close(rm, "end");
        if (rm->link.misuse)
                fail(rm, "uplink_commit over what uplink_reserve gave");
        if (!rm->failed && (rm->gauge_bytes || rm->gauge_msgs))
                fail(rm, "spool gauges not back to zero: %llu bytes, %llu messages",
                     (unsigned long long) rm->gauge_bytes, (unsigned long long) rm->gauge_msgs);
        (void) spool_dir_clean(rm, !rm->failed);
        fake_uplink_done(&rm->link);
        ret = rm->failed ? -1 : 0;
        free(rm);
        return ret;
}
