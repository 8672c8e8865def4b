//! The per-thread cache: per size class, a bounded LIFO stack of free blocks. The fast paths
//! of malloc and free touch only this thread's cache — no lock, no atomic read-modify-write.
//! An empty stack refills half its capacity from the thread's arena in one locked batch; a
//! full one flushes its older half to the owning spans.
//!
//! A free block in a cache carries the process secret in its second word. `free` of a block
//! that already carries it is checked on the slow path (is it in this cache, or free in its
//! span?) and stops the process as a double free; `malloc` clears the word again.
//!
//! Life cycle: the slot in TLS is null until the thread's first call, then points at a cache
//! mapped (or recycled) for it; at thread exit the cache is flushed, recycled, and the slot
//! points at `DEAD`, an empty cache of capacity zero that sends every call to the locked
//! arena paths.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::arena;
use crate::config::narenas;
use crate::init;
use crate::lock::Mutex;
use crate::os::{self, OS_PAGE};
use crate::size_class::{CLASSES, NCLASSES};
use crate::span::Chunk;
use crate::stats;
use crate::tls;

#[repr(C)]
pub struct Bin {
    count: u32,
    cap: u32,
    stack: *mut *mut u8,
}

#[repr(C)]
pub struct TCache {
    bins: [Bin; NCLASSES],
    arena: usize,
    /// `arena::pressure_events()` when this cache last flushed itself whole.
    pressure_seen: usize,
    /// Link in the pool of caches of exited threads.
    next_free: *mut TCache,
}

struct SyncCache(TCache);
// SAFETY: DEAD has capacity zero everywhere, so no thread ever writes to it.
unsafe impl Sync for SyncCache {}
static DEAD: SyncCache = SyncCache(TCache {
    bins: [const { Bin { count: 0, cap: 0, stack: null_mut() } }; NCLASSES],
    arena: 0,
    pressure_seen: 0,
    next_free: null_mut(),
});

const fn stack_slots() -> usize {
    let mut n = 0;
    let mut c = 0;
    while c < NCLASSES {
        n += CLASSES[c].cache_cap as usize;
        c += 1;
    }
    n
}
const TCACHE_BYTES: usize =
    (core::mem::size_of::<TCache>() + stack_slots() * 8 + OS_PAGE - 1) & !(OS_PAGE - 1);

struct Retired {
    head: *mut TCache,
}
// SAFETY: retired caches belong to no thread; they are reached only under this lock.
unsafe impl Send for Retired {}
static RETIRED: Mutex<Retired> = Mutex::new(Retired { head: null_mut() });
static NEXT_ARENA: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
fn dead() -> *mut TCache {
    &DEAD.0 as *const TCache as *mut TCache
}

/// This thread's cache, or null before its first call.
#[inline(always)]
pub fn current() -> *mut TCache {
    tls::get() as *mut TCache
}

fn cache_ref<'a>(tc: *mut TCache) -> &'a mut TCache {
    // SAFETY: callers pass this thread's own live cache (never DEAD when writing).
    unsafe { &mut *tc }
}

/// Pops a block of class `c` from this thread's cache; null when the cache is empty or
/// missing (then take the slow path).
#[inline(always)]
pub fn pop(tc: *mut TCache, c: usize) -> *mut u8 {
    // SAFETY: `tc` is this thread's cache or DEAD; `c < NCLASSES` (from class_of).
    unsafe {
        let bin = &mut (*tc).bins[c];
        if bin.count == 0 {
            return null_mut();
        }
        bin.count -= 1;
        let p = *bin.stack.add(bin.count as usize);
        // The block leaves the free state: clear its double-free mark.
        *(p as *mut u64).add(1) = 0;
        p
    }
}

/// Pushes free block `p` of class `c`; false when the cache is full or missing.
#[inline(always)]
pub fn push(tc: *mut TCache, c: usize, p: *mut u8, secret: u64) -> bool {
    // SAFETY: `tc` is this thread's cache or DEAD (cap 0: never written); `p` is a validated
    // block of class `c`, at least 16 bytes long.
    unsafe {
        let bin = &mut (*tc).bins[c];
        if bin.count >= bin.cap {
            return false;
        }
        *bin.stack.add(bin.count as usize) = p;
        bin.count += 1;
        *(p as *mut u64).add(1) = secret;
        true
    }
}

/// This thread's cache, creating it on the thread's first call. DEAD after thread exit or
/// when no memory is left for a cache.
pub fn get_or_create() -> *mut TCache {
    let tc = current();
    if !tc.is_null() {
        return tc;
    }
    init::ensure();
    let tc = {
        let mut r = RETIRED.lock();
        let t = r.head;
        if !t.is_null() {
            r.head = cache_ref(t).next_free;
        }
        t
    };
    let tc = if tc.is_null() { os::map(TCACHE_BYTES) as *mut TCache } else { tc };
    if tc.is_null() {
        return dead();
    }
    let t = cache_ref(tc);
    let mut stack = (tc as usize + core::mem::size_of::<TCache>()) as *mut *mut u8;
    for (c, bin) in t.bins.iter_mut().enumerate() {
        bin.count = 0;
        bin.cap = CLASSES[c].cache_cap as u32;
        bin.stack = stack;
        // SAFETY: the stacks are laid out back to back inside the TCACHE_BYTES mapping.
        stack = unsafe { stack.add(bin.cap as usize) };
    }
    t.arena = NEXT_ARENA.fetch_add(1, Relaxed) % narenas();
    t.next_free = null_mut();
    t.pressure_seen = arena::pressure_events();
    tls::set(tc as *mut u8);
    init::register_thread_cache(tc as *mut u8);
    stats::add_threads(1);
    tc
}

#[inline(always)]
pub fn is_live(tc: *mut TCache) -> bool {
    !tc.is_null() && tc != dead()
}

/// The arena a thread's cache refills from (arena 0 for threads without a cache).
pub fn arena_of(tc: *mut TCache) -> usize {
    if is_live(tc) {
        cache_ref(tc).arena
    } else {
        0
    }
}

/// Refills class `c` and pops one block; null when memory is exhausted.
#[inline(never)]
pub fn refill_and_pop(tc: *mut TCache, c: usize) -> *mut u8 {
    let t = cache_ref(tc);
    let a = t.arena;
    let bin = &mut t.bins[c];
    let want = (bin.cap as usize / 2).max(1);
    // SAFETY: the stack has `cap` slots and is empty here (count == 0).
    let out = unsafe { core::slice::from_raw_parts_mut(bin.stack, want) };
    let got = arena::lock(a).take_small(a, c, out);
    stats::count_refill();
    if got == 0 {
        return null_mut();
    }
    // Blocks came lowest address first; hand out the lowest first.
    out[..got].reverse();
    bin.count = got as u32;
    pop(tc, c)
}

/// Flushes the older `n` blocks of class `c` to their spans.
fn flush(tc: *mut TCache, c: usize, n: usize) {
    let bin = &mut cache_ref(tc).bins[c];
    let count = bin.count as usize;
    let n = n.min(count);
    // SAFETY: the first `count` slots of the stack hold blocks.
    let all = unsafe { core::slice::from_raw_parts_mut(bin.stack, count) };
    return_blocks(&mut all[..n]);
    all.copy_within(n..count, 0);
    bin.count = (count - n) as u32;
    stats::count_flush();
}

/// Returns blocks (of any arenas) to their spans, one lock acquisition per arena involved.
/// Reorders `blocks`.
pub fn return_blocks(blocks: &mut [*mut u8]) {
    let mut remaining = blocks.len();
    while remaining > 0 {
        // SAFETY: every block is a validated small block, so its chunk header is mapped.
        let a = unsafe { (*Chunk::of(blocks[0] as usize)).arena } as usize;
        let mut g = arena::lock(a);
        let mut kept = 0;
        for i in 0..remaining {
            let p = blocks[i];
            // SAFETY: as above.
            if unsafe { (*Chunk::of(p as usize)).arena } as usize == a {
                g.put_small(p as usize, "free");
            } else {
                blocks[kept] = p;
                kept += 1;
            }
        }
        remaining = kept;
    }
}

/// Frees `p` of class `c` when the fast path could not: full or missing cache.
#[inline(never)]
pub fn free_slow(p: *mut u8, c: usize, secret: u64) {
    let tc = get_or_create();
    if is_live(tc) {
        if push(tc, c, p, secret) {
            return;
        }
        let cap = cache_ref(tc).bins[c].cap as usize;
        flush(tc, c, (cap / 2).max(1));
        let events = arena::pressure_events();
        if events != cache_ref(tc).pressure_seen {
            cache_ref(tc).pressure_seen = events;
            flush_all(tc);
        }
        if push(tc, c, p, secret) {
            return;
        }
    }
    let mut one = [p];
    return_blocks(&mut one);
}

/// Whether `p` sits in this thread's cache of class `c` (for the double-free check).
pub fn contains(tc: *mut TCache, c: usize, p: *mut u8) -> bool {
    if !is_live(tc) {
        return false;
    }
    let bin = &cache_ref(tc).bins[c];
    // SAFETY: the first `count` slots of the stack hold blocks.
    let s = unsafe { core::slice::from_raw_parts(bin.stack, bin.count as usize) };
    s.contains(&p)
}

/// Empties every bin of this thread's cache into the arenas.
pub fn flush_all(tc: *mut TCache) {
    if !is_live(tc) {
        return;
    }
    for c in 0..NCLASSES {
        let n = cache_ref(tc).bins[c].count as usize;
        if n > 0 {
            flush(tc, c, n);
        }
    }
}

/// Thread exit: return every cached block, recycle the cache, leave DEAD in the slot so
/// that later calls on this thread (other destructors) take the locked paths.
pub fn retire(tc: *mut TCache) {
    tls::set(dead() as *mut u8);
    if !is_live(tc) {
        return;
    }
    flush_all(tc);
    stats::add_threads(-1);
    let mut r = RETIRED.lock();
    cache_ref(tc).next_free = r.head;
    r.head = tc;
}

/// Walks this thread's cache: every cached block must be a block of its class that its span
/// counts as allocated.
pub fn check_current() {
    let tc = current();
    if !is_live(tc) {
        return;
    }
    for c in 0..NCLASSES {
        let bin = &cache_ref(tc).bins[c];
        // SAFETY: the first `count` slots of the stack hold blocks.
        let s = unsafe { core::slice::from_raw_parts(bin.stack, bin.count as usize) };
        for (i, &p) in s.iter().enumerate() {
            if crate::heap::locate(p as usize) != crate::heap::Located::Small(c) {
                crate::report::fatal("check", "cache holds a foreign block", p as usize);
            }
            // SAFETY: p is a small block, so its chunk header is mapped.
            let a = unsafe { (*Chunk::of(p as usize)).arena } as usize;
            if arena::lock(a).small_is_free(p as usize) {
                crate::report::fatal("check", "cached block also free in its span", p as usize);
            }
            if s[i + 1..].contains(&p) {
                crate::report::fatal("check", "block cached twice", p as usize);
            }
        }
    }
}

pub fn fork_prepare() {
    RETIRED.lock_forever();
}
pub fn fork_parent() {
    RETIRED.force_unlock();
}
pub fn fork_child() {
    RETIRED.reset_in_child();
}
