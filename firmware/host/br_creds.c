/* SPDX-License-Identifier: MIT */
/*
 * br_creds — PEM → BearSSL trust anchors, certificate chain, private key.
 * See br_creds.h.
 */
#include "br_creds.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bytes {
        unsigned char *p;
        size_t len, cap;
};

struct pem_obj {
        char name[128];
        struct bytes der;
};

static void bytes_append(void *ctx, const void *data, size_t len)
{
        struct bytes *b = ctx;

        if (b->len + len > b->cap) {
                size_t cap = b->cap ? b->cap : 256;
                unsigned char *np;

                while (cap < b->len + len)
                        cap *= 2;
                np = realloc(b->p, cap);
                if (!np)
                        abort(); /* host tool: out of memory at start-up */
                b->p = np;
                b->cap = cap;
        }
        memcpy(b->p + b->len, data, len);
        b->len += len;
}

static int creds_keep(struct br_creds *c, void *p)
{
        void **n = realloc(c->allocs, (c->n_allocs + 1) * sizeof(*n));

        if (!n)
                return -ENOMEM;
        c->allocs = n;
        c->allocs[c->n_allocs++] = p;
        return 0;
}

static void *creds_memdup(struct br_creds *c, const void *src, size_t len)
{
        void *p = malloc(len ? len : 1);

        if (!p)
                return NULL;
        memcpy(p, src, len);
        if (creds_keep(c, p) < 0) {
                free(p);
                return NULL;
        }
        return p;
}

static int file_read(const char *path, struct bytes *out, char *err, size_t errlen)
{
        unsigned char buf[4096];
        FILE *f = fopen(path, "rb");
        size_t n;

        if (!f) {
                int e = errno;

                snprintf(err, errlen, "%s: %s", path, strerror(e));
                return -e;
        }
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                bytes_append(out, buf, n);
        fclose(f);
        return 0;
}

/* Decode every PEM object of a file. */
static int pem_read_all(const char *path, struct pem_obj **objs, size_t *n, char *err, size_t errlen)
{
        br_pem_decoder_context pc;
        struct bytes file = { 0 };
        struct pem_obj *cur = NULL;
        const unsigned char *p;
        size_t left;
        bool tail = false;
        int r;

        *objs = NULL;
        *n = 0;
        r = file_read(path, &file, err, errlen);
        if (r < 0)
                return r;

        br_pem_decoder_init(&pc);
        p = file.p;
        left = file.len;
        for (;;) {
                if (left == 0) {
                        if (tail)
                                break;
                        /* A file without a final newline still ends its
                         * last "-----END" line. */
                        p = (const unsigned char *)"\n";
                        left = 1;
                        tail = true;
                }
                size_t used = br_pem_decoder_push(&pc, p, left);

                p += used;
                left -= used;
                switch (br_pem_decoder_event(&pc)) {
                case BR_PEM_BEGIN_OBJ: {
                        struct pem_obj *no = realloc(*objs, (*n + 1) * sizeof(*no));

                        if (!no)
                                abort();
                        *objs = no;
                        cur = &no[(*n)++];
                        memset(cur, 0, sizeof(*cur));
                        snprintf(cur->name, sizeof(cur->name), "%s", br_pem_decoder_name(&pc));
                        br_pem_decoder_setdest(&pc, bytes_append, &cur->der);
                        break;
                }
                case BR_PEM_END_OBJ:
                        cur = NULL;
                        break;
                case BR_PEM_ERROR:
                        snprintf(err, errlen, "%s: invalid PEM", path);
                        free(file.p);
                        return -EINVAL;
                default:
                        break;
                }
        }
        free(file.p);
        if (cur) {
                snprintf(err, errlen, "%s: unterminated PEM object", path);
                return -EINVAL;
        }
        if (*n == 0) {
                snprintf(err, errlen, "%s: no PEM object", path);
                return -ENOENT;
        }
        return 0;
}

static void pem_free_all(struct pem_obj *objs, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(objs[i].der.p);
        free(objs);
}

static bool pem_is_cert(const struct pem_obj *o)
{
        return strcmp(o->name, "CERTIFICATE") == 0 || strcmp(o->name, "X509 CERTIFICATE") == 0;
}

/* BearSSLHelpers.cpp certificate_to_trust_anchor(): subject DN and public
 * key; BR_X509_TA_CA only with basicConstraints CA:TRUE. A v1 CA (no
 * extensions) therefore only matches itself, which is why such a CA gives
 * BR_ERR_X509_NOT_TRUSTED (62) on a device. */
static int cert_to_anchor(struct br_creds *c, const struct bytes *der, br_x509_trust_anchor *ta,
                          char *err, size_t errlen)
{
        br_x509_decoder_context dc;
        struct bytes dn = { 0 };
        const br_x509_pkey *pk;

        br_x509_decoder_init(&dc, bytes_append, &dn);
        br_x509_decoder_push(&dc, der->p, der->len);
        pk = br_x509_decoder_get_pkey(&dc);
        if (!pk) {
                snprintf(err, errlen, "CA certificate: decoding failed (BearSSL error %d)",
                         br_x509_decoder_last_error(&dc));
                free(dn.p);
                return -EINVAL;
        }
        memset(ta, 0, sizeof(*ta));
        ta->dn.data = dn.p;
        ta->dn.len = dn.len;
        if (creds_keep(c, dn.p) < 0)
                return -ENOMEM;
        ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
        ta->pkey.key_type = pk->key_type;
        if (pk->key_type == BR_KEYTYPE_RSA) {
                ta->pkey.key.rsa.n = creds_memdup(c, pk->key.rsa.n, pk->key.rsa.nlen);
                ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
                ta->pkey.key.rsa.e = creds_memdup(c, pk->key.rsa.e, pk->key.rsa.elen);
                ta->pkey.key.rsa.elen = pk->key.rsa.elen;
                if (!ta->pkey.key.rsa.n || !ta->pkey.key.rsa.e)
                        return -ENOMEM;
        } else if (pk->key_type == BR_KEYTYPE_EC) {
                ta->pkey.key.ec.curve = pk->key.ec.curve;
                ta->pkey.key.ec.q = creds_memdup(c, pk->key.ec.q, pk->key.ec.qlen);
                ta->pkey.key.ec.qlen = pk->key.ec.qlen;
                if (!ta->pkey.key.ec.q)
                        return -ENOMEM;
        } else {
                snprintf(err, errlen, "CA certificate: unsupported key type");
                return -EINVAL;
        }
        return 0;
}

static int load_anchors(struct br_creds *c, const char *path, char *err, size_t errlen)
{
        struct pem_obj *objs;
        size_t n;
        int r;

        r = pem_read_all(path, &objs, &n, err, errlen);
        if (r < 0)
                return r;
        c->anchors = calloc(n, sizeof(*c->anchors));
        if (!c->anchors) {
                pem_free_all(objs, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if (!pem_is_cert(&objs[i]))
                        continue;
                r = cert_to_anchor(c, &objs[i].der, &c->anchors[c->n_anchors], err, errlen);
                if (r < 0)
                        break;
                c->n_anchors++;
        }
        pem_free_all(objs, n);
        if (r >= 0 && c->n_anchors == 0) {
                snprintf(err, errlen, "%s: no certificate", path);
                r = -ENOENT;
        }
        return r < 0 ? r : 0;
}

static int load_chain(struct br_creds *c, const char *path, char *err, size_t errlen)
{
        br_x509_decoder_context dc;
        struct pem_obj *objs;
        size_t n;
        int r;

        r = pem_read_all(path, &objs, &n, err, errlen);
        if (r < 0)
                return r;
        c->chain = calloc(n, sizeof(*c->chain));
        if (!c->chain) {
                pem_free_all(objs, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if (!pem_is_cert(&objs[i]))
                        continue;
                c->chain[c->n_chain].data = objs[i].der.p;
                c->chain[c->n_chain].data_len = objs[i].der.len;
                objs[i].der.p = NULL;
                if (creds_keep(c, c->chain[c->n_chain].data) < 0) {
                        pem_free_all(objs, n);
                        return -ENOMEM;
                }
                c->n_chain++;
        }
        pem_free_all(objs, n);
        if (c->n_chain == 0) {
                snprintf(err, errlen, "%s: no certificate", path);
                return -ENOENT;
        }
        /* For EC client certificates BearSSL wants the issuer's key type
         * (it matters for static ECDH suites); the ESP8266 sketch passes it
         * to setClientECCert(). Read it from the certificate's signature. */
        br_x509_decoder_init(&dc, NULL, NULL);
        br_x509_decoder_push(&dc, c->chain[0].data, c->chain[0].data_len);
        c->chain_issuer_key_type = br_x509_decoder_get_signer_key_type(&dc);
        if (c->chain_issuer_key_type == 0)
                c->chain_issuer_key_type = BR_KEYTYPE_RSA;
        return 0;
}

static int load_key(struct br_creds *c, const char *path, char *err, size_t errlen)
{
        struct pem_obj *objs;
        size_t n;
        int r = -ENOENT;

        r = pem_read_all(path, &objs, &n, err, errlen);
        if (r < 0)
                return r;
        r = -ENOENT;
        snprintf(err, errlen, "%s: no private key", path);
        c->skey = calloc(1, sizeof(*c->skey));
        if (!c->skey) {
                pem_free_all(objs, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if (!strstr(objs[i].name, "PRIVATE KEY"))
                        continue;
                br_skey_decoder_init(c->skey);
                br_skey_decoder_push(c->skey, objs[i].der.p, objs[i].der.len);
                if (br_skey_decoder_last_error(c->skey) != 0) {
                        snprintf(err, errlen, "%s: cannot decode %s (BearSSL error %d)", path, objs[i].name,
                                 br_skey_decoder_last_error(c->skey));
                        r = -EINVAL;
                        break;
                }
                c->key_type = br_skey_decoder_key_type(c->skey);
                c->rsa = br_skey_decoder_get_rsa(c->skey);
                c->ec = br_skey_decoder_get_ec(c->skey);
                r = 0;
                break;
        }
        pem_free_all(objs, n);
        return r;
}

int br_creds_load(struct br_creds *c, const char *ca, const char *cert, const char *key,
                  char *err, size_t errlen)
{
        int r;

        memset(c, 0, sizeof(*c));
        r = load_anchors(c, ca, err, errlen);
        if (r >= 0 && cert)
                r = load_chain(c, cert, err, errlen);
        if (r >= 0 && cert) {
                if (!key) {
                        snprintf(err, errlen, "a client certificate needs its key");
                        r = -EINVAL;
                } else {
                        r = load_key(c, key, err, errlen);
                }
        }
        if (r < 0)
                br_creds_free(c);
        return r;
}

void br_creds_free(struct br_creds *c)
{
        for (size_t i = 0; i < c->n_allocs; i++)
                free(c->allocs[i]);
        free(c->allocs);
        free(c->anchors);
        free(c->chain);
        free(c->skey);
        memset(c, 0, sizeof(*c));
}
