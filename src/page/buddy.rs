//! `PageAllocator`: one node's free lists — allocation with splitting, freeing with
//! coalescing, in-place resizing. (Part of `impl PageAllocator`: see `page/mod.rs` for why it is
//! split by concern.)

use super::chunk::*;
use super::pcp::{PcpSlot, PCP_MAX_ORDER};
use super::*;
use crate::os::Num;
use crate::sync::{AtomicPtr, AtomicU64, Backoff, Ordering, PageReleaseScope, SpinGuard, SpinLock};
use core::ptr::{self, null_mut, NonNull};

/// Why `take_free` found nothing.
pub(super) enum Empty {
    /// The free lists are empty.
    Empty,
    /// The free lists are empty but blocks are in transit and will be back shortly.
    InTransit,
}

/// How long an allocation may wait in all for memory on its way to the free lists (blocks in
/// transit, chunks being mapped) before it grows or fails. The holder is another thread inside
/// `madvise` or `mmap`, normally for microseconds; the bound only matters when that thread is
/// descheduled, and one second keeps a loaded machine (CI on 2 shared cores) from turning a
/// preempted releaser into a spurious failure, while a thread that never returns still cannot
/// hang an allocation.
#[cfg(not(loom))]
pub(super) const WAIT_NS: u64 = 1_000_000_000;
/// Under loom: how many yields (each lets the other threads progress).
#[cfg(loom)]
pub(super) const WAIT_YIELDS: u32 = 16;
/// How many times one page allocation at the limit calls the reclaim hook, while each call
/// reports progress (the kernel's `MAX_RECLAIM_RETRIES`).
pub(crate) const MAX_RECLAIM_RETRIES: u32 = 16;

/// The bounded wait of one allocation (or of the reclaim hook for the registry lock).
pub(crate) struct BoundedWait {
    pub(super) backoff: Backoff,
    /// Deadline in `os::now_ns` time (0: not started); loom: yields left.
    #[cfg(not(loom))]
    pub(super) deadline: u64,
    #[cfg(loom)]
    pub(super) left: u32,
}

impl BoundedWait {
    pub(crate) fn new() -> Self {
        BoundedWait {
            backoff: Backoff::new(),
            #[cfg(not(loom))]
            deadline: 0,
            #[cfg(loom)]
            left: WAIT_YIELDS,
        }
    }

    /// Snoozes and returns true if the caller may keep waiting; false once the budget is
    /// spent, or at once when this thread is itself releasing (a signal handler must not wait
    /// for the thread it interrupted).
    pub(crate) fn again(&mut self) -> bool {
        if PageReleaseScope::active() {
            return false;
        }
        #[cfg(not(loom))]
        {
            let now = crate::os::now_ns();
            if self.deadline == 0 {
                self.deadline = now.saturating_add(WAIT_NS);
            } else if now >= self.deadline {
                return false;
            }
        }
        #[cfg(loom)]
        {
            if self.left == 0 {
                return false;
            }
            self.left -= 1;
        }
        self.backoff.snooze();
        true
    }
}

/// The free lists and counters of one node.
pub(super) struct BuddyState {
    pub(super) free: [*mut Page; NR_ORDERS],
    pub(super) nr_free: [usize; NR_ORDERS],
    pub(super) chunks: *mut ChunkMeta,
    pub(super) nr_chunks: usize,
    pub(super) mapped: usize,
    pub(super) metadata: usize,
    pub(super) free_bytes: usize,
    pub(super) released_free: usize,
    pub(super) released_total: u64,
    pub(super) allocs: u64,
    pub(super) frees: u64,
    /// Free blocks detached while the lock is dropped for `madvise` ("in transit"): the length
    /// of `isolated`. While non-zero, an allocation that finds the free lists empty waits
    /// (bounded) for them instead of mapping a new chunk (found by loom model m8: a spare
    /// chunk, or a spurious failure under the limit).
    pub(super) transit: usize,
    /// The blocks in transit, linked through their heads' `lru_prev`/`lru_next`, each head's
    /// `slabs` holding its order: reachable by the fork child handler.
    pub(super) isolated: *mut Page,
    /// Bumped when a fork child takes the transit list over: a release that began before the
    /// fork (in the forking thread) then forgets its blocks.
    pub(super) generation: u64,
    /// The decay epoch (`decay.rs`): advanced by every decay run; a dirty free block records
    /// the epoch it was put on its list in, in its head's `slabs`.
    pub(super) epoch: u32,
}

// SAFETY: the raw pointers name descriptors and chunks owned by this node; the state is only
// reached through the node's SpinLock.
unsafe impl Send for BuddyState {}

impl BuddyState {
    /// Records the detached block `p` of `order` (head already marked in transit) on the
    /// transit list.
    ///
    /// # Safety
    /// The node lock is held and `p` heads a detached block of ours.
    pub(super) unsafe fn isolate(&mut self, p: *mut Page, order: u32) {
        // SAFETY: the links of a detached head are ours under the node lock.
        unsafe {
            (*p).slabs.set(order);
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(self.isolated);
            if !self.isolated.is_null() {
                (*self.isolated).lru_prev.set(p);
            }
        }
        self.isolated = p;
        self.transit += 1;
    }

    /// Removes `p` from the transit list.
    ///
    /// # Safety
    /// The node lock is held and `p` is on the transit list.
    pub(super) unsafe fn unisolate(&mut self, p: *mut Page) {
        // SAFETY: as in `isolate`.
        unsafe {
            let prev = (*p).lru_prev.get();
            let next = (*p).lru_next.get();
            if prev.is_null() {
                self.isolated = next;
            } else {
                (*prev).lru_next.set(next);
            }
            if !next.is_null() {
                (*next).lru_prev.set(prev);
            }
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(null_mut());
            (*p).slabs.set(0);
        }
        self.transit -= 1;
    }

    /// Pushes free head `p` (info already `Free(order, released)`) on its list, freed now for
    /// the decay.
    ///
    /// # Safety
    /// The node lock is held (we are inside it) and `p` is a detached block of ours.
    pub(super) unsafe fn push(&mut self, p: *mut Page, order: u32, released: bool) {
        // SAFETY: forwarded contract.
        unsafe { self.push_stamped(p, order, released, self.epoch) }
    }

    /// [`Self::push`] of a block whose pages have been free since `stamp` (a decay epoch:
    /// a piece split off a free block keeps the block's stamp, a merged block the mean age
    /// of its halves; see [`merged_stamp`]).
    ///
    /// # Safety
    /// As [`Self::push`].
    pub(super) unsafe fn push_stamped(
        &mut self,
        p: *mut Page,
        order: u32,
        released: bool,
        stamp: u32,
    ) {
        let o = order as usize;
        let head = self.free[o];
        // SAFETY: the node lock protects the list links of every free head of this node.
        unsafe {
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(head);
            if !head.is_null() {
                (*head).lru_prev.set(p);
            }
        }
        self.free[o] = p;
        self.nr_free[o] += 1;
        self.free_bytes += PAGE_SIZE << order;
        if released {
            self.released_free += PAGE_SIZE << order;
        } else {
            // Its age for the decay (`decay.rs`).
            // SAFETY: as above: the node lock guards a free head, its links and its stamp.
            unsafe { (*p).slabs.set(stamp) };
        }
    }

    /// Unlinks free head `p` of `order` from its list.
    ///
    /// # Safety
    /// The node lock is held and `p` is on list `order`.
    pub(super) unsafe fn unlink(&mut self, p: *mut Page, order: u32) {
        let o = order as usize;
        // SAFETY: as in `push`.
        unsafe {
            let prev = (*p).lru_prev.get();
            let next = (*p).lru_next.get();
            if prev.is_null() {
                self.free[o] = next;
            } else {
                (*prev).lru_next.set(next);
            }
            if !next.is_null() {
                (*next).lru_prev.set(prev);
            }
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(null_mut());
            if (*p).info().released() {
                self.released_free -= PAGE_SIZE << order;
            }
        }
        self.nr_free[o] -= 1;
        self.free_bytes -= PAGE_SIZE << order;
    }
}

/// The owner of a chunk leaked by a dropped allocator (never a real, aligned budget address).
pub(super) const LEAKED_OWNER: *const PageBudget = core::ptr::dangling::<PageBudget>();

/// The marker of a block detached from the lists while it is being freed or released.
#[inline]
pub(super) fn in_transit(node: usize) -> PageInfo {
    PageInfo::tail(0, node)
}

/// Outcome of trying to map a chunk.
pub(super) enum Grow {
    Grown,
    Limit,
    Os,
}

/// One node's buddy allocator.
pub(crate) struct PageAllocator {
    pub(super) node: usize,
    pub(super) budget: *const PageBudget,
    pub(super) state: SpinLock<BuddyState>,
    pub(super) failed: AtomicU64,
    pub(super) injected: AtomicU64,
    pub(super) reclaim_calls: AtomicU64,
    pub(super) hook: AtomicPtr<()>,
    pub(super) hook_arg: AtomicPtr<()>,
    /// When the next decay run is due (`decay.rs`), in `os::coarse_now_ns` time.
    pub(super) next_decay: AtomicU64,
    /// The per-CPU page lists (`pcp.rs`): `nr_pcp` slots (0: none).
    pub(super) pcp: *const PcpSlot,
    pub(super) nr_pcp: usize,
}

// SAFETY: `budget` points to a Sync PageBudget that outlives the allocator (constructor
// contract); everything else is Sync/Send on its own.
unsafe impl Send for PageAllocator {}
// SAFETY: as above.
unsafe impl Sync for PageAllocator {}

impl PageAllocator {
    /// An empty allocator for `node`. `budget` outlives the allocator (it lives in the same
    /// heap-less instance block).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn new(node: usize, budget: *const PageBudget) -> Self {
        if node > PageInfo::MAX_NODE {
            crate::os::abort_msg(&["kmem: page allocator node id out of range"]);
        }
        PageAllocator {
            node,
            budget,
            state: SpinLock::new(
                "page allocator lock",
                BuddyState {
                    free: [null_mut(); NR_ORDERS],
                    nr_free: [0; NR_ORDERS],
                    chunks: null_mut(),
                    nr_chunks: 0,
                    mapped: 0,
                    metadata: 0,
                    free_bytes: 0,
                    released_free: 0,
                    released_total: 0,
                    allocs: 0,
                    frees: 0,
                    transit: 0,
                    isolated: null_mut(),
                    generation: 0,
                    epoch: 0,
                },
            ),
            failed: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            reclaim_calls: AtomicU64::new(0),
            hook: AtomicPtr::new(null_mut()),
            hook_arg: AtomicPtr::new(null_mut()),
            next_decay: AtomicU64::new(0),
            pcp: core::ptr::null(),
            nr_pcp: 0,
        }
    }

    /// This allocator with per-CPU page lists in front of its buddy lists (`pcp.rs`): `n`
    /// slots at `slots`.
    ///
    /// # Safety
    /// `slots` points to `n` initialised [`PcpSlot`]s that outlive the allocator and are used
    /// by no other allocator.
    pub(crate) unsafe fn with_pcp(mut self, slots: *const PcpSlot, n: usize) -> Self {
        self.pcp = slots;
        self.nr_pcp = n;
        self
    }

    #[inline]
    pub(super) fn budget(&self) -> &PageBudget {
        // SAFETY: the budget outlives the allocator (constructor contract).
        unsafe { &*self.budget }
    }

    /// Registers the function called (without any kmem page lock held, possibly inside a slot
    /// lock) when an allocation without `NORETRY` finds the limit reached; the allocation is
    /// then retried, and the hook called again while it returns true ("memory may have been
    /// freed: retry"), at most [`MAX_RECLAIM_RETRIES`] times. `Kmem` registers
    /// `KmemShared::reclaim` (every cache's empty partial slabs back to the buddy lists).
    pub(crate) fn set_reclaim_hook(&self, hook: fn(*const ()) -> bool, arg: *const ()) {
        self.hook_arg.store(arg as *mut (), Ordering::Relaxed);
        self.hook.store(hook as *mut (), Ordering::Release);
    }

    pub(super) fn fail(&self, injected: bool) -> Option<NonNull<Page>> {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if injected {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Head descriptor of a block of `2^order` pages: kind `Block`, every tail page `Tail`
    /// with its head offset. `None` on failure (order too large, limit, `NORETRY`, injected
    /// fault, OS refusal), counted in `failed_allocs`.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn alloc_pages(&self, order: u32, flags: GfpFlags) -> Option<NonNull<Page>> {
        if order > MAX_ORDER {
            return self.fail(false);
        }
        self.alloc_block(order, 1 << order, flags)
    }

    /// `alloc_pages_exact`: a block of exactly `pages` pages (`1..=PAGES_PER_CHUNK`), aligned
    /// to `2^order_for_pages(pages)` pages. The block of that order is taken and the pages past
    /// `pages` go straight back to the free lists, under the same lock, as the aligned blocks
    /// that tile them (none can merge: each one's buddy is, or contains, a page we keep). The
    /// head records the exact count ([`PageInfo::block`]); free with
    /// [`PageAllocator::free_pages_exact`] and the same count.
    #[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
    pub(crate) fn alloc_pages_exact(&self, pages: usize, flags: GfpFlags) -> Option<NonNull<Page>> {
        if pages == 0 || pages > PAGES_PER_CHUNK {
            return self.fail(false);
        }
        self.alloc_block(order_for_pages(pages), pages, flags)
    }

    /// [`PageAllocator::alloc_pages`] and [`PageAllocator::alloc_pages_exact`]: `pages` of a
    /// block of `order` (`2^(order-1) < pages <= 2^order`).
    fn alloc_block(&self, order: u32, pages: usize, flags: GfpFlags) -> Option<NonNull<Page>> {
        self.decay_tick_now();
        if self.budget().inject() {
            return self.fail(true);
        }
        if let Some(page) = self.pcp_alloc(order, pages) {
            // Blocks on per-CPU lists are dirty (a ZERO allocation memsets).
            self.finish_alloc(page, pages, false, flags);
            // SAFETY: descriptors are never null.
            return Some(unsafe { NonNull::new_unchecked(page) });
        }
        let mut wait = BoundedWait::new();
        let mut limit_hits = 0u32;
        let mut reclaims = 0u32;
        loop {
            match self.take_free(order, pages) {
                Ok((page, released)) => {
                    self.finish_alloc(page, pages, released, flags);
                    // SAFETY: descriptors are never null.
                    return Some(unsafe { NonNull::new_unchecked(page) });
                }
                // Free memory is on its way back to the lists (a concurrent madvise): wait for
                // it (bounded) rather than mapping a chunk we do not need.
                Err(Empty::InTransit) if wait.again() => continue,
                Err(_) => {}
            }
            match self.grow() {
                Grow::Grown => continue,
                Grow::Os => return self.fail(false),
                Grow::Limit => {
                    // A chunk another thread is mapping will reach the lists shortly.
                    if self.budget().growing.load(Ordering::Acquire) != 0 && wait.again() {
                        continue;
                    }
                    limit_hits += 1;
                    if limit_hits == 1 {
                        // Re-check the free lists once: a concurrent free or grow may have
                        // filled them since `take_free` looked; and give the per-CPU lists'
                        // blocks back first (the kernel's `drain_all_pages` before OOM), only
                        // trying each slot lock (this may run under a slot or list lock).
                        self.drain_pcp(true);
                        continue;
                    }
                    let hook = self.hook.load(Ordering::Acquire);
                    if flags.contains(GfpFlags::NORETRY)
                        || reclaims >= MAX_RECLAIM_RETRIES
                        || hook.is_null()
                    {
                        return self.fail(false);
                    }
                    reclaims += 1;
                    self.reclaim_calls.fetch_add(1, Ordering::Relaxed);
                    // No page lock is held here (take_free and grow released it).
                    // SAFETY: `hook` was stored from a `fn(*const ()) -> bool` in set_reclaim_hook.
                    let f: fn(*const ()) -> bool = unsafe { core::mem::transmute(hook) };
                    if !f(self.hook_arg.load(Ordering::Relaxed)) {
                        // Nothing to reclaim, and no other thread reclaiming: give up after
                        // one more look at the lists (a concurrent free may have landed).
                        reclaims = MAX_RECLAIM_RETRIES;
                    }
                    // What reclaim freed may sit on the per-CPU page lists (slabs of order <= 3
                    // are freed there): the next limit hit drains them and looks again before
                    // it reclaims again. Another thread may take the blocks before the retry
                    // does (it allocates too): the retry reclaims again, while reclaim makes
                    // progress, at most `MAX_RECLAIM_RETRIES` times (the kernel's
                    // `should_reclaim_retry`).
                    limit_hits = 0;
                }
            }
        }
    }

    /// Takes a free block of exactly `order` (splitting a larger one), keeps its first `pages`
    /// pages and gives the rest back (see [`PageAllocator::alloc_pages_exact`]), marks its head
    /// `Block`, and says whether its memory is released (zero).
    pub(super) fn take_free(&self, order: u32, pages: usize) -> Result<(*mut Page, bool), Empty> {
        let mut st = self.state.lock();
        let Some((p, released, stamp)) = self.take_locked(&mut st, order) else {
            // (Planted bug for loom-tests: ignore blocks in transit and map a spare chunk.)
            let wait = st.transit > 0 && !cfg!(kmem_mutant = "alloc_ignores_transit");
            return Err(if wait { Empty::InTransit } else { Empty::Empty });
        };
        for_each_piece(pages, 1 << order, |j, o| {
            // SAFETY: `j < 2^order`: a page of our detached block; the lock is held. The piece is aligned (relative to a block aligned to 2^order) and cannot merge (see `alloc_pages_exact`), so it goes on its list as it is.
            unsafe {
                let q = p.add(j);
                (*q).set_info(PageInfo::head(PageKind::Free, o, self.node, released));
                st.push_stamped(q, o, released, stamp);
            }
        });
        // SAFETY: `p` is ours now.
        unsafe { (*p).set_info(PageInfo::block(order, self.node, pages)) };
        st.allocs += 1;
        Ok((p, released))
    }

    /// Unlinks a free block of exactly `order` (splitting a larger one, whose upper halves go
    /// back on their lists) and says whether its memory is released, and since when it was
    /// free (its decay stamp, which the halves keep: splitting an old block makes no part of it
    /// young); `None` when no list of order `>= order` has a block. The block is detached; its
    /// head's `info` is still the old free head's: the caller sets it.
    pub(super) fn take_locked(
        &self,
        st: &mut BuddyState,
        order: u32,
    ) -> Option<(*mut Page, bool, u32)> {
        let mut o = order;
        while (o as usize) < NR_ORDERS && st.free[o as usize].is_null() {
            o += 1;
        }
        if o as usize >= NR_ORDERS {
            return None;
        }
        let p = st.free[o as usize];
        // SAFETY: `p` is a free head on list `o` of this node; the lock is held.
        let released = unsafe { (*p).info() }.released();
        let stamp = if released {
            st.epoch
        } else {
            // SAFETY: as above (a dirty free head's `slabs` holds its stamp).
            unsafe { (*p).slabs.get() }
        };
        // SAFETY: as above.
        unsafe { st.unlink(p, o) };
        while o > order {
            o -= 1;
            // SAFETY: the upper half of a block of order o+1 lies inside the same chunk.
            let hi = unsafe { p.add(1 << o) };
            // SAFETY: `hi` is a descriptor of our detached block; the lock is held.
            unsafe {
                (*hi).set_info(PageInfo::head(PageKind::Free, o, self.node, released));
                st.push_stamped(hi, o, released, stamp);
            }
        }
        Some((p, released, stamp))
    }

    /// Writes the tail descriptors of the block's `pages` pages and zeroes them if asked; runs
    /// without the lock (the block is ours and no buddy check ever reads its interior
    /// descriptors).
    pub(super) fn finish_alloc(&self, p: *mut Page, pages: usize, released: bool, flags: GfpFlags) {
        for i in 1..pages {
            // SAFETY: the block's pages are descriptors i < 2^order after the head, same chunk.
            unsafe { (*p.add(i)).set_info(PageInfo::tail(i, self.node)) };
        }
        if flags.contains(GfpFlags::ZERO) && !released {
            // SAFETY: `p` is a genuine descriptor (from our free list).
            let (meta, idx) = unsafe { chunk_of(p) };
            // SAFETY: the block's memory is mapped, writable, and exclusively ours.
            unsafe { ptr::write_bytes((*meta).base.add(idx << PAGE_SHIFT), 0, PAGE_SIZE * pages) };
        }
    }

    /// Frees a block of `2^order` pages whose head is `page`.
    ///
    /// Validates in O(1), in every build: `page` must be a descriptor of a registered chunk of
    /// this node and allocator instance, of kind `Block` or `Slab`, of order `order` (and a
    /// `Block` must be whole, not one of [`PageAllocator::alloc_pages_exact`]'s). Anything
    /// else (double free, wrong order, tail page, foreign descriptor) aborts with a message
    /// naming the failed check. Coalesces with free buddies.
    ///
    /// # Safety
    /// The caller no longer uses the block's memory.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) unsafe fn free_pages(&self, page: NonNull<Page>, order: u32) {
        let (p, addr) = self.checked_descriptor(page, order);
        if order <= PCP_MAX_ORDER && self.nr_pcp != 0 {
            // SAFETY: genuine descriptor.
            let info = unsafe { &*p }.info();
            check_order_free(info, addr, order);
            // The CAS in pcp_free makes the check and the claim one step.
            // SAFETY: validated: an allocated head of ours of `order` (contract: ours to give).
            if unsafe { self.pcp_free(p, info, 1 << order) } {
                return;
            }
        }
        let st = self.state.lock();
        // SAFETY: genuine descriptor.
        let info = unsafe { &*p }.info();
        check_order_free(info, addr, order);
        // SAFETY: validated under the lock: an allocated head of ours of `order`.
        unsafe { self.free_validated(st, p, 0, 1 << order) };
    }

    /// Frees a block of exactly `pages` pages whose head is `page` (from
    /// [`PageAllocator::alloc_pages_exact`] or [`PageAllocator::resize_exact`]), validated as
    /// [`PageAllocator::free_pages`] validates, with the page count in place of the order.
    /// The pages go back as the aligned blocks that tile them, each coalescing with its free
    /// buddies (so the pages given back at allocation merge again), or onto the calling CPU's
    /// page lists when the block is small.
    ///
    /// # Safety
    /// The caller no longer uses the block's memory.
    #[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
    pub(crate) unsafe fn free_pages_exact(&self, page: NonNull<Page>, pages: usize) {
        let order = order_for_pages(pages.max(1));
        let (p, addr) = self.checked_descriptor(page, order);
        let done = order <= PCP_MAX_ORDER && self.nr_pcp != 0 && {
            // SAFETY: genuine descriptor.
            let info = unsafe { &*p }.info();
            check_exact_free(info, addr, order, pages);
            // SAFETY: validated: an allocated block of ours of `pages` pages (contract).
            unsafe { self.pcp_free(p, info, pages) }
        };
        if !done {
            let st = self.state.lock();
            // SAFETY: genuine descriptor.
            let info = unsafe { &*p }.info();
            check_exact_free(info, addr, order, pages);
            // SAFETY: validated under the lock: an allocated block of ours of `pages` pages.
            unsafe { self.free_validated(st, p, 0, pages) };
        }
        // Exact blocks are kmalloc's large sizes, freed with no kmem lock held.
        self.decay_tick_now();
    }

    /// The descriptor `page` once it is shown to be one of a registered chunk of this node
    /// and instance (aborts otherwise), and its address.
    fn checked_descriptor(&self, page: NonNull<Page>, order: u32) -> (*mut Page, usize) {
        // A garbage pointer is the caller's bug: found by its address alone, never read.
        let Some((meta, idx)) = descriptor_index(page.as_ptr()) else {
            bad_free(
                "not a kmem page descriptor (no registered chunk describes it)",
                page.as_ptr() as usize,
                order,
                None,
            )
        };
        // From here on use the table's pointer: it carries the metadata's provenance.
        // SAFETY: `idx` is a descriptor of the registered chunk `meta` (found above).
        let p = unsafe { ChunkMeta::page(meta, idx) };
        // SAFETY: registered chunk headers are initialised and immutable (except `next`).
        let addr = unsafe { (*meta).base } as usize + (idx << PAGE_SHIFT);
        // SAFETY: registered chunk headers are initialised and immutable (except `next`).
        let (owner, node) = unsafe { ((*meta).budget, (*meta).node) };
        if owner != self.budget {
            bad_free(
                if owner == LEAKED_OWNER {
                    "block belongs to a dropped allocator (its chunk was leaked)"
                } else {
                    "block belongs to another allocator instance"
                },
                addr,
                order,
                None,
            );
        }
        if node != self.node {
            bad_free("block belongs to another node", addr, order, None);
        }
        (p, addr)
    }

    /// Gives pages `[from, to)` of the validated block headed by `p` back: clears the slab
    /// owner when the whole block goes, then inserts the aligned pieces tiling the range, each
    /// coalescing with free buddies.
    ///
    /// # Safety
    /// `st` guards this node; `p` heads an allocated block of ours of at least `to` pages that
    /// the caller owns; no one uses pages `[from, to)` any more.
    pub(super) unsafe fn free_validated<'a>(
        &'a self,
        st: SpinGuard<'a, BuddyState>,
        p: *mut Page,
        from: usize,
        to: usize,
    ) {
        if from == 0 {
            // Clear the slab owner so stale slab frees see no cache.
            // SAFETY: the block is ours (validated under the lock).
            unsafe { (*p).cache.store(null_mut(), Ordering::Relaxed) };
        }
        // The pieces tile the range by *chunk* index: a block grown in place (`resize_exact`)
        // starts only as aligned as it was first allocated, so its own offsets say nothing
        // about alignment. Every piece's head is marked in transit before the first is inserted
        // (and the lock dropped): none is a Block head any more, so a racing double free of `p`
        // aborts.
        // SAFETY: `p` is a genuine descriptor (contract).
        let (meta, idx) = unsafe { chunk_of(p) };
        // SAFETY: pages of our block (lock held), inside the chunk.
        for_each_piece(idx + from, idx + to, |j, _| unsafe {
            (*ChunkMeta::page(meta, j)).set_info(in_transit(self.node))
        });
        let mut st = st;
        st.frees += 1;
        // An arbitrary range tiles into at most two pieces per order (rising, then falling).
        let mut pieces = [(0usize, 0u32); 2 * NR_ORDERS];
        let mut n = 0;
        for_each_piece(idx + from, idx + to, |j, o| {
            pieces[n] = (j, o);
            n += 1;
        });
        // The first piece uses the caller's guard; `insert_merging` releases it, so each later
        // piece re-takes the lock.
        let mut guard = Some(st);
        for &(j, o) in &pieces[..n] {
            let g = guard.take().unwrap_or_else(|| self.state.lock());
            // SAFETY: descriptor `j` heads a detached, in-transit piece of ours of order `o`, aligned to it in the chunk.
            unsafe { self.insert_merging(g, ChunkMeta::page(meta, j), o, false) };
        }
    }

    /// Changes the page count of an allocated, non-slab block in place (`krealloc` of a page
    /// block, from `old` to `new` pages, both `1..=PAGES_PER_CHUNK`). Shrinking gives pages
    /// `[new, old)` back (tiled into aligned pieces that coalesce). Growing takes the pages
    /// `[old, new)` after the block when every one of them is free: the free blocks covering
    /// them are unlinked, and the part of the last one past `new` goes back as aligned pieces.
    /// Returns whether the block now has `new` pages (on `false` nothing changed and the caller
    /// copies instead). The block keeps its address (and so its alignment); its head records
    /// the new count.
    ///
    /// # Safety
    /// `page` heads a block of `old` pages allocated from this node, owned by the caller.
    #[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
    pub(crate) unsafe fn resize_exact(&self, page: NonNull<Page>, old: usize, new: usize) -> bool {
        let p = page.as_ptr();
        if new == old {
            return true;
        }
        if new == 0 || new > PAGES_PER_CHUNK {
            return false;
        }
        // SAFETY: a genuine descriptor of a block we own (contract).
        let (meta, idx) = unsafe { chunk_of(p) };
        // SAFETY: chunk headers are immutable after publication.
        let usable = unsafe { (*meta).usable_pages };
        // SAFETY: as above.
        let info = unsafe { &*p }.info();
        if info.kind() != PageKind::Block || info.block_pages() != old {
            return false;
        }
        let new_info = PageInfo::block(order_for_pages(new), self.node, new);
        if new < old {
            // Tails of the kept pages are already right; the head says `new` before any page
            // past it is published.
            let st = self.state.lock();
            // SAFETY: our block's head (lock held: a concurrent free of a buddy sees it whole).
            unsafe { (*p).set_info(new_info) };
            // SAFETY: pages [new, old) of our block are given back by the caller.
            unsafe { self.free_validated(st, p, new, old) };
            return true;
        }
        if idx + new > usable {
            return false;
        }
        {
            let mut st = self.state.lock();
            // Pass 1: the free blocks covering [idx + old, idx + new): each must start where
            // the previous one ended (the pages before are ours, so a free block holding page
            // j starts at j).
            let mut j = idx + old;
            while j < idx + new {
                // SAFETY: j < idx + new <= usable <= PAGES_PER_CHUNK.
                let b = unsafe { ChunkMeta::page(meta, j) };
                // SAFETY: genuine descriptor; read under the lock.
                let bi = unsafe { &*b }.info();
                if bi.kind() != PageKind::Free {
                    return false;
                }
                j += 1 << bi.order();
            }
            let end = j;
            // Pass 2: take them, and give back what lies past `idx + new` of the last one.
            let mut j = idx + old;
            let (mut last_released, mut last_stamp) = (false, st.epoch);
            while j < end {
                // SAFETY: checked in pass 1: a free head of this node's list; lock held.
                unsafe {
                    let b = ChunkMeta::page(meta, j);
                    let bi = (*b).info();
                    last_released = bi.released();
                    // A dirty free head's `slabs` holds its decay stamp.
                    last_stamp = (*b).slabs.get();
                    st.unlink(b, bi.order());
                    (*b).set_info(PageInfo::tail(j - idx, self.node));
                    j += 1 << bi.order();
                }
            }
            // SAFETY: our block's head; the absorbed pages are ours now.
            unsafe { (*p).set_info(new_info) };
            // The excess tiles an aligned block's suffix: each piece's buddy is, or contains, a
            // page we keep, so none can merge.
            for_each_piece(idx + new, end, |q, o| {
                // SAFETY: `q` is a page of the last absorbed free block, ours under the lock.
                unsafe {
                    let b = ChunkMeta::page(meta, q);
                    (*b).set_info(PageInfo::head(PageKind::Free, o, self.node, last_released));
                    st.push_stamped(b, o, last_released, last_stamp);
                }
            });
        }
        for j in old..new {
            // SAFETY: pages of our (grown) block.
            unsafe { (*ChunkMeta::page(meta, idx + j)).set_info(PageInfo::tail(j, self.node)) };
        }
        true
    }

    /// Merges the detached block `(head, order)` with free buddies and puts the result on a
    /// free list, releasing it (without the lock) if it reaches RELEASE_ORDER.
    ///
    /// # Safety
    /// `head` heads a detached block of ours whose head is marked in transit; `st` guards this
    /// node's state; `released` is true only if the block's memory reads as zero.
    pub(super) unsafe fn insert_merging<'a>(
        &'a self,
        mut st: SpinGuard<'a, BuddyState>,
        mut head: *mut Page,
        mut order: u32,
        mut released: bool,
    ) {
        // SAFETY: `head` is a genuine descriptor (contract).
        let (meta, mut idx) = unsafe { chunk_of(head) };
        // SAFETY: chunk headers are immutable after publication.
        let (usable, base) = unsafe { ((*meta).usable_pages, (*meta).base) };
        // After a failed release, this call tries no other (the block stays dirty).
        let mut may_release = true;
        // Since when the (merged) block's dirty pages have been free, for the decay: now for
        // the block inserted, the mean age of the halves at each merge.
        let mut stamp = st.epoch;
        loop {
            while order < MAX_ORDER {
                let bidx = idx ^ (1 << order);
                if bidx >= usable {
                    break;
                }
                // SAFETY: bidx < usable <= PAGES_PER_CHUNK.
                let b = unsafe { ChunkMeta::page(meta, bidx) };
                // SAFETY: genuine descriptor.
                let bi = unsafe { &*b }.info();
                // (Planted bug for loom-tests: merging with a free buddy of another order.)
                if bi.kind() != PageKind::Free
                    || (bi.order() != order && !cfg!(kmem_mutant = "buddy_merge_skips_order_check"))
                {
                    break;
                }
                // SAFETY: as above (a dirty free head's `slabs` holds its decay stamp).
                let b_stamp = unsafe { (*b).slabs.get() };
                stamp = merged_stamp(
                    st.epoch,
                    (!released).then_some(stamp),
                    (!bi.released()).then_some(b_stamp),
                );
                let (lo, hi) = if bidx < idx { (bidx, idx) } else { (idx, bidx) };
                // SAFETY: a Free head of this node's chunk is on list `order`; lock held. Both halves are ours now: `hi` becomes an interior page of the merged block, `lo` its in-transit head.
                unsafe {
                    st.unlink(b, order);
                    (*b).set_info(in_transit(self.node));
                    (*ChunkMeta::page(meta, hi)).set_info(PageInfo::tail(hi - lo, self.node));
                    head = ChunkMeta::page(meta, lo);
                    (*head).set_info(in_transit(self.node));
                }
                let new_order = order + 1;
                if released != bi.released() {
                    if self.release_at_once(new_order) && may_release && self.releasable(order) {
                        let dirty = if released { bidx } else { idx };
                        // SAFETY: the dirty half lies in the detached merged block.
                        let r = unsafe {
                            self.release_detached(
                                st,
                                head,
                                new_order,
                                base.add(dirty << PAGE_SHIFT),
                                PAGE_SIZE << order,
                            )
                        };
                        let Some((g, ok)) = r else { return };
                        st = g;
                        released = ok;
                        may_release &= ok;
                    } else {
                        released = false;
                    }
                }
                idx = lo;
                order = new_order;
            }
            if self.release_at_once(order) && !released && may_release && self.releasable(order) {
                // SAFETY: a detached free block of ours.
                let r = unsafe {
                    self.release_detached(
                        st,
                        head,
                        order,
                        base.add(idx << PAGE_SHIFT),
                        PAGE_SIZE << order,
                    )
                };
                let Some((g, ok)) = r else { return };
                st = g;
                released = ok;
                may_release = ok;
                // A buddy may have been freed while we were unlocked.
                continue;
            }
            break;
        }
        // SAFETY: `head` is our detached block; the lock is held.
        unsafe {
            (*head).set_info(PageInfo::head(PageKind::Free, order, self.node, released));
            st.push_stamped(head, order, released, stamp);
        }
    }
}

/// The decay stamp of a block merged from two buddies (equal sizes) whose dirty halves carry
/// the stamps given (`None`: a released half, which holds no resident page), at epoch `now`:
/// the mean age of the dirty halves, so that the merged block counts as free for as long as
/// its resident bytes have been on average.
///
/// Taking the younger stamp (what a merged block got before) let every small free beside an
/// old dirty block make the whole block young again: a program that keeps freeing a little
/// deferred the release of everything around it indefinitely (kmem-bench's `idle`).
pub(super) fn merged_stamp(now: u32, a: Option<u32>, b: Option<u32>) -> u32 {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (x, y) = (now.wrapping_sub(a), now.wrapping_sub(b));
            // The mean without overflow.
            now.wrapping_sub(x / 2 + y / 2 + (x & y & 1))
        }
        (Some(s), None) | (None, Some(s)) => s,
        (None, None) => now,
    }
}

/// The smallest order whose block holds `pages` pages (`pages >= 1`).
#[inline]
#[cfg_attr(loom, allow(dead_code))] // exact blocks are kmalloc's, which loom builds do not use
pub(crate) const fn order_for_pages(pages: usize) -> u32 {
    pages.next_power_of_two().trailing_zeros()
}

/// Calls `f(j, order)` for the maximal aligned blocks that tile `[from, to)`, in ascending
/// order: `j` is aligned to `2^order` (so indices must be relative to something aligned to at
/// least every such order: the chunk, or a block of an order at least the pieces'), and each
/// block is the largest that starts at `j` and fits. At most two blocks per order.
#[inline]
pub(super) fn for_each_piece(from: usize, to: usize, mut f: impl FnMut(usize, u32)) {
    let mut j = from;
    while j < to {
        let align = if j == 0 {
            MAX_ORDER
        } else {
            j.trailing_zeros().min(MAX_ORDER)
        };
        let fit = usize::BITS - 1 - (to - j).leading_zeros();
        let o = align.min(fit);
        f(j, o);
        j += 1 << o;
    }
}

/// The checks of `free_pages(order)`: an allocated head of that order, whole (aborts naming
/// what is wrong).
fn check_order_free(info: PageInfo, addr: usize, order: u32) {
    check_allocated_head(info, addr, order);
    if info.order() != order {
        bad_free(
            "wrong order: the block was allocated with another order",
            addr,
            order,
            Some(info),
        );
    }
    if info.block_pages() != 1 << order {
        bad_free(
            "wrong size: the block has an exact page count (free_pages_exact)",
            addr,
            order,
            Some(info),
        );
    }
}

/// The checks of `free_pages_exact(pages)`: an allocated `Block` of that page count.
#[cfg_attr(loom, allow(dead_code))]
fn check_exact_free(info: PageInfo, addr: usize, order: u32, pages: usize) {
    check_allocated_head(info, addr, order);
    if info.kind() != PageKind::Block || info.block_pages() != pages {
        bad_free(
            "wrong size: the block was allocated with another page count",
            addr,
            order,
            Some(info),
        );
    }
}

/// The kind checks of a free: `info` must head an allocated block (aborts naming what it is
/// instead).
fn check_allocated_head(info: PageInfo, addr: usize, order: u32) {
    match info.kind() {
        PageKind::Block | PageKind::Slab => {}
        PageKind::Free | PageKind::Pcp => bad_free(
            "double free: block is already free",
            addr,
            order,
            Some(info),
        ),
        PageKind::Tail if info.head_offset() == 0 => bad_free(
            "double free: block is being freed concurrently",
            addr,
            order,
            Some(info),
        ),
        PageKind::Tail => {
            // A tail of an allocated block, or an interior page of a free one.
            let head = virt_to_page(addr as *const u8).map(|h| h.info().kind());
            if matches!(head, Some(PageKind::Free | PageKind::Pcp)) {
                bad_free(
                    "double free: page lies inside a free block",
                    addr,
                    order,
                    Some(info),
                )
            }
            bad_free(
                "not the head of a block (tail page)",
                addr,
                order,
                Some(info),
            )
        }
        PageKind::Absent => bad_free(
            "page beyond the end of a partial chunk",
            addr,
            order,
            Some(info),
        ),
    }
}

/// Aborts with a precise description of a bad `free_pages`.
#[cold]
#[inline(never)]
pub(super) fn bad_free(what: &str, addr: usize, order: u32, info: Option<PageInfo>) -> ! {
    let a = Num::hex(addr as u64);
    let o = Num::dec(order as u64);
    let (kind, found) = match info {
        Some(i) => (
            match i.kind() {
                PageKind::Absent => "Absent",
                PageKind::Free => "Free",
                PageKind::Block => "Block",
                PageKind::Slab => "Slab",
                PageKind::Tail => "Tail",
                PageKind::Pcp => "Pcp",
            },
            Num::dec(i.order() as u64),
        ),
        None => ("?", Num::dec(0)),
    };
    crate::os::abort_msg(&[
        "kmem: free_pages: ",
        what,
        " (page ",
        a.as_str(),
        ", order given ",
        o.as_str(),
        ", descriptor kind ",
        kind,
        ", descriptor order ",
        if info.is_some() { found.as_str() } else { "?" },
        ")",
    ])
}
