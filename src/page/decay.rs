//! Time-based decay: free memory goes back to the OS by itself, once it has been free for a
//! while. (Part of `impl PageAllocator`: see `page/mod.rs` for why it is split by concern.)
//!
//! # The idea (jemalloc's `dirty_decay_ms`)
//!
//! Giving a free block back to the OS (`madvise(MADV_DONTNEED)`) costs a system call now and a
//! page fault per page when the block is used again. Doing it for every free wastes both on
//! memory that is about to be reused; never doing it keeps a program's peak for ever. The decay
//! keeps a freed block for a *delay* (the instance's `decay_ns`, [`KmemBuilder::dirty_decay_ms`]
//! and `KMEM_DECAY_MS` for the global instance) and gives it back once it has stayed free that
//! long: memory that churns is never released, memory that went idle is, a delay later.
//!
//! # How time is kept: epochs
//!
//! Each node keeps an *epoch* counter (in its locked state). A dirty free block records the
//! epoch it was put on its free list in (`push` writes it into the head's `slabs`, unused by
//! free heads). A piece split off a free block keeps the block's stamp, and a block merged from
//! two buddies gets the mean age of their dirty halves (`buddy::merged_stamp`; a released half
//! holds no resident page and does not count): the age of a block is that of its resident
//! bytes on average, so neither an allocation that takes a piece of an old free block nor a
//! free beside one makes the rest young again. (A merged block used to take the newest stamp:
//! a program that kept freeing a little beside old free memory deferred its release for as
//! long as it did, 30 MiB of kmem-bench's `idle` with deeper barns.) A *decay
//! run* advances the epoch and releases every dirty block at least [`DECAY_STEPS`] + 1 epochs
//! old, with `release_dirty` (the same detach-`madvise`-reinsert as `release_free`, blocks in
//! transit and all). Runs are at least `delay / DECAY_STEPS` apart, so a block is released
//! between one delay and `1 + 2 / DECAY_STEPS` delays after it was freed — if runs happen.
//! A delay of 0 makes every tick a run that releases every dirty block.
//!
//! # Who runs it: the slow paths, no thread
//!
//! There is no background thread. A *tick* ([`PageAllocator::decay_tick`]) reads a coarse
//! clock (`CLOCK_MONOTONIC_COARSE`, a few ns through the vDSO) and compares it with the node's
//! next due time (one relaxed load); when due, one CAS elects the thread that runs the decay.
//! Ticks come from the slow paths that run with no kmem lock held: every page allocation
//! (`alloc_pages*`, so every new slab), every free of an exact page block (kmalloc's large
//! sizes), and the slab allocation slow path (`slab_alloc_slow`, through
//! `KmemShared::decay_tick`), so a program that keeps allocating a little keeps returning
//! what it no longer uses. The instance's tick (`KmemShared::decay_tick`, from the slab slow
//! path and kmalloc's page blocks) also trims the caches' barns once per delay (full sheaves
//! waiting there go back to their slabs, whose pages this decay can then return), and, once
//! per delay per CPU, the sheaves that caches idle on the ticking thread's CPU keep there
//! (see docs/design.md, "Sheaves"). A program that stops calling kmem entirely keeps what it had
//! (jemalloc without its background thread behaves the same). The fast paths never tick.
//! [`Kmem::shrink_all`](crate::Kmem::shrink_all) still returns everything at once.
//!
//! # Without decay
//!
//! With `decay_ns == None` (a `PageBudget` built for unit tests, or
//! `dirty_decay_ms(None)` / `KMEM_DECAY_MS=off`) the older policy holds: a free block of
//! [`RELEASE_ORDER`] (2 MiB) or more is released as soon as it forms, smaller ones only by
//! `release_free`. With decay, no block is released as it forms (a 2 MiB block freed and
//! reallocated at once would otherwise cost a `madvise` and 512 page faults each time).
//!
//! [`KmemBuilder::dirty_decay_ms`]: crate::KmemBuilder::dirty_decay_ms

use super::buddy::PageAllocator;
use crate::sync::Ordering;

/// Decay runs per delay: a run is due `delay / DECAY_STEPS` after the previous one, and a
/// block is released at the first run at least `DECAY_STEPS + 1` epochs after it was freed.
pub(crate) const DECAY_STEPS: u32 = 4;

/// The default delay of an instance, in milliseconds (`KmemBuilder::dirty_decay_ms`).
pub const DEFAULT_DECAY_MS: u64 = 200;

impl PageAllocator {
    /// A decay tick at the current coarse time; see [`PageAllocator::decay_tick`].
    #[inline]
    pub(crate) fn decay_tick_now(&self) -> usize {
        if self.budget().decay_ns.is_none() {
            return 0;
        }
        self.decay_tick(self.budget().decay_now())
    }

    /// A decay tick at time `now` (nanoseconds of a monotonic clock; unit tests pass a fake
    /// one): when a run is due and this thread wins the CAS that claims it, advances the epoch
    /// and releases the dirty blocks free for at least the delay. Returns the bytes released.
    /// Call with no kmem lock held (it takes the page lock and calls `madvise`).
    pub(crate) fn decay_tick(&self, now: u64) -> usize {
        let Some(delay) = self.budget().decay_ns else {
            return 0;
        };
        if delay == 0 {
            // No delay: every tick releases every dirty free block.
            self.drain_pcp(true);
            return self.release_dirty(Some(0));
        }
        let due = self.next_decay.load(Ordering::Relaxed);
        if now < due {
            return 0;
        }
        let period = (delay / DECAY_STEPS as u64).max(1);
        if self
            .next_decay
            .compare_exchange(
                due,
                now.saturating_add(period),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return 0; // another thread runs this one
        }
        self.decay_pcp();
        self.release_dirty(Some(DECAY_STEPS + 1))
    }
}
