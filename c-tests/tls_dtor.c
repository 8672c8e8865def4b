/* tls_dtor.c: malloc/free from thread-exit destructors, i.e. possibly after the allocator
 * has torn down the exiting thread's cache.
 *  - pthread_key destructors run after all __cxa_thread_atexit_impl (C++/Rust thread_local)
 *    destructors; ours free a block, allocate new ones and re-arm the key (glibc runs up to
 *    4 rounds), and hand one block to the main thread, which frees it later.
 *  - a __cxa_thread_atexit_impl destructor (what C++ thread_local uses) that allocates and
 *    frees, registered both before and after the thread's first malloc.
 * 400 threads in waves of 8; main checks that every destructor ran and frees the handed-over
 * blocks after verifying them. */
#include "common.h"

#include <pthread.h>

#define NT 400
#define WAVE 8

extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso_symbol);
extern void *__dso_handle;

static pthread_key_t key;
static atomic_long key_dtor_runs, cxa_dtor_runs;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *handed[NT * 4];
static size_t handed_n;

struct kval {
    int idx;
    int round;
    size_t n;
    unsigned char *p;
};

static void hand_over(void *p)
{
    pthread_mutex_lock(&mu);
    if (handed_n < sizeof handed / sizeof handed[0]) handed[handed_n++] = p;
    else free(p);
    pthread_mutex_unlock(&mu);
}

static void key_dtor(void *v)
{
    struct kval *k = v;
    atomic_fetch_add(&key_dtor_runs, 1);
    for (size_t i = 0; i < k->n; i++)
        if (k->p[i] != (unsigned char)(k->idx + k->round)) {
            FAILF("thread %d: key destructor round %d: block corrupted at %zu", k->idx, k->round, i);
            break;
        }
    free(k->p);
    /* allocate and free during thread exit */
    void *tmp[32];
    for (int i = 0; i < 32; i++) {
        tmp[i] = malloc(16 + i * 100);
        if (!tmp[i]) FAILF("malloc in key destructor failed");
        else memset(tmp[i], i, 16 + i * 100);
    }
    for (int i = 0; i < 32; i++) free(tmp[i]);
    void *h = malloc(200);
    if (h) {
        memset(h, 0xAB, 200);
        hand_over(h);
    }
    if (k->round < 3) { /* re-arm: glibc calls the destructor again */
        k->round++;
        k->n = 1000 * k->round + 1;
        k->p = malloc(k->n);
        if (!k->p) {
            FAILF("malloc in key destructor failed");
            free(k);
            return;
        }
        memset(k->p, (unsigned char)(k->idx + k->round), k->n);
        pthread_setspecific(key, k);
    } else
        free(k);
}

static void cxa_dtor(void *v)
{
    atomic_fetch_add(&cxa_dtor_runs, 1);
    char *p = v;
    for (int i = 0; i < 64; i++)
        if (p[i] != 0x42) {
            FAILF("cxa destructor: block corrupted");
            break;
        }
    free(p);
    void *q = calloc(10, 100);
    if (!q) FAILF("calloc in cxa destructor failed");
    else if (rs_first_nonzero(q, 1000) != (size_t)-1) FAILF("calloc in cxa destructor not zeroed");
    free(realloc(malloc(10), 100000));
}

static void *thread_fn(void *arg)
{
    int idx = (int)(uintptr_t)arg;
    /* registered before this thread's first own malloc (glibc callocs internally) */
    char *c1 = malloc(64);
    if (c1) {
        memset(c1, 0x42, 64);
        __cxa_thread_atexit_impl(cxa_dtor, c1, &__dso_handle);
    }
    void *blocks[50];
    for (int i = 0; i < 50; i++) blocks[i] = malloc(8 + i * 37);
    for (int i = 0; i < 50; i += 2) free(blocks[i]);
    char *c2 = malloc(64);
    if (c2) {
        memset(c2, 0x42, 64);
        __cxa_thread_atexit_impl(cxa_dtor, c2, &__dso_handle);
    }
    struct kval *k = malloc(sizeof *k);
    k->idx = idx;
    k->round = 0;
    k->n = 500;
    k->p = malloc(k->n);
    memset(k->p, (unsigned char)idx, k->n);
    pthread_setspecific(key, k);
    for (int i = 1; i < 50; i += 2) free(blocks[i]);
    return NULL;
}

int main(void)
{
    rs_check_loaded("tls_dtor");
    pthread_key_create(&key, key_dtor);
    for (int w = 0; w < NT / WAVE; w++) {
        pthread_t th[WAVE];
        for (int i = 0; i < WAVE; i++) pthread_create(&th[i], NULL, thread_fn, (void *)(uintptr_t)(w * WAVE + i));
        for (int i = 0; i < WAVE; i++) pthread_join(th[i], NULL);
        pthread_mutex_lock(&mu);
        for (size_t i = 0; i < handed_n; i++) {
            unsigned char *p = handed[i];
            for (int j = 0; j < 200; j++)
                if (p[j] != 0xAB) {
                    FAILF("block allocated in a destructor corrupted");
                    break;
                }
            free(p);
        }
        handed_n = 0;
        pthread_mutex_unlock(&mu);
    }
    CHECK(atomic_load(&key_dtor_runs) == NT * 4, "pthread key destructor ran %ld times, expected %d",
          atomic_load(&key_dtor_runs), NT * 4);
    CHECK(atomic_load(&cxa_dtor_runs) == NT * 2, "thread_local destructors ran %ld times, expected %d",
          atomic_load(&cxa_dtor_runs), NT * 2);
    return rs_summary("tls_dtor");
}
