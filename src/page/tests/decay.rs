//! The decay (`decay.rs`) with a fake clock: free blocks go back to the OS once they have been
//! free for the delay, not before, and not while they are reused; runs are rate-limited.

use super::*;
use crate::page::decay::DECAY_STEPS;

const MS: u64 = 1_000_000;

impl Fixture {
    /// Moves the fake decay clock (the allocation paths' own ticks read it too).
    fn at(&self, t: u64) {
        // SAFETY: the budget lives as long as the fixture.
        unsafe { &*self.budget }
            .fake_now
            .store(t, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Resident bytes of free blocks (free minus released).
fn dirty_free(f: &Fixture) -> usize {
    let s = f.stats();
    s.resident_bytes - (s.mapped_bytes - s.free_bytes)
}

#[test]
fn free_blocks_go_back_after_the_delay_and_not_before() {
    let delay = 100 * MS;
    let period = delay / DECAY_STEPS as u64;
    let f = Fixture::decaying(delay);
    f.at(1);
    let pa = f.pa();
    // The first tick only arms the clock (nothing is dirty yet).
    assert_eq!(pa.decay_tick(1), 0);
    let blocks: Vec<_> = (0..8)
        .map(|_| pa.alloc_pages(2, NORETRY).unwrap())
        .collect();
    for &b in &blocks {
        // SAFETY: our block: dirty it as a user would.
        unsafe { mem(b).write_bytes(0xee, 4 * PAGE_SIZE) };
    }
    for b in blocks {
        // SAFETY: allocated above with order 2, freed once.
        unsafe { pa.free_pages(b, 2) };
    }
    // The freed blocks merged with the chunk's fresh (released) rest: with decay nothing is
    // released as it forms, so the merged block counts as dirty (an upper bound, see the
    // page module docs), the whole chunk here.
    let dirty = dirty_free(&f);
    assert_eq!(dirty, CHUNK_SIZE, "freed pages are dirty until the decay");
    // A tick before the period has passed does nothing; then a run per period, and the
    // blocks stay until DECAY_STEPS + 1 epochs after they were freed.
    assert_eq!(pa.decay_tick(2), 0);
    let mut t = 1 + period;
    for run in 1..=DECAY_STEPS {
        assert_eq!(pa.decay_tick(t), 0, "run {run}: too young");
        assert_eq!(pa.decay_tick(t + 1), 0, "rate-limited");
        t += period;
    }
    assert_eq!(dirty_free(&f), dirty);
    let released = pa.decay_tick(t);
    assert_eq!(
        released, dirty,
        "released one delay (+ one period) after the free"
    );
    assert_eq!(dirty_free(&f), 0);
    // Released memory is reused as zero memory: ZERO skips the memset, and it is zero.
    let z = pa.alloc_pages(2, GfpFlags::ZERO).unwrap();
    let zm = mem(z);
    // SAFETY: ours.
    assert!((0..4 * PAGE_SIZE).all(|i| unsafe { *zm.add(i) } == 0));
    // SAFETY: as above.
    unsafe { pa.free_pages(z, 2) };
    assert_all_free(&f);
}

#[test]
fn churned_blocks_are_never_released() {
    let delay = 40 * MS;
    let f = Fixture::decaying(delay);
    f.at(1);
    let pa = f.pa();
    let mut t = 1;
    pa.decay_tick(t);
    let mut total = 0;
    // Freed and reallocated within every period: each free re-stamps the block.
    for _ in 0..50 {
        let b = pa.alloc_pages(3, NORETRY).unwrap();
        // SAFETY: ours.
        unsafe {
            mem(b).write_bytes(1, 8 * PAGE_SIZE);
            pa.free_pages(b, 3)
        };
        t += delay / 8;
        f.at(t);
        total += pa.decay_tick(t);
    }
    // Only memory that was never touched since the chunk was mapped could age; the block in
    // use was always young.
    let b = pa.alloc_pages(3, NORETRY).unwrap();
    // SAFETY: ours.
    let first = unsafe { *mem(b) };
    assert_eq!(
        first, 1,
        "the churned block kept its contents: never released"
    );
    assert_eq!(total, 0);
    // SAFETY: ours.
    unsafe { pa.free_pages(b, 3) };
}

#[test]
fn without_decay_large_blocks_go_back_at_once_and_with_it_they_wait() {
    // No decay: a 2 MiB block is released as it forms.
    let f = Fixture::one(usize::MAX);
    let b = f.pa().alloc_pages(RELEASE_ORDER, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe {
        mem(b).write_bytes(3, PAGE_SIZE << RELEASE_ORDER);
        f.pa().free_pages(b, RELEASE_ORDER)
    };
    assert_eq!(dirty_free(&f), 0);
    // Decay: it waits for the delay (a reuse in between costs no fault).
    let f = Fixture::decaying(10 * MS);
    f.at(1);
    let b = f.pa().alloc_pages(RELEASE_ORDER, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe {
        mem(b).write_bytes(3, PAGE_SIZE << RELEASE_ORDER);
        f.pa().free_pages(b, RELEASE_ORDER)
    };
    assert_eq!(dirty_free(&f), CHUNK_SIZE);
    let mut t = 1;
    let mut released = 0;
    for _ in 0..=DECAY_STEPS + 1 {
        released += f.pa().decay_tick(t);
        t += 10 * MS;
    }
    assert_eq!(released, CHUNK_SIZE);
    assert_eq!(dirty_free(&f), 0);
}

#[test]
fn release_free_still_returns_everything_at_once() {
    let f = Fixture::decaying(1_000 * MS);
    f.at(1);
    let b = f.pa().alloc_pages(4, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe {
        mem(b).write_bytes(3, 16 * PAGE_SIZE);
        f.pa().free_pages(b, 4)
    };
    assert_eq!(dirty_free(&f), CHUNK_SIZE);
    assert_eq!(f.pa().release_free(), CHUNK_SIZE);
    assert_eq!(dirty_free(&f), 0);
}

#[test]
#[cfg_attr(miri, ignore)] // threads racing on the due time: nothing for Miri beyond the above
fn one_thread_runs_each_due_decay() {
    let f = Fixture::decaying(4 * MS);
    f.at(1);
    let pa = f.pa();
    pa.decay_tick(1);
    let b = pa.alloc_pages(5, NORETRY).unwrap();
    // SAFETY: ours.
    unsafe {
        mem(b).write_bytes(9, 32 * PAGE_SIZE);
        pa.free_pages(b, 5)
    };
    assert_eq!(dirty_free(&f), CHUNK_SIZE);
    // Many threads tick at the same fake times: the blocks are released exactly once.
    let total = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut t = 1;
                for _ in 0..=2 * DECAY_STEPS {
                    t += MS;
                    total.fetch_add(pa.decay_tick(t), std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(total.into_inner(), CHUNK_SIZE);
    assert_eq!(dirty_free(&f), 0);
}

/// Runs a decay tick once per period from `t` on until no free block is dirty; the number of
/// runs it took (at most `limit`).
fn runs_until_clean(f: &Fixture, mut t: u64, period: u64, limit: u32) -> u32 {
    for k in 1..=limit {
        t += period;
        f.at(t);
        f.pa().decay_tick(t);
        if dirty_free(f) == 0 {
            return k;
        }
    }
    limit + 1
}

/// A page freed beside blocks that have been free for a while merges with them; the merged
/// block is as old as its pages are on average, not as young as the page freed last. (A merged
/// block used to take the newest stamp: a program that kept freeing a little beside old free
/// memory deferred its release indefinitely, 40 MiB of kmem-bench's `idle` with deeper barns.)
#[test]
fn a_free_beside_old_free_blocks_does_not_make_them_young() {
    let delay = 100 * MS;
    let period = delay / DECAY_STEPS as u64;
    let f = Fixture::decaying(delay);
    f.at(1);
    let pa = f.pa();
    assert_eq!(pa.decay_tick(1), 0);
    let pages: Vec<_> = (0..16)
        .map(|_| pa.alloc_pages(0, NORETRY).unwrap())
        .collect();
    for &p in &pages {
        // SAFETY: our page: dirty it as a user would.
        unsafe { mem(p).write_bytes(0x5a, PAGE_SIZE) };
    }
    let kept = pages[5];
    for &p in pages.iter().filter(|&&p| p != kept) {
        // SAFETY: allocated above with order 0, freed once.
        unsafe { pa.free_pages(p, 0) };
    }
    // Three runs: the fifteen pages age three epochs (DECAY_STEPS + 1 releases them).
    let mut t = 1;
    for _ in 0..3 {
        t += period;
        f.at(t);
        assert_eq!(pa.decay_tick(t), 0, "too young");
    }
    // The last page: its free merges the sixteen (and the chunk's fresh rest) into one block.
    // SAFETY: as above.
    unsafe { pa.free_pages(kept, 0) };
    assert_eq!(dirty_free(&f), CHUNK_SIZE);
    let k = runs_until_clean(&f, t, period, 2 * DECAY_STEPS);
    // The newest stamp would wait DECAY_STEPS + 1 more runs; the mean age of the merged
    // pages (fifteen of them three epochs old) releases it two or three runs later, and not
    // before the old pages' own delay (two runs from now).
    assert!(
        (2..DECAY_STEPS + 1).contains(&k),
        "the merged block was released {k} runs after the last free"
    );
}

/// Splitting a block that has been free for a while (an allocation takes a piece) leaves the
/// rest as old as it was: the pieces keep the block's stamp.
#[test]
fn an_allocation_from_an_old_free_block_does_not_make_the_rest_young() {
    let delay = 100 * MS;
    let period = delay / DECAY_STEPS as u64;
    let f = Fixture::decaying(delay);
    f.at(1);
    let pa = f.pa();
    assert_eq!(pa.decay_tick(1), 0);
    let b = pa.alloc_pages(4, NORETRY).unwrap();
    // SAFETY: ours: dirty it, then free it once (the whole chunk is one dirty block then).
    unsafe {
        mem(b).write_bytes(0xa5, 16 * PAGE_SIZE);
        pa.free_pages(b, 4)
    };
    let mut t = 1;
    for _ in 0..3 {
        t += period;
        f.at(t);
        assert_eq!(pa.decay_tick(t), 0, "too young");
    }
    // One page out of the old block: the pieces split off stay three epochs old.
    let p = pa.alloc_pages(0, NORETRY).unwrap();
    let k = runs_until_clean(&f, t, period, 2 * DECAY_STEPS);
    assert_eq!(
        k, 2,
        "the rest of the old block went back with the block's own delay"
    );
    // SAFETY: allocated above, freed once.
    unsafe { pa.free_pages(p, 0) };
}

#[test]
fn merged_stamps_are_the_mean_age_of_the_dirty_halves() {
    use crate::page::buddy::merged_stamp;
    // Ages 0 and 4 at epoch 10: age 2.
    assert_eq!(merged_stamp(10, Some(10), Some(6)), 8);
    // A released half holds no resident page: the dirty half's stamp.
    assert_eq!(merged_stamp(10, Some(7), None), 7);
    assert_eq!(merged_stamp(10, None, Some(3)), 3);
    assert_eq!(merged_stamp(10, None, None), 10);
    // Across the epoch's wrap-around, and with large ages (no overflow).
    assert_eq!(merged_stamp(2, Some(u32::MAX), Some(1)), 0);
    assert_eq!(merged_stamp(u32::MAX, Some(0), Some(0)), 0);
    // Ages u32::MAX - 1 and u32::MAX: the mean's floor.
    assert_eq!(merged_stamp(u32::MAX, Some(1), Some(0)), 1);
}
