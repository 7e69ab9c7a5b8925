/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * br_creds — load the device's TLS credentials from PEM files into the
 * structures BearSSL wants, the way the ESP8266 core's BearSSLHelpers
 * (X509List, PrivateKey) does it on the device.
 *
 * Host only: allocates with malloc at load time; br_creds_free() releases
 * everything. The BearSSL structures point into memory owned by the
 * struct br_creds and stay valid until br_creds_free().
 */

#include <stdbool.h>
#include <stddef.h>

#include <bearssl.h>

struct br_creds {
        br_x509_trust_anchor *anchors;     /* from the CA file */
        size_t n_anchors;
        br_x509_certificate *chain;        /* the client certificate (+ intermediates) */
        size_t n_chain;
        int key_type;                      /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC, 0 = no key */
        const br_rsa_private_key *rsa;     /* points into skey */
        const br_ec_private_key *ec;
        unsigned chain_issuer_key_type;    /* key type of the CA that signed chain[0] */
        br_skey_decoder_context *skey;
        void **allocs;                     /* everything else we allocated */
        size_t n_allocs;
};

/*
 * Load ca (trust anchors: every certificate in the file; flagged as a CA
 * anchor only when basicConstraints says CA:TRUE, as BearSSLHelpers does),
 * cert (chain, may be NULL) and key (RSA or EC, PKCS#1/SEC1/PKCS#8; NULL
 * if cert is NULL). Returns 0, or a negative errno value with a message
 * in err.
 */
int br_creds_load(struct br_creds *c, const char *ca, const char *cert, const char *key,
                  char *err, size_t errlen);
/* Release everything; accepts a zeroed or already freed struct. */
void br_creds_free(struct br_creds *c);
