//! kmalloc's unit tests: the class table and the alignment rule, every path round-tripped.

use super::*;
use core::alloc::GlobalAlloc;

/// The reference rule: the smallest class of `set` with size >= size and alignment >= align,
/// as an index into the cache table.
fn reference_in(set: &[usize], size: usize, align: usize) -> Option<usize> {
    let c = set
        .iter()
        .find(|&&c| c >= size && natural_align(c) >= align)?;
    SIZE_CLASSES.iter().position(|x| x == c)
}

fn reference(size: usize, align: usize) -> Option<usize> {
    reference_in(&SIZE_CLASSES, size, align)
}

#[test]
fn class_alignment_rule() {
    let want = [
        8, 16, 32, 16, 64, 16, 32, 16, 128, 32, 64, 32, 256, 64, 128, 64, 512, 128, 256, 128, 1024,
        256, 512, 256, 2048, 512, 1024, 512, 4096, 1024, 2048, 1024, 4096,
    ];
    assert_eq!(CLASS_ALIGN, want);
    assert_eq!(SIZE_CLASSES, SIZE_CLASSES_CONST);
    assert_eq!(kmalloc_size_classes(), &SIZE_CLASSES[..]);
    assert_eq!(KmallocClasses::Spaced.sizes(), kmalloc_size_classes());
    // Every kernel size is a class of the spaced set (the two share the caches).
    for k in KmallocClasses::Kernel.sizes() {
        assert!(SIZE_CLASSES.contains(k), "{k}");
    }
}

#[test]
fn spaced_classes_are_at_most_a_quarter_apart() {
    for w in SIZE_CLASSES.windows(2) {
        assert!(w[0] < w[1]);
        if w[0] >= 64 {
            assert!(w[1] * 4 <= w[0] * 5, "{} -> {}", w[0], w[1]);
        }
    }
    // The cache names follow the sizes (the kernel's `k` suffix for multiples of 1024).
    for (i, &c) in SIZE_CLASSES.iter().enumerate() {
        let want = if c >= 1024 && c % 1024 == 0 {
            format!("kmalloc-{}k", c / 1024)
        } else {
            format!("kmalloc-{c}")
        };
        assert_eq!(CLASS_NAMES[i], want);
    }
}

#[test]
// Pure arithmetic over ~100k cases: nothing for Miri to check, and minutes under it.
#[cfg_attr(miri, ignore)]
fn kernel_set_maps_every_layout_to_its_smallest_fitting_class() {
    for shift in 0..=14 {
        let align = 1usize << shift;
        for size in 1..=KMALLOC_MAX_CACHE_SIZE + 16 {
            assert_eq!(
                kernel_index(size, align),
                reference_in(&KERNEL_CLASSES, size, align),
                "size {size} align {align}"
            );
        }
    }
    let k = |s| KmallocClasses::Kernel.class_for(Layout::from_size_align(s, 8).unwrap());
    assert_eq!(k(200), Some(256));
    assert_eq!(k(257), Some(512));
    assert_eq!(k(4097), Some(8192));
}

#[test]
#[cfg_attr(miri, ignore)]
fn kernel_classes_round_trip_through_kmalloc() {
    let a = Kmalloc::kernel_classes();
    assert_eq!(a.classes(), KmallocClasses::Kernel);
    for size in [1usize, 100, 300, 600, 3000, 5000, 8192, 9000] {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero layouts; each block is freed once with its layout and set.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            if let Some(c) = KmallocClasses::Kernel.class_for(l) {
                assert_eq!(super::cabi::usable_size(p), Some(c), "size {size}");
            }
            let q = a.realloc(p, l, size + 1);
            a.dealloc(q, Layout::from_size_align(size + 1, 8).unwrap());
        }
    }
}

#[test]
// Pure arithmetic over ~100k cases: nothing for Miri to check, and minutes under it.
#[cfg_attr(miri, ignore)]
fn every_size_maps_to_the_smallest_fitting_class() {
    for size in 1..=KMALLOC_MAX_CACHE_SIZE {
        let idx = kmalloc_index(size, 1).unwrap();
        assert!(SIZE_CLASSES[idx] >= size, "size {size}");
        assert!(
            idx == 0 || SIZE_CLASSES[idx - 1] < size,
            "size {size} wastes a class"
        );
        assert_eq!(Some(idx), reference(size, 1), "size {size}");
    }
    assert_eq!(kmalloc_index(0, 1), Some(0));
    assert_eq!(kmalloc_index(KMALLOC_MAX_CACHE_SIZE + 1, 1), None);
}

#[test]
// Pure arithmetic over ~100k cases: nothing for Miri to check, and minutes under it.
#[cfg_attr(miri, ignore)]
fn every_size_and_alignment_maps_to_the_smallest_fitting_class() {
    for shift in 0..=14 {
        let align = 1usize << shift;
        for size in 1..=KMALLOC_MAX_CACHE_SIZE + 16 {
            let got = kmalloc_index(size, align);
            assert_eq!(got, reference(size, align), "size {size} align {align}");
            if let Some(i) = got {
                assert!(CLASS_ALIGN[i] >= align && SIZE_CLASSES[i] >= size);
            }
        }
    }
    let class = |s, a| kmalloc_index(s, a).map(|i| SIZE_CLASSES[i]);
    assert_eq!(class(90, 64), Some(128)); // 96 and 112 are too little aligned
    assert_eq!(class(72, 64), Some(128)); // 80, 96 and 112 are
    assert_eq!(class(72, 32), Some(96)); // 80 is only 16-aligned
    assert_eq!(class(104, 16), Some(112));
    assert_eq!(class(150, 32), Some(160));
    assert_eq!(class(150, 128), Some(256)); // 160 and 192 are too little aligned
    assert_eq!(class(150, 64), Some(192)); // 192 is fine
    assert_eq!(class(300, 256), Some(512)); // 320, 384, 448 are too little aligned
    assert_eq!(class(600, 128), Some(640));
    assert_eq!(class(1025, 512), Some(1536)); // 1280 is 256-aligned
    assert_eq!(class(5000, 2048), Some(6144));
    assert_eq!(kmalloc_index(8, 8192), None);
}

#[test]
fn large_kinds() {
    let k = |s, a| {
        kind_of(
            Layout::from_size_align(s, a).unwrap(),
            KmallocClasses::Spaced,
        )
    };
    assert_eq!(k(8192, 8), Kind::Class(NR_KMALLOC - 1));
    // Page multiples, not powers of two: 8193 B takes 3 pages, not 4.
    assert_eq!(k(8193, 8), Kind::Pages(3));
    assert_eq!(k(16384, 8), Kind::Pages(4));
    assert_eq!(k(20_000, 8), Kind::Pages(5));
    assert_eq!(k(1, 8192), Kind::Pages(2));
    // 1 MiB is order 8 where the page allocator goes that high (MAX_ORDER is 5 under Miri).
    let mib = if MAX_ORDER >= 8 {
        Kind::Pages(256)
    } else {
        Kind::Os {
            bytes: 1 << 20,
            align: PAGE_SIZE,
        }
    };
    assert_eq!(k(1 << 20, 8), mib);
    assert_eq!(k(PAGE_SIZE << MAX_ORDER, 8), Kind::Pages(1 << MAX_ORDER));
    assert_eq!(
        k((PAGE_SIZE << MAX_ORDER) + 1, 8),
        Kind::Os {
            bytes: (PAGE_SIZE << MAX_ORDER) + PAGE_SIZE,
            align: PAGE_SIZE
        }
    );
    assert_eq!(
        k(8 << 20, 8 << 20),
        Kind::Os {
            bytes: 8 << 20,
            align: 8 << 20
        }
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn global_alloc_paths_round_trip() {
    let a = Kmalloc::new();
    let sizes = [
        1usize,
        8,
        24,
        90,
        96,
        150,
        192,
        200,
        4096,
        8192,
        8193,
        100_000,
        5 << 20,
    ];
    let aligns = [1usize, 8, 64, 4096, 8192, 1 << 20];
    for &size in &sizes {
        for &align in &aligns {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero layouts; every block is freed once with its layout.
            unsafe {
                let p = a.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                p.write_bytes(0xa5, size);
                a.dealloc(p, l);
                let z = a.alloc_zeroed(l);
                assert!(
                    (0..size).all(|i| *z.add(i) == 0),
                    "size {size} align {align}"
                );
                let r = a.realloc(z, l, size * 2 + 1);
                assert!(!r.is_null());
                assert_eq!(r as usize % align, 0);
                assert!((0..size).all(|i| *r.add(i) == 0));
                a.dealloc(r, Layout::from_size_align(size * 2 + 1, align).unwrap());
            }
        }
    }
    let names: Vec<String> = Kmem::global()
        .slabinfo()
        .into_iter()
        .map(|r| r.name)
        .collect();
    for n in CLASS_NAMES {
        assert!(names.iter().any(|x| x == n), "{n} missing from slabinfo");
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn realloc_in_place_within_a_class_and_an_order() {
    let a = Kmalloc::new();
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: paired alloc/realloc/dealloc with matching layouts.
    unsafe {
        let p = a.alloc(l);
        assert_eq!(a.realloc(p, l, 112), p); // kmalloc-112 both
        let q = a.realloc(p, Layout::from_size_align(112, 8).unwrap(), 113);
        assert_ne!(q, p);
        let l2 = Layout::from_size_align(113, 8).unwrap();
        a.dealloc(q, l2);
        let big = Layout::from_size_align(20_000, 8).unwrap();
        let p = a.alloc(big);
        assert_eq!(a.realloc(p, big, 20_480), p); // 5 pages both
        let l5 = Layout::from_size_align(20_480, 8).unwrap();
        // Growing to 8 pages is in place only if the 3 pages after it are free (other tests
        // share the global instance): either way the contents move with it.
        p.write_bytes(0x3c, 20_480);
        let p = a.realloc(p, l5, 32_768);
        assert!((0..20_480).all(|i| *p.add(i) == 0x3c), "contents kept");
        // A page block shrinks in place (its last pages go back to the free lists)...
        let huge = Layout::from_size_align(32_768, 8).unwrap();
        p.write_bytes(0x3c, 32_768);
        let p2 = a.realloc(p, huge, 200_000);
        assert!(!p2.is_null());
        assert!(
            (0..32_768).all(|i| *p2.add(i) == 0x3c),
            "contents kept on growth"
        );
        let l200 = Layout::from_size_align(200_000, 8).unwrap();
        assert_eq!(
            a.realloc(p2, l200, 9_000),
            p2,
            "page blocks shrink in place"
        );
        // ... and grows in place when its buddies are free (whether they are depends on
        // the other tests sharing the global instance, so only the contents are checked).
        let l9k = Layout::from_size_align(9_000, 8).unwrap();
        let p3 = a.realloc(p2, l9k, 60_000);
        assert!((0..9_000).all(|i| *p3.add(i) == 0x3c), "contents kept");
        a.dealloc(p3, Layout::from_size_align(60_000, 8).unwrap());
    }
}

#[test]
#[cfg_attr(miri, ignore)] // mremap: Miri copies instead
fn os_mappings_grow_and_shrink_with_mremap() {
    let a = Kmalloc::new();
    let l5 = Layout::from_size_align(5 << 20, 8).unwrap();
    // SAFETY: paired alloc/realloc/dealloc with matching layouts.
    unsafe {
        let p = a.alloc(l5);
        assert!(!p.is_null());
        for i in (0..5 << 20).step_by(4096) {
            p.add(i).write((i >> 12) as u8);
        }
        // Growing: in place or moved by mremap; either way the table knows the new length
        // and the contents moved with the pages.
        let q = a.realloc(p, l5, 9 << 20);
        assert!(!q.is_null());
        assert_eq!(huge::lookup(q as usize).map(|m| m.0), Some(9 << 20));
        if q != p {
            assert_eq!(huge::lookup(p as usize), None, "the old start is forgotten");
        }
        assert!((0..5 << 20)
            .step_by(4096)
            .all(|i| *q.add(i) == (i >> 12) as u8));
        q.add((9 << 20) - 1).write(7);
        // Shrinking is always in place.
        let l9 = Layout::from_size_align(9 << 20, 8).unwrap();
        let r = a.realloc(q, l9, (6 << 20) + 1);
        assert_eq!(r, q);
        assert_eq!(huge::lookup(r as usize).map(|m| m.0), Some(6 << 20 | 4096));
        assert!((0..5 << 20)
            .step_by(4096)
            .all(|i| *r.add(i) == (i >> 12) as u8));
        a.dealloc(r, Layout::from_size_align((6 << 20) + 1, 8).unwrap());
        assert_eq!(huge::lookup(r as usize), None);
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn page_blocks_are_page_multiples_and_resize_in_place() {
    let a = Kmalloc::new();
    let l = Layout::from_size_align(8193, 8).unwrap();
    // SAFETY: paired alloc/realloc/dealloc with matching layouts.
    unsafe {
        let p = a.alloc(l);
        assert_eq!(super::cabi::usable_size(p), Some(3 * PAGE_SIZE));
        p.write_bytes(0x5a, 8193);
        a.dealloc(p, l);
        let l = Layout::from_size_align(20_000, 8).unwrap();
        let p = a.alloc(l);
        assert_eq!(super::cabi::usable_size(p), Some(5 * PAGE_SIZE));
        p.write_bytes(0x5a, 20_000);
        // Shrinking to 3 pages gives the last two back, in place.
        let q = a.realloc(p, l, 12_000);
        assert_eq!(q, p);
        assert_eq!(super::cabi::usable_size(q), Some(3 * PAGE_SIZE));
        assert!((0..12_000).all(|i| *q.add(i) == 0x5a));
        a.dealloc(q, Layout::from_size_align(12_000, 8).unwrap());
    }
}

#[test]
fn index_fast_agrees_with_index_where_it_answers() {
    for classes in [KmallocClasses::Spaced, KmallocClasses::Kernel] {
        for size in 1..=KMALLOC_MAX_CACHE_SIZE + 64 {
            for align in [1, 8, 16, 32, 64, 128, 256, 1024, 4096] {
                let full = classes.index(size, align);
                match classes.index_fast(size, align) {
                    Some(i) => assert_eq!(Some(i), full, "{classes:?} {size} {align}"),
                    // Left out: the sizes above the classes; for the spaced set, every layout
                    // aligned to more than every class is (`kmalloc_index_fast`); for the
                    // kernel's, the cold case (an over-aligned layout whose smallest class is
                    // not aligned enough).
                    None => assert!(
                        full.is_none()
                            || match classes {
                                KmallocClasses::Spaced => align > 8,
                                KmallocClasses::Kernel => align > 16,
                            },
                        "{classes:?} {size} {align}: index_fast gave up on {full:?}"
                    ),
                }
            }
        }
    }
}

/// Calls `f(idx, size, object, cache, slab order)` with one fresh object of every kmalloc class
/// (allocated with `Kmalloc`, freed after the call).
fn with_an_object_of_every_class(mut f: impl FnMut(usize, usize, *mut u8, &CacheInner, u32)) {
    let a = Kmalloc::new();
    for (idx, &size) in SIZE_CLASSES.iter().enumerate() {
        let layout = Layout::from_size_align(size, 1).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        let c = kmalloc_cache(idx).unwrap();
        let order = crate::page::virt_to_page(p).unwrap().info().order();
        f(idx, size, p, c, order);
        // SAFETY: `p` came from `a.alloc(layout)` and is freed once.
        unsafe { a.dealloc(p, layout) };
    }
}

#[test]
fn kmalloc_slabs_carry_their_class_tag() {
    with_an_object_of_every_class(|idx, size, p, c, order| {
        let want = if c.debug {
            0
        } else {
            crate::page::slab_tag_of(idx as u16 + 1, order)
        };
        assert_eq!(crate::page::slab_tag(p), want, "kmalloc-{size}");
    });
    // Not kmem memory at all: no tag.
    let x = 0u64;
    assert_eq!(crate::page::slab_tag(&x as *const u64 as *const u8), 0);
}

/// The protocol `page::slab_tag` states: a tagged cache's slab pages carry the tag from the
/// slab's creation to its discard, and none after.
#[test]
fn slab_tags_are_written_at_creation_and_cleared_at_discard() {
    let k = crate::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let cfg = crate::CacheConfig::new().sheaf_capacity(0).min_partial(0);
    let c = k.create_cache("tagged", 192, cfg).unwrap();
    c.inner().slab_tag.store(7, crate::sync::Ordering::Relaxed);
    let objs: Vec<_> = (0..200).map(|_| c.alloc().unwrap()).collect();
    let order = crate::page::virt_to_page(objs[0].as_ptr())
        .unwrap()
        .info()
        .order();
    for o in &objs {
        assert_eq!(
            crate::page::slab_tag(o.as_ptr()),
            crate::page::slab_tag_of(7, order)
        );
    }
    for &o in &objs {
        // SAFETY: every object came from `c` and is freed once.
        unsafe { c.free(o) };
    }
    c.shrink();
    assert_eq!(c.info().num_slabs, 0, "shrink discards every empty slab");
    for o in &objs {
        assert_eq!(crate::page::slab_tag(o.as_ptr()), 0);
    }
}

/// Each class's view (`slub/view.rs`) is the cache's fast-path fields: the inline paths see
/// it exactly when the cache's mode says they may, and it gives the same object-start
/// answers as the cache's own check.
#[test]
fn class_views_agree_with_their_caches() {
    with_an_object_of_every_class(|idx, size, p, c, order| {
        let v = kmalloc_view(idx).expect("the views are published with the caches");
        let mode = c.pcs_mode.load(crate::sync::Ordering::Relaxed);
        let s = c.kmem();
        let could = crate::slub::pcs_mode(c.use_sheaves(), s.rseq, s.nr_nodes);
        assert_eq!(mode, if c.debug { 0 } else { could }, "kmalloc-{size}");
        assert_eq!(
            kmalloc_pop_view(idx).is_some(),
            could & crate::slub::PCS_FAST_ALLOC != 0
        );
        assert_eq!(
            kmalloc_push_view(idx).is_some(),
            could & crate::slub::PCS_FAST_FREE != 0
        );
        // The object was allocated from a slab of the class's first order (no fallback here).
        assert_eq!(order, c.geo.oo.order, "kmalloc-{size}");
        if c.debug {
            assert_eq!(v.tag(), PcsView::NO_TAG, "kmalloc-{size}");
        } else {
            assert_eq!(crate::page::slab_tag(p), v.tag(), "kmalloc-{size}");
        }
        for off in [0, 1, 8, size / 2, size, size + 8] {
            let q = p.wrapping_add(off);
            assert_eq!(
                v.starts_object(q),
                c.starts_object(order, q),
                "kmalloc-{size}, offset {off}"
            );
        }
    });
}

/// A class whose cache cannot pop inline (no sheaves, a slub_debug cache) has a view with no
/// slot: its pop and push fail at once and change nothing. (`kmalloc_set_sheaves` publishes
/// and withdraws the views: `tests/kmalloc_toggle.rs`.)
#[test]
fn a_view_without_sheaves_sends_every_operation_out_of_line() {
    let k = crate::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache("view-none", 64, crate::CacheConfig::new())
        .unwrap();
    let v = PcsView::of(c.inner());
    assert_eq!(v.tag(), PcsView::NO_TAG);
    let p = c.alloc().unwrap();
    // The sequences run only in the rseq mode (in the locked mode no rseq area is known, and
    // the views are never published).
    if k.commit_mode() == crate::cpu::CommitMode::Rseq {
        assert!(v.pop().is_none());
        assert!(!v.push(p.as_ptr() as usize));
    }
    // SAFETY: `p` came from `c` and is freed once.
    unsafe { c.free(p) };
}

/// A view's free check is its cache's for a slab of the cache's first order, at every offset
/// of such a slab, for sizes that are powers of two and others and for one- and multi-page
/// slabs; a cache without a tag, or coloured, gets a tag no slab carries.
#[test]
#[cfg_attr(miri, ignore)] // every offset of fourteen slabs: long under Miri
fn view_check_is_the_cache_check_for_its_order() {
    let k = crate::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    for (i, size) in [
        8, 24, 64, 96, 112, 192, 256, 448, 640, 1024, 1536, 3072, 4096, 6144,
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = crate::CacheConfig::new().sheaf_capacity(16).min_objects(4);
        let c = k.create_cache("view-check", size, cfg).unwrap();
        let inner = c.inner();
        // A class's id in place of the one the sheaf cache took (given back: no slab yet).
        crate::slub::tag_id::give_back(
            inner
                .slab_tag
                .swap(i as u16 + 1, crate::sync::Ordering::Relaxed),
        );
        let v = PcsView::of(inner);
        let order = inner.geo.oo.order;
        assert_eq!(
            v.tag(),
            crate::page::slab_tag_of(i as u16 + 1, order),
            "size {size}"
        );
        let slab = crate::page::PAGE_SIZE << order;
        // A slab base with high bits set: only the offset may matter.
        let base = 0x7f12_3400_0000usize;
        let mut starts = 0;
        for off in 0..slab {
            let p = (base + off) as *mut u8;
            let want = inner.starts_object(order, p);
            assert_eq!(v.starts_object(p), want, "size {size}, offset {off}");
            starts += usize::from(want);
        }
        assert_eq!(starts, slab / inner.geo.size, "size {size}");
        drop(c);
    }
    // No tag, or coloured: the inline check never vouches.
    for (name, cfg) in [
        // No sheaves: no tag id.
        ("view-untagged", crate::CacheConfig::new()),
        (
            "view-coloured",
            crate::CacheConfig::new().sheaf_capacity(16).colour(true),
        ),
    ] {
        let c = k.create_cache(name, 96, cfg).unwrap();
        if name == "view-coloured" {
            crate::slub::tag_id::give_back(
                c.inner().slab_tag.swap(9, crate::sync::Ordering::Relaxed),
            );
        }
        assert_eq!(PcsView::of(c.inner()).tag(), PcsView::NO_TAG, "{name}");
        drop(c);
    }
}

/// The kmalloc caches' metadata shares the pages of one arena (`MetaArena`) instead of each
/// cache having a mapping of whole pages: with two CPUs, 15 pages for the 33 caches instead of
/// 33 (all resident).
#[test]
#[cfg_attr(miri, ignore)] // the global instance's caches: many mappings, slow under Miri
fn kmalloc_caches_share_their_metadata_pages() {
    let caches: Vec<&CacheInner> = (0..NR_KMALLOC)
        .map(|i| kmalloc_cache(i).expect("kmalloc caches"))
        .collect();
    let nr_cpus = caches[0].nr_cpus;
    // About 1 KiB plus 576 bytes per CPU each: in the arena up to a quarter of its mapping.
    if nr_cpus > 96 {
        eprintln!(
            "kmalloc_caches_share_their_metadata_pages: SKIPPED: {nr_cpus} CPUs, each cache's \
             metadata may not fit the arena"
        );
        return;
    }
    for (c, name) in caches.iter().zip(CLASS_NAMES) {
        assert!(c.in_arena(), "{name}: metadata in a mapping of its own");
    }
    // Consecutive caches are packed, not a page (or more) apart: with at most two CPUs a
    // cache's metadata is under 3 KiB (a permutation of up to 512 objects included).
    if nr_cpus <= 2 {
        for (w, name) in caches.windows(2).zip(CLASS_NAMES) {
            let (a, b) = (
                w[0] as *const CacheInner as usize,
                w[1] as *const CacheInner as usize,
            );
            // A new arena mapping may start anywhere; within one, b follows a.
            if b > a && b - a < MetaArena::CHUNK {
                assert!(
                    b - a < PAGE_SIZE,
                    "{name}: the next cache {} bytes on",
                    b - a
                );
            }
        }
    }
}

/// The small classes whose page leaves a tail of a 64th or more take two-page slabs when two
/// pages leave less (`kmalloc_slab_order`): 96 and 112 bytes, and no other class. The slabs of
/// every class of at least 32 objects per slab then waste less than a 64th of themselves, and
/// every class keeps the kernel's fallback order (a one-page slab where one page holds an
/// object), taken when no block of the preferred order is to be had.
#[test]
fn small_classes_take_the_order_with_the_smaller_tail() {
    let changed: Vec<usize> = SIZE_CLASSES
        .iter()
        .copied()
        .filter(|&s| kmalloc_slab_order(s) == 1)
        .collect();
    assert_eq!(changed, [96, 112]);
    with_an_object_of_every_class(|_, size, _, c, order| {
        let slab = crate::page::PAGE_SIZE << order;
        let tail = slab % c.geo.size;
        assert!(order >= kmalloc_slab_order(size), "kmalloc-{size}");
        let fallback = crate::slub::geometry::get_order(c.geo.size).min(c.geo.oo.order);
        assert_eq!(
            c.geo.min.order, fallback,
            "kmalloc-{size}: the fallback order"
        );
        if slab / c.geo.size >= 32 {
            assert!(
                tail * 64 < slab,
                "kmalloc-{size}: {tail} of {slab} bytes unused"
            );
        }
    });
}
