//! Criterion benches: rsmalloc next to the system allocator (glibc, called through its
//! `__libc_malloc`/`__libc_free` entry points, since linking this crate makes `malloc` itself
//! rsmalloc's) in the same groups.
//!
//! * `pair/<size>`: one malloc+free pair on the fast path, per size class.
//! * `batch/<k>`: allocate k blocks of 64 B, then free them all.
//! * `cross_thread/<k>`: allocate k blocks of 64 B here, free them on another thread.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

extern "C" {
    fn __libc_malloc(n: usize) -> *mut u8;
    fn __libc_free(p: *mut u8);
}

#[derive(Clone, Copy)]
struct Allocator {
    name: &'static str,
    malloc: fn(usize) -> *mut u8,
    free: fn(*mut u8),
}

fn sys_malloc(n: usize) -> *mut u8 {
    // SAFETY: glibc's allocator entry point; any size is a valid request.
    unsafe { __libc_malloc(n) }
}
fn sys_free(p: *mut u8) {
    // SAFETY: p came from __libc_malloc.
    unsafe { __libc_free(p) }
}
fn rs_malloc(n: usize) -> *mut u8 {
    rsmalloc::abi::malloc(n) as *mut u8
}
fn rs_free(p: *mut u8) {
    rsmalloc::abi::free(p as *mut core::ffi::c_void)
}

const ALLOCATORS: [Allocator; 2] = [
    Allocator {
        name: "system",
        malloc: sys_malloc,
        free: sys_free,
    },
    Allocator {
        name: "rsmalloc",
        malloc: rs_malloc,
        free: rs_free,
    },
];

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    for size in [16usize, 64, 256, 1024, 4096, 16384, 32768] {
        for a in ALLOCATORS {
            g.bench_with_input(BenchmarkId::new(a.name, size), &size, |b, &size| {
                b.iter(|| {
                    let p = (a.malloc)(black_box(size));
                    (a.free)(black_box(p));
                })
            });
        }
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for k in [100usize, 1000, 10000] {
        for a in ALLOCATORS {
            let mut v: Vec<*mut u8> = Vec::with_capacity(k);
            g.bench_with_input(BenchmarkId::new(a.name, k), &k, |b, &k| {
                b.iter(|| {
                    for _ in 0..k {
                        v.push((a.malloc)(black_box(64)));
                    }
                    for p in v.drain(..) {
                        (a.free)(p);
                    }
                })
            });
        }
    }
    g.finish();
}

struct Batch(Vec<*mut u8>, fn(*mut u8));
// SAFETY: the blocks are handed over whole; the sender keeps no reference to them.
unsafe impl Send for Batch {}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_thread");
    let k = 1000usize;
    for a in ALLOCATORS {
        let (to_worker, jobs) = mpsc::sync_channel::<Batch>(4);
        let (done_tx, done) = mpsc::channel::<Vec<*mut u8>>();
        struct Back(mpsc::Sender<Vec<*mut u8>>);
        // SAFETY: only empty vectors travel back.
        unsafe impl Send for Back {}
        let back = Back(done_tx);
        let worker = std::thread::spawn(move || {
            let back = back;
            for Batch(mut v, free) in jobs {
                for p in v.drain(..) {
                    free(p);
                }
                let _ = back.0.send(v);
            }
        });
        g.bench_with_input(BenchmarkId::new(a.name, k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut v = Vec::with_capacity(k);
                for _ in 0..iters {
                    let t = Instant::now();
                    for _ in 0..k {
                        v.push((a.malloc)(64));
                    }
                    to_worker.send(Batch(v, a.free)).unwrap();
                    v = done.recv().unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
        drop(to_worker);
        worker.join().unwrap();
    }
    g.finish();
}

criterion_group!(benches, pair, batch, cross_thread);
criterion_main!(benches);
