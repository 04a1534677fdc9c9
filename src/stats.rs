//! Statistics: per-slot event counters ([`CacheStats`]) and the exact slabinfo row
//! ([`SlabInfo`]).
//!
//! Counters are named after the kernel's `enum stat_item`. Each CPU slot has its own array; an
//! event increments the current slot's counter with a relaxed load and store (no locked
//! instruction on the fast path). Two threads that share a slot and count the same event in the
//! same instant can lose one increment: the counters are exact for one thread per slot and
//! close otherwise. Reads sum every slot. Without the `stats` feature nothing is counted and every
//! field reads 0.

use core::fmt;

/// Events counted per CPU slot (the kernel's `enum stat_item`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
#[allow(dead_code)] // some items are only counted with the `stats` feature's paths
pub(crate) enum StatItem {
    AllocFastpath,
    AllocSlowpath,
    FreeFastpath,
    FreeSlowpath,
    FreeFrozen,
    FreeAddPartial,
    FreeRemovePartial,
    AllocFromPartial,
    AllocSlab,
    AllocRefill,
    FreeSlab,
    CpuslabFlush,
    DeactivateFull,
    DeactivateEmpty,
    DeactivateToHead,
    DeactivateToTail,
    DeactivateRemoteFrees,
    DeactivateBypass,
    OrderFallback,
    CmpxchgDoubleCpuFail,
    CmpxchgDoubleFail,
    CpuPartialAlloc,
    CpuPartialFree,
    CpuPartialNode,
    CpuPartialDrain,
    AllocPcs,
    FreePcs,
    SheafSwap,
    SheafRefill,
    SheafFlush,
    SheafAlloc,
    SheafFree,
    BarnGet,
    BarnGetFail,
    BarnPut,
    BarnPutFail,
}

/// Number of [`StatItem`]s.
pub(crate) const NR_STAT_ITEMS: usize = StatItem::BarnPutFail as usize + 1;

/// Event counters of one cache, summed over its CPU slots at read time.
///
/// With the `stats` cargo feature (on by default) they count; without it they read 0. Names
/// follow the kernel's `enum stat_item` (`ALLOC_FASTPATH` is `alloc_fastpath`, ...), so the
/// kernel's documentation of each applies.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
/// let cache = k.create_cache("stats-demo", 64, kmem::CacheConfig::new()).unwrap();
/// let p = cache.alloc().unwrap();
/// // SAFETY: `p` came from `cache` and is freed once.
/// unsafe { cache.free(p) };
/// let s = cache.stats();
/// if cfg!(feature = "stats") {
///     assert_eq!(s.alloc_slowpath, 1); // the first allocation builds the slab
///     assert_eq!(s.free_fastpath, 1); // the free goes straight back to the CPU freelist
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Allocations served by the lockless CPU freelist.
    pub alloc_fastpath: u64,
    /// Allocations that took the slow path (`___slab_alloc`).
    pub alloc_slowpath: u64,
    /// Frees onto the CPU freelist of the object's own slab.
    pub free_fastpath: u64,
    /// Frees that went to `__slab_free` (the slab was not the CPU slab).
    pub free_slowpath: u64,
    /// Slow frees into a frozen slab (no list work).
    pub free_frozen: u64,
    /// Frees that put a slab on a node partial list.
    pub free_add_partial: u64,
    /// Frees that took an empty slab off a node partial list.
    pub free_remove_partial: u64,
    /// CPU slabs taken from a node partial list.
    pub alloc_from_partial: u64,
    /// New slabs allocated from the page allocator.
    pub alloc_slab: u64,
    /// CPU freelists refilled from the CPU slab's own freelist (remote frees).
    pub alloc_refill: u64,
    /// Slabs returned to the page allocator.
    pub free_slab: u64,
    /// CPU slabs flushed (shrink, destroy, node mismatch).
    pub cpuslab_flush: u64,
    /// Deactivated slabs that were full (left on no list).
    pub deactivate_full: u64,
    /// Deactivated slabs that were empty (discarded).
    pub deactivate_empty: u64,
    /// Deactivated slabs put at the head of a node partial list.
    pub deactivate_to_head: u64,
    /// Deactivated slabs put at the tail of a node partial list.
    pub deactivate_to_tail: u64,
    /// Deactivated slabs that had received remote frees.
    pub deactivate_remote_frees: u64,
    /// CPU slabs found full when refilling (unfrozen without a list).
    pub deactivate_bypass: u64,
    /// New slabs that fell back from order `oo` to order `min`.
    pub order_fallback: u64,
    /// Failed `{freelist, tid}` CAS on a CPU slot (a race: retried).
    pub cmpxchg_double_cpu_fail: u64,
    /// Failed `{freelist, counters}` CAS on a slab (a race: retried).
    pub cmpxchg_double_fail: u64,
    /// CPU slabs taken from the CPU partial list.
    pub cpu_partial_alloc: u64,
    /// Frees that froze a full slab onto the CPU partial list.
    pub cpu_partial_free: u64,
    /// Slabs moved from a node partial list to a CPU partial list.
    pub cpu_partial_node: u64,
    /// CPU partial lists drained to the node lists because they were full.
    pub cpu_partial_drain: u64,
    /// Allocations served by the CPU's sheaf (`ALLOC_PCS`; sheaf caches only).
    pub alloc_cpu_sheaf: u64,
    /// Frees into the CPU's sheaf (`FREE_PCS`).
    pub free_cpu_sheaf: u64,
    /// Main and spare sheaves swapped (kmem's counter: the kernel does not count swaps).
    pub sheaf_swap: u64,
    /// Sheaves refilled from the slabs in bulk (`SHEAF_REFILL`).
    pub sheaf_refill: u64,
    /// Sheaves flushed to the slabs in bulk (`SHEAF_FLUSH`).
    pub sheaf_flush: u64,
    /// Empty sheaves carved from the pool (`SHEAF_ALLOC`).
    pub sheaf_alloc: u64,
    /// Empty sheaves given back to the pool because the barn kept enough (`SHEAF_FREE`).
    pub sheaf_free: u64,
    /// Full sheaves taken from the barn for an empty one (`BARN_GET`).
    pub barn_get: u64,
    /// Barn visits that found no full sheaf (`BARN_GET_FAIL`: a refill from the slabs follows).
    pub barn_get_fail: u64,
    /// Full sheaves put into the barn (`BARN_PUT`).
    pub barn_put: u64,
    /// Full sheaves the barn had no room for (`BARN_PUT_FAIL`: a flush to the slabs follows).
    pub barn_put_fail: u64,
}

impl CacheStats {
    /// Builds the public struct from a summed counter array.
    pub(crate) fn from_array(a: &[u64; NR_STAT_ITEMS]) -> Self {
        use StatItem::*;
        let g = |i: StatItem| a[i as usize];
        CacheStats {
            alloc_fastpath: g(AllocFastpath),
            alloc_slowpath: g(AllocSlowpath),
            free_fastpath: g(FreeFastpath),
            free_slowpath: g(FreeSlowpath),
            free_frozen: g(FreeFrozen),
            free_add_partial: g(FreeAddPartial),
            free_remove_partial: g(FreeRemovePartial),
            alloc_from_partial: g(AllocFromPartial),
            alloc_slab: g(AllocSlab),
            alloc_refill: g(AllocRefill),
            free_slab: g(FreeSlab),
            cpuslab_flush: g(CpuslabFlush),
            deactivate_full: g(DeactivateFull),
            deactivate_empty: g(DeactivateEmpty),
            deactivate_to_head: g(DeactivateToHead),
            deactivate_to_tail: g(DeactivateToTail),
            deactivate_remote_frees: g(DeactivateRemoteFrees),
            deactivate_bypass: g(DeactivateBypass),
            order_fallback: g(OrderFallback),
            cmpxchg_double_cpu_fail: g(CmpxchgDoubleCpuFail),
            cmpxchg_double_fail: g(CmpxchgDoubleFail),
            cpu_partial_alloc: g(CpuPartialAlloc),
            cpu_partial_free: g(CpuPartialFree),
            cpu_partial_node: g(CpuPartialNode),
            cpu_partial_drain: g(CpuPartialDrain),
            alloc_cpu_sheaf: g(AllocPcs),
            free_cpu_sheaf: g(FreePcs),
            sheaf_swap: g(SheafSwap),
            sheaf_refill: g(SheafRefill),
            sheaf_flush: g(SheafFlush),
            sheaf_alloc: g(SheafAlloc),
            sheaf_free: g(SheafFree),
            barn_get: g(BarnGet),
            barn_get_fail: g(BarnGetFail),
            barn_put: g(BarnPut),
            barn_put_fail: g(BarnPutFail),
        }
    }
}

/// One `/proc/slabinfo` row for a cache. Always exact (not behind the `stats` feature): taking
/// it briefly detaches each CPU slot to count its freelist, so at a quiescent moment
/// `active_objs` is exactly the number of objects allocated and not freed.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
/// let cache = k.create_cache("info-demo", 100, kmem::CacheConfig::new()).unwrap();
/// let objs: Vec<_> = (0..10).map(|_| cache.alloc().unwrap()).collect();
/// let info = cache.info();
/// assert_eq!(info.active_objs, 10);
/// assert_eq!(info.num_objs, info.num_slabs * info.objperslab);
/// for p in objs {
///     // SAFETY: each `p` came from `cache` and is freed once.
///     unsafe { cache.free(p) };
/// }
/// assert_eq!(cache.info().active_objs, 0);
/// println!("{}", kmem::SlabInfo::header());
/// println!("{}", cache.info());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlabInfo {
    /// The cache's name.
    pub name: String,
    /// Objects allocated and not freed.
    pub active_objs: usize,
    /// Objects in all of the cache's slabs.
    pub num_objs: usize,
    /// Bytes per object, with alignment and metadata ([`KmemCache::size`](crate::KmemCache::size)).
    pub objsize: usize,
    /// Objects per slab at the preferred order.
    pub objperslab: usize,
    /// Pages per slab at the preferred order.
    pub pagesperslab: usize,
    /// Slabs with at least one object allocated.
    pub active_slabs: usize,
    /// All slabs.
    pub num_slabs: usize,
    /// Slabs on the node partial lists.
    pub node_partial_slabs: usize,
    /// Slabs on the CPU partial lists.
    pub cpu_partial_slabs: usize,
}

impl SlabInfo {
    /// The column header matching [`SlabInfo`]'s `Display` rows.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("hdr", 32, kmem::CacheConfig::new()).unwrap();
    /// let header = kmem::SlabInfo::header();
    /// assert!(header.starts_with("# name"));
    /// assert!(header.contains("<active_objs>") && header.contains(": slabdata"));
    /// let row = c.info().to_string();
    /// // The same columns as the header, which adds its leading `#`.
    /// assert_eq!(header.split_whitespace().count(), row.split_whitespace().count() + 1);
    /// ```
    pub fn header() -> &'static str {
        "# name                      <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : slabdata <active_slabs> <num_slabs> <node_partial> <cpu_partial>"
    }
}

impl fmt::Display for SlabInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<27} {:>13} {:>10} {:>9} {:>12} {:>14} : slabdata {:>14} {:>11} {:>14} {:>13}",
            self.name,
            self.active_objs,
            self.num_objs,
            self.objsize,
            self.objperslab,
            self.pagesperslab,
            self.active_slabs,
            self.num_slabs,
            self.node_partial_slabs,
            self.cpu_partial_slabs
        )
    }
}

/// A whole `/proc/slabinfo`-style table: a header line and one row per cache.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
/// let _a = k.create_cache("table-a", 32, kmem::CacheConfig::new()).unwrap();
/// let text = kmem::SlabInfoTable(k.slabinfo()).to_string();
/// assert!(text.starts_with("slabinfo - version: 2.1 (kmem)"));
/// assert!(text.contains("table-a"));
/// ```
#[derive(Clone, Debug)]
pub struct SlabInfoTable(pub Vec<SlabInfo>);

impl fmt::Display for SlabInfoTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "slabinfo - version: 2.1 (kmem)")?;
        writeln!(f, "{}", SlabInfo::header())?;
        for row in &self.0 {
            writeln!(f, "{row}")?;
        }
        Ok(())
    }
}
