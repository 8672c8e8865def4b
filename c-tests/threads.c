/* threads.c: T threads (default 8; argv[1] or RS_THREADS) doing random malloc / calloc /
 * realloc / posix_memalign / free over 1 B..256 KiB (occasionally 1..8 MiB) for a bounded
 * time (default 3 s; RS_SECONDS). Every block carries a pattern derived from
 * (pointer, size, seed) that is verified before it is freed or reallocated. Half of the
 * frees go through a shared queue and are done by another thread. */
#include "common.h"

#include <pthread.h>

#define SLOTS 1024
#define QCAP 8192

struct blk {
    void *p;
    size_t n;
    uint64_t tag;
};

static struct {
    pthread_mutex_t mu;
    struct blk q[QCAP];
    size_t head, len;
} shared = {.mu = PTHREAD_MUTEX_INITIALIZER};

static double deadline;
static atomic_long total_ops, remote_frees, big_allocs;

static uint64_t make_tag(void *p, size_t n, uint64_t seed)
{
    return rs_mix((uintptr_t)p ^ (n * 0x100000001B3ULL) ^ (seed << 17));
}

static void verify_blk(const struct blk *b, const char *when)
{
    size_t bad = rs_verify(b->p, b->n, b->tag);
    if (bad != (size_t)-1)
        FAILF("%s: block %p size %zu corrupted at offset %zu", when, b->p, b->n, bad);
    else
        atomic_fetch_add(&rs_checks, 1);
}

static void check_new(void *p, size_t n, size_t align, const char *what)
{
    if (!p) {
        FAILF("%s(%zu) returned NULL", what, n);
        return;
    }
    if (!rs_aligned(p, align < 16 ? 16 : align)) FAILF("%s(%zu) = %p misaligned (want %zu)", what, n, p, align);
    size_t u = malloc_usable_size(p);
    if (u < n) FAILF("%s(%zu) = %p usable size %zu too small", what, n, p, u);
}

static void release(struct blk *b, uint64_t *rng)
{
    verify_blk(b, "free");
    if (rs_free_sized && (rs_rand(rng) & 3) == 0)
        rs_free_sized(b->p, b->n);
    else
        free(b->p);
    b->p = NULL;
}

static int push_shared(const struct blk *b)
{
    int ok = 0;
    pthread_mutex_lock(&shared.mu);
    if (shared.len < QCAP) {
        shared.q[(shared.head + shared.len) % QCAP] = *b;
        shared.len++;
        ok = 1;
    }
    pthread_mutex_unlock(&shared.mu);
    return ok;
}

static int pop_shared(struct blk *out)
{
    int ok = 0;
    pthread_mutex_lock(&shared.mu);
    if (shared.len) {
        *out = shared.q[shared.head];
        shared.head = (shared.head + 1) % QCAP;
        shared.len--;
        ok = 1;
    }
    pthread_mutex_unlock(&shared.mu);
    return ok;
}

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rs_rand(rng);
    if (r % 1000 == 0) {
        atomic_fetch_add(&big_allocs, 1);
        return (1 << 20) + (rs_rand(rng) % (7 << 20)); /* 1..8 MiB */
    }
    unsigned bits = (r >> 10) % 19; /* up to 256 KiB */
    return 1 + (rs_rand(rng) & ((1ULL << bits) - 1));
}

static void *worker(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg;
    uint64_t rng = rs_mix(seed + 1) | 1;
    struct blk *slots = calloc(SLOTS, sizeof *slots);
    long ops = 0;
    for (;;) {
        if ((ops & 255) == 0 && rs_now() > deadline) break;
        ops++;
        uint64_t r = rs_rand(&rng);
        struct blk *b = &slots[(r >> 5) % SLOTS];
        unsigned op = r & 31;
        if (op <= 1) { /* free what other threads queued */
            struct blk o;
            for (int k = 0; k < 4 && pop_shared(&o); k++) {
                if ((rs_rand(&rng) & 3) == 0) { /* realloc a foreign block, then free it */
                    verify_blk(&o, "remote realloc");
                    size_t nn = pick_size(&rng);
                    void *q = realloc(o.p, nn);
                    check_new(q, nn, 16, "realloc(remote)");
                    if (q) {
                        size_t keep = nn < o.n ? nn : o.n;
                        size_t bad = rs_verify(q, keep, o.tag);
                        if (bad != (size_t)-1)
                            FAILF("realloc(remote) %zu->%zu lost byte %zu", o.n, nn, bad);
                        o.p = q;
                        o.n = nn;
                        o.tag = make_tag(q, nn, seed);
                        rs_fill(q, nn, o.tag);
                    }
                }
                release(&o, &rng);
                atomic_fetch_add(&remote_frees, 1);
            }
            continue;
        }
        if (b->p) {
            if (op < 12) { /* realloc */
                verify_blk(b, "realloc");
                size_t nn = (op & 1) ? b->n / 2 + (rs_rand(&rng) & 15) : pick_size(&rng);
                if (nn == 0) nn = 1;
                void *q = realloc(b->p, nn);
                check_new(q, nn, 16, "realloc");
                if (!q) continue;
                size_t keep = nn < b->n ? nn : b->n;
                size_t bad = rs_verify(q, keep, b->tag);
                if (bad != (size_t)-1)
                    FAILF("realloc %p -> %p (%zu -> %zu) lost byte %zu", b->p, q, b->n, nn, bad);
                b->p = q;
                b->n = nn;
                b->tag = make_tag(q, nn, seed);
                rs_fill(q, nn, b->tag);
            } else if (op < 22) { /* free here or hand to another thread */
                verify_blk(b, "pre-handoff");
                if ((op & 1) && push_shared(b))
                    b->p = NULL;
                else
                    release(b, &rng);
            } /* else keep it alive */
            continue;
        }
        size_t n = pick_size(&rng);
        void *p = NULL;
        if (op < 16) {
            p = malloc(n);
            check_new(p, n, 16, "malloc");
        } else if (op < 24) {
            p = calloc(1, n);
            check_new(p, n, 16, "calloc");
            if (p) {
                size_t nz = rs_first_nonzero(p, n);
                if (nz != (size_t)-1) FAILF("calloc(%zu) = %p: byte %zu not zero", n, p, nz);
                else atomic_fetch_add(&rs_checks, 1);
            }
        } else {
            size_t align = (size_t)16 << (rs_rand(&rng) % (op == 31 ? 13 : 9)); /* 16 B .. 64 KiB */
            int e = posix_memalign(&p, align, n);
            if (e) {
                FAILF("posix_memalign(%zu, %zu) = %d", align, n, e);
                p = NULL;
            } else
                check_new(p, n, align, "posix_memalign");
        }
        if (!p) continue;
        b->p = p;
        b->n = n;
        b->tag = make_tag(p, n, seed);
        rs_fill(p, n, b->tag);
    }
    /* Leave some blocks to be freed by other threads after this one has exited. */
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].p && !((i & 1) && push_shared(&slots[i]))) release(&slots[i], &rng);
    free(slots);
    atomic_fetch_add(&total_ops, ops);
    return NULL;
}

int main(int argc, char **argv)
{
    rs_check_loaded("threads");
    int nthreads = 8;
    double secs = 3.0;
    if (argc > 1) nthreads = atoi(argv[1]);
    else if (getenv("RS_THREADS")) nthreads = atoi(getenv("RS_THREADS"));
    if (getenv("RS_SECONDS")) secs = atof(getenv("RS_SECONDS"));
    if (nthreads < 1) nthreads = 1;
    pthread_t *th = malloc(sizeof(pthread_t) * nthreads);
    /* Two rounds: threads of the second round free what threads of the first round queued
     * after those have exited. */
    for (int round = 0; round < 2; round++) {
        deadline = rs_now() + secs / 2;
        for (int i = 0; i < nthreads; i++) {
            int e = pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(round * 1000 + i + 1));
            if (e) {
                FAILF("pthread_create: %s", strerror(e));
                nthreads = i;
                break;
            }
        }
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
        printf("threads: round %d done, %zu blocks left in the shared queue\n", round, shared.len);
    }
    struct blk o;
    uint64_t rng = 99;
    while (pop_shared(&o)) release(&o, &rng);
    free(th);
    printf("threads: %d threads, %ld ops, %ld cross-thread frees, %ld big allocations\n", nthreads,
           atomic_load(&total_ops), atomic_load(&remote_frees), atomic_load(&big_allocs));
    return rs_summary("threads");
}
