//! # kmem — a user-space, SLUB-style, lockless slab allocator
//!
//! kmem brings the Linux SLUB allocator (the `kmem_cache_cpu` generation, Linux 3.x–6.x) to
//! user space: every cache has a per-CPU slot whose `{freelist, tid}` pair is swapped by one
//! 16-byte compare-and-swap on the fast path; slabs owned by a CPU are *frozen* and take remote
//! frees with one CAS and no list work; per-CPU and per-node partial lists hold partly used
//! slabs; slabs come from a per-node buddy page allocator with order fallback; kmalloc size
//! classes back a drop-in `#[global_allocator]`.
//!
//! ```
//! use kmem::{CacheConfig, Kmem};
//! let k = Kmem::builder().memory_limit(64 << 20).nodes(2).cpus(4).build()?;
//! let cache = k.create_cache("conn", 192, CacheConfig::new().align(64))?;
//! let p = cache.alloc().unwrap();
//! // SAFETY: `p` came from `cache` and is freed once.
//! unsafe { cache.free(p) };
//! println!("{:?}", cache.stats());
//! let typed: kmem::Cache<[u64; 8]> = kmem::Cache::new("block")?;
//! let b = typed.alloc([0; 8]).unwrap();
//! # drop(b);
//! # Ok::<(), kmem::KmemError>(())
//! ```
//!
//! ## Data model (names follow `mm/slub.c`)
//!
//! ```text
//! Kmem ──────────── KmemShared: nodes[] (PageAllocator each), slot→node table, registry
//!  └─ KmemCache ─── CacheInner (struct kmem_cache): geometry, ctor, flags
//!       ├─ cpu_slab[nr_cpus]  KmemCacheCpu: {freelist, tid} (16-byte CAS), slab, partial, lock
//!       └─ node[nr_nodes]     KmemCacheNode: list_lock, partial list, totals
//! Page (struct page / struct slab, 64 B, out of band): {freelist, counters}, cache, links, info
//! ```
//!
//! The tree, one folder per layer from the bottom up: `sync` (the only module that names
//! atomics, cells and locks; the loom backend under `--cfg loom`), [`cpu`] (which slot am I
//! on), `os`, `page` (the buddy page allocator and page descriptors), `slub` (a cache's data
//! model and protocols, with the lock order on its first screen), `config` and `cache` (the
//! public cache types), `instance` ([`Kmem`]), `kmalloc` (size classes and [`Kmalloc`]), `typed`,
//! `stats`, `error`. The [`implementation`] module renders `docs/design.md`: the map, every
//! protocol and its invariant.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod cache;
mod config;
pub mod cpu;
mod debug;
mod deferred;
mod error;
mod instance;
#[cfg(not(loom))]
mod kmalloc;
mod os;
mod page;
mod slub;
mod stats;
mod sync;
mod typed;

pub use cache::KmemCache;
pub use config::{
    default_sheaf_capacity, CacheConfig, CacheFlags, CACHE_LINE_SIZE, MAX_CACHE_NAME,
};
/// crossbeam-epoch, re-exported: the guards that [`KmemCache::free_deferred`] and
/// [`SlabBox::drop_deferred`] take.
///
/// Deferred frees are never reached from the global allocator: [`Kmalloc`]'s paths (`kmalloc`,
/// `kfree`, `krealloc`) never defer and never enter crossbeam-epoch, which itself allocates
/// through the global allocator (`tests/deferred_global.rs` checks it).
///
/// Under `--cfg loom` kmem depends on crossbeam-epoch with its `loom` feature; build with
/// `--cfg loom --cfg crossbeam_loom` so that its atomics are loom's too (crossbeam then has no
/// default collector: use a [`Collector`](epoch::Collector) per model).
///
/// ```
/// let collector = kmem::epoch::Collector::new();
/// let handle = collector.register();
/// let guard = handle.pin();
/// assert!(guard.collector().is_some());
/// ```
pub use crossbeam_epoch as epoch;
pub use error::KmemError;
pub use instance::{Kmem, KmemBuilder, MAX_CPUS, MAX_NODES};
#[cfg(not(loom))]
pub use kmalloc::cabi;
#[cfg(all(feature = "debug-reentrancy", not(loom)))]
#[doc(hidden)]
pub use kmalloc::kmalloc_reentrancy_simulate_enter;
#[cfg(not(loom))]
pub use kmalloc::{
    kmalloc_class_for, kmalloc_reentrancy_guard, kmalloc_set_sheaves, kmalloc_sheaves,
    kmalloc_size_classes, Kmalloc, KmallocClasses, KmallocKernel, KMALLOC_MAX_CACHE_SIZE,
    KMALLOC_SHEAVES_DEFAULT,
};
pub use page::{FaultInjection, PageStats, DEFAULT_DECAY_MS, STATS_ORDERS};
pub use slub::sheaf::MAX_SHEAF_CAPACITY;
pub use stats::{CacheStats, SlabInfo, SlabInfoTable};
pub use typed::{Cache, SlabBox};

/// kmem's own 16-byte double word, for `benches/fastpath.rs` to measure the `{freelist, tid}`
/// protocol's floor with the very instructions the fast paths run; not part of the API.
#[cfg(not(loom))]
#[doc(hidden)]
pub use sync::BenchDWord as __BenchDWord;

#[cfg(all(not(loom), not(target_os = "linux")))]
compile_error!(
    "kmem runs on Linux only (it uses mmap/madvise, sched_getcpu, rseq and sysfs topology)"
);

#[doc = include_str!("../docs/design.md")]
pub mod implementation {}

/// Internals exposed to `loom-tests/` only (built with `--cfg loom`); not part of the API.
#[cfg(loom)]
#[doc(hidden)]
#[path = "loom_api.rs"]
pub mod __loom;
