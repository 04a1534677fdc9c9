//! `struct kmem_cache_cpu`: one CPU slot of a cache.
//!
//! ```text
//!   freelist_tid  {freelist, tid}   16-byte CAS word: the fast paths' only shared state
//!   slab          current slab      frozen; read by the free fast path, written under `lock`
//!   partial       CPU partial list  frozen slabs with free objects (under `lock`)
//!   lock          slot lock         the slow paths only; the fast paths never take it
//!   stats         event counters    relaxed per-slot increments
//! ```
//!
//! # The transaction id
//!
//! `tid` starts at the slot index and steps by [`TidStep`] (the slot count rounded up to a power
//! of two), so `tid % step` names the slot and no two slots ever share a tid. Every change to the
//! slot's `{freelist, slab}` pair advances it: a fast path that read `{freelist, tid}` before any
//! change (by another thread on the same slot, or by a slow path) fails its CAS and retries.
//! That is what makes a stale CPU id harmless: correctness never depends on which slot a thread
//! uses, only speed does.
//!
//! # Attaching and detaching a slab
//!
//! The slow paths change the slot's slab in two published steps, so that a racing free fast
//! path (which reads `freelist_tid` and then `slab`) can never link an object of one slab onto
//! the freelist of another:
//!
//! 1. [`KmemCacheCpu::detach`]: store `slab = null`, then CAS `{freelist, tid}` to
//!    `{null, next_tid}`. Frees that saw the old slab either landed before the CAS (and their
//!    objects are in the freelist taken) or fail it; later frees see `slab == null` and take the
//!    slab free path, which is correct for any slab.
//! 2. [`KmemCacheCpu::attach`]: CAS `{null, tid}` to `{freelist, next_tid}`, then store `slab`.
//!    While the slot is detached no fast path can change `{freelist, tid}` (allocations see an
//!    empty freelist and queue on the slot lock; frees see no slab), so the CAS cannot fail.
//!
//! # rseq mode
//!
//! In an instance whose fast paths commit with restartable sequences (`cpu/percpu/`; one
//! slot per CPU), the fast paths change only the `freelist` word, with one plain store inside a
//! sequence on the slot's own CPU (`percpu::pop`/`push`, called from `alloc.rs`/`free.rs`), and
//! leave the tid alone. A plain store is atomic only with respect to that CPU, so every other
//! change of `{freelist, tid}` — detach and attach, always under the slot lock — is made in one
//! of two ways ([`KmemCacheCpu::cas_slot`]):
//!
//! - on the slot's CPU, as the commit of a sequence that first checks the CPU id
//!   (`percpu::cas_on_cpu`): no system call, the normal case for a slow path, which runs on the
//!   CPU whose slot it refills;
//! - after a stop (`stopped = 1`, then a membarrier fence of the slot's CPU: every sequence in
//!   flight there has committed or will restart and see the stop): a slow path that migrated
//!   (or a thread that cannot run sequences) for one CAS, and for a whole operation
//!   ([`KmemCacheCpu::stop_remote`]) flush, shrink, destroy and the exact slabinfo, which touch
//!   any slot from any CPU.
//!
//! Detach and attach keep their two steps and their order: the free fast path's sequence reads
//! `slab` and commits its push in one sequence, so a free that saw the old slab either
//! committed before the detach (its object is taken with the list) or restarts and sees
//! `slab == null`. The tid still advances on every slow-path change; in rseq mode nothing
//! depends on it.

use super::sheaf::SheafSlot;
use crate::cpu::percpu::{self, OnCpu, SlotHead};
use crate::page::Page;
use crate::stats::{StatItem, NR_STAT_ITEMS};
use crate::sync::{Cell, Ordering, SpinLock};

/// The tid increment of an allocator: its slot count rounded up to a power of two.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TidStep(pub(crate) u64);

impl TidStep {
    /// The step for `nr_slots` CPU slots.
    pub(crate) fn new(nr_slots: usize) -> Self {
        TidStep((nr_slots.max(1)).next_power_of_two() as u64)
    }

    /// `init_tid(cpu)`: the first tid of slot `slot`.
    #[inline]
    pub(crate) fn init_tid(self, slot: usize) -> u64 {
        slot as u64
    }

    /// `next_tid(tid)`: the tid after a change of the slot's `{freelist, slab}`.
    #[inline(always)]
    pub(crate) fn next_tid(self, tid: u64) -> u64 {
        if cfg!(kmem_mutant = "tid_not_advanced") {
            // Planted bug (loom-tests): the tid never moves, so a stale fast-path CAS succeeds.
            return tid;
        }
        tid.wrapping_add(self.0)
    }

    /// The slot that `tid` belongs to.
    #[inline]
    #[cfg_attr(not(test), allow(dead_code))] // used by tests and debugging
    pub(crate) fn slot_of(self, tid: u64) -> usize {
        (tid & (self.0 - 1)) as usize
    }
}

/// One CPU slot of a cache (`struct kmem_cache_cpu`), on its own cache lines.
///
/// Its first 32 bytes are the [`SlotHead`] the restartable sequences use (`{freelist, tid}`,
/// `slab`, `stopped`); the slot derefs to it, so `c.freelist_tid` and `c.slab` name them.
#[repr(C, align(64))]
pub(crate) struct KmemCacheCpu {
    /// `{freelist, tid}` (the lockless per-slot freelist and its transaction id), the current
    /// (frozen) slab or null, and the rseq mode's `stopped` word.
    pub(crate) head: SlotHead<Page>,
    /// The slot's sheaves (`main`, `spare`, their lock) when the cache has sheaves
    /// (`sheaf.rs`), at [`KmemCacheCpu::SHEAVES_OFFSET`].
    pub(crate) sheaves: SheafSlot,
    /// This slot's index, which in rseq mode is its CPU.
    index: usize,
    /// Whether the cache is in rseq mode (see the module docs).
    rseq: bool,
    /// Head of the CPU partial list (frozen slabs), under `lock`.
    pub(crate) partial: Cell<*mut Page>,
    /// The slot lock: serialises the slow paths of this slot.
    pub(crate) lock: SpinLock<()>,
    /// Event counters, one per [`StatItem`] (`AllocPcs` and `FreePcs` are counted in
    /// `sheaves.fast_stats` instead, and their entries here stay 0).
    #[cfg(feature = "stats")]
    pub(crate) stats: [crate::sync::AtomicU64; NR_STAT_ITEMS],
}

impl core::ops::Deref for KmemCacheCpu {
    type Target = SlotHead<Page>;
    #[inline(always)]
    fn deref(&self) -> &SlotHead<Page> {
        &self.head
    }
}

#[cfg(not(loom))]
const _: () = assert!(KmemCacheCpu::SHEAVES_OFFSET == 32);
// The sheaves' inline counters share the slot's first line with the sheaf's top.
#[cfg(all(not(loom), feature = "stats"))]
const _: () =
    assert!(KmemCacheCpu::SHEAVES_OFFSET + core::mem::offset_of!(SheafSlot, fast_stats) + 16 <= 64);

impl KmemCacheCpu {
    /// Offset of `sheaves` in the slot (right after the 32-byte `SlotHead`, on its cache line).
    pub(crate) const SHEAVES_OFFSET: usize = core::mem::offset_of!(KmemCacheCpu, sheaves);
    /// The distance between two slots of a cache's slot array (a constant of the build).
    pub(crate) const STRIDE: usize = core::mem::size_of::<KmemCacheCpu>();

    /// The slot whose sheaf part is at `at`, an address `array_pop`/`array_push` returned for
    /// a cache's sheaf slots.
    #[inline(always)]
    pub(crate) fn at_sheaves<'a>(at: usize) -> &'a KmemCacheCpu {
        // SAFETY: the sequences return the address of the sheaf part of one of a live cache's slots (`KmemCacheCpu`s, at `SHEAVES_OFFSET`), which live as long as the cache, and the caller holds a reference to that cache (or to a view of a cache never destroyed).
        unsafe { &*((at - Self::SHEAVES_OFFSET) as *const KmemCacheCpu) }
    }

    /// This slot's index (its CPU, in the rseq mode).
    #[inline(always)]
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Slot `index` with tid `init_tid`, in rseq mode or not.
    pub(crate) fn new(init_tid: u64, index: usize, rseq: bool) -> Self {
        KmemCacheCpu {
            head: SlotHead::new(init_tid),
            sheaves: SheafSlot::new(),
            index,
            rseq,
            partial: Cell::new(core::ptr::null_mut()),
            lock: SpinLock::new("kmem CPU slot lock", ()),
            #[cfg(feature = "stats")]
            stats: core::array::from_fn(|_| crate::sync::AtomicU64::new(0)),
        }
    }

    /// Counts one event on this slot.
    #[inline(always)]
    pub(crate) fn stat(&self, item: StatItem) {
        self.stat_add(item, 1)
    }

    /// Counts `n` events on this slot.
    #[inline(always)]
    pub(crate) fn stat_add(&self, item: StatItem, n: u64) {
        #[cfg(feature = "stats")]
        {
            // A relaxed load+store, not fetch_add: no locked instruction on the fast path. Two
            // threads sharing the slot can lose an increment (documented in stats.rs).
            let c = self.counter(item);
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
        #[cfg(not(feature = "stats"))]
        {
            let _ = (item, n);
        }
    }

    /// The counter of `item`: the sheaves' inline pop and push counters beside the sheaf's
    /// top, on the line the sequence just wrote (`SheafSlot::fast_stats`); the others in
    /// `stats`. `item` is a constant at every fast-path call, so the choice folds away.
    #[cfg(feature = "stats")]
    #[inline(always)]
    fn counter(&self, item: StatItem) -> &crate::sync::AtomicU64 {
        match item {
            StatItem::AllocPcs => &self.sheaves.fast_stats[0],
            StatItem::FreePcs => &self.sheaves.fast_stats[1],
            _ => &self.stats[item as usize],
        }
    }

    /// Adds this slot's counters into `out`.
    pub(crate) fn add_stats(&self, out: &mut [u64; NR_STAT_ITEMS]) {
        #[cfg(feature = "stats")]
        {
            for (o, c) in out.iter_mut().zip(self.stats.iter()) {
                *o += c.load(Ordering::Relaxed);
            }
            for item in [StatItem::AllocPcs, StatItem::FreePcs] {
                out[item as usize] += self.counter(item).load(Ordering::Relaxed);
            }
        }
        #[cfg(not(feature = "stats"))]
        let _ = out;
    }

    // -----------------------------------------------------------------------------------------
    // The fast paths' view of the slot: every load and commit the lockless paths make, so that
    // the policy code in `alloc.rs`/`free.rs` only calls these (and a different commit mechanism
    // replaces them here, in one place).
    // -----------------------------------------------------------------------------------------

    /// The alloc fast path's read: `(freelist head, tid)`, the tid first (see
    /// `DWord::load_tag_then_word`). The pair may be torn; only [`KmemCacheCpu::try_pop`] may
    /// consume it, whose CAS then fails.
    #[inline(always)]
    pub(crate) fn load_freelist(&self) -> (usize, u64) {
        self.freelist_tid.load_tag_then_word()
    }

    /// The free fast path's read: `(freelist, tid, slab)`, in that order. A slab change after
    /// the first load advances the tid (so [`KmemCacheCpu::try_push`] fails); one before it is
    /// seen in `slab`.
    #[inline(always)]
    pub(crate) fn load_for_free(&self) -> (usize, u64, *mut Page) {
        if cfg!(kmem_mutant = "free_reads_slab_before_tid") {
            return self.load_for_free_mutant();
        }
        let (freelist, tid) = self.freelist_tid.load_tag_then_word();
        (freelist, tid, self.slab.load(Ordering::Acquire))
    }

    /// Planted bug (loom-tests): reads the slab before the tid, so a refill between the two
    /// loads goes unnoticed.
    #[cold]
    fn load_for_free_mutant(&self) -> (usize, u64, *mut Page) {
        let slab = self.slab.load(Ordering::Acquire);
        let (freelist, tid) = self.freelist_tid.load();
        (freelist, tid, slab)
    }

    /// The alloc fast path's commit: `{object, tid}` → `{next, next_tid(tid)}` in one CAS.
    /// False if anything changed the slot since `(object, tid)` was read.
    #[inline(always)]
    pub(crate) fn try_pop(&self, object: usize, tid: u64, next: usize, step: TidStep) -> bool {
        self.freelist_tid
            .compare_exchange((object, tid), (next, step.next_tid(tid)))
            .is_ok()
    }

    /// The free fast path's commit: `{freelist, tid}` → `{head, next_tid(tid)}` in one CAS
    /// (the caller linked its list's tail to `freelist`). False if the slot changed.
    #[inline(always)]
    pub(crate) fn try_push(&self, freelist: usize, tid: u64, head: usize, step: TidStep) -> bool {
        self.freelist_tid
            .compare_exchange((freelist, tid), (head, step.next_tid(tid)))
            .is_ok()
    }

    /// A slow path's `{freelist, tid}` CAS (caller holds `lock`): plain in the locked mode or
    /// while the slot is stopped (only the lock holder stops it, so a non-zero `stopped` is
    /// ours); in rseq mode otherwise, the commit of a sequence on the slot's CPU, or, if the
    /// thread is not on that CPU, a CAS under a stop + fence of the slot.
    #[inline]
    pub(crate) fn cas_slot(
        &self,
        old: (usize, u64),
        new: (usize, u64),
    ) -> Result<(), (usize, u64)> {
        if !self.rseq
            || cfg!(kmem_mutant = "rseq_slow_path_plain_cas")
            || self.stopped.load(Ordering::Relaxed) != 0
        {
            // (The mutant, loom-tests: an ordinary CAS in rseq mode, as if the slow path could
            // not have migrated off the slot's CPU.)
            return self.freelist_tid.compare_exchange(old, new);
        }
        match percpu::cas_on_cpu(&self.head, self.index, old, new) {
            OnCpu::Swapped => Ok(()),
            OnCpu::Failed(seen) => Err(seen),
            OnCpu::Elsewhere if cfg!(kmem_mutant = "rseq_elsewhere_without_stop") => {
                // Planted bug (loom-tests): a thread off the slot's CPU CASes without a stop.
                self.freelist_tid.compare_exchange(old, new)
            }
            OnCpu::Elsewhere => {
                // Migrated since the slot was chosen, or this thread cannot run sequences: make
                // the sequences on the slot's CPU stand back for this one CAS.
                percpu::stop(&self.head, self.index);
                let r = self.freelist_tid.compare_exchange(old, new);
                percpu::resume(&self.head);
                r
            }
        }
    }

    /// rseq mode: stops this slot and fences its CPU until the guard drops, for an operation
    /// that may run on any CPU (flush, slabinfo). The caller holds `lock`. `None` in the locked
    /// mode, where nothing needs stopping.
    pub(crate) fn stop_remote(&self) -> Option<SlotStop<'_>> {
        if !self.rseq {
            return None;
        }
        percpu::stop(&self.head, self.index);
        Some(SlotStop(self))
    }

    /// Step 1 of a slab change (caller holds `lock`): unpublish the slab, then take the whole
    /// CPU freelist with a tid bump. Returns `(slab, freelist, tid)`; the freelist's objects all
    /// belong to `slab`, and `{null, tid}` is now the slot's pair.
    #[inline]
    pub(crate) fn detach(&self, step: TidStep) -> (*mut Page, usize, u64) {
        let slab = self.slab.load(Ordering::Relaxed);
        if !cfg!(kmem_mutant = "detach_keeps_slab") {
            self.slab.store(core::ptr::null_mut(), Ordering::Relaxed);
        }
        let mut cur = self.freelist_tid.load();
        loop {
            let new_tid = step.next_tid(cur.1);
            match self.cas_slot(cur, (0, new_tid)) {
                Ok(()) => return (slab, cur.0, new_tid),
                Err(seen) => {
                    cur = seen;
                    crate::sync::retry_hint();
                }
            }
        }
    }

    /// Step 2 of a slab change (caller holds `lock`, slot detached with `tid`): publish
    /// `freelist` and then `slab`.
    #[inline]
    pub(crate) fn attach(&self, step: TidStep, slab: *mut Page, freelist: usize, tid: u64) {
        if self
            .cas_slot((0, tid), (freelist, step.next_tid(tid)))
            .is_err()
        {
            crate::os::abort_msg(&[
                "kmem: a CPU slot's {freelist, tid} changed while its slab was detached \
                 (slot protocol violated; memory may be corrupt)",
            ]);
        }
        self.slab.store(slab, Ordering::Release);
    }
}

/// A slot stopped by [`KmemCacheCpu::stop_remote`]: resumed when dropped.
pub(crate) struct SlotStop<'a>(&'a KmemCacheCpu);

impl Drop for SlotStop<'_> {
    fn drop(&mut self) {
        percpu::resume(&self.0.head);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tids_encode_their_slot_and_never_collide() {
        for nr in [1usize, 2, 3, 4, 5, 64, 100] {
            let step = TidStep::new(nr);
            assert!(step.0.is_power_of_two() && step.0 as usize >= nr);
            for slot in 0..nr {
                let mut t = step.init_tid(slot);
                for _ in 0..100 {
                    assert_eq!(step.slot_of(t), slot);
                    let n = step.next_tid(t);
                    assert_ne!(n, t);
                    t = n;
                }
            }
        }
    }

    /// Consecutive caches put their slots at different offsets in their pages (`meta_colour`):
    /// the slots' first lines, which every inline operation writes, do not all fall into one
    /// set of the L1 data cache.
    #[test]
    fn consecutive_caches_slots_sit_at_different_page_offsets() {
        let k = crate::Kmem::builder().cpus(2).nodes(1).build().unwrap();
        let caches: Vec<_> = (0..8)
            .map(|i| {
                let cfg = crate::CacheConfig::new().sheaf_capacity(30);
                k.create_cache(&format!("colour-{i}"), 64, cfg).unwrap()
            })
            .collect();
        let mut offsets: Vec<usize> = caches
            .iter()
            .map(|c| c.inner().cpu_slab as usize % crate::page::PAGE_SIZE)
            .collect();
        for c in &caches {
            // Inside the cache's own mapping, with its slots, nodes and barns.
            let inner = c.inner() as *const _ as usize;
            let end = c.inner().cpu_slab as usize + 2 * core::mem::size_of::<KmemCacheCpu>();
            assert!(end <= inner + c.inner().map_size);
            assert_eq!(c.inner().cpu_slab as usize % 64, 0);
        }
        offsets.sort_unstable();
        offsets.dedup();
        // Other tests create caches meanwhile, so the colours need not be consecutive; without
        // the colouring all eight would be equal.
        assert!(offsets.len() >= 4, "slot offsets {offsets:?}");
    }

    #[test]
    fn detach_then_attach_advances_tid_twice() {
        let step = TidStep::new(4);
        let c = KmemCacheCpu::new(step.init_tid(2), 2, false);
        let fake = 0x1000 as *mut Page;
        c.attach(step, fake, 0x5000, 2);
        assert_eq!(c.freelist_tid.load(), (0x5000, 6));
        assert_eq!(c.slab.load(Ordering::Relaxed), fake);
        let (slab, fl, tid) = c.detach(step);
        assert_eq!((slab, fl, tid), (fake, 0x5000, 10));
        assert!(c.slab.load(Ordering::Relaxed).is_null());
        assert_eq!(c.freelist_tid.load(), (0, 10));
    }
}
