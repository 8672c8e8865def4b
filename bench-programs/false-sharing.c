/* false-sharing (Hoard's cache-scratch): the main thread allocates T small
 * objects back to back and hands one to each thread; each thread frees it
 * (passive false sharing: an allocator that hands that memory back to this
 * thread lets threads share a cache line) and then repeats N/T times:
 * allocate an 8..64-byte object, write to it 256 times, free it. Fast when
 * the objects of different threads live on different cache lines, slow when
 * they share one (active false sharing) - visible with T >= 2 on >= 2 cores.
 * Checksum: sum of the final counter values (independent of interleaving). */
#include "common.h"

#define DEFAULT_N 6000000L
#define WRITES 256

typedef struct { int id, nthreads; long n; void *initial; uint64_t sum; } arg_t;

static void *worker(void *p) {
    arg_t *a = p;
    long lo, hi;
    split_range(a->n, a->nthreads, a->id, &lo, &hi);
    free(a->initial);
    uint64_t sum = 0;
    for (long i = lo; i < hi; i++) {
        size_t sz = 8 + (size_t)(i % 8) * 8;
        volatile uint64_t *o = xmalloc(sz);
        o[0] = (uint64_t)i;
        for (int w = 0; w < WRITES; w++) o[0] = o[0] * 3 + (uint64_t)w;
        sum += o[0];
        free((void *)o);
    }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int t; long n;
    bench_args(argc, argv, DEFAULT_N, &t, &n);
    arg_t *args = xmalloc(sizeof(arg_t) * (size_t)t);
    for (int i = 0; i < t; i++) args[i] = (arg_t){ i, t, n, xmalloc(8), 0 };
    run_threads(t, worker, args, sizeof(arg_t));
    uint64_t sum = 0;
    for (int i = 0; i < t; i++) sum += args[i].sum;
    print_result("false-sharing", t, n, sum);
    free(args);
    return 0;
}
