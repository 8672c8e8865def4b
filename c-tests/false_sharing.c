/* false_sharing.c: small blocks of different threads never share a cache line.
 *  - passive: the main thread allocates small blocks back to back and hands one to each
 *    thread; each thread frees its block, then allocates blocks of the same size. None of
 *    them may be on a cache line holding another thread's block (Hoard's cache-scratch).
 *  - active: threads allocating small blocks at the same time get blocks on disjoint
 *    cache lines.
 *  - after exits: with 6 arenas (the test re-executes itself with RSMALLOC_ARENAS=6),
 *    threads that start one after another once the others exited never share the main
 *    thread's arena (round robin would hand it out every 6th thread), so their blocks
 *    cannot share its spans.
 *  - shared arena: with RSMALLOC_ARENAS=1 (a second re-execution) every thread takes blocks
 *    from the same spans. One thread frees every other block it holds and trims (the spans
 *    then have a free block in every pair); another thread allocating meanwhile must not get
 *    a block on a line of the first one's live blocks. */
#include "common.h"

#include <pthread.h>

#define NT 4
#define LINE 64
#define PER 64

struct arg {
    void *handed;         /* allocated by main, freed by the thread */
    uintptr_t got[PER];   /* what the thread allocated afterwards */
};

static pthread_barrier_t bar;

static void *worker(void *p)
{
    struct arg *a = p;
    free(a->handed);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < PER; i++) {
        void *q = malloc(8);
        if (!q) { FAILF("malloc(8) failed"); break; }
        memset(q, 1, 8);
        a->got[i] = (uintptr_t)q;
    }
    pthread_barrier_wait(&bar); /* everyone holds its blocks: compare lines */
    pthread_barrier_wait(&bar);
    for (int i = 0; i < PER; i++) free((void *)a->got[i]);
    return NULL;
}

/* A thread's 72-byte block lies in the 16 KiB page of the main thread's only if the two
 * threads share an arena: a span of that class is one page, and a span belongs to one
 * arena (the thread would take its block from main's partly used span). */
static void *passing(void *p)
{
    void *q = malloc(72);
    *(uintptr_t *)p = (uintptr_t)q;
    free(q);
    return NULL;
}

static void after_exits(void)
{
    void *m = malloc(72);
    int shared = 0;
    for (int i = 0; i < 12; i++) {
        uintptr_t got = 0;
        pthread_t p;
        pthread_create(&p, NULL, passing, &got);
        pthread_join(p, NULL);
        if (got >> 14 == (uintptr_t)m >> 14) shared++;
    }
    CHECK(shared == 0, "%d of 12 short-lived threads (one at a time, 6 arenas) shared the main thread's arena while others were unused", shared);
    free(m);
}

#define HELD 256
static uintptr_t held[HELD], taken[HELD / 2];
static size_t shared_size;

static void *holder(void *p)
{
    (void)p;
    for (int i = 0; i < HELD; i++) {
        held[i] = (uintptr_t)malloc(shared_size);
        if (!held[i]) FAILF("malloc(%zu) failed", shared_size);
    }
    for (int i = 1; i < HELD; i += 2) {
        free((void *)held[i]);
        held[i] = 0;
    }
    malloc_trim(0); /* this thread's cached blocks go back to their spans */
    pthread_barrier_wait(&bar); /* the taker allocates now */
    pthread_barrier_wait(&bar); /* main compares */
    pthread_barrier_wait(&bar);
    for (int i = 0; i < HELD; i += 2) free((void *)held[i]);
    return NULL;
}

static void *taker(void *p)
{
    (void)p;
    pthread_barrier_wait(&bar);
    for (int i = 0; i < HELD / 2; i++) {
        taken[i] = (uintptr_t)malloc(shared_size);
        if (!taken[i]) FAILF("malloc(%zu) failed", shared_size);
        else memset((void *)taken[i], 2, shared_size);
    }
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < HELD / 2; i++) free((void *)taken[i]);
    return NULL;
}

static void shared_arena(void)
{
    static const size_t sizes[] = {8, 40, 96, 200};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        shared_size = sizes[s];
        pthread_barrier_init(&bar, NULL, 3);
        pthread_t h, t;
        pthread_create(&h, NULL, holder, NULL);
        pthread_create(&t, NULL, taker, NULL);
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar);
        int shared = 0;
        for (int i = 0; i < HELD / 2; i++)
            for (int j = 0; j < HELD; j += 2) {
                /* the lines of whole blocks (their usable sizes), first to last */
                uintptr_t a = taken[i], b = held[j];
                uintptr_t a_end = a + malloc_usable_size((void *)a) - 1;
                uintptr_t b_end = b + malloc_usable_size((void *)b) - 1;
                if (a / LINE <= b_end / LINE && b / LINE <= a_end / LINE)
                    shared++;
            }
        CHECK(shared == 0, "%d blocks of %zu bytes share a cache line with another thread's (one arena)", shared, shared_size);
        pthread_barrier_wait(&bar);
        pthread_join(h, NULL);
        pthread_join(t, NULL);
        pthread_barrier_destroy(&bar);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *arenas = getenv("RSMALLOC_ARENAS");
    if (!arenas) {
        setenv("RSMALLOC_ARENAS", "6", 1);
        execv("/proc/self/exe", argv);
        FAILF("execv(/proc/self/exe) failed");
    }
    if (strcmp(arenas, "1") == 0) {
        rs_check_loaded("false_sharing (one arena)");
        shared_arena();
        return rs_summary("false_sharing (one arena)");
    }
    rs_check_loaded("false_sharing");
    struct arg args[NT];
    for (int i = 0; i < NT; i++) args[i].handed = malloc(8);
    pthread_barrier_init(&bar, NULL, NT + 1);
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, worker, &args[i]);
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    int shared = 0;
    for (int i = 0; i < NT; i++)
        for (int k = 0; k < PER; k++) {
            uintptr_t line = args[i].got[k] / LINE;
            for (int j = 0; j < NT; j++) {
                if (j == i) continue;
                /* (handed blocks are all freed by now: their memory may be anyone's) */
                for (int m = 0; m < PER; m++)
                    if (args[j].got[m] / LINE == line) shared++;
            }
        }
    CHECK(shared == 0, "%d blocks share a cache line with another thread's block", shared);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    after_exits();
    if (rs_summary("false_sharing"))
        return 1;
    setenv("RSMALLOC_ARENAS", "1", 1);
    execv("/proc/self/exe", argv);
    FAILF("execv(/proc/self/exe) failed");
    return 1;
}
