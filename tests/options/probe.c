/* Probe for scripts/options-test.sh: runs a small workload and prints rsmalloc's counters.
 *   probe counters      4 threads of malloc/free churn, then "refills=N flushes=N threads=N"
 *   probe trim          a huge block freed, then RSS before/after malloc_trim and its result
 *   probe info          malloc_info(0, stdout) */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../include/rsmalloc.h"

static long rss_kib(void) {
    long a = 0, b = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &a, &b) != 2) return -1;
    fclose(f);
    return b * 4;
}

static void *churn(void *arg) {
    (void)arg;
    void *v[512];
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 512; i++) { v[i] = malloc(16 + (i * 37) % 2000); memset(v[i], i, 16); }
        for (int i = 0; i < 512; i++) free(v[i]);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "counters";
    if (!strcmp(mode, "counters")) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, churn, NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        struct rsmalloc_stats s;
        if (rsmalloc_stats(&s) != 0) return 1;
        printf("refills=%zu flushes=%zu mapped=%zu\n", s.cache_refills, s.cache_flushes, s.mapped);
        malloc_stats();
        return 0;
    }
    if (!strcmp(mode, "trim")) {
        /* One buffer freed after it was allocated: the huge heap keeps its pages for the
         * next one (several freed in a row would go back at once, leaving nothing to trim).
         * The volatile store keeps the compiler from removing the malloc/free pair. */
        enum { SZ = 12 << 20 };
        static void *volatile sink;
        sink = malloc(SZ);
        memset(sink, 1, SZ);
        free(sink);
        long before = rss_kib();
        int r = malloc_trim(0);
        long after = rss_kib();
        printf("before=%ld after=%ld trim=%d\n", before, after, r);
        return 0;
    }
    if (!strcmp(mode, "info")) {
        void *p = malloc(100);
        int r = malloc_info(0, stdout);
        free(p);
        struct mallinfo2 mi = mallinfo2();
        printf("malloc_info=%d mallinfo2.arena=%zu\n", r, mi.arena);
        return 0;
    }
    return 2;
}
