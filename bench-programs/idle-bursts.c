/* idle-bursts [THREADS [BURSTS [KIB]]]: what a pool of idle threads keeps after bursts.
 * THREADS threads (16) each allocate KIB KiB (1500) of 100..299-byte blocks and free them
 * all, BURSTS times (4; the frees of the last burst start together, after a barrier), then
 * stay alive and idle. The main thread prints the resident set before the threads start,
 * at the last burst's peak (every block live) and 1 s after the last frees. An allocator
 * that gives memory back brings "idle" near "start"; thread caches that grew with repeated
 * bursts keep part of the peak for as long as the threads stay idle (they make no call).
 * Not a benchmark of the table: a probe (run it with LD_PRELOAD). */
#include "common.h"

#include <fcntl.h>
#include <unistd.h>

static pthread_barrier_t all_live, all_freed, done;
static int bursts;
static long nblocks;

static long rss_kb(void) {
    char b[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    b[n > 0 ? n : 0] = 0;
    long pages = 0, res = 0;
    if (sscanf(b, "%ld %ld", &pages, &res) != 2) return -1;
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *worker(void *p) {
    (void)p;
    void **v = xmalloc(sizeof(void *) * (size_t)nblocks);
    for (int r = 0; r < bursts; r++) {
        for (long i = 0; i < nblocks; i++) {
            size_t sz = 100 + (size_t)(mix64((uint64_t)i) % 200);
            v[i] = xmalloc(sz);
            memset(v[i], 1, sz);
        }
        if (r == bursts - 1) pthread_barrier_wait(&all_live);
        for (long i = 0; i < nblocks; i++) free(v[i]);
    }
    free(v);
    pthread_barrier_wait(&all_freed);
    pthread_barrier_wait(&done); /* idle until the main thread has measured */
    return NULL;
}

int main(int argc, char **argv) {
    int t = argc > 1 ? atoi(argv[1]) : 16;
    bursts = argc > 2 ? atoi(argv[2]) : 4;
    long kib = argc > 3 ? atol(argv[3]) : 1500;
    if (t < 1 || t > 1024 || bursts < 1 || kib < 1) {
        fprintf(stderr, "usage: idle-bursts [THREADS [BURSTS [KIB]]]\n");
        return 2;
    }
    nblocks = kib * 1024 / 200;
    pthread_barrier_init(&all_live, NULL, (unsigned)t + 1);
    pthread_barrier_init(&all_freed, NULL, (unsigned)t + 1);
    pthread_barrier_init(&done, NULL, (unsigned)t + 1);
    long start = rss_kb();
    pthread_t *th = xmalloc(sizeof(pthread_t) * (size_t)t);
    for (int i = 0; i < t; i++)
        if (pthread_create(&th[i], NULL, worker, NULL) != 0) { perror("pthread_create"); return 1; }
    pthread_barrier_wait(&all_live);
    long peak = rss_kb();
    pthread_barrier_wait(&all_freed);
    sleep(1);
    long idle = rss_kb();
    printf("idle-bursts: threads %d bursts %d: start %ld KB, peak %ld KB, idle after 1 s %ld KB\n",
           t, bursts, start, peak, idle);
    pthread_barrier_wait(&done);
    for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
    free(th);
    return 0;
}
