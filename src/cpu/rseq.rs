//! glibc's restartable-sequences area: finding it (`__rseq_offset` / `__rseq_size` through
//! `dlsym`) and reading the kernel-maintained `cpu_id` from it with one thread-pointer-relative
//! load.

#![cfg_attr(any(miri, loom), allow(dead_code, unused_imports))]

use super::*;

// ---------------------------------------------------------------------------------------------
// rseq
// ---------------------------------------------------------------------------------------------

/// The cached rseq probe (see [`RSEQ`]); runs `dlsym` on first use.
#[cfg(not(any(miri, loom)))]
#[inline]
pub(super) fn rseq_probe() -> usize {
    let r = RSEQ.load(Ordering::Relaxed);
    if r != TAG_UNKNOWN {
        return r;
    }
    let r = match rseq_offset_from_glibc() {
        Some(off) => pack(off, TAG_RSEQ),
        None => TAG_HASH,
    };
    RSEQ.store(r, Ordering::Relaxed);
    r
}

/// Looks up `__rseq_size` and `__rseq_offset`; `Some(offset)` when glibc registered rseq.
#[cfg(all(
    not(any(miri, loom)),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[cold]
pub(super) fn rseq_offset_from_glibc() -> Option<isize> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other preconditions.
    let size = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
    // SAFETY: as above.
    let offset = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
    if size.is_null() || offset.is_null() {
        return None;
    }
    // glibc defines `const unsigned int __rseq_size`, initialised before any user code runs and
    // never written again.
    // SAFETY: the symbol's address is valid for the process lifetime.
    let size = unsafe { core::ptr::read_volatile(size as *const u32) };
    if size == 0 {
        // Registration failed or was disabled (GLIBC_TUNABLES=glibc.pthread.rseq=0).
        return None;
    }
    // SAFETY: glibc defines `const ptrdiff_t __rseq_offset`, set at startup, read-only after.
    let offset = unsafe { core::ptr::read_volatile(offset as *const isize) };
    // The packed encoding keeps 62 bits of offset; a real one is a few KiB.
    if offset.unsigned_abs() >= 1 << 60 {
        return None;
    }
    Some(offset)
}

#[cfg(all(
    not(any(miri, loom)),
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(super) fn rseq_offset_from_glibc() -> Option<isize> {
    None
}

/// Reads `cpu_id` from the calling thread's rseq area at `thread pointer + offset`; `None`
/// when the area is uninitialised or its registration failed.
///
/// `offset` must come from [`rseq_offset_from_glibc`] (possibly packed and unpacked): every
/// caller passes a value whose tag said `TAG_RSEQ`.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn rseq_read(offset: isize) -> Option<usize> {
    let cpu: u32;
    // On x86_64 glibc, %fs holds the thread pointer (the TCB), and the rseq area of every thread
    // glibc created lives at thread pointer + `__rseq_offset` for the thread's whole life (it is
    // inside glibc's `struct pthread`); `cpu_id` is an aligned u32 at byte 4. A `%fs`-relative load
    // is the same access as `*(u32*)(fs:0 + offset + 4)` without first loading `fs:0`. The asm is
    // not `pure`, so each call reads afresh (it is volatile: the kernel rewrites the field on
    // migration).
    // SAFETY: fs:[`offset` + 4] is this thread's rseq `cpu_id`: an aligned u32, live for its life.
    unsafe {
        core::arch::asm!(
            "mov {cpu:e}, dword ptr fs:[{off} + {field}]",
            off = in(reg) offset,
            field = const RSEQ_CPU_ID_OFFSET,
            cpu = lateout(reg) cpu,
            options(nostack, preserves_flags, readonly),
        );
    }
    valid_cpu_id(cpu)
}

/// As the x86_64 version: `tpidr_el0` is the thread pointer.
#[cfg(all(not(any(miri, loom)), target_arch = "aarch64"))]
#[inline(always)]
pub(super) fn rseq_read(offset: isize) -> Option<usize> {
    let tp: usize;
    // SAFETY: reading tpidr_el0 (the user thread pointer) has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags));
    }
    let p = tp.wrapping_add_signed(offset + RSEQ_CPU_ID_OFFSET) as *const u32;
    // `cpu_id` is an aligned u32 at byte 4. Volatile: the kernel rewrites it.
    // SAFETY: every thread's rseq area stays at thread pointer + `__rseq_offset` for its life.
    let cpu = unsafe { core::ptr::read_volatile(p) };
    valid_cpu_id(cpu)
}

#[cfg(all(
    not(any(miri, loom)),
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
#[inline(always)]
pub(super) fn rseq_read(_offset: isize) -> Option<usize> {
    None
}

#[cfg(not(any(miri, loom)))]
#[inline(always)]
pub(super) fn valid_cpu_id(cpu: u32) -> Option<usize> {
    if cpu == RSEQ_CPU_ID_UNINITIALIZED || cpu == RSEQ_CPU_ID_REGISTRATION_FAILED {
        None
    } else {
        Some(cpu as usize)
    }
}
