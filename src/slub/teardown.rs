//! Flushing CPU slots, shrinking, destroying a cache, and `slabinfo`.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`.)

use super::cpu_slab::KmemCacheCpu;
use super::node::KmemCacheNode;
use super::slab::get_freepointer;
use super::CacheInner;
use crate::config::CacheFlags;
use crate::page::Page;
use crate::stats::{SlabInfo, StatItem::*};
use crate::sync::Ordering;
use core::ptr::{self, NonNull};

impl CacheInner {
    /// `flush_slab` + `unfreeze_partials` for slot `c` (caller holds `c.lock`). In rseq mode the
    /// slot is stopped and its CPU fenced meanwhile (the caller may run on any CPU).
    pub(crate) fn flush_cpu_locked(&self, c: &KmemCacheCpu) {
        let stop = c.stop_remote();
        let (slab, freelist, tid) = c.detach(self.tid_step);
        if !slab.is_null() {
            self.deactivate_slab(c, slab, freelist);
            c.stat(CpuslabFlush);
        }
        c.attach(self.tid_step, ptr::null_mut(), 0, tid);
        drop(stop);
        // SAFETY: the partial list is ours under `c.lock`.
        let partial = unsafe { c.partial.get() };
        if !partial.is_null() {
            // SAFETY: as above.
            unsafe { c.partial.set(ptr::null_mut()) };
            self.unfreeze_partials(c, partial);
        }
    }

    /// `flush_all`: flushes every slot: its sheaves and the barns first (their objects go
    /// back to their slabs, some through the CPU slabs), then its CPU slab and partial list.
    pub(crate) fn flush_all(&self) {
        self.flush_sheaves();
        for i in 0..self.nr_cpus {
            let c = self.cpu(i);
            let _g = c.lock.lock();
            self.flush_cpu_locked(c);
        }
    }

    /// Frees every empty slab on node `nid`'s partial list; returns how many. A
    /// `TYPESAFE_BY_RCU` cache frees none (its slabs stay until `destroy`).
    pub(crate) fn discard_empty_partials(&self, nid: usize) -> usize {
        #[cfg(not(kmem_mutant = "typesafe_shrink_discards"))]
        if self.flags.contains(CacheFlags::TYPESAFE_BY_RCU) {
            return 0;
        }
        self.discard_empty_partials_always(nid)
    }

    /// Frees every empty slab on node `nid`'s partial list, whatever the flags (`destroy`).
    fn discard_empty_partials_always(&self, nid: usize) -> usize {
        let (chain, count) = self.take_empty_partials(nid);
        // SAFETY: the chain was just unlinked: its slabs are ours.
        unsafe { self.discard_chain(chain) };
        count
    }

    /// Unlinks every empty slab of node `nid`'s partial list and returns them chained through
    /// `next`, with their number. With `list_lock` held and no object of it allocated, nobody
    /// can change such a slab (no frees: nothing is out; no allocation: only via this list), so
    /// once unlinked it is the caller's: still a slab of this cache, its objects still objects.
    pub(crate) fn take_empty_partials(&self, nid: usize) -> (*mut Page, usize) {
        let n = self.node(nid);
        let mut chain: *mut Page = ptr::null_mut();
        let mut count = 0;
        let mut g = n.list_lock.lock();
        let mut slab = KmemCacheNode::first(&g);
        while !slab.is_null() {
            // SAFETY: on the list `g` protects.
            let next = unsafe { KmemCacheNode::next_of(&g, slab) };
            // SAFETY: `slab` is a live unfrozen slab on our list.
            let s = unsafe { &*slab };
            if s.slab_state().1.inuse() == 0 {
                // SAFETY: on this list, lock held; then ours.
                unsafe {
                    n.remove_partial(&mut g, slab);
                    s.next().set(chain);
                }
                chain = slab;
                count += 1;
            }
            slab = next;
        }
        (chain, count)
    }

    /// Counts the slabs of `chain` (from [`Self::take_empty_partials`]) as handed to a
    /// collector: their objects stay free objects of the cache for `slabinfo` until
    /// [`Self::release_handed_over`].
    pub(crate) fn note_handed_over(&self, chain: *mut Page) {
        let mut objs = 0;
        let mut p = chain;
        while !p.is_null() {
            // SAFETY: the caller's chain of live slabs.
            unsafe {
                objs += (*p).slab_state().1.objects() as usize;
                p = (*p).next().get();
            }
        }
        self.handed_over_objs.fetch_add(objs, Ordering::AcqRel);
    }

    /// Releases a chain noted by [`Self::note_handed_over`] once its grace period has passed.
    ///
    /// # Safety
    /// As [`Self::discard_chain`].
    pub(crate) unsafe fn release_handed_over(&self, chain: *mut Page) {
        let mut p = chain;
        while !p.is_null() {
            // SAFETY: the caller's chain of live slabs (contract).
            unsafe {
                let objs = (*p).slab_state().1.objects() as usize;
                self.handed_over_objs.fetch_sub(objs, Ordering::AcqRel);
                p = (*p).next().get();
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.discard_chain(chain) };
    }

    /// Returns every slab of `chain` (linked through `next`) to the page allocator.
    ///
    /// # Safety
    /// The slabs are empty slabs of this cache on no list, owned by the caller
    /// ([`Self::take_empty_partials`]).
    pub(crate) unsafe fn discard_chain(&self, mut chain: *mut Page) {
        while !chain.is_null() {
            // SAFETY: chained by `take_empty_partials`; ours (contract).
            let next = unsafe { (*chain).next().get() };
            self.discard_slab(chain);
            chain = next;
        }
    }

    /// The decay's barn trim (issue 16): every full sheaf waiting in one of the cache's barns
    /// goes back to its slabs (`sheaf_flush`), and the emptied sheaf stays in the barn as an
    /// empty one (or goes back to the pool when the barn keeps enough). The CPUs' own sheaves
    /// are left alone. Objects in a sheaf keep their slabs allocated, each often in a slab of
    /// its own after random frees, so a barn holding full sheaves of a cache that went idle
    /// keeps up to its shards' limits ([`super::barn`]) of sheaves' worth of
    /// slabs; the flush lets the free path discard those that empty. The same operations as a slow path's barn get and spare flush (the barn lock,
    /// then `free_bulk` with no lock held). Returns the sheaves flushed.
    pub(crate) fn trim_barns(&self) -> usize {
        if self.pool.capacity == 0 {
            return 0;
        }
        let mut flushed = 0;
        for barn in self.barns() {
            let mut s = barn.take_full();
            while !s.is_null() {
                // SAFETY: taken off the shard: ours.
                let next = unsafe { (*s).next.get() };
                // SAFETY: ours; every object in it is an allocated object of this cache.
                unsafe { self.sheaf_flush(self.cpu(0), s) };
                // SAFETY: ours and empty now; given to the shard, or back to the pool.
                if let Err(s) = unsafe { barn.put_empty(s) } {
                    // SAFETY: ours, empty, on no list.
                    unsafe { self.pool.free(s) };
                }
                flushed += 1;
                s = next;
            }
        }
        flushed
    }

    /// `kmem_cache_shrink`.
    pub(crate) fn shrink(&self) {
        self.flush_all();
        // Sheaf memory that is wholly free goes back too.
        self.pool.trim(self.kmem().node_pages(0));
        for nid in 0..self.nr_nodes {
            self.discard_empty_partials(nid);
        }
        for nid in 0..self.nr_nodes {
            // The per-CPU page lists first (issue 16), so that their blocks are released too.
            self.kmem().node_pages(nid).drain_pcp(false);
            self.kmem().node_pages(nid).release_free();
        }
    }

    /// `kmem_cache_destroy` (the cache is already unregistered).
    ///
    /// # Safety
    /// `this` is a cache no one else will use again.
    pub(crate) unsafe fn destroy(this: NonNull<CacheInner>) {
        // SAFETY: exclusive per the contract until we unmap it below.
        let s = unsafe { this.as_ref() };
        if s.in_arena() {
            // Only process-lifetime caches (the global kmalloc caches) go there; checked before
            // anything is flushed or given back.
            crate::os::abort_msg(&[
                "kmem: internal error: a cache placed in the metadata arena was destroyed",
            ]);
        }
        s.flush_all();
        for nid in 0..s.nr_nodes {
            s.discard_empty_partials_always(nid);
        }
        // Every sheaf is back in the pool (flush_all): its blocks go back to the page allocator.
        // SAFETY: no sheaf of this cache is used again (the cache is unregistered and flushed).
        unsafe { s.pool.release(s.kmem().node_pages(0)) };
        let slabs: usize = (0..s.nr_nodes)
            .map(|n| s.node(n).nr_slabs.load(Ordering::Relaxed))
            .sum();
        if slabs == 0 {
            // No page carries the cache's tag any more (every slab's pages were untagged).
            super::tag_id::give_back(s.slab_tag.load(Ordering::Relaxed));
            // SAFETY: no slab refers to the cache any more.
            unsafe { CacheInner::unmap(this) };
            return;
        }
        let info = s.slabinfo();
        let (a, b) = (
            crate::os::Num::dec(info.active_objs as u64),
            crate::os::Num::dec(info.num_slabs as u64),
        );
        crate::os::write_stderr(&[
            "kmem: cache \"",
            s.name(),
            "\" destroyed with ",
            a.as_str(),
            " object(s) still allocated in ",
            b.as_str(),
            " slab(s); those slabs are leaked, not freed under their users",
        ]);
        s.kmem().mark_leaked();
    }

    /// The exact slabinfo row (see [`SlabInfo`]).
    pub(crate) fn slabinfo(&self) -> SlabInfo {
        self.slabinfo_raw().to_info()
    }

    /// The slabinfo figures, with the name copied inline: computing it allocates nothing, so
    /// it may run under the registry lock.
    pub(crate) fn slabinfo_raw(&self) -> SlabInfoRaw {
        let free_of = |slab: *mut Page| -> usize {
            // SAFETY: a live slab (the caller holds the lock that keeps it where it is).
            let (_, c) = unsafe { (*slab).slab_state() };
            (c.objects() - c.inuse()) as usize
        };
        let (mut free, mut empty, mut cpu_partial, mut node_partial) =
            (0usize, 0usize, 0usize, 0usize);
        for i in 0..self.nr_cpus {
            let c = self.cpu(i);
            let _g = c.lock.lock();
            // Exact in rseq mode too: the slot is stopped and its CPU fenced while it is counted.
            let stop = c.stop_remote();
            let (slab, freelist, tid) = c.detach(self.tid_step);
            let mut p = freelist;
            let mut on_cpu = 0;
            while p != 0 {
                on_cpu += 1;
                // SAFETY: a detached freelist we own until we attach it again.
                p = unsafe { get_freepointer(p, self.offset) };
            }
            if !slab.is_null() {
                let f = free_of(slab) + on_cpu;
                // SAFETY: the slot's live slab.
                if f == unsafe { (*slab).slab_state().1.objects() } as usize {
                    empty += 1;
                }
                free += f;
            }
            c.attach(self.tid_step, slab, freelist, tid);
            drop(stop);
            if self.pool.capacity != 0 {
                // Objects in the slot's sheaves are free to the cache's users.
                free += self.pcs_count(i);
            }
            // SAFETY: the partial list is ours under `c.lock`.
            let mut p = unsafe { c.partial.get() };
            while !p.is_null() {
                let f = free_of(p);
                // SAFETY: on our list.
                let objects = unsafe { (*p).slab_state().1.objects() } as usize;
                if f == objects {
                    empty += 1;
                }
                free += f;
                cpu_partial += 1;
                // SAFETY: on our list.
                p = unsafe { (*p).next().get() };
            }
        }
        let (mut num_slabs, mut num_objs) = (0, 0);
        for barn in self.barns() {
            free += barn.counts().2;
        }
        for nid in 0..self.nr_nodes {
            let n = self.node(nid);
            let g = n.list_lock.lock();
            let mut slab = KmemCacheNode::first(&g);
            while !slab.is_null() {
                let f = free_of(slab);
                // SAFETY: on the list `g` protects.
                let objects = unsafe { (*slab).slab_state().1.objects() } as usize;
                if f == objects {
                    empty += 1;
                }
                free += f;
                node_partial += 1;
                // SAFETY: as above.
                slab = unsafe { KmemCacheNode::next_of(&g, slab) };
            }
            num_slabs += n.nr_slabs.load(Ordering::Relaxed);
            num_objs += n.total_objects.load(Ordering::Relaxed);
        }
        free += self.handed_over_objs.load(Ordering::Acquire);
        let mut name = [0u8; crate::config::MAX_CACHE_NAME];
        name[..self.name().len()].copy_from_slice(self.name().as_bytes());
        SlabInfoRaw {
            name,
            name_len: self.name().len(),
            active_objs: num_objs.saturating_sub(free),
            num_objs,
            objsize: self.geo.size,
            objperslab: self.geo.oo.objects as usize,
            pagesperslab: 1 << self.geo.oo.order,
            active_slabs: num_slabs.saturating_sub(empty),
            num_slabs,
            node_partial_slabs: node_partial,
            cpu_partial_slabs: cpu_partial,
        }
    }
}

/// A slabinfo row before its name becomes a `String` (no allocation to build it).
#[derive(Clone, Copy)]
pub(crate) struct SlabInfoRaw {
    name: [u8; crate::config::MAX_CACHE_NAME],
    name_len: usize,
    active_objs: usize,
    num_objs: usize,
    objsize: usize,
    objperslab: usize,
    pagesperslab: usize,
    active_slabs: usize,
    num_slabs: usize,
    node_partial_slabs: usize,
    cpu_partial_slabs: usize,
}

impl SlabInfoRaw {
    /// The public row.
    pub(crate) fn to_info(self) -> SlabInfo {
        SlabInfo {
            name: String::from_utf8_lossy(&self.name[..self.name_len]).into_owned(),
            active_objs: self.active_objs,
            num_objs: self.num_objs,
            objsize: self.objsize,
            objperslab: self.objperslab,
            pagesperslab: self.pagesperslab,
            active_slabs: self.active_slabs,
            num_slabs: self.num_slabs,
            node_partial_slabs: self.node_partial_slabs,
            cpu_partial_slabs: self.cpu_partial_slabs,
        }
    }
}
