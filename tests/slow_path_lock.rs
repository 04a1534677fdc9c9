//! The allocation slow path does not hold the CPU slot lock across `new_slab` (issue #10 item
//! 3): a thread stalled inside `new_slab` — here in the cache's constructor — must not stall
//! the other allocations on its slot.
//!
//! The instance has one slot, so every thread of the test shares it.

use kmem::{CacheConfig, Kmem};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set by the test: the next constructor call parks until [`RELEASE`].
static ARMED: AtomicBool = AtomicBool::new(false);
/// Set by the parked constructor once it is parked.
static PARKED: AtomicBool = AtomicBool::new(false);
/// Lets the parked constructor return.
static RELEASE: AtomicBool = AtomicBool::new(false);

/// How long the test waits for an allocation that must not be blocked.
const PATIENCE: Duration = Duration::from_secs(3);

/// A constructor that, once armed, parks its first call (bounded: 60 s, so that a broken
/// test cannot hang forever).
fn stalling_ctor(_obj: NonNull<u8>) {
    if ARMED.swap(false, Ordering::AcqRel) {
        PARKED.store(true, Ordering::Release);
        let t0 = Instant::now();
        while !RELEASE.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct SendPtr(NonNull<u8>);
// SAFETY: an object pointer handed from one test thread to another, used by one at a time.
unsafe impl Send for SendPtr {}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn a_stalled_constructor_does_not_block_the_slot() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache(
            "stall",
            256,
            CacheConfig::new()
                .ctor(stalling_ctor)
                .cpu_partial_slabs(4)
                .min_partial(4),
        )
        .unwrap();
    let per = c.objects_per_slab();
    // Slab 1 exactly full: the slot's CPU slab with an empty CPU freelist.
    let first: Vec<NonNull<u8>> = (0..per).map(|_| c.alloc().unwrap()).collect();
    assert_eq!(c.stats().alloc_slab, 1);

    let c = &c;
    std::thread::scope(|s| {
        // A: the next allocation finds slab 1 full, nothing partial, and builds slab 2; its
        // constructor parks.
        ARMED.store(true, Ordering::Release);
        let a = s.spawn(move || SendPtr(c.alloc().unwrap()));
        let t0 = Instant::now();
        while !PARKED.load(Ordering::Acquire) {
            assert!(t0.elapsed() < PATIENCE, "the constructor was never called");
            std::thread::sleep(Duration::from_millis(1));
        }

        // A free into slab 1 (full, unfrozen, on no list) makes it partial.
        let freed = first[0];
        // SAFETY: allocated from `c` above, freed once (it is not used again below).
        unsafe { c.free(freed) };

        // B, on the same (only) slot: its allocation finds the CPU freelist empty, takes the
        // slow path, and must get the freed object from the partial slab while A is parked.
        let (tx, rx) = mpsc::channel();
        let b = s.spawn(move || {
            let p = c.alloc().unwrap();
            tx.send(SendPtr(p)).unwrap();
        });
        let got = rx.recv_timeout(PATIENCE);
        let stats_while_parked = c.stats();

        // Whatever happened, unpark A so that both threads finish.
        RELEASE.store(true, Ordering::Release);
        let a_obj = a.join().unwrap().0;
        b.join().unwrap();
        let b_obj = match got {
            Ok(p) => p.0,
            Err(_) => panic!(
                "an allocation on the slot was blocked for {PATIENCE:?} by a thread stalled in \
                 new_slab's constructor (the slot lock is held across new_slab)"
            ),
        };
        assert_eq!(b_obj, freed, "B should reuse the freed object of slab 1");
        // Slab 1 and A's slab 2 (counted before its constructor runs): B needed no new slab.
        assert_eq!(stats_while_parked.alloc_slab, 2, "{stats_while_parked:?}");
        assert_ne!(a_obj, b_obj);
        // SAFETY: allocated from `c`, each freed once.
        unsafe {
            c.free(a_obj);
            c.free(b_obj);
            for &p in &first[1..] {
                c.free(p);
            }
        }
    });
    assert_eq!(c.info().active_objs, 0, "{:?}", c.info());
    assert_eq!(c.stats().alloc_slab, 2, "{:?}", c.stats());
}
