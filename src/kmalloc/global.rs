//! [`Kmalloc`]: the `GlobalAlloc` and `allocator_api2::Allocator` faces of kmalloc, both thin
//! wrappers over one core (`Kmalloc::core_*`), which enters the re-entrancy guard and calls the
//! paths.

use super::paths::{kfree, kmalloc, krealloc, kzalloc};
use super::reentry;
use super::KmallocClasses;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

/// kmalloc as a drop-in global allocator (`GlobalAlloc`) and as an
/// [`allocator_api2`](allocator_api2::alloc::Allocator) allocator, on [`Kmem::global()`](crate::Kmem::global).
///
/// Small layouts go to the `kmalloc-*` slab caches (see [`kmalloc_size_classes`](crate::kmalloc_size_classes) and the
/// alignment rule in [`kmalloc_class_for`](crate::kmalloc_class_for)), larger ones to buddy page blocks of the calling
/// CPU's node, and those above 4 MiB to their own OS mappings. Allocation failure returns null
/// (or `AllocError`); nothing on these paths allocates or panics. A `dealloc` whose layout
/// does not match the memory (wrong class, wrong block order, foreign pointer, double free of
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
/// The size classes are the spaced set ([`KmallocClasses::Spaced`], the default); a
/// [`Kmalloc::with_classes`]`(`[`KmallocClasses::Kernel`]`)` rounds to the kernel's sizes instead.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Kmalloc {
    classes: KmallocClasses,
}

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
        Kmalloc {
            classes: KmallocClasses::Spaced,
        }
    }

    /// The allocator rounding small layouts to the classes of `classes`. Memory must be freed
    /// by a `Kmalloc` of the same set: the class is derived from the layout.
    ///
    /// ```
    /// use core::alloc::{GlobalAlloc, Layout};
    /// use kmem::{Kmalloc, KmallocClasses};
    /// static KERNEL: Kmalloc = Kmalloc::with_classes(KmallocClasses::Kernel);
    /// let layout = Layout::from_size_align(300, 8).unwrap();
    /// // SAFETY: `layout` has a non-zero size.
    /// let p = unsafe { KERNEL.alloc(layout) };
    /// assert_eq!(kmem::cabi::usable_size(p), Some(512)); // kmalloc-512
    /// // SAFETY: `p` came from `KERNEL.alloc(layout)` and is freed once with the same layout.
    /// unsafe { KERNEL.dealloc(p, layout) };
    /// ```
    pub const fn with_classes(classes: KmallocClasses) -> Self {
        Kmalloc { classes }
    }

    /// The class set of this allocator.
    pub const fn classes(&self) -> KmallocClasses {
        self.classes
    }
}

/// The one core both faces call: enter the re-entrancy guard, take the path.
impl Kmalloc {
    /// Memory for `layout` (size > 0), zeroed if asked; null when exhausted.
    #[inline(always)]
    fn core_alloc(self, layout: Layout, zero: bool) -> *mut u8 {
        let _g = reentry::enter();
        if zero {
            kzalloc(layout, self.classes)
        } else {
            kmalloc(layout, self.classes)
        }
    }

    /// Frees `ptr`, allocated with `layout` (size > 0).
    ///
    /// # Safety
    /// `ptr` came from this allocator with `layout` and is freed once.
    #[inline(always)]
    unsafe fn core_free(self, ptr: *mut u8, layout: Layout) {
        let _g = reentry::enter();
        // SAFETY: forwarded contract.
        unsafe { kfree(ptr, layout, self.classes) }
    }

    /// Moves `ptr` (allocated with `old`, size > 0) to memory for `new` (size > 0), zeroing the
    /// bytes past `old.size()` if asked; null (and `ptr` untouched) when exhausted.
    ///
    /// # Safety
    /// `ptr` came from this allocator with `old`; `new.align() == old.align()`.
    #[inline]
    unsafe fn core_realloc(
        self,
        ptr: *mut u8,
        old: Layout,
        new: Layout,
        zero_tail: bool,
    ) -> *mut u8 {
        let _g = reentry::enter();
        // SAFETY: forwarded contract.
        let p = unsafe { krealloc(ptr, old, new, self.classes) };
        if zero_tail && !p.is_null() && new.size() > old.size() {
            // SAFETY: `p` holds `new.size()` bytes; the tail past the old contents is ours.
            unsafe { ptr::write_bytes(p.add(old.size()), 0, new.size() - old.size()) };
        }
        p
    }
}

// SAFETY: every path returns memory of at least `layout.size()` bytes aligned to
// `layout.align()` (classes by the alignment rule, blocks by buddy alignment, mappings by
// `os::map`'s alignment) or null; memory is only reused after `dealloc`.
unsafe impl GlobalAlloc for Kmalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.core_alloc(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.core_alloc(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc contract: `ptr` was allocated by us with `layout`.
        unsafe { self.core_free(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc contract: `new_size` rounded up to `layout.align()` fits in isize.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: GlobalAlloc contract: `ptr` is ours with `layout`; `new_size > 0`.
        unsafe { self.core_realloc(ptr, layout, new, false) }
    }
}

mod api2 {
    use super::*;
    use allocator_api2::alloc::{AllocError, Allocator};

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

    // SAFETY: as for GlobalAlloc; zero-sized layouts get a dangling aligned pointer that is
    // never passed to kfree; `Kmalloc` is a stateless handle, so clones and copies share all
    // memory. `grow`/`shrink` keep the alignment (the Allocator contract allows a different
    // one; kmalloc's layouts of both sizes then go to `allocate` + copy).
    unsafe impl Allocator for Kmalloc {
        #[inline]
        fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            if layout.size() == 0 {
                return Ok(dangling(layout.align()));
            }
            slice(self.core_alloc(layout, false), layout.size())
        }

        #[inline]
        fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            if layout.size() == 0 {
                return Ok(dangling(layout.align()));
            }
            slice(self.core_alloc(layout, true), layout.size())
        }

        #[inline]
        unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
            if layout.size() != 0 {
                // SAFETY: Allocator contract: allocated by us with `layout`.
                unsafe { self.core_free(ptr.as_ptr(), layout) }
            }
        }

        unsafe fn grow(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: Allocator contract.
            unsafe { resize(*self, ptr, old, new, false) }
        }

        unsafe fn grow_zeroed(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: Allocator contract.
            unsafe { resize(*self, ptr, old, new, true) }
        }

        unsafe fn shrink(
            &self,
            ptr: NonNull<u8>,
            old: Layout,
            new: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: Allocator contract.
            unsafe { resize(*self, ptr, old, new, false) }
        }
    }

    /// `grow`, `grow_zeroed` and `shrink`: zero-sized ends become `allocate`/`deallocate`; a
    /// change of alignment allocates, copies and frees; otherwise the core's realloc.
    ///
    /// # Safety
    /// The `Allocator::grow`/`shrink` contract: `ptr` is ours with `old`.
    unsafe fn resize(
        a: Kmalloc,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 {
            return if zero {
                a.allocate_zeroed(new)
            } else {
                a.allocate(new)
            };
        }
        if new.size() == 0 {
            // SAFETY: Allocator contract.
            unsafe { a.deallocate(ptr, old) };
            return Ok(dangling(new.align()));
        }
        if new.align() != old.align() {
            let fresh = if zero {
                a.allocate_zeroed(new)?
            } else {
                a.allocate(new)?
            };
            // SAFETY: both blocks are live and distinct; the copy fits the smaller one.
            unsafe {
                ptr::copy_nonoverlapping(
                    ptr.as_ptr(),
                    fresh.as_ptr().cast::<u8>(),
                    old.size().min(new.size()),
                );
                a.deallocate(ptr, old);
            }
            return Ok(fresh);
        }
        // SAFETY: Allocator contract: `ptr` is ours with `old`; both sizes > 0, same alignment.
        let p = unsafe { a.core_realloc(ptr.as_ptr(), old, new, zero) };
        slice(p, new.size())
    }
}
