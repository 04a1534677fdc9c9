//! The SLUB protocols: how objects move between CPU freelists, slabs, partial lists and the page
//! allocator. Names follow `mm/slub.c`.
//!
//! # Lock order
//!
//! ```text
//!   allocator registry lock          (cache create/destroy, slabinfo)
//!     -> CPU slot lock               (kmem_cache_cpu: slow paths of that slot)
//!       -> node list_lock            (kmem_cache_node: the partial list)
//!         -> page allocator lock     (one per node; never calls out)
//! ```
//! The fast paths take no lock. The slot lock is dropped across `new_slab` (pages, page faults,
//! the constructor): see [`CacheInner::new_slab_unlocked`]. No path allocates through the
//! global allocator while holding any of these locks.
//!
//! # The fast paths ([`CacheInner::slab_alloc`], [`CacheInner::do_slab_free`])
//!
//! Allocation reads the slot's `{freelist, tid}` in one 16-byte load, reads the first object's
//! free pointer (speculatively: the object may meanwhile be handed to someone else, whose writes
//! race with this read exactly like a seqlock reader's), and swings `{object, tid}` to
//! `{next, next_tid}` with one CAS. Any change to the slot since the load advanced the tid, so a
//! stale `next` can never be installed. Free links the object in front of the freelist with the
//! same CAS, but only if the object's slab is the slot's current slab; otherwise it goes to
//! [`CacheInner::slab_free_slow`].
//!
//! # Slab states
//!
//! ```text
//!            new_slab                     get_freelist finds it empty
//!   (pages) ---------> CPU slab (frozen) ------------------------------> full, no list
//!                        ^    |  deactivate_slab                            |
//!     get_partial_node   |    v                      free into full slab    |
//!   node partial list <--+-- unfrozen ---------------------------------------+
//!     (unfrozen)     \                     (has_cpu_partial: freeze it ----> CPU partial list
//!                     \                                                       (frozen))
//!                      `--> discard_slab when empty and the node keeps min_partial already
//! ```
//! Each arrow that changes list membership is taken by a `{freelist, counters}` CAS on the slab
//! with the node's `list_lock` held *before* the CAS whenever the outcome puts the slab on or
//! takes it off a node list (see `node.rs` for the invariant).

pub(crate) mod geometry;

use crate::cache::CacheInner;
use crate::cpu_slab::KmemCacheCpu;
use crate::node::{KmemCacheNode, ListEnd};
use crate::page::{GfpFlags, Page, PageKind};
use crate::slab::{get_freepointer, set_freepointer, Counters};
use crate::stats::{SlabInfo, StatItem::*};
use crate::sync::{retry_hint, Ordering};
use core::ptr::{self, NonNull};

/// A freshly filled CPU slab: `(slab, its freelist)`, both owned by the caller.
type Refill = (*mut Page, usize);

/// What [`CacheInner::new_slab_unlocked`] returns: slot `cpu`, locked (`guard`) and detached
/// with `tid`, and a new frozen `slab` whose whole `freelist` the caller owns.
struct NewSlab<'a> {
    cpu: &'a KmemCacheCpu,
    guard: crate::sync::SpinGuard<'a, ()>,
    slab: *mut Page,
    freelist: usize,
    tid: u64,
}

impl CacheInner {
    // =========================================================================================
    // Fast paths
    // =========================================================================================

    /// `slab_alloc_node`: one object, from `node` if given.
    #[inline(always)]
    pub(crate) fn slab_alloc(&self, node: Option<usize>) -> *mut u8 {
        loop {
            let c = self.this_cpu();
            let (object, tid) = c.freelist_tid.load_tag_then_word();
            if object == 0 || !self.cpu_node_matches(c, node) {
                return self.slab_alloc_slow(c, node);
            }
            // `object` was on this slot's freelist when the pair was loaded, so it is an object of
            // this cache in mapped slab memory; the value read may be stale, and the tid CAS below
            // rejects it if so.
            // SAFETY: `object` is an object of this cache in slab memory, which stays mapped.
            let next = unsafe { get_freepointer(object, self.offset) };
            if c.freelist_tid
                .compare_exchange((object, tid), (next, self.tid_step.next_tid(tid)))
                .is_ok()
            {
                c.stat(AllocFastpath);
                return object as *mut u8;
            }
            c.stat(CmpxchgDoubleCpuFail);
            retry_hint();
        }
    }

    /// `do_slab_free`: returns the detached list `head..=tail` of `cnt` objects, all of `slab`.
    ///
    /// # Safety
    /// The objects are allocated objects of `slab` (a live slab of this cache), linked
    /// `head -> ... -> tail` through their free pointers, and owned by the caller.
    #[inline(always)]
    pub(crate) unsafe fn do_slab_free(&self, slab: *mut Page, head: usize, tail: usize, cnt: u32) {
        loop {
            let c = self.this_cpu();
            // The order matters: `{freelist, tid}` first, then `slab`. A slab change after the
            // load advances the tid (the CAS fails); one before it is seen by the slab check.
            let (freelist, tid, cur_slab) = if cfg!(kmem_mutant = "free_reads_slab_before_tid") {
                // Planted bug (loom-tests): a refill between the two loads goes unnoticed.
                let cur_slab = c.slab.load(Ordering::Acquire);
                let (freelist, tid) = c.freelist_tid.load();
                (freelist, tid, cur_slab)
            } else {
                let (freelist, tid) = c.freelist_tid.load_tag_then_word();
                (freelist, tid, c.slab.load(Ordering::Acquire))
            };
            if cur_slab != slab {
                c.stat_add(FreeSlowpath, cnt as u64);
                // SAFETY: forwarded contract.
                unsafe { self.slab_free_slow(c, slab, head, tail, cnt) };
                return;
            }
            if tail == freelist {
                // `CONFIG_SLAB_FREELIST_HARDENED`'s check in `set_freepointer`: an object the
                // caller owns is on no freelist, so one at the head of ours was freed before.
                // (The load cannot be older than the caller's allocation of `tail`.)
                self.double_free(tail, "it is already the first free object of its CPU slab");
            }
            // Linking it is published by the CAS below.
            // SAFETY: `tail` is owned by the caller (contract).
            unsafe { set_freepointer(tail, self.offset, freelist) };
            if c.freelist_tid
                .compare_exchange((freelist, tid), (head, self.tid_step.next_tid(tid)))
                .is_ok()
            {
                c.stat_add(FreeFastpath, cnt as u64);
                return;
            }
            c.stat(CmpxchgDoubleCpuFail);
            retry_hint();
        }
    }

    /// Whether the slot's current slab suits an allocation for `node`.
    #[inline(always)]
    fn cpu_node_matches(&self, c: &KmemCacheCpu, node: Option<usize>) -> bool {
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

    /// The slab that owns `obj`, after the O(1) checks that every free performs: the page is
    /// a slab of this cache (`virt_to_slab` + the `slab->slab_cache` check) and `obj` is the
    /// start of one of its objects (`check_valid_pointer`: `(obj - base) % size == 0` and
    /// inside the slab's objects), computed with a multiply and a rotate, not a division.
    #[inline(always)]
    pub(crate) fn owning_slab(&self, obj: *mut u8) -> *mut Page {
        let Some(page) = crate::page::virt_to_page(obj) else {
            self.bad_free(obj, None)
        };
        let info = page.info();
        let owner = page.cache.load(Ordering::Acquire);
        if info.kind() != PageKind::Slab || !core::ptr::eq(owner as *const CacheInner, self) {
            self.bad_free(obj, Some(page))
        }
        // A slab is one buddy block, aligned to its own size (chunks are aligned to the largest
        // block), so the offset of `obj` in it is its low bits.
        let slab_bytes = crate::page::PAGE_SIZE << info.order();
        let off = obj as usize & (slab_bytes - 1);
        // `off` is a multiple of the size (the multiply-rotate test) and the object it starts
        // ends inside the slab. `off < slab_bytes <= 4 MiB`: the sum cannot overflow.
        if !self.size_div.is_index(self.size_div.index(off)) || off + self.geo.size > slab_bytes {
            self.bad_object(obj, off, slab_bytes)
        }
        page as *const Page as *mut Page
    }

    /// Aborts on a free of a pointer inside one of this cache's slabs that is not the start of
    /// an object.
    #[cold]
    #[inline(never)]
    fn bad_object(&self, obj: *mut u8, off: usize, slab_bytes: usize) -> ! {
        let addr = crate::os::Num::hex(obj as u64);
        let base = crate::os::Num::hex(obj as u64 - off as u64);
        let size = crate::os::Num::dec(self.geo.size as u64);
        let what = if off + self.geo.size > slab_bytes {
            "\": free of a pointer past the last object "
        } else {
            "\": free of an interior pointer "
        };
        crate::abort_msg(&[
            "kmem: cache \"",
            self.name(),
            what,
            addr.as_str(),
            " (object size ",
            size.as_str(),
            ", slab base ",
            base.as_str(),
            ")",
        ])
    }

    /// Aborts on a detected double free of `obj`.
    #[cold]
    #[inline(never)]
    fn double_free(&self, obj: usize, why: &str) -> ! {
        let addr = crate::os::Num::hex(obj as u64);
        crate::abort_msg(&[
            "kmem: cache \"",
            self.name(),
            "\": double free of ",
            addr.as_str(),
            " (",
            why,
            ")",
        ])
    }

    #[cold]
    #[inline(never)]
    fn bad_free(&self, obj: *mut u8, page: Option<&Page>) -> ! {
        let hex = crate::os::Num::hex(obj as u64);
        let addr = hex.as_str();
        let Some(page) = page else {
            crate::abort_msg(&[
                "kmem: free of ",
                addr,
                " to cache \"",
                self.name(),
                "\": the pointer is not in any kmem memory",
            ]);
        };
        let owner = page.cache.load(Ordering::Acquire) as *const CacheInner;
        match page.info().kind() {
            PageKind::Slab if !owner.is_null() => {
                // Caches with slabs are never unmapped.
                // SAFETY: a slab's owner pointer names a live cache.
                let other = unsafe { (*owner).name() };
                crate::abort_msg(&[
                    "kmem: object ",
                    addr,
                    " freed to cache \"",
                    self.name(),
                    "\" belongs to cache \"",
                    other,
                    "\"",
                ])
            }
            PageKind::Free => crate::abort_msg(&[
                "kmem: free of ",
                addr,
                " to cache \"",
                self.name(),
                "\": the page is free (double free or use after free)",
            ]),
            _ => crate::abort_msg(&[
                "kmem: free of ",
                addr,
                " to cache \"",
                self.name(),
                "\": the pointer is not inside a slab of any cache",
            ]),
        }
    }

    // =========================================================================================
    // Allocation slow path
    // =========================================================================================

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
    fn slab_alloc_slow(&self, c: &KmemCacheCpu, node: Option<usize>) -> *mut u8 {
        let mut c = c;
        let mut out_of_memory = false;
        loop {
            let guard = c.lock.lock();
            if !out_of_memory {
                c.stat(AllocSlowpath);
            }
            let (slab, freelist, tid) = c.detach(self.tid_step);
            if let Some((slab, object)) = self.refill(c, slab, freelist, node) {
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
            }) = self.new_slab_unlocked(c, node)
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
    fn new_slab_unlocked(&self, c: &KmemCacheCpu, node: Option<usize>) -> Option<NewSlab<'_>> {
        let (slab, freelist) = self.new_slab(c, node)?;
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
            crate::abort_msg(&[
                "kmem: a CPU slot without a slab has objects on its freelist \
                 (slot protocol violated; memory may be corrupt)",
            ]);
        }
        Some(NewSlab {
            cpu,
            guard,
            slab,
            freelist,
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
    ) -> Option<Refill> {
        if !slab.is_null() {
            // SAFETY: the slot's slab is a live frozen slab of this cache.
            let matches = node.is_none_or(|n| unsafe { (*slab).node() } == n);
            if !matches {
                self.deactivate_slab(c, slab, freelist);
                c.stat(CpuslabFlush);
            } else if freelist != 0 {
                return Some((slab, freelist));
            } else {
                let freelist = self.get_freelist(c, slab);
                if freelist != 0 {
                    c.stat(AllocRefill);
                    return Some((slab, freelist));
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
            unsafe { c.partial.set(p.next.get()) };
            if node.is_some_and(|n| p.node() != n) {
                // SAFETY: as above.
                unsafe { p.next.set(ptr::null_mut()) };
                self.unfreeze_partials(c, partial);
                continue;
            }
            c.stat(CpuPartialAlloc);
            let freelist = self.get_freelist(c, partial);
            if freelist != 0 {
                return Some((partial, freelist));
            }
            // A CPU partial slab always has a free object (frees only add to it); if not, it
            // is now unfrozen and full, which is a consistent state.
            c.stat(DeactivateBypass);
        }
        self.get_partial(c, node)
    }

    /// `get_freelist`: takes a frozen slab's whole freelist for the CPU, unfreezing the slab
    /// if it turns out to be full.
    fn get_freelist(&self, c: &KmemCacheCpu, slab: *mut Page) -> usize {
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
    fn get_partial(&self, c: &KmemCacheCpu, node: Option<usize>) -> Option<Refill> {
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
    fn get_partial_node(&self, c: &KmemCacheCpu, nid: usize) -> Option<Refill> {
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
                result = Some((slab, freelist));
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
    fn acquire_slab(
        &self,
        c: &KmemCacheCpu,
        n: &KmemCacheNode,
        g: &mut crate::sync::SpinGuard<'_, crate::node::PartialList>,
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
    fn new_slab(&self, c: &KmemCacheCpu, node: Option<usize>) -> Option<Refill> {
        let kmem = self.kmem();
        let home = node.unwrap_or_else(|| kmem.slot_node(self.slot_index(c)));
        let mut nodes =
            core::iter::once(home).chain((1..self.nr_nodes).map(|i| (home + i) % self.nr_nodes));
        let tries = if node.is_some() { 1 } else { self.nr_nodes };
        for nid in nodes.by_ref().take(tries) {
            if let Some(r) = self.allocate_slab(c, nid) {
                return Some(r);
            }
        }
        None
    }

    /// `allocate_slab` on one node.
    fn allocate_slab(&self, c: &KmemCacheCpu, nid: usize) -> Option<Refill> {
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
        Some(self.init_slab(page, ord.order, ord.objects, nid))
    }

    /// Turns a fresh block into a frozen slab with every object on the returned freelist.
    fn init_slab(&self, page: NonNull<Page>, order: u32, objects: u32, nid: usize) -> Refill {
        // SAFETY: a block just handed to us by the page allocator.
        let p = unsafe { page.as_ref() };
        let base = crate::page::page_address(p) as usize;
        let size = self.geo.size;
        for i in 0..objects as usize {
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
        self.node(nid).inc_slabs(objects as usize);
        (page.as_ptr(), base)
    }

    /// `discard_slab`: returns an empty slab that no one else can reach to the page allocator.
    fn discard_slab(&self, slab: *mut Page) {
        // SAFETY: an empty slab of this cache, on no list and frozen by no one.
        let s = unsafe { &*slab };
        let info = s.info();
        let (_, counters) = s.slab_state();
        if counters.inuse() != 0 {
            // Every caller saw `inuse == 0` on a slab no one else can reach; freeing it anyway
            // would hand live objects to the page allocator.
            let slab_addr = crate::os::Num::hex(crate::page::page_address(s) as u64);
            crate::abort_msg(&[
                "kmem: cache \"",
                self.name(),
                "\": discarding slab ",
                slab_addr.as_str(),
                " with objects in use (corrupt slab counters)",
            ]);
        }
        self.node(info.node())
            .dec_slabs(counters.objects() as usize);
        s.cache.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: the block was allocated at `info.order()` on this node and is ours.
        unsafe {
            self.kmem()
                .node_pages(info.node())
                .free_pages(NonNull::new_unchecked(slab), info.order());
        }
    }

    // =========================================================================================
    // Free slow path
    // =========================================================================================

    /// `__slab_free`: returns objects to a slab that is not this slot's CPU slab.
    ///
    /// # Safety
    /// As [`CacheInner::do_slab_free`].
    #[cold]
    pub(crate) unsafe fn slab_free_slow(
        &self,
        c: &KmemCacheCpu,
        slab: *mut Page,
        head: usize,
        tail: usize,
        cnt: u32,
    ) {
        // SAFETY: a live slab of this cache (contract).
        let s = unsafe { &*slab };
        let n = self.node(s.node());
        let mut guard;
        let (prior, was_frozen, new) = loop {
            guard = None;
            let (prior, old) = s.slab_state();
            if tail == prior {
                // As in `do_slab_free`: an object the caller owns is on no freelist.
                self.double_free(tail, "it is already the first free object of its slab");
            }
            let Some(inuse) = old.inuse().checked_sub(cnt) else {
                // More objects freed than the slab has out: one of them was freed before.
                self.double_free(
                    tail,
                    "its slab has fewer objects in use than are being freed",
                );
            };
            // SAFETY: `tail` is ours (contract); published by the CAS.
            unsafe { set_freepointer(tail, self.offset, prior) };
            let mut new = old.with_inuse(inuse);
            let was_frozen = old.frozen();
            if (new.inuse() == 0 || prior == 0) && !was_frozen {
                if self.has_cpu_partial() && prior == 0 {
                    // A full slab gets a free object: freeze it for our CPU partial list.
                    if !cfg!(kmem_mutant = "full_slab_not_frozen") {
                        new = new.with_frozen(true);
                    }
                } else if !cfg!(kmem_mutant = "slab_free_without_list_lock") {
                    // Its list membership may change: decide under list_lock.
                    guard = Some(n.list_lock.lock());
                }
            }
            if s.slab_cas((prior, old), (head, new)) {
                break (prior, was_frozen, new);
            }
            c.stat(CmpxchgDoubleFail);
            retry_hint();
        };

        let mut g = match guard {
            Some(g) => g,
            None if cfg!(kmem_mutant = "slab_free_without_list_lock")
                && !was_frozen
                && !new.frozen()
                && (new.inuse() == 0 || (prior == 0 && !self.has_cpu_partial())) =>
            {
                // Planted bug: the list decision is made after the CAS, racing get_partial_node.
                n.list_lock.lock()
            }
            None => {
                if was_frozen {
                    c.stat(FreeFrozen);
                } else if new.frozen() {
                    self.put_cpu_partial(slab);
                    c.stat(CpuPartialFree);
                }
                return;
            }
        };
        if new.inuse() == 0 && n.nr_partial.load(Ordering::Relaxed) >= self.geo.min_partial {
            // slab_empty
            if prior != 0 {
                // SAFETY: unfrozen with free objects before this free: on this node's list.
                unsafe { n.remove_partial(&mut g, slab) };
                c.stat(FreeRemovePartial);
            }
            drop(g);
            c.stat(FreeSlab);
            self.discard_slab(slab);
            return;
        }
        if !self.has_cpu_partial() && prior == 0 {
            // Was full (on no list); now partial.
            // SAFETY: on no list; lock held.
            unsafe { n.add_partial(&mut g, slab, ListEnd::Tail) };
            c.stat(FreeAddPartial);
        }
    }

    // =========================================================================================
    // CPU partial lists and deactivation
    // =========================================================================================

    /// `put_cpu_partial` from the free path: pushes a slab we just froze onto this slot's
    /// partial list, draining the list to the node if it is full. If the slot's lock is busy
    /// (its owner is in a slow path, possibly descheduled), the slab goes straight to its node
    /// partial list instead of waiting.
    fn put_cpu_partial(&self, slab: *mut Page) {
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
                unsafe { (*slab).next.set(ptr::null_mut()) };
                self.unfreeze_partials(c, slab);
            }
        }
    }

    /// Pushes `slab` onto `c`'s partial list (caller holds `c.lock`). With `drain`, a full list
    /// is detached first and returned for the caller to unfreeze after dropping the lock.
    fn put_cpu_partial_locked(&self, slab: *mut Page, c: &KmemCacheCpu, drain: bool) -> *mut Page {
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
            (*slab).next.set(old);
            c.partial.set(slab);
            to_unfreeze
        }
    }

    /// `__unfreeze_partials`: moves a detached list of frozen slabs to their node partial lists,
    /// discarding empty ones beyond `min_partial`.
    pub(crate) fn unfreeze_partials(&self, c: &KmemCacheCpu, mut slab: *mut Page) {
        let mut discard: *mut Page = ptr::null_mut();
        let mut locked: Option<(usize, crate::sync::SpinGuard<'_, crate::node::PartialList>)> =
            None;
        while !slab.is_null() {
            // SAFETY: a frozen slab on a list detached by (and so owned by) the caller.
            let s = unsafe { &*slab };
            // SAFETY: as above.
            let next = unsafe { s.next.get() };
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
                crate::abort_msg(&["kmem: unfreeze_partials: list_lock not held"]);
            };
            if new.1.inuse() == 0 && n.nr_partial.load(Ordering::Relaxed) >= self.geo.min_partial {
                // SAFETY: ours; reuse `next` to chain the discard list.
                unsafe { s.next.set(discard) };
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
            let next = unsafe { (*discard).next.get() };
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
                    crate::abort_msg(&[
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
                        crate::abort_msg(&["kmem: deactivate_slab: list_lock not held"]);
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

    /// `flush_slab` + `unfreeze_partials` for slot `c` (caller holds `c.lock`).
    pub(crate) fn flush_cpu_locked(&self, c: &KmemCacheCpu) {
        let (slab, freelist, tid) = c.detach(self.tid_step);
        if !slab.is_null() {
            self.deactivate_slab(c, slab, freelist);
            c.stat(CpuslabFlush);
        }
        c.attach(self.tid_step, ptr::null_mut(), 0, tid);
        // SAFETY: the partial list is ours under `c.lock`.
        let partial = unsafe { c.partial.get() };
        if !partial.is_null() {
            // SAFETY: as above.
            unsafe { c.partial.set(ptr::null_mut()) };
            self.unfreeze_partials(c, partial);
        }
    }

    /// `flush_all`: flushes every slot.
    pub(crate) fn flush_all(&self) {
        for i in 0..self.nr_cpus {
            let c = self.cpu(i);
            let _g = c.lock.lock();
            self.flush_cpu_locked(c);
        }
    }

    /// Frees every empty slab on node `nid`'s partial list; returns how many.
    pub(crate) fn discard_empty_partials(&self, nid: usize) -> usize {
        let n = self.node(nid);
        let mut discard: *mut Page = ptr::null_mut();
        let mut count = 0;
        {
            let mut g = n.list_lock.lock();
            let mut slab = KmemCacheNode::first(&g);
            while !slab.is_null() {
                // SAFETY: on the list `g` protects.
                let next = unsafe { KmemCacheNode::next_of(&g, slab) };
                // With list_lock held and no object of it allocated, nobody can change it: no frees
                // (nothing is out), no allocation (only via this list).
                // SAFETY: `slab` is a live unfrozen slab on our list.
                let s = unsafe { &*slab };
                if s.slab_state().1.inuse() == 0 {
                    // SAFETY: on this list, lock held; then ours.
                    unsafe {
                        n.remove_partial(&mut g, slab);
                        s.next.set(discard);
                    }
                    discard = slab;
                    count += 1;
                }
                slab = next;
            }
        }
        while !discard.is_null() {
            // SAFETY: chained above.
            let next = unsafe { (*discard).next.get() };
            self.discard_slab(discard);
            discard = next;
        }
        count
    }

    /// `kmem_cache_shrink`.
    pub(crate) fn shrink(&self) {
        self.flush_all();
        for nid in 0..self.nr_nodes {
            self.discard_empty_partials(nid);
        }
        for nid in 0..self.nr_nodes {
            self.kmem().node_pages(nid).release_free();
        }
    }

    // =========================================================================================
    // Bulk operations
    // =========================================================================================

    /// `kmem_cache_alloc_bulk`.
    pub(crate) fn alloc_bulk(&self, out: &mut [*mut u8]) -> usize {
        if out.is_empty() {
            return 0;
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
                if let Some((s, f)) = self.refill(c, slab, 0, None) {
                    (slab, freelist) = (s, f);
                } else {
                    // new_objects, as in slab_alloc_slow: the slot lock is dropped across
                    // new_slab and the slot (perhaps another one) comes back locked and detached.
                    c.attach(self.tid_step, ptr::null_mut(), 0, tid);
                    drop(guard);
                    if out_of_memory {
                        return i;
                    }
                    if let Some(new) = self.new_slab_unlocked(c, None) {
                        (c, guard) = (new.cpu, new.guard);
                        (slab, freelist, tid) = (new.slab, new.freelist, new.tid);
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

    // =========================================================================================
    // Destroy and slabinfo
    // =========================================================================================

    /// `kmem_cache_destroy` (the cache is already unregistered).
    ///
    /// # Safety
    /// `this` is a cache no one else will use again.
    pub(crate) unsafe fn destroy(this: NonNull<CacheInner>) {
        // SAFETY: exclusive per the contract until we unmap it below.
        let s = unsafe { this.as_ref() };
        s.flush_all();
        for nid in 0..s.nr_nodes {
            s.discard_empty_partials(nid);
        }
        let slabs: usize = (0..s.nr_nodes)
            .map(|n| s.node(n).nr_slabs.load(Ordering::Relaxed))
            .sum();
        if slabs == 0 {
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
                p = unsafe { (*p).next.get() };
            }
        }
        let (mut num_slabs, mut num_objs) = (0, 0);
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
        let mut name = [0u8; crate::MAX_CACHE_NAME];
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
    name: [u8; crate::MAX_CACHE_NAME],
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
