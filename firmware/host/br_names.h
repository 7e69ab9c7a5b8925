/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* "ECDHE_RSA_WITH_AES_128_GCM_SHA256" (BearSSL's name without BR_TLS_). */
const char *br_suite_name(uint16_t id);
/* "TLS1.2" */
const char *br_version_name(unsigned version);
