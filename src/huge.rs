//! Huge objects (above LARGE_MAX). A small header sits at the start of each object's
//! memory, one OS page before the user pointer (or `align` before it for larger alignments),
//! and names the memory's length; a keyed canary guards it.
//!
//! Where the memory comes from:
//! - Objects up to `region::MAX_OBJECT` with ordinary alignment live in the huge heap
//!   (`region`): granules of reserved address space whose freed pages stay resident for a
//!   while, so big buffers that come and go reuse faulted-in pages, and growth extends in
//!   place into free granules after the object.
//! - Larger or more strictly aligned objects get a mapping of their own, aligned to the chunk
//!   size so that no two share a page-map unit. Realloc grows those with mremap (in place
//!   when the pages after the mapping are free, otherwise moved without copying). A freed
//!   mapping waits in a small cache for one to two purge epochs, then is unmapped.

use core::sync::atomic::Ordering::Relaxed;

use crate::config::{CHUNK_SIZE, PURGE_EPOCH_NS};
use crate::lock::Mutex;
use crate::os::{self, OS_PAGE};
use crate::pagemap;
use crate::region;
use crate::report::fatal;
use crate::stats;

#[repr(C)]
struct Header {
    /// A keyed hash of the base and the fields below: a header overwritten by a stray write
    /// (an underflow of the block, an overflow of the mapping below) is detected, not obeyed.
    canary: u64,
    map_len: usize,
    user_off: usize,
    /// Alignment of the mapping's base (for moving realloc).
    base_align: usize,
    /// 1 when the object lives in the huge heap (`region`), 0 when it has a mapping of its
    /// own.
    in_region: usize,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 31)).wrapping_mul(0x7fb5d329728ea185);
    x = (x ^ (x >> 27)).wrapping_mul(0x81dadef4bc2dd44d);
    x ^ (x >> 33)
}

fn canary_of(base: usize, h: &Header) -> u64 {
    let secret = crate::init::secret();
    mix(secret ^ base as u64)
        ^ mix(secret.rotate_left(17) ^ h.map_len as u64)
        ^ mix(secret.rotate_left(31) ^ h.user_off as u64)
        ^ mix(secret.rotate_left(47) ^ h.base_align as u64)
        ^ mix(secret.rotate_left(59) ^ h.in_region as u64)
}

/// Recomputes a live header's canary after its fields changed.
fn seal(base: usize, h: &mut Header) {
    h.canary = canary_of(base, h);
}

/// Marks a header as belonging to a freed mapping (waiting in the cache).
fn seal_freed(base: usize, h: &mut Header) {
    h.canary = !canary_of(base, h);
}

/// Lays a new header (canary not yet set) at `base`, the start of memory of ours at least one
/// page long that no live object uses.
fn write_header<'a>(
    base: usize,
    map_len: usize,
    user_off: usize,
    base_align: usize,
    in_region: usize,
) -> &'a mut Header {
    let h = Header {
        canary: 0,
        map_len,
        user_off,
        base_align,
        in_region,
    };
    // SAFETY: per the contract the page at `base` is ours and unused; the header fits in it.
    unsafe { (base as *mut Header).write(h) };
    header_of(base)
}

fn header_of<'a>(base: usize) -> &'a mut Header {
    // SAFETY: `base` comes from a page-map entry of kind huge (or the cache), which exists
    // only while the mapping (whose first bytes are this header) exists.
    unsafe { &mut *(base as *mut Header) }
}

fn header<'a>(base: usize, p: usize, func: &str) -> &'a mut Header {
    let h = header_of(base);
    let expect = canary_of(base, h);
    if h.canary != expect {
        if h.canary == !expect {
            fatal(func, "double free", p);
        }
        fatal(func, "corrupted block header at", p);
    }
    h
}

#[derive(Clone, Copy)]
struct Cached {
    base: usize,
    map_len: usize,
    freed_at: u64,
}

struct Cache {
    e: [Cached; CACHE_SLOTS],
    n: usize,
    /// Bytes of the cached mappings.
    bytes: usize,
    /// Bytes of the live huge objects.
    live: usize,
    /// Requests served from the cache, requests that missed it, mappings unmapped by
    /// eviction or expiry, and freed mappings unmapped at once (for the statistics report).
    hits: u64,
    misses: u64,
    evicted: u64,
    uncached: u64,
}
const CACHE_SLOTS: usize = 16;
/// The cache holds at most max(CACHE_MIN_BYTES, live bytes of own-mapping objects): a
/// program that frees everything keeps at most this much resident.
const CACHE_MIN_BYTES: usize = 4 << 20;
static CACHE: Mutex<Cache> = Mutex::new(Cache {
    e: [Cached {
        base: 0,
        map_len: 0,
        freed_at: 0,
    }; CACHE_SLOTS],
    n: 0,
    bytes: 0,
    live: 0,
    hits: 0,
    misses: 0,
    evicted: 0,
    uncached: 0,
});

fn unmap_mapping(base: usize, len: usize) {
    pagemap::unregister(base, len);
    os::unmap(base as *mut u8, len);
    stats::add_huge(-(len as isize), -1);
}

impl Cache {
    fn remove(&mut self, i: usize) -> Cached {
        let c = self.e[i];
        self.n -= 1;
        self.e[i] = self.e[self.n];
        self.bytes -= c.map_len;
        c
    }

    fn cap(&self) -> usize {
        CACHE_MIN_BYTES.max(self.live)
    }

    fn evict_oldest(&mut self) {
        let oldest = (0..self.n).min_by_key(|&i| self.e[i].freed_at).unwrap_or(0);
        let c = self.remove(oldest);
        self.evicted += 1;
        unmap_mapping(c.base, c.map_len);
    }

    /// Unmaps entries freed more than two epochs ago (all of them if `all`).
    fn expire(&mut self, now: u64, all: bool) {
        let limit = 2 * PURGE_EPOCH_NS.load(Relaxed);
        let mut i = 0;
        while i < self.n {
            if all || now.wrapping_sub(self.e[i].freed_at) >= limit {
                let c = self.remove(i);
                self.evicted += 1;
                unmap_mapping(c.base, c.map_len);
            } else {
                i += 1;
            }
        }
    }
}

/// Takes the smallest cached mapping of at least `need` bytes, trimmed to `need`.
fn take_cached(need: usize) -> Option<usize> {
    let mut cache = CACHE.lock();
    cache.expire(os::now_ns(), false);
    let mut best: Option<usize> = None;
    for i in 0..cache.n {
        let l = cache.e[i].map_len;
        if l >= need && best.is_none_or(|b| l < cache.e[b].map_len) {
            best = Some(i);
        }
    }
    let Some(best) = best else {
        cache.misses += 1;
        return None;
    };
    cache.hits += 1;
    let c = cache.remove(best);
    let mut len = c.map_len;
    // Much bigger than needed: split at the next chunk boundary and keep the tail cached as
    // a mapping of its own, resident pages and all, rather than unmapping it.
    let split = (need + CHUNK_SIZE - 1) & !(CHUNK_SIZE - 1);
    if len > split && cache.n < CACHE_SLOTS {
        let tail = c.base + split;
        let tail_len = len - split;
        // The tail's first page belongs to the cached mapping, which we own.
        seal_freed(tail, write_header(tail, tail_len, OS_PAGE, CHUNK_SIZE, 0));
        if pagemap::register(tail, tail_len, tail | pagemap::KIND_HUGE) {
            let n = cache.n;
            cache.e[n] = Cached {
                base: tail,
                map_len: tail_len,
                freed_at: c.freed_at,
            };
            cache.n += 1;
            cache.bytes += tail_len;
            stats::add_huge(0, 1);
            len = split;
        }
    }
    // live from now on; shrink_mapping below accounts for a trimmed tail
    cache.live += len;
    drop(cache);
    if len > split {
        shrink_mapping(c.base, len, need);
        len = need;
    }
    let h = header_of(c.base);
    h.map_len = len;
    seal(c.base, h);
    Some(c.base + h.user_off)
}

/// Gives back the tail of a mapping. The units it no longer covers leave the page map first:
/// as soon as the tail is unmapped, another thread may map that address space and register
/// it.
fn shrink_mapping(base: usize, old_len: usize, new_len: usize) {
    pagemap::unregister_tail(base, old_len, new_len);
    os::unmap((base + new_len) as *mut u8, old_len - new_len);
    account_resize(old_len, new_len);
}

fn account_resize(old_len: usize, new_len: usize) {
    stats::add_huge(new_len as isize - old_len as isize, 0);
    let mut c = CACHE.lock();
    c.live = (c.live + new_len).saturating_sub(old_len);
}

/// Unmaps every cached mapping now (memory pressure, malloc_trim); returns the bytes
/// released.
pub fn drain_cache() -> usize {
    let mut cache = CACHE.lock();
    let bytes = cache.bytes;
    cache.expire(0, true);
    drop(cache);
    bytes + region::purge_all()
}

/// The cache's counters: (hits, misses, evicted, uncached, cached bytes); None when the
/// cache is busy and `wait` is false.
pub fn cache_counters(wait: bool) -> Option<(u64, u64, u64, u64, usize)> {
    let c = if wait {
        CACHE.lock()
    } else {
        CACHE.try_lock()?
    };
    Some((c.hits, c.misses, c.evicted, c.uncached, c.bytes))
}

pub fn fork_prepare() {
    CACHE.lock_forever();
    region::fork_prepare();
}
pub fn fork_parent() {
    region::fork_parent();
    CACHE.force_unlock();
}
pub fn fork_child() {
    region::fork_child();
    CACHE.reset_in_child();
}

fn round_page(n: usize) -> Option<usize> {
    n.checked_add(OS_PAGE - 1).map(|v| v & !(OS_PAGE - 1))
}

/// A huge object of `size` bytes aligned to `align`, and whether its bytes are known to be
/// zero; null if the kernel refuses.
pub fn alloc(size: usize, align: usize) -> (*mut u8, bool) {
    let user_off = align.max(OS_PAGE);
    let Some(map_len) = user_off.checked_add(size).and_then(round_page) else {
        return (core::ptr::null_mut(), false);
    };
    if user_off == OS_PAGE {
        if map_len <= region::MAX_OBJECT {
            if let Some(r) = alloc_in_region(map_len) {
                return r;
            }
        } else if let Some(p) = take_cached(map_len) {
            return (p as *mut u8, false);
        }
    }
    (map_fresh(map_len, user_off, align), true)
}

/// A huge object of `map_len` bytes (header page included) in the huge heap, and whether
/// its bytes are known to be zero; None when the heap cannot grow.
fn alloc_in_region(map_len: usize) -> Option<(*mut u8, bool)> {
    let mut heap = region::lock();
    let (base, zero) = heap.alloc(map_len)?;
    // The granules at `base` were just taken for this object.
    seal(
        base,
        write_header(base, map_len, OS_PAGE, region::GRANULE, 1),
    );
    if !pagemap::register(base, map_len, base | pagemap::KIND_HUGE) {
        heap.free(base, map_len, true);
        return None;
    }
    drop(heap);
    stats::add_huge(map_len as isize, 1);
    Some(((base + OS_PAGE) as *mut u8, zero))
}

/// Frees a huge-heap object: its granules stay resident for reuse until the heap purges
/// them. Checked under the heap lock, so that of two racing frees the second fails.
fn free_in_region(base: usize, p: usize, func: &str, moved: bool) {
    let mut heap = region::lock();
    let h = header(base, p, func);
    if base + h.user_off != p {
        fatal(func, "invalid pointer", p);
    }
    let len = h.map_len;
    seal_freed(base, h);
    // Out of the page map before the granules can be taken again: a second free of `p` now
    // finds no owner.
    pagemap::unregister(base, len);
    heap.free(base, len, moved);
    drop(heap);
    stats::add_huge(-(len as isize), -1);
}

/// Resizes a huge-heap object: shrinks in place, grows in place into free granules after
/// it, or moves into a new object: the kernel moves the pages (no copy, and the old pages
/// stay resident where they are needed), or, should it refuse, a copy.
fn realloc_in_region(base: usize, p: usize, old_len: usize, new_len: usize) -> *mut u8 {
    let mut heap = region::lock();
    let h = header_of(base);
    if new_len <= old_len {
        if new_len < old_len {
            pagemap::unregister_tail(base, old_len, new_len);
            heap.shrink(base, old_len, new_len);
            h.map_len = new_len;
            seal(base, h);
            drop(heap);
            stats::add_huge(new_len as isize - old_len as isize, 0);
        }
        return p as *mut u8;
    }
    if new_len <= region::MAX_OBJECT && heap.grow_in_place(base, old_len, new_len) {
        if pagemap::register(base, new_len, base | pagemap::KIND_HUGE) {
            h.map_len = new_len;
            seal(base, h);
            drop(heap);
            stats::add_huge(new_len as isize - old_len as isize, 0);
            return p as *mut u8;
        }
        heap.shrink(base, new_len, old_len);
    }
    drop(heap);
    let (q, fresh) = alloc(new_len - OS_PAGE, OS_PAGE);
    if !q.is_null() {
        let qb = q as usize - OS_PAGE;
        // Into fresh granules the kernel moves the pages (a copy would fault in every page
        // of the target); into resident ones a copy is cheaper than dropping them.
        // (The heap may be full: then the new object has a mapping of its own, which may be
        // shorter than the whole granules a move takes.)
        if fresh && header_of(qb).in_region == 1 && move_granules(base, old_len, qb) {
            let mut heap = region::lock();
            pagemap::unregister(base, old_len);
            heap.moved(base, old_len, qb, new_len);
            drop(heap);
            stats::add_huge(-(old_len as isize), -1);
            return q;
        }
        // SAFETY: q is a new object of new_len - OS_PAGE > old_len - OS_PAGE bytes, distinct
        // from the live object at p.
        unsafe { core::ptr::copy_nonoverlapping(p as *const u8, q, old_len - OS_PAGE) };
        // The object lives on, in the heap unless it outgrew it (then its old place counts
        // as a plain free: it leaves the heap's live peak).
        free_in_region(base, p, "realloc", new_len <= region::MAX_OBJECT);
    }
    q
}

/// Moves the whole granules of the huge-heap object at `base` (`old_len` bytes) into the
/// start of the new object at `target`, which has at least as many, keeping the new
/// object's header. Whole granules, so that the heap's mappings split only at granule
/// boundaries (at most one piece per granule, however many moves).
fn move_granules(base: usize, old_len: usize, target: usize) -> bool {
    let len = region::granules(old_len) * region::GRANULE;
    // SAFETY: the new object's header, written by `alloc`, is plain data at its base.
    let header = unsafe { core::ptr::read(target as *const Header) };
    if !os::move_pages(base as *mut u8, len, target as *mut u8) {
        return false;
    }
    // SAFETY: the old object's header came along and lies at `target`, in the new object's
    // first page, which only this thread knows of yet.
    unsafe { core::ptr::write(target as *mut Header, header) };
    true
}

fn map_fresh(map_len: usize, user_off: usize, align: usize) -> *mut u8 {
    let base_align = align.max(CHUNK_SIZE);
    let base = os::map_aligned(map_len, base_align);
    if base.is_null() {
        return base;
    }
    if !pagemap::register(base as usize, map_len, base as usize | pagemap::KIND_HUGE) {
        os::unmap(base, map_len);
        return core::ptr::null_mut();
    }
    seal(
        base as usize,
        write_header(base as usize, map_len, user_off, base_align, 0),
    );
    stats::add_huge(map_len as isize, 1);
    CACHE.lock().live += map_len;
    (base as usize + user_off) as *mut u8
}

/// Usable bytes of the huge object `p` whose page-map entry names `base`.
pub fn usable(base: usize, p: usize, func: &str) -> usize {
    let h = header(base, p, func);
    if base + h.user_off != p {
        fatal(func, "invalid pointer", p);
    }
    h.map_len - h.user_off
}

pub fn free(base: usize, p: usize, func: &str) {
    // Which lock checks the header depends on where the object lives; a forged or stale
    // field is caught by that check (the canary covers it).
    if header_of(base).in_region == 1 {
        return free_in_region(base, p, func, false);
    }
    let now = os::now_ns();
    // Checked and sealed under the cache lock: of two racing frees of one object, the second
    // finds it freed instead of caching (or unmapping) it a second time.
    let mut cache = CACHE.lock();
    let h = header(base, p, func);
    if base + h.user_off != p {
        fatal(func, "invalid pointer", p);
    }
    let len = h.map_len;
    seal_freed(base, h);
    cache.live -= len.min(cache.live);
    cache.expire(now, false);
    if h.user_off == OS_PAGE && len <= cache.cap() {
        while cache.n > 0 && (cache.n == CACHE_SLOTS || cache.bytes + len > cache.cap()) {
            cache.evict_oldest();
        }
        let n = cache.n;
        cache.e[n] = Cached {
            base,
            map_len: len,
            freed_at: now,
        };
        cache.n += 1;
        cache.bytes += len;
        return;
    }
    cache.uncached += 1;
    drop(cache);
    unmap_mapping(base, len);
}

/// Resizes in place or by moving the pages; null when the kernel refuses (the object is
/// then unchanged). Contents are kept up to the smaller size; added bytes are unspecified.
pub fn realloc(base: usize, p: usize, size: usize) -> *mut u8 {
    let h = header(base, p, "realloc");
    if base + h.user_off != p {
        fatal("realloc", "invalid pointer", p);
    }
    let (old_len, user_off, base_align) = (h.map_len, h.user_off, h.base_align);
    let Some(new_len) = user_off.checked_add(size).and_then(round_page) else {
        return core::ptr::null_mut();
    };
    if h.in_region == 1 {
        return realloc_in_region(base, p, old_len, new_len);
    }
    if new_len <= old_len {
        if new_len < old_len {
            shrink_mapping(base, old_len, new_len);
            h.map_len = new_len;
            seal(base, h);
        }
        return p as *mut u8;
    }
    // A cached mapping big enough is resident already: copying into it is cheaper than
    // faulting in fresh pages for the growth, and the old pages stay resident in the cache.
    if user_off == OS_PAGE {
        if let Some(q) = take_cached(new_len) {
            // SAFETY: q is a mapping of at least new_len - user_off > old_len - user_off bytes,
            // distinct from the live block at p.
            unsafe {
                core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old_len - user_off)
            };
            free(base, p, "realloc");
            return q as *mut u8;
        }
    }
    if os::remap_in_place(base as *mut u8, old_len, new_len) {
        if pagemap::register(base, new_len, base | pagemap::KIND_HUGE) {
            h.map_len = new_len;
            seal(base, h);
            account_resize(old_len, new_len);
            return p as *mut u8;
        }
        os::remap_in_place(base as *mut u8, new_len, old_len);
        return core::ptr::null_mut();
    }
    // Move: reserve an aligned range, then let the kernel move the pages into it.
    let target = os::map_aligned(new_len, base_align);
    if target.is_null() {
        return target;
    }
    let t = target as usize;
    if !pagemap::register(t, new_len, t | pagemap::KIND_HUGE) {
        os::unmap(target, new_len);
        return core::ptr::null_mut();
    }
    // The old range leaves the page map before the kernel frees it: once it is free another
    // thread may map and register it.
    pagemap::unregister(base, old_len);
    if !os::remap_to(base as *mut u8, old_len, new_len, target) {
        // The kernel moves pages of one mapping only: should the range span two (never by our
        // own doing), copy instead, then give the old range back.
        pagemap::register(base, old_len, base | pagemap::KIND_HUGE);
        // SAFETY: the target is a fresh mapping of new_len > old_len bytes, distinct from the
        // live mapping at base.
        unsafe { core::ptr::copy_nonoverlapping(base as *const u8, target, old_len) };
        pagemap::unregister(base, old_len);
        os::unmap(base as *mut u8, old_len);
        account_resize(old_len, new_len);
        let nh = header_of(t);
        nh.map_len = new_len;
        seal(t, nh);
        return (t + user_off) as *mut u8;
    }
    // SAFETY: the header moved with the first page of the mapping, now at `t`.
    let nh = unsafe { &mut *(t as *mut Header) };
    nh.map_len = new_len;
    seal(t, nh);
    account_resize(old_len, new_len);
    (t + user_off) as *mut u8
}
