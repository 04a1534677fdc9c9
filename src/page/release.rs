//! Returning free blocks to the OS (`madvise` with the page lock dropped: blocks "in transit"),
//! and the fork handlers' part. (Part of `impl PageAllocator`: see `page/mod.rs` for why it is
//! split by concern.)

use super::buddy::*;
use super::chunk::*;
use super::*;
use crate::os;
use crate::sync::{Ordering, PageReleaseScope, SpinGuard};
use core::ptr::null_mut;

impl PageAllocator {
    /// Whether a block of `order` spans whole OS pages (and so can be released).
    #[inline]
    pub(super) fn releasable(&self, order: u32) -> bool {
        PAGE_SIZE << order >= self.budget().os.size
    }

    /// Whether a free block of `order` is released as soon as it forms: without decay, blocks
    /// of [`RELEASE_ORDER`] and up; with decay, none (the decay returns them once they have
    /// been free for the delay, so a block freed and reused at once costs no `madvise` and no
    /// page faults).
    #[inline]
    pub(super) fn release_at_once(&self, order: u32) -> bool {
        order >= RELEASE_ORDER && self.budget().decay_ns.is_none()
    }

    /// Releases `[ptr, ptr + len)`, part or all of the detached block `(head, order)`, with the
    /// node lock dropped: records the block on the transit list, unlocks, `madvise`s, re-locks.
    /// Returns the guard and whether the OS dropped the range; `None` (lock released) when a
    /// fork child took the transit list over meanwhile (only in the child of a `fork` made by a
    /// signal handler that interrupted this call): the caller must then forget the block.
    ///
    /// # Safety
    /// `head` heads a detached block of ours of `order`, marked in transit, that contains the
    /// range; `st` guards this node's state.
    pub(super) unsafe fn release_detached<'a>(
        &'a self,
        mut st: SpinGuard<'a, BuddyState>,
        head: *mut Page,
        order: u32,
        ptr: *mut u8,
        len: usize,
    ) -> Option<(SpinGuard<'a, BuddyState>, bool)> {
        let scope = PageReleaseScope::enter();
        let generation = st.generation;
        // SAFETY: forwarded contract.
        unsafe { st.isolate(head, order) };
        drop(st);
        // SAFETY: the range lies in a detached free block of ours (contract).
        let ok = unsafe { os::release(ptr, len, &self.budget().os) };
        let mut st = self.state.lock();
        drop(scope);
        if st.generation != generation {
            return None;
        }
        // SAFETY: still on the transit list (same generation); lock held.
        unsafe { st.unisolate(head) };
        if ok {
            st.released_total += len as u64;
        }
        Some((st, ok))
    }

    /// `madvise(MADV_DONTNEED)`s every free block not yet released that spans whole OS pages;
    /// returns the bytes the OS dropped. Blocks are detached (in transit) while the lock is
    /// dropped, so a concurrent allocation may wait for them, or a `NORETRY` one fail.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn release_free(&self) -> usize {
        self.release_dirty(None)
    }

    /// [`PageAllocator::release_free`] of the dirty blocks whose decay stamp is at least
    /// `min_age` epochs old (all of them for `None`). The epoch advances first when `min_age`
    /// is given (a decay run, `decay.rs`).
    pub(super) fn release_dirty(&self, min_age: Option<u32>) -> usize {
        // Entered before any block is detached: a signal handler on this thread never waits
        // for them.
        let _scope = PageReleaseScope::enter();
        // The blocks this call detaches are pushed one after the other onto the front of the
        // transit list under one hold of the lock, so they form a run there: the last one
        // pushed, then through `lru_next` the ones before it. Other releases only push in
        // front of the run and only take their own blocks out, so the run stays whole while
        // its blocks are released one by one (each read under the lock before it leaves the
        // list); a fork child that took the list over shows as a new generation.
        let mut run: *mut Page = null_mut();
        let mut run_len = 0usize;
        let generation;
        {
            let mut st = self.state.lock();
            generation = st.generation;
            if min_age.is_some() {
                st.epoch = st.epoch.wrapping_add(1);
            }
            let epoch = st.epoch;
            for o in 0..NR_ORDERS as u32 {
                if !self.releasable(o) {
                    continue;
                }
                let mut p = st.free[o as usize];
                while !p.is_null() {
                    // SAFETY: free heads of this node; lock held.
                    unsafe {
                        let next = (*p).lru_next.get();
                        let old_enough =
                            min_age.is_none_or(|a| epoch.wrapping_sub((*p).slabs.get()) >= a);
                        if !(*p).info().released() && old_enough {
                            st.unlink(p, o);
                            (*p).set_info(in_transit(self.node));
                            st.isolate(p, o);
                            run = p;
                            run_len += 1;
                        }
                        p = next;
                    }
                }
            }
        }
        let mut total = 0;
        let mut p = run;
        for _ in 0..run_len {
            if p.is_null() {
                crate::os::abort_msg(&["kmem: internal error: a release run ended early"]);
            }
            // SAFETY: `p` is a detached block of this call's run (see above); `slabs` holds its
            // order while it is in transit.
            unsafe {
                let order = (*p).slabs.get();
                let (meta, idx) = chunk_of(p);
                let len = PAGE_SIZE << order;
                let ok = os::release((*meta).base.add(idx << PAGE_SHIFT), len, &self.budget().os);
                let mut st = self.state.lock();
                if st.generation != generation {
                    // A fork child took the rest over (see the module docs).
                    return total;
                }
                // The next block of the run, read before this one leaves the transit list
                // (which clears its links). (Planted bug for loom-tests: read it after.)
                let mut next = (*p).lru_next.get();
                st.unisolate(p);
                if cfg!(kmem_mutant = "release_run_next_after_unisolate") {
                    next = (*p).lru_next.get();
                }
                if ok {
                    total += len;
                    st.released_total += len as u64;
                }
                self.insert_merging(st, p, order, ok);
                p = next;
            }
        }
        total
    }

    /// Fork support, in the child: takes over the blocks that were in transit when the process
    /// forked (their releasing threads do not exist here) and returns them to the free lists as
    /// dirty, or leaks them if this thread was itself releasing (see the module docs). Call with
    /// no lock of this node held.
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_child_reclaim(&self) {
        let mut st = self.state.lock();
        if st.transit == 0 {
            return;
        }
        let mut p = st.isolated;
        st.isolated = null_mut();
        st.transit = 0;
        st.generation += 1;
        if PageReleaseScope::active() {
            // Our own interrupted release resumes after the handler and may still madvise one
            // of these blocks: leak them all (in this child only).
            return;
        }
        while !p.is_null() {
            // SAFETY: blocks of the transit list are detached, in-transit heads of ours whose releasers are gone; the lock is held.
            unsafe {
                let next = (*p).lru_next.get();
                let order = (*p).slabs.get();
                (*p).lru_prev.set(null_mut());
                (*p).lru_next.set(null_mut());
                (*p).slabs.set(0);
                self.insert_merging(st, p, order, false);
                st = self.state.lock();
                p = next;
            }
        }
    }

    /// Fork support (`instance/fork.rs`): takes this node's page lock and keeps it held with no guard,
    /// so that a `fork` cannot copy it in a locked state. Undo with [`PageAllocator::fork_unlock`].
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_lock(&self) {
        self.state.raw_lock();
    }

    /// Fork support: releases the page lock taken by [`PageAllocator::fork_lock`].
    ///
    /// # Safety
    /// The calling thread took it with `fork_lock` (in the child: the forking thread did).
    #[cfg(not(any(loom, miri)))]
    pub(crate) unsafe fn fork_unlock(&self) {
        // SAFETY: forwarded contract.
        unsafe { self.state.raw_unlock() }
    }

    /// Adds this node's figures into `out` (`limit_bytes` is set, not added: it is shared).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn add_stats(&self, out: &mut PageStats) {
        {
            let st = self.state.lock();
            out.mapped_bytes += st.mapped;
            out.resident_bytes += st.mapped - st.released_free;
            out.free_bytes += st.free_bytes;
            out.metadata_bytes += st.metadata;
            out.released_bytes_total += st.released_total;
            out.allocs += st.allocs;
            out.frees += st.frees;
            out.chunks += st.nr_chunks;
            for (o, n) in st.nr_free.iter().enumerate() {
                out.free_blocks[o] += n;
            }
        }
        self.add_pcp_stats(out);
        out.failed_allocs += self.failed.load(Ordering::Relaxed);
        out.injected_failures += self.injected.load(Ordering::Relaxed);
        out.reclaim_calls += self.reclaim_calls.load(Ordering::Relaxed);
        out.limit_bytes = self.budget().limit;
    }
}
