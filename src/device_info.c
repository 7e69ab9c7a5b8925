/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>
#include <openssl/x509.h>

#include "device_info.h"

void device_info_from_ssl(struct device_info *d, SSL *ssl)
{
        const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        SSL_SESSION *sess = SSL_get_session(ssl);
        X509 *peer = SSL_get0_peer_certificate(ssl);

        memset(d, 0, sizeof *d);
        snprintf(d->sni, sizeof d->sni, "%s", sni ? sni : "");
        snprintf(d->tls_version, sizeof d->tls_version, "%s", SSL_get_version(ssl));
        snprintf(d->cipher, sizeof d->cipher, "%s", SSL_get_cipher_name(ssl));
        /* RFC 6066 §4: codes 1..4 mean 2^9..2^12 bytes. */
        uint8_t mfl = sess ? SSL_SESSION_get_max_fragment_length(sess) : 0;
        d->max_fragment = mfl >= 1 && mfl <= 4 ? 256u << mfl : 0;
        d->resumed = SSL_session_reused(ssl);
        if (peer) {
                struct tm tm;

                d->has_cert = true;
                if (ASN1_TIME_to_tm(X509_get0_notAfter(peer), &tm) == 1)
                        d->cert_not_after = timegm(&tm);
        }
}
