/* SPDX-License-Identifier: MIT */
#include "esp_client.h"

#include <string.h>

#include "tool_common.h"
#include "esp8266_profile.h"

/* The suite list and engine set-up are the device's own, shared with
 * edge-device: lib/esp8266_profile.c. */
const char *esp_suite_name(uint16_t suite) {
        return esp8266_suite_name(suite);
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
        esp8266_client_base_init(cc);
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
