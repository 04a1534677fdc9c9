//! CPU partial lists and deactivation: `put_cpu_partial`, `__put_partials`
//! (`unfreeze_partials`), `deactivate_slab`, `discard_slab`.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`.)

use super::cpu_slab::KmemCacheCpu;
use super::node::ListEnd;
use super::slab::{get_freepointer, set_freepointer};
use super::CacheInner;
use crate::page::Page;
use crate::stats::StatItem::*;
use crate::sync::{retry_hint, Ordering};
use core::ptr::{self, NonNull};

impl CacheInner {
    /// `put_cpu_partial` from the free path: pushes a slab we just froze onto this slot's
    /// partial list, draining the list to the node if it is full. If the slot's lock is busy
    /// (its owner is in a slow path, possibly descheduled), the slab goes straight to its node
    /// partial list instead of waiting.
    pub(super) fn put_cpu_partial(&self, slab: *mut Page) {
        let c = self.this_cpu();
        match c.lock.try_lock() {
            Some(guard) => {
                let drain = self.put_cpu_partial_locked(slab, c, true);
                drop(guard);
                if !drain.is_null() {
                    self.unfreeze_partials(c, drain);
                    c.stat(CpuPartialDrain);
                }
            }
            None => {
                // SAFETY: we froze `slab`; no one else links it.
                unsafe { (*slab).next().set(ptr::null_mut()) };
                self.unfreeze_partials(c, slab);
            }
        }
    }

    /// Pushes `slab` onto `c`'s partial list (caller holds `c.lock`). With `drain`, a full list
    /// is detached first and returned for the caller to unfreeze after dropping the lock.
    pub(super) fn put_cpu_partial_locked(
        &self,
        slab: *mut Page,
        c: &KmemCacheCpu,
        drain: bool,
    ) -> *mut Page {
        // This includes `slab`, which the caller froze.
        // SAFETY: the partial list and its slabs' `next`/`slabs` fields are ours under `c.lock`.
        unsafe {
            let mut old = c.partial.get();
            let mut to_unfreeze = ptr::null_mut();
            let mut slabs = 0;
            if !old.is_null() {
                if drain && (*old).slabs.get() as usize >= self.geo.cpu_partial_slabs {
                    to_unfreeze = old;
                    old = ptr::null_mut();
                } else {
                    slabs = (*old).slabs.get();
                }
            }
            // At most `cpu_partial_slabs` (< 2^31, validated) plus the half that
            // get_partial_node adds without draining: no u32 overflow.
            (*slab).slabs.set(slabs + 1);
            (*slab).next().set(old);
            c.partial.set(slab);
            to_unfreeze
        }
    }

    /// `__unfreeze_partials`: moves a detached list of frozen slabs to their node partial lists,
    /// discarding empty ones beyond `min_partial`.
    pub(crate) fn unfreeze_partials(&self, c: &KmemCacheCpu, mut slab: *mut Page) {
        let mut discard: *mut Page = ptr::null_mut();
        let mut locked: Option<(
            usize,
            crate::sync::SpinGuard<'_, crate::slub::node::PartialList>,
        )> = None;
        while !slab.is_null() {
            // SAFETY: a frozen slab on a list detached by (and so owned by) the caller.
            let s = unsafe { &*slab };
            // SAFETY: as above.
            let next = unsafe { s.next().get() };
            let nid = s.node();
            let n = self.node(nid);
            let mutant = cfg!(kmem_mutant = "unfreeze_cas_before_list_lock");
            if mutant {
                // Planted bug (loom-tests): unfreeze first, take list_lock afterwards.
                drop(locked.take());
            } else if locked.as_ref().is_none_or(|(l, _)| *l != nid) {
                drop(locked.take());
                locked = Some((nid, n.list_lock.lock()));
            }
            let new = loop {
                let old = s.slab_state();
                let new = old.1.with_frozen(false);
                if s.slab_cas(old, (old.0, new)) {
                    break (old.0, new);
                }
                c.stat(CmpxchgDoubleFail);
                retry_hint();
            };
            if mutant {
                locked = Some((nid, n.list_lock.lock()));
            }
            // Both branches above leave `locked` set; the abort is unreachable.
            let Some((_, g)) = locked.as_mut() else {
                crate::os::abort_msg(&["kmem: unfreeze_partials: list_lock not held"]);
            };
            if new.1.inuse() == 0 && n.nr_partial.load(Ordering::Relaxed) >= self.geo.min_partial {
                // SAFETY: ours; reuse `next` to chain the discard list.
                unsafe { s.next().set(discard) };
                discard = slab;
            } else if new.0 != 0 {
                // SAFETY: unfrozen, with free objects, on no list; lock held.
                unsafe { n.add_partial(g, slab, ListEnd::Tail) };
                c.stat(FreeAddPartial);
            } else {
                c.stat(DeactivateFull);
            }
            slab = next;
        }
        drop(locked);
        while !discard.is_null() {
            // SAFETY: chained above; empty, unfrozen, on no list.
            let next = unsafe { (*discard).next().get() };
            c.stat(DeactivateEmpty);
            self.discard_slab(discard);
            c.stat(FreeSlab);
            discard = next;
        }
    }

    /// `deactivate_slab`: gives a detached CPU slab and its CPU freelist back — the freelist
    /// spliced onto the slab's, the slab unfrozen and put on its node list, left full, or freed.
    pub(crate) fn deactivate_slab(&self, c: &KmemCacheCpu, slab: *mut Page, freelist: usize) {
        // SAFETY: the slot's frozen slab, detached by the caller, which owns `freelist`.
        let s = unsafe { &*slab };
        let n = self.node(s.node());
        let mut end = ListEnd::Head;
        if s.slab_state().0 != 0 {
            c.stat(DeactivateRemoteFrees);
            end = ListEnd::Tail;
        }
        // Stage one: count the CPU freelist (ours: nobody else can reach it).
        let (mut free_delta, mut tail, mut p) = (0u32, 0usize, freelist);
        while p != 0 {
            free_delta += 1;
            tail = p;
            // SAFETY: `p` is on a freelist we own.
            p = unsafe { get_freepointer(p, self.offset) };
        }
        // Stage two: unfreeze while splicing, deciding the list under list_lock.
        enum Mode {
            Free,
            Partial,
            Full,
        }
        loop {
            let (old_fl, old) = s.slab_state();
            let (new_fl, mut new) = if tail != 0 {
                // SAFETY: `tail` is ours; published by the CAS.
                unsafe { set_freepointer(tail, self.offset, old_fl) };
                let Some(inuse) = old.inuse().checked_sub(free_delta) else {
                    // The CPU freelist holds more objects than the slab counts out: an object
                    // was freed twice into it (a double free the head check did not see).
                    let slab_addr = crate::os::Num::hex(crate::page::page_address(s) as u64);
                    crate::os::abort_msg(&[
                        "kmem: cache \"",
                        self.name(),
                        "\": double free into slab ",
                        slab_addr.as_str(),
                        " (its CPU freelist holds more objects than the slab has in use)",
                    ]);
                };
                (freelist, old.with_inuse(inuse))
            } else {
                (old_fl, old)
            };
            new = new.with_frozen(false);
            let mode = if new.inuse() == 0
                && n.nr_partial.load(Ordering::Relaxed) >= self.geo.min_partial
            {
                Mode::Free
            } else if new_fl != 0 {
                Mode::Partial
            } else {
                Mode::Full
            };
            let mut guard = match mode {
                Mode::Partial if !cfg!(kmem_mutant = "deactivate_decides_without_lock") => {
                    Some(n.list_lock.lock())
                }
                _ => None,
            };
            if !s.slab_cas((old_fl, old), (new_fl, new)) {
                drop(guard);
                c.stat(CmpxchgDoubleFail);
                retry_hint();
                continue;
            }
            if cfg!(kmem_mutant = "deactivate_decides_without_lock")
                && matches!(mode, Mode::Partial)
            {
                // Planted bug (loom-tests): the slab is unfrozen before list_lock is taken.
                guard = Some(n.list_lock.lock());
            }
            match mode {
                Mode::Partial => {
                    // Mode::Partial always took the lock above; the abort is unreachable.
                    let Some(g) = guard.as_mut() else {
                        crate::os::abort_msg(&["kmem: deactivate_slab: list_lock not held"]);
                    };
                    // SAFETY: unfrozen, on no list; lock held.
                    unsafe { n.add_partial(g, slab, end) };
                    c.stat(if end == ListEnd::Tail {
                        DeactivateToTail
                    } else {
                        DeactivateToHead
                    });
                }
                Mode::Free => {
                    c.stat(DeactivateEmpty);
                    self.discard_slab(slab);
                    c.stat(FreeSlab);
                }
                Mode::Full => c.stat(DeactivateFull),
            }
            return;
        }
    }

    /// `discard_slab`: returns an empty slab that no one else can reach to the page allocator.
    pub(super) fn discard_slab(&self, slab: *mut Page) {
        // SAFETY: an empty slab of this cache, on no list and frozen by no one.
        let s = unsafe { &*slab };
        let info = s.info();
        let (_, counters) = s.slab_state();
        if counters.inuse() != 0 {
            // Every caller saw `inuse == 0` on a slab no one else can reach; freeing it anyway
            // would hand live objects to the page allocator.
            let slab_addr = crate::os::Num::hex(crate::page::page_address(s) as u64);
            crate::os::abort_msg(&[
                "kmem: cache \"",
                self.name(),
                "\": discarding slab ",
                slab_addr.as_str(),
                " with objects in use (corrupt slab counters)",
            ]);
        }
        self.node(info.node())
            .dec_slabs(counters.objects() as usize);
        if self.slab_tag.load(Ordering::Relaxed) != 0 {
            // Untagged before the pages can be reused (`page::slab_tag`).
            crate::page::set_slab_tags(s, info.order(), 0);
        }
        s.cache.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: the block was allocated at `info.order()` on this node and is ours.
        unsafe {
            self.kmem()
                .node_pages(info.node())
                .free_pages(NonNull::new_unchecked(slab), info.order());
        }
    }
}
