/* SPDX-License-Identifier: MIT */
/*
 * bench-loadgen — MQTT load generator for the mqtt-edge-bridge benchmarks.
 *
 * Every client is a libmosquitto instance driven by ONE epoll loop (no
 * libmosquitto threads), with one shared client SSL_CTX: TLS 1.2, client
 * certificate, chain verified against --ca. Two modes:
 *
 *   run   N publishing "devices" (mutual TLS to --pub-host:--pub-port) and
 *         M subscribers on the main broker (--sub-host:--sub-port), each
 *         subscribed to every publisher's topic. A payload starts with
 *         magic, publisher index, sequence number and CLOCK_MONOTONIC send
 *         time (all in this one process, so latency is end to end through
 *         whatever sits between). Fixed rate (--rate R msg/s in total,
 *         open loop) or closed loop (--rate 0: each publisher keeps at most
 *         --window messages that subscriber 0 has not received yet).
 *         Prints one JSON line: delivered msg/s, p50/p90/p99/max latency,
 *         lost and duplicated deliveries.
 *         With --marks K1,K2,... (run, fixed rate) every publisher pauses
 *         once it has sent K1 messages; when all of them are delivered
 *         (and acknowledged, QoS 1) and --mark-settle has passed, it prints
 *         "MARK 1 sent=..." and waits for a line on stdin before going on
 *         to K2, and so on: quiescent points at which the caller can read
 *         a server's counters (bench/run.py: allocations per message).
 *   idle  --n device sessions (CONNECT, CONNACK, then nothing but
 *         keepalive), --concurrency connects in flight; prints
 *         "READY connected=... failed=..." once all are up and holds them
 *         until SIGTERM/SIGINT or --hold seconds.
 *
 * Every wait is bounded (--connect-timeout, --drain, --hold).
 */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define PAYLOAD_MAGIC 0x4d454231u /* "MEB1" */
#define HDR_LEN 24u
#define MAX_BIND 64
#define MAX_LAT_SAMPLES (64u * 1024u * 1024u)
#define MAX_MARKS 16

enum role { ROLE_PUB, ROLE_SUB, ROLE_IDLE };

struct client {
        struct mosquitto *mosq;
        enum role role;
        unsigned idx;
        int fd;
        uint32_t ev;
        bool started, connected, failed, subscribed;
        char topic[96];
        /* publisher */
        uint64_t seq;            /* next sequence number */
        uint64_t seen;           /* closed loop: 1 + highest seq subscriber 0 got */
        uint64_t win_lo;         /* first seq sent in the measurement window */
        bool win_lo_set;
        bool done;               /* stopped publishing */
        uint64_t next_due;       /* fixed rate: ns */
        uint64_t last_progress;  /* closed loop stall guard: ns */
        uint64_t puback;         /* QoS 1 PUBACKs */
};

/* Which (subscriber, publisher, seq) deliveries arrived: duplicates, losses. */
struct seen_map {
        uint8_t *bits;
        uint64_t cap; /* in bits */
};

struct opts {
        const char *mode;
        const char *pub_host, *sub_host;
        int pub_port, sub_port;
        const char *bind[MAX_BIND];
        unsigned n_bind;
        const char *ca, *cert, *key, *sub_cert, *sub_key;
        const char *username, *password;
        unsigned pubs, subs, qos, size, window, concurrency, keepalive;
        double rate, warmup, duration, drain, connect_timeout, hold;
        uint64_t count;
        uint64_t marks[MAX_MARKS];
        unsigned n_marks;
        double mark_settle, mark_timeout;
        const char *topic_prefix, *label;
        bool no_tls_pub, no_tls_sub;
};

static struct opts o = {
        .pub_host = "127.0.0.1", .sub_host = "127.0.0.1", .pub_port = 8883, .sub_port = 8883,
        .pubs = 10, .subs = 1, .qos = 0, .size = 100, .window = 20, .concurrency = 64,
        .keepalive = 600, .rate = 0, .warmup = 1.0, .duration = 5.0, .drain = 3.0,
        .connect_timeout = 60.0, .hold = 600.0, .topic_prefix = "bench", .label = "",
        .mark_settle = 0.1, .mark_timeout = 120.0,
};

static int ep = -1;
static struct client *clients; /* subs first, then pubs (run); or idle devices */
static unsigned n_clients;
static SSL_CTX *ctx_pub, *ctx_sub;
static volatile sig_atomic_t stop_flag;

/* run-mode state */
static struct seen_map *seen; /* [sub * pubs + pub] */
static uint64_t *lat;         /* ns, messages sent inside the window */
static size_t n_lat, cap_lat;
static uint64_t t_start, t_win_lo, t_win_hi;
static uint64_t delivered_in_window, delivered_total, dups, foreign;
static bool publishing;
static unsigned next_mark; /* index into o.marks of the next pause */
static unsigned n_connected, n_failed, n_subscribed;

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fputs("bench-loadgen: ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        exit(2);
}

static void on_signal(int sig)
{
        (void)sig;
        stop_flag = 1;
}

static SSL_CTX *make_ctx(const char *cert, const char *key)
{
        SSL_CTX *c = SSL_CTX_new(TLS_client_method());

        if (!c)
                die("SSL_CTX_new failed");
        /* The devices speak TLS 1.2 at most (DESIGN.md); so do we. */
        SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
        if (SSL_CTX_load_verify_locations(c, o.ca, NULL) != 1)
                die("cannot load CA %s", o.ca);
        /* Chain verification only: the benchmark's listeners carry
         * different names (CN-only, or SAN), and the name check costs
         * nothing measurable. */
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
        if (cert && key) {
                if (SSL_CTX_use_certificate_chain_file(c, cert) != 1)
                        die("cannot load certificate %s", cert);
                if (SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1)
                        die("cannot load key %s", key);
        }
        return c;
}

/* libmosquitto 2.0 opens a socketpair per client (two descriptors) and
 * writes one byte into it for every packet it queues, to wake a
 * mosquitto_loop() we never run: nothing drains it. This program is the
 * only caller of socketpair(), so refusing it here (libmosquitto then logs
 * a warning and carries on without) saves 2 fds per client and a write(2)
 * per message -- 10,000 clients fit in a 20,000-descriptor limit. The
 * definition in the executable takes precedence over libc's for
 * libmosquitto too (ELF symbol interposition). */
int socketpair(int domain, int type, int protocol, int sv[2]);
int socketpair(int domain, int type, int protocol, int sv[2])
{
        (void)domain; (void)type; (void)protocol; (void)sv;
        errno = EMFILE;
        return -1;
}

/* ---- latency and seen bookkeeping ---- */

static void lat_add(uint64_t v)
{
        if (n_lat == cap_lat) {
                if (cap_lat >= MAX_LAT_SAMPLES)
                        return;
                size_t nc = cap_lat ? cap_lat * 2 : 65536;
                uint64_t *p = realloc(lat, nc * sizeof *p);
                if (!p)
                        die("out of memory");
                lat = p;
                cap_lat = nc;
        }
        lat[n_lat++] = v;
}

/* Returns true if (map, seq) was already set. */
static bool seen_mark(struct seen_map *m, uint64_t seq)
{
        if (seq >= m->cap) {
                uint64_t nc = m->cap ? m->cap : 8192;
                while (nc <= seq)
                        nc *= 2;
                uint8_t *p = realloc(m->bits, nc / 8);
                if (!p)
                        die("out of memory");
                memset(p + m->cap / 8, 0, (nc - m->cap) / 8);
                m->bits = p;
                m->cap = nc;
        }
        uint8_t bit = (uint8_t)(1u << (seq & 7));
        bool was = m->bits[seq >> 3] & bit;
        m->bits[seq >> 3] |= bit;
        return was;
}

static bool seen_test(const struct seen_map *m, uint64_t seq)
{
        return seq < m->cap && (m->bits[seq >> 3] & (1u << (seq & 7)));
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static double pct(double p)
{
        if (!n_lat)
                return 0;
        size_t i = (size_t)ceil(p / 100.0 * (double)n_lat);
        if (i > 0)
                i--;
        if (i >= n_lat)
                i = n_lat - 1;
        return (double)lat[i] / 1000.0;
}

/* ---- epoll glue for libmosquitto (as src/upstream.c does it) ---- */

static uint32_t wanted_events(struct client *c)
{
        SSL *ssl = mosquitto_ssl_get(c->mosq);

        /* During the handshake want_write may stay true while OpenSSL
         * waits to read (mosquitto #3745): ask OpenSSL. */
        if (ssl && !SSL_is_init_finished(ssl))
                return SSL_want_write(ssl) ? EPOLLOUT : EPOLLIN;
        return EPOLLIN | (mosquitto_want_write(c->mosq) ? EPOLLOUT : 0);
}

static void client_fail(struct client *c, const char *why)
{
        if (c->failed)
                return;
        c->failed = true;
        if (c->connected && n_connected)
                n_connected--;
        c->connected = false;
        n_failed++;
        if (n_failed <= 5)
                fprintf(stderr, "bench-loadgen: client %u (%s) failed: %s\n", c->idx,
                        c->role == ROLE_SUB ? "sub" : c->role == ROLE_PUB ? "pub" : "idle", why);
        if (c->fd >= 0)
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        c->fd = -1;
}

static void client_after(struct client *c, int rc)
{
        if (c->failed)
                return;
        int fd = mosquitto_socket(c->mosq);

        if (rc != MOSQ_ERR_SUCCESS || fd < 0) {
                client_fail(c, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc ? rc : MOSQ_ERR_CONN_LOST));
                return;
        }
        uint32_t ev = wanted_events(c);
        if (fd != c->fd) {
                /* libmosquitto closed the old socket already. */
                struct epoll_event e = { .events = ev, .data.ptr = c };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0)
                        die("epoll_ctl add: %s", strerror(errno));
                c->fd = fd;
                c->ev = ev;
        } else if (ev != c->ev) {
                struct epoll_event e = { .events = ev, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
                c->ev = ev;
        }
}

static void client_io(struct client *c, uint32_t revents)
{
        int rc = MOSQ_ERR_SUCCESS;
        SSL *ssl = mosquitto_ssl_get(c->mosq);

        if ((revents & (EPOLLERR | EPOLLHUP)) && !c->connected) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                client_fail(c, err ? strerror(err) : "connection closed during connect");
                return;
        }
        if (ssl && !SSL_is_init_finished(ssl)) {
                rc = mosquitto_loop_read(c->mosq, 1);
        } else {
                if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
                        rc = mosquitto_loop_read(c->mosq, 1);
                if (rc == MOSQ_ERR_SUCCESS && (revents & EPOLLOUT) && mosquitto_socket(c->mosq) >= 0)
                        rc = mosquitto_loop_write(c->mosq, 1);
        }
        client_after(c, rc);
}

/* ---- callbacks ---- */

static void cb_connect(struct mosquitto *m, void *obj, int rc)
{
        struct client *c = obj;
        (void)m;

        if (rc != 0) {
                char why[64];
                snprintf(why, sizeof why, "CONNACK %d", rc);
                client_fail(c, why);
                return;
        }
        c->connected = true;
        n_connected++;
        if (c->role == ROLE_SUB) {
                char filter[128];
                snprintf(filter, sizeof filter, "%s/#", o.topic_prefix);
                mosquitto_subscribe(c->mosq, NULL, filter, (int)o.qos);
        }
}

static void cb_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted)
{
        struct client *c = obj;
        (void)m; (void)mid;

        if (n < 1 || granted[0] > 2) {
                client_fail(c, "SUBSCRIBE refused");
                return;
        }
        c->subscribed = true;
        n_subscribed++;
}

static void cb_disconnect(struct mosquitto *m, void *obj, int rc)
{
        struct client *c = obj;
        (void)m;

        if (!stop_flag)
                client_fail(c, rc == 0 ? "disconnected" : "connection lost");
}

static void cb_publish(struct mosquitto *m, void *obj, int mid)
{
        struct client *c = obj;
        (void)m; (void)mid;
        c->puback++;
}

static uint64_t get_u64(const uint8_t *p)
{
        uint64_t v;
        memcpy(&v, p, 8);
        return v;
}

static uint32_t get_u32(const uint8_t *p)
{
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
}

static void cb_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
        struct client *s = obj;
        uint64_t now = now_ns();
        (void)m;

        if (msg->payloadlen < (int)HDR_LEN || get_u32(msg->payload) != PAYLOAD_MAGIC) {
                foreign++;
                return;
        }
        const uint8_t *p = msg->payload;
        uint32_t pi = get_u32(p + 4);
        uint64_t seq = get_u64(p + 8), t = get_u64(p + 16);
        if (pi >= o.pubs) {
                foreign++;
                return;
        }
        struct client *pub = &clients[o.subs + pi];
        if (seq >= pub->seq) {
                foreign++; /* a retained or stale message from another run */
                return;
        }
        delivered_total++;
        if (seen_mark(&seen[(size_t)s->idx * o.pubs + pi], seq)) {
                dups++;
                return;
        }
        if (now >= t_win_lo && now < t_win_hi)
                delivered_in_window++;
        if (t >= t_win_lo && t < t_win_hi)
                lat_add(now > t ? now - t : 0);
        if (s->idx == 0 && seq + 1 > pub->seen) {
                pub->seen = seq + 1;
                pub->last_progress = now;
        }
}

/* ---- clients ---- */

static void client_start(struct client *c)
{
        const bool sub = c->role == ROLE_SUB;
        const char *host = sub ? o.sub_host : o.pub_host;
        int port = sub ? o.sub_port : o.pub_port;
        SSL_CTX *ctx = sub ? (o.no_tls_sub ? NULL : ctx_sub) : (o.no_tls_pub ? NULL : ctx_pub);
        const char *bind = (!sub && o.n_bind) ? o.bind[c->idx % o.n_bind] : NULL;
        char id[64];

        snprintf(id, sizeof id, "%s%s-%u-%d", o.label, sub ? "sub" : c->role == ROLE_PUB ? "pub" : "dev",
                 c->idx, (int)getpid());
        c->mosq = mosquitto_new(id, true, c);
        if (!c->mosq)
                die("mosquitto_new failed");
        mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
        if (ctx) {
                mosquitto_void_option(c->mosq, MOSQ_OPT_SSL_CTX, ctx);
                mosquitto_int_option(c->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
        }
        if (o.username)
                mosquitto_username_pw_set(c->mosq, o.username, o.password);
        mosquitto_connect_callback_set(c->mosq, cb_connect);
        mosquitto_disconnect_callback_set(c->mosq, cb_disconnect);
        mosquitto_subscribe_callback_set(c->mosq, cb_subscribe);
        mosquitto_publish_callback_set(c->mosq, cb_publish);
        mosquitto_message_callback_set(c->mosq, cb_message);
        c->fd = -1;
        c->started = true;
        int rc = mosquitto_connect_bind_async(c->mosq, host, port, (int)o.keepalive, bind);
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_CONN_PENDING) {
                client_fail(c, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
                return;
        }
        client_after(c, MOSQ_ERR_SUCCESS);
}

static void publish_one(struct client *c, uint64_t now)
{
        static uint8_t *buf;
        uint32_t magic = PAYLOAD_MAGIC, pi = c->idx;

        if (!buf) {
                buf = calloc(1, o.size);
                if (!buf)
                        die("out of memory");
                for (unsigned i = HDR_LEN; i < o.size; i++)
                        buf[i] = (uint8_t)('a' + i % 26);
        }
        memcpy(buf, &magic, 4);
        memcpy(buf + 4, &pi, 4);
        memcpy(buf + 8, &c->seq, 8);
        memcpy(buf + 16, &now, 8);
        int rc = mosquitto_publish(c->mosq, NULL, c->topic, (int)o.size, buf, (int)o.qos, false);
        if (rc != MOSQ_ERR_SUCCESS) {
                client_after(c, rc);
                return;
        }
        if (!c->win_lo_set && now >= t_win_lo) {
                c->win_lo = c->seq;
                c->win_lo_set = true;
        }
        c->seq++;
        client_after(c, MOSQ_ERR_SUCCESS);
}

/* May this publisher send another message now? Not past --count, nor past
 * the next --marks pause. */
static bool pub_capped(const struct client *c)
{
        return (o.count && c->seq >= o.count) || (next_mark < o.n_marks && c->seq >= o.marks[next_mark]);
}

/* Publish whatever is due. */
static void pump(uint64_t now)
{
        if (!publishing)
                return;
        const uint64_t stall_ns = 2000000000ull;
        for (unsigned i = 0; i < o.pubs; i++) {
                struct client *c = &clients[o.subs + i];
                if (c->failed || c->done)
                        continue;
                if ((o.count && c->seq >= o.count) || (!o.count && now >= t_win_hi)) {
                        c->done = true;
                        if (!c->win_lo_set) {
                                c->win_lo = c->seq;
                                c->win_lo_set = true;
                        }
                        continue;
                }
                if (o.rate > 0) {
                        double period = 1e9 * o.pubs / o.rate;
                        unsigned burst = 0;
                        while (c->next_due <= now && !c->failed && burst++ < 1000 && !pub_capped(c)) {
                                publish_one(c, now);
                                c->next_due += (uint64_t)period;
                        }
                } else {
                        if (c->seq - c->seen >= o.window && now - c->last_progress > stall_ns) {
                                /* Lost messages never come back: give up on them. */
                                c->seen = c->seq;
                                c->last_progress = now;
                        }
                        while (c->seq - c->seen < o.window && !c->failed && !pub_capped(c))
                                publish_one(c, now);
                }
        }
}

static void misc_all(void)
{
        for (unsigned i = 0; i < n_clients; i++) {
                struct client *c = &clients[i];
                if (c->started && !c->failed)
                        client_after(c, mosquitto_loop_misc(c->mosq));
        }
}

static int make_timer(uint64_t interval_ns)
{
        int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (fd < 0)
                die("timerfd_create: %s", strerror(errno));
        struct itimerspec its = {
                .it_interval = { (time_t)(interval_ns / 1000000000u), (long)(interval_ns % 1000000000u) },
                .it_value = { (time_t)(interval_ns / 1000000000u), (long)(interval_ns % 1000000000u) },
        };
        timerfd_settime(fd, 0, &its, NULL);
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
        e.data.u64 = (uint64_t)fd | (1ull << 62);
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0)
                die("epoll_ctl timer: %s", strerror(errno));
        return fd;
}

/* One pass of the loop. Returns the timer fds that fired via flags. */
static void loop_once(int timeout_ms, int tick_fd, int misc_fd, bool *ticked)
{
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, timeout_ms);

        if (n < 0 && errno != EINTR)
                die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
                if (evs[i].data.u64 & (1ull << 62)) {
                        int fd = (int)(evs[i].data.u64 & 0xffffffffu);
                        uint64_t exp;
                        if (read(fd, &exp, sizeof exp) < 0) {
                                /* spurious */
                        }
                        if (fd == misc_fd)
                                misc_all();
                        else if (fd == tick_fd && ticked)
                                *ticked = true;
                        continue;
                }
                client_io(evs[i].data.ptr, evs[i].events);
        }
}

static void raise_nofile(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
}

/* Start clients [from, to) with at most o.concurrency connects pending. */
static bool connect_range(unsigned from, unsigned to, bool need_sub, int misc_fd)
{
        uint64_t deadline = now_ns() + (uint64_t)(o.connect_timeout * 1e9);
        unsigned next = from;
        uint64_t last_report = now_ns();

        for (;;) {
                unsigned pending = 0, up = 0, bad = 0;
                for (unsigned i = from; i < next; i++) {
                        struct client *c = &clients[i];
                        if (c->failed)
                                bad++;
                        else if (c->connected && (!need_sub || c->subscribed))
                                up++;
                        else
                                pending++;
                }
                while (next < to && pending < o.concurrency) {
                        client_start(&clients[next++]);
                        pending++;
                }
                if (up + bad == to - from)
                        return bad == 0;
                if (stop_flag || now_ns() > deadline) {
                        fprintf(stderr, "bench-loadgen: connect: %u up, %u failed, %u pending at timeout\n",
                                up, bad, (to - from) - up - bad);
                        return false;
                }
                if (now_ns() - last_report > 5000000000ull) {
                        fprintf(stderr, "bench-loadgen: connecting: %u/%u up, %u failed\n", up, to - from, bad);
                        last_report = now_ns();
                }
                loop_once(10, -1, misc_fd, NULL);
        }
}

static int mode_idle(void)
{
        int misc_fd = make_timer(1000000000ull);

        n_clients = o.pubs;
        clients = calloc(n_clients, sizeof *clients);
        if (!clients)
                die("out of memory");
        for (unsigned i = 0; i < n_clients; i++) {
                clients[i].role = ROLE_IDLE;
                clients[i].idx = i;
                clients[i].fd = -1;
        }
        uint64_t t0 = now_ns();
        (void)connect_range(0, n_clients, false, misc_fd);
        double secs = (double)(now_ns() - t0) / 1e9;
        printf("READY connected=%u failed=%u seconds=%.2f\n", n_connected, n_failed, secs);
        fflush(stdout);
        uint64_t until = now_ns() + (uint64_t)(o.hold * 1e9);
        while (!stop_flag && now_ns() < until)
                loop_once(200, -1, misc_fd, NULL);
        printf("DONE connected=%u failed=%u\n", n_connected, n_failed);
        return 0;
}

/* Every message sent so far delivered to every subscriber, and (QoS 1)
 * acknowledged to its publisher. */
static bool all_delivered(void)
{
        uint64_t expected = 0;

        for (unsigned i = 0; i < o.pubs; i++)
                expected += clients[o.subs + i].seq * o.subs;
        if (delivered_total - dups < expected)
                return false;
        if (o.qos > 0)
                for (unsigned i = 0; i < o.pubs; i++) {
                        const struct client *c = &clients[o.subs + i];
                        if (!c->failed && c->puback < c->seq)
                                return false;
                }
        return true;
}

/* Wait (looping) until a line arrives on stdin, or timeout_ns. */
static bool wait_stdin_line(uint64_t timeout_ns, int tick_fd, int misc_fd)
{
        uint64_t end = now_ns() + timeout_ns;
        char buf[256];

        while (!stop_flag && now_ns() < end) {
                struct pollfd pfd = { .fd = 0, .events = POLLIN };
                if (poll(&pfd, 1, 0) > 0) {
                        ssize_t n = read(0, buf, sizeof buf);
                        /* EOF counts as "go on": the caller is gone. */
                        if (n <= 0 || memchr(buf, '\n', (size_t)n))
                                return n > 0;
                }
                bool ticked = false;
                loop_once(5, tick_fd, misc_fd, &ticked);
        }
        return false;
}

/* Every publisher reached o.marks[next_mark]: let the path empty, settle,
 * report, wait for the caller, and pick the schedule up from now (the
 * pause must not turn into a catch-up burst). */
static void mark_pause(int tick_fd, int misc_fd)
{
        uint64_t end = now_ns() + (uint64_t)(o.drain * 1e9);
        bool drained;

        while (!(drained = all_delivered()) && !stop_flag && now_ns() < end) {
                bool ticked = false;
                loop_once(5, tick_fd, misc_fd, &ticked);
        }
        uint64_t settle_end = now_ns() + (uint64_t)(o.mark_settle * 1e9);
        while (!stop_flag && now_ns() < settle_end) {
                bool ticked = false;
                loop_once(5, tick_fd, misc_fd, &ticked);
        }
        uint64_t sent = 0;
        for (unsigned i = 0; i < o.pubs; i++)
                sent += clients[o.subs + i].seq;
        printf("MARK %u sent=%" PRIu64 " delivered=%" PRIu64 " drained=%d\n", next_mark + 1, sent,
               delivered_total - dups, drained);
        fflush(stdout);
        if (!wait_stdin_line((uint64_t)(o.mark_timeout * 1e9), tick_fd, misc_fd))
                fprintf(stderr, "bench-loadgen: no go-ahead on stdin after MARK %u\n", next_mark + 1);
        next_mark++;
        uint64_t now = now_ns();
        for (unsigned i = 0; i < o.pubs; i++) {
                struct client *c = &clients[o.subs + i];
                c->next_due = now + (o.rate > 0 ? (uint64_t)((double)i * 1e9 / o.rate) : 0);
                c->last_progress = now;
        }
}

static int mode_run(void)
{
        int misc_fd = make_timer(1000000000ull);
        int tick_fd = make_timer(200000ull); /* 0.2 ms: the fixed-rate scheduler */

        if (o.size < HDR_LEN)
                o.size = HDR_LEN;
        n_clients = o.subs + o.pubs;
        clients = calloc(n_clients, sizeof *clients);
        seen = calloc((size_t)o.subs * o.pubs, sizeof *seen);
        if (!clients || !seen)
                die("out of memory");
        for (unsigned i = 0; i < n_clients; i++) {
                struct client *c = &clients[i];
                c->fd = -1;
                if (i < o.subs) {
                        c->role = ROLE_SUB;
                        c->idx = i;
                } else {
                        c->role = ROLE_PUB;
                        c->idx = i - o.subs;
                        snprintf(c->topic, sizeof c->topic, "%s/%u", o.topic_prefix, c->idx);
                }
        }
        if (!connect_range(0, o.subs, true, misc_fd) || !connect_range(o.subs, n_clients, false, misc_fd)) {
                printf("{\"error\":\"connect\",\"connected\":%u,\"failed\":%u}\n", n_connected, n_failed);
                return 1;
        }

        /* Publishing starts now. The window runs [warmup, warmup+duration);
         * with --count, until every publisher sent its count. */
        t_start = now_ns();
        t_win_lo = t_start + (uint64_t)(o.warmup * 1e9);
        t_win_hi = o.count ? UINT64_MAX : t_win_lo + (uint64_t)(o.duration * 1e9);
        if (o.count)
                t_win_lo = t_start;
        for (unsigned i = 0; i < o.pubs; i++) {
                struct client *c = &clients[o.subs + i];
                c->next_due = t_start + (uint64_t)((double)i * 1e9 / o.rate);
                if (o.rate <= 0)
                        c->next_due = t_start;
                c->last_progress = t_start;
        }
        publishing = true;
        uint64_t hard_end = o.count ? t_start + (uint64_t)(3600 * 1e9) : t_win_hi;
        for (;;) {
                bool ticked = false;
                uint64_t now = now_ns();
                pump(now);
                if (next_mark < o.n_marks) {
                        bool at_mark = true;
                        for (unsigned i = 0; i < o.pubs; i++) {
                                const struct client *c = &clients[o.subs + i];
                                if (!c->failed && c->seq < o.marks[next_mark])
                                        at_mark = false;
                        }
                        if (at_mark) {
                                mark_pause(tick_fd, misc_fd);
                                continue;
                        }
                }
                bool all_done = true;
                for (unsigned i = 0; i < o.pubs; i++) {
                        struct client *c = &clients[o.subs + i];
                        if (!c->failed && !c->done)
                                all_done = false;
                }
                if (all_done || stop_flag || now >= hard_end + 1000000000ull)
                        break;
                loop_once(1, tick_fd, misc_fd, &ticked);
        }
        uint64_t t_sent_end = now_ns();
        if (o.count)
                t_win_hi = t_sent_end;
        publishing = false;

        /* Drain: wait for every expected delivery, bounded by --drain. */
        uint64_t drain_end = now_ns() + (uint64_t)(o.drain * 1e9);
        for (;;) {
                uint64_t expected = 0, got = 0;
                for (unsigned s = 0; s < o.subs; s++)
                        for (unsigned i = 0; i < o.pubs; i++) {
                                struct client *c = &clients[o.subs + i];
                                expected += c->seq;
                                (void)got;
                        }
                got = delivered_total - dups;
                bool acked = true;
                if (o.qos > 0)
                        for (unsigned i = 0; i < o.pubs; i++) {
                                struct client *c = &clients[o.subs + i];
                                if (!c->failed && c->puback < c->seq)
                                        acked = false;
                        }
                if ((got >= expected && acked) || stop_flag || now_ns() >= drain_end)
                        break;
                loop_once(5, -1, misc_fd, NULL);
        }

        /* Count. */
        uint64_t expected = 0, received = 0, sent = 0;
        for (unsigned i = 0; i < o.pubs; i++) {
                struct client *c = &clients[o.subs + i];
                sent += c->seq;
                uint64_t lo = c->win_lo_set ? c->win_lo : c->seq, hi = c->seq;
                for (unsigned s = 0; s < o.subs; s++) {
                        const struct seen_map *m = &seen[(size_t)s * o.pubs + i];
                        for (uint64_t q = lo; q < hi; q++)
                                received += seen_test(m, q);
                        expected += hi - lo;
                }
        }
        double win_s = (double)(t_win_hi - t_win_lo) / 1e9;
        if (o.count)
                delivered_in_window = received;
        qsort(lat, n_lat, sizeof *lat, cmp_u64);
        unsigned failed = n_failed;
        printf("{\"label\":\"%s\",\"qos\":%u,\"pubs\":%u,\"subs\":%u,\"size\":%u,\"rate\":%.0f,"
               "\"window\":%u,\"seconds\":%.3f,\"sent\":%" PRIu64 ",\"expected\":%" PRIu64
               ",\"received\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"dup\":%" PRIu64 ",\"foreign\":%" PRIu64
               ",\"msgs_per_s\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
               "\"samples\":%zu,\"failed_clients\":%u}\n",
               o.label, o.qos, o.pubs, o.subs, o.size, o.rate, o.window, win_s, sent, expected, received,
               expected - received, dups, foreign, win_s > 0 ? (double)delivered_in_window / win_s : 0,
               pct(50), pct(90), pct(99), n_lat ? (double)lat[n_lat - 1] / 1000.0 : 0, n_lat, failed);
        fflush(stdout);
        return failed ? 1 : 0;
}

static void usage(FILE *f)
{
        fputs("usage: bench-loadgen run|idle [options]\n"
              "  --pub-host H --pub-port P   where the devices connect (default 127.0.0.1:8883)\n"
              "  --sub-host H --sub-port P   the main broker, for subscribers (run)\n"
              "  --bind A[,A...]             source addresses for the devices, round robin\n"
              "  --ca F --cert F --key F     CA and device client certificate (PEM)\n"
              "  --sub-cert F --sub-key F    subscriber certificate (default: --cert/--key)\n"
              "  --username U --password P   sent by every client\n"
              "  --pubs N                    publishing devices (run) / idle devices (idle)\n"
              "  --subs M                    subscribers, each receives every message\n"
              "  --qos 0|1  --size BYTES     payload size (>= 24)\n"
              "  --rate R                    total msg/s, fixed rate; 0 = closed loop (default)\n"
              "  --window W                  closed loop: in flight per publisher (20)\n"
              "  --warmup S --duration S --drain S   (1, 5, 3)\n"
              "  --count K                   each publisher sends exactly K messages instead\n"
              "  --marks K1,K2,...           pause at these per-publisher counts: drain, print\n"
              "                              MARK, wait for a line on stdin (see the top)\n"
              "  --mark-settle S --mark-timeout S   (0.1, 120)\n"
              "  --concurrency C             connects in flight (64)\n"
              "  --keepalive S --hold S --connect-timeout S\n"
              "  --topic-prefix T --label L  --no-tls-pub --no-tls-sub\n", f);
}

static void split_bind(char *s)
{
        for (char *tok = strtok(s, ","); tok && o.n_bind < MAX_BIND; tok = strtok(NULL, ","))
                o.bind[o.n_bind++] = tok;
}

static void split_marks(char *s)
{
        for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
                if (o.n_marks == MAX_MARKS)
                        die("at most %d --marks", MAX_MARKS);
                o.marks[o.n_marks] = strtoull(tok, NULL, 10);
                if (o.n_marks && o.marks[o.n_marks] <= o.marks[o.n_marks - 1])
                        die("--marks must increase");
                o.n_marks++;
        }
}

int main(int argc, char **argv)
{
        enum {
                O_PUB_HOST = 256, O_PUB_PORT, O_SUB_HOST, O_SUB_PORT, O_BIND, O_CA, O_CERT, O_KEY, O_SUB_CERT,
                O_SUB_KEY, O_USER, O_PASS, O_PUBS, O_SUBS, O_QOS, O_SIZE, O_RATE, O_WINDOW, O_WARMUP,
                O_DURATION, O_DRAIN, O_COUNT, O_CONC, O_KEEPALIVE, O_HOLD, O_CTIMEOUT, O_PREFIX, O_LABEL,
                O_NO_TLS_PUB, O_NO_TLS_SUB, O_MARKS, O_MARK_SETTLE, O_MARK_TIMEOUT,
        };
        static const struct option lo[] = {
                { "pub-host", 1, NULL, O_PUB_HOST }, { "pub-port", 1, NULL, O_PUB_PORT },
                { "sub-host", 1, NULL, O_SUB_HOST }, { "sub-port", 1, NULL, O_SUB_PORT },
                { "bind", 1, NULL, O_BIND }, { "ca", 1, NULL, O_CA }, { "cert", 1, NULL, O_CERT },
                { "key", 1, NULL, O_KEY }, { "sub-cert", 1, NULL, O_SUB_CERT }, { "sub-key", 1, NULL, O_SUB_KEY },
                { "username", 1, NULL, O_USER }, { "password", 1, NULL, O_PASS },
                { "pubs", 1, NULL, O_PUBS }, { "n", 1, NULL, O_PUBS }, { "subs", 1, NULL, O_SUBS },
                { "qos", 1, NULL, O_QOS }, { "size", 1, NULL, O_SIZE }, { "rate", 1, NULL, O_RATE },
                { "window", 1, NULL, O_WINDOW }, { "warmup", 1, NULL, O_WARMUP },
                { "duration", 1, NULL, O_DURATION }, { "drain", 1, NULL, O_DRAIN },
                { "count", 1, NULL, O_COUNT }, { "concurrency", 1, NULL, O_CONC },
                { "keepalive", 1, NULL, O_KEEPALIVE }, { "hold", 1, NULL, O_HOLD },
                { "connect-timeout", 1, NULL, O_CTIMEOUT }, { "topic-prefix", 1, NULL, O_PREFIX },
                { "label", 1, NULL, O_LABEL }, { "no-tls-pub", 0, NULL, O_NO_TLS_PUB },
                { "no-tls-sub", 0, NULL, O_NO_TLS_SUB }, { "marks", 1, NULL, O_MARKS },
                { "mark-settle", 1, NULL, O_MARK_SETTLE }, { "mark-timeout", 1, NULL, O_MARK_TIMEOUT },
                { "help", 0, NULL, 'h' }, { NULL, 0, NULL, 0 },
        };
        int ch;

        if (argc < 2 || argv[1][0] == '-') {
                usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
                return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
        }
        o.mode = argv[1];
        optind = 2;
        while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
                switch (ch) {
                case O_PUB_HOST: o.pub_host = optarg; break;
                case O_PUB_PORT: o.pub_port = atoi(optarg); break;
                case O_SUB_HOST: o.sub_host = optarg; break;
                case O_SUB_PORT: o.sub_port = atoi(optarg); break;
                case O_BIND: split_bind(optarg); break;
                case O_CA: o.ca = optarg; break;
                case O_CERT: o.cert = optarg; break;
                case O_KEY: o.key = optarg; break;
                case O_SUB_CERT: o.sub_cert = optarg; break;
                case O_SUB_KEY: o.sub_key = optarg; break;
                case O_USER: o.username = optarg; break;
                case O_PASS: o.password = optarg; break;
                case O_PUBS: o.pubs = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_SUBS: o.subs = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_QOS: o.qos = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_SIZE: o.size = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_RATE: o.rate = strtod(optarg, NULL); break;
                case O_WINDOW: o.window = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_WARMUP: o.warmup = strtod(optarg, NULL); break;
                case O_DURATION: o.duration = strtod(optarg, NULL); break;
                case O_DRAIN: o.drain = strtod(optarg, NULL); break;
                case O_COUNT: o.count = strtoull(optarg, NULL, 10); break;
                case O_CONC: o.concurrency = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_KEEPALIVE: o.keepalive = (unsigned)strtoul(optarg, NULL, 10); break;
                case O_HOLD: o.hold = strtod(optarg, NULL); break;
                case O_CTIMEOUT: o.connect_timeout = strtod(optarg, NULL); break;
                case O_PREFIX: o.topic_prefix = optarg; break;
                case O_LABEL: o.label = optarg; break;
                case O_NO_TLS_PUB: o.no_tls_pub = true; break;
                case O_NO_TLS_SUB: o.no_tls_sub = true; break;
                case O_MARKS: split_marks(optarg); break;
                case O_MARK_SETTLE: o.mark_settle = strtod(optarg, NULL); break;
                case O_MARK_TIMEOUT: o.mark_timeout = strtod(optarg, NULL); break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        if (!o.ca && !(o.no_tls_pub && o.no_tls_sub))
                die("--ca is required");
        if (o.qos > 1 || o.pubs == 0 || o.window == 0 || o.concurrency == 0)
                die("bad --qos/--pubs/--window/--concurrency");
        if (!o.sub_cert) {
                o.sub_cert = o.cert;
                o.sub_key = o.key;
        }

        signal(SIGPIPE, SIG_IGN);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        raise_nofile();
        mosquitto_lib_init();
        if (o.ca) {
                ctx_pub = make_ctx(o.cert, o.key);
                ctx_sub = make_ctx(o.sub_cert, o.sub_key);
        }
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
                die("epoll_create1: %s", strerror(errno));

        int rc;
        if (!strcmp(o.mode, "run")) {
                rc = mode_run();
        } else if (!strcmp(o.mode, "idle")) {
                rc = mode_idle();
        } else {
                usage(stderr);
                return 2;
        }
        /* Leave without DISCONNECT: the process exit closes every socket. */
        return rc;
}
