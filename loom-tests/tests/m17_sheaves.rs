//! Model 17: sheaves (`src/slub/pcs.rs`, `sheaf.rs`, `barn.rs`, `cpu/percpu/array.rs`) in the rseq
//! commit mode: per-CPU arrays whose pop and push are sequences on the CPU's slot, changed by
//! slow paths under the slot's sheaf lock with replaces committed on that CPU, and taken away
//! by flushes from other CPUs that take the slot's top (swap, fence, swap again:
//! `percpu::take_array`). Sheaves hold 4 objects; slabs hold 2.
//!
//! - `flush_vs_free_other_cpu`: a flush of every slot's sheaves (what shrink and destroy do
//!   first) on CPU 1 while a thread on CPU 0 frees into, and allocates from, slot 0's sheaf —
//!   the flush must see every object the sequences committed (mutants
//!   `sheaf_flush_without_stop`, `sheaf_take_without_recheck`, `sheaf_take_without_fence`,
//!   `sheaf_take_fence_first`: an object freed into the sheaf after the flush read it is lost,
//!   or one it flushed is allocated again);
//! - `barn_exchange_vs_free`: on CPU 0, an allocation finds `main` and the spare empty and
//!   trades `main` at the barn for a full sheaf, while another thread frees into `main` (mutant
//!   `sheaf_replace_ignores_count`: the replace commits although `main` is no longer empty, and
//!   the sheaf put back as empty still holds the freed object — kmem aborts);
//! - `barn_put_vs_alloc`: on CPU 0, a free finds `main` and the spare full, replaces `main` with
//!   an empty sheaf and puts the full one into the barn, while another thread pops from `main`
//!   (mutant `barn_trades_main`: the full `main` goes to the barn before its replace commits,
//!   so after the pop it is both the slot's `main` and a sheaf of the barn);
//! - `barn_steal_vs_own_trade`: the barn's one full sheaf, in slot 0's shard, wanted at once by
//!   an allocation on CPU 0 (its own shard's trade) and one on CPU 1 (a steal from slot 0's
//!   shard): exactly one gets it, the other refills from the slabs;
//! - `barn_trim_vs_exchange`: on CPU 0, an allocation finds `main` and the spare empty and
//!   takes the barn's full sheaf, while CPU 1 runs the decay's barn trim, which flushes every
//!   full sheaf of the barn back to the slabs: the sheaf goes to one of them (mutant
//!   `barn_trim_without_take`: the trim flushes sheaves it left on the barn, so the allocation
//!   hands out objects the trim gave back to their slabs);
//! - `cpu_sheaf_trim_vs_free`: on CPU 0, the decay's trim of the CPU's sheaves (its second
//!   look: the sheaves did not change since the first) while another thread on CPU 0 frees
//!   into `main` and allocates from it; the trim takes `main` only with a replace that commits
//!   if the top it read is still there (mutant `sheaf_trim_ignores_top`: it takes `main` with
//!   the count it read, so an object freed into it meanwhile is lost, or one popped meanwhile
//!   is flushed back to its slab while its allocator holds it);
//! - `refill_vs_free`: on CPU 0, an allocation refills a sheaf from the slabs with no lock held
//!   while another thread frees into `main`; the refilled sheaf must not be installed over the
//!   object (mutant `sheaf_install_over_main`);
//! - `refill_vs_shrink`: a refill in flight on CPU 0 while CPU 1 shrinks the cache (which gives
//!   wholly free sheaf memory back to the page allocator): the sheaf being refilled must keep its
//!   memory (mutant `pool_trim_ignores_in_flight`);
//! - `locked_alloc_vs_free_shared_slot`: the locked commit mode, two threads on one slot: the
//!   fast paths take the slot's sheaf lock with `try_lock` and take the cpu-slab path when it is
//!   busy (mutant `sheaf_locked_pop_unlocked`: a pop outside the lock hands an object out twice).
#![cfg(loom)]

use kmem::cpu::CommitMode::{Locked, Rseq};
use kmem_loom_tests::*;

/// On CPU 0, one thread frees `x` (an object the model holds) while another allocates; then the
/// model's end checks.
fn free_vs_alloc_on_cpu0(
    k: &kmem::Kmem,
    c: &loom::sync::Arc<kmem::KmemCache>,
    live: &Live,
    x: std::ptr::NonNull<u8>,
) {
    let (c1, l1) = (c.clone(), live.clone());
    let a = loom::thread::spawn(move || {
        on_cpu(0);
        l1.free(&c1, x);
    });
    let (c2, l2) = (c.clone(), live.clone());
    let b = loom::thread::spawn(move || {
        on_cpu(0);
        l2.alloc(&c2);
    });
    a.join().unwrap();
    b.join().unwrap();
    finish(k, c, live, false);
}

#[test]
fn flush_vs_free_other_cpu() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        // Slot 0's main sheaf: filled with 4 (2 new slabs), 2 popped: 2 left.
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, x);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            on_cpu(1);
            kmem::__loom::flush_sheaves(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

/// Leaves slot 0 (the calling thread on CPU 0) with `main` and the spare empty and one full
/// sheaf in the barn, holding 8 objects, which it returns.
fn main_and_spare_empty_barn_full(c: &kmem::KmemCache, live: &Live) -> Vec<std::ptr::NonNull<u8>> {
    // 12 allocations: three refills (main S1 empty, spare S2 empty).
    let mut held: Vec<_> = (0..12).map(|_| live.alloc(c)).collect();
    // 12 frees: S1 fills and swaps with S2; S2 fills, an empty S3 from the pool replaces it,
    // and S2 goes to the barn (slot 0's shard); S3 fills.
    for p in held.drain(..) {
        live.free(c, p);
    }
    // 8 allocations: S3 emptied, swapped with the full spare S1, S1 emptied.
    (0..8).map(|_| live.alloc(c)).collect()
}

#[test]
fn barn_exchange_vs_free() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        let held = main_and_spare_empty_barn_full(&c, &live);
        let s = c.stats();
        assert_eq!((s.barn_put, s.barn_get), (1, 0), "setup: {s:?}");
        free_vs_alloc_on_cpu0(&k, &c, &live, held[0]);
    });
}

/// Leaves slot 0 (the calling thread on CPU 0) with `main` and the spare full (4 objects each)
/// and an empty barn, holding 8 objects, which it returns.
fn main_and_spare_full(c: &kmem::KmemCache, live: &Live) -> Vec<std::ptr::NonNull<u8>> {
    // 16 allocations: four refills (main S2 empty, spare S1 empty).
    let mut held: Vec<_> = (0..16).map(|_| live.alloc(c)).collect();
    // 8 frees: S2 fills and swaps with the empty spare S1, which fills.
    for p in held.drain(..8) {
        live.free(c, p);
    }
    held
}

#[test]
fn barn_put_vs_alloc() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        let held = main_and_spare_full(&c, &live);
        let s = c.stats();
        assert_eq!((s.barn_put, s.sheaf_swap), (0, 1), "setup: {s:?}");
        free_vs_alloc_on_cpu0(&k, &c, &live, held[0]);
    });
}

#[test]
fn barn_steal_vs_own_trade() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        let _held = main_and_spare_empty_barn_full(&c, &live);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.alloc(&c1);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(1);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        let s = c.stats();
        assert_eq!(s.barn_get, 1, "one of the two took the barn's sheaf: {s:?}");
        finish(&k, &c, &live, false);
    });
}

#[test]
fn barn_trim_vs_exchange() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        let _held = main_and_spare_empty_barn_full(&c, &live);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.alloc(&c1);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            on_cpu(1);
            kmem::__loom::trim_barns(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn cpu_sheaf_trim_vs_free() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        // Slot 0's main sheaf: filled with 4, 2 popped: 2 left; the trim's first look.
        let x = live.alloc(&c);
        live.alloc(&c);
        assert_eq!(kmem::__loom::trim_cpu_sheaves(&c), 0, "first look");
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.free(&c1, x);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            kmem::__loom::trim_cpu_sheaves(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn refill_vs_free() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        // One refill of 4, all popped: main empty, no spare, an empty barn.
        let held: Vec<_> = (0..4).map(|_| live.alloc(&c)).collect();
        free_vs_alloc_on_cpu0(&k, &c, &live, held[0]);
    });
}

#[test]
fn refill_vs_shrink() {
    model(|| {
        let (k, c) = setup_sheaves(Rseq, 2);
        let live = Live::new();
        on_cpu(0);
        let _held: Vec<_> = (0..4).map(|_| live.alloc(&c)).collect();
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.alloc(&c1);
        });
        let c2 = c.clone();
        let b = loom::thread::spawn(move || {
            on_cpu(1);
            c2.shrink();
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}

#[test]
fn locked_alloc_vs_free_shared_slot() {
    model(|| {
        let (k, c) = setup_sheaves(Locked, 1);
        let live = Live::new();
        on_cpu(0);
        // One refill of 4, two popped: two objects left in the sheaf.
        let x = live.alloc(&c);
        live.alloc(&c);
        let (c1, l1) = (c.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            l1.alloc(&c1);
            l1.free(&c1, x);
        });
        let (c2, l2) = (c.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            l2.alloc(&c2);
        });
        a.join().unwrap();
        b.join().unwrap();
        finish(&k, &c, &live, false);
    });
}
