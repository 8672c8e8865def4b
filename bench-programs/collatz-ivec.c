/* collatz-ivec: like collatz-list, but each Collatz sequence is stored in a
 * growable vector of uint64_t that starts with capacity 4 and doubles with
 * realloc. Length and maximum are computed by scanning the vector; the vector
 * is then freed. Checksum: sum over all numbers of (length + maximum). */
#include "common.h"

#define DEFAULT_N 2000000L

typedef struct { int id, nthreads; long n; uint64_t sum; } arg_t;

static void *worker(void *p) {
    arg_t *a = p;
    uint64_t sum = 0;
    for (long k = 1 + a->id; k <= a->n; k += a->nthreads) {
        size_t cap = 4, len = 0;
        uint64_t *v = xmalloc(cap * sizeof *v);
        uint64_t x = (uint64_t)k;
        for (;;) {
            if (len == cap) { cap *= 2; v = xrealloc(v, cap * sizeof *v); }
            v[len++] = x;
            if (x == 1) break;
            x = (x & 1) ? 3 * x + 1 : x / 2;
        }
        uint64_t max = 0;
        for (size_t i = 0; i < len; i++) if (v[i] > max) max = v[i];
        free(v);
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
    print_result("collatz-ivec", t, n, sum);
    free(args);
    return 0;
}
