/* small-loop: the allocator fast path alone. Iterations 0..N-1 are split over
 * the T threads; each thread runs its own loop over a ring of 64 live blocks:
 * free the block in the current ring slot (after reading its first byte) and
 * malloc a new one of 16..256 bytes (multiples of 16), writing its first byte.
 * No memory crosses threads. Checksum: sum of the bytes read. */
#include "common.h"

#define DEFAULT_N 110000000L
#define RING 64

typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static void *worker(void *p) {
    arg_t *a = p;
    long lo, hi;
    split_range(a->n, a->nthreads, a->id, &lo, &hi);
    uint8_t *ring[RING] = { 0 };
    uint64_t sum = 0;
    for (long i = lo; i < hi; i++) {
        uint64_t u = (uint64_t)i;
        size_t k = u % RING;
        if (ring[k]) { sum += ring[k][0]; free(ring[k]); }
        size_t sz = 16 + (size_t)((u * 0x9e3779b97f4a7c15ULL) >> 60) * 16;
        uint8_t *b = xmalloc(sz);
        b[0] = (uint8_t)(u * 31 + 7);
        ring[k] = b;
    }
    for (int k = 0; k < RING; k++) if (ring[k]) { sum += ring[k][0]; free(ring[k]); }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int t; long n;
    bench_args(argc, argv, DEFAULT_N, &t, &n);
    arg_t *args = xmalloc(sizeof(arg_t) * (size_t)t);
    for (int i = 0; i < t; i++) args[i] = (arg_t){ i, t, n, 0 };
    run_threads(t, worker, args, sizeof(arg_t));
    uint64_t sum = 0;
    for (int i = 0; i < t; i++) sum += args[i].sum;
    print_result("small-loop", t, n, sum);
    free(args);
    return 0;
}
