/* oom.c: behaviour when the kernel refuses memory. Each scenario runs in a forked child that
 * limits its own address space with setrlimit(RLIMIT_AS) to what it already uses plus a
 * budget (BUDGET_MIB), then exhausts it. Requirements checked:
 *   - malloc, calloc, realloc, reallocarray, memalign, aligned_alloc return NULL with errno
 *     ENOMEM; posix_memalign returns ENOMEM and leaves *memptr alone; a failed realloc
 *     leaves the old block intact;
 *   - nothing is corrupted: every live block keeps its pattern, rsmalloc_check() passes;
 *   - no lock is left held: a thread created before the exhaustion can still allocate
 *     after it (a hang is caught by a timed join and an alarm);
 *   - after the program frees memory, its next allocations succeed again, also of other
 *     sizes than the ones freed: small blocks freed -> one block of 1/4 of the budget;
 *     huge blocks freed -> as many small blocks as fit in half the budget; and repeating a
 *     fill/free cycle does not lose address space.
 * Run `oom.plain NAME` / `oom.linked NAME` to run one scenario only. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define MiB ((size_t)1 << 20)
#define BUDGET_MIB 256
#define BUDGET (BUDGET_MIB * MiB)
#define MAXBLOCKS (8u << 20)

typedef int (*check_fn)(void);
static check_fn rs_check_fn;

/* The table of live blocks is mapped before the limit is set (not from the allocator). */
struct rec {
    unsigned char *p;
    size_t n;
};
static struct rec *recs;
static size_t nrecs;

static void rs_check_now(void)
{
    if (rs_check_fn) rs_check_fn();
}

static size_t vm_size(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    size_t pages = 0, res = 0;
    if (!f) return 0;
    if (fscanf(f, "%zu %zu", &pages, &res) != 2) pages = 0;
    fclose(f);
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Limits the address space to what is in use now plus `budget`. */
static void limit_as(size_t budget)
{
    size_t cur = vm_size();
    struct rlimit rl = {cur + budget, cur + budget};
    if (setrlimit(RLIMIT_AS, &rl) != 0) {
        FAILF("setrlimit(RLIMIT_AS, %zu): %s", cur + budget, strerror(errno));
        exit(1);
    }
    printf("  address space limited to %.1f MiB (in use %.1f MiB + budget %.1f MiB)\n",
           (cur + budget) / (double)MiB, cur / (double)MiB, budget / (double)MiB);
}

static uint64_t tag_of(size_t i) { return rs_mix(i * 7919 + 17); }

static void *fill_new(size_t i, size_t n, unsigned char *p)
{
    recs[i].p = p;
    recs[i].n = n;
    rs_fill(p, n, tag_of(i));
    return p;
}

static size_t verify_all(const char *when)
{
    size_t bad = 0;
    for (size_t i = 0; i < nrecs; i++) {
        if (!recs[i].p) continue;
        size_t off = rs_verify(recs[i].p, recs[i].n, tag_of(i));
        if (off != (size_t)-1) {
            if (bad < 5)
                FAILF("%s: block %zu (%p, %zu bytes) corrupted at offset %zu", when, i, (void *)recs[i].p,
                      recs[i].n, off);
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %zu corrupted blocks", when, bad);
    return bad;
}

static void free_all(void)
{
    for (size_t i = 0; i < nrecs; i++) {
        free(recs[i].p);
        recs[i].p = NULL;
    }
    nrecs = 0;
}

/* Allocates blocks of size size_fn(i) until the allocator returns NULL; returns the bytes
 * obtained. Checks errno of the failure. */
static size_t fill_until_null(size_t (*size_fn)(size_t), const char *what, size_t max_bytes)
{
    size_t bytes = 0;
    for (;;) {
        if (nrecs >= MAXBLOCKS) {
            FAILF("%s: %u blocks and no NULL yet", what, MAXBLOCKS);
            break;
        }
        size_t n = size_fn(nrecs);
        errno = 0;
        unsigned char *p = malloc(n);
        if (!p) {
            CHECK(errno == ENOMEM, "%s: malloc(%zu) returned NULL with errno %d (%s), want ENOMEM", what, n,
                  errno, strerror(errno));
            break;
        }
        fill_new(nrecs++, n, p);
        bytes += n;
        if (bytes > max_bytes) {
            FAILF("%s: %.1f MiB allocated under a %.1f MiB address-space budget and no NULL yet", what,
                  bytes / (double)MiB, max_bytes / (double)MiB);
            break;
        }
    }
    printf("  %s: %zu blocks, %.1f MiB before NULL\n", what, nrecs, bytes / (double)MiB);
    return bytes;
}

static size_t size_small(size_t i) { return 16 + rs_mix(i) % 2000; }
static size_t size_64(size_t i) { (void)i; return 64; }
static size_t size_large(size_t i) { return 40000 + rs_mix(i) % 900000; }
static size_t size_huge(size_t i) { return 2 * MiB + rs_mix(i) % (3 * MiB); }

/* With memory exhausted: every allocation function fails cleanly (or succeeds correctly). */
static void check_failures(const char *when)
{
    void *p;
    size_t big = BUDGET; /* cannot fit: the budget is used up */
    errno = 0;
    p = malloc(big);
    CHECK(!p && errno == ENOMEM, "%s: malloc(%zu) = %p errno %d, want NULL/ENOMEM", when, big, p, errno);
    errno = 0;
    p = calloc(1, big);
    CHECK(!p && errno == ENOMEM, "%s: calloc(1, %zu) = %p errno %d, want NULL/ENOMEM", when, big, p, errno);
    errno = 0;
    p = calloc(big / 64, 64);
    CHECK(!p && errno == ENOMEM, "%s: calloc(%zu, 64) = %p errno %d, want NULL/ENOMEM", when, big / 64, p,
          errno);
    errno = 0;
    p = memalign(1 << 16, big);
    CHECK(!p && errno == ENOMEM, "%s: memalign(64K, %zu) = %p errno %d, want NULL/ENOMEM", when, big, p, errno);
    errno = 0;
    p = aligned_alloc(4096, big);
    CHECK(!p && errno == ENOMEM, "%s: aligned_alloc(4096, %zu) = %p errno %d, want NULL/ENOMEM", when, big, p,
          errno);
    void *q = (void *)0x1234;
    int r = posix_memalign(&q, 64, big);
    CHECK(r == ENOMEM && q == (void *)0x1234, "%s: posix_memalign(64, %zu) = %d (*memptr %p), want ENOMEM and untouched",
          when, big, r, q);
    /* realloc of a live block to a size that cannot fit: NULL, ENOMEM, old block intact */
    size_t victim = (size_t)-1;
    for (size_t i = 0; i < nrecs; i++)
        if (recs[i].p) { victim = i; break; }
    if (victim != (size_t)-1) {
        errno = 0;
        p = realloc(recs[victim].p, big);
        CHECK(!p && errno == ENOMEM, "%s: realloc(%p, %zu) = %p errno %d, want NULL/ENOMEM", when,
              (void *)recs[victim].p, big, p, errno);
        if (p) recs[victim].p = p; /* keep the table right if it did succeed */
        errno = 0;
        p = reallocarray(recs[victim].p, big / 16, 16);
        CHECK(!p && errno == ENOMEM, "%s: reallocarray(%p, %zu, 16) = %p errno %d, want NULL/ENOMEM", when,
              (void *)recs[victim].p, big / 16, p, errno);
        if (p) recs[victim].p = p;
    }
    /* small requests may or may not succeed (a partly used span); they must be sane */
    for (int k = 0; k < 64; k++) {
        size_t n = 8 + k * 97;
        errno = 0;
        unsigned char *s = malloc(n);
        if (!s) {
            CHECK(errno == ENOMEM, "%s: malloc(%zu) NULL with errno %d", when, n, errno);
            continue;
        }
        if (nrecs < MAXBLOCKS) fill_new(nrecs++, n, s);
        else free(s);
    }
    for (int k = 0; k < 16; k++) {
        size_t n = 8 + k * 1001;
        errno = 0;
        unsigned char *s = calloc(1, n);
        if (!s) {
            CHECK(errno == ENOMEM, "%s: calloc(1, %zu) NULL with errno %d", when, n, errno);
            continue;
        }
        CHECK(rs_first_nonzero(s, n) == (size_t)-1, "%s: calloc(1, %zu) memory not zero", when, n);
        free(s);
    }
}

/* ---- a helper thread that waits to be told to allocate (created before exhaustion) ---- */
struct helper {
    pthread_t th;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int go;
    size_t size, count;
    size_t got; /* allocations that succeeded */
    int bad_errno;
};

static void *helper_main(void *arg)
{
    struct helper *h = arg;
    pthread_mutex_lock(&h->m);
    while (!h->go) pthread_cond_wait(&h->cv, &h->m);
    pthread_mutex_unlock(&h->m);
    void **v = mmap(NULL, h->count * sizeof(void *), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v == MAP_FAILED) return NULL;
    for (size_t i = 0; i < h->count; i++) {
        errno = 0;
        v[i] = malloc(h->size);
        if (v[i]) {
            memset(v[i], 0x77, h->size);
            h->got++;
        } else if (errno != ENOMEM) {
            h->bad_errno = errno;
        }
    }
    for (size_t i = 0; i < h->count; i++) free(v[i]);
    munmap(v, h->count * sizeof(void *));
    return NULL;
}

static void helper_start(struct helper *h)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->m, NULL);
    pthread_cond_init(&h->cv, NULL);
    if (pthread_create(&h->th, NULL, helper_main, h) != 0) {
        FAILF("pthread_create failed");
        exit(1);
    }
}

/* Lets the helper allocate `count` blocks of `size`; waits at most 20 s for it. Returns
 * how many it got, or -1 if it hung (a lock left held). */
static long helper_run(struct helper *h, size_t size, size_t count)
{
    pthread_mutex_lock(&h->m);
    h->size = size;
    h->count = count;
    h->go = 1;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->m);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    int r = pthread_timedjoin_np(h->th, NULL, &ts);
    if (r != 0) {
        FAILF("a thread allocating %zu x %zu bytes after the exhaustion did not finish in 20 s: a lock left held?",
              count, size);
        return -1;
    }
    CHECK(h->bad_errno == 0, "helper thread: malloc NULL with errno %d, want ENOMEM", h->bad_errno);
    return (long)h->got;
}

/* ---- scenarios ---- */

/* Small blocks until NULL; failures of every function; free all; one block of 1/4 of the
 * budget must then succeed; another thread can allocate. */
static void s_small_then_big(void)
{
    struct helper h;
    helper_start(&h);
    limit_as(BUDGET);
    fill_until_null(size_small, "small blocks (16..2015 B)", 4 * BUDGET);
    CHECK(nrecs > 1000, "only %zu small blocks before NULL", nrecs);
    check_failures("after small blocks");
    verify_all("after small-block exhaustion");
    rs_check_now();
    free_all();
    rs_check_now();
    long got = helper_run(&h, 1000, 1000);
    CHECK(got == 1000, "after freeing everything, another thread got %ld of 1000 blocks of 1000 B", got);
    size_t n = BUDGET / 4;
    errno = 0;
    unsigned char *p = malloc(n);
    CHECK(p != NULL, "after freeing every small block, malloc(%zu) (1/4 of the budget) = NULL, errno %d: the "
          "address space of the freed small blocks was not given back", n, errno);
    if (p) {
        rs_fill(p, n, 42);
        CHECK(rs_verify(p, n, 42) == (size_t)-1, "big block contents");
        free(p);
    }
    /* and a few of them, one at a time */
    for (int k = 0; k < 4; k++) {
        p = malloc(BUDGET / 2);
        CHECK(p != NULL, "round %d: malloc(1/2 budget) after freeing everything = NULL", k);
        if (p) memset(p, k, 4096), free(p);
    }
    rs_check_now();
}

/* Huge blocks until NULL; free all; many small blocks (half the budget) must succeed. */
static void s_huge_then_small(void)
{
    limit_as(BUDGET);
    fill_until_null(size_huge, "huge blocks (2..5 MiB)", 4 * BUDGET);
    CHECK(nrecs >= 10, "only %zu huge blocks before NULL", nrecs);
    check_failures("after huge blocks");
    verify_all("after huge-block exhaustion");
    rs_check_now();
    free_all();
    size_t want = BUDGET / 2 / 1024, got = 0;
    for (size_t i = 0; i < want; i++) {
        size_t n = 16 + rs_mix(i) % 2000;
        unsigned char *p = malloc(n);
        if (!p) {
            FAILF("after freeing every huge block: small malloc(%zu) number %zu of %zu = NULL (errno %d): the "
                  "address space of the freed huge blocks is not reusable", n, i, want, errno);
            break;
        }
        fill_new(nrecs++, n, p);
        got += n;
    }
    printf("  then %zu small blocks, %.1f MiB\n", nrecs, got / (double)MiB);
    verify_all("small blocks after huge");
    rs_check_now();
    free_all();
}

/* Large (page-run) objects until NULL; free; huge and small must work again. */
static void s_large_then_huge(void)
{
    limit_as(BUDGET);
    fill_until_null(size_large, "large blocks (40 KiB..1 MiB)", 4 * BUDGET);
    CHECK(nrecs >= 50, "only %zu large blocks before NULL", nrecs);
    check_failures("after large blocks");
    verify_all("after large-block exhaustion");
    rs_check_now();
    free_all();
    unsigned char *p = malloc(BUDGET / 2);
    CHECK(p != NULL, "after freeing every large block, malloc(1/2 budget) = NULL (errno %d)", errno);
    free(p);
    rs_check_now();
}

/* Fill with 64-byte blocks, free every second one: the same thread and another thread
 * (created before, so on another arena) must get 64-byte blocks again. */
static void s_fragmented_other_thread(void)
{
    struct helper h;
    helper_start(&h);
    limit_as(BUDGET);
    fill_until_null(size_64, "64-byte blocks", 4 * BUDGET);
    size_t freed = 0;
    for (size_t i = 0; i < nrecs; i += 2) {
        free(recs[i].p);
        recs[i].p = NULL;
        freed++;
    }
    printf("  freed every second block: %zu blocks, %.1f MiB\n", freed, freed * 64 / (double)MiB);
    long got = helper_run(&h, 64, 20000);
    CHECK(got == 20000, "after the main thread freed %zu 64-byte blocks (%.1f MiB), another thread got only "
          "%ld of 20000 64-byte blocks", freed, freed * 64 / (double)MiB, got);
    size_t own = 0;
    for (size_t k = 0; k < 20000; k++) {
        unsigned char *p = malloc(64);
        if (!p) break;
        fill_new(nrecs++, 64, p);
        own++;
    }
    CHECK(own == 20000, "after freeing %zu 64-byte blocks the same thread got only %zu of 20000 again", freed, own);
    verify_all("fragmented");
    rs_check_now();
    free_all();
}

/* realloc growth until NULL: the old block stays intact and usable. */
static void s_realloc_growth(void)
{
    limit_as(BUDGET);
    /* some ballast so that growth hits the limit soon */
    size_t n = 1000;
    unsigned char *p = malloc(n);
    rs_fill(p, n, 99);
    int steps = 0;
    for (;;) {
        size_t m = n + n / 2 + 4096;
        errno = 0;
        unsigned char *q = realloc(p, m);
        if (!q) {
            CHECK(errno == ENOMEM, "realloc(%zu -> %zu) NULL with errno %d", n, m, errno);
            break;
        }
        CHECK(rs_verify(q, n, 99) == (size_t)-1, "realloc(%zu -> %zu) lost contents", n, m);
        rs_fill(q, m, 99);
        p = q;
        n = m;
        if (++steps > 200) { FAILF("realloc never failed"); break; }
    }
    printf("  realloc grew to %.1f MiB in %d steps before NULL\n", n / (double)MiB, steps);
    CHECK(n > BUDGET / 4, "realloc stopped at %.1f MiB of a %.1f MiB budget", n / (double)MiB, BUDGET / (double)MiB);
    CHECK(rs_verify(p, n, 99) == (size_t)-1, "block changed by a failed realloc");
    /* shrink must work even at the limit */
    unsigned char *q = realloc(p, n / 3);
    CHECK(q != NULL, "realloc shrink at the limit = NULL");
    if (q) {
        CHECK(rs_verify(q, n / 3, 99) == (size_t)-1, "shrink lost contents");
        p = q;
    }
    free(p);
    p = malloc(BUDGET / 2);
    CHECK(p != NULL, "after freeing the grown block, malloc(1/2 budget) = NULL (errno %d)", errno);
    free(p);
    rs_check_now();
}

/* Repeated fill/free cycles with mixed sizes: the amount obtainable must not shrink
 * (address space leaked by failed attempts or kept by caches). */
static size_t size_mixed(size_t i)
{
    uint64_t r = rs_mix(i ^ 0xabc) % 100;
    if (r < 80) return size_small(i);
    if (r < 97) return size_large(i);
    return size_huge(i);
}

static void s_cycles(void)
{
    limit_as(BUDGET);
    size_t first = 0;
    for (int c = 0; c < 4; c++) {
        char what[64];
        snprintf(what, sizeof what, "cycle %d (mixed sizes)", c);
        size_t b = fill_until_null(size_mixed, what, 4 * BUDGET);
        verify_all(what);
        rs_check_now();
        free_all();
        if (c == 0) first = b;
        else
            CHECK(b >= first - first / 10, "cycle %d got %.1f MiB, cycle 0 got %.1f MiB: address space lost", c,
                  b / (double)MiB, first / (double)MiB);
    }
    unsigned char *p = malloc(BUDGET / 2);
    CHECK(p != NULL, "after the cycles, malloc(1/2 budget) = NULL (errno %d)", errno);
    free(p);
}

/* Two threads exhaust memory at the same time, then free; both can allocate again. */
struct racer {
    int id;
    size_t n, bytes;
    unsigned char **v;
    size_t *sz;
    int bad;
};

static pthread_barrier_t race_bar;

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    for (int round = 0; round < 3; round++) {
        pthread_barrier_wait(&race_bar);
        r->n = r->bytes = 0;
        for (;;) {
            size_t n = size_mixed(r->n * 2 + r->id + round * 7777);
            errno = 0;
            unsigned char *p = malloc(n);
            if (!p) {
                if (errno != ENOMEM) r->bad = errno;
                break;
            }
            rs_fill(p, n, rs_mix(r->n + 1000 * r->id));
            r->v[r->n] = p;
            r->sz[r->n] = n;
            r->n++;
            r->bytes += n;
            if (r->n == 1u << 20) break;
        }
        for (size_t i = 0; i < r->n; i++)
            if (rs_verify(r->v[i], r->sz[i], rs_mix(i + 1000 * r->id)) != (size_t)-1) r->bad = -1;
        printf("  round %d thread %d: %zu blocks, %.1f MiB before NULL\n", round, r->id, r->n,
               r->bytes / (double)MiB);
        pthread_barrier_wait(&race_bar); /* both at the limit: now free */
        for (size_t i = 0; i < r->n; i++) free(r->v[i]);
        if (rs_check_fn) rs_check_fn();
    }
    return NULL;
}

/* Two threads (created before the limit) exhaust memory at the same time, verify, free;
 * three rounds: each round both must again get memory. */
static void s_threads_race(void)
{
    struct racer r[2];
    pthread_t th[2];
    pthread_barrier_init(&race_bar, NULL, 2);
    for (int t = 0; t < 2; t++) {
        memset(&r[t], 0, sizeof r[t]);
        r[t].id = t;
        r[t].v = mmap(NULL, (1u << 20) * sizeof(void *), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        r[t].sz = mmap(NULL, (1u << 20) * sizeof(size_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r[t].v == MAP_FAILED || r[t].sz == MAP_FAILED) exit(3);
    }
    limit_as(BUDGET);
    for (int t = 0; t < 2; t++)
        if (pthread_create(&th[t], NULL, racer_main, &r[t]) != 0) {
            FAILF("pthread_create under the limit failed (stack mapping?)");
            exit(1);
        }
    for (int t = 0; t < 2; t++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 60;
        if (pthread_timedjoin_np(th[t], NULL, &ts) != 0) {
            FAILF("racing thread %d did not finish in 60 s (deadlock?)", t);
            fflush(stdout);
            _exit(1);
        }
        CHECK(r[t].bad == 0, "racing thread %d: %s", t,
              r[t].bad == -1 ? "contents corrupted" : "malloc NULL with errno other than ENOMEM");
        CHECK(r[t].n > 10, "racing thread %d got only %zu blocks in the last round", t, r[t].n);
    }
    rs_check_now();
    unsigned char *p = malloc(BUDGET / 2);
    CHECK(p != NULL, "after both threads freed everything, malloc(1/2 budget) = NULL (errno %d)", errno);
    free(p);
}

struct scenario {
    const char *name;
    void (*run)(void);
};

static const struct scenario scenarios[] = {
    {"small_then_big", s_small_then_big},
    {"huge_then_small", s_huge_then_small},
    {"large_then_huge", s_large_then_huge},
    {"fragmented_other_thread", s_fragmented_other_thread},
    {"realloc_growth", s_realloc_growth},
    {"cycles", s_cycles},
    {"threads_race", s_threads_race},
};

static int run_scenario(const struct scenario *s)
{
    printf("oom: %s\n", s->name);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        FAILF("fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        alarm(90); /* a hang (lock left held) ends the child */
        atomic_store(&rs_failures, 0); /* count this scenario's failures only */
        recs = mmap(NULL, MAXBLOCKS * sizeof *recs, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
        if (recs == MAP_FAILED) _exit(3);
        s->run();
        fflush(stdout);
        _exit(atomic_load(&rs_failures) ? 1 : 0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        printf("oom: %s: ok\n", s->name);
        atomic_fetch_add(&rs_checks, 1);
        return 1;
    }
    if (WIFSIGNALED(st))
        FAILF("scenario %s: child killed by signal %d (%s)%s", s->name, WTERMSIG(st), strsignal(WTERMSIG(st)),
              WTERMSIG(st) == SIGALRM ? ": hung for 90 s (deadlock?)" : "");
    else
        FAILF("scenario %s: child exit status %d (see FAIL lines above)", s->name, WEXITSTATUS(st));
    return 0;
}

int main(int argc, char **argv)
{
    rs_check_loaded("oom");
    rs_check_fn = (check_fn)dlsym(RTLD_DEFAULT, "rsmalloc_check");
    size_t n = sizeof scenarios / sizeof scenarios[0];
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], scenarios[i].name) != 0) continue;
        run_scenario(&scenarios[i]);
    }
    return rs_summary("oom");
}
