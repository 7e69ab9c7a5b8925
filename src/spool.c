/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "log.h"
#include "spool.h"
#include "spool_codec.h"

/* Bytes [from, to) of the file hold no valid record (damage found when
 * the file was opened): the replay jumps over them. */
struct spool_skip {
        uint64_t from, to;
};

struct spool {
        int fd;
        char *path;
        uint64_t next_seq;       /* seq of the next appended message */
        uint64_t acked_through;  /* messages with seq <= this are safe upstream */
        uint64_t size;           /* valid bytes in the file */
        uint64_t read_off;       /* replay cursor */
        uint64_t max_bytes;
        bool dirty;
        bool has_meta;
        bool meta_written;       /* the file holds the current meta */
        struct spool_meta meta;
        struct spool_skip *skips; /* damaged ranges found at open, in file order */
        size_t n_skips;
        uint16_t *held;          /* device QoS 2 ids the bridge PUBREC'd itself (spool_append_pid) */
        unsigned n_held, cap_held;
        struct spool_pin {       /* ids of the pending messages (spool_append_pid) */
                uint64_t seq;
                uint16_t pid;
                bool sent_rel;   /* spool_mark_sent_rel */
        } *pins;
        unsigned n_pins, cap_pins;
};

static int pin_reserve(struct spool *s)
{
        if (s->n_pins == s->cap_pins) {
                unsigned c = s->cap_pins ? 2 * s->cap_pins : 8;
                struct spool_pin *p = realloc(s->pins, c * sizeof *p);
                if (!p)
                        return -ENOMEM;
                s->pins = p;
                s->cap_pins = c;
        }
        return 0;
}

static struct spool_pin *pin_find(const struct spool *s, uint64_t seq)
{
        for (unsigned i = 0; i < s->n_pins; i++)
                if (s->pins[i].seq == seq)
                        return &s->pins[i];
        return NULL;
}

static int pin_add(struct spool *s, uint64_t seq, uint16_t pid, bool sent_rel)
{
        struct spool_pin *p = pin_find(s, seq);

        if (!p) {
                if (pin_reserve(s) < 0)
                        return -ENOMEM;
                p = &s->pins[s->n_pins++];
        }
        *p = (struct spool_pin){ .seq = seq, .pid = pid, .sent_rel = sent_rel };
        return 0;
}

/* Forget the ids of messages acknowledged upstream. */
static void pin_prune(struct spool *s)
{
        unsigned k = 0;
        for (unsigned i = 0; i < s->n_pins; i++)
                if (s->pins[i].seq > s->acked_through)
                        s->pins[k++] = s->pins[i];
        s->n_pins = k;
}

static int held_index(const struct spool *s, uint16_t pid)
{
        for (unsigned i = 0; i < s->n_held; i++)
                if (s->held[i] == pid)
                        return (int) i;
        return -1;
}

/* Room for one more, so that held_add cannot fail after a write. */
static int held_reserve(struct spool *s)
{
        if (s->n_held == s->cap_held) {
                unsigned c = s->cap_held ? 2 * s->cap_held : 8;
                uint16_t *h = realloc(s->held, c * sizeof *h);
                if (!h)
                        return -ENOMEM;
                s->held = h;
                s->cap_held = c;
        }
        return 0;
}

static int held_add(struct spool *s, uint16_t pid)
{
        if (held_index(s, pid) >= 0)
                return 0;
        if (held_reserve(s) < 0)
                return -ENOMEM;
        s->held[s->n_held++] = pid;
        return 0;
}

static void held_del(struct spool *s, uint16_t pid)
{
        int i = held_index(s, pid);
        if (i >= 0)
                s->held[i] = s->held[--s->n_held];
}

void spool_meta_clear(struct spool_meta *m)
{
        if (!m)
                return;
        free(m->client_id);
        free(m->username);
        free(m->identity);
        memset(m, 0, sizeof *m);
}

int spool_meta_copy(struct spool_meta *dst, const struct spool_meta *src)
{
        *dst = (struct spool_meta){
                .client_id = src->client_id ? strdup(src->client_id) : NULL,
                .username = src->username ? strdup(src->username) : NULL,
                .identity = src->identity ? strdup(src->identity) : NULL,
                .protocol_level = src->protocol_level,
                .clean_session = src->clean_session,
                .had_password = src->had_password,
        };
        if ((src->client_id && !dst->client_id) || (src->username && !dst->username) ||
            (src->identity && !dst->identity)) {
                spool_meta_clear(dst);
                return -ENOMEM;
        }
        return 0;
}

/* The file name: the key in hex (readable with xxd -r -p), or its SHA-256
 * when that would not fit in a file name. */
char *spool_path(const char *dir, const char *key)
{
        unsigned char digest[SHA256_DIGEST_LENGTH];
        const unsigned char *src = (const unsigned char *) key;
        size_t n = strlen(key);

        if (n > 100) {
                SHA256(src, n, digest);
                src = digest;
                n = sizeof digest;
        }
        size_t len = strlen(dir) + 1 + 2 * n + sizeof ".spool";
        char *path = malloc(len);
        if (!path)
                return NULL;
        size_t off = (size_t) snprintf(path, len, "%s/", dir);
        for (size_t i = 0; i < n; i++)
                off += (size_t) snprintf(path + off, len - off, "%02x", src[i]);
        snprintf(path + off, len - off, ".spool");
        return path;
}

static int read_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
        size_t got = 0;
        while (got < len) {
                ssize_t n = pread(fd, buf + got, len - got, (off_t) (off + got));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                got += (size_t) n;
        }
        return (int) got;
}

static int write_full(int fd, const uint8_t *buf, size_t len)
{
        size_t done = 0;
        while (done < len) {
                ssize_t n = write(fd, buf + done, len - done);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                done += (size_t) n;
        }
        return 0;
}

/* Append one encoded record at the end of the file. On a failed write,
 * cut off whatever part was written so the next record starts on a
 * boundary. Returns 0 or a negative errno. */
static int spool_write_record(struct spool *s, const uint8_t *buf, size_t len)
{
        int r = write_full(s->fd, buf, len);

        if (r < 0) {
                if (ftruncate(s->fd, (off_t) s->size) == 0)
                        (void) lseek(s->fd, (off_t) s->size, SEEK_SET);
                return r;
        }
        s->size += len;
        s->dirty = true;
        return 0;
}

/* Read the record at off into a fresh buffer. Returns 1 (*rec points into
 * *buf, caller frees it); 0 when the file ends before a whole record (at
 * off, or inside the one that starts there: a torn write); -EBADMSG when
 * the bytes at off are not a valid record; another negative errno. */
static int spool_read_at(struct spool *s, uint64_t off, struct spool_record *rec, uint8_t **buf, size_t *used)
{
        uint8_t hdr[SPOOL_HEADER_LEN];
        int r = read_full(s->fd, hdr, sizeof hdr, off);

        *buf = NULL;
        if (r < 0)
                return r;
        if (r > 0 && memcmp(hdr, "MEBS", (size_t) r < 4 ? (size_t) r : 4) != 0)
                return -EBADMSG;
        if ((size_t) r < sizeof hdr)
                return 0;
        uint32_t blen = ((uint32_t) hdr[4] << 24) | ((uint32_t) hdr[5] << 16) | ((uint32_t) hdr[6] << 8) | hdr[7];
        if (blen < 12 || blen > SPOOL_MAX_BODY)
                return -EBADMSG;
        uint8_t *b = malloc(SPOOL_HEADER_LEN + (size_t) blen);
        if (!b)
                return -ENOMEM;
        r = read_full(s->fd, b, SPOOL_HEADER_LEN + (size_t) blen, off);
        if (r < 0) {
                free(b);
                return r;
        }
        r = spool_record_decode(b, (size_t) r, rec, used);
        if (r <= 0) {
                free(b);
                return r;
        }
        *buf = b;
        return 1;
}

/* Past damage at off: the offset of the next valid record before end
 * (magic, lengths, CRC, fields; a MESSAGE must also carry a seq above
 * min_seq, as every later message of a file does, so a stale copy cannot
 * resurface). Returns 1 and *found, 0 when there is none, or a negative
 * errno. Reads in 64 KiB windows; every magic is a candidate. */
static int spool_resync(struct spool *s, uint64_t off, uint64_t end, uint64_t min_seq, uint64_t *found)
{
        enum { WINDOW = 64 * 1024 };
        uint8_t *win = malloc(WINDOW);
        uint64_t pos = off + 1;
        int r = 0;

        if (!win)
                return -ENOMEM;
        while (pos < end) {
                size_t want = end - pos < WINDOW ? (size_t) (end - pos) : WINDOW;
                r = read_full(s->fd, win, want, pos);
                if (r < 0)
                        break;
                if (r == 0) {
                        r = 0;
                        break;
                }
                size_t got = (size_t) r, at = 0;
                r = 0;
                while (at < got) {
                        size_t k = spool_find_magic(win + at, got - at);
                        if (k == got - at)
                                break;
                        at += k;
                        struct spool_record rec;
                        uint8_t *buf;
                        size_t used;
                        int v = spool_read_at(s, pos + at, &rec, &buf, &used);
                        if (v < 0 && v != -EBADMSG) {
                                r = v;
                                goto out;
                        }
                        if (v == 1) {
                                bool ok = rec.type != SPOOL_MESSAGE || rec.seq > min_seq;
                                free(buf);
                                if (ok) {
                                        *found = pos + at;
                                        r = 1;
                                        goto out;
                                }
                        }
                        at++;
                }
                /* A magic cut by the window's end is found in the next. */
                pos += got > 3 ? got - 3 : got;
        }
out:
        free(win);
        return r;
}

/* How the walk at open went, for one log line per file. */
struct spool_damage {
        uint64_t bytes;          /* skipped in the middle */
        unsigned ranges;         /* places skipped */
        uint64_t lost_msgs;      /* sequence numbers missing across the skipped ranges */
        uint64_t lost_unacked;   /* of those, not acknowledged upstream (known after the walk) */
        uint64_t tail;           /* bytes cut at the end */
        bool tail_torn;          /* ...a record cut short (a crash) rather than damage */
};

/* A gap in the sequence across a skipped range: the last message seq
 * before it and the first after (0 while none came yet). */
struct spool_gap {
        uint64_t before, after;
};

static void spool_log_damage(const struct spool *s, const struct spool_damage *d)
{
        if (d->ranges)
                log_msg(LOG_LEVEL_WARNING, NULL,
                        "spool %s: %llu damaged byte%s in %u place%s skipped, resynchronised on the next valid "
                        "record; at least %llu message%s lost (%llu not yet acknowledged upstream)",
                        s->path, (unsigned long long) d->bytes, d->bytes == 1 ? "" : "s", d->ranges,
                        d->ranges == 1 ? "" : "s", (unsigned long long) d->lost_msgs, d->lost_msgs == 1 ? "" : "s",
                        (unsigned long long) d->lost_unacked);
        if (d->tail && d->tail_torn)
                log_msg(LOG_LEVEL_NOTICE, NULL,
                        "spool %s: cut a torn last record (%llu bytes): it was being written when the bridge "
                        "stopped, so no device was told it was safe",
                        s->path, (unsigned long long) d->tail);
        else if (d->tail)
                log_msg(LOG_LEVEL_WARNING, NULL,
                        "spool %s: the last %llu bytes hold no valid record (damaged, or a torn write); cut; "
                        "the messages in them, if any, are lost",
                        s->path, (unsigned long long) d->tail);
}

/* Make a new file's name durable: fsync its directory. */
static int spool_sync_dir(const char *path)
{
        const char *slash = strrchr(path, '/');
        char *dir = slash ? strndup(path, slash == path ? 1 : (size_t) (slash - path)) : strdup(".");
        int fd, r = 0;

        if (!dir)
                return -ENOMEM;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) < 0)
                r = -errno;
        if (fd >= 0)
                close(fd);
        free(dir);
        return r;
}

int spool_open(const char *dir, const char *key, uint64_t max_bytes, struct spool **out)
{
        char *path = spool_path(dir, key);
        int r;

        if (!path)
                return -ENOMEM;
        r = spool_open_path(path, max_bytes, out);
        free(path);
        return r;
}

/* A META record's strings, copied out. A password in a file written by
 * an older version is skipped: it is never read back into memory. */
static int spool_meta_from_record(struct spool_meta *m, const struct spool_record *rec)
{
        struct spool_meta n = {
                .protocol_level = rec->qos & SPOOL_META_MQTT31 ? 3 : 4,
                .clean_session = rec->qos & SPOOL_META_CLEAN,
                .had_password = rec->qos & SPOOL_META_PASSWORD,
        };
        const uint8_t *p = rec->payload, *end = rec->payload + rec->payload_len;
        const uint8_t *nul = memchr(p, 0, rec->payload_len);

        n.client_id = strndup((const char *) rec->topic, rec->topic_len);
        if (!n.client_id)
                return -ENOMEM;
        if (rec->qos & SPOOL_META_USERNAME)
                n.username = strndup((const char *) p, nul ? (size_t) (nul - p) : rec->payload_len);
        if ((rec->qos & SPOOL_META_IDENTITY) && nul) {
                const uint8_t *nul2 = memchr(nul + 1, 0, (size_t) (end - nul - 1));
                if (nul2)
                        n.identity = strndup((const char *) nul2 + 1, (size_t) (end - nul2 - 1));
        }
        spool_meta_clear(m);
        *m = n;
        return 0;
}

int spool_open_path(const char *path, uint64_t max_bytes, struct spool **out)
{
        struct spool *s = calloc(1, sizeof *s);
        uint64_t off = 0, max_seq = 0, file_size;
        struct spool_damage dmg = { 0 };
        struct spool_gap *gaps = NULL;
        bool created = false, in_gap = false;
        unsigned n_gaps = 0;
        struct stat st;
        int r;

        if (!s)
                return -ENOMEM;
        s->fd = -1;
        s->max_bytes = max_bytes;
        s->path = strdup(path);
        if (!s->path) {
                r = -ENOMEM;
                goto fail;
        }
        /* O_NOFOLLOW: a link planted in the spool directory must not make
         * the daemon write (or truncate) another file. */
        s->fd = open(s->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (s->fd < 0 && errno == ENOENT) {
                s->fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
                created = s->fd >= 0;
                if (s->fd < 0 && errno == EEXIST)
                        s->fd = open(s->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        }
        if (s->fd < 0) {
                r = -errno;
                goto fail;
        }
        /* One writer per file, always: a second one would write over the
         * first's records or truncate what it still holds. */
        if (flock(s->fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                goto fail;
        }
        /* A new file and the acknowledged records in it must survive a
         * power cut: its directory entry too. */
        if (created && (r = spool_sync_dir(s->path)) < 0)
                goto fail;
        if (fstat(s->fd, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -EINVAL;
                goto fail;
        }
        file_size = (uint64_t) st.st_size;

        /* Recover: walk the records. One that does not decode is either
         * the torn end of the file (a write cut off by a crash: nothing
         * after it) or damage in the middle (something valid after it):
         * then resynchronise on the next valid record and remember the
         * range, so the replay jumps over it too. */
        for (;;) {
                struct spool_record rec;
                uint8_t *buf;
                size_t used;
                r = spool_read_at(s, off, &rec, &buf, &used);
                if (r < 0 && r != -EBADMSG)
                        goto fail;
                if (r == 1 && rec.type == SPOOL_MESSAGE && rec.seq <= max_seq) {
                        /* A file's messages are numbered upwards: an older
                         * one here is stale data (blocks of the file before
                         * it was emptied, a misdirected write), not ours. */
                        free(buf);
                        r = -EBADMSG;
                }
                if (r == 1) {
                        if (rec.type == SPOOL_MESSAGE) {
                                if (in_gap) {
                                        gaps[n_gaps - 1].after = rec.seq;
                                        in_gap = false;
                                }
                                if (rec.seq > max_seq)
                                        max_seq = rec.seq;
                        }
                        if (rec.type == SPOOL_ACKED && rec.seq > s->acked_through)
                                s->acked_through = rec.seq;
                        if (rec.type == SPOOL_META && spool_meta_from_record(&s->meta, &rec) == 0)
                                s->has_meta = s->meta_written = true;
                        if (rec.type == SPOOL_PID && (rec.qos & SPOOL_PID_HOLD) && held_add(s, rec.pid) < 0) {
                                free(buf);
                                r = -ENOMEM;
                                goto fail;
                        }
                        if (rec.type == SPOOL_PID && (rec.qos & SPOOL_PID_RELEASE))
                                held_del(s, rec.pid);
                        if (rec.type == SPOOL_PID && rec.seq > 0 &&
                            pin_add(s, rec.seq, rec.pid, rec.qos == SPOOL_PID_SENT_REL) < 0) {
                                free(buf);
                                r = -ENOMEM;
                                goto fail;
                        }
                        off += used;
                        free(buf);
                        continue;
                }
                if (off >= file_size)
                        break; /* the end, cleanly */
                uint64_t next = 0;
                bool torn = r == 0;
                r = spool_resync(s, off, file_size, max_seq, &next);
                if (r < 0)
                        goto fail;
                if (r == 0) {
                        dmg.tail = file_size - off;
                        dmg.tail_torn = torn;
                        break;
                }
                struct spool_skip *sk = realloc(s->skips, (s->n_skips + 1) * sizeof *sk);
                struct spool_gap *g = sk ? realloc(gaps, (n_gaps + 1) * sizeof *g) : NULL;
                if (sk)
                        s->skips = sk;
                if (!g) {
                        r = -ENOMEM;
                        goto fail;
                }
                gaps = g;
                s->skips[s->n_skips++] = (struct spool_skip){ .from = off, .to = next };
                /* Consecutive damaged places with no message between
                 * them share one gap in the sequence. */
                if (!in_gap)
                        gaps[n_gaps++] = (struct spool_gap){ .before = max_seq, .after = 0 };
                in_gap = true;
                dmg.ranges++;
                dmg.bytes += next - off;
                off = next;
        }
        /* An ACKED record may outlive the messages it covered (the file was
         * emptied, identifiers held kept it): numbers go on from there. */
        s->next_seq = (max_seq > s->acked_through ? max_seq : s->acked_through) + 1;
        pin_prune(s);
        /* What the skipped ranges cost: the sequence numbers missing
         * across each (a file's messages are numbered one by one). */
        for (unsigned i = 0; i < n_gaps; i++) {
                /* No message after it, or none before (the base of the
                 * numbering went with the damage): nothing known. */
                if (!gaps[i].after || !gaps[i].before)
                        continue;
                uint64_t lo = gaps[i].before, hi = gaps[i].after;
                dmg.lost_msgs += hi - lo - 1;
                uint64_t from = lo > s->acked_through ? lo : s->acked_through;
                if (hi > from + 1)
                        dmg.lost_unacked += hi - from - 1;
        }
        spool_log_damage(s, &dmg);
        free(gaps);
        gaps = NULL;
        if (spool_pending(s) == 0 && s->n_held == 0) {
                /* Everything was delivered: start afresh. */
                off = 0;
                s->meta_written = false;
                s->next_seq = 1;
                s->acked_through = 0;
                free(s->skips);
                s->skips = NULL;
                s->n_skips = 0;
        }
        s->size = off;
        if (file_size != off && ftruncate(s->fd, (off_t) off) < 0) {
                r = -errno;
                goto fail;
        }
        if (lseek(s->fd, (off_t) s->size, SEEK_SET) < 0) {
                r = -errno;
                goto fail;
        }
        *out = s;
        return 0;
fail:
        free(gaps);
        if (s->fd >= 0)
                close(s->fd);
        spool_meta_clear(&s->meta);
        free(s->skips);
        free(s->held);
        free(s->pins);
        free(s->path);
        free(s);
        return r;
}

/* Append a META record for s->meta: "username\0\0identity". */
static int spool_write_meta(struct spool *s)
{
        const struct spool_meta *m = &s->meta;
        size_t ulen = m->username ? strlen(m->username) : 0;
        size_t ilen = m->identity ? strlen(m->identity) : 0;
        size_t len = ulen + 2 + ilen;
        uint8_t *payload = malloc(len), *buf = NULL;
        int r;

        if (!payload)
                return -ENOMEM;
        if (ulen)
                memcpy(payload, m->username, ulen);
        payload[ulen] = 0;
        payload[ulen + 1] = 0;
        if (ilen)
                memcpy(payload + ulen + 2, m->identity, ilen);
        struct spool_record rec = {
                .type = SPOOL_META,
                .qos = (uint8_t) ((m->username ? SPOOL_META_USERNAME : 0) | SPOOL_META_IDENTITY |
                                  (m->protocol_level == 3 ? SPOOL_META_MQTT31 : 0) |
                                  (m->clean_session ? SPOOL_META_CLEAN : 0) |
                                  (m->had_password ? SPOOL_META_PASSWORD : 0)),
                .topic = (const uint8_t *) m->client_id,
                .topic_len = (uint16_t) strlen(m->client_id),
                .payload = payload,
                .payload_len = (uint32_t) len,
        };
        size_t rlen = spool_record_len(&rec);
        buf = malloc(rlen);
        r = buf ? spool_record_encode(buf, rlen, &rec) : -ENOMEM;
        if (r >= 0)
                r = spool_write_record(s, buf, rlen);
        free(payload);
        free(buf);
        if (r < 0)
                return r;
        s->meta_written = true;
        return 0;
}

int spool_set_meta(struct spool *s, const struct spool_meta *m)
{
        struct spool_meta n;

        if (!m->client_id || strlen(m->client_id) > 65535)
                return -EINVAL;
        if (spool_meta_copy(&n, m) < 0)
                return -ENOMEM;
        spool_meta_clear(&s->meta);
        s->meta = n;
        s->has_meta = true;
        s->meta_written = false;
        if (s->size > 0)
                return spool_write_meta(s);
        return 0;
}

const struct spool_meta *spool_get_meta(const struct spool *s)
{
        return s->has_meta ? &s->meta : NULL;
}

const char *spool_file(const struct spool *s)
{
        return s->path;
}

int spool_append(struct spool *s, uint8_t qos, bool retain, const char *topic, const void *payload,
                 size_t len, uint64_t *seq)
{
        return spool_append_pid(s, qos, retain, topic, payload, len, 0, false, seq);
}

static int spool_write_pid(struct spool *s, uint8_t flags, uint16_t pid, uint64_t seq)
{
        struct spool_record rec = { .type = SPOOL_PID, .qos = flags, .pid = pid, .seq = seq };
        uint8_t buf[SPOOL_HEADER_LEN + 12];
        int r = spool_record_encode(buf, sizeof buf, &rec);

        return r < 0 ? r : spool_write_record(s, buf, sizeof buf);
}

int spool_append_pid(struct spool *s, uint8_t qos, bool retain, const char *topic, const void *payload,
                     size_t len, uint16_t pid, bool hold, uint64_t *seq)
{
        struct spool_record rec = {
                .type = SPOOL_MESSAGE,
                .qos = qos,
                .retain = retain,
                .seq = s->next_seq,
                .topic = (const uint8_t *) topic,
                .topic_len = (uint16_t) strlen(topic),
                .payload = payload,
                .payload_len = (uint32_t) len,
        };
        struct spool_record pid_rec = {
                .type = SPOOL_PID,
                .qos = hold ? SPOOL_PID_HOLD : 0,
                .pid = pid,
                .seq = s->next_seq,
        };
        size_t mlen = spool_record_len(&rec), rlen = mlen + (pid ? spool_record_len(&pid_rec) : 0);
        uint8_t *buf;
        int r;

        if (strlen(topic) > 65535 || len > SPOOL_MAX_BODY - 1024)
                return -EMSGSIZE;
        if (hold && (!pid || qos != 2))
                return -EINVAL;
        if (s->max_bytes && s->size + rlen > s->max_bytes)
                return -ENOSPC;
        if ((hold && held_reserve(s) < 0) || (pid && pin_reserve(s) < 0))
                return -ENOMEM;
        if (s->has_meta && !s->meta_written) {
                r = spool_write_meta(s);
                if (r < 0)
                        return r;
        }
        buf = malloc(rlen);
        if (!buf)
                return -ENOMEM;
        /* One write: the identifier is never missing from a message that
         * made it to the file. */
        r = spool_record_encode(buf, mlen, &rec);
        if (r >= 0 && pid)
                r = spool_record_encode(buf + mlen, rlen - mlen, &pid_rec);
        if (r >= 0)
                r = spool_write_record(s, buf, rlen);
        free(buf);
        if (r < 0)
                return r;
        if (hold)
                (void) held_add(s, pid); /* room reserved above */
        if (pid)
                (void) pin_add(s, s->next_seq, pid, false); /* room reserved above */
        *seq = s->next_seq++;
        return 0;
}

bool spool_held(const struct spool *s, uint16_t pid)
{
        return s && held_index(s, pid) >= 0;
}

unsigned spool_held_count(const struct spool *s)
{
        return s ? s->n_held : 0;
}

int spool_mark_sent_rel(struct spool *s, uint64_t seq, uint16_t pid)
{
        if (pin_reserve(s) < 0)
                return -ENOMEM;
        int r = spool_write_pid(s, SPOOL_PID_SENT_REL, pid, seq);
        if (r < 0)
                return r;
        return pin_add(s, seq, pid, true);
}

bool spool_pinned(const struct spool *s, uint16_t pid)
{
        for (unsigned i = 0; s && i < s->n_pins; i++)
                if (s->pins[i].pid == pid)
                        return true;
        return false;
}

int spool_release(struct spool *s, uint16_t pid)
{
        int r;

        if (held_index(s, pid) < 0)
                return 0;
        r = spool_write_pid(s, SPOOL_PID_RELEASE, pid, 0);
        if (r < 0)
                return r;
        held_del(s, pid);
        return 0;
}

int spool_release_all(struct spool *s)
{
        while (s->n_held > 0) {
                int r = spool_release(s, s->held[s->n_held - 1]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int spool_sync(struct spool *s)
{
        if (!s->dirty)
                return 0;
        if (fdatasync(s->fd) < 0)
                return -errno;
        s->dirty = false;
        return 0;
}

int spool_read_next(struct spool *s, struct spool_msg **out)
{
        for (;;) {
                struct spool_record rec;
                uint8_t *buf;
                size_t used;
                int r;

                for (size_t i = 0; i < s->n_skips; i++)
                        if (s->read_off >= s->skips[i].from && s->read_off < s->skips[i].to)
                                s->read_off = s->skips[i].to;
                if (s->read_off >= s->size)
                        return 0;
                r = spool_read_at(s, s->read_off, &rec, &buf, &used);
                if (r == -EBADMSG || r == 0)
                        return 0; /* nothing valid here: the walk at open would have said */
                if (r < 0)
                        return r;
                s->read_off += used;
                if (rec.type != SPOOL_MESSAGE || rec.seq <= s->acked_through) {
                        free(buf);
                        continue;
                }
                struct spool_msg *m = malloc(sizeof *m + rec.topic_len + 1 + rec.payload_len);
                if (!m) {
                        free(buf);
                        return -ENOMEM;
                }
                struct spool_pin *pin = pin_find(s, rec.seq);
                m->seq = rec.seq;
                m->pid = pin ? pin->pid : 0;
                m->sent_rel = pin && pin->sent_rel;
                m->qos = rec.qos;
                m->retain = rec.retain;
                memcpy(m->topic, rec.topic, rec.topic_len);
                m->topic[rec.topic_len] = 0;
                m->payload = (const uint8_t *) m->topic + rec.topic_len + 1;
                memcpy((uint8_t *) m->topic + rec.topic_len + 1, rec.payload, rec.payload_len);
                m->payload_len = rec.payload_len;
                free(buf);
                *out = m;
                return 1;
        }
}

/* Record how far acknowledgements went. Not synced (nor does it make a
 * pending fsync unnecessary): losing it only means a redelivery after a
 * crash (a QoS 1 duplicate), never a loss. */
static int spool_write_acked(struct spool *s, uint64_t seq)
{
        struct spool_record rec = { .type = SPOOL_ACKED, .seq = seq };
        uint8_t buf[SPOOL_HEADER_LEN + 12];
        bool dirty = s->dirty;
        int r = spool_record_encode(buf, sizeof buf, &rec);

        if (r < 0)
                return r;
        r = spool_write_record(s, buf, sizeof buf);
        s->dirty = dirty;
        return r;
}

int spool_ack_through(struct spool *s, uint64_t seq)
{
        if (seq <= s->acked_through)
                return 0;
        if (seq >= s->next_seq)
                seq = s->next_seq - 1;
        s->acked_through = seq;
        pin_prune(s);
        if (spool_pending(s) == 0) {
                /* Drained: start the file afresh. */
                if (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0)
                        return -errno;
                s->size = 0;
                s->read_off = 0;
                s->dirty = false;
                s->meta_written = false;
                free(s->skips);
                s->skips = NULL;
                s->n_skips = 0;
                /* Sequence numbers go on (the replay is counting them):
                 * say where they stand, or a crash would count every number
                 * since the file was created as pending. Held identifiers
                 * outlive their messages (the device's PUBREL may come
                 * later): written again, and made durable. */
                for (unsigned i = 0; i < s->n_held; i++) {
                        int r = spool_write_pid(s, SPOOL_PID_HOLD, s->held[i], 0);
                        if (r < 0)
                                return r;
                }
                if (s->n_held > 0) {
                        int r = spool_sync(s);
                        if (r < 0)
                                return r;
                }
        }
        return spool_write_acked(s, seq);
}

uint64_t spool_cursor(const struct spool *s)
{
        return s->read_off;
}

void spool_set_cursor(struct spool *s, uint64_t cursor)
{
        s->read_off = cursor <= s->size ? cursor : s->size;
}

void spool_rewind(struct spool *s)
{
        s->read_off = 0;
}

uint64_t spool_pending(const struct spool *s)
{
        return s->next_seq - 1 - s->acked_through;
}

uint64_t spool_bytes(const struct spool *s)
{
        return s->size;
}

void spool_close(struct spool *s)
{
        if (!s)
                return;
        if (s->fd >= 0) {
                (void) spool_sync(s);
                close(s->fd);
        }
        if (spool_pending(s) == 0 && s->n_held == 0)
                (void) unlink(s->path);
        spool_meta_clear(&s->meta);
        free(s->skips);
        free(s->held);
        free(s->pins);
        free(s->path);
        free(s);
}
