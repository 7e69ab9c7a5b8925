/* SPDX-License-Identifier: MIT */
#include "br_chain.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tool_common.h"

/* Growable byte buffer fed by BearSSL's decoder callbacks, which cannot
 * report failure: an allocation failure is remembered and checked later. */
struct bytes {
        unsigned char *data;
        size_t len, cap;
        bool oom;
};

static void bytes_append(void *ctx, const void *buf, size_t len) {
        struct bytes *b = ctx;

        if (b->oom)
                return;
        if (b->len + len > b->cap) {
                size_t cap = b->cap ? b->cap : 256;
                unsigned char *p;

                while (cap < b->len + len)
                        cap *= 2;
                p = realloc(b->data, cap);
                if (!p) {
                        b->oom = true;
                        return;
                }
                b->data = p;
                b->cap = cap;
        }
        memcpy(b->data + b->len, buf, len);
        b->len += len;
}

/* Same test as the core's looks_like_DER(): one SEQUENCE spanning the input. */
static bool looks_like_der(const unsigned char *p, size_t len) {
        size_t dlen = 0, nb;

        if (len < 2 || p[0] != 0x30)
                return false;
        if (p[1] < 0x80)
                return (size_t) p[1] == len - 2;
        nb = p[1] & 0x7f;
        if (nb == 0 || nb > 4 || len < 2 + nb)
                return false;
        for (size_t i = 0; i < nb; i++)
                dlen = (dlen << 8) | p[2 + i];
        return dlen == len - 2 - nb;
}

static int certs_push(struct br_certs *c, unsigned char *data, size_t len) {
        br_x509_certificate *v = realloc(c->v, (c->n + 1) * sizeof *v);

        if (!v)
                return -ENOMEM;
        c->v = v;
        c->v[c->n].data = data;
        c->v[c->n].data_len = len;
        c->n++;
        return 0;
}

/* Walks PEM objects; calls back with each object's name and DER bytes,
 * handing over ownership of the bytes. */
typedef int (*pem_object_cb)(const char *name, unsigned char *der, size_t len, void *userdata);

static int pem_walk(const unsigned char *buf, size_t len, pem_object_cb cb, void *userdata) {
        br_pem_decoder_context pc;
        struct bytes obj = {};
        char name[128] = "";
        bool inobj = false, extra_nl = true;
        int r = 0;

        br_pem_decoder_init(&pc);
        while (len > 0) {
                size_t n = br_pem_decoder_push(&pc, buf, len);

                buf += n;
                len -= n;
                switch (br_pem_decoder_event(&pc)) {
                case BR_PEM_BEGIN_OBJ:
                        snprintf(name, sizeof name, "%s", br_pem_decoder_name(&pc));
                        br_pem_decoder_setdest(&pc, bytes_append, &obj);
                        inobj = true;
                        break;
                case BR_PEM_END_OBJ:
                        if (!inobj)
                                break;
                        inobj = false;
                        if (obj.oom) {
                                r = -ENOMEM;
                                goto out;
                        }
                        r = cb(name, obj.data, obj.len, userdata);
                        obj = (struct bytes) {};
                        if (r < 0)
                                goto out;
                        break;
                case BR_PEM_ERROR:
                        r = -EBADMSG;
                        goto out;
                default:
                        break;
                }
                /* A file without a final newline still ends its last object. */
                if (len == 0 && extra_nl) {
                        extra_nl = false;
                        buf = (const unsigned char *) "\n";
                        len = 1;
                }
        }
        if (inobj)
                r = -EBADMSG;
out:
        free(obj.data);
        return r;
}

static int cert_object(const char *name, unsigned char *der, size_t len, void *userdata) {
        struct br_certs *c = userdata;
        int r;

        if (strcmp(name, "CERTIFICATE") != 0 && strcmp(name, "X509 CERTIFICATE") != 0) {
                free(der);
                return 0;
        }
        r = certs_push(c, der, len);
        if (r < 0)
                free(der);
        return r;
}

int br_certs_parse(const unsigned char *buf, size_t len, struct br_certs *out) {
        struct br_certs c = {};
        int r;

        if (looks_like_der(buf, len)) {
                unsigned char *d = malloc(len);

                if (!d)
                        return -ENOMEM;
                memcpy(d, buf, len);
                r = certs_push(&c, d, len);
                if (r < 0) {
                        free(d);
                        return r;
                }
                *out = c;
                return 0;
        }
        r = pem_walk(buf, len, cert_object, &c);
        if (r == 0 && c.n == 0)
                r = -ENODATA;
        if (r < 0) {
                br_certs_done(&c);
                return r;
        }
        *out = c;
        return 0;
}

void br_certs_done(struct br_certs *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n; i++)
                free(c->v[i].data);
        free(c->v);
        *c = (struct br_certs) {};
}

static void anchor_free_contents(br_x509_trust_anchor *ta) {
        free(ta->dn.data);
        if (ta->pkey.key_type == BR_KEYTYPE_RSA) {
                free(ta->pkey.key.rsa.n);
                free(ta->pkey.key.rsa.e);
        } else if (ta->pkey.key_type == BR_KEYTYPE_EC) {
                free(ta->pkey.key.ec.q);
        }
        memset(ta, 0, sizeof *ta);
}

static void *memdup(const void *p, size_t len) {
        void *d = malloc(len ? len : 1);

        if (d && len)
                memcpy(d, p, len);
        return d;
}

/* The core's certificate_to_trust_anchor_inner(), in C. */
static int anchor_from_cert(br_x509_trust_anchor *ta, const br_x509_certificate *xc) {
        br_x509_decoder_context dc;
        struct bytes dn = {};
        br_x509_pkey *pk;

        memset(ta, 0, sizeof *ta);
        br_x509_decoder_init(&dc, bytes_append, &dn);
        br_x509_decoder_push(&dc, xc->data, xc->data_len);
        pk = br_x509_decoder_get_pkey(&dc);
        if (!pk || dn.oom) {
                free(dn.data);
                return dn.oom ? -ENOMEM : -EBADMSG;
        }
        ta->dn.data = dn.data;
        ta->dn.len = dn.len;
        ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
        switch (pk->key_type) {
        case BR_KEYTYPE_RSA:
                ta->pkey.key_type = BR_KEYTYPE_RSA;
                ta->pkey.key.rsa.n = memdup(pk->key.rsa.n, pk->key.rsa.nlen);
                ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
                ta->pkey.key.rsa.e = memdup(pk->key.rsa.e, pk->key.rsa.elen);
                ta->pkey.key.rsa.elen = pk->key.rsa.elen;
                if (!ta->pkey.key.rsa.n || !ta->pkey.key.rsa.e) {
                        anchor_free_contents(ta);
                        return -ENOMEM;
                }
                return 0;
        case BR_KEYTYPE_EC:
                ta->pkey.key_type = BR_KEYTYPE_EC;
                ta->pkey.key.ec.curve = pk->key.ec.curve;
                ta->pkey.key.ec.q = memdup(pk->key.ec.q, pk->key.ec.qlen);
                ta->pkey.key.ec.qlen = pk->key.ec.qlen;
                if (!ta->pkey.key.ec.q) {
                        anchor_free_contents(ta);
                        return -ENOMEM;
                }
                return 0;
        default:
                anchor_free_contents(ta);
                return -EBADMSG;
        }
}

int br_anchors_from_certs(const struct br_certs *certs, struct br_anchors *out) {
        struct br_anchors a = {};
        int r;

        a.v = calloc(certs->n ? certs->n : 1, sizeof *a.v);
        if (!a.v)
                return -ENOMEM;
        for (size_t i = 0; i < certs->n; i++) {
                r = anchor_from_cert(&a.v[a.n], &certs->v[i]);
                if (r < 0) {
                        br_anchors_done(&a);
                        return r;
                }
                if (a.v[a.n].flags & BR_X509_TA_CA)
                        a.n_ca++;
                a.n++;
        }
        *out = a;
        return 0;
}

void br_anchors_done(struct br_anchors *a) {
        if (!a)
                return;
        for (size_t i = 0; i < a->n; i++)
                anchor_free_contents(&a->v[i]);
        free(a->v);
        *a = (struct br_anchors) {};
}

struct key_walk {
        struct br_key *key;
        bool found;
        int err;
};

static int key_object(const char *name, unsigned char *der, size_t len, void *userdata) {
        struct key_walk *w = userdata;

        if (!w->found && (strcmp(name, "RSA PRIVATE KEY") == 0 || strcmp(name, "EC PRIVATE KEY") == 0 ||
                          strcmp(name, "PRIVATE KEY") == 0)) {
                br_skey_decoder_init(&w->key->dc);
                br_skey_decoder_push(&w->key->dc, der, len);
                w->err = br_skey_decoder_last_error(&w->key->dc);
                w->key->type = br_skey_decoder_key_type(&w->key->dc);
                w->found = true;
        }
        /* The decoder copied what it needs into its own context. */
        explicit_bzero(der, len);
        free(der);
        return 0;
}

int br_key_parse(const unsigned char *buf, size_t len, struct br_key *out) {
        struct key_walk w = { .key = out };
        int r;

        r = pem_walk(buf, len, key_object, &w);
        if (r < 0)
                return r;
        if (!w.found)
                return -ENODATA;
        if (w.err != 0 || (out->type != BR_KEYTYPE_RSA && out->type != BR_KEYTYPE_EC))
                return -EBADMSG;
        return 0;
}

int br_cert_key_type(const br_x509_certificate *cert) {
        br_x509_decoder_context dc;
        br_x509_pkey *pk;

        br_x509_decoder_init(&dc, NULL, NULL);
        br_x509_decoder_push(&dc, cert->data, cert->data_len);
        pk = br_x509_decoder_get_pkey(&dc);
        return pk ? pk->key_type : 0;
}

void br_time_from_unix(time_t t, uint32_t *days, uint32_t *seconds) {
        /* 719528 days from 1 January 0 AD to 1 January 1970. Times before
         * 1970 do not occur: the tools clamp them to the epoch. */
        uint64_t u = t < 0 ? 0 : (uint64_t) t;

        *days = (uint32_t) (u / 86400 + 719528);
        *seconds = (uint32_t) (u % 86400);
}

int br_chain_verify(const struct br_certs *chain, const struct br_anchors *ta,
                    const char *server_name, time_t now) {
        br_x509_minimal_context xc;
        const br_x509_class **vt = &xc.vtable;
        uint32_t days, secs;
        unsigned r;

        br_x509_minimal_init_full(&xc, ta->v, ta->n);
        br_time_from_unix(now, &days, &secs);
        br_x509_minimal_set_time(&xc, days, secs);

        /* The calls the SSL engine makes while it reads a Certificate message. */
        (*vt)->start_chain(vt, server_name && *server_name ? server_name : NULL);
        for (size_t i = 0; i < chain->n; i++) {
                (*vt)->start_cert(vt, (uint32_t) chain->v[i].data_len);
                (*vt)->append(vt, chain->v[i].data, chain->v[i].data_len);
                (*vt)->end_cert(vt);
        }
        r = (*vt)->end_chain(vt);
        return r == BR_ERR_X509_OK ? 0 : (int) r;
}
