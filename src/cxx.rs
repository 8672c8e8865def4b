//! C++ `operator new` and `operator delete`, every standard form (plain, array, sized,
//! aligned, nothrow), so C++ programs reach rsmalloc without going through libstdc++'s
//! wrappers and sized delete is honoured.
//!
//! `new` must throw `std::bad_alloc` (after calling the new-handler) when memory runs out,
//! and a C++ exception must never unwind through Rust frames (this crate is built with
//! panic=abort). So each `new` is a small assembly trampoline: it calls into Rust to
//! allocate; on success it returns; on failure it *tail-jumps*, with the original arguments,
//! to the next definition of the same operator — libstdc++'s — found with
//! `dlsym(RTLD_NEXT, …)`. That one calls malloc (ours) again, runs the new-handler loop and
//! throws exactly as the standard library does, with no Rust frame on the stack. The nothrow
//! forms fall back the same way (libstdc++ then returns null); without a C++ runtime to fall
//! back to, `new` stops the process with a message and the nothrow forms return null.
//!
//! x86-64 Linux only (the trampolines are assembly); elsewhere libstdc++'s operators, which
//! call malloc, serve C++ programs.

// In unit tests nothing calls the operators; the helpers they use look unused.
#![cfg_attr(test, allow(dead_code))]

use core::ffi::{c_char, c_void};

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::heap;

const PTRDIFF_MAX: usize = isize::MAX as usize;

extern "C" fn cxx_alloc(size: usize) -> *mut u8 {
    if size > PTRDIFF_MAX {
        return core::ptr::null_mut();
    }
    heap::malloc(size)
}

extern "C" fn cxx_alloc_aligned(size: usize, align: usize) -> *mut u8 {
    if size > PTRDIFF_MAX || !align.is_power_of_two() {
        return core::ptr::null_mut();
    }
    heap::malloc_aligned(align, size)
}

extern "C" fn cxx_no_runtime() -> ! {
    crate::report::fatal(
        "operator new",
        "out of memory, no C++ runtime to throw std::bad_alloc, size",
        0,
    )
}

extern "C" fn cxx_null() -> *mut u8 {
    core::ptr::null_mut()
}

/// The next definition of `name` after this library (libstdc++'s), cached; 0 if none.
fn next_definition(cache: &AtomicUsize, name: &[u8]) -> usize {
    let f = cache.load(Relaxed);
    if f != 0 {
        return f;
    }
    // SAFETY: `name` is NUL-terminated; dlsym only reads it. Called on the failure path only,
    // with no allocator lock held, so dlsym may itself allocate.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char) } as usize;
    cache.store(f, Relaxed);
    f
}

macro_rules! next_fn {
    ($fn:ident, $sym:literal) => {
        extern "C" fn $fn() -> usize {
            static CACHE: AtomicUsize = AtomicUsize::new(0);
            next_definition(&CACHE, concat!($sym, "\0").as_bytes())
        }
    };
}

/// An `operator new` trampoline (a naked function: no prologue, no Rust frame): `$alloc`
/// with the arguments in rdi/rsi/rdx; on null, jump to the next definition of the same
/// symbol, or to `$fail` if there is none.
macro_rules! cxx_new {
    ($name:ident, $sym:literal, $alloc:path, $next:ident, $fail:path) => {
        next_fn!($next, $sym);
        /// # Safety
        /// Called by C++ code with the arguments of this operator new overload.
        #[unsafe(naked)]
        #[cfg_attr(all(feature = "export", not(test)), no_mangle)]
        pub unsafe extern "C" fn $name() -> *mut c_void {
            core::arch::naked_asm!(
                "push rdi",
                "push rsi",
                "push rdx",
                "call {alloc}",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "test rax, rax",
                "jz 1f",
                "ret",
                "1:",
                "push rdi",
                "push rsi",
                "push rdx",
                "call {next}",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "test rax, rax",
                "jz 2f",
                "jmp rax",
                "2:",
                "jmp {fail}",
                alloc = sym $alloc,
                next = sym $next,
                fail = sym $fail,
            )
        }
    };
}

// operator new(size_t), new[](size_t)
cxx_new!(_Znwm, "_Znwm", cxx_alloc, next_znwm, cxx_no_runtime);
cxx_new!(_Znam, "_Znam", cxx_alloc, next_znam, cxx_no_runtime);
// operator new(size_t, align_val_t), new[](size_t, align_val_t)
cxx_new!(
    _ZnwmSt11align_val_t,
    "_ZnwmSt11align_val_t",
    cxx_alloc_aligned,
    next_znwm_a,
    cxx_no_runtime
);
cxx_new!(
    _ZnamSt11align_val_t,
    "_ZnamSt11align_val_t",
    cxx_alloc_aligned,
    next_znam_a,
    cxx_no_runtime
);
// operator new(size_t, nothrow_t const&), new[](size_t, nothrow_t const&)
cxx_new!(
    _ZnwmRKSt9nothrow_t,
    "_ZnwmRKSt9nothrow_t",
    cxx_alloc,
    next_znwm_nt,
    cxx_null
);
cxx_new!(
    _ZnamRKSt9nothrow_t,
    "_ZnamRKSt9nothrow_t",
    cxx_alloc,
    next_znam_nt,
    cxx_null
);
// operator new(size_t, align_val_t, nothrow_t const&), new[](…)
cxx_new!(
    _ZnwmSt11align_val_tRKSt9nothrow_t,
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    cxx_alloc_aligned,
    next_znwm_a_nt,
    cxx_null
);
cxx_new!(
    _ZnamSt11align_val_tRKSt9nothrow_t,
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    cxx_alloc_aligned,
    next_znam_a_nt,
    cxx_null
);

macro_rules! cxx_delete {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[cfg_attr(all(feature = "export", not(test)), no_mangle)]
            pub extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
                $(let _ = $arg;)*
                if !p.is_null() {
                    heap::free(p as *mut u8);
                }
            }
        )*
    };
}

// Every form of operator delete frees the block: the page map knows its size, and a wrong
// size or alignment passed to sized delete is not trusted.
cxx_delete! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size: usize);
    _ZdaPvm(size: usize);
    _ZdlPvSt11align_val_t(align: usize);
    _ZdaPvSt11align_val_t(align: usize);
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    _ZdlPvRKSt9nothrow_t(nt: *const c_void);
    _ZdaPvRKSt9nothrow_t(nt: *const c_void);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, nt: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, nt: *const c_void);
}
