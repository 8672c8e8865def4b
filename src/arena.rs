//! Arenas: each a lock over per-class lists of partially free spans. Thread caches refill
//! from and flush to arenas in batches; a block always returns to the span (and so the arena)
//! it came from, whichever thread frees it. Spans take their pages from, and give them back
//! to, the page heap that all arenas share (`pages`); large objects go there directly.

use core::ptr::null_mut;

use crate::config::{narenas, MAX_ARENAS};
use crate::lock::{Guard, Mutex};
use crate::pages;
use crate::report::fatal;
use crate::size_class::{self, NCLASSES};
use crate::span::{Chunk, Span};

pub struct ArenaState {
    /// Per class, a doubly linked list of spans with at least one free block.
    partial: [*mut Span; NCLASSES],
    /// Pages holding this arena's spans, and their most since the last bulk shrink.
    pub active: usize,
    peak_active: usize,
    /// When this arena last shrank in bulk, and whether it took new spans since: an arena
    /// that grows back after its bulk shrinks (a worker freeing its request's memory at
    /// every request) triggers at most once per purge epoch, one that only shrinks (a
    /// thread freeing everything) as often as it qualifies.
    last_bulk_ns: u64,
    grew_since_bulk: bool,
    /// Bytes of small blocks out of this arena (handed to caches or programs); unlike
    /// `active`, a span pinned by one cached block counts for that block only.
    used: usize,
    /// `used` as last reported to the page heap (which weighs dirty pages against it).
    used_reported: usize,
    /// Statistics per class: blocks handed to caches, blocks returned, spans in use.
    pub taken: [u64; NCLASSES],
    pub returned: [u64; NCLASSES],
    pub spans: [u32; NCLASSES],
}

// SAFETY: the raw pointers lead to span descriptors that only the holder of the arena lock
// touches.
unsafe impl Send for ArenaState {}

#[repr(align(128))]
pub struct Arena(Mutex<ArenaState>);

#[allow(clippy::declare_interior_mutable_const)]
const ARENA_INIT: Arena = Arena(Mutex::new(ArenaState {
    partial: [null_mut(); NCLASSES],
    active: 0,
    peak_active: 0,
    last_bulk_ns: 0,
    grew_since_bulk: false,
    used: 0,
    used_reported: 0,
    taken: [0; NCLASSES],
    returned: [0; NCLASSES],
    spans: [0; NCLASSES],
}));
static ARENAS: [Arena; MAX_ARENAS] = [ARENA_INIT; MAX_ARENAS];

/// An arena, locked. Dropping the guard unlocks the arena, then purges the pages the page
/// heap claimed meanwhile (`pages::run_pending`): madvise runs with no lock held, not even
/// this arena's, which the threads freeing blocks into it need.
pub struct ArenaGuard(Option<Guard<'static, ArenaState>>, usize);

impl core::ops::Deref for ArenaGuard {
    type Target = ArenaState;
    fn deref(&self) -> &ArenaState {
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl core::ops::DerefMut for ArenaGuard {
    fn deref_mut(&mut self) -> &mut ArenaState {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for ArenaGuard {
    fn drop(&mut self) {
        drop(self.0.take());
        pages::run_pending(self.1);
    }
}

pub fn lock(a: usize) -> ArenaGuard {
    ArenaGuard(Some(ARENAS[a % MAX_ARENAS].0.lock()), a % MAX_ARENAS)
}

pub fn try_lock(a: usize) -> Option<ArenaGuard> {
    ARENAS[a % MAX_ARENAS]
        .0
        .try_lock()
        .map(|g| ArenaGuard(Some(g), a % MAX_ARENAS))
}

fn chunk_ref<'a>(c: *mut Chunk) -> &'a mut Chunk {
    // SAFETY: callers pass the chunk of a span this arena owns (its lock is held), or of a
    // span whose pages they just took from the page heap.
    unsafe { &mut *c }
}

fn span_ref<'a>(s: *mut Span) -> &'a mut Span {
    // SAFETY: span descriptors live in chunk headers reached under the arena lock.
    unsafe { &mut *s }
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

    /// Whether a bulk shrink may trigger now (see `last_bulk_ns`); if so, records it.
    fn bulk_allowed(&mut self) -> bool {
        let now = crate::os::now_ns();
        let epoch = crate::config::PURGE_EPOCH_NS.load(core::sync::atomic::Ordering::Relaxed);
        if self.grew_since_bulk && now.wrapping_sub(self.last_bulk_ns) < epoch {
            return false;
        }
        self.last_bulk_ns = now;
        self.grew_since_bulk = false;
        true
    }

    /// Reports the change of `used` since the last report to the page heap.
    pub fn report_used(&mut self) {
        pages::add_small_used(self.used as isize - self.used_reported as isize);
        self.used_reported = self.used;
    }

    /// Fills `out` with free blocks of class `c`; returns how many (0 only when out of memory).
    /// With a group size `g` above 1 (`size_class::line_group`, for an arena more than one
    /// thread allocates from), blocks come in whole cache lines (`Span::take_groups`) and
    /// `out.len()` should be a multiple of `g`: spans whose free blocks form no whole group are
    /// passed over, up to SKIP_SPANS of them, before a new span is made (so a shared arena
    /// may hold up to a group's worth of blocks per live block in the worst case: one live
    /// block pinning each line); without memory for one, blocks are taken as they come.
    pub fn take_small(
        &mut self,
        arena: usize,
        c: usize,
        out: &mut [*mut u8],
        mut g: usize,
    ) -> usize {
        const SKIP_SPANS: usize = 8;
        let k = size_class::info(c);
        let mut got = 0;
        let mut s = self.partial[c];
        let mut skipped = 0;
        // (A group past a span's last block is short: what is left may be less than a group.)
        while got + g <= out.len() {
            if s.is_null() || skipped == SKIP_SPANS {
                let Some((ch, idx)) = pages::lock_in_arena(arena).alloc_pages(k.pages as usize, 1)
                else {
                    if g > 1 {
                        // Out of memory: any free block is better than none.
                        (g, s, skipped) = (1, self.partial[c], 0);
                        continue;
                    }
                    break;
                };
                self.active += k.pages as usize;
                self.peak_active = self.peak_active.max(self.active);
                self.grew_since_bulk = true;
                self.spans[c] += 1;
                s = chunk_ref(ch).make_small(idx, c, arena);
                self.list_push(c, s);
                skipped = 0;
            }
            let ch = chunk_ref(Chunk::of(s as usize));
            let base = ch.page_addr(ch.index_of_span(s));
            let sp = span_ref(s);
            let next = sp.next;
            let n = if g == 1 {
                sp.take_blocks(base, k.size as usize, &mut out[got..])
            } else {
                sp.take_groups(base, k.size as usize, &mut out[got..], g)
            };
            got += n;
            if sp.nfree == 0 {
                self.list_remove(c, s);
            }
            if got + g <= out.len() {
                // This span has no more (whole groups of) free blocks.
                if n == 0 {
                    skipped += 1;
                }
                s = next;
            }
        }
        self.taken[c] += got as u64;
        self.used += got * k.size as usize;
        self.report_used();
        pages::tick(arena);
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
            self.active -= n;
            self.report_used();
            let bulk = pages::is_bulk_shrink(self.peak_active, self.active, self.used)
                && self.bulk_allowed();
            if bulk {
                self.peak_active = self.active;
            }
            pages::lock_in_arena(sp.arena as usize).free_pages(c, head, n, true, bulk);
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

    /// Checks this arena's partial lists against the spans the page heap walk found for it
    /// (`listed` per class, `used` bytes).
    fn check(&self, arena: usize, walked_listed: &[usize; NCLASSES], walked_used: usize) {
        let mut listed = [0usize; NCLASSES];
        for (c, head) in self.partial.iter().enumerate() {
            let mut s = *head;
            let mut prev: *mut Span = null_mut();
            while !s.is_null() {
                let sp = span_ref(s);
                if !sp.listed
                    || sp.prev != prev
                    || sp.kind as usize != c + 1
                    || sp.nfree == 0
                    || sp.arena as usize != arena
                {
                    fatal("check", "partial list corrupt at span", s as usize);
                }
                listed[c] += 1;
                prev = s;
                s = sp.next;
            }
        }
        if listed != *walked_listed {
            fatal("check", "partial lists miss spans of arena", arena);
        }
        if self.used != walked_used {
            fatal("check", "used byte count wrong in arena", arena);
        }
    }
}

/// Small blocks of class `c` from arena `first`, or, when it cannot get memory (address space
/// exhausted), from any other arena that still has free blocks: memory one thread freed stays
/// usable by every thread.
pub fn take_small_anywhere(first: usize, c: usize, out: &mut [*mut u8], g: usize) -> usize {
    let n = narenas();
    (0..n)
        .map(|i| (first + i) % n)
        .map(|a| lock(a).take_small(a, c, out, g))
        .find(|&got| got > 0)
        .unwrap_or(0)
}

/// Whether small block `p` is free in its span's bitmap, read under the lock of the arena
/// owning the span. The owner is read before its lock is held, so it is checked again: a
/// span owned by this arena cannot change hands while its lock is held, one owned by
/// another can (freed, its pages reused by another arena's span).
pub fn small_is_free(p: usize) -> bool {
    loop {
        // SAFETY: `p` lies in a chunk of ours (validated by the caller); chunks stay mapped.
        let a = unsafe { (*Chunk::of(p)).arena_of(p) };
        let g = lock(a);
        // SAFETY: as above.
        if unsafe { (*Chunk::of(p)).arena_of(p) } == a {
            return g.small_is_free(p);
        }
    }
}

/// Walks every span of every arena and every chunk, and checks that counts, bitmaps and
/// lists agree. Holds every arena lock (in order), then the page heap's.
pub fn check_all() {
    let n = narenas();
    let guards: [Option<ArenaGuard>; MAX_ARENAS] =
        core::array::from_fn(|a| if a < n { Some(lock(a)) } else { None });
    let mut listed = [[0usize; NCLASSES]; MAX_ARENAS];
    let mut used = [0usize; MAX_ARENAS];
    pages::lock().check(|ch, i| {
        let sp = &ch.spans[i];
        let a = sp.arena as usize;
        let Some(k) = sp.class() else { return };
        if a >= n {
            fatal("check", "span of no arena at", ch.page_addr(i));
        }
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
            listed[a][sp.kind as usize - 1] += 1;
        }
        used[a] += (sp.nblocks - sp.nfree) as usize * k.size as usize;
    });
    let mut reported = 0;
    for (a, g) in guards.iter().enumerate() {
        if let Some(g) = g {
            g.check(a, &listed[a], used[a]);
            reported += g.used_reported;
        }
    }
    if reported != pages::small_used() {
        fatal(
            "check",
            "small bytes in use misreported to the page heap",
            reported,
        );
    }
}

/// Purges every dirty page now (malloc_trim, memory pressure). Returns the pages purged.
pub fn purge_all() -> usize {
    pages::purge_all() + crate::huge::drain_cache() / crate::config::PAGE_SIZE
}

pub fn fork_prepare() {
    for a in ARENAS.iter() {
        a.0.lock_forever();
    }
    pages::fork_prepare();
}
pub fn fork_parent() {
    pages::fork_parent();
    for a in ARENAS.iter() {
        a.0.force_unlock();
    }
}
pub fn fork_child() {
    pages::fork_child();
    for a in ARENAS.iter() {
        a.0.reset_in_child();
    }
}
