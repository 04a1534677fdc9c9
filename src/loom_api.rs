//! Internals exposed to `loom-tests/` only (built with `--cfg loom`); not part of the API.
//! `lib.rs` mounts this file as `kmem::__loom`.

use crate::page::{FaultInjection, GfpFlags, Page, PageAllocator, PageBudget, PageKind, PcpSlot};
use crate::sync::Ordering;
use crate::KmemCache;
use core::ptr::NonNull;

/// The largest block order of the page allocator in this build.
pub const MAX_ORDER: u32 = crate::page::MAX_ORDER;
/// The page size.
pub const PAGE_SIZE: usize = crate::page::PAGE_SIZE;

/// One node's buddy allocator with its own (unlimited) budget.
pub struct Pages {
    alloc: core::mem::ManuallyDrop<PageAllocator>,
    // A raw pointer, not a `Box`: moving a `Box` would invalidate the allocator's pointer
    // to it under Stacked Borrows.
    budget: *mut PageBudget,
    /// The per-CPU page list slots (`with_pcp`), freed after the allocator.
    pcp: Option<*mut [PcpSlot]>,
}

// SAFETY: the budget is Sync and owned by this value; the allocator is Send + Sync.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: dropped once, before the budget it points to.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.alloc) };
        // SAFETY: from Box::into_raw in `new`; nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.budget) });
        if let Some(pcp) = self.pcp {
            // SAFETY: from Box::into_raw in `with_pcp`; the allocator using them is gone.
            drop(unsafe { Box::from_raw(pcp) });
        }
    }
}

/// A block handed out by [`Pages::alloc`]: its head descriptor and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    head: NonNull<Page>,
    /// The first byte of the block.
    pub addr: usize,
    /// Its order.
    pub order: u32,
}

// SAFETY: a block is an exclusively owned handle, like the pointer `alloc_pages` returns.
unsafe impl Send for Block {}

impl Pages {
    /// A fresh allocator for node 0.
    pub fn new() -> Self {
        let budget = Box::into_raw(Box::new(PageBudget::new(usize::MAX, FaultInjection::None)));
        let alloc = core::mem::ManuallyDrop::new(PageAllocator::new(0, budget));
        Pages {
            alloc,
            budget,
            pcp: None,
        }
    }

    /// A fresh allocator for node 0 with `slots` per-CPU page list slots (model CPU `c` uses
    /// slot `c % slots`).
    pub fn with_pcp(slots: usize) -> Self {
        let budget = Box::into_raw(Box::new(PageBudget::new(usize::MAX, FaultInjection::None)));
        let pcp: Box<[PcpSlot]> = (0..slots).map(|_| PcpSlot::new()).collect();
        let pcp = Box::into_raw(pcp);
        // SAFETY: `slots` initialised slots, freed only after the allocator (Drop), used by it alone.
        let alloc = unsafe { PageAllocator::new(0, budget).with_pcp(pcp as *const PcpSlot, slots) };
        Pages {
            alloc: core::mem::ManuallyDrop::new(alloc),
            budget,
            pcp: Some(pcp),
        }
    }

    /// `drain_all_pages`: every per-CPU list back to the buddy lists; the pages moved.
    pub fn drain(&self) -> usize {
        self.alloc.drain_pcp(false)
    }

    /// Bytes held on the per-CPU lists.
    pub fn pcp_bytes(&self) -> usize {
        let mut s = crate::PageStats::default();
        self.alloc.add_stats(&mut s);
        s.pcp_bytes
    }

    /// `alloc_pages(order)`.
    pub fn alloc(&self, order: u32) -> Option<Block> {
        let head = self.alloc.alloc_pages(order, GfpFlags::NONE)?;
        // SAFETY: a live descriptor just handed out.
        let addr = crate::page::page_address(unsafe { head.as_ref() }) as usize;
        Some(Block { head, addr, order })
    }

    /// `free_pages(block)`.
    ///
    /// # Safety
    /// `b` came from [`Pages::alloc`] on `self` and is freed once.
    pub unsafe fn free(&self, b: Block) {
        // SAFETY: forwarded contract.
        unsafe { self.alloc.free_pages(b.head, b.order) }
    }

    /// `release_free`: every dirty free block back to the OS (the node lock dropped while
    /// the blocks are in transit); the bytes released.
    pub fn release_free(&self) -> usize {
        self.alloc.release_free()
    }

    /// `(mapped_bytes, free_bytes, free blocks per order)`.
    pub fn state(&self) -> (usize, usize, [usize; crate::STATS_ORDERS]) {
        let mut s = crate::PageStats::default();
        self.alloc.add_stats(&mut s);
        (s.mapped_bytes, s.free_bytes, s.free_blocks)
    }
}

impl Default for Pages {
    fn default() -> Self {
        Self::new()
    }
}

/// `flush_slab` + `unfreeze_partials` of CPU slot `slot` (what shrink does first), without
/// the rest of shrink: drives `deactivate_slab` deterministically.
pub fn flush_cpu(cache: &KmemCache, slot: usize) {
    let c = cache.inner();
    let cpu = c.cpu(slot);
    let _g = cpu.lock.lock();
    c.flush_cpu_locked(cpu);
}

/// `pcs_flush_all` and the barns (what flush, shrink and destroy do first for a sheaf cache):
/// every slot's sheaves taken out (stopped and fenced in the rseq mode) and flushed.
pub fn flush_sheaves(cache: &KmemCache) {
    cache.inner().flush_sheaves();
}

/// The decay's barn trim (`CacheInner::trim_barns`): every full
/// sheaf in the cache's barns flushed back to its slabs. Returns the sheaves flushed.
pub fn trim_barns(cache: &KmemCache) -> usize {
    cache.inner().trim_barns()
}

/// The decay's CPU-sheaf trim (`CacheInner::trim_cpu_sheaves`) on the calling thread's
/// CPU slot: its sheaves flushed if they did not change since the previous call. Returns the
/// objects flushed.
pub fn trim_cpu_sheaves(cache: &KmemCache) -> usize {
    let c = cache.inner();
    c.trim_cpu_sheaves(c.slot_index(c.this_cpu()))
}

/// A slow path of slot `slot` that runs wherever the calling model thread is (it chose the slot
/// on that slot's CPU, then migrated): under the slot lock, detach and re-attach the slot, with
/// the slow path's own CAS (`KmemCacheCpu::cas_slot`: a sequence on the slot's CPU, or stop +
/// fence when the thread is elsewhere).
pub fn migrated_slow_path(cache: &KmemCache, slot: usize) {
    let c = cache.inner();
    let cpu = c.cpu(slot);
    let _g = cpu.lock.lock();
    let (slab, freelist, tid) = cpu.detach(c.tid_step);
    cpu.attach(c.tid_step, slab, freelist, tid);
}

/// Checks the node-list invariant of every node (under `list_lock`): each slab on a partial
/// list is a live, unfrozen slab of this cache with a free object, and `nr_partial` equals
/// the list's length.
pub fn check_lists(cache: &KmemCache) -> Result<(), String> {
    let c = cache.inner();
    for nid in 0..c.nr_nodes {
        let n = c.node(nid);
        let g = n.list_lock.lock();
        let mut len = 0;
        let mut slab = crate::slub::node::KmemCacheNode::first(&g);
        while !slab.is_null() {
            // SAFETY: on the list `g` protects.
            let s = unsafe { &*slab };
            let (fl, counters) = s.slab_state();
            if s.info().kind() != PageKind::Slab {
                return Err(format!("node {nid}: a freed page is on the partial list"));
            }
            if counters.frozen() {
                return Err(format!("node {nid}: a frozen slab is on the partial list"));
            }
            if fl == 0 {
                return Err(format!("node {nid}: a full slab is on the partial list"));
            }
            len += 1;
            if len > 64 {
                return Err(format!("node {nid}: the partial list is cyclic"));
            }
            // SAFETY: as above.
            slab = unsafe { crate::slub::node::KmemCacheNode::next_of(&g, slab) };
        }
        let nr = n.nr_partial.load(Ordering::Relaxed);
        if nr != len {
            return Err(format!(
                "node {nid}: nr_partial {nr} but {len} slabs on the list"
            ));
        }
    }
    Ok(())
}
