/* huge_threads.c: 4 threads allocate, reallocate and free huge blocks (1..4 MiB, each with a
 * mapping of its own) and some large/small ones concurrently, verifying contents; blocks are
 * also freed by other threads. Targets races in the huge-object path (mapping cache,
 * registration of mappings in the page map while other threads map and unmap) that
 * single-threaded tests cannot see: e.g. a mapping of 4 MiB + 4 KiB shrunk by realloc while
 * another thread maps a fresh object in the unit it leaves. Bounded to ~3 s (RS_SECONDS). */
#include "common.h"

#include <pthread.h>

#define NT 4
#define K 32

struct blk {
    void *p;
    size_t n;
    uint64_t tag;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct blk pool[64];
static int npool;
static double deadline;
static atomic_long nops;

static size_t pick(uint64_t *rng)
{
    uint64_t r = rs_rand(rng);
    switch (r % 8) {
    case 0: return 1 + (r >> 16) % 300000;
    case 1: return 1 + (r >> 16) % 4000; /* shrinks a huge block to (almost) nothing */
    case 2: case 3: /* a mapping of 4 MiB + a few pages: it reaches into the next 4 MiB unit */
        return (4 << 20) - 4096 + 1 + (r >> 16) % 16384;
    default: return (1 << 20) + (r >> 16) % (3 << 20);
    }
}

/* Pattern over the first 8 KiB, plus the tag in the last 8 bytes and every 64 KiB: cheap for
 * multi-MiB blocks but still catches blocks that overlap or lose their contents. */
static void mark(void *p, size_t n, uint64_t tag)
{
    rs_fill(p, n < 8192 ? n : 8192, tag);
    for (size_t off = 65536; off + 16 <= n; off += 65536) memcpy((char *)p + off, &tag, 8);
    if (n >= 8192 + 8) memcpy((char *)p + n - 8, &tag, 8);
}

static size_t check(const void *p, size_t n, uint64_t tag)
{
    size_t bad = rs_verify(p, n < 8192 ? n : 8192, tag);
    if (bad != (size_t)-1) return bad;
    uint64_t w;
    for (size_t off = 65536; off + 16 <= n; off += 65536) {
        memcpy(&w, (const char *)p + off, 8);
        if (w != tag) return off;
    }
    if (n >= 8192 + 8) {
        memcpy(&w, (const char *)p + n - 8, 8);
        if (w != tag) return n - 8;
    }
    return (size_t)-1;
}

static void check_free(struct blk *b, const char *who)
{
    size_t bad = check(b->p, b->n, b->tag);
    if (bad != (size_t)-1) FAILF("%s: block %p (%zu) corrupted at %zu", who, b->p, b->n, bad);
    else atomic_fetch_add(&rs_checks, 1);
    free(b->p);
    b->p = NULL;
}

static void *worker(void *arg)
{
    uint64_t rng = rs_mix((uintptr_t)arg) | 1;
    struct blk s[K] = {{0}};
    long ops = 0;
    while (1) {
        if ((ops & 15) == 0 && rs_now() > deadline) break;
        ops++;
        struct blk *b = &s[rs_rand(&rng) % K];
        uint64_t r = rs_rand(&rng);
        if (b->p) {
            if (r % 4 == 0) {
                size_t bad = check(b->p, b->n, b->tag);
                if (bad != (size_t)-1) FAILF("block %p (%zu) corrupted at %zu", b->p, b->n, bad);
                size_t nn = pick(&rng);
                void *q = realloc(b->p, nn);
                if (!q) {
                    FAILF("realloc(%zu) failed", nn);
                    continue;
                }
                size_t keep = nn < b->n ? nn : b->n;
                if (rs_verify(q, keep < 8192 ? keep : 8192, b->tag) != (size_t)-1)
                    FAILF("realloc %zu -> %zu lost contents", b->n, nn);
                b->p = q;
                b->n = nn;
                b->tag = rs_mix((uintptr_t)q + nn);
                mark(q, nn, b->tag);
            } else if (r % 4 == 1) {
                pthread_mutex_lock(&mu);
                if (npool < 64) {
                    pool[npool++] = *b;
                    b->p = NULL;
                }
                pthread_mutex_unlock(&mu);
                if (b->p) check_free(b, "local");
            } else
                check_free(b, "local");
        } else {
            if (r % 3 == 0) {
                struct blk o = {0};
                pthread_mutex_lock(&mu);
                if (npool) o = pool[--npool];
                pthread_mutex_unlock(&mu);
                if (o.p) check_free(&o, "remote");
            }
            size_t n = pick(&rng);
            void *p = (r & 56) == 8 ? calloc(1, n) : malloc(n);
            if (!p) {
                FAILF("alloc(%zu) failed", n);
                continue;
            }
            if ((r & 56) == 8 && rs_first_nonzero(p, n) != (size_t)-1) FAILF("calloc(%zu) = %p not zeroed", n, p);
            b->p = p;
            b->n = n;
            b->tag = rs_mix((uintptr_t)p + n);
            mark(p, n, b->tag);
        }
    }
    for (int i = 0; i < K; i++)
        if (s[i].p) check_free(&s[i], "final");
    atomic_fetch_add(&nops, ops);
    return NULL;
}

int main(void)
{
    rs_check_loaded("huge_threads");
    double secs = getenv("RS_SECONDS") ? atof(getenv("RS_SECONDS")) : 3.0;
    deadline = rs_now() + secs;
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < npool; i++) check_free(&pool[i], "pool");
    printf("huge_threads: %ld operations\n", atomic_load(&nops));
    return rs_summary("huge_threads");
}
