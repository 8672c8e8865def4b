/* huge_reuse.c: huge blocks (above 1 MiB) whose memory is reused while still resident.
 * - calloc of every size reads zero right after dirty blocks of other sizes were freed
 *   (reused granules, and the slack of a partly reused one);
 * - realloc growth keeps contents whether the block grows in place, moves next to a
 *   neighbour it must not overwrite, or crosses into blocks with mappings of their own
 *   (above 64 MiB), and shrinking then regrowing keeps them too;
 * - allocating and freeing the same large size in a loop does not fault its pages in again
 *   on every round (no madvise/munmap thrash): minor faults stay near one block's pages;
 * - a block that must move to grow (a neighbour after it) into memory not yet faulted in
 *   moves without a copy where the kernel can move pages (MREMAP_DONTUNMAP): its contents
 *   come along without faulting in the target, and the place it left reads zero when
 *   calloc reuses it; with the huge heap full, the block copies into a mapping of its own. */
#include "common.h"

#include <malloc.h>
#include <sys/mman.h>
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#include <sys/resource.h>
#include <sys/wait.h>

#define MiB ((size_t)1 << 20)

static long minflt(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void check_block(const unsigned char *p, size_t n, uint64_t tag, const char *what)
{
    size_t bad = rs_verify(p, n, tag);
    if (bad != (size_t)-1) FAILF("%s: block %p of %zu bytes corrupted at %zu", what, (void *)p, n, bad);
    else atomic_fetch_add(&rs_checks, 1);
}

static void calloc_after_dirty(void)
{
    static const size_t sizes[] = {MiB + 1, 2 * MiB, 3 * MiB + 4096, 4 * MiB - 4096, 4 * MiB,
                                   5 * MiB + 17, 9 * MiB, 17 * MiB + 123};
    const size_t n = sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            unsigned char *d = malloc(sizes[i]);
            CHECK(d != NULL, "malloc(%zu)", sizes[i]);
            if (!d) continue;
            memset(d, 0xA5, sizes[i]);
            free(d);
            unsigned char *z = calloc(1, sizes[j]);
            CHECK(z != NULL, "calloc(%zu)", sizes[j]);
            if (!z) continue;
            size_t nz = rs_first_nonzero(z, sizes[j]);
            CHECK(nz == (size_t)-1, "calloc(%zu) after freeing a dirty %zu-byte block: byte %zu not zero",
                  sizes[j], sizes[i], nz);
            /* dirty it for the next round, including the slack past its end */
            memset(z, 0x5A, sizes[j]);
            unsigned char *g = realloc(z, sizes[j] + 3 * MiB);
            CHECK(g != NULL, "realloc grow");
            if (g) {
                memset(g, 0x77, sizes[j] + 3 * MiB);
                z = realloc(g, sizes[j] / 2);
                CHECK(z != NULL, "realloc shrink");
                if (z) free(z);
            }
        }
}

static void growth_keeps_contents(void)
{
    /* a neighbour right after the growing block: growth in place must not take its pages */
    unsigned char *a = malloc(2 * MiB);
    unsigned char *b = malloc(2 * MiB);
    if (!a || !b) {
        FAILF("malloc failed");
        return;
    }
    rs_fill(a, 2 * MiB, 1);
    rs_fill(b, 2 * MiB, 2);
    size_t n = 2 * MiB;
    for (size_t next = 3 * MiB; next <= 100 * MiB; next = next * 3 / 2) {
        unsigned char *q = realloc(a, next);
        CHECK(q != NULL, "realloc(%zu)", next);
        if (!q) break;
        a = q;
        check_block(a, n, 1, "grown block");
        check_block(b, 2 * MiB, 2, "neighbour of a growing block");
        rs_fill(a, next, 1);
        n = next;
    }
    /* shrink back into the huge heap's sizes, then grow again */
    unsigned char *q = realloc(a, 5 * MiB + 3);
    CHECK(q != NULL, "realloc shrink");
    if (q) {
        a = q;
        n = 5 * MiB + 3;
        check_block(a, n, 1, "shrunk block");
        q = realloc(a, 12 * MiB);
        CHECK(q != NULL, "realloc regrow");
        if (q) {
            a = q;
            check_block(a, n, 1, "regrown block");
        }
    }
    free(b);
    free(a);
}

static void loop_does_not_refault(void)
{
    const size_t size = 12 * MiB;
    const int rounds = 200;
    /* warm up once, then count */
    unsigned char *p = malloc(size);
    if (!p) {
        FAILF("malloc(%zu)", size);
        return;
    }
    memset(p, 1, size);
    free(p);
    long before = minflt();
    for (int i = 0; i < rounds; i++) {
        p = malloc(size);
        if (!p) {
            FAILF("malloc(%zu) round %d", size, i);
            return;
        }
        for (size_t o = 0; o < size; o += 4096) p[o] = (unsigned char)i;
        free(p);
    }
    long faults = minflt() - before;
    long pages = (long)(size / 4096);
    printf("huge_reuse: %d rounds of malloc/touch/free of %zu MiB: %ld minor faults (%ld pages per block)\n",
           rounds, size / MiB, faults, pages);
    CHECK(faults < 4 * pages, "%ld minor faults over %d rounds of one %zu MiB block: its pages are faulted in again every round",
          faults, rounds, size / MiB);
}

/* Whether this kernel moves anonymous pages with MREMAP_DONTUNMAP (Linux 5.7). */
static int kernel_moves_pages(void)
{
    size_t len = 2 * 4096;
    unsigned char *src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED) return 0;
    src[0] = 42;
    void *r = mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
    int ok = r == dst && dst[0] == 42 && src[0] == 0;
    munmap(src, len);
    munmap(dst, len);
    return ok;
}

static void moved_growth_does_not_copy(void)
{
    const size_t n = 6 * MiB, grown = 24 * MiB;
    malloc_trim(0); /* no resident free memory left: the move goes to pages not faulted in */
    unsigned char *a = malloc(n);
    unsigned char *b = malloc(2 * MiB);
    if (!a || !b) {
        FAILF("malloc failed");
        return;
    }
    rs_fill(a, n, 3);
    rs_fill(b, 2 * MiB, 4);
    long before = minflt();
    unsigned char *q = realloc(a, grown);
    check_block(q ? q : a, n, 3, "block moved to grow");
    long faults = minflt() - before;
    CHECK(q != NULL, "realloc(%zu)", grown);
    if (!q) return;
    check_block(b, 2 * MiB, 4, "neighbour of a moved block");
    if (kernel_moves_pages()) {
        printf("huge_reuse: realloc %zu -> %zu MiB past a neighbour: %ld minor faults (%zu pages moved)\n",
               n / MiB, grown / MiB, faults, n / 4096);
        CHECK(q != a, "realloc past a neighbour stayed in place");
        CHECK(faults < (long)(n / 4096) / 4,
              "%ld minor faults moving a %zu MiB block: its contents were copied, not moved", faults, n / MiB);
    }
    rs_fill(q, grown, 5);
    /* the place the block left is free and reads zero, whoever takes it */
    unsigned char *z = calloc(1, n);
    CHECK(z != NULL, "calloc(%zu)", n);
    if (z) {
        size_t nz = rs_first_nonzero(z, n);
        CHECK(nz == (size_t)-1, "calloc(%zu) in the place of a moved block: byte %zu not zero", n, nz);
        free(z);
    }
    check_block(q, grown, 5, "moved block after its old place was reused");
    free(q);
    free(b);
}

/* When the huge heap is full (256 regions of 256 MiB of address space), a huge block that
 * must move to grow gets a mapping of its own (pages are moved only between the heap's
 * granules): realloc keeps the contents. Run in a child: it reserves about 78 GiB of
 * address space (nothing is touched but the blocks' headers and the two blocks). */
static void realloc_when_huge_heap_full(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        FAILF("fork failed");
        return;
    }
    if (pid == 0) {
        unsigned char *a = malloc(5 * MiB);
        unsigned char *b = malloc(5 * MiB);
        if (!a || !b) _exit(2);
        rs_fill(a, 5 * MiB, 11);
        /* fill every granule of every region: 60 MiB blocks, then 2 MiB ones */
        long big = 0, small = 0;
        for (int i = 0; i < 1200; i++)
            if (malloc(60 * MiB)) big++;
        for (int i = 0; i < 1400; i++)
            if (malloc(2 * MiB)) small++;
        unsigned char *q = realloc(a, 9 * MiB);
        if (!q) _exit(3);
        if (rs_verify(q, 5 * MiB, 11) != (size_t)-1) _exit(4);
        rs_fill(q, 9 * MiB, 12);
        if (rs_verify(q, 9 * MiB, 12) != (size_t)-1) _exit(5);
        printf("huge_reuse: huge heap filled with %ld + %ld blocks; realloc 5 -> 9 MiB past a neighbour kept its contents\n",
               big, small);
        fflush(stdout);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "realloc of a huge block with the huge heap full: child status %#x (4/5: contents lost)", st);
}

/* Under mlockall the kernel refuses to purge (madvise DONTNEED on locked pages): memory the
 * allocator tried to give back keeps its contents, and calloc must still read zero. Run in a
 * child so that the lock stays there. */
static void calloc_zero_when_purge_refused(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        FAILF("fork failed");
        return;
    }
    if (pid == 0) {
        if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) _exit(77); /* not permitted here: skip */
        for (int round = 0; round < 4; round++) {
            size_t n = 5 * MiB + (size_t)round * 4096;
            unsigned char *d = malloc(n);
            if (!d) _exit(3);
            memset(d, 0xC3, n);
            free(d);
            malloc_trim(0);
            unsigned char *z = calloc(1, n);
            if (!z) _exit(4);
            if (rs_first_nonzero(z, n) != (size_t)-1) _exit(5);
            free(z);
        }
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        printf("huge_reuse: mlockall not permitted; purge-refused case skipped\n");
        return;
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "under mlockall (purges refused), calloc of a reused huge block: child status %#x (5: not zero)", st);
}

int main(void)
{
    rs_check_loaded("huge_reuse");
    loop_does_not_refault();
    calloc_after_dirty();
    growth_keeps_contents();
    moved_growth_does_not_copy();
    realloc_when_huge_heap_full();
    calloc_zero_when_purge_refused();
    return rs_summary("huge_reuse");
}
