//! Size classes are data: the table below is the whole policy.
//!
//! * 16-byte steps up to 128 B (8 classes), then 4 classes per doubling up to 32 KiB
//!   (32 classes): 40 classes, internal fragmentation at most 20% (129 B -> 160 B), about
//!   10% on average over uniformly random sizes.
//! * Each class has a span length (pages of 16 KiB) chosen so that a span holds at least four
//!   blocks (fewer above 4 KiB, see `min_blocks`) and wastes at most 1/8 of itself at the
//!   tail, and a reciprocal that turns "offset in span -> block index" into a multiply.
//! * size -> class is two table look-ups: one for sizes up to 1 KiB in 16-byte steps, one
//!   for sizes up to 32 KiB in 128-byte steps (every class above 1 KiB is a multiple of 128).

use crate::config::{PAGE_SIZE, SMALL_MAX};

pub const NCLASSES: usize = 40;
/// Most blocks a span can hold: the span bitmap has this many bits.
pub const MAX_BLOCKS: usize = 1024;
const MAX_SPAN_PAGES: usize = 8;
/// Bounds on a thread cache's capacity per class (the byte budget is an option). At least 4
/// blocks, not 8: with 8, the classes above 1 KiB each kept up to 8 blocks (up to 256 KiB
/// of 32 KiB blocks) per thread, and blocks circulating between threads through the caches
/// spread over more spans (migrate 2: 2640 -> 2552 KB peak, server-churn 2: 26.5 -> 25.7 MB;
/// the stacks of classes used in bursts still grow, see `tcache::max_capacity`).
pub const CACHE_MIN: usize = 4;
/// Blocks from this size up are *big*: a program touches at least a page per block, so a trip
/// to the arena costs little beside its use of the block, while each cached block is a page
/// or more of memory. Their stacks start at the byte budget but at least CACHE_MIN_BIG blocks
/// (not CACHE_MIN: 4 blocks of 32 KiB are 16 × the default budget) and never grow (a grown
/// stack of 32 KiB blocks held up to 256 KiB per class). Both together, against 4 blocks and
/// growth (median peak RSS of 7 alternated runs): server-churn 1 thread 19.9 -> 19.6 MB,
/// 2 threads 25.2 -> 23.9 MB, 8 threads 52.2 -> 47.3 MB; callgrind within 0.5%.
pub const BIG_BLOCK: usize = 4096;
pub const CACHE_MIN_BIG: usize = 2;

/// Fewest blocks a thread cache's stack of blocks of `size` bytes holds.
pub const fn cache_min(size: usize) -> usize {
    if size >= BIG_BLOCK {
        CACHE_MIN_BIG
    } else {
        CACHE_MIN
    }
}
// A refill of a shared arena asks for whole line groups (`line_group`) within the stack's
// capacity: a stack smaller than a group would get none.
const _: () = {
    let mut c = 0;
    while c < NCLASSES {
        let size = size_of_class(c);
        assert!(cache_min(size) >= group_of_size(size));
        c += 1;
    }
};
pub const CACHE_MAX: usize = 256;

const fn size_of_class(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let k = c - 8;
        let base = 128usize << (k / 4);
        base + (k % 4 + 1) * (base / 4)
    }
}

/// Fewest blocks a span of `size`-byte blocks holds: 4 up to 4 KiB, then as many as fit in
/// 16 KiB (3 for 5 KiB, 2 up to 8 KiB, 1 above). A span goes back to the page heap only when
/// all its blocks are free, and with 4 blocks of 16-32 KiB (spans of 64-128 KiB) random frees
/// left spans part-used: server-churn's four classes above 16 KiB held 3.3 MB for about
/// 2.1 MB of live blocks. With one block per span the pages go back with the block. Against
/// 4 blocks (7 alternated runs, medians): server-churn 1 thread 19.6 -> 18.9 MB, 2 threads
/// 23.9 -> 22.5 MB, 8 threads 47.3 -> 44.2 MB; callgrind 0.2-0.8% more instructions (each
/// refill of a one-block class takes pages and each flush gives them back).
const fn min_blocks(size: usize) -> usize {
    let n = (16 << 10) / size;
    if n < 1 {
        1
    } else if n > 4 {
        4
    } else {
        n
    }
}

/// Fewest pages giving >= `min_blocks` blocks and tail waste <= 1/8; otherwise the
/// least-waste length.
const fn pages_of_class(c: usize) -> usize {
    let s = size_of_class(c);
    let mut best = MAX_SPAN_PAGES;
    let mut best_waste = usize::MAX;
    let mut n = 1;
    while n <= MAX_SPAN_PAGES {
        let bytes = n * PAGE_SIZE;
        let blocks = bytes / s;
        let waste = bytes - blocks * s;
        if blocks <= MAX_BLOCKS && blocks >= min_blocks(s) && waste * 8 <= bytes {
            return n;
        }
        if blocks >= 1 && blocks <= MAX_BLOCKS && waste * 1000 / bytes < best_waste {
            best_waste = waste * 1000 / bytes;
            best = n;
        }
        n += 1;
    }
    best
}

#[derive(Clone, Copy)]
pub struct ClassInfo {
    /// Block size in bytes (also the usable size of every block of the class).
    pub size: u32,
    /// ceil(2^32 / size): `(off * magic) >> 32 == off / size` for every offset in a span.
    pub magic: u32,
    /// Blocks per span.
    pub blocks: u16,
    /// Pages (of PAGE_SIZE) per span.
    pub pages: u8,
}

const fn build_classes() -> [ClassInfo; NCLASSES] {
    let mut t = [ClassInfo {
        size: 0,
        magic: 0,
        blocks: 0,
        pages: 0,
    }; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        let s = size_of_class(c);
        let pages = pages_of_class(c);
        t[c] = ClassInfo {
            size: s as u32,
            magic: (1u64 << 32).div_ceil(s as u64) as u32,
            blocks: (pages * PAGE_SIZE / s) as u16,
            pages: pages as u8,
        };
        c += 1;
    }
    t
}

pub static CLASSES: [ClassInfo; NCLASSES] = build_classes();

/// What the free fast path needs to tell a block's start from any other offset in its span,
/// in one multiplication and one compare (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019): with m = ceil(2^64 / size), `off` is a multiple of the size iff
/// `off * m mod 2^64 < m`, for every off below 2^32. For a multiple k × size the product is
/// k × e, e = size × m − 2^64 (0 <= e < size), so `off * m mod 2^64 < blocks × e` accepts
/// exactly the k below the span's block count (and blocks × e < m rejects every
/// non-multiple). A power-of-two size has e = 0 and fills its span exactly, so every
/// multiple inside the span's pages is a block: its threshold is 1.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct BlockCheck {
    m: u64,
    threshold: u64,
}

/// Entries per kind byte (class + 1); entry 0 (pages that are not small) has threshold 0,
/// which no offset passes.
const CHECKS_LEN: usize = NCLASSES + 1;

/// Every class's check, at byte offset 16 × (class + 1). A thread cache holds a copy, so that
/// the free fast path addresses it from the cache pointer it has in hand.
pub type BlockChecks = [BlockCheck; CHECKS_LEN];

/// Checks no offset passes (the caches of threads that have none: their frees take the
/// checked path).
pub const NO_CHECKS: BlockChecks = [BlockCheck { m: 0, threshold: 0 }; CHECKS_LEN];

const fn build_checks() -> [BlockCheck; CHECKS_LEN] {
    let mut t = [BlockCheck { m: 0, threshold: 0 }; CHECKS_LEN];
    let mut c = 0;
    while c < NCLASSES {
        let s = size_of_class(c) as u64;
        let m = (u64::MAX / s).wrapping_add(1);
        let e = s.wrapping_mul(m);
        let blocks = (pages_of_class(c) * PAGE_SIZE / size_of_class(c)) as u64;
        t[c + 1] = BlockCheck {
            m,
            threshold: if e == 0 { 1 } else { blocks * e },
        };
        c += 1;
    }
    t
}

pub static BLOCK_CHECKS: BlockChecks = build_checks();

/// Whether byte offset `off` of a span of class `c` is the start of one of its blocks; `off`
/// must lie inside the span's pages (below pages × PAGE_SIZE).
#[cfg(test)]
fn is_block_start(c: usize, off: usize) -> bool {
    is_block_start_at(&BLOCK_CHECKS, bin_of_class(c), off)
}

/// `is_block_start` for the class whose bin offset (16 × (class + 1), `PageInfo::bin`) is
/// `bin`; false for 0 (a page that is not small). `bin` must be 0 or such an offset.
#[inline(always)]
pub(crate) fn is_block_start_at(checks: &BlockChecks, bin: usize, off: usize) -> bool {
    debug_assert!(bin.is_multiple_of(16) && bin / 16 < CHECKS_LEN);
    // SAFETY: the entries are 16 bytes, so byte offset `bin` (0 or 16 × (class + 1), the
    // only values PageInfo::new stores) is entry bin / 16 < CHECKS_LEN.
    let k = unsafe { &*((checks.as_ptr() as *const u8).add(bin) as *const BlockCheck) };
    (off as u64).wrapping_mul(k.m) < k.threshold
}

const fn smallest_class_for(size: usize) -> u8 {
    let mut c = 0;
    while c < NCLASSES - 1 && size_of_class(c) < size {
        c += 1;
    }
    c as u8
}
const LUT_LEN: usize = SMALL_MAX / 16 + 1;
const fn build_lut() -> [u16; LUT_LEN] {
    let mut t = [0u16; LUT_LEN];
    let mut i = 0;
    while i < LUT_LEN {
        t[i] = (smallest_class_for(i * 16) as u16 + 1) * 16;
        i += 1;
    }
    t
}
// One entry per 16 bytes up to SMALL_MAX (4 KiB of read-only data; padding it to a power of
// two for a mask would map 4 KiB more in every process). Entries are 16 × (class + 1): the byte offset of the class's bin in a thread cache, so
// malloc's fast path uses the loaded value as it is.
static LUT: [u16; LUT_LEN] = build_lut();

/// The class serving `size` bytes; `size` must be at most SMALL_MAX.
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    class_of_bin(bin_offset_of(size))
}

/// Class `c`'s bin offset: 16 × (c + 1), its bin's place in a thread cache and its entry in
/// the block-check table (`PageInfo::bin` of its pages).
#[inline(always)]
pub fn bin_of_class(c: usize) -> usize {
    16 * (c + 1)
}

/// The class whose bin offset is `bin` (non-zero).
#[inline(always)]
pub fn class_of_bin(bin: usize) -> usize {
    bin / 16 - 1
}

/// 16 × (class_of(size) + 1): where the class's bin sits in a thread cache.
#[inline(always)]
pub fn bin_offset_of(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    // The clamp costs nothing where the caller has checked size <= SMALL_MAX (malloc).
    LUT[((size + 15) >> 4).min(LUT_LEN - 1)] as usize
}

#[inline(always)]
pub fn info(c: usize) -> &'static ClassInfo {
    &CLASSES[c]
}

/// Blocks of class `c` that cover whole 64-byte cache lines together (1 for sizes that are
/// multiples of 64; 2 or 4 below): taking blocks in aligned groups of this many gives each
/// taker lines of its own (spans start page-aligned).
pub fn line_group(c: usize) -> usize {
    group_of_size(CLASSES[c].size as usize)
}

const fn group_of_size(size: usize) -> usize {
    let tz = size.trailing_zeros();
    64 >> if tz < 6 { tz } else { 6 }
}

/// Block index of a byte offset inside a span of class `c`, by multiplication.
#[inline(always)]
pub fn block_index(c: &ClassInfo, off: usize) -> usize {
    ((off as u64 * c.magic as u64) >> 32) as usize
}

const _: () = assert!(size_of_class(NCLASSES - 1) == SMALL_MAX);
const _: () = assert!(SMALL_MAX.is_multiple_of(16) && SMALL_MAX / 16 < LUT_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_and_end_at_small_max() {
        for c in 1..NCLASSES {
            assert!(CLASSES[c].size > CLASSES[c - 1].size);
            assert_eq!(CLASSES[c].size % 16, 0);
        }
        assert_eq!(CLASSES[0].size, 16);
        assert_eq!(CLASSES[NCLASSES - 1].size as usize, SMALL_MAX);
    }

    #[test]
    fn thresholds_reject_every_non_multiple() {
        for k in BLOCK_CHECKS.iter() {
            assert!(k.threshold <= k.m || k.m == 0);
        }
    }

    #[test]
    fn lut_entries_are_bin_offsets() {
        for v in LUT {
            assert!(v % 16 == 0 && v >= 16 && class_of_bin(v as usize) < NCLASSES);
        }
    }

    #[test]
    fn lookup_is_smallest_fitting_class_and_waste_is_bounded() {
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            let s = CLASSES[c].size as usize;
            assert!(s >= size, "size {size} -> class {c} of {s}");
            if c > 0 {
                assert!(
                    (CLASSES[c - 1].size as usize) < size,
                    "size {size} not in smallest class"
                );
            }
            if size > 128 {
                // at most 25% over the request (the bound; 20% in practice)
                assert!((s - size) * 4 <= size, "size {size} wastes too much in {s}");
            } else {
                // below 128 B the 16-byte quantum rules
                assert!(s - size < 16 || size == 0, "size {size} in {s}");
            }
        }
    }

    #[test]
    fn spans_are_well_filled() {
        for (c, k) in CLASSES.iter().enumerate() {
            let bytes = k.pages as usize * PAGE_SIZE;
            assert!(k.blocks as usize <= MAX_BLOCKS, "class {c}");
            let want = if k.size <= 4096 { 4 } else { 1 };
            assert!(k.blocks >= want, "class {c} has {} blocks", k.blocks);
            assert!(k.pages <= 4 || k.size < 4096, "class {c} spans {} pages", k.pages);
            assert!(
                (bytes - k.blocks as usize * k.size as usize) * 8 <= bytes,
                "class {c} tail"
            );
        }
    }

    #[test]
    fn reciprocal_division_is_exact_over_every_span_offset() {
        for k in CLASSES.iter() {
            let bytes = k.pages as usize * PAGE_SIZE;
            for off in 0..bytes {
                assert_eq!(
                    block_index(k, off),
                    off / k.size as usize,
                    "size {} off {off}",
                    k.size
                );
            }
        }
    }

    #[test]
    fn block_starts_are_exactly_the_multiples_inside_the_blocks() {
        for (c, k) in CLASSES.iter().enumerate() {
            let size = k.size as usize;
            // every offset a span's pages can produce (the free path reads the span's
            // start from the page the pointer lies on, so it never asks past the span)
            for off in 0..k.pages as usize * PAGE_SIZE {
                let want = off % size == 0 && off / size < k.blocks as usize;
                assert_eq!(
                    is_block_start(c, off),
                    want,
                    "class {c} size {size} off {off}"
                );
            }
            for off in [size - 1, size + 1] {
                assert!(!is_block_start(c, off), "class {c} off {off}");
            }
        }
        // pages that are not small reject every offset
        for off in [0, 16, 4096, 1 << 20] {
            assert!(!is_block_start_at(&BLOCK_CHECKS, 0, off));
        }
    }
}
