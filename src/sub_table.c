/* SPDX-License-Identifier: MIT */
/*
 * sub_table — open addressing with linear probing over indices into the
 * dense record array; removals leave tombstones, which a rebuild clears
 * when they and the live entries fill half the slots.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sub_table.h"

#define SUB_TOMB UINT32_MAX

/* FNV-1a: short strings, no adversarial key the device could exploit
 * beyond its own table (each device has its own). */
static uint32_t hash(const char *s)
{
        uint32_t h = 2166136261u;
        for (; *s; s++)
                h = (h ^ (uint8_t) *s) * 16777619u;
        return h;
}

/* The slot holding filter, or the first free one for it (-1 if the table
 * has no slots). found tells which. */
static long probe(const struct sub_table *t, const char *filter, bool *found)
{
        long tomb = -1;

        *found = false;
        if (t->nslots == 0)
                return -1;
        for (uint32_t i = hash(filter) & (t->nslots - 1), k = 0; k < t->nslots; i = (i + 1) & (t->nslots - 1), k++) {
                uint32_t s = t->slots[i];
                if (s == 0)
                        return tomb >= 0 ? tomb : (long) i;
                if (s == SUB_TOMB) {
                        if (tomb < 0)
                                tomb = (long) i;
                        continue;
                }
                if (strcmp(t->v[s - 1].filter, filter) == 0) {
                        *found = true;
                        return (long) i;
                }
        }
        return tomb;
}

static int rebuild(struct sub_table *t, unsigned nslots)
{
        uint32_t *slots = calloc(nslots, sizeof *slots);

        if (!slots)
                return -ENOMEM;
        free(t->slots);
        t->slots = slots;
        t->nslots = nslots;
        t->used = 0;
        for (unsigned k = 0; k < t->n; k++) {
                bool found;
                long i = probe(t, t->v[k].filter, &found);
                t->slots[i] = k + 1;
                t->used++;
        }
        return 0;
}

struct sub_rec *sub_table_find(const struct sub_table *t, const char *filter)
{
        bool found;
        long i = probe(t, filter, &found);
        return found ? &t->v[t->slots[i] - 1] : NULL;
}

int sub_table_put(struct sub_table *t, const char *filter, uint8_t qos)
{
        bool found;
        long i = probe(t, filter, &found);

        if (found) {
                struct sub_rec *r = &t->v[t->slots[i] - 1];
                r->qos = qos;
                r->sent = false;
                return 0;
        }
        /* Keep live entries and tombstones under half the slots. */
        if ((t->used + 1) * 2 > t->nslots) {
                /* Same size when tombstones filled it, else doubled. */
                unsigned want = t->nslots ? t->nslots : 16;
                while ((t->n + 1) * 2 > want)
                        want *= 2;
                if (rebuild(t, want) < 0)
                        return -ENOMEM;
                i = probe(t, filter, &found);
        }
        if (t->n == t->cap) {
                unsigned cap = t->cap ? t->cap * 2 : 8;
                struct sub_rec *v = realloc(t->v, cap * sizeof *v);
                if (!v)
                        return -ENOMEM;
                t->v = v;
                t->cap = cap;
        }
        char *f = strdup(filter);
        if (!f)
                return -ENOMEM;
        t->v[t->n] = (struct sub_rec){ .filter = f, .qos = qos };
        if (t->slots[i] == 0)
                t->used++;
        t->slots[i] = ++t->n;
        return 1;
}

bool sub_table_remove(struct sub_table *t, const char *filter)
{
        bool found;
        long i = probe(t, filter, &found);

        if (!found)
                return false;
        unsigned k = t->slots[i] - 1;
        t->slots[i] = SUB_TOMB;
        free(t->v[k].filter);
        unsigned last = t->n - 1;
        if (k != last) {
                /* The last record moves into the hole; its slot follows. */
                long j = probe(t, t->v[last].filter, &found);
                t->v[k] = t->v[last];
                t->slots[j] = k + 1;
        }
        t->n--;
        return true;
}

void sub_table_clear(struct sub_table *t)
{
        if (!t)
                return;
        for (unsigned k = 0; k < t->n; k++)
                free(t->v[k].filter);
        free(t->v);
        free(t->slots);
        *t = (struct sub_table){ 0 };
}
