/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge.h"
#include "device_info.h"
#include "inventory.h"
#include "session.h"
#include "status.h"

struct render {
        FILE *f;
        bool json;
        unsigned n;
        time_t now;
};

/* RFC 8259 §7: a string with '"', '\' and control characters escaped;
 * CNs, client ids and reasons come from devices. */
static void json_str(FILE *f, const char *s)
{
        if (!s) {
                fputs("null", f);
                return;
        }
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < 0x20 || *p == 0x7f)
                        fprintf(f, "\\u%04x", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

/* Printable for a terminal: control characters as '?'. */
static void text_str(FILE *f, const char *s, int width)
{
        int n = 0;

        for (const unsigned char *p = (const unsigned char *) (s ? s : ""); *p; p++, n++)
                fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
        for (; n < width; n++)
                fputc(' ', f);
}

static void utc(char *buf, size_t len, time_t t)
{
        struct tm tm;

        if (t <= 0 || !gmtime_r(&t, &tm))
                snprintf(buf, len, "-");
        else
                strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void device_json(const struct device_view *v, void *u)
{
        struct render *r = u;
        const struct device_info *i = v->info;
        FILE *f = r->f;

        fprintf(f, "%s{\"cn\":", r->n++ ? "," : "");
        json_str(f, v->cn);
        fputs(",\"client_id\":", f);
        json_str(f, v->client_id);
        fputs(",\"address\":", f);
        json_str(f, v->peer);
        fprintf(f, ",\"connected\":%s,\"since\":%lld,\"sni\":", v->connected ? "true" : "false",
                (long long) v->since);
        json_str(f, i->sni[0] ? i->sni : NULL);
        fputs(",\"tls_version\":", f);
        json_str(f, i->tls_version);
        fputs(",\"cipher\":", f);
        json_str(f, i->cipher);
        if (i->max_fragment)
                fprintf(f, ",\"max_fragment_length\":%u", i->max_fragment);
        else
                fputs(",\"max_fragment_length\":null", f);
        fprintf(f, ",\"resumed\":%s", i->resumed ? "true" : "false");
        if (i->has_cert)
                fprintf(f, ",\"certificate_expiry\":%lld", (long long) i->cert_not_after);
        else
                fputs(",\"certificate_expiry\":null", f);
        fprintf(f, ",\"messages_from_device\":%llu,\"messages_to_device\":%llu,\"last_activity\":%lld}",
                (unsigned long long) v->msgs_from_device, (unsigned long long) v->msgs_to_device,
                (long long) v->last_activity);
}

static void device_text(const struct device_view *v, void *u)
{
        struct render *r = u;
        const struct device_info *i = v->info;
        char since[32], exp[32], mfl[16];
        FILE *f = r->f;

        utc(since, sizeof since, v->since);
        utc(exp, sizeof exp, i->cert_not_after);
        if (exp[0] != '-')
                exp[10] = '\0'; /* the date is enough */
        snprintf(mfl, sizeof mfl, "%u", i->max_fragment);
        r->n++;
        fputs("  ", f);
        text_str(f, v->cn[0] ? v->cn : "-", 16);
        fputc(' ', f);
        text_str(f, v->client_id ? v->client_id : "-", 16);
        fputc(' ', f);
        text_str(f, v->peer, 22);
        fprintf(f, " %s  %-7s %-29s %-5s %-7s %-10s %6llu %6llu  %llds ago%s\n", since, i->tls_version, i->cipher,
                i->max_fragment ? mfl : "-", i->resumed ? "resumed" : "full", exp,
                (unsigned long long) v->msgs_from_device, (unsigned long long) v->msgs_to_device,
                (long long) (r->now > v->last_activity ? r->now - v->last_activity : 0),
                v->connected ? "" : " (not connected yet)");
}

static void failure_json(const struct inventory_failure *x, void *u)
{
        struct render *r = u;

        fprintf(r->f, "%s{\"time\":%lld,\"address\":", r->n++ ? "," : "", (long long) x->when);
        json_str(r->f, x->peer);
        fputs(",\"subject\":", r->f);
        json_str(r->f, x->subject[0] ? x->subject : NULL);
        fputs(",\"reason\":", r->f);
        json_str(r->f, x->reason);
        fputc('}', r->f);
}

static void failure_text(const struct inventory_failure *x, void *u)
{
        struct render *r = u;
        char when[32];

        utc(when, sizeof when, x->when);
        r->n++;
        fprintf(r->f, "  %s  ", when);
        text_str(r->f, x->peer, 22);
        fputs(" ", r->f);
        text_str(r->f, x->subject[0] ? x->subject : "(no certificate)", 0);
        fputs(": ", r->f);
        text_str(r->f, x->reason, 0);
        fputc('\n', r->f);
}

static void cert_json(enum inventory_kind kind, const char *name, time_t not_after, void *u)
{
        struct render *r = u;

        fprintf(r->f, "%s{\"kind\":\"%s\",\"name\":", r->n++ ? "," : "", inventory_kind_name(kind));
        json_str(r->f, name);
        fprintf(r->f, ",\"expiry\":%lld}", (long long) not_after);
}

static void cert_text(enum inventory_kind kind, const char *name, time_t not_after, void *u)
{
        struct render *r = u;
        char when[32];

        utc(when, sizeof when, not_after);
        r->n++;
        fprintf(r->f, "  %-8s ", inventory_kind_name(kind));
        text_str(r->f, name, 32);
        fprintf(r->f, " %s UTC (%lld days)\n", when, (long long) ((not_after - r->now) / 86400));
}

int status_render(struct bridge *b, bool json, char **out, size_t *len)
{
        struct render r = { .json = json, .now = time(NULL) };
        char *buf = NULL;
        size_t size = 0;

        r.f = open_memstream(&buf, &size);
        if (!r.f)
                return -ENOMEM;
        if (json) {
                fputs("{\"devices\":[", r.f);
                session_foreach_device(b, device_json, &r);
                fputs("],\"handshake_failures\":[", r.f);
                r.n = 0;
                inventory_foreach_failure(b->inventory, failure_json, &r);
                fputs("],\"certificates\":[", r.f);
                r.n = 0;
                inventory_foreach_cert(b->inventory, cert_json, &r);
                fputs("]}\n", r.f);
        } else {
                fprintf(r.f, "\ndevices (times UTC):\n  %-16s %-16s %-22s %-19s  %-7s %-29s %-5s %-7s %-10s %6s %6s  %s\n",
                        "CN", "CLIENT ID", "ADDRESS", "SINCE", "TLS", "SUITE", "MFL", "SESSION", "CERT UNTIL",
                        "IN", "OUT", "LAST ACTIVITY");
                session_foreach_device(b, device_text, &r);
                if (!r.n)
                        fputs("  (none)\n", r.f);
                fputs("\nrecent TLS handshake failures:\n", r.f);
                r.n = 0;
                inventory_foreach_failure(b->inventory, failure_text, &r);
                if (!r.n)
                        fputs("  (none)\n", r.f);
                fputs("\ncertificate expiry:\n", r.f);
                inventory_foreach_cert(b->inventory, cert_text, &r);
        }
        if (fclose(r.f) != 0 || !buf) {
                free(buf);
                return -ENOMEM;
        }
        *out = buf;
        *len = size;
        return 0;
}
