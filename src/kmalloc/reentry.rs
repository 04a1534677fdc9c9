//! The debug re-entrancy guard: with the `debug-reentrancy` feature (and in the unit tests), a
//! per-thread depth counter aborts if the global allocator is entered by a thread already inside
//! it; otherwise it compiles to nothing.

#[cfg(any(test, feature = "debug-reentrancy"))]
mod imp {
    use core::cell::Cell;

    std::thread_local! {
        // A `const`-initialised Cell has no destructor, so touching it never registers one.
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    /// Proof that the thread is inside the allocator; leaves on drop.
    pub(crate) struct Guard(());

    #[inline(always)]
    pub(crate) fn enter() -> Guard {
        let outer = DEPTH
            .try_with(|d| {
                let v = d.get();
                d.set(v + 1);
                v
            })
            .unwrap_or(0);
        if outer != 0 {
            crate::os::abort_msg(&[
                "kmem: the global allocator was re-entered by a thread already inside it \
                 (something reachable from Kmalloc allocated)",
            ]);
        }
        Guard(())
    }

    impl Drop for Guard {
        #[inline(always)]
        fn drop(&mut self) {
            let _ = DEPTH.try_with(|d| d.set(d.get().wrapping_sub(1)));
        }
    }

    /// Aborts if the calling thread is inside the global allocator: `what` (the deferred-free
    /// machinery, which enters crossbeam-epoch) must never be reached from it.
    pub(crate) fn assert_outside(what: &str) {
        if DEPTH.try_with(|d| d.get()).unwrap_or(0) != 0 {
            crate::os::abort_msg(&[
                "kmem: ",
                what,
                " was entered from inside the global allocator",
            ]);
        }
    }

    /// Marks the calling thread as inside the allocator for good (tests of the guard; exported
    /// only with the `debug-reentrancy` feature, so unused in a plain unit-test build).
    #[cfg_attr(not(feature = "debug-reentrancy"), allow(dead_code))]
    pub(super) fn simulate_enter() {
        core::mem::forget(enter());
    }
}

#[cfg(not(any(test, feature = "debug-reentrancy")))]
mod imp {
    /// No guard in normal builds.
    pub(crate) struct Guard;

    #[inline(always)]
    pub(crate) fn enter() -> Guard {
        Guard
    }

    /// No check in normal builds.
    #[inline(always)]
    pub(crate) fn assert_outside(_what: &str) {}
}

pub(crate) use imp::assert_outside;
pub(super) use imp::enter;

/// Whether the re-entrancy guard (the `debug-reentrancy` feature) is compiled in: every
/// [`Kmalloc`](crate::Kmalloc) entry point then aborts if the calling thread is already inside one.
///
/// ```
/// let _on: bool = kmem::kmalloc_reentrancy_guard();
/// ```
pub fn kmalloc_reentrancy_guard() -> bool {
    cfg!(any(test, feature = "debug-reentrancy"))
}

/// Test hook (`debug-reentrancy` only): marks the calling thread as inside the allocator, so
/// that its next allocation aborts. Only useful in a child process that checks the abort.
#[cfg(feature = "debug-reentrancy")]
#[doc(hidden)]
pub fn kmalloc_reentrancy_simulate_enter() {
    imp::simulate_enter();
}
