/* SPDX-License-Identifier: MIT */
/*
 * alloc_count.so — an LD_PRELOAD allocation counter for the benchmarks
 * (bench/run.py, "allocations per message") and for integration tests.
 *
 *   ALLOC_COUNT_FILE=/tmp/x.cnt LD_PRELOAD=BUILD/tests/lib/alloc_count.so prog
 *
 * It interposes the glibc allocator's public entry points and forwards to
 * glibc's own __libc_* aliases (exported by glibc 2.36, and used here
 * instead of dlsym(RTLD_NEXT), which itself may call calloc and recurse).
 * glibc routes its internal callers (strdup, fopen, reallocarray, ...)
 * through the same public symbols, so they are counted too.
 *
 * The counters live in a file, so another process can read them at any
 * moment, without signals or a socket: at load time (constructor) the file
 * named by ALLOC_COUNT_FILE is created or truncated to zero, sized to one
 * page and mapped MAP_SHARED; its descriptor is closed again (the traced
 * program sees no extra fd). Without ALLOC_COUNT_FILE nothing is counted.
 * Allocations made before the constructor ran are not counted. Every
 * process that loads the library with the variable set starts that file
 * from zero: give each process its own file (a fork()ed child shares its
 * parent's mapping and adds to it).
 *
 * File layout, version 1: native-endian uint64_t at fixed byte offsets.
 *
 *   offset  field     meaning
 *   0       magic     the 8 bytes "ALLOCCNT"
 *   8       version   1
 *   16      pid       the process that set the file up
 *   24      allocs    blocks handed out: malloc + calloc + the memalign
 *                     family + realloc(NULL, n) + realloc(p, n) that grows
 *                     past malloc_usable_size(p) (glibc has to find room)
 *   32      frees     blocks given back: free(p != NULL), realloc(p, 0),
 *                     and the old block of a realloc counted in allocs
 *                     (so allocs - frees ~ blocks alive)
 *   40      bytes     bytes requested by the calls counted in allocs
 *   48      mallocs   malloc() calls
 *   56      callocs   calloc() calls
 *   64      reallocs  realloc() calls, every one (growing or not)
 *   72      memaligns posix_memalign + aligned_alloc + memalign + valloc +
 *                     pvalloc calls
 *   80      tls_allocs of allocs, those called from OpenSSL itself (the
 *                     caller's address inside libssl or libcrypto, e.g.
 *                     CRYPTO_malloc): what the program's own code does not
 *                     control; allocs - tls_allocs is the rest
 *
 * Version 2 added tls_allocs. The address ranges of libssl and libcrypto
 * are taken once, in the constructor (dl_iterate_phdr: every DT_NEEDED
 * object is mapped by then); an OpenSSL loaded later with dlopen() is
 * not recognised.
 *
 * Calls are counted whether or not they succeed. Increments are relaxed
 * atomics (__atomic builtins): a reader may see one counter a step ahead of
 * another, never a torn value. Nothing here allocates, takes a lock or
 * uses errno beyond what the forwarded call does, so it is safe for the
 * single-threaded daemon (and for threaded programs as far as counting
 * goes). tests/lib/alloc_count.py reads the file.
 *
 * Only loaded in builds without sanitizers (ASan brings its own
 * allocator); it is compiled, with -Werror, in every build.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* glibc's own allocator entry points (glibc 2.36 exports these). */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t size);

enum {
        AC_MAGIC, AC_VERSION, AC_PID, AC_ALLOCS, AC_FREES, AC_BYTES,
        AC_MALLOCS, AC_CALLOCS, AC_REALLOCS, AC_MEMALIGNS, AC_TLS_ALLOCS,
        AC_N_FIELDS,
};
#define AC_VERSION_2 2u

/* Executable segments of libssl and libcrypto: [lo, hi). */
#define AC_MAX_RANGES 8
static struct { uintptr_t lo, hi; } tls_ranges[AC_MAX_RANGES];
static unsigned n_tls_ranges;

_Static_assert(AC_N_FIELDS * sizeof(uint64_t) <= 4096, "the layout fits the smallest page");

static uint64_t *counters; /* NULL until the constructor mapped the file */

static inline void bump(int field, uint64_t by)
{
        uint64_t *c = __atomic_load_n(&counters, __ATOMIC_RELAXED);

        if (c)
                __atomic_fetch_add(&c[field], by, __ATOMIC_RELAXED);
}

static inline bool from_tls(const void *caller)
{
        uintptr_t a = (uintptr_t)caller;

        for (unsigned i = 0; i < n_tls_ranges; i++)
                if (a >= tls_ranges[i].lo && a < tls_ranges[i].hi)
                        return true;
        return false;
}

/* caller: __builtin_return_address(0) of the interposed entry point. */
static inline void count_alloc(int kind, size_t size, const void *caller)
{
        bump(kind, 1);
        bump(AC_ALLOCS, 1);
        bump(AC_BYTES, size);
        if (from_tls(caller))
                bump(AC_TLS_ALLOCS, 1);
}

static int find_tls(struct dl_phdr_info *info, size_t size, void *data)
{
        (void)size;
        (void)data;
        if (!info->dlpi_name || (!strstr(info->dlpi_name, "/libssl.so") && !strstr(info->dlpi_name, "/libcrypto.so")))
                return 0;
        for (unsigned i = 0; i < info->dlpi_phnum && n_tls_ranges < AC_MAX_RANGES; i++) {
                const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
                if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
                        continue;
                tls_ranges[n_tls_ranges].lo = info->dlpi_addr + ph->p_vaddr;
                tls_ranges[n_tls_ranges].hi = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
                n_tls_ranges++;
        }
        return 0;
}

static void alloc_count_init(void) __attribute__((constructor));
static void alloc_count_init(void)
{
        const char *path = getenv("ALLOC_COUNT_FILE");
        long page = sysconf(_SC_PAGESIZE);
        int saved = errno;

        if (!path || !*path)
                return;
        if (page < 4096)
                page = 4096;
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                goto out;
        /* Truncate to zero first: a file left by an earlier run starts
         * again from nothing. */
        if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)page) < 0) {
                close(fd);
                goto out;
        }
        void *map = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (map == MAP_FAILED)
                goto out;
        uint64_t *c = map;
        (void)dl_iterate_phdr(find_tls, NULL);
        c[AC_VERSION] = AC_VERSION_2;
        c[AC_PID] = (uint64_t)getpid();
        /* The magic last: a reader that sees it sees a set-up file. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        memcpy(&c[AC_MAGIC], "ALLOCCNT", 8);
        __atomic_store_n(&counters, c, __ATOMIC_RELEASE);
out:
        errno = saved;
}

void *malloc(size_t size)
{
        count_alloc(AC_MALLOCS, size, __builtin_return_address(0));
        return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
        size_t total;

        if (__builtin_mul_overflow(n, size, &total))
                total = SIZE_MAX;
        count_alloc(AC_CALLOCS, total, __builtin_return_address(0));
        return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
        bump(AC_REALLOCS, 1);
        if (!p) {
                bump(AC_ALLOCS, 1);
                bump(AC_BYTES, size);
                if (from_tls(__builtin_return_address(0)))
                        bump(AC_TLS_ALLOCS, 1);
        } else if (size == 0) {
                /* glibc frees p and returns NULL. */
                bump(AC_FREES, 1);
        } else if (size > malloc_usable_size(p)) {
                /* Growth past the block: glibc may extend it in place,
                 * but the program asked for new room, and that is what a
                 * steady state should not do. */
                bump(AC_ALLOCS, 1);
                bump(AC_FREES, 1);
                bump(AC_BYTES, size);
                if (from_tls(__builtin_return_address(0)))
                        bump(AC_TLS_ALLOCS, 1);
        }
        return __libc_realloc(p, size);
}

void free(void *p)
{
        if (p)
                bump(AC_FREES, 1);
        __libc_free(p);
}

void *memalign(size_t align, size_t size)
{
        count_alloc(AC_MEMALIGNS, size, __builtin_return_address(0));
        return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
        count_alloc(AC_MEMALIGNS, size, __builtin_return_address(0));
        return __libc_memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
        count_alloc(AC_MEMALIGNS, size, __builtin_return_address(0));
        /* POSIX: a power of two and a multiple of sizeof(void *). */
        if (align == 0 || (align & (align - 1)) != 0 || align % sizeof(void *) != 0)
                return EINVAL;
        int saved = errno;
        void *p = __libc_memalign(align, size);
        if (!p)
                return ENOMEM;
        errno = saved; /* posix_memalign reports through its result only */
        *out = p;
        return 0;
}

void *valloc(size_t size)
{
        count_alloc(AC_MEMALIGNS, size, __builtin_return_address(0));
        return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), size);
}

void *pvalloc(size_t size)
{
        size_t page = (size_t)sysconf(_SC_PAGESIZE);

        count_alloc(AC_MEMALIGNS, size, __builtin_return_address(0));
        if (size > SIZE_MAX - page) {
                errno = ENOMEM;
                return NULL;
        }
        return __libc_memalign(page, (size + page - 1) & ~(page - 1));
}
