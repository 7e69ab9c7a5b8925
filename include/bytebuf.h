/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * bytebuf — a growable byte queue: append at the end, consume from the
 * front. Pure (no I/O); the buffer is malloc'ed and owned by the struct.
 * The live bytes are data[off, len). A zeroed struct is an empty buffer.
 */

#include <stddef.h>
#include <stdint.h>

struct bytebuf {
        uint8_t *data;
        size_t off, len, cap;
};

static inline size_t bytebuf_size(const struct bytebuf *b)
{
        return b->len - b->off;
}

static inline uint8_t *bytebuf_head(const struct bytebuf *b)
{
        return b->data + b->off;
}

/* Room for n more bytes at the end; returns where they go, or NULL
 * (ENOMEM, or n absurdly large). Moves the live bytes (to the front, or
 * by realloc), so pointers into the buffer are stale afterwards. */
uint8_t *bytebuf_reserve(struct bytebuf *b, size_t n);

/* Add n bytes written into the room bytebuf_reserve gave. */
void bytebuf_commit(struct bytebuf *b, size_t n);

/* Copy n bytes to the end. Returns 0 or -ENOMEM. */
int bytebuf_append(struct bytebuf *b, const void *src, size_t n);

/* Drop n bytes from the front (n <= bytebuf_size). */
void bytebuf_consume(struct bytebuf *b, size_t n);

/* When empty, give the memory back if more than keep bytes are held. */
void bytebuf_trim(struct bytebuf *b, size_t keep);

/* Free the memory; the buffer is empty afterwards. NULL-safe. */
void bytebuf_free(struct bytebuf *b);
