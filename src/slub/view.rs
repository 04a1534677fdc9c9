//! A copy of what a sheaf cache's inline fast paths read, for a caller that keeps its own
//! table of caches (kmalloc's classes): [`PcsView`].
//!
//! `Kmalloc`'s inline alloc used to load the class's cache pointer, then the cache's first
//! line (its mode byte, the slot array's shape), then the slot: the pointer load was one more
//! dependent load on the chain every allocation and free waits for. A view holds the same
//! constant fields in one cache line of a table the caller indexes directly (no pointer
//! first), and a copy of the cache's mode byte that [`CacheInner::set_sheaves`] keeps current.
//!
//! ```text
//!   PcsView (64 bytes, one line)
//!   +0   slots       the sheaf slots' shape (base, nr, mask, full): what array_pop/push read
//!   +32  size_div    exact division by the object size  ┐ the free check
//!   +56  check_size  the end test's size                 ┘ (CacheInner::starts_object)
//!   +60  mode        the cache's pcs_mode, mirrored
//! ```
//!
//! Everything but `mode` is constant once the cache exists. `mode` may lag the cache's own
//! byte for a moment while [`CacheInner::set_sheaves`] switches it, exactly as a relaxed read
//! of the cache's byte may: a fast path that still sees the sheaves on pops or pushes a sheaf,
//! which the switch then flushes; the out-of-line paths read the cache's own byte.

use super::cpu_slab::KmemCacheCpu;
use super::free::starts_object_in;
use super::slab::ExactDiv;
use super::{CacheInner, PCS_FAST_ALLOC, PCS_FAST_FREE};
use crate::cpu::percpu::{self, ArraySlots, Seq};
use crate::stats::StatItem::*;
use crate::sync::global::{AtomicU8, Ordering};

/// A sheaf cache's inline fast-path fields, copied (module docs).
#[repr(C, align(64))]
pub(crate) struct PcsView {
    slots: ArraySlots<{ KmemCacheCpu::STRIDE }>,
    size_div: ExactDiv,
    check_size: u32,
    mode: AtomicU8,
}

const _: () = assert!(core::mem::size_of::<PcsView>() == 64);

impl PcsView {
    /// The view of `c` now.
    pub(crate) fn of(c: &CacheInner) -> Self {
        PcsView {
            slots: c.sheaf_slots,
            size_div: c.size_div,
            check_size: c.check_size,
            mode: AtomicU8::new(c.pcs_mode.load(crate::sync::Ordering::Relaxed)),
        }
    }

    /// Whether allocations pop the sheaf inline (`PCS_FAST_ALLOC`: sheaves on, rseq mode).
    #[inline(always)]
    pub(crate) fn fast_alloc_on(&self) -> bool {
        self.mode.load(Ordering::Relaxed) & PCS_FAST_ALLOC != 0
    }

    /// Whether frees push onto the sheaf inline (`PCS_FAST_FREE`: and one node).
    #[inline(always)]
    pub(crate) fn fast_free_on(&self) -> bool {
        self.mode.load(Ordering::Relaxed) & PCS_FAST_FREE != 0
    }

    /// As [`CacheInner::pcs_pop_inline`].
    #[inline(always)]
    pub(crate) fn pop(&self) -> Option<*mut u8> {
        pop_from(&self.slots)
    }

    /// As [`CacheInner::pcs_push_inline`].
    #[inline(always)]
    pub(crate) fn push(&self, obj: usize) -> bool {
        push_onto(&self.slots, obj)
    }

    /// As [`CacheInner::starts_object`], with no branch on the size: one multiply-rotate test
    /// for every size, a power of two included. `kfree` and the C ABI's `free` free every
    /// class in turn; a branch on "power of two or not" mispredicted whenever a program freed
    /// mixed sizes (2.5 ns per operation of kmem-bench's churn, measured).
    #[inline(always)]
    pub(crate) fn starts_object(&self, order: u32, obj: *mut u8) -> bool {
        starts_object_in(
            self.size_div,
            self.check_size,
            crate::page::PAGE_SIZE << order,
            obj as usize,
        )
    }

    /// Sets the mirrored mode ([`CacheInner::set_sheaves`]).
    pub(super) fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

/// One pop from the `main` sheaf of the CPU's slot of `slots` (a sheaf cache's), and its
/// counter. `None` when it did not commit.
#[inline(always)]
pub(super) fn pop_from(slots: &ArraySlots<{ KmemCacheCpu::STRIDE }>) -> Option<*mut u8> {
    // SAFETY: `slots` are a live sheaf cache's (the caller's reference: a cache, or a view of one, and caches with views are never destroyed); every `main` is a live sheaf of it.
    let (st, at, obj) = unsafe { percpu::array_pop(slots) };
    if st != Seq::Done {
        return None;
    }
    KmemCacheCpu::at_sheaves(at).stat(AllocPcs);
    Some(obj as *mut u8)
}

/// One push of `obj` onto the `main` sheaf of the CPU's slot of `slots`, and its counter.
/// `false` when it did not commit.
#[inline(always)]
pub(super) fn push_onto(slots: &ArraySlots<{ KmemCacheCpu::STRIDE }>, obj: usize) -> bool {
    // SAFETY: as in `pop_from`; `obj` is the caller's.
    let (st, at) = unsafe { percpu::array_push(slots, obj) };
    if st != Seq::Done {
        return false;
    }
    KmemCacheCpu::at_sheaves(at).stat(FreePcs);
    true
}
