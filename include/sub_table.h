/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * sub_table — one device's subscriptions in upstream form (filter → QoS),
 * with a hashed index: a device with tens of thousands of filters costs
 * O(1) per SUBSCRIBE entry, not a scan of all of them (a quadratic scan
 * stalled every other device for seconds). Pure: no I/O.
 *
 * The records sit in a dense array (v[0..n)), so walking them in order is
 * cheap; their order changes when one is removed (the last takes its
 * place).
 */

#include <stdbool.h>
#include <stdint.h>

struct sub_rec {
        char *filter;           /* owned */
        uint8_t qos;
        bool sent;              /* the broker has it */
};

struct sub_table {
        struct sub_rec *v;
        unsigned n, cap;
        uint32_t *slots;        /* 0 empty, SUB_TOMB removed, else index + 1 */
        unsigned nslots;        /* power of two, or 0 */
        unsigned used;          /* slots not empty (tombstones included) */
};

/* The record for filter, or NULL. */
struct sub_rec *sub_table_find(const struct sub_table *t, const char *filter);

/* Add filter (copied) with qos, sent = false, or update an existing one
 * (qos set, sent = false). Returns 1 when added, 0 when updated, -ENOMEM. */
int sub_table_put(struct sub_table *t, const char *filter, uint8_t qos);

/* Remove filter. Returns true if it was there. */
bool sub_table_remove(struct sub_table *t, const char *filter);

/* Free everything; the table is empty and reusable afterwards. NULL-safe. */
void sub_table_clear(struct sub_table *t);
