/* migrate: objects travel along a ring of T threads. A message with id m
 * makes HOPS hops; at each hop the receiving thread verifies the object it
 * got from its predecessor, frees it (a remote free when T > 1) and allocates
 * a new object (16..1039 bytes) for the next hop, which it pushes to its
 * successor. When a message finishes its last hop, the thread injects the
 * next unused message id (ids 0..N/HOPS-1). Each thread keeps up to 64
 * messages in flight, so N counts allocations in total. T=1 is a ring of one
 * thread (all frees local). Checksum: sum over all (message, hop) of a hash
 * plus the bytes read; independent of which thread handled which message. */
#include "common.h"

#define DEFAULT_N 14000000L
#define HOPS 8
#define INFLIGHT 64

typedef struct { uint64_t id, hop; } msg_t;
typedef struct { spsc_t inbox; int k; uint64_t sum; } node_t;

static node_t *nodes;
static int nthreads;
static long nmsgs;
static _Atomic long next_id, completed;

static inline size_t msg_size(uint64_t id, uint64_t hop) { return 16 + (size_t)(mix64(id * HOPS + hop) % 1024); }
static inline uint8_t fill_byte(uint64_t id, uint64_t hop) { return (uint8_t)(id * 13 + hop * 101) | 1; }

static msg_t *make(uint64_t id, uint64_t hop) {
    size_t sz = msg_size(id, hop);
    msg_t *m = xmalloc(sz);
    memset(m, fill_byte(id, hop), sz);
    m->id = id; m->hop = hop;
    return m;
}

static void send(node_t *to, msg_t *m) {
    while (!spsc_push(&to->inbox, m)) sched_yield(); /* cannot stay full: capacity >= all in flight */
}

static void *worker(void *p) {
    node_t *me = p;
    node_t *next = &nodes[(me->k + 1) % nthreads];
    uint64_t sum = 0;
    for (int i = 0; i < INFLIGHT; i++) {
        long id = atomic_fetch_add(&next_id, 1);
        if (id >= nmsgs) break;
        send(next, make((uint64_t)id, 0));
    }
    int idle = 0;
    while (atomic_load_explicit(&completed, memory_order_relaxed) < nmsgs) {
        msg_t *m = spsc_pop(&me->inbox);
        if (!m) { if (++idle > 16) { sched_yield(); idle = 0; } continue; }
        idle = 0;
        uint64_t id = m->id, hop = m->hop;
        size_t sz = msg_size(id, hop);
        const uint8_t *c = (const uint8_t *)m;
        uint8_t f = fill_byte(id, hop);
        if (hop >= HOPS || (uint64_t)id >= (uint64_t)nmsgs || (sz > 16 && (c[sz - 1] != f || c[16] != f)))
            die_corrupt("migrate", "bad message", id);
        uint64_t s = 0;
        for (size_t o = 16; o < sz; o += 64) s += c[o];
        sum += mix64(id * HOPS + hop) + s;
        free(m);
        if (hop + 1 < HOPS) {
            send(next, make(id, hop + 1));
        } else {
            atomic_fetch_add(&completed, 1);
            long nid = atomic_fetch_add(&next_id, 1);
            if (nid < nmsgs) send(next, make((uint64_t)nid, 0));
        }
    }
    me->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int t; long n;
    bench_args(argc, argv, DEFAULT_N, &t, &n);
    nthreads = t;
    nmsgs = n / HOPS;
    nodes = xmalloc(sizeof(node_t) * (size_t)t);
    for (int i = 0; i < t; i++) {
        spsc_init(&nodes[i].inbox, pow2_at_least((size_t)t * INFLIGHT + 1));
        nodes[i].k = i; nodes[i].sum = 0;
    }
    run_threads(t, worker, nodes, sizeof(node_t));
    uint64_t sum = 0;
    for (int i = 0; i < t; i++) { sum += nodes[i].sum; free(nodes[i].inbox.buf); }
    print_result("migrate", t, n, sum);
    free(nodes);
    return 0;
}
