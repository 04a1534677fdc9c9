//! kmalloc without layouts: the core of a C `malloc` family (the `kmem-preload` crate exports
//! `malloc`, `free` & co. on top of it, and sets `errno`).
//!
//! C's `free(p)` has no size, so everything here finds what `p` is from the pointer alone, in
//! O(1), without ever reading memory in front of a pointer kmem does not own:
//!
//! 1. the chunk radix table (`virt_to_page`: two loads) says whether `p` lies in a kmem chunk;
//!    if so its page descriptor says what it is: a slab (whose owning cache must be one of the
//!    `kmalloc-*` caches, and `p` the start of one of its objects), or the head of an
//!    allocated page block (its order is in the descriptor). Anything else inside a chunk (a
//!    free block, the inside of a block, an object of a cache that is not a kmalloc cache) is
//!    a bad free and aborts with a message, as glibc's `free(): invalid pointer` does;
//! 2. otherwise the table of kmalloc's OS mappings (`huge.rs`: mappings above 4 MiB start at a
//!    multiple of 4 MiB and are registered with their length) says whether `p` starts one;
//! 3. otherwise `p` is not kmem's: `false` / `None` / `Err(NotKmem)`, and the caller routes it (the
//!    preload library hands it to the next allocator, `dlsym(RTLD_NEXT, "free")`).
//!
//! Alignment: `malloc(n)` asks for alignment 8; every class above 8 bytes is at least 16-byte
//! aligned (its natural alignment), page blocks are page-aligned and mappings 4 MiB-aligned, so
//! every result of more than 8 bytes is aligned to 16 (`alignof(max_align_t)` on x86_64 and
//! aarch64), and results of at most 8 bytes to 8, as jemalloc, mimalloc and tcmalloc do.
//! `malloc(0)` is `malloc(1)`: a unique pointer that must be freed.
//!
//! Nothing here allocates through the global allocator, panics, or touches a thread-local
//! with a destructor (the rules of [`Kmalloc`](crate::Kmalloc), whose re-entrancy guard these
//! entry points enter too).

use super::paths::{kmalloc, kmalloc_fast, kzalloc};
use super::*;
use crate::os::Num;
use crate::page::{page_address, virt_to_page, Page, PageKind};
use crate::slub::{CacheInner, PcsView};
use core::ptr::NonNull;

/// The alignment `malloc` asks for (see the module docs: results above 8 bytes are 16-aligned).
const MALLOC_ALIGN: usize = 8;

/// What a pointer is, found from the pointer alone.
enum Found {
    /// An object of kmalloc class cache `cache`, in the slab whose head descriptor is given.
    Object(&'static CacheInner, &'static Page),
    /// The head of an allocated page block of this many pages.
    Block(&'static Page, usize),
    /// The start of a kmalloc OS mapping of this length and alignment.
    Mapping(usize, usize),
    /// Not kmem's memory.
    Foreign,
}

/// Aborts on a C free/realloc/usable-size of a pointer inside kmem memory that is not the start
/// of a live kmalloc allocation.
#[cold]
#[inline(never)]
fn invalid(func: &str, ptr: *mut u8, what: &str) -> ! {
    crate::os::abort_msg(&[
        "kmem: ",
        func,
        "(",
        Num::hex(ptr as u64).as_str(),
        "): invalid pointer: ",
        what,
    ])
}

/// What `ptr` (non-null) is; aborts if it is inside kmem memory but not a live allocation.
#[inline(always)]
fn find(func: &str, ptr: *mut u8) -> Found {
    let Some(page) = virt_to_page(ptr) else {
        return match super::huge::lookup(ptr as usize) {
            Some((bytes, align)) => Found::Mapping(bytes, align),
            None => Found::Foreign,
        };
    };
    let info = page.info();
    match info.kind() {
        PageKind::Slab => {
            let owner = page.cache.load(Ordering::Acquire) as *const CacheInner;
            if owner.is_null() {
                invalid(func, ptr, "a slab page without a cache");
            }
            // A slab's cache outlives its slabs; kmalloc caches are never destroyed, and a
            // cache that is not one is refused just below before it is used for anything else.
            // SAFETY: the owner of a live slab is a live cache.
            let cache = unsafe { &*owner };
            let is_kmalloc = cache.is_kmalloc.load(crate::sync::Ordering::Acquire);
            if !is_kmalloc {
                invalid(
                    func,
                    ptr,
                    "an object of a kmem cache that is not a kmalloc cache",
                );
            }
            // `check_valid_pointer`, as `owning_slab` does it for every kfree (here with the
            // descriptor already in hand).
            let valid = cache.starts_object(info.order(), ptr);
            // A debug cache's objects start `red_left_pad` into their slots (KMEM_DEBUG).
            if !(valid || cache.debug && cache.debug_valid_pointer(page, ptr as usize)) {
                invalid(
                    func,
                    ptr,
                    "an interior pointer of a kmalloc object (or past a slab's last object)",
                );
            }
            Found::Object(cache, page)
        }
        PageKind::Block => {
            if page_address(page) != ptr {
                invalid(func, ptr, "inside a kmem page block, not at its start");
            }
            Found::Block(page, info.block_pages())
        }
        PageKind::Free | PageKind::Pcp => invalid(func, ptr, "a free kmem page (double free?)"),
        _ => invalid(func, ptr, "inside kmem page memory that is not allocated"),
    }
}

/// The layout `malloc(size)` allocates with, or `None` when `size` is too large for any.
#[inline(always)]
fn malloc_layout(size: usize, align: usize) -> Option<Layout> {
    Layout::from_size_align(size.max(1), align.max(MALLOC_ALIGN)).ok()
}

/// Builds the global instance and every kmalloc cache now, and runs the CPU-id probe, so that
/// no later call initialises anything. False if the instance could not be built. The preload
/// library calls this first, while it serves any allocation the initialisation itself makes
/// (from `dlsym`, `pthread_atfork`) from its bootstrap arena.
pub fn init() -> bool {
    let Some(k) = Kmem::try_global() else {
        return false;
    };
    let _ = k.current_slot();
    kmalloc_cache(0).is_some()
}

/// `malloc(size)` without `errno`: at least `size` bytes (a unique pointer for 0), aligned as
/// the module docs say; null when memory is exhausted or `size` exceeds `isize::MAX`.
///
/// ```
/// let p = kmem::cabi::malloc(24);
/// assert!(!p.is_null() && p as usize % 16 == 0);
/// assert!(kmem::cabi::usable_size(p).unwrap() >= 24);
/// // SAFETY: `p` came from kmem::cabi::malloc and is freed once.
/// assert!(unsafe { kmem::cabi::free(p) });
/// ```
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    let _g = super::reentry::enter();
    match malloc_layout(size, MALLOC_ALIGN) {
        Some(l) => kmalloc(l, KmallocClasses::Spaced),
        None => ptr::null_mut(),
    }
}

/// The inline part of [`malloc`] alone: at least `size` bytes popped from their class's sheaf
/// in one sequence (rseq mode), or null having done nothing — every other case (the first
/// use, an empty sheaf, the locked mode, a size above the classes, exhaustion) is [`malloc`]'s,
/// which the caller then calls. For a caller with its own fallback work (`libkmem.so`'s
/// `malloc` sets `errno`): with this first, its fast path has nothing to keep across a call
/// and needs no stack frame.
///
/// ```
/// let mut p = kmem::cabi::malloc_fast(64);
/// if p.is_null() {
///     p = kmem::cabi::malloc(64);
/// }
/// assert!(!p.is_null());
/// // SAFETY: `p` came from kmem::cabi::malloc_fast or malloc.
/// unsafe { kmem::cabi::free(p) };
/// ```
#[inline(always)]
pub fn malloc_fast(size: usize) -> *mut u8 {
    let _g = super::reentry::enter();
    match malloc_layout(size, MALLOC_ALIGN) {
        Some(l) => kmalloc_fast(l, KmallocClasses::Spaced),
        None => ptr::null_mut(),
    }
}

/// `calloc(n, size)` without `errno`: `n * size` zeroed bytes; null on overflow or exhaustion.
///
/// ```
/// let p = kmem::cabi::calloc(10, 10);
/// // SAFETY: 100 zeroed bytes.
/// assert!(unsafe { core::slice::from_raw_parts(p, 100) }.iter().all(|&b| b == 0));
/// // SAFETY: `p` came from kmem::cabi::calloc.
/// unsafe { kmem::cabi::free(p) };
/// assert!(kmem::cabi::calloc(usize::MAX, 2).is_null());
/// ```
#[inline]
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let _g = super::reentry::enter();
    match n
        .checked_mul(size)
        .and_then(|b| malloc_layout(b, MALLOC_ALIGN))
    {
        Some(l) => kzalloc(l, KmallocClasses::Spaced),
        None => ptr::null_mut(),
    }
}

/// Memory for `size` bytes aligned to `align`, which must be a power of two (callers check
/// and set `EINVAL`); null when exhausted or too large.
///
/// ```
/// let p = kmem::cabi::aligned(8192, 100);
/// assert_eq!(p as usize % 8192, 0);
/// // SAFETY: `p` came from kmem::cabi::aligned.
/// unsafe { kmem::cabi::free(p) };
/// ```
#[inline]
pub fn aligned(align: usize, size: usize) -> *mut u8 {
    let _g = super::reentry::enter();
    if !align.is_power_of_two() {
        return ptr::null_mut();
    }
    match malloc_layout(size, align) {
        Some(l) => kmalloc(l, KmallocClasses::Spaced),
        None => ptr::null_mut(),
    }
}

/// Frees `ptr` if kmem allocated it (true), or leaves it untouched and returns false if it is
/// not kmem's memory at all. Null is kmem's (a no-op, true). A pointer inside kmem memory that
/// is not a live allocation's start (a double or interior free) aborts with a message.
///
/// # Safety
/// If kmem allocated `ptr`, the caller owns it and never uses it again.
#[inline(always)]
pub unsafe fn free(ptr: *mut u8) -> bool {
    if ptr.is_null() {
        return true;
    }
    let _g = super::reentry::enter();
    // The fast path, inline and with no call: an object of a kmalloc cache (the checks of
    // `find`) pushed onto its cache's sheaf in one sequence. Anything else, or a push that
    // does not commit, is the whole path out of line, which checks again and reports.
    if let Some((idx, view)) = kmalloc_object_fast(ptr) {
        if kmalloc_push_on() && view.push(ptr as usize) {
            return true;
        }
        // SAFETY: forwarded contract; `ptr` passed the tag check for class `idx`.
        return unsafe { free_object(idx, ptr) };
    }
    // SAFETY: forwarded contract.
    unsafe { free_slow(ptr) }
}

/// The inline part of [`free`] alone: frees `ptr` and returns true if it is an object of a
/// kmalloc class whose sheaf took it in one sequence (rseq mode; the checks are `free`'s);
/// returns false having done nothing otherwise (null, a pointer kmem did not allocate, a page
/// block, the locked mode, a full sheaf...), and the caller then calls [`free`], which checks
/// again and does the rest. For a caller that keeps its own fallback (`libkmem.so`'s `free`
/// routes foreign pointers to the next allocator): with this first, its whole fast path needs
/// no stack frame, because nothing has to be kept across a call.
///
/// ```
/// let p = kmem::cabi::malloc(64);
/// // SAFETY: `p` came from kmem::cabi::malloc and is freed once, by one of the two calls.
/// if !unsafe { kmem::cabi::free_fast(p) } {
///     // SAFETY: as above; free_fast did nothing.
///     assert!(unsafe { kmem::cabi::free(p) });
/// }
/// let mut on_stack = 0u8;
/// // SAFETY: not kmem's: free_fast does nothing to it.
/// assert!(!unsafe { kmem::cabi::free_fast(&mut on_stack) });
/// ```
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub unsafe fn free_fast(ptr: *mut u8) -> bool {
    let _g = super::reentry::enter();
    match kmalloc_object_fast(ptr) {
        Some((_, view)) => kmalloc_push_on() && view.push(ptr as usize),
        None => false,
    }
}

/// [`free`] of a kmalloc object that passed the tag check, when the inline push did not
/// commit or the mode has none (the locked mode, the cpu-slab design): the whole `slab_free`
/// on the slab heading the page's block (a tagged page is a page of a live slab of class
/// `idx`).
///
/// # Safety
/// As [`free`]; `ptr` passed `kmalloc_object_fast` for class `idx`.
#[inline(never)]
unsafe fn free_object(idx: usize, ptr: *mut u8) -> bool {
    let p = KMALLOC_CACHES[idx].load(Ordering::Acquire);
    if p.is_null() {
        // SAFETY: forwarded contract.
        return unsafe { free_slow(ptr) };
    }
    // SAFETY: published kmalloc caches are never destroyed.
    let cache = unsafe { &*p };
    // The slab only if the sheaves do not take the object (a tagged page is a page of a live
    // slab of this class; the cache's full check otherwise, as `kfree_slab`'s).
    let slab = || match crate::page::virt_to_page_allocated(ptr) {
        Some(slab) => slab as *const Page as *mut Page,
        None => cache.owning_slab(ptr),
    };
    // SAFETY: `ptr` is an allocated object of a slab of `cache` (the tag check), given back once.
    unsafe { cache.slab_free_after_push(ptr as usize, slab) };
    true
}

/// [`free`] when the inline path did not serve.
///
/// # Safety
/// As [`free`].
#[inline(never)]
unsafe fn free_slow(ptr: *mut u8) -> bool {
    // SAFETY: forwarded contract.
    unsafe { free_found(ptr, find("free", ptr)) }
}

/// The kmalloc class `ptr` is an object of, and its view, if its page's slab tag
/// (`page::slab_tag`) names a kmalloc class and `ptr` starts one of that slab's objects: the
/// checks of `find` from the dense tag table, without the descriptor and without a call.
/// `None` for everything else, which `find` then sorts out and reports.
#[inline(always)]
fn kmalloc_object_fast(ptr: *mut u8) -> Option<(usize, &'static PcsView)> {
    let tag = crate::page::slab_tag(ptr);
    let class = usize::from(tag & crate::page::TAG_ID_MAX);
    if class == 0 || class > NR_KMALLOC {
        return None;
    }
    let view = kmalloc_view(class - 1)?;
    // A slab of the class's first order (a fallback order is `find`'s), and an object start.
    (tag == view.tag() && view.starts_object(ptr)).then_some((class - 1, view))
}

/// Frees `ptr`, found to be `found`.
///
/// # Safety
/// As [`free`].
#[inline(always)]
unsafe fn free_found(ptr: *mut u8, found: Found) -> bool {
    match found {
        Found::Object(cache, slab) => {
            // `find` made the checks every kfree makes (`owning_slab`): the page is a slab of
            // this cache and `ptr` starts one of its objects.
            let slab = slab as *const Page as *mut Page;
            // SAFETY: `ptr` is an allocated object of `slab` that the caller gives back.
            unsafe { cache.slab_free(slab, ptr as usize) };
            true
        }
        Found::Block(page, pages) => {
            let Some(k) = Kmem::try_global() else {
                invalid(
                    "free",
                    ptr,
                    "a page block, but the global instance does not exist",
                );
            };
            let s = k.shared();
            if page.node() >= s.nr_nodes {
                invalid("free", ptr, "a page block of another kmem instance");
            }
            // `free_pages_exact` re-checks ownership, node and size under its lock.
            // SAFETY: `page` heads an allocated block of `pages` pages that the caller gives back.
            unsafe {
                s.node_pages(page.node())
                    .free_pages_exact(NonNull::from(page), pages)
            };
            true
        }
        Found::Mapping(bytes, align) => {
            // SAFETY: `ptr` starts this registered mapping, which the caller gives back.
            unsafe { super::huge::unmap(ptr, bytes, align) };
            true
        }
        Found::Foreign => false,
    }
}

/// The bytes usable at `ptr` (at least what was asked for), `Some(0)` for null, or `None` if
/// `ptr` is not kmem's memory. Aborts like [`free`] on a pointer inside kmem memory that is not
/// a live allocation's start.
///
/// ```
/// let p = kmem::cabi::malloc(100);
/// assert_eq!(kmem::cabi::usable_size(p), Some(112)); // the kmalloc-112 class
/// // SAFETY: `p` came from kmem::cabi::malloc.
/// unsafe { kmem::cabi::free(p) };
/// let mut on_stack = 0u8;
/// assert_eq!(kmem::cabi::usable_size(&mut on_stack), None);
/// ```
#[inline]
pub fn usable_size(ptr: *mut u8) -> Option<usize> {
    if ptr.is_null() {
        return Some(0);
    }
    let _g = super::reentry::enter();
    usable_found(find("malloc_usable_size", ptr))
}

fn usable_found(found: Found) -> Option<usize> {
    match found {
        Found::Object(cache, _) => Some(cache.geo.object_size),
        Found::Block(_, pages) => Some(PAGE_SIZE * pages),
        Found::Mapping(bytes, _) => Some(bytes),
        Found::Foreign => None,
    }
}

/// Why [`realloc`] did not handle a pointer.
#[derive(Debug, PartialEq, Eq)]
pub struct NotKmem;

/// `realloc(ptr, size)` for non-null `ptr` and `size > 0`, without `errno`: `Ok(ptr)` when the
/// allocation already fits (an object at least `size` and less than `2 * size` bytes, the
/// same block order or mapping length) or a page block changes its page count in place;
/// otherwise a new allocation with the old contents (up to the smaller
/// size) and `ptr` freed. `Ok(null)` with `ptr` untouched when memory is exhausted;
/// `Err(NotKmem)` with nothing done when `ptr` is not kmem's memory.
///
/// ```
/// let p = kmem::cabi::malloc(10);
/// // SAFETY: `p` holds at least 10 bytes.
/// unsafe { p.write(42) };
/// // SAFETY: `p` came from kmem::cabi::malloc and is not used after the call.
/// let q = unsafe { kmem::cabi::realloc(p, 100_000) }.unwrap();
/// // SAFETY: the contents moved with the allocation.
/// assert_eq!(unsafe { q.read() }, 42);
/// // SAFETY: `q` came from kmem::cabi::realloc.
/// unsafe { kmem::cabi::free(q) };
/// ```
///
/// # Safety
/// If kmem allocated `ptr`, the caller owns it and uses only the result afterwards (or `ptr`
/// on `Ok(null)`).
pub unsafe fn realloc(ptr: *mut u8, size: usize) -> Result<*mut u8, NotKmem> {
    debug_assert!(!ptr.is_null() && size != 0);
    let _g = super::reentry::enter();
    let found = find("realloc", ptr);
    let Some(new) = malloc_layout(size, MALLOC_ALIGN) else {
        return match found {
            Found::Foreign => Err(NotKmem),
            _ => Ok(ptr::null_mut()),
        };
    };
    let old_usable = match (&found, kind_of(new, KmallocClasses::Spaced)) {
        (Found::Foreign, _) => return Err(NotKmem),
        (Found::Object(cache, _), _) => {
            let usable = cache.geo.object_size;
            // It still fits, and keeping it wastes at most half of it: no move (tcmalloc's and
            // mimalloc's rule). A buffer that shrinks a little at a time (redis's listpacks on
            // LPOP) is then copied once per halving, not once per class it crosses.
            if size <= usable && size >= usable / 2 {
                return Ok(ptr);
            }
            usable
        }
        (&Found::Block(page, n1), Kind::Pages(n2)) => {
            if n1 == n2 {
                return Ok(ptr);
            }
            if let Some(k) = Kmem::try_global() {
                let s = k.shared();
                if page.node() < s.nr_nodes {
                    let pages = s.node_pages(page.node());
                    // SAFETY: `page` heads an allocated block of `n1` pages of this node that the caller owns (found above).
                    if unsafe { pages.resize_exact(NonNull::from(page), n1, n2) } {
                        return Ok(ptr);
                    }
                }
            }
            PAGE_SIZE * n1
        }
        (&Found::Block(_, n1), _) => PAGE_SIZE * n1,
        (&Found::Mapping(bytes, _), Kind::Os { bytes: b2, .. }) if bytes == b2 => {
            return Ok(ptr);
        }
        (&Found::Mapping(bytes, align), Kind::Os { bytes: b2, .. }) => {
            // Moved by mremap, not copied (in place, or to a new address).
            // SAFETY: `ptr` starts this registered mapping, which the caller owns (found above).
            let q = unsafe { super::huge::remap(ptr, bytes, align, b2) };
            if !q.is_null() {
                return Ok(q);
            }
            bytes
        }
        (&Found::Mapping(bytes, _), _) => bytes,
    };
    let p = kmalloc(new, KmallocClasses::Spaced);
    if !p.is_null() {
        // SAFETY: both allocations are live, distinct, and at least this long.
        unsafe { ptr::copy_nonoverlapping(ptr, p, old_usable.min(size)) };
        // SAFETY: the caller gives `ptr` back (contract); it is the allocation found above.
        unsafe { free_found(ptr, found) };
    }
    Ok(p)
}

/// A page block of `pages` pages, for tests of block ownership.
#[cfg(all(test, not(loom)))]
pub(super) fn block_for_tests(pages: usize) -> *mut u8 {
    super::paths::alloc_block(pages, false)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    // 9 MiB of writes: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn every_kind_round_trips_through_the_pointer_alone() {
        for &size in &[
            0usize,
            1,
            8,
            9,
            24,
            100,
            192,
            4096,
            8192,
            8193,
            70_000,
            3 << 20,
            9 << 20,
        ] {
            let p = malloc(size);
            assert!(!p.is_null(), "malloc({size})");
            let align = if size <= 8 { 8 } else { 16 };
            assert_eq!(p as usize % align, 0, "malloc({size}) alignment");
            let usable = usable_size(p).unwrap();
            assert!(usable >= size.max(1), "usable {usable} < {size}");
            // SAFETY: `usable` bytes are ours.
            unsafe { ptr::write_bytes(p, 0xa5, usable) };
            // SAFETY: `p` came from `malloc`.
            assert!(unsafe { free(p) });
        }
    }

    #[test]
    // multi-MiB mappings: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn huge_mappings_are_registered_and_forgotten() {
        let p = malloc(5 << 20);
        assert_eq!(p as usize % crate::page::CHUNK_SIZE, 0);
        assert_eq!(
            super::super::huge::lookup(p as usize).map(|v| v.0),
            Some(5 << 20)
        );
        assert_eq!(usable_size(p), Some(5 << 20));
        // SAFETY: `p` came from `malloc`.
        assert!(unsafe { free(p) });
        assert_eq!(super::super::huge::lookup(p as usize), None);
        let q = aligned(16 << 20, 5 << 20);
        assert_eq!(q as usize % (16 << 20), 0);
        // SAFETY: `q` came from `aligned`.
        assert!(unsafe { free(q) });
    }

    #[test]
    fn foreign_pointers_are_not_touched() {
        let mut local = [0u8; 64];
        let p = local.as_mut_ptr();
        assert_eq!(usable_size(p), None);
        // SAFETY: kmem does not own `p`, so `free` must not touch it.
        assert!(!unsafe { free(p) });
        // SAFETY: as above.
        assert_eq!(unsafe { realloc(p, 10) }, Err(NotKmem));
        let b = Box::new([7u8; 4096]);
        let bp = Box::into_raw(b);
        // The test binary's global allocator is the system one.
        // SAFETY: not kmem's.
        assert!(!unsafe { free(bp.cast()) });
        // SAFETY: `bp` came from `Box::into_raw` and is still live.
        drop(unsafe { Box::from_raw(bp) });
    }

    #[test]
    // 12 MiB copies: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn realloc_keeps_contents_across_every_kind() {
        let sizes = [5usize, 100, 5000, 100_000, 5 << 20, 12 << 20, 300, 1];
        let mut p = malloc(1);
        // SAFETY: one byte is ours.
        unsafe { p.write(0x5a) };
        for &s in &sizes {
            // SAFETY: `p` is ours and not used after the call.
            let q = unsafe { realloc(p, s) }.unwrap();
            assert!(!q.is_null());
            // SAFETY: the first byte moved with the allocation.
            assert_eq!(unsafe { q.read() }, 0x5a, "after realloc to {s}");
            assert!(usable_size(q).unwrap() >= s);
            p = q;
        }
        // SAFETY: ours.
        assert!(unsafe { free(p) });
    }

    #[test]
    fn objects_shrink_in_place_down_to_half_their_size() {
        let p = malloc(1000); // kmalloc-1k
        assert_eq!(usable_size(p), Some(1024));
        // SAFETY: 1000 bytes are ours.
        unsafe { p.add(510).write(7) };
        for s in [1024, 900, 600, 512] {
            // SAFETY: ours, and not used after the call.
            let q = unsafe { realloc(p, s) }.unwrap();
            assert_eq!(q, p, "realloc to {s} of a 1024-byte object stays in place");
            assert_eq!(usable_size(q), Some(1024));
        }
        // Below half: it moves to the class that fits, with its contents.
        // SAFETY: ours, and not used after the call.
        let q = unsafe { realloc(p, 511) }.unwrap();
        assert_ne!(q, p);
        assert_eq!(usable_size(q), Some(512));
        // SAFETY: the first 511 bytes moved.
        assert_eq!(unsafe { q.add(510).read() }, 7);
        // Growing past the object moves too.
        // SAFETY: ours, and not used after the call.
        let r = unsafe { realloc(q, 513) }.unwrap();
        assert_ne!(r, q);
        assert_eq!(usable_size(r), Some(640));
        // SAFETY: ours.
        assert!(unsafe { free(r) });
    }

    #[test]
    fn page_blocks_are_exact_and_shrink_in_place() {
        let p = malloc(20_000); // 5 pages, not 8
        assert_eq!(usable_size(p), Some(5 * PAGE_SIZE));
        // SAFETY: ours, and not used after the call.
        let q = unsafe { realloc(p, 10_000) }.unwrap(); // 3 pages: shrinks in place
        assert_eq!(p, q);
        assert_eq!(usable_size(q), Some(3 * PAGE_SIZE));
        // SAFETY: ours.
        assert!(unsafe { free(q) });
    }

    #[test]
    fn a_page_block_is_found_by_its_head_only() {
        let b = block_for_tests(3);
        assert_eq!(usable_size(b), Some(3 * PAGE_SIZE));
        // SAFETY: the block is ours.
        assert!(unsafe { free(b) });
    }

    #[test]
    fn calloc_zeroes_and_checks_overflow() {
        let p = calloc(3, 1000);
        // SAFETY: 3000 bytes are ours.
        assert!(unsafe { core::slice::from_raw_parts(p, 3000) }
            .iter()
            .all(|&b| b == 0));
        // SAFETY: ours.
        unsafe { free(p) };
        assert!(calloc(usize::MAX / 2, 3).is_null());
        assert!(malloc(usize::MAX).is_null());
        assert!(aligned(3, 10).is_null());
    }

    #[test]
    // Miri cannot spawn processes.
    #[cfg_attr(miri, ignore)]
    fn bad_frees_abort_in_a_child() {
        // Run in a child process: the parent re-runs this test binary with a scenario.
        if let Ok(s) = std::env::var("KMEM_CABI_ABORT") {
            let p = malloc(100);
            match s.as_str() {
                // SAFETY: deliberate misuse: the process must abort.
                "interior" => unsafe {
                    free(p.add(8));
                },
                "double" => {
                    let b = malloc(20_000);
                    // SAFETY: deliberate double free: the process must abort.
                    unsafe {
                        free(b);
                        free(b);
                    }
                }
                _ => {}
            }
            std::process::exit(0);
        }
        for (scenario, needle) in [
            ("interior", "an interior pointer of a kmalloc object"),
            ("double", "free kmem page"),
        ] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "kmalloc::cabi::tests::bad_frees_abort_in_a_child",
                    "--nocapture",
                ])
                .env("KMEM_CABI_ABORT", scenario)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{scenario}: the child did not abort");
            assert!(err.contains(needle), "{scenario}: {err}");
        }
    }
}
