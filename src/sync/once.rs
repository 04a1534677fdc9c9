//! [`OnceSlot`]: one-time initialisation that never allocates, for the global instance and the
//! kmalloc cache table. Process-wide `static`s only, so it is never a loom object.

use super::{thread_token, Backoff};

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
                        crate::os::abort_msg(&[
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
