/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * mountpoint — the per-device topic prefix. Pure functions.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Expand a mountpoint template for one device: "%c" → certificate CN,
 * "%i" → device client id, "%%" → "%". The result must be a valid topic
 * prefix: valid UTF-8 without control characters, no '+' or '#', no ".."
 * level, ending with '/'; and the expanded CN/client id must not contain
 * '/', '+', '#', start with '$' or be "." / ".." (a CN of "../x" would
 * escape the mountpoint). Returns 0 and *out (malloc'ed; NULL when
 * template is NULL or empty), -ENOMEM, or -EINVAL with *why set (static).
 */
int mountpoint_expand(const char *template, const char *cn, const char *client_id, char **out,
                      const char **why);

/* True if any '/'-separated level of s[0..len) is exactly "..". */
bool mountpoint_has_dotdot_level(const uint8_t *s, size_t len);
