//! kmem: a user-space, SLUB-style, lockless slab allocator.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod os;
mod page;
mod sync;

pub use error::KmemError;
pub use page::{FaultInjection, PageStats, STATS_ORDERS};

/// The longest cache name accepted.
pub const MAX_CACHE_NAME: usize = 64;

/// Writes each part to stderr without allocating, then aborts the process.
///
/// Used where memory is already corrupt (a double free, a foreign pointer) or where continuing
/// could corrupt it: unwinding out of an allocator is not an option.
#[cold]
#[inline(never)]
pub(crate) fn abort_msg(parts: &[&str]) -> ! {
    for p in parts {
        // SAFETY: writing a valid byte slice to fd 2; no allocation, async-signal-safe.
        unsafe {
            libc::write(2, p.as_ptr().cast(), p.len());
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
    std::process::abort()
}
