//! kmalloc: size classes over slab caches, page blocks and OS mappings, and [`Kmalloc`], the
//! drop-in `#[global_allocator]` (and `allocator_api2` allocator) built on them.
//!
//! Files: this one (size classes, the alignment rule, the cache table), `paths.rs` (kmalloc,
//! kfree, krealloc over classes, page blocks and OS mappings), `huge.rs` (the table of OS
//! mappings, so a pointer alone finds one), `cabi.rs` (kmalloc without layouts: the core of the
//! C `malloc` family of the `kmem-preload` library), `global.rs` ([`Kmalloc`]: the
//! `GlobalAlloc` and `allocator_api2` impls over one shared core), `reentry.rs` (the debug
//! re-entrancy guard). The fork handlers that keep the global instance usable in a child live
//! with the instance (`instance/fork.rs`).
//!
//! # Where an allocation goes
//!
//! | request (`max(size, align)`, `align`)     | served by                                        |
//! |-------------------------------------------|--------------------------------------------------|
//! | fits a class (≤ 8192 B, align ≤ 4096)     | the smallest fitting `kmalloc-*` slab cache       |
//! | otherwise, ≤ 4 MiB (`PAGE_SIZE << MAX_ORDER`) | one buddy block of the smallest fitting order |
//! | otherwise                                 | its own OS mapping (`mmap`, `munmap` on free), 4 MiB-aligned and registered in `huge.rs` |
//!
//! The classes are 8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 512, 1024, 2048, 4096
//! and 8192 bytes ([`kmalloc_size_classes`]), named as in the kernel: `kmalloc-8` …
//! `kmalloc-192`, `kmalloc-256`, `kmalloc-512`, `kmalloc-1k`, `kmalloc-2k`, `kmalloc-4k`,
//! `kmalloc-8k`. The kernel's set plus 48, 80, 112 and 160: every multiple of 16 up to 128 is a
//! class, so a C program's typical small objects (a 100-byte string is 104 bytes with its
//! header) waste at most 15 bytes rather than up to 31 (issue 14: real programs on kmem).
//!
//! # The alignment rule
//!
//! Objects of a class of size `S` sit at multiples of `S` from a page-aligned slab start, so a
//! class guarantees the alignment `min(largest power of two dividing S, 4096)`: 8 → 8, 48 → 16,
//! 96 → 32, 160 → 32, 192 → 64, 4096 → 4096, 8192 → 4096. A layout goes to the smallest class
//! whose size is at least `layout.size()` *and* whose alignment is at least `layout.align()`;
//! that class is the first class `>= max(size, align)` when its alignment suffices (always for
//! alignments up to 16), else the first later class whose alignment does (`(72, 64)`: 80 and
//! 96 and 112 are too little aligned → 128). Alignments above 4096 go to page blocks,
//! which are aligned to their own size (a buddy block of order `k` starts at a multiple of
//! `2^k` pages), or to OS mappings aligned as asked.
//!
//! # The hot path
//!
//! [`kmalloc_index`] (a 25-entry table for sizes ≤ 192, as the kernel's `size_index[]`, then
//! `ilog2`) → one load from the static cache table → `CacheInner::slab_alloc(None)`. The
//! caches are created together, lazily, on the first allocation of any class; they live in
//! OS mappings (never the global allocator) and are registered on [`Kmem::global()`], so
//! `slabinfo` shows them.
//!
//! # Freeing and checking
//!
//! `dealloc` derives the kind (class, block order, or OS mapping) from the layout alone and
//! checks in O(1) that the pointer agrees: a class object's slab must belong to that class's
//! cache and the pointer must start one of its objects (a double free that finds the object at
//! a freelist head, or that would underflow its slab's `inuse`, is refused too); a block pointer must be the head of an allocated block of exactly that order; an OS
//! pointer must start a registered kmalloc mapping of that length. A mismatch aborts with a message naming what was
//! expected and what was found.
//!
//! # Rules inside the global allocator
//!
//! Nothing reachable from [`Kmalloc`]'s `GlobalAlloc` methods allocates through the global
//! allocator, panics, or uses `std::sync` or a thread-local with a destructor. Failure is a null
//! return. With the `debug-reentrancy` feature (and in this crate's unit tests) a per-thread
//! depth counter (a `const` thread-local `Cell`, no destructor) aborts if the allocator is
//! entered while the thread is already inside it.
//!
//! # fork and signals
//!
//! When the global instance is built, `pthread_atfork` handlers are registered once. The
//! prepare handler takes every lock of the global instance in lock order (registry → every
//! cache's slot locks → every cache's node `list_lock`s → every node's page lock); the parent
//! and child handlers release them. So the child of a multi-threaded parent never inherits a
//! lock held by a thread that does not exist in it, and can allocate. What the child can
//! inherit is a lock-free operation cut in half by the fork (another thread between two of its
//! CASes): at worst that leaks a slab in the child, never corrupts a list. Page blocks other
//! threads had detached for `madvise` are taken back by the child handler
//! (`KmemShared::fork_child_reclaim`; see the page module docs).
//!
//! kmalloc is not async-signal-safe. The lock-free fast paths are safe against a signal handler
//! that allocates (the interrupted CAS fails on the advanced `tid` and retries), but if the
//! handler interrupts a slow path holding a slot, list or page lock and needs that lock, the
//! lock's owner check aborts with a message instead of deadlocking.

pub mod cabi;
mod global;
mod huge;
mod paths;
mod reentry;
#[cfg(all(test, not(loom)))]
mod tests;

pub use global::Kmalloc;
pub(crate) use reentry::assert_outside;
pub use reentry::kmalloc_reentrancy_guard;
#[cfg(feature = "debug-reentrancy")]
pub use reentry::kmalloc_reentrancy_simulate_enter;

use crate::config::CacheConfig;
use crate::instance::Kmem;
use crate::page::{MAX_ORDER, PAGE_SIZE};
use crate::slub::CacheInner;
use crate::sync::global::{AtomicPtr, Ordering};
use crate::sync::OnceSlot;
use core::alloc::Layout;
use core::ptr;

/// Number of kmalloc size classes.
const NR_KMALLOC: usize = 17;

/// The largest size served by a kmalloc slab cache; larger requests get page blocks.
///
/// ```
/// use core::alloc::Layout;
/// use kmem::{kmalloc_class_for, KMALLOC_MAX_CACHE_SIZE};
/// assert_eq!(kmem::kmalloc_size_classes().last(), Some(&KMALLOC_MAX_CACHE_SIZE));
/// let largest = Layout::from_size_align(KMALLOC_MAX_CACHE_SIZE, 8).unwrap();
/// assert_eq!(kmalloc_class_for(largest), Some(KMALLOC_MAX_CACHE_SIZE));
/// let block = Layout::from_size_align(KMALLOC_MAX_CACHE_SIZE + 1, 8).unwrap();
/// assert_eq!(kmalloc_class_for(block), None); // served by a page block
/// ```
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;

/// The class sizes.
const SIZE_CLASSES_CONST: [usize; NR_KMALLOC] = [
    8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 512, 1024, 2048, 4096, 8192,
];

/// The index of the 256-byte class: classes above 192 are the powers of two from 256 on.
const IDX_256: usize = 11;
const _: () = assert!(SIZE_CLASSES_CONST[IDX_256] == 256);
/// The class sizes, with a `'static` address for [`kmalloc_size_classes`].
static SIZE_CLASSES: [usize; NR_KMALLOC] = SIZE_CLASSES_CONST;

/// The cache names (as the kernel spells them).
const CLASS_NAMES: [&str; NR_KMALLOC] = [
    "kmalloc-8",
    "kmalloc-16",
    "kmalloc-32",
    "kmalloc-48",
    "kmalloc-64",
    "kmalloc-80",
    "kmalloc-96",
    "kmalloc-112",
    "kmalloc-128",
    "kmalloc-160",
    "kmalloc-192",
    "kmalloc-256",
    "kmalloc-512",
    "kmalloc-1k",
    "kmalloc-2k",
    "kmalloc-4k",
    "kmalloc-8k",
];

/// The natural alignment of a class of size `s`: `min(largest power of two dividing s, 4096)`.
const fn natural_align(s: usize) -> usize {
    let a = 1usize << s.trailing_zeros();
    if a > PAGE_SIZE {
        PAGE_SIZE
    } else {
        a
    }
}

/// The alignment each class guarantees.
const CLASS_ALIGN: [usize; NR_KMALLOC] = {
    let mut t = [0; NR_KMALLOC];
    let mut i = 0;
    while i < NR_KMALLOC {
        t[i] = natural_align(SIZE_CLASSES_CONST[i]);
        i += 1;
    }
    t
};

/// The kernel's `size_index[]`: entry `(s + 7) / 8` is the smallest class holding `s` bytes,
/// for `s <= 192` (entry 0, size 0, maps to the smallest class).
const SIZE_INDEX: [u8; 25] = {
    let mut t = [0u8; 25];
    let mut i = 0;
    while i < 25 {
        let size = i * 8;
        let mut c = 0;
        while SIZE_CLASSES_CONST[c] < size {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

/// The kmalloc size classes: 8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 512, 1024,
/// 2048, 4096, 8192.
///
/// ```
/// let classes = kmem::kmalloc_size_classes();
/// assert_eq!(classes.first(), Some(&8));
/// assert_eq!(classes.last(), Some(&8192));
/// assert!(classes.contains(&96) && classes.contains(&112) && classes.contains(&192));
/// ```
pub fn kmalloc_size_classes() -> &'static [usize] {
    &SIZE_CLASSES
}

/// The size of the class that serves `layout`, or `None` when it is served by a page block or
/// an OS mapping (see the module docs for the alignment rule).
///
/// ```
/// use core::alloc::Layout;
/// use kmem::kmalloc_class_for;
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(1, 1).unwrap()), Some(8));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(90, 8).unwrap()), Some(96));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(104, 8).unwrap()), Some(112));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(72, 64).unwrap()), Some(128));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(90, 64).unwrap()), Some(128));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(8193, 8).unwrap()), None);
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(64, 8192).unwrap()), None);
/// ```
pub fn kmalloc_class_for(layout: Layout) -> Option<usize> {
    kmalloc_index(layout.size(), layout.align()).map(|i| SIZE_CLASSES[i])
}

/// The class index for `size` bytes aligned to `align` (a power of two), or `None` above the
/// classes. The smallest class `>= max(size, align)` is the answer unless its natural alignment
/// is too small (only classes that are not powers of two can be, and only for alignments above
/// 16), in which case the first later class aligned enough is.
#[inline(always)]
pub(crate) fn kmalloc_index(size: usize, align: usize) -> Option<usize> {
    // No panic on the allocator's hot path: `(s + 7) >> 3 <= 24` indexes the 25-entry table,
    // `s - 1` runs only for `s > 192`, and the `ilog2` form gives IDX_256..=NR_KMALLOC - 1 for
    // 193..=8192, so `idx < NR_KMALLOC` (and the cold loop checks every later index).
    let s = if size > align { size } else { align };
    let idx = if s <= 192 {
        SIZE_INDEX[(s + 7) >> 3] as usize
    } else if s <= KMALLOC_MAX_CACHE_SIZE {
        // 193..=256 -> IDX_256 (256), 257..=512 -> IDX_256 + 1, ..., 4097..=8192 -> the last.
        (usize::BITS - (s - 1).leading_zeros()) as usize + IDX_256 - 8
    } else {
        return None;
    };
    if align <= CLASS_ALIGN[idx] {
        Some(idx)
    } else {
        aligned_class_after(idx, align)
    }
}

/// The first class after `idx` aligned to `align` (over-aligned layouts only).
#[cold]
#[inline(never)]
fn aligned_class_after(idx: usize, align: usize) -> Option<usize> {
    (idx + 1..NR_KMALLOC).find(|&i| align <= CLASS_ALIGN[i])
}

/// Where a layout's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An object of kmalloc class `idx`.
    Class(usize),
    /// A buddy block of this order.
    Pages(u32),
    /// An OS mapping of `bytes` (a page multiple) aligned to `align` (at least a page).
    Os { bytes: usize, align: usize },
}

/// The smallest order whose block holds `bytes`.
#[inline]
fn order_for(bytes: usize) -> u32 {
    // `bytes <= isize::MAX` (a `Layout`), so `pages < 2^52` and `next_power_of_two` cannot
    // overflow (it would panic in debug builds).
    let pages = bytes.div_ceil(PAGE_SIZE).max(1);
    pages.next_power_of_two().trailing_zeros()
}

/// The kind for a layout above the classes.
#[inline]
fn large_kind(size: usize, align: usize) -> Kind {
    let bytes = if size > align { size } else { align };
    let order = order_for(bytes);
    if order <= MAX_ORDER {
        Kind::Pages(order)
    } else {
        Kind::Os {
            // `size <= isize::MAX - (align - 1)` (a `Layout`): rounding up to a page cannot
            // overflow.
            bytes: size.next_multiple_of(PAGE_SIZE),
            align: align.max(PAGE_SIZE),
        }
    }
}

/// The kind of any layout.
#[inline(always)]
fn kind_of(layout: Layout) -> Kind {
    match kmalloc_index(layout.size(), layout.align()) {
        Some(idx) => Kind::Class(idx),
        None => large_kind(layout.size(), layout.align()),
    }
}

// =============================================================================================
// The cache table
// =============================================================================================

/// The kmalloc caches of the global instance, created together on first use.
static KMALLOC_CACHES: [AtomicPtr<CacheInner>; NR_KMALLOC] =
    [const { AtomicPtr::new(ptr::null_mut()) }; NR_KMALLOC];
/// Gate for creating the caches exactly once, without allocating.
static KMALLOC_INIT: OnceSlot<()> = OnceSlot::new();

/// The cache of class `idx`: one load (creating every cache on the very first call).
#[inline(always)]
fn kmalloc_cache(idx: usize) -> Option<&'static CacheInner> {
    let p = KMALLOC_CACHES[idx].load(Ordering::Acquire);
    if !p.is_null() {
        // Published once with Release after creation (the Acquire load above pairs with it).
        // SAFETY: a published kmalloc cache is fully created and never destroyed.
        return Some(unsafe { &*p });
    }
    kmalloc_cache_slow(idx)
}

#[cold]
#[inline(never)]
fn kmalloc_cache_slow(idx: usize) -> Option<&'static CacheInner> {
    KMALLOC_INIT.get_or_try_init(create_kmalloc_caches)?;
    let p = KMALLOC_CACHES[idx].load(Ordering::Acquire);
    // SAFETY: as in `kmalloc_cache`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Creates every kmalloc cache on the global instance (`create_kmalloc_caches`). Each cache
/// lives in its own OS mapping and is registered, so `slabinfo` lists it. Creating all of
/// them at once means no later allocation ever needs the registry lock, which
/// `Kmem::slabinfo` holds while it allocates.
fn create_kmalloc_caches() -> Option<()> {
    let k = Kmem::try_global()?;
    let sheaves = sheaves_from_env();
    for i in 0..NR_KMALLOC {
        let cfg = CacheConfig::new()
            .align(CLASS_ALIGN[i])
            .sheaf_capacity(crate::config::default_sheaf_capacity(SIZE_CLASSES[i]));
        let cache = core::mem::ManuallyDrop::new(
            k.create_cache(CLASS_NAMES[i], SIZE_CLASSES[i], cfg).ok()?,
        );
        cache.inner().set_sheaves(sheaves);
        // The handle is never dropped: kmalloc caches live as long as the process.
        KMALLOC_CACHES[i].store(cache.inner.as_ptr(), Ordering::Release);
    }
    Some(())
}

/// Whether the kmalloc caches start with their sheaves on: [`KMALLOC_SHEAVES_DEFAULT`], or
/// `KMEM_SHEAVES=0|1` (read with `getenv`, which does not allocate). Any other value is
/// reported on stderr and the default kept.
fn sheaves_from_env() -> bool {
    #[cfg(not(miri))]
    {
        // SAFETY: a NUL-terminated name; getenv returns null or a NUL-terminated string.
        let v = unsafe { libc::getenv(c"KMEM_SHEAVES".as_ptr()) };
        if v.is_null() {
            return KMALLOC_SHEAVES_DEFAULT;
        }
        // SAFETY: as above.
        match unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes() {
            b"0" => false,
            b"1" => true,
            _ => {
                crate::os::write_stderr(&[
                    "kmem: KMEM_SHEAVES must be 0 or 1; ignored (the default is used)",
                ]);
                KMALLOC_SHEAVES_DEFAULT
            }
        }
    }
    #[cfg(miri)]
    {
        KMALLOC_SHEAVES_DEFAULT
    }
}

/// Whether the kmalloc caches use sheaves when `KMEM_SHEAVES` is not set: the design that
/// measured faster (docs/performance.md, "Sheaves").
pub const KMALLOC_SHEAVES_DEFAULT: bool = true;

/// Whether the global allocator's kmalloc caches use sheaves now (see [`kmalloc_set_sheaves`]).
///
/// ```
/// // KMEM_SHEAVES=0 in the environment starts them off; the default is on.
/// let on = kmem::kmalloc_sheaves();
/// assert!(on || std::env::var("KMEM_SHEAVES").as_deref() == Ok("0"));
/// ```
pub fn kmalloc_sheaves() -> bool {
    kmalloc_cache(0).is_some_and(|c| c.use_sheaves())
}

/// Switches every kmalloc cache between its sheaves and the cpu-slab design (the `{freelist,
/// tid}` fast paths alone), for comparisons in one process (kmem-bench does). Switching off
/// flushes the sheaves. Both designs are always correct; only speed and memory differ.
/// Returns whether the caches now use sheaves (false when they could not be created).
///
/// ```
/// let was = kmem::kmalloc_sheaves();
/// assert!(!kmem::kmalloc_set_sheaves(false));
/// let v = vec![1u64; 8]; // served by the cpu-slab fast paths if kmem is the global allocator
/// drop(v);
/// kmem::kmalloc_set_sheaves(was);
/// ```
pub fn kmalloc_set_sheaves(on: bool) -> bool {
    if kmalloc_cache(0).is_none() {
        return false;
    }
    let mut now = on;
    for slot in &KMALLOC_CACHES {
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a published kmalloc cache is never destroyed.
            now &= unsafe { &*p }.set_sheaves(on);
        }
    }
    now
}
