//! [`Kmalloc`] and [`KmallocKernel`]: the `GlobalAlloc` and `allocator_api2::Allocator` faces
//! of kmalloc, thin wrappers (one set of impls, written once by a macro for both types) over
//! one core (`core_*`), which enters the re-entrancy guard and calls the paths with the type's
//! class set.

use super::paths::{kfree, kmalloc, krealloc, kzalloc};
use super::reentry;
use super::KmallocClasses;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

/// kmalloc as a drop-in global allocator (`GlobalAlloc`) and as an
/// [`allocator_api2`](allocator_api2::alloc::Allocator) allocator, on [`Kmem::global()`](crate::Kmem::global).
///
/// Small layouts go to the `kmalloc-*` slab caches (see [`kmalloc_size_classes`](crate::kmalloc_size_classes) and the
/// alignment rule in [`kmalloc_class_for`](crate::kmalloc_class_for)), larger ones to page blocks of exactly the pages they
/// need from the calling CPU's node, and those above 4 MiB to their own OS mappings (which
/// `realloc` resizes with `mremap`). Allocation failure returns null
/// (or `AllocError`); nothing on these paths allocates or panics. A `dealloc` whose layout
/// does not match the memory (wrong class, wrong block size, foreign pointer, double free of
/// a block) aborts with a message.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: kmem::Kmalloc = kmem::Kmalloc::new();
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// ```
///
/// With `allocator_api2` collections:
///
/// ```
/// use allocator_api2::vec::Vec;
/// let mut v = Vec::new_in(kmem::Kmalloc::new());
/// v.extend_from_slice(b"slab");
/// assert_eq!(&v[..], b"slab");
/// ```
///
/// `Kmalloc` rounds small layouts to the spaced classes ([`KmallocClasses::Spaced`]);
/// [`Kmalloc::kernel_classes`] gives the same allocator with the kernel's sizes
/// ([`KmallocKernel`]).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Kmalloc;

impl Kmalloc {
    /// The allocator (a zero-sized handle to [`Kmem::global()`](crate::Kmem::global)'s kmalloc caches).
    ///
    /// ```
    /// use core::alloc::{GlobalAlloc, Layout};
    /// let a = kmem::Kmalloc::new();
    /// let layout = Layout::from_size_align(100, 16).unwrap();
    /// // SAFETY: `layout` has a non-zero size.
    /// let p = unsafe { a.alloc(layout) };
    /// assert!(!p.is_null() && p as usize % 16 == 0);
    /// // SAFETY: `p` came from `a.alloc(layout)` and is freed once with the same layout.
    /// unsafe { a.dealloc(p, layout) };
    /// ```
    pub const fn new() -> Self {
        Kmalloc
    }

    /// kmalloc rounding to the Linux kernel's sizes ([`KmallocClasses::Kernel`]) instead.
    pub const fn kernel_classes() -> KmallocKernel {
        KmallocKernel
    }

    /// The class set of this allocator ([`KmallocClasses::Spaced`]).
    pub const fn classes(&self) -> KmallocClasses {
        KmallocClasses::Spaced
    }
}

/// [`Kmalloc`] with the Linux kernel's kmalloc sizes (8, 16, 32, 64, 96, 128, 192, then
/// powers of two to 8192: [`KmallocClasses::Kernel`]) for callers that want them, served by
/// the same caches. Memory must be freed by the allocator type that allocated it (the class
/// follows from the layout and the set).
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
/// use kmem::{Kmalloc, KmallocClasses, KmallocKernel};
/// static KERNEL: KmallocKernel = Kmalloc::kernel_classes();
/// assert_eq!(KERNEL.classes(), KmallocClasses::Kernel);
/// let layout = Layout::from_size_align(300, 8).unwrap();
/// // SAFETY: `layout` has a non-zero size.
/// let p = unsafe { KERNEL.alloc(layout) };
/// assert_eq!(kmem::cabi::usable_size(p), Some(512)); // kmalloc-512, not kmalloc-320
/// // SAFETY: `p` came from `KERNEL.alloc(layout)` and is freed once with the same layout.
/// unsafe { KERNEL.dealloc(p, layout) };
/// ```
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct KmallocKernel;

impl KmallocKernel {
    /// The class set of this allocator ([`KmallocClasses::Kernel`]).
    pub const fn classes(&self) -> KmallocClasses {
        KmallocClasses::Kernel
    }
}

/// Memory for `layout` (size > 0) in class set `classes`, zeroed if asked; null when
/// exhausted.
#[inline(always)]
fn core_alloc(classes: KmallocClasses, layout: Layout, zero: bool) -> *mut u8 {
    let _g = reentry::enter();
    if zero {
        kzalloc(layout, classes)
    } else {
        kmalloc(layout, classes)
    }
}

/// Frees `ptr`, allocated with `layout` (size > 0) in `classes`.
///
/// # Safety
/// `ptr` came from this class set with `layout` and is freed once.
#[inline(always)]
unsafe fn core_free(classes: KmallocClasses, ptr: *mut u8, layout: Layout) {
    let _g = reentry::enter();
    // SAFETY: forwarded contract.
    unsafe { kfree(ptr, layout, classes) }
}

/// Moves `ptr` (allocated with `old`, size > 0) to memory for `new` (size > 0), zeroing the
/// bytes past `old.size()` if asked; null (and `ptr` untouched) when exhausted.
///
/// # Safety
/// `ptr` came from this class set with `old`; `new.align() == old.align()`.
#[inline]
unsafe fn core_realloc(
    classes: KmallocClasses,
    ptr: *mut u8,
    old: Layout,
    new: Layout,
    zero_tail: bool,
) -> *mut u8 {
    let _g = reentry::enter();
    // SAFETY: forwarded contract.
    let p = unsafe { krealloc(ptr, old, new, classes) };
    if zero_tail && !p.is_null() && new.size() > old.size() {
        // SAFETY: `p` holds `new.size()` bytes; the tail past the old contents is ours.
        unsafe { ptr::write_bytes(p.add(old.size()), 0, new.size() - old.size()) };
    }
    p
}

/// `GlobalAlloc` and `allocator_api2::Allocator` for a zero-sized kmalloc handle whose class
/// set is `$classes`.
macro_rules! kmalloc_impls {
    ($t:ty, $classes:expr) => {
        // SAFETY: every path returns memory of at least `layout.size()` bytes aligned to
        // `layout.align()` (classes by the alignment rule, blocks by buddy alignment, mappings
        // by `os::map`'s alignment) or null; memory is only reused after `dealloc`.
        unsafe impl GlobalAlloc for $t {
            #[inline]
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                core_alloc($classes, layout, false)
            }

            #[inline]
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                core_alloc($classes, layout, true)
            }

            #[inline]
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: GlobalAlloc contract: `ptr` was allocated by us with `layout`.
                unsafe { core_free($classes, ptr, layout) }
            }

            #[inline]
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY: GlobalAlloc contract: `new_size` rounded up to `layout.align()` fits in isize.
                let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: GlobalAlloc contract: `ptr` is ours with `layout`; `new_size > 0`.
                unsafe { core_realloc($classes, ptr, layout, new, false) }
            }
        }

        // SAFETY: as for GlobalAlloc; zero-sized layouts get a dangling aligned pointer that
        // is never passed to kfree; the handle is stateless, so clones and copies share all
        // memory. `grow`/`shrink` keep the alignment (the Allocator contract allows a
        // different one; kmalloc's layouts of both sizes then go to `allocate` + copy).
        unsafe impl allocator_api2::alloc::Allocator for $t {
            #[inline]
            fn allocate(
                &self,
                layout: Layout,
            ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                api2::allocate($classes, layout, false)
            }

            #[inline]
            fn allocate_zeroed(
                &self,
                layout: Layout,
            ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                api2::allocate($classes, layout, true)
            }

            #[inline]
            unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
                // SAFETY: Allocator contract: allocated by us with `layout`.
                unsafe { api2::deallocate($classes, ptr, layout) }
            }

            unsafe fn grow(
                &self,
                ptr: NonNull<u8>,
                old: Layout,
                new: Layout,
            ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator contract.
                unsafe { api2::resize($classes, ptr, old, new, false) }
            }

            unsafe fn grow_zeroed(
                &self,
                ptr: NonNull<u8>,
                old: Layout,
                new: Layout,
            ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator contract.
                unsafe { api2::resize($classes, ptr, old, new, true) }
            }

            unsafe fn shrink(
                &self,
                ptr: NonNull<u8>,
                old: Layout,
                new: Layout,
            ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator contract.
                unsafe { api2::resize($classes, ptr, old, new, false) }
            }
        }
    };
}

kmalloc_impls!(Kmalloc, KmallocClasses::Spaced);
kmalloc_impls!(KmallocKernel, KmallocClasses::Kernel);

mod api2 {
    use super::*;
    use allocator_api2::alloc::AllocError;

    fn dangling(align: usize) -> NonNull<[u8]> {
        // SAFETY: an alignment is never zero.
        let p = unsafe { NonNull::new_unchecked(align as *mut u8) };
        NonNull::slice_from_raw_parts(p, 0)
    }

    fn slice(p: *mut u8, len: usize) -> Result<NonNull<[u8]>, AllocError> {
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, len))
            .ok_or(AllocError)
    }

    /// `allocate`/`allocate_zeroed`: zero-sized layouts get a dangling aligned pointer.
    #[inline]
    pub(super) fn allocate(
        classes: KmallocClasses,
        layout: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout.align()));
        }
        slice(core_alloc(classes, layout, zero), layout.size())
    }

    /// `deallocate`: zero-sized layouts were never allocated.
    ///
    /// # Safety
    /// Allocator contract: `ptr` is ours with `layout`.
    #[inline]
    pub(super) unsafe fn deallocate(classes: KmallocClasses, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: forwarded contract.
            unsafe { core_free(classes, ptr.as_ptr(), layout) }
        }
    }

    /// `grow`, `grow_zeroed` and `shrink`: zero-sized ends become `allocate`/`deallocate`; a
    /// change of alignment allocates, copies and frees; otherwise the core's realloc.
    ///
    /// # Safety
    /// The `Allocator::grow`/`shrink` contract: `ptr` is ours with `old`.
    pub(super) unsafe fn resize(
        classes: KmallocClasses,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 {
            return allocate(classes, new, zero);
        }
        if new.size() == 0 {
            // SAFETY: Allocator contract.
            unsafe { deallocate(classes, ptr, old) };
            return Ok(dangling(new.align()));
        }
        if new.align() != old.align() {
            let fresh = allocate(classes, new, zero)?;
            // SAFETY: both blocks are live and distinct; the copy fits the smaller one.
            unsafe {
                ptr::copy_nonoverlapping(
                    ptr.as_ptr(),
                    fresh.as_ptr().cast::<u8>(),
                    old.size().min(new.size()),
                );
                deallocate(classes, ptr, old);
            }
            return Ok(fresh);
        }
        // SAFETY: Allocator contract: `ptr` is ours with `old`; both sizes > 0, same alignment.
        let p = unsafe { core_realloc(classes, ptr.as_ptr(), old, new, zero) };
        slice(p, new.size())
    }
}
