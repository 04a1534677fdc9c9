//! Model 10: `new_slab` runs with the slot lock dropped, against another thread of the same
//! slot that refills and installs a CPU slab meanwhile.
//!
//! `two_new_slabs`: the cache is empty; A allocates once, B twice, on one shared slot. Both
//! can find nothing to reuse and build a new slab each with the lock dropped; the second to
//! retake the lock finds the first's slab installed (with a free object on the CPU freelist,
//! or full after B's second allocation) and must deactivate it before installing its own.
//! `new_slab_vs_partial_refill`: B frees an object of a full, unlisted slab while A builds a
//! new slab, then allocates it again: B's free freezes the slab onto the CPU partial list (the
//! slot lock is free now), B's slow path installs it, and A must then deactivate it.
//!
//! Mutant: `new_slab_ignores_cpu_slab` (the install overwrites whatever CPU slab appeared
//! while the lock was dropped: that slab stays frozen with no owner, and its CPU freelist is
//! dropped) — found as objects or slabs lost.
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn two_new_slabs() {
    model(|| {
        let (k, c) = setup(1, 0, 0);
        let live = Live::new();
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            l1.alloc(&c1);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            l2.alloc(&c2);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn new_slab_vs_partial_refill() {
    model(|| {
        let (k, c) = setup(1, 0, 1);
        let live = Live::new();
        // Slab 1 full and still the CPU slab: x and y allocated, CPU freelist empty.
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            l1.alloc(&c1);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            l2.free(&c2, x);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}
