//! Chunks, pages and spans: the memory layout under the arenas.
//!
//! A chunk is a 4 MiB-aligned mapping of 256 pages of 16 KiB. Its first OS page is a guard
//! (no access), so a block overflowing the end of the chunk mapped below faults instead of
//! rewriting this chunk's metadata. The header follows the guard in the first HEADER_PAGES
//! pages, so all metadata lives out of line, away from the blocks: per page, an 8-byte `PageInfo`
//! (what the page holds, where its span starts, and both precomputed for the free path), bitmaps of free and dirty pages, and one `Span` descriptor per page (only the
//! first page of a span uses its descriptor).
//!
//! A small span's descriptor holds a bitmap of its free blocks (bit set = free in the span;
//! a block sitting in a thread cache counts as allocated here). Finding a pointer's span is
//! address arithmetic: mask to the chunk, shift to the page, read the page's head index.
//!
//! Page bitmaps belong to the page heap (under its lock); a span's descriptor and page infos
//! to the arena owning the span (under that arena's lock).

use core::ptr::null_mut;

use crate::config::{CHUNK_SIZE, PAGES_PER_CHUNK, PAGE_SHIFT, PAGE_SIZE};
use crate::size_class::{self, ClassInfo, MAX_BLOCKS, NCLASSES};

/// `PageInfo::kind` of a page that is free or part of the header.
pub const KIND_NONE: u8 = 0;
/// `PageInfo::kind` of a page of a large object (a page run).
pub const KIND_LARGE: u8 = 0xFE;
/// Small classes are stored as `class + 1` so that zeroed memory reads as KIND_NONE.
#[inline(always)]
pub fn kind_of_class(c: usize) -> u8 {
    (c + 1) as u8
}

const MAP_WORDS: usize = PAGES_PER_CHUNK / 64;
const BITMAP_WORDS: usize = MAX_BLOCKS / 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct PageInfo {
    /// KIND_NONE, KIND_LARGE, or a small class + 1.
    pub kind: u8,
    /// Index of the first page of the span this page belongs to.
    pub head: u8,
    /// What the free path needs, precomputed: 16 × kind for a page of a small span (the
    /// offset of the class's bin in a thread cache and of its block check), 0 otherwise;
    pub bin: u16,
    /// and the low 32 bits of the span's address, negated: a block's offset in its span is
    /// its address's low half plus this (modulo 2^32: a chunk is 4 MiB, aligned), with no
    /// masking of the block's address, and one add that takes this operand from memory.
    pub span_neg: u32,
}

impl PageInfo {
    /// The info of a page of the span (or large object, or free run) starting at page `head`
    /// of the chunk at `base`.
    pub const fn new(kind: u8, head: usize, base: usize) -> PageInfo {
        let small = kind != KIND_NONE && kind != KIND_LARGE;
        PageInfo {
            kind,
            head: head as u8,
            bin: if small { kind as u16 * 16 } else { 0 },
            span_neg: ((base + (head << PAGE_SHIFT)) as u32).wrapping_neg(),
        }
    }
}

#[repr(C)]
pub struct Span {
    /// Links in the arena's list of partial spans of this class.
    pub next: *mut Span,
    pub prev: *mut Span,
    pub kind: u8,
    /// Whether the span is on its arena's partial list.
    pub listed: bool,
    pub npages: u8,
    /// The arena owning a small span (its blocks return there).
    pub arena: u8,
    /// Free blocks in the bitmap.
    pub nfree: u16,
    pub nblocks: u16,
    /// Bit i set = block i is free in the span.
    pub bitmap: [u64; BITMAP_WORDS],
}

#[repr(C)]
pub struct Chunk {
    /// Read on every free: kept first so that it shares lines with nothing else.
    pub info: [PageInfo; PAGES_PER_CHUNK],
    /// Free pages outside the header.
    pub free_count: u32,
    /// Links in the page heap's chunk list (or its pool of empty chunks).
    pub next: *mut Chunk,
    pub prev: *mut Chunk,
    /// Bit set = page free.
    free: [u64; MAP_WORDS],
    /// Free pages that may be resident: freed in this purge epoch / in the previous one.
    dirty_new: [u64; MAP_WORDS],
    dirty_old: [u64; MAP_WORDS],
    pub spans: [Span; PAGES_PER_CHUNK],
}

/// The inaccessible first OS page of every chunk; the header starts after it.
pub const CHUNK_GUARD: usize = crate::os::OS_PAGE;
pub const HEADER_PAGES: usize = (CHUNK_GUARD + core::mem::size_of::<Chunk>()).div_ceil(PAGE_SIZE);
pub const USABLE_PAGES: usize = PAGES_PER_CHUNK - HEADER_PAGES;
const _: () = assert!(HEADER_PAGES <= 3, "the header grew: usable pages shrink");
const _: () = assert!(PAGES_PER_CHUNK <= 256, "PageInfo::head is a byte");

#[inline(always)]
fn bit(map: &[u64; MAP_WORDS], i: usize) -> bool {
    map[i / 64] >> (i % 64) & 1 != 0
}

/// Calls `f(word, mask)` for the words covering bits `start..start + n`, with the mask of
/// those bits in each.
#[inline(always)]
fn for_each_word(start: usize, n: usize, mut f: impl FnMut(usize, u64)) {
    let (mut i, end) = (start, start + n);
    while i < end {
        let k = (64 - i % 64).min(end - i);
        f(i / 64, (u64::MAX >> (64 - k)) << (i % 64));
        i += k;
    }
}

fn set_bits(map: &mut [u64; MAP_WORDS], start: usize, n: usize, on: bool) {
    for_each_word(start, n, |w, m| if on { map[w] |= m } else { map[w] &= !m });
}

/// First index >= `from` whose bit is `want`.
fn next_with(map: &[u64; MAP_WORDS], from: usize, want: bool) -> Option<usize> {
    let mut w = from / 64;
    if w >= MAP_WORDS {
        return None;
    }
    let flip = if want { 0 } else { u64::MAX };
    let mut word = (map[w] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            return Some(w * 64 + word.trailing_zeros() as usize);
        }
        w += 1;
        if w == MAP_WORDS {
            return None;
        }
        word = map[w] ^ flip;
    }
}

/// First index of `n` (1..=64) set bits in a row, starting at a multiple of `align` (a power
/// of two up to 64), or None. Word-parallel: a fragmented chunk has dozens of short free
/// runs, and walking them one by one cost about a thousand instructions per large object
/// (server-churn).
fn first_run(map: &[u64; MAP_WORDS], n: usize, align: usize) -> Option<usize> {
    debug_assert!((1..=64).contains(&n) && align.is_power_of_two() && align <= 64);
    // Bits at the multiples of `align` in a word, by log2(align).
    const ALIGNED: [u64; 7] = [
        u64::MAX,
        0x5555_5555_5555_5555,
        0x1111_1111_1111_1111,
        0x0101_0101_0101_0101,
        0x0001_0001_0001_0001,
        0x0000_0001_0000_0001,
        1,
    ];
    let aligned = ALIGNED[align.trailing_zeros() as usize % 7];
    for w in 0..MAP_WORDS {
        let next = if w + 1 < MAP_WORDS { map[w + 1] } else { 0 };
        // Bit i of `m` says that bits i..i+len of the two words are all set; `len` doubles
        // (the last step by less) up to n, so a run may start in word w and end in w + 1.
        let mut m = map[w] as u128 | (next as u128) << 64;
        let mut len = 1;
        while len < n {
            let step = len.min(n - len);
            m &= m >> step;
            len += step;
        }
        let starts = m as u64 & aligned;
        if starts != 0 {
            return Some(w * 64 + starts.trailing_zeros() as usize);
        }
    }
    None
}

impl Chunk {
    /// Lays a header over a fresh (zeroed) chunk mapping and makes its guard page
    /// inaccessible.
    ///
    /// # Safety
    /// `base` must be a zero-filled, CHUNK_SIZE-aligned mapping of CHUNK_SIZE bytes that
    /// nothing else uses.
    pub unsafe fn init(base: *mut u8) -> *mut Chunk {
        crate::os::protect_none(base, CHUNK_GUARD);
        let c = (base as usize + CHUNK_GUARD) as *mut Chunk;
        // SAFETY: per the contract the memory is ours and zeroed, which is a valid Chunk
        // (all pages KIND_NONE, null links, empty bitmaps); we fill in the rest.
        let ch = unsafe { &mut *c };
        ch.free_count = USABLE_PAGES as u32;
        set_bits(&mut ch.free, HEADER_PAGES, USABLE_PAGES, true);
        c
    }

    /// The header of the chunk containing `p` (which must lie in a chunk of ours).
    #[inline(always)]
    pub fn of(p: usize) -> *mut Chunk {
        Self::at_base(p & !(CHUNK_SIZE - 1))
    }

    /// The header of the chunk mapped at `base`.
    #[inline(always)]
    pub fn at_base(base: usize) -> *mut Chunk {
        (base + CHUNK_GUARD) as *mut Chunk
    }

    /// Start of the chunk's mapping (its guard page).
    #[inline(always)]
    pub fn base(&self) -> usize {
        self as *const Chunk as usize - CHUNK_GUARD
    }

    #[inline(always)]
    pub fn page_addr(&self, idx: usize) -> usize {
        self.base() + (idx << PAGE_SHIFT)
    }

    #[inline(always)]
    pub fn page_index(&self, p: usize) -> usize {
        (p - self.base()) >> PAGE_SHIFT
    }

    pub fn span_at(&mut self, idx: usize) -> *mut Span {
        &mut self.spans[idx] as *mut Span
    }

    /// The arena owning the small block at `p` (which must lie in a live span of this chunk:
    /// a span's owner never changes while it holds blocks).
    #[inline]
    pub fn arena_of(&self, p: usize) -> usize {
        self.spans[self.info[self.page_index(p)].head as usize].arena as usize
    }

    /// Index of a span descriptor in its chunk.
    pub fn index_of_span(&self, s: *const Span) -> usize {
        (s as usize - self.spans.as_ptr() as usize) / core::mem::size_of::<Span>()
    }

    pub fn is_empty(&self) -> bool {
        self.free_count as usize == USABLE_PAGES
    }

    /// Takes `n` free pages starting at a multiple of `align` pages (first fit); returns the
    /// first page and how many of the pages were dirty.
    pub fn alloc_pages(&mut self, n: usize, align: usize) -> Option<(usize, usize)> {
        if (self.free_count as usize) < n {
            return None;
        }
        let s = if n <= 64 && align <= 64 && align.is_power_of_two() {
            first_run(&self.free, n, align)?
        } else {
            self.first_run_by_runs(n, align)?
        };
        Some((s, self.take_pages(s, n)))
    }

    /// `first_run` for any length and alignment: walks the free runs one by one.
    fn first_run_by_runs(&self, n: usize, align: usize) -> Option<usize> {
        let mut from = HEADER_PAGES;
        loop {
            let s = next_with(&self.free, from, true)?;
            let s = s.div_ceil(align) * align;
            if s + n > PAGES_PER_CHUNK {
                return None;
            }
            let e = next_with(&self.free, s, false).unwrap_or(PAGES_PER_CHUNK);
            if e >= s + n {
                return Some(s);
            }
            from = if e > s { e } else { s + 1 };
        }
    }

    /// Returns `n` pages starting at `idx` to the free map; they stay resident (dirty) until
    /// a purge. Returns how many of them became dirty.
    pub fn free_pages(&mut self, idx: usize, n: usize) -> usize {
        for i in idx..idx + n {
            self.info[i] = PageInfo::new(KIND_NONE, 0, 0);
        }
        set_bits(&mut self.free, idx, n, true);
        set_bits(&mut self.dirty_new, idx, n, true);
        self.free_count += n as u32;
        n
    }

    /// Whether the `n` pages after a run ending at `end` are free (for in-place growth).
    pub fn pages_free(&self, start: usize, n: usize) -> bool {
        start + n <= PAGES_PER_CHUNK && (start..start + n).all(|i| bit(&self.free, i))
    }

    /// Takes specific free pages (checked with `pages_free`, or found by `alloc_pages`).
    ///
    /// Whether they still read zero is not tracked: a free page, even one never used or
    /// purged, may have been written by an overflow of the block below it, so calloc
    /// clears every page it takes from a chunk.
    /// Returns how many of them were dirty.
    pub fn take_pages(&mut self, start: usize, n: usize) -> usize {
        let mut dirty = 0;
        for_each_word(start, n, |w, m| {
            dirty += ((self.dirty_new[w] | self.dirty_old[w]) & m).count_ones() as usize;
            self.free[w] &= !m;
            self.dirty_new[w] &= !m;
            self.dirty_old[w] &= !m;
        });
        self.free_count -= n as u32;
        dirty
    }

    /// `purge(true)` for a chunk that left the heap (empty and unlinked: it holds no span,
    /// and no thread can make one in it before it is taken again under the page heap's lock),
    /// which also purges the header pages that hold nothing but span descriptors. Making a
    /// span writes every field its readers use (`make_small` all of them, `make_large` the
    /// kind, length and list flag, all that large objects' paths read), so the descriptors
    /// may read zero meanwhile; the first header page (page infos, links, page bitmaps)
    /// stays. Each pooled chunk kept 40 KiB of descriptors resident: a program that freed
    /// 200 MiB of small blocks kept 4 of them, 160 KiB, for as long as it ran.
    /// Returns the number of pages purged (usable pages only).
    pub fn purge_released(&mut self) -> usize {
        let n = self.purge(true);
        let spans = self.spans.as_ptr() as usize;
        let first = spans.next_multiple_of(crate::os::OS_PAGE);
        let end = self.page_addr(HEADER_PAGES);
        if first < end {
            crate::os::purge(first as *mut u8, end - first);
        }
        n
    }

    /// Purges the pages dirty since before the current epoch (all of them if `all`), and
    /// starts a new epoch. Returns the number of pages purged.
    pub fn purge(&mut self, all: bool) -> usize {
        let mut unlimited = usize::MAX;
        self.purge_with(all, &mut unlimited, |_, _| false)
    }

    /// `purge`, except that each run of pages `defer(first, n)` accepts is not purged here
    /// but claimed: out of the free map (no one takes it) until `unclaim` gives it back, for
    /// the caller to purge once it no longer holds the page heap's lock. At most `budget`
    /// pages are purged or claimed (lowest first; the budget is decreased): the others stay
    /// dirty, counted as older than the current epoch.
    pub fn purge_with(
        &mut self,
        all: bool,
        budget: &mut usize,
        mut defer: impl FnMut(usize, usize) -> bool,
    ) -> usize {
        if all {
            for w in 0..MAP_WORDS {
                self.dirty_old[w] |= self.dirty_new[w];
                self.dirty_new[w] = 0;
            }
        }
        let mut purged = 0;
        let mut from = 0;
        while *budget > 0 {
            let Some(s) = next_with(&self.dirty_old, from, true) else {
                break;
            };
            let e = next_with(&self.dirty_old, s, false).unwrap_or(PAGES_PER_CHUNK);
            let e = e.min(s.saturating_add(*budget));
            set_bits(&mut self.dirty_old, s, e - s, false);
            if defer(s, e - s) {
                set_bits(&mut self.free, s, e - s, false);
                self.free_count -= (e - s) as u32;
            } else {
                crate::os::purge(self.page_addr(s) as *mut u8, (e - s) << PAGE_SHIFT);
            }
            purged += e - s;
            *budget -= e - s;
            from = e;
        }
        for w in 0..MAP_WORDS {
            self.dirty_old[w] |= self.dirty_new[w];
        }
        self.dirty_new = [0; MAP_WORDS];
        purged
    }

    /// Gives back the `n` pages at `first` claimed by `purge_with`, purged since: free and
    /// clean.
    pub fn unclaim(&mut self, first: usize, n: usize) {
        set_bits(&mut self.free, first, n, true);
        self.free_count += n as u32;
    }

    /// Marks the `n` free pages at `first` dirty (their purge may not have happened).
    pub fn mark_dirty(&mut self, first: usize, n: usize) {
        set_bits(&mut self.dirty_new, first, n, true);
    }

    /// Dirty pages (either epoch).
    pub fn dirty_count(&self) -> usize {
        (0..MAP_WORDS)
            .map(|w| (self.dirty_new[w] | self.dirty_old[w]).count_ones() as usize)
            .sum()
    }

    /// Makes pages `idx..idx+npages` a small span of class `c` with every block free.
    pub fn make_small(&mut self, idx: usize, c: usize, arena: usize) -> *mut Span {
        let k = size_class::info(c);
        let kind = kind_of_class(c);
        let s = &mut self.spans[idx];
        s.next = null_mut();
        s.prev = null_mut();
        s.kind = kind;
        s.listed = false;
        s.arena = arena as u8;
        s.npages = k.pages;
        s.nblocks = k.blocks;
        s.nfree = k.blocks;
        let n = k.blocks as usize;
        for w in 0..BITMAP_WORDS {
            s.bitmap[w] = if (w + 1) * 64 <= n {
                u64::MAX
            } else if w * 64 < n {
                (1u64 << (n - w * 64)) - 1
            } else {
                0
            };
        }
        // The descriptor (its owner above all) before the page infos that lead to it: a
        // reader that finds the new span head through a page info finds its new owner too
        // (see `arena::small_is_free`).
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        let base = self.base();
        for i in idx..idx + k.pages as usize {
            self.info[i] = PageInfo::new(kind, idx, base);
        }
        &mut self.spans[idx] as *mut Span
    }

    /// Makes pages `idx..idx+n` one large object.
    pub fn make_large(&mut self, idx: usize, n: usize) -> *mut Span {
        let base = self.base();
        for i in idx..idx + n {
            self.info[i] = PageInfo::new(KIND_LARGE, idx, base);
        }
        let s = &mut self.spans[idx];
        s.kind = KIND_LARGE;
        s.npages = n as u8;
        s.listed = false;
        s as *mut Span
    }

    /// Counts of free pages according to the bitmap (for the invariant checker).
    pub fn count_free_bits(&self) -> usize {
        self.free.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn page_is_free(&self, i: usize) -> bool {
        bit(&self.free, i)
    }
}

impl Span {
    /// Moves up to `out.len()` free blocks out of the bitmap into `out`, lowest first.
    /// `base` is the address of the span's first page.
    pub fn take_blocks(&mut self, base: usize, size: usize, out: &mut [*mut u8]) -> usize {
        let mut got = 0;
        let words = (self.nblocks as usize).div_ceil(64);
        for w in 0..words {
            let mut word = self.bitmap[w];
            while word != 0 && got < out.len() {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                out[got] = (base + (w * 64 + b) * size) as *mut u8;
                got += 1;
            }
            self.bitmap[w] = word;
            if got == out.len() {
                break;
            }
        }
        self.nfree -= got as u16;
        got
    }

    /// `take_blocks` in whole groups of `g` blocks (2 or 4, at multiples of `g`) whose
    /// blocks are all free: a group of a class whose size is not a multiple of 64 bytes
    /// covers whole cache lines (`size_class::line_group`), so blocks taken in groups by two
    /// threads never share a line. Blocks past the span's last count as free (no other block
    /// lies on their lines). Takes whole groups only, at most `out.len()` blocks.
    pub fn take_groups(
        &mut self,
        base: usize,
        size: usize,
        out: &mut [*mut u8],
        g: usize,
    ) -> usize {
        debug_assert!(g == 2 || g == 4);
        let heads_mask = if g == 2 {
            0x5555_5555_5555_5555u64
        } else {
            0x1111_1111_1111_1111u64
        };
        let n = self.nblocks as usize;
        let mut got = 0;
        for w in 0..n.div_ceil(64) {
            if got + g > out.len() {
                break;
            }
            let mut word = self.bitmap[w];
            let past_end = if (w + 1) * 64 > n {
                !0u64 << (n - w * 64)
            } else {
                0
            };
            let f = word | past_end;
            let mut heads = f & (f >> 1) & heads_mask;
            if g == 4 {
                heads &= (f >> 2) & (f >> 3);
            }
            while heads != 0 && got + g <= out.len() {
                let h = heads.trailing_zeros() as usize;
                heads &= heads - 1;
                let mut group = word & (((1u64 << g) - 1) << h);
                word &= !group;
                while group != 0 {
                    let b = group.trailing_zeros() as usize;
                    group &= group - 1;
                    out[got] = (base + (w * 64 + b) * size) as *mut u8;
                    got += 1;
                }
            }
            self.bitmap[w] = word;
        }
        self.nfree -= got as u16;
        got
    }

    /// Marks block `i` free. False if it already was (a double free).
    #[inline]
    pub fn put_block(&mut self, i: usize) -> bool {
        let (w, m) = (i / 64, 1u64 << (i % 64));
        if self.bitmap[w & (BITMAP_WORDS - 1)] & m != 0 {
            return false;
        }
        self.bitmap[w & (BITMAP_WORDS - 1)] |= m;
        self.nfree += 1;
        true
    }

    pub fn block_is_free(&self, i: usize) -> bool {
        self.bitmap[(i / 64) & (BITMAP_WORDS - 1)] >> (i % 64) & 1 != 0
    }

    pub fn class(&self) -> Option<&'static ClassInfo> {
        let c = self.kind.wrapping_sub(1) as usize;
        if c < NCLASSES {
            Some(size_class::info(c))
        } else {
            None
        }
    }

    /// Free bits counted in the bitmap (for the invariant checker).
    pub fn count_free_bits(&self) -> usize {
        self.bitmap.iter().map(|w| w.count_ones() as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CHUNK_SIZE;

    fn fresh() -> *mut Chunk {
        let p = crate::os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
        assert!(!p.is_null());
        // SAFETY: fresh zeroed aligned mapping of CHUNK_SIZE.
        unsafe { Chunk::init(p) }
    }

    #[test]
    fn header_fits_and_pages_run() {
        // SAFETY: fresh() returns a valid initialised chunk owned by this test.
        let ch = unsafe { &mut *fresh() };
        assert_eq!(ch.free_count as usize, USABLE_PAGES);
        let a = ch.alloc_pages(3, 1).unwrap().0;
        assert_eq!(a, HEADER_PAGES);
        let b = ch.alloc_pages(4, 4).unwrap().0;
        assert_eq!(b % 4, 0);
        assert!(b >= a + 3);
        ch.free_pages(a, 3);
        // freed pages are dirty until purged; taking two of them leaves one dirty
        let c = ch.alloc_pages(2, 1).unwrap();
        assert_eq!(c.1, 2);
        let c = c.0;
        assert_eq!(c, a);
        assert_eq!(ch.dirty_count(), 1);
        // two epochs later the remaining dirty page is purged and clean again
        ch.purge(false);
        assert_eq!(ch.purge(false), 1);
        assert_eq!(ch.dirty_count(), 0);
        assert!(ch.alloc_pages(USABLE_PAGES, 1).is_none());
        crate::os::unmap(ch.base() as *mut u8, CHUNK_SIZE);
    }

    #[test]
    fn budgeted_purge_takes_the_lowest_dirty_pages_and_keeps_the_rest() {
        // SAFETY: fresh() returns a valid initialised chunk owned by this test.
        let ch = unsafe { &mut *fresh() };
        let a = ch.alloc_pages(40, 1).unwrap().0;
        let b = ch.alloc_pages(40, 1).unwrap().0;
        // Two dirty runs, one from before the epoch and one fresh: 70 pages.
        ch.free_pages(a, 30);
        ch.purge_with(false, &mut 0, |_, _| false);
        ch.free_pages(b, 40);
        assert_eq!(ch.dirty_count(), 70);
        // A budget of 45 over both epochs: the old run whole, then the first 15 pages of
        // the new one (one claimed run per run of pages, cut at the budget).
        let mut runs = [(0, 0); 4];
        let mut k = 0;
        let mut budget = 45;
        let n = ch.purge_with(true, &mut budget, |first, n| {
            runs[k] = (first, n);
            k += 1;
            true
        });
        assert_eq!((n, budget), (45, 0));
        assert_eq!(&runs[..k], &[(a, 30), (b, 15)]);
        assert_eq!(ch.dirty_count(), 25);
        // The claimed pages are out of the free map until given back; the rest stay free.
        assert!(!ch.pages_free(b, 15) && ch.pages_free(b + 15, 25));
        ch.unclaim(a, 30);
        ch.unclaim(b, 15);
        // What the budget left is older than the epoch now: the next plain purge takes it.
        assert_eq!(ch.purge(false), 25);
        assert_eq!(ch.dirty_count(), 0);
        assert!(ch.pages_free(a, 30) && ch.pages_free(b, 40));
        crate::os::unmap(ch.base() as *mut u8, CHUNK_SIZE);
    }

    #[test]
    fn word_parallel_run_search_agrees_with_the_run_walk() {
        // SAFETY: fresh() returns a valid initialised chunk owned by this test.
        let ch = unsafe { &mut *fresh() };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400 {
            // Dense maps (long runs, across word boundaries) and fragmented ones.
            for w in 0..MAP_WORDS {
                let r = rnd();
                ch.free[w] = match round % 4 {
                    0 => r | rnd() | rnd(),
                    1 => r & rnd(),
                    2 => !(1u64 << (r % 64)),
                    _ => r,
                };
            }
            ch.free[0] &= !((1u64 << HEADER_PAGES) - 1);
            for n in 1..=64 {
                for align in [1, 2, 4, 8, 16, 32, 64] {
                    assert_eq!(
                        first_run(&ch.free, n, align),
                        ch.first_run_by_runs(n, align),
                        "n {n} align {align} map {:x?}",
                        ch.free
                    );
                }
            }
        }
        crate::os::unmap(ch.base() as *mut u8, CHUNK_SIZE);
    }

    #[test]
    fn span_bitmap_take_and_put() {
        // SAFETY: as above.
        let ch = unsafe { &mut *fresh() };
        let c = 0; // 16-byte class, 1024 blocks
        let idx = ch
            .alloc_pages(size_class::info(c).pages as usize, 1)
            .unwrap()
            .0;
        let s = unsafe { &mut *ch.make_small(idx, c, 0) };
        assert_eq!(s.count_free_bits(), s.nblocks as usize);
        let mut out = [null_mut(); 100];
        let base = ch.page_addr(idx);
        assert_eq!(s.take_blocks(base, 16, &mut out), 100);
        assert_eq!(out[0] as usize, base);
        assert_eq!(out[99] as usize, base + 99 * 16);
        assert_eq!(s.nfree as usize, s.nblocks as usize - 100);
        assert!(s.put_block(5));
        assert!(!s.put_block(5), "double free must be refused");
        assert!(s.block_is_free(5) && !s.block_is_free(6));
        assert_eq!(s.count_free_bits(), s.nfree as usize);
        // pointer -> page info -> span head
        let p = base + 77 * 16;
        assert_eq!(Chunk::of(p), ch as *mut Chunk);
        let pi = ch.info[ch.page_index(p)];
        assert_eq!(pi.kind, kind_of_class(c));
        assert_eq!(pi.head as usize, idx);
        assert_eq!(ch.index_of_span(s), idx);
        crate::os::unmap(ch.base() as *mut u8, CHUNK_SIZE);
    }

    #[test]
    fn takes_hand_out_lowest_free_blocks_and_whole_free_lines_only() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Every class taken block by block (take_blocks, g = 1), and in line groups
        // (take_groups) where its size needs them.
        let takes = (0..NCLASSES).flat_map(|c| {
            let g = size_class::line_group(c);
            [(c, 1), (c, g)]
                .into_iter()
                .take(if g == 1 { 1 } else { 2 })
        });
        for (c, g) in takes {
            // SAFETY: fresh() returns a valid initialised chunk owned by this test.
            let ch = unsafe { &mut *fresh() };
            let k = size_class::info(c);
            let size = k.size as usize;
            let idx = ch.alloc_pages(k.pages as usize, 1).unwrap().0;
            // SAFETY: make_small returns the chunk's own span descriptor.
            let s = unsafe { &mut *ch.make_small(idx, c, 0) };
            let base = ch.page_addr(idx);
            let n = s.nblocks as usize;
            for round in 0..60 {
                // Free maps from sparse to dense.
                for w in 0..n.div_ceil(64) {
                    let mut m = next();
                    for _ in 0..round % 3 {
                        m |= next();
                    }
                    let valid = if (w + 1) * 64 <= n {
                        !0
                    } else {
                        (1u64 << (n - w * 64)) - 1
                    };
                    s.bitmap[w] = m & valid;
                }
                s.nfree = s.count_free_bits() as u16;
                let before = s.bitmap;
                let free_before = |i: usize| before[i / 64] >> (i % 64) & 1 == 1;
                let want_n = (next() as usize % (n + 8)).max(g);
                let mut out = vec![null_mut(); want_n];
                let got = if g == 1 {
                    s.take_blocks(base, size, &mut out)
                } else {
                    s.take_groups(base, size, &mut out, g)
                };
                let taken: Vec<usize> = out[..got]
                    .iter()
                    .map(|&p| (p as usize - base) / size)
                    .collect();
                // Lowest whole free groups first (blocks past the end count as free).
                let mut want = Vec::new();
                for h in (0..n).step_by(g) {
                    if (h..h + g).all(|i| i >= n || free_before(i)) {
                        if want.len() + g > want_n {
                            break;
                        }
                        want.extend((h..(h + g).min(n)).filter(|&i| free_before(i)));
                    }
                }
                assert_eq!(taken, want, "class {c} round {round}");
                assert_eq!(s.count_free_bits(), s.nfree as usize);
                // No taken block shares a line with a block that was not free before.
                for &t in taken.iter().filter(|_| g > 1) {
                    let (first, last) = ((t * size) / 64, (t * size + size - 1) / 64);
                    for j in 0..n {
                        let (f2, l2) = ((j * size) / 64, (j * size + size - 1) / 64);
                        if f2 <= last && first <= l2 {
                            assert!(
                                free_before(j),
                                "class {c}: block {t} shares a line with live block {j}"
                            );
                        }
                    }
                }
            }
            crate::os::unmap(ch.base() as *mut u8, CHUNK_SIZE);
        }
    }
}
