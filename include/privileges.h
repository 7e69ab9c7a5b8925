/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * privileges — stop being root once the keys are read and the ports bound
 * (OpenBSD ntpd's habit). Under the packaged unit the daemon starts as its
 * own user already and this does nothing.
 */

/*
 * When running as root and user is not NULL: is there such a user? Call
 * it before doing anything, so a typo stops the daemon before it listens.
 * Returns 0; -ESRCH (no such user) or the lookup's errno, after logging
 * an error naming [bridge] user.
 */
int privileges_check_user(const char *user);

/*
 * When running as root and user is not NULL: hand spool_dir (may be NULL)
 * and the spool files in it to user without following any link planted
 * there (the directory is opened with O_NOFOLLOW; only regular files with
 * a single link are changed, through a descriptor), then switch to user,
 * its primary group and its supplementary groups, for good. Fails closed:
 * a user that does not exist, a spool directory that is a symbolic link,
 * belongs to another user, or is writable by other users, is an error.
 * Returns 0, or a negative errno after logging why.
 */
int privileges_drop(const char *user, const char *spool_dir);
