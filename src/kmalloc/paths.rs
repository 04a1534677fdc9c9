//! The kmalloc paths: where an allocation goes (a class cache, a buddy block, an OS mapping),
//! and how `kfree`/`krealloc` find their way back from a pointer and its layout.

use super::*;
use crate::page::{virt_to_page, GfpFlags, PageKind};
use core::ptr::NonNull;

/// `kmalloc`: memory for `layout` (size > 0), or null when memory is exhausted.
#[inline(always)]
pub(super) fn kmalloc(layout: Layout, classes: KmallocClasses) -> *mut u8 {
    match classes.index_fast(layout.size(), layout.align()) {
        Some(idx) => {
            // The class's view (`slub/view.rs`): one line, no cache pointer to chase first;
            // published while the caches pop their sheaves inline (the rseq mode).
            let Some(v) = kmalloc_pop_view(idx) else {
                // The first use (the caches are created out of line), the locked mode and
                // the cpu-slab design: their paths, one call away.
                return kmalloc_class(idx);
            };
            // The rseq mode's fast path, inline: one pop from the class cache's sheaf. Every
            // other case is the out-of-line call below, so a pop that commits needs no stack
            // frame.
            if let Some(obj) = v.pop() {
                return obj;
            }
            kmalloc_class(idx)
        }
        None => kmalloc_other(layout, classes),
    }
}

/// The inline part of [`kmalloc`] alone: an object popped from the class's sheaf in one
/// sequence (rseq mode), or null having done nothing (then the caller calls [`kmalloc`]).
#[inline(always)]
pub(super) fn kmalloc_fast(layout: Layout, classes: KmallocClasses) -> *mut u8 {
    if let Some(idx) = classes.index_fast(layout.size(), layout.align()) {
        if let Some(v) = kmalloc_pop_view(idx) {
            if let Some(obj) = v.pop() {
                return obj;
            }
        }
    }
    ptr::null_mut()
}

/// `kmalloc` of a layout `index_fast` does not place: an over-aligned class, a page block or
/// an OS mapping (out of line).
#[inline(never)]
fn kmalloc_other(layout: Layout, classes: KmallocClasses) -> *mut u8 {
    match classes.index(layout.size(), layout.align()) {
        Some(idx) => kmalloc_class(idx),
        None => kmalloc_large(layout, false),
    }
}

/// `kmalloc` from class `idx` when the inline pop did not serve, and in the locked mode or
/// the cpu-slab design (their fast paths inline here): creates the caches on first use, then
/// the whole `slab_alloc`.
#[inline(never)]
fn kmalloc_class(idx: usize) -> *mut u8 {
    match kmalloc_cache(idx) {
        Some(c) => c.slab_alloc(None),
        None => ptr::null_mut(),
    }
}

/// `kzalloc`: as [`kmalloc`], zeroed. Page blocks and OS mappings skip the `memset` where the
/// memory is known to be fresh.
#[inline]
pub(super) fn kzalloc(layout: Layout, classes: KmallocClasses) -> *mut u8 {
    match classes.index(layout.size(), layout.align()) {
        Some(idx) => {
            let p = match kmalloc_cache(idx) {
                Some(c) => c.slab_alloc(None),
                None => return ptr::null_mut(),
            };
            if !p.is_null() {
                // SAFETY: `p` is a fresh object of at least `layout.size()` bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
        None => kmalloc_large(layout, true),
    }
}

/// Page blocks and OS mappings.
#[inline(never)]
pub(super) fn kmalloc_large(layout: Layout, zero: bool) -> *mut u8 {
    match large_kind(layout.size(), layout.align()) {
        Kind::Pages(pages) => alloc_block(pages, zero),
        // Fresh anonymous mappings are zero: `zero` needs nothing. Registered (huge.rs), so
        // that a pointer alone finds it (the C ABI's `free`).
        Kind::Os { bytes, align } => super::huge::map(bytes, align),
        Kind::Class(_) => ptr::null_mut(),
    }
}

/// A block of exactly `pages` pages from the calling slot's node, else from any other node.
pub(super) fn alloc_block(pages: usize, zero: bool) -> *mut u8 {
    let Some(k) = Kmem::try_global() else {
        return ptr::null_mut();
    };
    let s = k.shared();
    // No kmem lock is held here: the instance's decay (free pages, and the barns' sheaves).
    s.decay_tick();
    let home = s.slot_node(k.current_slot());
    let flags = if zero { GfpFlags::ZERO } else { GfpFlags::NONE };
    for i in 0..s.nr_nodes {
        let nid = (home + i) % s.nr_nodes;
        if let Some(page) = s.node_pages(nid).alloc_pages_exact(pages, flags) {
            // SAFETY: a descriptor returned by the page allocator lives as long as it does.
            return crate::page::page_address(unsafe { page.as_ref() });
        }
    }
    ptr::null_mut()
}

/// The checked page block at `ptr` that `layout` says is a block of `pages` pages: its head
/// descriptor and the instance. Aborts with a precise message if it is not.
pub(super) fn page_block(
    ptr: *mut u8,
    layout: Layout,
    pages: usize,
) -> (
    &'static crate::page::Page,
    &'static crate::instance::KmemShared,
) {
    let Some(page) = virt_to_page(ptr) else {
        bad_kfree(
            ptr,
            layout,
            "expected a page block, but the pointer is not in any kmem memory",
        );
    };
    if crate::page::page_address(page) != ptr {
        bad_kfree(
            ptr,
            layout,
            "expected a page block, but the pointer is not the start of one",
        );
    }
    let info = page.info();
    match info.kind() {
        PageKind::Block => {}
        PageKind::Free | PageKind::Pcp => {
            bad_kfree(ptr, layout, "the page block is already free (double free)")
        }
        PageKind::Slab => bad_kfree(
            ptr,
            layout,
            "expected a page block, but the pointer is a slab object",
        ),
        _ => bad_kfree(
            ptr,
            layout,
            "expected a page block, but the page is not a block head",
        ),
    }
    if info.block_pages() != pages {
        bad_kfree(
            ptr,
            layout,
            "the page block has another size than the layout says",
        );
    }
    let Some(k) = Kmem::try_global() else {
        bad_kfree(ptr, layout, "the global kmem instance does not exist");
    };
    let s = k.shared();
    if info.node() >= s.nr_nodes {
        bad_kfree(
            ptr,
            layout,
            "the page block belongs to another kmem instance",
        );
    }
    (page, s)
}

/// `kfree` with the layout the memory was allocated with.
///
/// # Safety
/// `ptr` came from [`kmalloc`]/[`kzalloc`]/[`krealloc`] with `layout`, and is not used again.
#[inline(always)]
pub(super) unsafe fn kfree(ptr: *mut u8, layout: Layout, classes: KmallocClasses) {
    match classes.index_fast(layout.size(), layout.align()) {
        Some(idx) => {
            let Some(v) = kmalloc_push_view(idx) else {
                // No kmalloc cache yet (`freed_class_cache` reports it), the locked mode, the
                // cpu-slab design, several nodes: the descriptor check and the whole free, one
                // call away.
                // SAFETY: forwarded contract; `idx` is the class of `layout` (index_fast).
                return unsafe { kfree_class(ptr, layout, idx) };
            };
            // The O(1) check, from the dense tag table (`page::slab_tag`): the page holds a
            // live slab of this class and of its first order, and `ptr` starts one of its
            // objects. Anything else — a slab of a fallback order, an untagged slab (a debug
            // cache), a wrong layout, a foreign pointer — takes the descriptor check out of
            // line, which accepts the pointer or aborts naming what is wrong.
            if crate::page::slab_tag(ptr) != v.tag() || !v.starts_object(ptr) {
                // SAFETY: forwarded contract; `idx` is the class of `layout` (index_fast).
                return unsafe { kfree_class(ptr, layout, idx) };
            }
            // The fast path, inline: one push onto the cache's sheaf (rseq mode); the rest out
            // of line, so a push that commits needs no stack frame.
            if v.push(ptr as usize) {
                return;
            }
            // SAFETY: `ptr` is an object of class `idx` (checked above) that the caller gives back.
            unsafe { kfree_slab(ptr, layout, idx) }
        }
        // SAFETY: forwarded contract.
        None => unsafe { kfree_other(ptr, layout, classes) },
    }
}

/// `kfree` to class `idx` with the descriptor check, out of line (the locked mode, the
/// cpu-slab design, a tag miss).
///
/// # Safety
/// As [`kfree`], with `idx` the class of `layout`.
#[inline(never)]
unsafe fn kfree_class(ptr: *mut u8, layout: Layout, idx: usize) {
    // SAFETY: forwarded contract.
    unsafe { kfree_cache(freed_class_cache(ptr, layout, idx), ptr) }
}

/// The cache of class `idx`, which a `kfree` of `ptr` with `layout` frees to; aborts if no
/// kmalloc cache exists yet (then Kmalloc did not allocate `ptr`).
#[inline(always)]
fn freed_class_cache(ptr: *mut u8, layout: Layout, idx: usize) -> &'static CacheInner {
    let p = KMALLOC_CACHES[idx].load(Ordering::Acquire);
    if p.is_null() {
        bad_kfree(
            ptr,
            layout,
            "no kmalloc cache exists yet, so Kmalloc did not allocate it",
        );
    }
    // SAFETY: published kmalloc caches are never destroyed.
    unsafe { &*p }
}

/// `kfree` of a layout `index_fast` does not place (as [`kmalloc_other`], out of line).
///
/// # Safety
/// As [`kfree`].
#[inline(never)]
unsafe fn kfree_other(ptr: *mut u8, layout: Layout, classes: KmallocClasses) {
    match classes.index(layout.size(), layout.align()) {
        // SAFETY: forwarded contract, with the class cache of the layout.
        Some(idx) => unsafe { kfree_cache(freed_class_cache(ptr, layout, idx), ptr) },
        // SAFETY: forwarded contract.
        None => unsafe { kfree_large(ptr, layout) },
    }
}

/// `kfree` of an object that passed the tag check, out of line: the inline push did not
/// commit. The slab is the head of the page's block (a tagged page is a page of a live slab
/// of class `idx`).
///
/// # Safety
/// As [`kfree`], with `idx` the class of `layout` and `ptr` past the tag check.
#[inline(never)]
unsafe fn kfree_slab(ptr: *mut u8, layout: Layout, idx: usize) {
    let c = freed_class_cache(ptr, layout, idx);
    // The slab only if the sheaves do not take the object (a tagged page is a page of a live
    // slab of this class, so the descriptor walk finds it; the full check otherwise).
    let slab = || match crate::page::virt_to_page_allocated(ptr) {
        Some(slab) => slab as *const crate::page::Page as *mut crate::page::Page,
        None => c.owning_slab(ptr),
    };
    // SAFETY: `ptr` is an object of a slab of `c` (the tag check), given back once.
    unsafe { c.slab_free_after_push(ptr as usize, slab) }
}

/// `kfree` with the descriptor check (`owning_slab`: aborts naming what is wrong, or gives the
/// slab) and the whole `slab_free`, as every cache free, out of line: in the locked mode, the
/// cpu-slab design or with several nodes (see [`kmalloc_class`]), and for a pointer whose tag
/// check did not pass.
///
/// # Safety
/// As [`kfree`], with `c` the class cache of its layout.
#[inline(never)]
unsafe fn kfree_cache(c: &CacheInner, ptr: *mut u8) {
    let slab = c.owning_slab(ptr);
    // SAFETY: `ptr` is an object of `slab` (checked above) that the caller gives back.
    unsafe { c.slab_free(slab, ptr as usize) }
}

/// Frees a page block or an OS mapping, after checking that the pointer is one.
///
/// # Safety
/// As [`kfree`].
#[inline(never)]
pub(super) unsafe fn kfree_large(ptr: *mut u8, layout: Layout) {
    match large_kind(layout.size(), layout.align()) {
        Kind::Pages(pages) => {
            let (page, s) = page_block(ptr, layout, pages);
            // `free_pages_exact` re-checks ownership, node and size under its lock.
            // SAFETY: `page` is a live block head of `pages` pages (checked above).
            unsafe {
                s.node_pages(page.node())
                    .free_pages_exact(NonNull::from(page), pages)
            }
        }
        Kind::Os { bytes, align } => {
            let Some((mapped, mapped_align)) = super::huge::lookup(ptr as usize) else {
                bad_kfree(
                    ptr,
                    layout,
                    "expected an OS mapping, but no kmalloc mapping starts there",
                );
            };
            if mapped != bytes || mapped_align < align {
                bad_kfree(
                    ptr,
                    layout,
                    "the OS mapping there has another length or alignment than the layout says",
                );
            }
            // SAFETY: `ptr` starts a registered mapping of these arguments (checked above) that the caller gives back.
            unsafe { super::huge::unmap(ptr, mapped, mapped_align) }
        }
        Kind::Class(_) => {}
    }
}

/// `krealloc`: in place when the old and new layouts have the same kind (same class, same
/// block order, same OS mapping size) or are both page blocks whose order the buddy system
/// can change in place; otherwise allocate, copy, free. Null (with the old
/// memory untouched) when memory is exhausted.
///
/// # Safety
/// As [`kfree`] for `ptr` and `old`; `new.size() > 0`.
pub(super) unsafe fn krealloc(
    ptr: *mut u8,
    old: Layout,
    new: Layout,
    classes: KmallocClasses,
) -> *mut u8 {
    let (old_kind, new_kind) = (kind_of(old, classes), kind_of(new, classes));
    if old_kind == new_kind {
        return ptr;
    }
    if let (Kind::Pages(n1), Kind::Pages(n2)) = (old_kind, new_kind) {
        // A page block grows into the free pages after it, or gives its last pages back.
        let (page, s) = page_block(ptr, old, n1);
        // SAFETY: `page` heads a block of `n1` pages that the caller owns (checked above).
        if unsafe {
            s.node_pages(page.node())
                .resize_exact(NonNull::from(page), n1, n2)
        } {
            return ptr;
        }
    }
    if let (
        Kind::Os {
            bytes: b1,
            align: a1,
        },
        Kind::Os {
            bytes: b2,
            align: a2,
        },
    ) = (old_kind, new_kind)
    {
        if a1 == a2 {
            let Some((mapped, mapped_align)) = super::huge::lookup(ptr as usize) else {
                bad_kfree(
                    ptr,
                    old,
                    "expected an OS mapping, but no kmalloc mapping starts there",
                );
            };
            if mapped != b1 || mapped_align < a1 {
                bad_kfree(
                    ptr,
                    old,
                    "the OS mapping there has another length or alignment than the layout says",
                );
            }
            // Moved by mremap, not copied: in place, or its pages moved to a new address.
            // SAFETY: `ptr` starts this registered mapping, which the caller owns (checked).
            let q = unsafe { super::huge::remap(ptr, mapped, mapped_align, b2) };
            if !q.is_null() {
                return q;
            }
        }
    }
    let p = kmalloc(new, classes);
    if !p.is_null() {
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe { ptr::copy_nonoverlapping(ptr, p, old.size().min(new.size())) };
        // SAFETY: caller contract.
        unsafe { kfree(ptr, old, classes) };
    }
    p
}

/// Aborts with a precise description of a bad `dealloc`.
#[cold]
#[inline(never)]
pub(super) fn bad_kfree(ptr: *mut u8, layout: Layout, what: &str) -> ! {
    let a = crate::os::Num::hex(ptr as u64);
    let s = crate::os::Num::dec(layout.size() as u64);
    let al = crate::os::Num::dec(layout.align() as u64);
    crate::os::abort_msg(&[
        "kmem: Kmalloc dealloc of ",
        a.as_str(),
        " (size ",
        s.as_str(),
        ", align ",
        al.as_str(),
        "): ",
        what,
    ])
}
