/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/crypto.h>

#include "bridge.h"
#include "list.h"
#include "log.h"
#include "outbox.h"
#include "policy.h"
#include "replayer.h"
#include "spool.h"
#include "uplink.h"

#define REPLAY_KEEPALIVE 60
#define REPLAY_BACKOFF_MAX_SEC 60

struct replayer {
        struct bridge *b;
        LIST_FIELDS(struct replayer, replayers);
        char *path;
        char *client_id;          /* the device's own */
        char *user, *pass;        /* upstream credentials, NULL: none */
        size_t pass_len;
        bool clean_session;
        uint8_t protocol_level;
        struct outbox *outbox;
        struct uplink *up;
        bool connected;
        bool refused;             /* CONNACK != 0: the spool waits for the device */
        sd_event_source *timer;   /* reconnect, and the end */
        unsigned backoff_sec;
};

static void replayer_free(struct replayer *r)
{
        if (!r)
                return;
        LIST_REMOVE(replayers, r->b->replayers, r);
        uplink_close(r->up, true);
        outbox_free(r->outbox);
        sd_event_source_disable_unref(r->timer);
        free(r->path);
        free(r->client_id);
        free(r->user);
        if (r->pass)
                OPENSSL_cleanse(r->pass, r->pass_len);
        free(r->pass);
        free(r);
}

static void replayer_arm(struct replayer *r, uint64_t usec)
{
        uint64_t now = 0;
        sd_event_now(r->b->event, CLOCK_MONOTONIC, &now);
        sd_event_source_set_time(r->timer, now + usec);
        sd_event_source_set_enabled(r->timer, SD_EVENT_ONESHOT);
}

static void replayer_retry(struct replayer *r)
{
        unsigned delay = r->backoff_sec ? r->backoff_sec : 1;
        r->backoff_sec = delay * 2 > REPLAY_BACKOFF_MAX_SEC ? REPLAY_BACKOFF_MAX_SEC : delay * 2;
        replayer_arm(r, (uint64_t) delay * 1000000ULL);
}

static void rp_on_connack(void *ud, uint8_t rc, bool session_present)
{
        struct replayer *r = ud;

        if (rc != 0) {
                r->up = NULL; /* the uplink closes itself after a refusal */
                log_warning("replaying the spool of \"%s\": the broker refused with CONNACK %u; "
                            "the messages wait for the device", r->client_id, rc);
                r->refused = true;
                replayer_arm(r, 1); /* freed from the timer, outside the uplink's call */
                return;
        }
        r->connected = true;
        r->backoff_sec = 0;
        log_notice("replaying %llu spooled message%s of \"%s\" while the device is away",
                   (unsigned long long) outbox_spooled(r->outbox), outbox_spooled(r->outbox) == 1 ? "" : "s",
                   r->client_id);
        outbox_uplink_up(r->outbox, r->up, session_present);
}

static void rp_on_packet(void *ud, const struct mqtt_packet *pkt, const uint8_t *raw, size_t len)
{
        struct replayer *r = ud;

        /* A PUBLISH for the device's persistent session is left
         * unacknowledged: the broker keeps it for the device. */
        if (pkt->type == MQTT_PUBACK || pkt->type == MQTT_PUBREC || pkt->type == MQTT_PUBCOMP)
                (void) outbox_on_broker_ack(r->outbox, pkt->type, pkt->u.packet_id);
        if (outbox_idle(r->outbox))
                replayer_arm(r, 1); /* finish outside the uplink's call */
}

static void rp_on_lost(void *ud, const char *why)
{
        struct replayer *r = ud;

        uplink_close(r->up, false);
        r->up = NULL;
        r->connected = false;
        (void) outbox_uplink_down(r->outbox, r->clean_session);
        log_debug("replayer for \"%s\": %s", r->client_id, why);
        replayer_retry(r);
}

static void rp_on_writable(void *ud)
{
        struct replayer *r = ud;
        outbox_pump(r->outbox);
}

static const struct uplink_ops replayer_uplink_ops = {
        .on_connack = rp_on_connack,
        .on_packet = rp_on_packet,
        .on_lost = rp_on_lost,
        .on_writable = rp_on_writable,
};

static int replayer_on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct replayer *r = userdata;
        const char *why = NULL;

        if (r->refused) {
                replayer_free(r);
                return 0;
        }
        if (r->connected && outbox_idle(r->outbox)) {
                log_notice("spool of \"%s\" delivered", r->client_id);
                replayer_free(r);
                return 0;
        }
        if (r->connected)
                return 0;
        uplink_close(r->up, false);
        r->up = NULL;
        struct uplink_params params = {
                .client_id = r->client_id,
                .username = (const uint8_t *) r->user,
                .username_len = r->user ? strlen(r->user) : 0,
                .password = (const uint8_t *) r->pass,
                .password_len = r->pass_len,
                /* Never a clean session over the device's persistent one. */
                .clean_session = r->clean_session,
                .keepalive = REPLAY_KEEPALIVE,
                .protocol_level = r->protocol_level,
                .name = r->client_id,
        };
        if (uplink_connect(r->b->uplinks, &params, &replayer_uplink_ops, r, &r->up, &why) < 0) {
                r->up = NULL;
                log_debug("replayer for \"%s\": %s", r->client_id, why);
                replayer_retry(r);
        }
        return 0;
}

/* The credentials to replay with: the device's while in memory, else the
 * configuration's. Returns 0, or -EAGAIN when only the device has them. */
static int replayer_credentials(struct replayer *r, const struct spool_meta *m, const struct replayer_creds *c)
{
        const struct config_bridge *cb = &r->b->cfg.bridge;
        const uint8_t *du = NULL, *dp = NULL;
        size_t dul = 0, dpl = 0;

        if (c && c->username) {
                du = c->username;
                dul = c->username_len;
        } else if (m->username) {
                du = (const uint8_t *) m->username;
                dul = strlen(m->username);
        }
        if (c && c->password) {
                dp = c->password;
                dpl = c->password_len;
        } else if (cb->password_mode == PASSWORD_FROM_DEVICE && m->had_password) {
                return -EAGAIN;
        }
        /* policy_credentials maps the device's to the upstream ones per
         * username_mode / password_mode, as for a live session; the
         * upstream username is what the device sent, or the CN. */
        return policy_credentials(cb, m->identity ? m->identity : m->client_id, du, dul, dp, dpl,
                                  &r->user, &r->pass, &r->pass_len);
}

int replayer_start(struct bridge *b, const char *path, const struct replayer_creds *creds)
{
        const struct config *cfg = &b->cfg;
        struct replayer *r;
        int ret;

        for (r = b->replayers; r; r = r->replayers_next)
                if (strcmp(r->path, path) == 0)
                        return 0;
        r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->b = b;
        LIST_PREPEND(replayers, b->replayers, r);
        r->path = strdup(path);
        if (!r->path) {
                replayer_free(r);
                return -ENOMEM;
        }
        struct outbox_params p = {
                .name = path,
                .spool_path = r->path,
                .spool_max_bytes = cfg->spool.max_bytes_per_device,
                .spool_total = &b->stats.spool_bytes,
                .spool_msgs = &b->stats.spool_messages,
                .spool_total_max = cfg->spool.max_bytes,
                .max_inflight = cfg->limits.max_inflight_messages,
                .stat_replayed = &b->stats.msgs_replayed,
        };
        ret = outbox_new(&p, &r->outbox);
        if (ret < 0 || outbox_spooled(r->outbox) == 0) {
                replayer_free(r);
                return ret == -EBUSY ? 0 : ret < 0 ? ret : 0;
        }
        const struct spool_meta *m = outbox_spool_meta(r->outbox);
        if (!m || !m->client_id || !m->client_id[0]) {
                log_warning("spool %s has no record of its device: its messages wait for the device", path);
                replayer_free(r);
                return 0;
        }
        r->client_id = strdup(m->client_id);
        r->clean_session = m->clean_session;
        r->protocol_level = (uint8_t) m->protocol_level;
        if (!r->client_id) {
                replayer_free(r);
                return -ENOMEM;
        }
        ret = replayer_credentials(r, m, creds);
        if (ret == -EAGAIN) {
                log_notice("spool of \"%s\" (%llu messages) waits for its device: the password it used is "
                           "not kept on disk", r->client_id, (unsigned long long) outbox_spooled(r->outbox));
                replayer_free(r);
                return 0;
        }
        if (ret < 0) {
                replayer_free(r);
                return ret;
        }
        ret = sd_event_add_time(b->event, &r->timer, CLOCK_MONOTONIC, 0, 100000, replayer_on_timer, r);
        if (ret < 0) {
                replayer_free(r);
                return ret;
        }
        replayer_arm(r, 1);
        return 1;
}

void replayer_stop(struct bridge *b, const char *path)
{
        for (struct replayer *r = b->replayers; r; r = r->replayers_next)
                if (strcmp(r->path, path) == 0) {
                        log_info("the device of \"%s\" is back: it takes its spool over", r->client_id ? r->client_id : path);
                        replayer_free(r);
                        return;
                }
}

unsigned replayer_start_all(struct bridge *b)
{
        const char *dir = b->cfg.spool.directory;
        unsigned started = 0;
        DIR *d;
        struct dirent *e;

        if (!dir || !(d = opendir(dir)))
                return 0;
        while ((e = readdir(d))) {
                size_t n = strlen(e->d_name);
                struct stat st;
                if (n < 7 || strcmp(e->d_name + n - 6, ".spool") != 0)
                        continue;
                char *path = NULL;
                if (asprintf(&path, "%s/%s", dir, e->d_name) < 0)
                        break;
                /* [spool] max_bytes covers every file, also those that
                 * wait for their device: they are counted from here on. */
                if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
                        b->stats.spool_bytes += (uint64_t) st.st_size;
                if (replayer_start(b, path, NULL) > 0)
                        started++;
                free(path);
        }
        closedir(d);
        return started;
}

void replayer_stop_all(struct bridge *b)
{
        while (b->replayers)
                replayer_free(b->replayers);
}
