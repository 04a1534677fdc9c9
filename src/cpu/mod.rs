//! Which CPU slot am I on: the CPU id behind the per-CPU fast path, and the CPU/NUMA topology.
//!
//! Files: this one (the method chain and the cached state), `rseq.rs` (glibc's rseq area: finding
//! it and reading `cpu_id`), `topology.rs` (possible CPUs and nodes from sysfs, without
//! allocating).
//!
//! kmem indexes its per-CPU slots (`KmemCacheCpu`) with [`current_cpu`]. The answer is a hint:
//! a thread may migrate the instant after reading it, or two threads may read the same id. The
//! per-slot transaction id (`tid`), swapped together with the freelist by one double-word CAS,
//! makes a stale id harmless — the CAS fails and the operation retries — so kmem's
//! *correctness* never depends on this module, only its *speed* does.
//!
//! ```
//! use kmem::cpu;
//! let id = cpu::current_cpu();
//! assert!(id < cpu::possible_cpus());
//! assert!(cpu::cpu_to_node(id) < cpu::possible_nodes());
//! println!("CPU {id} via {:?}", cpu::method());
//! ```
//!
//! # How the id is found (the fallback chain)
//!
//! 1. [`CpuIdMethod::Rseq`]: glibc ≥ 2.35 registers a restartable-sequences area (`struct rseq`)
//!    for every thread; the kernel keeps its `cpu_id` field current whenever the thread returns
//!    to user space. The area sits at `thread pointer + __rseq_offset`, two symbols glibc
//!    exports (`__rseq_size` is non-zero when registration succeeded). They are looked up once
//!    with `dlsym(RTLD_DEFAULT, ..)` so that kmem still loads where they are absent (older
//!    glibc, musl). Reading the id is then one load relative to `%fs` (x86_64) or `tpidr_el0`
//!    (aarch64): no call, no system call.
//! 2. [`CpuIdMethod::Getcpu`]: `sched_getcpu()` (vDSO or rseq inside glibc, else a system call),
//!    used when rseq is unavailable or the calling thread's area reads as unregistered.
//! 3. [`CpuIdMethod::ThreadHash`]: a hash of a per-thread token, reduced modulo
//!    [`possible_cpus`]. Stable for a thread's lifetime; it spreads threads over slots but knows
//!    nothing about where they actually run.
//!
//! # Rules this module keeps (it runs inside the global allocator)
//!
//! Nothing here allocates through the global allocator, registers a thread-local destructor,
//! takes a lock or panics. sysfs is read with `open`/`read` into stack buffers and parsed by
//! hand; every result is cached in a static atomic after the first call. (`dlsym` may call
//! glibc's own `malloc` on its error path; that is libc's allocator, never Rust's global one.)
//!
//! # Under `cfg(loom)` and `cfg(miri)`
//!
//! Loom models choose the CPU each model thread sees with `set_current_cpu_for_model` (default
//! 0). Miri cannot run inline assembly, `dlsym` or read sysfs: it uses
//! [`CpuIdMethod::ThreadHash`], 4 possible CPUs and 1 node.

// Miri and loom builds skip the rseq/getcpu machinery that uses some helpers below.
#![cfg_attr(any(miri, loom), allow(dead_code, unused_imports))]

pub(crate) mod percpu;
mod rseq;
mod topology;

pub use percpu::{commit_mode, commit_mode_reason, CommitMode};
/// The per-CPU sequences on a private slot array, for tests; not part of the API.
#[doc(hidden)]
pub use percpu::{Seq as __Seq, TestSlots as __TestSlots};

#[cfg(not(any(miri, loom)))]
use rseq::{rseq_probe, rseq_read};
#[cfg(all(test, not(loom), not(miri)))]
use topology::ByteWriter;
pub use topology::{cpu_to_node, possible_cpus, possible_nodes};
#[cfg(test)]
use topology::{parse_id_list, IdList};

use crate::sync::global::{AtomicUsize, Ordering};

/// How the current CPU id is obtained.
///
/// # Example
/// ```
/// use kmem::cpu::{self, CpuIdMethod};
/// let m = cpu::method();
/// assert!(matches!(m, CpuIdMethod::Rseq | CpuIdMethod::Getcpu | CpuIdMethod::ThreadHash));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIdMethod {
    /// The kernel-maintained `cpu_id` in glibc's per-thread rseq area (one load).
    Rseq,
    /// `sched_getcpu()`.
    Getcpu,
    /// A stable hash of the calling thread's identity, modulo [`possible_cpus`].
    ThreadHash,
}

// ---------------------------------------------------------------------------------------------
// Cached state
// ---------------------------------------------------------------------------------------------

/// Low two bits of [`STATE`] and [`RSEQ`]: what has been decided.
const TAG_UNKNOWN: usize = 0;
const TAG_RSEQ: usize = 1;
const TAG_GETCPU: usize = 2;
const TAG_HASH: usize = 3;
const TAG_MASK: usize = 3;

/// The method `current_cpu()` uses, packed with the rseq area offset so that the fast path is a
/// single Relaxed load (no ordering between two statics to get wrong): `(offset << 2) | tag`.
/// `TAG_UNKNOWN` (the whole word 0) until [`method`] first runs.
static STATE: AtomicUsize = AtomicUsize::new(0);

/// The result of the one-time rseq probe, independent of the chosen method (for
/// [`current_cpu_with`]): `(offset << 2) | TAG_RSEQ` when glibc registered rseq,
/// `TAG_HASH` when it did not, `TAG_UNKNOWN` before the probe.
static RSEQ: AtomicUsize = AtomicUsize::new(0);

/// `cpu_id` values the kernel/glibc use for "no valid id here".
const RSEQ_CPU_ID_UNINITIALIZED: u32 = u32::MAX; // -1
const RSEQ_CPU_ID_REGISTRATION_FAILED: u32 = u32::MAX - 1; // -2

/// Byte offset of `cpu_id` in `struct rseq { u32 cpu_id_start; u32 cpu_id; .. }`.
#[cfg(all(not(miri), any(target_arch = "x86_64", target_arch = "aarch64")))]
const RSEQ_CPU_ID_OFFSET: isize = 4;

#[inline(always)]
const fn pack(offset: isize, tag: usize) -> usize {
    ((offset as usize) << 2) | tag
}

#[inline(always)]
const fn unpack_offset(word: usize) -> isize {
    // Arithmetic shift restores the sign of a negative offset (aarch64 places the rseq area
    // below the thread pointer).
    (word as isize) >> 2
}

// ---------------------------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------------------------

/// The method [`current_cpu`] uses in this process (decided once, lazily, without allocating).
///
/// The first call probes: rseq if glibc registered it and the calling thread's `cpu_id` is
/// valid, else `sched_getcpu()` if it succeeds, else the thread hash. Later calls read a cached
/// static. Under Miri (and under loom, where the model chooses the CPU) this is always
/// [`CpuIdMethod::ThreadHash`].
///
/// # Example
/// ```
/// // On glibc >= 2.35 (x86_64 or aarch64) this is normally `Rseq`.
/// println!("CPU id via {:?}", kmem::cpu::method());
/// ```
pub fn method() -> CpuIdMethod {
    #[cfg(any(miri, loom))]
    {
        CpuIdMethod::ThreadHash
    }
    #[cfg(not(any(miri, loom)))]
    {
        match STATE.load(Ordering::Relaxed) & TAG_MASK {
            TAG_RSEQ => CpuIdMethod::Rseq,
            TAG_GETCPU => CpuIdMethod::Getcpu,
            TAG_HASH => CpuIdMethod::ThreadHash,
            _ => decide_method(),
        }
    }
}

/// The slot of `n >= 1` slots that CPU `cpu` uses: its own when there is one, else `cpu % n`
/// (the slot map of every per-CPU array: caches' slots, the decay's per-slot due times).
#[inline(always)]
pub(crate) fn slot_of(cpu: usize, n: usize) -> usize {
    if cpu < n {
        cpu
    } else {
        cpu % n
    }
}

/// The CPU this thread is running on now.
///
/// The answer may be stale the instant it returns (the thread can migrate): kmem's
/// correctness never depends on it, only speed. Never allocates, never registers a TLS
/// destructor, never panics. The value is a kernel CPU id, which is below [`possible_cpus`]
/// (the thread-hash fallback is reduced modulo it); callers with fewer slots than CPUs reduce
/// it themselves.
///
/// Under `cfg(loom)` it returns the value the current model thread set with
/// `set_current_cpu_for_model` (0 by default).
///
/// # Example
/// ```
/// let cpu = kmem::cpu::current_cpu();
/// assert!(cpu < kmem::cpu::possible_cpus());
/// ```
#[inline]
pub fn current_cpu() -> usize {
    #[cfg(loom)]
    {
        MODEL_CPU.with(|c| c.get())
    }
    #[cfg(all(miri, not(loom)))]
    {
        thread_hash()
    }
    #[cfg(not(any(miri, loom)))]
    {
        let state = STATE.load(Ordering::Relaxed);
        if state & TAG_MASK == TAG_RSEQ {
            if let Some(cpu) = rseq_read(unpack_offset(state)) {
                return cpu;
            }
        }
        current_cpu_slow(state)
    }
}

/// [`current_cpu`] through a chosen method (for benches and tests).
///
/// A method unavailable here falls back along the usual chain: `Rseq` → `Getcpu` (when glibc
/// did not register rseq, or this thread's area reads as unregistered) → `ThreadHash` (when
/// `sched_getcpu()` fails). `ThreadHash` is always available. Under Miri every method is the
/// thread hash; under loom every method returns the model's CPU.
///
/// # Example
/// ```
/// use kmem::cpu::{current_cpu_with, possible_cpus, CpuIdMethod};
/// for m in [CpuIdMethod::Rseq, CpuIdMethod::Getcpu, CpuIdMethod::ThreadHash] {
///     assert!(current_cpu_with(m) < possible_cpus());
/// }
/// ```
#[inline]
pub fn current_cpu_with(m: CpuIdMethod) -> usize {
    #[cfg(loom)]
    {
        let _ = m;
        MODEL_CPU.with(|c| c.get())
    }
    #[cfg(all(miri, not(loom)))]
    {
        let _ = m;
        thread_hash()
    }
    #[cfg(not(any(miri, loom)))]
    {
        match m {
            CpuIdMethod::Rseq => {
                let r = rseq_probe();
                if r & TAG_MASK == TAG_RSEQ {
                    if let Some(cpu) = rseq_read(unpack_offset(r)) {
                        return cpu;
                    }
                }
                getcpu_or_hash()
            }
            CpuIdMethod::Getcpu => getcpu_or_hash(),
            CpuIdMethod::ThreadHash => thread_hash(),
        }
    }
}

/// Sets the CPU that [`current_cpu`] returns on the calling loom model thread (default 0).
///
/// Loom models use it to put two threads on one CPU slot, or to move a thread between slots
/// mid-operation (a migration).
///
/// # Example
/// ```ignore
/// loom::model(|| {
///     kmem::cpu::set_current_cpu_for_model(1);
///     assert_eq!(kmem::cpu::current_cpu(), 1);
/// });
/// ```
#[cfg(loom)]
pub fn set_current_cpu_for_model(cpu: usize) {
    MODEL_CPU.with(|c| c.set(cpu));
}

#[cfg(loom)]
loom::thread_local! {
    // A plain `core::cell::Cell`, outside `crate::sync`, on purpose: it is per-thread state of
    // the model's harness (which CPU this model thread pretends to run on), never shared
    // between threads, so there is no synchronisation here for loom to check.
    static MODEL_CPU: core::cell::Cell<usize> = core::cell::Cell::new(0);
}

// ---------------------------------------------------------------------------------------------
// The methods
// ---------------------------------------------------------------------------------------------

/// What `current_cpu()` does when the rseq read is not available: the cached method, or the
/// first decision.
#[cfg(not(any(miri, loom)))]
#[cold]
#[inline(never)]
fn current_cpu_slow(state: usize) -> usize {
    let tag = if state & TAG_MASK == TAG_UNKNOWN {
        decide_method();
        STATE.load(Ordering::Relaxed)
    } else {
        state
    };
    match tag & TAG_MASK {
        TAG_RSEQ => match rseq_read(unpack_offset(tag)) {
            Some(cpu) => cpu,
            // This thread's registration failed (or it is not registered yet).
            None => getcpu_or_hash(),
        },
        TAG_GETCPU => getcpu_or_hash(),
        _ => thread_hash(),
    }
}

/// Probes the methods in order and publishes the first that works for the calling thread.
#[cfg(not(any(miri, loom)))]
#[cold]
#[inline(never)]
fn decide_method() -> CpuIdMethod {
    let r = rseq_probe();
    let (m, word) = if r & TAG_MASK == TAG_RSEQ && rseq_read(unpack_offset(r)).is_some() {
        (CpuIdMethod::Rseq, r)
    } else if sched_getcpu().is_some() {
        (CpuIdMethod::Getcpu, TAG_GETCPU)
    } else {
        (CpuIdMethod::ThreadHash, TAG_HASH)
    };
    // The first thread to decide wins, so every thread agrees on one method.
    match STATE.compare_exchange(0, word, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => m,
        Err(_) => method(),
    }
}

/// `sched_getcpu()`, else the thread hash.
#[cfg(not(any(miri, loom)))]
#[inline]
fn getcpu_or_hash() -> usize {
    match sched_getcpu() {
        Some(c) => c,
        None => thread_hash(),
    }
}

#[cfg(not(any(miri, loom)))]
#[inline]
fn sched_getcpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions, does not allocate and is async-signal-safe.
    let c = unsafe { libc::sched_getcpu() };
    if c >= 0 {
        Some(c as usize)
    } else {
        None
    }
}

/// A stable per-thread hash in `0..possible_cpus()`.
#[inline]
fn thread_hash() -> usize {
    let token = crate::sync::thread_token() as u64;
    // Fibonacci hashing of the token's address; the low bits of a TLS address carry little
    // entropy (alignment), the high bits of the product carry all of it.
    let h = (token >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    // Multiply-shift range reduction (Lemire): `h * n / 2^32` is below `n` for a 32-bit `h`,
    // and avoids a division on every call.
    ((h * possible_cpus() as u64) >> 32) as usize
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn parse_single_id() {
        assert_eq!(parse_id_list(b"0"), Some(IdList { count: 1, end: 1 }));
        assert_eq!(parse_id_list(b"7"), Some(IdList { count: 1, end: 8 }));
    }

    #[test]
    fn parse_range() {
        assert_eq!(parse_id_list(b"0-3"), Some(IdList { count: 4, end: 4 }));
    }

    #[test]
    fn parse_ranges_with_hole() {
        assert_eq!(
            parse_id_list(b"0-3,8-11"),
            Some(IdList { count: 8, end: 12 })
        );
        assert_eq!(parse_id_list(b"0,2,4-5"), Some(IdList { count: 4, end: 6 }));
    }

    #[test]
    fn parse_trailing_newline() {
        assert_eq!(parse_id_list(b"0-1\n"), Some(IdList { count: 2, end: 2 }));
        assert_eq!(
            parse_id_list(b"0-3,8-11\n"),
            Some(IdList { count: 8, end: 12 })
        );
    }

    #[test]
    fn parse_garbage_is_none() {
        for bad in [
            &b""[..],
            b"\n",
            b"abc",
            b"0-",
            b"-3",
            b"3-1",
            b"0,,1",
            b"0-3,",
            b" 0-3",
            b"0-3\n\n",
            b"1-2-3",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_id_list(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 32 threads x 4000 calls: a stress run, too slow interpreted
    fn current_cpu_is_below_possible_cpus_on_many_threads() {
        let n = possible_cpus();
        assert!(n >= 1);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(move || {
                    for _ in 0..1000 {
                        assert!(current_cpu() < n);
                        for m in [
                            CpuIdMethod::Rseq,
                            CpuIdMethod::Getcpu,
                            CpuIdMethod::ThreadHash,
                        ] {
                            assert!(current_cpu_with(m) < n);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn thread_hash_is_stable_per_thread() {
        let a = current_cpu_with(CpuIdMethod::ThreadHash);
        for _ in 0..100 {
            assert_eq!(current_cpu_with(CpuIdMethod::ThreadHash), a);
        }
    }

    #[test]
    fn cpu_to_node_is_below_possible_nodes() {
        let nodes = possible_nodes();
        assert!(nodes >= 1);
        for cpu in 0..possible_cpus() + 2 {
            assert!(cpu_to_node(cpu) < nodes);
        }
        // Each answer, first looked up and then cached, matches the kernel's own topology read
        // independently here (the `nodeN` link in the CPU's sysfs directory; node 0 where there
        // is none or the machine has one node, as `cpu_to_node` documents).
        for cpu in 0..possible_cpus() {
            let expected = if nodes <= 1 {
                0
            } else {
                std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let n = e.file_name().into_string().ok()?;
                        n.strip_prefix("node")?.parse::<usize>().ok()
                    })
                    .min()
                    .unwrap_or(0)
            };
            assert_eq!(cpu_to_node(cpu), expected, "cpu {cpu}: first lookup");
            assert_eq!(cpu_to_node(cpu), expected, "cpu {cpu}: cached answer");
        }
    }

    #[test]
    #[cfg(not(miri))]
    fn byte_writer_builds_paths() {
        let mut b = [0u8; 32];
        let mut w = ByteWriter {
            buf: &mut b,
            len: 0,
        };
        w.push(b"cpu");
        w.push_decimal(0);
        w.push(b"/node");
        w.push_decimal(1234);
        w.push(b"\0");
        assert_eq!(w.as_cstr().unwrap().to_bytes(), b"cpu0/node1234");
        let mut small = [0u8; 4];
        let mut w = ByteWriter {
            buf: &mut small,
            len: 0,
        };
        w.push(b"toolong\0");
        assert!(w.as_cstr().is_none());
    }

    #[test]
    fn packed_offsets_round_trip() {
        for off in [0isize, 8, 2272, -1, -2272, (1 << 59) - 1, -(1 << 59)] {
            let w = pack(off, TAG_RSEQ);
            assert_eq!(w & TAG_MASK, TAG_RSEQ);
            assert_eq!(unpack_offset(w), off);
        }
    }

    /// glibc's version as (major, minor).
    fn glibc_version() -> Option<(u32, u32)> {
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: returns a static NUL-terminated string.
            let v = unsafe { core::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
            let v = v.to_str().ok()?;
            let mut it = v.split('.');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        }
        #[cfg(not(target_env = "gnu"))]
        {
            None
        }
    }

    /// Whether this machine should have rseq: glibc >= 2.35 on x86_64/aarch64, not disabled.
    fn expect_rseq() -> bool {
        let tunable_off = std::env::var("GLIBC_TUNABLES")
            .map(|t| t.contains("glibc.pthread.rseq=0"))
            .unwrap_or(false);
        cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
            && !tunable_off
            && glibc_version().is_some_and(|v| v >= (2, 35))
    }

    #[test]
    #[cfg(not(miri))]
    fn method_is_rseq_on_modern_glibc() {
        if expect_rseq() {
            assert_eq!(method(), CpuIdMethod::Rseq, "glibc {:?}", glibc_version());
        } else {
            eprintln!(
                "skipped: rseq not expected here (glibc {:?})",
                glibc_version()
            );
        }
    }

    /// The CPUs this process may run on.
    #[cfg(not(miri))]
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

    /// Pins the calling thread to `cpu`.
    #[cfg(not(miri))]
    fn pin_to(cpu: usize) {
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // pid 0 names the calling thread.
        // SAFETY: `cpu` is below CPU_SETSIZE (it came from `allowed_cpus`); `set` is valid.
        let r = unsafe {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set)
        };
        assert_eq!(r, 0, "sched_setaffinity({cpu})");
    }

    #[test]
    #[cfg(not(miri))]
    fn rseq_and_getcpu_agree_when_pinned_to_each_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        // A fresh thread, so the test harness's thread keeps its affinity.
        std::thread::spawn(move || {
            for &cpu in &cpus {
                pin_to(cpu);
                for _ in 0..100 {
                    let g = current_cpu_with(CpuIdMethod::Getcpu);
                    assert_eq!(g, cpu, "sched_getcpu while pinned to {cpu}");
                    if expect_rseq() {
                        assert_eq!(current_cpu_with(CpuIdMethod::Rseq), cpu, "rseq cpu_id");
                        assert_eq!(current_cpu(), cpu, "current_cpu");
                    }
                    std::thread::yield_now();
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(not(miri))]
    fn rseq_offset_is_found_on_modern_glibc() {
        if expect_rseq() {
            let r = rseq_probe();
            assert_eq!(r & TAG_MASK, TAG_RSEQ);
            assert!(rseq_read(unpack_offset(r)).is_some());
        }
    }

    #[test]
    #[cfg(not(miri))]
    fn possible_cpus_covers_online_cpus() {
        let max_allowed = allowed_cpus().into_iter().max().unwrap();
        assert!(max_allowed < possible_cpus());
    }

    /// With rseq disabled by the glibc tunable, the process falls back to `sched_getcpu`.
    /// Re-runs this test binary, filtered to the child half of this test.
    #[test]
    #[cfg(not(miri))]
    fn falls_back_to_getcpu_without_rseq() {
        if std::env::var_os("KMEM_CPU_CHILD").is_some() {
            assert_eq!(method(), CpuIdMethod::Getcpu);
            let r = rseq_probe();
            assert_eq!(r & TAG_MASK, TAG_HASH, "rseq must read as unavailable");
            assert!(current_cpu_with(CpuIdMethod::Rseq) < possible_cpus());
            return;
        }
        if !expect_rseq() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "cpu::tests::falls_back_to_getcpu_without_rseq",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KMEM_CPU_CHILD", "1")
            .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
}
