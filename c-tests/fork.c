/* fork.c: background threads allocate and free continuously while the main thread forks
 * 50 times. Each child checks and frees blocks inherited from the parent, mallocs/frees a
 * few hundred blocks of various sizes, spawns a thread that allocates, (every 10th child)
 * forks a grandchild doing the same, and _exits 0. Every 5th fork is made from a
 * short-lived non-main thread. The parent waits with a timeout and
 * requires every child to exit with status 0 (a deadlocked child is killed and reported). */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#define NBG 4
#define NFORKS 50
#define NINHERIT 16

static atomic_int stop;

static size_t rand_size(uint64_t *rng)
{
    uint64_t r = rs_rand(rng);
    if (r % 200 == 0) return (1 << 20) + (r >> 20) % (3 << 20);
    return 1 + (rs_rand(rng) & ((1ULL << ((r >> 8) % 17)) - 1));
}

static void *bg(void *arg)
{
    uint64_t rng = rs_mix((uintptr_t)arg) | 1;
    enum { K = 256 };
    struct {
        void *p;
        size_t n;
    } s[K] = {{0}};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int i = rs_rand(&rng) % K;
        if (s[i].p) {
            size_t bad = rs_verify(s[i].p, s[i].n, (uintptr_t)s[i].p);
            if (bad != (size_t)-1) FAILF("bg block %p size %zu corrupted at %zu", s[i].p, s[i].n, bad);
            if (rs_rand(&rng) & 1) {
                free(s[i].p);
                s[i].p = NULL;
                continue;
            }
            size_t n = rand_size(&rng);
            void *q = realloc(s[i].p, n);
            if (!q) {
                FAILF("realloc(%zu) failed", n);
                continue;
            }
            s[i].p = q;
            s[i].n = n;
        } else {
            size_t n = rand_size(&rng);
            void *p = (rng & 4) ? calloc(1, n) : malloc(n);
            if (!p) {
                FAILF("malloc(%zu) failed", n);
                continue;
            }
            s[i].p = p;
            s[i].n = n;
        }
        rs_fill(s[i].p, s[i].n, (uintptr_t)s[i].p);
    }
    for (int i = 0; i < K; i++) free(s[i].p);
    return NULL;
}

static void *child_thread(void *arg)
{
    uint64_t rng = (uintptr_t)arg | 1;
    void *ps[64] = {0};
    for (int i = 0; i < 2000; i++) {
        int k = rs_rand(&rng) % 64;
        free(ps[k]);
        size_t n = rand_size(&rng);
        ps[k] = malloc(n);
        if (!ps[k]) {
            FAILF("child thread malloc(%zu) failed", n);
            return (void *)1;
        }
        memset(ps[k], k, n < 4096 ? n : 4096);
    }
    for (int k = 0; k < 64; k++) free(ps[k]);
    return NULL;
}

/* What every child (and grandchild) does. Returns the exit status. */
static int child_work(int idx, void **inh, size_t *inh_n)
{
    alarm(30); /* a deadlocked child dies of SIGALRM instead of hanging the test */
    long f0 = atomic_load(&rs_failures);
    for (int i = 0; i < NINHERIT; i++) {
        if (!inh[i]) continue;
        size_t bad = rs_verify(inh[i], inh_n[i], (uintptr_t)inh[i] ^ 0xF0F0);
        if (bad != (size_t)-1) FAILF("child %d: inherited block %d corrupted at %zu", idx, i, bad);
        if (i & 1) {
            void *q = realloc(inh[i], inh_n[i] * 2 + 1);
            if (!q) FAILF("child %d: realloc of inherited block failed", idx);
            else if (rs_verify(q, inh_n[i], (uintptr_t)inh[i] ^ 0xF0F0) != (size_t)-1)
                FAILF("child %d: realloc of inherited block lost contents", idx);
            free(q ? q : inh[i]);
        } else
            free(inh[i]);
    }
    uint64_t rng = rs_mix(idx + 12345) | 1;
    void *ps[300];
    size_t ns[300];
    for (int i = 0; i < 300; i++) {
        ns[i] = rand_size(&rng);
        ps[i] = (i % 3 == 0) ? calloc(ns[i], 1) : malloc(ns[i]);
        if (!ps[i]) {
            FAILF("child %d: malloc(%zu) failed", idx, ns[i]);
            continue;
        }
        if (i % 3 == 0 && rs_first_nonzero(ps[i], ns[i]) != (size_t)-1)
            FAILF("child %d: calloc(%zu) not zeroed", idx, ns[i]);
        rs_fill(ps[i], ns[i], i);
        if (i % 4 == 3) {
            free(ps[i - 1]);
            ps[i - 1] = NULL;
        }
    }
    for (int i = 0; i < 300; i++)
        if (ps[i]) {
            if (rs_verify(ps[i], ns[i], i) != (size_t)-1) FAILF("child %d: block %d corrupted", idx, i);
            free(ps[i]);
        }
    pthread_t t;
    void *ret = (void *)1;
    int e = pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(idx + 7));
    if (e)
        FAILF("child %d: pthread_create: %s", idx, strerror(e));
    else {
        pthread_join(t, &ret);
        if (ret) FAILF("child %d: its thread failed", idx);
    }
    return atomic_load(&rs_failures) != f0 ? 1 : 0;
}

/* Waits for pid up to `secs` seconds; returns its wait status, or -1 after killing it. */
static int wait_timeout(pid_t pid, double secs)
{
    double end = rs_now() + secs;
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return st;
        if (r < 0 && errno != EINTR) return -2;
        if (rs_now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void describe_status(char *buf, size_t len, int st)
{
    if (st == -1) snprintf(buf, len, "hung (killed after timeout; deadlock after fork?)");
    else if (st == -2) snprintf(buf, len, "waitpid failed");
    else if (WIFEXITED(st)) snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, len, "status %#x", st);
}

/* One fork round: allocate blocks to inherit, fork, child works, parent waits.
 * Returns 1 if the child (and grandchild) exited 0. */
static int fork_round(int k)
{
    void *inh[NINHERIT];
    size_t inh_n[NINHERIT];
    uint64_t rng = rs_mix(k + 77) | 1;
    for (int i = 0; i < NINHERIT; i++) {
        inh_n[i] = rand_size(&rng);
        inh[i] = malloc(inh_n[i]);
        if (inh[i]) rs_fill(inh[i], inh_n[i], (uintptr_t)inh[i] ^ 0xF0F0);
    }
    /* Let the background threads get busy. */
    for (volatile int spin = 0; spin < 200000; spin++) {}
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        FAILF("fork: %s", strerror(errno));
        for (int i = 0; i < NINHERIT; i++) free(inh[i]);
        return 0;
    }
    if (pid == 0) {
        int rc = child_work(k, inh, inh_n);
        if (k % 10 == 0) { /* grandchild, forked from a single-threaded child */
            void *gi[NINHERIT] = {0};
            size_t gn[NINHERIT] = {0};
            gi[0] = malloc(1000);
            gn[0] = 1000;
            rs_fill(gi[0], 1000, (uintptr_t)gi[0] ^ 0xF0F0);
            fflush(stdout);
            pid_t g = fork();
            if (g == 0) _exit(child_work(1000 + k, gi, gn));
            int st = g > 0 ? wait_timeout(g, 40) : -2;
            if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
                char d[128];
                describe_status(d, sizeof d, st);
                FAILF("grandchild of child %d %s", k, d);
                rc = 1;
            }
            free(gi[0]);
        }
        fflush(stdout);
        _exit(rc);
    }
    for (int i = 0; i < NINHERIT; i++) free(inh[i]);
    int st = wait_timeout(pid, 60);
    if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        atomic_fetch_add(&rs_checks, 1);
        return 1;
    }
    char d[128];
    describe_status(d, sizeof d, st);
    FAILF("child %d %s%s", k, d, k % 5 == 4 ? " (forked from a non-main thread)" : "");
    return 0;
}

static void *fork_in_thread(void *arg)
{
    return (void *)(uintptr_t)fork_round((int)(uintptr_t)arg);
}

int main(void)
{
    rs_check_loaded("fork");
    pthread_t th[NBG];
    for (int i = 0; i < NBG; i++) pthread_create(&th[i], NULL, bg, (void *)(uintptr_t)(i + 1));
    int ok_children = 0;
    for (int k = 0; k < NFORKS; k++) {
        if (k % 5 == 4) { /* every 5th fork comes from a short-lived non-main thread */
            pthread_t t;
            void *r = NULL;
            if (pthread_create(&t, NULL, fork_in_thread, (void *)(uintptr_t)k)) {
                FAILF("pthread_create failed");
                continue;
            }
            pthread_join(t, &r);
            ok_children += r != NULL;
        } else
            ok_children += fork_round(k);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < NBG; i++) pthread_join(th[i], NULL);
    printf("fork: %d of %d children exited 0\n", ok_children, NFORKS);
    return rs_summary("fork");
}
