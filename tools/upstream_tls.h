/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * upstream_tls — watching the TLS handshake libmosquitto runs on the
 * daemon's own upstream SSL_CTX (tls_client_ctx_new), so the doctor can
 * say what the broker presented and why OpenSSL accepted or refused it.
 *
 * The watch adds to the context, without changing its verification:
 *   - a verify callback that keeps the broker's leaf certificate and the
 *     first verification error (X509_V_ERR_*, depth) and returns OpenSSL's
 *     own verdict unchanged;
 *   - an info callback that, when the handshake starts, sets SNI as the
 *     daemon's tls_conn_init_client does (the expected name when it is a
 *     host name; none for an IP literal, RFC 6066 §3, or for no name) in
 *     place of libmosquitto's (it sends the connect host), and records the
 *     negotiated version and cipher and any alert the broker sent.
 * One watch per context; the context must not be shared with another
 * connection while it is attached.
 */

#include <stdbool.h>

#include <openssl/ssl.h>

#include "x509_info.h"

struct upstream_tls_seen {
        char *name;                     /* the SNI name (owned); NULL = no SNI */
        bool started;                   /* ClientHello on its way */
        bool done;                      /* handshake complete */
        char version[16];               /* "TLSv1.3" */
        char cipher[64];
        X509 *leaf;                     /* the broker's certificate (owned), NULL if none came */
        int verify_code;                /* first verification error; X509_V_OK when none */
        int verify_depth;
        char alert[64];                 /* alert the broker sent, "" = none */
};

/* Attaches the watch to ctx; seen must outlive every SSL made from ctx.
 * name is the one the daemon puts on each upstream connection (uplink.c:
 * server_name, else host unless that is a socket path; NULL = none); it
 * is copied. Returns 0 or -ENOMEM. */
int upstream_tls_watch(SSL_CTX *ctx, struct upstream_tls_seen *seen, const char *name);

/* Whether the leaf carries name the way the verification checks it
 * (X509_check_ip_asc for an IP literal, else X509_check_host without
 * partial wildcards). -1 when there is no leaf or no name. */
int upstream_tls_name_matches(const struct upstream_tls_seen *seen, const char *name);

/* Frees what seen owns and zeroes it. NULL-safe. */
void upstream_tls_seen_done(struct upstream_tls_seen *seen);
