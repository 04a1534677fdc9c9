//! The synchronisation facade: the only module that names atomics, cells and locks.
//!
//! The backend is chosen **once**, for the whole build, as sharded-slab and crossbeam-epoch do:
//! `sync/native.rs` (core atomics, `UnsafeCell`, a TTAS spin lock) normally, `sync/loom.rs`
//! (loom's atomics, cells and mutexes) under `--cfg loom`. Both export the same names, and the
//! rest of the crate imports only from here. The double word has a backend choice of its own
//! (`sync/dword.rs`: kmem's inline `cmpxchg16b`, portable-atomic, or loom), and two things are
//! the same in every build: [`OnceSlot`] (`sync/once.rs`, statics only) and the free-pointer
//! accessors below (object memory that loom did not allocate).
//!
//! Normal builds use `core::sync::atomic` and, for the double word, kmem's own `lock cmpxchg16b`
//! on x86_64 (portable-atomic's `AtomicU128` on aarch64, under Miri and under TSAN); `--cfg loom`
//! builds swap in loom's types so that `loom-tests/` can explore every interleaving of the
//! protocols that are built on them. Everything else in the crate imports from here.
//!
//! # The double word
//!
//! [`DWord`] is the 16-byte `{word, tag}` pair that SLUB swaps with one compare-and-swap:
//! `{freelist, tid}` in a CPU slot and `{freelist, counters}` in a slab. Normally it is a
//! lock-free 16-byte atomic (an inlined LOCKed `cmpxchg16b` on x86_64, whatever the build flags;
//! loads use an atomic 16-byte vector load where the CPU guarantees one): `sync/dword.rs` picks
//! the backend once per build and explains why. Under loom it is a
//! `loom::sync::Mutex<(usize, u64)>`.
//!
//! What the loom model of the double word does **not** check:
//! - A mutex makes every `load` and `compare_exchange` sequentially consistent with respect to
//!   the other operations on the same word; the real `AtomicU128` uses Acquire/AcqRel. Orderings
//!   between *different* locations are still modelled (loom tracks the mutex's happens-before
//!   edges), but a bug that needs a weaker ordering on the double word itself is not found.
//! - Tearing: the model cannot tear the pair; the real hardware cannot either (cmpxchg16b and
//!   the vector load are single-copy atomic).
//!
//! # Object memory
//!
//! The free pointer stored inside a free object is read speculatively by the allocation fast
//! path while the object may already belong to another thread (the read is then discarded
//! because the `tid` CAS fails, exactly like a seqlock reader). [`load_free_ptr`] and
//! [`store_free_ptr`] therefore use relaxed atomic accesses on the object's memory. They are
//! plain `core` atomics in every build: loom cannot model memory that it did not allocate, so
//! the models rely on the `tid`/`counters` CAS (which loom does model) to reject stale reads.
//!
//! # Locks
//!
//! [`SpinLock`] spins briefly and then yields (user space cannot disable preemption, so the
//! holder may be descheduled). It records its owner so that re-entry from the same thread (a
//! signal handler that allocates while the interrupted code holds the lock) aborts with a
//! precise message instead of deadlocking silently.

#![allow(dead_code)]

#[cfg(not(loom))]
#[path = "native.rs"]
mod backend;

#[cfg(loom)]
#[path = "loom.rs"]
mod backend;

mod dword;
mod once;

#[cfg(loom)]
pub(crate) use backend::{cpu_fence, cpu_sequence, MODEL_CPUS};
pub(crate) use backend::{
    fence, retry_hint, thread_token, AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU64,
    AtomicU8, AtomicUsize, Backoff, Cell, Ordering, SpinGuard, SpinLock,
};
#[cfg(not(loom))]
pub use dword::BenchDWord;
pub(crate) use dword::DWord;
pub(crate) use once::OnceSlot;

/// Atomics for process-wide tables that live in `static`s (the chunk radix table, the
/// global-instance state, the CPU-id cache). They are never modelled by loom: loom objects
/// cannot live in statics, and these tables are only written under a page-allocator lock or
/// during single-threaded initialisation, or hold idempotent caches.
pub(crate) mod global {
    pub(crate) use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicUsize, Ordering};
}

/// `&STATIC` for a `static` of this crate, with its address computed RIP-relative (`lea`) on
/// x86_64 instead of loaded from the GOT.
///
/// rustc compiles kmem as position-independent code and reaches its statics from an inline
/// function expanded in a dependent crate (`Kmalloc`'s fast paths) through a GOT entry: one more
/// dependent load in front of every access, which the linker does not relax. The fast paths'
/// statics (the kmalloc views' table pointers, the tag map's root) are read at the start of
/// the chains an allocation and a free wait for, so they take their address with one `lea`,
/// as the rseq area's offset already is (`cpu/percpu`: churn 0.60 → 0.67 of jemalloc's time).
/// Elsewhere (other targets, Miri, loom) it is `&STATIC`.
macro_rules! static_ref {
    ($s:path) => {{
        #[cfg(all(target_arch = "x86_64", not(any(miri, loom))))]
        let r = {
            let p: usize;
            // `$s` is a static of this crate, in the same executable or shared object as this
            // code, so a PC-relative reference reaches it.
            // SAFETY: `lea` only computes the address of `$s`; it reads or writes no memory.
            unsafe {
                core::arch::asm!(
                    "lea {p}, [rip + {s}]",
                    p = out(reg) p,
                    s = sym $s,
                    options(pure, nomem, nostack, preserves_flags),
                )
            };
            $crate::sync::static_at(&$s, p)
        };
        #[cfg(not(all(target_arch = "x86_64", not(any(miri, loom)))))]
        let r = &$s;
        r
    }};
}
pub(crate) use static_ref;

/// The static at address `p`, typed as `like` (which is that static: [`static_ref!`]).
#[doc(hidden)]
#[inline(always)]
#[cfg_attr(
    not(all(target_arch = "x86_64", not(any(miri, loom)))),
    allow(dead_code)
)]
pub(crate) fn static_at<T>(like: &'static T, p: usize) -> &'static T {
    debug_assert_eq!(like as *const T as usize, p);
    // `static_ref!` computed `p` with `lea` from the symbol of the static `like` refers to.
    // SAFETY: `p` is that static's address: valid for 'static and aligned for `T`.
    unsafe { &*(p as *const T) }
}

// ---------------------------------------------------------------------------------------------
// Object memory: the free pointer inside a free object
// ---------------------------------------------------------------------------------------------

/// The freelist secret of the `freelist-hardened` feature (see [`freelist_ptr`]).
#[cfg(feature = "freelist-hardened")]
static FREELIST_RANDOM: global::AtomicUsize = global::AtomicUsize::new(0);

/// Draws the freelist secret (once per process, before the first free pointer is written:
/// `KmemBuilder::build` calls this first). `getrandom(2)`, no allocation; under Miri and loom
/// a fixed odd constant, so that models stay deterministic.
pub(crate) fn init_freelist_random() {
    #[cfg(feature = "freelist-hardened")]
    {
        use global::Ordering;
        if FREELIST_RANDOM.load(Ordering::Acquire) != 0 {
            return;
        }
        #[cfg(any(miri, loom))]
        let r = 0x9e37_79b9_7f4a_7c15_usize;
        #[cfg(not(any(miri, loom)))]
        let r = {
            let mut r = 0usize;
            // SAFETY: writes at most `size_of::<usize>()` bytes into `r`.
            let n = unsafe {
                libc::getrandom(
                    (&mut r as *mut usize).cast(),
                    core::mem::size_of::<usize>(),
                    0,
                )
            };
            if n != core::mem::size_of::<usize>() as isize {
                // No entropy source: mix the clock and an address (still never 0).
                r = (crate::os::now_ns() as usize) ^ (&r as *const usize as usize).rotate_left(17);
            }
            r | 1
        };
        let _ = FREELIST_RANDOM.compare_exchange(0, r, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The freelist secret (0 before [`init_freelist_random`], and without the feature).
#[inline(always)]
pub(crate) fn freelist_random() -> usize {
    #[cfg(feature = "freelist-hardened")]
    {
        FREELIST_RANDOM.load(global::Ordering::Relaxed)
    }
    #[cfg(not(feature = "freelist-hardened"))]
    {
        0
    }
}

/// `freelist_ptr_encode` / `decode` (one operation, its own inverse), for
/// `CONFIG_SLAB_FREELIST_HARDENED` (the `freelist-hardened` feature): every free pointer is
/// stored as `ptr ^ random ^ swab(addr)`, where `addr` is the address of the word that holds
/// it and `random` a secret drawn once per process ([`init_freelist_random`]), so that a
/// use-after-free write or a heap overflow cannot plant a chosen pointer in a freelist, and a
/// free object does not reveal a heap address. The kernel's `random` is per cache; kmem's is
/// per process, so that this function (which knows only the address) and the rseq sequences
/// (`cpu/percpu/seq.rs`, which decode and encode in their own instructions) apply it without
/// the cache at hand. Without the feature it returns `v`: free pointers are stored as is.
#[inline(always)]
pub(crate) fn freelist_ptr(v: usize, addr: usize) -> usize {
    if cfg!(feature = "freelist-hardened") {
        v ^ freelist_random() ^ addr.swap_bytes()
    } else {
        v
    }
}

/// Reads a word of plain object memory that other threads may write (Relaxed; no freelist
/// hardening: for cells that hold object pointers outside freelists, such as a sheaf's).
///
/// # Safety
/// `addr` is aligned to `usize` and lies in mapped memory.
#[inline(always)]
pub(crate) unsafe fn load_word(addr: *const usize) -> usize {
    // SAFETY: `addr` is aligned and mapped per the contract.
    unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr as *mut usize) }
        .load(core::sync::atomic::Ordering::Relaxed)
}

/// Writes a word of plain object memory (Relaxed; no freelist hardening).
///
/// # Safety
/// `addr` is aligned, mapped and the caller's to write.
#[inline(always)]
pub(crate) unsafe fn store_word(addr: *mut usize, v: usize) {
    // SAFETY: aligned, mapped and writable per the contract.
    unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr) }
        .store(v, core::sync::atomic::Ordering::Relaxed)
}

/// Reads the free pointer stored at `addr` (Relaxed). May race with the object's new owner;
/// the caller must validate the value with a CAS before using it.
///
/// # Safety
/// `addr` is aligned to `usize` and lies in mapped memory that stays mapped (kmem never unmaps
/// slab memory while the allocator that owns it lives).
#[inline(always)]
pub(crate) unsafe fn load_free_ptr(addr: *const usize) -> usize {
    // An atomic access makes the race with the owner's writes a benign, discarded read rather than
    // a torn one.
    // SAFETY: `addr` is aligned and mapped per the contract.
    let v = unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr as *mut usize) }
        .load(core::sync::atomic::Ordering::Relaxed);
    freelist_ptr(v, addr as usize)
}

/// Writes the free pointer at `addr` (Relaxed; published by the CAS that links the object).
///
/// # Safety
/// `addr` is aligned, mapped, and the object is owned by the caller (being freed).
#[inline(always)]
pub(crate) unsafe fn store_free_ptr(addr: *mut usize, v: usize) {
    // SAFETY: aligned, mapped and owned per the contract.
    unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr) }.store(
        freelist_ptr(v, addr as usize),
        core::sync::atomic::Ordering::Relaxed,
    )
}

// ---------------------------------------------------------------------------------------------
// Per-thread "inside a page release" depth (no destructor, no allocation)
// ---------------------------------------------------------------------------------------------

backend::thread_local! {
    // A `core::cell::Cell` on purpose: per-thread state, never shared between threads, so there
    // is nothing for loom to check. Not `const { .. }`: loom's `thread_local!` does not take it
    // (and a value without `Drop` registers no destructor either way).
    #[allow(clippy::missing_const_for_thread_local)]
    static PAGE_RELEASE_DEPTH: core::cell::Cell<u32> = core::cell::Cell::new(0);
}

/// Marks the calling thread as holding page blocks detached for `madvise` ("in transit",
/// `page/mod.rs`) while it lives. An allocation on the same thread (a signal handler that
/// interrupted the release) must not wait for those blocks, and a `fork` made by such a handler
/// must not hand them out in the child (see [`PageReleaseScope::active`]).
pub(crate) struct PageReleaseScope(());

impl PageReleaseScope {
    /// Enters the scope (nests).
    #[inline]
    pub(crate) fn enter() -> Self {
        PAGE_RELEASE_DEPTH.with(|d| d.set(d.get() + 1));
        PageReleaseScope(())
    }

    /// Whether the calling thread is inside a scope.
    #[inline]
    pub(crate) fn active() -> bool {
        PAGE_RELEASE_DEPTH.with(|d| d.get() != 0)
    }
}

impl Drop for PageReleaseScope {
    #[inline]
    fn drop(&mut self) {
        PAGE_RELEASE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn spinlock_excludes_and_try_lock_fails_when_held() {
        let l = SpinLock::new("test lock", 0u64);
        {
            let mut g = l.lock();
            *g += 1;
            assert!(l.is_locked());
            let other = std::thread::scope(|s| s.spawn(|| l.try_lock().is_none()).join().unwrap());
            assert!(other);
        }
        assert!(!l.is_locked());
        let l = &l;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(move || {
                    for _ in 0..10_000 {
                        *l.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*l.lock(), 40_001);
    }

    #[test]
    fn thread_tokens_differ_between_threads() {
        let a = thread_token();
        let b = std::thread::spawn(thread_token).join().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(a, thread_token());
    }

    #[test]
    #[cfg(feature = "freelist-hardened")]
    fn hardened_free_pointers_are_stored_encoded() {
        init_freelist_random();
        assert_ne!(freelist_random(), 0);
        let mut w = [0usize; 2];
        let p = w.as_mut_ptr();
        // SAFETY: a live, aligned local array.
        unsafe {
            store_free_ptr(p, 0x7f00_1234_5678);
            assert_eq!(load_free_ptr(p), 0x7f00_1234_5678);
            // The word holds neither the pointer nor (for null) zero.
            assert_ne!(w[0], 0x7f00_1234_5678);
            store_free_ptr(p.add(1), 0);
            assert_ne!(w[1], 0);
            assert_eq!(load_free_ptr(p.add(1)), 0);
        }
    }

    #[test]
    fn free_ptr_round_trips() {
        let mut slot = 0usize;
        // One mutable raw pointer for both accesses: the atomic load forms an `&AtomicUsize`,
        // which needs write permission (Miri rejects a pointer derived from `&slot`).
        let p: *mut usize = &mut slot;
        // SAFETY: `slot` is an aligned, live local.
        unsafe {
            store_free_ptr(p, 0xdead_beef);
            assert_eq!(load_free_ptr(p), 0xdead_beef);
        }
    }
}
