//! Per-CPU commits with no locked instruction: restartable sequences (rseq) on a CPU slot, the
//! commit mode, and the stop + fence that lets another thread touch a slot safely.
//!
//! # The mechanism
//!
//! A *restartable sequence* is a short run of instructions `[start_ip, post_commit_ip)` whose
//! last instruction (the *commit*) is a single store. The thread announces it by storing the
//! address of a descriptor (`struct rseq_cs`: version, flags, `start_ip`, `post_commit_offset`,
//! `abort_ip`) in the `rseq_cs` field of its registered rseq area. If the kernel preempts,
//! migrates or signals the thread while its IP is inside the range, it moves the IP to
//! `abort_ip` before the thread runs another user instruction (after checking that the four
//! bytes before `abort_ip` are the signature the thread registered, [`RSEQ_SIG`]). So a sequence
//! on CPU `c` either commits with no other thread having run on `c` since it started, or has
//! no effect but the stores before its commit (kmem's sequences make none to shared memory) and
//! is restarted. That makes a plain `mov` a commit that is atomic with respect to every other
//! sequence on the same CPU: the per-CPU slot needs no `lock cmpxchg16b`.
//!
//! The sequences here read the CPU id *inside* the sequence (`cpu_id` of the rseq area) and
//! index the slot array with it, so a thread that migrates between choosing a slot and using
//! it cannot touch the wrong slot: the migration aborts the sequence, and the restart reads
//! the new id.
//!
//! # The slot as the sequences see it ([`SlotHead`])
//!
//! ```text
//!   +0   freelist   first free object (the only word the fast paths store to)
//!   +8   tid        advanced by the slow paths' CAS only (the locked mode's transaction id)
//!   +16  slab       the slot's slab (written under the slot lock)
//!   +24  stopped    non-zero: no sequence may commit on this slot (see below)
//! ```
//!
//! # Touching a slot from elsewhere: stop + fence
//!
//! A plain store inside a sequence on CPU `c` is atomic only with respect to CPU `c`. A thread
//! on another CPU (a flush, a shrink, a thread without rseq) must therefore first make the
//! sequences on `c` stand back: [`stop`] stores `stopped = 1` and then calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, c)` ([`fence_cpu`]),
//! which interrupts CPU `c` if it runs a thread of this process and returns after a full memory
//! barrier there. When it returns, every sequence on `c` that started before the stop either
//! committed (and its store is visible to the stopper) or will restart, and every sequence that
//! (re)starts afterwards reads `stopped != 0` and fails before its commit. The stopper (who must
//! hold the slot lock, so there is one at a time) can then use the slot with the locked-mode CAS
//! until [`resume`].
//!
//! The slow path on the slot's own CPU avoids the system call: [`cas_on_cpu`] runs the
//! `{freelist, tid}` CAS *as the commit of a sequence* that first checks that the thread is on
//! the slot's CPU. A thread that migrated reports [`OnCpu::Elsewhere`] and the caller falls back
//! to stop + fence.
//!
//! # Why this file stores to slot memory
//!
//! `src/sync` is the only place that names atomics and cells. The sequences below are inline
//! assembly that reads and writes a slot's words by address; they name no Rust atomic type, and
//! they need the rseq area's offset, which this module owns. Everything in Rust that touches the
//! same words (the CAS, `stopped`, `slab`) goes through `crate::sync`. Under `cfg(loom)` the
//! sequences are modelled with those same types (see `sync/loom.rs`, `cpu_sequence`).
//!
//! # The commit mode
//!
//! [`commit_mode`] is decided once per process, by the first caller (the first `Kmem` built):
//! [`CommitMode::Rseq`] if this is x86_64, `KMEM_RSEQ` is not `0`, an rseq area is registered
//! for the calling thread (glibc's, or kmem's own when the C library registered none), and
//! `membarrier` accepts `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ` and a per-CPU fence;
//! otherwise [`CommitMode::Locked`] (the `{freelist, tid}` double-word CAS), with the reason in
//! [`commit_mode_reason`]. Debuggers that single-step, valgrind, rr and seccomp sandboxes that
//! refuse `rseq` or `membarrier` all end in the locked mode automatically.

#![cfg_attr(
    any(miri, loom, not(target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

use crate::sync::global::{AtomicUsize as GlobalUsize, Ordering as GlobalOrdering};
use crate::sync::{AtomicPtr, AtomicU64, DWord, Ordering};

use super::rseq::RSEQ_SIG;

/// How the per-CPU fast paths commit.
///
/// # Example
/// ```
/// use kmem::cpu::{commit_mode, CommitMode};
/// match commit_mode() {
///     CommitMode::Rseq => println!("restartable sequences"),
///     CommitMode::Locked => println!("locked CAS: {}", kmem::cpu::commit_mode_reason()),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Restartable sequences: one plain store per fast-path operation.
    Rseq,
    /// The `{freelist, tid}` double-word compare-and-swap (`lock cmpxchg16b`).
    Locked,
}

// ---------------------------------------------------------------------------------------------
// The slot head
// ---------------------------------------------------------------------------------------------

/// Offset of `freelist` in [`SlotHead`] (the word of the double word).
pub(crate) const OFF_FREELIST: usize = 0;
/// Offset of `slab` in [`SlotHead`].
pub(crate) const OFF_SLAB: usize = 16;
/// Offset of `stopped` in [`SlotHead`].
pub(crate) const OFF_STOPPED: usize = 24;

/// The first 32 bytes of a CPU slot: what the sequences read and write (layout above). `S` is
/// the type the slab pointer points to (a page descriptor in a cache; opaque here).
#[repr(C)]
pub(crate) struct SlotHead<S = u8> {
    /// `{freelist, tid}`.
    pub(crate) freelist_tid: DWord,
    /// The slot's slab, or null.
    pub(crate) slab: AtomicPtr<S>,
    /// Non-zero while a stopper owns the slot.
    pub(crate) stopped: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::offset_of!(SlotHead, freelist_tid) == OFF_FREELIST);
    assert!(core::mem::offset_of!(SlotHead, slab) == OFF_SLAB);
    assert!(core::mem::offset_of!(SlotHead, stopped) == OFF_STOPPED);
};

impl<S> SlotHead<S> {
    /// An empty, running slot with tid `tid`.
    pub(crate) fn new(tid: u64) -> Self {
        SlotHead {
            freelist_tid: DWord::new(0, tid),
            slab: AtomicPtr::new(core::ptr::null_mut()),
            stopped: AtomicU64::new(0),
        }
    }
}

/// An array of slots indexed by CPU id: slot `i` is the [`SlotHead`] at `base + i * stride`.
pub(crate) struct Slots<S = u8> {
    base: usize,
    stride: usize,
    nr: usize,
    _slab: core::marker::PhantomData<*const S>,
}

impl<S> Clone for Slots<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Slots<S> {}

// SAFETY: a `Slots` is an address range of slots whose fields are all synchronised (atomics, the
// double word); sharing or sending it shares only those.
unsafe impl<S> Send for Slots<S> {}
// SAFETY: as above.
unsafe impl<S> Sync for Slots<S> {}

impl<S> Slots<S> {
    /// The array of `nr` slots starting at `first`, `stride` bytes apart.
    ///
    /// # Safety
    /// `first + i * stride` is a live [`SlotHead`] for every `i < nr`, for as long as the
    /// returned value (and its copies) is used.
    pub(crate) unsafe fn new(first: *const SlotHead<S>, stride: usize, nr: usize) -> Self {
        Slots {
            base: first as usize,
            stride,
            nr,
            _slab: core::marker::PhantomData,
        }
    }

    /// Slot `i` (`i < nr`).
    #[cfg_attr(not(loom), allow(dead_code))] // the loom models of the sequences
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> &SlotHead<S> {
        assert!(i < self.nr);
        // SAFETY: `i < nr` and the constructor's contract.
        unsafe { &*((self.base + i * self.stride) as *const SlotHead<S>) }
    }

    /// The number of slots.
    #[cfg_attr(not(loom), allow(dead_code))] // the loom models of the sequences
    pub(crate) fn len(&self) -> usize {
        self.nr
    }

    /// The index of the slot at `addr` (an address a sequence returned).
    pub(crate) fn index_of(&self, addr: usize) -> usize {
        (addr - self.base).checked_div(self.stride).unwrap_or(0)
    }
}

/// How a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seq {
    /// Committed.
    Done,
    /// `pop`: the slot's freelist is empty.
    Empty,
    /// The slot is stopped: take the locked route.
    Stopped,
    /// The slot's slab is not the expected one.
    Mismatch,
    /// `push`: the freed object is already the freelist's head (a double free).
    DoubleFree,
    /// The calling thread cannot run sequences (no rseq registration, or a CPU id beyond the
    /// slot array).
    Unavailable,
}

const ST_DONE: u64 = 0;
const ST_EMPTY: u64 = 1;
const ST_STOPPED: u64 = 2;
const ST_MISMATCH: u64 = 3;
const ST_UNAVAILABLE: u64 = 4;
const ST_DOUBLE_FREE: u64 = 5;

#[inline(always)]
fn seq_of(st: u64) -> Seq {
    match st {
        ST_DONE => Seq::Done,
        ST_EMPTY => Seq::Empty,
        ST_STOPPED => Seq::Stopped,
        ST_MISMATCH => Seq::Mismatch,
        ST_DOUBLE_FREE => Seq::DoubleFree,
        _ => Seq::Unavailable,
    }
}

/// The result of [`cas_on_cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnCpu {
    /// The CAS stored the new value.
    Swapped,
    /// The CAS found this value instead.
    Failed((usize, u64)),
    /// The thread is not on the requested CPU (or cannot run sequences).
    Elsewhere,
}

// ---------------------------------------------------------------------------------------------
// The sequences (x86_64)
// ---------------------------------------------------------------------------------------------

/// The calling thread's rseq area, as an offset from the thread pointer (`fs:[offset]`), for
/// the sequences: one load of a static. glibc's area: `__rseq_offset`, the same in every
/// thread. kmem's own area: its thread-local's offset, the same in every thread because the
/// mode is only decided for it when that thread-local is in the static TLS block (see
/// `own_area_is_static`); a thread whose registration finds another offset stays
/// unregistered. Only called in rseq mode (or by the mode's own probe, after it published the
/// offset).
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
fn area_offset() -> isize {
    super::rseq::SEQ_OFFSET.load(GlobalOrdering::Relaxed) as isize
}

/// Pops the first object of the freelist of the slot of the CPU the thread runs on, in one
/// sequence: `cpu = cpu_id; slot = slots[cpu]; if stopped → Stopped; if expect_slab != 0 and
/// slab != expect_slab → Mismatch; obj = freelist; if 0 → Empty; freelist = *(obj + free_off)`
/// (commit). Returns `(how, slot, obj)`: `slot` is the address of the slot the sequence used
/// (for every outcome but `Unavailable`; [`Slots::index_of`] gives its index), `obj` the object
/// (`Done` only).
///
/// Only called in rseq mode (the slot memory of `slots` must be used by no locked-mode CAS
/// without a stop + fence).
///
/// # Safety
/// Every object on a slot's freelist is readable at `obj + free_off` (an aligned word).
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn pop<S>(
    slots: Slots<S>,
    free_off: usize,
    expect_slab: usize,
) -> (Seq, usize, usize) {
    let (st, slot, obj): (u64, usize, usize);
    // SAFETY: the sequence reads `cpu_id` from and writes `rseq_cs` to this thread's rseq area
    // (registered: else `cpu_id` reads as >= nr and the sequence stops before touching a slot);
    // it touches slot `cpu < nr` only (the `Slots` contract) and the object's free pointer (the
    // caller's contract). The descriptor is in `__rseq_cs` (32-byte aligned, version 0, flags
    // 0), its start label directly follows the store that arms it, the commit is the last
    // instruction of the range, and the abort handler is outside the range and preceded by the
    // signature (`ud1` encoding, as librseq, so disassemblers stay in sync). The abort handler
    // re-arms the descriptor (the kernel clears `rseq_cs` on abort) and restarts.
    unsafe {
        core::arch::asm!(
            "2:",
            "lea {t}, [rip + 9f]",
            "mov qword ptr fs:[{off} + {cs}], {t}",
            "3:",
            "mov {slot:e}, dword ptr fs:[{off} + 4]",
            "cmp {slot}, {nr}",
            "jae 25f",
            "imul {slot}, {stride}",
            "add {slot}, {base}",
            "cmp qword ptr [{slot} + {o_stop}], 0",
            "jne 26f",
            "test {expect}, {expect}",
            "jz 4f",
            "cmp qword ptr [{slot} + {o_slab}], {expect}",
            "jne 27f",
            "4:",
            "mov {obj}, qword ptr [{slot}]",
            "test {obj}, {obj}",
            "jz 28f",
            "mov {t}, qword ptr [{obj} + {foff}]",
            "mov qword ptr [{slot}], {t}",
            "5:",
            "xor {t:e}, {t:e}",
            "jmp 29f",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "6:",
            "jmp 2b",
            "25:",
            "mov {t:e}, {st_unavail}",
            "jmp 29f",
            "26:",
            "mov {t:e}, {st_stopped}",
            "jmp 29f",
            "27:",
            "mov {t:e}, {st_mismatch}",
            "jmp 29f",
            "28:",
            "mov {t:e}, {st_empty}",
            "29:",
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3b, 5b - 3b, 6b",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"aw\"",
            ".quad 9b",
            ".popsection",
            off = in(reg) area_offset(),
            nr = in(reg) slots.nr,
            stride = in(reg) slots.stride,
            base = in(reg) slots.base,
            expect = in(reg) expect_slab,
            foff = in(reg) free_off,
            t = out(reg) st,
            slot = out(reg) slot,
            obj = out(reg) obj,
            cs = const super::rseq::RSEQ_CS_OFFSET,
            o_stop = const OFF_STOPPED,
            o_slab = const OFF_SLAB,
            sig = const RSEQ_SIG,
            st_unavail = const ST_UNAVAILABLE,
            st_stopped = const ST_STOPPED,
            st_mismatch = const ST_MISMATCH,
            st_empty = const ST_EMPTY,
            options(nostack),
        );
    }
    (seq_of(st), slot, obj)
}

/// Pushes the detached list `head ..= tail` (linked through their free pointers) onto the
/// freelist of the slot of the CPU the thread runs on, in one sequence: `cpu = cpu_id; slot =
/// slots[cpu]; if stopped → Stopped; if slab != expect_slab → Mismatch; old = freelist; if old
/// == tail → DoubleFree; *(tail + free_off) = old; freelist = head` (commit). Returns `(how,
/// slot)` (the slot's address, as for [`pop`]). The store into `tail` before the commit touches only the caller's own object (it is
/// redone by a restart).
///
/// # Safety
/// The caller owns `head ..= tail` (objects of `expect_slab`, linked); `tail + free_off` is an
/// aligned word of `tail`. Only called in rseq mode.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn push<S>(
    slots: Slots<S>,
    free_off: usize,
    expect_slab: usize,
    head: usize,
    tail: usize,
) -> (Seq, usize) {
    let (st, slot): (u64, usize);
    // SAFETY: as in `pop`; the one store before the commit is into `tail`, which the caller
    // owns (contract).
    unsafe {
        core::arch::asm!(
            "2:",
            "lea {t}, [rip + 9f]",
            "mov qword ptr fs:[{off} + {cs}], {t}",
            "3:",
            "mov {slot:e}, dword ptr fs:[{off} + 4]",
            "cmp {slot}, {nr}",
            "jae 25f",
            "imul {slot}, {stride}",
            "add {slot}, {base}",
            "cmp qword ptr [{slot} + {o_stop}], 0",
            "jne 26f",
            "cmp qword ptr [{slot} + {o_slab}], {expect}",
            "jne 27f",
            "mov {t}, qword ptr [{slot}]",
            "cmp {t}, {tail}",
            "je 28f",
            "mov qword ptr [{tail} + {foff}], {t}",
            "mov qword ptr [{slot}], {head}",
            "5:",
            "xor {t:e}, {t:e}",
            "jmp 29f",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "6:",
            "jmp 2b",
            "25:",
            "mov {t:e}, {st_unavail}",
            "jmp 29f",
            "26:",
            "mov {t:e}, {st_stopped}",
            "jmp 29f",
            "27:",
            "mov {t:e}, {st_mismatch}",
            "jmp 29f",
            "28:",
            "mov {t:e}, {st_double}",
            "29:",
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3b, 5b - 3b, 6b",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"aw\"",
            ".quad 9b",
            ".popsection",
            off = in(reg) area_offset(),
            nr = in(reg) slots.nr,
            stride = in(reg) slots.stride,
            base = in(reg) slots.base,
            expect = in(reg) expect_slab,
            head = in(reg) head,
            tail = in(reg) tail,
            foff = in(reg) free_off,
            t = out(reg) st,
            slot = out(reg) slot,
            cs = const super::rseq::RSEQ_CS_OFFSET,
            o_stop = const OFF_STOPPED,
            o_slab = const OFF_SLAB,
            sig = const RSEQ_SIG,
            st_unavail = const ST_UNAVAILABLE,
            st_stopped = const ST_STOPPED,
            st_mismatch = const ST_MISMATCH,
            st_double = const ST_DOUBLE_FREE,
            options(nostack),
        );
    }
    (seq_of(st), slot)
}

/// The `{freelist, tid}` CAS `old → new` on `slot`, as the commit of a sequence that first
/// checks that the thread runs on CPU `cpu`: atomic with respect to every sequence on `cpu`,
/// with no system call. [`OnCpu::Elsewhere`] if the thread is elsewhere (it migrated since it
/// chose the slot) or cannot run sequences; the caller then stops and fences the slot.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline]
pub(crate) fn cas_on_cpu<S>(
    slot: &SlotHead<S>,
    cpu: usize,
    old: (usize, u64),
    new: (usize, u64),
) -> OnCpu {
    let (st, lo, hi): (u64, u64, u64);
    // SAFETY: as in `pop` for the sequence. The CAS is `lock cmpxchg16b` on the slot's 16-byte
    // aligned double word (the `DWord` backend's own instruction; `DWord::is_lock_free` was
    // checked before any slot existed). Every register is named explicitly: rbx cannot be an
    // operand, so the new low half is swapped into it around the sequence and restored, and
    // no other operand can have been given rbx. The abort handler jumps back after the swap,
    // so a restart still has the new low half in rbx.
    unsafe {
        core::arch::asm!(
            "xchg r11, rbx",
            "2:",
            "lea r10, [rip + 9f]",
            "mov qword ptr fs:[r8 + {cs}], r10",
            "3:",
            "cmp dword ptr fs:[r8 + 4], r9d",
            "jne 27f",
            "lock cmpxchg16b xmmword ptr [rsi]",
            "5:",
            "sete r10b",
            "movzx r10d, r10b",
            "jmp 29f",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "6:",
            "jmp 2b",
            "27:",
            "mov r10d, 2",
            "29:",
            "mov rbx, r11",
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3b, 5b - 3b, 6b",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"aw\"",
            ".quad 9b",
            ".popsection",
            in("r8") area_offset(),
            in("r9") cpu,
            inout("r11") new.0 as u64 => _,
            in("rcx") new.1,
            inout("rax") old.0 as u64 => lo,
            inout("rdx") old.1 => hi,
            in("rsi") slot.freelist_tid.as_ptr(),
            out("r10") st,
            cs = const super::rseq::RSEQ_CS_OFFSET,
            sig = const RSEQ_SIG,
            options(nostack),
        );
    }
    match st {
        1 => OnCpu::Swapped,
        0 => OnCpu::Failed((lo as usize, hi)),
        _ => OnCpu::Elsewhere,
    }
}

/// Other targets (and Miri): no sequences; never called, because the mode is `Locked` there.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn pop<S>(_: Slots<S>, _: usize, _: usize) -> (Seq, usize, usize) {
    (Seq::Unavailable, 0, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn push<S>(_: Slots<S>, _: usize, _: usize, _: usize, _: usize) -> (Seq, usize) {
    (Seq::Unavailable, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) fn cas_on_cpu<S>(_: &SlotHead<S>, _: usize, _: (usize, u64), _: (usize, u64)) -> OnCpu {
    OnCpu::Elsewhere
}

// ---------------------------------------------------------------------------------------------
// The sequences under loom (the model: `sync::cpu_sequence`)
// ---------------------------------------------------------------------------------------------

/// The model of [`pop`] (the x86_64 version's docs): the sequence runs under its CPU's model
/// mutex, reading the model CPU inside it.
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn pop<S>(
    slots: Slots<S>,
    free_off: usize,
    expect_slab: usize,
) -> (Seq, usize, usize) {
    let cpu = super::current_cpu();
    let seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0, 0);
    }
    let s = slots.get(cpu);
    let cpu = s as *const SlotHead<S> as usize;
    if !cfg!(kmem_mutant = "rseq_ignores_stop") && s.stopped.load(Ordering::Relaxed) != 0 {
        return (Seq::Stopped, cpu, 0);
    }
    if expect_slab != 0 && s.slab.load(Ordering::Relaxed) as usize != expect_slab {
        return (Seq::Mismatch, cpu, 0);
    }
    let (obj, _) = s.freelist_tid.load();
    if obj == 0 {
        return (Seq::Empty, cpu, 0);
    }
    // SAFETY: the caller's contract.
    let next = unsafe { crate::sync::load_free_ptr((obj + free_off) as *const usize) };
    if cfg!(kmem_mutant = "rseq_commit_outside_sequence") {
        // Planted bug (loom-tests): the commit is not the sequence's last instruction (the
        // range ends before it), so another thread on this CPU can run in between.
        drop(seq);
        s.freelist_tid.store_word(next);
        return (Seq::Done, cpu, obj);
    }
    s.freelist_tid.store_word(next);
    drop(seq);
    (Seq::Done, cpu, obj)
}

/// The model of [`push`].
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn push<S>(
    slots: Slots<S>,
    free_off: usize,
    expect_slab: usize,
    head: usize,
    tail: usize,
) -> (Seq, usize) {
    let cpu = super::current_cpu();
    let _seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0);
    }
    let s = slots.get(cpu);
    let cpu = s as *const SlotHead<S> as usize;
    if !cfg!(kmem_mutant = "rseq_ignores_stop") && s.stopped.load(Ordering::Relaxed) != 0 {
        return (Seq::Stopped, cpu);
    }
    if s.slab.load(Ordering::Relaxed) as usize != expect_slab {
        return (Seq::Mismatch, cpu);
    }
    let (old, _) = s.freelist_tid.load();
    if old == tail {
        return (Seq::DoubleFree, cpu);
    }
    // SAFETY: the caller owns `tail` (contract).
    unsafe { crate::sync::store_free_ptr((tail + free_off) as *mut usize, old) };
    s.freelist_tid.store_word(head);
    (Seq::Done, cpu)
}

/// The model of [`cas_on_cpu`].
#[cfg(loom)]
pub(crate) fn cas_on_cpu<S>(
    slot: &SlotHead<S>,
    cpu: usize,
    old: (usize, u64),
    new: (usize, u64),
) -> OnCpu {
    let here = super::current_cpu();
    let _seq = crate::sync::cpu_sequence(here);
    if here != cpu && !cfg!(kmem_mutant = "rseq_cpu_not_rechecked") {
        return OnCpu::Elsewhere;
    }
    match slot.freelist_tid.compare_exchange(old, new) {
        Ok(()) => OnCpu::Swapped,
        Err(seen) => OnCpu::Failed(seen),
    }
}

// ---------------------------------------------------------------------------------------------
// Stop, fence, resume
// ---------------------------------------------------------------------------------------------

/// Stops slot `slot` of CPU `cpu` and fences that CPU: when this returns, no sequence can commit
/// on the slot until [`resume`], and every store a sequence committed on it before is visible.
/// The caller holds the slot's lock (one stopper at a time). A system call: never from inside a
/// sequence, and not on a fast path.
pub(crate) fn stop<S>(slot: &SlotHead<S>, cpu: usize) {
    if cfg!(kmem_mutant = "rseq_fence_before_stop") {
        // Planted bug (loom-tests): a sequence that starts between the fence and the store does
        // not see the stop.
        fence_cpu(cpu);
        slot.stopped.store(1, Ordering::SeqCst);
        return;
    }
    slot.stopped.store(1, Ordering::SeqCst);
    if !cfg!(kmem_mutant = "rseq_stop_without_fence") {
        fence_cpu(cpu);
    }
}

/// Lets sequences commit on `slot` again (the caller's stores before it are visible to them).
pub(crate) fn resume<S>(slot: &SlotHead<S>) {
    slot.stopped.store(0, Ordering::Release);
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` (Linux 5.10+ for the per-CPU flag).
const MEMBARRIER_CMD_QUERY: i32 = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: u32 = 1;

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu)`: when it
/// returns, every sequence that was in progress on `cpu` has committed (visibly) or will
/// restart. Aborts the process if the kernel refuses (it accepted the same call when the mode
/// was decided; the fork child re-registers in [`after_fork_child`]).
pub(crate) fn fence_cpu(cpu: usize) {
    #[cfg(loom)]
    {
        crate::sync::cpu_fence(cpu);
    }
    #[cfg(not(loom))]
    {
        if let Err(e) = membarrier_fence(cpu) {
            let e = crate::os::Num::dec(e as u64);
            crate::abort_msg(&[
                "kmem: membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU) failed in rseq mode, errno ",
                e.as_str(),
            ]);
        }
    }
}

#[cfg(not(loom))]
fn membarrier(cmd: i32, flags: u32, cpu: i32) -> Result<i64, i32> {
    #[cfg(miri)]
    {
        let _ = (cmd, flags, cpu);
        Err(libc::ENOSYS)
    }
    #[cfg(not(miri))]
    {
        // SAFETY: membarrier takes three integers and touches no user memory.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) };
        if r < 0 {
            // SAFETY: errno is thread-local and always readable.
            Err(unsafe { *libc::__errno_location() })
        } else {
            Ok(r)
        }
    }
}

#[cfg(not(loom))]
fn membarrier_fence(cpu: usize) -> Result<(), i32> {
    membarrier(
        MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
        MEMBARRIER_CMD_FLAG_CPU,
        cpu as i32,
    )
    .map(|_| ())
}

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
    use super::rseq::{self as r, AREA_GLIBC, AREA_OWN, SEQ_AREA};
    if rseq_disabled_by_env() {
        return (CommitMode::Locked, 2);
    }
    let area = if r::libc_registered_rseq() {
        let p = r::rseq_probe();
        if r::rseq_read(super::unpack_offset(p)).is_none() {
            return (CommitMode::Locked, 4);
        }
        super::pack(super::unpack_offset(p), AREA_GLIBC)
    } else {
        match r::register_own_area() {
            Ok(off) if r::own_area_is_static(off) => super::pack(off, AREA_OWN),
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
    let cpu = r::rseq_read(super::unpack_offset(area)).unwrap_or(0);
    if membarrier_fence(cpu).is_err() {
        return (CommitMode::Locked, 7);
    }
    super::rseq::SEQ_OFFSET.store(super::unpack_offset(area) as usize, GlobalOrdering::Relaxed);
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
        use super::rseq::{register_own_area, AREA_OWN, SEQ_AREA};
        let area = SEQ_AREA.load(GlobalOrdering::Acquire);
        if area & super::TAG_MASK != AREA_OWN {
            return false;
        }
        matches!(register_own_area(), Ok(off) if off == super::unpack_offset(area))
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

// ---------------------------------------------------------------------------------------------
// A slot array for tests of the primitives (unit tests, tests/rseq_stress.rs)
// ---------------------------------------------------------------------------------------------

/// The primitives on a private slot array, for tests (`tests/rseq_primitives.rs`,
/// `tests/rseq_stress.rs`, and the loom model `loom-tests/tests/m11_rseq.rs`); not part of the
/// API. Objects are caller memory whose first word is the free pointer; every slot's `slab` is
/// [`TestSlots::SLAB`] unless changed.
#[doc(hidden)]
pub struct TestSlots {
    slots: Box<[PaddedSlot]>,
}

#[repr(C, align(64))]
struct PaddedSlot(SlotHead);

impl TestSlots {
    /// The `slab` value of every slot at creation.
    pub const SLAB: usize = 0x5000;

    /// `nr` empty slots (tids 0..nr).
    pub fn new(nr: usize) -> Self {
        let slots: Box<[PaddedSlot]> = (0..nr)
            .map(|i| {
                let h = SlotHead::new(i as u64);
                h.slab.store(Self::SLAB as *mut u8, Ordering::Relaxed);
                PaddedSlot(h)
            })
            .collect();
        TestSlots { slots }
    }

    fn slots(&self) -> Slots<u8> {
        // SAFETY: the boxed array lives as long as `self`, entries 64 bytes apart.
        unsafe {
            Slots::new(
                &self.slots[0].0,
                core::mem::size_of::<PaddedSlot>(),
                self.slots.len(),
            )
        }
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// [`pop`] on the calling thread's CPU slot: `(how, cpu, obj)`.
    pub fn pop(&self) -> (Seq, usize, usize) {
        self.pop_if_slab(0)
    }

    /// [`pop`] and [`push`] of one object, back to back, returning the object (what a fast-path
    /// alloc+free pair runs, without a cache: the rseq mode's floor, for `benches/fastpath.rs`).
    /// 0 if either sequence did not commit.
    ///
    /// # Safety
    /// As [`Self::push`] (the objects on the calling CPU's list are the caller's).
    #[inline(always)]
    pub unsafe fn pop_push(&self) -> usize {
        let slots = self.slots();
        // SAFETY: as in `pop_if_slab`.
        let (st, _, obj) = unsafe { pop(slots, 0, 0) };
        if st != Seq::Done {
            return 0;
        }
        // SAFETY: popped, so ours (contract).
        let (st, _) = unsafe { push(slots, 0, Self::SLAB, core::hint::black_box(obj), obj) };
        if st == Seq::Done {
            obj
        } else {
            0
        }
    }

    /// [`pop`] requiring the slot's slab to be `slab` (0: any).
    pub fn pop_if_slab(&self, slab: usize) -> (Seq, usize, usize) {
        let slots = self.slots();
        // SAFETY: the objects on the lists are caller memory with a free pointer at offset 0
        // (the contract of `push`/`give_back_and_resume`).
        let (st, at, obj) = unsafe { pop(slots, 0, slab) };
        let cpu = if st == Seq::Unavailable {
            usize::MAX
        } else {
            slots.index_of(at)
        };
        (st, cpu, obj)
    }

    /// [`push`] of the one object `obj` (slab [`Self::SLAB`]): `(how, cpu)`.
    ///
    /// # Safety
    /// `obj` is an 8-byte aligned, writable word the caller owns until it is popped again.
    pub unsafe fn push(&self, obj: usize) -> (Seq, usize) {
        let slots = self.slots();
        // SAFETY: forwarded contract.
        let (st, at) = unsafe { push(slots, 0, Self::SLAB, obj, obj) };
        let cpu = if st == Seq::Unavailable {
            usize::MAX
        } else {
            slots.index_of(at)
        };
        (st, cpu)
    }

    /// Sets slot `i`'s slab word.
    pub fn set_slab(&self, i: usize, slab: usize) {
        self.slots[i]
            .0
            .slab
            .store(slab as *mut u8, Ordering::Relaxed);
    }

    /// Stops slot `i` (stop + fence of CPU `i`) and takes its whole list with the locked CAS;
    /// the slot stays stopped until [`Self::give_back_and_resume`].
    pub fn stop_and_take(&self, i: usize) -> usize {
        let h = &self.slots[i].0;
        stop(h, i);
        let mut cur = h.freelist_tid.load();
        loop {
            match h
                .freelist_tid
                .compare_exchange(cur, (0, cur.1.wrapping_add(1)))
            {
                Ok(()) => return cur.0,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Puts the list `head` (linked through free pointers, 0-terminated) on stopped slot `i`
    /// (prepended to what is there) and resumes it.
    ///
    /// # Safety
    /// The caller owns the list; slot `i` was stopped by [`Self::stop_and_take`].
    pub unsafe fn give_back_and_resume(&self, i: usize, head: usize) {
        let h = &self.slots[i].0;
        if head != 0 {
            let mut tail = head;
            // SAFETY: the caller owns the list (contract).
            unsafe {
                while crate::sync::load_free_ptr(tail as *const usize) != 0 {
                    tail = crate::sync::load_free_ptr(tail as *const usize);
                }
            }
            let mut cur = h.freelist_tid.load();
            loop {
                // SAFETY: `tail` is ours (contract).
                unsafe { crate::sync::store_free_ptr(tail as *mut usize, cur.0) };
                match h
                    .freelist_tid
                    .compare_exchange(cur, (head, cur.1.wrapping_add(1)))
                {
                    Ok(()) => break,
                    Err(seen) => cur = seen,
                }
            }
        }
        resume(h);
    }

    /// Takes slot `i`'s whole list with [`cas_on_cpu`] (no system call): `None` when the thread
    /// is not on CPU `i`.
    pub fn take_on_cpu(&self, i: usize) -> Option<usize> {
        let h = &self.slots[i].0;
        let mut cur = h.freelist_tid.load();
        loop {
            match cas_on_cpu(h, i, cur, (0, cur.1.wrapping_add(1))) {
                OnCpu::Swapped => return Some(cur.0),
                OnCpu::Failed(seen) => cur = seen,
                OnCpu::Elsewhere => return None,
            }
        }
    }

    /// The objects on slot `i`'s list, walked with no synchronisation (call at quiescence).
    pub fn walk(&self, i: usize) -> Vec<usize> {
        let mut v = Vec::new();
        let mut p = self.slots[i].0.freelist_tid.load().0;
        while p != 0 {
            v.push(p);
            // SAFETY: objects on the list are caller memory (quiescent: no one else uses them).
            p = unsafe { crate::sync::load_free_ptr(p as *const usize) };
        }
        v
    }

    /// Slot `i`'s tid.
    pub fn tid(&self, i: usize) -> u64 {
        self.slots[i].0.freelist_tid.load().1
    }

    /// [`thread_can_sequence`] (lazy registration of kmem's own area on this thread).
    pub fn thread_can_sequence() -> bool {
        thread_can_sequence()
    }

    /// [`fence_cpu`].
    pub fn fence(cpu: usize) {
        fence_cpu(cpu)
    }
}
