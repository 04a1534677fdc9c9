//! The timing harness every workload and the typed-object bench share: time-bound samples over
//! threads that work until a stop flag, with setup outside the timed window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// `--pin`: workers of a run with no more threads than the process may use CPUs are pinned,
/// worker `t` to the `t`-th of those CPUs (set once by `main`, and by a child from its
/// parameters). Off by default: the scheduler may then put two workers on one CPU for a
/// while, which every allocator sees alike but which makes two-thread figures bimodal on a
/// shared machine; A/B comparisons of kmem builds turn it on.
pub static PIN: AtomicBool = AtomicBool::new(false);

/// The CPUs this process may run on, in order (`sched_getaffinity`), or none if unknown.
fn allowed_cpus() -> Vec<usize> {
    // A zeroed cpu_set_t is a valid empty set, which sched_getaffinity fills.
    // SAFETY: only the calling thread's mask is read, into a local set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu` (best effort: a refusal leaves it unpinned).
fn pin_to(cpu: usize) {
    // `cpu` is below CPU_SETSIZE: it came from `allowed_cpus`.
    // SAFETY: a zeroed cpu_set_t with `cpu` set; applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Smallest sample duration accepted.
pub const MIN_SAMPLE: Duration = Duration::from_millis(10);

/// Objects per batch in `batch` and `objects`.
pub const BATCH: usize = 1000;

/// Operations completed in a timed window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Operations (alloc+free pairs) completed.
    pub ops: u64,
    /// Wall-clock length of the window.
    pub elapsed: Duration,
}

impl Sample {
    /// Nanoseconds per operation.
    pub fn ns_per_op(&self) -> f64 {
        if self.ops == 0 {
            f64::INFINITY
        } else {
            self.elapsed.as_nanos() as f64 / self.ops as f64
        }
    }
}

/// Runs `n` threads for `duration`: each builds its state with `setup` (untimed), then `work`
/// runs until the stop flag rises and returns its operation count; the state is dropped
/// (untimed) after every thread has left `work`.
pub fn timed_threads<S, Setup, Work>(
    n: usize,
    duration: Duration,
    setup: Setup,
    work: Work,
) -> Sample
where
    Setup: Fn(usize) -> S + Sync,
    Work: Fn(usize, &mut S, &AtomicBool) -> u64 + Sync,
{
    timed_threads_and_setup(n, duration, setup, work).1
}

/// [`timed_threads`], also returning how long the setup took, all threads at once: from the
/// earliest worker's start of `setup` (after a barrier every worker has reached) to the latest
/// worker's end of it. Each worker reads the clock itself around its `setup`: the main thread
/// may be descheduled at any moment under oversubscription, so it cannot time the setup.
pub fn timed_threads_and_setup<S, Setup, Work>(
    n: usize,
    duration: Duration,
    setup: Setup,
    work: Work,
) -> (Duration, Sample)
where
    Setup: Fn(usize) -> S + Sync,
    Work: Fn(usize, &mut S, &AtomicBool) -> u64 + Sync,
{
    // `start`: every worker exists. `ready`: every worker has built its state; `go`: the timed
    // window opens. The clock starts between the two, while every worker is parked, so no work
    // precedes it even when the main thread is descheduled (heavy oversubscription); it stops
    // after every worker has left `work`, so the window covers all counted operations.
    let start = Barrier::new(n);
    let ready = Barrier::new(n + 1);
    let go = Barrier::new(n + 1);
    let end = Barrier::new(n + 1);
    let stop = AtomicBool::new(false);
    let cpus = if PIN.load(Ordering::Relaxed) {
        allowed_cpus()
    } else {
        Vec::new()
    };
    let pin = n <= cpus.len();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (start, ready, go, end, stop) = (&start, &ready, &go, &end, &stop);
                let (setup, work) = (&setup, &work);
                let cpu = if pin { Some(cpus[t]) } else { None };
                s.spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    start.wait();
                    let s0 = Instant::now();
                    let mut state = setup(t);
                    let s1 = Instant::now();
                    ready.wait();
                    go.wait();
                    let ops = work(t, &mut state, stop);
                    end.wait();
                    drop(state);
                    (ops, s0, s1)
                })
            })
            .collect();
        ready.wait();
        let t0 = Instant::now();
        go.wait();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        end.wait();
        let elapsed = t0.elapsed();
        let (mut ops, mut first, mut last) = (0, None::<Instant>, None::<Instant>);
        for h in handles {
            let (o, s0, s1) = h.join().expect("worker panicked");
            ops += o;
            first = Some(first.map_or(s0, |f| f.min(s0)));
            last = Some(last.map_or(s1, |l| l.max(s1)));
        }
        let setup = match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f),
            _ => Duration::ZERO,
        };
        (setup, Sample { ops, elapsed })
    })
}

/// A 64-byte object for `objects` (the payload only gives it its size).
#[derive(Clone, Copy)]
#[allow(dead_code)]
pub struct Obj64(pub [u64; 8]);
/// A 256-byte object for `objects` (the payload only gives it its size).
#[derive(Clone, Copy)]
#[allow(dead_code)]
pub struct Obj256(pub [u64; 32]);

/// Builds an [`Obj64`] from a counter.
pub fn make64(i: u64) -> Obj64 {
    Obj64([i; 8])
}
/// Builds an [`Obj256`] from a counter.
pub fn make256(i: u64) -> Obj256 {
    Obj256([i; 32])
}
