//! `RsMalloc`: rsmalloc as a Rust `#[global_allocator]`.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: rsmalloc::RsMalloc = rsmalloc::RsMalloc;
//! ```
//!
//! With the default `export` feature the crate also exports the C `malloc` family, so C code
//! in the same program uses rsmalloc too; `default-features = false` keeps the C allocator
//! the system's.

use core::alloc::{GlobalAlloc, Layout};

use crate::heap;

pub struct RsMalloc;

// SAFETY: every method forwards to the allocator, which returns blocks of at least the
// layout's size aligned to at least its alignment (malloc: 16 B; malloc_aligned: any power
// of two), or null; dealloc and realloc receive pointers the same allocator handed out.
unsafe impl GlobalAlloc for RsMalloc {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            heap::malloc(l.size())
        } else {
            heap::malloc_aligned(l.align(), l.size())
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            heap::calloc(l.size())
        } else {
            let p = heap::malloc_aligned(l.align(), l.size());
            if !p.is_null() {
                // SAFETY: p is a fresh block of at least l.size() bytes.
                unsafe { core::ptr::write_bytes(p, 0, l.size()) };
            }
            p
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        heap::free(p)
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if l.align() <= 16 && new_size != 0 {
            return heap::realloc(p, new_size);
        }
        // SAFETY: the layout is valid for new_size (the caller's contract of realloc).
        let nl = unsafe { Layout::from_size_align_unchecked(new_size, l.align()) };
        // SAFETY: forwarding to our own alloc with a valid layout.
        let q = unsafe { self.alloc(nl) };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; copy the smaller size.
            unsafe { core::ptr::copy_nonoverlapping(p, q, l.size().min(new_size)) };
            heap::free(p);
        }
        q
    }
}
