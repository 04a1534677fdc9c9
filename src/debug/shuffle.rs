//! `CONFIG_SLAB_FREELIST_RANDOM` (the `freelist-random` feature): `shuffle_freelist`.
//!
//! A new slab's objects are linked in a random order instead of address order, so that the
//! object a program gets next is not predictable from the one it got before (heap-layout
//! attacks rely on adjacent allocations being adjacent in memory).
//!
//! As in the kernel: when a cache is created, a random permutation of `0..objects` (for the
//! preferred order's `objects`) is drawn once with Fisher–Yates (`cache_random_seq_create`)
//! and kept with the cache (in its metadata mapping, two bytes an index). Each new slab starts
//! at a random position in it and walks it round (`next_freelist_entry`), skipping indices
//! that a smaller fallback-order slab does not have. The per-slab start comes from a
//! SplitMix64 hash of the cache's secret, the slab's address and the clock: no shared state,
//! no lock. Debug caches are not shuffled (their reports read best in address order).

use crate::slub::slab::set_freepointer;
use crate::slub::CacheInner;

/// Bytes of the permutation for `objects` objects (0 without the feature).
pub(crate) fn random_seq_bytes(objects: usize) -> usize {
    if cfg!(feature = "freelist-random") {
        objects * core::mem::size_of::<u16>()
    } else {
        0
    }
}

/// SplitMix64: one step.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A per-cache secret (`getrandom`, else the clock), never 0.
pub(crate) fn cache_random() -> u64 {
    #[cfg(not(any(miri, loom)))]
    let r = {
        let mut r = 0u64;
        // SAFETY: writes at most 8 bytes into `r`.
        let n = unsafe { libc::getrandom((&mut r as *mut u64).cast(), 8, 0) };
        if n != 8 {
            r = splitmix64(crate::os::now_ns());
        }
        r
    };
    #[cfg(any(miri, loom))]
    let r = 0x2545_f491_4f6c_dd1d_u64;
    r | 1
}

/// `cache_random_seq_create`: writes a random permutation of `0..n` to `seq`.
///
/// # Safety
/// `seq` points to `n` writable `u16`s (`n <= 32767`).
pub(crate) unsafe fn init_random_seq(seq: *mut u16, n: usize, seed: u64) {
    let mut state = seed;
    for i in 0..n {
        // SAFETY: `i < n` (contract).
        unsafe { seq.add(i).write(i as u16) };
    }
    for i in (1..n).rev() {
        state = splitmix64(state);
        let j = (state % (i as u64 + 1)) as usize;
        // SAFETY: `i, j < n` (contract).
        unsafe { core::ptr::swap(seq.add(i), seq.add(j)) };
    }
}

impl CacheInner {
    /// Whether the cache keeps a permutation for its fresh slabs' freelists (freelist-random
    /// on, not a debug cache): then `init_slab` links every object in that order.
    #[inline]
    pub(crate) fn shuffles(&self) -> bool {
        !self.random_seq.is_null()
    }

    /// `shuffle_freelist`: relinks the `objects` objects of the fresh slab at `base` in the
    /// order of the cache's permutation from a random start; returns the first object, or
    /// `None` when the cache keeps no permutation (the feature is off, or a debug cache).
    ///
    /// # Safety
    /// The caller owns the fresh slab; every object of it is constructed.
    pub(crate) unsafe fn shuffle_freelist(&self, base: usize, objects: usize) -> Option<usize> {
        if self.random_seq.is_null() || objects < 2 {
            return None;
        }
        let len = self.random_seq_len;
        let mut pos =
            (splitmix64(self.random ^ base as u64 ^ crate::os::now_ns()) % len as u64) as usize;
        let mut next_index = || loop {
            // SAFETY: `pos < len`, the permutation's length.
            let idx = unsafe { *self.random_seq.add(pos) } as usize;
            pos += 1;
            if pos == len {
                pos = 0;
            }
            if idx < objects {
                return idx;
            }
        };
        let first = base + next_index() * self.geo.size;
        let mut cur = first;
        for _ in 1..objects {
            let obj = base + next_index() * self.geo.size;
            // SAFETY: objects of the slab the caller owns.
            unsafe { set_freepointer(cur, self.geo.offset, obj) };
            cur = obj;
        }
        // SAFETY: as above.
        unsafe { set_freepointer(cur, self.geo.offset, 0) };
        Some(first)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_a_permutation() {
        for n in [1usize, 2, 3, 64, 1000, 32767] {
            let mut v = vec![0u16; n];
            // SAFETY: `v` holds `n` u16s.
            unsafe { init_random_seq(v.as_mut_ptr(), n, 42 + n as u64) };
            let mut sorted = v.clone();
            sorted.sort_unstable();
            assert!(sorted.iter().enumerate().all(|(i, &x)| i == x as usize));
            if n >= 64 {
                // Not the identity (a chance of 1/n! otherwise).
                assert!(v.iter().enumerate().any(|(i, &x)| i != x as usize));
            }
        }
    }
}
