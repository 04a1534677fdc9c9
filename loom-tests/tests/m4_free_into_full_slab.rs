//! Model 4: a free into a full slab (which freezes it onto the freeing CPU's partial list)
//! racing another free into the same slab from another CPU.
//!
//! Slab S is full and on no list (slot 0 filled it and moved on to a new slab). Threads on
//! slots 1 and 0 each free one of S's objects: the first to CAS sees `prior == NULL`, freezes S
//! and puts it on its CPU partial list; the second sees S frozen and only pushes its object.
//! Mutant: `full_slab_not_frozen` (the first free neither freezes S nor lists it: S becomes a
//! partial slab on no list, lost to allocation and to shrink).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn free_into_full_slab() {
    model(|| {
        let (k, c) = setup(2, 0, 2);
        let live = Live::new();
        // S: x, y allocated; then slot 0 moves to a new slab.
        let x = live.alloc(&c);
        let y = live.alloc(&c);
        live.alloc(&c);
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
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
