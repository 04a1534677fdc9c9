//! A Treiber stack on a `KmemCache`, model-checked with loom *including kmem's reuse*.
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo run --release --example loom_treiber
//! cargo run --release --example loom_treiber        # without loom: a plain threaded run
//! ```
//!
//! Under loom, kmem is built with loom's atomics and locks, so a model that allocates from a
//! `KmemCache` explores kmem's interleavings too, and sees freed objects handed straight back
//! (kmem's per-CPU freelists are LIFO). Two runs:
//! - pop frees at once: loom finds the ABA (thread 1 reads `head = A, next = B` and is
//!   preempted; thread 2 pops A and B, frees them, pushes a node that reuses A's memory;
//!   thread 1's CAS succeeds and links a freed B);
//! - pop frees with `free_deferred` under an epoch guard held across the read and the CAS:
//!   A cannot be reused while thread 1 is pinned, and loom passes.
//!
//! The model checks are in `loom-tests/tests/m13_treiber_aba.rs` (with a planted bug).

#[cfg(loom)]
use loom::{sync::atomic::AtomicUsize, sync::Arc, thread};
#[cfg(not(loom))]
use std::{sync::atomic::AtomicUsize, sync::Arc, thread};

use kmem::epoch::{Collector, Guard};
use kmem::{CacheConfig, Kmem, KmemCache};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

struct Stack {
    head: AtomicUsize,
    nodes: KmemCache,
}

/// A node is `[next, value]`; `next` is read with a relaxed atomic (it may be stale).
fn next(n: usize) -> &'static std::sync::atomic::AtomicUsize {
    // SAFETY: `n` is a 16-byte object of the cache (mapped while the allocator lives).
    unsafe { &*(n as *const std::sync::atomic::AtomicUsize) }
}

impl Stack {
    fn push(&self) {
        let n = self.nodes.alloc().unwrap().as_ptr() as usize;
        loop {
            let h = self.head.load(Acquire);
            next(n).store(h, Relaxed);
            if self.head.compare_exchange(h, n, AcqRel, Acquire).is_ok() {
                return;
            }
        }
    }

    /// Pops a node; the caller owns it and retires it.
    fn pop(&self) -> Option<usize> {
        loop {
            let h = self.head.load(Acquire);
            if h == 0 {
                return None;
            }
            let n = next(h).load(Relaxed);
            if self.head.compare_exchange(h, n, AcqRel, Acquire).is_ok() {
                return Some(h);
            }
        }
    }

    /// Frees popped nodes: at once, or (with a guard) after a grace period.
    fn retire(&self, popped: &[usize], guard: Option<&Guard>) {
        let popped: Vec<_> = popped
            .iter()
            .map(|&h| NonNull::new(h as *mut u8).unwrap())
            .collect();
        match guard {
            // SAFETY: unlinked by our pops, each freed once.
            None => unsafe { self.nodes.free_bulk(&popped) },
            Some(g) => {
                for &p in &popped {
                    // SAFETY: as above; threads pinned now may still read it.
                    unsafe { self.nodes.free_deferred(p, g) };
                }
            }
        }
    }

    /// The linked nodes.
    fn nodes(&self) -> Vec<usize> {
        let (mut n, mut v) = (self.head.load(Acquire), Vec::new());
        while n != 0 && v.len() < 8 {
            v.push(n);
            n = next(n).load(Relaxed);
        }
        v
    }
}

/// Thread 1 pops once; thread 2 pops twice and frees both, pushes once and takes an object for
/// something else. Afterwards that object must not be linked into the stack.
fn scenario(deferred: bool) {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let nodes = k.create_cache("treiber", 16, CacheConfig::new()).unwrap();
    let s = Arc::new(Stack {
        head: AtomicUsize::new(0),
        nodes,
    });
    let collector = Collector::new();
    s.push();
    s.push();
    let (s1, c1) = (s.clone(), collector.clone());
    let t1 = thread::spawn(move || {
        let h = c1.register();
        let g = h.pin();
        let popped: Vec<usize> = s1.pop().into_iter().collect();
        s1.retire(&popped, deferred.then_some(&g));
    });
    let (s2, c2) = (s.clone(), collector.clone());
    let t2 = thread::spawn(move || {
        let h = c2.register();
        {
            let g = h.pin();
            let popped: Vec<usize> = (0..2).filter_map(|_| s2.pop()).collect();
            s2.retire(&popped, deferred.then_some(&g));
            s2.nodes.flush_deferred(&g);
        }
        s2.push();
        s2.nodes.alloc().unwrap().as_ptr() as usize // some other use of the cache
    });
    t1.join().unwrap();
    let other = t2.join().unwrap();
    let linked = s.nodes();
    assert!(
        linked.len() <= 1 && !linked.contains(&other),
        "ABA: the stack links {linked:x?}, and {other:#x} belongs to someone else"
    );
    // SAFETY: allocated above, freed once.
    unsafe { s.nodes.free(NonNull::new(other as *mut u8).unwrap()) };
    let h = collector.register();
    while let Some(n) = s.pop() {
        s.retire(&[n], deferred.then_some(&h.pin()));
    }
    s.nodes.flush_deferred(&h.pin());
}

#[cfg(loom)]
fn main() {
    let immediate = std::panic::catch_unwind(|| loom::model(|| scenario(false)));
    println!(
        "immediate free: {}",
        if immediate.is_err() {
            "loom found the ABA"
        } else {
            "no bug found (unexpected)"
        }
    );
    loom::model(|| scenario(true));
    println!("deferred free: loom explored every interleaving, no ABA");
}

#[cfg(not(loom))]
fn main() {
    for _ in 0..1000 {
        scenario(true);
    }
    println!("deferred free: 1000 threaded runs, no ABA (build with --cfg loom to model-check)");
}
