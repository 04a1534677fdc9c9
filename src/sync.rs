//! The synchronisation facade: the only module that names atomics, cells and locks.
//!
//! Normal builds use `core::sync::atomic` and portable-atomic's `AtomicU128`; `--cfg loom`
//! builds swap in loom's types so that `loom-tests/` can explore every interleaving of the
//! protocols that are built on them. Everything else in the crate imports from here.
//!
//! # The double word
//!
//! [`DWord`] is the 16-byte `{word, tag}` pair that SLUB swaps with one compare-and-swap:
//! `{freelist, tid}` in a CPU slot and `{freelist, counters}` in a slab. Normally it is a
//! lock-free `AtomicU128` (a LOCKed `cmpxchg16b` on x86_64; loads use an atomic 16-byte vector
//! load where the CPU guarantees one). Under loom it is a `loom::sync::Mutex<(usize, u64)>`.
//!
//! What the loom model of the double word does **not** check:
//! - A mutex makes every `load` and `compare_exchange` sequentially consistent with respect to
//!   the other operations on the same word; the real `AtomicU128` uses Acquire/AcqRel. Orderings
//!   between *different* locations are still modelled (loom tracks the mutex's happens-before
//!   edges), but a bug that needs a weaker ordering on the double word itself is not found.
//! - Tearing: the model cannot tear the pair; the real hardware cannot either (cmpxchg16b and
//!   the vector load are single-copy atomic), which is what portable-atomic guarantees.
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

use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// Atomics for process-wide tables that live in `static`s (the chunk radix table, the
/// global-instance state). They are never modelled by loom: loom objects cannot live in
/// statics, and these tables are only written under a page-allocator lock or during
/// single-threaded initialisation.
pub(crate) mod global {
    pub(crate) use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
}

// ---------------------------------------------------------------------------------------------
// The 16-byte double word
// ---------------------------------------------------------------------------------------------

/// A `{word, tag}` pair swapped as one 16-byte unit.
///
/// `word` is a pointer-sized value (a freelist head); `tag` is 64 bits (a `tid` or packed
/// slab counters).
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct DWord(portable_atomic::AtomicU128);

#[cfg(loom)]
pub(crate) struct DWord(loom::sync::Mutex<(usize, u64)>);

#[cfg(not(loom))]
#[inline(always)]
const fn pack(word: usize, tag: u64) -> u128 {
    (word as u128) | ((tag as u128) << 64)
}

#[cfg(not(loom))]
#[inline(always)]
const fn unpack(v: u128) -> (usize, u64) {
    (v as u64 as usize, (v >> 64) as u64)
}

impl DWord {
    /// A new double word.
    #[cfg(not(loom))]
    pub(crate) const fn new(word: usize, tag: u64) -> Self {
        DWord(portable_atomic::AtomicU128::new(pack(word, tag)))
    }

    /// A new double word.
    #[cfg(loom)]
    pub(crate) fn new(word: usize, tag: u64) -> Self {
        DWord(loom::sync::Mutex::new((word, tag)))
    }

    /// Whether the 16-byte CAS is lock-free on this CPU (always true under loom, where it is
    /// modelled).
    pub(crate) fn is_lock_free() -> bool {
        #[cfg(not(loom))]
        {
            portable_atomic::AtomicU128::is_lock_free()
        }
        #[cfg(loom)]
        {
            true
        }
    }

    /// Loads both halves in one single-copy-atomic read (Acquire).
    #[inline(always)]
    pub(crate) fn load(&self) -> (usize, u64) {
        #[cfg(not(loom))]
        {
            unpack(self.0.load(Ordering::Acquire))
        }
        #[cfg(loom)]
        {
            *self.0.lock().unwrap()
        }
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
        #[cfg(all(not(loom), not(miri), target_arch = "x86_64"))]
        {
            let halves = self.0.as_ptr().cast::<core::sync::atomic::AtomicU64>();
            // The high half (the tag, little-endian) and low half (the word) are each an aligned
            // u64 that is only ever accessed atomically (see the mixed-size note above).
            // SAFETY: the AtomicU128 is 16-byte aligned and lives as long as `self`.
            let (tag, word) = unsafe {
                let tag = (*halves.add(1)).load(core::sync::atomic::Ordering::Acquire);
                let word = (*halves).load(core::sync::atomic::Ordering::Acquire);
                (tag, word)
            };
            (word as usize, tag)
        }
        #[cfg(not(all(not(loom), not(miri), target_arch = "x86_64")))]
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
        #[cfg(not(loom))]
        {
            self.0
                .compare_exchange(
                    pack(current.0, current.1),
                    pack(new.0, new.1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .map(|_| ())
                .map_err(unpack)
        }
        #[cfg(loom)]
        {
            let mut g = self.0.lock().unwrap();
            if *g == current {
                *g = new;
                Ok(())
            } else {
                Err(*g)
            }
        }
    }

    /// Stores both halves (Release). Only for states no other thread can race with.
    #[inline]
    pub(crate) fn store(&self, word: usize, tag: u64) {
        #[cfg(not(loom))]
        {
            self.0.store(pack(word, tag), Ordering::Release)
        }
        #[cfg(loom)]
        {
            *self.0.lock().unwrap() = (word, tag);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------------

/// An `UnsafeCell` whose accesses loom can check for data races.
///
/// Used for fields that a lock protects (list links, a CPU slot's partial list).
pub(crate) struct Cell<T>(
    #[cfg(not(loom))] core::cell::UnsafeCell<T>,
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
);

impl<T> Cell<T> {
    /// A new cell.
    #[cfg(not(loom))]
    pub(crate) const fn new(v: T) -> Self {
        Cell(core::cell::UnsafeCell::new(v))
    }

    /// A new cell.
    #[cfg(loom)]
    pub(crate) fn new(v: T) -> Self {
        Cell(loom::cell::UnsafeCell::new(v))
    }

    /// Reads the value.
    ///
    /// # Safety
    /// The caller holds whatever lock protects this cell (or otherwise excludes writers).
    #[inline(always)]
    pub(crate) unsafe fn get(&self) -> T
    where
        T: Copy,
    {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller excludes concurrent writers (see the function contract).
            unsafe { *self.0.get() }
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom checks the claim.
            self.0.with(|p| unsafe { *p })
        }
    }

    /// Writes the value.
    ///
    /// # Safety
    /// The caller holds whatever lock protects this cell (no concurrent readers or writers).
    #[inline(always)]
    pub(crate) unsafe fn set(&self, v: T) {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller has exclusive access (see the function contract).
            unsafe { *self.0.get() = v }
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom checks the claim.
            self.0.with_mut(|p| unsafe { *p = v })
        }
    }
}

// SAFETY: every access goes through `get`/`set`, whose callers must hold the protecting lock.
unsafe impl<T: Send> Sync for Cell<T> {}
// SAFETY: moving the cell moves the value; `T: Send` makes that sound.
unsafe impl<T: Send> Send for Cell<T> {}

// ---------------------------------------------------------------------------------------------
// Object memory: the free pointer inside a free object
// ---------------------------------------------------------------------------------------------

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
    unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr as *mut usize) }
        .load(core::sync::atomic::Ordering::Relaxed)
}

/// Writes the free pointer at `addr` (Relaxed; published by the CAS that links the object).
///
/// # Safety
/// `addr` is aligned, mapped, and the object is owned by the caller (being freed).
#[inline(always)]
pub(crate) unsafe fn store_free_ptr(addr: *mut usize, v: usize) {
    // SAFETY: aligned, mapped and owned per the contract.
    unsafe { core::sync::atomic::AtomicUsize::from_ptr(addr) }
        .store(v, core::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Spinning and yielding
// ---------------------------------------------------------------------------------------------

/// Bounded exponential spinning followed by yielding to the scheduler.
pub(crate) struct Backoff(u32);

impl Backoff {
    const SPIN_LIMIT: u32 = 6;

    /// A fresh backoff.
    pub(crate) const fn new() -> Self {
        Backoff(0)
    }

    /// Spins a little longer each call, then yields the CPU once the spin budget is used.
    #[inline]
    pub(crate) fn snooze(&mut self) {
        #[cfg(loom)]
        {
            loom::thread::yield_now();
        }
        #[cfg(not(loom))]
        {
            if self.0 <= Self::SPIN_LIMIT {
                for _ in 0..(1u32 << self.0) {
                    core::hint::spin_loop();
                }
                self.0 += 1;
            } else {
                // SAFETY: sched_yield has no preconditions and does not allocate.
                unsafe {
                    libc::sched_yield();
                }
            }
        }
    }
}

/// Yields inside a retry loop: a hint to the CPU normally, a scheduling point under loom.
#[inline(always)]
pub(crate) fn retry_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

// ---------------------------------------------------------------------------------------------
// Thread identity (no destructor, no allocation)
// ---------------------------------------------------------------------------------------------

/// A non-zero token unique to the calling thread while it lives: the address of a
/// thread-local byte. The thread-local has no destructor, so using it never registers one.
#[inline]
pub(crate) fn thread_token() -> usize {
    #[cfg(not(loom))]
    {
        std::thread_local! {
            static TOKEN: u8 = const { 0 };
        }
        TOKEN.with(|t| t as *const u8 as usize)
    }
    #[cfg(loom)]
    {
        loom::thread_local! {
            static TOKEN: u8 = 0;
        }
        TOKEN.with(|t| t as *const u8 as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// The spin lock
// ---------------------------------------------------------------------------------------------

/// A test-and-test-and-set spin lock with owner tracking, protecting a `T`.
pub(crate) struct SpinLock<T> {
    #[cfg(not(loom))]
    owner: AtomicUsize,
    #[cfg(loom)]
    inner: loom::sync::Mutex<()>,
    #[cfg(loom)]
    owner: AtomicUsize,
    what: &'static str,
    data: Cell<T>,
}

// SAFETY: the lock serialises every access to `data`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves `data`; `T: Send` makes that sound.
unsafe impl<T: Send> Send for SpinLock<T> {}

/// Proof that a [`SpinLock`] is held; unlocks on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    #[cfg(loom)]
    _g: loom::sync::MutexGuard<'a, ()>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock. `what` names it in the re-entry abort message.
    #[cfg(not(loom))]
    pub(crate) const fn new(what: &'static str, v: T) -> Self {
        SpinLock {
            owner: AtomicUsize::new(0),
            what,
            data: Cell::new(v),
        }
    }

    /// A new, unlocked lock. `what` names it in the re-entry abort message.
    #[cfg(loom)]
    pub(crate) fn new(what: &'static str, v: T) -> Self {
        SpinLock {
            inner: loom::sync::Mutex::new(()),
            owner: AtomicUsize::new(0),
            what,
            data: Cell::new(v),
        }
    }

    /// Takes the lock if it is free, without waiting.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        let me = thread_token();
        #[cfg(not(loom))]
        {
            if self.owner.load(Ordering::Relaxed) == 0
                && self
                    .owner
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(SpinGuard { lock: self });
            }
            None
        }
        #[cfg(loom)]
        {
            match self.inner.try_lock() {
                Ok(g) => {
                    self.owner.store(me, Ordering::Relaxed);
                    Some(SpinGuard { lock: self, _g: g })
                }
                Err(_) => None,
            }
        }
    }

    /// Takes the lock, spinning briefly and then yielding while another thread holds it.
    ///
    /// Aborts with a precise message if the calling thread already holds it (re-entry from a
    /// signal handler, or a lock-order bug), rather than deadlocking.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        self.lock_slow()
    }

    #[cold]
    fn lock_slow(&self) -> SpinGuard<'_, T> {
        let me = thread_token();
        #[cfg(not(loom))]
        {
            let mut backoff = Backoff::new();
            loop {
                let owner = self.owner.load(Ordering::Relaxed);
                if owner == me {
                    crate::abort_msg(&[
                        "kmem: ",
                        self.what,
                        " re-entered by the thread that holds it (allocation from a signal \
                         handler that interrupted kmem, or a lock-order bug); aborting instead \
                         of deadlocking",
                    ]);
                }
                if owner == 0 {
                    if let Some(g) = self.try_lock() {
                        return g;
                    }
                }
                backoff.snooze();
            }
        }
        #[cfg(loom)]
        {
            if self.owner.load(Ordering::Relaxed) == me {
                panic!("kmem: {} re-entered by its holder", self.what);
            }
            let g = self.inner.lock().unwrap();
            self.owner.store(me, Ordering::Relaxed);
            SpinGuard { lock: self, _g: g }
        }
    }

    /// Whether the lock is held by anyone right now (a racy hint for diagnostics and asserts).
    pub(crate) fn is_locked(&self) -> bool {
        self.owner.load(Ordering::Relaxed) != 0
    }

    /// Forcibly re-initialises a lock held by a thread that no longer exists (the child side
    /// of `fork`, where only the forking thread survives).
    ///
    /// # Safety
    /// No other thread can be using the lock: call only in a freshly forked child, for locks
    /// that the forking thread itself took in its pre-fork handler.
    #[cfg(not(loom))]
    pub(crate) unsafe fn force_unlock(&self) {
        self.owner.store(0, Ordering::Release);
    }

    /// Takes the lock and keeps it held with no guard: for `pthread_atfork` prepare handlers
    /// (see `kmalloc.rs`), which cannot hand a guard to the parent/child handlers. Release it
    /// with [`SpinLock::raw_unlock`] or adopt it with [`SpinLock::adopt_raw`].
    #[cfg(not(loom))]
    pub(crate) fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    ///
    /// # Safety
    /// The calling thread took the lock with `raw_lock` (in a forked child: the forking thread
    /// did, in its prepare handler) and no guard of it exists.
    #[cfg(not(loom))]
    pub(crate) unsafe fn raw_unlock(&self) {
        self.owner.store(0, Ordering::Release);
    }

    /// A guard for a lock taken with [`SpinLock::raw_lock`], so that its data can be read and
    /// the lock released by dropping the guard.
    ///
    /// # Safety
    /// As [`SpinLock::raw_unlock`].
    #[cfg(not(loom))]
    pub(crate) unsafe fn adopt_raw(&self) -> SpinGuard<'_, T> {
        SpinGuard { lock: self }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        {
            // SAFETY: the guard proves the lock is held, so no one else accesses `data`.
            unsafe { &*self.lock.data.0.get() }
        }
        #[cfg(loom)]
        {
            // loom's `with` cannot lend a reference past the closure, so the guard reads through
            // the raw pointer; the lock itself is modelled by the mutex.
            // SAFETY: as above: the guard proves the lock is held, so no one else accesses `data`.
            unsafe { &*self.lock.data.0.with(|p| p) }
        }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: the guard proves exclusive access to `data`.
            unsafe { &mut *self.lock.data.0.get() }
        }
        #[cfg(loom)]
        {
            // SAFETY: as in `deref`.
            unsafe { &mut *self.lock.data.0.with_mut(|p| p) }
        }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(not(loom))]
        self.lock.owner.store(0, Ordering::Release);
        #[cfg(loom)]
        self.lock.owner.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// One-time initialisation without allocation
// ---------------------------------------------------------------------------------------------

/// A lazily initialised static slot that never allocates and never uses a `std::sync`
/// primitive (which may allocate or rely on thread-local destructors): safe to use from inside
/// a global allocator, before `main`, and during thread-local destruction.
///
/// Concurrent first callers wait (spin, then yield) for the one that initialises. Re-entry from
/// the initialising thread itself (its initialiser allocating through the allocator being
/// initialised) aborts with a message instead of deadlocking.
pub(crate) struct OnceSlot<T> {
    state: core::sync::atomic::AtomicUsize,
    value: core::cell::UnsafeCell<core::mem::MaybeUninit<T>>,
}

// SAFETY: the value is written once before `state` becomes READY (Release) and only read
// after observing READY (Acquire); `T: Sync + Send` covers sharing it.
unsafe impl<T: Sync + Send> Sync for OnceSlot<T> {}

impl<T> OnceSlot<T> {
    const EMPTY: usize = 0;
    const READY: usize = 1;
    const FAILED: usize = 2;

    /// An empty slot.
    pub(crate) const fn new() -> Self {
        OnceSlot {
            state: core::sync::atomic::AtomicUsize::new(Self::EMPTY),
            value: core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()),
        }
    }

    /// The value, if initialised.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<&T> {
        if self.state.load(core::sync::atomic::Ordering::Acquire) == Self::READY {
            // SAFETY: READY is published after the value was written (see `get_or_try_init`).
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }

    /// The value, initialising it with `init` on first use. `None` if `init` failed (then and
    /// on every later call: the failure is sticky, so an allocator does not retry a failed
    /// bootstrap on every allocation).
    #[cold]
    pub(crate) fn get_or_try_init(&self, init: impl FnOnce() -> Option<T>) -> Option<&T> {
        use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        let me = thread_token();
        // BUSY states carry the initialising thread's token (never 0, 1 or 2: an address).
        match self
            .state
            .compare_exchange(Self::EMPTY, me, Acquire, Acquire)
        {
            Ok(_) => {
                let v = init();
                match v {
                    Some(v) => {
                        // SAFETY: we own the slot while it holds our token.
                        unsafe { (*self.value.get()).write(v) };
                        self.state.store(Self::READY, Release);
                    }
                    None => self.state.store(Self::FAILED, Release),
                }
            }
            Err(_) => {
                let mut backoff = Backoff::new();
                loop {
                    let s = self.state.load(Acquire);
                    if s == Self::READY || s == Self::FAILED {
                        break;
                    }
                    if s == me {
                        crate::abort_msg(&[
                            "kmem: the global allocator was re-entered during its own \
                             initialisation (something in the start-up path allocated)",
                        ]);
                    }
                    backoff.snooze();
                    let _ = self.state.load(Relaxed);
                }
            }
        }
        self.get()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dword_cas_swaps_both_halves() {
        let d = DWord::new(0x1000, 7);
        assert_eq!(d.load(), (0x1000, 7));
        assert_eq!(d.compare_exchange((0x1000, 6), (0, 0)), Err((0x1000, 7)));
        assert_eq!(d.compare_exchange((0x1000, 7), (0x2000, u64::MAX)), Ok(()));
        assert_eq!(d.load(), (0x2000, u64::MAX));
        d.store(usize::MAX, 1);
        assert_eq!(d.load(), (usize::MAX, 1));
    }

    #[test]
    fn dword_is_lock_free_here() {
        assert!(
            DWord::is_lock_free(),
            "this CPU lacks a lock-free 16-byte CAS"
        );
    }

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

// ---------------------------------------------------------------------------------------------
// Per-thread "inside a page release" depth (no destructor, no allocation)
// ---------------------------------------------------------------------------------------------

#[cfg(not(loom))]
std::thread_local! {
    static PAGE_RELEASE_DEPTH: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}
#[cfg(loom)]
loom::thread_local! {
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
