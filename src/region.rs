//! The huge heap: address space for huge objects, reserved in regions of 256 MiB and handed
//! out in granules of one chunk (4 MiB, so that every page-map unit belongs to one object).
//!
//! Its point is reuse. A freed huge object's granules stay resident ("dirty") and coalesce
//! with their free neighbours, so a later object, or the in-place growth of a neighbour, gets
//! pages that are already faulted in instead of fresh zero pages one fault at a time. Dirty
//! granules are purged (`madvise(DONTNEED)`, address space kept) after one to two purge
//! epochs, and at once beyond a budget proportional to what the program has live (`budget`),
//! or, while the program replaces big buffers one at a time, to its recent peak (see
//! `enforce_budget`). A program that frees its huge objects in a row keeps at most its floor
//! resident (raised while it cycles through more memory than the budget keeps, halved every
//! quiet epoch down to zero); one that frees its last buffer after allocating it keeps up to
//! that buffer (192 MiB at most) until its next call into the allocator after an epoch.
//!
//! Invariant: a free granule that is not dirty reads zero. Pages of a live object's last
//! granule past the object's end are zero unless the granule is marked as slack (it was
//! taken dirty); slack counts as dirty and is purged like it.

use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicBool, AtomicU64};

use crate::config::{CHUNK_SHIFT, CHUNK_SIZE, PURGE_EPOCH_NS};
use crate::lock::{Guard, Mutex};
use crate::os;
use crate::stats;

pub const GRANULE: usize = CHUNK_SIZE;
const GRANULES: usize = 64;
const REGION_SIZE: usize = GRANULES * GRANULE;
const MAX_REGIONS: usize = 256;
/// Dirty granules kept per live granule of arena pages; twice as many per live granule of
/// huge objects (see `budget`).
const BUDGET_FACTOR: usize = 8;
/// The budget never exceeds this many granules (192 MiB), however much is live or was:
/// 8 threads each cycling 4 buffers of up to 32 MiB (large-objects) take a third fewer page
/// faults with it than with 128 MiB (300 k -> 160-210 k), at about the leanest peer's peak.
const MAX_BUDGET: usize = 48;
/// Set by every allocation of a large object (page runs, outside this heap): a program that
/// replaces big buffers one by one may take the next one there (see `frees_in_row`).
static BIG_ALLOC_SEEN: AtomicBool = AtomicBool::new(false);

/// A large object was allocated (see BIG_ALLOC_SEEN).
#[inline]
pub fn note_big_alloc() {
    if !BIG_ALLOC_SEEN.load(Relaxed) {
        BIG_ALLOC_SEEN.store(true, Relaxed);
    }
}
/// The budget's floor in granules starts at zero and is at most this (64 MiB, like glibc's
/// largest trim threshold).
const MAX_FLOOR: usize = 16;
/// Objects longer than this get a mapping of their own (see `huge`): a region must not be
/// fragmented by a few very large objects.
pub const MAX_OBJECT: usize = REGION_SIZE / 4;

#[derive(Clone, Copy)]
struct Region {
    base: usize,
    /// One bit per granule: part of a live object.
    used: u64,
    /// Free granules that may hold resident pages, freed in this epoch / before it.
    dirty_new: u64,
    dirty_old: u64,
    /// Last granules of live objects whose pages past the object's end may be resident
    /// (taken dirty), marked in this epoch / before it; `slack[g]` is the offset in granule
    /// `g` where that slack starts (0: none).
    slack_new: u64,
    slack_old: u64,
    slack: [u32; GRANULES],
    /// Free granules claimed for purging outside the lock (see `RegionGuard`): marked
    /// used meanwhile, so that no object takes them.
    claimed: u64,
}

const EMPTY: Region = Region {
    base: 0,
    used: 0,
    dirty_new: 0,
    dirty_old: 0,
    slack_new: 0,
    slack_old: 0,
    slack: [0; GRANULES],
    claimed: 0,
};

pub struct Heap {
    regions: [Region; MAX_REGIONS],
    n: usize,
    live_granules: usize,
    /// Dirty free granules plus granules with slack: what may be resident but unused.
    dirty_granules: usize,
    /// The smallest budget (see `budget`): none at first, raised when the budget made the
    /// program fault back in what was just purged, halved after two epochs without purges;
    /// it never keeps more than the object freed last.
    floor: usize,
    /// Granules of the object freed last: the floor keeps at most that much (a cycle of
    /// allocating and freeing one object reuses it; a bulk free keeps no more than one).
    last_freed: usize,
    /// Most live granules in this epoch / the previous one, and objects freed since the last
    /// allocation or growth (not counting the old place of an object realloc moved): see
    /// `enforce_budget`.
    peak_live: usize,
    peak_live_before: usize,
    frees_in_row: u32,
    /// Whether the kernel ever refused a purge: then no granule is known to read zero.
    purge_fails: bool,
    /// Whether the budget purged anything in this epoch / the previous one.
    budget_purged: bool,
    budget_purged_before: bool,
    epoch_start: u64,
    /// For the statistics report: objects grown in place, bytes purged by decay, by the
    /// budget, and when trimmed or shrunk.
    grown: u64,
    purged_decay: u64,
    purged_budget: u64,
    purged_other: u64,
    /// Whether purges of free granules happen at once, under the lock (the unit tests'
    /// heaps; the process's heap leaves them to the guard, see `RegionGuard`), and whether
    /// a thread is doing deferred ones now (others then purge under the lock). The
    /// process's heap is all zeros, so that it stays in .bss (untouched pages cost nothing).
    immediate: bool,
    purging: bool,
    /// Whether any region has claimed granules.
    any_claimed: bool,
}

impl Heap {
    const fn new() -> Heap {
        Heap {
            regions: [EMPTY; MAX_REGIONS],
            n: 0,
            live_granules: 0,
            dirty_granules: 0,
            floor: 0,
            last_freed: 0,
            peak_live: 0,
            peak_live_before: 0,
            frees_in_row: 0,
            purge_fails: false,
            budget_purged: false,
            budget_purged_before: false,
            epoch_start: 0,
            grown: 0,
            purged_decay: 0,
            purged_budget: 0,
            purged_other: 0,
            immediate: false,
            purging: false,
            any_claimed: false,
        }
    }

    /// Whether granules are claimed and no thread is purging them yet.
    fn has_claims(&self) -> bool {
        !self.purging && self.any_claimed
    }

    /// Gives the claimed granules back: free, and clean if `purged` (else dirty: a forked
    /// child, where the purge may not have happened).
    fn return_claims(&mut self, purged: bool) {
        for reg in &mut self.regions[..self.n] {
            reg.used &= !reg.claimed;
            if !purged {
                reg.dirty_new |= reg.claimed;
                self.dirty_granules += reg.claimed.count_ones() as usize;
            }
            reg.claimed = 0;
        }
        self.any_claimed = false;
        self.purging = false;
        self.publish();
    }
}

static HEAP: Mutex<Heap> = Mutex::new(Heap::new());

/// The huge heap, locked. Dropping the guard purges the granules claimed while it was held,
/// after releasing the lock: a purge of many granules (about a millisecond per 4 MiB) does
/// not stall the other threads' huge allocations and frees.
pub struct RegionGuard(Option<Guard<'static, Heap>>);

impl core::ops::Deref for RegionGuard {
    type Target = Heap;
    fn deref(&self) -> &Heap {
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl core::ops::DerefMut for RegionGuard {
    fn deref_mut(&mut self) -> &mut Heap {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for RegionGuard {
    fn drop(&mut self) {
        let Some(mut h) = self.0.take() else { return };
        if !h.has_claims() {
            return;
        }
        h.purging = true;
        let mut claims = [(0usize, 0u64); MAX_REGIONS];
        let n = h.n;
        for (c, reg) in claims.iter_mut().zip(&h.regions[..n]) {
            *c = (reg.base, reg.claimed);
        }
        drop(h);
        let mut failed = false;
        for &(base, bits) in &claims[..n] {
            for_each_run(bits, |g, run| {
                failed |= !os::purge((base + (g << CHUNK_SHIFT)) as *mut u8, run * GRANULE);
            });
        }
        let mut h = HEAP.lock();
        // Purged memory can no longer be trusted to read zero if the kernel refused.
        h.purge_fails |= failed;
        h.return_claims(true);
    }
}
/// Mirrors of the heap's state for `tick_if_due`, which must not take the lock for nothing:
/// whether anything is dirty, and when the current epoch started.
static ANY_DIRTY: AtomicBool = AtomicBool::new(false);
static EPOCH_START: AtomicU64 = AtomicU64::new(0);

pub fn lock() -> RegionGuard {
    RegionGuard(Some(HEAP.lock()))
}

pub fn fork_prepare() {
    HEAP.lock_forever();
}
pub fn fork_parent() {
    HEAP.force_unlock();
}
pub fn fork_child() {
    HEAP.reset_in_child();
    // Granules a thread of the parent was purging: free again, dirty (purged or not).
    let mut h = HEAP.lock();
    if h.purging {
        h.return_claims(false);
    }
}

/// Calls `f(first, n)` for each run of adjacent set bits of `bits`, lowest first.
fn for_each_run(mut bits: u64, mut f: impl FnMut(usize, usize)) {
    while bits != 0 {
        let g = bits.trailing_zeros() as usize;
        let run = (!(bits >> g)).trailing_zeros() as usize;
        f(g, run);
        bits &= !mask(g, run);
    }
}

pub fn granules(len: usize) -> usize {
    len.div_ceil(GRANULE)
}

/// A mask of `n` bits from bit `first`.
fn mask(first: usize, n: usize) -> u64 {
    debug_assert!(n >= 1 && first + n <= GRANULES);
    (u64::MAX >> (GRANULES - n)) << first
}

/// The lowest start of a run of `n` set bits in `free`, if any.
pub fn find_run(free: u64, n: usize) -> Option<usize> {
    let mut starts = free;
    for k in 1..n {
        starts &= free >> k;
    }
    (starts != 0).then(|| starts.trailing_zeros() as usize)
}

/// The dirty granules allowed with `live_granules` of huge objects and `arena_bytes` of
/// arena pages live: a multiple of what the program uses, but only `floor` once it has freed
/// (nearly) everything, so that an idle program gives its memory back.
fn budget(live_granules: usize, arena_bytes: usize, floor: usize) -> usize {
    (2 * BUDGET_FACTOR * live_granules + BUDGET_FACTOR * arena_bytes / GRANULE)
        .min(MAX_BUDGET)
        .max(floor)
}

/// Which purge a range counts as (statistics only).
#[derive(Clone, Copy)]
enum Why {
    Decay,
    Budget,
    Other,
}

impl Heap {
    /// The region holding `base` and the granule index of `base` in it.
    fn find(&self, base: usize) -> (usize, usize) {
        for r in 0..self.n {
            let rb = self.regions[r].base;
            if base >= rb && base < rb + REGION_SIZE {
                return (r, (base - rb) >> CHUNK_SHIFT);
            }
        }
        unreachable_region(base)
    }

    fn purge_range(&mut self, start: usize, len: usize, why: Why) {
        if !os::purge(start as *mut u8, len) {
            // Purged memory can no longer be trusted to read zero.
            self.purge_fails = true;
        }
        self.count_purged(len, why);
    }

    /// Counts `len` bytes purged (or claimed for purging) for `why`.
    fn count_purged(&mut self, len: usize, why: Why) {
        stats::add_purged_pages(len / crate::config::PAGE_SIZE);
        *match why {
            Why::Decay => &mut self.purged_decay,
            Why::Budget => &mut self.purged_budget,
            Why::Other => &mut self.purged_other,
        } += len as u64;
    }

    /// Marks granules `m` of region `r` used, returning which of them were dirty.
    fn take(&mut self, r: usize, m: u64) -> u64 {
        let reg = &mut self.regions[r];
        let dirty = (reg.dirty_new | reg.dirty_old) & m;
        reg.used |= m;
        reg.dirty_new &= !m;
        reg.dirty_old &= !m;
        self.dirty_granules -= dirty.count_ones() as usize;
        self.live_granules += m.count_ones() as usize;
        self.peak_live = self.peak_live.max(self.live_granules);
        self.frees_in_row = 0;
        dirty
    }

    /// Records that granule `g`, the last of a live object ending `end` bytes into it, was
    /// taken dirty: its pages past `end` may be resident.
    fn note_slack(&mut self, r: usize, g: usize, end: usize) {
        if end < GRANULE {
            let reg = &mut self.regions[r];
            reg.slack[g] = end as u32;
            reg.slack_new |= 1 << g;
            self.dirty_granules += 1;
        }
    }

    /// Forgets granule `g`'s slack (it is now inside an object, freed, or purged); whether
    /// it had any.
    fn drop_slack(&mut self, r: usize, g: usize) -> bool {
        let reg = &mut self.regions[r];
        if reg.slack[g] == 0 {
            return false;
        }
        reg.slack[g] = 0;
        reg.slack_new &= !(1 << g);
        reg.slack_old &= !(1 << g);
        self.dirty_granules -= 1;
        true
    }

    fn purge_slack(&mut self, r: usize, g: usize, why: Why) {
        let start = self.regions[r].slack[g] as usize;
        let granule = self.regions[r].base + (g << CHUNK_SHIFT);
        if self.drop_slack(r, g) {
            self.purge_range(granule + start, GRANULE - start, why);
        }
    }

    /// Takes granules for an object of `len` bytes (at most MAX_OBJECT): the first fit by
    /// address, mapping a new region when none fits. The base and whether the object's bytes
    /// are known to be zero; None when the kernel refuses a new region.
    pub fn alloc(&mut self, len: usize) -> Option<(usize, bool)> {
        debug_assert!(len <= MAX_OBJECT);
        let n = granules(len);
        let mut found = None;
        for r in 0..self.n {
            if let Some(g) = find_run(!self.regions[r].used, n) {
                found = Some((r, g));
                break;
            }
        }
        let (r, g) = match found {
            Some(f) => f,
            None => (self.grow()?, 0),
        };
        let dirty = self.take(r, mask(g, n));
        self.note_refault(n - dirty.count_ones() as usize);
        if dirty & (1 << (g + n - 1)) != 0 {
            self.note_slack(r, g + n - 1, os::round_page(len) - (n - 1) * GRANULE);
        }
        let zero = dirty == 0 && !self.purge_fails;
        // The epoch's purge after the search: granules it claims are out of reach until the
        // guard has purged them, and this object may as well reuse them first.
        self.tick();
        self.publish();
        Some((self.regions[r].base + (g << CHUNK_SHIFT), zero))
    }

    /// Maps a new region; its index.
    fn grow(&mut self) -> Option<usize> {
        if self.n == MAX_REGIONS {
            return None;
        }
        let base = os::reserve_aligned(REGION_SIZE, GRANULE);
        if base.is_null() {
            return None;
        }
        let r = self.n;
        self.regions[r] = Region {
            base: base as usize,
            ..EMPTY
        };
        self.n += 1;
        Some(r)
    }

    /// Takes the granules of the live object at `base` (`len` bytes) out of use, its last
    /// granule's slack with them: the region and the mask of those granules.
    fn unuse(&mut self, base: usize, len: usize) -> (usize, u64) {
        let (r, g) = self.find(base);
        let n = granules(len);
        let m = mask(g, n);
        if self.regions[r].used & m != m {
            unreachable_region(base);
        }
        self.drop_slack(r, g + n - 1);
        self.regions[r].used &= !m;
        self.live_granules -= n;
        (r, m)
    }

    /// Gives back the granules of the object at `base` of `len` bytes; they stay resident
    /// until purged. `moved`: the object lives on elsewhere (realloc moved it).
    pub fn free(&mut self, base: usize, len: usize, moved: bool) {
        let (r, m) = self.unuse(base, len);
        let n = m.count_ones() as usize;
        self.regions[r].dirty_new |= m;
        self.dirty_granules += n;
        self.last_freed = n;
        if BIG_ALLOC_SEEN.swap(false, Relaxed) {
            self.frees_in_row = 0;
        }
        if !moved {
            self.frees_in_row = self.frees_in_row.saturating_add(1);
        }
        self.tick();
        self.enforce_budget();
        self.publish();
    }

    /// The kernel moved the pages of the object at `old_base` (`old_len` bytes, whole
    /// granules) into the start of the object at `new_base` (`new_len` bytes, just taken by
    /// `alloc`): the old granules are free and read zero. When both objects have as many
    /// granules, the new one's last granule holds old data past its end: slack.
    pub fn moved(&mut self, old_base: usize, old_len: usize, new_base: usize, new_len: usize) {
        self.unuse(old_base, old_len);
        let n = granules(old_len);
        if granules(new_len) == n {
            let (nr, ng) = self.find(new_base);
            if self.regions[nr].slack[ng + n - 1] == 0 {
                self.note_slack(nr, ng + n - 1, os::round_page(new_len) - (n - 1) * GRANULE);
            }
        }
        self.publish();
    }

    /// Grows the object at `base` from `old_len` to `new_len` bytes without moving it, if the
    /// granules after it are free. The added bytes are unspecified.
    pub fn grow_in_place(&mut self, base: usize, old_len: usize, new_len: usize) -> bool {
        let (r, g) = self.find(base);
        let (old_n, new_n) = (granules(old_len), granules(new_len));
        let new_end = os::round_page(new_len) - (new_n - 1) * GRANULE;
        if new_n <= old_n {
            // Within the last granule: the slack, if any, now starts further in.
            let last = g + old_n - 1;
            let slack = self.regions[r].slack[last] as usize;
            if slack != 0 && new_end > slack {
                if new_end >= GRANULE {
                    self.drop_slack(r, last);
                } else {
                    self.regions[r].slack[last] = new_end as u32;
                }
            }
            return true;
        }
        if g + new_n > GRANULES {
            return false;
        }
        let m = mask(g + old_n, new_n - old_n);
        if self.regions[r].used & m != 0 {
            return false;
        }
        self.drop_slack(r, g + old_n - 1);
        let dirty = self.take(r, m);
        self.note_refault((new_n - old_n) - dirty.count_ones() as usize);
        if dirty & (1 << (g + new_n - 1)) != 0 {
            self.note_slack(r, g + new_n - 1, new_end);
        }
        self.grown += 1;
        true
    }

    /// Shrinks the object at `base` from `old_len` to `new_len` bytes: the pages past the new
    /// end are purged and whole granules past it become free (and clean).
    pub fn shrink(&mut self, base: usize, old_len: usize, new_len: usize) {
        let (r, g) = self.find(base);
        let (old_n, new_n) = (granules(old_len), granules(new_len));
        let end = os::round_page(new_len);
        let upto = if self.drop_slack(r, g + old_n - 1) {
            old_n * GRANULE
        } else {
            old_len
        };
        if end < upto {
            self.purge_range(base + end, upto - end, Why::Other);
        }
        if new_n < old_n {
            self.regions[r].used &= !mask(g + new_n, old_n - new_n);
            self.live_granules -= old_n - new_n;
        }
    }

    /// `clean` granules were just taken clean (to be faulted in afresh). If the budget purged
    /// dirty ones lately, the program is cycling through more memory than the floor keeps:
    /// raise the floor by that much, so that the cycle reuses resident pages (glibc raises
    /// its trim threshold the same way).
    fn note_refault(&mut self, clean: usize) {
        if clean > 0 && (self.budget_purged || self.budget_purged_before) {
            self.floor = (self.floor + clean).min(MAX_FLOOR);
        }
    }

    /// Starts a new epoch when the current one is over: what was dirty (or slack) for a
    /// whole epoch is purged.
    fn tick(&mut self) {
        let now = os::now_ns();
        if now.wrapping_sub(self.epoch_start) < PURGE_EPOCH_NS.load(Relaxed) {
            return;
        }
        self.epoch_start = now;
        if !self.budget_purged && !self.budget_purged_before {
            self.floor /= 2;
        }
        self.budget_purged_before = self.budget_purged;
        self.budget_purged = false;
        self.peak_live_before = self.peak_live;
        self.peak_live = self.live_granules;
        self.purge(false, Why::Decay);
        for reg in &mut self.regions[..self.n] {
            reg.dirty_old = reg.dirty_new;
            reg.dirty_new = 0;
            reg.slack_old = reg.slack_new;
            reg.slack_new = 0;
        }
        EPOCH_START.store(now, Relaxed);
        self.publish();
    }

    fn publish(&self) {
        ANY_DIRTY.store(self.dirty_granules != 0, Relaxed);
    }

    /// Purges dirty granules and slack while they exceed the budget (see `budget`). A
    /// program whose big buffers come and go keeps reusing resident pages, decay gives them
    /// back within two epochs, and a program that freed everything in a row keeps at most
    /// its floor. Old before recent, free granules before slack, each from the highest
    /// address down (first fit reuses the low ones).
    fn enforce_budget(&mut self) {
        let floor = self.floor.min(self.last_freed);
        // A program replacing its big buffers one by one (each free follows an allocation)
        // is about to need again what it just freed, however little stays live meanwhile:
        // keep what brings it back to its peak of the last one to two epochs, so that the
        // next buffer reuses resident pages while its resident size stays within that peak.
        // Two frees in a row (a bulk free, the end of a phase) fall back to the live budget,
        // so that memory still goes back when the program goes idle.
        let keep = if self.frees_in_row <= 1 {
            let peak = self.peak_live.max(self.peak_live_before);
            peak.saturating_sub(self.live_granules).min(MAX_BUDGET)
        } else {
            0
        };
        let budget = budget(self.live_granules, stats::arena_active_bytes(), floor).max(keep);
        if self.dirty_granules > budget {
            self.budget_purged = true;
        }
        for pass in 0..4 {
            for r in (0..self.n).rev() {
                while self.dirty_granules > budget {
                    let reg = &self.regions[r];
                    let bits = [reg.dirty_old, reg.dirty_new, reg.slack_old, reg.slack_new][pass];
                    if bits == 0 {
                        break;
                    }
                    let g = GRANULES - 1 - bits.leading_zeros() as usize;
                    if pass < 2 {
                        self.purge_free(r, 1 << g, Why::Budget);
                    } else {
                        self.purge_slack(r, g, Why::Budget);
                    }
                }
            }
        }
    }

    /// Gives the address space of regions without a live object back to the kernel (after
    /// `purge(true)`: nothing in them is dirty), so that a program near its address-space
    /// limit can map elsewhere.
    fn unmap_empty(&mut self) {
        let mut r = 0;
        while r < self.n {
            if self.regions[r].used == 0 {
                // Freed since the purge (purge_all unmaps under a second lock): not dirty once
                // unmapped.
                let reg = &self.regions[r];
                self.dirty_granules -= (reg.dirty_new | reg.dirty_old).count_ones() as usize;
                os::unmap(self.regions[r].base as *mut u8, REGION_SIZE);
                self.n -= 1;
                self.regions[r] = self.regions[self.n];
            } else {
                r += 1;
            }
        }
    }

    /// Purges the dirty free granules `bits` of region `r`, one madvise per run of adjacent
    /// ones; they are clean afterwards. In the process's heap they are only claimed here,
    /// for the guard to purge once the lock is released (see `RegionGuard`).
    fn purge_free(&mut self, r: usize, bits: u64, why: Why) {
        let reg = &mut self.regions[r];
        reg.dirty_old &= !bits;
        reg.dirty_new &= !bits;
        self.dirty_granules -= bits.count_ones() as usize;
        let base = reg.base;
        if !self.immediate && !self.purging {
            reg.claimed |= bits;
            reg.used |= bits;
            self.any_claimed = true;
            self.count_purged(bits.count_ones() as usize * GRANULE, why);
            return;
        }
        for_each_run(bits, |g, run| {
            self.purge_range(base + (g << CHUNK_SHIFT), run * GRANULE, why)
        });
    }

    /// Purges what has been dirty (or slack) since before this epoch, or everything if
    /// `all`.
    fn purge(&mut self, all: bool, why: Why) {
        for r in 0..self.n {
            let reg = &self.regions[r];
            let bits = reg.dirty_old | if all { reg.dirty_new } else { 0 };
            let mut slack = reg.slack_old | if all { reg.slack_new } else { 0 };
            self.purge_free(r, bits, why);
            while slack != 0 {
                let g = slack.trailing_zeros() as usize;
                self.purge_slack(r, g, why);
                slack &= slack - 1;
            }
        }
    }
}

/// For the statistics report: (regions, live granules, dirty granules, objects grown in
/// place, bytes purged by decay, by the budget, otherwise); None when the heap is busy and
/// `wait` is false.
pub fn counters(wait: bool) -> Option<[u64; 7]> {
    let h = if wait { HEAP.lock() } else { HEAP.try_lock()? };
    Some([
        h.n as u64,
        h.live_granules as u64,
        h.dirty_granules as u64,
        h.grown,
        h.purged_decay,
        h.purged_budget,
        h.purged_other,
    ])
}

/// Runs the purge epochs from outside the huge heap (thread-cache refills and flushes), so
/// that dirty granules are given back within two epochs even when the program no longer
/// allocates huge objects. Cheap when nothing is due; never waits for the lock.
pub fn tick_if_due() {
    if !ANY_DIRTY.load(Relaxed)
        || os::now_ns().wrapping_sub(EPOCH_START.load(Relaxed)) < PURGE_EPOCH_NS.load(Relaxed)
    {
        return;
    }
    if let Some(h) = HEAP.try_lock() {
        let mut h = RegionGuard(Some(h));
        h.tick();
    }
}

/// Re-applies the budget now: the arenas just shrank in bulk (a program freeing everything
/// may free its huge objects first, while its small ones still count as live).
pub fn enforce() {
    let mut h = lock();
    // A bulk shrink, not a buffer replaced: no keeping back to the peak.
    h.frees_in_row = h.frees_in_row.max(2);
    h.enforce_budget();
    h.publish();
}

/// Purges every dirty granule and all slack now (memory pressure, malloc_trim); the bytes
/// purged.
pub fn purge_all() -> usize {
    let mut h = lock();
    let before = h.purged_other;
    h.purge(true, Why::Other);
    let purged = (h.purged_other - before) as usize;
    drop(h);
    // The purge happened as the guard let the lock go; regions left without a live object
    // go back to the kernel now.
    let mut h = lock();
    h.unmap_empty();
    h.publish();
    purged
}

#[cold]
fn unreachable_region(base: usize) -> ! {
    crate::report::fatal("huge heap", "object not in any region", base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_lowest_first_and_never_across_the_end() {
        assert_eq!(find_run(u64::MAX, 1), Some(0));
        assert_eq!(find_run(0b1110, 3), Some(1));
        assert_eq!(find_run(0b1110, 4), None);
        assert_eq!(find_run(0b1101_1011, 2), Some(0));
        assert_eq!(find_run(0b1101_1010, 2), Some(3));
        assert_eq!(find_run(1 << 63, 1), Some(63));
        assert_eq!(find_run(1 << 63, 2), None);
        assert_eq!(find_run(0, 1), None);
        assert_eq!(mask(0, 64), u64::MAX);
        assert_eq!(mask(62, 2), 3 << 62);
    }

    fn heap_with_region() -> Heap {
        let mut h = Heap {
            immediate: true,
            ..Heap::new()
        };
        h.epoch_start = os::now_ns();
        assert_eq!(h.grow(), Some(0));
        h
    }

    #[test]
    fn freed_granules_are_reused_dirty_coalesced_and_grown_into() {
        let mut h = heap_with_region();
        let rb = h.regions[0].base;
        let (a, za) = h.alloc(GRANULE + 4096).unwrap();
        let (b, zb) = h.alloc(GRANULE).unwrap();
        assert_eq!((a, b), (rb, rb + 2 * GRANULE));
        assert!(za && zb, "fresh granules read zero");
        // SAFETY: a is the start of two live granules of the reserved region.
        unsafe { *(a as *mut u8) = 7 };
        h.free(a, GRANULE + 4096, false);
        assert_eq!(h.dirty_granules, 2);
        // Three granules fit only after b: the freed pair is too short.
        let (c, _) = h.alloc(3 * GRANULE).unwrap();
        assert_eq!(c, rb + 3 * GRANULE);
        // The freed pair is reused, not zero, and its first byte is still resident.
        let (d, zd) = h.alloc(2 * GRANULE).unwrap();
        assert_eq!((d, zd), (rb, false));
        // SAFETY: d is live.
        assert_eq!(unsafe { *(d as *const u8) }, 7);
        assert_eq!(h.dirty_granules, 0);
        // b cannot grow into c; c grows into the free space after it.
        assert!(!h.grow_in_place(b, GRANULE, 2 * GRANULE));
        assert!(h.grow_in_place(c, 3 * GRANULE, 5 * GRANULE));
        assert_eq!(h.regions[0].used, 0b1111_1111);
        h.shrink(c, 5 * GRANULE, GRANULE);
        assert_eq!(h.regions[0].used, 0b1111);
        assert_eq!(h.live_granules, 4);
    }

    #[test]
    fn dirty_granules_stay_within_the_live_budget() {
        assert_eq!(
            budget(0, 0, 0),
            0,
            "a program that freed everything keeps nothing"
        );
        assert_eq!(budget(1, GRANULE, 0), 24);
        let mut h = heap_with_region();
        let mut objs = [(0usize, 0usize); 8];
        for (i, o) in objs.iter_mut().enumerate() {
            let len = (i % 3 + 1) * GRANULE - 4096;
            *o = (h.alloc(len).unwrap().0, len);
        }
        for &(b, len) in &objs {
            h.free(b, len, false);
            let floor = h.floor.min(h.last_freed);
            let allowed = budget(h.live_granules, stats::arena_active_bytes(), floor);
            assert!(
                h.dirty_granules <= allowed,
                "{} > {}",
                h.dirty_granules,
                allowed
            );
        }
        h.purge(true, Why::Other);
        assert_eq!(h.dirty_granules, 0);
        // Purged granules are reused as zero.
        let (c, zero) = h.alloc(4 * GRANULE).unwrap();
        assert_eq!((c, zero), (objs[0].0, true));
    }

    #[test]
    fn slack_of_a_reused_granule_is_accounted_and_purged() {
        let mut h = heap_with_region();
        let (a, _) = h.alloc(GRANULE).unwrap();
        let (b, _) = h.alloc(GRANULE).unwrap();
        // SAFETY: the last page of a is live.
        unsafe { *((a + GRANULE - 4096) as *mut u8) = 9 };
        h.free(a, GRANULE, false);
        assert_eq!(h.dirty_granules, 1);
        // A shorter object takes the dirty granule: the rest of it is slack, still dirty.
        let (c, zero) = h.alloc(8192).unwrap();
        assert_eq!((c, zero), (a, false));
        assert_eq!(h.regions[0].slack[0], 8192);
        assert_eq!(h.dirty_granules, 1);
        // Growing within the granule moves the slack's start; growing past it ends it.
        assert!(h.grow_in_place(c, 8192, 16384));
        assert_eq!(h.regions[0].slack[0], 16384);
        h.purge(true, Why::Other);
        assert_eq!((h.dirty_granules, h.regions[0].slack[0]), (0, 0));
        // SAFETY: the page is in the region; the purge made it read zero.
        assert_eq!(unsafe { *((a + GRANULE - 4096) as *const u8) }, 0);
        h.free(b, GRANULE, false);
        assert!(h.grow_in_place(c, 16384, GRANULE + 4096));
        // b's dirty granule is now c's last one: slack past c's end.
        assert_eq!((h.dirty_granules, h.regions[0].slack[1]), (1, 4096));
        h.shrink(c, GRANULE + 4096, 4096);
        assert_eq!((h.regions[0].used, h.live_granules), (1, 1));
        assert_eq!((h.dirty_granules, h.regions[0].slack[1]), (0, 0));
    }
}
