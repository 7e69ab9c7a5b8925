/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * replayer — sends a spool upstream while its device is not connected.
 *
 * A sensor that published during an outage and then went to deep sleep
 * must not keep its readings on the Pi until it wakes: when its session
 * ends with messages still spooled (and at start-up, for every spool file
 * a crash left), a replayer connects to the broker with the device's
 * recorded username and password, under the client id "<device id>/replay"
 * with a clean session (so the device's own persistent session and its
 * queued messages are left alone), publishes the spool in order, and
 * disconnects when it is empty. If the device comes back first, it takes
 * its spool over (replayer_stop).
 */

struct bridge;

/* Start replaying the spool file at path, unless a replayer for it runs
 * already or the file holds nothing. Returns 1 when one was started, 0
 * when there was nothing to do, or a negative errno. */
int replayer_start(struct bridge *b, const char *path);

/* Stop the replayer of path, if any, so that a session can open the file.
 * Messages it sent but did not see acknowledged stay in the spool. */
void replayer_stop(struct bridge *b, const char *path);

/* Start a replayer for every spool file in the spool directory that holds
 * messages. Returns how many were started. */
unsigned replayer_start_all(struct bridge *b);

/* Stop and free every replayer (shutdown). */
void replayer_stop_all(struct bridge *b);
