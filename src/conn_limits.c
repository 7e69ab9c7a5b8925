/* SPDX-License-Identifier: MIT */
/*
 * conn_limits — counts behind max_connections, max_handshakes and
 * max_connections_per_address. See conn_limits.h.
 *
 * Two tables: one record per open descriptor (an array indexed by fd,
 * grown on demand; descriptors are small dense numbers), and a chained
 * hash of source addresses with their connection counts (a node lives
 * while its count is above zero). Everything is O(1) per event, so a
 * connection storm costs the bridge no more than the accepts themselves.
 */

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "conn_limits.h"

struct addr_node {
        struct addr_node *next;
        uint64_t hash;
        unsigned count;
        uint8_t family;
        uint8_t addr[16];
};

struct fd_rec {
        struct addr_node *node; /* NULL: fd not recorded */
        bool handshaking;
};

struct conn_limits {
        uint64_t seed;
        struct fd_rec *fds;
        size_t n_fds;             /* entries allocated */
        struct addr_node **buckets;
        size_t n_buckets;         /* a power of two */
        size_t n_addrs;
        unsigned connections;
        unsigned handshakes;
};

#define INITIAL_BUCKETS 256

/* The address bytes (4 or 16) and family of sa; false for other families. */
static bool addr_key(const struct sockaddr *sa, uint8_t *family, uint8_t key[16])
{
        memset(key, 0, 16);
        if (!sa)
                return false;
        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                memcpy(key, &in->sin_addr, 4);
                *family = AF_INET;
                return true;
        }
        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                memcpy(key, &in6->sin6_addr, 16);
                *family = AF_INET6;
                return true;
        }
        return false;
}

/* Seeded multiply-xorshift over the 17 key bytes: not cryptographic, but
 * an attacker who does not know the seed cannot aim at one bucket. */
static uint64_t addr_hash(uint64_t seed, uint8_t family, const uint8_t key[16])
{
        uint64_t h = seed ^ (0x9E3779B97F4A7C15ULL * (family + 1u));

        for (int i = 0; i < 16; i += 8) {
                uint64_t w;
                memcpy(&w, key + i, 8);
                h ^= w;
                h *= 0xBF58476D1CE4E5B9ULL;
                h ^= h >> 31;
                h *= 0x94D049BB133111EBULL;
                h ^= h >> 29;
        }
        return h;
}

static struct addr_node *addr_find(const struct conn_limits *cl, uint8_t family, const uint8_t key[16],
                                   uint64_t h)
{
        for (struct addr_node *n = cl->buckets[h & (cl->n_buckets - 1)]; n; n = n->next)
                if (n->hash == h && n->family == family && memcmp(n->addr, key, 16) == 0)
                        return n;
        return NULL;
}

/* Double the buckets when the chains would average more than two. On
 * -ENOMEM the table stays as it was (longer chains, still correct). */
static void addr_maybe_grow(struct conn_limits *cl)
{
        if (cl->n_addrs <= cl->n_buckets * 2)
                return;
        size_t nb = cl->n_buckets * 2;
        struct addr_node **b = calloc(nb, sizeof *b);
        if (!b)
                return;
        for (size_t i = 0; i < cl->n_buckets; i++) {
                struct addr_node *n = cl->buckets[i];
                while (n) {
                        struct addr_node *next = n->next;
                        n->next = b[n->hash & (nb - 1)];
                        b[n->hash & (nb - 1)] = n;
                        n = next;
                }
        }
        free(cl->buckets);
        cl->buckets = b;
        cl->n_buckets = nb;
}

static void addr_unlink(struct conn_limits *cl, struct addr_node *node)
{
        struct addr_node **p = &cl->buckets[node->hash & (cl->n_buckets - 1)];

        while (*p && *p != node)
                p = &(*p)->next;
        if (*p)
                *p = node->next;
        cl->n_addrs--;
        free(node);
}

int conn_limits_new(uint64_t seed, struct conn_limits **out)
{
        struct conn_limits *cl = calloc(1, sizeof *cl);

        if (!cl)
                return -ENOMEM;
        cl->seed = seed;
        cl->n_buckets = INITIAL_BUCKETS;
        cl->buckets = calloc(cl->n_buckets, sizeof *cl->buckets);
        if (!cl->buckets) {
                free(cl);
                return -ENOMEM;
        }
        *out = cl;
        return 0;
}

void conn_limits_free(struct conn_limits *cl)
{
        if (!cl)
                return;
        for (size_t i = 0; i < cl->n_buckets; i++) {
                struct addr_node *n = cl->buckets[i];
                while (n) {
                        struct addr_node *next = n->next;
                        free(n);
                        n = next;
                }
        }
        free(cl->buckets);
        free(cl->fds);
        free(cl);
}

unsigned conn_limits_from(const struct conn_limits *cl, const struct sockaddr *addr)
{
        uint8_t family = 0, key[16];

        if (!cl || !addr_key(addr, &family, key))
                return 0;
        struct addr_node *n = addr_find(cl, family, key, addr_hash(cl->seed, family, key));
        return n ? n->count : 0;
}

enum conn_verdict conn_limits_check(const struct conn_limits *cl, const struct conn_limits_config *c,
                                    const struct sockaddr *addr)
{
        if (!cl || !c)
                return CONN_ADMIT;
        /* Per address first: the most specific reason is the one an
         * operator can act on (which host is it?). */
        if (c->max_per_address && conn_limits_from(cl, addr) >= c->max_per_address)
                return CONN_REFUSE_PER_ADDRESS;
        if (c->max_handshakes && cl->handshakes >= c->max_handshakes)
                return CONN_REFUSE_MAX_HANDSHAKES;
        if (c->max_connections && cl->connections >= c->max_connections)
                return CONN_REFUSE_MAX_CONNECTIONS;
        return CONN_ADMIT;
}

int conn_limits_add(struct conn_limits *cl, int fd, const struct sockaddr *addr)
{
        uint8_t family = 0, key[16];

        if (!cl)
                return 0; /* no limits kept */
        if (fd < 0)
                return -EINVAL;
        if (!addr_key(addr, &family, key))
                return -EAFNOSUPPORT;
        if ((size_t) fd >= cl->n_fds) {
                size_t n = cl->n_fds ? cl->n_fds : 64;
                while (n <= (size_t) fd)
                        n *= 2;
                struct fd_rec *f = realloc(cl->fds, n * sizeof *f);
                if (!f)
                        return -ENOMEM;
                memset(f + cl->n_fds, 0, (n - cl->n_fds) * sizeof *f);
                cl->fds = f;
                cl->n_fds = n;
        }
        if (cl->fds[fd].node)
                return -EEXIST;

        uint64_t h = addr_hash(cl->seed, family, key);
        struct addr_node *node = addr_find(cl, family, key, h);
        if (!node) {
                node = calloc(1, sizeof *node);
                if (!node)
                        return -ENOMEM;
                node->hash = h;
                node->family = family;
                memcpy(node->addr, key, 16);
                node->next = cl->buckets[h & (cl->n_buckets - 1)];
                cl->buckets[h & (cl->n_buckets - 1)] = node;
                cl->n_addrs++;
                addr_maybe_grow(cl);
        }
        node->count++;
        cl->fds[fd].node = node;
        cl->fds[fd].handshaking = true;
        cl->connections++;
        cl->handshakes++;
        return 0;
}

static struct fd_rec *fd_find(struct conn_limits *cl, int fd)
{
        if (!cl || fd < 0 || (size_t) fd >= cl->n_fds || !cl->fds[fd].node)
                return NULL;
        return &cl->fds[fd];
}

void conn_limits_handshake_done(struct conn_limits *cl, int fd)
{
        struct fd_rec *r = fd_find(cl, fd);

        if (!r || !r->handshaking)
                return;
        r->handshaking = false;
        cl->handshakes--;
}

void conn_limits_remove(struct conn_limits *cl, int fd)
{
        struct fd_rec *r = fd_find(cl, fd);

        if (!r)
                return;
        conn_limits_handshake_done(cl, fd);
        if (--r->node->count == 0)
                addr_unlink(cl, r->node);
        r->node = NULL;
        cl->connections--;
}

int conn_limits_readdress(struct conn_limits *cl, int fd, const struct sockaddr *addr)
{
        struct fd_rec *rec = fd_find(cl, fd);
        uint8_t family = 0, key[16];
        bool handshaking;
        int r;

        if (!cl)
                return 0;
        if (!rec)
                return -ENOENT;
        if (!addr_key(addr, &family, key))
                return -EAFNOSUPPORT;
        handshaking = rec->handshaking;
        conn_limits_remove(cl, fd);
        r = conn_limits_add(cl, fd, addr);
        if (r < 0)
                return r;
        if (!handshaking)
                conn_limits_handshake_done(cl, fd);
        return 0;
}

unsigned conn_limits_connections(const struct conn_limits *cl)
{
        return cl ? cl->connections : 0;
}

unsigned conn_limits_handshakes(const struct conn_limits *cl)
{
        return cl ? cl->handshakes : 0;
}

const char *conn_verdict_to_string(enum conn_verdict v)
{
        switch (v) {
        case CONN_ADMIT:
                return "admitted";
        case CONN_REFUSE_MAX_CONNECTIONS:
                return "max_connections";
        case CONN_REFUSE_MAX_HANDSHAKES:
                return "max_handshakes";
        case CONN_REFUSE_PER_ADDRESS:
                return "max_connections_per_address";
        }
        return "unknown";
}
