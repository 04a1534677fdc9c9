//! Per-CPU commits with no locked instruction: restartable sequences (rseq) on a CPU slot, the
//! commit mode, and the stop + fence that lets another thread touch a slot safely.
//!
//! Files: this one (the mechanism, the slot layout, stop + fence, the test slot array),
//! `seq.rs` (the sequences on a `{freelist, tid}` slot: x86_64 inline assembly, and their loom
//! model), `array.rs` (the sequences on a per-CPU array of object pointers: the sheaves'
//! pop, push and replace), `mode.rs` (the commit mode: deciding it once, and why).
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

/// One restartable sequence in x86_64 inline assembly: the scaffolding every sequence here
/// shares around its own instructions. The macro emits, in order:
///
/// - the load of the thread's rseq area offset (`{off}`) from `rseq::SEQ_OFFSET`, by a
///   RIP-relative address inside the assembly (the compiler would go through the GOT: one more
///   dependent load on the fast paths' chain);
/// - label `2`, the arming store of the descriptor's address into the area's `rseq_cs` (the
///   abort handler jumps back here: the kernel clears `rseq_cs` on an abort);
/// - label `3`, the start of the range, then `body` — which ends with the commit, the single
///   store that publishes the sequence, and may branch to the `fail` labels;
/// - label `5` (the end of the range), then `done`: what the committed path does before the
///   exit, `{t} = 0` (done) unless the caller gives its own (the inline fast paths' variants
///   give nothing: their outputs say "done" by themselves); then label `29`, the exit, so the
///   committed path falls through with no jump;
/// - in a section of its own (`.text.unlikely.kmem_rseq`, as librseq's `__rseq_failure`), out of
///   the fast path's way: the signature ([`RSEQ_SIG`], in the `ud1` encoding librseq uses so
///   disassemblers stay in sync) and label `6`, the abort handler, which restarts at `2`; then
///   `fail`: labels `25`..`28` that set the caller's outputs for a sequence that did not
///   commit and jump back to `29` (the macro adds the last jump);
/// - the descriptor (`struct rseq_cs`: version 0, flags 0, start `3`, length `5 - 3`, abort
///   `6`) in `__rseq_cs`, 32-byte aligned, and its address in `__rseq_cs_ptr_array` (where
///   debuggers and checkers look for them, as librseq does).
///
/// The caller names `t` (the status register, an output, or a scratch register when it gives
/// its own `done`) and its own operands after `ops:`.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
macro_rules! rseq_asm {
    (body: [$($body:literal),* $(,)?], fail: [$($fail:literal),* $(,)?], ops: [$($ops:tt)*]) => {
        rseq_asm!(
            body: [$($body),*],
            done: ["xor {t:e}, {t:e}"],
            fail: [$($fail),*],
            ops: [$($ops)*]
        )
    };
    (
        body: [$($body:literal),* $(,)?],
        done: [$($done:literal),* $(,)?],
        fail: [$($fail:literal),* $(,)?],
        ops: [$($ops:tt)*]
    ) => {
        core::arch::asm!(
            "mov {off}, qword ptr [rip + {seq_off}]",
            "2:",
            "lea {t}, [rip + 9f]",
            "mov qword ptr fs:[{off} + {cs}], {t}",
            "3:",
            $($body,)*
            "5:",
            $($done,)*
            ".pushsection .text.unlikely.kmem_rseq, \"ax\", @progbits",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "6:",
            "jmp 2b",
            $($fail,)*
            "jmp 29f",
            ".popsection",
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
            $($ops)*
            off = out(reg) _,
            seq_off = sym crate::cpu::rseq::SEQ_OFFSET,
            cs = const crate::cpu::rseq::RSEQ_CS_OFFSET,
            sig = const crate::cpu::rseq::RSEQ_SIG,
            options(nostack),
        )
    };
}

mod array;
mod mode;
mod seq;

pub(crate) use array::{
    array_pop, array_pop_fast, array_push, array_push_fast, replace_on_cpu, ArrayGeo, ArrayHead,
    ArraySlot, ArraySlots, Replace, ARRAY_OBJECTS,
};
#[cfg(not(any(loom, miri)))]
pub(crate) use mode::after_fork_child;
pub(crate) use mode::thread_can_sequence;
pub use mode::{commit_mode, commit_mode_reason};
pub(crate) use seq::{cas_on_cpu, pop, push};

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
    /// `array_push`: the CPU's array is full (or the CPU has none).
    Full,
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
const ST_FULL: u64 = 6;

#[inline(always)]
fn seq_of(st: u64) -> Seq {
    match st {
        ST_DONE => Seq::Done,
        ST_EMPTY => Seq::Empty,
        ST_STOPPED => Seq::Stopped,
        ST_MISMATCH => Seq::Mismatch,
        ST_DOUBLE_FREE => Seq::DoubleFree,
        ST_FULL => Seq::Full,
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
// Stop, fence, resume
// ---------------------------------------------------------------------------------------------

/// Stops slot `slot` of CPU `cpu` and fences that CPU: when this returns, no sequence can commit
/// on the slot until [`resume`], and every store a sequence committed on it before is visible.
/// The caller holds the slot's lock (one stopper at a time). A system call: never from inside a
/// sequence, and not on a fast path.
pub(crate) fn stop<S>(slot: &SlotHead<S>, cpu: usize) {
    stop_word(&slot.stopped, cpu)
}

/// Takes the top of slot `slot` of `cpu`'s per-CPU array (`array.rs`, "Taking a slot's top"):
/// returns the top the last committed sequence left and leaves 0 there, so that every pop and
/// push on the slot fails until [`put_array`]. The caller holds the slot's lock (no replace
/// runs); it may run on any CPU. A system call per round: never from inside a sequence, and not
/// on a fast path.
pub(crate) fn take_array(slot: &ArraySlot, cpu: usize) -> usize {
    if cfg!(kmem_mutant = "sheaf_take_fence_first") {
        // Planted bug (loom-tests): a sequence that starts after the fence and commits after
        // the swap puts back a top the stopper no longer counts.
        fence_cpu(cpu);
        return slot.top.swap(0, Ordering::AcqRel);
    }
    let mut taken = slot.top.swap(0, Ordering::AcqRel);
    loop {
        if !cfg!(kmem_mutant = "sheaf_take_without_fence") {
            fence_cpu(cpu);
        }
        if cfg!(kmem_mutant = "sheaf_take_without_recheck") {
            // Planted bug (loom-tests): a sequence in flight at the swap commits over the 0.
            return taken;
        }
        let now = slot.top.swap(0, Ordering::AcqRel);
        if now == 0 {
            return taken;
        }
        // The sequence in flight at the swap committed: its top is the newer state.
        taken = now;
    }
}

/// Gives a top taken by [`take_array`] back to its slot (the array and its count as the
/// caller leaves them; the caller still holds the slot's lock).
pub(crate) fn put_array(slot: &ArraySlot, top: usize) {
    slot.top.store(top, Ordering::Release);
}

/// Stores 1 in a slot's stop word, then fences `cpu`.
fn stop_word(stopped: &AtomicU64, cpu: usize) {
    if cfg!(kmem_mutant = "rseq_fence_before_stop") {
        // Planted bug (loom-tests): a sequence that starts between the fence and the store does
        // not see the stop.
        fence_cpu(cpu);
        stopped.store(1, Ordering::SeqCst);
        return;
    }
    stopped.store(1, Ordering::SeqCst);
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
            crate::os::abort_msg(&[
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
        // The freelist secret (`freelist-hardened`) before the first push.
        crate::sync::init_freelist_random();
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
        // SAFETY: the objects on the lists are caller memory with a free pointer at offset 0 (the contract of `push`/`give_back_and_resume`).
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

    /// Links `obj` to `next` through its free pointer (at offset 0), as the sequences expect it:
    /// encoded when the `freelist-hardened` feature is on. Build lists for these slots with
    /// this, not with a plain store.
    ///
    /// # Safety
    /// `obj` is an 8-byte aligned, writable word the caller owns.
    pub unsafe fn set_next(obj: usize, next: usize) {
        // SAFETY: the caller's contract.
        unsafe { crate::sync::store_free_ptr(obj as *mut usize, next) }
    }

    /// The object after `obj` on a list (its free pointer, decoded as [`Self::set_next`]
    /// encoded it).
    ///
    /// # Safety
    /// `obj` is an 8-byte aligned word on a list the caller owns.
    pub unsafe fn next_of(obj: usize) -> usize {
        // SAFETY: the caller's contract.
        unsafe { crate::sync::load_free_ptr(obj as *const usize) }
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
