/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "list.h"
#include "log.h"
#include "outbox.h"
#include "replayer.h"
#include "spool.h"
#include "upstream.h"

struct replayer {
        struct bridge *b;
        LIST_FIELDS(struct replayer, replayers);
        char *path;
        char *client_id, *username, *password;
        int protocol_level;
        struct outbox *outbox;
        struct upstream *up;
        bool connected;
        bool done;
        sd_event_source *timer;   /* reconnect, and checks for the end */
        unsigned backoff_sec;
};

static void replayer_free(struct replayer *r)
{
        if (!r)
                return;
        LIST_REMOVE(replayers, r->b->replayers, r);
        upstream_close(r->up, true);
        outbox_free(r->outbox);
        sd_event_source_disable_unref(r->timer);
        free(r->path);
        free(r->client_id);
        free(r->username);
        free(r->password);
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
        r->backoff_sec = delay * 2 > 60 ? 60 : delay * 2;
        replayer_arm(r, (uint64_t) delay * 1000000ULL);
}

static void rp_on_connect(void *ud, int rc, bool session_present)
{
        struct replayer *r = ud;

        if (rc != 0) {
                log_warning("replaying the spool of \"%s\": the broker refused with CONNACK %d; "
                            "the messages wait for the device", r->client_id, rc);
                r->done = true;
                replayer_arm(r, 0 + 1);
                return;
        }
        r->connected = true;
        r->backoff_sec = 0;
        log_notice("replaying %llu spooled message%s of \"%s\" while the device is away",
                   (unsigned long long) outbox_spooled(r->outbox), outbox_spooled(r->outbox) == 1 ? "" : "s",
                   r->client_id);
        outbox_set_upstream(r->outbox, r->up, true);
        replayer_arm(r, 100000);
}

static void rp_on_lost(void *ud, const char *why)
{
        struct replayer *r = ud;

        r->connected = false;
        outbox_set_upstream(r->outbox, NULL, false);
        (void) outbox_upstream_lost(r->outbox);
        log_debug("replayer for \"%s\": %s", r->client_id, why);
        replayer_retry(r);
}

static void rp_on_publish(void *ud, int mid)
{
        struct replayer *r = ud;

        outbox_on_published(r->outbox, mid);
        if (outbox_spooled(r->outbox) == 0)
                replayer_arm(r, 1); /* finish outside libmosquitto's call chain */
}

static void rp_on_message(void *ud, const struct mosquitto_message *msg)
{
        /* It subscribes to nothing and has a clean session. */
}

static void rp_on_subscribe(void *ud, int mid, int n, const int *granted)
{
}

static void rp_on_unsubscribe(void *ud, int mid)
{
}

static const struct upstream_callbacks replayer_callbacks = {
        .on_connect = rp_on_connect,
        .on_lost = rp_on_lost,
        .on_publish = rp_on_publish,
        .on_message = rp_on_message,
        .on_subscribe = rp_on_subscribe,
        .on_unsubscribe = rp_on_unsubscribe,
};

static void rp_no_ack(void *ud, uint16_t pid, uint8_t qos)
{
        /* No device to acknowledge: nothing new is ever published here. */
}

static const struct outbox_ops replayer_outbox_ops = { .ack = rp_no_ack };

static int replayer_on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct replayer *r = userdata;
        const char *why = NULL;

        if (r->done || (r->connected && outbox_spooled(r->outbox) == 0)) {
                if (!r->done)
                        log_notice("spool of \"%s\" delivered", r->client_id);
                replayer_free(r);
                return 0;
        }
        if (r->connected)
                return 0; /* still going: on_publish re-arms */
        upstream_close(r->up, false);
        r->up = NULL;
        struct upstream_params params = {
                .client_id = r->client_id,
                .username = r->username,
                .password = r->password,
                .clean_session = true,
                .keepalive = 60,
                .protocol_level = r->protocol_level,
        };
        if (upstream_connect(r->b->upstreams, &params, &replayer_callbacks, r, &r->up, &why) < 0) {
                r->up = NULL;
                replayer_retry(r);
        }
        return 0;
}

int replayer_start(struct bridge *b, const char *path)
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
                .key = path,
                .name = path,
                .spool_path = r->path,
                .spool_max_bytes = cfg->spool.max_bytes_per_device,
                .spool_total = &b->stats.spool_bytes,
                .spool_msgs = &b->stats.spool_messages,
                .spool_total_max = cfg->spool.max_bytes,
                .max_inflight = cfg->limits.max_inflight_messages,
                .max_qos0_bytes = 0,
                .stat_replayed = &b->stats.msgs_replayed,
                .ops = &replayer_outbox_ops,
                .ud = r,
        };
        ret = outbox_new(&p, &r->outbox);
        if (ret < 0 || outbox_spooled(r->outbox) == 0) {
                replayer_free(r);
                return ret < 0 ? ret : 0;
        }
        uint64_t waiting = outbox_spooled(r->outbox);
        const struct spool_meta *m = outbox_spool_meta(r->outbox);
        if (!m) {
                log_warning("spool %s has no record of its device: its messages wait for the device", path);
                replayer_free(r);
                return 0;
        }
        size_t n = strlen(m->client_id) + sizeof "/replay";
        r->client_id = malloc(n);
        r->username = m->username ? strdup(m->username) : NULL;
        r->password = m->password ? strdup(m->password) : NULL;
        r->protocol_level = m->protocol_level;
        ret = sd_event_add_time(b->event, &r->timer, CLOCK_MONOTONIC, 0, 100000, replayer_on_timer, r);
        if (!r->client_id || ret < 0) {
                replayer_free(r);
                return ret < 0 ? ret : -ENOMEM;
        }
        snprintf(r->client_id, n, "%s/replay", m->client_id);
        replayer_arm(r, 1);
        return waiting > 0;
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
                if (n < 7 || strcmp(e->d_name + n - 6, ".spool") != 0)
                        continue;
                char *path = malloc(strlen(dir) + 1 + n + 1);
                if (!path)
                        break;
                sprintf(path, "%s/%s", dir, e->d_name);
                if (replayer_start(b, path) > 0)
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
