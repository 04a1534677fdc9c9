//! The sheaf policy (Linux 7.0 `alloc_from_pcs`, `free_to_pcs`, `__pcs_replace_empty_main`,
//! `__pcs_replace_full_main`, `refill_sheaf`, `sheaf_flush_*`, `pcs_flush_all`): how the per-CPU
//! sheaves are used, traded at the barn, refilled from and flushed to the slabs.
//!
//! (Part of `impl CacheInner`, split by protocol: see `slub/mod.rs`. The mechanism — the
//! sequences and the locked-mode steps — is `cpu/percpu/array.rs` and `sheaf.rs`; this file
//! only calls it.)
//!
//! # Allocation
//!
//! Pop `main` (one sequence in the rseq mode; under the slot's sheaf lock, taken with
//! `try_lock`, in the locked mode). If it is empty, [`CacheInner::pcs_replace_empty_main`]:
//!
//! 1. the spare has objects: it becomes `main`, the empty main the spare;
//! 2. the barn has a full sheaf (`barn.rs`: the slot's own shard, traded under one lock for the
//!    spare if the slot has an empty one; else another shard of the node): it becomes `main`,
//!    the empty main the spare, and an empty sheaf the shard did not keep goes back to the
//!    pool (`BARN_GET`);
//! 3. else (`BARN_GET_FAIL`) an empty sheaf (the spare, one from the shard, or a new one from
//!    the pool) is taken out, the lock dropped, the sheaf refilled from the slabs in bulk
//!    (`alloc_bulk`: the cpu-slab machinery, `SHEAF_REFILL`), and installed on whatever slot the
//!    thread is on then (as `main` if that one is empty, else as the spare, else into the barn).
//!
//! then the pop is retried. Each `main` change is a replace (`percpu::replace_on_cpu`: a sequence
//! on the slot's CPU that commits only if `main` still has the count the slow path saw); a
//! thread that migrated meanwhile gets `Elsewhere` and simply retries on its new CPU. No stop,
//! no system call. A `main` goes to the barn only after the replace that took it out of the
//! slot has committed (until then a sequence may be using it); the allocation's trade hands
//! the barn the empty spare, which the slot's lock gives the caller outright.
//!
//! # Free
//!
//! Push onto `main` (the same way). If it is full, [`CacheInner::pcs_replace_full_main`]: the
//! spare has room → swap; no spare → an empty sheaf from the shard or the pool becomes `main`
//! and the full one the spare; both full → an empty sheaf (the slot's shard, another shard of
//! the node, or the pool) replaces `main`, and the full `main`, the caller's once that replace
//! has committed, goes to the barn (the slot's shard, else another shard of the node with
//! room: `BARN_PUT`); the node's shards at their limits (`BARN_PUT_FAIL`) → the spare is
//! flushed to the slabs (`free_bulk`, grouped by slab: `SHEAF_FLUSH`) with no lock held, and
//! comes back empty.
//!
//! # Bypass
//!
//! When a sheaf cannot be used — the slot's sheaf lock is busy (its holder may be descheduled:
//! never wait for it; a flush that took the slot's top holds it), the thread cannot run sequences in the
//! rseq mode, the allocation asks for a node, the object is of another node's slab, or refills
//! keep losing races — the operation takes the cpu-slab path (`slab_alloc_cpu`,
//! `do_slab_free`), which is correct for any object at any time. Nothing waits and nothing is
//! lost.

use super::barn::{BarnShard, STEAL_SCAN};
use super::cpu_slab::KmemCacheCpu;
use super::sheaf::Sheaf;
use super::CacheInner;
use crate::cpu::percpu::{self, Replace, Seq};
use crate::stats::StatItem::*;
use crate::sync::SpinGuard;
use core::ptr;

/// How many slow-path rounds an operation makes before it takes the cpu-slab path instead.
const PCS_TRIES: u32 = 4;

/// What a pop or push on the CPU's sheaf found.
enum Pcs<'a> {
    /// Done (pop: the object).
    Done(usize),
    /// `main` empty (pop) or full (push), on slot `c`.
    Slow(&'a KmemCacheCpu),
    /// Take the cpu-slab path.
    Bypass,
}

impl CacheInner {
    /// Slot `c`'s own barn shard (`barn.rs`).
    #[inline]
    pub(super) fn barn_of(&self, c: &KmemCacheCpu) -> &BarnShard {
        &self.barns()[self.slot_index(c)]
    }

    /// The other shards of slot `c`'s node a steal looks at: the next slots of the node after
    /// `c`, round the slot array, at most [`STEAL_SCAN`].
    fn barn_neighbours<'s>(&'s self, c: &KmemCacheCpu) -> impl Iterator<Item = &'s BarnShard> + 's {
        let shards = self.barns();
        let me = self.slot_index(c);
        let k = self.kmem();
        let nid = k.slot_node(me);
        let n = shards.len();
        (1..n)
            .map(move |d| (me + d) % n)
            .filter(move |&j| k.slot_node(j) == nid)
            .take(STEAL_SCAN)
            .map(move |j| &shards[j])
    }

    /// A full sheaf from another shard of slot `c`'s node (own shard empty).
    fn barn_steal_full(&self, c: &KmemCacheCpu) -> Option<*mut Sheaf> {
        self.barn_neighbours(c)
            .filter(|b| b.may_have_full())
            .find_map(|b| b.get_full())
    }

    /// Puts the full sheaf `s` (the caller's) into slot `c`'s own barn shard, else another of
    /// its node with room, else (the room its caller saw was taken meanwhile by another CPU)
    /// into its own shard past the limit, as a refill that lost its race does
    /// (`put_full_force`).
    ///
    /// # Safety
    /// The caller owns `s` and gives it up.
    unsafe fn barn_put_full(&self, c: &KmemCacheCpu, s: *mut Sheaf) {
        let own = self.barn_of(c);
        // SAFETY: ours (contract); a shard owns it on `Ok`.
        let Err(s) = (unsafe { own.put_full(s) }) else {
            return;
        };
        // SAFETY: as above.
        if let Err(s) = unsafe { self.barn_spill_full(c, s) } {
            // SAFETY: as above.
            unsafe { own.put_full_force(s) };
        }
    }

    /// Puts the full sheaf `s` (the caller's) into another shard of slot `c`'s node with room
    /// (own shard at its limit); `Err(s)` when none has.
    ///
    /// # Safety
    /// The caller owns `s`; a shard owns it on `Ok`.
    unsafe fn barn_spill_full(&self, c: &KmemCacheCpu, s: *mut Sheaf) -> Result<(), *mut Sheaf> {
        for b in self.barn_neighbours(c).filter(|b| b.may_take_full()) {
            // SAFETY: ours (contract); the shard owns it on `Ok`.
            if unsafe { b.put_full(s) }.is_ok() {
                return Ok(());
            }
        }
        Err(s)
    }

    /// The slot whose sheaf part is at `at` (an address `array_pop`/`array_push` returned).
    #[inline(always)]
    fn cpu_at_sheaves(&self, at: usize) -> &KmemCacheCpu {
        KmemCacheCpu::at_sheaves(at)
    }

    // -----------------------------------------------------------------------------------------
    // The fast paths
    // -----------------------------------------------------------------------------------------

    /// The allocation fast path of the rseq mode, alone, for a caller that has tested
    /// `PCS_FAST_ALLOC` in [`Self::pcs_mode`]: one pop from the CPU's `main` sheaf. `None` when the pop
    /// did not commit (empty, the top taken by a flush, no sequences): the caller then takes
    /// [`Self::alloc_from_pcs`], out of line. Kept this small so that a caller's fast path
    /// needs no callee-saved register: no stack frame on a pop that commits.
    #[inline(always)]
    pub(crate) fn pcs_pop_inline(&self) -> Option<*mut u8> {
        super::view::pop_from(&self.sheaf_slots)
    }

    /// The free fast path of the rseq mode, alone, for a caller that has tested
    /// `PCS_FAST_FREE` in [`Self::pcs_mode`]: one push onto the CPU's `main` sheaf. `false` when the push
    /// did not commit (full, the top taken by a flush, a double free, no sequences): the caller then takes the
    /// whole path ([`Self::free_to_pcs`] or `do_slab_free`), out of line, which redoes the push
    /// and handles each case.
    #[inline(always)]
    pub(crate) fn pcs_push_inline(&self, obj: usize) -> bool {
        super::view::push_onto(&self.sheaf_slots, obj)
    }

    /// [`Self::alloc_from_pcs`] out of line: the rseq mode's allocation after its inline pop did
    /// not commit.
    #[inline(never)]
    pub(super) fn alloc_from_pcs_slow(&self) -> *mut u8 {
        self.alloc_from_pcs()
    }

    /// `alloc_from_pcs`, then the cpu-slab path if the sheaves cannot serve (inline: the locked
    /// mode's fast path).
    #[inline(always)]
    pub(super) fn alloc_from_pcs(&self) -> *mut u8 {
        let mut tries = 0;
        loop {
            match self.pcs_pop() {
                Pcs::Done(obj) => return obj as *mut u8,
                Pcs::Slow(c) if tries < PCS_TRIES => {
                    tries += 1;
                    if !self.pcs_replace_empty_main(c) {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.slab_alloc_bypass()
    }

    /// One pop from the CPU's `main` sheaf.
    #[inline(always)]
    fn pcs_pop(&self) -> Pcs<'_> {
        if self.rseq {
            loop {
                // SAFETY: every `main` of this cache's slots is a live sheaf of this cache (or null).
                let (st, at, obj) = unsafe { percpu::array_pop(&self.sheaf_slots) };
                return match st {
                    Seq::Done => {
                        self.cpu_at_sheaves(at).stat(AllocPcs);
                        Pcs::Done(obj)
                    }
                    Seq::Empty => Pcs::Slow(self.cpu_at_sheaves(at)),
                    Seq::Unavailable if percpu::thread_can_sequence() => continue,
                    _ => Pcs::Bypass,
                };
            }
        }
        let c = self.this_cpu();
        let Some(g) = c.sheaves.lock.try_lock() else {
            return Pcs::Bypass;
        };
        if cfg!(kmem_mutant = "sheaf_locked_pop_unlocked") {
            // Planted bug (loom-tests): the lock is dropped before the pop it guards.
            drop(g);
            let (st, obj) = c.sheaves.head.pop_locked(self.sheaf_slots.geo);
            return if st == Seq::Done {
                Pcs::Done(obj)
            } else {
                Pcs::Slow(c)
            };
        }
        let (st, obj) = c.sheaves.head.pop_locked(self.sheaf_slots.geo);
        drop(g);
        if st == Seq::Done {
            c.stat(AllocPcs);
            Pcs::Done(obj)
        } else {
            Pcs::Slow(c)
        }
    }

    /// `free_to_pcs`: `true` if `obj` went into a sheaf; `false`: the caller frees it to its
    /// slab (`do_slab_free`).
    #[inline(always)]
    pub(super) fn free_to_pcs(&self, obj: usize) -> bool {
        let mut tries = 0;
        loop {
            match self.pcs_push(obj) {
                Pcs::Done(_) => return true,
                Pcs::Slow(c) if tries < PCS_TRIES => {
                    tries += 1;
                    if !self.pcs_replace_full_main(c) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }

    /// One push onto the CPU's `main` sheaf.
    #[inline(always)]
    fn pcs_push(&self, obj: usize) -> Pcs<'_> {
        let st = if self.rseq {
            loop {
                // SAFETY: as in `pcs_pop`; `obj` is the caller's.
                let (st, at) = unsafe { percpu::array_push(&self.sheaf_slots, obj) };
                match st {
                    Seq::Unavailable if percpu::thread_can_sequence() => continue,
                    Seq::Unavailable => return Pcs::Bypass,
                    _ => break (st, self.cpu_at_sheaves(at)),
                }
            }
        } else {
            let c = self.this_cpu();
            let Some(g) = c.sheaves.lock.try_lock() else {
                return Pcs::Bypass;
            };
            let st = c.sheaves.head.push_locked(self.sheaf_slots.geo, obj);
            drop(g);
            (st, c)
        };
        match st {
            (Seq::Done, c) => {
                c.stat(FreePcs);
                Pcs::Done(0)
            }
            (Seq::Full, c) => Pcs::Slow(c),
            (Seq::DoubleFree, _) => {
                self.double_free(obj, "it is already the last object of its CPU sheaf")
            }
            _ => Pcs::Bypass,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Changing `main`
    // -----------------------------------------------------------------------------------------

    /// Installs sheaf `new` (the caller's, its count in it; null: none) as slot `c`'s `main`
    /// if the slot's top is still `old_top` (the caller holds `c`'s sheaf lock). In the rseq
    /// mode a sequence on `c`'s CPU; in the locked mode a store (the lock excludes the fast
    /// paths). On `Done` the old `main` is the caller's, with its count written into it.
    fn replace_main(&self, c: &KmemCacheCpu, old_top: usize, new: *mut Sheaf) -> Replace {
        let slot = &c.sheaves.head;
        let new_top = Sheaf::top(new);
        let r = if !self.rseq {
            slot.set_top_stopped(new_top);
            Replace::Done
        } else {
            percpu::replace_on_cpu(slot, c.index(), old_top, new_top)
        };
        if r == Replace::Done {
            let (old, n) = self.sheaf_slots.geo.split(old_top);
            if !old.is_null() {
                // SAFETY: the replace took the old sheaf out of the slot at this top: it is ours, and the top it had is its count.
                unsafe { (*(old as *mut Sheaf)).set_len(n) };
            }
        }
        r
    }

    /// The count of a sheaf no slot holds (0 for null).
    fn len_of(s: *mut Sheaf) -> usize {
        if s.is_null() {
            0
        } else {
            // SAFETY: sheaves live as long as the cache; the count is an atomic.
            unsafe { (*s).len() }
        }
    }

    /// An empty sheaf for slot `c`: from its barn shard, else another shard of its node (a
    /// CPU that frees what another allocates gets back the empty sheaves the other trades in),
    /// else from the pool (`SHEAF_ALLOC`).
    fn get_empty_sheaf(&self, c: &KmemCacheCpu) -> Option<*mut Sheaf> {
        if let Some(s) = core::iter::once(self.barn_of(c))
            .chain(self.barn_neighbours(c))
            .filter(|b| b.may_have_empty())
            .find_map(|b| b.get_empty())
        {
            return Some(s);
        }
        let s = self.pool.alloc(self.kmem().node_pages(0))?;
        c.stat(SheafAlloc);
        Some(s)
    }

    /// Returns an empty sheaf the caller owns to `c`'s barn, or to the pool if the barn keeps
    /// enough (`SHEAF_FREE`). A sheaf that still holds objects here means a protocol bug (a
    /// `main` replaced while a fast path filled it): kmem aborts rather than lose them.
    fn put_empty_sheaf(&self, c: &KmemCacheCpu, s: *mut Sheaf) {
        let n = Self::len_of(s);
        if n != 0 {
            let n = crate::os::Num::dec(n as u64);
            crate::os::abort_msg(&[
                "kmem: cache \"",
                self.name(),
                "\": a sheaf put back as empty holds ",
                n.as_str(),
                " object(s) (sheaf protocol violated)",
            ]);
        }
        // SAFETY: the caller owns `s` (empty) and gives it up.
        if let Err(s) = unsafe { self.barn_of(c).put_empty(s) } {
            c.stat(SheafFree);
            // SAFETY: from this cache's pool, owned, empty.
            unsafe { self.pool.free(s) };
        }
    }

    /// `__pcs_replace_empty_main`: slot `c`'s `main` was found empty. `true`: retry the pop;
    /// `false`: take the cpu-slab path.
    #[cold]
    #[inline(never)]
    fn pcs_replace_empty_main(&self, c: &KmemCacheCpu) -> bool {
        let Some(g) = c.sheaves.lock.try_lock() else {
            return false;
        };
        let sl = &c.sheaves;
        let (top, main, n) = sl.main(self.sheaf_slots.geo);
        let spare = sl.spare(&g);
        if n != 0 {
            return true; // a free refilled it meanwhile
        }
        if !spare.is_null() && Self::len_of(spare) > 0 {
            if self.replace_main(c, top, spare) == Replace::Done {
                sl.set_spare(&g, main);
                c.stat(SheafSwap);
            }
            return true;
        }
        // Trade at the barn: the spare (null or empty, ours under the lock) goes in, a full
        // sheaf comes out, under one shard lock; else a full sheaf from another shard.
        sl.set_spare(&g, ptr::null_mut());
        let own = self.barn_of(c);
        let (full, left) = if own.may_have_full() {
            // SAFETY: `spare` is null or empty (tested above) and ours: taken out of the slot.
            unsafe { own.exchange_empty(spare) }
        } else {
            (None, spare)
        };
        // Without a trade the barn kept nothing of the spare: `left` is `spare`.
        if let Some(full) = full.or_else(|| self.barn_steal_full(c)) {
            c.stat(BarnGet);
            if self.replace_main(c, top, full) == Replace::Done {
                // The old main (empty, or none) and what the barn left of the spare: one
                // becomes the spare, the other goes back.
                let (keep, give) = if main.is_null() {
                    (left, main)
                } else {
                    (main, left)
                };
                sl.set_spare(&g, keep);
                if !give.is_null() {
                    self.put_empty_sheaf(c, give);
                }
            } else {
                // `main` changed (a free pushed, or the thread migrated): the full sheaf
                // waits as the spare, for the next pop that finds `main` empty.
                sl.set_spare(&g, full);
                if !left.is_null() {
                    self.put_empty_sheaf(c, left);
                }
            }
            return true;
        }
        sl.set_spare(&g, spare);
        c.stat(BarnGetFail);
        // Refill an empty sheaf from the slabs, with no sheaf lock held.
        let empty = if !spare.is_null() {
            sl.set_spare(&g, ptr::null_mut());
            spare
        } else {
            match self.get_empty_sheaf(c) {
                Some(s) => s,
                None => return false,
            }
        };
        let want = sl.next_refill(&g, self.pool.capacity);
        drop(g);
        // SAFETY: `empty` is ours (taken out of the slot, the barn or the pool) and empty; `want` is at least 1.
        let got = unsafe { self.refill_sheaf(c, empty, want) };
        if got == 0 {
            // Out of memory: the cpu-slab path will say so.
            self.put_empty_sheaf(c, empty);
            return false;
        }
        // SAFETY: `empty` is ours and now holds objects.
        unsafe { self.install_full_sheaf(empty) };
        true
    }

    /// Installs a sheaf the caller refilled on the slot of the CPU the thread is on now: as
    /// `main` if that one is empty, else as the spare, else into the barn.
    ///
    /// # Safety
    /// The caller owns `full` and gives it up.
    unsafe fn install_full_sheaf(&self, full: *mut Sheaf) {
        let c = self.this_cpu();
        let barn = self.barn_of(c);
        let Some(g) = c.sheaves.lock.try_lock() else {
            // SAFETY: ours; given to the slot's shard.
            unsafe { barn.put_full_force(full) };
            c.stat(BarnPut);
            return;
        };
        let sl = &c.sheaves;
        let (top, main, n) = sl.main(self.sheaf_slots.geo);
        if cfg!(kmem_mutant = "sheaf_install_over_main") || n == 0 {
            // Planted bug (loom-tests): installs over a main that frees refilled meanwhile
            // (its objects are lost with it).
            if self.replace_main(c, top, full) == Replace::Done {
                if !main.is_null() {
                    if cfg!(kmem_mutant = "sheaf_install_over_main") {
                        // SAFETY: (the planted bug) the old main is treated as empty.
                        unsafe { (*main).set_len(0) };
                    }
                    if sl.spare(&g).is_null() {
                        sl.set_spare(&g, main);
                    } else {
                        self.put_empty_sheaf(c, main);
                    }
                }
                return;
            }
        }
        let spare = sl.spare(&g);
        if spare.is_null() {
            sl.set_spare(&g, full);
        } else if Self::len_of(spare) == 0 {
            sl.set_spare(&g, full);
            drop(g);
            self.put_empty_sheaf(c, spare);
        } else {
            drop(g);
            // SAFETY: ours; given to the barn.
            unsafe { barn.put_full_force(full) };
            c.stat(BarnPut);
        }
    }

    /// `__pcs_replace_full_main`: slot `c`'s `main` was found full (or missing). `true`: retry
    /// the push; `false`: free to the slab.
    #[cold]
    #[inline(never)]
    fn pcs_replace_full_main(&self, c: &KmemCacheCpu) -> bool {
        let Some(g) = c.sheaves.lock.try_lock() else {
            return false;
        };
        let cap = self.pool.capacity;
        let sl = &c.sheaves;
        let (top, main, n) = sl.main(self.sheaf_slots.geo);
        let spare = sl.spare(&g);
        if !main.is_null() && n < cap {
            return true; // an allocation made room meanwhile
        }
        if !spare.is_null() && Self::len_of(spare) < cap {
            if self.replace_main(c, top, spare) == Replace::Done {
                sl.set_spare(&g, main);
                c.stat(SheafSwap);
            }
            return true;
        }
        if main.is_null() || spare.is_null() {
            // A slot with room for one more sheaf: install an empty one as main.
            let Some(empty) = self.get_empty_sheaf(c) else {
                return false;
            };
            if self.replace_main(c, top, empty) == Replace::Done {
                if !main.is_null() {
                    sl.set_spare(&g, main);
                }
            } else {
                self.put_empty_sheaf(c, empty);
            }
            return true;
        }
        // Main and spare are full: if the barn seems to have room (the slot's shard, or another
        // of the node's: their counts, read without their locks), an empty sheaf (from the
        // shard, another shard or the pool) replaces `main`, and the full `main`, ours once
        // the replace has committed, goes to the barn; the spare stays. (Sending the spare
        // and keeping `main` instead, one shard lock fewer, kept 1.1 MiB more after kmem-bench's
        // `idle`: docs/performance.md, "Barn shards".)
        let own = self.barn_of(c);
        if own.may_take_full() || self.barn_neighbours(c).any(|b| b.may_take_full()) {
            if cfg!(kmem_mutant = "barn_trades_main") {
                // Planted bug (loom-tests): the full `main` goes to the barn before the replace
                // that takes it out of the slot has committed, so a pop on the slot's CPU in
                // between leaves it both in the slot and in the barn.
                // SAFETY: (the planted bug) `main` is treated as the caller's.
                unsafe { self.barn_put_full(c, main) };
                c.stat(BarnPut);
                let Some(empty) = self.get_empty_sheaf(c) else {
                    return false;
                };
                if self.replace_main(c, top, empty) != Replace::Done {
                    self.put_empty_sheaf(c, empty);
                }
                return true;
            }
            let Some(empty) = self.get_empty_sheaf(c) else {
                return false; // no memory for a sheaf: free to the slab
            };
            if self.replace_main(c, top, empty) == Replace::Done {
                // SAFETY: the replace took the full `main` out of the slot: ours.
                unsafe { self.barn_put_full(c, main) };
                c.stat(BarnPut);
            } else {
                // An allocation made room in `main` (or the thread migrated).
                self.put_empty_sheaf(c, empty);
            }
            return true;
        }
        // The barn keeps enough full sheaves: flush the spare to the slabs, keep it empty.
        c.stat(BarnPutFail);
        sl.set_spare(&g, ptr::null_mut());
        drop(g);
        // SAFETY: the spare is ours now (taken out under the lock).
        unsafe { self.sheaf_flush(c, spare) };
        let c2 = self.this_cpu();
        match c2.sheaves.lock.try_lock() {
            Some(g2) if c2.sheaves.spare(&g2).is_null() => c2.sheaves.set_spare(&g2, spare),
            _ => self.put_empty_sheaf(c2, spare),
        }
        true
    }

    // -----------------------------------------------------------------------------------------
    // Refill and flush
    // -----------------------------------------------------------------------------------------

    /// `refill_sheaf`: adds up to `want` objects from the slabs (`alloc_bulk`) to `s`, within
    /// its capacity ([`SheafSlot::next_refill`](super::sheaf::SheafSlot::next_refill) says
    /// how many); returns how many it got (fewer only when out of memory).
    ///
    /// # Safety
    /// The caller owns `s`.
    unsafe fn refill_sheaf(&self, c: &KmemCacheCpu, s: *mut Sheaf, want: usize) -> usize {
        // SAFETY: ours (contract).
        let sheaf = unsafe { &*s };
        let n = sheaf.len();
        // SAFETY: ours (contract): no one else reads or writes its free cells.
        let cells = unsafe { sheaf.free_cells() };
        let take = want.min(cells.len());
        let got = self.alloc_bulk(&mut cells[..take]);
        sheaf.set_len(n + got);
        c.stat(SheafRefill);
        got
    }

    /// `sheaf_flush_unused`: gives every object of `s` back to its slab (`free_bulk`: grouped
    /// by slab, one CAS per group) and leaves `s` empty.
    ///
    /// # Safety
    /// The caller owns `s`.
    pub(super) unsafe fn sheaf_flush(&self, c: &KmemCacheCpu, s: *mut Sheaf) {
        // SAFETY: ours (contract).
        let sheaf = unsafe { &*s };
        if sheaf.len() == 0 {
            return;
        }
        // SAFETY: ours; every object in it is an allocated object of this cache, freed once here.
        unsafe { self.free_bulk(sheaf.objects()) };
        sheaf.set_len(0);
        c.stat(SheafFlush);
    }

    /// Takes slot `c`'s sheaves out (in the rseq mode by taking the slot's top, which fences its
    /// CPU: the caller may run anywhere) and returns them `(main, spare)`, leaving the slot with
    /// none. The caller holds `c`'s sheaf lock.
    fn pcs_take_locked(&self, c: &KmemCacheCpu, g: &SpinGuard<'_, ()>) -> (*mut Sheaf, *mut Sheaf) {
        let sl = &c.sheaves;
        let top = if self.rseq && !cfg!(kmem_mutant = "sheaf_flush_without_stop") {
            percpu::take_array(&sl.head, c.index())
        } else {
            // The locked mode (the lock excludes the fast paths), or the planted bug
            // (loom-tests): a read and a store from another CPU, which a sequence in flight
            // there overwrites.
            let top = sl.head.top();
            sl.head.set_top_stopped(0);
            top
        };
        let main = sl.own_main(self.sheaf_slots.geo, top);
        let spare = sl.spare(g);
        sl.set_spare(g, ptr::null_mut());
        (main, spare)
    }

    /// The decay's CPU-sheaf trim of slot `slot`, if the thread still runs on its CPU: if the
    /// slot's sheaves did not change since the previous trim of this slot (a cache that went
    /// idle on this CPU), its spare and `main` go back to their slabs (`sheaf_flush`) and the slot
    /// keeps no sheaf, its next refill starting small. Objects in a sheaf keep their slabs, so
    /// an idle cache's two sheaves per CPU would otherwise hold up to twice the capacity of
    /// slabs for good; the barn's trim ([`Self::trim_barns`]) does the same for the barns.
    /// Returns the objects flushed.
    ///
    /// No stop and no fence: `main` is taken with the slow path's own replace, a sequence on
    /// this CPU that commits only if the slot's top is still the one read under the sheaf lock
    /// (a fast path that pushed or popped meanwhile makes it fail, and `main` stays); a thread
    /// that migrated meanwhile fails it too. The spare is only touched under the lock.
    pub(crate) fn trim_cpu_sheaves(&self, slot: usize) -> usize {
        if self.pool.capacity == 0 {
            return 0;
        }
        let c = self.this_cpu();
        if self.slot_index(c) != slot {
            // The thread migrated since it claimed `slot`'s trim: this slot's is not due.
            return 0;
        }
        let sl = &c.sheaves;
        let Some(g) = sl.lock.try_lock() else {
            return 0;
        };
        let (top, main, n) = sl.main(self.sheaf_slots.geo);
        let spare = sl.spare(&g);
        if !sl.unchanged_since_last_look(&g, top, spare) || (n == 0 && Self::len_of(spare) == 0) {
            return 0;
        }
        sl.set_spare(&g, ptr::null_mut());
        let main = if !main.is_null()
            && (cfg!(kmem_mutant = "sheaf_trim_ignores_top")
                || self.replace_main(c, top, ptr::null_mut()) == Replace::Done)
        {
            if cfg!(kmem_mutant = "sheaf_trim_ignores_top") {
                // Planted bug (loom-tests): takes `main` with the count read under the lock,
                // whatever a fast path did since (its pushes are lost, its pops handed out
                // again).
                sl.head.set_top_stopped(0);
                // SAFETY: (the planted bug) the sheaf is treated as taken at `top`.
                unsafe { (*main).set_len(n) };
            }
            main
        } else {
            ptr::null_mut()
        };
        sl.reset_refill(&g);
        // Seen as it is left: no sheaf (`main` too if it was taken).
        let left = if main.is_null() { top } else { 0 };
        sl.record_look(&g, left, ptr::null_mut());
        drop(g);
        let mut flushed = 0;
        for s in [spare, main] {
            if !s.is_null() {
                flushed += Self::len_of(s);
                // SAFETY: taken out of the slot under its lock (the spare) or by a committed replace (`main`): ours.
                unsafe { self.sheaf_flush(c, s) };
                self.put_empty_sheaf(c, s);
            }
        }
        flushed
    }

    /// `pcs_flush_all` + the barns: every object in a sheaf goes back to its slab, every
    /// sheaf back to the pool (flush, shrink, destroy).
    pub(crate) fn flush_sheaves(&self) {
        if self.pool.capacity == 0 {
            return;
        }
        for i in 0..self.nr_cpus {
            let c = self.cpu(i);
            let (main, spare) = {
                let g = c.sheaves.lock.lock();
                self.pcs_take_locked(c, &g)
            };
            for s in [main, spare] {
                if !s.is_null() {
                    // SAFETY: taken out of the slot: ours.
                    unsafe {
                        self.sheaf_flush(c, s);
                        self.pool.free(s);
                    }
                }
            }
        }
        for barn in self.barns() {
            let (full, empty) = barn.take_all();
            for mut s in [full, empty] {
                while !s.is_null() {
                    // SAFETY: taken off the shard: ours.
                    let next = unsafe { (*s).next.get() };
                    // SAFETY: as above.
                    unsafe {
                        self.sheaf_flush(self.cpu(0), s);
                        self.pool.free(s);
                    }
                    s = next;
                }
            }
        }
    }

    /// The objects in slot `i`'s sheaves, counted with the slot's top taken (exact at the
    /// moment), for `slabinfo`.
    pub(super) fn pcs_count(&self, i: usize) -> usize {
        let c = self.cpu(i);
        let sl = &c.sheaves;
        let g = sl.lock.lock();
        let geo = self.sheaf_slots.geo;
        let main = if self.rseq {
            let top = percpu::take_array(&sl.head, i);
            let n = geo.split(top).1;
            percpu::put_array(&sl.head, top);
            n
        } else {
            sl.main(geo).2
        };
        main + Self::len_of(sl.spare(&g))
    }
}
