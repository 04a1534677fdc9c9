//! The normal build's backend: `core` atomics, `UnsafeCell`, a TTAS spin lock with owner
//! tracking, spinning that ends in `sched_yield`. Chosen once by `sync/mod.rs`; `sync/loom.rs`
//! has the same items for model checking.

use core::ops::{Deref, DerefMut};

pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
/// Per-thread state (std's; a value without `Drop` registers no destructor).
pub(crate) use std::thread_local;

// ---------------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------------

/// An `UnsafeCell` for fields that a lock protects (list links, a CPU slot's partial list).
pub(crate) struct Cell<T>(core::cell::UnsafeCell<T>);

impl<T> Cell<T> {
    /// A new cell.
    pub(crate) const fn new(v: T) -> Self {
        Cell(core::cell::UnsafeCell::new(v))
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
        // SAFETY: the caller excludes concurrent writers (see the function contract).
        unsafe { *self.0.get() }
    }

    /// Writes the value.
    ///
    /// # Safety
    /// The caller holds whatever lock protects this cell (no concurrent readers or writers).
    #[inline(always)]
    pub(crate) unsafe fn set(&self, v: T) {
        // SAFETY: the caller has exclusive access (see the function contract).
        unsafe { *self.0.get() = v }
    }

    /// A raw pointer to the value, for the lock guard.
    #[inline(always)]
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

// SAFETY: every access goes through `get`/`set`, whose callers must hold the protecting lock.
unsafe impl<T: Send> Sync for Cell<T> {}
// SAFETY: moving the cell moves the value; `T: Send` makes that sound.
unsafe impl<T: Send> Send for Cell<T> {}

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

/// Yields inside a retry loop: a hint to the CPU.
#[inline(always)]
pub(crate) fn retry_hint() {
    core::hint::spin_loop();
}

/// A non-zero token unique to the calling thread while it lives: the address of a
/// thread-local byte. The thread-local has no destructor, so using it never registers one.
#[inline]
pub(crate) fn thread_token() -> usize {
    std::thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| t as *const u8 as usize)
}

// ---------------------------------------------------------------------------------------------
// The spin lock
// ---------------------------------------------------------------------------------------------

/// A test-and-test-and-set spin lock with owner tracking, protecting a `T`.
pub(crate) struct SpinLock<T> {
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
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock. `what` names it in the re-entry abort message.
    pub(crate) const fn new(what: &'static str, v: T) -> Self {
        SpinLock {
            owner: AtomicUsize::new(0),
            what,
            data: Cell::new(v),
        }
    }

    /// Takes the lock if it is free, without waiting.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        let me = thread_token();
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
        let mut backoff = Backoff::new();
        loop {
            let owner = self.owner.load(Ordering::Relaxed);
            if owner == me {
                crate::os::abort_msg(&[
                    "kmem: ",
                    self.what,
                    " re-entered by the thread that holds it (allocation from a signal handler \
                     that interrupted kmem, or a lock-order bug); aborting instead of deadlocking",
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
    pub(crate) unsafe fn force_unlock(&self) {
        self.owner.store(0, Ordering::Release);
    }

    /// Takes the lock and keeps it held with no guard: for `pthread_atfork` prepare handlers,
    /// which cannot hand a guard to the parent/child handlers. Release it with
    /// [`SpinLock::raw_unlock`] or adopt it with [`SpinLock::adopt_raw`].
    pub(crate) fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    ///
    /// # Safety
    /// The calling thread took the lock with `raw_lock` (in a forked child: the forking thread
    /// did, in its prepare handler) and no guard of it exists.
    pub(crate) unsafe fn raw_unlock(&self) {
        self.owner.store(0, Ordering::Release);
    }

    /// A guard for a lock taken with [`SpinLock::raw_lock`], so that its data can be read and
    /// the lock released by dropping the guard.
    ///
    /// # Safety
    /// As [`SpinLock::raw_unlock`].
    pub(crate) unsafe fn adopt_raw(&self) -> SpinGuard<'_, T> {
        SpinGuard { lock: self }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no one else accesses `data`.
        unsafe { &*self.lock.data.ptr() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves exclusive access to `data`.
        unsafe { &mut *self.lock.data.ptr() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Release);
    }
}
