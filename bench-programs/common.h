/* Shared helpers for the rsmalloc bench programs.
 * Every program is run as `PROG THREADS [SIZE]` (or `PROG --default-size`).
 * It prints exactly one line: "<name> threads=T size=N checksum=<hex>".
 * The checksum depends only on SIZE (never on the allocator, the thread
 * count or the thread interleaving), so a run whose checksum differs from
 * glibc's is a correctness failure. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Parse `PROG THREADS [SIZE]`. `--default-size` prints the default and exits. */
static inline void bench_args(int argc, char **argv, long default_size, int *threads, long *size) {
    if (argc >= 2 && strcmp(argv[1], "--default-size") == 0) {
        printf("%ld\n", default_size);
        exit(0);
    }
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s THREADS [SIZE]   (default SIZE %ld)\n", argv[0], default_size);
        exit(2);
    }
    *threads = atoi(argv[1]);
    *size = argc == 3 ? atol(argv[2]) : default_size;
    if (*threads < 1 || *threads > 1024 || *size < 0) {
        fprintf(stderr, "%s: bad THREADS or SIZE\n", argv[0]);
        exit(2);
    }
}

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) { fprintf(stderr, "malloc(%zu) failed\n", n); abort(); }
    return p;
}

static inline void *xrealloc(void *q, size_t n) {
    void *p = realloc(q, n);
    if (!p) { fprintf(stderr, "realloc(%zu) failed\n", n); abort(); }
    return p;
}

/* Run fn(i) on threads 0..n-1 (thread 0 on a new thread too, so every
 * worker is a non-main thread like in a server). */
typedef struct { void *(*fn)(void *); void *arg; } bench_thr;
static inline void run_threads(int n, void *(*fn)(void *), void *args, size_t argsz) {
    pthread_t *t = xmalloc(sizeof(pthread_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, fn, (char *)args + argsz * (size_t)i) != 0) {
            perror("pthread_create"); exit(1);
        }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    free(t);
}

/* [lo, hi) share of `total` items for thread i of n */
static inline void split_range(long total, int n, int i, long *lo, long *hi) {
    *lo = total * i / n;
    *hi = total * (i + 1) / n;
}

static inline void print_result(const char *name, int threads, long size, uint64_t sum) {
    printf("%s threads=%d size=%ld checksum=%016llx\n", name, threads, size, (unsigned long long)sum);
    fflush(stdout);
}

static inline void die_corrupt(const char *name, const char *what, uint64_t id) {
    fprintf(stderr, "%s: CORRUPTION: %s (item %llu)\n", name, what, (unsigned long long)id);
    fflush(stderr);
    abort();
}

/* Bounded single-producer single-consumer ring of pointers. */
typedef struct {
    _Alignas(64) _Atomic size_t head;   /* consumer position */
    _Alignas(64) _Atomic size_t tail;   /* producer position */
    _Alignas(64) size_t cap;            /* power of two */
    void **buf;
} spsc_t;

static inline void spsc_init(spsc_t *q, size_t cap_pow2) {
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    q->cap = cap_pow2;
    q->buf = xmalloc(sizeof(void *) * cap_pow2);
}
static inline int spsc_push(spsc_t *q, void *p) {
    size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    size_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    if (t - h >= q->cap) return 0;
    q->buf[t & (q->cap - 1)] = p;
    atomic_store_explicit(&q->tail, t + 1, memory_order_release);
    return 1;
}
static inline void *spsc_pop(spsc_t *q) {
    size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (h == t) return NULL;
    void *p = q->buf[h & (q->cap - 1)];
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
    return p;
}
static inline size_t pow2_at_least(size_t n) { size_t c = 1; while (c < n) c <<= 1; return c; }

#endif
