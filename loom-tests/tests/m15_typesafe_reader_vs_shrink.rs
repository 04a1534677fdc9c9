//! Model 13: `CacheFlags::TYPESAFE_BY_RCU` — a reader keeps a pointer to an object while
//! another thread frees every object and shrinks the cache.
//!
//! The reader found object `x` (as a lock-free lookup would) and, after the writer may have
//! freed it, checks that `x` is still an object of the cache (`node_of` runs the free path's
//! O(1) checks: it aborts if `x`'s page is no longer a slab of this cache). The writer frees
//! both objects of the only slab, then `shrink()`s, which for an ordinary cache returns the
//! empty slab to the page allocator. Mutant `typesafe_shrink_discards` (shrink ignores the
//! flag): the slab goes back to the page allocator under the reader, which aborts.
//!
//! `pinned_reader_vs_shrink_deferred`: the same with `shrink_deferred`, which hands the empty
//! slab to the writer's crossbeam-epoch collector; the reader is pinned in that collector
//! while it checks `x`, so the slab may go back only after it unpinned. At the end the
//! collector is dropped (running what it holds) and every page must be free. Mutant
//! `typesafe_slabs_released_at_once`: the slab is released at hand-over, under the reader.
#![cfg(loom)]

use kmem::{CacheConfig, CacheFlags, Kmem};
use kmem_loom_tests::{model, on_cpu, OBJ};
use loom::sync::Arc;

#[test]
fn reader_vs_free_and_shrink() {
    model(|| {
        on_cpu(0);
        let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
        let cfg = CacheConfig::new()
            .min_order(0)
            .max_order(0)
            .flags(CacheFlags::TYPESAFE_BY_RCU);
        let c = Arc::new(k.create_cache("typesafe", OBJ, cfg).unwrap());
        let x = c.alloc().unwrap();
        let y = c.alloc().unwrap();
        let slabs = c.info().num_slabs;
        let xa = x.as_ptr() as usize;
        let c1 = c.clone();
        let reader = loom::thread::spawn(move || {
            on_cpu(1);
            let x = std::ptr::NonNull::new(xa as *mut u8).unwrap();
            // Still an object of the cache, whatever the writer did meanwhile.
            assert_eq!(c1.node_of(x), 0);
        });
        // SAFETY: both from `c`, each freed once; the reader only inspects `x`'s slab.
        unsafe { c.free_bulk(&[x, y]) };
        c.shrink();
        reader.join().unwrap();
        let info = c.info();
        assert_eq!(info.active_objs, 0);
        assert_eq!(info.num_slabs, slabs, "a typesafe slab was released");
        drop(c);
        let ps = k.page_stats();
        // Free pages are on the buddy lists or on the per-CPU page lists.
        assert_eq!(
            ps.free_bytes + ps.pcp_bytes,
            ps.mapped_bytes,
            "destroy kept pages: {ps:?}"
        );
    });
}

#[test]
fn pinned_reader_vs_shrink_deferred() {
    use kmem::epoch::Collector;
    model(|| {
        on_cpu(0);
        let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
        let cfg = CacheConfig::new()
            .min_order(0)
            .max_order(0)
            .flags(CacheFlags::TYPESAFE_BY_RCU);
        let c = Arc::new(k.create_cache("typesafe", OBJ, cfg).unwrap());
        let collector = Collector::new();
        let x = c.alloc().unwrap();
        let y = c.alloc().unwrap();
        let xa = x.as_ptr() as usize;
        // The reader found `x` while it was in use: it pins before the writer frees it.
        let pinned = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let (c1, col1, p1) = (c.clone(), collector.clone(), pinned.clone());
        let reader = loom::thread::spawn(move || {
            on_cpu(1);
            let h = col1.register();
            let g = h.pin();
            p1.store(true, std::sync::atomic::Ordering::Release);
            // A scheduling point: the check below touches only page descriptors, which are not
            // loom objects, so without one loom would never run the writer in between.
            loom::thread::yield_now();
            let x = std::ptr::NonNull::new(xa as *mut u8).unwrap();
            // Still an object of the cache while pinned, whatever the writer did.
            assert_eq!(c1.node_of(x), 0);
            drop(g);
        });
        while !pinned.load(std::sync::atomic::Ordering::Acquire) {
            loom::thread::yield_now();
        }
        let h = collector.register();
        // SAFETY: both from `c`, each freed once; the reader only inspects `x`'s slab.
        unsafe { c.free_bulk(&[x, y]) };
        c.shrink_deferred(&h.pin());
        reader.join().unwrap();
        drop(h);
        drop(collector);
        assert_eq!(c.deferred_slabs(), 0, "the slab was never released");
        let info = c.info();
        assert_eq!((info.active_objs, info.num_slabs), (0, 0), "{info:?}");
        drop(c);
        let ps = k.page_stats();
        // Free pages are on the buddy lists or on the per-CPU page lists.
        assert_eq!(
            ps.free_bytes + ps.pcp_bytes,
            ps.mapped_bytes,
            "pages kept: {ps:?}"
        );
    });
}
