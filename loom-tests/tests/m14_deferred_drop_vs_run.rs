//! Model 12: dropping a cache whose deferred frees are pending, against the collector running
//! them on another thread.
//!
//! The main thread defers two objects (one full batch under loom: handed to the collector at
//! once), then drops the `KmemCache`. A second thread pins and flushes, so the epoch advances
//! and the batch may run before, during or after the drop. Exactly one of the two (the drop, if
//! nothing is pending; else the batch that frees the last object) must destroy the cache: at the
//! end the allocator has no cache left and every page is free. Mutant
//! `deferred_drop_checks_pending_early` (the drop reads `pending` before setting `DYING`, so a
//! batch finishing in between sees no `DYING` and the drop sees objects pending): nobody
//! destroys the cache.
#![cfg(loom)]

use kmem::epoch::Collector;
use kmem::{CacheConfig, Kmem};
use kmem_loom_tests::{model, on_cpu, OBJ};

#[test]
fn drop_vs_deferred_run() {
    model(|| {
        on_cpu(0);
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k
            .create_cache(
                "deferred",
                OBJ,
                CacheConfig::new().min_order(0).max_order(0),
            )
            .unwrap();
        let collector = Collector::new();
        let h = collector.register();
        {
            let g = h.pin();
            for _ in 0..2 {
                let p = c.alloc().unwrap();
                // SAFETY: from `c`, freed once.
                unsafe { c.free_deferred(p, &g) };
            }
            // The batch (full at two objects under loom) went to this thread's bag: move it to
            // the collector's global queue, where the other thread can run it.
            g.flush();
        }
        let c2 = collector.clone();
        let t = loom::thread::spawn(move || {
            on_cpu(0);
            let h = c2.register();
            for _ in 0..3 {
                h.pin().flush();
            }
        });
        drop(c);
        t.join().unwrap();
        drop(h);
        drop(collector); // runs whatever is still deferred
        assert!(
            k.slabinfo().is_empty(),
            "the cache was never destroyed: {:?}",
            k.slabinfo()
        );
        let ps = k.page_stats();
        // Free pages are on the buddy lists or on the per-CPU page lists.
        assert_eq!(
            ps.free_bytes + ps.pcp_bytes,
            ps.mapped_bytes,
            "pages lost: {ps:?}"
        );
    });
}
