//! The per-CPU page lists (`pcp.rs`): allocations and frees of small orders go through the
//! calling CPU's slot, batched against the buddy lists, bounded by the high watermark, drained
//! by shrink and decay, and bypassed when the slot lock is busy.

use super::*;
use crate::page::pcp::{PCP_BATCH, PCP_HIGH, PCP_MAX_ORDER};

/// A free-list-and-pcp total that must equal the mapped bytes when nothing is allocated.
fn all_free_counting_pcp(f: &Fixture) {
    let s = f.stats();
    assert_eq!(s.free_bytes + s.pcp_bytes, s.mapped_bytes, "{s:?}");
}

#[test]
fn small_blocks_go_through_the_slot_and_come_back_lifo() {
    let f = Fixture::with_pcp(1, usize::MAX, None);
    let pa = f.pa();
    // The very first allocation finds nothing to refill the slot with (no chunk yet): it takes
    // the buddy path, which maps one.
    let a = pa.alloc_pages(0, NORETRY).unwrap();
    assert_eq!(f.stats().pcp_bytes, 0);
    // SAFETY: ours.
    unsafe { pa.free_pages(a, 0) };
    assert_eq!(f.stats().pcp_bytes, PAGE_SIZE);
    // SAFETY: a live descriptor: the block is free, on the slot's list.
    assert_eq!(unsafe { a.as_ref() }.info().kind(), PageKind::Pcp);
    // LIFO: the block just freed is the next one handed out.
    let b = pa.alloc_pages(0, NORETRY).unwrap();
    assert_eq!(a, b);
    // SAFETY: ours.
    assert_eq!(unsafe { b.as_ref() }.info().kind(), PageKind::Block);
    assert_eq!(f.stats().pcp_bytes, 0);
    // An empty list refills a batch from the buddy lists: the rest of it waits on the slot.
    let c = pa.alloc_pages(0, NORETRY).unwrap();
    assert_eq!(f.stats().pcp_bytes, (PCP_BATCH - 1) * PAGE_SIZE);
    // SAFETY: ours.
    unsafe {
        pa.free_pages(b, 0);
        pa.free_pages(c, 0);
    }
    all_free_counting_pcp(&f);
    let s = f.stats();
    assert!(s.allocs >= 3 && s.frees >= 2, "{s:?}");
    // Draining gives everything back to the buddy lists, which coalesce again.
    assert_eq!(pa.drain_pcp(false), PCP_BATCH + 1);
    assert_eq!(f.stats().pcp_bytes, 0);
    assert_all_free(&f);
}

#[test]
fn a_slot_never_holds_more_than_the_high_watermark() {
    let f = Fixture::with_pcp(1, usize::MAX, None);
    let pa = f.pa();
    for order in 0..=PCP_MAX_ORDER {
        let blocks: Vec<_> = (0..((4 * PCP_HIGH) >> order))
            .map(|_| pa.alloc_pages(order, NORETRY).unwrap())
            .collect();
        for b in blocks {
            // SAFETY: ours, freed once.
            unsafe { pa.free_pages(b, order) };
            assert!(f.stats().pcp_bytes <= PCP_HIGH * PAGE_SIZE, "order {order}");
        }
        all_free_counting_pcp(&f);
    }
    pa.drain_pcp(false);
    assert_all_free(&f);
}

#[test]
fn exact_blocks_use_the_slot_and_keep_their_spare_pages_there() {
    let f = Fixture::with_pcp(1, usize::MAX, None);
    let pa = f.pa();
    // Put one order-2 block on the slot.
    let x = pa.alloc_pages(2, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe { pa.free_pages(x, 2) };
    // 3 pages: that order-2 block, from the slot, its fourth page back on the order-0 list.
    let p = pa.alloc_pages_exact(3, NORETRY).unwrap();
    assert_eq!(p, x);
    // SAFETY: a live descriptor.
    assert_eq!(unsafe { p.as_ref() }.info().block_pages(), 3);
    let s = f.stats();
    assert_eq!(
        s.mapped_bytes - s.free_bytes - s.pcp_bytes,
        3 * PAGE_SIZE,
        "{s:?}"
    );
    // The spare page is the next order-0 block.
    let q = pa.alloc_pages(0, NORETRY).unwrap();
    assert_eq!(mem(q) as usize, mem(p) as usize + 3 * PAGE_SIZE);
    // SAFETY: ours, freed once each.
    unsafe {
        pa.free_pages(q, 0);
        pa.free_pages_exact(p, 3);
    }
    all_free_counting_pcp(&f);
    pa.drain_pcp(false);
    assert_all_free(&f);
}

#[test]
fn a_busy_slot_sends_allocations_and_frees_to_the_buddy_lists() {
    let f = Fixture::with_pcp(1, usize::MAX, None);
    let pa = f.pa();
    // SAFETY: the fixture's single slot, alive as long as `f`.
    let slot = unsafe { &(*f.pcp.unwrap())[0] };
    let held = slot.lists.lock();
    // This thread holds the slot lock: the paths only try it, so they go around it (a
    // descheduled holder must not stall anyone).
    let a = pa.alloc_pages(1, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe { pa.free_pages(a, 1) };
    drop(held);
    let s = f.stats();
    assert_eq!((s.pcp_bytes, s.free_bytes), (0, s.mapped_bytes), "{s:?}");
    assert_all_free(&f);
}

#[test]
fn decay_drains_idle_slots_then_releases_their_pages() {
    const MS: u64 = 1_000_000;
    let f = Fixture::with_pcp(2, usize::MAX, Some(8 * MS));
    // SAFETY: the budget lives as long as the fixture.
    let budget = unsafe { &*f.budget };
    budget
        .fake_now
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let pa = f.pa();
    let b = pa.alloc_pages(2, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe {
        mem(b).write_bytes(7, 4 * PAGE_SIZE);
        pa.free_pages(b, 2)
    };
    assert!(f.stats().pcp_bytes > 0);
    // The slot was used since the last run: the first run only marks it idle; the next one
    // drains it; the blocks then age on the buddy lists and go back to the OS.
    let mut t = 1;
    let mut released = 0;
    for _ in 0..12 {
        t += 2 * MS;
        released += pa.decay_tick(t);
    }
    let s = f.stats();
    assert_eq!(s.pcp_bytes, 0, "{s:?}");
    assert!(released >= 4 * PAGE_SIZE, "released {released}");
    assert_eq!(s.resident_bytes, 0, "{s:?}");
    assert_all_free(&f);
}

#[test]
fn the_limit_drains_the_slots_before_failing() {
    // One chunk: after the slots hold free blocks, an allocation the buddy lists cannot serve
    // finds them through the drain, instead of failing at the limit.
    let f = Fixture::with_pcp(1, CHUNK_SIZE, None);
    let pa = f.pa();
    // (Miri's chunks are 32 pages.)
    let small: Vec<_> = (0..PCP_HIGH.min(PAGES_PER_CHUNK / 2))
        .map(|_| pa.alloc_pages(0, NORETRY).unwrap())
        .collect();
    for b in small {
        // SAFETY: ours.
        unsafe { pa.free_pages(b, 0) };
    }
    assert!(f.stats().pcp_bytes > 0);
    let whole = pa.alloc_pages(MAX_ORDER, GfpFlags::NONE);
    assert!(whole.is_some(), "{:?}", f.stats());
    // SAFETY: ours.
    unsafe { pa.free_pages(whole.unwrap(), MAX_ORDER) };
    assert_all_free(&f);
}

#[test]
#[cfg_attr(miri, ignore)] // thread-heavy; the single-threaded tests cover the paths under Miri
fn threads_share_slots_without_losing_or_doubling_pages() {
    let f = Fixture::with_pcp(2, usize::MAX, None);
    let pa = f.pa();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                let mut rng = Rng(0x9e37 + t as u64);
                let mut held: Vec<(NonNull<Page>, usize)> = Vec::new();
                for _ in 0..3000 {
                    if held.len() < 32 && rng.below(3) != 0 {
                        let pages = 1 + rng.below(8);
                        let p = pa.alloc_pages_exact(pages, NORETRY).unwrap();
                        // SAFETY: ours: stamp every page with our id.
                        unsafe { mem(p).write_bytes(t, pages * PAGE_SIZE) };
                        held.push((p, pages));
                    } else if let Some((p, pages)) = held.pop() {
                        let m = mem(p);
                        // SAFETY: still ours: nobody overwrote it.
                        let all = (0..pages * PAGE_SIZE).all(|i| unsafe { *m.add(i) } == t);
                        assert!(all, "a page was handed out twice");
                        // SAFETY: ours, freed once.
                        unsafe { pa.free_pages_exact(p, pages) };
                    }
                }
                for (p, pages) in held {
                    // SAFETY: ours, freed once.
                    unsafe { pa.free_pages_exact(p, pages) };
                }
            });
        }
    });
    all_free_counting_pcp(&f);
    pa.drain_pcp(false);
    assert_all_free(&f);
}
