/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * br_errors — the one table of BearSSL error codes: the BR_ERR_* name and
 * what it means, as the device's serial log (firmware/src/main.cpp),
 * edge-device and mqtt-edge-bridge-doctor all spell them.
 *
 * Pure C, no stdio, no allocation, no static buffers: every result is
 * copied into the caller's buffer. On the ESP8266 the strings and the table
 * live in flash (PROGMEM) and are copied out with strncpy_P, so the table
 * costs no RAM there.
 *
 * Fatal alerts (bearssl_ssl.h): BR_ERR_RECV_FATAL_ALERT + n (256 + n) when
 * the peer sent alert n, BR_ERR_SEND_FATAL_ALERT + n (512 + n) when we did;
 * n is the TLS AlertDescription (RFC 5246 §7.2).
 */

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Buffer sizes that always hold a whole name / text (NUL included). */
#define BR_ERROR_NAME_MAX 40
#define BR_ERROR_TEXT_MAX 80

/* True for the success codes, 0 (BR_ERR_OK) and 32 (BR_ERR_X509_OK). */
bool br_error_is_ok(int code);

/* Writes the code's name into buf (at most len bytes, NUL-terminated when
 * len > 0) and returns buf: "BR_ERR_X509_BAD_SERVER_NAME" for 56, "OK" for
 * a success code, "BR_ERR_RECV_FATAL_ALERT+48" / "BR_ERR_SEND_FATAL_ALERT+n"
 * for an alert, "BR_ERR_UNKNOWN_<n>" for anything else. */
const char *br_error_name(int code, char *buf, size_t len);

/* Writes a one-line description into buf and returns buf: BearSSL's
 * documented meaning, or "the peer sent a fatal alert (unknown_ca)" /
 * "we sent a fatal alert (...)" for alerts, "unknown error code" else. */
const char *br_error_text(int code, char *buf, size_t len);

/* The AlertDescription's name (RFC 5246 §7.2, RFC 8446 §6.2 for
 * certificate_required) copied into buf, "alert_<n>" for one not listed;
 * returns buf. */
const char *br_alert_name(int alert, char *buf, size_t len);

/* The ESP8266 Arduino core's WiFiClientSecure::getLastSSLError() strips the
 * fatal-alert bits from the code it returns and says which one it was only
 * in the message it writes ("SSL received fatal alert - ..." / "SSL sent
 * fatal alert - ...", WiFiClientSecureBearSSL.cpp). Given both, returns the
 * code as br_ssl_engine_last_error() had it, so an alert is named as one
 * (48 from a "received" message becomes 256 + 48, unknown_ca). msg may be
 * NULL (then err is returned unchanged). */
int br_error_from_esp8266(int err, const char *msg);

#ifndef __cplusplus
/* The name / text in a buffer that lives until the end of the enclosing
 * block (a compound literal): for printf-style callers on the host. */
#define BR_ERROR_NAME(code) br_error_name((code), (char[BR_ERROR_NAME_MAX]){ 0 }, BR_ERROR_NAME_MAX)
#define BR_ERROR_TEXT(code) br_error_text((code), (char[BR_ERROR_TEXT_MAX]){ 0 }, BR_ERROR_TEXT_MAX)
#endif

#ifdef __cplusplus
}
#endif
