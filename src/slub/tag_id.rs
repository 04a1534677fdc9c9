//! Tag ids: the number a cache writes, with the slab's order, on every page of its slabs
//! (`page::slab_tag`), so that a free checks the object's cache from the dense tag table
//! instead of the slab's descriptor.
//!
//! ```text
//!   id 0            no tag: the free checks the descriptor
//!   ids 1..=63      the kmalloc classes (class index + 1; `kmalloc/mod.rs` sets them)
//!   ids 64..=4095   sheaf caches, one each while the cache lives (this module hands them out)
//! ```
//!
//! A tag on a page means "a live slab of the cache with this id" only while no other cache
//! holds the id: an id goes back to the free set when its cache is destroyed with no slab
//! left (every slab's pages were untagged when they went back), and never when the cache
//! leaked slabs (their pages keep the tag). When every id is taken, a new cache gets none and
//! its frees take the descriptor check: slower, never wrong.
//!
//! Process-wide (the tags of every instance's chunks share the id space), in a bitmap of
//! atomics; taking and giving back are lock-free and never allocate.

use crate::page::TAG_ID_MAX;
use crate::sync::global::{AtomicUsize, Ordering};

/// The first id handed out (below are the kmalloc classes').
pub(crate) const FIRST_ID: u16 = 64;

const WORD_BITS: usize = usize::BITS as usize;
const WORDS: usize = (TAG_ID_MAX as usize + 1).div_ceil(WORD_BITS);

/// Bit `i` set: id `i` is taken (ids below [`FIRST_ID`] are never handed out).
static TAKEN: [AtomicUsize; WORDS] = [const { AtomicUsize::new(0) }; WORDS];

/// A free id, now taken, or 0 when every one is.
pub(crate) fn take() -> u16 {
    for id in FIRST_ID as usize..=TAG_ID_MAX as usize {
        let (w, bit) = (id / WORD_BITS, 1usize << (id % WORD_BITS));
        let mut cur = TAKEN[w].load(Ordering::Relaxed);
        while cur & bit == 0 {
            match TAKEN[w].compare_exchange_weak(
                cur,
                cur | bit,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return id as u16,
                Err(now) => cur = now,
            }
        }
    }
    0
}

/// Gives `id` back (0 and the kmalloc ids are ignored). The caller's cache has no slab left,
/// so no page carries a tag with `id`.
pub(crate) fn give_back(id: u16) {
    if id < FIRST_ID {
        return;
    }
    let (w, bit) = (id as usize / WORD_BITS, 1usize << (id as usize % WORD_BITS));
    TAKEN[w].fetch_and(!bit, Ordering::AcqRel);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_while_taken_and_come_back() {
        let a = take();
        let b = take();
        assert!(a >= FIRST_ID && b >= FIRST_ID && a != b);
        give_back(a);
        // Another test may take it first; whatever is taken now is not `b`.
        let c = take();
        assert_ne!(c, b);
        give_back(b);
        give_back(c);
        give_back(0); // ignored
        give_back(5); // a kmalloc id: ignored
    }
}
