//! Model 19: two `release_free` calls and a free, on one node (`src/page/release.rs`).
//!
//! One chunk is 4 pages under loom (`MAX_ORDER = 2`). Pages 0 and 2 are free and dirty, pages 1
//! and 3 allocated, so the free lists hold two order-0 blocks that are not buddies. Thread A
//! releases every dirty block; thread B frees page 1 (which merges with page 0 if page 0 is on
//! its free list, and not while it is in transit) and then releases too. A release detaches
//! its blocks onto the transit list under the node lock, drops the lock, and takes them back
//! one by one: it walks its own run of the transit list, which another release can only
//! extend in front of it. At the end every page must be free, and once page 3 is freed the
//! chunk must be one order-2 block: a block lost in transit or inserted twice shows there.
//! Mutant: `release_run_next_after_unisolate` (the walk reads the next block of its run after
//! taking the current one off the list, which clears its links: the rest of the run stays in
//! transit for ever).
#![cfg(loom)]

use kmem::__loom::{Pages, MAX_ORDER, PAGE_SIZE};
use loom::sync::Arc;

#[test]
fn release_runs() {
    assert_eq!(MAX_ORDER, 2);
    kmem_loom_tests::model(|| {
        let pages = Arc::new(Pages::new());
        let b: Vec<_> = (0..4)
            .map(|_| pages.alloc(0).expect("alloc_pages"))
            .collect();
        let mut addrs: Vec<usize> = b.iter().map(|b| b.addr).collect();
        addrs.sort_unstable();
        assert_eq!(addrs[3] - addrs[0], 3 * PAGE_SIZE, "one chunk, four pages");
        let at = |i: usize| *b.iter().find(|x| x.addr == addrs[i]).unwrap();
        // SAFETY: blocks from `pages.alloc`, each freed once.
        unsafe {
            pages.free(at(0));
            pages.free(at(2));
        }
        let p1 = at(1);
        let (pa, pb) = (pages.clone(), pages.clone());
        let a = loom::thread::spawn(move || pa.release_free());
        let t = loom::thread::spawn(move || {
            // SAFETY: a block from `pages.alloc`, freed once.
            unsafe { pb.free(p1) };
            pb.release_free()
        });
        let released = a.join().unwrap() + t.join().unwrap();
        let (mapped, free, _) = pages.state();
        assert_eq!(mapped, 4 * PAGE_SIZE);
        assert_eq!(
            free,
            3 * PAGE_SIZE,
            "pages lost in transit (released {released})"
        );
        // SAFETY: as above.
        unsafe { pages.free(at(3)) };
        let (mapped, free, blocks) = pages.state();
        assert_eq!(free, mapped, "pages lost");
        assert_eq!(&blocks[..3], &[0, 0, 1], "not coalesced: {blocks:?}");
    });
}
