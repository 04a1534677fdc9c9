//! Model 7: `deactivate_slab` racing a remote free.
//!
//! Slot 0's CPU slab S has x allocated and y on the CPU freelist. A thread on slot 0 flushes
//! the slot (`deactivate_slab`: splice y back, unfreeze, put S on the node partial list under
//! `list_lock`); a thread on slot 1 frees x, S's last object. Either the free sees S frozen
//! (the deactivation's CAS then fails, retries and finds S empty: discard), or it sees S
//! unfrozen on the list (remove and discard under `list_lock`). Mutant:
//! `deactivate_decides_without_lock` (S is unfrozen before list_lock is taken: the free
//! "removes" a slab that is not yet on the list and discards it; the deactivation then lists
//! a freed slab).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn deactivate_vs_remote_free() {
    model(|| {
        let (k, c) = setup(2, 0, 0);
        let live = Live::new();
        let x = live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let t0 = loom::thread::spawn(move || {
            on_cpu(0);
            kmem::__loom::flush_cpu(&c1, 0);
            let _ = l1;
        });
        let (c2, l2) = (c.clone(), live.clone());
        let t1 = loom::thread::spawn(move || {
            on_cpu(1);
            l2.free(&c2, x);
        });
        t0.join().unwrap();
        t1.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
