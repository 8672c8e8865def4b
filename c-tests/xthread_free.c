/* xthread_free.c: blocks allocated by threads that have already exited are freed and
 * reallocated by other threads (main and a second generation of threads), over all size
 * ranges; every block's contents are verified first. Repeated for several generations so
 * that an allocator that frees a dead thread's heap too early, or never reuses it, shows. */
#include "common.h"

#include <pthread.h>

#define NPROD 8
#define PER 4000
#define GENS 6

struct batch {
    void *p[PER];
    size_t n[PER];
    uint64_t tag[PER];
    int id;
};

static size_t pick(uint64_t *rng)
{
    uint64_t r = rs_rand(rng);
    if (r % 400 == 0) return (1 << 20) + (r >> 30) % (3 << 20);
    return 1 + (rs_rand(rng) & ((1ULL << ((r >> 8) % 16)) - 1));
}

static void *producer(void *arg)
{
    struct batch *b = arg;
    uint64_t rng = rs_mix(b->id) | 1;
    for (int i = 0; i < PER; i++) {
        size_t n = pick(&rng);
        void *p;
        if (i % 5 == 4) {
            if (posix_memalign(&p, 64 << (i % 7), n)) p = NULL;
        } else
            p = (i % 5 == 3) ? calloc(1, n) : malloc(n);
        if (!p) {
            FAILF("producer %d: alloc(%zu) failed", b->id, n);
            b->p[i] = NULL;
            continue;
        }
        b->p[i] = p;
        b->n[i] = n;
        b->tag[i] = rs_mix((uintptr_t)p + b->id);
        rs_fill(p, n, b->tag[i]);
    }
    return NULL;
}

/* Consumes a batch of a dead producer: verifies, reallocs some, frees all. */
static void consume(struct batch *b, int stride, int offset)
{
    for (int i = offset; i < PER; i += stride) {
        void *p = b->p[i];
        if (!p) continue;
        size_t bad = rs_verify(p, b->n[i], b->tag[i]);
        if (bad != (size_t)-1)
            FAILF("block %p (size %zu) of exited thread %d corrupted at offset %zu", p, b->n[i], b->id, bad);
        else
            atomic_fetch_add(&rs_checks, 1);
        if (i % 3 == 0) {
            size_t nn = b->n[i] * 2 + 7;
            void *q = realloc(p, nn);
            if (!q) {
                FAILF("realloc(%zu) of a dead thread's block failed", nn);
                free(p);
            } else {
                if (rs_verify(q, b->n[i], b->tag[i]) != (size_t)-1)
                    FAILF("realloc of dead thread's block lost contents");
                free(q);
            }
        } else
            free(p);
        b->p[i] = NULL;
    }
}

struct cons_arg {
    struct batch *b;
    int count;
};

static void *consumer(void *arg)
{
    struct cons_arg *c = arg;
    for (int k = 0; k < c->count; k++) consume(&c->b[k], 2, 1); /* odd indices */
    return NULL;
}

int main(void)
{
    rs_check_loaded("xthread_free");
    struct batch *b = calloc(NPROD, sizeof *b);
    long rss_first = 0;
    for (int g = 0; g < GENS; g++) {
        pthread_t th[NPROD];
        for (int i = 0; i < NPROD; i++) {
            b[i].id = g * 100 + i;
            pthread_create(&th[i], NULL, producer, &b[i]);
        }
        for (int i = 0; i < NPROD; i++) pthread_join(th[i], NULL); /* producers are gone now */
        /* half the blocks: freed by two fresh threads, half: by main */
        pthread_t c[2];
        struct cons_arg ca[2] = {{b, NPROD / 2}, {b + NPROD / 2, NPROD / 2}};
        for (int i = 0; i < 2; i++) pthread_create(&c[i], NULL, consumer, &ca[i]);
        for (int i = 0; i < NPROD; i++) consume(&b[i], 2, 0);
        for (int i = 0; i < 2; i++) pthread_join(c[i], NULL);
        long rss = rs_rss_bytes();
        if (g == 1) rss_first = rss;
        printf("xthread_free: generation %d done, rss %.1f MiB\n", g, rss / 1048576.0);
    }
    long rss = rs_rss_bytes();
    CHECK(rss - rss_first < (128L << 20), "rss grew from %.1f to %.1f MiB over generations",
          rss_first / 1048576.0, rss / 1048576.0);
    free(b);
    return rs_summary("xthread_free");
}
