/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
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
static int certs_index = -1;

/* certdir: far more than any machine has names; bounds start-up work. */
#define CERTDIR_MAX 256

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

static void cert_done(struct tls_server_cert *c)
{
        free(c->file);
        for (size_t i = 0; i < c->n_names; i++)
                free(c->names[i]);
        free(c->names);
        X509_free(c->x509);
        EVP_PKEY_free(c->pkey);
        sk_X509_pop_free(c->chain, X509_free);
}

static void certs_free(struct tls_server_certs *cs)
{
        if (!cs)
                return;
        for (size_t i = 0; i < cs->n; i++)
                cert_done(&cs->v[i]);
        free(cs->v);
        free(cs->ca);
        free(cs);
}

static void certs_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
        certs_free(ptr);
}

const struct tls_server_certs *tls_server_ctx_certs(SSL_CTX *ctx)
{
        return ctx && certs_index >= 0 ? SSL_CTX_get_ex_data(ctx, certs_index) : NULL;
}

size_t tls_server_pick_cert(const struct tls_server_certs *certs, const char *sni)
{
        if (sni && *sni)
                for (size_t i = 0; i < certs->n; i++)
                        for (size_t j = 0; j < certs->v[i].n_names; j++)
                                if (strcasecmp(certs->v[i].names[j], sni) == 0)
                                        return i;
        return certs->default_index;
}

static time_t asn1_to_time(const ASN1_TIME *t)
{
        struct tm tm;

        if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
                return 0;
        return timegm(&tm);
}

/* CN as UTF-8 into buf; "" when none or unusable. */
static void subject_cn(X509 *x, char *buf, size_t len)
{
        X509_NAME *name = X509_get_subject_name(x);
        int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);

        buf[0] = 0;
        if (idx < 0)
                return;
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx)));
        if (n > 0 && (size_t) n < len && !memchr(utf8, 0, (size_t) n)) {
                memcpy(buf, utf8, (size_t) n);
                buf[n] = 0;
        }
        OPENSSL_free(utf8);
}

static int add_name(struct tls_server_cert *c, const char *name, size_t len)
{
        char **v = realloc(c->names, (c->n_names + 1) * sizeof *v);

        if (!v)
                return -ENOMEM;
        c->names = v;
        v[c->n_names] = strndup(name, len);
        if (!v[c->n_names])
                return -ENOMEM;
        c->n_names++;
        return 0;
}

/* The names BearSSL's x509_minimal accepts the certificate for: with a
 * SAN, its dNSName entries only (iPAddress entries are never compared);
 * without, the subject CN (BEARSSL-FACTS.md). */
static int cert_names(struct tls_server_cert *c)
{
        GENERAL_NAMES *san = X509_get_ext_d2i(c->x509, NID_subject_alt_name, NULL, NULL);
        int r = 0;

        if (!san)
                return c->cn[0] ? add_name(c, c->cn, strlen(c->cn)) : 0;
        for (int i = 0; i < sk_GENERAL_NAME_num(san) && r == 0; i++) {
                const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
                if (g->type != GEN_DNS)
                        continue;
                const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
                int n = ASN1_STRING_length(g->d.dNSName);
                if (n > 0 && !memchr(d, 0, (size_t) n))
                        r = add_name(c, (const char *) d, (size_t) n);
        }
        GENERAL_NAMES_free(san);
        return r;
}

/* Read one certfile (leaf, then its chain) and its keyfile into c. */
static int cert_load(struct tls_server_cert *c, const char *certfile, const char *keyfile, char *err,
                     size_t errlen)
{
        char why[256];
        FILE *f;
        int r;

        memset(c, 0, sizeof *c);
        c->file = strdup(certfile);
        if (!c->file)
                return -ENOMEM;
        f = fopen(certfile, "re");
        if (!f) {
                snprintf(err, errlen, "[listener] certfile: %s: %s", certfile, strerror(errno));
                return -errno;
        }
        c->x509 = PEM_read_X509(f, NULL, NULL, NULL);
        if (c->x509) {
                X509 *x;
                while ((x = PEM_read_X509(f, NULL, NULL, NULL))) {
                        if (!c->chain && !(c->chain = sk_X509_new_null())) {
                                X509_free(x);
                                break;
                        }
                        sk_X509_push(c->chain, x);
                }
        }
        fclose(f);
        ERR_clear_error(); /* the end of the file is an error to PEM_read */
        if (!c->x509) {
                snprintf(err, errlen, "[listener] certfile: %s: cannot load certificate chain: no PEM certificate",
                         certfile);
                return -EINVAL;
        }
        if ((r = check_key_mode(keyfile, err, errlen)) < 0)
                return r;
        f = fopen(keyfile, "re");
        if (!f) {
                snprintf(err, errlen, "[listener] keyfile: %s: %s", keyfile, strerror(errno));
                return -errno;
        }
        c->pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (!c->pkey) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot load private key: %s", keyfile, why);
                return -EINVAL;
        }
        if (X509_check_private_key(c->x509, c->pkey) != 1) {
                ERR_clear_error();
                snprintf(err, errlen, "%s: private key does not match certificate %s", keyfile, certfile);
                return -EINVAL;
        }
        subject_cn(c->x509, c->cn, sizeof c->cn);
        c->not_after = asn1_to_time(X509_get0_notAfter(c->x509));
        return cert_names(c) < 0 ? -ENOMEM : 0;
}

static int certs_add(struct tls_server_certs *cs, const char *certfile, const char *keyfile, char *err,
                     size_t errlen)
{
        struct tls_server_cert *v = realloc(cs->v, (cs->n + 1) * sizeof *v);
        int r;

        if (!v)
                return -ENOMEM;
        cs->v = v;
        r = cert_load(&v[cs->n], certfile, keyfile, err, errlen);
        if (r < 0) {
                cert_done(&v[cs->n]);
                return r;
        }
        /* Two certificates for one name: which one a device gets would
         * depend on the order of files, so say so instead. */
        for (size_t i = 0; i < cs->n; i++)
                for (size_t j = 0; j < v[i].n_names; j++)
                        for (size_t k = 0; k < v[cs->n].n_names; k++)
                                if (strcasecmp(v[i].names[j], v[cs->n].names[k]) == 0) {
                                        snprintf(err, errlen, "[listener] %s and %s are both for the name \"%s\" "
                                                 "(keep one certificate per name)", v[i].file, certfile,
                                                 v[i].names[j]);
                                        cert_done(&v[cs->n]);
                                        return -EINVAL;
                                }
        cs->n++;
        return 0;
}

static int crt_filter(const struct dirent *d)
{
        size_t n = strlen(d->d_name);

        return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".crt") == 0;
}

/* certdir: every NAME.crt with its NAME.key, in file-name order. */
static int certs_add_dir(struct tls_server_certs *cs, const char *dir, char *err, size_t errlen)
{
        struct dirent **list = NULL;
        int n, r = 0;

        n = scandir(dir, &list, crt_filter, alphasort);
        if (n < 0) {
                snprintf(err, errlen, "[listener] certdir: %s: %s", dir, strerror(errno));
                return -errno;
        }
        if (n > CERTDIR_MAX) {
                snprintf(err, errlen, "[listener] certdir: %s: more than %d certificates", dir, CERTDIR_MAX);
                r = -E2BIG;
        }
        for (int i = 0; i < n; i++) {
                char crt[4096], key[4096];
                size_t len = strlen(list[i]->d_name);

                if (r == 0) {
                        snprintf(crt, sizeof crt, "%s/%s", dir, list[i]->d_name);
                        snprintf(key, sizeof key, "%s/%.*s.key", dir, (int) (len - 4), list[i]->d_name);
                        if (access(key, F_OK) < 0) {
                                snprintf(err, errlen, "[listener] certdir: %s has no key %s", crt, key);
                                r = -ENOENT;
                        } else
                                r = certs_add(cs, crt, key, err, errlen);
                }
                free(list[i]);
        }
        free(list);
        return r;
}

static int certs_load(const struct config_listener *l, struct tls_server_certs **out, char *err, size_t errlen)
{
        struct tls_server_certs *cs = calloc(1, sizeof *cs);
        int r = 0;

        if (!cs)
                return -ENOMEM;
        if (l->certfile)
                r = certs_add(cs, l->certfile, l->keyfile, err, errlen);
        for (size_t i = 0; r == 0 && i < l->n_extra; i++)
                r = certs_add(cs, l->extra_certfile[i], l->extra_keyfile[i], err, errlen);
        if (r == 0 && l->certdir)
                r = certs_add_dir(cs, l->certdir, err, errlen);
        if (r == 0 && cs->n == 0) {
                snprintf(err, errlen, "[listener] certdir: %s holds no NAME.crt/NAME.key pair", l->certdir);
                r = -ENOENT;
        }
        if (r == 0 && l->default_name) {
                cs->default_index = SIZE_MAX; /* "no match" */
                size_t i = tls_server_pick_cert(cs, l->default_name);
                if (i == SIZE_MAX) {
                        snprintf(err, errlen, "[listener] default_name: no certificate is for \"%s\"",
                                 l->default_name);
                        r = -EINVAL;
                } else
                        cs->default_index = i;
        }
        if (r < 0) {
                if (r == -ENOMEM)
                        snprintf(err, errlen, "%s", strerror(ENOMEM));
                certs_free(cs);
                return r;
        }
        *out = cs;
        return 0;
}

/* [listener] cafile's certificates, for the expiry warnings. */
static int certs_load_ca(struct tls_server_certs *cs, const char *cafile)
{
        FILE *f = fopen(cafile, "re");
        X509 *x;

        if (!f)
                return -errno;
        while ((x = PEM_read_X509(f, NULL, NULL, NULL))) {
                struct tls_server_ca *v = realloc(cs->ca, (cs->n_ca + 1) * sizeof *v);
                if (!v) {
                        X509_free(x);
                        break;
                }
                cs->ca = v;
                subject_cn(x, v[cs->n_ca].name, sizeof v[cs->n_ca].name);
                if (!v[cs->n_ca].name[0])
                        X509_NAME_oneline(X509_get_subject_name(x), v[cs->n_ca].name, sizeof v[cs->n_ca].name);
                v[cs->n_ca].not_after = asn1_to_time(X509_get0_notAfter(x));
                cs->n_ca++;
                X509_free(x);
        }
        ERR_clear_error();
        fclose(f);
        return 0;
}

/* RFC 6066 §3: the host name the device sent. The connection starts with
 * the default certificate; swap in the one for that name, if any. Never
 * refuse the handshake here: a name we have no certificate for gets the
 * default one, and the device's own name check decides. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
        const struct tls_server_certs *cs = tls_server_ctx_certs(SSL_get_SSL_CTX(ssl));
        const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

        if (!cs || !sni)
                return SSL_TLSEXT_ERR_OK;
        size_t i = tls_server_pick_cert(cs, sni);
        if (i != cs->default_index &&
            SSL_use_cert_and_key(ssl, cs->v[i].x509, cs->v[i].pkey, cs->v[i].chain, 1) != 1)
                ERR_clear_error(); /* keep the default */
        return SSL_TLSEXT_ERR_OK;
}

int tls_server_ctx_new(const struct config_listener *l, SSL_CTX **out, char *err, size_t errlen)
{
        SSL_CTX *ctx;
        char why[256];
        int r = -EINVAL;

        struct tls_server_certs *certs = NULL;

        if (verify_info_index < 0)
                verify_info_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        if (certs_index < 0)
                certs_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, certs_ex_free);

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
        /* Partial writes keep the event loop fair. Record buffers are not
         * released after every record (SSL_MODE_RELEASE_BUFFERS: two large
         * allocations per message) but once a device is quiet
         * (tls_conn_trim from the session's idle sweep). */
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
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

        if ((r = certs_load(l, &certs, err, errlen)) < 0)
                goto fail;
        r = -EINVAL;
        const struct tls_server_cert *def = &certs->v[certs->default_index];
        if (SSL_CTX_use_cert_and_key(ctx, def->x509, def->pkey, def->chain, 1) != 1) {
                openssl_reason(why, sizeof why);
                snprintf(err, errlen, "%s: cannot use certificate: %s", def->file, why);
                goto fail;
        }
        if (l->cafile)
                (void) certs_load_ca(certs, l->cafile);
        SSL_CTX_set_ex_data(ctx, certs_index, certs);
        certs = NULL; /* the context owns it now */
        if (tls_server_ctx_certs(ctx)->n > 1)
                SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
        /* Records we send no larger than this, for devices with a small
         * receive buffer that do not ask for a Maximum Fragment Length
         * (RFC 6066 §4). */
        if (l->max_send_fragment && SSL_CTX_set_max_send_fragment(ctx, l->max_send_fragment) != 1) {
                snprintf(err, errlen, "[listener] max_send_fragment: %u refused by OpenSSL", l->max_send_fragment);
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
        certs_free(certs);
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
        /* Record buffers: kept while data moves, given back by uplink_trim
         * (not SSL_MODE_RELEASE_BUFFERS, which reallocates per record).
         * Read-ahead: one read(2) per record or several, not the header
         * and the body apart (tls_conn_pending asks SSL_has_pending). */
        SSL_CTX_set_read_ahead(ctx, 1);
        /* The uplink pool keeps one session per broker host through the
         * new-session callback (uplink.c) for its links to resume; none
         * in OpenSSL's own store, which a client never looks up. */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
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
