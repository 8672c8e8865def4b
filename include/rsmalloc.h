/* rsmalloc's own calls, beyond the standard allocation functions it exports. */
#ifndef RSMALLOC_H
#define RSMALLOC_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Process-wide counters (approximate under concurrent use, never torn). */
struct rsmalloc_stats {
    size_t mapped;        /* bytes of address space mapped for chunks and huge objects */
    size_t active;        /* bytes in pages holding spans or large objects */
    size_t huge;          /* bytes mapped for huge objects (live and cached) */
    size_t huge_count;    /* huge mappings (live and cached) */
    size_t purged;        /* bytes given back with MADV_DONTNEED since start */
    size_t threads;       /* threads with a live thread cache */
    size_t cache_refills; /* thread-cache refills from arenas */
    size_t cache_flushes; /* thread-cache flushes to arenas */
};

/* "rsmalloc X.Y.Z" */
const char *rsmalloc_version(void);
/* Fills *out without allocating; 0 on success, -1 if out is NULL. */
int rsmalloc_stats(struct rsmalloc_stats *out);
/* Checks every span and the calling thread's cache; stops the process on an inconsistency. */
int rsmalloc_check(void);

#ifdef __cplusplus
}
#endif
#endif
