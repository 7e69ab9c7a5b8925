/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * br_chain — certificates, trust anchors and keys as the ESP8266 Arduino
 * core hands them to BearSSL, and the x509_minimal verdict on a chain.
 *
 * Trust anchors are built the way the core's BearSSLHelpers.cpp does it
 * (certificate_to_trust_anchor): the subject DN and public key of each
 * certificate, with BR_X509_TA_CA set only when br_x509_decoder_isCA()
 * says basicConstraints CA:TRUE. A v1 CA therefore becomes a non-CA
 * anchor, which cannot vouch for anything it signed (BR_ERR_X509_NOT_TRUSTED).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <bearssl.h>

struct br_certs {
        br_x509_certificate *v;
        size_t n;
};

struct br_anchors {
        br_x509_trust_anchor *v;
        size_t n;
        size_t n_ca;            /* how many got BR_X509_TA_CA */
};

/* A decoded private key; the decoder context owns the key bytes. */
struct br_key {
        br_skey_decoder_context dc;
        int type;               /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
};

/* PEM ("CERTIFICATE" / "X509 CERTIFICATE" objects, in file order) or a
 * single DER certificate. -ENODATA when there is none, -EBADMSG on bad PEM. */
int br_certs_parse(const unsigned char *buf, size_t len, struct br_certs *out);
void br_certs_done(struct br_certs *c);

int br_anchors_from_certs(const struct br_certs *certs, struct br_anchors *out);
void br_anchors_done(struct br_anchors *a);

/* PEM private key: "RSA PRIVATE KEY", "EC PRIVATE KEY" or unencrypted
 * PKCS#8 "PRIVATE KEY". -EBADMSG if BearSSL cannot decode it. */
int br_key_parse(const unsigned char *buf, size_t len, struct br_key *out);

/* Key type of a certificate's public key (BR_KEYTYPE_RSA/EC), 0 if unknown. */
int br_cert_key_type(const br_x509_certificate *cert);

/* The device clock as x509_minimal wants it: days since 1 January 0 AD
 * and seconds in the day (the core's "/ 86400 + 719528"). */
void br_time_from_unix(time_t t, uint32_t *days, uint32_t *seconds);

/* Runs x509_minimal (br_x509_minimal_init_full, as the core configures it)
 * over the chain exactly as the TLS engine feeds it from a Certificate
 * message. server_name NULL or "" turns the name check off, as the core's
 * connect(IPAddress) does. Returns the BearSSL code: 0 when valid. */
int br_chain_verify(const struct br_certs *chain, const struct br_anchors *ta,
                    const char *server_name, time_t now);
