/* prodcons-live [PAIRS [N [QCAP]]]: memory of the producer/consumer pattern against its
 * live bytes. PAIRS producer threads (default 1) each send N/PAIRS messages (default N
 * 4000000) of 8..519 bytes to their consumer through a ring of QCAP entries (default 65536,
 * about 17 MB of messages in flight per pair when the ring is full); the consumer keeps the
 * ring at least half full, and every free is remote.
 * The main thread samples, every 0.5 ms, the resident set (/proc/self/statm) and the bytes
 * live in messages (produced minus consumed; read in that order, so the figure never
 * exceeds the true count). Prints the peak live bytes, the peak growth of the resident set
 * over its size before the threads started, and their ratio: an allocator that holds on to
 * remotely freed blocks (a consumer's cache growing, blocks stranded in the producer's
 * spans) shows a ratio well above 1. Not a benchmark of the table: a probe (run it with
 * LD_PRELOAD). */
#include "common.h"

#include <fcntl.h>
#include <unistd.h>

typedef struct {
    spsc_t q;
    long n;
    _Alignas(64) _Atomic long produced;
    _Alignas(64) _Atomic long consumed;
    _Alignas(64) uint64_t sum;
} pair_t;

static atomic_int running;

static size_t msg_size(uint64_t id) { return 8 + (size_t)(mix64(id) % 512); }

static void *producer(void *p) {
    pair_t *a = p;
    long bytes = 0;
    for (long i = 0; i < a->n; i++) {
        size_t sz = msg_size((uint64_t)i);
        uint64_t *m = xmalloc(sz);
        memset(m, (int)(i & 0xff) | 1, sz);
        m[0] = (uint64_t)i;
        bytes += (long)sz;
        atomic_store_explicit(&a->produced, bytes, memory_order_release);
        while (!spsc_push(&a->q, m)) sched_yield();
    }
    return NULL;
}

static void *consumer(void *p) {
    pair_t *a = p;
    long bytes = 0;
    uint64_t sum = 0;
    for (long i = 0; i < a->n; i++) {
        uint64_t *m;
        /* Keep the ring at least half full while the producer still sends: the live bytes
         * stay near their peak for the whole run instead of depending on which thread is
         * faster. */
        while (i < a->n - (long)(a->q.cap / 2) &&
               atomic_load_explicit(&a->q.tail, memory_order_acquire) -
                       atomic_load_explicit(&a->q.head, memory_order_relaxed) < a->q.cap / 2)
            sched_yield();
        while (!(m = spsc_pop(&a->q))) sched_yield();
        if (m[0] != (uint64_t)i) die_corrupt("prodcons-live", "message out of order", (uint64_t)i);
        size_t sz = msg_size((uint64_t)i);
        sum += ((const uint8_t *)m)[sz - 1];
        free(m);
        bytes += (long)sz;
        atomic_store_explicit(&a->consumed, bytes, memory_order_release);
    }
    a->sum = sum;
    atomic_fetch_sub(&running, 1);
    return NULL;
}

static long rss_bytes(void) {
    char b[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t k = read(fd, b, sizeof b - 1);
    close(fd);
    b[k > 0 ? k : 0] = 0;
    long size = 0, res = 0;
    sscanf(b, "%ld %ld", &size, &res);
    return res * sysconf(_SC_PAGESIZE);
}

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 1;
    long n = argc > 2 ? atol(argv[2]) : 4000000;
    size_t qcap = argc > 3 ? (size_t)atol(argv[3]) : 65536;
    if (pairs < 1 || n < 1 || qcap < 2) { fprintf(stderr, "usage: prodcons-live [PAIRS [N [QCAP]]]\n"); return 2; }
    pair_t *pr = aligned_alloc(64, sizeof(pair_t) * (size_t)pairs);
    if (!pr) abort();
    memset(pr, 0, sizeof(pair_t) * (size_t)pairs);
    pthread_t *th = xmalloc(sizeof(pthread_t) * (size_t)pairs * 2);
    for (int k = 0; k < pairs; k++) {
        spsc_init(&pr[k].q, pow2_at_least(qcap));
        memset(pr[k].q.buf, 0, sizeof(void *) * pow2_at_least(qcap));
        pr[k].n = n / pairs;
    }
    long rss0 = rss_bytes();
    atomic_store(&running, pairs);
    for (int k = 0; k < pairs; k++) {
        if (pthread_create(&th[2 * k], NULL, consumer, &pr[k]) ||
            pthread_create(&th[2 * k + 1], NULL, producer, &pr[k])) { perror("pthread_create"); return 1; }
    }
    long peak_live = 0, peak_rss = rss0;
    while (atomic_load(&running) > 0) {
        long live = 0;
        for (int k = 0; k < pairs; k++) {
            long made = atomic_load_explicit(&pr[k].produced, memory_order_acquire);
            live += made - atomic_load_explicit(&pr[k].consumed, memory_order_acquire);
        }
        long r = rss_bytes();
        if (live > peak_live) peak_live = live;
        if (r > peak_rss) peak_rss = r;
        usleep(500);
    }
    uint64_t sum = 0;
    for (int k = 0; k < 2 * pairs; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < pairs; k++) { sum += pr[k].sum; free(pr[k].q.buf); }
    double mb = 1024.0 * 1024.0;
    printf("prodcons-live pairs=%d n=%ld qcap=%zu peak_live_mb=%.1f rss_growth_mb=%.1f ratio=%.2f (checksum %llu)\n",
           pairs, n, pow2_at_least(qcap), peak_live / mb, (peak_rss - rss0) / mb,
           peak_live > 0 ? (double)(peak_rss - rss0) / (double)peak_live : 0.0, (unsigned long long)sum);
    free(pr); free(th);
    return 0;
}
