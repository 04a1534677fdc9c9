//! Deferred frees (`kfree_rcu` on crossbeam-epoch): [`KmemCache::free_deferred`] and
//! [`SlabBox::drop_deferred`](crate::SlabBox::drop_deferred).
//!
//! # The protocol
//!
//! A cache that has seen a deferred free owns one [`Deferred`] block (created on first use, so
//! caches that never defer, and every kmalloc cache, carry nothing but a null pointer). It holds
//! one *batch slot* per CPU slot: a [`SpinLock`] around the batch being filled there (the
//! Linux 7.0 `rcu_free` sheaf). A deferred free appends `{object, drop fn}` to the batch of the
//! caller's slot; when the batch is full it is taken out of the slot (under the lock) and handed
//! to the guard's collector as **one** closure (`Guard::defer_unchecked`, two words, stored
//! inline by crossbeam: no allocation per closure). When the epoch has advanced past every
//! thread pinned at hand-over time, the closure drops the values and returns the whole batch
//! with one `free_bulk`.
//!
//! Why handing over late is correct: an object appended at time `t1` is handed over at
//! `t2 >= t1` under a guard pinned at `t2`. crossbeam runs the closure only after every thread
//! pinned at `t2` has unpinned; a thread pinned at `t1` is either still pinned at `t2` (covered)
//! or has unpinned already. So the object outlives every guard that existed when
//! `free_deferred` was called.
//!
//! A batch belongs to one collector (the first guard's): a deferred free whose guard belongs to
//! another collector first hands the slot's batch to its own collector (registering a
//! short-lived handle on it), then starts a new batch. An unprotected guard
//! (`epoch::unprotected()`) frees at once, as crossbeam's own `defer` does with it.
//!
//! # Lifetime of the cache
//!
//! `pending` counts the objects handed to a collector and not yet freed (each batch is added
//! when handed over, before its closure can run, and subtracted by it). Dropping the
//! [`KmemCache`] hands every partly filled batch to its collector and sets the `DYING` bit; the
//! cache is destroyed (unregistered, `kmem_cache_destroy`) by whichever comes last: the drop
//! (nothing pending) or the closure that frees the last pending object. So a cache is never
//! destroyed under its pending objects: it stays alive, and listed in `slabinfo`, until they
//! have been freed.
//!
//! # What is not reachable from the global allocator
//!
//! Nothing here is called by `kmalloc`, `kfree` or [`Kmalloc`](crate::Kmalloc): the kmalloc
//! caches never defer, and crossbeam-epoch (which allocates its bags, handles and closures
//! through the global allocator) is entered only from `free_deferred`, `drop_deferred`,
//! `flush_deferred`, `shrink` and the drop of a cache that has used them.

use crate::cache::KmemCache;
use crate::instance::Kmem;
use crate::page::Page;
use crate::slub::CacheInner;
use crate::sync::{AtomicUsize, Ordering, SpinLock};
use core::ptr::{self, NonNull};
use crossbeam_epoch::{Collector, Guard};

/// With the `debug-reentrancy` feature (and in unit tests), aborts if the global allocator is
/// on the calling thread's stack: it must never reach the deferred machinery or crossbeam-epoch
/// (`tests/deferred_global.rs`). Nothing in other builds.
#[inline(always)]
fn assert_outside_kmalloc(what: &str) {
    #[cfg(not(loom))]
    crate::kmalloc::assert_outside(what);
    #[cfg(loom)]
    let _ = what;
}

/// Objects per batch (one deferred closure each). Small under loom so that the models reach
/// the hand-over with two frees.
pub(crate) const BATCH: usize = if cfg!(loom) { 2 } else { 64 };

/// The `DYING` bit of [`Deferred::pending`]: the cache's handle is gone.
const DYING: usize = 1 << (usize::BITS - 1);

/// A value's destructor, run on the object before its memory is freed.
pub(crate) type DropFn = unsafe fn(*mut u8);

/// One batch: the objects freed on one CPU slot between two hand-overs.
struct Batch {
    n: usize,
    objs: [(usize, Option<DropFn>); BATCH],
}

/// What a batch slot holds under its lock: the batch being filled and its collector.
struct Filling {
    batch: *mut Batch,
    collector: Option<Collector>,
}

// SAFETY: `batch` is an exclusively owned heap block (a `Box` in raw form), reached only under
// the slot's lock.
unsafe impl Send for Filling {}

/// The deferred-free state of one cache.
pub(crate) struct Deferred {
    inner: NonNull<CacheInner>,
    /// Keeps the allocator alive while deferred objects are pending.
    kmem: Kmem,
    /// Objects accepted and not yet freed, and typesafe slabs handed over and not yet
    /// released, plus the `DYING` bit.
    pending: AtomicUsize,
    /// The slabs among `pending` (`KmemCache::shrink_deferred`).
    pending_slabs: AtomicUsize,
    slots: Box<[SpinLock<Filling>]>,
}

impl Deferred {
    /// A fresh block for `cache`.
    pub(crate) fn new(cache: &KmemCache) -> Deferred {
        let nr = cache.inner().nr_cpus;
        Deferred {
            inner: cache.inner,
            kmem: cache.kmem.clone(),
            pending: AtomicUsize::new(0),
            pending_slabs: AtomicUsize::new(0),
            slots: (0..nr)
                .map(|_| {
                    SpinLock::new(
                        "deferred batch",
                        Filling {
                            batch: ptr::null_mut(),
                            collector: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn inner(&self) -> &CacheInner {
        // SAFETY: the cache lives until `finalize`, which frees this block too.
        unsafe { self.inner.as_ref() }
    }

    /// Objects accepted and not yet freed: those in the slots' batches and those handed over.
    pub(crate) fn pending(&self) -> usize {
        let filling: usize = self
            .slots
            .iter()
            .map(|s| {
                let f = s.lock();
                if f.batch.is_null() {
                    0
                } else {
                    // SAFETY: the filling batch is ours under the slot lock.
                    unsafe { (*f.batch).n }
                }
            })
            .sum();
        let all = self.pending.load(Ordering::Acquire) & !DYING;
        filling + all.saturating_sub(self.pending_slabs.load(Ordering::Acquire))
    }

    /// Typesafe slabs handed to a collector and not yet released.
    pub(crate) fn pending_slabs(&self) -> usize {
        self.pending_slabs.load(Ordering::Acquire)
    }

    /// Hands `n` empty slabs of a `TYPESAFE_BY_RCU` cache (`chain`, linked through `next`) to
    /// `g`'s collector: they go back to the page allocator once every thread pinned there now
    /// has unpinned (an unprotected guard: at once). Until then they stay slabs of the cache,
    /// on no list, so a reader that still holds a pointer into one sees an object of the cache.
    ///
    /// # Safety
    /// `this` is live; the slabs were taken by `take_empty_partials` and are the caller's.
    pub(crate) unsafe fn defer_slabs(this: *const Deferred, chain: *mut Page, n: usize, g: &Guard) {
        assert_outside_kmalloc("shrink_deferred");
        // SAFETY: live per the contract.
        let d = unsafe { &*this };
        if g.collector().is_none() || cfg!(kmem_mutant = "typesafe_slabs_released_at_once") {
            // No thread can be pinned (or, planted bug for loom-tests: released at once, under
            // readers that may still be pinned).
            // SAFETY: the chain is ours (contract).
            unsafe { d.inner().discard_chain(chain) };
            return;
        }
        // Count the slabs before the collector can run the closure (it subtracts them).
        d.inner().note_handed_over(chain);
        d.pending_slabs.fetch_add(n, Ordering::AcqRel);
        d.pending.fetch_add(n, Ordering::AcqRel);
        let (dp, c) = (this as usize, chain as usize);
        // SAFETY: the closure owns the chain and runs once, after every thread pinned now has unpinned; `this` stays live until `pending` (which counts the slabs) drops to 0.
        unsafe {
            g.defer_unchecked(move || Self::run_slabs(dp as *const Deferred, c as *mut Page))
        };
    }

    /// The deferred closure of [`Self::defer_slabs`]: releases the slabs, and destroys the cache
    /// if that was the last pending work of a dropped cache.
    ///
    /// # Safety
    /// `chain` is a chain of `this`'s handed-over slabs whose grace period has passed.
    unsafe fn run_slabs(this: *const Deferred, chain: *mut Page) {
        assert_outside_kmalloc("a deferred slab release");
        // SAFETY: `this` lives while its pending count covers the chain.
        let d = unsafe { &*this };
        let mut n = 0;
        let mut p = chain;
        while !p.is_null() {
            n += 1;
            // SAFETY: a slab of the chain, ours.
            p = unsafe { (*p).next().get() };
        }
        // SAFETY: the chain is ours and its grace period has passed.
        unsafe { d.inner().release_handed_over(chain) };
        d.pending_slabs.fetch_sub(n, Ordering::AcqRel);
        let prev = d.pending.fetch_sub(n, Ordering::AcqRel);
        if prev == DYING | n {
            // SAFETY: the handle is gone and nothing is pending: we are the last user.
            unsafe { Self::finalize(this) };
        }
    }

    /// Queues `obj` (after running `drop` on it, if any) to be freed once every thread pinned
    /// in `guard`'s collector now has unpinned.
    ///
    /// # Safety
    /// `this` is live; `obj` is a live object of the cache, given up by the caller; `drop` is
    /// sound to run on it from any thread.
    pub(crate) unsafe fn defer(this: *const Deferred, obj: usize, drop: Option<DropFn>, g: &Guard) {
        assert_outside_kmalloc("free_deferred");
        // SAFETY: live per the contract.
        let d = unsafe { &*this };
        let Some(collector) = g.collector() else {
            // An unprotected guard: no thread can be pinned, free at once.
            // SAFETY: the caller gave `obj` up; `drop` is sound on it.
            unsafe { d.free_now(&[(obj, drop)]) };
            return;
        };
        let slot = crate::cpu::current_cpu() % d.slots.len();
        let mut full = ptr::null_mut();
        let mut stale: Option<(*mut Batch, Collector)> = None;
        {
            let mut f = d.slots[slot].lock();
            if !f.batch.is_null() && f.collector.as_ref() != Some(collector) {
                let b = core::mem::replace(&mut f.batch, ptr::null_mut());
                stale = Some((b, f.collector.take().expect("a batch has a collector")));
            }
            if f.batch.is_null() {
                f.batch = Box::into_raw(Box::new(Batch {
                    n: 0,
                    objs: [(0, None); BATCH],
                }));
                f.collector = Some(collector.clone());
            }
            // SAFETY: the filling batch is ours under the slot lock.
            let b = unsafe { &mut *f.batch };
            b.objs[b.n] = (obj, drop);
            b.n += 1;
            if b.n == BATCH {
                full = core::mem::replace(&mut f.batch, ptr::null_mut());
                f.collector = None;
            }
        }
        if let Some((b, c)) = stale {
            // SAFETY: `b` was taken out of its slot, so it is ours; `c` is its collector.
            unsafe { Self::hand_over_registered(this, b, &c) };
        }
        if !full.is_null() {
            // SAFETY: `full` was taken out of its slot, so it is ours; `g` is of its collector.
            unsafe { Self::hand_over(this, full, g) };
        }
    }

    /// Hands every slot's partly filled batch to its collector; with `guard` (of that
    /// collector) through it, otherwise through a short-lived handle on the batch's collector.
    ///
    /// # Safety
    /// `this` is live and stays live for the call.
    pub(crate) unsafe fn flush(this: *const Deferred, guard: Option<&Guard>) {
        assert_outside_kmalloc("flush_deferred");
        // SAFETY: live per the contract.
        let d = unsafe { &*this };
        for slot in d.slots.iter() {
            let (b, c) = {
                let mut f = slot.lock();
                (
                    core::mem::replace(&mut f.batch, ptr::null_mut()),
                    f.collector.take(),
                )
            };
            if b.is_null() {
                continue;
            }
            let c = c.expect("a batch has a collector");
            match guard {
                // SAFETY: `b` was taken out of its slot; `g` is of its collector.
                Some(g) if g.collector() == Some(&c) => unsafe { Self::hand_over(this, b, g) },
                // SAFETY: `b` was taken out of its slot; `c` is its collector.
                _ => unsafe { Self::hand_over_registered(this, b, &c) },
            }
        }
    }

    /// Hands batch `b` to collector `c` through a handle registered for the occasion.
    ///
    /// # Safety
    /// As [`Deferred::hand_over`].
    unsafe fn hand_over_registered(this: *const Deferred, b: *mut Batch, c: &Collector) {
        let handle = c.register();
        let g = handle.pin();
        // SAFETY: forwarded; `g` is of `c`.
        unsafe { Self::hand_over(this, b, &g) };
        g.flush();
    }

    /// Hands batch `b` to `g`'s collector as one closure.
    ///
    /// # Safety
    /// `b` is a full or partly filled batch of `this` owned by the caller, whose objects were
    /// accepted while pinned in `g`'s collector; the cache's handle is live, or this is its
    /// drop (before `DYING` is set).
    unsafe fn hand_over(this: *const Deferred, b: *mut Batch, g: &Guard) {
        // Count the batch before the collector can run it (its closure subtracts it).
        // SAFETY: live per the contract; `b` is ours.
        unsafe { (*this).pending.fetch_add((*b).n, Ordering::AcqRel) };
        let (d, b) = (this as usize, b as usize);
        #[cfg(kmem_mutant = "deferred_batch_runs_at_once")]
        {
            // SAFETY: (planted bug) runs the batch now instead of after a grace period.
            unsafe { Self::run(d as *const Deferred, b as *mut Batch) };
            let _ = g;
            return;
        }
        #[allow(unreachable_code)]
        // SAFETY: the closure owns `b` and runs once, after every thread pinned now has unpinned; `this` stays live until `pending` (which counts `b`'s objects) drops to 0.
        unsafe {
            g.defer_unchecked(move || Self::run(d as *const Deferred, b as *mut Batch))
        };
    }

    /// The deferred closure: drops the values, frees the batch's objects, and destroys the cache
    /// if it was the last pending work of a dropped cache.
    ///
    /// # Safety
    /// `b` is a batch of `this` that no one else owns; its grace period has passed.
    unsafe fn run(this: *const Deferred, b: *mut Batch) {
        assert_outside_kmalloc("a deferred-free batch");
        // SAFETY: ours per the contract (from `Box::into_raw`).
        let b = unsafe { Box::from_raw(b) };
        // SAFETY: `this` lives while its pending count covers `b`.
        let d = unsafe { &*this };
        // SAFETY: the objects' grace period has passed; each was given up once.
        unsafe { d.free_now(&b.objs[..b.n]) };
        let n = b.n;
        drop(b);
        let prev = d.pending.fetch_sub(n, Ordering::AcqRel);
        if prev == DYING | n {
            // SAFETY: the handle is gone and nothing is pending: we are the last user.
            unsafe { Self::finalize(this) };
        }
    }

    /// Runs the destructors and frees `objs` now.
    ///
    /// # Safety
    /// Every object is a live object of the cache that no one will touch again.
    unsafe fn free_now(&self, objs: &[(usize, Option<DropFn>)]) {
        let mut buf = [NonNull::<u8>::dangling(); BATCH];
        for chunk in objs.chunks(BATCH) {
            for (i, &(o, drop)) in chunk.iter().enumerate() {
                if let Some(f) = drop {
                    // SAFETY: per the contract the object holds the value `f` drops.
                    unsafe { f(o as *mut u8) };
                }
                // SAFETY: objects are non-null (they came from the cache).
                buf[i] = unsafe { NonNull::new_unchecked(o as *mut u8) };
            }
            // SAFETY: objects of this cache, each freed once.
            unsafe { self.inner().free_bulk(&buf[..chunk.len()]) };
        }
    }

    /// The cache's handle is being dropped: hand every partial batch over, and destroy the
    /// cache now if nothing is pending (otherwise the last batch to run does).
    ///
    /// # Safety
    /// Called once, from the drop of the cache's only handle.
    pub(crate) unsafe fn release(this: *const Deferred) {
        // SAFETY: live until `finalize`, which cannot run before `DYING` is set below.
        unsafe { Self::flush(this, None) };
        // SAFETY: as above.
        let d = unsafe { &*this };
        #[cfg(kmem_mutant = "deferred_drop_checks_pending_early")]
        let prev = {
            // (planted bug) reads the count, then sets DYING in a separate step.
            let early = d.pending.load(Ordering::Acquire);
            d.pending.fetch_or(DYING, Ordering::AcqRel);
            early
        };
        #[cfg(not(kmem_mutant = "deferred_drop_checks_pending_early"))]
        let prev = d.pending.fetch_or(DYING, Ordering::AcqRel);
        if prev == 0 {
            // SAFETY: nothing pending and the handle is gone.
            unsafe { Self::finalize(this) };
        }
    }

    /// Destroys the cache (`kmem_cache_destroy`) and frees this block.
    ///
    /// # Safety
    /// The cache's handle is gone and no deferred work is pending.
    unsafe fn finalize(this: *const Deferred) {
        // SAFETY: from `Box::into_raw` in `KmemCache::deferred`; we are the last user.
        let d = unsafe { Box::from_raw(this as *mut Deferred) };
        d.kmem.shared().unregister(d.inner);
        // SAFETY: unregistered, and no handle or pending object refers to it.
        unsafe { CacheInner::destroy(d.inner) };
    }
}
