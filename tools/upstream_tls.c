/* SPDX-License-Identifier: MIT */
#include "upstream_tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "names.h"

static int seen_index = -1;

static struct upstream_tls_seen *seen_of(const SSL *ssl) {
        return ssl && seen_index >= 0 ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), seen_index) : NULL;
}

/* Called by X509_verify_cert for every certificate and every error; ok is
 * OpenSSL's verdict so far and is returned unchanged, so the outcome is
 * exactly the daemon's (tls_client_ctx_new sets SSL_VERIFY_PEER and no
 * callback). The leaf is kept even when the chain fails, to show it. */
static int verify_cb(int ok, X509_STORE_CTX *store) {
        SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
        struct upstream_tls_seen *seen = seen_of(ssl);
        X509 *leaf = X509_STORE_CTX_get0_cert(store);

        if (!seen)
                return ok;
        if (leaf && !seen->leaf && X509_up_ref(leaf))
                seen->leaf = leaf;
        if (!ok && seen->verify_code == X509_V_OK) {
                seen->verify_code = X509_STORE_CTX_get_error(store);
                seen->verify_depth = X509_STORE_CTX_get_error_depth(store);
                if (seen->verify_code == X509_V_OK)
                        seen->verify_code = X509_V_ERR_UNSPECIFIED;
        }
        return ok;
}

/* SSL_alert_desc_string_long() predates TLS 1.3 and says "unknown" for
 * the alerts it added (RFC 8446 §6). */
static void alert_text(int desc, char *buf, size_t size) {
        const char *s = SSL_alert_desc_string_long(desc);

        if (desc == TLS13_AD_CERTIFICATE_REQUIRED)
                s = "certificate required";
        else if (desc == TLS13_AD_MISSING_EXTENSION)
                s = "missing extension";
        else if (desc == TLS1_AD_NO_APPLICATION_PROTOCOL)
                s = "no application protocol";
        if (!s || strcmp(s, "unknown") == 0)
                snprintf(buf, size, "alert %d", desc);
        else
                snprintf(buf, size, "%s", s);
}

static void info_cb(const SSL *cssl, int where, int ret) {
        struct upstream_tls_seen *seen = seen_of(cssl);
        SSL *ssl = (SSL *) cssl;        /* OpenSSL hands the callback a const SSL */

        if (!seen)
                return;
        if (where & SSL_CB_HANDSHAKE_START && !seen->started) {
                /* Before the ClientHello is built: the SNI the daemon sends
                 * (tls_conn_init_client), not libmosquitto's connect host. */
                seen->started = true;
                if (SSL_set_tlsext_host_name(ssl, seen->name && !name_is_ip(seen->name) ? seen->name : NULL) != 1)
                        ERR_clear_error();
        }
        if (where & SSL_CB_HANDSHAKE_DONE && !seen->done) {
                seen->done = true;
                snprintf(seen->version, sizeof seen->version, "%s", SSL_get_version(ssl));
                snprintf(seen->cipher, sizeof seen->cipher, "%s", SSL_get_cipher_name(ssl));
        }
        if (where & SSL_CB_READ_ALERT && !seen->alert[0] && (ret >> 8) == SSL3_AL_FATAL)
                alert_text(ret & 0xff, seen->alert, sizeof seen->alert);
}

int upstream_tls_watch(SSL_CTX *ctx, struct upstream_tls_seen *seen, const char *name) {
        *seen = (struct upstream_tls_seen) { .verify_code = X509_V_OK };
        if (seen_index < 0)
                seen_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        if (seen_index < 0)
                return -ENOMEM;
        if (name) {
                seen->name = strdup(name);
                if (!seen->name)
                        return -ENOMEM;
        }
        if (SSL_CTX_set_ex_data(ctx, seen_index, seen) != 1)
                return -ENOMEM;
        SSL_CTX_set_verify(ctx, SSL_CTX_get_verify_mode(ctx), verify_cb);
        SSL_CTX_set_info_callback(ctx, info_cb);
        return 0;
}

int upstream_tls_name_matches(const struct upstream_tls_seen *seen, const char *name) {
        if (!seen->leaf || !name || !name[0])
                return -1;
        if (name_is_ip(name))
                return X509_check_ip_asc(seen->leaf, name, 0) == 1;
        return X509_check_host(seen->leaf, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
}

void upstream_tls_seen_done(struct upstream_tls_seen *seen) {
        if (!seen)
                return;
        X509_free(seen->leaf);
        free(seen->name);
        *seen = (struct upstream_tls_seen) {};
}
