//! Exact page counts (`alloc_pages_exact`, `free_pages_exact`, `resize_exact`): the pages past
//! the count go back at allocation, come back together at free, and a block resizes in place.

use super::*;

/// Free bytes per the stats.
fn free_bytes(f: &Fixture) -> usize {
    f.stats().free_bytes
}

#[test]
fn exact_blocks_give_their_tail_back_and_merge_again_on_free() {
    let f = Fixture::one(usize::MAX);
    let pa = f.pa();
    let sizes = [
        1usize,
        3,
        5,
        7,
        8,
        9,
        100,
        513,
        PAGES_PER_CHUNK - 1,
        PAGES_PER_CHUNK,
    ];
    // (Miri's chunks are 32 pages.)
    for pages in sizes.into_iter().filter(|&p| p <= PAGES_PER_CHUNK) {
        let p = pa.alloc_pages_exact(pages, NORETRY).expect("exact block");
        let s = f.stats();
        // Only `pages` pages are out: the rest of the order block is back on the lists.
        assert_eq!(
            s.mapped_bytes - s.free_bytes,
            pages * PAGE_SIZE,
            "{pages}: {s:?}"
        );
        // SAFETY: a live descriptor.
        let info = unsafe { p.as_ref() }.info();
        assert_eq!(info.kind(), PageKind::Block);
        assert_eq!(info.block_pages(), pages);
        assert_eq!(info.order(), order_for_pages(pages));
        let base = mem(p);
        // Aligned to its order, and every page of it leads to its head.
        assert_eq!(base as usize % (PAGE_SIZE << info.order()), 0);
        // SAFETY: our block's memory.
        unsafe { base.write_bytes(0x77, pages * PAGE_SIZE) };
        for i in [0, pages / 2, pages - 1] {
            // SAFETY: inside our block.
            let h = virt_to_page(unsafe { base.add(i * PAGE_SIZE + 10) }).unwrap();
            assert!(ptr::eq(h, p.as_ptr()), "{pages}: page {i}");
        }
        // The page after the block (when it is inside the order block) is free, not ours.
        if pages < 1 << info.order() {
            // SAFETY: inside the chunk.
            let h = virt_to_page(unsafe { base.add(pages * PAGE_SIZE) }).unwrap();
            assert_eq!(h.info().kind(), PageKind::Free, "{pages}");
        }
        // SAFETY: ours, freed once with its count.
        unsafe { pa.free_pages_exact(p, pages) };
        assert_all_free(&f);
    }
}

/// Allocates blocks of 3, 5, 7, ... 41 pages (cycling) from a one-chunk allocator until one
/// fails, exact or rounded to a power of two; returns the pages asked for that were served.
fn fill_one_chunk(exact: bool) -> usize {
    let f = Fixture::one(CHUNK_SIZE);
    let pa = f.pa();
    let mut blocks = Vec::new();
    let mut used = 0;
    let mut n = 3;
    loop {
        let got = if exact {
            pa.alloc_pages_exact(n, NORETRY)
        } else {
            pa.alloc_pages(order_for_pages(n), NORETRY)
        };
        let Some(p) = got else { break };
        blocks.push((p, n));
        used += n;
        n = if n >= 41 { 3 } else { n + 2 };
    }
    assert_eq!(f.stats().chunks, 1);
    let mut rng = Rng(0xfeed);
    shuffle(&mut blocks, &mut rng);
    for (p, n) in blocks {
        // SAFETY: ours, freed once with its count or order.
        unsafe {
            if exact {
                pa.free_pages_exact(p, n)
            } else {
                pa.free_pages(p, order_for_pages(n))
            }
        };
    }
    assert_all_free(&f);
    used
}

#[test]
// Miri's chunks are 32 pages: too small for the spare pages of one block to serve a later one.
#[cfg_attr(miri, ignore)]
fn exact_blocks_serve_more_of_a_chunk_than_powers_of_two() {
    let (exact, pow2) = (fill_one_chunk(true), fill_one_chunk(false));
    assert!(exact > pow2, "exact {exact} pages, powers of two {pow2}");
}

#[test]
fn resize_exact_shrinks_and_grows_through_free_pages() {
    let f = Fixture::one(usize::MAX);
    let pa = f.pa();
    let p = pa.alloc_pages_exact(8, NORETRY).expect("8 pages");
    let base = mem(p);
    // SAFETY: ours.
    unsafe { base.write_bytes(0x3c, 8 * PAGE_SIZE) };
    // SAFETY: `p` is our block of 8 pages.
    assert!(unsafe { pa.resize_exact(p, 8, 3) });
    assert_eq!(f.stats().mapped_bytes - free_bytes(&f), 3 * PAGE_SIZE);
    // SAFETY: a live descriptor.
    assert_eq!(unsafe { p.as_ref() }.info().block_pages(), 3);
    // The pages given back are real free blocks: a one-page allocation takes page 3.
    let q = pa.alloc_pages(0, NORETRY).unwrap();
    assert_eq!(mem(q) as usize, base as usize + 3 * PAGE_SIZE);
    // Growing needs page 3, which `q` holds: refused, nothing changes.
    // SAFETY: as above.
    assert!(!unsafe { pa.resize_exact(p, 3, 6) });
    // SAFETY: a live descriptor.
    assert_eq!(unsafe { p.as_ref() }.info().block_pages(), 3);
    // SAFETY: `q` is ours, order 0.
    unsafe { pa.free_pages(q, 0) };
    // 3 -> 6 takes pages 3..6 out of the free blocks [3], [4, 8) and gives [6, 8) back.
    // SAFETY: as above.
    assert!(unsafe { pa.resize_exact(p, 3, 6) });
    assert_eq!(f.stats().mapped_bytes - free_bytes(&f), 6 * PAGE_SIZE);
    // SAFETY: page 5 of our grown block.
    let t = virt_to_page(unsafe { base.add(5 * PAGE_SIZE) }).unwrap();
    assert!(ptr::eq(t, p.as_ptr()), "grown pages lead to the head");
    // SAFETY: page 6, given back.
    let free6 = virt_to_page(unsafe { base.add(6 * PAGE_SIZE) }).unwrap();
    assert_eq!(free6.info().kind(), PageKind::Free);
    // The kept pages' contents are untouched.
    // SAFETY: ours.
    assert!((0..3 * PAGE_SIZE).all(|i| unsafe { *base.add(i) } == 0x3c));
    // Growing past the chunk's end is refused.
    // SAFETY: as above.
    assert!(!unsafe { pa.resize_exact(p, 6, PAGES_PER_CHUNK + 1) });
    // 6 -> 3/4 of a chunk crosses order boundaries; the block keeps its address.
    let big = PAGES_PER_CHUNK * 3 / 4;
    // SAFETY: as above.
    assert!(unsafe { pa.resize_exact(p, 6, big) });
    assert_eq!(f.stats().mapped_bytes - free_bytes(&f), big * PAGE_SIZE);
    // SAFETY: ours, with its current count.
    unsafe { pa.free_pages_exact(p, big) };
    assert_all_free(&f);
}

#[test]
fn pieces_tile_a_range_with_aligned_blocks() {
    let mut got = Vec::new();
    for_each_piece(5, 16, |j, o| got.push((j, o)));
    assert_eq!(got, [(5, 0), (6, 1), (8, 3)]);
    got.clear();
    for_each_piece(0, 13, |j, o| got.push((j, o)));
    assert_eq!(got, [(0, 3), (8, 2), (12, 0)]);
    // Every tiling is aligned, contiguous and covers the range exactly.
    for from in 0..40 {
        for to in from..80 {
            let mut next = from;
            for_each_piece(from, to, |j, o| {
                assert_eq!(j, next);
                assert_eq!(j % (1 << o), 0);
                next = j + (1 << o);
            });
            assert_eq!(next, to.max(from));
        }
    }
}

/// A block grown in place starts only as aligned as it was allocated: its pages must go back
/// as pieces aligned in the *chunk*, not relative to the block (found by the C contract test:
/// a later aligned allocation came back misaligned).
#[test]
fn a_block_grown_from_an_odd_page_goes_back_as_chunk_aligned_pieces() {
    for pcp in [false, true] {
        let f = if pcp {
            Fixture::with_pcp(1, usize::MAX, None)
        } else {
            Fixture::one(usize::MAX)
        };
        let pa = f.pa();
        let x = pa.alloc_pages_exact(1, NORETRY).unwrap();
        let y = pa.alloc_pages_exact(1, NORETRY).unwrap();
        let (lo, hi) = if mem(x) < mem(y) { (x, y) } else { (y, x) };
        // SAFETY: ours, freed once.
        unsafe { pa.free_pages_exact(lo, 1) };
        pa.drain_pcp(false);
        // `hi` sits at an odd page; it grows over the free pages after it.
        // SAFETY: ours, one page.
        assert!(unsafe { pa.resize_exact(hi, 1, 6) }, "pcp {pcp}");
        // SAFETY: ours, six pages now.
        unsafe { pa.free_pages_exact(hi, 6) };
        pa.drain_pcp(false);
        assert_all_free(&f);
        // Every order hands out aligned blocks again.
        for order in 0..=MAX_ORDER {
            let b = pa.alloc_pages(order, NORETRY).unwrap();
            assert_eq!(mem(b) as usize % (PAGE_SIZE << order), 0, "order {order}");
            // SAFETY: ours.
            unsafe { pa.free_pages(b, order) };
            pa.drain_pcp(false);
        }
        assert_all_free(&f);
    }
}
