/* misuse.c: every misuse case runs in a forked child whose stderr goes to a pipe. The child
 * must die of SIGABRT after writing exactly one line to stderr, of the form
 *     rsmalloc: <function>(): <problem> 0x<hex address>
 * naming the function that was misused and the address (printf "%p" of the pointer passed).
 * Run `misuse.plain NAME` / `misuse.linked NAME` to run one case only. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

static int report_fd = -1;

/* Tells the parent which pointer the allocator must name in its message. */
static void report(const void *p)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%p\n", p);
    if (write(report_fd, buf, n) != n) _exit(97);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) _exit(98);
    memset(p, 0x5A, n);
    return rs_launder(p);
}

static long global_var[8];

/* ---- cases (each runs in its own child) ---- */

static void c_double_free_immediate(void)
{
    void *p = xmalloc(64);
    free(p);
    report(p);
    free(rs_launder(p));
}

static void c_double_free_after_other_sizes(void)
{
    void *keep[100];
    void *p = xmalloc(48);
    free(p);
    for (int i = 0; i < 100; i++) keep[i] = xmalloc(1000 + (i % 3) * 2000); /* other size classes */
    for (int i = 0; i < 100; i++) free(keep[i]);
    report(p);
    free(rs_launder(p));
}

static void c_double_free_after_cache_flush(void)
{
    enum { N = 20000 };
    void **v = xmalloc(N * sizeof(void *));
    void *p = xmalloc(64);
    for (int i = 0; i < N; i++) v[i] = xmalloc(64); /* same class, all allocated before p is freed */
    free(p);
    for (int i = 0; i < N; i++) free(v[i]); /* pushes p out of any thread cache */
    report(p);
    free(rs_launder(p));
}

static void *thread_free(void *p)
{
    free(p);
    return NULL;
}

static void c_double_free_cross_thread(void)
{
    void *p = xmalloc(64);
    pthread_t t;
    if (pthread_create(&t, NULL, thread_free, p)) _exit(96);
    pthread_join(t, NULL);
    report(p);
    free(rs_launder(p));
}

/* the first free still sits in the cache of a thread that is alive and waiting */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_state;
static void *thread_free_and_wait(void *p)
{
    free(p);
    pthread_mutex_lock(&gate_mu);
    gate_state = 1;
    pthread_cond_broadcast(&gate_cv);
    while (gate_state != 2) pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    return NULL;
}
static void c_double_free_cross_thread_alive(void)
{
    void *p = xmalloc(64);
    pthread_t t;
    if (pthread_create(&t, NULL, thread_free_and_wait, p)) _exit(96);
    pthread_mutex_lock(&gate_mu);
    while (gate_state != 1) pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    report(p);
    free(rs_launder(p)); /* must abort here, while the other thread still caches p */
}

/* a block the cache holds but never handed out (refilled along with another one) */
static void c_free_never_handed_out(void)
{
    char *a = xmalloc(48);
    void *b = rs_launder(a + 48); /* the next block of the same span, fetched into the cache */
    report(b);
    free(b);
}

/* double free after a bulk free made the thread's cache send frees straight to spans */
static void c_double_free_while_draining(void)
{
    enum { N = 200000 };
    void **v = malloc(N * sizeof *v);
    if (!v) _exit(98);
    for (int i = 0; i < N; i++) v[i] = xmalloc(200);
    for (int i = 0; i < N - 1; i++) free(v[i]);
    void *p = v[N - 1];
    free(p);
    report(p);
    free(rs_launder(p));
}

/* Allocates n bytes, frees them, then frees the same pointer again. */
static void double_free_of(size_t n)
{
    void *p = xmalloc(n);
    free(p);
    report(p);
    free(rs_launder(p));
}

static void c_double_free_large(void)
{
    double_free_of(1 << 20);
}

static void c_free_stack(void)
{
    char local[64];
    memset(local, 1, sizeof local);
    void *p = rs_launder(local);
    report(p);
    free(p);
}

static void c_free_global(void)
{
    void *p = rs_launder(&global_var[2]);
    report(p);
    free(p);
}

static void c_free_mmap(void)
{
    void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) _exit(95);
    memset(m, 7, 1 << 16);
    void *p = (char *)m + 4096;
    report(p);
    free(rs_launder(p));
}

static void c_free_interior_small(void)
{
    char *p = xmalloc(64);
    report(p + 16);
    free(rs_launder(p + 16));
}

static void c_free_interior_large(void)
{
    char *p = xmalloc(1 << 20);
    report(p + 4096);
    free(rs_launder(p + 4096));
}

/* A small block's address with a bit above the 48-bit address space set: it aliases the
 * block in a page-map lookup that ignores those bits, and must still be refused. */
static void c_free_noncanonical_alias(void)
{
    char *p = xmalloc(64);
    void *q = (void *)((uintptr_t)p | ((uintptr_t)1 << 52));
    report(q);
    free(rs_launder(q));
}

/* Double free of a huge block (one in the huge heap). */
static void c_double_free_huge(void)
{
    double_free_of(3 << 20);
}

static void c_realloc_freed(void)
{
    void *p = xmalloc(64);
    free(p);
    report(p);
    void *q = realloc(rs_launder(p), 128);
    (void)q;
}

static void c_realloc_freed_large(void)
{
    void *p = xmalloc(2 << 20);
    free(p);
    report(p);
    void *q = realloc(rs_launder(p), 3 << 20);
    (void)q;
}

static void c_realloc_stack(void)
{
    char local[64];
    memset(local, 1, sizeof local);
    void *p = rs_launder(local);
    report(p);
    void *q = realloc(p, 200);
    (void)q;
}

static void c_free_sized_too_large(void)
{
    void *p = xmalloc(64);
    size_t u = malloc_usable_size(p);
    report(p);
    rs_free_sized(rs_launder(p), u + 4096);
}

static void c_free_sized_too_large_big(void)
{
    void *p = xmalloc(1 << 20);
    size_t u = malloc_usable_size(p);
    report(p);
    rs_free_sized(rs_launder(p), u + (8 << 20));
}

struct mcase {
    const char *name;
    const char *fn; /* function that must be named in the message */
    void (*run)(void);
    int contract; /* 1: listed in the allocator contract; 0: extra (stricter) case */
};

static const struct mcase cases[] = {
    {"double_free_immediate", "free", c_double_free_immediate, 1},
    {"double_free_after_other_sizes", "free", c_double_free_after_other_sizes, 1},
    {"double_free_after_cache_flush", "free", c_double_free_after_cache_flush, 1},
    {"free_stack", "free", c_free_stack, 1},
    {"free_global", "free", c_free_global, 1},
    {"free_mmap", "free", c_free_mmap, 1},
    {"free_interior_small", "free", c_free_interior_small, 1},
    {"free_interior_large", "free", c_free_interior_large, 1},
    {"realloc_freed", "realloc", c_realloc_freed, 1},
    {"free_sized_too_large", "free_sized", c_free_sized_too_large, 1},
    {"double_free_large", "free", c_double_free_large, 0},
    {"double_free_cross_thread", "free", c_double_free_cross_thread, 0},
    {"double_free_cross_thread_alive", "free", c_double_free_cross_thread_alive, 0},
    {"free_never_handed_out", "free", c_free_never_handed_out, 0},
    {"double_free_while_draining", "free", c_double_free_while_draining, 0},
    {"realloc_freed_large", "realloc", c_realloc_freed_large, 0},
    {"realloc_stack", "realloc", c_realloc_stack, 0},
    {"free_sized_too_large_big", "free_sized", c_free_sized_too_large_big, 0},
    {"free_noncanonical_alias", "free", c_free_noncanonical_alias, 0},
    {"double_free_huge", "free", c_double_free_huge, 0},
};

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        len += r;
        if (len >= cap - 1) break;
    }
    buf[len] = 0;
    return len;
}

static void printable(char *dst, size_t cap, const char *s)
{
    size_t j = 0;
    for (; *s && j + 5 < cap; s++) {
        if (*s == '\n') {
            dst[j++] = '\\';
            dst[j++] = 'n';
        } else if ((unsigned char)*s < 32) {
            j += snprintf(dst + j, cap - j, "\\x%02x", (unsigned char)*s);
        } else
            dst[j++] = *s;
    }
    dst[j] = 0;
}

static int run_case(const struct mcase *c)
{
    int errp[2], repp[2];
    if (pipe(errp) || pipe(repp)) {
        FAILF("pipe: %s", strerror(errno));
        return 0;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        FAILF("fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        struct rlimit rl = {0, 0};
        setrlimit(RLIMIT_CORE, &rl);
        signal(SIGABRT, SIG_DFL);
        alarm(20);
        close(errp[0]);
        close(repp[0]);
        report_fd = repp[1];
        if (dup2(errp[1], 2) < 0) _exit(94);
        close(errp[1]);
        c->run();
        /* survived the misuse */
        _exit(93);
    }
    close(errp[1]);
    close(repp[1]);
    char err[4096], rep[128];
    read_all(repp[0], rep, sizeof rep);
    read_all(errp[0], err, sizeof err);
    close(errp[0]);
    close(repp[0]);
    int st = 0;
    waitpid(pid, &st, 0);

    char *nl = strchr(rep, '\n');
    if (nl) *nl = 0;
    const char *addr = rep;
    char perr[1024];
    printable(perr, sizeof perr, err);
    int ok = 1;
#define MFAIL(...)                                                                              \
    do {                                                                                        \
        char m_[512];                                                                           \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                   \
        FAILF("misuse %s%s: %s (child stderr: \"%s\")", c->name, c->contract ? "" : " [extra]", m_, \
              perr);                                                                            \
        ok = 0;                                                                                 \
    } while (0)

    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT) {
        if (WIFEXITED(st) && WEXITSTATUS(st) == 93)
            MFAIL("the process survived the misuse (no abort)");
        else if (WIFEXITED(st))
            MFAIL("child exited with status %d, expected death by SIGABRT", WEXITSTATUS(st));
        else if (WIFSIGNALED(st))
            MFAIL("child killed by signal %d (%s), expected SIGABRT", WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
            MFAIL("unexpected wait status %#x", st);
    }
    if (!*addr) MFAIL("child did not report the pointer");
    size_t len = strlen(err);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += err[i] == '\n';
    if (len == 0)
        MFAIL("nothing written to stderr");
    else if (lines != 1 || err[len - 1] != '\n')
        MFAIL("stderr must be exactly one newline-terminated line, got %d newline(s)", lines);
    else {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "rsmalloc: %s(): ", c->fn);
        if (strncmp(err, "rsmalloc: ", 10) != 0)
            MFAIL("stderr line does not start with \"rsmalloc: \"");
        else if (strncmp(err, prefix, strlen(prefix)) != 0)
            MFAIL("stderr line does not start with \"%s\" (must name the function)", prefix);
        /* the address, as a whole token */
        const char *hit = NULL, *s = err;
        while (*addr && (s = strstr(s, addr)) != NULL) {
            char after = s[strlen(addr)];
            if (!((after >= '0' && after <= '9') || (after >= 'a' && after <= 'f') ||
                  (after >= 'A' && after <= 'F'))) {
                hit = s;
                break;
            }
            s++;
        }
        if (*addr && !hit) MFAIL("stderr line does not contain the address %s", addr);
    }
    if (ok) {
        printf("misuse: %-32s ok   %s", c->name, err);
        atomic_fetch_add(&rs_checks, 1);
    }
    return ok;
}

int main(int argc, char **argv)
{
    rs_check_loaded("misuse");
    if (!rs_free_sized) FAILF("free_sized not exported; free_sized cases skipped");
    int n = 0, bad_contract = 0, bad_extra = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
        if (!rs_free_sized && cases[i].run == c_free_sized_too_large) continue;
        if (!rs_free_sized && cases[i].run == c_free_sized_too_large_big) continue;
        n++;
        if (!run_case(&cases[i])) {
            if (cases[i].contract) bad_contract++;
            else bad_extra++;
        }
    }
    if (argc > 1 && n == 0) FAILF("no case named %s", argv[1]);
    printf("misuse: %d cases, %d contract case(s) failed, %d extra case(s) failed\n", n, bad_contract,
           bad_extra);
    return rs_summary("misuse");
}
