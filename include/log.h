/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * log — one line per event, to the journal with structured fields when
 * running under systemd, to stderr otherwise.
 *
 * Journal fields: PRIORITY, MESSAGE, and where given PEER_ADDRESS,
 * DEVICE_CN, CLIENT_ID, REASON — so `journalctl -u mqtt-edge-bridge
 * DEVICE_CN=sensor-1` finds one device's story.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/* Who a line is about. Every member may be NULL. */
struct log_fields {
        const char *peer;      /* "192.0.2.7:51234" */
        const char *cn;        /* certificate subject CN */
        const char *client_id; /* MQTT client id */
        const char *reason;    /* short machine-friendly reason */
};

/* Set the threshold and the target. LOG_TARGET_AUTO picks the journal when
 * $JOURNAL_STREAM is set (systemd connected stderr to the journal). */
void log_setup(enum log_level level, enum log_target target);

/* Is a line at this level printed? Lets callers skip costly formatting. */
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const struct log_fields *f, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#define log_error(...) log_msg(LOG_LEVEL_ERR, NULL, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, NULL, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LEVEL_NOTICE, NULL, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)

/* Copy at most len bytes of src (stopping at NUL) into dst as printable
 * text: control characters (C0, DEL, UTF-8 C1) become \\xNN, and with
 * quotes also '"' and '\\' (for key="value" fields). Always
 * NUL-terminates (cap > 0). Returns the length written. */
size_t log_escape(char *dst, size_t cap, const char *src, size_t len, bool quotes);

/* "192.0.2.7:51234" or "[2001:db8::1]:51234" for PEER_ADDRESS. */
void log_format_peer(char *buf, size_t len, const struct sockaddr *sa);

/* Parse "error|warning|notice|info|debug"; -EINVAL if unknown. */
int log_level_from_string(const char *s);
