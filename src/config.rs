//! How a cache is asked for: [`CacheConfig`] (alignment, flags, constructor, slab-geometry
//! knobs) and [`CacheFlags`]. `slub/geometry.rs` turns a configuration into a geometry, with
//! the validation that names each bad parameter.

use crate::page::MAX_ORDER;
use core::fmt;
use core::ptr::NonNull;

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

/// The slab order the kernel calls `PAGE_ALLOC_COSTLY_ORDER`: the default `max_order`.
pub(crate) const DEFAULT_MAX_ORDER: u32 = if MAX_ORDER < 3 { MAX_ORDER } else { 3 };
/// Assumed cache-line size for [`CacheFlags::HWCACHE_ALIGN`].
///
/// ```
/// use kmem::{CacheConfig, CacheFlags, CACHE_LINE_SIZE};
/// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
/// let cfg = CacheConfig::new().flags(CacheFlags::HWCACHE_ALIGN);
/// let c = k.create_cache("lines", 100, cfg).unwrap();
/// assert_eq!(c.align(), CACHE_LINE_SIZE);
/// assert_eq!(c.size(), 2 * CACHE_LINE_SIZE); // 100 bytes take two whole lines
/// ```
pub const CACHE_LINE_SIZE: usize = 64;

/// Cache creation flags (`SLAB_*` in the kernel).
///
/// ```
/// use kmem::CacheFlags;
/// let f = CacheFlags::HWCACHE_ALIGN | CacheFlags::NO_MERGE;
/// assert!(f.contains(CacheFlags::HWCACHE_ALIGN));
/// assert!(!CacheFlags::empty().contains(CacheFlags::NO_MERGE));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CacheFlags(pub(crate) u32);

impl CacheFlags {
    /// Align objects to cache lines; small objects are packed so that none straddles a line
    /// (the alignment is halved while the object still fits twice), as `SLAB_HWCACHE_ALIGN`.
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let hw = CacheConfig::new().flags(CacheFlags::HWCACHE_ALIGN);
    /// // 40 bytes would straddle a line at word alignment: a whole line each.
    /// assert_eq!(k.create_cache("hw40", 40, hw.clone()).unwrap().size(), 64);
    /// // 20 bytes fit twice in half a line: packed two per 32 bytes, never straddling.
    /// assert_eq!(k.create_cache("hw20", 20, hw).unwrap().size(), 32);
    /// ```
    pub const HWCACHE_ALIGN: CacheFlags = CacheFlags(1 << 0);
    /// Never merge this cache with a compatible one. kmem does not merge caches at all, so this
    /// is accepted for source compatibility and always holds.
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let cfg = CacheConfig::new().flags(CacheFlags::NO_MERGE);
    /// let a = k.create_cache("private-a", 64, cfg.clone()).unwrap();
    /// let b = k.create_cache("private-b", 64, cfg).unwrap();
    /// // Two caches of the same geometry stay two caches.
    /// assert_eq!(k.slabinfo().len(), 2);
    /// assert_eq!((a.name(), b.name()), ("private-a", "private-b"));
    /// ```
    pub const NO_MERGE: CacheFlags = CacheFlags(1 << 1);
    /// `SLAB_TYPESAFE_BY_RCU`: an object's memory stays an object of this cache for as long as
    /// the cache lives, so a lock-free reader that found a pointer to an object (typically while
    /// pinned in a crossbeam-epoch collector) may keep dereferencing it after it is freed.
    ///
    /// What a reader may rely on, as in the kernel's documentation of the flag: the memory is
    /// mapped, is an object of this cache (same size, same constructor invariants: the
    /// constructor runs when a slab is made, not on each allocation), and so holds a valid
    /// value of the cache's type. What it may **not** rely on: that it is the *same* object.
    /// A freed object may be reallocated at once (this flag does not delay reuse; that is what
    /// [`KmemCache::free_deferred`](crate::KmemCache::free_deferred) is for). A reader must
    /// therefore revalidate what it found after taking a reference (a lock or a
    /// sequence/generation field inside the object, rechecking the key), exactly as kernel code
    /// does with `SLAB_TYPESAFE_BY_RCU` caches.
    ///
    /// How kmem provides it: empty slabs of such a cache stay on the node partial lists
    /// (`min_partial` is unbounded); `shrink` and the memory-limit reclaim leave them alone (the
    /// reclaim can run inside the global allocator, which must not enter crossbeam-epoch). They
    /// go back to the page allocator in two ways: after a grace period of the readers'
    /// collector, through [`KmemCache::shrink_deferred`](crate::KmemCache::shrink_deferred)
    /// (the kernel's `call_rcu` of an empty slab: the slabs leave the partial lists at once, so
    /// no allocation reuses them, and are released once every thread pinned at the call has
    /// unpinned); or when the cache is destroyed: drop the cache only when no reader can still
    /// reach its objects (the kernel's `kmem_cache_destroy` runs `rcu_barrier` for the same
    /// reason). Without `shrink_deferred` the price is memory: a cache that once held many
    /// objects keeps their slabs.
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k
    ///     .create_cache("typesafe", 256, CacheConfig::new().flags(CacheFlags::TYPESAFE_BY_RCU))
    ///     .unwrap();
    /// let objs: Vec<_> = (0..100).map(|_| c.alloc().unwrap()).collect();
    /// let slabs = c.info().num_slabs;
    /// // SAFETY: every pointer came from `c` and is freed once.
    /// unsafe { c.free_bulk(&objs) };
    /// c.shrink();
    /// // The slabs stay: every old pointer is still an object of `c`.
    /// assert_eq!(c.info().num_slabs, slabs);
    /// assert!(objs.iter().all(|&p| c.node_of(p) == 0));
    /// ```
    pub const TYPESAFE_BY_RCU: CacheFlags = CacheFlags(1 << 2);

    /// `SLAB_CONSISTENCY_CHECKS` (`slub_debug` letter `F`): every allocation and free of the
    /// cache checks its object — a valid object start, not already free (the whole slab
    /// freelist is searched), red zones and poison intact, the free pointer inside the slab,
    /// the slab's counters — and a failed check prints a report in the kernel's words on stderr
    /// and aborts. Any debug flag sends the cache off the lockless fast paths: every allocation
    /// and free of it runs under its node's list lock (see also
    /// [`KmemCache::validate`](crate::KmemCache::validate)); the other three flags lay the
    /// object out for checking, this one checks on every call. `KMEM_DEBUG` (the kernel's `slub_debug` syntax) sets these flags by cache name
    /// for a whole process; the README's "Debugging memory corruption" section shows a report.
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let all = CacheFlags::CONSISTENCY_CHECKS
    ///     | CacheFlags::RED_ZONE
    ///     | CacheFlags::POISON
    ///     | CacheFlags::STORE_USER;
    /// let c = k.create_cache("checked", 64, CacheConfig::new().flags(all)).unwrap();
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` is a live 64-byte object of `c`.
    /// unsafe { p.as_ptr().write_bytes(1, 64) };
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// assert!(c.validate().is_ok());
    /// assert!(c.size() > 64); // red zones, free pointer and two owner records
    /// ```
    pub const CONSISTENCY_CHECKS: CacheFlags = CacheFlags(1 << 3);
    /// `SLAB_RED_ZONE` (`Z`): a red zone before and after each object (`0xbb` while it is
    /// free, `0xcc` while it is allocated), so that a write one byte before or past the object
    /// is seen (by `CONSISTENCY_CHECKS` on its free, and by
    /// [`KmemCache::validate`](crate::KmemCache::validate)). The object pointer stays the
    /// object's start and keeps the cache's alignment.
    pub const RED_ZONE: CacheFlags = CacheFlags(1 << 4);
    /// `SLAB_POISON` (`P`): free objects are filled with `0x6b` and end with `0xa5`
    /// (`POISON_FREE`, `POISON_END`), unused padding with `0x5a` (`POISON_INUSE`), so a write
    /// after free is seen when the object is next allocated (with `CONSISTENCY_CHECKS`) or
    /// validated. The free pointer moves out of the object. Caches with a constructor or
    /// `TYPESAFE_BY_RCU` keep their objects' contents (no poison), as in the kernel.
    pub const POISON: CacheFlags = CacheFlags(1 << 5);
    /// `SLAB_STORE_USER` (`U`): each object records its last allocation and its last free —
    /// the caller's return address, thread id, CPU and time — and every report prints them.
    pub const STORE_USER: CacheFlags = CacheFlags(1 << 6);

    /// The four `slub_debug` flags.
    pub(crate) const DEBUG: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6);

    pub(crate) const ALL: u32 = (1 << 7) - 1;

    /// No flags.
    ///
    /// ```
    /// use kmem::CacheFlags;
    /// assert_eq!(CacheFlags::empty(), CacheFlags::default());
    /// assert_eq!(CacheFlags::empty().bits(), 0);
    /// assert!(CacheFlags::HWCACHE_ALIGN.contains(CacheFlags::empty()));
    /// ```
    pub const fn empty() -> Self {
        CacheFlags(0)
    }

    /// The raw bits.
    ///
    /// ```
    /// use kmem::CacheFlags;
    /// let f = CacheFlags::HWCACHE_ALIGN | CacheFlags::NO_MERGE;
    /// assert_eq!(f.bits(), CacheFlags::HWCACHE_ALIGN.bits() | CacheFlags::NO_MERGE.bits());
    /// assert_ne!(CacheFlags::HWCACHE_ALIGN.bits(), CacheFlags::NO_MERGE.bits());
    /// ```
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    ///
    /// ```
    /// use kmem::CacheFlags;
    /// let both = CacheFlags::HWCACHE_ALIGN | CacheFlags::NO_MERGE;
    /// assert!(both.contains(CacheFlags::NO_MERGE));
    /// assert!(both.contains(both));
    /// assert!(!CacheFlags::HWCACHE_ALIGN.contains(both));
    /// ```
    pub const fn contains(self, other: CacheFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for CacheFlags {
    type Output = CacheFlags;
    fn bitor(self, rhs: CacheFlags) -> CacheFlags {
        CacheFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for CacheFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_set();
        if self.contains(CacheFlags::HWCACHE_ALIGN) {
            l.entry(&"HWCACHE_ALIGN");
        }
        for (f, name) in [
            (CacheFlags::NO_MERGE, "NO_MERGE"),
            (CacheFlags::TYPESAFE_BY_RCU, "TYPESAFE_BY_RCU"),
            (CacheFlags::CONSISTENCY_CHECKS, "CONSISTENCY_CHECKS"),
            (CacheFlags::RED_ZONE, "RED_ZONE"),
            (CacheFlags::POISON, "POISON"),
            (CacheFlags::STORE_USER, "STORE_USER"),
        ] {
            if self.contains(f) {
                l.entry(&name);
            }
        }
        l.finish()
    }
}

/// How a cache is built: alignment, flags, constructor, and the slab-geometry knobs that
/// `mm/slub.c` exposes as boot parameters (`slub_min_order`, `slub_max_order`,
/// `slub_min_objects`) and sysfs files (`min_partial`, `cpu_partial`).
///
/// Every knob is validated by [`Kmem::create_cache`](crate::Kmem::create_cache); out-of-range values give a
/// [`KmemError`](crate::KmemError) naming the parameter.
///
/// ```
/// use kmem::{CacheConfig, CacheFlags};
/// let cfg = CacheConfig::new()
///     .align(64)
///     .flags(CacheFlags::HWCACHE_ALIGN)
///     .max_order(2)
///     .min_partial(2)
///     .cpu_partial_slabs(0); // no per-CPU partial lists
/// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
/// let c = k.create_cache("configured", 200, cfg).unwrap();
/// assert_eq!(c.size() % 64, 0);
/// assert!(c.order() <= 2);
/// ```
#[derive(Clone, Default)]
pub struct CacheConfig {
    pub(crate) align: usize,
    pub(crate) flags: CacheFlags,
    pub(crate) ctor: Option<fn(NonNull<u8>)>,
    pub(crate) min_order: u32,
    /// The order the slab order search starts from (crate-internal: the kmalloc classes'
    /// `kmalloc_slab_order`); unlike `min_order`, the fallback order stays `get_order(size)`.
    pub(crate) prefer_order: u32,
    pub(crate) max_order: Option<u32>,
    pub(crate) min_objects: usize,
    pub(crate) min_partial: Option<usize>,
    pub(crate) cpu_partial_slabs: Option<usize>,
    pub(crate) sheaf_capacity: usize,
    pub(crate) failslab: crate::page::FaultInjection,
    pub(crate) colour: bool,
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("align", &self.align)
            .field("flags", &self.flags)
            .field("ctor", &self.ctor.is_some())
            .field("min_order", &self.min_order)
            .field("prefer_order", &self.prefer_order)
            .field("max_order", &self.max_order)
            .field("min_objects", &self.min_objects)
            .field("min_partial", &self.min_partial)
            .field("cpu_partial_slabs", &self.cpu_partial_slabs)
            .field("sheaf_capacity", &self.sheaf_capacity)
            .field("failslab", &self.failslab)
            .field("colour", &self.colour)
            .finish()
    }
}

impl CacheConfig {
    /// The defaults: word alignment, no flags, orders and limits as the kernel computes them.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("defaults", 24, kmem::CacheConfig::new()).unwrap();
    /// assert_eq!(c.align(), core::mem::size_of::<usize>()); // word alignment
    /// assert_eq!(c.size(), 24);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The order the slab order search starts from, without raising the fallback order (a
    /// slab of `get_order(size)`, taken when the preferred order is not to be had): the
    /// kmalloc classes' `kmalloc_slab_order`.
    pub(crate) fn prefer_order(mut self, order: u32) -> Self {
        self.prefer_order = order;
        self
    }

    /// Minimum object alignment (a power of two, at most a page). Default: word size.
    ///
    /// ```
    /// use kmem::{CacheConfig, KmemError};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("aligned", 24, CacheConfig::new().align(32)).unwrap();
    /// let p = c.alloc().unwrap();
    /// assert_eq!(p.as_ptr() as usize % 32, 0);
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// let err = k.create_cache("odd", 24, CacheConfig::new().align(48)).unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidAlignment { align: 48, .. }));
    /// ```
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// The alignment set with [`CacheConfig::align`] (0 if none).
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// assert_eq!(CacheConfig::new().align_value(), 0);
    /// assert_eq!(CacheConfig::new().align(64).align_value(), 64);
    /// ```
    pub fn align_value(&self) -> usize {
        self.align
    }

    /// Creation flags.
    ///
    /// ```
    /// use kmem::{CacheConfig, CacheFlags};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let cfg = CacheConfig::new().flags(CacheFlags::HWCACHE_ALIGN);
    /// let c = k.create_cache("flagged", 40, cfg).unwrap();
    /// assert_eq!((c.align(), c.size()), (64, 64));
    /// ```
    pub fn flags(mut self, flags: CacheFlags) -> Self {
        self.flags = flags;
        self
    }

    /// A constructor run once on every object when its slab is created (not on every
    /// allocation, as in the kernel). Objects must be returned in their constructed state; the
    /// free pointer is then kept outside the object so it never overwrites constructed fields.
    ///
    /// ```
    /// use core::ptr::NonNull;
    /// use kmem::CacheConfig;
    /// fn init(obj: NonNull<u8>) {
    ///     // SAFETY: the constructor gets a whole, suitably aligned 16-byte object.
    ///     unsafe { obj.cast::<u64>().write(0x5eed) };
    /// }
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("constructed", 16, CacheConfig::new().ctor(init)).unwrap();
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` is a live object of `c`, constructed when its slab was made.
    /// assert_eq!(unsafe { p.cast::<u64>().read() }, 0x5eed);
    /// // SAFETY: `p` came from `c`, still in its constructed state, and is freed once.
    /// unsafe { c.free(p) };
    /// ```
    pub fn ctor(mut self, ctor: fn(NonNull<u8>)) -> Self {
        self.ctor = Some(ctor);
        self
    }

    /// Smallest slab order to use (`slub_min_order`). Default 0. A slab holds at most 32767
    /// objects (its counters have 15 bits for them), so for small objects the order is capped
    /// below this when a slab of `min_order` would hold more, as Linux (6.7+) caps it.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("big-slabs", 64, CacheConfig::new().min_order(1)).unwrap();
    /// assert!(c.order() >= 1 && c.min_order() >= 1); // every slab is at least 2 pages
    /// // 8-byte objects in 4 MiB slabs would be 524288 per slab: capped at 16384 (order 5).
    /// let c = k.create_cache("tiny", 8, CacheConfig::new().min_order(10).max_order(10)).unwrap();
    /// assert_eq!((c.order(), c.objects_per_slab()), (5, 16384));
    /// ```
    pub fn min_order(mut self, order: u32) -> Self {
        self.min_order = order;
        self
    }

    /// Largest preferred slab order (`slub_max_order`). Default 3. An object too big for it
    /// still gets the smallest order that holds one object.
    ///
    /// ```
    /// use kmem::{CacheConfig, KmemError};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("one-page", 3000, CacheConfig::new().max_order(0)).unwrap();
    /// assert_eq!((c.order(), c.objects_per_slab()), (0, 1));
    /// let err = k.create_cache("huge", 64, CacheConfig::new().max_order(11)).unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidConfig { parameter: "max_order", .. }));
    /// ```
    pub fn max_order(mut self, order: u32) -> Self {
        self.max_order = Some(order);
        self
    }

    /// Objects per slab to aim for (`slub_min_objects`). Default `4 * (fls(cpus) + 1)`.
    /// Lowered to what a slab of `max_order` holds; never more than 32767 objects per slab
    /// (the slab order is capped so that its object count fits the slab counters), and a
    /// value above 32767 is refused.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("many", 256, CacheConfig::new().min_objects(32)).unwrap();
    /// assert!(c.objects_per_slab() >= 32);
    /// // 20000 eight-byte objects want a 160 KB slab; 32 pages (16384 objects) is the most
    /// // whose count fits the slab counters.
    /// let cfg = CacheConfig::new().min_objects(20_000).max_order(10);
    /// let c = k.create_cache("counted", 8, cfg).unwrap();
    /// assert_eq!(c.objects_per_slab(), 16384);
    /// ```
    pub fn min_objects(mut self, n: usize) -> Self {
        self.min_objects = n;
        self
    }

    /// Empty slabs each node keeps on its partial list instead of freeing them. Default
    /// `clamp(ilog2(size) / 2, 5, 10)`.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("lean", 64, CacheConfig::new().min_partial(1)).unwrap();
    /// assert_eq!(c.min_partial(), 1);
    /// ```
    pub fn min_partial(mut self, n: usize) -> Self {
        self.min_partial = Some(n);
        self
    }

    /// Slabs each CPU slot may keep on its partial list before draining it to the node; 0
    /// disables per-CPU partial lists. Default from the object size, as `slub_set_cpu_partial`.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let c = k.create_cache("no-cpu-partial", 64, CacheConfig::new().cpu_partial_slabs(0)).unwrap();
    /// assert_eq!(c.cpu_partial_slabs(), 0);
    /// ```
    pub fn cpu_partial_slabs(mut self, n: usize) -> Self {
        self.cpu_partial_slabs = Some(n);
        self
    }

    /// `failslab`: object allocations of this cache fail on purpose (return `None`, or a null
    /// pointer from `alloc_bulk`'s count), deterministically: `EveryNth(n)` fails the n-th,
    /// 2n-th, … allocation, `Probability { percent, seed }` fails the i-th with a probability
    /// drawn from `seed` and `i` alone, so a failing run replays exactly. For testing a
    /// program's out-of-memory paths one cache at a time (page-level injection for a whole
    /// instance is [`KmemBuilder::fault_injection`](crate::KmemBuilder::fault_injection)).
    ///
    /// A cache with fault injection takes the debug caches' paths (`src/debug/`: every
    /// allocation and free under the node's list lock, no per-CPU fast path), so caches
    /// without it pay nothing for the feature.
    ///
    /// ```
    /// use kmem::{CacheConfig, FaultInjection};
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k
    ///     .create_cache("flaky", 64, CacheConfig::new().failslab(FaultInjection::EveryNth(3)))
    ///     .unwrap();
    /// let got: Vec<_> = (0..6).map(|_| c.alloc()).collect();
    /// assert_eq!(got.iter().map(Option::is_some).collect::<Vec<_>>(), [true, true, false, true, true, false]);
    /// for p in got.into_iter().flatten() {
    ///     // SAFETY: each came from `c` and is freed once.
    ///     unsafe { c.free(p) };
    /// }
    /// ```
    pub fn failslab(mut self, f: crate::page::FaultInjection) -> Self {
        self.failslab = f;
        self
    }

    /// Slab colouring (SLAB's `colour_off` / `colour_next`): each new slab places its first
    /// object `k * colour_off` bytes into the slab (`colour_off` the cache line, or the
    /// alignment if larger), `k` cycling through every offset that the slab's unused tail
    /// (`slab bytes - objects * size`) leaves room for. Objects at the same index of different
    /// slabs then fall into different cache sets instead of all competing for the same ones
    /// (page-aligned slabs of one object each are the worst case: measured 4× faster to walk,
    /// docs/performance.md). Costs: the unused tail is what is spent, so nothing when a slab
    /// has none; and every free of a coloured cache checks its pointer in an out-of-line
    /// function (it must know the slab's colour): about 2.6 ns more per alloc+free pair.
    /// Caches without colouring pay nothing. Ignored for debug caches and `failslab` caches.
    ///
    /// ```
    /// use kmem::CacheConfig;
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let c = k
    ///     .create_cache("coloured", 2560, CacheConfig::new().max_order(0).colour(true))
    ///     .unwrap();
    /// // One 2560-byte object per page: 1536 bytes to spread the objects over (25 lines).
    /// let a = c.alloc().unwrap();
    /// let b = c.alloc().unwrap();
    /// assert_ne!(a.as_ptr() as usize % 4096, b.as_ptr() as usize % 4096);
    /// // SAFETY: each came from `c` and is freed once.
    /// unsafe { c.free_bulk(&[a, b]) };
    /// ```
    pub fn colour(mut self, on: bool) -> Self {
        self.colour = on;
        self
    }

    /// Objects per sheaf: per-CPU arrays of free objects in front of the slabs (Linux 7.0's
    /// sheaves; see `docs/design.md`, "Sheaves"). 0 (the default) keeps the cpu-slab design
    /// only. A capacity is rounded up so that a sheaf fills whole cache lines (the kernel rounds
    /// to a kmalloc size the same way); [`default_sheaf_capacity`] gives the kernel's choice for
    /// an object size. At most [`MAX_SHEAF_CAPACITY`](crate::MAX_SHEAF_CAPACITY).
    ///
    /// With sheaves, a free of any object of the cache goes into the CPU's sheaf, whatever its
    /// slab; an allocation pops one. Both are one restartable sequence in the rseq mode, or
    /// take the slot's sheaf lock (`try_lock`, never waiting) in the locked mode.
    ///
    /// A CPU's refills from the slabs start small: the first takes a quarter of the capacity
    /// (at least 4, or the capacity if smaller), each further one twice the last, up to the
    /// capacity (15, 30, 60, 60, … for 60). A cache used a little on a CPU holds a few objects
    /// there; one used a lot fills whole sheaves from its third refill on.
    ///
    /// ```
    /// use kmem::{default_sheaf_capacity, CacheConfig};
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build().unwrap();
    /// let cap = default_sheaf_capacity(64);
    /// assert_eq!(cap, 60);
    /// let c = k.create_cache("sheaved", 64, CacheConfig::new().sheaf_capacity(cap)).unwrap();
    /// assert_eq!(c.sheaf_capacity(), 60);
    /// let p = c.alloc().unwrap();
    /// // SAFETY: `p` came from `c` and is freed once.
    /// unsafe { c.free(p) };
    /// if cfg!(feature = "stats") {
    ///     assert_eq!(c.stats().free_cpu_sheaf, 1); // the free went into the CPU's sheaf
    /// }
    /// assert_eq!(c.info().active_objs, 0); // objects in sheaves count as free
    /// ```
    pub fn sheaf_capacity(mut self, n: usize) -> Self {
        self.sheaf_capacity = n;
        self
    }
}

/// The kernel's sheaf capacity for objects of `size` bytes (`calculate_sheaf_capacity`: half of
/// what the CPU partial lists held, since a CPU has two sheaves): 60 below 256 bytes, 26 below
/// 1 KiB, 12 below 4 KiB, 4 above.
///
/// ```
/// assert_eq!(kmem::default_sheaf_capacity(8), 60);
/// assert_eq!(kmem::default_sheaf_capacity(512), 26);
/// assert_eq!(kmem::default_sheaf_capacity(2048), 12);
/// assert_eq!(kmem::default_sheaf_capacity(8192), 4);
/// ```
pub const fn default_sheaf_capacity(size: usize) -> usize {
    if size >= 4096 {
        4
    } else if size >= 1024 {
        12
    } else if size >= 256 {
        26
    } else {
        60
    }
}
