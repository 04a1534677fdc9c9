//! Allocation: the fast path (`slab_alloc_node`) and `___slab_alloc` — refill the CPU slab from
//! its freelist, the CPU partial list, a node partial list, or a new slab.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`.)

use super::cpu_slab::KmemCacheCpu;
use super::node::KmemCacheNode;
use super::slab::{get_freepointer, set_freepointer, Counters};
use super::{CacheInner, FrozenSlab, NewSlab, Taken, PCS_FAST_ALLOC};
use crate::cpu::percpu::{self, Seq};
use crate::page::{GfpFlags, Page, PageKind};
use crate::stats::StatItem::*;
use crate::sync::{retry_hint, Ordering};
use core::ptr::{self, NonNull};

impl CacheInner {
    /// `slab_alloc_node`: one object, from `node` if given. A cache with sheaves serves
    /// allocations that ask for no node from the CPU's sheaf (`pcs.rs`: one pop inline, the
    /// rest out of line), which falls back to the cpu-slab path below.
    #[inline(always)]
    pub(crate) fn slab_alloc(&self, node: Option<usize>) -> *mut u8 {
        // One load decides: a cpu-slab cache pays one test for the sheaves.
        let mode = self.pcs_mode.load(Ordering::Relaxed);
        if node.is_none() && mode != 0 {
            if mode & PCS_FAST_ALLOC != 0 {
                if let Some(p) = self.pcs_pop_inline() {
                    return p;
                }
                return self.alloc_from_pcs_slow();
            }
            // The locked mode: the sheaf lock's fast path, inline.
            return self.alloc_from_pcs();
        }
        self.slab_alloc_cpu(node)
    }

    /// The cpu-slab path of a sheaf cache (out of line: the sheaves could not serve).
    #[inline(never)]
    pub(super) fn slab_alloc_bypass(&self) -> *mut u8 {
        self.slab_alloc_cpu(None)
    }

    /// The cpu-slab fast path (`slab_alloc_node` of Linux 6.x).
    #[inline(always)]
    fn slab_alloc_cpu(&self, node: Option<usize>) -> *mut u8 {
        if self.rseq {
            return self.slab_alloc_rseq(node);
        }
        if self.debug {
            // slub_debug (never in rseq mode): the node-only path under list_lock.
            return crate::debug::alloc_entry(self, node);
        }
        loop {
            let c = self.this_cpu();
            let (object, tid) = c.load_freelist();
            if object == 0 || !self.cpu_node_matches(c, node) {
                return self.slab_alloc_slow(c, node);
            }
            // `object` was on this slot's freelist when the pair was loaded, so it is an object of
            // this cache in mapped slab memory; the value read may be stale, and the tid CAS below
            // rejects it if so.
            // SAFETY: `object` is an object of this cache in slab memory, which stays mapped.
            let next = unsafe { get_freepointer(object, self.offset) };
            if c.try_pop(object, tid, next, self.tid_step) {
                c.stat(AllocFastpath);
                return object as *mut u8;
            }
            c.stat(CmpxchgDoubleCpuFail);
            retry_hint();
        }
    }

    /// The alloc fast path in rseq mode: one sequence on the slot of the CPU the thread runs on
    /// (`percpu::pop`: stopped? the slab expected? freelist empty? then `freelist = next` as
    /// the commit). Anything else is the slow path on the slot the sequence used, where every
    /// change of `{freelist, tid}` is a sequence on that CPU or happens under a stop + fence
    /// (`cpu_slab.rs`, "rseq mode"). A thread that cannot run sequences takes the slow path
    /// too: its CAS there always stop and fence the slot first (it is never "on" the CPU).
    #[inline(always)]
    fn slab_alloc_rseq(&self, node: Option<usize>) -> *mut u8 {
        loop {
            // With a node wanted, the slab must be on it: read the slot's slab outside the
            // sequence, and let the sequence check that it is still the slab of the slot it
            // runs on; a mismatch takes the slow path, which handles every node case.
            let expect = match node {
                None => 0,
                Some(_) => {
                    let c = self.this_cpu();
                    if !self.cpu_node_matches(c, node) {
                        return self.slab_alloc_slow(c, node);
                    }
                    c.slab.load(Ordering::Acquire) as usize
                }
            };
            // SAFETY: every object on a slot's freelist is an object of this cache in slab memory (mapped for the allocator's life), its free pointer at `offset`; the slots are this cache's.
            let (st, at, object) = unsafe { percpu::pop(self.slots, self.offset, expect) };
            match st {
                Seq::Done => {
                    self.cpu_at(at).stat(AllocFastpath);
                    return object as *mut u8;
                }
                Seq::Unavailable => {
                    if !percpu::thread_can_sequence() {
                        return self.slab_alloc_slow(self.this_cpu(), node);
                    }
                }
                // Empty, stopped, or not the slab wanted: the slow path on that slot.
                _ => return self.slab_alloc_slow(self.cpu_at(at), node),
            }
        }
    }

    /// Whether the slot's current slab suits an allocation for `node`.
    #[inline(always)]
    pub(super) fn cpu_node_matches(&self, c: &KmemCacheCpu, node: Option<usize>) -> bool {
        match node {
            None => true,
            Some(n) => {
                let slab = c.slab.load(Ordering::Acquire);
                // A stale slab pointer still names a descriptor whose `info` is an atomic.
                // SAFETY: page descriptors live as long as the allocator.
                !slab.is_null() && unsafe { (*slab).node() } == n
            }
        }
    }

    /// `___slab_alloc`: refills slot `c` and returns one object (null when out of memory).
    ///
    /// Everything that reuses memory the cache already has runs under the slot lock
    /// ([`Self::refill`]). A new slab does not: like the kernel's `new_objects:` path, the slot
    /// is attached empty and its lock dropped across `new_slab` (the page allocator, `mmap`,
    /// page faults on the fresh block, the user's constructor, waits on pages in transit), so a
    /// holder descheduled there stalls no other allocation on the slot; see
    /// [`Self::new_slab_unlocked`].
    #[cold]
    #[inline(never)]
    pub(super) fn slab_alloc_slow(&self, c: &KmemCacheCpu, node: Option<usize>) -> *mut u8 {
        // No kmem lock is held here: give idle free pages back to the OS when due (issue 16).
        self.kmem().decay_tick();
        let mut c = c;
        let mut out_of_memory = false;
        loop {
            let guard = c.lock.lock();
            if !out_of_memory {
                c.stat(AllocSlowpath);
            }
            let (slab, freelist, tid) = c.detach(self.tid_step);
            if let Some(FrozenSlab {
                slab,
                freelist: object,
            }) = self.refill(c, slab, freelist, node)
            {
                // SAFETY: `object` heads a freelist that we own (refill's contract).
                let next = unsafe { get_freepointer(object, self.offset) };
                c.attach(self.tid_step, slab, next, tid);
                return object as *mut u8;
            }
            // new_objects: refill consumed the old slab; publish the empty slot, let go of it.
            c.attach(self.tid_step, ptr::null_mut(), 0, tid);
            drop(guard);
            if out_of_memory {
                return ptr::null_mut();
            }
            let Some(NewSlab {
                cpu,
                guard,
                slab,
                freelist: object,
                tid,
                ..
            }) = self.new_slab_unlocked(c, node, 0)
            else {
                // Out of memory. While the lock was dropped, other threads of the slot may have
                // installed a slab or freed objects onto the partial lists (with the lock held
                // across new_slab, this thread would have waited and found them): look once
                // more, under the lock of the slot we are on now, before failing.
                out_of_memory = true;
                c = self.this_cpu();
                continue;
            };
            // SAFETY: `object` heads the new slab's freelist, which we own.
            let next = unsafe { get_freepointer(object, self.offset) };
            cpu.attach(self.tid_step, slab, next, tid);
            drop(guard);
            return object as *mut u8;
        }
    }

    /// The `new_objects:` half of `___slab_alloc`, called with **no** slot lock held and the
    /// slot `c` attached (it names the slot only for the node choice and the counters).
    ///
    /// Allocates and initialises a new slab (constructor included) as a local of this thread:
    /// frozen, `inuse == objects`, its whole freelist taken, on no list, so no other thread
    /// can reach it. Then it re-reads which slot the thread is on (it may have migrated, or
    /// `c` was a stale guess), takes that slot's lock and detaches it; a CPU slab that another
    /// thread installed meanwhile is deactivated (`CPUSLAB_FLUSH`, as the kernel's
    /// `retry_load_slab:`). Returns the slot locked and detached, with the new slab and its
    /// freelist, for the caller to attach; `None` (nothing locked, nothing changed) when
    /// memory is exhausted.
    ///
    /// `take`: up to this many of the new slab's objects are handed out by address instead of
    /// being linked (`NewSlab::taken`, [`Self::init_slab`]).
    pub(super) fn new_slab_unlocked(
        &self,
        c: &KmemCacheCpu,
        node: Option<usize>,
        take: usize,
    ) -> Option<NewSlab<'_>> {
        let (FrozenSlab { slab, freelist }, taken) = self.new_slab(c, node, take)?;
        let cpu = self.this_cpu();
        let guard = cpu.lock.lock();
        let (old, old_freelist, tid) = cpu.detach(self.tid_step);
        if !old.is_null() {
            if cfg!(kmem_mutant = "new_slab_ignores_cpu_slab") {
                // Planted bug (loom-tests): installs over the CPU slab that appeared while the
                // lock was dropped; that slab stays frozen with no owner and its CPU freelist
                // is dropped.
            } else {
                self.deactivate_slab(cpu, old, old_freelist);
                cpu.stat(CpuslabFlush);
            }
        } else if old_freelist != 0 {
            // Invariant S: the objects on a slot's CPU freelist belong to its slab; with no
            // slab there can be none (they would be lost here).
            crate::os::abort_msg(&[
                "kmem: a CPU slot without a slab has objects on its freelist \
                 (slot protocol violated; memory may be corrupt)",
            ]);
        }
        Some(NewSlab {
            cpu,
            guard,
            slab,
            freelist,
            taken,
            tid,
        })
    }

    /// Finds a CPU slab with free objects for a detached slot (caller holds `c.lock`), without
    /// allocating a new slab.
    ///
    /// `slab`/`freelist` are what the slot had; they are consumed: returned, deactivated, or
    /// left unfrozen. Returns a frozen slab and a non-empty freelist of its objects, both owned
    /// by the caller, or `None` when the slot's slab, the CPU partial list and the node partial
    /// lists have nothing (the caller then goes to [`Self::new_slab_unlocked`]).
    pub(crate) fn refill(
        &self,
        c: &KmemCacheCpu,
        slab: *mut Page,
        freelist: usize,
        node: Option<usize>,
    ) -> Option<FrozenSlab> {
        if !slab.is_null() {
            // SAFETY: the slot's slab is a live frozen slab of this cache.
            let matches = node.is_none_or(|n| unsafe { (*slab).node() } == n);
            if !matches {
                self.deactivate_slab(c, slab, freelist);
                c.stat(CpuslabFlush);
            } else if freelist != 0 {
                return Some(FrozenSlab { slab, freelist });
            } else {
                let freelist = self.get_freelist(c, slab);
                if freelist != 0 {
                    c.stat(AllocRefill);
                    return Some(FrozenSlab { slab, freelist });
                }
                c.stat(DeactivateBypass);
            }
        }
        // The CPU partial list.
        loop {
            // SAFETY: the partial list is ours under `c.lock`.
            let partial = unsafe { c.partial.get() };
            if partial.is_null() {
                break;
            }
            // SAFETY: `partial` is a live frozen slab on our list.
            let p = unsafe { &*partial };
            // SAFETY: list links are ours under `c.lock`.
            unsafe { c.partial.set(p.next().get()) };
            if node.is_some_and(|n| p.node() != n) {
                // SAFETY: as above.
                unsafe { p.next().set(ptr::null_mut()) };
                self.unfreeze_partials(c, partial);
                continue;
            }
            c.stat(CpuPartialAlloc);
            let freelist = self.get_freelist(c, partial);
            if freelist != 0 {
                return Some(FrozenSlab {
                    slab: partial,
                    freelist,
                });
            }
            // A CPU partial slab always has a free object (frees only add to it); if not, it
            // is now unfrozen and full, which is a consistent state.
            c.stat(DeactivateBypass);
        }
        self.get_partial(c, node)
    }

    /// `get_freelist`: takes a frozen slab's whole freelist for the CPU, unfreezing the slab
    /// if it turns out to be full.
    pub(super) fn get_freelist(&self, c: &KmemCacheCpu, slab: *mut Page) -> usize {
        // SAFETY: a live slab of this cache, frozen for slot `c`.
        let s = unsafe { &*slab };
        loop {
            let old = s.slab_state();
            let freelist = old.0;
            let mut new = old.1.with_inuse(old.1.objects());
            if !cfg!(kmem_mutant = "get_freelist_stays_frozen") {
                new = new.with_frozen(freelist != 0);
            }
            if s.slab_cas(old, (0, new)) {
                return freelist;
            }
            c.stat(CmpxchgDoubleFail);
            retry_hint();
        }
    }

    /// `get_partial`: a slab from the node partial lists — the requested (or this slot's) node
    /// first, then, for an allocation with no node preference, every other node.
    pub(super) fn get_partial(&self, c: &KmemCacheCpu, node: Option<usize>) -> Option<FrozenSlab> {
        let kmem = self.kmem();
        let home = node.unwrap_or_else(|| kmem.slot_node(self.slot_index(c)));
        if let Some(r) = self.get_partial_node(c, home) {
            return Some(r);
        }
        if node.is_some() {
            return None;
        }
        (1..self.nr_nodes).find_map(|i| self.get_partial_node(c, (home + i) % self.nr_nodes))
    }

    /// `get_partial_node`: freezes the first partial slab of `nid` for the CPU and moves up to
    /// half of `cpu_partial_slabs` more to the CPU partial list.
    pub(super) fn get_partial_node(&self, c: &KmemCacheCpu, nid: usize) -> Option<FrozenSlab> {
        let n = self.node(nid);
        if n.nr_partial.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut g = n.list_lock.lock();
        let mut result = None;
        let mut partial_slabs = 0;
        let mut slab = KmemCacheNode::first(&g);
        while !slab.is_null() {
            // SAFETY: `slab` is on the list `g` protects.
            let next = unsafe { KmemCacheNode::next_of(&g, slab) };
            if result.is_none() {
                let freelist = self.acquire_slab(c, n, &mut g, slab, true);
                c.stat(AllocFromPartial);
                result = Some(FrozenSlab { slab, freelist });
            } else {
                self.acquire_slab(c, n, &mut g, slab, false);
                // Never drains here: draining takes list_lock, which we hold. With
                // `drain == false` the call returns null by construction, so this debug
                // assertion cannot fire.
                let drained = self.put_cpu_partial_locked(slab, c, false);
                debug_assert!(drained.is_null());
                c.stat(CpuPartialNode);
                partial_slabs += 1;
            }
            if !self.has_cpu_partial() || partial_slabs > self.geo.cpu_partial_slabs / 2 {
                break;
            }
            slab = next;
        }
        result
    }

    /// `acquire_slab`: freezes a node-partial slab and unlinks it; with `take`, also takes its
    /// whole freelist (returned) for the CPU.
    pub(super) fn acquire_slab(
        &self,
        c: &KmemCacheCpu,
        n: &KmemCacheNode,
        g: &mut crate::sync::SpinGuard<'_, crate::slub::node::PartialList>,
        slab: *mut Page,
        take: bool,
    ) -> usize {
        // SAFETY: a live slab on `n`'s partial list, whose lock `g` we hold.
        let s = unsafe { &*slab };
        loop {
            let old = s.slab_state();
            let (new_freelist, mut new) = if take {
                (0, old.1.with_inuse(old.1.objects()))
            } else {
                (old.0, old.1)
            };
            if !cfg!(kmem_mutant = "acquire_without_freeze") {
                new = new.with_frozen(true);
            }
            if s.slab_cas(old, (new_freelist, new)) {
                // SAFETY: on this list, lock held.
                unsafe { n.remove_partial(g, slab) };
                return old.0;
            }
            c.stat(CmpxchgDoubleFail);
            retry_hint();
        }
    }

    /// `new_slab`: pages for a new slab on `node` (or slot `c`'s node, then any node), at the
    /// preferred order with NORETRY, then at the minimum order; if the page allocator is out of
    /// memory, discards this cache's empty partial slabs and tries once more. Called with no
    /// slot lock held (`c` only picks the node and takes the counts); takes node `list_lock`s
    /// (the reclaim) and page locks, and runs the constructor.
    ///
    /// `take`: as [`Self::init_slab`]'s.
    pub(crate) fn new_slab(
        &self,
        c: &KmemCacheCpu,
        node: Option<usize>,
        take: usize,
    ) -> Option<(FrozenSlab, Taken)> {
        let kmem = self.kmem();
        let home = node.unwrap_or_else(|| kmem.slot_node(self.slot_index(c)));
        let mut nodes =
            core::iter::once(home).chain((1..self.nr_nodes).map(|i| (home + i) % self.nr_nodes));
        let tries = if node.is_some() { 1 } else { self.nr_nodes };
        for nid in nodes.by_ref().take(tries) {
            if let Some(r) = self.allocate_slab(c, nid, take) {
                return Some(r);
            }
        }
        None
    }

    /// `allocate_slab` on one node.
    pub(super) fn allocate_slab(
        &self,
        c: &KmemCacheCpu,
        nid: usize,
        take: usize,
    ) -> Option<(FrozenSlab, Taken)> {
        let pages = self.kmem().node_pages(nid);
        let (oo, min) = (self.geo.oo, self.geo.min);
        let mut got = None;
        if oo.order > min.order {
            got = pages
                .alloc_pages(oo.order, GfpFlags::NORETRY)
                .map(|p| (p, oo));
        }
        if got.is_none() {
            let mut p = pages.alloc_pages(min.order, GfpFlags::NONE);
            if p.is_none() && self.discard_empty_partials(nid) > 0 {
                // Reclaim: our own empty slabs went back to the page allocator; retry once.
                p = pages.alloc_pages(min.order, GfpFlags::NONE);
            }
            got = p.map(|p| (p, min));
            if got.is_some() && oo.order > min.order {
                c.stat(OrderFallback);
            }
        }
        let (page, ord) = got?;
        c.stat(AllocSlab);
        Some(self.init_slab(page, ord.order, ord.objects, nid, take))
    }

    /// Turns a fresh block into a frozen slab with every object on the returned freelist, or,
    /// with `take > 0`, its first `min(take, objects)` objects handed out by address
    /// ([`Taken`]) and only the others linked.
    ///
    /// Linking writes a free pointer into every linked object, which makes every page of the
    /// slab resident at once; the taken objects are not written, so a bulk allocation (a sheaf
    /// refill) that takes a whole slab of a multi-page class leaves the pages of the objects
    /// its user never writes untouched (jemalloc's bitmaps and mimalloc's lazily extended free
    /// lists have the same effect). A cache with a constructor, slub_debug or freelist-random
    /// writes or orders every object anyway, and takes nothing.
    pub(super) fn init_slab(
        &self,
        page: NonNull<Page>,
        order: u32,
        objects: u32,
        nid: usize,
        take: usize,
    ) -> (FrozenSlab, Taken) {
        // SAFETY: a block just handed to us by the page allocator.
        let p = unsafe { page.as_ref() };
        let base = crate::page::page_address(p) as usize;
        let size = self.geo.size;
        if self.debug {
            // slub_debug: poison, red zones, records, then the constructor; counted by the
            // debug path under the node's list_lock (debug/paths.rs), not here.
            let give_back = GiveBackOnUnwind {
                pages: self.kmem().node_pages(nid),
                page,
                order,
            };
            // SAFETY: the fresh block of `PAGE_SIZE << order` bytes is ours.
            let first = unsafe {
                self.setup_slab_debug(base, crate::page::PAGE_SIZE << order, objects as usize)
            };
            core::mem::forget(give_back);
            p.freelist_counters
                .store(0, Counters::new(objects, objects, true).0);
            p.cache
                .store(self as *const CacheInner as *mut u8, Ordering::Release);
            p.set_info(crate::page::PageInfo::head(
                PageKind::Slab,
                order,
                nid,
                false,
            ));
            return (
                FrozenSlab {
                    slab: page.as_ptr(),
                    freelist: first,
                },
                Taken::default(),
            );
        }
        // The constructor is the user's code: if it panics, the block goes back to the page
        // allocator as the unwind passes (nothing else has seen it yet), so a caught panic
        // loses nothing.
        let give_back = GiveBackOnUnwind {
            pages: self.kmem().node_pages(nid),
            page,
            order,
        };
        // Slab colouring (`CacheConfig::colour`): the objects start `colour * colour_off`
        // bytes in, the colour cycling through every offset the slab's unused tail allows.
        let colour = self.next_colour(order, objects as usize);
        let base = base + colour * self.geo.colour_off;
        let take = if self.ctor.is_none() && !self.shuffles() {
            take.min(objects as usize)
        } else {
            0
        };
        for i in take..objects as usize {
            let obj = base + i * size;
            if let Some(ctor) = self.ctor {
                // SAFETY: `obj` is a fresh object of `size` bytes inside the block.
                ctor(unsafe { NonNull::new_unchecked(obj as *mut u8) });
            }
            let next = if i + 1 < objects as usize {
                obj + size
            } else {
                0
            };
            // SAFETY: we own the whole block; `obj + offset` is an aligned word inside it.
            unsafe { set_freepointer(obj, self.offset, next) };
        }
        core::mem::forget(give_back);
        // freelist-random: relink in the cache's random order (`debug/shuffle.rs`).
        let first = if take == objects as usize {
            0
        } else if take > 0 {
            base + take * size
        } else {
            // SAFETY: the fresh slab is ours and every object is constructed.
            unsafe { self.shuffle_freelist(base, objects as usize) }.unwrap_or(base)
        };
        p.freelist_counters
            .store(0, Counters::new(objects, objects, true).0);
        p.cache
            .store(self as *const CacheInner as *mut u8, Ordering::Release);
        p.set_info(
            crate::page::PageInfo::head(PageKind::Slab, order, nid, false).with_colour(colour),
        );
        // A tagged cache tags its slabs' pages (`page::slab_tag`: its id and the order) before
        // any object of the slab is handed out.
        let tag = self.slab_tag.load(Ordering::Relaxed);
        if tag != 0 {
            crate::page::set_slab_tags(p, order, crate::page::slab_tag_of(tag, order));
        }
        self.node(nid).inc_slabs(objects as usize);
        (
            FrozenSlab {
                slab: page.as_ptr(),
                freelist: first,
            },
            Taken {
                first: if take > 0 { base } else { 0 },
                count: take,
            },
        )
    }
}

/// Returns a block that `init_slab` was filling to its page allocator if the cache's constructor
/// unwinds; forgotten once every object is constructed.
struct GiveBackOnUnwind<'a> {
    pages: &'a crate::page::PageAllocator,
    page: NonNull<Page>,
    order: u32,
}

impl Drop for GiveBackOnUnwind<'_> {
    fn drop(&mut self) {
        // Runs only while a constructor's panic unwinds through `init_slab`.
        // SAFETY: `page` heads a block of `order` allocated from `pages` for this slab, which no one else has seen: its info, counters and cache pointer are not set yet.
        unsafe { self.pages.free_pages(self.page, self.order) };
    }
}
