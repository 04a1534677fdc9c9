//! Remote frees: objects allocated on one thread (pinned to CPU 0) and freed on another
//! (pinned to CPU 1), so that in kmem the allocating and the freeing thread use different CPU
//! slots and every free takes the lockless slab free (`__slab_free`) instead of the CPU fast
//! path.
//!
//! Group `remote_free_64B`: `kmem_private` (a `KmemCache` of a private instance), `mimalloc`,
//! `system`. The producer allocates a batch of 1000 objects into a shared buffer and hands it
//! over; the consumer frees them all and hands the buffer back. Measured with `iter_custom`:
//! the sum of the two threads' CPU time spent in their alloc and free loops, divided by the
//! number of objects — the cost of one allocation plus one remote free. The handoffs are not
//! timed, and CPU time (not wall time) is used because this 2-vCPU machine is shared with other
//! jobs: a pipelined wall-time version measured 550–740 ns/object here, nearly all of it one
//! thread spinning while the other was descheduled.
//!
//! Needs at least 2 CPUs (else both threads share CPU 0 and the figure means something else;
//! a warning is printed).
//!
//! Run: `cargo bench --bench remote_free -- --warm-up-time 1 --measurement-time 5`.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmem::{CacheConfig, Kmem, KmemCache};
use mimalloc::MiMalloc;

const SIZE: usize = 64;
/// Objects per handoff: allocated on CPU 0, then all freed on CPU 1.
const BATCH: usize = 1000;

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

/// Runs `iters` objects through producer (CPU 0) -> consumer (CPU 1) in batches of `BATCH`:
/// the producer allocates a batch into the shared buffer and hands it over; the consumer frees
/// it and hands the buffer back. Each thread adds up its own CPU time
/// (`CLOCK_THREAD_CPUTIME_ID`) around its alloc or free loop only; the result is the sum, so
/// the handoffs, the waiting, and time descheduled by other jobs on this shared machine are not
/// counted. `report` prints each worker's CPU.
fn run(a: &dyn Alloc, iters: u64, report: bool) -> Duration {
    let buf: Vec<AtomicUsize> = (0..BATCH).map(|_| AtomicUsize::new(0)).collect();
    // 0: the producer's turn, 1: the consumer's turn; `left` objects still to produce.
    let turn = AtomicUsize::new(0);
    let wait_for = |want: usize| {
        let mut spins = 0u32;
        while turn.load(Ordering::Acquire) != want {
            spins += 1;
            if spins < 1000 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    };
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let pinned = common::pin_to_cpu(0);
            if report {
                eprintln!(
                    "remote_free: producer pinned to CPU 0: {pinned}, current_cpu() = {}",
                    kmem::cpu::current_cpu()
                );
            }
            let mut cpu = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                wait_for(0);
                let t0 = thread_cpu_time();
                for slot in &buf[..n] {
                    slot.store(a.alloc() as usize, Ordering::Relaxed);
                }
                cpu += thread_cpu_time() - t0;
                left -= n as u64;
                turn.store(1, Ordering::Release);
            }
            cpu
        });
        let consumer = s.spawn(|| {
            let pinned = common::pin_to_cpu(1);
            if report {
                eprintln!(
                    "remote_free: consumer pinned to CPU 1: {pinned}, current_cpu() = {}",
                    kmem::cpu::current_cpu()
                );
            }
            let mut cpu = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                wait_for(1);
                let t0 = thread_cpu_time();
                for slot in &buf[..n] {
                    // Each pointer was stored once by the producer, which got it from `a.alloc()`;
                    // the buffer is refilled only after we hand it back.
                    // SAFETY: each pointer came from `a.alloc()` and is freed exactly once.
                    unsafe { a.free(slot.load(Ordering::Relaxed) as *mut u8) };
                }
                cpu += thread_cpu_time() - t0;
                left -= n as u64;
                turn.store(0, Ordering::Release);
            }
            cpu
        });
        producer.join().expect("producer") + consumer.join().expect("consumer")
    })
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec on our stack.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, remote_free);
criterion_main!(benches);
