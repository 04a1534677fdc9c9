//! Model 3: a remote free into a frozen CPU slab against the owner's `get_freelist`.
//!
//! Slot 0's CPU slab is full (both objects allocated, CPU freelist empty). A thread on slot 1
//! frees one of them: the slab is frozen, so the free only pushes onto the slab's freelist.
//! Concurrently slot 0 allocates: its refill calls `get_freelist` on the slab, which takes the
//! remote-freed object if it is there, or else finds the slab full and must unfreeze it (it
//! leaves the CPU). Mutant: `get_freelist_stays_frozen` (the full slab stays frozen while the
//! CPU drops it: the later remote free sees "frozen", does no list work, and the slab is
//! orphaned: never reused, never freed).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn remote_free_vs_get_freelist() {
    model(|| {
        let (k, c) = setup(2, 0, 0);
        let live = Live::new();
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(1);
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
