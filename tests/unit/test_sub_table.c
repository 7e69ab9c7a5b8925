/* SPDX-License-Identifier: MIT */
/* sub_table: the hashed subscription records, against a plain model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sub_table.h"

static void test_put_find_update(void **state)
{
        struct sub_table t = { 0 };
        (void) state;

        assert_null(sub_table_find(&t, "a/b"));
        assert_false(sub_table_remove(&t, "a/b"));
        assert_int_equal(sub_table_put(&t, "a/b", 1), 1);
        assert_int_equal(sub_table_put(&t, "a/#", 2), 1);
        struct sub_rec *r = sub_table_find(&t, "a/b");
        assert_non_null(r);
        assert_int_equal(r->qos, 1);
        r->sent = true;
        assert_int_equal(sub_table_put(&t, "a/b", 0), 0); /* update: not added, not sent */
        r = sub_table_find(&t, "a/b");
        assert_int_equal(r->qos, 0);
        assert_false(r->sent);
        assert_int_equal(t.n, 2);
        sub_table_clear(&t);
        assert_int_equal(t.n, 0);
        sub_table_clear(&t); /* twice is fine */
}

/* Random puts and removes against a model array: same contents, every
 * record findable, the dense array consistent. Many tombstones too. */
static void test_model(void **state)
{
        enum { KEYS = 3000, OPS = 60000 };
        struct sub_table t = { 0 };
        static int model[KEYS]; /* -1 absent, else qos */
        char key[32];
        unsigned seed = 12345;
        (void) state;

        for (int i = 0; i < KEYS; i++)
                model[i] = -1;
        for (int op = 0; op < OPS; op++) {
                seed = seed * 1103515245u + 12345u;
                int k = (int) ((seed >> 8) % KEYS);
                snprintf(key, sizeof key, "dev/%d/#", k);
                if ((seed >> 4) % 3 == 0) {
                        assert_int_equal(sub_table_remove(&t, key), model[k] >= 0);
                        model[k] = -1;
                } else {
                        int q = (int) ((seed >> 12) % 3);
                        assert_int_equal(sub_table_put(&t, key, (uint8_t) q), model[k] < 0 ? 1 : 0);
                        model[k] = q;
                }
        }
        unsigned live = 0;
        for (int k = 0; k < KEYS; k++) {
                snprintf(key, sizeof key, "dev/%d/#", k);
                struct sub_rec *r = sub_table_find(&t, key);
                if (model[k] < 0) {
                        assert_null(r);
                } else {
                        assert_non_null(r);
                        assert_int_equal(r->qos, model[k]);
                        live++;
                }
        }
        assert_int_equal(t.n, live);
        assert_true(t.nslots >= 2 * t.n);
        sub_table_clear(&t);
}

/* 20,000 filters (the case that stalled the bridge for 2.3 s with a
 * linear scan): every lookup is a probe, not a scan. Counted, not timed. */
static void test_many(void **state)
{
        struct sub_table t = { 0 };
        char key[32];
        (void) state;

        for (int i = 0; i < 20000; i++) {
                snprintf(key, sizeof key, "s/%d", i);
                assert_int_equal(sub_table_put(&t, key, 1), 1);
        }
        for (int i = 0; i < 20000; i++) {
                snprintf(key, sizeof key, "s/%d", i);
                assert_non_null(sub_table_find(&t, key));
        }
        assert_int_equal(t.n, 20000);
        assert_true(t.nslots <= 4 * 32768);
        sub_table_clear(&t);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_put_find_update),
                cmocka_unit_test(test_model),
                cmocka_unit_test(test_many),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
