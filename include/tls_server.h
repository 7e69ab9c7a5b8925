/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * tls_server — the OpenSSL context of the device listener.
 *
 * Built for what an ESP8266 (BearSSL) can do (see BEARSSL-FACTS.md):
 * TLS 1.2 minimum by default, ECDHE with AES-GCM / ChaCha20 and the CBC
 * suites of setCiphersLessSecure(), a server-side session cache with a
 * session id context (BearSSL resumes by session ID only), Maximum
 * Fragment Length honoured (OpenSSL 3 does it by itself), released idle
 * buffers, no renegotiation, client certificates verified against the CA
 * and the CRL.
 */

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <openssl/ssl.h>

#include "config.h"

/*
 * One certificate the listener can present (several, chosen by SNI: the
 * [listener] certfile/keyfile pairs and certdir's NAME.crt/NAME.key).
 * names are those BearSSL would accept it for (x509_minimal): its SAN
 * dNSName entries when it has a SAN, else its subject CN.
 */
struct tls_server_cert {
        char *file;                  /* the certfile it was read from */
        char cn[256];                /* subject CN, "" if none */
        char **names;                /* chosen when the SNI equals one (ASCII case-insensitive) */
        size_t n_names;
        time_t not_after;
        X509 *x509;
        EVP_PKEY *pkey;
        STACK_OF(X509) *chain;       /* intermediates, may be NULL */
};

/* A CA certificate of [listener] cafile, for the expiry warnings. */
struct tls_server_ca {
        char name[256];              /* subject CN, or the whole subject when it has no CN */
        time_t not_after;
};

/* What a listener context holds, owned by the SSL_CTX (freed with it). */
struct tls_server_certs {
        struct tls_server_cert *v;
        size_t n;
        size_t default_index;        /* the one for no SNI or no match */
        struct tls_server_ca *ca;
        size_t n_ca;
};

/* The certificates of a context made by tls_server_ctx_new (never NULL
 * for one; NULL for any other context). Valid while ctx lives. */
const struct tls_server_certs *tls_server_ctx_certs(SSL_CTX *ctx);

/*
 * Which of certs serves a ClientHello with this SNI host name (NULL or ""
 * = none sent): the index of the certificate one of whose names equals it,
 * else default_index. Pure; exposed for the unit test. An IP literal is
 * matched like any other name: BearSSL sends the address it dials as SNI
 * although RFC 6066 §3 does not allow literal addresses there.
 */
size_t tls_server_pick_cert(const struct tls_server_certs *certs, const char *sni);

/* The cipher list used when [listener] ciphers is not set. */
extern const char tls_server_default_ciphers[];

/*
 * Make the listener's SSL_CTX from [listener]. Loads every certfile/keyfile
 * pair and certdir, cafile, crlfile now, so any problem shows at start-up
 * or reload. One context serves every name: a servername callback puts the
 * chosen certificate on the connection (SSL_use_cert_and_key), so the
 * session cache and session id context are the same for all names and a
 * device resumes whichever name it dials.
 * Returns 0 and *out (caller owns: SSL_CTX_free), or a negative errno with
 * a message in err naming the file and OpenSSL's reason.
 */
int tls_server_ctx_new(const struct config_listener *l, SSL_CTX **out, char *err, size_t errlen);

/*
 * Per-connection verification notes, filled by the verify callback while
 * the handshake runs, so the failure can be logged with the subject of the
 * certificate the device presented and OpenSSL's reason.
 */
struct tls_verify_info {
        char subject[256];   /* of the leaf (depth 0), "" if none seen */
        char reason[128];    /* first verification error, "" if none */
};

/* Attach info to ssl (before the handshake). info must outlive ssl. */
void tls_server_attach_verify_info(SSL *ssl, struct tls_verify_info *info);

/*
 * The CN of the verified peer certificate, copied into buf (NUL-terminated).
 * Returns 0; -ENOENT when the peer sent no certificate; -EINVAL when its
 * subject has no CN or the CN contains a NUL or is longer than buf.
 */
int tls_server_peer_cn(SSL *ssl, char *buf, size_t len);

/*
 * Verify the certificate the peer of an established ssl presented (and
 * the intermediates it sent) against ctx's trust store, CRLs and verify
 * settings, as a new handshake with ctx would now (after a reload changed
 * the CA or CRL). Returns 0 when it verifies, or when ctx verifies no
 * client certificate at all; -ENOENT when the peer sent no certificate;
 * -EPERM with OpenSSL's reason in why ("certificate revoked", ...) when it
 * does not verify; -ENOMEM.
 */
int tls_server_peer_reverify(SSL *ssl, SSL_CTX *ctx, char *why, size_t whylen);

/*
 * A SHA-256 over what decides whether a client certificate verifies with
 * ctx: every CA certificate and CRL in its store, the store's verify flags
 * and the verify mode. Two contexts with the same digest accept the same
 * devices. Returns 0 and out, or -ENOMEM.
 */
int tls_server_trust_digest(SSL_CTX *ctx, unsigned char out[32]);

/*
 * Make the upstream (client) SSL_CTX from [upstream], shared by every
 * libmosquitto client through MOSQ_OPT_SSL_CTX. libmosquitto applies no
 * verification to a context passed this way, so this sets it all:
 * SSL_VERIFY_PEER, the CA file/path, and the name or IP that must appear in
 * the broker's SAN (server_name, default host) via X509_VERIFY_PARAM.
 * Returns 0 and *out (NULL when [upstream] has no CA: plain TCP / Unix
 * socket), or a negative errno with a message in err.
 */
int tls_client_ctx_new(const struct config_upstream *u, SSL_CTX **out, char *err, size_t errlen);
