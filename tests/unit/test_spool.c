/* SPDX-License-Identifier: MIT */
/* The spool: record codec, and the file's promise across a crash. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "spool.h"
#include "spool_codec.h"

static char dir[64];

static int setup(void **state)
{
        (void) state;
        strcpy(dir, "/tmp/test-spool-XXXXXX");
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
        char cmd[128];
        (void) state;
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static void test_crc32_check_value(void **state)
{
        (void) state;
        /* The standard check value of CRC-32/ISO-HDLC (zlib's). */
        assert_int_equal(spool_crc32((const uint8_t *) "123456789", 9), 0xcbf43926u);
}

static void test_codec_round_trip(void **state)
{
        struct spool_record in = {
                .type = SPOOL_MESSAGE, .qos = 2, .retain = true, .seq = 0x0102030405060708ull,
                .topic = (const uint8_t *) "a/b", .topic_len = 3,
                .payload = (const uint8_t *) "\0\1\2", .payload_len = 3,
        }, out;
        uint8_t buf[128];
        size_t used = 0;
        (void) state;

        int n = spool_record_encode(buf, sizeof buf, &in);
        assert_int_equal(n, (int) spool_record_len(&in));
        assert_int_equal(spool_record_decode(buf, (size_t) n, &out, &used), 1);
        assert_int_equal(used, (size_t) n);
        assert_int_equal(out.qos, 2);
        assert_true(out.retain);
        assert_true(out.seq == in.seq);
        assert_memory_equal(out.topic, "a/b", 3);
        assert_int_equal(out.payload_len, 3);
        assert_memory_equal(out.payload, "\0\1\2", 3);

        /* every truncation is "need more", never a record */
        for (int k = 0; k < n; k++)
                assert_int_equal(spool_record_decode(buf, (size_t) k, &out, &used), 0);
        /* a flipped bit anywhere is caught */
        for (int k = 0; k < n; k++) {
                buf[k] ^= 0x10;
                assert_true(spool_record_decode(buf, (size_t) n, &out, &used) != 1);
                buf[k] ^= 0x10;
        }
        assert_int_equal(spool_record_encode(buf, (size_t) n - 1, &in), -ENOBUFS);
        in.qos = 3;
        assert_int_equal(spool_record_encode(buf, sizeof buf, &in), -EINVAL);
}

static void test_append_replay_ack(void **state)
{
        struct spool *s;
        struct spool_msg *m;
        uint64_t seq;
        (void) state;

        assert_int_equal(spool_open(dir, "cn\ndev-a", 0, &s), 0);
        assert_int_equal(spool_pending(s), 0);
        for (int i = 1; i <= 3; i++) {
                char payload[8];
                snprintf(payload, sizeof payload, "m%d", i);
                assert_int_equal(spool_append(s, 1, false, "t/x", payload, strlen(payload), &seq), 0);
                assert_int_equal(seq, (uint64_t) i);
        }
        assert_int_equal(spool_sync(s), 0);
        assert_int_equal(spool_pending(s), 3);

        assert_int_equal(spool_read_next(s, &m), 1);
        assert_string_equal(m->topic, "t/x");
        assert_int_equal(m->seq, 1);
        assert_memory_equal(m->payload, "m1", 2);
        free(m);
        assert_int_equal(spool_ack_through(s, 1), 0);
        assert_int_equal(spool_pending(s), 2);
        spool_close(s);

        /* A new process: the acknowledged one is gone, two remain, in order. */
        assert_int_equal(spool_open(dir, "cn\ndev-a", 0, &s), 0);
        assert_int_equal(spool_pending(s), 2);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->seq, 2);
        free(m);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->seq, 3);
        free(m);
        assert_int_equal(spool_read_next(s, &m), 0);
        assert_int_equal(spool_ack_through(s, 3), 0);
        assert_int_equal(spool_pending(s), 0);
        /* emptied: only the record of how far acknowledgements went */
        assert_int_equal(spool_bytes(s), SPOOL_HEADER_LEN + 12);
        assert_int_equal(spool_append(s, 1, false, "t/x", "m4", 2, &seq), 0);
        assert_int_equal(seq, 4);
        assert_int_equal(spool_pending(s), 1);
        assert_int_equal(spool_sync(s), 0);
        spool_close(s);

        /* a crash now: one message pending, not four */
        assert_int_equal(spool_open(dir, "cn\ndev-a", 0, &s), 0);
        assert_int_equal(spool_pending(s), 1);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->seq, 4);
        free(m);
        assert_int_equal(spool_ack_through(s, 4), 0);
        spool_close(s);

        char *path = spool_path(dir, "cn\ndev-a");
        assert_non_null(path);
        assert_int_equal(access(path, F_OK), -1); /* drained spools leave no file */
        free(path);
}

static void test_torn_tail_is_cut(void **state)
{
        struct spool *s;
        struct spool_msg *m;
        uint64_t seq;
        char path[256];
        (void) state;

        assert_int_equal(spool_open(dir, "torn", 0, &s), 0);
        assert_int_equal(spool_append(s, 1, false, "a", "1", 1, &seq), 0);
        assert_int_equal(spool_append(s, 2, true, "b", "2", 1, &seq), 0);
        assert_int_equal(spool_sync(s), 0);
        uint64_t size = spool_bytes(s);
        spool_close(s);

        /* A crash in the middle of the next write: half a record. */
        snprintf(path, sizeof path, "%s/746f726e.spool", dir); /* "torn" in hex */
        int fd = open(path, O_WRONLY | O_APPEND);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "MEBS\0\0\0\x20garbage", 15), 15);
        close(fd);

        assert_int_equal(spool_open(dir, "torn", 0, &s), 0);
        assert_int_equal(spool_pending(s), 2);
        assert_int_equal(spool_bytes(s), size);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((uint64_t) st.st_size, size); /* cut back to the last whole record */
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->qos, 1);
        free(m);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->qos, 2);
        assert_true(m->retain);
        free(m);
        /* appending after recovery continues the sequence */
        assert_int_equal(spool_append(s, 1, false, "c", "3", 1, &seq), 0);
        assert_int_equal(seq, 3);
        spool_close(s);
}

static void test_limit(void **state)
{
        struct spool *s;
        uint64_t seq;
        char big[1000];
        (void) state;

        memset(big, 'x', sizeof big);
        assert_int_equal(spool_open(dir, "small", 3000, &s), 0);
        assert_int_equal(spool_append(s, 1, false, "t", big, sizeof big, &seq), 0);
        assert_int_equal(spool_append(s, 1, false, "t", big, sizeof big, &seq), 0);
        assert_int_equal(spool_append(s, 1, false, "t", big, sizeof big, &seq), -ENOSPC);
        assert_int_equal(spool_pending(s), 2);
        spool_close(s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_crc32_check_value),
                cmocka_unit_test(test_codec_round_trip),
                cmocka_unit_test(test_append_replay_ack),
                cmocka_unit_test(test_torn_tail_is_cut),
                cmocka_unit_test(test_limit),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
