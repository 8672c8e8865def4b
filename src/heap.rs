//! The allocator's front: routes a request by size to the thread cache (small), an arena's
//! page runs (large) or a mapping of its own (huge), and a pointer back to its owner. The C
//! ABI and the Rust `GlobalAlloc` both sit on these functions; argument checking and errno
//! are theirs, not ours.
//!
//! Fast paths (small sizes, cache hit): `malloc` is TLS load, class look-up, pop, clear the
//! block's free mark; `free` is page-map look-up, page info, block-start check, free-mark
//! check, push. Everything else is `#[inline(never)]`.

use crate::arena;
use crate::config::{CHUNK_SIZE, LARGE_MAX, PAGE_SHIFT, PAGE_SIZE, SMALL_MAX};
use crate::huge;
use crate::init;
use crate::pagemap::{self, FlatView, KIND_CHUNK, KIND_HUGE, KIND_MASK};
use crate::pages;
use crate::report::fatal;
use crate::size_class::{self, class_of, BlockChecks, CLASSES};
use crate::span::{Chunk, KIND_LARGE};
use crate::tcache::{self, TCache};

/// Largest alignment a large (page-run) object can have; above it objects go huge.
const LARGE_ALIGN_MAX: usize = 1 << 20;

/// What a pointer is, after full validation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Located {
    /// The start of a small block of this class.
    Small(usize),
    /// The start of a large object: its chunk's base and first page.
    Large(usize, usize),
    /// A huge object whose mapping (and header) starts here.
    Huge(usize),
    Invalid,
}

/// The header of the chunk mapped at `base`.
fn chunk_ref<'a>(base: usize) -> &'a Chunk {
    // SAFETY: callers pass a chunk base taken from a page-map entry of kind chunk, which is
    // only set while the chunk (and so its header) is mapped.
    unsafe { &*Chunk::at_base(base) }
}

/// The bin offset (16 × (class + 1), see `size_class::bin_offset_of`) of `a` when it is the
/// start of a small block of ours — the whole validation of the free fast path: a chunk of
/// ours covers it (flat map), its page belongs to a small span, and its offset in the span is
/// a multiple of the class size below the span's block count.
#[inline(always)]
fn small_block_bin(a: usize) -> Option<usize> {
    small_block_bin_in(a, &pagemap::flat(), &size_class::BLOCK_CHECKS)
}

/// `small_block_bin` with the flat map and block checks a thread cache holds copies of.
#[inline(always)]
fn small_block_bin_in(a: usize, flat: &FlatView, checks: &BlockChecks) -> Option<usize> {
    if !flat.covers(a) {
        return None;
    }
    block_bin_in_chunk(a & !(CHUNK_SIZE - 1), a, checks)
}

/// The bin offset of the small block starting at `a`, in the chunk at `base`, if one does.
#[inline(always)]
fn block_bin_in_chunk(base: usize, a: usize, checks: &BlockChecks) -> Option<usize> {
    let pi = chunk_ref(base).info[(a - base) >> PAGE_SHIFT];
    // The span starts at or below `a` on every page of a span, in the same chunk, so the low
    // halves' difference is the offset; other pages have bin 0 and fail anyway.
    let off = (a as u32).wrapping_add(pi.span_neg) as usize;
    let bin = pi.bin as usize;
    if size_class::is_block_start_at(checks, bin, off) {
        Some(bin)
    } else {
        None
    }
}

/// The class of `a` when it is the start of a small block of ours.
#[inline(always)]
fn small_block_class(a: usize) -> Option<usize> {
    small_block_bin(a).map(size_class::class_of_bin)
}

/// What `p` is, from the page-map tree: the authority, also for chunks the flat map (the
/// fast paths' accelerator) could not mark.
pub fn locate(p: usize) -> Located {
    let e = pagemap::lookup(p);
    match e & KIND_MASK {
        KIND_CHUNK => {
            let c = e & !KIND_MASK;
            if let Some(bin) = block_bin_in_chunk(c, p, &size_class::BLOCK_CHECKS) {
                return Located::Small(size_class::class_of_bin(bin));
            }
            let ch = chunk_ref(c);
            let idx = ch.page_index(p);
            let pi = ch.info[idx];
            if pi.kind == KIND_LARGE && pi.head as usize == idx && p == ch.page_addr(idx) {
                return Located::Large(c, idx);
            }
            Located::Invalid
        }
        KIND_HUGE => Located::Huge(e & !KIND_MASK),
        _ => Located::Invalid,
    }
}

/// Whether small block `p`, which carries the free mark, really is free: in a thread cache
/// or free in its span. Every free block carries the mark (push, refill, direct frees) and
/// every block handed out has it cleared (pop, take_one), but a live block can still hold
/// the mark as stale data copied from memory that once held a free block (realloc copies
/// the whole usable size), so the mark alone decides nothing.
fn is_freed_small(p: *mut u8, c: usize) -> bool {
    if arena::small_is_free(p as usize) {
        return true;
    }
    if tcache::any_cache_contains(c, p) {
        return true;
    }
    // Stale data: clear it so the fast path does not come here again for this block.
    // SAFETY: p is a live block of at least 16 bytes.
    unsafe { *(p as *mut u64).add(1) = 0 };
    false
}

/// Whether small block `p` carries the free mark (see `is_freed_small`).
fn has_free_mark(p: *mut u8) -> bool {
    has_mark(p, init::secret())
}

/// `has_free_mark` with the secret already loaded.
#[inline(always)]
fn has_mark(p: *mut u8, secret: u64) -> bool {
    // SAFETY: `p` is a validated block of at least 16 bytes.
    unsafe { *(p as *const u64).add(1) == secret }
}

/// The malloc fast path alone: a block from this thread's cache, or null (then call
/// `malloc`). Kept free of calls so that it compiles to a leaf without a stack frame.
#[inline(always)]
pub fn malloc_cached(size: usize) -> *mut u8 {
    if size <= SMALL_MAX {
        return tcache::pop_at(tcache::current(), size_class::bin_offset_of(size));
    }
    core::ptr::null_mut()
}

#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    if size <= SMALL_MAX {
        return alloc_class(class_of(size));
    }
    alloc_big(size, 16, false)
}

/// A block of class `c` (cache first).
#[inline(always)]
fn alloc_class(c: usize) -> *mut u8 {
    let p = tcache::pop(tcache::current(), c);
    if !p.is_null() {
        return p;
    }
    alloc_class_slow(c)
}

#[inline(never)]
fn alloc_class_slow(c: usize) -> *mut u8 {
    for attempt in 0..2 {
        let tc = tcache::get_or_create();
        let p = if tcache::is_live(tc) {
            tcache::refill_and_pop(tc, c)
        } else {
            tcache::take_one(0, c)
        };
        if !p.is_null() {
            #[cfg(feature = "check-invariants")]
            check();
            return p;
        }
        if attempt == 0 {
            reclaim(tc);
        }
    }
    core::ptr::null_mut()
}

/// Out of memory: give back everything this thread caches and every dirty page, so that a
/// retry can find address space.
#[cold]
fn reclaim(tc: *mut TCache) {
    tcache::flush_all(tc);
    arena::purge_all();
}

/// Large or huge allocation, or small with an alignment classes cannot give.
#[inline(never)]
fn alloc_big(size: usize, align: usize, zero: bool) -> *mut u8 {
    // This may be the process's first call: the secret (huge headers) and options must be set.
    init::ensure();
    for attempt in 0..2 {
        let p = if size <= LARGE_MAX && align <= LARGE_ALIGN_MAX {
            let npages = size.div_ceil(PAGE_SIZE);
            let got = pages::alloc_large(npages, (align / PAGE_SIZE).max(1));
            match got {
                Some(p) => {
                    if zero {
                        // Pages inside a chunk are cleared even when never used: an overflow
                        // of the block below may have written them.
                        // SAFETY: p is a fresh large object of npages pages >= size bytes.
                        unsafe { core::ptr::write_bytes(p, 0, size) };
                    }
                    p
                }
                None => core::ptr::null_mut(),
            }
        } else {
            let (p, was_zero) = huge::alloc(size, align);
            if zero && !was_zero && !p.is_null() {
                // SAFETY: p is a live huge object of at least `size` bytes.
                unsafe { core::ptr::write_bytes(p, 0, size) };
            }
            p
        };
        if !p.is_null() {
            return p;
        }
        if attempt == 0 {
            reclaim(tcache::current());
        }
    }
    core::ptr::null_mut()
}

/// `size` bytes aligned to `align` (a power of two).
pub fn malloc_aligned(align: usize, size: usize) -> *mut u8 {
    if align <= 16 {
        return malloc(size);
    }
    if align <= PAGE_SIZE {
        let s = size.max(1).div_ceil(align) * align;
        if s <= SMALL_MAX {
            // Blocks sit at multiples of the class size from a page-aligned span start:
            // a class whose size is a multiple of `align` gives aligned blocks. Every power
            // of two from 16 B to SMALL_MAX is a class.
            let mut c = class_of(s);
            if !(CLASSES[c].size as usize).is_multiple_of(align) {
                c = class_of(s.next_power_of_two());
            }
            return alloc_class(c);
        }
    }
    alloc_big(size.max(1), align, false)
}

pub fn calloc(size: usize) -> *mut u8 {
    if size <= SMALL_MAX {
        let p = malloc(size);
        if !p.is_null() {
            // SAFETY: p is a block of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    alloc_big(size, 16, true)
}

#[inline(always)]
pub fn free(p: *mut u8) {
    let tc = tcache::current();
    if let Some(bin) = small_block_bin_in(p as usize, tcache::flat(tc), tcache::checks(tc)) {
        let secret = init::secret();
        if !has_mark(p, secret) {
            return free_small_at(tc, p, bin, secret);
        }
    }
    free_checked(p, "free")
}

/// Frees `p`, a validated live small block of class `c`.
#[inline(always)]
fn free_small(p: *mut u8, c: usize) {
    free_small_at(
        tcache::current(),
        p,
        size_class::bin_of_class(c),
        init::secret(),
    )
}

/// `free_small` by bin offset, with the secret already loaded.
#[inline(always)]
fn free_small_at(tc: *mut TCache, p: *mut u8, bin: usize, secret: u64) {
    if tcache::push_at(tc, bin, p, secret) {
        return;
    }
    tcache::free_slow(p, size_class::class_of_bin(bin), secret)
}

/// Free with every check, for whatever the fast path did not settle.
#[inline(never)]
pub fn free_checked(p: *mut u8, func: &str) {
    if p.is_null() {
        return;
    }
    let a = p as usize;
    match locate(a) {
        Located::Small(c) => {
            if has_free_mark(p) && is_freed_small(p, c) {
                fatal(func, "double free", a);
            }
            tcache::free_slow(p, c, init::secret());
        }
        Located::Large(c, idx) => {
            pages::free_large(Chunk::at_base(c), idx, func);
        }
        Located::Huge(base) => huge::free(base, a, func),
        Located::Invalid => fatal(func, "invalid pointer", a),
    }
    #[cfg(feature = "check-invariants")]
    check();
}

/// Usable size of a live block; stops the process on a pointer that is not one.
pub fn usable_size(p: *mut u8, func: &str) -> usize {
    let a = p as usize;
    match locate(a) {
        Located::Small(c) => {
            if has_free_mark(p) && is_freed_small(p, c) {
                fatal(func, "freed pointer", a);
            }
            CLASSES[c].size as usize
        }
        Located::Large(c, idx) => (chunk_ref(c).spans[idx].npages as usize) << PAGE_SHIFT,
        Located::Huge(base) => huge::usable(base, a, func),
        Located::Invalid => fatal(func, "invalid pointer", a),
    }
}

/// Resizes `p` (non-null) to `size` (non-zero). Null when memory is exhausted; `p` is then
/// untouched.
#[inline(always)]
pub fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // Fast path: a live small block.
    if let Some(c) = small_block_class(p as usize) {
        if !has_free_mark(p) {
            let usable = CLASSES[c].size as usize;
            if size <= usable {
                return p;
            }
            return grow_small(p, c, usable, size);
        }
    }
    realloc_slow(p, size)
}

/// Moves the live small block `p` of class `c` (`usable` bytes) to a block of at least
/// `size` > usable bytes.
#[inline(never)]
fn grow_small(p: *mut u8, c: usize, usable: usize, size: usize) -> *mut u8 {
    // A small block that grows is likely to grow again (vectors, strings): give it room to
    // double once more in place, as glibc's in-place growth does.
    let room = if size <= SMALL_MAX / 2 {
        size * 2
    } else {
        size
    };
    let q = malloc(room);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; p holds `usable` < size bytes.
        unsafe { core::ptr::copy_nonoverlapping(p, q, usable) };
        free_small(p, c);
    }
    q
}

#[inline(never)]
fn realloc_slow(p: *mut u8, size: usize) -> *mut u8 {
    let a = p as usize;
    let old = match locate(a) {
        Located::Small(c) => {
            if has_free_mark(p) && is_freed_small(p, c) {
                fatal("realloc", "freed pointer", a);
            }
            let usable = CLASSES[c].size as usize;
            if size <= usable {
                return p;
            }
            usable
        }
        Located::Large(c, idx) => {
            let usable = (chunk_ref(c).spans[idx].npages as usize) << PAGE_SHIFT;
            if size <= LARGE_MAX {
                let npages = size.div_ceil(PAGE_SIZE);
                if pages::resize_large(Chunk::at_base(c), idx, npages) {
                    return p;
                }
            }
            usable
        }
        // Huge objects resize in place (shrinking) or by moving their pages (growing).
        Located::Huge(base) => return huge::realloc(base, a, size),
        Located::Invalid => fatal("realloc", "invalid pointer", a),
    };
    move_block(p, old, size)
}

/// Moves a live block of `old` usable bytes to a new block of `size` bytes.
fn move_block(p: *mut u8, old: usize, size: usize) -> *mut u8 {
    let q = malloc(size);
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks are live, distinct, and at least min(old, size) bytes long.
    unsafe { core::ptr::copy_nonoverlapping(p, q, old.min(size)) };
    free(p);
    q
}

/// Runs the invariant walk over every arena and this thread's cache.
pub fn check() {
    arena::check_all();
    tcache::check_current();
}

/// Gives back every dirty page and this thread's cached blocks now; the number of pages
/// purged.
pub fn trim() -> usize {
    tcache::flush_all(tcache::current());
    arena::purge_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_of_a_chunk() {
        for c in 0..crate::size_class::NCLASSES {
            let base = crate::os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
            assert!(!base.is_null());
            assert!(pagemap::register(
                base as usize,
                CHUNK_SIZE,
                base as usize | KIND_CHUNK
            ));
            // SAFETY: a fresh chunk-aligned mapping of CHUNK_SIZE bytes, owned by this test.
            let ch = unsafe { &mut *Chunk::init(base) };
            let k = CLASSES[c];
            // two spans back to back, a large object, then free pages
            let i1 = ch.alloc_pages(k.pages as usize, 1).unwrap().0;
            ch.make_small(i1, c, 0);
            let i2 = ch.alloc_pages(k.pages as usize, 1).unwrap().0;
            ch.make_small(i2, c, 0);
            let il = ch.alloc_pages(3, 1).unwrap().0;
            ch.make_large(il, 3);
            let b = base as usize;
            let spans = [(i1, b + (i1 << PAGE_SHIFT)), (i2, b + (i2 << PAGE_SHIFT))];
            let span_bytes = k.pages as usize * PAGE_SIZE;
            for a in b..b + CHUNK_SIZE {
                let mut want = None;
                for &(_, sb) in spans.iter() {
                    if a >= sb && a < sb + span_bytes {
                        let off = a - sb;
                        if off % k.size as usize == 0 && off / (k.size as usize) < k.blocks as usize
                        {
                            want = Some(size_class::bin_of_class(c));
                        }
                    }
                }
                assert_eq!(small_block_bin(a), want, "class {c} addr off {:#x}", a - b);
            }
            // aliases
            for &(_, sb) in spans.iter() {
                assert_eq!(small_block_bin(sb | 1 << 47), None);
                assert_eq!(small_block_bin(sb | 1 << 63), None);
                assert_eq!(small_block_bin(sb.wrapping_add(1 << 48)), None);
            }
            pagemap::unregister(b, CHUNK_SIZE);
            crate::os::unmap(base, CHUNK_SIZE);
        }
        assert_eq!(small_block_bin(0), None);
        assert_eq!(small_block_bin(usize::MAX - 15), None);
    }
}
