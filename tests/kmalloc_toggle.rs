//! The global allocator's sheaves switched off and on (`kmem::kmalloc_set_sheaves`) while
//! threads allocate and free through it. The inline paths find each class's view through a
//! table pointer that the switch withdraws before it flushes (`kmalloc/mod.rs`), so for a
//! moment a fast path that loaded it may still push onto or pop from a sheaf being flushed. Nothing
//! may be lost, handed out twice or corrupted: every live object carries a stamp that is checked
//! before it is freed and at the end. In its own binary (the switch is process-wide); the suite
//! runs it in both commit modes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[global_allocator]
static G: kmem::Kmalloc = kmem::Kmalloc::new();

/// A xorshift step (no allocation, deterministic per thread).
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// An object of `words` words, every word the stamp.
fn stamped(words: usize, stamp: u64) -> Vec<u64> {
    vec![stamp; words]
}

fn check(v: &[u64], stamp: u64) {
    assert!(
        v.iter().all(|&w| w == stamp),
        "object with stamp {stamp:#x} was overwritten: another holder got it too"
    );
}

/// The tests of this binary switch the process-wide setting: one at a time.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn switching_kmalloc_sheaves_under_traffic_loses_nothing() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let was = kmem::kmalloc_sheaves();
    let active = || -> usize {
        kmem::Kmem::global()
            .slabinfo()
            .iter()
            .filter(|r| r.name.starts_with("kmalloc-"))
            .map(|r| r.active_objs)
            .sum()
    };
    let before = active();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut live: Vec<(Vec<u64>, u64)> = Vec::with_capacity(512);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 100_000 {
                    n += 1;
                    let r = next(&mut rng);
                    if live.len() < 512 && (r & 1 == 0 || live.is_empty()) {
                        // 16 B .. 1 KiB: many classes, so every view is exercised.
                        let words = 2 + (r >> 8) as usize % 127;
                        let stamp = (t << 56) | n;
                        live.push((stamped(words, stamp), stamp));
                    } else {
                        let i = (r >> 16) as usize % live.len();
                        let (v, stamp) = live.swap_remove(i);
                        check(&v, stamp);
                    }
                }
                for (v, stamp) in &live {
                    check(v, *stamp);
                }
                n
            })
        })
        .collect();
    for i in 0..400 {
        kmem::kmalloc_set_sheaves(i % 2 == 1);
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    kmem::kmalloc_set_sheaves(was);
    assert!(ops >= 300_000, "{ops}");
    // Every worker freed all it held when it ended: the kmalloc caches hold what they held
    // before, give or take the harness's own few allocations (thread names, results). An
    // object left in a sheaf the switch did not flush, or dropped by a flush, would stay
    // counted as allocated; the workers made hundreds of thousands of objects, so a loss
    // rate of one in a thousand would already show here.
    let after = active();
    assert!(
        after <= before + 200,
        "kmalloc objects allocated before: {before}, after: {after}"
    );
}

/// What the switch does to the fast paths, seen in the counters of `kmalloc-192` (a class
/// nothing else here uses): switched off, no allocation or free touches a CPU sheaf (the
/// inline paths' views are withdrawn and the caches' own mode is off); switched on, they all
/// pop and push it, inline in the rseq mode (`kmalloc/mod.rs`), under the slot lock in the
/// locked mode.
#[test]
fn the_switch_turns_the_sheaf_fast_paths_off_and_on() {
    if !cfg!(feature = "stats") {
        return;
    }
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let was = kmem::kmalloc_sheaves();
    let sheaf_ops = || -> (u64, u64) {
        kmem::Kmem::global()
            .cache_stats()
            .iter()
            .find(|(n, _)| n == "kmalloc-192")
            .map(|(_, s)| (s.alloc_cpu_sheaf, s.free_cpu_sheaf))
            .expect("kmalloc-192 exists")
    };
    let churn = || {
        for _ in 0..1000 {
            let v: Vec<u8> = Vec::with_capacity(190);
            std::hint::black_box(&v);
        }
    };
    assert!(!kmem::kmalloc_set_sheaves(false));
    let before = sheaf_ops();
    churn();
    assert_eq!(
        sheaf_ops(),
        before,
        "sheaves switched off, yet a CPU sheaf was used"
    );
    assert!(kmem::kmalloc_set_sheaves(true));
    churn();
    let after = sheaf_ops();
    // Nearly every one of the 1000 pairs (a refill or a trade at the barn takes a few out).
    assert!(
        after.0 - before.0 >= 900 && after.1 - before.1 >= 900,
        "sheaves switched on, yet the pairs did not use them: {before:?} -> {after:?}"
    );
    kmem::kmalloc_set_sheaves(was);
}
