/* SPDX-License-Identifier: MIT */
#include "doctor_connect.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bearssl.h>

#include "br_chain.h"
#include "br_errors.h"
#include "esp_client.h"
#include "fileio.h"
#include "json.h"
#include "mqtt_probe.h"
#include "tls_sniff.h"
#include "tool_common.h"
#include "x509_info.h"

struct probe_io {
        int fd;
        struct timespec deadline;
        bool timed_out;
        int sys_errno;
        struct tls_sniff sniff;
};

struct probe_result {
        bool tcp_ok;
        char tcp_error[160];
        int hs_code;                    /* BearSSL error, 0 = OK */
        bool hs_timed_out;
        unsigned version;
        uint16_t suite;
        bool server_hello;
        bool mfl_echoed;
        unsigned mfl_len;
        bool resumed;
        /* MQTT */
        bool mqtt_tried;
        int connack;                    /* -1 = none */
        int session_present;
        char mqtt_error[160];
};

static int remaining_ms(const struct timespec *deadline) {
        struct timespec now;
        long long ms;

        clock_gettime(CLOCK_MONOTONIC, &now);
        ms = (long long) (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
        return ms < 0 ? 0 : ms > 3600000 ? 3600000 : (int) ms;
}

/* Waits for the socket under the connection's deadline; every wait in the
 * probe goes through here, so nothing blocks for longer than --timeout. */
static int io_wait(struct probe_io *io, short events) {
        struct pollfd p = { .fd = io->fd, .events = events };

        for (;;) {
                int ms = remaining_ms(&io->deadline), r;

                if (ms == 0) {
                        io->timed_out = true;
                        return -ETIMEDOUT;
                }
                r = poll(&p, 1, ms);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return -errno;
                if (r > 0)
                        return 0;
        }
}

static int io_read(void *ctx, unsigned char *buf, size_t len) {
        struct probe_io *io = ctx;

        for (;;) {
                ssize_t n;

                if (io_wait(io, POLLIN) < 0)
                        return -1;
                n = recv(io->fd, buf, len, 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n <= 0) {
                        io->sys_errno = n < 0 ? errno : 0;
                        return -1;
                }
                tls_sniff_feed(&io->sniff, buf, (size_t) n);
                return (int) n;
        }
}

static int io_write(void *ctx, const unsigned char *buf, size_t len) {
        struct probe_io *io = ctx;

        for (;;) {
                ssize_t n;

                if (io_wait(io, POLLOUT) < 0)
                        return -1;
                n = send(io->fd, buf, len, MSG_NOSIGNAL);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n <= 0) {
                        io->sys_errno = n < 0 ? errno : 0;
                        return -1;
                }
                return (int) n;
        }
}

/* HOST:PORT or [HOST]:PORT into host (malloc'ed) and port string. */
static int split_target(const char *t, char **host, char **port) {
        const char *colon;

        if (t[0] == '[') {
                const char *end = strchr(t, ']');

                if (!end || end[1] != ':' || !end[2])
                        return -EINVAL;
                *host = strndup(t + 1, (size_t) (end - t - 1));
                *port = strdup(end + 2);
        } else {
                colon = strrchr(t, ':');
                if (!colon || colon == t || !colon[1] || strchr(t, ':') != colon)
                        return -EINVAL;
                *host = strndup(t, (size_t) (colon - t));
                *port = strdup(colon + 1);
        }
        if (!*host || !*port) {
                free(*host);
                free(*port);
                return -ENOMEM;
        }
        return 0;
}

static int tcp_connect(const char *host, const char *port, struct probe_io *io, char *err, size_t errsize) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
        int r, fd = -1;

        r = getaddrinfo(host, port, &hints, &res);
        if (r != 0) {
                snprintf(err, errsize, "cannot resolve %s:%s: %s", host, port, gai_strerror(r));
                return -EHOSTUNREACH;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;

                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
                if (fd < 0)
                        continue;
                io->fd = fd;
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
                    (errno == EINPROGRESS && io_wait(io, POLLOUT) == 0 &&
                     getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0))
                        break;
                snprintf(err, errsize, "cannot connect to %s:%s: %s", host, port,
                         io->timed_out ? "timed out" : strerror(soerr ? soerr : errno));
                close(fd);
                fd = io->fd = -1;
                if (io->timed_out)
                        break;
        }
        freeaddrinfo(res);
        return fd < 0 ? -ECONNREFUSED : 0;
}

/* Sends close_notify without waiting for the peer's (br_sslio_close would). */
static void tls_close(br_ssl_engine_context *eng, struct probe_io *io) {
        br_ssl_engine_close(eng);
        for (int i = 0; i < 16; i++) {
                unsigned char *buf;
                size_t len;
                int n;

                if (!(br_ssl_engine_current_state(eng) & BR_SSL_SENDREC))
                        break;
                buf = br_ssl_engine_sendrec_buf(eng, &len);
                n = io_write(io, buf, len);
                if (n < 0)
                        break;
                br_ssl_engine_sendrec_ack(eng, (size_t) n);
        }
}

struct probe_setup {
        const struct doctor_connect_args *a;
        const char *host, *port;
        const char *name;
        const char *client_id;
        struct br_anchors ta;
        struct br_certs chain;
        struct br_key *key;
        int issuer_key_type;
};

static void probe_mqtt(const struct probe_setup *s, br_sslio_context *ioc, struct probe_result *res) {
        unsigned char pkt[1100], ack[4];
        int len;

        res->mqtt_tried = true;
        res->connack = -1;
        len = mqtt_probe_connect(pkt, sizeof pkt, s->client_id, s->a->keepalive, s->a->username, s->a->password);
        if (len < 0) {
                snprintf(res->mqtt_error, sizeof res->mqtt_error, "cannot build CONNECT: %s", strerror(-len));
                return;
        }
        if (br_sslio_write_all(ioc, pkt, (size_t) len) < 0 || br_sslio_flush(ioc) < 0) {
                snprintf(res->mqtt_error, sizeof res->mqtt_error, "sending CONNECT failed");
                return;
        }
        if (br_sslio_read_all(ioc, ack, sizeof ack) < 0) {
                snprintf(res->mqtt_error, sizeof res->mqtt_error,
                         "no CONNACK: the server closed the connection or did not answer in time");
                return;
        }
        len = mqtt_probe_connack(ack, &res->session_present);
        if (len < 0) {
                snprintf(res->mqtt_error, sizeof res->mqtt_error,
                         "the answer to CONNECT is not a CONNACK (%02x %02x %02x %02x)", ack[0], ack[1], ack[2], ack[3]);
                return;
        }
        res->connack = len;
        if (len == 0) {
                static const unsigned char disconnect[2] = { 0xe0, 0x00 };    /* §3.14 */

                if (br_sslio_write_all(ioc, disconnect, sizeof disconnect) == 0)
                        (void) br_sslio_flush(ioc);
        }
}

static void probe_once(const struct probe_setup *s, struct esp_client *ec, bool mqtt,
                       br_ssl_session_parameters *session, bool resume, struct probe_result *res) {
        struct probe_io io = { .fd = -1 };
        br_sslio_context ioc;
        int r;

        memset(res, 0, sizeof *res);
        res->connack = -1;
        tls_sniff_init(&io.sniff);
        clock_gettime(CLOCK_MONOTONIC, &io.deadline);
        io.deadline.tv_sec += s->a->timeout_sec;

        if (tcp_connect(s->host, s->port, &io, res->tcp_error, sizeof res->tcp_error) < 0)
                return;
        res->tcp_ok = true;

        r = esp_client_start(ec, &s->ta, s->a->at, &s->chain, s->key, s->issuer_key_type, s->name,
                             resume ? session : NULL);
        if (r != 0) {
                res->hs_code = r;
                goto out;
        }
        br_sslio_init(&ioc, &ec->cc.eng, io_read, &io, io_write, &io);
        /* Flushing with nothing to send runs the engine until it may send
         * application data: that is, through the whole handshake. */
        if (br_sslio_flush(&ioc) < 0) {
                res->hs_code = br_ssl_engine_last_error(&ec->cc.eng);
                if (res->hs_code == 0)
                        res->hs_code = BR_ERR_IO;
                res->hs_timed_out = io.timed_out;
                goto sniffed;
        }
        res->version = br_ssl_engine_get_version(&ec->cc.eng);
        if (!resume)
                br_ssl_engine_get_session_parameters(&ec->cc.eng, session);
        if (mqtt)
                probe_mqtt(s, &ioc, res);
        tls_close(&ec->cc.eng, &io);
sniffed:
        res->server_hello = io.sniff.server_hello;
        res->suite = io.sniff.suite;
        res->mfl_echoed = io.sniff.mfl_echoed;
        res->mfl_len = io.sniff.mfl_echoed && io.sniff.mfl_code >= 1 && io.sniff.mfl_code <= 4
                ? 256u << io.sniff.mfl_code : 0;
        res->resumed = resume && res->hs_code == 0 && io.sniff.server_hello && io.sniff.sid_len > 0 &&
                       io.sniff.sid_len == session->session_id_len &&
                       memcmp(io.sniff.sid, session->session_id, io.sniff.sid_len) == 0;
out:
        if (io.fd >= 0)
                close(io.fd);
}

static void print_json(const struct probe_setup *s, const struct probe_result *r1, const struct probe_result *r2,
                       bool tried_resume, bool device_ok) {
        const struct doctor_connect_args *a = s->a;

        printf("{\"host\":");
        json_string(stdout, s->host);
        printf(",\"port\":%s,\"name\":", s->port);
        json_string(stdout, s->name && *s->name ? s->name : NULL);
        printf(",\"time\":%lld,\"tcp\":{\"ok\":%s,\"error\":", (long long) a->at, r1->tcp_ok ? "true" : "false");
        json_string(stdout, r1->tcp_ok ? NULL : r1->tcp_error);
        printf("},\"handshake\":{\"ok\":%s,\"code\":%d,\"error\":", r1->tcp_ok && r1->hs_code == 0 ? "true" : "false",
               r1->hs_code);
        json_string(stdout, r1->tcp_ok ? BR_ERROR_NAME(r1->hs_code) : "TCP");
        printf(",\"text\":");
        json_string(stdout, r1->tcp_ok ? BR_ERROR_TEXT(r1->hs_code) : r1->tcp_error);
        printf(",\"timed_out\":%s}", r1->hs_timed_out ? "true" : "false");
        printf(",\"version\":");
        json_string(stdout, r1->hs_code == 0 && r1->tcp_ok ? esp_version_name(r1->version) : NULL);
        printf(",\"suite\":");
        json_string(stdout, r1->server_hello ? esp_suite_name(r1->suite) : NULL);
        printf(",\"suite_id\":%u", r1->server_hello ? r1->suite : 0u);
        printf(",\"mfl\":{\"requested\":512,\"accepted\":%s}", r1->mfl_echoed && r1->mfl_len == 512 ? "true" : "false");
        printf(",\"resumption\":{\"tried\":%s,\"resumed\":%s,\"code\":%d,\"error\":", tried_resume ? "true" : "false",
               tried_resume && r2->resumed ? "true" : "false", tried_resume ? r2->hs_code : 0);
        json_string(stdout, tried_resume ? (r2->tcp_ok ? BR_ERROR_NAME(r2->hs_code) : "TCP") : NULL);
        printf("},\"mqtt\":{\"tried\":%s,\"client_id\":", r1->mqtt_tried ? "true" : "false");
        json_string(stdout, s->client_id);
        printf(",\"connack\":");
        if (r1->connack >= 0)
                printf("%d", r1->connack);
        else
                printf("null");
        printf(",\"text\":");
        json_string(stdout, !r1->mqtt_tried ? NULL : r1->connack >= 0 ? mqtt_probe_connack_text(r1->connack) : r1->mqtt_error);
        printf("},\"device_ok\":%s}\n", device_ok ? "true" : "false");
}

static void print_text(const struct probe_setup *s, const struct probe_result *r1, const struct probe_result *r2,
                       bool tried_resume, bool device_ok) {
        printf("target:        %s:%s\n", s->host, s->port);
        printf("server name:   %s\n", s->name && *s->name ? s->name : "(none: name check off, like connect(IPAddress))");
        if (!r1->tcp_ok) {
                printf("TCP:           FAIL %s\n\nThe device would NOT connect.\n", r1->tcp_error);
                return;
        }
        if (r1->hs_code == 0)
                printf("TLS handshake: OK\n");
        else
                printf("TLS handshake: FAIL %s (%d): %s%s\n", BR_ERROR_NAME(r1->hs_code), r1->hs_code,
                       BR_ERROR_TEXT(r1->hs_code), r1->hs_timed_out ? " (timed out)" : "");
        if (r1->hs_code == 0)
                printf("version:       %s\n", esp_version_name(r1->version));
        if (r1->server_hello)
                printf("suite:         %s\n", esp_suite_name(r1->suite) ? esp_suite_name(r1->suite) : "(not offered)");
        if (r1->server_hello)
                printf("512-byte fragments (RFC 6066): %s\n", r1->mfl_echoed && r1->mfl_len == 512 ? "accepted" :
                       "NOT accepted: the device needs its full 16 KB receive buffer");
        if (tried_resume)
                printf("session resumption: %s\n", r2->resumed ? "yes (session ID)" :
                       r2->hs_code != 0 ? "second connection failed" :
                       "no: every reconnect pays a full handshake (server needs a session cache and "
                       "SSL_CTX_set_session_id_context)");
        if (r1->mqtt_tried) {
                if (r1->connack >= 0)
                        printf("MQTT CONNACK:  %d (%s)%s\n", r1->connack, mqtt_probe_connack_text(r1->connack),
                               r1->connack == 0 ? "" : " - the device is refused");
                else
                        printf("MQTT:          FAIL %s\n", r1->mqtt_error);
        }
        if (r1->hs_code == BR_ERR_X509_BAD_SERVER_NAME || r1->hs_code == BR_ERR_X509_NOT_TRUSTED ||
            r1->hs_code == BR_ERR_X509_EXPIRED)
                printf("\nRun \"mqtt-edge-bridge-doctor cert\" on the server's certificate for the cause and the fix.\n");
        printf("\n%s\n", device_ok ? "The device would connect." : "The device would NOT connect.");
}

static int load_setup(struct probe_setup *s) {
        const struct doctor_connect_args *a = s->a;
        _cleanup_free_ unsigned char *buf = NULL;
        struct br_certs ca = {};
        size_t len;
        int r;

        r = fileio_read_all(a->ca_path, &buf, &len);
        if (r >= 0)
                r = br_certs_parse(buf, len, &ca);
        if (r >= 0)
                r = br_anchors_from_certs(&ca, &s->ta);
        if (r >= 0)
                s->issuer_key_type = br_cert_key_type(&ca.v[0]);
        br_certs_done(&ca);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: %s\n", a->ca_path,
                        r == -ENODATA ? "no certificate in this file" : strerror(-r));
                return r;
        }
        if (!a->cert_path != !a->key_path) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: --cert and --key go together\n");
                return -EINVAL;
        }
        if (!a->cert_path)
                return 0;
        free(buf);
        buf = NULL;
        r = fileio_read_all(a->cert_path, &buf, &len);
        if (r >= 0)
                r = br_certs_parse(buf, len, &s->chain);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: %s\n", a->cert_path,
                        r == -ENODATA ? "no certificate in this file" : strerror(-r));
                return r;
        }
        free(buf);
        buf = NULL;
        s->key = calloc(1, sizeof *s->key);
        if (!s->key)
                return -ENOMEM;
        r = fileio_read_all(a->key_path, &buf, &len);
        if (r >= 0)
                r = br_key_parse(buf, len, s->key);
        if (buf)
                explicit_bzero(buf, len);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: %s\n", a->key_path,
                        r == -EBADMSG || r == -ENODATA ? "not a private key BearSSL can read" : strerror(-r));
                return r;
        }
        return 0;
}

int doctor_connect_run(const struct doctor_connect_args *a) {
        struct probe_setup s = { .a = a };
        _cleanup_free_ char *host = NULL, *port = NULL, *cid = NULL;
        _cleanup_free_ struct esp_client *ec = NULL;
        struct probe_result r1, r2 = {};
        br_ssl_session_parameters session = {};
        bool tried_resume = false, device_ok;
        int ret = 2;

        if (split_target(a->target, &host, &port) < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: expected HOST:PORT\n", a->target);
                return 2;
        }
        s.host = host;
        s.port = port;
        /* PubSubClient's setServer("192.168.0.52") hands the string to
         * connect(const char *), which checks it as the server name. */
        s.name = a->name ? a->name : host;
        if (load_setup(&s) < 0)
                goto out;
        if (a->client_id)
                s.client_id = a->client_id;
        else if (a->cert_path) {
                _cleanup_x509_stack_ STACK_OF(X509) *sk = NULL;
                char cn[256] = "";

                if (x509_load_file(a->cert_path, &sk) >= 0)
                        x509_subject_cn(sk_X509_value(sk, 0), cn, sizeof cn);
                cid = strdup(cn);
                if (!cid)
                        goto out;
                s.client_id = cid;
        } else
                s.client_id = "";
        ec = malloc(sizeof *ec);
        if (!ec)
                goto out;

        probe_once(&s, ec, !a->tls_only, &session, false, &r1);
        if (r1.tcp_ok && r1.hs_code == 0 && !a->no_resume && session.session_id_len > 0) {
                tried_resume = true;
                probe_once(&s, ec, false, &session, true, &r2);
        } else if (r1.tcp_ok && r1.hs_code == 0 && !a->no_resume) {
                /* The server sent an empty session ID: it will never resume. */
                tried_resume = true;
                r2.tcp_ok = true;
        }

        device_ok = r1.tcp_ok && r1.hs_code == 0 && (a->tls_only || r1.connack == 0);
        if (a->json)
                print_json(&s, &r1, &r2, tried_resume, device_ok);
        else
                print_text(&s, &r1, &r2, tried_resume, device_ok);
        ret = device_ok ? 0 : 1;
out:
        explicit_bzero(&session, sizeof session);
        if (s.key) {
                explicit_bzero(s.key, sizeof *s.key);
                free(s.key);
        }
        br_anchors_done(&s.ta);
        br_certs_done(&s.chain);
        return ret;
}
