/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * certs_issue — keys and certificates with OpenSSL 3, in the shapes the
 * devices (BearSSL) and desktop clients (OpenSSL) both accept.
 */

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

enum issue_profile {
        ISSUE_CA,               /* basicConstraints critical CA:TRUE */
        ISSUE_SERVER,           /* EKU serverAuth */
        ISSUE_CLIENT,           /* EKU clientAuth */
};

struct issue_request {
        enum issue_profile profile;
        const char *cn;
        const char *san;        /* X509v3 config syntax "IP:a,DNS:b"; NULL = no SAN */
        unsigned days;
        X509 *issuer;           /* NULL: self-signed (CA only) */
        EVP_PKEY *issuer_key;
};

/* RSA-2048, or ECDSA P-256 with ec. Negative errno. */
int issue_key_new(bool ec, EVP_PKEY **out);

/* Builds and signs (SHA-256) a v3 certificate for key. Negative errno. */
int issue_cert(const struct issue_request *req, EVP_PKEY *key, X509 **out);

/* PEM text of a certificate / an unencrypted PKCS#8 private key, malloc'ed. */
int issue_cert_pem(X509 *x, char **out, size_t *len);
int issue_key_pem(EVP_PKEY *k, char **out, size_t *len);

/* Loads the issuing CA and its key and refuses what would not work: a CA
 * certificate BearSSL would not take as a trust anchor (no basicConstraints
 * CA:TRUE), or a key that does not belong to it. On refusal returns
 * -EINVAL and *why (static or in whybuf) says why in plain words. */
int issue_load_ca(const char *cert_path, const char *key_path, X509 **ca, EVP_PKEY **ca_key,
                  char *whybuf, size_t whysize);
