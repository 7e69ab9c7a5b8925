/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * x509_info — loading certificates and keys with OpenSSL, and reading the
 * parts of a certificate that decide who accepts it: CN, SAN entries,
 * basicConstraints, key size, validity.
 */

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* Every certificate in a PEM file (in order), or a single DER one.
 * -ENODATA when the file holds none. */
int x509_load_file(const char *path, STACK_OF(X509) **out);

/* A private key from a PEM file (any type OpenSSL reads; no passphrase). */
int x509_load_key(const char *path, EVP_PKEY **out);

/* Subject CN (first one) into buf; "" when there is none. */
void x509_subject_cn(X509 *x, char *buf, size_t size);

/* One-line subject / issuer ("CN=…, O=…") into buf. */
void x509_subject_line(X509 *x, char *buf, size_t size);
void x509_issuer_line(X509 *x, char *buf, size_t size);

/* SAN entries, malloc'ed strings (caller frees each and the arrays);
 * has_san tells an absent extension from an empty one. */
struct x509_san {
        bool has_san;
        char **dns;
        size_t n_dns;
        char **ip;
        size_t n_ip;
};
int x509_san_read(X509 *x, struct x509_san *out);
void x509_san_done(struct x509_san *s);

enum x509_ca_kind {
        X509_CA_TRUE,           /* basicConstraints CA:TRUE */
        X509_CA_FALSE,          /* basicConstraints present, CA:FALSE */
        X509_CA_NO_BC_V1,       /* version 1: no extensions at all */
        X509_CA_NO_BC,          /* v3 without basicConstraints */
};
enum x509_ca_kind x509_ca_kind(X509 *x);
const char *x509_ca_kind_text(enum x509_ca_kind k);

/* "RSA-2048", "EC P-256" … and the RSA size in bits (0 for non-RSA). */
void x509_key_desc(EVP_PKEY *k, char *buf, size_t size, int *rsa_bits);

/* Compares notBefore/notAfter with t: -1 not yet valid, 1 expired, 0 ok. */
int x509_time_status(X509 *x, time_t t);

/* notBefore / notAfter as "YYYY-MM-DD HH:MM:SS UTC". */
void x509_time_text(const ASN1_TIME *a, char *buf, size_t size);

/* Whether b's subject is a's issuer (names only; for chain-order hints). */
bool x509_issued_by_name(X509 *a, X509 *b);
