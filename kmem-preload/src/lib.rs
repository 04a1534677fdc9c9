//! `libkmem.so`: kmem's kmalloc behind the C `malloc` family, so that any dynamically linked
//! program runs on kmem with `LD_PRELOAD=libkmem.so` (or by linking it).
//!
//! Exports `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size` and C23's
//! `free_sized` and `free_aligned_sized`, with glibc's contracts (see each function and
//! README.md, "Use from C / LD_PRELOAD"). The memory comes from `kmem::cabi` (kmem's
//! `src/kmalloc/cabi.rs`), which finds what a pointer is from the pointer alone in O(1);
//! pointers it does not own are routed to the next allocator (`next.rs`); allocations made
//! while kmem itself is being built come from a static bootstrap arena (`boot.rs`);
//! `KMEM_SHOW_STATS=1` prints statistics at exit (`stats.rs`).
//!
//! # Rules
//!
//! No function here panics or unwinds (a panic inside an `extern "C"` function aborts the
//! process: Rust never unwinds across it), and none allocates through Rust's global allocator
//! on the allocation paths. This library has no `#[global_allocator]`: its only Rust-side
//! allocations (the exit report in `stats.rs`) go through Rust's default `System` allocator,
//! which calls `malloc`, that is, this library's own export (kmem), outside any kmem path.
//! `errno` is set as glibc sets it: `ENOMEM` on exhaustion or overflow, `EINVAL` for a bad
//! alignment (`posix_memalign` returns the code instead, leaving `errno` alone on success).

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod boot;
mod next;
mod stats;

use boot::{gate, in_arena, ready, Gate};
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::Ordering;
use kmem_core::cabi;

/// The alignment `malloc` guarantees for any size (`alignof(max_align_t)`), as `memalign`
/// treats smaller alignments.
const MALLOC_ALIGNMENT: usize = 16;

/// Sets the calling thread's `errno`.
#[inline]
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// The result of an allocation: null sets `ENOMEM`.
#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// `size` bytes aligned to `align` (a power of two) from kmem, or from the bootstrap arena
/// when called by the thread that is building kmem.
#[inline(always)]
fn alloc(size: usize, align: usize, zero: bool) -> *mut c_void {
    if ready() || gate() == Gate::Kmem {
        let p = if align <= 8 {
            if zero {
                cabi::calloc(1, size)
            } else {
                cabi::malloc(size)
            }
        } else {
            // Aligned memory is zeroed only for `calloc`, which never asks for more than 8.
            cabi::aligned(align, size)
        };
        or_enomem(p)
    } else {
        // The arena starts zeroed and is never reused.
        or_enomem(boot::arena_alloc(size, align))
    }
}

/// `malloc(size)`: at least `size` bytes, 16-byte aligned above 8 bytes (8 at most 8); a
/// unique pointer for 0; null with `ENOMEM` when exhausted or above `PTRDIFF_MAX`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // The fast path first (`cabi::malloc_fast`: one pop from the class's sheaf), with nothing
    // to keep across a call, so it needs no stack frame; everything else — not ready, an
    // empty sheaf, exhaustion and its `errno` — is the whole path, out of line.
    if ready() {
        let p = cabi::malloc_fast(size);
        if !p.is_null() {
            return p.cast();
        }
    }
    malloc_slow(size)
}

/// [`malloc`] when its fast path did not serve (out of line; a C-ABI function, so that the
/// call to it is a tail call from one).
#[inline(never)]
extern "C" fn malloc_slow(size: usize) -> *mut c_void {
    alloc(size, 8, false)
}

/// `calloc(n, size)`: `n * size` zeroed bytes; null with `ENOMEM` if the product overflows.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(bytes) => alloc(bytes, 8, true),
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// Frees `p` (kmem's, the bootstrap arena's, or a foreign pointer handed to the next
/// allocator).
///
/// # Safety
/// `p` is null or a live allocation not used again.
#[inline(always)]
unsafe fn free_any(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    if in_arena(p.cast()) {
        boot::ARENA_FREES.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: caller contract; kmem does nothing to a pointer it does not own.
    if !unsafe { cabi::free(p.cast()) } {
        if !ready() {
            // Foreign memory freed before the first allocation: resolve the next allocator
            // first (this may build kmem; a free from inside that is fine either way).
            let _ = gate();
        }
        // SAFETY: not kmem's, not the arena's: the next allocator's (caller contract).
        unsafe { next::free(p) }
    }
}

/// `free(p)`: null is a no-op.
///
/// # Safety
/// `p` is null or a live allocation not used again.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // The fast path first (`cabi::free_fast`: a kmalloc object pushed onto its sheaf), with
    // nothing to keep across a call; everything else — null, the arena, foreign memory, the
    // slow paths — out of line.
    // SAFETY: forwarded contract; free_fast does nothing to a pointer it does not free.
    if unsafe { cabi::free_fast(p.cast()) } {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { free_any_slow(p) }
}

/// [`free`] when its fast path did not serve (out of line; a C-ABI function, so that the
/// call to it is a tail call from one).
///
/// # Safety
/// As [`free`].
#[inline(never)]
unsafe extern "C" fn free_any_slow(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_any(p) }
}

/// The usable size of `p` (0 for null), whoever allocated it.
///
/// # Safety
/// `p` is null or a live allocation.
unsafe fn usable(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    if in_arena(p.cast()) {
        // SAFETY: an arena allocation.
        return unsafe { boot::arena_size(p.cast()) };
    }
    match cabi::usable_size(p.cast()) {
        Some(n) => n,
        None => {
            if !ready() {
                let _ = gate();
            }
            // SAFETY: not kmem's, not the arena's: the next allocator's (caller contract).
            unsafe { next::usable_size(p) }
        }
    }
}

/// `malloc_usable_size(p)`: the bytes usable at `p` (at least what was asked), 0 for null.
///
/// # Safety
/// `p` is null or a live allocation.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded contract.
    unsafe { usable(p) }
}

/// `realloc(p, size)`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and
/// returns null (glibc's behaviour, `errno` untouched); on exhaustion (or a size above
/// `PTRDIFF_MAX`) null with `ENOMEM` and `p` untouched; on success `errno` untouched (even
/// when a large block moved after `mremap` refused to grow it in place).
///
/// # Safety
/// `p` is null or a live allocation, used only through the result afterwards (or still `p`
/// on failure).
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc(size, 8, false);
    }
    if size == 0 {
        // SAFETY: caller contract.
        unsafe { free_any(p) };
        return null_mut();
    }
    if in_arena(p.cast()) {
        // Out of the arena for good (or into a new arena allocation, while initialising).
        let q = alloc(size, 8, false);
        if !q.is_null() {
            // SAFETY: an arena allocation of `arena_size` bytes; `q` holds `size`; distinct.
            unsafe {
                let old = boot::arena_size(p.cast());
                core::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old.min(size));
            }
            boot::ARENA_FREES.fetch_add(1, Ordering::Relaxed);
        }
        return q;
    }
    // A successful realloc leaves errno as it found it (glibc): moving a large mapping first
    // tries `mremap` in place, whose refusal sets it.
    // SAFETY: __errno_location is always valid.
    let saved = unsafe { *libc::__errno_location() };
    // SAFETY: caller contract.
    match unsafe { cabi::realloc(p.cast(), size) } {
        Ok(q) if !q.is_null() => {
            set_errno(saved);
            q.cast()
        }
        Ok(q) => or_enomem(q),
        Err(cabi::NotKmem) => {
            if !ready() {
                let _ = gate();
            }
            // SAFETY: the next allocator's allocation (caller contract).
            unsafe { next::realloc(p, size) }
        }
    }
}

/// `reallocarray(p, n, size)`: `realloc(p, n * size)`, or null with `ENOMEM` (and `p`
/// untouched) if the product overflows.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(bytes) => unsafe { realloc(p, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// `posix_memalign(out, align, size)`: `EINVAL` unless `align` is a power of two and a multiple
/// of `sizeof(void *)`; `ENOMEM` when exhausted; 0 with `*out` set otherwise (a unique pointer
/// for size 0). `*out` is untouched on failure, `errno` is untouched on every path.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // SAFETY: __errno_location is always valid.
    let saved = unsafe { *libc::__errno_location() };
    let p = alloc(size, align, false);
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: caller contract.
    unsafe { *out = p };
    0
}

/// `aligned_alloc(align, size)`: `size` bytes aligned to `align`, which must be a power of two
/// (else null with `EINVAL`, as glibc 2.38 and later and C17 require); null with `ENOMEM` when
/// exhausted. `size` need not be a multiple of `align` (C17).
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    alloc(size, align.max(MALLOC_ALIGNMENT), false)
}

/// `memalign(align, size)`, as glibc: an alignment up to 16 is `malloc`'s (16 bytes); one above
/// `SIZE_MAX / 2 + 1` is `EINVAL`; one that is not a power of two is rounded up to the next.
fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    let align = align.max(MALLOC_ALIGNMENT).next_power_of_two();
    alloc(size, align, false)
}

/// `memalign(align, size)` (see `memalign_impl`).
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// `valloc(size)`: `memalign(page size, size)`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign_impl(page_size(), size)
}

/// The OS page size, read when kmem initialises (which this call triggers if needed).
fn page_size() -> usize {
    if !ready() {
        let _ = gate();
    }
    boot::PAGE_SIZE.load(Ordering::Relaxed)
}

/// `pvalloc(size)`: `size` rounded up to a page multiple, page-aligned; null with `ENOMEM` if
/// the rounding overflows.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_add(page - 1) {
        Some(s) => memalign_impl(page, s & !(page - 1)),
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// Aborts with a message naming a C23 sized-free contract violation kmem detected.
#[cold]
fn bad_sized_free(func: &str, what: &str) -> ! {
    stats::write_err(&["kmem: ", func, ": ", what, "\n"]);
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// C23 `free_sized(p, size)`: `free(p)` for memory from `malloc`, `calloc` or `realloc` of
/// `size` bytes. A `size` larger than the allocation's usable size is a caller bug that kmem
/// detects (for its own memory) and aborts on.
///
/// # Safety
/// As [`free`], and `size` is the size `p` was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    if !in_arena(p.cast()) {
        if let Some(usable) = cabi::usable_size(p.cast()) {
            if size > usable {
                bad_sized_free("free_sized", "the size is larger than the allocation");
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_any(p) }
}

/// C23 `free_aligned_sized(p, align, size)`: `free(p)` for memory from `aligned_alloc(align,
/// size)`. A pointer not aligned to `align`, or a `size` larger than the allocation, is a caller
/// bug that kmem detects (for its own memory) and aborts on.
///
/// # Safety
/// As [`free`], with `align` and `size` those `p` was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    if p.is_null() {
        return;
    }
    if !in_arena(p.cast()) {
        if let Some(usable) = cabi::usable_size(p.cast()) {
            if !align.is_power_of_two() || p as usize & (align - 1) != 0 {
                bad_sized_free(
                    "free_aligned_sized",
                    "the pointer is not aligned to the alignment given",
                );
            }
            if size > usable {
                bad_sized_free(
                    "free_aligned_sized",
                    "the size is larger than the allocation",
                );
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_any(p) }
}

/// `KMEM_BOOTSTRAP_SELFTEST=1`: called by the initialising thread while kmem is being built,
/// so every call below must be served by the bootstrap arena; prints the verdict (the C test
/// in `kmem-preload/tests/` checks it) and aborts on a failure.
fn selftest_bootstrap() {
    // SAFETY: the C contracts: sizes are small, pointers are used within their sizes and freed once.
    let ok = unsafe {
        let a = malloc(100);
        let b = calloc(10, 10);
        let mut c: *mut c_void = null_mut();
        let rc = posix_memalign(&mut c, 256, 1000);
        let zeroed = !b.is_null() && (0..100).all(|i| *b.cast::<u8>().add(i) == 0);
        let all_in = [a, b, c].iter().all(|&p| in_arena(p.cast()));
        let aligned = (c as usize).is_multiple_of(256);
        a.cast::<u8>().write_bytes(7, 100);
        let a2 = realloc(a, 200);
        let kept = in_arena(a2.cast()) && *a2.cast::<u8>().add(99) == 7;
        let sizes = malloc_usable_size(a2) == 200 && malloc_usable_size(c) == 1000;
        free(a2);
        free(b);
        free(c);
        rc == 0 && zeroed && all_in && aligned && kept && sizes
    };
    if ok {
        stats::write_err(&["kmem: bootstrap self-test passed (4 allocations from the arena)\n"]);
    } else {
        bad_sized_free(
            "bootstrap self-test",
            "an allocation during initialisation misbehaved",
        );
    }
}
