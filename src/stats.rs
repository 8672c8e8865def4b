//! Process-wide counters, updated off the fast path with relaxed atomics (approximate under
//! races, never torn). Read by `rsmalloc_stats` and the tests.

use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

use crate::config::PAGE_SIZE;

static MAPPED: AtomicIsize = AtomicIsize::new(0);
static ACTIVE_PAGES: AtomicIsize = AtomicIsize::new(0);
static PURGED_PAGES: AtomicUsize = AtomicUsize::new(0);
static HUGE_BYTES: AtomicIsize = AtomicIsize::new(0);
static HUGE_COUNT: AtomicIsize = AtomicIsize::new(0);
static THREADS: AtomicIsize = AtomicIsize::new(0);
static CACHE_REFILLS: AtomicUsize = AtomicUsize::new(0);
static CACHE_FLUSHES: AtomicUsize = AtomicUsize::new(0);

pub fn add_mapped(b: isize) {
    MAPPED.fetch_add(b, Relaxed);
}
pub fn add_active_pages(n: isize) {
    ACTIVE_PAGES.fetch_add(n, Relaxed);
}
pub fn add_purged_pages(n: usize) {
    PURGED_PAGES.fetch_add(n, Relaxed);
}
pub fn add_huge(bytes: isize, count: isize) {
    HUGE_BYTES.fetch_add(bytes, Relaxed);
    HUGE_COUNT.fetch_add(count, Relaxed);
}
pub fn add_threads(n: isize) {
    THREADS.fetch_add(n, Relaxed);
}
pub fn count_refill() {
    CACHE_REFILLS.fetch_add(1, Relaxed);
}
pub fn count_flush() {
    CACHE_FLUSHES.fetch_add(1, Relaxed);
}

/// A snapshot of the counters; the layout is part of the C API (`include/rsmalloc.h`).
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct Snapshot {
    /// Bytes of address space mapped for chunks and huge objects.
    pub mapped: usize,
    /// Bytes in pages holding spans or large objects.
    pub active: usize,
    /// Bytes of huge objects (own mappings).
    pub huge: usize,
    pub huge_count: usize,
    /// Pages given back with MADV_DONTNEED since start (in bytes).
    pub purged: usize,
    /// Threads with a live thread cache.
    pub threads: usize,
    pub cache_refills: usize,
    pub cache_flushes: usize,
}

pub fn snapshot() -> Snapshot {
    let pos = |v: isize| v.max(0) as usize;
    Snapshot {
        mapped: pos(MAPPED.load(Relaxed)) + pos(HUGE_BYTES.load(Relaxed)),
        active: pos(ACTIVE_PAGES.load(Relaxed)) * PAGE_SIZE,
        huge: pos(HUGE_BYTES.load(Relaxed)),
        huge_count: pos(HUGE_COUNT.load(Relaxed)),
        purged: PURGED_PAGES.load(Relaxed) * PAGE_SIZE,
        threads: pos(THREADS.load(Relaxed)),
        cache_refills: CACHE_REFILLS.load(Relaxed),
        cache_flushes: CACHE_FLUSHES.load(Relaxed),
    }
}
