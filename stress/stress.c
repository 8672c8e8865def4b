/* stress.c: long randomized multi-threaded stress of every allocation function that
 * rsmalloc exports.
 *
 *   stress DURATION_SECONDS THREADS [SEED]
 *
 * THREADS workers run at once; each lives for a random number of operations and then ends
 * (handing its blocks to other threads or freeing them itself) and the main thread starts a
 * replacement, until DURATION has passed. Operations: malloc, calloc, realloc (grow, shrink,
 * NULL, to 0), reallocarray, memalign, posix_memalign, aligned_alloc, valloc, pvalloc,
 * malloc_usable_size, free, free_sized, free_aligned_sized, the error paths (ENOMEM/EINVAL),
 * and remote frees (a block handed through a shared mailbox to whichever thread picks it
 * up). Sizes 1 B .. 8 MiB, weighted toward small. Every block's contents are a pattern of
 * (tag, offset) written after allocation and verified before every free and realloc;
 * calloc memory is checked zero, alignment and usable size are checked. rsmalloc_check()
 * runs periodically in the workers and in the main thread.
 *
 * Exit status: 0 when no check failed; 1 on any corruption or wrong result (a FAIL line
 * names it); 2 on bad usage; and the allocator itself aborts on inconsistencies it finds.
 * The last line is `stress: OK ...` or `stress: FAILED ...`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NSLOTS 1024   /* live blocks per worker */
#define NMAIL 512     /* shared mailbox slots for remote frees */
#define MAX_THREADS 256
#define PAT_K 0x9E3779B97F4A7C15ULL

enum { HOW_MALLOC, HOW_ALIGNED };

struct blk {
    unsigned char *p;
    size_t size;    /* bytes whose pattern is known (requested size, or usable size) */
    uint64_t tag;
    size_t align;   /* alignment the block was asked with (16 = default) */
    int how;
};

/* ---- allocator entry points not in glibc 2.36's headers ---- */
typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);
typedef int (*check_fn)(void);
typedef const char *(*version_fn)(void);
static free_sized_fn p_free_sized;
static free_aligned_sized_fn p_free_aligned_sized;
static check_fn p_check;

static atomic_int failed;
static atomic_int stop;
static double deadline;
static _Atomic(struct blk *) mailbox[NMAIL];

enum {
    OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_REALLOCARRAY, OP_MEMALIGN, OP_POSIX_MEMALIGN,
    OP_ALIGNED_ALLOC, OP_VALLOC, OP_PVALLOC, OP_USABLE, OP_FREE, OP_FREE_SIZED,
    OP_FREE_ALIGNED_SIZED, OP_REMOTE, OP_ERRORS, OP_CHECK, NOPS
};
static const char *op_names[NOPS] = {
    "malloc", "calloc", "realloc", "reallocarray", "memalign", "posix_memalign",
    "aligned_alloc", "valloc", "pvalloc", "malloc_usable_size", "free", "free_sized",
    "free_aligned_sized", "remote_free", "error_paths", "rsmalloc_check",
};
static atomic_ullong op_count[NOPS];
static atomic_ullong bytes_allocated, threads_started, remote_received;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

#define FAIL(...)                                                                   \
    do {                                                                            \
        if (atomic_fetch_add(&failed, 1) < 20) {                                    \
            char b_[600];                                                           \
            snprintf(b_, sizeof b_, __VA_ARGS__);                                   \
            fprintf(stdout, "FAIL stress: %s\n", b_);                               \
            fflush(stdout);                                                         \
        }                                                                           \
        atomic_store(&stop, 1);                                                     \
    } while (0)

/* Pattern of bytes [from, to) of a block with tag `tag`: word i is tag ^ (i * K); a prefix
 * of a pattern is the same pattern, so realloc keeps it. */
static void fill(unsigned char *p, size_t from, size_t to, uint64_t tag)
{
    size_t i = from;
    while (i < to && (i & 7)) {
        uint64_t w = tag ^ ((i / 8) * PAT_K);
        p[i] = (unsigned char)(w >> (8 * (i & 7)));
        i++;
    }
    for (; i + 8 <= to; i += 8) {
        uint64_t w = tag ^ ((i / 8) * PAT_K);
        memcpy(p + i, &w, 8);
    }
    for (; i < to; i++) {
        uint64_t w = tag ^ ((i / 8) * PAT_K);
        p[i] = (unsigned char)(w >> (8 * (i & 7)));
    }
}

/* Offset of the first byte of [0, n) that does not match, or (size_t)-1. */
static size_t verify(const unsigned char *p, size_t n, uint64_t tag)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = tag ^ ((i / 8) * PAT_K), g;
        memcpy(&g, p + i, 8);
        if (g != w) break;
    }
    for (; i < n; i++) {
        uint64_t w = tag ^ ((i / 8) * PAT_K);
        if (p[i] != (unsigned char)(w >> (8 * (i & 7)))) return i;
    }
    return (size_t)-1;
}

static int check_block(const struct blk *b, const char *when)
{
    size_t off = verify(b->p, b->size, b->tag);
    if (off != (size_t)-1) {
        uint64_t w = b->tag ^ ((off / 8) * PAT_K);
        FAIL("corrupted block %p (size %zu, align %zu) at offset %zu before %s: byte 0x%02x, expected 0x%02x",
             (void *)b->p, b->size, b->align, off, when, b->p[off],
             (unsigned char)(w >> (8 * (off & 7))));
        return 0;
    }
    return 1;
}

/* A size from 1 B to 8 MiB, weighted toward small. */
static size_t rand_size(uint64_t *s)
{
    uint64_t r = rnd(s) % 10000;
    uint64_t x = rnd(s);
    if (r < 6500) return 1 + x % 128;
    if (r < 9000) return 129 + x % (2048 - 128);
    if (r < 9800) return 2049 + x % (32768 - 2048);
    if (r < 9985) return 32769 + x % ((1 << 20) - 32768);
    return (1 << 20) + 1 + x % ((8 << 20) - (1 << 20));
}

static size_t rand_align(uint64_t *s)
{
    uint64_t r = rnd(s) % 100;
    if (r < 70) return (size_t)16 << (rnd(s) % 5);      /* 16 .. 256 */
    if (r < 95) return (size_t)512 << (rnd(s) % 7);     /* 512 .. 32 KiB */
    return (size_t)65536 << (rnd(s) % 6);               /* 64 KiB .. 2 MiB */
}

static void check_usable(const struct blk *b, const char *fn)
{
    size_t u = malloc_usable_size(b->p);
    if (u < b->size) FAIL("%s: malloc_usable_size(%p) = %zu < %zu requested", fn, (void *)b->p, u, b->size);
}

/* Sets up a new live block: checks result, alignment, zeroing; writes the pattern. */
static int adopt(struct blk *b, void *p, size_t size, size_t align, int how, int zeroed, uint64_t *s,
                 const char *fn)
{
    if (!p) {
        FAIL("%s(size %zu, align %zu) returned NULL (errno %d)", fn, size, align, errno);
        return 0;
    }
    if (((uintptr_t)p & (align - 1)) != 0) {
        FAIL("%s(size %zu, align %zu) returned misaligned %p", fn, size, align, p);
        return 0;
    }
    b->p = p;
    b->size = size;
    b->align = align;
    b->how = how;
    b->tag = mix((uintptr_t)p ^ (size << 17) ^ rnd(s));
    if (zeroed) {
        for (size_t i = 0; i < size; i++)
            if (b->p[i]) {
                FAIL("calloc(%zu) block %p not zero at offset %zu (0x%02x)", size, p, i, b->p[i]);
                return 0;
            }
    }
    fill(b->p, 0, size, b->tag);
    atomic_fetch_add_explicit(&bytes_allocated, size, memory_order_relaxed);
    return 1;
}

static void release(struct blk *b, uint64_t *s)
{
    if (!check_block(b, "free")) return;
    uint64_t r = rnd(s) % 4;
    if (b->how == HOW_ALIGNED && r == 0 && p_free_aligned_sized) {
        p_free_aligned_sized(b->p, b->align, b->size);
        atomic_fetch_add_explicit(&op_count[OP_FREE_ALIGNED_SIZED], 1, memory_order_relaxed);
    } else if (r == 1 && p_free_sized) {
        p_free_sized(b->p, b->size);
        atomic_fetch_add_explicit(&op_count[OP_FREE_SIZED], 1, memory_order_relaxed);
    } else {
        free(b->p);
        atomic_fetch_add_explicit(&op_count[OP_FREE], 1, memory_order_relaxed);
    }
    b->p = NULL;
}

static void do_alloc(struct blk *b, int op, uint64_t *s)
{
    size_t size = rand_size(s), align;
    void *p = NULL;
    switch (op) {
    case OP_MALLOC:
        if (rnd(s) % 64 == 0) size = 0;
        p = malloc(size);
        adopt(b, p, size, 16, HOW_MALLOC, 0, s, "malloc");
        break;
    case OP_CALLOC: {
        size_t n = 1 + rnd(s) % 8, m = size / n + 1;
        if (n * m > (16u << 20)) m = 1;
        /* dirty memory first, so that a missing zeroing shows */
        p = calloc(n, m);
        adopt(b, p, n * m, 16, HOW_MALLOC, 1, s, "calloc");
        break;
    }
    case OP_MEMALIGN:
        align = rand_align(s);
        p = memalign(align, size);
        adopt(b, p, size, align, HOW_ALIGNED, 0, s, "memalign");
        break;
    case OP_POSIX_MEMALIGN: {
        align = rand_align(s);
        int r = posix_memalign(&p, align, size);
        if (r != 0) {
            FAIL("posix_memalign(align %zu, size %zu) = %d", align, size, r);
            return;
        }
        adopt(b, p, size, align, HOW_ALIGNED, 0, s, "posix_memalign");
        break;
    }
    case OP_ALIGNED_ALLOC:
        align = rand_align(s);
        p = aligned_alloc(align, size);
        adopt(b, p, size, align, HOW_ALIGNED, 0, s, "aligned_alloc");
        break;
    case OP_VALLOC:
        p = valloc(size);
        adopt(b, p, size, 4096, HOW_ALIGNED, 0, s, "valloc");
        break;
    case OP_PVALLOC:
        p = pvalloc(size);
        /* pvalloc rounds the size up to whole pages: all of them are usable */
        adopt(b, p, (size + 4095) & ~(size_t)4095, 4096, HOW_ALIGNED, 0, s, "pvalloc");
        break;
    }
    if (b->p) check_usable(b, op_names[op]);
    atomic_fetch_add_explicit(&op_count[op], 1, memory_order_relaxed);
}

static void do_realloc(struct blk *b, int op, uint64_t *s)
{
    if (!check_block(b, "realloc")) return;
    size_t old = b->size;
    size_t size;
    uint64_t r = rnd(s) % 10;
    if (r < 4) size = old + 1 + rnd(s) % (old < 4096 ? 256 : old / 2 + 1);     /* grow a bit */
    else if (r < 7) size = old / (1 + rnd(s) % 4) + 1;                           /* shrink */
    else size = rand_size(s);                                                   /* anything */
    if (size > (9u << 20)) size = 9u << 20;
    void *p;
    if (op == OP_REALLOCARRAY) {
        size_t n = 1 + rnd(s) % 4, m = size / n + 1;
        size = n * m;
        p = reallocarray(b->p, n, m);
    } else {
        p = realloc(b->p, size);
    }
    atomic_fetch_add_explicit(&op_count[op], 1, memory_order_relaxed);
    if (!p) {
        FAIL("%s(%p, %zu) returned NULL (errno %d)", op_names[op], (void *)b->p, size, errno);
        return;
    }
    b->p = p;
    b->size = old < size ? old : size;
    if (((uintptr_t)p & 15) != 0) FAIL("%s returned misaligned %p", op_names[op], p);
    if (!check_block(b, "realloc result (contents not kept)")) return;
    fill(b->p, b->size, size, b->tag);
    b->size = size;
    b->align = 16;
    b->how = HOW_MALLOC;
    check_usable(b, op_names[op]);
}

/* Error paths must fail cleanly with the right errno and leave the heap alone. */
static void do_errors(uint64_t *s)
{
    void *p;
    errno = 0;
    switch (rnd(s) % 7) {
    case 0:
        p = malloc(SIZE_MAX - rnd(s) % 4096);
        if (p || errno != ENOMEM) FAIL("malloc(huge) = %p errno %d, want NULL/ENOMEM", p, errno);
        break;
    case 1:
        p = calloc(SIZE_MAX / 2, 3);
        if (p || errno != ENOMEM) FAIL("calloc(overflow) = %p errno %d, want NULL/ENOMEM", p, errno);
        break;
    case 2: {
        void *q = (void *)0x1;
        int r = posix_memalign(&q, 24, 100);
        if (r != EINVAL || q != (void *)0x1) FAIL("posix_memalign(align 24) = %d, want EINVAL, out untouched", r);
        break;
    }
    case 3:
        p = aligned_alloc(48, 96);
        if (p || errno != EINVAL) FAIL("aligned_alloc(48) = %p errno %d, want NULL/EINVAL", p, errno);
        break;
    case 4: {
        void *q = malloc(100);
        if (!q) { FAIL("malloc(100) NULL"); break; }
        memset(q, 0x33, 100);
        errno = 0;
        p = realloc(q, SIZE_MAX - 64);
        if (p || errno != ENOMEM) FAIL("realloc(p, huge) = %p errno %d, want NULL/ENOMEM", p, errno);
        for (int i = 0; i < 100; i++)
            if (((unsigned char *)q)[i] != 0x33) { FAIL("realloc failure changed the block"); break; }
        free(q);
        break;
    }
    case 5:
        p = reallocarray(NULL, SIZE_MAX / 4, 8);
        if (p || errno != ENOMEM) FAIL("reallocarray(overflow) = %p errno %d", p, errno);
        break;
    case 6:
        p = realloc(NULL, 40); /* = malloc */
        if (!p) FAIL("realloc(NULL, 40) NULL");
        memset(p, 1, 40);
        p = realloc(p, 0); /* glibc: frees, returns NULL */
        if (p) FAIL("realloc(p, 0) returned %p, glibc returns NULL", p);
        break;
    }
    atomic_fetch_add_explicit(&op_count[OP_ERRORS], 1, memory_order_relaxed);
}

/* Hands block b to the mailbox; frees whatever block was there (a remote free, usually of
 * another thread's block, often of one whose thread has ended). */
static void do_remote(struct blk *b, uint64_t *s)
{
    struct blk *d = malloc(sizeof *d);
    if (!d) { FAIL("malloc(desc) NULL"); return; }
    *d = *b;
    b->p = NULL;
    struct blk *old = atomic_exchange(&mailbox[rnd(s) % NMAIL], d);
    if (old) {
        release(old, s);
        free(old);
        atomic_fetch_add_explicit(&remote_received, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&op_count[OP_REMOTE], 1, memory_order_relaxed);
}

static void do_check(void)
{
    if (p_check) p_check();
    atomic_fetch_add_explicit(&op_count[OP_CHECK], 1, memory_order_relaxed);
}

struct worker {
    pthread_t th;
    atomic_int done;
    int used;
    uint64_t seed;
    long lifetime;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t s = w->seed | 1;
    /* the slot table itself comes from the allocator under test */
    struct blk *slot = calloc(NSLOTS, sizeof *slot);
    if (!slot) { FAIL("calloc(slots) NULL"); atomic_store(&w->done, 1); return NULL; }
    /* a thread keeps few or many live blocks */
    size_t nslots = 16 + rnd(&s) % (NSLOTS - 16);
    for (long i = 0; i < w->lifetime && !atomic_load_explicit(&stop, memory_order_relaxed); i++) {
        if ((i & 255) == 0 && now() > deadline) break;
        struct blk *b = &slot[rnd(&s) % nslots];
        uint64_t r = rnd(&s) % 1000;
        if (!b->p) {
            int op;
            if (r < 550) op = OP_MALLOC;
            else if (r < 700) op = OP_CALLOC;
            else if (r < 780) op = OP_MEMALIGN;
            else if (r < 860) op = OP_POSIX_MEMALIGN;
            else if (r < 930) op = OP_ALIGNED_ALLOC;
            else if (r < 965) op = OP_VALLOC;
            else op = OP_PVALLOC;
            do_alloc(b, op, &s);
        } else if (r < 550) {
            release(b, &s);
        } else if (r < 750) {
            do_realloc(b, r < 700 ? OP_REALLOC : OP_REALLOCARRAY, &s);
        } else if (r < 900) {
            do_remote(b, &s);
        } else if (r < 990) {
            if (check_block(b, "malloc_usable_size")) {
                size_t u = malloc_usable_size(b->p);
                if (u < b->size) FAIL("malloc_usable_size(%p) = %zu < %zu", (void *)b->p, u, b->size);
                else if (u > b->size && u - b->size < (64 << 10)) {
                    /* the whole usable size is the program's: use it */
                    fill(b->p, b->size, u, b->tag);
                    b->size = u;
                }
            }
            atomic_fetch_add_explicit(&op_count[OP_USABLE], 1, memory_order_relaxed);
        } else {
            do_errors(&s);
        }
        if ((i % 20000) == 19999) do_check();
    }
    /* end of life: hand the blocks to other threads, or free them here */
    int give = rnd(&s) % 2;
    for (size_t i = 0; i < nslots; i++) {
        if (!slot[i].p) continue;
        if (give) do_remote(&slot[i], &s);
        else release(&slot[i], &s);
    }
    do_check();
    free(slot);
    atomic_store(&w->done, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DURATION_SECONDS THREADS [SEED]\n", argv[0]);
        return 2;
    }
    double duration = atof(argv[1]);
    int nthreads = atoi(argv[2]);
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (duration <= 0 || nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "stress: bad arguments (duration > 0, 1 <= threads <= %d)\n", MAX_THREADS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    version_fn ver = (version_fn)dlsym(RTLD_DEFAULT, "rsmalloc_version");
    p_check = (check_fn)dlsym(RTLD_DEFAULT, "rsmalloc_check");
    p_free_sized = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    p_free_aligned_sized = (free_aligned_sized_fn)dlsym(RTLD_DEFAULT, "free_aligned_sized");
    int allow_other = getenv("STRESS_ALLOW_OTHER_ALLOCATOR") != NULL;
    if (!ver || !p_check) {
        if (!allow_other) {
            printf("FAIL stress: rsmalloc is not loaded (rsmalloc_version/rsmalloc_check not found);"
                   " set STRESS_ALLOW_OTHER_ALLOCATOR=1 to run against another allocator\n");
            return 1;
        }
        printf("stress: allocator: not rsmalloc (no invariant checks)\n");
    } else {
        printf("stress: allocator: %s\n", ver());
    }
    printf("stress: %.0f s, %d threads, seed 0x%" PRIx64 "\n", duration, nthreads, seed);

    double start = now();
    deadline = start + duration;
    struct worker *ws = calloc(nthreads, sizeof *ws);
    uint64_t ms = seed | 1;
    long spawned = 0;
    double last_check = start;
    for (;;) {
        int active = 0;
        int over = now() > deadline || atomic_load(&stop);
        for (int i = 0; i < nthreads; i++) {
            struct worker *w = &ws[i];
            if (w->used && atomic_load(&w->done)) {
                pthread_join(w->th, NULL);
                w->used = 0;
            }
            if (!w->used && !over) {
                atomic_store(&w->done, 0);
                w->seed = mix(rnd(&ms));
                w->lifetime = 1000 + (long)(rnd(&ms) % 60000);
                if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
                    FAIL("pthread_create failed");
                    break;
                }
                w->used = 1;
                spawned++;
            }
            active += w->used;
        }
        if (over && active == 0) break;
        if (now() - last_check > 0.5) {
            do_check();
            last_check = now();
        }
        usleep(5000);
    }
    /* pick up what is left in the mailbox */
    for (int i = 0; i < NMAIL; i++) {
        struct blk *d = atomic_exchange(&mailbox[i], NULL);
        if (d) {
            release(d, &ms);
            free(d);
        }
    }
    do_check();
    free(ws);
    threads_started = spawned;
    double el = now() - start;
    unsigned long long total = 0;
    for (int i = 0; i < NOPS; i++) total += op_count[i];
    printf("stress: %llu ops in %.1f s (%.0f ops/s), %ld threads started, %llu remote frees, %.1f GiB allocated\n",
           total, el, total / el, spawned, (unsigned long long)remote_received,
           bytes_allocated / (1024.0 * 1024 * 1024));
    printf("stress: ops:");
    for (int i = 0; i < NOPS; i++) printf(" %s=%llu", op_names[i], (unsigned long long)op_count[i]);
    printf("\n");
    int f = atomic_load(&failed);
    if (f) {
        printf("stress: FAILED: %d failure(s) (seed 0x%" PRIx64 ")\n", f, seed);
        return 1;
    }
    printf("stress: OK\n");
    return 0;
}
