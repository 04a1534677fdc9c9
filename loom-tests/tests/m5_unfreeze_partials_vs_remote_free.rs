//! Model 5: `put_cpu_partial` overflowing into `unfreeze_partials` racing a remote free into
//! the slab being unfrozen.
//!
//! With `cpu_partial_slabs = 1`, slot 0's CPU partial list holds S1 (frozen, one object free).
//! A thread on slot 0 frees into the full slab S2, freezing it; pushing S2 finds the list
//! full, so S1 is drained: unfrozen under `list_lock` and put on the node partial list. A
//! thread on slot 1 concurrently frees S1's other object: into a frozen slab (no list work),
//! or into an unfrozen one whose last object it is (remove it from the node list and discard
//! it). Mutant: `unfreeze_cas_before_list_lock` (the unfreeze CAS happens before list_lock is
//! taken: the remote free sees an unfrozen empty slab that is not yet on the list and
//! "removes" it, then the drain lists a freed slab).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn unfreeze_partials_vs_remote_free() {
    model(|| {
        let (k, c) = setup(2, 0, 1);
        let live = Live::new();
        let a1 = live.alloc(&c);
        let b1 = live.alloc(&c);
        live.alloc(&c); // S1 full, unfrozen, on no list; S2 is the CPU slab
        let b2 = live.alloc(&c);
        live.alloc(&c); // S2 full, unfrozen, on no list; S3 is the CPU slab
        live.free(&c, b1); // freezes S1 onto slot 0's partial list
        let (c1, l1) = (c.clone(), live.clone());
        let t0 = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, b2); // freezes S2, drains S1
        });
        let (c2, l2) = (c.clone(), live.clone());
        let t1 = loom::thread::spawn(move || {
            on_cpu(1);
            l2.free(&c2, a1); // S1's last object
        });
        t0.join().unwrap();
        t1.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
