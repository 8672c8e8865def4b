//! Process and thread life cycle: the first call, thread exit, fork.
//!
//! The first `malloc` may come from the dynamic loader or libc before any constructor runs,
//! so initialisation happens lazily on the first slow-path call and uses nothing that
//! allocates: the options come from `environ`, the CPU count from `sched_getaffinity`, the
//! secret from the kernel's AT_RANDOM bytes. Thread exit is a pthread key destructor (glibc
//! keeps the first 32 keys' values in the thread descriptor, no allocation). Fork takes every
//! allocator lock in the parent before the fork and releases (parent) or resets (child) them
//! after, so a child of a multi-threaded parent can allocate.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::{arena, config, huge, os, pagemap, tcache};

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SECRET: AtomicU64 = AtomicU64::new(0);
static KEY: AtomicU32 = AtomicU32::new(0);

/// The per-process secret written into free blocks (never 0, so a cleared word never
/// matches).
#[inline(always)]
pub fn secret() -> u64 {
    SECRET.load(Ordering::Relaxed)
}

#[inline]
pub fn ensure() {
    if STATE.load(Ordering::Acquire) != READY {
        init_slow();
    }
}

#[cold]
fn init_slow() {
    if STATE
        .compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        while STATE.load(Ordering::Acquire) != READY {
            os::yield_now();
        }
        return;
    }
    SECRET.store(os::random_u64() | 1, Ordering::Relaxed);
    tcache::init();
    config::init(os::cpu_count());
    if config::VERBOSE.load(Ordering::Relaxed) {
        let mut w = crate::report::Writer::new(crate::report::Sink::Stderr);
        w.str("rsmalloc: ")
            .bytes(crate::abi::version_bytes())
            .str(", options:");
        for (k, v) in config::current() {
            w.str(" ").str(k).str("=").dec(v);
        }
        w.str("\n");
        w.flush();
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; the destructor is an extern "C" fn that lives
    // as long as the library.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0 {
        KEY.store(key + 1, Ordering::Relaxed);
    }
    STATE.store(READY, Ordering::Release);
    // After READY: should pthread_atfork allocate, it finds a working allocator.
    // SAFETY: the handlers are extern "C" fns without arguments that live forever.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
}

/// Arms the thread-exit destructor for a thread's new cache.
pub fn register_thread_cache(tc: *mut u8) {
    let k = KEY.load(Ordering::Relaxed);
    if k != 0 {
        // SAFETY: the key was created by pthread_key_create above.
        unsafe { libc::pthread_setspecific(k - 1, tc as *const libc::c_void) };
    }
}

extern "C" fn thread_exit(tc: *mut libc::c_void) {
    tcache::retire(tc as *mut tcache::TCache);
}

// Lock order: thread-cache pool, huge cache, huge heap, arenas, page heap, page-map growth.
// (Paths holding an arena lock only ever try_lock the huge heap.)
extern "C" fn fork_prepare() {
    tcache::fork_prepare();
    huge::fork_prepare();
    arena::fork_prepare();
    pagemap::fork_prepare();
}

extern "C" fn fork_parent() {
    pagemap::fork_parent();
    arena::fork_parent();
    huge::fork_parent();
    tcache::fork_parent();
}

extern "C" fn fork_child() {
    pagemap::fork_child();
    arena::fork_child();
    huge::fork_child();
    tcache::fork_child();
}
