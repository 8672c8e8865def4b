//! The per-thread cache: per size class, a bounded LIFO stack of free blocks. The fast paths
//! of malloc and free touch only this thread's cache — no lock, no atomic read-modify-write.
//! An empty stack refills from the thread's arena in one locked batch (a few blocks at first,
//! doubling up to half its capacity); a full one flushes its older half to the owning spans.
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
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use crate::arena;
use crate::config::{narenas, MAX_ARENAS, TCACHE_BYTES};
use crate::init;
use crate::lock::Mutex;
use crate::os::{self, OS_PAGE};
use crate::pagemap::{self, FlatView, NO_FLAT};
use crate::size_class::{self, BlockChecks, CACHE_MAX, CLASSES, NCLASSES, NO_CHECKS};
use crate::span::Chunk;
use crate::stats;
use crate::tls;

/// One class's stack of free blocks: `top` is the next free slot, `end` one past the last
/// slot a push may fill. The slot below the first always holds null, so `pop` needs no count:
/// it reads the slot under `top` and stops at the null.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bin {
    top: *mut *mut u8,
    end: *mut *mut u8,
}

#[repr(C)]
pub struct TCache {
    /// Never used: it puts class c's bin at 16 × (c + 1) bytes, 16 × the kind byte of the
    /// class's pages, which the free path has in hand (no decrement, no extra shift).
    _bin0: Bin,
    bins: [Bin; NCLASSES],
    /// malloc calls served per class (statistics; read racily by the report), in the first
    /// word of 16 so that the fast path addresses it with the bin's offset.
    nmalloc: [[u64; 2]; NCLASSES],
    /// Copies of what the free fast path validates a block with — the flat chunk map and the
    /// block checks (at the bin's offset, like the bins) — so that it addresses both from the
    /// cache pointer it needs anyway. UNSET and DEAD hold ones no address passes: a thread
    /// without a cache frees through the checked path.
    checks: BlockChecks,
    flat: FlatView,
    /// Each stack's first slot (slot `base - 1` holds null) and capacity. A stack lives at
    /// `home` (room for capacity(c), packed with the other classes' so that a new cache
    /// touches few pages) until it grows past that, then at `mid` (room for mid_capacity(c),
    /// packed the same way, so that stacks grown a little share pages), then at `grown`
    /// (room for max_capacity(c), in the mapping's upper part, untouched until first used).
    base: [*mut *mut u8; NCLASSES],
    home: [*mut *mut u8; NCLASSES],
    mid: [*mut *mut u8; NCLASSES],
    grown: [*mut *mut u8; NCLASSES],
    cap: [u32; NCLASSES],
    /// Whether the class was refilled since its last flush (see `max_capacity`).
    refilled: [bool; NCLASSES],
    /// Whether the class was refilled after a flush: blocks it gave back were needed again,
    /// the sign of bursts bigger than the stack (see `max_capacity`). Until then a stack does
    /// not grow: a thread that allocates and frees one burst and goes idle would keep the
    /// whole burst in its grown stacks, which no other thread can give back.
    round_trip: [bool; NCLASSES],
    /// Whether the class's stack overflowed and was flushed since the cache was set up or
    /// last drained (forced flushes, drains and trims do not count).
    flushed: [bool; NCLASSES],
    /// Blocks the class's next refill takes at most: `first_refill` at first, doubling with
    /// each refill (see `refill_and_pop`).
    batch: [u16; NCLASSES],
    arena: usize,
    /// `crate::pages::pressure_events()` when this cache last flushed itself whole.
    pressure_seen: usize,
    /// Every capacity is at most DRAIN_CAP, or 0 (frees bypass the cache), until this thread
    /// allocates again (see `set_draining`).
    draining: bool,
    /// Frees left before a cache drained by an arena's bulk purge (capacity 0) caches again.
    bypass_left: u32,
    /// Bytes of full stacks that overflowed since this thread last refilled one (see
    /// DRAIN_AFTER_BYTES).
    overflowed: usize,
    /// Link in the pool of caches of exited threads, or in the list of live caches.
    next_free: *mut TCache,
    next_live: *mut TCache,
    prev_live: *mut TCache,
}

/// The null slot under the stacks of the two static caches below.
struct NullSlot([*mut u8; 1]);
// SAFETY: never written.
unsafe impl Sync for NullSlot {}
static NULL_SLOT: NullSlot = NullSlot([null_mut()]);

/// A cache with no room: every pop finds the null slot, every push finds `top == end`.
const fn empty_cache() -> TCache {
    let top = (&NULL_SLOT.0 as *const [*mut u8; 1] as *mut *mut u8).wrapping_add(1);
    TCache {
        _bin0: Bin {
            top: null_mut(),
            end: null_mut(),
        },
        bins: [Bin { top, end: top }; NCLASSES],
        nmalloc: [[0; 2]; NCLASSES],
        checks: NO_CHECKS,
        flat: NO_FLAT,
        // Read only for live caches: null needs no relocation at load (these two caches sit
        // in relocated read-only data, every pointer of theirs 24 bytes of relocation).
        base: [null_mut(); NCLASSES],
        home: [null_mut(); NCLASSES],
        mid: [null_mut(); NCLASSES],
        grown: [null_mut(); NCLASSES],
        cap: [0; NCLASSES],
        refilled: [false; NCLASSES],
        round_trip: [false; NCLASSES],
        flushed: [false; NCLASSES],
        batch: [0; NCLASSES],
        arena: 0,
        pressure_seen: 0,
        draining: false,
        bypass_left: 0,
        overflowed: 0,
        next_free: null_mut(),
        next_live: null_mut(),
        prev_live: null_mut(),
    }
}

const _: () = assert!(core::mem::offset_of!(TCache, bins) == 16);
const _: () = assert!(core::mem::size_of::<Bin>() == 16);

pub struct SyncCache(TCache);
// SAFETY: UNSET has no room anywhere, so no thread ever writes to it.
unsafe impl Sync for SyncCache {}
/// What a thread's slot points at before its first call: sends every call to the slow path,
/// which creates the thread's cache.
pub static UNSET: SyncCache = SyncCache(empty_cache());

struct DeadCache(core::cell::UnsafeCell<TCache>);
// SAFETY: written once, by `init`, before initialisation is published (READY, Release);
// read only by threads that saw READY (a thread exits, or finds no memory for a cache,
// after its first call initialised the allocator). It has no room, so nothing writes it
// after `init`.
unsafe impl Sync for DeadCache {}
/// What the slot points at after thread exit: the slow paths see it and use the arenas.
/// All zeros (.bss) but for its bins, which `init` points at the null slot: in relocated
/// data, like UNSET, it would cost every process a page and 2 KiB of relocations.
// SAFETY: every field of TCache (raw pointers, integers, bools) is valid as zeros.
static DEAD: DeadCache = DeadCache(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Makes DEAD an empty cache like UNSET (see DEAD); called once, at initialisation.
pub fn init() {
    let top = UNSET.0.bins[0].top;
    // SAFETY: see DeadCache: no other thread reads DEAD before initialisation is published.
    unsafe { (*DEAD.0.get()).bins = [Bin { top, end: top }; NCLASSES] };
}

/// The option's byte budget per class, read once, when the first cache is laid out: every
/// cache has the same layout (`mapping_len`, the stacks' places) for the life of the process,
/// whatever later writes to the option do (a unit test of the option parser does one).
fn budget() -> usize {
    static LATCHED: AtomicU32 = AtomicU32::new(u32::MAX);
    let b = LATCHED.load(Relaxed);
    if b != u32::MAX {
        return b as usize;
    }
    let v = TCACHE_BYTES.load(Relaxed);
    match LATCHED.compare_exchange(u32::MAX, v, Relaxed, Relaxed) {
        Ok(_) => v as usize,
        Err(first) => first as usize,
    }
}

/// Starting capacity of class `c`'s stack: the byte budget in blocks, within bounds; 0 when
/// thread caches are off.
fn capacity(c: usize) -> usize {
    let budget = budget();
    if budget == 0 {
        0
    } else {
        let size = CLASSES[c].size as usize;
        (budget / size).clamp(size_class::cache_min(size), CACHE_MAX)
    }
}

/// Most blocks a grown stack may hold: 32 × the byte budget in blocks, at most GROWN_MAX (and
/// all grown stacks together at most GROWN_BYTES_FACTOR × the budget beyond their start).
/// A class's stack grows (doubling) when it overflows, on a block of the thread's own arena,
/// after a refill since its last flush, once a refill has followed an earlier overflow's
/// flush (`round_trip`: one burst alone, freed before the thread idles, does not grow it):
/// the thread allocates and frees that class in bursts larger than the stack, and every
/// burst would otherwise cross the arena lock twice per block beyond the capacity (blocks
/// freed in reverse order of allocation, batches). A thread that only frees never refills,
/// and blocks of other threads' arenas (objects migrating between threads) go back to their
/// owners, so neither grows a stack. A grown stack goes back to its starting capacity when
/// it overflows without a refill since its last flush (the thread is freeing more than it
/// allocates) and when the cache drains.
/// Stacks of big blocks (`size_class::BIG_BLOCK`) never grow.
fn max_capacity(c: usize) -> usize {
    if CLASSES[c].size as usize >= size_class::BIG_BLOCK {
        return capacity(c);
    }
    capacity(c).max((GROWN_STACK_FACTOR * budget() / CLASSES[c].size as usize).min(GROWN_MAX))
}
const GROWN_MAX: usize = 1024;

/// Room of class `c`'s middle place: MID_FACTOR × its starting capacity (within the most a
/// grown stack holds). A stack that grows moves there first: the places of all classes lie
/// back to back, so that stacks grown once or twice (objects migrating between threads, whose
/// per-class fill wanders) share pages, where each would touch a page of its own at the
/// grown place (a quarter of migrate's peak at 2 threads).
fn mid_capacity(c: usize) -> usize {
    (MID_FACTOR * capacity(c)).min(max_capacity(c))
}
const MID_FACTOR: usize = 4;
/// 32, not 64: reverse-free's batches need 256 KiB in their widest class (512 B blocks: its
/// sizes are uniform, so a class 64 bytes wide gets an eighth of a batch; with 128 KiB it ran
/// 1.6 x the instructions), and more only let random walks of bigger classes pin spans
/// (server-churn 2 25.8 -> 25.2 MB, 8 threads 52.6 -> 51.0 MB).
const GROWN_STACK_FACTOR: usize = 32;
/// Bytes all of a thread's grown stacks may hold beyond their starting capacities together:
/// this many times the byte budget (1.5 MiB by default), so that a thread that goes idle
/// after bursts in many classes keeps at most that much more than before growth existed.
/// Batches of a few thousand blocks over all classes (reverse-free) need about that much
/// beyond the starting stacks; with less, stacks at their limit overflow, shrink and grow
/// again on every batch.
const GROWN_BYTES_FACTOR: usize = 192;

/// Blocks a class's first refill takes at most. Each refill writes the free mark into every
/// block it takes, so a full batch touches half a stack's budget of blocks per class: a thread
/// using a few blocks of many classes would fault in tens of KiB it never uses. Later refills
/// double (4, 8, 16, ...) up to half the stack, so a class in steady use costs a handful more
/// refills, once.
const FIRST_REFILL: usize = 4;

/// The first refill of class `c`: FIRST_REFILL blocks, or as many as fit in an OS page (at
/// least one). A batch of 4 blocks above 1 KiB spreads over 4 or more pages: a program's
/// single stdio buffer (4 KiB) would fault in four.
fn first_refill(c: usize) -> u16 {
    (OS_PAGE / CLASSES[c].size as usize).clamp(1, FIRST_REFILL) as u16
}

/// Bytes of blocks a cache's stacks may hold beyond their starting capacities.
fn grown_bytes(t: &TCache) -> usize {
    (0..NCLASSES)
        .map(|c| (t.cap[c] as usize).saturating_sub(capacity(c)) * CLASSES[c].size as usize)
        .sum()
}

/// The rooms of a stack's places, in the order they lie in a cache mapping after its header:
/// every class's home, then every class's middle place, then every grown place, each place
/// with a null slot below its first.
const PLACE_ROOMS: [fn(usize) -> usize; 3] = [capacity, mid_capacity, max_capacity];

/// Bytes of a cache mapping: the header and every class's stack (the same for every thread,
/// since the options are read once).
fn mapping_len() -> usize {
    // Only touched pages of the mapping become resident.
    let slots: usize = PLACE_ROOMS
        .iter()
        .map(|room| (0..NCLASSES).map(|c| 1 + room(c)).sum::<usize>())
        .sum();
    (core::mem::size_of::<TCache>() + slots * 8 + OS_PAGE - 1) & !(OS_PAGE - 1)
}

struct Caches {
    /// Caches of exited threads, for reuse.
    retired: *mut TCache,
    /// Caches of live threads (for the statistics report).
    live: *mut TCache,
    /// malloc calls per class served by caches that have since retired.
    nmalloc_retired: [u64; NCLASSES],
}
// SAFETY: the lists are only walked and changed under this lock.
unsafe impl Send for Caches {}
static CACHES: Mutex<Caches> = Mutex::new(Caches {
    retired: null_mut(),
    live: null_mut(),
    nmalloc_retired: [0; NCLASSES],
});
/// Bytes flushed from overflowing stacks without a refill after which a cache drains: the
/// thread has freed several times what its cache can hold without allocating (a bulk free,
/// or a consumer). Balanced work refills between overflows, and freeing a batch of a few
/// thousand blocks overflows a stack or two per class (a megabyte or two).
const DRAIN_AFTER_BYTES: usize = 8 << 20;
/// Capacity of every class while a cache drains after DRAIN_AFTER_BYTES: an arena lock
/// per this many frees for a thread that only frees (a consumer), and few enough cached
/// blocks that the spans they pin cannot keep their arenas from purging.
const DRAIN_CAP: usize = 128;
/// Frees that go straight to their spans after an arena purged in bulk, before the cache
/// holds blocks again (at most DRAIN_CAP per class if the thread is still only freeing): the
/// end of a bulk free leaves its arenas exact and empty, and a consumer thread that never
/// allocates is not left taking a lock on every free.
const BYPASS_FREES: u32 = 4096;
static NEXT_ARENA: AtomicUsize = AtomicUsize::new(0);
/// Live thread caches per arena.
static ARENA_LOAD: [AtomicUsize; MAX_ARENAS] = [const { AtomicUsize::new(0) }; MAX_ARENAS];

/// The arena for a new thread: one no live thread uses if there is one (looking from a
/// rotating start), else the least used. Threads sharing an arena refill from the same
/// spans (in whole cache lines, see `refill_and_pop`, at the cost of free blocks stranded in
/// partly used lines) and wait for each other's lock; round robin alone shares an arena as
/// soon as threads exit in another order than they started. Two threads starting at once
/// may pick the same arena: harmless.
fn pick_arena() -> usize {
    let n = narenas();
    let start = NEXT_ARENA.fetch_add(1, Relaxed);
    let mut best = start % n;
    let mut best_load = usize::MAX;
    for i in 0..n {
        let a = (start + i) % n;
        let load = ARENA_LOAD[a].load(Relaxed);
        if load < best_load {
            (best, best_load) = (a, load);
            if load == 0 {
                break;
            }
        }
    }
    ARENA_LOAD[best].fetch_add(1, Relaxed);
    best
}

#[inline(always)]
fn dead() -> *mut TCache {
    DEAD.0.get()
}

#[inline(always)]
fn unset() -> *mut TCache {
    &UNSET.0 as *const TCache as *mut TCache
}

/// This thread's cache: UNSET before its first call, DEAD after its exit (never null).
#[inline(always)]
pub fn current() -> *mut TCache {
    tls::get() as *mut TCache
}

/// Blocks in class `c`'s stack.
fn count(t: &TCache, c: usize) -> usize {
    // SAFETY: top and base point into the same stack, top >= base.
    unsafe { t.bins[c].top.offset_from(t.base[c]) as usize }
}

/// The flat chunk map as cache `tc` (this thread's, UNSET or DEAD) holds it.
#[inline(always)]
pub fn flat<'a>(tc: *mut TCache) -> &'a FlatView {
    // SAFETY: `tc` points at a cache that lives forever; `flat` is written only by the
    // owning thread, when it creates the cache.
    unsafe { &(*tc).flat }
}

/// The block checks as cache `tc` (this thread's, UNSET or DEAD) holds them.
#[inline(always)]
pub fn checks<'a>(tc: *mut TCache) -> &'a BlockChecks {
    // SAFETY: as for `flat`.
    unsafe { &(*tc).checks }
}

fn cache_ref<'a>(tc: *mut TCache) -> &'a mut TCache {
    // SAFETY: callers pass this thread's own live cache (never DEAD when writing).
    unsafe { &mut *tc }
}

/// Pops a block of class `c` from this thread's cache; null when the stack is empty (or the
/// cache is UNSET or DEAD): then take the slow path.
#[inline(always)]
pub fn pop(tc: *mut TCache, c: usize) -> *mut u8 {
    pop_at(tc, size_class::bin_of_class(c))
}

/// `pop` of the class whose bin is `off` bytes into the cache (`size_class::bin_offset_of`).
#[inline(always)]
pub fn pop_at(tc: *mut TCache, off: usize) -> *mut u8 {
    const NMALLOC: usize = core::mem::offset_of!(TCache, nmalloc) - 16;
    // SAFETY: `tc` is this thread's cache, UNSET or DEAD; `off` is 16 × (class + 1) for a
    // class < NCLASSES (bin_offset_of's table holds only those, checked by size_class's
    // tests), so it names a bin, and NMALLOC + off that class's counter. The slot below
    // `top` is a block or the null slot under the stack.
    unsafe {
        let bin = (tc as *mut u8).add(off) as *mut Bin;
        let top = (*bin).top.sub(1);
        let p = *top;
        if p.is_null() {
            return null_mut();
        }
        (*bin).top = top;
        *((tc as *mut u8).add(NMALLOC + off) as *mut u64) += 1;
        // The block leaves the free state: clear its double-free mark.
        *(p as *mut u64).add(1) = 0;
        p
    }
}

/// Pushes free block `p` of class `c`; false when the stack is full (always, for UNSET and
/// DEAD).
#[inline(always)]
pub fn push(tc: *mut TCache, c: usize, p: *mut u8, secret: u64) -> bool {
    push_at(tc, size_class::bin_of_class(c), p, secret)
}

/// `push` to the bin `off` bytes into the cache (16 × (class + 1): `PageInfo::bin`).
#[inline(always)]
pub fn push_at(tc: *mut TCache, off: usize, p: *mut u8, secret: u64) -> bool {
    // SAFETY: `tc` is this thread's cache, UNSET or DEAD (top == end: never written); `off`
    // is 16 × (class + 1) for a class < NCLASSES (from the page info of a validated block),
    // so it names a bin; `p` is a validated block of at least 16 bytes.
    unsafe {
        let bin = (tc as *mut u8).add(off) as *mut Bin;
        let top = (*bin).top;
        if top >= (*bin).end {
            return false;
        }
        *top = p;
        (*bin).top = top.add(1);
        *(p as *mut u64).add(1) = secret;
        true
    }
}

/// This thread's cache, creating it on the thread's first call. DEAD after thread exit or
/// when no memory is left for a cache.
pub fn get_or_create() -> *mut TCache {
    let tc = current();
    if tc != unset() {
        return tc;
    }
    init::ensure();
    let tc = current();
    if tc != unset() {
        // initialisation allocated on this thread and created the cache already
        return tc;
    }
    let tc = {
        let mut r = CACHES.lock();
        let t = r.retired;
        if !t.is_null() {
            r.retired = cache_ref(t).next_free;
        }
        t
    };
    let tc = if tc.is_null() {
        os::map(mapping_len()) as *mut TCache
    } else {
        tc
    };
    if tc.is_null() {
        return dead();
    }
    let t = cache_ref(tc);
    let mut stack = (tc as usize + core::mem::size_of::<TCache>()) as *mut *mut u8;
    for (places, room) in [&mut t.home, &mut t.mid, &mut t.grown]
        .into_iter()
        .zip(PLACE_ROOMS)
    {
        for (c, place) in places.iter_mut().enumerate() {
            // SAFETY: the places lie back to back inside the mapping of mapping_len() bytes,
            // in PLACE_ROOMS's order, each under its null slot.
            unsafe {
                *place = stack.add(1);
                stack = stack.add(1 + room(c));
            }
        }
    }
    for c in 0..NCLASSES {
        let cap = capacity(c);
        let base = t.home[c];
        // SAFETY: `base` is the home place, with room for `cap` slots. Its null slot is not
        // written: a fresh mapping reads zero (untouched, its page stays out of the resident
        // set until the class is used) and nothing stores into it later, so a recycled cache
        // still has it. (The null slots of the other places are written when a stack first
        // moves there.)
        unsafe {
            debug_assert!((*base.sub(1)).is_null());
            t.bins[c] = Bin {
                top: base,
                end: base.add(cap),
            };
        }
        t.base[c] = base;
        t.cap[c] = cap as u32;
        t.refilled[c] = false;
        t.round_trip[c] = false;
        t.flushed[c] = false;
        t.batch[c] = first_refill(c);
    }
    t.arena = pick_arena();
    t.next_free = null_mut();
    t.pressure_seen = crate::pages::pressure_events();
    t.draining = false;
    t.bypass_left = 0;
    t.overflowed = 0;
    t.nmalloc = [[0; 2]; NCLASSES];
    t.checks = size_class::BLOCK_CHECKS;
    t.flat = pagemap::flat_view();
    {
        let mut r = CACHES.lock();
        t.prev_live = null_mut();
        t.next_live = r.live;
        if !r.live.is_null() {
            cache_ref(r.live).prev_live = tc;
        }
        r.live = tc;
    }
    tls::set(tc as *mut u8);
    init::register_thread_cache(tc as *mut u8);
    stats::add_threads(1);
    tc
}

#[inline(always)]
pub fn is_live(tc: *mut TCache) -> bool {
    tc != unset() && tc != dead()
}

/// Refills class `c` and pops one block; null when memory is exhausted.
#[inline(never)]
pub fn refill_and_pop(tc: *mut TCache, c: usize) -> *mut u8 {
    crate::region::tick_if_due();
    if cache_ref(tc).draining {
        set_draining(tc, None);
    }
    let t = cache_ref(tc);
    t.overflowed = 0;
    let a = t.arena;
    let cap = t.cap[c] as usize;
    if cap == 0 {
        return take_one(a, c);
    }
    if count(t, c) != 0 {
        // refilled meanwhile (a nested call during this thread's set-up)
        return pop(tc, c);
    }
    // With other live threads on the arena, blocks come in whole cache lines (a line's
    // blocks all go to one thread: no active false sharing), so ask for whole groups.
    let shared = ARENA_LOAD[a].load(Relaxed) > 1;
    let g = if shared { size_class::line_group(c) } else { 1 };
    let want = (capacity(c).min(cap) / 2)
        .clamp(1, t.batch[c] as usize)
        .next_multiple_of(g)
        .min(cap);
    t.batch[c] = t.batch[c].saturating_mul(2);
    // SAFETY: the stack has `cap` slots and is empty here; want <= cap.
    let out = unsafe { core::slice::from_raw_parts_mut(t.base[c], want) };
    let got = arena::take_small_anywhere(a, c, out, g);
    t.refilled[c] = true;
    t.round_trip[c] |= t.flushed[c];
    stats::count_refill();
    if got == 0 {
        return null_mut();
    }
    // Blocks came lowest address first; hand out the lowest first. Each carries the free
    // mark while it waits in the cache, so a free of one of them is seen as a double free.
    out[..got].reverse();
    let secret = init::secret();
    for &p in out[..got].iter() {
        // SAFETY: p is a free block of at least 16 bytes that this thread now owns.
        unsafe { *(p as *mut u64).add(1) = secret };
    }
    // SAFETY: `got` <= want <= cap slots were filled.
    t.bins[c].top = unsafe { t.base[c].add(got) };
    pop(tc, c)
}

/// One block straight from arena `a`, for threads without a cache (or caches turned off).
pub fn take_one(a: usize, c: usize) -> *mut u8 {
    let mut one = [null_mut()];
    if arena::take_small_anywhere(a, c, &mut one, 1) == 1 {
        // SAFETY: a fresh block of at least 16 bytes; clear its free mark as pop does.
        unsafe { *(one[0] as *mut u64).add(1) = 0 };
        one[0]
    } else {
        null_mut()
    }
}

/// Flushes the older `n` blocks of class `c` to their spans.
fn flush(tc: *mut TCache, c: usize, n: usize) {
    let t = cache_ref(tc);
    let count = count(t, c);
    let n = n.min(count);
    // SAFETY: the first `count` slots of the stack hold blocks.
    let all = unsafe { core::slice::from_raw_parts_mut(t.base[c], count) };
    return_blocks(&mut all[..n]);
    all.copy_within(n..count, 0);
    t.refilled[c] = false;
    // SAFETY: count - n <= cap.
    t.bins[c].top = unsafe { t.base[c].add(count - n) };
    stats::count_flush();
}

/// Returns blocks (of any arenas) to their spans, one lock acquisition per arena involved.
/// Reorders `blocks`.
pub fn return_blocks(blocks: &mut [*mut u8]) {
    let mut remaining = blocks.len();
    while remaining > 0 {
        // SAFETY: every block is a validated small block, so its chunk header is mapped.
        let a = unsafe { (*Chunk::of(blocks[0] as usize)).arena_of(blocks[0] as usize) };
        let mut g = arena::lock(a);
        let mut kept = 0;
        for i in 0..remaining {
            let p = blocks[i];
            // SAFETY: as above.
            if unsafe { (*Chunk::of(p as usize)).arena_of(p as usize) } == a {
                g.put_small(p as usize, "free");
            } else {
                blocks[kept] = p;
                kept += 1;
            }
        }
        g.report_used();
        drop(g);
        remaining = kept;
    }
}

/// Frees `p` of class `c` when the fast path could not: full or missing cache.
#[inline(never)]
pub fn free_slow(p: *mut u8, c: usize, secret: u64) {
    let fresh = current() == unset();
    let tc = get_or_create();
    // A thread's cache starts with its own memory: a first free of another thread's block
    // goes back to its span, or the thread's next malloc of that class would write to the
    // cache line the other thread's neighbouring blocks live on (passive false sharing:
    // an object handed over at thread start, freed, then the thread's own small objects).
    if is_live(tc) && (!fresh || owns(cache_ref(tc), p)) {
        let events = crate::pages::pressure_events();
        if events != cache_ref(tc).pressure_seen {
            // Some arena's heap just shrank in bulk: the program is freeing, not churning.
            // Drain this cache and stop caching frees until the thread allocates again, so
            // that cached blocks do not keep otherwise empty spans resident.
            cache_ref(tc).pressure_seen = events;
            flush_all(tc);
            set_draining(tc, Some(0));
            cache_ref(tc).bypass_left = BYPASS_FREES;
            // Huge objects freed before the arenas shrank were kept against the old budget (or
            // back to the recent peak): apply the live budget now.
            crate::region::enforce();
        }
        if push(tc, c, p, secret) {
            return;
        }
        if cache_ref(tc).draining {
            // a full stack goes back whole; with capacity 0, the block goes straight back
            let t = cache_ref(tc);
            let n = count(t, c);
            if n > 0 {
                flush(tc, c, n);
                if push(tc, c, p, secret) {
                    return;
                }
            } else if t.bypass_left > 0 {
                t.bypass_left -= 1;
                if t.bypass_left == 0 {
                    set_draining(tc, Some(DRAIN_CAP));
                }
            }
        } else if cache_ref(tc).overflowed >= DRAIN_AFTER_BYTES {
            // Without the drain, the last blocks of a bulk free stay cached, each pinning
            // its span, and keep their arena's dirty pages below the purge trigger.
            flush_all(tc);
            set_draining(tc, Some(DRAIN_CAP));
            if push(tc, c, p, secret) {
                return;
            }
        } else {
            crate::region::tick_if_due();
            let t = cache_ref(tc);
            let cap = t.cap[c] as usize;
            let max = max_capacity(c);
            let start = capacity(c);
            if t.refilled[c] && t.round_trip[c] && cap < max && may_grow(t, c, cap, max, p) {
                set_capacity(t, c, (cap * 2).min(max));
                stats::count_growth();
            } else {
                // Overflowing with no refill since the last flush: the thread is freeing
                // more than it allocates. Back to the starting capacity, or the blocks left
                // in a grown stack pin half-empty spans that a bulk free would release.
                let shrink = !t.refilled[c] && cap > start;
                let n = if shrink {
                    cap - start / 2
                } else {
                    (cap / 2).max(1)
                };
                flush(tc, c, n);
                if shrink {
                    set_capacity(cache_ref(tc), c, start);
                }
                let t = cache_ref(tc);
                t.overflowed += n * CLASSES[c].size as usize;
                t.flushed[c] = true;
            }
            if push(tc, c, p, secret) {
                return;
            }
        }
    }
    // Straight to the span: mark it free there too.
    // SAFETY: p is a validated small block of at least 16 bytes, being freed.
    unsafe { *(p as *mut u64).add(1) = secret };
    let mut one = [p];
    return_blocks(&mut one);
}

/// Whether class `c`'s full stack (`cap` < `max` blocks), overflowing on `p` after a refill,
/// may double: all grown stacks stay within GROWN_BYTES_FACTOR × the budget, and the stack
/// holds only the thread's own blocks (one holding other threads' blocks is part of a
/// hand-over, objects migrating between threads, which a bigger stack would only slow down
/// to give memory back). The scans are O(classes + cap), on overflows only, and stacks grow a
/// few times per burst at most.
fn may_grow(t: &TCache, c: usize, cap: usize, max: usize, p: *mut u8) -> bool {
    let more = ((cap * 2).min(max) - cap) * CLASSES[c].size as usize;
    if grown_bytes(t) + more > GROWN_BYTES_FACTOR * budget() {
        return false;
    }
    // SAFETY: the first `count` slots hold blocks.
    let held = unsafe { core::slice::from_raw_parts(t.base[c], count(t, c)) };
    owns(t, p) && held.iter().all(|&q| owns(t, q))
}

/// Whether small block `p` lies in a chunk of the cache's own arena.
fn owns(t: &TCache, p: *mut u8) -> bool {
    // SAFETY: `p` is a validated small block (cached or being freed), so its chunk header is
    // mapped.
    let a = unsafe { (*Chunk::of(p as usize)).arena_of(p as usize) };
    a == t.arena
}

/// Turns draining on with capacity `Some(cap)` per class (an emptied cache), or off with
/// None. A draining cache flushes a full stack whole, so that when a program frees most of
/// its heap and goes idle, few cached blocks pin spans: at full capacity, blocks freed in a
/// scrambled order pin one span each, megabytes, and keep their arenas' dirty pages below
/// the purge trigger. After an arena purged in bulk the capacity is 0 for BYPASS_FREES
/// frees, each going straight to its span (one lock each, like the first frees of a fresh
/// cache), so that the chunks the program empties are released whole.
fn set_draining(tc: *mut TCache, cap: Option<usize>) {
    let t = cache_ref(tc);
    t.draining = cap.is_some();
    for c in 0..NCLASSES {
        set_capacity(t, c, cap.map_or(capacity(c), |d| capacity(c).min(d)));
    }
}

/// Sets class `c`'s capacity to `cap` <= max_capacity(c), moving the stack between its home,
/// middle and grown places when needed. The stack must not hold more than `cap` blocks (a
/// shrink keeps at most the new capacity).
fn set_capacity(t: &mut TCache, c: usize, cap: usize) {
    debug_assert!(cap <= max_capacity(c) && count(t, c) <= cap);
    let to = if cap <= capacity(c) {
        t.home[c]
    } else if cap <= mid_capacity(c) {
        t.mid[c]
    } else {
        t.grown[c]
    };
    if to != t.base[c] {
        let n = count(t, c);
        // SAFETY: both places lie in this cache's mapping, hold at least `n` slots (n <= cap
        // <= the destination's room) and do not overlap; the slot below each place is inside
        // the mapping (its own null slot).
        unsafe {
            *to.sub(1) = null_mut();
            core::ptr::copy_nonoverlapping(t.base[c], to, n);
            // The old place keeps its copies: a reader that saw the old `top` still finds
            // every block there (any_cache_contains picks the place from `top`).
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
            t.base[c] = to;
            core::ptr::write_volatile(&mut t.bins[c].top, to.add(n));
        }
    }
    t.cap[c] = cap as u32;
    // SAFETY: the stack's place has room for `cap` slots.
    t.bins[c].end = unsafe { t.base[c].add(cap) };
}

/// Whether `p` sits in the cache of class `c` of any live thread (this one included). Reads
/// other threads' stacks without their cooperation: only used on the rare path where a
/// block carries the free mark, to tell a double free from stale data.
pub fn any_cache_contains(c: usize, p: *mut u8) -> bool {
    let r = CACHES.lock();
    let mut t = r.live;
    while !t.is_null() {
        let tc = cache_ref(t);
        // SAFETY: `top` is read racily; the count it gives is bounded by the stack's capacity.
        let top = unsafe { core::ptr::read_volatile(&tc.bins[c].top) } as usize;
        // The places never change while the cache is live: the stack's is the one holding
        // `top` (reading `base` too could pair one place's top with another's base).
        let within = |place: *mut *mut u8, room: usize| {
            let at = place as usize;
            (top >= at && top <= at + 8 * room).then_some((at, room))
        };
        let (base, room) = within(tc.grown[c], max_capacity(c))
            .or_else(|| within(tc.mid[c], mid_capacity(c)))
            .unwrap_or((tc.home[c] as usize, capacity(c)));
        let n = (top.saturating_sub(base) / 8).min(room);
        // SAFETY: the first `n` slots hold block pointers (possibly changing under us).
        let s = unsafe { core::slice::from_raw_parts(base as *const *mut u8, n) };
        if s.contains(&p) {
            return true;
        }
        t = tc.next_live;
    }
    false
}

/// Empties every bin of this thread's cache into the arenas (and undoes any growth).
pub fn flush_all(tc: *mut TCache) {
    if !is_live(tc) {
        return;
    }
    for c in 0..NCLASSES {
        let n = count(cache_ref(tc), c);
        if n > 0 {
            flush(tc, c, n);
        }
        // Grown stacks start over, and a stack grows again only after a new round trip: a
        // drain is no sign that the blocks given back were needed again.
        let t = cache_ref(tc);
        t.round_trip[c] = false;
        t.flushed[c] = false;
        if !t.draining {
            set_capacity(t, c, capacity(c));
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
    // The stacks are empty now: their pages go back to the kernel (they read zero again,
    // like a fresh mapping's; before the cache is on the retired list, where another thread
    // may take it); the header stays for the next thread.
    let head = os::round_page(core::mem::size_of::<TCache>());
    os::purge((tc as usize + head) as *mut u8, mapping_len() - head);
    let a = cache_ref(tc).arena;
    ARENA_LOAD[a].fetch_sub(1, Relaxed);
    if stats::add_threads(-1) <= 1 {
        // The last thread but one left: the program is going back to one thread, maybe
        // to stay idle, and its working set may have left with the others. Give the free
        // pages back now rather than at an epoch end that needs activity to come.
        crate::pages::lock_now().purge(true);
    }
    let mut r = CACHES.lock();
    let t = cache_ref(tc);
    for c in 0..NCLASSES {
        r.nmalloc_retired[c] += t.nmalloc[c][0];
    }
    if t.prev_live.is_null() {
        r.live = t.next_live;
    } else {
        cache_ref(t.prev_live).next_live = t.next_live;
    }
    if !t.next_live.is_null() {
        cache_ref(t.next_live).prev_live = t.prev_live;
    }
    t.next_free = r.retired;
    r.retired = tc;
}

/// malloc calls per class served through thread caches, live and retired (racy reads of
/// other threads' counters: approximate, never torn). With `wait` false, returns zeros rather
/// than wait for a lock another thread holds (at exit, that thread may never release it).
pub fn requests(wait: bool) -> [u64; NCLASSES] {
    let r = if wait {
        CACHES.lock()
    } else {
        match CACHES.try_lock() {
            Some(g) => g,
            None => return [0; NCLASSES],
        }
    };
    let mut n = r.nmalloc_retired;
    let mut t = r.live;
    while !t.is_null() {
        let tc = cache_ref(t);
        for (c, v) in n.iter_mut().enumerate() {
            // SAFETY: an aligned u64 read; the owner may be incrementing it concurrently.
            *v += unsafe { core::ptr::read_volatile(&tc.nmalloc[c][0]) };
        }
        t = tc.next_live;
    }
    n
}

/// Walks this thread's cache: every cached block must be a block of its class that its span
/// counts as allocated.
pub fn check_current() {
    let tc = current();
    if !is_live(tc) {
        return;
    }
    for c in 0..NCLASSES {
        let t = cache_ref(tc);
        // SAFETY: the first `count` slots of the stack hold blocks.
        let s = unsafe { core::slice::from_raw_parts(t.base[c], count(t, c)) };
        for (i, &p) in s.iter().enumerate() {
            if crate::heap::locate(p as usize) != crate::heap::Located::Small(c) {
                crate::report::fatal("check", "cache holds a foreign block", p as usize);
            }
            if arena::small_is_free(p as usize) {
                crate::report::fatal("check", "cached block also free in its span", p as usize);
            }
            if s[i + 1..].contains(&p) {
                crate::report::fatal("check", "block cached twice", p as usize);
            }
        }
    }
}

pub fn fork_prepare() {
    CACHES.lock_forever();
}
pub fn fork_parent() {
    CACHES.force_unlock();
}
pub fn fork_child() {
    CACHES.reset_in_child();
    stats::set_threads(is_live(current()) as isize);
}
