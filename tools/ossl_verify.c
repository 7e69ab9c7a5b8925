/* SPDX-License-Identifier: MIT */
#include "ossl_verify.h"

#include <errno.h>
#include <stdio.h>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "names.h"
#include "tool_common.h"

static const char *verdict_word(int code) {
        switch (code) {
        case X509_V_OK:
                return "ok";
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
                return "mismatch";
        case X509_V_ERR_CERT_HAS_EXPIRED:
                return "expired";
        case X509_V_ERR_CERT_NOT_YET_VALID:
                return "not-yet-valid";
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_CERT_UNTRUSTED:
        case X509_V_ERR_INVALID_CA:
        case X509_V_ERR_CERT_SIGNATURE_FAILURE:
                return "untrusted";
        default:
                return "error";
        }
}

int ossl_verify_chain(STACK_OF(X509) *chain, STACK_OF(X509) *cas, const char *name,
                      const time_t *at, struct ossl_verdict *out) {
        _cleanup_(X509_STORE_freep) X509_STORE *store = NULL;
        _cleanup_(X509_STORE_CTX_freep) X509_STORE_CTX *ctx = NULL;
        _cleanup_x509_stack_ STACK_OF(X509) *untrusted = NULL;
        X509_VERIFY_PARAM *param;
        X509 *leaf;
        int r;

        *out = (struct ossl_verdict) {};
        if (sk_X509_num(chain) < 1)
                return -EINVAL;
        leaf = sk_X509_value(chain, 0);
        store = X509_STORE_new();
        ctx = X509_STORE_CTX_new();
        untrusted = sk_X509_new_null();
        if (!store || !ctx || !untrusted)
                return -ENOMEM;
        for (int i = 0; i < sk_X509_num(cas); i++)
                if (X509_STORE_add_cert(store, sk_X509_value(cas, i)) != 1)
                        ERR_clear_error();      /* a duplicate is not an error here */
        for (int i = 1; i < sk_X509_num(chain); i++) {
                X509 *x = sk_X509_value(chain, i);

                if (!X509_up_ref(x))
                        return -ENOMEM;
                if (!sk_X509_push(untrusted, x)) {
                        X509_free(x);
                        return -ENOMEM;
                }
        }
        if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1)
                return -ENOMEM;
        /* What libssl does for a client checking a server (ssl_verify_cert_chain). */
        if (X509_STORE_CTX_set_default(ctx, "ssl_server") != 1)
                return -EINVAL;
        param = X509_STORE_CTX_get0_param(ctx);
        if (name && *name) {
                if (name_is_ip(name))
                        r = X509_VERIFY_PARAM_set1_ip_asc(param, name);
                else {
                        /* Python's flags; OpenSSL's own rules already refuse "*.lan". */
                        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                        r = X509_VERIFY_PARAM_set1_host(param, name, 0);
                }
                if (r != 1)
                        return -EINVAL;
        }
        if (at)
                X509_VERIFY_PARAM_set_time(param, *at);

        r = X509_verify_cert(ctx);
        out->code = X509_STORE_CTX_get_error(ctx);
        out->depth = X509_STORE_CTX_get_error_depth(ctx);
        out->ok = r == 1 && out->code == X509_V_OK;
        if (r != 1 && out->code == X509_V_OK)
                out->code = X509_V_ERR_UNSPECIFIED;
        out->result = verdict_word(out->code);
        snprintf(out->text, sizeof out->text, "%s", X509_verify_cert_error_string(out->code));
        ERR_clear_error();
        return 0;
}
