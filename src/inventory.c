/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "bridge.h"
#include "inventory.h"
#include "log.h"
#include "tls_server.h"

struct seen_cert {
        char cn[256];
        time_t not_after;
        time_t last_seen;
        long warned_day;       /* days since the epoch of the last warning, -1 = never */
};

struct inventory {
        struct bridge *b;
        sd_event_source *timer;
        struct seen_cert *dev;
        size_t n_dev, cap_dev;
        struct inventory_failure fail[INVENTORY_MAX_FAILURES];
        size_t fail_next, n_fail;
};

const char *inventory_kind_name(enum inventory_kind kind)
{
        return kind == INVENTORY_LISTENER ? "listener" : kind == INVENTORY_CA ? "ca" : "device";
}

static long day_of(time_t t)
{
        return (long) (t / 86400);
}

static unsigned warn_days(const struct inventory *inv)
{
        return inv->b->cfg.listener.expiry_warning_days;
}

/* Within the window (or past it)? */
static bool due(const struct inventory *inv, time_t not_after, time_t now)
{
        unsigned days = warn_days(inv);

        return days > 0 && not_after > 0 && not_after - now < (time_t) days * 86400;
}

static void warn(enum inventory_kind kind, const char *name, const char *file, time_t not_after, time_t now)
{
        char when[32] = "?";
        struct tm tm;

        if (gmtime_r(&not_after, &tm))
                strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
        if (not_after <= now)
                log_warning("%s certificate \"%s\"%s%s EXPIRED on %s: devices refuse it (BR_ERR_X509_EXPIRED) "
                            "or are refused", inventory_kind_name(kind), name, file ? " in " : "", file ? file : "",
                            when);
        else
                log_warning("%s certificate \"%s\"%s%s expires in %ld day%s (%s): renew it%s",
                            inventory_kind_name(kind), name, file ? " in " : "", file ? file : "",
                            (long) ((not_after - now) / 86400), (not_after - now) / 86400 == 1 ? "" : "s", when,
                            kind == INVENTORY_LISTENER ? " (mqtt-edge-bridge-setup --renew)" : "");
}

void inventory_check(struct inventory *inv)
{
        const struct tls_server_certs *cs;
        time_t now = time(NULL);

        if (!inv || warn_days(inv) == 0)
                return;
        cs = tls_server_ctx_certs(inv->b->device_ctx);
        for (size_t i = 0; cs && i < cs->n; i++)
                if (due(inv, cs->v[i].not_after, now))
                        warn(INVENTORY_LISTENER, cs->v[i].cn, cs->v[i].file, cs->v[i].not_after, now);
        for (size_t i = 0; cs && i < cs->n_ca; i++)
                if (due(inv, cs->ca[i].not_after, now))
                        warn(INVENTORY_CA, cs->ca[i].name, inv->b->cfg.listener.cafile, cs->ca[i].not_after, now);
        for (size_t i = 0; i < inv->n_dev; i++) {
                struct seen_cert *c = &inv->dev[i];
                if (due(inv, c->not_after, now) && c->warned_day != day_of(now)) {
                        warn(INVENTORY_DEVICE, c->cn, NULL, c->not_after, now);
                        c->warned_day = day_of(now);
                }
        }
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        inventory_check(userdata);
        sd_event_source_set_time(s, usec + INVENTORY_CHECK_USEC);
        return 0;
}

int inventory_new(struct bridge *b, struct inventory **out)
{
        struct inventory *inv = calloc(1, sizeof *inv);
        int r;

        if (!inv)
                return -ENOMEM;
        inv->b = b;
        r = sd_event_add_time_relative(b->event, &inv->timer, CLOCK_MONOTONIC, INVENTORY_CHECK_USEC,
                                       60 * 1000000ULL, on_timer, inv);
        if (r < 0) {
                free(inv);
                return r;
        }
        sd_event_source_set_enabled(inv->timer, SD_EVENT_ON);
        inventory_check(inv);
        *out = inv;
        return 0;
}

void inventory_free(struct inventory *inv)
{
        if (!inv)
                return;
        sd_event_source_disable_unref(inv->timer);
        free(inv->dev);
        free(inv);
}

void inventory_device_seen(struct inventory *inv, const char *cn, time_t not_after)
{
        time_t now = time(NULL);
        struct seen_cert *c = NULL;

        if (!inv || !cn || !*cn || not_after == 0)
                return;
        for (size_t i = 0; i < inv->n_dev; i++)
                if (strcmp(inv->dev[i].cn, cn) == 0) {
                        c = &inv->dev[i];
                        break;
                }
        if (!c) {
                if (inv->n_dev == inv->cap_dev && inv->cap_dev < INVENTORY_MAX_DEVICES) {
                        size_t cap = inv->cap_dev ? inv->cap_dev * 2 : 16;
                        struct seen_cert *v = realloc(inv->dev, cap * sizeof *v);
                        if (v) {
                                inv->dev = v;
                                inv->cap_dev = cap;
                        }
                }
                if (inv->n_dev < inv->cap_dev)
                        c = &inv->dev[inv->n_dev++];
                else {
                        /* Full (or out of memory): forget the one seen longest ago. */
                        size_t old = 0;
                        for (size_t i = 1; i < inv->n_dev; i++)
                                if (inv->dev[i].last_seen < inv->dev[old].last_seen)
                                        old = i;
                        if (inv->n_dev == 0)
                                return;
                        c = &inv->dev[old];
                }
                snprintf(c->cn, sizeof c->cn, "%s", cn);
                c->warned_day = -1;
        } else if (c->not_after != not_after)
                c->warned_day = -1; /* a new certificate under the same name */
        c->not_after = not_after;
        c->last_seen = now;
        if (due(inv, not_after, now) && c->warned_day != day_of(now)) {
                warn(INVENTORY_DEVICE, c->cn, NULL, not_after, now);
                c->warned_day = day_of(now);
        }
}

void inventory_handshake_failed(struct inventory *inv, const char *peer, const char *subject, const char *reason)
{
        struct inventory_failure *f;

        if (!inv)
                return;
        f = &inv->fail[inv->fail_next];
        f->when = time(NULL);
        snprintf(f->peer, sizeof f->peer, "%s", peer ? peer : "");
        snprintf(f->subject, sizeof f->subject, "%s", subject ? subject : "");
        snprintf(f->reason, sizeof f->reason, "%s", reason ? reason : "");
        inv->fail_next = (inv->fail_next + 1) % INVENTORY_MAX_FAILURES;
        if (inv->n_fail < INVENTORY_MAX_FAILURES)
                inv->n_fail++;
}

void inventory_foreach_cert(const struct inventory *inv,
                            void (*fn)(enum inventory_kind kind, const char *name, time_t not_after, void *u),
                            void *u)
{
        const struct tls_server_certs *cs;

        if (!inv)
                return;
        cs = tls_server_ctx_certs(inv->b->device_ctx);
        for (size_t i = 0; cs && i < cs->n; i++)
                fn(INVENTORY_LISTENER, cs->v[i].cn, cs->v[i].not_after, u);
        for (size_t i = 0; cs && i < cs->n_ca; i++)
                fn(INVENTORY_CA, cs->ca[i].name, cs->ca[i].not_after, u);
        for (size_t i = 0; i < inv->n_dev; i++)
                fn(INVENTORY_DEVICE, inv->dev[i].cn, inv->dev[i].not_after, u);
}

void inventory_foreach_failure(const struct inventory *inv,
                               void (*fn)(const struct inventory_failure *f, void *u), void *u)
{
        if (!inv)
                return;
        size_t start = (inv->fail_next + INVENTORY_MAX_FAILURES - inv->n_fail) % INVENTORY_MAX_FAILURES;
        for (size_t i = 0; i < inv->n_fail; i++)
                fn(&inv->fail[(start + i) % INVENTORY_MAX_FAILURES], u);
}
