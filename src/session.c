/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <mosquitto.h>
#include <openssl/crypto.h>

#include "bridge.h"
#include "list.h"
#include "log.h"
#include "mqtt_codec.h"
#include "outbox.h"
#include "policy.h"
#include "replayer.h"
#include "session.h"
#include "spool.h"
#include "tls_conn.h"
#include "upstream.h"

#define READ_CHUNK 4096
#define FLUSH_TIMEOUT_USEC (5 * 1000 * 1000ULL)

enum session_state {
        S_HANDSHAKE,            /* TLS handshake running */
        S_WAIT_CONNECT,         /* TLS up, waiting for CONNECT */
        S_UPSTREAM_CONNECTING,  /* CONNECT received, waiting for the broker's CONNACK */
        S_ACTIVE,               /* CONNACK 0 sent */
        S_FLUSHING,             /* last packets (a refusing CONNACK) going out, then close */
        S_CLOSED,               /* on the reap list */
};

/* A PUBLISH to the device (QoS 1/2) waiting for PUBACK / PUBREC / PUBCOMP. */
struct down_inflight {
        uint16_t pid;
        uint8_t qos;
        bool released;          /* QoS 2: PUBREC received, PUBREL sent */
        struct down_queued *copy; /* to send again after a reconnect (§4.4) */
};

/* A message for the device: waiting for an in-flight slot, or the copy of
 * one in flight, or held for a persistent session while it is away. */
struct down_queued {
        struct down_queued *next;
        uint8_t qos;
        bool retain;
        uint16_t pid;           /* held in-flight messages: the original id */
        bool released;          /* held QoS 2 past PUBREC: resend PUBREL */
        size_t topic_len;
        size_t payload_len;
        uint8_t data[];         /* topic, then payload */
};

/* What the bridge holds for a device with a persistent session (clean
 * session 0) that went away: the broker considers these delivered (the
 * bridge acknowledged them upstream), so only the bridge can send them
 * again when the device returns (§4.4 [MQTT-4.4.0-1]). In memory, bounded
 * by max_queued_bytes per device. */
struct held {
        struct held *next;
        char *client_id;        /* upstream client id */
        struct down_queued *inflight; /* sent, not acknowledged: resent with DUP */
        struct down_queued *queued;   /* not sent yet */
        size_t bytes;
};

/* A device SUBSCRIBE answered once every upstream SUBSCRIBE is. */
struct pending_sub {
        struct pending_sub *next;
        uint16_t pid;
        int mids[3];            /* upstream SUBSCRIBE per requested QoS, -1 if none */
        unsigned waiting;
        size_t count;
        uint8_t *codes;         /* per entry: granted QoS or 0x80 */
        int8_t *group;          /* per entry: requested QoS, -1 if refused here */
};

/* A subscription, kept to send again after the upstream connection
 * returns (clean session, or made while it was away). */
struct sub_rec {
        char *filter;
        uint8_t qos;
        bool sent;
};

struct pending_unsub {
        struct pending_unsub *next;
        uint16_t pid;
        int mid;
};

struct session {
        struct bridge *b;
        LIST_FIELDS(struct session, sessions);
        struct session *reap_next;
        enum session_state state;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;   /* handshake / CONNECT / keepalive / flush deadline */
        sd_event_source *resume;  /* deferred input processing */
        uint32_t events;
        struct tls_conn tls;

        char peer[INET6_ADDRSTRLEN + 8];
        char cn[256];
        char *client_id;          /* as the device sent it */
        char *mountpoint;         /* expanded, or NULL */
        uint16_t keepalive;
        uint64_t last_packet;     /* CLOCK_MONOTONIC usec of the last whole packet */
        uint8_t protocol_level;
        bool counted_device;      /* in b->n_devices */
        bool clean_session;
        bool clean_disconnect;    /* DISCONNECT received: no will */
        bool input_paused;        /* in-flight limit reached */
        bool paused_backlog;      /* output over max_queued_bytes: not reading */

        uint8_t *in;
        size_t in_len, in_cap;
        uint8_t *out;
        size_t out_len, out_off, out_cap;

        struct upstream *up;
        bool up_connected;        /* CONNACK 0 from the broker on the current client */
        struct upstream_params up_params; /* to connect again; strings owned */
        char *up_client_id, *up_user, *up_pass, *will_topic;
        uint8_t *will_payload;
        sd_event_source *reconnect;
        unsigned backoff_sec;
        struct outbox *outbox;    /* device → upstream, with the spool */
        char *spool_path;
        struct sub_rec *srec;     /* the device's subscriptions, upstream form */
        unsigned n_srec;
        char **unsent_unsubs;     /* UNSUBSCRIBEs made while upstream was away */
        unsigned n_unsent_unsubs;
        uint16_t *rec;            /* QoS 2 ids PUBREC'd to the device, awaiting PUBREL */
        unsigned n_rec, cap_rec;
        struct down_inflight *downf;
        unsigned n_downf;
        uint16_t next_pid;
        struct down_queued *q_head, *q_tail;
        size_t q_bytes;
        struct pending_sub *subs;
        struct pending_unsub *unsubs;
};

static void session_close(struct session *s, enum log_level level, const char *reason);
static void session_update_events(struct session *s);
static void session_process_input(struct session *s);
static void session_flush(struct session *s);
static void session_drain_queue(struct session *s);

static const struct config *cfg_of(const struct session *s)
{
        return &s->b->cfg;
}

static struct log_fields session_fields(const struct session *s, const char *reason)
{
        return (struct log_fields){
                .peer = s->peer,
                .cn = s->cn[0] ? s->cn : NULL,
                .client_id = s->client_id,
                .reason = reason,
        };
}

static uint64_t now_usec(const struct session *s)
{
        uint64_t t = 0;
        sd_event_now(s->b->event, CLOCK_MONOTONIC, &t);
        return t;
}

static void session_set_deadline(struct session *s, uint64_t usec_from_now)
{
        if (usec_from_now == 0) {
                sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(s->timer, now_usec(s) + usec_from_now);
        sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
}

/* §3.1.2.10: the server disconnects a client that sends nothing for one
 * and a half times its keepalive. Armed once; each packet only records
 * its time (session_on_timer moves the deadline on), so the hot path does
 * not reschedule a timer per packet. */
static void session_arm_keepalive(struct session *s)
{
        s->last_packet = now_usec(s);
        if (s->keepalive == 0)
                session_set_deadline(s, 0);
        else
                session_set_deadline(s, (uint64_t) s->keepalive * 1500000ULL);
}

/* ---- output ---- */

/* Reserve n bytes at the end of the output buffer. NULL if over the limit
 * (max_queued_bytes, counted on top of one packet so a single large
 * message still fits) or out of memory. */
static uint8_t *session_out_reserve(struct session *s, size_t n, bool limited)
{
        size_t used = s->out_len - s->out_off;

        if (limited && used > 0 && used + n > cfg_of(s)->limits.max_queued_bytes)
                return NULL;
        if (s->out_off > 0 && s->out_len + n > s->out_cap) {
                memmove(s->out, s->out + s->out_off, used);
                s->out_len = used;
                s->out_off = 0;
        }
        if (s->out_len + n > s->out_cap) {
                size_t cap = s->out_cap ? s->out_cap : 256;
                while (cap < s->out_len + n)
                        cap *= 2;
                uint8_t *p = realloc(s->out, cap);
                if (!p)
                        return NULL;
                s->out = p;
                s->out_cap = cap;
        }
        uint8_t *p = s->out + s->out_len;
        s->out_len += n;
        return p;
}

static void session_send_ack(struct session *s, enum mqtt_type type, uint16_t pid)
{
        uint8_t *p = session_out_reserve(s, 4, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_ack(p, 4, type, pid);
}

static void session_send_empty(struct session *s, enum mqtt_type type)
{
        uint8_t *p = session_out_reserve(s, 2, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_empty(p, 2, type);
}

static void session_send_connack(struct session *s, bool session_present, uint8_t rc)
{
        if (rc > 0 && rc < BRIDGE_CONNACK_CODES)
                s->b->stats.refused_connack[rc]++;
        uint8_t *p = session_out_reserve(s, 4, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_connack(p, 4, session_present, rc);
}

/* A device that does not read its answers must not make them pile up:
 * over max_queued_bytes of output, stop taking its input. */
static bool session_out_full(const struct session *s)
{
        return s->out_len - s->out_off > cfg_of(s)->limits.max_queued_bytes;
}

/* SUBACK: one return code per filter, in the order requested (§3.9.3). */
static void session_send_suback(struct session *s, uint16_t pid, const uint8_t *codes, size_t n)
{
        size_t rem = 2 + n;
        size_t len = 1 + (rem < 128 ? 1 : rem < 16384 ? 2 : rem < 2097152 ? 3 : 4) + rem;
        uint8_t *buf = session_out_reserve(s, len, false);

        if (!buf) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_suback(buf, len, pid, codes, n);
}

static void pending_sub_free(struct pending_sub *ps)
{
        if (!ps)
                return;
        free(ps->codes);
        free(ps->group);
        free(ps);
}

/* Write what is queued, as far as the socket takes it. Returns 0, or a
 * negative errno with why set. Never closes the session. */
static int session_write_out(struct session *s, char *why, size_t whylen)
{
        while (s->out_off < s->out_len) {
                ssize_t n = tls_conn_write(&s->tls, s->out + s->out_off, s->out_len - s->out_off, why, whylen);
                if (n == -EAGAIN)
                        return 0;
                if (n < 0)
                        return (int) n;
                s->out_off += (size_t) n;
                s->b->stats.bytes_to_devices += (uint64_t) n;
        }
        /* Idle devices are most of them: keep no big buffer around. */
        s->out_off = s->out_len = 0;
        if (s->out_cap > 4096) {
                free(s->out);
                s->out = NULL;
                s->out_cap = 0;
        }
        return 0;
}

/* Write what is queued; close on a write error, or when a refusal
 * (S_FLUSHING) has gone out completely. */
static void session_flush(struct session *s)
{
        char why[256] = "";

        if (s->state == S_CLOSED || s->state == S_HANDSHAKE)
                return;
        if (session_write_out(s, why, sizeof why) < 0) {
                session_close(s, LOG_LEVEL_INFO, why[0] ? why : "write failed");
                return;
        }
        if (s->out_len == 0 && s->state == S_FLUSHING) {
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }
        if (s->paused_backlog && !session_out_full(s)) {
                s->paused_backlog = false;
                sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
        }
        /* Messages that waited for room in the output go now (the last
         * device ack may have come while it was full). */
        if (s->q_head && s->state == S_ACTIVE && !session_out_full(s))
                session_drain_queue(s);
}

/* ---- upstream → device ---- */

static bool session_pid_in_use(const struct session *s, uint16_t pid)
{
        for (unsigned i = 0; i < s->n_downf; i++)
                if (s->downf[i].pid == pid)
                        return true;
        return false;
}

static uint16_t session_next_pid(struct session *s)
{
        /* §2.3.1: non-zero, and not one still in flight. */
        do {
                s->next_pid++;
                if (s->next_pid == 0)
                        s->next_pid = 1;
        } while (session_pid_in_use(s, s->next_pid));
        return s->next_pid;
}

/* Encode one PUBLISH to the device. Returns 0, or -ENOBUFS when the
 * output queue is full. */
static struct down_queued *dq_new(const uint8_t *topic, size_t topic_len, const void *payload,
                                  size_t payload_len, uint8_t qos, bool retain)
{
        struct down_queued *q = malloc(sizeof *q + topic_len + payload_len);
        if (!q)
                return NULL;
        *q = (struct down_queued){ .qos = qos, .retain = retain, .topic_len = topic_len, .payload_len = payload_len };
        memcpy(q->data, topic, topic_len);
        if (payload_len)
                memcpy(q->data + topic_len, payload, payload_len);
        return q;
}

/* Encode one PUBLISH to the device. For QoS 1/2 a copy is kept until the
 * device acknowledges it: keep (taken over on success) or a new one.
 * pid 0 picks a fresh id; dup marks a resend. Returns 0, or -ENOBUFS when
 * the output queue is full, -EMSGSIZE, -ENOMEM. */
static int session_send_publish(struct session *s, const uint8_t *topic, size_t topic_len,
                                const void *payload, size_t payload_len, uint8_t qos, bool retain,
                                struct down_queued *keep, uint16_t pid, bool dup)
{
        struct mqtt_publish p = {
                .dup = dup,
                .qos = qos,
                .retain = retain,
                .topic = { topic, (uint16_t) topic_len },
                .payload = payload,
                .payload_len = payload_len,
        };
        struct down_queued *copy = keep;
        size_t len;
        uint8_t *buf;

        if (topic_len == 0 || topic_len > 65535)
                return -EINVAL;
        if (qos > 0) {
                struct down_inflight *d = realloc(s->downf, (s->n_downf + 1) * sizeof *d);
                if (!d)
                        return -ENOMEM;
                s->downf = d;
                p.packet_id = pid ? pid : session_next_pid(s);
        }
        len = mqtt_publish_len(&p);
        if (len == 0 || (cfg_of(s)->limits.max_packet_size && len > cfg_of(s)->limits.max_packet_size))
                return -EMSGSIZE;
        if (qos > 0 && !copy && !(copy = dq_new(topic, topic_len, payload, payload_len, qos, retain)))
                return -ENOMEM;
        buf = session_out_reserve(s, len, true);
        if (!buf) {
                if (copy != keep)
                        free(copy);
                return -ENOBUFS;
        }
        mqtt_encode_publish(buf, len, &p);
        if (qos > 0)
                s->downf[s->n_downf++] = (struct down_inflight){ .pid = p.packet_id, .qos = qos, .copy = copy };
        s->b->stats.msgs_to_devices[qos]++;
        s->b->stats.payload_bytes_to_devices[qos] += payload_len;
        return 0;
}

/* Move queued messages into free in-flight slots. */
static void session_drain_queue(struct session *s)
{
        while (s->q_head && s->n_downf < cfg_of(s)->limits.max_inflight_messages) {
                struct down_queued *q = s->q_head;
                int r = session_send_publish(s, q->data, q->topic_len, q->data + q->topic_len,
                                             q->payload_len, q->qos, q->retain, q, 0, false);
                if (r == -ENOBUFS)
                        break;
                s->q_head = q->next;
                if (!s->q_head)
                        s->q_tail = NULL;
                s->q_bytes -= q->topic_len + q->payload_len;
                q->next = NULL;
                if (r < 0 || q->qos == 0)
                        free(q); /* else it is the in-flight copy now */
        }
}

/* Queue a QoS 1/2 message for the device behind the in-flight limit.
 * Returns 0, or -ENOBUFS over max_queued_bytes, -ENOMEM. */
static int session_enqueue(struct session *s, const uint8_t *topic, size_t topic_len, const void *payload,
                           size_t payload_len, uint8_t qos, bool retain)
{
        struct down_queued *q;

        if (s->q_bytes + topic_len + payload_len > cfg_of(s)->limits.max_queued_bytes)
                return -ENOBUFS;
        q = dq_new(topic, topic_len, payload, payload_len, qos, retain);
        if (!q)
                return -ENOMEM;
        if (s->q_tail)
                s->q_tail->next = q;
        else
                s->q_head = q;
        s->q_tail = q;
        s->q_bytes += topic_len + payload_len;
        return 0;
}

static void up_on_message(void *ud, const struct mosquitto_message *msg)
{
        struct session *s = ud;
        const struct config_limits *lim = &cfg_of(s)->limits;
        size_t off = 0;
        int r;

        if (s->state != S_ACTIVE && !(s->state == S_CLOSED && !s->clean_session)) {
                s->b->stats.msgs_dropped++;
                return;
        }
        if (policy_topic_from_upstream(s->mountpoint, msg->topic, &off) < 0)
                return; /* not under this device's mountpoint */

        const uint8_t *topic = (const uint8_t *) msg->topic + off;
        size_t topic_len = strlen(msg->topic) - off;
        size_t payload_len = (size_t) msg->payloadlen;
        uint8_t qos = (uint8_t) (msg->qos > 2 ? 2 : msg->qos);

        if (s->state == S_CLOSED) {
                /* libmosquitto has acknowledged it upstream already; the
                 * device's persistent session gets it when it returns.
                 * (QoS 0 is not kept for an absent session, §4.3.1.) */
                if (qos == 0 || session_enqueue(s, topic, topic_len, msg->payload, payload_len, qos,
                                                msg->retain) < 0)
                        s->b->stats.msgs_dropped++;
                return;
        } else if (qos > 0 && (s->n_downf >= lim->max_inflight_messages || s->q_head)) {
                /* Keep order: once anything waits, everything waits. */
                r = session_enqueue(s, topic, topic_len, msg->payload, payload_len, qos, msg->retain);
        } else {
                r = session_send_publish(s, topic, topic_len, msg->payload, payload_len, qos, msg->retain,
                                         NULL, 0, false);
                if (r == -ENOBUFS && qos > 0)
                        r = session_enqueue(s, topic, topic_len, msg->payload, payload_len, qos, msg->retain);
        }
        if (r < 0) {
                struct log_fields f = session_fields(s, r == -EMSGSIZE ? "message over max_packet_size" :
                                                        "queue full (max_queued_bytes)");
                s->b->stats.msgs_dropped++;
                log_msg(LOG_LEVEL_WARNING, &f, "dropped a QoS %u message on %s for the device", qos, msg->topic);
                return;
        }
        if (s->state == S_CLOSED)
                return;
        session_flush(s);
        session_update_events(s);
}

/* ---- persistent sessions: messages held while the device is away ---- */

static void held_free(struct held *h)
{
        if (!h)
                return;
        for (struct down_queued *l = h->inflight, *n; l; l = n) {
                n = l->next;
                free(l);
        }
        for (struct down_queued *l = h->queued, *n; l; l = n) {
                n = l->next;
                free(l);
        }
        free(h->client_id);
        free(h);
}

static struct held *held_take(struct bridge *b, const char *client_id)
{
        for (struct held **pp = &b->held, *h; (h = *pp); pp = &h->next)
                if (strcmp(h->client_id, client_id) == 0) {
                        *pp = h->next;
                        b->n_held--;
                        return h;
                }
        return NULL;
}

void session_held_free_all(struct bridge *b)
{
        while (b->held) {
                struct held *h = b->held;
                b->held = h->next;
                held_free(h);
        }
        b->n_held = 0;
}

/* The device goes away with a persistent session: keep what it has not
 * acknowledged, and what waited for it, for its return. */
static void session_hold(struct session *s)
{
        struct held *h, **tail;
        struct down_queued **it;

        if (s->clean_session || !s->up_client_id || s->b->stopping || (!s->n_downf && !s->q_head))
                return;
        h = calloc(1, sizeof *h);
        if (!h || !(h->client_id = strdup(s->up_client_id))) {
                free(h);
                return;
        }
        it = &h->inflight;
        for (unsigned i = 0; i < s->n_downf; i++) {
                struct down_queued *c = s->downf[i].copy;
                if (!c)
                        continue;
                c->pid = s->downf[i].pid;
                c->released = s->downf[i].released;
                c->next = NULL;
                *it = c;
                it = &c->next;
                s->downf[i].copy = NULL;
                h->bytes += c->topic_len + c->payload_len;
        }
        s->n_downf = 0;
        h->queued = s->q_head;
        h->bytes += s->q_bytes;
        s->q_head = s->q_tail = NULL;
        s->q_bytes = 0;

        /* Held already for this id (a takeover held the old connection's,
         * and more arrived before it was reaped): the older ones first. */
        struct held *old = held_take(s->b, h->client_id);
        if (old) {
                struct down_queued **t = &old->inflight;
                while (*t)
                        t = &(*t)->next;
                *t = h->inflight;
                t = &old->queued;
                while (*t)
                        t = &(*t)->next;
                *t = h->queued;
                old->bytes += h->bytes;
                h->inflight = h->queued = NULL;
                held_free(h);
                h = old;
        }
        /* Bounded: no more held sessions than connections allowed; the
         * oldest gives way. */
        unsigned max_held = s->b->cfg.limits.max_connections ? s->b->cfg.limits.max_connections : 65536;
        if (s->b->n_held >= max_held) {
                for (tail = &s->b->held; (*tail)->next; tail = &(*tail)->next)
                        ;
                struct log_fields f = { .client_id = (*tail)->client_id, .reason = "too many held sessions" };
                log_msg(LOG_LEVEL_WARNING, &f, "dropped the messages held for an absent device");
                held_free(*tail);
                *tail = NULL;
                s->b->n_held--;
        }
        h->next = s->b->held;
        s->b->held = h;
        s->b->n_held++;
}

/* §4.4 [MQTT-4.4.0-1]: on reconnect with clean session 0, send again what
 * the device had not acknowledged, with its original packet id and DUP;
 * PUBREL for QoS 2 messages past PUBREC. A clean session discards it. */
static void session_redeliver(struct session *s)
{
        struct held *h = held_take(s->b, s->up_client_id);
        unsigned n = 0;

        if (!h)
                return;
        if (s->clean_session) {
                held_free(h);
                return;
        }
        struct down_queued *retry = NULL, **retry_tail = &retry;
        while (h->inflight) {
                struct down_queued *c = h->inflight;
                h->inflight = c->next;
                c->next = NULL;
                if (c->released) {
                        struct down_inflight *d = realloc(s->downf, (s->n_downf + 1) * sizeof *d);
                        if (!d) {
                                free(c);
                                continue;
                        }
                        s->downf = d;
                        s->downf[s->n_downf++] = (struct down_inflight){ .pid = c->pid, .qos = 2,
                                                                         .released = true, .copy = c };
                        session_send_ack(s, MQTT_PUBREL, c->pid);
                } else if (session_send_publish(s, c->data, c->topic_len, c->data + c->topic_len, c->payload_len,
                                                c->qos, c->retain, c, c->pid, true) < 0) {
                        /* No room now: send it later like a new one, in
                         * order, ahead of what never went out. */
                        c->released = false;
                        *retry_tail = c;
                        retry_tail = &c->next;
                        continue;
                }
                n++;
        }
        /* Then what never went out, ahead of anything new. */
        if (retry) {
                *retry_tail = h->queued;
                h->queued = retry;
        }
        if (h->queued) {
                struct down_queued *last = h->queued;
                size_t bytes = 0;
                for (struct down_queued *q = h->queued; q; q = q->next) {
                        bytes += q->topic_len + q->payload_len;
                        last = q;
                        n++;
                }
                last->next = s->q_head;
                if (!s->q_head)
                        s->q_tail = last;
                s->q_head = h->queued;
                s->q_bytes += bytes;
                h->queued = NULL;
        }
        held_free(h);
        struct log_fields f = session_fields(s, NULL);
        log_msg(LOG_LEVEL_INFO, &f, "%u message%s held for the device sent again", n, n == 1 ? "" : "s");
        session_drain_queue(s);
}

/* ---- device → upstream acknowledgements ---- */

static void session_resume_input(struct session *s)
{
        if (s->input_paused && !outbox_full(s->outbox) && !upstream_backlogged(s->up)) {
                s->input_paused = false;
                sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
        }
}

/* outbox → device: the message is safe (upstream, or fsync'd in the spool). */
static void session_ack_device(void *ud, uint16_t pid, uint8_t qos)
{
        struct session *s = ud;

        if (s->state == S_CLOSED)
                return;
        if (qos == 1) {
                /* §4.3.2: PUBACK only now that the message is safe. */
                session_send_ack(s, MQTT_PUBACK, pid);
                return;
        }
        /* §4.3.3: PUBREC once the message is safe; remember the id until
         * PUBREL so that a resend is not published twice. */
        if (s->n_rec == s->cap_rec) {
                unsigned cap = s->cap_rec ? s->cap_rec * 2 : 4;
                uint16_t *r = realloc(s->rec, cap * sizeof *r);
                if (!r) {
                        session_close(s, LOG_LEVEL_ERR, "out of memory");
                        return;
                }
                s->rec = r;
                s->cap_rec = cap;
        }
        s->rec[s->n_rec++] = pid;
        session_send_ack(s, MQTT_PUBREC, pid);
}

static const struct outbox_ops session_outbox_ops = {
        .ack = session_ack_device,
};

static void up_on_publish(void *ud, int mid)
{
        struct session *s = ud;

        if (s->state == S_CLOSED)
                return;
        outbox_on_published(s->outbox, mid);
        session_flush(s);
        session_resume_input(s);
        session_update_events(s);
}

static void up_on_subscribe(void *ud, int mid, int n, const int *granted)
{
        struct session *s = ud;
        struct pending_sub **pp, *ps;

        if (s->state == S_CLOSED)
                return;
        for (pp = &s->subs; (ps = *pp); pp = &ps->next) {
                int g = -1;
                for (int i = 0; i < 3; i++)
                        if (ps->mids[i] == mid)
                                g = i;
                if (g < 0)
                        continue;
                /* The broker's codes come in the order we sent the filters
                 * of this group; 0x80 passes through (§3.9.3). */
                int k = 0;
                for (size_t e = 0; e < ps->count; e++) {
                        if (ps->group[e] != g)
                                continue;
                        ps->codes[e] = k < n ? (uint8_t) granted[k] : MQTT_SUBACK_FAILURE;
                        k++;
                }
                ps->mids[g] = -1;
                if (--ps->waiting > 0)
                        return;
                *pp = ps->next;
                session_send_suback(s, ps->pid, ps->codes, ps->count);
                pending_sub_free(ps);
                session_flush(s);
                session_update_events(s);
                return;
        }
}

static void up_on_unsubscribe(void *ud, int mid)
{
        struct session *s = ud;
        struct pending_unsub **pp, *pu;

        if (s->state == S_CLOSED)
                return;
        for (pp = &s->unsubs; (pu = *pp); pp = &pu->next) {
                if (pu->mid != mid)
                        continue;
                *pp = pu->next;
                session_send_ack(s, MQTT_UNSUBACK, pu->pid);
                free(pu);
                session_flush(s);
                session_update_events(s);
                return;
        }
}

static void session_schedule_reconnect(struct session *s)
{
        /* 1, 2, 4 ... 30 s: a broker restarting for an upgrade is back in
         * seconds; a broker that is down for long is not hammered. */
        unsigned delay = s->backoff_sec ? s->backoff_sec : 1;
        s->backoff_sec = delay * 2 > 30 ? 30 : delay * 2;
        sd_event_source_set_time(s->reconnect, now_usec(s) + (uint64_t) delay * 1000000ULL);
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_ONESHOT);
}

/* Send the subscriptions again after the upstream connection returned:
 * all of them when the broker kept no session, else the ones made while it
 * was away. The device was answered already (SUBACK with its requested
 * QoS); a refusal now can only be logged. */
static void session_resubscribe(struct session *s, bool session_present)
{
        for (unsigned i = 0; i < s->n_srec; i++) {
                struct sub_rec *r = &s->srec[i];
                int mid;
                if (r->sent && session_present)
                        continue;
                if (upstream_subscribe(s->up, &mid, 1, &r->filter, r->qos) == 0)
                        r->sent = true;
        }
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++) {
                int mid;
                (void) upstream_unsubscribe(s->up, &mid, 1, &s->unsent_unsubs[i]);
                free(s->unsent_unsubs[i]);
        }
        s->n_unsent_unsubs = 0;
}

/* Accept the device although the broker is away (store and forward). */
static void session_accept_offline(struct session *s, const char *why)
{
        struct log_fields f = session_fields(s, why);

        s->state = S_ACTIVE;
        s->counted_device = true;
        s->b->n_devices++;
        log_msg(LOG_LEVEL_WARNING, &f, "upstream broker unreachable: device accepted, QoS 1/2 messages spooled");
        session_send_connack(s, false, MQTT_CONNACK_ACCEPTED);
        bridge_notify_status(s->b);
        session_redeliver(s);
        session_schedule_reconnect(s);
        session_flush(s);
        /* Packets behind CONNECT: from the resume source, never from here
         * (this may run inside session_process_input). */
        sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
        session_update_events(s);
}

static void up_on_connect(void *ud, int rc, bool session_present)
{
        struct session *s = ud;
        struct log_fields f;

        if (s->state == S_ACTIVE && !s->up_connected) {
                /* The upstream connection came back. */
                if (rc != 0) {
                        char why[64];
                        snprintf(why, sizeof why, "upstream refused on reconnect: CONNACK %d", rc);
                        session_close(s, LOG_LEVEL_WARNING, why);
                        return;
                }
                s->up_connected = true;
                s->backoff_sec = 0;
                f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_NOTICE, &f, "upstream connection restored, %llu spooled message%s to send",
                        (unsigned long long) outbox_spooled(s->outbox),
                        outbox_spooled(s->outbox) == 1 ? "" : "s");
                session_resubscribe(s, session_present);
                outbox_set_upstream(s->outbox, s->up, true);
                session_flush(s);
                session_resume_input(s);
                session_update_events(s);
                return;
        }
        if (s->state != S_UPSTREAM_CONNECTING)
                return;
        if (rc != 0) {
                /* §3.2.2.3: pass the broker's refusal on, then close. */
                char why[64];
                snprintf(why, sizeof why, "upstream refused: CONNACK %d", rc);
                f = session_fields(s, why);
                log_msg(LOG_LEVEL_NOTICE, &f, "device refused by the upstream broker");
                session_send_connack(s, false, (uint8_t) (rc > 5 ? MQTT_CONNACK_SERVER_UNAVAILABLE : rc));
                s->state = S_FLUSHING;
                session_set_deadline(s, FLUSH_TIMEOUT_USEC);
                session_flush(s);
                session_update_events(s);
                return;
        }
        s->state = S_ACTIVE;
        s->up_connected = true;
        s->counted_device = true;
        s->b->n_devices++;
        session_send_connack(s, session_present, MQTT_CONNACK_ACCEPTED);
        f = session_fields(s, NULL);
        log_msg(LOG_LEVEL_INFO, &f, "device connected (MQTT %s, keepalive %us, clean session %s, session present %s)",
                s->protocol_level == MQTT_PROTOCOL_LEVEL_31 ? "3.1" : "3.1.1", s->keepalive,
                s->clean_session ? "yes" : "no", session_present ? "yes" : "no");
        bridge_notify_status(s->b);
        outbox_set_upstream(s->outbox, s->up, true);
        session_redeliver(s);
        session_flush(s);
        /* Packets the device sent right behind CONNECT waited for this
         * (some perhaps still inside OpenSSL): the resume source reads
         * and handles them. */
        sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
        session_update_events(s);
}

/* Answer what waited for the broker: SUBACK with the requested QoS, the
 * subscriptions go upstream when it is back. */
static void session_answer_pending(struct session *s)
{
        while (s->subs) {
                struct pending_sub *ps = s->subs;
                s->subs = ps->next;
                for (size_t e = 0; e < ps->count; e++)
                        if (ps->group[e] >= 0)
                                ps->codes[e] = (uint8_t) ps->group[e];
                session_send_suback(s, ps->pid, ps->codes, ps->count);
                pending_sub_free(ps);
        }
        while (s->unsubs) {
                struct pending_unsub *pu = s->unsubs;
                s->unsubs = pu->next;
                session_send_ack(s, MQTT_UNSUBACK, pu->pid);
                free(pu);
        }
        for (unsigned i = 0; i < s->n_srec; i++)
                s->srec[i].sent = false;
}

static void up_on_lost(void *ud, const char *why)
{
        struct session *s = ud;
        struct log_fields f = session_fields(s, why);
        int r;

        if (s->state == S_UPSTREAM_CONNECTING) {
                if (cfg_of(s)->spool.directory) {
                        session_accept_offline(s, why);
                        return;
                }
                /* §3.2.2.3 return code 3: the device retries later. */
                log_msg(LOG_LEVEL_WARNING, &f, "upstream broker unreachable, device refused with CONNACK 3");
                session_send_connack(s, false, MQTT_CONNACK_SERVER_UNAVAILABLE);
                s->state = S_FLUSHING;
                session_set_deadline(s, FLUSH_TIMEOUT_USEC);
                session_flush(s);
                session_update_events(s);
                return;
        }
        if (s->state != S_ACTIVE)
                return;
        if (!cfg_of(s)->spool.directory) {
                /* No store and forward: close; the device keeps its
                 * unacknowledged messages and sends them again. */
                session_close(s, LOG_LEVEL_WARNING, why);
                return;
        }
        if (!s->up_connected) {
                /* A reconnection attempt failed: try again later. */
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream still unreachable");
                session_schedule_reconnect(s);
                return;
        }
        /* The client object is freed by the reconnect timer, outside
         * libmosquitto's call chain. */
        s->up_connected = false;
        outbox_set_upstream(s->outbox, NULL, false);
        r = outbox_upstream_lost(s->outbox);
        if (r == 0)
                r = outbox_commit(s->outbox);
        if (r < 0) {
                /* Without a spool the device must keep its unacknowledged
                 * messages: close it, it sends them again. */
                session_close(s, LOG_LEVEL_WARNING, why);
                return;
        }
        log_msg(LOG_LEVEL_WARNING, &f, "upstream connection lost, device stays connected, %llu message%s spooled",
                (unsigned long long) outbox_spooled(s->outbox), outbox_spooled(s->outbox) == 1 ? "" : "s");
        session_answer_pending(s);
        session_schedule_reconnect(s);
        session_flush(s);
        /* Nothing is in flight any more: what waited behind the in-flight
         * limit goes to the spool now. */
        session_resume_input(s);
        session_update_events(s);
}

static void up_on_drained(void *ud)
{
        struct session *s = ud;

        if (s->state == S_ACTIVE)
                session_resume_input(s);
}

static const struct upstream_callbacks session_upstream_callbacks = {
        .on_drained = up_on_drained,
        .on_connect = up_on_connect,
        .on_lost = up_on_lost,
        .on_publish = up_on_publish,
        .on_message = up_on_message,
        .on_subscribe = up_on_subscribe,
        .on_unsubscribe = up_on_unsubscribe,
};

/* ---- device packets ---- */

static char *str_dup(const struct mqtt_str *m)
{
        char *s = malloc((size_t) m->len + 1);
        if (!s)
                return NULL;
        if (m->len)
                memcpy(s, m->data, m->len);
        s[m->len] = 0;
        return s;
}

/* Refuse a CONNECT with a return code (§3.2.2.3), then close. */
static void session_refuse(struct session *s, uint8_t rc, const char *why)
{
        struct log_fields f = session_fields(s, why);
        log_msg(LOG_LEVEL_NOTICE, &f, "device refused with CONNACK %u", rc);
        session_send_connack(s, false, rc);
        s->state = S_FLUSHING;
        session_set_deadline(s, FLUSH_TIMEOUT_USEC);
}

/* The device's outbox and spool. A live session with the same identity
 * (the device reconnected before its old connection timed out) gives up
 * its spool first: one file, one writer. */
static int session_open_outbox(struct session *s)
{
        const struct config *cfg = cfg_of(s);
        /* One spool per upstream client id: the identity the broker knows.
         * (A generated id for an empty client id is unique per connection;
         * what such a connection leaves behind is replayed.) */
        char *key = strdup(s->up_client_id);
        int r;

        if (!key)
                return -ENOMEM;
        /* §3.1.4 [MQTT-3.1.4-2]: a client connecting with the id of one
         * already connected takes over; the old connection is closed (its
         * will is published), and what it had not acknowledged is held for
         * the new one. */
        for (struct session *o = s->b->sessions, *next; o; o = next) {
                next = o->sessions_next;
                if (o == s || o->state == S_CLOSED || !o->up_client_id ||
                    strcmp(o->up_client_id, s->up_client_id) != 0)
                        continue;
                session_hold(o);
                session_close(o, LOG_LEVEL_NOTICE, "taken over by a new connection with the same client id [MQTT-3.1.4-2]");
        }
        if (cfg->spool.directory) {
                /* If a replayer is sending this device's spool, the device
                 * takes it over: one file, one writer. */
                s->spool_path = spool_path(cfg->spool.directory, key);
                if (!s->spool_path) {
                        free(key);
                        return -ENOMEM;
                }
                replayer_stop(s->b, s->spool_path);
        }
        struct outbox_params p = {
                .spool_dir = cfg->spool.directory,
                .key = key,
                .name = s->client_id[0] ? s->client_id : s->cn,
                .up_client_id = s->up_client_id,
                .up_username = s->up_user,
                .up_password = s->up_pass,
                .protocol_level = s->protocol_level,
                .spool_max_bytes = cfg->spool.max_bytes_per_device,
                .spool_total = &s->b->stats.spool_bytes,
                .spool_msgs = &s->b->stats.spool_messages,
                .spool_total_max = cfg->spool.max_bytes,
                .max_inflight = cfg->limits.max_inflight_messages,
                .max_qos0_bytes = cfg->limits.max_queued_bytes,
                .stat_spooled = &s->b->stats.msgs_spooled,
                .stat_replayed = &s->b->stats.msgs_replayed,
                .stat_dropped = &s->b->stats.msgs_dropped,
                .ops = &session_outbox_ops,
                .ud = s,
        };
        r = outbox_new(&p, &s->outbox);
        free(key);
        return r;
}

static int session_on_reconnect(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct session *s = userdata;
        const char *why = NULL;

        if (s->state != S_ACTIVE || s->up_connected)
                return 0;
        upstream_close(s->up, false);
        s->up = NULL;
        outbox_set_upstream(s->outbox, NULL, false);
        if (upstream_connect(s->b->upstreams, &s->up_params, &session_upstream_callbacks, s, &s->up, &why) < 0) {
                struct log_fields f = session_fields(s, why);
                log_msg(LOG_LEVEL_DEBUG, &f, "upstream still unreachable");
                s->up = NULL;
                session_schedule_reconnect(s);
                return 0;
        }
        outbox_set_upstream(s->outbox, s->up, false);
        return 0;
}

static void session_on_connect(struct session *s, const struct mqtt_connect *c)
{
        const struct config *cfg = cfg_of(s);
        char *up_id = NULL, *user = NULL, *pass = NULL, *will_topic = NULL;
        size_t pass_len = 0;
        const char *why = NULL;
        int r;

        s->client_id = str_dup(&c->client_id);
        s->protocol_level = c->protocol_level;
        s->keepalive = c->keepalive;
        s->clean_session = c->clean_session;
        if (!s->client_id) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        if (!s->cn[0]) {
                /* No client certificate (require_certificate = false): the
                 * client id stands in for the identity. */
                snprintf(s->cn, sizeof s->cn, "%s", s->client_id);
        }

        /* §3.1.3.1: a zero-byte client id needs clean session
         * [MQTT-3.1.3-8]; MQTT 3.1 requires 1..23 characters. */
        if (c->client_id.len == 0 && (!c->clean_session || c->protocol_level == MQTT_PROTOCOL_LEVEL_31)) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED, "empty client id without clean session");
                return;
        }
        if (c->protocol_level == MQTT_PROTOCOL_LEVEL_31 && c->client_id.len > 23) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED, "MQTT 3.1 client id longer than 23 characters");
                return;
        }
        if (!policy_client_id_allowed(&cfg->bridge, s->cn, c->client_id.data, c->client_id.len)) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED, "client id does not match the certificate CN");
                return;
        }
        /* MQTT 3.1.1 has no way to lower a client's keepalive, so one over
         * the limit (or 0, "never", under a configured limit) is refused. */
        if (cfg->limits.max_keepalive && (c->keepalive > cfg->limits.max_keepalive ||
                                          (c->keepalive == 0 && cfg->limits.max_keepalive < 65535))) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED, "keepalive over max_keepalive");
                return;
        }
        r = policy_mountpoint_expand(cfg->bridge.mountpoint, s->cn, s->client_id, &s->mountpoint, &why);
        if (r < 0) {
                session_refuse(s, MQTT_CONNACK_NOT_AUTHORIZED, why ? why : "mountpoint does not apply to this device");
                return;
        }
        if (c->will_flag) {
                r = policy_topic_to_upstream(s->mountpoint, c->will_topic.data, c->will_topic.len, &will_topic);
                if (r < 0) {
                        session_refuse(s, MQTT_CONNACK_NOT_AUTHORIZED, "will topic outside the mountpoint");
                        goto out;
                }
        }
        r = policy_client_id(&cfg->bridge, s->cn, c->client_id.data, c->client_id.len, s->b->nonce++, &up_id);
        if (r < 0) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED, "client id too long with the prefix");
                goto out;
        }
        r = policy_credentials(&cfg->bridge, s->cn,
                               c->has_username ? c->username.data : NULL, c->username.len,
                               c->has_password ? c->password.data : NULL, c->password.len,
                               &user, &pass, &pass_len);
        if (r < 0 || (pass && strlen(pass) != pass_len)) {
                /* libmosquitto takes the password as a C string. */
                session_refuse(s, MQTT_CONNACK_BAD_CREDENTIALS, "password cannot be passed upstream");
                goto out;
        }

        /* Keep what it takes to connect again after a loss. */
        s->up_client_id = up_id;
        s->up_user = user;
        s->up_pass = pass;
        s->will_topic = will_topic;
        up_id = user = pass = will_topic = NULL;
        if (c->will_flag && c->will_payload.len) {
                s->will_payload = malloc(c->will_payload.len);
                if (!s->will_payload) {
                        session_close(s, LOG_LEVEL_ERR, "out of memory");
                        goto out;
                }
                memcpy(s->will_payload, c->will_payload.data, c->will_payload.len);
        }
        s->up_params = (struct upstream_params){
                .client_id = s->up_client_id,
                .username = s->up_user,
                .password = s->up_pass,
                .clean_session = c->clean_session,
                .keepalive = c->keepalive,
                .protocol_level = c->protocol_level,
                .will_topic = s->will_topic,
                .will_payload = s->will_payload,
                .will_len = c->will_flag ? c->will_payload.len : 0,
                .will_qos = c->will_qos,
                .will_retain = c->will_retain,
        };

        r = session_open_outbox(s);
        if (r < 0) {
                session_refuse(s, MQTT_CONNACK_SERVER_UNAVAILABLE, "cannot open the spool");
                goto out;
        }
        session_arm_keepalive(s);
        r = upstream_connect(s->b->upstreams, &s->up_params, &session_upstream_callbacks, s, &s->up, &why);
        if (r < 0) {
                if (cfg->spool.directory) {
                        session_accept_offline(s, why);
                        goto out;
                }
                struct log_fields f = session_fields(s, why);
                log_msg(LOG_LEVEL_WARNING, &f, "cannot start the upstream connection");
                session_refuse(s, MQTT_CONNACK_SERVER_UNAVAILABLE, why);
                goto out;
        }
        s->state = S_UPSTREAM_CONNECTING;
        outbox_set_upstream(s->outbox, s->up, false);
        {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "CONNECT received, connecting upstream as \"%s\"", s->up_client_id);
        }
out:
        free(up_id);
        free(user);
        free(pass);
        free(will_topic);
}

static void session_on_publish(struct session *s, const struct mqtt_publish *p)
{
        char *topic = NULL;
        int r;

        s->b->stats.msgs_from_devices[p->qos]++;
        s->b->stats.payload_bytes_from_devices[p->qos] += p->payload_len;

        if (p->qos > 0 && outbox_has(s->outbox, p->packet_id))
                return; /* a resend (DUP) of one already on its way */
        if (p->qos == 2) {
                for (unsigned i = 0; i < s->n_rec; i++)
                        if (s->rec[i] == p->packet_id) {
                                /* §4.3.3: already ours; answer again, publish once. */
                                session_send_ack(s, MQTT_PUBREC, p->packet_id);
                                return;
                        }
        }

        r = policy_topic_to_upstream(s->mountpoint, p->topic.data, p->topic.len, &topic);
        if (r < 0) {
                /* MQTT 3.1.1 has no negative acknowledgement; like
                 * mosquitto's ACL, acknowledge and drop, and say so. */
                struct log_fields f = session_fields(s, "topic outside the mountpoint");
                log_msg(LOG_LEVEL_WARNING, &f, "PUBLISH to \"%.*s\" denied", (int) p->topic.len,
                        (const char *) p->topic.data);
                s->b->stats.publishes_denied++;
                if (p->qos > 0)
                        session_ack_device(s, p->packet_id, p->qos);
                return;
        }

        r = outbox_publish(s->outbox, p->packet_id, p->qos, p->retain, topic, p->payload, p->payload_len);
        free(topic);
        if (r == -ENOSPC) {
                /* Not acknowledged: the device keeps the message. */
                session_close(s, LOG_LEVEL_WARNING, "spool full (max_bytes_per_device / max_bytes)");
        } else if (r == -ENOTCONN) {
                session_close(s, LOG_LEVEL_WARNING, "upstream unavailable and no spool configured");
        } else if (r < 0) {
                char why[96];
                snprintf(why, sizeof why, "cannot forward the publish: %s", strerror(-r));
                session_close(s, LOG_LEVEL_WARNING, why);
        }
}

/* Remember a subscription (upstream form) to send it again later. */
static void session_record_sub(struct session *s, const char *filter, uint8_t qos, bool sent)
{
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++)
                if (strcmp(s->unsent_unsubs[i], filter) == 0) {
                        free(s->unsent_unsubs[i]);
                        s->unsent_unsubs[i] = s->unsent_unsubs[--s->n_unsent_unsubs];
                        break;
                }
        for (unsigned i = 0; i < s->n_srec; i++)
                if (strcmp(s->srec[i].filter, filter) == 0) {
                        s->srec[i].qos = qos;
                        s->srec[i].sent = sent;
                        return;
                }
        struct sub_rec *n = realloc(s->srec, (s->n_srec + 1) * sizeof *n);
        char *f = strdup(filter);
        if (!n || !f) {
                free(f);
                if (n)
                        s->srec = n;
                return; /* best effort: only a resubscription is lost */
        }
        s->srec = n;
        s->srec[s->n_srec++] = (struct sub_rec){ .filter = f, .qos = qos, .sent = sent };
}

static void session_forget_sub(struct session *s, const char *filter)
{
        for (unsigned i = 0; i < s->n_srec; i++)
                if (strcmp(s->srec[i].filter, filter) == 0) {
                        free(s->srec[i].filter);
                        s->srec[i] = s->srec[--s->n_srec];
                        return;
                }
}

static void session_on_subscribe(struct session *s, const struct mqtt_list *l)
{
        struct pending_sub *ps;
        struct mqtt_list_iter it;
        struct mqtt_str filter;
        uint8_t qos;
        char **filters[3] = { NULL, NULL, NULL };
        int n[3] = { 0, 0, 0 };
        size_t e = 0;

        ps = calloc(1, sizeof *ps);
        if (!ps)
                goto oom;
        ps->pid = l->packet_id;
        ps->count = l->count;
        ps->mids[0] = ps->mids[1] = ps->mids[2] = -1;
        ps->codes = calloc(l->count, 1);
        ps->group = calloc(l->count, 1);
        for (int g = 0; g < 3; g++)
                filters[g] = calloc(l->count, sizeof(char *));
        if (!ps->codes || !ps->group || !filters[0] || !filters[1] || !filters[2])
                goto oom;

        mqtt_list_iter_init(&it, MQTT_SUBSCRIBE, l);
        while (mqtt_list_next(&it, &filter, &qos)) {
                char *up = NULL;
                if (policy_filter_to_upstream(s->mountpoint, filter.data, filter.len, &up) < 0) {
                        struct log_fields f = session_fields(s, "filter outside the mountpoint");
                        log_msg(LOG_LEVEL_WARNING, &f, "SUBSCRIBE to \"%.*s\" refused", (int) filter.len,
                                (const char *) filter.data);
                        ps->group[e] = -1;
                        ps->codes[e] = MQTT_SUBACK_FAILURE;
                } else {
                        ps->group[e] = (int8_t) qos;
                        filters[qos][n[qos]++] = up;
                        session_record_sub(s, up, qos, s->up_connected);
                }
                e++;
        }

        for (int g = 0; g < 3; g++) {
                if (n[g] == 0)
                        continue;
                if (!s->up_connected) {
                        /* Broker away: granted as requested for now; the
                         * subscription goes upstream when it returns. */
                        for (size_t k = 0; k < ps->count; k++)
                                if (ps->group[k] == g)
                                        ps->codes[k] = (uint8_t) g;
                        continue;
                }
                int mid = 0;
                if (upstream_subscribe(s->up, &mid, n[g], filters[g], g) < 0) {
                        for (size_t k = 0; k < ps->count; k++)
                                if (ps->group[k] == g) {
                                        ps->group[k] = -1;
                                        ps->codes[k] = MQTT_SUBACK_FAILURE;
                                }
                        continue;
                }
                ps->mids[g] = mid;
                ps->waiting++;
        }
        for (int g = 0; g < 3; g++) {
                for (int k = 0; k < n[g]; k++)
                        free(filters[g][k]);
                free(filters[g]);
                filters[g] = NULL;
        }
        if (ps->waiting == 0) {
                /* Nothing went upstream (refused here, or the broker is
                 * away): answer now with the codes decided above. */
                session_send_suback(s, ps->pid, ps->codes, ps->count);
                pending_sub_free(ps);
                return;
        }
        ps->next = s->subs;
        s->subs = ps;
        return;
oom:
        for (int g = 0; g < 3; g++)
                free(filters[g]);
        pending_sub_free(ps);
        session_close(s, LOG_LEVEL_ERR, "out of memory");
}

static void session_on_unsubscribe(struct session *s, const struct mqtt_list *l)
{
        struct mqtt_list_iter it;
        struct mqtt_str filter;
        uint8_t qos;
        char **filters = calloc(l->count, sizeof(char *));
        int n = 0, mid = 0;

        if (!filters) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_list_iter_init(&it, MQTT_UNSUBSCRIBE, l);
        while (mqtt_list_next(&it, &filter, &qos)) {
                char *up = NULL;
                if (policy_filter_to_upstream(s->mountpoint, filter.data, filter.len, &up) == 0) {
                        session_forget_sub(s, up);
                        filters[n++] = up;
                }
        }
        if (n > 0 && !s->up_connected) {
                /* Broker away: apply it when it returns. */
                char **u = realloc(s->unsent_unsubs, (s->n_unsent_unsubs + (unsigned) n) * sizeof *u);
                if (u) {
                        s->unsent_unsubs = u;
                        for (int k = 0; k < n; k++) {
                                bool dup = false;
                                for (unsigned j = 0; j < s->n_unsent_unsubs; j++)
                                        dup = dup || strcmp(u[j], filters[k]) == 0;
                                if (dup)
                                        continue; /* bounded: one entry per filter */
                                u[s->n_unsent_unsubs++] = filters[k];
                                filters[k] = NULL;
                        }
                }
                session_send_ack(s, MQTT_UNSUBACK, l->packet_id);
        } else if (n > 0 && upstream_unsubscribe(s->up, &mid, n, filters) == 0) {
                struct pending_unsub *pu = calloc(1, sizeof *pu);
                if (pu) {
                        pu->pid = l->packet_id;
                        pu->mid = mid;
                        pu->next = s->unsubs;
                        s->unsubs = pu;
                } else {
                        session_send_ack(s, MQTT_UNSUBACK, l->packet_id);
                }
        } else {
                /* §3.10.4: UNSUBACK even when nothing matched. */
                session_send_ack(s, MQTT_UNSUBACK, l->packet_id);
        }
        for (int k = 0; k < n; k++)
                free(filters[k]);
        free(filters);
}

static void session_on_device_ack(struct session *s, enum mqtt_type type, uint16_t pid)
{
        for (unsigned i = 0; i < s->n_downf; i++) {
                struct down_inflight *d = &s->downf[i];
                if (d->pid != pid)
                        continue;
                if (type == MQTT_PUBACK && d->qos == 1) {
                        free(d->copy);
                        s->downf[i] = s->downf[--s->n_downf];
                } else if (type == MQTT_PUBREC && d->qos == 2) {
                        /* §4.3.3: answer PUBREC with PUBREL (also a resent one). */
                        d->released = true;
                        session_send_ack(s, MQTT_PUBREL, pid);
                } else if (type == MQTT_PUBCOMP && d->qos == 2 && d->released) {
                        free(d->copy);
                        s->downf[i] = s->downf[--s->n_downf];
                }
                session_drain_queue(s);
                return;
        }
        /* An ack for nothing we sent: harmless, ignore (§4.3). */
}

/* One whole packet from the device. */
static void session_handle_packet(struct session *s, const uint8_t *pkt, size_t len)
{
        struct mqtt_packet p;
        const char *why = NULL;
        int r;

        r = mqtt_parse(pkt, len, &p, &why);

        /* §3.1.2.10: the keepalive counts control packets, not bytes: a
         * device dribbling one byte at a time still times out. */
        if (s->state == S_ACTIVE || s->state == S_UPSTREAM_CONNECTING)
                s->last_packet = now_usec(s);

        if (s->state == S_WAIT_CONNECT) {
                if (r == -EPROTONOSUPPORT) {
                        /* §3.1.2.2: unacceptable protocol level → CONNACK 1. */
                        session_refuse(s, MQTT_CONNACK_BAD_PROTOCOL, why ? why : "protocol level not supported");
                        return;
                }
                if (r < 0) {
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, why ? why : "malformed CONNECT");
                        return;
                }
                if (p.type != MQTT_CONNECT) {
                        /* §3.1.0-1: the first packet must be CONNECT. */
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, "first packet is not CONNECT");
                        return;
                }
                session_on_connect(s, &p.u.connect);
                return;
        }

        if (r < 0) {
                /* §4.8: a malformed packet or protocol violation closes the
                 * connection; without DISCONNECT the will is published. */
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, why ? why : "malformed packet");
                return;
        }

        switch (p.type) {
        case MQTT_PUBLISH:
                session_on_publish(s, &p.u.publish);
                break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBCOMP:
                session_on_device_ack(s, p.type, p.u.packet_id);
                break;
        case MQTT_PUBREL:
                for (unsigned i = 0; i < s->n_rec; i++)
                        if (s->rec[i] == p.u.packet_id) {
                                s->rec[i] = s->rec[--s->n_rec];
                                break;
                        }
                /* §4.3.3: PUBCOMP even for an id we no longer hold. */
                session_send_ack(s, MQTT_PUBCOMP, p.u.packet_id);
                break;
        case MQTT_SUBSCRIBE:
                session_on_subscribe(s, &p.u.list);
                break;
        case MQTT_UNSUBSCRIBE:
                session_on_unsubscribe(s, &p.u.list);
                break;
        case MQTT_PINGREQ:
                session_send_empty(s, MQTT_PINGRESP);
                break;
        case MQTT_DISCONNECT:
                /* §3.14.4: discard the will; end upstream with DISCONNECT. */
                s->clean_disconnect = true;
                session_close(s, LOG_LEVEL_INFO, "DISCONNECT");
                break;
        case MQTT_CONNECT:
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "second CONNECT [MQTT-3.1.0-2]");
                break;
        default:
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "packet type a client must not send");
                break;
        }
}

/* Handle every whole packet in the input buffer that may be handled now. */
static void session_process_input(struct session *s)
{
        size_t off = 0;

        while (off < s->in_len) {
                size_t plen = 0;
                int r;

                if (s->state != S_WAIT_CONNECT && s->state != S_ACTIVE)
                        break; /* e.g. waiting for the upstream CONNACK */
                if (session_out_full(s)) {
                        s->paused_backlog = true;
                        break;
                }
                if (s->state == S_ACTIVE && (outbox_full(s->outbox) || upstream_backlogged(s->up))) {
                        /* Back-pressure: read no further until the broker
                         * acknowledges; TCP then slows the device down. */
                        s->input_paused = true;
                        break;
                }
                r = mqtt_frame(s->in + off, s->in_len - off, cfg_of(s)->limits.max_packet_size, &plen);
                if (r == 0)
                        break;
                if (r < 0) {
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, r == -EMSGSIZE ? "packet over max_packet_size" :
                                                           "remaining length over 4 bytes");
                        return;
                }
                session_handle_packet(s, s->in + off, plen);
                off += plen;
                if (s->state == S_CLOSED)
                        return;
        }
        if (off > 0) {
                memmove(s->in, s->in + off, s->in_len - off);
                s->in_len -= off;
        }
        /* One fsync for every message of this batch, then their acks. */
        if (s->outbox && outbox_commit(s->outbox) < 0) {
                session_close(s, LOG_LEVEL_ERR, "cannot write the spool (fsync failed)");
                return;
        }
        if (s->in_len == 0 && s->in_cap > READ_CHUNK) {
                free(s->in);
                s->in = NULL;
                s->in_cap = 0;
        }
        session_flush(s);
}

static bool session_wants_input(const struct session *s)
{
        if (s->paused_backlog || session_out_full(s))
                return false;
        if (s->state == S_WAIT_CONNECT || s->state == S_ACTIVE)
                return !s->input_paused;
        /* While the upstream connects, take a little more (packets pipelined
         * behind CONNECT) but not without bound. */
        if (s->state == S_UPSTREAM_CONNECTING)
                return s->in_len < READ_CHUNK * 4;
        return false;
}

/* Read everything OpenSSL and the socket have (SSL_pending drained). */
static void session_read(struct session *s)
{
        char why[256] = "";

        while (session_wants_input(s)) {
                if (s->in_cap - s->in_len < READ_CHUNK) {
                        size_t cap = s->in_cap ? s->in_cap * 2 : READ_CHUNK;
                        size_t limit = cfg_of(s)->limits.max_packet_size + 2 * READ_CHUNK;
                        if (cap > limit && s->in_cap >= limit)
                                break;
                        uint8_t *p = realloc(s->in, cap);
                        if (!p) {
                                session_close(s, LOG_LEVEL_ERR, "out of memory");
                                return;
                        }
                        s->in = p;
                        s->in_cap = cap;
                }
                ssize_t n = tls_conn_read(&s->tls, s->in + s->in_len, s->in_cap - s->in_len, why, sizeof why);
                if (n == -EAGAIN)
                        break;
                if (n == 0) {
                        session_close(s, LOG_LEVEL_INFO, "connection closed by the device");
                        return;
                }
                if (n < 0) {
                        session_close(s, LOG_LEVEL_INFO, why[0] ? why : "read error");
                        return;
                }
                s->in_len += (size_t) n;
                s->b->stats.bytes_from_devices += (uint64_t) n;
                session_process_input(s);
                if (s->state == S_CLOSED)
                        return;
        }
        if (s->in_len == 0 && s->in) {
                /* Idle devices are most of them: hold no input buffer
                 * (READ_CHUNK bytes each) between reads. */
                free(s->in);
                s->in = NULL;
                s->in_cap = 0;
        }
}

static void session_handshake(struct session *s)
{
        char why[256] = "";
        int r = tls_conn_handshake(&s->tls, why, sizeof why);

        if (r == 0)
                return;
        if (r < 0 && BIO_number_read(SSL_get_rbio(s->tls.ssl)) == 0) {
                /* A port probe or health check: nothing was ever sent. */
                struct log_fields f = { .peer = s->peer, .reason = "no data" };
                log_msg(LOG_LEVEL_DEBUG, &f, "connection closed before the TLS handshake began");
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }
        if (r < 0) {
                struct log_fields f = {
                        .peer = s->peer,
                        .cn = s->tls.verify.subject[0] ? s->tls.verify.subject : NULL,
                        .reason = why[0] ? why : "handshake failed",
                };
                s->b->stats.handshakes_failed++;
                if (s->tls.verify.reason[0])
                        s->b->stats.handshakes_failed_certificate++;
                log_msg(LOG_LEVEL_NOTICE, &f, "TLS handshake failed, device rejected%s",
                        s->tls.verify.subject[0] ? "" : " (no certificate seen)");
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }

        r = tls_server_peer_cn(s->tls.ssl, s->cn, sizeof s->cn);
        if (r == -EINVAL) {
                session_close(s, LOG_LEVEL_NOTICE, "client certificate subject has no usable CN");
                return;
        }
        bool resumed = SSL_session_reused(s->tls.ssl);
        if (resumed)
                s->b->stats.handshakes_resumed++;
        else
                s->b->stats.handshakes_full++;
        s->state = S_WAIT_CONNECT;
        {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_INFO, &f, "TLS established: %s %s, %s handshake, max fragment %u",
                        SSL_get_version(s->tls.ssl), SSL_get_cipher_name(s->tls.ssl),
                        resumed ? "resumed" : "full",
                        (unsigned) SSL_SESSION_get_max_fragment_length(SSL_get_session(s->tls.ssl)) ?
                                256u << SSL_SESSION_get_max_fragment_length(SSL_get_session(s->tls.ssl)) : 0u);
        }
        /* The deadline for CONNECT is the handshake timeout again. */
        session_set_deadline(s, (uint64_t) cfg_of(s)->listener.handshake_timeout * 1000000ULL);
        session_read(s);
}

static int session_io(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct session *s = userdata;

        if (s->state == S_HANDSHAKE) {
                session_handshake(s);
        } else {
                if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR) || s->tls.read_wants_write)
                        session_read(s);
                if (s->state != S_CLOSED && (revents & EPOLLOUT || s->tls.write_wants_read))
                        session_flush(s);
                if (s->state != S_CLOSED && (revents & (EPOLLERR | EPOLLHUP))) {
                        /* epoll keeps reporting these whatever we ask for:
                         * with input paused, nothing else would end it. */
                        session_close(s, LOG_LEVEL_INFO, "connection reset by the device");
                        return 0;
                }
                if (s->state == S_CLOSED)
                        return 0;
                /* A write can need a read (write_wants_read) and data may be
                 * sitting decrypted in OpenSSL: epoll won't say so. */
                if (session_wants_input(s) && tls_conn_pending(&s->tls))
                        sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
        }
        if (s->state != S_CLOSED)
                session_update_events(s);
        return 0;
}

static int session_on_resume(sd_event_source *src, void *userdata)
{
        struct session *s = userdata;

        session_process_input(s);
        if (s->state == S_CLOSED)
                return 0;
        session_read(s);
        if (s->state != S_CLOSED)
                session_update_events(s);
        return 0;
}

static int session_on_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct session *s = userdata;

        switch (s->state) {
        case S_HANDSHAKE:
                s->b->stats.handshakes_failed++;
                s->b->stats.handshakes_failed_timeout++;
                session_close(s, LOG_LEVEL_NOTICE, "TLS handshake timeout");
                break;
        case S_WAIT_CONNECT:
                session_close(s, LOG_LEVEL_NOTICE, "no CONNECT within handshake_timeout");
                break;
        case S_FLUSHING:
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                break;
        default: {
                /* §3.1.2.10: 1.5 × keepalive without a packet. */
                uint64_t deadline = s->last_packet + (uint64_t) s->keepalive * 1500000ULL;
                if (now_usec(s) < deadline) {
                        /* A packet came since the timer was set. */
                        sd_event_source_set_time(s->timer, deadline);
                        sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
                        break;
                }
                s->b->stats.keepalive_timeouts++;
                session_close(s, LOG_LEVEL_NOTICE, "keepalive timeout");
                break;
        }
        }
        return 0;
}

static void session_update_events(struct session *s)
{
        uint32_t ev;

        if (s->state == S_CLOSED)
                return;
        ev = tls_conn_poll_events(&s->tls, s->out_off < s->out_len, session_wants_input(s));
        if (ev != s->events) {
                sd_event_source_set_io_events(s->io, ev);
                s->events = ev;
        }
}

/* ---- life and death ---- */

/* Give up the outbox as soon as the session ends (not when it is reaped):
 * a new connection of the same device may open the same spool in the
 * meantime. Messages in flight upstream are dropped unacknowledged (the
 * device sends them again); a spool that still holds messages goes to a
 * replayer. */
static void session_release_outbox(struct session *s)
{
        bool spooled;

        if (!s->outbox)
                return;
        /* Detach only: session_close can run deep inside the outbox's own
         * calls (a failed device write in an ack callback); the struct is
         * freed by session_free. */
        spooled = outbox_detach(s->outbox);
        if (spooled && s->spool_path && !s->b->stopping)
                (void) replayer_start(s->b, s->spool_path); /* the device is away; its spool is not */
}

static void session_close(struct session *s, enum log_level level, const char *reason)
{
        if (s->state == S_CLOSED)
                return;
        if (reason) {
                struct log_fields f = session_fields(s, reason);
                log_msg(level, &f, "device disconnected");
        }
        if (s->state == S_ACTIVE || s->state == S_FLUSHING) {
                char why[256];
                (void) session_write_out(s, why, sizeof why);
        }
        tls_conn_shutdown(&s->tls);
        s->state = S_CLOSED;
        session_release_outbox(s);
        sd_event_source_set_enabled(s->io, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->resume, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_OFF);
        LIST_REMOVE(sessions, s->b->sessions, s);
        s->reap_next = s->b->reap;
        s->b->reap = s;
        bridge_schedule_reap(s->b);
}

struct session *session_reap_next(struct bridge *b)
{
        struct session *s = b->reap;
        if (s)
                b->reap = s->reap_next;
        return s;
}

void session_free(struct session *s)
{
        if (!s)
                return;
        if (s->state != S_CLOSED)
                LIST_REMOVE(sessions, s->b->sessions, s);
        upstream_close(s->up, s->clean_disconnect);
        if (s->counted_device) {
                s->b->n_devices--;
                bridge_notify_status(s->b);
        }
        s->b->n_sessions--;
        sd_event_source_disable_unref(s->io);
        sd_event_source_disable_unref(s->timer);
        sd_event_source_disable_unref(s->resume);
        tls_conn_done(&s->tls);
        if (s->fd >= 0)
                close(s->fd);
        session_hold(s);
        while (s->q_head) {
                struct down_queued *q = s->q_head;
                s->q_head = q->next;
                free(q);
        }
        for (unsigned i = 0; i < s->n_downf; i++)
                free(s->downf[i].copy);
        while (s->subs) {
                struct pending_sub *ps = s->subs;
                s->subs = ps->next;
                pending_sub_free(ps);
        }
        while (s->unsubs) {
                struct pending_unsub *pu = s->unsubs;
                s->unsubs = pu->next;
                free(pu);
        }
        session_release_outbox(s);
        outbox_free(s->outbox);
        free(s->spool_path);
        sd_event_source_disable_unref(s->reconnect);
        for (unsigned i = 0; i < s->n_srec; i++)
                free(s->srec[i].filter);
        free(s->srec);
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++)
                free(s->unsent_unsubs[i]);
        free(s->unsent_unsubs);
        free(s->up_client_id);
        free(s->up_user);
        if (s->up_pass)
                OPENSSL_cleanse(s->up_pass, strlen(s->up_pass));
        free(s->up_pass);
        free(s->will_topic);
        free(s->will_payload);
        free(s->downf);
        free(s->rec);
        free(s->in);
        free(s->out);
        free(s->client_id);
        free(s->mountpoint);
        free(s);
}

void session_shutdown(struct session *s)
{
        if (s->state != S_HANDSHAKE && s->state != S_CLOSED) {
                char why[256];
                (void) session_write_out(s, why, sizeof why);
                tls_conn_shutdown(&s->tls);
        }
        session_free(s);
}


int session_new(struct bridge *b, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
        struct session *s;
        int r;

        s = calloc(1, sizeof *s);
        if (!s) {
                close(fd);
                return -ENOMEM;
        }
        s->b = b;
        s->fd = fd;
        s->state = S_HANDSHAKE;
        log_format_peer(s->peer, sizeof s->peer, peer);
        LIST_PREPEND(sessions, b->sessions, s);
        b->n_sessions++;

        r = tls_conn_init(&s->tls, b->device_ctx, fd);
        if (r < 0)
                goto fail;
        s->events = EPOLLIN;
        r = sd_event_add_io(b->event, &s->io, fd, s->events, session_io, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_time(b->event, &s->timer, CLOCK_MONOTONIC, 0, 100 * 1000, session_on_timer, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_defer(b->event, &s->resume, session_on_resume, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_time(b->event, &s->reconnect, CLOCK_MONOTONIC, 0, 200 * 1000, session_on_reconnect, s);
        if (r < 0)
                goto fail;
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->resume, SD_EVENT_OFF);
        session_set_deadline(s, (uint64_t) b->cfg.listener.handshake_timeout * 1000000ULL);
        return 0;
fail:
        session_free(s);
        return r;
}
