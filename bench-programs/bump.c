/* bump: the floor for scripts/instructions.sh. A minimal malloc that bumps a
 * pointer through one big MAP_NORESERVE region and never reuses memory; free
 * does nothing. Built as build/libbump.so and used with LD_PRELOAD. Every
 * block has a 16-byte header holding its size (for realloc and
 * malloc_usable_size). Thread-safe via an atomic bump pointer. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HDR 16
static _Atomic uintptr_t cur, end;

static void region_init(void) {
    static const size_t sizes[] = { (size_t)64 << 30, (size_t)16 << 30, (size_t)4 << 30, (size_t)1 << 30 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            uintptr_t expected = 0;
            if (atomic_compare_exchange_strong(&cur, &expected, (uintptr_t)p)) {
                atomic_store(&end, (uintptr_t)p + sizes[i]);
            } else {
                munmap(p, sizes[i]);
            }
            return;
        }
    }
    static const char msg[] = "bump: cannot map region\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(127);
}

static void *bump_alloc(size_t size, size_t align) {
    if (align < 16) align = 16;
    if (size > ((size_t)1 << 40)) { errno = ENOMEM; return NULL; }
    if (__builtin_expect(atomic_load_explicit(&cur, memory_order_relaxed) == 0, 0)) region_init();
    while (atomic_load(&end) == 0) { } /* another thread is initialising */
    size_t need = (size + HDR + 15) & ~(size_t)15;
    uintptr_t old = atomic_fetch_add_explicit(&cur, need + align, memory_order_relaxed);
    uintptr_t user = (old + HDR + align - 1) & ~(uintptr_t)(align - 1);
    if (user + size > atomic_load_explicit(&end, memory_order_relaxed)) { errno = ENOMEM; return NULL; }
    ((size_t *)user)[-1] = size;
    return (void *)user;
}

/* Fast path for the common case: 16-byte alignment, no extra padding. */
void *malloc(size_t size) {
    uintptr_t c = atomic_load_explicit(&cur, memory_order_relaxed);
    if (__builtin_expect(c != 0, 1) && size <= 4096) {
        size_t need = (size + HDR + 15) & ~(size_t)15;
        uintptr_t old = atomic_fetch_add_explicit(&cur, need, memory_order_relaxed);
        if (__builtin_expect(old + need <= atomic_load_explicit(&end, memory_order_relaxed), 1)) {
            ((size_t *)(old + HDR))[-1] = size;
            return (void *)(old + HDR);
        }
        errno = ENOMEM;
        return NULL;
    }
    return bump_alloc(size, 16);
}
void free(void *p) { (void)p; }
void *calloc(size_t n, size_t s) {
    size_t t;
    if (__builtin_mul_overflow(n, s, &t)) { errno = ENOMEM; return NULL; }
    return malloc(t); /* never-reused anonymous memory is already zero */
}
size_t malloc_usable_size(void *p) { return p ? ((size_t *)p)[-1] : 0; }
void *realloc(void *p, size_t s) {
    if (!p) return malloc(s);
    if (s == 0) { free(p); return NULL; } /* glibc behaviour */
    size_t old = ((size_t *)p)[-1];
    if (s <= old) { ((size_t *)p)[-1] = s; return p; }
    void *q = malloc(s);
    if (q) memcpy(q, p, old);
    return q;
}
void *reallocarray(void *p, size_t n, size_t s) {
    size_t t;
    if (__builtin_mul_overflow(n, s, &t)) { errno = ENOMEM; return NULL; }
    return realloc(p, t);
}
void *memalign(size_t a, size_t s) {
    if (a == 0 || (a & (a - 1))) { errno = EINVAL; return NULL; }
    return bump_alloc(s, a);
}
void *aligned_alloc(size_t a, size_t s) { return memalign(a, s); }
int posix_memalign(void **out, size_t a, size_t s) {
    if (a < sizeof(void *) || (a & (a - 1))) return EINVAL;
    void *p = bump_alloc(s, a);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *valloc(size_t s) { return bump_alloc(s, 4096); }
void *pvalloc(size_t s) { return bump_alloc((s + 4095) & ~(size_t)4095, 4096); }
