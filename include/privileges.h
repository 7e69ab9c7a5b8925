/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * privileges — stop being root once the keys are read and the ports bound
 * (OpenBSD ntpd's habit). Under the packaged unit the daemon starts as its
 * own user already and this does nothing.
 */

/*
 * When running as root and user is not NULL: hand spool_dir (may be NULL)
 * to user, then switch to user, its primary group and its supplementary
 * groups, for good. A user that does not exist leaves the daemon root, with
 * a warning. Returns 0, or a negative errno after logging why.
 */
int privileges_drop(const char *user, const char *spool_dir);
