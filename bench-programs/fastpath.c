/* fastpath: `fastpath N` does N malloc+free pairs of small sizes (16..256
 * bytes, multiples of 16) on one thread, writing one byte per block. Used by
 * scripts/instructions.sh to count instructions per malloc+free pair; N=0
 * measures the fixed cost (process start-up, allocator initialisation). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000L;
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) {
        size_t sz = 16 + (size_t)(((uint64_t)i * 0x9e3779b97f4a7c15ULL) >> 60) * 16;
        volatile uint8_t *p = malloc(sz);
        if (!p) abort();
        p[0] = (uint8_t)i;
        sum += p[0];
        free((void *)p);
    }
    printf("fastpath n=%ld checksum=%016llx\n", n, (unsigned long long)sum);
    return 0;
}
