//! The alloc+free fast path of one object, against its peers and its physical floor.
//!
//! Groups `fastpath_pair_64B` and `fastpath_pair_256B` (one group per size, so every ratio
//! comes from one run). Each iteration allocates one object, passes the pointer through
//! `black_box`, and frees it:
//!
//! - `kmem_private`: a `KmemCache` of a private `Kmem::builder()` instance;
//! - `kmem_private_sheaves`: the same with sheaves (`default_sheaf_capacity(size)`): a pop and
//!   a push on the CPU's sheaf;
//! - `kmem_global`: a `KmemCache` created on `Kmem::global()`;
//! - `kmalloc`: `<kmem::Kmalloc as GlobalAlloc>::alloc` + `dealloc`, called directly (the
//!   global allocator's path: size class, then the same fast paths; sheaves unless
//!   `KMEM_SHEAVES=0`);
//! - `mimalloc`: `<mimalloc::MiMalloc as GlobalAlloc>::alloc` + `dealloc`, called directly;
//! - `jemalloc`: `<tikv_jemallocator::Jemalloc as GlobalAlloc>::alloc` + `dealloc` (jemalloc's
//!   `mallocx` and `sdallocx`), called directly;
//! - `system`: `<std::alloc::System as GlobalAlloc>::alloc` + `dealloc` (glibc malloc);
//! - `cmpxchg16b_pair`: the floor of this design — two successful LOCKed `cmpxchg16b` (kmem's
//!   own inline-assembly double word, exactly what the fast paths execute) on one 16-byte word,
//!   which is the minimum an alloc+free pair of the `{freelist, tid}` protocol must execute;
//! - `load_cmpxchg16b_pair`: the same plus the two 16-byte atomic loads (`vmovdqa` on AVX
//!   CPUs, inlined) a protocol that reads the pair whole would need;
//! - `split_load_cmpxchg16b_pair`: the same with the kernel's two 8-byte loads (`tid`, then
//!   `freelist`) instead of one 16-byte load — what kmem's locked-mode fast paths do;
//! - `rseq_pop_push_pair` (rseq mode only): one pop and one push restartable sequence
//!   (`src/cpu/percpu.rs`) on a private slot array — the rseq mode's floor.
//!
//! `kmem_private`/`kmem_global` run in the process's commit mode (`KMEM_RSEQ=0` forces the
//! locked one); `scripts/bench-rseq.sh` runs both modes side by side.
//!
//! The main thread is pinned to CPU 0 so that kmem's slot does not change during the run.
//! After the groups, each kmem cache's `stats()` is printed to stderr: it must be
//! overwhelmingly `alloc_fastpath`/`free_fastpath` (`alloc_cpu_sheaf`/`free_cpu_sheaf` for the
//! sheaf cache).
//!
//! Run: `cargo bench --bench fastpath -- --warm-up-time 1 --measurement-time 5`.

#[path = "common/mod.rs"]
mod common;

use common::ThreadTime;

use std::alloc::{GlobalAlloc, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
/// kmem's own double word (the very `lock cmpxchg16b` / loads of the fast paths), alone on its
/// cache line like a `KmemCacheCpu`.
use kmem::__BenchDWord as DWord;
use kmem::{CacheConfig, Kmem, KmemCache};
use mimalloc::MiMalloc;

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
    sheaves: &KmemCache,
    global: &KmemCache,
) {
    let mut g = c.benchmark_group(format!("fastpath_pair_{size}B"));
    g.bench_function("kmem_private", |b| kmem_pair(b, private));
    g.bench_function("kmem_private_sheaves", |b| kmem_pair(b, sheaves));
    g.bench_function("kmem_global", |b| kmem_pair(b, global));
    g.bench_function("kmalloc", |b| {
        global_alloc_pair(b, &kmem::Kmalloc::new(), size)
    });
    g.bench_function("mimalloc", |b| global_alloc_pair(b, &MiMalloc, size));
    g.bench_function("jemalloc", |b| {
        global_alloc_pair(b, &tikv_jemallocator::Jemalloc, size)
    });
    g.bench_function("system", |b| global_alloc_pair(b, &System, size));
    g.bench_function("cmpxchg16b_pair", |b| {
        let w = DWord::new();
        let mut v: usize = 0;
        b.iter(|| {
            let w = black_box(&w);
            // Two successful CAS, like alloc ({obj, tid} -> {next, tid'}) and free.
            let r1 = w.compare_exchange((v, v as u64), (v + 1, v as u64 + 1));
            let r2 = w.compare_exchange((v + 1, v as u64 + 1), (v + 2, v as u64 + 2));
            debug_assert!(r1 && r2);
            let _ = black_box((r1, r2));
            v += 2;
        })
    });
    if kmem::cpu::commit_mode() == kmem::cpu::CommitMode::Rseq {
        g.bench_function("rseq_pop_push_pair", |b| {
            // The rseq mode's floor: one pop and one push sequence on this CPU's slot of a
            // private slot array (what the fast paths run, without the cache around them).
            let slots = kmem::cpu::__TestSlots::new(kmem::cpu::possible_cpus());
            let mut obj = Box::new([0usize; 8]);
            let a = obj.as_mut_ptr() as usize;
            // SAFETY: `obj` is ours, aligned; it goes back and forth between us and the slot.
            unsafe { slots.push(a) };
            b.iter(|| {
                let s = black_box(&slots);
                // SAFETY: as above.
                let r = unsafe { s.pop_push() };
                debug_assert_eq!(r, a);
                black_box(r);
            });
            drop(obj);
        });
    }
    g.bench_function("load_cmpxchg16b_pair", |b| {
        let w = DWord::new();
        b.iter(|| {
            let w = black_box(&w);
            let v = w.load();
            let r1 = w.compare_exchange(v, (v.0 + 1, v.1 + 1));
            let v = w.load();
            let r2 = w.compare_exchange(v, (v.0 + 1, v.1 + 1));
            let _ = black_box((r1, r2));
        })
    });
    g.bench_function("split_load_cmpxchg16b_pair", |b| {
        let w = DWord::new();
        b.iter(|| {
            let w = black_box(&w);
            let v = w.load_tag_then_word();
            let r1 = w.compare_exchange(v, (v.0 + 1, v.1 + 1));
            let v = w.load_tag_then_word();
            let r2 = w.compare_exchange(v, (v.0 + 1, v.1 + 1));
            let _ = black_box((r1, r2));
        })
    });
    g.finish();
}

fn fastpath(c: &mut Criterion<ThreadTime>) {
    let pinned = common::pin_to_cpu(0);
    eprintln!("fastpath: clock: {}", ThreadTime::default().describe());
    eprintln!(
        "fastpath: commit mode {:?} ({})",
        kmem::cpu::commit_mode(),
        kmem::cpu::commit_mode_reason()
    );
    eprintln!(
        "fastpath: pinned to CPU 0: {pinned}; kmem::cpu::method() = {:?}; current_cpu() = {}; \
         built with +cmpxchg16b: {}",
        kmem::cpu::method(),
        kmem::cpu::current_cpu(),
        cfg!(target_feature = "cmpxchg16b")
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
        let sheaves = k
            .create_cache(
                &format!("bench-sheaves-{size}"),
                size,
                CacheConfig::new().sheaf_capacity(kmem::default_sheaf_capacity(size)),
            )
            .expect("sheaf cache");
        fastpath_size(c, size, &private, &sheaves, &global);
        caches.push(private);
        caches.push(sheaves);
        caches.push(global);
    }
    for cache in &caches {
        let s = cache.stats();
        let fast = s.alloc_fastpath + s.free_fastpath + s.alloc_cpu_sheaf + s.free_cpu_sheaf;
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
