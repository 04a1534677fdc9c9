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
//! Modules, one per concept: [`cpu`] (which slot am I on), `page` (buddy page allocator and
//! page descriptors), `slab` (`struct slab` and its counters), `cpu_slab`
//! (`kmem_cache_cpu`), `node` (`kmem_cache_node`), `cache` (`kmem_cache`: geometry and the
//! public handle), `slub` (the protocols), `kmalloc` (size classes and the global allocator),
//! `stats`, and `sync` (the only module that names atomics, cells and locks; loom under
//! `--cfg loom`). The lock order is documented at the top of `slub.rs`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod cache;
pub mod cpu;
mod cpu_slab;
mod error;
mod instance;
#[cfg(not(loom))]
mod kmalloc;
mod node;
mod os;
mod page;
mod slab;
mod slub;
mod stats;
mod sync;
mod typed;

pub use cache::{CacheConfig, CacheFlags, KmemCache, CACHE_LINE_SIZE};
pub use error::KmemError;
pub use instance::{Kmem, KmemBuilder, MAX_CPUS, MAX_NODES};
#[cfg(all(feature = "debug-reentrancy", not(loom)))]
#[doc(hidden)]
pub use kmalloc::kmalloc_reentrancy_simulate_enter;
#[cfg(not(loom))]
pub use kmalloc::{
    kmalloc_class_for, kmalloc_reentrancy_guard, kmalloc_size_classes, Kmalloc,
    KMALLOC_MAX_CACHE_SIZE,
};
pub use page::{FaultInjection, PageStats, STATS_ORDERS};
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

/// The longest cache name accepted.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
/// let longest = "n".repeat(kmem::MAX_CACHE_NAME);
/// assert!(k.create_cache(&longest, 8, kmem::CacheConfig::new()).is_ok());
/// let too_long = "n".repeat(kmem::MAX_CACHE_NAME + 1);
/// let err = k.create_cache(&too_long, 8, kmem::CacheConfig::new()).unwrap_err();
/// assert!(matches!(err, kmem::KmemError::InvalidName { .. }));
/// ```
pub const MAX_CACHE_NAME: usize = 64;

/// Writes each part to stderr without allocating, then aborts the process.
///
/// Used where memory is already corrupt (a double free, a foreign pointer) or where continuing
/// could corrupt it: unwinding out of an allocator is not an option.
#[cold]
#[inline(never)]
pub(crate) fn abort_msg(parts: &[&str]) -> ! {
    os::abort_msg(parts)
}
/// Internals exposed to `loom-tests/` only (built with `--cfg loom`); not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    use crate::page::{FaultInjection, GfpFlags, Page, PageAllocator, PageBudget, PageKind};
    use crate::sync::Ordering;
    use crate::KmemCache;
    use core::ptr::NonNull;

    /// The largest block order of the page allocator in this build.
    pub const MAX_ORDER: u32 = crate::page::MAX_ORDER;
    /// The page size.
    pub const PAGE_SIZE: usize = crate::page::PAGE_SIZE;

    /// One node's buddy allocator with its own (unlimited) budget.
    pub struct Pages {
        alloc: core::mem::ManuallyDrop<PageAllocator>,
        // A raw pointer, not a `Box`: moving a `Box` would invalidate the allocator's pointer
        // to it under Stacked Borrows.
        budget: *mut PageBudget,
    }

    // SAFETY: the budget is Sync and owned by this value; the allocator is Send + Sync.
    unsafe impl Send for Pages {}
    // SAFETY: as above.
    unsafe impl Sync for Pages {}

    impl Drop for Pages {
        fn drop(&mut self) {
            // SAFETY: dropped once, before the budget it points to.
            unsafe { core::mem::ManuallyDrop::drop(&mut self.alloc) };
            // SAFETY: from Box::into_raw in `new`; nothing refers to it any more.
            drop(unsafe { Box::from_raw(self.budget) });
        }
    }

    /// A block handed out by [`Pages::alloc`]: its head descriptor and its address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Block {
        head: NonNull<Page>,
        /// The first byte of the block.
        pub addr: usize,
        /// Its order.
        pub order: u32,
    }

    // SAFETY: a block is an exclusively owned handle, like the pointer `alloc_pages` returns.
    unsafe impl Send for Block {}

    impl Pages {
        /// A fresh allocator for node 0.
        pub fn new() -> Self {
            let budget = Box::into_raw(Box::new(PageBudget::new(usize::MAX, FaultInjection::None)));
            let alloc = core::mem::ManuallyDrop::new(PageAllocator::new(0, budget));
            Pages { alloc, budget }
        }

        /// `alloc_pages(order)`.
        pub fn alloc(&self, order: u32) -> Option<Block> {
            let head = self.alloc.alloc_pages(order, GfpFlags::NONE)?;
            // SAFETY: a live descriptor just handed out.
            let addr = crate::page::page_address(unsafe { head.as_ref() }) as usize;
            Some(Block { head, addr, order })
        }

        /// `free_pages(block)`.
        ///
        /// # Safety
        /// `b` came from [`Pages::alloc`] on `self` and is freed once.
        pub unsafe fn free(&self, b: Block) {
            // SAFETY: forwarded contract.
            unsafe { self.alloc.free_pages(b.head, b.order) }
        }

        /// `(mapped_bytes, free_bytes, free blocks per order)`.
        pub fn state(&self) -> (usize, usize, [usize; crate::STATS_ORDERS]) {
            let mut s = crate::PageStats::default();
            self.alloc.add_stats(&mut s);
            (s.mapped_bytes, s.free_bytes, s.free_blocks)
        }
    }

    impl Default for Pages {
        fn default() -> Self {
            Self::new()
        }
    }

    /// `flush_slab` + `unfreeze_partials` of CPU slot `slot` (what shrink does first), without
    /// the rest of shrink: drives `deactivate_slab` deterministically.
    pub fn flush_cpu(cache: &KmemCache, slot: usize) {
        let c = cache.inner();
        let cpu = c.cpu(slot);
        let _g = cpu.lock.lock();
        c.flush_cpu_locked(cpu);
    }

    /// Checks the node-list invariant of every node (under `list_lock`): each slab on a partial
    /// list is a live, unfrozen slab of this cache with a free object, and `nr_partial` equals
    /// the list's length.
    pub fn check_lists(cache: &KmemCache) -> Result<(), String> {
        let c = cache.inner();
        for nid in 0..c.nr_nodes {
            let n = c.node(nid);
            let g = n.list_lock.lock();
            let mut len = 0;
            let mut slab = crate::node::KmemCacheNode::first(&g);
            while !slab.is_null() {
                // SAFETY: on the list `g` protects.
                let s = unsafe { &*slab };
                let (fl, counters) = s.slab_state();
                if s.info().kind() != PageKind::Slab {
                    return Err(format!("node {nid}: a freed page is on the partial list"));
                }
                if counters.frozen() {
                    return Err(format!("node {nid}: a frozen slab is on the partial list"));
                }
                if fl == 0 {
                    return Err(format!("node {nid}: a full slab is on the partial list"));
                }
                len += 1;
                if len > 64 {
                    return Err(format!("node {nid}: the partial list is cyclic"));
                }
                // SAFETY: as above.
                slab = unsafe { crate::node::KmemCacheNode::next_of(&g, slab) };
            }
            let nr = n.nr_partial.load(Ordering::Relaxed);
            if nr != len {
                return Err(format!(
                    "node {nid}: nr_partial {nr} but {len} slabs on the list"
                ));
            }
        }
        Ok(())
    }
}
