//! The 16-byte `{word, tag}` double word, with its backend chosen once for the whole build.
//!
//! | build | backend | CAS | 16-byte load |
//! |---|---|---|---|
//! | x86_64 (default) | [`asm`](self) below: kmem's own inline assembly | `lock cmpxchg16b`, inlined | `vmovdqa` when the CPU has AVX, else `lock cmpxchg16b` with an equal value |
//! | aarch64 | portable-atomic's `AtomicU128` | `casp` (LSE) or `ldxp`/`stxp` | `ldp`/`ldxp` |
//! | `cfg(miri)`, `cfg(kmem_portable_dword)` (TSAN) | portable-atomic's `AtomicU128` | compiler intrinsics the tool can see | the same |
//! | `cfg(loom)` | a loom `Mutex<(usize, u64)>` | modelled | modelled |
//!
//! # Why kmem carries its own `cmpxchg16b`
//!
//! portable-atomic inlines `lock cmpxchg16b` only when the crate is compiled with
//! `-C target-feature=+cmpxchg16b`, which a dependent crate never sets (a library's
//! `.cargo/config.toml` does not travel with it); without the flag and without portable-atomic's
//! `fallback` feature, `AtomicU128` does not exist on x86_64 at all, and with `fallback` (turned on
//! by any other crate in the graph, since features unify) it becomes a run-time-dispatched call
//! with a lock behind it on old CPUs. Neither may decide what kmem's fast path runs. So on x86_64
//! the instruction is written here, inlined into every caller whatever the flags, and its
//! presence is checked once by `cpuid` when a `Kmem` is built ([`DWord::is_lock_free`] →
//! `KmemError::NoDoubleWordCas`). Every x86_64 CPU since 2008 has it (it is in the x86-64-v2
//! baseline); no code path executes it before that check has passed.
//!
//! Tools that must *see* the atomic (Miri interprets, ThreadSanitizer instruments) get
//! portable-atomic instead, which uses compiler intrinsics under them: Miri automatically,
//! TSAN through `--cfg kmem_portable_dword` (set by `scripts/tsan.sh`). That backend needs the
//! target feature on x86_64 and says so with a `compile_error!` if it is missing.
//!
//! # The one mixed-size access
//!
//! [`DWord::load_tag_then_word`] reads the two halves with 8-byte atomic loads (the kernel's
//! `READ_ONCE(c->tid)` then `READ_ONCE(c->freelist)`); its docs give the argument.

#[cfg(all(
    not(loom),
    not(miri),
    not(kmem_portable_dword),
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
compile_error!(
    "kmem supports x86_64 (cmpxchg16b) and aarch64 (casp / ldxp+stxp): this target has no \
     lock-free 16-byte compare-and-swap kmem knows how to use"
);

#[cfg(all(
    not(loom),
    any(miri, kmem_portable_dword),
    target_arch = "x86_64",
    not(target_feature = "cmpxchg16b")
))]
compile_error!(
    "kmem's portable double-word backend (Miri, --cfg kmem_portable_dword) needs \
     `-C target-feature=+cmpxchg16b` on x86_64 (scripts/miri.sh and scripts/tsan.sh set it)"
);

#[cfg(all(not(loom), not(miri), not(kmem_portable_dword), target_arch = "x86_64"))]
mod imp {
    //! x86_64: `lock cmpxchg16b` and `vmovdqa` in inline assembly.

    use core::arch::asm;
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// The double word: 16 bytes, 16-byte aligned (`cmpxchg16b` faults otherwise).
    #[repr(C, align(16))]
    pub(crate) struct Raw(UnsafeCell<[u64; 2]>);

    // SAFETY: every access to the cell is a single-copy-atomic instruction (`lock cmpxchg16b`,
    // `vmovdqa` on AVX CPUs, or an aligned 8-byte atomic load), so sharing it is race-free.
    unsafe impl Sync for Raw {}

    /// Whether this CPU's AVX 16-byte loads may be used: 0 unknown, 1 no, 2 yes. Set by
    /// [`supported`], which runs before any `Kmem` exists; "unknown" takes the always-correct
    /// `cmpxchg16b` route.
    static AVX: AtomicU8 = AtomicU8::new(0);

    /// Whether `cmpxchg16b` exists (CPUID.01H:ECX.CX16); also records AVX for [`load`].
    pub(crate) fn supported() -> bool {
        // Intel SDM vol. 3A §9.1.1 and AMD APM vol. 2 §7.3.2: 16-byte aligned SSE/AVX loads and
        // stores are single-copy atomic on processors that enumerate AVX.
        let avx = std::arch::is_x86_feature_detected!("avx");
        AVX.store(if avx { 2 } else { 1 }, Ordering::Relaxed);
        std::arch::is_x86_feature_detected!("cmpxchg16b")
    }

    impl Raw {
        pub(crate) const fn new(lo: u64, hi: u64) -> Self {
            Raw(UnsafeCell::new([lo, hi]))
        }

        #[inline(always)]
        pub(crate) fn as_ptr(&self) -> *mut [u64; 2] {
            self.0.get()
        }

        /// `lock cmpxchg16b`: if `*self == (old_lo, old_hi)` store `(new_lo, new_hi)`.
        /// Returns whether it stored, and the value found (`old` on success). Full barrier.
        #[inline(always)]
        pub(crate) fn cas(&self, old: (u64, u64), new: (u64, u64)) -> (bool, (u64, u64)) {
            let (prev_lo, prev_hi): (u64, u64);
            let ok: u8;
            // Why this is sound: `self` is 16-byte aligned, live and writable (it is only ever
            // shared, never in read-only memory); `supported()` returned true before any `Kmem`
            // existed, and only a `Kmem` reaches a `DWord`. rbx cannot be named as an operand
            // (LLVM may use it), so the new low half is swapped into it around the instruction
            // and restored; the address goes in rsi and the result in cl by name, because a `reg`
            // operand may itself be given rbx (or bl), which the swap would overwrite.
            // SAFETY: the invariants stated just above hold here.
            unsafe {
                asm!(
                    "xchg {rbx_tmp}, rbx",
                    "lock cmpxchg16b xmmword ptr [rsi]",
                    "sete cl",
                    "mov rbx, {rbx_tmp}",
                    rbx_tmp = inout(reg) new.0 => _,
                    in("rcx") new.1,
                    inout("rax") old.0 => prev_lo,
                    inout("rdx") old.1 => prev_hi,
                    in("rsi") self.as_ptr(),
                    lateout("cl") ok,
                    options(nostack),
                );
            }
            (ok != 0, (prev_lo, prev_hi))
        }

        /// A single-copy-atomic 16-byte load (Acquire: x86 loads are never reordered with
        /// later loads or stores).
        #[inline(always)]
        pub(crate) fn load(&self) -> (u64, u64) {
            if AVX.load(Ordering::Relaxed) == 2 {
                let (lo, hi): (u64, u64);
                // SAFETY: aligned and live; the CPU enumerates AVX (checked by `supported`), so the aligned 16-byte load is single-copy atomic.
                unsafe {
                    asm!(
                        "vmovdqa {x}, xmmword ptr [{p}]",
                        "vmovq {lo}, {x}",
                        "vpextrq {hi}, {x}, 1",
                        p = in(reg) self.as_ptr(),
                        x = out(xmm_reg) _,
                        lo = out(reg) lo,
                        hi = out(reg) hi,
                        options(nostack, readonly, preserves_flags),
                    );
                }
                (lo, hi)
            } else {
                // Compare with an arbitrary value and "replace" it by itself: either way the
                // instruction returns the current contents atomically.
                self.cas((0, 0), (0, 0)).1
            }
        }

        /// A 16-byte store (Release).
        #[inline]
        pub(crate) fn store(&self, lo: u64, hi: u64) {
            let mut cur = self.load();
            loop {
                match self.cas(cur, (lo, hi)) {
                    (true, _) => return,
                    (false, found) => cur = found,
                }
            }
        }

        /// The two halves as 8-byte atomics (see `DWord::load_tag_then_word`).
        #[inline(always)]
        pub(crate) fn halves(&self) -> *const core::sync::atomic::AtomicU64 {
            self.as_ptr().cast()
        }
    }
}

#[cfg(all(not(loom), any(miri, kmem_portable_dword, target_arch = "aarch64")))]
mod imp {
    //! portable-atomic's `AtomicU128` (aarch64; Miri and TSAN on x86_64).

    use portable_atomic::{AtomicU128, Ordering};

    #[repr(transparent)]
    pub(crate) struct Raw(AtomicU128);

    pub(crate) fn supported() -> bool {
        AtomicU128::is_lock_free()
    }

    #[inline(always)]
    const fn pack(lo: u64, hi: u64) -> u128 {
        (lo as u128) | ((hi as u128) << 64)
    }

    #[inline(always)]
    const fn unpack(v: u128) -> (u64, u64) {
        (v as u64, (v >> 64) as u64)
    }

    impl Raw {
        pub(crate) const fn new(lo: u64, hi: u64) -> Self {
            Raw(AtomicU128::new(pack(lo, hi)))
        }

        #[inline(always)]
        pub(crate) fn cas(&self, old: (u64, u64), new: (u64, u64)) -> (bool, (u64, u64)) {
            match self.0.compare_exchange(
                pack(old.0, old.1),
                pack(new.0, new.1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(v) => (true, unpack(v)),
                Err(v) => (false, unpack(v)),
            }
        }

        #[inline(always)]
        pub(crate) fn load(&self) -> (u64, u64) {
            unpack(self.0.load(Ordering::Acquire))
        }

        #[inline]
        pub(crate) fn store(&self, lo: u64, hi: u64) {
            self.0.store(pack(lo, hi), Ordering::Release)
        }

        #[inline(always)]
        pub(crate) fn halves(&self) -> *const core::sync::atomic::AtomicU64 {
            self.0.as_ptr().cast()
        }

        #[inline(always)]
        pub(crate) fn as_ptr(&self) -> *mut [u64; 2] {
            self.0.as_ptr().cast()
        }
    }
}

/// A `{word, tag}` pair swapped as one 16-byte unit.
///
/// `word` is a pointer-sized value (a freelist head); `tag` is 64 bits (a `tid` or packed
/// slab counters). Every operation is lock-free and single-copy atomic on the whole pair.
#[cfg(not(loom))]
pub(crate) struct DWord(imp::Raw);

/// A `{word, tag}` pair swapped as one 16-byte unit (loom model: a mutex; see `sync`'s docs for
/// what it does not check).
#[cfg(loom)]
pub(crate) struct DWord(loom::sync::Mutex<(usize, u64)>);

#[cfg(not(loom))]
impl DWord {
    /// A new double word.
    pub(crate) const fn new(word: usize, tag: u64) -> Self {
        DWord(imp::Raw::new(word as u64, tag))
    }

    /// Whether this CPU has the lock-free 16-byte CAS. [`crate::Kmem`]'s builder checks it
    /// before anything touches a double word (`KmemError::NoDoubleWordCas` otherwise).
    pub(crate) fn is_lock_free() -> bool {
        imp::supported()
    }

    /// Loads both halves in one single-copy-atomic read (Acquire).
    #[inline(always)]
    pub(crate) fn load(&self) -> (usize, u64) {
        let (lo, hi) = self.0.load();
        (lo as usize, hi)
    }

    /// The fast paths' read of `{word, tag}`: the tag, then the word, as two 8-byte Acquire
    /// loads — the kernel's `READ_ONCE(c->tid)` then `READ_ONCE(c->freelist)`.
    ///
    /// The pair may be torn (the word newer than the tag); callers use it only as the expected
    /// value of [`DWord::compare_exchange`], which then fails: the tag is read first and every
    /// change of the word changes the tag, so a CAS that finds the tag unchanged also finds the
    /// word read after it. (A word read this way is still a value the word really held, so the
    /// alloc fast path's speculative read through it stays inside mapped slab memory.)
    ///
    /// Why not [`DWord::load`]: a 16-byte vector load right after a LOCK CMPXCHG16B to the same
    /// line costs ~2.5 ns more than two 8-byte loads on the reference machine (AMD Zen 3,
    /// `benches/fastpath.rs`: alloc+free 14.9 ns with 16-byte loads, 12.8 ns with these).
    ///
    /// **The one mixed-size access in kmem.** These 8-byte atomic loads read halves of a
    /// 16-byte atomic that other threads CAS. x86_64 defines it (each half is naturally aligned
    /// and single-copy atomic; loads are not reordered with older loads, and a LOCKed write is
    /// seen whole), the Rust abstract machine does not: so it is used on x86_64 only, and Miri,
    /// loom and other targets get the 16-byte load, where the same argument is checked.
    #[inline(always)]
    pub(crate) fn load_tag_then_word(&self) -> (usize, u64) {
        #[cfg(all(not(miri), target_arch = "x86_64"))]
        {
            let halves = self.0.halves();
            // SAFETY: the double word is 16-byte aligned and lives as long as `self`; each half is an aligned u64 only ever accessed atomically (the mixed-size note above).
            let (tag, word) = unsafe {
                let tag = (*halves.add(1)).load(core::sync::atomic::Ordering::Acquire);
                let word = (*halves).load(core::sync::atomic::Ordering::Acquire);
                (tag, word)
            };
            (word as usize, tag)
        }
        #[cfg(not(all(not(miri), target_arch = "x86_64")))]
        {
            self.load()
        }
    }

    /// Replaces `current` with `new` if both halves still equal `current` (AcqRel).
    /// On failure returns the value found.
    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        current: (usize, u64),
        new: (usize, u64),
    ) -> Result<(), (usize, u64)> {
        match self
            .0
            .cas((current.0 as u64, current.1), (new.0 as u64, new.1))
        {
            (true, _) => Ok(()),
            (false, (lo, hi)) => Err((lo as usize, hi)),
        }
    }

    /// Stores both halves (Release). Only for states no other thread can race with.
    #[inline]
    pub(crate) fn store(&self, word: usize, tag: u64) {
        self.0.store(word as u64, tag)
    }

    /// The address of the 16 bytes (`word` at +0, `tag` at +8), for the restartable sequences
    /// of `cpu/percpu/`, which read and write the word half with plain `mov`s on the CPU
    /// that owns the slot (see that file for why this is race-free).
    #[inline(always)]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr().cast()
    }
}

#[cfg(loom)]
impl DWord {
    /// A new double word.
    pub(crate) fn new(word: usize, tag: u64) -> Self {
        DWord(loom::sync::Mutex::new((word, tag)))
    }

    /// Always true: the model has no hardware to lack.
    pub(crate) fn is_lock_free() -> bool {
        true
    }

    /// Loads both halves.
    pub(crate) fn load(&self) -> (usize, u64) {
        *self.0.lock().unwrap()
    }

    /// The model cannot tear a pair: the same as [`DWord::load`].
    pub(crate) fn load_tag_then_word(&self) -> (usize, u64) {
        self.load()
    }

    /// Replaces `current` with `new` if both halves still equal `current`.
    pub(crate) fn compare_exchange(
        &self,
        current: (usize, u64),
        new: (usize, u64),
    ) -> Result<(), (usize, u64)> {
        let mut g = self.0.lock().unwrap();
        if *g == current {
            *g = new;
            Ok(())
        } else {
            Err(*g)
        }
    }

    /// Stores both halves.
    pub(crate) fn store(&self, word: usize, tag: u64) {
        *self.0.lock().unwrap() = (word, tag);
    }

    /// The model of a restartable sequence's commit: a plain store of the word half only (the
    /// tag is left as it is). Atomic with respect to other accesses of this double word, like
    /// an aligned 8-byte `mov`; what makes it safe is the sequence around it, which loom models
    /// with the CPU's mutex (`sync::loom::cpu_sequence`).
    pub(crate) fn store_word(&self, word: usize) {
        self.0.lock().unwrap().0 = word;
    }
}

/// The double word exactly as the fast paths use it, for `benches/fastpath.rs` to measure the
/// protocol's floor with kmem's own instruction sequences (not part of the API).
#[cfg(not(loom))]
#[doc(hidden)]
#[repr(C, align(64))]
pub struct BenchDWord(DWord);

#[cfg(not(loom))]
impl BenchDWord {
    /// A zeroed double word alone on its cache line. Panics if the CPU lacks the 16-byte CAS.
    pub fn new() -> Self {
        assert!(
            DWord::is_lock_free(),
            "no lock-free 16-byte CAS on this CPU"
        );
        BenchDWord(DWord::new(0, 0))
    }
    /// The 16-byte atomic load.
    #[inline(always)]
    pub fn load(&self) -> (usize, u64) {
        self.0.load()
    }
    /// The fast paths' split load (tag, then word).
    #[inline(always)]
    pub fn load_tag_then_word(&self) -> (usize, u64) {
        self.0.load_tag_then_word()
    }
    /// The 16-byte compare-and-swap.
    #[inline(always)]
    pub fn compare_exchange(&self, cur: (usize, u64), new: (usize, u64)) -> bool {
        self.0.compare_exchange(cur, new).is_ok()
    }
}

#[cfg(not(loom))]
impl Default for BenchDWord {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dword_cas_swaps_both_halves() {
        assert!(DWord::is_lock_free());
        let d = DWord::new(0x1000, 7);
        assert_eq!(d.load(), (0x1000, 7));
        assert_eq!(d.load_tag_then_word(), (0x1000, 7));
        assert_eq!(d.compare_exchange((0x1000, 6), (0, 0)), Err((0x1000, 7)));
        assert_eq!(d.compare_exchange((0x2000, 7), (0, 0)), Err((0x1000, 7)));
        assert_eq!(d.compare_exchange((0x1000, 7), (0x2000, u64::MAX)), Ok(()));
        assert_eq!(d.load(), (0x2000, u64::MAX));
        d.store(usize::MAX, 1);
        assert_eq!(d.load(), (usize::MAX, 1));
        assert_eq!(d.load_tag_then_word(), (usize::MAX, 1));
    }

    #[test]
    fn dword_is_lock_free_here() {
        assert!(
            DWord::is_lock_free(),
            "this CPU lacks a lock-free 16-byte CAS"
        );
    }

    /// Both halves change together under contention: four threads each add (1, 1) to the pair
    /// with CAS loops; a torn or lost update would make the halves differ or the sum short.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn dword_cas_is_atomic_under_contention() {
        let d = DWord::new(0, 0);
        const PER: u64 = 20_000;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..PER {
                        let mut cur = d.load_tag_then_word();
                        loop {
                            match d.compare_exchange(cur, (cur.0 + 1, cur.1 + 1)) {
                                Ok(()) => break,
                                Err(found) => cur = found,
                            }
                        }
                        let (w, t) = d.load();
                        assert_eq!(w as u64, t, "torn 16-byte load");
                    }
                });
            }
        });
        assert_eq!(d.load(), (4 * PER as usize, 4 * PER));
    }
}
