//! The allocation and free paths of a debug cache: node lists only, under `list_lock`
//! (Linux 6.2+: `alloc_single_from_partial`, `alloc_single_from_new_slab`,
//! `free_to_partial_list`).
//!
//! # The protocol
//!
//! A debug cache's slabs are never frozen and never reach a CPU slot. Each is on exactly one
//! list of its node, and every change to its `{freelist, counters}`, to its objects'
//! metadata and to its list membership is made with the node's `list_lock` held:
//!
//! ```text
//!  new_slab (no lock) ──lock──> partial list ──last object taken──> full list
//!                                  ^  │                                │
//!                                  │  └─ last object freed, node holds │
//!                                  │     min_partial already: discard   │
//!                                  └──────── a free into a full slab ───┘
//! ```
//!
//! - **Allocation**: lock the node (this slot's node first, then the others unless a node was
//!   asked for), take the first partial slab's first free object, run
//!   `alloc_debug_processing` on it, pop it (`inuse + 1`), and move the slab to the full list
//!   if that was its last free object. With no partial slab anywhere: `new_slab` with no lock
//!   held (pages, first touch, the constructor: `init_slab` runs the debug set-up), then lock
//!   its node, count it (`inc_slabs` under the lock, so `validate` sees exact totals), put it
//!   on the partial list and allocate from it as above.
//! - **Free**: lock the slab's node, run `free_debug_processing` on every object of the
//!   detached list, then link the list in front of the slab's freelist and lower `inuse` by
//!   the count; a slab that was full moves to the partial list (tail); a slab that became
//!   empty while its node keeps `min_partial` partial slabs leaves its list and is uncounted
//!   under the lock, and its pages are freed after the lock is dropped.
//!
//! Because nothing else touches a debug slab without the lock (no fast path, no `__slab_free`
//! CAS, no CPU partial list), the checks read a consistent slab: `on_freelist` walks a
//! freelist nobody is changing, and `validate` (`validate.rs`) sees every slab on a list with
//! its exact counters. The state word is still updated with atomic stores, so that the
//! lock-free readers that exist for every cache (`slabinfo`'s counts, the free path's owner
//! check) read whole values. Loom model `m16_debug_free` checks two frees and an allocation +
//! free racing on one slab; its planted bug `debug_free_without_list_lock` makes the free check
//! its objects and update the slab's state before taking the lock.

use super::CacheInner;
use crate::page::Page;
use crate::slub::node::{KmemCacheNode, ListEnd, PartialList};
use crate::slub::slab::{get_freepointer, set_freepointer, Counters};
use crate::slub::FrozenSlab;
use crate::stats::StatItem::*;
use crate::sync::{Ordering, SpinGuard};
use core::ptr::{self, NonNull};

/// `add_full`: links `slab` at the head of the node's full list.
///
/// # Safety
/// `g` is the node's `list_lock`; `slab` is a live debug slab on no list.
unsafe fn add_full(g: &mut SpinGuard<'_, PartialList>, slab: *mut Page) {
    // SAFETY: `slab` and the list's head are live slabs whose links are ours under the lock.
    unsafe {
        let s = &*slab;
        s.lru_prev.set(ptr::null_mut());
        s.lru_next.set(g.full);
        if !g.full.is_null() {
            (*g.full).lru_prev.set(slab);
        }
    }
    g.full = slab;
}

/// `remove_full`: unlinks `slab` from the node's full list.
///
/// # Safety
/// `g` is the node's `list_lock`; `slab` is on its full list.
unsafe fn remove_full(g: &mut SpinGuard<'_, PartialList>, slab: *mut Page) {
    // SAFETY: `slab` and its neighbours are on the full list, whose links we own.
    unsafe {
        let s = &*slab;
        let (prev, next) = (s.lru_prev.get(), s.lru_next.get());
        if prev.is_null() {
            g.full = next;
        } else {
            (*prev).lru_next.set(next);
        }
        if !next.is_null() {
            (*next).lru_prev.set(prev);
        }
        s.lru_prev.set(ptr::null_mut());
        s.lru_next.set(ptr::null_mut());
    }
}

impl CacheInner {
    /// The debug allocation path (`ret`: the caller's return address, for `STORE_USER`).
    pub(crate) fn debug_slab_alloc(&self, node: Option<usize>, ret: usize) -> *mut u8 {
        let c = self.this_cpu();
        c.stat(AllocSlowpath);
        if self.should_failslab() {
            return ptr::null_mut();
        }
        let home = node.unwrap_or_else(|| self.kmem().slot_node(self.slot_index(c)));
        let tries = if node.is_some() { 1 } else { self.nr_nodes };
        for i in 0..tries {
            let n = self.node((home + i) % self.nr_nodes);
            if n.nr_partial.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut g = n.list_lock.lock();
            let slab = KmemCacheNode::first(&g);
            if slab.is_null() {
                continue;
            }
            c.stat(AllocFromPartial);
            // SAFETY: the first slab of this node's partial list, whose lock we hold.
            return unsafe { self.alloc_from_slab_locked(n, &mut g, slab, ret) } as *mut u8;
        }
        // alloc_single_from_new_slab: built with no lock held.
        let Some((FrozenSlab { slab, freelist }, _)) = self.new_slab(c, node, 0) else {
            return ptr::null_mut();
        };
        // SAFETY: the new slab is ours alone until it is on a list.
        let s = unsafe { &*slab };
        let n = self.node(s.node());
        let objects = s.slab_state().1.objects();
        let mut g = n.list_lock.lock();
        n.inc_slabs(objects as usize);
        s.freelist_counters
            .store(freelist, Counters::new(0, objects, false).0);
        // SAFETY: on no list; the lock is held. Then it is the slab we allocate from.
        unsafe {
            n.add_partial(&mut g, slab, ListEnd::Head);
            self.alloc_from_slab_locked(n, &mut g, slab, ret) as *mut u8
        }
    }

    /// Takes the first free object of `slab` (on `n`'s partial list, lock `g` held).
    ///
    /// # Safety
    /// As stated: `slab` is a debug slab on the partial list that `g` guards.
    unsafe fn alloc_from_slab_locked(
        &self,
        n: &KmemCacheNode,
        g: &mut SpinGuard<'_, PartialList>,
        slab: *mut Page,
        ret: usize,
    ) -> usize {
        // SAFETY: a live slab on the list we hold.
        let s = unsafe { &*slab };
        let (obj, c) = s.slab_state();
        if obj == 0 || !self.check_valid_pointer(s, obj) {
            let kind = if obj == 0 {
                "Wrong object count"
            } else {
                "Freepointer corrupt"
            };
            self.slab_err(s, kind, Some(obj));
            self.abort_corrupt(super::Defect { kind, addr: obj });
        }
        // SAFETY: `obj` heads the slab's freelist; the lock is held.
        if let Err(d) = unsafe { self.alloc_debug_processing(s, obj, ret) } {
            self.abort_corrupt(d);
        }
        // SAFETY: `obj` is an object of the slab (checked above); its free pointer is not touched by `init_object`.
        let next = unsafe { get_freepointer(obj, self.geo.offset) };
        s.freelist_counters
            .store(next, c.with_inuse(c.inuse() + 1).0);
        if next == 0 {
            // SAFETY: on this partial list, lock held; then on no list.
            unsafe {
                n.remove_partial(g, slab);
                add_full(g, slab);
            }
        }
        obj
    }

    /// The debug free path: `cnt` objects `head..=tail` of `slab`, linked through their free
    /// pointers (`ret`: the caller's return address).
    ///
    /// # Safety
    /// As [`CacheInner::do_slab_free`].
    pub(crate) unsafe fn debug_slab_free(
        &self,
        slab: *mut Page,
        head: usize,
        tail: usize,
        cnt: u32,
        ret: usize,
    ) {
        // SAFETY: a live slab of this cache (contract).
        let s = unsafe { &*slab };
        let n = self.node(s.node());
        let c = self.this_cpu();
        let mut g;
        #[cfg(not(kmem_mutant = "debug_free_without_list_lock"))]
        {
            g = n.list_lock.lock();
        }
        // free_debug_processing over the whole list.
        let (mut obj, mut seen) = (head, 0u32);
        loop {
            seen += 1;
            // SAFETY: the owner hands `obj` back (contract); the lock is held.
            if let Err(d) = unsafe { self.free_debug_processing(s, obj, ret) } {
                self.abort_corrupt(d);
            }
            if obj == tail || seen == cnt {
                break;
            }
            // SAFETY: `obj` is an object of the slab (checked above).
            obj = unsafe { get_freepointer(obj, self.geo.offset) };
        }
        if obj != tail || seen != cnt {
            self.slab_err(s, "Bulk free list does not match its count", Some(head));
            self.abort_corrupt(super::Defect {
                kind: "Bulk free list does not match its count",
                addr: head,
            });
        }
        let (prior, old) = s.slab_state();
        if tail == prior {
            self.double_free(tail, "it is already the first free object of its slab");
        }
        let Some(inuse) = old.inuse().checked_sub(cnt) else {
            self.double_free(
                tail,
                "its slab has fewer objects in use than are being freed",
            );
        };
        // SAFETY: `tail` is the caller's (contract).
        unsafe { set_freepointer(tail, self.geo.offset, prior) };
        if cfg!(kmem_mutant = "debug_free_without_list_lock") {
            // Planted bug (loom-tests): the read-modify-write below is done without the lock.
            crate::sync::retry_hint();
        }
        s.freelist_counters.store(head, old.with_inuse(inuse).0);
        #[cfg(kmem_mutant = "debug_free_without_list_lock")]
        {
            g = n.list_lock.lock();
        }
        let discard = inuse == 0 && n.nr_partial.load(Ordering::Relaxed) >= self.geo.min_partial;
        // SAFETY: a slab with no free object before this free was on the full list; one with free objects on the partial list; the lock is held.
        unsafe {
            if prior == 0 {
                remove_full(&mut g, slab);
                if !discard {
                    n.add_partial(&mut g, slab, ListEnd::Tail);
                    c.stat(FreeAddPartial);
                }
            } else if discard {
                n.remove_partial(&mut g, slab);
                c.stat(FreeRemovePartial);
            }
        }
        if discard {
            n.dec_slabs(old.objects() as usize);
        }
        drop(g);
        c.stat_add(FreeSlowpath, cnt as u64);
        if discard {
            c.stat(FreeSlab);
            self.free_debug_slab(slab);
        }
    }

    /// Returns an empty debug slab, already off its list and uncounted, to its node's pages.
    fn free_debug_slab(&self, slab: *mut Page) {
        // SAFETY: an empty slab no one else can reach any more.
        let s = unsafe { &*slab };
        let info = s.info();
        s.cache.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: the block was allocated at `info.order()` on this node and is ours.
        unsafe {
            self.kmem()
                .node_pages(info.node())
                .free_pages(NonNull::new_unchecked(slab), info.order());
        }
    }
}
