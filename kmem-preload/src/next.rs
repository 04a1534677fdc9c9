//! Foreign pointers: memory kmem did not allocate (the dynamic loader's or libc's before kmem
//! was loaded, `__libc_malloc`'s, or another allocator's, such as the jemalloc that Debian's
//! redis-server links while kmem is preloaded in front of it) goes back to the *next*
//! allocator in the symbol search order: `dlsym(RTLD_NEXT, "free")` and its siblings, resolved
//! once while kmem initialises (any allocation `dlsym` makes is served by the bootstrap arena).
//! Each routed call is counted and reported with `KMEM_SHOW_STATS`. If there is no next
//! allocator (a static program), a foreign free cannot be honoured safely: the pointer is
//! leaked, and counted separately.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

static FREE: AtomicUsize = AtomicUsize::new(0);
static REALLOC: AtomicUsize = AtomicUsize::new(0);
static USABLE: AtomicUsize = AtomicUsize::new(0);

/// Foreign frees routed to the next allocator.
pub(crate) static FOREIGN_FREES: AtomicUsize = AtomicUsize::new(0);
/// Foreign reallocs routed to the next allocator.
pub(crate) static FOREIGN_REALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Foreign `malloc_usable_size` calls routed to the next allocator.
pub(crate) static FOREIGN_USABLE: AtomicUsize = AtomicUsize::new(0);
/// Foreign frees that could not be routed (no next allocator): leaked.
pub(crate) static FOREIGN_LEAKED: AtomicUsize = AtomicUsize::new(0);

fn lookup(name: &CStr) -> usize {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other preconditions.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
}

/// Resolves the next allocator's `free`, `realloc` and `malloc_usable_size`.
pub(crate) fn resolve() {
    FREE.store(lookup(c"free"), Ordering::Release);
    REALLOC.store(lookup(c"realloc"), Ordering::Release);
    USABLE.store(lookup(c"malloc_usable_size"), Ordering::Release);
}

/// Frees a foreign pointer with the next allocator.
///
/// # Safety
/// `p` is a live allocation of the next allocator, given back by the caller.
#[cold]
pub(crate) unsafe fn free(p: *mut c_void) {
    let f = FREE.load(Ordering::Acquire);
    if f == 0 {
        FOREIGN_LEAKED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    FOREIGN_FREES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `f` is the address of the next object's `free` (dlsym), whose C signature this is.
    let f: unsafe extern "C" fn(*mut c_void) = unsafe { core::mem::transmute(f) };
    // SAFETY: caller contract.
    unsafe { f(p) }
}

/// Reallocates a foreign pointer with the next allocator (null with `ENOMEM` if there is none).
///
/// # Safety
/// As C `realloc` for a live allocation of the next allocator.
#[cold]
pub(crate) unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    let f = REALLOC.load(Ordering::Acquire);
    if f == 0 {
        crate::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    FOREIGN_REALLOCS.fetch_add(1, Ordering::Relaxed);
    type Realloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
    // SAFETY: the next object's `realloc` (dlsym), with its C signature.
    let f: Realloc = unsafe { core::mem::transmute(f) };
    // SAFETY: caller contract.
    unsafe { f(p, size) }
}

/// `malloc_usable_size` of a foreign pointer by the next allocator (0 if there is none).
///
/// # Safety
/// `p` is a live allocation of the next allocator.
#[cold]
pub(crate) unsafe fn usable_size(p: *mut c_void) -> usize {
    let f = USABLE.load(Ordering::Acquire);
    if f == 0 {
        return 0;
    }
    FOREIGN_USABLE.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the next object's `malloc_usable_size` (dlsym), with its C signature.
    let f: unsafe extern "C" fn(*mut c_void) -> usize = unsafe { core::mem::transmute(f) };
    // SAFETY: caller contract.
    unsafe { f(p) }
}
