//! The `--cfg loom` backend: loom's atomics, `UnsafeCell`, `Mutex` and `yield_now`, with the
//! same items as `sync/native.rs`, so that `loom-tests/` explores every interleaving of the
//! protocols built on them. Chosen once by `sync/mod.rs`.
//!
//! What this model does not check (the TTAS lock itself, orderings on the double word) is listed
//! in `sync/mod.rs` and `docs/verification.md`.

use core::ops::{Deref, DerefMut};

pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
/// Per-(model-)thread state.
pub(crate) use loom::thread_local;

/// An `UnsafeCell` whose accesses loom checks for data races.
pub(crate) struct Cell<T>(loom::cell::UnsafeCell<T>);

impl<T> Cell<T> {
    /// A new cell.
    pub(crate) fn new(v: T) -> Self {
        Cell(loom::cell::UnsafeCell::new(v))
    }

    /// Reads the value.
    ///
    /// # Safety
    /// The caller holds whatever lock protects this cell (or otherwise excludes writers).
    pub(crate) unsafe fn get(&self) -> T
    where
        T: Copy,
    {
        // SAFETY: the caller excludes concurrent writers; loom checks the claim.
        self.0.with(|p| unsafe { *p })
    }

    /// Writes the value.
    ///
    /// # Safety
    /// The caller holds whatever lock protects this cell (no concurrent readers or writers).
    pub(crate) unsafe fn set(&self, v: T) {
        // SAFETY: the caller has exclusive access; loom checks the claim.
        self.0.with_mut(|p| unsafe { *p = v })
    }
}

// SAFETY: every access goes through `get`/`set`, whose callers must hold the protecting lock.
unsafe impl<T: Send> Sync for Cell<T> {}
// SAFETY: moving the cell moves the value; `T: Send` makes that sound.
unsafe impl<T: Send> Send for Cell<T> {}

/// Backoff under loom: every snooze is a scheduling point.
pub(crate) struct Backoff;

impl Backoff {
    /// A fresh backoff.
    pub(crate) const fn new() -> Self {
        Backoff
    }

    /// Lets the model schedule another thread.
    pub(crate) fn snooze(&mut self) {
        loom::thread::yield_now();
    }
}

/// A scheduling point inside a retry loop.
pub(crate) fn retry_hint() {
    loom::thread::yield_now();
}

/// A token unique to the calling (loom) thread, never 0, 1 or 2 (`OnceSlot`'s states).
///
/// Drawn from a counter, not an address: a loom thread's locals are freed when it ends, so a
/// later thread could get the same address while a `Relaxed` load of a lock's `owner` still
/// returns the ended thread's store (nothing synchronised the two threads), and `lock` would
/// take the new thread for the holder (`m16_debug_free` ran into exactly that).
pub(crate) fn thread_token() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(16);
    loom::thread_local! {
        static TOKEN: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// The spin lock, modelled as a loom `Mutex` (its `try_lock` fallbacks are explored, not the
/// TTAS loop of the normal build).
///
/// `owner` only serves the re-entry check. Its accesses are `SeqCst` here: with `Relaxed` (and
/// even with `Release`/`Acquire`) loom let a thread whose `try_lock` failed read its own token
/// from an earlier, already released, acquisition, and report a re-entry that did not happen
/// (seen in model 16, two threads of one slot taking the page lock in turn). Every new
/// happens-before edge this adds ends in `lock()`'s slow path, which then acquires the mutex
/// from the same releaser anyway, so the models' protocol data gain no ordering from it.
pub(crate) struct SpinLock<T> {
    inner: loom::sync::Mutex<()>,
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
    _g: loom::sync::MutexGuard<'a, ()>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock. `what` names it in the re-entry message.
    pub(crate) fn new(what: &'static str, v: T) -> Self {
        SpinLock {
            inner: loom::sync::Mutex::new(()),
            owner: AtomicUsize::new(0),
            what,
            data: Cell::new(v),
        }
    }

    /// Takes the lock if it is free, without waiting.
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        match self.inner.try_lock() {
            Ok(g) => {
                self.owner.store(thread_token(), Ordering::SeqCst);
                Some(SpinGuard { lock: self, _g: g })
            }
            Err(_) => None,
        }
    }

    /// Takes the lock; panics (failing the model) on re-entry by its holder.
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        if self.owner.load(Ordering::SeqCst) == thread_token() {
            panic!("kmem: {} re-entered by its holder", self.what);
        }
        let g = self.inner.lock().unwrap();
        self.owner.store(thread_token(), Ordering::SeqCst);
        SpinGuard { lock: self, _g: g }
    }

    /// Whether the lock is held by anyone right now.
    pub(crate) fn is_locked(&self) -> bool {
        self.owner.load(Ordering::Relaxed) != 0
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // loom's `with` cannot lend a reference past the closure, so the guard reads through
        // the raw pointer; the lock itself is modelled by the mutex.
        // SAFETY: the guard proves the lock is held, so no one else accesses `data`.
        unsafe { &*self.lock.data.0.with(|p| p) }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.lock.data.0.with_mut(|p| p) }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The model of a CPU running a restartable sequence (`cpu/percpu/`)
// ---------------------------------------------------------------------------------------------

/// How many CPUs the rseq model knows (model threads pick theirs with
/// `cpu::set_current_cpu_for_model`).
pub(crate) const MODEL_CPUS: usize = 4;

loom::lazy_static! {
    /// One mutex per model CPU: holding it is "this CPU is executing my restartable sequence".
    static ref MODEL_CPU_SEQ: [loom::sync::Mutex<()>; MODEL_CPUS] =
        core::array::from_fn(|_| loom::sync::Mutex::new(()));
}

/// A restartable sequence in progress on a model CPU (see [`cpu_sequence`]).
pub(crate) struct CpuSequence(#[allow(dead_code)] loom::sync::MutexGuard<'static, ()>);

/// Enters a restartable sequence on model CPU `cpu`.
///
/// The kernel guarantees that a sequence on CPU `c` either runs to its commit with no other
/// thread running on `c` in between, or is aborted before its commit (and then restarted by
/// kmem). An aborted-and-restarted sequence with no side effect before its commit is
/// indistinguishable from one that started after the interruption, so the model runs every
/// sequence under its CPU's mutex: atomic with respect to every other sequence on that CPU, and
/// to a fence on that CPU ([`cpu_fence`]), and *not* ordered with anything running on another
/// CPU — which is exactly what the protocols on top must cope with.
pub(crate) fn cpu_sequence(cpu: usize) -> CpuSequence {
    assert!(cpu < MODEL_CPUS, "model CPU {cpu} out of range");
    CpuSequence(MODEL_CPU_SEQ[cpu].lock().unwrap())
}

/// The model of `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, cpu)`: returns
/// once no sequence on `cpu` that started before the call can still commit (it has committed,
/// and its commit happens-before the return, or it will restart after the return).
pub(crate) fn cpu_fence(cpu: usize) {
    assert!(cpu < MODEL_CPUS, "model CPU {cpu} out of range");
    drop(MODEL_CPU_SEQ[cpu].lock().unwrap());
}
