/* SPDX-License-Identifier: MIT */
/* bytebuf: the uplink's output and input queues. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bytebuf.h"

static void test_fifo(void **state)
{
        struct bytebuf b = { 0 };
        (void) state;

        assert_int_equal(bytebuf_size(&b), 0);
        assert_int_equal(bytebuf_append(&b, "hello ", 6), 0);
        assert_int_equal(bytebuf_append(&b, "world", 5), 0);
        assert_int_equal(bytebuf_size(&b), 11);
        assert_memory_equal(bytebuf_head(&b), "hello world", 11);
        bytebuf_consume(&b, 6);
        assert_int_equal(bytebuf_size(&b), 5);
        assert_memory_equal(bytebuf_head(&b), "world", 5);
        bytebuf_consume(&b, 5);
        assert_int_equal(bytebuf_size(&b), 0);
        assert_int_equal(b.off, 0);     /* empty: back to the start */
        bytebuf_free(&b);
        bytebuf_free(&b);               /* idempotent */
        bytebuf_free(NULL);
}

static void test_reserve_commit_compacts(void **state)
{
        struct bytebuf b = { 0 };
        uint8_t *p;
        (void) state;

        p = bytebuf_reserve(&b, 1000);
        assert_non_null(p);
        memset(p, 'a', 1000);
        bytebuf_commit(&b, 1000);
        size_t cap = b.cap;
        bytebuf_consume(&b, 990);
        /* Room at the front is reused before growing. */
        p = bytebuf_reserve(&b, cap - 10);
        assert_non_null(p);
        assert_int_equal(b.cap, cap);
        assert_int_equal(b.off, 0);
        assert_memory_equal(bytebuf_head(&b), "aaaaaaaaaa", 10);
        memset(p, 'b', cap - 10);
        bytebuf_commit(&b, cap - 10);
        assert_int_equal(bytebuf_size(&b), cap);

        /* Growing keeps the live bytes. */
        bytebuf_consume(&b, 5);
        p = bytebuf_reserve(&b, 100000);
        assert_non_null(p);
        assert_true(b.cap >= cap - 5 + 100000);
        assert_memory_equal(bytebuf_head(&b), "aaaaabbbbb", 10);

        /* Absurd sizes fail cleanly and change nothing. */
        size_t live = bytebuf_size(&b);
        assert_null(bytebuf_reserve(&b, SIZE_MAX - 8));
        assert_int_equal(bytebuf_size(&b), live);
        assert_int_equal(bytebuf_append(&b, "x", SIZE_MAX / 2), -ENOMEM);
        bytebuf_free(&b);
}

static void test_trim(void **state)
{
        struct bytebuf b = { 0 };
        (void) state;

        assert_int_equal(bytebuf_append(&b, "x", 1), 0);
        bytebuf_trim(&b, 0);
        assert_non_null(b.data);        /* not empty: kept */
        bytebuf_consume(&b, 1);
        bytebuf_trim(&b, 1 << 20);
        assert_non_null(b.data);        /* small enough to keep */
        bytebuf_trim(&b, 0);
        assert_null(b.data);
        assert_int_equal(b.cap, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fifo),
                cmocka_unit_test(test_reserve_commit_compacts),
                cmocka_unit_test(test_trim),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
