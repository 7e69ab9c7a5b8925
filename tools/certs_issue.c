/* SPDX-License-Identifier: MIT */
#include "certs_issue.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tool_common.h"
#include "x509_info.h"

int issue_key_new(bool ec, EVP_PKEY **out) {
        EVP_PKEY *k = ec ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);

        if (!k) {
                ERR_clear_error();
                return -EIO;
        }
        *out = k;
        return 0;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
        int ok;

        if (!ext)
                return -EINVAL;
        ok = X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        return ok ? 0 : -ENOMEM;
}

/* RFC 5280 §4.1.2.2: positive, at most 20 octets; 127 random bits. */
static int set_random_serial(X509 *x) {
        BIGNUM *bn = BN_new();
        int r = -EIO;

        if (bn && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
            BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
                r = 0;
        BN_free(bn);
        return r;
}

int issue_cert(const struct issue_request *req, EVP_PKEY *key, X509 **out) {
        _cleanup_(X509_freep) X509 *x = X509_new();
        X509_NAME *subj;
        X509V3_CTX ctx;
        bool rsa = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
        int r;

        if (!x)
                return -ENOMEM;
        if (req->profile != ISSUE_CA && (!req->issuer || !req->issuer_key))
                return -EINVAL;
        if (X509_set_version(x, X509_VERSION_3) != 1 || set_random_serial(x) < 0)
                return -EIO;
        subj = X509_get_subject_name(x);
        if (X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *) req->cn, -1, -1, 0) != 1)
                return -EINVAL;
        if (X509_set_issuer_name(x, req->issuer ? X509_get_subject_name(req->issuer) : subj) != 1)
                return -ENOMEM;
        /* An hour of slack: a device whose SNTP time is a little behind the
         * issuing machine must not see a not-yet-valid certificate. */
        if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
            !X509_gmtime_adj(X509_getm_notAfter(x), (long) req->days * 86400))
                return -EIO;
        if (X509_set_pubkey(x, key) != 1)
                return -EIO;

        X509V3_set_ctx(&ctx, req->issuer ? req->issuer : x, x, NULL, NULL, 0);
        switch (req->profile) {
        case ISSUE_CA:
                /* BearSSLHelpers.cpp makes a trust anchor a CA only with this. */
                r = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE");
                if (r >= 0)
                        r = add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
                break;
        case ISSUE_SERVER:
        case ISSUE_CLIENT:
                r = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE");
                /* keyEncipherment lets an RSA key serve the TLS_RSA_* suites the core still offers. */
                if (r >= 0)
                        r = add_ext(x, &ctx, NID_key_usage, rsa ? "critical,digitalSignature,keyEncipherment"
                                                                : "critical,digitalSignature");
                if (r >= 0)
                        r = add_ext(x, &ctx, NID_ext_key_usage,
                                    req->profile == ISSUE_SERVER ? "serverAuth" : "clientAuth");
                if (r >= 0 && req->san)
                        r = add_ext(x, &ctx, NID_subject_alt_name, req->san);
                break;
        default:
                r = -EINVAL;
        }
        if (r >= 0)
                r = add_ext(x, &ctx, NID_subject_key_identifier, "hash");
        if (r >= 0 && req->issuer)
                r = add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
        if (r < 0) {
                ERR_clear_error();
                return r;
        }
        if (X509_sign(x, req->issuer_key ? req->issuer_key : key, EVP_sha256()) <= 0) {
                ERR_clear_error();
                return -EIO;
        }
        *out = x;
        x = NULL;
        return 0;
}

static int bio_to_string(BIO *bio, char **out, size_t *len) {
        char *data;
        long n = BIO_get_mem_data(bio, &data);
        char *s;

        if (n <= 0)
                return -EIO;
        s = malloc((size_t) n + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, data, (size_t) n);
        s[n] = 0;
        *out = s;
        *len = (size_t) n;
        return 0;
}

int issue_cert_pem(X509 *x, char **out, size_t *len) {
        _cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());

        if (!bio || PEM_write_bio_X509(bio, x) != 1)
                return -EIO;
        return bio_to_string(bio, out, len);
}

int issue_key_pem(EVP_PKEY *k, char **out, size_t *len) {
        _cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_secmem());
        int r;

        if (!bio)
                bio = BIO_new(BIO_s_mem());
        if (!bio || PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL) != 1)
                return -EIO;
        r = bio_to_string(bio, out, len);
        return r;
}

int issue_load_ca(const char *cert_path, const char *key_path, X509 **ca, EVP_PKEY **ca_key,
                  char *whybuf, size_t whysize) {
        _cleanup_x509_stack_ STACK_OF(X509) *sk = NULL;
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
        enum x509_ca_kind kind;
        char subj[256];
        X509 *x;
        int r;

        r = x509_load_file(cert_path, &sk);
        if (r < 0) {
                snprintf(whybuf, whysize, "cannot read the CA certificate %s: %s", cert_path,
                         r == -ENODATA ? "no certificate in it" : strerror(-r));
                return r;
        }
        x = sk_X509_value(sk, 0);
        kind = x509_ca_kind(x);
        if (kind != X509_CA_TRUE) {
                x509_subject_line(x, subj, sizeof subj);
                snprintf(whybuf, whysize,
                         "refusing CA certificate %s (\"%s\"): it is %s. The ESP8266 core (BearSSL) uses a "
                         "certificate as a CA trust anchor only with basicConstraints CA:TRUE, so devices would "
                         "reject everything it signs (BR_ERR_X509_NOT_TRUSTED, 62), even though desktop clients "
                         "may accept it. Create a proper CA with \"mqtt-edge-bridge-certs ca\".",
                         cert_path, subj, x509_ca_kind_text(kind));
                return -EINVAL;
        }
        r = x509_load_key(key_path, &key);
        if (r < 0) {
                snprintf(whybuf, whysize, "cannot read the CA key %s: %s", key_path,
                         r == -EBADMSG ? "not an unencrypted PEM private key" : strerror(-r));
                return r;
        }
        if (X509_check_private_key(x, key) != 1) {
                ERR_clear_error();
                snprintf(whybuf, whysize, "the key %s does not belong to the CA certificate %s", key_path, cert_path);
                return -EINVAL;
        }
        if (!X509_up_ref(x))
                return -ENOMEM;
        *ca = x;
        *ca_key = key;
        key = NULL;
        return 0;
}
