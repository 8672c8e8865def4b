/* empty_heap.c: what a single-threaded program keeps after freeing everything.
 * The main thread allocates ~200 MiB of small blocks (16..512 B; some 50 chunks), frees
 * them in a scrambled order and sleeps 1 s. Its resident *anonymous* memory (statm's
 * resident minus file-backed pages: the library and program pages the run faulted in do
 * not count) may then exceed what it was before by at most 64 KiB. The chunks emptied and
 * kept for reuse (up to 4 of them, plus the one the heap keeps) must not keep their headers'
 * span descriptors resident: that was 40 KiB each, 172-176 KiB more in all (now 12 KiB). */
#include "common.h"

#define MiB (1L << 20)

static long anon_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0, shared = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld %ld", &size, &res, &shared) != 3) res = shared = 0;
    fclose(f);
    return (res - shared) * sysconf(_SC_PAGESIZE);
}

int main(void)
{
    rs_check_loaded("empty_heap");
    /* warm up: the thread cache, the first chunk and the stdio buffer are in the baseline */
    for (int i = 0; i < 1000; i++) free(malloc(i * 8));
    printf("empty_heap: warming up\n");
    fflush(stdout);
    long before = anon_bytes();

    size_t cap = 200 * MiB / 16, n = 0, bytes = 0;
    void **p = malloc(cap * sizeof *p);
    CHECK(p != NULL, "malloc of the pointer array failed");
    if (!p) return rs_summary("empty_heap");
    uint64_t rng = 11;
    while (bytes < 200 * MiB && n < cap) {
        size_t sz = 16 + rs_rand(&rng) % 497;
        p[n] = malloc(sz);
        if (!p[n]) {
            FAILF("malloc(%zu) failed after %zu bytes", sz, bytes);
            break;
        }
        memset(p[n], 7, sz);
        bytes += sz;
        n++;
    }
    long peak = anon_bytes();
    for (size_t i = n; i > 1; i--) {
        size_t j = rs_rand(&rng) % i;
        void *t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    for (size_t i = 0; i < n; i++) free(p[i]);
    free(p);
    sleep(1);
    long after = anon_bytes();
    printf("empty_heap: anonymous memory %.0f KiB before, %.1f MiB at the peak, %.0f KiB 1 s after freeing everything\n",
           before / 1024.0, peak / (double)MiB, after / 1024.0);
    CHECK(after - before <= 64 * 1024,
          "%.0f KiB more anonymous memory than before the 200 MiB were allocated (limit 64 KiB): the heap kept emptied memory resident",
          (after - before) / 1024.0);
    return rs_summary("empty_heap");
}
