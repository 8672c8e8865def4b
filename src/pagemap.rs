//! Address -> owner map at chunk granularity (4 MiB units): a two-level radix tree over the
//! 48-bit address space. It answers "is this pointer ours, and whose header describes it?"
//! for every free, so a foreign pointer is caught instead of being masked into a header
//! that does not exist.
//!
//! Entry values: 0 = not ours; `chunk_base | KIND_CHUNK`; `huge_header | KIND_HUGE`.
//! Leaves (64 KiB each) are mapped on first use and never released; the root is 64 KiB of
//! .bss. Reads take no lock: an entry is written before the pointers it covers are handed
//! out, and cleared only after none of them is live.

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
    true
}

/// Clears every unit of `[start, start+len)`.
pub fn unregister(start: usize, len: usize) {
    store_range(start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT, 0);
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
}
