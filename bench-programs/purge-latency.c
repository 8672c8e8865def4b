/* purge-latency ROUNDS [remote]: how long a thread waits for memory while another gives
 * memory back.
 * One thread allocates 256 MiB of 1000-byte blocks and frees them all, ROUNDS times (each
 * bulk free makes the allocator purge); the main thread meanwhile mallocs and frees 64 KiB
 * blocks (page runs in rsmalloc, served under its page heap's lock) and times every malloc.
 * With "remote", the main thread instead frees every other block of each round itself while
 * the other thread frees the rest: remote frees into an arena that empties and purges, each
 * one timed.
 * Prints the number of calls timed, the slowest, and how many took longer than 0.2 ms. Not
 * a benchmark of the table: a probe for lock hold times (run it with LD_PRELOAD). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int stop;
static int rounds = 12;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *bulk(void *x) {
    (void)x;
    int n = 256 * 1024;
    void **v = malloc(sizeof(void *) * (size_t)n);
    if (!v) abort();
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            v[i] = malloc(1000);
            if (!v[i]) abort();
            memset(v[i], i, 64);
        }
        for (int i = 0; i < n; i++) free(v[i]);
    }
    free(v);
    atomic_store(&stop, 1);
    return NULL;
}

static void **blocks;
static int nblocks = 256 * 1024;
static pthread_barrier_t bar;

static void *bulk_remote(void *x) {
    (void)x;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < nblocks; i++) {
            blocks[i] = malloc(1000);
            if (!blocks[i]) abort();
            memset(blocks[i], i, 64);
        }
        pthread_barrier_wait(&bar);
        for (int i = 0; i < nblocks; i += 2) free(blocks[i]);
        pthread_barrier_wait(&bar);
    }
    return NULL;
}

static int remote(void) {
    blocks = malloc(sizeof(void *) * (size_t)nblocks);
    if (!blocks) abort();
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, bulk_remote, NULL);
    double worst = 0;
    long count = 0, slow = 0;
    for (int r = 0; r < rounds; r++) {
        pthread_barrier_wait(&bar);
        for (int i = 1; i < nblocks; i += 2) {
            double a = now();
            free(blocks[i]);
            double b = now();
            if (b - a > worst) worst = b - a;
            if (b - a > 2e-4) slow++;
            count++;
        }
        pthread_barrier_wait(&bar);
    }
    pthread_join(t, NULL);
    free(blocks);
    printf("purge-latency remote frees=%ld slowest_ms=%.3f over_0.2ms=%ld\n", count, worst * 1e3, slow);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atoi(argv[1]);
    if (argc > 2 && strcmp(argv[2], "remote") == 0) return remote();
    pthread_t t;
    pthread_create(&t, NULL, bulk, NULL);
    double worst = 0;
    long count = 0, slow = 0;
    while (!atomic_load(&stop)) {
        double a = now();
        char *volatile p = malloc(65536);
        double b = now();
        if (!p) abort();
        p[0] = 1;
        free(p);
        if (b - a > worst) worst = b - a;
        if (b - a > 2e-4) slow++;
        count++;
    }
    pthread_join(t, NULL);
    printf("purge-latency mallocs=%ld slowest_ms=%.3f over_0.2ms=%ld\n", count, worst * 1e3, slow);
    return 0;
}
