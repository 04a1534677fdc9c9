//! Model 2: the allocation fast path against the free fast path on one slot, and both against
//! a slow-path refill on that slot.
//!
//! `alloc_vs_free`: one thread allocates from the CPU freelist while another frees an object
//! of the CPU slab onto it, then allocates again. `free_vs_refill`: the CPU slab is full and
//! its CPU freelist empty; one thread frees an object of it (fast path: the slab is the slot's)
//! while another allocates, which detaches the slot, finds the slab full, unfreezes it and
//! attaches a new slab. The free must either land on the CPU freelist before the detach or see
//! the slot without that slab and take the slow path. Mutants: `detach_keeps_slab` (the free
//! fast path sees the old slab during the refill: its CAS succeeds on the detached pair and
//! `attach` aborts), `free_reads_slab_before_tid` (the free reads `slab`, the refill runs,
//! then the free reads the new `{freelist, tid}` and links an object of the old slab onto the
//! new slab's freelist), `tid_not_advanced`.
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn alloc_vs_free() {
    model(|| {
        let (k, c) = setup(1, 0, 0);
        let live = Live::new();
        // CPU slab with x allocated and y on the CPU freelist.
        let x = live.alloc(&c);
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

#[test]
fn free_vs_refill() {
    model(|| {
        let (k, c) = setup(1, 0, 0);
        let live = Live::new();
        // The CPU slab full: x and y allocated, CPU freelist empty.
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}
