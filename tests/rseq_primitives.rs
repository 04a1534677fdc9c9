//! The per-CPU restartable sequences (`src/cpu/percpu/`) on a private slot array: what each
//! sequence returns, the on-CPU CAS, stop + fence, and the commit mode's decision (including
//! `KMEM_RSEQ=0` in a child process). The stress test is `tests/rseq_stress.rs`.

use kmem::cpu::{__Seq as Seq, __TestSlots as TestSlots, commit_mode, CommitMode};

fn rseq_mode() -> bool {
    let m = commit_mode();
    if m != CommitMode::Rseq {
        eprintln!(
            "skipped: commit mode {m:?} ({})",
            kmem::cpu::commit_mode_reason()
        );
    }
    m == CommitMode::Rseq
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) };
    assert_eq!(r, 0);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE; `set` is valid; pid 0 is the calling thread.
    let r = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set)
    };
    assert_eq!(r, 0);
}

/// Object memory: 64-byte aligned words, free pointer at offset 0.
#[repr(C, align(64))]
struct Obj([usize; 8]);

#[test]
fn every_outcome_of_pop_and_push() {
    if !rseq_mode() {
        return;
    }
    std::thread::spawn(|| {
        let cpu = allowed_cpus()[0];
        pin_to(cpu);
        let s = TestSlots::new(kmem::cpu::possible_cpus());
        if s.pop().0 == Seq::Unavailable {
            // kmem's own registration (glibc registered none): registered lazily per thread.
            assert!(TestSlots::thread_can_sequence());
        }
        let objs: Vec<Box<Obj>> = (0..3).map(|_| Box::new(Obj([0; 8]))).collect();
        let a: Vec<usize> = objs.iter().map(|o| &**o as *const Obj as usize).collect();
        assert_eq!(s.pop(), (Seq::Empty, cpu, s.pop().2));
        // SAFETY: the objects are ours, 64-byte aligned.
        unsafe {
            assert_eq!(s.push(a[0]), (Seq::Done, cpu));
            assert_eq!(s.push(a[1]), (Seq::Done, cpu));
            assert_eq!(s.push(a[1]).0, Seq::DoubleFree);
        }
        assert_eq!(s.walk(cpu), vec![a[1], a[0]]);
        assert_eq!(s.tid(cpu), cpu as u64, "the sequences never touch the tid");
        assert_eq!(s.pop_if_slab(0x9999).0, Seq::Mismatch);
        assert_eq!(s.pop_if_slab(TestSlots::SLAB), (Seq::Done, cpu, a[1]));
        s.set_slab(cpu, 0x7000);
        // SAFETY: as above.
        assert_eq!(unsafe { s.push(a[2]) }.0, Seq::Mismatch);
        s.set_slab(cpu, TestSlots::SLAB);
        // Stopped: neither sequence commits; the stopper owns the list.
        let head = s.stop_and_take(cpu);
        assert_eq!(head, a[0]);
        assert_eq!(s.pop().0, Seq::Stopped);
        // SAFETY: as above.
        assert_eq!(unsafe { s.push(a[2]) }.0, Seq::Stopped);
        // SAFETY: the list (a[0]) is ours.
        unsafe { s.give_back_and_resume(cpu, head) };
        assert_eq!(s.pop(), (Seq::Done, cpu, a[0]));
        assert_eq!(s.pop().0, Seq::Empty);
        // The on-CPU CAS: works on this CPU's slot, refuses another CPU's.
        // SAFETY: as above.
        unsafe { s.push(a[2]) };
        let tid = s.tid(cpu);
        assert_eq!(s.take_on_cpu(cpu), Some(a[2]));
        assert_eq!(s.tid(cpu), tid + 1, "the on-CPU CAS advances the tid");
        let other = (cpu + 1) % s.len();
        if other != cpu {
            assert_eq!(s.take_on_cpu(other), None);
        }
        drop(objs);
    })
    .join()
    .unwrap();
}

#[test]
fn fence_every_cpu() {
    if !rseq_mode() {
        return;
    }
    for cpu in 0..kmem::cpu::possible_cpus() {
        TestSlots::fence(cpu);
    }
}

#[test]
fn sequences_on_fresh_threads() {
    if !rseq_mode() {
        return;
    }
    let s = TestSlots::new(kmem::cpu::possible_cpus());
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                let mut o = Box::new(Obj([0; 8]));
                let a = &mut *o as *mut Obj as usize;
                loop {
                    // SAFETY: `o` is ours until popped back.
                    match unsafe { s.push(a) }.0 {
                        Seq::Done => break,
                        Seq::Unavailable => assert!(TestSlots::thread_can_sequence()),
                        other => panic!("{other:?}"),
                    }
                }
                loop {
                    let (st, _, got) = s.pop();
                    match st {
                        Seq::Done if got == a => break,
                        // Another thread's object: put it back and try again.
                        // SAFETY: popped, so ours until pushed.
                        Seq::Done => unsafe {
                            s.push(got);
                        },
                        _ => std::thread::yield_now(),
                    }
                }
            });
        }
    });
}

/// `KMEM_RSEQ=0` forces the locked mode (checked in a child process: the mode is per process).
#[test]
fn kmem_rseq_0_forces_locked_mode() {
    if std::env::var_os("KMEM_RSEQ_CHILD").is_some() {
        let want = if std::env::var("KMEM_RSEQ").as_deref() == Ok("0") {
            CommitMode::Locked
        } else {
            commit_mode()
        };
        assert_eq!(commit_mode(), want, "{}", kmem::cpu::commit_mode_reason());
        println!(
            "child mode {:?}: {}",
            commit_mode(),
            kmem::cpu::commit_mode_reason()
        );
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kmem_rseq_0_forces_locked_mode", "--nocapture"])
        .env("KMEM_RSEQ_CHILD", "1")
        .env("KMEM_RSEQ", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("child mode Locked: KMEM_RSEQ=0"),
        "{stdout}"
    );
}

/// With glibc's rseq disabled by its tunable, kmem registers its own area (and still decides
/// `Rseq` when the kernel allows it).
#[test]
fn own_registration_without_glibc_rseq() {
    if std::env::var_os("KMEM_RSEQ_CHILD").is_some() {
        println!(
            "child mode {:?}: {}",
            commit_mode(),
            kmem::cpu::commit_mode_reason()
        );
        if commit_mode() == CommitMode::Rseq {
            every_outcome_of_pop_and_push();
            sequences_on_fresh_threads();
        }
        return;
    }
    if !rseq_mode() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "own_registration_without_glibc_rseq",
            "--nocapture",
        ])
        .env("KMEM_RSEQ_CHILD", "1")
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("child mode Rseq"), "{stdout}");
}
