/* SPDX-License-Identifier: MIT */
#pragma once

/* numarg — whole-number command-line arguments (--days, --port, ...). */

/* Decimal, no sign, no trailing characters, within [min, max]. Returns 0
 * and *out, or -EINVAL. */
int numarg_parse(const char *s, unsigned long min, unsigned long max, unsigned long *out);
