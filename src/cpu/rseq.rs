//! glibc's restartable-sequences area: finding it (`__rseq_offset` / `__rseq_size` through
//! `dlsym`) and reading the kernel-maintained `cpu_id` from it with one thread-pointer-relative
//! load.

#![cfg_attr(
    any(miri, loom, not(target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

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

// ---------------------------------------------------------------------------------------------
// The area the restartable sequences use: glibc's, or kmem's own registration
// ---------------------------------------------------------------------------------------------

/// The rseq signature kmem registers and places before every abort handler (x86's `RSEQ_SIG`,
/// the value glibc registers with: the kernel refuses to abort to an IP not preceded by the
/// signature the thread registered).
pub(crate) const RSEQ_SIG: u32 = 0x5305_3053;

/// Byte offset of `rseq_cs` (a `u64`: the address of the current critical-section descriptor,
/// or 0) in `struct rseq`.
pub(crate) const RSEQ_CS_OFFSET: isize = 8;

/// `TAG_*` of [`SEQ_AREA`]: the sequences use glibc's area.
pub(super) const AREA_GLIBC: usize = 1;
/// `TAG_*` of [`SEQ_AREA`]: the sequences use kmem's own thread-local area, registered lazily
/// per thread.
pub(super) const AREA_OWN: usize = 2;

/// Which rseq area the sequences use: `(offset << 2) | AREA_GLIBC` for glibc's, `(offset << 2)
/// | AREA_OWN` for kmem's own `OWN_AREA` (in static TLS, so at the thread pointer plus `offset`
/// in every thread); 0 until the commit mode is decided in favour of rseq.
pub(super) static SEQ_AREA: AtomicUsize = AtomicUsize::new(0);

/// The offset of [`SEQ_AREA`] alone (as a `usize`), for the sequences: one load, no unpacking.
/// The calling thread's rseq area is at the thread pointer plus this (`fs:[offset]`). glibc's
/// area: `__rseq_offset`, the same in every thread. kmem's own area: its thread-local's offset,
/// the same in every thread because the mode is only decided for it when that thread-local is
/// in the static TLS block (see `own_area_is_static`); a thread whose registration finds
/// another offset stays unregistered. Read only in rseq mode (or by the mode's own probe, after
/// it published the offset), by the sequences' own RIP-relative load (`percpu::rseq_asm!`: a
/// plain `mov`, which is what a relaxed load is on x86_64).
pub(crate) static SEQ_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// The original (Linux 4.18) `struct rseq`: 32 bytes, 32-byte aligned; every kernel accepts
/// this length.
#[repr(C, align(32))]
pub(super) struct RseqArea {
    cpu_id_start: u32,
    cpu_id: u32,
    rseq_cs: u64,
    flags: u32,
    node_id: u32,
    mm_cid: u32,
    _pad: u32,
}

#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
std::thread_local! {
    // kmem's own per-thread rseq area, used only when the C library registered none. A
    // `core::cell::UnsafeCell` outside `crate::sync` on purpose: it is shared with the kernel,
    // not with other threads (the kernel writes `cpu_id*` on return to user space, the thread
    // writes `rseq_cs`), so there is nothing here for loom to check. Const-initialised with no
    // `Drop`: no lazy initialisation, no destructor registered, no allocation. `cpu_id` starts
    // as RSEQ_CPU_ID_UNINITIALIZED: a sequence reads it as "not registered" and fails before its
    // commit.
    static OWN_AREA: core::cell::UnsafeCell<RseqArea> = const {
        core::cell::UnsafeCell::new(RseqArea {
            cpu_id_start: 0,
            cpu_id: RSEQ_CPU_ID_UNINITIALIZED,
            rseq_cs: 0,
            flags: 0,
            node_id: 0,
            mm_cid: 0,
            _pad: 0,
        })
    };
}

/// The thread pointer (`%fs` base on x86_64 glibc: the TCB, whose first word points to itself).
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: fs:0 holds the TCB's self pointer on x86_64 glibc and musl; reading it has no side effects.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, preserves_flags, readonly));
    }
    tp
}

/// Whether kmem's own area, at `offset` from the deciding thread's pointer, lies in glibc's
/// static TLS block (x86_64 puts it just below the thread pointer: `[tp - size, tp)`, `size`
/// from `_dl_get_tls_static_info`, found with `dlsym`). Then the offset is the same in every
/// thread, present and future, and the sequences may address the area as `fs:[offset]`. A
/// thread-local of a `dlopen`ed library may instead live in dynamic TLS, at an address with no
/// fixed relation to the thread pointer: then (or without that glibc function) kmem does not use
/// its own area, and the process stays in the locked mode.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
pub(super) fn own_area_is_static(offset: isize) -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other preconditions.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info".as_ptr()) };
    if f.is_null() {
        return false;
    }
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: glibc's `void _dl_get_tls_static_info(size_t *sizep, size_t *alignp)` (which the compiler-rt sanitizer runtimes also call to size static TLS); both pointers are valid locals.
    unsafe {
        let f: unsafe extern "C" fn(*mut usize, *mut usize) = core::mem::transmute(f);
        f(&mut size, &mut align);
    }
    offset < 0 && offset.unsigned_abs() + core::mem::size_of::<RseqArea>() <= size
}

/// Registers kmem's own rseq area for the calling thread (the `rseq(2)` system call with
/// [`RSEQ_SIG`]) and returns its offset from the thread pointer, or `Err(errno)`. A thread
/// whose registration failed gets `cpu_id = RSEQ_CPU_ID_REGISTRATION_FAILED` (as glibc does), so
/// that it is not retried on every operation. Already registered: `Ok` at once.
///
/// Only called when the C library registered no area (the kernel accepts one registration per
/// thread). Async-signal-safe: a signal handler that interrupts the registration and registers
/// itself makes the outer call see `EBUSY` and then a valid `cpu_id`, which counts as success.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
pub(super) fn register_own_area() -> Result<isize, i32> {
    let area = OWN_AREA.with(|a| a.get());
    let offset = area as isize - thread_pointer() as isize;
    // SAFETY: `area` is this thread's live, aligned area; `cpu_id` is only written by the kernel (registered) or by this thread (below); a volatile read sees either.
    let cpu = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).cpu_id)) };
    if valid_cpu_id(cpu).is_some() {
        return Ok(offset);
    }
    if cpu == RSEQ_CPU_ID_REGISTRATION_FAILED {
        return Err(libc::EPERM);
    }
    // Why this is sound: rseq(area, len, flags = 0, sig): `area` is a 32-byte aligned `struct
    // rseq` that lives as long as the thread (the kernel stops writing it when the thread exits,
    // before its TLS block can be freed or reused, and a reused block starts unregistered again).
    // SAFETY: the invariants stated just above hold here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            area,
            core::mem::size_of::<RseqArea>() as u32,
            0u32,
            RSEQ_SIG,
        )
    };
    // SAFETY: as above.
    let cpu = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).cpu_id)) };
    if valid_cpu_id(cpu).is_some() {
        return Ok(offset);
    }
    let errno = if r == 0 {
        libc::EINVAL
    } else {
        // SAFETY: errno is thread-local and always readable.
        unsafe { *libc::__errno_location() }
    };
    // SAFETY: not registered, so the kernel does not write the area; ours to mark.
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*area).cpu_id),
            RSEQ_CPU_ID_REGISTRATION_FAILED,
        )
    };
    Err(errno)
}

/// Whether the C library registered an rseq area for its threads (`__rseq_size != 0`), whatever
/// the calling thread's state.
#[cfg(not(any(miri, loom)))]
pub(super) fn libc_registered_rseq() -> bool {
    rseq_probe() & TAG_MASK == TAG_RSEQ
}
