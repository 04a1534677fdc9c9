//! `CacheFlags::TYPESAFE_BY_RCU`: slabs stay with the cache (shrink, reclaim under the memory
//! limit) until it is destroyed; objects are reused at once.

use kmem::{CacheConfig, CacheFlags, Kmem};

fn typesafe() -> CacheConfig {
    CacheConfig::new().flags(CacheFlags::TYPESAFE_BY_RCU)
}

#[test]
fn shrink_keeps_slabs_and_objects_stay_objects() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = k.create_cache("ts", 512, typesafe()).unwrap();
    assert_eq!(c.min_partial(), usize::MAX);
    let objs: Vec<_> = (0..500).map(|_| c.alloc().unwrap()).collect();
    let slabs = c.info().num_slabs;
    let free = || {
        let ps = k.page_stats();
        ps.free_bytes + ps.pcp_bytes
    };
    let free_before = free();
    // SAFETY: from `c`, each freed once.
    unsafe { c.free_bulk(&objs) };
    c.shrink();
    let info = c.info();
    assert_eq!((info.active_objs, info.num_slabs), (0, slabs));
    assert_eq!(free(), free_before, "pages went back");
    for &p in &objs {
        assert_eq!(c.node_of(p), 0); // aborts if `p` is no longer an object of `c`
    }
    // Reuse is immediate: the next allocation is one of the freed objects.
    let q = c.alloc().unwrap();
    assert!(objs.contains(&q));
    // SAFETY: from `c`, freed once.
    unsafe { c.free(q) };
    drop(c);
    let ps = k.page_stats();
    // Free pages are on the buddy lists or on the per-CPU page lists.
    assert_eq!(
        ps.free_bytes + ps.pcp_bytes,
        ps.mapped_bytes,
        "destroy releases everything: {ps:?}"
    );
}

#[test]
fn reclaim_under_the_memory_limit_leaves_typesafe_slabs() {
    let k = Kmem::builder()
        .cpus(1)
        .nodes(1)
        .memory_limit(8 << 20)
        .build()
        .unwrap();
    let ts = k.create_cache("ts", 4096, typesafe()).unwrap();
    let plain = k.create_cache("plain", 4096, CacheConfig::new()).unwrap();
    let objs: Vec<_> = (0..512).map(|_| ts.alloc().unwrap()).collect();
    let slabs = ts.info().num_slabs;
    // SAFETY: from `ts`, each freed once.
    unsafe { ts.free_bulk(&objs) };
    // Fill the rest of the budget from another cache: reclaim runs and must skip `ts`.
    let mut held = Vec::new();
    while let Some(p) = plain.alloc() {
        held.push(p);
    }
    assert_eq!(
        ts.info().num_slabs,
        slabs,
        "reclaim released a typesafe slab"
    );
    for &p in &objs {
        assert_eq!(ts.node_of(p), 0);
    }
    // SAFETY: from `plain`, each freed once.
    unsafe { plain.free_bulk(&held) };
}

#[test]
fn ordinary_caches_still_release() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k.create_cache("plain", 512, CacheConfig::new()).unwrap();
    let objs: Vec<_> = (0..500).map(|_| c.alloc().unwrap()).collect();
    // SAFETY: from `c`, each freed once.
    unsafe { c.free_bulk(&objs) };
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

#[test]
fn shrink_deferred_releases_typesafe_slabs_after_the_grace_period() {
    use kmem::epoch;
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = k.create_cache("ts-deferred", 512, typesafe()).unwrap();
    let objs: Vec<_> = (0..500).map(|_| c.alloc().unwrap()).collect();
    let slabs = c.info().num_slabs;
    assert!(slabs > 0);
    let free_before = k.page_stats().free_bytes;
    // SAFETY: from `c`, each freed once.
    unsafe { c.free_bulk(&objs) };
    // A reader pinned in the default collector before the shrink.
    let reader = epoch::pin();
    c.shrink_deferred(&epoch::pin());
    assert_eq!(c.deferred_slabs(), slabs, "every empty slab handed over");
    for _ in 0..100 {
        epoch::pin().flush();
    }
    // The reader is still pinned: nothing released, every old pointer still an object of `c`.
    assert_eq!(c.deferred_slabs(), slabs);
    let info = c.info();
    assert_eq!((info.active_objs, info.num_slabs), (0, slabs), "{info:?}");
    for &p in &objs {
        assert_eq!(c.node_of(p), 0);
    }
    // Handed-over slabs take no new allocation.
    let q = c.alloc().unwrap();
    assert!(!objs.contains(&q), "a handed-over slab was reused");
    // SAFETY: from `c`, freed once.
    unsafe { c.free(q) };
    drop(reader);
    let mut rounds = 0;
    while c.deferred_slabs() != 0 {
        rounds += 1;
        assert!(rounds < 100_000, "the slabs were never released");
        epoch::pin().flush();
    }
    assert!(k.page_stats().free_bytes > free_before, "pages went back");
    // Left: the slab `q` came from (plain `shrink` keeps typesafe slabs).
    c.shrink();
    assert_eq!(c.info().num_slabs, 1);
}
