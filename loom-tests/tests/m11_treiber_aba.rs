//! Model 11: a user's Treiber stack whose nodes come from a `KmemCache`, with kmem's reuse
//! inside the model (what issue #17 promises users of `--cfg loom`).
//!
//! The stack holds A -> B. Thread 1 pops: it reads `head = A` and `next = B`, then CASes
//! `head: A -> B`. Thread 2 (same CPU slot, so kmem's LIFO freelist hands objects straight
//! back) pops A and B, frees both, allocates an object for some other use (B's memory) and
//! pushes a fresh node (A's memory). If thread 1 is preempted between reading `next` and its
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

    /// Pops a node; frees it at once (`guard == None`) or after a grace period.
    fn pop(&self, guard: Option<&Guard>) -> Option<usize> {
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
                let p = NonNull::new(h as *mut u8).unwrap();
                match guard {
                    // SAFETY: unlinked by our CAS, freed once.
                    None => unsafe { self.cache.free(p) },
                    // SAFETY: as above; readers pinned now may still read it.
                    Some(g) => unsafe { self.cache.free_deferred(p, g) },
                }
                return Some(h);
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
                "ABA: freed node {n:#x} is linked into the stack"
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
            s1.pop(deferred.then_some(&g));
        });
        let (s2, c2) = (s.clone(), collector.clone());
        let t2 = loom::thread::spawn(move || {
            on_cpu(0);
            let h = c2.register();
            {
                let g = h.pin();
                s2.pop(deferred.then_some(&g));
                s2.pop(deferred.then_some(&g));
                if deferred {
                    s2.cache.flush_deferred(&g);
                }
            }
            // Another user of the cache takes an object, then a node is pushed.
            let other = s2.cache.alloc().unwrap();
            s2.push();
            other
        });
        t1.join().unwrap();
        let other = t2.join().unwrap();
        s.check();
        // SAFETY: allocated from the cache by thread 2, freed once.
        unsafe { s.cache.free(other) };
        // Empty the stack, let every deferred free run, and check nothing leaked.
        let h = collector.register();
        while s.pop(deferred.then_some(&h.pin())).is_some() {}
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
