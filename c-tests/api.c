/* api.c: every exported allocation function and its edge cases (glibc semantics). */
#include "common.h"

#include <sys/mman.h>

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static size_t page;

static void check_block(const char *what, void *p, size_t size, size_t align)
{
    CHECK(p != NULL, "%s(size=%zu, align=%zu) returned NULL (errno %d)", what, size, align, errno);
    if (!p) return;
    CHECK(rs_aligned(p, 16), "%s(%zu) = %p is not 16-byte aligned", what, size, p);
    CHECK(rs_aligned(p, align), "%s(%zu) = %p is not %zu-byte aligned", what, size, p, align);
    size_t u = malloc_usable_size(p);
    CHECK(u >= size, "%s(%zu) = %p: malloc_usable_size %zu < requested", what, size, p, u);
}

/* Writes a pattern over the whole usable size and verifies it. */
static void check_usable_writable(const char *what, void *p, uint64_t tag)
{
    size_t u = malloc_usable_size(p);
    rs_fill(p, u, tag);
    size_t bad = rs_verify(p, u, tag);
    CHECK(bad == (size_t)-1, "%s: %p usable %zu: pattern broken at offset %zu", what, p, u, bad);
}

#define EXPECT_NULL_ERRNO(expr, err)                                                  \
    do {                                                                              \
        errno = 0;                                                                    \
        void *r_ = (expr);                                                            \
        int e_ = errno;                                                               \
        CHECK(r_ == NULL, "%s returned %p, expected NULL", #expr, r_);                \
        CHECK(e_ == (err), "%s: errno %d (%s), expected %d (%s)", #expr, e_, strerror(e_), \
              (err), strerror(err));                                                  \
        if (r_) free(r_);                                                             \
    } while (0)

static void test_malloc_basic(void)
{
    static const size_t sizes[] = {1,    2,    7,    8,    9,     15,    16,    17,   24,  31,
                                   32,   33,   48,   63,   64,    65,    96,    100,  127, 128,
                                   129,  255,  256,  257,  500,   512,   513,   1000, 1024, 1025,
                                   2047, 2048, 2049, 3000, 4095,  4096,  4097,  8191, 8192, 8193,
                                   12345, 16384, 32768, 32769, 65535, 65536, 65537, 100000, 131072,
                                   200 * 1024, 256 * 1024, 262145, 500000, 1048575, 1048576,
                                   1048577, 2 * 1048576 + 3, 5 * 1048576, 16 * 1048576 + 1};
    enum { N = sizeof sizes / sizeof sizes[0] };
    void *ps[N];
    for (int i = 0; i < N; i++) {
        ps[i] = malloc(sizes[i]);
        check_block("malloc", ps[i], sizes[i], 16);
        if (ps[i]) check_usable_writable("malloc", ps[i], rs_mix(i + 1));
    }
    /* All blocks alive at once keep their contents (no overlap). */
    for (int i = 0; i < N; i++)
        if (ps[i]) {
            size_t bad = rs_verify(ps[i], malloc_usable_size(ps[i]), rs_mix(i + 1));
            CHECK(bad == (size_t)-1, "malloc(%zu)=%p contents overwritten at %zu", sizes[i], ps[i], bad);
        }
    for (int i = 0; i < N; i++) free(ps[i]);

    free(NULL); /* no-op */
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu", malloc_usable_size(NULL));
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* Blocks in ps[] (non-NULL ones) must not overlap over their usable sizes. */
static void check_disjoint(const char *what, void **ps, int n)
{
    void **s = malloc(sizeof(void *) * (n ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (ps[i]) s[m++] = ps[i];
    qsort(s, m, sizeof(void *), cmp_ptr);
    for (int i = 0; i + 1 < m; i++) {
        uintptr_t end = (uintptr_t)s[i] + malloc_usable_size(s[i]);
        CHECK(end <= (uintptr_t)s[i + 1], "%s: blocks %p (usable %zu) and %p overlap", what, s[i],
              malloc_usable_size(s[i]), s[i + 1]);
        CHECK(s[i] != s[i + 1], "%s: pointer %p handed out twice", what, s[i]);
    }
    free(s);
}

static void test_malloc_zero(void)
{
    enum { N = 2000 };
    void **ps = malloc(sizeof(void *) * N);
    for (int i = 0; i < N; i++) {
        ps[i] = malloc(0);
        check_block("malloc(0)", ps[i], 0, 16);
    }
    check_disjoint("malloc(0)", ps, N);
    for (int i = 0; i < N; i += 2) free(ps[i]);
    for (int i = 0; i < N; i += 2) {
        ps[i] = malloc(0);
        check_block("malloc(0) after free", ps[i], 0, 16);
    }
    check_disjoint("malloc(0) reuse", ps, N);
    for (int i = 0; i < N; i++) free(ps[i]);
    free(ps);
}

static void test_malloc_too_big(void)
{
    size_t big[] = {SIZE_MAX,       SIZE_MAX - 1,          SIZE_MAX - 15,          SIZE_MAX - 16,
                    SIZE_MAX - 4095, SIZE_MAX - 4096,      SIZE_MAX - (1 << 20),   SIZE_MAX / 2,
                    (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX - 4095,
                    (size_t)1 << 62};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        size_t n = big[i];
        volatile size_t vn = n;
        errno = 0;
        void *p = malloc(vn);
        int e = errno;
        CHECK(p == NULL, "malloc(%#zx) = %p, expected NULL", n, p);
        CHECK(e == ENOMEM, "malloc(%#zx): errno %d, expected ENOMEM", n, e);
        free(p);
    }
    EXPECT_NULL_ERRNO(valloc(SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(valloc(SIZE_MAX - 4095), ENOMEM);
    EXPECT_NULL_ERRNO(pvalloc(SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(pvalloc(SIZE_MAX - 4095), ENOMEM);
    EXPECT_NULL_ERRNO(pvalloc((size_t)PTRDIFF_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(memalign(64, SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(memalign(4096, SIZE_MAX - 100), ENOMEM);
    EXPECT_NULL_ERRNO(aligned_alloc(64, SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(aligned_alloc(1 << 20, (size_t)PTRDIFF_MAX + 1), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(1, SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(SIZE_MAX, 1), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(1, (size_t)PTRDIFF_MAX + 1), ENOMEM);
    for (int a = 4; a <= 23; a++) {
        void *p = (void *)0x1234;
        int r = posix_memalign(&p, (size_t)1 << a, SIZE_MAX - 10);
        CHECK(r == ENOMEM, "posix_memalign(align=%zu, SIZE_MAX-10) returned %d, expected ENOMEM",
              (size_t)1 << a, r);
        if (r == 0) free(p);
    }
}

static void test_calloc(void)
{
    /* overflow */
    EXPECT_NULL_ERRNO(calloc(SIZE_MAX / 2 + 1, 2), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(SIZE_MAX, SIZE_MAX), ENOMEM);
    EXPECT_NULL_ERRNO(calloc((size_t)1 << 32, (size_t)1 << 32), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(((size_t)1 << 32) + 1, ((size_t)1 << 32) - 1), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(3, SIZE_MAX / 3 + 1), ENOMEM);
    EXPECT_NULL_ERRNO(calloc(2, (size_t)PTRDIFF_MAX / 2 + 1), ENOMEM);
    /* zero-sized */
    void *z[3] = {calloc(0, 0), calloc(0, 5), calloc(5, 0)};
    for (int i = 0; i < 3; i++) check_block("calloc(zero)", z[i], 0, 16);
    CHECK(z[0] != z[1] && z[1] != z[2] && z[0] != z[2], "calloc zero-size pointers not unique");
    for (int i = 0; i < 3; i++) free(z[i]);

    /* zeroing, also when the memory was dirtied and freed just before */
    static const size_t sizes[] = {1,     8,      16,     24,     48,          64,         100,
                                   256,   1000,   2048,   3000,   4096,        5000,       16384,
                                   65536, 100000, 200 * 1024, 1 << 20, (1 << 20) + 5, 5 << 20};
    enum { ROUNDS = 3, K = 64 };
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        int k = n >= (1 << 20) ? 4 : K;
        void *ps[K];
        for (int r = 0; r < ROUNDS; r++) {
            for (int i = 0; i < k; i++) {
                ps[i] = malloc(n);
                if (ps[i]) memset(ps[i], 0xA5, malloc_usable_size(ps[i]));
            }
            for (int i = 0; i < k; i++) free(ps[i]);
            for (int i = 0; i < k; i++) {
                /* alternate nmemb/size split */
                ps[i] = (i & 1) && n % 4 == 0 ? calloc(n / 4, 4) : calloc(1, n);
                check_block("calloc", ps[i], n, 16);
                if (!ps[i]) continue;
                size_t bad = rs_first_nonzero(ps[i], n);
                CHECK(bad == (size_t)-1, "calloc(%zu) = %p round %d: byte %zu is 0x%02x, not zero", n,
                      ps[i], r, bad, bad == (size_t)-1 ? 0 : ((unsigned char *)ps[i])[bad]);
                memset(ps[i], 0x5A, malloc_usable_size(ps[i]));
            }
            for (int i = 0; i < k; i++) free(ps[i]);
        }
    }
    /* Big ones: dirty, free, calloc again. */
    static const size_t big[] = {1 << 20, 64 << 20, (64 << 20) + 123, 8 << 20};
    for (size_t bi = 0; bi < sizeof big / sizeof big[0]; bi++) {
        size_t n = big[bi];
        for (int r = 0; r < 3; r++) {
            void *p = malloc(n);
            CHECK(p != NULL, "malloc(%zu) failed", n);
            if (p) memset(p, 0xFF, n);
            free(p);
            void *c = calloc(n, 1);
            check_block("calloc(big)", c, n, 16);
            if (!c) continue;
            size_t bad = rs_first_nonzero(c, n);
            CHECK(bad == (size_t)-1, "calloc(%zu) after dirty free: byte %zu not zero", n, bad);
            memset(c, 0xEE, n);
            free(c);
        }
    }
}

/* Contents preserved across realloc between any two sizes of the list. */
static void test_realloc_contents(void)
{
    static const size_t sizes[] = {1,    16,   24,    100,   1000,  3000,   4096,       5000,
                                   65536, 200 * 1024, 1 << 20, (1 << 20) + 1, 5 << 20, 64 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint64_t tag = 1;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            size_t a = sizes[i], b = sizes[j];
            if (a >= (64 << 20) && b >= (64 << 20)) continue;
            char *p = malloc(a);
            check_block("malloc", p, a, 16);
            if (!p) continue;
            tag = rs_mix(tag + 1);
            rs_fill(p, a, tag);
            char *q = realloc(p, b);
            check_block("realloc", q, b, 16);
            if (!q) {
                free(p);
                continue;
            }
            size_t keep = a < b ? a : b;
            size_t bad = rs_verify(q, keep, tag);
            CHECK(bad == (size_t)-1, "realloc(%zu -> %zu): byte %zu of %zu lost", a, b, bad, keep);
            memset(q, 1, b); /* whole new size writable */
            free(q);
        }

    /* Chain: grow 24 B -> 3000 -> 200 KiB -> 5 MiB -> 64 MiB -> 256 MiB and back down. */
    static const size_t chain[] = {24, 3000, 200 * 1024, 5 << 20, 64 << 20, 256 << 20,
                                   64 << 20, 5 << 20, 200 * 1024, 3000, 24, 1};
    char *p = malloc(chain[0]);
    tag = 0xC0FFEE;
    rs_fill(p, chain[0], tag);
    size_t cur = chain[0];
    for (size_t k = 1; k < sizeof chain / sizeof chain[0]; k++) {
        size_t n = chain[k];
        char *q = realloc(p, n);
        check_block("realloc chain", q, n, 16);
        if (!q) break;
        size_t keep = cur < n ? cur : n;
        size_t bad = rs_verify(q, keep, tag);
        CHECK(bad == (size_t)-1, "realloc chain %zu -> %zu: byte %zu lost", cur, n, bad);
        tag = rs_mix(tag);
        rs_fill(q, n, tag);
        p = q;
        cur = n;
    }
    free(p);

    /* Many small steps up and down (exercises in-place growth and moves). */
    p = NULL;
    cur = 0;
    tag = 77;
    for (size_t n = 1; n < 300000; n = n * 9 / 8 + 1) {
        char *q = realloc(p, n);
        check_block("realloc steps", q, n, 16);
        if (!q) break;
        size_t bad = rs_verify(q, cur, tag);
        CHECK(bad == (size_t)-1, "realloc step %zu -> %zu: byte %zu lost", cur, n, bad);
        rs_fill(q, n, tag);
        p = q;
        cur = n;
    }
    for (size_t n = cur; n > 0; n = n * 7 / 8) {
        char *q = realloc(p, n);
        check_block("realloc shrink steps", q, n, 16);
        if (!q) break;
        size_t bad = rs_verify(q, n, tag);
        CHECK(bad == (size_t)-1, "realloc shrink step -> %zu: byte %zu lost", n, bad);
        p = q;
    }
    free(p);
}

static void test_realloc_semantics(void)
{
    /* realloc(NULL, n) == malloc(n) */
    static const size_t ns[] = {0, 1, 100, 5000, 300000, 3 << 20};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        void *p = realloc(NULL, ns[i]);
        check_block("realloc(NULL)", p, ns[i], 16);
        if (p) memset(p, 3, ns[i]);
        free(p);
    }
    /* realloc(p, 0) frees p and returns NULL (glibc). */
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        void *p = malloc(ns[i]);
        void *q = realloc(p, 0);
        CHECK(q == NULL, "realloc(malloc(%zu), 0) returned %p, expected NULL (glibc semantics)", ns[i], q);
        if (q) free(q);
    }
    /* In place when the new size fits in the usable size. */
    static const size_t sz[] = {1,     8,      24,     100,     1000,    3000,    4096,
                                10000, 65536, 200 * 1024, 1 << 20, (1 << 20) + 1, 5 << 20, 64 << 20};
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) {
        size_t n = sz[i];
        char *p = malloc(n);
        if (!p) {
            FAILF("malloc(%zu) failed", n);
            continue;
        }
        size_t u = malloc_usable_size(p);
        rs_fill(p, n, n);
        char *q = realloc(p, u);
        CHECK(q == p, "realloc(p=%p [malloc(%zu), usable %zu], usable) moved to %p", p, n, u, q);
        if (!q) {
            free(p);
            continue;
        }
        p = q;
        CHECK(rs_verify(p, n, n) == (size_t)-1, "realloc to usable size lost contents (n=%zu)", n);
        q = realloc(p, n / 2 + 1);
        CHECK(q == p, "realloc(p=%p [usable %zu], %zu) (shrink) moved to %p", p, u, n / 2 + 1, q);
        if (!q) {
            free(p);
            continue;
        }
        p = q;
        CHECK(rs_verify(p, n / 2 + 1, n) == (size_t)-1, "realloc shrink lost contents (n=%zu)", n);
        q = realloc(p, n);
        if (n <= malloc_usable_size(p))
            CHECK(q == p, "realloc(p=%p, %zu) back to original size moved to %p although usable is %zu", p,
                  n, q, malloc_usable_size(p));
        if (q) p = q;
        free(p);
    }
    /* Failed realloc leaves the block intact. */
    size_t bigs[] = {SIZE_MAX, SIZE_MAX - 8, (size_t)PTRDIFF_MAX + 1};
    for (size_t i = 0; i < sizeof bigs / sizeof bigs[0]; i++) {
        for (size_t base = 100; base <= (4 << 20); base *= 200) {
            char *p = malloc(base);
            rs_fill(p, base, base + i);
            errno = 0;
            void *q = realloc(p, bigs[i]);
            int e = errno;
            CHECK(q == NULL, "realloc(%zu-byte block, %#zx) = %p, expected NULL", base, bigs[i], q);
            CHECK(e == ENOMEM, "realloc(.., %#zx): errno %d, expected ENOMEM", bigs[i], e);
            CHECK(rs_verify(p, base, base + i) == (size_t)-1, "failed realloc damaged the block");
            free(q ? q : p);
        }
    }
}

static void test_reallocarray(void)
{
    char *p = reallocarray(NULL, 10, 10);
    check_block("reallocarray(NULL)", p, 100, 16);
    rs_fill(p, 100, 5);
    char *q = reallocarray(p, 1000, 10);
    check_block("reallocarray grow", q, 10000, 16);
    if (q) {
        CHECK(rs_verify(q, 100, 5) == (size_t)-1, "reallocarray grow lost contents");
        p = q;
    }
    rs_fill(p, 10000, 6);
    errno = 0;
    q = reallocarray(p, SIZE_MAX / 2 + 1, 2);
    int e = errno;
    CHECK(q == NULL, "overflowing reallocarray returned %p", q);
    CHECK(e == ENOMEM, "overflowing reallocarray: errno %d, expected ENOMEM", e);
    CHECK(rs_verify(p, 10000, 6) == (size_t)-1, "failed reallocarray damaged the block");
    errno = 0;
    q = reallocarray(p, (size_t)1 << 32, (size_t)1 << 32);
    e = errno;
    CHECK(q == NULL && e == ENOMEM, "reallocarray(2^32, 2^32) = %p errno %d", q, e);
    errno = 0;
    q = reallocarray(p, 2, (size_t)PTRDIFF_MAX / 2 + 1);
    e = errno;
    CHECK(q == NULL && e == ENOMEM, "reallocarray(2, PTRDIFF_MAX/2+1) = %p errno %d", q, e);
    CHECK(rs_verify(p, 10000, 6) == (size_t)-1, "failed reallocarray damaged the block");
    q = reallocarray(p, 3, 7);
    check_block("reallocarray shrink", q, 21, 16);
    if (q) {
        CHECK(rs_verify(q, 21, 6) == (size_t)-1, "reallocarray shrink lost contents");
        p = q;
    }
    free(p);
}

static void test_posix_memalign_invalid(void)
{
    size_t bad[] = {0, 1, 2, 3, 4, 5, 6, 7, 12, 24, 40, 48, 96, 100, 3000, 4097, 65535,
                    ((size_t)1 << 20) + 8, SIZE_MAX, SIZE_MAX / 2, (SIZE_MAX / 2) + 2};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *sentinel = (void *)0xdeadbeef0;
        void *p = sentinel;
        int r = posix_memalign(&p, bad[i], 64);
        CHECK(r == EINVAL, "posix_memalign(align=%zu) returned %d, expected EINVAL", bad[i], r);
        CHECK(p == sentinel, "posix_memalign(align=%zu) failed but changed *memptr to %p", bad[i], p);
        if (r == 0 && p != sentinel) free(p);
    }
    /* sizeof(void*) itself is a valid alignment */
    void *p = NULL;
    int r = posix_memalign(&p, sizeof(void *), 100);
    CHECK(r == 0, "posix_memalign(align=8) returned %d", r);
    if (!r) {
        check_block("posix_memalign(8)", p, 100, 16);
        free(p);
    }
    p = NULL;
    r = posix_memalign(&p, 16, 0);
    CHECK(r == 0 && p, "posix_memalign(16, 0) = %d, %p", r, p);
    if (!r) free(p);
}

static void test_aligned_alloc_invalid(void)
{
    size_t bad[] = {0, 3, 5, 6, 7, 12, 24, 48, 100, 4097, 65535, ((size_t)1 << 20) + 16, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        void *p = aligned_alloc(bad[i], 256);
        int e = errno;
        CHECK(p == NULL, "aligned_alloc(align=%zu) = %p, expected NULL", bad[i], p);
        CHECK(e == EINVAL, "aligned_alloc(align=%zu): errno %d, expected EINVAL", bad[i], e);
        free(p);
    }
    /* Small powers of two are valid and still give 16-byte alignment. */
    for (size_t a = 1; a <= 8; a *= 2) {
        void *p = aligned_alloc(a, 40);
        check_block("aligned_alloc(small align)", p, 40, 16);
        free(p);
    }
}

static void test_memalign_rounding(void)
{
    struct {
        size_t align, expect;
    } t[] = {{0, 16},     {1, 16},     {5, 16},       {24, 32},    {33, 64},
             {100, 128},  {3000, 4096}, {4097, 8192}, {65537, 131072}, {(1 << 20) + 1, 2 << 20}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        for (size_t n = 1; n <= 100000; n *= 10) {
            void *p = memalign(t[i].align, n);
            check_block("memalign(non-pow2)", p, n, t[i].expect);
            if (p) memset(p, 0x11, n);
            free(p);
        }
    }
}

static void test_alignment_matrix(void)
{
    static const size_t sizes[] = {0, 1, 8, 100, 4096, 65536, (1 << 20) + 1, 5 << 20};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    for (size_t align = 16; align <= ((size_t)8 << 20); align *= 2) {
        void *blocks[3 * NS];
        int nb = 0;
        for (int si = 0; si < NS; si++) {
            size_t n = sizes[si];
            void *p = (void *)0x1;
            int r = posix_memalign(&p, align, n);
            CHECK(r == 0, "posix_memalign(align=%zu, size=%zu) returned %d", align, n, r);
            if (r) p = NULL;
            check_block("posix_memalign", p, n, align);
            blocks[nb++] = p;

            p = memalign(align, n);
            check_block("memalign", p, n, align);
            blocks[nb++] = p;

            p = aligned_alloc(align, n);
            check_block("aligned_alloc", p, n, align);
            blocks[nb++] = p;
        }
        for (int i = 0; i < nb; i++)
            if (blocks[i]) rs_fill(blocks[i], malloc_usable_size(blocks[i]), align * 131 + i);
        check_disjoint("aligned blocks", blocks, nb);
        for (int i = 0; i < nb; i++)
            if (blocks[i]) {
                size_t bad = rs_verify(blocks[i], malloc_usable_size(blocks[i]), align * 131 + i);
                CHECK(bad == (size_t)-1, "aligned block %p (align %zu) overwritten at %zu", blocks[i],
                      align, bad);
            }
        /* free: plain free, free_sized for posix_memalign/memalign, free_aligned_sized for aligned_alloc */
        for (int i = 0; i < nb; i++) {
            size_t n = sizes[i / 3];
            if (!blocks[i]) continue;
            if (i % 3 == 2 && rs_free_aligned_sized && (align / 16) % 2 == 0)
                rs_free_aligned_sized(blocks[i], align, n);
            else
                free(blocks[i]);
        }
    }
    /* Realloc of an over-aligned block keeps the contents. */
    for (size_t align = 64; align <= ((size_t)4 << 20); align *= 4) {
        void *p = NULL;
        if (posix_memalign(&p, align, 1000)) {
            FAILF("posix_memalign(%zu, 1000) failed", align);
            continue;
        }
        rs_fill(p, 1000, align);
        void *q = realloc(p, 3 << 20);
        check_block("realloc(aligned)", q, 3 << 20, 16);
        if (q) {
            CHECK(rs_verify(q, 1000, align) == (size_t)-1, "realloc of %zu-aligned block lost contents",
                  align);
            free(q);
        } else
            free(p);
    }
}

static void test_valloc_pvalloc(void)
{
    static const size_t ns[] = {0, 1, 100, 4095, 4096, 4097, 10000, 65536, 1 << 20, (3 << 20) + 7};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        size_t n = ns[i];
        void *p = valloc(n);
        check_block("valloc", p, n, page);
        if (p) memset(p, 0x22, n);
        void *q = pvalloc(n);
        size_t rounded = n == 0 ? page : (n + page - 1) / page * page;
        check_block("pvalloc", q, rounded, page);
        if (q) {
            memset(q, 0x33, rounded);
            CHECK(malloc_usable_size(q) >= rounded, "pvalloc(%zu): usable %zu < %zu", n,
                  malloc_usable_size(q), rounded);
        }
        free(p);
        free(q);
    }
}

static void test_free_sized(void)
{
    if (!rs_free_sized || !rs_free_aligned_sized) {
        FAILF("free_sized/free_aligned_sized not exported");
        return;
    }
    rs_free_sized(NULL, 0);
    rs_free_sized(NULL, 100);
    rs_free_aligned_sized(NULL, 64, 100);
    static const size_t ns[] = {0, 1, 16, 17, 100, 1000, 4096, 5000, 65536, 300000, 1 << 20, 9 << 20};
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            size_t n = ns[i];
            void *p = malloc(n);
            check_block("malloc", p, n, 16);
            if (p) memset(p, 1, n);
            rs_free_sized(p, n);
            p = calloc(1, n);
            check_block("calloc", p, n, 16);
            rs_free_sized(p, n);
            p = malloc(n / 2);
            p = realloc(p, n);
            if (n) check_block("realloc", p, n, 16);
            if (p) rs_free_sized(p, n);
            for (size_t a = 16; a <= (2 << 20); a *= 8) {
                void *q = aligned_alloc(a, n);
                check_block("aligned_alloc", q, n, a);
                if (q) memset(q, 2, n);
                rs_free_aligned_sized(q, a, n);
            }
        }
}

static void test_many_mixed(void)
{
    enum { N = 3000 };
    void **ps = calloc(N, sizeof(void *));
    size_t *ns = calloc(N, sizeof(size_t));
    uint64_t s = 42;
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < N; i++) {
            if (ps[i] && (rs_rand(&s) & 1)) continue;
            if (ps[i]) {
                CHECK(rs_verify(ps[i], ns[i], (uint64_t)i * 7 + 1) == (size_t)-1, "block %d corrupted", i);
                free(ps[i]);
            }
            uint64_t r = rs_rand(&s);
            size_t n = (r >> 8) % (r & 1 ? 512 : (r & 2 ? 8192 : 131072));
            ps[i] = malloc(n);
            ns[i] = n;
            check_block("malloc(mixed)", ps[i], n, 16);
            if (ps[i]) rs_fill(ps[i], n, (uint64_t)i * 7 + 1);
        }
        check_disjoint("mixed", ps, N);
    }
    for (int i = 0; i < N; i++) {
        if (ps[i])
            CHECK(rs_verify(ps[i], ns[i], (uint64_t)i * 7 + 1) == (size_t)-1, "block %d corrupted", i);
        free(ps[i]);
    }
    free(ps);
    free(ns);
}

int main(void)
{
    rs_check_loaded("api");
    page = (size_t)sysconf(_SC_PAGESIZE);
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"malloc_basic", test_malloc_basic},
        {"malloc_zero", test_malloc_zero},
        {"malloc_too_big", test_malloc_too_big},
        {"calloc", test_calloc},
        {"realloc_contents", test_realloc_contents},
        {"realloc_semantics", test_realloc_semantics},
        {"reallocarray", test_reallocarray},
        {"posix_memalign_invalid", test_posix_memalign_invalid},
        {"aligned_alloc_invalid", test_aligned_alloc_invalid},
        {"memalign_rounding", test_memalign_rounding},
        {"alignment_matrix", test_alignment_matrix},
        {"valloc_pvalloc", test_valloc_pvalloc},
        {"free_sized", test_free_sized},
        {"many_mixed", test_many_mixed},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        long before = atomic_load(&rs_failures);
        tests[i].fn();
        long f = atomic_load(&rs_failures) - before;
        printf("api: %-24s %s\n", tests[i].name, f ? "FAIL" : "ok");
    }
    return rs_summary("api");
}
