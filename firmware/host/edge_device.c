/* SPDX-License-Identifier: MIT */
/*
 * edge-device — a simulated ESP8266 on the host: the firmware's MQTT core
 * (firmware/core) over a BearSSL transport configured like the device's
 * BearSSL::WiFiClientSecure (tls_transport.h). Integration tests and
 * benchmarks drive it; its stdout is one "event key=value..." per line.
 *
 * Exit status: 0 success, 1 timeout/other, 2 TLS failure, 3 CONNACK
 * refused, 4 protocol error from the server.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "br_creds.h"
#include "br_errors.h"
#include "br_names.h"
#include "esp8266_profile.h"
#include "mqtt_client.h"
#include "tls_transport.h"

#define MAX_LIST 16

enum end_mode { END_DISCONNECT, END_ABRUPT, END_SILENT };

struct options {
        const char *host, *port, *server_name, *ca, *cert, *key;
        bool server_name_set;
        const char *client_id, *username, *password;
        bool no_clean;
        unsigned keepalive;
        const char *will_topic, *will_payload;
        unsigned will_qos;
        bool will_retain;
        const char *birth_topic, *birth_payload;
        const char *subs[MAX_LIST];
        uint8_t sub_qos[MAX_LIST];
        size_t n_subs;
        const char *unsubs[MAX_LIST];
        size_t n_unsubs;
        char *pub_topic[MAX_LIST];
        const char *pub_payload[MAX_LIST];
        size_t n_pubs;
        unsigned long count;
        const char *topic;
        unsigned qos;
        bool retain;
        unsigned long interval_ms;
        unsigned long expect;
        double timeout_s;
        unsigned long linger_ms;
        enum end_mode end;
        unsigned long reconnects;
        bool coalesce;
        unsigned long mfl, recv_buf;
        unsigned protocol;
        unsigned long retry_ms;
        unsigned long connect_timeout_ms;
        bool no_resume, quiet;
        uint16_t suites[MAX_LIST];
        size_t n_suites;
};

struct app {
        struct options o;
        struct br_creds creds;
        struct tls_transport tls;
        struct edge_transport tp;
        struct mqtt_client client;

        int exit_code;            /* -1 while running */
        bool connack_ok;          /* CONNACK 0 on the current connection */
        bool ever_ready;          /* subscriptions done once: publishing may start */
        bool suback_seen, unsuback_seen;
        bool work_sent_early;     /* --coalesce: queued at TRANSPORT_UP */
        bool muted;
        size_t pub_idx;
        unsigned long seq;
        uint64_t next_pub_at;
        unsigned long sent, acked, received;
        unsigned connects;
};

static struct app g_app; /* the client is ~6 KB: not on the stack */

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

static uint64_t now_ms(void)
{
        return tls_monotonic_ms();
}

static uint64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const char *errno_name(int err)
{
        const char *n = strerrorname_np(-err); /* glibc >= 2.32 */

        return n ? n : "E?";
}

static void print_payload_line(const struct mqtt_publish *p)
{
        /* Printable ASCII as is, everything else (and '\\') escaped, so a
         * message is always exactly one line. */
        printf("message topic=%.*s qos=%u retain=%d dup=%d payload=", (int)p->topic.len,
               (const char *)p->topic.data, p->qos, p->retain, p->dup);
        for (size_t i = 0; i < p->payload_len; i++) {
                uint8_t ch = p->payload[i];

                if (ch >= 0x20 && ch < 0x7f && ch != '\\')
                        putchar(ch);
                else
                        printf("\\x%02x", ch);
        }
        putchar('\n');
        fflush(stdout);
}

static void app_finish(struct app *a, int code)
{
        if (a->exit_code < 0)
                a->exit_code = code;
}

static void app_subscribe(struct app *a)
{
        int r;

        if (a->o.n_subs) {
                r = mqtt_client_subscribe(&a->client, a->o.subs, a->o.sub_qos, a->o.n_subs);
                if (r < 0) {
                        fprintf(stderr, "edge-device: subscribe: %s\n", strerror(-r));
                        app_finish(a, 1);
                }
        }
        if (a->o.n_unsubs) {
                /* §4.6: the server handles our packets in order, so the
                 * UNSUBSCRIBE may follow the SUBSCRIBE without waiting. */
                r = mqtt_client_unsubscribe(&a->client, a->o.unsubs, a->o.n_unsubs);
                if (r < 0) {
                        fprintf(stderr, "edge-device: unsubscribe: %s\n", strerror(-r));
                        app_finish(a, 1);
                }
        }
}

/* Hand as many application messages to the client as it takes now. */
static void app_publish(struct app *a)
{
        const struct options *o = &a->o;
        uint64_t now = now_ms();
        int r;

        while (a->pub_idx < o->n_pubs) {
                const char *pl = o->pub_payload[a->pub_idx];

                r = mqtt_client_publish(&a->client, o->pub_topic[a->pub_idx], pl, strlen(pl), (uint8_t)o->qos,
                                        o->retain);
                if (r == -ENOBUFS || r == -ENOTCONN)
                        return; /* outbox / tx buffer full, or not connected: later */
                if (r < 0) {
                        fprintf(stderr, "edge-device: publish to %s: %s\n", o->pub_topic[a->pub_idx],
                                strerror(-r));
                        app_finish(a, 1);
                        return;
                }
                a->pub_idx++;
                a->sent++;
        }
        while (a->seq < o->count && now >= a->next_pub_at) {
                char payload[64];
                int n = snprintf(payload, sizeof(payload), "%lu %" PRIu64, a->seq + 1, mono_ns());

                r = mqtt_client_publish(&a->client, o->topic, payload, (size_t)n, (uint8_t)o->qos, o->retain);
                if (r == -ENOBUFS || r == -ENOTCONN)
                        return;
                if (r < 0) {
                        fprintf(stderr, "edge-device: publish to %s: %s\n", o->topic, strerror(-r));
                        app_finish(a, 1);
                        return;
                }
                a->seq++;
                a->sent++;
                if (o->interval_ms) {
                        a->next_pub_at = now + o->interval_ms;
                        return;
                }
        }
}

static bool app_work_done(const struct app *a)
{
        const struct options *o = &a->o;

        if (!a->ever_ready)
                return false;
        if (a->pub_idx < o->n_pubs || a->seq < o->count)
                return false;
        if (o->qos > 0 && a->acked < a->sent)
                return false;
        if (o->qos == 0 && mqtt_client_tx_pending(&a->client) > 0)
                return false;
        if (mqtt_client_inflight(&a->client) > 0)
                return false; /* the birth message too */
        if (a->received < o->expect)
                return false;
        if (o->n_subs && !a->suback_seen)
                return false;
        if (o->n_unsubs && !a->unsuback_seen)
                return false;
        return true;
}

static void on_event(void *user, const struct mqtt_client_event *ev)
{
        struct app *a = user;
        char nb[96];

        switch (ev->type) {
        case MQTT_CLIENT_EV_TRANSPORT_UP:
                a->connects++;
                a->connack_ok = false;
                out("tls ok version=%s suite=%s resumed=%d mfl=%u", br_version_name(a->tls.info.version),
                    br_suite_name(a->tls.info.suite), a->tls.info.resumed, a->tls.info.mfl);
                if (a->o.coalesce && a->connects == 1) {
                        /* §3.1.4 lets a client send before CONNACK: CONNECT,
                         * SUBSCRIBE and PUBLISH leave in one poll, one write,
                         * one flush — one TLS record if they fit the MFL. */
                        app_subscribe(a);
                        a->ever_ready = true;
                        a->work_sent_early = true;
                        app_publish(a);
                }
                break;

        case MQTT_CLIENT_EV_CONNECT_FAILED:
                if (a->tls.info.br_err && a->tls.info.br_err != BR_ERR_IO) {
                        const char *name = br_error_name(a->tls.info.br_err, nb, sizeof(nb));

                        out("tls error code=%d name=%s", a->tls.info.br_err, name);
                        fprintf(stderr, "edge-device: TLS handshake with %s:%s failed: %s\n", a->o.host,
                                a->o.port, name);
                        mqtt_client_abort(&a->client);
                        app_finish(a, 2);
                        break;
                }
                out("connect failed err=%s retry_ms=%" PRIu32,
                    a->tls.info.br_err ? "BR_ERR_IO" : errno_name(ev->err), ev->retry_in_ms);
                break;

        case MQTT_CLIENT_EV_CONNACK:
                out("connack rc=%u session_present=%d", ev->return_code, ev->session_present);
                if (ev->return_code != 0) {
                        fprintf(stderr, "edge-device: CONNACK refused the connection (return code %u)\n",
                                ev->return_code);
                        mqtt_client_abort(&a->client);
                        app_finish(a, 3);
                        break;
                }
                a->connack_ok = true;
                if (a->work_sent_early && a->connects == 1)
                        break;
                /* Subscribe after every CONNACK that did not keep our
                 * session (§3.2.2.2): a clean session has none. */
                if (!a->ever_ready || !ev->session_present) {
                        a->suback_seen = a->unsuback_seen = false;
                        app_subscribe(a);
                }
                if (!a->o.n_subs)
                        a->ever_ready = true;
                break;

        case MQTT_CLIENT_EV_SUBACK:
                printf("suback id=%u codes=", ev->packet_id);
                for (size_t i = 0; i < ev->n_codes; i++)
                        printf("%s%u", i ? "," : "", ev->codes[i]);
                putchar('\n');
                fflush(stdout);
                a->suback_seen = true;
                a->ever_ready = true;
                break;

        case MQTT_CLIENT_EV_UNSUBACK:
                out("unsuback id=%u", ev->packet_id);
                a->unsuback_seen = true;
                break;

        case MQTT_CLIENT_EV_PUBACK:
        case MQTT_CLIENT_EV_PUBCOMP:
                if (ev->internal) {
                        out("birth acked id=%u", ev->packet_id);
                        break;
                }
                a->acked++;
                if (!a->o.quiet)
                        out("%s id=%u", ev->type == MQTT_CLIENT_EV_PUBACK ? "puback" : "pubcomp", ev->packet_id);
                break;

        case MQTT_CLIENT_EV_MESSAGE:
                a->received++;
                if (!a->o.quiet)
                        print_payload_line(ev->publish);
                break;

        case MQTT_CLIENT_EV_DROPPED:
                out("dropped reason=too-large");
                break;

        case MQTT_CLIENT_EV_CONNECTION_LOST:
                a->connack_ok = false;
                if (a->muted) {
                        out("closed by=server");
                        break;
                }
                out("lost err=%s reason=%s retry_ms=%" PRIu32, errno_name(ev->err), ev->why ? ev->why : "-",
                    ev->retry_in_ms);
                if (ev->err == -EBADMSG || ev->err == -EPROTO) {
                        fprintf(stderr, "edge-device: protocol error from the server: %s\n",
                                ev->why ? ev->why : "?");
                        mqtt_client_abort(&a->client);
                        app_finish(a, 4);
                }
                break;

        case MQTT_CLIENT_EV_CLOSED:
                break;
        }
}

/* Wait for the socket or a timer; at most max_ms. */
static void app_wait(struct app *a, uint64_t max_ms)
{
        struct pollfd pfd = { .fd = tls_transport_fd(&a->tls), .events = POLLIN };
        uint32_t t = mqtt_client_next_timeout_ms(&a->client);

        if (t < max_ms)
                max_ms = t;
        if (max_ms > 1000)
                max_ms = 1000;
        if (pfd.fd >= 0 && (br_ssl_engine_current_state(&a->tls.cc.eng) & BR_SSL_RECVAPP))
                max_ms = 0; /* decrypted bytes the client has not taken yet */
        if (tls_transport_want_write(&a->tls))
                pfd.events |= POLLOUT;
        (void)poll(&pfd, pfd.fd >= 0 ? 1 : 0, (int)max_ms);
}

/* Run the client until cond(a) or the deadline; returns true if cond. */
static bool app_run_until(struct app *a, bool (*cond)(struct app *), uint64_t deadline)
{
        for (;;) {
                uint64_t now;

                mqtt_client_poll(&a->client);
                if (a->exit_code >= 0)
                        return false;
                if (cond(a))
                        return true;
                now = now_ms();
                if (now >= deadline)
                        return false;
                app_wait(a, deadline - now);
        }
}

static bool cond_stopped(struct app *a)
{
        return mqtt_client_get_state(&a->client) == MQTT_CLIENT_STOPPED;
}

static bool cond_connack(struct app *a)
{
        return a->connack_ok;
}

static bool cond_never(struct app *a)
{
        (void)a;
        return false;
}

static void app_end_connection(struct app *a, enum end_mode mode, uint64_t deadline)
{
        switch (mode) {
        case END_DISCONNECT:
                mqtt_client_disconnect(&a->client);
                if (!app_run_until(a, cond_stopped, deadline))
                        mqtt_client_abort(&a->client);
                break;
        case END_ABRUPT:
                mqtt_client_abort(&a->client);
                break;
        case END_SILENT:
                /* Keep reading, send nothing: the server's keepalive timer
                 * (1.5 × keepalive, §3.1.2.10) must fire and close us. */
                a->muted = true;
                mqtt_client_mute(&a->client);
                (void)app_run_until(a, cond_stopped, deadline);
                mqtt_client_abort(&a->client);
                break;
        }
}

static int app_main(struct app *a)
{
        const struct options *o = &a->o;
        uint64_t start = now_ms();
        uint64_t deadline = start + (uint64_t)(o->timeout_s * 1000.0);
        uint64_t linger_until = 0;

        a->tls.hard_deadline_ms = deadline;
        mqtt_client_start(&a->client);

        for (;;) {
                uint64_t now;

                mqtt_client_poll(&a->client);
                if (a->exit_code >= 0)
                        return a->exit_code;
                if (a->ever_ready && a->exit_code < 0)
                        app_publish(a);
                if (a->exit_code >= 0)
                        return a->exit_code;

                now = now_ms();
                if (app_work_done(a)) {
                        if (!linger_until)
                                linger_until = now + o->linger_ms;
                        if (now >= linger_until)
                                break;
                }
                if (now >= deadline) {
                        out("timeout sent=%lu acked=%lu received=%lu", a->sent, a->acked, a->received);
                        fprintf(stderr, "edge-device: not done after %.1f s\n", o->timeout_s);
                        mqtt_client_abort(&a->client);
                        return 1;
                }
                {
                        uint64_t w = deadline - now;

                        if (linger_until && linger_until - now < w)
                                w = linger_until > now ? linger_until - now : 0;
                        if (a->ever_ready && a->seq < o->count && a->next_pub_at > now &&
                            a->next_pub_at - now < w)
                                w = a->next_pub_at - now;
                        if (a->ever_ready && a->seq < o->count && a->next_pub_at <= now)
                                w = 0;
                        app_wait(a, w);
                }
        }

        out("done sent=%lu acked=%lu received=%lu", a->sent, a->acked, a->received);

        if (o->end == END_SILENT) {
                app_end_connection(a, END_SILENT, deadline);
                return a->exit_code >= 0 ? a->exit_code : 0;
        }
        app_end_connection(a, o->end, deadline);

        for (unsigned long i = 1; i <= o->reconnects; i++) {
                out("reconnect n=%lu", i);
                mqtt_client_start(&a->client);
                if (!app_run_until(a, cond_connack, deadline)) {
                        if (a->exit_code >= 0)
                                return a->exit_code;
                        out("timeout sent=%lu acked=%lu received=%lu", a->sent, a->acked, a->received);
                        fprintf(stderr, "edge-device: reconnect %lu not done in time\n", i);
                        mqtt_client_abort(&a->client);
                        return 1;
                }
                /* Let the birth message and resends go out before we leave. */
                (void)app_run_until(a, cond_never, now_ms() + 20 < deadline ? now_ms() + 20 : deadline);
                app_end_connection(a, o->end, deadline);
        }
        return a->exit_code >= 0 ? a->exit_code : 0;
}

static void usage(FILE *f)
{
        fputs("usage: edge-device --host H --port P [--server-name NAME] --ca CA.pem --cert C.pem --key K.pem\n"
              "  [--client-id ID] [--username U] [--password P] [--no-clean] [--keepalive S]\n"
              "  [--will-topic T --will-payload P [--will-qos Q] [--will-retain]]\n"
              "  [--birth-topic T] [--birth-payload P]\n"
              "  [--sub FILTER[:QOS]]... [--unsub FILTER]... [--pub TOPIC=PAYLOAD]...\n"
              "  [--count N --topic T] [--qos Q] [--retain] [--interval-ms MS]\n"
              "  [--expect N] [--timeout S] [--linger-ms MS] [--end disconnect|abrupt|silent]\n"
              "  [--reconnects N] [--coalesce] [--mfl 0|512|1024|...] [--recv-buf N]\n"
              "  [--protocol 3|4] [--retry-ms MS] [--connect-timeout-ms MS] [--no-resume] [--quiet]\n"
              "  [--suite ECDHE_RSA_WITH_AES_128_GCM_SHA256]... (offer only these; default the core's list)\n"
              "  --cert/--key may be left out: no client certificate\n",
              f);
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *v)
{
        char *end;
        unsigned long x;

        errno = 0;
        x = strtoul(s, &end, 10);
        if (errno || end == s || *end || x > max)
                return -EINVAL;
        *v = x;
        return 0;
}

enum {
        OPT_HOST = 256, OPT_PORT, OPT_SERVER_NAME, OPT_CA, OPT_CERT, OPT_KEY, OPT_CLIENT_ID, OPT_USERNAME,
        OPT_PASSWORD, OPT_NO_CLEAN, OPT_KEEPALIVE, OPT_WILL_TOPIC, OPT_WILL_PAYLOAD, OPT_WILL_QOS,
        OPT_WILL_RETAIN, OPT_BIRTH_TOPIC, OPT_BIRTH_PAYLOAD, OPT_SUB, OPT_UNSUB, OPT_PUB, OPT_COUNT, OPT_TOPIC,
        OPT_QOS, OPT_RETAIN, OPT_INTERVAL, OPT_EXPECT, OPT_TIMEOUT, OPT_LINGER, OPT_END, OPT_RECONNECTS,
        OPT_COALESCE, OPT_MFL, OPT_RECV_BUF, OPT_PROTOCOL, OPT_RETRY_MS, OPT_CONNECT_TIMEOUT, OPT_NO_RESUME,
        OPT_QUIET, OPT_HELP, OPT_SUITE,
};

static const struct option long_opts[] = {
        { "host", required_argument, NULL, OPT_HOST },
        { "port", required_argument, NULL, OPT_PORT },
        { "server-name", required_argument, NULL, OPT_SERVER_NAME },
        { "ca", required_argument, NULL, OPT_CA },
        { "cert", required_argument, NULL, OPT_CERT },
        { "key", required_argument, NULL, OPT_KEY },
        { "client-id", required_argument, NULL, OPT_CLIENT_ID },
        { "username", required_argument, NULL, OPT_USERNAME },
        { "password", required_argument, NULL, OPT_PASSWORD },
        { "no-clean", no_argument, NULL, OPT_NO_CLEAN },
        { "keepalive", required_argument, NULL, OPT_KEEPALIVE },
        { "will-topic", required_argument, NULL, OPT_WILL_TOPIC },
        { "will-payload", required_argument, NULL, OPT_WILL_PAYLOAD },
        { "will-qos", required_argument, NULL, OPT_WILL_QOS },
        { "will-retain", no_argument, NULL, OPT_WILL_RETAIN },
        { "birth-topic", required_argument, NULL, OPT_BIRTH_TOPIC },
        { "birth-payload", required_argument, NULL, OPT_BIRTH_PAYLOAD },
        { "sub", required_argument, NULL, OPT_SUB },
        { "unsub", required_argument, NULL, OPT_UNSUB },
        { "pub", required_argument, NULL, OPT_PUB },
        { "count", required_argument, NULL, OPT_COUNT },
        { "topic", required_argument, NULL, OPT_TOPIC },
        { "qos", required_argument, NULL, OPT_QOS },
        { "retain", no_argument, NULL, OPT_RETAIN },
        { "interval-ms", required_argument, NULL, OPT_INTERVAL },
        { "expect", required_argument, NULL, OPT_EXPECT },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "linger-ms", required_argument, NULL, OPT_LINGER },
        { "end", required_argument, NULL, OPT_END },
        { "reconnects", required_argument, NULL, OPT_RECONNECTS },
        { "coalesce", no_argument, NULL, OPT_COALESCE },
        { "mfl", required_argument, NULL, OPT_MFL },
        { "recv-buf", required_argument, NULL, OPT_RECV_BUF },
        { "protocol", required_argument, NULL, OPT_PROTOCOL },
        { "retry-ms", required_argument, NULL, OPT_RETRY_MS },
        { "connect-timeout-ms", required_argument, NULL, OPT_CONNECT_TIMEOUT },
        { "no-resume", no_argument, NULL, OPT_NO_RESUME },
        { "quiet", no_argument, NULL, OPT_QUIET },
        { "help", no_argument, NULL, OPT_HELP },
        { "suite", required_argument, NULL, OPT_SUITE },
        { NULL, 0, NULL, 0 },
};

static int parse_args(struct options *o, int argc, char **argv)
{
        unsigned long v;
        char *colon, *eq;
        int c;

        *o = (struct options){
                .keepalive = 60, .timeout_s = 10, .end = END_DISCONNECT, .mfl = 512, .recv_buf = 16384,
                .protocol = 4, .retry_ms = 5000, .connect_timeout_ms = 15000,
        };

#define NUM(max, dst)                                                                   \
        do {                                                                            \
                if (parse_ulong(optarg, (max), &v) < 0) {                               \
                        fprintf(stderr, "edge-device: bad value for --%s: %s\n",         \
                                long_opts[c - OPT_HOST].name, optarg);                  \
                        return -EINVAL;                                                 \
                }                                                                       \
                (dst) = v;                                                              \
        } while (0)

        while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
                switch (c) {
                case OPT_HOST: o->host = optarg; break;
                case OPT_PORT: o->port = optarg; break;
                case OPT_SERVER_NAME: o->server_name = optarg; o->server_name_set = true; break;
                case OPT_CA: o->ca = optarg; break;
                case OPT_CERT: o->cert = optarg; break;
                case OPT_KEY: o->key = optarg; break;
                case OPT_CLIENT_ID: o->client_id = optarg; break;
                case OPT_USERNAME: o->username = optarg; break;
                case OPT_PASSWORD: o->password = optarg; break;
                case OPT_NO_CLEAN: o->no_clean = true; break;
                case OPT_KEEPALIVE: NUM(65535, o->keepalive); break;
                case OPT_WILL_TOPIC: o->will_topic = optarg; break;
                case OPT_WILL_PAYLOAD: o->will_payload = optarg; break;
                case OPT_WILL_QOS: NUM(2, o->will_qos); break;
                case OPT_WILL_RETAIN: o->will_retain = true; break;
                case OPT_BIRTH_TOPIC: o->birth_topic = optarg; break;
                case OPT_BIRTH_PAYLOAD: o->birth_payload = optarg; break;
                case OPT_SUB:
                        if (o->n_subs == MAX_LIST)
                                goto too_many;
                        o->sub_qos[o->n_subs] = 0;
                        colon = strrchr(optarg, ':');
                        if (colon && colon[1] >= '0' && colon[1] <= '2' && colon[2] == '\0') {
                                o->sub_qos[o->n_subs] = (uint8_t)(colon[1] - '0');
                                *colon = '\0';
                        }
                        o->subs[o->n_subs++] = optarg;
                        break;
                case OPT_UNSUB:
                        if (o->n_unsubs == MAX_LIST)
                                goto too_many;
                        o->unsubs[o->n_unsubs++] = optarg;
                        break;
                case OPT_PUB:
                        if (o->n_pubs == MAX_LIST)
                                goto too_many;
                        eq = strchr(optarg, '=');
                        if (!eq) {
                                fprintf(stderr, "edge-device: --pub wants TOPIC=PAYLOAD\n");
                                return -EINVAL;
                        }
                        *eq = '\0';
                        o->pub_topic[o->n_pubs] = optarg;
                        o->pub_payload[o->n_pubs++] = eq + 1;
                        break;
                case OPT_COUNT: NUM(ULONG_MAX, o->count); break;
                case OPT_TOPIC: o->topic = optarg; break;
                case OPT_QOS: NUM(2, o->qos); break;
                case OPT_RETAIN: o->retain = true; break;
                case OPT_INTERVAL: NUM(86400000, o->interval_ms); break;
                case OPT_EXPECT: NUM(ULONG_MAX, o->expect); break;
                case OPT_TIMEOUT:
                        o->timeout_s = strtod(optarg, &eq);
                        if (*eq || o->timeout_s <= 0) {
                                fprintf(stderr, "edge-device: bad --timeout %s\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_LINGER: NUM(86400000, o->linger_ms); break;
                case OPT_END:
                        if (strcmp(optarg, "disconnect") == 0)
                                o->end = END_DISCONNECT;
                        else if (strcmp(optarg, "abrupt") == 0)
                                o->end = END_ABRUPT;
                        else if (strcmp(optarg, "silent") == 0)
                                o->end = END_SILENT;
                        else {
                                fprintf(stderr, "edge-device: --end disconnect|abrupt|silent\n");
                                return -EINVAL;
                        }
                        break;
                case OPT_RECONNECTS: NUM(100000, o->reconnects); break;
                case OPT_COALESCE: o->coalesce = true; break;
                case OPT_MFL: NUM(16384, o->mfl); break;
                case OPT_RECV_BUF: NUM(16384, o->recv_buf); break;
                case OPT_PROTOCOL:
                        NUM(4, o->protocol);
                        if (o->protocol != 3 && o->protocol != 4) {
                                fprintf(stderr, "edge-device: --protocol 3|4\n");
                                return -EINVAL;
                        }
                        break;
                case OPT_RETRY_MS: NUM(86400000, o->retry_ms); break;
                case OPT_CONNECT_TIMEOUT: NUM(86400000, o->connect_timeout_ms); break;
                case OPT_NO_RESUME: o->no_resume = true; break;
                case OPT_QUIET: o->quiet = true; break;
                case OPT_SUITE: {
                        size_t i;
                        for (i = 0; i < esp8266_suites_count; i++)
                                if (strcmp(esp8266_suite_name(esp8266_suites[i]), optarg) == 0)
                                        break;
                        if (i == esp8266_suites_count) {
                                fprintf(stderr, "edge-device: --suite %s: not a suite the ESP8266 core offers\n", optarg);
                                return -EINVAL;
                        }
                        if (o->n_suites == MAX_LIST)
                                goto too_many;
                        o->suites[o->n_suites++] = esp8266_suites[i];
                        break;
                }
                case OPT_HELP:
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
#undef NUM
        if (optind < argc) {
                fprintf(stderr, "edge-device: unexpected argument %s\n", argv[optind]);
                return -EINVAL;
        }
        if (!o->host || !o->port || !o->ca) {
                fprintf(stderr, "edge-device: --host, --port and --ca are required\n");
                usage(stderr);
                return -EINVAL;
        }
        if (o->count && !o->topic) {
                fprintf(stderr, "edge-device: --count needs --topic\n");
                return -EINVAL;
        }
        if ((o->will_topic == NULL) != (o->will_payload == NULL)) {
                fprintf(stderr, "edge-device: --will-topic and --will-payload go together\n");
                return -EINVAL;
        }
        if (!o->server_name_set)
                o->server_name = o->host; /* connect(const char *host): the name is checked */
        return 0;

too_many:
        fprintf(stderr, "edge-device: at most %d of each --sub/--unsub/--pub\n", MAX_LIST);
        return -EINVAL;
}

int main(int argc, char **argv)
{
        struct app *a = &g_app;
        struct options *o = &a->o;
        struct tls_transport_config tc;
        struct mqtt_client_config mc;
        char client_id[64], err[256];
        uint32_t seed = 0;
        int r;

        setvbuf(stdout, NULL, _IOLBF, 0);
        signal(SIGPIPE, SIG_IGN);
        a->exit_code = -1;

        if (parse_args(o, argc, argv) < 0)
                return 1;

        r = br_creds_load(&a->creds, o->ca, o->cert, o->key, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "edge-device: %s\n", err);
                return 1;
        }

        tc = (struct tls_transport_config){
                .host = o->host,
                .port = o->port,
                .server_name = o->server_name,
                .creds = &a->creds,
                .recv_size = o->mfl == 0 ? 16384 : o->recv_buf,
                .xmit_size = o->mfl == 0 ? 16384 : o->mfl,
                .connect_timeout_ms = (uint32_t)o->connect_timeout_ms,
                .no_resume = o->no_resume,
                .suites = o->suites,
                .n_suites = o->n_suites,
        };
        r = tls_transport_init(&a->tls, &tc);
        if (r < 0) {
                fprintf(stderr, "edge-device: %s\n", strerror(-r));
                br_creds_free(&a->creds);
                return 1;
        }
        tls_transport_bind(&a->tls, &a->tp);

        if (!o->client_id) {
                snprintf(client_id, sizeof(client_id), "edge-device-%ld", (long)getpid());
                o->client_id = client_id;
        }
        if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
                seed = (uint32_t)getpid() ^ (uint32_t)mono_ns();
        mc = (struct mqtt_client_config){
                .protocol_level = (uint8_t)o->protocol,
                .client_id = o->client_id,
                .username = o->username,
                .password = o->password,
                .clean_session = !o->no_clean,
                .keepalive = (uint16_t)o->keepalive,
                .will_topic = o->will_topic,
                .will_payload = (const uint8_t *)o->will_payload,
                .will_payload_len = o->will_payload ? strlen(o->will_payload) : 0,
                .will_qos = (uint8_t)o->will_qos,
                .will_retain = o->will_retain,
                .birth_topic = o->birth_topic,
                .birth_payload = o->birth_payload,
                .retry_ms = (uint32_t)o->retry_ms,
                .backoff_base_ms = 500,
                .backoff_max_ms = 8000,
                .seed = seed,
        };
        mqtt_client_init(&a->client, &mc, &a->tp, on_event, a);

        r = app_main(a);

        tls_transport_done(&a->tls);
        br_creds_free(&a->creds);
        return r;
}
