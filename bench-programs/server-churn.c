/* server-churn: a server-like mix of block sizes (15/16 of them 16 B..4 KiB,
 * 1/16 of them 4 KiB..64 KiB, log-uniform) with a working set per thread.
 * Item ids 0..N-1 are split over the T threads. For each item the thread
 * allocates a block, writes all of it (a header with the id plus a fill byte
 * derived from the id) and stores it in a slot of its working set (1024 slots);
 * the block it displaces is either verified and freed locally or passed into
 * a slot of a shared exchange table (4096 atomic slots), and the block it
 * displaces there - allocated by any thread - is verified and freed by this
 * thread, so with T > 1 most frees of exchanged blocks are remote.
 * Every item is verified and freed exactly once; checksum: sum over items of
 * a hash of the id, the size and the bytes read (one per cache line). */
#include "common.h"

#define DEFAULT_N 4500000L
#define LOCAL_SLOTS 1024
#define SHARED_SLOTS 4096

typedef struct { uint64_t id, size; } hdr_t;
static _Atomic(hdr_t *) shared_slots[SHARED_SLOTS];

static size_t item_size(uint64_t id) {
    uint64_t h = mix64(id * 2 + 1);
    size_t lo;
    if ((h & 15) == 0) lo = (size_t)4096 << ((h >> 8) % 4);   /* 4K..32K base */
    else lo = (size_t)16 << ((h >> 8) % 8);                  /* 16..2048 base */
    return lo + (size_t)((h >> 16) % lo);                    /* [lo, 2lo) */
}
static inline uint8_t fill_byte(uint64_t id) { return (uint8_t)(mix64(id) >> 56) | 1; }

static hdr_t *make(uint64_t id) {
    size_t sz = item_size(id);
    hdr_t *b = xmalloc(sz);
    memset(b, fill_byte(id), sz);
    b->id = id;
    b->size = sz;
    return b;
}

static uint64_t check_free(hdr_t *b) {
    uint64_t id = b->id;
    size_t sz = b->size;
    if (sz != item_size(id)) die_corrupt("server-churn", "bad size in header", id);
    const uint8_t *c = (const uint8_t *)b;
    uint8_t f = fill_byte(id);
    uint64_t s = 0;
    for (size_t o = sizeof(hdr_t); o < sz; o += 64) s += c[o];
    if (sz > sizeof(hdr_t) && (c[sz - 1] != f || c[sizeof(hdr_t)] != f))
        die_corrupt("server-churn", "bad fill byte", id);
    s += c[sz - 1];
    free(b);
    return mix64(id ^ (sz << 40)) + s;
}

typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static void *worker(void *p) {
    arg_t *a = p;
    long lo, hi;
    split_range(a->n, a->nthreads, a->id, &lo, &hi);
    hdr_t **local = calloc(LOCAL_SLOTS, sizeof(hdr_t *));
    if (!local) abort();
    uint64_t sum = 0;
    for (long i = lo; i < hi; i++) {
        uint64_t id = (uint64_t)i, h = mix64(id ^ 0xabcdef);
        hdr_t *b = make(id);
        size_t j = h % LOCAL_SLOTS;
        hdr_t *old = local[j];
        local[j] = b;
        if (!old) continue;
        if ((h >> 20) & 1) {
            hdr_t *x = atomic_exchange(&shared_slots[(h >> 32) % SHARED_SLOTS], old);
            if (x) sum += check_free(x);
        } else {
            sum += check_free(old);
        }
    }
    for (size_t j = 0; j < LOCAL_SLOTS; j++) if (local[j]) sum += check_free(local[j]);
    free(local);
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
    for (size_t j = 0; j < SHARED_SLOTS; j++) {
        hdr_t *x = atomic_load(&shared_slots[j]);
        if (x) sum += check_free(x);
    }
    print_result("server-churn", t, n, sum);
    free(args);
    return 0;
}
