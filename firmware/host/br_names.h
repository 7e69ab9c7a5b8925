/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* "BR_ERR_X509_BAD_SERVER_NAME" for 56; for a fatal alert (256+n / 512+n)
 * "BR_ERR_RECV_FATAL_ALERT+42", unknown codes "BR_ERR_UNKNOWN_<n>" (both
 * formatted into buf), as mqtt-edge-bridge-doctor spells them. The result
 * is static or buf. */
const char *br_error_name(int code, char *buf, size_t len);
/* "ECDHE_RSA_WITH_AES_128_GCM_SHA256" (BearSSL's name without BR_TLS_). */
const char *br_suite_name(uint16_t id);
/* "TLS1.2" */
const char *br_version_name(unsigned version);
