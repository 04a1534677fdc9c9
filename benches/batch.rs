//! Batches: allocate 1000 objects of 64 B, then free all 1000 (in allocation order).
//!
//! Group `batch_1000x64B` (one group, so the ratios come from one run); criterion reports the
//! time of the whole batch and, with `Throughput::Elements(1000)`, objects per second:
//!
//! - `kmem_single`: 1000 × `KmemCache::alloc`, then 1000 × `KmemCache::free`;
//! - `kmem_single_min_partial_16`: the same on a cache with `CacheConfig::min_partial(16)`, so
//!   the node keeps the batch's empty slabs instead of returning them to the page allocator;
//! - `kmem_bulk`: one `alloc_bulk` of 1000, then one `free_bulk` of 1000;
//! - `mimalloc`, `system`: 1000 × `GlobalAlloc::alloc`, then 1000 × `dealloc` (64-byte Layout).
//!
//! A batch of 1000 × 64 B spans several slabs, so kmem's numbers include refills (the slot's
//! slow path, CPU partial lists) and frees to non-current slabs (`__slab_free`) as well as the
//! fast paths.
//!
//! Run: `cargo bench --bench batch -- --warm-up-time 1 --measurement-time 5`.

#[path = "common/mod.rs"]
mod common;

use common::ThreadTime;

use std::alloc::{GlobalAlloc, System};
use std::hint::black_box;
use std::ptr::NonNull;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmem::{CacheConfig, Kmem};
use mimalloc::MiMalloc;

const N: usize = 1000;
const SIZE: usize = 64;

fn global_alloc_batch<A: GlobalAlloc>(b: &mut criterion::Bencher<'_, ThreadTime>, a: &A) {
    let layout = common::layout(SIZE);
    let mut objs = vec![core::ptr::null_mut::<u8>(); N];
    b.iter(|| {
        for o in objs.iter_mut() {
            // SAFETY: non-zero-size layout.
            let p = unsafe { a.alloc(layout) };
            assert!(!p.is_null());
            *o = p;
        }
        black_box(&mut objs);
        for &o in objs.iter() {
            // SAFETY: each `o` came from `a.alloc(layout)` above and is freed once.
            unsafe { a.dealloc(o, layout) };
        }
    })
}

fn batch(c: &mut Criterion<ThreadTime>) {
    let pinned = common::pin_to_cpu(0);
    eprintln!("batch: clock: {}", ThreadTime::default().describe());
    eprintln!(
        "batch: pinned to CPU 0: {pinned}; kmem::cpu::method() = {:?}",
        kmem::cpu::method()
    );
    let k = Kmem::builder().build().expect("private kmem instance");
    let single = k
        .create_cache("batch-single-64", SIZE, CacheConfig::new())
        .expect("cache");
    let bulk = k
        .create_cache("batch-bulk-64", SIZE, CacheConfig::new())
        .expect("cache");

    // The same as `single`, but keeping enough empty slabs (min_partial 16, about the 16 slabs a
    // batch spans) that a batch does not give its slabs back to the page allocator.
    let keep = k
        .create_cache(
            "batch-single-64-minpartial16",
            SIZE,
            CacheConfig::new().min_partial(16),
        )
        .expect("cache");

    let mut g = c.benchmark_group("batch_1000x64B");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("kmem_single", |b| {
        let mut objs: Vec<NonNull<u8>> = Vec::with_capacity(N);
        b.iter(|| {
            objs.clear();
            for _ in 0..N {
                objs.push(single.alloc().expect("kmem: out of memory"));
            }
            black_box(&mut objs);
            for &o in objs.iter() {
                // SAFETY: allocated from `single` above, freed once.
                unsafe { single.free(o) };
            }
        })
    });
    g.bench_function("kmem_single_min_partial_16", |b| {
        let mut objs: Vec<NonNull<u8>> = Vec::with_capacity(N);
        b.iter(|| {
            objs.clear();
            for _ in 0..N {
                objs.push(keep.alloc().expect("kmem: out of memory"));
            }
            black_box(&mut objs);
            for &o in objs.iter() {
                // SAFETY: allocated from `keep` above, freed once.
                unsafe { keep.free(o) };
            }
        })
    });
    g.bench_function("kmem_bulk", |b| {
        let mut objs = vec![core::ptr::null_mut::<u8>(); N];
        b.iter(|| {
            let n = bulk.alloc_bulk(&mut objs);
            assert_eq!(n, N, "kmem: out of memory");
            black_box(&mut objs);
            // Every element is non-null (alloc_bulk filled all N), and NonNull<u8> is
            // repr(transparent) over *mut u8, so the slice can be viewed as NonNull<u8>.
            let nn: &[NonNull<u8>] =
                // SAFETY: all `n` elements are non-null, and NonNull<u8> has the layout of *mut u8.
                unsafe { core::slice::from_raw_parts(objs.as_ptr().cast(), n) };
            // SAFETY: allocated from `bulk` above, each freed once.
            unsafe { bulk.free_bulk(nn) };
        })
    });
    g.bench_function("mimalloc", |b| global_alloc_batch(b, &MiMalloc));
    g.bench_function("system", |b| global_alloc_batch(b, &System));
    g.finish();

    for cache in [&single, &keep, &bulk] {
        eprintln!("batch: {}: {:?}", cache.name(), cache.stats());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadTime::default());
    targets = batch
}
criterion_main!(benches);
