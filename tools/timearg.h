/* SPDX-License-Identifier: MIT */
#pragma once

/* timearg — the --time option: what the device's clock says. */

#include <time.h>

/* "now", "@EPOCH", "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS][Z]" or with a space
 * instead of T; always UTC. -EINVAL otherwise. */
int timearg_parse(const char *s, time_t *out);
