/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: spool recovery on real spool files (issue 12).
 *
 * The input drives a real spool (spool.c, on a file in /dev/shm): some
 * messages appended, acknowledgements and a META record in between, the
 * file closed as a stopped bridge leaves it; then the rest of the input
 * damages the file in place (bit flips, bytes set, ranges zeroed or
 * overwritten with other parts of the file, the end cut) and the file is
 * opened again and read back. Checked:
 *   - no crash, no leak (ASan);
 * (Stale data is modelled as earlier bytes of the file showing up later,
 * as old blocks do after a file was emptied and written again.)
 *   - never a message delivered that was not written: every message read
 *     back equals the one written with that sequence number, and sequence
 *     numbers only grow;
 *   - nothing lost beyond the damage: every message not acknowledged
 *     whose record's bytes were not touched (and lie before the cut) is
 *     read back;
 *   - appending after recovery works, and a second open agrees.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSGS 24

struct input {
        const uint8_t *p;
        size_t left;
};

static unsigned take(struct input *in, unsigned mod)
{
        unsigned v = 0;
        if (in->left) {
                v = *in->p++;
                in->left--;
        }
        return mod ? v % mod : v;
}

static unsigned take16(struct input *in, unsigned mod)
{
        unsigned v = take(in, 0) << 8;
        v |= take(in, 0);
        return mod ? v % mod : v;
}

struct written {
        uint64_t seq;
        uint64_t off, end;      /* its record's bytes in the file */
        uint8_t qos;
        bool retain;
        char topic[16];
        uint8_t payload[80];
        size_t len;
        bool damaged;
};

static char path[128];

static void setup_once(void)
{
        if (path[0])
                return;
        char dir[64];
        snprintf(dir, sizeof dir, "/dev/shm/fuzz-spool-%d", (int) getpid());
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                snprintf(dir, sizeof dir, "/tmp/fuzz-spool-%d", (int) getpid());
                if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                        abort();
        }
        snprintf(path, sizeof path, "%s/f.spool", dir);
        /* The damage warnings are the point, not worth printing each time. */
        log_setup(LOG_LEVEL_ERR, LOG_TARGET_STDERR);
}

static const struct written *find(const struct written *w, unsigned n, uint64_t seq)
{
        for (unsigned i = 0; i < n; i++)
                if (w[i].seq == seq)
                        return &w[i];
        return NULL;
}

/* Read everything back; abort on a message that was not written. Marks
 * what was seen in seen[] (by index into w). */
static unsigned read_back(struct spool *s, const struct written *w, unsigned n, bool *seen)
{
        struct spool_msg *m;
        uint64_t last = 0;
        unsigned count = 0;
        int r;

        while ((r = spool_read_next(s, &m)) == 1) {
                const struct written *x = find(w, n, m->seq);
                if (!x || m->seq <= last || m->qos != x->qos || m->retain != x->retain ||
                    strcmp(m->topic, x->topic) != 0 || m->payload_len != x->len ||
                    memcmp(m->payload, x->payload, x->len) != 0) {
                        abort();
                }
                last = m->seq;
                if (seen)
                        seen[x - w] = true;
                free(m);
                if (++count > MAX_MSGS + 2)
                        abort();
        }
        if (r < 0 && r != -ENOMEM)
                abort();
        return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct input in = { data, size };
        struct written w[MAX_MSGS];
        bool seen[MAX_MSGS] = { false };
        unsigned n = 0;
        uint64_t acked = 0;
        struct spool *s;
        int fd;

        setup_once();
        unlink(path);
        if (spool_open_path(path, 0, &s) < 0)
                abort();

        /* Write. */
        unsigned count = 1 + take(&in, MAX_MSGS);
        for (unsigned i = 0; i < count; i++) {
                unsigned op = take(&in, 8);
                if (op == 6) {
                        struct spool_meta meta = { .client_id = "dev", .protocol_level = 4 };
                        if (spool_set_meta(s, &meta) < 0)
                                abort();
                        continue;
                }
                if (op == 7 && n) {
                        uint64_t through = w[take(&in, n)].seq;
                        if (spool_ack_through(s, through) < 0)
                                abort();
                        if (through > acked)
                                acked = through;
                        /* A drained file starts afresh: earlier offsets are gone. */
                        if (spool_pending(s) == 0)
                                for (unsigned k = 0; k < n; k++)
                                        w[k].off = w[k].end = 0;
                        continue;
                }
                struct written *x = &w[n];
                memset(x, 0, sizeof *x);
                x->qos = (uint8_t) (1 + (op & 1));
                x->retain = op & 2;
                snprintf(x->topic, sizeof x->topic, "t/%u", take(&in, 100));
                x->len = take(&in, sizeof x->payload);
                for (size_t k = 0; k < x->len; k++)
                        x->payload[k] = (uint8_t) take(&in, 0);
                x->off = spool_bytes(s);
                if (spool_append(s, x->qos, x->retain, x->topic, x->payload, x->len, &x->seq) < 0)
                        abort();
                x->end = spool_bytes(s);
                n++;
        }
        if (spool_sync(s) < 0)
                abort();
        uint64_t pending = spool_pending(s);
        spool_close(s); /* a stopped bridge: the file stays while anything is pending */
        if (!pending)
                return 0;

        /* Damage it, in place. */
        struct stat st;
        if (stat(path, &st) < 0)
                abort();
        uint64_t fsize = (uint64_t) st.st_size, cut = fsize;
        fd = open(path, O_RDWR);
        if (fd < 0)
                abort();
        unsigned ops = take(&in, 6);
        for (unsigned i = 0; i < ops && fsize; i++) {
                unsigned kind = take(&in, 5);
                uint64_t at = take16(&in, (unsigned) fsize);
                uint64_t len = 1;
                uint8_t b = 0;
                switch (kind) {
                case 0: /* flip bits */
                        if (pread(fd, &b, 1, (off_t) at) != 1)
                                abort();
                        b ^= (uint8_t) (1 + take(&in, 255));
                        if (pwrite(fd, &b, 1, (off_t) at) != 1)
                                abort();
                        break;
                case 1: /* set a byte */
                        b = (uint8_t) take(&in, 0);
                        if (pwrite(fd, &b, 1, (off_t) at) != 1)
                                abort();
                        break;
                case 2: { /* zero a range */
                        len = 1 + take(&in, 64);
                        if (at + len > fsize)
                                len = fsize - at;
                        uint8_t z[64] = { 0 };
                        if (pwrite(fd, z, len, (off_t) at) != (ssize_t) len)
                                abort();
                        break;
                }
                case 3: { /* stale data: an earlier part of the file copied over a later one */
                        uint64_t from = at ? take16(&in, (unsigned) at) : 0;
                        uint8_t tmp[64];
                        len = 1 + take(&in, 64);
                        if (at + len > fsize)
                                len = fsize - at;
                        if (from + len > fsize)
                                len = fsize - from;
                        if (len == 0)
                                break;
                        if (pread(fd, tmp, len, (off_t) from) != (ssize_t) len ||
                            pwrite(fd, tmp, len, (off_t) at) != (ssize_t) len)
                                abort();
                        break;
                }
                default: /* cut the end */
                        if (at < cut)
                                cut = at;
                        len = 0;
                        break;
                }
                for (unsigned k = 0; k < n; k++)
                        if (w[k].end && at < w[k].end && at + len > w[k].off)
                                w[k].damaged = true;
        }
        if (cut < fsize && ftruncate(fd, (off_t) cut) < 0)
                abort();
        close(fd);
        for (unsigned k = 0; k < n; k++)
                if (w[k].end > cut)
                        w[k].damaged = true;

        /* Recover and read back. */
        int r = spool_open_path(path, 0, &s);
        if (r == -ENOMEM)
                return 0;
        if (r < 0)
                abort();
        read_back(s, w, n, seen);
        for (unsigned k = 0; k < n; k++)
                if (w[k].seq > acked && w[k].end && !w[k].damaged && !seen[k])
                        abort(); /* lost although its record was intact */

        /* Life goes on: one more message, then a second open agrees. */
        struct written *x = n < MAX_MSGS ? &w[n] : NULL;
        if (x) {
                memset(x, 0, sizeof *x);
                x->qos = 1;
                snprintf(x->topic, sizeof x->topic, "after");
                x->len = 3;
                memcpy(x->payload, "new", 3);
                if (spool_append(s, x->qos, false, x->topic, x->payload, x->len, &x->seq) < 0)
                        abort();
                if (spool_sync(s) < 0)
                        abort();
                /* Numbers the recovered file no longer holds are given out
                 * again (they only order one file's records): the lost
                 * messages above it can never come back. */
                for (unsigned k = 0; k < n; k++)
                        if (w[k].seq >= x->seq)
                                w[k].seq = 0;
                n++;
        }
        spool_rewind(s);
        unsigned first = read_back(s, w, n, NULL);
        spool_close(s);
        if (spool_open_path(path, 0, &s) < 0)
                abort();
        unsigned second = read_back(s, w, n, NULL);
        if (second != first)
                abort();
        spool_close(s);
        return 0;
}
