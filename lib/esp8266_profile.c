/* SPDX-License-Identifier: MIT */
#include "esp8266_profile.h"

/* WiFiClientSecureBearSSL.cpp suites_P[], which is BearSSL's
 * ssl_client_full.c list: the order is the client's preference. */
#define ESP8266_SUITES(X) \
        X(ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256) \
        X(ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256) \
        X(ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) \
        X(ECDHE_RSA_WITH_AES_128_GCM_SHA256) \
        X(ECDHE_ECDSA_WITH_AES_256_GCM_SHA384) \
        X(ECDHE_RSA_WITH_AES_256_GCM_SHA384) \
        X(ECDHE_ECDSA_WITH_AES_128_CCM) \
        X(ECDHE_ECDSA_WITH_AES_256_CCM) \
        X(ECDHE_ECDSA_WITH_AES_128_CCM_8) \
        X(ECDHE_ECDSA_WITH_AES_256_CCM_8) \
        X(ECDHE_ECDSA_WITH_AES_128_CBC_SHA256) \
        X(ECDHE_RSA_WITH_AES_128_CBC_SHA256) \
        X(ECDHE_ECDSA_WITH_AES_256_CBC_SHA384) \
        X(ECDHE_RSA_WITH_AES_256_CBC_SHA384) \
        X(ECDHE_ECDSA_WITH_AES_128_CBC_SHA) \
        X(ECDHE_RSA_WITH_AES_128_CBC_SHA) \
        X(ECDHE_ECDSA_WITH_AES_256_CBC_SHA) \
        X(ECDHE_RSA_WITH_AES_256_CBC_SHA) \
        X(ECDH_ECDSA_WITH_AES_128_GCM_SHA256) \
        X(ECDH_RSA_WITH_AES_128_GCM_SHA256) \
        X(ECDH_ECDSA_WITH_AES_256_GCM_SHA384) \
        X(ECDH_RSA_WITH_AES_256_GCM_SHA384) \
        X(ECDH_ECDSA_WITH_AES_128_CBC_SHA256) \
        X(ECDH_RSA_WITH_AES_128_CBC_SHA256) \
        X(ECDH_ECDSA_WITH_AES_256_CBC_SHA384) \
        X(ECDH_RSA_WITH_AES_256_CBC_SHA384) \
        X(ECDH_ECDSA_WITH_AES_128_CBC_SHA) \
        X(ECDH_RSA_WITH_AES_128_CBC_SHA) \
        X(ECDH_ECDSA_WITH_AES_256_CBC_SHA) \
        X(ECDH_RSA_WITH_AES_256_CBC_SHA) \
        X(RSA_WITH_AES_128_GCM_SHA256) \
        X(RSA_WITH_AES_256_GCM_SHA384) \
        X(RSA_WITH_AES_128_CCM) \
        X(RSA_WITH_AES_256_CCM) \
        X(RSA_WITH_AES_128_CCM_8) \
        X(RSA_WITH_AES_256_CCM_8) \
        X(RSA_WITH_AES_128_CBC_SHA256) \
        X(RSA_WITH_AES_256_CBC_SHA256) \
        X(RSA_WITH_AES_128_CBC_SHA) \
        X(RSA_WITH_AES_256_CBC_SHA) \
        X(ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA) \
        X(ECDHE_RSA_WITH_3DES_EDE_CBC_SHA) \
        X(ECDH_ECDSA_WITH_3DES_EDE_CBC_SHA) \
        X(ECDH_RSA_WITH_3DES_EDE_CBC_SHA) \
        X(RSA_WITH_3DES_EDE_CBC_SHA)

#define ESP8266_SUITE_ID(n) BR_TLS_##n,
const uint16_t esp8266_suites[] = { ESP8266_SUITES(ESP8266_SUITE_ID) };
#undef ESP8266_SUITE_ID

#define ESP8266_SUITE_NAME(n) #n,
static const char *const esp8266_suite_names[] = { ESP8266_SUITES(ESP8266_SUITE_NAME) };
#undef ESP8266_SUITE_NAME

const size_t esp8266_suites_count = sizeof(esp8266_suites) / sizeof(esp8266_suites[0]);

void esp8266_client_base_init(br_ssl_client_context *cc)
{
        br_ssl_engine_context *eng = &cc->eng;

        br_ssl_client_zero(cc);
        /* The core frees the private key after the handshake, so it
         * forbids renegotiation. */
        br_ssl_engine_add_flags(eng, BR_OPT_NO_RENEGOTIATION);
        br_ssl_engine_set_versions(eng, BR_TLS10, BR_TLS12);
        br_ssl_engine_set_suites(eng, esp8266_suites, esp8266_suites_count);
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
        br_ssl_engine_set_default_aes_ccm(eng);
        br_ssl_engine_set_default_des_cbc(eng);
        br_ssl_engine_set_default_chapol(eng);
}

const char *esp8266_suite_name(uint16_t id)
{
        for (size_t i = 0; i < esp8266_suites_count; i++)
                if (esp8266_suites[i] == id)
                        return esp8266_suite_names[i];
        return NULL;
}
