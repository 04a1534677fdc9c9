//! Model 11: a user's Treiber stack whose nodes come from a `KmemCache`, with kmem's reuse
//! inside the model (what issue #17 promises users of `--cfg loom`).
//!
//! The stack holds A -> B. Thread 1 pops: it reads `head = A` and `next = B`, then CASes
//! `head: A -> B`. Thread 2 (same CPU slot, so kmem's LIFO freelist hands objects straight
//! back) pops A and B, frees both, pushes a fresh node (A's memory) and allocates an object for
//! some other use (B's memory). If thread 1 is preempted between reading `next` and its
//! CAS, the CAS succeeds on the recycled A and installs B, now someone else's object, as the
//! head: the ABA bug.
//!
//! - `immediate_free_has_aba`: pop frees at once; loom must find the ABA (the model panics
//!   with "ABA"), so the test expects that panic. It fails if loom did not find it.
//! - `deferred_free_has_no_aba`: pop frees with `free_deferred` under an epoch guard held
//!   across the read of `next` and the CAS; A cannot be reused while thread 1 is pinned, so
//!   loom passes. Mutant `deferred_batch_runs_at_once` (the batch is freed at hand-over, not
//!   after the grace period) brings the ABA back.
#![cfg(loom)]

use kmem::epoch::{Collector, Guard};
use kmem::{CacheConfig, Kmem, KmemCache};
use kmem_loom_tests::{model, on_cpu};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use std::collections::BTreeSet;
use std::ptr::NonNull;

/// A node lives in a 16-byte object: `[next, value]`, read and written with relaxed core
/// atomics (the memory is kmem's, which loom does not track; the head's loom CAS orders it).
struct Stack {
    head: AtomicUsize,
    cache: KmemCache,
    /// Objects the stack's users hold or the stack links (allocated and not freed).
    live: Mutex<BTreeSet<usize>>,
}

fn next_of(n: usize) -> &'static std::sync::atomic::AtomicUsize {
    // SAFETY: `n` is an object of the cache (mapped while the allocator lives), 8-aligned.
    unsafe { &*(n as *const std::sync::atomic::AtomicUsize) }
}

impl Stack {
    fn new(k: &Kmem) -> Stack {
        let cache = k
            .create_cache("treiber", 16, CacheConfig::new().cpu_partial_slabs(0))
            .unwrap();
        Stack {
            head: AtomicUsize::new(0),
            cache,
            live: Mutex::new(BTreeSet::new()),
        }
    }

    fn push(&self) -> usize {
        let n = self.cache.alloc().unwrap().as_ptr() as usize;
        assert!(
            self.live.lock().unwrap().insert(n),
            "{n:#x} handed out twice"
        );
        loop {
            let h = self.head.load(Ordering::Acquire);
            next_of(n).store(h, std::sync::atomic::Ordering::Relaxed);
            if self
                .head
                .compare_exchange(h, n, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return n;
            }
        }
    }

    /// Pops a node; the caller owns it (and must `retire` it).
    fn pop(&self) -> Option<usize> {
        loop {
            let h = self.head.load(Ordering::Acquire);
            if h == 0 {
                return None;
            }
            let next = next_of(h).load(std::sync::atomic::Ordering::Relaxed);
            if self
                .head
                .compare_exchange(h, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                assert!(
                    self.live.lock().unwrap().remove(&h),
                    "ABA: popped {h:#x}, which was already freed"
                );
                return Some(h);
            }
        }
    }

    /// Frees popped nodes: at once (`guard == None`, one `free_bulk`) or after a grace period.
    fn retire(&self, nodes: &[usize], guard: Option<&Guard>) {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|&n| NonNull::new(n as *mut u8).unwrap())
            .collect();
        match guard {
            // SAFETY: unlinked by our pops, each freed once.
            None => unsafe { self.cache.free_bulk(&nodes) },
            Some(g) => {
                for &n in &nodes {
                    // SAFETY: as above; readers pinned now may still read it.
                    unsafe { self.cache.free_deferred(n, g) };
                }
            }
        }
    }

    /// Every linked node must be live.
    fn check(&self) {
        let live = self.live.lock().unwrap();
        let mut n = self.head.load(Ordering::Acquire);
        let mut len = 0;
        while n != 0 {
            assert!(
                live.contains(&n),
                "ABA: {n:#x}, freed or reused for another object, is linked into the stack"
            );
            n = next_of(n).load(std::sync::atomic::Ordering::Relaxed);
            len += 1;
            assert!(len <= live.len(), "ABA: the stack is cyclic");
        }
    }
}

fn run(deferred: bool) {
    model(move || {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let s = Arc::new(Stack::new(&k));
        let collector = Collector::new();
        on_cpu(0);
        s.push(); // B
        s.push(); // A
        let (s1, c1) = (s.clone(), collector.clone());
        let t1 = loom::thread::spawn(move || {
            on_cpu(0);
            let h = c1.register();
            let g = h.pin();
            if let Some(n) = s1.pop() {
                s1.retire(&[n], deferred.then_some(&g));
            }
        });
        let (s2, c2) = (s.clone(), collector.clone());
        let t2 = loom::thread::spawn(move || {
            on_cpu(0);
            let h = c2.register();
            {
                let g = h.pin();
                // Two pops (fewer if thread 1 got there first).
                let popped: Vec<usize> = (0..2).filter_map(|_| s2.pop()).collect();
                s2.retire(&popped, deferred.then_some(&g));
                if deferred {
                    s2.cache.flush_deferred(&g);
                }
            }
            // A node is pushed (A's memory if A was freed), then another user of the cache
            // takes an object (B's memory).
            s2.push();
            s2.cache.alloc().unwrap()
        });
        t1.join().unwrap();
        let other = t2.join().unwrap();
        s.check();
        // SAFETY: allocated from the cache by thread 2, freed once.
        unsafe { s.cache.free(other) };
        // Empty the stack, let every deferred free run, and check nothing leaked.
        let h = collector.register();
        while let Some(n) = s.pop() {
            s.retire(&[n], deferred.then_some(&h.pin()));
        }
        s.cache.flush_deferred(&h.pin());
        drop(h);
        drop(collector);
        assert_eq!(s.cache.deferred_pending(), 0);
        assert_eq!(s.cache.info().active_objs, 0);
    });
}

#[test]
#[should_panic(expected = "ABA")]
fn immediate_free_has_aba() {
    run(false);
}

#[test]
fn deferred_free_has_no_aba() {
    run(true);
}
