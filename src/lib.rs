//! rsmalloc: a per-thread-cache bucket allocator that replaces malloc in C and C++ programs.
//!
//! Data flows one way: C ABI (`abi`) → front (`heap`) → thread cache (`tcache`) → arenas
//! (`arena`) → chunks and spans (`span`) → OS (`os`). Huge objects go from the front to
//! `huge`; `pagemap` maps addresses to their owners; `init` runs the process and thread life
//! cycle. See `config` for the layout's vocabulary.
//!
//! The shared library (`make lib`, built with `--cfg rsmalloc_so`) on x86-64 Linux is `no_std`: no Rust
//! runtime, no unwinder, no `libgcc_s`, and a panic handler that writes one line from a stack
//! buffer and aborts, so even a bug cannot make the allocator call malloc. Built any other way
//! (the rlib for Rust programs, tests) it links `std` like any Rust crate.
#![cfg_attr(all(rsmalloc_so, target_arch = "x86_64", target_os = "linux"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
// The C++ operator names are mangled symbols, not Rust names.
#![allow(non_snake_case)]

pub mod abi;
mod arena;
pub mod config;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod cxx;
mod global;
mod heap;
mod huge;
mod init;
mod lock;
mod os;
mod pagemap;
mod pages;
mod region;
mod report;
pub mod size_class;
mod span;
pub mod stats;
mod tcache;
mod tls;

pub use global::RsMalloc;

/// A panic is a bug in rsmalloc: say where, then abort (no unwinding, no allocation).
#[cfg(all(rsmalloc_so, target_arch = "x86_64", target_os = "linux"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    report::internal_error(info.location().map(|l| (l.file(), l.line())))
}
