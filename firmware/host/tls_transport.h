/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * tls_transport — struct edge_transport over a POSIX TCP socket and
 * Debian's libbearssl, configured the way the ESP8266 Arduino core
 * configures BearSSL::WiFiClientSecure (WiFiClientSecureBearSSL.cpp):
 *
 *   - br_ssl_client_base_init(): the core's full cipher suite list (the
 *     same order as BearSSL's ssl_client_full.c), TLS 1.0–1.2,
 *     BR_OPT_NO_RENEGOTIATION, default RSA/ECDSA/AES/ChaCha/3DES code;
 *   - I/O buffers of recv + 325 and xmit + 85 bytes (setBufferSizes();
 *     default 16384 / 512), so BearSSL asks the server for the Maximum
 *     Fragment Length (RFC 6066) that fits the smaller one;
 *   - br_x509_minimal with the trust anchors from the CA file, the server
 *     name checked against the string given (NULL/"" = no check, like
 *     connect(IPAddress));
 *   - client certificate + RSA or EC key (setClientRSACert/ECCert);
 *   - the session parameters kept across reconnects (BearSSL::Session), so
 *     a reconnect offers the old session ID (resumption by ID, no tickets).
 *
 * Reads and writes never block; connect() does (TCP connect + handshake,
 * bounded by connect_timeout_ms), as WiFiClientSecure::connect() does.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <bearssl.h>

#include "br_creds.h"
#include "edge_transport.h"

struct tls_transport_config {
        const char *host;
        const char *port;
        const char *server_name;       /* NULL or "" = no name check */
        const struct br_creds *creds;  /* caller keeps it alive */
        size_t recv_size;              /* plaintext buffer sizes, 512..16384 */
        size_t xmit_size;
        uint32_t connect_timeout_ms;   /* TCP + handshake; WiFiClientSecure: 15000 */
        bool no_resume;                /* never offer the saved session */
        const uint16_t *suites;        /* NULL = the core's list; else only these (a Tasmota build's) */
        size_t n_suites;
};

/* What the last connect() did. */
struct tls_info {
        bool ok;
        int br_err;                    /* BearSSL error code, 0 if none */
        int sys_err;                   /* negative errno of a TCP-level failure, 0 if none */
        unsigned version;              /* 0x0303 = TLS 1.2 */
        uint16_t suite;
        bool resumed;
        unsigned mfl;                  /* fragment length requested from the server, 0 = none */
};

struct tls_transport {
        struct tls_transport_config cfg;
        int fd;
        bool open;
        int io_err;                    /* socket failure (negative errno), sticky until reconnect */
        br_ssl_client_context cc;
        br_x509_minimal_context xc;
        unsigned char *ibuf, *obuf;
        size_t ilen, olen;
        br_ssl_session_parameters session;
        bool have_session;
        uint64_t hard_deadline_ms;     /* 0 = none: caps connect() (monotonic ms) */
        struct tls_info info;
        uint64_t records_out;          /* TLS records sent (flushes that produced one) */
};

/* Allocates the I/O buffers. Returns 0 or -ENOMEM. */
int tls_transport_init(struct tls_transport *t, const struct tls_transport_config *cfg);
/* Closes (abruptly) and frees the buffers. */
void tls_transport_done(struct tls_transport *t);
/* Fill *out with this transport's functions (ctx = t). */
void tls_transport_bind(struct tls_transport *t, struct edge_transport *out);

/* For the caller's poll(): the socket (-1 when closed) and whether
 * BearSSL has record bytes waiting for the socket to become writable. */
int tls_transport_fd(const struct tls_transport *t);
bool tls_transport_want_write(const struct tls_transport *t);

uint64_t tls_monotonic_ms(void);
