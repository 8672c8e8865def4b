//! The exported C functions: argument checks, overflow, errno — glibc's semantics — and no
//! allocator logic. The symbols are exported with the `export` feature (on by default); in
//! this crate's own unit tests they are not, so the test harness keeps the system allocator
//! while it exercises the internals.

use core::ffi::{c_char, c_int, c_void};

use crate::heap;
use crate::os::{set_errno, OS_PAGE};
use crate::report::{fatal, Sink, Writer};
use crate::stats;

const PTRDIFF_MAX: usize = isize::MAX as usize;

#[inline(always)]
fn enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

#[inline(always)]
fn checked(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        enomem()
    } else {
        p as *mut c_void
    }
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = heap::malloc_cached(size);
    if !p.is_null() {
        return p as *mut c_void;
    }
    malloc_slow(size)
}

#[inline(never)]
fn malloc_slow(size: usize) -> *mut c_void {
    if size > PTRDIFF_MAX {
        return enomem();
    }
    checked(heap::malloc(size))
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn free(p: *mut c_void) {
    // Null is no small block of ours: heap::free's slow path returns for it.
    heap::free(p as *mut u8);
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) if total <= PTRDIFF_MAX => checked(heap::calloc(total)),
        _ => enomem(),
    }
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // glibc: realloc(p, 0) frees p and returns NULL.
        heap::free_checked(p as *mut u8, "realloc");
        return core::ptr::null_mut();
    }
    if size > PTRDIFF_MAX {
        return enomem();
    }
    checked(heap::realloc(p as *mut u8, size))
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => realloc(p, total),
        None => enomem(),
    }
}

fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    if size > PTRDIFF_MAX {
        return enomem();
    }
    checked(heap::malloc_aligned(align, size))
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // glibc: an alignment that cannot be a power of two is EINVAL; others round up.
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    memalign_impl(align.max(1).next_power_of_two(), size)
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // glibc >= 2.38 (and C17 DR 460): the alignment must be a power of two.
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    memalign_impl(align, size)
}

/// # Safety
/// `memptr` must be valid for a pointer-sized write.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = memalign_impl(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-parameter (the function's contract).
    unsafe { *memptr = p };
    0
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign_impl(OS_PAGE, size)
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_add(OS_PAGE - 1) {
        Some(s) => memalign_impl(OS_PAGE, s & !(OS_PAGE - 1)),
        None => enomem(),
    }
}

#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    heap::usable_size(p as *mut u8, "malloc_usable_size")
}

/// C23: free with the size the block was requested with.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn free_sized(p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    if size > heap::usable_size(p as *mut u8, "free_sized") {
        fatal("free_sized", "size larger than the block", p as usize);
    }
    heap::free(p as *mut u8);
}

/// C23: free with the alignment and size the block was requested with.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    if p.is_null() {
        return;
    }
    if size > heap::usable_size(p as *mut u8, "free_aligned_sized")
        || (align != 0 && !(p as usize).is_multiple_of(align))
    {
        fatal(
            "free_aligned_sized",
            "size or alignment does not match the block",
            p as usize,
        );
    }
    heap::free(p as *mut u8);
}

static VERSION: &[u8] = concat!("rsmalloc ", env!("CARGO_PKG_VERSION"), "\0").as_bytes();

/// The version string without its NUL.
pub fn version_bytes() -> &'static [u8] {
    &VERSION[..VERSION.len() - 1]
}

/// The library's name and version, e.g. "rsmalloc 0.1.0" (tests look it up with dlsym to
/// prove rsmalloc is the allocator in use).
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn rsmalloc_version() -> *const c_char {
    VERSION.as_ptr() as *const c_char
}

/// Fills `out` with the process-wide counters (no allocation). Returns 0, or -1 if `out` is
/// null.
///
/// # Safety
/// `out` must be null or valid for a write of `struct rsmalloc_stats`.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub unsafe extern "C" fn rsmalloc_stats(out: *mut stats::Snapshot) -> c_int {
    if out.is_null() {
        return -1;
    }
    // SAFETY: non-null and valid per the contract.
    unsafe { out.write(stats::snapshot()) };
    0
}

/// Walks every arena and the calling thread's cache, checking that bitmaps, counts and lists
/// agree; stops the process with a message on the first inconsistency. Returns 0.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn rsmalloc_check() -> c_int {
    heap::check();
    0
}

/// glibc's malloc_stats: the statistics report on stderr.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn malloc_stats() {
    stats::write_report(&mut Writer::new(Sink::Stderr), true);
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's mallinfo2, filled from rsmalloc's counters: `arena` = bytes mapped for chunks,
/// `hblks`/`hblkhd` = huge mappings and their bytes, `uordblks` = bytes in active pages,
/// `fordblks` = mapped chunk bytes not active.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = stats::snapshot();
    let chunks = s.mapped - s.huge;
    Mallinfo2 {
        arena: chunks,
        ordblks: 0,
        smblks: 0,
        hblks: s.huge_count,
        hblkhd: s.huge,
        usmblks: 0,
        fsmblks: 0,
        uordblks: s.active,
        fordblks: chunks.saturating_sub(s.active),
        keepcost: 0,
    }
}

/// glibc's malloc_trim: purges every free page now (and this thread's cached blocks);
/// returns 1 if memory was released. `pad` is accepted and ignored.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    (heap::trim() > 0) as c_int
}

/// glibc's malloc_info: an XML report on `stream`. `options` must be 0 (EINVAL otherwise).
///
/// # Safety
/// `stream` must be a valid `FILE*` open for writing.
#[cfg_attr(all(feature = "export", not(test)), no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 || stream.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    stats::write_xml(&mut Writer::new(Sink::File(stream)));
    0
}
