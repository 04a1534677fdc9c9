//! A cache's geometry — object size and alignment, free-pointer offset, slab order and objects
//! per slab, partial-list limits — computed from a [`CacheConfig`] the way
//! `calculate_sizes`/`calculate_order`/`calc_slab_order` do in `mm/slub.c` (Linux 6.7+: objects
//! per slab capped at `MAX_OBJS_PER_PAGE`), with every bad parameter refused by name.

use crate::config::{CacheConfig, CacheFlags, CACHE_LINE_SIZE, DEFAULT_MAX_ORDER};
use crate::error::KmemError;
use crate::page::{MAX_ORDER, PAGE_SIZE};
use crate::slub::slab::MAX_OBJS_PER_SLAB;

const MIN_PARTIAL: usize = 5;
const MAX_PARTIAL: usize = 10;
const WORD: usize = core::mem::size_of::<usize>();

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
pub(crate) fn get_order(size: usize) -> u32 {
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
    /// The end of the object and its right red zone, from the object's start (`s->inuse`):
    /// the free pointer (when outside the object) and the owner records follow it.
    pub(crate) inuse: usize,
    /// Bytes of left red zone before each object (`s->red_left_pad`; 0 without `RED_ZONE`):
    /// object `i` of a slab starts at `base + i * size + red_left_pad`.
    pub(crate) red_left_pad: usize,
    pub(crate) oo: OrderObjects,
    pub(crate) min: OrderObjects,
    pub(crate) min_partial: usize,
    pub(crate) cpu_partial_slabs: usize,
    /// Slab colouring's step (`colour_off`; 0: no colouring).
    pub(crate) colour_off: usize,
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
        if cfg.sheaf_capacity > crate::MAX_SHEAF_CAPACITY {
            return Err(KmemError::InvalidConfig {
                parameter: "sheaf_capacity",
                value: cfg.sheaf_capacity,
                reason: "at most MAX_SHEAF_CAPACITY (1020)",
            });
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
        // A cache with slub_debug flags lays its objects out as `calculate_sizes` does under
        // `SLAB_RED_ZONE` / `SLAB_POISON` / `SLAB_STORE_USER` (`debug/layout.rs`); without
        // them the layout below is the whole story.
        let (size, offset, inuse, red_left_pad) = if cfg.flags.0 & CacheFlags::DEBUG != 0 {
            let l = crate::debug::layout::calculate_sizes(
                object_size,
                align,
                cfg.flags,
                cfg.ctor.is_some(),
            );
            (l.size, l.offset, l.inuse, l.red_left_pad)
        } else {
            let mut size = object_size.next_multiple_of(WORD);
            let inuse = size;
            let offset = if cfg.ctor.is_some() {
                let off = size;
                size += WORD;
                off
            } else {
                (object_size / 2) / WORD * WORD
            };
            (size, offset, inuse, 0)
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
        // `prefer_order` (crate-internal) starts the search higher without raising the fallback.
        let start = cfg.min_order.max(cfg.prefer_order.min(max_order));
        let order = calculate_order(size, min_objects, start, max_order)
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
        // TYPESAFE_BY_RCU: no empty slab is ever discarded while the cache lives.
        let min_partial = if cfg
            .flags
            .contains(crate::config::CacheFlags::TYPESAFE_BY_RCU)
        {
            usize::MAX
        } else {
            min_partial
        };
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
        // Not for a cache on the debug paths (they place objects at fixed offsets).
        let colour_off = if cfg.colour
            && cfg.flags.0 & CacheFlags::DEBUG == 0
            && cfg.failslab == crate::page::FaultInjection::None
        {
            align.max(CACHE_LINE_SIZE)
        } else {
            0
        };
        Ok(Geometry {
            colour_off,
            object_size,
            size,
            align,
            offset,
            inuse,
            red_left_pad,
            oo,
            min,
            min_partial,
            cpu_partial_slabs,
        })
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
                                    let c = crate::slub::slab::Counters::new(
                                        oo.objects, oo.objects, true,
                                    );
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
