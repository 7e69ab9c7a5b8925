/* SPDX-License-Identifier: MIT */
#pragma once

/* A minimal intrusive doubly linked list: an object lists itself through
 * a `LIST_FIELDS(type, name)` member; the owner keeps a head pointer. */

#define LIST_FIELDS(t, name) t *name##_next, *name##_prev

#define LIST_PREPEND(name, head, item)                                   \
        do {                                                             \
                (item)->name##_prev = NULL;                              \
                (item)->name##_next = (head);                            \
                if (head)                                                \
                        (head)->name##_prev = (item);                    \
                (head) = (item);                                         \
        } while (0)

#define LIST_REMOVE(name, head, item)                                    \
        do {                                                             \
                if ((item)->name##_next)                                 \
                        (item)->name##_next->name##_prev = (item)->name##_prev; \
                if ((item)->name##_prev)                                 \
                        (item)->name##_prev->name##_next = (item)->name##_next; \
                else if ((head) == (item))                               \
                        (head) = (item)->name##_next;                    \
                (item)->name##_next = (item)->name##_prev = NULL;        \
        } while (0)

#define LIST_FOREACH_SAFE(name, i, n, head)                              \
        for ((i) = (head); (i) && (((n) = (i)->name##_next), 1); (i) = (n))
