//! `KmemShared`: an instance's shared state in one OS mapping — its nodes (a buddy page
//! allocator each), the slot→node table, the registry of its caches, reclaim and teardown.

use super::*;

/// The registry of an instance's caches: an intrusive list through `CacheInner::reg_*`.
pub(crate) struct Registry {
    pub(super) head: *const CacheInner,
    pub(super) count: usize,
}

// SAFETY: the pointers name live caches and are only followed under the registry lock.
unsafe impl Send for Registry {}

/// The shared state of one allocator instance.
pub(crate) struct KmemShared {
    pub(super) refs: AtomicUsize,
    pub(crate) nr_nodes: usize,
    pub(crate) nr_cpus: usize,
    /// Whether the caches' fast paths commit with restartable sequences (`cpu/percpu/`).
    pub(crate) rseq: bool,
    pub(crate) tid_step: TidStep,
    pub(super) budget: PageBudget,
    pub(super) nodes: *const PageAllocator,
    pub(super) slot_node: *const u16,
    pub(super) registry: SpinLock<Registry>,
    pub(super) leaked: AtomicBool,
    pub(super) map_size: usize,
    /// When the next barn trim is due (`decay_now` time, ns; see [`KmemShared::decay_tick`]).
    pub(super) next_barn_trim: AtomicU64,
    /// Per CPU slot, when the next trim of that slot's sheaves is due (`nr_cpus` entries; see
    /// [`KmemShared::decay_tick`]).
    pub(super) next_sheaf_trim: *const AtomicU64,
}

// SAFETY: everything mutable inside is synchronised (atomics, locks); the raw pointers name
// arrays in the instance's own mapping, immutable after construction.
unsafe impl Send for KmemShared {}
// SAFETY: as above.
unsafe impl Sync for KmemShared {}

impl KmemShared {
    /// The page allocator of node `nid`.
    #[inline]
    pub(crate) fn node_pages(&self, nid: usize) -> &PageAllocator {
        debug_assert!(nid < self.nr_nodes);
        // SAFETY: `nid < nr_nodes`; the array lives as long as the instance.
        unsafe { &*self.nodes.add(nid) }
    }

    /// The node of CPU slot `slot`.
    #[inline]
    pub(crate) fn slot_node(&self, slot: usize) -> usize {
        debug_assert!(slot < self.nr_cpus);
        // SAFETY: `slot < nr_cpus`; the table lives as long as the instance.
        unsafe { *self.slot_node.add(slot) as usize }
    }

    /// A decay tick on every node (`page/decay.rs`): cheap unless a run is due. Called from
    /// the slab allocation slow path with no kmem lock held.
    ///
    /// Once per decay delay it also trims every cache's barns (one CAS on the due time elects
    /// the thread): the full sheaves waiting there go back to their slabs
    /// ([`CacheInner::trim_barns`]), so that what a cache that went idle holds in them becomes
    /// free pages the decay can return. A cache that keeps trading sheaves refills a few more
    /// times per delay (at most `MAX_FULL_SHEAVES` per barn each time).
    #[inline]
    pub(crate) fn decay_tick(&self) {
        let Some(delay) = self.budget.decay_ns else {
            return;
        };
        let now = self.budget.decay_now();
        for nid in 0..self.nr_nodes {
            self.node_pages(nid).decay_tick(now);
        }
        if claim_due(&self.next_barn_trim, now, delay) {
            self.trim_barns();
        }
        // The sheaves of the CPU this thread runs on, once per delay per CPU: a thread that
        // runs a slow path on a CPU trims the sheaves that caches idle on that CPU keep there.
        let slot = crate::cpu::slot_of(crate::cpu::current_cpu(), self.nr_cpus);
        // SAFETY: `slot < nr_cpus`; the table lives as long as the instance.
        if claim_due(unsafe { &*self.next_sheaf_trim.add(slot) }, now, delay) {
            self.trim_cpu_sheaves(slot);
        }
    }

    /// [`CacheInner::trim_cpu_sheaves`] of slot `slot` (the calling thread's, whose trim it
    /// claimed) on every registered cache, as [`KmemShared::decay_over_caches`] runs it.
    /// Returns the objects flushed.
    #[cold]
    pub(crate) fn trim_cpu_sheaves(&self, slot: usize) -> usize {
        self.decay_over_caches(|c| c.trim_cpu_sheaves(slot))
    }

    /// [`CacheInner::trim_barns`] on every registered cache, as
    /// [`KmemShared::decay_over_caches`] runs it. Returns the sheaves flushed.
    #[cold]
    pub(crate) fn trim_barns(&self) -> usize {
        self.decay_over_caches(CacheInner::trim_barns)
    }

    /// The sum of `trim` over every registered cache, if the registry lock is free (it is only
    /// tried: the caller may be a `slabinfo` that holds it and allocates), with the thread's
    /// signals blocked, so that no signal handler of this thread that allocates can need a
    /// lock a trim holds (list and page locks in `free_bulk`); 0 when the lock is busy.
    fn decay_over_caches(&self, trim: impl Fn(&CacheInner) -> usize) -> usize {
        crate::os::with_signals_blocked(|| {
            let Some(r) = self.registry.try_lock() else {
                return 0;
            };
            let mut total = 0;
            let mut p = r.head;
            while !p.is_null() {
                // Destroy unregisters a cache first, under this lock.
                // SAFETY: registered caches stay alive while the registry lock is held.
                let c = unsafe { &*p };
                total += trim(c);
                // SAFETY: as above.
                p = unsafe { c.reg_next.get() };
            }
            total
        })
    }

    /// Records that a cache leaked slabs: the instance's memory must then never be unmapped.
    pub(crate) fn mark_leaked(&self) {
        self.leaked.store(true, Ordering::Relaxed);
    }

    pub(super) fn register(&self, c: NonNull<CacheInner>) {
        let mut r = self.registry.lock();
        // `c` is a new cache.
        // SAFETY: the registry links of `c` and of the list's members are ours under the lock.
        unsafe {
            let cr = c.as_ref();
            cr.reg_prev.set(ptr::null());
            cr.reg_next.set(r.head);
            if !r.head.is_null() {
                (*r.head).reg_prev.set(c.as_ptr());
            }
        }
        r.head = c.as_ptr();
        r.count += 1;
    }

    pub(crate) fn unregister(&self, c: NonNull<CacheInner>) {
        let mut r = self.registry.lock();
        // SAFETY: `c` is registered; links are ours under the registry lock.
        unsafe {
            let cr = c.as_ref();
            let (prev, next) = (cr.reg_prev.get(), cr.reg_next.get());
            if prev.is_null() {
                r.head = next;
            } else {
                (*prev).reg_next.set(next);
            }
            if !next.is_null() {
                (*next).reg_prev.set(prev);
            }
        }
        r.count -= 1;
    }

    /// Fork support (the `pthread_atfork` prepare handler in `instance/fork.rs`): takes every lock of
    /// this instance, in lock order, and returns with all of them held and no guard:
    /// the registry lock, then every slot lock of every cache, every CPU sheaf lock, every
    /// sheaf pool lock, every node `list_lock`, every barn shard lock, then every node's per-CPU page
    /// list locks, then every node's page lock. Taking a whole level before the next keeps the
    /// walk consistent with the lock order (no kmem path holds a lower-level lock while waiting
    /// for a higher-level one), so the walk cannot deadlock with running allocations.
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_lock_all(&self) {
        let r = self.registry.lock();
        let each = |f: &dyn Fn(&CacheInner)| {
            let mut p = r.head;
            while !p.is_null() {
                // SAFETY: registered caches stay alive while the registry lock is held.
                let c = unsafe { &*p };
                f(c);
                // SAFETY: as above.
                p = unsafe { c.reg_next.get() };
            }
        };
        each(&|c| (0..c.nr_cpus).for_each(|i| c.cpu(i).lock.raw_lock()));
        each(&|c| (0..c.nr_cpus).for_each(|i| c.cpu(i).sheaves.lock.raw_lock()));
        each(&|c| c.pool.lock_for_fork().raw_lock());
        each(&|c| (0..c.nr_nodes).for_each(|n| c.node(n).list_lock.raw_lock()));
        each(&|c| c.barns().iter().for_each(|b| b.lists.raw_lock()));
        for nid in 0..self.nr_nodes {
            self.node_pages(nid).fork_lock_pcp();
        }
        for nid in 0..self.nr_nodes {
            self.node_pages(nid).fork_lock();
        }
        core::mem::forget(r);
    }

    /// Fork support (parent and child handlers): releases every lock [`Self::fork_lock_all`]
    /// took.
    ///
    /// # Safety
    /// The calling thread ran `fork_lock_all` on this instance (in the child: the forking thread
    /// did) and has not released the locks since.
    #[cfg(not(any(loom, miri)))]
    pub(crate) unsafe fn fork_unlock_all(&self) {
        for nid in 0..self.nr_nodes {
            // SAFETY: taken by fork_lock_all (contract).
            unsafe {
                self.node_pages(nid).fork_unlock();
                self.node_pages(nid).fork_unlock_pcp();
            }
        }
        // Dropping `r` at the end releases it.
        // SAFETY: the registry lock was taken by fork_lock_all (contract).
        let r = unsafe { self.registry.adopt_raw() };
        let mut p = r.head;
        while !p.is_null() {
            // Registered caches stay alive while the registry lock is held.
            // SAFETY: `p` is registered; fork_lock_all took its slot and list locks (contract).
            unsafe {
                let c = &*p;
                c.barns().iter().for_each(|b| b.lists.raw_unlock());
                (0..c.nr_nodes).for_each(|n| c.node(n).list_lock.raw_unlock());
                c.pool.lock_for_fork().raw_unlock();
                (0..c.nr_cpus).for_each(|i| c.cpu(i).sheaves.lock.raw_unlock());
                (0..c.nr_cpus).for_each(|i| c.cpu(i).lock.raw_unlock());
                p = c.reg_next.get();
            }
        }
    }

    /// Fork support, in the child after [`Self::fork_unlock_all`]: every node takes over the
    /// page blocks that other threads had detached for `madvise` when the process forked
    /// ([`PageAllocator::fork_child_reclaim`]).
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_child_reclaim(&self) {
        for nid in 0..self.nr_nodes {
            self.node_pages(nid).fork_child_reclaim();
        }
    }

    /// Memory reclaim, run by a page allocator of this instance that reached the memory limit
    /// (its reclaim hook; the kernel's `shrink_slab` under direct reclaim): discards the empty
    /// partial slabs of every cache on every node, returning their pages to the buddy lists.
    /// Returns the number of slabs discarded (0 also when the registry lock stayed busy). The
    /// page allocator calls it again, up to `MAX_RECLAIM_RETRIES` times, while it discards
    /// something: another thread may take the freed blocks before the caller's retry does.
    ///
    /// Runs with no page lock held and, since `new_slab` runs with the slot lock dropped, no
    /// slot lock either; it still only tries the registry lock (which comes before slot locks in
    /// the lock order), for a bounded time, like `shrink_slab`'s
    /// `down_read_trylock(&shrinker_rwsem)`, and reclaims nothing if it stays busy. It does not
    /// flush other slots' CPU slabs and CPU partial lists: what they hold is bounded per slot
    /// (`cpu_partial_slabs`), and `tests/reclaim.rs` shows churn under a tight limit with the
    /// default per-CPU settings never seeing `None`. Node `list_lock`s come after slot
    /// locks and are taken normally. Nothing is released to the OS here: the limit counts
    /// mapped bytes, which `madvise` does not lower, and releasing would detach the very
    /// blocks the retry needs.
    pub(crate) fn reclaim(&self) -> usize {
        let mut wait = crate::page::BoundedWait::new();
        let r = loop {
            if let Some(r) = self.registry.try_lock() {
                break r;
            }
            if !wait.again() {
                return 0;
            }
        };
        let mut discarded = 0;
        let mut p = r.head;
        while !p.is_null() {
            // Destroy unregisters a cache first, under this lock.
            // SAFETY: registered caches stay alive while the registry lock is held.
            let c = unsafe { &*p };
            for nid in 0..c.nr_nodes {
                discarded += c.discard_empty_partials(nid);
            }
            // SAFETY: as above.
            p = unsafe { c.reg_next.get() };
        }
        discarded
    }

    /// `f` of every registered cache, computed under the registry lock into space reserved
    /// before taking it: nothing may allocate while the lock is held (a kmalloc cache created
    /// lazily by that allocation would need the registry lock itself), so `f` must not either.
    pub(super) fn collect_caches<T>(&self, mut f: impl FnMut(&CacheInner) -> T) -> Vec<T> {
        let mut out = Vec::new();
        loop {
            let want = self.registry.lock().count + 4;
            out.reserve(want);
            let mut complete = true;
            self.for_each_cache(|c| {
                if out.len() < out.capacity() {
                    out.push(f(c));
                } else {
                    complete = false;
                }
            });
            if complete {
                return out;
            }
            out.clear();
        }
    }

    /// Calls `f` on every registered cache, under the registry lock.
    pub(super) fn for_each_cache(&self, mut f: impl FnMut(&CacheInner)) {
        let r = self.registry.lock();
        let mut p = r.head;
        while !p.is_null() {
            // Destroy unregisters a cache first, under this lock.
            // SAFETY: registered caches stay alive while the registry lock is held.
            let c = unsafe { &*p };
            f(c);
            // SAFETY: as above.
            p = unsafe { c.reg_next.get() };
        }
    }
}

/// Tears an instance down once its last handle is gone.
///
/// # Safety
/// No handle or cache refers to `shared` any more.
pub(super) unsafe fn destroy_shared(shared: NonNull<KmemShared>) {
    // SAFETY: exclusive per the contract.
    let s = unsafe { shared.as_ref() };
    debug_assert_eq!(s.registry.lock().count, 0);
    if s.leaked.load(Ordering::Relaxed) {
        // A cache leaked slabs that users may still point into: keep every mapping.
        return;
    }
    // Each page allocator unmaps its chunks (or leaks them if any page is still allocated), then
    // the metadata mapping goes.
    // SAFETY: exclusive: no handle or cache refers to `shared` any more (contract).
    unsafe {
        for nid in 0..s.nr_nodes {
            // Its per-CPU lists go back to the buddy lists first (the slots live in this
            // mapping, after the allocators; plain data, nothing to drop).
            ptr::drop_in_place(s.nodes.add(nid) as *mut PageAllocator);
        }
        let size = s.map_size;
        ptr::drop_in_place(shared.as_ptr());
        os::unmap(shared.cast(), size, PAGE_SIZE);
    }
}

/// The reclaim hook of every page allocator of an instance: `arg` is the instance.
pub(super) fn reclaim_hook(arg: *const ()) -> bool {
    // SAFETY: registered by `build_shared` with the address of the instance that contains the calling page allocator, so it is alive while that allocator runs.
    let s = unsafe { &*(arg as *const KmemShared) };
    s.reclaim() > 0
}

/// Whether the caller claims the run due at `*due_at` (a time of `decay_now`): true for the one
/// thread whose CAS moves it `delay` past `now`, once it is due.
fn claim_due(due_at: &AtomicU64, now: u64, delay: u64) -> bool {
    let due = due_at.load(Ordering::Relaxed);
    now >= due
        && due_at
            .compare_exchange(
                due,
                now.saturating_add(delay),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
}
