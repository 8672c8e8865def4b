//! The page heap: every chunk and which of its pages are free, shared by all arenas.
//!
//! Arenas own spans (a span's blocks always return to its arena); pages belong to no arena.
//! A span that empties gives its pages back here, and the next span of any arena, or a large
//! object of any thread, can take them. With pages kept per arena instead, each arena's free
//! pages served it alone, and the arenas' floats added up: 8 threads churning a 26 MB
//! working set on 8 arenas held 23 MB of free resident pages, against 1.3 MB on one arena.
//!
//! Memory goes back in two steps: pages that become free are *dirty* (maybe resident); dirty
//! pages are purged (MADV_DONTNEED) after one to two purge epochs, so a page freed and reused
//! soon is not faulted in again, or at once when the heap is mostly free pages (a bulk free).
//! A chunk that becomes entirely free goes, beyond the one kept, to a small pool of purged
//! chunks, and beyond it back to the kernel.
//!
//! Purges run outside this lock: under it, the dirty runs are only claimed (out of the free
//! map, so no one takes them meanwhile); the thread that claimed them calls madvise once it
//! has let the lock go, then gives them back, free and clean. A purge of hundreds of MiB
//! does not stall every thread that needs a page for as long.
//!
//! Lock order: an arena's lock, then this one; nothing here takes an arena lock.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::config::{CHUNK_SIZE, PAGE_SIZE, PURGE_EPOCH_NS};
use crate::lock::{Guard, Mutex};
use crate::os;
use crate::pagemap;
use crate::report::fatal;
use crate::span::{Chunk, KIND_LARGE};
use crate::stats;

pub struct PageHeap {
    /// Every chunk in use, oldest first (first fit prefers them).
    chunks: *mut Chunk,
    last_chunk: *mut Chunk,
    pub nchunks: usize,
    /// Free pages that may be resident (not purged since freed).
    pub dirty: usize,
    /// Pages holding spans or large objects.
    pub active: usize,
    /// Bytes of live large objects.
    large_used: usize,
    /// Set by a bulk purge, cleared when pages are taken again: while the program shrinks,
    /// freed pages are purged in small batches instead of waiting for the floor or an epoch
    /// (and caches flush again at each).
    shrinking: bool,
    /// Span pages freed since pages were last taken: a long run of them is a shrink under
    /// way, whether or not a trigger below saw it (see STREAK_PAGES). Large objects do not
    /// count: a program replacing its big buffers frees megabytes between takes.
    freed_streak: usize,
    /// Empty, purged chunks kept for reuse (still registered in the page map).
    pool: *mut Chunk,
    pool_count: usize,
    /// Runs claimed for purging outside the lock (see `HeapGuard`), and whether any claim
    /// asked for every empty chunk to go.
    claimed: [Claim; MAX_CLAIMS],
    nclaimed: usize,
    claimed_all: bool,
    /// Empty chunks unlinked from the heap, to be purged outside the lock and then pooled
    /// or unmapped (see `release_chunk`).
    releasing: [*mut Chunk; MAX_RELEASING],
    nreleasing: usize,
    /// A thread is purging claimed runs and chunks (lock released): others purge under the
    /// lock.
    purging: bool,
}

#[derive(Clone, Copy)]
struct Claim {
    chunk: *mut Chunk,
    first: u16,
    n: u16,
}
const NO_CLAIM: Claim = Claim {
    chunk: null_mut(),
    first: 0,
    n: 0,
};
/// Runs one purge may claim, chunks one release may defer; beyond, the purge is done
/// under the lock.
const MAX_CLAIMS: usize = 64;
const MAX_RELEASING: usize = 16;

// SAFETY: the raw pointers lead into chunk headers that only the holder of the lock touches
// (page bitmaps, links); span descriptors and page infos belong to the span's owner.
unsafe impl Send for PageHeap {}

static HEAP: Mutex<PageHeap> = Mutex::new(PageHeap {
    chunks: null_mut(),
    last_chunk: null_mut(),
    nchunks: 0,
    dirty: 0,
    active: 0,
    large_used: 0,
    shrinking: false,
    freed_streak: 0,
    pool: null_mut(),
    pool_count: 0,
    claimed: [NO_CLAIM; MAX_CLAIMS],
    nclaimed: 0,
    claimed_all: false,
    releasing: [null_mut(); MAX_RELEASING],
    nreleasing: 0,
    purging: false,
});
const POOL_MAX: usize = 4;

/// Start of the current purge epoch (read without the lock to decide whether to take it).
static EPOCH_START: AtomicU64 = AtomicU64::new(0);
/// Bytes of small blocks out of the arenas (in thread caches or programs), as the arenas
/// last reported them.
static SMALL_USED: AtomicUsize = AtomicUsize::new(0);
/// Counts purges forced by many pages being freed at once. A thread cache that sees it move
/// flushes itself whole: a program shrinking its heap should not keep spans pinned by the
/// blocks its caches still hold.
static PRESSURE: AtomicUsize = AtomicUsize::new(0);

/// Dirty pages kept, whatever happens, until the purge epoch ends (2 MiB). Beyond it, dirty
/// bytes exceeding DIRTY_RATIO times the bytes in use (the resident footprint shrank to a
/// quarter of what it was; blocks sitting in thread caches count as used, the rest of the
/// spans they pin does not) are purged at once, so a program that frees everything gets its
/// memory back even if it then stays idle, while a working set that is freed and reused
/// (churn) is left to the epochs. The bound depends on no clock: a bulk free that straddles
/// an epoch's end is caught like one within an epoch.
const DIRTY_MIN_PAGES: usize = (2 << 20) / PAGE_SIZE;
const DIRTY_RATIO: usize = 3;
/// After a bulk purge, until pages are taken again, dirty pages are purged once this many
/// have gathered (256 KiB): the end of a bulk free does not stay resident below the floor.
const SHRINK_BATCH_PAGES: usize = (256 << 10) / PAGE_SIZE;
/// Span pages freed without any taken (2 MiB, the floor) from which each further span free
/// purges a slice of the dirty pages (without the caches' flush of the shrinking mode: this
/// may be the ebb of churn).
const STREAK_PAGES: usize = (2 << 20) / PAGE_SIZE;
/// Most pages of runs one slice of a streak purges (512 KiB, some 50 us of madvise): the
/// free that crosses the threshold does not purge the whole 2 MiB at once, and a chunk that
/// empties during the streak is mostly clean already.
const STREAK_BUDGET_PAGES: usize = (512 << 10) / PAGE_SIZE;

/// Whether an arena whose span pages fell from `peak` to `active` pages while it still hands
/// out `used` bytes shrank in bulk: the same test as the heap's own, on one arena's share.
/// Pages are shared, so a thread that frees everything while others keep as much live would
/// not move the heap-wide ratio; it moves its arena's.
pub fn is_bulk_shrink(peak: usize, active: usize, used: usize) -> bool {
    let shrunk = peak - active;
    shrunk > DIRTY_MIN_PAGES && shrunk * PAGE_SIZE > DIRTY_RATIO * used
}

/// Bytes of small blocks out of the arenas as last reported (for the invariant check).
pub fn small_used() -> usize {
    SMALL_USED.load(Relaxed)
}

/// The page heap, locked. Dropping the guard purges the runs claimed while it was held,
/// after releasing the lock; or, for a guard taken under an arena's lock (`lock_in_arena`),
/// leaves them to the arena's guard, which purges them once the arena is unlocked too.
pub struct HeapGuard(Option<Guard<'static, PageHeap>>, Purge);

/// What a guard does with claimed runs when it goes.
#[derive(Clone, Copy, PartialEq)]
enum Purge {
    /// Purges them, unless some are parked for an arena's guard.
    Unless,
    /// Leaves them to arena `a`'s guard (taken under that arena's lock).
    Park(usize),
    /// Purges them, parked ones included (the caller must return with its purge done).
    Now,
}

/// 1 + the arena under whose lock runs were last claimed and left for its guard (0: none).
/// Until that guard purges them, other guards leave claims alone: a thread that merely
/// takes the lock for a page (a large allocation) does not end up purging what another
/// thread's bulk free claimed.
static PARKED_BY: AtomicUsize = AtomicUsize::new(0);

impl core::ops::Deref for HeapGuard {
    type Target = PageHeap;
    fn deref(&self) -> &PageHeap {
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl core::ops::DerefMut for HeapGuard {
    fn deref_mut(&mut self) -> &mut PageHeap {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for HeapGuard {
    fn drop(&mut self) {
        let Some(mut h) = self.0.take() else { return };
        match self.1 {
            Purge::Park(a) => {
                // (While another thread purges, the claims are its own.)
                if !h.purging && (h.nclaimed != 0 || h.nreleasing != 0) {
                    PARKED_BY.store(a + 1, Relaxed);
                }
                return;
            }
            Purge::Unless if PARKED_BY.load(Relaxed) != 0 => return,
            Purge::Now => PARKED_BY.store(0, Relaxed),
            Purge::Unless => {}
        }
        // Giving the runs back may empty chunks, which are then released the same way.
        while (h.nclaimed != 0 || h.nreleasing != 0) && !h.purging {
            h.purging = true;
            let (runs, n) = (h.claimed, h.nclaimed);
            let (chunks, m) = (h.releasing, h.nreleasing);
            drop(h);
            for r in &runs[..n] {
                let ch = chunk_ref(r.chunk);
                os::purge(
                    ch.page_addr(r.first as usize) as *mut u8,
                    (r.n as usize) * PAGE_SIZE,
                );
            }
            for &c in &chunks[..m] {
                // Unlinked: no other thread reaches this chunk.
                stats::add_purged_pages(chunk_ref(c).purge_released());
            }
            h = HEAP.lock();
            h.finish_releases(m);
            h.return_claims(true);
        }
    }
}

pub fn lock() -> HeapGuard {
    HeapGuard(Some(HEAP.lock()), Purge::Unless)
}

/// The page heap, locked by a caller that must return with its purge done (malloc_trim, the
/// last thread but one exiting): its guard purges parked claims too.
pub fn lock_now() -> HeapGuard {
    HeapGuard(Some(HEAP.lock()), Purge::Now)
}

/// The page heap, locked by a thread that holds arena `a`'s lock: what it claims for
/// purging is purged by `run_pending(a)` when the arena's guard goes (see
/// `arena::ArenaGuard`).
pub fn lock_in_arena(a: usize) -> HeapGuard {
    HeapGuard(Some(HEAP.lock()), Purge::Park(a))
}

pub fn try_lock() -> Option<HeapGuard> {
    HEAP.try_lock().map(|g| HeapGuard(Some(g), Purge::Unless))
}

/// Purges what was claimed under arena `a`'s lock, if anything: its guard calls this once
/// the arena is unlocked.
#[inline]
pub fn run_pending(a: usize) {
    if PARKED_BY.load(Relaxed) == a + 1 {
        drop(lock_now());
    }
}

pub fn pressure_events() -> usize {
    PRESSURE.load(Relaxed)
}

/// An arena reports a change of its small bytes in use.
pub fn add_small_used(delta: isize) {
    if delta >= 0 {
        SMALL_USED.fetch_add(delta as usize, Relaxed);
    } else {
        SMALL_USED.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
}

fn chunk_ref<'a>(c: *mut Chunk) -> &'a mut Chunk {
    // SAFETY: callers pass chunks of the page heap, whose lock they hold (or fresh ones).
    unsafe { &mut *c }
}

/// Whether page `idx` of `ch` starts a live large object (checked under the lock: of two
/// racing frees or reallocs of one object, the second finds it freed).
fn is_live_large(ch: &Chunk, idx: usize) -> bool {
    ch.info[idx].kind == KIND_LARGE && ch.info[idx].head as usize == idx && !ch.page_is_free(idx)
}

impl PageHeap {
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

    /// Finds `n` free pages (aligned to `align` pages), taking a new chunk if none has room.
    /// Returns (chunk, first page); the pages count as active.
    pub fn alloc_pages(&mut self, n: usize, align: usize) -> Option<(*mut Chunk, usize)> {
        let mut c = self.chunks;
        while !c.is_null() {
            let ch = chunk_ref(c);
            if let Some((idx, dirty)) = ch.alloc_pages(n, align) {
                self.took(n, dirty);
                return Some((c, idx));
            }
            c = ch.next;
        }
        let c = self.new_chunk()?;
        self.link_chunk(c);
        let (idx, dirty) = chunk_ref(c).alloc_pages(n, align)?;
        self.took(n, dirty);
        Some((c, idx))
    }

    /// Takes the free pages `idx..idx + n` of chunk `c` (checked free by the caller).
    pub fn take_pages(&mut self, c: *mut Chunk, idx: usize, n: usize) {
        let dirty = chunk_ref(c).take_pages(idx, n);
        self.took(n, dirty);
    }

    /// Accounts for `n` pages just taken, `dirty` of them dirty: the heap grows again, so it
    /// is no longer shrinking.
    fn took(&mut self, n: usize, dirty: usize) {
        self.dirty -= dirty;
        self.count_active(n as isize);
        self.shrinking = false;
        self.freed_streak = 0;
    }

    /// Returns pages `idx..idx + n` of chunk `c`; they become dirty. `bulk`: the arena
    /// returning them shrank the way `is_bulk_shrink` describes.
    pub fn free_pages(&mut self, c: *mut Chunk, idx: usize, n: usize, span: bool, bulk: bool) {
        self.dirty += chunk_ref(c).free_pages(idx, n);
        self.count_active(-(n as isize));
        if span {
            self.freed_streak += n;
        }
        let used = SMALL_USED.load(Relaxed) + self.large_used;
        // Pages freed in bulk: the dirty ones, or those of a streak, most of which its
        // slices have purged already (the test must still see the shrink, once).
        let shrunk = self.dirty.max(self.freed_streak);
        if bulk
            || !self.shrinking
                && shrunk > DIRTY_MIN_PAGES
                && shrunk * PAGE_SIZE > DIRTY_RATIO * used
        {
            // The resident footprint is mostly free pages: a bulk free, not churn. Give them
            // back now; the program may stay idle from here on.
            PRESSURE.fetch_add(1, Relaxed);
            self.purge(true);
            self.shrinking = true;
        } else if self.shrinking && self.dirty >= SHRINK_BATCH_PAGES {
            // Still shrinking: purge again, and have caches flush again as for the first.
            PRESSURE.fetch_add(1, Relaxed);
            self.purge(true);
        } else if self.freed_streak >= STREAK_PAGES && self.dirty >= SHRINK_BATCH_PAGES {
            // Over 2 MiB of spans freed and nothing taken: purge a slice now, so that no
            // chunk gathers megabytes of dirty pages for one free to purge when it empties
            // (remote frees too: that free may be any thread's). The empty chunk kept for
            // the next span stays; caches are left alone, as this may be the ebb of churn
            // rather than a shrink.
            self.purge_some(true, true, STREAK_BUDGET_PAGES);
        } else if chunk_ref(c).is_empty() && self.has_other_empty_chunk(c) {
            // One empty chunk is kept for the next span; a second one leaves now, rather
            // than at the end of the epoch that may never come if the program goes idle
            // (its header and dirty pages would stay resident).
            self.dirty -= chunk_ref(c).dirty_count();
            self.unlink_chunk(c);
            self.release_chunk(c);
        } else {
            self.tick();
        }
    }

    fn count_active(&mut self, n: isize) {
        self.active = (self.active as isize + n) as usize;
        stats::add_active_pages(n);
    }

    /// Whether a chunk other than `c` is empty.
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

    /// Starts a new purge epoch when the current one is over.
    fn tick(&mut self) {
        let now = os::now_ns();
        if now.wrapping_sub(EPOCH_START.load(Relaxed)) >= PURGE_EPOCH_NS.load(Relaxed) {
            // A new epoch starts even with nothing dirty, so that `pages::tick` does not
            // take the lock on every call until something is.
            EPOCH_START.store(now, Relaxed);
            if self.dirty != 0 {
                self.purge(false);
            }
        }
    }

    /// Purges dirty pages older than an epoch (every dirty page if `all`) and releases the
    /// chunks that became empty, keeping one empty chunk unless `all`. The runs are claimed
    /// for the guard to purge after the lock is released (up to MAX_CLAIMS of them, unless
    /// another thread's claims are being purged: then here, under the lock).
    pub fn purge(&mut self, all: bool) -> usize {
        self.purge_some(all, !all, usize::MAX)
    }

    /// `purge`, keeping one empty chunk if `keep_empty`, and purging at most `budget` pages
    /// of runs (oldest chunks first; with `all`, the dirty pages of every chunk are older
    /// than the epoch afterwards, so what the budget leaves goes at the next epoch at the
    /// latest). Empty chunks beyond the one kept are released whatever the budget: their
    /// purge is the price of the one-empty-chunk bound that an idle program relies on.
    fn purge_some(&mut self, all: bool, keep_empty: bool, mut budget: usize) -> usize {
        let mut purged = 0;
        let mut still_dirty = 0;
        let mut kept_empty = !keep_empty;
        let defer = !self.purging;
        let mut c = self.chunks;
        while !c.is_null() {
            let ch = chunk_ref(c);
            let next = ch.next;
            let (claimed, nclaimed) = (&mut self.claimed, &mut self.nclaimed);
            purged += ch.purge_with(all, &mut budget, |first, n| {
                let room = defer && *nclaimed < MAX_CLAIMS;
                if room {
                    claimed[*nclaimed] = Claim {
                        chunk: c,
                        first: first as u16,
                        n: n as u16,
                    };
                    *nclaimed += 1;
                }
                room
            });
            if ch.is_empty() && kept_empty {
                self.unlink_chunk(c);
                self.release_chunk(c);
            } else {
                kept_empty |= ch.is_empty();
                still_dirty += ch.dirty_count();
            }
            c = next;
        }
        self.dirty = still_dirty;
        if defer && self.nclaimed > 0 {
            self.claimed_all |= !keep_empty;
        }
        stats::add_purged_pages(purged);
        purged
    }

    /// Gives the claimed runs back to their chunks: free, and clean if `purged` (dirty if
    /// their purge may not have happened: a forked child). Then releases the chunks that are
    /// empty now, as `purge` would have.
    fn return_claims(&mut self, purged: bool) {
        for r in self.claimed[..self.nclaimed].iter() {
            let ch = chunk_ref(r.chunk);
            ch.unclaim(r.first as usize, r.n as usize);
            if !purged {
                ch.mark_dirty(r.first as usize, r.n as usize);
                self.dirty += r.n as usize;
            }
        }
        self.nclaimed = 0;
        self.purging = false;
        let mut kept_empty = core::mem::take(&mut self.claimed_all);
        let mut c = self.chunks;
        while !c.is_null() {
            let next = chunk_ref(c).next;
            if chunk_ref(c).is_empty() {
                if kept_empty {
                    self.dirty -= chunk_ref(c).dirty_count();
                    self.unlink_chunk(c);
                    self.release_chunk(c);
                }
                kept_empty = true;
            }
            c = next;
        }
    }

    /// Whether page `i` of chunk `c` starts a run claimed for purging; its length.
    fn claim_at(&self, c: *const Chunk, i: usize) -> Option<usize> {
        self.claimed[..self.nclaimed]
            .iter()
            .find(|r| core::ptr::eq(r.chunk, c) && r.first as usize == i)
            .map(|r| r.n as usize)
    }

    /// Dirty pages counted in the chunks' bitmaps.
    pub fn dirty_pages(&self) -> usize {
        let mut n = 0;
        let mut c = self.chunks;
        while !c.is_null() {
            n += chunk_ref(c).dirty_count();
            c = chunk_ref(c).next;
        }
        n
    }

    /// A chunk: from the pool, or freshly mapped and registered.
    fn new_chunk(&mut self) -> Option<*mut Chunk> {
        if !self.pool.is_null() {
            let c = self.pool;
            self.pool = chunk_ref(c).next;
            self.pool_count -= 1;
            return Some(c);
        }
        let mut base = os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
        if base.is_null() {
            self.drain_pool();
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
        Some(unsafe { Chunk::init(base) })
    }

    /// An empty chunk, unlinked, leaves the heap, purged: to the pool, or back to the
    /// kernel. The purge waits for the guard to release the lock (see `HeapGuard`) unless
    /// another thread is purging or too many chunks wait already.
    fn release_chunk(&mut self, c: *mut Chunk) {
        if !self.purging && self.nreleasing < MAX_RELEASING {
            self.releasing[self.nreleasing] = c;
            self.nreleasing += 1;
        } else {
            stats::add_purged_pages(chunk_ref(c).purge_released());
            self.pool_or_unmap(c);
        }
    }

    /// The first `m` chunks waiting for release were purged: to the pool or the kernel.
    fn finish_releases(&mut self, m: usize) {
        for i in 0..m {
            self.pool_or_unmap(self.releasing[i]);
        }
        self.releasing.copy_within(m..self.nreleasing, 0);
        self.nreleasing -= m;
    }

    fn pool_or_unmap(&mut self, c: *mut Chunk) {
        if self.pool_count < POOL_MAX {
            chunk_ref(c).next = self.pool;
            self.pool = c;
            self.pool_count += 1;
        } else {
            unmap_chunk(c);
        }
    }

    /// Gives every pooled chunk back to the kernel (address space included).
    fn drain_pool(&mut self) {
        while !self.pool.is_null() {
            let c = self.pool;
            self.pool = chunk_ref(c).next;
            self.pool_count -= 1;
            unmap_chunk(c);
        }
    }

    /// Frees the large object starting at page `idx` of chunk `c`.
    fn free_large(&mut self, c: *mut Chunk, idx: usize, func: &str) {
        let ch = chunk_ref(c);
        if !is_live_large(ch, idx) {
            fatal(func, "double free", ch.page_addr(idx));
        }
        let n = ch.spans[idx].npages as usize;
        self.large_used -= n * PAGE_SIZE;
        self.free_pages(c, idx, n, false, false);
    }

    /// Walks every chunk and checks its page bitmaps and counts. `span` is called on every
    /// small span (chunk, first page) for the owning arena's checks; returns the bytes in use.
    pub fn check(&self, mut span: impl FnMut(&Chunk, usize)) {
        let mut active = 0;
        let mut large = 0;
        let mut c = self.chunks;
        let mut n = 0;
        while !c.is_null() {
            let ch = chunk_ref(c);
            if pagemap::lookup(ch.base()) != ch.base() | pagemap::KIND_CHUNK {
                fatal("check", "chunk not mapped", c as usize);
            }
            let mut free_pages = 0;
            let mut i = crate::span::HEADER_PAGES;
            while i < crate::config::PAGES_PER_CHUNK {
                if let Some(n) = self.claim_at(c, i) {
                    i += n;
                    continue;
                }
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
                if sp.class().is_some() {
                    span(ch, i);
                } else if sp.kind != KIND_LARGE {
                    fatal("check", "span of unknown kind at", ch.page_addr(i));
                } else {
                    large += sp.npages as usize * PAGE_SIZE;
                }
                active += sp.npages as usize;
                i += sp.npages as usize;
            }
            if free_pages != ch.free_count as usize || free_pages != ch.count_free_bits() {
                fatal("check", "free page count wrong in chunk", c as usize);
            }
            n += 1;
            c = ch.next;
        }
        if n != self.nchunks || self.dirty != self.dirty_pages() {
            fatal("check", "dirty page count wrong in page heap", self.dirty);
        }
        if active != self.active || large != self.large_used {
            fatal("check", "active page count wrong in page heap", self.active);
        }
    }
}

fn unmap_chunk(c: *mut Chunk) {
    let base = chunk_ref(c).base();
    pagemap::unregister(base, CHUNK_SIZE);
    os::unmap(base as *mut u8, CHUNK_SIZE);
    stats::add_mapped(-(CHUNK_SIZE as isize));
}

/// A large object of `npages` pages aligned to `align` pages.
pub fn alloc_large(npages: usize, align: usize) -> Option<*mut u8> {
    crate::region::note_big_alloc();
    let mut h = lock();
    let (c, idx) = h.alloc_pages(npages, align)?;
    let ch = chunk_ref(c);
    ch.make_large(idx, npages);
    h.large_used += npages * PAGE_SIZE;
    h.tick();
    Some(ch.page_addr(idx) as *mut u8)
}

/// Frees the large object starting at page `idx` of chunk `c`. Checked again under the lock:
/// two racing frees of one object must not both return its pages.
pub fn free_large(c: *mut Chunk, idx: usize, func: &str) {
    lock().free_large(c, idx, func);
}

/// Resizes a large object in place to `npages`; false if the pages after it are taken.
pub fn resize_large(c: *mut Chunk, idx: usize, npages: usize) -> bool {
    let mut h = lock();
    let ch = chunk_ref(c);
    if !is_live_large(ch, idx) {
        fatal("realloc", "freed pointer", ch.page_addr(idx));
    }
    let old = ch.spans[idx].npages as usize;
    if npages < old {
        h.large_used -= (old - npages) * PAGE_SIZE;
        h.free_pages(c, idx + npages, old - npages, false, false);
        chunk_ref(c).spans[idx].npages = npages as u8;
    } else if npages > old {
        if !ch.pages_free(idx + old, npages - old) {
            return false;
        }
        h.take_pages(c, idx + old, npages - old);
        chunk_ref(c).make_large(idx, npages);
        h.large_used += (npages - old) * PAGE_SIZE;
    }
    true
}

/// Starts a new purge epoch if the current one is over (cheap when it is not); called under
/// arena `a`'s lock (see `lock_in_arena`).
pub fn tick(a: usize) {
    let now = os::now_ns();
    if now.wrapping_sub(EPOCH_START.load(Relaxed)) >= PURGE_EPOCH_NS.load(Relaxed) {
        lock_in_arena(a).tick();
    }
}

/// Purges every dirty page now and empties the pool (malloc_trim, memory pressure).
/// Returns the pages purged.
pub fn purge_all() -> usize {
    let mut h = lock_now();
    let n = h.purge(true);
    drop(h);
    // The chunks the purge emptied reach the pool as the guard lets the lock go: drain it
    // after that.
    lock_now().drain_pool();
    n
}

pub fn fork_prepare() {
    HEAP.lock_forever();
}
pub fn fork_parent() {
    HEAP.force_unlock();
}
pub fn fork_child() {
    HEAP.reset_in_child();
    // Runs claimed under an arena's lock by a thread of the parent: this thread's next
    // guard purges them.
    PARKED_BY.store(0, Relaxed);
    // Runs and chunks a thread of the parent was purging wait for no one here: the chunks
    // are purged now, the runs go back to the free map dirty (purged or not). Chunks that
    // leaves empty are released as the guard goes.
    let mut h = lock();
    if h.purging {
        let m = h.nreleasing;
        for i in 0..m {
            let c = h.releasing[i];
            stats::add_purged_pages(chunk_ref(c).purge_released());
        }
        h.finish_releases(m);
        h.return_claims(false);
    }
}
