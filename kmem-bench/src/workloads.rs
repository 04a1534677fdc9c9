//! The workloads and what each measures (the timing harness they share is `harness.rs`).
//!
//! Every workload is generic over `A: GlobalAlloc` and is handed the allocator under test as a
//! value, so all allocators go through the same code. One *operation* is always one allocation
//! plus one free; `ns/op` is wall-clock time divided by operations completed, over all threads
//! (so for multi-threaded workloads it is the inverse of aggregate throughput).
//!
//! | workload | where | what it measures |
//! |---|---|---|
//! | `fastpath` | in process | alloc+free pairs of one size, one thread: the per-CPU fast path, the object never leaves its slab |
//! | `batch` | in process | alloc 1000 then free 1000, on one thread and on one thread per core: freelist refill from partial/new slabs and returning whole slabs |
//! | `remote-free` | in process | producer threads allocate, consumer threads free every object (passed in batches of 64 through a bounded SPSC ring): the cross-CPU free path |
//! | `many-threads` | child | 16x more threads than cores, each churning its own working set of random sizes 16–512 B: throughput and peak RSS under heavy oversubscription; and, as the case `…, fill`, the time per allocation while all threads build their working sets at once from a fresh process (new slabs, first-touch page faults) |
//! | `larson` | child | server churn after Larson & Krishnan: random sizes 8–1000 B, each thread hands its fresh objects to the next thread, which swaps them into a random slot of its working set and frees what it evicts |
//! | `fragmentation` | child | fill with random sizes 8–1000 B, free a random 90%, then call the allocator's release (kmem shrink, `mi_collect`, jemalloc purge, `malloc_trim`): RSS before and after, how much goes back to the OS |
//! | `objects` | child | alloc 1000 typed objects then drop them: `kmem::Cache<T>` against `Box<T>` on each global allocator |
//! | `large` | child | one thread per core churns a working set of random sizes 8 KiB–1 MiB: a quarter of the operations grow an object with `realloc` (×1.25–2, up to 1 MiB), the rest free one and allocate another: page blocks, large sizes, `realloc` in place or by copy |
//! | `idle` | child | a burst (random 8–1000 B objects, half the fragmentation fill, plus a 64 MiB set of 8 KiB–1 MiB ones) freed whole, then one second of a little work (ten rounds, 100 ms apart, each allocating and freeing 1% of the burst's objects): RSS one second after the burst was freed, with no release call |
//!
//! "In process" workloads call the `GlobalAlloc` value directly from the parent (whose global
//! allocator stays `system`). "Child" workloads run in a re-executed copy of this binary whose
//! `#[global_allocator]` is the allocator under test, so RSS and whole-program behaviour
//! belong to it.
//!
//! Timed samples are time-bound: threads work until the main thread, after sleeping for the
//! sample duration (at least 10 ms), raises a stop flag; threads check it every few dozen
//! operations. Setup (filling working sets) and teardown happen outside the timed window
//! (`many-threads` times its fill separately).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use crate::harness::{
    make256, make64, timed_threads, timed_threads_and_setup, Sample, BATCH, MIN_SAMPLE,
};

/// One workload of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// alloc+free pairs, one thread.
    Fastpath,
    /// alloc 1000 then free 1000; one thread and one per core.
    Batch,
    /// producers allocate, consumers free.
    RemoteFree,
    /// 1 thread per core churning working sets of 16-512 B (child process).
    Churn,
    /// 16x threads per core churning working sets (child process).
    ManyThreads,
    /// Larson-style server churn with cross-thread frees (child process).
    Larson,
    /// fill, free 90%, release: RSS (child process).
    Fragmentation,
    /// kmem::Cache<T> against Box<T> (child process).
    Objects,
    /// 8 KiB–1 MiB churn with realloc growth, one thread per core (child process).
    Large,
    /// RSS one second after a burst is freed whole (child process).
    Idle,
    /// redis-server under redis-benchmark, each allocator LD_PRELOADed (`real.rs`).
    Real,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 11] = [
        Workload::Fastpath,
        Workload::Batch,
        Workload::RemoteFree,
        Workload::Churn,
        Workload::ManyThreads,
        Workload::Larson,
        Workload::Fragmentation,
        Workload::Objects,
        Workload::Large,
        Workload::Idle,
        Workload::Real,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Fastpath => "fastpath",
            Workload::Batch => "batch",
            Workload::RemoteFree => "remote-free",
            Workload::Churn => "churn",
            Workload::ManyThreads => "many-threads",
            Workload::Larson => "larson",
            Workload::Fragmentation => "fragmentation",
            Workload::Objects => "objects",
            Workload::Large => "large",
            Workload::Idle => "idle",
            Workload::Real => "real",
        }
    }

    /// One line on what the workload measures.
    pub fn description(self) -> &'static str {
        match self {
            Workload::Fastpath => "alloc+free pairs, one thread (per-CPU fast path)",
            Workload::Batch => "alloc 1000 then free 1000 (slab refill and release)",
            Workload::RemoteFree => "producers allocate, consumers free (every free remote)",
            Workload::Churn => "1 thread per core churns a working set of 16-512 B (random frees)",
            Workload::ManyThreads => "16x threads per core churn working sets of 16-512 B",
            Workload::Larson => "server churn, 8-1000 B, objects freed by the next thread",
            Workload::Fragmentation => "fill, free random 90%, release: RSS returned to the OS",
            Workload::Objects => "1000 typed objects: kmem::Cache<T> vs Box<T>",
            Workload::Large => "8 KiB-1 MiB churn with realloc growth, one thread per core",
            Workload::Idle => "a burst freed whole, then 1 s of a little work: RSS kept",
            Workload::Real => {
                "redis-server under redis-benchmark, each allocator LD_PRELOADed: ns per \
                 request (Mops/s = M requests/s) and the server's peak RSS"
            }
        }
    }

    /// Whether it runs in a child process with the allocator as the global allocator.
    pub fn in_child(self) -> bool {
        matches!(
            self,
            Workload::Churn
                | Workload::ManyThreads
                | Workload::Larson
                | Workload::Fragmentation
                | Workload::Objects
                | Workload::Large
                | Workload::Idle
        )
    }
}

/// Resolved parameters of a run (also handed to child processes as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Duration of one timed sample, in milliseconds.
    pub duration_ms: u64,
    /// Repetitions of each measurement.
    pub runs: usize,
    /// Threads for "one per core" workloads (many-threads uses 16x this).
    pub threads: usize,
    /// Object sizes for fastpath, batch and remote-free.
    pub sizes: Vec<usize>,
    /// Objects per thread in many-threads and larson.
    pub working_set: usize,
    /// Bytes requested by the fragmentation fill, in MiB.
    pub frag_mib: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Whether children report kmem's slabinfo.
    pub slabinfo: bool,
    /// `--pin` ([`crate::harness::PIN`]).
    #[serde(default)]
    pub pin: bool,
    /// The child of this allocator also measures `kmem::Cache<T>` in `objects` (kmem's own
    /// child when kmem is measured; typed caches do not use the global allocator).
    pub cache_host: Option<crate::alloc::Backend>,
}

impl Params {
    /// The sample duration (never below [`MIN_SAMPLE`]).
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms).max(MIN_SAMPLE)
    }
}

/// One in-process measurement case of a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Label within the workload ("64 B", "2 threads, 256 B", ...).
    pub variant: String,
    /// Object size in bytes.
    pub size: usize,
    /// Worker threads (for remote-free: producer/consumer pairs).
    pub threads: usize,
}

/// The in-process cases of a workload (empty for child workloads).
pub fn cases(w: Workload, p: &Params) -> Vec<Case> {
    let mut out = Vec::new();
    for &size in &p.sizes {
        match w {
            Workload::Fastpath => out.push(Case {
                variant: format!("{size} B"),
                size,
                threads: 1,
            }),
            Workload::Batch => {
                let mut counts = vec![1];
                if p.threads > 1 {
                    counts.push(p.threads);
                }
                for t in counts {
                    out.push(Case {
                        variant: format!("{size} B, {t} thr"),
                        size,
                        threads: t,
                    });
                }
            }
            Workload::RemoteFree => {
                let pairs = (p.threads / 2).max(1);
                out.push(Case {
                    variant: format!("{size} B, {pairs}P+{pairs}C"),
                    size,
                    threads: pairs,
                });
            }
            _ => {}
        }
    }
    out
}

/// Result of one child-process case (one JSON object of the child's output line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChildResult {
    /// Label within the workload.
    pub variant: String,
    /// Allocator label ("kmem", "system", ..., or "kmem-cache" for typed caches).
    pub allocator: String,
    /// Operations completed.
    pub ops: u64,
    /// Length of the timed window in nanoseconds.
    pub elapsed_ns: u64,
    /// Peak RSS of the child at the end of the case, KiB.
    pub peak_rss_kib: u64,
    /// Workload-specific figures (fragmentation's RSS stages).
    pub extra: BTreeMap<String, f64>,
}

/// What a child process prints: one JSON line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChildReport {
    /// One entry per case.
    pub results: Vec<ChildResult>,
    /// kmem's slabinfo at exit, when asked for and kmem is the global allocator.
    pub slabinfo: Option<String>,
    /// Remarks for the report (e.g. which release call was made).
    pub notes: Vec<String>,
}

#[cold]
fn oom(layout: Layout) -> ! {
    std::alloc::handle_alloc_error(layout)
}

fn layout_for(size: usize) -> Layout {
    let align = if size >= 8 { 8 } else { 1 };
    Layout::from_size_align(size.max(1), align).expect("valid layout")
}

/// `fastpath`: alloc+free pairs of `size` bytes on one thread.
pub fn fastpath<A: GlobalAlloc + Sync>(a: &A, size: usize, duration: Duration) -> Sample {
    let layout = layout_for(size);
    timed_threads(
        1,
        duration,
        |_| (),
        |_, _, stop| {
            let mut ops = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    // The block is freed with the same allocator and layout right after.
                    // SAFETY: non-zero `layout`; `p` is freed once, with the same `a` and `layout`.
                    unsafe {
                        let p = a.alloc(layout);
                        if p.is_null() {
                            oom(layout);
                        }
                        black_box(p);
                        a.dealloc(p, layout);
                    }
                }
                ops += 256;
            }
            ops
        },
    )
}

/// `batch`: each of `threads` threads allocates [`BATCH`] objects, then frees them in order.
pub fn batch<A: GlobalAlloc + Sync>(
    a: &A,
    size: usize,
    threads: usize,
    duration: Duration,
) -> Sample {
    let layout = layout_for(size);
    timed_threads(
        threads,
        duration,
        |_| vec![std::ptr::null_mut::<u8>(); BATCH],
        |_, ptrs, stop| {
            let mut ops = 0;
            while !stop.load(Ordering::Relaxed) {
                for slot in ptrs.iter_mut() {
                    // SAFETY: non-zero layout.
                    let p = unsafe { a.alloc(layout) };
                    if p.is_null() {
                        oom(layout);
                    }
                    *slot = p;
                }
                black_box(&mut *ptrs);
                for &p in ptrs.iter() {
                    // SAFETY: allocated above with this allocator and layout, freed once.
                    unsafe { a.dealloc(p, layout) };
                }
                ops += BATCH as u64;
            }
            ops
        },
    )
}

/// Pointers per ring slot in `remote-free`.
const RING_BATCH: usize = 64;
/// Slots per ring.
const RING_SLOTS: usize = 16;

#[repr(align(128))]
struct Padded<T>(T);

/// A bounded single-producer single-consumer ring of pointer batches.
struct Ring {
    slots: [UnsafeCell<[*mut u8; RING_BATCH]>; RING_SLOTS],
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    done: AtomicBool,
}

// SAFETY: a slot is written only by the producer while it is outside [head, tail) and read only
// by the consumer while inside it; the Release/Acquire pairs on head and tail order the
// accesses. The pointers are plain addresses handed from one thread to the other.
unsafe impl Sync for Ring {}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: std::array::from_fn(|_| UnsafeCell::new([std::ptr::null_mut(); RING_BATCH])),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            done: AtomicBool::new(false),
        }
    }

    /// Producer side; false when full.
    fn push(&self, batch: &[*mut u8; RING_BATCH]) -> bool {
        let t = self.tail.0.load(Ordering::Relaxed);
        if t - self.head.0.load(Ordering::Acquire) == RING_SLOTS {
            return false;
        }
        // SAFETY: slot t is outside [head, tail): only the (single) producer touches it.
        unsafe { *self.slots[t % RING_SLOTS].get() = *batch };
        self.tail.0.store(t + 1, Ordering::Release);
        true
    }

    /// Consumer side; false when empty.
    fn pop(&self, out: &mut [*mut u8; RING_BATCH]) -> bool {
        let h = self.head.0.load(Ordering::Relaxed);
        if h == self.tail.0.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: slot h is inside [head, tail): published by the producer, only we read it.
        *out = unsafe { *self.slots[h % RING_SLOTS].get() };
        self.head.0.store(h + 1, Ordering::Release);
        true
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// `remote-free`: `pairs` producers allocate `size`-byte objects and pass them, 64 at a time,
/// through a bounded ring to their consumer, which frees them.
pub fn remote_free<A: GlobalAlloc + Sync>(
    a: &A,
    size: usize,
    pairs: usize,
    duration: Duration,
) -> Sample {
    let layout = layout_for(size);
    let rings: Vec<Ring> = (0..pairs).map(|_| Ring::new()).collect();
    timed_threads(
        2 * pairs,
        duration,
        |_| [std::ptr::null_mut::<u8>(); RING_BATCH],
        |t, buf, stop| {
            let ring = &rings[t / 2];
            if t % 2 == 0 {
                // Producer.
                'outer: while !stop.load(Ordering::Relaxed) {
                    for slot in buf.iter_mut() {
                        // SAFETY: non-zero layout.
                        let p = unsafe { a.alloc(layout) };
                        if p.is_null() {
                            oom(layout);
                        }
                        *slot = p;
                    }
                    let mut spins = 0;
                    while !ring.push(buf) {
                        if stop.load(Ordering::Relaxed) {
                            for &p in buf.iter() {
                                // SAFETY: ours, never published.
                                unsafe { a.dealloc(p, layout) };
                            }
                            break 'outer;
                        }
                        backoff(&mut spins);
                    }
                }
                ring.done.store(true, Ordering::Release);
                0
            } else {
                // Consumer: frees everything the producer published, then stops.
                let mut ops = 0;
                let mut spins = 0;
                loop {
                    if ring.pop(buf) {
                        spins = 0;
                        for &p in buf.iter() {
                            // Allocated by the producer with this allocator and layout, handed over
                            // once through the ring.
                            // SAFETY: `p` came from `a` with `layout` and is freed once.
                            unsafe { a.dealloc(p, layout) };
                        }
                        ops += RING_BATCH as u64;
                    } else if ring.done.load(Ordering::Acquire) {
                        if !ring.pop(buf) {
                            break;
                        }
                        for &p in buf.iter() {
                            // SAFETY: as above.
                            unsafe { a.dealloc(p, layout) };
                        }
                        ops += RING_BATCH as u64;
                    } else {
                        backoff(&mut spins);
                    }
                }
                ops
            }
        },
    )
}

/// An object owned by a workload: address and size (for its layout).
#[derive(Clone, Copy)]
struct Obj(*mut u8, usize);
// SAFETY: an Obj is a plain heap block address; whoever holds it owns the block exclusively.
unsafe impl Send for Obj {}

/// Allocates `size` bytes and touches the first and last byte, as a user would.
fn alloc_obj<A: GlobalAlloc>(a: &A, size: usize) -> Obj {
    let layout = layout_for(size);
    // SAFETY: non-zero layout.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        oom(layout);
    }
    // SAFETY: p points to at least `size` bytes.
    unsafe {
        p.write(size as u8);
        p.add(size - 1).write(1);
    }
    Obj(p, size)
}

fn free_obj<A: GlobalAlloc>(a: &A, o: Obj) {
    // SAFETY: `o` came from alloc_obj with this allocator and is owned by the caller.
    unsafe { a.dealloc(o.0, layout_for(o.1)) }
}

/// A working set that frees its objects when dropped.
struct Working<'a, A: GlobalAlloc> {
    a: &'a A,
    objs: Vec<Obj>,
    rng: SmallRng,
}

impl<A: GlobalAlloc> Drop for Working<'_, A> {
    fn drop(&mut self) {
        for o in self.objs.drain(..) {
            free_obj(self.a, o);
        }
    }
}

/// What `many-threads` measures.
#[derive(Clone, Copy, Debug)]
pub struct ManyThreads {
    /// The fill: every thread allocates its working set at once, from a fresh process: `ops`
    /// counts allocations (the frees come at teardown, untimed). This is where an allocator
    /// builds new slabs (pages, first-touch faults) under oversubscription.
    pub fill: Sample,
    /// The churn (steady state): alloc+free pairs.
    pub churn: Sample,
}

/// `many-threads`: `threads` threads each churn a working set of `working_set` objects of
/// random sizes 16–512 B (free a random one, allocate a new one); the fill of the working sets
/// is timed separately.
pub fn many_threads<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    working_set: usize,
    seed: u64,
    duration: Duration,
) -> ManyThreads {
    let (fill, churn) = timed_threads_and_setup(
        threads,
        duration,
        |t| {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let objs = (0..working_set.max(1))
                .map(|_| alloc_obj(a, rng.random_range(16..=512)))
                .collect();
            Working { a, objs, rng }
        },
        |_, w, stop| {
            let mut ops = 0;
            let n = w.objs.len();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    let i = w.rng.random_range(0..n);
                    free_obj(a, w.objs[i]);
                    w.objs[i] = alloc_obj(a, w.rng.random_range(16..=512));
                }
                ops += 64;
            }
            ops
        },
    );
    ManyThreads {
        fill: Sample {
            ops: (threads * working_set.max(1)) as u64,
            elapsed: fill,
        },
        churn,
    }
}

/// Objects a thread allocates before handing them to the next thread in `larson`.
const LARSON_BATCH: usize = 64;
/// Objects a mailbox holds at most.
const LARSON_MAILBOX: usize = 8 * LARSON_BATCH;

/// `larson`: server churn. Each of `threads` threads allocates batches of random sizes 8–1000 B
/// and posts them to the next thread's bounded mailbox; it takes what the previous thread
/// posted, swaps each object into a random slot of its `working_set`, and frees the evicted
/// object (allocated by another thread once the initial set has turned over).
pub fn larson<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    working_set: usize,
    seed: u64,
    duration: Duration,
) -> Sample {
    let mailboxes: Vec<Mutex<Vec<Obj>>> = (0..threads)
        .map(|_| Mutex::new(Vec::with_capacity(LARSON_MAILBOX)))
        .collect();
    struct State<'a, A: GlobalAlloc> {
        working: Working<'a, A>,
        outbox: Vec<Obj>,
        inbox: Vec<Obj>,
    }
    impl<A: GlobalAlloc> Drop for State<'_, A> {
        fn drop(&mut self) {
            for o in self.outbox.drain(..).chain(self.inbox.drain(..)) {
                free_obj(self.working.a, o);
            }
        }
    }
    let sample = timed_threads(
        threads,
        duration,
        |t| {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let objs = (0..working_set.max(1))
                .map(|_| alloc_obj(a, rng.random_range(8..=1000)))
                .collect();
            State {
                working: Working { a, objs, rng },
                outbox: Vec::with_capacity(LARSON_BATCH),
                inbox: Vec::with_capacity(LARSON_MAILBOX),
            }
        },
        |t, st, stop| {
            let next = &mailboxes[(t + 1) % threads];
            let mine = &mailboxes[t];
            let n = st.working.objs.len();
            let mut ops = 0;
            // Takes what the previous thread posted and churns it into the working set.
            let drain = |st: &mut State<'_, A>| {
                std::mem::swap(&mut *mine.lock().unwrap(), &mut st.inbox);
                let mut k = 0;
                for o in st.inbox.drain(..) {
                    let i = st.working.rng.random_range(0..n);
                    free_obj(a, std::mem::replace(&mut st.working.objs[i], o));
                    k += 1;
                }
                k
            };
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..LARSON_BATCH {
                    let size = st.working.rng.random_range(8..=1000);
                    st.outbox.push(alloc_obj(a, size));
                }
                let mut spins = 0;
                loop {
                    {
                        let mut m = next.lock().unwrap();
                        if m.len() + LARSON_BATCH <= LARSON_MAILBOX {
                            m.append(&mut st.outbox);
                            break;
                        }
                    }
                    // The next thread is behind: make progress on our own mailbox meanwhile.
                    ops += drain(st);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    backoff(&mut spins);
                }
                ops += drain(st);
            }
            ops
        },
    );
    for m in mailboxes {
        for o in m.into_inner().unwrap() {
            free_obj(a, o);
        }
    }
    sample
}

/// Figures of one `fragmentation` run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fragmentation {
    /// Time of the fill plus the free of 90%, over the objects allocated.
    pub sample: Sample,
    /// RSS before the fill, KiB.
    pub rss_base_kib: u64,
    /// RSS after the fill.
    pub rss_filled_kib: u64,
    /// RSS after freeing 90%.
    pub rss_freed_kib: u64,
    /// RSS after the release call.
    pub rss_released_kib: u64,
    /// The page floor: KiB of the 4 KiB pages that hold at least one byte of a surviving
    /// object (nothing can return those to the OS).
    pub page_floor_kib: u64,
}

/// KiB of the distinct 4 KiB pages that `[p, p + size)` of the objects touch.
fn page_floor_kib(objs: impl Iterator<Item = Obj>) -> u64 {
    let mut pages: Vec<usize> = Vec::new();
    for Obj(p, size) in objs {
        let first = p as usize >> 12;
        let last = (p as usize + size - 1) >> 12;
        pages.extend(first..=last);
    }
    pages.sort_unstable();
    pages.dedup();
    pages.len() as u64 * 4
}

/// `fragmentation`: allocates random sizes 8–1000 B until `bytes` are requested, frees a
/// random 90% of the objects, then calls `release` (the allocator's trim); records RSS at each
/// stage. The surviving 10% are freed afterwards. `at_peak` runs right after the fill (outside
/// the timing), with the bytes requested and the objects allocated: where an allocator can say
/// where its bytes went (kmem's `--slabinfo` breakdown).
pub fn fragmentation<A: GlobalAlloc>(
    a: &A,
    bytes: usize,
    seed: u64,
    at_peak: impl FnOnce(usize, usize),
    release: impl FnOnce(),
) -> Fragmentation {
    use crate::sys::current_rss_kib;
    let mut rng = SmallRng::seed_from_u64(seed);
    // Sizes drawn up front so the object table's own growth is not in the measurement.
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < bytes {
        let s = rng.random_range(8..=1000);
        sizes.push(s);
        total += s;
    }
    let mut objs: Vec<Obj> = Vec::with_capacity(sizes.len());
    // The order in which objects die: a random permutation, the first 90% are freed.
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let victims = sizes.len() * 9 / 10;
    let rss_base_kib = current_rss_kib();
    let t0 = Instant::now();
    for &s in &sizes {
        objs.push(alloc_obj(a, s));
    }
    let fill = t0.elapsed();
    let rss_filled_kib = current_rss_kib();
    at_peak(total, sizes.len());
    let t1 = Instant::now();
    for &i in &order[..victims] {
        free_obj(a, objs[i]);
    }
    let free = t1.elapsed();
    let rss_freed_kib = current_rss_kib();
    release();
    let rss_released_kib = current_rss_kib();
    let page_floor_kib = page_floor_kib(order[victims..].iter().map(|&i| objs[i]));
    for &i in &order[victims..] {
        free_obj(a, objs[i]);
    }
    Fragmentation {
        sample: Sample {
            ops: sizes.len() as u64,
            elapsed: fill + free,
        },
        rss_base_kib,
        rss_filled_kib,
        rss_freed_kib,
        rss_released_kib,
        page_floor_kib,
    }
}

/// Smallest and largest size of the `large` workload.
pub const LARGE_MIN: usize = 8 << 10;
/// See [`LARGE_MIN`].
pub const LARGE_MAX: usize = 1 << 20;
/// Objects per thread in `large`.
pub const LARGE_WORKING_SET: usize = 24;

/// Grows `o` with `realloc` to `new` bytes and touches the new last byte.
fn realloc_obj<A: GlobalAlloc>(a: &A, o: Obj, new: usize) -> Obj {
    // SAFETY: `o` came from `a` with `layout_for(o.1)` and is owned by the caller; `new > 0`.
    let p = unsafe { a.realloc(o.0, layout_for(o.1), new) };
    if p.is_null() {
        oom(layout_for(new));
    }
    // SAFETY: `p` points to at least `new` bytes.
    unsafe { p.add(new - 1).write(1) };
    Obj(p, new)
}

/// `large`: `threads` threads each churn a working set of [`LARGE_WORKING_SET`] objects of
/// random sizes 8 KiB–1 MiB: a quarter of the operations grow a random object with `realloc`
/// to 1.25–2 times its size (capped at 1 MiB; an object already at the cap is replaced), the
/// others free a random object and allocate a new one. One operation = one of those.
pub fn large<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    seed: u64,
    duration: Duration,
) -> Sample {
    timed_threads(
        threads,
        duration,
        |t| {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let objs = (0..LARGE_WORKING_SET)
                .map(|_| alloc_obj(a, rng.random_range(LARGE_MIN..=LARGE_MAX)))
                .collect();
            Working { a, objs, rng }
        },
        |_, w, stop| {
            let mut ops = 0;
            let n = w.objs.len();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..16 {
                    let i = w.rng.random_range(0..n);
                    let o = w.objs[i];
                    if w.rng.random_range(0..4) == 0 && o.1 < LARGE_MAX {
                        let grown = o.1 + o.1 * w.rng.random_range(1..=4) / 4;
                        w.objs[i] = realloc_obj(a, o, grown.min(LARGE_MAX));
                    } else {
                        free_obj(a, o);
                        w.objs[i] = alloc_obj(a, w.rng.random_range(LARGE_MIN..=LARGE_MAX));
                    }
                }
                ops += 16;
            }
            ops
        },
    )
}

/// Figures of one `idle` run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Idle {
    /// Time of the burst's allocations and frees, over the objects allocated.
    pub sample: Sample,
    /// RSS before the burst, KiB.
    pub rss_base_kib: u64,
    /// RSS with the burst allocated.
    pub rss_burst_kib: u64,
    /// RSS right after the burst was freed.
    pub rss_freed_kib: u64,
    /// RSS one second after the burst was freed (a little work in between).
    pub rss_idle_kib: u64,
}

/// Bytes of large (8 KiB–1 MiB) objects in the `idle` burst.
pub const IDLE_LARGE_BYTES: usize = 64 << 20;

/// `idle`: a burst of random 8–1000 B objects until `small_bytes` are requested and random
/// 8 KiB–1 MiB objects until [`IDLE_LARGE_BYTES`], allocated interleaved and freed whole (in
/// random order); then, for one second, ten rounds 100 ms apart, each allocating 1% of the
/// burst's objects (drawn from the same mix) and freeing them again. No release call is made:
/// what RSS shows at the end is what the allocator gave back by itself.
pub fn idle<A: GlobalAlloc>(a: &A, small_bytes: usize, seed: u64) -> Idle {
    use crate::sys::current_rss_kib;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sizes = Vec::new();
    let (mut small, mut big) = (0, 0);
    while small < small_bytes || big < IDLE_LARGE_BYTES {
        let s = if big >= IDLE_LARGE_BYTES || (small < small_bytes && rng.random_range(0..64) != 0)
        {
            let s = rng.random_range(8..=1000);
            small += s;
            s
        } else {
            let s = rng.random_range(LARGE_MIN..=LARGE_MAX);
            big += s;
            s
        };
        sizes.push(s);
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut objs: Vec<Obj> = Vec::with_capacity(sizes.len());
    let work = sizes.len() / 100;
    let mut scratch: Vec<Obj> = Vec::with_capacity(work);
    let rss_base_kib = current_rss_kib();
    let t0 = Instant::now();
    for &s in &sizes {
        objs.push(alloc_obj(a, s));
    }
    let rss_burst_kib = current_rss_kib();
    for &i in &order {
        free_obj(a, objs[i]);
    }
    let elapsed = t0.elapsed();
    let freed_at = Instant::now();
    let rss_freed_kib = current_rss_kib();
    for round in 1..=10u32 {
        for _ in 0..work {
            scratch.push(alloc_obj(a, sizes[rng.random_range(0..sizes.len())]));
        }
        for o in scratch.drain(..) {
            free_obj(a, o);
        }
        let next = freed_at + Duration::from_millis(100) * round;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let rss_idle_kib = current_rss_kib();
    Idle {
        sample: Sample {
            ops: sizes.len() as u64,
            elapsed,
        },
        rss_base_kib,
        rss_burst_kib,
        rss_freed_kib,
        rss_idle_kib,
    }
}

/// `objects` with `Box<T>`: allocate [`BATCH`] boxed `T`s into a vector, then drop them.
/// Runs in a child whose global allocator is the one under test.
pub fn objects_box<T>(make: fn(u64) -> T, duration: Duration) -> Sample {
    timed_threads(
        1,
        duration,
        |_| Vec::<Box<T>>::with_capacity(BATCH),
        |_, v, stop| {
            let mut ops = 0;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..BATCH as u64 {
                    v.push(Box::new(make(i)));
                }
                black_box(&mut *v);
                v.clear();
                ops += BATCH as u64;
            }
            ops
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn params() -> Params {
        Params {
            duration_ms: 10,
            runs: 1,
            threads: 2,
            sizes: vec![64, 256],
            working_set: 100,
            frag_mib: 4,
            seed: 1,
            slabinfo: false,
            pin: false,
            cache_host: None,
        }
    }

    #[test]
    fn cases_follow_params() {
        let p = params();
        let v: Vec<_> = cases(Workload::Batch, &p)
            .into_iter()
            .map(|c| c.variant)
            .collect();
        assert_eq!(
            v,
            ["64 B, 1 thr", "64 B, 2 thr", "256 B, 1 thr", "256 B, 2 thr"]
        );
        assert_eq!(cases(Workload::RemoteFree, &p)[0].threads, 1);
        assert_eq!(cases(Workload::Fastpath, &p).len(), 2);
        assert!(cases(Workload::Larson, &p).is_empty());
    }

    #[test]
    fn workloads_do_work() {
        // `large` maps and unmaps tens of MiB: not inside another test's RSS measurement.
        let _rss = crate::sys::RSS_TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let d = MIN_SAMPLE;
        assert!(fastpath(&System, 64, d).ops > 0);
        assert!(batch(&System, 64, 2, d).ops >= BATCH as u64);
        let s = remote_free(&System, 64, 1, d);
        assert!(s.ops > 0 && s.ops.is_multiple_of(RING_BATCH as u64));
        let m = many_threads(&System, 4, 50, 1, d);
        assert!(m.churn.ops > 0);
        assert_eq!(m.fill.ops, 200);
        assert!(m.fill.elapsed > Duration::ZERO);
        assert!(larson(&System, 3, 50, 1, d).ops > 0);
        assert!(objects_box(make64, d).ops > 0);
        assert!(large(&System, 2, 1, d).ops > 0);
    }

    #[test]
    fn page_floor_counts_pages_touched() {
        let base = 0x10_0000usize;
        let o = |off: usize, size| Obj((base + off) as *mut u8, size);
        // One byte on page 0, a span over pages 1-2, a second object on page 2, page 5.
        let objs = [
            o(10, 1),
            o(4096 + 4000, 200),
            o(8192 + 500, 8),
            o(5 * 4096, 4096),
        ];
        assert_eq!(page_floor_kib(objs.into_iter()), 4 * 4);
    }

    #[test]
    fn idle_measures_rss() {
        let _rss = crate::sys::RSS_TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // 64 MiB of small objects show up in RSS (the large ones only where they are touched:
        // their first and last bytes), by far more than other tests' threads give back to the
        // OS meanwhile (glibc unmaps cached thread stacks as they come and go: up to 15 MiB
        // was seen to leave during an 8 MiB burst).
        let f = idle(&System, 64 << 20, 3);
        assert!(f.rss_burst_kib > f.rss_base_kib + 32 * 1024, "{f:?}");
        assert!(f.sample.ops > 64_000);
    }

    #[test]
    fn fragmentation_measures_rss() {
        let _rss = crate::sys::RSS_TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let f = fragmentation(&System, 16 << 20, 7, |_, _| {}, || {});
        assert!(f.sample.ops > 16_000);
        // 16 MiB of objects must show up in RSS.
        assert!(f.rss_filled_kib > f.rss_base_kib + 8 * 1024, "{f:?}");
    }

    #[test]
    fn sample_rate() {
        let s = Sample {
            ops: 1000,
            elapsed: Duration::from_micros(20),
        };
        assert_eq!(s.ns_per_op(), 20.0);
        assert!(Sample {
            ops: 0,
            elapsed: Duration::ZERO
        }
        .ns_per_op()
        .is_infinite());
    }
}
