//! Stress test of the SLUB fast paths in the rseq commit mode, on real caches, with every way a
//! sequence can be aborted or a slot touched from elsewhere happening at once:
//!
//! - an interval timer at 50 kHz (`ITIMER_REAL`, 20 µs; the achieved rate must exceed 10 kHz)
//!   whose `SIGALRM` handler allocates and frees (from a cache of a second instance that only
//!   signal handlers use, so a handler never needs a lock its interrupted thread holds);
//! - workers allocating batches of stamped objects from cache A, checking every stamp at free
//!   time, recording every live object in a sharded set (an object handed out twice fails the
//!   insertion), and using the global allocator (`Kmalloc`, in rseq mode here) for the set;
//! - a thread moving the workers between CPUs with `sched_setaffinity` every ~100 µs;
//! - a thread calling `shrink()` and `info()` on cache A in a loop (every slot stopped and
//!   fenced, flushed, counted exactly);
//! - a thread forking in a loop; each child allocates and frees through the global allocator
//!   (the inherited rseq registration, the fork handlers) and exits.
//!
//! At the end every object is freed: both caches must report no active object and, after
//! shrink, no slab. `KMEM_STRESS_SECS` (default 2) sets the duration. Skipped (with a line
//! saying so) when the process is in the locked mode.

use kmem::cpu::{commit_mode, CommitMode};
use kmem::{CacheConfig, Kmem, KmemCache};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SIZE: usize = 64;
static HANDLER_CACHE: AtomicPtr<KmemCache> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_ERRORS: AtomicUsize = AtomicUsize::new(0);
static TOKEN: AtomicUsize = AtomicUsize::new(1);

extern "C" fn on_alarm(_: libc::c_int) {
    HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
    let p = HANDLER_CACHE.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: published before the timer started; lives until after the timer stopped.
    let c = unsafe { &*p };
    let (Some(a), Some(b)) = (c.alloc(), c.alloc()) else {
        HANDLER_ERRORS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let t = TOKEN.fetch_add(2, Ordering::Relaxed);
    // SAFETY: two objects of SIZE bytes that we own.
    unsafe {
        std::ptr::write_bytes(a.as_ptr(), 0, SIZE);
        std::ptr::write_bytes(b.as_ptr(), 0, SIZE);
        (a.as_ptr() as *mut usize).add(1).write(t);
        (b.as_ptr() as *mut usize).add(1).write(t + 1);
        // Another handler that got the same object would have overwritten the token.
        if a == b
            || (a.as_ptr() as *const usize).add(1).read() != t
            || (b.as_ptr() as *const usize).add(1).read() != t + 1
        {
            HANDLER_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        c.free(a);
        c.free(b);
    }
}

const SHARDS: usize = 64;
struct LiveSet(Vec<Mutex<HashSet<usize>>>);
impl LiveSet {
    fn shard(&self, p: usize) -> &Mutex<HashSet<usize>> {
        &self.0[(p >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58]
    }
}

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of_val(&set);
    // SAFETY: `set` is valid, of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    assert_eq!(r, 0);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn set_affinity(tid: i32, cpus: &[usize]) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    for &c in cpus {
        // SAFETY: below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is valid; an exited thread makes it fail harmlessly.
    unsafe { libc::sched_setaffinity(tid, core::mem::size_of_val(&set), &set) };
}

#[test]
fn caches_under_signals_migration_shrink_and_fork() {
    if commit_mode() != CommitMode::Rseq {
        eprintln!(
            "skipped: commit mode {:?} ({})",
            commit_mode(),
            kmem::cpu::commit_mode_reason()
        );
        return;
    }
    // Both designs, one after the other (the timer and the handler's cache are process-wide):
    // the cpu slab, then sheaves in front of it.
    run(0);
    run(kmem::default_sheaf_capacity(SIZE));
}

/// One run; `sheaf_capacity` 0 for the cpu-slab design.
fn run(sheaf_capacity: usize) {
    HANDLER_RUNS.store(0, Ordering::Relaxed);
    let cfg = CacheConfig::new().sheaf_capacity(sheaf_capacity);
    let secs: f64 = std::env::var("KMEM_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let ka = Kmem::builder().build().unwrap();
    let kb = Kmem::builder().build().unwrap();
    assert_eq!(ka.commit_mode(), CommitMode::Rseq);
    assert_eq!(kb.commit_mode(), CommitMode::Rseq);
    let a = ka.create_cache("rseq-stress-a", SIZE, cfg.clone()).unwrap();
    let b = kb.create_cache("rseq-stress-handler", SIZE, cfg).unwrap();
    // Objects ready for the handler before the first signal: its fast path stays hot.
    let warm: Vec<_> = (0..256).map(|_| b.alloc().unwrap()).collect();
    for p in warm {
        // SAFETY: allocated from `b` just above, freed once.
        unsafe { b.free(p) };
    }
    HANDLER_CACHE.store(&b as *const KmemCache as *mut KmemCache, Ordering::Release);
    // SAFETY: a plain handler; it only uses cache `b` (fast paths; its slow path locks only `b`'s own structures, which no thread holds outside a handler) and atomics.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &sa, core::ptr::null_mut()),
            0
        );
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 20,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 20,
            },
        };
        assert_eq!(
            libc::setitimer(libc::ITIMER_REAL, &it, core::ptr::null_mut()),
            0
        );
    }
    let live = LiveSet((0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect());
    let stop = AtomicBool::new(false);
    const WORKERS: usize = 4;
    let tids: Vec<AtomicI32> = (0..WORKERS).map(|_| AtomicI32::new(0)).collect();
    let cpus = allowed_cpus();
    let ops = AtomicUsize::new(0);
    let (mut shrinks, mut forks, mut migrations) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for (w, tid) in tids.iter().enumerate() {
            let (a, live, stop, ops) = (&a, &live, &stop, &ops);
            sc.spawn(move || {
                tid.store(gettid(), Ordering::Release);
                let mut held = Vec::with_capacity(16);
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    for i in 0..1 + (round % 16) {
                        let p = a.alloc().expect("out of memory");
                        let v = ((w as u64) << 48) ^ (round << 8) ^ i;
                        // SAFETY: a fresh object of SIZE bytes.
                        unsafe {
                            for k in 0..SIZE / 8 {
                                (p.as_ptr() as *mut u64).add(k).write(v ^ k as u64);
                            }
                        }
                        assert!(
                            live.shard(p.as_ptr() as usize)
                                .lock()
                                .unwrap()
                                .insert(p.as_ptr() as usize),
                            "object {p:p} handed out twice"
                        );
                        held.push((p, v));
                    }
                    for (p, v) in held.drain(..) {
                        // SAFETY: ours, SIZE bytes.
                        unsafe {
                            for k in 0..SIZE / 8 {
                                assert_eq!(
                                    (p.as_ptr() as *const u64).add(k).read(),
                                    v ^ k as u64,
                                    "stamp lost in {p:p}"
                                );
                            }
                        }
                        assert!(live
                            .shard(p.as_ptr() as usize)
                            .lock()
                            .unwrap()
                            .remove(&(p.as_ptr() as usize)));
                        // SAFETY: allocated from `a`, freed once.
                        unsafe { a.free(p) };
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        sc.spawn(|| {
            let mut x = 0x2545_F491u64;
            while !stop.load(Ordering::Relaxed) {
                for t in &tids {
                    let tid = t.load(Ordering::Acquire);
                    if tid != 0 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        set_affinity(tid, &[cpus[x as usize % cpus.len()]]);
                        migrations += 1;
                    }
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            for t in &tids {
                set_affinity(t.load(Ordering::Acquire), &cpus);
            }
        });
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                a.shrink();
                let info = a.info();
                assert!(info.active_objs <= info.num_objs, "{info:?}");
                shrinks += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the child uses the global allocator (fork handlers make it usable in the child) and leaves with `_exit`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let v: Vec<Box<[u8; 48]>> = (0..64).map(|i| Box::new([i as u8; 48])).collect();
                    let ok = v
                        .iter()
                        .enumerate()
                        .all(|(i, b)| b.iter().all(|&x| x == i as u8));
                    drop(v);
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                assert!(pid > 0);
                let mut status = 0;
                // SAFETY: our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "child {status:#x}"
                );
                forks += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    // SAFETY: disarms the timer.
    unsafe {
        let it: libc::itimerval = core::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &it, core::ptr::null_mut());
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(10));
    HANDLER_CACHE.store(std::ptr::null_mut(), Ordering::Release);
    let rate = HANDLER_RUNS.load(Ordering::Relaxed) as f64 / elapsed;
    let sa = a.stats();
    eprintln!(
        "rseq cache stress (sheaf capacity {sheaf_capacity}): {elapsed:.1} s, {} worker \
         alloc+free, {} handler runs ({rate:.0}/s), {migrations} migrations, {shrinks} \
         shrink+info, {forks} forks; cache A: alloc_cpu_sheaf {} free_cpu_sheaf {} \
         alloc_fastpath {} alloc_slowpath {} free_fastpath {} free_slowpath {}",
        ops.load(Ordering::Relaxed),
        HANDLER_RUNS.load(Ordering::Relaxed),
        sa.alloc_cpu_sheaf,
        sa.free_cpu_sheaf,
        sa.alloc_fastpath,
        sa.alloc_slowpath,
        sa.free_fastpath,
        sa.free_slowpath,
    );
    assert_eq!(
        HANDLER_ERRORS.load(Ordering::Relaxed),
        0,
        "handler saw a duplicate or OOM"
    );
    for (c, name) in [(&a, "A"), (&b, "handler")] {
        let info = c.info();
        assert_eq!(info.active_objs, 0, "cache {name}: objects lost: {info:?}");
        c.shrink();
        assert_eq!(
            c.info().num_slabs,
            0,
            "cache {name}: slabs left after shrink"
        );
    }
    assert!(rate > 10_000.0, "timer rate {rate:.0}/s");
    assert!(forks > 0 && shrinks > 0 && migrations > 0);
}
