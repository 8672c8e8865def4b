//! Address -> owner map at chunk granularity (4 MiB units): a two-level radix tree over the
//! 48-bit address space. It answers "is this pointer ours, and whose header describes it?"
//! for every free, so a foreign pointer is caught instead of being masked into a header
//! that does not exist.
//!
//! Entry values: 0 = not ours; `chunk_base | KIND_CHUNK`; `huge_header | KIND_HUGE`.
//! Leaves (64 KiB each) are mapped on first use and never released; the root is 64 KiB of
//! .bss. Reads take no lock: an entry is written before the pointers it covers are handed
//! out, and cleared only after none of them is live.
//!
//! Beside the tree, for the free fast path: a flat byte per 4 MiB unit of the 47-bit user
//! address space (32 MiB of address space, read-only zero pages until a chunk's byte is
//! written), 1 where a chunk lives. Chunks are 4 MiB-aligned, so `FlatView::covers` is one shift,
//! one compare and one byte load, against two dependent loads and a null test in the tree.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::config::CHUNK_SHIFT;
use crate::lock::Mutex;
use crate::os;

pub const KIND_CHUNK: usize = 1;
pub const KIND_HUGE: usize = 2;
pub const KIND_MASK: usize = 3;

const ADDR_BITS: usize = 48;
const LEAF_BITS: usize = 13;
const ROOT_BITS: usize = ADDR_BITS - CHUNK_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

struct Leaf {
    e: [AtomicUsize; LEAF_LEN],
}

static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] =
    [const { AtomicPtr::new(null_mut()) }; 1 << ROOT_BITS];
/// Serialises leaf creation (entries themselves are written by their range's owner).
static GROW: Mutex<()> = Mutex::new(());

/// Units the flat map covers (the 47-bit user address space); 0 until it is mapped.
const FLAT_LEN: usize = 1 << (47 - CHUNK_SHIFT);
static FLAT: AtomicPtr<u8> = AtomicPtr::new(null_mut());
static FLAT_UNITS: AtomicUsize = AtomicUsize::new(0);

/// The flat map as a reader holds it: a thread cache keeps a copy (plain fields, so the free
/// fast path compares against them in place), taken when the map is already mapped.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct FlatView {
    map: *const u8,
    /// Units `map` covers: FLAT_LEN, or 0 (no map: every answer is false).
    units: usize,
}

/// A view that covers nothing (caches of threads that have none, and of processes where the
/// map could not be reserved): their frees take the checked path.
pub const NO_FLAT: FlatView = FlatView {
    map: null_mut(),
    units: 0,
};

impl FlatView {
    /// Whether a chunk of ours (4 MiB-aligned) covers `addr`: then its header is mapped.
    #[inline(always)]
    pub fn covers(&self, addr: usize) -> bool {
        let unit = addr >> CHUNK_SHIFT;
        // An address above the user space (or an alias with high bits set) is no unit.
        if unit >= self.units {
            return false;
        }
        // SAFETY: a view with units != 0 holds the map, which stays mapped (readable) forever.
        unsafe { *self.map.add(unit) == 1 }
    }
}

/// The flat map as it is now (for paths without a cache's copy); NO_FLAT before the first
/// chunk.
#[inline(always)]
pub fn flat() -> FlatView {
    // FLAT was published before FLAT_UNITS (Release), so a non-zero count sees the map.
    let units = FLAT_UNITS.load(Ordering::Acquire);
    let map = FLAT.load(Ordering::Relaxed);
    FlatView { map, units }
}

/// The flat map, reserved now if no chunk has needed it yet; NO_FLAT when the kernel refuses
/// its 32 MiB of address space.
pub fn flat_view() -> FlatView {
    let _g = GROW.lock();
    let map = reserve_flat();
    if map.is_null() {
        NO_FLAT
    } else {
        FlatView {
            map,
            units: FLAT_LEN,
        }
    }
}

/// The flat map, reserving it on first use (under GROW); null if it cannot be.
fn reserve_flat() -> *mut u8 {
    let flat = FLAT.load(Ordering::Relaxed);
    if !flat.is_null() {
        return flat;
    }
    let flat = os::reserve_zeros(FLAT_LEN);
    if !flat.is_null() {
        FLAT.store(flat, Ordering::Relaxed);
        FLAT_UNITS.store(FLAT_LEN, Ordering::Release);
    }
    flat
}

/// Marks or clears the flat map's byte of chunk unit `unit` (under GROW). The map is created
/// on the first chunk (or thread cache); without it (the kernel refused 32 MiB of address
/// space) `FlatView::covers` answers false and every free takes the tree.
fn flat_set(unit: usize, on: bool) {
    if unit >= FLAT_LEN {
        return;
    }
    let flat = if on {
        reserve_flat()
    } else {
        FLAT.load(Ordering::Relaxed)
    };
    if flat.is_null() {
        return;
    }
    // SAFETY: unit < FLAT_LEN, inside the mapping.
    let b = unsafe { flat.add(unit) };
    // SAFETY: readable; a byte that reads 0 needs no write (and its page may be read-only).
    if !on && unsafe { core::ptr::read_volatile(b) } == 0 {
        return;
    }
    if on && !os::allow_write(b, 1) {
        // The byte stays 0: this chunk's frees take the tree.
        return;
    }
    // SAFETY: the byte's page is writable (made so when a chunk on it was first marked).
    unsafe { core::ptr::write_volatile(b, on as u8) };
}

/// The entry for `addr`: 0 when no chunk or huge mapping of ours covers it.
#[inline(always)]
pub fn lookup(addr: usize) -> usize {
    if addr >> ADDR_BITS != 0 {
        return 0;
    }
    lookup_fast(addr)
}

/// `lookup` without the 48-bit check, for the free fast path: an address with higher bits set
/// may get the entry of the address it aliases. The caller must reject what lies outside
/// the chunk the entry names (an aliased address is at least 2^47 bytes past it).
#[inline(always)]
pub fn lookup_fast(addr: usize) -> usize {
    let unit = addr >> CHUNK_SHIFT;
    let leaf = ROOT[(unit >> LEAF_BITS) & ((1 << ROOT_BITS) - 1)].load(Ordering::Acquire);
    if leaf.is_null() {
        return 0;
    }
    // SAFETY: non-null root entries point at leaves that are mapped forever.
    unsafe { (*leaf).e[unit & (LEAF_LEN - 1)].load(Ordering::Relaxed) }
}

fn leaf_for(unit: usize, create: bool) -> *mut Leaf {
    let slot = &ROOT[unit >> LEAF_BITS];
    let leaf = slot.load(Ordering::Acquire);
    if !leaf.is_null() || !create {
        return leaf;
    }
    let _g = GROW.lock();
    let leaf = slot.load(Ordering::Acquire);
    if !leaf.is_null() {
        return leaf;
    }
    let fresh = os::map(core::mem::size_of::<Leaf>()) as *mut Leaf;
    if !fresh.is_null() {
        slot.store(fresh, Ordering::Release);
    }
    fresh
}

/// Points every unit of `[start, start+len)` at `value`. False if a leaf could not be mapped
/// (then nothing is left half-registered).
pub fn register(start: usize, len: usize, value: usize) -> bool {
    let first = start >> CHUNK_SHIFT;
    let last = (start + len - 1) >> CHUNK_SHIFT;
    if (last >> (ADDR_BITS - CHUNK_SHIFT)) != 0 {
        return false;
    }
    for unit in first..=last {
        if leaf_for(unit, true).is_null() {
            return false;
        }
    }
    store_range(first, last, value);
    if value & KIND_MASK == KIND_CHUNK {
        let _g = GROW.lock();
        flat_set(first, true);
    }
    true
}

/// Clears every unit of `[start, start+len)`.
pub fn unregister(start: usize, len: usize) {
    let (first, last) = (start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT);
    if lookup(start) & KIND_MASK == KIND_CHUNK {
        let _g = GROW.lock();
        flat_set(first, false);
    }
    store_range(first, last, 0);
}

/// Clears the units a range of `old_len` bytes at `start` covers but its first `new_len`
/// bytes do not (a shrinking huge object).
pub fn unregister_tail(start: usize, old_len: usize, new_len: usize) {
    let new_end_unit = (start + new_len - 1) >> CHUNK_SHIFT;
    let old_end_unit = (start + old_len - 1) >> CHUNK_SHIFT;
    if old_end_unit > new_end_unit {
        store_range(new_end_unit + 1, old_end_unit, 0);
    }
}

fn store_range(first: usize, last: usize, value: usize) {
    for unit in first..=last {
        let leaf = leaf_for(unit, false);
        if !leaf.is_null() {
            // SAFETY: leaves are mapped forever once published.
            unsafe { (*leaf).e[unit & (LEAF_LEN - 1)].store(value, Ordering::Release) };
        }
    }
}

pub fn fork_prepare() {
    GROW.lock_forever();
}
pub fn fork_parent() {
    GROW.force_unlock();
}
pub fn fork_child() {
    GROW.reset_in_child();
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn register_lookup_unregister() {
        let base = 0x5a5a_0000_0000usize & !((1 << CHUNK_SHIFT) - 1);
        assert_eq!(lookup(base), 0);
        assert!(register(base, 3 << CHUNK_SHIFT, base | KIND_HUGE));
        assert_eq!(lookup(base + 5), base | KIND_HUGE);
        assert_eq!(lookup(base + (3 << CHUNK_SHIFT) - 1), base | KIND_HUGE);
        assert_eq!(lookup(base + (3 << CHUNK_SHIFT)), 0);
        assert_eq!(lookup(base - 1), 0);
        unregister(base, 3 << CHUNK_SHIFT);
        assert_eq!(lookup(base + 5), 0);
        assert_eq!(lookup(usize::MAX - 7), 0);
    }

    #[test]
    fn flat_map_marks_chunks_only() {
        let base = 0x3c3c_0000_0000usize & !((1 << CHUNK_SHIFT) - 1);
        assert!(!flat().covers(base));
        assert!(register(base, 1 << CHUNK_SHIFT, base | KIND_CHUNK));
        assert!(flat().covers(base) && flat().covers(base + (1 << CHUNK_SHIFT) - 1));
        assert!(!flat().covers(base + (1 << CHUNK_SHIFT)) && !flat().covers(base - 1));
        // an alias with high bits set is no chunk
        assert!(!flat().covers(base | 1 << 60));
        let huge = base + (8 << CHUNK_SHIFT);
        assert!(register(huge, 1 << CHUNK_SHIFT, huge | KIND_HUGE));
        assert!(!flat().covers(huge));
        unregister(huge, 1 << CHUNK_SHIFT);
        unregister(base, 1 << CHUNK_SHIFT);
        assert!(!flat().covers(base));
    }
}
