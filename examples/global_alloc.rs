//! rsmalloc as a Rust program's global allocator, with threads. Exits non-zero if the
//! allocator's own counters show it did not serve the program, or if any content is wrong.
use std::collections::HashMap;
use std::thread;

#[global_allocator]
static GLOBAL: rsmalloc::RsMalloc = rsmalloc::RsMalloc;

fn main() {
    let before = rsmalloc::stats::snapshot();
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                let mut m: HashMap<u64, Vec<u8>> = HashMap::new();
                for i in 0..20_000u64 {
                    let n = ((i * 7919 + t) % 3000) as usize;
                    m.insert(i, vec![(i % 251) as u8; n]);
                    if i % 3 == 0 {
                        m.remove(&(i / 2));
                    }
                }
                let mut big: Vec<u64> = Vec::new();
                for i in 0..300_000u64 {
                    big.push(i ^ t);
                }
                let aligned = Box::new(Aligned([t as u8; 4096]));
                assert_eq!(&*aligned as *const Aligned as usize % 4096, 0);
                assert_eq!(aligned.0[4095], t as u8);
                // check every value survived the churn
                for (k, v) in &m {
                    assert!(v.iter().all(|&b| b == (k % 251) as u8));
                }
                (m.len() as u64) + big.iter().sum::<u64>() % 1000
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let s: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let after = rsmalloc::stats::snapshot();
    assert!(
        after.cache_refills > before.cache_refills,
        "rsmalloc served nothing"
    );
    assert!(after.mapped > 0);
    println!(
        "global_alloc: ok, {} threads, checksum {}, {} chars",
        8,
        total,
        s.len()
    );
}

#[repr(align(4096))]
struct Aligned([u8; 4096]);
