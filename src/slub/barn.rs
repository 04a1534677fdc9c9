//! The barn (Linux 7.0, `struct node_barn`): per node, a stock of full and empty sheaves that CPU
//! slots trade with, so a CPU that only frees and one that only allocates exchange whole sheaves
//! instead of going to the slabs object by object — kept here in one *shard* per CPU slot.
//!
//! ```text
//!   node n's barn = the shards of the slots on node n (one BarnShard per slot, own lock, own lines)
//!
//!     shard of slot 0            shard of slot 1            ...
//!       full  ─▶ sheaf ─▶ ...      full  ─▶ sheaf ─▶ ...      at most `full_max` each
//!       empty ─▶ sheaf ─▶ ...      empty ─▶ sheaf ─▶ ...      at most `empty_max` each
//! ```
//!
//! # Why shards
//!
//! The kernel's barn is one list pair under one spin lock per node. Measured here, that lock's
//! cache line moving between the CPUs of a node cost two threads that each allocate 1000
//! objects and free them (kmem-bench `batch`) a fifth of their time: every trade of a sheaf
//! took it up to three times, each time from the other CPU. In kmem a slot trades with its
//! *own* shard first — a line only its CPU writes while that CPU's threads keep their objects
//! to themselves — and only when that shard has no full sheaf (allocation) or no room
//! (free) with the other shards of its node ([`STEAL_SCAN`] of them at most, skipping those
//! whose counts, read without their locks, say they cannot help). Empty sheaves flow the same
//! way back: a CPU that needs one and has none in its shard takes one from another shard of
//! its node before it carves a new one from the cache's pool (whose lock every CPU shares). So the barn still moves
//! sheaves from CPUs that free to CPUs that allocate (a producer's full sheaves overflow its
//! shard into the others, where a consumer finds them), and what a CPU freed is what it
//! allocates next while it fits in its shard (its objects are in its caches).
//!
//! The node's bound on full sheaves (the objects a barn holds) stays what one barn kept on small
//! machines: each shard keeps `ceil(MAX_FULL_SHEAVES / slots on the node)` full sheaves (at
//! least [`MIN_SHARD_FULL`]): 10 per shard, 20 per node, on two CPUs. On a node of more than
//! five CPUs the minimum makes the node's stock grow with its CPUs (4 full sheaves each), so
//! that a CPU's own trades keep the locality they are for; the decay's barn trim gives full
//! sheaves of an idle cache back to the slabs whatever their number. Each shard keeps up to
//! [`MAX_EMPTY_SHEAVES`] empty sheaves: an empty sheaf holds no object, and one the barn does
//! not keep goes to the cache's pool, whose memory the cache keeps until `shrink` all the
//! same, so the limit only decides where an empty sheaf waits — and in its CPU's shard it
//! waits without the pool's lock, shared by every CPU (a thread allocating and freeing
//! batches of 1000 objects hands its shard six or seven empty sheaves per batch).
//!
//! # Trades
//!
//! An allocation's trade is one lock: [`BarnShard::exchange_empty`] hands in an empty sheaf
//! (the slot's spare, which its sheaf lock gives the caller outright) and takes a full one
//! (`barn_replace_empty_sheaf`). A free's trade is two short ones on the same shard: an empty
//! sheaf out ([`BarnShard::get_empty`]), then, once the replace that swapped it in for the full
//! `main` has committed, that `main` in ([`BarnShard::put_full`]) — never before, since a
//! sequence may still be using `main` until then (`pcs.rs`). Handing the barn the full spare
//! instead, in one lock, measured no faster and kept 1.1 MiB more after kmem-bench's `idle`
//! (docs/performance.md, "Barn shards").
//!
//! # Locks
//!
//! A shard's lock is held only to link or unlink sheaves (or to take a whole list for shrink):
//! no other lock is taken under it, nothing under it can fault or call out, and no path holds
//! two shard locks at once. Lock order: a CPU slot's sheaf lock may be held when a shard lock
//! is taken (any shard of the node), never the reverse. The counts a stealer reads without
//! the lock are hints, rewritten under it after every change: a stale one only makes a steal
//! skip a shard that could have helped, or lock one that cannot.

use super::sheaf::Sheaf;
use crate::sync::{AtomicUsize, Ordering, SpinLock};
use core::ptr;

/// Full sheaves a node's barn keeps at most, on a node of two CPUs (the kernel's 10, twice: a
/// thread that allocates 1000 objects of a few hundred bytes and frees them keeps its batch
/// in sheaves, docs/performance.md, "Deeper barns").
pub(crate) const MAX_FULL_SHEAVES: usize = 20;
/// Empty sheaves a shard keeps at most (the kernel's 10 per barn).
pub(crate) const MAX_EMPTY_SHEAVES: usize = 10;
/// The fewest full sheaves a shard keeps, however many CPUs share the node.
pub(crate) const MIN_SHARD_FULL: usize = 4;
/// How many other shards of its node a slot looks at when its own cannot serve.
pub(crate) const STEAL_SCAN: usize = 8;

/// One CPU slot's shard of its node's barn (module docs).
#[repr(C, align(128))]
pub(crate) struct BarnShard {
    pub(crate) lists: SpinLock<BarnLists>,
    /// `nr_full` and `nr_empty` as of the last change (stored under the lock; read without it
    /// by stealers: hints).
    hint_full: AtomicUsize,
    hint_empty: AtomicUsize,
    /// This shard's limits (constant).
    full_max: usize,
    empty_max: usize,
}

/// A shard's two lists, linked through [`Sheaf::next`].
pub(crate) struct BarnLists {
    full: *mut Sheaf,
    nr_full: usize,
    empty: *mut Sheaf,
    nr_empty: usize,
}

// SAFETY: the sheaves on the lists are owned by the shard and only touched under its lock.
unsafe impl Send for BarnLists {}

impl BarnLists {
    fn push(head: &mut *mut Sheaf, n: &mut usize, s: *mut Sheaf) {
        // SAFETY: the caller hands `s` to the shard (it owns it); linked under the shard lock.
        unsafe { (*s).next.set(*head) };
        *head = s;
        *n += 1;
    }

    fn pop(head: &mut *mut Sheaf, n: &mut usize) -> Option<*mut Sheaf> {
        let s = *head;
        if s.is_null() {
            return None;
        }
        // SAFETY: on the list, which the shard lock guards.
        *head = unsafe { (*s).next.get() };
        *n -= 1;
        Some(s)
    }
}

/// The limits of each shard of a node with `slots` CPU slots: `(full, empty)` (module docs).
pub(crate) fn shard_limits(slots: usize) -> (usize, usize) {
    let slots = slots.max(1);
    (
        MAX_FULL_SHEAVES.div_ceil(slots).max(MIN_SHARD_FULL),
        MAX_EMPTY_SHEAVES,
    )
}

impl BarnShard {
    /// An empty shard keeping at most `full_max` full and `empty_max` empty sheaves.
    pub(crate) fn new(full_max: usize, empty_max: usize) -> Self {
        BarnShard {
            lists: SpinLock::new(
                "kmem barn lock",
                BarnLists {
                    full: ptr::null_mut(),
                    nr_full: 0,
                    empty: ptr::null_mut(),
                    nr_empty: 0,
                },
            ),
            hint_full: AtomicUsize::new(0),
            hint_empty: AtomicUsize::new(0),
            full_max,
            empty_max,
        }
    }

    /// Rewrites the hints after a change (the caller holds the lock: `l` is its data).
    fn publish(&self, l: &BarnLists) {
        self.hint_full.store(l.nr_full, Ordering::Relaxed);
        self.hint_empty.store(l.nr_empty, Ordering::Relaxed);
    }

    /// Whether the shard seemed to hold a full sheaf at its last change (no lock: a hint).
    #[inline]
    pub(crate) fn may_have_full(&self) -> bool {
        self.hint_full.load(Ordering::Relaxed) != 0
    }

    /// Whether the shard seemed to have room for a full sheaf at its last change (a hint).
    #[inline]
    pub(crate) fn may_take_full(&self) -> bool {
        self.hint_full.load(Ordering::Relaxed) < self.full_max
    }

    /// Whether the shard seemed to hold an empty sheaf at its last change (a hint).
    #[inline]
    pub(crate) fn may_have_empty(&self) -> bool {
        self.hint_empty.load(Ordering::Relaxed) != 0
    }

    /// Takes a full sheaf (`barn_get_full_sheaf`).
    pub(crate) fn get_full(&self) -> Option<*mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        let s = BarnLists::pop(&mut l.full, &mut l.nr_full);
        self.publish(l);
        s
    }

    /// Takes a full sheaf and, if it got one, keeps `give` (an empty sheaf the caller owns, or
    /// null) on the empty list if there is room (`barn_replace_empty_sheaf`): one lock for both.
    /// Returns the full sheaf (if any) and what of `give` the shard did not keep (`give` itself
    /// when no full sheaf was there or the empty list is at its limit; null otherwise).
    ///
    /// # Safety
    /// `give` is null or an empty sheaf the caller owns; the shard owns it if it is not
    /// returned.
    pub(crate) unsafe fn exchange_empty(
        &self,
        give: *mut Sheaf,
    ) -> (Option<*mut Sheaf>, *mut Sheaf) {
        let mut l = self.lists.lock();
        let l = &mut *l;
        let Some(full) = BarnLists::pop(&mut l.full, &mut l.nr_full) else {
            return (None, give);
        };
        let left = if !give.is_null() && l.nr_empty < self.empty_max {
            BarnLists::push(&mut l.empty, &mut l.nr_empty, give);
            ptr::null_mut()
        } else {
            give
        };
        self.publish(l);
        (Some(full), left)
    }

    /// Takes an empty sheaf (`barn_get_empty_sheaf`).
    pub(crate) fn get_empty(&self) -> Option<*mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        let s = BarnLists::pop(&mut l.empty, &mut l.nr_empty);
        self.publish(l);
        s
    }

    /// Puts a full sheaf if the shard has room (`barn_put_full_sheaf` with the limit); gives
    /// it back otherwise.
    ///
    /// # Safety
    /// The caller owns `s` and gives it up on `Ok`.
    pub(crate) unsafe fn put_full(&self, s: *mut Sheaf) -> Result<(), *mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        if l.nr_full >= self.full_max {
            return Err(s);
        }
        BarnLists::push(&mut l.full, &mut l.nr_full, s);
        self.publish(l);
        Ok(())
    }

    /// Puts a full (or partly full) sheaf, whatever the limit (`barn_put_full_sheaf`): only a
    /// thread that lost a race installing a sheaf it has just refilled does, as the kernel's.
    ///
    /// # Safety
    /// The caller owns `s` and gives it up.
    pub(crate) unsafe fn put_full_force(&self, s: *mut Sheaf) {
        let mut l = self.lists.lock();
        let l = &mut *l;
        BarnLists::push(&mut l.full, &mut l.nr_full, s);
        self.publish(l);
    }

    /// Puts an empty sheaf if the shard keeps fewer than its limit; gives it back otherwise
    /// (the caller returns it to the pool).
    ///
    /// # Safety
    /// The caller owns `s` (empty) and gives it up on `Ok`.
    pub(crate) unsafe fn put_empty(&self, s: *mut Sheaf) -> Result<(), *mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        if l.nr_empty >= self.empty_max {
            return Err(s);
        }
        BarnLists::push(&mut l.empty, &mut l.nr_empty, s);
        self.publish(l);
        Ok(())
    }

    /// Takes the full list whole (the decay's barn trim, [`CacheInner::trim_barns`]), linked
    /// through `next`.
    ///
    /// [`CacheInner::trim_barns`]: super::CacheInner::trim_barns
    pub(crate) fn take_full(&self) -> *mut Sheaf {
        let mut l = self.lists.lock();
        let out = l.full;
        if !cfg!(kmem_mutant = "barn_trim_without_take") {
            // Planted bug (loom-tests): the sheaves stay on the barn while the trim flushes
            // them, so a slow path can take one and hand out objects the trim gives back.
            l.full = ptr::null_mut();
            l.nr_full = 0;
        }
        self.publish(&l);
        out
    }

    /// Takes both lists whole (shrink, destroy): `(full, empty)`, each linked through `next`.
    pub(crate) fn take_all(&self) -> (*mut Sheaf, *mut Sheaf) {
        let mut l = self.lists.lock();
        let out = (l.full, l.empty);
        l.full = ptr::null_mut();
        l.empty = ptr::null_mut();
        l.nr_full = 0;
        l.nr_empty = 0;
        self.publish(&l);
        out
    }

    /// `(full sheaves, empty sheaves, objects in the full ones)`, under the lock.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let l = self.lists.lock();
        let mut objs = 0;
        let mut s = l.full;
        while !s.is_null() {
            // SAFETY: on the list the held lock guards.
            unsafe {
                objs += (*s).len();
                s = (*s).next.get();
            }
        }
        (l.nr_full, l.nr_empty, objs)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::cpu::percpu::ArrayHead;
    use crate::sync::Cell;

    fn sheaf() -> *mut Sheaf {
        Box::into_raw(Box::new(Sheaf {
            head: ArrayHead::new(4),
            next: Cell::new(ptr::null_mut()),
            _pad: 0,
        }))
    }

    fn free(s: *mut Sheaf) {
        // SAFETY: from `sheaf()`, off every list, freed once.
        drop(unsafe { Box::from_raw(s) });
    }

    /// The per-shard limits split the node's bound on full sheaves among its slots (at least
    /// the minimum each on large nodes); every shard keeps the empty limit.
    #[test]
    fn shard_limits_split_the_node_bound() {
        assert_eq!(shard_limits(1), (MAX_FULL_SHEAVES, MAX_EMPTY_SHEAVES));
        assert_eq!(shard_limits(2), (10, MAX_EMPTY_SHEAVES));
        assert_eq!(shard_limits(3), (7, MAX_EMPTY_SHEAVES));
        assert_eq!(shard_limits(64), (MIN_SHARD_FULL, MAX_EMPTY_SHEAVES));
        assert_eq!(shard_limits(0), shard_limits(1));
    }

    /// The trade and the puts respect both limits; every sheaf put comes back exactly once;
    /// the hints follow the counts.
    #[test]
    fn trades_keep_limits_and_lose_nothing() {
        let b = BarnShard::new(2, 1);
        let (f1, f2, f3, e1, e2) = (sheaf(), sheaf(), sheaf(), sheaf(), sheaf());
        // Each sheaf below is handed to the shard or given back, and freed once at the end.
        // SAFETY: every sheaf used below is one we own (from `sheaf()`).
        unsafe {
            // No full sheaf: nothing taken, `give` comes back.
            assert_eq!(b.exchange_empty(e1), (None, e1));
            assert!(!b.may_have_full() && b.may_take_full() && !b.may_have_empty());
            b.put_full(f1).unwrap();
            b.put_full(f2).unwrap();
            assert!(b.may_have_full() && !b.may_take_full());
            // At the limit: the third full sheaf is refused, a forced put still goes in.
            assert_eq!(b.put_full(f3), Err(f3));
            // Trade e1 for the newest full sheaf: e1 kept.
            assert_eq!(b.exchange_empty(e1), (Some(f2), ptr::null_mut()));
            assert!(b.may_have_empty());
            // The empty list is at its limit (1): e2 comes back with f1.
            assert_eq!(b.exchange_empty(e2), (Some(f1), e2));
            assert_eq!(b.counts(), (0, 1, 0));
            assert!(!b.may_have_full());
            assert_eq!(b.get_empty(), Some(e1));
            assert_eq!(b.get_empty(), None);
            b.put_full_force(f1);
            b.put_full_force(f2);
            b.put_full_force(f3);
            assert_eq!(b.counts().0, 3);
            assert_eq!(b.get_full(), Some(f3));
            b.put_full_force(f3);
            assert_eq!(b.put_empty(e2), Ok(()));
            assert_eq!(b.put_empty(e1), Err(e1));
            let (mut full, empty) = b.take_all();
            assert_eq!(empty, e2);
            let mut n = 0;
            while !full.is_null() {
                let next = (*full).next.get();
                free(full);
                full = next;
                n += 1;
            }
            assert_eq!(n, 3);
            assert_eq!(b.counts(), (0, 0, 0));
            assert!(!b.may_have_full() && b.may_take_full() && !b.may_have_empty());
        }
        free(e1);
        free(e2);
    }
}
