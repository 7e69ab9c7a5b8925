/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * tls_conn — one non-blocking OpenSSL connection on a socket: the server
 * side for devices (tls_conn_init), the client side for the upstream link
 * (tls_conn_init_client).
 *
 * Level-triggered use: after every call, ask tls_conn_poll_events() which
 * epoll events to wait for. The read-wants-write / write-wants-read cases
 * (a TLS record that needs the other direction to progress) are tracked
 * here, as in redis's tls.c. Bytes that OpenSSL already decrypted are not
 * visible to epoll: after tls_conn_read(), consult tls_conn_pending() (and
 * read again while it is true), or packets are stranded. With nothing
 * pending, level-triggered epoll reports whatever is still in the socket:
 * no read that ends in -EAGAIN is needed.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <openssl/ssl.h>

#include "tls_server.h"

struct tls_conn {
        SSL *ssl;
        int fd;                 /* not owned: the caller closes it */
        bool handshake_done;
        bool read_wants_write;  /* last SSL_read needs the socket writable */
        bool write_wants_read;  /* last SSL_write needs the socket readable */
        bool want_write;        /* handshake or write blocked on EPOLLOUT */
        bool eof;
        bool failed;            /* a TLS protocol error: the session must not be resumed */
        bool broken;            /* the socket failed or ended without close_notify */
        struct tls_verify_info verify;
};

/* Wrap fd with a new SSL from ctx, server side. Returns 0 or -ENOMEM. */
int tls_conn_init(struct tls_conn *c, SSL_CTX *ctx, int fd);

/*
 * Wrap fd with a new SSL from ctx, client side. name (may be NULL: keep
 * what ctx says) is the host name or IP literal the peer's certificate
 * must carry in its subjectAltName (X509_VERIFY_PARAM_set1_host /
 * set1_ip_asc on this SSL, the same check tls_client_ctx_new puts on the
 * context); a host name is also sent as SNI (RFC 6066 §3 forbids IP
 * literals there). Partial writes and a moving write buffer are allowed,
 * so the caller may write from a buffer that grows between retries.
 * Returns 0, -ENOMEM, or -EINVAL (name is neither a host name nor an IP).
 */
int tls_conn_init_client(struct tls_conn *c, SSL_CTX *ctx, int fd, const char *name);

/* Free the SSL (no close_notify is sent). NULL-safe, idempotent. */
void tls_conn_done(struct tls_conn *c);

/*
 * Drive the handshake. Returns 1 when complete, 0 when it needs more I/O
 * (see tls_conn_poll_events), or a negative errno on failure with a reason
 * (OpenSSL's, or the certificate verification error) in why. On the
 * client side a rejected server certificate reads "certificate verify
 * failed: " and OpenSSL's verification error ("hostname mismatch", ...).
 */
int tls_conn_handshake(struct tls_conn *c, char *why, size_t whylen);

/*
 * Read decrypted bytes. Returns the count (> 0), -EAGAIN when nothing more
 * is available now, 0 at the end of the stream (close_notify or TCP FIN),
 * or -EIO / -ECONNRESET with why set.
 */
ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len, char *why, size_t whylen);

/* Write up to len bytes. Returns the count written (> 0), -EAGAIN, or a
 * negative errno with why set. Partial writes happen. */
ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len, char *why, size_t whylen);

/*
 * End the connection's TLS: send close_notify once (best effort, never
 * blocks) when the connection is still sound. Either way, unless a TLS
 * protocol error occurred, mark the session as properly shut down so that
 * OpenSSL keeps it in the session cache: a device whose Wi-Fi dropped
 * resumes (BearSSL session ID) instead of paying a full handshake again.
 */
void tls_conn_shutdown(struct tls_conn *c);

/* EPOLLIN/EPOLLOUT to wait for, given whether the caller has bytes queued
 * to write (has_output) and wants input at all (want_input). */
unsigned tls_conn_poll_events(const struct tls_conn *c, bool has_output, bool want_input);

/*
 * Give the record buffers (~34 kB: 16 kB and some each way) back while the
 * connection is idle; OpenSSL allocates them again at the next read or
 * write. Does nothing while a record is half done. NULL-safe. Instead of
 * SSL_MODE_RELEASE_BUFFERS, which frees and reallocates them on every
 * record: two large allocations per message under load.
 */
void tls_conn_trim(struct tls_conn *c);

/* Bytes OpenSSL holds decrypted (or a whole record buffered). */
bool tls_conn_pending(const struct tls_conn *c);
