//! Model 16: slub_debug's node-only paths (`src/debug/paths.rs`) — two frees into one debug
//! slab from two CPU slots, racing an allocation and free of a third object.
//!
//! A debug cache (`FZPU`) never uses the lockless fast paths: every allocation and free
//! checks the object and updates the slab's `{freelist, counters}` and its list membership
//! (full list → partial list) under the node's `list_lock`. Slab S holds x, y and z; x and y
//! are allocated, so S is partial. Thread A (slot 1) frees x, thread B (slot 0) frees y, and
//! thread D (slot 1) allocates one object and frees it. Afterwards `validate` must find
//! every slab whole (freelists, counts, red zones, poison) and nothing may be lost.
//!
//! Mutant `debug_free_without_list_lock`: the free does its read-modify-write of the slab's
//! state before taking the lock. Two frees that both read the old state lose one of the
//! objects (a leak `validate` cannot see, since the counters stay consistent; `finish` sees
//! it as an object still active), or a free and an allocation corrupt the freelist.
#![cfg(loom)]

use kmem::{CacheConfig, CacheFlags, Kmem};
use kmem_loom_tests::{model, on_cpu, Live};
use loom::sync::Arc;

#[test]
fn debug_frees_and_alloc() {
    model(|| {
        on_cpu(0);
        let k = Kmem::builder()
            .cpus(2)
            .nodes(1)
            .commit_mode(kmem::cpu::CommitMode::Locked)
            .build()
            .unwrap();
        let flags = CacheFlags::CONSISTENCY_CHECKS
            | CacheFlags::RED_ZONE
            | CacheFlags::POISON
            | CacheFlags::STORE_USER;
        // Three debug objects of 1000 bytes per one-page slab.
        let cfg = CacheConfig::new().min_order(0).max_order(0).flags(flags);
        let c = Arc::new(k.create_cache("debug", 1000, cfg).unwrap());
        assert_eq!(
            c.objects_per_slab(),
            3,
            "the model assumes three objects per slab"
        );
        let live = Live::new();
        let x = live.alloc(&c);
        let y = live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(1);
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            l2.free(&c2, y);
        });
        let (c3, l3) = (c.clone(), live.clone());
        let d = loom::thread::spawn(move || {
            on_cpu(1);
            let z = l3.alloc(&c3);
            l3.free(&c3, z);
        });
        a.join().unwrap();
        b.join().unwrap();
        d.join().unwrap();
        assert!(c.validate().is_ok());
        assert!(live.is_empty());
        let info = c.info();
        assert_eq!(info.active_objs, 0, "objects lost: {info:?}");
        kmem::__loom::check_lists(&c).unwrap();
        c.shrink();
        assert_eq!(c.info().num_slabs, 0);
        drop(c);
        let ps = k.page_stats();
        assert_eq!(ps.free_bytes, ps.mapped_bytes, "pages lost: {ps:?}");
    });
}
