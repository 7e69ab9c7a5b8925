/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls_conn.h"

/* A new SSL on fd, either side. */
static int tls_conn_new(struct tls_conn *c, SSL_CTX *ctx, int fd)
{
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->ssl = SSL_new(ctx);
        if (!c->ssl)
                return -ENOMEM;
        SSL_set_fd(c->ssl, fd);
        return 0;
}

int tls_conn_init(struct tls_conn *c, SSL_CTX *ctx, int fd)
{
        if (tls_conn_new(c, ctx, fd) < 0)
                return -ENOMEM;
        SSL_set_accept_state(c->ssl);
        tls_server_attach_verify_info(c->ssl, &c->verify);
        return 0;
}

int tls_conn_init_client(struct tls_conn *c, SSL_CTX *ctx, int fd, const char *name)
{
        unsigned char addr[16];

        if (tls_conn_new(c, ctx, fd) < 0)
                return -ENOMEM;
        SSL_set_connect_state(c->ssl);
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        /* A renegotiation the server starts would make SSL_write wait for
         * reads (and SSL_read for writes) mid-stream; no broker needs it. */
        SSL_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION);
        if (!name || !name[0])
                return 0;
        X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
        if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1) {
                /* RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not
                 * permitted in HostName": no SNI, the SAN iPAddress check.
                 * The context may carry another host's name (several
                 * [upstream] hosts): this one replaces it, not adds to it. */
                if (X509_VERIFY_PARAM_set1_host(param, NULL, 0) != 1 ||
                    X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1)
                        goto fail;
        } else {
                X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                if (X509_VERIFY_PARAM_set1_ip(param, NULL, 0) != 1 ||
                    X509_VERIFY_PARAM_set1_host(param, name, 0) != 1 ||
                    SSL_set_tlsext_host_name(c->ssl, name) != 1)
                        goto fail;
        }
        return 0;
fail:
        ERR_clear_error();
        tls_conn_done(c);
        return -EINVAL;
}

void tls_conn_done(struct tls_conn *c)
{
        if (!c || !c->ssl)
                return;
        SSL_free(c->ssl);
        c->ssl = NULL;
}

/*
 * SSL_get_error() needs an empty error queue before each I/O call ("the
 * current thread's error queue must be empty", SSL_get_error(3)), but
 * ERR_clear_error() walks all 16 slots every time: ~1,100 instructions, on
 * every read and write. Peeking is a few dozen, and the queue is almost
 * always empty: every failure path here clears it already.
 */
static void tls_conn_clear_errors(void)
{
        if (ERR_peek_error() != 0)
                ERR_clear_error();
}

/* Turn an SSL error into errno and words. Clears OpenSSL's error queue so
 * one connection's failure never shows up as the next one's. */
static int tls_conn_error(struct tls_conn *c, int ret, char *why, size_t whylen)
{
        int err = SSL_get_error(c->ssl, ret);
        unsigned long e;

        switch (err) {
        case SSL_ERROR_WANT_READ:
                return -EAGAIN;
        case SSL_ERROR_WANT_WRITE:
                c->want_write = true;
                return -EAGAIN;
        case SSL_ERROR_ZERO_RETURN:
                c->eof = true;
                return 0;
        case SSL_ERROR_SYSCALL:
                c->broken = true;
                e = ERR_get_error();
                if (e == 0) {
                        /* EOF without close_notify, or a socket error. */
                        int saved = errno;
                        snprintf(why, whylen, "%s", saved ? strerror(saved) : "connection closed without TLS close_notify");
                        ERR_clear_error();
                        return saved ? -saved : -ECONNRESET;
                }
                ERR_error_string_n(e, why, whylen);
                ERR_clear_error();
                return -EIO;
        default:
                c->failed = true;
                e = ERR_peek_last_error();
                if (!SSL_is_server(c->ssl) && SSL_get_verify_result(c->ssl) != X509_V_OK)
                        snprintf(why, whylen, "certificate verify failed: %s",
                                 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
                else if (c->verify.reason[0])
                        snprintf(why, whylen, "%s", c->verify.reason);
                else if (e && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
                        snprintf(why, whylen, "no client certificate");
                else if (e)
                        ERR_error_string_n(e, why, whylen);
                else
                        snprintf(why, whylen, "TLS error %d", err);
                ERR_clear_error();
                return -EPROTO;
        }
}

int tls_conn_handshake(struct tls_conn *c, char *why, size_t whylen)
{
        int r;

        c->want_write = false;
        tls_conn_clear_errors();
        errno = 0;
        r = SSL_do_handshake(c->ssl);
        if (r == 1) {
                c->handshake_done = true;
                return 1;
        }
        r = tls_conn_error(c, r, why, whylen);
        if (r == 0) {
                snprintf(why, whylen, "closed during the TLS handshake");
                return -ECONNRESET;
        }
        return r == -EAGAIN ? 0 : r;
}

ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len, char *why, size_t whylen)
{
        size_t n = 0;
        int r;

        c->read_wants_write = false;
        tls_conn_clear_errors();
        errno = 0;
        r = SSL_read_ex(c->ssl, buf, len, &n);
        if (r == 1) {
                c->want_write = false;
                return (ssize_t) n;
        }
        c->want_write = false;
        r = tls_conn_error(c, 0, why, whylen);
        if (r == -EAGAIN && SSL_get_error(c->ssl, 0) == SSL_ERROR_WANT_WRITE)
                c->read_wants_write = true;
        return r;
}

ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len, char *why, size_t whylen)
{
        size_t n = 0;
        int r;

        c->write_wants_read = false;
        c->want_write = false;
        tls_conn_clear_errors();
        errno = 0;
        r = SSL_write_ex(c->ssl, buf, len, &n);
        if (r == 1)
                return (ssize_t) n;
        r = tls_conn_error(c, 0, why, whylen);
        if (r == -EAGAIN && SSL_get_error(c->ssl, 0) == SSL_ERROR_WANT_READ)
                c->write_wants_read = true;
        if (r == 0) {
                snprintf(why, whylen, "peer closed the connection");
                return -EPIPE;
        }
        return r;
}

void tls_conn_trim(struct tls_conn *c)
{
        /* 0 (nothing freed) while a record is half read or half written:
         * the next idle sweep tries again. */
        if (c && c->ssl && c->handshake_done)
                (void) SSL_free_buffers(c->ssl);
}

void tls_conn_shutdown(struct tls_conn *c)
{
        if (!c->ssl || !c->handshake_done || c->failed)
                return;
        if (c->broken) {
                /* Nothing can be sent; still not a "bad" session (OpenSSL
                 * drops sessions of connections never shut down). */
                SSL_set_shutdown(c->ssl, SSL_get_shutdown(c->ssl) | SSL_SENT_SHUTDOWN);
                return;
        }
        ERR_clear_error();
        (void) SSL_shutdown(c->ssl);
        ERR_clear_error();
}

unsigned tls_conn_poll_events(const struct tls_conn *c, bool has_output, bool want_input)
{
        unsigned ev = 0;

        if (!c->handshake_done)
                return c->want_write ? EPOLLOUT : EPOLLIN;
        if (want_input || c->write_wants_read)
                ev |= EPOLLIN;
        if ((has_output && !c->write_wants_read) || c->read_wants_write || c->want_write)
                ev |= EPOLLOUT;
        return ev;
}

bool tls_conn_pending(const struct tls_conn *c)
{
        return c->ssl && (SSL_pending(c->ssl) > 0 || SSL_has_pending(c->ssl));
}
