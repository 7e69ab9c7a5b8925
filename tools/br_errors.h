/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * br_errors — BearSSL error codes as people see them on a device's serial
 * console: the BR_ERR_* name, the number, and what it means.
 */

/* "BR_ERR_X509_BAD_SERVER_NAME", "OK" for 0 / BR_ERR_X509_OK, or a
 * formatted "BR_ERR_RECV_FATAL_ALERT+<n>" into a static buffer (not
 * thread-safe; the tools are single-threaded). Never NULL. */
const char *br_error_name(int err);

/* One-line description of the code, as BearSSL documents it. Never NULL. */
const char *br_error_text(int err);

/* True for success codes (0 and BR_ERR_X509_OK). */
int br_error_is_ok(int err);
