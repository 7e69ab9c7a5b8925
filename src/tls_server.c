/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "tls_server.h"

/* ESP8266 Arduino core: the default BearSSL list negotiates ECDHE with
 * AES-GCM or ChaCha20; setCiphersLessSecure() and older Tasmota builds add
 * the CBC suites and plain RSA key exchange. Strongest first; the server's
 * order wins (SSL_OP_CIPHER_SERVER_PREFERENCE). */
const char tls_server_default_ciphers[] =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
        "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
        "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
        "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:"
        "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:"
        "AES128-SHA:AES256-SHA";

/* One id context for every connection: without it OpenSSL refuses to
 * resume a session that carried a client certificate, and every BearSSL
 * reconnect silently pays a full handshake (BEARSSL-FACTS.md). */
static const unsigned char session_id_context[] = "mqtt-edge-bridge";

static int verify_info_index = -1;

/* A private key others can read is a key others may have copied: refuse
 * to start with it rather than trust it (group-readable is fine: root:
 * mqtt-edge-bridge 0640 is the packaged layout). */
static int check_key_mode(const char *path, char *err, size_t errlen)
{
        struct stat st;

        if (stat(path, &st) < 0) {
                snprintf(err, errlen, "%s: %s", path, strerror(errno));
                return -errno;
        }
        if (st.st_mode & S_IROTH) {
                snprintf(err, errlen, "%s: private key readable by every user (mode %04o); "
                         "chmod o-r it (0600 or 0640)", path, (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

static void openssl_reason(char *buf, size_t len)
{
        unsigned long e = ERR_peek_last_error();
        if (e)
                ERR_error_string_n(e, buf, len);
        else
                snprintf(buf, len, "unknown error");
        ERR_clear_error();
}

static int verify_cb(int ok, X509_STORE_CTX *store)
{
        SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
        struct tls_verify_info *info = ssl && verify_info_index >= 0 ?
                SSL_get_ex_data(ssl, verify_info_index) : NULL;

        if (!info)
                return ok;
        X509 *cert = X509_STORE_CTX_get_current_cert(store);
        if (cert && X509_STORE_CTX_get_error_depth(store) == 0 && !info->subject[0])
                X509_NAME_oneline(X509_get_subject_name(cert), info->subject, sizeof info->subject);
        if (!ok && !info->reason[0])
                snprintf(info->reason, sizeof info->reason, "%s",
                         X509_verify_cert_error_string(X509_STORE_CTX_get_error(store)));
        return ok;
}

void tls_server_attach_verify_info(SSL *ssl, struct tls_verify_info *info)
{
        if (verify_info_index >= 0)
                SSL_set_ex_data(ssl, verify_info_index, info);
}

static int load_crl(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        char why[256];

        if (!lookup || X509_load_crl_file(lookup, path, X509_FILETYPE_PEM) <= 0) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot load CRL: %s", path, why);
                return -EINVAL;
        }
        /* Leaf only: a device CA rarely publishes a CRL for itself, and
         * CRL_CHECK_ALL would then refuse every device. */
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
        return 0;
}

int tls_server_ctx_new(const struct config_listener *l, SSL_CTX **out, char *err, size_t errlen)
{
        SSL_CTX *ctx;
        char why[256];
        int r = -EINVAL;

        if (verify_info_index < 0)
                verify_info_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);

        ctx = SSL_CTX_new(TLS_server_method());
        if (!ctx) {
                snprintf(err, errlen, "cannot create the TLS context");
                return -ENOMEM;
        }

        SSL_CTX_set_min_proto_version(ctx, l->tls_version_min ? l->tls_version_min : TLS1_2_VERSION);
        /* IGNORE_UNEXPECTED_EOF: a device whose Wi-Fi drops closes TCP
         * without close_notify; that is an ordinary end (the MQTT layer
         * decides about the will), not a TLS error that would also throw
         * its session out of the cache. */
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
        /* Idle devices are most of them: give their 34 kB of record buffers
         * back between reads. Partial writes keep the event loop fair. */
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        /* One read(2) per record, or several records per read(2) under
         * load, instead of the 5-byte header and the body apart;
         * tls_conn_pending() already asks SSL_has_pending(). */
        SSL_CTX_set_read_ahead(ctx, 1);

        const char *ciphers = l->ciphers ? l->ciphers : tls_server_default_ciphers;
        if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "[listener] ciphers: no usable cipher in \"%s\": %s", ciphers, why);
                goto fail;
        }
        if (l->ciphersuites && SSL_CTX_set_ciphersuites(ctx, l->ciphersuites) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "[listener] ciphersuites: \"%s\": %s", l->ciphersuites, why);
                goto fail;
        }
        /* BearSSL offers X25519 and the NIST curves. */
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384:P-521");

        if (SSL_CTX_use_certificate_chain_file(ctx, l->certfile) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot load certificate chain: %s", l->certfile, why);
                goto fail;
        }
        if ((r = check_key_mode(l->keyfile, err, errlen)) < 0)
                goto fail;
        r = -EINVAL;
        if (SSL_CTX_use_PrivateKey_file(ctx, l->keyfile, SSL_FILETYPE_PEM) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot load private key: %s", l->keyfile, why);
                goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
                snprintf(err, errlen, "%s: private key does not match certificate %s", l->keyfile, l->certfile);
                ERR_clear_error();
                goto fail;
        }

        if (l->cafile) {
                if (SSL_CTX_load_verify_locations(ctx, l->cafile, NULL) != 1) {
                        openssl_reason(why, sizeof why);
                        snprintf(err, errlen, "%s: cannot load CA certificates: %s", l->cafile, why);
                        goto fail;
                }
                /* Tell clients which CA we accept (OpenSSL clients pick their
                 * certificate by it). */
                STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(l->cafile);
                if (names)
                        SSL_CTX_set_client_CA_list(ctx, names);
        }
        if (l->crlfile && (r = load_crl(ctx, l->crlfile, err, errlen)) < 0)
                goto fail;

        SSL_CTX_set_verify(ctx,
                           l->require_certificate ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                  : (l->cafile ? SSL_VERIFY_PEER : SSL_VERIFY_NONE),
                           verify_cb);
        SSL_CTX_set_verify_depth(ctx, 5);

        SSL_CTX_set_session_id_context(ctx, session_id_context, sizeof session_id_context - 1);
        if (l->session_cache_size > 0) {
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
                SSL_CTX_sess_set_cache_size(ctx, l->session_cache_size);
                SSL_CTX_set_timeout(ctx, l->session_timeout ? (long) l->session_timeout : 86400);
        } else {
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        }

        *out = ctx;
        return 0;
fail:
        SSL_CTX_free(ctx);
        return r;
}

int tls_server_peer_cn(SSL *ssl, char *buf, size_t len)
{
        X509 *cert = SSL_get1_peer_certificate(ssl);
        int r = -EINVAL;

        if (!cert)
                return -ENOENT;
        X509_NAME *name = X509_get_subject_name(cert);
        int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
        if (idx >= 0) {
                ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
                unsigned char *utf8 = NULL;
                int n = ASN1_STRING_to_UTF8(&utf8, s);
                /* A CN with an embedded NUL could pass as another device's. */
                if (n > 0 && (size_t) n < len && !memchr(utf8, 0, (size_t) n)) {
                        memcpy(buf, utf8, (size_t) n);
                        buf[n] = 0;
                        r = 0;
                }
                OPENSSL_free(utf8);
        }
        X509_free(cert);
        return r;
}

int tls_server_peer_reverify(SSL *ssl, SSL_CTX *ctx, char *why, size_t whylen)
{
        X509 *leaf = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
        X509_STORE_CTX *vctx;
        int r;

        if (why && whylen)
                why[0] = 0;
        if (!leaf)
                return -ENOENT;
        if (!(SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER))
                return 0; /* the new configuration checks no client certificate */
        vctx = X509_STORE_CTX_new();
        if (!vctx)
                return -ENOMEM;
        /* The intermediates the device sent, as the handshake had them
         * (NULL after a resumed handshake: the session keeps the leaf
         * only, which is enough for a device CA that signs directly). */
        if (X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(ctx), leaf, SSL_get_peer_cert_chain(ssl)) != 1) {
                X509_STORE_CTX_free(vctx);
                ERR_clear_error();
                return -ENOMEM;
        }
        /* What the handshake checks: a TLS client certificate (purpose
         * and trust "ssl_client"), the listener's depth, the store's
         * flags (CRL_CHECK when a CRL is loaded), the time now. */
        X509_STORE_CTX_set_default(vctx, "ssl_client");
        X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(vctx), SSL_CTX_get_verify_depth(ctx));
        if (X509_verify_cert(vctx) == 1) {
                r = 0;
        } else {
                int e = X509_STORE_CTX_get_error(vctx);
                if (why && whylen)
                        snprintf(why, whylen, "%s", X509_verify_cert_error_string(e));
                r = e == X509_V_ERR_OUT_OF_MEM ? -ENOMEM : -EPERM;
        }
        X509_STORE_CTX_free(vctx);
        ERR_clear_error();
        return r;
}

/* Feed the DER digest of every certificate and CRL in the store, in the
 * store's (sorted) order. */
int tls_server_trust_digest(SSL_CTX *ctx, unsigned char out[32])
{
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        STACK_OF(X509_OBJECT) *objs;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int r = -ENOMEM;

        if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
                goto out;
        if (!X509_STORE_lock(store))
                goto out;
        objs = X509_STORE_get0_objects(store);
        for (int i = 0; objs && i < sk_X509_OBJECT_num(objs); i++) {
                X509_OBJECT *o = sk_X509_OBJECT_value(objs, i);
                unsigned char d[EVP_MAX_MD_SIZE];
                unsigned dlen = 0;
                unsigned char tag = (unsigned char) X509_OBJECT_get_type(o);
                int ok = 0;

                if (tag == X509_LU_X509)
                        ok = X509_digest(X509_OBJECT_get0_X509(o), EVP_sha256(), d, &dlen);
                else if (tag == X509_LU_CRL)
                        ok = X509_CRL_digest(X509_OBJECT_get0_X509_CRL(o), EVP_sha256(), d, &dlen);
                if (ok != 1 || EVP_DigestUpdate(md, &tag, 1) != 1 || EVP_DigestUpdate(md, d, dlen) != 1) {
                        X509_STORE_unlock(store);
                        goto out;
                }
        }
        X509_STORE_unlock(store);
        /* The flags matter too: the same CRL with checking off is not
         * the same trust. */
        unsigned long flags = X509_VERIFY_PARAM_get_flags(X509_STORE_get0_param(store));
        unsigned int mode = (unsigned) SSL_CTX_get_verify_mode(ctx);
        if (EVP_DigestUpdate(md, &flags, sizeof flags) != 1 || EVP_DigestUpdate(md, &mode, sizeof mode) != 1 ||
            EVP_DigestFinal_ex(md, out, NULL) != 1)
                goto out;
        r = 0;
out:
        EVP_MD_CTX_free(md);
        ERR_clear_error();
        return r;
}

int tls_client_ctx_new(const struct config_upstream *u, SSL_CTX **out, char *err, size_t errlen)
{
        SSL_CTX *ctx;
        char why[256];
        const char *name;

        *out = NULL;
        if (!u->cafile && !u->capath)
                return 0;

        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) {
                snprintf(err, errlen, "cannot create the upstream TLS context");
                return -ENOMEM;
        }
        SSL_CTX_set_min_proto_version(ctx, u->tls_version_min ? u->tls_version_min : TLS1_2_VERSION);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        if (u->ciphers && SSL_CTX_set_cipher_list(ctx, u->ciphers) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "[upstream] ciphers: \"%s\": %s", u->ciphers, why);
                goto fail;
        }
        if (SSL_CTX_load_verify_locations(ctx, u->cafile, u->capath) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot load upstream CA certificates: %s",
                         u->cafile ? u->cafile : u->capath, why);
                goto fail;
        }
        if (u->certfile) {
                if (check_key_mode(u->keyfile, err, errlen) < 0)
                        goto fail;
                if (SSL_CTX_use_certificate_chain_file(ctx, u->certfile) != 1) {
                        openssl_reason(why, sizeof why);
                        snprintf(err, errlen, "%s: cannot load certificate chain: %s", u->certfile, why);
                        goto fail;
                }
                if (SSL_CTX_use_PrivateKey_file(ctx, u->keyfile, SSL_FILETYPE_PEM) != 1 ||
                    SSL_CTX_check_private_key(ctx) != 1) {
                        openssl_reason(why, sizeof why);
                        snprintf(err, errlen, "%s: cannot load private key: %s", u->keyfile, why);
                        goto fail;
                }
        }

        /* The broker's certificate must carry this name or address in its
         * SAN (OpenSSL falls back to the CN only for host names and only
         * when there is no SAN at all). */
        name = u->server_name ? u->server_name : u->host;
        X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
        unsigned char addr[16];
        if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1) {
                if (X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1) {
                        snprintf(err, errlen, "[upstream] server_name: bad IP address \"%s\"", name);
                        goto fail;
                }
        } else {
                X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                if (X509_VERIFY_PARAM_set1_host(param, name, 0) != 1) {
                        snprintf(err, errlen, "[upstream] server_name: bad host name \"%s\"", name);
                        goto fail;
                }
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

        *out = ctx;
        return 0;
fail:
        SSL_CTX_free(ctx);
        return -EINVAL;
}
