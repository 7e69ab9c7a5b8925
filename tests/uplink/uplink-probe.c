/* SPDX-License-Identifier: MIT */
/*
 * uplink-probe — drives one uplink (src/uplink.c) on an sd-event loop
 * through a scenario named on the command line, against a real broker,
 * and prints what happens, one event per line, for
 * tests/integration/test_uplink.py:
 *
 *   connack rc=N sp=N
 *   puback id=N | pubrec id=N | pubcomp id=N | suback id=N codes=Q,...
 *   publish dup=N qos=N retain=N id=N topic=T payload=P
 *   paused | resumed while_paused=N
 *   lost why=REASON            (exit status 3)
 *   done                       (the link is closed and freed)
 *
 * Scenarios:
 *   connect    CONNACK, then close (--close graceful|abrupt)
 *   publish    QoS 0, 1 and 2 on --topic; PUBREC answered with PUBREL
 *   subscribe  SUBSCRIBE --topic at --qos, take --count PUBLISHes, ack
 *              them or not (--ack 1|0), optionally --pause until SIGUSR1
 *   receive    like subscribe, without SUBSCRIBE (a persistent session's)
 *   hold       stay connected --hold seconds, then one QoS 1 PUBLISH that
 *              must be acknowledged (proves the link survived)
 *   flood      --count QoS 1 PUBLISHes of --size bytes, fed while
 *              uplink_writable(), the rest from on_writable (or a
 *              graceful close there: --close-at-writable)
 *   wait       connect and wait for whatever the broker does
 *
 * --again N runs the scenario N more times on the same pool, one link
 * after the other ("again n=K" before each), whatever the previous one
 * did; the exit status is the last link's. --again-cafile, --again-server-
 * name and --again-reload give the pool a new configuration and TLS
 * context first, as a reload does. --host2 adds a second [upstream] host
 * on the same port. With --debug the uplink's log says whether a link's
 * TLS session was resumed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "tls_server.h"
#include "uplink.h"

static struct {
        const char *scenario;
        const char *topic;
        unsigned qos, count, size, hold, timeout;
        bool ack, pause, graceful, close_at_writable, forget_refused;
        struct uplink_params params;
        size_t max_packet;
        unsigned again;
        const char *again_cafile, *again_server_name;
        bool again_reload;
} opt = {
        .topic = "probe/t",
        .qos = 1,
        .count = 1,
        .size = 100,
        .timeout = 20,
        .ack = true,
        .graceful = true,
        .params = { .client_id = "probe", .clean_session = true, .keepalive = 60, .protocol_level = 4,
                    .name = "probe" },
};

static struct {
        sd_event *event;
        struct uplink_pool *pool;
        struct config_upstream *cfg;
        unsigned links;
        struct uplink *u;
        bool closed;
        int status;
        unsigned acked, received, while_paused, sent, writable;
        bool paused;
        uint16_t next_id;
        struct timespec t0;
        double mark_wall, mark_cpu;     /* for "no busy loop" checks */
} st;

static double clock_ms(clockid_t c)
{
        struct timespec t;
        clock_gettime(c, &t);
        return (double) t.tv_sec * 1e3 + (double) t.tv_nsec / 1e6;
}

static void mark(void)
{
        st.mark_wall = clock_ms(CLOCK_MONOTONIC);
        st.mark_cpu = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
}

/* Wall and CPU time since mark(): an idle link must cost no CPU. */
static void print_since_mark(void)
{
        printf(" wall_ms=%.0f cpu_ms=%.0f\n", clock_ms(CLOCK_MONOTONIC) - st.mark_wall,
               clock_ms(CLOCK_PROCESS_CPUTIME_ID) - st.mark_cpu);
}

static void finish(bool graceful, int status)
{
        if (st.closed)
                return;
        st.closed = true;
        st.status = status;
        uplink_close(st.u, graceful);
        st.u = NULL;
}

static uint16_t next_id(void)
{
        if (++st.next_id == 0)
                st.next_id = 1;
        return st.next_id;
}

static int publish(uint8_t qos, const char *payload, size_t len, uint16_t *id)
{
        struct mqtt_publish p = {
                .qos = qos,
                .topic = { (const uint8_t *) opt.topic, (uint16_t) strlen(opt.topic) },
                .packet_id = qos ? next_id() : 0,
                .payload = (const uint8_t *) payload,
                .payload_len = len,
        };
        size_t n = mqtt_publish_len(&p);
        uint8_t *b = uplink_reserve(st.u, n);

        if (!b)
                return -ENOMEM;
        int r = mqtt_encode_publish(b, n, &p);
        if (r < 0)
                return r;
        uplink_commit(st.u, (size_t) r);
        if (id)
                *id = p.packet_id;
        st.sent++;
        return 0;
}

static void flood_feed(void)
{
        static char *payload;

        if (!payload) {
                payload = malloc(opt.size);
                if (!payload)
                        abort();
                memset(payload, 'x', opt.size);
        }
        while (st.u && st.sent < opt.count && uplink_writable(st.u))
                if (publish(1, payload, opt.size, NULL) < 0) {
                        printf("error publish\n");
                        finish(false, 1);
                        break;
                }
        if (st.sent >= opt.count) {
                free(payload);
                payload = NULL;
        }
}

static void on_connack(void *ud, uint8_t rc, bool sp)
{
        printf("connack rc=%u sp=%d\n", rc, sp);
        if (rc != 0 && opt.forget_refused) {
                /* uplink.h: a refused link frees itself after this. */
                st.u = NULL;
                st.closed = true;
                return;
        }
        if (rc != 0) {
                finish(false, 0);
                return;
        }
        mark();
        if (!strcmp(opt.scenario, "connect")) {
                finish(opt.graceful, 0);
        } else if (!strcmp(opt.scenario, "publish")) {
                if (publish(0, "qos0", 4, NULL) < 0 || publish(1, "qos1", 4, NULL) < 0 ||
                    publish(2, "qos2", 4, NULL) < 0)
                        finish(false, 1);
        } else if (!strcmp(opt.scenario, "subscribe")) {
                struct mqtt_str f = { (const uint8_t *) opt.topic, (uint16_t) strlen(opt.topic) };
                uint8_t q = (uint8_t) opt.qos;
                uint8_t *b = uplink_reserve(st.u, 512);
                int r = b ? mqtt_encode_subscribe(b, 512, MQTT_SUBSCRIBE, next_id(), &f, &q, 1) : -ENOMEM;
                if (r < 0) {
                        finish(false, 1);
                        return;
                }
                uplink_commit(st.u, (size_t) r);
        } else if (!strcmp(opt.scenario, "flood")) {
                clock_gettime(CLOCK_MONOTONIC, &st.t0);
                flood_feed();
        }
}

static void print_publish(const struct mqtt_publish *p)
{
        printf("publish dup=%d qos=%u retain=%d id=%u topic=%.*s payload=%.*s\n", p->dup, p->qos,
               p->retain, p->packet_id, p->topic.len, (const char *) p->topic.data,
               (int) p->payload_len, (const char *) p->payload);
}

static void on_packet(void *ud, const struct mqtt_packet *pkt, const uint8_t *raw, size_t len)
{
        struct mqtt_list_iter it;
        struct mqtt_str f;
        uint8_t q;

        switch (pkt->type) {
        case MQTT_PUBLISH:
                if (st.paused)
                        st.while_paused++;
                st.received++;
                print_publish(&pkt->u.publish);
                if (opt.ack && pkt->u.publish.qos == 1)
                        uplink_send_ack(st.u, MQTT_PUBACK, pkt->u.publish.packet_id);
                else if (opt.ack && pkt->u.publish.qos == 2)
                        uplink_send_ack(st.u, MQTT_PUBREC, pkt->u.publish.packet_id);
                if (st.received >= opt.count && (!opt.ack || pkt->u.publish.qos < 2))
                        finish(opt.graceful, 0);
                break;
        case MQTT_PUBREL:
                printf("pubrel id=%u\n", pkt->u.packet_id);
                uplink_send_ack(st.u, MQTT_PUBCOMP, pkt->u.packet_id);
                if (st.received >= opt.count)
                        finish(opt.graceful, 0);
                break;
        case MQTT_PUBACK:
                st.acked++;
                if (!strcmp(opt.scenario, "flood")) {
                        if (st.acked == opt.count) {
                                struct timespec t1;
                                clock_gettime(CLOCK_MONOTONIC, &t1);
                                double s = (double) (t1.tv_sec - st.t0.tv_sec) +
                                           (double) (t1.tv_nsec - st.t0.tv_nsec) / 1e9;
                                printf("flood acked=%u seconds=%.3f msgs_per_s=%.0f writable=%u\n",
                                       st.acked, s, s > 0 ? st.acked / s : 0.0, st.writable);
                                finish(true, 0);
                        }
                        break;
                }
                printf("puback id=%u\n", pkt->u.packet_id);
                if (!strcmp(opt.scenario, "hold") || st.acked == 2)
                        finish(opt.graceful, 0);
                break;
        case MQTT_PUBREC:
                printf("pubrec id=%u\n", pkt->u.packet_id);
                uplink_send_ack(st.u, MQTT_PUBREL, pkt->u.packet_id);
                break;
        case MQTT_PUBCOMP:
                printf("pubcomp id=%u\n", pkt->u.packet_id);
                if (++st.acked == 2)
                        finish(opt.graceful, 0);
                break;
        case MQTT_SUBACK:
                printf("suback id=%u codes=", pkt->u.list.packet_id);
                mqtt_list_iter_init(&it, MQTT_SUBACK, &pkt->u.list);
                while (mqtt_list_next(&it, &f, &q))
                        printf("%u,", q);
                printf("\n");
                if (opt.pause) {
                        uplink_pause_input(st.u, true);
                        st.paused = true;
                        printf("paused\n");
                        mark();
                }
                break;
        default:
                printf("packet type=%s len=%zu\n", mqtt_type_name(pkt->type), len);
                break;
        }
}

static void on_lost(void *ud, const char *why)
{
        printf("lost why=%s\n", why);
        finish(false, 3);
}

static void on_writable(void *ud)
{
        st.writable++;
        if (opt.close_at_writable) {
                flood_feed();   /* up to the high-water mark, then close */
                printf("closing sent=%u queued=%zu\n", st.sent, uplink_queued(st.u));
                finish(true, 0);
                return;
        }
        if (!strcmp(opt.scenario, "flood"))
                flood_feed();
}

static const struct uplink_ops ops = {
        .on_connack = on_connack,
        .on_packet = on_packet,
        .on_lost = on_lost,
        .on_writable = on_writable,
};

static int on_usr1(sd_event_source *s, const struct signalfd_siginfo *si, void *ud)
{
        if (st.u && st.paused) {
                st.paused = false;
                printf("resumed while_paused=%u", st.while_paused);
                print_since_mark();
                uplink_pause_input(st.u, false);
        }
        return 0;
}

static int on_hold(sd_event_source *s, uint64_t usec, void *ud)
{
        uint16_t id;

        if (!st.u)
                return 0;
        printf("held");
        print_since_mark();
        if (publish(1, "alive", 5, &id) < 0)
                finish(false, 1);
        return 0;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *ud)
{
        printf("timeout\n");
        finish(false, 4);
        return 0;
}

/* The next link of --again, after a reload first when asked (once). */
static void again(void)
{
        const char *why = NULL;
        SSL_CTX *ctx = NULL;
        char err[512];

        st.links++;
        printf("again n=%u\n", st.links);
        if (st.links == 1 && (opt.again_cafile || opt.again_server_name || opt.again_reload)) {
                static struct config_upstream cfg2;
                cfg2 = *st.cfg;
                if (opt.again_cafile)
                        cfg2.cafile = (char *) opt.again_cafile;
                if (opt.again_server_name) {
                        cfg2.server_name = (char *) opt.again_server_name;
                        for (size_t i = 0; i < cfg2.n_hosts; i++)
                                cfg2.hosts[i].server_name = cfg2.server_name;
                }
                if (tls_client_ctx_new(&cfg2, &ctx, err, sizeof err) < 0) {
                        printf("reload failed why=%s\n", err);
                        sd_event_exit(st.event, 2);
                        return;
                }
                uplink_pool_set_config(st.pool, &cfg2, ctx);
                SSL_CTX_free(ctx);
                printf("reloaded\n");
        }
        st.closed = false;
        st.status = 0;
        st.acked = st.received = st.sent = 0;
        if (uplink_connect(st.pool, &opt.params, &ops, NULL, &st.u, &why) < 0) {
                printf("refused why=%s\n", why);
                sd_event_exit(st.event, 5);
        }
}

/* After every event: once the link is closed and the pool empty (a
 * graceful close finishes on its own), stop, or start the next link. */
static int on_post(sd_event_source *s, void *ud)
{
        unsigned open, connected;

        fflush(stdout);
        if (!st.closed)
                return 0;
        uplink_pool_count(st.pool, &open, &connected);
        if (open == 0 && st.links < opt.again)
                again();
        else if (open == 0) {
                printf("done\n");
                sd_event_exit(st.event, st.status);
        }
        return 0;
}

static void usage(void)
{
        fprintf(stderr, "usage: uplink-probe connect|publish|subscribe|receive|hold|flood|wait [options]\n");
        exit(2);
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                { "host", required_argument, NULL, 'h' },
                { "port", required_argument, NULL, 'p' },
                { "cafile", required_argument, NULL, 'A' },
                { "cert", required_argument, NULL, 'C' },
                { "key", required_argument, NULL, 'K' },
                { "server-name", required_argument, NULL, 'S' },
                { "bind", required_argument, NULL, 'B' },
                { "client-id", required_argument, NULL, 'i' },
                { "username", required_argument, NULL, 'u' },
                { "password", required_argument, NULL, 'P' },
                { "clean", required_argument, NULL, 'c' },
                { "keepalive", required_argument, NULL, 'k' },
                { "level", required_argument, NULL, 'l' },
                { "will-topic", required_argument, NULL, 'w' },
                { "will-payload", required_argument, NULL, 'W' },
                { "will-qos", required_argument, NULL, 'Q' },
                { "topic", required_argument, NULL, 't' },
                { "qos", required_argument, NULL, 'q' },
                { "count", required_argument, NULL, 'n' },
                { "size", required_argument, NULL, 's' },
                { "ack", required_argument, NULL, 'a' },
                { "pause", no_argument, NULL, 'z' },
                { "close", required_argument, NULL, 'x' },
                { "hold", required_argument, NULL, 'H' },
                { "timeout", required_argument, NULL, 'T' },
                { "connect-timeout", required_argument, NULL, 'O' },
                { "max-packet", required_argument, NULL, 'M' },
                { "close-at-writable", no_argument, NULL, 'X' },
                { "forget-refused", no_argument, NULL, 'F' },
                { "debug", no_argument, NULL, 'd' },
                { "again", required_argument, NULL, 'g' },
                { "again-cafile", required_argument, NULL, 'G' },
                { "again-server-name", required_argument, NULL, 'N' },
                { "again-reload", no_argument, NULL, 'R' },
                { "host2", required_argument, NULL, '2' },
                {},
        };
        struct config_upstream cfg = { .host = (char *) "127.0.0.1", .port = 1883, .connect_timeout = 10 };
        SSL_CTX *ctx = NULL;
        const char *why = NULL, *host2 = NULL;
        char err[512];
        int c, r;
        sigset_t ss;

        setvbuf(stdout, NULL, _IOLBF, 0);
        log_setup(LOG_LEVEL_WARNING, LOG_TARGET_STDERR);
        if (argc < 2)
                usage();
        opt.scenario = argv[1];
        optind = 2;
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case 'h': cfg.host = optarg; break;
                case 'p': cfg.port = (uint16_t) atoi(optarg); break;
                case 'A': cfg.cafile = optarg; break;
                case 'C': cfg.certfile = optarg; break;
                case 'K': cfg.keyfile = optarg; break;
                case 'S': cfg.server_name = optarg; break;
                case 'B': cfg.bind_address = optarg; break;
                case 'i': opt.params.client_id = optarg; break;
                case 'u':
                        opt.params.username = (const uint8_t *) optarg;
                        opt.params.username_len = strlen(optarg);
                        break;
                case 'P':
                        opt.params.password = (const uint8_t *) optarg;
                        opt.params.password_len = strlen(optarg);
                        break;
                case 'c': opt.params.clean_session = atoi(optarg) != 0; break;
                case 'k': opt.params.keepalive = (uint16_t) atoi(optarg); break;
                case 'l': opt.params.protocol_level = (uint8_t) atoi(optarg); break;
                case 'w': opt.params.will_topic = optarg; break;
                case 'W':
                        opt.params.will_payload = optarg;
                        opt.params.will_len = strlen(optarg);
                        break;
                case 'Q': opt.params.will_qos = (uint8_t) atoi(optarg); break;
                case 't': opt.topic = optarg; break;
                case 'q': opt.qos = (unsigned) atoi(optarg); break;
                case 'n': opt.count = (unsigned) atoi(optarg); break;
                case 's': opt.size = (unsigned) atoi(optarg); break;
                case 'a': opt.ack = atoi(optarg) != 0; break;
                case 'z': opt.pause = true; break;
                case 'x': opt.graceful = strcmp(optarg, "abrupt") != 0; break;
                case 'H': opt.hold = (unsigned) atoi(optarg); break;
                case 'T': opt.timeout = (unsigned) atoi(optarg); break;
                case 'O': cfg.connect_timeout = (unsigned) atoi(optarg); break;
                case 'M': opt.max_packet = (size_t) atoll(optarg); break;
                case 'X': opt.close_at_writable = true; break;
                case 'F': opt.forget_refused = true; break;
                case 'd': log_setup(LOG_LEVEL_DEBUG, LOG_TARGET_STDERR); break;
                case 'g': opt.again = (unsigned) atoi(optarg); break;
                case 'G': opt.again_cafile = optarg; break;
                case 'N': opt.again_server_name = optarg; break;
                case 'R': opt.again_reload = true; break;
                case '2': host2 = optarg; break;
                default: usage();
                }
        }

        /* One host, as config_load would fill it in. */
        cfg.hosts[0].name = cfg.host;
        cfg.hosts[0].port = cfg.port;
        cfg.hosts[0].server_name = cfg.server_name ? cfg.server_name : (cfg.host[0] == '/' ? NULL : cfg.host);
        cfg.n_hosts = 1;
        if (host2) {
                cfg.hosts[1].name = (char *) host2;
                cfg.hosts[1].port = cfg.port;
                cfg.hosts[1].server_name = cfg.server_name ? cfg.server_name : (char *) host2;
                cfg.n_hosts = 2;
        }
        st.cfg = &cfg;
        r = tls_client_ctx_new(&cfg, &ctx, err, sizeof err);
        if (r < 0) {
                fprintf(stderr, "TLS: %s\n", err);
                return 2;
        }
        sigemptyset(&ss);
        sigaddset(&ss, SIGUSR1);
        sigprocmask(SIG_BLOCK, &ss, NULL);
        if (sd_event_default(&st.event) < 0 || uplink_pool_new(st.event, &cfg, ctx, &st.pool) < 0)
                return 2;
        SSL_CTX_free(ctx);      /* the pool holds its own reference */
        if (opt.max_packet)
                uplink_pool_set_max_packet(st.pool, opt.max_packet);
        sd_event_add_signal(st.event, NULL, SIGUSR1, on_usr1, NULL);
        sd_event_add_post(st.event, NULL, on_post, NULL);
        sd_event_add_time_relative(st.event, NULL, CLOCK_MONOTONIC, opt.timeout * 1000000ULL, 0,
                                   on_timeout, NULL);
        if (!strcmp(opt.scenario, "hold"))
                sd_event_add_time_relative(st.event, NULL, CLOCK_MONOTONIC, opt.hold * 1000000ULL, 0,
                                           on_hold, NULL);

        r = uplink_connect(st.pool, &opt.params, &ops, NULL, &st.u, &why);
        if (r < 0) {
                printf("refused why=%s\n", why);
                uplink_pool_free(st.pool);
                sd_event_unref(st.event);
                return 5;
        }
        r = sd_event_loop(st.event);
        uplink_pool_free(st.pool);
        st.event = sd_event_unref(st.event);
        /* libmosquitto 2.0.11 closed fd 0 on a bad client id: the uplink
         * must never touch a descriptor it did not open. */
        for (int fd = 0; fd <= 2; fd++)
                if (fcntl(fd, F_GETFD) < 0) {
                        printf("fd %d closed\n", fd);
                        return 6;
                }
        printf("fds ok\n");
        return r < 0 ? 2 : r;
}
