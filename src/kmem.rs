//! [`Kmem`]: one allocator instance — its nodes (each with a buddy page allocator), its CPU
//! slots' topology, its memory budget and the registry of its caches.
//!
//! An instance's shared state ([`KmemShared`]) lives in one mapping taken from the OS, so that
//! the process-wide instance behind [`Kmalloc`](crate::Kmalloc) can be built from inside the
//! global allocator without allocating. [`Kmem`] is a reference-counted handle to it; every
//! cache holds one, so an instance lives until its last handle and cache are gone.

use crate::cache::{CacheConfig, CacheInner, KmemCache};
use crate::cpu_slab::TidStep;
use crate::error::KmemError;
use crate::page::{FaultInjection, PageAllocator, PageBudget, PageStats, CHUNK_SIZE, PAGE_SIZE};
use crate::stats::SlabInfo;
use crate::sync::{AtomicBool, AtomicUsize, Cell, OnceSlot, Ordering, SpinLock};
use crate::{cpu, os};
use core::fmt;
use core::ptr::{self, NonNull};

/// The most CPU slots an instance may have.
///
/// ```
/// let err = kmem::Kmem::builder().cpus(kmem::MAX_CPUS + 1).build().unwrap_err();
/// assert!(matches!(err, kmem::KmemError::InvalidConfig { parameter: "cpus", .. }));
/// ```
pub const MAX_CPUS: usize = 8192;
/// The most nodes an instance may have.
///
/// ```
/// let err = kmem::Kmem::builder().nodes(kmem::MAX_NODES + 1).build().unwrap_err();
/// assert!(matches!(err, kmem::KmemError::InvalidConfig { parameter: "nodes", .. }));
/// ```
pub const MAX_NODES: usize = 1024;

/// The registry of an instance's caches: an intrusive list through `CacheInner::reg_*`.
pub(crate) struct Registry {
    head: *const CacheInner,
    count: usize,
}

// SAFETY: the pointers name live caches and are only followed under the registry lock.
unsafe impl Send for Registry {}

/// The shared state of one allocator instance.
pub(crate) struct KmemShared {
    refs: AtomicUsize,
    pub(crate) nr_nodes: usize,
    pub(crate) nr_cpus: usize,
    pub(crate) tid_step: TidStep,
    budget: PageBudget,
    nodes: *const PageAllocator,
    slot_node: *const u16,
    registry: SpinLock<Registry>,
    leaked: AtomicBool,
    map_size: usize,
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

    /// Records that a cache leaked slabs: the instance's memory must then never be unmapped.
    pub(crate) fn mark_leaked(&self) {
        self.leaked.store(true, Ordering::Relaxed);
    }

    fn register(&self, c: NonNull<CacheInner>) {
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

    /// Fork support (the `pthread_atfork` prepare handler in `kmalloc.rs`): takes every lock of
    /// this instance, in lock order, and returns with all of them held and no guard:
    /// the registry lock, then every slot lock of every cache, then every node `list_lock` of
    /// every cache, then every node's page lock. Taking a whole level before the next keeps the
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
        each(&|c| (0..c.nr_nodes).for_each(|n| c.node(n).list_lock.raw_lock()));
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
            unsafe { self.node_pages(nid).fork_unlock() };
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
                (0..c.nr_nodes).for_each(|n| c.node(n).list_lock.raw_unlock());
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
    /// Returns the number of slabs discarded.
    ///
    /// Runs with no page lock held, but possibly with a CPU slot lock held (`new_slab`), so it
    /// must not wait for the registry lock, which comes before slot locks in the lock order:
    /// like `shrink_slab`'s `down_read_trylock(&shrinker_rwsem)`, it only tries it, for a
    /// bounded time, and reclaims nothing if it stays busy. Node `list_lock`s come after slot
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
    fn collect_caches<T>(&self, mut f: impl FnMut(&CacheInner) -> T) -> Vec<T> {
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
    fn for_each_cache(&self, mut f: impl FnMut(&CacheInner)) {
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

/// A kmem allocator instance: nodes with page allocators, CPU slots, and caches.
///
/// Cheap to clone (a reference-counted handle). [`Kmem::global()`] is the process-wide instance
/// behind [`Kmalloc`](crate::Kmalloc) and [`KmemCache::new`]; [`Kmem::builder()`] makes private
/// instances with their own memory limit, fake NUMA nodes, slot count and fault injection —
/// the way to test how code behaves when memory runs out.
///
/// ```
/// use kmem::{CacheConfig, Kmem};
/// let k = Kmem::builder().memory_limit(64 << 20).nodes(2).cpus(4).build()?;
/// let cache = k.create_cache("conn", 192, CacheConfig::new().align(64))?;
/// let p = cache.alloc().unwrap();
/// // SAFETY: `p` came from `cache` and is freed once.
/// unsafe { cache.free(p) };
/// assert_eq!((k.nodes(), k.cpus()), (2, 4));
/// assert!(k.page_stats().mapped_bytes <= 64 << 20);
/// # Ok::<(), kmem::KmemError>(())
/// ```
pub struct Kmem {
    shared: NonNull<KmemShared>,
}

// SAFETY: a handle to internally synchronised shared state.
unsafe impl Send for Kmem {}
// SAFETY: as above.
unsafe impl Sync for Kmem {}

// Unwind safety, as std's `Mutex` has it: kmem runs no user code while one of its structures is
// half updated except a cache's constructor, and a constructor that panics leaves every list,
// counter and lock as before the slab it was building, which is simply never used (its pages
// stay mapped and are reported by `page_stats` until the instance is dropped). A panic in the
// caller's own code between kmem calls cannot break an invariant of kmem's either. So a `Kmem`
// and the caches built on it may be used after a caught panic.
impl core::panic::UnwindSafe for Kmem {}
impl core::panic::RefUnwindSafe for Kmem {}

impl Clone for Kmem {
    fn clone(&self) -> Self {
        self.shared().refs.fetch_add(1, Ordering::Relaxed);
        Kmem {
            shared: self.shared,
        }
    }
}

impl Drop for Kmem {
    fn drop(&mut self) {
        if self.shared().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        crate::sync::fence(Ordering::Acquire);
        // SAFETY: the last handle: no cache and no other handle refers to the instance.
        unsafe { destroy_shared(self.shared) };
    }
}

impl fmt::Debug for Kmem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kmem")
            .field("nodes", &self.nodes())
            .field("cpus", &self.cpus())
            .finish()
    }
}

static GLOBAL: OnceSlot<Kmem> = OnceSlot::new();

impl Kmem {
    /// The process-wide instance behind [`Kmalloc`](crate::Kmalloc) and [`KmemCache::new`],
    /// built on first use with the machine's topology and no memory limit.
    ///
    /// # Panics
    /// Never in practice; if the OS refuses the first few KiB of metadata (or the CPU lacks a
    /// 16-byte CAS) the process aborts with a message, since nothing can be allocated anyway.
    ///
    /// ```
    /// let k = kmem::Kmem::global();
    /// assert!(k.cpus() >= 1);
    /// ```
    pub fn global() -> &'static Kmem {
        match Self::try_global() {
            Some(k) => k,
            None => crate::abort_msg(&[
                "kmem: the global allocator instance could not be built (no lock-free 16-byte \
                 CAS, or the OS refused its metadata mapping)",
            ]),
        }
    }

    /// The global instance, or `None` if it could not be built (for the allocator paths, which
    /// must return null rather than abort).
    #[inline]
    pub(crate) fn try_global() -> Option<&'static Kmem> {
        if let Some(k) = GLOBAL.get() {
            return Some(k);
        }
        GLOBAL.get_or_try_init(|| {
            let k = KmemBuilder::default()
                .build_shared()
                .ok()
                .map(|shared| Kmem { shared })?;
            // kmalloc.rs: lock every lock of the global instance across fork() (once).
            #[cfg(not(any(loom, miri)))]
            crate::kmalloc::register_fork_handlers();
            Some(k)
        })
    }

    /// The global instance if it has been built (never builds it: for the fork handlers).
    #[cfg(not(any(loom, miri)))]
    #[inline]
    pub(crate) fn global_if_ready() -> Option<&'static Kmem> {
        GLOBAL.get()
    }

    /// A builder for a private instance.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().memory_limit(8 << 20).cpus(2).nodes(1).build()?;
    /// assert_eq!((k.cpus(), k.nodes()), (2, 1));
    /// assert_eq!(k.page_stats().limit_bytes, 8 << 20);
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn builder() -> KmemBuilder {
        KmemBuilder::default()
    }

    #[inline(always)]
    pub(crate) fn shared(&self) -> &KmemShared {
        // SAFETY: the shared block lives while any handle does.
        unsafe { self.shared.as_ref() }
    }

    /// Creates an object cache of `size`-byte objects (`kmem_cache_create`).
    ///
    /// Errors name the bad input: a zero or too-large size, a bad alignment, a knob out of
    /// range, an empty or over-long name (see [`KmemError`]).
    ///
    /// ```
    /// use kmem::{CacheConfig, KmemError};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("inode", 600, CacheConfig::new().align(8))?;
    /// assert_eq!((c.name(), c.object_size()), ("inode", 600));
    /// let err = k.create_cache("", 600, CacheConfig::new()).unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidName { .. }));
    /// let err = k.create_cache("zero", 0, CacheConfig::new()).unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidSize { size: 0, .. }));
    /// # Ok::<(), KmemError>(())
    /// ```
    pub fn create_cache(
        &self,
        name: &str,
        size: usize,
        config: CacheConfig,
    ) -> Result<KmemCache, KmemError> {
        let inner = CacheInner::create(self.shared(), name, size, &config)?;
        self.shared().register(inner);
        Ok(KmemCache {
            inner,
            kmem: self.clone(),
        })
    }

    /// One exact `/proc/slabinfo` row per live cache (see [`SlabInfo`]); print them with
    /// [`SlabInfoTable`](crate::SlabInfoTable).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("rows", 24, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// let rows = k.slabinfo();
    /// assert_eq!(rows.len(), 1);
    /// assert_eq!((rows[0].name.as_str(), rows[0].active_objs), ("rows", 1));
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn slabinfo(&self) -> Vec<SlabInfo> {
        let raw = self.shared().collect_caches(|c| c.slabinfo_raw());
        raw.iter().map(|r| r.to_info()).collect()
    }

    /// Every live cache's name and event counters ([`CacheStats`](crate::CacheStats)), including
    /// the kmalloc caches behind [`Kmalloc`](crate::Kmalloc), which have no handle of their own.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("counted", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// let all = k.cache_stats();
    /// assert_eq!(all.len(), 1);
    /// assert_eq!(all[0].0, "counted");
    /// assert_eq!(all[0].1, c.stats());
    /// ```
    pub fn cache_stats(&self) -> Vec<(String, crate::CacheStats)> {
        let raw = self.shared().collect_caches(|c| {
            let mut name = [0u8; crate::MAX_CACHE_NAME];
            name[..c.name().len()].copy_from_slice(c.name().as_bytes());
            (name, c.name().len(), c.stats())
        });
        raw.iter()
            .map(|(n, len, s)| (String::from_utf8_lossy(&n[..*len]).into_owned(), *s))
            .collect()
    }

    /// Shrinks every cache of this instance (see [`KmemCache::shrink`]) and returns every free
    /// page to the OS.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("burst", 256, kmem::CacheConfig::new()).unwrap();
    /// let objs: Vec<_> = (0..1000).map(|_| c.alloc().unwrap()).collect();
    /// let peak = k.page_stats().resident_bytes;
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) };
    /// k.shrink_all();
    /// assert_eq!(c.info().num_slabs, 0);
    /// assert!(k.page_stats().resident_bytes < peak);
    /// ```
    pub fn shrink_all(&self) {
        self.shared().for_each_cache(|c| c.shrink());
        for nid in 0..self.nodes() {
            self.shared().node_pages(nid).release_free();
        }
    }

    /// Page allocator figures summed over the nodes.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().memory_limit(4 << 20).cpus(2).nodes(2).build().unwrap();
    /// let c = k.create_cache("paged", 1024, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// let s = k.page_stats();
    /// assert!(s.allocs >= 1 && s.mapped_bytes > 0);
    /// assert!(s.mapped_bytes <= s.limit_bytes);
    /// assert_eq!(s.limit_bytes, 4 << 20);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn page_stats(&self) -> PageStats {
        let mut out = PageStats::default();
        for nid in 0..self.nodes() {
            self.shared().node_pages(nid).add_stats(&mut out);
        }
        out
    }

    /// Page allocator figures of one node.
    ///
    /// # Panics
    /// If `node >= self.nodes()`.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(2).build().unwrap();
    /// let c = k.create_cache("on-node-1", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc_node(1).unwrap();
    /// assert!(k.node_page_stats(1).allocs >= 1);
    /// let total = k.node_page_stats(0).allocs + k.node_page_stats(1).allocs;
    /// assert_eq!(total, k.page_stats().allocs);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn node_page_stats(&self, node: usize) -> PageStats {
        assert!(
            node < self.nodes(),
            "kmem: node {node} out of range ({} nodes)",
            self.nodes()
        );
        let mut out = PageStats::default();
        self.shared().node_pages(node).add_stats(&mut out);
        out
    }

    /// Number of (possibly fake) NUMA nodes.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(4).nodes(2).build().unwrap();
    /// assert_eq!(k.nodes(), 2);
    /// assert!(kmem::Kmem::global().nodes() >= 1);
    /// ```
    pub fn nodes(&self) -> usize {
        self.shared().nr_nodes
    }

    /// Number of per-CPU slots in every cache.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(4).nodes(1).build().unwrap();
    /// assert_eq!(k.cpus(), 4);
    /// assert!(k.current_slot() < k.cpus());
    /// ```
    pub fn cpus(&self) -> usize {
        self.shared().nr_cpus
    }

    /// The node of CPU slot `slot`.
    ///
    /// # Panics
    /// If `slot >= self.cpus()`.
    ///
    /// ```
    /// // Fake nodes get contiguous blocks of slots.
    /// let k = kmem::Kmem::builder().cpus(4).nodes(2).build().unwrap();
    /// let nodes: Vec<_> = (0..k.cpus()).map(|s| k.slot_node(s)).collect();
    /// assert_eq!(nodes, [0, 0, 1, 1]);
    /// ```
    pub fn slot_node(&self, slot: usize) -> usize {
        assert!(
            slot < self.cpus(),
            "kmem: slot {slot} out of range ({} slots)",
            self.cpus()
        );
        self.shared().slot_node(slot)
    }

    /// The CPU slot the calling thread uses now.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// assert!(k.current_slot() < 2);
    /// let one = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// assert_eq!(one.current_slot(), 0); // every CPU shares the only slot
    /// ```
    pub fn current_slot(&self) -> usize {
        let cpu = cpu::current_cpu();
        let n = self.cpus();
        if cpu < n {
            cpu
        } else {
            cpu % n
        }
    }
}

/// Configures a private [`Kmem`] instance.
///
/// ```
/// use kmem::{FaultInjection, Kmem};
/// let k = Kmem::builder()
///     .memory_limit(16 << 20)
///     .nodes(2)
///     .cpus(4)
///     .fault_injection(FaultInjection::EveryNth(1000))
///     .build()?;
/// assert_eq!(k.nodes(), 2);
/// # Ok::<(), kmem::KmemError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct KmemBuilder {
    memory_limit: Option<usize>,
    nodes: Option<usize>,
    cpus: Option<usize>,
    fault: FaultInjection,
}

impl KmemBuilder {
    /// The page allocator never maps more than `bytes` of slab and page memory (rounded down to
    /// whole pages; metadata is counted apart, see [`PageStats::metadata_bytes`]). Default: no
    /// limit.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().memory_limit(1 << 20).cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("capped", 4096, kmem::CacheConfig::new()).unwrap();
    /// let mut objs = Vec::new();
    /// while let Some(p) = c.alloc() {
    ///     objs.push(p);
    /// }
    /// // Out of memory at the limit, not before the OS runs out.
    /// assert!(!objs.is_empty() && objs.len() * 4096 <= 1 << 20);
    /// assert!(k.page_stats().mapped_bytes <= 1 << 20);
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) };
    /// ```
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Fake NUMA nodes: `n` nodes with their own page allocators and partial lists; CPU slots
    /// are split between them in contiguous blocks. Default: the machine's nodes.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().nodes(4).cpus(8).build().unwrap();
    /// assert_eq!(k.nodes(), 4);
    /// assert_eq!((k.slot_node(0), k.slot_node(7)), (0, 3));
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = Some(n);
        self
    }

    /// Per-CPU slots in every cache. A thread on CPU `c` uses slot `c % n`. Default: the
    /// machine's possible CPUs.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(3).nodes(1).build().unwrap();
    /// assert_eq!(k.cpus(), 3);
    /// assert!(kmem::Kmem::builder().cpus(0).build().is_err());
    /// ```
    pub fn cpus(mut self, n: usize) -> Self {
        self.cpus = Some(n);
        self
    }

    /// Makes page allocations fail on purpose (see [`FaultInjection`]). Default: none.
    ///
    /// ```
    /// use kmem::FaultInjection;
    /// let k = kmem::Kmem::builder()
    ///     .cpus(1)
    ///     .nodes(1)
    ///     .fault_injection(FaultInjection::EveryNth(1)) // every page allocation fails
    ///     .build()
    ///     .unwrap();
    /// let c = k.create_cache("doomed", 64, kmem::CacheConfig::new()).unwrap();
    /// assert!(c.alloc().is_none());
    /// assert!(k.page_stats().injected_failures >= 1);
    /// ```
    pub fn fault_injection(mut self, f: FaultInjection) -> Self {
        self.fault = f;
        self
    }

    /// Builds the instance, validating every parameter.
    ///
    /// ```
    /// use kmem::KmemError;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build()?;
    /// assert_eq!(k.cpus(), 2);
    /// let err = kmem::Kmem::builder().memory_limit(100).build().unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidConfig { parameter: "memory_limit", .. }));
    /// # Ok::<(), KmemError>(())
    /// ```
    pub fn build(self) -> Result<Kmem, KmemError> {
        self.build_shared().map(|shared| Kmem { shared })
    }

    fn build_shared(self) -> Result<NonNull<KmemShared>, KmemError> {
        if !crate::sync::DWord::is_lock_free() {
            return Err(KmemError::NoDoubleWordCas);
        }
        let cfg = |parameter, value, reason| KmemError::InvalidConfig {
            parameter,
            value,
            reason,
        };
        let nr_cpus = self.cpus.unwrap_or_else(cpu::possible_cpus);
        if nr_cpus == 0 || nr_cpus > MAX_CPUS {
            return Err(cfg("cpus", nr_cpus, "must be between 1 and 8192"));
        }
        let fake_nodes = self.nodes.is_some();
        let nr_nodes = self.nodes.unwrap_or_else(cpu::possible_nodes);
        if nr_nodes == 0 || nr_nodes > MAX_NODES {
            return Err(cfg("nodes", nr_nodes, "must be between 1 and 1024"));
        }
        check_os_page_size(os::page_size())?;
        let limit = self.memory_limit.unwrap_or(usize::MAX);
        if limit < PAGE_SIZE {
            return Err(cfg(
                "memory_limit",
                limit,
                "must be at least one page (4096 bytes)",
            ));
        }
        match self.fault {
            FaultInjection::EveryNth(0) => {
                return Err(cfg("fault_injection EveryNth", 0, "n must be at least 1"));
            }
            FaultInjection::Probability { percent, .. } if percent > 100 => {
                return Err(cfg(
                    "fault_injection percent",
                    percent as usize,
                    "must be at most 100",
                ));
            }
            _ => {}
        }

        let nodes_off = core::mem::size_of::<KmemShared>().next_multiple_of(128);
        let slot_off =
            (nodes_off + nr_nodes * core::mem::size_of::<PageAllocator>()).next_multiple_of(64);
        let map_size = (slot_off + nr_cpus * 2).next_multiple_of(PAGE_SIZE);
        let base = os::map(map_size, PAGE_SIZE)
            .ok_or(KmemError::OutOfMemory {
                what: "allocator metadata",
                bytes: map_size,
            })?
            .as_ptr();
        // `base` is a fresh zeroed mapping of `map_size` bytes; each write lands inside it at an
        // offset aligned for its type; the budget's address is final before the page allocators
        // take a pointer to it.
        // SAFETY: each write below stays inside the fresh `base` mapping, aligned for its type.
        unsafe {
            let shared = base as *mut KmemShared;
            let nodes = base.add(nodes_off) as *mut PageAllocator;
            let slot_node = base.add(slot_off) as *mut u16;
            for slot in 0..nr_cpus {
                let nid = if fake_nodes {
                    slot * nr_nodes / nr_cpus
                } else {
                    cpu::cpu_to_node(slot).min(nr_nodes - 1)
                };
                slot_node.add(slot).write(nid as u16);
            }
            ptr::write(
                shared,
                KmemShared {
                    refs: AtomicUsize::new(1),
                    nr_nodes,
                    nr_cpus,
                    tid_step: TidStep::new(nr_cpus),
                    budget: PageBudget::new(limit, self.fault),
                    nodes,
                    slot_node,
                    registry: SpinLock::new(
                        "kmem cache registry lock",
                        Registry {
                            head: ptr::null(),
                            count: 0,
                        },
                    ),
                    leaked: AtomicBool::new(false),
                    map_size,
                },
            );
            let budget = &(*shared).budget as *const PageBudget;
            for nid in 0..nr_nodes {
                ptr::write(nodes.add(nid), PageAllocator::new(nid, budget));
                // The instance outlives its page allocators (they live inside it).
                (*nodes.add(nid)).set_reclaim_hook(reclaim_hook, shared as *const ());
            }
            Ok(NonNull::new_unchecked(shared))
        }
    }
}

/// The reclaim hook of every page allocator of an instance: `arg` is the instance.
fn reclaim_hook(arg: *const ()) {
    // SAFETY: registered by `build_shared` with the address of the instance that contains the
    // calling page allocator, so it is alive while that allocator runs.
    let s = unsafe { &*(arg as *const KmemShared) };
    s.reclaim();
}

/// Refuses an OS page size kmem cannot work with. kmem's page (`PAGE_SIZE`, 4 KiB) is its own
/// unit; the OS page may be larger (16 KiB, 64 KiB): then only free blocks of at least one OS
/// page are returned to the OS. A chunk must be a whole number of OS pages (mappings are
/// trimmed and protected in OS pages), and every power of two up to `CHUNK_SIZE` is.
fn check_os_page_size(os_page_size: usize) -> Result<(), KmemError> {
    if os_page_size.is_power_of_two() && os_page_size <= CHUNK_SIZE {
        Ok(())
    } else {
        Err(KmemError::UnsupportedPageSize { os_page_size })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn os_page_sizes_up_to_a_chunk_are_supported() {
        for p in [4096, 16 << 10, 64 << 10, 2 << 20, CHUNK_SIZE] {
            assert_eq!(check_os_page_size(p), Ok(()), "{p}");
        }
        for p in [0, 3000, 12 << 10, 2 * CHUNK_SIZE] {
            let e = check_os_page_size(p).unwrap_err();
            assert_eq!(e, KmemError::UnsupportedPageSize { os_page_size: p });
            assert!(e.to_string().contains("page size"), "{e}");
        }
        assert_eq!(check_os_page_size(os::page_size()), Ok(()));
    }
}

/// Tears an instance down once its last handle is gone.
///
/// # Safety
/// No handle or cache refers to `shared` any more.
unsafe fn destroy_shared(shared: NonNull<KmemShared>) {
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
            ptr::drop_in_place(s.nodes.add(nid) as *mut PageAllocator);
        }
        let size = s.map_size;
        ptr::drop_in_place(shared.as_ptr());
        os::unmap(shared.cast(), size, PAGE_SIZE);
    }
}

// Silence "never read" for fields kept for debugging and loom.
impl Registry {
    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Kmem>();
    is::<KmemCache>();
    let _ = Cell::<u8>::new;
}
