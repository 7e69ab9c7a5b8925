/* SPDX-License-Identifier: MIT */
#include "upstream_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

/* mosquitto_loop waits at most this long per call, so a deadline is met
 * to within it; and no step runs more iterations than this. */
#define PROBE_SLICE_MS 100
#define PROBE_MAX_ITERATIONS 100000
#define PROBE_LATE_LOOKS 8

struct probe {
        const struct upstream_probe_params *p;
        struct upstream_probe_result *res;
        struct mosquitto *mosq;
        int sub_mid, pub_mid;
};

static long long now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc) {
        struct probe *pr = obj;

        /* MQTT 3.1.1: rc is the CONNACK return code (§3.2.2.3). */
        pr->res->connack = rc;
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *granted) {
        struct probe *pr = obj;

        /* §3.9.3: one return code per filter; 0x80 is a refusal. */
        if (mid == pr->sub_mid && n >= 1)
                pr->res->suback = granted[0];
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid) {
        struct probe *pr = obj;

        if (mid == pr->pub_mid)
                pr->res->puback = true;
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *m) {
        struct probe *pr = obj;
        size_t len = strlen(pr->p->payload);

        if (m->topic && strcmp(m->topic, pr->p->topic) == 0 && m->payloadlen >= 0 &&
            (size_t) m->payloadlen == len && memcmp(m->payload, pr->p->payload, len) == 0)
                pr->res->echoed = true;
}

/* libmosquitto reports OpenSSL's reasons only through its log. */
static void on_log(struct mosquitto *mosq, void *obj, int level, const char *line) {
        struct probe *pr = obj;

        if (level == MOSQ_LOG_ERR && !pr->res->tls_error[0] && strncmp(line, "OpenSSL Error", 13) == 0) {
                const char *colon = strstr(line, "]: ");

                snprintf(pr->res->tls_error, sizeof pr->res->tls_error, "%s", colon ? colon + 3 : line);
        }
}

static void describe_rc(struct probe *pr, int rc, int saved_errno) {
        struct upstream_probe_result *res = pr->res;

        switch (rc) {
        case MOSQ_ERR_ERRNO:
                snprintf(res->error, sizeof res->error, "%s", strerror(saved_errno));
                break;
        case MOSQ_ERR_EAI:
                /* libmosquitto stores getaddrinfo's code in errno. */
                snprintf(res->error, sizeof res->error, "cannot resolve \"%s\": %s", pr->p->host,
                         gai_strerror(saved_errno));
                break;
        case MOSQ_ERR_CONN_LOST:
        case MOSQ_ERR_NO_CONN:
                snprintf(res->error, sizeof res->error, "the broker closed the connection");
                break;
        case MOSQ_ERR_TLS:
                snprintf(res->error, sizeof res->error, "TLS handshake failed");
                break;
        default:
                snprintf(res->error, sizeof res->error, "%s", mosquitto_strerror(rc));
        }
}

static void format_addr(const struct sockaddr_storage *ss, socklen_t len, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN] = "";

        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *) ss;

                inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
                snprintf(buf, size, "%s:%u", host, ntohs(a->sin_port));
        } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) ss;

                inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
                snprintf(buf, size, "[%s]:%u", host, ntohs(a->sin6_port));
        } else if (ss->ss_family == AF_UNIX) {
                const struct sockaddr_un *a = (const struct sockaddr_un *) ss;

                snprintf(buf, size, "%.*s", (int) (len > sizeof(sa_family_t) ? len - sizeof(sa_family_t) : 0),
                         a->sun_path);
        } else
                snprintf(buf, size, "?");
}

/* One more connection attempt, made only to learn why the first failed.
 * Returns the errno of the first address that fails (ENOTCONN if none). */
static int connect_error_again(const struct upstream_probe_params *p, long long deadline) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
        char port[8];
        int e = ENOTCONN;

        if (p->port == 0) {
                struct sockaddr_un sun = { .sun_family = AF_UNIX };
                int fd;

                snprintf(sun.sun_path, sizeof sun.sun_path, "%s", p->host);
                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        return errno;
                if (connect(fd, (struct sockaddr *) &sun, sizeof sun) < 0)
                        e = errno;
                close(fd);
                return e;
        }
        snprintf(port, sizeof port, "%d", p->port);
        if (getaddrinfo(p->host, port, &hints, &res) != 0)
                return e;
        for (struct addrinfo *ai = res; ai && e == ENOTCONN; ai = ai->ai_next) {
                int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                long long left = deadline - now_ms();
                int soerr = 0;
                socklen_t sl = sizeof soerr;

                if (fd < 0)
                        continue;
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                        if (errno != EINPROGRESS)
                                soerr = errno;
                        else if (left <= 0 || poll(&pfd, 1, (int) (left > 1000 ? 1000 : left)) <= 0)
                                soerr = ETIMEDOUT;
                        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                                soerr = errno;
                }
                if (soerr)
                        e = soerr;
                close(fd);
        }
        freeaddrinfo(res);
        return e;
}

/* The socket libmosquitto opened without waiting (connect_async): wait
 * until the kernel says whether the TCP (or Unix) connect worked. */
static int wait_socket(struct probe *pr, long long deadline) {
        struct upstream_probe_result *res = pr->res;
        struct sockaddr_storage ss;
        socklen_t sl;
        int fd = mosquitto_socket(pr->mosq), soerr = 0;

        if (fd < 0) {
                snprintf(res->error, sizeof res->error, "libmosquitto has no socket");
                return -ENOTCONN;
        }
        for (int i = 0; i < PROBE_MAX_ITERATIONS; i++) {
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                long long left = deadline - now_ms();
                int r;

                /* Look once more even past the deadline: connect_async
                 * itself may have used it up (a slow handshake on
                 * loopback, see probe_exchange). */
                r = poll(&pfd, 1, left <= 0 ? 0 : left > PROBE_SLICE_MS ? PROBE_SLICE_MS : (int) left);
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (r > 0)
                        break;
                if (left <= 0) {
                        res->timed_out = true;
                        snprintf(res->error, sizeof res->error, "cannot connect: timed out after %u s",
                                 pr->p->timeout_sec);
                        return -ETIMEDOUT;
                }
        }
        sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                soerr = errno;
        if (soerr != 0) {
                snprintf(res->error, sizeof res->error, "cannot connect: %s", strerror(soerr));
                return -soerr;
        }
        sl = sizeof ss;
        if (getpeername(fd, (struct sockaddr *) &ss, &sl) < 0) {
                int e = errno;

                /* With TLS, libmosquitto's first SSL_connect wrote to the
                 * socket before it connected and took the kernel's error
                 * (SO_ERROR is then 0): ask the kernel again. */
                if (e == ENOTCONN)
                        e = connect_error_again(pr->p, deadline);
                snprintf(res->error, sizeof res->error, "cannot connect: %s", strerror(e));
                return -e;
        }
        format_addr(&ss, sl, res->peer, sizeof res->peer);
        sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *) &ss, &sl) == 0)
                format_addr(&ss, sl, res->local, sizeof res->local);
        res->connected = true;
        return 0;
}

/* Runs libmosquitto until done() holds, the connection fails or the
 * step's deadline passes. */
static int run_until(struct probe *pr, bool (*done)(const struct probe *), const char *what) {
        long long deadline = now_ms() + (long long) pr->p->timeout_sec * 1000;
        int late = 0;

        for (int i = 0; i < PROBE_MAX_ITERATIONS; i++) {
                long long left;
                int rc;

                if (done(pr))
                        return 0;
                left = deadline - now_ms();
                /* Past the deadline, a few last looks without waiting
                 * (one packet each): what already arrived counts. */
                rc = mosquitto_loop(pr->mosq, left <= 0 ? 0 : left > PROBE_SLICE_MS ? PROBE_SLICE_MS : (int) left, 1);
                if (rc != MOSQ_ERR_SUCCESS) {
                        int e = errno;

                        if (done(pr))
                                return 0;
                        describe_rc(pr, rc, e);
                        return -EIO;
                }
                if (left <= 0 && ++late >= PROBE_LATE_LOOKS)
                        break;
        }
        if (done(pr))
                return 0;
        pr->res->timed_out = true;
        snprintf(pr->res->error, sizeof pr->res->error, "no %s within %u s", what, pr->p->timeout_sec);
        return -ETIMEDOUT;
}

static bool have_connack(const struct probe *pr) {
        return pr->res->connack >= 0;
}

static bool have_suback(const struct probe *pr) {
        return pr->res->suback >= 0;
}

static bool have_puback(const struct probe *pr) {
        return pr->res->puback;
}

static bool have_echo(const struct probe *pr) {
        return pr->res->puback && pr->res->echoed;
}

static void probe_exchange(struct probe *pr) {
        const struct upstream_probe_params *p = pr->p;
        struct upstream_probe_result *res = pr->res;
        long long deadline = now_ms() + (long long) p->timeout_sec * 1000;
        int rc;

        rc = mosquitto_connect_bind_async(pr->mosq, p->host, p->port, p->keepalive, p->port ? p->bind_address : NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
                int e = errno;

                /* A TCP connect on loopback can complete at once, and then
                 * libmosquitto's SSL_connect and SSL_write of the CONNECT
                 * run the handshake right here: a TLS failure (EPROTO is
                 * its net__handle_ssl's word for one) means the socket was
                 * up. */
                if (rc == MOSQ_ERR_TLS || (rc == MOSQ_ERR_ERRNO && e == EPROTO)) {
                        res->connected = true;
                        snprintf(res->error, sizeof res->error, "TLS handshake failed");
                        return;
                }
                /* An immediate refusal (a Unix socket, or loopback), or a
                 * bind_address that cannot be bound. */
                if (rc == MOSQ_ERR_ERRNO)
                        snprintf(res->error, sizeof res->error, "cannot connect: %s", strerror(e));
                else
                        describe_rc(pr, rc, e);
                return;
        }
        if (wait_socket(pr, deadline) < 0)
                return;
        if (run_until(pr, have_connack, "CONNACK") < 0 || res->connack != 0 || !p->topic)
                return;

        rc = mosquitto_subscribe(pr->mosq, &pr->sub_mid, p->topic, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
                describe_rc(pr, rc, errno);
                return;
        }
        if (run_until(pr, have_suback, "SUBACK") < 0)
                return;

        rc = mosquitto_publish(pr->mosq, &pr->pub_mid, p->topic, (int) strlen(p->payload), p->payload, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
                describe_rc(pr, rc, errno);
                return;
        }
        /* Without the subscription the message cannot come back: the
         * PUBACK is all there is to wait for. */
        if (res->suback > 2) {
                (void) run_until(pr, have_puback, "PUBACK");
                return;
        }
        if (run_until(pr, have_echo, "PUBACK and the message back") < 0 && res->puback && res->timed_out) {
                /* PUBACK but no message: the broker dropped it (ACL). That
                 * is the answer, not a failure of the probe. */
                res->timed_out = false;
                res->error[0] = '\0';
        }
}

int upstream_probe_run(const struct upstream_probe_params *p, struct upstream_probe_result *res) {
        struct probe pr = { .p = p, .res = res, .sub_mid = -1, .pub_mid = -1 };
        int r = 0;

        *res = (struct upstream_probe_result) { .connack = -1, .suback = -1 };
        mosquitto_lib_init();
        /* The client id was checked by the caller: mosquitto_new() closes
         * fd 0 when it refuses one (eclipse/mosquitto#2326). */
        pr.mosq = mosquitto_new(p->client_id, true, &pr);
        if (!pr.mosq) {
                snprintf(res->error, sizeof res->error, "libmosquitto: %s", strerror(errno));
                r = -ENOMEM;
                goto out;
        }
        /* The bridge speaks MQTT 3.1.1 upstream (§3.1.2.2: level 4). */
        mosquitto_int_option(pr.mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        if (p->ctx) {
                /* The daemon's own context carries all the verification;
                 * with defaults off libmosquitto adds none of its own. */
                if (mosquitto_void_option(pr.mosq, MOSQ_OPT_SSL_CTX, p->ctx) != MOSQ_ERR_SUCCESS ||
                    mosquitto_int_option(pr.mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0) != MOSQ_ERR_SUCCESS) {
                        snprintf(res->error, sizeof res->error, "libmosquitto was built without TLS");
                        r = -EOPNOTSUPP;
                        goto out;
                }
        }
        if ((p->username || p->password) &&
            mosquitto_username_pw_set(pr.mosq, p->username, p->password) != MOSQ_ERR_SUCCESS) {
                snprintf(res->error, sizeof res->error, "libmosquitto refused the username or password");
                r = -EINVAL;
                goto out;
        }
        mosquitto_connect_callback_set(pr.mosq, on_connect);
        mosquitto_subscribe_callback_set(pr.mosq, on_subscribe);
        mosquitto_publish_callback_set(pr.mosq, on_publish);
        mosquitto_message_callback_set(pr.mosq, on_message);
        mosquitto_log_callback_set(pr.mosq, on_log);

        probe_exchange(&pr);

        if (mosquitto_socket(pr.mosq) >= 0) {
                /* §3.14: a clean end; libmosquitto closes the socket once
                 * DISCONNECT is written. */
                if (mosquitto_disconnect(pr.mosq) == MOSQ_ERR_SUCCESS)
                        for (int i = 0; i < 10 && mosquitto_socket(pr.mosq) >= 0; i++)
                                if (mosquitto_loop(pr.mosq, PROBE_SLICE_MS, 1) != MOSQ_ERR_SUCCESS)
                                        break;
        }
out:
        mosquitto_destroy(pr.mosq);
        mosquitto_lib_cleanup();
        return r;
}
