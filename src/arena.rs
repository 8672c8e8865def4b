//! Arenas: each a lock over per-class lists of partially free spans, the chunks they are cut
//! from, and the large objects (page runs) those chunks also serve. Thread caches refill from
//! and flush to arenas in batches; a block always returns to the span (and so the arena) it
//! came from, whichever thread frees it.
//!
//! Memory goes back in two steps: a span or large object that becomes free returns its
//! pages to its chunk as *dirty*; dirty pages are purged (MADV_DONTNEED) after one to two
//! purge epochs, so a page freed and reused soon is not faulted in again. A chunk that
//! becomes entirely free goes to a small global pool, and beyond it back to the kernel.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::config::{narenas, CHUNK_SIZE, MAX_ARENAS, PAGE_SIZE, PURGE_EPOCH_NS};
use crate::lock::{Guard, Mutex};
use crate::os;
use crate::pagemap;
use crate::report::fatal;
use crate::size_class::{self, NCLASSES};
use crate::span::{Chunk, Span, KIND_LARGE};
use crate::stats;

pub struct ArenaState {
    /// Per class, a doubly linked list of spans with at least one free block.
    partial: [*mut Span; NCLASSES],
    /// Chunks owned by this arena, oldest first (first fit prefers them).
    chunks: *mut Chunk,
    last_chunk: *mut Chunk,
    /// Start of the current purge epoch.
    epoch_start: u64,
    /// Free pages of this arena's chunks that may be resident (not purged since freed).
    dirty: usize,
    /// Pages holding spans or large objects.
    pub active: usize,
    /// Bytes out of this arena: small blocks handed to caches or programs, large objects.
    /// Unlike `active`, a span pinned by one cached block counts for that block only.
    used: usize,
    /// Statistics per class: blocks handed to caches, blocks returned, spans in use.
    pub taken: [u64; NCLASSES],
    pub returned: [u64; NCLASSES],
    pub spans: [u32; NCLASSES],
    pub nchunks: u32,
}

// SAFETY: the raw pointers lead into chunks that only the holder of the arena lock touches.
unsafe impl Send for ArenaState {}

#[repr(align(128))]
pub struct Arena(Mutex<ArenaState>);

#[allow(clippy::declare_interior_mutable_const)]
const ARENA_INIT: Arena = Arena(Mutex::new(ArenaState {
    partial: [null_mut(); NCLASSES],
    chunks: null_mut(),
    last_chunk: null_mut(),
    epoch_start: 0,
    dirty: 0,
    active: 0,
    used: 0,
    taken: [0; NCLASSES],
    returned: [0; NCLASSES],
    spans: [0; NCLASSES],
    nchunks: 0,
}));
static ARENAS: [Arena; MAX_ARENAS] = [ARENA_INIT; MAX_ARENAS];

/// Empty chunks kept for reuse by any arena (purged, still registered in the page map).
struct Pool {
    head: *mut Chunk,
    count: usize,
}
// SAFETY: pooled chunks are reached only under the pool lock.
unsafe impl Send for Pool {}
static POOL: Mutex<Pool> = Mutex::new(Pool {
    head: null_mut(),
    count: 0,
});
const POOL_MAX: usize = 4;
/// Counts purges forced by many pages being freed at once. A thread cache that sees it move
/// flushes itself whole: a program shrinking its heap should not keep spans pinned by the
/// blocks its caches still hold.
static PRESSURE: AtomicUsize = AtomicUsize::new(0);

pub fn pressure_events() -> usize {
    PRESSURE.load(Relaxed)
}

/// Dirty pages an arena keeps, whatever happens, until its purge epoch ends (2 MiB). Beyond
/// it, an arena whose dirty bytes exceed DIRTY_RATIO times its used bytes (its resident
/// footprint shrank to a quarter of what it was; blocks sitting in thread caches count as
/// used, the rest of the spans they pin does not) is purged at once, so a program that
/// frees everything gets its memory back even if it then stays idle, while a working set
/// that is freed and reused (churn) is left to the epochs. The bound depends on no clock: a bulk free that
/// straddles an epoch's end is caught like one within an epoch.
const DIRTY_MIN_PAGES: usize = (2 << 20) / PAGE_SIZE;
const DIRTY_RATIO: usize = 3;

pub fn lock(a: usize) -> Guard<'static, ArenaState> {
    ARENAS[a % MAX_ARENAS].0.lock()
}

pub fn try_lock(a: usize) -> Option<Guard<'static, ArenaState>> {
    ARENAS[a % MAX_ARENAS].0.try_lock()
}

fn chunk_ref<'a>(c: *mut Chunk) -> &'a mut Chunk {
    // SAFETY: callers pass chunks of the arena whose lock they hold (or fresh ones).
    unsafe { &mut *c }
}

fn span_ref<'a>(s: *mut Span) -> &'a mut Span {
    // SAFETY: span descriptors live in chunk headers reached under the arena lock.
    unsafe { &mut *s }
}

/// Whether page `idx` of `ch` starts a live large object (checked under the arena lock:
/// of two racing frees or reallocs of one object, the second finds it freed).
fn is_live_large(ch: &Chunk, idx: usize) -> bool {
    ch.info[idx].kind == KIND_LARGE && ch.info[idx].head as usize == idx && !ch.page_is_free(idx)
}

impl ArenaState {
    fn list_push(&mut self, c: usize, s: *mut Span) {
        let sp = span_ref(s);
        sp.prev = null_mut();
        sp.next = self.partial[c];
        if !sp.next.is_null() {
            span_ref(sp.next).prev = s;
        }
        sp.listed = true;
        self.partial[c] = s;
    }

    fn list_remove(&mut self, c: usize, s: *mut Span) {
        let sp = span_ref(s);
        if !sp.prev.is_null() {
            span_ref(sp.prev).next = sp.next;
        } else {
            self.partial[c] = sp.next;
        }
        if !sp.next.is_null() {
            span_ref(sp.next).prev = sp.prev;
        }
        sp.next = null_mut();
        sp.prev = null_mut();
        sp.listed = false;
    }

    fn link_chunk(&mut self, c: *mut Chunk) {
        let ch = chunk_ref(c);
        ch.next = null_mut();
        ch.prev = self.last_chunk;
        if self.last_chunk.is_null() {
            self.chunks = c;
        } else {
            chunk_ref(self.last_chunk).next = c;
        }
        self.last_chunk = c;
        self.nchunks += 1;
    }

    fn unlink_chunk(&mut self, c: *mut Chunk) {
        let ch = chunk_ref(c);
        if ch.prev.is_null() {
            self.chunks = ch.next;
        } else {
            chunk_ref(ch.prev).next = ch.next;
        }
        if ch.next.is_null() {
            self.last_chunk = ch.prev;
        } else {
            chunk_ref(ch.next).prev = ch.prev;
        }
        self.nchunks -= 1;
    }

    /// Finds `n` free pages (aligned to `align` pages) in this arena's chunks, taking a new
    /// chunk if none has room. Returns (chunk, first page).
    fn alloc_pages(&mut self, arena: usize, n: usize, align: usize) -> Option<(*mut Chunk, usize)> {
        let mut c = self.chunks;
        while !c.is_null() {
            let ch = chunk_ref(c);
            let dirty = ch.dirty_count();
            if let Some(idx) = ch.alloc_pages(n, align) {
                self.dirty -= dirty - ch.dirty_count();
                return Some((c, idx));
            }
            c = ch.next;
        }
        // a new chunk (fresh or pooled) has no dirty pages
        let c = new_chunk(arena)?;
        self.link_chunk(c);
        let idx = chunk_ref(c).alloc_pages(n, align)?;
        Some((c, idx))
    }

    /// Takes the free pages `idx..idx + n` of chunk `c` (checked free by the caller).
    fn take_pages(&mut self, c: *mut Chunk, idx: usize, n: usize) {
        let ch = chunk_ref(c);
        let dirty = ch.dirty_count();
        ch.take_pages(idx, n);
        self.dirty -= dirty - ch.dirty_count();
    }

    fn free_pages(&mut self, c: *mut Chunk, idx: usize, n: usize) {
        self.dirty += chunk_ref(c).free_pages(idx, n);
        self.active -= n;
        stats::add_active_pages(-(n as isize));
        if self.dirty > DIRTY_MIN_PAGES && self.dirty * PAGE_SIZE > DIRTY_RATIO * self.used {
            // The resident footprint is mostly free pages: a bulk free, not churn. Give them
            // back now; the program may stay idle from here on.
            PRESSURE.fetch_add(1, Relaxed);
            self.purge(true);
        } else if chunk_ref(c).is_empty() && self.has_other_empty_chunk(c) {
            // An arena keeps one empty chunk for the next span; a second one leaves now,
            // rather than at the end of the epoch that may never come if the program goes
            // idle (its header and dirty pages would stay resident).
            let ch = chunk_ref(c);
            self.dirty -= ch.dirty_count();
            self.unlink_chunk(c);
            release_chunk(c);
        } else {
            self.tick();
        }
    }

    /// Whether a chunk of this arena other than `c` is empty.
    fn has_other_empty_chunk(&self, c: *mut Chunk) -> bool {
        let mut o = self.chunks;
        while !o.is_null() {
            if o != c && chunk_ref(o).is_empty() {
                return true;
            }
            o = chunk_ref(o).next;
        }
        false
    }

    fn count_active(&mut self, n: usize) {
        self.active += n;
        stats::add_active_pages(n as isize);
    }

    /// Fills `out` with free blocks of class `c`; returns how many (0 only when out of memory).
    pub fn take_small(&mut self, arena: usize, c: usize, out: &mut [*mut u8]) -> usize {
        let k = size_class::info(c);
        let mut got = 0;
        while got < out.len() {
            let mut s = self.partial[c];
            if s.is_null() {
                let Some((ch, idx)) = self.alloc_pages(arena, k.pages as usize, 1) else {
                    break;
                };
                self.count_active(k.pages as usize);
                self.spans[c] += 1;
                s = chunk_ref(ch).make_small(idx, c);
                self.list_push(c, s);
            }
            let ch = chunk_ref(Chunk::of(s as usize));
            let base = ch.page_addr(ch.index_of_span(s));
            let sp = span_ref(s);
            got += sp.take_blocks(base, k.size as usize, &mut out[got..]);
            if sp.nfree == 0 {
                self.list_remove(c, s);
            }
        }
        self.taken[c] += got as u64;
        self.used += got * k.size as usize;
        self.tick();
        got
    }

    /// Returns one small block to its span; `p` must lie in a chunk of this arena.
    /// Aborts on a double free or a pointer that is not the start of a block.
    pub fn put_small(&mut self, p: usize, func: &str) {
        let c = Chunk::of(p);
        let ch = chunk_ref(c);
        let pi = ch.info[ch.page_index(p)];
        let head = pi.head as usize;
        let s = ch.span_at(head);
        let sp = span_ref(s);
        let Some(k) = sp.class() else {
            fatal(func, "invalid pointer", p)
        };
        let off = p - ch.page_addr(head);
        let i = size_class::block_index(k, off);
        if i * k.size as usize != off || i >= sp.nblocks as usize {
            fatal(func, "invalid pointer", p);
        }
        if !sp.put_block(i) {
            fatal(func, "double free", p);
        }
        self.used -= k.size as usize;
        let class = sp.kind as usize - 1;
        self.returned[class] += 1;
        if sp.nfree == sp.nblocks {
            self.spans[class] -= 1;
            if sp.listed {
                self.list_remove(class, s);
            }
            let n = sp.npages as usize;
            self.free_pages(c, head, n);
        } else if !sp.listed {
            self.list_push(class, s);
        }
    }

    /// Whether small block `p` (in this arena) is free in its span's bitmap.
    pub fn small_is_free(&self, p: usize) -> bool {
        let ch = chunk_ref(Chunk::of(p));
        let head = ch.info[ch.page_index(p)].head as usize;
        let sp = &ch.spans[head];
        match sp.class() {
            Some(k) => sp.block_is_free(size_class::block_index(k, p - ch.page_addr(head))),
            None => false,
        }
    }

    /// A large object of `npages` pages aligned to `align` pages.
    pub fn alloc_large(&mut self, arena: usize, npages: usize, align: usize) -> Option<*mut u8> {
        let (c, idx) = self.alloc_pages(arena, npages, align)?;
        let ch = chunk_ref(c);
        ch.make_large(idx, npages);
        self.count_active(npages);
        self.used += npages * PAGE_SIZE;
        self.tick();
        Some(ch.page_addr(idx) as *mut u8)
    }

    /// Frees the large object starting at page `idx` of chunk `c`. Checked again under the
    /// lock: two racing frees of one object must not both return its pages.
    pub fn free_large(&mut self, c: *mut Chunk, idx: usize, func: &str) {
        let ch = chunk_ref(c);
        if !is_live_large(ch, idx) {
            fatal(func, "double free", ch.page_addr(idx));
        }
        let n = ch.spans[idx].npages as usize;
        self.used -= n * PAGE_SIZE;
        self.free_pages(c, idx, n);
    }

    /// Resizes a large object in place to `npages`; false if the pages after it are taken.
    pub fn resize_large(&mut self, c: *mut Chunk, idx: usize, npages: usize) -> bool {
        let ch = chunk_ref(c);
        if !is_live_large(ch, idx) {
            fatal("realloc", "freed pointer", ch.page_addr(idx));
        }
        let old = ch.spans[idx].npages as usize;
        if npages < old {
            self.used -= (old - npages) * PAGE_SIZE;
            self.free_pages(c, idx + npages, old - npages);
            chunk_ref(c).spans[idx].npages = npages as u16;
        } else if npages > old {
            if !ch.pages_free(idx + old, npages - old) {
                return false;
            }
            self.take_pages(c, idx + old, npages - old);
            chunk_ref(c).make_large(idx, npages);
            self.count_active(npages - old);
            self.used += (npages - old) * PAGE_SIZE;
        }
        true
    }

    /// Starts a new purge epoch when the current one is over.
    fn tick(&mut self) {
        if self.dirty == 0 {
            return;
        }
        let now = os::now_ns();
        if now.wrapping_sub(self.epoch_start) >= PURGE_EPOCH_NS.load(Relaxed) {
            self.epoch_start = now;
            self.purge(false);
        }
    }

    /// Purges dirty pages older than an epoch (every dirty page if `all`) and releases the
    /// chunks that became empty, keeping one empty chunk unless `all`.
    pub fn purge(&mut self, all: bool) -> usize {
        let mut purged = 0;
        let mut still_dirty = 0;
        let mut kept_empty = all;
        let mut c = self.chunks;
        while !c.is_null() {
            let ch = chunk_ref(c);
            let next = ch.next;
            purged += ch.purge(all);
            if ch.is_empty() && kept_empty {
                self.unlink_chunk(c);
                release_chunk(c);
            } else {
                kept_empty |= ch.is_empty();
                still_dirty += ch.dirty_count();
            }
            c = next;
        }
        self.dirty = still_dirty;
        stats::add_purged_pages(purged);
        purged
    }

    /// Dirty pages in this arena's chunks.
    pub fn dirty_pages(&self) -> usize {
        let mut n = 0;
        let mut c = self.chunks;
        while !c.is_null() {
            n += chunk_ref(c).dirty_count();
            c = chunk_ref(c).next;
        }
        n
    }

    /// Walks every chunk and span and checks that counts, bitmaps and lists agree.
    pub fn check(&self, arena: usize) {
        let mut listed = [0usize; NCLASSES];
        for (c, head) in self.partial.iter().enumerate() {
            let mut s = *head;
            let mut prev: *mut Span = null_mut();
            while !s.is_null() {
                let sp = span_ref(s);
                if !sp.listed || sp.prev != prev || sp.kind as usize != c + 1 || sp.nfree == 0 {
                    fatal("check", "partial list corrupt at span", s as usize);
                }
                listed[c] += 1;
                prev = s;
                s = sp.next;
            }
        }
        let mut c = self.chunks;
        let mut spans_listed = [0usize; NCLASSES];
        let mut used = 0;
        while !c.is_null() {
            let ch = chunk_ref(c);
            if ch.arena as usize != arena
                || pagemap::lookup(ch.base()) != ch.base() | pagemap::KIND_CHUNK
            {
                fatal("check", "chunk not owned or not mapped", c as usize);
            }
            let mut free_pages = 0;
            let mut i = crate::span::HEADER_PAGES;
            while i < crate::config::PAGES_PER_CHUNK {
                if ch.page_is_free(i) {
                    if ch.info[i].kind != crate::span::KIND_NONE {
                        fatal("check", "free page with a kind at", ch.page_addr(i));
                    }
                    free_pages += 1;
                    i += 1;
                    continue;
                }
                let sp = &ch.spans[i];
                if ch.info[i].head as usize != i || sp.npages == 0 {
                    fatal("check", "span head mismatch at", ch.page_addr(i));
                }
                for j in i..i + sp.npages as usize {
                    if ch.page_is_free(j)
                        || ch.info[j].head as usize != i
                        || ch.info[j].kind != sp.kind
                    {
                        fatal("check", "span page mismatch at", ch.page_addr(j));
                    }
                }
                if let Some(k) = sp.class() {
                    if sp.count_free_bits() != sp.nfree as usize || sp.nblocks != k.blocks {
                        fatal(
                            "check",
                            "span bitmap disagrees with count at",
                            ch.page_addr(i),
                        );
                    }
                    if sp.listed != (sp.nfree > 0) || sp.nfree == sp.nblocks {
                        fatal("check", "span list state wrong at", ch.page_addr(i));
                    }
                    if sp.listed {
                        spans_listed[sp.kind as usize - 1] += 1;
                    }
                    used += (sp.nblocks - sp.nfree) as usize * k.size as usize;
                } else if sp.kind != KIND_LARGE {
                    fatal("check", "span of unknown kind at", ch.page_addr(i));
                } else {
                    used += sp.npages as usize * PAGE_SIZE;
                }
                i += sp.npages as usize;
            }
            if free_pages != ch.free_count as usize || free_pages != ch.count_free_bits() {
                fatal("check", "free page count wrong in chunk", c as usize);
            }
            c = ch.next;
        }
        if listed != spans_listed {
            fatal("check", "partial lists miss spans of arena", arena);
        }
        if self.dirty != self.dirty_pages() {
            fatal("check", "dirty page count wrong in arena", arena);
        }
        if self.used != used {
            fatal("check", "used byte count wrong in arena", arena);
        }
    }
}

/// Small blocks of class `c` from arena `first`, or, when it cannot get memory (address space
/// exhausted), from any other arena that still has free blocks: memory one thread freed stays
/// usable by every thread.
pub fn take_small_anywhere(first: usize, c: usize, out: &mut [*mut u8]) -> usize {
    let n = narenas();
    (0..n)
        .map(|i| (first + i) % n)
        .map(|a| lock(a).take_small(a, c, out))
        .find(|&got| got > 0)
        .unwrap_or(0)
}

/// A large object from arena `first` or, failing that, from any other arena's free pages.
pub fn alloc_large_anywhere(first: usize, npages: usize, align: usize) -> Option<*mut u8> {
    let n = narenas();
    (0..n)
        .map(|i| (first + i) % n)
        .find_map(|a| lock(a).alloc_large(a, npages, align))
}

/// A chunk for `arena`: from the pool, or freshly mapped and registered.
fn new_chunk(arena: usize) -> Option<*mut Chunk> {
    {
        let mut pool = POOL.lock();
        if !pool.head.is_null() {
            let c = pool.head;
            pool.head = chunk_ref(c).next;
            pool.count -= 1;
            let ch = chunk_ref(c);
            ch.arena = arena as u32;
            return Some(c);
        }
    }
    let mut base = os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
    if base.is_null() {
        drain_pool();
        base = os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
        if base.is_null() {
            return None;
        }
    }
    if !pagemap::register(
        base as usize,
        CHUNK_SIZE,
        base as usize | pagemap::KIND_CHUNK,
    ) {
        os::unmap(base, CHUNK_SIZE);
        return None;
    }
    stats::add_mapped(CHUNK_SIZE as isize);
    // SAFETY: `base` is a fresh, zeroed, aligned mapping of CHUNK_SIZE that only we know of.
    Some(unsafe { Chunk::init(base, arena as u32) })
}

/// An empty, fully purged chunk leaves its arena: to the pool, or back to the kernel.
fn release_chunk(c: *mut Chunk) {
    chunk_ref(c).purge(true);
    let mut pool = POOL.lock();
    if pool.count < POOL_MAX {
        chunk_ref(c).next = pool.head;
        pool.head = c;
        pool.count += 1;
        return;
    }
    drop(pool);
    unmap_chunk(c);
}

fn unmap_chunk(c: *mut Chunk) {
    let base = chunk_ref(c).base();
    pagemap::unregister(base, CHUNK_SIZE);
    os::unmap(base as *mut u8, CHUNK_SIZE);
    stats::add_mapped(-(CHUNK_SIZE as isize));
}

/// Gives every pooled chunk back to the kernel (address space included).
pub fn drain_pool() {
    let mut pool = POOL.lock();
    while !pool.head.is_null() {
        let c = pool.head;
        pool.head = chunk_ref(c).next;
        pool.count -= 1;
        unmap_chunk(c);
    }
}

/// Purges every arena now (used under memory pressure and by malloc_trim). Arenas locked by
/// someone else are skipped rather than waited for, so this can run while holding a lock.
pub fn purge_all(skip: Option<usize>) -> usize {
    let mut n = 0;
    for a in 0..narenas() {
        if Some(a) == skip {
            continue;
        }
        if let Some(mut g) = try_lock(a) {
            n += g.purge(true);
        }
    }
    drain_pool();
    n + crate::huge::drain_cache() / PAGE_SIZE
}

/// Runs the invariant walk over every arena.
pub fn check_all() {
    for a in 0..narenas() {
        lock(a).check(a);
    }
}

pub fn fork_prepare() {
    for a in ARENAS.iter() {
        a.0.lock_forever();
    }
    POOL.lock_forever();
}
pub fn fork_parent() {
    POOL.force_unlock();
    for a in ARENAS.iter() {
        a.0.force_unlock();
    }
}
pub fn fork_child() {
    POOL.reset_in_child();
    for a in ARENAS.iter() {
        a.0.reset_in_child();
    }
}
