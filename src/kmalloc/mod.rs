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
//! | otherwise, ≤ 4 MiB (`PAGE_SIZE << MAX_ORDER`) | a page block of exactly the pages needed (`alloc_pages_exact`) |
//! | otherwise                                 | its own OS mapping (`mmap`, `munmap` on free, `mremap` on `realloc`), 4 MiB-aligned and registered in `huge.rs` |
//!
//! The classes ([`kmalloc_size_classes`], [`KmallocClasses::Spaced`]) are 8, 16, 32, every
//! multiple of 16 up to 128, then four per power of two — `2^k · {5, 6, 7, 8} / 4`: 160, 192,
//! 224, 256, 320, 384, 448, 512, … 5120, 6144, 7168, 8192 — 33 in all, so from 64 on two
//! neighbours are at most 25% apart (jemalloc's and mimalloc's spacing) and a size between two
//! classes wastes at most a fifth of its object. The kernel's set (8, 16, 32, 64, 96, 128, 192,
//! then powers of two) wastes up to half an object between 256 and 8192 (issue 16: 22% more
//! RSS than glibc on uniformly distributed sizes); it stays available as
//! [`KmallocClasses::Kernel`] through [`Kmalloc::kernel_classes`] ([`KmallocKernel`]), served by the same caches (its
//! sizes are a subset). The caches are named as in the kernel: `kmalloc-8` … `kmalloc-896`,
//! `kmalloc-1k`, `kmalloc-1280`, … `kmalloc-8k` (a `k` suffix for multiples of 1024).
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
//! [`kmalloc_index`] → one load from the static cache table → `CacheInner::slab_alloc(None)`.
//! The index costs no division, as the kernel's `kmalloc_index`: for sizes up to 1024 one load
//! from a 129-byte table indexed by `(size + 7) >> 3` (the kernel's `size_index[]`, extended);
//! above, `g = fls(size - 1) - 1` and the two bits of `size - 1` under its top bit select one of
//! the four classes of the group: `(size - 1) >> (g - 2)` is 4 to 7, so the index is
//! `4 g + ((size - 1) >> (g - 2)) - 23`. Up to 1024 the table costs what the kernel set's
//! `fls` formula did (kmem-bench, dynamic sizes: 5.9 ns per `Kmalloc` pair at 256 B either
//! way); computing the groups from 128 on instead cost 0.8 ns more (docs/performance.md).
//! The kernel's set uses the kernel's own table up to 192 and `fls` above. The caches are
//! created together, lazily, on the first allocation of any class; they live in OS mappings
//! (never the global allocator) and are registered on [`Kmem::global()`], so `slabinfo` shows
//! them.
//!
//! # Freeing and checking
//!
//! `dealloc` derives the kind (class, block page count, or OS mapping) from the layout alone and
//! checks in O(1) that the pointer agrees: a class object's slab must belong to that class's
//! cache and the pointer must start one of its objects (a double free that finds the object at
//! a freelist head, or that would underflow its slab's `inuse`, is refused too); a block pointer must be the head of an allocated block of exactly that page count; an OS
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
//! cache's slot locks → every cache's node `list_lock`s → every node's per-CPU page list locks → every node's page lock); the parent
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

pub use global::{Kmalloc, KmallocKernel};
pub(crate) use reentry::assert_outside;
pub use reentry::kmalloc_reentrancy_guard;
#[cfg(feature = "debug-reentrancy")]
pub use reentry::kmalloc_reentrancy_simulate_enter;

use crate::config::CacheConfig;
use crate::instance::Kmem;
use crate::page::{MAX_ORDER, PAGE_SIZE};
use crate::slub::{CacheInner, MetaArena, PcsView};
use crate::sync::global::{AtomicPtr, Ordering};
use crate::sync::OnceSlot;
use core::alloc::Layout;
use core::ptr;

/// Number of kmalloc size classes (and caches): the spaced set; the kernel's set is a subset.
const NR_KMALLOC: usize = 33;

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

/// The class sizes: 8, 16, 32, then every 16 up to 128, then four classes per power of two
/// (`2^k · {5, 6, 7, 8} / 4`) up to 8192, so neighbours are at most 25% apart from 64 on.
const SIZE_CLASSES_CONST: [usize; NR_KMALLOC] = [
    8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896,
    1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192,
];

/// The index of the 256-byte class.
const IDX_256: usize = 12;
/// The index of the 1024-byte class: above it, [`kmalloc_index`] computes the class.
const IDX_1K: usize = 20;
/// The largest size the byte table [`SIZE_INDEX`] covers.
const TABLE_MAX: usize = 1024;
const _: () =
    assert!(SIZE_CLASSES_CONST[IDX_256] == 256 && SIZE_CLASSES_CONST[IDX_1K] == TABLE_MAX);
const _: () = assert!(SIZE_CLASSES_CONST[NR_KMALLOC - 1] == KMALLOC_MAX_CACHE_SIZE);
/// The class sizes, with a `'static` address for [`kmalloc_size_classes`].
static SIZE_CLASSES: [usize; NR_KMALLOC] = SIZE_CLASSES_CONST;

/// The kernel's kmalloc sizes (`kmalloc-8` … `kmalloc-8k`), served by the same caches.
const KERNEL_CLASSES_CONST: [usize; 13] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];
/// The kernel's sizes, with a `'static` address for [`KmallocClasses::sizes`].
static KERNEL_CLASSES: [usize; 13] = KERNEL_CLASSES_CONST;

/// The cache names (as the kernel spells them: `k` for multiples of 1024).
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
    "kmalloc-224",
    "kmalloc-256",
    "kmalloc-320",
    "kmalloc-384",
    "kmalloc-448",
    "kmalloc-512",
    "kmalloc-640",
    "kmalloc-768",
    "kmalloc-896",
    "kmalloc-1k",
    "kmalloc-1280",
    "kmalloc-1536",
    "kmalloc-1792",
    "kmalloc-2k",
    "kmalloc-2560",
    "kmalloc-3k",
    "kmalloc-3584",
    "kmalloc-4k",
    "kmalloc-5k",
    "kmalloc-6k",
    "kmalloc-7k",
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

/// The smallest class of `set` holding `size` bytes, as an index into the class table.
const fn smallest_class(set: &[usize], size: usize) -> u8 {
    let mut c = 0;
    while set[c] < size {
        c += 1;
    }
    let mut idx = 0;
    while SIZE_CLASSES_CONST[idx] != set[c] {
        idx += 1;
    }
    idx as u8
}

/// The kernel's `size_index[]`, extended to 1024: entry `(s + 7) >> 3` is the index of the
/// smallest class holding `s` bytes, for `s <= 1024` (entry 0, size 0, maps to the smallest).
const SIZE_INDEX: [u8; TABLE_MAX / 8 + 1] = {
    let mut t = [0u8; TABLE_MAX / 8 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = smallest_class(&SIZE_CLASSES_CONST, i * 8);
        i += 1;
    }
    t
};

// Every entry of both tables is a class index (the lookups rely on it: see `kmalloc_index`).
const _: () = {
    let mut i = 0;
    while i < SIZE_INDEX.len() {
        assert!((SIZE_INDEX[i] as usize) < NR_KMALLOC);
        i += 1;
    }
    let mut i = 0;
    while i < KERNEL_SIZE_INDEX.len() {
        assert!((KERNEL_SIZE_INDEX[i] as usize) < NR_KMALLOC);
        i += 1;
    }
};

/// The same for the kernel's set, up to 192 (the kernel's own `size_index[]`); above, the
/// kernel's classes are the powers of two.
const KERNEL_SIZE_INDEX: [u8; 25] = {
    let mut t = [0u8; 25];
    let mut i = 0;
    while i < 25 {
        t[i] = smallest_class(&KERNEL_CLASSES_CONST, i * 8);
        i += 1;
    }
    t
};

/// Which size classes a [`Kmalloc`] rounds small layouts to.
///
/// Both sets are served by the same `kmalloc-*` caches of [`Kmem::global()`] (the kernel's
/// sizes are a subset of the spaced ones): [`Kmalloc`] uses the spaced set, [`KmallocKernel`]
/// (from [`Kmalloc::kernel_classes`]) the kernel's. Memory must be freed by the type that
/// allocated it (the layout decides the class; a mismatch aborts as any wrong layout does).
/// The C ABI (`kmem-preload`) uses the spaced set.
///
/// ```
/// use core::alloc::Layout;
/// use kmem::KmallocClasses;
/// let l = Layout::from_size_align(300, 8).unwrap();
/// assert_eq!(KmallocClasses::Spaced.class_for(l), Some(320)); // wastes 20 bytes
/// assert_eq!(KmallocClasses::Kernel.class_for(l), Some(512)); // wastes 212 bytes
/// assert_eq!(KmallocClasses::Kernel.sizes().len(), 13);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KmallocClasses {
    /// 8, 16, 32, then every 16 to 128, then four classes per power of two up to 8192
    /// (neighbours at most 25% apart from 64 on, like jemalloc's and mimalloc's): what a size
    /// between two classes wastes is at most a fifth of its object. The default.
    #[default]
    Spaced,
    /// The Linux kernel's kmalloc sizes: 8, 16, 32, 64, 96, 128, 192, then the powers of two
    /// to 8192 (a size just above a power of two wastes almost half its object).
    Kernel,
}

impl KmallocClasses {
    /// The class sizes of this set, ascending.
    pub fn sizes(self) -> &'static [usize] {
        match self {
            KmallocClasses::Spaced => &SIZE_CLASSES,
            KmallocClasses::Kernel => &KERNEL_CLASSES,
        }
    }

    /// The size of the class of this set that serves `layout`, or `None` when a page block
    /// or an OS mapping serves it (see [`kmalloc_class_for`] for the alignment rule).
    pub fn class_for(self, layout: Layout) -> Option<usize> {
        self.index(layout.size(), layout.align())
            .map(|i| SIZE_CLASSES[i])
    }

    /// The class index (into the cache table) for `size` bytes aligned to `align`.
    #[inline(always)]
    pub(crate) fn index(self, size: usize, align: usize) -> Option<usize> {
        match self {
            KmallocClasses::Spaced => kmalloc_index(size, align),
            KmallocClasses::Kernel => kernel_index(size, align),
        }
    }

    /// [`Self::index`] without its cold case: `None` also for an over-aligned layout whose
    /// smallest class is not aligned enough (callers then ask `index`, out of line).
    #[inline(always)]
    pub(crate) fn index_fast(self, size: usize, align: usize) -> Option<usize> {
        match self {
            KmallocClasses::Spaced => kmalloc_index_fast(size, align),
            KmallocClasses::Kernel => kernel_index_fast(size, align),
        }
    }
}

/// The kmalloc size classes (of the default, spaced set): 8, 16, 32, 48, 64, 80, 96, 112,
/// 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048,
/// 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192.
///
/// ```
/// let classes = kmem::kmalloc_size_classes();
/// assert_eq!(classes.first(), Some(&8));
/// assert_eq!(classes.last(), Some(&8192));
/// // From 64 on, neighbouring classes are at most 25% apart.
/// assert!(classes.windows(2).all(|w| w[0] < 64 || w[1] * 4 <= w[0] * 5));
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
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(600, 8).unwrap()), Some(640));
/// assert_eq!(kmalloc_class_for(Layout::from_size_align(5000, 8).unwrap()), Some(5120));
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
///
/// No division: up to 1024 one load from the byte table [`SIZE_INDEX`] (the kernel's
/// `size_index[]`); above, `g = fls(s - 1) - 1` names the power of two `2^g < s <= 2^(g+1)`
/// and the two bits of `s - 1` below its top bit pick one of the group's four classes
/// `2^g · {5, 6, 7, 8} / 4`.
#[inline(always)]
pub(crate) fn kmalloc_index(size: usize, align: usize) -> Option<usize> {
    let idx = spaced_smallest(size, align)?;
    if align <= CLASS_ALIGN[idx] {
        Some(idx)
    } else {
        aligned_class_after(idx, align)
    }
}

/// [`kmalloc_index`] without its cold case: `None` also when the smallest class is not aligned
/// enough (the caller then asks `kmalloc_index`, out of line). No call in it.
///
/// Only layouts aligned to at most [`MIN_CLASS_ALIGN`] (what most types ask, and a constant
/// in almost every caller, so the test folds away): every class is that aligned, so neither
/// `max(size, align)` nor the class's alignment matters, and one table
/// ([`FAST_INDEX`]) covers every size up to [`KMALLOC_MAX_CACHE_SIZE`] with a cmov-able
/// index and no other branch. Over-aligned layouts go out of line: when the fast lookup
/// kept their cases, the compiler duplicated the whole inline free for them, and kmem-bench's
/// churn was 15% slower (docs/performance.md, "The class lookup").
#[inline(always)]
pub(crate) fn kmalloc_index_fast(size: usize, align: usize) -> Option<usize> {
    if align > MIN_CLASS_ALIGN || size > KMALLOC_MAX_CACHE_SIZE {
        return None;
    }
    let i = if size <= TABLE_MAX {
        (size + 7) >> 3
    } else {
        FAST_STEP_BASE + ((size - TABLE_MAX + FAST_STEP - 1) >> FAST_STEP_SHIFT)
    };
    // No bounds test on the hot path: `i <= FAST_STEP_BASE + (KMALLOC_MAX_CACHE_SIZE -
    // TABLE_MAX) / FAST_STEP`, the table's last index.
    // SAFETY: `size <= KMALLOC_MAX_CACHE_SIZE`, so `i` is in range (the arithmetic above).
    unsafe { core::hint::assert_unchecked(i < FAST_INDEX.len()) };
    let idx = FAST_INDEX[i] as usize;
    // SAFETY: the table's entries are class indices (asserted where it is built).
    unsafe { core::hint::assert_unchecked(idx < NR_KMALLOC) };
    Some(idx)
}

/// Above [`TABLE_MAX`], [`FAST_INDEX`] has one entry per `FAST_STEP` bytes (every class above
/// 1024 bytes is a multiple of it).
const FAST_STEP_SHIFT: u32 = 8;
const FAST_STEP: usize = 1 << FAST_STEP_SHIFT;
const FAST_STEP_BASE: usize = TABLE_MAX / 8;
/// [`kmalloc_index_fast`]'s table: [`SIZE_INDEX`] up to [`TABLE_MAX`], then entry
/// `FAST_STEP_BASE + k` is the smallest class holding `TABLE_MAX + k * FAST_STEP` bytes.
const FAST_INDEX: [u8; FAST_STEP_BASE + (KMALLOC_MAX_CACHE_SIZE - TABLE_MAX) / FAST_STEP + 1] = {
    let mut t = [0u8; FAST_STEP_BASE + (KMALLOC_MAX_CACHE_SIZE - TABLE_MAX) / FAST_STEP + 1];
    let mut i = 0;
    while i <= FAST_STEP_BASE {
        t[i] = SIZE_INDEX[i];
        i += 1;
    }
    while i < t.len() {
        t[i] = smallest_class(
            &SIZE_CLASSES_CONST,
            TABLE_MAX + (i - FAST_STEP_BASE) * FAST_STEP,
        );
        i += 1;
    }
    t
};
const _: () = {
    let mut i = 0;
    while i < FAST_INDEX.len() {
        assert!((FAST_INDEX[i] as usize) < NR_KMALLOC);
        i += 1;
    }
    // Every class above TABLE_MAX is a multiple of FAST_STEP, so a step's sizes share a class.
    let mut c = 0;
    while c < NR_KMALLOC {
        assert!(SIZE_CLASSES_CONST[c] <= TABLE_MAX || SIZE_CLASSES_CONST[c] % FAST_STEP == 0);
        c += 1;
    }
};

/// The alignment every class guarantees (its smallest class's).
const MIN_CLASS_ALIGN: usize = 8;
const _: () = {
    let mut i = 0;
    while i < NR_KMALLOC {
        assert!(CLASS_ALIGN[i] >= MIN_CLASS_ALIGN);
        i += 1;
    }
};

/// The smallest spaced class holding `max(size, align)` bytes (`None` above the classes).
#[inline(always)]
fn spaced_smallest(size: usize, align: usize) -> Option<usize> {
    // No panic on the allocator's hot path: `(s + 7) >> 3 <= 128` indexes the 129-entry
    // table; above, `s - 1` is in 1024..8192, `g` in 10..=12 and the index in
    // 4 * 10 + 4 - 23 = IDX_1K + 1 ..= 4 * 12 + 7 - 23 = NR_KMALLOC - 1 (and the cold loop
    // checks every later index).
    let s = if size > align { size } else { align };
    let idx = if s <= TABLE_MAX {
        SIZE_INDEX[(s + 7) >> 3] as usize
    } else if s <= KMALLOC_MAX_CACHE_SIZE {
        let m = s - 1;
        let g = (usize::BITS - 1 - m.leading_zeros()) as usize;
        (g << 2) + (m >> (g - 2)) - (4 * 10 + 4 - IDX_1K - 1)
    } else {
        return None;
    };
    // Tells the compiler what the comment above shows, so no bounds test follows on the hot path.
    // SAFETY: the table's entries are class indices (asserted where it is built); the computed index is in range by the arithmetic above.
    unsafe { core::hint::assert_unchecked(idx < NR_KMALLOC) };
    Some(idx)
}

/// [`kmalloc_index`] for the kernel's set ([`KmallocClasses::Kernel`]): the kernel's
/// `size_index[]` up to 192, then `fls(s - 1)` picks the power of two.
#[inline(always)]
pub(crate) fn kernel_index(size: usize, align: usize) -> Option<usize> {
    let idx = kernel_smallest(size, align)?;
    // The kernel's classes that are not powers of two are 96 and 192; the first class after
    // either that is aligned above their own alignment is a power of two (128, 256), so the
    // walk over the spaced table stays in the kernel's set.
    if align <= CLASS_ALIGN[idx] {
        Some(idx)
    } else {
        aligned_class_after(idx, align)
    }
}

/// [`kernel_index`] without its cold case (as [`kmalloc_index_fast`]).
#[inline(always)]
pub(crate) fn kernel_index_fast(size: usize, align: usize) -> Option<usize> {
    let idx = kernel_smallest(size, align)?;
    (align <= CLASS_ALIGN[idx]).then_some(idx)
}

/// The smallest class of the kernel's set holding `max(size, align)` bytes.
#[inline(always)]
fn kernel_smallest(size: usize, align: usize) -> Option<usize> {
    let s = if size > align { size } else { align };
    let idx = if s <= 192 {
        KERNEL_SIZE_INDEX[(s + 7) >> 3] as usize
    } else if s <= KMALLOC_MAX_CACHE_SIZE {
        // 193..=256 -> IDX_256, 257..=512 -> IDX_256 + 4, ..., 4097..=8192 -> the last.
        IDX_256 + (((usize::BITS - (s - 1).leading_zeros()) as usize - 8) << 2)
    } else {
        return None;
    };
    Some(idx)
}

/// The first class after `idx` aligned to `align` (over-aligned layouts only).
#[cold]
#[inline(never)]
fn aligned_class_after(idx: usize, align: usize) -> Option<usize> {
    (idx + 1..NR_KMALLOC).find(|&i| align <= CLASS_ALIGN[i])
}

/// The most pages of one page block: a whole chunk (`PAGE_SIZE << MAX_ORDER`, 4 MiB).
const PAGE_SIZE_PAGES_MAX: usize = 1 << MAX_ORDER;

/// Where a layout's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An object of kmalloc class `idx`.
    Class(usize),
    /// A page block of exactly this many pages (`alloc_pages_exact`).
    Pages(usize),
    /// An OS mapping of `bytes` (a page multiple) aligned to `align` (at least a page).
    Os { bytes: usize, align: usize },
}

/// The kind for a layout above the classes: `max(size, align)` rounded up to whole pages, as
/// one exact page block when that fits a chunk (the block of the next order is aligned to at
/// least its own page count, so to `align`), else an OS mapping.
#[inline]
fn large_kind(size: usize, align: usize) -> Kind {
    let bytes = if size > align { size } else { align };
    // `bytes <= isize::MAX` (a `Layout`): no overflow.
    let pages = bytes.div_ceil(PAGE_SIZE).max(1);
    if pages <= PAGE_SIZE_PAGES_MAX {
        Kind::Pages(pages)
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
fn kind_of(layout: Layout, classes: KmallocClasses) -> Kind {
    match classes.index(layout.size(), layout.align()) {
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
/// The views' table: one [`PcsView`] per class, in the kmalloc caches' [`MetaArena`], published (Release) once
/// every cache exists; null before. `kmalloc` and `kfree` index it directly, so their inline
/// paths read one line per class and no cache pointer first (`slub/view.rs`). Views are
/// constant; three pointers to the same table say what may use it:
///
/// - [`KMALLOC_VIEWS`]: the C ABI's classification of a pointer (`cabi::free`: the tag and
///   the object start), in every mode;
/// - [`KMALLOC_POP_VIEWS`]: the inline pops (`kmalloc`), published while the caches use
///   their sheaves in the rseq mode;
/// - [`KMALLOC_PUSH_VIEWS`]: the inline pushes (`kfree`, `cabi::free`), published with
///   [`KMALLOC_POP_VIEWS`] when the instance has one node (a free of another node's object
///   takes the out-of-line path, which routes it).
///
/// So the inline paths test one pointer for null and no mode byte (a byte test per
/// allocation and per free cost about 5% of kmem-bench's `fastpath`, measured), and the
/// locked mode's inline path is that one test and a call.
static KMALLOC_VIEWS: AtomicPtr<PcsView> = AtomicPtr::new(ptr::null_mut());
/// See [`KMALLOC_VIEWS`].
static KMALLOC_POP_VIEWS: AtomicPtr<PcsView> = AtomicPtr::new(ptr::null_mut());
/// See [`KMALLOC_VIEWS`].
static KMALLOC_PUSH_VIEWS: AtomicPtr<PcsView> = AtomicPtr::new(ptr::null_mut());

/// View `idx < NR_KMALLOC` of the table `t` points to, if published.
#[inline(always)]
fn view_in(t: &AtomicPtr<PcsView>, idx: usize) -> Option<&'static PcsView> {
    let t = t.load(Ordering::Acquire);
    if t.is_null() {
        return None;
    }
    // SAFETY: a published table holds NR_KMALLOC views, written before its first publication (the Acquire load pairs with it), never unmapped; `idx < NR_KMALLOC` (caller).
    Some(unsafe { &*t.add(idx) })
}

/// The view of class `idx < NR_KMALLOC`, if the caches exist: for classifying a pointer.
#[inline(always)]
pub(super) fn kmalloc_view(idx: usize) -> Option<&'static PcsView> {
    view_in(crate::sync::static_ref!(KMALLOC_VIEWS), idx)
}

/// The view of class `idx < NR_KMALLOC` if allocations may pop its sheaf inline now.
#[inline(always)]
pub(super) fn kmalloc_pop_view(idx: usize) -> Option<&'static PcsView> {
    view_in(crate::sync::static_ref!(KMALLOC_POP_VIEWS), idx)
}

/// The view of class `idx < NR_KMALLOC` if frees may push onto its sheaf inline now.
#[inline(always)]
pub(super) fn kmalloc_push_view(idx: usize) -> Option<&'static PcsView> {
    view_in(crate::sync::static_ref!(KMALLOC_PUSH_VIEWS), idx)
}

/// Whether frees may push inline now (the C ABI's `free`, which classified the pointer with
/// [`kmalloc_view`]).
#[inline(always)]
pub(super) fn kmalloc_push_on() -> bool {
    !crate::sync::static_ref!(KMALLOC_PUSH_VIEWS)
        .load(Ordering::Relaxed)
        .is_null()
}

/// Publishes or withdraws the inline paths' views ([`KMALLOC_VIEWS`]) for the sheaves being
/// `on` now; the instance's commit mode and node count decide the rest (a class that cannot
/// use them, a slub_debug one, has a view that sends every operation out of line).
fn publish_inline_views(on: bool) {
    let t = KMALLOC_VIEWS.load(Ordering::Acquire);
    let mode = match kmalloc_cache(0) {
        Some(c) if !t.is_null() => {
            let s = c.kmem();
            crate::slub::pcs_mode(on, s.rseq, s.nr_nodes)
        }
        _ => 0,
    };
    let pick = |bit: u8| if mode & bit != 0 { t } else { ptr::null_mut() };
    KMALLOC_POP_VIEWS.store(pick(crate::slub::PCS_FAST_ALLOC), Ordering::Release);
    KMALLOC_PUSH_VIEWS.store(pick(crate::slub::PCS_FAST_FREE), Ordering::Release);
}

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

/// Creates every kmalloc cache on the global instance (`create_kmalloc_caches`). The caches'
/// metadata and the views' table share the pages of one [`MetaArena`] (they are never
/// destroyed); each cache is registered, so `slabinfo` lists it. Creating all of them at once
/// means no later allocation ever needs the registry lock, which `Kmem::slabinfo` holds while
/// it allocates.
fn create_kmalloc_caches() -> Option<()> {
    let k = Kmem::try_global()?;
    let sheaves = sheaves_from_env();
    let mut arena = MetaArena::new();
    // The views' table first: nothing is created if it cannot be had.
    let views = arena
        .take(core::mem::size_of::<[PcsView; NR_KMALLOC]>())?
        .cast::<PcsView>();
    for i in 0..NR_KMALLOC {
        let cfg = CacheConfig::new()
            .align(CLASS_ALIGN[i])
            .min_objects(4)
            .prefer_order(kmalloc_slab_order(SIZE_CLASSES[i]))
            .sheaf_capacity(kmalloc_sheaf_capacity(SIZE_CLASSES[i]));
        let cache = core::mem::ManuallyDrop::new(
            k.create_cache_in(CLASS_NAMES[i], SIZE_CLASSES[i], cfg, Some(&mut arena))
                .ok()?,
        );
        cache.inner().set_sheaves(sheaves);
        // The handle is never dropped: kmalloc caches live as long as the process.
        // Marked before it is published: whoever finds the cache through the table, or the
        // mark through one of its slabs, sees a kmalloc cache of the global instance.
        cache
            .inner()
            .is_kmalloc
            .store(true, crate::sync::Ordering::Release);
        // The class's tag id replaces the one the cache took as a sheaf cache (no slab yet).
        // Tag ids of the classes are class + 1 (`page::slab_tag`, `slub/tag_id.rs`).
        const _: () = assert!(NR_KMALLOC < crate::slub::tag_id::FIRST_ID as usize);
        let id = if cache.inner().debug { 0 } else { i as u16 + 1 };
        let taken = cache
            .inner()
            .slab_tag
            .swap(id, crate::sync::Ordering::AcqRel);
        crate::slub::tag_id::give_back(taken);
        // SAFETY: entry `i` of the fresh table (NR_KMALLOC views from the arena, 128-byte aligned: each view's 64-byte alignment holds), never unmapped, and not published yet.
        unsafe { views.add(i).write(PcsView::of(cache.inner())) };
        KMALLOC_CACHES[i].store(cache.inner.as_ptr(), Ordering::Release);
    }
    KMALLOC_VIEWS.store(views, Ordering::Release);
    publish_inline_views(sheaves);
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
    if !on {
        // The inline paths first: from here on (give or take one operation that loaded a
        // table pointer just before) nothing pops or pushes a sheaf the switch flushes.
        publish_inline_views(false);
    }
    let mut now = on;
    for slot in &KMALLOC_CACHES {
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a published kmalloc cache is never destroyed.
            now &= unsafe { &*p }.set_sheaves(on);
        }
    }
    if on {
        // With `on`, not `now`: a slub_debug class stays off (its `set_sheaves` says false),
        // and its view, with no slot and no tag, sends its operations out of line anyway.
        publish_inline_views(on);
    }
    now
}

/// The sheaf capacity of the kmalloc class of `size`-byte objects: twice the kernel's
/// ([`default_sheaf_capacity`](crate::default_sheaf_capacity)) below 4 KiB (after rounding to
/// a power-of-two sheaf: 120 objects below 256 bytes, 60 below 1 KiB, 28 below 4 KiB), the
/// kernel's 4 above. Measured (docs/performance.md, "Deeper barns" and "Sheaves of 60 from
/// 256 bytes"): a thread's 1000-object batch of 64-byte objects 6.4 → 5.8 ns per object, two
/// threads' 4.6 → 3.5 (half the barn trades, then on one barn lock per node); of 256-byte
/// objects 11.1 → 5.1 and 6.4 → 3.8; of 2 KiB objects 31 → 17 and 11.8 → 6.5; what an idle
/// class keeps in its CPUs' sheaves the decay's CPU-sheaf trim gives back, and a class used
/// a little fills only a quarter of a sheaf (`SheafSlot::next_refill`).
pub(crate) const fn kmalloc_sheaf_capacity(size: usize) -> usize {
    if size < 4096 {
        2 * crate::config::default_sheaf_capacity(size)
    } else {
        crate::config::default_sheaf_capacity(size)
    }
}

/// The preferred slab order of a kmalloc class: 1 for a class whose one-page slab holds at
/// least [`TIGHT_SLAB_OBJECTS`] objects and leaves at least a 64th of the page unused, when a
/// two-page slab leaves less than one page does (96 and 112 bytes: 64 bytes of each page,
/// 1.6%, against 32 and 16 bytes for two pages); 0 for the others, whose order the kernel's
/// rule (`calculate_order`: the tail at most a 16th) chooses. The fallback order stays the
/// kernel's (one page: a slab of one page is still taken when no two-page block is to be had,
/// `CacheConfig::prefer_order`).
///
/// A slab goes back to the pages only when all its objects are free, so a larger slab keeps
/// more memory after a program frees objects at random (with 90% freed, a slab of `n` objects
/// keeps a survivor with probability `1 - 0.9^n`). For a class that fills a page with 32
/// objects or more, that probability is above 96% with one page and above 99.9% with two: the
/// second page costs nothing there, and the tail it saves is memory every live object of the
/// class pays for (redis's 100-byte values are 112-byte objects: 64 bytes of every 4 KiB of
/// them). Larger classes keep the kernel's orders: their slabs hold few objects, and a second
/// page would keep far more memory after random frees than their tails cost
/// (docs/performance.md, "Footprint").
pub(crate) const fn kmalloc_slab_order(size: usize) -> u32 {
    let page = crate::page::PAGE_SIZE;
    if page / size >= TIGHT_SLAB_OBJECTS
        && page % size >= page / 64
        && (2 * page) % size < page % size
    {
        1
    } else {
        0
    }
}

/// See [`kmalloc_slab_order`].
const TIGHT_SLAB_OBJECTS: usize = 32;
