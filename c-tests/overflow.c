/* overflow.c: allocator metadata must be out of reach of user overflows, or checked.
 *
 * In-process part ("neighbours"): blocks of many small and large sizes; every live block
 * gets 1..64 bytes written past its usable end (into live neighbours, free neighbours in the
 * thread cache and free neighbours in their span), with garbage that includes zeros, 0xff
 * and pointer values; then live blocks are re-filled and the program goes on allocating
 * (malloc, calloc, realloc) and freeing. After every round: every live block keeps its
 * unique pattern, calloc memory is zero, no two live blocks overlap (address ranges of
 * malloc_usable_size bytes, sorted), and rsmalloc_check() passes. Blocks that end exactly
 * (or whose overflow would cross) a 4 MiB chunk boundary are left out here (see the chunk_edge cases).
 *
 * Child-process cases (each asserts the exact outcome):
 *   huge_underflow_small     1..64 bytes written before a huge (> 1 MiB) block, and before
 *                            a 2 MiB-aligned huge block: the header sits at the start of
 *                            the mapping, a page (or the alignment) before the block, so
 *                            this must be harmless: free/realloc work, nothing on stderr.
 *   huge_underflow_canary    the page before a huge block overwritten (reaching the
 *                            header's canary): free must stop the process with
 *                            `rsmalloc: free(): corrupted block header at 0x<block>`.
 *   huge_underflow_fields    a contiguous underflow that overwrites the header's length
 *                            fields but not its first 8 bytes (the canary): must be caught
 *                            the same way, not turned into an munmap of a user-chosen length.
 *   chunk_edge_garbage       64 bytes of 'A' written past the last block of a chunk that is
 *                            directly followed by another chunk (bottom-up mmap layout, the
 *                            case re-executes itself with it): the write must fault on a
 *                            guard page, or be harmless, or stop the process with an
 *                            rsmalloc message - never corrupt silently.
 *   chunk_edge_crafted       as above, but the overflow bytes keep the next chunk's first
 *                            bytes as they were except two (crafted to make a 16-byte block
 *                            look like a 32 KiB one): the write must fault, or be harmless;
 *                            it must never lead to overlapping blocks.
 * Run `overflow.plain NAME` to run one part (neighbours or a case) only. */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/wait.h>

#define MiB ((size_t)1 << 20)
#define CHUNK ((uintptr_t)4 << 20)

typedef int (*check_fn)(void);
static check_fn check_p;
static void rs_check_now(void)
{
    if (check_p) check_p();
}

/* ---------------------------------------------------------------- neighbours */

#define NLIVE 20000
struct blk {
    unsigned char *p;
    size_t n;  /* usable size: the whole block is filled */
    uint64_t tag;
};
static struct blk live[NLIVE];
static uint64_t seed = 0x1234567;
static size_t calloc_checked, calloc_dirty;

static const size_t sizes[] = {1, 16, 24, 40, 48, 64, 100, 128, 160, 200, 512, 1000, 1500, 4096,
                               5000, 10000, 20000, 32768, 40000, 100000, 300000};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void refill(struct blk *b)
{
    rs_fill(b->p, b->n, b->tag);
}

static void new_block(struct blk *b, int how)
{
    size_t want = sizes[rs_rand(&seed) % NSIZES];
    unsigned char *p;
    if (how == 0) {
        p = malloc(want);
    } else {
        p = calloc(1, want);
        if (p) {
            size_t off = rs_first_nonzero(p, want);
            calloc_checked++;
            if (off != (size_t)-1 && calloc_dirty++ < 3)
                printf("overflow:   calloc(1, %zu) = %p not zero at offset %zu (byte 0x%02x)\n", want, (void *)p, off,
                       p[off]);
        }
    }
    CHECK(p != NULL, "allocation of %zu bytes failed", want);
    if (!p) return;
    b->p = p;
    b->n = malloc_usable_size(p);
    CHECK(b->n >= want, "usable size %zu < %zu", b->n, want);
    b->tag = rs_rand(&seed);
    refill(b);
}

static void free_block(struct blk *b)
{
    size_t off = rs_verify(b->p, b->n, b->tag);
    CHECK(off == (size_t)-1, "live block %p (%zu bytes) changed at offset %zu by the allocator", (void *)b->p, b->n, off);
    free(b->p);
    b->p = NULL;
}

static int cmp_blk(const void *a, const void *b)
{
    const struct blk *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

/* All live blocks keep their patterns and no two overlap. */
static void verify_live(const char *when)
{
    static struct blk sorted[NLIVE];
    size_t n = 0, bad = 0;
    for (size_t i = 0; i < NLIVE; i++) {
        if (!live[i].p) continue;
        size_t off = rs_verify(live[i].p, live[i].n, live[i].tag);
        if (off != (size_t)-1 && bad++ < 5)
            FAILF("%s: live block %p (%zu bytes) corrupted at offset %zu", when, (void *)live[i].p, live[i].n, off);
        sorted[n++] = live[i];
    }
    CHECK(bad == 0, "%s: %zu live blocks corrupted", when, bad);
    qsort(sorted, n, sizeof sorted[0], cmp_blk);
    size_t overlaps = 0;
    for (size_t i = 1; i < n; i++)
        if (sorted[i - 1].p + sorted[i - 1].n > sorted[i].p && overlaps++ < 5)
            FAILF("%s: blocks overlap: %p (%zu bytes) and %p", when, (void *)sorted[i - 1].p, sorted[i - 1].n,
                  (void *)sorted[i].p);
    CHECK(overlaps == 0, "%s: %zu overlapping live blocks", when, overlaps);
    rs_check_now();
}

/* Writes 1..64 bytes of garbage past the usable end of every live block (except at chunk
 * boundaries), then restores the live blocks' patterns. */
static void overflow_all(int round)
{
    uint64_t garbage[9];
    size_t done = 0;
    if (getenv("OVERFLOW_NO_WRITES")) return; /* diagnostic: the same run without overflows */
    for (size_t i = 0; i < NLIVE; i++) {
        struct blk *b = &live[i];
        if (!b->p) continue;
        uintptr_t end = (uintptr_t)b->p + b->n;
        size_t k = 1 + (i + round * 7) % 64;
        /* not across a chunk's end (the chunk_edge cases test that) */
        if ((end - 1) / CHUNK != (end + k - 1) / CHUNK) continue;
        if (b->n > MiB) continue; /* huge: past the end is another mapping */
        switch ((i + round) % 5) {
        case 0: memset(garbage, 0, sizeof garbage); break;
        case 1: memset(garbage, 0xff, sizeof garbage); break;
        case 2: for (int j = 0; j < 9; j++) garbage[j] = rs_rand(&seed); break;
        case 3: for (int j = 0; j < 9; j++) garbage[j] = (uint64_t)(uintptr_t)live[(i + j + 1) % NLIVE].p; break;
        default: for (int j = 0; j < 9; j++) garbage[j] = (uint64_t)(uintptr_t)b->p + 16 * j; break;
        }
        memcpy(b->p + b->n, garbage, k);
        done++;
    }
    for (size_t i = 0; i < NLIVE; i++)
        if (live[i].p) refill(&live[i]);
    printf("overflow: round %d: %zu blocks overflowed by 1..64 bytes\n", round, done);
}

static void churn(int ops)
{
    for (int i = 0; i < ops; i++) {
        struct blk *b = &live[rs_rand(&seed) % NLIVE];
        uint64_t r = rs_rand(&seed) % 10;
        if (!b->p) {
            new_block(b, r < 3);
        } else if (r < 6) {
            free_block(b);
        } else if (r < 8) {
            /* realloc: contents kept */
            size_t off = rs_verify(b->p, b->n, b->tag);
            CHECK(off == (size_t)-1, "block %p changed at %zu before realloc", (void *)b->p, off);
            size_t want = sizes[rs_rand(&seed) % NSIZES];
            unsigned char *q = realloc(b->p, want);
            CHECK(q != NULL, "realloc to %zu failed", want);
            if (!q) continue;
            size_t keep = b->n < want ? b->n : want;
            CHECK(rs_verify(q, keep, b->tag) == (size_t)-1, "realloc lost contents");
            b->p = q;
            b->n = malloc_usable_size(q);
            refill(b);
        }
    }
}

static void part_neighbours(void)
{
    printf("overflow: neighbours\n");
    for (size_t i = 0; i < NLIVE; i++) new_block(&live[i], i % 4 == 0);
    /* free a third: some stay in the thread cache, the rest go back to their spans */
    for (size_t i = 0; i < NLIVE; i += 3) free_block(&live[i]);
    verify_live("before overflows");
    for (int round = 0; round < 6; round++) {
        overflow_all(round);
        churn(20000);
        verify_live("after overflows and churn");
        /* free most, so that overflowed free blocks are reused */
        for (size_t i = 0; i < NLIVE; i++)
            if (live[i].p && rs_rand(&seed) % 3) free_block(&live[i]);
        churn(30000);
        verify_live("after reuse");
    }
    for (size_t i = 0; i < NLIVE; i++)
        if (live[i].p) free_block(&live[i]);
    rs_check_now();
    /* Bytes written past a block can land in free pages the allocator believes zero (purged
     * or never used): a later calloc that skips zeroing them returns the garbage. */
    CHECK(calloc_dirty == 0, "%zu of %zu calloc results were not zero after overflows had written into free "
          "memory (calloc of large objects trusts that free purged/fresh pages are still zero)",
          calloc_dirty, calloc_checked);
}

/* ---------------------------------------------------------------- child cases */

static void huge_underflow_small(void)
{
    for (int v = 0; v < 2; v++) {
        size_t n = 3 * MiB + 12345;
        unsigned char *p = v ? memalign(2 * MiB, n) : malloc(n);
        if (!p) _exit(90);
        rs_fill(p, n, 7);
        unsigned char *u = rs_launder(p);
        for (int k = 1; k <= 64; k++) u[-k] = (unsigned char)(0xA5 ^ k);
        CHECK(rs_verify(p, n, 7) == (size_t)-1, "block changed by writing before it");
        CHECK(malloc_usable_size(p) >= n, "usable size after underflow");
        p = realloc(p, n * 2);
        if (!p) _exit(91);
        CHECK(rs_verify(p, n, 7) == (size_t)-1, "realloc after underflow lost contents");
        u = rs_launder(p);
        for (int k = 1; k <= 64; k++) u[-k] = 0;
        free(p);
    }
    void *q = malloc(5 * MiB);
    memset(q, 1, 5 * MiB);
    free(q);
    rs_check_now();
}

static unsigned char *huge_victim;

static void huge_underflow_canary(void)
{
    size_t n = 3 * MiB;
    unsigned char *p = malloc(n);
    if (!p) _exit(90);
    huge_victim = p;
    memset((unsigned char *)rs_launder(p) - 4096, 'A', 4096); /* the whole page before the block, header included */
    free(p);
    printf("free returned\n");
}

static void huge_underflow_fields(void)
{
    /* some live blocks whose contents must survive */
    enum { N = 64 };
    unsigned char *other[N];
    for (int i = 0; i < N; i++) {
        other[i] = malloc(100000 + i * 1000);
        if (!other[i]) _exit(90);
        rs_fill(other[i], 100000 + i * 1000, i);
    }
    size_t n = 3 * MiB;
    unsigned char *p = malloc(n);
    if (!p) _exit(90);
    huge_victim = p;
    /* Write backwards from the block to 8 bytes after the start of its page-before,
     * leaving the first 8 bytes of that page alone. What lands on bytes 8..31 of the
     * page is user data: here a length 64 MiB too large, an offset equal to the real one
     * (one page), and a 4 MiB alignment. */
    uint64_t words[3] = {(uint64_t)(4096 + n + 4095) / 4096 * 4096 + (64u << 20), 4096, 4 << 20};
    unsigned char *page = (unsigned char *)rs_launder(p) - 4096;
    memset(page + 32, 'B', 4096 - 32);
    memcpy(page + 8, words, sizeof words);
    free(p);
    printf("free returned\n");
    /* had free believed the length, everything mapped after the block is gone */
    for (int i = 0; i < N; i++)
        CHECK(rs_verify(other[i], 100000 + i * 1000, i) == (size_t)-1, "block %d changed", i);
    void *q = malloc(8 * MiB);
    if (q) memset(q, 3, 8 * MiB);
    rs_check_now();
}

/* Allocates 16-byte blocks until some block ends exactly where a chunk whose first pages
 * hold other live blocks begins. Returns that block, or NULL. */
static unsigned char **many;
static size_t nmany;

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* With the default top-down mmap layout every chunk is followed by the 4 MiB that the
 * allocator over-mapped for alignment and trimmed: no chunk follows another directly. With
 * the legacy bottom-up layout (personality ADDR_COMPAT_LAYOUT, as `setarch -L`; the chunk_edge
 * cases re-execute themselves with it) chunks follow each other, and the last block of one
 * chunk is directly followed by the next chunk's header. */
static unsigned char *find_chunk_edge(uintptr_t *next_chunk)
{
    size_t cap = 1500000;
    many = mmap(NULL, cap * sizeof *many, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (many == MAP_FAILED) _exit(92);
    for (nmany = 0; nmany < cap; nmany++) {
        many[nmany] = malloc(16);
        if (!many[nmany]) _exit(93);
        memset(many[nmany], 0x11, 16);
    }
    qsort(many, nmany, sizeof *many, cmp_ptr);
    for (size_t i = 0; i + 1 < nmany; i++) {
        uintptr_t end = (uintptr_t)many[i] + 16;
        if ((end & (CHUNK - 1)) == 0 && (uintptr_t)many[i + 1] >= end && (uintptr_t)many[i + 1] < end + 32 * 16384) {
            *next_chunk = end;
            return many[i];
        }
    }
    return NULL;
}

static int is_live16(uintptr_t a)
{
    size_t lo = 0, hi = nmany;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((uintptr_t)many[mid] < a) lo = mid + 1;
        else hi = mid;
    }
    return lo < nmany && (uintptr_t)many[lo] == a;
}

static void chunk_edge(int crafted)
{
    uintptr_t next = 0;
    unsigned char *edge = find_chunk_edge(&next);
    if (!edge) {
        FAILF("chunk_edge: no 16-byte block ends at the start of another chunk of 16-byte blocks, even with the "
              "legacy mmap layout: the test could not set up its overflow");
        return;
    }
    /* the first page of the next chunk that holds live blocks */
    size_t k = 0;
    for (size_t pg = 1; pg < 32; pg++)
        if (is_live16(next + pg * 16384)) { k = pg; break; }
    printf("chunk_edge: block %p ends at chunk %p; first page with blocks: %zu\n", (void *)edge, (void *)next, k);
    if (!k) _exit(94);
    unsigned char buf[64];
    /* what is there now (the crafted overflow keeps it); write() to a pipe tells whether the
     * bytes are readable without faulting (EFAULT on a guard page) */
    int pfd[2];
    int readable = pipe(pfd) == 0 && write(pfd[1], (void *)next, 64) == 64;
    if (readable) {
        memcpy(buf, (void *)next, 64);
    } else {
        memset(buf, 0, 64);
        printf("chunk_edge: the next chunk's first bytes are not readable (guard page)\n");
    }
    if (crafted) {
        /* two bytes changed: the page's entry now reads as class 39 (32 KiB, per the size-class
         * table: 8 classes of 16..128 B, then 4 per doubling) starting at page k */
        buf[2 * k] = 40;
        buf[2 * k + 1] = (unsigned char)k;
    } else {
        memset(buf, 'A', 64);
    }
    printf("chunk_edge: overflowing\n");
    fflush(stdout);
    memcpy(rs_launder(edge + 16), buf, 64); /* the overflow: 64 bytes past a 16-byte block */
    printf("chunk_edge: overflow written\n");
    /* the program goes on: frees the first block of page k, allocates */
    unsigned char *victim = (unsigned char *)(next + k * 16384);
    free(victim);
    unsigned char *big = malloc(32768);
    if (big) {
        int overlaps = big < victim + 16384 && big + 32768 > victim;
        CHECK(!(big == victim || overlaps) , "malloc(32768) returned %p, which overlaps 16-byte blocks still live in "
              "page %zu of chunk %p (the overflow made free() take a 16-byte block for a 32 KiB one)",
              (void *)big, k, (void *)next);
        memset(big, 0x22, 32768);
    }
    /* the 16-byte blocks must be intact (all but the freed one) */
    size_t bad = 0;
    for (size_t i = 0; i < nmany; i++) {
        if (many[i] == victim || many[i] == edge) continue;
        if (many[i][0] != 0x11 || many[i][15] != 0x11) bad++;
    }
    CHECK(bad == 0, "%zu live 16-byte blocks overwritten", bad);
    /* free everything in the next chunk and keep going */
    for (size_t i = 0; i < nmany; i++)
        if (many[i] != victim && many[i] != edge && (uintptr_t)many[i] >= next && (uintptr_t)many[i] < next + CHUNK) {
            free(many[i]);
            many[i] = NULL;
        }
    for (int i = 0; i < 100000; i++) free(malloc(16 + i % 100));
    rs_check_now();
}

static void chunk_edge_garbage(void) { chunk_edge(0); }
static void chunk_edge_crafted(void) { chunk_edge(1); }

struct ccase {
    const char *name;
    void (*run)(void);
    int legacy;      /* 1: run with the bottom-up mmap layout (re-executed) */
    const char *msg; /* NULL: must exit 0 with nothing from rsmalloc on stderr; else: must die of
                        SIGABRT with exactly this message followed by " 0x<victim>" */
    int victim;      /* 1: the message names huge_victim */
    int may_stop;    /* with msg NULL: stopping with one `rsmalloc: ` line counts as caught */
};

static const struct ccase ccases[] = {
    {"huge_underflow_small", huge_underflow_small, 0, NULL, 0, 0},
    {"huge_underflow_canary", huge_underflow_canary, 0, "rsmalloc: free(): corrupted block header at", 1, 0},
    {"huge_underflow_fields", huge_underflow_fields, 0, "rsmalloc: free(): corrupted block header at", 1, 0},
    {"chunk_edge_garbage", chunk_edge_garbage, 1, NULL, 0, 1},
    {"chunk_edge_crafted", chunk_edge_crafted, 1, NULL, 0, 0},
};

static char *self_path;

static void run_ccase(const struct ccase *c)
{
    int out[2], err[2];
    if (pipe(out) || pipe(err)) { FAILF("pipe"); return; }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(out[0]); close(err[0]);
        alarm(60);
        if (c->legacy) {
            char *args[] = {self_path, (char *)"--child", (char *)c->name, NULL};
            personality(ADDR_COMPAT_LAYOUT);
            execv("/proc/self/exe", args);
            _exit(88);
        }
        atomic_store(&rs_failures, 0);
        setvbuf(stdout, NULL, _IOLBF, 0);
        c->run();
        if (huge_victim) printf("victim %p\n", (void *)huge_victim);
        fflush(stdout);
        _exit(atomic_load(&rs_failures) ? 1 : 0);
    }
    close(out[1]); close(err[1]);
    static char obuf[65536], ebuf[65536];
    size_t ol = 0, el = 0;
    for (int open_ = 2; open_;) {
        open_ = 0;
        ssize_t r = read(out[0], obuf + ol, sizeof obuf - 1 - ol);
        if (r > 0) { ol += r; open_ = 1; }
        ssize_t s = read(err[0], ebuf + el, sizeof ebuf - 1 - el);
        if (s > 0) { el += s; open_ = 1; }
        if (r == 0 && s == 0) break;
        if (r <= 0 && s <= 0 && !open_) break;
        open_ = 1;
        if (r <= 0 && s <= 0) break;
    }
    obuf[ol] = ebuf[el] = 0;
    close(out[0]); close(err[0]);
    int st;
    waitpid(pid, &st, 0);
    printf("overflow: %s: child %s %d; stdout:\n%s", c->name, WIFSIGNALED(st) ? "signal" : "exit",
           WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), obuf);
    if (el) printf("  stderr: %s", ebuf);
    CHECK(strstr(obuf, "FAIL ") == NULL, "%s: the child's checks failed (FAIL lines above)", c->name);
    int lines_ = 0;
    for (const char *q = ebuf; *q; q++) lines_ += *q == '\n';
    if (!c->msg && c->legacy && WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV && strstr(obuf, "chunk_edge: overflowing") &&
        !strstr(obuf, "overflow written")) {
        printf("overflow: %s: caught (the overflow itself faulted: a guard page before the next chunk's header)\n",
               c->name);
    } else if (!c->msg && c->may_stop && WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && lines_ == 1 &&
        !strncmp(ebuf, "rsmalloc: ", 10)) {
        printf("overflow: %s: caught (the process stopped with an rsmalloc message)\n", c->name);
    } else if (!c->msg) {
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: must be harmless, but the child %s %d (%s)", c->name,
              WIFSIGNALED(st) ? "died of signal" : "exited with", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
              el ? ebuf : "no stderr");
        CHECK(strstr(ebuf, "rsmalloc") == NULL, "%s: rsmalloc complained: %s", c->name, ebuf);
    } else {
        char want[200] = "";
        const char *v = strstr(obuf, "victim ");
        /* the child prints the victim only if free returned; otherwise we know it from the abort
         * message's prefix; check the form */
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "%s: the child must die of SIGABRT, but %s %d", c->name,
              WIFSIGNALED(st) ? "died of signal" : "exited with", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        CHECK(v == NULL, "%s: free() returned: the corruption went unnoticed", c->name);
        snprintf(want, sizeof want, "%s 0x", c->msg);
        int lines = 0;
        for (const char *q = ebuf; *q; q++) lines += *q == '\n';
        CHECK(strncmp(ebuf, want, strlen(want)) == 0 && lines == 1,
              "%s: stderr must be one line `%s<address of the block>`, got: %s", c->name, want, el ? ebuf : "(nothing)");
    }
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc > 2 && !strcmp(argv[1], "--child")) {
        /* a case re-executed in a child (stdout and stderr already go to the parent) */
        setvbuf(stdout, NULL, _IOLBF, 0);
        check_p = (check_fn)dlsym(RTLD_DEFAULT, "rsmalloc_check");
        for (size_t i = 0; i < sizeof ccases / sizeof ccases[0]; i++)
            if (!strcmp(argv[2], ccases[i].name)) ccases[i].run();
        fflush(stdout);
        return atomic_load(&rs_failures) ? 1 : 0;
    }
    rs_check_loaded("overflow");
    check_p = (check_fn)dlsym(RTLD_DEFAULT, "rsmalloc_check");
    const char *only = argc > 1 ? argv[1] : NULL;
    if (!only || !strcmp(only, "neighbours")) part_neighbours();
    for (size_t i = 0; i < sizeof ccases / sizeof ccases[0]; i++)
        if (!only || !strcmp(only, ccases[i].name)) run_ccase(&ccases[i]);
    return rs_summary("overflow");
}
