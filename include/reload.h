/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * reload — SIGHUP: re-read the configuration file the daemon was started
 * with, and the certificates, keys, CA and CRL it names, without dropping
 * a device.
 *
 * All or nothing: the new file is parsed and validated and both TLS
 * contexts are built before anything is touched; if any step fails the
 * reason is logged and the running configuration stays in force. On
 * success new connections use the new listener certificate, CA and CRL
 * (and an empty TLS session cache, so a device revoked by the new CRL
 * cannot come back by resuming an old session); connected devices keep
 * their TLS connection and upstream session, except, when the CA or CRL
 * changed and [listener] revoke_connected is true, those whose certificate
 * no longer verifies (session_revalidate_all). Limits, [bridge], [upstream]
 * and [log] settings apply from the next use on. What cannot change under
 * a bound socket or an open spool — [listener] bind_address and port,
 * [spool] — keeps its running value, with a log line saying a restart is
 * needed.
 */

struct bridge;

/* Returns 0 when the new configuration is in force, or a negative errno
 * when it was rejected (already logged; the running one is kept). */
int reload_config(struct bridge *b);
