//! Per-CPU arrays of object pointers (tcmalloc's per-CPU cache, Linux 7.0's sheaves): the slot
//! of each CPU points at an array with a count, and a pop or push is one restartable sequence
//! whose commit is the store of the new count.
//!
//! ```text
//!   ArraySlot (in the CPU slot)         ArrayHead (the array, e.g. a sheaf)
//!   +0  main    ───────────────────▶    +0   size       number of objects (the commit word)
//!   +8  stopped                         +8   capacity   fixed when the array is created
//!                                       +16  (the owner's words)
//!                                       +32  objects[0 .. capacity]
//! ```
//!
//! - pop: `cpu = cpu_id; slot = slots[cpu]; stopped? → Stopped; arr = main; null or size == 0 →
//!   Empty; obj = objects[size - 1]`; commit `size = size - 1`.
//! - push: `... arr = main; null → Full; objects[size - 1] == obj → DoubleFree; size ==
//!   capacity → Full; objects[size] = obj`; commit `size = size + 1`. The store into `objects[size]`
//!   before the commit is into a cell no one reads (it is beyond `size`): a restart redoes it,
//!   and if the array leaves the CPU in between, the stray word is beyond its count.
//! - replace: `cpu_id == c? else Elsewhere; main == old? and (old null or old.size == expect)?
//!   else Changed`; commit `main = new`. Used by the slow paths, under the slot's lock, to swap
//!   the array the fast paths see (a full one for an empty one, the spare for the main). The
//!   check of `old.size` inside the sequence is what keeps an object pushed on this CPU after
//!   the slow path looked at the array from being lost with it.
//!
//! Only the holder of the slot's lock changes `main` (by a replace on the slot's CPU, or after
//! stopping the slot and fencing its CPU, see `percpu/mod.rs`); the fast paths change only
//! `size` (and cells beyond it) of the array `main` points at. An array that is not `main` of
//! any slot belongs to whoever took it out, who may use it with plain loads and stores.
//!
//! In the locked commit mode there are no sequences: the slot's lock (taken with `try_lock` by
//! the fast paths) guards `main` and the array it points at, and [`ArraySlot::pop_locked`] /
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
/// Offset of `size` in an [`ArrayHead`].
const OFF_SIZE: usize = 0;
/// Offset of `capacity` in an [`ArrayHead`].
const OFF_CAPACITY: usize = 8;
/// Offset of `main` in an [`ArraySlot`].
const OFF_MAIN: usize = 0;
/// Offset of `stopped` in an [`ArraySlot`].
const OFF_ASTOP: usize = 8;

/// The first 16 bytes of an array: its count and capacity; `objects` start at
/// [`ARRAY_OBJECTS`].
#[repr(C)]
pub(crate) struct ArrayHead {
    /// The number of objects, `objects[0 .. size]`.
    pub(crate) size: AtomicUsize,
    /// The number of object cells.
    pub(crate) capacity: usize,
}

/// The per-CPU part the array sequences read: which array is the CPU's, and the stop word.
#[repr(C)]
pub(crate) struct ArraySlot {
    /// The array the fast paths use, or null (pop: empty; push: full).
    pub(crate) main: AtomicPtr<ArrayHead>,
    /// Non-zero while a stopper owns the slot.
    pub(crate) stopped: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::offset_of!(ArrayHead, size) == OFF_SIZE);
    assert!(core::mem::offset_of!(ArrayHead, capacity) == OFF_CAPACITY);
    assert!(core::mem::offset_of!(ArraySlot, main) == OFF_MAIN);
    assert!(core::mem::offset_of!(ArraySlot, stopped) == OFF_ASTOP);
};

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

    /// The count (for an array the caller owns or whose slot it has stopped).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Pops the last object of an array the caller owns (or guards with the slot lock in the
    /// locked mode).
    ///
    /// # Safety
    /// The caller has exclusive use of the array; its cells below `size` hold objects.
    #[inline(always)]
    pub(crate) unsafe fn pop_owned(&self) -> Option<usize> {
        let n = self.size.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        // SAFETY: cell `n - 1 < capacity` lies inside the array (contract).
        let obj = unsafe { crate::sync::load_free_ptr(self.cell(n - 1)) };
        self.size.store(n - 1, Ordering::Relaxed);
        Some(obj)
    }

    /// Pushes `obj` onto an array the caller owns; `Err(())` when it is full,
    /// `Ok(false)` when `obj` is already its last object (a double free).
    ///
    /// # Safety
    /// As [`Self::pop_owned`].
    #[inline(always)]
    pub(crate) unsafe fn push_owned(&self, obj: usize) -> Result<bool, ()> {
        let n = self.size.load(Ordering::Relaxed);
        // The double-free check first, so that it also sees an object that filled the array.
        // SAFETY: cell `n - 1 < capacity` lies inside the array (contract).
        if n > 0 && unsafe { crate::sync::load_free_ptr(self.cell(n - 1)) } == obj {
            return Ok(false);
        }
        if n >= self.capacity {
            return Err(());
        }
        // SAFETY: cell `n < capacity` lies inside the array (contract).
        unsafe { crate::sync::store_free_ptr(self.cell(n), obj) };
        self.size.store(n + 1, Ordering::Relaxed);
        Ok(true)
    }
}

impl ArraySlot {
    /// A slot with no array, running.
    pub(crate) fn new() -> Self {
        ArraySlot {
            main: AtomicPtr::new(core::ptr::null_mut()),
            stopped: AtomicU64::new(0),
        }
    }

    /// Pop in the locked mode (the caller holds the slot's lock): `Seq::Done` with the object,
    /// or `Seq::Empty`.
    #[inline(always)]
    pub(crate) fn pop_locked(&self) -> (Seq, usize) {
        let arr = self.main.load(Ordering::Relaxed);
        if arr.is_null() {
            return (Seq::Empty, 0);
        }
        // SAFETY: the slot lock gives the holder exclusive use of `main`'s array in the locked
        // mode (module docs); arrays live as long as their cache.
        match unsafe { (*arr).pop_owned() } {
            Some(obj) => (Seq::Done, obj),
            None => (Seq::Empty, 0),
        }
    }

    /// Push in the locked mode (the caller holds the slot's lock): `Done`, `Full` or
    /// `DoubleFree`.
    #[inline(always)]
    pub(crate) fn push_locked(&self, obj: usize) -> Seq {
        let arr = self.main.load(Ordering::Relaxed);
        if arr.is_null() {
            return Seq::Full;
        }
        // SAFETY: as in `pop_locked`.
        match unsafe { (*arr).push_owned(obj) } {
            Ok(true) => Seq::Done,
            Ok(false) => Seq::DoubleFree,
            Err(()) => Seq::Full,
        }
    }
}

/// The result of [`replace_on_cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// `main` is now the new array; the old one belongs to the caller.
    Done,
    /// `main` was not `old`, or `old`'s count was not the one expected.
    Changed,
    /// The thread is not on the slot's CPU (it migrated, or cannot run sequences).
    Elsewhere,
}

/// An array of [`ArraySlot`]s indexed by CPU id, `stride` bytes apart.
#[derive(Clone, Copy)]
pub(crate) struct ArraySlots {
    base: usize,
    stride: usize,
    nr: usize,
}

// SAFETY: an address range of slots whose fields are atomics; sharing it shares only those.
unsafe impl Send for ArraySlots {}
// SAFETY: as above.
unsafe impl Sync for ArraySlots {}

impl ArraySlots {
    /// The `nr` slots starting at `first`, `stride` bytes apart.
    ///
    /// # Safety
    /// `first + i * stride` is a live [`ArraySlot`] for every `i < nr` while the value is used.
    pub(crate) unsafe fn new(first: *const ArraySlot, stride: usize, nr: usize) -> Self {
        ArraySlots {
            base: first as usize,
            stride,
            nr,
        }
    }

    /// Slot `i` (`i < nr`).
    #[cfg_attr(not(loom), allow(dead_code))]
    #[inline(always)]
    fn get(&self, i: usize) -> &ArraySlot {
        assert!(i < self.nr);
        // SAFETY: `i < nr` and the constructor's contract.
        unsafe { &*((self.base + i * self.stride) as *const ArraySlot) }
    }
}

// ---------------------------------------------------------------------------------------------
// The sequences (x86_64)
// ---------------------------------------------------------------------------------------------

/// Pops the last object of the array of the CPU the thread runs on (module docs). Returns
/// `(how, slot address, object)`: `Done` with the object; `Empty` (no array, or an empty one),
/// `Stopped` with the slot's address; `Unavailable` (no registration, or a CPU beyond the slots).
///
/// # Safety
/// Every array a slot's `main` points at is live, with `capacity` cells after its head.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_pop(slots: ArraySlots) -> (Seq, usize, usize) {
    let (st, slot, obj): (u64, usize, usize);
    // Why this is sound: the sequence reads `cpu_id` from, and arms `rseq_cs` in, this thread's
    // rseq area (registered: else `cpu_id` reads as >= nr and the sequence stops before touching
    // a slot); it reads slot `cpu < nr` (the `ArraySlots` contract) and the live array `main`
    // points at (the caller's contract), and commits one store to that array's `size`. The
    // descriptor is in `__rseq_cs`, its start label follows the store that arms it, the commit is
    // the last instruction of the range, and the abort handler, outside the range, is preceded by
    // the signature and restarts from the arming store.
    // SAFETY: the invariants stated just above hold here.
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
            "mov {arr}, qword ptr [{slot} + {o_main}]",
            "test {arr}, {arr}",
            "jz 28f",
            "mov {n}, qword ptr [{arr}]",
            "test {n}, {n}",
            "jz 28f",
            "mov {obj}, qword ptr [{arr} + {n} * 8 + {om8}]",
            "sub {n}, 1",
            "mov qword ptr [{arr}], {n}",
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
            t = out(reg) st,
            slot = out(reg) slot,
            arr = out(reg) _,
            n = out(reg) _,
            obj = out(reg) obj,
            cs = const crate::cpu::rseq::RSEQ_CS_OFFSET,
            o_stop = const OFF_ASTOP,
            o_main = const OFF_MAIN,
            om8 = const ARRAY_OBJECTS - 8,
            sig = const RSEQ_SIG,
            st_unavail = const ST_UNAVAILABLE,
            st_stopped = const ST_STOPPED,
            st_empty = const ST_EMPTY,
            options(nostack),
        );
    }
    (seq_of(st), slot, obj)
}

/// Pushes `obj` onto the array of the CPU the thread runs on (module docs). Returns `(how, slot
/// address)`: `Done`; `Full` (no array, or a full one), `Stopped`, `DoubleFree` (`obj` is the
/// array's last object) with the slot's address; `Unavailable`.
///
/// # Safety
/// As [`array_pop`]; `obj` is the caller's.
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn array_push(slots: ArraySlots, obj: usize) -> (Seq, usize) {
    let (st, slot): (u64, usize);
    // SAFETY: as in `array_pop`; the one store before the commit is into cell `size` of the array, beyond its count (read by no one, redone by a restart).
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
            "mov {arr}, qword ptr [{slot} + {o_main}]",
            "test {arr}, {arr}",
            "jz 28f",
            "mov {n}, qword ptr [{arr}]",
            "test {n}, {n}",
            "jz 4f",
            "cmp {obj}, qword ptr [{arr} + {n} * 8 + {om8}]",
            "je 27f",
            "4:",
            "cmp {n}, qword ptr [{arr} + {o_cap}]",
            "jae 28f",
            "mov qword ptr [{arr} + {n} * 8 + {o0}], {obj}",
            "add {n}, 1",
            "mov qword ptr [{arr}], {n}",
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
            "mov {t:e}, {st_double}",
            "jmp 29f",
            "28:",
            "mov {t:e}, {st_full}",
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
            obj = in(reg) obj,
            t = out(reg) st,
            slot = out(reg) slot,
            arr = out(reg) _,
            n = out(reg) _,
            cs = const crate::cpu::rseq::RSEQ_CS_OFFSET,
            o_stop = const OFF_ASTOP,
            o_main = const OFF_MAIN,
            o_cap = const OFF_CAPACITY,
            om8 = const ARRAY_OBJECTS - 8,
            o0 = const ARRAY_OBJECTS,
            sig = const RSEQ_SIG,
            st_unavail = const ST_UNAVAILABLE,
            st_stopped = const ST_STOPPED,
            st_double = const ST_DOUBLE_FREE,
            st_full = const ST_FULL,
            options(nostack),
        );
    }
    (seq_of(st), slot)
}

/// Replaces slot `slot`'s array `old` (whose count must be `expect`; any if `old` is null) by
/// `new`, as the commit of a sequence that first checks the thread runs on CPU `cpu` (module
/// docs). The caller holds the slot's lock.
///
/// # Safety
/// `old`, when not null, is a live array; `new` is a live array the caller owns (it becomes the
/// slot's).
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline]
pub(crate) unsafe fn replace_on_cpu(
    slot: &ArraySlot,
    cpu: usize,
    old: *mut ArrayHead,
    expect: usize,
    new: *mut ArrayHead,
) -> Replace {
    let st: u64;
    // SAFETY: as in `array_pop` for the sequence; it reads the slot and, when not null, `old`'s
    // count (live: contract), and commits one store to the slot's `main`.
    unsafe {
        core::arch::asm!(
            "2:",
            "lea {t}, [rip + 9f]",
            "mov qword ptr fs:[{off} + {cs}], {t}",
            "3:",
            "cmp dword ptr fs:[{off} + 4], {cpu:e}",
            "jne 27f",
            "cmp qword ptr [{slot} + {o_main}], {old}",
            "jne 28f",
            "test {old}, {old}",
            "jz 4f",
            "cmp qword ptr [{old}], {expect}",
            "jne 28f",
            "4:",
            "mov qword ptr [{slot} + {o_main}], {new}",
            "5:",
            "xor {t:e}, {t:e}",
            "jmp 29f",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {sig}",
            "6:",
            "jmp 2b",
            "27:",
            "mov {t:e}, 2",
            "jmp 29f",
            "28:",
            "mov {t:e}, 1",
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
            cpu = in(reg) cpu,
            slot = in(reg) slot as *const ArraySlot,
            old = in(reg) old,
            expect = in(reg) expect,
            new = in(reg) new,
            t = out(reg) st,
            cs = const crate::cpu::rseq::RSEQ_CS_OFFSET,
            o_main = const OFF_MAIN,
            sig = const RSEQ_SIG,
            options(nostack),
        );
    }
    match st {
        0 => Replace::Done,
        1 => Replace::Changed,
        _ => Replace::Elsewhere,
    }
}

/// The thread's rseq area offset (see `seq.rs`).
#[cfg(all(not(any(miri, loom)), target_arch = "x86_64"))]
#[inline(always)]
fn area_offset() -> isize {
    crate::cpu::rseq::SEQ_OFFSET.load(GlobalOrdering::Relaxed) as isize
}

/// Other targets (and Miri): no sequences; never called, because the mode is `Locked` there.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn array_pop(_: ArraySlots) -> (Seq, usize, usize) {
    (Seq::Unavailable, 0, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn array_push(_: ArraySlots, _: usize) -> (Seq, usize) {
    (Seq::Unavailable, 0)
}

/// See the x86_64 version.
#[cfg(all(not(loom), any(miri, not(target_arch = "x86_64"))))]
pub(crate) unsafe fn replace_on_cpu(
    _: &ArraySlot,
    _: usize,
    _: *mut ArrayHead,
    _: usize,
    _: *mut ArrayHead,
) -> Replace {
    Replace::Elsewhere
}

// ---------------------------------------------------------------------------------------------
// The sequences under loom (the model: `sync::cpu_sequence`, as in `seq.rs`)
// ---------------------------------------------------------------------------------------------

/// The model of [`array_pop`]: the sequence runs under its model CPU's mutex. Its loads of the
/// slot are Acquire, as every x86_64 load is: a sequence that sees a stopper's `stopped = 0`
/// sees the `main` the stopper left.
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn array_pop(slots: ArraySlots) -> (Seq, usize, usize) {
    let cpu = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0, 0);
    }
    let s = slots.get(cpu);
    let at = s as *const ArraySlot as usize;
    if !cfg!(kmem_mutant = "rseq_ignores_stop") && s.stopped.load(Ordering::Acquire) != 0 {
        return (Seq::Stopped, at, 0);
    }
    let arr = s.main.load(Ordering::Acquire);
    if arr.is_null() {
        return (Seq::Empty, at, 0);
    }
    // SAFETY: inside the model sequence the array is this CPU's alone (the caller's contract
    // keeps it live).
    match unsafe { (*arr).pop_owned() } {
        Some(obj) => (Seq::Done, at, obj),
        None => (Seq::Empty, at, 0),
    }
}

/// The model of [`array_push`].
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn array_push(slots: ArraySlots, obj: usize) -> (Seq, usize) {
    let cpu = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(cpu);
    if cpu >= slots.nr {
        return (Seq::Unavailable, 0);
    }
    let s = slots.get(cpu);
    let at = s as *const ArraySlot as usize;
    if !cfg!(kmem_mutant = "rseq_ignores_stop") && s.stopped.load(Ordering::Acquire) != 0 {
        return (Seq::Stopped, at);
    }
    let arr = s.main.load(Ordering::Acquire);
    if arr.is_null() {
        return (Seq::Full, at);
    }
    // SAFETY: as in `array_pop`.
    match unsafe { (*arr).push_owned(obj) } {
        Ok(true) => (Seq::Done, at),
        Ok(false) => (Seq::DoubleFree, at),
        Err(()) => (Seq::Full, at),
    }
}

/// The model of [`replace_on_cpu`].
///
/// # Safety
/// As the x86_64 version.
#[cfg(loom)]
pub(crate) unsafe fn replace_on_cpu(
    slot: &ArraySlot,
    cpu: usize,
    old: *mut ArrayHead,
    expect: usize,
    new: *mut ArrayHead,
) -> Replace {
    let here = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(here);
    if here != cpu {
        return Replace::Elsewhere;
    }
    if slot.main.load(Ordering::Relaxed) != old {
        return Replace::Changed;
    }
    // SAFETY: `old` is live (contract).
    if !cfg!(kmem_mutant = "sheaf_replace_ignores_count")
        && !old.is_null()
        && unsafe { (*old).size.load(Ordering::Relaxed) } != expect
    {
        return Replace::Changed;
    }
    slot.main.store(new, Ordering::Relaxed);
    Replace::Done
}
