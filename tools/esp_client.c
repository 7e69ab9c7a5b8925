/* SPDX-License-Identifier: MIT */
#include "esp_client.h"

#include <string.h>

#include "tool_common.h"

#define S(x) { BR_TLS_##x, #x }
/* The core's suites_P[] (WiFiClientSecureBearSSL.cpp), same order: the
 * order is the client's preference list sent in ClientHello. */
static const struct {
        uint16_t id;
        const char *name;
} esp_suites[] = {
        S(ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        S(ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        S(ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        S(ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        S(ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        S(ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        S(ECDHE_ECDSA_WITH_AES_128_CBC_SHA256),
        S(ECDHE_RSA_WITH_AES_128_CBC_SHA256),
        S(ECDHE_ECDSA_WITH_AES_256_CBC_SHA384),
        S(ECDHE_RSA_WITH_AES_256_CBC_SHA384),
        S(ECDHE_ECDSA_WITH_AES_128_CBC_SHA),
        S(ECDHE_RSA_WITH_AES_128_CBC_SHA),
        S(ECDHE_ECDSA_WITH_AES_256_CBC_SHA),
        S(ECDHE_RSA_WITH_AES_256_CBC_SHA),
        S(ECDH_ECDSA_WITH_AES_128_GCM_SHA256),
        S(ECDH_RSA_WITH_AES_128_GCM_SHA256),
        S(ECDH_ECDSA_WITH_AES_256_GCM_SHA384),
        S(ECDH_RSA_WITH_AES_256_GCM_SHA384),
        S(ECDH_ECDSA_WITH_AES_128_CBC_SHA256),
        S(ECDH_RSA_WITH_AES_128_CBC_SHA256),
        S(ECDH_ECDSA_WITH_AES_256_CBC_SHA384),
        S(ECDH_RSA_WITH_AES_256_CBC_SHA384),
        S(ECDH_ECDSA_WITH_AES_128_CBC_SHA),
        S(ECDH_RSA_WITH_AES_128_CBC_SHA),
        S(ECDH_ECDSA_WITH_AES_256_CBC_SHA),
        S(ECDH_RSA_WITH_AES_256_CBC_SHA),
        S(RSA_WITH_AES_128_GCM_SHA256),
        S(RSA_WITH_AES_256_GCM_SHA384),
        S(RSA_WITH_AES_128_CBC_SHA256),
        S(RSA_WITH_AES_256_CBC_SHA256),
        S(RSA_WITH_AES_128_CBC_SHA),
        S(RSA_WITH_AES_256_CBC_SHA),
        S(ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA),
        S(ECDHE_RSA_WITH_3DES_EDE_CBC_SHA),
        S(ECDH_ECDSA_WITH_3DES_EDE_CBC_SHA),
        S(ECDH_RSA_WITH_3DES_EDE_CBC_SHA),
        S(RSA_WITH_3DES_EDE_CBC_SHA),
};
#undef S

const char *esp_suite_name(uint16_t suite) {
        for (size_t i = 0; i < ELEMENTSOF(esp_suites); i++)
                if (esp_suites[i].id == suite)
                        return esp_suites[i].name;
        return NULL;
}

const char *esp_version_name(unsigned v) {
        switch (v) {
        case BR_TLS10: return "TLS 1.0";
        case BR_TLS11: return "TLS 1.1";
        case BR_TLS12: return "TLS 1.2";
        default: return "unknown";
        }
}

/* The core's br_ssl_client_base_init(). */
static void client_base_init(br_ssl_client_context *cc) {
        uint16_t suites[ELEMENTSOF(esp_suites)];
        br_ssl_engine_context *eng = &cc->eng;

        for (size_t i = 0; i < ELEMENTSOF(esp_suites); i++)
                suites[i] = esp_suites[i].id;
        br_ssl_client_zero(cc);
        br_ssl_engine_set_versions(eng, BR_TLS10, BR_TLS12);
        br_ssl_engine_set_suites(eng, suites, ELEMENTSOF(suites));
        br_ssl_client_set_default_rsapub(cc);
        br_ssl_engine_set_default_rsavrfy(eng);
        br_ssl_engine_set_default_ecdsa(eng);
        br_ssl_engine_set_hash(eng, br_md5_ID, &br_md5_vtable);
        br_ssl_engine_set_hash(eng, br_sha1_ID, &br_sha1_vtable);
        br_ssl_engine_set_hash(eng, br_sha224_ID, &br_sha224_vtable);
        br_ssl_engine_set_hash(eng, br_sha256_ID, &br_sha256_vtable);
        br_ssl_engine_set_hash(eng, br_sha384_ID, &br_sha384_vtable);
        br_ssl_engine_set_hash(eng, br_sha512_ID, &br_sha512_vtable);
        br_ssl_engine_set_prf10(eng, &br_tls10_prf);
        br_ssl_engine_set_prf_sha256(eng, &br_tls12_sha256_prf);
        br_ssl_engine_set_prf_sha384(eng, &br_tls12_sha384_prf);
        br_ssl_engine_set_default_aes_cbc(eng);
        br_ssl_engine_set_default_aes_gcm(eng);
        br_ssl_engine_set_default_des_cbc(eng);
        br_ssl_engine_set_default_chapol(eng);
}

int esp_client_start(struct esp_client *c, const struct br_anchors *ta, time_t now,
                     const struct br_certs *chain, const struct br_key *key, int issuer_key_type,
                     const char *name, const br_ssl_session_parameters *resume) {
        uint32_t days, secs;

        client_base_init(&c->cc);

        /* _installClientX509Validator(): x509_minimal, trust anchors, clock.
         * init_full installs the same RSA/ECDSA verifiers and hashes (less
         * MD5, which no certificate signature may use). */
        br_x509_minimal_init_full(&c->xc, ta->v, ta->n);
        br_time_from_unix(now, &days, &secs);
        br_x509_minimal_set_time(&c->xc, days, secs);
        br_ssl_engine_set_x509(&c->cc.eng, &c->xc.vtable);

        br_ssl_engine_set_buffers_bidi(&c->cc.eng, c->iobuf_in, sizeof c->iobuf_in, c->iobuf_out,
                                       sizeof c->iobuf_out);

        if (key && chain && key->type == BR_KEYTYPE_RSA)
                br_ssl_client_set_single_rsa(&c->cc, chain->v, chain->n, br_skey_decoder_get_rsa(&key->dc),
                                             br_rsa_pkcs1_sign_get_default());
        else if (key && chain && key->type == BR_KEYTYPE_EC)
                br_ssl_client_set_single_ec(&c->cc, chain->v, chain->n, br_skey_decoder_get_ec(&key->dc),
                                            BR_KEYTYPE_SIGN, (unsigned) issuer_key_type, br_ec_get_default(),
                                            br_ecdsa_sign_asn1_get_default());

        if (resume)
                br_ssl_engine_set_session_parameters(&c->cc.eng, resume);
        if (!br_ssl_client_reset(&c->cc, name && *name ? name : NULL, resume != NULL)) {
                int err = br_ssl_engine_last_error(&c->cc.eng);
                return err ? err : BR_ERR_BAD_PARAM;
        }
        return 0;
}
