/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * ossl_verify — what a desktop client (OpenSSL 3, Python's ssl, mosquitto
 * clients) says about a server chain: X509_verify_cert with the "ssl_server"
 * purpose, the CA file as the trust store, and the expected name checked as
 * an IP address (iPAddress SAN entries only, never the CN) when it is one,
 * and as a host name otherwise (dNSName SAN entries; the CN only when the
 * certificate has no dNSName at all — X509_check_host's rule, which Python's
 * ssl module keeps with hostname_checks_common_name, its default).
 */

#include <stdbool.h>
#include <time.h>

#include <openssl/x509.h>

struct ossl_verdict {
        bool ok;
        int code;                       /* X509_V_* */
        const char *result;             /* "ok", "mismatch", "expired", "not-yet-valid", "untrusted", "error" */
        char text[160];                 /* X509_verify_cert_error_string() */
        int depth;                      /* where the error was found */
};

/* chain: leaf first, rest untrusted intermediates. name NULL/"" → no name
 * check. at NULL → now. Negative errno only for setup failures. */
int ossl_verify_chain(STACK_OF(X509) *chain, STACK_OF(X509) *cas, const char *name,
                      const time_t *at, struct ossl_verdict *out);
