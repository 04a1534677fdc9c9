//! [`Kmem`]: one allocator instance — its nodes (each with a buddy page allocator), its CPU
//! slots' topology, its memory budget and the registry of its caches.
//!
//! An instance's shared state ([`KmemShared`]) lives in one mapping taken from the OS, so that
//! the process-wide instance behind [`Kmalloc`](crate::Kmalloc) can be built from inside the
//! global allocator without allocating. [`Kmem`] is a reference-counted handle to it; every
//! cache holds one, so an instance lives until its last handle and cache are gone.
//!
//! Files: this one ([`Kmem`]: the handle, the global instance, the instance-wide operations),
//! `shared.rs` (`KmemShared`: nodes, slot→node table, the cache registry, reclaim, teardown),
//! `builder.rs` ([`KmemBuilder`]: validation and construction), `fork.rs` (the `pthread_atfork`
//! handlers that keep the global instance usable in a child).

mod builder;
// The fork handlers use `KmemShared::fork_*`, which do not exist under loom or Miri.
#[cfg(not(any(loom, miri)))]
mod fork;
mod shared;

pub use builder::KmemBuilder;
use shared::destroy_shared;
pub(crate) use shared::{KmemShared, Registry};

use crate::cache::KmemCache;
use crate::config::CacheConfig;
use crate::error::KmemError;
use crate::page::{
    FaultInjection, PageAllocator, PageBudget, PageStats, PcpSlot, CHUNK_SIZE, DEFAULT_DECAY_MS,
    PAGE_SIZE,
};
use crate::slub::cpu_slab::TidStep;
use crate::slub::CacheInner;
use crate::stats::SlabInfo;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Cell, OnceSlot, Ordering, SpinLock};
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
            None => crate::os::abort_msg(&[
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
            // A malformed KMEM_DEBUG stops the process here, with a message naming the bad
            // part (the error the builder would return needs an allocation).
            crate::debug::flags::check_env_or_abort();
            let k = KmemBuilder::default()
                .decay_from_env()
                .build_shared()
                .ok()
                .map(|shared| Kmem { shared })?;
            // fork.rs: lock every lock of the global instance across fork() (once).
            #[cfg(not(any(loom, miri)))]
            fork::register_fork_handlers();
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
        self.create_cache_in(name, size, config, None)
    }

    /// [`Self::create_cache`], the metadata in `arena` when it fits there (kmalloc's caches,
    /// which are never destroyed: see [`MetaArena`](crate::slub::MetaArena)).
    pub(crate) fn create_cache_in(
        &self,
        name: &str,
        size: usize,
        config: CacheConfig,
        arena: Option<&mut crate::slub::MetaArena>,
    ) -> Result<KmemCache, KmemError> {
        let inner = CacheInner::create(self.shared(), name, size, &config, arena)?;
        self.shared().register(inner);
        Ok(KmemCache {
            inner,
            kmem: self.clone(),
            deferred: crate::sync::AtomicPtr::new(core::ptr::null_mut()),
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
            let mut name = [0u8; crate::config::MAX_CACHE_NAME];
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
            let pages = self.shared().node_pages(nid);
            pages.drain_pcp(false);
            pages.release_free();
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

    /// How this instance's fast paths commit (see [`KmemBuilder::commit_mode`]).
    ///
    /// ```
    /// let k = kmem::Kmem::builder().build().unwrap();
    /// if kmem::cpu::commit_mode() == kmem::cpu::CommitMode::Locked {
    ///     assert_eq!(k.commit_mode(), kmem::cpu::CommitMode::Locked);
    /// }
    /// ```
    pub fn commit_mode(&self) -> cpu::CommitMode {
        if self.shared().rseq {
            cpu::CommitMode::Rseq
        } else {
            cpu::CommitMode::Locked
        }
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
        cpu::slot_of(cpu::current_cpu(), self.cpus())
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
