//! The `pthread_atfork` handlers of the global instance: the prepare handler takes every lock
//! of the instance in lock order, the parent and child handlers release them, and the child
//! takes back page blocks that other (now gone) threads had detached for `madvise`.

use super::Kmem;
use crate::sync::global::{AtomicPtr, Ordering};
use core::ptr;

/// The instance whose locks the prepare handler took (null: none).
#[cfg(not(miri))]
static FORK_LOCKED: AtomicPtr<crate::instance::KmemShared> = AtomicPtr::new(ptr::null_mut());

/// Registers the `pthread_atfork` handlers, once. Called when the global instance is built.
#[cfg(not(miri))]
pub(crate) fn register_fork_handlers() {
    use crate::sync::global::AtomicUsize;
    static REGISTERED: AtomicUsize = AtomicUsize::new(0);
    if REGISTERED.swap(1, Ordering::AcqRel) != 0 {
        return;
    }
    // pthread_atfork only records the handlers (with libc's own allocator, not ours).
    // SAFETY: the three handlers are `extern "C"` functions with no arguments that live forever.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
}

#[cfg(not(miri))]
extern "C" fn fork_prepare() {
    if let Some(k) = Kmem::global_if_ready() {
        let s = k.shared();
        s.fork_lock_all();
        FORK_LOCKED.store(s as *const _ as *mut _, Ordering::Relaxed);
    }
}

#[cfg(not(miri))]
extern "C" fn fork_release() {
    let s = FORK_LOCKED.swap(ptr::null_mut(), Ordering::Relaxed);
    if !s.is_null() {
        // `s` is the global instance, which lives forever; in the child only this thread exists.
        // SAFETY: this thread's prepare handler took every lock of `s`.
        unsafe { (*s).fork_unlock_all() };
    }
}

#[cfg(not(miri))]
extern "C" fn fork_parent() {
    fork_release();
}

#[cfg(not(miri))]
extern "C" fn fork_child() {
    let s = FORK_LOCKED.load(Ordering::Relaxed);
    // rseq mode: membarrier registrations belong to the address space; register the child's
    // (no slot is stopped in the child: stops happen under slot locks, all held across fork).
    crate::cpu::percpu::after_fork_child();
    fork_release();
    if !s.is_null() {
        // Blocks other threads were releasing are still detached: take them back.
        // SAFETY: `s` is the global instance, which lives forever.
        unsafe { (*s).fork_child_reclaim() };
    }
}
