//! Remote frees: objects allocated on one thread (pinned to CPU 0) and freed on another
//! (pinned to CPU 1), so that in kmem the allocating and the freeing thread use different CPU
//! slots and every free takes the lockless slab free (`__slab_free`) instead of the CPU fast
//! path.
//!
//! Group `remote_free_64B`: `kmem_private` (a `KmemCache` of a private instance), `mimalloc`,
//! `system`. The producer allocates and pushes pointers through a bounded single-producer
//! single-consumer ring (fixed array, no allocation); the consumer pops and frees. Measured with
//! `iter_custom`: wall time from both threads starting until both finish, divided by the number
//! of objects — the per-object cost of the pipeline (allocation and remote free overlap on the
//! two CPUs, so this is a throughput, not the sum of the two latencies).
//!
//! Needs at least 2 CPUs (else both threads share CPU 0 and the figure means something else;
//! a warning is printed).
//!
//! Run: `cargo bench --bench remote_free -- --warm-up-time 1 --measurement-time 5`.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmem::{CacheConfig, Kmem, KmemCache};
use mimalloc::MiMalloc;

const SIZE: usize = 64;
const RING: usize = 1024;

/// A bounded SPSC ring of pointers (as usize); head and tail on their own cache lines.
struct Ring {
    slots: [AtomicUsize; RING],
    head: Padded, // next to pop (consumer)
    tail: Padded, // next to push (producer)
}

#[repr(align(64))]
struct Padded(AtomicUsize);

impl Ring {
    fn new() -> Self {
        Ring {
            slots: [const { AtomicUsize::new(0) }; RING],
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
        }
    }

    fn push(&self, v: usize) {
        let t = self.tail.0.load(Ordering::Relaxed);
        while t.wrapping_sub(self.head.0.load(Ordering::Acquire)) >= RING {
            core::hint::spin_loop();
        }
        self.slots[t % RING].store(v, Ordering::Relaxed);
        self.tail.0.store(t.wrapping_add(1), Ordering::Release);
    }

    fn pop(&self) -> usize {
        let h = self.head.0.load(Ordering::Relaxed);
        while self.tail.0.load(Ordering::Acquire) == h {
            core::hint::spin_loop();
        }
        let v = self.slots[h % RING].load(Ordering::Relaxed);
        self.head.0.store(h.wrapping_add(1), Ordering::Release);
        v
    }
}

/// One allocator under test: alloc and free of `SIZE` bytes.
trait Alloc: Sync {
    fn alloc(&self) -> *mut u8;
    /// # Safety
    /// `p` came from `self.alloc()` and is freed once.
    unsafe fn free(&self, p: *mut u8);
}

impl Alloc for KmemCache {
    fn alloc(&self) -> *mut u8 {
        KmemCache::alloc(self)
            .expect("kmem: out of memory")
            .as_ptr()
    }
    unsafe fn free(&self, p: *mut u8) {
        // SAFETY: forwarded contract; `p` is non-null (it came from alloc).
        unsafe { KmemCache::free(self, core::ptr::NonNull::new_unchecked(p)) }
    }
}

struct Ga<A: GlobalAlloc + Sync>(A);

impl<A: GlobalAlloc + Sync> Alloc for Ga<A> {
    fn alloc(&self) -> *mut u8 {
        // SAFETY: non-zero-size layout.
        let p = unsafe { self.0.alloc(common::layout(SIZE)) };
        assert!(!p.is_null());
        p
    }
    unsafe fn free(&self, p: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(p, common::layout(SIZE)) }
    }
}

fn remote_free(c: &mut Criterion) {
    if common::online_cpus() < 2 {
        eprintln!("remote_free: WARNING: fewer than 2 CPUs; producer and consumer share a CPU");
    }
    eprintln!(
        "remote_free: kmem::cpu::method() = {:?}",
        kmem::cpu::method()
    );
    let k = Kmem::builder().build().expect("private kmem instance");
    let cache = k
        .create_cache("remote-64", SIZE, CacheConfig::new())
        .expect("cache");
    let _ = run(&cache, 1, true);

    let mut g = c.benchmark_group("remote_free_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("kmem_private", |b| {
        b.iter_custom(|iters| run(&cache, iters, false))
    });
    g.bench_function("mimalloc", |b| {
        b.iter_custom(|iters| run(&Ga(MiMalloc), iters, false))
    });
    g.bench_function("system", |b| {
        b.iter_custom(|iters| run(&Ga(System), iters, false))
    });
    g.finish();
    eprintln!("remote_free: {}: {:?}", cache.name(), cache.stats());
}

/// Runs `iters` objects through producer (CPU 0) -> consumer (CPU 1); returns the wall time
/// from the start barrier until both workers have finished. `report` prints each worker's CPU.
fn run(a: &dyn Alloc, iters: u64, report: bool) -> Duration {
    let ring = Ring::new();
    let start = Barrier::new(3);
    std::thread::scope(|s| {
        let p = s.spawn(|| {
            let pinned = common::pin_to_cpu(0);
            if report {
                eprintln!(
                    "remote_free: producer pinned to CPU 0: {pinned}, current_cpu() = {}",
                    kmem::cpu::current_cpu()
                );
            }
            start.wait();
            for _ in 0..iters {
                ring.push(a.alloc() as usize);
            }
        });
        let q = s.spawn(|| {
            let pinned = common::pin_to_cpu(1);
            if report {
                eprintln!(
                    "remote_free: consumer pinned to CPU 1: {pinned}, current_cpu() = {}",
                    kmem::cpu::current_cpu()
                );
            }
            start.wait();
            for _ in 0..iters {
                let p = ring.pop() as *mut u8;
                // SAFETY: each pointer is pushed once by the producer, which got it from
                // `a.alloc()`.
                unsafe { a.free(p) };
            }
        });
        start.wait();
        let t0 = Instant::now();
        p.join().expect("producer");
        q.join().expect("consumer");
        t0.elapsed()
    })
}

criterion_group!(benches, remote_free);
criterion_main!(benches);
