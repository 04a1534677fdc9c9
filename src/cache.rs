//! `struct kmem_cache`: one object cache — its geometry, configuration and public handle.
//!
//! This file decides *what* a cache is (object size, alignment, free-pointer offset, slab order,
//! partial-list limits) the way `calculate_sizes`/`calculate_order` do in `mm/slub.c`. *How*
//! objects move (the fast paths and the slab state machine) lives in `slub.rs`.
//!
//! Cache metadata (the [`CacheInner`] header, its CPU slots and its nodes) lives in one mapping
//! taken straight from the OS, never from the global allocator, so caches can be created while
//! kmem *is* the global allocator.

use crate::cpu_slab::{KmemCacheCpu, TidStep};
use crate::error::KmemError;
use crate::instance::{Kmem, KmemShared};
use crate::node::KmemCacheNode;
use crate::page::{MAX_ORDER, PAGE_SIZE};
use crate::slab::{ExactDiv, MAX_OBJS_PER_SLAB};
use crate::stats::{CacheStats, SlabInfo, NR_STAT_ITEMS};
use crate::sync::Cell;
use crate::{os, MAX_CACHE_NAME};
use core::fmt;
use core::ptr::{self, NonNull};

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
const MIN_PARTIAL: usize = 5;
const MAX_PARTIAL: usize = 10;
const WORD: usize = core::mem::size_of::<usize>();

/// Cache creation flags (`SLAB_*` in the kernel).
///
/// ```
/// use kmem::CacheFlags;
/// let f = CacheFlags::HWCACHE_ALIGN | CacheFlags::NO_MERGE;
/// assert!(f.contains(CacheFlags::HWCACHE_ALIGN));
/// assert!(!CacheFlags::empty().contains(CacheFlags::NO_MERGE));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CacheFlags(u32);

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

    const ALL: u32 = (1 << 2) - 1;

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
        if self.contains(CacheFlags::NO_MERGE) {
            l.entry(&"NO_MERGE");
        }
        l.finish()
    }
}

/// How a cache is built: alignment, flags, constructor, and the slab-geometry knobs that
/// `mm/slub.c` exposes as boot parameters (`slub_min_order`, `slub_max_order`,
/// `slub_min_objects`) and sysfs files (`min_partial`, `cpu_partial`).
///
/// Every knob is validated by [`Kmem::create_cache`]; out-of-range values give a
/// [`KmemError`] naming the parameter.
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
    align: usize,
    flags: CacheFlags,
    ctor: Option<fn(NonNull<u8>)>,
    min_order: u32,
    max_order: Option<u32>,
    min_objects: usize,
    min_partial: Option<usize>,
    cpu_partial_slabs: Option<usize>,
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("align", &self.align)
            .field("flags", &self.flags)
            .field("ctor", &self.ctor.is_some())
            .field("min_order", &self.min_order)
            .field("max_order", &self.max_order)
            .field("min_objects", &self.min_objects)
            .field("min_partial", &self.min_partial)
            .field("cpu_partial_slabs", &self.cpu_partial_slabs)
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
}

/// Order and objects per slab (`struct kmem_cache_order_objects`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderObjects {
    pub(crate) order: u32,
    pub(crate) objects: u32,
}

impl OrderObjects {
    fn new(order: u32, size: usize) -> Self {
        OrderObjects {
            order,
            objects: order_objects(order, size) as u32,
        }
    }
}

fn order_objects(order: u32, size: usize) -> usize {
    (PAGE_SIZE << order) / size
}

/// `get_order(size)`: the smallest order whose block holds `size` bytes.
fn get_order(size: usize) -> u32 {
    let pages = size.div_ceil(PAGE_SIZE).max(1);
    pages.next_power_of_two().trailing_zeros()
}

/// `calc_slab_order` (Linux 6.7+): the first order from `min_order` up to `max_order` whose
/// slab wastes at most `1/fract` of itself at its end, or `max_order + 1` if none does.
fn calc_slab_order(size: usize, min_order: u32, max_order: u32, fract: usize) -> u32 {
    let mut order = min_order;
    while order <= max_order {
        let slab_size = PAGE_SIZE << order;
        if slab_size % size <= slab_size / fract {
            break;
        }
        order += 1;
    }
    order
}

/// `calculate_order` (Linux 6.7+): the preferred order for objects of `size` (at least a
/// word, at most `PAGE_SIZE << MAX_ORDER`), trading objects per slab against the fraction of
/// the slab wasted at its end.
///
/// The order starts at `max(min_order, get_order(min_objects * size))`, with `min_objects`
/// first lowered to what a slab of `max_order` holds. If a slab of that order would hold more
/// than [`MAX_OBJS_PER_SLAB`] objects — more than the 15-bit `objects` field of the slab
/// counters can count — the order is capped to the largest one whose slab holds fewer, as
/// `calc_slab_order` has done since Linux 6.7 (`MAX_OBJS_PER_PAGE`), even below `min_order`.
fn calculate_order(size: usize, min_objects: usize, min_order: u32, max_order: u32) -> Option<u32> {
    let max_objects = order_objects(max_order, size).max(1);
    let min_objects = min_objects.clamp(1, max_objects);
    // `min_objects * size <= PAGE_SIZE << max_order`: no overflow, and an order <= max_order.
    let min_order = min_order.max(get_order(min_objects * size));
    if order_objects(min_order, size) > MAX_OBJS_PER_SLAB {
        // `size * MAX_OBJS_PER_SLAB` takes more than one page (size >= 8), so the order is at
        // least 1 and one less holds fewer than MAX_OBJS_PER_SLAB objects.
        return Some(get_order(size * MAX_OBJS_PER_SLAB) - 1);
    }
    let mut fraction = 16;
    while fraction > 1 {
        let order = calc_slab_order(size, min_order, max_order, fraction);
        if order <= max_order {
            return Some(order);
        }
        fraction /= 2;
    }
    // Not even one object fits a slab of max_order: the smallest order that holds one.
    let order = get_order(size);
    (order <= MAX_ORDER).then_some(order)
}

/// The geometry of a cache, computed and validated from its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) object_size: usize,
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) offset: usize,
    pub(crate) oo: OrderObjects,
    pub(crate) min: OrderObjects,
    pub(crate) min_partial: usize,
    pub(crate) cpu_partial_slabs: usize,
}

impl Geometry {
    /// `calculate_alignment` + `calculate_sizes` + order and partial limits, for `nr_cpus` slots.
    pub(crate) fn compute(
        name: &str,
        object_size: usize,
        cfg: &CacheConfig,
        nr_cpus: usize,
    ) -> Result<Geometry, KmemError> {
        let max_object = PAGE_SIZE << MAX_ORDER;
        let bad_size = |reason| KmemError::InvalidSize {
            cache: name.to_owned(),
            size: object_size,
            reason,
        };
        if object_size == 0 {
            return Err(bad_size("must be at least 1 byte"));
        }
        if object_size > max_object - WORD {
            return Err(bad_size(
                "larger than the largest slab (4 MiB less one word)",
            ));
        }
        let bad_align = |reason| KmemError::InvalidAlignment {
            cache: name.to_owned(),
            align: cfg.align,
            reason,
        };
        if cfg.align != 0 && !cfg.align.is_power_of_two() {
            return Err(bad_align("must be a power of two"));
        }
        if cfg.align > PAGE_SIZE {
            return Err(bad_align("must be at most the page size (4096)"));
        }
        if cfg.flags.0 & !CacheFlags::ALL != 0 {
            return Err(KmemError::InvalidConfig {
                parameter: "flags",
                value: cfg.flags.0 as usize,
                reason: "unknown flag bits",
            });
        }
        let max_order = cfg.max_order.unwrap_or(DEFAULT_MAX_ORDER);
        if max_order > MAX_ORDER {
            return Err(KmemError::InvalidConfig {
                parameter: "max_order",
                value: max_order as usize,
                reason: "above the page allocator's MAX_ORDER (10)",
            });
        }
        if cfg.min_order > max_order {
            return Err(KmemError::InvalidConfig {
                parameter: "min_order",
                value: cfg.min_order as usize,
                reason: "greater than max_order",
            });
        }
        if cfg.min_objects > MAX_OBJS_PER_SLAB {
            return Err(KmemError::InvalidConfig {
                parameter: "min_objects",
                value: cfg.min_objects,
                reason: "above the 32767 objects a slab can count",
            });
        }
        if let Some(p) = cfg.min_partial {
            if p > 1 << 20 {
                return Err(KmemError::InvalidConfig {
                    parameter: "min_partial",
                    value: p,
                    reason: "absurdly large (limit 1048576)",
                });
            }
        }
        if let Some(p) = cfg.cpu_partial_slabs {
            if p > u32::MAX as usize / 2 {
                return Err(KmemError::InvalidConfig {
                    parameter: "cpu_partial_slabs",
                    value: p,
                    reason: "absurdly large (limit 2^31)",
                });
            }
        }

        // calculate_alignment
        let mut align = cfg.align.max(WORD);
        if cfg.flags.contains(CacheFlags::HWCACHE_ALIGN) {
            let mut ralign = CACHE_LINE_SIZE;
            while object_size <= ralign / 2 {
                ralign /= 2;
            }
            align = align.max(ralign);
        }
        // calculate_sizes: the free pointer sits in the middle of the object (so that a small
        // overflow off either end does not hit it), or after the object when a constructor's
        // state must survive being free.
        let mut size = object_size.next_multiple_of(WORD);
        let offset = if cfg.ctor.is_some() {
            let off = size;
            size += WORD;
            off
        } else {
            (object_size / 2) / WORD * WORD
        };
        let size = size.next_multiple_of(align);
        if size > max_object {
            return Err(bad_size(
                "with alignment and metadata, larger than the largest slab",
            ));
        }

        let min_objects = if cfg.min_objects != 0 {
            cfg.min_objects
        } else {
            let fls = usize::BITS - nr_cpus.max(1).leading_zeros();
            4 * (fls as usize + 1)
        };
        let order = calculate_order(size, min_objects, cfg.min_order, max_order)
            .ok_or_else(|| bad_size("no slab order holds it"))?;
        let oo = OrderObjects::new(order, size);
        let min = OrderObjects::new(get_order(size).max(cfg.min_order).min(order), size);
        // What the slab counters must be able to hold (`calculate_order` guarantees it; this
        // check keeps a future change from silently corrupting them again).
        for o in [oo, min] {
            if o.objects == 0 || o.objects as usize > MAX_OBJS_PER_SLAB {
                return Err(bad_size("no slab order gives 1 to 32767 objects per slab"));
            }
        }

        let min_partial = cfg.min_partial.unwrap_or_else(|| {
            ((usize::BITS - 1 - size.leading_zeros()) as usize / 2).clamp(MIN_PARTIAL, MAX_PARTIAL)
        });
        let cpu_partial_slabs = cfg.cpu_partial_slabs.unwrap_or_else(|| {
            // slub_set_cpu_partial: objects to keep, converted to slabs (two halves full).
            let nr_objects = if size >= PAGE_SIZE {
                6
            } else if size >= 1024 {
                24
            } else if size >= 256 {
                52
            } else {
                120
            };
            (nr_objects * 2usize).div_ceil(oo.objects as usize)
        });
        Ok(Geometry {
            object_size,
            size,
            align,
            offset,
            oo,
            min,
            min_partial,
            cpu_partial_slabs,
        })
    }
}

/// The shared state of one cache (`struct kmem_cache`). Lives in its own OS mapping, followed
/// by its CPU slots and its nodes.
#[repr(C)]
pub(crate) struct CacheInner {
    // ---- read by every fast path ----
    /// `nr_cpus` slots, each on its own cache lines.
    pub(crate) cpu_slab: *const KmemCacheCpu,
    pub(crate) nr_cpus: usize,
    /// Offset of the free pointer inside an object.
    pub(crate) offset: usize,
    pub(crate) tid_step: TidStep,
    /// Exact division by `geo.size` for the free path's object-boundary check.
    pub(crate) size_div: ExactDiv,
    // ---- slow paths ----
    pub(crate) geo: Geometry,
    pub(crate) flags: CacheFlags,
    pub(crate) ctor: Option<fn(NonNull<u8>)>,
    pub(crate) node: *const KmemCacheNode,
    pub(crate) nr_nodes: usize,
    pub(crate) kmem: *const KmemShared,
    /// Registry links (under the allocator's registry lock).
    pub(crate) reg_prev: Cell<*const CacheInner>,
    pub(crate) reg_next: Cell<*const CacheInner>,
    name_len: usize,
    name_buf: [u8; MAX_CACHE_NAME],
    map_size: usize,
}

// SAFETY: all shared mutable state inside is reached through atomics, `Cell`s under locks, or the
// CPU slots' and nodes' own synchronisation; the raw pointers name memory that lives as long as
// the cache.
unsafe impl Send for CacheInner {}
// SAFETY: as above.
unsafe impl Sync for CacheInner {}

impl CacheInner {
    /// Creates a cache in its own mapping and returns it, unregistered.
    pub(crate) fn create(
        kmem: &KmemShared,
        name: &str,
        object_size: usize,
        cfg: &CacheConfig,
    ) -> Result<NonNull<CacheInner>, KmemError> {
        if name.is_empty() {
            return Err(KmemError::InvalidName {
                name: String::new(),
                reason: "must not be empty",
            });
        }
        if name.len() > MAX_CACHE_NAME {
            return Err(KmemError::InvalidName {
                name: name.chars().take(MAX_CACHE_NAME).collect(),
                reason: "longer than 64 bytes",
            });
        }
        let nr_cpus = kmem.nr_cpus;
        let nr_nodes = kmem.nr_nodes;
        let geo = Geometry::compute(name, object_size, cfg, nr_cpus)?;

        let cpu_off = core::mem::size_of::<CacheInner>().next_multiple_of(128);
        let node_off = cpu_off + nr_cpus * core::mem::size_of::<KmemCacheCpu>();
        let node_off = node_off.next_multiple_of(128);
        let map_size = (node_off + nr_nodes * core::mem::size_of::<KmemCacheNode>())
            .next_multiple_of(PAGE_SIZE);
        let base = os::map(map_size, PAGE_SIZE)
            .ok_or(KmemError::OutOfMemory {
                what: "cache metadata",
                bytes: map_size,
            })?
            .as_ptr();
        let tid_step = kmem.tid_step;
        // `base` is a fresh, page-aligned, zeroed mapping of `map_size` bytes; every write below
        // lands inside it at an offset aligned for its type (128-byte multiples for the
        // 64-byte-aligned slot and node types).
        // SAFETY: each write below stays inside the fresh `base` mapping, aligned for its type.
        unsafe {
            let cpus = base.add(cpu_off) as *mut KmemCacheCpu;
            for i in 0..nr_cpus {
                ptr::write(cpus.add(i), KmemCacheCpu::new(tid_step.init_tid(i)));
            }
            let nodes = base.add(node_off) as *mut KmemCacheNode;
            for i in 0..nr_nodes {
                ptr::write(nodes.add(i), KmemCacheNode::new());
            }
            let mut name_buf = [0u8; MAX_CACHE_NAME];
            name_buf[..name.len()].copy_from_slice(name.as_bytes());
            let inner = base as *mut CacheInner;
            ptr::write(
                inner,
                CacheInner {
                    cpu_slab: cpus,
                    nr_cpus,
                    offset: geo.offset,
                    tid_step,
                    size_div: ExactDiv::new(geo.size),
                    geo,
                    flags: cfg.flags,
                    ctor: cfg.ctor,
                    node: nodes,
                    nr_nodes,
                    kmem,
                    reg_prev: Cell::new(ptr::null()),
                    reg_next: Cell::new(ptr::null()),
                    name_len: name.len(),
                    name_buf,
                    map_size,
                },
            );
            Ok(NonNull::new_unchecked(inner))
        }
    }

    /// Unmaps the cache's metadata.
    ///
    /// # Safety
    /// No slab of this cache exists any more and no one will touch the cache again.
    pub(crate) unsafe fn unmap(this: NonNull<CacheInner>) {
        // Drop the slots and nodes (loom objects need it) before the mapping goes.
        // SAFETY: the caller guarantees exclusivity (no slab left, no further use of the cache).
        unsafe {
            let inner = this.as_ref();
            let size = inner.map_size;
            for i in 0..inner.nr_cpus {
                ptr::drop_in_place(inner.cpu_slab.add(i) as *mut KmemCacheCpu);
            }
            for i in 0..inner.nr_nodes {
                ptr::drop_in_place(inner.node.add(i) as *mut KmemCacheNode);
            }
            ptr::drop_in_place(this.as_ptr());
            os::unmap(this.cast(), size, PAGE_SIZE);
        }
    }

    /// The cache's name.
    pub(crate) fn name(&self) -> &str {
        // SAFETY: copied from a `&str` of exactly `name_len` bytes at creation.
        unsafe { core::str::from_utf8_unchecked(&self.name_buf[..self.name_len]) }
    }

    /// The allocator this cache belongs to.
    #[inline(always)]
    pub(crate) fn kmem(&self) -> &KmemShared {
        // SAFETY: the allocator outlives its caches (every handle holds a reference).
        unsafe { &*self.kmem }
    }

    /// Slot `i`.
    #[inline(always)]
    pub(crate) fn cpu(&self, i: usize) -> &KmemCacheCpu {
        // Cannot fire: every caller passes `this_cpu`'s in-range slot or loops over `nr_cpus`.
        debug_assert!(i < self.nr_cpus);
        // SAFETY: `i < nr_cpus`; the slot array lives as long as the cache.
        unsafe { &*self.cpu_slab.add(i) }
    }

    /// The slot of the CPU this thread runs on (or last ran on: a stale answer only costs
    /// speed, see `cpu_slab.rs`).
    #[inline(always)]
    pub(crate) fn this_cpu(&self) -> &KmemCacheCpu {
        let cpu = crate::cpu::current_cpu();
        let n = self.nr_cpus;
        // `n >= 1` (the builder refuses 0 slots): no division by zero, and `slot < n`.
        let slot = if cpu < n { cpu } else { cpu % n };
        self.cpu(slot)
    }

    /// The index of slot `c`.
    pub(crate) fn slot_index(&self, c: &KmemCacheCpu) -> usize {
        // SAFETY: `c` is one of this cache's slots, so both pointers are in the same array.
        unsafe { (c as *const KmemCacheCpu).offset_from(self.cpu_slab) as usize }
    }

    /// Node `n`.
    #[inline]
    pub(crate) fn node(&self, n: usize) -> &KmemCacheNode {
        // Cannot fire: `n` is a loop index below `nr_nodes`, a node checked against it, or the
        // node of one of this cache's slabs, which `init_slab` set from such an index.
        debug_assert!(n < self.nr_nodes);
        // SAFETY: `n < nr_nodes`; the node array lives as long as the cache.
        unsafe { &*self.node.add(n) }
    }

    /// Whether per-CPU partial lists are in use.
    #[inline]
    pub(crate) fn has_cpu_partial(&self) -> bool {
        self.geo.cpu_partial_slabs > 0
    }

    /// Sums every slot's counters.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut sum = [0u64; NR_STAT_ITEMS];
        for i in 0..self.nr_cpus {
            self.cpu(i).add_stats(&mut sum);
        }
        CacheStats::from_array(&sum)
    }
}

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
    /// make its slab count fewer than zero objects in use. Other double frees are not detected.
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
        let inner = self.inner();
        let slab = inner.owning_slab(obj.as_ptr());
        // SAFETY: `slab` is the live slab of `obj`, which the caller passes back to us once.
        unsafe { inner.do_slab_free(slab, obj.as_ptr() as usize, obj.as_ptr() as usize, 1) }
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
        self.inner().shrink()
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
        self.kmem.shared().unregister(self.inner);
        // SAFETY: this handle was the cache's only owner and it is now unregistered.
        unsafe { CacheInner::destroy(self.inner) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn get_order_matches_the_kernel() {
        assert_eq!(get_order(1), 0);
        assert_eq!(get_order(4096), 0);
        assert_eq!(get_order(4097), 1);
        assert_eq!(get_order(8192), 1);
        assert_eq!(get_order(3 * 4096), 2);
        assert_eq!(get_order(4 << 20), 10);
    }

    #[test]
    fn geometry_of_common_sizes() {
        let g = Geometry::compute("t", 64, &CacheConfig::new(), 2).unwrap();
        assert_eq!((g.size, g.oo.order, g.oo.objects), (64, 0, 64));
        assert_eq!(g.offset, 32);
        assert_eq!(g.min_partial, 5);
        assert_eq!(g.cpu_partial_slabs, 4); // 120 objects * 2 / 64 per slab, rounded up
        let g = Geometry::compute("t", 192, &CacheConfig::new().align(64), 2).unwrap();
        assert_eq!((g.size, g.align), (192, 64));
        let g = Geometry::compute("t", 4096, &CacheConfig::new(), 2).unwrap();
        assert_eq!((g.oo.order, g.oo.objects), (3, 8));
        assert_eq!((g.min.order, g.min.objects), (0, 1));
        let g = Geometry::compute("t", 1, &CacheConfig::new(), 2).unwrap();
        assert_eq!(g.size, 8);
    }

    #[test]
    fn hwcache_align_packs_small_objects() {
        let f = CacheConfig::new().flags(CacheFlags::HWCACHE_ALIGN);
        assert_eq!(Geometry::compute("t", 20, &f, 1).unwrap().size, 32);
        assert_eq!(Geometry::compute("t", 40, &f, 1).unwrap().size, 64);
        assert_eq!(Geometry::compute("t", 100, &f, 1).unwrap().size, 128);
    }

    #[test]
    fn ctor_moves_the_free_pointer_out_of_the_object() {
        let g = Geometry::compute("t", 24, &CacheConfig::new().ctor(|_| {}), 1).unwrap();
        assert_eq!(g.offset, 24);
        assert_eq!(g.size, 32);
    }

    #[test]
    fn waste_stays_within_a_sixteenth_when_possible() {
        for size in (8..=8192).step_by(8) {
            let g = Geometry::compute("t", size, &CacheConfig::new(), 2).unwrap();
            let slab = PAGE_SIZE << g.oo.order;
            assert!(g.oo.objects as usize * g.size <= slab);
            assert!(g.oo.objects >= 1 && g.min.objects >= 1, "size {size}");
            assert!(g.min.order <= g.oo.order);
        }
    }

    /// Issue #10 item 1: every accepted geometry fits the 15-bit `objects` field of a slab's
    /// counters (and the slab it describes), across sizes, alignments, constructors,
    /// `min_objects` and every `min_order`/`max_order` pair.
    #[test]
    // ~400k geometries: under a second natively, far too slow under Miri (pure arithmetic).
    #[cfg_attr(miri, ignore)]
    fn every_geometry_fits_the_objects_field() {
        let mut sizes: Vec<usize> = (1..=64).chain((72..=8192).step_by(104)).collect();
        sizes.extend([24, 96, 192, 4095, 4096, 4097, 65_536, 100_000, 1 << 20]);
        sizes.extend([
            (PAGE_SIZE << MAX_ORDER) - WORD,
            (PAGE_SIZE << MAX_ORDER) / 3,
        ]);
        let min_objects = [0usize, 1, 7, 1000, 20_000, 22_000, MAX_OBJS_PER_SLAB];
        let (mut accepted, mut capped) = (0usize, 0usize);
        for &size in &sizes {
            for align in [0usize, 8, 64, PAGE_SIZE] {
                for ctor in [false, true] {
                    for &mo in &min_objects {
                        for max_order in 0..=MAX_ORDER {
                            for min_order in 0..=max_order {
                                let mut cfg = CacheConfig::new()
                                    .align(align)
                                    .min_objects(mo)
                                    .min_order(min_order)
                                    .max_order(max_order);
                                if ctor {
                                    cfg = cfg.ctor(|_| {});
                                }
                                let Ok(g) = Geometry::compute("t", size, &cfg, 2) else {
                                    continue;
                                };
                                accepted += 1;
                                let what = || {
                                    format!("size {size} align {align} ctor {ctor} min_objects {mo} orders {min_order}..={max_order}: {g:?}")
                                };
                                for oo in [g.oo, g.min] {
                                    let o = oo.objects as usize;
                                    assert!((1..=MAX_OBJS_PER_SLAB).contains(&o), "{}", what());
                                    assert_eq!(o, (PAGE_SIZE << oo.order) / g.size, "{}", what());
                                    assert!(oo.order <= MAX_ORDER, "{}", what());
                                    // What the slab counters will hold round-trips.
                                    let c =
                                        crate::slab::Counters::new(oo.objects, oo.objects, true);
                                    assert_eq!(
                                        (c.objects(), c.inuse()),
                                        (oo.objects, oo.objects),
                                        "{}",
                                        what()
                                    );
                                }
                                assert!(g.min.order <= g.oo.order, "{}", what());
                                if g.oo.order < min_order {
                                    // Only the cap may lower the order below min_order.
                                    assert!(
                                        (PAGE_SIZE << min_order) / g.size > MAX_OBJS_PER_SLAB,
                                        "{}",
                                        what()
                                    );
                                    capped += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            accepted > 100_000 && capped > 0,
            "{accepted} accepted, {capped} capped"
        );
    }

    /// The two configurations of issue #10 item 1.
    #[test]
    fn huge_min_objects_is_capped_to_the_objects_field() {
        let cfg = CacheConfig::new().min_objects(20_000).max_order(MAX_ORDER);
        let g = Geometry::compute("x", 8, &cfg, 2).unwrap();
        assert!(g.oo.objects as usize <= MAX_OBJS_PER_SLAB, "{g:?}");
        assert!(g.oo.objects >= 16_384, "{g:?}"); // the largest order that fits: 16384 x 8 B
        let cfg = CacheConfig::new().min_objects(22_000).max_order(MAX_ORDER);
        let g = Geometry::compute("x", 24, &cfg, 2).unwrap();
        assert!(g.oo.objects as usize <= MAX_OBJS_PER_SLAB, "{g:?}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = Geometry::compute("c", 0, &CacheConfig::new(), 1).unwrap_err();
        assert!(matches!(e, KmemError::InvalidSize { size: 0, .. }), "{e}");
        let e = Geometry::compute("c", usize::MAX / 2, &CacheConfig::new(), 1).unwrap_err();
        assert!(matches!(e, KmemError::InvalidSize { .. }), "{e}");
        let e = Geometry::compute("c", 8, &CacheConfig::new().align(48), 1).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = Geometry::compute("c", 8, &CacheConfig::new().align(8192), 1).unwrap_err();
        assert!(
            matches!(e, KmemError::InvalidAlignment { align: 8192, .. }),
            "{e}"
        );
        let e = Geometry::compute("c", 8, &CacheConfig::new().max_order(11), 1).unwrap_err();
        assert!(
            matches!(
                e,
                KmemError::InvalidConfig {
                    parameter: "max_order",
                    ..
                }
            ),
            "{e}"
        );
        let e = Geometry::compute("c", 8, &CacheConfig::new().min_order(3).max_order(2), 1)
            .unwrap_err();
        assert!(
            matches!(
                e,
                KmemError::InvalidConfig {
                    parameter: "min_order",
                    ..
                }
            ),
            "{e}"
        );
        let e = Geometry::compute("c", 8, &CacheConfig::new().min_objects(40000), 1).unwrap_err();
        assert!(
            matches!(
                e,
                KmemError::InvalidConfig {
                    parameter: "min_objects",
                    ..
                }
            ),
            "{e}"
        );
    }
}
