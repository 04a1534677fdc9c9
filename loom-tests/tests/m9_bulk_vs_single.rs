//! Model 9: `alloc_bulk`/`free_bulk` against single allocations and frees on the same slot.
//!
//! One thread allocates two objects in bulk (the slot's CPU freelist, then a refill under the
//! slot lock) and frees them in bulk; another allocates one object on the lockless fast path
//! and frees it. Mutant: `bulk_pop_without_tid_cas` (bulk allocation pops the CPU freelist
//! with plain stores under the slot lock, which the fast path does not take: both threads get
//! the same object).
#![cfg(loom)]

use kmem_loom_tests::*;
use std::ptr::NonNull;

#[test]
fn bulk_vs_single() {
    model(|| {
        let (k, c) = setup(1, 0, 0);
        let live = Live::new();
        // CPU slab with one object allocated and one on the CPU freelist.
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            let mut out = [core::ptr::null_mut(); 2];
            assert_eq!(c1.alloc_bulk(&mut out), 2);
            let objs: Vec<NonNull<u8>> = out
                .iter()
                .map(|&p| l1.add(NonNull::new(p).unwrap()))
                .collect();
            for &p in &objs {
                l1.remove(p);
            }
            // SAFETY: `objs` were allocated from `c1` above and each is freed once.
            unsafe { c1.free_bulk(&objs) };
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            let p = l2.alloc(&c2);
            l2.free(&c2, p);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}
