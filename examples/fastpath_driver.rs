//! A small driver for profiling the alloc+free fast path under `valgrind --tool=callgrind`
//! (perf counters are not available in this KVM guest).
//!
//! ```text
//! cargo build --release --example fastpath_driver
//! valgrind --tool=callgrind --dump-instr=yes target/release/examples/fastpath_driver 1000000
//! callgrind_annotate callgrind.out.<pid>
//! ```
//!
//! Runs `N` (default 1 000 000) alloc+free pairs of 64 B on a private instance, then the same
//! number of two-CAS pairs on kmem's own double word (the floor), so the annotation shows the
//! instructions per pair of each.

use std::hint::black_box;

use kmem::__BenchDWord as DWord;
use kmem::{CacheConfig, Kmem};

#[inline(never)]
fn kmem_pairs(cache: &kmem::KmemCache, n: u64) {
    for _ in 0..n {
        let p = black_box(cache.alloc().expect("kmem: out of memory"));
        // SAFETY: `p` was just allocated from `cache` and is not used again.
        unsafe { cache.free(p) };
    }
}

#[inline(never)]
fn cas_pairs(w: &DWord, n: u64) {
    let (mut v, _) = w.load();
    for _ in 0..n {
        let w = black_box(w);
        let _ = black_box(w.compare_exchange((v, v as u64), (v + 1, v as u64 + 1)));
        let _ = black_box(w.compare_exchange((v + 1, v as u64 + 1), (v + 2, v as u64 + 2)));
        v += 2;
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let k = Kmem::builder().build().expect("kmem instance");
    let cache = k
        .create_cache("driver-64", 64, CacheConfig::new())
        .expect("cache");
    kmem_pairs(&cache, n);
    let w = DWord::new();
    cas_pairs(&w, n);
    eprintln!("{:?}", cache.stats());
}
