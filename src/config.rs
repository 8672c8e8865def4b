//! Every constant of the layout, and the options read once from the environment.
//!
//! Glossary: a *chunk* is a 4 MiB-aligned mapping owned by one arena; it is cut into 256
//! *pages* of 16 KiB, the first few holding the chunk header. A *span* is a run of pages
//! holding blocks of one size class (or one large object). A *huge* object has a mapping of
//! its own.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub const CHUNK_SHIFT: usize = 22;
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
pub const PAGE_SHIFT: usize = 14;
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
pub const PAGES_PER_CHUNK: usize = CHUNK_SIZE / PAGE_SIZE;
/// Largest size served from size classes (and thread caches).
pub const SMALL_MAX: usize = 32 * 1024;
/// Largest size served as a page run inside a chunk; above it an object gets its own mapping.
pub const LARGE_MAX: usize = 1 << 20;
/// Upper bound on the number of arenas (the static array's length).
pub const MAX_ARENAS: usize = 64;
/// Every block is aligned to this.
pub const MIN_ALIGN: usize = 16;

/// Number of arenas in use (set once at initialisation).
pub static NARENAS: AtomicU32 = AtomicU32::new(1);
/// Dirty pages are purged after between one and two of these periods.
pub static PURGE_EPOCH_NS: AtomicU64 = AtomicU64::new(250_000_000);

pub fn narenas() -> usize {
    NARENAS.load(Relaxed) as usize
}

fn env(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated by every caller; getenv neither allocates nor keeps it.
    let p = unsafe { libc::getenv(name.as_ptr() as *const libc::c_char) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string that lives as long as the environment.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

fn read_number(name: &[u8], min: u64, max: u64) -> Option<u64> {
    let raw = env(name)?;
    match parse_u64(raw) {
        Some(v) if v >= min && v <= max => Some(v),
        _ => {
            crate::report::warn(&[
                b"bad value for ",
                &name[..name.len() - 1],
                b" (ignored, default kept): ",
                raw,
            ]);
            None
        }
    }
}

/// Reads the options once, at process initialisation. Never allocates.
pub fn init(cpus: usize) {
    let default = (4 * cpus).clamp(1, MAX_ARENAS) as u64;
    let n = read_number(b"RSMALLOC_ARENAS\0", 1, MAX_ARENAS as u64).unwrap_or(default);
    NARENAS.store(n as u32, Relaxed);
    if let Some(ms) = read_number(b"RSMALLOC_PURGE_DELAY_MS\0", 0, 3_600_000) {
        // pages are purged after one to two epochs: an epoch of half the delay
        PURGE_EPOCH_NS.store(ms * 1_000_000 / 2, Relaxed);
    }
    if let Some(v) = read_number(b"RSMALLOC_THP\0", 0, 1) {
        crate::os::set_thp(v == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_plain_decimal_only() {
        assert_eq!(parse_u64(b"42"), Some(42));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"4x"), None);
        assert_eq!(parse_u64(b"-1"), None);
    }
}
