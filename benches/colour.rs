//! Slab colouring (`CacheConfig::colour`, issue 15): objects of several slabs that collide in
//! the same cache sets.
//!
//! Group `colour_walk_512x2560B`: two caches of 2560-byte objects in one-page slabs (one object
//! per slab, 1536 bytes spare), 512 objects each — 512 slabs, 2 MiB. Each iteration reads the
//! first word of every object, in allocation order, and sums them:
//!
//! - `plain`: no colouring, so every object starts on a page boundary: all 512 first lines
//!   share one L1 set (4 KiB-apart addresses: 64 sets × 64 B) and a handful of L2 sets, far more
//!   lines than those sets have ways;
//! - `coloured`: `CacheConfig::colour(true)`: successive slabs put their object 0, 64, …,
//!   1536 bytes in (25 colours), spreading the lines over 25 L1 sets.
//!
//! Also `alloc_free_pair`: one alloc+free of each cache (the cost of colouring itself: a
//! coloured cache checks every free out of line).
//!
//! Run: `cargo bench --bench colour -- --warm-up-time 1 --measurement-time 4`.

#[path = "common/mod.rs"]
mod common;

use common::ThreadTime;

use std::hint::black_box;
use std::ptr::NonNull;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmem::{CacheConfig, Kmem, KmemCache};

const N: usize = 512;
const SIZE: usize = 2560;

fn filled(c: &KmemCache) -> Vec<NonNull<u8>> {
    (0..N)
        .map(|i| {
            let p = c.alloc().expect("memory");
            // SAFETY: a live object of SIZE bytes.
            unsafe { p.cast::<u64>().write(i as u64) };
            p
        })
        .collect()
}

fn walk(b: &mut criterion::Bencher<'_, ThreadTime>, objs: &[NonNull<u8>]) {
    b.iter(|| {
        let mut sum = 0u64;
        for p in objs {
            // SAFETY: live objects whose first word was written by `filled`.
            sum = sum.wrapping_add(unsafe { p.cast::<u64>().read() });
        }
        black_box(sum)
    })
}

fn colour(c: &mut Criterion<ThreadTime>) {
    let pinned = common::pin_to_cpu(0);
    eprintln!(
        "colour: clock: {}; pinned to CPU 0: {pinned}",
        ThreadTime::default().describe()
    );
    let k = Kmem::builder().build().expect("private kmem instance");
    let cfg = CacheConfig::new().max_order(0);
    let plain = k
        .create_cache("colour-plain-2560", SIZE, cfg.clone())
        .expect("cache");
    let coloured = k
        .create_cache("colour-on-2560", SIZE, cfg.colour(true))
        .expect("cache");
    let (p, q) = (filled(&plain), filled(&coloured));
    let distinct = |v: &[NonNull<u8>]| {
        let mut o: Vec<usize> = v.iter().map(|p| p.as_ptr() as usize % 4096).collect();
        o.sort_unstable();
        o.dedup();
        o.len()
    };
    eprintln!(
        "colour: page offsets of the objects: plain {}, coloured {}",
        distinct(&p),
        distinct(&q)
    );
    let mut g = c.benchmark_group("colour_walk_512x2560B");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("plain", |b| walk(b, &p));
    g.bench_function("coloured", |b| walk(b, &q));
    g.finish();
    let mut g = c.benchmark_group("colour_alloc_free_pair_2560B");
    for (name, cache) in [("plain", &plain), ("coloured", &coloured)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = cache.alloc().expect("memory");
                let o = black_box(o);
                // SAFETY: `o` was just allocated from `cache` and is not used again.
                unsafe { cache.free(o) };
            })
        });
    }
    g.finish();
    // SAFETY: every pointer came from its cache and is freed once.
    unsafe {
        plain.free_bulk(&p);
        coloured.free_bulk(&q);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadTime::default());
    targets = colour
}
criterion_main!(benches);
