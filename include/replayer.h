/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * replayer — sends a spool upstream while its device is not connected.
 *
 * A sensor that published during an outage and then went to deep sleep
 * must not keep its readings on the Pi until it wakes: when its session
 * ends with messages still spooled (and at start-up, for every spool file
 * a crash left), a replayer connects to the broker as the device — its own
 * client id and its own clean-session flag, so a %c ACL applies and a
 * persistent session is never wiped by a clean one — publishes the spool
 * in order, counting a message delivered only on the broker's own PUBACK /
 * PUBCOMP for it, and disconnects when it is empty. It sends no will and
 * acknowledges nothing the broker sends it: the broker keeps those for the
 * device (§4.4).
 *
 * Credentials: those the device sent, while the bridge still has them in
 * memory (the session hands them over); otherwise what the configuration
 * gives (username_mode = cn|fixed, password_mode = none|fixed, read when
 * the replay starts). A spool whose device used a password of its own
 * waits for the device after a restart: passwords are never written to
 * disk.
 *
 * If the device comes back first, it takes its spool over (replayer_stop):
 * what was sent but not acknowledged stays in the spool and goes again.
 */

#include <stddef.h>
#include <stdint.h>

struct bridge;

/* What the device sent upstream, in memory; borrowed (copied by
 * replayer_start). Any member may be NULL. */
struct replayer_creds {
        const uint8_t *username;
        size_t username_len;
        const uint8_t *password;
        size_t password_len;
};

/* Start replaying the spool file at path, unless a replayer for it runs
 * already or the file holds nothing. creds may be NULL (after a restart).
 * Returns 1 when one was started, 0 when there was nothing to do (or the
 * spool waits for its device), or a negative errno. */
int replayer_start(struct bridge *b, const char *path, const struct replayer_creds *creds);

/* Stop the replayer of path, if any, so that a session can open the file.
 * Messages it sent but did not see acknowledged stay in the spool. */
void replayer_stop(struct bridge *b, const char *path);

/* Start a replayer for every spool file in the spool directory that holds
 * messages. Returns how many were started. */
unsigned replayer_start_all(struct bridge *b);

/* Stop and free every replayer (shutdown). */
void replayer_stop_all(struct bridge *b);
