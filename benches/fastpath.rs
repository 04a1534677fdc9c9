//! The alloc+free fast path of one object, against its peers and its physical floor.
//!
//! Groups `fastpath_pair_64B` and `fastpath_pair_256B` (one group per size, so every ratio
//! comes from one run). Each iteration allocates one object, passes the pointer through
//! `black_box`, and frees it:
//!
//! - `kmem_private`: a `KmemCache` of a private `Kmem::builder()` instance;
//! - `kmem_global`: a `KmemCache` created on `Kmem::global()`;
//! - `mimalloc`: `<mimalloc::MiMalloc as GlobalAlloc>::alloc` + `dealloc`, called directly;
//! - `system`: `<std::alloc::System as GlobalAlloc>::alloc` + `dealloc` (glibc malloc);
//! - `cmpxchg16b_pair`: the floor of this design — two successful LOCKed `cmpxchg16b`
//!   (`portable_atomic::AtomicU128::compare_exchange`) on one 16-byte word, which is the
//!   minimum an alloc+free pair of the `{freelist, tid}` protocol must execute;
//! - `load_cmpxchg16b_pair`: the same plus the two 16-byte atomic loads the protocol also
//!   needs (each CAS must be preceded by a load of the pair), i.e. the floor including loads;
//!   portable-atomic's load is a run-time-dispatched call to a `vmovdqa` (without `+avx`);
//! - `vmovdqa_cmpxchg16b_pair`: the same with the `vmovdqa` inlined (what `+avx` would give);
//! - `split_load_cmpxchg16b_pair`: the same with the kernel's two 8-byte loads (`tid`, then
//!   `freelist`) instead of one 16-byte load.
//!
//! The main thread is pinned to CPU 0 so that kmem's slot does not change during the run.
//! After the groups, each kmem cache's `stats()` is printed to stderr: it must be
//! overwhelmingly `alloc_fastpath`/`free_fastpath`.
//!
//! Run: `cargo bench --bench fastpath -- --warm-up-time 1 --measurement-time 5`.

#[path = "common/mod.rs"]
mod common;

use common::ThreadTime;

use std::alloc::{GlobalAlloc, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kmem::{CacheConfig, Kmem, KmemCache};
use mimalloc::MiMalloc;
use portable_atomic::{AtomicU128, Ordering};

/// The 16-byte word of the floor benches, alone on its cache line like a `KmemCacheCpu`.
#[repr(C, align(64))]
struct Word(AtomicU128);

fn kmem_pair(b: &mut criterion::Bencher<'_, ThreadTime>, cache: &KmemCache) {
    b.iter(|| {
        let p = cache.alloc().expect("kmem: out of memory");
        let p = black_box(p);
        // SAFETY: `p` was just allocated from `cache` and is not used again.
        unsafe { cache.free(p) };
    })
}

fn global_alloc_pair<A: GlobalAlloc>(
    b: &mut criterion::Bencher<'_, ThreadTime>,
    a: &A,
    size: usize,
) {
    let layout = common::layout(size);
    b.iter(|| {
        // SAFETY: `layout` has non-zero size.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        let p = black_box(p);
        // SAFETY: `p` came from `a.alloc(layout)` and is freed once.
        unsafe { a.dealloc(p, layout) };
    })
}

fn fastpath_size(
    c: &mut Criterion<ThreadTime>,
    size: usize,
    private: &KmemCache,
    global: &KmemCache,
) {
    let mut g = c.benchmark_group(format!("fastpath_pair_{size}B"));
    g.bench_function("kmem_private", |b| kmem_pair(b, private));
    g.bench_function("kmem_global", |b| kmem_pair(b, global));
    g.bench_function("mimalloc", |b| global_alloc_pair(b, &MiMalloc, size));
    g.bench_function("system", |b| global_alloc_pair(b, &System, size));
    g.bench_function("cmpxchg16b_pair", |b| {
        let w = Word(AtomicU128::new(0));
        let mut v: u128 = 0;
        b.iter(|| {
            let w = black_box(&w.0);
            // Two successful CAS, like alloc ({obj, tid} -> {next, tid'}) and free.
            let r1 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
            let r2 = w.compare_exchange(v + 1, v + 2, Ordering::AcqRel, Ordering::Acquire);
            debug_assert!(r1.is_ok() && r2.is_ok());
            let _ = black_box((r1, r2));
            v += 2;
        })
    });
    g.bench_function("load_cmpxchg16b_pair", |b| {
        let w = Word(AtomicU128::new(0));
        b.iter(|| {
            let w = black_box(&w.0);
            let v = w.load(Ordering::Acquire);
            let r1 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
            let v = w.load(Ordering::Acquire);
            let r2 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
            let _ = black_box((r1, r2));
        })
    });
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        g.bench_function("vmovdqa_cmpxchg16b_pair", |b| {
            let w = Word(AtomicU128::new(0));
            b.iter(|| {
                let w = black_box(&w.0);
                let v = vmovdqa_load(w);
                let r1 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
                let v = vmovdqa_load(w);
                let r2 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
                let _ = black_box((r1, r2));
            })
        });
    }
    g.bench_function("split_load_cmpxchg16b_pair", |b| {
        let w = Word(AtomicU128::new(0));
        b.iter(|| {
            let w = black_box(&w.0);
            let v = split_load(w);
            let r1 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
            let v = split_load(w);
            let r2 = w.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
            let _ = black_box((r1, r2));
        })
    });
    g.finish();
}

/// The 16-byte load that portable-atomic inlines when AVX is enabled at compile time
/// (`-C target-feature=+avx`): one `vmovdqa`, single-copy atomic on AVX CPUs of Intel and AMD.
/// Without that flag portable-atomic reaches the same instruction through a run-time-detected
/// function pointer (an indirect call per load).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn vmovdqa_load(w: &AtomicU128) -> u128 {
    let (lo, hi): (u64, u64);
    // The load is only used single-threaded here, so atomicity is not at stake.
    // SAFETY: `w` is a live, 16-byte-aligned AtomicU128; the caller checked AVX is available.
    unsafe {
        core::arch::asm!(
            "vmovdqa {x}, xmmword ptr [{p}]",
            "vmovq {lo}, {x}",
            "vpextrq {hi}, {x}, 1",
            p = in(reg) w.as_ptr(),
            x = out(xmm_reg) _,
            lo = out(reg) lo,
            hi = out(reg) hi,
            options(nostack, readonly, preserves_flags),
        );
    }
    (lo as u128) | ((hi as u128) << 64)
}

/// What `mm/slub.c` does instead of a 16-byte load: read `tid` (the high half), then
/// `freelist` (the low half), as two 8-byte loads; the 16-byte CAS rejects a torn pair.
#[inline(always)]
fn split_load(w: &AtomicU128) -> u128 {
    let p = w.as_ptr().cast::<core::sync::atomic::AtomicU64>();
    // Both halves are 8-byte aligned. Single-threaded here, so no mixed-size race can occur.
    // SAFETY: `p` points to the 16 live, 16-byte-aligned bytes of `w`.
    let (hi, lo) = unsafe {
        let hi = (*p.add(1)).load(core::sync::atomic::Ordering::Acquire);
        let lo = (*p).load(core::sync::atomic::Ordering::Acquire);
        (hi, lo)
    };
    (lo as u128) | ((hi as u128) << 64)
}

fn fastpath(c: &mut Criterion<ThreadTime>) {
    let pinned = common::pin_to_cpu(0);
    eprintln!("fastpath: clock: {}", ThreadTime::default().describe());
    eprintln!(
        "fastpath: pinned to CPU 0: {pinned}; kmem::cpu::method() = {:?}; current_cpu() = {}; \
         AtomicU128 lock-free: {}",
        kmem::cpu::method(),
        kmem::cpu::current_cpu(),
        AtomicU128::is_lock_free()
    );
    let k = Kmem::builder().build().expect("private kmem instance");
    eprintln!(
        "fastpath: private instance: {} CPU slots, {} node(s), slot now {}",
        k.cpus(),
        k.nodes(),
        k.current_slot()
    );
    let mut caches = Vec::new();
    for size in [64usize, 256] {
        let private = k
            .create_cache(&format!("bench-private-{size}"), size, CacheConfig::new())
            .expect("private cache");
        let global = KmemCache::new(&format!("bench-global-{size}"), size, CacheConfig::new())
            .expect("global cache");
        fastpath_size(c, size, &private, &global);
        caches.push(private);
        caches.push(global);
    }
    for cache in &caches {
        let s = cache.stats();
        let fast = s.alloc_fastpath + s.free_fastpath;
        let slow = s.alloc_slowpath + s.free_slowpath;
        eprintln!(
            "fastpath: {}: alloc_fastpath {} alloc_slowpath {} free_fastpath {} free_slowpath {} \
             cmpxchg_double_cpu_fail {} (fast share {:.6})",
            cache.name(),
            s.alloc_fastpath,
            s.alloc_slowpath,
            s.free_fastpath,
            s.free_slowpath,
            s.cmpxchg_double_cpu_fail,
            fast as f64 / (fast + slow).max(1) as f64
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadTime::default());
    targets = fastpath
}
criterion_main!(benches);
