//! Deferred frees: ns per free, three ways, each after allocating the object (64 B).
//!
//! Group `free_64B` (`Throughput::Elements(1000)`; criterion reports time per batch of 1000):
//!
//! - `kmem_free`: `KmemCache::alloc` + `KmemCache::free` (the baseline);
//! - `kmem_free_deferred`: `KmemCache::alloc` + `KmemCache::free_deferred` under a fresh
//!   `epoch::pin()` guard each time (per-CPU batches of 64 handed to crossbeam as one closure);
//! - `epoch_defer_destroy_box`: `Box::new` (system allocator) + crossbeam-epoch's
//!   `Guard::defer_destroy` of an `Owned` under a fresh `epoch::pin()` (one closure per object).
//!
//! Clock: the benching thread's CPU time (`benches/common`, as `batch` and `fastpath`), thread
//! pinned to CPU 0. Nobody else is pinned, so the epoch advances and garbage is collected as the run goes: the
//! figures include running the deferred frees.
//!
//! Run: `cargo bench --bench deferred -- --warm-up-time 1 --measurement-time 3`.

#[path = "common/mod.rs"]
mod common;

use common::ThreadTime;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmem::epoch::{self, Owned};
use kmem::{CacheConfig, Kmem};

const N: usize = 1000;

fn bench(c: &mut Criterion<ThreadTime>) {
    let _pinned = common::pin_to_cpu(0);
    eprintln!("deferred: clock: {}", ThreadTime::default().describe());
    let k = Kmem::builder().build().unwrap();
    let cache = k
        .create_cache("bench-deferred", 64, CacheConfig::new())
        .unwrap();
    let mut g = c.benchmark_group("free_64B");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("kmem_free", |b| {
        b.iter(|| {
            for _ in 0..N {
                let p = black_box(cache.alloc().unwrap());
                // SAFETY: from `cache`, freed once.
                unsafe { cache.free(p) };
            }
        })
    });
    g.bench_function("kmem_free_deferred", |b| {
        b.iter(|| {
            for _ in 0..N {
                let p = black_box(cache.alloc().unwrap());
                // SAFETY: from `cache`, freed once.
                unsafe { cache.free_deferred(p, &epoch::pin()) };
            }
        })
    });
    g.bench_function("epoch_defer_destroy_box", |b| {
        b.iter(|| {
            for _ in 0..N {
                let guard = epoch::pin();
                let p = Owned::new([0u64; 8]).into_shared(&guard);
                // SAFETY: `p` was never shared; destroyed once.
                unsafe { guard.defer_destroy(black_box(p)) };
            }
        })
    });
    g.finish();
    cache.flush_deferred(&epoch::pin());
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadTime::default());
    targets = bench
}
criterion_main!(benches);
