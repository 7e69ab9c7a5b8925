/* SPDX-License-Identifier: MIT */
/*
 * tls_transport — see tls_transport.h.
 */
#include "tls_transport.h"
#include "esp8266_profile.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* WiFiClientSecureBearSSL.cpp setBufferSizes(): BearSSL's record overhead,
 * not exported by BearSSL. */
#define MAX_OUT_OVERHEAD 85
#define MAX_IN_OVERHEAD 325


uint64_t tls_monotonic_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static size_t clamp_buf(size_t n)
{
        /* setBufferSizes(): "The data buffers must be between 512B and 16KB" */
        return n < 512 ? 512 : n > 16384 ? 16384 : n;
}

int tls_transport_init(struct tls_transport *t, const struct tls_transport_config *cfg)
{
        memset(t, 0, sizeof(*t));
        t->cfg = *cfg;
        t->fd = -1;
        t->ilen = clamp_buf(cfg->recv_size) + MAX_IN_OVERHEAD;
        t->olen = clamp_buf(cfg->xmit_size) + MAX_OUT_OVERHEAD;
        t->ibuf = malloc(t->ilen);
        t->obuf = malloc(t->olen);
        if (!t->ibuf || !t->obuf) {
                free(t->ibuf);
                free(t->obuf);
                return -ENOMEM;
        }
        if (t->cfg.connect_timeout_ms == 0)
                t->cfg.connect_timeout_ms = 15000; /* WiFiClientSecure::_clear() */
        return 0;
}

static void tls_close_fd(struct tls_transport *t)
{
        if (t->fd >= 0)
                close(t->fd);
        t->fd = -1;
        t->open = false;
}

void tls_transport_done(struct tls_transport *t)
{
        tls_close_fd(t);
        free(t->ibuf);
        free(t->obuf);
        t->ibuf = t->obuf = NULL;
}

int tls_transport_fd(const struct tls_transport *t)
{
        return t->open ? t->fd : -1;
}

bool tls_transport_want_write(const struct tls_transport *t)
{
        return t->open && (br_ssl_engine_current_state(&t->cc.eng) & BR_SSL_SENDREC);
}

/* Move bytes between the socket and the engine without blocking.
 * Returns 0, or a negative errno value once the engine is closed/failed. */
static int tls_pump(struct tls_transport *t)
{
        br_ssl_engine_context *eng = &t->cc.eng;

        if (t->io_err)
                return t->io_err;
        for (;;) {
                unsigned st = br_ssl_engine_current_state(eng);
                bool progress = false;
                unsigned char *buf;
                size_t len;
                ssize_t n;

                if (st & BR_SSL_CLOSED)
                        return br_ssl_engine_last_error(eng) ? -EPROTO : -ECONNRESET;

                if (st & BR_SSL_SENDREC) {
                        buf = br_ssl_engine_sendrec_buf(eng, &len);
                        n = send(t->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (n > 0) {
                                br_ssl_engine_sendrec_ack(eng, (size_t)n);
                                progress = true;
                        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                                /* br_sslio calls this BR_ERR_IO; we keep the errno. */
                                t->io_err = -errno;
                                return t->io_err;
                        }
                }
                if (st & BR_SSL_RECVREC) {
                        buf = br_ssl_engine_recvrec_buf(eng, &len);
                        n = recv(t->fd, buf, len, MSG_DONTWAIT);
                        if (n > 0) {
                                br_ssl_engine_recvrec_ack(eng, (size_t)n);
                                progress = true;
                        } else if (n == 0) {
                                /* TCP end without close_notify: truncation. */
                                t->io_err = -ECONNRESET;
                                return t->io_err;
                        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                                t->io_err = -errno;
                                return t->io_err;
                        }
                }
                if (!progress)
                        return 0;
        }
}

static int tls_wait(struct tls_transport *t, uint64_t deadline)
{
        struct pollfd pfd = { .fd = t->fd, .events = POLLIN };
        uint64_t now = tls_monotonic_ms();
        int r;

        if (now >= deadline)
                return -ETIMEDOUT;
        if (br_ssl_engine_current_state(&t->cc.eng) & BR_SSL_SENDREC)
                pfd.events |= POLLOUT;
        r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno != EINTR)
                return -errno;
        return 0;
}

static int tcp_connect(struct tls_transport *t, uint64_t deadline)
{
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
        int r, err = -EHOSTUNREACH;

        r = getaddrinfo(t->cfg.host, t->cfg.port, &hints, &res);
        if (r != 0)
                return r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
        for (ai = res; ai; ai = ai->ai_next) {
                struct pollfd pfd;
                socklen_t sl = sizeof(int);
                int fd, soerr = 0, one = 1;
                uint64_t now;

                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
                if (fd < 0) {
                        err = -errno;
                        continue;
                }
                /* lwIP on the device sends small segments at once; so do we,
                 * or Nagle + delayed ACK add 40 ms to every other packet. */
                (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
                        err = -errno;
                        close(fd);
                        continue;
                }
                pfd.fd = fd;
                pfd.events = POLLOUT;
                now = tls_monotonic_ms();
                r = now < deadline ? poll(&pfd, 1, (int)(deadline - now)) : 0;
                if (r <= 0) {
                        err = r == 0 ? -ETIMEDOUT : -errno;
                        close(fd);
                        continue;
                }
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
                        err = soerr ? -soerr : -errno;
                        close(fd);
                        continue;
                }
                t->fd = fd;
                freeaddrinfo(res);
                return 0;
        }
        freeaddrinfo(res);
        return err;
}

/* WiFiClientSecureBearSSL.cpp br_ssl_client_base_init() +
 * _installClientX509Validator() + the client-certificate part of
 * _connectSSL(). */
static void tls_setup_engine(struct tls_transport *t)
{
        br_ssl_client_context *cc = &t->cc;
        br_ssl_engine_context *eng = &cc->eng;
        const struct br_creds *cr = t->cfg.creds;

        esp8266_client_base_init(cc);
        if (t->cfg.n_suites)
                br_ssl_engine_set_suites(eng, t->cfg.suites, t->cfg.n_suites);

        br_x509_minimal_init(&t->xc, &br_sha256_vtable, cr->anchors, cr->n_anchors);
        br_x509_minimal_set_rsa(&t->xc, br_ssl_engine_get_rsavrfy(eng));
        br_x509_minimal_set_ecdsa(&t->xc, br_ssl_engine_get_ec(eng), br_ssl_engine_get_ecdsa(eng));
        br_x509_minimal_set_hash(&t->xc, br_md5_ID, &br_md5_vtable);
        br_x509_minimal_set_hash(&t->xc, br_sha1_ID, &br_sha1_vtable);
        br_x509_minimal_set_hash(&t->xc, br_sha224_ID, &br_sha224_vtable);
        br_x509_minimal_set_hash(&t->xc, br_sha256_ID, &br_sha256_vtable);
        br_x509_minimal_set_hash(&t->xc, br_sha384_ID, &br_sha384_vtable);
        br_x509_minimal_set_hash(&t->xc, br_sha512_ID, &br_sha512_vtable);
        /* No br_x509_minimal_set_time(): BearSSL reads time(), as the
         * device does once SNTP has set its clock. */
        br_ssl_engine_set_x509(eng, &t->xc.vtable);

        br_ssl_engine_set_buffers_bidi(eng, t->ibuf, t->ilen, t->obuf, t->olen);

        if (cr->key_type == BR_KEYTYPE_RSA)
                br_ssl_client_set_single_rsa(cc, cr->chain, cr->n_chain, cr->rsa, br_rsa_pkcs1_sign_get_default());
        else if (cr->key_type == BR_KEYTYPE_EC)
                br_ssl_client_set_single_ec(cc, cr->chain, cr->n_chain, cr->ec,
                                            BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN, cr->chain_issuer_key_type,
                                            br_ec_get_default(), br_ecdsa_sign_asn1_get_default());
}

static int tls_fail(struct tls_transport *t, int br_err, int sys_err)
{
        t->info.ok = false;
        t->info.br_err = br_err;
        t->info.sys_err = sys_err;
        tls_close_fd(t);
        return br_err && br_err != BR_ERR_IO ? -EPROTO : (sys_err ? sys_err : -ECONNRESET);
}

static int tls_connect(void *ctx)
{
        struct tls_transport *t = ctx;
        br_ssl_engine_context *eng = &t->cc.eng;
        const char *name = t->cfg.server_name && *t->cfg.server_name ? t->cfg.server_name : NULL;
        unsigned char offered_id[32];
        size_t offered_len = 0;
        uint64_t deadline;
        bool resume;
        int r;

        tls_close_fd(t);
        t->io_err = 0;
        memset(&t->info, 0, sizeof(t->info));
        deadline = tls_monotonic_ms() + t->cfg.connect_timeout_ms;
        if (t->hard_deadline_ms && t->hard_deadline_ms < deadline)
                deadline = t->hard_deadline_ms;

        r = tcp_connect(t, deadline);
        if (r < 0)
                return tls_fail(t, 0, r);

        tls_setup_engine(t);
        resume = t->have_session && !t->cfg.no_resume;
        if (resume) {
                /* BearSSL::Session: offer the saved session ID again. */
                br_ssl_engine_set_session_parameters(eng, &t->session);
                offered_len = t->session.session_id_len;
                memcpy(offered_id, t->session.session_id, offered_len);
        }
        if (!br_ssl_client_reset(&t->cc, name, resume))
                return tls_fail(t, br_ssl_engine_last_error(eng), 0);
        t->info.mfl = eng->log_max_frag_len < 14 ? 1u << eng->log_max_frag_len : 0;
        t->open = true;

        /* WiFiClientSecure::_wait_for_handshake(): done once SENDAPP. */
        for (;;) {
                unsigned st;

                r = tls_pump(t);
                st = br_ssl_engine_current_state(eng);
                if (st & BR_SSL_CLOSED)
                        return tls_fail(t, br_ssl_engine_last_error(eng) ? br_ssl_engine_last_error(eng)
                                                                        : BR_ERR_IO, 0);
                if (st & BR_SSL_SENDAPP)
                        break;
                if (r < 0)
                        return tls_fail(t, BR_ERR_IO, r);
                r = tls_wait(t, deadline);
                if (r < 0)
                        return tls_fail(t, 0, r);
        }

        t->info.ok = true;
        t->info.version = eng->session.version;
        t->info.suite = eng->session.cipher_suite;
        t->info.resumed = offered_len > 0 && eng->session.session_id_len == offered_len &&
                          memcmp(eng->session.session_id, offered_id, offered_len) == 0;
        /* WiFiClientSecure::stop() saves the parameters into the Session;
         * saving them right after the handshake is equivalent and survives
         * an abrupt end too. */
        br_ssl_engine_get_session_parameters(eng, &t->session);
        t->have_session = true;
        return 0;
}

static int tls_read(void *ctx, uint8_t *buf, size_t len)
{
        struct tls_transport *t = ctx;
        br_ssl_engine_context *eng = &t->cc.eng;
        int r = 0;

        if (!t->open)
                return -ENOTCONN;
        for (int pass = 0; pass < 2; pass++) {
                if (br_ssl_engine_current_state(eng) & BR_SSL_RECVAPP) {
                        size_t alen;
                        unsigned char *app = br_ssl_engine_recvapp_buf(eng, &alen);

                        if (alen > len)
                                alen = len;
                        memcpy(buf, app, alen);
                        br_ssl_engine_recvapp_ack(eng, alen);
                        return (int)alen;
                }
                if (pass == 0)
                        r = tls_pump(t);
        }
        return r;
}

static int tls_write(void *ctx, const uint8_t *buf, size_t len)
{
        struct tls_transport *t = ctx;
        br_ssl_engine_context *eng = &t->cc.eng;
        unsigned char *app;
        size_t alen;
        int r;

        if (!t->open)
                return -ENOTCONN;
        r = tls_pump(t);
        if (r < 0)
                return r;
        if (!(br_ssl_engine_current_state(eng) & BR_SSL_SENDAPP))
                return 0;
        app = br_ssl_engine_sendapp_buf(eng, &alen);
        if (alen > len)
                alen = len;
        memcpy(app, buf, alen);
        /* A full buffer becomes a record by itself; a partial one waits
         * for flush(), so one poll's packets share a record. */
        br_ssl_engine_sendapp_ack(eng, alen);
        r = tls_pump(t);
        return r < 0 ? r : (int)alen;
}

static int tls_flush(void *ctx)
{
        struct tls_transport *t = ctx;

        if (!t->open)
                return -ENOTCONN;
        br_ssl_engine_flush(&t->cc.eng, 0);
        t->records_out++;
        return tls_pump(t);
}

static void tls_close(void *ctx, bool graceful)
{
        struct tls_transport *t = ctx;
        br_ssl_engine_context *eng = &t->cc.eng;

        if (!t->open) {
                tls_close_fd(t);
                return;
        }
        if (graceful) {
                /* Send close_notify (and anything before it), but do not
                 * wait for the server's: RFC 5246 §7.2.1 allows that. */
                uint64_t deadline = tls_monotonic_ms() + 1000;

                br_ssl_engine_close(eng);
                while (br_ssl_engine_current_state(eng) & BR_SSL_SENDREC) {
                        if (tls_pump(t) < 0 || tls_wait(t, deadline) < 0)
                                break;
                }
                (void)shutdown(t->fd, SHUT_WR);
        }
        tls_close_fd(t);
}

static uint32_t tls_millis(void *ctx)
{
        (void)ctx;
        return (uint32_t)tls_monotonic_ms();
}

void tls_transport_bind(struct tls_transport *t, struct edge_transport *out)
{
        out->ctx = t;
        out->connect = tls_connect;
        out->read = tls_read;
        out->write = tls_write;
        out->flush = tls_flush;
        out->close = tls_close;
        out->millis = tls_millis;
}
