//! The object layout of a debug cache: `calculate_sizes` under `SLAB_RED_ZONE`, `SLAB_POISON`
//! and `SLAB_STORE_USER`.
//!
//! One slot of a slab (the stride, `size`), from its start:
//!
//! ```text
//!  ┌──────────────┬───────────────┬──────────────┬────────────┬───────────────┬──────────┐
//!  │ left red zone│ object        │ right red    │ free ptr   │ track[alloc], │ padding  │
//!  │ red_left_pad │ object_size   │ zone → inuse │ (if moved) │ track[free]   │          │
//!  └──────────────┴───────────────┴──────────────┴────────────┴───────────────┴──────────┘
//!                 ^ the object pointer (aligned to the cache's alignment)
//! ```
//!
//! - Right red zone (`Z`): the bytes from `object_size` to the next word; if the object
//!   already ends on a word, one more word, so there is always at least one red byte.
//!   `inuse` is the end of it.
//! - The free pointer moves out of the object (to `inuse`) when the object's bytes must
//!   survive being free: poisoning (`P`), a constructor, `TYPESAFE_BY_RCU`, or a red zone
//!   that shares the object's only word. Otherwise it stays in the middle of the object as
//!   without debugging.
//! - Two owner records ([`Track`](super::track::Track)) with `U`.
//! - With `Z`, one word of padding after everything (a write that runs off the *previous*
//!   object hits padding before it hits this object's metadata), and the left red zone:
//!   one word, rounded up to the alignment so that the object pointer keeps the cache's
//!   alignment (`red_left_pad`).
//! - The stride is rounded up to the alignment (in `geometry.rs`, as for every cache).
//!
//! Every byte outside the object, the red zones, the free pointer and the records is
//! padding; with `P` it holds `POISON_INUSE` (`0x5a`), as does the unused end of the slab.

use super::track::TRACK_SIZE;
use crate::config::CacheFlags;

const WORD: usize = core::mem::size_of::<usize>();

/// The debug part of a geometry (before rounding the stride to the alignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DebugLayout {
    /// The stride so far.
    pub(crate) size: usize,
    /// The free pointer's offset from the object start.
    pub(crate) offset: usize,
    /// The end of the object and its right red zone.
    pub(crate) inuse: usize,
    /// The left red zone.
    pub(crate) red_left_pad: usize,
}

/// `calculate_sizes` for a cache with at least one debug flag.
pub(crate) fn calculate_sizes(
    object_size: usize,
    align: usize,
    flags: CacheFlags,
    has_ctor: bool,
) -> DebugLayout {
    let red = flags.contains(CacheFlags::RED_ZONE);
    let mut size = object_size.next_multiple_of(WORD);
    if red && size == object_size {
        size += WORD;
    }
    let inuse = size;
    let offset = if flags.contains(CacheFlags::POISON)
        || flags.contains(CacheFlags::TYPESAFE_BY_RCU)
        || has_ctor
        || (red && object_size < WORD)
    {
        let off = size;
        size += WORD;
        off
    } else {
        (object_size / 2) / WORD * WORD
    };
    if flags.contains(CacheFlags::STORE_USER) {
        size += 2 * TRACK_SIZE;
    }
    let mut red_left_pad = 0;
    if red {
        size += WORD;
        red_left_pad = WORD.next_multiple_of(align);
        size += red_left_pad;
    }
    DebugLayout {
        size,
        offset,
        inuse,
        red_left_pad,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::slub::geometry::Geometry;

    const ALL: CacheFlags = CacheFlags(CacheFlags::DEBUG);

    #[test]
    fn the_kernel_layout_of_a_64_byte_object() {
        let l = calculate_sizes(64, 8, ALL, false);
        // 64 + one red word (inuse 72), the free pointer at 72, two tracks, a padding word,
        // a one-word left red zone.
        assert_eq!(l.inuse, 72);
        assert_eq!(l.offset, 72);
        assert_eq!(l.red_left_pad, 8);
        assert_eq!(l.size, 72 + 8 + 2 * TRACK_SIZE + 8 + 8);
    }

    #[test]
    fn an_unaligned_object_has_its_red_bytes_in_the_last_word() {
        let l = calculate_sizes(60, 8, CacheFlags::RED_ZONE, false);
        assert_eq!((l.inuse, l.offset), (64, 24)); // the free pointer stays inside
        let l = calculate_sizes(4, 8, CacheFlags::RED_ZONE, false);
        assert_eq!((l.inuse, l.offset), (8, 8)); // the object's only word is red: moved
    }

    #[test]
    fn the_left_red_zone_keeps_the_alignment() {
        let cfg = CacheConfig::new().align(64).flags(ALL);
        let g = Geometry::compute("t", 100, &cfg, 1).unwrap();
        assert_eq!(g.red_left_pad, 64);
        assert_eq!(g.size % 64, 0);
        let cfg = CacheConfig::new().align(4096).flags(CacheFlags::RED_ZONE);
        let g = Geometry::compute("t", 4096, &cfg, 1).unwrap();
        assert_eq!((g.red_left_pad, g.size), (4096, 3 * 4096));
    }

    #[test]
    fn poison_alone_moves_the_free_pointer_and_adds_no_red_zone() {
        let l = calculate_sizes(64, 8, CacheFlags::POISON, false);
        assert_eq!((l.inuse, l.offset, l.red_left_pad, l.size), (64, 64, 0, 72));
    }

    #[test]
    fn no_flag_leaves_the_geometry_as_it_was() {
        let g = Geometry::compute("t", 64, &CacheConfig::new(), 1).unwrap();
        assert_eq!((g.size, g.offset, g.red_left_pad), (64, 32, 0));
    }
}
