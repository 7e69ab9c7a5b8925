/* SPDX-License-Identifier: MIT */
/*
 * session_connect.c — a device's CONNECT, and its uplink's life.
 *
 * The CONNECT is checked at the door the way the broker would check it
 * (§3.1, mosquitto's string rules), then mapped through the identity
 * policy (client id, credentials, will, mountpoint) into the uplink's own
 * CONNECT. The device gets the broker's CONNACK. A takeover of a client id
 * (§3.1.4 [MQTT-3.1.4-2]) is the broker's to decide: the older connection
 * of the same identity is closed only once the broker accepted the new one,
 * and a different identity is refused a connected device's client id.
 *
 * While the broker is unreachable a device is accepted "offline" when
 * there is a spool: its QoS 1/2 messages are stored, and the uplink is
 * retried with back-off.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "outbox.h"
#include "mountpoint.h"
#include "policy.h"
#include "replayer.h"
#include "session_internal.h"
#include "spool.h"

#define RECONNECT_MAX_SEC 30

static const struct uplink_ops session_uplink_ops;

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

static void *mem_dup(const void *p, size_t n)
{
        void *d = malloc(n ? n : 1);
        if (d && n)
                memcpy(d, p, n);
        return d;
}

/* Refuse a CONNECT with a return code (§3.2.2.3), then close. */
static void session_refuse(struct session *s, uint8_t rc, const char *why)
{
        struct log_fields f = session_fields(s, why);
        log_msg(LOG_LEVEL_NOTICE, &f, "device refused with CONNACK %u", rc);
        session_send_connack(s, false, rc);
        s->state = S_FLUSHING;
        session_set_deadline(s, SESSION_FLUSH_TIMEOUT_USEC);
}

/* Other live sessions using the same upstream client id. */
static bool same_client(const struct session *s, const struct session *o)
{
        return o != s && o->state != S_CLOSED && o->up_client_id && s->up_client_id &&
               strcmp(o->up_client_id, s->up_client_id) == 0;
}

/* Let older connections of this identity go, now that this one is in. */
static void session_take_over(struct session *s)
{
        for (struct session *o = s->b->sessions, *next; o; o = next) {
                next = o->sessions_next;
                if (same_client(s, o))
                        session_close(o, LOG_LEVEL_NOTICE,
                                      "taken over by a new connection of the same device [MQTT-3.1.4-2]");
        }
}

/* The new connection did not make it: the older ones carry on. */
void session_takeover_failed(struct session *s)
{
        for (struct session *o = s->b->sessions; o; o = o->sessions_next)
                if (same_client(s, o) && o->superseded) {
                        o->superseded = false;
                        if (!o->up_connected && o->state == S_ACTIVE)
                                sd_event_source_set_enabled(o->reconnect, SD_EVENT_ONESHOT);
                }
}

/* The device's spool file: one per identity and client id, so that no
 * other certificate can reach it by claiming the client id. A replayer
 * sending it while the device was away stops now, before the uplink
 * connects as the device (one file, one writer, one connection). */
static int session_find_spool(struct session *s)
{
        const struct config *cfg = session_cfg(s);
        char *key = NULL;

        if (!cfg->spool.directory)
                return 0;
        if (asprintf(&key, "%zu:%s%s", strlen(s->cn), s->cn, s->up_client_id) < 0)
                return -ENOMEM;
        s->spool_path = spool_path(cfg->spool.directory, key);
        free(key);
        if (!s->spool_path)
                return -ENOMEM;
        replayer_stop(s->b, s->spool_path);
        return 0;
}

static int session_open_outbox(struct session *s)
{
        const struct config *cfg = session_cfg(s);
        int r;

        /* The upstream username is not a secret (the password never goes
         * to the file: spool.h); a replay after a crash needs it when it
         * came from the device. */
        char *user = NULL;
        if (s->up_user && !(user = strndup((const char *) s->up_user, s->up_user_len)))
                return -ENOMEM;
        struct spool_meta meta = {
                .client_id = s->up_client_id,
                .username = user,
                .identity = s->cn,
                .protocol_level = s->protocol_level,
                .clean_session = s->clean_session,
                .had_password = s->up_pass != NULL,
        };
        struct outbox_params p = {
                .spool_path = s->spool_path,
                .name = s->cn,
                .meta = &meta,
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
        free(user);
        return r;
}

/* Give up the outbox as soon as the session ends (not when it is reaped):
 * a new connection of the same device may open the same spool meanwhile.
 * A spool that still holds messages goes to a replayer, with the
 * credentials the device sent (in memory only), unless a newer connection
 * of the device takes it over. */
void session_release_outbox(struct session *s)
{
        if (!s->outbox) {
                /* Refused before it had one (the broker said no): a spool
                 * it stopped the replay of goes back to a replayer, with
                 * the configuration's credentials, not the refused ones. */
                if (s->spool_path && !s->b->stopping && !s->superseded && s->state == S_CLOSED)
                        (void) replayer_start(s->b, s->spool_path, NULL);
                return;
        }
        bool spooled = outbox_detach(s->outbox);
        if (spooled && s->spool_path && !s->b->stopping && !s->superseded) {
                struct replayer_creds c = {
                        .username = s->up_user,
                        .username_len = s->up_user_len,
                        .password = s->up_pass,
                        .password_len = s->up_pass_len,
                };
                (void) replayer_start(s->b, s->spool_path, &c);
        }
}

void session_close_uplink(struct session *s, bool graceful)
{
        if (!s->up)
                return;
        uplink_close(s->up, graceful);
        s->up = NULL;
        s->up_connected = false;
        s->uplink_paused = false;
}

int session_connect_uplink(struct session *s, const char **why)
{
        return uplink_connect(s->b->uplinks, &s->up_params, &session_uplink_ops, s, &s->up, why);
}

static void session_schedule_reconnect(struct session *s)
{
        unsigned delay = s->backoff_sec ? s->backoff_sec : 1;
        s->backoff_sec = delay * 2 > RECONNECT_MAX_SEC ? RECONNECT_MAX_SEC : delay * 2;
        sd_event_source_set_time(s->reconnect, session_now(s) + (uint64_t) delay * 1000000ULL);
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_ONESHOT);
}

static int session_on_reconnect(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct session *s = userdata;
        const char *why = NULL;

        if (s->state != S_ACTIVE || s->up || s->superseded)
                return 0;
        if (session_connect_uplink(s, &why) < 0) {
                struct log_fields f = session_fields(s, why);
                log_msg(LOG_LEVEL_DEBUG, &f, "uplink still unreachable");
                s->up = NULL;
                session_schedule_reconnect(s);
        }
        return 0;
}

/* The device is in: CONNACK 0, and what it needs from here on. */
static void session_admit(struct session *s, bool session_present)
{
        int r;

        session_take_over(s);
        r = session_open_outbox(s);
        if (r < 0) {
                session_close_uplink(s, true);
                session_refuse(s, MQTT_CONNACK_SERVER_UNAVAILABLE,
                               r == -EBUSY ? "the device's spool is busy" : "cannot open the spool");
                return;
        }
        session_send_connack(s, session_present, MQTT_CONNACK_ACCEPTED);
        {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_INFO, &f,
                        "device connected (MQTT %s, keepalive %us, clean session %s, session present %s%s)",
                        s->protocol_level == MQTT_PROTOCOL_LEVEL_31 ? "3.1" : "3.1.1", s->keepalive,
                        s->clean_session ? "yes" : "no", session_present ? "yes" : "no",
                        s->up_connected ? "" : ", broker away");
        }
        s->state = S_ACTIVE;
        s->counted_device = true;
        s->b->n_devices++;
        bridge_notify_status(s->b);
        session_arm_keepalive(s);
        session_kick_input(s);
}

/* No broker now: accept offline when there is a spool (messages are stored
 * and forwarded), refuse with CONNACK 3 otherwise. */
static void session_accept_offline(struct session *s, const char *why)
{
        struct log_fields f = session_fields(s, why);

        session_close_uplink(s, false);
        if (!session_cfg(s)->spool.directory) {
                log_msg(LOG_LEVEL_WARNING, &f, "upstream broker unreachable, device refused with CONNACK 3 (no spool)");
                session_takeover_failed(s);
                session_refuse(s, MQTT_CONNACK_SERVER_UNAVAILABLE, why);
                return;
        }
        log_msg(LOG_LEVEL_WARNING, &f, "upstream broker unreachable: device accepted, QoS 1/2 messages spooled");
        session_admit(s, false);
        if (s->state == S_ACTIVE)
                session_schedule_reconnect(s);
}

/* ---- uplink events ---- */

static void up_on_connack(void *ud, uint8_t rc, bool session_present)
{
        struct session *s = ud;

        if (rc != MQTT_CONNACK_ACCEPTED) {
                struct log_fields f = session_fields(s, NULL);
                s->up = NULL; /* closed by the uplink after this returns */
                s->up_connected = false;
                if (s->state == S_UPLINK_CONNECTING) {
                        log_msg(LOG_LEVEL_NOTICE, &f, "device refused by the upstream broker: CONNACK %u", rc);
                        session_takeover_failed(s);
                        /* §3.2.2.3: the broker's refusal, passed on. */
                        session_refuse(s, rc > 5 ? MQTT_CONNACK_SERVER_UNAVAILABLE : rc, "refused by the broker");
                } else {
                        /* Accepted offline, or the broker changed its mind
                         * after a restart: the device learns it from the
                         * broker's own answer when it connects again. */
                        char why[64];
                        snprintf(why, sizeof why, "upstream refused on reconnect: CONNACK %u", rc);
                        session_close(s, LOG_LEVEL_WARNING, why);
                }
                return;
        }
        s->up_connected = true;
        s->up_session = !s->clean_session;
        s->backoff_sec = 0;
        if (s->state == S_UPLINK_CONNECTING) {
                session_admit(s, session_present);
                if (s->state != S_ACTIVE)
                        return;
        } else {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_NOTICE, &f, "upstream connection restored, %llu spooled message%s to send",
                        (unsigned long long) outbox_spooled(s->outbox), outbox_spooled(s->outbox) == 1 ? "" : "s");
        }
        session_up_resync(s, session_present);
        session_flush(s);
        session_update_events(s);
}

static void up_on_packet(void *ud, const struct mqtt_packet *pkt, const uint8_t *raw, size_t len)
{
        struct session *s = ud;

        switch (pkt->type) {
        case MQTT_PUBLISH:
        case MQTT_PUBREL:
                session_down_on_packet(s, pkt);
                break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBCOMP:
                (void) outbox_on_broker_ack(s->outbox, pkt->type, pkt->u.packet_id);
                break;
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
                (void) session_up_on_answer(s, pkt);
                break;
        default:
                break;
        }
}

/* The packets of one read from the broker are in: their acknowledgements
 * and messages go to the device together (up_on_packet only queued them). */
static void up_on_input_end(void *ud)
{
        struct session *s = ud;

        if (s->state == S_CLOSED)
                return;
        if (s->input_paused && !outbox_full(s->outbox))
                session_kick_input(s);
        session_flush(s);
        session_update_events(s);
}

static void up_on_lost(void *ud, const char *why)
{
        struct session *s = ud;
        struct log_fields f = session_fields(s, why);
        bool was_connected = s->up_connected;
        int r;

        session_close_uplink(s, false);
        if (s->state == S_UPLINK_CONNECTING) {
                session_accept_offline(s, why);
                return;
        }
        if (s->state != S_ACTIVE)
                return;
        if (s->superseded) {
                /* The broker ended it for a newer connection of this
                 * device; that one carries on. */
                session_close(s, LOG_LEVEL_NOTICE, "taken over by a new connection of the same device [MQTT-3.1.4-2]");
                return;
        }
        if (was_connected)
                log_msg(LOG_LEVEL_WARNING, &f, "uplink lost; the device stays connected, its messages are spooled");
        session_up_lost(s);
        r = outbox_uplink_down(s->outbox, !s->up_session);
        if (r == -ENOTCONN) {
                session_close(s, LOG_LEVEL_WARNING, "uplink lost and no spool configured");
                return;
        }
        if (r < 0) {
                session_close(s, LOG_LEVEL_ERR, "uplink lost and the spool cannot be written");
                return;
        }
        session_flush(s);
        if (s->state != S_ACTIVE)
                return;
        session_update_events(s);
        session_schedule_reconnect(s);
}

static void up_on_writable(void *ud)
{
        struct session *s = ud;

        outbox_pump(s->outbox);
        if (s->input_paused)
                session_kick_input(s);
}

static const struct uplink_ops session_uplink_ops = {
        .on_connack = up_on_connack,
        .on_packet = up_on_packet,
        .on_lost = up_on_lost,
        .on_writable = up_on_writable,
        .on_input_end = up_on_input_end,
};

/* ---- CONNECT ---- */

static bool session_clean(const struct mqtt_str *m)
{
        return mqtt_string_clean(m->data, m->len);
}

/* Checks a CONNECT must pass before anything is done with it. Returns the
 * CONNACK code to refuse with and sets *why, or 0. */
static uint8_t session_check_connect(struct session *s, const struct mqtt_connect *c, const char **why)
{
        const struct config *cfg = session_cfg(s);

        /* Strings as the broker checks them at its door: a control
         * character in a client id or username only ever cross-wires logs
         * or clients (mosquitto_validate_utf8). */
        if (!session_clean(&c->client_id)) {
                *why = "client id with a control character or invalid UTF-8";
                return MQTT_CONNACK_ID_REJECTED;
        }
        if (c->has_username && !session_clean(&c->username)) {
                *why = "username with a control character or invalid UTF-8";
                return MQTT_CONNACK_BAD_CREDENTIALS;
        }
        /* §3.1.3.1: a zero-byte client id needs clean session
         * [MQTT-3.1.3-8]; MQTT 3.1 requires 1..23 characters. */
        if (c->client_id.len == 0 && (!c->clean_session || c->protocol_level == MQTT_PROTOCOL_LEVEL_31)) {
                *why = "empty client id without clean session";
                return MQTT_CONNACK_ID_REJECTED;
        }
        if (c->protocol_level == MQTT_PROTOCOL_LEVEL_31 && c->client_id.len > 23) {
                *why = "MQTT 3.1 client id longer than 23 characters";
                return MQTT_CONNACK_ID_REJECTED;
        }
        if (!policy_client_id_allowed(&cfg->bridge, s->cn, c->client_id.data, c->client_id.len)) {
                *why = "client id does not match the certificate CN";
                return MQTT_CONNACK_ID_REJECTED;
        }
        /* MQTT 3.1.1 has no way to lower a client's keepalive, so one over
         * the limit (or 0, "never", under a configured limit) is refused. */
        if (cfg->limits.max_keepalive && (c->keepalive > cfg->limits.max_keepalive ||
                                          (c->keepalive == 0 && cfg->limits.max_keepalive < 65535))) {
                *why = "keepalive over max_keepalive";
                return MQTT_CONNACK_ID_REJECTED;
        }
        return 0;
}

/* Keep what it takes to connect the uplink, now and after a loss. */
static int session_keep_params(struct session *s, const struct mqtt_connect *c, char *up_id, char *will_topic,
                               char *user, char *pass, size_t pass_len)
{
        s->up_client_id = up_id;
        s->will_topic = will_topic;
        s->up_user = (uint8_t *) user;
        s->up_user_len = user ? strlen(user) : 0;
        s->up_pass = (uint8_t *) pass;
        s->up_pass_len = pass_len;
        if (c->will_flag) {
                s->will_payload = mem_dup(c->will_payload.data, c->will_payload.len);
                if (!s->will_payload)
                        return -ENOMEM;
        }
        s->up_params = (struct uplink_params){
                .client_id = s->up_client_id,
                .username = s->up_user,
                .username_len = s->up_user_len,
                .password = s->up_pass,
                .password_len = s->up_pass_len,
                .clean_session = c->clean_session,
                .keepalive = c->keepalive,
                .protocol_level = c->protocol_level,
                .will_topic = s->will_topic,
                .will_payload = s->will_payload,
                .will_len = c->will_flag ? c->will_payload.len : 0,
                .will_qos = c->will_qos,
                .will_retain = c->will_retain,
                .name = s->cn,
        };
        return 0;
}

/* §3.1.4 [MQTT-3.1.4-2] belongs to the broker, but only between
 * connections of one identity: another certificate must not be able to
 * kick a device off, or reach its session, by claiming its client id. */
static bool session_claim_client_id(struct session *s)
{
        bool any = session_cfg(s)->bridge.allow_clientid_takeover;

        for (struct session *o = s->b->sessions; o; o = o->sessions_next) {
                if (!same_client(s, o))
                        continue;
                if (strcmp(o->cn, s->cn) != 0 && !any)
                        return false;
        }
        for (struct session *o = s->b->sessions; o; o = o->sessions_next)
                if (same_client(s, o))
                        o->superseded = true;
        return true;
}

void session_on_connect(struct session *s, const struct mqtt_connect *c)
{
        const struct config *cfg = session_cfg(s);
        char *up_id = NULL, *user = NULL, *pass = NULL, *will_topic = NULL;
        size_t pass_len = 0;
        const char *why = NULL;
        uint8_t rc;
        int r;

        s->client_id = str_dup(&c->client_id);
        s->protocol_level = c->protocol_level;
        s->keepalive = c->keepalive;
        s->clean_session = c->clean_session;
        if (!s->client_id) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        rc = session_check_connect(s, c, &why);
        if (rc) {
                /* Logged with the id escaped: log.c prints no raw control
                 * character. */
                session_refuse(s, rc, why);
                return;
        }
        if (!s->cn[0]) {
                /* No client certificate (require_certificate = false): the
                 * identity is the username, or else the client id. */
                if (c->has_username && c->username.len)
                        snprintf(s->cn, sizeof s->cn, "%.*s", (int) c->username.len, (const char *) c->username.data);
                else
                        snprintf(s->cn, sizeof s->cn, "%s", s->client_id);
        }
        r = mountpoint_expand(cfg->bridge.mountpoint, s->cn, s->client_id, &s->mountpoint, &why);
        if (r < 0) {
                session_refuse(s, MQTT_CONNACK_NOT_AUTHORIZED, why ? why : "mountpoint does not apply to this device");
                return;
        }
        if (c->will_flag) {
                r = policy_topic_to_upstream(s->mountpoint, c->will_topic.data, c->will_topic.len, &will_topic);
                if (r == -EINVAL) {
                        session_refuse(s, MQTT_CONNACK_NOT_AUTHORIZED, "will topic with a control character or invalid");
                        goto out;
                }
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
        if (r < 0) {
                session_refuse(s, MQTT_CONNACK_BAD_CREDENTIALS, "credentials cannot be passed upstream");
                goto out;
        }
        r = session_keep_params(s, c, up_id, will_topic, user, pass, pass_len);
        up_id = will_topic = user = pass = NULL;
        if (r < 0) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                goto out;
        }
        if (!session_claim_client_id(s)) {
                session_refuse(s, MQTT_CONNACK_ID_REJECTED,
                               "client id in use by a device with another certificate");
                goto out;
        }
        if (session_find_spool(s) < 0) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                goto out;
        }
        r = sd_event_add_time(s->b->event, &s->reconnect, CLOCK_MONOTONIC, 0, 200 * 1000, session_on_reconnect, s);
        if (r < 0) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                goto out;
        }
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_OFF);
        session_arm_keepalive(s);
        s->state = S_UPLINK_CONNECTING;
        if (session_connect_uplink(s, &why) < 0) {
                s->up = NULL;
                session_accept_offline(s, why);
                goto out;
        }
        {
                struct log_fields f = session_fields(s, NULL);
                log_msg(LOG_LEVEL_DEBUG, &f, "CONNECT received, connecting upstream as \"%s\"", s->up_client_id);
        }
out:
        free(up_id);
        free(user);
        if (pass)
                OPENSSL_cleanse(pass, pass_len);
        free(pass);
        free(will_topic);
}
