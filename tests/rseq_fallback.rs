//! The automatic fallback to the locked mode when a sandbox refuses what the rseq mode needs:
//! each case re-runs this test binary in a child process that installs a seccomp filter making
//! `rseq(2)` and/or `membarrier(2)` fail with `EPERM` before kmem decides its mode, then checks
//! that the mode is `Locked` (with the expected reason) and that caches work.
//! (valgrind, which refuses `rseq`, ends the same way: docs/cpu.md.)

use kmem::cpu::{commit_mode, commit_mode_reason, CommitMode};

/// Makes the listed system calls fail with EPERM in this process (and its threads).
fn deny_syscalls(nrs: &[libc::c_long]) {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32; // SECCOMP_RET_ERRNO | EPERM
    let n = nrs.len() as u8;
    // seccomp_data.nr is the first 32-bit word.
    let mut prog = vec![libc::sock_filter {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    for (i, &nr) in nrs.iter().enumerate() {
        // Match: jump to the EPERM return after the remaining tests and the ALLOW.
        let to_deny = n - i as u8;
        prog.push(libc::sock_filter {
            code: JEQ_K,
            jt: to_deny,
            jf: 0,
            k: nr as u32,
        });
    }
    prog.push(libc::sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: ALLOW,
    });
    prog.push(libc::sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: EPERM,
    });
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with valid arguments; `fprog` points to a live, well-formed filter.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const _
            ),
            0,
            "seccomp filter refused"
        );
    }
}

fn child(case: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fallback_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KMEM_FALLBACK_CASE", case)
        .env_remove("KMEM_RSEQ")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{case}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn fallback_child() {
    let Ok(case) = std::env::var("KMEM_FALLBACK_CASE") else {
        return;
    };
    match case.as_str() {
        "no-rseq" => deny_syscalls(&[libc::SYS_rseq, libc::SYS_membarrier]),
        "no-membarrier" => deny_syscalls(&[libc::SYS_membarrier]),
        _ => panic!("unknown case {case}"),
    }
    let k = kmem::Kmem::builder().build().unwrap();
    println!("mode {:?}: {}", commit_mode(), commit_mode_reason());
    assert_eq!(commit_mode(), CommitMode::Locked);
    assert_eq!(k.commit_mode(), CommitMode::Locked);
    let c = k
        .create_cache("fallback", 64, kmem::CacheConfig::new())
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    let p = c.alloc().unwrap();
                    // SAFETY: just allocated from `c`, freed once.
                    unsafe { c.free(p) };
                }
            });
        }
    });
    assert_eq!(c.info().active_objs, 0);
}

/// glibc's registration disabled, and `rseq(2)` refused: kmem cannot register its own area.
#[test]
fn rseq_refused_by_seccomp_falls_back_to_locked() {
    let out = child("no-rseq", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    assert!(
        out.contains("mode Locked: the rseq(2) system call refused"),
        "{out}"
    );
}

/// glibc's area registered, but `membarrier` refused: no fence, so no rseq mode.
#[test]
fn membarrier_refused_by_seccomp_falls_back_to_locked() {
    let out = child("no-membarrier", &[]);
    assert!(out.contains("mode Locked: membarrier"), "{out}");
}
