/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for policy. Input: one flags byte, then
 * template NUL cn NUL client_id NUL rest; rest (may hold NULs) is used as a
 * topic, a filter, a client id and a password. Besides not crashing, it
 * checks the confinement invariants and aborts when one breaks:
 *   - an expanded mountpoint has as many levels as its template (an
 *     identity never adds or removes a level), no wildcard, ends in '/';
 *   - a mapped topic/filter starts with the mountpoint, and what follows
 *     neither starts with '$' nor has a ".." level;
 *   - topic → upstream → back is the identity.
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mountpoint.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t *next_field(const uint8_t **p, const uint8_t *end, char **out)
{
        const uint8_t *start = *p;
        const uint8_t *nul = memchr(start, 0, (size_t) (end - start));
        size_t n = nul ? (size_t) (nul - start) : (size_t) (end - start);

        *out = malloc(n + 1);
        if (*out) {
                memcpy(*out, start, n);
                (*out)[n] = '\0';
        }
        *p = nul ? nul + 1 : end;
        return *p;
}

static size_t count(const char *s, char c)
{
        size_t n = 0;

        for (; *s; s++)
                n += *s == c;
        return n;
}

/* Templates whose %c/%i each sit alone in a level count levels simply. */
static size_t template_slashes(const char *t)
{
        size_t n = 0;

        for (; *t; t++) {
                if (*t == '%' && t[1]) {
                        t++;
                        continue;
                }
                n += *t == '/';
        }
        return n;
}

static void check_confined(const char *mp, const char *out)
{
        size_t mlen = strlen(mp);
        const char *s = out + mlen, *lvl;

        if (strncmp(out, mp, mlen) != 0)
                abort();
        if (*s == '$')
                abort();
        for (lvl = s;;) {
                const char *slash = strchr(lvl, '/');
                size_t n = slash ? (size_t) (slash - lvl) : strlen(lvl);

                if (n == 2 && lvl[0] == '.' && lvl[1] == '.')
                        abort();
                if (!slash)
                        break;
                lvl = slash + 1;
        }
}

static void fuzz_topics(const char *mp, const uint8_t *rest, size_t rlen)
{
        char *out = NULL;
        size_t off;

        if (policy_topic_to_upstream(mp, rest, rlen, &out) == 0) {
                if (mp && *mp)
                        check_confined(mp, out);
                if (policy_topic_from_upstream(mp, out, &off) != 0)
                        abort();
                if (strlen(out + off) != rlen || memcmp(out + off, rest, rlen) != 0)
                        abort();
                free(out);
        } else if (out)
                abort();

        out = NULL;
        if (policy_filter_to_upstream(mp, rest, rlen, &out) == 0) {
                if (mp && *mp)
                        check_confined(mp, out);
                free(out);
        } else if (out)
                abort();

        /* rest as an upstream topic: only a match may be delivered */
        if (memchr(rest, 0, rlen) == NULL && rlen > 0) {
                char *t = malloc(rlen + 1);

                if (t) {
                        memcpy(t, rest, rlen);
                        t[rlen] = '\0';
                        if (policy_topic_from_upstream(mp, t, &off) == 0 && mp &&
                            (strncmp(t, mp, strlen(mp)) != 0 || t[off] == '\0'))
                                abort();
                        free(t);
                }
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const uint8_t *p = data, *end = data + size;
        char *tmpl = NULL, *cn = NULL, *id = NULL, *mp = NULL;
        char *user = NULL, *pass = NULL, *cid = NULL;
        struct config_bridge b = { 0 };
        const char *why = NULL;
        size_t plen;
        uint8_t flags;

        if (size < 1)
                return 0;
        flags = *p++;
        next_field(&p, end, &tmpl);
        next_field(&p, end, &cn);
        next_field(&p, end, &id);
        if (!tmpl || !cn || !id)
                goto out;
        const uint8_t *rest = p;
        size_t rlen = (size_t) (end - p);

        if (mountpoint_expand(tmpl, (flags & 1) ? NULL : cn, id, &mp, &why) == 0) {
                if (mp) {
                        size_t len = strlen(mp);

                        if (len == 0 || mp[len - 1] != '/' || strpbrk(mp, "+#"))
                                abort();
                        if (count(mp, '/') != template_slashes(tmpl))
                                abort();
                }
        } else if (mp || !why)
                abort();

        fuzz_topics(mp, rest, rlen);
        fuzz_topics("devices/a/", rest, rlen);
        fuzz_topics(NULL, rest, rlen);

        b.client_id_prefix = (flags & 2) ? id : NULL;
        b.clientid_must_match_cn = flags & 4;
        b.username_mode = (enum config_username_mode) ((flags >> 3) % 3);
        b.password_mode = (enum config_password_mode) ((flags >> 5) % 3);
        b.username = (flags & 0x80) ? NULL : "fixed-user";
        b.password = (flags & 0x80) ? NULL : "fixed-pass";

        if (policy_client_id(&b, cn, rest, rlen, 0x1234abcd, &cid) == 0) {
                if (strlen(cid) > 65535)
                        abort();
                free(cid);
        } else if (cid)
                abort();
        if (policy_client_id_allowed(&b, cn, rest, rlen) && b.clientid_must_match_cn &&
            (strlen(cn) != rlen || memcmp(cn, rest, rlen) != 0))
                abort();
        if (policy_credentials(&b, (flags & 1) ? NULL : cn, (flags & 0x40) ? NULL : (const uint8_t *) id,
                               strlen(id), rest, rlen, &user, &pass, &plen) == 0) {
                if (pass && !user)
                        abort();
                if (pass && pass[plen] != '\0')
                        abort();
        } else if (user || pass)
                abort();
        free(user);
        free(pass);
out:
        free(mp);
        free(tmpl);
        free(cn);
        free(id);
        return 0;
}
