/* SPDX-License-Identifier: MIT */
/*
 * session_up.c — device → broker: PUBLISH and PUBREL (through the outbox,
 * which owns the acknowledgement order and the spool), SUBSCRIBE and
 * UNSUBSCRIBE (relayed with the device's packet identifier, filters mapped
 * under the mountpoint, and answered with the broker's own SUBACK and
 * UNSUBACK).
 *
 * Subscriptions are remembered in upstream form, so that they can be made
 * again when the broker lost them (an uplink with a clean session that
 * reconnected, or subscriptions made while it was away).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"
#include "policy.h"
#include "session_internal.h"

#define RESUBSCRIBE_BATCH 64

/* ---- the outbox's acknowledgements to the device ---- */

static void session_outbox_ack(void *ud, uint16_t pid, uint8_t qos)
{
        session_send_ack(ud, qos == 1 ? MQTT_PUBACK : MQTT_PUBREC, pid);
}

static void session_outbox_complete(void *ud, uint16_t pid)
{
        session_send_ack(ud, MQTT_PUBCOMP, pid);
}

bool session_pid_busy(void *ud, uint16_t pid)
{
        const struct session *s = ud;
        for (const struct pending_req *q = s->reqs; q; q = q->next)
                if (q->up_pid == pid)
                        return true;
        return false;
}

const struct outbox_ops session_outbox_ops = {
        .ack = session_outbox_ack,
        .complete = session_outbox_complete,
        .pid_busy = session_pid_busy,
};

/* An identifier for a request upstream: the device's own when it is free
 * on the uplink (the common case), else one of the bridge's. */
static uint16_t session_up_pid(struct session *s, uint16_t want)
{
        if (want && !session_pid_busy(s, want) && !outbox_pid_in_use(s->outbox, want))
                return want;
        /* The outbox's allocator also avoids QoS 2 ids the spool holds for
         * a replay, and asks session_pid_busy for ours. */
        return outbox_free_pid(s->outbox);
}

/* ---- PUBLISH, PUBREL ---- */

void session_on_publish(struct session *s, const struct mqtt_publish *p)
{
        struct mqtt_str topic;
        int r;

        s->b->stats.msgs_from_devices[p->qos]++;
        s->b->stats.payload_bytes_from_devices[p->qos] += p->payload_len;
        s->msgs_in++;

        /* Mapped into the bridge's one topic buffer (handlers never nest):
         * no allocation per message. */
        r = policy_topic_map(s->mountpoint, p->topic.data, p->topic.len, s->b->topic_buf, sizeof s->b->topic_buf,
                             &topic);
        if (r == -EINVAL) {
                /* A control character: closed, never forwarded or spooled
                 * (mosquitto closes such a connection too). */
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "PUBLISH topic with a control character or invalid UTF-8");
                return;
        }
        if (r < 0) {
                /* MQTT 3.1.1 has no negative acknowledgement; like
                 * mosquitto's ACL, acknowledge (in order) and drop. */
                struct log_fields f = session_fields(s, "topic outside the mountpoint");
                log_msg(LOG_LEVEL_WARNING, &f, "PUBLISH to \"%.*s\" denied", (int) p->topic.len,
                        (const char *) p->topic.data);
                s->b->stats.publishes_denied++;
                if (p->qos > 0 && outbox_refuse(s->outbox, p->packet_id, p->qos) < 0)
                        session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        struct mqtt_publish up = *p;
        up.topic = topic;
        r = outbox_publish(s->outbox, &up);
        if (r >= 0)
                return;
        if (r == -ENOSPC) {
                /* Not acknowledged: the device keeps the message. */
                session_close(s, LOG_LEVEL_WARNING, "spool full (max_bytes_per_device / max_bytes)");
        } else if (r == -ENOTCONN) {
                session_close(s, LOG_LEVEL_WARNING, "broker unavailable and no spool configured");
        } else {
                char why[96];
                snprintf(why, sizeof why, "cannot forward the publish: %s", strerror(-r));
                session_close(s, LOG_LEVEL_WARNING, why);
        }
}

void session_on_pubrel(struct session *s, uint16_t pid)
{
        outbox_device_pubrel(s->outbox, pid);
}

/* ---- subscription records ---- */

static void unsent_unsub_drop(struct session *s, const char *filter)
{
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++)
                if (strcmp(s->unsent_unsubs[i], filter) == 0) {
                        free(s->unsent_unsubs[i]);
                        s->unsent_unsubs[i] = s->unsent_unsubs[--s->n_unsent_unsubs];
                        return;
                }
}

static int unsent_unsub_add(struct session *s, const char *filter)
{
        char **n = realloc(s->unsent_unsubs, (s->n_unsent_unsubs + 1) * sizeof *n);
        if (!n)
                return -ENOMEM;
        s->unsent_unsubs = n;
        if (!(n[s->n_unsent_unsubs] = strdup(filter)))
                return -ENOMEM;
        s->n_unsent_unsubs++;
        return 0;
}

/* ---- requests upstream ---- */

static struct pending_req *req_new(enum mqtt_type type, uint16_t up_pid, uint16_t dev_pid, size_t count)
{
        struct pending_req *q = calloc(1, sizeof *q + count);
        if (!q)
                return NULL;
        q->type = type;
        q->up_pid = up_pid;
        q->dev_pid = dev_pid;
        q->count = count;
        return q;
}

/* Encode one SUBSCRIBE / UNSUBSCRIBE upstream. */
static int session_send_req(struct session *s, enum mqtt_type type, uint16_t pid, const struct mqtt_str *filters,
                            const uint8_t *qos, size_t n)
{
        size_t len = MQTT_MAX_FIXED_HEADER + 2;
        for (size_t i = 0; i < n; i++)
                len += 2u + filters[i].len + 1u;
        uint8_t *buf = uplink_reserve(s->up, len);
        if (!buf)
                return -ENOTCONN;
        int w = mqtt_encode_subscribe(buf, len, type, pid, filters, qos, n);
        uplink_commit(s->up, w > 0 ? (size_t) w : 0);
        return w < 0 ? w : 0;
}

/* SUBACK to the device: one return code per filter, in order (§3.9.3). */
static void session_send_suback(struct session *s, uint16_t pid, const uint8_t *codes, size_t n)
{
        size_t len = MQTT_MAX_FIXED_HEADER + 2 + n;
        uint8_t *buf = session_out_reserve(s, len, false);
        if (!buf) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        int w = mqtt_encode_suback(buf, len, pid, codes, n);
        s->out_len -= len - (w > 0 ? (size_t) w : 0);
}

/* Map the entries of a SUBSCRIBE / UNSUBSCRIBE. Returns the count, or
 * -EINVAL (a control character: the device is closed), -ENOMEM. mapped[i]
 * is NULL for a filter outside the mountpoint. */
static int session_map_filters(struct session *s, const struct mqtt_list *l, char **mapped, uint8_t *qos)
{
        struct mqtt_list_iter it;
        struct mqtt_str f;
        size_t i = 0;

        mqtt_list_iter_init(&it, l->count && qos ? MQTT_SUBSCRIBE : MQTT_UNSUBSCRIBE, l);
        while (i < l->count && mqtt_list_next(&it, &f, qos ? &qos[i] : &(uint8_t){ 0 })) {
                int r = policy_filter_to_upstream(s->mountpoint, f.data, f.len, &mapped[i]);
                if (r == -EINVAL)
                        return -EINVAL;
                if (r == -ENOMEM)
                        return -ENOMEM;
                if (r < 0) {
                        struct log_fields lf = session_fields(s, "filter outside the mountpoint");
                        log_msg(LOG_LEVEL_WARNING, &lf, "subscription to \"%.*s\" refused", (int) f.len,
                                (const char *) f.data);
                        mapped[i] = NULL;
                }
                i++;
        }
        return (int) i;
}

static void free_strv(char **v, size_t n)
{
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

void session_on_subscribe(struct session *s, const struct mqtt_list *l)
{
        size_t n = l->count, sent = 0;
        char **mapped = calloc(n, sizeof *mapped);
        uint8_t *qos = calloc(n, 1);
        struct mqtt_str *up = calloc(n, sizeof *up);
        uint8_t *up_qos = calloc(n, 1);
        struct pending_req *q = NULL;
        int r;

        if (!mapped || !qos || !up || !up_qos)
                goto oom;
        r = session_map_filters(s, l, mapped, qos);
        if (r == -EINVAL) {
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "SUBSCRIBE filter with a control character or invalid UTF-8");
                goto out;
        }
        if (r < 0)
                goto oom;
        q = req_new(MQTT_SUBSCRIBE, 0, l->packet_id, n);
        if (!q)
                goto oom;
        for (size_t i = 0; i < n; i++) {
                q->codes[i] = mapped[i] ? qos[i] : MQTT_SUBACK_FAILURE;
                if (!mapped[i])
                        continue;
                /* A bound mosquitto does not have: each filter costs memory
                 * here and at the broker. Over it, refused like an ACL. */
                unsigned max = session_cfg(s)->limits.max_subscriptions;
                if (max && s->subs.n >= max && !sub_table_find(&s->subs, mapped[i])) {
                        struct log_fields lf = session_fields(s, "max_subscriptions reached");
                        log_msg(LOG_LEVEL_WARNING, &lf, "subscription to \"%s\" refused", mapped[i]);
                        q->codes[i] = MQTT_SUBACK_FAILURE;
                        free(mapped[i]);
                        mapped[i] = NULL;
                        continue;
                }
                unsent_unsub_drop(s, mapped[i]);
                if (sub_table_put(&s->subs, mapped[i], qos[i]) < 0)
                        goto oom;
                up[sent] = (struct mqtt_str){ (const uint8_t *) mapped[i], (uint16_t) strlen(mapped[i]) };
                up_qos[sent++] = qos[i];
        }
        q->sent = sent;
        if (sent > 0 && s->up_connected) {
                q->up_pid = session_up_pid(s, l->packet_id);
                if (q->up_pid && session_send_req(s, MQTT_SUBSCRIBE, q->up_pid, up, up_qos, sent) == 0) {
                        q->next = s->reqs;
                        s->reqs = q;
                        q = NULL; /* answered with the broker's SUBACK */
                        goto out;
                }
        }
        /* Nothing to ask the broker, or no broker now: answer at once with
         * what was requested; the subscriptions are made when the uplink is
         * back (session_up_resync). */
        session_send_suback(s, l->packet_id, q->codes, n);
        {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "SUBACK for %zu filter%s answered here (%s)", n, n == 1 ? "" : "s",
                        sent ? "broker away" : "all refused");
        }
        goto out;
oom:
        session_close(s, LOG_LEVEL_ERR, "out of memory");
out:
        free(q);
        free_strv(mapped, n);
        free(qos);
        free(up);
        free(up_qos);
}

void session_on_unsubscribe(struct session *s, const struct mqtt_list *l)
{
        size_t n = l->count, sent = 0;
        char **mapped = calloc(n, sizeof *mapped);
        struct mqtt_str *up = calloc(n, sizeof *up);
        int r;

        if (!mapped || !up)
                goto oom;
        r = session_map_filters(s, l, mapped, NULL);
        if (r == -EINVAL) {
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "UNSUBSCRIBE filter with a control character or invalid UTF-8");
                goto out;
        }
        if (r < 0)
                goto oom;
        for (size_t i = 0; i < n; i++) {
                if (!mapped[i])
                        continue;
                (void) sub_table_remove(&s->subs, mapped[i]);
                up[sent++] = (struct mqtt_str){ (const uint8_t *) mapped[i], (uint16_t) strlen(mapped[i]) };
        }
        if (sent > 0 && s->up_connected) {
                struct pending_req *q = req_new(MQTT_UNSUBSCRIBE, session_up_pid(s, l->packet_id), l->packet_id, 0);
                if (!q)
                        goto oom;
                if (q->up_pid && session_send_req(s, MQTT_UNSUBSCRIBE, q->up_pid, up, NULL, sent) == 0) {
                        q->next = s->reqs;
                        s->reqs = q;
                        goto out;
                }
                free(q);
        }
        /* The broker keeps a persistent session's subscriptions while the
         * uplink is away: unsubscribe there when it is back. */
        for (size_t i = 0; i < n; i++)
                if (mapped[i] && !s->clean_session && unsent_unsub_add(s, mapped[i]) < 0)
                        goto oom;
        session_send_ack(s, MQTT_UNSUBACK, l->packet_id);
        goto out;
oom:
        session_close(s, LOG_LEVEL_ERR, "out of memory");
out:
        free_strv(mapped, n);
        free(up);
}

/* The broker's SUBACK / UNSUBACK. */
bool session_up_on_answer(struct session *s, const struct mqtt_packet *pkt)
{
        enum mqtt_type want = pkt->type == MQTT_SUBACK ? MQTT_SUBSCRIBE : MQTT_UNSUBSCRIBE;
        uint16_t pid = pkt->type == MQTT_SUBACK ? pkt->u.list.packet_id : pkt->u.packet_id;
        struct pending_req **pp, *q;

        for (pp = &s->reqs; (q = *pp); pp = &q->next)
                if (q->up_pid == pid && q->type == want)
                        break;
        if (!q)
                return false;
        *pp = q->next;
        if (pkt->type == MQTT_SUBACK) {
                struct mqtt_list_iter it;
                struct mqtt_str none;
                uint8_t code;
                mqtt_list_iter_init(&it, MQTT_SUBACK, &pkt->u.list);
                for (size_t i = 0; i < q->count; i++) {
                        if (q->codes[i] == MQTT_SUBACK_FAILURE)
                                continue;
                        /* §3.9.3: one code per filter sent, in order; a
                         * broker that sent fewer refused the rest. */
                        if (!mqtt_list_next(&it, &none, &code))
                                code = MQTT_SUBACK_FAILURE;
                        q->codes[i] = code;
                }
                if (q->dev_pid) {
                        session_send_suback(s, q->dev_pid, q->codes, q->count);
                        struct log_fields f = session_fields(s, NULL);
                        log_msg(LOG_LEVEL_DEBUG, &f, "SUBACK for %zu filter%s relayed", q->count,
                                q->count == 1 ? "" : "s");
                }
                /* The broker has them now (for the bridge's own requests,
                 * count those are marked sent in session_up_resync). */
        } else if (q->dev_pid) {
                session_send_ack(s, MQTT_UNSUBACK, q->dev_pid);
        }
        free(q);
        return true;
}

/* ---- uplink up and down ---- */

void session_up_resync(struct session *s, bool session_present)
{
        size_t n = 0;
        struct mqtt_str batch[RESUBSCRIBE_BATCH];
        uint8_t qos[RESUBSCRIBE_BATCH];

        struct sub_rec *v = s->subs.v;
        unsigned nsub = s->subs.n;

        if (!session_present)
                for (unsigned i = 0; i < nsub; i++)
                        v[i].sent = false;
        for (unsigned i = 0; i <= nsub; i++) {
                if (i < nsub && !v[i].sent) {
                        batch[n] = (struct mqtt_str){ (const uint8_t *) v[i].filter, (uint16_t) strlen(v[i].filter) };
                        qos[n++] = v[i].qos;
                        v[i].sent = true;
                }
                if (n == RESUBSCRIBE_BATCH || (i == nsub && n > 0)) {
                        struct pending_req *q = req_new(MQTT_SUBSCRIBE, session_up_pid(s, 0), 0, 0);
                        if (!q || !q->up_pid || session_send_req(s, MQTT_SUBSCRIBE, q->up_pid, batch, qos, n) < 0) {
                                free(q);
                                break;
                        }
                        q->next = s->reqs;
                        s->reqs = q;
                        n = 0;
                }
        }
        if (session_present && s->n_unsent_unsubs > 0) {
                for (unsigned i = 0; i < s->n_unsent_unsubs; i += RESUBSCRIBE_BATCH) {
                        unsigned k = 0;
                        for (; k < RESUBSCRIBE_BATCH && i + k < s->n_unsent_unsubs; k++)
                                batch[k] = (struct mqtt_str){ (const uint8_t *) s->unsent_unsubs[i + k],
                                                              (uint16_t) strlen(s->unsent_unsubs[i + k]) };
                        struct pending_req *q = req_new(MQTT_UNSUBSCRIBE, session_up_pid(s, 0), 0, 0);
                        if (!q || !q->up_pid || session_send_req(s, MQTT_UNSUBSCRIBE, q->up_pid, batch, NULL, k) < 0) {
                                free(q);
                                break;
                        }
                        q->next = s->reqs;
                        s->reqs = q;
                }
        }
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++)
                free(s->unsent_unsubs[i]);
        s->n_unsent_unsubs = 0;
        outbox_uplink_up(s->outbox, s->up, session_present);
}

/* The uplink is gone: answer what the device still waits for, as if it
 * had been made offline; the broker is asked again when it is back. */
void session_up_lost(struct session *s)
{
        while (s->reqs) {
                struct pending_req *q = s->reqs;
                s->reqs = q->next;
                if (q->dev_pid && q->type == MQTT_SUBSCRIBE)
                        session_send_suback(s, q->dev_pid, q->codes, q->count);
                else if (q->dev_pid)
                        session_send_ack(s, MQTT_UNSUBACK, q->dev_pid);
                free(q);
        }
        for (unsigned i = 0; i < s->subs.n; i++)
                if (!s->up_session)
                        s->subs.v[i].sent = false;
}

void session_up_free(struct session *s)
{
        while (s->reqs) {
                struct pending_req *q = s->reqs;
                s->reqs = q->next;
                free(q);
        }
        sub_table_clear(&s->subs);
        for (unsigned i = 0; i < s->n_unsent_unsubs; i++)
                free(s->unsent_unsubs[i]);
        free(s->unsent_unsubs);
}
