/* large_churn.c: single-threaded churn around the size-class boundaries (32 KiB small/large,
 * 1 MiB large/huge, 4 MiB chunk) and over page runs: random malloc / calloc / realloc (grow,
 * shrink, in place or moving) / memalign / free of 1 B .. 6 MiB blocks with many blocks alive
 * (fragmentation), verifying contents of every block and zeroing of every calloc, including
 * calloc of pages just released by shrinking or freeing dirty blocks. */
#include "common.h"

#define SLOTS 600
#define OPS 30000

struct blk {
    unsigned char *p;
    size_t n;
    uint64_t tag;
};

static const size_t edges[] = {16,          32752,       32768,       32769,       32784,
                               49152,       65536,       (1 << 20) - 16, (1 << 20) - 1,
                               1 << 20,     (1 << 20) + 1, (1 << 20) + 16384, (4 << 20) - 65536,
                               (4 << 20) - 16384, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 6 << 20};
#define NEDGES (sizeof edges / sizeof edges[0])

static size_t pick(uint64_t *rng)
{
    uint64_t r = rs_rand(rng);
    switch (r % 8) {
    case 0: return edges[(r >> 8) % NEDGES];
    case 1: case 2: return 1 + (r >> 12) % 32768;         /* small */
    case 3: case 4: case 5: return 32769 + (r >> 12) % ((1 << 20) - 32768); /* large */
    case 6: return 1 + (r >> 12) % 4096;
    default: return (r >> 12) % 200 == 0 ? (1 << 20) + (r >> 20) % (5 << 20) : 16384 + (r >> 20) % 300000;
    }
}

static void verify(const struct blk *b, const char *when)
{
    size_t bad = rs_verify(b->p, b->n, b->tag);
    if (bad != (size_t)-1) FAILF("%s: block %p size %zu corrupted at %zu", when, (void *)b->p, b->n, bad);
    else atomic_fetch_add(&rs_checks, 1);
}

int main(void)
{
    rs_check_loaded("large_churn");
    /* every pair of edge sizes through realloc */
    for (size_t i = 0; i < NEDGES; i++)
        for (size_t j = 0; j < NEDGES; j++) {
            struct blk b = {malloc(edges[i]), edges[i], rs_mix(i * 100 + j)};
            if (!b.p) {
                FAILF("malloc(%zu) failed", edges[i]);
                continue;
            }
            rs_fill(b.p, b.n, b.tag);
            unsigned char *q = realloc(b.p, edges[j]);
            if (!q) {
                FAILF("realloc(%zu -> %zu) failed", edges[i], edges[j]);
                free(b.p);
                continue;
            }
            size_t keep = edges[i] < edges[j] ? edges[i] : edges[j];
            size_t bad = rs_verify(q, keep, b.tag);
            if (bad != (size_t)-1) FAILF("realloc(%zu -> %zu) lost byte %zu", edges[i], edges[j], bad);
            if (malloc_usable_size(q) < edges[j]) FAILF("realloc(%zu -> %zu): usable too small", edges[i], edges[j]);
            free(q);
        }

    struct blk *s = calloc(SLOTS, sizeof *s);
    uint64_t rng = 0x5eed;
    long callocs = 0, inplace = 0;
    for (long op = 0; op < OPS; op++) {
        uint64_t r = rs_rand(&rng);
        struct blk *b = &s[(r >> 4) % SLOTS];
        int kind = r & 15;
        if (b->p) {
            verify(b, "before op");
            if (kind < 6) { /* realloc: shrink (frees dirty pages) or grow */
                size_t nn = (kind & 1) ? b->n / (2 + (r >> 40) % 6) + 1 : b->n + 1 + (rs_rand(&rng) % (b->n + 100000));
                if (kind == 4) nn = pick(&rng);
                unsigned char *q = realloc(b->p, nn);
                if (!q) {
                    FAILF("realloc(%zu -> %zu) failed", b->n, nn);
                    continue;
                }
                inplace += q == b->p;
                size_t keep = nn < b->n ? nn : b->n;
                size_t bad = rs_verify(q, keep, b->tag);
                if (bad != (size_t)-1)
                    FAILF("realloc(%p, %zu -> %zu) = %p lost byte %zu", (void *)b->p, b->n, nn, (void *)q, bad);
                b->p = q;
                b->n = nn;
                b->tag = rs_mix(b->tag + nn);
                rs_fill(q, nn, b->tag);
            } else if (kind < 12) {
                memset(b->p, 0xEE, malloc_usable_size(b->p)); /* dirty everything before freeing */
                if (rs_free_sized && (kind & 1)) rs_free_sized(b->p, b->n);
                else free(b->p);
                b->p = NULL;
            }
            continue;
        }
        size_t n = pick(&rng);
        unsigned char *p;
        if (kind < 7) {
            p = calloc(1, n);
            callocs++;
            if (p) {
                size_t nz = rs_first_nonzero(p, n);
                if (nz != (size_t)-1) FAILF("calloc(%zu) = %p: byte %zu is 0x%02x, not zero", n, (void *)p, nz, p[nz]);
                else atomic_fetch_add(&rs_checks, 1);
            }
        } else if (kind < 10) {
            size_t align = (size_t)64 << ((r >> 50) % 16); /* 64 B .. 2 MiB */
            p = memalign(align, n);
            if (p && !rs_aligned(p, align)) FAILF("memalign(%zu, %zu) = %p misaligned", align, n, (void *)p);
        } else
            p = malloc(n);
        if (!p) {
            FAILF("allocation of %zu failed", n);
            continue;
        }
        if (!rs_aligned(p, 16)) FAILF("%p not 16-aligned", (void *)p);
        if (malloc_usable_size(p) < n) FAILF("usable size of %zu-byte block too small", n);
        b->p = p;
        b->n = n;
        b->tag = rs_mix((uintptr_t)p ^ n ^ op);
        rs_fill(p, n, b->tag);
    }
    for (int i = 0; i < SLOTS; i++)
        if (s[i].p) {
            verify(&s[i], "final");
            free(s[i].p);
        }
    free(s);
    printf("large_churn: %d ops, %ld callocs, %ld reallocs in place\n", OPS, callocs, inplace);
    return rs_summary("large_churn");
}
