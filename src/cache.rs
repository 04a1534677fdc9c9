//! [`KmemCache`]: the public handle of one object cache. The cache itself (`CacheInner`,
//! `struct kmem_cache`) and everything it does live in `slub/`.

use crate::config::CacheConfig;
use crate::deferred::Deferred;
use crate::error::KmemError;
use crate::instance::Kmem;
use crate::slub::CacheInner;
use crate::stats::{CacheStats, SlabInfo};
use crate::sync::{AtomicPtr, Ordering};
use core::fmt;
use core::ptr::{self, NonNull};
/// An object cache (`struct kmem_cache`): fixed-size objects carved from slabs, with a lockless
/// per-CPU fast path.
///
/// `Send + Sync`: share it between threads by reference or in an `Arc`. Dropping it destroys
/// the cache (`kmem_cache_destroy`): CPU slabs are flushed and empty slabs returned; objects
/// still allocated are reported on stderr with the cache name and count, and their slabs are
/// leaked rather than freed under them.
///
/// ```
/// use kmem::{CacheConfig, Kmem};
/// let k = Kmem::builder().cpus(2).nodes(1).build()?;
/// let cache = k.create_cache("conn", 192, CacheConfig::new().align(64))?;
/// let p = cache.alloc().expect("memory");
/// // SAFETY: `p` is a live 192-byte object of `cache`.
/// unsafe { p.as_ptr().write_bytes(0xab, 192) };
/// // SAFETY: `p` came from `cache` and is freed once.
/// unsafe { cache.free(p) };
/// assert_eq!(cache.name(), "conn");
/// assert_eq!(cache.size(), 192);
/// # Ok::<(), kmem::KmemError>(())
/// ```
pub struct KmemCache {
    pub(crate) inner: NonNull<CacheInner>,
    pub(crate) kmem: Kmem,
    /// The deferred-free state (`deferred.rs`), created by the first deferred free; null
    /// until then.
    pub(crate) deferred: AtomicPtr<Deferred>,
}

// SAFETY: the cache's shared state is synchronised internally (see CacheInner).
unsafe impl Send for KmemCache {}
// SAFETY: as above.
unsafe impl Sync for KmemCache {}

// Unwind safety: see the note on `Kmem`'s impls (a panicking constructor leaks the slab it was
// building and nothing else).
impl core::panic::UnwindSafe for KmemCache {}
impl core::panic::RefUnwindSafe for KmemCache {}

impl fmt::Debug for KmemCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemCache")
            .field("name", &self.name())
            .field("object_size", &self.object_size())
            .field("size", &self.size())
            .field("order", &self.order())
            .field("objects_per_slab", &self.objects_per_slab())
            .finish()
    }
}

impl KmemCache {
    /// Creates a cache on [`Kmem::global()`].
    ///
    /// ```
    /// let cache = kmem::KmemCache::new("global-objs", 48, kmem::CacheConfig::new())?;
    /// let p = cache.alloc().unwrap();
    /// // SAFETY: `p` came from `cache` and is freed once.
    /// unsafe { cache.free(p) };
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn new(name: &str, size: usize, config: CacheConfig) -> Result<KmemCache, KmemError> {
        Kmem::global().create_cache(name, size, config)
    }

    #[inline(always)]
    pub(crate) fn inner(&self) -> &CacheInner {
        // SAFETY: the inner block lives until this handle is dropped.
        unsafe { self.inner.as_ref() }
    }

    /// Allocates one object (`kmem_cache_alloc`). `None` only when memory is exhausted (the
    /// memory limit, the OS, or injected faults).
    ///
    /// The object is uninitialised (or as the constructor left it).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("objs", 32, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().expect("memory");
    /// // SAFETY: `p` is a live 32-byte object of `c`.
    /// unsafe { p.as_ptr().write_bytes(0, 32) };
    /// assert_eq!(c.info().active_objs, 1);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    ///
    /// // Every page allocation fails: no slab, so no object.
    /// let failing = kmem::Kmem::builder()
    ///     .cpus(1)
    ///     .nodes(1)
    ///     .fault_injection(kmem::FaultInjection::EveryNth(1))
    ///     .build()
    ///     .unwrap();
    /// let c = failing.create_cache("starved", 32, kmem::CacheConfig::new()).unwrap();
    /// assert!(c.alloc().is_none());
    /// ```
    #[inline]
    pub fn alloc(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.inner().slab_alloc(None))
    }

    /// Allocates one object from a slab of `node` (`kmem_cache_alloc_node`), falling back to
    /// allocating a new slab there, and `None` only if that node has no memory.
    ///
    /// What "of `node`" means: the slab comes from node `node`'s partial lists and page
    /// allocator, so [`KmemCache::node_of`] reports `node` and the node's accounting holds it.
    /// kmem maps each node's memory without a NUMA memory policy (no `mbind`), so on a real
    /// NUMA machine the kernel places each page where it is first touched — by default on the
    /// node of the CPU that first writes it, usually a CPU of that node when threads allocate
    /// locally, but not guaranteed. With fake nodes ([`crate::KmemBuilder::nodes`]) a node is an
    /// accounting and locking domain only.
    ///
    /// # Panics
    /// If `node >= self.kmem().nodes()`.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(2).build().unwrap();
    /// let c = k.create_cache("per-node", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc_node(1).unwrap();
    /// assert_eq!(c.node_of(p), 1);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    #[inline]
    pub fn alloc_node(&self, node: usize) -> Option<NonNull<u8>> {
        let n = self.inner().nr_nodes;
        assert!(
            node < n,
            "kmem: alloc_node({node}) on cache {:?}: the allocator has {n} node(s)",
            self.name()
        );
        NonNull::new(self.inner().slab_alloc(Some(node)))
    }

    /// Returns an object to the cache (`kmem_cache_free`).
    ///
    /// O(1) checks run on every free: a pointer that kmem never handed out, one inside a free
    /// page, or one from another cache aborts the process with a message naming both caches; a
    /// pointer into one of this cache's slabs that is not the start of an object (an interior
    /// pointer, or one past the last object) aborts naming the cache, the object size and the
    /// slab base. A double free aborts (`double free of 0x…`) when it is cheap to see: the
    /// object is already the head of the freelist it would be linked onto, or freeing it would
    /// make its slab count fewer than zero objects in use. Other double frees are not detected,
    /// unless the cache has [`CacheFlags::CONSISTENCY_CHECKS`](crate::CacheFlags::CONSISTENCY_CHECKS),
    /// which searches the slab's freelist on every free (and checks red zones and poison).
    ///
    /// # Safety
    /// `obj` was returned by this cache's `alloc`/`alloc_node`/`alloc_bulk`, is not used after
    /// this call, and is not freed twice.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("reuse", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` came from `c`, is not used afterwards, and is freed once.
    /// unsafe { c.free(p) };
    /// assert_eq!(c.info().active_objs, 0);
    /// // With one CPU slot the freed object is the next one handed out (LIFO, cache-hot).
    /// let q = c.alloc().unwrap();
    /// assert_eq!(q, p);
    /// // SAFETY: `q` came from `c` and is freed once.
    /// unsafe { c.free(q) };
    /// ```
    #[inline]
    pub unsafe fn free(&self, obj: NonNull<u8>) {
        // SAFETY: forwarded contract.
        unsafe { self.inner().cache_free(obj.as_ptr()) }
    }

    /// Frees `obj` after a grace period (`kfree_rcu`): its memory is reused only after every
    /// thread pinned in `guard`'s collector at the time of the call has unpinned, so a reader
    /// that found `obj` while pinned may keep reading it until it unpins.
    ///
    /// Frees are batched per CPU slot (the `rcu_free` sheaf): a batch of 64 objects is handed to
    /// the collector as one deferred closure when it fills, when [`KmemCache::flush_deferred`]
    /// or [`KmemCache::shrink`] runs, or when the cache is dropped. A cache dropped with deferred
    /// objects pending stays alive (and listed in `slabinfo`) until they have been freed; then
    /// it is destroyed. With `epoch::unprotected()` the object is freed at once. This is never
    /// reached from the global allocator (see the `epoch` module docs).
    ///
    /// # Safety
    /// As [`KmemCache::free`]: `obj` came from this cache, is given up by the caller and is
    /// passed to `free` or `free_deferred` once. Readers may still access it while pinned.
    ///
    /// ```
    /// use kmem::epoch;
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("nodes", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// let collector = epoch::Collector::new();
    /// let reader = collector.register();
    /// let writer = collector.register();
    /// let r = reader.pin(); // a reader that may still hold `p`
    /// // SAFETY: `p` came from `c`, is unlinked and freed once.
    /// unsafe { c.free_deferred(p, &writer.pin()) };
    /// c.flush_deferred(&writer.pin());
    /// assert_eq!(c.deferred_pending(), 1); // the reader is still pinned
    /// drop(r);
    /// for _ in 0..4 {
    ///     writer.pin().flush(); // advance the epoch and run what is due
    /// }
    /// assert_eq!(c.deferred_pending(), 0);
    /// assert_eq!(c.info().active_objs, 0);
    /// ```
    pub unsafe fn free_deferred(&self, obj: NonNull<u8>, guard: &crate::epoch::Guard) {
        // The same O(1) checks as `free`, now rather than in the deferred closure.
        self.inner().owning_slab(obj.as_ptr());
        // SAFETY: the block lives as long as this handle; the caller gives `obj` up.
        unsafe { Deferred::defer(self.deferred(), obj.as_ptr() as usize, None, guard) }
    }

    /// Hands every CPU slot's partly filled batch of deferred frees to its collector and
    /// flushes `guard`'s thread-local bag (`Guard::flush`): afterwards every object passed to
    /// [`KmemCache::free_deferred`] is freed by the collector once its grace period is over,
    /// without waiting for more deferred frees to fill its batch.
    ///
    /// ```
    /// use kmem::epoch;
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("flushed", 64, kmem::CacheConfig::new()).unwrap();
    /// let collector = epoch::Collector::new();
    /// let h = collector.register();
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free_deferred(p, &h.pin()) };
    /// while c.deferred_pending() > 0 {
    ///     c.flush_deferred(&h.pin());
    /// }
    /// assert_eq!(c.info().active_objs, 0);
    /// ```
    pub fn flush_deferred(&self, guard: &crate::epoch::Guard) {
        let d = self.deferred.load(Ordering::Acquire);
        if !d.is_null() {
            // SAFETY: the block lives as long as this handle.
            unsafe { Deferred::flush(d, Some(guard)) };
        }
        guard.flush();
    }

    /// Objects passed to [`KmemCache::free_deferred`] (or dropped with
    /// [`SlabBox::drop_deferred`](crate::SlabBox::drop_deferred)) that are not freed yet.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("none-yet", 64, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.deferred_pending(), 0);
    /// ```
    pub fn deferred_pending(&self) -> usize {
        let d = self.deferred.load(Ordering::Acquire);
        if d.is_null() {
            return 0;
        }
        // SAFETY: the block lives as long as this handle.
        unsafe { (*d).pending() }
    }

    /// This cache's deferred-free block, created on first use.
    pub(crate) fn deferred(&self) -> *const Deferred {
        let d = self.deferred.load(Ordering::Acquire);
        if !d.is_null() {
            return d;
        }
        let new = Box::into_raw(Box::new(Deferred::new(self)));
        match self.deferred.compare_exchange(
            ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => new,
            Err(cur) => {
                // SAFETY: `new` was never published; it is ours.
                drop(unsafe { Box::from_raw(new) });
                cur
            }
        }
    }

    /// Allocates up to `out.len()` objects (`kmem_cache_alloc_bulk`), filling a prefix of `out`
    /// and returning its length (shorter only when memory runs out). One slot-lock round trip
    /// and two CAS cover the whole batch.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("bulk", 32, kmem::CacheConfig::new()).unwrap();
    /// let mut objs = [core::ptr::null_mut(); 100];
    /// assert_eq!(c.alloc_bulk(&mut objs), 100);
    /// let objs: Vec<_> = objs.iter().map(|&p| core::ptr::NonNull::new(p).unwrap()).collect();
    /// // SAFETY: every pointer in `objs` came from `c` and is freed once.
    /// unsafe { c.free_bulk(&objs) };
    /// assert_eq!(c.info().active_objs, 0);
    /// ```
    pub fn alloc_bulk(&self, out: &mut [*mut u8]) -> usize {
        self.inner().alloc_bulk(out)
    }

    /// Frees many objects (`kmem_cache_free_bulk`): objects of the same slab are linked into
    /// one detached freelist and returned with one CAS.
    ///
    /// # Safety
    /// As [`KmemCache::free`] for every element; no element appears twice.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("batch", 48, kmem::CacheConfig::new()).unwrap();
    /// let objs: Vec<_> = (0..50).map(|_| c.alloc().unwrap()).collect();
    /// assert_eq!(c.info().active_objs, 50);
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) };
    /// assert_eq!(c.info().active_objs, 0);
    /// ```
    pub unsafe fn free_bulk(&self, objs: &[NonNull<u8>]) {
        // SAFETY: forwarded contract.
        unsafe { self.inner().free_bulk(objs) }
    }

    /// Checks every slab the cache's nodes hold (`/sys/kernel/slab/<cache>/validate`): the
    /// first defect is reported on stderr in the kernel's words (`BUG <cache> (kmem): Poison
    /// overwritten`, with hex dumps and, under [`CacheFlags::STORE_USER`](crate::CacheFlags),
    /// the last owners) and returned as [`KmemError::CacheCorrupted`]. Nothing is repaired.
    ///
    /// On a cache with debug flags every slab is on a node list (partial or full) and is
    /// checked whole under its node's lock: counters, freelist (every pointer an object, no
    /// cycle, the free count against `inuse`), each free object's red zones, poison, padding
    /// and free pointer, each allocated object's red zones and padding, the end of the slab,
    /// and the node's counts. On a cache without debug flags the CPU slots are flushed first
    /// (as the kernel does); then the node partial slabs' freelists and counters are checked.
    /// Full slabs of such a cache are on no list and are not seen, nor is the content of any
    /// object (there are no red zones or poison to check).
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags, KmemError};
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let cfg = CacheConfig::new().flags(CacheFlags::RED_ZONE | CacheFlags::POISON);
    /// let c = k.create_cache("validated", 64, cfg).unwrap();
    /// let p = c.alloc().unwrap();
    /// assert!(c.validate().is_ok());
    /// // A write one byte past the object lands in its right red zone.
    /// // SAFETY: deliberately corrupting kmem's metadata (the red zone after the object), which stays mapped slab memory; validate reads it and nothing else relies on it.
    /// unsafe { p.as_ptr().add(64).write(0) };
    /// let err = c.validate().unwrap_err(); // the report is on stderr
    /// assert!(matches!(err, KmemError::CacheCorrupted { kind: "Right Redzone overwritten", .. }));
    /// ```
    pub fn validate(&self) -> Result<(), KmemError> {
        self.inner().validate_slab_cache()
    }

    /// Flushes every CPU slot's slabs and partial lists to the nodes, frees every empty slab
    /// (ignoring `min_partial`), and returns free pages to the OS (`kmem_cache_shrink`).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("shrinkable", 512, kmem::CacheConfig::new()).unwrap();
    /// let objs: Vec<_> = (0..200).map(|_| c.alloc().unwrap()).collect();
    /// assert!(c.info().num_slabs > 0);
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) };
    /// c.shrink();
    /// assert_eq!(c.info().num_slabs, 0); // every (now empty) slab went back to the pages
    /// ```
    pub fn shrink(&self) {
        let d = self.deferred.load(Ordering::Acquire);
        if !d.is_null() {
            // SAFETY: the block lives as long as this handle.
            unsafe { Deferred::flush(d, None) };
        }
        self.inner().shrink()
    }

    /// [`KmemCache::shrink`], and for a [`TYPESAFE_BY_RCU`](crate::CacheFlags::TYPESAFE_BY_RCU)
    /// cache also the release of its empty slabs after a grace period (`SLAB_TYPESAFE_BY_RCU`'s
    /// `call_rcu` of a slab): they leave the partial lists now — no allocation reuses them —
    /// and go back to the page allocator once every thread pinned in `guard`'s collector at
    /// the time of the call has unpinned. A reader pinned there that still holds a pointer into
    /// one of them keeps seeing an object of the cache until it unpins. Readers pinned in
    /// another collector are not covered: use the collector the readers use (an unprotected
    /// guard releases at once). For an ordinary cache this is `shrink`.
    ///
    /// ```
    /// use kmem::{epoch, CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let cfg = CacheConfig::new().flags(CacheFlags::TYPESAFE_BY_RCU);
    /// let c = k.create_cache("ts-release", 256, cfg).unwrap();
    /// let objs: Vec<_> = (0..100).map(|_| c.alloc().unwrap()).collect();
    /// // SAFETY: every pointer came from `c` and is freed once.
    /// unsafe { c.free_bulk(&objs) };
    /// let reader = epoch::pin(); // a lock-free reader, still pinned
    /// c.shrink_deferred(&epoch::pin());
    /// assert!(objs.iter().all(|&p| c.node_of(p) == 0)); // still objects of `c`
    /// drop(reader);
    /// // Once the epoch has moved on, the slabs go back to the page allocator.
    /// for _ in 0..1000 {
    ///     if c.info().num_slabs == 0 {
    ///         break;
    ///     }
    ///     epoch::pin().flush();
    /// }
    /// assert_eq!(c.info().num_slabs, 0);
    /// ```
    pub fn shrink_deferred(&self, guard: &crate::epoch::Guard) {
        self.shrink();
        let inner = self.inner();
        if !inner
            .flags
            .contains(crate::config::CacheFlags::TYPESAFE_BY_RCU)
        {
            return;
        }
        let d = self.deferred();
        for nid in 0..inner.nr_nodes {
            let (chain, n) = inner.take_empty_partials(nid);
            if n != 0 {
                // SAFETY: the block lives as long as this handle; the chain was just unlinked.
                unsafe { Deferred::defer_slabs(d, chain, n, guard) };
            }
        }
        guard.flush();
    }

    /// Empty `TYPESAFE_BY_RCU` slabs handed to a collector by
    /// [`KmemCache::shrink_deferred`] and not yet released.
    pub fn deferred_slabs(&self) -> usize {
        let d = self.deferred.load(Ordering::Acquire);
        if d.is_null() {
            return 0;
        }
        // SAFETY: the block lives as long as this handle.
        unsafe { (*d).pending_slabs() }
    }

    /// Event counters summed over the CPU slots (zero without the `stats` feature).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("counted", 64, kmem::CacheConfig::new()).unwrap();
    /// let objs: Vec<_> = (0..10).map(|_| c.alloc().unwrap()).collect();
    /// for p in objs {
    ///     // SAFETY: each `p` came from `c` and is freed once.
    ///     unsafe { c.free(p) };
    /// }
    /// let s = c.stats();
    /// if cfg!(feature = "stats") {
    ///     assert_eq!(s.alloc_fastpath + s.alloc_slowpath, 10);
    ///     assert_eq!(s.free_fastpath + s.free_slowpath, 10);
    /// } else {
    ///     assert_eq!(s, kmem::CacheStats::default());
    /// }
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.inner().stats()
    }

    /// This cache's exact slabinfo row.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("rowed", 128, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc().unwrap();
    /// let row = c.info();
    /// assert_eq!((row.name.as_str(), row.active_objs, row.num_slabs), ("rowed", 1, 1));
    /// assert_eq!((row.objsize, row.objperslab), (c.size(), c.objects_per_slab()));
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn info(&self) -> SlabInfo {
        self.inner().slabinfo()
    }

    /// The name given at creation.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("dentry", 192, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.name(), "dentry");
    /// ```
    pub fn name(&self) -> &str {
        self.inner().name()
    }

    /// The object size asked for.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("odd-size", 20, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.object_size(), 20);
    /// assert_eq!(c.size(), 24); // rounded up to a whole word
    /// ```
    pub fn object_size(&self) -> usize {
        self.inner().geo.object_size
    }

    /// Bytes each object takes in a slab, with alignment and metadata.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("padded", 100, CacheConfig::new().align(64)).unwrap();
    /// assert_eq!(c.size(), 128); // 100 bytes, padded to the alignment
    /// assert!(c.size() >= c.object_size());
    /// ```
    pub fn size(&self) -> usize {
        self.inner().geo.size
    }

    /// Object alignment.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("al", 40, CacheConfig::new().align(16)).unwrap();
    /// assert_eq!(c.align(), 16);
    /// let p = c.alloc().unwrap();
    /// assert_eq!(p.as_ptr() as usize % c.align(), 0);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn align(&self) -> usize {
        self.inner().geo.align
    }

    /// The preferred slab order (`oo`): slabs are `2^order` pages.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("pages", 4096, kmem::CacheConfig::new()).unwrap();
    /// assert!(c.order() > 0); // several page-sized objects per slab
    /// assert_eq!(c.objects_per_slab(), (4096 << c.order()) / c.size());
    /// ```
    pub fn order(&self) -> u32 {
        self.inner().geo.oo.order
    }

    /// The fallback slab order (`min`) used when the preferred order is not available.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("fallback", 4096, kmem::CacheConfig::new()).unwrap();
    /// // A single page still holds one object if no larger block is free.
    /// assert_eq!(c.min_order(), 0);
    /// assert!(c.min_order() <= c.order());
    /// ```
    pub fn min_order(&self) -> u32 {
        self.inner().geo.min.order
    }

    /// Objects per slab at the preferred order.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("small", 64, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.order(), 0);
    /// assert_eq!(c.objects_per_slab(), 4096 / 64);
    /// ```
    pub fn objects_per_slab(&self) -> usize {
        self.inner().geo.oo.objects as usize
    }

    /// Empty slabs kept per node.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let default = k.create_cache("dflt", 64, CacheConfig::new()).unwrap();
    /// assert!((5..=10).contains(&default.min_partial()));
    /// let tuned = k.create_cache("tuned", 64, CacheConfig::new().min_partial(2)).unwrap();
    /// assert_eq!(tuned.min_partial(), 2);
    /// ```
    pub fn min_partial(&self) -> usize {
        self.inner().geo.min_partial
    }

    /// Slabs kept per CPU partial list (0: disabled).
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("cp", 64, CacheConfig::new()).unwrap();
    /// assert!(c.cpu_partial_slabs() > 0); // on by default
    /// let off = k.create_cache("cp-off", 64, CacheConfig::new().cpu_partial_slabs(0)).unwrap();
    /// assert_eq!(off.cpu_partial_slabs(), 0);
    /// ```
    pub fn cpu_partial_slabs(&self) -> usize {
        self.inner().geo.cpu_partial_slabs
    }

    /// Objects per sheaf (0: the cache has no sheaves; see [`CacheConfig::sheaf_capacity`]).
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let plain = k.create_cache("no-sheaves", 64, CacheConfig::new()).unwrap();
    /// assert_eq!(plain.sheaf_capacity(), 0);
    /// let c = k.create_cache("sheaves-26", 512, CacheConfig::new().sheaf_capacity(26)).unwrap();
    /// assert_eq!(c.sheaf_capacity(), 28); // rounded up to fill whole cache lines
    /// ```
    ///
    /// [`CacheConfig::sheaf_capacity`]: crate::CacheConfig::sheaf_capacity
    pub fn sheaf_capacity(&self) -> usize {
        self.inner().pool.capacity
    }

    /// Whether allocations and frees use the sheaves now (a cache with a capacity starts with
    /// them on; see [`KmemCache::set_sheaves`]).
    pub fn uses_sheaves(&self) -> bool {
        self.inner().use_sheaves()
    }

    /// Switches a cache that has sheaves between them and the cpu-slab design, for
    /// comparisons in one process. Switching off flushes every sheaf back to the slabs. Both
    /// designs are correct at every moment, including during the switch; an operation that
    /// raced with it may still leave an object in a sheaf, where it stays free (and counted
    /// free) until the next flush or shrink. Returns whether the cache now uses sheaves: never
    /// for a cache created without a capacity, nor for a cache with slub_debug flags (every
    /// object of those goes through the checked node-only paths).
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("switch", 64, CacheConfig::new().sheaf_capacity(60)).unwrap();
    /// assert!(c.uses_sheaves());
    /// assert!(!c.set_sheaves(false)); // now the {freelist, tid} fast paths alone
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// assert!(c.set_sheaves(true));
    /// ```
    pub fn set_sheaves(&self, on: bool) -> bool {
        self.inner().set_sheaves(on)
    }

    /// The allocator this cache belongs to.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(3).nodes(1).build().unwrap();
    /// let c = k.create_cache("child", 64, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.kmem().cpus(), 3);
    /// // A sibling cache on the same instance, from the cache alone.
    /// let sib = c.kmem().create_cache("sibling", 32, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(k.slabinfo().len(), 2);
    /// # drop(sib);
    /// ```
    pub fn kmem(&self) -> &Kmem {
        &self.kmem
    }

    /// The node whose memory holds `obj` (an object of this cache).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(2).build().unwrap();
    /// let c = k.create_cache("numa", 64, kmem::CacheConfig::new()).unwrap();
    /// let p = c.alloc_node(0).unwrap();
    /// let q = c.alloc().unwrap();
    /// assert_eq!(c.node_of(p), 0);
    /// assert!(c.node_of(q) < k.nodes());
    /// // SAFETY: `p` and `q` came from `c` and are each freed once.
    /// unsafe { c.free_bulk(&[p, q]) };
    /// ```
    pub fn node_of(&self, obj: NonNull<u8>) -> usize {
        // SAFETY: owning_slab checked the pointer and returned a live slab descriptor.
        unsafe { (*self.inner().owning_slab(obj.as_ptr())).node() }
    }
}

impl Drop for KmemCache {
    fn drop(&mut self) {
        let d = self.deferred.load(Ordering::Acquire);
        if !d.is_null() {
            // SAFETY: the only handle is going away; the deferred block now owns the cache and destroys it once nothing is pending (deferred.rs).
            unsafe { Deferred::release(d) };
            return;
        }
        self.kmem.shared().unregister(self.inner);
        // SAFETY: this handle was the cache's only owner and it is now unregistered.
        unsafe { CacheInner::destroy(self.inner) };
    }
}
