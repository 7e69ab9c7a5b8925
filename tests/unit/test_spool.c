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

/* ---- recovery from damage (issue 12) ---- */

/* Capture what the spool logs (stderr outside systemd) while f runs. */
static char logbuf[8192];

static void capture_begin(int *saved, char *path, size_t len)
{
        snprintf(path, len, "%s/log.txt", dir);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        assert_true(fd >= 0);
        fflush(stderr);
        *saved = dup(2);
        dup2(fd, 2);
        close(fd);
}

static const char *capture_end(int saved, const char *path)
{
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        ssize_t n = read(fd, logbuf, sizeof logbuf - 1);
        close(fd);
        logbuf[n > 0 ? n : 0] = 0;
        return logbuf;
}

/* Ten messages "m1".."m10" in the spool of key, nothing acknowledged;
 * the file offset where each record starts goes to offs[0..9]. */
static void write_ten(const char *key, uint64_t offs[10], char *path, size_t len)
{
        struct spool *s;
        uint64_t seq;

        assert_int_equal(spool_open(dir, key, 0, &s), 0);
        for (int i = 0; i < 10; i++) {
                char payload[8];
                offs[i] = spool_bytes(s);
                snprintf(payload, sizeof payload, "m%d", i + 1);
                assert_int_equal(spool_append(s, 1, false, "t/x", payload, strlen(payload), &seq), 0);
        }
        assert_int_equal(spool_sync(s), 0);
        snprintf(path, len, "%s", spool_file(s));
        /* As if the bridge stopped: nothing is acknowledged, the file stays. */
        spool_close(s);
}

static void flip(const char *path, uint64_t off, uint8_t mask)
{
        int fd = open(path, O_RDWR);
        uint8_t b;
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, &b, 1, (off_t) off), 1);
        b ^= mask;
        assert_int_equal(pwrite(fd, &b, 1, (off_t) off), 1);
        close(fd);
}

/* Read everything and return the seqs in order. */
static int read_all(struct spool *s, uint64_t *seqs, int max)
{
        struct spool_msg *m;
        int n = 0;
        while (spool_read_next(s, &m) == 1) {
                char want[8];
                snprintf(want, sizeof want, "m%llu", (unsigned long long) m->seq);
                assert_int_equal(m->payload_len, strlen(want));
                assert_memory_equal(m->payload, want, m->payload_len);
                assert_string_equal(m->topic, "t/x");
                assert_true(n < max);
                seqs[n++] = m->seq;
                free(m);
        }
        return n;
}

/* The case: one byte of the third of ten records flipped while the
 * bridge was stopped used to lose the eight after it. */
static void test_mid_file_damage_loses_only_that_record(void **state)
{
        uint64_t offs[10], seqs[16], seq;
        char path[256], logpath[300];
        struct spool *s;
        int saved;
        (void) state;

        write_ten("mid", offs, path, sizeof path);
        flip(path, offs[2] + SPOOL_HEADER_LEN + 20, 0x01); /* in the third record's body */

        capture_begin(&saved, logpath, sizeof logpath);
        assert_int_equal(spool_open(dir, "mid", 0, &s), 0);
        const char *log = capture_end(saved, logpath);
        assert_non_null(strstr(log, path));
        assert_non_null(strstr(log, "warning"));
        assert_non_null(strstr(log, "at least 1 message lost (1 not yet acknowledged upstream)"));

        int n = read_all(s, seqs, 16);
        assert_int_equal(n, 9);
        uint64_t want[9] = { 1, 2, 4, 5, 6, 7, 8, 9, 10 };
        assert_memory_equal(seqs, want, sizeof want);
        /* Appending goes on after the last record; the file keeps its size
         * up to there (the damage stays skipped, nothing valid is cut). */
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(spool_bytes(s), (uint64_t) st.st_size);
        assert_int_equal(spool_append(s, 1, false, "t/x", "m11", 3, &seq), 0);
        assert_int_equal(seq, 11);
        assert_int_equal(spool_sync(s), 0);
        spool_rewind(s);
        n = read_all(s, seqs, 16);
        assert_int_equal(n, 10);
        assert_int_equal(seqs[9], 11);
        /* Acknowledging all of them drains the file, damage and all. */
        assert_int_equal(spool_ack_through(s, 11), 0);
        assert_int_equal(spool_pending(s), 0);
        spool_close(s);
        assert_int_equal(access(path, F_OK), -1);
}

/* Damage in a header (the magic, the length), and in two places. */
static void test_damaged_headers_resync(void **state)
{
        uint64_t offs[10], seqs[16];
        char path[256];
        struct spool *s;
        (void) state;

        write_ten("hdr", offs, path, sizeof path);
        flip(path, offs[1], 0xff);          /* record 2: magic */
        flip(path, offs[6] + 4, 0x40);      /* record 7: length now huge (partial in the middle) */
        flip(path, offs[7] + 8, 0x01);      /* record 8: CRC */
        assert_int_equal(spool_open(dir, "hdr", 0, &s), 0);
        int n = read_all(s, seqs, 16);
        uint64_t want[7] = { 1, 3, 4, 5, 6, 9, 10 };
        assert_int_equal(n, 7);
        assert_memory_equal(seqs, want, sizeof want);
        assert_int_equal(spool_pending(s), 10); /* nothing acknowledged: 10 numbers pending */
        spool_close(s);
}

/* Only a torn LAST record is cut; a damaged last record is cut too, but
 * said as damage; what came before stays. */
static void test_damaged_last_record_is_cut_with_a_warning(void **state)
{
        uint64_t offs[10], seqs[16];
        char path[256], logpath[300];
        struct spool *s;
        struct stat st;
        int saved;
        (void) state;

        write_ten("last", offs, path, sizeof path);
        flip(path, offs[9] + SPOOL_HEADER_LEN + 5, 0x80);
        capture_begin(&saved, logpath, sizeof logpath);
        assert_int_equal(spool_open(dir, "last", 0, &s), 0);
        const char *log = capture_end(saved, logpath);
        assert_non_null(strstr(log, "hold no valid record"));
        assert_int_equal(read_all(s, seqs, 16), 9);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((uint64_t) st.st_size, offs[9]);
        spool_close(s);

        /* A torn one (cut short): a notice, not a warning. */
        write_ten("torn2", offs, path, sizeof path);
        assert_int_equal(truncate(path, (off_t) offs[9] + 7), 0);
        capture_begin(&saved, logpath, sizeof logpath);
        assert_int_equal(spool_open(dir, "torn2", 0, &s), 0);
        log = capture_end(saved, logpath);
        assert_non_null(strstr(log, "cut a torn last record (7 bytes)"));
        assert_null(strstr(log, "warning"));
        assert_int_equal(read_all(s, seqs, 16), 9);
        spool_close(s);
}

/* A stale copy of an earlier record after the damage is not taken for the
 * next one (sequence numbers only grow in a file). */
static void test_resync_skips_stale_copies(void **state)
{
        uint64_t offs[10], seqs[16];
        char path[256];
        struct spool *s;
        uint8_t rec[64];
        (void) state;

        write_ten("stale", offs, path, sizeof path);
        /* Record 5 overwritten with garbage, record 6 with a valid copy of
         * record 1 (records 1..9 have the same length: "mN" payloads). */
        int fd = open(path, O_RDWR);
        assert_true(fd >= 0);
        size_t rlen = (size_t) (offs[1] - offs[0]);
        assert_true(rlen <= sizeof rec);
        assert_int_equal(pread(fd, rec, rlen, (off_t) offs[0]), (ssize_t) rlen);
        assert_int_equal(pwrite(fd, rec, rlen, (off_t) offs[5]), (ssize_t) rlen);
        memset(rec, 'X', rlen);
        assert_int_equal(pwrite(fd, rec, rlen, (off_t) offs[4]), (ssize_t) rlen);
        close(fd);
        assert_int_equal(spool_open(dir, "stale", 0, &s), 0);
        int n = read_all(s, seqs, 16);
        uint64_t want[8] = { 1, 2, 3, 4, 7, 8, 9, 10 };
        assert_int_equal(n, 8);
        assert_memory_equal(seqs, want, sizeof want);
        spool_close(s);

        /* An old record exactly where a record starts (old blocks of a
         * file emptied and written again): it decodes, but its number is
         * not above the ones before it, so it is not taken for ours. */
        write_ten("stale2", offs, path, sizeof path);
        fd = open(path, O_RDWR);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, rec, rlen, (off_t) offs[0]), (ssize_t) rlen);
        assert_int_equal(pwrite(fd, rec, rlen, (off_t) offs[4]), (ssize_t) rlen);
        close(fd);
        assert_int_equal(spool_open(dir, "stale2", 0, &s), 0);
        n = read_all(s, seqs, 16);
        uint64_t want2[9] = { 1, 2, 3, 4, 6, 7, 8, 9, 10 };
        assert_int_equal(n, 9);
        assert_memory_equal(seqs, want2, sizeof want2);
        spool_close(s);
}

static void test_find_magic_and_no_symlinks(void **state)
{
        (void) state;
        assert_int_equal(spool_find_magic((const uint8_t *) "xxMEBSyy", 8), 2);
        assert_int_equal(spool_find_magic((const uint8_t *) "xxMEB", 5), 5);
        assert_int_equal(spool_find_magic((const uint8_t *) "ME", 2), 2);
        assert_int_equal(spool_find_magic((const uint8_t *) "", 0), 0);

        /* A spool file that is a symbolic link is not followed. */
        char target[256], link_path[256];
        struct spool *s;
        snprintf(target, sizeof target, "%s/elsewhere", dir);
        int fd = open(target, O_WRONLY | O_CREAT, 0600);
        assert_true(fd >= 0);
        close(fd);
        char *p = spool_path(dir, "linked");
        snprintf(link_path, sizeof link_path, "%s", p);
        free(p);
        assert_int_equal(symlink(target, link_path), 0);
        assert_int_equal(spool_open(dir, "linked", 0, &s), -ELOOP);
}

/* ---- the device's QoS 2 ids (PID records) ---- */

static void test_pid_record_codec(void **state)
{
        struct spool_record in = { .type = SPOOL_PID, .qos = SPOOL_PID_HOLD, .pid = 0xbeef, .seq = 7 }, out;
        uint8_t buf[64];
        size_t used;
        (void) state;

        int n = spool_record_encode(buf, sizeof buf, &in);
        assert_int_equal(n, SPOOL_HEADER_LEN + 12);
        assert_int_equal(spool_record_decode(buf, (size_t) n, &out, &used), 1);
        assert_int_equal(out.type, SPOOL_PID);
        assert_int_equal(out.qos, SPOOL_PID_HOLD);
        assert_int_equal(out.pid, 0xbeef);
        assert_true(out.seq == 7);
        /* no id 0 (§2.3.1), one flag at most, a release names no message */
        in.pid = 0;
        assert_int_equal(spool_record_encode(buf, sizeof buf, &in), -EINVAL);
        in = (struct spool_record){ .type = SPOOL_PID, .qos = SPOOL_PID_HOLD | SPOOL_PID_RELEASE, .pid = 1, .seq = 1 };
        assert_int_equal(spool_record_encode(buf, sizeof buf, &in), -EINVAL);
        in = (struct spool_record){ .type = SPOOL_PID, .qos = SPOOL_PID_RELEASE, .pid = 1, .seq = 1 };
        assert_int_equal(spool_record_encode(buf, sizeof buf, &in), -EINVAL);
        in.seq = 0;
        assert_int_equal(spool_record_encode(buf, sizeof buf, &in), SPOOL_HEADER_LEN + 12);
}

/* A QoS 2 id the bridge PUBREC'd itself stays held across a reopen (a new
 * connection, a restart) until released, also once its message was
 * delivered; the file stays for it, and messages appended after a drain
 * are not taken for acknowledged. */
static void test_held_ids_survive(void **state)
{
        struct spool *s;
        struct spool_msg *m;
        uint64_t seq;
        (void) state;

        assert_int_equal(spool_open(dir, "held", 0, &s), 0);
        assert_int_equal(spool_append_pid(s, 2, false, "t", "a", 1, 7, true, &seq), 0);
        assert_int_equal(spool_append_pid(s, 2, false, "t", "b", 1, 8, false, &seq), 0);
        assert_int_equal(spool_append(s, 1, false, "t", "c", 1, &seq), 0);
        assert_true(spool_held(s, 7) && !spool_held(s, 8));
        assert_true(spool_pinned(s, 7) && spool_pinned(s, 8));
        spool_close(s);

        assert_int_equal(spool_open(dir, "held", 0, &s), 0);
        assert_true(spool_held(s, 7));
        assert_int_equal(spool_held_count(s), 1);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->pid, 7);
        assert_false(m->sent_rel);
        assert_int_equal(spool_mark_sent_rel(s, m->seq, 7), 0);
        free(m);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->pid, 8);
        free(m);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_int_equal(m->pid, 0);
        free(m);
        /* delivered, all of them: 7 is still held, the file stays */
        assert_int_equal(spool_ack_through(s, 3), 0);
        assert_int_equal(spool_pending(s), 0);
        assert_false(spool_pinned(s, 7));
        spool_close(s);

        assert_int_equal(spool_open(dir, "held", 0, &s), 0);
        assert_true(spool_held(s, 7));
        assert_int_equal(spool_pending(s), 0);
        assert_int_equal(spool_append(s, 1, false, "t", "d", 1, &seq), 0);
        spool_close(s);
        assert_int_equal(spool_open(dir, "held", 0, &s), 0);
        assert_int_equal(spool_pending(s), 1);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_memory_equal(m->payload, "d", 1);
        assert_int_equal(spool_ack_through(s, m->seq), 0);
        free(m);
        assert_int_equal(spool_release(s, 7), 0);
        assert_false(spool_held(s, 7));
        spool_close(s);

        /* nothing pending, nothing held: the file is gone */
        char *path = spool_path(dir, "held");
        assert_int_equal(access(path, F_OK), -1);
        free(path);
}

/* A replay whose PUBREL went keeps that mark for the next reader. */
static void test_sent_rel_survives(void **state)
{
        struct spool *s;
        struct spool_msg *m;
        uint64_t seq;
        (void) state;

        assert_int_equal(spool_open(dir, "rel", 0, &s), 0);
        assert_int_equal(spool_append_pid(s, 2, false, "t", "a", 1, 3, true, &seq), 0);
        assert_int_equal(spool_mark_sent_rel(s, seq, 3), 0);
        assert_int_equal(spool_release_all(s), 0);
        spool_close(s);
        assert_int_equal(spool_open(dir, "rel", 0, &s), 0);
        assert_int_equal(spool_held_count(s), 0);
        assert_int_equal(spool_read_next(s, &m), 1);
        assert_true(m->sent_rel);
        assert_int_equal(m->pid, 3);
        assert_int_equal(spool_ack_through(s, m->seq), 0);
        free(m);
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
                cmocka_unit_test(test_mid_file_damage_loses_only_that_record),
                cmocka_unit_test(test_damaged_headers_resync),
                cmocka_unit_test(test_damaged_last_record_is_cut_with_a_warning),
                cmocka_unit_test(test_resync_skips_stale_copies),
                cmocka_unit_test(test_find_magic_and_no_symlinks),
                cmocka_unit_test(test_pid_record_codec),
                cmocka_unit_test(test_held_ids_survive),
                cmocka_unit_test(test_sent_rel_survives),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
