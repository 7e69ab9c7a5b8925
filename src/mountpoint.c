/* SPDX-License-Identifier: MIT */
/*
 * mountpoint — the per-device topic prefix template ("devices/%c/") and the
 * rules that keep a device inside it. Pure: no I/O, no global state.
 * Below config (which validates the template with it) and policy (which
 * maps topics under it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mountpoint.h"
#include "mqtt_codec.h"

/* MQTT 3.1.1 §1.5.3: a UTF-8 string field carries at most 65535 bytes. */
#define MQTT_STRING_MAX 65535u

/* §1.5.3 and no C0/C1 control character: in a topic prefix or an
 * identity one only ever means someone is trying something. */
static bool utf8_valid(const uint8_t *s, size_t len)
{
        return mqtt_string_clean(s, len);
}

static bool level_is_dotdot(const uint8_t *s, size_t len)
{
        return len == 2 && s[0] == '.' && s[1] == '.';
}

bool mountpoint_has_dotdot_level(const uint8_t *s, size_t len)
{
        size_t start = 0;

        for (size_t i = 0; i <= len; i++)
                if (i == len || s[i] == '/') {
                        if (level_is_dotdot(s + start, i - start))
                                return true;
                        start = i + 1;
                }
        return false;
}

/*
 * A CN or client id substituted into a mountpoint must stay exactly one
 * topic level: no separator, no wildcard, not a relative level, not empty
 * (every empty-CN device would share one prefix), and not starting with
 * '$' (template "%c/" with CN "$SYS" would land in the broker's own tree).
 */
static int check_identity_value(const char *v, const char **why)
{
        size_t len;

        if (!v) {
                *why = "identity missing (no certificate CN or client id to substitute)";
                return -EINVAL;
        }
        len = strlen(v);
        if (len == 0) {
                *why = "identity to substitute is empty";
                return -EINVAL;
        }
        if (strpbrk(v, "/+#")) {
                *why = "identity contains '/', '+' or '#' and would change the mountpoint's levels";
                return -EINVAL;
        }
        if (strcmp(v, ".") == 0 || strcmp(v, "..") == 0) {
                *why = "identity is '.' or '..'";
                return -EINVAL;
        }
        if (v[0] == '$') {
                *why = "identity starts with '$' (reserved for the broker, MQTT 3.1.1 §4.7.2)";
                return -EINVAL;
        }
        if (!utf8_valid((const uint8_t *) v, len)) {
                *why = "identity is not valid UTF-8 or contains control characters (MQTT 3.1.1 §1.5.3)";
                return -EINVAL;
        }
        return 0;
}

int mountpoint_expand(const char *template, const char *cn, const char *client_id,
                             char **out, const char **why)
{
        const char *dummy;
        char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r = 0;

        if (!why)
                why = &dummy;
        *why = NULL;
        *out = NULL;
        if (!template || !*template)
                return 0;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;

        for (const char *p = template; *p; p++) {
                const char *v;

                if (*p != '%') {
                        fputc(*p, f);
                        continue;
                }
                switch (p[1]) {
                case '%':
                        fputc('%', f);
                        p++;
                        continue;
                case 'c':
                        v = cn;
                        break;
                case 'i':
                        v = client_id;
                        break;
                case '\0':
                        *why = "mountpoint ends with a lone '%' (write '%%' for a literal '%')";
                        r = -EINVAL;
                        goto finish;
                default:
                        *why = "mountpoint has an unknown '%' sequence (only %c, %i and %% are known)";
                        r = -EINVAL;
                        goto finish;
                }
                r = check_identity_value(v, why);
                if (r < 0)
                        goto finish;
                fputs(v, f);
                p++;
        }

finish:
        if (fclose(f) != 0 && r == 0)
                r = -ENOMEM;
        if (r < 0)
                goto fail;

        if (size > MQTT_STRING_MAX) {
                *why = "mountpoint longer than 65535 bytes (MQTT 3.1.1 §1.5.3)";
                r = -EINVAL;
                goto fail;
        }
        if (!utf8_valid((const uint8_t *) buf, size)) {
                *why = "mountpoint is not valid UTF-8 or contains control characters (MQTT 3.1.1 §1.5.3)";
                r = -EINVAL;
                goto fail;
        }
        if (strpbrk(buf, "+#")) {
                *why = "mountpoint contains a wildcard '+' or '#' (MQTT 3.1.1 §4.7.1)";
                r = -EINVAL;
                goto fail;
        }
        if (mountpoint_has_dotdot_level((const uint8_t *) buf, size)) {
                *why = "mountpoint contains a '..' level";
                r = -EINVAL;
                goto fail;
        }
        /* Without a trailing '/', "devices/a" + "b/x" would be device "ab"'s
         * "x": the prefix must end a level to confine anything. */
        if (buf[size - 1] != '/') {
                *why = "mountpoint must end with '/' (otherwise device \"a\" could reach device \"ab\"'s topics)";
                r = -EINVAL;
                goto fail;
        }
        *out = buf;
        return 0;

fail:
        free(buf);
        return r;
}

