//! The commit mode ([`CommitMode`]): decided once per process, by the first `Kmem` built, with
//! the reason kept for [`commit_mode_reason`].

#![cfg_attr(
    any(miri, loom, not(target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

use super::*;

// ---------------------------------------------------------------------------------------------
// The commit mode
// ---------------------------------------------------------------------------------------------

/// `MODE_*` in the low bits, the reason's index above them; 0 = not decided.
static MODE: GlobalUsize = GlobalUsize::new(0);
const MODE_RSEQ: usize = 1;
const MODE_LOCKED: usize = 2;

/// Why the mode is what it is (indexed by `MODE >> 2`).
const REASONS: &[&str] = &[
    "not decided yet",
    "restartable sequences available (rseq area registered, membarrier RSEQ fence works)",
    "KMEM_RSEQ=0 in the environment",
    "no rseq sequences for this target or build (x86_64 only; not under Miri, loom or TSAN)",
    "the C library registered rseq but the calling thread's area is not valid",
    "the rseq(2) system call refused kmem's registration (old kernel, valgrind, rr or seccomp)",
    "membarrier does not offer PRIVATE_EXPEDITED_RSEQ (kernel < 5.10, or a sandbox)",
    "membarrier refused REGISTER_PRIVATE_EXPEDITED_RSEQ or the per-CPU fence",
    "the kernel rejected a test sequence",
    "kmem's own rseq area is not in the static TLS block (kmem in a dlopen'ed library, and the C \
     library registered no rseq area)",
];

/// The commit mode of this process (decided once, by the first call; `Kmem::build` makes it).
///
/// # Example
/// ```
/// let m = kmem::cpu::commit_mode();
/// assert_eq!(m, kmem::cpu::commit_mode()); // decided once
/// ```
pub fn commit_mode() -> CommitMode {
    match MODE.load(GlobalOrdering::Acquire) & 3 {
        MODE_RSEQ => CommitMode::Rseq,
        MODE_LOCKED => CommitMode::Locked,
        _ => decide(),
    }
}

/// A one-line explanation of [`commit_mode`]'s answer (which check sent it to the locked mode).
///
/// # Example
/// ```
/// println!("{:?}: {}", kmem::cpu::commit_mode(), kmem::cpu::commit_mode_reason());
/// ```
pub fn commit_mode_reason() -> &'static str {
    commit_mode();
    REASONS[MODE.load(GlobalOrdering::Acquire) >> 2]
}

#[cold]
#[inline(never)]
fn decide() -> CommitMode {
    let (mode, reason) = probe();
    let word = (reason << 2)
        | if mode == CommitMode::Rseq {
            MODE_RSEQ
        } else {
            MODE_LOCKED
        };
    match MODE.compare_exchange(0, word, GlobalOrdering::AcqRel, GlobalOrdering::Acquire) {
        Ok(_) => mode,
        Err(_) => commit_mode(),
    }
}

/// Whether `KMEM_RSEQ=0` is set (read with `getenv`, which does not allocate).
#[cfg(not(any(miri, loom)))]
fn rseq_disabled_by_env() -> bool {
    // SAFETY: a NUL-terminated name; getenv returns null or a NUL-terminated string.
    let v = unsafe { libc::getenv(c"KMEM_RSEQ".as_ptr()) };
    if v.is_null() {
        return false;
    }
    // SAFETY: as above.
    let v = unsafe { core::ffi::CStr::from_ptr(v) };
    v.to_bytes() == b"0"
}

/// Decides the mode on the calling thread; publishes the area offset before returning `Rseq`.
#[cfg(any(miri, loom, not(target_arch = "x86_64"), kmem_portable_dword))]
fn probe() -> (CommitMode, usize) {
    (CommitMode::Locked, 3)
}

#[cfg(all(not(any(miri, loom, kmem_portable_dword)), target_arch = "x86_64"))]
fn probe() -> (CommitMode, usize) {
    use crate::cpu::rseq::{self as r, AREA_GLIBC, AREA_OWN, SEQ_AREA};
    if rseq_disabled_by_env() {
        return (CommitMode::Locked, 2);
    }
    let area = if r::libc_registered_rseq() {
        let p = r::rseq_probe();
        if r::rseq_read(crate::cpu::unpack_offset(p)).is_none() {
            return (CommitMode::Locked, 4);
        }
        crate::cpu::pack(crate::cpu::unpack_offset(p), AREA_GLIBC)
    } else {
        match r::register_own_area() {
            Ok(off) if r::own_area_is_static(off) => crate::cpu::pack(off, AREA_OWN),
            Ok(_) => return (CommitMode::Locked, 9),
            Err(_) => return (CommitMode::Locked, 5),
        }
    };
    match membarrier(MEMBARRIER_CMD_QUERY, 0, 0) {
        Ok(mask)
            if mask & (MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ as i64) != 0
                && mask & (MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ as i64) != 0 => {}
        _ => return (CommitMode::Locked, 6),
    }
    if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0).is_err() {
        return (CommitMode::Locked, 7);
    }
    let cpu = r::rseq_read(crate::cpu::unpack_offset(area)).unwrap_or(0);
    if membarrier_fence(cpu).is_err() {
        return (CommitMode::Locked, 7);
    }
    crate::cpu::rseq::SEQ_OFFSET.store(
        crate::cpu::unpack_offset(area) as usize,
        GlobalOrdering::Relaxed,
    );
    SEQ_AREA.store(area, GlobalOrdering::Release);
    // One real sequence on a private slot: the kernel accepts the descriptor and signature.
    let slot = SlotHead::<u8>::new(0);
    let obj = [0usize; 1];
    slot.freelist_tid.store(obj.as_ptr() as usize, 0);
    // A slot array whose every entry is `slot` (stride 0): whatever CPU id the sequence reads,
    // it picks the same slot.
    // SAFETY: `slot` lives across the call; the object's free pointer is `obj[0]` (offset 0).
    let (st, at, got) = unsafe { pop(Slots::new(&slot, 0, usize::MAX), 0, 0) };
    let ok = st == Seq::Done && got == obj.as_ptr() as usize && at == &slot as *const _ as usize;
    if !ok {
        SEQ_AREA.store(0, GlobalOrdering::Release);
        return (CommitMode::Locked, 8);
    }
    (CommitMode::Rseq, 1)
}

/// Called by a fast path whose sequence reported [`Seq::Unavailable`]: registers kmem's own
/// rseq area for the calling thread if that is the process's way (glibc registered none) and
/// the thread has not tried yet. Returns whether the thread can now run sequences (retry);
/// `false` sends the operation to the locked route.
#[cold]
#[inline(never)]
pub(crate) fn thread_can_sequence() -> bool {
    #[cfg(all(not(any(miri, loom, kmem_portable_dword)), target_arch = "x86_64"))]
    {
        use crate::cpu::rseq::{register_own_area, AREA_OWN, SEQ_AREA};
        let area = SEQ_AREA.load(GlobalOrdering::Acquire);
        if area & crate::cpu::TAG_MASK != AREA_OWN {
            return false;
        }
        matches!(register_own_area(), Ok(off) if off == crate::cpu::unpack_offset(area))
    }
    #[cfg(not(all(not(any(miri, loom, kmem_portable_dword)), target_arch = "x86_64")))]
    {
        false
    }
}

/// Fork support, in the child: membarrier registrations belong to the address space, so the
/// child registers again (the forking thread's rseq registration is inherited).
#[cfg(not(any(loom, miri)))]
pub(crate) fn after_fork_child() {
    if MODE.load(GlobalOrdering::Acquire) & 3 == MODE_RSEQ {
        let _ = membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    }
}
