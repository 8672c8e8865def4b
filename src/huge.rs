//! Huge objects (above LARGE_MAX): each has a mapping of its own, aligned to the chunk size so
//! that no two mappings of ours share a page-map unit. A small header sits at the start of
//! the mapping, before the user pointer (one OS page in, or `align` in for larger
//! alignments). Freeing unmaps at once; realloc grows with mremap (in place when the pages
//! after the mapping are free, otherwise moved without copying).

use crate::config::CHUNK_SIZE;
use crate::os::{self, OS_PAGE};
use crate::pagemap;
use crate::report::fatal;
use crate::stats;

#[repr(C)]
struct Header {
    /// `secret ^ base`: detects a header overwritten by a write before the block.
    canary: u64,
    map_len: usize,
    user_off: usize,
    /// Alignment of the mapping's base (for moving realloc).
    base_align: usize,
}

fn canary(base: usize) -> u64 {
    crate::init::secret() ^ base as u64
}

fn header<'a>(base: usize, p: usize, func: &str) -> &'a mut Header {
    // SAFETY: `base` comes from a page-map entry of kind huge, which is only set while the
    // mapping (whose first bytes are this header) exists.
    let h = unsafe { &mut *(base as *mut Header) };
    if h.canary != canary(base) {
        fatal(func, "corrupted block header at", p);
    }
    h
}

fn round_page(n: usize) -> Option<usize> {
    n.checked_add(OS_PAGE - 1).map(|v| v & !(OS_PAGE - 1))
}

/// Maps a huge object of `size` bytes aligned to `align`; null if the kernel refuses.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let user_off = align.max(OS_PAGE);
    let Some(map_len) = user_off.checked_add(size).and_then(round_page) else {
        return core::ptr::null_mut();
    };
    let base_align = align.max(CHUNK_SIZE);
    let base = os::map_aligned(map_len, base_align);
    if base.is_null() {
        return base;
    }
    if !pagemap::register(base as usize, map_len, base as usize | pagemap::KIND_HUGE) {
        os::unmap(base, map_len);
        return core::ptr::null_mut();
    }
    // SAFETY: the mapping is fresh and at least one page long; the header fits in it.
    unsafe {
        (base as *mut Header).write(Header {
            canary: canary(base as usize),
            map_len,
            user_off,
            base_align,
        })
    };
    stats::add_huge(map_len as isize, 1);
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
    let h = header(base, p, func);
    if base + h.user_off != p {
        fatal(func, "invalid pointer", p);
    }
    let len = h.map_len;
    h.canary = 0;
    pagemap::unregister(base, len);
    os::unmap(base as *mut u8, len);
    stats::add_huge(-(len as isize), -1);
}

/// Resizes in place or by moving the pages; null when the kernel refuses (the object is
/// then unchanged). Contents are kept up to the smaller size; added pages read zero.
pub fn realloc(base: usize, p: usize, size: usize) -> *mut u8 {
    let h = header(base, p, "realloc");
    if base + h.user_off != p {
        fatal("realloc", "invalid pointer", p);
    }
    let (old_len, user_off, base_align) = (h.map_len, h.user_off, h.base_align);
    let Some(new_len) = user_off.checked_add(size).and_then(round_page) else {
        return core::ptr::null_mut();
    };
    if new_len <= old_len {
        if new_len < old_len {
            os::unmap((base + new_len) as *mut u8, old_len - new_len);
            pagemap::unregister(base, old_len);
            pagemap::register(base, new_len, base | pagemap::KIND_HUGE);
            h.map_len = new_len;
            stats::add_huge(new_len as isize - old_len as isize, 0);
        }
        return p as *mut u8;
    }
    if os::remap_in_place(base as *mut u8, old_len, new_len) {
        if pagemap::register(base, new_len, base | pagemap::KIND_HUGE) {
            h.map_len = new_len;
            stats::add_huge((new_len - old_len) as isize, 0);
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
    if !os::remap_to(base as *mut u8, old_len, new_len, target) {
        pagemap::unregister(t, new_len);
        os::unmap(target, new_len);
        return core::ptr::null_mut();
    }
    pagemap::unregister(base, old_len);
    // SAFETY: the header moved with the first page of the mapping, now at `t`.
    let nh = unsafe { &mut *(t as *mut Header) };
    nh.canary = canary(t);
    nh.map_len = new_len;
    stats::add_huge((new_len - old_len) as isize, 0);
    (t + user_off) as *mut u8
}
