//! Freeing: the fast path (`do_slab_free`), the object checks (`owning_slab`: slab, boundary,
//! cheap double free), and `__slab_free` for objects of any other slab.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`.)

use super::cpu_slab::KmemCacheCpu;
use super::node::ListEnd;
use super::slab::{set_freepointer, ExactDiv};
use super::{CacheInner, PCS_FAST_FREE};
use crate::cpu::percpu::{self, Seq};
use crate::page::{Page, PageKind};
use crate::stats::StatItem::*;
use crate::sync::{retry_hint, Ordering};

impl CacheInner {
    /// `slab_free`: frees one object of `slab`: into the CPU's sheaf when the cache has
    /// sheaves and the object is of the CPU's node (`pcs.rs`), else `do_slab_free`.
    ///
    /// # Safety
    /// `obj` is an allocated object of `slab` (a live slab of this cache, checked by
    /// `owning_slab`), owned by the caller and given back once.
    #[inline(always)]
    pub(crate) unsafe fn slab_free(&self, slab: *mut Page, obj: usize) {
        // One load decides: a cpu-slab cache pays one test for the sheaves.
        let mode = self.pcs_mode.load(Ordering::Relaxed);
        if mode != 0 {
            if mode & PCS_FAST_FREE != 0 {
                if self.pcs_push_inline(obj) {
                    return;
                }
                // SAFETY: forwarded contract.
                return unsafe { self.slab_free_sheaves_slow(slab, obj) };
            }
            // The locked mode (or several nodes): the sheaf lock's fast path, inline.
            // SAFETY: forwarded contract.
            return unsafe { self.slab_free_sheaves(slab, obj) };
        }
        // SAFETY: forwarded contract (a list of one object).
        unsafe { self.do_slab_free(slab, obj, obj, 1) }
    }

    /// `kmem_cache_free`: the checks every free makes, then [`Self::slab_free`]. A sheaf cache
    /// with a tag id (`tag_id.rs`) whose frees push inline checks the object with its page's
    /// tag and the object-start test, as `kfree` does, and pushes it onto the CPU's sheaf
    /// without reading the slab's descriptor (a likely cache miss for a random object: typed
    /// objects freed in any order, kmem-bench's `objects`); everything else, and a pointer that
    /// fails those checks, takes the descriptor check ([`Self::owning_slab`]), which accepts
    /// it or aborts naming what is wrong.
    ///
    /// # Safety
    /// `obj` came from this cache and is given back once.
    #[inline(always)]
    pub(crate) unsafe fn cache_free(&self, obj: *mut u8) {
        if self.pcs_mode.load(Ordering::Relaxed) & PCS_FAST_FREE != 0 {
            let id = self.slab_tag.load(Ordering::Relaxed);
            let order = self.geo.oo.order;
            if id != 0
                && crate::page::slab_tag(obj) == crate::page::slab_tag_of(id, order)
                && self.starts_object(order, obj)
            {
                if self.pcs_push_inline(obj as usize) {
                    return;
                }
                // SAFETY: `obj` starts an object of a live slab of this cache (its page's tag and the object-start test), given back once (contract).
                return unsafe {
                    self.slab_free_after_push(obj as usize, || self.owning_slab(obj))
                };
            }
        }
        let slab = self.owning_slab(obj);
        // SAFETY: `slab` is the live slab of `obj`, which the caller passes back to us once.
        unsafe { self.slab_free(slab, obj as usize) }
    }

    /// [`Self::slab_free`] of an object whose slab the caller has not looked up, after an
    /// inline push onto the sheaf did not commit (kmalloc's `kfree` and the C ABI's `free`,
    /// which checked the object with the page's tag): the sheaves' slow path first (a swap
    /// with the spare, a trade at the barn), which needs no slab, and `slab()` only for a
    /// free to the slab. The descriptor of a random object's page is a likely cache miss:
    /// the sheaves' slow path is most of these frees.
    ///
    /// # Safety
    /// As [`Self::slab_free`], with `slab()` the slab of `obj`.
    #[inline(never)]
    pub(crate) unsafe fn slab_free_after_push(&self, obj: usize, slab: impl FnOnce() -> *mut Page) {
        if self.pcs_mode.load(Ordering::Relaxed) & PCS_FAST_FREE != 0 {
            // One node: every object is local (`node_is_local`).
            if self.free_to_pcs(obj) {
                return;
            }
            // SAFETY: forwarded contract (a list of one object of `slab()`).
            return unsafe { self.do_slab_free(slab(), obj, obj, 1) };
        }
        // SAFETY: forwarded contract.
        unsafe { self.slab_free(slab(), obj) }
    }

    /// [`Self::slab_free_sheaves`] out of line: the rseq mode's free after its inline push did
    /// not commit.
    ///
    /// # Safety
    /// As [`Self::slab_free`].
    #[inline(never)]
    unsafe fn slab_free_sheaves_slow(&self, slab: *mut Page, obj: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.slab_free_sheaves(slab, obj) }
    }

    /// `slab_free` of a sheaf cache: into the CPU's sheaf, else `do_slab_free`.
    ///
    /// # Safety
    /// As [`Self::slab_free`].
    #[inline(always)]
    unsafe fn slab_free_sheaves(&self, slab: *mut Page, obj: usize) {
        if self.node_is_local(slab) && self.free_to_pcs(obj) {
            return;
        }
        // SAFETY: forwarded contract (a list of one object).
        unsafe { self.do_slab_free(slab, obj, obj, 1) }
    }

    /// Whether `slab` is on the node of the CPU the thread runs on (always, with one node):
    /// frees of another node's objects bypass the sheaves, as in the kernel.
    #[inline(always)]
    fn node_is_local(&self, slab: *mut Page) -> bool {
        if self.nr_nodes == 1 {
            return true;
        }
        let c = self.this_cpu();
        // SAFETY: `slab` is a live slab descriptor (caller's contract).
        unsafe { (*slab).node() == self.kmem().slot_node(self.slot_index(c)) }
    }

    /// `do_slab_free`: returns the detached list `head..=tail` of `cnt` objects, all of `slab`.
    ///
    /// # Safety
    /// The objects are allocated objects of `slab` (a live slab of this cache), linked
    /// `head -> ... -> tail` through their free pointers, and owned by the caller.
    #[inline(always)]
    pub(crate) unsafe fn do_slab_free(&self, slab: *mut Page, head: usize, tail: usize, cnt: u32) {
        if self.rseq {
            // SAFETY: forwarded contract.
            return unsafe { self.do_slab_free_rseq(slab, head, tail, cnt) };
        }
        if self.debug {
            // slub_debug (never in rseq mode): the node-only path under list_lock.
            // SAFETY: forwarded contract.
            return unsafe { crate::debug::free_entry(self, slab, head, tail, cnt) };
        }
        loop {
            let c = self.this_cpu();
            // `{freelist, tid}` first, then `slab` (see `load_for_free`).
            let (freelist, tid, cur_slab) = c.load_for_free();
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
            if c.try_push(freelist, tid, head, self.tid_step) {
                c.stat_add(FreeFastpath, cnt as u64);
                return;
            }
            c.stat(CmpxchgDoubleCpuFail);
            retry_hint();
        }
    }

    /// The free fast path in rseq mode: one sequence on the slot of the CPU the thread runs on
    /// (`percpu::push`: stopped? the object's slab is the slot's slab? double free? then link
    /// the tail and store `freelist = head` as the commit). Anything else goes to
    /// `__slab_free`, which is correct for any slab and touches no slot's freelist — also the
    /// route of a thread that cannot run sequences.
    ///
    /// # Safety
    /// As [`CacheInner::do_slab_free`].
    #[inline(always)]
    unsafe fn do_slab_free_rseq(&self, slab: *mut Page, head: usize, tail: usize, cnt: u32) {
        loop {
            let (slots, offset, slab_addr) = (self.slots, self.offset, slab as usize);
            // SAFETY: the caller owns `head..=tail`, objects of `slab` (contract) with their free pointer at `offset`; the slots are this cache's.
            let (st, at) = unsafe { percpu::push(slots, offset, slab_addr, head, tail) };
            match st {
                Seq::Done => {
                    self.cpu_at(at).stat_add(FreeFastpath, cnt as u64);
                    return;
                }
                Seq::DoubleFree => {
                    self.double_free(tail, "it is already the first free object of its CPU slab")
                }
                Seq::Unavailable if percpu::thread_can_sequence() => continue,
                _ => {
                    let c = if st == Seq::Unavailable {
                        self.this_cpu()
                    } else {
                        self.cpu_at(at)
                    };
                    c.stat_add(FreeSlowpath, cnt as u64);
                    // SAFETY: forwarded contract.
                    unsafe { self.slab_free_slow(c, slab, head, tail, cnt) };
                    return;
                }
            }
        }
    }

    /// The slab that owns `obj`, after the O(1) checks that every free performs: the page is
    /// a slab of this cache (`virt_to_slab` + the `slab->slab_cache` check) and `obj` is the
    /// start of one of its objects (`check_valid_pointer`: `(obj - base) % size == 0` and
    /// inside the slab's objects), computed with a multiply and a rotate, not a division.
    /// Aborts with a precise message when a check fails (a coloured or debug cache's pointers
    /// are checked exactly in the cold path, which returns for a valid one).
    #[inline(always)]
    pub(crate) fn owning_slab(&self, obj: *mut u8) -> *mut Page {
        match self.owning_slab_fast(obj) {
            Some(slab) => slab,
            None => self.owning_slab_checked(obj),
        }
    }

    /// The checks of [`Self::owning_slab`] with no call in them: the slab if every one passes,
    /// `None` otherwise (then [`Self::owning_slab_checked`] says why, or accepts the pointer
    /// of a coloured or debug cache). A fast path that calls nothing needs no stack frame.
    #[inline(always)]
    fn owning_slab_fast(&self, obj: *mut u8) -> Option<*mut Page> {
        // One step from a tail to its slab's head (allocated tails lead there directly).
        let page = crate::page::virt_to_page_allocated(obj)?;
        let info = page.info();
        let owner = page.cache.load(Ordering::Acquire);
        if info.kind() != PageKind::Slab || !core::ptr::eq(owner as *const CacheInner, self) {
            return None;
        }
        if self.starts_object(info.order(), obj) {
            Some(page as *const Page as *mut Page)
        } else {
            None
        }
    }

    /// `check_valid_pointer` without a call: whether `obj`, inside a slab of this cache of
    /// `order`, starts one of its objects at a multiple of the size. A coloured cache's
    /// pointers always fail it (`check_size`) and a debug cache's objects start
    /// `red_left_pad` into their slots: callers check a failed pointer again in their cold
    /// path, which knows both.
    ///
    /// A power-of-two size up to a page takes one AND (such objects tile every slab, so the
    /// multiples of the size are exactly the object starts); every other size the
    /// multiply-rotate test. A cache frees objects of one size, so for a caller that frees to
    /// one cache in a loop that branch always predicts, and the multiply it spares cost
    /// `KmemCache`'s free 0.5–0.8 ns (criterion, measured). The kmalloc fast paths, which free
    /// every class in turn, use [`PcsView::starts_object`](super::PcsView::starts_object)
    /// instead, which has no branch on the size.
    #[inline(always)]
    pub(crate) fn starts_object(&self, order: u32, obj: *mut u8) -> bool {
        let size = self.check_size;
        if size.is_power_of_two() && size as usize <= crate::page::PAGE_SIZE {
            return pow2_starts_object(size, obj as usize);
        }
        starts_object_in(
            self.size_div,
            self.check_size,
            crate::page::PAGE_SIZE << order,
            obj as usize,
        )
    }

    /// [`Self::owning_slab`] when a quick check failed: aborts naming what is wrong, or
    /// returns the slab of a pointer that starts an object of a coloured or debug cache.
    #[cold]
    #[inline(never)]
    fn owning_slab_checked(&self, obj: *mut u8) -> *mut Page {
        let Some(page) = crate::page::virt_to_page(obj) else {
            self.bad_free(obj, None)
        };
        let info = page.info();
        let owner = page.cache.load(Ordering::Acquire);
        if info.kind() != PageKind::Slab || !core::ptr::eq(owner as *const CacheInner, self) {
            self.bad_free(obj, Some(page))
        }
        let slab_bytes = crate::page::PAGE_SIZE << info.order();
        self.bad_object(page, obj, obj as usize & (slab_bytes - 1));
        page as *const Page as *mut Page
    }

    /// Aborts on a free of a pointer inside one of this cache's slabs that is not the start of
    /// an object. A debug cache's objects start `red_left_pad` bytes into their slots, which
    /// the O(1) test above does not know: every free of one comes here, and returns if the
    /// pointer does start an object (its free path checks it again, exactly, under the lock).
    #[cold]
    #[inline(never)]
    pub(super) fn bad_object(&self, page: &Page, obj: *mut u8, off: usize) {
        if self.geo.colour_off != 0 && self.debug_valid_pointer(page, obj as usize) {
            // A coloured cache: every free comes here (`check_size`), and the pointer starts
            // an object of its slab's colour.
            return;
        }
        if self.debug {
            if self.debug_valid_pointer(page, obj as usize) {
                return;
            }
            self.slab_err(page, "Invalid object pointer", Some(obj as usize));
            self.abort_corrupt(crate::debug::Defect {
                kind: "Invalid object pointer",
                addr: obj as usize,
            });
        }
        let addr = crate::os::Num::hex(obj as u64);
        let base = crate::os::Num::hex(obj as u64 - off as u64);
        let size = crate::os::Num::dec(self.geo.size as u64);
        // Inside one of the slab's objects (whichever: a shuffled freelist hands out the last
        // one first as readily as the first), or beyond the last one.
        let objects = page.slab_state().1.objects() as usize;
        let what = if off / self.geo.size >= objects {
            "\": free of a pointer past the last object "
        } else {
            "\": free of an interior pointer "
        };
        crate::os::abort_msg(&[
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
    pub(crate) fn double_free(&self, obj: usize, why: &str) -> ! {
        let addr = crate::os::Num::hex(obj as u64);
        crate::os::abort_msg(&[
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
    pub(super) fn bad_free(&self, obj: *mut u8, page: Option<&Page>) -> ! {
        let hex = crate::os::Num::hex(obj as u64);
        let addr = hex.as_str();
        let Some(page) = page else {
            crate::os::abort_msg(&[
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
                crate::os::abort_msg(&[
                    "kmem: object ",
                    addr,
                    " freed to cache \"",
                    self.name(),
                    "\" belongs to cache \"",
                    other,
                    "\"",
                ])
            }
            PageKind::Free | PageKind::Pcp => crate::os::abort_msg(&[
                "kmem: free of ",
                addr,
                " to cache \"",
                self.name(),
                "\": the page is free (double free or use after free)",
            ]),
            _ => crate::os::abort_msg(&[
                "kmem: free of ",
                addr,
                " to cache \"",
                self.name(),
                "\": the pointer is not inside a slab of any cache",
            ]),
        }
    }

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
}

/// [`CacheInner::starts_object`] for a power-of-two `size` up to a page: `obj` is a multiple
/// of the size (slabs are aligned to at least a page).
#[inline(always)]
fn pow2_starts_object(size: u32, obj: usize) -> bool {
    obj & (size as usize - 1) == 0
}

/// The object-start test for a slab of `slab_bytes` (a power of two, the slab's alignment),
/// without a branch: `obj`'s offset in it is a multiple of the size (`div`) and the object it
/// starts ends inside the slab (`check_size`): [`CacheInner::starts_object`] for sizes that
/// are not powers of two up to a page. (The kmalloc view's test,
/// [`super::PcsView::starts_object`], knows its slab order and needs one comparison.)
#[inline(always)]
pub(super) fn starts_object_in(
    div: ExactDiv,
    check_size: u32,
    slab_bytes: usize,
    obj: usize,
) -> bool {
    let off = obj & (slab_bytes - 1);
    // `off < slab_bytes <= 4 MiB` and `check_size <= u32::MAX`: the sum cannot overflow. `&`,
    // not `&&`: both tests are computed, one branch follows.
    div.is_index(div.index(off)) & (off + check_size as usize <= slab_bytes)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Every offset of slabs of several orders, for power-of-two sizes and others: the
    /// branch-free test accepts exactly the starts of whole objects, and a coloured cache's
    /// `check_size` rejects every offset.
    #[test]
    fn starts_object_accepts_exactly_the_object_starts() {
        let sizes = [
            8, 16, 24, 48, 64, 96, 192, 256, 320, 448, 512, 640, 1024, 1536, 4096, 6144,
        ];
        for size in sizes {
            let div = ExactDiv::new(size);
            for order in 0..3 {
                let slab = crate::page::PAGE_SIZE << order;
                // A slab base with high bits set: only the offset may matter.
                let base = 0x7f12_3400_0000usize;
                for off in 0..slab {
                    let want = off % size == 0 && off + size <= slab;
                    assert_eq!(
                        starts_object_in(div, size as u32, slab, base + off),
                        want,
                        "size {size}, order {order}, offset {off}"
                    );
                    assert!(!starts_object_in(div, u32::MAX, slab, base + off));
                    // The power-of-two shortcut accepts the same offsets.
                    if size.is_power_of_two() && size <= crate::page::PAGE_SIZE {
                        assert_eq!(pow2_starts_object(size as u32, base + off), want);
                    }
                }
            }
        }
    }
}
