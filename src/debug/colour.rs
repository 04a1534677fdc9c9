//! Slab colouring (`CacheConfig::colour`; SLAB's `colour_off` / `colour_next`).
//!
//! A slab of `objects` objects of `size` bytes leaves `slab bytes - objects * size` bytes
//! unused at its end. A coloured cache spends them at the front instead, in steps of
//! `colour_off` (the cache line, or the alignment if larger): new slabs take colours 0, 1, 2, …
//! in turn (`colour_next`, one relaxed counter per cache), wrapping after the last offset the
//! tail leaves room for, so that the `i`-th objects of successive slabs fall into different
//! cache sets. The colour is kept in the slab head's page descriptor (the head-offset bits,
//! which only tail pages use) and read back by every check that turns a pointer into an
//! object index (`check_valid_pointer`), which is why a coloured cache's frees are checked
//! out of line (`owning_slab`'s cold path): the inline one-AND and multiply-rotate tests know
//! no colour. Caches without colouring execute none of this.

use crate::page::{PageInfo, PAGE_SIZE};
use crate::slub::CacheInner;
use crate::sync::Ordering;

impl CacheInner {
    /// The colour of a new slab of `2^order` pages holding `objects` objects (0 when the
    /// cache is not coloured or the slab has no room to spare).
    pub(crate) fn next_colour(&self, order: u32, objects: usize) -> usize {
        let off = self.geo.colour_off;
        if off == 0 {
            return 0;
        }
        let left_over = (PAGE_SIZE << order) - objects * self.geo.size;
        let colours = (left_over / off + 1).min(PageInfo::MAX_HEAD_OFFSET + 1);
        self.colour_next.fetch_add(1, Ordering::Relaxed) % colours
    }
}
