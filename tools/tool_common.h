/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Small helpers shared by the command-line tools: scope-bound cleanup in
 * the systemd style, so every early return releases what it holds.
 */

#include <stdio.h>
#include <stdlib.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* OpenSSL's destructors already accept NULL; these just adapt the shape. */
#define DEFINE_PTR_CLEANUP(type, func)                  \
        static inline void func##p(type **p) {          \
                func(*p);                               \
        }
DEFINE_PTR_CLEANUP(X509, X509_free)
DEFINE_PTR_CLEANUP(EVP_PKEY, EVP_PKEY_free)
DEFINE_PTR_CLEANUP(BIO, BIO_free_all)
DEFINE_PTR_CLEANUP(X509_STORE, X509_STORE_free)
DEFINE_PTR_CLEANUP(X509_STORE_CTX, X509_STORE_CTX_free)

static inline void x509_stack_freep(STACK_OF(X509) **p) {
        sk_X509_pop_free(*p, X509_free);
}
#define _cleanup_x509_stack_ _cleanup_(x509_stack_freep)
