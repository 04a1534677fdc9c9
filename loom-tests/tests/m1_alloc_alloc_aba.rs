//! Model 1: allocation fast path against allocation fast path on one shared CPU slot.
//!
//! Thread A does one allocation; thread B does alloc, alloc, free of the first object on the
//! same slot. If B runs entirely between A's load of `{freelist = x, tid}` (and its read of
//! `next = y` from `x`) and A's CAS, the freelist head is `x` again but `x`'s free pointer is
//! now null and `y` belongs to B: only the tid makes A's CAS fail. Mutant:
//! `tid_not_advanced`.
#![cfg(loom)]

use kmem_loom_tests::*;

#[test]
fn alloc_alloc_aba() {
    model(|| {
        let (k, c) = setup(1, 0, 0);
        let live = Live::new();
        // A CPU freelist x -> y.
        let x = c.alloc().unwrap();
        let y = c.alloc().unwrap();
        // SAFETY: `x` and `y` were just allocated from `c`; each is freed once.
        unsafe {
            c.free(y);
            c.free(x);
        }
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            l1.alloc(&c1);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            let p = l2.alloc(&c2);
            l2.alloc(&c2);
            l2.free(&c2, p);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}
