/* Shared helpers for the rsmalloc C tests.
 *
 * Every test includes this header, calls rs_check_loaded() first (it proves that
 * librsmalloc.so really serves malloc & co. in this process), reports failures
 * with CHECK()/FAILF() and ends with `return rs_summary("name");`.
 *
 * Functions that glibc 2.36 does not provide (free_sized, free_aligned_sized,
 * rsmalloc_version) are looked up with dlsym() so that the same source links
 * both with -lrsmalloc (NAME.linked) and without it (NAME.plain + LD_PRELOAD).
 */
#ifndef RS_COMMON_H
#define RS_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long rs_failures;
static atomic_long rs_checks;

#define FAILF(...)                                                        \
    do {                                                                  \
        atomic_fetch_add(&rs_failures, 1);                                \
        if (atomic_load(&rs_failures) <= 200) {                           \
            char rs_buf_[512];                                            \
            snprintf(rs_buf_, sizeof rs_buf_, __VA_ARGS__);               \
            fprintf(stdout, "FAIL %s:%d: %s\n", __FILE__, __LINE__, rs_buf_); \
            fflush(stdout);                                               \
        }                                                                 \
    } while (0)

/* CHECK(cond, fmt, ...) : counts a check, prints a FAIL line when cond is false. */
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        atomic_fetch_add(&rs_checks, 1);                                  \
        if (!(cond)) FAILF("check `%s` failed: %s", #cond, rs_fmt_(__VA_ARGS__)); \
    } while (0)

static inline const char *rs_fmt_(const char *fmt, ...)
{
    static _Thread_local char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

/* Keeps the compiler from reasoning about a pointer (e.g. folding a freed or
 * foreign pointer into a diagnostic, or eliding a malloc/free pair). */
static inline void *rs_launder(void *p)
{
    __asm__ volatile("" : "+r"(p) : : "memory");
    return p;
}

typedef const char *(*rs_version_fn)(void);
typedef void (*rs_free_sized_fn)(void *, size_t);
typedef void (*rs_free_aligned_sized_fn)(void *, size_t, size_t);

static rs_free_sized_fn rs_free_sized;
static rs_free_aligned_sized_fn rs_free_aligned_sized;
static int rs_loaded;

/* Name of the object that defines `sym` as the process resolves it. */
static const char *rs_sym_origin(const char *sym)
{
    void *p = dlsym(RTLD_DEFAULT, sym);
    Dl_info info;
    if (!p) return "(unresolved)";
    if (!dladdr(p, &info) || !info.dli_fname) return "(unknown)";
    return info.dli_fname;
}

/* Proves librsmalloc serves this process: rsmalloc_version() exists and works,
 * and the allocator entry points resolve into librsmalloc. Returns 1 if so.
 * On failure prints FAIL lines (the test keeps running, so that a run against
 * plain glibc still exercises the test logic, but it will exit non-zero). */
static int rs_check_loaded(const char *test)
{
    static const char *const syms[] = {
        "malloc", "free", "calloc", "realloc", "reallocarray", "memalign",
        "posix_memalign", "aligned_alloc", "valloc", "pvalloc",
        "malloc_usable_size", "free_sized", "free_aligned_sized",
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    rs_version_fn ver = (rs_version_fn)dlsym(RTLD_DEFAULT, "rsmalloc_version");
    rs_free_sized = (rs_free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    rs_free_aligned_sized = (rs_free_aligned_sized_fn)dlsym(RTLD_DEFAULT, "free_aligned_sized");
    if (!ver) {
        FAILF("%s: rsmalloc_version not found: rsmalloc is NOT loaded in this process", test);
        return 0;
    }
    const char *v = ver();
    if (!v || strncmp(v, "rsmalloc", 8) != 0) {
        FAILF("%s: rsmalloc_version() returned %s%s%s", test, v ? "\"" : "", v ? v : "NULL", v ? "\"" : "");
        return 0;
    }
    printf("%s: allocator: %s\n", test, v);
    int ok = 1;
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        const char *o = rs_sym_origin(syms[i]);
        if (!strstr(o, "rsmalloc")) {
            FAILF("%s: symbol %s resolves to %s, not to librsmalloc", test, syms[i], o);
            ok = 0;
        }
    }
    rs_loaded = ok;
    return ok;
}

static int rs_summary(const char *test)
{
    long f = atomic_load(&rs_failures), c = atomic_load(&rs_checks);
    if (f)
        printf("%s: FAILED: %ld failure(s) in %ld checks\n", test, f, c);
    else
        printf("%s: OK: %ld checks passed\n", test, c);
    fflush(stdout);
    return f ? 1 : 0;
}

/* Resident set size in bytes, from /proc/self/statm. */
static long rs_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2) res = -1;
    fclose(f);
    return res < 0 ? -1 : res * sysconf(_SC_PAGESIZE);
}

static inline double rs_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* xorshift64* PRNG: deterministic per seed. */
static inline uint64_t rs_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t rs_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Pattern: memory layout is the little-endian words W(i) = tag ^ (i * K),
 * truncated to n bytes. A prefix of a pattern is a pattern of the same tag. */
#define RS_PAT_K 0x9E3779B97F4A7C15ULL
static inline void rs_fill(void *p, size_t n, uint64_t tag)
{
    unsigned char *b = p;
    size_t words = n / 8, i;
    for (i = 0; i < words; i++) {
        uint64_t w = tag ^ (i * RS_PAT_K);
        memcpy(b + i * 8, &w, 8);
    }
    if (n % 8) {
        uint64_t w = tag ^ (words * RS_PAT_K);
        memcpy(b + words * 8, &w, n % 8);
    }
}

/* Returns the offset of the first mismatching byte, or (size_t)-1 if all match. */
static inline size_t rs_verify(const void *p, size_t n, uint64_t tag)
{
    const unsigned char *b = p;
    size_t words = n / 8, i;
    for (i = 0; i < words; i++) {
        uint64_t w = tag ^ (i * RS_PAT_K), got;
        memcpy(&got, b + i * 8, 8);
        if (got != w) {
            for (size_t j = 0; j < 8; j++)
                if (((unsigned char *)&got)[j] != ((unsigned char *)&w)[j]) return i * 8 + j;
        }
    }
    if (n % 8) {
        uint64_t w = tag ^ (words * RS_PAT_K);
        for (size_t j = 0; j < n % 8; j++)
            if (b[words * 8 + j] != ((unsigned char *)&w)[j]) return words * 8 + j;
    }
    return (size_t)-1;
}

/* Returns offset of first non-zero byte or (size_t)-1. */
static inline size_t rs_first_nonzero(const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        if (w) break;
    }
    for (; i < n; i++)
        if (b[i]) return i;
    return (size_t)-1;
}

static inline int rs_aligned(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

#endif
