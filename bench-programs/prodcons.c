/* prodcons: P = max(1, T/2) producer threads and the same number of consumer
 * threads: T=1 and T=2 both run 1 producer + 1 consumer, T=8 runs 4 + 4, and
 * an odd T > 1 is rounded down to pairs (T=3 runs 1 + 1).
 * Producer k sends its share of the N messages to consumer k through a
 * bounded single-producer/single-consumer ring (1024 entries). Messages are
 * 8..519 bytes, filled with a byte derived from the message id; the consumer
 * verifies, checksums and frees them, so every free is remote.
 * Checksum: sum over messages of a hash of the id plus the bytes read. */
#include "common.h"

#define DEFAULT_N 1200000L
#define QCAP 1024

typedef struct { spsc_t q; int k, pairs; long n; uint64_t sum; } pair_t;

static size_t msg_size(uint64_t id) { return 8 + (size_t)(mix64(id) % 512); }
static inline uint8_t fill_byte(uint64_t id) { return (uint8_t)(id * 0x9d) | 1; }

static void *producer(void *p) {
    pair_t *a = p;
    long lo, hi;
    split_range(a->n, a->pairs, a->k, &lo, &hi);
    for (long i = lo; i < hi; i++) {
        uint64_t id = (uint64_t)i;
        size_t sz = msg_size(id);
        uint64_t *m = xmalloc(sz);
        memset(m, fill_byte(id), sz);
        m[0] = id;
        while (!spsc_push(&a->q, m)) sched_yield();
    }
    return NULL;
}

static void *consumer(void *p) {
    pair_t *a = p;
    long lo, hi;
    split_range(a->n, a->pairs, a->k, &lo, &hi);
    uint64_t sum = 0;
    for (long i = lo; i < hi; i++) {
        uint64_t *m;
        while (!(m = spsc_pop(&a->q))) sched_yield();
        uint64_t id = m[0];
        if (id != (uint64_t)i) die_corrupt("prodcons", "message out of order / corrupted id", (uint64_t)i);
        size_t sz = msg_size(id);
        const uint8_t *c = (const uint8_t *)m;
        uint64_t s = 0;
        for (size_t o = 8; o < sz; o += 16) s += c[o];
        if (sz > 8 && c[sz - 1] != fill_byte(id)) die_corrupt("prodcons", "bad fill byte", id);
        sum += mix64(id) + s;
        free(m);
    }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int t; long n;
    bench_args(argc, argv, DEFAULT_N, &t, &n);
    int pairs = t / 2 > 0 ? t / 2 : 1;
    pair_t *pr = xmalloc(sizeof(pair_t) * (size_t)pairs);
    pthread_t *th = xmalloc(sizeof(pthread_t) * (size_t)pairs * 2);
    for (int k = 0; k < pairs; k++) {
        spsc_init(&pr[k].q, QCAP);
        pr[k].k = k; pr[k].pairs = pairs; pr[k].n = n; pr[k].sum = 0;
    }
    for (int k = 0; k < pairs; k++) {
        if (pthread_create(&th[2 * k], NULL, consumer, &pr[k]) ||
            pthread_create(&th[2 * k + 1], NULL, producer, &pr[k])) { perror("pthread_create"); return 1; }
    }
    uint64_t sum = 0;
    for (int k = 0; k < 2 * pairs; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < pairs; k++) { sum += pr[k].sum; free(pr[k].q.buf); }
    print_result("prodcons", t, n, sum);
    free(pr); free(th);
    return 0;
}
