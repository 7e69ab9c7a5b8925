/* SPDX-License-Identifier: MIT */
/* Unit tests for policy: mountpoint confinement, client ids, credentials. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mountpoint.h"
#include "policy.h"

#define U(s) ((const uint8_t *) (s))

static void expand_ok(const char *tmpl, const char *cn, const char *id, const char *want)
{
        const char *why = "unset";
        char *out = (char *) 1;

        assert_int_equal(mountpoint_expand(tmpl, cn, id, &out, &why), 0);
        assert_null(why);
        if (want)
                assert_string_equal(out, want);
        else
                assert_null(out);
        free(out);
}

static void expand_bad(const char *tmpl, const char *cn, const char *id)
{
        const char *why = NULL;
        char *out = (char *) 1;

        assert_int_equal(mountpoint_expand(tmpl, cn, id, &out, &why), -EINVAL);
        assert_non_null(why);
        assert_null(out);
}

static void test_mountpoint_expand(void **state)
{
        (void) state;
        expand_ok(NULL, "a", "b", NULL);
        expand_ok("", "a", "b", NULL);
        expand_ok("devices/%c/", "dev1", "id", "devices/dev1/");
        expand_ok("devices/%i/", "dev1", "id1", "devices/id1/");
        expand_ok("d/%c/%i/", "cn", "id", "d/cn/id/");
        expand_ok("100%%/%c/", "cn", NULL, "100%/cn/");
        expand_ok("fixed/", NULL, NULL, "fixed/");          /* no substitution: no identity needed */
        expand_ok("d/%c/", "caf\xc3\xa9", NULL, "d/caf\xc3\xa9/"); /* UTF-8 CN */
        expand_ok("d/%c/", "a..b", NULL, "d/a..b/");        /* ".." inside a level is just text */
        expand_ok("d/%c/", "x$", NULL, "d/x$/");
        expand_ok("/%c/", "a", NULL, "/a/");
}

static void test_mountpoint_escapes(void **state)
{
        (void) state;
        /* A CN or client id that would change the prefix's levels. */
        expand_bad("devices/%c/", "a/b", NULL);
        expand_bad("devices/%c/", "../x", NULL);
        expand_bad("devices/%c/", "..", NULL);
        expand_bad("devices/%c/", ".", NULL);
        expand_bad("devices/%c/", "+", NULL);
        expand_bad("devices/%c/", "#", NULL);
        expand_bad("devices/%c/", "a+", NULL);
        expand_bad("devices/%c/", "a#b", NULL);
        expand_bad("devices/%c/", "", NULL);
        expand_bad("devices/%c/", NULL, NULL);
        expand_bad("%c/", "$SYS", NULL);
        expand_bad("devices/%c/", "$x", NULL);
        expand_bad("devices/%i/", "cn", "../../etc");
        expand_bad("devices/%i/", "cn", "a/b");
        expand_bad("devices/%i/", "cn", "#");
        expand_bad("devices/%i/", "cn", NULL);
        expand_bad("devices/%c/", "a\nb", NULL);      /* control character */
        expand_bad("devices/%c/", "a\x7f", NULL);
        expand_bad("devices/%c/", "a\xc2\x85", NULL);  /* C1 control (NEL) */
        expand_bad("devices/%c/", "\xff", NULL);      /* not UTF-8 */
        expand_bad("devices/%c/", "\xc0\xaf", NULL);  /* overlong '/' */
        expand_bad("devices/%c/", "\xed\xa0\x80", NULL); /* surrogate */
        expand_bad("devices/%c/", "\xe0\x80\xaf", NULL); /* overlong '/', 3 bytes */
        expand_bad("devices/%c/", "\xf4\x90\x80\x80", NULL); /* > U+10FFFF */
        /* The template itself. */
        expand_bad("devices/%c", "a", NULL);          /* "devices/a" + "b/x" = device "ab" */
        expand_bad("devices", "a", NULL);
        expand_bad("dev/+/%c/", "a", NULL);
        expand_bad("dev/#/", "a", NULL);
        expand_bad("dev/../%c/", "a", NULL);
        expand_bad("../", "a", NULL);
        expand_bad("dev/%x/", "a", NULL);
        expand_bad("dev/%", "a", NULL);
        expand_bad("dev/\x01/", "a", NULL);
}

static void test_mountpoint_too_long(void **state)
{
        char *cn = malloc(70000);
        const char *why = NULL;
        char *out = NULL;

        (void) state;
        assert_non_null(cn);
        memset(cn, 'a', 69999);
        cn[69999] = '\0';
        assert_int_equal(mountpoint_expand("d/%c/", cn, NULL, &out, &why), -EINVAL);
        assert_non_null(why);
        assert_null(out);
        free(cn);
}

static uint8_t map_buf[POLICY_TOPIC_MAX];

static void to_up(const char *mp, const char *topic, int want_r, const char *want)
{
        char *out = (char *) 1;
        struct mqtt_str m;

        assert_int_equal(policy_topic_to_upstream(mp, U(topic), strlen(topic), &out), want_r);
        if (want_r == 0) {
                assert_string_equal(out, want);
                free(out);
        } else
                assert_null(out);
        /* The message path's variant agrees, and copies nothing without a
         * mountpoint. */
        assert_int_equal(policy_topic_map(mp, U(topic), strlen(topic), map_buf, sizeof map_buf, &m), want_r);
        if (want_r == 0) {
                assert_int_equal(m.len, strlen(want));
                assert_memory_equal(m.data, want, m.len);
                if (!mp || !*mp)
                        assert_ptr_equal(m.data, U(topic));
                else
                        assert_ptr_equal(m.data, map_buf);
        } else {
                assert_null(m.data);
        }
}

static void test_topic_to_upstream(void **state)
{
        const char *mp = "devices/a/";

        (void) state;
        to_up(mp, "t", 0, "devices/a/t");
        to_up(mp, "sensors/temp", 0, "devices/a/sensors/temp");
        to_up(mp, "/x", 0, "devices/a//x");
        to_up(mp, "x/", 0, "devices/a/x/");
        to_up(mp, "a..b/c", 0, "devices/a/a..b/c");
        to_up(mp, ".../x", 0, "devices/a/.../x");
        to_up(mp, "./x", 0, "devices/a/./x");
        to_up(mp, "x$", 0, "devices/a/x$");
        /* escapes */
        to_up(mp, "../x", -EPERM, NULL);
        to_up(mp, "..", -EPERM, NULL);
        to_up(mp, "a/..", -EPERM, NULL);
        to_up(mp, "a/../../b", -EPERM, NULL);
        to_up(mp, "a/../b", -EPERM, NULL);
        to_up(mp, "$SYS/broker/uptime", -EPERM, NULL);
        to_up(mp, "$x", -EPERM, NULL);
        /* not a topic name at all (§3.3.2.1, §4.7.3) */
        to_up(mp, "$SYS/#", -EINVAL, NULL);
        to_up(mp, "#", -EINVAL, NULL);
        to_up(mp, "+/x", -EINVAL, NULL);
        to_up(mp, "a/+", -EINVAL, NULL);
        to_up(mp, "", -EINVAL, NULL);
        to_up(mp, "\xff", -EINVAL, NULL);
        to_up(NULL, "#", -EINVAL, NULL);
        /* without a mountpoint: unchanged, '$' and ".." are the broker's business */
        to_up(NULL, "t", 0, "t");
        to_up("", "t", 0, "t");
        to_up(NULL, "$SYS/x", 0, "$SYS/x");
        to_up(NULL, "../x", 0, "../x");
}

static void test_topic_binary(void **state)
{
        char *out = (char *) 1;
        uint8_t *big;

        (void) state;
        /* an embedded NUL (§1.5.3) */
        assert_int_equal(policy_topic_to_upstream("d/", U("a\0b"), 3, &out), -EINVAL);
        assert_null(out);
        assert_int_equal(policy_filter_to_upstream("d/", U("a\0b"), 3, &out), -EINVAL);
        /* not NUL-terminated input is fine */
        assert_int_equal(policy_topic_to_upstream("d/", U("abcdef"), 3, &out), 0);
        assert_string_equal(out, "d/abc");
        free(out);
        /* the joined topic must still fit a §1.5.3 string */
        big = malloc(65535);
        assert_non_null(big);
        memset(big, 'x', 65535);
        assert_int_equal(policy_topic_to_upstream(NULL, big, 65535, &out), 0);
        free(out);
        assert_int_equal(policy_topic_to_upstream("d/", big, 65535, &out), -ENAMETOOLONG);
        assert_null(out);
        assert_int_equal(policy_topic_to_upstream("d/", big, 65533, &out), 0);
        assert_int_equal(strlen(out), 65535);
        free(out);
        assert_int_equal(policy_filter_to_upstream("d/", big, 65534, &out), -ENAMETOOLONG);
        /* policy_topic_map: the same limit, and a buffer too small is the
         * caller's error, not a refusal of the topic */
        struct mqtt_str m;
        assert_int_equal(policy_topic_map("d/", big, 65534, map_buf, sizeof map_buf, &m), -ENAMETOOLONG);
        assert_int_equal(policy_topic_map("d/", big, 65533, map_buf, sizeof map_buf, &m), 0);
        assert_int_equal(m.len, 65535);
        assert_int_equal(policy_topic_map("d/", big, 10, map_buf, 11, &m), -ENOBUFS);
        assert_int_equal(policy_topic_map("d/", big, 10, map_buf, 12, &m), 0);
        assert_memory_equal(m.data, "d/xxxxxxxxxx", 12);
        assert_int_equal(policy_topic_map(NULL, big, 65535, NULL, 0, &m), 0);
        assert_ptr_equal(m.data, big);
        free(big);
}

static void filt(const char *mp, const char *f, int want_r, const char *want)
{
        char *out = (char *) 1;

        assert_int_equal(policy_filter_to_upstream(mp, U(f), strlen(f), &out), want_r);
        if (want_r == 0) {
                assert_string_equal(out, want);
                free(out);
        } else
                assert_null(out);
}

static void test_filter_to_upstream(void **state)
{
        const char *mp = "devices/a/";

        (void) state;
        filt(mp, "#", 0, "devices/a/#");
        filt(mp, "+", 0, "devices/a/+");
        filt(mp, "+/b", 0, "devices/a/+/b");
        filt(mp, "+/+/#", 0, "devices/a/+/+/#");
        filt(mp, "x/#", 0, "devices/a/x/#");
        filt(mp, "cmd", 0, "devices/a/cmd");
        filt(mp, "/#", 0, "devices/a//#");
        /* escapes */
        filt(mp, "$SYS/#", -EPERM, NULL);
        filt(mp, "$SYS/broker/+", -EPERM, NULL);
        filt(mp, "$share/g/#", -EPERM, NULL);
        filt(mp, "../#", -EPERM, NULL);
        filt(mp, "../+/x", -EPERM, NULL);
        filt(mp, "a/../../b", -EPERM, NULL);
        filt(mp, "+/../#", -EPERM, NULL);
        filt(mp, "..", -EPERM, NULL);
        /* malformed filters (§4.7.1.2, §4.7.1.3) */
        filt(mp, "a/#/b", -EINVAL, NULL);
        filt(mp, "#/b", -EINVAL, NULL);
        filt(mp, "a#", -EINVAL, NULL);
        filt(mp, "a/b#", -EINVAL, NULL);
        filt(mp, "a+/b", -EINVAL, NULL);
        filt(mp, "a/+b", -EINVAL, NULL);
        filt(mp, "++", -EINVAL, NULL);
        filt(mp, "##", -EINVAL, NULL);
        filt(mp, "", -EINVAL, NULL);
        filt(NULL, "a/#/b", -EINVAL, NULL);
        /* no mountpoint: unchanged */
        filt(NULL, "#", 0, "#");
        filt(NULL, "$SYS/#", 0, "$SYS/#");
        filt("", "+/b", 0, "+/b");
}

static void from_up(const char *mp, const char *topic, int want_r, size_t want_off)
{
        size_t off = 12345;

        assert_int_equal(policy_topic_from_upstream(mp, topic, &off), want_r);
        assert_int_equal(off, want_r == 0 ? want_off : 0);
}

static void test_topic_from_upstream(void **state)
{
        (void) state;
        from_up("devices/a/", "devices/a/t", 0, 10);
        from_up("devices/a/", "devices/a/x/y", 0, 10);
        from_up("devices/a/", "devices/a//x", 0, 10);
        from_up("devices/a/", "devices/ab/x", -ENOENT, 0);  /* another device */
        from_up("devices/a/", "devices/a", -ENOENT, 0);     /* matched by "devices/a/#" */
        from_up("devices/a/", "devices/a/", -ENOENT, 0);    /* would be an empty topic */
        from_up("devices/a/", "devices/", -ENOENT, 0);
        from_up("devices/a/", "other/t", -ENOENT, 0);
        from_up("devices/a/", "$SYS/x", -ENOENT, 0);
        from_up("devices/a/", "", -ENOENT, 0);
        from_up(NULL, "x", 0, 0);
        from_up("", "$SYS/x", 0, 0);
}

static void test_round_trip(void **state)
{
        static const char *const topics[] = { "t", "a/b/c", "/x", "x/", "//", "caf\xc3\xa9/\xe2\x82\xac" };
        const char *why;
        char *mp = NULL;

        (void) state;
        assert_int_equal(mountpoint_expand("devices/%c/", "esp-01", "id", &mp, &why), 0);
        for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
                char *up = NULL;
                size_t off;

                assert_int_equal(policy_topic_to_upstream(mp, U(topics[i]), strlen(topics[i]), &up), 0);
                assert_int_equal(policy_topic_from_upstream(mp, up, &off), 0);
                assert_string_equal(up + off, topics[i]);
                free(up);
                /* and without a mountpoint */
                assert_int_equal(policy_topic_to_upstream(NULL, U(topics[i]), strlen(topics[i]), &up), 0);
                assert_int_equal(policy_topic_from_upstream(NULL, up, &off), 0);
                assert_string_equal(up + off, topics[i]);
                free(up);
        }
        free(mp);
}

static void test_client_id(void **state)
{
        struct config_bridge b = { .client_id_prefix = "br-" };
        char *out = NULL;
        uint8_t *big;

        (void) state;
        assert_int_equal(policy_client_id(&b, "cn", U("dev1"), 4, 0, &out), 0);
        assert_string_equal(out, "br-dev1");
        free(out);
        assert_int_equal(policy_client_id(&b, "esp", U(""), 0, 0xabcd, &out), 0);
        assert_string_equal(out, "br-esp-0000abcd");
        free(out);
        assert_int_equal(policy_client_id(&b, "esp", NULL, 0, 0xdeadbeef, &out), 0);
        assert_string_equal(out, "br-esp-deadbeef");
        free(out);
        b.client_id_prefix = NULL;
        assert_int_equal(policy_client_id(&b, "cn", U("dev1xyz"), 4, 0, &out), 0);
        assert_string_equal(out, "dev1");
        free(out);
        b.client_id_prefix = "";
        assert_int_equal(policy_client_id(&b, "cn", U("d"), 1, 0, &out), 0);
        assert_string_equal(out, "d");
        free(out);
        /* refusals */
        out = (char *) 1;
        assert_int_equal(policy_client_id(&b, NULL, U(""), 0, 1, &out), -EINVAL);
        assert_null(out);
        assert_int_equal(policy_client_id(&b, "", U(""), 0, 1, &out), -EINVAL);
        assert_int_equal(policy_client_id(&b, "cn", U("a\0b"), 3, 1, &out), -EINVAL);
        big = malloc(65535);
        assert_non_null(big);
        memset(big, 'c', 65535);
        assert_int_equal(policy_client_id(&b, "cn", big, 65535, 0, &out), 0);
        free(out);
        b.client_id_prefix = "p";
        assert_int_equal(policy_client_id(&b, "cn", big, 65535, 0, &out), -EINVAL);
        assert_null(out);
        free(big);
}

static void test_client_id_allowed(void **state)
{
        struct config_bridge b = { .clientid_must_match_cn = false };

        (void) state;
        assert_true(policy_client_id_allowed(&b, "esp", U("other"), 5));
        assert_true(policy_client_id_allowed(&b, NULL, U(""), 0));
        b.clientid_must_match_cn = true;
        assert_true(policy_client_id_allowed(&b, "esp", U("esp"), 3));
        assert_false(policy_client_id_allowed(&b, "esp", U("esp1"), 4));
        assert_false(policy_client_id_allowed(&b, "esp1", U("esp"), 3));
        assert_false(policy_client_id_allowed(&b, "esp", U("ESP"), 3));
        assert_false(policy_client_id_allowed(&b, "esp", U(""), 0));
        assert_false(policy_client_id_allowed(&b, NULL, U("esp"), 3));
        assert_false(policy_client_id_allowed(&b, "e", U("e\0x"), 3));
}

static void creds(const struct config_bridge *b, const char *cn, const char *du, const uint8_t *dp,
                  size_t dplen, int want_r, const char *want_user, const uint8_t *want_pass, size_t want_len)
{
        char *user = (char *) 1, *pass = (char *) 1;
        size_t plen = 99;

        assert_int_equal(policy_credentials(b, cn, U(du), du ? strlen(du) : 0, dp, dplen, &user, &pass, &plen),
                         want_r);
        if (want_user)
                assert_string_equal(user, want_user);
        else
                assert_null(user);
        if (want_pass) {
                assert_non_null(pass);
                assert_int_equal(plen, want_len);
                assert_memory_equal(pass, want_pass, want_len);
                assert_int_equal(pass[want_len], '\0');
        } else {
                assert_null(pass);
                assert_int_equal(plen, 0);
        }
        free(user);
        free(pass);
}

static void test_credentials(void **state)
{
        struct config_bridge b = { 0 };
        static const uint8_t bin[] = { 's', 0, 'e', 0xff };

        (void) state;
        /* device (default): what the device sent, the CN when it sent none */
        creds(&b, "esp", "alice", U("pw"), 2, 0, "alice", U("pw"), 2);
        creds(&b, "esp", NULL, NULL, 0, 0, "esp", NULL, 0);
        creds(&b, "esp", NULL, U("pw"), 2, 0, "esp", U("pw"), 2);
        creds(&b, "esp", "", NULL, 0, 0, "", NULL, 0);          /* present but empty stays empty */
        creds(&b, "esp", "u", bin, sizeof(bin), 0, "u", bin, sizeof(bin)); /* binary password */
        creds(&b, "esp", "u", U(""), 0, 0, "u", U(""), 0);
        creds(&b, NULL, NULL, NULL, 0, 0, NULL, NULL, 0);
        /* §3.1.2.9: a password without a user name cannot be sent */
        creds(&b, NULL, NULL, U("pw"), 2, -EINVAL, NULL, NULL, 0);

        b.username_mode = USERNAME_FROM_CN;
        creds(&b, "esp", "alice", U("pw"), 2, 0, "esp", U("pw"), 2);
        creds(&b, "esp", NULL, NULL, 0, 0, "esp", NULL, 0);

        b.username_mode = USERNAME_FIXED;
        b.username = "bridge";
        creds(&b, "esp", "alice", NULL, 0, 0, "bridge", NULL, 0);
        b.username = NULL;
        creds(&b, "esp", "alice", NULL, 0, -EINVAL, NULL, NULL, 0);
        b.username = "bridge";

        b.password_mode = PASSWORD_FIXED;
        b.password = "s3cret";
        creds(&b, "esp", "alice", U("pw"), 2, 0, "bridge", U("s3cret"), 6);
        creds(&b, "esp", NULL, NULL, 0, 0, "bridge", U("s3cret"), 6);
        b.password = NULL;
        creds(&b, "esp", "alice", U("pw"), 2, -EINVAL, NULL, NULL, 0);

        b.password_mode = PASSWORD_NONE;
        creds(&b, "esp", "alice", U("pw"), 2, 0, "bridge", NULL, 0);

        b.username_mode = USERNAME_FROM_DEVICE;
        b.password_mode = PASSWORD_FROM_DEVICE;
        /* a NUL in the user name would be cut short by libmosquitto */
        {
                char *user = (char *) 1, *pass = (char *) 1;
                size_t plen = 9;

                assert_int_equal(policy_credentials(&b, "esp", U("a\0b"), 3, NULL, 0, &user, &pass, &plen),
                                 -EINVAL);
                assert_null(user);
                assert_null(pass);
                assert_int_equal(plen, 0);
                assert_int_equal(policy_credentials(NULL, "esp", NULL, 0, NULL, 0, &user, &pass, &plen),
                                 -EINVAL);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_mountpoint_expand),
                cmocka_unit_test(test_mountpoint_escapes),
                cmocka_unit_test(test_mountpoint_too_long),
                cmocka_unit_test(test_topic_to_upstream),
                cmocka_unit_test(test_topic_binary),
                cmocka_unit_test(test_filter_to_upstream),
                cmocka_unit_test(test_topic_from_upstream),
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_client_id),
                cmocka_unit_test(test_client_id_allowed),
                cmocka_unit_test(test_credentials),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
