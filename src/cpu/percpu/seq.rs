//! The restartable sequences themselves: pop, push and the on-CPU CAS, in x86_64 inline
//! assembly with their `__rseq_cs` descriptors and signed abort handlers; stand-ins for other
//! targets and Miri (never called: the mode is locked there); and their loom model.

#![cfg_attr(
    any(miri, loom, not(target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

use super::*;

// ---------------------------------------------------------------------------------------------
// The sequences (x86_64)
// ---------------------------------------------------------------------------------------------

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
    // Why this is sound: the sequence reads `cpu_id` from and writes `rseq_cs` to this thread's
    // rseq area (registered: else `cpu_id` reads as >= nr and the sequence stops before touching
    // a slot); it touches slot `cpu < nr` only (the `Slots` contract) and the object's free
    // pointer (the caller's contract). The descriptor is in `__rseq_cs` (32-byte aligned, version
    // 0, flags 0), its start label directly follows the store that arms it, the commit is the
    // last instruction of the range, and the abort handler is outside the range and preceded by
    // the signature (`ud1` encoding, as librseq, so disassemblers stay in sync). The abort
    // handler re-arms the descriptor (the kernel clears `rseq_cs` on abort) and restarts.
    // SAFETY: the invariants stated just above hold here.
    unsafe {
        // The sequence, with the free pointer's decoding spliced in when `freelist-hardened`
        // is on (and nothing, not even a register, without it).
        macro_rules! pop_asm {
            ([$($decode:literal),*] [$($ops:tt)*]) => {
        rseq_asm!(
            body: [
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
                $($decode,)*
                "mov qword ptr [{slot}], {t}",
            ],
            fail: [
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
            ],
            ops: [
                nr = in(reg) slots.nr,
                stride = in(reg) slots.stride,
                base = in(reg) slots.base,
                expect = in(reg) expect_slab,
                foff = in(reg) free_off,
                $($ops)*
                t = out(reg) st,
                slot = out(reg) slot,
                obj = out(reg) obj,
                o_stop = const OFF_STOPPED,
                o_slab = const OFF_SLAB,
                st_unavail = const ST_UNAVAILABLE,
                st_stopped = const ST_STOPPED,
                st_mismatch = const ST_MISMATCH,
                st_empty = const ST_EMPTY,
            ]
        )
            };
        }
        #[cfg(not(feature = "freelist-hardened"))]
        pop_asm!([] []);
        // Decode `next ^ random ^ swab(obj + foff)` in a scratch register of its own (an
        // input may not be clobbered: an aborted sequence restarts from the top with them).
        #[cfg(feature = "freelist-hardened")]
        pop_asm!(
            [
                "lea {x}, [{obj} + {foff}]",
                "bswap {x}",
                "xor {t}, {x}",
                "xor {t}, {rnd}"
            ]
            [
                rnd = in(reg) crate::sync::freelist_random(),
                x = out(reg) _,
            ]
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
    // SAFETY: as in `pop`; the one store before the commit is into `tail`, which the caller owns (contract).
    unsafe {
        // As in `pop`: the encoding spliced in only with `freelist-hardened`.
        macro_rules! push_asm {
            ([$($encode:literal),*] [$($ops:tt)*]) => {
        rseq_asm!(
            body: [
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
                $($encode,)*
                "mov qword ptr [{tail} + {foff}], {t}",
                "mov qword ptr [{slot}], {head}",
            ],
            fail: [
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
            ],
            ops: [
                nr = in(reg) slots.nr,
                stride = in(reg) slots.stride,
                base = in(reg) slots.base,
                expect = in(reg) expect_slab,
                head = in(reg) head,
                tail = in(reg) tail,
                foff = in(reg) free_off,
                $($ops)*
                t = out(reg) st,
                slot = out(reg) slot,
                o_stop = const OFF_STOPPED,
                o_slab = const OFF_SLAB,
                st_unavail = const ST_UNAVAILABLE,
                st_stopped = const ST_STOPPED,
                st_mismatch = const ST_MISMATCH,
                st_double = const ST_DOUBLE_FREE,
            ]
        )
            };
        }
        #[cfg(not(feature = "freelist-hardened"))]
        push_asm!([] []);
        // Store `old ^ key`, `key = random ^ swab(tail + foff)` computed before the sequence
        // (after the double-free test, which compares the plain head).
        #[cfg(feature = "freelist-hardened")]
        push_asm!(
            ["xor {t}, {key}"]
            [key = in(reg) crate::sync::freelist_ptr(0, tail + free_off),]
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
    // Why this is sound: as in `pop` for the sequence. The CAS is `lock cmpxchg16b` on the slot's
    // 16-byte aligned double word (the `DWord` backend's own instruction; `DWord::is_lock_free`
    // was checked before any slot existed). Every register is named explicitly: rbx cannot be an
    // operand, so the new low half is swapped into it around the sequence and restored, and no
    // other operand can have been given rbx. The abort handler jumps back after the swap, so a
    // restart still has the new low half in rbx.
    // SAFETY: the invariants stated just above hold here.
    unsafe {
        core::arch::asm!(
            "xchg r11, rbx",
            "mov r8, qword ptr [rip + {seq_off}]",
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
            out("r8") _,
            in("r9") cpu,
            inout("r11") new.0 as u64 => _,
            in("rcx") new.1,
            inout("rax") old.0 as u64 => lo,
            inout("rdx") old.1 => hi,
            in("rsi") slot.freelist_tid.as_ptr(),
            out("r10") st,
            cs = const crate::cpu::rseq::RSEQ_CS_OFFSET,
            sig = const RSEQ_SIG,
            seq_off = sym crate::cpu::rseq::SEQ_OFFSET,
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
    let cpu = crate::cpu::current_cpu();
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
    let cpu = crate::cpu::current_cpu();
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
    let here = crate::cpu::current_cpu();
    let _seq = crate::sync::cpu_sequence(here);
    if here != cpu && !cfg!(kmem_mutant = "rseq_cpu_not_rechecked") {
        return OnCpu::Elsewhere;
    }
    match slot.freelist_tid.compare_exchange(old, new) {
        Ok(()) => OnCpu::Swapped,
        Err(seen) => OnCpu::Failed(seen),
    }
}
