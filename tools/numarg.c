/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>

#include "numarg.h"

int numarg_parse(const char *s, unsigned long min, unsigned long max, unsigned long *out) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        /* strtoul takes "-1" as ULONG_MAX: refuse a sign outright. */
        if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
                return -EINVAL;
        *out = v;
        return 0;
}
