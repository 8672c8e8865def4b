//! The one thread-local slot: a pointer to the thread's cache.
//!
//! On x86-64 Linux the slot is an 8-byte initial-exec TLS variable declared in assembly
//! (stable Rust has no `#[thread_local]`): reading it is `mov reg, [rip+slot@GOTTPOFF];
//! mov reg, fs:[reg]` — no `__tls_get_addr` call, which costs ~20 instructions and, worse,
//! may call malloc the first time a thread touches a dlopen'ed library's TLS. The price is
//! that the library needs 8 bytes of static TLS: always there when preloaded or linked, and
//! taken from glibc's static-TLS surplus when the library is dlopen'ed (8 bytes fit).
//! Elsewhere a `const`-initialised `thread_local!` (no destructor) is used.
//!
//! The slot never holds null: its initial value (in the TLS image, relocated at load time
//! like any `__thread int *p = &x;` in C) is the address of `tcache::UNSET`, a cache with no
//! room, so the fast paths need no null test.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".hidden rsmalloc_tcache_slot",
        ".type rsmalloc_tcache_slot,@object",
        ".size rsmalloc_tcache_slot,8",
        "rsmalloc_tcache_slot:",
        ".quad {unset}",
        ".popsection",
        unset = sym crate::tcache::UNSET,
    );

    #[inline(always)]
    pub fn get() -> *mut u8 {
        let v: *mut u8;
        // SAFETY: reads this thread's own 8-byte TLS slot; the GOT entry holds its offset
        // from the thread pointer (fs base), filled by the dynamic linker at load time.
        unsafe {
            core::arch::asm!(
                "mov {v}, qword ptr [rip + rsmalloc_tcache_slot@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{v}]",
                v = out(reg) v,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        v
    }

    #[inline(always)]
    pub fn set(p: *mut u8) {
        // SAFETY: writes this thread's own TLS slot (see `get`).
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + rsmalloc_tcache_slot@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {p}",
                t = out(reg) _,
                p = in(reg) p,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use core::cell::Cell;
    std::thread_local! {
        static SLOT: Cell<*mut u8> = const { Cell::new(core::ptr::null_mut()) };
    }
    #[inline(always)]
    pub fn get() -> *mut u8 {
        let p = SLOT.with(|s| s.get());
        if p.is_null() {
            &crate::tcache::UNSET as *const _ as *mut u8
        } else {
            p
        }
    }
    #[inline(always)]
    pub fn set(p: *mut u8) {
        SLOT.with(|s| s.set(p))
    }
}

pub use imp::{get, set};

#[cfg(test)]
mod tests {
    #[test]
    fn slot_is_per_thread() {
        let mine = 0x1234 as *mut u8;
        super::set(mine);
        let unset = &crate::tcache::UNSET as *const _ as usize;
        let other = std::thread::spawn(|| super::get() as usize).join().unwrap();
        assert_eq!(other, unset);
        assert_eq!(super::get(), mine);
        super::set(unset as *mut u8);
    }
}
