/* purge_race.c: memory being given back while other threads allocate.
 * The page heap purges (madvise) outside its lock: the pages it purges are claimed first,
 * and empty chunks are purged before they are pooled. If a claimed page could be handed
 * out meanwhile, or a chunk reused before its purge, the purge would zero live data.
 * - two threads free tens of MiB of small blocks in bulk, over and over (bulk purges,
 *   shrinking purges, chunk releases);
 * - two threads keep large blocks (page runs of 48 KiB..400 KiB) and small blocks filled
 *   with a pattern and check them before freeing: every byte they wrote is still there;
 * - one thread calls malloc_trim(0) (purges everything) and forks now and then (the child
 *   allocates, checks and exits while purges may be in flight in the parent). */
#include "common.h"

#include <pthread.h>
#include <sys/wait.h>

#define ROUNDS 30
static atomic_int bulk_done;

static void *bulk(void *arg)
{
    const int n = 40000; /* about 24 MiB of 200..1000-byte blocks */
    unsigned char **v = malloc(sizeof *v * (size_t)n);
    if (!v) {
        FAILF("malloc of the pointer table failed");
        atomic_fetch_add(&bulk_done, 1);
        return NULL;
    }
    uint64_t seed = (uint64_t)(uintptr_t)arg;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < n; i++) {
            size_t sz = 200 + (size_t)((seed + (uint64_t)i * 7919) % 800);
            v[i] = malloc(sz);
            if (!v[i]) {
                FAILF("malloc(%zu) failed", sz);
                continue;
            }
            memset(v[i], (int)(i & 0xff) | 1, sz);
        }
        for (int i = 0; i < n; i++) {
            if (!v[i]) continue;
            CHECK(v[i][0] == ((i & 0xff) | 1), "bulk block %d changed", i);
            free(v[i]);
        }
    }
    free(v);
    atomic_fetch_add(&bulk_done, 1);
    return NULL;
}

static void *keeper(void *arg)
{
    enum { LIVE = 24 };
    unsigned char *blk[LIVE] = {0};
    size_t len[LIVE] = {0};
    uint64_t tag[LIVE] = {0};
    uint64_t k = (uint64_t)(uintptr_t)arg * 1000003u;
    while (atomic_load(&bulk_done) < 2) {
        int s = (int)(k % LIVE);
        if (blk[s]) {
            size_t bad = rs_verify(blk[s], len[s], tag[s]);
            if (bad != (size_t)-1)
                FAILF("block of %zu bytes lost its contents at byte %zu while purges ran", len[s], bad);
            else
                atomic_fetch_add(&rs_checks, 1);
            free(blk[s]);
        }
        len[s] = (k & 1) ? 48 * 1024 + (size_t)(k % 360) * 1024 : 64 + (size_t)(k % 4000);
        tag[s] = k;
        blk[s] = malloc(len[s]);
        if (!blk[s])
            FAILF("malloc(%zu) failed", len[s]);
        else
            rs_fill(blk[s], len[s], k);
        k = k * 6364136223846793005u + 1442695040888963407u;
        k ^= k >> 29;
    }
    for (int s = 0; s < LIVE; s++)
        if (blk[s]) {
            CHECK(rs_verify(blk[s], len[s], tag[s]) == (size_t)-1, "block of %zu bytes lost its contents", len[s]);
            free(blk[s]);
        }
    return NULL;
}

static void *trimmer(void *arg)
{
    int forks = 0;
    while (atomic_load(&bulk_done) < 2) {
        malloc_trim(0);
        if (forks < 8) {
            forks++;
            pid_t pid = fork();
            if (pid == 0) {
                unsigned char *p = malloc(300 * 1024);
                unsigned char *q = malloc(100);
                if (!p || !q) _exit(2);
                rs_fill(p, 300 * 1024, 9);
                rs_fill(q, 100, 10);
                malloc_trim(0);
                if (rs_verify(p, 300 * 1024, 9) != (size_t)-1 || rs_verify(q, 100, 10) != (size_t)-1) _exit(3);
                free(p);
                free(q);
                _exit(0);
            }
            if (pid < 0) {
                FAILF("fork failed");
            } else {
                int st = 0;
                waitpid(pid, &st, 0);
                CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "forked child status %#x", st);
            }
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void)
{
    rs_check_loaded("purge_race");
    pthread_t t[5];
    pthread_create(&t[0], NULL, bulk, (void *)1);
    pthread_create(&t[1], NULL, bulk, (void *)2);
    pthread_create(&t[2], NULL, keeper, (void *)3);
    pthread_create(&t[3], NULL, keeper, (void *)4);
    pthread_create(&t[4], NULL, trimmer, NULL);
    for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
    return rs_summary("purge_race");
}
