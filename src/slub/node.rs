//! `struct kmem_cache_node`: a cache's per-node partial list and slab totals.
//!
//! The partial list holds unfrozen slabs that have both allocated and free objects (and up to
//! `min_partial` empty ones, kept to avoid page-allocator churn). It is an intrusive doubly
//! linked list through the head pages' `lru_prev`/`lru_next`, protected by `list_lock`.
//!
//! Invariant (with `list_lock` held): an unfrozen slab with a non-empty freelist is on its
//! node's partial list; an unfrozen full slab is on no list; a frozen slab is on no node list.
//! Every transition that changes list membership decides it inside the same `{freelist,
//! counters}` CAS that changes the state, with `list_lock` taken *before* that CAS, so the list
//! and the state can never disagree for someone holding the lock.

use crate::page::Page;
use crate::sync::{AtomicUsize, Ordering, SpinGuard, SpinLock};
use core::ptr;

/// The partial list proper (behind `list_lock`), and the full list of a debug cache.
pub(crate) struct PartialList {
    head: *mut Page,
    tail: *mut Page,
    /// `n->full`: the slabs of a debug cache that have no free object (`debug/paths.rs`);
    /// always empty for other caches, whose full slabs are on no list.
    pub(crate) full: *mut Page,
}

// SAFETY: the raw pointers name page descriptors that live as long as the allocator; they are
// only followed while `list_lock` is held.
unsafe impl Send for PartialList {}

/// Per-node state of a cache.
#[repr(C, align(64))]
pub(crate) struct KmemCacheNode {
    /// `list_lock`: protects the partial list and the list links of the slabs on it.
    pub(crate) list_lock: SpinLock<PartialList>,
    /// Slabs on the partial list (written under `list_lock`, read racily as a hint).
    pub(crate) nr_partial: AtomicUsize,
    /// All slabs of this cache on this node.
    pub(crate) nr_slabs: AtomicUsize,
    /// All objects in those slabs.
    pub(crate) total_objects: AtomicUsize,
}

/// Where `add_partial` puts a slab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ListEnd {
    /// Allocate from it next (it has the most recently used objects).
    Head,
    /// Allocate from it last (it had remote frees; let them accumulate).
    Tail,
}

impl KmemCacheNode {
    /// An empty node.
    pub(crate) fn new() -> Self {
        KmemCacheNode {
            list_lock: SpinLock::new(
                "kmem node list_lock",
                PartialList {
                    head: ptr::null_mut(),
                    tail: ptr::null_mut(),
                    full: ptr::null_mut(),
                },
            ),
            nr_partial: AtomicUsize::new(0),
            nr_slabs: AtomicUsize::new(0),
            total_objects: AtomicUsize::new(0),
        }
    }

    /// `inc_slabs_node`.
    pub(crate) fn inc_slabs(&self, objects: usize) {
        self.nr_slabs.fetch_add(1, Ordering::Relaxed);
        self.total_objects.fetch_add(objects, Ordering::Relaxed);
    }

    /// `dec_slabs_node`.
    pub(crate) fn dec_slabs(&self, objects: usize) {
        self.nr_slabs.fetch_sub(1, Ordering::Relaxed);
        self.total_objects.fetch_sub(objects, Ordering::Relaxed);
    }

    /// `add_partial`: links `slab` at `end`.
    ///
    /// # Safety
    /// `guard` is this node's `list_lock`; `slab` is a live slab head on no list.
    pub(crate) unsafe fn add_partial(
        &self,
        guard: &mut SpinGuard<'_, PartialList>,
        slab: *mut Page,
        end: ListEnd,
    ) {
        // The list's other members are live slabs on this list.
        // SAFETY: `slab` is live (contract) and its links are ours under `list_lock`.
        unsafe {
            let s = &*slab;
            match end {
                ListEnd::Head => {
                    s.lru_prev.set(ptr::null_mut());
                    s.lru_next.set(guard.head);
                    if guard.head.is_null() {
                        guard.tail = slab;
                    } else {
                        (*guard.head).lru_prev.set(slab);
                    }
                    guard.head = slab;
                }
                ListEnd::Tail => {
                    s.lru_next.set(ptr::null_mut());
                    s.lru_prev.set(guard.tail);
                    if guard.tail.is_null() {
                        guard.head = slab;
                    } else {
                        (*guard.tail).lru_next.set(slab);
                    }
                    guard.tail = slab;
                }
            }
        }
        self.nr_partial.store(
            self.nr_partial.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
    }

    /// `remove_partial`: unlinks `slab`.
    ///
    /// # Safety
    /// `guard` is this node's `list_lock`; `slab` is on this node's partial list.
    pub(crate) unsafe fn remove_partial(
        &self,
        guard: &mut SpinGuard<'_, PartialList>,
        slab: *mut Page,
    ) {
        // We hold `list_lock`.
        // SAFETY: `slab` and its neighbours are on this list (contract), whose links we own.
        unsafe {
            let s = &*slab;
            let (prev, next) = (s.lru_prev.get(), s.lru_next.get());
            if prev.is_null() {
                guard.head = next;
            } else {
                (*prev).lru_next.set(next);
            }
            if next.is_null() {
                guard.tail = prev;
            } else {
                (*next).lru_prev.set(prev);
            }
            s.lru_prev.set(ptr::null_mut());
            s.lru_next.set(ptr::null_mut());
        }
        self.nr_partial.store(
            self.nr_partial.load(Ordering::Relaxed) - 1,
            Ordering::Relaxed,
        );
    }

    /// The first slab on the list, or null.
    pub(crate) fn first(guard: &SpinGuard<'_, PartialList>) -> *mut Page {
        guard.head
    }

    /// The slab after `slab` on the list, or null.
    ///
    /// # Safety
    /// `slab` is on the list that `guard` protects.
    pub(crate) unsafe fn next_of(
        _guard: &SpinGuard<'_, PartialList>,
        slab: *mut Page,
    ) -> *mut Page {
        // SAFETY: on the list (contract), whose links we may read under `list_lock`.
        unsafe { (*slab).lru_next.get() }
    }
}
