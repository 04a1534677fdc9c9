//! A copy of what a sheaf cache's inline fast paths read, for a caller that keeps its own
//! table of caches (kmalloc's classes): [`PcsView`].
//!
//! `Kmalloc`'s inline alloc used to load the class's cache pointer, then the cache's first
//! line (its mode byte, the slot array's shape), then the slot: the pointer load was one more
//! dependent load on the chain every allocation and free waits for. A view holds the same
//! constant fields in one cache line of a table the caller indexes directly (no pointer
//! first). A view is constant: whether the inline paths may use the sheaves at all (the rseq
//! mode, the sheaves switched on, one node for the free) is the caller's table pointer being
//! published or null (`kmalloc/mod.rs`), so no view carries a mode to test.
//!
//! ```text
//!   PcsView (64 bytes, one line)
//!   +0   slots       the sheaf slots' shape (base, nr, mask, full): what array_pop/push read
//!   +32  start       "object k <= last starts here" for offsets in  ┐
//!                    a slab: a multiplier and a limit               │ the free check
//!   +48  slab_mask   the bytes of a slab of the cache's order, - 1  │ (`tag`, then
//!   +52  tag         the slab tag of such a slab (`page::slab_tag`) ┘  `starts_object`)
//! ```
//!
//! A class whose cache cannot pop inline even when the sheaves are on (no sheaf capacity, a
//! slub_debug cache) has a view whose slot count is 0: every sequence on it reports
//! `Unavailable`, and the caller takes its out-of-line path; such a cache's slabs carry no
//! tag, so its view's tag is [`PcsView::NO_TAG`] and no free passes its inline check.
//!
//! The free check is narrower than the cache's own ([`CacheInner::starts_object`]): it knows
//! one slab order, the cache's (`geo.oo`), and compares the whole tag, class and order, with
//! the one such a slab carries; a slab of a fallback order (`geo.min`, when the page allocator
//! had no block of the first) fails it and is checked out of line. For that order the slab's
//! mask and the index of its last object are constants, so the check is an AND, a multiply
//! and one comparison (`slab::StartCheck`: "a multiple of the size" and "inside the slab" at
//! once); computing the mask from the tag's order and testing the end separately cost about
//! 1 ns per allocation and free pair in kmem-bench's `fastpath` (docs/performance.md, "The
//! kmalloc free check for one slab order"), and the rotation `ExactDiv` needs another 2–8%
//! ("The free check without a rotation").
//!
#![cfg_attr(loom, allow(dead_code))] // kmalloc's inline paths (not built under loom)

use super::cpu_slab::KmemCacheCpu;
use super::slab::StartCheck;
use super::CacheInner;
use crate::cpu::percpu::{self, ArraySlots};
use crate::page::PAGE_SIZE;
use crate::stats::StatItem::*;

/// A sheaf cache's inline fast-path fields, copied (module docs).
#[repr(C, align(64))]
pub(crate) struct PcsView {
    slots: ArraySlots<{ KmemCacheCpu::STRIDE }>,
    start: StartCheck,
    slab_mask: u32,
    tag: u16,
}

const _: () = assert!(core::mem::size_of::<PcsView>() == 64);

impl PcsView {
    /// A tag no slab carries (an order above every order): the free check of a cache whose
    /// objects the inline check cannot vouch for (untagged, coloured) always fails.
    pub(crate) const NO_TAG: u16 = u16::MAX;

    /// The view of `c` (its slab tag set, if it has one): what the inline paths need when the
    /// sheaves are on.
    pub(crate) fn of(c: &CacheInner) -> Self {
        let order = c.geo.oo.order;
        let slab_bytes = PAGE_SIZE << order;
        let class = c.slab_tag.load(crate::sync::Ordering::Acquire);
        // A coloured cache's objects do not start at multiples of the size (`check_size`);
        // the one-multiplication check covers kmalloc's sizes, not every size.
        let exact = c.geo.size <= StartCheck::MAX_SIZE && slab_bytes - 1 <= StartCheck::MAX_OFFSET;
        let tag = if class == 0 || c.check_size == u32::MAX || !exact {
            Self::NO_TAG
        } else {
            crate::page::slab_tag_of(class, order)
        };
        let last = u64::from(c.geo.oo.objects).saturating_sub(1);
        // A cache without sheaves to pop from: no slot, so every sequence fails at once.
        let pops = c.pool.capacity != 0 && !c.debug;
        PcsView {
            slots: if pops {
                c.sheaf_slots
            } else {
                c.sheaf_slots.without_slots()
            },
            start: if exact {
                StartCheck::new(c.geo.size, last)
            } else {
                StartCheck::new(1, 0)
            },
            // Slabs are at most 4 MiB (`MAX_ORDER`).
            slab_mask: (slab_bytes - 1) as u32,
            tag,
        }
    }

    /// The tag of the cache's slabs of its first order ([`Self::NO_TAG`] if the check must
    /// always fail): a free whose page carries another tag is checked out of line.
    #[inline(always)]
    pub(crate) fn tag(&self) -> u16 {
        self.tag
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

    /// Whether `obj`, in a page whose tag is [`Self::tag`], starts an object of its slab: an
    /// AND, a multiply, one comparison, and no branch on the size (`kfree` and the
    /// C ABI's `free` free every class in turn: a branch on "power of two or not"
    /// mispredicted whenever a program freed mixed sizes, 2.5 ns per operation of
    /// kmem-bench's churn, measured). Exactly [`CacheInner::starts_object`] for a slab of the
    /// cache's first order (test `view_check_is_the_cache_check_for_its_order`).
    #[inline(always)]
    pub(crate) fn starts_object(&self, obj: *mut u8) -> bool {
        // The offset in the slab: slabs are aligned to their size (buddy blocks).
        let off = (obj as usize as u32 & self.slab_mask) as usize;
        self.start.is_start(off)
    }
}

/// One pop from the `main` sheaf of the CPU's slot of `slots` (a sheaf cache's), and its
/// counter. `None` when it did not commit.
#[inline(always)]
pub(super) fn pop_from(slots: &ArraySlots<{ KmemCacheCpu::STRIDE }>) -> Option<*mut u8> {
    // SAFETY: `slots` are a live sheaf cache's (the caller's reference: a cache, or a view of one, and caches with views are never destroyed); every `main` is a live sheaf of it.
    let (at, obj) = unsafe { percpu::array_pop_fast(slots) };
    if obj == 0 {
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
    let at = unsafe { percpu::array_push_fast(slots, obj) };
    if at == 0 {
        return false;
    }
    KmemCacheCpu::at_sheaves(at).stat(FreePcs);
    true
}
