//! Stress test of the per-CPU restartable sequences (`src/cpu/percpu/`) on a private slot
//! array, with every way the kernel can abort a sequence happening at once:
//!
//! - an interval timer at 50 kHz (`ITIMER_REAL`, 20 µs; the achieved rate is printed and must exceed 10 kHz) whose `SIGALRM` handler itself pops and
//!   pushes objects with sequences (so sequences are interrupted by signals whose handlers run
//!   sequences on the same slot);
//! - a thread that moves the workers between CPUs with `sched_setaffinity` every ~100 µs;
//! - a stopper that, slot after slot, stops it (stop + membarrier fence), takes its whole list
//!   with the locked CAS, checks every object on it, moves it to another slot, and resumes;
//! - a thread that forks in a loop; each child runs sequences (the inherited registration),
//!   stops and fences a slot itself, and exits;
//! - worker threads popping up to 8 objects and pushing them back.
//!
//! Every object carries a stamp: 0 while free, its holder's id while held, set and cleared by
//! compare-and-swap. An object handed out twice fails the CAS at once; an object lost is missing
//! from the final census (every slot's list plus nothing held must be exactly the objects
//! created). `KMEM_STRESS_SECS` (default 2) sets the duration.

use kmem::cpu::{__Seq as Seq, __TestSlots as TestSlots, commit_mode, CommitMode};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[repr(C, align(64))]
struct Obj {
    next: usize,
    stamp: AtomicU64,
    _pad: [u64; 6],
}

static SLOTS: AtomicPtr<TestSlots> = AtomicPtr::new(std::ptr::null_mut());
static ERRORS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_OPS: AtomicUsize = AtomicUsize::new(0);
static POPS: AtomicUsize = AtomicUsize::new(0);

fn obj(a: usize) -> &'static Obj {
    // SAFETY: every address handled here is one of the leaked `Obj`s.
    unsafe { &*(a as *const Obj) }
}

/// Takes ownership of a popped object: its stamp must be 0 (free).
fn claim(a: usize, who: u64) -> bool {
    let ok = obj(a)
        .stamp
        .compare_exchange(0, who, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if !ok {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// Gives an object back (stamp `who` → 0) and pushes it; retries while the slot is stopped.
fn release(s: &TestSlots, a: usize, who: u64, in_handler: bool) {
    if obj(a)
        .stamp
        .compare_exchange(who, 0, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        // SAFETY: `a` is ours (its stamp was ours) until popped again.
        match unsafe { s.push(a) }.0 {
            Seq::Done => return,
            Seq::Stopped | Seq::Mismatch => {
                if !in_handler {
                    std::thread::yield_now();
                }
                core::hint::spin_loop()
            }
            Seq::Unavailable => {
                assert!(
                    TestSlots::thread_can_sequence(),
                    "this thread cannot run sequences"
                )
            }
            Seq::DoubleFree | Seq::Empty | Seq::Full => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

extern "C" fn on_alarm(_: libc::c_int) {
    HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
    let p = SLOTS.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: published before the timer started, freed after it stopped.
    let s = unsafe { &*p };
    let (st, _, a) = s.pop();
    if st == Seq::Done {
        let who = 0xAA00_0000 + HANDLER_RUNS.load(Ordering::Relaxed) as u64;
        if claim(a, who) {
            // The handler may have interrupted a stopper: the push waits in a bounded spin
            // only if the slot is stopped, and the stopper (another thread) resumes it.
            release(s, a, who, true);
            HANDLER_OPS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
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
    // SAFETY: `set` is valid; a thread that already exited makes it fail harmlessly.
    unsafe { libc::sched_setaffinity(tid, core::mem::size_of_val(&set), &set) };
}

#[test]
fn sequences_under_signals_migration_stop_fence_and_fork() {
    if commit_mode() != CommitMode::Rseq {
        eprintln!(
            "skipped: commit mode {:?} ({})",
            commit_mode(),
            kmem::cpu::commit_mode_reason()
        );
        return;
    }
    let secs: f64 = std::env::var("KMEM_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let nr = kmem::cpu::possible_cpus();
    let cpus = allowed_cpus();
    const OBJECTS: usize = 4096;
    let objs: &'static [Obj] = Box::leak(
        (0..OBJECTS)
            .map(|_| Obj {
                next: 0,
                stamp: AtomicU64::new(0),
                _pad: [0; 6],
            })
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let all: Vec<usize> = objs.iter().map(|o| o as *const Obj as usize).collect();
    let slots: &'static TestSlots = Box::leak(Box::new(TestSlots::new(nr)));
    // Spread the objects over every slot (each slot's list built under stop).
    for (i, chunk) in all.chunks(OBJECTS / nr + 1).enumerate() {
        let head = slots.stop_and_take(i);
        let mut h = head;
        for &a in chunk {
            // SAFETY: not yet on any list: ours.
            unsafe { TestSlots::set_next(a, h) };
            h = a;
        }
        // SAFETY: the list is ours; the slot was stopped by `stop_and_take`.
        unsafe { slots.give_back_and_resume(i, h) };
    }
    SLOTS.store(
        slots as *const TestSlots as *mut TestSlots,
        Ordering::Release,
    );

    // SAFETY: installs a plain handler (no SA_SIGINFO); `on_alarm` is async-signal-safe (atomics and sequences only).
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

    let stop = AtomicBool::new(false);
    const WORKERS: usize = 4;
    let tids: Vec<AtomicI32> = (0..WORKERS).map(|_| AtomicI32::new(0)).collect();
    let (mut migrations, mut stops, mut forks) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for (w, tid) in tids.iter().enumerate() {
            let stop = &stop;
            sc.spawn(move || {
                tid.store(gettid(), Ordering::Release);
                let who = 1 + w as u64;
                let mut held = [0usize; 8];
                let mut n = 0;
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let want = 1 + round % 8;
                    while n < want {
                        let (st, _, a) = slots.pop();
                        match st {
                            Seq::Done => {
                                POPS.fetch_add(1, Ordering::Relaxed);
                                if claim(a, who) {
                                    held[n] = a;
                                    n += 1;
                                }
                            }
                            Seq::Unavailable => assert!(TestSlots::thread_can_sequence()),
                            Seq::Empty => break,
                            _ => std::thread::yield_now(),
                        }
                    }
                    while n > 0 {
                        n -= 1;
                        release(slots, held[n], who, false);
                    }
                }
            });
        }
        // The migrator.
        sc.spawn(|| {
            let mut x = 0x9E37_79B9u64;
            while !stop.load(Ordering::Relaxed) {
                for t in &tids {
                    let tid = t.load(Ordering::Acquire);
                    if tid != 0 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        set_affinity(tid, &[cpus[(x as usize) % cpus.len()]]);
                        migrations += 1;
                    }
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            for t in &tids {
                set_affinity(t.load(Ordering::Acquire), &cpus);
            }
        });
        // The stopper: take a slot's list, check it, move it to the next slot.
        sc.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let j = (i + 1) % nr;
                let head = slots.stop_and_take(i);
                let mut p = head;
                let mut len = 0;
                while p != 0 {
                    if obj(p).stamp.load(Ordering::Acquire) != 0 {
                        ERRORS.fetch_add(1, Ordering::Relaxed);
                    }
                    len += 1;
                    assert!(len <= OBJECTS, "cycle on slot {i}'s list");
                    // SAFETY: a list we took (stopped slot): ours.
                    p = unsafe { TestSlots::next_of(p) };
                }
                if j != i {
                    let other = slots.stop_and_take(j);
                    // SAFETY: both lists are ours; both slots stopped by us.
                    unsafe {
                        slots.give_back_and_resume(j, head);
                        slots.give_back_and_resume(j, 0);
                        slots.give_back_and_resume(i, other);
                    }
                } else {
                    // SAFETY: as above.
                    unsafe { slots.give_back_and_resume(i, head) };
                }
                stops += 1;
                i = j;
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        // The forker.
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the child only runs async-signal-safe code (sequences, atomics, membarrier) and leaves with `_exit`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // Child: a few sequences on whatever slot it runs on, and one stop + fence.
                    let mut bad = 0;
                    for _ in 0..64 {
                        let (st, _, a) = slots.pop();
                        if st == Seq::Done {
                            let who = 0xC000;
                            if claim(a, who) {
                                release(slots, a, who, true);
                            } else {
                                bad += 1;
                            }
                        }
                    }
                    TestSlots::fence(0);
                    // SAFETY: ends the child without running the parent's exit machinery.
                    unsafe { libc::_exit(if bad == 0 { 0 } else { 1 }) };
                }
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "fork child failed: status {status:#x}"
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

    // The census: every object on exactly one list, free, nothing lost.
    let mut seen = std::collections::HashSet::new();
    for i in 0..nr {
        for a in slots.walk(i) {
            assert!(seen.insert(a), "object {a:#x} on two lists (duplicated)");
            assert_eq!(
                obj(a).stamp.load(Ordering::Relaxed),
                0,
                "a free object is stamped"
            );
        }
    }
    let handler_rate = HANDLER_RUNS.load(Ordering::Relaxed) as f64 / elapsed;
    eprintln!(
        "rseq stress: {:.1} s, {} pops by workers, {} signal handler runs ({:.0}/s, {} with a \
         pop+push), {migrations} migrations, {stops} stop+fence rounds, {forks} forks",
        elapsed,
        POPS.load(Ordering::Relaxed),
        HANDLER_RUNS.load(Ordering::Relaxed),
        handler_rate,
        HANDLER_OPS.load(Ordering::Relaxed),
    );
    assert_eq!(ERRORS.load(Ordering::Relaxed), 0, "stamp violations");
    assert_eq!(seen.len(), OBJECTS, "objects lost");
    assert!(
        handler_rate > 10_000.0,
        "the timer did not fire often enough: {handler_rate:.0}/s"
    );
    assert!(forks > 0 && stops > 0 && migrations > 0);
}
