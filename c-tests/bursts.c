/* bursts.c: allocation bursts larger than a thread cache's stack, freed in reverse, forward
 * and scrambled order, on several threads at once, with blocks handed between threads in
 * between. Thread-cache stacks grow (and move) for such bursts and shrink back when a thread
 * frees more than it allocates; every block must keep its contents through all of it, the
 * allocator's own invariant walk (rsmalloc_check) must pass after each round, and once
 * everything is freed the memory must go back. */
#include "common.h"

#include <dlfcn.h>
#include <pthread.h>

#define NT 4
#define BURST 3000
#define ROUNDS 40
#define MiB (1L << 20)

typedef int (*check_fn)(void);
static check_fn check;

struct arg {
    int id;
    void *p[BURST];
    size_t n[BURST];
    void *handoff[BURST / 4]; /* blocks from the next thread, freed here */
    size_t nhand;
};

static struct arg args[NT];
static pthread_barrier_t bar;

static void *worker(void *v)
{
    struct arg *a = v;
    uint64_t rng = rs_mix(a->id) | 1;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BURST; i++) {
            a->n[i] = 16 + rs_rand(&rng) % 600;
            a->p[i] = malloc(a->n[i]);
            if (!a->p[i]) { FAILF("malloc(%zu) failed", a->n[i]); return NULL; }
            rs_fill(a->p[i], a->n[i], (uint64_t)a->id << 32 | (uint64_t)r << 16 | (uint64_t)i);
        }
        for (int k = 0; k < BURST; k++) {
            int i = r % 3 == 0 ? BURST - 1 - k : r % 3 == 1 ? k : (int)((k * 7919L) % BURST);
            size_t bad = rs_verify(a->p[i], a->n[i], (uint64_t)a->id << 32 | (uint64_t)r << 16 | (uint64_t)i);
            CHECK(bad == (size_t)-1, "thread %d round %d block %d: byte %zu changed", a->id, r, i, bad);
            if (r % 4 == 3 && k % 4 == 0 && a->nhand < BURST / 4) {
                a->handoff[a->nhand++] = a->p[i]; /* freed by the previous thread */
            } else {
                free(a->p[i]);
            }
        }
        check();
        pthread_barrier_wait(&bar);
        /* free what the next thread handed over (remote frees into a grown cache) */
        struct arg *from = &args[(a->id + 1) % NT];
        for (size_t i = 0; i < from->nhand; i++) free(from->handoff[i]);
        pthread_barrier_wait(&bar);
        from->nhand = 0;
        pthread_barrier_wait(&bar);
    }
    return NULL;
}

int main(void)
{
    rs_check_loaded("bursts");
    check = (check_fn)dlsym(RTLD_DEFAULT, "rsmalloc_check");
    if (!check) { FAILF("rsmalloc_check not found"); return rs_summary("bursts"); }
    long rss0 = rs_rss_bytes();
    pthread_barrier_init(&bar, NULL, NT);
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) {
        args[i].id = i;
        args[i].nhand = 0;
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    check();
    sleep(1);
    long rss = rs_rss_bytes();
    CHECK(rss <= rss0 + 16 * MiB, "resident %.1f MiB after everything was freed (start %.1f MiB)",
          rss / (double)MiB, rss0 / (double)MiB);
    return rs_summary("bursts");
}
