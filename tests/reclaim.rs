//! Issue #10 item 5: no spurious out-of-memory under a memory limit. When the page allocator
//! reaches the limit it reclaims (every cache's empty partial slabs go back to the buddy lists)
//! and retries, so memory that one cache no longer uses can serve another.

use kmem::{CacheConfig, Kmem, KmemCache};
use std::ptr::NonNull;

/// A cache that keeps every empty slab on its node partial list (a large `min_partial`) and
/// none on its CPU partial lists, so that freed memory stays with the cache until reclaimed.
fn hoarding_cache(k: &Kmem, name: &str, size: usize) -> KmemCache {
    k.create_cache(
        name,
        size,
        CacheConfig::new().min_partial(1 << 20).cpu_partial_slabs(0),
    )
    .unwrap()
}

fn fill(c: &KmemCache) -> Vec<NonNull<u8>> {
    let mut v = Vec::new();
    while let Some(p) = c.alloc() {
        v.push(p);
    }
    v
}

#[test]
fn limit_reclaims_other_caches_empty_slabs() {
    let limit = 1 << 20;
    let k = Kmem::builder()
        .memory_limit(limit)
        .cpus(1)
        .nodes(1)
        .build()
        .unwrap();
    let a = hoarding_cache(&k, "hoarder", 1024);
    let b = hoarding_cache(&k, "latecomer", 512);
    let objs = fill(&a);
    assert!(objs.len() * 1024 > limit / 2, "{} objects", objs.len());
    // SAFETY: every pointer came from `a`, appears once, and is not used afterwards.
    unsafe { a.free_bulk(&objs) };
    assert!(a.info().num_slabs > 0, "the empty slabs stay with `a`");
    // All but `a`'s CPU slab is empty partial slabs of `a`: reclaim must hand them to `b`.
    let got = fill(&b);
    let s = k.page_stats();
    assert!(
        got.len() * 512 > limit / 2,
        "`b` got only {} objects while `a` held empty slabs: {s:?}",
        got.len()
    );
    assert!(s.reclaim_calls > 0, "{s:?}");
    // SAFETY: as above, for `b`.
    unsafe { b.free_bulk(&got) };
}

#[test]
fn threads_churning_under_a_tight_limit_never_see_none() {
    churn_under_a_limit(hoarding_cache);
}

/// The same with the default CPU partial lists: free slabs also wait on the slots' CPU partial
/// lists and as CPU slabs, which reclaim must flush (`flush_all`) before it can discard them.
#[test]
fn churn_with_cpu_partial_lists_never_sees_none() {
    churn_under_a_limit(|k, name, size| {
        k.create_cache(name, size, CacheConfig::new().min_partial(1 << 20))
            .unwrap()
    });
}

fn churn_under_a_limit(make: impl Fn(&Kmem, &str, usize) -> KmemCache) {
    const LIMIT: usize = 8 << 20;
    const THREADS: usize = 2;
    // Per thread and round: 2 MiB live, so 4 MiB at most of the 8 MiB limit. The five caches
    // hoard their empty slabs, so even when the threads run one after the other (a fast
    // machine, a slow thread start) the rounds need 5 x 2 MiB > 8 MiB of slabs: the limit
    // must be reached and reclaim must run, whatever the interleaving.
    const LIVE: usize = 2 << 20;
    const ROUNDS: usize = 60;
    let k = Kmem::builder()
        .memory_limit(LIMIT)
        .cpus(THREADS)
        .nodes(1)
        .build()
        .unwrap();
    let sizes = [256usize, 512, 1024, 2048, 4096];
    let caches: Vec<KmemCache> = sizes
        .iter()
        .map(|&s| make(&k, &format!("churn-{s}"), s))
        .collect();
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let caches = &caches;
            sc.spawn(move || {
                let mut held = Vec::with_capacity(LIVE / 256);
                for round in 0..ROUNDS {
                    let ci = (round * 3 + t * 2) % caches.len();
                    let c = &caches[ci];
                    for i in 0..LIVE / sizes[ci] {
                        match c.alloc() {
                            Some(p) => held.push(p),
                            None => panic!(
                                "thread {t} round {round}: {} returned None after {i} objects \
                                 (at most {} bytes live of {LIMIT}): {:?}\n{}",
                                c.name(),
                                THREADS * LIVE,
                                c.kmem().page_stats(),
                                kmem::SlabInfoTable(c.kmem().slabinfo())
                            ),
                        }
                    }
                    // SAFETY: every pointer came from `c` and is freed once.
                    unsafe { c.free_bulk(&held) };
                    held.clear();
                }
            });
        }
    });
    let s = k.page_stats();
    assert!(s.mapped_bytes <= LIMIT);
    assert!(s.reclaim_calls > 0, "the limit was never reached: {s:?}");
}

/// Memory parked on CPU slots: many caches, each filled and emptied in turn by one thread, keep
/// their empty slabs as CPU slabs and on CPU partial lists (the defaults). Under a limit that
/// cannot hold all of them, reclaim must flush the slots (`flush_all`) and discard, or the next
/// cache sees `None` while most of the limit is free objects.
#[test]
fn memory_parked_on_cpu_slots_is_reclaimed() {
    const LIMIT: usize = 4 << 20;
    const LIVE: usize = 3 << 19; // 1.5 MiB live at a time
    let k = Kmem::builder()
        .memory_limit(LIMIT)
        .cpus(1)
        .nodes(1)
        .build()
        .unwrap();
    let caches: Vec<KmemCache> = (0..12)
        .map(|i| {
            let size = [1024usize, 2048, 4096][i % 3];
            k.create_cache(
                &format!("parked-{i}"),
                size,
                CacheConfig::new().min_partial(1 << 20),
            )
            .unwrap()
        })
        .collect();
    for round in 0..3 {
        for c in &caches {
            let n = LIVE / c.size();
            let mut held = Vec::with_capacity(n);
            for i in 0..n {
                match c.alloc() {
                    Some(p) => held.push(p),
                    None => panic!(
                        "round {round}: {} returned None after {i} objects with at most {LIVE} \
                         bytes live of {LIMIT}: {:?}",
                        c.name(),
                        k.page_stats()
                    ),
                }
            }
            // SAFETY: every pointer came from `c` and is freed once.
            unsafe { c.free_bulk(&held) };
        }
    }
    assert!(k.page_stats().reclaim_calls > 0);
}
