//! Fuzz target: the input bytes are a sequence of allocator operations (malloc, calloc,
//! realloc, memalign, aligned_alloc, posix_memalign, free, free_sized, malloc_usable_size)
//! on 64 slots, applied to rsmalloc through its C ABI functions (`rsmalloc::abi`), and
//! checked against a shadow model: every live block holds a pattern of (tag, offset) that is
//! verified before it is freed or reallocated and, at the end of every input, for every
//! live block (so that overlapping blocks show); calloc memory must be zero; alignments and
//! usable sizes must hold; realloc must keep the contents. At the end of each input every
//! block is freed and `rsmalloc_check()` walks the allocator's invariants.
//!
//! The target binary links rsmalloc, whose exported `malloc` & co. then serve the whole
//! process (libFuzzer included), so it runs without a sanitizer (`-s none`).
#![no_main]

use core::ffi::c_void;
use libfuzzer_sys::fuzz_target;
use rsmalloc::abi;

const SLOTS: usize = 64;
const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Copy)]
struct Slot {
    p: *mut u8,
    size: usize,
    tag: u64,
}

fn pattern_byte(tag: u64, i: usize) -> u8 {
    ((tag ^ (i as u64 / 8).wrapping_mul(K)) >> (8 * (i % 8))) as u8
}

fn fill(p: *mut u8, from: usize, to: usize, tag: u64) {
    // SAFETY: callers pass a live block of at least `to` bytes.
    let s = unsafe { core::slice::from_raw_parts_mut(p, to) };
    for (i, b) in s.iter_mut().enumerate().skip(from) {
        *b = pattern_byte(tag, i);
    }
}

fn verify(s: &Slot, what: &str) {
    // SAFETY: `s` is a live block of at least `s.size` bytes.
    let b = unsafe { core::slice::from_raw_parts(s.p, s.size) };
    for (i, &v) in b.iter().enumerate() {
        if v != pattern_byte(s.tag, i) {
            panic!(
                "{what}: block {:p} ({} bytes) corrupted at offset {i}: {v:#04x}, expected {:#04x}",
                s.p,
                s.size,
                pattern_byte(s.tag, i)
            );
        }
    }
}

/// Reads bytes from the input, zero when it runs out.
struct Input<'a> {
    d: &'a [u8],
    i: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let v = self.d.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }
    fn u16(&mut self) -> usize {
        self.u8() as usize | (self.u8() as usize) << 8
    }
    fn done(&self) -> bool {
        self.i >= self.d.len()
    }
    /// A size: mostly small, sometimes large (page runs) or huge (own mapping).
    fn size(&mut self) -> usize {
        let sel = self.u8();
        let v = self.u16();
        match sel % 16 {
            0..=7 => v % 257,
            8..=11 => v % 4097,
            12 => v % 32769,
            13 => 32768 + v * 15,           // up to ~1 MiB: large
            14 => (1 << 20) - 64 + v % 128, // around the large/huge border
            _ => (1 << 20) + v * 48,        // up to ~4 MiB: huge
        }
    }
    fn align(&mut self) -> usize {
        let e = self.u8() % 22; // 1 .. 2 MiB
        1 << e
    }
}

fn usable(p: *mut u8) -> usize {
    abi::malloc_usable_size(p as *mut c_void)
}

fn adopt(slot: &mut Option<Slot>, p: *mut u8, size: usize, align: usize, zero: bool, tag: u64, what: &str) {
    assert!(!p.is_null(), "{what}({size}, align {align}) returned NULL");
    assert_eq!(p as usize % align.max(16), 0, "{what}({size}, align {align}) = {p:p} misaligned");
    let u = usable(p);
    assert!(u >= size, "{what}({size}): usable size {u} < size");
    if zero {
        // SAFETY: a live block of `size` bytes.
        let b = unsafe { core::slice::from_raw_parts(p, size) };
        if let Some(i) = b.iter().position(|&v| v != 0) {
            panic!("calloc({size}) = {p:p} not zero at offset {i}");
        }
    }
    fill(p, 0, size, tag);
    *slot = Some(Slot { p, size, tag });
}

fn release(s: Slot, how: u8) {
    verify(&s, "free");
    match how % 3 {
        0 => abi::free(s.p as *mut c_void),
        1 => abi::free_sized(s.p as *mut c_void, s.size),
        _ => abi::free(s.p as *mut c_void),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut slots: [Option<Slot>; SLOTS] = [None; SLOTS];
    let mut inp = Input { d: data, i: 0 };
    let mut tag: u64 = 0x1234_5678;
    let mut ops = 0;
    while !inp.done() && ops < 2000 {
        ops += 1;
        tag = tag.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let op = inp.u8();
        let i = inp.u8() as usize % SLOTS;
        match op % 10 {
            // allocate into slot i (freeing what was there)
            0..=3 => {
                if let Some(s) = slots[i].take() {
                    release(s, op);
                }
                let size = inp.size();
                match op % 10 {
                    0 => {
                        let p = abi::malloc(size) as *mut u8;
                        adopt(&mut slots[i], p, size, 16, false, tag, "malloc");
                    }
                    1 => {
                        let n = (inp.u8() % 8 + 1) as usize;
                        let m = size / n + 1;
                        let p = abi::calloc(n, m) as *mut u8;
                        adopt(&mut slots[i], p, n * m, 16, true, tag, "calloc");
                    }
                    2 => {
                        let a = inp.align();
                        let p = abi::memalign(a, size) as *mut u8;
                        adopt(&mut slots[i], p, size, a, false, tag, "memalign");
                    }
                    _ => {
                        let a = inp.align().max(8);
                        let mut p: *mut c_void = core::ptr::null_mut();
                        // SAFETY: `p` is a valid out-parameter.
                        let r = unsafe { abi::posix_memalign(&mut p, a, size) };
                        assert_eq!(r, 0, "posix_memalign({a}, {size}) = {r}");
                        adopt(&mut slots[i], p as *mut u8, size, a, false, tag, "posix_memalign");
                    }
                }
            }
            4 => {
                let size = inp.size();
                let a = inp.align();
                if let Some(s) = slots[i].take() {
                    release(s, op);
                }
                let p = abi::aligned_alloc(a, size) as *mut u8;
                adopt(&mut slots[i], p, size, a, false, tag, "aligned_alloc");
            }
            // realloc slot i (NULL slot: realloc(NULL) = malloc)
            5 | 6 => {
                let size = inp.size().max(1);
                match slots[i].take() {
                    None => {
                        let p = abi::realloc(core::ptr::null_mut(), size) as *mut u8;
                        adopt(&mut slots[i], p, size, 16, false, tag, "realloc(NULL)");
                    }
                    Some(s) => {
                        verify(&s, "realloc");
                        let p = abi::realloc(s.p as *mut c_void, size) as *mut u8;
                        assert!(!p.is_null(), "realloc({:p}, {size}) = NULL", s.p);
                        assert_eq!(p as usize % 16, 0, "realloc result {p:p} misaligned");
                        let keep = s.size.min(size);
                        let kept = Slot { p, size: keep, tag: s.tag };
                        verify(&kept, "contents after realloc");
                        fill(p, keep, size, s.tag);
                        assert!(usable(p) >= size, "realloc: usable {} < {size}", usable(p));
                        slots[i] = Some(Slot { p, size, tag: s.tag });
                    }
                }
            }
            // free
            7 | 8 => {
                if let Some(s) = slots[i].take() {
                    release(s, op);
                }
            }
            // usable size: write into the whole usable size
            _ => {
                if let Some(s) = slots[i].as_mut() {
                    verify(s, "malloc_usable_size");
                    let u = usable(s.p);
                    assert!(u >= s.size, "malloc_usable_size {u} < {}", s.size);
                    let u = u.min(s.size + 65536);
                    fill(s.p, s.size, u, s.tag);
                    s.size = u;
                }
            }
        }
    }
    // every live block intact (overlaps would show here), then free everything
    for s in slots.iter().flatten() {
        verify(s, "end of input");
    }
    for s in slots.iter_mut() {
        if let Some(b) = s.take() {
            release(b, 0);
        }
    }
    abi::rsmalloc_check();
});
