/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * tls_sniff — reads the server's plaintext ServerHello off the wire as the
 * bytes arrive, to learn what BearSSL keeps to itself: whether the server
 * echoed the Maximum Fragment Length extension (RFC 6066 §4: an accepted
 * request is echoed, an ignored one is not) and which session ID it sent
 * (RFC 5246 §7.4.1.3: the same ID as the client offered means resumed).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tls_sniff {
        /* record layer state */
        unsigned char hdr[5];
        size_t hdr_have;
        size_t rec_left;
        unsigned char rec_type;
        /* handshake bytes collected until the ServerHello is whole */
        unsigned char hs[1024];
        size_t hs_len;
        bool done;

        /* results, valid when server_hello is true */
        bool server_hello;
        uint16_t version;
        uint16_t suite;
        unsigned char sid[32];
        size_t sid_len;
        bool mfl_echoed;
        unsigned char mfl_code;         /* 1 = 512, 2 = 1024, 3 = 2048, 4 = 4096 */
};

void tls_sniff_init(struct tls_sniff *s);

/* Feeds bytes received from the server, in order. Stops looking (done)
 * after the ServerHello, at ChangeCipherSpec, or on anything unexpected. */
void tls_sniff_feed(struct tls_sniff *s, const unsigned char *p, size_t n);
