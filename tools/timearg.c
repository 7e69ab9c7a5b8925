/* SPDX-License-Identifier: MIT */
#include "timearg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int timearg_parse(const char *s, time_t *out) {
        static const char *const formats[] = {
                "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%MZ",    "%Y-%m-%dT%H:%M",    "%Y-%m-%d %H:%M",
                "%Y-%m-%d",
        };

        if (strcmp(s, "now") == 0) {
                *out = time(NULL);
                return 0;
        }
        if (s[0] == '@') {
                char *end;
                long long v;

                errno = 0;
                v = strtoll(s + 1, &end, 10);
                if (errno || end == s + 1 || *end || v < 0)
                        return -EINVAL;
                *out = (time_t) v;
                return 0;
        }
        for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
                struct tm tm = {};
                const char *end = strptime(s, formats[i], &tm);

                if (end && *end == 0) {
                        *out = timegm(&tm);
                        return *out < 0 ? -EINVAL : 0;
                }
        }
        return -EINVAL;
}
