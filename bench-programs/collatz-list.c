/* collatz-list: T threads split the numbers 1..N (interleaved, for balance).
 * For each number the thread builds its Collatz sequence as a singly linked
 * list of malloc'd 16-byte cells (one malloc per cell), walks the list to get
 * the sequence's length and maximum, and frees every cell.
 * Checksum: sum over all numbers of (length + maximum). */
#include "common.h"

#define DEFAULT_N 350000L

typedef struct cell { uint64_t v; struct cell *next; } cell;
typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static void *worker(void *p) {
    arg_t *a = p;
    uint64_t sum = 0;
    for (long k = 1 + a->id; k <= a->n; k += a->nthreads) {
        uint64_t x = (uint64_t)k;
        cell *head = NULL, *tail = NULL;
        for (;;) { /* append, so the walk follows allocation order */
            cell *c = xmalloc(sizeof *c);
            c->v = x; c->next = NULL;
            if (tail) tail->next = c; else head = c;
            tail = c;
            if (x == 1) break;
            x = (x & 1) ? 3 * x + 1 : x / 2;
        }
        uint64_t len = 0, max = 0;
        for (cell *c = head; c; c = c->next) { len++; if (c->v > max) max = c->v; }
        while (head) { cell *nx = head->next; free(head); head = nx; }
        sum += len + max;
    }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int t; long n;
    bench_args(argc, argv, DEFAULT_N, &t, &n);
    arg_t *args = xmalloc(sizeof(arg_t) * (size_t)t);
    for (int i = 0; i < t; i++) args[i] = (arg_t){ i, t, n, 0 };
    run_threads(t, worker, args, sizeof(arg_t));
    uint64_t sum = 0;
    for (int i = 0; i < t; i++) sum += args[i].sum;
    print_result("collatz-list", t, n, sum);
    free(args);
    return 0;
}
