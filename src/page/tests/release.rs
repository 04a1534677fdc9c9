//! Returning memory to the OS: larger OS pages, failed `madvise`, blocks in transit and fork.

use super::*;

/// Issue #10 item 2: on a kernel with 16 KiB or 64 KiB pages, a block smaller than an OS page
/// must never be passed to `madvise`: an unaligned one fails (`EINVAL`) and must not be marked
/// released (it would be handed out as "zeroed" while dirty); an aligned one would drop the
/// whole OS page with its live neighbours. Blocks of at least one OS page are still released.
#[test]
#[cfg_attr(miri, ignore)] // Miri's `release` writes zeroes instead of emulating a kernel
fn release_with_larger_os_pages_never_touches_a_partial_os_page() {
    for os_page in [16usize << 10, 64 << 10] {
        let per = os_page / PAGE_SIZE;
        let f = Fixture::with_os(
            os_page,
            os::TestOs {
                emulate: true,
                fail_madvise: false,
            },
        );
        let pages: Vec<NonNull<Page>> = (0..PAGES_PER_CHUNK)
            .map(|_| f.pa().alloc_pages(0, NORETRY).unwrap())
            .collect();
        let mut by_index = vec![None; PAGES_PER_CHUNK];
        let base = pages.iter().map(|&p| mem(p) as usize).min().unwrap();
        let pattern = |i: usize| 0x80 | (i % 64) as u8;
        for &p in &pages {
            let i = (mem(p) as usize - base) / PAGE_SIZE;
            // SAFETY: our page.
            unsafe { mem(p).write_bytes(pattern(i), PAGE_SIZE) };
            by_index[i] = Some(p);
        }
        // Free: the odd pages (dirty order-0 blocks between live ones, never OS-page aligned);
        // at every other OS page boundary, the even page too (a dirty OS-page-aligned order-1
        // block, smaller than the OS page, with live pages after it); and one whole OS page's
        // worth (it merges into a dirty block of exactly one OS page).
        let group = 4 * per..5 * per;
        let mut live = Vec::new();
        for (i, p) in by_index.iter().enumerate() {
            let p = p.unwrap();
            if i % 2 == 1 || i % (2 * per) == per || group.contains(&i) {
                // SAFETY: allocated above with order 0, freed once.
                unsafe { f.pa().free_pages(p, 0) };
            } else {
                live.push((i, p));
            }
        }
        let before = f.stats();
        let released = f.pa().release_free();
        let s = f.stats();
        for &(i, p) in &live {
            // SAFETY: still ours.
            let bytes = unsafe { core::slice::from_raw_parts(mem(p), PAGE_SIZE) };
            assert!(
                bytes.iter().all(|&b| b == pattern(i)),
                "os page {os_page}: live page {i} was zapped by a release"
            );
        }
        // Every free block handed out with ZERO really is zero.
        let mut again = Vec::new();
        while let Some(p) = f.pa().alloc_pages(0, NORETRY | GfpFlags::ZERO) {
            // SAFETY: our page.
            let bytes = unsafe { core::slice::from_raw_parts(mem(p), PAGE_SIZE) };
            let i = (mem(p) as usize - base) / PAGE_SIZE;
            assert!(
                bytes.iter().all(|&b| b == 0),
                "os page {os_page}: page {i} handed out as zeroed but dirty"
            );
            again.push(p);
        }
        assert_eq!(
            released, os_page,
            "os page {os_page}: only the whole OS page may be released: {s:?}"
        );
        assert_eq!(s.released_bytes_total as usize, os_page, "{s:?}");
        assert_eq!(s.resident_bytes, before.resident_bytes - os_page, "{s:?}");
        for p in again.into_iter().chain(live.into_iter().map(|(_, p)| p)) {
            // SAFETY: ours, order 0.
            unsafe { f.pa().free_pages(p, 0) };
        }
        assert_all_free(&f);
    }
}

/// Issue #10 item 2: a failing `madvise` (forced) must leave the block dirty: not counted as
/// released, and memset by a later `ZERO` allocation.
#[test]
#[cfg_attr(miri, ignore)] // Miri's `release` writes zeroes instead of emulating a kernel
fn failed_madvise_leaves_the_block_dirty() {
    let f = Fixture::with_os(
        os::page_size(),
        os::TestOs {
            emulate: false,
            fail_madvise: true,
        },
    );
    // Released on formation (order MAX_ORDER >= RELEASE_ORDER): the release fails.
    let p = f.pa().alloc_pages(MAX_ORDER, NORETRY).unwrap();
    // SAFETY: our block.
    unsafe { mem(p).write_bytes(0xab, CHUNK_SIZE) };
    // SAFETY: allocated above.
    unsafe { f.pa().free_pages(p, MAX_ORDER) };
    let formed = f.stats();
    // release_free fails too, and says so.
    let released = f.pa().release_free();
    let s = f.stats();
    let q = f
        .pa()
        .alloc_pages(MAX_ORDER, NORETRY | GfpFlags::ZERO)
        .unwrap();
    // SAFETY: our block.
    let bytes = unsafe { core::slice::from_raw_parts(mem(q), CHUNK_SIZE) };
    let dirty = bytes.iter().filter(|&&b| b != 0).count();
    assert_eq!(dirty, 0, "a ZERO allocation returned {dirty} dirty bytes");
    assert_eq!(formed.released_bytes_total, 0, "{formed:?}");
    assert_eq!(formed.resident_bytes, CHUNK_SIZE, "{formed:?}");
    assert_eq!(released, 0);
    assert_eq!((s.released_bytes_total, s.resident_bytes), (0, CHUNK_SIZE));
    // SAFETY: allocated above.
    unsafe { f.pa().free_pages(q, MAX_ORDER) };
    assert_all_free(&f);
}

/// Puts the allocated block `p` of `order` in transit, as a release in progress would.
fn detach_as_in_transit(f: &Fixture, p: NonNull<Page>, order: u32) {
    let mut st = f.pa().state.lock();
    // SAFETY: `p` is our allocated block; the lock is held.
    unsafe {
        p.as_ref().set_info(in_transit(0));
        st.isolate(p.as_ptr(), order);
    }
}

/// Undoes [`detach_as_in_transit`]: the block goes back to the free lists.
fn finish_transit(f: &Fixture, p: NonNull<Page>, order: u32) {
    let mut st = f.pa().state.lock();
    // SAFETY: on the transit list since `detach_as_in_transit`.
    unsafe {
        st.unisolate(p.as_ptr());
        f.pa().insert_merging(st, p.as_ptr(), order, false);
    }
}

/// Issue #10 item 4: an allocation never waits without bound for blocks in transit. If the
/// calling thread is itself the releaser (a signal handler that interrupted its `madvise`) it
/// does not wait at all; otherwise it waits at most `WAIT_NS`, then fails by the limit rules
/// or maps a new chunk.
#[test]
#[cfg_attr(miri, ignore)] // timing
fn transit_waits_are_bounded_and_never_for_oneself() {
    use std::time::{Duration, Instant};
    let f = Fixture::one(CHUNK_SIZE);
    let p = f.pa().alloc_pages(MAX_ORDER, NORETRY).unwrap();
    detach_as_in_transit(&f, p, MAX_ORDER);
    // This thread "is releasing": no wait at all.
    let t = Instant::now();
    let got = {
        let _releasing = PageReleaseScope::enter();
        f.pa().alloc_pages(0, GfpFlags::NONE)
    };
    let own = t.elapsed();
    assert!(
        got.is_none(),
        "the limit is reached and the only block is in transit"
    );
    assert!(
        own < Duration::from_millis(50),
        "waited {own:?} for its own release"
    );
    // Another thread's release that never ends (a stuck releaser): a bounded wait, then the
    // limit rules (fail).
    let t = Instant::now();
    assert!(f.pa().alloc_pages(0, GfpFlags::NONE).is_none());
    let other = t.elapsed();
    assert!(
        other >= Duration::from_nanos(WAIT_NS) && other < Duration::from_secs(5),
        "waited {other:?}"
    );
    finish_transit(&f, p, MAX_ORDER);
    assert_all_free(&f);
    // Without a limit, the bounded wait ends in growth.
    let g = Fixture::one(usize::MAX);
    let p = g.pa().alloc_pages(MAX_ORDER, NORETRY).unwrap();
    detach_as_in_transit(&g, p, MAX_ORDER);
    let q = g
        .pa()
        .alloc_pages(0, GfpFlags::NONE)
        .expect("grows past a stuck release");
    assert_eq!(g.stats().chunks, 2);
    // SAFETY: allocated above.
    unsafe { g.pa().free_pages(q, 0) };
    finish_transit(&g, p, MAX_ORDER);
    assert_all_free(&g);
}

/// Issue #10 item 4: the fork child handler takes blocks in transit back to the free lists
/// (dirty), and a release that resumes in the child after a takeover forgets its block.
#[test]
#[cfg(not(miri))] // the fork handlers are not built under Miri
fn fork_child_takeover_returns_blocks_in_transit() {
    let f = Fixture::one(CHUNK_SIZE);
    let p = f.pa().alloc_pages(MAX_ORDER, NORETRY).unwrap();
    // SAFETY: our block.
    unsafe { mem(p).write_bytes(0x5a, PAGE_SIZE) };
    detach_as_in_transit(&f, p, MAX_ORDER);
    // As in a child whose releasing thread is gone.
    f.pa().fork_child_reclaim();
    let s = f.stats();
    assert_eq!(s.free_bytes, CHUNK_SIZE, "{s:?}");
    assert_eq!(f.pa().state.lock().transit, 0);
    // Back on the lists (and released again on formation, the block being of MAX_ORDER).
    let q = f
        .pa()
        .alloc_pages(MAX_ORDER, NORETRY | GfpFlags::ZERO)
        .unwrap();
    // SAFETY: our block.
    assert_eq!(unsafe { *mem(q) }, 0);
    // SAFETY: allocated above.
    unsafe { f.pa().free_pages(q, MAX_ORDER) };
    assert_all_free(&f);
    // A fork made by a signal handler that interrupted this thread's release: the blocks are
    // leaked in the child, never handed out while the release may still madvise them.
    let p = f.pa().alloc_pages(MAX_ORDER, NORETRY).unwrap();
    detach_as_in_transit(&f, p, MAX_ORDER);
    {
        let _releasing = PageReleaseScope::enter();
        f.pa().fork_child_reclaim();
    }
    let s = f.stats();
    assert_eq!(s.free_bytes, 0, "{s:?}");
    assert_eq!(f.pa().state.lock().transit, 0);
    assert!(f.pa().alloc_pages(0, NORETRY).is_none());
}
