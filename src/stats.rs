//! Process-wide counters, updated off the fast path with relaxed atomics (approximate under
//! races, never torn). Read by `rsmalloc_stats` and the tests.

use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

use crate::config::PAGE_SIZE;
use crate::report::{Sink, Writer};
use crate::size_class::NCLASSES;

static MAPPED: AtomicIsize = AtomicIsize::new(0);
static ACTIVE_PAGES: AtomicIsize = AtomicIsize::new(0);
static PURGED_PAGES: AtomicUsize = AtomicUsize::new(0);
static HUGE_BYTES: AtomicIsize = AtomicIsize::new(0);
static HUGE_COUNT: AtomicIsize = AtomicIsize::new(0);
static THREADS: AtomicIsize = AtomicIsize::new(0);
static CACHE_REFILLS: AtomicUsize = AtomicUsize::new(0);
static CACHE_FLUSHES: AtomicUsize = AtomicUsize::new(0);
static CACHE_GROWTHS: AtomicUsize = AtomicUsize::new(0);

pub fn add_mapped(b: isize) {
    MAPPED.fetch_add(b, Relaxed);
}
pub fn add_active_pages(n: isize) {
    ACTIVE_PAGES.fetch_add(n, Relaxed);
}
pub fn add_purged_pages(n: usize) {
    PURGED_PAGES.fetch_add(n, Relaxed);
}
/// Bytes of pages the arenas hand out (spans and page runs).
pub fn arena_active_bytes() -> usize {
    ACTIVE_PAGES.load(Relaxed).max(0) as usize * PAGE_SIZE
}
pub fn add_huge(bytes: isize, count: isize) {
    HUGE_BYTES.fetch_add(bytes, Relaxed);
    HUGE_COUNT.fetch_add(count, Relaxed);
}
/// In a forked child: only the forking thread is left.
pub fn set_threads(n: isize) {
    THREADS.store(n, Relaxed);
}
/// Adds `n` to the threads with a cache; returns the new count.
pub fn add_threads(n: isize) -> isize {
    THREADS.fetch_add(n, Relaxed) + n
}
pub fn count_refill() {
    CACHE_REFILLS.fetch_add(1, Relaxed);
}
pub fn count_flush() {
    CACHE_FLUSHES.fetch_add(1, Relaxed);
}
/// A thread-cache stack grew past its starting capacity (report only, not in `Snapshot`).
pub fn count_growth() {
    CACHE_GROWTHS.fetch_add(1, Relaxed);
}

/// A snapshot of the counters; the layout is part of the C API (`include/rsmalloc.h`).
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct Snapshot {
    /// Bytes of address space mapped for chunks and huge objects.
    pub mapped: usize,
    /// Bytes in pages holding spans or large objects.
    pub active: usize,
    /// Bytes of huge objects (own mappings).
    pub huge: usize,
    pub huge_count: usize,
    /// Pages given back with MADV_DONTNEED since start (in bytes).
    pub purged: usize,
    /// Threads with a live thread cache.
    pub threads: usize,
    pub cache_refills: usize,
    pub cache_flushes: usize,
}

pub fn snapshot() -> Snapshot {
    let pos = |v: isize| v.max(0) as usize;
    Snapshot {
        mapped: pos(MAPPED.load(Relaxed)) + pos(HUGE_BYTES.load(Relaxed)),
        active: pos(ACTIVE_PAGES.load(Relaxed)) * PAGE_SIZE,
        huge: pos(HUGE_BYTES.load(Relaxed)),
        huge_count: pos(HUGE_COUNT.load(Relaxed)),
        purged: PURGED_PAGES.load(Relaxed) * PAGE_SIZE,
        threads: pos(THREADS.load(Relaxed)),
        cache_refills: CACHE_REFILLS.load(Relaxed),
        cache_flushes: CACHE_FLUSHES.load(Relaxed),
    }
}

/// Resident bytes of the process (from /proc/self/statm; 0 if unreadable). No allocation.
pub fn resident_bytes() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; open/read/close on our own descriptor and stack buffer.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return 0;
    }
    // second field: resident pages
    let mut fields = buf[..n as usize].split(|&b| b == b' ');
    let _ = fields.next();
    let pages = fields
        .next()
        .map(|f| {
            f.iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0usize, |v, &b| v * 10 + (b - b'0') as usize)
        })
        .unwrap_or(0);
    pages * crate::os::OS_PAGE
}

/// The human-readable report (malloc_stats, RSMALLOC_STATS=1 at exit). With `wait` false
/// (at exit, when other threads may be stopped inside the allocator) locked arenas are
/// skipped instead of waited for.
pub fn write_report(w: &mut Writer, wait: bool) {
    let s = snapshot();
    let requests = crate::tcache::requests(wait);
    let total_requests: u64 = requests.iter().sum();
    w.str("___ rsmalloc statistics (")
        .bytes(crate::abi::version_bytes())
        .str(") ___\n");
    w.str("options:");
    for (k, v) in crate::config::current() {
        w.str(" ").str(k).str("=").dec(v);
    }
    w.str("\nmapped: ")
        .dec(s.mapped as u64)
        .str(" B  active: ")
        .dec(s.active as u64);
    w.str(" B  resident: ")
        .dec(resident_bytes() as u64)
        .str(" B  released (purged, total): ");
    w.dec(s.purged as u64).str(" B\n");
    w.str("huge: ")
        .dec(s.huge as u64)
        .str(" B in ")
        .dec(s.huge_count as u64)
        .str(" mappings\n");
    if let Some((hits, misses, evicted, uncached, cached)) = crate::huge::cache_counters(wait) {
        w.str("huge cache: ")
            .dec(cached as u64)
            .str(" B  hits: ")
            .dec(hits);
        w.str("  misses: ")
            .dec(misses)
            .str("  evicted: ")
            .dec(evicted);
        w.str("  unmapped at free: ").dec(uncached).str("\n");
    }
    if let Some(c) = crate::region::counters(wait) {
        w.str("huge heap: regions ")
            .dec(c[0])
            .str("  live granules ")
            .dec(c[1]);
        w.str("  dirty granules ")
            .dec(c[2])
            .str("  grown in place ")
            .dec(c[3]);
        w.str("  purged B: decay ")
            .dec(c[4])
            .str(" budget ")
            .dec(c[5]);
        w.str(" other ").dec(c[6]).str("\n");
    }
    w.str("threads with a cache: ")
        .dec(s.threads as u64)
        .str("  cache refills: ")
        .dec(s.cache_refills as u64);
    w.str("  flushes: ")
        .dec(s.cache_flushes as u64)
        .str("  growths: ")
        .dec(CACHE_GROWTHS.load(Relaxed) as u64)
        .str("  hit rate: ");
    let hit_permille = (s.cache_refills as u64 * 1000)
        .checked_div(total_requests)
        .map_or(0, |miss| 1000 - miss.min(1000));
    w.dec(hit_permille / 10)
        .str(".")
        .dec(hit_permille % 10)
        .str("%\n");
    let mut taken = [0u64; NCLASSES];
    let mut returned = [0u64; NCLASSES];
    let mut spans = [0u64; NCLASSES];
    let heap = if wait {
        Some(crate::pages::lock())
    } else {
        crate::pages::try_lock()
    };
    match heap {
        Some(h) => {
            w.str("page heap: chunks ")
                .dec(h.nchunks as u64)
                .str("  active_pages ")
                .dec(h.active as u64)
                .str("  dirty_pages ")
                .dec(h.dirty as u64)
                .str("\n");
        }
        None => {
            w.str("page heap: (busy)\n");
        }
    }
    w.str("arena  span_pages\n");
    for a in 0..crate::config::narenas() {
        let g = if wait {
            crate::arena::lock(a)
        } else {
            match crate::arena::try_lock(a) {
                Some(g) => g,
                None => {
                    w.dec_w(a as u64, 5).str("  (busy)\n");
                    continue;
                }
            }
        };
        for c in 0..NCLASSES {
            taken[c] += g.taken[c];
            returned[c] += g.returned[c];
            spans[c] += g.spans[c] as u64;
        }
        if g.active == 0 {
            continue;
        }
        w.dec_w(a as u64, 5).dec_w(g.active as u64, 12).str("\n");
    }
    w.str("class   size      requests  live_blocks  spans\n");
    for c in 0..NCLASSES {
        if requests[c] == 0 && taken[c] == 0 {
            continue;
        }
        // blocks out of their spans: in use by the program or held by thread caches
        let live = taken[c].saturating_sub(returned[c]);
        w.dec_w(c as u64, 5)
            .dec_w(crate::size_class::info(c).size as u64, 7)
            .dec_w(requests[c], 14);
        w.dec_w(live, 13).dec_w(spans[c], 7).str("\n");
    }
    w.flush();
}

/// The report as malloc_info's XML.
pub fn write_xml(w: &mut Writer) {
    let s = snapshot();
    w.str("<malloc version=\"rsmalloc-")
        .str(env!("CARGO_PKG_VERSION"))
        .str("\">\n");
    w.str("<total type=\"mapped\" size=\"")
        .dec(s.mapped as u64)
        .str("\"/>\n");
    w.str("<total type=\"active\" size=\"")
        .dec(s.active as u64)
        .str("\"/>\n");
    w.str("<total type=\"huge\" count=\"")
        .dec(s.huge_count as u64)
        .str("\" size=\"")
        .dec(s.huge as u64)
        .str("\"/>\n");
    w.str("<total type=\"purged\" size=\"")
        .dec(s.purged as u64)
        .str("\"/>\n");
    w.str("<system type=\"current\" size=\"")
        .dec(resident_bytes() as u64)
        .str("\"/>\n");
    w.str("</malloc>\n");
    w.flush();
}

/// RSMALLOC_STATS=1: the report when the process exits (a .fini_array entry: runs after
/// main returns or exit() is called, without registering anything at run time).
extern "C" fn report_at_exit() {
    if crate::config::STATS_AT_EXIT.load(Relaxed) {
        write_report(&mut Writer::new(Sink::Stderr), false);
    }
}

#[used]
#[link_section = ".fini_array"]
static REPORT_AT_EXIT: extern "C" fn() = report_at_exit;
