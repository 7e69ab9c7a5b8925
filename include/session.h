/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * session — one device: its TLS connection, its MQTT 3.1/3.1.1 session
 * (device side) and its upstream client.
 *
 * Lifecycle: TLS handshake (bounded by handshake_timeout) → CONNECT
 * (bounded by the same timeout) → upstream connect → CONNACK with the
 * upstream broker's return code → traffic both ways → close. A session
 * never frees itself inside a callback: session_close() moves it to the
 * bridge's reap list and the reaper frees it on the next loop turn.
 */

#include <stdbool.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

struct bridge;
struct session;

/* Take ownership of an accepted, non-blocking socket and start the TLS
 * handshake. Returns 0, or a negative errno (fd closed). */
int session_new(struct bridge *b, int fd, const struct sockaddr *peer, socklen_t peer_len);

/* Free a session that was closed (on the reap list), or any session at
 * shutdown. Ends its upstream client: gracefully after a device
 * DISCONNECT, without DISCONNECT otherwise (so the will fires). */
void session_free(struct session *s);

/* Create b->trim_timer, the sweep that gives the buffers of sessions
 * quiet for a second back (off while no session is busy). Returns 0 or a
 * negative errno. Freed by the bridge (sd_event_source_disable_unref). */
int session_trim_start(struct bridge *b);

/* Close for shutdown: close_notify to the device, then session_free. */
void session_shutdown(struct session *s);

/* Call fn for every session past its TLS handshake (status, metrics):
 * what a reader may know of a device, without struct session. */
struct device_view;
void session_foreach_device(struct bridge *b, void (*fn)(const struct device_view *v, void *u), void *u);

/* Unlink s from the reap list and return the next one (used by the reaper). */
struct session *session_reap_next(struct bridge *b);

/* After a reload that changed the CA or CRL: check every connected
 * device's certificate against ctx (tls_server_peer_reverify) and close,
 * with a log line naming the reason, each one that no longer verifies;
 * close those still in the TLS handshake too (it runs against the old CA
 * and CRL; the device connects again). Returns how many were closed. */
unsigned session_revalidate_all(struct bridge *b, SSL_CTX *ctx);
