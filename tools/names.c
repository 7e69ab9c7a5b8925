/* SPDX-License-Identifier: MIT */
#include "names.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

bool name_is_ip(const char *s) {
        unsigned char buf[16];

        return s && (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1);
}

bool name_looks_like_ip(const char *s) {
        bool v4 = true, v6 = true, colon = false;

        if (!s || !*s)
                return false;
        if (name_is_ip(s))
                return true;
        for (const char *p = s; *p; p++) {
                if (!isdigit((unsigned char) *p) && *p != '.')
                        v4 = false;
                if (!isxdigit((unsigned char) *p) && *p != ':' && *p != '.')
                        v6 = false;
                if (*p == ':')
                        colon = true;
        }
        return v4 || (v6 && colon);
}

bool name_equal(const char *a, const char *b) {
        return a && b && strcasecmp(a, b) == 0;
}

bool name_bearssl_match(const char *pattern, const char *name) {
        size_t plen, nlen;
        const char *dot;

        if (!pattern || !name)
                return false;
        plen = strlen(pattern);
        nlen = strlen(name);
        if (plen >= 2 && pattern[0] == '*' && pattern[1] == '.') {
                /* "*.rest": the name's first label is non-empty and the rest
                 * after its first dot equals "rest". */
                dot = strchr(name, '.');
                if (!dot || dot == name)
                        return false;
                return strcasecmp(dot + 1, pattern + 2) == 0;
        }
        return plen == nlen && strncasecmp(pattern, name, nlen) == 0;
}
