/* reverse-free: blocks are freed in the reverse order of their allocation.
 * Block ids 0..N-1 are split over the T threads; each thread allocates its
 * blocks in batches of 4096 (16..527 bytes, the id written at the start and a
 * fill byte at the end), then frees each batch from the last block to the
 * first, checking and summing what it reads. Checksum: sum over blocks of a
 * hash of the id plus the last byte. */
#include "common.h"

#define DEFAULT_N 22000000L
#define BATCH 4096

typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static inline size_t blk_size(uint64_t id) { return 16 + (size_t)(mix64(id) % 512); }

static void *worker(void *p) {
    arg_t *a = p;
    long lo, hi;
    split_range(a->n, a->nthreads, a->id, &lo, &hi);
    uint64_t **batch = xmalloc(sizeof(uint64_t *) * BATCH);
    uint64_t sum = 0;
    for (long start = lo; start < hi; start += BATCH) {
        long cnt = hi - start < BATCH ? hi - start : BATCH;
        for (long k = 0; k < cnt; k++) {
            uint64_t id = (uint64_t)(start + k);
            size_t sz = blk_size(id);
            uint64_t *b = xmalloc(sz);
            b[0] = id;
            ((uint8_t *)b)[sz - 1] = (uint8_t)id;
            batch[k] = b;
        }
        for (long k = cnt - 1; k >= 0; k--) {
            uint64_t *b = batch[k];
            uint64_t id = b[0];
            if (id != (uint64_t)(start + k)) die_corrupt("reverse-free", "bad id", (uint64_t)(start + k));
            uint8_t last = ((uint8_t *)b)[blk_size(id) - 1];
            if (last != (uint8_t)id) die_corrupt("reverse-free", "bad tail byte", id);
            sum += mix64(id) + last;
            free(b);
        }
    }
    free(batch);
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
    print_result("reverse-free", t, n, sum);
    free(args);
    return 0;
}
