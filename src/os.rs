//! The OS layer: the only module that talks to the kernel (mmap, munmap, madvise, mremap,
//! futex, clock, write, abort). Everything above it speaks of reserving, releasing and purging
//! memory, never of syscalls. Nothing here allocates.

use core::ptr::null_mut;

/// The kernel's page size; every length handed to this module is a multiple of it.
pub const OS_PAGE: usize = 4096;

/// Whether transparent huge pages may back our chunks (off unless the user opts in).
static THP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn set_thp(on: bool) {
    THP.store(on, core::sync::atomic::Ordering::Relaxed);
}

pub fn thp() -> bool {
    THP.load(core::sync::atomic::Ordering::Relaxed)
}

/// Maps `len` bytes of fresh, zeroed, read-write memory. Null when the kernel refuses.
pub fn map(len: usize) -> *mut u8 {
    // No MAP_NORESERVE: the kernel's overcommit check must refuse absurd sizes, so that
    // malloc(1 TiB) returns NULL as under glibc instead of an OOM kill later.
    map_flags(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
}

fn map_flags(len: usize, flags: i32) -> *mut u8 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing memory.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        advise_thp(p as *mut u8, len);
        p as *mut u8
    }
}

/// Maps `len` bytes whose start is a multiple of `align` (a power of two >= OS_PAGE).
pub fn map_aligned(len: usize, align: usize) -> *mut u8 {
    map_aligned_flags(len, align, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
}

/// Reserves `len` bytes of address space whose start is a multiple of `align`, readable and
/// writable but charged to nothing until touched (MAP_NORESERVE): for the huge heap, whose
/// regions are mostly untouched. Null when the kernel refuses.
pub fn reserve_aligned(len: usize, align: usize) -> *mut u8 {
    map_aligned_flags(
        len,
        align,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
    )
}

/// Over-maps by `align` and gives the excess head and tail back at once.
fn map_aligned_flags(len: usize, align: usize, flags: i32) -> *mut u8 {
    let Some(over) = len.checked_add(align) else {
        return null_mut();
    };
    let raw = map_flags(over, flags);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = over - head - len;
    if head > 0 {
        unmap(raw, head);
    }
    if tail > 0 {
        unmap((aligned + len) as *mut u8, tail);
    }
    aligned as *mut u8
}

/// `n` rounded up to a whole number of OS pages.
pub fn round_page(n: usize) -> usize {
    (n + OS_PAGE - 1) & !(OS_PAGE - 1)
}

/// Gives a mapping (or part of one) back to the kernel: address space and pages.
pub fn unmap(p: *mut u8, len: usize) {
    // SAFETY: callers pass a range this allocator mapped and no longer hands out.
    keep_errno(|| unsafe { libc::munmap(p as *mut libc::c_void, len) });
}

/// Drops the physical pages of a range but keeps its address space; the next touch
/// reads zeros. False when the kernel refused (locked memory under mlockall, a seccomp
/// filter): the pages keep their contents.
pub fn purge(p: *mut u8, len: usize) -> bool {
    // SAFETY: callers pass a free range of a mapping this allocator owns.
    keep_errno(|| unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_DONTNEED) }) == 0
}

/// Runs `f` and puts errno back as it was: a call that succeeds must not change errno, even
/// when an attempt inside it failed (glibc's behaviour; POSIX 2024 requires it of free).
fn keep_errno<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let saved = unsafe { *libc::__errno_location() };
    let r = f();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
    r
}

fn advise_thp(p: *mut u8, len: usize) {
    let advice = if THP.load(core::sync::atomic::Ordering::Relaxed) {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: the range was just mapped by us; the advice changes no contents. (Kernels
    // without THP refuse it with EINVAL: harmless, and errno is kept.)
    keep_errno(|| unsafe { libc::madvise(p as *mut libc::c_void, len, advice) });
}

/// Reserves `len` bytes that read as zeros and cannot be written (PROT_READ, MAP_NORESERVE):
/// untouched pages are the kernel's shared zero page, charged to nothing and not resident,
/// even under mlockall. `allow_write` opens parts of it. Null when the kernel refuses.
pub fn reserve_zeros(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing memory.
    let p = keep_errno(|| unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    });
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p as *mut u8
    }
}

/// Makes the OS pages covering `[p, p+len)` of a `reserve_zeros` mapping writable. False when
/// the kernel refuses (out of memory for page tables or VMAs).
pub fn allow_write(p: *mut u8, len: usize) -> bool {
    let start = p as usize & !(OS_PAGE - 1);
    let end = round_page(p as usize + len);
    // SAFETY: the range lies inside a reserve_zeros mapping of ours; its contents stay.
    keep_errno(|| unsafe {
        libc::mprotect(
            start as *mut libc::c_void,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    }) == 0
}

/// Makes a range inaccessible (a guard: any access faults).
pub fn protect_none(p: *mut u8, len: usize) {
    // SAFETY: callers pass a range of a mapping of ours that holds nothing.
    unsafe { libc::mprotect(p as *mut libc::c_void, len, libc::PROT_NONE) };
}

/// Grows or shrinks a mapping without moving it. False when the pages after it are taken.
pub fn remap_in_place(p: *mut u8, old_len: usize, new_len: usize) -> bool {
    // SAFETY: `p..p+old_len` is one mapping of ours; without MREMAP_MAYMOVE nothing else moves.
    // Failing here is expected (the pages after are taken): errno is kept for the caller.
    let r = keep_errno(|| unsafe { libc::mremap(p as *mut libc::c_void, old_len, new_len, 0) });
    r != libc::MAP_FAILED
}

/// Moves a mapping to `target` (whose range we own) without copying its pages; the old range
/// is unmapped and whatever was at `target..target+new_len` is replaced.
pub fn remap_to(p: *mut u8, old_len: usize, new_len: usize, target: *mut u8) -> bool {
    // SAFETY: both ranges are ours: the source is a live mapping, the target a fresh reservation.
    let r = unsafe {
        libc::mremap(
            p as *mut libc::c_void,
            old_len,
            new_len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target as *mut libc::c_void,
        )
    };
    r != libc::MAP_FAILED
}

/// Moves the pages of `len` bytes at `p` to `target` (both ours, not overlapping), leaving
/// `p..p + len` mapped and reading zero (MREMAP_DONTUNMAP, Linux 5.7): no copy, no fault at
/// the target, and no hole in the reservation the source lies in. False if the kernel
/// refuses (older kernel, mapping limit); nothing moved then.
pub fn move_pages(p: *mut u8, len: usize, target: *mut u8) -> bool {
    // A refusal is not an error of the realloc that falls back to a copy: errno is kept.
    let r = keep_errno(|| {
        // SAFETY: both ranges are private anonymous memory of ours that nothing else uses;
        // the target's previous pages are dropped by design.
        unsafe {
            libc::mremap(
                p as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
                target as *mut libc::c_void,
            )
        }
    });
    r == target as *mut libc::c_void
}

pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// Monotonic time in nanoseconds (coarse clock: a vDSO read, no syscall).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPUs this process may run on (sched_getaffinity: no allocation, unlike some sysconf paths).
/// Through `syscall`, like every system call here that glibc's own malloc does not make: a
/// libc function the program never calls costs a fault-around window of libc's text (up to
/// 64 KiB of resident file pages) in every process; `syscall` sits next to mmap.
pub fn cpu_count() -> usize {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid, correctly sized out-parameter; the kernel returns the bytes
    // it wrote (>= 0) or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            core::mem::size_of::<libc::cpu_set_t>(),
            &mut set as *mut libc::cpu_set_t,
        )
    };
    if r < 0 {
        return 1;
    }
    // SAFETY: `set` was filled by the kernel above.
    let n = unsafe { libc::CPU_COUNT(&set) };
    (n.max(1)) as usize
}

extern "C" {
    /// The process's environment (glibc's `environ`: set before any constructor runs; libc
    /// writes it, hence `mut`).
    static mut environ: *const *const u8;
}

/// The value of environment variable `name` (without its NUL), read from `environ` by hand:
/// glibc's getenv would bring its strncmp's pages of libc text into the process (see
/// `cpu_count`).
pub fn getenv(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: `environ` is a null-terminated array of NUL-terminated "NAME=value" strings
    // that live as long as the environment; the options are read at initialisation, before
    // the program can change it from another thread.
    unsafe {
        let mut e = core::ptr::addr_of!(environ).read();
        if e.is_null() {
            return None;
        }
        while !(*e).is_null() {
            let s = core::ffi::CStr::from_ptr(*e as *const core::ffi::c_char).to_bytes();
            if let Some(v) = s.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) {
                return Some(v);
            }
            e = e.add(1);
        }
    }
    None
}

/// 64 random bits from the kernel's AT_RANDOM bytes, mixed with the clock and an address.
pub fn random_u64() -> u64 {
    // SAFETY: getauxval only reads the auxiliary vector.
    let at = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u64;
    let mut r = now_ns() ^ (&ASLR_MARKER as *const u8 as u64).rotate_left(17);
    if !at.is_null() {
        // SAFETY: AT_RANDOM points at 16 bytes the kernel placed on the initial stack.
        r ^= unsafe { core::ptr::read_unaligned(at) };
    }
    // splitmix64 finaliser so that weak inputs still give well-spread bits.
    r = (r ^ (r >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    r = (r ^ (r >> 27)).wrapping_mul(0x94d049bb133111eb);
    r ^ (r >> 31)
}
/// Its address differs per run (ASLR): a little entropy even without AT_RANDOM.
static ASLR_MARKER: u8 = 0;

/// Writes bytes to fd 2, retrying short writes; errors are ignored (nothing better to do).
pub fn write_stderr(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a valid byte slice for the duration of the call.
        let n = unsafe { libc::write(2, b.as_ptr() as *const libc::c_void, b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

pub fn abort() -> ! {
    // SAFETY: abort never returns and needs no preconditions.
    unsafe { libc::abort() }
}

/// Blocks while `*word == expected` (futex wait, private to this process).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32; the kernel only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        )
    };
}

/// Wakes one waiter blocked on `word`.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; waking has no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}

/// Yields the CPU (used while spinning on a lock whose holder may be preempted).
pub fn yield_now() {
    // SAFETY: sched_yield has no arguments and no preconditions (a syscall: see cpu_count).
    unsafe { libc::syscall(libc::SYS_sched_yield) };
}
