//! Per-CPU page lists in front of each node's buddy allocator: the kernel's `pcp` lists
//! (`struct per_cpu_pages`, `rmqueue_pcplist`, `free_unref_page`). (Part of
//! `impl PageAllocator`: see `page/mod.rs` for why it is split by concern.)
//!
//! # Why
//!
//! Every new slab, every discarded slab and every page-sized kmalloc allocation and free took
//! the node's page lock: with one node, one process-wide lock. Most of those blocks are small
//! (orders 0 to 3: slabs, kmalloc's 8 KiB–32 KiB sizes), and a block freed on a CPU is most
//! often allocated again on the same CPU soon after. So each CPU slot keeps a short stack of
//! free blocks per small order, as the kernel does, and those allocations and frees take only
//! the slot's own lock, which nobody else wants.
//!
//! # The lists
//!
//! A node has one [`PcpSlot`] per CPU slot of its instance (the same slot choice as the
//! caches: `cpu::current_cpu() % slots`). A slot holds, under its own [`SpinLock`], one LIFO
//! list per order `0..=PCP_MAX_ORDER` (3, the kernel's `PAGE_ALLOC_COSTLY_ORDER`), linked
//! through the heads' `next`, and the number of pages it holds. A block on such a list is free
//! but not on the buddy lists: its head says `Pcp` with its order, so no buddy ever merges with
//! it (the kernel's pcp pages are not `PageBuddy` either), and a free of it is a double free.
//!
//! - **Allocation** of order `<= PCP_MAX_ORDER` *tries* the slot lock. It pops a block of the
//!   order; when the list is empty it first *refills* it with a batch of blocks taken from the
//!   buddy lists under the page lock (`PCP_BATCH` pages' worth, the kernel's `batch`). An
//!   exact page count (`alloc_pages_exact`) keeps its pages and pushes the rest of the block
//!   onto the lists of the smaller orders.
//! - **Free** of order `<= PCP_MAX_ORDER` first *claims* the block: one CAS of the head's
//!   `info` from the allocated value it validated to `Pcp` (a concurrent double free loses the
//!   CAS and aborts). Then it tries the slot lock and pushes the block (an exact block: the
//!   aligned pieces tiling it). Above `PCP_HIGH` pages (the kernel's `high`), the list is
//!   *drained*: blocks go back to the buddy lists under the page lock, merging, until at
//!   least `PCP_BATCH` pages are gone.
//! - **Never wait.** The slot lock is only ever tried, not waited for, on these paths: its
//!   holder may be a thread descheduled in the middle of a refill (user space cannot disable
//!   preemption as the kernel does around its pcp lists). On failure the allocation or free
//!   goes to the buddy lists directly, which is always correct.
//! - **Draining.** `drain_pcp` (every slot, waiting for each lock: shrink, the limit, drop)
//!   returns every block to the buddy lists: `Kmem::shrink_all` drains before it releases, an
//!   allocation that reaches the memory limit drains (the kernel's `drain_all_pages` before
//!   OOM) before it reclaims, and a decay run drains, with `try_lock`, the slots that were not
//!   used since the previous run (their blocks then age on the buddy lists like any other).
//!
//! Lock order: slot lock (and list lock, on the slab paths that free pages) → **pcp slot
//! lock** → page lock. The fork handlers take every pcp lock after the list locks and before
//! the page locks (`KmemShared::fork_lock_all`), so a child never inherits one held.
//!
//! Accounting: blocks on pcp lists are free memory (`PageStats::pcp_bytes`), not on the buddy
//! free lists (`free_bytes`), and dirty (counted resident: a released block taken into a pcp
//! list loses its released bit, so a `ZERO` allocation from a pcp list always memsets).

use super::buddy::*;
use super::chunk::*;
use super::*;
use crate::sync::{Ordering, SpinGuard, SpinLock};
use core::ptr::null_mut;

/// The largest order kept on the per-CPU lists (`PAGE_ALLOC_COSTLY_ORDER`).
pub(crate) const PCP_MAX_ORDER: u32 = if MAX_ORDER < 3 { MAX_ORDER } else { 3 };
const PCP_ORDERS: usize = PCP_MAX_ORDER as usize + 1;
/// Pages a slot may hold before a free drains a batch (`high`): 256 KiB; loom: 2.
pub(crate) const PCP_HIGH: usize = if cfg!(loom) { 2 } else { 64 };
/// Pages moved per refill or drain (`batch`): 64 KiB; loom: 1.
pub(crate) const PCP_BATCH: usize = if cfg!(loom) { 1 } else { 16 };

/// One slot's lists (under the slot's lock).
pub(crate) struct PcpLists {
    heads: [*mut Page; PCP_ORDERS],
    pages: usize,
    /// Used since the last decay run.
    used: bool,
    /// Blocks handed out / taken back through this slot (for `PageStats`).
    allocs: u64,
    frees: u64,
}

// SAFETY: the pointers name descriptors of this node's chunks, reached only under the lock.
unsafe impl Send for PcpLists {}

/// A CPU slot's page lists of one node (64-byte aligned: one slot per cache line pair, no
/// false sharing between CPUs).
#[repr(align(64))]
pub(crate) struct PcpSlot {
    pub(super) lists: SpinLock<PcpLists>,
}

impl PcpSlot {
    /// Empty lists.
    pub(crate) fn new() -> Self {
        PcpSlot {
            lists: SpinLock::new(
                "per-CPU page list lock",
                PcpLists {
                    heads: [null_mut(); PCP_ORDERS],
                    pages: 0,
                    used: false,
                    allocs: 0,
                    frees: 0,
                },
            ),
        }
    }
}

impl PcpLists {
    /// Pushes the free block `p` of `order` (its head already says `Pcp`).
    ///
    /// # Safety
    /// The slot lock is held; `p` heads a block of ours that is on no list.
    unsafe fn push(&mut self, p: *mut Page, order: u32) {
        // SAFETY: the `next` link of a detached block is ours.
        unsafe { (*p).next().set(self.heads[order as usize]) };
        self.heads[order as usize] = p;
        self.pages += 1 << order;
    }

    /// Pops a block of `order`, or null.
    fn pop(&mut self, order: u32) -> *mut Page {
        let p = self.heads[order as usize];
        if !p.is_null() {
            // SAFETY: a block on our list (lock held).
            unsafe {
                self.heads[order as usize] = (*p).next().get();
                (*p).next().set(null_mut());
            }
            self.pages -= 1 << order;
        }
        p
    }
}

impl PageAllocator {
    /// The calling CPU's slot, if this node has per-CPU lists.
    #[inline]
    fn pcp_slot(&self) -> Option<&PcpSlot> {
        if self.nr_pcp == 0 {
            return None;
        }
        let cpu = crate::cpu::current_cpu();
        let i = if cpu < self.nr_pcp {
            cpu
        } else {
            cpu % self.nr_pcp
        };
        // SAFETY: `i < nr_pcp`; the slots live as long as the allocator.
        Some(unsafe { &*self.pcp.add(i) })
    }

    /// Slot `i`.
    fn pcp_at(&self, i: usize) -> &PcpSlot {
        debug_assert!(i < self.nr_pcp);
        // SAFETY: `i < nr_pcp`; the slots live as long as the allocator.
        unsafe { &*self.pcp.add(i) }
    }

    /// Allocation through the calling CPU's lists: a block of `order` holding `pages` pages,
    /// marked `Block` (tails not yet written: `finish_alloc`), or `None` when the order is too
    /// large, the slot lock is busy, or the buddy lists have nothing to refill with (the caller
    /// then takes the buddy path, which waits, grows or fails as usual).
    pub(super) fn pcp_alloc(&self, order: u32, pages: usize) -> Option<*mut Page> {
        if order > PCP_MAX_ORDER {
            return None;
        }
        let slot = self.pcp_slot()?;
        let mut l = slot.lists.try_lock()?;
        l.used = true;
        if l.heads[order as usize].is_null() {
            self.pcp_refill(&mut l, order);
        }
        let p = l.pop(order);
        if p.is_null() {
            return None;
        }
        for_each_piece(pages, 1 << order, |j, o| {
            // SAFETY: `j < 2^order`: a page of our block; the piece is aligned and free.
            unsafe {
                let q = p.add(j);
                (*q).set_info(PageInfo::head(PageKind::Pcp, o, self.node, false));
                l.push(q, o);
            }
        });
        // SAFETY: `p` is ours now.
        unsafe { (*p).set_info(PageInfo::block(order, self.node, pages)) };
        l.allocs += 1;
        if l.pages > PCP_HIGH {
            self.pcp_drain_locked(&mut l, PCP_BATCH);
        }
        Some(p)
    }

    /// Takes up to a batch of blocks of `order` from the buddy lists onto the slot's list.
    fn pcp_refill(&self, l: &mut SpinGuard<'_, PcpLists>, order: u32) {
        let n = (PCP_BATCH >> order).max(1);
        let mut st = self.state.lock();
        for _ in 0..n {
            let Some((p, _released, _stamp)) = self.take_locked(&mut st, order) else {
                break;
            };
            // SAFETY: `p` is a detached block of ours (page lock held); the slot lock is held by the caller.
            unsafe {
                (*p).set_info(PageInfo::head(PageKind::Pcp, order, self.node, false));
                l.push(p, order);
            }
        }
    }

    /// Returns blocks of the slot to the buddy lists until at least `want` pages are gone (or
    /// the slot is empty), largest orders first.
    fn pcp_drain_locked(&self, l: &mut SpinGuard<'_, PcpLists>, want: usize) -> usize {
        let mut gone = 0;
        for order in (0..=PCP_MAX_ORDER).rev() {
            while gone < want {
                let p = l.pop(order);
                if p.is_null() {
                    break;
                }
                gone += 1 << order;
                let st = self.state.lock();
                // SAFETY: `p` heads a free block of ours of `order`, now on no list; under the page lock it becomes an in-transit head and is inserted, merging.
                unsafe {
                    (*p).set_info(in_transit(self.node));
                    self.insert_merging(st, p, order, false);
                }
            }
        }
        gone
    }

    /// Frees a validated block through the calling CPU's lists: claims its head (CAS from
    /// `info`, the allocated value the caller validated, to `Pcp`: a concurrent double free
    /// loses and aborts), then pushes the aligned pieces tiling its `pages` pages. Returns
    /// `false` with nothing done when the block is too large for the lists or the node has
    /// none; on a busy slot lock, the claimed block goes to the buddy lists.
    ///
    /// # Safety
    /// `p` heads an allocated block of ours of `pages` pages and order `order`, whose info was
    /// `info` when validated, that the caller gives back.
    pub(super) unsafe fn pcp_free(&self, p: *mut Page, info: PageInfo, pages: usize) -> bool {
        let order = info.order();
        if order > PCP_MAX_ORDER || self.nr_pcp == 0 {
            return false;
        }
        let claimed = PageInfo::head(PageKind::Pcp, order, self.node, false);
        // SAFETY: a genuine descriptor (validated by the caller).
        let page = unsafe { &*p };
        if page
            .info
            .compare_exchange(info.0, claimed.0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            bad_free(
                "double free: block is being freed concurrently",
                crate::page::page_address(page) as usize,
                order,
                Some(page.info()),
            );
        }
        // Stale slab frees must see no cache.
        page.cache.store(null_mut(), Ordering::Relaxed);
        let Some(mut l) = self.pcp_slot().and_then(|s| s.lists.try_lock()) else {
            // The slot is busy (its holder may be descheduled): the buddy lists.
            let st = self.state.lock();
            // SAFETY: claimed above: ours alone; it becomes in transit under the page lock.
            unsafe {
                (*p).set_info(in_transit(self.node));
                self.free_validated(st, p, 0, pages);
            }
            return true;
        };
        l.used = true;
        l.frees += 1;
        // (Planted bug for loom-tests: mark the pieces `Free`, so that a buddy being freed to
        // the buddy lists merges with a block that is on a per-CPU list, not on a free list.)
        let kind = if cfg!(kmem_mutant = "pcp_free_marks_free") {
            PageKind::Free
        } else {
            PageKind::Pcp
        };
        // Tiled by chunk index: a block grown in place is only as aligned as it was allocated.
        // SAFETY: `p` is a genuine descriptor (contract).
        let (meta, idx) = unsafe { chunk_of(p) };
        for_each_piece(idx, idx + pages, |j, o| {
            // SAFETY: pages of our claimed block, inside the chunk; the slot lock is held.
            unsafe {
                let q = ChunkMeta::page(meta, j);
                (*q).set_info(PageInfo::head(kind, o, self.node, false));
                l.push(q, o);
            }
        });
        if l.pages > PCP_HIGH {
            self.pcp_drain_locked(&mut l, PCP_BATCH);
        }
        true
    }

    /// Returns every block on every slot's lists to the buddy lists, waiting for each slot
    /// lock (`drain_all_pages`); `try_only` skips busy slots instead. Returns the pages moved.
    /// Call with no kmem lock held, or only locks above the pcp lock (slot, list).
    pub(crate) fn drain_pcp(&self, try_only: bool) -> usize {
        let mut moved = 0;
        for i in 0..self.nr_pcp {
            let slot = self.pcp_at(i);
            let l = if try_only {
                slot.lists.try_lock()
            } else {
                Some(slot.lists.lock())
            };
            if let Some(mut l) = l {
                moved += self.pcp_drain_locked(&mut l, usize::MAX);
            }
        }
        moved
    }

    /// The decay's part (`decay.rs`): drains, with `try_lock`, the slots not used since the
    /// previous run, and marks the others unused.
    pub(super) fn decay_pcp(&self) {
        for i in 0..self.nr_pcp {
            if let Some(mut l) = self.pcp_at(i).lists.try_lock() {
                if !core::mem::replace(&mut l.used, false) && l.pages != 0 {
                    self.pcp_drain_locked(&mut l, usize::MAX);
                }
            }
        }
    }

    /// Adds the slots' figures: pages held (`pcp_bytes`), allocations and frees served.
    pub(super) fn add_pcp_stats(&self, out: &mut PageStats) {
        for i in 0..self.nr_pcp {
            let l = self.pcp_at(i).lists.lock();
            out.pcp_bytes += l.pages * PAGE_SIZE;
            out.allocs += l.allocs;
            out.frees += l.frees;
        }
    }

    /// Fork support: takes every slot lock of this node, keeping them held with no guard
    /// (after every list lock, before the page lock: the lock order).
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_lock_pcp(&self) {
        for i in 0..self.nr_pcp {
            self.pcp_at(i).lists.raw_lock();
        }
    }

    /// Fork support: releases the locks [`PageAllocator::fork_lock_pcp`] took.
    ///
    /// # Safety
    /// The calling thread took them with `fork_lock_pcp` (in the child: the forking thread
    /// did).
    #[cfg(not(any(loom, miri)))]
    pub(crate) unsafe fn fork_unlock_pcp(&self) {
        for i in 0..self.nr_pcp {
            // SAFETY: forwarded contract.
            unsafe { self.pcp_at(i).lists.raw_unlock() };
        }
    }
}
