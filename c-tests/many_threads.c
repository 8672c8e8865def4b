/* many_threads.c: 10 000 short-lived threads in waves of 16. Each allocates ~200 blocks over
 * many size classes, frees most of them, and leaves 4 for the main thread to free after it
 * has exited. At the end resident memory must not have grown by more than 64 MiB over the
 * start: per-thread caches that are not reclaimed at thread exit would leak far more. */
#include "common.h"

#include <pthread.h>

#define NTHREADS 10000
#define WAVE 16
#define LEFT 4
#define PER_THREAD 200

struct arg {
    int idx;
    void *left[LEFT];
    size_t left_n[LEFT];
};

static void *thread_fn(void *vp)
{
    struct arg *a = vp;
    uint64_t rng = rs_mix(a->idx + 1) | 1;
    void *ps[PER_THREAD];
    size_t ns[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        uint64_t r = rs_rand(&rng);
        size_t n = (r % 50 == 0) ? 16384 + (r >> 40) % 50000 : 1 + (r >> 16) % 2048;
        ps[i] = (i & 7) == 0 ? calloc(1, n) : malloc(n);
        ns[i] = n;
        if (!ps[i]) {
            FAILF("thread %d: malloc(%zu) failed", a->idx, n);
            continue;
        }
        rs_fill(ps[i], n, a->idx * 1000 + i);
        if (i % 3 == 2) { /* churn: free an older one */
            int k = rs_rand(&rng) % i;
            free(ps[k]);
            ps[k] = NULL;
        }
    }
    for (int i = 0; i < PER_THREAD; i++) {
        if (!ps[i]) continue;
        if (rs_verify(ps[i], ns[i], a->idx * 1000 + i) != (size_t)-1)
            FAILF("thread %d: block %d (%p, %zu bytes) corrupted", a->idx, i, ps[i], ns[i]);
        if (i < LEFT) {
            a->left[i] = ps[i];
            a->left_n[i] = ns[i];
        } else
            free(ps[i]);
    }
    for (int i = 0; i < LEFT; i++) {
        if (ps[i]) continue;
        size_t n = 24 + i * 1000;
        a->left[i] = malloc(n);
        a->left_n[i] = n;
        if (a->left[i]) rs_fill(a->left[i], n, a->idx * 1000 + i);
    }
    return NULL;
}

int main(void)
{
    rs_check_loaded("many_threads");
    struct arg args[WAVE];
    pthread_t th[WAVE];
    long rss0 = 0, peak = 0;
    int created = 0;
    for (int w = 0; w * WAVE < NTHREADS; w++) {
        int nw = 0;
        for (int i = 0; i < WAVE && w * WAVE + i < NTHREADS; i++) {
            memset(&args[i], 0, sizeof args[i]);
            args[i].idx = w * WAVE + i;
            int e = pthread_create(&th[i], NULL, thread_fn, &args[i]);
            if (e) {
                FAILF("pthread_create #%d: %s", args[i].idx, strerror(e));
                break;
            }
            nw++;
        }
        for (int i = 0; i < nw; i++) pthread_join(th[i], NULL);
        created += nw;
        for (int i = 0; i < nw; i++)
            for (int j = 0; j < LEFT; j++) {
                void *p = args[i].left[j];
                if (!p) {
                    FAILF("thread %d left no block %d", args[i].idx, j);
                    continue;
                }
                if (rs_verify(p, args[i].left_n[j], args[i].idx * 1000 + j) != (size_t)-1)
                    FAILF("block left by thread %d corrupted", args[i].idx);
                free(p);
            }
        long rss = rs_rss_bytes();
        if (w == 1) rss0 = rss; /* baseline after two warm-up waves */
        if (rss > peak) peak = rss;
        if (w % 125 == 0) printf("many_threads: %d threads done, rss %.1f MiB\n", created, rss / 1048576.0);
    }
    long rss = rs_rss_bytes();
    printf("many_threads: %d threads, rss start %.1f MiB, end %.1f MiB, peak %.1f MiB\n", created,
           rss0 / 1048576.0, rss / 1048576.0, peak / 1048576.0);
    CHECK(created == NTHREADS, "created %d threads", created);
    CHECK(rss - rss0 < (64L << 20),
          "resident memory grew by %.1f MiB over %d threads (limit 64 MiB): thread caches leak?",
          (rss - rss0) / 1048576.0, created);
    return rs_summary("many_threads");
}
