/* SPDX-License-Identifier: MIT */
/*
 * policy — who a device is upstream, and where its topics go.
 *
 * The mountpoint is the only thing that keeps one device out of another's
 * topics, so every check here errs on the side of refusing: a CN or client
 * id that could change the shape of the prefix is rejected outright rather
 * than escaped, because any escaping scheme would have to be understood by
 * every ACL on the upstream broker too.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mountpoint.h"
#include "mqtt_codec.h"
#include "policy.h"

/* MQTT 3.1.1 §1.5.3: a UTF-8 string field carries at most 65535 bytes. */
#define MQTT_STRING_MAX 65535u


/* strlen(mountpoint) (0 for NULL) in *mlen; -ENAMETOOLONG when mountpoint +
 * len bytes would be past §1.5.3's limit, else 0. */
static int join_len(const char *mountpoint, size_t len, size_t *mlen)
{
        *mlen = mountpoint ? strlen(mountpoint) : 0;
        if (len > MQTT_STRING_MAX || *mlen > MQTT_STRING_MAX - len)
                return -ENAMETOOLONG;
        return 0;
}

/* mountpoint + s[0..len), NUL-terminated, or -ENAMETOOLONG past §1.5.3's limit. */
static int join(const char *mountpoint, const uint8_t *s, size_t len, char **out)
{
        size_t mlen;
        char *p;

        if (join_len(mountpoint, len, &mlen) < 0)
                return -ENAMETOOLONG;
        p = malloc(mlen + len + 1);
        if (!p)
                return -ENOMEM;
        if (mlen)
                memcpy(p, mountpoint, mlen);
        if (len)
                memcpy(p + mlen, s, len);
        p[mlen + len] = '\0';
        *out = p;
        return 0;
}

/* Checks shared by topic names and filters once a mountpoint applies. */
static int check_confined(const uint8_t *s, size_t len)
{
        if (s[0] == '$')
                return -EPERM; /* §4.7.2: $-topics are the broker's, not under our prefix */
        if (mountpoint_has_dotdot_level(s, len))
                return -EPERM;
        return 0;
}

/* The checks on a topic name a device publishes to; the mountpoint that
 * applies (NULL for none) in *mp. */
static int check_topic_name(const char **mp, const uint8_t *topic, size_t len)
{
        /* §4.7.3: at least one character; §3.3.2.1: no wildcards in a name;
         * and no control character (the broker's rule at the door). */
        if (!mqtt_topic_name_clean(topic, len))
                return -EINVAL;
        if (*mp && **mp)
                return check_confined(topic, len);
        *mp = NULL;
        return 0;
}

int policy_topic_to_upstream(const char *mountpoint, const uint8_t *topic, size_t len, char **out)
{
        int r;

        *out = NULL;
        r = check_topic_name(&mountpoint, topic, len);
        if (r < 0)
                return r;
        return join(mountpoint, topic, len, out);
}

int policy_topic_map(const char *mountpoint, const uint8_t *topic, size_t len, uint8_t *buf, size_t cap,
                     struct mqtt_str *out)
{
        size_t mlen;
        int r;

        *out = (struct mqtt_str){ NULL, 0 };
        r = check_topic_name(&mountpoint, topic, len);
        if (r < 0)
                return r;
        if (join_len(mountpoint, len, &mlen) < 0)
                return -ENAMETOOLONG;
        if (!mountpoint) {
                *out = (struct mqtt_str){ topic, (uint16_t) len };
                return 0;
        }
        if (!buf || cap < mlen + len)
                return -ENOBUFS;
        memcpy(buf, mountpoint, mlen);
        memcpy(buf + mlen, topic, len);
        *out = (struct mqtt_str){ buf, (uint16_t) (mlen + len) };
        return 0;
}

int policy_filter_to_upstream(const char *mountpoint, const uint8_t *filter, size_t len, char **out)
{
        int r;

        *out = NULL;
        /* §4.7.1, §4.7.3, and no control character. */
        if (!filter || !mqtt_topic_filter_valid(filter, len) || !mqtt_string_clean(filter, len))
                return -EINVAL;

        if (mountpoint && *mountpoint) {
                /* The mountpoint ends with '/', so a leading "#" or "+" stays a
                 * whole level below it: "#" → "devices/a/#". */
                r = check_confined(filter, len);
                if (r < 0)
                        return r;
        } else
                mountpoint = NULL;

        return join(mountpoint, filter, len, out);
}

int policy_topic_from_upstream_buf(const char *mountpoint, const uint8_t *topic, size_t len, size_t *out_offset)
{
        size_t mlen;

        *out_offset = 0;
        if (!topic)
                return -EINVAL;
        if (!mountpoint || !*mountpoint)
                return 0;

        mlen = strlen(mountpoint);
        /* A topic equal to the mountpoint would reach the device as "", which
         * §4.7.3 forbids; "devices/a/#" matches "devices/a" too (§4.7.1.2),
         * and that one is not the device's either. */
        if (len <= mlen || memcmp(topic, mountpoint, mlen) != 0)
                return -ENOENT;
        *out_offset = mlen;
        return 0;
}

int policy_topic_from_upstream(const char *mountpoint, const char *topic, size_t *out_offset)
{
        *out_offset = 0;
        if (!topic)
                return -EINVAL;
        return policy_topic_from_upstream_buf(mountpoint, (const uint8_t *) topic, strlen(topic), out_offset);
}

int policy_client_id(const struct config_bridge *b, const char *cn, const uint8_t *client_id,
                     size_t len, uint32_t nonce, char **out)
{
        const char *prefix = b && b->client_id_prefix ? b->client_id_prefix : "";
        size_t plen = strlen(prefix);
        char *p;

        *out = NULL;
        if (len == 0) {
                /* §3.1.3.1: an empty id with clean session asks the server to
                 * assign one; the upstream broker would, but then the id would
                 * not carry the prefix or say which device this is. */
                char suffix[10];
                size_t clen;

                if (!cn || !*cn)
                        return -EINVAL;
                clen = strlen(cn);
                snprintf(suffix, sizeof(suffix), "-%08x", (unsigned) nonce);
                if (plen + clen + 9 > MQTT_STRING_MAX)
                        return -EINVAL;
                if (asprintf(&p, "%s%s%s", prefix, cn, suffix) < 0)
                        return -ENOMEM;
                *out = p;
                return 0;
        }

        if (!client_id || memchr(client_id, '\0', len))
                return -EINVAL; /* §1.5.3: U+0000 is not allowed */
        if (len > MQTT_STRING_MAX || plen > MQTT_STRING_MAX - len)
                return -EINVAL;
        p = malloc(plen + len + 1);
        if (!p)
                return -ENOMEM;
        memcpy(p, prefix, plen);
        memcpy(p + plen, client_id, len);
        p[plen + len] = '\0';
        *out = p;
        return 0;
}

bool policy_client_id_allowed(const struct config_bridge *b, const char *cn, const uint8_t *client_id,
                              size_t len)
{
        if (!b || !b->clientid_must_match_cn)
                return true;
        /* An empty id would get a generated one, which is not the CN either. */
        if (!cn || !client_id || len == 0)
                return false;
        return strlen(cn) == len && memcmp(cn, client_id, len) == 0;
}

static char *memdup_nul(const uint8_t *s, size_t len)
{
        char *p = malloc(len + 1);

        if (!p)
                return NULL;
        if (len)
                memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

int policy_credentials(const struct config_bridge *b, const char *cn,
                       const uint8_t *dev_user, size_t dev_user_len,
                       const uint8_t *dev_pass, size_t dev_pass_len,
                       char **user, char **pass, size_t *pass_len)
{
        char *u = NULL, *pw = NULL;
        size_t pwlen = 0;
        int r;

        *user = NULL;
        *pass = NULL;
        *pass_len = 0;
        if (!b)
                return -EINVAL;

        switch (b->username_mode) {
        case USERNAME_FROM_DEVICE:
                if (dev_user) {
                        /* §3.1.3.4: a UTF-8 string, so no U+0000; libmosquitto
                         * takes a C string and would cut it short. */
                        if (memchr(dev_user, '\0', dev_user_len))
                                return -EINVAL;
                        u = memdup_nul(dev_user, dev_user_len);
                        if (!u)
                                return -ENOMEM;
                } else if (cn) {
                        u = strdup(cn);
                        if (!u)
                                return -ENOMEM;
                }
                break;
        case USERNAME_FROM_CN:
                if (cn) {
                        u = strdup(cn);
                        if (!u)
                                return -ENOMEM;
                }
                break;
        case USERNAME_FIXED:
                if (!b->username)
                        return -EINVAL;
                u = strdup(b->username);
                if (!u)
                        return -ENOMEM;
                break;
        default:
                return -EINVAL;
        }

        switch (b->password_mode) {
        case PASSWORD_FROM_DEVICE:
                if (dev_pass) {
                        pw = memdup_nul(dev_pass, dev_pass_len);
                        if (!pw) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        pwlen = dev_pass_len;
                }
                break;
        case PASSWORD_FIXED:
                if (!b->password) {
                        r = -EINVAL;
                        goto fail;
                }
                pw = strdup(b->password);
                if (!pw) {
                        r = -ENOMEM;
                        goto fail;
                }
                pwlen = strlen(pw);
                break;
        case PASSWORD_NONE:
                break;
        default:
                r = -EINVAL;
                goto fail;
        }

        /* §3.1.2.9: no password without a user name in MQTT 3.1.1; sending
         * one anyway gets the device a protocol error it cannot explain. */
        if (pw && !u) {
                r = -EINVAL;
                goto fail;
        }

        *user = u;
        *pass = pw;
        *pass_len = pwlen;
        return 0;

fail:
        free(u);
        free(pw);
        return r;
}
