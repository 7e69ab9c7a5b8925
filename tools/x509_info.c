/* SPDX-License-Identifier: MIT */
#include "x509_info.h"

#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "fileio.h"
#include "tool_common.h"

int x509_load_file(const char *path, STACK_OF(X509) **out) {
        _cleanup_free_ unsigned char *buf = NULL;
        _cleanup_(BIO_free_allp) BIO *bio = NULL;
        STACK_OF(X509) *sk = NULL;
        size_t len;
        X509 *x;
        int r;

        r = fileio_read_all(path, &buf, &len);
        if (r < 0)
                return r;
        sk = sk_X509_new_null();
        if (!sk)
                return -ENOMEM;
        bio = BIO_new_mem_buf(buf, (int) len);
        if (!bio) {
                sk_X509_free(sk);
                return -ENOMEM;
        }
        while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)))
                if (!sk_X509_push(sk, x)) {
                        X509_free(x);
                        sk_X509_pop_free(sk, X509_free);
                        return -ENOMEM;
                }
        ERR_clear_error();      /* the loop ends on "no start line" */
        if (sk_X509_num(sk) == 0) {
                const unsigned char *p = buf;

                x = d2i_X509(NULL, &p, (long) len);
                ERR_clear_error();
                if (!x || !sk_X509_push(sk, x)) {
                        X509_free(x);
                        sk_X509_pop_free(sk, X509_free);
                        return -ENODATA;
                }
        }
        *out = sk;
        return 0;
}

int x509_load_key(const char *path, EVP_PKEY **out) {
        _cleanup_free_ unsigned char *buf = NULL;
        _cleanup_(BIO_free_allp) BIO *bio = NULL;
        EVP_PKEY *k;
        size_t len;
        int r;

        r = fileio_read_all(path, &buf, &len);
        if (r < 0)
                return r;
        bio = BIO_new_mem_buf(buf, (int) len);
        if (!bio)
                return -ENOMEM;
        /* An empty passphrase callback: a key that wants one is an error, not a prompt. */
        k = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *) "");
        explicit_bzero(buf, len);
        ERR_clear_error();
        if (!k)
                return -EBADMSG;
        *out = k;
        return 0;
}

void x509_subject_cn(X509 *x, char *buf, size_t size) {
        X509_NAME *n = X509_get_subject_name(x);
        int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
        ASN1_STRING *s;
        unsigned char *utf8 = NULL;
        int len;

        buf[0] = 0;
        if (i < 0)
                return;
        s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i));
        len = ASN1_STRING_to_UTF8(&utf8, s);
        if (len < 0)
                return;
        snprintf(buf, size, "%.*s", len, utf8);
        OPENSSL_free(utf8);
}

static void name_line(X509_NAME *n, char *buf, size_t size) {
        _cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());
        char *data;
        long len;

        buf[0] = 0;
        if (!bio || !n)
                return;
        X509_NAME_print_ex(bio, n, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
        len = BIO_get_mem_data(bio, &data);
        snprintf(buf, size, "%.*s", (int) len, data);
}

void x509_subject_line(X509 *x, char *buf, size_t size) {
        name_line(X509_get_subject_name(x), buf, size);
}

void x509_issuer_line(X509 *x, char *buf, size_t size) {
        name_line(X509_get_issuer_name(x), buf, size);
}

static int strv_push(char ***v, size_t *n, const char *s, size_t len) {
        char **nv = realloc(*v, (*n + 1) * sizeof *nv);

        if (!nv)
                return -ENOMEM;
        *v = nv;
        nv[*n] = strndup(s, len);
        if (!nv[*n])
                return -ENOMEM;
        (*n)++;
        return 0;
}

int x509_san_read(X509 *x, struct x509_san *out) {
        GENERAL_NAMES *gens;
        int crit = -1, r = 0;

        *out = (struct x509_san) {};
        gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
        out->has_san = gens != NULL || crit >= 0;
        if (!gens)
                return 0;
        for (int i = 0; i < sk_GENERAL_NAME_num(gens) && r == 0; i++) {
                const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);

                if (g->type == GEN_DNS) {
                        r = strv_push(&out->dns, &out->n_dns, (const char *) ASN1_STRING_get0_data(g->d.dNSName),
                                      (size_t) ASN1_STRING_length(g->d.dNSName));
                } else if (g->type == GEN_IPADD) {
                        char txt[64] = "?";
                        const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
                        int len = ASN1_STRING_length(g->d.iPAddress);

                        if (len == 4)
                                snprintf(txt, sizeof txt, "%u.%u.%u.%u", d[0], d[1], d[2], d[3]);
                        else if (len == 16) {
                                char *p = txt;
                                for (int k = 0; k < 16; k += 2)
                                        p += sprintf(p, "%s%x", k ? ":" : "", (unsigned) (d[k] << 8 | d[k + 1]));
                        }
                        r = strv_push(&out->ip, &out->n_ip, txt, strlen(txt));
                }
        }
        GENERAL_NAMES_free(gens);
        if (r < 0)
                x509_san_done(out);
        return r;
}

void x509_san_done(struct x509_san *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->n_dns; i++)
                free(s->dns[i]);
        for (size_t i = 0; i < s->n_ip; i++)
                free(s->ip[i]);
        free(s->dns);
        free(s->ip);
        *s = (struct x509_san) {};
}

enum x509_ca_kind x509_ca_kind(X509 *x) {
        BASIC_CONSTRAINTS *bc;
        enum x509_ca_kind k;

        bc = X509_get_ext_d2i(x, NID_basic_constraints, NULL, NULL);
        if (!bc)
                return X509_get_version(x) == X509_VERSION_1 ? X509_CA_NO_BC_V1 : X509_CA_NO_BC;
        k = bc->ca ? X509_CA_TRUE : X509_CA_FALSE;
        BASIC_CONSTRAINTS_free(bc);
        return k;
}

const char *x509_ca_kind_text(enum x509_ca_kind k) {
        switch (k) {
        case X509_CA_TRUE: return "basicConstraints CA:TRUE";
        case X509_CA_FALSE: return "basicConstraints CA:FALSE";
        case X509_CA_NO_BC_V1: return "an X.509 v1 certificate with no extensions at all (no basicConstraints)";
        default: return "no basicConstraints extension";
        }
}

void x509_key_desc(EVP_PKEY *k, char *buf, size_t size, int *rsa_bits) {
        char group[64] = "";
        size_t glen = 0;

        *rsa_bits = 0;
        if (!k) {
                snprintf(buf, size, "unknown key");
                return;
        }
        switch (EVP_PKEY_get_base_id(k)) {
        case EVP_PKEY_RSA:
                *rsa_bits = EVP_PKEY_get_bits(k);
                snprintf(buf, size, "RSA-%d", *rsa_bits);
                break;
        case EVP_PKEY_EC:
                if (EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof group, &glen) != 1)
                        snprintf(group, sizeof group, "?");
                snprintf(buf, size, "EC %s", strcmp(group, "prime256v1") == 0 ? "P-256" :
                                             strcmp(group, "secp384r1") == 0 ? "P-384" :
                                             strcmp(group, "secp521r1") == 0 ? "P-521" : group);
                break;
        default:
                snprintf(buf, size, "%s", EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "unknown");
        }
}

int x509_time_status(X509 *x, time_t t) {
        if (X509_cmp_time(X509_get0_notBefore(x), &t) > 0)
                return -1;
        if (X509_cmp_time(X509_get0_notAfter(x), &t) < 0)
                return 1;
        return 0;
}

void x509_time_text(const ASN1_TIME *a, char *buf, size_t size) {
        struct tm tm;

        if (!a || ASN1_TIME_to_tm(a, &tm) != 1) {
                snprintf(buf, size, "?");
                return;
        }
        strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

bool x509_issued_by_name(X509 *a, X509 *b) {
        return X509_NAME_cmp(X509_get_issuer_name(a), X509_get_subject_name(b)) == 0;
}
