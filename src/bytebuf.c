/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bytebuf.h"

#define BYTEBUF_MIN 1024

uint8_t *bytebuf_reserve(struct bytebuf *b, size_t n)
{
        size_t live = bytebuf_size(b), cap;
        uint8_t *d;

        if (b->cap - b->len >= n)
                return b->data + b->len;
        if (b->off > 0 && b->cap - live >= n) {
                memmove(b->data, b->data + b->off, live);
                b->off = 0;
                b->len = live;
                return b->data + b->len;
        }
        if (n > SIZE_MAX / 4 - live)
                return NULL;
        cap = b->cap ? b->cap : BYTEBUF_MIN;
        while (cap < live + n)
                cap *= 2;
        if (b->off > 0) {
                memmove(b->data, b->data + b->off, live);
                b->off = 0;
                b->len = live;
        }
        d = realloc(b->data, cap);
        if (!d)
                return NULL;
        b->data = d;
        b->cap = cap;
        return b->data + b->len;
}

void bytebuf_commit(struct bytebuf *b, size_t n)
{
        b->len += n;
}

int bytebuf_append(struct bytebuf *b, const void *src, size_t n)
{
        uint8_t *p = bytebuf_reserve(b, n);

        if (!p)
                return -ENOMEM;
        if (n)
                memcpy(p, src, n);
        b->len += n;
        return 0;
}

void bytebuf_consume(struct bytebuf *b, size_t n)
{
        b->off += n;
        if (b->off >= b->len)
                b->off = b->len = 0;
}

void bytebuf_trim(struct bytebuf *b, size_t keep)
{
        if (bytebuf_size(b) == 0 && b->cap > keep)
                bytebuf_free(b);
}

void bytebuf_free(struct bytebuf *b)
{
        if (!b)
                return;
        free(b->data);
        b->data = NULL;
        b->off = b->len = b->cap = 0;
}
