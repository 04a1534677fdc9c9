//! Model 12: the SLUB fast paths in the rseq commit mode (`slab_alloc` / `do_slab_free` running
//! `src/cpu/percpu/`'s sequences), against each other, the slow path and a flush from
//! another CPU. Two slots; a sequence runs under its model CPU's mutex (see `m11_rseq`).
//!
//! - `alloc_alloc_free_same_cpu` (m1 in rseq mode): two threads on CPU 0, one allocation
//!   against alloc, alloc, free;
//! - `free_vs_refill_same_cpu` (m2 in rseq mode): a free fast path of an object of the full CPU
//!   slab against an allocation that detaches, finds the slab full and attaches a new one — the
//!   slow path's detach and attach are CAS committed inside sequences on CPU 0 (mutant
//!   `rseq_slow_path_plain_cas`: an ordinary CAS, as if the slow path could not have migrated);
//! - `flush_from_another_cpu`: `flush_cpu(slot 0)` (what shrink and destroy do) on CPU 1 while
//!   a thread on CPU 0 frees and allocates with sequences (the primitives' mutants
//!   `rseq_stop_without_fence`, `rseq_ignores_stop`);
//! - `slow_path_after_migration`: a slow path of slot 0 (slot lock, detach, attach) by a thread
//!   that has migrated to CPU 1, while a thread on CPU 0 frees and allocates (mutant
//!   `rseq_elsewhere_without_stop`: the CAS of a thread off the slot's CPU without stop +
//!   fence).
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn alloc_alloc_free_same_cpu() {
    model(|| {
        let (k, c) = setup_rseq(2, 0, 0);
        let live = Live::new();
        on_cpu(0);
        let x = c.alloc().unwrap();
        let y = c.alloc().unwrap();
        // SAFETY: just allocated from `c`; each freed once.
        unsafe {
            c.free(y);
            c.free(x);
        }
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.alloc(&c1);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            let p = l2.alloc(&c2);
            l2.alloc(&c2);
            l2.free(&c2, p);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn free_vs_refill_same_cpu() {
    model(|| {
        let (k, c) = setup_rseq(2, 0, 0);
        let live = Live::new();
        on_cpu(0);
        // The CPU slab full: x and y allocated, CPU freelist empty.
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn flush_from_another_cpu() {
    model(|| {
        let (k, c) = setup_rseq(2, 0, 0);
        let live = Live::new();
        on_cpu(0);
        // CPU 0's slab with x allocated and y on the CPU freelist.
        let x = live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, x);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            on_cpu(1);
            kmem::__loom::flush_cpu(&c2, 0);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, true);
    });
}

#[test]
fn slow_path_after_migration() {
    model(|| {
        let (k, c) = setup_rseq(2, 0, 0);
        let live = Live::new();
        on_cpu(0);
        // CPU 0's slab with x allocated and y on the CPU freelist.
        let x = live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, x);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            // Took slot 0's lock on CPU 0, then migrated to CPU 1.
            on_cpu(1);
            kmem::__loom::migrated_slow_path(&c2, 0);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, true);
    });
}
