//! `kmem_cache_alloc_bulk` / `kmem_cache_free_bulk`: many objects with one slot transaction.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`.)

use super::slab::{get_freepointer, set_freepointer};
use super::CacheInner;
use crate::page::Page;
use crate::stats::StatItem::*;
use core::ptr::{self, NonNull};

impl CacheInner {
    /// `kmem_cache_alloc_bulk`.
    pub(crate) fn alloc_bulk(&self, out: &mut [*mut u8]) -> usize {
        if out.is_empty() {
            return 0;
        }
        if self.debug {
            // slub_debug: one object at a time through the node-only path.
            for (i, slot) in out.iter_mut().enumerate() {
                let p = self.slab_alloc(None);
                if p.is_null() {
                    return i;
                }
                *slot = p;
            }
            return out.len();
        }
        let mut c = self.this_cpu();
        let mut guard = c.lock.lock();
        let mut i = 0;
        if cfg!(kmem_mutant = "bulk_pop_without_tid_cas") {
            // Planted bug (loom-tests): pops the CPU freelist with plain stores and no tid bump,
            // trusting the slot lock, which the lockless fast paths do not take.
            while i < out.len() {
                let (fl, tid) = c.freelist_tid.load();
                if fl == 0 {
                    break;
                }
                // SAFETY: as in slab_alloc (a speculative read of an object on the freelist).
                let next = unsafe { get_freepointer(fl, self.offset) };
                c.freelist_tid.store(next, tid);
                out[i] = fl as *mut u8;
                i += 1;
            }
        }
        let (mut slab, mut freelist, mut tid) = c.detach(self.tid_step);
        let mut out_of_memory = false;
        while i < out.len() {
            if freelist == 0 {
                c.stat(AllocSlowpath);
                if let Some(super::FrozenSlab {
                    slab: s,
                    freelist: f,
                }) = self.refill(c, slab, 0, None)
                {
                    (slab, freelist) = (s, f);
                } else {
                    // new_objects, as in slab_alloc_slow: the slot lock is dropped across
                    // new_slab and the slot (perhaps another one) comes back locked and detached.
                    c.attach(self.tid_step, ptr::null_mut(), 0, tid);
                    drop(guard);
                    if out_of_memory {
                        return i;
                    }
                    // The new slab's first objects, as many as are still wanted, come by
                    // address and unwritten (`Taken`): pages no caller writes stay untouched.
                    if let Some(new) = self.new_slab_unlocked(c, None, out.len() - i) {
                        (c, guard) = (new.cpu, new.guard);
                        (slab, freelist, tid) = (new.slab, new.freelist, new.tid);
                        let size = self.geo.size;
                        for k in 0..new.taken.count {
                            out[i] = (new.taken.first + k * size) as *mut u8;
                            i += 1;
                        }
                        // The loop's test, then the new freelist (0 when all were taken).
                        continue;
                    } else {
                        // Out of memory: one more look under the lock, as in slab_alloc_slow.
                        out_of_memory = true;
                        c = self.this_cpu();
                        guard = c.lock.lock();
                        (slab, freelist, tid) = c.detach(self.tid_step);
                        continue;
                    }
                }
            }
            out[i] = freelist as *mut u8;
            // SAFETY: `freelist` is a list we own.
            freelist = unsafe { get_freepointer(freelist, self.offset) };
            i += 1;
        }
        c.attach(self.tid_step, slab, freelist, tid);
        drop(guard);
        i
    }

    /// `kmem_cache_free_bulk`: groups objects of one slab (`build_detached_freelist`) so each
    /// group is returned with one CAS.
    ///
    /// # Safety
    /// As [`KmemCache::free`](crate::KmemCache::free) for each object; no duplicates.
    pub(crate) unsafe fn free_bulk(&self, objs: &[NonNull<u8>]) {
        const GROUP: usize = 16;
        if self.debug {
            // slub_debug: each object checked and freed on its own, before any is linked
            // (linking would overwrite the free pointer of an object freed twice).
            for o in objs {
                let slab = self.owning_slab(o.as_ptr());
                let p = o.as_ptr() as usize;
                // SAFETY: the caller hands `p`, an object of `slab`, back (contract).
                unsafe { self.do_slab_free(slab, p, p, 1) };
            }
            return;
        }
        for chunk in objs.chunks(GROUP) {
            let mut slabs = [ptr::null_mut::<Page>(); GROUP];
            for (i, o) in chunk.iter().enumerate() {
                slabs[i] = self.owning_slab(o.as_ptr());
            }
            let mut done = 0u32;
            for i in 0..chunk.len() {
                if done & (1 << i) != 0 {
                    continue;
                }
                let slab = slabs[i];
                let head = chunk[i].as_ptr() as usize;
                let (mut tail, mut cnt) = (head, 1u32);
                for j in i + 1..chunk.len() {
                    if done & (1 << j) == 0 && slabs[j] == slab {
                        let o = chunk[j].as_ptr() as usize;
                        // SAFETY: `o` is an object the caller hands back to us.
                        unsafe { set_freepointer(o, self.offset, 0) };
                        // SAFETY: `tail` is ours; we link `o` after it.
                        unsafe { set_freepointer(tail, self.offset, o) };
                        tail = o;
                        cnt += 1;
                        done |= 1 << j;
                    }
                }
                // SAFETY: head..=tail are `cnt` objects of `slab`, linked above, owned by us.
                unsafe { self.do_slab_free(slab, head, tail, cnt) };
            }
        }
    }
}
