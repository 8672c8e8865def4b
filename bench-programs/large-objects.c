/* large-objects: blocks of 64 KiB..32 MiB. Item ids 0..N-1 are split over the
 * T threads. For each item: malloc a block of 64 KiB..1 MiB, write one byte
 * per 4 KiB page, grow it 0..5 times by doubling with realloc (capped at
 * 32 MiB), checking after each realloc that the old pages kept their content
 * and touching the new pages; the block then replaces one of 4 live blocks of
 * the thread (the displaced one is checksummed by reading a byte per page and
 * freed). Checksum: sum over items of the final size and the bytes read. */
#include "common.h"

#define DEFAULT_N 700L
#define LIVE 4
#define PAGE 4096
#define MAXSZ ((size_t)32 << 20)

typedef struct { uint64_t id; size_t size; } hdr_t;
typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static inline uint8_t page_byte(uint64_t id, size_t pg) { return (uint8_t)(mix64(id) + pg * 7); }

static void touch(uint8_t *b, uint64_t id, size_t from, size_t to) {
    for (size_t o = from; o < to; o += PAGE) b[o + 64] = page_byte(id, o / PAGE);
}
static uint64_t check(const uint8_t *b, uint64_t id, size_t upto) {
    uint64_t s = 0;
    for (size_t o = 0; o < upto; o += PAGE) {
        uint8_t v = b[o + 64];
        if (v != page_byte(id, o / PAGE)) die_corrupt("large-objects", "page content lost", id);
        s += v;
    }
    return s;
}

static uint64_t retire(uint8_t *b) {
    hdr_t *h = (hdr_t *)b;
    uint64_t id = h->id;
    size_t sz = h->size;
    uint64_t s = check(b, id, sz) + sz;
    free(b);
    return s;
}

static void *worker(void *p) {
    arg_t *a = p;
    long lo, hi;
    split_range(a->n, a->nthreads, a->id, &lo, &hi);
    uint8_t *live[LIVE] = { 0 };
    uint64_t sum = 0;
    for (long i = lo; i < hi; i++) {
        uint64_t id = (uint64_t)i, h = mix64(id + 12345);
        size_t sz = ((size_t)64 << 10) << (h % 5);           /* 64K..1M */
        sz += (size_t)((h >> 8) % (sz / PAGE)) * PAGE / 2;     /* jitter */
        int grows = (int)((h >> 24) % 6);
        uint8_t *b = xmalloc(sz);
        touch(b, id, 0, sz);
        for (int g = 0; g < grows && sz < MAXSZ; g++) {
            size_t nsz = sz * 2 > MAXSZ ? MAXSZ : sz * 2;
            b = xrealloc(b, nsz);
            sum += check(b, id, sz);
            touch(b, id, sz - sz % PAGE, nsz);
            sz = nsz;
        }
        ((hdr_t *)b)->id = id;
        ((hdr_t *)b)->size = sz;
        size_t j = (h >> 32) % LIVE;
        if (live[j]) sum += retire(live[j]);
        live[j] = b;
    }
    for (int j = 0; j < LIVE; j++) if (live[j]) sum += retire(live[j]);
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
    print_result("large-objects", t, n, sum);
    free(args);
    return 0;
}
