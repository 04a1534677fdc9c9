//! Model 6: the free that empties a slab against `get_partial_node` taking that slab.
//!
//! S is on the node partial list with one object allocated (`min_partial = 0`, no CPU
//! partial lists). A thread on slot 1 frees S's last object: S becomes empty and is removed
//! from the list and discarded. A thread on slot 0 (no CPU slab) allocates: it takes S from
//! the partial list and freezes it. Whoever takes `list_lock` first wins; the other must see
//! it (the free finds S frozen and only pushes its object; the allocation finds the list
//! empty and makes a new slab). Mutants: `slab_free_without_list_lock` (the free decides
//! "empty: discard" before taking list_lock: the allocator meanwhile freezes S and hands out
//! its objects, then the free unlinks and discards it under the allocator),
//! `acquire_without_freeze` (S is taken off the list unfrozen, so the next free relists the
//! CPU's slab).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn discard_vs_get_partial() {
    model(|| {
        let (k, c) = setup(2, 0, 0);
        let live = Live::new();
        on_cpu(1);
        let x = live.alloc(&c);
        let y = live.alloc(&c);
        kmem::__loom::flush_cpu(&c, 1); // S full, on no list
        live.free(&c, y); // S on the node partial list, one object in use
        on_cpu(0);
        let (c1, l1) = (c.clone(), live.clone());
        let t1 = loom::thread::spawn(move || {
            on_cpu(1);
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let t0 = loom::thread::spawn(move || {
            on_cpu(0);
            l2.alloc(&c2);
        });
        t1.join().unwrap();
        t0.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
