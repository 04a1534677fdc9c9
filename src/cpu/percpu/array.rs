//! Per-CPU arrays of object pointers (tcmalloc's per-CPU cache, Linux 7.0's sheaves): each
//! CPU's slot holds a pointer into its current array — the *top*, the first free cell — and a
//! pop or push is one restartable sequence whose commit is the store of the new top.
//!
//! ```text
//!   ArraySlot (in the CPU slot)        an array (e.g. a sheaf): BYTES bytes, a power of two,
//!   +0  top  ─────────────────┐        aligned to BYTES
//!                             │        +0    size       its count while no slot holds it
//!                             │        +8    capacity
//!                             │        +16   (the owner's words)
//!                             │        +32   objects[0] ...
//!                             └──────▶       objects[n-1]  (top: array + 24 + 8 n; 24 if empty)
//!                                            ... objects[capacity - 1]
//! ```
//!
//! Because an array is aligned to its power-of-two size, `top` alone names both the array
//! (`top & !mask`) and its count (`((top & mask) - 24) / 8`): a pop or push reads one word of the
//! slot and one cell, and stores one word — the shortest chain of dependent loads a per-CPU
//! array can have (tcmalloc's `current` plays the same part). `top` points at the last object
//! rather than past it so that a full array's top stays inside the array even when its cells
//! fill it to the end.
//!
//! - pop: `cpu = cpu_id; slot = slots[cpu]; top = slot.top; top & mask <= 24 (no array: top 0,
//!   or an empty one) → Empty; obj = *top`; commit `slot.top = top - 8`.
//! - push: `...; top == 0 → Full; top & mask != 24 and *top == obj → DoubleFree; top & mask ==
//!   full → Full; *(top + 8) = obj`; commit `slot.top = top + 8`. The store before the commit is
//!   into a cell beyond the count, which no one reads: a restart redoes it, and if the array
//!   leaves the CPU in between, the stray word is beyond its count.
//! - replace: `cpu_id == c? else Elsewhere; slot.top == old? else Changed`; commit
//!   `slot.top = new`. Used by the slow paths, under the slot's lock, to install another array.
//!   Comparing the whole top compares the array *and* its count: an object pushed on this CPU
//!   after the slow path looked makes the replace fail instead of leaving with the old array.
//!
//! Only the holder of the slot's lock changes which array `top` points into (by a replace on
//! the slot's CPU, or by *taking* the top from any CPU, see below); the fast paths only move
//! `top` within the array. An array that no slot holds carries its count in `size` and belongs
//! to whoever took it out, who may use it with plain loads and stores.
//!
//! # Taking a slot's top from another CPU (no stop word)
//!
//! The cpu-slab sequences check a stop word (`percpu/mod.rs`); the array sequences check
//! nothing of the kind, because a top of 0 already fails them all (pop: empty; push: full),
//! and that test is one they make anyway. A stopper (flush, shrink, destroy, the exact count;
//! it holds the slot's lock, so no replace runs) *takes* the top — [`take_array`]:
//!
//! 1. `taken = swap(top, 0)`: sequences that start now fail;
//! 2. fence the slot's CPU (membarrier): the one sequence that may have been in flight there,
//!    having read `taken` before the swap, has committed or will restart;
//! 3. `now = swap(top, 0)`: if 0, no commit came after the swap, and `taken` is the slot's
//!    whole state; else the in-flight sequence committed `taken ± 8` over the 0, which is now
//!    the newer state: `taken = now`, and back to 2 (a sequence may have started on the
//!    restored top before this swap).
//!
//! Each round needs a sequence in flight at the very moment of the swap, so the loop ends after
//! one or two rounds in practice. What the stopper returns is the top as the last commit left
//! it: the array and its count are its own until it stores a top back ([`put_array`]).
//!
//! In the locked commit mode there are no sequences: the slot's lock (taken with `try_lock` by
//! the fast paths) guards `top` and the array, and [`ArraySlot::pop_locked`] /
//! [`ArraySlot::push_locked`] do the same steps as plain code.

#![cfg_attr(
    any(miri, loom, not(target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

use super::*;
use crate::sync::AtomicUsize;

/// Offset of `objects[0]` from the start of an [`ArrayHead`] (under loom the atomics and cells
/// of the head and its owner's words are larger model objects: the cells start further on).
pub(crate) const ARRAY_OBJECTS: usize = if cfg!(loom) { 256 } else { 32 };
/// Offset of `top` in an [`ArraySlot`].
const OFF_TOP: usize = 0;

/// The first words of an array: its count (while no slot holds it) and capacity; `objects`
/// start at [`ARRAY_OBJECTS`].
#[repr(C)]
pub(crate) struct ArrayHead {
    /// The number of objects, `objects[0 .. size]`, while no slot holds the array.
    pub(crate) size: AtomicUsize,
    /// The number of object cells.
    pub(crate) capacity: usize,
}

/// The per-CPU word the array sequences read and commit: the top of the CPU's array. It has no
/// stop word: a stopper takes the top itself ([`take_array`](super::take_array)), and a slot
/// whose top is 0 fails every pop and push.
#[repr(C)]
pub(crate) struct ArraySlot {
    /// The first free cell of the CPU's array, or 0 when it has none, or while a stopper holds
    /// it (pop: empty; push: full).
    pub(crate) top: AtomicUsize,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::offset_of!(ArraySlot, top) == OFF_TOP);

impl ArrayHead {
    /// An empty array of `capacity` cells.
    pub(crate) fn new(capacity: usize) -> Self {
        ArrayHead {
            size: AtomicUsize::new(0),
            capacity,
        }
    }

    /// The address of cell `i`.
    #[inline(always)]
    pub(crate) fn cell(&self, i: usize) -> *mut usize {
        (self as *const ArrayHead as usize + ARRAY_OBJECTS + i * 8) as *mut usize
    }

    /// The count of an array no slot holds.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Sets the count of an array no slot holds (its owner's).
    #[inline(always)]
    pub(crate) fn set_len(&self, n: usize) {
        self.size.store(n, Ordering::Relaxed)
    }
}

/// `top & mask` of an empty array: the cell before the first.
const EMPTY_OFF: usize = ARRAY_OBJECTS - 8;

/// The shape every array of one kind shares: `BYTES` (a power of two, the alignment too) and
/// the offset of the last cell (`ARRAY_OBJECTS + 8 * capacity <= BYTES`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct ArrayGeo {
    /// `BYTES - 1`.
    pub(crate) mask: usize,
    /// `EMPTY_OFF + 8 * capacity`: `top & mask` of a full array.
    pub(crate) full: usize,
}

impl ArrayGeo {
    /// The shape of arrays of `bytes` bytes (a power of two) holding `capacity` objects.
    pub(crate) fn new(bytes: usize, capacity: usize) -> Self {
        assert!(bytes.is_power_of_two() && ARRAY_OBJECTS + 8 * capacity <= bytes);
        // A top is never 0 inside an array (EMPTY_OFF > 0), so 0 can mean "no array".
        ArrayGeo {
            mask: bytes - 1,
            full: EMPTY_OFF + 8 * capacity,
        }
    }

    /// The top of `arr` holding `len` objects (0 for no array).
    #[inline(always)]
    pub(crate) fn top_of(arr: *mut ArrayHead, len: usize) -> usize {
        if arr.is_null() {
            0
        } else {
            arr as usize + EMPTY_OFF + 8 * len
        }
    }

    /// The array `top` points into and its count (`(null, 0)` for 0).
    #[inline(always)]
    pub(crate) fn split(self, top: usize) -> (*mut ArrayHead, usize) {
        if top == 0 {
            (core::ptr::null_mut(), 0)
        } else {
            (
                (top & !self.mask) as *mut ArrayHead,
                ((top & self.mask) - EMPTY_OFF) / 8,
            )
        }
    }
}

impl ArraySlot {
    /// A slot with no array, running.
    pub(crate) fn new() -> Self {
        ArraySlot {
            top: AtomicUsize::new(0),
        }
    }

    /// The slot's top (stable for the holder of the slot's lock in the locked mode; a snapshot
    /// otherwise).
    #[inline(always)]
    pub(crate) fn top(&self) -> usize {
        self.top.load(Ordering::Acquire)
    }

    /// Stores the top (the caller holds the slot's lock and, in the rseq mode, has taken the
    /// top: [`take_array`]).
    pub(crate) fn set_top_stopped(&self, top: usize) {
        self.top.store(top, Ordering::Release)
    }

    /// The commit of a pop or push (of the model sequences under loom; of the locked mode's
    /// steps otherwise): the store of the new top.
    ///
    /// On the machine the commit is a plain `mov`, and x86 orders every store to the word in
    /// one total order with the stopper's `xchg` ([`take_array`]): if the commit was still in
    /// its CPU's store buffer when the `xchg` read the word, it lands after it and the fence
    /// makes the next `xchg` see it. Loom orders two stores of different threads only as far as
    /// their causality does, so it lets an `xchg` that comes after such a commit (fenced) read
    /// the stopper's own earlier 0 as "newest" — an execution x86 (and C++'s total modification
    /// order) forbid. The model therefore commits with a swap whose result it ignores: a store
    /// placed after the newest value, as the machine's are.
    #[inline(always)]
    fn commit(&self, top: usize) {
        if cfg!(loom) {
            let _ = self.top.swap(top, Ordering::Release);
        } else {
            self.top.store(top, Ordering::Relaxed);
        }
    }

    /// Pop in the locked mode (the caller holds the slot's lock; the model of the sequence
    /// under loom): `Seq::Done` with the object, or `Seq::Empty`.
    #[inline(always)]
    pub(crate) fn pop_locked(&self, geo: ArrayGeo) -> (Seq, usize) {
        let top = self.top.load(Ordering::Relaxed);
        if top & geo.mask <= EMPTY_OFF {
            return (Seq::Empty, 0); // no array (top 0), or an empty one
        }
        // SAFETY: `top` is the last object's cell of the slot's live array, which the caller's lock (or the model sequence) gives it alone.
        let obj = unsafe { crate::sync::load_word(top as *const usize) };
        self.commit(top - 8);
        (Seq::Done, obj)
    }

    /// Push in the locked mode (as [`Self::pop_locked`]): `Done`, `Full` or `DoubleFree`.
    #[inline(always)]
    pub(crate) fn push_locked(&self, geo: ArrayGeo, obj: usize) -> Seq {
        let top = self.top.load(Ordering::Relaxed);
        if top == 0 {
            return Seq::Full;
        }
        let off = top & geo.mask;
        // The double-free check first, so that it also sees an object that filled the array.
        // SAFETY: `top` is the last object's cell of the slot's live array when it is not empty.
        if off != EMPTY_OFF && unsafe { crate::sync::load_word(top as *const usize) } == obj {
            return Seq::DoubleFree;
        }
        if off >= geo.full {
            return Seq::Full;
        }
        // SAFETY: `top + 8` is a free cell of the slot's live array (`off < full`).
        unsafe { crate::sync::store_word((top + 8) as *mut usize, obj) };
        self.commit(top + 8);
        Seq::Done
    }
}

/// The result of [`replace_on_cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// The slot's top is now the new one; the old array belongs to the caller.
    Done,
    /// The slot's top was not the one expected.
    Changed,
    /// The thread is not on the slot's CPU (it migrated, or cannot run sequences).
    Elsewhere,
}

/// An array of [`ArraySlot`]s indexed by CPU id, `STRIDE` bytes apart, and the shape of their
/// arrays. The stride is a constant, so a sequence computes a slot's address with an immediate
/// multiply: no register and no load for it.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct ArraySlots<const STRIDE: usize> {
    base: usize,
    nr: usize,
    pub(crate) geo: ArrayGeo,
}

// SAFETY: an address range of slots whose fields are atomics; sharing it shares only those.
unsafe impl<const STRIDE: usize> Send for ArraySlots<STRIDE> {}
// SAFETY: as above.
unsafe impl<const STRIDE: usize> Sync for ArraySlots<STRIDE> {}

/// Where the sequences find the fields of an [`ArraySlots`] (memory operands, so a fast path
/// needs no register for them; the layout does not depend on `STRIDE`).
const SLOTS_BASE: usize = core::mem::offset_of!(ArraySlots<0>, base);
/// See [`SLOTS_BASE`].
const SLOTS_NR: usize = core::mem::offset_of!(ArraySlots<0>, nr);
/// See [`SLOTS_BASE`].
const SLOTS_MASK: usize =
    core::mem::offset_of!(ArraySlots<0>, geo) + core::mem::offset_of!(ArrayGeo, mask);
/// See [`SLOTS_BASE`].
const SLOTS_FULL: usize =
    core::mem::offset_of!(ArraySlots<0>, geo) + core::mem::offset_of!(ArrayGeo, full);

impl<const STRIDE: usize> ArraySlots<STRIDE> {
    /// The `nr` slots starting at `first`, `STRIDE` bytes apart, whose arrays have shape `geo`.
    ///
    /// # Safety
    /// `first + i * STRIDE` is a live [`ArraySlot`] for every `i < nr` while the value is used.
    pub(crate) unsafe fn new(first: *const ArraySlot, nr: usize, geo: ArrayGeo) -> Self {
        ArraySlots {
            base: first as usize,
            nr,
            geo,
        }
    }

    /// The same shape with no slot: every sequence on it reports `Unavailable` before it
    /// touches anything (a caller's way to send one of its tables' entries out of line).
    pub(crate) fn without_slots(self) -> Self {
        ArraySlots { nr: 0, ..self }
    }

    /// Slot `i` (`i < nr`).
    #[cfg_attr(not(loom), allow(dead_code))]
    #[inline(always)]
    fn get(&self, i: usize) -> &ArraySlot {
        assert!(i < self.nr);
        // SAFETY: `i < nr` and the constructor's contract.
        unsafe { &*((self.base + i * STRIDE) as *const ArraySlot) }
    }
}

// ---------------------------------------------------------------------------------------------
// The sequences (x86_64)
// ---------------------------------------------------------------------------------------------

/// Pops the last object of the array of the CPU the thread runs on (module docs). Returns
/// `(how, slot address, object)`: `Done` with the object; `Empty` (no array, an empty one, or a
/// top a stopper holds) with the slot's address; `Unavailable` (no registration, or a CPU beyond
/// the slots).
///
/// # Safety
/// Every slot's top is 0 or points into a live array of shape `slots.geo`.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_pop<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
) -> (Seq, usize, usize) {
    let (st, slot, obj): (u64, usize, usize);
    // Why this is sound: the sequence reads `cpu_id` from, and arms `rseq_cs` in, this thread's
    // rseq area (registered: else `cpu_id` reads as >= nr and the sequence stops before touching
    // a slot); it reads the slot array's shape through `slots` (a live reference), slot
    // `cpu < nr` (the `ArraySlots` contract) and the last object cell
    // below its top (the caller's contract: a live array), and commits one store to the slot's
    // top. The descriptor is in `__rseq_cs`, its start label follows the store that arms it, the
    // commit is the last instruction of the range, and the abort handler, outside the range, is
    // preceded by the signature and restarts from the arming store.
    // SAFETY: the invariants stated just above hold here.
    unsafe {
        rseq_asm!(
            body: [
                "mov {slot:e}, dword ptr fs:[{off} + 4]",
                "cmp {slot}, qword ptr [{s} + {o_nr}]",
                "jae 25f",
                "imul {slot}, {slot}, {stride}",
                "add {slot}, qword ptr [{s} + {o_base}]",
                "mov {top}, qword ptr [{slot} + {o_top}]",
                "mov {t}, {top}",
                "and {t}, qword ptr [{s} + {o_mask}]",
                "cmp {t}, {empty}",
                "jbe 28f",
                "mov {obj}, qword ptr [{top}]",
                "sub {top}, 8",
                "mov qword ptr [{slot} + {o_top}], {top}",
            ],
            fail: [
                "25:",
                "mov {t:e}, {st_unavail}",
                "jmp 29f",
                "28:",
                "mov {t:e}, {st_empty}",
            ],
            ops: [
                s = in(reg) slots,
                stride = const STRIDE,
                o_nr = const SLOTS_NR,
                o_base = const SLOTS_BASE,
                o_mask = const SLOTS_MASK,
                t = out(reg) st,
                slot = out(reg) slot,
                top = out(reg) _,
                obj = out(reg) obj,
                o_top = const OFF_TOP,
                empty = const EMPTY_OFF,
                st_unavail = const ST_UNAVAILABLE,
                st_empty = const ST_EMPTY,
            ]
        );
    }
    (seq_of(st), slot, obj)
}

/// Pushes `obj` onto the array of the CPU the thread runs on (module docs). Returns `(how, slot
/// address)`: `Done`; `Full` (no array, a full one, or a top a stopper holds), `DoubleFree`
/// (`obj` is the array's last object) with the slot's address; `Unavailable`.
///
/// # Safety
/// As [`array_pop`]; `obj` is the caller's.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_push<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
    obj: usize,
) -> (Seq, usize) {
    let (st, slot): (u64, usize);
    // SAFETY: as in `array_pop`; the one store before the commit is into the free cell at the top, beyond the count (read by no one, redone by a restart).
    unsafe {
        rseq_asm!(
            body: [
                "mov {slot:e}, dword ptr fs:[{off} + 4]",
                "cmp {slot}, qword ptr [{s} + {o_nr}]",
                "jae 25f",
                "imul {slot}, {slot}, {stride}",
                "add {slot}, qword ptr [{s} + {o_base}]",
                "mov {top}, qword ptr [{slot} + {o_top}]",
                "test {top}, {top}",
                "jz 28f",
                "mov {t}, {top}",
                "and {t}, qword ptr [{s} + {o_mask}]",
                "cmp {t}, {empty}",
                "je 4f",
                "cmp {obj}, qword ptr [{top}]",
                "je 27f",
                "4:",
                "cmp {t}, qword ptr [{s} + {o_full}]",
                "jae 28f",
                "mov qword ptr [{top} + 8], {obj}",
                "add {top}, 8",
                "mov qword ptr [{slot} + {o_top}], {top}",
            ],
            fail: [
                "25:",
                "mov {t:e}, {st_unavail}",
                "jmp 29f",
                "27:",
                "mov {t:e}, {st_double}",
                "jmp 29f",
                "28:",
                "mov {t:e}, {st_full}",
            ],
            ops: [
                s = in(reg) slots,
                stride = const STRIDE,
                o_nr = const SLOTS_NR,
                o_base = const SLOTS_BASE,
                o_mask = const SLOTS_MASK,
                o_full = const SLOTS_FULL,
                obj = in(reg) obj,
                t = out(reg) st,
                slot = out(reg) slot,
                top = out(reg) _,
                o_top = const OFF_TOP,
                empty = const EMPTY_OFF,
                st_unavail = const ST_UNAVAILABLE,
                st_double = const ST_DOUBLE_FREE,
                st_full = const ST_FULL,
            ]
        );
    }
    (seq_of(st), slot)
}

/// [`array_pop`] for the inline fast paths, which only need "an object, or go out of line":
/// `(slot address, object)`, or `(_, 0)` when the pop did not commit, whatever the reason (the
/// out-of-line path redoes it with [`array_pop`] and handles each case). The committed path
/// sets no status and takes no jump: its outputs are the answer.
///
/// # Safety
/// As [`array_pop`].
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_pop_fast<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
) -> (usize, usize) {
    let (slot, obj): (usize, usize);
    // SAFETY: as in `array_pop` (the same sequence; only its exits differ).
    unsafe {
        rseq_asm!(
            body: [
                "mov {slot:e}, dword ptr fs:[{off} + 4]",
                "cmp {slot}, qword ptr [{s} + {o_nr}]",
                "jae 25f",
                "imul {slot}, {slot}, {stride}",
                "add {slot}, qword ptr [{s} + {o_base}]",
                "mov {top}, qword ptr [{slot} + {o_top}]",
                "mov {t}, {top}",
                "and {t}, qword ptr [{s} + {o_mask}]",
                "cmp {t}, {empty}",
                "jbe 25f",
                "mov {obj}, qword ptr [{top}]",
                "sub {top}, 8",
                "mov qword ptr [{slot} + {o_top}], {top}",
            ],
            done: [],
            fail: [
                "25:",
                "xor {obj:e}, {obj:e}",
            ],
            ops: [
                s = in(reg) slots,
                stride = const STRIDE,
                o_nr = const SLOTS_NR,
                o_base = const SLOTS_BASE,
                o_mask = const SLOTS_MASK,
                t = out(reg) _,
                slot = out(reg) slot,
                top = out(reg) _,
                obj = out(reg) obj,
                o_top = const OFF_TOP,
                empty = const EMPTY_OFF,
            ]
        );
    }
    (slot, obj)
}

/// [`array_push`] for the inline fast paths (as [`array_pop_fast`]): the slot's address, or 0
/// when the push did not commit, whatever the reason.
///
/// # Safety
/// As [`array_push`].
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_push_fast<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
    obj: usize,
) -> usize {
    let slot: usize;
    // SAFETY: as in `array_push` (the same sequence; only its exits differ).
    unsafe {
        rseq_asm!(
            body: [
                "mov {slot:e}, dword ptr fs:[{off} + 4]",
                "cmp {slot}, qword ptr [{s} + {o_nr}]",
                "jae 25f",
                "imul {slot}, {slot}, {stride}",
                "add {slot}, qword ptr [{s} + {o_base}]",
                "mov {top}, qword ptr [{slot} + {o_top}]",
                "test {top}, {top}",
                "jz 25f",
                "mov {t}, {top}",
                "and {t}, qword ptr [{s} + {o_mask}]",
                "cmp {t}, {empty}",
                "je 4f",
                "cmp {obj}, qword ptr [{top}]",
                "je 25f",
                "4:",
                "cmp {t}, qword ptr [{s} + {o_full}]",
                "jae 25f",
                "mov qword ptr [{top} + 8], {obj}",
                "add {top}, 8",
                "mov qword ptr [{slot} + {o_top}], {top}",
            ],
            done: [],
            fail: [
                "25:",
                "xor {slot:e}, {slot:e}",
            ],
            ops: [
                s = in(reg) slots,
                stride = const STRIDE,
                o_nr = const SLOTS_NR,
                o_base = const SLOTS_BASE,
                o_mask = const SLOTS_MASK,
                o_full = const SLOTS_FULL,
                obj = in(reg) obj,
                t = out(reg) _,
                slot = out(reg) slot,
                top = out(reg) _,
                o_top = const OFF_TOP,
                empty = const EMPTY_OFF,
            ]
        );
    }
    slot
}

/// [`array_pop`] for the inline fast paths (the x86_64 version's contract), built on the
/// status-returning sequence where there is no assembly (other targets, Miri, the loom model).
///
/// # Safety
/// As [`array_pop`].
#[cfg(any(miri, loom, not(target_arch = "x86_64")))]
#[inline(always)]
pub(crate) unsafe fn array_pop_fast<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
) -> (usize, usize) {
    // SAFETY: forwarded contract.
    match unsafe { array_pop(slots) } {
        (Seq::Done, at, obj) => (at, obj),
        _ => (0, 0),
    }
}

/// [`array_push`] for the inline fast paths (as [`array_pop_fast`]).
///
/// # Safety
/// As [`array_push`].
#[cfg(any(miri, loom, not(target_arch = "x86_64")))]
#[inline(always)]
pub(crate) unsafe fn array_push_fast<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
    obj: usize,
) -> usize {
    // SAFETY: forwarded contract.
    match unsafe { array_push(slots, obj) } {
        (Seq::Done, at) => at,
        _ => 0,
    }
}

/// Replaces slot `slot`'s top `old` by `new`, as the commit of a sequence that first checks that
/// the thread runs on CPU `cpu` (module docs). The caller holds the slot's lock.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline]
pub(crate) fn replace_on_cpu(slot: &ArraySlot, cpu: usize, old: usize, new: usize) -> Replace {
    let st: u64;
    // Why this is sound: as in `array_pop` for the sequence; it reads and commits one store to
    // the slot's top, an atomic word of a live slot (the reference).
    // SAFETY: the invariants stated just above hold here.
    unsafe {
        rseq_asm!(
            body: [
                "cmp dword ptr fs:[{off} + 4], {cpu:e}",
                "jne 27f",
                "cmp qword ptr [{slot} + {o_top}], {old}",
                "jne 28f",
                "mov qword ptr [{slot} + {o_top}], {new}",
            ],
            fail: [
                "27:",
                "mov {t:e}, 2",
                "jmp 29f",
                "28:",
                "mov {t:e}, 1",
            ],
            ops: [
                cpu = in(reg) cpu,
                slot = in(reg) slot as *const ArraySlot,
                old = in(reg) old,
                new = in(reg) new,
                t = out(reg) st,
                o_top = const OFF_TOP,
            ]
        );
    }
    match st {
        0 => Replace::Done,
        1 => Replace::Changed,
        _ => Replace::Elsewhere,
    }
}

/// Other targets (and Miri): no sequences; never called, because the mode is `Locked` there.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn array_pop<const STRIDE: usize>(_: &ArraySlots<STRIDE>) -> (Seq, usize, usize) {
    (Seq::Unavailable, 0, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn array_push<const STRIDE: usize>(
    _: &ArraySlots<STRIDE>,
    _: usize,
) -> (Seq, usize) {
    (Seq::Unavailable, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) fn replace_on_cpu(_: &ArraySlot, _: usize, _: usize, _: usize) -> Replace {
    Replace::Elsewhere
}

// ---------------------------------------------------------------------------------------------
// The sequences under loom (the model: `sync::cpu_sequence`, as in `seq.rs`)
// ---------------------------------------------------------------------------------------------

/// The model of [`array_pop`]: the sequence runs under its model CPU's mutex (a stopper's swaps
/// do not take it, so they may fall between the sequence's read of the top and its commit, as
/// on the machine; its fence waits for the sequence). Its loads of the slot are Acquire, as
/// every x86_64 load is: a sequence that sees the top a stopper put back sees its stores.
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn array_pop<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
) -> (Seq, usize, usize) {
    let cpu = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0, 0);
    }
    let s = slots.get(cpu);
    let at = s as *const ArraySlot as usize;
    let _ = s.top.load(Ordering::Acquire);
    let (st, obj) = s.pop_locked(slots.geo);
    (st, at, obj)
}

/// The model of [`array_push`].
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn array_push<const STRIDE: usize>(
    slots: &ArraySlots<STRIDE>,
    obj: usize,
) -> (Seq, usize) {
    let cpu = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0);
    }
    let s = slots.get(cpu);
    let at = s as *const ArraySlot as usize;
    let _ = s.top.load(Ordering::Acquire);
    (s.push_locked(slots.geo, obj), at)
}

/// The model of [`replace_on_cpu`].
#[cfg(loom)]
pub(crate) fn replace_on_cpu(slot: &ArraySlot, cpu: usize, old: usize, new: usize) -> Replace {
    let here = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(here);
    if here != cpu {
        return Replace::Elsewhere;
    }
    let cur = slot.top.load(Ordering::Acquire);
    let same = if cfg!(kmem_mutant = "sheaf_replace_ignores_count") {
        // Planted bug (loom-tests): compares only the array (arrays are at least 512 bytes
        // under loom, and none is at an address below that), not its count.
        (cur ^ old) < 512
    } else {
        cur == old
    };
    if !same {
        return Replace::Changed;
    }
    slot.top.store(new, Ordering::Release);
    Replace::Done
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// An array of `bytes` bytes aligned to them (freed with [`free`]).
    fn array(bytes: usize, capacity: usize) -> *mut ArrayHead {
        let layout = std::alloc::Layout::from_size_align(bytes, bytes).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut ArrayHead;
        // SAFETY: fresh, aligned, large enough for the head.
        unsafe { p.write(ArrayHead::new(capacity)) };
        p
    }

    /// Frees an array made by [`array`].
    fn free(a: *mut ArrayHead, bytes: usize) {
        let layout = std::alloc::Layout::from_size_align(bytes, bytes).unwrap();
        // SAFETY: allocated by `array` with this layout, freed once.
        unsafe { std::alloc::dealloc(a as *mut u8, layout) };
    }

    #[test]
    fn top_names_the_array_and_its_count_up_to_a_full_array() {
        // 1020 cells fill 8 KiB exactly: a full top must still name this array.
        for (bytes, cap) in [(64, 4), (512, 60), (8192, 1020)] {
            let geo = ArrayGeo::new(bytes, cap);
            let a = array(bytes, cap);
            let slot = ArraySlot::new();
            assert_eq!(slot.pop_locked(geo).0, Seq::Empty, "no array");
            assert_eq!(slot.push_locked(geo, 8), Seq::Full, "no array");
            slot.set_top_stopped(ArrayGeo::top_of(a, 0));
            assert_eq!(geo.split(slot.top()), (a, 0));
            assert_eq!(slot.pop_locked(geo).0, Seq::Empty);
            for i in 0..cap {
                assert_eq!(slot.push_locked(geo, 0x1000 + 8 * i), Seq::Done);
                assert_eq!(geo.split(slot.top()), (a, i + 1));
            }
            assert_eq!(
                slot.push_locked(geo, 0x1000 + 8 * (cap - 1)),
                Seq::DoubleFree
            );
            assert_eq!(slot.push_locked(geo, 8), Seq::Full);
            for i in (0..cap).rev() {
                assert_eq!(slot.pop_locked(geo), (Seq::Done, 0x1000 + 8 * i));
            }
            assert_eq!(slot.pop_locked(geo).0, Seq::Empty);
            assert_eq!(geo.split(slot.top()), (a, 0));
            free(a, bytes);
        }
    }
}
