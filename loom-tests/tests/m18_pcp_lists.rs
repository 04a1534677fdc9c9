//! Model 18: the per-CPU page lists (`src/page/pcp.rs`) in front of the buddy allocator.
//!
//! One chunk is 4 pages under loom (`MAX_ORDER = 2`, every order kept on the lists, high
//! watermark 2 pages, batch 1). Two threads share CPU slot 0 (as two threads of one CPU, or a
//! thread that migrated, do): A allocates two order-0 blocks and frees both (the second free
//! finds the list above its high watermark and drains), B allocates an order-1 block and frees
//! it. Each thread may find the slot lock taken by the other, and then goes to the buddy
//! lists directly (it never waits); refills take blocks from the buddy lists under the page
//! lock. Every block handed out is checked against the others for overlap; at the end the lists
//! are drained and every page must be free and coalesced into one order-2 block. Mutant:
//! `pcp_free_marks_free` (a block pushed on a per-CPU list is marked as a buddy-list free
//! block, so a neighbour freed to the buddy lists merges with it and unlinks it from a list it
//! is not on: pages are lost or handed out twice).
#![cfg(loom)]

use kmem::__loom::{Block, Pages, MAX_ORDER, PAGE_SIZE};
use loom::sync::{Arc, Mutex};

fn take(pages: &Pages, held: &Mutex<Vec<Block>>, order: u32) -> Block {
    let b = pages.alloc(order).expect("alloc_pages");
    let mut h = held.lock().unwrap();
    let (lo, hi) = (b.addr, b.addr + (PAGE_SIZE << b.order));
    for o in h.iter() {
        let (olo, ohi) = (o.addr, o.addr + (PAGE_SIZE << o.order));
        assert!(hi <= olo || ohi <= lo, "blocks overlap: {b:?} and {o:?}");
    }
    h.push(b);
    b
}

fn give(pages: &Pages, held: &Mutex<Vec<Block>>, b: Block) {
    held.lock().unwrap().retain(|o| *o != b);
    // SAFETY: allocated from `pages`, freed once.
    unsafe { pages.free(b) };
}

#[test]
fn pcp_lists_vs_buddy() {
    assert_eq!(MAX_ORDER, 2);
    kmem_loom_tests::model(|| {
        let pages = Arc::new(Pages::with_pcp(1));
        let held = Arc::new(Mutex::new(Vec::new()));
        // Map the chunk up front, then put it back on the buddy lists.
        let first = take(&pages, &held, 2);
        give(&pages, &held, first);
        pages.drain();
        let (p1, h1) = (pages.clone(), held.clone());
        let a = loom::thread::spawn(move || {
            kmem::cpu::set_current_cpu_for_model(0);
            let x = take(&p1, &h1, 0);
            let y = take(&p1, &h1, 0);
            give(&p1, &h1, x);
            give(&p1, &h1, y);
        });
        let (p2, h2) = (pages.clone(), held.clone());
        let b = loom::thread::spawn(move || {
            kmem::cpu::set_current_cpu_for_model(0);
            let z = take(&p2, &h2, 1);
            give(&p2, &h2, z);
        });
        a.join().unwrap();
        b.join().unwrap();
        let (mapped, free, _) = pages.state();
        assert_eq!(
            free + pages.pcp_bytes(),
            mapped,
            "pages lost or counted twice"
        );
        pages.drain();
        let (mapped, free, blocks) = pages.state();
        assert_eq!(pages.pcp_bytes(), 0);
        assert_eq!(free, mapped, "pages lost after the drain");
        let chunk = PAGE_SIZE << MAX_ORDER;
        assert_eq!(mapped, chunk, "a spare chunk was mapped");
        assert_eq!(
            &blocks[..3],
            &[0, 0, 1],
            "not coalesced after the drain: {blocks:?}"
        );
        // The whole chunk is one block again and can be allocated as such.
        let all = take(&pages, &held, 2);
        give(&pages, &held, all);
        pages.drain();
    });
}
